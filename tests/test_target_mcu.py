"""Target mcu (alias tflm) end to end: torch -> full-int8 (the tflite target's conversion) ->
TFLM checks, C sources, memory, device fit, Ethos-U; parity on TFLM's interpreter with planted
defects caught. The parts are tested on their own in tests/mcu/."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from edgex.core import api, layout, parity
from edgex.core.errors import UsageError
from edgex.core.settings import ConvertSettings
from edgex.plugins.testing import check_target_conformance
from edgex.targets.mcu import model as mcu_model

MODELS = Path(__file__).parent / "models.py"
GXX = shutil.which("g++")


def _tflite(out: Path, row) -> Path:
    (path,) = [out / a for a in row.artifacts if a.endswith(".tflite") and "/vela/" not in a]
    return path


@pytest.fixture(scope="module")
def digits_on_nrf52840(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits")
    report = api.convert("examples:digits", ["tflm"], out=out, samples=16, options={"device": "nrf52840"})
    return out, report, report.targets["mcu"]


def test_conformance(tmp_path, edgex_manager):
    # the digits CNN with its real calibration data
    from edgex.examples import digits

    example = digits.example()
    result = check_target_conformance(
        "mcu", tmp_path, manager=edgex_manager, model=example.module, example_inputs=example.example_inputs, calibration=example.calibration
    )
    row = result.precisions["int8"]
    assert result.defect_caught and row.precision == "int8"
    assert row.backend.startswith("tflite-micro ")
    assert "simulated int8 reference" in row.parity.tolerance.source


def test_digits_artifacts_memory_and_fit(digits_on_nrf52840):
    out, report, row = digits_on_nrf52840
    assert row.status == "passed", row.messages
    names = {Path(a).name for a in row.artifacts}
    assert {"model_data.cc", "model_data.h", "model_ops.h"} <= names
    model = _tflite(out, row)
    graph = mcu_model.read(model)
    assert {t.dtype for _, t in graph.all_tensors} <= {"int8", "int32"}
    assert row.io["inputs"][0]["quantization"]["dtype"] == "int8"
    # memory: measured by TFLM, search and record agree, flash = model + framework
    arena = row.details["memory"]["arena"]
    assert 0 < arena["minimum_bytes"] <= 256 * 1024 and abs(arena["agreement"] - 1) <= 0.10
    assert row.details["memory"]["flash"]["model_bytes"] == model.stat().st_size
    fit = row.details["fit"]
    assert fit["fits"] and fit["device"] == "nrf52840" and fit["ram_bytes"] == 256 * 1024 and fit["device_flash_bytes"] == 1024 * 1024
    assert any(m.startswith("fits nrf52840") and "headroom" in m for m in row.messages)
    # the op resolver names exactly the model's operators
    resolver = (out / "mcu" / "model_ops.h").read_text()
    uses = mcu_model.operator_uses(graph)
    assert resolver.count("micro_op_resolver.Add") == len(uses)
    assert [o["op"] for o in row.details["operators"]] == sorted(uses)
    assert f"constexpr size_t kTensorArenaSize = {(arena['minimum_bytes'] + 15) // 16 * 16};" in resolver
    # TFLM vs LiteRT's int8 kernels on the same inputs
    litert = row.details["litert_comparison"]
    assert "error" not in litert, litert
    assert litert["samples"] >= 16 and litert["max_lsb_difference"] <= 1 and litert["fraction_within_1_lsb"] == 1.0
    assert row.accuracy and row.accuracy["artifact"] > 0.9  # the labelled digits, classified by TFLM
    saved = json.loads((out / "report.json").read_text())["targets"]["mcu"]
    assert saved["fit"]["fits"] and "litert_comparison" in saved


@pytest.mark.skipif(GXX is None, reason="g++ is not installed")
def test_generated_c_sources_compile_and_hold_the_model(digits_on_nrf52840, tmp_path):
    out, _, row = digits_on_nrf52840
    folder = out / "mcu"
    obj = tmp_path / "model_data.o"
    subprocess.run([GXX, "-std=c++17", "-Wall", "-Werror", "-c", str(folder / "model_data.cc"), "-o", str(obj)], check=True)
    (tmp_path / "dump.cc").write_text(
        '#include <cstdio>\n#include "model_data.h"\n'
        "int main(int, char** argv) { std::FILE* f = std::fopen(argv[1], \"wb\");\n"
        "  std::fwrite(g_model, 1, g_model_size, f); return std::fclose(f); }\n"
    )
    subprocess.run([GXX, "-std=c++17", "-I", str(folder), str(tmp_path / "dump.cc"), str(obj), "-o", str(tmp_path / "dump")], check=True)
    subprocess.run([str(tmp_path / "dump"), str(tmp_path / "embedded.bin")], check=True)
    assert (tmp_path / "embedded.bin").read_bytes() == _tflite(out, row).read_bytes()


def test_model_that_does_not_fit_is_an_error(tmp_path):
    report = api.convert(f"{MODELS}:resnet_tiny", ["mcu"], out=tmp_path, samples=4, options={"device": "stm32f103c8"})
    row = report.targets["mcu"]
    assert row.status == "error"
    (message,) = [m for m in row.messages if "does not fit" in m]
    assert "needs " in message and " KB arena + " in message and "stm32f103c8 has 20 KB RAM, 64 KB flash" in message
    assert not (tmp_path / "mcu").exists() and not list(tmp_path.glob(".edgex-tmp-*"))


def test_ethos_u_board_compiles_with_vela_and_keeps_parity_on_tflm(tmp_path):
    report = api.convert("examples:digits", ["mcu"], out=tmp_path, samples=8, options={"device": "alif-e7-he"})
    row = report.targets["mcu"]
    assert row.status == "passed", row.messages
    ethos = row.details["ethos_u"]
    assert ethos["accelerator"] == "ethos-u55-128" and ethos["npu_clock_mhz"] == 160
    assert ethos["sram_bytes"] > 0 and ethos["cycles_npu"] > 0 and ethos["inferences_per_second"] > 0
    assert ethos["npu_operators"] > 0 and isinstance(ethos["cpu_fallback"], list)
    vela_files = [a for a in row.artifacts if "/vela/" in a]
    assert any(a.endswith("_vela.tflite") for a in vela_files) and any(a.endswith(".csv") for a in vela_files)
    assert row.io and not row.io["inputs"][0]["name"].startswith("ethos")
    assert "tflite-micro" in row.backend  # parity ran on TFLM, on the model before vela
    vela_model = next(tmp_path / a for a in vela_files if a.endswith("_vela.tflite"))
    with pytest.raises(UsageError, match="Ethos-U NPU"):
        api.validate(vela_model, "examples:digits", target="mcu", out=tmp_path / "again", samples=2)


def test_op_tflm_lacks_is_an_error_listing_it(tmp_path):
    import torch

    class GeluMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(16, 16), torch.nn.Linear(16, 4)

        def forward(self, x):
            return self.b(torch.nn.functional.gelu(self.a(x)))

    torch.manual_seed(0)
    # rewrite="none": the check itself, whatever --rewrite auto would replace
    report = api.convert(GeluMLP().eval(), ["mcu"], out=tmp_path, example_inputs=(torch.randn(1, 16),), samples=4, rewrite="none")
    row = report.targets["mcu"]
    assert row.status == "error"
    assert any("no kernel" in m and "GELU" in m for m in row.messages), row.messages


def test_wrong_weight_scale_is_caught(digits_on_nrf52840, tmp_path):
    """A converter bug that mis-scales the classifier's weights: TFLM runs it, parity fails."""
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

    out, _, row = digits_on_nrf52840
    data = bytearray(_tflite(out, row).read_bytes())
    model = fb.Model.GetRootAsModel(data, 0)
    graph = model.Subgraphs(0)
    codes = [max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode()) for i in range(model.OperatorCodesLength())]
    fc = next(graph.Operators(i) for i in range(graph.OperatorsLength()) if codes[graph.Operators(i).OpcodeIndex()] == fb.BuiltinOperator.FULLY_CONNECTED)
    scales = graph.Tensors(fc.Inputs(1)).Quantization().ScaleAsNumpy()  # a view into ``data``
    scales *= 1.5
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(bytes(data))
    report = api.validate(broken, "examples:digits", target="mcu", out=tmp_path / "validate", samples=16)
    assert report.targets["mcu"].status == "failed"
    again = api.validate(_tflite(out, row), "examples:digits", target="mcu", out=tmp_path / "control", samples=16)
    assert again.targets["mcu"].status == "passed"  # the same check passes the untouched file


def test_wrong_output_scale_in_the_binding_fails_parity(digits_on_nrf52840):
    """Core judges TFLM's int8 outputs in output-scale units: a wrong scale cannot pass."""
    from edgex.core.loading import load_model
    from edgex.targets.mcu import mcu

    out, _, row = digits_on_nrf52840
    model = load_model("examples:digits")
    io = api.plugin_manager().describe_artifact("mcu", _tflite(out, row), model)
    runtime = mcu.TFLMRuntime(io, {})
    x = model.calibration[0][:8]
    reference = parity.reference_outputs(model, [(x[i : i + 1],) for i in range(8)])
    raw = [runtime.run([layout.to_artifact(x[i : i + 1], io.inputs[0])]) for i in range(8)]
    verdicts = []
    for scale_factor in (1.0, 2.0):
        quant = io.outputs[0].quant
        binding = replace(io.outputs[0], quant=replace(quant, scale=quant.scale * scale_factor))
        actual = [[layout.from_artifact(r[0], binding)] for r in raw]
        tolerance = parity.tolerance_for("int8", 0, reference, parity.NoiseFloor(None, "test"), binding.quant)
        verdicts.append(parity.compare(reference, actual, model.output_names, [tolerance]).passed)
    assert verdicts == [True, False]


def test_validate_reports_memory_and_fit(digits_on_nrf52840, tmp_path):
    out, _, row = digits_on_nrf52840
    settings = ConvertSettings(samples=8, options={"device": "nrf52840"})
    report = api.validate(_tflite(out, row), "examples:digits", target="tflm", out=tmp_path, settings=settings)
    again = report.targets["mcu"]
    assert again.status == "passed" and again.details["fit"]["fits"]
    assert again.details["memory"]["arena"]["minimum_bytes"] == row.details["memory"]["arena"]["minimum_bytes"]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGEX_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.run([sys.executable, "-m", "edgex.core.cli", *args], capture_output=True, text=True, env=env, cwd=cwd)


def test_cli_bad_input_is_one_line_exit_2(digits_on_nrf52840, tmp_path):
    done = _cli("convert", "examples:digits", "--target", "mcu", "--device", "nrf9999", "--out", str(tmp_path / "a"), cwd=tmp_path)
    assert done.returncode == 2 and "unknown device 'nrf9999'" in done.stderr and done.stderr.strip().count("\n") == 0
    out, _, _ = digits_on_nrf52840
    done = _cli("validate", str(out / "mcu" / "model_data.cc"), "--reference", "examples:digits", "--target", "mcu", "--out", str(tmp_path / "b"), cwd=tmp_path)
    assert done.returncode == 2 and "C source" in done.stderr
