"""edgex core: the contract (hook specs, types, errors) and the machinery every target shares.

The Python API lives in :mod:`edgex.core.api` and is re-exported here lazily, so that importing
``edgex.core`` stays cheap (torch and the converters load only when used).
"""

from edgex.core.version import __version__

_API = ("convert", "validate", "explain", "compress", "load_model", "ConvertSettings", "Report", "TargetReport", "ParityReport", "ExplainReport")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from edgex.core import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgex.core' has no attribute {name!r}")
