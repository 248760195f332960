"""edgex matrix: the TOML contract, the renderings, the local and Ray executors."""

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from edgex.core.cli import main
from edgex.core.errors import UsageError
from edgex.core.matrix import load_config

MODELS = Path(__file__).parent / "models.py"


def write(tmp_path, text):
    path = tmp_path / "matrix.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "text, message",
    [
        ('targets = ["onnx"]\nflavour = 1\n[[models]]\nspec = "examples:digits"\n', "unknown key 'flavour'"),
        ('[[models]]\nspec = "examples:digits"\ncolour = "red"\n', "unknown key 'colour'"),
        ('[[models]]\nspec = "examples:digits"\n[[compression]]\nprune = 0.5\nshrink = 2\n', "unknown key 'shrink'"),
        ('targets = ["onnx"]\n', "no [[models]]"),
        ('[[models]]\nname = "x"\n', "has no spec"),
        ('[[models]]\nspec = "examples:digits"\ninput_shape = "1,3"\n', "input_shape must be a list"),
        ("targets = [\n", "not valid TOML"),
        ('rewrite = "sometimes"\n[[models]]\nspec = "examples:digits"\n', "rewrite must be one of 'auto', 'none'"),
    ],
)
def test_config_errors_name_the_problem(tmp_path, text, message):
    with pytest.raises(UsageError, match=message.replace("[", r"\[")):
        load_config(write(tmp_path, text))


def test_paths_resolve_beside_the_config(tmp_path):
    config = load_config(write(tmp_path, '[[models]]\nspec = "nets.py:make"\ncalibration = "calib.npy"\ninput_shape = [[1, 3], [1, 4]]\n[[compression]]\nname = "p50"\nprune = 0.5\n'))
    model = config.models[0]
    assert model.spec == f"{tmp_path}/nets.py:make" and model.calibration == tmp_path / "calib.npy"
    assert model.input_shapes == ((1, 3), (1, 4)) and model.name == "nets.py:make"
    assert [p.name for p in config.presets] == ["none", "p50"]  # the uncompressed baseline is always a row


def test_cli_unknown_key_exits_2(tmp_path, capsys):
    config = write(tmp_path, '[[models]]\nspec = "examples:digits"\nwhatever = 1\n')
    assert main(["matrix", str(config), "--out", str(tmp_path / "out")]) == 2
    assert "unknown key 'whatever'" in capsys.readouterr().err


def test_matrix_runs_every_cell_and_renders(tmp_path, capsys):
    config = write(tmp_path, f'targets = ["onnx"]\nprecisions = ["fp32", "int8", "dynamic-int8"]\nsamples = 4\n[[models]]\nspec = "examples:digits"\nname = "digits"\n[[models]]\nspec = "{MODELS}:lstm_tiny"\nname = "lstm"\n')
    out = tmp_path / "out"
    code = main(["matrix", str(config), "--out", str(out)])
    assert code == 0, capsys.readouterr()
    cells = json.loads((out / "results.json").read_text())
    assert sorted((c["cell"]["model"], c["cell"]["precision"]) for c in cells) == [("digits", "fp32"), ("digits", "int8"), ("lstm", "fp32"), ("lstm", "int8")]
    for cell in cells:  # each cell is a report.json object with one target
        row = cell["targets"]["onnx"]
        assert row["status"] == "passed" and row["parity"]["passed"] and cell["edgex_version"]
        assert (out / row["artifacts"][0]).exists()
    suite = ET.parse(out / "junit.xml").getroot()
    assert suite.get("tests") == "4" and suite.get("failures") == "0" and len(suite.findall("testcase")) == 4
    assert "| digits | none | onnx | int8 | passed |" in (out / "report.md").read_text()
    assert (out / "report.html").read_text().count('<td class="cell"') == 4  # the verdict grid (tests/test_report_html.py opens it in a browser)


def test_failed_cell_is_a_junit_failure_and_exit_1(tmp_path, monkeypatch):
    import edgex.core.parity as parity

    monkeypatch.setattr(parity, "tolerance_for", lambda *a, **k: parity.Tolerance(0.0, 0.0, "test: exact"))
    config = write(tmp_path, 'targets = ["onnx"]\nsamples = 2\n[[models]]\nspec = "examples:digits"\n')
    assert main(["matrix", str(config), "--out", str(tmp_path / "out")]) == 1
    suite = ET.parse(tmp_path / "out" / "junit.xml").getroot()
    assert suite.get("failures") == "1" and suite.find("testcase/failure") is not None


def test_rewrite_none_reaches_every_cell(tmp_path):
    """``rewrite = "none"``: the int64 token ids tflite lacks are listed, not rewritten."""
    config = write(tmp_path, f'targets = ["tflite"]\nsamples = 2\nrewrite = "none"\n[[models]]\nspec = "{MODELS}:token_classifier"\n')
    main(["matrix", str(config), "--out", str(tmp_path / "out")])
    (cell,) = json.loads((tmp_path / "out" / "results.json").read_text())
    rewrites = cell["targets"]["tflite"]["rewrites"]
    assert [(e["name"], e["status"], e["reason"]) for e in rewrites] == [("int32-inputs", "skipped", "--rewrite none")], rewrites


def test_parallel_local_jobs(tmp_path):
    config = write(tmp_path, f'targets = ["onnx"]\nsamples = 2\n[[models]]\nspec = "examples:digits"\n[[models]]\nspec = "{MODELS}:lstm_tiny"\n')
    assert main(["matrix", str(config), "--jobs", "2", "--out", str(tmp_path / "out")]) == 0
    assert len(json.loads((tmp_path / "out" / "results.json").read_text())) == 2


def test_models_are_weighed_by_their_graph(tmp_path):
    """What orders a parallel matrix's groups (biggest first): a torch model's modules, an ONNX
    model's nodes, 0 for a model that cannot be loaded."""
    from edgex.core.matrix import model_size

    onnx_path = tmp_path / "tiny.onnx"
    assert main(["convert", f"{MODELS}:lstm_tiny", "--target", "onnx", "--samples", "2", "--out", str(tmp_path / "c")]) == 0
    onnx_path.write_bytes((tmp_path / "c" / "onnx" / "model.onnx").read_bytes())
    config = load_config(write(tmp_path, f'[[models]]\nspec = "{MODELS}:mobilenet_tiny"\n[[models]]\nspec = "{MODELS}:resnet_tiny"\n'
                                         f'[[models]]\nspec = "{onnx_path}"\n[[models]]\nspec = "missing.py:nothing"\n'))
    sizes = [model_size(config, i) for i in range(4)]
    assert sizes[0] > sizes[1] > 0 and sizes[2] > 0 and sizes[3] == 0, sizes


def test_a_worker_that_dies_costs_its_group_only_and_is_replaced(tmp_path):
    """Three groups on two workers; loading the middle model kills its worker outright. Its cells
    are errors saying so; a fresh worker runs the group after it, and the first worker's group
    stands."""
    (tmp_path / "killer.py").write_text("import os\nimport signal\n\n\ndef model():\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    config = write(
        tmp_path,
        f'targets = ["onnx"]\nsamples = 2\n[[models]]\nspec = "examples:digits"\nname = "first"\n'
        f'[[models]]\nspec = "killer.py:model"\nname = "killer"\n[[models]]\nspec = "{MODELS}:lstm_tiny"\nname = "after"\n',
    )
    assert main(["matrix", str(config), "--jobs", "2", "--out", str(tmp_path / "out")]) == 3
    rows = {c["cell"]["model"]: c["targets"]["onnx"] for c in json.loads((tmp_path / "out" / "results.json").read_text())}
    assert rows["first"]["status"] == "passed" and rows["after"]["status"] == "passed"
    assert rows["killer"]["status"] == "error" and "its worker process crashed with signal SIGKILL" in rows["killer"]["messages"][0], rows["killer"]


@pytest.fixture
def ray_cluster(tmp_path, monkeypatch):
    """A real local Ray cluster (``ray start --head``) for the test, stopped afterwards: its
    address is what ``--address`` takes for a cluster that is already running. It has a token of
    its own (Ray's token authentication), so no token file in the home folder decides the test."""
    import importlib.util
    import os
    import secrets
    import signal
    import socket
    import subprocess
    import sys
    import tempfile
    import time

    if importlib.util.find_spec("ray") is None:
        pytest.skip("ray is not installed (pip install 'edgex[ray]')")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # read by the head, its workers and the edgex driver
    monkeypatch.setenv("RAY_AUTH_TOKEN", secrets.token_hex(32))
    temp = tempfile.mkdtemp(prefix="/tmp/ray-")  # short: Ray's socket paths must stay under 108 bytes
    log = open(tmp_path / "ray-head.log", "wb")
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,  # its own process group: stopped as one
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert head.poll() is None, (tmp_path / "ray-head.log").read_text()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the Ray head did not start in 120 s"
                time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)  # `ray start --block` drains and ends the processes it started
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
            head.wait()
        try:  # anything of its process group still running
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
        import shutil

        shutil.rmtree(temp, ignore_errors=True)


def test_ray_executor_on_a_running_cluster(tmp_path, ray_cluster):
    import subprocess
    import sys

    config = write(tmp_path, f'targets = ["onnx"]\nsamples = 2\n[[models]]\nspec = "examples:digits"\n[[models]]\nspec = "{MODELS}:lstm_tiny"\n')
    # as a user runs it: a driver process of its own joins the cluster
    argv = [sys.executable, "-m", "edgex.core.cli", "matrix", str(config), "--executor", "ray", "--address", ray_cluster, "--out", str(tmp_path / "out")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    cells = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [c["targets"]["onnx"]["status"] for c in cells] == ["passed", "passed"]
    assert all((tmp_path / "out" / c["targets"]["onnx"]["artifacts"][0]).exists() for c in cells)


def test_address_needs_the_ray_executor(tmp_path, capsys):
    config = write(tmp_path, '[[models]]\nspec = "examples:digits"\n')
    assert main(["matrix", str(config), "--address", "127.0.0.1:6379", "--out", str(tmp_path / "out")]) == 2
    assert "--address names a Ray cluster: use it with --executor ray" in capsys.readouterr().err


class _Run:
    """What the starter keeps of a started target: its job, which it cancels on failure."""

    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name
        self.job = self

    def cancel(self) -> None:
        self.log.append(f"cancel {self.name}")


def test_targets_start_as_slots_free_up_and_are_handed_out_in_order(tmp_path):
    """Two slots shared by two workers: while the other worker holds one, a group runs one
    target at a time; alone, it runs two; a dead worker's slots are freed by the matrix."""
    import multiprocessing
    from types import SimpleNamespace

    from edgex.core.matrix import WorkerSlots
    from edgex.core.pipeline import _Starter

    slots = WorkerSlots(multiprocessing.get_context("spawn"), 2)
    mine, other = slots.for_worker(0), slots.for_worker(1)
    log: list[str] = []

    def start(plan):
        log.append(f"start {plan.target}")
        (tmp_path / plan.target).mkdir()
        return _Run(log, plan.target), tmp_path / plan.target

    plans = [SimpleNamespace(target=name) for name in ("a", "b", "c", "d")]
    starter = _Starter(start, mine)
    starter.waiting = list(plans)
    assert other.try_take()  # the other worker converts one target
    starter.top_up()
    assert log == ["start a"] and not mine.try_take()
    other.give()
    starter.take(plans[0])
    starter.finished()  # a done: b and c start, both slots are this worker's
    assert log == ["start a", "start b", "start c"] and list(slots.held) == [2, 0]
    starter.take(plans[1])
    starter.finished()
    assert log[-1] == "start d"
    starter.cancel()  # an interrupted run: c and d end, their slots are free
    assert log[-2:] == ["cancel c", "cancel d"] and list(slots.held) == [0, 0]
    assert other.try_take() and other.try_take() and not mine.try_take()
    slots.forget(1)  # the other worker died holding both
    assert mine.try_take()
