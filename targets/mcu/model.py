"""What a microcontroller build needs to know about a ``.tflite`` file, and the C it gets.

The flatbuffer is read by the tflite target's reader (``edgex.targets.litert.graph``, no
TensorFlow import) and the model is held to what TFLM needs, before any interpreter is built:

- full int8: every tensor int8/int32, int8 inputs and outputs, sane scales (a float
  DEQUANTIZE/QUANTIZE island would fall back to float kernels, or not run at all). The check is
  :func:`edgex.targets.litert.convert.check_full_int8`, the one ``full_int8`` applies
  to every conversion; here it guards files handed to ``edgex validate``;
- a TFLM kernel for every operator of every subgraph (``data/tflm_ops.json``: the
  ``MicroMutableOpResolver`` method of each builtin, taken from TFLM's sources);
- no weights in "offset buffers" after the flatbuffer, which TFLM reads as zeros.

It also writes the C sources in TFLM's own convention
(``tensorflow/lite/micro/tools/generate_cc_arrays.py``) and the op-resolver header in the form of
TFLM's ``generate_micro_mutable_op_resolver_from_model.py``.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Sequence

from edgex.plugins import TargetError, UsageError

#: bytes per line of the generated C array
BYTES_PER_LINE = 12
_OPS_TABLE = Path(__file__).with_name("data") / "tflm_ops.json"
#: how a custom operator is named beside the builtins ("CUSTOM:ethos-u")
CUSTOM_PREFIX = "CUSTOM:"


@lru_cache(maxsize=1)
def ops_table() -> dict[str, dict[str, str]]:
    """{"builtin": {NAME: AddXxx}, "custom": {code: AddXxx}} from ``data/tflm_ops.json``."""
    data = json.loads(_OPS_TABLE.read_text())
    return {"builtin": dict(data["builtin"]), "custom": dict(data["custom"])}


def read(path: Path) -> Any:
    """The model's :class:`edgex.targets.litert.graph.Graph`; a file that is not one is a usage error."""
    from edgex.targets.litert.graph import read_graph

    try:
        return read_graph(Path(path))
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read {Path(path).name} as a .tflite model: {exc}") from exc
    except Exception as exc:  # a truncated or corrupt flatbuffer
        raise UsageError(f"{Path(path).name} is not a readable TFLite flatbuffer: {type(exc).__name__}: {exc}") from exc


def operator_uses(graph: Any) -> dict[str, int]:
    """Operator name -> how many nodes use it, every subgraph, in first-use order.

    Builtins by their schema name ("CONV_2D"), custom operators as "CUSTOM:<code>".
    """
    uses: dict[str, int] = {}
    for _, op in graph.all_operators:
        name = CUSTOM_PREFIX + op.name if op.custom else op.name
        uses[name] = uses.get(name, 0) + 1
    return uses


def io_names(graph: Any) -> tuple[list[str], list[str]]:
    """Tensor names of the model's inputs and outputs, in the order TFLM indexes them."""
    return [graph.tensor(i).name for i in graph.inputs], [graph.tensor(i).name for i in graph.outputs]


# --------------------------------------------------------------------------- checks


def _name_list(names: Sequence[str], limit: int = 6) -> str:
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def full_int8_problem(graph: Any) -> str | None:
    """The tflite target's full-int8 (or 16x8) verdict as one line naming the tensors, or None."""
    from edgex.targets.litert.convert import RejectedArtifact, activation_bits_of, check_full_int8, kept_layers

    try:
        # TFLM runs 16x8 models too, and a mixed-precision model's layers kept int16 or float
        check_full_int8(graph, activation_bits_of(graph), kept_layers(graph))
    except RejectedArtifact as exc:
        return str(exc)
    return None


def resolver_method(op: str) -> str | None:
    """The ``MicroMutableOpResolver`` method that registers ``op``, None where TFLM has no kernel."""
    table = ops_table()
    if op.startswith(CUSTOM_PREFIX):
        return table["custom"].get(op[len(CUSTOM_PREFIX):])
    return table["builtin"].get(op)


def missing_ops(graph: Any) -> list[str]:
    return [op for op in operator_uses(graph) if resolver_method(op) is None]


def missing_ops_problem(graph: Any) -> str | None:
    missing = missing_ops(graph)
    if not missing:
        return None
    uses = operator_uses(graph)
    listed = ", ".join(f"{op} (x{uses[op]})" for op in missing)
    return f"TensorFlow Lite Micro has no kernel for {len(missing)} operator(s) this model uses: {listed}; change those layers or register a custom kernel"


def offset_buffer_problem(graph: Any) -> str | None:
    stored = [t.name for _, t in graph.all_tensors if t.offset_buffer]
    if not stored:
        return None
    return (
        f"{len(stored)} tensor(s) keep their data in offset buffers after the flatbuffer, which TFLM reads as zeros: "
        f"{_name_list(stored)}; re-export without offset buffers"
    )


def check_for_tflm(graph: Any, *, error: type = TargetError, full_int8: bool = True) -> None:
    """Raise ``error`` with every reason TFLM cannot run the model, in one line.

    ``full_int8=False`` skips the full-int8 check for a model ``litert.full_int8`` just made
    (it checked exactly that).
    """
    checks = [missing_ops_problem(graph), offset_buffer_problem(graph)]
    if full_int8:
        checks.insert(0, full_int8_problem(graph))
    problems = [p for p in checks if p]
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


def write_op_resolver(graph: Any, folder: Path, *, arena_bytes: int | None, file_name: str = "model_ops.h", source_name: str = "model.tflite") -> Path:
    """A header with a ``MicroMutableOpResolver`` registering exactly the operators ``graph`` uses.

    Same shape as TFLM's gen_micro_mutable_op_resolver template (``kNumberOperators`` and an
    inline ``get_resolver()``), plus the measured ``kTensorArenaSize``.
    """
    methods = []
    for op in sorted(operator_uses(graph)):
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
