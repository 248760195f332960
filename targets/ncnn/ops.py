"""``edgex check`` for ncnn, judged by measurement: pnnx ships no table of the torch ops it converts
to ncnn layers (its binary embeds all of libtorch's op names), so the data is what was seen.

- ``CONVERTS``: the ATen operators (``torch.export`` names) of every model measured converting
  and passing parity on ncnn at fp32 and fp16 (the shipped zoo and digits,
  ``benchmarks/ncnn_target.py --ops``, pnnx 20261020, ncnn 1.0.20261020);
- ``LACKS``: operators measured to leave a layer ncnn has no implementation for;
- anything else is ``unknown``: the conversion decides (pnnx keeps an op it cannot convert as a
  layer named after it, and edgex convert then names that layer).
"""

from __future__ import annotations

from edgex.plugins import ModelOperators, OperatorCheck, OperatorFinding, package_version

CONVERTS = frozenset({
    "aten.adaptive_avg_pool2d", "aten.add", "aten.batch_norm", "aten.contiguous", "aten.conv2d", "aten.dropout",
    "aten.flatten", "aten.hardtanh", "aten.layer_norm", "aten.linear", "aten.lstm", "aten.max_pool2d", "aten.mean",
    "aten.permute", "aten.relu", "aten.reshape", "aten.scaled_dot_product_attention", "aten.select", "aten.squeeze",
    "aten.transpose", "aten.unflatten", "aten.unsqueeze", "aten.view", "aten.zeros",
})

#: operator -> what was measured
LACKS = {
    "aten.erfinv": "pnnx keeps it as a layer aten::erfinv, which ncnn has no implementation of",
    "aten.special_erfinv": "pnnx keeps it as a layer aten::erfinv, which ncnn has no implementation of",
}


def check_operators(operators: ModelOperators) -> OperatorCheck:
    if operators.kind != "torch":
        return OperatorCheck(source="ncnn converts torch models only (pnnx traces them)")
    findings = [
        OperatorFinding(op.name, LACKS[op.name], fix="write it from operators ncnn has, or choose another target", modules=op.modules)
        for op in operators.operators if op.name in LACKS
    ]
    unknown = tuple(op.name for op in operators.operators if op.name not in CONVERTS and op.name not in LACKS)
    return OperatorCheck(
        tuple(findings),
        f"operators measured converting on pnnx {package_version('pnnx') or '?'} -> ncnn {package_version('ncnn') or '?'} "
        "(the zoo and digits at fp32 and fp16) and measured failing",
        unknown,
        ("pnnx publishes no op table: an operator outside the measured set is unknown until edgex convert tries it",),
    )
