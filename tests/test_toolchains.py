"""Toolchain environments (docs/toolchains.md): built on request from the registry, never used
half-built, named by their spec, run in their own interpreter with arrays crossing, errors and
crashes named and the network refused -- and the user's environment never changed.

A tiny real toolchain (numpy 1.26.4, which cannot live beside this environment's numpy 2) is
built once for the module: a venv and one wheel, seconds from pip's cache."""

import json
import os
import subprocess
import sys
import textwrap
from importlib import metadata

import numpy as np
import pytest

from edgex.core import toolchains
from edgex.core.errors import BackendMissingError, TargetError
from edgex.core.types import ToolchainSpec

TINY = ToolchainSpec("tiny", ("numpy==1.26.4",))

MODULE = textwrap.dedent(
    """
    import os, socket, sys
    import numpy as np

    def info():
        return {"numpy": np.__version__, "prefix": sys.prefix, "tmp": os.environ.get("TMPDIR")}

    def scaled(arrays, factor=2):
        return [a * np.asarray(factor, a.dtype) for a in arrays]

    def refuse(platform):
        raise ValueError(f"unknown platform {platform!r}")

    def connect():
        socket.create_connection(("127.0.0.1", 9), timeout=1)

    def crash():
        os.kill(os.getpid(), 9)
    """
)


def _versions() -> dict[str, str]:
    return {name: metadata.version(name) for name in ("torch", "numpy")}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("toolchains")
    module = root / "module.py"
    module.write_text(MODULE)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGEX_TOOLCHAINS", str(root))
        before = _versions()
        toolchain, made = toolchains.build(TINY, say=lambda line: None)
        yield toolchain, made, before, module


def test_a_build_is_stamped_last_and_leaves_the_users_environment_alone(built):
    toolchain, made, before, module = built
    assert made and toolchain.built
    stamp = json.loads(toolchain.stamp.read_text())
    assert stamp["requirements"] == ["numpy==1.26.4"] and "numpy==1.26.4" in stamp["packages"]
    with toolchain.start(module) as process:
        inside = process.call("info")
    assert inside["numpy"] == "1.26.4" and inside["prefix"] == str(toolchain.path)
    assert _versions() == before and np.__version__ == before["numpy"]  # pip ran as the toolchain's interpreter
    # built: a second build builds nothing
    again, made_again = toolchains.build(TINY, say=lambda line: None)
    assert again.path == toolchain.path and not made_again


def test_arrays_cross_both_ways_in_their_dtypes(built):
    toolchain, _, _, module = built
    arrays = [np.arange(12, dtype=np.float32).reshape(3, 4), np.array([[-3, 5]], dtype=np.int8), np.arange(6, dtype=np.uint8).reshape(1, 2, 3)]
    with toolchain.start(module) as process:
        back = process.call("scaled", arrays, factor=3)
    assert [a.dtype for a in back] == [a.dtype for a in arrays]
    for got, sent in zip(back, arrays):
        np.testing.assert_array_equal(got, sent * np.asarray(3, sent.dtype))


def test_errors_network_and_crashes_come_back_named(built):
    toolchain, _, _, module = built
    with toolchain.start(module, what="the tiny toolchain") as process:
        with pytest.raises(toolchains.ToolchainError) as refused:
            process.call("refuse", "rk9999")
        assert refused.value.remote_type == "ValueError" and "unknown platform 'rk9999'" in refused.value.message
        with pytest.raises(toolchains.ToolchainError, match="network access is disabled"):
            process.call("connect")
        assert process.call("info")["numpy"] == "1.26.4"  # still serving after both
        with pytest.raises(TargetError, match="the tiny toolchain crashed with signal SIGKILL"):
            process.call("crash")


def test_a_changed_spec_gets_its_own_environment(built):
    toolchain, _, _, _ = built
    changed = toolchains.locate(ToolchainSpec("tiny", ("numpy==1.26.4", "six")))
    assert changed.path != toolchain.path and changed.path.parent == toolchain.path.parent and not changed.built
    with pytest.raises(BackendMissingError, match="edgex toolchains build tiny"):
        changed.require()


def test_an_unfinished_build_is_never_used_and_is_built_again(built):
    spec = ToolchainSpec("unfinished", ())
    left = toolchains.locate(spec)
    left.path.mkdir()
    (left.path / "half-installed").write_text("")  # a build killed outright left this, and no stamp
    assert not left.built
    with pytest.raises(BackendMissingError):
        left.require()
    rebuilt, made = toolchains.build(spec, say=lambda line: None)
    assert made and rebuilt.built and not (rebuilt.path / "half-installed").exists()


def test_no_registry_is_one_line_and_keeps_nothing(built, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    spec = ToolchainSpec("offline", ("edgex-no-such-distribution==0.0.1",))
    with pytest.raises(TargetError) as failed:
        toolchains.build(spec, say=lambda line: None)
    assert "the package registry cannot be reached (http://127.0.0.1:9/simple/" in failed.value.message
    assert "edgex toolchains build offline" in failed.value.message and "\n" not in failed.value.message
    where = toolchains.locate(spec)
    assert not where.path.exists() and where.log.is_file()


def test_a_killed_build_step_is_named_and_keeps_nothing(tmp_path):
    with open(tmp_path / "log", "w") as log, pytest.raises(TargetError, match=r"pip install was killed \(SIGKILL\); nothing was kept"):
        toolchains._step(TINY, [sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"], log, "pip install")


def test_the_command_line(built, tmp_path):
    toolchain, _, _, _ = built
    env = {**os.environ, "EDGEX_TOOLCHAINS": str(toolchain.path.parent)}
    done = subprocess.run([sys.executable, "-m", "edgex.core.cli", "toolchains", "build", "no-such"], capture_output=True, text=True, env=env)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "no toolchain named 'no-such'" in done.stderr
    done = subprocess.run([sys.executable, "-m", "edgex.core.cli", "toolchains", "remove", "tiny"], capture_output=True, text=True, env=env)
    assert done.returncode == 0 and str(toolchain.path) in done.stdout and not toolchain.path.exists()
