"""The errors edgex raises on purpose: each one is a message a user can act on.

The command line prints them as one line (a traceback only with ``--debug``) and exits with
``exit_code``; see the exit codes in docs/contract.md.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping


class EdgexError(Exception):
    """Base of every error edgex raises deliberately."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UsageError(EdgexError):
    """Bad usage or bad input: a wrong option, a missing file, data of the wrong shape."""


class ModelLoadError(UsageError):
    """The MODEL argument could not be turned into a runnable model."""


class ModelError(UsageError):
    """The model's own code failed on an input edgex gave it (its forward raised)."""


class DiskFullError(EdgexError):
    """A disk edgex writes to is full (or the user's quota there is used up): refused before the
    work when the free space is clearly too small (``edgex.core.resources``), or met by a write.

    Exit code 3, as for a target that could not finish: the input was fine, the machine could not
    hold the results. The message names the disk, its free space and what was being written."""

    exit_code = 3


class PluginError(EdgexError):
    """The installed plugins contradict each other (two claim one target name, ...)."""


class TargetError(EdgexError):
    """A target failed while converting or running its artifact.

    The pipeline turns it into that target's ``error`` status; the other targets still run.
    """

    exit_code = 3

    def __init__(self, message: str, *, target: str = "", stage: str = "", plugin: str = ""):
        super().__init__(message)
        self.target = target
        self.stage = stage
        self.plugin = plugin


class BackendMissingError(TargetError):
    """The target's converter or runtime is not installed here."""


class UnsupportedModel(TargetError):
    """The target cannot take this model at all (an op, a layer or a form it does not convert),
    as opposed to failing on it. Named explicitly (``--target T``) it is that target's
    ``error``; under ``--target all`` the target's row is ``skipped`` with this reason, as for a
    precision the target lacks."""


def exit_code_for(rows: Iterable[tuple[str | None, bool]]) -> int:
    """A run's exit code from its targets' (status, requested) rows: 0 all passed; 1 an
    artifact's parity was not proven (failed, or inconclusive); 3 a target errored or a requested
    one was skipped (3 wins over 1). One rule for the report and for the supervisor reading it."""
    rows = list(rows)
    if any(status == "error" or (status == "skipped" and requested) or status not in STATUSES for status, requested in rows):
        return 3
    if any(status in ("failed", "inconclusive") for status, _ in rows):
        return 1
    return 0


def exit_code_for_cells(cells: Iterable[Mapping[str, Any]]) -> int:
    """A matrix's exit code from its cells (results.json): 3 when a target failed (as convert),
    else 2 when a cell's input was bad, else 1 / 0."""
    rows = [row for cell in cells for row in cell["targets"].values()]
    if any(row["status"] == "error" and not row.get("bad_input") for row in rows):
        return 3
    if any(row.get("bad_input") for row in rows):
        return 2
    return 1 if any(row["status"] in ("failed", "inconclusive") for row in rows) else 0


#: every status a target's row may have
STATUSES = ("passed", "failed", "inconclusive", "error", "skipped")


def is_unsupported_model(exc: BaseException) -> bool:
    """Whether ``exc`` says the model is not one the target takes (raised here or in a child)."""
    return isinstance(exc, UnsupportedModel) or bool(getattr(exc, "unsupported_model", False))


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one line a user can read: ``Type: first line`` (an edgex error's message as is)."""
    text = exc.message if isinstance(exc, EdgexError) else str(exc)
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    first = lines[0][:limit] if lines else ""
    if isinstance(exc, EdgexError) or first.startswith(type(exc).__name__):
        return first or type(exc).__name__
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
