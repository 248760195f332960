"""What a run needs from the machine, checked before the work that needs it.

- **Memory.** :func:`available_memory` is what this process can still allocate: the smallest of
  the machine's ``MemAvailable`` (plus free swap), the room its memory cgroup leaves (v2 or v1,
  every level up to the hierarchy's root: the limit minus the working set, i.e. usage less the
  reclaimable inactive file cache) and ``RLIMIT_AS`` less the address space in use. Before
  seeded inputs are drawn, :func:`check_inputs_fit` (one sample, while loading) and
  :func:`check_run_memory` (the parity run, once the number of samples is known) refuse with a
  one-line :class:`UsageError` (exit 2) when what is certain to be held at once does not fit.
  The reference's activations are measured during the load's one-sample probe forward
  (:func:`measuring`): the peak of the bytes of tensors alive during that forward, counted by a
  torch dispatch mode over every op's freshly allocated outputs.
- **Disk.** :func:`check_disk` refuses a run whose ``--out`` is clearly too small for it
  (:func:`disk_needed`: a lower bound, never a guess on the high side) with a
  :class:`DiskFullError` (exit 3), and :func:`disk_full_message` / :func:`disk_full_error` turn a
  write that fails anyway (``ENOSPC``, ``EDQUOT``) into one line naming the disk, its free space
  and what was being written.

Every reading that fails (no ``/proc``, no cgroup files) counts as "no limit known": edgex never
refuses on a number it could not read. docs/reliability.md ("Resources checked before work").
"""

from __future__ import annotations

import errno
import math
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from edgex.core.errors import DiskFullError, EdgexError, UsageError

#: a limit at or above this is "unlimited" (cgroup v1 writes 2**63 - 4096 for none)
UNLIMITED = 1 << 60
#: tensors smaller than this are drawn without looking at the memory first
SMALL_TENSOR = 64 << 20


def human_bytes(n: float) -> str:
    """``80.5 GiB``, ``288.0 KiB``, ``512 B`` (binary units)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


# --------------------------------------------------------------------------- memory available


@dataclass(frozen=True)
class Memory:
    """What this process can still allocate, and which limit says so (for the message)."""

    available: int
    #: "this machine", "this process's memory cgroup (limit 8.0 GiB)", ...
    where: str


def _meminfo(proc: Path) -> dict[str, int]:
    values = {}
    for line in (proc / "meminfo").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            values[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return values


def _host_available(proc: Path) -> int | None:
    """MemAvailable plus free swap (a run may page out and still finish); sysconf without /proc."""
    try:
        info = _meminfo(proc)
        if "MemAvailable" in info:
            return info["MemAvailable"] + info.get("SwapFree", 0)
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


@dataclass(frozen=True)
class Mount:
    """One line of /proc/self/mountinfo."""

    point: str
    root: str
    fstype: str
    source: str
    super_options: str


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as octal escapes (``\\040``)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit() and len(field[i + 1 : i + 4]) == 3:
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts(proc: Path = Path("/proc")) -> list[Mount]:
    """This process's mounts, in mountinfo order (a later mount on a point covers an earlier one)."""
    try:
        text = (proc / "self" / "mountinfo").read_text()
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields or len(fields) < 7:
            continue
        dash = fields.index("-")
        after = fields[dash + 1 :]
        found.append(Mount(_unescape(fields[4]), _unescape(fields[3]), after[0] if after else "", _unescape(after[1]) if len(after) > 1 else "", after[2] if len(after) > 2 else ""))
    return found


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return UNLIMITED
    return int(text) if text.isdigit() else None


def _stat_value(path: Path, *keys: str) -> int:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return 0
    values = dict(line.split()[:2] for line in lines if len(line.split()) >= 2)
    for key in keys:
        if key in values and values[key].isdigit():
            return int(values[key])
    return 0


def _cgroup_level(folder: Path, version: int) -> tuple[int, int] | None:
    """(room, limit) of one cgroup folder, None where it has no limit (or no files)."""
    if version == 2:
        limit, usage = _read_int(folder / "memory.max"), _read_int(folder / "memory.current")
        inactive = _stat_value(folder / "memory.stat", "inactive_file")
    else:
        limit, usage = _read_int(folder / "memory.limit_in_bytes"), _read_int(folder / "memory.usage_in_bytes")
        inactive = _stat_value(folder / "memory.stat", "total_inactive_file", "inactive_file")
    if limit is None or usage is None or limit >= UNLIMITED:
        return None
    working_set = max(0, usage - inactive)
    return max(0, limit - working_set), limit


def _cgroup_room(proc: Path = Path("/proc")) -> tuple[int, int] | None:
    """(room, limit) of the tightest memory cgroup level above this process (v2 and v1), or None."""
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return None
    tightest = None
    table = mounts(proc)
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            version = 2
        elif "memory" in controllers.split(","):
            version = 1
        else:
            continue
        for mount in table:
            if version == 2 and mount.fstype != "cgroup2":
                continue
            if version == 1 and not (mount.fstype == "cgroup" and "memory" in mount.super_options.split(",")):
                continue
            relative = path
            if mount.root != "/" and (path == mount.root or path.startswith(mount.root + "/")):
                relative = path[len(mount.root) :]
            top = Path(mount.point)
            folder = top / relative.lstrip("/")
            if not folder.is_dir():  # a cgroup namespace the path does not describe: the mount's own
                folder = top
            levels = [folder, *[p for p in folder.parents if p == top or top in p.parents]]
            for level in levels:
                found = _cgroup_level(level, version)
                if found is not None and (tightest is None or found[0] < tightest[0]):
                    tightest = found
    return tightest


def _address_space_room(proc: Path) -> tuple[int, int] | None:
    """(room, limit) under RLIMIT_AS (``ulimit -v``), or None where it is unlimited."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
    except (ImportError, OSError, ValueError):
        return None
    if limit == resource.RLIM_INFINITY or limit < 0:
        return None
    used = 0
    try:
        for line in (proc / "self" / "status").read_text().splitlines():
            if line.startswith("VmSize:"):
                used = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return max(0, limit - used), limit


def memory(proc: Path = Path("/proc")) -> Memory | None:
    """What this process can still allocate and which limit binds, or None if nothing is known."""
    candidates: list[Memory] = []
    host = _host_available(proc)
    if host is not None:
        candidates.append(Memory(host, "this machine"))
    cgroup = _cgroup_room(proc)
    if cgroup is not None:
        candidates.append(Memory(cgroup[0], f"this process's memory cgroup (limit {human_bytes(cgroup[1])})"))
    space = _address_space_room(proc)
    if space is not None:
        candidates.append(Memory(space[0], f"this process's address space (ulimit -v {human_bytes(space[1])})"))
    return min(candidates, key=lambda m: m.available) if candidates else None


def available_memory() -> int | None:
    """Bytes this process can still allocate (:func:`memory`), None where nothing can be read."""
    found = memory()
    return None if found is None else found.available


# --------------------------------------------------------------------------- memory needed


def itemsize(dtype: str) -> int:
    import numpy as np

    try:
        return int(np.dtype(dtype).itemsize)
    except TypeError:
        digits = "".join(c for c in str(dtype) if c.isdigit())
        return max(1, int(digits) // 8) if digits else 4


def tensor_bytes(spec: Any) -> int:
    """Bytes of one tensor of ``spec`` (a TensorSpec): exact Python integers, no overflow."""
    return math.prod(int(d) for d in spec.shape) * itemsize(spec.dtype)


def describe_specs(specs: Sequence[Any]) -> str:
    """``1x3x60000x60000 float32``; with several inputs, each named."""
    def one(spec: Any) -> str:
        return f"{'x'.join(str(int(d)) for d in spec.shape) or 'scalar'} {spec.dtype}"

    if len(specs) == 1:
        return one(specs[0])
    return ", ".join(f"{spec.name!r} {one(spec)}" for spec in specs)


def _refuse(need: int, what: str, advice: str) -> None:
    """Refuse (exit 2) when ``need`` bytes exceed what this process can allocate: ``what``
    (ending in its verb) ``need``, and what is available where."""
    found = memory()
    if found is not None and need > found.available:
        raise UsageError(f"{what} {human_bytes(need)} and {found.where} has {human_bytes(found.available)} available; {advice}")


def check_fits(spec: Any) -> None:
    """Before drawing one seeded tensor of ``spec``: refuse (exit 2) when it alone cannot fit."""
    need = tensor_bytes(spec)
    if need >= SMALL_TENSOR:
        _refuse(need, f"seeded inputs of {describe_specs([spec])} alone need", "give a smaller --input-shape (or fewer --samples)")


def check_inputs_fit(specs: Sequence[Any]) -> None:
    """Before the load's probe draws its one seeded sample: refuse (exit 2) when the inputs of
    one sample cannot fit, before anything is allocated."""
    need = sum(tensor_bytes(s) for s in specs)
    if need >= SMALL_TENSOR:
        _refuse(need, f"the inputs alone ({describe_specs(specs)}, one sample) need", "give a smaller --input-shape")


@dataclass(frozen=True)
class Forward:
    """What one forward pass of a model on one batch held, as measured by :func:`measuring`."""

    #: peak bytes of the tensors the forward allocated and held at once (inputs and weights not counted)
    activation_bytes: int
    #: bytes of the tensors it returned
    output_bytes: int
    #: elements of the tensors it returned
    output_elements: int = 0


#: the load's measurement of each torch module (weak: a module that goes, goes from here)
_FORWARDS: "weakref.WeakKeyDictionary[Any, Forward]" = weakref.WeakKeyDictionary()


def forward_of(module: Any) -> Forward | None:
    try:
        return _FORWARDS.get(module) if module is not None else None
    except TypeError:
        return None


def _live_bytes_mode() -> Any:
    """A torch dispatch mode counting the bytes of the storages each op allocates while they
    live (a storage is counted once: views and in-place results add nothing), and their peak."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    class LiveBytes(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.live = self.peak = 0
            self.sizes: dict[int, int] = {}

        @classmethod
        def _should_skip_dynamo(cls) -> bool:
            # torch wraps a mode's __torch_dispatch__ in dynamo's disable unless told not to,
            # and that imports torch._dynamo on the first op: 1.3 s of every run here, for a
            # measurement that compiles nothing
            return False

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            try:
                self._count(tree_flatten(out)[0])
            except Exception:  # the measurement never changes what the model computes
                pass
            return out

        def _count(self, values: Iterable[Any]) -> None:
            import torch

            for value in values:
                if not isinstance(value, torch.Tensor) or value.layout != torch.strided:
                    continue
                storage = value.untyped_storage()
                key = storage.data_ptr()
                if not key or key in self.sizes:
                    continue
                size = storage.nbytes()
                self.sizes[key] = size
                self.live += size
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._free, key)

        def _free(self, key: int) -> None:
            self.live -= self.sizes.pop(key, 0)

    return LiveBytes()


class _Measuring:
    """``module`` as a callable that measures the forward it runs (see :func:`measuring`)."""

    def __init__(self, module: Any) -> None:
        self.module = module

    def __call__(self, *args: Any) -> Any:
        try:
            mode = _live_bytes_mode()
        except Exception:
            return self.module(*args)
        try:
            with mode:
                outputs = self.module(*args)
        except (EdgexError, MemoryError):  # said already (the model exited, a time limit ran out); or no memory
            raise
        except Exception:
            # the model's own complaint (or success) comes from a plain call, never the measurement's
            return self.module(*args)
        try:
            from torch.utils._pytree import tree_flatten

            tensors = [t for t in tree_flatten(outputs)[0] if hasattr(t, "nbytes") and hasattr(t, "untyped_storage")]
            _FORWARDS[self.module] = Forward(mode.peak, sum(int(t.nbytes) for t in tensors), sum(int(t.numel()) for t in tensors))
        except Exception:
            pass
        return outputs


def measuring(module: Any) -> Any:
    """``module`` wrapped for the load's one-sample probe forward: it runs as before, and the
    peak of its activations and the size of its outputs are kept for :func:`check_run_memory`."""
    return _Measuring(module)


def _rows(samples: Sequence[Any] | None) -> int:
    return int(len(samples[0])) if samples else 0


#: float64 copies of every output element that ``parity.compare`` holds at once, at the least:
#: the reference's and the artifact's outputs cast, each concatenated, and their difference
#: (it holds about 87 bytes an element at its peak; tests/test_resources.py keeps this a floor)
COMPARE_COPIES = 5


def check_run_memory(
    model: Any,
    samples: int,
    *,
    provided: Sequence[Any] | None = None,
    calibration: Sequence[Any] | None = None,
    synthetic_calibration: int = 0,
) -> None:
    """Before the parity inputs are drawn or taken: refuse (exit 2) when what the parity run is
    certain to hold at once does not fit in the memory left after loading the model.

    Counted: the parity inputs (``samples`` batches drawn, or the rows taken from ``provided``
    example inputs or held out of ``calibration``) and the reference's outputs on them, held
    all run; then the larger of one forward pass's activations (the reference's last batch) and
    the judging of an artifact: its outputs, and :data:`COMPARE_COPIES` float64 copies of every
    output element in ``parity.compare``; and ``synthetic_calibration`` random calibration
    batches. Not counted: evaluation data and its outputs, the float64 noise-floor run, the
    simulated int8 reference, the report's plots and the target's own process: a lower bound."""
    specs = tuple(model.inputs)
    if not specs:
        return
    batch = max(1, int(specs[0].shape[0]) if specs[0].shape else 1)
    per_batch = sum(tensor_bytes(s) for s in specs)
    forward = forward_of(getattr(model, "module", None))
    out_batch = forward.output_bytes if forward else 0
    compare_batch = COMPARE_COPIES * 8 * forward.output_elements if forward else 0
    activations = forward.activation_bytes if forward else 0
    if provided is not None and _rows(provided) > 1:
        batches = max(1, min(samples, _rows(provided)) // batch)
    elif calibration is not None:
        rows = _rows(calibration)
        batches = max(1, (min(samples, rows // 2) if rows >= 2 else rows) // batch)
    else:
        batches = samples
    need = batches * (per_batch + out_batch) + max(activations, batches * (out_batch + compare_batch)) + synthetic_calibration * per_batch
    if need < SMALL_TENSOR:
        return
    parts = [f"{batches} samples of {describe_specs(specs)} ({human_bytes(per_batch)} each)"]
    if out_batch:
        parts.append(f"the reference's and the artifact's outputs ({human_bytes(out_batch)} per sample each)")
        parts.append(f"comparing them in float64 ({human_bytes(compare_batch)} per sample)")
    if activations:
        parts.append(f"{human_bytes(activations)} of activations in one forward pass")
    if synthetic_calibration:
        parts.append(f"{synthetic_calibration} random calibration samples")
    _refuse(need, f"the parity run ({'; '.join(parts)}) needs at least", "give a smaller --input-shape or fewer --samples")


# --------------------------------------------------------------------------- disk


def nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (absolute)."""
    path = Path(os.path.abspath(path))
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return Path(path.anchor or "/")


def mount_of(path: Path, proc: Path = Path("/proc")) -> Mount | None:
    """The mount holding ``path`` (the longest mount point above it; the last one mounted there)."""
    where = nearest_existing(path).resolve()
    best = None
    for mount in mounts(proc):
        point = Path(mount.point)
        if where == point or point in where.parents:
            if best is None or len(mount.point) >= len(best.point):
                best = mount
    return best


def disk_space(path: Path) -> tuple[int, int]:
    """(free, total) bytes of the file system holding ``path`` (as far as it exists): what this
    user may still write (root may use the blocks reserved for it)."""
    stat = os.statvfs(nearest_existing(path))
    blocks = stat.f_bfree if hasattr(os, "geteuid") and os.geteuid() == 0 else stat.f_bavail
    return blocks * stat.f_frsize, stat.f_blocks * stat.f_frsize


def describe_disk(path: Path) -> str:
    """``tmpfs mounted at /mnt/x``, ``/dev/sda1 (ext4) mounted at /``; the path itself without /proc."""
    mount = mount_of(path)
    if mount is None:
        return f"the disk of {nearest_existing(path)}"
    kind = mount.fstype if mount.source in ("", mount.fstype, "none") else f"{mount.source} ({mount.fstype})"
    return f"{kind} mounted at {mount.point}"


#: what a run writes besides artifacts and exports, counted as a floor: report.json and
#: report.html (48 KiB for one target), the logs, the font cache matplotlib writes for the
#: page's plots (41 KiB) and ONNX Runtime's (80 KiB) in the run's scratch folder: 170 KiB
#: measured for ``examples:digits -t onnx``
FIXED_DISK = 128 << 10
#: bytes per parameter of an artifact at each precision, at the least
BYTES_PER_PARAMETER = {"fp32": 4, "fp16": 2, "int8": 1, "dynamic-int8": 1}


@dataclass(frozen=True)
class DiskNeed:
    """A lower bound of what a run writes in ``--out`` at its peak, and what it counts."""

    bytes: int
    what: str


def disk_needed(model: Any, precisions: Sequence[str] = (), exports: int | None = None) -> DiskNeed:
    """What a run converting ``model`` at ``precisions`` (one per target that runs) writes at
    the least: each artifact holds the parameters (``BYTES_PER_PARAMETER`` each), ``exports``
    fp32 copies of them sit in the scratch folder (default: one when any target runs: the shared
    ONNX export, or a converter's own intermediate), and :data:`FIXED_DISK` of reports, logs and
    caches. With no precisions (validate, explain): the fixed part alone."""
    params = int(getattr(model, "params", 0) or 0)
    exports = (1 if precisions else 0) if exports is None else exports
    artifacts = sum(params * BYTES_PER_PARAMETER.get(p, 4) for p in precisions)
    need = FIXED_DISK + artifacts + exports * params * 4
    if not precisions and not exports:
        return DiskNeed(need, f"{human_bytes(FIXED_DISK)} of reports, logs and runtime caches")
    counted = []
    if precisions:
        by = {p: list(precisions).count(p) for p in dict.fromkeys(precisions)}
        counted.append(", ".join(f"{n} artifact{'s' if n > 1 else ''} at {p}" for p, n in by.items()))
    if exports:
        counted.append(f"{exports} fp32 export{'s' if exports > 1 else ''}")
    what = f"the model's {human_bytes(params * 4)} of fp32 parameters for {' and '.join(counted)}, and {human_bytes(FIXED_DISK)} of reports, logs and runtime caches"
    return DiskNeed(need, what)


def check_disk(out: Path, need: DiskNeed) -> None:
    """Refuse the run (:class:`DiskFullError`, exit 3) when the disk of ``out`` has less free
    space than ``need``, a lower bound: only a disk clearly too small is refused."""
    try:
        free, _ = disk_space(out)
    except OSError:
        return
    if free < need.bytes:
        raise DiskFullError(
            f"--out {out}: the disk ({describe_disk(out)}) has {human_bytes(free)} free and this run needs at least "
            f"{human_bytes(need.bytes)} ({need.what}); free some space there or choose another --out"
        )


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a write refused for space: ``ENOSPC``, or ``EDQUOT`` (a quota)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _under(path: Path, folder: Path) -> bool:
    try:
        return Path(os.path.abspath(path)).is_relative_to(Path(os.path.abspath(folder)))
    except ValueError:
        return False


def disk_full_message(exc: OSError, out: Path | None = None, writing: str | None = None, where: Path | None = None) -> str:
    """One line for a write that found the disk full: the disk (mount, file system), its free
    space, and what was being written (``writing``, else the file the error names, relative to
    ``out`` when inside it). ``where``: the file written, when the error does not name it (a
    failed ``write`` names none); else the disk is that of ``out``."""
    named = exc.filename2 or exc.filename
    path = Path(where) if where is not None else Path(os.fsdecode(named)) if named else Path(out) if out is not None else Path.cwd()
    inside = out is not None and _under(path, Path(out))
    if writing is None:
        if named and inside:
            relative = os.path.relpath(os.path.abspath(path), os.path.abspath(out)) if out is not None else str(path)
            writing = f"{relative} in --out {out}"
        elif named:
            writing = str(path)
        else:
            writing = f"into --out {out}" if out is not None else "a file"
    try:
        free, total = disk_space(path)
        space = f": {human_bytes(free)} free of {human_bytes(total)}"
    except OSError:
        space = ""
    reason = "disk quota exceeded" if exc.errno == getattr(errno, "EDQUOT", None) else "no space left"
    advice = "free some space there or choose another --out" if (inside or (out is not None and not named)) else "free some space there"
    return f"{reason} on {describe_disk(path)}{space}, while writing {writing}; {advice}"


def disk_full_error(exc: OSError, out: Path | None = None, writing: str | None = None, where: Path | None = None) -> DiskFullError:
    """:func:`disk_full_message` as the error to raise (exit 3): ``raise disk_full_error(exc, out) from exc``."""
    return DiskFullError(disk_full_message(exc, out, writing, where))
