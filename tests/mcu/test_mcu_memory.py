"""Arena measurement by TFLM itself, flash, device profiles and the fit verdict."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgex.core.errors import TargetError, UsageError
from edgex.targets.mcu import memory as mcu_memory
from edgex.targets.mcu import model as mcu_model


def _runs_in(data: bytes, arena: int) -> bool:
    """An independent probe: does TFLM allocate and invoke the model in ``arena`` bytes?"""
    from tflite_micro.python.tflite_micro import runtime

    with mcu_memory.captured_stderr():
        try:
            interpreter = runtime.Interpreter.from_bytes(data, arena_size=arena)
            details = interpreter.get_input_details(0)
            interpreter.set_input(np.zeros(tuple(details["shape"]), details["dtype"]), 0)
            interpreter.invoke()
            return True
        except RuntimeError:
            return False


def test_binary_search_finds_tflms_exact_minimum_and_agrees_with_its_record(int8_tflite):
    data = int8_tflite["kws"].read_bytes()
    measured = mcu_memory.measure_arena(data, 1)
    assert _runs_in(data, measured.minimum_bytes)
    assert not _runs_in(data, measured.minimum_bytes - 1)
    # the allocation record (print_allocations, read from C's stderr) says the same
    assert measured.recorded_bytes == measured.recorded_head_bytes + measured.recorded_tail_bytes
    assert abs(measured.minimum_bytes - measured.recorded_bytes) <= 0.10 * measured.recorded_bytes
    assert "TfLiteEvalTensor data" in measured.recorded_items
    assert measured.search_seconds < 5 and measured.probes > 5


def test_arena_follows_the_activations(int8_tflite):
    """The 32x32x3 int8 input alone is 3 KB of the planned (head) part; the MLP's tensors are bytes."""
    small = mcu_memory.measure_arena(int8_tflite["two_inputs"].read_bytes(), 2)
    big = mcu_memory.measure_arena(int8_tflite["stride4"].read_bytes(), 1)
    assert big.recorded_head_bytes >= 32 * 32 * 3 > small.recorded_head_bytes
    assert big.minimum_bytes > small.minimum_bytes
    for measured in (small, big):  # the search's minimum really is the minimum, whatever the record says
        assert measured.minimum_bytes > 0 and measured.recorded_bytes > 0


def test_an_arena_that_crashes_tflm_costs_a_probe_not_the_process(int8_tflite, monkeypatch):
    """Too small an arena can segfault TFLM instead of raising (a 20-step LSTM written out per
    step crashes in GreedyMemoryPlanner at its own record's total, 24% short of the minimum).
    Here from_bytes kills its process at every size from half the minimum up to the minimum (so a
    crash ends several probing children in a row): the search must still find the same minimum,
    say where TFLM crashed, and this process must live (the probes run in children)."""
    import os
    import signal

    from tflite_micro.python.tflite_micro import runtime

    monkeypatch.setenv("EDGEX_ISOLATION", "fork")
    data = int8_tflite["kws"].read_bytes()
    honest = mcu_memory.measure_arena(data, 1)
    band = range(honest.minimum_bytes // 2, honest.minimum_bytes)
    real = runtime.Interpreter.from_bytes.__func__

    def from_bytes(cls, model, arena_size=0, **kwargs):
        if arena_size in band:
            os.kill(os.getpid(), signal.SIGSEGV)
        return real(cls, model, arena_size=arena_size, **kwargs)

    monkeypatch.setattr(runtime.Interpreter, "from_bytes", classmethod(from_bytes))
    measured = mcu_memory.measure_arena(data, 1)
    assert measured.minimum_bytes == honest.minimum_bytes and measured.recorded_bytes == honest.recorded_bytes
    assert len(measured.crashed_at) >= 3 and all(size in band for size in measured.crashed_at)
    assert measured.to_json()["crashed_at"] == list(measured.crashed_at)


def test_a_model_that_crashes_tflm_at_every_size_is_a_target_error(int8_tflite, monkeypatch):
    import os
    import signal

    from tflite_micro.python.tflite_micro import runtime

    monkeypatch.setenv("EDGEX_ISOLATION", "fork")
    monkeypatch.setattr(runtime.Interpreter, "from_bytes", classmethod(lambda cls, *a, **k: os.kill(os.getpid(), signal.SIGSEGV)))
    with pytest.raises(TargetError, match="any arena size: TFLM crashed with signal SIGSEGV with a 1073741824-byte arena"):
        mcu_memory.measure_arena(int8_tflite["kws"].read_bytes(), 1)


def test_parse_allocations_reads_tflms_lines():
    text = (
        "[RecordingMicroAllocator] Arena allocation total 6352 bytes\r\n"
        "[RecordingMicroAllocator] Arena allocation head 4000 bytes\r\n"
        "[RecordingMicroAllocator] Arena allocation tail 2352 bytes\r\n"
        "[RecordingMicroAllocator] 'Persistent buffer data' used 872 bytes with alignment overhead (requested 852 bytes for 15 allocations)\r\n"
    )
    totals, items = mcu_memory.parse_allocations(text)
    assert totals == {"total": 6352, "head": 4000, "tail": 2352}
    assert items["Persistent buffer data"] == {"used": 872, "requested": 852, "count": 15}


def test_flash_is_model_plus_tflm_framework():
    flash = mcu_memory.flash_needs(50_000)
    assert flash["total_bytes"] == 50_000 + mcu_memory.TFLM_FRAMEWORK_CODE_BYTES
    assert flash["kernels_bytes"] is None and "memory_footprint/README.md" in flash["sources"]


# --------------------------------------------------------------------------- devices


def test_at_least_eight_profiles_with_sources():
    devices = mcu_memory.devices()
    assert len(devices) >= 8
    cores = {d.core for d in devices.values()}
    assert {"Cortex-M4F", "Cortex-M7", "Cortex-M33", "Cortex-M55"} <= cores
    assert {"nrf52840", "esp32-s3", "rp2040"} <= set(devices)
    assert any(d.ethos_u for d in devices.values())
    for device in devices.values():
        assert device.ram_kb > 0 and device.flash_kb > 0 and device.source.startswith("https://"), device.name


def test_unknown_device_is_a_usage_error_listing_the_known():
    with pytest.raises(UsageError, match="unknown device 'nrf9999'.*nrf52840"):
        mcu_memory.resolve_device("nrf9999")


def test_custom_profile_file(tmp_path):
    path = tmp_path / "board.json"
    path.write_text(json.dumps({"name": "my-u65", "core": "Cortex-M33", "ram_kb": 640, "flash_kb": 4096, "npu": {"accelerator_config": "ethos-u65-256"}}))
    device = mcu_memory.resolve_device(str(path))
    assert device.name == "my-u65" and device.ethos_u and device.ram_kb == 640
    path.write_text(json.dumps({"name": "bad", "core": "M4", "ram_kb": 64, "flash": 1}))
    with pytest.raises(UsageError, match="lacks flash_kb"):
        mcu_memory.resolve_device(str(path))
    with pytest.raises(UsageError, match="no such file"):
        mcu_memory.resolve_device(str(tmp_path / "missing.json"))


def test_fit_with_headroom_and_no_fit_message():
    device = mcu_memory.resolve_device("nrf52840")
    verdict = mcu_memory.fit(device, 100 * 1024, 300 * 1024)
    assert verdict.fits
    assert verdict.to_json()["ram_headroom_bytes"] == 156 * 1024
    assert "headroom 156.0 KB RAM" in verdict.message
    too_big = mcu_memory.fit(device, 300 * 1024, 300 * 1024)
    assert not too_big.fits
    assert "needs 300.0 KB arena + 300.0 KB flash, nrf52840 has 256 KB RAM, 1024 KB flash" in too_big.message
    with pytest.raises(TargetError, match="does not fit nrf52840 \\(RAM\\)"):
        mcu_memory.check_fit(device, 300 * 1024, 300 * 1024)
    with pytest.raises(TargetError, match="\\(flash\\)"):
        mcu_memory.check_fit(device, 1024, 2048 * 1024)


def test_measured_model_fits_one_board_and_not_another(int8_tflite):
    data = int8_tflite["stride4"].read_bytes()
    arena = mcu_memory.measure_arena(data, len(mcu_model.read(int8_tflite["stride4"]).inputs)).minimum_bytes
    flash = mcu_memory.flash_needs(len(data))["total_bytes"]
    assert mcu_memory.fit(mcu_memory.resolve_device("nucleo-f446re"), arena, flash).fits
    tiny = mcu_memory.Device("tiny", "tiny", "Cortex-M0", ram_kb=arena / 1024 / 2, flash_kb=1024)
    assert not mcu_memory.fit(tiny, arena, flash).fits
