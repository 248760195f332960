"""The content-addressed result cache: what its key covers, reuse, and damaged entries recomputed."""

import json
from pathlib import Path

from edgex.core import api
from edgex.core.cache import ResultCache, cache_key, row_from_json, run_identity
from edgex.core.cli import main
from edgex.core.data import resolve_inputs
from edgex.core.loading import load_model
from edgex.core.plugin_manager import make_manager
from edgex.core.settings import make_settings

MODELS = Path(__file__).parent / "models.py"
FACTORY = """import torch


def make():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).eval(), (torch.randn(1, 4),)
"""


def key_of(spec, weights=None, **settings_values):
    model = load_model(str(spec), weights=weights)
    settings = make_settings(targets=("onnx",), samples=2, **settings_values)
    return cache_key(make_manager(), run_identity(model, settings, resolve_inputs(model, settings)), "onnx", "fp32")


def test_the_key_covers_source_weights_settings_and_data(tmp_path):
    import numpy as np
    import torch

    factory = tmp_path / "net.py"
    factory.write_text(FACTORY)
    spec = f"{factory}:make"
    base = key_of(spec)
    assert key_of(spec) == base  # unchanged: the same key
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "net.py").write_text(FACTORY)
    assert key_of(f"{moved / 'net.py'}:make") == base  # content, not the folder it lies in

    changed = {}
    factory.write_text(FACTORY + "\n# a comment is a change of source\n")
    changed["source"] = key_of(spec)
    factory.write_text(FACTORY)
    model, _ = __import__("runpy").run_path(str(factory))["make"]()
    state = model.state_dict()
    state["0.bias"] = state["0.bias"] + 1e-3
    torch.save(state, tmp_path / "w.pt")
    changed["weights"] = key_of(spec, weights=tmp_path / "w.pt")
    changed["tolerance"] = key_of(spec, atol=1e-3)
    changed["option"] = key_of(spec, options={"opset": 17})
    changed["seed"] = key_of(spec, seed=1)
    np.save(tmp_path / "x.npy", np.ones((2, 4), np.float32))
    first = key_of(spec, parity_inputs=tmp_path / "x.npy")
    np.save(tmp_path / "x.npy", np.full((2, 4), 2.0, np.float32))
    changed["data file bytes"] = key_of(spec, parity_inputs=tmp_path / "x.npy")
    assert first != changed["data file bytes"]
    assert len({base, *changed.values()}) == len(changed) + 1, changed


def convert(tmp_path, out, cache):
    return api.convert(f"{MODELS}:lstm_tiny", ["onnx"], out=tmp_path / out, samples=2, cache=tmp_path / cache)


def entry_files(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*") if p.is_file() and p.parent.name == "files")


def test_an_unchanged_rerun_is_served_from_the_cache_and_a_damaged_entry_is_recomputed(tmp_path):
    first = convert(tmp_path, "first", "cache")
    fresh = first.targets["onnx"]
    assert fresh.status == "passed" and "cached" not in fresh.details

    argv = ["convert", f"{MODELS}:lstm_tiny", "-t", "onnx", "--samples", "2", "--cache", str(tmp_path / "cache")]
    assert main([*argv, "--out", str(tmp_path / "forced"), "--no-cache"]) == 0  # neither read nor written
    assert "cached" not in json.loads((tmp_path / "forced" / "report.json").read_text())["targets"]["onnx"]
    assert main([*argv, "--out", str(tmp_path / "again")]) == 0
    served = row_from_json("onnx", json.loads((tmp_path / "again" / "report.json").read_text())["targets"]["onnx"])
    assert served.details["cached"] is True and served.messages[-1].startswith("from cache ")
    assert served.status == "passed" and served.parity.passed and served.parity.max_abs == fresh.parity.max_abs
    assert (tmp_path / "again" / served.artifacts[0]).read_bytes() == (tmp_path / "first" / fresh.artifacts[0]).read_bytes()
    on_disk = json.loads((tmp_path / "again" / "report.json").read_text())["targets"]["onnx"]
    assert on_disk["cached"] is True and on_disk["parity"] == json.loads((tmp_path / "first" / "report.json").read_text())["targets"]["onnx"]["parity"]

    (artifact,) = entry_files(tmp_path / "cache")
    artifact.write_bytes(artifact.read_bytes() + b"\0")  # a flipped bit on disk
    recomputed = convert(tmp_path, "third", "cache").targets["onnx"]
    assert "cached" not in recomputed.details and recomputed.status == "passed"
    (artifact,) = entry_files(tmp_path / "cache")  # stored afresh, intact
    assert artifact.read_bytes() == (tmp_path / "third" / recomputed.artifacts[0]).read_bytes()

    entry = artifact.parent.parent
    (entry / "row.json").unlink()  # a partial entry
    assert ResultCache(tmp_path / "cache").load(entry.name) is None and not entry.exists()


def test_a_row_reads_back_as_it_was_written():
    row = {
        "status": "failed", "plugin": "edgex.targets.onnx.onnx", "precision": "int8", "artifacts": ["onnx/model.onnx"], "size_bytes": 10,
        "backend": "onnxruntime", "converter": "torch.onnx", "convert_seconds": 1.5, "latency_ms": {"mean": 1.0}, "io": None, "accuracy": None,
        "parity": {
            "samples": 2, "max_abs": "inf", "mean_abs": 0.5, "max_rel": 1.0, "cosine": 0.9, "sqnr_db": 3.0, "top1_agreement": None,
            "tolerance": {"atol": 0.1, "rtol": 0.0, "source": "int8 step", "min_sqnr_db": 10.0}, "passed": False, "inputs": "seeded",
            "outputs": [{"name": "y", "max_abs": 1.0, "mean_abs": 0.5, "max_rel": 1.0, "tolerance": {"atol": 0.1, "rtol": 0.0, "source": "s"}, "within_tolerance": 0.5, "passed": False, "sqnr_db": 3.0}],
        },
        "messages": ["y differs"], "requested": True, "int8_reference": {"scheme": "int8"},
    }
    back = row_from_json("onnx", row).to_json()
    assert back["parity"]["max_abs"] == float("inf") and back["int8_reference"] == {"scheme": "int8"}
    assert {k: v for k, v in back.items() if k != "parity"} == {k: v for k, v in row.items() if k != "parity"}


def test_matrix_rerun_uses_its_cache_inside_out_and_no_cache_forces_work(tmp_path):
    config = tmp_path / "matrix.toml"
    config.write_text(f'targets = ["onnx"]\nsamples = 2\n[[models]]\nspec = "{MODELS}:lstm_tiny"\nname = "lstm"\n')
    out = tmp_path / "out"

    def cached_flags(*flags):
        assert main(["matrix", str(config), "--out", str(out), *flags]) == 0
        cells = json.loads((out / "results.json").read_text())
        assert all((out / a).exists() for c in cells for a in c["targets"]["onnx"]["artifacts"])
        return [c["targets"]["onnx"].get("cached", False) for c in cells]

    assert cached_flags() == [False]
    assert list((out / ".edgex-cache").rglob("manifest.json"))  # the default cache lies inside --out
    assert cached_flags() == [True]
    assert cached_flags("--no-cache") == [False]
