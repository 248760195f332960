"""How much RAM and flash a model needs under TensorFlow Lite Micro, and whether a board has it.

The tensor arena is measured by TFLM's own interpreter (``tflite-micro``), twice over:

- **binary search**: the smallest ``arena_size`` with which the interpreter allocates every
  tensor and runs one inference (too small an arena raises ``RuntimeError``, or for some models
  crashes TFLM: the probes run in a child process, see :func:`measure_arena`);
- **allocation record**: the interpreter's ``RecordingMicroAllocator`` total (head + tail), which
  ``print_allocations()`` prints to C's stderr; it is read by capturing file descriptor 2.

Both are reported with their ratio. They come from the reference kernels on a 64-bit host: on a
32-bit Cortex-M TFLM's bookkeeping structs (pointers) shrink the persistent "tail", while
optimized kernels such as CMSIS-NN may ask for scratch buffers the reference kernels do not.

Flash = the model's bytes + TFLM's framework code as TFLM measures it for an Arm Cortex-M3
(``tensorflow/lite/micro/examples/memory_footprint/README.md``: 9,732 bytes on a "bluepill"
board). Kernel code is not added: TFLM publishes no per-kernel Arm sizes, and it depends on the
compiler and on reference vs CMSIS-NN kernels; the report says so.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from edgex.plugins import RemoteError, TargetError, UsageError, start_isolated

#: TFLM framework code (interpreter, allocator, planner; no kernels) on an Arm Cortex-M3, bytes
TFLM_FRAMEWORK_CODE_BYTES = 9732
TFLM_FRAMEWORK_CODE_SOURCE = (
    "TFLM framework code on an Arm Cortex-M3 'bluepill' board: 9,732 bytes "
    "(tensorflow/lite/micro/examples/memory_footprint/README.md)"
)
#: first arena the search tries; the arena is only reserved, not touched, so a large one is cheap
_FIRST_ARENA = 64 << 20
_LARGEST_ARENA = 1 << 30
_DEVICES = Path(__file__).with_name("data") / "mcu_devices.json"
KB = 1024


# --------------------------------------------------------------------------- capturing C's stderr


@contextlib.contextmanager
def captured_stderr() -> Iterator[list[str]]:
    """Collect what C code writes to file descriptor 2 (TFLM's MicroPrintf) into a list."""
    sink: list[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield sink
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            sink.append(tmp.read().decode(errors="replace"))


def tflm_log_line(text: str) -> str:
    """What TFLM printed, as one line."""
    return " ".join(line.strip() for line in text.replace("\r", "\n").splitlines() if line.strip())


# --------------------------------------------------------------------------- the arena


@dataclass(frozen=True)
class ArenaMeasurement:
    """The tensor arena a model needs, as TFLM's interpreter measured it."""

    #: smallest arena_size (bytes) that allocated and ran, found by binary search
    minimum_bytes: int
    #: RecordingMicroAllocator's total (head + tail) at a generous arena
    recorded_bytes: int
    recorded_head_bytes: int
    recorded_tail_bytes: int
    #: the allocator's itemised record: what -> {used, requested, count}
    recorded_items: dict[str, dict[str, Any]]
    search_seconds: float
    probes: int
    #: arena sizes at which TFLM crashed (a signal) instead of reporting the arena too small;
    #: each is below ``minimum_bytes``. A board whose arena is that short may crash the same way
    crashed_at: tuple[int, ...] = ()

    @property
    def agreement(self) -> float:
        """minimum / recorded: 1.0 when the search and the record agree to the byte."""
        return self.minimum_bytes / self.recorded_bytes if self.recorded_bytes else float("nan")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["agreement"] = round(self.agreement, 6)
        data["crashed_at"] = list(self.crashed_at)
        data["note"] = (
            "measured by the tflite-micro Python interpreter (reference kernels, 64-bit host); 32-bit "
            "targets need less for TFLM's structs, CMSIS-NN kernels may need extra scratch"
        )
        return data


_RECORD_TOTALS = re.compile(r"Arena allocation (total|head|tail) (\d+) bytes")
_RECORD_ITEM = re.compile(r"'([^']+)' used (\d+) bytes with alignment overhead \(requested (\d+) bytes for (\d+) ")


def parse_allocations(text: str) -> tuple[dict[str, int], dict[str, dict[str, Any]]]:
    """The totals and items of ``RecordingMicroAllocator::PrintAllocations`` output."""
    totals = {kind: int(value) for kind, value in _RECORD_TOTALS.findall(text)}
    items = {name: {"used": int(u), "requested": int(r), "count": int(c)} for name, u, r, c in _RECORD_ITEM.findall(text)}
    return totals, items


def _zero_inputs(interpreter: Any, count: int) -> list[np.ndarray]:
    arrays = []
    for index in range(count):
        details = interpreter.get_input_details(index)
        arrays.append(np.zeros(tuple(int(d) for d in details["shape"]), dtype=details["dtype"]))
    return arrays


_CACHE: dict[str, ArenaMeasurement] = {}
#: a search that crashes TFLM this often gives up (each crash marks one more size as too small)
_MAX_CRASHES = 32


class _ArenaSearch:
    """Which arena size to try next, from the sizes tried so far (lo fails, hi works).

    The parent keeps one in step with the child that probes (every outcome is sent back as it
    is known), so that when a probe crashes the child, a new child resumes where it stopped.
    """

    def __init__(self) -> None:
        self.lo, self.hi = 0, 0  # hi 0: no size has worked yet
        self.tried: dict[int, bool] = {}
        self.crashed: list[int] = []
        self.recorded: int | None = None  # print_allocations' total, once read
        self.totals: dict[str, int] = {}
        self.items: dict[str, dict[str, Any]] = {}
        self.last_message = ""
        self.probes = 0

    def next_size(self) -> int | None:
        if not self.hi:
            for size in (_FIRST_ARENA, _LARGEST_ARENA):
                if size not in self.tried:
                    return size
            return None  # no size works
        if self.recorded and self.recorded not in self.tried and self.lo < self.recorded < self.hi:
            return self.recorded
        return (self.lo + self.hi) // 2 if self.hi - self.lo > 1 else None

    def outcome(self, size: int, ok: bool, message: str = "", crashed: bool = False) -> None:
        self.probes += 1
        self.tried[size] = ok
        if crashed:
            self.crashed.append(size)
        if ok:
            self.hi = min(self.hi, size) if self.hi else size
        else:
            self.lo = max(self.lo, size)
            self.last_message = message or self.last_message

    def read_record(self, log: str) -> None:
        self.totals, self.items = parse_allocations(log)
        self.recorded = self.totals.get("total", 0)


def _probe(data: bytes, input_count: int, search: _ArenaSearch, send: Callable[[str, Any], None]) -> None:
    """Try the sizes ``search`` asks for, reporting each before (``probe``) and after (``outcome``)."""
    from tflite_micro.python.tflite_micro import runtime

    search = copy.deepcopy(search)  # the parent's follows the events (the same object when not forked)
    inputs: list[np.ndarray] | None = None
    while (size := search.next_size()) is not None:
        send("probe", size)
        with captured_stderr() as log:
            try:
                interpreter = runtime.Interpreter.from_bytes(data, arena_size=size)
                if inputs is None:
                    inputs = _zero_inputs(interpreter, input_count)
                for index, array in enumerate(inputs):
                    interpreter.set_input(array, index)
                interpreter.invoke()
            except (RuntimeError, ValueError):
                interpreter = None
        message = tflm_log_line(log[0]) if log else ""
        ok = interpreter is not None
        if ok and search.recorded is None:  # the first size that works is the generous one
            with captured_stderr() as record:
                interpreter.print_allocations()
            send("record", record[0])
            search.read_record(record[0])
        del interpreter
        send("outcome", (size, ok, message))
        search.outcome(size, ok, message)


def measure_arena(data: bytes, input_count: int, *, key: str | None = None) -> ArenaMeasurement:
    """Measure the smallest tensor arena ``data`` (a .tflite) runs in under TFLM.

    ``key`` (the model's sha256) caches the result for this process: convert and the runtime
    that validates the same file run in one child and measure once. A model TFLM cannot
    allocate at any size is a :class:`TargetError` carrying TFLM's own message.

    The sizes are probed in a child process (:func:`edgex.plugins.start_isolated`). Too small an
    arena does not always make TFLM raise: for some models it segfaults instead (a 20-step LSTM
    written out per step, 400 tensors, crashes in ``GreedyMemoryPlanner::CalculateOffsetsIfNeeded``
    at 91,280 bytes -- its own allocation record's total -- and at 50,000, while it raises at
    70,000 and runs from 119,680). No size below the minimum is known to be safe in advance, and a
    margin cannot be derived from TFLM's record (here 24% short), so every probe runs where a crash
    costs only that child: the parent follows the search outcome by outcome, counts the size a
    child died on as too small (which it is: TFLM crashed instead of allocating), and starts a new
    child where the last one stopped. One child when nothing crashes; the size reported has run.
    """
    if key is not None and key in _CACHE:
        return _CACHE[key]
    start = time.perf_counter()
    search = _ArenaSearch()
    pending: list[int] = []  # the size the child is trying, until its outcome arrives
    what = "TFLM's arena probe"

    def on_event(kind: str, payload: Any) -> None:
        if kind == "probe":
            pending[:] = [payload]
        elif kind == "record":
            search.read_record(payload)
        elif kind == "outcome":
            search.outcome(*payload)
            pending.clear()

    while search.next_size() is not None:
        pending.clear()
        try:
            start_isolated(lambda send: _probe(data, input_count, search, send), what=what).wait(on_event)
        except RemoteError:
            raise
        except TargetError as exc:  # the child died (a signal): the size it was trying is too small
            if not pending or len(search.crashed) >= _MAX_CRASHES:
                raise TargetError(f"TFLM's arena measurement failed: {exc}", stage="convert") from None
            how = str(exc).removeprefix(f"{what} ")
            search.outcome(pending[0], False, f"TFLM {how} with a {pending[0]}-byte arena", crashed=True)
    if not search.hi:
        raise TargetError(f"TFLM cannot run this model with any arena size: {search.last_message or 'no message from TFLM'}", stage="convert")
    result = ArenaMeasurement(
        minimum_bytes=search.hi,
        recorded_bytes=search.recorded or 0,
        recorded_head_bytes=search.totals.get("head", 0),
        recorded_tail_bytes=search.totals.get("tail", 0),
        recorded_items=search.items,
        search_seconds=round(time.perf_counter() - start, 4),
        probes=search.probes,
        crashed_at=tuple(sorted(search.crashed)),
    )
    if key is not None:
        _CACHE[key] = result
    return result


def flash_needs(model_bytes: int) -> dict[str, Any]:
    """Flash a TFLM build needs for the model: its bytes plus TFLM's framework code."""
    return {
        "model_bytes": model_bytes,
        "tflm_framework_bytes": TFLM_FRAMEWORK_CODE_BYTES,
        "kernels_bytes": None,
        "total_bytes": model_bytes + TFLM_FRAMEWORK_CODE_BYTES,
        "sources": TFLM_FRAMEWORK_CODE_SOURCE
        + "; kernel code is not included: TFLM publishes no per-kernel Arm sizes, and it depends on the compiler and on reference vs CMSIS-NN kernels",
    }


# --------------------------------------------------------------------------- device profiles


@dataclass(frozen=True)
class Device:
    """A board from ``data/mcu_devices.json`` (or a user's JSON file of the same form)."""

    name: str
    board: str
    core: str
    ram_kb: float
    flash_kb: float
    clock_mhz: float | None = None
    npu: Mapping[str, Any] | None = None
    source: str = ""

    @property
    def ethos_u(self) -> bool:
        return bool(self.npu) and str(self.npu.get("accelerator_config", "")).startswith(("ethos-u55", "ethos-u65"))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_REQUIRED = ("core", "ram_kb", "flash_kb")


def _device(name: str, entry: Mapping[str, Any], where: str) -> Device:
    if not isinstance(entry, Mapping):
        raise UsageError(f"device {name!r} in {where} is not a JSON object")
    missing = [k for k in _REQUIRED if k not in entry]
    if missing:
        raise UsageError(f"device {name!r} in {where} lacks {', '.join(missing)}")
    unknown = sorted(set(entry) - {"board", "core", "clock_mhz", "ram_kb", "flash_kb", "npu", "source"})
    if unknown:
        raise UsageError(f"device {name!r} in {where} has unknown key(s) {', '.join(unknown)}")
    try:
        ram, flash = float(entry["ram_kb"]), float(entry["flash_kb"])
    except (TypeError, ValueError):
        raise UsageError(f"device {name!r} in {where}: ram_kb and flash_kb must be numbers") from None
    if ram <= 0 or flash <= 0:
        raise UsageError(f"device {name!r} in {where}: ram_kb and flash_kb must be positive")
    npu = entry.get("npu")
    if npu is not None and (not isinstance(npu, Mapping) or "accelerator_config" not in npu):
        raise UsageError(f"device {name!r} in {where}: npu must be an object with an accelerator_config such as 'ethos-u55-128'")
    return Device(name, str(entry.get("board", name)), str(entry["core"]), ram, flash, entry.get("clock_mhz"), dict(npu) if npu else None, str(entry.get("source", "")))


def _read_devices(path: Path) -> dict[str, Device]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read device profiles from {path}: {exc}") from exc
    table = data.get("devices", data) if isinstance(data, dict) else None
    if not isinstance(table, dict):
        raise UsageError(f"{path} holds no device profiles (expected {{\"devices\": {{NAME: {{...}}}}}})")
    return {name: _device(name, entry, str(path)) for name, entry in table.items()}


def devices() -> dict[str, Device]:
    """The device profiles edgex ships, by name."""
    return _read_devices(_DEVICES)


def resolve_device(spec: str) -> Device:
    """``spec`` is a shipped profile's name, or a JSON file with one profile (or a table of them)."""
    spec = str(spec).strip()
    shipped = devices()
    if spec in shipped:
        return shipped[spec]
    if spec.endswith(".json"):
        path = Path(spec)
        if not path.is_file():
            raise UsageError(f"--device {spec}: no such file")
        data = json.loads(path.read_text()) if path.stat().st_size else None
        if isinstance(data, dict) and "core" in data:  # a single profile
            return _device(str(data.get("name", path.stem)), {k: v for k, v in data.items() if k != "name"}, spec)
        found = _read_devices(path)
        if len(found) != 1:
            raise UsageError(f"--device {spec} holds {len(found)} profiles; name one of them with --device NAME from a file of one profile")
        return next(iter(found.values()))
    raise UsageError(f"unknown device {spec!r}; known devices: {', '.join(sorted(shipped))} (or a .json profile file)")


@dataclass(frozen=True)
class FitVerdict:
    device: str
    fits: bool
    arena_bytes: int
    flash_bytes: int
    ram_bytes: int
    device_flash_bytes: int
    message: str

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ram_headroom_bytes"] = self.ram_bytes - self.arena_bytes
        data["flash_headroom_bytes"] = self.device_flash_bytes - self.flash_bytes
        data["ram_headroom_fraction"] = round(1 - self.arena_bytes / self.ram_bytes, 4)
        data["flash_headroom_fraction"] = round(1 - self.flash_bytes / self.device_flash_bytes, 4)
        return data


def _kb(value: float) -> str:
    return f"{value / KB:.1f}"


def _kb_int(value: float) -> str:
    return f"{value:g}"


def fit(device: Device, arena_bytes: int, flash_bytes: int) -> FitVerdict:
    """Whether ``arena_bytes`` of RAM and ``flash_bytes`` of flash fit ``device``, with headroom."""
    ram, flash = int(device.ram_kb * KB), int(device.flash_kb * KB)
    fits = arena_bytes <= ram and flash_bytes <= flash
    needs = f"needs {_kb(arena_bytes)} KB arena + {_kb(flash_bytes)} KB flash"
    has = f"{device.name} has {_kb_int(device.ram_kb)} KB RAM, {_kb_int(device.flash_kb)} KB flash"
    if fits:
        message = (
            f"fits {device.name} ({device.board}): {needs}; headroom {_kb(ram - arena_bytes)} KB RAM "
            f"({(1 - arena_bytes / ram) * 100:.0f}%), {_kb(flash - flash_bytes)} KB flash ({(1 - flash_bytes / flash) * 100:.0f}%)"
        )
    else:
        short = [w for w, bad in (("RAM", arena_bytes > ram), ("flash", flash_bytes > flash)) if bad]
        message = f"does not fit {device.name} ({' and '.join(short)}): {needs}, {has}"
    return FitVerdict(device.name, fits, arena_bytes, flash_bytes, ram, flash, message)


def check_fit(device: Device, arena_bytes: int, flash_bytes: int, error: Callable[[str], Exception] | None = None) -> FitVerdict:
    """:func:`fit`, raising a :class:`TargetError` (the target's ``error`` status) when it does not."""
    verdict = fit(device, arena_bytes, flash_bytes)
    if not verdict.fits:
        raise (error or (lambda m: TargetError(m, stage="convert")))(verdict.message)
    return verdict
