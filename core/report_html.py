"""report.html: the one human page of a run (convert, validate, demo, matrix, explain).

The page is rendered from the report's JSON (report.json, a matrix's results.json, explain.json)
with the jinja2 templates in ``templates/``; plots are matplotlib figures inlined as SVG, so the
page is one self-contained file that opens offline (no script, no stylesheet, no font from the
network). matplotlib is optional (the ``report`` extra): without it the page is written without
plots and says so. jinja2 and matplotlib are imported only when a page is written.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from edgex.core.tables import number, size

TEMPLATES = Path(__file__).parent / "templates"
STATUS_COLOURS = {"passed": "#c8efc8", "failed": "#ffc9c9", "inconclusive": "#fff0a8", "error": "#ff9e9e", "skipped": "#e4e4e4"}
#: the width of one character of a 9-point label (matplotlib's DejaVu Sans: about 0.62 em), in inches
CHAR_INCHES = 0.08
PLOT_COLOURS = {"passed": "#3a8f3a", "failed": "#c43c3c", "inconclusive": "#c9a400", "error": "#8b1a1a", "skipped": "#999999"}


def _float(value: Any) -> float | None:
    """A report number (report.json writes inf/NaN as strings) as a float, or None."""
    try:
        return float(value) if value is not None else None
    except Exception:  # a template's missing value (jinja2's Undefined) too
        return None


# --------------------------------------------------------------------------- plots


class Plots:
    """matplotlib figures as inline SVG, or nothing (``missing`` says why) where it is not installed.

    Figures are made with the object API (``matplotlib.figure.Figure``), never pyplot: no GUI
    backend is chosen, and a caller's own pyplot state is left alone."""

    def __init__(self) -> None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            self.missing = "matplotlib is not installed (pip install 'edgex[report]'): this page has no plots"
        else:
            self.missing = ""

    def svg(self, draw: Callable[[Any], None], width: float, height: float, margins: tuple[float, float, float, float]) -> str:
        """``draw(figure)`` then the figure as an ``<svg>`` element ('' without matplotlib), marked
        as markup for the templates (not text to escape). ``margins`` (left, bottom, right, top,
        in inches) are set from the text the plot holds: a layout engine measures every label
        and took half of a report's plotting time."""
        if self.missing:
            return ""
        from markupsafe import Markup
        from matplotlib import rc_context
        from matplotlib.figure import Figure

        # text stays text (smaller than glyph outlines); the page's own font renders it
        with rc_context({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False}):
            figure = Figure(figsize=(width, height))
            left, bottom, right, top = margins
            figure.subplots_adjust(left=left / width, bottom=bottom / height, right=1 - right / width, top=1 - top / height, wspace=0.2)
            draw(figure)
            buffer = io.StringIO()
            figure.savefig(buffer, format="svg", metadata={"Date": None})
        text = buffer.getvalue()
        return Markup(text[text.index("<svg") :])  # the XML declaration and DOCTYPE do not belong inside HTML

    def error_histogram(self, histogram: Mapping[str, Any]) -> str:
        edges, counts, above = histogram["edges"], list(histogram["counts"]), int(histogram.get("above", 0))
        labels = [f"{_edge(a)}-{_edge(b)}" for a, b in zip(edges, edges[1:])] + [f">{_edge(edges[-1])}"]
        counts.append(above)
        bound = edges.index(1.0) if 1.0 in edges else len(edges) - 1

        def draw(figure: Any) -> None:
            axes = figure.subplots()
            colours = [PLOT_COLOURS["passed"] if i < bound else PLOT_COLOURS["failed"] for i in range(len(counts))]
            axes.bar(range(len(counts)), [c if c > 0 else 0 for c in counts], color=colours)
            axes.axvline(bound - 0.5, color="#333", linestyle="--", linewidth=1)
            axes.text(bound - 0.4, 0.97, "tolerance", rotation=90, va="top", fontsize=8, transform=axes.get_xaxis_transform())
            axes.set_xticks(range(len(counts)), labels, rotation=45, ha="right")
            axes.set_yscale("symlog", linthresh=1)
            axes.set_xlabel("|error| / tolerance, per element")
            axes.set_ylabel("elements")

        longest = max(len(label) for label in labels)
        return self.svg(draw, 5.2, 2.2 + 0.058 * longest, (0.75, 0.3 + 0.058 * longest, 0.1, 0.1))

    def comparison(self, names: Sequence[str], statuses: Sequence[str], series: Sequence[tuple[str, Sequence[float | None]]]) -> str:
        """One horizontal bar panel per measure (size, latency, accuracy), a bar per target."""
        shown = [(title, values) for title, values in series if any(v is not None for v in values)]
        if not shown or not names:
            return ""

        def draw(figure: Any) -> None:
            panels = figure.subplots(1, len(shown), sharey=True, squeeze=False)[0]
            colours = [PLOT_COLOURS.get(s, "#666") for s in statuses]
            for axes, (title, values) in zip(panels, shown):
                axes.barh(range(len(names)), [v if v is not None else 0 for v in values], color=colours)
                for y, v in enumerate(values):
                    axes.text(0, y, "" if v is not None else " n/a", va="center", fontsize=8)
                axes.set_title(title)
                axes.set_yticks(range(len(names)), names)
            panels[0].invert_yaxis()  # the first row on top; once: the panels share the y axis, each call flips it

        left = 0.2 + CHAR_INCHES * max(len(name) for name in names)
        return self.svg(draw, left + min(2.6 * len(shown), 9.0), 0.75 + 0.3 * len(names), (left, 0.35, 0.15, 0.3))

    def sweep(self, model: str, curves: Mapping[str, Sequence[tuple[str, float, float]]], measure: str) -> str:
        """``measure`` against artifact size, a line per target[precision] across compression presets."""

        def draw(figure: Any) -> None:
            axes = figure.subplots()
            for label, points in curves.items():
                points = sorted(points, key=lambda p: p[1])
                axes.plot([p[1] / 1024 for p in points], [p[2] for p in points], marker="o", label=label)
                for preset, x, y in points:
                    axes.annotate(preset, (x / 1024, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
            axes.set_xlabel("artifact size (KiB)")
            axes.set_ylabel(measure)
            axes.set_title(f"{model}: {measure} vs size")
            axes.legend(fontsize=7)

        return self.svg(draw, 5.5, 3.2, (0.75, 0.5, 0.15, 0.3))


def _edge(value: float) -> str:
    return f"{value:g}"


# --------------------------------------------------------------------------- why a verdict


def criteria(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The checks a target's verdict rests on: what was measured, the limit, whether it held, and
    how close it came (``use``: the share of the limit spent, > 1 a failure)."""
    checks: list[dict[str, Any]] = []
    parity = row.get("parity") or {}
    for output in parity.get("outputs") or ():
        tolerance = output.get("tolerance") or {}
        atol, rtol = _float(tolerance.get("atol")) or 0.0, _float(tolerance.get("rtol")) or 0.0
        error = _float(output.get("max_abs"))
        limit = f"<= {number(atol, '.3g')}" + (f" + {number(rtol, '.3g')} x |ref|" if rtol else "")
        inside = _float(output.get("within_tolerance"))
        use = (error / atol) if (error is not None and atol > 0 and not rtol) else None
        checks.append({"name": f"{output['name']}: max |error|", "value": number(error, ".3g"), "limit": limit, "ok": inside == 1.0, "use": use, "source": tolerance.get("source", "")})
        minimum = _float(tolerance.get("min_sqnr_db"))
        if minimum is not None:
            sqnr = _float(output.get("sqnr_db"))
            checks.append({"name": f"{output['name']}: SQNR (dB)", "value": number(sqnr, ".1f"), "limit": f">= {minimum:.1f}", "ok": sqnr is not None and sqnr >= minimum, "use": None, "source": tolerance.get("source", "")})
        if tolerance.get("problem"):
            checks.append({"name": f"{output['name']}: calibration", "value": tolerance["problem"], "limit": "", "ok": False, "use": None, "source": ""})
    accuracy = row.get("accuracy") or {}
    if "min_top1_agreement" in accuracy:
        agree = _float(accuracy.get("top1_agreement"))
        checks.append({"name": "top-1 agreement on labelled data", "value": number(agree, ".4f"), "limit": f">= {accuracy['min_top1_agreement']:g}", "ok": agree is not None and agree >= accuracy["min_top1_agreement"], "use": None, "source": "--min-top1-agreement"})
    if "max_accuracy_drop" in accuracy:
        drop = _float(accuracy.get("drop_points"))
        checks.append({"name": "accuracy drop (points)", "value": number(drop, ".2f"), "limit": f"<= {accuracy['max_accuracy_drop']:g}", "ok": drop is not None and drop <= accuracy["max_accuracy_drop"], "use": None, "source": "--max-accuracy-drop"})
    return checks


def decided_by(row: Mapping[str, Any], checks: Sequence[Mapping[str, Any]]) -> str:
    """One sentence: the criterion (or message) that decided the verdict."""
    status, messages = row.get("status"), list(row.get("messages") or ())
    failing = [c for c in checks if not c["ok"]]
    if status in ("error", "skipped", "inconclusive"):
        return next((m for m in messages if m.startswith("inconclusive")), messages[0] if messages else status or "")
    if failing:
        first = failing[0]
        return f"{first['name']} {first['value']} is not {first['limit']}"
    if status == "failed":  # a failure no listed criterion shows (fp16 overflow)
        return messages[-1] if messages else "failed"
    closest = max((c for c in checks if c["use"] is not None), key=lambda c: c["use"], default=None)
    if closest is None:
        return f"all {len(checks)} criteria met"
    return f"all {len(checks)} criteria met; closest to its limit: {closest['name']} at {closest['use']:.2g} x the tolerance"


# --------------------------------------------------------------------------- pages


def _environment() -> Any:
    import jinja2

    # a report from an older edgex may lack a key: the page shows "-" there rather than failing
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = lambda value, fmt=".4g": number(_float(value), fmt)
    env.filters["size"] = lambda value: size(value) if value else "-"
    from edgex.core.report import verdict

    env.filters["verdict"] = verdict
    env.globals["colours"] = STATUS_COLOURS
    return env


def _render(template: str, **context: Any) -> str:
    from edgex.core.version import __version__

    return _environment().get_template(template).render(version=__version__, **context)


def _confusion_rows(matrix: Sequence[Sequence[int]]) -> list[list[tuple[int, str]]]:
    """Each cell with a background: darker for more samples, red off the diagonal."""
    peak = max((c for row in matrix for c in row), default=0) or 1
    rows = []
    for i, row in enumerate(matrix):
        cells = []
        for j, c in enumerate(row):
            alpha = 0.08 + 0.8 * c / peak if c else 0.0
            colour = f"rgba(58,143,58,{alpha:.2f})" if i == j else f"rgba(196,60,60,{min(1.0, alpha * 3):.2f})"
            cells.append((c, colour if c else "transparent"))
        rows.append(cells)
    return rows


def report_page(report: Mapping[str, Any], title: str | None = None) -> str:
    """report.html for convert, validate and demo, from report.json's content."""
    plots = Plots()
    targets = []
    for name, row in (report.get("targets") or {}).items():
        checks = criteria(row)
        parity = row.get("parity") or {}
        histogram = parity.get("error_histogram")
        accuracy = row.get("accuracy") or {}
        confusion = accuracy.get("confusion") or {}
        targets.append(
            {
                "name": name,
                "row": row,
                "criteria": checks,
                "decided_by": decided_by(row, checks),
                "histogram": plots.error_histogram(histogram) if histogram else "",
                "has_histogram": bool(histogram),
                "confusion": _confusion_rows(confusion["artifact"]) if confusion.get("artifact") else None,
                "confusion_differs": bool(confusion) and confusion.get("artifact") != confusion.get("reference"),
            }
        )
    comparison = _comparison(plots, [t["name"] for t in targets], [t["row"] for t in targets])
    from edgex.core.report import describe_compression

    compression = describe_compression(report["compression"]) if report.get("compression") else []
    return _render(
        "report.html",
        title=title or f"edgex {report.get('command', 'report')}: {(report.get('model') or {}).get('spec', '')}",
        report=report,
        targets=targets,
        comparison=comparison,
        comparison_of="target",
        plots_missing=plots.missing,
        plot_count=sum(1 for t in targets if t["histogram"]) + (1 if comparison else 0),
        compression=compression,
    )


def _comparison(plots: Plots, names: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    """Size, latency and accuracy side by side, a bar per row (a run's targets, a matrix's cells)."""
    return plots.comparison(
        names,
        [row["status"] for row in rows],
        [
            ("size (KiB)", [(row.get("size_bytes") or 0) / 1024 or None for row in rows]),
            ("latency median (ms)", [_float((row.get("latency_ms") or {}).get("median")) for row in rows]),
            ("accuracy on labels", [_float((row.get("accuracy") or {}).get("artifact")) for row in rows]),
            ("top-1 agreement", [_float((row.get("parity") or {}).get("top1_agreement")) for row in rows]),
        ],
    )


def _cell_measure(row: Mapping[str, Any]) -> tuple[str, float | None]:
    """What a sweep plots for one cell: accuracy on labels where there are labels, else top-1 agreement."""
    accuracy = _float((row.get("accuracy") or {}).get("artifact"))
    if accuracy is not None:
        return "accuracy on labels", accuracy
    return "top-1 agreement with the reference", _float((row.get("parity") or {}).get("top1_agreement"))


def matrix_page(cells: Sequence[Mapping[str, Any]], message: str | None = None) -> str:
    """report.html for a matrix: the verdict grid, the sweeps' accuracy-vs-size curves, every cell's row."""
    from edgex.core.report import matrix_rows

    plots = Plots()
    groups: list[tuple[str, str]] = []
    columns: list[tuple[str, str]] = []
    grid: dict[tuple[str, str, str, str], Mapping[str, Any]] = {}
    for cell in cells:
        coords = cell["cell"]
        row = cell["targets"][coords["target"]]
        group, column = (coords["model"], coords["compression"]), (coords["target"], row.get("precision") or coords["precision"])
        groups += [group] if group not in groups else []
        columns += [column] if column not in columns else []
        grid[(*group, *column)] = {**row, "page": coords.get("page")}
    table = [
        {
            "model": model,
            "compression": preset,
            "cells": [_grid_cell(grid.get((model, preset, *column))) for column in columns],
        }
        for model, preset in groups
    ]
    several_presets = len({preset for _, preset in groups}) > 1
    cell_names = [f"{m}/{p} {t}[{q}]" if several_presets else f"{m} {t}[{q}]" for m, p, t, q in grid]
    comparison = _comparison(plots, cell_names, list(grid.values()))
    sweeps = []
    for model in dict.fromkeys(m for m, _ in groups):
        presets = [p for m, p in groups if m == model]
        if len(presets) < 2:
            continue
        curves: dict[str, list[tuple[str, float, float]]] = {}
        measure = ""
        for column in columns:
            for preset in presets:
                row = grid.get((model, preset, *column))
                if not row or not row.get("size_bytes"):
                    continue
                measure, value = _cell_measure(row)
                if value is not None:
                    curves.setdefault(f"{column[0]}[{column[1]}]", []).append((preset, float(row["size_bytes"]), value))
        if curves:
            sweeps.append({"model": model, "svg": plots.sweep(model, curves, measure)})
    return _render(
        "matrix.html",
        title="edgex matrix",
        columns=columns,
        table=table,
        sweeps=sweeps,
        comparison=comparison,
        comparison_of="cell",
        rows=matrix_rows(cells),
        plots_missing=plots.missing,
        plot_count=sum(1 for s in sweeps if s["svg"]) + (1 if comparison else 0),
        message=message or "",
    )


def _grid_cell(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if row is None:
        return None
    from edgex.core.report import verdict

    label, value = _cell_measure(row)
    return {
        "status": row["status"],
        "verdict": verdict(row),
        "size": size(row["size_bytes"]) if row.get("size_bytes") else "-",
        "measure": f"{'acc' if label.startswith('accuracy') else 'top-1'} {value:.3f}" if value is not None and math.isfinite(value) else "",
        "title": "; ".join(row.get("messages") or []),
        "page": row.get("page"),  # the group's own page: histograms, comparisons, confusion matrix
    }


def explain_page(explain: Mapping[str, Any]) -> str:
    """explain.html: explain's verdict and its per-layer table, on the same page base (from explain.json's content)."""
    return _render("explain.html", title=f"edgex explain: {(explain.get('model') or {}).get('spec', '')}", explain=explain, plots_missing="", plot_count=0)
