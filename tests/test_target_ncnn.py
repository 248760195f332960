"""Target ``ncnn``: real pnnx conversion, parity on the ncnn runtime's Python bindings, defects
planted in the .bin (tests/defects.py) at fp32 and fp16 storage, bad input, int8 refused,
``edgex explain`` by blob, ``edgex check``.

The digits CNN is converted once per precision (module fixtures); defects go into copies.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("pnnx")
pytest.importorskip("ncnn")

import defects  # noqa: E402  tests/defects.py, loaded by tests/conftest.py
from edgex.core import api  # noqa: E402
from edgex.core.errors import UsageError  # noqa: E402
from edgex.core.pipeline import plan_targets  # noqa: E402
from edgex.core.plugin_manager import PluginManager  # noqa: E402
from edgex.targets.ncnn.ncnn import describe_ncnn  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from test_cli import one_line_error, run  # noqa: E402  (the CLI tests' helpers)

pytestmark = pytest.mark.slow

SAMPLES = 8
ERFINV = '''
import torch
class Erfinv(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)
    def forward(self, x):
        return torch.special.erfinv(torch.tanh(self.fc(x)) * 0.9)
def build():
    torch.manual_seed(0)
    return Erfinv().eval(), (torch.randn(1, 8),)
'''


def _convert(out: Path, precision: str):
    report = api.convert("examples:digits", ["ncnn"], out=out, precision=precision, samples=SAMPLES)
    row = report.targets["ncnn"]
    assert row.status == "passed", row.messages
    return out / row.artifacts[0], row


@pytest.fixture(scope="module")
def digits_fp32(tmp_path_factory):
    return _convert(tmp_path_factory.mktemp("ncnn-fp32"), "fp32")


@pytest.fixture(scope="module")
def digits_fp16(tmp_path_factory):
    return _convert(tmp_path_factory.mktemp("ncnn-fp16"), "fp16")


def _validate(path: Path, out: Path):
    return api.validate(path, "examples:digits", out=out, samples=SAMPLES).targets["ncnn"]


# --------------------------------------------------------------------------- honest artifacts


def test_fp32_ships_the_two_ncnn_files_and_runs_with_fp16_off(digits_fp32):
    path, row = digits_fp32
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.ncnn.bin", "model.ncnn.param"]  # no pnnx side files
    assert "use_fp16_arithmetic off" in row.backend and row.parity.sqnr_db > 100


def test_fp16_stores_float16_weights_and_validate_reads_them(digits_fp16, digits_fp32, tmp_path):
    path, row = digits_fp16
    assert "use_fp16_arithmetic on" in row.backend
    assert path.with_suffix(".bin").stat().st_size < 0.6 * digits_fp32[0].with_suffix(".bin").stat().st_size
    again = _validate(path, tmp_path)  # validate knows fp16 from the weights' storage tags alone
    assert again.status == "passed" and again.precision == "fp16"


# --------------------------------------------------------------------------- planted defects


PLANTERS = {
    "scale_channel": lambda p, o: defects.ncnn_scale_channel(p, o, layer="last", channel=3, factor=1.5),
    "swap_channels": lambda p, o: defects.ncnn_swap_channels(p, o, layer="middle", a=0, b=1),
    "shift_bias": lambda p, o: defects.ncnn_shift_bias(p, o, layer="middle", channel=None, shift=1.0),
}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_defects_planted_in_the_bin_fail_parity(precision, digits_fp32, digits_fp16, tmp_path):
    path = (digits_fp32 if precision == "fp32" else digits_fp16)[0]
    # at fp16 the weights are float16 in the .bin (the bias stays float32: shift_bias is fp32's edit)
    for name, plant in PLANTERS.items() if precision == "fp32" else [(k, PLANTERS[k]) for k in ("scale_channel", "swap_channels")]:
        planted = plant(path, tmp_path / name / "model.ncnn.param")
        assert planted.details["dtype"] == ("float32" if precision == "fp32" else "float16")
        row = _validate(planted.path, tmp_path / name / "out")
        assert row.status == "failed" and row.precision == precision, (name, row.parity)


# --------------------------------------------------------------------------- refusals and bad input


def test_int8_is_refused_with_the_reason(digits_fp32):
    model = api.load_model("examples:digits")
    manager = PluginManager(load_entry_points=False)
    with pytest.raises(UsageError, match="ncnn2int8.*sdist"):
        plan_targets(manager, ["ncnn"], "int8", model)
    (plan,) = [p for p in plan_targets(manager, ["all"], "int8", model) if p.target == "ncnn"]
    assert "ncnn2table" in plan.skip


def test_bad_artifacts_are_one_line_usage_errors(digits_fp32, tmp_path, capsys):
    param = digits_fp32[0]
    alone = tmp_path / "alone" / "model.ncnn.param"
    alone.parent.mkdir()
    shutil.copyfile(param, alone)
    foreign = tmp_path / "foreign.ncnn.param"
    foreign.write_text("not ncnn\n")
    other = tmp_path / "other" / "model.ncnn.param"  # a .bin of another model beside it
    other.parent.mkdir()
    shutil.copyfile(param, other)
    other.with_suffix(".bin").write_bytes(param.with_suffix(".bin").read_bytes()[:-8])
    code, _, err = run(capsys, "validate", alone, "--reference", "examples:digits", "--out", tmp_path / "out")
    assert code == 2 and one_line_error(err) and "no model.ncnn.bin beside it" in err, err
    reference = api.load_model("examples:digits")
    for bad, said in ((param.with_suffix(".bin"), "pass its .param"), (foreign, "not an ncnn .param"), (other, "does not hold")):
        with pytest.raises(UsageError, match=said):
            describe_ncnn(bad, reference)


def test_an_op_without_an_ncnn_layer_is_named(tmp_path):
    model = tmp_path / "erfinv.py"
    model.write_text(ERFINV)
    row = api.convert(f"{model}:build", ["ncnn"], out=tmp_path / "out", samples=4).targets["ncnn"]
    assert row.status == "error" and "aten::erfinv" in row.messages[0], row.messages
    check = api.plugin_manager().check_operators("ncnn", _operators(f"{model}:build"), "fp32")
    assert [f.operator for f in check.findings] == ["aten.special_erfinv"]


def _operators(spec: str):
    from edgex.core.check import torch_operators

    return torch_operators(api.load_model(spec))


def test_check_predicts_the_digits_cnn_converts():
    check = api.plugin_manager().check_operators("ncnn", _operators("examples:digits"), "fp32")
    assert not check.findings and not check.unknown


# --------------------------------------------------------------------------- explain


def test_explain_locates_a_channel_scaled_in_the_bin(digits_fp32, tmp_path, capsys):
    # the second convolution (features.3, with features.4's batch norm and features.5's ReLU fused in)
    bad = defects.ncnn_scale_channel(digits_fp32[0], tmp_path / "bad" / "model.ncnn.param", layer=1, channel=0, factor=3.0)
    code, printed, err = run(capsys, "explain", bad.path, "--reference", "examples:digits", "--json", "--out", tmp_path / "out")
    assert code == 1, err
    report = json.loads(printed)
    layers = {layer["module"]: layer for layer in report["layers"]}
    flagged = report["first_flagged"]
    assert "features.3" in [flagged, *layers[flagged]["fused_with"]], report["verdict"]
    assert layers["features.2"]["passed"]  # the first convolution, before it, is fine


def test_a_pnnx_crash_is_one_line(tmp_path, monkeypatch):
    from edgex.core.errors import TargetError
    from edgex.targets.ncnn import ncnn as plugin

    crashing = tmp_path / "pnnx"
    crashing.write_text("#!/bin/sh\necho converting\nkill -SEGV $$\n")
    crashing.chmod(0o755)
    monkeypatch.setattr(plugin, "_pnnx_executable", lambda: crashing)
    (tmp_path / "scratch").mkdir()
    with pytest.raises(TargetError, match=r"pnnx crashed \(SIGSEGV\)"):
        plugin._run_pnnx(api.load_model("examples:digits"), tmp_path / "scratch", fp16=False)
