"""Defects planted in an int8 OpenVINO IR, the planters this target hands to edgex's conformance
kit (``check_target_conformance(..., planters=PLANTERS)``): parity must fail on each.

NNCF's IR stores a weight as int8 constants times a per-channel scale (a Multiply named
``.../fq_weights_N``), and an activation as a per-tensor FakeQuantize. Each planter copies the IR
(``.xml`` + ``.bin``) into ``folder`` with one value changed and returns the copy's ``.xml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from edgex_openvino.plugin import _openvino, fake_quantizes, op_module


def _planted(artifact: Path, folder: Path, edit: Callable[[Any, Any], None]) -> Path:
    ov = _openvino()
    model = ov.Core().read_model(str(artifact))
    edit(ov, model)
    planted = Path(folder) / Path(artifact).name
    ov.save_model(model, str(planted), compress_to_fp16=False)
    return planted


def _replace_constant(ov: Any, node: Any, values: Any) -> None:
    node.output(0).replace(ov.opset13.constant(values).output(0))


def scale_channel(artifact: Path, folder: Path, factor: float = 1.5, channel: int = 0) -> Path:
    """Output channel ``channel`` of the last weight layer computes ``factor`` x: its weight
    scale is written ``factor`` x (the bias is left alone)."""

    def edit(ov: Any, model: Any) -> None:
        decompressions = [op for op in model.get_ordered_ops() if op.get_type_name() == "Multiply" and "fq_weights" in op.get_friendly_name()]
        if not decompressions:
            raise ValueError(f"{artifact}: no int8 weight (NNCF's fq_weights Multiply) to plant a channel defect in")
        scale = decompressions[-1].input_value(1).get_node()
        values = scale.get_data().copy()
        values[channel] *= factor
        _replace_constant(ov, scale, values)

    return _planted(artifact, folder, edit)


def scale_output(artifact: Path, folder: Path, factor: float = 4.0) -> Path:
    """The last quantizer's output range written ``factor`` x while its integer grid stays: what
    reaches the output is ``factor`` x (NNCF leaves the model output itself float, so the scale
    nearest to it is the last FakeQuantize's)."""

    def edit(ov: Any, model: Any) -> None:
        quantizers = fake_quantizes(model)
        if not quantizers:
            raise ValueError(f"{artifact}: no FakeQuantize to coarsen")
        last = quantizers[-1]
        for index in (3, 4):  # output_low, output_high
            bound = last.input_value(index).get_node()
            _replace_constant(ov, bound, bound.get_data() * factor)

    return _planted(artifact, folder, edit)


def scale_float_channel(artifact: Path, folder: Path, module: str, factor: float = 1.5, channel: int = 0) -> Path:
    """Output channel ``channel`` of a layer a mixed-precision IR keeps float (the MatMul or
    Convolution of torch module ``module``, on float weights) computes ``factor`` x: its float
    weights for that channel written ``factor`` x (the bias left alone)."""

    def edit(ov: Any, model: Any) -> None:
        for op in model.get_ordered_ops():
            if op.get_type_name() not in ("MatMul", "Convolution") or op_module(op, {}) != module:
                continue
            weight = op.input_value(1).get_node()
            if weight.get_type_name() != "Constant" or weight.get_output_element_type(0) != ov.Type.f32:
                raise ValueError(f"{artifact}: {module}'s {op.get_type_name()} reads no float32 constant weight (is it kept float?)")
            values = weight.get_data().copy()
            # a MatMul from torch's linear reads W [out, in] transposed; else [in, out]; a Convolution [out, in, ...]
            axis = 1 if op.get_type_name() == "MatMul" and not op.get_attributes().get("transpose_b", False) else 0
            index = [slice(None)] * values.ndim
            index[axis] = channel
            values[tuple(index)] *= factor
            _replace_constant(ov, weight, values)
            return
        raise ValueError(f"{artifact}: no MatMul or Convolution of {module} to plant a float weight defect in")

    return _planted(artifact, folder, edit)


#: for ``check_target_conformance(..., planters=PLANTERS)``
PLANTERS = {"scale_channel": scale_channel, "scale_output": scale_output}
