"""A third-party target whose runtime is not installed (for edgex's tests)."""

from edgex.plugins import BackendStatus, TargetSpec, hookimpl


@hookimpl
def edgex_targets():
    return [TargetSpec("ghost", "needs a runtime nobody installed", (".ghost",), ("fp32",))]


@hookimpl
def edgex_backend_status(target):
    return BackendStatus(False, "ghost-runtime", "pip install ghost-runtime", "ghost_runtime not installed")
