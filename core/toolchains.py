"""Toolchain environments: a Python environment of its own for a target whose vendor toolkit
pins packages the user's environment cannot hold (rknn-toolkit2 wants torch <= 2.4 and numpy 1).

A target declares one (:class:`edgex.core.types.ToolchainSpec`, ``TargetSpec.toolchain``).
``edgex toolchains build NAME`` makes it -- a venv and ``pip install`` of its requirements, the
only edgex step that uses the package registry; ``convert`` never builds one. The target then
runs its conversion and runtime in the toolchain's interpreter (:meth:`Toolchain.start`), from
inside its isolated child: the same process group, time limits and signals as every target,
network refused there too, files and arrays crossing the boundary, the verdict core's.

Where they live: ``EDGEX_TOOLCHAINS``, else ``$XDG_CACHE_HOME/edgex/toolchains``, else
``~/.cache/edgex/toolchains``. Each is a folder ``NAME-HASH`` (the hash of its spec, the Python
version and the platform: a changed spec gets a new environment). ``edgex-toolchain.json`` is
written last: a folder without it is an interrupted or failed build, never used, and the next
``build`` starts it again. A lock file beside it keeps two builds apart. The user's own
environment is never touched: pip runs as the toolchain's interpreter.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from edgex.core.errors import BackendMissingError, TargetError, UsageError
from edgex.core.types import ToolchainSpec

#: the file a finished build writes last
STAMP = "edgex-toolchain.json"
#: bumped when the layout of an environment changes: every toolchain is then built anew
FORMAT = 1
_SERVER = Path(__file__).with_name("toolchain_server.py")
_SANDBOX = Path(__file__).with_name("sandbox.py")
#: pip's words when the registry cannot be reached
#: (at -vv, pip logs each index it could not fetch: "Could not fetch URL ...: connection error")
_NO_REGISTRY = re.compile(r"Could not fetch URL .*connection error|NewConnectionError|Failed to establish a new connection|Temporary failure in name resolution|Name or service not known|Network is unreachable|Connection refused|ConnectTimeoutError|Max retries exceeded|ProxyError|No route to host")


def root() -> Path:
    """The folder that holds every toolchain (the user's cache, even inside a run's sandbox)."""
    from edgex.core.sandbox import outside_env

    explicit = os.environ.get("EDGEX_TOOLCHAINS")
    if explicit:
        return Path(explicit).expanduser().resolve()
    cache = outside_env("XDG_CACHE_HOME")
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "edgex" / "toolchains"


@dataclass(frozen=True)
class Toolchain:
    """One toolchain environment on this machine, built or not."""

    spec: ToolchainSpec
    #: the interpreter the environment is made from, and its "X.Y" version
    base_python: str
    version: str
    path: Path

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def stamp(self) -> Path:
        return self.path / STAMP

    @property
    def built(self) -> bool:
        return self.stamp.is_file()

    @property
    def log(self) -> Path:
        """pip's output of the last build."""
        return self.path.with_name(self.path.name + ".build.log")

    def require(self) -> "Toolchain":
        """This toolchain, built; else the one-line error naming the command that builds it."""
        if not self.built:
            raise BackendMissingError(f"toolchain {self.spec.name!r} is not built; build it once with: edgex toolchains build {self.spec.name}")
        return self

    def start(self, module_file: str | Path, *, what: str | None = None) -> "ToolchainProcess":
        """Start ``module_file`` (it imports only what the toolchain holds) in the toolchain's
        interpreter; :meth:`ToolchainProcess.call` runs its functions there."""
        return ToolchainProcess(self.require(), Path(module_file), what or f"the {self.spec.name} toolchain")


def _hash(spec: ToolchainSpec, version: str) -> str:
    identity = {"format": FORMAT, "requirements": list(spec.requirements), "system": [list(s) for s in spec.system], "python": version, "platform": sysconfig.get_platform()}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def _interpreter(spec: ToolchainSpec) -> tuple[str, str]:
    """The interpreter to build from and its "X.Y": edgex's own when the spec takes its version,
    else the first acceptable ``pythonX.Y`` on PATH."""
    own = f"{sys.version_info.major}.{sys.version_info.minor}"
    if not spec.python or own in spec.python:
        return getattr(sys, "_base_executable", None) or sys.executable, own
    for version in spec.python:
        found = shutil.which(f"python{version}")
        if found:
            return found, version
    return "", spec.python[0]


def locate(spec: ToolchainSpec) -> Toolchain:
    """Where ``spec``'s environment is (or would be) on this machine; nothing is built."""
    base, version = _interpreter(spec)
    return Toolchain(spec, base, version, root() / f"{spec.name}-{_hash(spec, version)}")


# --------------------------------------------------------------------------- building


@contextlib.contextmanager
def _lock(path: Path, say: Any) -> Iterator[None]:
    import fcntl

    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(f"waiting for another build of {path.name[: -len('.lock')]} to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def missing_system(spec: ToolchainSpec) -> list[str]:
    """The system libraries of ``spec`` this machine lacks, each with how to install it."""
    import ctypes

    missing = []
    for library, how in spec.system:
        try:
            ctypes.CDLL(library)
        except OSError:
            missing.append(f"{library} ({how})")
    return missing


def build(spec: ToolchainSpec, say: Any = print) -> tuple[Toolchain, bool]:
    """Make ``spec``'s environment unless it is built; returns it and whether this call built it.

    A failed or interrupted build leaves nothing but its log: the next call starts again."""
    toolchain = locate(spec)
    if toolchain.built:
        return toolchain, False
    if not toolchain.base_python:
        raise BackendMissingError(f"toolchain {spec.name!r} needs Python {' or '.join(spec.python)}, and no python{spec.python[0]} is on PATH; install one (e.g. apt install python{spec.python[0]}-venv) and build again")
    missing = missing_system(spec)
    if missing:
        raise BackendMissingError(f"toolchain {spec.name!r} needs system libraries pip cannot install: {', '.join(missing)}")
    toolchain.path.parent.mkdir(parents=True, exist_ok=True)
    with _lock(toolchain.path.with_name(toolchain.path.name + ".lock"), say):
        if toolchain.built:  # another build finished while this one waited
            return toolchain, False
        if toolchain.path.exists():
            say(f"removing an unfinished build of {spec.name} (no {STAMP}): {toolchain.path}")
            shutil.rmtree(toolchain.path)
        say(f"building toolchain {spec.name} ({', '.join(spec.requirements)}, Python {toolchain.version}) in {toolchain.path}; pip's log: {toolchain.log}")
        started = time.monotonic()
        try:
            with open(toolchain.log, "w") as log:
                _step(spec, [toolchain.base_python, "-m", "venv", str(toolchain.path)], log, "creating the environment")
                if spec.requirements:
                    _step(spec, [str(toolchain.python), "-m", "pip", "install", "-vv", "--disable-pip-version-check", "--no-input", *spec.requirements], log, "pip install")
            _write_stamp(toolchain, time.monotonic() - started)
        except BaseException:
            shutil.rmtree(toolchain.path, ignore_errors=True)
            raise
    return toolchain, True


def _step(spec: ToolchainSpec, argv: list[str], log: Any, what: str) -> None:
    log.write(f"$ {' '.join(argv)}\n")
    log.flush()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV", "VIRTUAL_ENV")}
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    try:
        code = process.wait()
    except BaseException:  # SIGINT/SIGTERM: pip ends with the build
        process.kill()
        process.wait()
        raise
    if code == 0:
        return
    log.flush()
    text = Path(log.name).read_text(errors="replace")
    again = f"run `edgex toolchains build {spec.name}` again"
    if code < 0:
        raise TargetError(f"toolchain {spec.name}: {what} was killed ({signal.Signals(-code).name}); nothing was kept; {again}")
    unreachable = _NO_REGISTRY.search(text)
    if unreachable:
        url = re.search(r"Could not fetch URL (\S+): connection error", text)
        where = f"{url.group(1)}: connection error" if url else unreachable.group(0)
        raise TargetError(f"toolchain {spec.name}: the package registry cannot be reached ({where}); nothing was kept; connect to it, or point pip at a mirror (PIP_INDEX_URL), then {again}")
    raise TargetError(f"toolchain {spec.name}: {what} failed ({_last_line(text)}); nothing was kept; log: {log.name}")


def _last_line(text: str) -> str:
    """pip's last ERROR line (else its last line), shortened."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = ([line for line in lines if line.startswith("ERROR")] or lines or ["no output"])[-1]
    return line if len(line) <= 240 else line[:237] + "..."


def _write_stamp(toolchain: Toolchain, seconds: float) -> None:
    freeze = subprocess.run([str(toolchain.python), "-m", "pip", "freeze", "--disable-pip-version-check"], capture_output=True, text=True)
    stamp = {
        "name": toolchain.spec.name,
        "requirements": list(toolchain.spec.requirements),
        "python": toolchain.version,
        "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(seconds, 1),
        "packages": freeze.stdout.split(),
    }
    partial = toolchain.stamp.with_suffix(".partial")
    partial.write_text(json.dumps(stamp, indent=2) + "\n")
    os.replace(partial, toolchain.stamp)


def remove(name: str) -> list[Path]:
    """Remove every environment of toolchain ``name`` (any spec), with its log and lock."""
    removed = folders(name)
    for path in removed:
        with _lock(path.with_name(path.name + ".lock"), print):
            shutil.rmtree(path, ignore_errors=True)
            path.with_name(path.name + ".build.log").unlink(missing_ok=True)
        path.with_name(path.name + ".lock").unlink(missing_ok=True)
    return removed


def folders(name: str) -> list[Path]:
    """Every environment folder of toolchain ``name`` on this machine (built, stale or unfinished)."""
    base = root()
    if not base.is_dir():
        return []
    return sorted(p for p in base.glob(f"{name}-*") if p.is_dir() and re.fullmatch(rf"{re.escape(name)}-[0-9a-f]{{12}}", p.name))


# --------------------------------------------------------------------------- running in one


class ToolchainError(TargetError):
    """A call into a toolchain raised: its message, its type's name and its traceback."""

    def __init__(self, message: str, remote_type: str = "", remote_traceback: str = ""):
        super().__init__(message)
        self.remote_type, self.remote_traceback = remote_type, remote_traceback


class ToolchainProcess:
    """A target's module running in its toolchain's interpreter (see ``toolchain_server``).

    Started from the target's isolated child, it joins that child's process group (a timeout or
    a signal ends both), dies with it, inherits its log as stdout/stderr and its environment
    (TMPDIR and the caches in the run's scratch), and refuses network connections."""

    def __init__(self, toolchain: Toolchain, module_file: Path, what: str):
        from edgex.core import toolchain_server

        self.toolchain, self.what, self._wire = toolchain, what, toolchain_server
        to_child, from_parent = os.pipe()
        to_parent, from_child = os.pipe()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
        sys.stdout.flush()
        sys.stderr.flush()
        self.process = subprocess.Popen(
            [str(toolchain.python), "-I", str(_SERVER), str(module_file), str(to_child), str(from_child), str(_SANDBOX)],
            pass_fds=(to_child, from_child),
            stdin=subprocess.DEVNULL,
            env=env,
        )
        os.close(to_child)
        os.close(from_child)
        self._requests = os.fdopen(from_parent, "wb")
        self._replies = os.fdopen(to_parent, "rb")
        #: requests sent, and replies read but not yet taken, by number (0: the server's "ready",
        #: once the module imported -- not waited for here, so the caller works meanwhile)
        self._sent, self._read, self._replies_by_number = 0, 0, {}

    def call(self, function: str, *args: Any, **kwargs: Any) -> Any:
        """``function(*args, **kwargs)`` of the module, in the toolchain; its result."""
        return self.submit(function, *args, **kwargs)()

    def submit(self, function: str, *args: Any, **kwargs: Any) -> Callable[[], Any]:
        """Start ``function(*args, **kwargs)`` there and return at once: calling what this
        returns waits for its result (the caller's own work runs meanwhile, on another core)."""
        try:
            self._wire.send(self._requests, {"call": function, "args": list(args), "kwargs": kwargs})
        except (BrokenPipeError, OSError):
            pass  # it died: the reply says how
        self._sent += 1
        number = self._sent
        return lambda: self._result(number)

    def _result(self, number: int) -> Any:
        while number not in self._replies_by_number:  # replies come in order
            reply = self._next_reply()
            if self._read == 0 and "error" in reply:  # the module did not import
                raise ToolchainError(reply["error"], reply.get("type", ""), reply.get("traceback", ""))
            self._replies_by_number[self._read] = reply
            self._read += 1
        reply = self._replies_by_number.pop(number)
        if "error" in reply:
            raise ToolchainError(reply["error"], reply.get("type", ""), reply.get("traceback", ""))
        return reply.get("result")

    def _next_reply(self) -> dict[str, Any]:
        try:
            return self._wire.receive(self._replies)
        except EOFError:
            from edgex.core.isolation import describe_exit

            code = self.process.wait()
            raise TargetError(f"{self.what} {describe_exit(code)} (its output is in the target's log)") from None

    def close(self) -> None:
        """End the process (its input closes; it is killed if it does not leave)."""
        with contextlib.suppress(OSError):
            self._requests.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        with contextlib.suppress(OSError):
            self._replies.close()

    def __enter__(self) -> "ToolchainProcess":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def unknown(name: str, known: list[str]) -> UsageError:
    return UsageError(f"no toolchain named {name!r}; the installed targets declare: {', '.join(known) or 'none'} (see edgex toolchains list)")
