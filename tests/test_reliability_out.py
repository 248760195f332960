"""``--out`` tells the truth, and a run ends cleanly under signals and concurrency.

Real processes and real files: a reused folder holding another model's results, stale target
folders and a killed run's leftovers, two runs into one folder, a stale lock, SIGTERM and SIGINT
in the middle of a run. The slow target is ``sleepy`` from tests/data/site/edgex_crashy.py (its
child writes a partial artifact, then sleeps a minute).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgex.core import api
from edgex.core.cli import main
from edgex.core.errors import UsageError
from edgex.core.isolation import start_isolated

HERE = Path(__file__).parent
MODELS = HERE / "models.py"
SITE = HERE / "data" / "site"

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="targets run in forked children only on Linux")


def _dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie has finished running: /proc says state Z)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def _descendants(root: int) -> set[int]:
    """Every process below ``root`` and every member of their process groups, from /proc."""
    parents, groups = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            parents[int(entry.name)], groups[int(entry.name)] = int(fields[1]), int(fields[2])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    leaders = {groups[pid] for pid in found if pid in groups}
    return found | {pid for pid, group in groups.items() if group in leaders and group != groups.get(root)}


def _edgex(*args, out: Path) -> subprocess.Popen:
    """``edgex ARGS --out OUT`` in its own process, with the sleepy/crashy targets installed."""
    env = dict(os.environ, EDGEX_LOAD_PLUGINS="crashy", PYTHONPATH=os.pathsep.join([str(SITE), *sys.path]))
    return subprocess.Popen(
        [sys.executable, "-m", "edgex.core.cli", *map(str, args), "--out", str(out)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for(path: Path, process: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"edgex ended ({process.returncode}) before {path.name} appeared: {process.stderr.read()}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"{path} did not appear within {seconds} s")
        time.sleep(0.1)


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith((".edgex-tmp-", ".edgex-old-", ".edgex-scratch", ".edgex.lock", ".report.json.", ".report.html.")))


# --------------------------------------------------------------------------- a reused folder


@pytest.fixture(scope="module")
def digits_onnx_out(tmp_path_factory):
    """A folder holding an honest earlier run: the digits CNN converted for onnx."""
    out = tmp_path_factory.mktemp("reused")
    assert api.convert("examples:digits", ["onnx"], out=out, samples=2).targets["onnx"].status == "passed"
    return out


def test_another_models_folder_is_refused_in_one_line_and_left_untouched(digits_onnx_out, tmp_path, capsys):
    before = sorted(str(p.relative_to(digits_onnx_out)) for p in digits_onnx_out.rglob("*"))
    code = main(["convert", f"{MODELS}:resnet_tiny", "-t", "onnx", "--samples", "2", "--out", str(digits_onnx_out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "holds edgex's results for examples:digits" in err and "--overwrite" in err
    assert sorted(str(p.relative_to(digits_onnx_out)) for p in digits_onnx_out.rglob("*")) == before


def test_a_folder_edgex_did_not_write_is_refused_unless_overwrite(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="is not empty and edgex did not write it"):
        api.convert(f"{MODELS}:resnet_tiny", ["onnx"], out=tmp_path, samples=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]  # nothing created, no lock left
    report = api.convert(f"{MODELS}:resnet_tiny", ["onnx"], out=tmp_path, samples=2, overwrite=True)
    assert report.targets["onnx"].status == "passed"
    assert (tmp_path / "notes.txt").read_text() == "mine"  # edgex replaces only what it writes
    site = tmp_path / "site"  # a page named like edgex's, without the report.json that proves it edgex's
    site.mkdir()
    (site / "report.html").write_text("my page")
    with pytest.raises(UsageError, match=r"edgex did not write it \(report.html\)"):
        api.convert(f"{MODELS}:resnet_tiny", ["onnx"], out=site, samples=2)
    assert (site / "report.html").read_text() == "my page"


def test_overwrite_removes_what_the_new_report_does_not_describe(digits_onnx_out, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    for item in digits_onnx_out.iterdir():  # a copy: the fixture's folder stays the digits run
        subprocess.run(["cp", "-r", str(item), str(out)], check=True)
    (out / "tflite").mkdir()  # an earlier run's target folder, for another target
    (out / "tflite" / "model.tflite").write_bytes(b"digits, long ago")
    (out / "logs" / "tflite.log").write_text("old chatter")
    (out / ".edgex-tmp-coral-0badc0de").mkdir()  # a killed run's leftovers
    (out / ".edgex-old-onnx-0badc0de").mkdir()
    (out / ".edgex-scratch" / "tmp").mkdir(parents=True)
    (out / ".report.html.k1ll3d").write_text("<!doctype html><p>half a pa")  # a half-written page
    (out / ".edgex.lock").write_text(f"{_dead_pid()} {os.uname().nodename}\n")  # ... and its lock

    report = api.convert(f"{MODELS}:resnet_tiny", ["onnx"], out=out, samples=2, overwrite=True)

    written = json.loads((out / "report.json").read_text())
    assert written["model"]["spec"].endswith("resnet_tiny") and list(written["targets"]) == ["onnx"]
    assert report.targets["onnx"].status == "passed"
    assert sorted(p.name for p in out.iterdir()) == ["logs", "onnx", "report.html", "report.json"]  # 0 stale, 0 leftovers
    assert sorted(p.name for p in (out / "logs").iterdir()) == ["onnx.log"]
    assert [str(p.relative_to(out)) for p in (out / "onnx").rglob("*")] == written["targets"]["onnx"]["artifacts"]


def test_the_same_model_reuses_its_folder_and_a_failed_target_leaves_no_old_artifact(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SITE))
    monkeypatch.setenv("EDGEX_LOAD_PLUGINS", "crashy")
    assert api.convert(f"{MODELS}:resnet_tiny", ["onnx"], out=tmp_path, samples=2).targets["onnx"].status == "passed"
    (tmp_path / "crashy").mkdir()  # as if an earlier run had converted it
    (tmp_path / "crashy" / "model.crash").write_bytes(b"old")
    report = api.convert(f"{MODELS}:resnet_tiny", ["onnx", "crashy"], out=tmp_path, samples=2)
    assert report.targets["crashy"].status == "error" and report.targets["onnx"].status == "passed"
    assert not (tmp_path / "crashy").exists()  # the report says crashy has no artifact: none is there
    assert (tmp_path / "onnx").is_dir()


def test_validate_keeps_the_folder_holding_its_artifact(digits_onnx_out):
    artifact = digits_onnx_out / json.loads((digits_onnx_out / "report.json").read_text())["targets"]["onnx"]["artifacts"][0]
    report = api.validate(artifact, "examples:digits", out=digits_onnx_out, samples=2)
    assert report.targets["onnx"].status == "passed" and artifact.exists()


# --------------------------------------------------------------------------- the lock


def test_a_live_runs_lock_is_refused_and_a_dead_runs_lock_taken_over(tmp_path, capsys):
    import fcntl

    lock = tmp_path / ".edgex.lock"
    lock.write_text(f"{os.getppid()} {os.uname().nodename}\n")
    with open(lock) as held:  # a live run holds it
        fcntl.flock(held, fcntl.LOCK_EX)
        code = main(["convert", f"{MODELS}:resnet_tiny", "-t", "onnx", "--samples", "2", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"in use by another edgex run (pid {os.getppid()}" in err
    assert lock.read_text().startswith(str(os.getppid()))  # not someone else's to remove

    # the file of a run killed outright: nobody holds it (the kernel released the flock)
    lock.write_text(f"{os.getppid()} {os.uname().nodename}\n")
    code = main(["convert", f"{MODELS}:resnet_tiny", "-t", "onnx", "--samples", "2", "--out", str(tmp_path)])
    capsys.readouterr()
    assert code == 0 and not lock.exists() and (tmp_path / "onnx").is_dir()


def _race_for_the_lock(out, start, won, round_):
    from edgex.core.runner import _release_lock, _take_lock

    start.wait()
    try:
        held, _ = _take_lock(out)
    except UsageError:
        return
    won.put((round_, os.getpid()))
    time.sleep(0.2)  # hold it while the others try
    _release_lock(held)


def test_runs_taking_over_a_killed_runs_lock_at_once_admit_exactly_one(tmp_path):
    import multiprocessing

    context = multiprocessing.get_context("fork")
    won = context.Queue()
    for round_ in range(10):
        out = tmp_path / f"round{round_}"
        out.mkdir()
        (out / ".edgex.lock").write_text(f"{_dead_pid()} {os.uname().nodename}\n")  # a killed run's
        start = context.Barrier(4)
        racers = [context.Process(target=_race_for_the_lock, args=(out, start, won, round_)) for _ in range(4)]
        for racer in racers:
            racer.start()
        for racer in racers:
            racer.join(30)
        assert not (out / ".edgex.lock").exists()
    winners = []
    while not won.empty():
        winners.append(won.get())
    rounds = [r for r, _ in winners]
    assert sorted(set(rounds)) == list(range(10)) and len(rounds) == 10, winners  # one run per round, never two


# --------------------------------------------------------------------------- real concurrent runs and signals


def _start_sleeper(send):
    """A target's work that starts a converter subprocess of its own, then hangs."""
    sleeper = subprocess.Popen(["sleep", "60"])
    send("sleeper", sleeper.pid)
    time.sleep(60)


def test_ending_a_child_ends_the_processes_it_started(monkeypatch):
    monkeypatch.setenv("EDGEX_ISOLATION", "fork")
    job = start_isolated(_start_sleeper, what="target sleeper")
    pids = []

    def on_event(kind, pid):
        pids.extend([job.process.pid, pid])
        raise KeyboardInterrupt  # as SIGINT would, while the parent waits

    with pytest.raises(KeyboardInterrupt):
        job.wait(on_event)
    time.sleep(0.2)
    assert len(pids) == 2 and not [pid for pid in pids if _alive(pid)]



KILLED_PARENT = """
import sys, time
from edgex.core.isolation import start_isolated

def hang(send):
    send("pid", None)
    time.sleep(60)

job = start_isolated(hang, what="hang")
job.wait(lambda kind, payload: (print(job.process.pid, flush=True), time.sleep(60)))
"""


def test_a_child_dies_with_a_parent_killed_outright(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", KILLED_PARENT], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, EDGEX_ISOLATION="fork", PYTHONPATH=os.pathsep.join(sys.path)))
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.kill()  # SIGKILL: no handler runs
    parent.wait()
    deadline = time.monotonic() + 5
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_run_ends_every_child_and_keeps_the_finished_targets(signum, code, tmp_path, capsys):
    out = tmp_path / "out"
    run = _edgex("convert", f"{MODELS}:resnet_tiny", "-t", "onnx", "-t", "sleepy", "--samples", "2", out=out)
    try:
        _wait_for(out / "logs" / "sleepy.log", run)  # onnx finished; sleepy's child is converting
        if signum == signal.SIGTERM:
            # a second run into the same folder meanwhile fails fast, in one line, touching nothing
            second = main(["convert", f"{MODELS}:resnet_tiny", "-t", "onnx", "--samples", "2", "--out", str(out)])
            err = capsys.readouterr().err
            assert second == 2 and err.count("\n") == 1 and f"in use by another edgex run (pid {run.pid}" in err
        children = _descendants(run.pid)
        assert children, "the sleepy target's child should be running"
        os.kill(run.pid, signum)
        _, stderr = run.communicate(timeout=20)
    finally:
        run.kill()
    assert run.returncode == code
    assert [line for line in stderr.splitlines() if line.strip()][-1].startswith(f"edgex: interrupted by {signal.Signals(signum).name}")
    assert "Traceback" not in stderr
    time.sleep(0.2)  # the kernel reaps a SIGKILLed group asynchronously
    assert not [pid for pid in children if _alive(pid)]  # 0 orphans
    assert _leftovers(out) == []  # no work folder, scratch or lock
    assert not (out / "sleepy").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["targets"]["onnx"]["status"] == "passed" and (out / "onnx").is_dir()  # 0 lost results
    assert report["targets"]["sleepy"]["status"] == "error" and report["targets"]["sleepy"]["messages"] == ["interrupted"]


@pytest.mark.parametrize("signum, code, jobs", [(signal.SIGTERM, 143, 2), (signal.SIGINT, 130, 1)], ids=["SIGTERM-2-workers", "SIGINT-in-process"])
def test_a_signal_to_a_matrix_ends_its_workers_and_keeps_the_finished_cells(signum, code, jobs, tmp_path):
    config = tmp_path / "matrix.toml"
    config.write_text(
        'targets = ["onnx", "sleepy"]\nsamples = 2\n'
        f'[[models]]\nspec = "{MODELS}:resnet_tiny"\nname = "first"\n[[models]]\nspec = "{MODELS}:resnet_tiny"\nname = "second"\n'
    )
    out = tmp_path / "out"
    run = _edgex("matrix", config, "--jobs", jobs, out=out)
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("cells/*/*/logs/sleepy.log"))) < jobs:  # every worker's onnx done, sleepy converting
            if run.poll() is not None or time.monotonic() > deadline:
                run.kill()
                pytest.fail(f"sleepy did not start in every worker: {run.stderr.read()}")
            time.sleep(0.1)
        children = _descendants(run.pid)
        assert len(children) >= jobs
        os.kill(run.pid, signum)
        _, stderr = run.communicate(timeout=60)
    finally:
        run.kill()
    assert run.returncode == code
    assert [line for line in stderr.splitlines() if line.strip()][-1].startswith(f"edgex: interrupted by {signal.Signals(signum).name}")
    assert "Traceback" not in stderr
    time.sleep(0.2)
    assert not [pid for pid in children if _alive(pid)]  # 0 orphans
    for folder in out.glob("cells/*/*"):
        assert _leftovers(folder) == [] and not (folder / "sleepy").exists()
    cells = {(c["cell"]["model"], c["cell"]["target"]): c["targets"][c["cell"]["target"]] for c in json.loads((out / "results.json").read_text())}
    assert len(cells) == 4
    started = ["first", "second"][:jobs]
    for model in ("first", "second"):
        assert cells[model, "sleepy"]["status"] == "error" and cells[model, "sleepy"]["messages"] == ["interrupted"]
        if model in started:  # 0 lost results: the onnx cell finished before the signal
            assert cells[model, "onnx"]["status"] == "passed" and (out / cells[model, "onnx"]["artifacts"][0]).exists()
        else:
            assert cells[model, "onnx"]["messages"] == ["interrupted"]
    assert "interrupted by" in (out / "report.md").read_text()


def test_a_model_a_target_does_not_take_is_skipped_under_all_and_an_error_when_named(tmp_path, monkeypatch):
    """``UnsupportedModel`` (the target's "not this model", raised in its child) under
    ``--target all`` is a skipped row saying why, as a precision the target lacks is; named, an error."""
    monkeypatch.syspath_prepend(str(SITE))
    monkeypatch.setenv("EDGEX_LOAD_PLUGINS", "crashy")
    manager = api.plugin_manager()
    named = api.convert(f"{MODELS}:resnet_tiny", ["picky"], out=tmp_path / "named", samples=2, plugins=manager)
    assert named.targets["picky"].status == "error" and named.exit_code == 3
    assert named.targets["picky"].messages == ["picky takes no model with a convolution"]
    declared = manager.targets()
    monkeypatch.setattr(manager, "targets", lambda: {n: declared[n] for n in ("onnx", "picky")})  # `all`, kept small
    everything = api.convert(f"{MODELS}:resnet_tiny", ["all"], out=tmp_path / "all", samples=2, plugins=manager)
    assert everything.targets["picky"].status == "skipped" and everything.targets["picky"].messages == ["picky takes no model with a convolution"]
    assert everything.targets["onnx"].status == "passed" and everything.exit_code == 0
    assert not (tmp_path / "all" / "picky").exists() and _leftovers(tmp_path / "all") == []
