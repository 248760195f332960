"""A content-addressed cache of per-target results: an unchanged rerun reuses artifacts and verdicts.

An entry is keyed by the sha256 of a canonical JSON document (:func:`cache_key`) that covers
everything a target's result depends on: the model's content (file bytes, the factory's source,
the state dict, the example inputs), every field of :class:`ConvertSettings` (data given as
paths or arrays hashed by content), the resolved run inputs, the target and precision, and the
versions of edgex, of every loaded plugin and of the target's backend. Nothing is keyed by a
file's name or time.

An entry is a folder ``ROOT/KEY[:2]/KEY`` holding ``row.json`` (the target's report row),
``files/`` (the target folder's artifacts) and ``manifest.json`` (every file's sha256). It is
written into a temporary folder beside it and renamed into place, so a reader sees a whole
entry or none; a reader checks every file's hash, and an entry with a missing, extra or changed
file is removed and recomputed, never served (:meth:`ResultCache.damage_note` says why, for the
report). See docs/cache.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from edgex.core.errors import one_line
from edgex.core.loading import file_sha256, module_sha256
from edgex.core.version import __version__

if TYPE_CHECKING:  # pragma: no cover
    from edgex.core.data import RunInputs
    from edgex.core.plugin_manager import PluginManager
    from edgex.core.report import TargetReport
    from edgex.core.settings import ConvertSettings
    from edgex.core.types import ReferenceModel

#: bump when the key's document or the entry's layout changes: old entries then simply miss
CACHE_FORMAT = 1
MANIFEST = "manifest.json"
ROW = "row.json"
FILES = "files"
#: the folder a matrix caches into, inside its --out
MATRIX_CACHE_DIR = ".edgex-cache"


# --------------------------------------------------------------------------- hashing content


def array_digest(array: Any) -> str:
    """sha256 of an array's dtype, shape and bytes (a torch tensor is read as numpy)."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def canonical(value: Any) -> Any:
    """``value`` as plain JSON, content standing in for what a name cannot vouch for: a path
    becomes its bytes' sha256, an array its data's sha256, a dataclass its fields."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return repr(value)  # inf and nan too, and no float formatting differences
    if isinstance(value, Path):  # a folder by its files' names too: renaming an image reorders the samples
        if value.is_dir():
            return {"folder": {p.relative_to(value).as_posix(): file_sha256(p) for p in sorted(value.rglob("*")) if p.is_file()}}
        return {"file_sha256": file_sha256(value)} if value.exists() else {"missing_path": str(value)}
    if isinstance(value, np.ndarray) or hasattr(value, "detach"):
        return {"array_sha256": array_digest(value)}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"type": type(value).__name__, **{f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return canonical(value.item())
    raise TypeError(f"cannot key the cache on a {type(value).__name__}")


DATA_FIELDS = ("calibration", "parity_inputs", "eval_data", "distill_data")


def settings_identity(settings: ConvertSettings) -> dict[str, Any]:
    """Every field of the settings; data given as a path string is hashed by content too."""
    fields = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if f.name in DATA_FIELDS and isinstance(value, str):
            value = Path(value)
        fields[f.name] = canonical(value)
    return fields


def model_identity(model: ReferenceModel) -> dict[str, Any]:
    """The model's content: its file's bytes (ONNX, .pt2, TorchScript, a factory's .py), the
    source file of its class, its state dict, its inputs; the spec only by its last name
    (``file.py:make`` -> ``make``), so that a moved folder still hits."""
    name = model.spec.rpartition(":")[2] if ":" in model.spec else Path(model.spec).name
    identity: dict[str, Any] = {
        "name": name,
        "kind": model.kind,
        "sha256": model.sha256,
        "inputs": [dataclasses.asdict(spec) for spec in model.inputs],
        "outputs": list(model.output_names),
        "example_inputs": [array_digest(a) for a in model.example_inputs],
    }
    if model.module is not None:
        identity["state_dict"] = module_sha256(model.module, "")
        identity["class_source"] = _class_source_digest(model.module)
    return identity


def _class_source_digest(module: Any) -> str | None:
    """sha256 of the file defining the model's class: an in-memory model's code counts too."""
    import inspect

    try:
        source = inspect.getsourcefile(type(module))
    except (TypeError, OSError):
        return None
    return file_sha256(Path(source)) if source and Path(source).is_file() else None


def inputs_identity(inputs: RunInputs) -> dict[str, Any]:
    """The data the run resolved (parity, calibration, eval): what the target is judged on."""
    def batches(items: Any) -> list[Any]:
        return [[array_digest(a) for a in batch] for batch in items or ()]

    return {
        "parity": batches(inputs.parity),
        "calibration": batches(inputs.calibration_batches),
        "eval": batches(inputs.eval_batches),
        "eval_labels": array_digest(inputs.eval_labels) if inputs.eval_labels is not None else None,
    }


def versions_identity(manager: PluginManager, target: str) -> dict[str, Any]:
    """edgex's version, every loaded plugin's package and version, the target's backend."""
    from importlib import metadata

    status = manager.backend_status(target)
    registered = manager.resolve_target(target)
    versions: dict[str, Any] = {
        "edgex": __version__,
        "plugins": sorted(f"{p.name} {p.package} {p.version} {p.status}" for p in manager.plugins()),
        "target_plugin": f"{registered.plugin} {registered.package} {registered.version}",
        "backend": status.backend,
        "backend_detail": status.detail,
        "emulated": status.emulated,
    }
    for package in ("numpy", "torch"):  # what the reference side computes with
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def run_identity(model: ReferenceModel, settings: ConvertSettings, inputs: RunInputs) -> dict[str, Any]:
    """What every target of a run shares in its key (hashed once per run, not per target).
    Raises TypeError when a setting holds something edgex cannot hash by content."""
    return {"model": model_identity(model), "settings": settings_identity(settings), "inputs": inputs_identity(inputs)}


def cache_key(manager: PluginManager, run: Mapping[str, Any], target: str, precision: str) -> str:
    """The sha256 naming a target's result (``run`` from :func:`run_identity`): the same key
    means the same work would be done."""
    document = {"format": CACHE_FORMAT, **run, "target": target, "precision": precision, "versions": versions_identity(manager, target)}
    text = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


# --------------------------------------------------------------------------- entries


@dataclasses.dataclass(frozen=True)
class CachedResult:
    key: str
    #: the target's report row, as report.json has it (artifact paths relative to --out)
    row: dict[str, Any]
    #: the entry's copy of the target folder
    files: Path
    #: the model's multiply-accumulates as the run that stored it counted them (None: uncounted)
    macs: int | None = None


class ResultCache:
    """Entries under ``root``, each written whole (temp + rename) and checked whole on read."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        #: the entries :meth:`load` found damaged and removed: key -> the report message saying so
        self.damaged: dict[str, str] = {}

    def entry(self, key: str) -> Path:
        return self.root / key[:2] / key

    def load(self, key: str) -> CachedResult | None:
        """The entry for ``key``, or None when there is none or it is damaged. A damaged entry is
        removed (the target is recomputed and stored afresh) and :meth:`damage_note` says why."""
        entry = self.entry(key)
        if not os.path.lexists(entry):
            return None
        cached, problem = self._check(entry, key)
        if problem is None:
            return cached
        _discard(entry)
        how = "ignored and removed" if not os.path.lexists(entry) else f"ignored (it could not be removed: delete {entry})"
        self.damaged[key] = f"cache entry {key[:12]} was damaged ({problem}): {how}; converted and validated afresh"
        return None

    def damage_note(self, key: str | None) -> str | None:
        """The report message for ``key``'s entry when :meth:`load` found it damaged, else None."""
        return self.damaged.get(key) if key is not None else None

    def _check(self, entry: Path, key: str) -> tuple[CachedResult | None, str | None]:
        """The entry read and checked whole, or None and what is wrong with it, in a few words."""
        if entry.is_symlink() or not entry.is_dir():
            return None, "it is not a folder"
        try:
            manifest = json.loads((entry / MANIFEST).read_text())
        except FileNotFoundError:
            return None, f"{MANIFEST} is missing"
        except (OSError, ValueError) as exc:  # truncated, not JSON, not text
            return None, f"{MANIFEST} is unreadable: {one_line(exc)}"
        listed = manifest.get("files") if isinstance(manifest, dict) else None
        if not isinstance(listed, dict) or not all(isinstance(v, str) for v in listed.values()):
            return None, f"{MANIFEST} lists no files"
        if manifest.get("key") != key:
            return None, f"{MANIFEST} names another key"
        try:
            present = {p.relative_to(entry).as_posix() for p in entry.rglob("*") if p.is_file() or p.is_symlink()} - {MANIFEST}
        except OSError as exc:
            return None, f"it cannot be listed: {one_line(exc)}"
        missing, extra = sorted(set(listed) - present), sorted(present - set(listed))
        if missing:
            return None, f"{missing[0]} is missing"
        if extra:
            return None, f"{extra[0]} is not in its manifest"
        for name, digest in sorted(listed.items()):
            path = entry / name
            try:
                if path.is_symlink():  # store() never writes one: a link's target may change under it
                    return None, f"{name} is a symbolic link"
                actual = file_sha256(path)
            except OSError as exc:
                return None, f"{name} is unreadable: {one_line(exc)}"
            if actual != digest:
                return None, f"{name} does not match the sha256 its manifest lists: truncated or changed since it was stored"
        try:
            row = json.loads((entry / ROW).read_text())
            row_from_json("cached", row)  # serving it must not fail
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as exc:
            return None, f"{ROW} is not a report row: {one_line(exc)}"
        macs = manifest.get("macs")
        return CachedResult(key, row, entry / FILES, macs if isinstance(macs, int) and not isinstance(macs, bool) else None), None

    def store(self, key: str, row: Mapping[str, Any], target_folder: Path | None, macs: int | None = None) -> None:
        """Keep ``row`` and a copy of ``target_folder``; written aside and renamed into place."""
        from edgex.core.report import write_json_atomic

        final = self.entry(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = final.parent / f".tmp-{key[:12]}-{uuid.uuid4().hex[:8]}"
        try:
            (staging / FILES).mkdir(parents=True)
            if target_folder is not None and target_folder.is_dir():
                shutil.copytree(target_folder, staging / FILES, dirs_exist_ok=True)
            write_json_atomic(staging / ROW, dict(row))
            files = {p.relative_to(staging).as_posix(): file_sha256(p) for p in sorted(staging.rglob("*")) if p.is_file()}
            write_json_atomic(staging / MANIFEST, {"format": CACHE_FORMAT, "key": key, "edgex_version": __version__, "macs": macs, "files": files})
            if os.path.lexists(final) and self._check(final, key)[1] is not None:
                _discard(final)  # a damaged entry load() could not remove; a racing writer's whole entry stays
            try:
                os.replace(staging, final)
            except OSError:  # another run stored the same key first: its entry is as good
                pass
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _discard(path: Path) -> None:
    """Remove an entry (a folder, or whatever stands at its place), as far as permissions allow."""
    if path.is_symlink() or not path.is_dir():
        try:
            path.unlink()
        except OSError:
            pass
    else:
        shutil.rmtree(path, ignore_errors=True)


def restore(cached: CachedResult, destination: Path) -> None:
    """Copy an entry's files to ``destination`` (which must not exist yet)."""
    shutil.copytree(cached.files, destination)


def row_from_json(name: str, data: Mapping[str, Any]) -> TargetReport:
    """A report row read back from its JSON (report.json's shape) as a :class:`TargetReport`."""
    from edgex.core.parity import OutputParity, ParityReport, Tolerance
    from edgex.core.report import TargetReport

    data = dict(data)

    def number(value: Any) -> Any:  # report.json writes inf/nan as strings
        return float(value) if isinstance(value, str) else value

    def tolerance(t: Mapping[str, Any]) -> Tolerance:
        return Tolerance(number(t["atol"]), number(t["rtol"]), t["source"], number(t.get("min_sqnr_db")), t.get("problem", ""))

    parity = None
    if data.get("parity"):
        p = data["parity"]
        outputs = tuple(
            OutputParity(o["name"], number(o["max_abs"]), number(o["mean_abs"]), number(o["max_rel"]), tolerance(o["tolerance"]), number(o["within_tolerance"]), o["passed"], number(o["sqnr_db"]))
            for o in p.get("outputs", ())
        )
        parity = ParityReport(
            p["samples"], number(p["max_abs"]), number(p["mean_abs"]), number(p["max_rel"]), number(p["cosine"]), number(p["sqnr_db"]),
            number(p["top1_agreement"]), tolerance(p["tolerance"]), p["passed"], p.get("inputs", ""), outputs,
            error_histogram=p.get("error_histogram"),
        )
    known = ("status", "plugin", "precision", "artifacts", "size_bytes", "backend", "converter", "convert_seconds", "parity", "latency_ms", "io", "accuracy", "messages", "requested")
    return TargetReport(
        name=name,
        status=data["status"],
        plugin=data.get("plugin", ""),
        precision=data.get("precision", ""),
        artifacts=list(data.get("artifacts", [])),
        size_bytes=data.get("size_bytes", 0),
        backend=data.get("backend", ""),
        converter=data.get("converter", ""),
        convert_seconds=data.get("convert_seconds", 0.0),
        parity=parity,
        latency_ms=data.get("latency_ms"),
        io=data.get("io"),
        accuracy=data.get("accuracy"),
        messages=list(data.get("messages", [])),
        details={k: v for k, v in data.items() if k not in known},
        requested=bool(data.get("requested", True)),  # a field: left in details it would override the serving run's
    )
