"""Mixed precision on target ``executorch`` (docs/mixed_precision.md): the layers full int8 cannot
carry, chosen in edgex's simulation, are left out of the XNNPACK quantizer, so the .pte runs them
as float32 ops on float32 weights; the .pte's stamp records them, so that ``edgex validate``
simulates them kept too. tests/test_mixed_precision.py covers the choice itself and the LiteRT
targets; the openvino plugin's tests cover openvino.

OffsetAttention (tests/models.py) is converted once with mixed precision (auto) and once with
``mixed_precision="off"`` (module fixtures)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("executorch")
pytest.importorskip("torchao")

import defects  # noqa: E402  tests/defects.py, loaded by tests/conftest.py
from edgex.core import api  # noqa: E402
from edgex.core.quant_reference import MIXED_PRECISION_BELOW_DB  # noqa: E402
from edgex.targets.executorch import describe_pte  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import models  # noqa: E402  (tests/models.py: the shared test models)

pytestmark = pytest.mark.slow

#: what edgex keeps float of OffsetAttention at XNNPACK's scheme (8-bit weights, as its simulation's
#: default): the output projection, which reads the offset values, and the block's own ops (the
#: residual add it feeds)
#: the kept layer with weights, where the defect is planted
KEPT_LINEAR = "blocks.1.attn.proj"


def _data(n: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32)


def _convert(out: Path, **kwargs):
    model, example = models.offset_attention()
    data = dict(example_inputs=example, calibration=_data(), samples=16)
    row = api.convert(model, ["executorch"], precision="int8", out=out, **data, **kwargs).targets["executorch"]
    return model, data, row, (out / row.artifacts[0] if row.artifacts else None)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """(model, data, row, .pte) of the int8 conversion with mixed precision (auto, the default)."""
    return _convert(tmp_path_factory.mktemp("pte-mixed"))


def _linears(model) -> dict[str, np.ndarray]:
    """Each Linear's float weight [out, in], as XNNPACK stores a float one, by module path."""
    import torch

    return {name: m.weight.detach().numpy().astype(np.float32) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def test_the_chosen_layers_are_kept_float_and_the_pte_passes(mixed):
    model, _, row, pte = mixed
    assert row.status == "passed", row.messages
    chosen = row.details["mixed_precision"]
    kept_modules = chosen["modules"]
    assert KEPT_LINEAR in kept_modules and chosen["as"] == "float" and chosen["chosen_by"] == "auto", chosen
    assert chosen["sqnr_before_db"] < MIXED_PRECISION_BELOW_DB <= chosen["sqnr_db"]
    assert "kept float" in row.details["int8_reference"]["description"], "the verdict's simulation keeps them too"
    assert row.parity.sqnr_db >= chosen["simulated_db"] - 3, "the .pte lands within 3 dB of its simulation"
    # the .pte says what it kept (the stamp validate reads back), and the converter what it left out
    assert describe_pte(pte, api.load_model(model, example_inputs=mixed[1]["example_inputs"])).quantization["kept_wider"] == {"modules": kept_modules, "as": "float"}
    kept = row.details["executorch"]["kept_float"]
    assert kept["modules"] == kept_modules and kept["float_weight_ops"] == [KEPT_LINEAR] and kept["float_ops"].get("linear") == 1, kept
    assert any(m.startswith("kept float (not annotated by the XNNPACK quantizer") for m in row.messages), row.messages
    # really float in the file: the kept Linear's float32 weights are there, every other Linear's are int8
    stored = {name: defects._pte_precision(pte, weight) for name, weight in _linears(model).items()}
    assert stored == {name: "fp32" if name in kept_modules else "int8" for name in stored}, stored


def test_a_defect_planted_in_a_kept_float_layer_is_caught(mixed, tmp_path):
    """The kept Linear's float32 weights, output channel 0 x 1.5, patched in the .pte's bytes; the
    honest .pte passes validate, which reads the kept layers back from its stamp."""
    model, data, _, pte = mixed
    planted = defects.pte_scale_weight(pte, tmp_path / "planted.pte", _linears(model)[KEPT_LINEAR], channel=0, factor=1.5)
    caught = api.validate(planted.path, model, target="executorch", precision="int8", out=tmp_path / "planted", **data).targets["executorch"]
    assert caught.status == "failed", caught.messages
    honest = api.validate(pte, model, target="executorch", precision="int8", out=tmp_path / "honest", **data).targets["executorch"]
    assert honest.status == "passed", honest.messages
    assert KEPT_LINEAR in honest.details["mixed_precision"]["modules"] and "kept float" in honest.details["int8_reference"]["description"]


def test_only_the_kept_modules_own_ops_are_left_out_and_a_module_the_model_lacks_is_refused():
    """``WiderLayers.holds`` reads an op's innermost module: keeping ``blocks.1`` keeps its own ops
    (the residual adds, the relu), not its submodules' Linears."""
    import torch

    from edgex.plugins import UsageError, WiderLayers
    from edgex.targets.executorch import _kept_float, held

    model, example = models.offset_attention()
    graph = torch.export.export(model, example).graph
    layers = WiderLayers(("blocks.1",), "float", "user")
    assert sorted(str(n.target) for n in graph.nodes if n.op == "call_function" and held(n, layers)) == ["aten.add.Tensor", "aten.add.Tensor", "aten.relu.default"]
    assert _kept_float(graph, layers)["float_ops"] == {"add": 2, "relu": 1}
    with pytest.raises(UsageError, match="no op of the model belongs to blocks.7"):
        _kept_float(graph, WiderLayers(("blocks.7",), "float", "user"))
