"""Test scaffolding for the mcu target's parts: small full-int8 .tflite files.

They are made with TensorFlow's own converter from tiny Keras models (make_int8_models.py, run in
a subprocess so that TensorFlow never enters the pytest process), only so that the TFLM checks,
C sources, arena measurement and vela parsing can be tested on real flatbuffers independently of
edgex's torch -> int8 conversion (edgex.targets.litert.convert, tested end to end in
tests/test_target_mcu.py). Not product code.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

NAMES = ("kws", "gelu", "float_island", "stride4", "two_inputs")


@pytest.fixture(scope="session")
def int8_tflite(tmp_path_factory) -> dict[str, Path]:
    """name -> .tflite made by TensorFlow's converter (test scaffolding, see the module doc)."""
    folder = tmp_path_factory.mktemp("keras_int8")
    script = Path(__file__).with_name("make_int8_models.py")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, str(script), str(folder)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    made = {name: folder / f"{name}.tflite" for name in NAMES}
    assert all(path.exists() for path in made.values()), done.stdout
    return made
