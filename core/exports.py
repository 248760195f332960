"""One ONNX export per run, opset and exporter, shared by every target that asks for it (and,
by the same means, one LiteRT conversion per converter path and recipe: :meth:`ExportStore.once`).

``onnx``, ``jetson``, ``openvino`` (and every later target that reads ONNX) start from the same
torch -> ONNX export. A run's :class:`ExportStore` lives in the run's scratch folder inside
``--out``; a target asks for an export through ``ConversionRequest.onnx_export`` and gets a copy
of the store's file, which it may change. Targets convert in children, several at once under a
matrix's ``--jobs``: each export is made under a file lock, so the first child to ask makes it
and every later one waits for it and copies it.

Two layers are shared:

- the **torch export** itself (``torch.onnx.export`` by one exporter), the costly part: the
  dynamo exporter always exports at opset >= 18, so an opset-17 request (``jetson``) and an
  opset-18 one (``onnx``) share one dynamo export; a failed export is remembered too, so the
  next target does not spend the same minute failing again;
- the **export at an opset** (the torch export taken down by ``convert_opset`` where it is
  newer), one file per (opset, exporter, dynamic batch): what ``report.json``'s
  ``model.exports`` lists, with the seconds it took and the targets that used it.

The files each target ships are what the per-target export made before: the same exporter, the
same opset, the same graph.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import io as _io
import json
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from edgex.core.errors import TargetError, one_line
from edgex.core.types import ReferenceModel

DEFAULT_OPSET = 18
DYNAMO_MIN_OPSET = 18  # the dynamo exporter has no implementations below it
EXPORTERS = {"auto": ("dynamo", "torchscript"), "dynamo": ("dynamo",), "torchscript": ("torchscript",)}


def _opset_of_model(model: Any) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def opset_of(path: Path) -> int:
    """The default-domain opset an ONNX file imports."""
    import onnx

    return _opset_of_model(onnx.load(str(path), load_external_data=False))


def convert_opset(path: Path, opset: int) -> None:
    """Rewrite the ONNX at ``path`` down to ``opset`` with onnx's version converter, checked.

    onnx's adapters keep attributes the older operator does not know (ReduceMean 18 -> 13 keeps
    ``noop_with_empty_axes``): one left at its default changes nothing and is dropped; any other
    value has no older equivalent and fails the conversion. The converter also drops each
    node's metadata, which holds the module scopes ``explain`` attributes ops by: it is copied
    back by node name. Parity of the result is proven by the target's validation like any other
    artifact's.
    """
    import onnx
    from onnx import defs, helper, version_converter

    model = onnx.load(str(path))
    source = _opset_of_model(model)
    metadata = {node.name: list(node.metadata_props) for node in model.graph.node if node.name}
    converted = version_converter.convert_version(model, opset)
    for node in converted.graph.node:
        if not node.metadata_props and node.name in metadata:
            node.metadata_props.extend(metadata[node.name])
        if node.domain not in ("", "ai.onnx"):
            continue
        known = defs.get_schema(node.op_type, opset).attributes
        newer = defs.get_schema(node.op_type, source).attributes
        for attr in list(node.attribute):
            if attr.name in known:
                continue
            default = newer[attr.name].default_value if attr.name in newer else None
            if default is None or not default.name or helper.get_attribute_value(attr) != helper.get_attribute_value(default):
                raise ValueError(f"{node.op_type} attribute {attr.name} has no opset {opset} equivalent")
            node.attribute.remove(attr)
    onnx.checker.check_model(converted, full_check=True)
    onnx.save(converted, str(path))


def _torch_export(model: ReferenceModel, path: Path, kind: str, opset: int, dynamic_batch: bool) -> None:
    """``torch.onnx.export`` of the reference by one exporter (``kind``) at ``opset``."""
    import torch

    args = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in model.example_inputs)
    names = [s.name for s in model.inputs]
    with contextlib.redirect_stdout(_io.StringIO()):
        if kind == "dynamo":
            dynamic = None
            if dynamic_batch:
                batch = torch.export.Dim("batch")
                dynamic = {n: {0: batch} for n in names}
            torch.onnx.export(
                model.module, args, str(path), dynamo=True, external_data=False, opset_version=opset,
                input_names=names, output_names=list(model.output_names), dynamic_shapes=dynamic,
                verbose=False, report=False,
            )
        else:
            axes = {n: {0: "batch"} for n in [*names, *model.output_names]} if dynamic_batch else None
            torch.onnx.export(
                model.module, args, str(path), dynamo=False, opset_version=opset,
                input_names=names, output_names=list(model.output_names), dynamic_axes=axes,
            )


def _model_key(model: ReferenceModel) -> str:
    """Which of the run's models this is: the reference, or a target's rewritten copy of it
    (``Rewriter.for_target`` hands every target with the same rewrites the same object, and the
    children that convert are forked from the process that holds them)."""
    return f"model{id(model.module):x}"


class ExportStore:
    """A run's shared exports, in ``folder`` (inside the run's ``--out``), safe across processes:
    ONNX files (:meth:`onnx`), and any other conversion step several targets make alike
    (:meth:`once`: LiteRT's converter paths, which ``tflite``, ``coral`` and ``mcu`` all run)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @contextlib.contextmanager
    def _locked(self, key: str) -> Iterator[Path]:
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self.folder / f"{key}.json"
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _torch_export(self, model: ReferenceModel, kind: str, opset: int, dynamic_batch: bool) -> tuple[Path | None, str, float]:
        """The torch export by ``kind`` at ``opset`` (made once): its file, or None and why it
        failed; and the seconds this call spent making it (0 when another made it first)."""
        key = f"{_model_key(model)}-torch-{kind}-opset{opset}" + ("-dynamic" if dynamic_batch else "")
        path = self.folder / f"{key}.onnx"
        with self._locked(key) as record:
            if record.exists():
                done = json.loads(record.read_text())
                return (path if done["ok"] else None), done["failure"], 0.0
            start = time.perf_counter()
            partial = self.folder / f"{key}.partial.onnx"
            failure = ""
            try:
                _torch_export(model, partial, kind, opset, dynamic_batch)
                partial.replace(path)
            except Exception as exc:
                failure = f"{kind} exporter failed: {one_line(exc)}"
                partial.unlink(missing_ok=True)
            seconds = time.perf_counter() - start
            record.write_text(json.dumps({"ok": not failure, "failure": failure, "seconds": seconds}))
            return (None if failure else path), failure, seconds

    def onnx(self, model: ReferenceModel, dest: Path, *, opset: int = DEFAULT_OPSET, dynamic_batch: bool = False, exporter: str = "auto", target: str | None = None) -> tuple[str, list[str]]:
        """The reference exported to ONNX at ``opset``, copied to ``dest``; returns (converter
        description, messages). Made on the first call for this (opset, exporter, dynamic batch);
        ``target`` is recorded as one of its users.

        Tries the dynamo exporter first and the TorchScript exporter when it fails (or as told by
        ``exporter``), so that a model one exporter cannot handle still converts, and says which.
        Below opset 18 the dynamo exporter's graph is taken down by ``convert_opset``: a
        ``torch.export`` program (``.pt2``) has no TorchScript route (its module refuses ``train()``).
        """
        if exporter not in EXPORTERS:
            raise TargetError(f"unknown ONNX exporter {exporter!r}; exporters: {', '.join(EXPORTERS)}", stage="convert")
        key = f"{_model_key(model)}-onnx-opset{opset}-{exporter}" + ("-dynamic" if dynamic_batch else "")
        path = self.folder / f"{key}.onnx"
        with self._locked(key) as record:
            if record.exists():
                done = json.loads(record.read_text())
            else:
                done = self._export(model, path, opset, dynamic_batch, exporter)
            if done.get("failure"):
                record.write_text(json.dumps(done))
                raise TargetError(done["failure"], stage="convert")
            if target is not None and target not in done["targets"]:
                done["targets"].append(target)
            record.write_text(json.dumps(done))
        shutil.copyfile(path, dest)
        return done["converter"], list(done["messages"])

    def _export(self, model: ReferenceModel, path: Path, opset: int, dynamic_batch: bool, exporter: str) -> dict[str, Any]:
        """Make the export at ``opset`` (``onnx``'s record, or its failure)."""
        failures: list[str] = []
        seconds = 0.0
        for kind in EXPORTERS[exporter]:
            # asked below 18, the dynamo exporter converts down itself, before folding constants,
            # and fails on ReduceMean's axes input; convert_opset does it after
            source, failure, spent = self._torch_export(model, kind, max(opset, DYNAMO_MIN_OPSET) if kind == "dynamo" else opset, dynamic_batch)
            seconds += spent
            if source is None:
                failures.append(failure)
                continue
            start = time.perf_counter()
            produced = opset_of(source)
            converter = f"torch.onnx.export ({kind}, opset {produced})"
            partial = path.with_suffix(".partial.onnx")
            shutil.copyfile(source, partial)
            try:
                if produced > opset:
                    try:
                        convert_opset(partial, opset)
                    except Exception as exc:
                        failures.append(f"{kind} exporter produced opset {produced} and onnx's version converter could not take it to {opset}: {one_line(exc)}")
                        continue
                    converter += f" -> onnx.version_converter (opset {opset})"
                elif produced != opset:
                    failures.append(f"{kind} exporter produced opset {produced}, not the requested {opset}")
                    continue
                partial.replace(path)
            finally:
                partial.unlink(missing_ok=True)
                seconds += time.perf_counter() - start
            messages = [f"used the {kind} exporter because the " + "; ".join(failures)] if failures else []
            return {
                "format": "onnx", "opset": opset, "exporter": kind, "requested_exporter": exporter, "dynamic_batch": dynamic_batch,
                "converter": converter, "messages": messages, "seconds": round(seconds, 3), "targets": [],
            }
        return {"failure": "ONNX export failed: " + "; ".join(failures)}

    def once(self, model: ReferenceModel, what: str, make: Callable[[Path], dict[str, Any]], dest: Path) -> dict[str, Any]:
        """``make(folder)`` run once per run for ``model`` and ``what`` (which must name
        everything the result depends on besides the model): it writes its files into ``folder``
        and returns a JSON-able record. Every caller gets a copy of those files in ``dest`` and the
        record; an exception ``make`` raised is raised again to every later caller, as a
        :class:`TargetError` with its message."""
        key = f"{_model_key(model)}-" + hashlib.sha256(what.encode()).hexdigest()[:24]
        made = self.folder / key
        with self._locked(key) as record:
            if not record.exists():
                try:
                    shutil.rmtree(made, ignore_errors=True)  # what an interrupted first try left
                    made.mkdir()
                    done = {"what": what, "result": make(made)}
                except Exception as exc:
                    shutil.rmtree(made, ignore_errors=True)
                    done = {"what": what, "failure": one_line(exc)}
                record.write_text(json.dumps(done))
            done = json.loads(record.read_text())
        if "failure" in done:
            raise TargetError(done["failure"], stage="convert")
        shutil.copytree(made, dest, dirs_exist_ok=True)
        return done["result"]

    def records(self) -> list[dict[str, Any]]:
        """Every export made at an opset (``report.json``'s ``model.exports``): format, opset,
        exporter (the one that produced it), seconds, targets, ..., by opset."""
        if not self.folder.is_dir():
            return []
        found = [json.loads(p.read_text()) for p in sorted(self.folder.glob("*-onnx-opset*.json"))]
        return sorted((r for r in found if "failure" not in r), key=lambda r: (r["opset"], r["requested_exporter"], r["dynamic_batch"]))


def export_onnx(model: ReferenceModel, path: Path, *, opset: int = DEFAULT_OPSET, dynamic_batch: bool = False, exporter: str = "auto") -> tuple[str, list[str]]:
    """One export outside a run (nothing shared): :meth:`ExportStore.onnx` on a store of its own,
    removed afterwards."""
    with tempfile.TemporaryDirectory(dir=Path(path).parent, prefix=".edgex-export-") as folder:
        return ExportStore(Path(folder)).onnx(model, Path(path), opset=opset, dynamic_batch=dynamic_batch, exporter=exporter)


# --------------------------------------------------------------------------- node names


def onnx_node_scope(node: Any, by_name: bool = True) -> str | None:
    """The torch module an ONNX node of edgex's export belongs to, as the exporter recorded it:
    the dynamo exporter's name-scope metadata, else (``by_name``) the TorchScript exporter's node
    name (``/layers/layers.1/downsample/downsample.0/Conv`` -> ``layers.1.downsample.0``). A
    target whose converter keeps the ONNX node names (rknn's per-layer analysis) maps them back
    to torch modules with this; None where the node carries neither."""
    if isinstance(node, str):  # a node's name alone
        return _torchscript_scope(node) if by_name else None
    scope = _dynamo_scope(node)
    return _torchscript_scope(node.name) if scope is None and by_name else scope


def _dynamo_scope(node: Any) -> str | None:
    """The module the dynamo exporter recorded for a node: its innermost name scope.

    ``pkg.torch.onnx.name_scopes`` lists full module paths outermost first and ends with the fx
    node's own name: ``['', 'features', 'features.1', '_native_batch_norm_legit_no_training']``.
    Its rewriter keeps the metadata of the op a fusion ends with (a Conv with batch norm folded
    in carries the batch norm's scope), so the scope names the module whose output the node holds.
    """
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            return scopes[-2] if isinstance(scopes, list) and len(scopes) >= 2 and scopes[-2] else None
    return None


def _torchscript_scope(node_name: str) -> str | None:
    """The module path in a TorchScript-exporter node name.

    ``/layers/layers.1/downsample/downsample.0/Conv`` -> ``layers.1.downsample.0``: a component is
    an attribute of the one before, except that a container's child repeats the container's
    name (``layers.1`` inside ``layers``).
    """
    if not node_name.startswith("/"):
        return None
    parts = [p for p in node_name.split("/")[1:-1] if p]
    paths: list[str] = []
    for index, part in enumerate(parts):
        if index and part.startswith(parts[index - 1] + "."):
            parent = paths[-2] if len(paths) >= 2 else ""
        else:
            parent = paths[-1] if paths else ""
        paths.append(f"{parent}.{part}" if parent else part)
    return paths[-1] if paths else None


#: a torch parameter's name as exporters keep it on an initializer ("features.3.weight"; QDQ adds "_quantized")
_PARAMETER = re.compile(r"^(.+)\.(weight|bias)(?:_quantized)?$")
_FOLDABLE = ("Conv", "ConvTranspose")


def onnx_node_modules(node: Any, producers: Mapping[str, Any], initializers: Mapping[str, Any]) -> tuple[str, ...]:
    """The torch modules an ONNX node of edgex's export belongs to, from what the exporter wrote
    into the file: its scope metadata (dynamo) or its name (TorchScript exporter), and the
    parameters it consumes; a Conv whose weights the exporter computed (batch norm folded in)
    holds more than its module, so only its parameters name it. ``producers`` maps each tensor to
    the node that makes it, ``initializers`` names the graph's initializers. The onnx target's
    tracer and rknn's (whose per-layer analysis keeps the ONNX tensor names) read nodes so."""

    def source(name: str) -> str:  # a QDQ weight: the initializer behind its DequantizeLinear
        producer = producers.get(name)
        return producer.input[0] if producer is not None and producer.op_type == "DequantizeLinear" else name

    sources = [source(name) for name in node.input]
    parameters = [m.group(1) for m in (_PARAMETER.match(s) for s in sources if s in initializers) if m]
    scope = onnx_node_scope(node, by_name=False)
    if scope is None:
        weights = sources[1] if len(sources) > 1 else ""
        if node.op_type in _FOLDABLE and weights in initializers and not _PARAMETER.match(weights):
            # weights the TorchScript exporter computed (batch norm folded into the conv): the
            # op holds more than the module its name says, so the name is not used
            return tuple(dict.fromkeys(parameters))
        scope = onnx_node_scope(node)
    return tuple(dict.fromkeys(([scope] if scope else []) + parameters))
