"""The mcu target's model checks, C sources and op resolver on real .tflite files."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from edgex.core.errors import TargetError, UsageError
from edgex.targets.mcu import memory as mcu_memory
from edgex.targets.mcu import model as mcu_model

GXX = shutil.which("g++")
needs_gxx = pytest.mark.skipif(GXX is None, reason="g++ is not installed")


def test_reads_operators_of_every_subgraph_and_io_names(int8_tflite):
    graph = mcu_model.read(int8_tflite["kws"])
    assert mcu_model.operator_uses(graph) == {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 1, "MEAN": 1, "FULLY_CONNECTED": 1}
    inputs, outputs = mcu_model.io_names(graph)
    assert len(inputs) == 1 and len(outputs) == 1
    mcu_model.check_for_tflm(graph)  # a clean full-int8 model passes every check


def test_not_a_flatbuffer_is_a_usage_error(tmp_path):
    junk, cut = tmp_path / "junk.tflite", tmp_path / "cut.tflite"
    junk.write_bytes(b"\x00" * 64)
    cut.write_bytes(b"\x10\x00\x00\x00TFL3" + b"\xff" * 8)
    with pytest.raises(UsageError, match="junk.tflite"):
        mcu_model.read(junk)
    with pytest.raises(UsageError, match="cut.tflite"):
        mcu_model.read(cut)


def test_float_island_is_rejected_naming_the_tensors(int8_tflite):
    """The tflite target's full-int8 check (the one full_int8 applies) guards validated files too."""
    graph = mcu_model.read(int8_tflite["float_island"])
    with pytest.raises(TargetError) as caught:
        mcu_model.check_for_tflm(graph)
    message = str(caught.value)
    assert "not full int8" in message and "float32" in message
    floats = [t.name for _, t in graph.all_tensors if t.dtype == "float32"]
    assert floats and all(name in message for name in floats)
    assert "\n" not in message


def test_missing_kernel_lists_the_ops_and_tflm_agrees(int8_tflite):
    graph = mcu_model.read(int8_tflite["gelu"])
    assert mcu_model.full_int8_problem(graph) is None  # full int8: only the kernel is missing
    with pytest.raises(TargetError, match=r"no kernel for 1 operator\(s\) this model uses: GELU \(x1\)"):
        mcu_model.check_for_tflm(graph)
    # the interpreter itself is the ground truth: it refuses the model too, whatever the arena
    with pytest.raises(TargetError, match="GELU"):
        mcu_memory.measure_arena(int8_tflite["gelu"].read_bytes(), 1)


def test_every_problem_is_reported_at_once(int8_tflite):
    graph = mcu_model.read(int8_tflite["float_island"])
    with pytest.raises(TargetError) as caught:
        mcu_model.check_for_tflm(graph)
    assert "not full int8" in str(caught.value)
    assert mcu_model.missing_ops(mcu_model.read(int8_tflite["gelu"])) == ["GELU"]


def test_offset_buffers_are_rejected(int8_tflite, tmp_path):
    """Weights stored after the flatbuffer (ai-edge-quantizer does this) read as zeros in TFLM."""
    import flatbuffers
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb

    data = int8_tflite["kws"].read_bytes()
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(data, 0))
    graph = model.subgraphs[0]
    index = next(i for i, t in enumerate(graph.tensors) if t.buffer and model.buffers[t.buffer].data is not None and len(model.buffers[t.buffer].data) > 64)
    buffer = model.buffers[graph.tensors[index].buffer]
    payload = bytes(buffer.data)
    buffer.data = None
    builder = flatbuffers.Builder(len(data))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    body = bytes(builder.Output())
    buffer.offset, buffer.size = len(body), len(payload)
    builder = flatbuffers.Builder(len(data))
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    patched = tmp_path / "offset.tflite"
    patched.write_bytes(bytes(builder.Output()) + payload)
    read_back = mcu_model.read(patched)
    with pytest.raises(TargetError, match="offset buffers") as caught:
        mcu_model.check_for_tflm(read_back)
    assert graph.tensors[index].name.decode() in str(caught.value)


# --------------------------------------------------------------------------- C sources


def test_c_sources_follow_tflm_convention(int8_tflite, tmp_path):
    data = int8_tflite["kws"].read_bytes()
    cc, header = mcu_model.write_model_data(data, tmp_path, source_name="kws.tflite")
    text, head = cc.read_text(), header.read_text()
    assert "alignas(16) const unsigned char g_model[] = {" in text
    assert '#include "model_data.h"' in text
    assert f"constexpr unsigned int g_model_size = {len(data)};" in head
    assert "extern const unsigned char g_model[];" in head


def test_array_name_must_be_a_c_identifier(tmp_path):
    with pytest.raises(UsageError, match="not a C identifier"):
        mcu_model.write_model_data(b"TFL3", tmp_path, array_name="3model")
    assert not list(tmp_path.iterdir())  # nothing half-written


_DUMP = r"""
#include <cstdint>
#include <cstdio>
#include "model_data.h"
int main(int argc, char** argv) {
  if (reinterpret_cast<std::uintptr_t>(NAME) % 16 != 0) return 3;  // alignas(16) held
  std::FILE* out = std::fopen(argv[1], "wb");
  if (out == nullptr) return 2;
  std::fwrite(NAME, 1, NAME_size, out);
  return std::fclose(out);
}
"""


@needs_gxx
@pytest.mark.parametrize("array_name", ["g_model", "g_kws_model_data"])
def test_c_sources_compile_and_embed_the_exact_bytes(int8_tflite, tmp_path, array_name):
    data = int8_tflite["kws"].read_bytes()
    cc, _ = mcu_model.write_model_data(data, tmp_path, array_name=array_name)
    obj = tmp_path / "model_data.o"
    subprocess.run([GXX, "-std=c++17", "-Wall", "-Werror", "-c", str(cc), "-o", str(obj)], check=True, cwd=tmp_path)
    symbols = subprocess.run(["nm", str(obj)], capture_output=True, text=True, check=True).stdout
    assert any(line.split()[-2:] == ["R", array_name] for line in symbols.splitlines()), symbols  # global, read-only
    harness = tmp_path / "dump.cc"
    harness.write_text(_DUMP.replace("NAME", array_name))
    binary = tmp_path / "dump"
    subprocess.run([GXX, "-std=c++17", "-I", str(tmp_path), str(harness), str(obj), "-o", str(binary)], check=True)
    subprocess.run([str(binary), str(tmp_path / "embedded.bin")], check=True)
    assert (tmp_path / "embedded.bin").read_bytes() == data


# --------------------------------------------------------------------------- op resolver


def test_op_resolver_registers_exactly_the_models_ops(int8_tflite, tmp_path):
    graph = mcu_model.read(int8_tflite["kws"])
    header = mcu_model.write_op_resolver(graph, tmp_path, arena_bytes=6350).read_text()
    calls = [line.split(".")[1].split("(")[0] for line in header.splitlines() if "micro_op_resolver.Add" in line]
    # the MicroMutableOpResolver method names of TFLM's API for these four operators
    assert calls == ["AddConv2D", "AddDepthwiseConv2D", "AddFullyConnected", "AddMean"]
    assert "constexpr int kNumberOperators = 4;" in header
    assert "tflite::MicroMutableOpResolver<kNumberOperators>" in header
    assert "constexpr size_t kTensorArenaSize = 6352;" in header  # rounded up to 16 bytes


def test_resolver_table_spells_tflm_methods():
    table = mcu_model.ops_table()["builtin"]
    assert table["PADV2"] == "AddPadV2" and table["CUMSUM"] == "AddCumSum"  # where TFLM's own generator misspells
    assert table["UNIDIRECTIONAL_SEQUENCE_LSTM"] == "AddUnidirectionalSequenceLSTM"
    assert "GELU" not in table and "TOPK_V2" not in table


@needs_gxx
@pytest.mark.skipif(not os.environ.get("EDGEX_TFLM_INCLUDE"), reason="set EDGEX_TFLM_INCLUDE to TFLM source + flatbuffers include dirs (os.pathsep-separated)")
def test_generated_sources_compile_against_real_tflm_headers(int8_tflite, tmp_path):
    data = int8_tflite["kws"].read_bytes()
    mcu_model.write_model_data(data, tmp_path)
    mcu_model.write_op_resolver(mcu_model.read(int8_tflite["kws"]), tmp_path, arena_bytes=8000)
    (tmp_path / "use.cc").write_text(
        '#include "model_ops.h"\n#include "model_data.h"\n#include "tensorflow/lite/micro/micro_interpreter.h"\n'
        "alignas(16) static uint8_t arena[kTensorArenaSize];\n"
        "int run() {\n  static auto resolver = get_resolver();\n"
        "  tflite::MicroInterpreter interpreter(tflite::GetModel(g_model), resolver, arena, kTensorArenaSize);\n"
        "  return interpreter.AllocateTensors() == kTfLiteOk ? 0 : 1;\n}\n"
    )
    includes = [f"-I{p}" for p in os.environ["EDGEX_TFLM_INCLUDE"].split(os.pathsep) if p]
    subprocess.run([GXX, "-std=c++17", "-fsyntax-only", "-DTF_LITE_STATIC_MEMORY", *includes, f"-I{tmp_path}", str(tmp_path / "use.cc")], check=True)
