"""The far side of a toolchain: the program edgex starts in a toolchain's own interpreter, and
the message format both sides speak.

This file runs in two places. In the user's environment it is ``edgex.core.toolchain_server``,
whose :func:`send` and :func:`receive` the client (:mod:`edgex.core.toolchains`) uses. In a
toolchain's interpreter, where edgex is not installed, it runs as a script::

    python -I toolchain_server.py MODULE_FILE IN_FD OUT_FD SANDBOX_FILE

It loads the target's module (a file that imports only what the toolchain has), refuses network
connections with edgex's own :func:`edgex.core.sandbox.offline` (loaded from ``SANDBOX_FILE``),
dies with its parent, and answers calls ``{"call": NAME, "args": [...], "kwargs": {...}}`` with
``{"result": ...}`` or ``{"error": ..., "type": ..., "traceback": ...}`` until its input closes.
The toolkit's own output goes to the inherited stdout/stderr: the target's log.

So it imports only the standard library, and numpy only when arrays cross. A message is a JSON
header and the arrays it refers to (``{"__array__": i}``), each in numpy's ``.npy`` format
without pickle, so numpy 1 and numpy 2 read each other's arrays.
"""

from __future__ import annotations

import io
import json
import os
import struct
import sys
from typing import Any, BinaryIO

_LENGTH = struct.Struct(">Q")
#: the network refusal, held for the process's life
_OFFLINE: Any = None


def send(stream: BinaryIO, message: Any) -> None:
    """Write ``message`` (JSON values, paths and numpy arrays, nested) to ``stream``."""
    arrays: list[Any] = []

    def encode(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): encode(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [encode(v) for v in value]
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        numpy = sys.modules.get("numpy")
        if numpy is not None and isinstance(value, numpy.ndarray):
            arrays.append(value)
            return {"__array__": len(arrays) - 1}
        if numpy is not None and isinstance(value, numpy.generic):
            return value.item()
        return value

    header = json.dumps({"body": encode(message), "arrays": len(arrays)}).encode()
    parts = [_LENGTH.pack(len(header)), header]
    for array in arrays:
        import numpy

        buffer = io.BytesIO()
        numpy.lib.format.write_array(buffer, numpy.ascontiguousarray(array), allow_pickle=False)
        parts += [_LENGTH.pack(buffer.getbuffer().nbytes), buffer.getvalue()]
    stream.write(b"".join(parts))
    stream.flush()


def receive(stream: BinaryIO) -> Any:
    """The next message on ``stream``; ``EOFError`` when the other side closed it."""
    header = json.loads(_exactly(stream, _LENGTH.unpack(_exactly(stream, _LENGTH.size))[0]))
    arrays = []
    for _ in range(header["arrays"]):
        import numpy

        blob = _exactly(stream, _LENGTH.unpack(_exactly(stream, _LENGTH.size))[0])
        arrays.append(numpy.lib.format.read_array(io.BytesIO(blob), allow_pickle=False))

    def decode(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"__array__"}:
                return arrays[value["__array__"]]
            return {k: decode(v) for k, v in value.items()}
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    return decode(header["body"])


def _exactly(stream: BinaryIO, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            raise EOFError("the other side closed the channel")
        data += chunk
    return data


def _load(name: str, path: str) -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass


def serve(module_file: str, in_fd: int, out_fd: int, sandbox_file: str) -> int:
    """Answer calls into ``module_file`` until the input closes."""
    import traceback

    _die_with_parent()
    global _OFFLINE
    _OFFLINE = _load("edgex_toolchain_sandbox", sandbox_file).offline()
    _OFFLINE.__enter__()  # for the process's life (held here: a collected generator would undo it)
    requests, replies = os.fdopen(in_fd, "rb"), os.fdopen(out_fd, "wb")
    try:
        module = _load("edgex_toolchain_module", module_file)
    except BaseException as exc:
        traceback.print_exc()
        send(replies, {"error": f"{type(exc).__name__}: {exc}", "type": type(exc).__name__, "traceback": traceback.format_exc()})
        return 1
    send(replies, {"ready": sys.version.split()[0]})
    while True:
        try:
            request = receive(requests)
        except EOFError:
            return 0
        try:
            result = getattr(module, request["call"])(*request.get("args", ()), **request.get("kwargs", {}))
            reply = {"result": result}
        except BaseException as exc:  # every failure goes back to the caller, with its traceback
            traceback.print_exc()
            reply = {"error": f"{type(exc).__name__}: {exc}", "type": type(exc).__name__, "traceback": traceback.format_exc()}
        sys.stdout.flush()
        sys.stderr.flush()
        send(replies, reply)


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]))
