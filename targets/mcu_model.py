"""What a microcontroller build needs to know about a ``.tflite`` file, and the C it gets.

The flatbuffer is read with the schema module that ships inside ``tflite-micro`` (no TensorFlow
import), so these checks are cheap and say *why* a model cannot run on TFLM before any
interpreter is built:

- every tensor is int8 or int32 (a float DEQUANTIZE/QUANTIZE island would fall back to float
  kernels a microcontroller build rarely links, or not run at all);
- every operator has a TFLM kernel (``data/tflm_ops.json``: the ``MicroMutableOpResolver``
  method of each builtin, taken from TFLM's sources);
- no weights live in "offset buffers" after the flatbuffer, which TFLM reads as zeros.

It also writes the C sources in TFLM's own convention
(``tensorflow/lite/micro/tools/generate_cc_arrays.py``) and the op-resolver header in the form of
TFLM's ``generate_micro_mutable_op_resolver_from_model.py``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

from edgex.core.errors import TargetError, UsageError

#: tensor types a full-int8 TFLM model may hold (int32 for biases, shapes, indices)
INTEGER_TYPES = ("INT8", "INT32")
#: bytes per line of the generated C array
BYTES_PER_LINE = 12
_OPS_TABLE = Path(__file__).with_name("data") / "tflm_ops.json"


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # the schema's TensorType name: "INT8", "FLOAT32", ...
    shape: tuple[int, ...]
    subgraph: int
    in_offset_buffer: bool


@dataclass(frozen=True)
class ModelInfo:
    """The parts of a ``.tflite`` flatbuffer the microcontroller checks look at."""

    size: int
    sha256: str
    #: operator names in first-use order: builtin names ("CONV_2D") or "CUSTOM:<code>"
    operators: tuple[str, ...]
    #: how many operator nodes use each operator
    uses: dict[str, int]
    tensors: tuple[TensorInfo, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    subgraphs: int


@lru_cache(maxsize=1)
def _schema():
    from tflite_micro.tensorflow.lite.micro.python import schema_py_generated

    return schema_py_generated


@lru_cache(maxsize=1)
def ops_table() -> dict[str, dict[str, str]]:
    """{"builtin": {NAME: AddXxx}, "custom": {code: AddXxx}} from ``data/tflm_ops.json``."""
    data = json.loads(_OPS_TABLE.read_text())
    return {"builtin": dict(data["builtin"]), "custom": dict(data["custom"])}


def _enum_names(enum_class: type) -> dict[int, str]:
    return {value: name for name, value in vars(enum_class).items() if not name.startswith("_") and isinstance(value, int)}


def read_model(data: bytes, source: str = "the model") -> ModelInfo:
    """Parse a ``.tflite`` flatbuffer; a file that is not one is a usage error."""
    fb = _schema()
    if len(data) < 8 or data[4:8] != b"TFL3":
        raise UsageError(f"{source} is not a TFLite flatbuffer (no 'TFL3' identifier)")
    try:
        model = fb.Model.GetRootAsModel(data, 0)
        builtin_names = _enum_names(fb.BuiltinOperator)
        type_names = _enum_names(fb.TensorType)
        codes = []
        for i in range(model.OperatorCodesLength()):
            code = model.OperatorCodes(i)
            builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
            if builtin == fb.BuiltinOperator.CUSTOM:
                custom = code.CustomCode()
                codes.append("CUSTOM:" + (custom.decode() if custom else "?"))
            else:
                codes.append(builtin_names.get(builtin, f"BUILTIN_{builtin}"))
        external = set()
        for i in range(model.BuffersLength()):
            if model.Buffers(i).Offset() > 1:  # schema: offset > 1 means the data lives after the flatbuffer
                external.add(i)
        uses: dict[str, int] = {}
        order: list[str] = []
        tensors: list[TensorInfo] = []
        inputs: list[str] = []
        outputs: list[str] = []
        for s in range(model.SubgraphsLength()):
            graph = model.Subgraphs(s)
            names = []
            for t in range(graph.TensorsLength()):
                tensor = graph.Tensors(t)
                name = (tensor.Name() or b"").decode(errors="replace")
                names.append(name)
                shape = tuple(int(d) for d in tensor.ShapeAsNumpy()) if tensor.ShapeLength() else ()
                tensors.append(TensorInfo(name, type_names.get(tensor.Type(), str(tensor.Type())), shape, s, tensor.Buffer() in external))
            for o in range(graph.OperatorsLength()):
                op_name = codes[graph.Operators(o).OpcodeIndex()]
                if op_name not in uses:
                    order.append(op_name)
                uses[op_name] = uses.get(op_name, 0) + 1
            if s == 0:
                inputs = [names[i] for i in graph.InputsAsNumpy()] if graph.InputsLength() else []
                outputs = [names[i] for i in graph.OutputsAsNumpy()] if graph.OutputsLength() else []
        return ModelInfo(
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            operators=tuple(order),
            uses=uses,
            tensors=tuple(tensors),
            input_names=tuple(inputs),
            output_names=tuple(outputs),
            subgraphs=model.SubgraphsLength(),
        )
    except UsageError:
        raise
    except Exception as exc:  # a truncated or corrupt flatbuffer
        raise UsageError(f"{source} is not a readable TFLite flatbuffer: {type(exc).__name__}: {exc}") from exc


# --------------------------------------------------------------------------- checks


def _name_list(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def non_integer_tensors(model: ModelInfo) -> list[TensorInfo]:
    """Tensors that are neither int8 nor int32: float islands, int16 activations, ..."""
    return [t for t in model.tensors if t.dtype not in INTEGER_TYPES]


def integer_only_problem(model: ModelInfo) -> str | None:
    """One line naming the tensors that keep a model from being full-int8, or None."""
    bad = non_integer_tensors(model)
    if not bad:
        return None
    islands = [op for op in ("DEQUANTIZE", "QUANTIZE") if op in model.uses]
    kinds = sorted({t.dtype for t in bad})
    where = f" (the converter left {'/'.join(islands)} islands)" if islands else ""
    return (
        f"not a full-int8 model: {len(bad)} tensor(s) are {'/'.join(kinds)}, not int8/int32{where}: "
        f"{_name_list([f'{t.name} [{t.dtype}]' for t in bad])}"
    )


def resolver_method(op: str) -> str | None:
    """The ``MicroMutableOpResolver`` method that registers ``op``, None where TFLM has no kernel."""
    table = ops_table()
    if op.startswith("CUSTOM:"):
        return table["custom"].get(op[len("CUSTOM:"):])
    return table["builtin"].get(op)


def missing_ops(model: ModelInfo) -> list[str]:
    return [op for op in model.operators if resolver_method(op) is None]


def missing_ops_problem(model: ModelInfo) -> str | None:
    missing = missing_ops(model)
    if not missing:
        return None
    listed = ", ".join(f"{op} (x{model.uses[op]})" for op in missing)
    return f"TensorFlow Lite Micro has no kernel for {len(missing)} operator(s) this model uses: {listed}; change those layers or register a custom kernel"


def offset_buffer_problem(model: ModelInfo) -> str | None:
    stored = [t.name for t in model.tensors if t.in_offset_buffer]
    if not stored:
        return None
    return (
        f"{len(stored)} tensor(s) keep their data in offset buffers after the flatbuffer, which TFLM reads as zeros: "
        f"{_name_list(stored)}; re-export without offset buffers"
    )


def check_for_tflm(model: ModelInfo, *, error: type = TargetError) -> None:
    """Raise ``error`` with every reason TFLM cannot run ``model`` (one line)."""
    problems = [p for p in (integer_only_problem(model), missing_ops_problem(model), offset_buffer_problem(model)) if p]
    if problems:
        raise error("; ".join(problems))


# --------------------------------------------------------------------------- C sources

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_identifier(name: str, what: str = "--array-name") -> str:
    if not _IDENTIFIER.match(name or ""):
        raise UsageError(f"{what} {name!r} is not a C identifier (letters, digits, underscores; not starting with a digit)")
    return name


def _guard(file_name: str) -> str:
    return "EDGEX_" + re.sub(r"[^A-Za-z0-9]", "_", file_name).upper() + "_"


def write_model_data(data: bytes, folder: Path, *, array_name: str = "g_model", stem: str = "model_data", source_name: str = "model.tflite") -> tuple[Path, Path]:
    """``<stem>.cc`` / ``<stem>.h`` holding ``data`` as TFLM's generate_cc_arrays.py writes them.

    The array is ``alignas(16) const unsigned char <array_name>[]`` (TFLM reads the flatbuffer
    in place, and its tensors' data need 16-byte alignment); the header declares it ``extern``
    with the length constant ``<array_name>_size``.
    """
    check_identifier(array_name)
    digest = hashlib.sha256(data).hexdigest()
    header_name = f"{stem}.h"
    banner = f"// Generated by edgex from {source_name} ({len(data)} bytes, sha256 {digest}).\n"
    header = (
        banner
        + "// TensorFlow Lite Micro reads the model in place from this array (MicroInterpreter::Create / GetModel).\n"
        + f"#ifndef {_guard(header_name)}\n#define {_guard(header_name)}\n\n"
        + "#include <cstdint>\n\n"
        + f"constexpr unsigned int {array_name}_size = {len(data)};\n"
        + f"extern const unsigned char {array_name}[];\n\n"
        + f"#endif  // {_guard(header_name)}\n"
    )
    hexes = [f"0x{b:02x}" for b in data]
    lines = [", ".join(hexes[i : i + BYTES_PER_LINE]) for i in range(0, len(hexes), BYTES_PER_LINE)]
    source = (
        banner
        + "#include <cstdint>\n\n"
        + f'#include "{header_name}"\n\n'
        + f"alignas(16) const unsigned char {array_name}[] = {{\n    "
        + ",\n    ".join(lines)
        + "\n};\n"
    )
    cc_path, h_path = folder / f"{stem}.cc", folder / header_name
    cc_path.write_text(source)
    h_path.write_text(header)
    return cc_path, h_path


def write_op_resolver(model: ModelInfo, folder: Path, *, arena_bytes: int | None, file_name: str = "model_ops.h", source_name: str = "model.tflite") -> Path:
    """A header with a ``MicroMutableOpResolver`` registering exactly the operators ``model`` uses.

    Same shape as TFLM's gen_micro_mutable_op_resolver template (``kNumberOperators`` and an
    inline ``get_resolver()``), plus the measured ``kTensorArenaSize``.
    """
    methods = []
    for op in sorted(model.operators):
        method = resolver_method(op)
        if method is None:
            raise TargetError(f"TensorFlow Lite Micro has no kernel for {op}")
        methods.append((op, method))
    lines = [
        f"// Generated by edgex from {source_name}: exactly the operators the model uses, nothing more",
        "// (registering only these keeps unused kernels out of the firmware).",
        f"#ifndef {_guard(file_name)}",
        f"#define {_guard(file_name)}",
        "",
        "#include <cstddef>",
        "",
        '#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"',
        "",
    ]
    if arena_bytes is not None:
        lines += [
            "// Smallest tensor arena TFLM's own interpreter (reference kernels) allocated this model in,",
            "// measured by edgex on a 64-bit host: 32-bit targets need less for TFLM's bookkeeping, and",
            "// optimized kernels (CMSIS-NN) may ask for extra scratch. Declare it alignas(16).",
            f"constexpr size_t kTensorArenaSize = {(arena_bytes + 15) // 16 * 16};",
            "",
        ]
    lines += [
        f"constexpr int kNumberOperators = {len(methods)};",
        "",
        "inline tflite::MicroMutableOpResolver<kNumberOperators> get_resolver() {",
        "  tflite::MicroMutableOpResolver<kNumberOperators> micro_op_resolver;",
        *[f"  micro_op_resolver.{method}();  // {op}" for op, method in methods],
        "  return micro_op_resolver;",
        "}",
        "",
        f"#endif  // {_guard(file_name)}",
        "",
    ]
    path = folder / file_name
    path.write_text("\n".join(lines))
    return path
