"""Everything a target author imports: the ``hookimpl`` marker, the types and errors of the
contract, and the helpers the built-in targets use themselves.

A third-party target is a module with ``@hookimpl`` functions, published under the ``edgex``
entry-point group (``[project.entry-points.edgex] mytarget = "edgex_mytarget.plugin"``).
See ``docs/writing_targets.md``. The built-in targets (``edgex.targets``) import only from here,
so this module is the whole plugin-facing surface of edgex.

Importing it stays cheap (``edgex targets`` imports every plugin): the helpers that need numpy or
torch (``export_onnx``, ``file_sha256``, ``convert_opset``, ``onnx_node_scope``, ``onnx_node_modules``, ``ExportStore``, ``infer_permutation``, ``layout_name``, ``match_names``, ``match_outputs``, ``to_artifact``,
``from_artifact``, ``reference_outputs``, ``output_error``, ``simulated_floor``, ``aten_reach``) load on
first use.
"""

from __future__ import annotations

from importlib import metadata
from typing import TYPE_CHECKING, Any

import pluggy

from edgex.core.version import __version__
from edgex.core.errors import BackendMissingError, EdgexError, TargetError, UnsupportedModel, UsageError, one_line
from edgex.core.isolation import RemoteError, start_isolated
from edgex.core.sandbox import contained, offline
from edgex.core.types import (
    AVERAGE_POOLS,
    Artifact,
    ArtifactIO,
    ArtifactTrace,
    BackendStatus,
    CompressionRequest,
    CompressionResult,
    CompressorSpec,
    ModelOperators,
    OperatorCheck,
    OperatorFinding,
    OperatorUse,
    ConversionRequest,
    ConversionResult,
    QuantParams,
    ReferenceModel,
    Runtime,
    StageEvent,
    TargetOption,
    TargetSpec,
    TensorBinding,
    ToolchainSpec,
    TensorSpec,
    TracedTensor,
    Tracer,
    WIDER_TYPES,
    WiderLayers,
)

if TYPE_CHECKING:
    from edgex.core.check import aten_reach
    from edgex.core.exports import ExportStore, convert_opset, export_onnx, onnx_node_modules, onnx_node_scope
    from edgex.core.loading import file_sha256
    from edgex.core.layout import from_artifact, infer_permutation, layout_name, match_names, match_outputs, to_artifact
    from edgex.core.parity import output_error, reference_outputs
    from edgex.core.quant_reference import simulated_floor
    from edgex.core.toolchains import ToolchainError

hookimpl = pluggy.HookimplMarker("edgex")

#: helpers loaded on first use, by the module that holds them (they import numpy or torch)
_LAZY = {
    "ToolchainError": "edgex.core.toolchains",
    "aten_reach": "edgex.core.check",
    "convert_opset": "edgex.core.exports",
    "export_onnx": "edgex.core.exports",
    "file_sha256": "edgex.core.loading",
    "onnx_node_modules": "edgex.core.exports",
    "onnx_node_scope": "edgex.core.exports",
    "ExportStore": "edgex.core.exports",
    "from_artifact": "edgex.core.layout",
    "infer_permutation": "edgex.core.layout",
    "layout_name": "edgex.core.layout",
    "match_names": "edgex.core.layout",
    "match_outputs": "edgex.core.layout",
    "to_artifact": "edgex.core.layout",
    "output_error": "edgex.core.parity",
    "reference_outputs": "edgex.core.parity",
    "simulated_floor": "edgex.core.quant_reference",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgex.plugins' has no attribute {name!r}")


def package_version(package: str) -> str | None:
    """The installed version of a distribution, ``None`` when it is not installed (no import)."""
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def import_native(name: str) -> tuple[Any, bool]:
    """Import the extension module ``name`` bound to its own bundled libraries, once per process.

    Returns the module and whether this call loaded it so. A wheel's extension that bundles its
    own libgomp or protobuf otherwise binds to the copy torch (``RTLD_GLOBAL``), TensorFlow or
    coremltools loaded first: MNN's converter then aborts on import, and ncnn's OpenMP team never
    returns in a child forked after torch started its threads. ``RTLD_DEEPBIND`` (Linux) makes
    the extension resolve its own symbols first. ``False`` when the process had imported it before
    (bound however it was), or on a platform without ``RTLD_DEEPBIND``.
    """
    import importlib
    import os
    import sys

    if name in sys.modules:
        return sys.modules[name], False
    deepbind = getattr(os, "RTLD_DEEPBIND", 0)
    flags = sys.getdlopenflags()
    sys.setdlopenflags(os.RTLD_NOW | deepbind)
    try:
        return importlib.import_module(name), bool(deepbind)
    finally:
        sys.setdlopenflags(flags)


def toolchain(spec: ToolchainSpec) -> Any:
    """The environment ``spec`` names on this machine (``edgex.core.toolchains.Toolchain``):
    ``.built``, ``.require()`` (the one-line error naming ``edgex toolchains build``), and
    ``.start(module_file)``, whose ``call(function, *args)`` runs a function of that file in the
    toolchain's interpreter (files, JSON values and numpy arrays cross; errors come back as
    ``ToolchainError``). Call it from the target's hooks, which run in its isolated child."""
    from edgex.core.toolchains import locate

    return locate(spec)


def target_status(name: str) -> BackendStatus:
    """Whether another target's backend is here, as its own plugin answers (a target built on
    another one's conversion asks this instead of calling that plugin's hook)."""
    from edgex.core.plugin_manager import get_manager

    return get_manager().backend_status(name)


def target_check(name: str, operators: ModelOperators, precision: str) -> OperatorCheck | None:
    """How another target judges these operators (``edgex check``), as its own plugin answers: a
    target whose conversion goes through another one's (an ONNX route) asks this."""
    from edgex.core.plugin_manager import get_manager

    return get_manager().check_operators(name, operators, precision)


__all__ = [
    "__version__",
    "AVERAGE_POOLS",
    "hookimpl",
    "import_native",
    "aten_reach",
    "contained",
    "convert_opset",
    "export_onnx",
    "file_sha256",
    "from_artifact",
    "infer_permutation",
    "layout_name",
    "match_names",
    "match_outputs",
    "offline",
    "onnx_node_modules",
    "onnx_node_scope",
    "output_error",
    "one_line",
    "package_version",
    "reference_outputs",
    "simulated_floor",
    "start_isolated",
    "target_check",
    "to_artifact",
    "target_status",
    "toolchain",
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
    "EdgexError",
    "ExportStore",
    "ModelOperators",
    "OperatorCheck",
    "OperatorFinding",
    "OperatorUse",
    "QuantParams",
    "ReferenceModel",
    "RemoteError",
    "Runtime",
    "StageEvent",
    "TargetError",
    "TargetOption",
    "TargetSpec",
    "TensorBinding",
    "TensorSpec",
    "ToolchainError",
    "ToolchainSpec",
    "TracedTensor",
    "Tracer",
    "WIDER_TYPES",
    "WiderLayers",
    "UnsupportedModel",
    "UsageError",
]
