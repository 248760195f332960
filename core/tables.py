"""The terminal's tables and numbers: one aligned-column printer for every command
(``edgex targets``, the convert/validate report, ``edgex explain``)."""

from __future__ import annotations

import math
from typing import Sequence


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> list[str]:
    """Left-aligned columns under ``header``, a dashed rule beneath it, trailing blanks trimmed."""
    cells = [[str(c) for c in header], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def number(value: float | None, spec: str) -> str:
    """``format(value, spec)``, with "-" for no value and "inf" for a non-finite one (report.json
    writes those as strings: "inf" read back from a file is one too)."""
    if value is None:
        return "-"
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value
    if isinstance(value, float) and not math.isfinite(value):
        return "inf"
    return format(value, spec)


def size(n: float) -> str:
    """A byte count as "512 B", "1.5 KB", "3.2 MB"."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def count(n: object) -> str:
    """A parameter or MAC count as "23.5k", "11.7M" ("?" when not a number)."""
    if not isinstance(n, (int, float)):
        return "?"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"
