"""core/rewrites.py: each built-in rewrite on small torch.nn models, the proof that keeps a wrong
rewrite out (planted in the registry through an in-process target), and -- slow -- the real
targets: a ViT-style model and a 20-step LSTM passing on mcu and coral only with rewrites, int64
token ids on tflite, coral and mcu, and ``--rewrite none`` reproducing the errors users see today."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgex.core import pipeline, rewrites
from edgex.core.cli import main
from edgex.core.errors import UsageError
from edgex.core.loading import load_model
from edgex.core.plugin_manager import PluginManager
from edgex.core.settings import make_settings
from edgex.core.types import Artifact, ArtifactIO, BackendStatus, ConversionResult, TargetSpec, TensorBinding
from edgex.plugins import hookimpl

sys.path.insert(0, str(Path(__file__).parent))
from models import gelu_called, lstm_long, token_classifier, vit_tiny, window_mixer  # noqa: E402  (tests/models.py: the shared test models)


def hard_activations_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Hardswish(), nn.Conv2d(8, 8, 3), nn.Hardsigmoid(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    return net.eval(), (torch.randn(1, 3, 12, 12),)


def parity_inputs(model, samples=16, seed=0):
    rng = np.random.default_rng(seed)
    batches = []
    for x in model.example_inputs:
        if np.issubdtype(x.dtype, np.integer):
            batches.append(rng.integers(0, 50, (samples, *x.shape[1:])).astype(x.dtype))
        else:
            batches.append(rng.standard_normal((samples, *x.shape[1:])).astype(x.dtype))
    return [tuple(b[i : i + 1] for b in batches) for i in range(samples)]


def rewritten(factory, lacks, mode="auto", registry=None):
    module, example = factory()
    model = load_model(factory.__name__, module=module, example_inputs=list(example))
    rewriter = rewrites.Rewriter(model, parity_inputs(model), mode, registry)
    return model, rewriter.for_target(lacks)


# --------------------------------------------------------------------------- each rewrite, proven


def test_gelu_is_rewritten_in_its_tanh_form_within_its_bound():
    model, result = rewritten(vit_tiny, ("gelu",))
    (entry,) = result.entries
    assert entry["name"] == "gelu-tanh" and entry["status"] == "applied"
    assert entry["replaced"] == ["encoder.layers.0.activation"] and entry["count"] == 1
    # the tanh form is at most 4.74e-4 from erf GELU per element; through the network far less
    assert 0 < entry["drift"] <= 1e-4 and entry["bound"] == rewrites.APPROXIMATE_BOUND
    assert result.model.module is not model.module  # the reference keeps its own module
    assert model.module.encoder.layers[0].activation is torch.nn.functional.gelu


def test_the_gelu_tanh_form_is_as_far_from_erf_gelu_as_documented():
    x = torch.linspace(-12, 12, 2_400_001, dtype=torch.float64)
    worst = float((rewrites.gelu_tanh_as_sigmoid(x) - torch.nn.functional.gelu(x)).abs().max())
    assert worst == pytest.approx(rewrites.GELU_TANH_MAX_ABS, rel=1e-3)


def test_gelu_modules_and_transformers_gelu_activation_are_found():
    net = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 8), nn.GELU(approximate="tanh"), nn.Linear(8, 2)).eval()
    draft = rewrites.Draft(net, ["float32"], ["x"])
    gelu = next(r for r in rewrites.REWRITES if r.gap == "gelu")
    assert gelu.apply(draft) == ["1", "3"]
    assert not any(isinstance(m, nn.GELU) for m in net.modules())
    transformers = pytest.importorskip("transformers")
    activation = transformers.activations.GELUActivation()
    assert gelu.apply(rewrites.Draft(nn.Sequential(activation), ["float32"], ["x"])) == ["0.act"]


def test_gelu_called_in_forward_is_rewritten_in_every_trace():
    """F.gelu written in a forward is neither a module nor an attribute: found by a run, named by
    the module it was called in, and computed as the tanh form in eager runs and in the graphs
    torch.export and the TorchScript tracer record. The user's model is untouched."""
    model, result = rewritten(gelu_called, ("gelu",))
    (entry,) = result.entries
    assert entry["status"] == "applied" and 0 < entry["drift"] <= rewrites.APPROXIMATE_BOUND
    assert entry["replaced"] == ["forward", "block.forward"]
    module, example = result.model.module, tuple(torch.from_numpy(x) for x in model.example_inputs)
    assert type(module).__name__ == "GeluCalledNet" and module.state_dict().keys() == model.module.state_dict().keys()
    exported = torch.export.export(module, example)
    assert not [n for n in exported.graph.nodes if "gelu" in str(n.target)]
    assert "sigmoid" in str(torch.jit.trace(module, example).graph) and "gelu" not in str(torch.jit.trace(module, example).graph)
    assert [n for n in torch.export.export(model.module, example).graph.nodes if "gelu" in str(n.target)], "the user's model keeps its GELU"


def test_a_transpose_of_more_than_5_dimensions_is_the_same_on_at_most_5():
    rng = np.random.default_rng(0)
    for _ in range(500):
        shape = tuple(int(v) for v in rng.integers(1, 4, rng.integers(1, 9)))
        dims = [int(d) for d in rng.permutation(len(shape))]
        x = rng.standard_normal(shape)
        merged, order = rewrites.low_rank_permutation(shape, dims, most=len(shape))
        assert len(merged) <= len(shape)
        assert np.array_equal(x.reshape(merged).transpose(order).reshape([shape[d] for d in dims]), x.transpose(dims)), (shape, dims)
    assert rewrites.low_rank_permutation((1, 2, 4, 2, 4, 8), (0, 1, 3, 2, 4, 5)) == ((2, 4, 2, 32), (0, 2, 1, 3))
    assert rewrites.low_rank_permutation((2, 3, 2, 3, 2, 3), (5, 4, 3, 2, 1, 0)) is None, "six runs cannot be five dimensions"


def test_window_partitions_transpose_on_at_most_5_dimensions():
    model, result = rewritten(window_mixer, ("transpose-6d",))
    (entry,) = result.entries
    assert entry["name"] == "transpose-5d" and entry["status"] == "applied" and entry["drift"] == 0
    example = tuple(torch.from_numpy(x) for x in model.example_inputs)
    ranks = [len(n.meta["val"].shape) for n in torch.export.export(result.model.module, example).graph.nodes if "permute" in str(n.target)]
    assert ranks and max(ranks) <= 5
    assert max(len(n.meta["val"].shape) for n in torch.export.export(model.module, example).graph.nodes if "permute" in str(n.target)) == 6


def test_gelu_nodes_of_a_pt2_program_are_rewritten(tmp_path):
    module, example = vit_tiny()
    torch.export.save(torch.export.export(module, example), tmp_path / "vit.pt2")
    model = load_model(str(tmp_path / "vit.pt2"))
    (entry,) = rewrites.Rewriter(model, parity_inputs(model)).for_target(("gelu",)).entries
    assert entry["status"] == "applied" and entry["count"] == 1 and 0 < entry["drift"] <= 1e-4


def test_hard_activations_become_relu6_forms_exactly():
    model, result = rewritten(hard_activations_net, ("hardswish",))
    (entry,) = result.entries
    assert entry["name"] == "hard-activations-relu6" and entry["replaced"] == ["1", "3"]
    assert entry["status"] == "applied" and entry["drift"] <= 1e-6
    kinds = {type(m) for m in result.model.module.modules()}
    assert nn.Hardswish not in kinds and nn.Hardsigmoid not in kinds
    assert not any(m.training for m in result.model.module.modules()), "a replacement left in training mode"


def test_the_fused_transformer_fast_path_is_gone_from_the_trace():
    model, result = rewritten(vit_tiny, ("fused-transformer",))
    (entry,) = result.entries
    assert entry["replaced"] == ["encoder.layers.0", "encoder.layers.0.self_attn"] and entry["drift"] <= 1e-6

    def traced_ops(module):
        with torch.no_grad():
            graph = torch.jit.trace(module, (torch.randn(1, 3, 16, 16),)).inlined_graph
        return {node.kind() for node in graph.nodes()}

    assert "aten::_transformer_encoder_layer_fwd" in traced_ops(model.module)
    assert "aten::_transformer_encoder_layer_fwd" not in traced_ops(result.model.module)


def test_int64_ids_are_fed_as_int32_and_calibration_follows():
    model, result = rewritten(token_classifier, ("int64-inputs",))
    (entry,) = result.entries
    assert entry["name"] == "int32-inputs" and entry["replaced"] == ["ids"] and entry["drift"] == 0.0
    assert model.inputs[0].dtype == "int64" and result.model.inputs[0].dtype == "int32"
    assert result.model.example_inputs[0].dtype == np.int32
    (batch,) = result.cast([(np.arange(8, dtype=np.int64)[None],)])
    assert batch[0].dtype == np.int32


def test_ids_beyond_int32_fail_the_proof():
    module, example = token_classifier()
    model = load_model("ids", module=module, example_inputs=list(example))
    huge = [(np.full((1, 8), 2**40, dtype=np.int64),)]
    (entry,) = rewrites.Rewriter(model, huge).for_target(("int64-inputs",)).entries
    assert entry["status"] == "skipped" and "outside int32" in entry["reason"]


def run_both(lstm, steps_module, x, hx):
    with torch.no_grad():
        return (lstm(x, hx) if hx is not None else lstm(x)), (steps_module(x, hx) if hx is not None else steps_module(x))


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, False), (1, True), (2, True)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("initial_state", [False, True])
def test_the_step_by_step_lstm_is_nn_lstm(batch_first, layers, bidirectional, bias, initial_state):
    torch.manual_seed(0)
    lstm = nn.LSTM(6, 10, num_layers=layers, bidirectional=bidirectional, bias=bias, batch_first=batch_first).eval()
    steps_module = rewrites._lstm_steps_class()(lstm)
    x = torch.randn(2, 20, 6) if batch_first else torch.randn(20, 2, 6)
    hx = tuple(torch.randn(layers * (2 if bidirectional else 1), 2, 10) for _ in range(2)) if initial_state else None
    (out, (h, c)), (got, (got_h, got_c)) = run_both(lstm, steps_module, x, hx)
    for want, have in ((out, got), (h, got_h), (c, got_c)):
        assert have.shape == want.shape
        assert float((have - want).abs().max()) <= 1e-6 * float(want.abs().max())
    assert steps_module.state_dict().keys() == lstm.state_dict().keys()


def test_the_step_by_step_lstm_takes_an_unbatched_sequence():
    torch.manual_seed(0)
    lstm = nn.LSTM(6, 10, num_layers=2, bidirectional=True).eval()
    x, hx = torch.randn(20, 6), (torch.randn(4, 10), torch.randn(4, 10))
    (out, (h, c)), (got, (got_h, got_c)) = run_both(lstm, rewrites._lstm_steps_class()(lstm), x, hx)
    assert got.shape == out.shape == (20, 20) and got_h.shape == h.shape == (4, 10)
    assert torch.allclose(got, out, atol=1e-6) and torch.allclose(got_h, h, atol=1e-6) and torch.allclose(got_c, c, atol=1e-6)


def test_no_concatenation_of_the_step_by_step_lstm_joins_more_than_eight(monkeypatch):
    torch.manual_seed(0)
    lstm = nn.LSTM(4, 5, num_layers=6, bidirectional=True, batch_first=True).eval()  # h_n joins 12
    steps_module = rewrites._lstm_steps_class()(lstm)
    joined, cat = [], torch.cat

    def counting_cat(tensors, dim=0):
        joined.append(len(tensors))
        return cat(tensors, dim)

    monkeypatch.setattr(torch, "cat", counting_cat)
    x = torch.randn(1, 100, 4)
    (out, (h, c)), (got, (got_h, got_c)) = run_both(lstm, steps_module, x, None)
    assert max(joined) == rewrites.LSTM_CHUNK and got.shape == out.shape and got_h.shape == h.shape == (12, 1, 5)
    assert torch.allclose(got, out, atol=1e-6) and torch.allclose(got_c, c, atol=1e-6)
    for n in (1, 8, 9, 64, 65, 513):
        joined.clear()
        pieces = [torch.full((1, 1), float(i)) for i in range(n)]
        assert torch.equal(rewrites.cat_in_chunks(pieces, 1), torch.arange(n, dtype=torch.float32)[None])
        assert max(joined, default=1) <= rewrites.LSTM_CHUNK


def test_lstms_are_rewritten_exactly_and_a_projected_one_is_left_alone():
    model, result = rewritten(lstm_long, ("lstm",))
    (entry,) = result.entries
    assert (entry["name"], entry["gap"], entry["replaced"], entry["status"]) == ("lstm-steps", "lstm", ["lstm"], "applied")
    assert entry["drift"] <= 1e-6 and entry["bound"] == rewrites.EXACT_BOUND
    assert not any(isinstance(m, nn.LSTM) for m in result.model.module.modules())
    assert isinstance(model.module.lstm, nn.LSTM)  # the reference keeps its own
    net = nn.ModuleDict({"plain": nn.LSTM(4, 6), "projected": nn.LSTM(4, 6, proj_size=3)})
    lstm = next(r for r in rewrites.REWRITES if r.gap == "lstm")
    assert lstm.apply(rewrites.Draft(net, ["float32"], ["x"])) == ["plain"]
    assert isinstance(net["projected"], nn.LSTM) and not isinstance(net["plain"], nn.LSTM)


def test_a_rewrite_that_raises_is_skipped_and_the_model_kept():
    def broken(draft):
        raise RuntimeError("cannot walk this model")

    registry = (rewrites.Rewrite("broken", "gelu", "raises", broken),)
    model, result = rewritten(vit_tiny, ("gelu",), registry=registry)
    (entry,) = result.entries
    assert entry["status"] == "skipped" and entry["reason"] == "could not be applied: RuntimeError: cannot walk this model"
    assert result.model is model
    assert result.messages() == ["rewrite broken not applied: could not be applied: RuntimeError: cannot walk this model"]


def test_nothing_to_rewrite_leaves_the_model_and_the_report_alone():
    model, result = rewritten(token_classifier, ("gelu", "hardswish", "fused-transformer"))
    assert result.entries == [] and result.model is model


def test_none_applies_nothing_and_says_what_it_would_have():
    model, result = rewritten(vit_tiny, ("gelu",), mode="none")
    (entry,) = result.entries
    assert entry["status"] == "skipped" and entry["reason"] == "--rewrite none" and entry["drift"] is None
    assert result.model is model


def test_a_bad_mode_is_a_usage_error():
    with pytest.raises(UsageError, match="--rewrite 'sometimes': choose one of auto, none"):
        make_settings(rewrite="sometimes")


# --------------------------------------------------------------------------- through the pipeline


def relu_as_identity(draft):
    """A deliberately wrong rewrite: ReLU is not the identity."""
    return rewrites._replace_children(draft.module, lambda m: isinstance(m, nn.ReLU), lambda m: nn.Identity())


def relu_as_clamp(draft):
    class ClampRelu(nn.Module):
        def forward(self, x):
            return x.clamp(min=0.0)

    return rewrites._replace_children(draft.module, lambda m: isinstance(m, nn.ReLU), lambda m: ClampRelu())


WRONG = rewrites.Rewrite("relu-as-identity", "relu", "ReLU dropped (wrong on purpose)", relu_as_identity)
RIGHT = rewrites.Rewrite("relu-as-clamp", "relu", "ReLU as clamp(min=0)", relu_as_clamp)


class NoReluTarget:
    """Target "npz-norelu": lacks ReLU; its artifact is the MLP's weights, run by numpy, and its
    converter reports which activation module it was handed."""

    @hookimpl
    def edgex_targets(self):
        return [TargetSpec("npz-norelu", "an MLP without ReLU", (".npz",), ("fp32",), lacks=("relu",))]

    @hookimpl
    def edgex_backend_status(self, target):
        return BackendStatus(True, "numpy " + np.__version__)

    @hookimpl
    def edgex_convert(self, request):
        first, activation, second = request.model.module
        path = request.workdir / "model.npz"
        np.savez(path, w1=first.weight.detach().numpy(), b1=first.bias.detach().numpy(), w2=second.weight.detach().numpy(), b2=second.bias.detach().numpy())
        io = ArtifactIO(path, "fp32", (TensorBinding("x", (1, 4), "float32"),), (TensorBinding("output", (1, 3), "float32"),))
        return ConversionResult((Artifact(path, "npz"),), io, "numpy.savez", details={"converted_activation": type(activation).__name__})

    @hookimpl
    def edgex_load_runtime(self, target, io, options):
        class Numpy:
            backend = "numpy"

            def run(self, inputs):
                with np.load(io.path) as w:
                    return [np.maximum(inputs[0] @ w["w1"].T + w["b1"], 0.0) @ w["w2"].T + w["b2"]]

        return Numpy()


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    return load_model("mlp", module=nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), example_inputs=[torch.randn(1, 4)])


def convert_norelu(mlp, out, **values):
    manager = PluginManager(builtins=(), load_entry_points=False, extra_plugins=[NoReluTarget()])
    return pipeline.convert(manager, mlp, make_settings(targets=("npz-norelu",), samples=8, **values), out)


def test_a_rewrite_whose_proof_fails_is_not_applied(mlp, tmp_path, monkeypatch):
    monkeypatch.setattr(rewrites, "REWRITES", (WRONG,))
    report = convert_norelu(mlp, tmp_path / "out")
    row = report.targets["npz-norelu"]
    (entry,) = row.details["rewrites"]
    assert entry["name"] == "relu-as-identity" and entry["status"] == "skipped"
    assert entry["reason"].startswith("its proof failed: fp32 drift") and entry["drift"] > entry["bound"]
    assert row.details["converted_activation"] == "ReLU"  # the target got the model as it was
    assert row.status == "passed"  # judged against the un-rewritten reference, as always
    assert any(m.startswith("rewrite relu-as-identity not applied") for m in row.messages)
    written = json.loads((tmp_path / "out" / "report.json").read_text())["targets"]["npz-norelu"]["rewrites"]
    assert written[0]["status"] == "skipped"


def test_after_a_failed_proof_the_next_rewrite_for_the_gap_is_tried(mlp, tmp_path, monkeypatch):
    monkeypatch.setattr(rewrites, "REWRITES", (WRONG, RIGHT))
    row = convert_norelu(mlp, tmp_path / "out").targets["npz-norelu"]
    assert [(e["name"], e["status"]) for e in row.details["rewrites"]] == [("relu-as-identity", "skipped"), ("relu-as-clamp", "applied")]
    assert row.details["rewrites"][1]["drift"] == 0.0
    assert row.details["converted_activation"] == "ClampRelu" and row.status == "passed"


def test_rewrite_none_converts_the_model_as_it_is(mlp, tmp_path, monkeypatch):
    monkeypatch.setattr(rewrites, "REWRITES", (RIGHT,))
    row = convert_norelu(mlp, tmp_path / "out", rewrite="none").targets["npz-norelu"]
    assert row.details["converted_activation"] == "ReLU"
    assert [(e["name"], e["status"], e["reason"]) for e in row.details["rewrites"]] == [("relu-as-clamp", "skipped", "--rewrite none")]


# --------------------------------------------------------------------------- real targets


@pytest.mark.slow
def test_cli_rewrite_none_reproduces_the_tflm_gelu_error(tmp_path, capsys):
    pytest.importorskip("tflite_micro")
    code = main(["convert", f"{Path(__file__).parent / 'models.py'}:vit_tiny", "--target", "mcu", "--rewrite", "none", "--samples", "8", "--out", str(tmp_path / "out"), "--json"])
    row = json.loads(capsys.readouterr().out)["targets"]["mcu"]
    assert code == 3 and row["status"] == "error"
    assert any("TensorFlow Lite Micro has no kernel for" in m and "GELU" in m for m in row["messages"])
    assert {e["name"]: e["reason"] for e in row["rewrites"]}["gelu-tanh"] == "--rewrite none"


@pytest.mark.slow
def test_a_vit_passes_on_mcu_and_coral_with_rewrites(tmp_path):
    pytest.importorskip("tflite_micro")
    module, example = vit_tiny()
    model = load_model("vit", module=module, example_inputs=list(example))
    manager = PluginManager()
    report = pipeline.convert(manager, model, make_settings(targets=("mcu", "coral"), samples=8), tmp_path / "out")
    for name in ("mcu", "coral"):
        row = report.targets[name]
        assert row.status == "passed", (name, row.messages)
        applied = {e["name"]: e for e in row.details["rewrites"] if e["status"] == "applied"}
        assert applied["gelu-tanh"]["count"] == 1 and applied["gelu-tanh"]["drift"] <= 1e-4
    operators = {op["op"] for op in report.targets["mcu"].details["operators"]}
    assert "GELU" not in operators and "LOGISTIC" in operators


@pytest.mark.slow
def test_window_attention_passes_on_mcu(tmp_path):
    """Swin-style window partition and merge (6-D transposes: "Transpose op only supports 1D-5D
    input arrays") around a GELU called as a function ("no kernel for GELU"): both exit 3 on
    TFLM without their rewrites."""
    pytest.importorskip("tflite_micro")
    module, example = window_mixer()
    model = load_model("windows", module=module, example_inputs=list(example))
    row = pipeline.convert(PluginManager(), model, make_settings(targets=("mcu",), samples=8), tmp_path / "out").targets["mcu"]
    assert row.status == "passed", row.messages
    applied = {e["name"]: e["replaced"] for e in row.details["rewrites"] if e["status"] == "applied"}
    assert applied == {"transpose-5d": ["forward"], "gelu-tanh": ["forward"]}
    assert "GELU" not in {op["op"] for op in row.details["operators"]}


def token_ids(tmp_path, vocab, rows=64):
    """int64 ids over the whole vocabulary, as --example-inputs and --calibration (parity held out)."""
    ids = tmp_path / "ids.npy"
    np.save(ids, np.random.default_rng(0).integers(0, vocab, (rows, 8)).astype(np.int64))
    return str(ids)


def assert_all_integer_embedding(row, path):
    """int8 everywhere but the int32 ids; the int8 table's rows come out on the table's own scale."""
    from edgex.targets.litert.graph import read_graph

    assert row.details["int8_checks"]["all_tensors_int8_or_int32"] is True
    assert len(row.details["int8_checks"]["int32_index_inputs"]) == 1
    assert row.io["inputs"][0]["dtype"] == "int32" and row.io["outputs"][0]["dtype"] == "int8"
    graph = read_graph(path)
    lookups = [op for op in graph.operators if op.name == "EMBEDDING_LOOKUP"]
    assert lookups
    for op in lookups:
        table, out = graph.tensor(op.inputs[1]), graph.tensor(op.outputs[0])
        assert table.dtype == out.dtype == "int8" and table.constant
        assert (table.scales, table.zero_points) == (out.scales, out.zero_points)


@pytest.mark.slow
def test_int64_token_ids_convert_for_tflite_coral_and_mcu(tmp_path):
    pytest.importorskip("tflite_micro")
    module, _ = token_classifier()
    ids = token_ids(tmp_path, 50)
    model = load_model("tokens", module=module, example_inputs=ids)
    settings = make_settings(targets=("tflite", "coral", "mcu"), samples=16, calibration=ids)
    report = pipeline.convert(PluginManager(), model, settings, tmp_path / "out")
    for name, row in report.targets.items():
        assert not any("INT64" in m for m in row.messages), (name, row.messages)
        (entry,) = row.details["rewrites"]
        assert (entry["name"], entry["status"], entry["replaced"], entry["drift"]) == ("int32-inputs", "applied", ["ids"], 0.0)
    assert report.targets["tflite"].status == "passed" and report.targets["tflite"].io["inputs"][0]["dtype"] == "int32"
    # full int8: the embedding is an int8 EMBEDDING_LOOKUP, parity judged as for any int8 artifact
    for name in ("coral", "mcu"):
        row = report.targets[name]
        assert row.status == "passed", (name, row.messages)
        assert row.parity.sqnr_db > 30, row.parity
        assert_all_integer_embedding(row, tmp_path / "out" / name / "model_int8.tflite")
    assert any(op["op"] == "EMBEDDING_LOOKUP" for op in report.targets["mcu"].details["operators"])


@pytest.mark.slow
def test_token_ids_at_full_int8_on_tflite(tmp_path):
    module, _ = token_classifier()
    ids = token_ids(tmp_path, 50)
    model = load_model("tokens", module=module, example_inputs=ids)
    settings = make_settings(targets=("tflite",), samples=16, calibration=ids, precision="int8")
    row = pipeline.convert(PluginManager(), model, settings, tmp_path / "out").targets["tflite"]
    assert row.status == "passed" and row.precision == "int8", row.messages
    assert row.parity.sqnr_db > 30, row.parity
    assert_all_integer_embedding(row, tmp_path / "out" / "tflite" / "model_int8.tflite")


@pytest.mark.slow
def test_a_tiny_distilbert_with_int64_ids_passes_on_onnx_jetson_and_tflite(tmp_path):
    """tests/models.py:distilbert_tiny (transformers' DistilBertForSequenceClassification, input_ids
    only). Full int8 (coral, mcu): the next test."""
    pytest.importorskip("transformers")
    from models import distilbert_tiny

    module, _ = distilbert_tiny()
    ids = token_ids(tmp_path, 100)
    model = load_model("distilbert", module=module, example_inputs=ids)
    settings = make_settings(targets=("onnx", "jetson", "tflite"), samples=16, calibration=ids)
    report = pipeline.convert(PluginManager(), model, settings, tmp_path / "out")
    for name, row in report.targets.items():
        assert row.status == "passed", (name, row.messages)
    assert report.targets["tflite"].io["inputs"][0]["dtype"] == "int32"
    assert report.targets["jetson"].details["tensorrt"]["opset"] == 17


@pytest.mark.slow
def test_a_tiny_distilbert_with_int64_ids_passes_at_full_int8_on_coral_and_mcu(tmp_path):
    """int32 ids read only by the lookup, the int8 embedding table, and the all-true attention
    mask the model builds when none is given: a bool tensor (a mask carries no values to quantize),
    which the all-integer check allows and counts. mcu runs it on TFLM."""
    pytest.importorskip("transformers")
    pytest.importorskip("tflite_micro")
    from models import distilbert_tiny

    module, _ = distilbert_tiny()
    ids = token_ids(tmp_path, 100)
    model = load_model("distilbert", module=module, example_inputs=ids)
    settings = make_settings(targets=("coral", "mcu"), samples=16, calibration=ids)
    report = pipeline.convert(PluginManager(), model, settings, tmp_path / "out")
    for name, row in report.targets.items():
        assert row.status == "passed" and row.precision == "int8", (name, row.messages)
        assert row.parity.sqnr_db > 25, (name, row.parity)
        checks = row.details["int8_checks"]
        assert checks["all_tensors_int8_or_int32"] and checks["bool_tensors"] >= 1 and checks["int32_index_inputs"]


@pytest.mark.slow
def test_hard_activations_map_to_the_edge_tpu_only_after_rewriting(tmp_path):
    module, example = hard_activations_net()
    model = load_model("hard", module=module, example_inputs=list(example))
    mapped = {}
    for mode in ("none", "auto"):
        report = pipeline.convert(PluginManager(), model, make_settings(targets=("coral",), samples=8, rewrite=mode), tmp_path / mode)
        row = report.targets["coral"]
        assert row.status == "passed", row.messages
        mapped[mode] = (row.details["edgetpu"]["ops_mapped"], row.details["edgetpu"]["ops_total"])
    assert mapped["none"][0] < mapped["none"][1]  # HARD_SWISH is not in the Edge TPU's table
    assert mapped["auto"][0] == mapped["auto"][1]


@pytest.fixture(scope="module")
def long_lstm_reports(tmp_path_factory):
    """rewrite ("auto", "none") -> the report of converting lstm_long for mcu and coral: read by
    the rewrite tests below and by edgex check's predictions of the same conversions."""
    pytest.importorskip("tflite_micro")
    reports = {}
    for rewrite in ("auto", "none"):
        module, example = lstm_long()
        model = load_model("lstm", module=module, example_inputs=list(example))
        settings = make_settings(targets=("mcu", "coral"), samples=8, rewrite=rewrite)
        reports[rewrite] = pipeline.convert(PluginManager(), model, settings, tmp_path_factory.mktemp(f"lstm-{rewrite}"))
    return reports


@pytest.mark.slow
def test_a_20_step_lstm_passes_on_mcu_and_coral_with_rewrites(long_lstm_reports):
    report = long_lstm_reports["auto"]
    for name in ("mcu", "coral"):
        row = report.targets[name]
        assert row.status == "passed", (name, row.messages)
        applied = [e for e in row.details["rewrites"] if e["status"] == "applied"]
        assert [(e["name"], e["replaced"]) for e in applied] == [("lstm-steps", ["lstm"])] and applied[0]["drift"] <= 1e-6
        # judged against edgex's own int8 reference, simulated on the model the target converted
        assert "as rewritten for this target (lstm-steps)" in row.details["int8_reference"]["calibration"], row.messages
    operators = {op["op"]: op["count"] for op in report.targets["mcu"].details["operators"]}
    assert operators["CONCATENATION"] >= 2  # the 20 steps joined in chunks of at most 8, not in one
    edgetpu = report.targets["coral"].details["edgetpu"]
    assert edgetpu["ops_mapped"] == edgetpu["ops_total"] and edgetpu["mac_fraction"] == 1.0


@pytest.mark.slow
def test_rewrite_none_reproduces_the_long_lstm_errors(long_lstm_reports):
    report = long_lstm_reports["none"]
    row = report.targets["mcu"]
    assert row.status == "error" and any("CONCATENATION" in m and "kMaxInputNum" in m for m in row.messages), row.messages
    assert {e["name"]: e["reason"] for e in row.details["rewrites"]}["lstm-steps"] == "--rewrite none"
    edgetpu = report.targets["coral"].details["edgetpu"]
    assert edgetpu["first_unmapped"]["op"] == "FULLY_CONNECTED" and "not one-dimensional" in edgetpu["first_unmapped"]["reason"]


@pytest.mark.slow
@pytest.mark.parametrize("rewrite, targets", [("auto", ("mcu", "coral")), ("none", ("mcu",))], ids=["auto", "none"])
def test_check_predicts_the_long_lstm_conversions(long_lstm_reports, rewrite, targets):
    """edgex check's prediction held against the real conversions above (tests/test_check.py holds
    the other models' cells): an artifact written, or the target errored."""
    from edgex.core import api

    module, example = lstm_long()
    predicted = api.check(module, targets, example_inputs=example, rewrite=rewrite)
    real = {name: "error" if row.status in ("error", "skipped") else "converts" for name, row in long_lstm_reports[rewrite].targets.items()}
    assert {t.target: t.outcome for t in predicted.targets} == {name: real[name] for name in targets}
