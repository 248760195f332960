"""Issue 25: a damaged --cache entry (truncated, or a manifest that lies about its hashes) is never
served: the target is converted and validated afresh, the entry replaced, and the report says so."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from edgex.core.cache import MANIFEST, ROW, ResultCache
from edgex.core.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from test_cli import run  # noqa: E402  (the CLI tests' helper: exit code, stdout, stderr)

CONVERT = ["convert", "examples:digits", "-t", "onnx", "--samples", "2"]


def _entry(cache: Path) -> Path:
    (entry,) = [p for p in cache.glob("*/*") if not p.name.startswith(".")]
    return entry


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """digits converted once for onnx into a cache: (its --out, a pristine copy of the cache)."""
    root = tmp_path_factory.mktemp("first")
    assert main([*CONVERT, "--cache", str(root / "cache"), "--out", str(root / "out")]) == 0
    return root / "out", root / "cache"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_artifact_byte(entry: Path) -> None:
    """The artifact's bytes change and the manifest is not updated (same length: a flipped bit)."""
    artifact = entry / "files" / "model.onnx"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))


def _edit_manifest_hash(entry: Path) -> None:
    manifest = json.loads((entry / MANIFEST).read_text())
    manifest["files"]["files/model.onnx"] = "0" * 64
    (entry / MANIFEST).write_text(json.dumps(manifest))


DAMAGE = {
    "artifact cut in half": (lambda e: _truncate(e / "files" / "model.onnx"), "files/model.onnx does not match the sha256"),
    "row.json cut in half": (lambda e: _truncate(e / ROW), "row.json does not match the sha256"),
    "manifest cut in half": (lambda e: _truncate(e / MANIFEST), "manifest.json is unreadable"),
    "artifact changed, manifest not updated": (_flip_artifact_byte, "files/model.onnx does not match the sha256"),
    "manifest's hash edited": (_edit_manifest_hash, "files/model.onnx does not match the sha256"),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_entry_is_never_served_and_is_replaced(damage, first, tmp_path, capsys):
    first_out, pristine = first
    cache = tmp_path / "cache"
    shutil.copytree(pristine, cache)
    entry = _entry(cache)
    key = entry.name
    harm, problem = DAMAGE[damage]
    harm(entry)

    code, printed, err = run(capsys, *CONVERT, "--cache", str(cache), "--out", str(tmp_path / "out"))
    assert code == 0, err
    assert "Traceback" not in err and "internal error" not in err
    row = json.loads((tmp_path / "out" / "report.json").read_text())["targets"]["onnx"]
    assert row["status"] == "passed" and "cached" not in row  # converted and validated afresh
    good = (first_out / "onnx" / "model.onnx").read_bytes()
    assert (tmp_path / "out" / "onnx" / "model.onnx").read_bytes() == good  # never the damaged copy
    note = f"cache entry {key[:12]} was damaged ({problem}"
    assert any(m.startswith(note) and m.endswith("ignored and removed; converted and validated afresh") for m in row["messages"]), row["messages"]
    assert f"onnx: {note}" in printed

    replaced = ResultCache(cache).load(key)  # the entry stored afresh, whole, without the note
    assert replaced is not None and (replaced.files / "model.onnx").read_bytes() == good
    assert not any("damaged" in m for m in replaced.row["messages"])


def test_the_replaced_entry_is_served_on_the_next_run(first, tmp_path, capsys):
    first_out, pristine = first
    cache = tmp_path / "cache"
    shutil.copytree(pristine, cache)
    _flip_artifact_byte(_entry(cache))
    assert main([*CONVERT, "--cache", str(cache), "--out", str(tmp_path / "second")]) == 0
    code, printed, err = run(capsys, *CONVERT, "--cache", str(cache), "--out", str(tmp_path / "third"))
    assert code == 0, err
    row = json.loads((tmp_path / "third" / "report.json").read_text())["targets"]["onnx"]
    assert row["cached"] is True and not any("damaged" in m for m in row["messages"])
    assert (tmp_path / "third" / "onnx" / "model.onnx").read_bytes() == (first_out / "onnx" / "model.onnx").read_bytes()


# --------------------------------------------------------------------------- ResultCache alone (no conversion)


@pytest.fixture
def stored(tmp_path):
    """A small entry written by ResultCache.store: (the cache, its key, the entry folder)."""
    folder = tmp_path / "target"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.bin").write_bytes(bytes(range(256)) * 8)
    (folder / "sub" / "weights.bin").write_bytes(b"w" * 100)
    cache, key = ResultCache(tmp_path / "cache"), "ab" + "0" * 62
    cache.store(key, {"status": "passed", "artifacts": ["t/model.bin"], "messages": []}, folder, macs=7)
    assert cache.load(key) is not None and cache.damaged == {}
    return cache, key, cache.entry(key)


def _rewrite_manifest(entry: Path, change) -> None:
    manifest = json.loads((entry / MANIFEST).read_text())
    change(manifest)
    (entry / MANIFEST).write_text(json.dumps(manifest))


ENTRY_DAMAGE = {
    "a file cut in half": (lambda e: _truncate(e / "files" / "sub" / "weights.bin"), "files/sub/weights.bin does not match the sha256"),
    "manifest missing": (lambda e: (e / MANIFEST).unlink(), "manifest.json is missing"),
    "manifest not JSON": (lambda e: (e / MANIFEST).write_bytes(b"\xff\x00{"), "manifest.json is unreadable"),
    "manifest a list": (lambda e: (e / MANIFEST).write_text("[]"), "manifest.json lists no files"),
    "manifest of another key": (lambda e: _rewrite_manifest(e, lambda m: m.update(key="cd" + "0" * 62)), "manifest.json names another key"),
    "a listed file missing": (lambda e: (e / "files" / "model.bin").unlink(), "files/model.bin is missing"),
    "an extra file": (lambda e: (e / "files" / "extra.txt").write_text("x"), "files/extra.txt is not in its manifest"),
    "row not a report row": (
        lambda e: ((e / ROW).write_text("[1]"), _rewrite_manifest(e, lambda m: m["files"].update({ROW: __import__("hashlib").sha256(b"[1]").hexdigest()}))),
        "row.json is not a report row",
    ),
}


@pytest.mark.parametrize("damage", ENTRY_DAMAGE)
def test_load_names_what_is_wrong_with_a_damaged_entry_and_removes_it(damage, stored):
    cache, key, entry = stored
    harm, problem = ENTRY_DAMAGE[damage]
    harm(entry)
    fresh = ResultCache(cache.root)
    assert fresh.load(key) is None and not entry.exists()
    note = fresh.damage_note(key)
    assert note.startswith(f"cache entry {key[:12]} was damaged ({problem}") and "\n" not in note, note
    assert fresh.damage_note("ff" + "0" * 62) is None and fresh.damage_note(None) is None


def test_a_file_in_the_place_of_an_entry_is_damaged_and_replaced(stored, tmp_path):
    cache, key, entry = stored
    shutil.rmtree(entry)
    entry.write_text("not an entry")
    assert cache.load(key) is None and not entry.exists()
    assert "it is not a folder" in cache.damage_note(key)
    cache.store(key, {"status": "passed", "messages": []}, None)
    assert cache.load(key) is not None


def test_a_missing_entry_is_a_plain_miss(tmp_path):
    cache = ResultCache(tmp_path / "cache")
    assert cache.load("ab" + "0" * 62) is None and cache.damaged == {}


def test_storing_a_key_again_keeps_the_intact_entry_a_racing_run_stored(stored, tmp_path):
    cache, key, entry = stored
    inode = entry.stat().st_ino
    cache.store(key, {"status": "passed", "messages": []}, None)  # the second writer of the same key
    assert entry.stat().st_ino == inode and cache.load(key).macs == 7
