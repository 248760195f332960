"""Target ``mcu`` (alias ``tflm``): TensorFlow Lite Micro on microcontrollers.

Artifact: the full-int8 ``.tflite`` of the tflite target's conversion (one implementation, in
``edgex.targets.litert.convert.full_int8``), checked for what TFLM needs (every tensor int8/int32, a TFLM
kernel for every operator, no offset buffers), plus the firmware's view of it:
``model_data.cc`` / ``model_data.h`` (the model as ``alignas(16) const unsigned char g_model[]``,
TFLM's generate_cc_arrays.py convention) and ``model_ops.h`` (a ``MicroMutableOpResolver``
registering exactly the model's operators, and the measured ``kTensorArenaSize``).

Validated on TFLM's own interpreter (``tflite-micro``): core compares it with the torch
reference; this runtime also runs LiteRT's int8 kernels on the same inputs and reports how
many outputs differ and by how many LSB (``litert_comparison``). Memory: the minimum tensor
arena measured by TFLM (binary search and its allocation record, see ``mcu_memory``) and the
flash; ``--device NAME`` checks both against a board profile (``data/mcu_devices.json``) and a
model that does not fit is an ``error``. Where the profile names an Arm Ethos-U NPU, vela
compiles the model (``mcu_vela``) and its SRAM/flash/cycles/CPU fallback join the report;
parity stays on the int8 model before vela.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from edgex.plugins import (
    match_names,
    package_version,
    target_status,
    Artifact,
    ArtifactIO,
    BackendStatus,
    ConversionRequest,
    ConversionResult,
    ReferenceModel,
    TargetOption,
    TargetError,
    TargetSpec,
    UsageError,
    hookimpl,
    ModelOperators,
    OperatorCheck,
)
from edgex.targets.litert import convert as litert
from edgex.targets.litert.runtime import LiteRTRuntime, LiteRTTracer
from edgex.targets.mcu import memory as mcu_memory
from edgex.targets.mcu import model as mcu_model
from edgex.targets.mcu import vela as mcu_vela

DEFAULT_ARRAY_NAME = "g_model"
#: samples the LiteRT bit-exactness comparison keeps (parity and evaluation runs together)
LITERT_COMPARE_LIMIT = 2000

TARGETS = (
    TargetSpec(
        name="mcu",
        aliases=("tflm",),
        description="full-int8 TFLite + C sources for TensorFlow Lite Micro, validated on TFLM's interpreter",
        artifact_kinds=(".tflite", "model_data.cc", "model_data.h", "model_ops.h"),
        precisions=("int8",),
        default_precision="int8",
        options=(
            TargetOption(
                "device",
                "board to check the model's arena and flash against (e.g. nrf52840, stm32f746g-disco, alif-e7-hp; "
                "or a .json profile); Ethos-U boards also compile with vela",
            ),
            TargetOption("array_name", "name of the C array holding the model (default g_model)", str, DEFAULT_ARRAY_NAME),
        ),
        accepts=("torch", "onnx"),
        lacks=("int64-inputs", "fused-transformer", "oversized-pool", "gelu", "lstm", "transpose-6d"),
        # mixed precision: the kept layers' ops at int16 activations and int8 weights (TFLM's
        # int16 kernels), else float (its float reference kernels) where int8 weights cannot carry
        # them; a larger arena either way (docs/mixed_precision.md)
        keeps_wider=("int16", "float"),
    ),
)



# --------------------------------------------------------------------------- declaring


@hookimpl
def edgex_targets():
    return TARGETS


@hookimpl
def edgex_backend_status(target: str) -> BackendStatus:
    if importlib.util.find_spec("tflite_micro") is None:
        return BackendStatus(False, "tflite-micro", "pip install 'edgex[mcu]'", "tflite-micro (TFLM's Python interpreter) is not installed")
    converter = target_status("tflite")  # the full-int8 conversion is the tflite target's
    if not converter.available:
        return BackendStatus(False, f"tflite-micro {package_version('tflite-micro')}", converter.install_hint or "pip install 'edgex[mcu]'", f"the full-int8 conversion needs: {converter.detail or converter.backend}")
    vela = f", vela {package_version('ethos-u-vela')} for Ethos-U" if mcu_vela.vela_available() else " (vela not installed: no Ethos-U compilation)"
    return BackendStatus(True, f"tflite-micro {package_version('tflite-micro')}{vela}")


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class McuOptions:
    device: mcu_memory.Device | None
    array_name: str

    @classmethod
    def from_mapping(cls, options: Mapping[str, Any]) -> "McuOptions":
        device = options.get("device")
        array_name = mcu_model.check_identifier(str(options.get("array_name") or DEFAULT_ARRAY_NAME))
        return cls(mcu_memory.resolve_device(device) if device else None, array_name)


# --------------------------------------------------------------------------- converting


def _operators(graph: Any) -> list[dict[str, Any]]:
    uses = mcu_model.operator_uses(graph)
    return [{"op": op, "count": uses[op], "resolver": mcu_model.resolver_method(op)} for op in sorted(uses)]


def memory_report(graph: Any, data: bytes, device: mcu_memory.Device | None, stage: str) -> tuple[dict[str, Any], mcu_memory.FitVerdict | None]:
    """Arena (measured by TFLM) and flash, and the fit verdict when a device is given.

    Raises :class:`TargetError` (the target's ``error`` status) when the model does not fit.
    """
    arena = mcu_memory.measure_arena(data, len(graph.inputs), key=hashlib.sha256(data).hexdigest())
    flash = mcu_memory.flash_needs(len(data))
    verdict = None
    if device is not None:
        verdict = mcu_memory.check_fit(device, arena.minimum_bytes, flash["total_bytes"], error=lambda m: TargetError(m, stage=stage))
    return {"arena": arena.to_json(), "flash": flash}, verdict


@hookimpl
def edgex_convert(request: ConversionRequest) -> ConversionResult:
    options = McuOptions.from_mapping(request.options)
    # full int8 and checked to be (litert.check_full_int8); TFLM has int16 kernels, so the recipe
    # search may keep a 16x8 model where no int8 recipe reaches what int8 should
    base = litert.full_int8(request, int16_activations=True)
    path = Path(base.io.path)
    data = path.read_bytes()
    graph = mcu_model.read(path)
    mcu_model.check_for_tflm(graph, full_int8=False)
    memory, verdict = memory_report(graph, data, options.device, "convert")

    folder = request.workdir
    cc, header = mcu_model.write_model_data(data, folder, array_name=options.array_name, source_name=path.name)
    ops_header = mcu_model.write_op_resolver(graph, folder, arena_bytes=memory["arena"]["minimum_bytes"], source_name=path.name)
    artifacts = [*base.artifacts, Artifact(cc, "c-source"), Artifact(header, "c-header"), Artifact(ops_header, "c-header")]
    messages = list(base.messages)
    details: dict[str, Any] = dict(base.details)
    details["memory"] = memory
    details["operators"] = _operators(graph)
    details["c_sources"] = {
        "array": options.array_name,
        "length_constant": f"{options.array_name}_size",
        "files": [cc.name, header.name, ops_header.name],
        "convention": "tensorflow/lite/micro/tools/generate_cc_arrays.py (alignas(16) const unsigned char array, extern in the header)",
    }
    converter = f"{base.converter}; checked for TFLM ({len(details['operators'])} operators with TFLM kernels), C sources"
    if verdict is not None:
        details["fit"] = verdict.to_json()
        details["device"] = options.device.to_json()
        messages.append(verdict.message)
    if options.device is not None and options.device.ethos_u:
        if mcu_vela.vela_available():
            report = mcu_vela.compile_for_npu(path, folder / "vela", options.device.npu)
            artifacts += [Artifact(report.artifact, "vela-tflite"), Artifact(report.summary_csv, "report")]
            details["ethos_u"] = report.to_json()
            converter += f"; vela {report.version} for {report.accelerator}"
            if report.cpu_fallback:
                ops = ", ".join(sorted({c.op for c in report.cpu_fallback}))
                messages.append(f"Ethos-U: {report.cpu_operators} operator(s) fall back to the CPU ({ops}); see ethos_u.cpu_fallback for vela's reasons")
        else:
            messages.append(f"{options.device.name} has an {options.device.npu.get('name', 'Ethos-U')} NPU but vela is not installed (pip install ethos-u-vela): no NPU compilation")
    return ConversionResult(tuple(artifacts), base.io, converter, tuple(messages), details)


# --------------------------------------------------------------------------- describing


@hookimpl
def edgex_describe_artifact(target: str, path: Path, reference: ReferenceModel) -> ArtifactIO:
    path = Path(path)
    if path.suffix in (".cc", ".h"):
        raise UsageError(f"{path.name} is C source: validate the .tflite it was generated from")
    if path.suffix != ".tflite":
        raise UsageError(f"{path} is not a .tflite file")
    graph = mcu_model.read(path)
    if mcu_model.CUSTOM_PREFIX + "ethos-u" in mcu_model.operator_uses(graph):
        raise UsageError(f"{path.name} is compiled by vela for an Ethos-U NPU, which TFLM's host interpreter cannot run: validate the .tflite before vela")
    problem = mcu_model.full_int8_problem(graph)
    if problem:
        raise UsageError(f"{path.name}: {problem}; the mcu target validates full-int8 models")
    return litert.describe_tflite(path, reference)


# --------------------------------------------------------------------------- running


def _tflm_error(what: str, exc: BaseException, log: Sequence[str]) -> TargetError:
    said = mcu_memory.tflm_log_line(log[0]) if log else ""
    return TargetError(f"{what}: {exc}" + (f" ({said[:300]})" if said else ""), stage="validate")


class TFLMRuntime:
    """A full-int8 ``.tflite`` on TensorFlow Lite Micro's interpreter, in the arena it measured.

    ``details()`` adds the memory measurement, the device fit, and the bit-exactness of TFLM
    against LiteRT's int8 kernels on every input this runtime ran.
    """

    def __init__(self, io: ArtifactIO, options: Mapping[str, Any]):
        from tflite_micro.python.tflite_micro import runtime

        self.path = Path(io.path)
        self._data = self.path.read_bytes()  # TFLM reads the flatbuffer in place: keep it alive
        graph = mcu_model.read(self.path)
        mcu_model.check_for_tflm(graph, error=lambda m: TargetError(m, stage="validate"))
        device = McuOptions.from_mapping(options).device
        self.memory, self.verdict = memory_report(graph, self._data, device, "validate")
        arena = self.memory["arena"]["minimum_bytes"]
        failure: BaseException | None = None
        with mcu_memory.captured_stderr() as log:
            try:
                self.interpreter = runtime.Interpreter.from_bytes(self._data, arena_size=arena)
            except (RuntimeError, ValueError) as exc:
                failure = exc
        if failure is not None:
            raise _tflm_error(f"TFLM cannot load {self.path.name}", failure, log)
        input_names, output_names = mcu_model.io_names(graph)
        self.input_names, self.output_names = [b.name for b in io.inputs], [b.name for b in io.outputs]
        self.input_order = self._order([b.name for b in io.inputs], input_names)
        self.output_order = self._order([b.name for b in io.outputs], output_names)
        self.backend = f"tflite-micro {package_version('tflite-micro')} MicroInterpreter (reference kernels, {arena}-byte arena)"
        self._ran: list[tuple[list[np.ndarray], list[np.ndarray]]] = []

    @staticmethod
    def _order(binding_names: Sequence[str], model_names: Sequence[str]) -> list[int]:
        order = match_names(binding_names, model_names)
        if order is None:
            raise TargetError(f"the artifact binds {len(binding_names)} tensors but the model has {len(model_names)}", stage="validate")
        return order

    def run(self, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        failure: BaseException | None = None
        with mcu_memory.captured_stderr() as log:
            try:
                for array, index in zip(inputs, self.input_order):
                    self.interpreter.set_input(np.ascontiguousarray(array), index)
                self.interpreter.invoke()
                outputs = [np.array(self.interpreter.get_output(index), copy=True) for index in self.output_order]
            except (RuntimeError, ValueError) as exc:
                failure = exc
        if failure is not None:
            raise _tflm_error("TFLM inference failed", failure, log)
        if len(self._ran) < LITERT_COMPARE_LIMIT:
            self._ran.append(([np.array(a, copy=True) for a in inputs], outputs))
        return outputs

    def litert_comparison(self) -> dict[str, Any]:
        """TFLM vs LiteRT's int8 kernels on the inputs this runtime ran, in output LSB."""
        if not self._ran:
            return {"samples": 0}
        try:
            on_litert = LiteRTRuntime(self.path, self.input_names, self.output_names)
            theirs = [[np.asarray(o) for o in on_litert.run(inputs)] for inputs, _ in self._ran]
        except Exception as exc:  # the report says why; TFLM parity against torch still stands
            return {"samples": len(self._ran), "error": f"LiteRT could not run the model: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"}
        differing = compared = 0
        worst = 0
        histogram: dict[int, int] = {}
        for (_, ours), other in zip(self._ran, theirs):
            for mine, reference in zip(ours, other):
                delta = np.abs(mine.astype(np.int64) - np.asarray(reference).astype(np.int64)).ravel()
                compared += delta.size
                differing += int(np.count_nonzero(delta))
                worst = max(worst, int(delta.max(initial=0)))
                values, counts = np.unique(delta, return_counts=True)
                for value, count in zip(values.tolist(), counts.tolist()):
                    histogram[value] = histogram.get(value, 0) + count
        within_one = sum(count for value, count in histogram.items() if value <= 1)
        return {
            "backend": on_litert.backend,
            "samples": len(self._ran),
            "outputs_compared": compared,
            "outputs_differing": differing,
            "max_lsb_difference": worst,
            "fraction_within_1_lsb": within_one / compared if compared else 1.0,
            "bit_exact": differing == 0,
            "lsb_histogram": {str(k): v for k, v in sorted(histogram.items())},
        }

    def details(self) -> dict[str, Any]:
        data: dict[str, Any] = {"memory": self.memory, "litert_comparison": self.litert_comparison()}
        if self.verdict is not None:
            data["fit"] = self.verdict.to_json()
        return data


@hookimpl
def edgex_load_runtime(target: str, io: ArtifactIO, options: Mapping[str, Any]) -> TFLMRuntime:
    return TFLMRuntime(io, options)


# --------------------------------------------------------------------------- explaining


@hookimpl
def edgex_load_tracer(target: str, io: ArtifactIO, reference: ReferenceModel, options: Mapping[str, Any]):
    note = (
        "TFLM's Python interpreter cannot expose intermediate tensors: explain ran the same .tflite on LiteRT's "
        "reference kernels (the ones TFLM's are ported from), not on TFLM; edgex validate's litert_comparison says how far the two differ"
    )
    return LiteRTTracer(io, reference_kernels=True, notes=(note,))


@hookimpl
def edgex_check_operators(target: str, operators: ModelOperators, precision: str) -> OperatorCheck:
    from edgex.targets.litert.ops import check_tflite

    return check_tflite(operators, precision, "tflm", TARGETS[0].lacks)
