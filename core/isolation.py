"""Run one target's convert-and-run in a child process.

Converters and runtimes crash whole processes (onnx2tf segfaults on some LSTMs; a TFLM arena
overrun can abort), so each target works in a forked child: a crash becomes that target's
``error`` status and the other targets still run. The child writes its converters' chatter to
a log file instead of the terminal.

Torch's OpenMP pool does not survive ``fork``: the child runs torch single-threaded (ONNX
Runtime, TensorFlow and LiteRT keep their own thread pools). ``EDGEX_ISOLATION=none`` runs
targets in-process instead (the default where ``fork`` is unsafe, i.e. not on Linux).
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from typing import Any, Callable

from edgex.core.errors import EdgexError, TargetError


def isolation_mode() -> str:
    default = "fork" if sys.platform.startswith("linux") else "none"
    mode = os.environ.get("EDGEX_ISOLATION", default)
    return mode if mode in ("fork", "none") else default


class RemoteError(TargetError):
    """An exception raised inside the child, carried back with its traceback text."""

    def __init__(self, message: str, remote_traceback: str, exit_code: int):
        super().__init__(message)
        self.remote_traceback = remote_traceback
        self.exit_code = exit_code


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "did not finish"
    if code < 0:
        try:
            return f"crashed with signal {signal.Signals(-code).name}"
        except ValueError:
            return f"crashed with signal {-code}"
    return f"exited with status {code}"


def _child(conn: Any, work: Callable[[Callable[[str, Any], None]], Any], log_path: str | None) -> None:
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    if log_path:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
    try:
        result = work(lambda kind, payload: conn.send(("event", kind, payload)))
        conn.send(("result", result))
    except BaseException as exc:  # everything goes back to the parent
        message = exc.message if isinstance(exc, EdgexError) else f"{type(exc).__name__}: {exc}"
        code = exc.exit_code if isinstance(exc, EdgexError) else 3
        conn.send(("error", message.strip().splitlines()[0] if message.strip() else type(exc).__name__, traceback.format_exc(), code))
    finally:
        conn.close()


def run_isolated(
    work: Callable[[Callable[[str, Any], None]], Any],
    *,
    what: str,
    on_event: Callable[[str, Any], None] | None = None,
    timeout: float | None = None,
    log_path: str | None = None,
) -> Any:
    """Run ``work(send)`` in a child (or in-process, per :func:`isolation_mode`).

    ``work`` may call ``send(kind, payload)`` to report progress; the parent hands each event
    to ``on_event``. Returns what ``work`` returns; raises :class:`RemoteError` for an exception
    in the child and :class:`TargetError` for a crash or a timeout.
    """
    on_event = on_event or (lambda kind, payload: None)
    if isolation_mode() == "none":
        return work(on_event)

    import multiprocessing

    context = multiprocessing.get_context("fork")
    parent_conn, child_conn = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(child_conn, work, log_path), daemon=True)
    process.start()
    child_conn.close()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not parent_conn.poll(remaining if remaining is not None else 3600):
                if deadline is not None and time.monotonic() >= deadline:
                    raise TargetError(f"{what} timed out after {timeout:g} s")
                continue
            try:
                message = parent_conn.recv()
            except EOFError:
                process.join(5)
                raise TargetError(f"{what} {_describe_exit(process.exitcode)}" + (f" (log: {log_path})" if log_path else "")) from None
            if message[0] == "event":
                on_event(message[1], message[2])
            elif message[0] == "result":
                return message[1]
            else:
                _, text, remote_tb, code = message
                raise RemoteError(text, remote_tb, code)
    finally:
        parent_conn.close()
        if process.is_alive():
            process.join(2)
        if process.is_alive():
            process.kill()
            process.join()
