"""The command line end to end: model families, exit codes, one-line errors, nothing half-written."""

import io
import json
from pathlib import Path

import numpy as np
import pytest

from edgex.core.cli import main

HERE = Path(__file__).parent
MODELS = HERE / "models.py"
SITE = HERE / "data" / "site"


@pytest.fixture
def plugins_from_site(monkeypatch):
    """Make the fake third-party distributions in tests/data/site loadable by name."""
    monkeypatch.syspath_prepend(str(SITE))

    def load(*names):
        monkeypatch.setenv("EDGEX_LOAD_PLUGINS", ",".join(names))

    return load


def run(capsys, *args):
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(err):
    lines = [line for line in err.splitlines() if line.strip()]
    return len(lines) == 1 and lines[0].startswith("edgex: error: ") and "Traceback" not in err


@pytest.mark.parametrize("factory", ["resnet_tiny", "mobilenet_tiny", "transformer_tiny"])
def test_convert_model_families(factory, tmp_path, capsys):
    code, out, err = run(capsys, "convert", f"{MODELS}:{factory}", "--target", "onnx", "--samples", "4", "--out", tmp_path)
    assert code == 0, err
    assert "onnx" in out and "passed" in out and "report:" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["targets"]["onnx"]["parity"]["passed"] and report["exit_code"] == 0
    assert (tmp_path / "onnx" / "model.onnx").exists()


def test_json_output_is_the_report(tmp_path, capsys):
    code, out, _ = run(capsys, "convert", "examples:digits", "-t", "onnx", "--samples", "4", "--json", "--out", tmp_path)
    assert code == 0
    printed = json.loads(out)
    assert printed["targets"]["onnx"]["status"] == "passed"
    assert printed["targets"]["onnx"]["accuracy"]["samples"] > 400  # the example's labelled test split
    assert printed == json.loads((tmp_path / "report.json").read_text())


def test_failed_parity_exits_1(tmp_path, capsys):
    code, out, _ = run(capsys, "convert", "examples:digits", "-t", "onnx", "--samples", "4", "--atol", "1e-12", "--out", tmp_path)
    assert code == 1 and "failed" in out and "exceeds the tolerance" in out
    assert (tmp_path / "onnx" / "model.onnx").exists()  # the artifact was produced, and kept for inspection


def test_validate_command(tmp_path, capsys):
    assert run(capsys, "convert", "examples:digits", "-t", "onnx", "--samples", "4", "--out", tmp_path / "c")[0] == 0
    artifact = tmp_path / "c" / "onnx" / "model.onnx"
    code, out, _ = run(capsys, "validate", artifact, "--reference", "examples:digits", "--samples", "8", "--out", tmp_path / "v")
    assert code == 0 and "passed" in out
    data = json.loads((tmp_path / "v" / "report.json").read_text())
    assert data["command"] == "validate" and data["targets"]["onnx"]["parity"]["samples"] == 8
    code, out, _ = run(capsys, "validate", artifact, "--reference", f"{MODELS}:resnet_tiny", "--out", tmp_path / "w")
    assert code == 2  # the artifact takes 1x1x8x8, the reference 1x3x32x32


def test_missing_backend_is_skipped_with_exit_3(tmp_path, capsys, plugins_from_site):
    plugins_from_site("ghost")
    code, out, _ = run(capsys, "convert", "examples:digits", "-t", "ghost", "-t", "onnx", "--samples", "2", "--out", tmp_path)
    assert code == 3
    row = json.loads((tmp_path / "report.json").read_text())["targets"]["ghost"]
    assert row["status"] == "skipped" and "pip install ghost-runtime" in row["messages"][0]
    assert "onnx" in out and "passed" in out


def test_target_all_leaves_out_unavailable_backends(tmp_path, capsys, plugins_from_site):
    plugins_from_site("ghost")
    code, _, _ = run(capsys, "convert", "examples:digits", "-t", "all", "--samples", "2", "--out", tmp_path)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["targets"]["ghost"]["status"] == "skipped"
    assert code in (0, 1) and report["targets"]["onnx"]["status"] == "passed"


def test_crashing_target_is_an_error_and_the_others_still_run(tmp_path, capsys, plugins_from_site):
    plugins_from_site("crashy")
    code, out, _ = run(capsys, "convert", "examples:digits", "-t", "crashy", "-t", "onnx", "--samples", "2", "--out", tmp_path)
    assert code == 3
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["targets"]["crashy"]["status"] == "error"
    assert "crashed with signal SIGSEGV" in report["targets"]["crashy"]["messages"][0]
    assert report["targets"]["onnx"]["status"] == "passed"
    assert not (tmp_path / "crashy").exists() and not list(tmp_path.glob(".edgex-tmp-*"))  # nothing half-written


def test_hanging_target_times_out(tmp_path, capsys, plugins_from_site):
    plugins_from_site("crashy")
    code, _, _ = run(capsys, "convert", "examples:digits", "-t", "sleepy", "--timeout", "3", "--samples", "2", "--out", tmp_path)
    row = json.loads((tmp_path / "report.json").read_text())["targets"]["sleepy"]
    assert code == 3 and row["status"] == "error" and "timed out after 3 s" in row["messages"][0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["convert", "missing_model.pt2", "-t", "onnx"], "model file not found"),
        (["convert", "examples:nope", "-t", "onnx"], "unknown example 'nope'"),
        (["convert", "examples:digits", "-t", "fpga"], "unknown target 'fpga'"),
        (["convert", "examples:digits"], "no target given"),
        (["convert", f"{MODELS}:lstm_tiny", "-t", "onnx", "--input-shape", "1,10,9"], "rejected input shape"),
        (["convert", f"{MODELS}:nan_model", "-t", "onnx"], "NaN or infinite"),
        (["convert", "examples:digits", "-t", "onnx", "--samples", "0"], "--samples must be at least 1"),
        (["convert", "examples:digits", "-t", "onnx", "--quantize", "int4"], "invalid choice"),
        (["validate", "nowhere.onnx", "--reference", "examples:digits"], "artifact not found"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args, message, tmp_path, capsys):
    code, _, err = run(capsys, *args, "--out", tmp_path / "out")
    assert code == 2 and one_line_error(err) and message in err, err
    assert not (tmp_path / "out" / "report.json").exists()
    assert not list((tmp_path / "out").glob(".edgex-tmp-*")) if (tmp_path / "out").exists() else True


def test_text_file_as_model(tmp_path, capsys):
    model = tmp_path / "model.pt"
    model.write_text("not a model\n")
    code, _, err = run(capsys, "convert", model, "-t", "onnx", "--input-shape", "1,3", "--out", tmp_path / "out")
    assert code == 2 and one_line_error(err) and "text file" in err


def test_calibration_of_the_wrong_shape(tmp_path, capsys):
    calibration = tmp_path / "calib.npy"
    np.save(calibration, np.zeros((20, 3, 8, 8), np.float32))
    code, _, err = run(capsys, "convert", "examples:digits", "-t", "onnx", "--quantize", "int8", "--calibration", calibration, "--out", tmp_path / "out")
    assert code == 2 and one_line_error(err) and "do not fit input 'image'" in err
    assert not (tmp_path / "out").exists()


def test_precision_a_target_does_not_offer(tmp_path, capsys, plugins_from_site):
    plugins_from_site("ghost")
    code, _, err = run(capsys, "convert", "examples:digits", "-t", "ghost", "--quantize", "int8", "--out", tmp_path)
    assert code == 2 and "ghost offers fp32, not int8" in err


def test_debug_shows_the_traceback(tmp_path, capsys):
    code = main(["--debug", "convert", "examples:nope", "-t", "onnx", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err and "unknown example" in err


def test_help_lists_commands_and_target_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and "convert" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["convert", "--help"])
    out = capsys.readouterr().out
    assert "--opset" in out and "--dynamic-batch" in out and "[onnx]" in out


def test_progress_display_reports_slow_stages():
    from edgex.core.progress import ProgressDisplay
    from edgex.core.types import StageEvent

    stream = io.StringIO()
    display = ProgressDisplay(stream, enabled=True)
    display.edgex_stage_started(StageEvent("convert", "onnx"))
    display.edgex_stage_finished(StageEvent("convert", "onnx", "ok", 2.5))
    display.edgex_stage_started(StageEvent("validate", "onnx"))
    display.edgex_stage_finished(StageEvent("validate", "onnx", "failed", 0.2))
    display.close()
    text = stream.getvalue()
    assert "onnx: converting" in text and "2.5s" in text and "validating" not in text  # fast stages stay silent
    quiet = io.StringIO()
    ProgressDisplay(quiet).edgex_stage_finished(StageEvent("convert", "onnx", "ok", 9.0))
    assert quiet.getvalue() == ""  # not a terminal: nothing printed
