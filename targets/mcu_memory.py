"""How much RAM and flash a model needs under TensorFlow Lite Micro, and whether a board has it.

The tensor arena is measured by TFLM's own interpreter (``tflite-micro``), twice over:

- **binary search**: the smallest ``arena_size`` with which the interpreter allocates every
  tensor and runs one inference (too small an arena raises ``RuntimeError``);
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

from edgex.plugins import TargetError, UsageError

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

    @property
    def agreement(self) -> float:
        """minimum / recorded: 1.0 when the search and the record agree to the byte."""
        return self.minimum_bytes / self.recorded_bytes if self.recorded_bytes else float("nan")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["agreement"] = round(self.agreement, 6)
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


def measure_arena(data: bytes, input_count: int, *, key: str | None = None) -> ArenaMeasurement:
    """Measure the smallest tensor arena ``data`` (a .tflite) runs in under TFLM.

    ``key`` (the model's sha256) caches the result for this process: convert and the runtime
    that validates the same file run in one child and measure once. A model TFLM cannot
    allocate at any size is a :class:`TargetError` carrying TFLM's own message.
    """
    if key is not None and key in _CACHE:
        return _CACHE[key]
    from tflite_micro.python.tflite_micro import runtime

    start = time.perf_counter()
    inputs: list[np.ndarray] | None = None
    probes = 0

    def attempt(size: int) -> tuple[Any | None, str]:
        nonlocal inputs, probes
        probes += 1
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
        return interpreter, tflm_log_line(log[0]) if log else ""

    generous, message = attempt(_FIRST_ARENA)
    if generous is None:
        generous_size = _LARGEST_ARENA
        generous, message = attempt(_LARGEST_ARENA)
        if generous is None:
            raise TargetError(f"TFLM cannot run this model with any arena size: {message or 'no message from TFLM'}", stage="convert")
    else:
        generous_size = _FIRST_ARENA
    with captured_stderr() as log:
        generous.print_allocations()
    totals, items = parse_allocations(log[0])
    del generous
    recorded = totals.get("total", 0)

    # binary search for the smallest arena that works: lo fails, hi works
    lo, hi = 0, generous_size
    if recorded and attempt(recorded)[0] is not None:
        hi = recorded
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if attempt(mid)[0] is not None:
            hi = mid
        else:
            lo = mid
    result = ArenaMeasurement(
        minimum_bytes=hi,
        recorded_bytes=recorded,
        recorded_head_bytes=totals.get("head", 0),
        recorded_tail_bytes=totals.get("tail", 0),
        recorded_items=items,
        search_seconds=round(time.perf_counter() - start, 4),
        probes=probes,
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
