"""vela (Arm Ethos-U) compilation and the parsing of what it reports, on real vela runs."""

from __future__ import annotations

import json

import pytest

from edgex.core.errors import TargetError
from edgex.targets.mcu import memory as mcu_memory
from edgex.targets.mcu import vela as mcu_vela

pytestmark = pytest.mark.skipif(not mcu_vela.vela_available(), reason="ethos-u-vela is not installed")


def test_fully_mapped_model_on_a_shipped_ethos_u55_board(int8_tflite, tmp_path):
    device = mcu_memory.resolve_device("alif-e7-he")
    report = mcu_vela.compile_for_npu(int8_tflite["kws"], tmp_path / "vela", device.npu)
    assert report.artifact.exists() and report.artifact.parent == tmp_path / "vela"
    assert report.summary_csv.exists()
    assert report.accelerator == "ethos-u55-128"
    assert report.npu_clock_hz == 160e6  # the board's NPU clock, not vela's default 500 MHz
    assert report.cpu_operators == 0 and report.npu_operators > 0 and not report.cpu_fallback
    assert report.sram_bytes > 0 and report.flash_bytes > 0 and report.cycles_npu > 0
    # vela's figures are self-consistent: inferences/s = clock / cycles (within its rounding)
    assert report.inferences_per_second == pytest.approx(1 / report.inference_seconds, rel=1e-3)
    assert report.inference_seconds == pytest.approx(report.cycles_npu / report.npu_clock_hz, rel=0.2)
    json.dumps(report.to_json())


def test_cpu_fallback_names_the_op_and_vela_s_reason(int8_tflite, tmp_path):
    report = mcu_vela.compile_for_npu(int8_tflite["stride4"], tmp_path / "vela", {"accelerator_config": "ethos-u55-128"})
    assert report.cpu_operators == 1
    (fallback,) = report.cpu_fallback
    assert fallback.op == "CONV_2D"
    assert "stride" in fallback.reason.lower()


def test_float_island_falls_back_with_reasons(int8_tflite, tmp_path):
    report = mcu_vela.compile_for_npu(int8_tflite["float_island"], tmp_path / "vela", {"accelerator_config": "ethos-u55-64"})
    ops = {c.op: c.reason for c in report.cpu_fallback}
    assert {"DEQUANTIZE", "CUMSUM", "QUANTIZE"} <= set(ops)
    assert "Unsupported opType" in ops["CUMSUM"]


def test_ethos_u65_from_a_custom_profile(int8_tflite, tmp_path):
    report = mcu_vela.compile_for_npu(int8_tflite["kws"], tmp_path / "vela", {"accelerator_config": "ethos-u65-256"})
    assert report.accelerator == "ethos-u65-256" and report.system_config == "Ethos_U65_Embedded"
    assert report.npu_operators > 0


def test_vela_failure_is_a_target_error(tmp_path):
    junk = tmp_path / "junk.tflite"
    junk.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 40)
    with pytest.raises(TargetError, match="vela failed"):
        mcu_vela.compile_for_npu(junk, tmp_path / "vela", {"accelerator_config": "ethos-u55-128"})


def test_parse_cpu_fallback_on_recorded_output():
    stdout = (
        "Warning (supported operators) operator: CONV_2D, ofm: 'conv/Relu_act'\n"
        "Reason: Unsupported kernel stride: 4, 4\n"
        "Stride>3 is only supported IF (dilation = 1 AND padding = VALID)\n"
        "\n"
        "CPU operators = 1 (50.0%)\n"
        "   CPU: Passthrough = conv/Relu (outputs [1, 8, 8, 8])\n"
        "NPU operators = 1 (50.0%)\n"
        "   NPU: FullyConnected = out (outputs [1, 1, 1, 4])\n"
    )
    counts, fallback = mcu_vela.parse_cpu_fallback(stdout)
    assert counts == {"cpu": 1, "npu": 1}
    assert fallback == [mcu_vela.CpuFallback("CONV_2D", "conv/Relu", "Unsupported kernel stride: 4, 4; Stride>3 is only supported IF (dilation = 1 AND padding = VALID)")]
