"""Command-line options of the compress stage, shared by ``convert``, ``compress`` and ``matrix``."""

from __future__ import annotations

import argparse
from typing import Any, Mapping

from edgex.core.compress import CompressionStep
from edgex.core.errors import UsageError


def add_compression_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("compression (the compressed model becomes the parity reference)")
    group.add_argument("--prune", type=float, metavar="AMOUNT", help="fraction of weights (unstructured) or channels (structured) to remove, in (0, 1)")
    group.add_argument("--prune-method", default="l1-unstructured", metavar="METHOD", help="l1-unstructured (default), l1-structured, or a plugin's method")
    group.add_argument("--prune-scope", choices=["global", "layer"], default="global", help="rank weights across the whole model (global) or per layer")
    group.add_argument("--prune-steps", type=int, default=1, metavar="N", help="prune in N steps, recovering between them when --distill is given")
    group.add_argument("--exclude", action="append", default=[], metavar="PATTERN", help="module names (fnmatch patterns) never pruned; the classifier is excluded by default")
    group.add_argument("--distill", action="store_true", help="recover accuracy by distillation from the unpruned model")
    group.add_argument("--distill-data", metavar="FILE", help="data for recovery (.npy unlabelled, .npz with x[, y]); default: the calibration data")
    group.add_argument("--distill-epochs", type=int, default=10, metavar="N")
    group.add_argument("--distill-lr", type=float, default=1e-3, metavar="LR")
    group.add_argument("--distill-temperature", type=float, default=4.0, metavar="T")


def steps_from_options(options: Mapping[str, Any]) -> tuple[CompressionStep, ...]:
    """Compression steps from option values (CLI namespace or a matrix preset)."""
    amount = options.get("prune")
    steps: list[CompressionStep] = []
    if amount is not None:
        amount = float(amount)
        if not 0.0 < amount < 1.0:
            raise UsageError(f"--prune {amount:g} is outside (0, 1): give the fraction to remove, e.g. 0.5")
        steps.append(
            CompressionStep(
                str(options.get("prune_method") or "l1-unstructured"),
                {
                    "amount": amount,
                    "scope": options.get("prune_scope") or "global",
                    "exclude": tuple(options.get("exclude") or ()),
                    "steps": int(options.get("prune_steps") or 1),
                    "recover": bool(options.get("distill")),
                    "recover_options": _distill_options(options),
                },
            )
        )
    if options.get("distill"):
        steps.append(CompressionStep("distill", _distill_options(options)))
    return tuple(steps)


def _distill_options(options: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "epochs": int(options.get("distill_epochs") or 10),
        "lr": float(options.get("distill_lr") or 1e-3),
        "temperature": float(options.get("distill_temperature") or 4.0),
    }


def steps_from_args(args: argparse.Namespace) -> tuple[CompressionStep, ...]:
    return steps_from_options(vars(args))
