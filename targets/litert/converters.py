"""The two ways edgex turns a reference model into a ``.tflite`` file.

``litert-torch``: Google's torch -> LiteRT converter (``torch.export`` underneath), with the
model wrapped so that 4-D inputs and outputs are NHWC (``litert_torch.to_channel_last_io``: the
converter's layout pass then folds the transposes into the convolutions, leaving none at the
graph's edges); fp16, dynamic-range int8 and full int8 by ai-edge-quantizer.

``onnx2tf``: torch -> ONNX (:func:`edgex.plugins.export_onnx`, edgex's one ONNX export) ->
onnx2tf (an NHWC-native TensorFlow graph) -> the TensorFlow Lite converter, which quantizes.
Accepts an ONNX reference too.

Each path writes one .tflite into ``work`` and returns a picklable :class:`PathResult`; callers
run :func:`convert_with` in a process of its own (converters segfault). No path touches the
network (onnx2tf's sample-image download is pre-empted by a file made from the user's data, and
sockets are refused: ``edgex.plugins.offline``) or writes outside ``work``.
"""

from __future__ import annotations

import contextlib
import io as _io
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from edgex.plugins import ReferenceModel, WiderLayers, contained, offline, package_version

NCHW_TO_NHWC = (0, 2, 3, 1)
NHWC_TO_NCHW = (0, 3, 1, 2)

#: onnx2tf loads this file from its working directory instead of downloading it
ONNX2TF_SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"


#: the opset onnx2tf reads: the dynamo exporter's own, so the run shares the onnx target's export
ONNX2TF_OPSET = 18


@dataclass(frozen=True)
class PathResult:
    """What one converter path produced (crosses a process boundary: plain values only)."""

    path: str
    converter: str
    messages: tuple[str, ...] = ()
    #: per reference input / output: the permutation the artifact applies (None: identity)
    input_perms: tuple[tuple[int, ...] | None, ...] = ()
    output_perms: tuple[tuple[int, ...] | None, ...] = ()


def version(package: str) -> str:
    return package_version(package) or "?"


def channels_last(rank: int) -> tuple[int, ...] | None:
    """The permutation edgex gives a tensor of this rank in a .tflite: NHWC for images only."""
    return NCHW_TO_NHWC if rank == 4 else None


def _as_artifact(x: np.ndarray, perm: tuple[int, ...] | None) -> np.ndarray:
    return np.ascontiguousarray(np.transpose(x, perm) if perm is not None else x)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Converters print progress bars and reports; the pipeline's log has the rest."""
    with contextlib.redirect_stdout(_io.StringIO()):
        yield


# --------------------------------------------------------------------------- litert-torch


#: the full-int8 calibration recipes each path offers (docs/int8_recipes.md); the first is its default
RECIPES = {
    "litert-torch": ("min-max", "moving-average", "percentile", "mse"),
    "onnx2tf": ("tflite-converter",),
}
#: recipes with int16 activations and int8 weights (TFLite's 16x8 mode), offered only to targets
#: whose runtime has int16 kernels (``mcu``: TFLM; not the Edge TPU)
INT16_RECIPES = {"litert-torch": ("16x8",)}
#: percentile recipe: each activation range clipped to these percentiles of its calibration values
CLIP_PERCENTILES = (0.01, 99.99)
#: mse recipe: the clipping of each range (a fraction of its min/max) tried for the least int8 error
MSE_CLIP_FRACTIONS = tuple(float(f) for f in np.linspace(0.2, 1.0, 41))
#: values kept per tensor (a stride over every sample) for the percentile / MSE estimates
CLIP_SAMPLE_VALUES = 1 << 16


def activation_bits(recipe_name: str | None) -> int:
    return 16 if recipe_name in INT16_RECIPES["litert-torch"] else 8


def _int8_error(values: np.ndarray, low: float, high: float) -> float:
    """Mean squared error of ``values`` quantized affine int8 over [low, high] (clipping included)."""
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max(high - low, 1e-12) / 255.0
    zero = np.round(-128 - low / scale)
    q = np.clip(np.round(values / scale) + zero, -128, 127)
    return float(np.mean(((q - zero) * scale - values) ** 2))


def clipped_range(values: np.ndarray, estimator: str) -> tuple[float, float]:
    """The int8 range of one activation tensor from its calibration ``values``: ``percentile``
    clips to CLIP_PERCENTILES (a side that never crosses zero keeps its bound: ReLU's 0), ``mse``
    scales min/max by the fraction of MSE_CLIP_FRACTIONS with the least int8 error (clipping
    error against rounding error, as TensorRT's and OpenVINO's MSE calibrators weigh them)."""
    values = np.asarray(values, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    if estimator == "percentile":
        p_low, p_high = (float(p) for p in np.percentile(values, CLIP_PERCENTILES))
        return (p_low if low < 0 else low), (p_high if high > 0 else high)
    errors = [_int8_error(values, low * f, high * f) for f in MSE_CLIP_FRACTIONS]
    best = MSE_CLIP_FRACTIONS[int(np.argmin(errors))]
    return low * best, high * best


def _clip_ranges(float_path: Path, key: str, samples: Sequence[dict[str, np.ndarray]], qsvs: dict[str, Any], estimator: str) -> tuple[dict[str, Any], int]:
    """``qsvs`` (ai-edge-quantizer's min/max per tensor) with every activation's range (inputs
    and outputs too) replaced by :func:`clipped_range` over its values on ``samples`` (LiteRT,
    every tensor kept). Returns the ranges and how many were clipped."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(float_path), experimental_preserve_all_tensors=True, num_threads=1)
    runner = interpreter.get_signature_runner(key)
    indices = {d["name"]: d["index"] for d in interpreter.get_tensor_details()}
    wanted = {name: indices[name] for name in qsvs if name in indices}
    seen: dict[str, list[np.ndarray]] = {name: [] for name in wanted}
    stride_of: dict[str, int] = {}
    for sample in samples:
        runner(**sample)
        for name, index in wanted.items():
            value = interpreter.get_tensor(index)
            if not np.issubdtype(value.dtype, np.floating) or value.size == 0:
                continue
            stride = stride_of.setdefault(name, max(1, value.size * len(samples) // CLIP_SAMPLE_VALUES))
            seen[name].append(value.ravel()[::stride].astype(np.float32))
    clipped = dict(qsvs)
    count = 0
    for name, parts in seen.items():
        if not parts:
            continue
        low, high = clipped_range(np.concatenate(parts), estimator)
        old = qsvs[name]
        if (low, high) != (float(np.min(old["min"])), float(np.max(old["max"]))):
            count += 1
        clipped[name] = {**old, "min": np.full_like(np.asarray(old["min"], dtype=np.float32), low), "max": np.full_like(np.asarray(old["max"], dtype=np.float32), high)}
    return clipped, count


def _add_int8_embedding_lookups(recipes: Any) -> None:
    """EMBEDDING_LOOKUP (an ``nn.Embedding``) in int8 on top of ``static_wi8_ai8`` (in the
    RecipeManager ``recipes``): a per-tensor symmetric int8 table, ids left int32.

    The static recipe leaves the lookup float: ai-edge-quantizer's config policy lists it for
    weight-only and dynamic recipes only, which the config's ``skip_checks`` passes by. The
    quantizer's own materialization then gives the lookup's output the scale calibrated on it,
    while LiteRT's and TFLM's int8 kernels copy table rows as they are (no requantization): every
    value comes out on the wrong scale (2.4 dB on tests/models.py:token_classifier). Hence the
    table is per-tensor and :func:`_embedding_lookup_on_its_table_scale` gives the output the
    table's scale and zero point, so each row read is exactly the quantized table's row.
    """
    from ai_edge_quantizer import qtyping

    recipes.add_quantization_config(".*", qtyping.TFLOperationName.EMBEDDING_LOOKUP, qtyping.OpQuantizationConfig(
        activation_tensor_config=qtyping.TensorQuantizationConfig(num_bits=8, symmetric=False),
        weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=8, symmetric=True, granularity=qtyping.QuantGranularity.TENSORWISE),
        compute_precision=qtyping.ComputePrecision.INTEGER,
        skip_checks=True,
    ))


@contextlib.contextmanager
def _embedding_lookup_on_its_table_scale() -> Iterator[None]:
    """While quantizing: EMBEDDING_LOOKUP materialized with its output on its table's scale
    (ai-edge-quantizer's SAME_AS_INPUT_SCALE constraint, the one its GATHER uses; the ids,
    operand 0, are not quantized). The stock registration is put back afterwards."""
    import functools

    from ai_edge_quantizer import algorithm_manager, qtyping
    from ai_edge_quantizer.algorithms.uniform_quantize import common_quantize, naive_min_max_quantize
    from ai_edge_quantizer.algorithms.utils import common_utils

    def same_as_table(get_tensor_quant_params_fn, op_info, graph_info, tensor_name_to_qsv, tensor_quant_params_cache):
        return common_utils.materialize_standard_op(
            op_info, graph_info, tensor_name_to_qsv, get_tensor_quant_params_fn,
            tensor_quant_params_cache=tensor_quant_params_cache,
            constraint=common_utils.OpQuantConstraint.SAME_AS_INPUT_SCALE,
            inputs_to_ignore=[0],
        )

    def register(materialize: Any) -> None:
        algorithm_manager.register_quantized_op(
            algorithm_manager.AlgorithmName.MIN_MAX_UNIFORM_QUANT,
            qtyping.TFLOperationName.EMBEDDING_LOOKUP,
            naive_min_max_quantize.init_qsvs,
            calibration_func=naive_min_max_quantize.min_max_calibrate,
            materialize_func=functools.partial(materialize, naive_min_max_quantize.get_tensor_quant_params),
        )

    register(same_as_table)
    try:
        yield
    finally:
        register(common_quantize.materialize_embedding_lookup)


def _quantize_with_ai_edge_quantizer(
    float_path: Path,
    dest: Path,
    precision: str,
    calibration: Sequence[tuple[np.ndarray, ...]] | None,
    input_perms: Sequence[tuple[int, ...] | None],
    recipe_name: str = "min-max",
    per_tensor_ops: Sequence[str] = (),
    kept: WiderLayers | None = None,
) -> str:
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import algorithm_manager, calibrator, qtyping, quantizer, recipe, recipe_manager
    from ai_edge_quantizer.utils import qsv_utils

    if precision == "fp16":
        engine = quantizer.Quantizer(str(float_path))
        engine.add_weight_only_config(
            regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, num_bits=16,
            algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING,
        )
        how = "fp16 weights (ai-edge-quantizer float casting)"
        result = engine.quantize(enable_progress_report=False)
    elif precision == "dynamic-int8":
        engine = quantizer.Quantizer(str(float_path), recipe.dynamic_wi8_afp32())
        how = "int8 weights, float activations (ai-edge-quantizer dynamic_wi8_afp32)"
        result = engine.quantize(enable_progress_report=False)
    else:
        # one recipe, for the quantizer and the calibrator alike
        bits = activation_bits(recipe_name)
        recipes = recipe_manager.RecipeManager()
        recipes.load_quantization_recipe(recipe.static_wi8_ai16() if bits == 16 else recipe.static_wi8_ai8())
        if bits == 8:  # LiteRT's and TFLM's lookups copy int8 rows: there is no int16 form to pin
            _add_int8_embedding_lookups(recipes)
        per_tensor = _quantizer_op_names(per_tensor_ops)
        for op_name in per_tensor:
            # the ops whose kernel takes one weight scale (targets/litert.py: per_channel_misuse):
            # the same static config with TENSORWISE weights, the latest config for an op winning
            recipes.add_static_config(
                regex=".*", operation_name=op_name, activation_num_bits=bits, weight_num_bits=8,
                weight_granularity=qtyping.QuantGranularity.TENSORWISE,
            )
        kept_ops = 0
        if kept is not None:
            # the kept layers' ops, by scope (their output tensors' names): float (no quantization:
            # ai-edge-quantizer puts DEQUANTIZE / QUANTIZE on their edges) or int16 activations
            # with int8 weights; the latest config for a scope wins
            wider, floats, kept_ops = kept_scopes(float_path, kept)
            if kept.wider_as == "int16" and wider:
                recipes.add_static_config(regex=wider, operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, activation_num_bits=16, weight_num_bits=8)
            for scopes in (floats, wider if kept.wider_as == "float" else ""):
                if scopes:
                    recipes.add_quantization_config(scopes, qtyping.TFLOperationName.ALL_SUPPORTED, algorithm_key=algorithm_manager.AlgorithmName.NO_QUANTIZE)
        engine = quantizer.Quantizer(str(float_path), recipes.get_quantization_recipe())
        signatures = Interpreter(model_path=str(float_path)).get_signature_list()
        key = next(iter(signatures))
        names = signatures[key]["inputs"]
        samples = [
            {name: _as_artifact(x, perm) for name, x, perm in zip(names, batch, input_perms)}
            for batch in calibration or ()
        ]
        # Quantizer.calibrate keeps an exponential moving average of per-sample ranges, which
        # clips the largest activations (the top logit of every sample on the digits CNN); the
        # absolute min/max over the set is what the TFLite converter's calibrator uses, and the
        # default recipe. The moving average, percentile and MSE ranges are the clipped-range
        # recipes, tried when min/max measures badly (targets/litert.py: _search_recipes)
        update = qsv_utils.moving_average_update if recipe_name == "moving-average" else qsv_utils.min_max_update
        ranges = calibrator.Calibrator(str(float_path), num_threads=1, qsv_update_func=update)
        with quiet():
            ranges.calibrate({key: samples}, recipes)
        qsvs = ranges.get_model_qsvs()
        estimator = {
            "moving-average": "moving average of per-sample ranges",
            "16x8": "min/max ranges, int16 activations",
        }.get(recipe_name, "min/max ranges")
        if recipe_name in ("percentile", "mse"):
            qsvs, clipped = _clip_ranges(float_path, key, samples, qsvs, recipe_name)
            estimator = (
                f"min/max ranges, {clipped} ranges clipped to the {CLIP_PERCENTILES[0]:g}-{CLIP_PERCENTILES[1]:g} percentiles"
                if recipe_name == "percentile" else f"min/max ranges, {clipped} ranges clipped for the least int8 error (MSE)"
            )
        weights = f"per-channel weights except {', '.join(str(getattr(o, 'value', o)) for o in per_tensor)} (per-tensor)" if per_tensor else "per-channel weights"
        scheme = "static_wi8_ai16" if bits == 16 else "static_wi8_ai8"
        kind = "16x8 (int16 activations, int8 weights)" if bits == 16 else "full int8"
        how = f"{kind}, {weights}, calibrated on {len(samples)} samples (ai-edge-quantizer {scheme}, {estimator})"
        if kept is not None:
            how += f"; {kept_ops} ops of {', '.join(kept.modules)} kept {'float' if kept.wider_as == 'float' else 'at int16 activations'}"
        with _embedding_lookup_on_its_table_scale():
            result = engine.quantize(qsvs, enable_progress_report=False)
    dest.write_bytes(bytes(result.quantized_model))
    return how


#: operators whose weight (input 1) is a constant named after its own module
_WEIGHTED = frozenset({"FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "CONV_3D"})


def op_module(graph: Any, op: Any) -> str | None:
    """The torch module an operator of a litert-torch .tflite belongs to: a weighted operator's,
    the module its weight's name records (its output may be named after a reshape fused behind
    it: Swin's output projection, named after the block); any other's, the first module its
    first output tensor's name records (litert-torch names a fused op by all the modules it
    joins, the op's own first)."""
    from edgex.targets.litert.runtime import tensor_modules

    if op.name in _WEIGHTED and len(op.inputs) > 1 and op.inputs[1] >= 0 and (own := tensor_modules(graph.tensor(op.inputs[1]).name)):
        return own[0]
    names = [graph.tensor(i).name for i in op.outputs if i >= 0]
    modules = tensor_modules(names[0]) if names else ()
    return modules[0] if modules else None


#: operators whose int16 kernels in TFLM take int8 constant weights only: an activation x
#: activation product (attention's q @ k, weights @ v) of a layer kept int16 stays float
_CONSTANT_WEIGHTS_AT_INT16 = frozenset({"FULLY_CONNECTED", "BATCH_MATMUL"})


def kept_scopes(float_path: Path, layers: WiderLayers) -> tuple[str, str, int]:
    """ai-edge-quantizer's scope regexes for the operators of the ``layers`` kept wider in the
    float .tflite at ``float_path``: those kept at ``layers.wider_as``, those kept float (at
    int16: the products of two activations, which TFLM's int16 kernels refuse), and how many
    operators in all. A scope is an operator's output tensor names joined by ";" with a ";" after
    (``get_op_scope``)."""
    from edgex.targets.litert.graph import read_graph

    graph = read_graph(float_path)
    wider, floats = [], []
    for op in graph.operators:
        names = [graph.tensor(i).name for i in op.outputs if i >= 0 and graph.tensor(i).name]
        if names and layers.holds(op_module(graph, op)):
            scope = "^" + re.escape(";".join(names) + ";") + "$"
            products = layers.wider_as == "int16" and op.name in _CONSTANT_WEIGHTS_AT_INT16 and not graph.tensor(op.inputs[1]).constant
            (floats if products else wider).append(scope)
    return "|".join(wider), "|".join(floats), len(wider) + len(floats)


def _quantizer_op_names(ops: Sequence[str]) -> list[object]:
    """TFLite builtin names (``BATCH_MATMUL``) as ai-edge-quantizer's ``TFLOperationName``s; names
    it has no config for are left out (the artifact is then rejected again, and the next path tried)."""
    from ai_edge_quantizer import qtyping

    renamed = {"TRANSPOSE_CONV": "CONV_2D_TRANSPOSE"}
    found = []
    for op in dict.fromkeys(ops):
        try:
            found.append(qtyping.TFLOperationName(renamed.get(op, op)))
        except ValueError:
            continue
    return found


def convert_litert_torch(
    model: ReferenceModel,
    precision: str,
    calibration: Sequence[tuple[np.ndarray, ...]] | None,
    work: Path,
    output_ranks: Sequence[int],
    recipe_name: str = "min-max",
    per_tensor_ops: Sequence[str] = (),
    export: Callable[[Path], tuple[str, list[str]]] | None = None,
    kept: WiderLayers | None = None,
) -> PathResult:
    """torch -> .tflite with litert-torch (+ ai-edge-quantizer below fp32)."""
    if model.module is None:
        raise ValueError("litert-torch converts torch modules; the reference is an ONNX file")
    import torch

    with quiet():
        import litert_torch

    input_perms = tuple(channels_last(len(spec.shape)) for spec in model.inputs)
    output_perms = tuple(channels_last(rank) for rank in output_ranks)
    module = model.module
    wrap_inputs = [i for i, perm in enumerate(input_perms) if perm is not None]
    wrap_outputs = [i for i, perm in enumerate(output_perms) if perm is not None]
    if wrap_inputs or wrap_outputs:
        module = litert_torch.to_channel_last_io(module, args=wrap_inputs, outputs=wrap_outputs)
        # a new module starts in training mode, and litert-torch converts "in training mode"
        # (its warning) unless the module it is given says eval; the wrapper's own flag only
        # (eval() would recurse into a .pt2 module, which refuses it)
        module.training = False
    args = tuple(torch.from_numpy(_as_artifact(x, perm)) for x, perm in zip(model.example_inputs, input_perms))
    float_path = work / "litert_torch.fp32.tflite"
    with quiet():
        # no .eval(): loading left the reference in eval mode, and a torch.export (.pt2) module,
        # fixed in the mode it was exported in, refuses eval()
        edge = litert_torch.convert(module, args)
        edge.export(str(float_path))
    converter = f"litert-torch {version('litert-torch')}"
    dest = work / "litert_torch.tflite"
    if precision == "fp32":
        float_path.replace(dest)
        return PathResult(str(dest), converter, (), input_perms, output_perms)
    how = _quantize_with_ai_edge_quantizer(float_path, dest, precision, calibration, input_perms, recipe_name, per_tensor_ops, kept)
    float_path.unlink(missing_ok=True)
    return PathResult(str(dest), f"{converter} + ai-edge-quantizer {version('ai-edge-quantizer')}: {how}", (), input_perms, output_perms)


# --------------------------------------------------------------------------- onnx2tf


def _write_onnx2tf_sample(work: Path, model: ReferenceModel, calibration: Sequence[tuple[np.ndarray, ...]] | None) -> None:
    """The sample images onnx2tf would otherwise download, made from the user's own data."""
    image = next((i for i, spec in enumerate(model.inputs) if len(spec.shape) == 4), None)
    if image is None:
        return
    batches = list(calibration or ()) or [tuple(model.example_inputs)]
    samples = np.concatenate([np.asarray(b[image], dtype=np.float32) for b in batches[:20]])
    np.save(work / ONNX2TF_SAMPLE_FILE, np.transpose(samples, NCHW_TO_NHWC))


def convert_onnx2tf(
    model: ReferenceModel,
    precision: str,
    calibration: Sequence[tuple[np.ndarray, ...]] | None,
    work: Path,
    output_ranks: Sequence[int],
    recipe_name: str = "tflite-converter",
    per_tensor_ops: Sequence[str] = (),
    export: Callable[[Path], tuple[str, list[str]]] | None = None,
) -> PathResult:
    """torch -> ONNX -> onnx2tf -> the TensorFlow Lite converter."""
    messages: list[str] = []
    onnx_path = work / "model.onnx"
    if model.onnx_path is not None:
        shutil.copyfile(model.onnx_path, onnx_path)
        exporter = "the reference ONNX"
    else:  # the run's shared export where there is a run (``export``), else one of its own
        from edgex.plugins import export_onnx
        exporter, export_messages = export(onnx_path) if export is not None else export_onnx(model, onnx_path, opset=ONNX2TF_OPSET)
        messages += export_messages
    _write_onnx2tf_sample(work, model, calibration)
    # onnx2tf turns every 3-D input into NWC; edgex keeps non-image inputs exactly as torch takes them
    keep = [spec.name for spec in model.inputs if len(spec.shape) != 4] or None
    with quiet():
        import onnx2tf
        import tensorflow as tf

        try:
            keras_model = onnx2tf.convert(
                input_onnx_file_path=str(onnx_path),
                output_folder_path=str(work / "onnx2tf"),
                disable_model_save=True,
                not_use_onnxsim=True,
                keep_shape_absolutely_input_names=keep,
                non_verbose=True,
                verbosity="error",
            )
        except SystemExit as exc:  # onnx2tf calls sys.exit() on some errors
            raise RuntimeError(f"onnx2tf gave up (exit status {exc.code}); see the target log") from None
        if keras_model is None:
            raise RuntimeError("onnx2tf returned no model")
        specs = [tf.TensorSpec(t.shape, t.dtype, t.name.split(":")[0]) for t in keras_model.inputs]
        concrete = tf.function(lambda *inputs: keras_model(inputs), input_signature=specs).get_concrete_function()
        # without the Keras model as trackable object: saving its config is what makes big models slow
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete])
        order = _keras_input_order([t.name.split(":")[0] for t in keras_model.inputs], model)
        input_perms = tuple(channels_last(len(spec.shape)) for spec in model.inputs)
        how = "float32"
        if precision == "fp16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
            how = "fp16 weights (TFLite converter)"
        elif precision == "dynamic-int8":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            how = "int8 weights, float activations (TFLite dynamic-range quantization)"
        elif precision == "int8":
            batches = list(calibration or ())

            def representative() -> Iterator[list[np.ndarray]]:
                for batch in batches:
                    yield [_as_artifact(batch[i], input_perms[i]) for i in order]

            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = representative
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            converter.inference_input_type = tf.int8
            converter.inference_output_type = tf.int8
            weights = "per-channel weights"
            if per_tensor_ops:
                # the TFLite converter has no per-op granularity: dense layers only where that suffices
                if set(per_tensor_ops) <= {"FULLY_CONNECTED", "BATCH_MATMUL"}:
                    converter._experimental_disable_per_channel_quantization_for_dense_layers = True
                    weights = "per-channel weights except dense layers (per-tensor)"
                else:
                    converter._experimental_disable_per_channel = True
                    weights = "per-tensor weights"
            how = f"full int8, {weights}, calibrated on {len(batches)} samples (TFLite converter)"
        flatbuffer = converter.convert()
    dest = work / "onnx2tf.tflite"
    dest.write_bytes(flatbuffer)
    description = f"{exporter} -> onnx2tf {version('onnx2tf')} -> TFLite converter (TensorFlow {version('tensorflow')}): {how}"
    return PathResult(str(dest), description, tuple(messages), input_perms, tuple(None for _ in output_ranks))


def _keras_input_order(names: Sequence[str], model: ReferenceModel) -> list[int]:
    """For each Keras input, the index of the reference input it is."""
    reference = [spec.name for spec in model.inputs]
    if sorted(names) == sorted(reference):
        return [reference.index(name) for name in names]
    return list(range(len(names)))


PATHS = {"litert-torch": convert_litert_torch, "onnx2tf": convert_onnx2tf}
#: the paths that can keep some layers of an int8 model wider: litert-torch names every tensor by
#: the torch modules it came from, which ai-edge-quantizer's per-scope recipes select
KEEPS_WIDER = ("litert-torch",)


def convert_with(
    name: str,
    model: ReferenceModel,
    precision: str,
    calibration: Sequence[tuple[np.ndarray, ...]] | None,
    work: Path,
    output_ranks: Sequence[int],
    recipe_name: str | None = None,
    per_tensor_ops: Sequence[str] = (),
    export: Callable[[Path], tuple[str, list[str]]] | None = None,
    kept: WiderLayers | None = None,
) -> PathResult:
    """Run converter path ``name`` offline, with every file it writes kept inside ``work``
    (``recipe_name``: one of ``RECIPES[name]``, full int8 only; default the path's first;
    ``per_tensor_ops``: TFLite operators to give per-tensor weights, full int8 only; ``export``:
    writes the model's ONNX at ONNX2TF_OPSET to a path, the run's shared export; ``kept``: the
    torch modules a mixed-precision int8 artifact keeps wider, and at what (``WiderLayers``),
    which only KEEPS_WIDER paths can do)."""
    with offline(), contained(work, chdir=True):  # onnx2tf writes to the current directory
        if kept is not None:
            if name not in KEEPS_WIDER:
                raise ValueError(f"{name} cannot keep layers wider (its tensor names do not record the torch modules)")
            return PATHS[name](model, precision, calibration, work, output_ranks, recipe_name or RECIPES[name][0], tuple(per_tensor_ops), export, kept)
        return PATHS[name](model, precision, calibration, work, output_ranks, recipe_name or RECIPES[name][0], tuple(per_tensor_ops), export)
