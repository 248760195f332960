"""What a run was asked to do: :class:`ConvertSettings`, shared by ``edgex convert``,
``validate``, ``explain``, ``compress`` and the matrix cells, and built in one place
(:func:`make_settings`) whoever asks: the command line, the Python API or a matrix config."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from edgex.core.errors import UsageError
from edgex.core.types import PRECISIONS

#: ``--rewrite``: "auto" rewrites what each target lacks (every rewrite proven first), "none" nothing
REWRITE_MODES = ("auto", "none")
#: ``--mixed-precision``: auto (default for int8) or off
MIXED_PRECISION_MODES = ("auto", "off")


@dataclass(frozen=True)
class ConvertSettings:
    """Options shared by ``edgex convert`` and ``edgex validate`` (and the matrix cells)."""

    targets: tuple[str, ...] = ("onnx",)
    #: None: each target's default precision; else one of ``PRECISIONS``
    precision: str | None = None
    samples: int = 32
    seed: int = 0
    #: a sample set or a path (.npy/.npz/image folder); None: the model's own, if it ships one
    calibration: Any = None
    #: parity inputs (a sample set or a path); None: calibration samples, else seeded random
    parity_inputs: Any = None
    #: labelled data for task accuracy ((samples, labels) or an .npz path with x, y)
    eval_data: Any = None
    atol: float | None = None
    rtol: float | None = None
    #: target options by option name (``--opset 17`` -> {"opset": 17})
    options: Mapping[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None
    #: compression steps (``edgex.core.compression.CompressionStep``) applied before converting
    compression: tuple[Any, ...] = ()
    #: for recovery: unlabelled (or labelled .npz) data; None: the calibration data
    distill_data: Any = None
    #: with labelled data, a pass also needs the artifact's accuracy within this many points of the reference's
    max_accuracy_drop: float = 0.5
    #: ... and its top-1 class agreeing with the reference's on at least this share of the labelled samples
    min_top1_agreement: float = 0.99
    #: one of ``REWRITE_MODES``: the rewrites of ``edgex.core.rewrites`` applied before converting
    rewrite: str = "auto"
    #: ``--mixed-precision``: ``auto`` keeps the fewest sensitive layers of an int8 artifact wider
    #: where full int8 misses its floor in edgex's simulation (docs/mixed_precision.md); ``off`` never
    mixed_precision: str = "auto"
    #: ``--keep-wider MODULE``: torch modules (with their submodules) every int8 artifact keeps
    #: wider, chosen by the user (replaces ``auto``'s choice)
    keep_wider: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # checked when built, whoever builds them: a bad value is a usage error before any work
        if self.precision == "none":  # the command line's name for "no quantization"
            object.__setattr__(self, "precision", "fp32")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise UsageError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        if self.samples < 1:
            raise UsageError("--samples must be at least 1")
        if self.max_accuracy_drop < 0:
            raise UsageError(f"--max-accuracy-drop {self.max_accuracy_drop:g} must be 0 or more (points of accuracy)")
        if self.rewrite not in REWRITE_MODES:
            raise UsageError(f"--rewrite {self.rewrite!r}: choose one of {', '.join(REWRITE_MODES)}")
        if self.mixed_precision not in MIXED_PRECISION_MODES:
            raise UsageError(f"--mixed-precision {self.mixed_precision!r}: choose one of {', '.join(MIXED_PRECISION_MODES)}")
        if any(not isinstance(m, str) or not m or m != m.strip(".") for m in self.keep_wider):
            raise UsageError(f"--keep-wider takes torch module names as the model names them (e.g. blocks.0.attn), not {', '.join(map(repr, self.keep_wider))}")
        if not 0.0 <= self.min_top1_agreement <= 1.0:
            raise UsageError(f"--min-top1-agreement {self.min_top1_agreement:g} must lie between 0 and 1")


def make_settings(base: ConvertSettings | None = None, **values: Any) -> ConvertSettings:
    """``base`` (default settings when None) with ``values`` set; a value of None keeps the base's."""
    return replace(base or ConvertSettings(), **{k: v for k, v in values.items() if v is not None})
