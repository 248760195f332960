"""The TFLM runtime of the mcu target on real .tflite files (bindings made by hand here; the
pipeline path, with describe_tflite's bindings, is in tests/test_target_mcu.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgex.core.errors import TargetError
from edgex.core.types import ArtifactIO, TensorBinding
from edgex.targets.mcu import mcu


def _io(path, names_in, names_out) -> ArtifactIO:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    inputs = {d["name"]: d for d in interpreter.get_input_details()}
    outputs = {d["name"]: d for d in interpreter.get_output_details()}
    bind = lambda d: TensorBinding(d["name"], tuple(int(x) for x in d["shape"]), np.dtype(d["dtype"]).name)  # noqa: E731
    return ArtifactIO(path, "int8", tuple(bind(inputs[n]) for n in names_in), tuple(bind(outputs[n]) for n in names_out))


def _litert(path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    for detail in interpreter.get_input_details():
        interpreter.set_tensor(detail["index"], feeds[detail["name"]])
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]


def _names(path):
    from edgex.targets.mcu import model as mcu_model

    return mcu_model.io_names(mcu_model.read(path))


def test_tflm_runs_within_one_lsb_of_litert(int8_tflite):
    path = int8_tflite["kws"]
    names_in, names_out = _names(path)
    runtime = mcu.TFLMRuntime(_io(path, names_in, names_out), {})
    assert runtime.backend.startswith("tflite-micro ") and "arena" in runtime.backend
    rng = np.random.default_rng(0)
    worst = 0
    for _ in range(8):
        x = rng.integers(-128, 128, (1, 49, 10, 1), dtype=np.int8)
        (ours,) = runtime.run([x])
        (theirs,) = _litert(path, {names_in[0]: x})
        assert ours.dtype == np.int8 and ours.shape == theirs.shape
        worst = max(worst, int(np.abs(ours.astype(int) - theirs.astype(int)).max()))
    assert worst <= 1
    details = runtime.details()
    assert details["memory"]["arena"]["minimum_bytes"] > 0
    assert details["litert_comparison"]["samples"] == 8
    json.dumps(details)


def test_inputs_are_bound_by_name_not_position(int8_tflite):
    path = int8_tflite["two_inputs"]
    names_in, names_out = _names(path)
    rng = np.random.default_rng(3)
    feeds = {name: rng.integers(-128, 128, (1, 8 if "left" in name else 6), dtype=np.int8) for name in names_in}
    straight = mcu.TFLMRuntime(_io(path, names_in, names_out), {})
    swapped = mcu.TFLMRuntime(_io(path, names_in[::-1], names_out), {})
    (a,) = straight.run([feeds[n] for n in names_in])
    (b,) = swapped.run([feeds[n] for n in names_in[::-1]])
    np.testing.assert_array_equal(a, b)
    (reference,) = _litert(path, feeds)
    assert np.abs(a.astype(int) - reference.astype(int)).max() <= 1


def test_device_fit_joins_the_details_and_no_fit_is_an_error(int8_tflite, tmp_path):
    path = int8_tflite["stride4"]
    names_in, names_out = _names(path)
    io = _io(path, names_in, names_out)
    fits = mcu.TFLMRuntime(io, {"device": "nucleo-f446re"}).details()["fit"]
    assert fits["fits"] and fits["device"] == "nucleo-f446re" and fits["ram_headroom_bytes"] > 0
    board = tmp_path / "tiny.json"
    board.write_text(json.dumps({"name": "tiny", "core": "Cortex-M0+", "ram_kb": 2, "flash_kb": 16}))
    with pytest.raises(TargetError, match=r"needs \d+\.\d KB arena \+ \d+\.\d KB flash, tiny has 2 KB RAM, 16 KB flash"):
        mcu.TFLMRuntime(io, {"device": str(board)})


def test_model_tflm_cannot_run_is_a_target_error(int8_tflite):
    path = int8_tflite["gelu"]
    names_in, names_out = _names(path)
    with pytest.raises(TargetError, match="GELU"):
        mcu.TFLMRuntime(_io(path, names_in, names_out), {})


def test_validate_refuses_files_tflm_cannot_take_before_running_anything(int8_tflite, tmp_path):
    from edgex.core.errors import UsageError

    with pytest.raises(UsageError, match="not full int8.*float32.*validates full-int8 models"):
        mcu.edgex_describe_artifact("mcu", int8_tflite["float_island"], None)
    source = tmp_path / "model_data.cc"
    source.write_text("// C")
    with pytest.raises(UsageError, match="C source"):
        mcu.edgex_describe_artifact("mcu", source, None)
