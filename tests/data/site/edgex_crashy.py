"""Third-party targets that crash the process or hang while converting (for edgex's tests)."""

import os
import signal
import time

from edgex.plugins import BackendStatus, TargetSpec, UnsupportedModel, hookimpl


@hookimpl
def edgex_targets():
    return [
        TargetSpec("crashy", "segfaults while converting", (".crash",), ("fp32",)),
        TargetSpec("sleepy", "hangs while converting", (".sleep",), ("fp32",)),
        TargetSpec("picky", "takes no model with a convolution", (".picky",), ("fp32",)),
    ]


@hookimpl
def edgex_backend_status(target):
    return BackendStatus(True, "nothing")


@hookimpl
def edgex_convert(request):
    (request.workdir / "partial.bin").write_bytes(b"half an artifact")
    if request.target == "picky":
        raise UnsupportedModel("picky takes no model with a convolution")
    if request.target == "crashy":
        os.kill(os.getpid(), signal.SIGSEGV)
    time.sleep(60)
