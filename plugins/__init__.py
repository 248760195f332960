"""What plugin authors import: the ``hookimpl`` marker and the types of the contract.

A third-party target is a module with ``@hookimpl`` functions, published under the ``edgex``
entry-point group (``[project.entry-points.edgex] mytarget = "edgex_mytarget.plugin"``).
See ``docs/writing_targets.md``.
"""

import pluggy

from edgex.core.errors import BackendMissingError, TargetError, UsageError
from edgex.core.types import (
    Artifact,
    ArtifactIO,
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
)

hookimpl = pluggy.HookimplMarker("edgex")

__all__ = [
    "hookimpl",
    "Artifact",
    "ArtifactIO",
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
    "UsageError",
]
