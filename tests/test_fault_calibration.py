"""Issue 25: a --calibration folder holding something that is not an image (notes, a truncated or
corrupt .png, a bad .npy) is exit 2 with one line naming the file and what to do, and nothing is
written; hidden files and an OS's thumbnail files are skipped (docs/reliability.md)."""

import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_cli import one_line_error, run  # noqa: E402  (the CLI tests' helpers)

CONVERT = ["convert", "examples:digits", "-t", "onnx", "--samples", "2"]


def _png(seed: int, size: int = 8) -> bytes:
    from PIL import Image

    pixels = (np.random.default_rng(seed).random((size, size)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def images(tmp_path):
    """A folder of six 8x8 greyscale PNGs (digits' input is 1x1x8x8)."""
    folder = tmp_path / "calib"
    folder.mkdir()
    for i in range(6):
        (folder / f"img{i}.png").write_bytes(_png(i))
    return folder


def _refused(capsys, calibration: Path, out: Path, *names: str) -> str:
    code, _, err = run(capsys, *CONVERT, "--calibration", calibration, "--out", out)
    assert code == 2 and one_line_error(err), err
    assert "internal error" not in err and all(name in err for name in names), err
    assert not out.exists()  # nothing half-written: the run stopped before --out was made
    return err


# --------------------------------------------------------------------------- files that are not images


def _subfolder(folder: Path) -> str:
    (folder / "more").mkdir()
    (folder / "more" / "img9.png").write_bytes(_png(9))
    return "more"


def _file(name: str, content: bytes):
    def put(folder: Path) -> str:
        (folder / name).write_bytes(content)
        return name

    return put


OTHER_FILES = {
    "notes beside the images": _file("notes.txt", b"taken on 2026-12-01\n"),
    "a README without a suffix": _file("README", b"calibration set\n"),
    "an image in a format edgex does not read": _file("scan.tif", b"II*\0"),
    "a subfolder of images": _subfolder,
}


@pytest.mark.parametrize("case", OTHER_FILES)
def test_a_file_that_is_not_an_image_is_refused_naming_it(case, images, tmp_path, capsys):
    name = OTHER_FILES[case](images)
    err = _refused(capsys, images, tmp_path / "out", str(images / name), "move it out of the folder")
    assert err.startswith(f"edgex: error: --calibration {images}: ")


def test_hidden_and_os_files_are_skipped_and_the_images_used(images, tmp_path, capsys):
    (images / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (images / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")
    (images / ".ipynb_checkpoints").mkdir()
    out = tmp_path / "out"
    code, _, err = run(capsys, *CONVERT, "--calibration", images, "--out", out)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    assert report["targets"]["onnx"]["status"] == "passed"
    assert f"--calibration {images}" in report["model"]["parity_inputs"] and "calibration keeps the other 4" in report["model"]["parity_inputs"]

    # the same folder with a stray file, into the same --out: refused, the earlier results untouched
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    (images / "notes.txt").write_text("x")
    code, _, err = run(capsys, *CONVERT, "--calibration", images, "--out", out)
    assert code == 2 and one_line_error(err) and "notes.txt" in err, err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_the_command_prints_one_line_and_nothing_else(images, tmp_path):
    (images / "notes.txt").write_text("x")
    edgex = Path(sys.executable).with_name("edgex")
    done = subprocess.run([str(edgex), *CONVERT, "--calibration", str(images), "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "EDGEX_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert done.returncode == 2 and done.stdout == "", done
    assert done.stderr == (
        f"edgex: error: --calibration {images}: {images / 'notes.txt'} is neither an image nor a .npy file; move it out of the folder "
        "(every file in a data folder is used, and it holds only images (.png, .jpg, .jpeg, .bmp, .gif, .webp) or only .npy files)\n"
    )
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- files named as images that do not decode


def _crc_broken(data: bytes) -> bytes:
    """The PNG with its IDAT chunk's CRC changed: the pixels still decode, the file is corrupt."""
    data = bytearray(data)
    at = data.find(b"IDAT")
    (length,) = struct.unpack(">I", data[at - 4 : at])
    data[at + 4 + length] ^= 0xFF
    return bytes(data)


def _jpeg(seed: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((32, 32, 3)) * 255).astype(np.uint8)).save(buffer, "JPEG")
    return buffer.getvalue()


CORRUPT = {
    "a .png cut in half": ("img9.png", lambda: _png(9, 32)[: len(_png(9, 32)) // 2]),
    "a .png of text": ("img9.png", lambda: b"not an image\n"),
    "an empty .png": ("img9.png", lambda: b""),
    "a .png whose checksum fails": ("img9.png", lambda: _crc_broken(_png(9))),
    "a .jpg cut in half": ("img9.jpg", lambda: _jpeg(9)[: len(_jpeg(9)) // 2]),
}


@pytest.mark.parametrize("case", CORRUPT)
def test_an_image_that_does_not_decode_is_refused_naming_it(case, images, tmp_path, capsys):
    name, content = CORRUPT[case]
    (images / name).write_bytes(content())
    _refused(capsys, images, tmp_path / "out", f"cannot read {images / name} as an image", "replace it or remove it from the folder")


# --------------------------------------------------------------------------- folders of .npy files


@pytest.fixture
def npys(tmp_path):
    folder = tmp_path / "npys"
    folder.mkdir()
    for i in range(4):
        np.save(folder / f"s{i}.npy", np.random.default_rng(i).random((1, 8, 8), dtype=np.float32))
    return folder


def test_a_truncated_npy_is_refused_naming_it(npys, tmp_path, capsys):
    data = (npys / "s2.npy").read_bytes()
    (npys / "s2.npy").write_bytes(data[:100])
    _refused(capsys, npys, tmp_path / "out", f"cannot read {npys / 's2.npy'} as .npy", "replace it or remove it from the folder")


def test_npys_of_different_shapes_are_refused_naming_the_odd_one(npys, tmp_path, capsys):
    np.save(npys / "s9.npy", np.zeros((1, 4, 4), np.float32))
    _refused(capsys, npys, tmp_path / "out", str(npys / "s9.npy"), "(1, 4, 4)", "(1, 8, 8)")


def test_images_and_npys_in_one_folder_are_refused(npys, tmp_path, capsys):
    (npys / "img0.png").write_bytes(_png(0))
    _refused(capsys, npys, tmp_path / "out", "img0.png", "s0.npy", "keep one kind")


def test_a_folder_of_npys_is_used(npys, tmp_path):
    from edgex.core.data import load_samples
    from edgex.core.types import TensorSpec

    (samples,) = load_samples(npys, [TensorSpec("x", (1, 1, 8, 8), "float32")], "--calibration")
    assert samples.shape == (4, 1, 8, 8) and np.array_equal(samples[2, 0], np.load(npys / "s2.npy")[0])
