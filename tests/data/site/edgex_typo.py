"""A third-party plugin implementing a hook that does not exist (for edgex's tests)."""

from edgex.plugins import hookimpl


@hookimpl
def edgex_targets():
    return []


@hookimpl
def edgex_convrt(request):  # misspelt: edgex_convert
    return None
