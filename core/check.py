"""``edgex check``: before converting, what each target would make of a model.

In seconds and without converting: the model's operators are read from its exported graph
(``torch.export`` for a torch model, the nodes of an ONNX reference); each target's rewrites
(``TargetSpec.lacks``) are applied and proven exactly as ``edgex convert`` would, and the
rewritten model's operators are put to the target's plugin (``edgex_check_operators``), which
judges them by its own data -- TFLM's kernel list, the Edge TPU's op table, coremltools' op
registry, the int8 quantizer's limits -- and says what blocks the conversion and what it costs.

The prediction per target: ``converts`` (an artifact will be written; whether it passes parity
is what convert then proves -- a static check cannot), ``error`` (the conversion is expected to
fail, or the backend is missing here: convert's ``error`` row) with the reason and the fix, or
``unknown`` (the target's plugin has no operator data, or its data does not cover an operator the
model uses). docs/check.md.
"""

from __future__ import annotations

import functools
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Sequence

from edgex.core.errors import UsageError, one_line
from edgex.core.plugin_manager import PluginManager
from edgex.core.settings import ConvertSettings
from edgex.core.types import ModelOperators, OperatorCheck, OperatorUse, ReferenceModel

#: modules and shapes kept per operator: enough to find it, short enough to print
_FIRST = 3


@dataclass
class TargetPrediction:
    target: str
    precision: str
    #: "converts", "error" or "unknown"
    outcome: str
    reason: str = ""
    rewrites: list[dict[str, Any]] = field(default_factory=list)
    findings: list[dict[str, Any]] = field(default_factory=list)
    operators: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    source: str = ""
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target, "precision": self.precision, "outcome": self.outcome, "reason": self.reason,
            "rewrites": self.rewrites, "findings": self.findings, "operators": self.operators, "unknown": self.unknown,
            "source": self.source, "notes": self.notes,
        }


@dataclass
class CheckReport:
    model: dict[str, Any]
    targets: list[TargetPrediction]
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        """0: every target is expected to convert; 3: one is expected to fail (or its backend is
        missing); 1: a prediction could not be made for one (unknown operators)."""
        outcomes = {t.outcome for t in self.targets}
        return 3 if "error" in outcomes else 1 if "unknown" in outcomes else 0

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "seconds": round(self.seconds, 3), "targets": [t.to_json() for t in self.targets]}


# --------------------------------------------------------------------------- the model's operators


def _shapes(node: Any) -> tuple[tuple[int, ...], ...]:
    shapes = []
    for arg in node.args:
        value = getattr(arg, "meta", {}).get("val") if hasattr(arg, "meta") else None
        shape = getattr(value, "shape", None)
        if shape is not None:
            try:
                shapes.append(tuple(int(d) for d in shape))
            except TypeError:  # a symbolic dimension
                shapes.append(tuple(-1 for _ in shape))
    return tuple(shapes)


def _scalars(node: Any) -> tuple[Any, ...]:
    def plain(value: Any) -> bool:
        return isinstance(value, (bool, int, float)) or (isinstance(value, (list, tuple)) and all(isinstance(v, (bool, int, float)) for v in value))

    return tuple(tuple(a) if isinstance(a, list) else a for a in node.args if plain(a))


def _module_path(node: Any) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return str(path).replace("L['self'].", "").replace("L__self___", "")


def torch_operators(model: ReferenceModel) -> ModelOperators:
    """The aten operators of the model's ``torch.export`` graph (before decomposition: the level
    the converters and their op tables speak), counted, with where they occur."""
    import numpy as np
    import torch

    module = model.module
    args = tuple(torch.from_numpy(np.ascontiguousarray(x)) for x in model.example_inputs)
    if isinstance(module, torch.fx.GraphModule) and hasattr(module, "graph"):
        graph = module.graph  # a .pt2 program: its graph is the exported one
    else:
        with torch.no_grad():
            graph = torch.export.export(module, args, strict=False).graph
    found: OrderedDict[str, list[Any]] = OrderedDict()
    for node in graph.nodes:
        if node.op != "call_function" or not isinstance(node.target, torch._ops.OpOverload):
            continue
        name = node.target.name().replace("::", ".").split(".")
        found.setdefault(".".join(name[:2]), []).append(node)
    uses = []
    for name, nodes in found.items():
        modules = tuple(OrderedDict.fromkeys(p for p in map(_module_path, nodes) if p))[:_FIRST]
        uses.append(OperatorUse(name, len(nodes), modules, tuple(_shapes(n) for n in nodes[:_FIRST]), tuple(_scalars(n) for n in nodes[:_FIRST])))
    return ModelOperators("torch", tuple(uses), tuple(model.inputs))


def onnx_operators(model: ReferenceModel) -> ModelOperators:
    """The operator types of an ONNX reference (every graph, subgraphs included)."""
    import onnx

    proto = onnx.load(str(model.onnx_path), load_external_data=False)
    found: OrderedDict[str, list[str]] = OrderedDict()

    def walk(graph: Any) -> None:
        for node in graph.node:
            domain = node.domain or "onnx"
            found.setdefault(f"{'onnx' if domain == 'ai.onnx' else domain}.{node.op_type}", []).append(node.name)
            for attribute in node.attribute:
                if attribute.g is not None and attribute.g.node:
                    walk(attribute.g)

    walk(proto.graph)
    uses = tuple(OperatorUse(name, len(nodes), tuple(n for n in nodes if n)[:_FIRST]) for name, nodes in found.items())
    return ModelOperators("onnx", uses, tuple(model.inputs))


def model_operators(model: ReferenceModel) -> ModelOperators:
    """Every operator the model needs; a model that cannot be exported is bad input (exit 2)."""
    import contextlib
    import io
    import logging

    logging.disable(logging.CRITICAL)  # torch logs and prints a failed export's whole graph; the one line below says it
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return onnx_operators(model) if model.module is None else torch_operators(model)
    except Exception as exc:
        raise UsageError(
            f"could not read the model's operators: {'the ONNX file' if model.module is None else 'torch.export'} failed: {one_line(exc, 160)} "
            "(every target's converter starts from this graph; fix the model so that torch.export takes it)"
        ) from exc
    finally:
        logging.disable(logging.NOTSET)


def aten_reach(name: str) -> str:
    """How an ATen operator (``aten.hypot``) reaches the core ATen opset every torch.export-based
    converter lowers from: "core" (it is in it), "decomposes" (torch.export's default
    decompositions or its composite kernel take it there), "outside" (neither: only a converter
    with a lowering of its own can take it) or "unknown" (not an ATen operator torch knows)."""
    import torch

    packet = getattr(torch.ops.aten, name.split(".", 1)[1], None) if name.startswith("aten.") else None
    if packet is None:
        return "unknown"
    overloads = [getattr(packet, o) for o in packet.overloads()]
    if any(torch.Tag.core in o.tags for o in overloads):
        return "core"
    table = _default_decompositions()

    def composite(o: Any) -> bool:
        try:
            return o.has_kernel_for_dispatch_key(torch._C.DispatchKey.CompositeImplicitAutograd)
        except RuntimeError:
            return False

    return "decomposes" if any(o in table or composite(o) for o in overloads) else "outside"


@functools.lru_cache(maxsize=1)
def _default_decompositions() -> Any:
    import torch

    return torch.export.default_decompositions()


# --------------------------------------------------------------------------- predicting


def _predict(prediction: TargetPrediction, answer: OperatorCheck | None, operators: ModelOperators) -> None:
    prediction.operators = [op.name for op in operators.operators]
    if answer is None:
        prediction.outcome = "unknown"
        prediction.reason = "its plugin has no operator data (it does not implement edgex_check_operators)"
        return
    prediction.source = answer.source
    prediction.notes = list(answer.notes)
    prediction.findings = [f.to_json() for f in answer.findings]
    prediction.unknown = list(answer.unknown)
    blocking = [f for f in answer.findings if f.blocks]
    if blocking:
        prediction.outcome = "error"
        prediction.reason = "; ".join(f"{f.operator}: {f.reason}" for f in blocking)
    elif answer.unknown:
        prediction.outcome = "unknown"
        prediction.reason = f"not in its operator data: {', '.join(answer.unknown)}"
    else:
        prediction.outcome = "converts"


def check(manager: PluginManager, model: ReferenceModel, settings: ConvertSettings) -> CheckReport:
    """Predict, per target of ``settings.targets``, what ``edgex convert`` would report."""
    from edgex.core.data import resolve_inputs
    from edgex.core.pipeline import plan_targets
    from edgex.core.report import model_json
    from edgex.core.rewrites import Rewriter

    started = time.perf_counter()
    plans = plan_targets(manager, settings.targets, settings.precision, model)
    inputs = resolve_inputs(model, settings)
    rewriter = Rewriter(model, inputs.parity, settings.rewrite)
    inventories: dict[tuple[Any, ...], ModelOperators] = {}
    predictions = []
    for plan in plans:
        prediction = TargetPrediction(plan.target, plan.precision, "converts")
        predictions.append(prediction)
        if plan.skip:
            prediction.outcome, prediction.reason = "error", plan.skip
            continue
        rewritten = rewriter.for_target(manager.resolve_target(plan.target).spec.lacks)
        prediction.rewrites = [
            {k: e.get(k) for k in ("name", "gap", "count", "replaced", "drift", "bound", "status", "reason") if k in e} for e in rewritten.entries
        ]
        # targets whose rewrites replaced the same things convert the same graph: exported once
        key = tuple(sorted((e["name"], tuple(e["replaced"])) for e in rewritten.entries if e["status"] == "applied"))
        if key not in inventories:
            inventories[key] = model_operators(rewritten.model)
        operators = inventories[key]
        try:
            answer = manager.check_operators(plan.target, operators, plan.precision)
        except Exception as exc:  # a plugin's bug is its own target's unknown, not the run's end
            prediction.outcome, prediction.reason = "unknown", f"edgex_check_operators raised {one_line(exc)}"
            continue
        _predict(prediction, answer, operators)
    return CheckReport(model_json(model, {}), predictions, time.perf_counter() - started)


# --------------------------------------------------------------------------- the table


def render(report: CheckReport) -> str:
    lines = []
    width = max([len(t.target) for t in report.targets] + [6])
    for t in report.targets:
        applied = [f"{r['name']} x{r['count']}" for r in t.rewrites if r.get("status") == "applied"]
        head = f"{t.target:<{width}}  {t.precision:<12} {t.outcome:<8}"
        lines.append(head + (f" with rewrites: {', '.join(applied)}" if applied else ""))
        if t.reason:
            lines.append(f"{'':<{width}}  why: {t.reason}")
        for f in t.findings:
            if f["blocks"] and f.get("fix"):  # its reason is in "why"
                lines.append(f"{'':<{width}}  fix: {f['operator']}: {f['fix']}")
            elif not f["blocks"]:
                lines.append(f"{'':<{width}}  note: {f['operator']}: {f['reason']}" + (f" ({f['fix']})" if f.get("fix") else ""))
        for note in t.notes:
            lines.append(f"{'':<{width}}  note: {note}")
        for r in t.rewrites:
            if r.get("status") == "skipped":
                lines.append(f"{'':<{width}}  rewrite {r['name']} not applied: {r.get('reason', '')}")
    lines.append(f"checked in {report.seconds:.1f} s; nothing was converted (edgex convert proves parity)")
    return "\n".join(lines)

