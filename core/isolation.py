"""Run one target's convert-and-run in a child process.

Converters and runtimes crash whole processes (onnx2tf segfaults on some LSTMs; a TFLM arena
overrun can abort), so each target works in a forked child: a crash becomes that target's
``error`` status and the other targets still run. The child writes its converters' chatter to
a log file instead of the terminal.

Each top-level child leads its own process group (a converter's own subprocesses and nested
isolated children join it), so the parent ends all of it at once -- on a timeout, a crash, or
SIGINT/SIGTERM (:class:`Interrupted`) -- and a Ctrl-C in the terminal reaches only the parent,
which decides. A child also dies with its parent (``PR_SET_PDEATHSIG``) if the parent is killed
outright.

Torch's OpenMP pool does not survive ``fork``: the child runs torch single-threaded (ONNX
Runtime, TensorFlow and LiteRT keep their own thread pools), and gets a JAX MLIR thread pool of
its own (litert-torch lowers through JAX; the parent's pool has threads once it converted).
``EDGEX_ISOLATION=none`` runs targets in-process instead (the default where ``fork`` is unsafe,
i.e. not on Linux).
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import os
import signal
import sys
import time
import traceback
from typing import Any, Callable, Iterator

from edgex.core.errors import EdgexError, TargetError, is_unsupported_model

#: set in a forked child: its own isolated work stays in its process group
_IN_CHILD = False

#: thread pools inherited from the parent, whose threads did not survive the fork: destroying one
#: would wait on them forever, so the child keeps them
_DEAD_POOLS: list[Any] = []


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM asked the run to end (a KeyboardInterrupt, so every cleanup path that
    handles Ctrl-C handles both); ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def interruption(exc: BaseException) -> Interrupted:
    """``exc`` as an :class:`Interrupted` (a plain KeyboardInterrupt is SIGINT)."""
    return exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)


def _end_run_on_signal(signum: int, frame: Any) -> None:
    """SIGINT/SIGTERM: unwind the run (children killed, temporary folders removed, finished
    targets reported); further signals are ignored so that they cannot cut that short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(signum)


def end_run_on_signals() -> dict[int, Any]:
    """Make SIGINT and SIGTERM raise :class:`Interrupted` in this process (the CLI, a matrix
    worker); returns the handlers to restore (the CLI may run in a host process: a test, a
    notebook). Only the main thread can take signals: elsewhere nothing changes."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in saved:
        signal.signal(signum, _end_run_on_signal)
    return saved


def die_with_parent() -> None:
    """This process is killed by the kernel when its parent dies, even by SIGKILL (Linux)."""
    _die_with_parent(os.getppid())


def _die_with_parent(parent: int) -> None:
    """Linux: the kernel kills this child when its parent dies (even by SIGKILL)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@contextlib.contextmanager
def a_core_for_the_child() -> Iterator[None]:
    """The parent's torch work on one core fewer while targets convert in children.

    A converting child runs torch on one thread (``_child``) and is what the run waits for; the
    parent meanwhile computes the reference outputs, the int8 calibration and the verdicts. With
    torch's default of a thread per core, on a 2-core machine the parent takes half the child's
    core: a ResNet-18 at int8 on onnx, jetson and openvino took 19.8 s so and 17.9 s with the
    parent on one thread (benchmarks/shared_export.py)."""
    torch = sys.modules.get("torch")
    if torch is None or isolation_mode() != "fork":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads - 1))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def isolation_mode() -> str:
    default = "fork" if sys.platform.startswith("linux") else "none"
    mode = os.environ.get("EDGEX_ISOLATION", default)
    return mode if mode in ("fork", "none") else default


class RemoteError(TargetError):
    """An exception raised inside the child, carried back with its traceback text."""

    def __init__(self, message: str, remote_traceback: str, exit_code: int, unsupported_model: bool = False):
        super().__init__(message)
        self.remote_traceback = remote_traceback
        self.exit_code = exit_code
        self.unsupported_model = unsupported_model


def describe_exit(code: int | None) -> str:
    """How a child process ended, in words (``exitcode`` of a multiprocessing process)."""
    if code is None:
        return "did not finish"
    if code < 0:
        try:
            return f"crashed with signal {signal.Signals(-code).name}"
        except ValueError:
            return f"crashed with signal {-code}"
    return f"exited with status {code}"


def _child(conn: Any, work: Callable[[Callable[[str, Any], None]], Any], log_path: str | None, parent: int, own_group: bool) -> None:
    global _IN_CHILD
    _IN_CHILD = True
    # the parent's SIGINT/SIGTERM handlers end the run; in a child the parent does the ending
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if own_group:
        try:
            os.setpgid(0, 0)
        except OSError:
            pass
    _die_with_parent(parent)
    try:
        # OpenMP pools do not survive fork (the first parallel region hangs): one thread each
        if "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(1)
        try:
            from threadpoolctl import threadpool_limits

            threadpool_limits(limits=1)
        except ImportError:
            pass
        _fresh_mlir_thread_pool()
        if log_path:
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
            # Python's own streams too: the parent may have replaced them (pytest's capture, Jupyter)
            sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
            sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
            faulthandler.enable(2)  # a crash leaves its Python stack in the target's log
        result = work(lambda kind, payload: conn.send(("event", kind, payload)))
        conn.send(("result", result))
    except BaseException as exc:  # everything goes back to the parent
        traceback.print_exc()  # into the target's log
        message = exc.message if isinstance(exc, EdgexError) else f"{type(exc).__name__}: {exc}"
        code = exc.exit_code if isinstance(exc, EdgexError) else 3
        conn.send(("error", message.strip().splitlines()[0] if message.strip() else type(exc).__name__, traceback.format_exc(), code, is_unsupported_model(exc)))
    finally:
        conn.close()


def _fresh_mlir_thread_pool() -> None:
    """JAX's MLIR contexts share one thread pool (litert-torch lowers through JAX). Once the parent
    has converted with litert-torch, that pool has threads, which the fork did not copy: the child's
    first MLIR verification would wait on them forever. The child gets a pool of its own."""
    mlir = sys.modules.get("jax._src.interpreters.mlir")
    inherited = getattr(mlir, "global_thread_pool", None)
    if inherited is not None:
        _DEAD_POOLS.append(inherited)
        mlir.global_thread_pool = type(inherited)()


class Isolated:
    """A unit of work started in a child process (or deferred, when isolation is off)."""

    def __init__(self, work: Callable[[Callable[[str, Any], None]], Any], what: str, timeout: float | None, log_path: str | None):
        self.work, self.what, self.timeout, self.log_path = work, what, timeout, log_path
        self.started = time.monotonic()
        self.process = self.conn = None
        if isolation_mode() == "fork":
            import multiprocessing

            context = multiprocessing.get_context("fork")
            self.conn, child_conn = context.Pipe(duplex=False)
            # not daemonic: a target may isolate its own crash-prone steps (a converter) with a
            # nested start_isolated, which multiprocessing forbids in daemonic processes; wait()
            # and cancel() still end the child whatever happens
            self.own_group = not _IN_CHILD
            self.process = context.Process(target=_child, args=(child_conn, work, log_path, os.getpid(), self.own_group), daemon=False)
            # the child must never garbage-collect the parent's objects: destroying a runtime
            # session made here (onnxruntime joins its worker threads, which a forked child does
            # not have) hangs the child forever. Frozen objects are never collected.
            gc.freeze()
            try:
                self.process.start()
            finally:
                # in a child, everything it was forked with is frozen and must stay so: unfreezing
                # after a nested start (a converter path) let the child collect an onnxruntime
                # session its parent had left for the garbage collector, and hang (seen under
                # pytest-xdist, whose workers run many conversions in one process)
                if not _IN_CHILD:
                    gc.unfreeze()
            child_conn.close()
            if self.own_group:
                try:  # also here: the group exists before the parent may need to kill it
                    os.setpgid(self.process.pid, self.process.pid)
                except OSError:
                    pass

    def wait(self, on_event: Callable[[str, Any], None] | None = None) -> Any:
        """The work's result; events the child sent are handed to ``on_event`` on the way.

        Raises :class:`RemoteError` for an exception in the child and :class:`TargetError` for
        a crash or a timeout (counted from the start).
        """
        on_event = on_event or (lambda kind, payload: None)
        if self.process is None:
            return self.work(on_event)
        deadline = None if self.timeout is None else self.started + self.timeout
        try:
            while True:
                remaining = 3600.0 if deadline is None else max(0.0, deadline - time.monotonic())
                if not self.conn.poll(remaining):
                    if deadline is not None and time.monotonic() >= deadline:
                        raise TargetError(f"{self.what} timed out after {self.timeout:g} s")
                    continue
                try:
                    message = self.conn.recv()
                except EOFError:
                    self.process.join(5)
                    log = f" (log: {self.log_path})" if self.log_path else ""
                    raise TargetError(f"{self.what} {describe_exit(self.process.exitcode)}{log}") from None
                if message[0] == "event":
                    on_event(message[1], message[2])
                elif message[0] == "result":
                    return message[1]
                else:
                    _, text, remote_tb, code, unsupported = message
                    raise RemoteError(text, remote_tb, code, unsupported)
        except KeyboardInterrupt:  # SIGINT/SIGTERM: end the child and what it started, now
            self.cancel()
            raise
        finally:
            self.conn.close()
            if self.process.is_alive():
                self.process.join(2)
            self.cancel()

    def cancel(self) -> None:
        """Stop the child and its process group (its result is no longer wanted)."""
        if self.process is None:
            return
        if self.own_group:
            _kill_group(self.process.pid)
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()


def start_isolated(
    work: Callable[[Callable[[str, Any], None]], Any],
    *,
    what: str,
    timeout: float | None = None,
    log_path: str | None = None,
) -> Isolated:
    """Start ``work(send)`` in a child (or in-process at ``wait``, per :func:`isolation_mode`).

    ``work`` may call ``send(kind, payload)`` to report progress. The parent can go on with
    other work (computing reference outputs, say) and collect the result with ``wait``.
    """
    return Isolated(work, what, timeout, log_path)
