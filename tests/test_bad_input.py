"""Issue 16, item 4: bad input stays bad input -- exit 2, one line, nothing left behind."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgex.core.cli import main
from edgex.core.data import check_samples
from edgex.core.types import TensorSpec

sys.path.insert(0, str(Path(__file__).parent))
from test_cli import one_line_error, run  # noqa: E402  (the CLI tests' helpers)


def _truncate(path: Path, share: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * share)])


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """The digits CNN converted once for onnx, tflite and coreml; tests truncate copies."""
    out = tmp_path_factory.mktemp("converted")
    code = main(["convert", "examples:digits", "-t", "onnx", "-t", "tflite", "-t", "coreml", "--samples", "2", "--out", str(out)])
    assert code == 0
    return out


def _corrupt(converted: Path, kind: str, where: Path) -> Path:
    import shutil

    if kind == "onnx":
        artifact = where / "model.onnx"
        shutil.copy(converted / "onnx" / "model.onnx", artifact)
        _truncate(artifact)
    elif kind == "tflite":
        artifact = where / "model.tflite"
        shutil.copy(next((converted / "tflite").glob("*.tflite")), artifact)
        _truncate(artifact, 0.95)
    else:
        artifact = where / "model.mlpackage"
        shutil.copytree(converted / "coreml" / "model.mlpackage", artifact)
        inner = artifact / "Data" / "com.apple.CoreML"
        if kind == "coreml-weights":
            _truncate(inner / "weights" / "weight.bin")
        elif kind == "coreml-no-weights":
            (inner / "weights" / "weight.bin").unlink()
        else:
            _truncate(inner / "model.mlmodel")
    return artifact


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["onnx", "tflite", "coreml-weights", "coreml-no-weights", "coreml-spec"])
def test_a_corrupt_artifact_is_bad_input(converted, kind, tmp_path, capsys):
    artifact = _corrupt(converted, kind, tmp_path)
    out = tmp_path / "out"
    code, _, err = run(capsys, "validate", artifact, "--reference", "examples:digits", "--samples", "2", "--out", out)
    assert code == 2 and one_line_error(err), err
    assert str(artifact.name) in err
    assert not out.exists()  # no report.json, no empty logs/: the folder this run made is gone


def test_input_shape_takes_only_comma_separated_positive_integers(tmp_path, capsys):
    code, _, err = run(capsys, "convert", "examples:digits", "-t", "onnx", "--input-shape", "1,x,32,32", "--out", tmp_path / "o")
    assert code == 2 and one_line_error(err) and "'x' is not a positive integer" in err
    code, _, err = run(capsys, "convert", "examples:digits", "-t", "onnx", "--input-shape", "1x3x32x32", "--out", tmp_path / "o")
    assert code == 2 and "'1x3x32x32'" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_calibration_is_named(bad, tmp_path, capsys):
    from edgex.core.loading import load_model

    spec = load_model("examples:digits").inputs[0]
    data = np.zeros((4, *spec.shape[1:]), dtype=np.float32)
    data[1].flat[3] = bad
    np.save(tmp_path / "calib.npy", data)
    out = tmp_path / "out"
    code, _, err = run(capsys, "convert", "examples:digits", "-t", "onnx", "--calibration", tmp_path / "calib.npy", "--out", out)
    name = "NaN" if np.isnan(bad) else "Inf"
    assert code == 2 and one_line_error(err) and f"1 {name} values" in err and "calib.npy" in err and repr(spec.name) in err
    assert not out.exists()


def test_check_samples_names_the_input_and_counts():
    specs = (TensorSpec("a", (1, 2), "float32"), TensorSpec("b", (1, 2), "float32"))
    good = np.zeros((3, 2), np.float32)
    bad = good.copy()
    bad[0, 0], bad[1, 1], bad[2, 0] = np.nan, np.nan, -np.inf
    with pytest.raises(Exception, match=r"data.npz: input 'b' holds 2 NaN and 1 Inf values"):
        check_samples([good, bad], specs, "data.npz")
    assert len(check_samples([good, good], specs, "data.npz")) == 2


def test_debug_after_the_subcommand_keeps_the_exit_code(tmp_path, capsys):
    for argv in (["--debug", "convert"], ["convert", "--debug"]):
        head, tail = argv
        code, _, err = run(capsys, head, tail, "examples:nope", "-t", "onnx", "--out", tmp_path / "o")
        assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("edgex: error: ")
    code, _, err = run(capsys, "convert", "examples:nope", "-t", "onnx", "--out", tmp_path / "o")
    assert code == 2 and one_line_error(err)


def _cli(*args, cwd):

    return subprocess.run([sys.executable, "-m", "edgex.core.cli", *map(str, args)], capture_output=True, text=True, cwd=cwd, env=os.environ.copy(), timeout=300)


def test_a_text_file_as_pt2_prints_one_line_and_no_torch_log(tmp_path):
    model = tmp_path / "model.pt2"
    model.write_text("not a torch program\n")
    done = _cli("convert", model, "-t", "onnx", "--out", tmp_path / "out", cwd=tmp_path)
    assert done.returncode == 2 and one_line_error(done.stderr), done.stderr
    assert "looks like a text file" in done.stderr and not (tmp_path / "out").exists()


def test_matrix_cells_with_bad_input_say_so_in_toml_keys(tmp_path, capsys):
    (tmp_path / "nets.py").write_text("import torch\n\ndef plain():\n    return torch.nn.Linear(4, 2)\n")
    (tmp_path / "m.toml").write_text(
        'targets = ["onnx"]\n\n[[models]]\nspec = "missing.pt"\n\n[[models]]\nname = "noshape"\nspec = "nets.py:plain"\n'
    )
    out = tmp_path / "out"
    code, _, _ = run(capsys, "matrix", tmp_path / "m.toml", "--out", out)
    assert code == 2
    rows = [row for cell in json.loads((out / "results.json").read_text()) for row in cell["targets"].values()]
    assert len(rows) == 2 and all(row["bad_input"] and row["messages"][0].startswith("bad input: ") for row in rows)
    noshape = rows[1]["messages"][0]
    assert "input_shape" in noshape and "--input-shape" not in noshape


def test_explain_against_a_pt2_prints_no_library_warning(converted, tmp_path):
    """A .pt2 reference's graph carries FakeTensors; copying it for the float64 run made torch warn."""
    import torch

    from edgex.examples import load_example

    digits = load_example("digits")
    program = tmp_path / "digits.pt2"
    torch.export.save(torch.export.export(digits.module, digits.example_inputs), str(program))
    done = _cli("explain", converted / "onnx" / "model.onnx", "--reference", program, "--samples", "2", "--out", tmp_path / "explained", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr and "Warning" not in done.stdout, done.stderr
