"""edgex-rknn as an installed outside distribution: rknn-toolkit2 in its toolchain, parity on the
toolkit's simulator, and planted defects caught at fp16 and int8.

The conversions need the rknn toolchain (``edgex toolchains build rknn``, which CI runs before
pytest): without it they skip, unless ``EDGEX_REQUIRE_TOOLCHAINS`` names rknn (CI sets it), when
they fail. The .rknn format is not published, so defects are planted in the ONNX model handed to
the toolkit (``plugin._toolkit_input``), which the torch reference never sees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from edgex.core import api
from edgex.core.toolchains import locate

from edgex_rknn import plugin

REQUIRED = "rknn" in os.environ.get("EDGEX_REQUIRE_TOOLCHAINS", "").split(",")
needs_toolchain = pytest.mark.skipif(
    not locate(plugin.TOOLCHAIN).built and not REQUIRED,
    reason="the rknn toolchain is not built (edgex toolchains build rknn)",
)


def _defects():
    """edgex's artifact planters (its tests/defects.py; loaded by its conftest in a whole-suite run)."""
    if "defects" not in sys.modules:
        import importlib.util

        spec = importlib.util.spec_from_file_location("defects", Path(__file__).parents[3] / "tests" / "defects.py")
        sys.modules["defects"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["defects"]


def _calibration():
    """64 of digits' 1,315 shipped calibration images: the toolkit, edgex's simulation and the
    algorithm choice each calibrate on all of them otherwise (the benchmark does, for the figure)."""
    return (api.load_model("examples:digits").calibration[0][:64],)


def _cli(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgex.core.cli", *argv], capture_output=True, text=True, env={**os.environ, **(env or {})})


def test_unavailable_until_its_toolchain_is_built(tmp_path):
    from edgex.core.plugin_manager import PluginManager

    os.environ["EDGEX_TOOLCHAINS"] = str(tmp_path / "none")
    try:
        status = PluginManager().backend_status("rockchip")
    finally:
        del os.environ["EDGEX_TOOLCHAINS"]
    assert not status.available and status.install_hint == "edgex toolchains build rknn"
    done = _cli("convert", "examples:digits", "-t", "rknn", "--out", str(tmp_path / "out"), env={"EDGEX_TOOLCHAINS": str(tmp_path / "none")})
    assert done.returncode == 3 and "toolchain 'rknn' (rknn-toolkit2==2.5.0) is not built; edgex toolchains build rknn" in done.stdout
    assert not (tmp_path / "none").exists()  # convert never builds one


def test_bad_platforms_are_one_line_usage_errors(tmp_path):
    done = _cli("convert", "examples:digits", "-t", "rknn", "--rknn-platform", "rk9999", "--out", str(tmp_path / "a"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "invalid choice: 'rk9999'" in done.stderr
    with pytest.raises(Exception, match="computes in int8 only"):
        plugin._platform({"rknn_platform": "rv1106"}, "fp16")
    with pytest.raises(Exception, match="unknown --rknn-platform 'rk9999'"):
        plugin._platform({"rknn_platform": "rk9999"}, "int8")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """digits at fp16 (int8 is the conformance test's), the user's versions around it."""
    out = tmp_path_factory.mktemp("rknn")
    before = {name: metadata.version(name) for name in ("torch", "numpy", "onnx")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEX_LOAD_PLUGINS", "rknn")  # conftest's only_this_plugin is per test
        reports = {precision: api.convert("examples:digits", ["rknn"], out=out / precision, precision=precision, samples=8) for precision in ("fp16",)}
    after = {name: metadata.version(name) for name in ("torch", "numpy", "onnx")}
    return reports, before, after, out


@needs_toolchain
def test_digits_pass_on_the_simulator_and_the_users_environment_is_untouched(converted):
    reports, before, after, out = converted
    assert before == after
    for precision, report in reports.items():
        row = report.targets["rknn"]
        assert row.status == "passed", (precision, row.messages)
        assert "simulator" in row.backend and "no Rockchip NPU was run" in row.backend
        assert [p.name for p in (out / precision).rglob("*.rknn")] == ["model.rknn"]
        record = json.loads((out / precision / "rknn" / "model.rknn.json").read_text())  # what validate builds it again from
        assert record["precision"] == precision and all((out / precision / "rknn" / p).is_file() for p in record["inputs"].values() if p)
    data = json.loads((out / "fp16" / "report.json").read_text())["targets"]["rknn"]
    assert data["emulated"] and data["simulator"] and data["platform"] == "rk3588"


@needs_toolchain
@pytest.mark.parametrize(("precision", "defect"), [("fp16", "swap_channels"), ("int8", "scale_channel")])
def test_defects_planted_in_the_model_handed_to_the_toolkit_are_caught(precision, defect, tmp_path, monkeypatch):
    defects = _defects()
    handed = plugin._toolkit_input

    def planted(request):
        onnx, exporter, messages = handed(request)
        getattr(defects, defect)(onnx, onnx.with_name("planted.onnx"))
        onnx.with_name("planted.onnx").replace(onnx)
        return onnx, exporter, messages

    monkeypatch.setattr(plugin, "_toolkit_input", planted)  # the conversion's child is forked from here
    row = api.convert("examples:digits", ["rknn"], out=tmp_path / "out", precision=precision, samples=8, calibration=_calibration()).targets["rknn"]
    assert row.status == "failed", (precision, defect, row.status, row.messages)
    if precision == "fp16":  # explain: built again from the record (the planted ONNX), read layer by layer
        report = api.explain(tmp_path / "out" / "rknn" / "model.rknn", "examples:digits", target="rknn", out=tmp_path / "explain")
        suspects = [layer.module for layer in report.suspects]
        assert report.first_flagged is not None and "features.3" in suspects, suspects  # swap_channels' middle layer
        assert all(layer.passed for layer in report.matched[: report.matched.index(report.first_flagged)])


@needs_toolchain
def test_validate_refuses_a_changed_file_and_one_without_its_record(converted, tmp_path):
    import shutil

    _, _, _, out = converted  # an honest validate passes: the conformance test's, below
    changed = shutil.copytree(out / "fp16" / "rknn", tmp_path / "changed")
    data = bytearray((changed / "model.rknn").read_bytes())
    data[len(data) // 2] ^= 1  # one bit of the weights
    (changed / "model.rknn").write_bytes(bytes(data))
    row = api.validate(changed / "model.rknn", "examples:digits", target="rknn", out=tmp_path / "v-changed", samples=8).targets["rknn"]
    assert row.status == "error" and "its sha256 is not its build record's" in " ".join(row.messages)
    (changed / "model.rknn.json").unlink()
    done = _cli("validate", str(changed / "model.rknn"), "--reference", "examples:digits", "--out", str(tmp_path / "v-alone"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "has no build record beside it" in done.stderr


def test_the_toolkit_module_imports_nothing_of_edgex():
    source = Path(plugin._TOOLKIT).read_text()
    assert "edgex" not in "".join(line for line in source.splitlines() if line.lstrip().startswith(("import ", "from ")))


@needs_toolchain
def test_an_op_the_npu_cannot_build_is_named_in_one_line(tmp_path):
    factory = tmp_path / "unique_net.py"
    factory.write_text(
        "import torch, torch.nn as nn\n"
        "class Net(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__(); self.fc = nn.Linear(16, 16)\n"
        "    def forward(self, x):\n"
        "        return torch.unique(self.fc(x).round())\n"
        "def make():\n"
        "    return Net().eval(), (torch.randn(1, 16),)\n"
    )
    done = _cli("convert", f"{factory}:make", "-t", "rknn", "--out", str(tmp_path / "out"))
    assert done.returncode == 3, done.stdout + done.stderr
    assert "rknn-toolkit2 cannot build op Unique at ONNX node" in done.stdout and "the NPU needs a static graph" in done.stdout
    assert not list((tmp_path / "out").rglob("*.rknn"))


@needs_toolchain
def test_conformance(tmp_path):
    """The kit validates the int8 artifact against perturbed references: ``edgex validate`` of a
    .rknn builds it again from its record and simulates that build. No artifact planters (the .rknn
    format is not published): the kit lists them as not checked."""
    from edgex.plugins.testing import check_target_conformance

    result = check_target_conformance("rknn", tmp_path / "out", precisions=["int8"])  # fp16: the digits tests
    assert set(result.precisions) == {"int8"} and len(result.defects) == 2 and all(result.defects.values())
    assert all("scale_output" in line or "edgex check" in line for line in result.not_checked), result.not_checked
    recipe = json.loads((tmp_path / "out" / "int8" / "report.json").read_text())["targets"]["rknn"]["int8_recipe"]
    assert recipe["chosen"]["recipe"] in plugin.ALGORITHMS and recipe["candidates"][0]["recipe"] == "normal"
