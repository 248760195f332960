"""The ``edgex`` command as two processes: a thin supervisor and the worker that does the job.

A model file is code: it may call ``sys.exit(0)`` or ``os._exit(0)``, hang, or take all the
memory there is. Run in the process whose exit status the shell reads, such code could make
edgex return 0 having checked nothing. So the command's process only supervises: it forks a
worker before anything heavy is imported (the fork costs milliseconds), the worker runs the
command as before (``cli.main``) and tells the supervisor, over a pipe, each stage it enters and
finally ``done`` with the report it wrote. The exit status is then derived here:

- **0 only from a report**: the worker said done with 0, its report.json (or a matrix's
  results.json) was written by this run, and every requested target in it passed (read from the
  file, with the same rule as :func:`edgex.core.errors.exit_code_for`);
- a worker that ended without saying done -- any exit status, a signal, the kernel's
  out-of-memory killer -- is named with the stage it was in: exit 2 when that stage ran the
  model's own code (loading it), 3 otherwise;
- a stage with a time limit (``--timeout``: loading the model, the reference's forward passes)
  is ended by the worker itself (:func:`time_limit`); should the worker not come back (a hang
  inside native code), the supervisor ends it.

SIGINT and SIGTERM reach the worker (a terminal's Ctrl-C reaches both; a signal sent to the
supervisor alone is passed on): the worker unwinds as it always did, writing the report of what
finished, and its status (128 + signal) is the command's. The worker dies with the supervisor.

Only this module and :mod:`edgex.core.errors` are imported before the fork, so ``edgex --help``
stays fast and the supervisor stays small. The Python API and ``cli.main`` called in-process run
unsupervised (the caller's process is theirs); the model's code is still guarded there
(:func:`edgex.core.loading.user_code`).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from edgex.core.errors import EdgexError, exit_code_for, exit_code_for_cells
from edgex.core.isolation import die_with_parent

#: the worker's end of the pipe to its supervisor (None when unsupervised)
_CHANNEL: int | None = None
#: the supervisor's pid, in its worker: the pid the user started and would signal
_SUPERVISOR: int | None = None
#: how long a stage may overrun its limit before the supervisor ends the worker (the worker's
#: own limit fires first whenever Python code runs)
GRACE_S = 20.0
#: how long an interrupted worker has to write what finished before it is killed
UNWIND_S = 30.0


class StageTimeout(EdgexError):
    """A stage ran past its time limit (``--timeout``)."""

    exit_code = 3


# --------------------------------------------------------------------------- the worker's side


#: the stages the worker is in, innermost last (a stage's end announces the one around it again)
_STAGES: list[dict[str, Any]] = [{"stage": "run", "what": "working", "limit": None, "since": 0.0}]


@contextlib.contextmanager
def stage_of(stage: str, what: str, limit: float | None = None) -> Iterator[None]:
    """The block as ``stage``; the stage around it is announced again when it ends."""
    message = {"stage": stage, "what": what, "limit": limit, "since": time.time()}
    _STAGES.append(message)
    _send(message)
    try:
        yield
    finally:
        _STAGES.remove(message)
        _send(_STAGES[-1])


def reported(path: Path, targets: Sequence[str] = (), kind: str = "report") -> None:
    """The report this run wrote (report.json, or a matrix's results.json) and the targets it
    must hold a row for: the supervisor derives the exit status from the file."""
    _send({"report": str(path), "targets": list(targets), "kind": kind})


def owning(out: Path) -> None:
    """The worker holds ``out`` (``--out``) now: if it dies, the supervisor removes its leftovers."""
    _send({"out": str(out)})


def _done(code: int, parsing: bool = False) -> None:
    """The worker's last word: its exit status, and whether it ended while parsing its arguments
    (--help, --version, a usage error: no work began, so no report is owed)."""
    sys.stdout.flush()
    sys.stderr.flush()
    _send({"done": int(code), "parsing": parsing})


def command_pid() -> int:
    """The pid of the ``edgex`` command the user started (the supervisor's, in its worker)."""
    return _SUPERVISOR or os.getpid()


def _forget_channel() -> None:
    """Processes the worker forks (targets' children) are not the worker: they say nothing."""
    global _CHANNEL, _SUPERVISOR
    if _CHANNEL is not None:
        with contextlib.suppress(OSError):
            os.close(_CHANNEL)
    _CHANNEL = _SUPERVISOR = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_channel)


def _send(message: dict[str, Any]) -> None:
    if _CHANNEL is None:
        return
    try:
        os.write(_CHANNEL, (json.dumps(message) + "\n").encode())
    except OSError:  # the supervisor is gone; the worker dies with it
        pass


@contextlib.contextmanager
def time_limit(seconds: float | None, stage: str, what: str) -> Iterator[None]:
    """Run the block as ``stage`` and end it with :class:`StageTimeout` after ``seconds``.

    The limit is a SIGALRM, so it needs the main thread; elsewhere the block runs unlimited
    (a notebook's worker thread). Nested limits keep the outer one's remaining time."""
    import threading

    with stage_of(stage, what, seconds):
        if not seconds or threading.current_thread() is not threading.main_thread():
            yield
            return

        def expire(signum: int, frame: Any) -> None:
            raise StageTimeout(f"{what} ran past --timeout {seconds:g} s (the limit covers loading the model and its forward passes too; raise it, or find what hangs with --debug)")

        previous = signal.signal(signal.SIGALRM, expire)
        outer, _ = signal.getitimer(signal.ITIMER_REAL)
        signal.setitimer(signal.ITIMER_REAL, seconds if not outer else min(seconds, outer))
        started = time.monotonic()
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if outer:  # the outer limit goes on with what is left of it
                signal.setitimer(signal.ITIMER_REAL, max(0.001, outer - (time.monotonic() - started)))


# --------------------------------------------------------------------------- the supervisor's side


#: the commands whose 0 must come from the report they write, and its kind
REPORTING = {"convert": "report", "validate": "report", "demo": "report", "matrix": "results"}


def supervise(work: Callable[[], int], command: str | None = None, tidy: Callable[[Path], None] | None = None) -> int:
    """Run ``work`` (the ``command``) in a forked worker; the exit status as the module doc says.
    ``tidy(out)`` removes a dead worker's leftovers from an ``--out`` it held."""
    global _CHANNEL, _SUPERVISOR
    if not hasattr(os, "fork"):
        return work()
    started = time.time()
    oom_before = _oom_kills()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker
        os.close(read_end)
        _CHANNEL, _SUPERVISOR = write_end, os.getppid()
        die_with_parent()
        code, parsing = 3, False
        try:
            code = work()
        except SystemExit as exc:  # argparse's --help and --version (the command catches the model's)
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
            parsing = True
        except BaseException:  # the command names its own errors; anything else is named above
            code = 3
        with contextlib.suppress(BaseException):
            _done(code, parsing)
        _forget_channel()
        # the worker's own exit handlers (multiprocessing's finalizers among them) run, so nothing
        # it made is reported leaked; it never returns into its caller's code
        with contextlib.suppress(BaseException):
            import atexit

            atexit._run_exitfuncs()
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
    os.close(write_end)
    return _Supervisor(pid, read_end, started, oom_before, REPORTING.get(command or ""), tidy).run()


class _Supervisor:
    def __init__(self, pid: int, channel: int, started: float, oom_before: int | None, reporting: str | None, tidy: Callable[[Path], None] | None) -> None:
        self.pid, self.channel, self.started, self.oom_before, self.tidy = pid, channel, started, oom_before, tidy
        #: the kind of report the command must write for a 0 (None: a listing, check, explain...)
        self.reporting = reporting
        self.report: dict[str, Any] | None = None
        #: the output folders the worker held (tidied should it die)
        self.outs: list[Path] = []
        self.stage: dict[str, Any] = {"stage": "start", "what": "starting", "limit": None, "since": started}
        self.last: dict[str, Any] | None = None
        self.signalled: float | None = None
        self.ended_by_us = ""
        self._exiting = 0.0

    def run(self) -> int:
        saved = {s: signal.signal(s, self._pass_on) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            status = self._wait()
        finally:
            for signum, handler in saved.items():
                signal.signal(signum, handler)
            os.close(self.channel)
        return self._exit_code(status)

    def _pass_on(self, signum: int, frame: Any) -> None:
        """SIGINT/SIGTERM: the worker unwinds and reports what finished (a terminal's Ctrl-C has
        reached it already; a second copy is ignored there)."""
        if self.signalled is None:
            self.signalled = time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def _wait(self) -> int:
        buffer = b""
        open_channel = True
        while True:
            if open_channel:
                try:
                    ready, _, _ = select.select([self.channel], [], [], 1.0)
                except InterruptedError:
                    ready = []
                if ready:
                    chunk = os.read(self.channel, 65536)
                    if not chunk:
                        open_channel = False
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    for line in lines:
                        self._take(line)
            else:
                time.sleep(0.05)
            ended, status = os.waitpid(self.pid, os.WNOHANG)
            if ended:
                return status
            if self.last is not None and not open_channel:
                self._exiting = self._exiting or time.monotonic()
                if time.monotonic() - self._exiting > UNWIND_S:  # said done, then hung in its exit
                    os.kill(self.pid, signal.SIGKILL)
                    os.waitpid(self.pid, 0)
                    return 0
            self._overdue()

    def _take(self, line: bytes) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            return
        if "done" in message:
            self.last = message
        elif "report" in message:
            self.report = message
        elif "out" in message:
            self.outs.append(Path(message["out"]))
        elif "stage" in message:
            self.stage = message

    def _overdue(self) -> None:
        """End a worker that overran its stage's limit (or its unwinding) and did not come back."""
        now = time.monotonic()
        if self.signalled is not None and now - self.signalled > UNWIND_S:
            self._kill(f"it did not finish within {UNWIND_S:g} s of the signal")
        limit = self.stage.get("limit")
        if limit and time.time() - self.stage["since"] > limit + GRACE_S and not self.ended_by_us:
            self._kill(f"{self.stage['what']} ran past --timeout {limit:g} s and did not stop")

    def _kill(self, why: str) -> None:
        if not self.ended_by_us:
            self.ended_by_us = why
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)

    # ----------------------------------------------------------------------- the verdict

    def _exit_code(self, status: int) -> int:
        last = self.last
        if last is None or self.ended_by_us:
            return self._named_death(status)
        code = int(last["done"])
        if self.report is not None and code in (0, 1):
            return self._from_report(Path(self.report["report"]), self.report["kind"], self.report["targets"], code)
        if code == 0 and self.reporting and not last.get("parsing"):
            return _refuse("the work ended with 0 but wrote no report; nothing is proven (a bug in edgex: please report it)")
        return code

    def _from_report(self, path: Path, kind: str, targets: Sequence[str], said: int) -> int:
        try:
            if path.stat().st_mtime < self.started - 1:
                return _refuse(f"{path} was not written by this run; nothing is proven")
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            return _refuse(f"the report {path} cannot be read back ({type(exc).__name__}); nothing is proven")
        if kind == "results":  # a matrix: a row per (cell, target)
            return exit_code_for_cells(data)
        rows = data.get("targets", {})
        missing = [t for t in targets if t not in rows]
        if missing:
            return _refuse(f"the report {path} has no row for {', '.join(missing)}; nothing is proven for it")
        code = exit_code_for((row.get("status"), row.get("requested", True)) for row in rows.values())
        if not rows and said == 0:
            return _refuse(f"the report {path} holds no target; nothing was checked")
        return code

    def _named_death(self, status: int) -> int:
        for out in self.outs if self.tidy is not None else ():
            self.tidy(out)
        stage, what = self.stage["stage"], self.stage["what"]
        user_code = stage == "load"
        if self.ended_by_us:
            return _refuse(f"edgex ended its work: {self.ended_by_us}", 3)
        if os.WIFSIGNALED(status):
            signum = os.WTERMSIG(status)
            if self.signalled is not None and signum in (signal.SIGINT, signal.SIGTERM):
                return _refuse(f"interrupted by {signal.Signals(signum).name} while {what}", 128 + signum)
            name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else str(signum)
            if signum == signal.SIGKILL:
                oom = self.oom_before is not None and (_oom_kills() or 0) > self.oom_before
                cause = "the kernel's out-of-memory killer ended it" if oom else "it was killed (SIGKILL; most often the kernel's out-of-memory killer)"
                return _refuse(f"{cause} while {what}: the job needs more memory than this machine has (give a smaller --input-shape or fewer --samples); nothing was checked", 3)
            inside = " (the model's own code was running)" if user_code else ""
            return _refuse(f"the work crashed with {name} while {what}{inside}; nothing was checked", 2 if user_code else 3)
        code = os.WEXITSTATUS(status)
        if user_code:
            return _refuse(f"the model's own code ended the process with status {code} (os._exit or a C-level exit) while {what}; a model file must not exit: guard script code with `if __name__ == \"__main__\":`", 2)
        return _refuse(f"the work ended with status {code} while {what}, before writing its report; nothing was checked", 3)


def _refuse(message: str, code: int = 3) -> int:
    print(f"edgex: error: {message}", file=sys.stderr)
    return code


def _oom_kills() -> int | None:
    """The cgroup's count of out-of-memory kills (cgroup v2), to tell the OOM killer's SIGKILL."""
    try:
        for line in Path("/sys/fs/cgroup/memory.events").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return None
