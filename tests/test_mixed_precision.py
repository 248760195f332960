"""Mixed precision (issue 29): the layers full int8 cannot carry, chosen in edgex's simulation and
kept wider by the LiteRT targets (float on tflite and coral, int16 or float on mcu), judged
against a simulation that keeps them too. docs/mixed_precision.md."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import defects
from edgex.core import api
from edgex.core.errors import UsageError
from edgex.core.parity import output_error
from edgex.core.quant_reference import MIXED_PRECISION_AIM_DB, MIXED_PRECISION_BELOW_DB, WIDER_MACS_MOST, LayerSimulation, calibrate, choose_wider, simulate

sys.path.insert(0, str(Path(__file__).parent))
import models  # noqa: E402  (tests/models.py: the shared test models)

#: the layer edgex keeps for OffsetAttention: the output projection, which reads the offset
#: values (with, on some data, the attention's own ops and another projection)
KEPT = "blocks.1.attn.proj"


def _data(shape=(3, 16, 16), n=32, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def _simulated(model, example, calibration, batches):
    calibrated = calibrate(model, (example.numpy(),), [(x[None],) for x in calibration])
    with torch.no_grad():
        reference = [[model(torch.from_numpy(b[None])).numpy()] for b in batches]
    full = simulate(model, (example.numpy(),), (), [(b[None],) for b in batches], calibrated=calibrated)
    return calibrated, reference, min(output_error(reference, full.outputs, i)[1] for i in range(1))


# --------------------------------------------------------------------------- the choice, in simulation


def test_the_fewest_layers_that_carry_the_model_are_chosen_and_a_kept_layers_boundary_stays_int8():
    model, (example,) = models.offset_attention()
    batches = _data(n=8, seed=1)
    calibrated, reference, full = _simulated(model, example, _data(), batches)
    assert full < MIXED_PRECISION_BELOW_DB, "full int8 cannot carry the offset values"
    batched = [(b[None],) for b in batches[:4]]
    choice = choose_wider(calibrated, batched, reference[:4], full)
    assert KEPT in choice["modules"] and len(choice["modules"]) <= 3 and choice["chosen_by"] == "auto", choice
    assert choice["macs_share"] <= WIDER_MACS_MOST and choice["sqnr_db"] >= MIXED_PRECISION_AIM_DB
    kept = simulate(model, (example.numpy(),), (), [(b[None],) for b in batches], calibrated=calibrated, kept_wider=choice["modules"])
    assert min(output_error(reference, kept.outputs, i)[1] for i in range(1)) > full + 6
    assert "blocks.1.attn.proj" in kept.describe() and "kept float" in kept.describe()
    # the honest boundary: the projection kept float alone still reads the attention's int8 output
    # (a converter quantizes that edge), which the old "module float" simulation left float
    simulation = LayerSimulation(calibrated, batched, reference[:4])
    alone = simulation.sqnr(["blocks.1.attn.proj"])
    assert alone < simulation.sqnr(["blocks.1.attn.proj", "blocks.1.attn"]) - 3


def test_no_layer_is_kept_where_full_int8_meets_its_floor_and_the_users_modules_are_measured():
    model, (example,) = models.offset_attention(offset=0.0)
    batches = _data(n=4, seed=1)
    calibrated, reference, full = _simulated(model, example, _data(), batches)
    batched = [(b[None],) for b in batches]
    assert full > 20 and choose_wider(calibrated, batched, reference, full) is None
    mine = choose_wider(calibrated, batched, reference, full, modules=["blocks.1.attn"], wider_as="int16")
    assert mine["chosen_by"] == "user" and sorted(mine["modules"]) == ["blocks.1.attn", "blocks.1.attn.key", "blocks.1.attn.proj", "blocks.1.attn.query", "blocks.1.attn.value"]
    with pytest.raises(UsageError, match="no such torch module"):
        choose_wider(calibrated, batched, reference, full, modules=["blocks.7"])


# --------------------------------------------------------------------------- LiteRT: tflite, coral, mcu


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """OffsetAttention converted for tflite (int8), coral and mcu in one run: mixed precision auto."""
    out = tmp_path_factory.mktemp("mixed")
    model, example = models.offset_attention()
    data = dict(example_inputs=example, calibration=_data(), samples=16)
    return out, model, data, api.convert(model, ["tflite", "coral", "mcu"], precision="int8", out=out / "run", **data)


@pytest.mark.slow
def test_litert_targets_keep_the_chosen_layers_wider_and_pass(mixed):
    out, _, _, report = mixed
    for target in ("tflite", "coral", "mcu"):
        row = report.targets[target]
        assert row.status == "passed", (target, row.messages)
        chosen = row.details["mixed_precision"]
        assert KEPT in chosen["modules"] and chosen["as"] == "float" and chosen["chosen_by"] == "auto", chosen
        assert chosen["sqnr_before_db"] < MIXED_PRECISION_BELOW_DB <= chosen["sqnr_db"] and chosen["macs_share"] <= WIDER_MACS_MOST
        assert row.details["int8_checks"]["kept_wider"]["operators"] >= 2, "the kept ops are float in the file"
        assert "kept float" in row.details["int8_reference"]["description"], "the verdict's simulation keeps them too"
        assert row.parity.sqnr_db >= chosen["simulated_db"] - 3, "the artifact lands within 3 dB of its simulation"
        assert "int8_recipe" not in row.details, "full int8 was ruled out by the simulation: no recipe search"
    coral = report.targets["coral"]
    reasons = [op["reason"] for op in coral.details["edgetpu"]["ops"] if not op["supported"]]
    assert any("a layer kept float by mixed precision) runs on the CPU" in r for r in reasons), reasons


@pytest.mark.slow
def test_a_defect_planted_in_a_kept_float_layer_is_caught(mixed, tmp_path):
    out, model, data, report = mixed
    artifact = out / "run" / next(a for a in report.targets["tflite"].artifacts if a.endswith(".tflite"))

    def scale_kept_weights(model_t, subgraph, opnames):
        floats = [op for op in subgraph.operators if opnames[op.opcodeIndex] == "FULLY_CONNECTED" and int(subgraph.tensors[op.inputs[1]].type) == 0]
        weight = subgraph.tensors[floats[-1].inputs[1]]
        values = defects._tflite_floats(model_t, weight)
        values[0] *= 1.5
        defects._tflite_store(model_t, weight, values)
        return defects.Planted(tmp_path / "planted.tflite", "scale_channel", "float FULLY_CONNECTED of blocks.1.attn.proj", {"row": 0, "factor": 1.5})

    planted = defects._tflite_edit(artifact, tmp_path / "planted.tflite", scale_kept_weights)
    caught = api.validate(planted.path, model, target="tflite", out=tmp_path / "planted", **data).targets["tflite"]
    assert caught.status == "failed", caught.messages
    honest = api.validate(artifact, model, target="tflite", out=tmp_path / "honest", **data).targets["tflite"]
    assert honest.status == "passed" and KEPT in honest.details["mixed_precision"]["modules"], honest.messages


@pytest.mark.slow
def test_without_mixed_precision_full_int8_fails_and_no_recipe_is_searched(tmp_path):
    model, example = models.offset_attention()
    report = api.convert(model, ["tflite"], precision="int8", out=tmp_path, example_inputs=example, calibration=_data(), samples=16, mixed_precision="off")
    row = report.targets["tflite"]
    assert row.status == "failed" and "mixed_precision" not in row.details
    recipe = row.details["int8_recipe"]
    assert recipe["ruled_out_by_simulation"] and len(recipe["candidates"]) == 1, recipe["message"]
    assert any("keeping blocks" in m for m in row.messages), "the sensitivity names what mixed precision would keep"


@pytest.mark.slow
def test_the_users_layers_at_int16_on_mcu(tmp_path):
    model, example = models.offset_attention(offset=0.0)
    report = api.convert(model, ["mcu"], out=tmp_path, example_inputs=example, calibration=_data(), samples=16, keep_wider=["blocks.1.attn"])
    row = report.targets["mcu"]
    assert row.status == "passed", row.messages
    chosen = row.details["mixed_precision"]
    assert chosen["chosen_by"] == "user" and chosen["as"] == "int16" and "blocks.1.attn.proj" in chosen["modules"]
    assert row.details["int8_checks"]["kept_wider"]["operators"] >= 5
    assert "kept int16" in row.details["int8_reference"]["description"]
