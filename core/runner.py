"""Opening an artifact, running it isolated, and comparing what it computed: the steps
``convert``, ``validate`` and ``explain`` share.

An artifact runs in a child process (``edgex.core.isolation``) while the parent computes the
reference outputs; its outputs come back in the artifact's form and :func:`judge_outputs` turns
them into the reference's form (``edgex.core.layout``) and judges them with the one parity
implementation (``edgex.core.parity``). Everything runs offline, with temporary files inside
``--out`` (:func:`sandboxed`).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from edgex.core import layout, parity, resources
from edgex.core.errors import DiskFullError, UsageError, one_line
from edgex.core.isolation import Isolated, RemoteError, start_isolated
from edgex.core.plugin_manager import PluginManager, RegisteredTarget
from edgex.core.sandbox import contained, offline
from edgex.core.settings import ConvertSettings
from edgex.core.supervisor import command_pid, owning, time_limit
from edgex.core.types import ArtifactIO, ReferenceModel, Runtime, StageEvent

Outputs = parity.Outputs


# --------------------------------------------------------------------------- the output folder


def prepare_out(out: Path) -> Path:
    """``--out`` created if needed, as an absolute path (converters may change directory).

    A path edgex cannot make a folder of is exit 2, one line: a file there or in the way (a
    parent that is a file), no permission, a read-only file system. A full disk is a
    :class:`DiskFullError` (exit 3) naming the disk."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a directory")
    for parent in out.parents:  # the nearest that exists must be a folder
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise UsageError(f"--out {out}: {parent} is {'a broken link' if not parent.exists() else 'a file'}, not a directory; choose another --out")
            break
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if resources.is_disk_full(exc):
            raise resources.disk_full_error(exc, out, writing=f"the folder {out}", where=out) from exc
        raise UsageError(f"cannot create --out {out}: {exc.strerror or one_line(exc)}; choose another --out") from exc
    return out.resolve()


#: the file a run holds (flock) while it owns ``--out``; it says who ("<pid> <host>")
LOCK_NAME = ".edgex.lock"
#: what a run leaves only while it works (target work folders, replaced folders, caches,
#: half-written reports): a killed run's are removed by the next run, under its lock
#: the run's scratch folder inside --out: temporary files, library caches, the shared exports
SCRATCH = ".edgex-scratch"
LEFTOVERS = (".edgex-tmp-*", ".edgex-old-*", SCRATCH, ".report.json.*", ".explain.json.*", ".report.html.*", ".explain.html.*")
#: files only edgex writes at the top of ``--out``; the model they describe owns the folder, and
#: with it the pages written after them (report.html, explain.html). A page alone proves nothing:
#: a folder holding only some report.html is not taken for edgex's
REPORT_NAMES = ("report.json", "explain.json")


@dataclass
class _HeldLock:
    path: Path
    fd: int | None  # the open, flock-ed lock file (None where the OS has no flock)


def _take_lock(out: Path) -> tuple[_HeldLock, bool]:
    """Lock ``out`` for this run: ``out/.edgex.lock``, held with ``flock`` (the kernel releases it
    when the holder dies, however it dies, so a killed run's lock is free at once and two runs
    taking it over cannot both win). The file holds ``<pid> <host>`` for the message a second
    run gets. Returns the lock and whether a killed run's lock file was found (a run that ends
    removes its own)."""
    try:
        import fcntl
    except ImportError:  # Windows: an exclusive create, and no guessing whether a lock is stale
        return _create_lock(out), False
    lock = out / LOCK_NAME
    for _ in range(5):
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 256).decode(errors="replace").strip()
            os.close(fd)
            raise UsageError(_in_use(out, lock, holder)) from None
        # the run before may have unlinked the file between our open and our flock: only the
        # file at the path counts
        try:
            current = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if not current:
            os.close(fd)
            continue
        left = os.read(fd, 256).strip()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{command_pid()} {socket.gethostname()}\n".encode(), 0)
        except OSError:  # a full disk: no lock is left held, nor its file
            _release_lock(_HeldLock(lock, fd))
            raise
        return _HeldLock(lock, fd), bool(left)
    raise UsageError(f"--out {out}: could not take {lock} (other runs keep taking it); try again")


def _in_use(out: Path, lock: Path, holder: str) -> str:
    pid, _, host = holder.partition(" ")
    who = f"pid {pid} on {host}" if pid.isdigit() else "another process"
    return f"--out {out} is in use by another edgex run ({who}); wait for it, or choose another --out"


def _create_lock(out: Path) -> _HeldLock:
    lock = out / LOCK_NAME
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        raise UsageError(_in_use(out, lock, lock.read_text().strip()) + f", or delete {lock} if no such run exists") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{command_pid()} {socket.gethostname()}\n")
    return _HeldLock(lock, None)


def _release_lock(held: _HeldLock) -> None:
    """Remove the lock file (if it is still ours), then release the flock: a run that opened
    the file meanwhile finds it unlinked and takes the new one."""
    try:
        if held.fd is None or os.stat(held.path).st_ino == os.fstat(held.fd).st_ino:
            held.path.unlink()
    except FileNotFoundError:
        pass
    finally:
        if held.fd is not None:
            os.close(held.fd)


def _remove_leftovers(out: Path) -> None:
    for pattern in LEFTOVERS:
        for path in out.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def tidy_after_death(out: Path) -> None:
    """The leftovers of a run whose process died (by the model's exit, a kill, the OOM killer):
    its work folders, scratch and lock, as the next run would remove them, but now. The logs
    stay (they may say why); a folder another run holds meanwhile is left to it."""
    try:
        lock, _ = _take_lock(out)
    except (UsageError, OSError):
        return
    try:
        _remove_leftovers(out)
    finally:
        _release_lock(lock)


def _undo_logs(out: Path, started: float, created: bool) -> None:
    """After bad input (exit 2) nothing of the run stays: the logs it wrote (they describe a run
    that did not happen), ``logs/`` when that leaves it empty, and ``out`` when this run made it."""
    logs = out / "logs"
    if logs.is_dir():
        for log in logs.glob("*.log"):
            if log.stat().st_mtime >= started - 1:
                log.unlink(missing_ok=True)
        if not any(logs.iterdir()):
            logs.rmdir()
    if created and not any(p.name != LOCK_NAME for p in out.iterdir()):
        shutil.rmtree(out, ignore_errors=True)  # the lock goes with it; _release_lock tolerates that


def _same_model(described: Any, model: ReferenceModel) -> bool:
    """Whether a report's ``model`` section is ``model``: the same bytes, or the same spec (a
    retrained file, a compressed variant). In-memory modules share a spec per class: bytes only."""
    if not isinstance(described, dict):
        return False
    if model.sha256 and described.get("sha256") == model.sha256:
        return True
    return bool(model.spec) and described.get("spec") == model.spec and not model.spec.startswith("<in-memory")


@dataclass
class OwnedOut:
    """``--out`` while a run holds it: ``path`` (absolute) and the report an earlier run left."""

    path: Path
    previous: dict[str, Any]

    def remove_stale(self, artifacts: Iterable[str], described: Iterable[str], known_targets: Iterable[str]) -> None:
        """Remove target folders (and logs) that the report about to be written does not describe.

        ``artifacts``: the report's artifact paths (relative to ``path`` or not); ``described``:
        the targets it has a row for; ``known_targets``: every name a target folder may have.
        A folder holding one of ``artifacts`` stays (validate of ``OUT/onnx/model.onnx``)."""
        kept = []
        for artifact in artifacts:
            candidate = Path(artifact) if Path(artifact).is_absolute() else self.path / artifact
            kept.append((candidate if candidate.exists() else Path(artifact)).resolve())
        names = set(known_targets) | set(self.previous.get("targets") or {})
        for name in names:
            folder = self.path / name
            if folder.is_dir() and not any(k.is_relative_to(folder.resolve()) for k in kept):
                shutil.rmtree(folder, ignore_errors=True)
            if name not in described:
                (self.path / "logs" / f"{name}.log").unlink(missing_ok=True)


@contextmanager
def owned_out(out: Path, model: ReferenceModel, *, overwrite: bool = False, disk: resources.DiskNeed | None = None) -> Iterator[OwnedOut]:
    """Hold ``--out`` for one run: created, locked (a second run fails fast), cleared of a killed
    run's leftovers, and refused when it holds another model's report or files edgex did not
    write, unless ``overwrite``. Nothing is deleted here but leftovers; stale target folders go
    when the new report is written (:meth:`OwnedOut.remove_stale`).

    ``disk``: what the run writes at the least (``resources.disk_needed``; default its reports,
    logs and caches alone); a disk with less free space, once a killed run's leftovers are gone,
    is refused before the work (:class:`DiskFullError`, exit 3), leaving nothing behind."""
    created = not Path(out).exists()
    started = time.time()
    path = prepare_out(out)
    try:
        lock, took_over = _take_lock(path)
    except OSError as exc:
        if created:
            shutil.rmtree(path, ignore_errors=True)
        if resources.is_disk_full(exc):
            raise resources.disk_full_error(exc, out, writing=f"the lock file {LOCK_NAME} in --out {out}", where=path) from exc
        raise
    owning(path)  # should this process die, the supervisor tidies the folder (tidy_after_death)
    working = False
    try:
        _remove_leftovers(path)
        previous: dict[str, Any] = {}
        for name in REPORT_NAMES:
            try:
                loaded = json.loads((path / name).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(loaded, dict) and "model" in loaded:
                previous = previous or loaded
                if not overwrite and not _same_model(loaded.get("model"), model):
                    spec = (loaded.get("model") or {}).get("spec", "another model")
                    raise UsageError(f"--out {out} holds edgex's results for {spec}, not {model.spec}; choose another --out, or pass --overwrite to replace them")
        # a killed run's folder (its lock taken over) is edgex's even before its report exists
        if not previous and not overwrite and not took_over:
            foreign = sorted(p.name for p in path.iterdir() if p.name not in (LOCK_NAME, "logs"))
            if foreign:
                raise UsageError(f"--out {out} is not empty and edgex did not write it ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); choose another --out, or pass --overwrite")
        # the folder is this run's; a killed run's leftovers are gone (their space counts as free)
        resources.check_disk(path, disk or resources.disk_needed(model))
        working = True
        yield OwnedOut(path, previous if "targets" in previous else {})
    except UsageError:
        _undo_logs(path, started, created)
        raise
    except DiskFullError:
        if not working:  # refused before the work: nothing of the run stays
            _undo_logs(path, started, created)
        raise
    finally:
        _remove_leftovers(path)  # an interrupted run's too: a work folder made as the signal came
        _release_lock(lock)


@contextmanager
def sandboxed(out: Path) -> Iterator[None]:
    """Run offline, with temporary files and library caches in ``out`` (removed afterwards)."""
    scratch = out / SCRATCH
    try:
        with offline(), contained(scratch):
            yield
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


#: what each stage is doing, as the supervisor names it ("... while computing the reference outputs")
STAGE_WORDS = {"reference": "computing the reference model's outputs", "compress": "compressing the model", "report": "writing the report"}


@contextmanager
def observed(manager: PluginManager, stage: str, target: str | None = None, *, limit: float | None = None) -> Iterator[dict[str, str]]:
    """Bracket a stage with observer events; set ``box["outcome"]`` to report more than "ok".
    The supervisor is told the stage, and ``limit`` (seconds) ends it with a StageTimeout."""
    start = time.perf_counter()
    manager.stage_started(StageEvent(stage, target))
    box = {"outcome": "ok"}
    what = STAGE_WORDS.get(stage, stage) + (f" for {target}" if target else "")
    try:
        with time_limit(limit, stage, what):
            yield box
    except BaseException:
        manager.stage_finished(StageEvent(stage, target, "error", time.perf_counter() - start))
        raise
    manager.stage_finished(StageEvent(stage, target, box["outcome"], time.perf_counter() - start))


# --------------------------------------------------------------------------- opening an artifact


def guess_target(manager: PluginManager, artifact: Path) -> str:
    """The target whose artifact kind matches the file's name most specifically."""
    name = artifact.name
    matches = [
        (len(kind), -index, target.name)
        for index, target in enumerate(manager.targets().values())
        for kind in target.spec.artifact_kinds
        if name.endswith(kind)
    ]
    if not matches:
        raise UsageError(f"cannot tell which target {artifact} belongs to from its name; pass --target")
    return max(matches)[2]


def resolve_artifact(manager: PluginManager, artifact: Path, target: str | None) -> tuple[Path, RegisteredTarget]:
    """An existing artifact and the registered target it belongs to (``target``, else its file name)."""
    artifact = Path(artifact)
    if not artifact.exists():
        raise UsageError(f"artifact not found: {artifact}")
    return artifact, manager.resolve_target(target or guess_target(manager, artifact))


def describe_artifact(manager: PluginManager, target: str, artifact: Path, model: ReferenceModel, precision: str | None) -> ArtifactIO:
    """The artifact's bindings as its target reads them; ``precision`` (``--quantize``)
    overrides the precision the target infers from the file."""
    io = manager.describe_artifact(target, artifact.resolve(), model)
    return replace(io, precision=precision) if precision else io


# --------------------------------------------------------------------------- running it isolated


class IsolatedRun:
    """``work`` in a child process (see ``edgex.core.isolation``); ``wait`` returns its result.

    A usage error inside the child (exit code 2: the artifact is not what the user said) stays
    a usage error in the parent; any other failure is a :class:`edgex.core.errors.TargetError`.
    """

    def __init__(self, work: Callable[[Callable[[str, Any], None]], Any], target: str, settings: ConvertSettings, log_path: Path | None):
        self.job: Isolated = start_isolated(work, what=f"target {target}", timeout=settings.timeout_s, log_path=str(log_path) if log_path else None)

    def wait(self, on_event: Callable[[str, Any], None] | None = None) -> Any:
        try:
            return self.job.wait(on_event)
        except RemoteError as exc:
            if exc.exit_code == 2:
                raise UsageError(exc.message) from exc
            raise

    def cancel(self) -> None:
        self.job.cancel()


def run_batches(runtime: Runtime, io: ArtifactIO, batches: Sequence[tuple[np.ndarray, ...]]) -> tuple[list[list[np.ndarray]], list[float]]:
    """The artifact's native outputs for each batch (inputs permuted and quantized as ``io``
    says), and the seconds each run took."""
    outputs, seconds = [], []
    for batch in batches:
        native = [layout.to_artifact(x, binding) for x, binding in zip(batch, io.inputs)]
        start = time.perf_counter()
        raw = runtime.run(native)
        seconds.append(time.perf_counter() - start)
        outputs.append([np.array(r) for r in raw])
    return outputs, seconds


def latency(seconds: Sequence[float]) -> dict[str, float] | None:
    """Median and p90 milliseconds, the first (cache-warming) run left out."""
    timed = list(seconds[1:] if len(seconds) > 1 else seconds)
    if not timed:
        return None
    ms = sorted(s * 1000 for s in timed)
    return {"median": round(statistics.median(ms), 4), "p90": round(ms[min(len(ms) - 1, int(0.9 * len(ms)))], 4), "runs": len(ms)}


# --------------------------------------------------------------------------- comparing


def reference_form(outputs: Sequence[Sequence[np.ndarray]], io: ArtifactIO, order: Sequence[int]) -> Outputs:
    """Native artifact outputs per sample, reordered to the reference's outputs, dequantized
    and permuted back to the reference's layout."""
    return [[layout.from_artifact(np.asarray(sample[i]), io.outputs[i]) for i in order] for sample in outputs]


def judge_outputs(
    model: ReferenceModel,
    io: ArtifactIO,
    native: Sequence[Sequence[np.ndarray]],
    reference: Outputs,
    noise: parity.NoiseFloor,
    settings: ConvertSettings,
    inputs_source: str,
    simulated: Any = None,
) -> parity.ParityReport:
    """The parity verdict on the artifact's native outputs: matched to the reference's outputs,
    undone to their form, judged against each output's tolerance at ``io.precision``
    (``simulated``: edgex's simulated-quantized reference, for int8 and dynamic-int8)."""
    order = layout.match_outputs(model.output_names, io)
    actual = reference_form(native, io, order)
    tolerances = [
        parity.tolerance_for(io.precision, i, reference, noise, io.outputs[j].quant, settings.atol, settings.rtol, simulated)
        for i, j in enumerate(order)
    ]
    return parity.compare(reference, actual, model.output_names, tolerances, inputs_source)
