"""MODEL specs -> a :class:`ReferenceModel`, safe by default.

Forms (docs/contract.md): ``file.py:factory``, ``package.module:factory``, ``model.pt2`` (torch.export),
``model.ts``/``model.pt`` (TorchScript), ``model.onnx`` and ``examples:NAME``. A pickled whole
``nn.Module`` is unpickled only with ``trust_pickle=True``; state dicts load with
``weights_only=True``. Every failure is a :class:`ModelLoadError` with one line saying what is
wrong and what to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import logging
import sys
import zipfile
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from edgex.core.errors import EdgexError, ModelLoadError, UsageError, one_line
from edgex.core.types import ReferenceModel, TensorSpec

TORCHSCRIPT_SUFFIXES = (".ts", ".pt", ".pth", ".jit")



def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes (a folder's files, in path order): a model's and the result cache's."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def module_sha256(module: Any, spec: str) -> str:
    digest = hashlib.sha256(spec.encode())
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _require_file(path: Path) -> None:
    if not path.exists():
        raise ModelLoadError(f"model file not found: {path}")
    if path.is_dir() and path.suffix != ".mlpackage":
        raise ModelLoadError(f"{path} is a directory, not a model file")


def _looks_like_text(path: Path) -> bool:
    head = path.read_bytes()[:512]
    if not head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in head


# --------------------------------------------------------------------------- the model's own code


class _ModelExit(BaseException):
    """``os._exit`` called by the model's code: caught like ``sys.exit`` instead of ending edgex."""

    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


#: what the model's code printed while loading, gathered by :func:`user_code`
_PRINTED: list[str] = []


@contextlib.contextmanager
def user_code(doing: str) -> Iterator[None]:
    """Run the model's own code (importing its file, calling its factory, its first forward).

    - ``sys.exit`` / ``os._exit`` (Python-level, in this process) become a :class:`ModelLoadError`
      naming the call and where it came from, never a dead edgex or a silent exit 0; an
      ``argparse`` parse at import is named as such (a training script without a
      ``__main__`` guard);
    - whatever it prints (to stdout or stderr, Python or native) is gathered instead of
      reaching the terminal, and kept in :attr:`ReferenceModel.printed`.
    """
    import os
    import tempfile

    real_exit, here = os._exit, os.getpid()

    def model_exit(code: int) -> None:  # a process the model's code forked exits for real
        if os.getpid() != here:
            real_exit(code)
        raise _ModelExit(code)

    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        os._exit = model_exit
        try:
            yield
        except (SystemExit, _ModelExit) as exc:
            call = "os._exit" if isinstance(exc, _ModelExit) else "sys.exit"
            raise ModelLoadError(_exit_message(call, exc.code, doing, exc.__traceback__)) from None
        finally:
            os._exit = real_exit
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
            if text.strip():
                _PRINTED.append(text)


def _exit_message(call: str, code: Any, doing: str, tb: Any) -> str:
    import traceback

    frames = traceback.extract_tb(tb)
    if any(f.filename.endswith(("argparse.py", "optparse.py")) for f in frames):
        return (f"the model's code parses the command line while {doing} (argparse exits on edgex's arguments); "
                "guard the script's argument parsing and training with `if __name__ == \"__main__\":`")
    own = [f for f in frames if f.filename != __file__ and not f.filename.startswith("<")]
    where = f" at {own[-1].filename}:{own[-1].lineno}" if own else ""
    return (f"the model's code called {call}({code!r}){where} while {doing}; a model file must not exit: "
            "guard script code with `if __name__ == \"__main__\":` and return the model from the factory")


# --------------------------------------------------------------------------- the torch forms


def _call_factory(factory: Any, where: str) -> tuple[Any, Any]:
    import torch

    if not callable(factory):
        raise ModelLoadError(f"{where} is not callable; point MODEL at a function returning an nn.Module")
    try:
        with user_code(f"calling {where}"):
            made = factory()
    except EdgexError:  # said already (the model exited, a time limit ran out)
        raise
    except Exception as exc:
        raise ModelLoadError(f"factory {where} raised {one_line(exc)}") from exc
    example = None
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], torch.nn.Module):
        made, example = made
    if not isinstance(made, torch.nn.Module):
        raise ModelLoadError(
            f"factory {where} returned {type(made).__name__}, not a torch.nn.Module "
            "(return a module, or a (module, example_inputs) tuple)"
        )
    return made, example


def _load_factory_file(path_text: str, func: str) -> tuple[Any, Any, str]:
    path = Path(path_text)
    _require_file(path)
    name = "edgex_user_model_" + hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:12]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import {path} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(path.parent.resolve()))  # so the file can import its siblings
    try:
        with user_code(f"importing {path}"):
            spec.loader.exec_module(module)
    except EdgexError:  # said already (the model exited, a time limit ran out)
        del sys.modules[name]
        raise
    except Exception as exc:
        del sys.modules[name]
        raise ModelLoadError(f"importing {path} raised {one_line(exc)}") from exc
    finally:
        sys.path.remove(str(path.parent.resolve()))
    if not hasattr(module, func):
        raise ModelLoadError(f"{path} defines no {func!r}; name a function in it after the colon")
    made, example = _call_factory(getattr(module, func), f"{path}:{func}")
    return made, example, file_sha256(path)


def _load_factory_module(module_name: str, func: str) -> tuple[Any, Any]:
    try:
        with user_code(f"importing {module_name}"):
            module = importlib.import_module(module_name)
    except EdgexError:  # said already (the model exited, a time limit ran out)
        raise
    except ModuleNotFoundError as exc:
        raise ModelLoadError(f"cannot import module {module_name!r}: {one_line(exc)} (a file path needs the .py suffix)") from exc
    except Exception as exc:
        raise ModelLoadError(f"importing {module_name} raised {one_line(exc)}") from exc
    if not hasattr(module, func):
        raise ModelLoadError(f"module {module_name} defines no {func!r}")
    return _call_factory(getattr(module, func), f"{module_name}:{func}")


def _load_exported_program(path: Path) -> tuple[Any, Any]:
    import torch

    # torch logs its own traceback of a failed load; edgex's error says it in one line, and
    # --debug prints torch's exception as that error's cause
    quiet = logging.getLogger("torch.export")
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        program = torch.export.load(str(path))
    except Exception as exc:
        hint = " (it looks like a text file)" if _looks_like_text(path) else ""
        raise ModelLoadError(f"cannot read {path} as a torch.export program{hint}: {one_line(exc)}") from exc
    finally:
        quiet.setLevel(level)
    example = None
    if program.example_inputs is not None:
        args, kwargs = program.example_inputs
        example = tuple(args) if not kwargs else None
    return program.module(), example


def _is_torchscript_archive(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("constants.pkl") or "/code/" in n for n in names)


def _load_torch_file(path: Path, trust_pickle: bool) -> tuple[Any, Any]:
    import torch

    if _looks_like_text(path):
        raise ModelLoadError(f"{path} is a text file, not a PyTorch model (expected TorchScript, torch.export or a torch.save file)")
    if _is_torchscript_archive(path):
        try:
            return torch.jit.load(str(path), map_location="cpu"), None
        except Exception as exc:
            raise ModelLoadError(f"cannot read {path} as TorchScript: {one_line(exc)}") from exc
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        if not trust_pickle:
            if "weights_only" in str(exc) or "Unsupported global" in str(exc):
                raise ModelLoadError(
                    f"{path} holds a pickled Python object (a whole nn.Module?); unpickling runs code from "
                    "the file: pass --trust-pickle if you trust its source, or save the model with "
                    "torch.export.save / torch.jit.save"
                ) from exc
            raise ModelLoadError(f"cannot read {path} as a PyTorch file (corrupt or not a model): {one_line(exc)}") from exc
        try:
            loaded = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as exc2:
            raise ModelLoadError(f"cannot read {path} as a PyTorch file: {one_line(exc2)}") from exc2
    if isinstance(loaded, torch.nn.Module):
        return loaded, None
    if isinstance(loaded, dict):
        raise ModelLoadError(
            f"{path} holds a state dict, not a model; give the architecture as MODEL "
            f"(file.py:factory) and this file as --weights {path}"
        )
    raise ModelLoadError(f"{path} holds a {type(loaded).__name__}, not a torch model")


def load_state_dict_into(module: Any, weights: Path) -> None:
    """Load a state dict file into ``module`` (``weights_only=True``, strict)."""
    import torch

    _require_file(weights)
    try:
        state = torch.load(str(weights), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot read weights {weights} (safe loading, weights_only=True): {one_line(exc)}") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{weights} holds a {type(state).__name__}, not a state dict")
    try:
        module.load_state_dict(state, strict=True)
    except Exception as exc:
        raise ModelLoadError(f"weights {weights} do not fit the model: {one_line(exc)}") from exc


# --------------------------------------------------------------------------- inputs and outputs


def _input_names(module: Any, count: int) -> list[str]:
    """Input names from ``forward``'s signature (or the graph's placeholders)."""
    import torch

    names: list[str] = []
    if isinstance(module, torch.fx.GraphModule):
        names = [n.name for n in module.graph.nodes if n.op == "placeholder"]
    elif isinstance(module, torch.jit.ScriptModule):
        try:
            graph_inputs = list(module.forward.graph.inputs())[1:]  # the first is `self`
            names = [value.debugName().split(".")[0] for value in graph_inputs]
        except (AttributeError, RuntimeError):
            names = []
    if not names:
        try:
            params = inspect.signature(module.forward).parameters.values()
            names = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        except (TypeError, ValueError):
            names = []
    names = names[:count]
    while len(names) < count:
        names.append(f"input_{len(names)}")
    return names


def flatten_outputs(outputs: Any) -> tuple[list[str], list[Any]]:
    """A model's outputs (tensor, tuple, list, dict, nesting) as names and tensors, in order."""
    import torch

    names: list[str] = []
    tensors: list[Any] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, torch.Tensor):
            names.append(path)
            tensors.append(value)
        elif isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}_{key}" if path != "output" or len(value) == 1 else str(key))
        elif isinstance(value, (tuple, list)):
            for i, item in enumerate(value):
                walk(item, f"{path}_{i}")

    walk(outputs, "output")
    return names, tensors


def parse_shape(text: str) -> tuple[int, ...]:
    """``--input-shape``: comma-separated positive integers, nothing else (no ``x``, no empty part)."""
    parts = [part.strip() for part in text.split(",")]
    for part in parts:
        if not part.isdigit() or int(part) <= 0:
            raise UsageError(f"--input-shape {text!r}: {part!r} is not a positive integer; give comma-separated positive integers like 1,3,224,224")
    return tuple(int(part) for part in parts)


def load_arrays(path: Path, what: str) -> list[tuple[str, np.ndarray]]:
    """Named arrays from an .npy or .npz file (never unpickled)."""
    if not path.exists():
        raise UsageError(f"{what} file not found: {path}")
    try:
        data = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UsageError(f"cannot read {what} {path} as .npy/.npz: {one_line(exc)}") from exc
    if isinstance(data, np.ndarray):
        return [(path.stem, data)]
    with data:
        return [(key, data[key]) for key in data.files]


def _example_from_file(path: Path, names: Sequence[str] | None) -> list[np.ndarray]:
    arrays = load_arrays(path, "--example-inputs")
    if names and all(key in names for key, _ in arrays) and len(arrays) > 1:
        lookup = dict(arrays)
        return [lookup[n] for n in names if n in lookup]
    return [array for _, array in arrays]


def _as_numpy_inputs(example: Any) -> list[np.ndarray]:
    import torch

    if isinstance(example, (torch.Tensor, np.ndarray)):
        example = (example,)
    arrays = []
    for item in example:
        if isinstance(item, torch.Tensor):
            arrays.append(item.detach().cpu().numpy())
        elif isinstance(item, np.ndarray):
            arrays.append(item)
        else:
            raise ModelLoadError(f"example inputs must be tensors or arrays, got {type(item).__name__}")
    return arrays


#: elements drawn at a time by :func:`synthetic_input` (8 MiB of float64)
DRAW_CHUNK = 1 << 20


def synthetic_input(spec: TensorSpec, rng: np.random.Generator) -> np.ndarray:
    """A seeded sample for one input: standard normal for floats, small integers otherwise.

    Drawn in chunks straight into the result: the generator fills values in order, so the
    numbers (and the generator's state after) are those of one whole float64 / int64 draw cast
    to ``spec.dtype``, without that draw ever existing whole (8 bytes an element, next to the
    result). A tensor that cannot fit in memory is refused first (exit 2), not half-allocated."""
    from edgex.core import resources

    resources.check_fits(spec)
    dtype = np.dtype(spec.dtype)
    floating = np.issubdtype(dtype, np.floating)
    result = np.empty(spec.shape, dtype)
    flat = result.reshape(-1)
    for start in range(0, flat.size, DRAW_CHUNK):
        stop = min(start + DRAW_CHUNK, flat.size)
        flat[start:stop] = rng.standard_normal(stop - start) if floating else rng.integers(0, 8, size=stop - start)
    return result


def _probe(module: Any, arrays: Sequence[np.ndarray]) -> list[str]:
    """Run the model once for its output names; its own complaint about the input becomes the error."""
    import torch

    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]
    shapes = ", ".join(str(tuple(a.shape)) for a in arrays)
    try:
        with torch.no_grad(), user_code("running the model's forward once"):
            outputs = module(*tensors)
    except EdgexError:  # said already (the model exited, a time limit ran out)
        raise
    except Exception as exc:
        raise ModelLoadError(f"the model rejected input shape {shapes}: {one_line(exc)}") from exc
    names, found = flatten_outputs(outputs)
    if not found:
        raise ModelLoadError("the model returned no tensor; edgex compares tensor outputs")
    return names


def mac_counter() -> Any:
    """A torch dispatch mode adding up torch's FLOP formulas (``flop_registry``) of the ops run
    inside it, in ``flops`` (MACs: flops // 2).

    Not ``FlopCounterMode``: torch wraps that mode in dynamo's ``disable``, whose first use
    imports torch._dynamo (1.3 s here), and its module tracking is not needed for a total.
    """
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Macs(TorchDispatchMode):
        flops = 0

        @classmethod
        def _should_skip_dynamo(cls) -> bool:
            return False  # nothing is compiled inside; keeps torch._dynamo unimported

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            kwargs = kwargs or {}
            packet = func._overloadpacket
            if packet not in flop_registry and func is not torch.ops.prim.device.default:
                with self:  # as torch's counter: an op without a formula is counted by its parts
                    decomposed = func.decompose(*args, **kwargs)
                if decomposed is not NotImplemented:
                    return decomposed
            out = func(*args, **kwargs)
            if packet in flop_registry:
                self.flops += flop_registry[packet](*args, **kwargs, out_val=out)
            return out

    return Macs()


def count_macs(module: Any, example_inputs: Sequence[np.ndarray]) -> int | None:
    """Multiply-accumulates of one forward pass (torch's FLOP formulas / 2, :func:`mac_counter`),
    ``None`` if uncountable."""
    import torch

    counter = mac_counter()
    # the fused transformer fast path is one opaque op the counter does not see
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), counter:
            module(*[torch.from_numpy(np.ascontiguousarray(a)) for a in example_inputs])
    except Exception:
        return None  # some modules (TorchScript) resist counting
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    return counter.flops // 2


# --------------------------------------------------------------------------- the ONNX form


def _load_onnx(path: Path, shapes: Sequence[tuple[int, ...]] | None, spec: str) -> ReferenceModel:
    try:
        import onnx
    except ImportError as exc:
        raise ModelLoadError("an .onnx MODEL needs onnx and onnxruntime: pip install 'edgex[onnx]'") from exc
    if _looks_like_text(path):
        raise ModelLoadError(f"{path} is a text file, not an ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelLoadError(f"cannot read {path} as ONNX (corrupt or not a model): {one_line(exc)}") from exc
    initializers = {init.name for init in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in initializers]
    if shapes and len(shapes) != len(graph_inputs):
        raise UsageError(f"{path} has {len(graph_inputs)} inputs but {len(shapes)} --input-shape were given")
    specs = []
    for index, value in enumerate(graph_inputs):
        tensor_type = value.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim]
        if shapes:
            dims = list(shapes[index])
        if any(d is None for d in dims):
            raise UsageError(f"input {value.name!r} of {path} has dynamic dimensions {dims}; pass --input-shape for each input")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor_type.elem_type).name
        specs.append(TensorSpec(value.name, tuple(int(d) for d in dims), dtype))
    params = sum(int(np.prod(init.dims)) for init in model.graph.initializer)
    rng = np.random.default_rng(0)
    return ReferenceModel(
        spec=spec,
        inputs=tuple(specs),
        output_names=tuple(o.name for o in model.graph.output),
        example_inputs=tuple(synthetic_input(s, rng) for s in specs),
        onnx_path=path.resolve(),  # converters may change directory
        sha256=file_sha256(path),
        params=params,
        macs=None,
    )


# --------------------------------------------------------------------------- the entry point


def load_model(
    spec: str,
    *,
    input_shapes: Sequence[tuple[int, ...]] | None = None,
    example_inputs: Path | Sequence[Any] | None = None,
    weights: Path | None = None,
    trust_pickle: bool = False,
    module: Any = None,
) -> ReferenceModel:
    """Load MODEL ``spec`` (or wrap an in-memory ``module``) into a :class:`ReferenceModel`.

    ``example_inputs`` is an .npy/.npz path or in-memory tensors/arrays; its first sample fixes
    the input shape when ``input_shapes`` is not given.
    """
    import torch

    _PRINTED.clear()  # what this model's code prints while loading (user_code)

    file_hash = ""
    calibration = eval_data = None
    example: Any = None
    if module is not None:
        example = None
    elif spec.startswith("examples:"):
        from edgex.examples import load_example

        bundle = load_example(spec.split(":", 1)[1])
        module, example, calibration, eval_data = bundle.module, bundle.example_inputs, bundle.calibration, bundle.eval_data
    elif spec.endswith(".onnx"):
        path = Path(spec)
        _require_file(path)
        return _load_onnx(path, input_shapes, spec)
    elif spec.endswith(".pt2"):
        path = Path(spec)
        _require_file(path)
        module, example = _load_exported_program(path)
        file_hash = file_sha256(path)
    elif spec.endswith(TORCHSCRIPT_SUFFIXES):
        path = Path(spec)
        _require_file(path)
        module, example = _load_torch_file(path, trust_pickle)
        file_hash = file_sha256(path)
    elif ":" in spec:
        target, _, func = spec.rpartition(":")
        if not func.isidentifier():
            raise ModelLoadError(f"MODEL {spec!r}: {func!r} after the colon is not a function name")
        if target.endswith(".py"):
            module, example, file_hash = _load_factory_file(target, func)
        else:
            module, example = _load_factory_module(target, func)
    else:
        path = Path(spec)
        if path.exists():
            raise ModelLoadError(
                f"cannot tell what kind of model {spec} is from its name; use .pt2 (torch.export), "
                ".pt/.ts (TorchScript), .onnx, or file.py:factory"
            )
        raise ModelLoadError(
            f"MODEL {spec!r} is neither a file nor a factory; use path/to/file.py:factory, "
            "package.module:factory, model.pt2, model.pt, model.onnx or examples:NAME"
        )

    if weights is not None:
        load_state_dict_into(module, weights)
    try:
        module.eval()
    except NotImplementedError:
        pass  # torch.export modules are fixed in the mode they were exported in

    arrays: list[np.ndarray] | None = None
    if isinstance(example_inputs, (str, Path)):
        arrays = _example_from_file(Path(example_inputs), None)
    elif example_inputs is not None:
        arrays = _as_numpy_inputs(example_inputs)
    elif example is not None:
        arrays = _as_numpy_inputs(example)

    if input_shapes:
        if arrays is not None and len(arrays) != len(input_shapes):
            raise UsageError(f"{len(input_shapes)} --input-shape given but the example inputs have {len(arrays)} tensors")
        dtypes = [a.dtype for a in arrays] if arrays is not None else [np.dtype("float32")] * len(input_shapes)
        shapes = [tuple(s) for s in input_shapes]
    elif arrays is not None:
        # a file of samples stacks them on axis 0: one sample is one row, batch 1
        from_file = isinstance(example_inputs, (str, Path))
        shapes = [(1, *a.shape[1:]) if from_file else tuple(a.shape) for a in arrays]
        dtypes = [a.dtype for a in arrays]
    else:
        raise UsageError(
            f"MODEL {spec} gives no example inputs: pass --input-shape (e.g. 1,3,224,224, once per input) "
            "or --example-inputs x.npy"
        )

    names = _input_names(module, len(shapes))
    input_specs = tuple(TensorSpec(n, tuple(int(d) for d in s), np.dtype(t).name) for n, s, t in zip(names, shapes, dtypes))
    rng = np.random.default_rng(0)
    if arrays is not None and all(tuple(a.shape) == s.shape for a, s in zip(arrays, input_specs)):
        probe = [np.ascontiguousarray(a) for a in arrays]
    elif arrays is not None and all(tuple(a.shape[1:]) == s.shape[1:] for a, s in zip(arrays, input_specs)):
        probe = [np.ascontiguousarray(a[: s.shape[0]]) for a, s in zip(arrays, input_specs)]
    else:
        from edgex.core import resources

        resources.check_inputs_fit(input_specs)  # before anything is drawn (exit 2, one line)
        probe = [synthetic_input(s, rng) for s in input_specs]
    from edgex.core.resources import measuring

    # the probe forward, measured: its activations and outputs size the parity run's memory check
    output_names = _probe(measuring(module), probe)

    with torch.no_grad():
        params = sum(int(p.numel()) for p in module.parameters())
    return ReferenceModel(
        spec=spec,
        inputs=input_specs,
        output_names=tuple(output_names),
        example_inputs=tuple(probe),
        module=module,
        sha256=file_hash or module_sha256(module, spec),
        params=params,
        calibration=calibration,
        eval_data=eval_data,
        printed="".join(_PRINTED),
    )
