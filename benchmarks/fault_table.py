"""The reliability fault table of docs/reliability.md, tried for real (issues 16 and 25).

    python benchmarks/fault_table.py [--json results.json] [--only TEXT]

Every case runs ``edgex`` as a separate process on purpose-made faults -- a reused folder, a
foreign folder, a killed run's lock and leftovers, two runs at once, SIGTERM and SIGINT in the
middle of a run and of a matrix, corrupt artifacts, bad shapes, NaN data, a text file as a .pt2,
``--debug`` after the subcommand; and (issue 25) a model's own code that exits, hangs, parses
the command line, prints, is killed or raises on some inputs, inputs larger than the machine, an
``--out`` under a file or on a full disk, a data folder holding a text file, damaged cache
entries -- and then counts, from outside:

- **0-unproven**: runs that exited 0 without a report of theirs in which every target passed;
- **internal**: "internal error" lines (every failure should be named);

- **stale**: files in ``--out`` that its report does not describe (a target folder without a row
  with artifacts, an artifact a row lists that is missing, a work folder, scratch or lock left);
- **orphans**: processes the run started that are still alive after it exited;
- **lost**: targets that had finished before a signal but are not ``passed`` in the report;
- **tracebacks**: Python tracebacks (or library warnings) on the terminal without ``--debug``.

Nothing is asserted (tests/test_reliability_out.py and tests/test_bad_input.py do that): this
prints the table the docs quote, with its totals, measured in one run. The slow target is
``sleepy`` from tests/data/site/edgex_crashy.py, a plugin whose child sleeps a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
RESNET = f"{TESTS / 'models.py'}:resnet_tiny"
LEFTOVER_PREFIXES = (".edgex-tmp-", ".edgex-old-", ".edgex-scratch", ".edgex.lock", ".report.json.", ".report.html.")


def edgex(*args: Any, cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, EDGEX_LOAD_PLUGINS="crashy", PYTHONPATH=os.pathsep.join([str(TESTS / "data" / "site"), *sys.path]))
    return subprocess.Popen([sys.executable, "-m", "edgex.core.cli", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def descendants(root: int) -> set[int]:
    """Every process below ``root``, and every member of a process group one of them leads."""
    parents, groups = {}, {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)], groups[int(entry.name)] = int(fields[1]), int(fields[2])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    leaders = {groups[pid] for pid in found if pid in groups}
    return found | {pid for pid, group in groups.items() if group in leaders and group != groups.get(root)}


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stale(out: Path) -> list[str]:
    """What in ``out`` its report does not describe (nothing at all when ``out`` holds no report)."""
    if not out.is_dir():
        return []
    found = [p.name for p in out.iterdir() if p.name.startswith(LEFTOVER_PREFIXES)]
    report_path = out / "report.json"
    if not report_path.exists():
        return found
    report = json.loads(report_path.read_text())
    described = {t for t, row in report["targets"].items() if row.get("artifacts")}
    for row in report["targets"].values():
        found += [a for a in row.get("artifacts", []) if not (out / a).exists()]
    folders = {p.name for p in out.iterdir() if p.is_dir() and not p.name.startswith(".") and p.name != "logs"}
    return found + sorted(folders - described)


def wait_for(pattern: str, out: Path, process: subprocess.Popen, count: int = 1, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while len(list(out.glob(pattern))) < count:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"{pattern} did not appear: {process.stderr.read()}")
        time.sleep(0.1)


def dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


# --------------------------------------------------------------------------- the cases
# each returns (exit code, stderr, stale files, orphan processes, lost finished results)

Case = Callable[[Path], tuple[int, str, int, int, int]]


def converted(work: Path, name: str, *targets: str, model: str = "examples:digits") -> Path:
    out = work / name
    code, err = finish(edgex("convert", model, *(a for t in targets for a in ("-t", t)), "--samples", "2", "--out", out, cwd=work))
    if code != 0:
        raise RuntimeError(f"setting up {name}: {err}")
    return out


def another_models_folder(work: Path):
    out = converted(work, "digits", "onnx")
    code, err = finish(edgex("convert", RESNET, "-t", "onnx", "--samples", "2", "--out", out, cwd=work))
    return code, err, len(stale(out)), 0, 0


def foreign_folder(work: Path):
    out = work / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file")
    code, err = finish(edgex("convert", "examples:digits", "-t", "onnx", "--out", out, cwd=work))
    return code, err, len(stale(out)), 0, 0


def overwrite_another_models_folder(work: Path):
    out = converted(work, "digits-all", "onnx", "tflite")
    code, err = finish(edgex("convert", RESNET, "-t", "onnx", "--samples", "2", "--overwrite", "--out", out, cwd=work))
    return code, err, len(stale(out)), 0, 0


def same_model_fewer_targets(work: Path):
    out = converted(work, "digits-two", "onnx", "tflite")
    code, err = finish(edgex("convert", "examples:digits", "-t", "onnx", "--samples", "2", "--out", out, cwd=work))
    return code, err, len(stale(out)), 0, 0


def same_model_target_errors(work: Path):
    out = converted(work, "resnet", "onnx", model=RESNET)
    (out / "crashy").mkdir()
    (out / "crashy" / "model.crash").write_bytes(b"an earlier run's artifact")
    code, err = finish(edgex("convert", RESNET, "-t", "onnx", "-t", "crashy", "--samples", "2", "--out", out, cwd=work))
    return code, err, len(stale(out)), 0, 0


def killed_runs_lock_and_leftovers(work: Path):
    out = converted(work, "killed", "onnx", model=RESNET)
    (out / ".edgex-tmp-onnx-0badc0de").mkdir()
    (out / ".edgex-scratch" / "tmp").mkdir(parents=True)
    (out / ".edgex.lock").write_text(f"{dead_pid()} {os.uname().nodename}\n")
    code, err = finish(edgex("convert", RESNET, "-t", "onnx", "--samples", "2", "--out", out, cwd=work))
    return code, err, len(stale(out)), 0, 0


def two_runs_at_once(work: Path):
    out = work / "shared"
    first = edgex("convert", RESNET, "-t", "onnx", "-t", "sleepy", "--samples", "2", "--out", out, cwd=work)
    wait_for("logs/sleepy.log", out, first)
    code, err = finish(edgex("convert", RESNET, "-t", "onnx", "--samples", "2", "--out", out, cwd=work))
    first.send_signal(signal.SIGTERM)
    finish(first)
    return code, err, len(stale(out)), 0, 0


def signal_mid_run(signum: int) -> Case:
    def case(work: Path):
        out = work / f"signal-{signum}"
        run = edgex("convert", RESNET, "-t", "onnx", "-t", "sleepy", "--samples", "2", "--out", out, cwd=work)
        wait_for("logs/sleepy.log", out, run)  # onnx finished, sleepy's child converting
        children = descendants(run.pid)
        run.send_signal(signum)
        code, err = finish(run, 60)
        time.sleep(0.3)  # the kernel reaps a killed group asynchronously
        report = json.loads((out / "report.json").read_text())
        lost = int(report["targets"].get("onnx", {}).get("status") != "passed")
        return code, err, len(stale(out)), sum(alive(p) for p in children), lost
    return case


def signal_mid_matrix(signum: int, jobs: int) -> Case:
    def case(work: Path):
        config = work / f"matrix-{signum}.toml"
        config.write_text(f'targets = ["onnx", "sleepy"]\nsamples = 2\n[[models]]\nspec = "{RESNET}"\nname = "a"\n[[models]]\nspec = "{RESNET}"\nname = "b"\n')
        out = work / f"matrix-{signum}"
        run = edgex("matrix", config, "--jobs", jobs, "--out", out, cwd=work)
        wait_for("cells/*/*/logs/sleepy.log", out, run, count=jobs)
        children = descendants(run.pid)
        run.send_signal(signum)
        code, err = finish(run, 90)
        time.sleep(0.3)
        cells = json.loads((out / "results.json").read_text())
        started = {"a", "b"} if jobs > 1 else {"a"}
        lost = sum(1 for c in cells if c["cell"]["target"] == "onnx" and c["cell"]["model"] in started
                   and c["targets"]["onnx"]["status"] != "passed")
        left = sum(len(stale(folder)) for folder in out.glob("cells/*/*"))
        return code, err, left, sum(alive(p) for p in children), lost
    return case


def corrupt_artifact(kind: str) -> Case:
    def case(work: Path):
        source = converted(work, f"for-{kind}", kind)
        artifact = next(p for p in (source / kind).iterdir() if p.suffix in (".onnx", ".tflite"))
        artifact.write_bytes(artifact.read_bytes()[: artifact.stat().st_size // 2])
        out = work / f"validate-{kind}"
        code, err = finish(edgex("validate", artifact, "--reference", "examples:digits", "--out", out, cwd=work))
        return code, err, len(stale(out)), 0, 0
    return case


def bad_input_shape(work: Path):
    out = work / "shape"
    code, err = finish(edgex("convert", RESNET, "--input-shape", "1,x,32,32", "-t", "onnx", "--out", out, cwd=work))
    return code, err, len(stale(out)), 0, 0


def nan_calibration(work: Path):
    import numpy as np

    data = np.random.default_rng(0).normal(size=(8, 1, 8, 8)).astype(np.float32)
    data[3, 0, 2, 2] = np.nan
    np.save(work / "calib-nan.npy", data)
    out = work / "nan"
    code, err = finish(edgex("convert", "examples:digits", "-t", "onnx", "--quantize", "int8", "--calibration", work / "calib-nan.npy", "--out", out, cwd=work))
    return code, err, len(stale(out)), 0, 0


def text_as_pt2(work: Path):
    (work / "model.pt2").write_text("not a torch program\n")
    out = work / "pt2-text"
    code, err = finish(edgex("convert", work / "model.pt2", "-t", "onnx", "--out", out, cwd=work))
    return code, err, len(stale(out)), 0, 0


def debug_after_subcommand(work: Path):
    out = work / "debug"
    code, err = finish(edgex("convert", RESNET, "--input-shape", "1,x", "-t", "onnx", "--debug", "--out", out, cwd=work))
    # a traceback is what --debug asks for: only the exit code and the last line are judged here
    return code, err.strip().splitlines()[-1] if err.strip() else "", len(stale(out)), 0, 0


def pt2_for_every_target(work: Path):
    import torch

    sys.path.insert(0, str(TESTS))
    from models import resnet_tiny  # noqa: E402

    module, inputs = resnet_tiny()
    torch.export.save(torch.export.export(module.eval(), inputs), str(work / "resnet.pt2"))
    out = work / "pt2-all"
    code, err = finish(edgex("convert", work / "resnet.pt2", "-t", "onnx", "-t", "jetson", "-t", "tflite", "--quantize", "int8", "--samples", "2", "--out", out, cwd=work))
    return code, err, len(stale(out)), 0, 0


# ------------------------------------------------------------- the model's own code and the machine (issue 25)


def model_file(work: Path, body: str, head: str = "") -> str:
    (work / "model.py").write_text(f"import os, sys, time, torch\n{head}\ndef build():\n{body}")
    return f"{work / 'model.py'}:build"


LINEAR = "    return torch.nn.Linear(4, 2), (torch.zeros(1, 4),)\n"


def user_code(body: str, *extra: str, head: str = "", samples: str = "4") -> Case:
    def case(work: Path):
        out = work / "out"
        code, err = finish(edgex("convert", model_file(work, body, head), "-t", "onnx", "--samples", samples, *extra, "--out", out, cwd=work))
        return code, err, len(stale(out)), 0, 0
    return case


def convert_digits(*extra: Any, prepare: Callable[[Path], None] | None = None, out_name: str = "out") -> Case:
    def case(work: Path):
        if prepare is not None:
            prepare(work)
        out = work / out_name
        code, err = finish(edgex("convert", "examples:digits", "-t", "onnx", "--samples", "2", *extra, "--out", out, cwd=work))
        return code, err, len(stale(out)) if out.parent.is_dir() else 0, 0, 0
    return case


def a_file_in_the_way(work: Path) -> None:
    (work / "notes.txt").write_text("a file where a folder is asked for")


def images_and_a_text_file(work: Path) -> None:
    from PIL import Image
    import numpy as np

    folder = work / "calib"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (8, 8), dtype=np.uint8)).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("which images these are")


def damaged_cache(damage: str) -> Case:
    def case(work: Path):
        cache = work / "cache"
        first = work / "cached"
        code, err = finish(edgex("convert", "examples:digits", "-t", "onnx", "--samples", "2", "--cache", cache, "--out", first, cwd=work))
        if code != 0:
            raise RuntimeError(f"setting up the cache: {err}")
        entry = next(p for p in cache.rglob("manifest.json")).parent
        artifact = next(p for p in entry.rglob("*.onnx"))
        if damage == "truncated":
            artifact.write_bytes(artifact.read_bytes()[: artifact.stat().st_size // 2])
        else:  # the manifest lists a hash the bytes do not have
            manifest = json.loads((entry / "manifest.json").read_text())
            text = json.dumps(manifest)
            for digest in {v for v in _strings(manifest) if len(v) == 64}:
                text = text.replace(digest, "0" * 64, 1)
                break
            (entry / "manifest.json").write_text(text)
        out = work / "again"
        code, err = finish(edgex("convert", "examples:digits", "-t", "onnx", "--samples", "2", "--cache", cache, "--out", out, cwd=work))
        return code, err, len(stale(out)), 0, 0
    return case


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def full_disk(work: Path):
    """--out on a 300 KB tmpfs, mounted in a user namespace of its own (or skipped: no namespaces)."""
    mount = work / "small"
    mount.mkdir()
    command = " ".join(shlex.quote(str(a)) for a in [sys.executable, "-m", "edgex.core.cli", "convert", "examples:digits", "-t", "onnx", "--samples", "2", "--out", mount / "out"])
    script = f"mount -t tmpfs -o size=300k tmpfs {shlex.quote(str(mount))} && {command}; code=$?; ls -A {shlex.quote(str(mount / 'out'))} > {shlex.quote(str(work / 'left.txt'))} 2>/dev/null; cat {shlex.quote(str(mount / 'out' / 'report.json'))} > {shlex.quote(str(work / 'report.json'))} 2>/dev/null; exit $code"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    run = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=work, env=env, capture_output=True, text=True)
    if "unshare" in run.stderr and run.returncode != 0 and "edgex" not in run.stderr:
        return None
    left = [n for n in (work / "left.txt").read_text().split() if n.startswith(LEFTOVER_PREFIXES)] if (work / "left.txt").exists() else []
    report = (work / "report.json").read_text() if (work / "report.json").exists() else ""
    if report:
        try:
            json.loads(report)
        except ValueError:
            left.append("report.json (half-written)")
    return run.returncode, run.stderr, len(left), 0, 0


USER_CASES: list[tuple[str, Case]] = [
    ("a factory calling sys.exit(0)", user_code("    sys.exit(0)\n")),
    ("a factory calling os._exit(0)", user_code("    os._exit(0)\n")),
    ("a factory calling libc's exit(0)", user_code("    import ctypes\n    ctypes.CDLL(None).exit(0)\n")),
    ("a factory that never returns (--timeout 5)", user_code("    while True:\n        time.sleep(1)\n", "--timeout", "5")),
    ("a training script with module-level argparse", user_code(LINEAR, head="import argparse\np = argparse.ArgumentParser()\np.add_argument('--epochs', type=int)\nargs = p.parse_args()")),
    ("a factory killed (SIGKILL, as by the OOM killer)", user_code("    import signal\n    os.kill(os.getpid(), signal.SIGKILL)\n")),
    ("a forward that raises on some inputs", user_code(
        "    class M(torch.nn.Module):\n        def __init__(self):\n            super().__init__(); self.fc = torch.nn.Linear(4, 2)\n"
        "        def forward(self, x):\n            if float(x.sum()) > 2.0:\n                raise ValueError('out of range')\n            return self.fc(x)\n"
        "    return M(), (torch.zeros(1, 4),)\n", samples="32")),
    ("a factory that writes to stdout (--json)", user_code("    print('building')\n" + LINEAR, "--json")),
    ("--input-shape 1,3,60000,60000", lambda work: _shape_case(work)),
    ("--out under an existing file", convert_digits(prepare=a_file_in_the_way, out_name="notes.txt/out")),
    ("--out on a full disk (300 KB tmpfs)", full_disk),
    ("--calibration folder holding a text file", convert_digits("--quantize", "int8", "--calibration", "calib", prepare=images_and_a_text_file)),
    ("--cache entry truncated", damaged_cache("truncated")),
    ("--cache entry whose manifest lies about its hashes", damaged_cache("lying")),
]


def _shape_case(work: Path):
    out = work / "out"
    code, err = finish(edgex("convert", RESNET, "--input-shape", "1,3,60000,60000", "-t", "onnx", "--out", out, cwd=work))
    return code, err, len(stale(out)), 0, 0


CASES: list[tuple[str, Case]] = [
    ("convert into a folder holding another model's results", another_models_folder),
    ("convert into a non-empty folder edgex did not write", foreign_folder),
    ("the same with --overwrite", overwrite_another_models_folder),
    ("reused folder, same model, fewer targets", same_model_fewer_targets),
    ("reused folder, a target that errors this time", same_model_target_errors),
    ("a killed run's lock and leftovers", killed_runs_lock_and_leftovers),
    ("a second run into a folder in use", two_runs_at_once),
    ("SIGTERM mid-run", signal_mid_run(signal.SIGTERM)),
    ("SIGINT mid-run", signal_mid_run(signal.SIGINT)),
    ("SIGTERM to matrix --jobs 2 mid-run", signal_mid_matrix(signal.SIGTERM, 2)),
    ("SIGINT to matrix --jobs 1 mid-run", signal_mid_matrix(signal.SIGINT, 1)),
    ("validate a truncated .onnx", corrupt_artifact("onnx")),
    ("validate a truncated .tflite", corrupt_artifact("tflite")),
    ("--input-shape 1,x,32,32", bad_input_shape),
    ("NaN in --calibration", nan_calibration),
    ("a text file as model.pt2", text_as_pt2),
    ("--debug after the subcommand (exit 2 kept)", debug_after_subcommand),
    (".pt2 -> onnx, jetson, tflite at int8", pt2_for_every_target),
    *USER_CASES,
]


def proven(work: Path, since: float) -> bool:
    """Whether a report this case's run wrote says every target in it passed (what exit 0 promises)."""
    for path in [*work.rglob("report.json"), *work.rglob("results.json")]:
        if path.stat().st_mtime < since or "cache" in path.relative_to(work).parts:
            continue
        try:
            data = json.loads(path.read_text())
        except ValueError:
            continue
        rows = [row for cell in data for row in cell["targets"].values()] if isinstance(data, list) else list(data.get("targets", {}).values())
        if rows and all(row.get("status") == "passed" or (row.get("status") == "skipped" and not row.get("requested", True)) for row in rows):
            return True
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    parser.add_argument("--only", help="run only the cases whose name contains this text")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgex-faults-") as tmp:
        for index, (name, case) in enumerate(CASES):
            if args.only and args.only not in name:
                continue
            work = Path(tmp) / f"case{index}"
            work.mkdir()
            start, since = time.perf_counter(), time.time()
            result = case(work)
            if result is None:
                print(f"{name}: skipped (this machine cannot set it up)", file=sys.stderr)
                continue
            code, err, left, orphans, lost = result
            lines = [line.replace(str(work), "WORK") for line in err.splitlines() if line.strip()] or ["(nothing on stderr; the results table on stdout)"]
            tracebacks = int("Traceback" in err or "Warning:" in err)
            rows.append({
                "case": name, "exit": code, "stale": left, "orphans": orphans, "lost": lost,
                "tracebacks": tracebacks, "internal": int("internal error" in err),
                "unproven_0": int(code == 0 and not proven(work, since - 1)),
                "last_line": lines[-1][:110] if lines else "", "seconds": round(time.perf_counter() - start, 1),
            })
            print(f"{name}: exit {code}, {rows[-1]['last_line']}", file=sys.stderr)
            shutil.rmtree(work, ignore_errors=True)
    width = max(len(r["case"]) for r in rows)
    print(f"{'case':{width}}  exit  0-unproven  internal  stale  orphans  lost  tracebacks  last line printed")
    for r in rows:
        print(f"{r['case']:{width}}  {r['exit']:>4}  {r['unproven_0']:>10}  {r['internal']:>8}  {r['stale']:>5}  {r['orphans']:>7}  {r['lost']:>4}  {r['tracebacks']:>10}  {r['last_line']}")
    keys = ("unproven_0", "internal", "stale", "orphans", "lost", "tracebacks")
    totals = {k: sum(r[k] for r in rows) for k in keys}
    print(f"{len(rows)} cases: {totals['unproven_0']} exit-0-without-report, {totals['internal']} internal errors, {totals['stale']} stale artifacts, "
          f"{totals['orphans']} orphan processes, {totals['lost']} lost finished results, {totals['tracebacks']} tracebacks without --debug")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "totals": totals}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
