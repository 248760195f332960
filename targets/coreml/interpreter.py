"""A reference interpreter for Core ML ML Programs, so Core ML parity can be checked off a Mac.

Core ML runs only inside Apple's framework; coremltools can read a saved ``.mlpackage`` on any
platform but cannot execute it there. This module reads the package's MIL program with
coremltools' own ``milproto`` loader (the program as Core ML receives it, weights included)
and executes it op by op with the kernels of ``edgex.targets.coreml.kernels``.

Precision follows the program, not the model it came from: every value is stored in the dtype
the program declares for it. An fp16 program (Core ML's default compute precision) therefore
runs with fp16 values between ops -- each op computes in float32 from fp16 inputs and its
result is rounded to fp16 -- which is how Core ML's GPU and Neural Engine store activations.
``constexpr_*`` ops (palettized, quantized, sparse weights) are decompressed once, at load
time, as Core ML does.

An op without a kernel is an error naming the op, raised before anything runs: the interpreter
never skips or approximates what it does not know.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from edgex.plugins import EdgexError, TargetError, UsageError, one_line

ENGINE = "edgex MIL reference interpreter"


class MILError(TargetError):
    """The program cannot be validated by the interpreter (an op it lacks, a kernel failure)."""


# --------------------------------------------------------------------------- reading packages


@dataclass(frozen=True)
class FeatureSpec:
    """One input or output of a Core ML model as its spec declares it."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy name: float32, float16, float64, int32


@dataclass
class MILPackage:
    """A saved ML Program: its spec, its MIL program and its declared inputs and outputs."""

    path: Path
    spec: Any
    program: Any
    function: str
    inputs: tuple[FeatureSpec, ...]
    outputs: tuple[FeatureSpec, ...]
    coremltools_version: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


_ARRAY_DTYPES = {"FLOAT32": "float32", "FLOAT16": "float16", "DOUBLE": "float64", "INT32": "int32"}



def _features(descriptions: Sequence[Any], path: Path, error: type[EdgexError]) -> tuple[FeatureSpec, ...]:
    from coremltools.proto import FeatureTypes_pb2

    found = []
    for feature in descriptions:
        kind = feature.type.WhichOneof("Type")
        if kind != "multiArrayType":
            raise error(f"{path}: feature {feature.name!r} is of type {kind}; edgex validates tensor (multiArray) inputs and outputs only")
        array = feature.type.multiArrayType
        data_type = FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(array.dataType)
        shape = tuple(int(d) for d in array.shape)
        if array.WhichOneof("ShapeFlexibility") is not None:
            raise error(f"{path}: feature {feature.name!r} has a flexible shape; edgex validates fixed shapes only")
        found.append(FeatureSpec(feature.name, shape, _ARRAY_DTYPES.get(data_type, data_type.lower())))
    return tuple(found)


def load_package(path: Path, *, error: type[EdgexError] = UsageError) -> MILPackage:
    """Read a saved ``.mlpackage`` (or ``.mlmodel``) as an ML Program.

    Anything that is not a readable ML Program -- a missing or corrupt package, a neural-network
    model -- raises ``error`` with one line saying what is wrong.
    """
    path = Path(path)
    if not path.exists():
        raise error(f"Core ML model not found: {path}")
    if path.is_dir() and not (path / "Manifest.json").is_file():
        raise error(f"{path} is not an .mlpackage: it has no Manifest.json")
    try:
        import coremltools as ct
        from coremltools.converters.mil.frontend.milproto.load import load as load_milproto

        model = ct.models.MLModel(str(path), skip_model_load=True)
        spec = model.get_spec()
    except Exception as exc:
        raise error(f"cannot read {path} as a Core ML model: {one_line(exc)}") from exc
    kind = spec.WhichOneof("Type")
    if kind != "mlProgram":
        raise error(
            f"{path} holds a Core ML {kind or 'empty'} model, not an ML Program; edgex converts and validates "
            "ML Programs (.mlpackage, convert_to='mlprogram')"
        )
    weights_dir = getattr(model, "weights_dir", None) or ""
    try:
        program = load_milproto(spec, spec.specificationVersion, file_weights_dir=weights_dir)
    except Exception as exc:
        raise error(f"cannot read the ML Program in {path}: {one_line(exc)}") from exc
    function = spec.description.defaultFunctionName or "main"
    if function not in program.functions:
        raise error(f"{path}: the ML Program has no function {function!r}")
    return MILPackage(
        path=path,
        spec=spec,
        program=program,
        function=function,
        inputs=_features(spec.description.input, path, error),
        outputs=_features(spec.description.output, path, error),
        coremltools_version=ct.__version__,
        metadata=dict(spec.description.metadata.userDefined),
    )


# --------------------------------------------------------------------------- dtypes


def _torch_dtypes() -> dict[str, Any]:
    import torch

    return {
        "fp16": torch.float16, "fp32": torch.float32, "fp64": torch.float64,
        "int8": torch.int8, "uint8": torch.uint8, "int16": torch.int16, "uint16": torch.int32,
        "int32": torch.int32, "uint32": torch.int64, "int64": torch.int64, "bool": torch.bool,
        # sub-byte weights (palette indices, masks) arrive unpacked, one per byte
        "int4": torch.int8, "uint1": torch.uint8, "uint2": torch.uint8, "uint3": torch.uint8,
        "uint4": torch.uint8, "uint6": torch.uint8,
    }


def _builtin_name(var: Any) -> str | None:
    """The MIL dtype name of a var ("fp16", "int32", ...), or None for strings and lists."""
    from coremltools.converters.mil.mil import types

    dtype = getattr(var, "dtype", None)
    if dtype is None or dtype is types.str:
        return None
    try:
        return types.builtin_to_string(dtype)
    except Exception:
        return None


@dataclass(frozen=True)
class _Storage:
    """How the program stores one var: floats live as float32 tensors holding exactly the
    values of the declared dtype (fp16-rounded for fp16), everything else in its own dtype."""

    mil_dtype: str
    torch_dtype: Any
    half: bool

    def store(self, value: Any) -> Any:
        import torch

        if not isinstance(value, torch.Tensor):
            value = torch.as_tensor(value)
        if self.half:
            return value.to(torch.float16).to(torch.float32)
        if value.dtype == torch.bool or self.torch_dtype == torch.bool:
            return value.to(self.torch_dtype)
        if self.torch_dtype.is_floating_point:
            return value.to(torch.float32) if self.torch_dtype != torch.float64 else value.to(torch.float64)
        if value.is_floating_point():
            value = torch.trunc(value)  # numpy's astype, as coremltools' cast does
        return value.to(self.torch_dtype)


def _storage(var: Any) -> _Storage | None:
    name = _builtin_name(var)
    if name is None:
        return None
    dtypes = _torch_dtypes()
    if name not in dtypes:
        raise MILError(f"cannot validate: MIL dtype {name} (var {var.name!r}) is not implemented by the {ENGINE}")
    return _Storage(name, dtypes[name], name == "fp16")


def _constant(var: Any) -> Any:
    """A const var's value as the interpreter holds it."""
    import torch

    value = var.val
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) for v in value):
        return list(value)
    array = np.asarray(value)
    if array.dtype.kind in ("U", "S", "O"):
        return value
    storage = _storage(var)
    tensor = torch.from_numpy(np.array(array, copy=True))
    return storage.store(tensor) if storage is not None else tensor


# --------------------------------------------------------------------------- the interpreter


@dataclass(frozen=True)
class _Step:
    op: Any
    kernel: Callable[[Any], Any]
    inputs: tuple[tuple[str, Any], ...]  # (input name, var name or tuple of var names)
    outputs: tuple[str, ...]
    storages: tuple[_Storage | None, ...]
    shapes: tuple[tuple[int, ...] | None, ...]
    release: tuple[str, ...]  # values no later step needs


def _static_shape(var: Any) -> tuple[int, ...] | None:
    shape = getattr(var, "shape", None)
    if shape is None or not all(isinstance(d, (int, np.integer)) for d in shape):
        return None
    return tuple(int(d) for d in shape)


class MILInterpreter:
    """Executes one function of a MIL program on numpy inputs.

    Construction checks that every op has a kernel (raising :class:`MILError` naming the ones
    that do not) and decompresses ``constexpr_*`` weights; :meth:`run` then evaluates the ops
    in program order.
    """

    def __init__(self, program: Any, function: str = "main"):
        from edgex.targets.coreml import kernels as mil_kernels

        self._kernels = mil_kernels
        func = program.functions[function]
        self.function = func
        self.input_names = tuple(func.inputs.keys())
        self.output_names = tuple(v.name for v in func.outputs)
        self.op_counts: dict[str, int] = {}
        operations = list(func.operations)
        for op in operations:
            self.op_counts[op.op_type] = self.op_counts.get(op.op_type, 0) + 1
            if op.blocks:
                raise MILError(f"cannot validate: MIL op {op.op_type} (control flow) not implemented by the {ENGINE}")
        missing = sorted({op.op_type for op in operations if op.op_type != "const" and op.op_type not in mil_kernels.KERNELS})
        if missing:
            ops = ", ".join(missing)
            raise MILError(f"cannot validate: MIL op{'s' if len(missing) > 1 else ''} {ops} not implemented by the {ENGINE}")
        self.fp16 = any(
            _builtin_name(var) == "fp16" for op in operations if op.op_type != "const" and not op.op_type.startswith("constexpr_") for var in op.outputs
        )
        self.input_storage = {name: _storage(var) for name, var in func.inputs.items()}

        self._constants: dict[str, Any] = {}
        runtime_ops = []
        for op in operations:
            if op.op_type == "const":
                self._constants[op.outputs[0].name] = _constant(op.outputs[0])
            elif op.op_type.startswith("constexpr_"):
                # compile-time weights: decompressed now, once, from constant inputs
                step = self._step(op, ())
                for name, value in zip(step.outputs, self._execute(step, self._constants)):
                    self._constants[name] = value
            else:
                runtime_ops.append(op)
        self.decompressed = sum(1 for op in operations if op.op_type.startswith("constexpr_"))

        last_use: dict[str, int] = {}
        for index, op in enumerate(runtime_ops):
            for var in self._input_vars(op):
                last_use[var.name] = index
        keep = set(self.output_names) | set(self._constants)
        steps = []
        for index, op in enumerate(runtime_ops):
            names = {v.name for v in self._input_vars(op)}
            release = tuple(sorted(n for n in names if last_use.get(n) == index and n not in keep))
            steps.append(self._step(op, release))
        self._steps = steps

    @staticmethod
    def _input_vars(op: Any) -> list[Any]:
        found = []
        for value in op.inputs.values():
            found.extend(value if isinstance(value, (list, tuple)) else [value])
        return found

    def _step(self, op: Any, release: tuple[str, ...]) -> _Step:
        bound = []
        for name, value in op.inputs.items():
            bound.append((name, tuple(v.name for v in value) if isinstance(value, (list, tuple)) else value.name))
        return _Step(
            op=op,
            kernel=self._kernels.KERNELS[op.op_type],
            inputs=tuple(bound),
            outputs=tuple(v.name for v in op.outputs),
            storages=tuple(_storage(v) for v in op.outputs),
            shapes=tuple(_static_shape(v) for v in op.outputs),
            release=release,
        )

    def _execute(self, step: _Step, values: Mapping[str, Any]) -> list[Any]:
        args = {
            name: [values[n] for n in ref] if isinstance(ref, tuple) else values[ref]
            for name, ref in step.inputs
        }
        try:
            result = step.kernel(self._kernels.OpArgs(step.op, args))
        except self._kernels.Unsupported as exc:
            raise MILError(f"cannot validate: MIL op {step.op.op_type} with {exc} not implemented by the {ENGINE}") from exc
        except Exception as exc:
            raise MILError(f"the {ENGINE} failed on MIL op {step.op.op_type} ({step.op.name!r}): {one_line(exc)}") from exc
        results = list(result) if isinstance(result, (tuple, list)) else [result]
        if len(results) != len(step.outputs):
            raise MILError(f"{ENGINE}: kernel {step.op.op_type} gave {len(results)} outputs, the program declares {len(step.outputs)}")
        stored = []
        for value, storage, shape, name in zip(results, step.storages, step.shapes, step.outputs):
            value = storage.store(value) if storage is not None else value
            # a kernel whose result disagrees with the program's own shape inference is wrong
            if shape is not None and tuple(value.shape) != shape:
                raise MILError(
                    f"{ENGINE}: MIL op {step.op.op_type} ({step.op.name!r}) produced shape {tuple(value.shape)} "
                    f"but the program declares {shape} for {name!r}"
                )
            stored.append(value)
        return stored

    def run(self, feeds: Mapping[str, np.ndarray], *, keep_all: bool = False) -> dict[str, np.ndarray]:
        """The function's outputs (by name) for one set of inputs (by name).

        With ``keep_all`` every input and intermediate value is returned too (to find where
        two runs part ways).
        """
        import torch

        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise MILError(f"{ENGINE}: no value for input(s) {', '.join(missing)}")
        values: dict[str, Any] = dict(self._constants)
        for name in self.input_names:
            storage = self.input_storage[name]
            tensor = torch.from_numpy(np.ascontiguousarray(feeds[name]))
            values[name] = storage.store(tensor) if storage is not None else tensor
        with torch.no_grad():
            for step in self._steps:
                for name, value in zip(step.outputs, self._execute(step, values)):
                    values[name] = value
                if not keep_all:
                    for name in step.release:
                        values.pop(name, None)
        wanted = [n for n in values if n not in self._constants] if keep_all else self.output_names
        return {name: _to_numpy(values[name]) for name in wanted if not isinstance(values[name], (str, list))}

    def describe(self) -> dict[str, Any]:
        """What the interpreter executed, for the report."""
        return {
            "ops": sum(n for t, n in self.op_counts.items() if t != "const"),
            "op_types": dict(sorted(self.op_counts.items())),
            "fp16_emulated": self.fp16,
            "constexpr_decompressed": self.decompressed,
        }


def _to_numpy(value: Any) -> np.ndarray:
    import torch

    return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def program_precision(program: Any, function: str = "main") -> str:
    """The edgex precision of a program: ``dynamic-int8`` when weights are stored lossily
    compressed (quantized or palettized), else ``fp16`` when ops compute in fp16 or weights are
    stored in fp16 (``constexpr_cast``), else ``fp32``."""
    lossy = ("constexpr_affine_dequantize", "constexpr_blockwise_shift_scale", "constexpr_lut_to_dense",
             "constexpr_lut_to_sparse", "constexpr_sparse_blockwise_shift_scale")
    operations = list(program.functions[function].operations)
    if any(op.op_type in lossy for op in operations):
        return "dynamic-int8"
    computes_half = any(
        _builtin_name(var) == "fp16" for op in operations if op.op_type != "const" and not op.op_type.startswith("constexpr_") for var in op.outputs
    )
    stores_half = any(op.op_type == "constexpr_cast" for op in operations)
    return "fp16" if computes_half or stores_half else "fp32"

