"""The rknn target's side inside its toolchain: rknn-toolkit2 driven as Rockchip documents it.

This file runs in the rknn toolchain's own interpreter (``edgex toolchains build rknn``: numpy
1.26, torch 2.4, rknn-toolkit2 2.5.0), started by edgex from the target's isolated child
(``edgex.plugins.toolchain``). So it imports only the standard library, numpy and rknn -- never
edgex, which is not installed there. Each function is a call the plugin makes; arrays and paths
cross, and the toolkit's output goes to the target's log.

A built model stays loaded in a *session* (one ``RKNN`` object), because the toolkit's
simulator runs only a model it has just built: ``load_rknn`` then ``init_runtime()`` without a
board is refused. The artifact exported from a session and the simulator's outputs are the
same build.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
from typing import Any, Iterator

#: live sessions by name: (RKNN object, what it was built as)
_SESSIONS: dict[str, Any] = {}
_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


class ToolkitError(RuntimeError):
    """rknn-toolkit2 said no: the step, and its own error lines."""


@contextlib.contextmanager
def _said(lines: list[str]) -> Iterator[None]:
    """Capture what the toolkit prints (it reports failures as ``E step: ...`` lines and a -1),
    then pass it on to the log."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 1)
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])
            capture.seek(0)
            text = capture.read().decode(errors="replace")
            sys.stdout.write(text)
            sys.stdout.flush()
            lines.extend(_COLOUR.sub("", line).strip() for line in text.splitlines())


def _step(name: str, call: Any) -> Any:
    lines: list[str] = []
    try:
        with _said(lines):
            result = call()
    except Exception as exc:  # the toolkit raises ValueError whose text is a whole traceback
        errors = _errors(lines)
        text = [line.strip() for line in str(exc).splitlines() if line.strip()]
        raise ToolkitError(f"{name}: " + (" | ".join(errors[:2]) if errors else (text[-1] if text else type(exc).__name__))) from None
    if result is None or (isinstance(result, int) and result != 0):
        errors = _errors(lines)
        raise ToolkitError(f"{name}: " + (" | ".join(errors[:2]) if errors else f"returned {result!r} (the toolkit's output is in the log)"))
    return result


def _errors(lines: list[str]) -> list[str]:
    """The toolkit's error lines (``E step: ...``), without the one it prints on every success."""
    noise = ("Unkown op target: 0", "rknn-toolkit2 version", "Traceback (most recent call last)")
    return [line[2:].strip() for line in lines if line.startswith("E ") and not any(n in line for n in noise)]


def version() -> str:
    from importlib import metadata

    return metadata.version("rknn-toolkit2")


def build(session: str, onnx: str, out: str, platform: str, precision: str, algorithm: str, dataset: str | None) -> dict[str, Any]:
    """Convert ``onnx`` for ``platform`` at ``precision`` ("fp16", or "int8" calibrated on the
    ``dataset`` list file with ``algorithm``), export it to ``out`` and keep it loaded on the
    simulator as ``session``; what was built."""
    from rknn.api import RKNN

    release(session)
    started = time.monotonic()
    rknn = RKNN(verbose=False)
    try:
        # mean 0 and std 1: edgex hands the model's own inputs, normalisation stays in the model
        _step("config", lambda: rknn.config(target_platform=platform, quantized_algorithm=algorithm, quantized_method="channel", quantized_dtype="w8a8"))
        _step("load_onnx", lambda: rknn.load_onnx(model=onnx))
        _step("build", lambda: rknn.build(do_quantization=precision == "int8", dataset=dataset if precision == "int8" else None))
        _step("export_rknn", lambda: rknn.export_rknn(out))
        _step("init_runtime", lambda: rknn.init_runtime())  # no target: the simulator
    except BaseException:
        rknn.release()
        raise
    _SESSIONS[session] = rknn
    return {"seconds": round(time.monotonic() - started, 3), "bytes": os.path.getsize(out)}


def infer(session: str, inputs: list[Any]) -> list[Any]:
    """The session's outputs for one batch of inputs (NCHW, as the ONNX model takes them)."""
    import numpy as np

    rknn = _SESSIONS[session]
    outputs = _step("inference", lambda: rknn.inference(inputs=[np.ascontiguousarray(x, dtype=np.float32) for x in inputs], data_format="nchw"))
    return [np.asarray(o) for o in outputs]


def release(session: str) -> None:
    rknn = _SESSIONS.pop(session, None)
    if rknn is not None:
        rknn.release()


def rename(session: str, name: str) -> None:
    """Keep ``session`` under ``name`` (the candidate chosen becomes the artifact's session)."""
    release(name)
    _SESSIONS[name] = _SESSIONS.pop(session)


_ROW = re.compile(r"^\[(?P<op>[^\]]+)\]\s+(?P<name>\S+)")


def analyze(session: str, inputs: list[Any], folder: str) -> list[dict[str, Any]]:
    """The toolkit's per-layer accuracy analysis of one sample on the simulator: every layer's
    simulated output (flat, as the toolkit dumps it), in run order, with its op and tensor name."""
    import numpy as np

    rknn = _SESSIONS[session]
    os.makedirs(folder, exist_ok=True)
    paths = []
    for index, array in enumerate(inputs):
        paths.append(os.path.join(folder, f"input{index}.npy"))
        np.save(paths[-1], np.ascontiguousarray(array, dtype=np.float32))
    _step("accuracy_analysis", lambda: rknn.accuracy_analysis(inputs=paths, output_dir=folder, target=None))
    files = {}
    with open(os.path.join(folder, "map_name_to_file.txt")) as listing:
        for line in listing:
            parts = line.split()
            if len(parts) == 2 and parts[1].endswith(".txt"):
                files[parts[0]] = parts[1]
    layers = []
    with open(os.path.join(folder, "error_analysis.txt")) as table:
        for line in table:
            row = _ROW.match(line.strip())
            if not row or row.group("name") not in files:
                continue
            dump = os.path.join(folder, "simulator", files[row.group("name")])
            if os.path.exists(dump):
                layers.append({"name": row.group("name"), "op": row.group("op"), "value": np.loadtxt(dump, dtype=np.float32, ndmin=1)})
    return layers
