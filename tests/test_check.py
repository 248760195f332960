"""edgex check (core/check.py and each target's edgex_check_operators): predictions from the
model's exported operators, with and without the rewrites convert would apply, on the CLI with
its exit codes, and -- slow -- held against real conversions of the same models: a prediction
that disagrees with what edgex convert reports fails here."""

import json
import sys
from pathlib import Path

import pytest
import torch

from edgex.core import api
from edgex.core.check import model_operators
from edgex.core.cli import main
from edgex.core.api import load_model
from edgex.core.plugin_manager import PluginManager
from edgex.core.types import BackendStatus, TargetSpec
from edgex.plugins import hookimpl

sys.path.insert(0, str(Path(__file__).parent))
import models  # noqa: E402  (tests/models.py: the shared test models)

MODELS = Path(__file__).parent / "models.py"


def predictions(factory, targets, **kwargs):
    module, example = factory()
    report = api.check(module, targets, example_inputs=example, **kwargs)
    return {t.target: t for t in report.targets}


def test_operators_come_from_the_exported_graph_with_where_they_are():
    module, example = models.lstm_long()
    ops = model_operators(load_model(module, example_inputs=list(example)))
    lstm = ops.get("aten.lstm")
    assert ops.kind == "torch" and lstm is not None and lstm.count == 1
    assert lstm.modules == ("lstm",)
    assert lstm.shapes[0][0] == (1, 20, 8) and lstm.scalars[0][-1] is True  # batch_first


def test_gelu_blocks_mcu_unless_rewritten_and_the_rewrite_is_listed():
    plain = predictions(models.vit_tiny, ["mcu", "coral"], rewrite="none")
    assert plain["mcu"].outcome == "error"
    finding = next(f for f in plain["mcu"].findings if f["operator"] == "aten.gelu")
    assert "no kernel for GELU" in finding["reason"] and "--rewrite auto" in finding["fix"]
    # the Edge TPU runs what it cannot map on the CPU: a cost, not a failure
    assert plain["coral"].outcome == "converts"
    assert any(f["operator"] == "aten.gelu" and not f["blocks"] for f in plain["coral"].findings)
    rewritten = predictions(models.vit_tiny, ["mcu"])["mcu"]
    assert rewritten.outcome == "converts"
    assert "aten.gelu" not in rewritten.operators
    assert {r["name"]: r["status"] for r in rewritten.rewrites}["gelu-tanh"] == "applied"


def test_token_ids_at_full_int8_are_predicted_to_pass_and_int64_needs_the_rewrite():
    found = predictions(models.token_classifier, ["tflite", "coral", "mcu"])
    assert all(t.outcome == "converts" for t in found.values()), {n: t.reason for n, t in found.items()}
    # the int8 embedding (EMBEDDING_LOOKUP, with TFLM kernels) runs on the CPU next to an Edge TPU
    assert any(f["operator"] == "aten.embedding" and "EMBEDDING_LOOKUP" in f["reason"] and not f["blocks"] for f in found["coral"].findings)
    # a float model takes int64 ids; the full-int8 paths want int32
    assert predictions(models.token_classifier, ["tflite"], rewrite="none")["tflite"].outcome == "converts"
    unrewritten = predictions(models.token_classifier, ["tflite"], rewrite="none", precision="int8")["tflite"]
    assert unrewritten.outcome == "error" and "INT64" in unrewritten.reason


def test_an_operator_outside_core_aten_is_refused_by_each_target_from_its_own_data():
    found = predictions(models.magnitude, ["onnx", "tflite", "coreml", "executorch"])
    assert all(t.outcome == "error" and "aten.hypot" in t.reason for t in found.values())
    assert "TorchScript exporter has no symbolic" in found["onnx"].reason
    assert "litert-torch has no lowering" in found["tflite"].reason
    assert "coremltools" in found["coreml"].reason and "registry" in found["coreml"].source
    assert "edge dialect" in found["executorch"].reason


def test_an_operator_the_tables_do_not_cover_is_unknown_not_passed():
    class Trunc(torch.nn.Module):
        def forward(self, x):
            return torch.trunc(x * 4.0)

    report = api.check(Trunc(), ["onnx", "tflite"], example_inputs=(torch.randn(1, 8),))
    found = {t.target: t for t in report.targets}
    assert found["onnx"].outcome == "converts"  # core ATen: the dynamo exporter has it
    assert found["tflite"].outcome == "unknown" and found["tflite"].unknown == ["aten.trunc"]
    assert report.exit_code == 1


class NoData:
    """A third-party target whose plugin does not implement edgex_check_operators."""

    @hookimpl
    def edgex_targets(self):
        return [TargetSpec("nodata", "a target with no operator data", (".bin",), ("fp32",))]

    @hookimpl
    def edgex_backend_status(self, target):
        return BackendStatus(True, "nothing")


def test_a_target_without_operator_data_is_unknown_not_passed():
    manager = PluginManager(builtins=(), load_entry_points=False, extra_plugins=[NoData()])
    module, example = models.magnitude()
    report = api.check(module, ["nodata"], example_inputs=example, plugins=manager)
    assert report.targets[0].outcome == "unknown" and "edgex_check_operators" in report.targets[0].reason
    assert report.exit_code == 1


def test_cli_prints_json_and_exits_by_the_worst_prediction(capsys):
    assert main(["check", f"{MODELS}:token_classifier", "-t", "onnx", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["targets"][0]["outcome"] == "converts" and "aten.embedding" in data["targets"][0]["operators"]
    assert main(["check", f"{MODELS}:magnitude", "-t", "onnx", "-t", "mcu"]) == 3
    out = capsys.readouterr().out
    assert "mcu" in out and "aten.hypot" in out and "nothing was converted" in out


@pytest.mark.parametrize("argv, words", [
    (["check", f"{MODELS}:magnitude", "-t", "no-such-target"], "no-such-target"),
    (["check", f"{MODELS}:unexportable", "-t", "onnx"], "torch.export"),
])
def test_bad_input_is_one_line_and_exit_2(argv, words, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err


# --------------------------------------------------------------------------- against real conversions

#: (model factory, targets, rewrite): cells whose predictions differ by target, rewrite and precision
#: (lstm_long's cells live in tests/test_rewrites.py, beside the conversions they read)
CELLS = [
    ("token_classifier", ("tflite", "coral", "mcu", "coreml", "onnx"), "auto"),
    ("token_classifier", ("tflite",), "none"),
    ("vit_tiny", ("mcu", "coral"), "none"),
    ("magnitude", ("onnx", "tflite", "coreml", "executorch"), "auto"),
]


def real_outcome(status):
    """What a prediction is held against: an artifact was written (parity passed, failed or was
    inconclusive: check does not claim a verdict), or the target errored."""
    return "error" if status in ("error", "skipped") else "converts"


@pytest.mark.slow
@pytest.mark.parametrize("name, targets, rewrite", CELLS, ids=[f"{c[0]}-{c[2]}" for c in CELLS])
def test_predictions_agree_with_real_conversions(name, targets, rewrite, tmp_path):
    module, example = getattr(models, name)()
    predicted = api.check(module, targets, example_inputs=example, rewrite=rewrite)
    module, example = getattr(models, name)()
    report = api.convert(module, targets, out=tmp_path / "out", example_inputs=example, samples=8, rewrite=rewrite)
    disagree = {
        t.target: (t.outcome, t.reason, report.targets[t.target].status, report.targets[t.target].messages)
        for t in predicted.targets
        if t.outcome != real_outcome(report.targets[t.target].status)
    }
    assert not disagree
