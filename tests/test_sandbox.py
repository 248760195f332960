"""Nothing leaves --out: no network, no files in $HOME, the working directory or /tmp."""

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from edgex.core.sandbox import contained, offline


def test_offline_refuses_connections():
    with offline():
        with pytest.raises(OSError, match="network access is disabled"):
            socket.create_connection(("203.0.113.1", 443), timeout=1)
    assert socket.create_connection.__name__ == "create_connection"  # restored


def test_contained_redirects_and_restores(tmp_path):
    before, before_env = os.getcwd(), dict(os.environ)
    with contained(tmp_path, chdir=True):
        assert Path(tempfile.gettempdir()) == tmp_path / "tmp"
        assert os.environ["KERAS_HOME"] == str(tmp_path / "keras") and os.environ["XDG_CACHE_HOME"] == str(tmp_path / "cache")
        assert Path(os.getcwd()) == tmp_path
    assert os.getcwd() == before and Path(tempfile.gettempdir()) != tmp_path / "tmp"
    assert dict(os.environ) == before_env


def _snapshot(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("targets", [["onnx", "jetson"], ["tflite"]])
def test_a_conversion_writes_only_inside_out(tmp_path, targets):
    home, cwd, tmp = tmp_path / "home", tmp_path / "cwd", tmp_path / "tmp"
    for folder in (home, cwd, tmp):
        folder.mkdir()
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp)}
    for name in ("XDG_CACHE_HOME", "KERAS_HOME", "TORCH_HOME", "HF_HOME"):
        env.pop(name, None)
    args = [sys.executable, "-m", "edgex.core.cli", "convert", "examples:digits", "--samples", "2", "--out", "out"]
    for target in targets:
        args += ["-t", target]
    if "tflite" in targets:
        args += ["--quantize", "int8"]
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _snapshot(home) == set(), _snapshot(home)
    assert _snapshot(tmp) == set(), _snapshot(tmp)
    assert {p.split("/")[0] for p in _snapshot(cwd)} == {"out"}
    assert not (cwd / "out" / ".edgex-scratch").exists() and not list((cwd / "out").glob(".edgex-tmp-*"))
