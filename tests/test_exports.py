"""core/exports.py: one ONNX export per run and opset, and any step several targets make alike,
made once, safely across the children targets convert in."""

import json

import numpy as np
import pytest

from edgex.core.errors import TargetError
from edgex.core.exports import ExportStore, export_onnx
from edgex.core.isolation import start_isolated
from edgex.core.loading import load_model
from edgex.plugins.testing import tiny_cnn

pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def tiny():
    import torch

    torch.set_num_threads(1)
    module, example = tiny_cnn()
    return load_model("<in-memory tiny_cnn>", module=module, example_inputs=example)


def _graph(path):
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    return opset, [n.op_type for n in model.graph.node], [numpy_helper.to_array(i) for i in model.graph.initializer]


def test_children_asking_at_once_share_one_export_and_each_gets_the_same_file(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEX_ISOLATION", "fork")
    store = ExportStore(tmp_path / "exports")

    def ask(target):
        return lambda send: store.onnx(tiny, tmp_path / f"{target}.onnx", opset=18, target=target)

    jobs = [start_isolated(ask(target), what=target) for target in ("onnx", "mnn", "rknn")]
    for job in jobs:
        job.wait()
    (record,) = store.records()
    assert record["opset"] == 18 and sorted(record["targets"]) == ["mnn", "onnx", "rknn"]
    torch_exports = [json.loads(p.read_text()) for p in (tmp_path / "exports").glob("*-torch-*.json")]
    assert len(torch_exports) == 1, "one torch export for three children"
    files = [(tmp_path / f"{t}.onnx").read_bytes() for t in ("onnx", "mnn", "rknn")]
    assert files[0] == files[1] == files[2]


def test_an_older_opset_is_the_shared_dynamo_export_taken_down_as_its_own_export_was(tiny, tmp_path):
    store = ExportStore(tmp_path / "exports")
    store.onnx(tiny, tmp_path / "18.onnx", opset=18, target="onnx")
    converter, _ = store.onnx(tiny, tmp_path / "17.onnx", opset=17, target="jetson")
    assert "dynamo, opset 18" in converter and "version_converter (opset 17)" in converter
    assert len(list((tmp_path / "exports").glob("*-torch-*.json"))) == 1, "opset 17 reused the dynamo export made for 18"
    alone = tmp_path / "alone17.onnx"
    export_onnx(tiny, alone, opset=17)  # what jetson's export was before it was shared
    shared, single = _graph(tmp_path / "17.onnx"), _graph(alone)
    assert shared[0] == single[0] == 17 and shared[1] == single[1]
    assert all(np.array_equal(a, b) for a, b in zip(shared[2], single[2])) and len(shared[2]) == len(single[2])
    assert [r["opset"] for r in store.records()] == [17, 18]


def test_a_failed_step_is_made_once_and_its_error_given_to_every_caller(tiny, tmp_path):
    store = ExportStore(tmp_path / "exports")
    tries = tmp_path / "tries"

    def make(folder):
        with open(tries, "a") as count:
            count.write("x")
        raise RuntimeError("the converter crashed")

    for _ in range(2):
        with pytest.raises(TargetError, match="the converter crashed"):
            store.once(tiny, "litert onnx2tf int8", make, tmp_path / "dest")
    assert tries.read_text() == "x"


def test_a_step_made_once_hands_each_caller_its_own_copy(tiny, tmp_path):
    store = ExportStore(tmp_path / "exports")

    def make(folder):
        (folder / "model.tflite").write_bytes(b"made once")
        return {"path": "model.tflite"}

    first = store.once(tiny, "litert litert-torch int8 min-max", make, tmp_path / "coral")
    (tmp_path / "coral" / "model.tflite").write_bytes(b"changed by coral")  # _accept rewrites its copy in place
    second = store.once(tiny, "litert litert-torch int8 min-max", make, tmp_path / "mcu")
    assert first == second == {"path": "model.tflite"}
    assert (tmp_path / "mcu" / "model.tflite").read_bytes() == b"made once"


def test_report_lists_one_export_per_opset_with_the_targets_that_used_it(tiny, tmp_path):
    from edgex.core import api

    report = api.convert(tiny.module, ["onnx", "jetson"], out=tmp_path / "out", example_inputs=tiny.example_inputs, samples=4)
    assert {t: r.status for t, r in report.targets.items()} == {"onnx": "passed", "jetson": "passed"}
    exports = json.loads((tmp_path / "out" / "report.json").read_text())["model"]["exports"]
    assert [(e["format"], e["opset"], e["exporter"], e["targets"]) for e in exports] == [("onnx", 17, "dynamo", ["jetson"]), ("onnx", 18, "dynamo", ["onnx"])]
    assert all(e["seconds"] >= 0 for e in exports)
    assert not (tmp_path / "out" / ".edgex-scratch").exists(), "the shared exports end with the run"


def test_onnx_and_jetson_at_int8_share_one_calibration_of_the_simulated_reference(tiny, tmp_path, monkeypatch):
    """One simulation per scheme: the export and calibration of edgex's int8 reference are made
    once, and each target's weight scheme (onnx asymmetric, jetson symmetric) is one more pass."""
    from edgex.core import api, pipeline

    made = []
    calibrate = pipeline.calibrate
    monkeypatch.setattr(pipeline, "calibrate", lambda *args, **kwargs: made.append(args) or calibrate(*args, **kwargs))
    calibration = np.random.default_rng(0).standard_normal((24, 3, 16, 16)).astype(np.float32)
    report = api.convert(tiny.module, ["onnx", "jetson"], out=tmp_path / "out", example_inputs=tiny.example_inputs, precision="int8", calibration=calibration, samples=8)
    references = {t: r.details["int8_reference"] for t, r in report.targets.items()}
    assert set(references) == {"onnx", "jetson"} and all(r.status == "passed" for r in report.targets.values())
    assert len(made) == 1, f"calibrated {len(made)} times"
    assert "activations per-tensor symmetric int8" in references["jetson"]["description"]
    assert "activations per-tensor int8" in references["onnx"]["description"]
