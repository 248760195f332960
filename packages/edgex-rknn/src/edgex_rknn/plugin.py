"""Target ``rknn`` (alias ``rockchip``): an RKNN model (``.rknn``) for Rockchip NPUs.

Rockchip's rknn-toolkit2 2.5.0 pins torch <= 2.4, numpy <= 1.26.4, protobuf <= 4.25.4 and
onnx <= 1.18: it cannot live in the user's environment. So the target declares a toolchain
(``edgex toolchains build rknn`` makes it once) and drives the toolkit there
(:mod:`edgex_rknn.toolkit`, started through ``edgex.plugins.toolchain`` from the target's
isolated child). The model reaches it as edgex's shared ONNX export (opset 17); the toolkit
converts it for ``--rknn-platform`` at fp16, or int8 calibrated on the user's data with one of
its quantization algorithms (``normal``, ``mmse``, ``kl_divergence``), chosen as the LiteRT recipes
are: the default unless it measures short of edgex's simulated int8 reference.

Parity runs on the toolkit's **simulator** (``init_runtime()`` without a board) of the very build
that wrote the artifact: no Rockchip NPU is run, and the report says so (``emulated``).

Imports only ``edgex.plugins``; numpy and torch are imported inside the hooks.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from edgex.plugins import (
    AVERAGE_POOLS,
    Artifact,
    ArtifactIO,
    ArtifactTrace,
    BackendStatus,
    ConversionRequest,
    ConversionResult,
    ReferenceModel,
    TargetError,
    TargetOption,
    TargetSpec,
    TensorBinding,
    ToolchainSpec,
    TracedTensor,
    UnsupportedModel,
    UsageError,
    hookimpl,
    file_sha256,
    onnx_node_scope,
    one_line,
    toolchain,
)

TOOLKIT_VERSION = "2.5.0"
TOOLCHAIN = ToolchainSpec(
    name="rknn",
    requirements=(f"rknn-toolkit2=={TOOLKIT_VERSION}",),
    # the toolkit's wheels are cp38-cp312; edgex's own Python first where it is one of them
    python=("3.11", "3.12", "3.10", "3.9", "3.8"),
    # the toolkit imports cv2 (opencv-python, not the headless build), which loads these
    system=(("libGL.so.1", "apt install libgl1"), ("libgthread-2.0.so.0", "apt install libglib2.0-0")),
    description="Rockchip rknn-toolkit2 with its own torch 2.4 and numpy 1.26",
)
#: what ``config(target_platform=...)`` of rknn-toolkit2 2.5.0 takes
PLATFORMS = ("rk3588", "rk3576", "rk3568", "rk3566", "rk3562", "rv1126b", "rv1106", "rv1106b", "rv1103", "rv1103b", "rk2118")
#: NPUs without float: the toolkit's fp16 build fails for them
INT8_ONLY = frozenset({"rv1106", "rv1106b", "rv1103", "rv1103b"})
#: the toolkit's quantization algorithms, its default first: the recipes an int8 conversion chooses from
ALGORITHMS = ("normal", "mmse", "kl_divergence")
#: an int8 build measuring at least this (and its simulated floor) keeps the default algorithm
SEARCH_BELOW_DB = 30.0
#: calibration samples the algorithms are measured on (the last ones), as the LiteRT recipes
CHECK_SAMPLES = 8
ONNX_OPSET = 17
_TOOLKIT = Path(__file__).with_name("toolkit.py")

TARGET = TargetSpec(
    name="rknn",
    aliases=("rockchip",),
    description="RKNN model (.rknn) for Rockchip NPUs (rk3588, rk3576, rk3568/rk3566, rv1106, ...) by rknn-toolkit2 in its own toolchain, validated on the toolkit's simulator",
    artifact_kinds=(".rknn",),
    precisions=("fp16", "int8"),
    default_precision="fp16",
    accepts=("torch", "onnx"),
    options=(
        TargetOption("rknn_platform", "the Rockchip SoC the .rknn is built for", str, "rk3588", PLATFORMS),
        TargetOption("rknn_algorithm", "int8 calibration: auto (normal, and the others when it falls short), or one of normal, mmse, kl_divergence", str, "auto", ("auto", *ALGORITHMS)),
    ),
    toolchain=TOOLCHAIN,
)

#: the toolkit processes whose simulator holds a built artifact, by the artifact's path: the
#: runtime of a conversion runs on the session that built it (the same child process)
_LIVE: dict[str, tuple[Any, str, str]] = {}


@hookimpl
def edgex_targets():
    return [TARGET]


@hookimpl
def edgex_backend_status(target: str) -> BackendStatus:
    built = toolchain(TOOLCHAIN)  # edgex reports an unbuilt toolchain before asking here
    return BackendStatus(True, f"rknn-toolkit2 {TOOLKIT_VERSION} simulator (toolchain Python {built.version}; no Rockchip NPU is run)", emulated=True)


def _platform(options: Mapping[str, Any], precision: str) -> str:
    platform = str(options.get("rknn_platform") or "rk3588").lower()
    if platform not in PLATFORMS:
        raise UsageError(f"unknown --rknn-platform {platform!r}: rknn-toolkit2 {TOOLKIT_VERSION} builds for {', '.join(PLATFORMS)}")
    if precision != "int8" and platform in INT8_ONLY:
        raise UsageError(f"{platform}'s NPU computes in int8 only: pass --quantize int8 (with --calibration data), or choose another --rknn-platform")
    return platform


def _samples(calibration: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The calibration batches split into samples of one (the model's batch)."""
    return [tuple(x[i : i + 1] for x in batch) for batch in calibration for i in range(len(batch[0]))]


def _dataset(samples: Sequence[tuple[Any, ...]], folder: Path) -> str:
    """The samples as the toolkit reads them (its dataset file): one line per sample, the
    ``.npy`` of each input on it, ``sample{i}_input{j}.npy``."""
    import numpy as np

    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, sample in enumerate(samples):
        paths = []
        for position, array in enumerate(sample):
            path = folder / f"sample{index}_input{position}.npy"
            np.save(path, np.ascontiguousarray(array, dtype=np.float32))
            paths.append(str(path))
        lines.append(" ".join(paths))
    listing = folder / "dataset.txt"
    listing.write_text("\n".join(lines) + "\n")
    return str(listing)


#: the toolkit names an op it cannot build as ``Op('/onnx/node/name')``
_OP = re.compile(r"\b([A-Z]\w*)\('([^']+)'\)")


def _failed(exc: Exception, what: str) -> Exception:
    """The toolkit's own words, shortened. An op it cannot build is the model's (an unsupported
    model, exit 3), named with its layer: the ONNX node's path is the torch module's."""
    message = one_line(exc).removeprefix("ToolkitError: ")
    op = _OP.search(message)
    if op and any(word in message for word in ("need to be constant", "not support", "Unsupport", "unsupport")):
        node = op.group(2)
        module = onnx_node_scope(node)  # the TorchScript exporter's /features/features.0/Conv: features.0
        where = f"layer {module} (ONNX node {node})" if module else f"ONNX node {node}"
        said = message.split(": ")[-1].split("!")[0].strip()  # the toolkit's first sentence, without the step names
        why = "; its output shape depends on the data, and the NPU needs a static graph" if "need to be constant" in message else ""
        return UnsupportedModel(f"rknn-toolkit2 cannot build op {op.group(1)} at {where}: \"{said}\"{why}")
    return TargetError(f"rknn-toolkit2 {what}: {message}")


@hookimpl
def edgex_convert(request: ConversionRequest) -> ConversionResult:
    from edgex.plugins import ToolchainError

    if request.precision not in TARGET.precisions:
        raise UsageError(f"rknn converts at fp16 or int8, not {request.precision}")
    platform = _platform(request.options, request.precision)
    chosen = str(request.options.get("rknn_algorithm") or "auto")
    if chosen not in ("auto", *ALGORITHMS):
        raise UsageError(f"unknown --rknn-algorithm {chosen!r}: auto, {', '.join(ALGORITHMS)}")
    if request.precision == "int8" and not request.calibration:
        raise UsageError("rknn int8 needs calibration data (--calibration)")
    process = toolchain(TOOLCHAIN).require().start(_TOOLKIT, what="rknn-toolkit2 (in the rknn toolchain)")
    try:
        onnx, exporter, messages = _toolkit_input(request)
        artifact = request.workdir / "model.rknn"
        details: dict[str, Any] = {"platform": platform, "simulator": True}
        samples: list[tuple[Any, ...]] = []  # the calibration as the toolkit reads it (int8)
        if request.precision == "fp16":
            algorithm = "-"
            try:
                process.call("build", "artifact", onnx, artifact, platform, "fp16", "normal", None)
            except ToolchainError as exc:
                raise _failed(exc, "build") from None
        else:
            samples = _samples(request.calibration)
            dataset = _dataset(samples, request.workdir / "calibration")
            algorithm, search = _int8(process, request, onnx, artifact, platform, dataset, samples, chosen)
            details["int8_recipe"] = search
            messages.append(search["message"])
        details["toolkit"] = f"rknn-toolkit2 {process.call('version')}"
        # the outputs' shapes: one run of the example inputs on the built model
        shapes = [tuple(o.shape) for o in process.call("infer", "artifact", list(request.model.example_inputs))]
        record = _record(request, artifact, onnx, platform, algorithm, shapes, samples)
        shutil.rmtree(request.workdir / "calibration", ignore_errors=True)
    except BaseException:
        process.close()
        raise
    io = _io(artifact, request.model, request.precision, shapes)
    _LIVE[str(artifact)] = (process, "artifact", _backend(platform, request.precision, algorithm))
    files = (Artifact(artifact, "rknn"), Artifact(record, "build-record"), *(Artifact(request.workdir / p, "build-input") for p in json.loads(record.read_text())["inputs"].values() if p))
    return ConversionResult(artifacts=files, io=io, converter=f"{exporter} -> rknn-toolkit2 {TOOLKIT_VERSION} ({platform})", messages=tuple(messages), details=details)


def _backend(platform: str, precision: str, algorithm: str, rebuilt: str = "") -> str:
    return f"rknn-toolkit2 {TOOLKIT_VERSION} simulator ({platform}, {precision}{'' if algorithm == '-' else ', ' + algorithm}{rebuilt}; no Rockchip NPU was run)"


#: the build record beside a .rknn: what it was built from, so that ``edgex validate`` can build
#: it again and check the file against that build (the simulator cannot run a .rknn file)
RECORD_SUFFIX = ".json"


def _record(request: ConversionRequest, artifact: Path, onnx: Path, platform: str, algorithm: str, shapes: Sequence[tuple[int, ...]], samples: Sequence[tuple[Any, ...]]) -> Path:
    """Keep what the toolkit was handed (the ONNX, the calibration ``samples``) in ``build/`` and
    write ``model.rknn.json`` naming them with the build's settings."""
    import numpy as np

    build = request.workdir / "build"
    build.mkdir(exist_ok=True)
    onnx.replace(build / "model.onnx")
    inputs = {"onnx": "build/model.onnx", "calibration": None}
    if samples:  # named as the dataset's files: sample{i}_input{j}
        np.savez(build / "calibration.npz", **{f"sample{i}_input{j}": np.ascontiguousarray(x, dtype=np.float32) for i, sample in enumerate(samples) for j, x in enumerate(sample)})
        inputs["calibration"] = "build/calibration.npz"
    record = artifact.with_name(artifact.name + RECORD_SUFFIX)
    record.write_text(json.dumps({
        "format": 1, "toolkit": f"rknn-toolkit2 {TOOLKIT_VERSION}", "platform": platform, "precision": request.precision,
        "algorithm": algorithm, "sha256": file_sha256(artifact), "inputs": inputs, "outputs": [[name, list(shape)] for name, shape in zip(request.model.output_names, shapes)],
    }, indent=2) + "\n")
    return record


def _toolkit_input(request: ConversionRequest) -> tuple[Path, str, list[str]]:
    """The model the toolkit converts: edgex's shared ONNX export, in the workdir (the .rknn
    format is not published, so the tests plant their defects here, in what the toolkit is handed)."""
    onnx = request.workdir / "model.onnx"
    try:  # the TorchScript exporter first, as Rockchip's examples: 4x faster on a ResNet-18 than
        # dynamo's, and its node names (/layer1/layer1.0/conv1/Conv) name the toolkit's errors' modules
        exporter, messages = request.onnx_export(onnx, opset=ONNX_OPSET, exporter="torchscript")
    except TargetError:
        exporter, messages = request.onnx_export(onnx, opset=ONNX_OPSET, exporter="dynamo")
    return onnx, exporter, list(messages)


def _int8(process: Any, request: ConversionRequest, onnx: Path, artifact: Path, platform: str, dataset: str, samples: list[tuple[Any, ...]], chosen: str) -> tuple[str, dict[str, Any]]:
    """Build with the toolkit's default algorithm and measure it on the simulator against the
    torch model on the last calibration samples; short of SEARCH_BELOW_DB or of the parity floor
    of edgex's simulated int8 reference there, build with the others and keep the best."""
    from edgex.plugins import ToolchainError, output_error, reference_outputs

    check = samples[-CHECK_SAMPLES:]
    first = ALGORITHMS[0] if chosen == "auto" else chosen
    # the toolkit builds the first candidate while the torch reference and edgex's simulated
    # int8 floor (from the run's own calibration, in the parent) are computed
    building = process.submit("build", f"candidate-{first}", onnx, request.workdir / f"{first}.rknn", platform, "int8", first, dataset)
    reference = reference_outputs(request.model, check)
    floor = None
    if chosen == "auto":  # the aim of a choice; named, there is none to make
        try:
            floor = request.simulated_floor(check, reference, 8, on_input_grid=AVERAGE_POOLS)
        except Exception:  # an aid to the choice: without it the aim is SEARCH_BELOW_DB alone
            floor = None
    rows: list[dict[str, Any]] = []

    def tried(algorithm: str) -> None:
        session = f"candidate-{algorithm}"
        path = request.workdir / f"{algorithm}.rknn"
        try:
            if algorithm == first:
                building()
            else:
                process.call("build", session, onnx, path, platform, "int8", algorithm, dataset)
            got = [process.call("infer", session, list(sample)) for sample in check]
        except ToolchainError as exc:
            if not rows and chosen == "auto" and algorithm == ALGORITHMS[0]:
                raise _failed(exc, "build") from None
            rows.append({"recipe": algorithm, "outcome": "failed", "reason": one_line(exc)})
            return
        sqnr = min(output_error(reference, got, index)[1] for index in range(len(reference[0])))
        row = {"recipe": algorithm, "outcome": "measured", "sqnr_db": round(sqnr, 2) if math.isfinite(sqnr) else sqnr}
        if floor is not None:
            row.update(reference_sqnr_db=round(floor[1], 2), reference_floor_db=round(floor[0], 2), meets_reference=bool(sqnr >= floor[0]))
        rows.append(row)

    def short(row: dict[str, Any]) -> bool:
        return row.get("sqnr_db", -math.inf) < SEARCH_BELOW_DB or not row.get("meets_reference", True)

    tried(first)
    if chosen == "auto":
        if short(rows[0]):
            for algorithm in ALGORITHMS[1:]:
                tried(algorithm)
    measured = [r for r in rows if r["outcome"] == "measured"]
    if not measured:
        raise TargetError(f"rknn-toolkit2 build failed with every algorithm tried: {'; '.join(r['recipe'] + ': ' + r['reason'] for r in rows)}")
    best = max(measured, key=lambda r: r["sqnr_db"])
    for row in rows:  # the chosen build becomes the artifact, its session the runtime's
        if row is best:
            shutil.move(str(request.workdir / f"{row['recipe']}.rknn"), artifact)
            process.call("rename", f"candidate-{row['recipe']}", "artifact")
        else:
            (request.workdir / f"{row['recipe']}.rknn").unlink(missing_ok=True)
            process.call("release", f"candidate-{row['recipe']}")
    where = f"{len(check)} calibration samples, against the torch model" if request.model.module is not None else f"{len(check)} calibration samples, against the ONNX reference"
    against = f"; edgex's simulated int8 reference reaches {floor[1]:.1f} dB there, its parity floor {floor[0]:.1f} dB" if floor else "; no simulated int8 reference for this model: aimed at 30 dB alone"
    tried_text = ", ".join(f"{r['recipe']} {r['sqnr_db']:.1f} dB" if "sqnr_db" in r else f"{r['recipe']} failed" for r in rows)
    searched = len(rows) > 1
    message = f"int8 algorithm: {best['recipe']} {best['sqnr_db']:.1f} dB ({where}{against})" + (f"; the default fell short, so each was tried: {tried_text}" if searched else ("; chosen by --rknn-algorithm" if chosen != "auto" else "; at or above the aim, no other tried"))
    search = {"chosen": {"recipe": best["recipe"], "sqnr_db": best["sqnr_db"]}, "candidates": rows, "searched": searched, "measured_on": where, "message": message}
    return best["recipe"], search


def _io(path: Path, reference: ReferenceModel, precision: str, shapes: Sequence[tuple[int, ...]]) -> ArtifactIO:
    """The simulator takes and returns float tensors in the ONNX model's own layout (NCHW, as
    ``inference(data_format="nchw")``), so every binding is the reference's. At int8 the toolkit
    quantizes weights per channel (``quantized_method="channel"``) and activations asymmetrically
    (w8a8 with zero points): edgex's plain int8 scheme."""
    inputs = tuple(TensorBinding(s.name, tuple(s.shape), "float32") for s in reference.inputs)
    outputs = tuple(TensorBinding(name, shape, "float32") for name, shape in zip(reference.output_names, shapes))
    scheme = {"on_input_grid": tuple(AVERAGE_POOLS)} if precision == "int8" else {}
    return ArtifactIO(path, precision, inputs, outputs, scheme)


class RknnRuntime:
    """A conversion's artifact on the toolkit's simulator, in the session that built it."""

    def __init__(self, process: Any, session: str, backend: str):
        self.process, self.session, self.backend = process, session, backend

    def run(self, inputs: Sequence[Any]) -> list[Any]:
        from edgex.plugins import ToolchainError

        try:
            return self.process.call("infer", self.session, list(inputs))
        except ToolchainError as exc:
            raise _failed(exc, "inference") from None

    def details(self) -> dict[str, Any]:
        return {"emulated": True}


def _read_record(path: Path) -> dict[str, Any]:
    """The build record beside ``path``, checked: a one-line error for anything else."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or one_line(exc)}") from exc
    if magic != b"RKNN":
        raise UsageError(f"{path} is not an RKNN model (its first bytes are not the RKNN header)")
    record_path = path.with_name(path.name + RECORD_SUFFIX)
    if not record_path.is_file():
        raise UsageError(
            f"{path} has no build record beside it ({record_path.name}, written by edgex convert): rknn-toolkit2's simulator "
            "cannot run a .rknn file by itself (load_rknn then init_runtime() needs a Rockchip board), so edgex validates one by "
            "building it again from what it was built from and checking the file against that build"
        )
    try:
        record = json.loads(record_path.read_text())
        missing = [name for name in record["inputs"].values() if name and not (path.parent / name).is_file()]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise UsageError(f"{record_path} is not an edgex build record ({one_line(exc)})") from exc
    if missing:
        raise UsageError(f"{path}'s build record names {', '.join(missing)}, which is not beside it: copy the whole rknn folder edgex convert wrote")
    return record


@hookimpl
def edgex_describe_artifact(target: str, path: Path, reference: ReferenceModel) -> ArtifactIO:
    record = _read_record(path)
    if "sha256" in record and file_sha256(path) != record["sha256"]:
        raise TargetError(f"{path} is not the file edgex built: its sha256 is not its build record's (it was changed after edgex wrote it); convert again")
    return _io(path, reference, record["precision"], [tuple(shape) for _, shape in record["outputs"]])


@hookimpl
def edgex_load_runtime(target: str, io: ArtifactIO, options: Mapping[str, Any]) -> RknnRuntime:
    live = _LIVE.get(str(io.path))
    if live is not None:  # converted in this process: the session that built it
        process, session, backend = live
        return RknnRuntime(process, session, backend)
    return _rebuilt(io.path)


def _header_end(first: Any, second: Any) -> int:
    """Where the part of a .rknn two builds of one model write alike begins: the toolkit copies
    uninitialised memory into the file's header (pointers, old heap contents), so two builds in
    two processes differ there and only there (measured: ~900 bytes in the first 200 KB of a
    3 MB ResNet); the weights after it are written alike, byte for byte. ``HEADER_SLACK`` more:
    the uninitialised part of one build can end a byte after another's."""
    import numpy as np

    differ = np.flatnonzero(first != second)
    # the uninitialised part ends a few bytes later in one build than another (seen: 1 byte)
    return int(differ.max()) + 1 + HEADER_SLACK if len(differ) else 0


#: bytes past the last one two fresh builds disagree on that may still be uninitialised memory
HEADER_SLACK = 256


def _rebuilt(path: Path) -> RknnRuntime:
    """``path`` (described: its sha256 is its build record's) built again from the record (the ONNX
    the toolkit was handed, the calibration samples, the settings) twice, in two processes, and
    compared with those builds where builds write alike (:func:`_header_end`): the simulator then
    runs a build of the same weights as the file."""
    import tempfile

    import numpy as np

    from edgex.plugins import ToolchainError

    record = _read_record(path)  # its sha256 was checked when it was described
    folder = Path(tempfile.mkdtemp(prefix="rknn-rebuild-"))  # in the run's scratch
    dataset = None
    if record["inputs"].get("calibration"):
        with np.load(path.parent / record["inputs"]["calibration"]) as stored:
            samples: dict[int, dict[int, Any]] = {}
            for key in stored.files:  # sample{i}_input{j}
                index, position = (int(n) for n in re.findall(r"\d+", key))
                samples.setdefault(index, {})[position] = stored[key]
        dataset = _dataset([tuple(by_position[j] for j in sorted(by_position)) for _, by_position in sorted(samples.items())], folder)
    built = toolchain(TOOLCHAIN).require()
    # two builds in two processes at once: their heap addresses differ, so what the toolkit copies
    # from its heap into the file shows as the bytes they disagree on
    process, other = (built.start(_TOOLKIT, what="rknn-toolkit2 (in the rknn toolchain)") for _ in range(2))
    algorithm = record["algorithm"] if record["algorithm"] != "-" else "normal"
    onnx = path.parent / record["inputs"]["onnx"]
    try:
        waits = [p.submit("build", "rebuilt", onnx, folder / name, record["platform"], record["precision"], algorithm, dataset) for p, name in ((process, "first.rknn"), (other, "second.rknn"))]
        for wait in waits:
            wait()
    except ToolchainError as exc:
        process.close()
        raise _failed(exc, "build (again, from the record)") from None
    except BaseException:
        process.close()
        raise
    finally:
        other.close()
    given = np.fromfile(path, np.uint8)
    first, second = np.fromfile(folder / "first.rknn", np.uint8), np.fromfile(folder / "second.rknn", np.uint8)
    start = _header_end(first, second) if len(first) == len(second) else len(first)
    if len(given) != len(first) or not np.array_equal(given[start:], first[start:]):
        process.close()
        raise TargetError(
            f"the toolkit did not build {path} again from its build record: the weights a build writes alike differ "
            f"(another rknn-toolkit2 release, or inputs changed beside it); convert again"
        )
    return RknnRuntime(process, "rebuilt", _backend(record["platform"], record["precision"], record["algorithm"], ", built again from its record: the simulator cannot run a .rknn file"))


class RknnTracer:
    """The artifact's session on the simulator, read layer by layer with the toolkit's own
    per-layer analysis (``accuracy_analysis``: every layer's simulated output, named by the ONNX
    tensor it computes). The ONNX the toolkit was handed (the build record's) says which torch
    module each tensor belongs to and its shape (NCHW, as the toolkit dumps it)."""

    def __init__(self, runtime: RknnRuntime, onnx_path: Path):
        import onnx

        from edgex.plugins import onnx_node_modules

        self.runtime = runtime
        model = onnx.load(str(onnx_path))
        initializers = {i.name: i for i in model.graph.initializer}
        producers = {out: node for node in model.graph.node for out in node.output}
        self.modules = {out: onnx_node_modules(node, producers, initializers) for out, node in producers.items()}
        inferred = onnx.shape_inference.infer_shapes(model).graph
        self.shapes = {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim) for v in (*inferred.value_info, *inferred.output)}
        self.backend = f"{runtime.backend}; layers by its accuracy_analysis"
        self.notes = ["layers are read with rknn-toolkit2's accuracy_analysis on its simulator; a layer the toolkit split (tiles of a large conv) is compared where the pieces are joined again"]

    def trace(self, inputs: Sequence[Any]) -> ArtifactTrace:
        import math
        import tempfile

        layers = self.runtime.process.call("analyze", self.runtime.session, list(inputs), tempfile.mkdtemp(prefix="rknn-analysis-"))
        tensors = []
        for layer in layers:
            shape = self.shapes.get(layer["name"])
            if not shape or not all(shape) or math.prod(shape) != layer["value"].size:
                continue  # a tensor the toolkit made itself (a split, a tile): not in the ONNX
            tensors.append(TracedTensor(layer["name"], layer["value"].reshape(shape), self.modules.get(layer["name"], ()), tuple(range(len(shape))), op=layer["op"]))
        return ArtifactTrace(tuple(tensors), tuple(self.runtime.run(inputs)))


@hookimpl
def edgex_load_tracer(target: str, io: ArtifactIO, reference: ReferenceModel, options: Mapping[str, Any]) -> RknnTracer:
    record = _read_record(io.path)
    return RknnTracer(edgex_load_runtime(target, io, options), io.path.parent / record["inputs"]["onnx"])
