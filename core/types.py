"""The typed values that cross the plugin boundary.

Everything a plugin receives or returns is one of these frozen dataclasses (or a ``Runtime``),
never a loose dict, so a plugin author can read the whole contract here. Importing this module
is cheap: numpy arrays and torch modules appear only as annotations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

#: Precisions edgex knows. ``int8`` is full integer (weights and activations, calibrated);
#: ``dynamic-int8`` stores int8 weights and computes in float.
PRECISIONS = ("fp32", "fp16", "int8", "dynamic-int8")
Precision = Literal["fp32", "fp16", "int8", "dynamic-int8"]

#: Pipeline stages, in order, as observers see them.
STAGES = ("load", "compress", "reference", "convert", "validate", "report")

Status = Literal["passed", "failed", "inconclusive", "error", "skipped"]


# --------------------------------------------------------------------------- declarations


@dataclass(frozen=True)
class TargetOption:
    """A target-specific command-line option, e.g. ``--opset`` of the onnx target.

    The command line adds ``--<name>`` (underscores become dashes) for every option an installed
    target declares; its value reaches ``ConversionRequest.options[name]``.
    """

    name: str
    help: str
    type: type = str
    default: Any = None
    choices: tuple[Any, ...] = ()


@dataclass(frozen=True)
class ToolchainSpec:
    """A Python environment of its own for a target whose converter or runtime pins packages
    that cannot live beside the user's (a vendor toolkit wanting an old torch or numpy).

    ``edgex toolchains build NAME`` makes it (the one step that uses the package registry);
    conversion and runtime then run in its interpreter, inside the target's isolated child
    (``edgex.plugins.toolchain``). An environment is named by a hash of this spec: a changed spec
    gets a new one. See docs/toolchains.md.
    """

    name: str
    #: pip requirement strings, e.g. ("rknn-toolkit2==2.5.0",)
    requirements: tuple[str, ...]
    #: acceptable Python versions ("3.11"), preferred first; edgex's own version where it is one
    #: of them. Empty: edgex's own version
    python: tuple[str, ...] = ()
    #: shared libraries the packages load that pip cannot install, as (library, how to install
    #: it) pairs, e.g. ("libGL.so.1", "apt install libgl1"): checked before a build
    system: tuple[tuple[str, str], ...] = ()
    description: str = ""


@dataclass(frozen=True)
class TargetSpec:
    """What a plugin declares for one target it offers."""

    name: str
    description: str
    #: file kinds the target writes, e.g. (".onnx",) or (".tflite", "_edgetpu.tflite")
    artifact_kinds: tuple[str, ...]
    #: precisions it can produce, from ``PRECISIONS``
    precisions: tuple[str, ...]
    #: the precision used when the user does not pass ``--quantize``
    default_precision: str = "fp32"
    aliases: tuple[str, ...] = ()
    options: tuple[TargetOption, ...] = ()
    #: reference kinds it can convert from: "torch" (an nn.Module) and/or "onnx" (an .onnx file)
    accepts: tuple[str, ...] = ("torch",)
    #: what the target's runtime or converter lacks (keys of ``edgex.core.rewrites.GAPS``, e.g.
    #: "gelu"): ``--rewrite auto`` rewrites those parts of a torch model, each rewrite proven first
    lacks: tuple[str, ...] = ()
    #: precisions it cannot produce for a reason the user should read, as (precision, why) pairs,
    #: e.g. ("int8", "ncnn's quantization tools are not in the ncnn wheel"): ``--quantize`` with
    #: that precision is refused with the reason (a ``skipped`` row under ``--target all``)
    refuses: tuple[tuple[str, str], ...] = ()
    #: the environment its converter and runtime run in, when they cannot share the user's: the
    #: target is ``unavailable`` until ``edgex toolchains build NAME`` made it
    toolchain: ToolchainSpec | None = None
    #: the wider types an int8 artifact of this target can keep some layers at, from
    #: :data:`WIDER_TYPES` ("float": those ops run float, "int16": int16 activations, int8
    #: weights), preferred first; empty: full int8 only. Core asks which layers to keep only of a
    #: target that declares one (``ConversionRequest.layers_kept_wider``; docs/mixed_precision.md)
    keeps_wider: tuple[str, ...] = ()


#: what a mixed-precision int8 artifact keeps its sensitive layers at (``TargetSpec.keeps_wider``)
WIDER_TYPES = ("float", "int16")


@dataclass(frozen=True)
class WiderLayers:
    """The layers an int8 artifact keeps at a wider type (``ConversionRequest.layers_kept_wider``).

    ``modules`` are torch module paths; an op belongs to one when it is its innermost module
    (:meth:`holds`): a module's own ops (a block's attention matmuls), not its submodules'. A run
    expands the user's ``--keep-wider`` modules to every module inside them. The tensors crossing a kept layer's boundary stay int8
    as its int8 neighbours quantize them; only what flows inside it is wider. The artifact says
    what it kept in ``ArtifactIO.quantization["kept_wider"]`` (``{"modules": [...], "as": type}``),
    which edgex's simulated reference then quantizes alike."""

    modules: tuple[str, ...]
    #: one of :data:`WIDER_TYPES`
    wider_as: str
    #: "auto" (the fewest sensitive layers, edgex's greedy choice) or "user" (``--keep-wider``)
    chosen_by: str
    #: their share of the model's multiply-accumulates, and the simulation's worst-output SQNR
    #: at full int8 and with them kept wider (None where not measured)
    macs_share: float | None = None
    sqnr_before_db: float | None = None
    sqnr_db: float | None = None

    def holds(self, module: str | None) -> bool:
        return bool(module) and module in self.modules

    def quantization(self) -> dict[str, Any]:
        """What the artifact writes into ``ArtifactIO.quantization``."""
        return {"kept_wider": {"modules": list(self.modules), "as": self.wider_as}}


@dataclass(frozen=True)
class BackendStatus:
    """Whether a target can convert and run here, checked without importing heavy frameworks."""

    available: bool
    #: what converts and validates, e.g. "onnxruntime 1.32.0"
    backend: str
    #: what to install when unavailable, e.g. "pip install 'edgex[tflite]'"
    install_hint: str = ""
    detail: str = ""
    #: the target's own runtime is absent and another stands in for it (jetson without TensorRT)
    emulated: bool = False

    def missing_message(self) -> str:
        """The one sentence for an unavailable backend: what is missing, then what to install."""
        return f"backend missing: {self.detail or self.backend}" + (f"; {self.install_hint}" if self.install_hint else "")


@dataclass(frozen=True)
class CompressorSpec:
    """What a plugin declares for one compression method."""

    name: str
    description: str
    #: "prune" changes the architecture or weights; "recover" wins accuracy back afterwards
    kind: Literal["prune", "recover"] = "prune"
    aliases: tuple[str, ...] = ()


# --------------------------------------------------------------------------- tensors and models


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape and dtype of one model input or output."""

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class QuantParams:
    """Affine quantization of a tensor: ``real = scale * (q - zero_point)``."""

    scale: float
    zero_point: int
    dtype: str  # "int8", "uint8", "int16"

    def to_json(self) -> dict[str, Any]:
        return {"scale": self.scale, "zero_point": self.zero_point, "dtype": self.dtype}


@dataclass(frozen=True)
class TensorBinding:
    """How one reference tensor appears inside an artifact.

    ``perm`` says how the artifact's axes are taken from the reference tensor's axes
    (``artifact = reference.transpose(perm)``; (0, 2, 3, 1) turns NCHW into NHWC); ``quant`` says
    how real values map to the artifact's integers. Core undoes both before comparing. A float
    tensor may carry ``quant`` too (the grid a QDQ graph's float output lies on): it is then not
    converted, and only sets the int8 tolerance's step.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    layout: str | None = None
    perm: tuple[int, ...] | None = None
    quant: QuantParams | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}
        data["layout"] = self.layout
        data["quantization"] = self.quant.to_json() if self.quant else None
        return data


@dataclass(frozen=True)
class ArtifactIO:
    """A runnable artifact and how its inputs and outputs relate to the reference model."""

    path: Path
    precision: str
    inputs: tuple[TensorBinding, ...]
    outputs: tuple[TensorBinding, ...]
    #: how the artifact quantizes, where it differs from the plain scheme of its precision, so that
    #: edgex's own simulated reference quantizes the same way: ``weight_bits`` (7 for
    #: onnxruntime's reduce_range; default 8), ``symmetric_activations`` (zero point 0, as
    #: TensorRT requires; default False), ``palettize_bits`` (weights stored as a k-means palette
    #: of 2**bits values instead of int8, as Core ML palettizes), ``on_input_grid`` (the torch ops
    #: whose int8 output keeps its input's scale and zero point instead of a range of its own:
    #: :data:`AVERAGE_POOLS` for LiteRT and onnxruntime, ``adaptive_avg_pool2d`` for XNNPACK;
    #: default none), ``recurrent`` (how an LSTM / GRU / RNN op is quantized: ``"unrolled"``,
    #: written out per step into int8 ops, LiteRT; ``"float"``, kept a float32 op with float
    #: weights, XNNPACK and onnxruntime QDQ; default: not said, and such a model has no simulated
    #: reference)
    quantization: Mapping[str, Any] = field(default_factory=dict)


#: average pooling, whose int8 output LiteRT (``SAME_AS_INPUT_SCALE``) and onnxruntime's QDQ
#: quantizer (``QDQDirect8BitOp``) keep on their input's grid (``ArtifactIO.quantization["on_input_grid"]``)
AVERAGE_POOLS = ("avg_pool1d", "avg_pool2d", "avg_pool3d")


@dataclass(frozen=True)
class Artifact:
    """One file (or package directory) a target wrote."""

    path: Path
    #: what it is: "onnx", "tflite", "mlpackage", "engine", "c-source", "report", ...
    kind: str


@dataclass(frozen=True)
class ReferenceModel:
    """The model every artifact is compared against, as loaded from a MODEL spec.

    Exactly one of ``module`` (a torch ``nn.Module`` in eval mode) and ``onnx_path`` is set.
    """

    spec: str
    inputs: tuple[TensorSpec, ...]
    output_names: tuple[str, ...]
    example_inputs: tuple["np.ndarray", ...]
    module: Any = None
    onnx_path: Path | None = None
    sha256: str = ""
    params: int = 0
    #: counted by the pipeline (``edgex.core.loading.count_macs``); None until then or if uncountable
    macs: int | None = None
    #: data the model spec ships with (the examples do): arrays, one sample per leading index
    calibration: tuple["np.ndarray", ...] | None = None
    #: labelled data (x, y) for task accuracy, where the spec ships some
    eval_data: tuple["np.ndarray", "np.ndarray"] | None = None
    #: what the model's own code printed while it was loaded (kept off the terminal, whose
    #: progress display and --json output it would corrupt; the run writes it to logs/model.log)
    printed: str = ""

    @property
    def kind(self) -> str:
        return "onnx" if self.onnx_path is not None else "torch"


# --------------------------------------------------------------------------- the convert stage


@dataclass(frozen=True)
class ConversionRequest:
    """Everything a target needs to convert the reference model."""

    target: str
    precision: str
    model: ReferenceModel
    #: where the target writes its files; it exists, is empty and lies inside ``--out``
    workdir: Path
    #: calibration samples, each a tuple with one array per input (batch dimension included)
    calibration: tuple[tuple["np.ndarray", ...], ...] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    #: the labels of each ``calibration`` batch (one array per batch), when the user's calibration
    #: data carries them (``--calibration data.npz`` with ``y``), for accuracy-controlled
    #: quantization; None otherwise. Never the evaluation labels the report's accuracy is measured
    #: on: a converter that tunes on labels is scored on data it did not see.
    calibration_labels: tuple["np.ndarray", ...] | None = None
    #: ``--max-accuracy-drop``: the accuracy drop, in points (percentage points of top-1 accuracy),
    #: the report's verdict allows; an accuracy-controlled quantizer aims within it
    max_accuracy_drop: float = 0.5
    #: the run's shared exports (``edgex.core.exports.ExportStore``): use :meth:`onnx_export`
    exports: Any = None
    #: where a run's simulated floors come from (core sets it): use :meth:`simulated_floor`
    floors: Any = None
    #: ``--mixed-precision`` (auto, off) and ``--keep-wider`` (the user's modules): use :meth:`layers_kept_wider`
    mixed_precision: str = "auto"
    keep_wider: tuple[str, ...] = ()
    #: who chooses the layers kept wider in a run (core sets it: the parent, from its simulation)
    wider_advice: Any = None

    def layers_kept_wider(self, wider_as: str | Sequence[str], quantization: Mapping[str, Any] | None = None) -> WiderLayers | None:
        """Which layers this int8 artifact keeps wider, and at which of the types ``wider_as`` (the
        target's ``TargetSpec.keeps_wider``, preferred first), or None for full int8: the user's
        ``--keep-wider`` modules, at the first type; else, with ``--mixed-precision auto``, the
        fewest layers edgex's simulation of the model (quantized as ``quantization``, the
        artifact's ``ArtifactIO.quantization``, says) needs kept wider where full int8 misses its
        parity floor, chosen greedily, at the first type that reaches the aim (else the one that
        comes closest); None where full int8 meets the floor, or ``off``. A request built by hand
        has no run to ask: only the user's modules (docs/mixed_precision.md)."""
        types = (wider_as,) if isinstance(wider_as, str) else tuple(wider_as)
        if not types or any(t not in WIDER_TYPES for t in types):
            raise ValueError(f"wider types {types!r}: choose from {', '.join(WIDER_TYPES)}")
        if self.precision != "int8":
            return None
        if self.keep_wider:
            if self.wider_advice is None:
                return WiderLayers(tuple(self.keep_wider), types[0], "user")
            return self.wider_advice(types, dict(quantization or {}), tuple(self.keep_wider))
        if self.mixed_precision == "off" or self.wider_advice is None or not self.calibration or self.model.module is None:
            return None
        return self.wider_advice(types, dict(quantization or {}), ())

    def simulated_floor(
        self,
        check: Sequence[tuple["np.ndarray", ...]],
        reference: Any,
        activation_bits: int = 8,
        on_input_grid: Sequence[str] = (),
        recurrent: str | None = None,
    ) -> tuple[float, float] | None:
        """What a full-integer artifact calibrated on :attr:`calibration` must reach on ``check``
        (batches shaped like the inputs, ``reference`` the torch model's outputs on them): (the SQNR
        floor its verdict will ask, edgex's simulated reference's own SQNR), the worst output's; None
        where the model cannot be simulated. A converter choosing among quantization recipes aims at
        it (docs/int8_recipes.md). The run's parent answers it (:attr:`floors`) from the int8
        calibration it makes for the verdict anyway; a request built by hand without ``floors`` has
        none (``edgex.plugins.simulated_floor`` computes one). ``on_input_grid`` and ``recurrent``
        as ``ArtifactIO.quantization`` says them. Raises what the simulation raises."""
        if not self.calibration or self.model.module is None or self.floors is None:
            return None
        return self.floors(check, reference, activation_bits, tuple(on_input_grid), recurrent)

    def onnx_export(self, dest: Path, *, opset: int, dynamic_batch: bool = False, exporter: str = "auto") -> tuple[str, list[str]]:
        """The reference as ONNX at ``opset``, written to ``dest`` (the target's own copy, which it
        may change); returns (converter description, messages). A run exports once per opset and
        exporter: every target asking for the same one gets a copy of the same file, and
        report.json's ``model.exports`` says which target used which. An ONNX reference is
        copied as it is."""
        import shutil

        from edgex.core.errors import TargetError

        if self.model.onnx_path is not None:
            shutil.copyfile(self.model.onnx_path, dest)
            return "the reference ONNX, copied", []
        if self.exports is None:
            raise TargetError("this ConversionRequest has no export store: pass exports=edgex.plugins.ExportStore(folder)", stage="convert")
        return self.exports.onnx(self.model, dest, opset=opset, dynamic_batch=dynamic_batch, exporter=exporter, target=self.target)

    def shared(self, what: str, make: Callable[[Path], Mapping[str, Any]], dest: Path) -> dict[str, Any]:
        """A conversion step several targets of a run make alike, made once: ``make(folder)``
        writes its files into ``folder`` and returns a JSON-able record; this target gets a copy of
        the files in ``dest`` (which it may change) and the record. ``what`` names everything the
        result depends on besides the model (converter, recipe, precision, calibration digest,
        ...). Without a run's store (a request built by hand), ``make`` runs in ``dest``."""
        if self.exports is None:
            dest.mkdir(parents=True, exist_ok=True)
            return dict(make(dest))
        return self.exports.once(self.model, what, make, dest)


@dataclass(frozen=True)
class ConversionResult:
    """What a target returns after converting."""

    artifacts: tuple[Artifact, ...]
    #: the artifact parity runs, with its input/output bindings
    io: ArtifactIO
    #: which converter produced it, e.g. "torch.onnx.export (dynamo)"
    converter: str
    messages: tuple[str, ...] = ()
    #: extra report keys of this target (an Edge TPU mapping, a memory estimate, ...)
    details: Mapping[str, Any] = field(default_factory=dict)


@runtime_checkable
class Runtime(Protocol):
    """A loaded artifact on the target's own backend.

    ``run`` takes the artifact's native inputs (already permuted and quantized by core) for one
    sample and returns its native outputs in the artifact's order.
    """

    backend: str

    def run(self, inputs: Sequence["np.ndarray"]) -> Sequence["np.ndarray"]: ...


# --------------------------------------------------------------------------- explaining (edgex explain)


@dataclass(frozen=True, eq=False)
class TracedTensor:
    """One intermediate tensor of an artifact, as one traced run computed it.

    ``modules`` are the torch module paths the artifact itself attributes the tensor to (a
    tensor name such as ``features.0(Conv2d)``, an ONNX node's scope metadata, the parameters
    its op consumes), never inferred from values; empty when the artifact records none. When a
    converter fused several modules into one op, the tensor names all of them and holds the
    output of the one that runs last. ``perm`` and ``quant`` mean what they mean in
    :class:`TensorBinding`, except that ``perm=None`` says the layout is *not known* (core then
    accepts only a shape that fits one layout); give ``tuple(range(rank))`` for "same as torch".
    """

    name: str
    value: "np.ndarray"
    modules: tuple[str, ...] = ()
    perm: tuple[int, ...] | None = None
    quant: QuantParams | None = None
    #: the op that produced it, e.g. "CONV_2D" or "Conv", for the report
    op: str = ""
    #: why the value is not the output of the modules it names, when the tracer knows it is not
    #: (a quantizer folded an activation into the tensor's int8 range); such a tensor is never compared
    unreadable: str = ""


@dataclass(frozen=True, eq=False)
class ArtifactTrace:
    """One sample through an artifact: its intermediate tensors in execution order, and its
    outputs as ``Runtime.run`` returns them (native form, in ``ArtifactIO.outputs`` order)."""

    tensors: tuple[TracedTensor, ...]
    outputs: tuple["np.ndarray", ...]


@runtime_checkable
class Tracer(Protocol):
    """An artifact loaded so that every intermediate tensor can be read back (``edgex explain``).

    ``trace`` takes one sample's native inputs (permuted and quantized by core, as for
    ``Runtime.run``). ``backend`` names what really computed the trace; a tracer may also have
    ``notes``, sentences the user must read with the result (e.g. that the trace ran on another
    runtime than the one ``validate`` uses, because that one cannot expose intermediates).
    """

    backend: str

    def trace(self, inputs: Sequence["np.ndarray"]) -> ArtifactTrace: ...


# --------------------------------------------------------------------------- the compress stage


@dataclass(frozen=True)
class CompressionStep:
    """One method with its options, e.g. ``CompressionStep("l1-structured", {"amount": 0.5})``."""

    method: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class CompressionRequest:
    """Everything a compression method needs."""

    method: str
    module: Any  # torch.nn.Module, a copy the method may change in place
    example_inputs: tuple[Any, ...]  # torch tensors
    options: Mapping[str, Any] = field(default_factory=dict)
    #: unlabelled samples (one array per input, batch first) for recovery methods
    data: tuple["np.ndarray", ...] | None = None
    #: labels matching ``data`` where the user gave some
    labels: "np.ndarray | None" = None
    #: the model before compression (the teacher of a recovery method)
    teacher: Any = None
    seed: int = 0
    #: call ``progress(fraction_done, "one-line status")`` during long work (training); it drives
    #: the progress display on a terminal and observers elsewhere. None: nobody is listening.
    progress: Callable[[float, str], None] | None = None


@dataclass(frozen=True)
class CompressionResult:
    """A compressed model and what the method did."""

    module: Any  # torch.nn.Module
    method: str
    summary: Mapping[str, Any] = field(default_factory=dict)
    messages: tuple[str, ...] = ()


# --------------------------------------------------------------------------- checking before converting (edgex check)


@dataclass(frozen=True)
class OperatorUse:
    """One operator a model uses, as its exported graph records it."""

    #: ``aten.conv2d`` (a torch model's ``torch.export`` graph, overload dropped) or ``onnx.Conv``
    name: str
    count: int
    #: the module paths it occurs in (first few), for the user to find it
    modules: tuple[str, ...] = ()
    #: the shapes of its tensor arguments, per use (first few uses), for rules that depend on them
    shapes: tuple[tuple[tuple[int, ...], ...], ...] = ()
    #: its other arguments (numbers, flags, lists of numbers), per use (first few uses)
    scalars: tuple[tuple[Any, ...], ...] = ()


@dataclass(frozen=True)
class ModelOperators:
    """Every operator a model needs, read from its exported graph (no conversion)."""

    #: "torch" (from ``torch.export``) or "onnx" (an ONNX reference's nodes)
    kind: str
    operators: tuple[OperatorUse, ...]
    inputs: tuple[TensorSpec, ...] = ()

    def get(self, name: str) -> OperatorUse | None:
        return next((op for op in self.operators if op.name == name), None)


@dataclass(frozen=True)
class OperatorFinding:
    """Something a target lacks or restricts that the model uses.

    ``blocks``: the conversion (or loading the artifact) is expected to fail on it; otherwise
    it converts with a cost the user should know of (ops falling back to a CPU, a float island)."""

    operator: str
    reason: str
    blocks: bool = True
    #: what the user can do about it (a rewrite, a recipe, another target)
    fix: str = ""
    modules: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"operator": self.operator, "reason": self.reason, "blocks": self.blocks, "fix": self.fix, "modules": list(self.modules)}


@dataclass(frozen=True)
class OperatorCheck:
    """A target's answer to ``edgex check``: what it finds in the model's operators, and the data
    it judged by (with versions, e.g. "TFLM kernel list at tflite-micro commit 90b983c")."""

    findings: tuple[OperatorFinding, ...] = ()
    source: str = ""
    #: operators the target's data does not cover: the prediction cannot vouch for them
    unknown: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()


# --------------------------------------------------------------------------- observers


@dataclass(frozen=True)
class StageEvent:
    """A pipeline stage starting or finishing, for observers (progress displays, loggers)."""

    stage: str
    target: str | None = None
    #: set when finished: "ok", or the target's status ("passed", "failed", "inconclusive", "error", "skipped")
    outcome: str | None = None
    seconds: float | None = None
    detail: str = ""
    #: for progress events: the fraction of the stage done, in [0, 1]
    progress: float | None = None
