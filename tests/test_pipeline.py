"""core/pipeline.py directly: planning targets, and convert/validate end to end through a small
in-process target whose artifact is a real file (an .npz of an MLP's weights) run by numpy."""

import json
import os
import signal

import numpy as np
import pytest

from edgex.core import pipeline
from edgex.core.errors import TargetError, UsageError
from edgex.core.plugin_manager import PluginManager
from edgex.core.settings import make_settings
from edgex.core.types import Artifact, ArtifactIO, BackendStatus, ConversionResult, TargetSpec, TensorBinding
from edgex.plugins import hookimpl

RUNNABLE = ("npz", "npz-broken")


class NumpyMLP:
    """The artifact's runtime: the MLP's forward pass in numpy, from the weights in the .npz."""

    backend = "numpy"

    def __init__(self, path):
        with np.load(path) as arrays:
            self.w1, self.b1, self.w2, self.b2 = (arrays[k] for k in ("w1", "b1", "w2", "b2"))

    def run(self, inputs):
        hidden = np.maximum(inputs[0] @ self.w1.T + self.b1, 0.0)
        return [hidden @ self.w2.T + self.b2]


class NpzTargets:
    """Targets "npz" (converts), "npz-broken" (its converter fails), "npz-missing" (no backend),
    "npz-fp16" (fp16 only)."""

    @hookimpl
    def edgex_targets(self):
        return [
            TargetSpec("npz", "weights in an .npz, run by numpy", (".npz",), ("fp32",)),
            TargetSpec("npz-broken", "a converter that always fails", (".npz",), ("fp32",)),
            TargetSpec("npz-missing", "a backend that is not installed", (".npz",), ("fp32",)),
            TargetSpec("npz-fp16", "half precision only", (".npz",), ("fp16",), default_precision="fp16"),
        ]

    @hookimpl
    def edgex_backend_status(self, target):
        if target == "npz-missing":
            return BackendStatus(False, "npz-runtime", install_hint="pip install npz-runtime", detail="npz-runtime is not installed")
        return BackendStatus(True, "numpy " + np.__version__)

    @hookimpl
    def edgex_convert(self, request):
        if request.target == "npz-broken":
            raise TargetError("the npz converter cannot convert this model")
        first, second = request.model.module[0], request.model.module[2]
        path = request.workdir / "model.npz"
        np.savez(path, **{k: p.detach().numpy() for k, p in (("w1", first.weight), ("b1", first.bias), ("w2", second.weight), ("b2", second.bias))})
        return ConversionResult((Artifact(path, "npz"),), self.edgex_describe_artifact(request.target, path, request.model), "numpy.savez")

    @hookimpl
    def edgex_describe_artifact(self, target, path, reference):
        inputs = tuple(TensorBinding(s.name, s.shape, s.dtype) for s in reference.inputs)
        outputs = tuple(TensorBinding(name, (1, 3), "float32") for name in reference.output_names)
        return ArtifactIO(path, "fp32", inputs, outputs)

    @hookimpl
    def edgex_load_runtime(self, target, io, options):
        return NumpyMLP(io.path)


@pytest.fixture(scope="module")
def mlp():
    import torch

    from edgex.core.loading import load_model

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    return load_model("mlp", module=module, example_inputs=[torch.randn(1, 4)])


def npz_manager(plugin=None, observers=()):
    return PluginManager(builtins=(), load_entry_points=False, extra_plugins=[plugin or NpzTargets(), *observers])


def settings(*targets, **values):
    return make_settings(targets=targets, samples=8, **values)


def leftovers(out):
    return sorted(p.name for p in out.iterdir() if p.name.startswith(".edgex-"))


# --------------------------------------------------------------------------- planning


def test_unknown_target_is_a_usage_error_listing_the_known_ones(mlp):
    with pytest.raises(UsageError, match=r"unknown target 'nope'; installed targets: npz, npz-broken, npz-fp16, npz-missing"):
        pipeline.plan_targets(npz_manager(), ["nope"], None, mlp)


def test_requested_target_at_an_unsupported_precision_is_a_usage_error(mlp):
    with pytest.raises(UsageError, match="npz offers fp32, not int8"):
        pipeline.plan_targets(npz_manager(), ["npz"], "int8", mlp)


def test_all_skips_what_cannot_run_and_keeps_registration_order(mlp):
    plans = pipeline.plan_targets(npz_manager(), ["all"], None, mlp)
    assert [p.target for p in plans] == ["npz", "npz-broken", "npz-missing", "npz-fp16"]
    assert not any(p.requested for p in plans)
    skips = {p.target: p.skip for p in plans}
    missing = BackendStatus(False, "npz-runtime", install_hint="pip install npz-runtime", detail="npz-runtime is not installed")
    assert skips == {"npz": "", "npz-broken": "", "npz-missing": missing.missing_message(), "npz-fp16": ""}
    assert [p.precision for p in plans] == ["fp32", "fp32", "fp32", "fp16"]


def test_all_at_a_precision_skips_targets_without_it_instead_of_failing(mlp):
    plans = {p.target: p for p in pipeline.plan_targets(npz_manager(), ["npz", "all"], "fp32", mlp)}
    assert plans["npz"].requested and not plans["npz-fp16"].requested
    assert plans["npz-fp16"].skip == "npz-fp16 offers fp16, not fp32"


def test_no_target_is_a_usage_error(mlp):
    with pytest.raises(UsageError, match="no target given"):
        pipeline.plan_targets(npz_manager(), [], None, mlp)


# --------------------------------------------------------------------------- convert and validate


def test_convert_installs_artifacts_and_writes_the_report(mlp, tmp_path):
    out = tmp_path / "out"
    report = pipeline.convert(npz_manager(), mlp, settings("npz"), out)
    row = report.targets["npz"]
    assert row.status == "passed" and report.exit_code == 0, row.messages
    assert row.artifacts == ["npz/model.npz"] and (out / "npz" / "model.npz").is_file()
    assert row.size_bytes == (out / "npz" / "model.npz").stat().st_size
    assert row.backend == "numpy" and row.converter == "numpy.savez" and row.parity.max_abs < 1e-5
    assert leftovers(out) == []
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report.to_json()))


def test_size_counts_the_files_an_artifact_loads_with_it_and_nothing_else(tmp_path):
    """OpenVINO's .bin and ONNX external data count with the file parity runs; a target's other
    artifacts (C sources, an Edge TPU compile, the ONNX a TensorRT engine was built from, a log) do not."""
    ir, weights, other = tmp_path / "model.xml", tmp_path / "model.bin", tmp_path / "sub" / "model.bin"
    assert pipeline.artifact_files(ir, [ir, weights, other], (".xml",)) == [ir, weights]
    onnx, data = tmp_path / "model.onnx", tmp_path / "model.onnx.data"
    assert pipeline.artifact_files(onnx, [onnx, data], (".onnx",)) == [onnx, data]
    tflite, sources = tmp_path / "model.tflite", [tmp_path / n for n in ("model_data.cc", "model_data.h", "model_ops.h")]
    assert pipeline.artifact_files(tflite, [tflite, *sources], (".tflite", "model_data.cc", "model_data.h", "model_ops.h")) == [tflite]
    engine, built_from = tmp_path / "model.engine", tmp_path / "model.trt.onnx"
    assert pipeline.artifact_files(engine, [built_from, engine], (".engine", ".trt.onnx")) == [engine]
    compiled, log = tmp_path / "model_edgetpu.tflite", tmp_path / "model_edgetpu.log"
    assert pipeline.artifact_files(tflite, [tflite, compiled, log], (".tflite", "_edgetpu.tflite")) == [tflite]


def test_a_second_convert_replaces_the_target_folder(mlp, tmp_path):
    out = tmp_path / "out"
    pipeline.convert(npz_manager(), mlp, settings("npz"), out)
    (out / "npz" / "stale.txt").write_text("from an older run")
    pipeline.convert(npz_manager(), mlp, settings("npz"), out)
    assert sorted(p.name for p in (out / "npz").iterdir()) == ["model.npz"]
    assert leftovers(out) == []


def test_a_failing_conversion_is_an_error_and_leaves_no_folder(mlp, tmp_path):
    out = tmp_path / "out"
    report = pipeline.convert(npz_manager(), mlp, settings("npz", "npz-broken"), out)
    assert report.targets["npz"].status == "passed"
    broken = report.targets["npz-broken"]
    assert broken.status == "error" and broken.messages == ["the npz converter cannot convert this model"]
    assert report.exit_code == 3
    assert not (out / "npz-broken").exists() and leftovers(out) == []
    assert json.loads((out / "report.json").read_text())["targets"]["npz-broken"]["status"] == "error"


def test_a_runtime_that_computes_wrong_numbers_fails_parity(mlp, tmp_path):
    class WrongNumbers(NpzTargets):
        @hookimpl
        def edgex_load_runtime(self, target, io, options):
            runtime = NumpyMLP(io.path)
            runtime.b2 = runtime.b2 + 0.5  # a converter that mangled a bias
            return runtime

    out = tmp_path / "out"
    report = pipeline.convert(npz_manager(WrongNumbers()), mlp, settings("npz"), out)
    row = report.targets["npz"]
    assert row.status == "failed" and report.exit_code == 1
    assert row.parity.max_abs == pytest.approx(0.5, abs=1e-4)
    assert (out / "npz" / "model.npz").is_file()  # a failed artifact is kept for inspection


def test_a_runtime_that_crashes_its_process_is_an_error(mlp, tmp_path, monkeypatch):
    monkeypatch.delenv("EDGEX_ISOLATION", raising=False)

    class Crashes(NpzTargets):
        @hookimpl
        def edgex_load_runtime(self, target, io, options):
            os.kill(os.getpid(), signal.SIGSEGV)  # what a native runtime's segfault looks like

    out = tmp_path / "out"
    report = pipeline.convert(npz_manager(Crashes()), mlp, settings("npz"), out)
    row = report.targets["npz"]
    assert row.status == "error" and report.exit_code == 3
    assert "target npz crashed with signal SIGSEGV" in row.messages[0]
    assert not (out / "npz").exists() and leftovers(out) == []


def test_all_reports_a_missing_backend_as_skipped_without_failing_the_run(mlp, tmp_path):
    report = pipeline.convert(npz_manager(), mlp, settings("npz", "all", precision="fp32"), tmp_path)
    statuses = {name: row.status for name, row in report.targets.items()}
    assert statuses == {"npz": "passed", "npz-broken": "error", "npz-missing": "skipped", "npz-fp16": "skipped"}
    assert report.targets["npz-missing"].messages == ["backend missing: npz-runtime is not installed; pip install npz-runtime"]
    assert not report.targets["npz-missing"].requested


def test_convert_resolves_the_run_inputs_once(mlp, tmp_path, monkeypatch):
    import torch

    from edgex.core.compression import CompressionStep
    from edgex.core.types import CompressorSpec, CompressionResult

    class Halve:
        @hookimpl
        def edgex_compressors(self):
            return [CompressorSpec("halve", "multiplies every weight by 0.5")]

        @hookimpl
        def edgex_compress(self, request):
            with torch.no_grad():
                for p in request.module.parameters():
                    p.mul_(0.5)
            return CompressionResult(request.module, request.method)

    calls = []

    def counting(*args, **kwargs):
        calls.append(args)
        return resolve(*args, **kwargs)

    resolve = pipeline.resolve_inputs
    monkeypatch.setattr(pipeline, "resolve_inputs", counting)
    manager = npz_manager(observers=[Halve()])
    report = pipeline.convert(manager, mlp, settings("npz", compression=(CompressionStep("halve"),)), tmp_path)
    assert len(calls) == 1
    assert report.targets["npz"].status == "passed" and report.compression is not None
    with np.load(tmp_path / "npz" / "model.npz") as arrays:  # the compressed model was converted
        assert np.allclose(arrays["w1"], mlp.module[0].weight.detach().numpy() * 0.5)


def test_stage_events_bracket_every_stage(mlp, tmp_path):
    events = []

    class Recorder:
        @hookimpl
        def edgex_stage_started(self, event):
            events.append(("started", event.stage, event.target))

        @hookimpl
        def edgex_stage_finished(self, event):
            events.append(("finished", event.stage, event.target, event.outcome))

    pipeline.convert(npz_manager(observers=[Recorder()]), mlp, settings("npz"), tmp_path)
    assert ("finished", "convert", "npz", "ok") in events and ("finished", "validate", "npz", "passed") in events
    assert ("finished", "reference", None, "ok") in events and events[-1] == ("finished", "report", None, "ok")
    started = [e[1:] for e in events if e[0] == "started"]
    finished = [e[1:3] for e in events if e[0] == "finished"]
    assert sorted(started, key=str) == sorted(finished, key=str)


def test_validate_an_existing_artifact(mlp, tmp_path):
    pipeline.convert(npz_manager(), mlp, settings("npz"), tmp_path / "converted")
    artifact = tmp_path / "converted" / "npz" / "model.npz"
    out = tmp_path / "validated"
    report = pipeline.validate(npz_manager(), artifact, mlp, settings(), out, target="npz")
    row = report.targets["npz"]
    assert report.command == "validate" and row.status == "passed" and report.exit_code == 0
    assert row.artifacts == [str(artifact)] and row.size_bytes == artifact.stat().st_size
    assert json.loads((out / "report.json").read_text()) == json.loads(json.dumps(report.to_json()))


def test_validate_with_a_missing_backend_is_skipped_and_exit_3(mlp, tmp_path):
    artifact = tmp_path / "model.npz"
    artifact.write_bytes(b"")
    report = pipeline.validate(npz_manager(), artifact, mlp, settings(), tmp_path / "out", target="npz-missing")
    assert report.targets["npz-missing"].status == "skipped" and report.exit_code == 3
    assert (tmp_path / "out" / "report.json").is_file()


def test_validate_a_missing_artifact_is_a_usage_error(mlp, tmp_path):
    with pytest.raises(UsageError, match="artifact not found"):
        pipeline.validate(npz_manager(), tmp_path / "nothing.npz", mlp, settings(), tmp_path / "out", target="npz")


def test_a_childs_simulated_floor_is_answered_from_the_parents_one_calibration(tmp_path):
    """A converter's recipe search asks ``ConversionRequest.simulated_floor``; in a run the child
    asks the parent (up its event pipe, the answer a file), which answers from the int8
    calibration it makes for the verdict: the same floor the child would compute itself, made
    once per question, and an answer (None) even where the parent has none to give."""
    import torch
    from dataclasses import replace

    from edgex.core.data import resolve_inputs
    from edgex.core.loading import load_model
    from edgex.core.parity import reference_outputs
    from edgex.core.quant_reference import simulated_floor
    from edgex.core.types import AVERAGE_POOLS, ConversionRequest

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.AvgPool2d(2), torch.nn.Conv2d(8, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(32, 4)).eval()
    model = load_model("cnn", module=module, example_inputs=(torch.randn(1, 3, 8, 8),))
    rng = np.random.default_rng(0)
    inputs = resolve_inputs(model, settings(calibration=(rng.standard_normal((24, 3, 8, 8)).astype(np.float32),)), True)
    reference = pipeline.Reference(npz_manager(), model, inputs)
    check = inputs.calibration_batches[-4:]
    outputs = reference_outputs(model, check)
    own = ConversionRequest("npz", "int8", model, tmp_path, calibration=inputs.calibration_batches)
    assert own.simulated_floor(check, outputs, 8) is None, "built by hand, without a parent to ask"

    def asking(parent):
        return replace(own, floors=pipeline._AskParent(lambda kind, question: pipeline._answer_floor(question, parent, None), tmp_path / "floors").floor)

    # what the child would compute itself, calibrating again
    expected = simulated_floor(module, (model.example_inputs[0],), inputs.calibration_batches, check, outputs, 8, on_input_grid=AVERAGE_POOLS)
    assert expected is not None and expected[1] > expected[0]
    assert asking(reference).simulated_floor(check, outputs, 8, on_input_grid=AVERAGE_POOLS) == pytest.approx(expected, abs=1e-9)
    assert asking(reference).simulated_floor(check, outputs, 16, on_input_grid=AVERAGE_POOLS)[1] > expected[1] + 3  # 16-bit activations: its own question
    assert asking(reference).simulated_floor(check, outputs, 8, on_input_grid=AVERAGE_POOLS) == pytest.approx(expected, abs=1e-9)
    assert len(reference._floors) == 2, "a question asked again is answered from the first simulation"
    assert asking(None).simulated_floor(check, outputs, 8) is None
    assert not list((tmp_path / "floors").iterdir()), "every answer read is removed"
