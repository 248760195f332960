"""The compress stage: compression methods are plugins (``edgex_compressors`` /
``edgex_compress``); :mod:`edgex.core.compression.stage` runs the chosen steps in order on a copy
of the reference and reports what they changed. The compressed model then becomes the parity
reference.

This package's own import is light (the command line builds its options from
:mod:`edgex.core.compression.options` on every ``edgex --help``): the stage, with numpy and the
model helpers, is imported on first use of any of its names.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgex.core.types import CompressionStep

__all__ = ["CompressionStep"]


def __getattr__(name: str) -> Any:
    stage = importlib.import_module("edgex.core.compression.stage")
    try:
        return getattr(stage, name)
    except AttributeError:
        raise AttributeError(f"module 'edgex.core.compression' has no attribute {name!r}") from None
