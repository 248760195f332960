"""What plugin authors import: the ``hookimpl`` marker and the types of the contract.

A third-party target is a module with ``@hookimpl`` functions, published under the ``edgex``
entry-point group (``[project.entry-points.edgex] mytarget = "edgex_mytarget.plugin"``).
See ``docs/writing_targets.md``.
"""

from importlib import metadata

import pluggy

from edgex.core.errors import BackendMissingError, TargetError, UsageError, one_line
from edgex.core.types import (
    Artifact,
    ArtifactIO,
    ArtifactTrace,
    BackendStatus,
    CompressionRequest,
    CompressionResult,
    CompressorSpec,
    ConversionRequest,
    ConversionResult,
    QuantParams,
    ReferenceModel,
    Runtime,
    StageEvent,
    TargetOption,
    TargetSpec,
    TensorBinding,
    TensorSpec,
    TracedTensor,
    Tracer,
)

hookimpl = pluggy.HookimplMarker("edgex")


def package_version(package: str) -> str | None:
    """The installed version of a distribution, ``None`` when it is not installed (no import)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None

__all__ = [
    "hookimpl",
    "one_line",
    "package_version",
    "Artifact",
    "ArtifactIO",
    "ArtifactTrace",
    "BackendMissingError",
    "BackendStatus",
    "CompressionRequest",
    "CompressionResult",
    "CompressorSpec",
    "ConversionRequest",
    "ConversionResult",
    "QuantParams",
    "ReferenceModel",
    "Runtime",
    "StageEvent",
    "TargetError",
    "TargetOption",
    "TargetSpec",
    "TensorBinding",
    "TensorSpec",
    "TracedTensor",
    "Tracer",
    "UsageError",
]
