"""The plugin system: built-ins, entry points, switches, broken and conflicting plugins."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgex.core.errors import PluginError, UsageError
from edgex.core.plugin_manager import BUILTIN_PLUGINS, PluginLoadWarning, PluginManager

SITE = Path(__file__).parent / "data" / "site"


@pytest.fixture
def fake_site(monkeypatch):
    """Third-party distributions 'installed' by putting their dist-info on sys.path."""
    monkeypatch.syspath_prepend(str(SITE))
    for name in ("edgex_torchscript", "edgex_broken", "edgex_clash", "edgex_typo"):
        sys.modules.pop(name, None)
    return SITE


def manager_with(names, **kwargs):
    return PluginManager(environ={"EDGEX_LOAD_PLUGINS": ",".join(names)}, **kwargs)


def test_builtins_register_like_plugins(edgex_manager):
    infos = {p.name: p for p in edgex_manager.plugins()}
    for module in BUILTIN_PLUGINS:
        assert infos[module].status == "loaded" and infos[module].builtin
        assert infos[module].package == "edgex"
    onnx = edgex_manager.resolve_target("onnx")
    assert onnx.plugin == "edgex.targets.onnx.onnx"
    assert edgex_manager.resolve_target("tensorrt").name == "jetson"


def test_unknown_target_is_a_usage_error(edgex_manager):
    with pytest.raises(UsageError, match="unknown target 'nope'.*onnx"):
        edgex_manager.resolve_target("nope")


def test_third_party_target_loads_from_entry_point(fake_site):
    manager = manager_with(["torchscript"])
    target = manager.resolve_target("jit")
    assert (target.name, target.plugin, target.package, target.version) == ("torchscript", "torchscript", "edgex-torchscript", "1.2.0")
    info = {p.name: p for p in manager.plugins()}["torchscript"]
    assert info.status == "loaded" and not info.builtin
    assert "edgex_convert" in info.hooks and "edgex_targets" in info.hooks


def test_third_party_target_converts_and_validates_end_to_end(fake_site, tmp_path):
    from edgex.plugins.testing import check_target_conformance

    result = check_target_conformance("torchscript", tmp_path, manager=manager_with(["torchscript"]))
    assert result.defect_caught and result.precisions["fp32"].backend == "torch.jit"


def test_broken_plugin_is_a_warning_and_a_failed_row(fake_site):
    with pytest.warns(PluginLoadWarning, match="'broken'.*a_module_that_does_not_exist"):
        manager = manager_with(["broken", "torchscript"])
    rows = {p.name: p for p in manager.plugins()}
    assert rows["broken"].status == "failed" and "ModuleNotFoundError" in rows["broken"].error
    assert manager.resolve_target("torchscript")  # the rest still works


def test_unknown_hook_name_fails_that_plugin_only(fake_site):
    with pytest.warns(PluginLoadWarning, match="edgex_convrt"):
        manager = manager_with(["typo"])
    assert {p.name: p.status for p in manager.plugins()}["typo"] == "failed"
    assert manager.resolve_target("onnx")


def test_two_plugins_claiming_one_name_is_an_error_naming_both(fake_site):
    manager = manager_with(["clash"])
    with pytest.raises(PluginError) as info:
        manager.targets()
    message = str(info.value)
    assert "'onnx'" in message and "edgex.targets.onnx.onnx (edgex" in message and "clash (edgex-clash 0.3.0)" in message


def test_disable_autoload_loads_no_third_party_plugin(fake_site):
    manager = PluginManager(environ={"EDGEX_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert all(p.builtin for p in manager.plugins())


def test_load_plugins_selects_by_distribution_name(fake_site):
    manager = PluginManager(environ={"EDGEX_LOAD_PLUGINS": "edgex-torchscript", "EDGEX_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert [p.name for p in manager.plugins() if not p.builtin] == ["torchscript"]
    assert all(p.builtin for p in PluginManager(environ={"EDGEX_LOAD_PLUGINS": ""}).plugins())


def test_trace_plugins_prints_hook_calls(fake_site, capsys):
    manager = PluginManager(environ={"EDGEX_TRACE_PLUGINS": "1", "EDGEX_LOAD_PLUGINS": ""})
    manager.backend_status("onnx")
    assert "edgex_backend_status" in capsys.readouterr().err


def test_compressor_plugins_are_dispatched_to_their_owner():
    import torch

    from edgex.core.types import CompressionRequest, CompressionResult, CompressorSpec
    from edgex.plugins import hookimpl

    class Halve:
        @hookimpl
        def edgex_compressors(self):
            return [CompressorSpec("halve-weights", "multiplies every weight by 0.5", aliases=("halve",))]

        @hookimpl
        def edgex_compress(self, request):
            with torch.no_grad():
                for p in request.module.parameters():
                    p.mul_(0.5)
            return CompressionResult(request.module, request.method, {"factor": 0.5})

    manager = PluginManager(load_entry_points=False, extra_plugins=[Halve()])
    module = torch.nn.Linear(2, 2)
    before = module.weight.clone()
    result = manager.compress(CompressionRequest("halve", module, (torch.zeros(1, 2),)))
    assert torch.allclose(result.module.weight, before * 0.5) and result.summary == {"factor": 0.5}
    with pytest.raises(UsageError, match="unknown compression method 'zip'"):
        manager.resolve_compressor("zip")


def test_observer_exceptions_are_warnings_not_crashes():
    from edgex.core.types import StageEvent
    from edgex.plugins import hookimpl

    seen = []

    class Loud:
        @hookimpl
        def edgex_stage_started(self, event):
            raise RuntimeError("observer bug")

    class Quiet:
        @hookimpl
        def edgex_stage_started(self, event):
            seen.append(event.stage)

    manager = PluginManager(load_entry_points=False, extra_plugins=[Loud(), Quiet()])
    with pytest.warns(PluginLoadWarning, match="observer bug"):
        manager.stage_started(StageEvent("convert", "onnx"))
    assert seen == ["convert"]


def _cli(*args, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(SITE), **(env_extra or {})}
    env.pop("EDGEX_DISABLE_PLUGIN_AUTOLOAD", None)
    return subprocess.run([sys.executable, "-m", "edgex.core.cli", *args], capture_output=True, text=True, env=env, cwd=SITE.parent)


def test_cli_plugins_json_lists_failed_rows():
    done = _cli("plugins", "--json", env_extra={"EDGEX_LOAD_PLUGINS": "torchscript,broken"})
    assert done.returncode == 0, done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)}
    assert rows["torchscript"]["status"] == "loaded" and rows["torchscript"]["version"] == "1.2.0"
    assert rows["broken"]["status"] == "failed" and rows["broken"]["error"]
    assert rows["edgex.targets.onnx.onnx"]["builtin"] is True


def test_cli_targets_json_includes_third_party_and_status():
    done = _cli("targets", "--json", env_extra={"EDGEX_LOAD_PLUGINS": "torchscript"})
    assert done.returncode == 0, done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)}
    assert rows["torchscript"]["package"] == "edgex-torchscript" and rows["torchscript"]["aliases"] == ["jit"]
    assert rows["onnx"]["status"] == "available" and "onnxruntime" in rows["onnx"]["backend"]
    assert rows["jetson"]["aliases"] == ["tensorrt"]


def test_cli_conflict_is_one_line_exit_2():
    done = _cli("targets", env_extra={"EDGEX_LOAD_PLUGINS": "clash"})
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "claimed by two plugins" in done.stderr
