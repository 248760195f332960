"""Will a full-int8 .tflite run on a Coral Edge TPU? A static answer, and the compiler's.

``analyze`` checks every operator of the model against the documented supported-op table,
kept as data in ``data/edgetpu_ops.json`` (operation, limitations, and the machine-checkable
rules edgex derives from them), plus the general requirements (8-bit tensors, static shapes,
at most 3 innermost dimensions > 1). The Edge TPU compiler maps one subgraph: everything after
the first operation it cannot map runs on the CPU, so the report names that operation.

``compile_model`` runs ``edgetpu_compiler`` where it is on PATH, and ``parse_compiler_log``
reads its ``--show_operations`` table into the same fields. Neither runs anything on an Edge
TPU: the report never claims Edge TPU execution.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edgex.targets.litert.graph import Graph, Operator, op_macs, read_graph

OP_TABLE = Path(__file__).with_name("data") / "edgetpu_ops.json"
COMPILER = "edgetpu_compiler"
COMPILER_TIMEOUT_S = 300
#: tensor types the Edge TPU computes on; int32 appears only as constant parameters (bias, shapes)
EIGHT_BIT = ("int8", "uint8")


@lru_cache(maxsize=1)
def op_table() -> dict[str, Any]:
    return json.loads(OP_TABLE.read_text(encoding="utf-8"))


@dataclass(frozen=True)
class OpVerdict:
    index: int
    op: str
    #: the op meets the table and the general requirements on its own
    supported: bool
    #: supported and before the first unsupported op: what the compiler would put on the TPU
    mapped: bool
    reason: str
    macs: int
    output: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class EdgeTpuReport:
    """The ``edgetpu`` block of the coral target's report."""

    source: str
    ops_total: int
    ops_mapped: int
    macs_total: int
    macs_mapped: int
    first_unmapped: dict[str, Any] | None
    ops: list[OpVerdict]
    warnings: list[str] = field(default_factory=list)
    compiler: dict[str, Any] | None = None

    @property
    def op_fraction(self) -> float:
        return self.ops_mapped / self.ops_total if self.ops_total else 0.0

    @property
    def mac_fraction(self) -> float | None:
        return self.macs_mapped / self.macs_total if self.macs_total else None

    def to_json(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "executed_on_edge_tpu": False,
            "ops_total": self.ops_total,
            "ops_mapped": self.ops_mapped,
            "op_fraction": round(self.op_fraction, 4),
            "macs_total": self.macs_total,
            "macs_mapped": self.macs_mapped,
            "mac_fraction": None if self.mac_fraction is None else round(self.mac_fraction, 4),
            "first_unmapped": self.first_unmapped,
            "warnings": list(self.warnings),
            "ops": [v.to_json() for v in self.ops],
            "compiler": self.compiler,
        }


# --------------------------------------------------------------------------- rules

Check = Callable[[Graph, Operator, dict[str, Any]], str]


def _axes(graph: Graph, op: Operator, rule: dict[str, Any]) -> list[int] | None:
    """The axes an op works on (from a constant input or an option), normalised to >= 0."""
    if "axis_option" in rule:  # PACK: the axis of the output
        values = [int(op.option(rule["axis_option"], 0))]
        rank = len(graph.tensor(op.outputs[0]).shape)
    else:  # MEAN, SUM, REDUCE_*: (data, axes); SPLIT: (axis, data)
        position = rule["axes_input"]
        rank = len(graph.tensor(op.inputs[1] if position == 0 else op.inputs[0]).shape)
        value = graph.value(op.inputs[position]) if position < len(op.inputs) else None
        if value is None:
            return None
        values = [int(v) for v in np.ravel(value)]
    return [v + rank if v < 0 else v for v in values]


def _fused_activation(graph: Graph, op: Operator, rule: dict[str, Any]) -> str:
    activation = op.fused_activation
    allowed = rule.get("allowed") or op_table()["fused_activations"]
    if activation is not None and activation not in allowed:
        return f"fused activation {activation} is not supported here (allowed: {', '.join(allowed)})"
    return ""


def _same_dilation(graph: Graph, op: Operator, rule: dict[str, Any]) -> str:
    h, w = op.option("dilationHFactor", 1), op.option("dilationWFactor", 1)
    return "" if h == w else f"dilation differs in y ({h}) and x ({w})"


def _constant_weights(graph: Graph, op: Operator, rule: dict[str, Any]) -> str:
    positions = (1,) if op.name == "TRANSPOSE_CONV" else (1, 2)
    for position in positions:
        if position < len(op.inputs) and op.inputs[position] >= 0 and not graph.tensor(op.inputs[position]).constant:
            return f"input {position} ({graph.tensor(op.inputs[position]).name}) is not a compile-time constant"
    return ""


def _default_weights_format(graph: Graph, op: Operator, rule: dict[str, Any]) -> str:
    return "" if int(op.option("weightsFormat", 0) or 0) == 0 else "fully-connected weights are not in the default format"


def _non_unit(shape: tuple[int, ...]) -> int:
    return sum(1 for d in shape if d > 1)


def _one_dimensional_output(graph: Graph, op: Operator, rule: dict[str, Any]) -> str:
    shape = graph.tensor(op.outputs[0]).shape
    return "" if _non_unit(shape) <= 1 else f"output {list(shape)} is not one-dimensional"


def _one_dimensional_input(graph: Graph, op: Operator, rule: dict[str, Any]) -> str:
    tensor = graph.tensor(op.inputs[0])
    if _non_unit(tensor.shape) > 1:
        return f"input {list(tensor.shape)} is not one-dimensional"
    if tensor.elements > rule.get("max_elements", 16000):
        return f"input has {tensor.elements} elements (max {rule.get('max_elements', 16000)})"
    return ""


def _no_batch_axis(graph: Graph, op: Operator, rule: dict[str, Any]) -> str:
    axes = _axes(graph, op, rule)
    if axes is None:
        return "its axes are not a compile-time constant"
    return "it works on the batch dimension" if 0 in axes else ""


def _z_reduction_multiple(graph: Graph, op: Operator, rule: dict[str, Any]) -> str:
    axes = _axes(graph, op, rule)
    shape = graph.tensor(op.inputs[0]).shape
    if axes is None or not shape or (len(shape) - 1) not in axes:
        return ""
    multiple = rule.get("multiple", 4)
    return "" if shape[-1] % multiple == 0 else f"z-reduction over {shape[-1]} channels (must be a multiple of {multiple})"


def _no_batch_padding(graph: Graph, op: Operator, rule: dict[str, Any]) -> str:
    paddings = graph.value(op.inputs[1]) if len(op.inputs) > 1 else None
    if paddings is None:
        return "its paddings are not a compile-time constant"
    return "it pads the batch dimension" if np.any(np.asarray(paddings)[0] != 0) else ""


def _constant_input_is_zero_padding(graph: Graph, op: Operator, rule: dict[str, Any]) -> str:
    constants = [i for i in op.inputs if i >= 0 and graph.tensor(i).constant]
    if not constants:
        return ""
    if len(op.inputs) != 2:
        return "a constant input with more than 2 inputs"
    value = graph.value(constants[0])
    tensor = graph.tensor(constants[0])
    zero = tensor.zero_points[0] if tensor.zero_points else 0
    return "" if value is not None and np.all(np.asarray(value) == zero) else "a constant input that is not all zeroes"


def _innermost_only_input(graph: Graph, op: Operator, rule: dict[str, Any]) -> str:
    shape = graph.tensor(op.inputs[rule.get("input", 1)]).shape
    return "" if all(d == 1 for d in shape[:-1]) else f"alpha {list(shape)} is not 1-dimensional"


def _three_dimensional_io(graph: Graph, op: Operator, rule: dict[str, Any]) -> str:
    for index in (op.inputs[0], op.outputs[0]):
        shape = graph.tensor(index).shape
        if len(shape) == 4 and shape[0] != 1:
            return f"tensor {list(shape)} is not 3-dimensional (batch {shape[0]})"
    return ""


def _squeeze_leading_ones(graph: Graph, op: Operator, rule: dict[str, Any]) -> str:
    shape = graph.tensor(op.inputs[0]).shape
    axes = [int(a) + len(shape) if int(a) < 0 else int(a) for a in (op.option("squeezeDims") or [])]
    axes = axes or [i for i, d in enumerate(shape) if d == 1]
    for axis in axes:
        if any(d != 1 for d in shape[:axis]):
            return f"it squeezes dimension {axis} of {list(shape)}, which is not a leading 1 (needs a relayout)"
    return ""


def _unit_strides(graph: Graph, op: Operator, rule: dict[str, Any]) -> str:
    position = rule.get("strides_input", 3)
    strides = graph.value(op.inputs[position]) if position < len(op.inputs) else None
    if strides is None:
        return "its strides are not a compile-time constant"
    return "" if np.all(np.asarray(strides) == 1) else f"strides {list(np.ravel(strides))} are not all 1"


def _zero_options(graph: Graph, op: Operator, rule: dict[str, Any]) -> str:
    set_options = [name for name in rule.get("options", ()) if int(op.option(name, 0) or 0) != 0]
    return f"{', '.join(set_options)} set" if set_options else ""


RULES: dict[str, Check] = {
    "fused_activation": _fused_activation,
    "same_dilation": _same_dilation,
    "constant_weights": _constant_weights,
    "default_weights_format": _default_weights_format,
    "one_dimensional_output": _one_dimensional_output,
    "one_dimensional_input": _one_dimensional_input,
    "no_batch_axis": _no_batch_axis,
    "z_reduction_multiple": _z_reduction_multiple,
    "no_batch_padding": _no_batch_padding,
    "constant_input_is_zero_padding": _constant_input_is_zero_padding,
    "innermost_only_input": _innermost_only_input,
    "three_dimensional_io": _three_dimensional_io,
    "squeeze_leading_ones": _squeeze_leading_ones,
    "unit_strides": _unit_strides,
    "zero_options": _zero_options,
}


def _general_requirements(graph: Graph, op: Operator) -> str:
    """The requirements every mapped op meets: 8-bit data, static shapes, <= 3 innermost dims > 1."""
    for index in (*op.inputs, *op.outputs):
        if index < 0:
            continue
        tensor = graph.tensor(index)
        if tensor.constant:
            if tensor.dtype not in (*EIGHT_BIT, "int32"):
                return f"constant {tensor.name!r} is {tensor.dtype}, not 8-bit quantized"
            continue
        if tensor.dtype == "float32":  # a float model's, or a mixed-precision model's kept layers and their edges
            return f"tensor {tensor.name!r} is float32, not 8-bit quantized: a float op (a layer kept float by mixed precision) runs on the CPU"
        if tensor.dtype not in EIGHT_BIT or not tensor.quantized:
            return f"tensor {tensor.name!r} is {tensor.dtype}{'' if tensor.quantized else ' without quantization'}, not 8-bit quantized"
        if tensor.dynamic:
            return f"tensor {tensor.name!r} has a dynamic shape {list(tensor.shape_signature)}"
        if any(d > 1 for d in tensor.shape[:-3]):
            return f"tensor {tensor.name!r} {list(tensor.shape)} has a dimension > 1 outside the 3 innermost"
    return ""


def check_op(graph: Graph, op: Operator) -> str:
    """Why ``op`` cannot run on the Edge TPU, or "" when the table and requirements allow it."""
    entry = op_table()["ops"].get(op.name)
    if entry is None:
        return f"{op.name} is not in the Edge TPU supported-operation table"
    general = _general_requirements(graph, op)
    if general:
        return general
    rules = list(entry["rules"])
    if op.fused_activation is not None and not any(r["rule"] == "fused_activation" for r in rules):
        rules.append({"rule": "fused_activation"})
    for rule in rules:
        problem = RULES[rule["rule"]](graph, op, rule)
        if problem:
            return f"{entry['name']}: {problem} (documented limitation: {entry['limitations'] or rule['rule']})"
    return ""


def analyze(graph: Graph) -> EdgeTpuReport:
    """Per-op mapped / not mapped and why; op and MAC fractions; the first unmapped op."""
    verdicts: list[OpVerdict] = []
    first: OpVerdict | None = None
    for op in graph.operators:
        reason = check_op(graph, op)
        supported = not reason
        mapped = supported and first is None
        if supported and first is not None:
            reason = f"after the first unmapped op ({first.op} #{first.index}): the compiler maps one subgraph, the rest runs on the CPU"
        output = graph.tensor(op.outputs[0]).name if op.outputs else ""
        verdict = OpVerdict(op.index, op.name, supported, mapped, reason, op_macs(graph, op), output)
        if not supported and first is None:
            first = verdict
        verdicts.append(verdict)
    report = EdgeTpuReport(
        source=f"static analysis against {op_table()['source']}",
        ops_total=len(verdicts),
        ops_mapped=sum(v.mapped for v in verdicts),
        macs_total=sum(v.macs for v in verdicts),
        macs_mapped=sum(v.macs for v in verdicts if v.mapped),
        first_unmapped=None if first is None else {"index": first.index, "op": first.op, "reason": first.reason, "output": first.output},
        ops=verdicts,
    )
    if graph.subgraphs > 1:
        report.warnings.append(f"the model has {graph.subgraphs} subgraphs; the Edge TPU compiler maps only the first")
    if first is not None:
        after = len(verdicts) - first.index - 1
        report.warnings.append(
            f"Edge TPU: op #{first.index} {first.op} cannot be mapped ({first.reason}); it and the {after} ops after it "
            f"would run on the CPU ({report.op_fraction:.0%} of ops, "
            + (f"{report.mac_fraction:.0%} of MACs" if report.mac_fraction is not None else "no MACs")
            + " on the Edge TPU)"
        )
    return report


# --------------------------------------------------------------------------- the compiler


@dataclass(frozen=True)
class CompilerLog:
    """What ``edgetpu_compiler --show_operations`` printed, as fields."""

    version: str | None
    ops_total: int | None
    ops_on_edge_tpu: int | None
    ops_on_cpu: int | None
    edge_tpu_subgraphs: int | None
    #: (operator, count, status) rows of the operation table, in the log's order
    rows: tuple[tuple[str, int, str], ...]
    on_chip_memory: str | None = None
    off_chip_memory: str | None = None

    MAPPED = "Mapped to Edge TPU"

    @property
    def ops_mapped(self) -> int:
        if self.ops_on_edge_tpu is not None:
            return self.ops_on_edge_tpu
        return sum(count for _, count, status in self.rows if status == self.MAPPED)

    @property
    def ops_counted(self) -> int:
        if self.ops_total is not None:
            return self.ops_total
        return sum(count for _, count, _ in self.rows)


_ROW = re.compile(r"^([A-Z][A-Z0-9_]*)\s+(\d+)\s+(\S.*?)\s*$")
_FIELDS = {
    "version": re.compile(r"Edge TPU Compiler version\s+(\S+)"),
    "ops_total": re.compile(r"Total number of operations:\s*(\d+)"),
    "ops_on_edge_tpu": re.compile(r"Number of operations that will run on Edge TPU:\s*(\d+)"),
    "ops_on_cpu": re.compile(r"Number of operations that will run on CPU:\s*(\d+)"),
    "edge_tpu_subgraphs": re.compile(r"Number of Edge TPU subgraphs:\s*(\d+)"),
    "on_chip_memory": re.compile(r"On-chip memory used for caching model parameters:\s*(\S+)"),
    "off_chip_memory": re.compile(r"Off-chip memory used for streaming uncached model parameters:\s*(\S+)"),
}


def parse_compiler_log(text: str) -> CompilerLog:
    """Parse the compiler's console output or its ``*_edgetpu.log`` file (same table)."""
    found: dict[str, Any] = {}
    for name, pattern in _FIELDS.items():
        match = pattern.search(text)
        if match:
            found[name] = match.group(1) if name in ("version", "on_chip_memory", "off_chip_memory") else int(match.group(1))
    rows = []
    in_table = False
    for line in text.splitlines():
        if re.match(r"^\s*Operator\s+Count\s+Status\s*$", line):
            in_table = True
            continue
        if in_table:
            match = _ROW.match(line.strip())
            if match:
                rows.append((match.group(1), int(match.group(2)), match.group(3)))
            elif line.strip() and rows:
                break  # the table ended
    if not rows and "ops_total" not in found:
        raise ValueError("no Edge TPU compiler operation table found in the log")
    return CompilerLog(
        version=found.get("version"),
        ops_total=found.get("ops_total"),
        ops_on_edge_tpu=found.get("ops_on_edge_tpu"),
        ops_on_cpu=found.get("ops_on_cpu"),
        edge_tpu_subgraphs=found.get("edge_tpu_subgraphs"),
        rows=tuple(rows),
        on_chip_memory=found.get("on_chip_memory"),
        off_chip_memory=found.get("off_chip_memory"),
    )


def compiler_fields(log: CompilerLog, model: Graph, compiled: Graph | None) -> dict[str, Any]:
    """The compiler's verdict in the static report's fields.

    MACs on the TPU come from the compiled model where it exists (the ops left in it run on the
    CPU); from the log alone they are known only when every op of a type shares one status.
    """
    macs_total = sum(op_macs(model, op) for op in model.operators)
    macs_mapped: int | None = None
    if compiled is not None:
        cpu_macs = sum(op_macs(compiled, op) for op in compiled.operators if not op.custom)
        macs_mapped = max(0, macs_total - cpu_macs)
    else:
        statuses: dict[str, set[str]] = {}
        for op_name, _, status in log.rows:
            statuses.setdefault(op_name, set()).add(status)
        if all(len(s) == 1 for s in statuses.values()):
            macs_mapped = sum(op_macs(model, op) for op in model.operators if statuses.get(op.name) == {CompilerLog.MAPPED})
    unmapped = [(op_name, count, status) for op_name, count, status in log.rows if status != CompilerLog.MAPPED]
    return {
        "version": log.version,
        "ops_total": log.ops_counted,
        "ops_mapped": log.ops_mapped,
        "op_fraction": round(log.ops_mapped / log.ops_counted, 4) if log.ops_counted else 0.0,
        "macs_total": macs_total,
        "macs_mapped": macs_mapped,
        "mac_fraction": round(macs_mapped / macs_total, 4) if macs_mapped is not None and macs_total else None,
        "edge_tpu_subgraphs": log.edge_tpu_subgraphs,
        "on_chip_memory": log.on_chip_memory,
        "off_chip_memory": log.off_chip_memory,
        "ops": [{"op": op_name, "count": count, "status": status, "mapped": status == CompilerLog.MAPPED} for op_name, count, status in log.rows],
        "unmapped": [{"op": op_name, "count": count, "reason": status} for op_name, count, status in unmapped],
    }


def compiler_available() -> bool:
    return shutil.which(COMPILER) is not None


def compile_model(path: Path, out_dir: Path) -> tuple[Path, str]:
    """Run ``edgetpu_compiler -s`` on ``path`` writing into ``out_dir``; returns (compiled, log text)."""
    result = subprocess.run(
        [COMPILER, "--show_operations", "--out_dir", str(out_dir), str(path)],
        cwd=out_dir, capture_output=True, text=True, timeout=COMPILER_TIMEOUT_S,
    )
    text = result.stdout + result.stderr
    if result.returncode != 0:
        last = [line for line in text.splitlines() if line.strip()][-1:] or [f"exit status {result.returncode}"]
        raise RuntimeError(f"edgetpu_compiler failed: {last[0]}")
    compiled = out_dir / (path.stem + "_edgetpu.tflite")
    log_file = out_dir / (path.stem + "_edgetpu.log")
    if log_file.exists() and "Operator" not in text:
        text += "\n" + log_file.read_text(errors="replace")
    return compiled, text


def compiler_report(path: Path, out_dir: Path, model: Graph) -> tuple[Path, dict[str, Any]]:
    """Compile and report in the static report's fields."""
    compiled, text = compile_model(path, out_dir)
    compiled_graph = read_graph(compiled) if compiled.exists() else None
    return compiled, compiler_fields(parse_compiler_log(text), model, compiled_graph)
