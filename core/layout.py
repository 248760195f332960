"""Moving tensors between the reference model's form and an artifact's form.

An artifact may store a tensor transposed (NHWC instead of NCHW) and quantized (int8 with a
scale and zero point). Core applies both on the way in and undoes both on the way out, so every
target is compared the same way.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

from edgex.core.errors import TargetError
from edgex.core.types import ArtifactIO, QuantParams, TensorBinding

_INT_RANGES = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "int32": (-(2**31), 2**31 - 1)}

#: reference layout -> artifact layout permutations edgex recognises by name
_NAMED_PERMS = {
    (0, 2, 3, 1): ("NCHW", "NHWC"),
    (0, 2, 1): ("NCW", "NWC"),
    (0, 2, 3, 4, 1): ("NCDHW", "NDHWC"),
}


def layout_name(rank: int, perm: Sequence[int] | None) -> str | None:
    """"NCHW"/"NHWC"-style name of a 3-5 D tensor's layout in the artifact, ``None`` if unknown."""
    if perm is None or tuple(perm) == tuple(range(rank)):
        return {3: "NCW", 4: "NCHW", 5: "NCDHW"}.get(rank)
    names = _NAMED_PERMS.get(tuple(perm))
    return names[1] if names else "permuted" + str(tuple(perm))


def infer_permutation(reference_shape: Sequence[int], artifact_shape: Sequence[int]) -> tuple[int, ...] | None:
    """The permutation that turns the reference shape into the artifact's, or ``None``.

    Identity wins when the shapes are equal; otherwise the channels-last permutations are tried
    (a converter that moved channels last is by far the common case). Ambiguous shapes such as
    (1, 3, 3, 3) resolve to identity: the artifact's own metadata must say otherwise.
    """
    ref, art = tuple(int(d) for d in reference_shape), tuple(int(d) for d in artifact_shape)
    if len(ref) != len(art):
        return None
    if ref == art:
        return tuple(range(len(ref)))
    for perm in _NAMED_PERMS:
        if len(perm) == len(ref) and tuple(ref[i] for i in perm) == art:
            return perm
    return None


def match_names(reference_names: Sequence[str], names: Sequence[str], numbered_prefix: str | None = None) -> list[int] | None:
    """For each reference name, the position in ``names`` of the tensor it corresponds to.

    By name when both hold the same names; else, with ``numbered_prefix``, by the number of
    ``<prefix>_N`` names (a converter's ``args_0``, ``output_1``...); else by position. ``None``
    when the counts differ: each caller words that error for its own users.
    """
    names = list(names)
    if len(names) != len(reference_names):
        return None
    if sorted(names) == sorted(reference_names):
        return [names.index(n) for n in reference_names]
    if numbered_prefix is not None:
        numbered = {}
        for position, name in enumerate(names):
            match = re.fullmatch(rf"{re.escape(numbered_prefix)}_(\d+)", name)
            if match:
                numbered[int(match.group(1))] = position
        if sorted(numbered) == list(range(len(names))):
            return [numbered[i] for i in range(len(names))]
    return list(range(len(names)))


def match_outputs(reference_names: Sequence[str], io: ArtifactIO) -> list[int]:
    """For each reference output, the index of the artifact output it corresponds to."""
    order = match_names(reference_names, [b.name for b in io.outputs])
    if order is None:
        raise TargetError(f"the artifact has {len(io.outputs)} outputs but the reference model has {len(reference_names)}")
    return order


def quantize(x: np.ndarray, quant: QuantParams) -> np.ndarray:
    """Real values to integers the way TFLite and ONNX do (round half away from zero, clamp)."""
    lo, hi = _INT_RANGES[quant.dtype]
    scaled = x.astype(np.float64) / quant.scale
    rounded = np.sign(scaled) * np.floor(np.abs(scaled) + 0.5)
    return np.clip(rounded + quant.zero_point, lo, hi).astype(quant.dtype)


def dequantize(q: np.ndarray, quant: QuantParams) -> np.ndarray:
    return ((q.astype(np.float64) - quant.zero_point) * quant.scale).astype(np.float32)


def to_artifact(x: np.ndarray, binding: TensorBinding) -> np.ndarray:
    """A reference input as the artifact takes it: permuted, then quantized or cast."""
    if binding.perm is not None:
        x = np.transpose(x, binding.perm)
    if binding.quant is not None and binding.dtype in _INT_RANGES:
        return quantize(x, binding.quant)
    return np.ascontiguousarray(x.astype(binding.dtype, copy=False))


def from_artifact(y: np.ndarray, binding: TensorBinding) -> np.ndarray:
    """An artifact output in the reference form: dequantized, then permuted back, as float32."""
    y = np.asarray(y)
    integer = np.issubdtype(y.dtype, np.integer)
    y = dequantize(y, binding.quant) if binding.quant is not None and integer else y.astype(np.float32)
    if binding.perm is not None:
        y = np.transpose(y, np.argsort(binding.perm))
    return y
