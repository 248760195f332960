"""report.json and its human renderings.

The JSON shape is the contract in docs/contract.md; :class:`Report` and :class:`TargetReport` are its
typed form for the Python API. Files are written to a temporary name and renamed into place so
that a reader never sees half a report.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from edgex.core.errors import STATUSES, exit_code_for
from edgex.core.parity import ParityReport
from edgex.core.tables import count, number, size, table

STATUS_ORDER = STATUSES


@dataclass
class TargetReport:
    """One target's row of the report."""

    name: str
    status: str
    plugin: str = ""
    precision: str = ""
    artifacts: list[str] = field(default_factory=list)
    size_bytes: int = 0
    backend: str = ""
    converter: str = ""
    convert_seconds: float = 0.0
    parity: ParityReport | None = None
    latency_ms: dict[str, float] | None = None
    io: dict[str, Any] | None = None
    accuracy: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    #: True when the user named this target (a skip then counts as a failure of the run)
    requested: bool = True
    #: the child process's traceback of an error, shown with --debug (not in report.json)
    traceback: str = ""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "status": self.status,
            "plugin": self.plugin,
            "precision": self.precision,
            "artifacts": list(self.artifacts),
            "size_bytes": self.size_bytes,
            "backend": self.backend,
            "converter": self.converter,
            "convert_seconds": round(self.convert_seconds, 4),
            "parity": self.parity.to_json() if self.parity else None,
            "latency_ms": self.latency_ms,
            "io": self.io,
            "accuracy": self.accuracy,
            "messages": list(self.messages),
            "requested": self.requested,
        }
        data.update(self.details)
        return data


@dataclass
class Report:
    """What ``edgex convert`` / ``edgex validate`` produce (report.json)."""

    edgex_version: str
    command: str
    model: dict[str, Any]
    compression: dict[str, Any] | None = None
    targets: dict[str, TargetReport] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        """0 all passed; 1 an artifact's parity was not proven; 3 a target errored or a requested
        one was skipped (:func:`edgex.core.errors.exit_code_for`)."""
        return exit_code_for((t.status, t.requested) for t in self.targets.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "edgex_version": self.edgex_version,
            "command": self.command,
            "model": self.model,
            "compression": self.compression,
            "targets": {name: t.to_json() for name, t in self.targets.items()},
            "messages": list(self.messages),
            "exit_code": self.exit_code,
        }


def _finite(value: Any) -> Any:
    """JSON has no inf/NaN: write them as strings a reader can still parse with float()."""
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else ("-inf" if value < 0 else "nan")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _write_atomic(path: Path, text: str) -> None:
    """``text`` into ``path`` by way of a temporary file renamed into place: a reader finds the
    whole new file or the one before, never half of one. On any failure the temporary file is
    removed; a full disk (``ENOSPC``, ``EDQUOT``) is a :class:`edgex.core.errors.DiskFullError`
    (exit 3) naming the disk, its free space and the file."""
    from edgex.core import resources

    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fd, 0o644)  # mkstemp makes it private; a report is meant to be read
            fh.write(text)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and resources.is_disk_full(exc):
            size = resources.human_bytes(len(text.encode("utf-8", "replace")))
            raise resources.disk_full_error(exc, writing=f"{path.name} ({size}) in {path.parent}", where=path.parent) from exc
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    """``data`` as indented JSON (inf/NaN as strings), written whole or not at all (:func:`_write_atomic`)."""
    _write_atomic(path, json.dumps(_finite(data), indent=2, default=str) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """``text``, written whole or not at all (:func:`_write_atomic`)."""
    _write_atomic(path, text)


def dumps(data: Any) -> str:
    return json.dumps(_finite(data), indent=2, default=str)


# --------------------------------------------------------------------------- human rendering


def verdict(row: TargetReport | Mapping[str, Any]) -> str:
    """A row's status as every summary shows it: a verdict reached on an emulated backend (jetson
    without TensorRT) says so, ``passed (emulated)``, so nobody takes it for the device's."""
    if isinstance(row, TargetReport):
        status, emulated = row.status, row.details.get("emulated")
    else:
        status, emulated = row.get("status", ""), row.get("emulated")
    return f"{status} (emulated)" if emulated and status in ("passed", "failed", "inconclusive") else status


def render_table(report: Report) -> str:
    """The terminal view: one row per target, then each target's messages."""
    header = ("target", "status", "precision", "max_abs", "tolerance", "cosine", "sqnr_db", "top1", "size", "backend")
    rows = []
    for name, t in report.targets.items():
        p = t.parity
        rows.append(
            (
                name,
                verdict(t),
                t.precision or "-",
                number(p.max_abs, ".3g") if p else "-",
                number(p.tolerance.atol, ".3g") if p else "-",
                number(p.cosine, ".6f") if p else "-",
                number(p.sqnr_db, ".1f") if p else "-",
                number(p.top1_agreement, ".3f") if p else "-",
                size(t.size_bytes) if t.size_bytes else "-",
                t.backend or "-",
            )
        )
    lines = table(header, rows)
    for name, t in report.targets.items():
        for message in t.messages:
            lines.append(f"{name}: {message}")
        if t.accuracy:
            a = t.accuracy
            lines.append(
                f"{name}: task accuracy {a['artifact']:.4f} vs reference {a['reference']:.4f} "
                f"({a['samples']} labelled samples, drop {a['drop_points']:+.2f} points)"
            )
    if report.compression:
        lines.extend(describe_compression(report.compression))
    for message in report.messages:
        lines.append(message)
    return "\n".join(lines)


def summary_line(report: Report, out: Path | None) -> str:
    counts: dict[str, int] = {}
    for t in report.targets.values():
        counts[t.status] = counts.get(t.status, 0) + 1
    parts = [f"{counts[s]} {s}" for s in STATUS_ORDER if s in counts]
    emulated = [name for name, t in report.targets.items() if verdict(t).endswith("(emulated)")]
    if emulated:
        parts.append(f"{', '.join(emulated)} on an emulated backend, not the device's")
    where = f"; report: {out / 'report.json'}, page: {out / 'report.html'}" if out is not None else ""
    return f"{', '.join(parts) or 'no targets'}{where}"


def model_json(model: Any, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    data = {
        "spec": model.spec,
        "kind": model.kind,
        "sha256": model.sha256,
        "params": model.params,
        "macs": model.macs,
        "inputs": [i.to_json() for i in model.inputs],
        "outputs": list(model.output_names),
    }
    data.update(extra or {})
    return data


# --------------------------------------------------------------------------- matrix renderings

MATRIX_COLUMNS = ("model", "compression", "target", "precision", "status", "max_abs", "sqnr_db", "top1", "accuracy", "size", "latency_ms")


def matrix_rows(cells: Any) -> list[dict[str, str]]:
    rows = []
    for cell in cells:
        coords = cell["cell"]
        row = cell["targets"][coords["target"]]
        parity = row.get("parity") or {}
        accuracy = row.get("accuracy") or {}
        latency = row.get("latency_ms") or {}
        rows.append(
            {
                "model": coords["model"],
                "compression": coords["compression"],
                "target": coords["target"],
                "precision": row.get("precision") or coords["precision"],
                "status": verdict(row),
                "state": row["status"],  # the colour's key
                "max_abs": number(parity.get("max_abs"), ".3g"),
                "sqnr_db": number(parity.get("sqnr_db"), ".1f"),
                "top1": number(parity.get("top1_agreement"), ".3f"),
                "accuracy": number(accuracy.get("artifact"), ".4f"),
                "size": size(row["size_bytes"]) if row.get("size_bytes") else "-",
                "latency_ms": number(latency.get("median"), ".3f"),
                "message": "; ".join(row.get("messages") or []),
            }
        )
    return rows


def matrix_markdown(cells: Any) -> str:
    rows = matrix_rows(cells)
    lines = ["# edgex matrix", "", "| " + " | ".join(MATRIX_COLUMNS) + " |", "|" + "---|" * len(MATRIX_COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(row[c] for c in MATRIX_COLUMNS) + " |")
    notes = [f"- **{r['model']} / {r['compression']} / {r['target']} / {r['precision']}**: {r['message']}" for r in rows if r["message"]]
    if notes:
        lines += ["", "## Messages", "", *notes]
    return "\n".join(lines) + "\n"


def matrix_junit(cells: Any) -> str:
    """junit.xml: a testcase per cell, built with ElementTree (never by formatting strings); a
    failure carries the cell's metrics and tolerance, in its message and its text."""
    import xml.etree.ElementTree as ET

    suite = ET.Element("testsuite", name="edgex matrix")
    counts = {"failed": 0, "inconclusive": 0, "error": 0, "skipped": 0}
    total = 0.0
    for cell in cells:
        coords = cell["cell"]
        row = cell["targets"][coords["target"]]
        seconds = float(row.get("convert_seconds") or 0.0)
        total += seconds
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"{coords['model']}.{coords['compression']}",
            name=f"{coords['target']}[{row.get('precision') or coords['precision']}]",
            time=f"{seconds:.3f}",
        )
        counts[row["status"]] = counts.get(row["status"], 0) + 1
        message = "; ".join(row.get("messages") or []) or row["status"]
        case.set("status", verdict(row))  # "passed (emulated)": a CI reader sees it on the case itself
        if row.get("emulated"):
            message = f"{verdict(row)} on {row.get('backend') or 'an emulated backend'}: {message}"
        kind = {"failed": "failure", "inconclusive": "failure", "error": "error", "skipped": "skipped"}.get(row["status"])
        if kind is None:
            if row.get("emulated"):
                ET.SubElement(case, "system-out").text = message
            continue
        element = ET.SubElement(case, kind, message=message)
        if kind == "skipped":
            continue
        element.set("type", row["status"])
        metrics = junit_metrics(row)
        if metrics:
            element.set("message", f"{message} [{metrics}]")
        element.text = "\n".join([message, *(f"{key}: {value}" for key, value in _junit_details(row))])
    suite.set("tests", str(len(cells)))
    suite.set("failures", str(counts["failed"] + counts["inconclusive"]))
    suite.set("errors", str(counts["error"]))
    suite.set("skipped", str(counts["skipped"]))
    suite.set("time", f"{total:.3f}")
    ET.indent(suite)
    return ET.tostring(suite, encoding="unicode", xml_declaration=True) + "\n"


def junit_metrics(row: Mapping[str, Any]) -> str:
    """A failure's numbers in one line: max |error| against the tolerance, SQNR, top-1, accuracy."""
    return ", ".join(f"{key} {value}" for key, value in _junit_details(row) if key != "tolerance source")


def _junit_details(row: Mapping[str, Any]) -> list[tuple[str, str]]:
    parity = row.get("parity") or {}
    tolerance = parity.get("tolerance") or {}
    details = []
    if parity:
        details += [("max_abs", number(parity.get("max_abs"), ".3g")), ("tolerance", number(tolerance.get("atol"), ".3g"))]
        if tolerance.get("rtol"):
            details.append(("rtol", number(tolerance.get("rtol"), ".3g")))
        if tolerance.get("min_sqnr_db") is not None:
            details.append(("min_sqnr_db", number(tolerance.get("min_sqnr_db"), ".1f")))
        details += [("sqnr_db", number(parity.get("sqnr_db"), ".1f")), ("cosine", number(parity.get("cosine"), ".6f"))]
        if parity.get("top1_agreement") is not None:
            details.append(("top1_agreement", number(parity.get("top1_agreement"), ".4f")))
    accuracy = row.get("accuracy") or {}
    if accuracy:
        details += [("accuracy", number(accuracy.get("artifact"), ".4f")), ("reference_accuracy", number(accuracy.get("reference"), ".4f"))]
    if tolerance.get("source"):
        details.append(("tolerance source", tolerance["source"]))
    return details


def describe_compression(summary: Mapping[str, Any]) -> list[str]:
    """The compression section as a few lines for the terminal."""
    before, after, ratios = summary["before"], summary["after"], summary["ratios"]
    methods = summary["method"].split(" + ")
    if summary.get("amount") is not None:
        steps = f", {summary['prune_steps']} steps" if summary.get("prune_steps", 1) > 1 else ""
        methods[0] += f" {summary['amount']:g} ({summary.get('scope')}{steps})"
    head = " + ".join(methods)
    lines = [
        f"compression: {head}: params {count(before['params'])} -> {count(after['params'])} ({ratios['params']}x), "
        f"nonzero {count(before['nonzero_params'])} -> {count(after['nonzero_params'])} ({ratios['nonzero_params']}x), "
        f"MACs {count(before['macs'])} -> {count(after['macs'])} ({ratios['macs']}x)",
        f"  size fp32 {count(before['size_bytes']['fp32'])}B -> {count(after['size_bytes']['fp32'])}B ({ratios['size_fp32']}x), "
        f"zipped {count(before['size_bytes']['zip'])}B -> {count(after['size_bytes']['zip'])}B ({ratios['size_zip']}x)",
    ]
    drift_ = summary["drift"]
    for label, key in (("pruned", "before_recovery"), ("recovered", "after_recovery")):
        d = drift_.get(key)
        if d:
            text = f"cosine {d['cosine']:.4f}, max |diff| {d['max_abs']:.3g}"
            if d.get("top1_agreement") is not None:
                text += f", top-1 agreement {d['top1_agreement']:.3f}"
            if d.get("accuracy") is not None:
                text += f", accuracy {d['accuracy']:.4f} (original {drift_['original_accuracy']:.4f})"
            lines.append(f"  {label} vs original ({drift_['inputs']}): {text}")
    recovery = summary.get("recovery")
    if recovery:
        rounds = f" x {recovery['rounds']} rounds" if recovery["rounds"] > 1 else ""
        lines.append(
            f"  recovery: {recovery['mode']}, {recovery['epochs']} epochs{rounds} on {recovery['samples']} samples of {recovery['data']}, "
            f"loss {recovery['loss_first_epoch']:.4g} -> {recovery['loss_last_epoch']:.4g}"
        )
    for step in summary["steps"]:
        lines.extend(f"  {step['method']}: {message}" for message in step.get("messages", ()))
    return lines
