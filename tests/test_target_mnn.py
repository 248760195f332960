"""Target mnn: real MNN conversions (its C extension) run on MNN's CPU runtime; planted defects in
the .mnn flatbuffer caught at every precision; no telemetry; bad input in one line.

One conversion of ``examples:digits`` per precision per module (the fixture); defects are planted
into copies (tests/defects_mnn.py) and each copy validated with a few parity samples.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("MNN")

from edgex.core import api  # noqa: E402
from edgex.core.errors import UsageError  # noqa: E402

import defects_mnn  # noqa: E402  loaded by tests/conftest.py (no test folder is on sys.path)

pytestmark = pytest.mark.slow

SAMPLES = 8
PRECISIONS = ("fp32", "fp16", "dynamic-int8", "int8")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory):
    """precision -> (the .mnn the mnn target writes for examples:digits, its ConversionResult):
    the target's own hook, once per precision, all four reading one shared ONNX export (as a
    run's targets do); the parity tests then validate each file through edgex's API."""
    from edgex.core.types import ConversionRequest
    from edgex.plugins import ExportStore
    from edgex.targets.mnn import mnn

    reference = api.load_model("examples:digits")
    out = tmp_path_factory.mktemp("mnn")
    store = ExportStore(out / "exports")
    calibration = tuple((reference.calibration[0][i:i + 1],) for i in range(len(reference.calibration[0])))
    results = {}
    for precision in PRECISIONS:
        (out / precision).mkdir()
        request = ConversionRequest("mnn", precision, reference, out / precision, calibration if precision == "int8" else None, exports=store)
        result = mnn.edgex_convert(request)
        results[precision] = (result.io.path, result)
    return reference, results


def test_artifacts_say_what_they_are(artifacts):
    from edgex.targets.mnn import mnnfile

    _, results = artifacts
    for precision, (path, result) in results.items():
        assert path.suffix == ".mnn" and mnnfile.precision_of(mnnfile.read(path)) == precision == result.io.precision
        assert result.converter.startswith("torch.onnx.export") and "mnnconvert 3.6.1" in result.converter
        assert sorted(p.name for p in path.parent.iterdir()) == ["model.mnn"]  # the export, calibration and mnnquant's dump removed
    assert results["int8"][1].io.quantization == {"quantizer": "mnnquant", "symmetric_activations": True}  # read from the file
    assert "activation scales set to max|x|/127" in results["int8"][1].converter
    int8 = mnnfile.read(results["int8"][0])
    assert all(conv.clamp == (-127, 127) and conv.activations_int8 for conv in int8.convolutions)
    assert int8.grids and all(grid.zero == 0.0 for grid in int8.grids)  # symmetric activations, declared
    assert all(not conv.asymmetric_weights for conv in mnnfile.read(results["dynamic-int8"][0]).convolutions)  # as simulated
    sizes = {p: path.stat().st_size for p, (path, _) in results.items()}
    assert sizes["int8"] < sizes["fp16"] < sizes["fp32"] and sizes["dynamic-int8"] < sizes["fp16"]


def test_planters_change_what_they_say(artifacts, tmp_path):
    _, rows = artifacts
    for precision in PRECISIONS:
        honest = rows[precision][0]
        before = defects_mnn.layer_values(honest, "middle")
        scaled = defects_mnn.scale_channel(honest, tmp_path / f"{precision}-scale.mnn", layer="middle", channel=3, factor=1.5)
        after = defects_mnn.layer_values(scaled.path, "middle")
        assert np.allclose(after["weights"][3], 1.5 * before["weights"][3], rtol=2e-3, atol=1e-6)
        assert np.array_equal(np.delete(after["weights"], 3, 0), np.delete(before["weights"], 3, 0))
        assert after["bias"][3] == pytest.approx(1.5 * before["bias"][3], rel=1e-6)
        swapped = defects_mnn.swap_channels(honest, tmp_path / f"{precision}-swap.mnn", layer="middle", a=0, b=5)
        after = defects_mnn.layer_values(swapped.path, "middle")
        assert np.array_equal(after["weights"][[0, 5]], before["weights"][[5, 0]]) and np.array_equal(after["bias"][[0, 5]], before["bias"][[5, 0]])
        shifted = defects_mnn.shift_bias(honest, tmp_path / f"{precision}-shift.mnn", layer="middle", shift=0.5)
        after = defects_mnn.layer_values(shifted.path, "middle")
        assert np.allclose(after["bias"] - before["bias"], shifted.details["amount"], rtol=1e-5)
        assert np.array_equal(after["weights"], before["weights"])
        assert Path(honest).stat().st_size == scaled.path.stat().st_size  # patched in place


PLANTS = {
    "channel-x1.5": lambda a, o: defects_mnn.scale_channel(a, o, layer="last", channel=0, factor=1.5),
    "swap-channels": lambda a, o: defects_mnn.swap_channels(a, o, layer="middle", a=0, b=1),
    "shift-bias": lambda a, o: defects_mnn.shift_bias(a, o, layer="middle", shift=0.5),
    "scale-output-x4": lambda a, o: defects_mnn.scale_output(a, o, factor=4.0),
}


def _cases():
    for precision in PRECISIONS:
        for defect in ("honest", *PLANTS):
            if precision != "int8" and defect == "scale-output-x4":
                continue
            yield pytest.param(precision, defect, id=f"{precision}-{defect}")


@pytest.mark.parametrize("precision,defect", list(_cases()))
def test_parity_verdict(artifacts, tmp_path, precision, defect):
    reference, rows = artifacts
    artifact = rows[precision][0]
    if defect != "honest":
        artifact = PLANTS[defect](artifact, tmp_path / "planted" / artifact.name).path
    report = api.validate(artifact, reference, target="mnn", out=tmp_path / "validate", precision=precision, samples=SAMPLES)
    row = report.targets["mnn"]
    sqnr = row.parity.sqnr_db if row.parity else None
    assert row.status == ("passed" if defect == "honest" else "failed"), (sqnr, row.messages)
    assert row.backend.startswith("MNN 3.6.1 CPU backend (precision high, memory normal, 1 thread)")  # what ran, and how
    if precision == "fp16":
        assert "fp16 weights decoded to fp32, fp32 arithmetic" in row.backend
    if precision == "int8" and defect == "honest":
        assert "activations per-tensor symmetric int8" in row.details["int8_reference"]["description"]  # the declared scheme, simulated


def test_validate_refuses_a_file_that_is_not_mnn(artifacts, tmp_path):
    reference, rows = artifacts
    onnx_like = tmp_path / "model.onnx"
    onnx_like.write_bytes(b"\x08\x07" * 64)
    with pytest.raises(UsageError, match="is not an .mnn file"):
        api.validate(onnx_like, reference, target="mnn", out=tmp_path / "a")
    garbage = tmp_path / "model.mnn"
    garbage.write_bytes(b"this is not a flatbuffer at all" * 8)
    with pytest.raises(UsageError, match="cannot read .* as an MNN model"):
        api.validate(garbage, reference, target="mnn", out=tmp_path / "b")


def test_an_op_mnn_lacks_is_named_with_its_node(tmp_path):
    """MNN's converter prints "These Op Not Support: ONNX::Hardmax", writes nothing and returns
    True: edgex makes it one UnsupportedModel line naming the node (the named target's error: exit 3)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Relu", ["x"], ["r"], name="stem/relu"), helper.make_node("Hardmax", ["r"], ["y"], name="head/hardmax")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    path = tmp_path / "hardmax.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    result = subprocess.run(
        [sys.executable, "-m", "edgex.core.cli", "convert", str(path), "--target", "mnn", "--out", str(tmp_path / "out"), "--samples", "2"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 3, result.stdout + result.stderr  # a target that cannot convert: 3
    line = [line for line in result.stdout.splitlines() if line.startswith("mnn:")]
    assert line and "ONNX op Hardmax (head/hardmax)" in line[0], result.stdout


# --------------------------------------------------------------------------- no telemetry

#: the child's audit hook: every process start, exec, shell command and socket while ``recording``
_AUDIT = textwrap.dedent('''
    import json, sys
    seen, recording = [], [True]
    WATCHED = ("os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "socket.connect", "socket.__new__", "socket.getaddrinfo", "urllib.Request")
    def hook(event, args):
        if recording[0] and event.startswith(WATCHED):
            seen.append(event)
    sys.addaudithook(hook)
''')


def _audited(body: str, tmp_path: Path) -> list[str]:
    script = tmp_path / "audited.py"
    script.write_text(_AUDIT + textwrap.dedent(body) + "\nprint('AUDIT ' + json.dumps(seen))\n")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("AUDIT "))
    return json.loads(line[len("AUDIT "):])


def _tiny_onnx(path: Path) -> None:
    """conv, ReLU, global average pool, flatten, linear: an ONNX reference needing no torch."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = {"w1": rng.standard_normal((4, 1, 3, 3)), "b1": rng.standard_normal(4), "w2": rng.standard_normal((10, 4)), "b2": rng.standard_normal(10)}
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["y"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_the_converter_loads_beside_tensorflow():
    """MNN's C extension links its own protobuf: imported plainly in a child forked from a process
    holding TensorFlow (a conversion child of a run that imported it) it aborts the child; edgex
    loads it so it does not."""
    pytest.importorskip("tensorflow")  # in this worker: most test files before this one load it anyway
    from edgex.plugins import start_isolated
    from edgex.targets.mnn import mnn

    assert start_isolated(lambda send: callable(mnn._tools().mnnconvert), what="importing _tools").wait() is True


def test_a_conversion_starts_no_process_and_opens_no_socket(tmp_path):
    """MNN.tools' wrappers run ``pip install`` through os.system and post usage logs; the mnn
    target calls MNN's C converter and quantizer and its runtime (in-process here:
    EDGEX_ISOLATION=none), and the audit hook sees nothing while it converts at int8
    (mnnconvert, mnnquant, MNN's runtime measuring scales) and runs the file. The same hook does
    see an os.system call, so the test can fail."""
    assert _audited("import os\nos.system('true')\n", tmp_path) == ["os.system"]
    _tiny_onnx(tmp_path / "tiny.onnx")
    seen = _audited(f'''
        import os
        from pathlib import Path
        import numpy as np
        os.environ["EDGEX_ISOLATION"] = "none"
        from edgex.core.types import ConversionRequest, ReferenceModel, TensorSpec
        from edgex.targets.mnn import mnn
        work = Path({str(tmp_path)!r})
        (work / "out").mkdir()
        x = np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)
        reference = ReferenceModel("tiny.onnx", (TensorSpec("x", (1, 1, 8, 8), "float32"),), ("y",), (x,), onnx_path=work / "tiny.onnx")
        calibration = tuple((np.random.default_rng(i).standard_normal((1, 1, 8, 8)).astype(np.float32),) for i in range(1, 9))
        request = ConversionRequest("mnn", "int8", reference, work / "out", calibration)
        result = mnn.edgex_convert(request)
        outputs = mnn.MnnRuntime(result.io).run([x])
        recording[0] = False
        assert result.io.precision == "int8" and outputs[0].shape == (1, 10)
        assert not any(name.startswith("MNN.tools") for name in sys.modules)
    ''', tmp_path)
    assert seen == [], seen


def test_check_judges_the_export_mnn_converts(tmp_path):
    from edgex.core.types import ModelOperators, OperatorUse
    from edgex.plugins import target_check

    answer = target_check("mnn", ModelOperators("torch", (OperatorUse("aten.conv2d", 1), OperatorUse("aten.my_odd_op", 1))), "fp32")
    assert "ONNX export" in answer.source and "aten.my_odd_op" in answer.unknown
    assert any("op table is not consulted" in note for note in answer.notes)
