"""edgex's pytest plugin for users: keep "my model still computes the same on the edge" in your
own test suite (docs/pytest_plugin.md).

Installed with edgex (entry point ``pytest11``, named ``edgex``) and therefore loaded by every
pytest run in that environment, so importing it imports pytest and nothing else: torch, the
plugin manager and the converters load only when a test uses the fixture or the marker.
``-p no:edgex`` turns it off; ``-p edgex`` loads it where ``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` is set.

- ``edgex_parity``: a fixture; call it with a model (an ``nn.Module`` with ``example_inputs``, or
  a MODEL spec) and targets. It converts into the test's ``tmp_path``, validates each artifact on
  its own runtime and fails the test with each verdict's one-line reason; a target whose backend is
  not installed skips the test. It returns the :class:`~edgex.core.report.Report`.
- ``@pytest.mark.edgex_target("coreml", ...)``: skip the test where a target's backend is absent.
- ``--edgex-cache DIR``: reuse results of unchanged models across test runs (docs/cache.md).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import pytest

if TYPE_CHECKING:  # pragma: no cover
    from edgex.core.report import Report, TargetReport

MARKER = "edgex_target"
NOT_PROVEN = ("failed", "inconclusive", "error")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--edgex-cache", metavar="DIR", default=None, help="edgex: reuse parity results of unchanged models from DIR (docs/cache.md)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MARKER}(*targets): skip the test where an edgex target's backend is not installed")


def pytest_runtest_setup(item: pytest.Item) -> None:
    targets = [name for mark in item.iter_markers(MARKER) for name in mark.args]
    if targets:
        missing = missing_backends(targets)
        if missing:
            pytest.skip("; ".join(missing))


def missing_backends(targets: Sequence[str]) -> list[str]:
    """``"target: backend missing: ...; pip install ..."`` for each target that cannot run here."""
    from edgex.core.errors import EdgexError
    from edgex.core.plugin_manager import make_manager

    manager = make_manager()
    missing = []
    for name in targets:
        try:
            target = manager.resolve_target(name).name
        except EdgexError as exc:  # a misspelt target is the test's mistake, not a skip: its setup errors
            raise pytest.fail.Exception(f"edgex_target({name!r}): {exc.message}", pytrace=False) from None
        status = manager.backend_status(target)
        if not status.available:
            missing.append(f"{target}: {status.missing_message()}")
    return missing


def verdict_line(name: str, row: TargetReport) -> str:
    """One line saying why a target's parity is not proven: the verdict's last word (parity,
    accuracy, fp16 range, inconclusive reference or conversion error come after conversion notes)."""
    reasons = [m for m in row.messages if not m.startswith("from cache ")]
    return f"edgex: {name} {row.status} at {row.precision or '?'}: {reasons[-1] if reasons else 'no reason given'}"


def check_parity(model: Any, targets: Sequence[str] = ("onnx",), *, out: str | Path, **convert_options: Any) -> Report:
    """Convert ``model`` for ``targets`` into ``out`` (``edgex.core.api.convert`` takes
    ``convert_options``: ``example_inputs``, ``precision``, ``calibration``, ``atol``, ...) and
    fail the calling test unless every target's parity is proven; a target whose backend is
    not installed skips the test. Returns the report."""
    from edgex.core import api
    from edgex.core.errors import EdgexError

    if isinstance(targets, str):
        targets = [targets]
    try:
        report = api.convert(model, list(targets), out=out, overwrite=True, **convert_options)
    except EdgexError as exc:  # bad input: edgex's one line, without the chained traceback
        raise pytest.fail.Exception(f"edgex: {exc.message}", pytrace=False) from None
    problems = [verdict_line(name, row) for name, row in report.targets.items() if row.status in NOT_PROVEN]
    if problems:
        pytest.fail("\n".join([*problems, f"edgex: the whole report: {Path(out) / 'report.json'}"]), pytrace=False)
    skipped = [f"{name}: {row.messages[0] if row.messages else 'skipped'}" for name, row in report.targets.items() if row.status == "skipped"]
    if skipped:
        pytest.skip("; ".join(skipped))
    return report


@pytest.fixture
def edgex_parity(tmp_path: Path, request: pytest.FixtureRequest) -> Callable[..., Report]:
    """``edgex_parity(model, targets=("onnx",), **options)``: :func:`check_parity` with its output
    in the test's ``tmp_path`` (one folder per call) and ``--edgex-cache`` applied."""
    calls = itertools.count(1)
    cache = request.config.getoption("--edgex-cache")

    def check(model: Any, targets: Sequence[str] = ("onnx",), **convert_options: Any) -> Report:
        if cache is not None:
            convert_options.setdefault("cache", cache)
        return check_parity(model, targets, out=tmp_path / f"edgex-{next(calls)}", **convert_options)

    return check
