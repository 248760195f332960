"""Target ``openvino`` (alias ``intel``): OpenVINO IR (``model.xml`` + ``model.bin``).

Converted from torch by ``openvino.convert_model`` (or from an ONNX export when that fails, the
fallback recorded; an ONNX reference is read directly). fp16 stores compressed fp16 weights
(``save_model(compress_to_fp16=True)``); int8 is NNCF's post-training quantization
(``nncf.quantize``) on the calibration data, accuracy-controlled
(``nncf.quantize_with_accuracy_control`` within ``--max-accuracy-drop``) when that data carries
labels. Validated on the OpenVINO CPU runtime, through edgex's one parity implementation: this
module only loads and runs the IR.

Mixed precision (``keeps_wider=("float",)``): where edgex's simulation says full int8 misses its
floor (or with ``--keep-wider``), the layers it names are left out of NNCF's quantization
(``nncf.IgnoredScope`` of the IR ops whose torch module they hold): float ops on float weights,
whose values an int8 op reading them quantizes at its own input. The IR records them in its
rt_info (``edgex/kept_wider``), which ``edgex validate`` reads back.

Imports only ``edgex.plugins``; openvino, nncf and torch are imported inside the hooks, always
through :func:`_telemetry_off` (OpenVINO's telemetry is on by default; see there).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from edgex.plugins import (
    Artifact,
    ArtifactIO,
    ArtifactTrace,
    BackendStatus,
    ConversionRequest,
    ConversionResult,
    ModelOperators,
    OperatorCheck,
    QuantParams,
    ReferenceModel,
    TargetError,
    TargetOption,
    TargetSpec,
    TensorBinding,
    TracedTensor,
    UsageError,
    WiderLayers,
    hookimpl,
    infer_permutation,
    layout_name,
    one_line,
    onnx_node_scope,
    package_version,
    target_check,
)

TARGET = TargetSpec(
    name="openvino",
    aliases=("intel",),
    description="OpenVINO IR (.xml + .bin) for Intel CPUs, GPUs and NPUs, validated on the OpenVINO CPU runtime",
    artifact_kinds=(".xml",),
    precisions=("fp32", "fp16", "int8"),
    default_precision="fp32",
    options=(
        TargetOption(
            "openvino_route",
            "how torch models reach OpenVINO: auto (openvino.convert_model, then the ONNX route), direct or onnx",
            str, "auto", ("auto", "direct", "onnx"),
        ),
        TargetOption(
            "openvino_overflow_fix",
            "int8: 7-bit weights in every layer (enable; OpenVINO's CPU int8 kernels saturate 8-bit ones on CPUs without VNNI), "
            "in the first layer only (first_layer, NNCF's default, for VNNI targets) or nowhere (disable)",
            str, "enable", ("enable", "first_layer", "disable"),
        ),
    ),
    accepts=("torch", "onnx"),
    keeps_wider=("float",),
)

#: where a mixed-precision IR records the layers it keeps float: its rt_info at this path holds
#: ``WiderLayers.quantization()["kept_wider"]`` as a JSON string
KEPT_WIDER_RT_INFO = ["edgex", "kept_wider"]

#: a HOME that does not exist: openvino_telemetry then finds no place for its consent file and
#: declines, so it neither writes ~/intel nor sends anything
#: the ONNX route reads the run's shared export at this opset (the one ``jetson`` takes too)
ONNX_ROUTE_OPSET = 17
_NO_HOME = "/nonexistent/edgex-openvino-telemetry-off"

#: the CPU plugin computes in fp32 on every CPU (it would pick bf16 on AMX CPUs by itself)
_CPU_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}


@contextlib.contextmanager
def _telemetry_off() -> Iterator[None]:
    """Run OpenVINO and NNCF with their telemetry declined.

    OpenVINO's converter and NNCF re-check telemetry consent on import and on every
    ``convert_model``/``quantize``, and with no consent file they opt in and write a client id
    under ``~/intel``. With HOME pointing nowhere the check declines and nothing is written.
    """
    saved = os.environ.get("HOME")
    os.environ["HOME"] = _NO_HOME
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = saved


def _openvino() -> Any:
    with _telemetry_off():
        import openvino

    return openvino


# --------------------------------------------------------------------------- declaring


@hookimpl
def edgex_targets():
    return (TARGET,)


@hookimpl
def edgex_backend_status(target: str) -> BackendStatus:
    if importlib.util.find_spec("openvino") is None:
        return BackendStatus(False, "OpenVINO", "pip install edgex-openvino", "openvino not installed")
    backend = f"OpenVINO {package_version('openvino')} (CPU)"
    if importlib.util.find_spec("nncf") is None:
        return BackendStatus(True, backend, "pip install nncf", "nncf not installed: int8 unavailable")
    return BackendStatus(True, f"{backend}, NNCF {package_version('nncf')}")


# --------------------------------------------------------------------------- converting


def _from_torch(request: ConversionRequest, route: str) -> tuple[Any, str, list[str], dict[str, str]]:
    """The float OpenVINO model of the torch reference, the converter in words, messages, and
    (the ONNX route) the torch module of each ONNX node and tensor (:func:`_onnx_scopes`)."""
    import numpy as np
    import torch

    ov = _openvino()
    model = request.model
    args = tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in model.example_inputs)
    shapes = [list(spec.shape) for spec in model.inputs]
    failures: list[str] = []
    if route in ("auto", "direct"):
        try:
            with _telemetry_off():
                return ov.convert_model(model.module, example_input=args, input=shapes), f"openvino.convert_model {ov.__version__.split('-')[0]}", [], {}
        except Exception as exc:
            if route == "direct":
                raise TargetError(f"openvino.convert_model failed: {one_line(exc)} (try --openvino-route onnx)", stage="convert") from exc
            failures.append(f"openvino.convert_model failed: {one_line(exc)}")
    # the run's shared ONNX export (the one jetson takes: opset 17), not one of its own
    onnx_path = request.workdir / "model.export.onnx"
    try:
        exporter, export_messages = request.onnx_export(onnx_path, opset=ONNX_ROUTE_OPSET)
        with _telemetry_off():
            converted = ov.convert_model(str(onnx_path))
        scopes = _onnx_scopes(onnx_path)
    except Exception as exc:
        raise TargetError("; ".join([*failures, f"the ONNX route failed: {one_line(exc)}"]), stage="convert") from exc
    finally:
        onnx_path.unlink(missing_ok=True)
    messages = [f"used the ONNX route because {failures[0]}"] if failures else []
    return converted, f"{exporter} -> openvino.convert_model {ov.__version__.split('-')[0]}", messages + export_messages, scopes


def _onnx_scopes(path: Path) -> dict[str, str]:
    """The torch module of each node of an ONNX export (``onnx_node_scope``), by node name and by
    the names of the tensors it makes: OpenVINO's ONNX frontend names an op after its node, or
    (a LayerNormalization made MVN) only its output tensor after the node's."""
    import onnx

    scopes: dict[str, str] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        scope = onnx_node_scope(node)
        if scope:
            scopes[node.name] = scope
            scopes.update((f"tensor:{name}", scope) for name in node.output if name)
    return scopes


def op_module(op: Any, scopes: Mapping[str, str]) -> str | None:
    """The torch module an OpenVINO op belongs to: from the friendly name openvino.convert_model
    gives it from torch (``__module.blocks.1.attn.query/aten::linear/MatMul``), else from the ONNX
    export it was read from (``scopes``: its node's name, ``node/WithoutBiases`` included, or the
    tensor it makes); None where neither says."""
    name = op.get_friendly_name()
    found = _modules(name)
    if found:
        return found[0]
    if name in scopes:
        return scopes[name]
    if name.split("/", 1)[0] in scopes:
        return scopes[name.split("/", 1)[0]]
    for port in op.outputs():
        for tensor in port.get_names():
            if f"tensor:{tensor}" in scopes:
                return scopes[f"tensor:{tensor}"]
    return None


def _held_ops(model: Any, layers: WiderLayers, scopes: Mapping[str, str]) -> list[str]:
    """The friendly names of the ops (constants, inputs and outputs aside) whose innermost torch
    module ``layers`` holds: NNCF's ignored scope. None at all is a usage error (modules the model
    lacks, or an IR whose op names say no module)."""
    names = []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in ("Constant", "Parameter", "Result") and layers.holds(op_module(op, scopes)):
            names.append(op.get_friendly_name())
    if not names:
        raise UsageError(
            f"mixed precision: no op of the OpenVINO model belongs to {', '.join(layers.modules)} (torch module paths as the model "
            "names them, e.g. blocks.0.attn): nothing to keep float"
        )
    return names


def _named(model: Any, reference: ReferenceModel) -> Any:
    """The model's inputs and outputs named as the reference's (the torch route numbers them)."""
    if len(model.inputs) != len(reference.inputs) or len(model.outputs) != len(reference.output_names):
        raise TargetError(
            f"the OpenVINO model has {len(model.inputs)} inputs and {len(model.outputs)} outputs, "
            f"the reference {len(reference.inputs)} and {len(reference.output_names)}", stage="convert",
        )
    for port, spec in zip(model.inputs, reference.inputs):
        port.get_tensor().set_names({spec.name})
    for port, name in zip(model.outputs, reference.output_names):
        port.get_tensor().set_names({name})
    return model


#: --openvino-overflow-fix -> NNCF's OverflowFix value
_OVERFLOW_FIX = {"enable": "enable", "first_layer": "first_layer_only", "disable": "disable"}


def _quantize(model: Any, request: ConversionRequest, ignored: Sequence[str] = ()) -> tuple[Any, str, dict[str, Any]]:
    """int8 by NNCF post-training quantization on the calibration data; with labelled calibration
    data (``request.calibration_labels``) accuracy-controlled (:func:`_accuracy_controlled`).
    Returns the model, the converter's words and the report's account of the path taken.

    Three of NNCF's defaults are changed, each measured (SQNR against torch, OpenVINO's CPU plugin
    on an AVX2 CPU without VNNI; edgex's simulated int8 reference in brackets):

    - weights 7-bit in every layer (``--openvino-overflow-fix enable``): with NNCF's default
      (first layer only) the CPU's int8 kernels saturate the later layers' 8-bit weights -- the
      tiny test CNN 27.6 dB, 52.7 dB with the same IR computed in float, 55.8 dB with 7-bit weights;
    - activation ranges are the calibration data's min/max: NNCF's default estimator clips them
      (digits' pooled features at 2.51 where the data reach 4.64);
    - the full bias correction instead of the fast one, which took digits to 12 dB whatever the
      weights and ranges (none: 36.3 dB; full: 40.9 dB [39.6 dB]).

    ``ignored``: the friendly names of the ops mixed precision keeps float (NNCF's ignored scope).
    """
    if not request.calibration:
        raise UsageError("int8 needs calibration data: pass --calibration FILE|DIR")
    if importlib.util.find_spec("nncf") is None:
        raise TargetError("int8 needs NNCF: pip install nncf", stage="convert")
    overflow_fix = request.options.get("openvino_overflow_fix") or "enable"
    with _telemetry_off():
        import nncf
        from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        advanced = AdvancedQuantizationParameters(
            overflow_fix=OverflowFix(_OVERFLOW_FIX[overflow_fix]),
            activations_range_estimator_params=RangeEstimatorParametersSet.MINMAX,
        )
        settings = f"overflow fix {overflow_fix}, min/max ranges, full bias correction; {len(request.calibration)} calibration samples"
        scope = nncf.IgnoredScope(names=list(ignored)) if ignored else None
        if ignored:
            settings += f"; {len(ignored)} ops kept float (ignored scope)"
        if request.calibration_labels is not None:
            quantized, control = _accuracy_controlled(model, request, advanced, scope)
            return quantized, f"int8 by nncf.quantize_with_accuracy_control {nncf.__version__} (max drop {request.max_accuracy_drop:g} points on the labelled calibration data; {settings})", control
        dataset = nncf.Dataset([list(sample) for sample in request.calibration])
        try:
            quantized = nncf.quantize(model, dataset, subset_size=len(request.calibration), fast_bias_correction=False, advanced_parameters=advanced, ignored_scope=scope)
        except Exception as exc:
            raise TargetError(f"nncf.quantize failed: {one_line(exc)}", stage="convert") from exc
    why = "the calibration data carries no labels (pass --calibration DATA.npz with arrays x and y for accuracy control)"
    return quantized, f"int8 by nncf.quantize {nncf.__version__} ({settings})", {"path": "nncf.quantize", "why": why}


def _top1(compiled: Any, items: Any) -> tuple[float, list[float]]:
    """Top-1 accuracy of a compiled model on (inputs, labels) items, and each item's."""
    import numpy as np

    per_item = [float(np.mean(np.asarray(compiled(inputs)[compiled.output(0)]).argmax(axis=1) == labels)) for inputs, labels in items]
    return float(np.mean(per_item)), per_item


#: ops whose second input is a layer's weights
_WEIGHTED = frozenset({"Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul"})


def _float_layers(model: Any) -> list[str]:
    """The layers whose weights are float constants: NNCF stores a quantized layer's weights as
    int8 constants (converted and scaled on load), so these compute in float."""
    ov = _openvino()
    floating = []
    for op in model.get_ordered_ops():
        if op.get_type_name() not in _WEIGHTED:
            continue
        node = op.input_value(1).get_node()
        while node.get_type_name() in ("Multiply", "Subtract", "Convert", "Reshape", "Transpose"):
            node = node.input_value(0).get_node()
        if node.get_type_name() == "Constant" and node.get_output_element_type(0) not in (ov.Type.i8, ov.Type.u8):
            floating.append(op.get_friendly_name())
    return floating


def _accuracy_controlled(model: Any, request: ConversionRequest, advanced: Any, scope: Any = None) -> tuple[Any, dict[str, Any]]:
    """``nncf.quantize_with_accuracy_control``: quantize, then revert the layers that cost most
    top-1 accuracy to float until the drop on the labelled calibration data is within
    ``--max-accuracy-drop``. It validates on the calibration data, never on the evaluation data
    the report's accuracy is measured on (edgex hands a target no evaluation labels)."""
    import nncf
    from nncf.parameters import DropType

    ov = _openvino()
    items = [(list(sample), labels) for sample, labels in zip(request.calibration, request.calibration_labels)]
    dataset = nncf.Dataset(items, lambda item: item[0])
    # measured here too, on the CPU plugin as validation runs it (NNCF only logs its figures);
    # the float model first, before NNCF touches it
    core = ov.Core()
    before, _ = _top1(core.compile_model(model, "CPU", _CPU_CONFIG), items)
    try:
        quantized = nncf.quantize_with_accuracy_control(
            model, dataset, dataset, _top1,
            max_drop=request.max_accuracy_drop / 100, drop_type=DropType.ABSOLUTE,  # points -> a fraction, as validate returns
            subset_size=len(items), fast_bias_correction=False, advanced_quantization_parameters=advanced, ignored_scope=scope,
        )
    except Exception as exc:
        raise TargetError(f"nncf.quantize_with_accuracy_control failed: {one_line(exc)}", stage="convert") from exc
    after, _ = _top1(core.compile_model(quantized, "CPU", _CPU_CONFIG), items)
    if precision_of(quantized) != "int8":  # no FakeQuantize and no int8 weight left
        raise TargetError(
            f"int8 cannot stay within --max-accuracy-drop {request.max_accuracy_drop:g} on the labelled calibration data: "
            "nncf.quantize_with_accuracy_control reverted every layer to float (allow a larger drop, or pass unlabelled calibration data)",
            stage="convert",
        )
    return quantized, {
        "path": "nncf.quantize_with_accuracy_control",
        "validated_on": f"{sum(len(labels) for _, labels in items)} labelled calibration samples",
        "max_drop_points": request.max_accuracy_drop,
        "accuracy_float": before,
        "accuracy_int8": after,
        # the layers mixed precision kept float (the ignored scope) were never NNCF's to revert
        "layers_reverted_to_float": [name for name in _float_layers(quantized) if scope is None or name not in scope.names],
    }


def expected_scheme(model: Any, request: ConversionRequest) -> dict[str, Any]:
    """The ``quantization_scheme`` the IR ``_quantize`` makes of the float ``model`` will read
    (what edgex's simulation chooses the layers kept float by, before there is an IR): 7-bit
    weights with the overflow fix in every layer, NNCF's full bias correction and float outputs."""
    scheme: dict[str, Any] = {"weight_bits": 7 if (request.options.get("openvino_overflow_fix") or "enable") == "enable" else 8,
                              "quantizer": "nncf", "bias_correction": True, "float_outputs": True}
    if any(op.get_type_name() in RECURRENT_OPS for op in model.get_ordered_ops()):
        scheme["recurrent"] = "int8_weights"
    return scheme


def _layers_kept_float(model: Any, request: ConversionRequest) -> WiderLayers | None:
    """The layers this int8 IR keeps float (``ConversionRequest.layers_kept_wider``), None for full int8."""
    layers = request.layers_kept_wider("float", quantization=expected_scheme(model, request))
    return layers if layers is not None and layers.modules else None


@hookimpl
def edgex_convert(request: ConversionRequest) -> ConversionResult:
    ov = _openvino()
    if request.model.onnx_path is not None:
        with _telemetry_off():
            model = ov.convert_model(str(request.model.onnx_path))
        converter, messages = f"openvino.convert_model {ov.__version__.split('-')[0]} (the reference ONNX)", []
        scopes = _onnx_scopes(request.model.onnx_path) if request.precision == "int8" and request.keep_wider else {}
    else:
        model, converter, messages, scopes = _from_torch(request, request.options.get("openvino_route") or "auto")
    model = _named(model, request.model)
    quantization_path: dict[str, Any] = {}
    if request.precision == "int8":
        layers = _layers_kept_float(model, request)
        ignored = _held_ops(model, layers, scopes) if layers is not None else []
        model, how, quantization_path = _quantize(model, request, ignored)
        converter += f"; {how}"
        if layers is not None:
            kept = _float_layers(model)
            model.set_rt_info(json.dumps(layers.quantization()["kept_wider"]), KEPT_WIDER_RT_INFO)
            quantization_path["kept_float"] = {"modules": list(layers.modules), "as": layers.wider_as, "chosen_by": layers.chosen_by,
                                               "ignored_ops": ignored, "float_weight_ops": [name for name in kept if name in ignored]}
            messages.append(
                f"kept float (left out of NNCF's quantization: {len(ignored)} ops, {len(quantization_path['kept_float']['float_weight_ops'])} "
                f"with float weights): {', '.join(layers.modules)}"
            )
        if quantization_path.get("layers_reverted_to_float"):
            reverted = quantization_path["layers_reverted_to_float"]
            messages.append(
                f"NNCF kept {len(reverted)} weighted layer(s) in float to stay within {request.max_accuracy_drop:g} points on the labelled "
                f"calibration data ({quantization_path['accuracy_float']:.4f} -> {quantization_path['accuracy_int8']:.4f}): {', '.join(reverted)}"
            )
    elif request.precision == "fp16":
        converter += "; fp16 weights (save_model compress_to_fp16)"
    xml = request.workdir / "model.xml"
    ov.save_model(model, str(xml), compress_to_fp16=request.precision == "fp16")
    io = describe_ir(xml, request.model, request.precision)
    artifacts = (Artifact(xml, "openvino-ir"), Artifact(xml.with_suffix(".bin"), "openvino-weights"))
    details: dict[str, Any] = {"openvino": {"version": ov.__version__}}
    if io.quantization:
        details["openvino"]["quantization"] = dict(io.quantization)
    if quantization_path:
        details["openvino"]["nncf"] = quantization_path
    return ConversionResult(artifacts, io, converter, tuple(messages), details)


# --------------------------------------------------------------------------- describing


def _read(path: Path) -> Any:
    ov = _openvino()
    if path.suffix != ".xml":
        raise UsageError(f"{path} is not an OpenVINO IR .xml file")
    if not path.with_suffix(".bin").exists():
        raise UsageError(f"{path}: its weights {path.with_suffix('.bin').name} are missing next to it")
    try:
        return ov.Core().read_model(str(path))
    except Exception as exc:
        raise UsageError(f"cannot read {path} as OpenVINO IR: {one_line(exc)}") from exc


def _constant(node: Any) -> Any:
    """The value of a Constant, through the Convert of a compressed (fp16/int8) one; else None."""
    while node.get_type_name() == "Convert":
        node = node.input_value(0).get_node()
    return node.get_data() if node.get_type_name() == "Constant" else None


def fake_quantizes(model: Any) -> list[Any]:
    """The model's activation FakeQuantize ops (NNCF stores int8 weights as constants, not FQs)."""
    return [op for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize"]


def quant_params(fq: Any) -> QuantParams | None:
    """The int8 grid of a per-tensor FakeQuantize: ``real = scale * (q - zero_point)``."""
    import numpy as np

    low, high = (_constant(fq.input_value(i).get_node()) for i in (3, 4))
    if low is None or high is None or np.size(low) != 1:
        return None
    levels = int(fq.get_attributes()["levels"])
    low, high = float(np.ravel(low)[0]), float(np.ravel(high)[0])
    scale = (high - low) / (levels - 1)
    if scale <= 0:
        return None
    if low >= 0:  # NNCF's unsigned grid for non-negative tensors: [0, 255]
        return QuantParams(scale, int(round(-low / scale)), "uint8")
    return QuantParams(scale, int(round(-128 - low / scale)), "int8")


def quantization_scheme(model: Any) -> dict[str, Any]:
    """How the IR quantizes, read from the file, for edgex's simulated reference.

    NNCF (CPU, performance preset): weights per-channel symmetric int8, on [-63, 63] where its
    overflow fix applies (every layer by default here, see ``_quantize``), else [-127, 127];
    activations per tensor, zero point 0 -- signed tensors on [-128, 127], non-negative ones
    (after a ReLU) on an unsigned [0, 255] grid. The simulated reference takes one weight range
    and one activation scheme: ``weight_bits`` 7 when every layer has 7-bit weights (with the
    fix on the first layer only, 8: the reference is then finer than the IR there); ``symmetric_activations``
    is not declared because core's symmetric scheme puts non-negative tensors on [-127, 127]
    (half NNCF's resolution there), whereas its plain affine grid is NNCF's exactly for them and
    within one step of it for signed tensors. ``bias_correction`` where NNCF's rt_info in the IR
    says it ran its full bias correction (``fast_bias_correction=False``, as ``_quantize`` asks),
    and ``float_outputs`` where it left the model outputs unquantized (``quantize_outputs``
    False, its default): without them the simulation sat 4.8-10 dB below honest IRs (digits
    37.1 dB against 42.9 dB), blind to defects in between; with them within 1 dB
    (docs/int8_reference.md).
    """
    import ast

    import numpy as np

    ov = _openvino()
    recurrent = _recurrent_weights(model)  # 8-bit whatever the rest: the overflow fix leaves them
    peaks = [
        int(np.abs(op.get_data().astype(np.int32)).max(initial=0))
        for op in model.get_ordered_ops()
        if op.get_type_name() == "Constant" and op.get_output_element_type(0) == ov.Type.i8 and len(op.get_output_shape(0)) >= 2
        and op.get_friendly_name() not in recurrent
    ]
    scheme = {"weight_bits": 7 if peaks and max(peaks) <= 64 else 8, "quantizer": "nncf"}
    try:
        advanced = ast.literal_eval(model.get_rt_info(["nncf", "quantization", "advanced_parameters"]).astype(str))
        fast = model.get_rt_info(["nncf", "quantization", "fast_bias_correction"]).astype(str) == "True"
        if not fast and not advanced.get("disable_bias_correction", False):
            scheme["bias_correction"] = True
        if not advanced.get("quantize_outputs", False):
            scheme["float_outputs"] = True
    except (RuntimeError, ValueError, SyntaxError):  # no NNCF rt_info (an IR quantized elsewhere): none declared
        pass
    if any(op.get_type_name() in RECURRENT_OPS for op in model.get_ordered_ops()):
        # NNCF keeps an LSTMSequence whole: input and output FakeQuantized, W and R int8 per gate row
        scheme["recurrent"] = "int8_weights" if recurrent else "float"
    kept = kept_wider(model)
    if kept is not None:
        scheme["kept_wider"] = kept
    return scheme


def kept_wider(model: Any) -> dict[str, Any] | None:
    """The layers a mixed-precision IR keeps float, as its rt_info records them
    (``{"modules": [...], "as": "float"}``); None for an IR that records none."""
    if not model.has_rt_info(KEPT_WIDER_RT_INFO):
        return None
    try:
        kept = json.loads(model.get_rt_info(KEPT_WIDER_RT_INFO).astype(str))
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"the IR's rt_info {'/'.join(KEPT_WIDER_RT_INFO)} is not edgex's JSON ({one_line(exc)})") from exc
    if not isinstance(kept, dict) or not kept.get("modules"):
        return None
    return {"modules": [str(m) for m in kept["modules"]], "as": str(kept.get("as", "float"))}


#: OpenVINO's recurrent ops (what ov.convert_model makes of aten.lstm / gru / rnn)
RECURRENT_OPS = frozenset({"LSTMSequence", "GRUSequence", "RNNSequence", "LSTMCell", "GRUCell", "RNNCell"})


def _recurrent_weights(model: Any) -> set[str]:
    """The friendly names of the int8 Constants a recurrent op reads its weights from (through
    their dequantizing Convert and Multiply)."""
    i8 = _openvino().Type.i8
    found: set[str] = set()
    for op in model.get_ordered_ops():
        if op.get_type_name() not in RECURRENT_OPS:
            continue
        for port in list(op.inputs())[1:]:
            node = port.get_source_output().get_node()
            while node.get_type_name() in ("Multiply", "Convert", "Subtract"):
                node = node.input(0).get_source_output().get_node()
            if node.get_type_name() == "Constant" and node.get_output_element_type(0) == i8:
                found.add(node.get_friendly_name())
    return found


def precision_of(model: Any) -> str:
    ov = _openvino()
    types = {op.get_output_element_type(0) for op in model.get_ordered_ops() if op.get_type_name() == "Constant"}
    if fake_quantizes(model) or ov.Type.i8 in types:
        return "int8"
    return "fp16" if ov.Type.f16 in types else "fp32"


def describe_ir(path: Path, reference: ReferenceModel, precision: str | None = None) -> ArtifactIO:
    """The IR's inputs and outputs related to the reference model."""
    import numpy as np

    model = _read(Path(path))
    if len(model.inputs) != len(reference.inputs):
        raise UsageError(f"{path} takes {len(model.inputs)} inputs but the reference model takes {len(reference.inputs)}")
    inputs = []
    for port, spec in zip(model.inputs, reference.inputs):
        partial = port.get_partial_shape()
        shape = tuple(ref if dim.is_dynamic else dim.get_length() for dim, ref in zip(partial, spec.shape)) if partial.rank.get_length() == len(spec.shape) else tuple(spec.shape)
        perm = infer_permutation(spec.shape, shape)
        if perm is None:
            raise UsageError(f"input {port.get_any_name()!r} of {path} has shape {shape}, which no layout maps to the reference's {spec.shape}")
        inputs.append(TensorBinding(port.get_any_name(), shape, np.dtype(port.get_element_type().to_dtype()).name, layout_name(len(shape), perm), perm))
    outputs = []
    for port in model.outputs:
        partial = port.get_partial_shape()
        shape = tuple(1 if dim.is_dynamic else dim.get_length() for dim in partial)
        outputs.append(TensorBinding(port.get_any_name(), shape, np.dtype(port.get_element_type().to_dtype()).name))
    precision = precision or precision_of(model)
    scheme = quantization_scheme(model) if precision == "int8" else {}
    return ArtifactIO(Path(path), precision, tuple(inputs), tuple(outputs), scheme)


@hookimpl
def edgex_describe_artifact(target: str, path: Path, reference: ReferenceModel) -> ArtifactIO:
    return describe_ir(Path(path), reference)


# --------------------------------------------------------------------------- running


_ARITHMETIC = {
    "fp16": ", fp16 weights decompressed, fp32 arithmetic",
    "int8": ", int8 kernels (low-precision transformations)",
}


class OpenVINORuntime:
    """An IR compiled for OpenVINO's CPU plugin."""

    def __init__(self, io: ArtifactIO, model: Any = None):
        ov = _openvino()
        core = ov.Core()
        try:
            self.compiled = core.compile_model(model if model is not None else str(io.path), "CPU", _CPU_CONFIG)
        except Exception as exc:
            raise TargetError(f"OpenVINO cannot compile {Path(io.path).name} for CPU: {one_line(exc)}", stage="validate") from exc
        self.request = self.compiled.create_infer_request()
        cpu = core.get_property("CPU", "FULL_DEVICE_NAME")
        self.backend = f"OpenVINO {ov.__version__.split('-')[0]} CPU plugin ({cpu}){_ARITHMETIC.get(io.precision, '')}"

    def outputs(self, inputs: Sequence[Any]) -> list[Any]:
        import numpy as np

        results = self.request.infer(list(inputs))
        return [np.array(results[port]) for port in self.compiled.outputs]

    def run(self, inputs: Sequence[Any]) -> list[Any]:
        return self.outputs(inputs)


@hookimpl
def edgex_load_runtime(target: str, io: ArtifactIO, options: Mapping[str, Any]):
    return OpenVINORuntime(io)


# --------------------------------------------------------------------------- explaining

#: ops whose output is not a computed tensor worth reading
_SKIPPED = frozenset({"Parameter", "Constant", "Result", "FakeQuantize", "Convert", "ShapeOf"})


def _modules(name: str) -> tuple[str, ...]:
    """The torch module a node belongs to, from the friendly name openvino.convert_model gives it:
    ``__module.features.3/aten::relu/Relu`` -> ``features.3``; empty when it records none."""
    if not name.startswith("__module."):
        return ()
    path = name[len("__module."):].split("/", 1)[0]
    return (path,) if path else ()


def _computed(op: Any) -> bool:
    """Whether an op computes on activations (not on constants only, as weight decompression does)."""
    if op.get_type_name() in _SKIPPED:
        return False
    return any(_constant(op.input_value(i).get_node()) is None for i in range(op.get_input_size()))


class OpenVINOTracer:
    """The IR with every computed intermediate tensor added as an output, on the CPU plugin.

    A tensor NNCF quantizes is read after its FakeQuantize, with that grid; the modules come
    from the friendly names the torch frontend gives each node.
    """

    def __init__(self, io: ArtifactIO):
        model = _read(Path(io.path))
        self.outputs_count = len(model.outputs)
        #: (name, modules, op, grid)
        self.steps: list[tuple[str, tuple[str, ...], str, QuantParams | None]] = []
        ports = []
        for op in model.get_ordered_ops():
            if not _computed(op) or op.get_output_size() != 1:
                continue
            port = op.output(0)
            consumers = [target.get_node() for target in port.get_target_inputs()]
            quantizer = next((c for c in consumers if c.get_type_name() == "FakeQuantize"), None)
            read = quantizer.output(0) if quantizer is not None and len(consumers) == 1 else port
            grid = quant_params(quantizer) if read is not port else None
            self.steps.append((op.get_friendly_name(), _modules(op.get_friendly_name()), op.get_type_name(), grid))
            ports.append(read)
        model.add_outputs(ports)
        self.runtime = OpenVINORuntime(io, model)
        self.backend = f"{self.runtime.backend}, every intermediate tensor made a model output"
        self.notes: tuple[str, ...] = ()

    def trace(self, inputs: Sequence[Any]) -> ArtifactTrace:
        import numpy as np

        values = self.runtime.outputs(inputs)
        outputs, intermediates = values[: self.outputs_count], values[self.outputs_count :]
        tensors = tuple(
            TracedTensor(name, value, modules, tuple(range(np.ndim(value))), grid, op)
            for (name, modules, op, grid), value in zip(self.steps, intermediates)
        )
        return ArtifactTrace(tensors, tuple(outputs))


@hookimpl
def edgex_load_tracer(target: str, io: ArtifactIO, reference: ReferenceModel, options: Mapping[str, Any]):
    return OpenVINOTracer(io)


@hookimpl
def edgex_check_operators(target: str, operators: ModelOperators, precision: str) -> OperatorCheck:
    """OpenVINO's PyTorch frontend keeps its operator table in C++; what edgex can vouch for is the
    ONNX route it falls back to (auto), whose export the onnx target judges. An operator that
    route cannot take may still convert directly: that is said, not predicted."""
    answer = target_check("onnx", operators, precision)
    if answer is None:
        return OperatorCheck(source="no ONNX target installed to judge the ONNX route", unknown=tuple(op.name for op in operators.operators))
    # what the ONNX route cannot take, the direct route may: unknown, neither passed nor error
    unknown = tuple(answer.unknown) + tuple(f.operator for f in answer.findings if f.blocks)
    return OperatorCheck(
        tuple(f for f in answer.findings if not f.blocks),
        f"its ONNX route, as the onnx target judges it ({answer.source}); OpenVINO's ONNX frontend reads standard ONNX",
        unknown,
        ("openvino.convert_model is tried first; it may take operators the ONNX route cannot",) + tuple(answer.notes),
    )
