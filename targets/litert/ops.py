"""``edgex check`` for the three TFLite targets: which TFLite builtins a torch model's operators
become, and what LiteRT, TensorFlow Lite Micro and the Edge TPU make of them.

:data:`ATEN_TO_TFLITE` is what litert-torch 0.10 emits for each ATen operator of a
``torch.export`` graph (checked against the ``.tflite`` files it writes for edgex's test models;
an operator folded into its neighbour, such as an eval-mode batch norm, becomes nothing). The
runtimes' sides are data kept elsewhere and used by the conversions too: TFLM's kernel list
(``data/tflm_ops.json``) and the Edge TPU's op table (``data/edgetpu_ops.json``). The limits of
the full-int8 quantizers are written here, each with the error the conversion gives.
"""

from __future__ import annotations

from typing import Mapping, Sequence

from edgex.plugins import ModelOperators, OperatorCheck, OperatorFinding, OperatorUse, package_version

#: ATen operator (torch.export, overload dropped) -> the TFLite builtins it may become
ATEN_TO_TFLITE: dict[str, tuple[str, ...]] = {
    # convolutions, matmuls, pooling
    "aten.conv1d": ("CONV_2D", "DEPTHWISE_CONV_2D", "RESHAPE"),
    "aten.conv2d": ("CONV_2D", "DEPTHWISE_CONV_2D"),
    "aten.conv_transpose2d": ("TRANSPOSE_CONV",),
    "aten.linear": ("FULLY_CONNECTED",),
    "aten.matmul": ("BATCH_MATMUL", "FULLY_CONNECTED"),
    "aten.bmm": ("BATCH_MATMUL",),
    "aten.mm": ("FULLY_CONNECTED", "BATCH_MATMUL"),
    "aten.max_pool2d": ("MAX_POOL_2D",),
    "aten.avg_pool2d": ("AVERAGE_POOL_2D",),
    "aten.adaptive_avg_pool2d": ("MEAN",),
    "aten.mean": ("MEAN",),
    "aten.sum": ("SUM",),
    "aten.amax": ("REDUCE_MAX",),
    "aten.batch_norm": (),  # folded into the convolution before it (eval mode)
    "aten.layer_norm": ("MEAN", "SQUARED_DIFFERENCE", "ADD", "RSQRT", "MUL", "SUB"),
    "aten.scaled_dot_product_attention": ("BATCH_MATMUL", "MUL", "SOFTMAX", "TRANSPOSE"),
    "aten.embedding": ("RESHAPE", "EMBEDDING_LOOKUP"),
    "aten.lstm": ("FULLY_CONNECTED", "LOGISTIC", "TANH", "MUL", "ADD", "SPLIT", "CONCATENATION", "RESHAPE"),
    # activations
    "aten.relu": ("RELU",),
    "aten.relu6": ("RELU6",),
    "aten.hardtanh": ("RELU6", "MINIMUM", "MAXIMUM"),
    "aten.clamp": ("MINIMUM", "MAXIMUM"),
    "aten.leaky_relu": ("LEAKY_RELU",),
    "aten.prelu": ("PRELU",),
    "aten.elu": ("ELU",),
    "aten.sigmoid": ("LOGISTIC",),
    "aten.tanh": ("TANH",),
    "aten.silu": ("LOGISTIC", "MUL"),
    "aten.gelu": ("GELU",),
    "aten.hardswish": ("HARD_SWISH",),
    "aten.softmax": ("SOFTMAX",),
    "aten._softmax": ("SOFTMAX",),
    "aten.log_softmax": ("LOG_SOFTMAX",),
    # arithmetic
    "aten.add": ("ADD",),
    "aten.sub": ("SUB",),
    "aten.rsub": ("SUB",),
    "aten.mul": ("MUL",),
    "aten.div": ("DIV", "MUL"),
    "aten.neg": ("NEG",),
    "aten.abs": ("ABS",),
    "aten.exp": ("EXP",),
    "aten.sqrt": ("SQRT",),
    "aten.rsqrt": ("RSQRT",),
    "aten.maximum": ("MAXIMUM",),
    "aten.minimum": ("MINIMUM",),
    # shapes and data movement
    "aten.view": ("RESHAPE",),
    "aten.reshape": ("RESHAPE",),
    "aten.flatten": ("RESHAPE",),
    "aten.unflatten": ("RESHAPE",),
    "aten.squeeze": ("RESHAPE",),
    "aten.unsqueeze": ("RESHAPE",),
    "aten.contiguous": (),
    "aten.clone": (),
    "aten.dropout": (),
    "aten.detach": (),
    "aten.alias": (),
    "aten.zeros": (),  # constants, folded
    "aten.ones": (),
    "aten.full": (),
    "aten.arange": (),
    "aten.transpose": ("TRANSPOSE",),
    "aten.permute": ("TRANSPOSE",),
    "aten.t": ("TRANSPOSE",),
    "aten.select": ("STRIDED_SLICE", "RESHAPE"),
    "aten.slice": ("STRIDED_SLICE",),
    "aten.split": ("SPLIT", "SPLIT_V"),
    "aten.split_with_sizes": ("SPLIT_V",),
    "aten.chunk": ("SPLIT",),
    "aten.cat": ("CONCATENATION",),
    "aten.stack": ("CONCATENATION", "RESHAPE"),
    "aten.expand": ("BROADCAST_TO",),
    "aten.pad": ("PAD",),
    "aten.constant_pad_nd": ("PAD",),
    "aten.upsample_nearest2d": ("RESIZE_NEAREST_NEIGHBOR",),
    "aten.upsample_bilinear2d": ("RESIZE_BILINEAR",),
}

#: TFLM's concatenation kernel takes at most this many inputs (kMaxInputNum in concatenation.cc)
TFLM_MAX_CONCAT_INPUTS = 10

#: the gap (``edgex.core.rewrites.GAPS``) whose rewrite removes an operator, for the fix's wording
_GAP_OF = {"aten.gelu": "gelu", "aten.hardswish": "hardswish", "aten.hardsigmoid": "hardswish", "aten.lstm": "lstm"}


def _builtins(op: OperatorUse) -> tuple[str, ...]:
    return ATEN_TO_TFLITE.get(op.name, ())


def _lstm_steps(op: OperatorUse) -> int:
    """The longest sequence an aten.lstm use runs over: its input is (batch, seq, features) when
    batch_first (its last flag), else (seq, batch, features)."""
    steps = 0
    for shapes, scalars in zip(op.shapes, op.scalars or [()] * len(op.shapes)):
        if not shapes or len(shapes[0]) != 3:
            continue
        batch_first = bool(scalars[-1]) if scalars else False
        steps = max(steps, shapes[0][1] if batch_first else shapes[0][0])
    return steps


def _fix(gap: str | None, lacks: Sequence[str]) -> str:
    """The rewrite that removes it, when this target has one: left in the model, it was either
    not asked for (--rewrite none) or its proof failed (the prediction lists why)."""
    if gap and gap in lacks:
        return f"--rewrite auto replaces it (gap {gap!r}, docs/rewrites.md) once its proof passes"
    return ""


def _missing(operators: ModelOperators, table: Mapping[str, object], reason: str, blocks: bool, lacks: Sequence[str]) -> list[OperatorFinding]:
    """A finding per operator that becomes a builtin ``table`` lacks (``reason`` names them)."""
    findings = []
    for op in operators.operators:
        missing = [b for b in _builtins(op) if b not in table]
        if missing:
            findings.append(OperatorFinding(op.name, reason.format(", ".join(missing)), blocks=blocks, fix=_fix(_GAP_OF.get(op.name), lacks), modules=op.modules))
    return findings


def check_tflite(
    operators: ModelOperators,
    precision: str,
    runtime: str,
    lacks: Sequence[str] = (),
) -> OperatorCheck:
    """What ``runtime`` ("litert", "tflm" or "edgetpu") makes of the model at ``precision``."""
    converter = f"litert-torch {package_version('litert-torch') or '?'}"
    sources = [f"edgex's ATen -> TFLite table for {converter}"]
    if operators.kind != "torch":
        # onnx2tf converts ONNX references; its operator coverage is not tabulated here
        return OperatorCheck(source="none for ONNX references", unknown=tuple(op.name for op in operators.operators))
    from edgex.plugins import aten_reach

    findings: list[OperatorFinding] = []
    unknown = []
    for op in operators.operators:
        if op.name in ATEN_TO_TFLITE:
            continue
        if aten_reach(op.name) == "outside":
            # litert-torch lowers core ATen (onnx2tf, the other path, starts from the same export)
            findings.append(OperatorFinding(
                op.name, "outside core ATen with no decomposition: litert-torch has no lowering for it, and its ONNX export fails too",
                fix="write it from core ATen operators in the model", modules=op.modules,
            ))
        else:
            unknown.append(op.name)
    for spec in operators.inputs if precision == "int8" else ():  # float models take int64 ids as they are
        if spec.dtype == "int64":
            findings.append(OperatorFinding(
                f"input {spec.name}", "int64 input: every full-int8 TFLite path takes int32 (LiteRT: \"Got value of type INT64 but expected type INT32\")",
                fix=_fix("int64-inputs", lacks) or "feed int32 ids",
            ))
    # at full int8 aten.embedding is an EMBEDDING_LOOKUP of an int8 table, its output on the table's scale
    # (targets/tflite_converters.py: _with_int8_embedding_lookups), its int32 ids the one non-int8 input
    if runtime == "tflm":
        from edgex.targets.mcu.model import ops_table

        sources.append("TFLM's kernel list (data/tflm_ops.json)")
        findings += _missing(operators, ops_table()["builtin"], "TensorFlow Lite Micro has no kernel for {}", True, lacks)
        for op in operators.operators:
            if op.name == "aten.lstm" and _lstm_steps(op) > TFLM_MAX_CONCAT_INPUTS:
                findings.append(OperatorFinding(
                    op.name,
                    f"the converter unrolls it over {_lstm_steps(op)} steps and concatenates them in one CONCATENATION; "
                    f"TFLM's takes at most {TFLM_MAX_CONCAT_INPUTS} inputs",
                    fix=_fix(_GAP_OF.get(op.name), lacks) or "shorten the sequence to at most 10 steps, or run it in chunks",
                    modules=op.modules,
                ))
    if runtime == "edgetpu":
        from edgex.targets.litert.edgetpu import op_table

        sources.append("the Edge TPU op table (data/edgetpu_ops.json, compiler 16)")
        reason = "the Edge TPU has no {}: the compiler maps ops up to the first it cannot map, the rest run on the CPU"
        findings += _missing(operators, op_table()["ops"], reason, False, lacks)
    notes = ("full int8: the converter path and calibration recipe are chosen by measured SQNR while converting (docs/int8_recipes.md)",) if precision == "int8" else ()
    return OperatorCheck(tuple(findings), "; ".join(sources), tuple(unknown), notes)

