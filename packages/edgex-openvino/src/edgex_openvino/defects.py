"""Defects planted in an int8 OpenVINO IR, the planters this target hands to edgex's conformance
kit (``check_target_conformance(..., planters=PLANTERS)``): parity must fail on each.

NNCF's IR stores a weight as int8 constants times a per-channel scale (a Multiply named
``.../fq_weights_N``), and an activation as a per-tensor FakeQuantize. Each planter copies the IR
(``.xml`` + ``.bin``) into ``folder`` with one value changed and returns the copy's ``.xml``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from edgex_openvino.plugin import _openvino, fake_quantizes


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


#: for ``check_target_conformance(..., planters=PLANTERS)``
PLANTERS = {"scale_channel": scale_channel, "scale_output": scale_output}
