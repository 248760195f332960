"""edgex's own simulated int8 reference (core/quant_reference.py): tiny models, no converters."""

import numpy as np
import pytest
import torch

from edgex.core.quant_reference import CannotSimulate, fake_quant_weight, simulate, vacuous_reference
from edgex.core.types import AVERAGE_POOLS


def _samples(shape, count, seed):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(shape).astype(np.float32),) for _ in range(count)]


def _float(module, batches):
    with torch.no_grad():
        return [[module(torch.from_numpy(b[0])).numpy()] for b in batches]


def _sqnr(reference, actual):
    r = np.concatenate([s[0].ravel() for s in reference]).astype(np.float64)
    a = np.concatenate([s[0].ravel() for s in actual]).astype(np.float64)
    return 10 * np.log10(np.sum(r**2) / np.sum((r - a) ** 2))


def _conv_bn_model():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4),
    )
    with torch.no_grad():  # statistics far from (0, 1): an unfolded BatchNorm would show
        for bn in (model[1], model[4]):
            bn.running_mean.uniform_(-2, 2)
            bn.running_var.uniform_(0.05, 4)
            bn.weight.uniform_(0.5, 3)
            bn.bias.uniform_(-1, 1)
    return model.eval()


def test_int8_simulation_error_is_small_but_not_zero():
    model = _conv_bn_model()
    batches = _samples((2, 3, 8, 8), 4, 1)
    sim = simulate(model, batches[0], _samples((2, 3, 8, 8), 16, 2), batches, "int8")
    sqnr = _sqnr(_float(model, batches), sim.outputs)
    assert 20 < sqnr < 80
    assert len(sim.outputs) == 4 and sim.outputs[0][0].shape == (2, 4)
    assert sim.folded_batch_norms == 2 and sim.quantized_weights == 3
    low, high = sim.output_ranges[0]
    assert low < 0 < high and sim.output_step(0) == pytest.approx((high - low) / 255)


def test_outputs_sit_on_the_calibrated_int8_grid():
    model = _conv_bn_model()
    batches = _samples((1, 3, 8, 8), 3, 1)
    sim = simulate(model, batches[0], _samples((1, 3, 8, 8), 8, 2), batches, "int8")
    levels = np.concatenate([s[0].ravel() for s in sim.outputs]) / sim.output_step(0)  # zero is exact
    assert np.allclose(levels, np.round(levels), atol=1e-3)


def test_per_channel_weight_error_is_at_most_half_a_step():
    torch.manual_seed(0)
    weight = torch.randn(6, 4, 3, 3) * torch.tensor([0.01, 0.1, 1, 10, 100, 0.0]).reshape(6, 1, 1, 1)
    quantized = fake_quant_weight(weight, axis=0)
    steps = weight.abs().amax(dim=(1, 2, 3)) / 127
    error = (quantized - weight).abs().amax(dim=(1, 2, 3))
    assert torch.all(error <= steps / 2 * (1 + 1e-5))
    assert torch.all(error[:5] > 0) and error[5] == 0  # per channel: the tiny channel keeps its own scale


def test_batch_norm_is_folded_before_weights_are_quantized():
    """A conv + BatchNorm with weights far from the BatchNorm's scale: quantizing the conv's
    weights before folding would be fine too, but folding must happen (no quantization point
    between conv and BatchNorm), so the simulation stays close to float."""
    model = _conv_bn_model()
    batches = _samples((1, 3, 8, 8), 4, 3)
    sim = simulate(model, batches[0], _samples((1, 3, 8, 8), 32, 4), batches, "int8")
    assert sim.folded_batch_norms == 2
    assert _sqnr(_float(model, batches), sim.outputs) > 30


def test_dynamic_int8_leaves_activations_float():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    batches = _samples((1, 16), 4, 5)
    sim = simulate(model, batches[0], [], batches, "dynamic-int8")
    quantized = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4)).eval()
    quantized.load_state_dict(model.state_dict())
    with torch.no_grad():
        for layer in (quantized[0], quantized[2]):
            layer.weight.copy_(fake_quant_weight(layer.weight))
    # weights-only quantization in plain torch gives the same numbers: no activation was rounded
    np.testing.assert_allclose(np.concatenate([s[0] for s in sim.outputs]), np.concatenate([s[0] for s in _float(quantized, batches)]), rtol=1e-6, atol=1e-6)
    assert sim.activation_points == 0 and sim.output_ranges == (None,)
    assert 0 < np.max(np.abs(np.concatenate([s[0] for s in sim.outputs]) - np.concatenate([s[0] for s in _float(model, batches)])))


def test_a_recurrent_model_raises_a_clear_error():
    """Without the target saying how its artifact quantizes a recurrent op, there is nothing to simulate."""
    model = torch.nn.LSTM(4, 8, batch_first=True).eval()
    batches = _samples((1, 5, 4), 2, 0)
    with pytest.raises(CannotSimulate, match=r"recurrent op \(lstm\) and the target does not say"):
        simulate(model, batches[0], batches, batches, "int8")


class _Recurrent(torch.nn.Module):
    def __init__(self, cell):
        super().__init__()
        self.rnn, self.head = cell, torch.nn.Linear(cell.hidden_size, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_recurrent_ops_are_simulated_as_the_target_quantizes_them(cell):
    """``unrolled`` (LiteRT): PyTorch's decomposition, int8 at every gate; ``float`` (XNNPACK,
    onnxruntime QDQ): the op float, only the head around it quantized -- nearer the float model."""
    torch.manual_seed(0)
    model = _Recurrent(getattr(torch.nn, cell)(4, 8, batch_first=True)).eval()
    calibration, batches = _samples((1, 6, 4), 16, 0), _samples((1, 6, 4), 4, 1)
    reference = _float(model, batches)
    unrolled = simulate(model, batches[0], calibration, batches, "int8", recurrent="unrolled")
    kept = simulate(model, batches[0], calibration, batches, "int8", recurrent="float")
    assert unrolled.recurrent_ops == kept.recurrent_ops == 1
    assert unrolled.activation_points > 6 * 4 and kept.activation_points == 2  # per step / the head's input and output
    assert 20 < _sqnr(reference, unrolled.outputs) < _sqnr(reference, kept.outputs) < 80
    assert not [r for r in unrolled.ranges if "degenerate" in r["flags"]]  # the zero initial state is no range
    # int8_weights (Core ML's compressed lstm): kept whole, its weights over the threshold int8 per gate row
    whole = simulate(model, batches[0], calibration, batches, "dynamic-int8", recurrent="int8_weights", float_weights_up_to=4 * 8 * 4)
    dense = simulate(model, batches[0], calibration, batches, "dynamic-int8", recurrent="int8_weights", float_weights_up_to=4 * 8 * 8)
    assert "kept whole, on int8 weights" in whole.describe()
    assert _sqnr(reference, whole.outputs) < 80 < 200 < _sqnr(reference, dense.outputs)  # weight_hh (gates x 8 x 8) int8 / every weight under the threshold
    # bias correction runs the model on every input, the float op's unquantized one too
    corrected = simulate(model, batches[0], calibration, batches, "int8", recurrent="float", bias_correction=True)
    assert corrected.corrected_biases == 1  # the head's


def test_unknown_scheme_is_a_usage_error():
    model = torch.nn.Linear(4, 2).eval()
    batches = _samples((1, 4), 2, 0)
    with pytest.raises(Exception, match="no simulated reference for scheme 'int4'"):
        simulate(model, batches[0], batches, batches, "int4")


def test_fp16_rounds_weights_inputs_and_every_op_output_and_computes_in_fp32():
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).eval()
    batches = _samples((2, 6), 3, 4)
    sim = simulate(model, batches[0], (), batches, "fp16")

    def half(t):
        return t.half().float()

    with torch.no_grad():
        for batch, outputs in zip(batches, sim.outputs):
            (first, _, last) = model
            x = half(torch.from_numpy(batch[0]))
            x = half(torch.nn.functional.linear(x, half(first.weight), half(first.bias)))
            x = half(torch.tanh(x))
            x = half(torch.nn.functional.linear(x, half(last.weight), half(last.bias)))
            np.testing.assert_array_equal(outputs[0], x.numpy())
    assert not np.array_equal(sim.outputs[0][0], model(torch.from_numpy(batches[0][0])).detach().numpy())


def test_fp16_simulates_a_recurrent_model_written_out_per_step():
    """Each step's values rounded to fp16, as fp16 backends store them; over several batches (the
    recurrent op itself, with the graph's batch-1 state and stacked inputs, corrupted the heap)."""
    model = torch.nn.LSTM(4, 8, batch_first=True).eval()
    batches = _samples((1, 5, 4), 3, 5)
    sim = simulate(model, batches[0], (), batches, "fp16")
    with torch.no_grad():
        for batch, outputs in zip(batches, sim.outputs):
            expected = model(torch.from_numpy(batch[0]))[0].numpy()
            assert outputs[0].shape == expected.shape and np.abs(outputs[0] - expected).max() < 1e-2


# --------------------------------------------------------------------------- vacuous references


def test_vacuous_reference_flags_all_zero_outputs():
    inputs = _samples((1, 4), 3, 0)
    reference = [[np.zeros((1, 2), np.float32)] for _ in inputs]
    assert vacuous_reference(reference, inputs, ["logits"]).startswith("the reference output 'logits' is 0 for every input")


def test_vacuous_reference_flags_outputs_that_ignore_the_inputs():
    inputs = _samples((1, 4), 3, 0)
    reference = [[np.array([[0.5, -1.0]], np.float32)] for _ in inputs]
    assert "is the same for every input" in vacuous_reference(reference, inputs, ["logits"])


def test_vacuous_reference_flags_outputs_below_float32_resolution_of_the_inputs():
    inputs = _samples((1, 4), 3, 0)
    reference = [[b[0][:, :2] * 1e-9] for b in inputs]
    assert "below float32 resolution" in vacuous_reference(reference, inputs, ["logits"])


def test_vacuous_reference_keeps_real_models_and_constant_side_outputs():
    model = _conv_bn_model()
    inputs = _samples((1, 3, 8, 8), 4, 0)
    outputs = _float(model, inputs)
    assert vacuous_reference(outputs, inputs, ["logits"]) is None
    anchors = np.linspace(0, 1, 8, dtype=np.float32)
    assert vacuous_reference([o + [anchors] for o in outputs], inputs, ["logits", "anchors"]) is None
    assert vacuous_reference(outputs[:1], inputs[:1], ["logits"]) is None  # one sample: nothing to compare


def test_vacuous_reference_never_flags_the_trained_digits_model():
    from edgex.core.loading import load_model

    model = load_model("examples:digits")
    images = model.calibration[0][:16]
    inputs = [(images[i : i + 1],) for i in range(len(images))]
    assert vacuous_reference(_float(model.module, inputs), inputs, list(model.output_names)) is None


# --------------------------------------------------------------------------- calibration diagnostics


def _ranges(model, calibration, batches):
    sim = simulate(model, calibration[0], calibration, batches)
    return {r["module"]: r for r in sim.ranges}


def test_honest_calibration_flags_nothing():
    model = _conv_bn_model()
    ranges = _ranges(model, _samples((1, 3, 8, 8), 16, 0), _samples((1, 3, 8, 8), 4, 1))
    assert ranges and not any(r["flags"] for r in ranges.values())
    assert ranges["input"]["low"] < 0 < ranges["input"]["high"] and ranges["2"]["module"] == "2"  # the first ReLU, named


def test_an_outlier_in_the_calibration_data_is_flagged_with_the_tensor_it_widens():
    """One input value 200x the rest sets the input's range: its bulk gets ~2 of 256 steps."""
    model = _conv_bn_model()
    calibration = _samples((1, 3, 8, 8), 16, 0)
    calibration[3][0][0, 0, 0, 0] = 400.0
    ranges = _ranges(model, calibration, _samples((1, 3, 8, 8), 4, 1))
    flagged = ranges["input"]
    assert flagged["flags"] == ["outlier-dominated"] and flagged["high"] == 400.0 and flagged["steps_for_bulk"] < 32
    assert "percentile" in flagged["advice"][0]


def test_a_dead_layer_is_degenerate_and_inputs_beyond_calibration_are_saturated():
    """A ReLU after a conv whose bias drives it below zero is constant 0; parity inputs 4x the
    calibration data's scale fall outside its ranges."""
    model = _conv_bn_model()
    with torch.no_grad():
        model[3].weight.zero_()
        model[3].bias.fill_(-1.0)
        model[4].bias.fill_(-5.0)
    calibration = _samples((1, 3, 8, 8), 16, 0)
    loud = [(4 * b[0],) for b in _samples((1, 3, 8, 8), 4, 1)]
    ranges = _ranges(model, calibration, loud)
    assert ranges["5"]["flags"] == ["degenerate"] and ranges["5"]["high"] == 0.0
    assert "saturated" in ranges["input"]["flags"] and ranges["input"]["outside_on_parity"] > 0.1
    from edgex.core.quant_reference import describe_flags

    sentence = describe_flags(tuple(ranges.values()))
    assert sentence.startswith("calibration: ") and "activation ranges flagged" in sentence


def test_an_average_pool_is_simulated_on_its_inputs_grid_as_litert_and_onnxruntime_keep_it(tmp_path):
    """Issue 28: a keyword-spotting CNN's 24x5 average pool. LiteRT (SAME_AS_INPUT_SCALE) and
    onnxruntime (QDQDirect8BitOp) keep its int8 output on its input's grid; simulated on a range of
    its own, edgex's reference was 4-5 dB better than any honest .tflite, its floor above every
    recipe, and the honest row failed. Now the row passes within 1.5 dB of the simulation."""
    import json
    from pathlib import Path

    import edgex.core as edgex

    kws = f"{Path(__file__).with_name('models.py')}:kws_dscnn"
    model = edgex.load_model(kws)
    calibration = np.random.default_rng(2).standard_normal((256, 1, 49, 10)).astype(np.float32)
    parity = [(calibration[i : i + 1],) for i in range(16)]
    plain = simulate(model.module, model.example_inputs, [(calibration,)], parity)
    on_grid = simulate(model.module, model.example_inputs, [(calibration,)], parity, on_input_grid=AVERAGE_POOLS)
    reference = _float(model.module, parity)
    assert _sqnr(reference, on_grid.outputs) < _sqnr(reference, plain.outputs) - 3.0  # the grid the pool really gets costs dB

    np.save(tmp_path / "calib.npy", calibration)
    report = edgex.convert(kws, ["tflite", "onnx"], out=tmp_path / "out", precision="int8", calibration=tmp_path / "calib.npy")
    data = json.loads((tmp_path / "out" / "report.json").read_text())
    for name, row in report.targets.items():
        assert row.status == "passed", (name, row.messages)
        sim = data["targets"][name]["int8_reference"]["outputs"][0]["sqnr_sim_db"]
        assert abs(row.parity.sqnr_db - sim) <= 1.5, (name, row.parity.sqnr_db, sim)


# --------------------------------------------------------------------------- an LSTM unrolled by litert-torch


@pytest.fixture(scope="module")
def lstm_tflite(tmp_path_factory):
    """tests/models.py:lstm_tiny at full int8 for tflite, where no rewrite applies: litert-torch
    unrolls the LSTM itself. (reference, the .tflite, the calibration, the convert row)."""
    from pathlib import Path

    from edgex.core import api

    reference = api.load_model(f"{Path(__file__).with_name('models.py')}:lstm_tiny")
    calibration = np.random.default_rng(1).standard_normal((64, 10, 8)).astype(np.float32)
    out = tmp_path_factory.mktemp("lstm")
    row = api.convert(reference, ["tflite"], out=out, precision="int8", samples=8, calibration=calibration).targets["tflite"]
    return reference, out / row.artifacts[0], calibration, row


@pytest.mark.slow
def test_an_unrolled_lstm_is_judged_by_its_simulation_and_a_defect_in_it_fails(lstm_tflite, tmp_path):
    """Before, an LSTM's int8 row had no simulated reference (one recurrent op) and was judged by
    8 output steps: two rows of the input projection (every step reads it) swapped passed at
    31.5 dB. Now the simulation writes the LSTM out as litert-torch does: the honest row passes
    near it (37.7 dB against 37.4 dB simulated), the swapped rows fail (floor 34.4 dB)."""
    import defects  # tests/defects.py, loaded by tests/conftest.py
    from edgex.core import api

    reference, artifact, calibration, row = lstm_tflite
    simulated = row.details["int8_reference"]
    assert "written out per step" in simulated["description"] and not row.details.get("rewrites"), row.messages
    assert row.status == "passed" and abs(row.parity.sqnr_db - simulated["outputs"][0]["sqnr_sim_db"]) <= 2.0, row.messages
    planted = defects.swap_channels(artifact, tmp_path / "swapped.tflite", layer=0, a=0, b=5).path
    judged = api.validate(planted, reference, target="tflite", out=tmp_path / "validate", samples=8, calibration=calibration).targets["tflite"]
    assert judged.status == "failed" and "simulated int8 reference" in judged.parity.tolerance.source, judged.messages


def test_per_layer_sensitivity_names_the_layer_int8_cannot_carry():
    """WideRangeFeatures' hidden layer spans two scales 100x apart: int8 leaves its small half a
    few steps. Kept float with the layers that read it, it gives back the lost SQNR (leave-out);
    quantized alone, a layer reading it quantizes that value at its input and loses it (alone).
    MAC shares of the single layers add up to 1."""
    import sys
    from pathlib import Path

    from edgex.core.parity import torch_outputs
    from edgex.core.quant_reference import calibrate, describe_sensitivity, layer_sensitivity

    sys.path.insert(0, str(Path(__file__).parent))
    import models

    module, example = models.wide_range_features()
    digits = models.digits_vectors()
    calibration = [(digits[i : i + 1],) for i in range(64)]
    batches = [(digits[600 + i : 601 + i],) for i in range(4)]
    reference = torch_outputs(module, batches)
    calibrated = calibrate(module, (example[0].numpy(),), calibration)
    out = layer_sensitivity(calibrated, batches, reference)
    # the value int8 cannot carry is hidden's output: kept float, hidden with the layers reading it
    # gives the SQNR back; hidden alone does not (a kept layer's output stays int8 where int8 ops read it)
    top = out["layers"][0]
    assert out["sqnr_db"] < 15 and "hidden" in top["modules"] and len(top["modules"]) > 1 and top["gain_db"] > 20, top
    hidden = next(layer for layer in out["layers"] if layer["modules"] == ["hidden"])
    assert hidden["gain_db"] < top["gain_db"] - 10 and hidden["macs_share"] == pytest.approx(64 * 32 / (64 * 32 + 16 * 10 + 16 * 4), abs=0.01)
    assert sum(layer["macs_share"] for layer in out["layers"] if len(layer["modules"]) == 1) == pytest.approx(1, abs=0.01)
    assert "hidden (+" in describe_sensitivity(out)
    # keeping them wider would take nearly every MAC: over WIDER_MACS_MOST, nothing is kept
    wider = layer_sensitivity(calibrated, batches, reference, aim_db=20.0)["keep_wider"]
    assert wider["modules"] == [] and not wider["reached"]
    assert "keep_wider" not in layer_sensitivity(calibrated, batches, reference, aim_db=3.0), "full int8 already reaches the aim"
    alone = layer_sensitivity(calibrated, batches, reference, method="alone")
    assert alone["layers"][0]["module"] in ("head", "aux") and alone["layers"][0]["cost_db"] < 15, alone["layers"]
