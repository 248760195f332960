"""The Python API: one function per command, for notebooks and training scripts.

>>> import torch, edgex.core as edgex
>>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
>>> report = edgex.convert(model, example_inputs=(torch.randn(1, 3, 32, 32),), targets=["onnx"], out="out")
>>> report.targets["onnx"].status
'passed'

Functions return typed reports (:class:`Report`, :class:`TargetReport`, :class:`ParityReport`)
whose ``to_json()`` is exactly report.json. Errors are :class:`edgex.core.errors.EdgexError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from edgex.core import pipeline
from edgex.core.cache import ResultCache
from edgex.core.compression import CompressionStep
from edgex.core.explain import DEFAULT_SAMPLES, ExplainReport
from edgex.core.explain import explain as _explain
from edgex.core.loading import load_model as _load_model
from edgex.core.parity import ParityReport
from edgex.core.plugin_manager import PluginManager, make_manager
from edgex.core.settings import ConvertSettings, make_settings
from edgex.core.supervisor import time_limit
from edgex.core.report import Report, TargetReport
from edgex.core.types import ReferenceModel

if TYPE_CHECKING:
    from edgex.core.check import CheckReport

__all__ = ["convert", "check", "validate", "explain", "compress", "load_model", "plugin_manager", "ConvertSettings", "CompressionStep", "Report", "TargetReport", "ParityReport", "ExplainReport"]


def plugin_manager(observers: Iterable[Any] = ()) -> PluginManager:
    """The installed plugins (built-ins and the ``edgex`` entry-point group), plus ``observers``."""
    return make_manager(observers)


def load_model(
    model: Any,
    *,
    example_inputs: Any = None,
    input_shapes: Sequence[Sequence[int]] | None = None,
    weights: str | Path | None = None,
    trust_pickle: bool = False,
) -> ReferenceModel:
    """A MODEL spec string (see docs/contract.md) or an in-memory ``nn.Module`` as a :class:`ReferenceModel`."""
    if isinstance(model, ReferenceModel):
        return model
    shapes = [tuple(int(d) for d in s) for s in input_shapes] if input_shapes else None
    if isinstance(model, (str, Path)):
        return _load_model(str(model), input_shapes=shapes, example_inputs=example_inputs, weights=Path(weights) if weights else None, trust_pickle=trust_pickle)
    name = type(model).__name__
    return _load_model(f"<in-memory {name}>", module=model, input_shapes=shapes, example_inputs=example_inputs)


def _loaded(model: Any, settings: ConvertSettings, **how: Any) -> ReferenceModel:
    """:func:`load_model` within the run's time limit (``settings.timeout_s`` covers loading too)."""
    with time_limit(settings.timeout_s, "load", f"loading the model {model if isinstance(model, (str, Path)) else type(model).__name__}"):
        return load_model(model, **how)


def convert(
    model: Any,
    targets: Sequence[str] = ("onnx",),
    *,
    out: str | Path = "edgex-out",
    example_inputs: Any = None,
    input_shapes: Sequence[Sequence[int]] | None = None,
    precision: str | None = None,
    calibration: Any = None,
    eval_data: Any = None,
    samples: int | None = None,
    seed: int | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    options: Mapping[str, Any] | None = None,
    compression: Sequence[CompressionStep] | Mapping[str, Any] | None = None,
    distill_data: Any = None,
    rewrite: str | None = None,
    mixed_precision: str | None = None,
    keep_wider: Sequence[str] | None = None,
    settings: ConvertSettings | None = None,
    plugins: PluginManager | None = None,
    overwrite: bool = False,
    cache: str | Path | None = None,
) -> Report:
    """Compress (optionally), convert to ``targets`` and validate each on its own runtime.

    ``model`` is a MODEL spec or an ``nn.Module`` (then give ``example_inputs``). Writes
    artifacts and report.json under ``out`` and returns the :class:`Report`. ``out`` must be
    new, empty, or hold this model's earlier results (``overwrite=True`` to use it anyway). ``compression``
    takes steps or option values, as :func:`compress` does; the compressed model is then the
    reference every artifact is judged against. ``rewrite`` is ``"auto"`` (default: what a target
    lacks is rewritten before converting, every rewrite proven by parity first; docs/rewrites.md)
    or ``"none"``. ``mixed_precision`` is ``"auto"`` (default: an int8 artifact keeps the fewest
    sensitive layers wider where full int8 misses its floor in edgex's simulation) or ``"off"``;
    ``keep_wider`` names the torch modules to keep wider instead (docs/mixed_precision.md). With ``cache`` (a folder), a target whose result is cached for exactly this
    model, data, settings and versions is served from it (docs/cache.md).
    """
    if isinstance(compression, Mapping):
        from edgex.core.compression.options import steps_from_options

        compression = steps_from_options(compression)
    resolved = make_settings(
        settings,
        **{
            "targets": tuple(targets),
            "precision": precision,
            "calibration": calibration,
            "eval_data": eval_data,
            "samples": samples,
            "seed": seed,
            "atol": atol,
            "rtol": rtol,
            "options": dict(options) if options else None,
            "compression": tuple(compression) if compression else None,
            "distill_data": distill_data,
            "rewrite": rewrite,
            "mixed_precision": mixed_precision,
            "keep_wider": tuple(keep_wider) if keep_wider else None,
        },
    )
    reference = _loaded(model, resolved, example_inputs=example_inputs, input_shapes=input_shapes)
    result_cache = ResultCache(Path(cache)) if cache is not None else None
    return pipeline.convert(plugins or plugin_manager(), reference, resolved, Path(out), overwrite=overwrite, cache=result_cache)


def check(
    model: Any,
    targets: Sequence[str] = ("all",),
    *,
    example_inputs: Any = None,
    input_shapes: Sequence[Sequence[int]] | None = None,
    precision: str | None = None,
    samples: int = 4,
    seed: int | None = None,
    rewrite: str | None = None,
    plugins: PluginManager | None = None,
) -> "CheckReport":
    """Predict, without converting, what :func:`convert` would report per target: the model's
    operators, what each target lacks or restricts, the rewrites it would apply (each proven on
    ``samples`` inputs) and the outcome -- ``converts``, ``error`` or ``unknown`` (docs/check.md)."""
    from edgex.core.check import check as _check

    reference = load_model(model, example_inputs=example_inputs, input_shapes=input_shapes)
    settings = make_settings(targets=tuple(targets), precision=precision, samples=samples, seed=seed, rewrite=rewrite)
    return _check(plugins or plugin_manager(), reference, settings)


def validate(
    artifact: str | Path,
    reference: Any,
    *,
    target: str | None = None,
    out: str | Path = "edgex-out",
    example_inputs: Any = None,
    input_shapes: Sequence[Sequence[int]] | None = None,
    precision: str | None = None,
    calibration: Any = None,
    eval_data: Any = None,
    samples: int | None = None,
    seed: int | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    settings: ConvertSettings | None = None,
    plugins: PluginManager | None = None,
    overwrite: bool = False,
) -> Report:
    """Check an existing artifact against ``reference`` on the artifact's own runtime.

    ``calibration`` is the data an int8 artifact was quantized with: edgex's own simulated int8
    reference is calibrated on it (else on the model's shipped data, else on ``example_inputs``).
    """
    resolved = make_settings(settings, precision=precision, calibration=calibration, eval_data=eval_data, samples=samples, seed=seed, atol=atol, rtol=rtol)
    model = _loaded(reference, resolved, example_inputs=example_inputs, input_shapes=input_shapes)
    return pipeline.validate(plugins or plugin_manager(), Path(artifact), model, resolved, Path(out), target=target, overwrite=overwrite)


def explain(
    artifact: str | Path,
    reference: Any,
    *,
    target: str | None = None,
    out: str | Path = "edgex-out",
    example_inputs: Any = None,
    input_shapes: Sequence[Sequence[int]] | None = None,
    precision: str | None = None,
    calibration: Any = None,
    samples: int | None = None,
    seed: int | None = None,
    atol: float | None = None,
    rtol: float | None = None,
    settings: ConvertSettings | None = None,
    plugins: PluginManager | None = None,
    overwrite: bool = False,
) -> ExplainReport:
    """Find the layer where ``artifact`` parts ways with the torch ``reference``; writes
    ``out/explain.json`` and returns the :class:`ExplainReport` (its ``to_json()`` is explain.json).

    ``samples`` defaults to 8 (every intermediate tensor of each comes back); ``atol``/``rtol``
    replace the outputs' tolerance only, each layer keeps its own. ``calibration``: what an int8
    artifact was quantized with; the per-layer int8 sensitivity is measured on edgex's simulation
    calibrated on it.
    """
    model = load_model(reference, example_inputs=example_inputs, input_shapes=input_shapes)
    resolved = make_settings(settings or ConvertSettings(samples=DEFAULT_SAMPLES), precision=precision, calibration=calibration, samples=samples, seed=seed, atol=atol, rtol=rtol)
    return _explain(plugins or plugin_manager(), Path(artifact), model, resolved, Path(out), target=target, overwrite=overwrite)


def compress(
    model: Any,
    steps: Sequence[CompressionStep] | Mapping[str, Any],
    *,
    out: str | Path | None = None,
    example_inputs: Any = None,
    input_shapes: Sequence[Sequence[int]] | None = None,
    calibration: Any = None,
    distill_data: Any = None,
    eval_data: Any = None,
    seed: int = 0,
    plugins: PluginManager | None = None,
) -> tuple[ReferenceModel, dict[str, Any]]:
    """Apply compression ``steps``; returns the compressed reference and the summary (the
    ``compression`` section of report.json). With ``out`` (a ``.pt2`` path), also saves it.

    ``steps`` are :class:`CompressionStep` s or the command line's options as a mapping, e.g.
    ``{"prune": 0.5, "prune_method": "l1-structured", "distill": True}``. ``distill_data`` is a
    path (.npy, or .npz with x and optional labels y), an array, or ``{"x": ..., "y": ...}``.
    """
    from edgex.core.compression import save_program
    from edgex.core.compression.options import steps_from_options

    if isinstance(steps, Mapping):
        steps = steps_from_options(steps)
    reference = load_model(model, example_inputs=example_inputs, input_shapes=input_shapes)
    settings = make_settings(compression=tuple(steps), calibration=calibration, distill_data=distill_data, eval_data=eval_data, seed=seed)
    compressed, summary = pipeline.compress(plugins or plugin_manager(), reference, settings)
    if out is not None:
        save_program(compressed, Path(out))
    return compressed, summary
