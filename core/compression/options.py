"""Options of the compress stage, shared by ``compress``, ``convert`` and ``matrix``.

``add_compression_options`` puts them on a command's parser; ``steps_from_options`` turns option
values (an argparse namespace as a dict, or a ``[[compression]]`` preset of a matrix config, whose
keys are the same names with underscores) into :class:`CompressionStep` s. Every check of the
values happens here, before any model is touched. ``distill_data`` is not part of a step: the
caller passes it on as ``ConvertSettings.distill_data``.
"""

from __future__ import annotations

import argparse
from typing import Any, Mapping

from edgex.core.compression import CompressionStep
from edgex.core.errors import UsageError

DEFAULT_METHOD = "l1-unstructured"
RECOVERY_METHOD = "distill"

#: option name -> its flag. Defaults are None ("not given") so that an option that would do
#: nothing (``--distill-epochs`` without ``--distill``) is refused instead of silently ignored.
PRUNE_OPTIONS = {
    "prune_method": "--prune-method",
    "prune_scope": "--prune-scope",
    "prune_steps": "--prune-steps",
    "prune_round_to": "--prune-round-to",
    "prune_classifier": "--prune-classifier",
    "exclude": "--exclude",
}
DISTILL_OPTIONS = {
    "distill_data": "--distill-data",
    "distill_epochs": "--distill-epochs",
    "distill_lr": "--distill-lr",
    "distill_temperature": "--distill-temperature",
    "distill_batch": "--distill-batch",
}
#: every key a matrix ``[[compression]]`` preset may hold (besides its ``name``)
OPTION_NAMES = ("prune", *PRUNE_OPTIONS, "distill", *DISTILL_OPTIONS)


def add_compression_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("compression (the compressed model becomes the parity reference)")
    group.add_argument("--prune", type=float, metavar="AMOUNT", help="fraction of weights (unstructured) or channels (structured) to remove, in (0, 1)")
    group.add_argument("--prune-method", metavar="METHOD", help="l1-unstructured (default: zeroes weights, smaller zipped, not faster), l1-structured (removes channels: fewer MACs, faster), or a plugin's method")
    group.add_argument("--prune-scope", choices=["global", "layer"], help="rank weights/channels across the whole model (global, default) or remove the same share from each layer")
    group.add_argument("--prune-steps", type=int, metavar="N", help="prune in N steps, recovering between them when --distill is given (default 1)")
    group.add_argument("--prune-round-to", type=int, metavar="N", help="l1-structured: keep channel counts multiples of N (default 8, which SIMD kernels and NPUs run fastest; 1: no rounding)")
    group.add_argument("--prune-classifier", action="store_true", default=None, help="l1-unstructured: prune the final (classifier) layer too; it is kept by default")
    group.add_argument("--exclude", action="append", metavar="PATTERN", help="modules never pruned, as fnmatch patterns on dotted names (repeatable), e.g. 'features.0' or 'layers.3.*'")
    group.add_argument("--distill", action="store_true", default=None, help="recover accuracy by distillation from the unpruned model")
    group.add_argument("--distill-data", metavar="FILE", help="data for recovery: .npy (unlabelled) or .npz with x and optional labels y (then fine-tune on them); default: the calibration data")
    group.add_argument("--distill-epochs", type=int, metavar="N", help="epochs per recovery (default 20)")
    group.add_argument("--distill-lr", type=float, metavar="LR", help="Adam learning rate (default 1e-3)")
    group.add_argument("--distill-temperature", type=float, metavar="T", help="softmax temperature of distillation (default 1)")
    group.add_argument("--distill-batch", type=int, metavar="N", help="samples per training step (default 32)")


def _given(options: Mapping[str, Any], name: str) -> bool:
    value = options.get(name)
    return value is not None and value is not False and value != [] and value != ()


def steps_from_options(options: Mapping[str, Any]) -> tuple[CompressionStep, ...]:
    """Compression steps from option values (CLI namespace or a matrix preset)."""
    steps: list[CompressionStep] = []
    if not _given(options, "prune"):
        stray = [flag for name, flag in {**PRUNE_OPTIONS, "distill": "--distill", **DISTILL_OPTIONS}.items() if _given(options, name)]
        if stray:
            raise UsageError(f"{stray[0]} needs --prune AMOUNT (there is nothing to prune or recover otherwise)")
        return ()
    try:
        amount = float(options["prune"])
    except (TypeError, ValueError):
        raise UsageError(f"--prune {options['prune']!r} is not a number: give the fraction to remove, e.g. 0.5") from None
    if not 0.0 < amount < 1.0:
        raise UsageError(f"--prune {amount:g} is outside (0, 1): give the fraction to remove, e.g. 0.5")
    rounds = int(options.get("prune_steps") or 1)
    if rounds < 1:
        raise UsageError(f"--prune-steps {rounds} must be at least 1")
    scope = options.get("prune_scope") or "global"
    if scope not in ("global", "layer"):
        raise UsageError(f"--prune-scope {scope!r} must be global or layer")
    prune = {
        "amount": amount,
        "scope": scope,
        "exclude": tuple(options.get("exclude") or ()),
        "steps": rounds,
    }
    if _given(options, "prune_round_to"):
        prune["round_to"] = int(options["prune_round_to"])
    if _given(options, "prune_classifier"):
        prune["prune_classifier"] = True
    steps.append(CompressionStep(str(options.get("prune_method") or DEFAULT_METHOD), prune))
    if _given(options, "distill"):
        steps.append(CompressionStep(RECOVERY_METHOD, _distill_options(options)))
    else:
        stray = [flag for name, flag in DISTILL_OPTIONS.items() if _given(options, name)]
        if stray:
            raise UsageError(f"{stray[0]} needs --distill")
    return tuple(steps)


def _distill_options(options: Mapping[str, Any]) -> dict[str, Any]:
    from edgex.core.compression.distill import DistillOptions

    values = {
        "epochs": options.get("distill_epochs"),
        "lr": options.get("distill_lr"),
        "temperature": options.get("distill_temperature"),
        "batch_size": options.get("distill_batch"),
    }
    parsed = DistillOptions.parse(values)  # bad values fail here, before any work
    return {"epochs": parsed.epochs, "lr": parsed.lr, "temperature": parsed.temperature, "batch_size": parsed.batch_size}


def steps_from_args(args: argparse.Namespace) -> tuple[CompressionStep, ...]:
    return steps_from_options(vars(args))
