"""``edgex compress`` and the compression options of ``edgex convert``: what they write, and
that bad input is a one-line error with exit code 2 and nothing written."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from edgex.core import api
from edgex.core.cli import main
from edgex.core.compression.options import steps_from_options
from edgex.core.loading import load_model


pytestmark = pytest.mark.usefixtures("one_thread")


def test_compress_saves_a_program_that_loads_as_the_compressed_model(tmp_path, capsys):
    out = tmp_path / "models" / "digits-50.pt2"
    options = ["--prune", "0.5", "--prune-method", "l1-structured", "--prune-scope", "layer"]
    assert main(["compress", "examples:digits", *options, "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    summary = printed["compression"]
    assert summary["method"] == "l1-structured" and summary["amount"] == 0.5 and summary["scope"] == "layer"
    assert [p.name for p in out.parent.iterdir()] == ["digits-50.pt2"]  # no temporary file left

    saved = load_model(str(out))
    assert saved.params == summary["after"]["params"] < summary["before"]["params"]
    expected, _ = api.compress("examples:digits", steps_from_options({"prune": 0.5, "prune_method": "l1-structured", "prune_scope": "layer"}))
    x = torch.from_numpy(expected.example_inputs[0])
    with torch.no_grad():
        assert torch.equal(saved.module(x), expected.module(x))


def test_compress_prints_a_summary(tmp_path, capsys):
    out = tmp_path / "d.pt2"
    assert main(["compress", "examples:digits", "--prune", "0.5", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "compression: l1-unstructured 0.5 (global): params 24.2k -> 24.2k (1.0x)" in text
    assert "pruned vs original (450 held-out labelled samples)" in text
    assert f"saved {out}" in text


def test_convert_reports_the_compression_section(tmp_path):
    out = tmp_path / "out"
    argv = ["convert", "examples:digits", "--target", "onnx", "--prune", "0.5", "--prune-method", "l1-structured",
            "--distill", "--distill-epochs", "2", "--samples", "8", "--out", str(out), "--json"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    section = report["compression"]
    assert section["method"] == "l1-structured + distill" and section["amount"] == 0.5
    for side in ("before", "after"):
        assert set(section[side]) == {"params", "nonzero_params", "macs", "size_bytes"}
        assert set(section[side]["size_bytes"]) == {"fp32", "zip"}
    assert section["after"]["macs"] < 0.4 * section["before"]["macs"]
    assert section["drift"]["before_recovery"]["cosine"] < section["drift"]["after_recovery"]["cosine"]
    assert section["recovery"]["epochs"] == 2
    assert {"name", "shape", "params", "sparsity"} <= set(section["layers"][0])
    assert section["layers"][0]["shape_before"] == [16, 1, 3, 3]
    assert "drift_from_original" in section
    # the compressed model is the reference: its parameter count is the model's
    assert report["model"]["params"] == section["after"]["params"]
    assert report["targets"]["onnx"]["status"] == "passed"


@pytest.fixture
def single_layer(tmp_path):
    path = tmp_path / "single.py"
    path.write_text(textwrap.dedent("""
        import torch

        def model():
            torch.manual_seed(0)
            return torch.nn.Linear(8, 3), (torch.randn(1, 8),)
    """))
    return f"{path}:model"


def _bad_inputs(tmp_path, single_layer):
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, np.zeros((16, 1, 9, 9), dtype=np.float32))
    return {
        "amount above 1": (["examples:digits", "--prune", "1.5"], "--prune 1.5 is outside (0, 1)"),
        "amount 0": (["examples:digits", "--prune", "0"], "--prune 0 is outside (0, 1)"),
        "nothing prunable": ([single_layer, "--prune", "0.5"], "nothing to prune"),
        "nothing prunable, structured": ([single_layer, "--prune", "0.5", "--prune-method", "l1-structured"], "nothing to prune"),
        "exclude matches nothing": (["examples:digits", "--prune", "0.5", "--exclude", "encoder.*"], "--exclude 'encoder.*' matches no module"),
        "distill data of the wrong shape": (
            ["examples:digits", "--prune", "0.5", "--distill", "--distill-data", str(wrong)],
            "samples of shape (1, 9, 9)",
        ),
        "distill option without --distill": (["examples:digits", "--prune", "0.5", "--distill-epochs", "3"], "--distill-epochs needs --distill"),
        "unknown method": (["examples:digits", "--prune", "0.5", "--prune-method", "l0"], "unknown compression method 'l0'"),
    }


@pytest.mark.parametrize("command", ["compress", "convert"])
def test_bad_input_is_one_line_exit_2_and_nothing_written(command, tmp_path, single_layer, capsys):
    for case, (args, message) in _bad_inputs(tmp_path, single_layer).items():
        out = tmp_path / ("model.pt2" if command == "compress" else "out")
        extra = ["--target", "onnx"] if command == "convert" else []
        code = main([command, *args, *extra, "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2, case
        assert err.startswith("edgex: error: ") and err.count("\n") == 1, (case, err)
        assert message in err, (case, err)
        assert not out.exists(), case


def test_compress_refuses_an_output_that_is_not_pt2(tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["compress", "examples:digits", "--prune", "0.5", "--out", str(out)]) == 2
    assert "must be a file name ending in .pt2" in capsys.readouterr().err
    assert not out.exists()


def test_help_stays_fast():
    """``edgex compress --help`` lists every compression option without importing torch."""
    code = (
        "import sys\n"
        "from edgex.core.cli import main\n"
        "try:\n    main(['compress', '--help'])\nexcept SystemExit:\n    pass\n"
        "print('heavy:', 'torch' in sys.modules, 'torch_pruning' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "heavy: False False" in result.stdout
    assert "--prune-scope" in result.stdout and "--distill-temperature" in result.stdout and "FILE.pt2" in result.stdout


def test_matrix_presets_take_every_compression_option(tmp_path, capsys):
    """A [[compression]] preset is steps_from_options input; its distill_data reaches recovery."""
    from edgex.examples.digits import data

    np.save(tmp_path / "unlabelled.npy", data()[0][:128])
    config = tmp_path / "matrix.toml"
    config.write_text(textwrap.dedent("""
        targets = ["onnx"]
        samples = 4
        [[models]]
        spec = "examples:digits"
        name = "digits"
        [[compression]]
        name = "s50"
        prune = 0.5
        prune_method = "l1-structured"
        prune_scope = "layer"
        prune_round_to = 8
        exclude = ["features.0"]
        distill = true
        distill_data = "unlabelled.npy"
        distill_epochs = 1
        distill_batch = 16
    """))
    out = tmp_path / "out"
    assert main(["matrix", str(config), "--out", str(out), "--json"]) == 0, capsys.readouterr().err
    cells = {c["cell"]["compression"]: c for c in json.loads((out / "results.json").read_text())}
    assert cells["none"]["compression"] is None
    section = cells["s50"]["compression"]
    assert section["method"] == "l1-structured + distill" and section["scope"] == "layer"
    assert section["recovery"]["samples"] == 128 and section["recovery"]["batch_size"] == 16
    assert section["recovery"]["data"].endswith("unlabelled.npy")
    kept = {row["name"]: row.get("kept") for row in section["layers"]}
    assert kept["features.0.weight"] == "excluded (--exclude)"
    assert cells["s50"]["targets"]["onnx"]["status"] == "passed"


def test_edgex_core_compress_is_the_api_function_even_with_the_stage_imported():
    """The stage's package is ``edgex.core.compression``; ``edgex.core.compress`` is the function."""
    import importlib

    import edgex.core as edgex

    importlib.import_module("edgex.core.compression")
    model, summary = edgex.compress("examples:digits", {"prune": 0.5})
    assert summary["method"] == "l1-unstructured" and model.module is not None
