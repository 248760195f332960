"""Compiling a full-int8 model for an Arm Ethos-U NPU with ``vela``, and reading what it says.

vela runs as a subprocess (``python -m ethosu.vela``, the same program as the ``vela``
command) with its output directory inside the target's work folder. It writes an optimised
``*_vela.tflite`` (the NPU part becomes one ``ethos-u`` custom operator) and a summary CSV
(``sram_memory_used`` and ``*_flash_memory_used`` in KiB, ``cycles_npu``,
``inferences_per_second``, ``inference_time`` in seconds). ``--show-cpu-operations`` lists the
operators left on the CPU; the "Warning (supported operators)" blocks before it say why.

The NPU clock comes from the device profile: a small .ini in the work folder copies the named
Arm system configuration with that ``core_clock``, so inferences/s are at the board's clock.
"""

from __future__ import annotations

import configparser
import csv
import importlib.util
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from edgex.plugins import TargetError

#: Arm's system configurations with SRAM + off-chip flash, the microcontroller memory map
DEFAULT_SYSTEM_CONFIG = {"ethos-u55": "Ethos_U55_High_End_Embedded", "ethos-u65": "Ethos_U65_Embedded"}
DEFAULT_MEMORY_MODE = {"ethos-u55": "Shared_Sram", "ethos-u65": "Shared_Sram"}
VELA_TIMEOUT_S = 300


def vela_available() -> bool:
    return importlib.util.find_spec("ethosu") is not None and importlib.util.find_spec("ethosu.vela") is not None


@dataclass(frozen=True)
class CpuFallback:
    op: str
    tensor: str
    reason: str


@dataclass(frozen=True)
class VelaReport:
    artifact: Path
    summary_csv: Path
    accelerator: str
    system_config: str
    memory_mode: str
    npu_clock_hz: float
    sram_bytes: int
    flash_bytes: int
    dram_bytes: int
    cycles_npu: int
    inference_seconds: float
    inferences_per_second: float
    npu_operators: int
    cpu_operators: int
    cpu_fallback: tuple[CpuFallback, ...] = field(default_factory=tuple)
    version: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "vela": self.version,
            "artifact": self.artifact.name,
            "accelerator": self.accelerator,
            "system_config": self.system_config,
            "memory_mode": self.memory_mode,
            "npu_clock_mhz": self.npu_clock_hz / 1e6,
            "sram_bytes": self.sram_bytes,
            "flash_bytes": self.flash_bytes,
            "dram_bytes": self.dram_bytes,
            "cycles_npu": self.cycles_npu,
            "inference_ms": round(self.inference_seconds * 1e3, 6),
            "inferences_per_second": round(self.inferences_per_second, 3),
            "npu_operators": self.npu_operators,
            "cpu_operators": self.cpu_operators,
            "cpu_fallback": [{"op": c.op, "tensor": c.tensor, "reason": c.reason} for c in self.cpu_fallback],
            "note": "static estimates by vela's performance model; parity ran on the int8 model before vela, under TFLM",
        }


# --------------------------------------------------------------------------- parsing


_WARNING = re.compile(r"^Warning \(supported operators\) operator: (?P<op>[^,]+), ofm: '(?P<tensor>.*)'\s*$")
_OPERATOR_COUNT = re.compile(r"^(CPU|NPU) operators = (\d+)")
_CPU_LINE = re.compile(r"^\s+CPU: (?P<kind>\S+) = (?P<tensor>.*?) \(outputs")


def parse_cpu_fallback(stdout: str) -> tuple[dict[str, int], list[CpuFallback]]:
    """Operator counts and the CPU-placed operators with vela's reasons, from vela's stdout."""
    lines = stdout.splitlines()
    reasons: dict[str, tuple[str, str]] = {}
    i = 0
    while i < len(lines):
        match = _WARNING.match(lines[i])
        if match:
            body = []
            i += 1
            while i < len(lines) and lines[i].strip():
                body.append(lines[i].strip())
                i += 1
            if body and body[0].startswith("Reason: "):
                body[0] = body[0][len("Reason: "):]
            reasons[match["tensor"]] = (match["op"].strip(), "; ".join(body))
            continue
        i += 1
    counts = {kind.lower(): int(n) for kind, n in (m.groups() for m in map(_OPERATOR_COUNT.match, lines) if m)}
    fallback = []
    unused = dict(reasons)
    for line in lines:
        match = _CPU_LINE.match(line)
        if not match:
            continue
        tensor = match["tensor"]
        # the warning names the operator's output as vela rewrote it (a fused activation adds "_act")
        key = tensor if tensor in unused else next((k for k in unused if k.startswith(tensor) or tensor.startswith(k)), None)
        op, reason = unused.pop(key) if key is not None else (match["kind"], "placed on the CPU by vela (no reason printed)")
        fallback.append(CpuFallback(op, tensor, reason))
    return counts, fallback


def read_summary(path: Path) -> dict[str, str]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise TargetError(f"vela's summary {path.name} is empty", stage="convert")
    return rows[0]


# --------------------------------------------------------------------------- running


def _family(accelerator: str) -> str:
    return accelerator.rsplit("-", 1)[0]  # "ethos-u55-128" -> "ethos-u55"


def _system_ini(workdir: Path, base: str, clock_mhz: float | None) -> tuple[list[str], str]:
    """--config arguments and the system config name: Arm's, or a copy at the board's NPU clock."""
    if not clock_mhz:
        return ["--config", "Arm/vela.ini"], base
    from ethosu.vela import architecture_features

    arm = configparser.ConfigParser()
    arm.optionxform = str  # vela's keys are case-sensitive (Sram_clock_scale, OffChipFlash_...)
    arm.read(Path(architecture_features.CONFIG_FILES_PATH) / "Arm" / "vela.ini")
    section = f"System_Config.{base}"
    if section not in arm:
        raise TargetError(f"vela has no system configuration {base!r}", stage="convert")
    name = f"edgex_{base}_{int(clock_mhz)}MHz"
    ours = configparser.ConfigParser()
    ours.optionxform = str
    ours[f"System_Config.{name}"] = {**dict(arm[section]), "core_clock": f"{float(clock_mhz) * 1e6:g}"}
    path = workdir / "edgex_system.ini"
    with open(path, "w") as handle:
        ours.write(handle)
    return ["--config", "Arm/vela.ini", "--config", str(path.resolve())], name


def compile_for_npu(model: Path, outdir: Path, npu: Mapping[str, Any]) -> VelaReport:
    """Run vela on ``model`` for the NPU described by a device profile's ``npu`` entry."""
    accelerator = str(npu["accelerator_config"])
    family = _family(accelerator)
    outdir.mkdir(parents=True, exist_ok=True)
    base = str(npu.get("vela_system_config") or DEFAULT_SYSTEM_CONFIG.get(family, "Ethos_U55_High_End_Embedded"))
    memory_mode = str(npu.get("vela_memory_mode") or DEFAULT_MEMORY_MODE.get(family, "Shared_Sram"))
    config_args, system_config = _system_ini(outdir, base, npu.get("clock_mhz"))
    command = [
        sys.executable, "-m", "ethosu.vela", str(model.resolve()),
        "--accelerator-config", accelerator,
        *config_args,
        "--system-config", system_config,
        "--memory-mode", memory_mode,
        "--output-dir", str(outdir.resolve()),
        "--show-cpu-operations",
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=VELA_TIMEOUT_S, cwd=outdir)
    except subprocess.TimeoutExpired:
        raise TargetError(f"vela did not finish within {VELA_TIMEOUT_S} s", stage="convert") from None
    if done.returncode != 0:
        tail = [line for line in (done.stderr.strip() or done.stdout).splitlines() if line.strip()]
        raise TargetError(f"vela failed (exit {done.returncode}): {tail[-1].strip() if tail else 'no output'}", stage="convert")
    artifact = outdir / f"{model.stem}_vela.tflite"
    summaries = sorted(outdir.glob(f"{model.stem}_summary_*.csv"))
    if not artifact.exists() or not summaries:
        raise TargetError(f"vela finished but wrote no {artifact.name} / summary CSV in {outdir.name}", stage="convert")
    row = read_summary(summaries[0])
    counts, fallback = parse_cpu_fallback(done.stdout)
    kib = 1024

    def number(key: str) -> float:
        try:
            return float(row.get(key) or 0.0)
        except ValueError:
            return 0.0

    from importlib import metadata

    try:
        version = metadata.version("ethos-u-vela")
    except metadata.PackageNotFoundError:
        version = ""
    return VelaReport(
        artifact=artifact,
        summary_csv=summaries[0],
        accelerator=accelerator,
        system_config=row.get("system_config", system_config),
        memory_mode=row.get("memory_mode", memory_mode),
        npu_clock_hz=number("core_clock"),
        sram_bytes=int(round(number("sram_memory_used") * kib)),
        flash_bytes=int(round((number("off_chip_flash_memory_used") + number("on_chip_flash_memory_used")) * kib)),
        dram_bytes=int(round(number("dram_memory_used") * kib)),
        cycles_npu=int(number("cycles_npu")),
        inference_seconds=number("inference_time"),
        inferences_per_second=number("inferences_per_second"),
        npu_operators=counts.get("npu", 0),
        cpu_operators=counts.get("cpu", len(fallback)),
        cpu_fallback=tuple(fallback),
        version=version,
    )
