"""``edgex explain``: which layer of an artifact parts ways with its torch reference.

The reference runs with a forward hook on every module and records each module's output; the
artifact runs on its target's tracer (the optional ``edgex_load_tracer`` hook), which returns
every intermediate tensor with the torch module paths the artifact itself records for it.
Tensors are matched to modules by those paths only -- never by value, never by position -- and
checked by shape after core undoes their layout and quantization (``edgex.core.layout``). Each
matched layer is then judged with the one parity implementation (``edgex.core.parity``) against a
tolerance scaled to that layer, exactly as outputs are: at fp32 the layer's own float64 noise
floor, at int8 the layer's own quantization step. The first matched layer outside its tolerance
is where parity is lost; the modules between it and the last layer still within tolerance are
where the defect can be. Modules the artifact does not show are listed with the reason.

Matching rules (``match_layers``), for a module M:

- M's output is a model output: it is the artifact's output, paired as parity pairs outputs.
- Otherwise the artifact tensors that name M or a submodule of M are M's; the last of them in
  the artifact's execution order is M's output. When that tensor also names a module that runs
  after M (the converter fused M into it: conv + batch norm + ReLU in one op), M has no tensor
  of its own and is reported as fused into that module.
- Modules called more than once are not matched (tensor names do not say which call they hold),
  nor are modules returning their input unchanged (Dropout, Identity in eval) and containers
  whose output is one of their submodules' (compared there).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgex.core import layout, parity
from edgex.core.data import RunInputs, resolve_inputs
from edgex.core.errors import TargetError, UsageError
from edgex.core.layout import match_outputs
from edgex.core.plugin_manager import PluginManager
from edgex.core.quant_reference import INT8_CARRIES_DB, SENSITIVITY_SAMPLES, describe_sensitivity
from edgex.core.report import model_json, write_json_atomic, write_text_atomic
from edgex.core.report_html import explain_page
from edgex.core.runner import IsolatedRun, describe_artifact, judge_outputs, observed, owned_out, resolve_artifact, sandboxed
from edgex.core.settings import ConvertSettings
from edgex.core.tables import number, table
from edgex.core.types import ArtifactIO, ArtifactTrace, ReferenceModel, TensorBinding, TracedTensor
from edgex.core.version import __version__

#: parity inputs explain uses unless told (every intermediate tensor of each comes back to core)
DEFAULT_SAMPLES = 8

#: layout permutations tried for a tensor whose tracer does not know its layout (identity first)
_CANDIDATE_PERMS = {3: ((0, 1, 2), (0, 2, 1)), 4: ((0, 1, 2, 3), (0, 2, 3, 1)), 5: ((0, 1, 2, 3, 4), (0, 2, 3, 4, 1))}


# --------------------------------------------------------------------------- the torch side


@dataclass(frozen=True)
class ModuleRun:
    """One torch module as the reference's forward ran it (on the first example input)."""

    path: str
    kind: str
    calls: int
    #: completion index of its last call: modules are ordered by when their forward returned
    finished: int
    #: shape of its (first tensor) output on the first call; None when it returned no tensor
    shape: tuple[int, ...] | None
    #: "layer" (compared), "repeated", "pass-through", "alias" or "no-tensor" (not compared)
    role: str
    #: for an alias: the submodule whose output it returns
    alias_of: str = ""
    #: the model output this layer computes, if any
    output_index: int | None = None


def _first_tensor(value: Any) -> Any:
    from edgex.core.loading import flatten_outputs

    tensors = flatten_outputs(value)[1]
    return tensors[0] if tensors else None


def module_tree(model: ReferenceModel) -> tuple[Any, dict[str, str]]:
    """The reference as modules that run as modules, and their class names where that tree lost them.

    A loaded ``torch.export`` program (``.pt2``, what ``edgex compress`` saves) is one flat graph:
    its submodules hold parameters but are never called, so no hook would fire. Unflattened, each
    runs as a module again under its original path; the class names come from the program's
    ``nn_module_stack``.
    """
    spec = Path(str(model.spec))
    if spec.suffix != ".pt2" or not spec.is_file():
        return model.module, {}
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own deprecation chatter while loading and unflattening
        program = torch.export.load(str(spec))
        tree = torch.export.unflatten(program)
    kinds = {}
    for node in program.graph.nodes:
        for path, kind in (node.meta.get("nn_module_stack") or {}).values():
            kinds[path] = str(getattr(kind, "__name__", kind)).rsplit(".", 1)[-1]
    return tree, kinds


def discover_modules(module: Any, example_inputs: Sequence[np.ndarray], kinds: Mapping[str, str] | None = None) -> list[ModuleRun]:
    """Run the reference once with hooks on every module; what each module is to explain."""
    import torch

    from edgex.core.loading import flatten_outputs

    paths = {id(m): p for p, m in module.named_modules() if p}
    calls: dict[str, int] = {}
    finished: dict[str, int] = {}
    outputs: dict[str, Any] = {}
    untouched: dict[str, list[tuple[Any, int]]] = {}
    kinds = {**{p: type(m).__name__ for p, m in module.named_modules() if p}, **(kinds or {})}

    def before(mod: Any, args: Any) -> None:
        path = paths[id(mod)]
        if path not in untouched:
            # tensor versions tell an in-place op (ReLU(inplace=True): a real layer) from a pass-through
            untouched[path] = [(a, a._version) for a in args if isinstance(a, torch.Tensor)]

    def after(mod: Any, args: Any, output: Any) -> None:
        path = paths[id(mod)]
        calls[path] = calls.get(path, 0) + 1
        finished[path] = sum(calls.values())  # one more return than before: increasing
        if calls[path] == 1:
            outputs[path] = _first_tensor(output)

    handles = []
    try:
        for mod in (m for p, m in module.named_modules() if p):
            handles.append(mod.register_forward_pre_hook(before))
            handles.append(mod.register_forward_hook(after))
        with torch.no_grad():
            result = module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in example_inputs])
    except Exception as exc:
        raise UsageError(f"cannot record the reference's layer outputs with forward hooks: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    finally:
        for handle in handles:
            handle.remove()
    model_outputs = flatten_outputs(result)[1]

    runs: list[ModuleRun] = []
    reported: dict[int, str] = {}  # id of an output object -> the last layer that returned it
    for path in sorted(finished, key=finished.get):
        out = outputs.get(path)
        shape = tuple(int(d) for d in out.shape) if out is not None else None
        role, alias_of = "layer", ""
        if calls[path] > 1:
            role = "repeated"
        elif out is None:
            role = "no-tensor"
        elif any(out is arg and out._version == version for arg, version in untouched.get(path, ())):
            role = "pass-through"
        elif id(out) in reported and reported[id(out)].startswith(path + "."):
            role, alias_of = "alias", reported[id(out)]
        if role == "layer":
            reported[id(out)] = path
        runs.append(ModuleRun(path, kinds.get(path, "?"), calls[path], finished[path], shape, role, alias_of))
    for index, tensor in enumerate(model_outputs):
        owner = reported.get(id(tensor))
        if owner is not None:
            runs = [replace(r, output_index=index) if r.path == owner else r for r in runs]
    return runs


def layer_tap(module: Any, layers: Sequence[str]) -> Any:
    """The reference as an ``nn.Module`` returning its outputs followed by each layer's output,
    so that ``parity.reference_outputs`` and ``parity.noise_floor`` measure layers as outputs."""
    import torch

    class LayerTap(torch.nn.Module):
        def __init__(self, model: Any, names: Sequence[str]):
            super().__init__()
            self.model, self.names = model, tuple(names)

        def forward(self, *args: Any) -> tuple[Any, ...]:
            from edgex.core.loading import flatten_outputs

            wanted = dict(self.model.named_modules())
            captured: dict[str, Any] = {}

            def hook(name: str) -> Any:
                def record(mod: Any, inputs: Any, output: Any) -> None:
                    # a copy: a later in-place op (ReLU(inplace=True)) must not change it
                    captured.setdefault(name, _first_tensor(output).detach().clone())

                return record

            handles = [wanted[name].register_forward_hook(hook(name)) for name in self.names]
            try:
                result = self.model(*args)
            finally:
                for handle in handles:
                    handle.remove()
            missing = [n for n in self.names if n not in captured]
            if missing:
                raise UsageError(f"layer {missing[0]!r} did not run on this input (data-dependent control flow); explain needs one path through the model")
            return (*flatten_outputs(result)[1], *(captured[n] for n in self.names))

    return LayerTap(module, layers)


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class LayerMatch:
    """Where one layer's output is in the artifact: a traced tensor or a model output."""

    source: str  # "tensor" or "output"
    index: int
    name: str
    op: str
    binding: TensorBinding
    #: the other modules the tensor names (fused into one op with this layer)
    fused: tuple[str, ...] = ()
    reshape: bool = False


def _within(path: str, scope: str) -> bool:
    return path == scope or path.startswith(scope + ".")


def _squeezed(shape: Sequence[int]) -> tuple[int, ...]:
    return tuple(int(d) for d in shape if d != 1)


def _fit(tensor_shape: tuple[int, ...], torch_shape: tuple[int, ...], perm: tuple[int, ...] | None) -> tuple[tuple[int, ...] | None, bool] | str:
    """(perm, reshape) that maps the torch shape onto the tensor's, or why none does.

    With ``perm`` None every layout of the rank is tried; two that fit (a 1x8x8x8 tensor is
    NCHW and NHWC alike) make the tensor ambiguous, never a guess. Size-1 dimensions never change
    the order of elements, so a tensor that equals the torch shape once they are dropped
    ((1, 64) for (1, 64, 1, 1)) matches by a reshape -- when its other dimensions all differ,
    so that no transposition could give the same shape.
    """
    kept = _squeezed(torch_shape)
    if len(tensor_shape) == len(torch_shape):
        options = [perm] if perm is not None else list(_CANDIDATE_PERMS.get(len(torch_shape), (tuple(range(len(torch_shape))),)))
        fitting = [p for p in options if tuple(torch_shape[i] for i in p) == tensor_shape]
        if len(fitting) == 1 or (fitting and len(kept) <= 1):
            return fitting[0], False
        if fitting:
            return f"its layout is ambiguous: shape {list(tensor_shape)} fits the torch shape {list(torch_shape)} in more than one layout"
    if _squeezed(tensor_shape) == kept and len(set(kept)) == len(kept):
        return None, True
    return f"shape {list(tensor_shape)} in the artifact, {list(torch_shape)} in torch"


def match_layers(runs: Sequence[ModuleRun], trace: ArtifactTrace, io: ArtifactIO, output_order: Sequence[int]) -> dict[str, LayerMatch | str]:
    """For every layer: its :class:`LayerMatch`, or one line saying why it has none."""
    finished = {r.path: r.finished for r in runs}
    kinds = {r.path: r.kind for r in runs}

    def claims(tensor: TracedTensor) -> list[str]:
        return [m for m in dict.fromkeys(tensor.modules) if m in finished]

    def owner(tensor: TracedTensor) -> str | None:
        """The module whose output the tensor holds: of the modules it names, the last to run."""
        named = claims(tensor)
        return max(named, key=finished.__getitem__) if named else None

    found: dict[str, LayerMatch | str] = {}
    for run in runs:
        if run.role != "layer" or run.shape is None:
            continue
        if run.output_index is not None:
            position = output_order[run.output_index]
            binding = io.outputs[position]
            raw = np.shape(trace.outputs[position])
            native = tuple(raw[i] for i in np.argsort(binding.perm)) if binding.perm is not None else tuple(raw)
            fit = _fit(tuple(native), run.shape, tuple(range(len(native))))  # the binding has undone its layout
            if isinstance(fit, str):
                found[run.path] = f"model output {binding.name!r}: {fit}"
            else:
                found[run.path] = LayerMatch("output", position, binding.name, "output", binding, reshape=fit[1])
            continue
        # names the reference lacks still say where a tensor is ("layers.0.relu_1": a second call)
        candidates = [i for i, t in enumerate(trace.tensors) if any(_within(m, run.path) for m in t.modules if m)]
        if not candidates:
            found[run.path] = "no artifact tensor is attributed to it (folded into another op, or the artifact does not name it)"
            continue
        tensor = trace.tensors[candidates[-1]]
        last = owner(tensor)
        if last is not None and not _within(last, run.path):
            found[run.path] = f"fused into {last} ({kinds.get(last, '?')}) in the artifact: no tensor of its own"
            continue
        if tensor.unreadable:
            found[run.path] = f"artifact tensor {tensor.name!r}: {tensor.unreadable}"
            continue
        fit = _fit(tuple(int(d) for d in np.shape(tensor.value)), run.shape, tensor.perm)
        if isinstance(fit, str):
            found[run.path] = f"artifact tensor {tensor.name!r}: {fit}"
            continue
        perm, reshape = fit
        value = np.asarray(tensor.value)
        binding = TensorBinding(
            tensor.name, tuple(int(d) for d in value.shape), value.dtype.name,
            layout.layout_name(value.ndim, perm), None if perm is None or perm == tuple(range(value.ndim)) else perm, tensor.quant,
        )
        fused = tuple(m for m in claims(tensor) if not _within(m, run.path))
        found[run.path] = LayerMatch("tensor", candidates[-1], tensor.name, tensor.op, binding, fused, reshape)
    return found


def _layer_value(match: LayerMatch, trace: ArtifactTrace, shape: tuple[int, ...]) -> np.ndarray:
    """A matched tensor of one sample in the torch layer's form (layout and quantization undone)."""
    if match.source == "output":
        raw = trace.outputs[match.index]
    else:
        tensor = trace.tensors[match.index]
        if tensor.name != match.name:
            raise TargetError(f"the tracer returned different tensors for different samples ({tensor.name!r} where {match.name!r} was)")
        raw = tensor.value
    value = layout.from_artifact(np.asarray(raw), match.binding)
    return value.reshape(shape) if match.reshape else value


# --------------------------------------------------------------------------- the report


@dataclass(frozen=True)
class LayerResult:
    """One torch module in the explanation: matched (with its metrics) or not (with why)."""

    module: str
    kind: str
    shape: tuple[int, ...]
    matched: bool
    reason: str = ""
    tensor: str = ""
    op: str = ""
    layout: str | None = None
    fused: tuple[str, ...] = ()
    parity: parity.ParityReport | None = None
    #: an int8 artifact: this layer's SQNR in edgex's own int8 simulation (against fp32, as ``parity``)
    simulated_sqnr_db: float | None = None

    @property
    def passed(self) -> bool:
        return self.parity is not None and self.parity.passed

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"module": self.module, "type": self.kind, "shape": list(self.shape), "matched": self.matched}
        if not self.matched:
            data["reason"] = self.reason
            return data
        p = self.parity
        data.update(
            {
                "tensor": self.tensor, "op": self.op, "layout": self.layout, "fused_with": list(self.fused),
                "max_abs": p.max_abs, "mean_abs": p.mean_abs, "max_rel": p.max_rel, "cosine": p.cosine, "sqnr_db": p.sqnr_db,
                "tolerance": p.tolerance.to_json(), "within_tolerance": p.outputs[0].within_tolerance, "passed": p.passed,
            }
        )
        if self.simulated_sqnr_db is not None:
            data["simulated_sqnr_db"] = self.simulated_sqnr_db
        return data


@dataclass
class ExplainReport:
    """What ``edgex explain`` found (explain.json)."""

    edgex_version: str
    model: dict[str, Any]
    artifact: str
    target: str
    precision: str
    backend: str
    notes: list[str]
    outputs: parity.ParityReport
    layers: list[LayerResult]
    #: modules not compared, by why: pass-through, alias, repeated, no-tensor
    skipped: dict[str, list[str]] = field(default_factory=dict)
    #: module paths the artifact names that the reference does not have
    foreign_modules: list[str] = field(default_factory=list)
    #: an int8 artifact: which layers int8 costs most in edgex's simulation (``layer_sensitivity``),
    #: or why there is none (a str)
    sensitivity: dict[str, Any] | str | None = None

    @property
    def matched(self) -> list[LayerResult]:
        return [layer for layer in self.layers if layer.matched]

    @property
    def leaves_simulation(self) -> LayerResult | None:
        """An int8 artifact: the first matched layer whose SQNR is more than the verdict's margin
        (SIM_SQNR_MARGIN_DB) below edgex's simulation of that layer: where the converter's
        quantization, not int8 itself, loses what the simulation shows int8 can carry."""
        margin = parity.SIM_SQNR_MARGIN_DB["int8"]
        return next((layer for layer in self.matched if layer.simulated_sqnr_db is not None and layer.parity.sqnr_db < layer.simulated_sqnr_db - margin), None)

    def _left(self) -> dict[str, Any] | None:
        left = self.leaves_simulation
        return None if left is None else {"module": left.module, "sqnr_db": left.parity.sqnr_db, "simulated_sqnr_db": left.simulated_sqnr_db}

    @property
    def first_flagged(self) -> LayerResult | None:
        return next((layer for layer in self.matched if not layer.passed), None)

    @property
    def suspects(self) -> list[LayerResult]:
        """The modules that run after the last matched layer still within tolerance, up to and
        including the first one outside it: the error arises in one of them."""
        flagged = self.first_flagged
        if flagged is None:
            if self.outputs.passed:
                return []
            start = max((i for i, layer in enumerate(self.layers) if layer.matched), default=-1) + 1
            return self.layers[start:]  # after the last matched layer, all of which are within tolerance
        end = self.layers.index(flagged)
        start = max((i for i, layer in enumerate(self.layers[:end]) if layer.matched and layer.passed), default=-1) + 1
        return self.layers[start : end + 1]

    @property
    def largest_sqnr_drop(self) -> tuple[LayerResult, float] | None:
        """The matched layer whose SQNR falls most below the previous matched layer's."""
        best = None
        previous = None
        for layer in self.matched:
            sqnr = layer.parity.sqnr_db
            if previous is not None and math.isfinite(sqnr) and math.isfinite(previous) and previous - sqnr > 0:
                if best is None or previous - sqnr > best[1]:
                    best = (layer, previous - sqnr)
            previous = sqnr
        return best

    @property
    def exit_code(self) -> int:
        """The verdict ``edgex validate`` gives: 0 when the outputs pass parity, 1 when not."""
        return 0 if self.outputs.passed else 1

    def verdict(self) -> str:
        flagged = self.first_flagged
        if not self.layers:
            return "the reference runs no submodule whose output could be compared: only the outputs are compared"
        if not self.matched:
            return "no layer of the reference could be matched to a tensor of the artifact: only the outputs are compared"
        if flagged is not None:
            p = flagged.parity
            line = (
                f"parity is lost at {_label(flagged)}: the first layer outside its tolerance "
                f"(max |error| {p.max_abs:.3g} > {p.tolerance.atol:.3g}, SQNR {p.sqnr_db:.1f} dB)"
            )
            earlier = self.matched[: self.matched.index(flagged)]
            if earlier:
                line += f"; the {len(earlier)} matched layer{'s' if len(earlier) > 1 else ''} before it {'are' if len(earlier) > 1 else 'is'} within tolerance"
            else:
                line += "; it is the first matched layer"
            others = [layer for layer in self.suspects if layer is not flagged]
            if others:
                line += "; the error arises in it or in " + ", ".join(_label(layer) for layer in others)
            return line
        if not self.outputs.passed:
            last = self.matched[-1]
            tail = self.suspects
            where = ", ".join(_label(layer) for layer in tail) if tail else "the artifact's output stage"
            return f"every matched layer is within its tolerance but the outputs are not: the error arises after {_label(last)}, in {where}"
        drop = self.largest_sqnr_drop
        line = "every matched layer is within its tolerance"
        if drop is not None and self.precision != "fp32":  # at fp32 the SQNR only wanders with rounding noise
            line += f"; the largest SQNR drop is at {_label(drop[0])} ({drop[1]:.1f} dB below the layer before)"
        return line

    def to_json(self) -> dict[str, Any]:
        flagged = self.first_flagged
        drop = self.largest_sqnr_drop
        return {
            "edgex_version": self.edgex_version,
            "command": "explain",
            "model": self.model,
            "artifact": self.artifact,
            "target": self.target,
            "precision": self.precision,
            "backend": self.backend,
            "notes": list(self.notes),
            "outputs": self.outputs.to_json(),
            "layers": [layer.to_json() for layer in self.layers],
            "matched": len(self.matched),
            "unmatched": len(self.layers) - len(self.matched),
            "skipped": {why: list(paths) for why, paths in self.skipped.items()},
            "foreign_modules": list(self.foreign_modules),
            "first_flagged": flagged.module if flagged else None,
            "suspects": [layer.module for layer in self.suspects],
            "largest_sqnr_drop": {"module": drop[0].module, "db": drop[1]} if drop else None,
            **({"int8_sensitivity": self.sensitivity} if self.sensitivity is not None else {}),
            **({"leaves_simulation": self._left()} if any(layer.simulated_sqnr_db is not None for layer in self.matched) else {}),
            "verdict": self.verdict(),
            "exit_code": self.exit_code,
        }


def _left_text(report: ExplainReport) -> str:
    left = report.leaves_simulation
    if left is None:
        return f"every matched layer is within {parity.SIM_SQNR_MARGIN_DB['int8']:g} dB of edgex's int8 simulation of it"
    return (f"the artifact leaves edgex's int8 simulation at {_label(left)}: SQNR {left.parity.sqnr_db:.1f} dB where the "
            f"simulation keeps {left.simulated_sqnr_db:.1f} dB (the converter's quantization loses it there, not int8)")


def _label(layer: LayerResult) -> str:
    if not layer.matched:
        where = layer.reason.split(" (")[0] if layer.reason.startswith("fused into") else "not in the artifact"
        return f"{layer.module} ({layer.kind}, {where})"
    fused = f", computed in one op with {', '.join(layer.fused)}" if layer.fused else ""
    return f"{layer.module} ({layer.kind}{fused})"


_SKIP_REASONS = {
    "pass-through": "they return their input unchanged",
    "alias": "they return a submodule's output, compared there",
    "repeated": "they run more than once, and tensor names do not say which call a tensor holds",
    "no-tensor": "they return no tensor",
}


def render(report: ExplainReport) -> str:
    """The terminal view: matched layers in execution order, then the unmatched, then the verdict."""
    header = ("layer", "type", "artifact tensor", "max_abs", "tolerance", "cosine", "sqnr_db", "verdict")
    rows = []
    for layer in report.layers:
        if not layer.matched:
            continue
        p = layer.parity
        name = layer.tensor if len(layer.tensor) <= 40 else layer.tensor[:37] + "..."
        mark = "ok" if p.passed else "OUTSIDE TOLERANCE"
        rows.append((layer.module, layer.kind, name, number(p.max_abs, ".3g"), number(p.tolerance.atol, ".3g"), number(p.cosine, ".6f"), number(p.sqnr_db, ".1f"), mark))
    lines = [
        f"explain {report.artifact} ({report.target}, {report.precision}) against {report.model.get('spec')}: "
        f"{report.outputs.samples} samples, traced on {report.backend}",
    ]
    lines += [f"note: {note}" for note in report.notes]
    lines += table(header, rows) if rows else ["(no layer matched)"]
    unmatched = [layer for layer in report.layers if not layer.matched]
    if unmatched:
        lines.append(f"not matched ({len(unmatched)} of {len(report.layers)} layers):")
        lines += [f"  {layer.module} ({layer.kind}): {layer.reason}" for layer in unmatched]
    for why, paths in report.skipped.items():
        if paths:
            lines.append(f"not compared ({_SKIP_REASONS.get(why, why)}): {', '.join(paths[:6])}{f' and {len(paths) - 6} more' if len(paths) > 6 else ''}")
    if report.foreign_modules and not any(layer.matched and layer.op != "output" for layer in report.layers):
        lines.append(f"the artifact names modules the reference does not have ({', '.join(report.foreign_modules[:4])}): is it the right reference?")
    if any(layer.simulated_sqnr_db is not None for layer in report.matched):
        lines.append(f"int8: {_left_text(report)}")
    if isinstance(report.sensitivity, dict):
        lines.append(f"int8: {describe_sensitivity(report.sensitivity)}")
    elif report.sensitivity:
        lines.append(f"int8: no per-layer sensitivity: {report.sensitivity}")
    o = report.outputs
    lines.append(
        f"outputs: {'passed' if o.passed else 'FAILED'} parity (max |error| {o.max_abs:.3g}, tolerance {o.tolerance.atol:.3g}, SQNR {o.sqnr_db:.1f} dB)"
    )
    lines.append(report.verdict())
    return "\n".join(lines)


# --------------------------------------------------------------------------- running


def _int8_simulation(
    model: ReferenceModel, inputs: RunInputs, io: ArtifactIO, reference: parity.Outputs, layer_index: Mapping[str, int], results: list[LayerResult]
) -> tuple[dict[str, Any] | str, list[LayerResult]]:
    """edgex's int8 simulation of the model, calibrated on ``--calibration`` (else the parity
    inputs, when they are real data), quantizing as the artifact says: which layers int8 costs
    most (``layer_sensitivity``), and each matched layer's SQNR there; or why there is none."""
    from edgex.core.quant_reference import CannotSimulate, calibrate, layer_sensitivity, quantization_options, simulated_layers

    try:
        calibration, _ = inputs.simulation_calibration()
    except UsageError as exc:
        return exc.message, results
    options = quantization_options(io.quantization)
    outputs = [sample[: len(model.output_names)] for sample in reference]
    try:
        calibrated = calibrate(model.module, model.example_inputs, calibration, "int8", (io.quantization or {}).get("recurrent"))
        sensitivity = layer_sensitivity(calibrated, list(inputs.parity[:SENSITIVITY_SAMPLES]), outputs[:SENSITIVITY_SAMPLES], aim_db=INT8_CARRIES_DB, **options)
        kept = (io.quantization or {}).get("kept_wider") or {}  # a mixed-precision artifact's layers, kept as it keeps them
        simulated = simulated_layers(calibrated, list(inputs.parity), [r.module for r in results if r.matched], **options,
                                     kept_wider=tuple(kept.get("modules", ())), wider_as=kept.get("as", "float"))
    except CannotSimulate as exc:
        return exc.message, results
    updated = []
    for result in results:
        values = simulated.get(result.module)
        if values is not None:
            expected = [[sample[layer_index[result.module]]] for sample in reference]
            if all(v.shape == e[0].shape for v, e in zip(values, expected)):
                sqnr = parity.output_error(expected, [[v] for v in values], 0)[1]
                result = replace(result, simulated_sqnr_db=round(sqnr, 2) if math.isfinite(sqnr) else sqnr)
        updated.append(result)
    return sensitivity, updated


@dataclass(frozen=True)
class _Traced:
    io: ArtifactIO
    backend: str
    notes: tuple[str, ...]
    traces: list[ArtifactTrace]


def _layer_results(
    runs: Sequence[ModuleRun],
    traces: Sequence[ArtifactTrace],
    io: ArtifactIO,
    order: Sequence[int],
    reference: parity.Outputs,
    noise: parity.NoiseFloor,
    layer_index: Mapping[str, int],
) -> list[LayerResult]:
    matches = match_layers(runs, traces[0], io, order)
    results = []
    for run in runs:
        if run.path not in matches:
            continue
        found = matches[run.path]
        if isinstance(found, str):
            results.append(LayerResult(run.path, run.kind, run.shape, False, reason=found))
            continue
        index = layer_index[run.path]
        expected = [[sample[index]] for sample in reference]
        actual = [[_layer_value(found, trace, run.shape)] for trace in traces]
        # the layer's own tolerance: its float64 noise floor, or its own quantization step
        tolerance = parity.tolerance_for(io.precision, index, reference, noise, found.binding.quant)
        judged = parity.compare(expected, actual, [run.path], [tolerance])
        results.append(LayerResult(run.path, run.kind, run.shape, True, tensor=found.name, op=found.op, layout=found.binding.layout, fused=found.fused, parity=judged))
    return results


def explain(manager: PluginManager, artifact: Path, model: ReferenceModel, settings: ConvertSettings, out: Path, *, target: str | None = None, overwrite: bool = False) -> ExplainReport:
    """Trace ``artifact`` on its target, match its tensors to ``model``'s layers, write explain.json
    (``out`` held as convert holds it: locked, refused when it holds another model's results)."""
    artifact, registered = resolve_artifact(manager, artifact, target)
    name = registered.name
    manager.require_tracer(name)  # before anything runs: a target that cannot trace is a usage error
    if model.module is None:
        raise UsageError("explain compares layers, so it needs a torch reference (--reference MODEL); an ONNX reference has none")
    status = manager.backend_status(name)
    if not status.available:
        raise TargetError(f"target {name!r} cannot run here: {status.missing_message()}")

    tree, kinds = module_tree(model)
    runs = discover_modules(tree, model.example_inputs, kinds)
    layers = [r.path for r in runs if r.role == "layer"]
    tapped = replace(model, module=layer_tap(tree, layers), output_names=(*model.output_names, *layers))
    layer_index = {path: len(model.output_names) + i for i, path in enumerate(layers)}
    inputs = resolve_inputs(model, settings)

    def work(send: Any) -> _Traced:
        io = describe_artifact(manager, name, artifact, model, settings.precision)
        tracer = manager.load_tracer(name, io, model, settings.options)
        traces = []
        for batch in inputs.parity:
            native = [layout.to_artifact(x, binding) for x, binding in zip(batch, io.inputs)]
            traces.append(tracer.trace(native))
        return _Traced(io, tracer.backend, tuple(getattr(tracer, "notes", ()) or ()), traces)

    with owned_out(out, model, overwrite=overwrite) as claim:
        out = claim.path
        with sandboxed(out):
            (out / "logs").mkdir(exist_ok=True)
            # the artifact is traced in a child (a crashing runtime stays contained) while the
            # parent runs the reference, as validate does
            job = IsolatedRun(work, name, settings, out / "logs" / f"{name}.log")
            try:
                with observed(manager, "reference", limit=settings.timeout_s):
                    reference = parity.reference_outputs(tapped, inputs.parity)
                    noise = parity.noise_floor(tapped, inputs.parity, reference)
            except BaseException:
                job.cancel()
                raise
            with observed(manager, "validate", name):
                traced: _Traced = job.wait()
        io = traced.io
        if not traced.traces:
            raise UsageError("no parity sample to explain: --samples must be at least 1")
        outputs_only = [sample[: len(model.output_names)] for sample in reference]
        try:
            judged = judge_outputs(model, io, [t.outputs for t in traced.traces], outputs_only, noise, settings, inputs.parity_source)
            order = match_outputs(model.output_names, io)
            results = _layer_results(runs, traced.traces, io, order, reference, noise, layer_index)
        except ValueError as exc:
            raise TargetError(f"cannot compare the traced artifact: {exc}") from exc

        sensitivity = None
        if io.precision == "int8":
            sensitivity, results = _int8_simulation(model, inputs, io, reference, layer_index, results)
        known = {r.path for r in runs}
        foreign = sorted({m for t in traced.traces[0].tensors for m in t.modules if m and m not in known})
        skipped: dict[str, list[str]] = {}
        for run in runs:
            if run.role != "layer":
                skipped.setdefault(run.role, []).append(run.path)
        report = ExplainReport(
            edgex_version=__version__,
            model=model_json(model, {"parity_inputs": inputs.parity_source}),
            artifact=str(artifact),
            target=name,
            precision=io.precision,
            backend=traced.backend,
            notes=list(traced.notes),
            outputs=judged,
            layers=results,
            skipped=skipped,
            foreign_modules=foreign,
            sensitivity=sensitivity,
        )
        with observed(manager, "report"):
            data = report.to_json()
            write_json_atomic(out / "explain.json", data)
            write_text_atomic(out / "explain.html", explain_page(data))
        return report
