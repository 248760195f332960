"""Keep converters and runtimes offline and inside ``--out``.

Converters and runtimes reach beyond their work folder on their own: onnx2tf downloads sample
data and writes to the current directory, TensorFlow and the converters create temporary files,
Keras creates ``~/.keras``, onnxruntime keeps a telemetry database and a device id under
``~/.cache/Microsoft``. The pipeline runs every target under :func:`offline` and
:func:`contained` so that none of that leaves ``--out`` or touches the network.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator

#: environment variables that tell libraries where to keep caches and temporary files
#: (torch's inductor writes its cache folder into the environment on first use: without it
#: here, the next run in the same process would write into this run's removed scratch)
_REDIRECTED = ("TMPDIR", "KERAS_HOME", "XDG_CACHE_HOME", "TORCH_HOME", "HF_HOME", "TORCHINDUCTOR_CACHE_DIR", "MPLCONFIGDIR")


@contextlib.contextmanager
def offline() -> Iterator[None]:
    """Refuse every socket connection: edgex never touches the network."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError("edgex: network access is disabled (a converter or runtime tried to connect)")

    saved = (socket.socket.connect, socket.socket.connect_ex, socket.create_connection, socket.getaddrinfo)
    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse  # type: ignore[assignment]
    socket.getaddrinfo = refuse  # type: ignore[assignment]
    try:
        yield
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.create_connection, socket.getaddrinfo = saved  # type: ignore[method-assign]


#: the redirected variables as they were outside every ``contained`` block (a stack: blocks nest)
_OUTSIDE: list[dict[str, str | None]] = []


def outside_env(name: str) -> str | None:
    """An environment variable ``contained`` redirects, as the user set it (toolchains live in
    the user's cache folder, not a run's scratch)."""
    return _OUTSIDE[0].get(name) if _OUTSIDE else os.environ.get(name)


@contextlib.contextmanager
def contained(scratch: Path, *, chdir: bool = False) -> Iterator[None]:
    """Point temporary files and library caches into ``scratch`` (and ``chdir`` into it)."""
    scratch = Path(scratch).resolve()
    (scratch / "tmp").mkdir(parents=True, exist_ok=True)
    saved_cwd, saved_tempdir = os.getcwd(), tempfile.tempdir
    saved_env = {name: os.environ.get(name) for name in _REDIRECTED}
    _OUTSIDE.append(saved_env)
    os.environ["TMPDIR"] = tempfile.tempdir = str(scratch / "tmp")
    os.environ["KERAS_HOME"] = str(scratch / "keras")
    os.environ["XDG_CACHE_HOME"] = str(scratch / "cache")
    os.environ["TORCH_HOME"] = str(scratch / "torch")
    os.environ["HF_HOME"] = str(scratch / "huggingface")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(scratch / "torchinductor")
    os.environ["MPLCONFIGDIR"] = str(scratch / "matplotlib")  # the report page's plots: its font cache
    if chdir:
        os.chdir(scratch)
    try:
        yield
    finally:
        _OUTSIDE.pop()
        os.chdir(saved_cwd)
        tempfile.tempdir = saved_tempdir
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
