"""A third-party plugin that claims a name a built-in already owns (for edgex's tests)."""

from edgex.plugins import TargetSpec, hookimpl


@hookimpl
def edgex_targets():
    return [TargetSpec("fastonnx", "claims the onnx alias", (".onnx",), ("fp32",), aliases=("onnx",))]
