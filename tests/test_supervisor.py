"""Exit 0 is a promise (issue 25): the model's own code cannot make ``edgex`` return 0 having
checked nothing, and whatever it does -- exit, hang, print, crash -- is named in one line.

Every case runs the real ``edgex`` program (``python -m edgex.core.cli``: supervised, as the
console script is) on a small model file written here. The cases that only the supervising
process can catch (a C-level exit, a kill, an exit during the reference's forward passes) fail
on a single-process edgex, which returned that process's status.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

LINEAR = "    return torch.nn.Linear(4, 2), (torch.zeros(1, 4),)\n"


def _model(tmp_path: Path, body: str, head: str = "") -> str:
    path = tmp_path / "model.py"
    path.write_text(f"import os, sys, time, torch\n{head}\ndef build():\n{body}")
    return f"{path}:build"


def _edgex(tmp_path: Path, *args: str, timeout: float = 240) -> tuple[int, str, str, float]:
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "edgex.core.cli", *args], cwd=tmp_path, capture_output=True, text=True, timeout=timeout)
    return run.returncode, run.stdout, run.stderr, time.monotonic() - started


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgex: error: "), stderr
    assert "internal error" not in stderr and "Traceback" not in stderr
    return lines[0]


@pytest.mark.parametrize("call, named", [
    ("    sys.exit(0)\n", "sys.exit(0)"),
    ("    os._exit(0)\n", "os._exit(0)"),
], ids=["sys.exit", "os._exit"])
def test_a_factory_that_exits_is_exit_2_naming_the_file_and_the_call(tmp_path, call, named):
    spec = _model(tmp_path, call)
    code, _, err, _ = _edgex(tmp_path, "convert", spec, "-t", "onnx", "--out", "out")
    line = _one_line(err)
    assert code == 2 and named in line and f"{tmp_path / 'model.py'}:4" in line
    assert not (tmp_path / "out").exists()


def test_an_exit_no_python_guard_sees_is_named_by_the_supervisor(tmp_path):
    # libc's exit(0): no SystemExit, no os._exit -- only the process that watches can tell
    spec = _model(tmp_path, "    import ctypes\n    ctypes.CDLL(None).exit(0)\n")
    code, _, err, _ = _edgex(tmp_path, "convert", spec, "-t", "onnx", "--out", "out")
    line = _one_line(err)
    assert code == 2 and "ended the process with status 0" in line and "loading the model" in line


def test_a_killed_worker_is_named_with_its_stage_and_never_0(tmp_path):
    # what the kernel's out-of-memory killer does: SIGKILL, no chance to say anything
    spec = _model(tmp_path, "    import signal\n    os.kill(os.getpid(), signal.SIGKILL)\n")
    code, _, err, _ = _edgex(tmp_path, "convert", spec, "-t", "onnx", "--out", "out")
    line = _one_line(err)
    assert code == 3 and "SIGKILL" in line and "out-of-memory" in line and "loading the model" in line


def test_an_exit_in_the_forward_passes_leaves_no_report_and_no_leftovers(tmp_path):
    body = (
        "    class M(torch.nn.Module):\n"
        "        def __init__(self):\n"
        "            super().__init__(); self.fc = torch.nn.Linear(4, 2); self.calls = 0\n"
        "        def forward(self, x):\n"
        "            self.calls += 1\n"
        "            if self.calls > 3:\n"
        "                os._exit(0)\n"
        "            return self.fc(x)\n"
        "    return M(), (torch.zeros(1, 4),)\n"
    )
    spec = _model(tmp_path, body)
    code, _, err, _ = _edgex(tmp_path, "convert", spec, "-t", "onnx", "--samples", "8", "--out", "out")
    line = _one_line(err)
    assert code == 3 and "status 0" in line and "reference model's outputs" in line
    out = tmp_path / "out"
    assert not (out / "report.json").exists()
    assert [p.name for p in out.iterdir() if p.name != "logs"] == []  # no work folder, scratch or lock


def test_timeout_covers_loading_and_names_the_stage(tmp_path):
    spec = _model(tmp_path, "    while True:\n        time.sleep(1)\n")
    code, _, err, seconds = _edgex(tmp_path, "convert", spec, "-t", "onnx", "--timeout", "3", "--out", "out")
    line = _one_line(err)
    assert code == 3 and "loading the model" in line and "--timeout 3 s" in line
    assert seconds < 60


def test_a_training_script_parsing_the_command_line_at_import_is_told_to_guard_it(tmp_path):
    head = "import argparse\nparser = argparse.ArgumentParser()\nparser.add_argument('--epochs', type=int)\nargs = parser.parse_args()\n"
    spec = _model(tmp_path, LINEAR, head)
    code, out, err, _ = _edgex(tmp_path, "convert", spec, "-t", "onnx", "--out", "out")
    line = _one_line(err)  # not the script's "usage: edgex [-h] [--epochs EPOCHS]"
    assert code == 2 and "parses the command line" in line and "__main__" in line and "usage:" not in err + out


def test_what_the_model_prints_stays_off_stdout_and_goes_to_its_log(tmp_path):
    spec = _model(tmp_path, "    print('building the model'); print('epoch 1 loss 0.5', file=sys.stderr)\n" + LINEAR, "print('hello from import')")
    code, out, err, _ = _edgex(tmp_path, "convert", spec, "-t", "onnx", "--samples", "4", "--json", "--out", "out")
    assert code == 0, err
    report = json.loads(out)  # stdout is report.json and nothing else
    assert "hello" not in err and "building" not in err
    log = (tmp_path / "out" / "logs" / "model.log").read_text()
    assert "hello from import" in log and "building the model" in log and "epoch 1" in log
    assert any("logs/model.log" in m for m in report["messages"])


def test_a_forward_that_raises_on_some_inputs_is_one_line_naming_the_input(tmp_path):
    body = (
        "    class M(torch.nn.Module):\n"
        "        def __init__(self):\n"
        "            super().__init__(); self.fc = torch.nn.Linear(4, 2)\n"
        "        def forward(self, x):\n"
        "            if float(x.sum()) > 2.0:\n"
        "                raise ValueError('input out of range')\n"
        "            return self.fc(x)\n"
        "    return M(), (torch.zeros(1, 4),)\n"
    )
    spec = _model(tmp_path, body)
    code, _, err, _ = _edgex(tmp_path, "convert", spec, "-t", "onnx", "--samples", "32", "--out", "out")
    line = _one_line(err)
    assert code == 2 and "forward raised on input" in line and "input out of range" in line


def test_validate_names_its_target_and_is_0_from_its_report(tmp_path):
    """validate's --target is one name (convert's a list): the report must hold its row."""
    code, _, err, _ = _edgex(tmp_path, "convert", "examples:digits", "-t", "onnx", "--samples", "2", "--out", "first")
    assert code == 0, err
    code, _, err, _ = _edgex(tmp_path, "validate", "first/onnx/model.onnx", "--reference", "examples:digits", "--target", "onnx", "--samples", "2", "--out", "again")
    assert code == 0 and not err.strip(), err
    assert json.loads((tmp_path / "again" / "report.json").read_text())["targets"]["onnx"]["status"] == "passed"


@pytest.mark.parametrize("args, expected", [(("convert", "--help"), 0), (("matrix", "--help"), 0), (("convert", "x", "--no-such-option"), 2)], ids=["convert-help", "matrix-help", "usage-error"])
def test_help_and_usage_errors_of_reporting_commands_owe_no_report(tmp_path, args, expected):
    """Parsing ends before any work: --help is 0 and a usage error 2, as argparse says, never the
    supervisor's "ended with 0 but wrote no report"."""
    code, out, err, _ = _edgex(tmp_path, *args)
    assert code == expected and "no report" not in err, err
    assert ("usage:" in out) if expected == 0 else ("--no-such-option" in _one_line(err))


# --------------------------------------------------------------------------- the invariant itself


def _supervised(tmp_path: Path, work: str, command: str) -> int:
    """``supervise`` in a fresh interpreter, on a work function written out as source."""
    script = tmp_path / "run.py"
    script.write_text(f"import sys\nfrom pathlib import Path\nfrom edgex.core.supervisor import supervise, reported\n{work}\nsys.exit(supervise(work, {command!r}))\n")
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=60).returncode


def _report(path: Path, **rows: str) -> None:
    path.write_text(json.dumps({"targets": {name: {"status": status, "requested": True} for name, status in rows.items()}}))


def test_0_comes_only_from_a_report_in_which_every_requested_target_passed(tmp_path):
    _report(tmp_path / "passed.json", onnx="passed", tflite="passed")
    _report(tmp_path / "failed.json", onnx="passed", tflite="failed")
    claims = "def work():\n    reported(Path({!r}).resolve(), {!r})\n    return 0\n"
    assert _supervised(tmp_path, claims.format("passed.json", ["onnx", "tflite"]), "convert") == 0
    # the work says 0; the report it names says otherwise: the report wins
    assert _supervised(tmp_path, claims.format("failed.json", ["onnx", "tflite"]), "convert") == 1
    # a requested target without a row proves nothing
    assert _supervised(tmp_path, claims.format("passed.json", ["onnx", "tflite", "coreml"]), "convert") == 3
    # no report at all
    assert _supervised(tmp_path, "def work():\n    return 0\n", "convert") == 3
    # a report left by an earlier run is not this run's
    old = tmp_path / "old.json"
    _report(old, onnx="passed")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    assert _supervised(tmp_path, claims.format("old.json", ["onnx"]), "convert") == 3



# --------------------------------------------------------------------------- the Python API, in-process


@pytest.mark.parametrize("call", ["    sys.exit(0)\n", "    os._exit(0)\n"], ids=["sys.exit", "os._exit"])
def test_the_api_raises_instead_of_ending_the_callers_interpreter(tmp_path, call):
    import edgex.core as edgex
    from edgex.core.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match=r"called (sys\.|os\._)exit\(0\) at .*model\.py:4"):
        edgex.convert(_model(tmp_path, call), ["onnx"], out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_api_time_limit_covers_loading(tmp_path):
    import edgex.core as edgex
    from edgex.core.settings import ConvertSettings
    from edgex.core.supervisor import StageTimeout

    started = time.monotonic()
    with pytest.raises(StageTimeout, match="loading the model"):
        edgex.convert(_model(tmp_path, "    while True:\n        time.sleep(0.1)\n"), ["onnx"], out=tmp_path / "out", settings=ConvertSettings(timeout_s=1.0))
    assert time.monotonic() - started < 30
