"""Every hook of the edgex plugin contract.

Grouped by lifecycle phase: declaring what a plugin offers, the convert and validate stages of
a target, the compress stage, and observers. Hooks that act for one target or one compression
method are *dispatched*: edgex calls only the plugin that declared that target or method, and
that plugin returns the first (and only) result. Each hook is documented for users and plugin
authors in ``docs/plugin_hooks.md``; a test keeps the two in step.

Plugin authors import everything named here (``hookimpl``, the types, the errors, the layout
helpers) from :mod:`edgex.plugins`, the whole public API for targets; the built-in targets
import nothing else from edgex. Heavy frameworks must not be imported at module level of a
plugin: ``edgex targets`` imports every plugin and must stay fast. Import them inside the hook
implementations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import pluggy

from edgex.core.types import (
    ArtifactIO,
    BackendStatus,
    CompressionRequest,
    CompressionResult,
    CompressorSpec,
    ConversionRequest,
    ConversionResult,
    ModelOperators,
    OperatorCheck,
    ReferenceModel,
    Runtime,
    StageEvent,
    TargetSpec,
    Tracer,
)

PROJECT = "edgex"
hookspec = pluggy.HookspecMarker(PROJECT)


# --------------------------------------------------------------------------- declaring


@hookspec
def edgex_targets() -> Sequence[TargetSpec]:
    """Declare the targets this plugin offers.

    Return a sequence of :class:`TargetSpec` (name, aliases, artifact kinds, precisions,
    options). Called once when plugins load. A target name or alias claimed by two plugins is
    an error naming both. Any plugin may implement it.
    """


@hookspec
def edgex_compressors() -> Sequence[CompressorSpec]:
    """Declare the compression methods this plugin offers (pruning, recovery, ...).

    Return a sequence of :class:`CompressorSpec`. A method name claimed by two plugins is an
    error naming both. Any plugin may implement it.
    """


# --------------------------------------------------------------------------- convert and validate


@hookspec(firstresult=True)
def edgex_backend_status(target: str) -> BackendStatus:
    """Say whether ``target``'s converter and runtime are usable here.

    Dispatched to the plugin that declared ``target``. Must be fast: check with
    ``importlib.util.find_spec`` and package metadata, never by importing a framework. When
    unavailable, ``install_hint`` says what to install. A target built on another target's
    conversion asks :func:`edgex.plugins.target_status` for that target's status.
    """


@hookspec(firstresult=True)
def edgex_convert(request: ConversionRequest) -> ConversionResult:
    """Convert ``request.model`` into artifacts for ``request.target``.

    Dispatched to the plugin that declared the target. Write files only inside
    ``request.workdir`` (edgex moves them into ``--out`` when the conversion succeeded, and
    deletes them when it raised). Return a :class:`ConversionResult` whose ``io`` describes the
    artifact parity runs: one :class:`TensorBinding` per reference input and output, in the
    reference order, with the layout permutation and quantization the artifact uses.
    Raise :class:`edgex.plugins.TargetError` with a one-line message a user can act on
    when conversion is impossible. Runs in a child process.
    """


@hookspec(firstresult=True)
def edgex_describe_artifact(target: str, path: Path, reference: ReferenceModel) -> ArtifactIO:
    """Describe an existing artifact so that ``edgex validate`` can run it.

    Dispatched to the plugin that declared ``target``. Read the artifact's inputs and outputs
    (names, shapes, dtypes, quantization) and relate them to ``reference.inputs`` (use
    :func:`edgex.plugins.infer_permutation` for the layout). Raise
    :class:`edgex.plugins.UsageError` when the file is not such an artifact.
    """


@hookspec(firstresult=True)
def edgex_load_runtime(target: str, io: ArtifactIO, options: Mapping[str, Any]) -> Runtime:
    """Load the artifact on the target's own backend and return a :class:`Runtime`.

    Dispatched to the plugin that declared ``target``. ``Runtime.run`` receives one sample's
    inputs already permuted and quantized as ``io.inputs`` says, and returns the artifact's
    raw outputs; edgex undoes layout and quantization and compares (the parity rule lives in
    core, once). ``Runtime.backend`` names what really executed, e.g.
    ``"onnxruntime 1.32.0 CPUExecutionProvider"``; never name a backend that did not run. A
    runtime may offer ``details() -> dict`` whose keys join the target's report entry.
    Runs in a child process.
    """


@hookspec(firstresult=True)
def edgex_load_tracer(target: str, io: ArtifactIO, reference: ReferenceModel, options: Mapping[str, Any]) -> Tracer:
    """Load the artifact so that ``edgex explain`` can read every intermediate tensor.

    Optional: a target whose plugin does not implement it cannot be explained (a one-line
    usage error). Dispatched to the plugin that declared ``target``; return None when this
    target's artifacts cannot be traced. ``Tracer.trace`` receives one sample's inputs in the
    artifact's form and returns an :class:`ArtifactTrace`: every intermediate tensor in
    execution order with the torch module paths the artifact records for it, its layout and
    quantization (core undoes them and matches tensors to ``reference``'s modules), and the
    outputs. ``reference`` is the torch model, for targets whose artifacts name tensors after
    values of the torch graph rather than modules. Runs in a child process.
    """



@hookspec(firstresult=True)
def edgex_check_operators(target: str, operators: ModelOperators, precision: str) -> OperatorCheck:
    """Judge, without converting, whether ``target`` can take a model with these operators.

    Optional (``edgex check``; a target without it is predicted "unknown"). Dispatched to the
    plugin that declared ``target``. ``operators`` is read from the model's exported graph
    *after* the target's rewrites (``TargetSpec.lacks``), ``precision`` is the one the target
    would convert at. Return an :class:`OperatorCheck`: a finding per operator the target lacks
    (``blocks=True``: the conversion is expected to fail) or restricts (converts, at a cost),
    each with the reason and the fix, the data judged by (with versions), and the operators
    that data does not cover. Must be fast and import no converter that takes seconds to load.
    """

# --------------------------------------------------------------------------- compress


@hookspec(firstresult=True)
def edgex_compress(request: CompressionRequest) -> CompressionResult:
    """Apply the compression method ``request.method`` to ``request.module``.

    Dispatched to the plugin that declared the method. Return the compressed module (which may
    be ``request.module`` changed in place) in a :class:`CompressionResult` whose ``summary``
    joins the report's ``compression`` section. Raise
    :class:`edgex.plugins.UsageError` for options that cannot apply to this model.
    """


# --------------------------------------------------------------------------- observers


@hookspec
def edgex_stage_started(event: StageEvent) -> None:
    """Observe a pipeline stage (``load``, ``compress``, ``reference``, ``convert``,
    ``validate``, ``report``) starting, for all targets or one (``event.target``).

    Every plugin's implementation is called; return values are ignored. Observers must not
    raise: an exception here is reported as a warning and otherwise ignored.
    """


@hookspec
def edgex_stage_progress(event: StageEvent) -> None:
    """Observe progress inside a running stage (e.g. the epochs of distillation in ``compress``):
    ``event.progress`` is the fraction done and ``event.detail`` a one-line status such as
    ``"distill epoch 3/10 loss 0.0421"``.

    Every plugin's implementation is called; return values are ignored. Called often: keep it
    cheap. Observers must not raise: an exception here is reported as a warning and otherwise
    ignored.
    """


@hookspec
def edgex_stage_finished(event: StageEvent) -> None:
    """Observe a pipeline stage finishing; ``event.outcome`` and ``event.seconds`` are set.

    Every plugin's implementation is called; return values are ignored. Observers must not
    raise: an exception here is reported as a warning and otherwise ignored.
    """
