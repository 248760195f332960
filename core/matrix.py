"""``edgex matrix CONFIG.toml``: every model x compression preset x precision x target.

A *cell* is one target at one precision for one model under one compression preset (or none:
the uncompressed baseline is always a row). Cells of one (model, preset) pair share the model
loading and the compression, so the pair is the unit of work an executor schedules. Each cell's
result is a report.json object with one target, plus a ``cell`` key naming its coordinates;
``results.json`` is the list of them, rendered as ``junit.xml``, ``report.md`` and
``report.html``.
"""

from __future__ import annotations

import copy
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from edgex.core.compression.options import OPTION_NAMES
from edgex.core.errors import UsageError, exit_code_for_cells

if TYPE_CHECKING:  # pragma: no cover
    from edgex.core.plugin_manager import PluginManager

TOP_KEYS = {"targets", "precisions", "samples", "timeout_s", "seed", "rewrite", "models", "compression"}
MODEL_KEYS = {"spec", "name", "input_shape", "example_inputs", "calibration", "eval_data", "weights"}
COMPRESSION_KEYS = {"name", *OPTION_NAMES}  # the compress stage's own option names
PATH_KEYS = {"example_inputs", "calibration", "eval_data", "weights", "distill_data"}


@dataclass(frozen=True)
class MatrixModel:
    name: str
    spec: str
    input_shapes: tuple[tuple[int, ...], ...] | None = None
    example_inputs: Path | None = None
    calibration: Path | None = None
    eval_data: Path | None = None
    weights: Path | None = None


@dataclass(frozen=True)
class Preset:
    name: str
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MatrixConfig:
    targets: tuple[str, ...]
    precisions: tuple[str, ...] | None
    samples: int
    timeout_s: float | None
    seed: int
    models: tuple[MatrixModel, ...]
    presets: tuple[Preset, ...]
    #: ``--rewrite`` for every cell (:data:`edgex.core.settings.REWRITE_MODES`)
    rewrite: str = "auto"


def _check_keys(table: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _shapes(value: Any, where: str) -> tuple[tuple[int, ...], ...] | None:
    if value is None:
        return None
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return (tuple(value),)
    if isinstance(value, list) and value and all(isinstance(v, list) and all(isinstance(d, int) for d in v) for v in value):
        return tuple(tuple(v) for v in value)
    raise UsageError(f"{where}: input_shape must be a list of integers (or a list of such lists), got {value!r}")


def load_config(path: Path) -> MatrixConfig:
    """Parse and check a matrix TOML file; unknown keys and wrong types are usage errors."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"matrix config not found: {path}")
    try:
        raw = tomllib.loads(path.read_text())
    except Exception as exc:
        raise UsageError(f"{path} is not valid TOML: {exc}") from exc
    _check_keys(raw, TOP_KEYS, str(path))
    base = path.parent

    def resolve(value: Any) -> Path | None:
        return None if value is None else (base / str(value))

    targets = raw.get("targets", ["all"])
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise UsageError(f"{path}: targets must be a non-empty list of target names")
    precisions = raw.get("precisions")
    if precisions is not None and (not isinstance(precisions, list) or not all(isinstance(p, str) for p in precisions)):
        raise UsageError(f"{path}: precisions must be a list like [\"fp32\", \"int8\"]")
    models = []
    for index, table in enumerate(raw.get("models", [])):
        where = f"{path}: [[models]] #{index + 1}"
        _check_keys(table, MODEL_KEYS, where)
        if "spec" not in table:
            raise UsageError(f"{where} has no spec")
        spec = str(table["spec"])
        if ":" in spec and spec.split(":", 1)[0].endswith(".py"):
            spec = str(base / spec.split(":", 1)[0]) + ":" + spec.split(":", 1)[1]
        elif not spec.startswith("examples:") and ":" not in spec:
            spec = str(base / spec)
        models.append(
            MatrixModel(
                name=str(table.get("name") or Path(str(table["spec"])).name),
                spec=spec,
                input_shapes=_shapes(table.get("input_shape"), where),
                example_inputs=resolve(table.get("example_inputs")),
                calibration=resolve(table.get("calibration")),
                eval_data=resolve(table.get("eval_data")),
                weights=resolve(table.get("weights")),
            )
        )
    if not models:
        raise UsageError(f"{path}: no [[models]] given")
    presets = []
    for index, table in enumerate(raw.get("compression", [])):
        where = f"{path}: [[compression]] #{index + 1}"
        _check_keys(table, COMPRESSION_KEYS, where)
        options = {k: (str(base / v) if k in PATH_KEYS else v) for k, v in table.items() if k != "name"}
        presets.append(Preset(str(table.get("name") or f"compression{index + 1}"), options))
    samples = raw.get("samples", 16)
    if not isinstance(samples, int) or samples < 1:
        raise UsageError(f"{path}: samples must be a positive integer")
    timeout = raw.get("timeout_s", 900)
    from edgex.core.settings import REWRITE_MODES

    rewrite = raw.get("rewrite", "auto")
    if rewrite not in REWRITE_MODES:
        raise UsageError(f"{path}: rewrite must be one of {', '.join(repr(m) for m in REWRITE_MODES)}, got {rewrite!r}")
    return MatrixConfig(
        targets=tuple(targets),
        precisions=tuple(precisions) if precisions else None,
        samples=samples,
        timeout_s=float(timeout) if timeout else None,
        seed=int(raw.get("seed", 0)),
        models=tuple(models),
        presets=(Preset("none"), *presets),
        rewrite=rewrite,
    )


# --------------------------------------------------------------------------- running


def _group_name(model: MatrixModel, preset: Preset) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in model.name)
    return f"{safe}--{preset.name}"


def _cell(model_cfg: MatrixModel, preset: Preset, target: str, precision: str, status: str, message: str,
          row: Mapping[str, Any] | None = None, report: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One cell: a report.json object with one target row, plus its coordinates."""
    base = dict(report or {"edgex_version": _version(), "command": "matrix", "model": {"spec": model_cfg.spec}, "compression": None})
    base["targets"] = {target: dict(row) if row else {"status": status, "precision": precision, "messages": [message]}}
    base["cell"] = {"model": model_cfg.name, "compression": preset.name, "precision": precision, "target": target}
    return base


def _plans(manager: PluginManager, config: MatrixConfig) -> dict[str, list[str]]:
    """precision -> the targets run at it (a target runs only the precisions it offers)."""
    plans: dict[str, list[str]] = {}
    for name in _expand_targets(manager, config.targets):
        spec = manager.resolve_target(name).spec
        for precision in config.precisions or (spec.default_precision,):
            if precision in spec.precisions:
                plans.setdefault(precision, []).append(name)
    return plans


def _unfinished_group(manager: PluginManager, config: MatrixConfig, group: Group, message: str, out: Path, since: float) -> list[dict[str, Any]]:
    """The cells of a group that did not finish (interrupted, or its worker crashed): the targets
    its runs reported before they ended keep their rows (an interrupted ``convert`` writes its
    report.json), the others are ``error`` with ``message``."""
    import json

    model_cfg, preset = config.models[group[0]], config.presets[group[1]]
    cells = []
    for precision, targets in _plans(manager, config).items():
        path = out / "cells" / _group_name(model_cfg, preset) / precision / "report.json"
        try:  # a report older than this matrix run is an earlier run's
            report = json.loads(path.read_text()) if path.stat().st_mtime >= since else {}
        except (OSError, ValueError):
            report = {}
        rows = report.get("targets", {})
        for target in targets:
            row = rows.get(target)
            if row and row.get("messages") != ["interrupted"]:
                cells.append(_report_cell(model_cfg, preset, precision, target, row, report))
            else:
                cells.append(_cell(model_cfg, preset, target, precision, "error", message))
    return cells


def _report_cell(model_cfg: MatrixModel, preset: Preset, precision: str, target: str, row: Mapping[str, Any], report: Mapping[str, Any]) -> dict[str, Any]:
    """A cell from a target's row in a group's report.json (artifact paths made relative to the
    matrix's --out), its coordinates naming the group's own report.html (``page``)."""
    row, folder = dict(row), Path("cells") / _group_name(model_cfg, preset) / precision
    row["artifacts"] = [str(folder / a) for a in row.get("artifacts", [])]
    cell = _cell(model_cfg, preset, target, precision, row["status"], "", row, {k: v for k, v in report.items() if k != "targets"})
    cell["cell"]["page"] = (folder / "report.html").as_posix()
    return cell


def run_group(config: MatrixConfig, model_index: int, preset_index: int, out: str, cache_dir: str | None = None, slots: Any = None) -> list[dict[str, Any]]:
    """One (model, preset): load and compress once, then every precision's targets. Returns cells.
    With ``cache_dir``, each target's result is served from / stored in that result cache; with
    ``slots`` (:class:`WorkerSlots`), its targets convert several at once while slots are free."""
    from edgex.core import pipeline
    from edgex.core.cache import ResultCache
    from edgex.core.compression.options import steps_from_options
    from edgex.core.loading import load_model
    from edgex.core.plugin_manager import make_manager
    from edgex.core.settings import make_settings
    from edgex.core.supervisor import StageTimeout, time_limit

    model_cfg, preset = config.models[model_index], config.presets[preset_index]
    manager = make_manager()
    cache = ResultCache(Path(cache_dir)) if cache_dir else None
    group_out = Path(out) / "cells" / _group_name(model_cfg, preset)
    cells: list[dict[str, Any]] = []

    def bad_input(target: str, precision: str, exc: UsageError) -> dict[str, Any]:
        """A cell the config's input stopped: ``error`` with ``bad_input: true``, advice in TOML keys."""
        base = _cell(model_cfg, preset, target, precision, "error", f"bad input: {toml_advice(exc.message)}")
        base["targets"][target]["bad_input"] = True
        return base

    try:
        # the model's own code: the cell's time limit covers it, and a supervisor knows the stage
        with time_limit(config.timeout_s, "load", f"loading the model {model_cfg.spec}"):
            reference = load_model(
                model_cfg.spec,
                input_shapes=model_cfg.input_shapes,
                example_inputs=model_cfg.example_inputs,
                weights=model_cfg.weights,
            )
        compression = steps_from_options(preset.options) if preset.options else ()
    except UsageError as exc:
        return [bad_input(t, p or "-", exc) for t in config.targets for p in (config.precisions or ("default",))]
    except StageTimeout as exc:
        return [_cell(model_cfg, preset, t, p or "-", "error", exc.message) for t in config.targets for p in (config.precisions or ("default",))]

    for precision, targets in _plans(manager, config).items():
        settings = make_settings(
            targets=tuple(targets),
            precision=precision,
            samples=config.samples,
            seed=config.seed,
            calibration=model_cfg.calibration,
            eval_data=model_cfg.eval_data,
            timeout_s=config.timeout_s,
            compression=compression,
            distill_data=preset.options.get("distill_data"),
            parity_inputs=model_cfg.example_inputs,
            rewrite=config.rewrite,
        )
        try:
            report = pipeline.convert(manager, reference, settings, group_out / precision, command="matrix", cache=cache, slots=slots).to_json()
        except UsageError as exc:
            cells += [bad_input(t, precision, exc) for t in targets]
            continue
        cells += [_report_cell(model_cfg, preset, precision, target, row, report) for target, row in report["targets"].items()]
    return cells


#: the command line's flags as a matrix config spells them (advice in a cell names the TOML key)
TOML_KEYS = {"--input-shape": "input_shape", "--example-inputs": "example_inputs", "--calibration": "calibration", "--eval-data": "eval_data", "--weights": "weights", "--distill-data": "distill_data"}


def toml_advice(message: str) -> str:
    for flag, key in TOML_KEYS.items():
        message = message.replace(flag, key)
    return message


def _expand_targets(manager: PluginManager, names: Sequence[str]) -> list[str]:
    if "all" in names:
        return [t for t in manager.targets() if manager.backend_status(t).available]
    return [manager.resolve_target(n).name for n in names]


def _version() -> str:
    from edgex.core.version import __version__

    return __version__


Group = tuple[int, int]  # (model index, preset index)


@dataclass(frozen=True)
class Execution:
    """How a matrix runs its groups: where results go, how many at once, the result cache
    (None: none), and for Ray the cluster to join (None: a local one started for the run)."""

    out: Path
    jobs: int = 1
    cache_dir: Path | None = None
    address: str | None = None
    #: when the run started (a group's report.json older than this is an earlier run's)
    started: float = 0.0


#: an executor runs the groups and files each finished group's cells under its key in ``done``
#: as it finishes, so that an interrupted matrix still reports what finished
Runner = Callable[[MatrixConfig, list[Group], Execution, dict[Group, list[dict[str, Any]]]], None]

#: how long stopped workers get to end their targets' children and write their reports
WORKER_GRACE_S = 30.0


class WorkerSlots:
    """``--jobs`` slots, one per target child converting at once, shared by the local workers.

    A group is the unit of work a worker takes, but groups are uneven (one model's targets can
    be a third of a matrix): a worker whose group has targets waiting starts another child
    whenever a slot is free, so that the last group running still uses every core. Each worker
    counts its own slots in shared memory, so that the matrix frees the slots of a worker that
    died holding them."""

    POLL_S = 0.05

    def __init__(self, context: Any, limit: int) -> None:
        self.limit, self.lock, self.held, self.index = limit, context.Lock(), context.Array("i", limit, lock=False), 0

    def for_worker(self, index: int) -> "WorkerSlots":
        """The same slots, counted for worker ``index``."""
        mine = copy.copy(self)
        mine.index = index
        return mine

    def try_take(self) -> bool:
        with self.lock:
            if sum(self.held) >= self.limit:
                return False
            self.held[self.index] += 1
            return True

    def take(self) -> None:
        import time

        while not self.try_take():
            time.sleep(self.POLL_S)

    def give(self) -> None:
        with self.lock:
            self.held[self.index] = max(0, self.held[self.index] - 1)

    def forget(self, index: int) -> None:
        """Worker ``index`` died: whatever it held is free."""
        with self.lock:
            self.held[index] = 0


def _local(config: MatrixConfig, groups: list[Group], execution: Execution, done: dict[Group, list[dict[str, Any]]]) -> None:
    out, jobs, cache_dir = execution.out, execution.jobs, _str_or_none(execution.cache_dir)
    if jobs <= 1:
        for group in groups:
            done[group] = run_group(config, *group, str(out), cache_dir)
        return
    import multiprocessing
    from multiprocessing.connection import wait

    from edgex.core.isolation import describe_exit

    # spawn, not fork: each worker forks its own per-target children and needs its own torch pool.
    # A worker runs group after group, so that the imports it pays (torch, TensorFlow: seconds
    # each) are paid once per worker, not once per group.
    context = multiprocessing.get_context("spawn")
    idle: list[tuple[Any, Any]] = []
    workers: list[Any] = []
    slots = WorkerSlots(context, jobs)
    free_indices = list(range(jobs))

    def start_worker() -> tuple[Any, Any]:
        connection, theirs = context.Pipe()
        index = free_indices.pop(0)
        # not daemonic: a worker forks its targets' children
        worker = context.Process(target=_group_worker, args=(theirs, config, str(out), cache_dir, slots.for_worker(index)))
        worker.start()
        theirs.close()
        worker.slot_index = index
        workers.append(worker)
        return connection, worker

    def run(tasks: list[tuple[str, Any]], on_result: Callable[[Any, str, Any], None], on_death: Callable[[Any, str], None]) -> None:
        """Each task to the next free worker; a worker that dies is replaced for the next task."""
        pending, busy = list(tasks), {}
        while pending or busy:
            while pending and len(busy) < jobs:
                connection, worker = idle.pop() if idle else start_worker()
                task = pending.pop(0)
                connection.send(task)
                busy[connection] = (task, worker)
            for connection in wait(list(busy)):
                (_, what), worker = busy.pop(connection)
                try:
                    kind, payload = connection.recv()
                except EOFError:
                    worker.join()
                    connection.close()
                    slots.forget(worker.slot_index)
                    free_indices.append(worker.slot_index)
                    on_death(what, f"its worker process {describe_exit(worker.exitcode)}")
                    continue
                on_result(what, kind, payload)
                idle.append((connection, worker))

    try:
        order = list(groups)
        if len(groups) > jobs:
            # the biggest models first, so that the last group running is a small one; a model
            # is weighed in a worker (its factory is the user's code) and one that cannot be
            # weighed keeps its place, its groups reporting why
            sizes: dict[int, int] = {}

            def weighed(model_index: int, kind: str, size: Any) -> None:
                sizes[model_index] = size if kind == "size" else 0

            run([("size", m) for m in sorted({g[0] for g in groups})], weighed, lambda model_index, why: None)
            order.sort(key=lambda g: -sizes.get(g[0], 0))

        def finished(group: Group, kind: str, payload: Any) -> None:
            done[group] = payload if kind == "cells" else _unfinished_group(_manager(), config, group, payload, out, execution.started)

        def died(group: Group, why: str) -> None:
            done[group] = _unfinished_group(_manager(), config, group, why, out, execution.started)

        run([("group", g) for g in order], finished, died)
        for connection, worker in idle:
            connection.send(None)  # no more groups: the worker returns
            worker.join()
    except KeyboardInterrupt:  # SIGINT/SIGTERM to the matrix: each worker ends its own run cleanly
        _stop_workers(workers)
        raise


def model_size(config: MatrixConfig, model_index: int) -> int:
    """How much graph a model has to convert (modules of a torch model, nodes of an ONNX one):
    what orders the groups of a parallel matrix. 0 when it cannot be loaded."""
    from edgex.core.loading import load_model

    model_cfg = config.models[model_index]
    try:
        model = load_model(model_cfg.spec, input_shapes=model_cfg.input_shapes, example_inputs=model_cfg.example_inputs, weights=model_cfg.weights)
    except UsageError:
        return 0
    if model.module is not None:
        return sum(1 for _ in model.module.modules())
    import onnx

    return len(onnx.load(str(model.onnx_path), load_external_data=False).graph.node)


def _group_worker(connection: Any, config: MatrixConfig, out: str, cache_dir: str | None, slots: WorkerSlots) -> None:
    """A spawned worker: tasks received one at a time until ``None`` -- a model to weigh
    (:func:`model_size`) or a group to run -- each one's result sent back. It leads its own
    process group, so that a Ctrl-C in the terminal reaches only the matrix, which stops the
    workers with SIGTERM; they then end their targets' children and write their reports as
    ``edgex convert`` does."""
    from edgex.core.isolation import die_with_parent, end_run_on_signals, interruption

    os.setpgid(0, 0)
    die_with_parent()
    end_run_on_signals()
    try:
        while (task := connection.recv()) is not None:
            kind, what = task
            try:
                if kind == "size":
                    connection.send(("size", model_size(config, what)))
                else:
                    connection.send(("cells", run_group(config, *what, out, cache_dir, slots)))
            except KeyboardInterrupt as exc:  # stopped (the matrix, interrupted too, reports the group itself)
                connection.send(("error", f"interrupted by {interruption(exc).signal_name}"))
                return
            except BaseException as exc:  # noqa: BLE001 -- any failure is this group's, not the matrix's
                connection.send(("error", f"its worker failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"))
    except (EOFError, KeyboardInterrupt):  # the matrix is gone, or stopped this worker between groups
        pass
    finally:
        connection.close()


def _stop_workers(workers: list[Any]) -> None:
    """SIGTERM each worker, wait for them to finish cleaning up, then kill what is left."""
    import signal
    import time

    for worker in workers:
        if worker.is_alive():
            os.kill(worker.pid, signal.SIGTERM)
    deadline = time.monotonic() + WORKER_GRACE_S
    for worker in workers:
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            try:
                os.killpg(worker.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            worker.join()


def _str_or_none(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _ray(config: MatrixConfig, groups: list[Group], execution: Execution, done: dict[Group, list[dict[str, Any]]]) -> None:
    try:
        import ray
    except ImportError:
        raise UsageError("--executor ray needs Ray: pip install 'edgex[ray]' (or use --executor local)") from None
    started_here = not ray.is_initialized()
    if started_here:
        runtime_env = {"env_vars": {k: v for k, v in os.environ.items() if k.startswith("EDGEX_")}}
        if execution.address:  # an existing cluster: its workers need edgex installed and --out on a shared file system
            try:
                ray.init(address=execution.address, log_to_driver=False, runtime_env=runtime_env)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise UsageError(f"--address {execution.address}: cannot join the Ray cluster ({str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__})") from None
        else:
            ray.init(num_cpus=max(execution.jobs, 1), include_dashboard=False, log_to_driver=False, runtime_env=runtime_env)
    try:
        remote = ray.remote(num_cpus=1)(run_group)
        out, cache_dir = str(execution.out.resolve()), _str_or_none(execution.cache_dir and execution.cache_dir.resolve())
        tasks = {remote.remote(config, m, p, out, cache_dir): (m, p) for m, p in groups}
        waiting = list(tasks)
        while waiting:
            finished, waiting = ray.wait(waiting, num_returns=1)
            for ref in finished:
                done[tasks[ref]] = ray.get(ref)
    finally:
        if started_here:
            ray.shutdown()  # ends the workers, finished or not (a joined cluster itself stays up)


EXECUTORS: dict[str, Runner] = {"local": _local, "ray": _ray}


def _manager() -> PluginManager:
    from edgex.core.plugin_manager import make_manager

    return make_manager()


def run_matrix(
    config_path: Path,
    out: Path,
    *,
    jobs: int = 1,
    executor: str = "local",
    cache_dir: Path | None = None,
    use_cache: bool = True,
    address: str | None = None,
) -> list[dict[str, Any]]:
    """Run every cell and write results.json, junit.xml, report.md and report.html into ``out``.

    Cells are cached by content (docs/cache.md) in ``cache_dir``, by default ``out/.edgex-cache``
    (nothing is written outside ``out`` unless asked); ``use_cache=False`` neither reads nor writes it.
    ``address`` joins a running Ray cluster (``executor="ray"`` only).

    Interrupted (SIGINT/SIGTERM), the matrix stops its workers, writes the files for the groups
    that finished (the others' cells ``error``: "interrupted") and re-raises."""
    import time

    from edgex.core.isolation import interruption

    if executor not in EXECUTORS:
        raise UsageError(f"unknown executor {executor!r}; choose {' or '.join(EXECUTORS)}")
    if jobs < 1:
        raise UsageError("--jobs must be at least 1")
    if address and executor != "ray":
        raise UsageError("--address names a Ray cluster: use it with --executor ray")
    config = load_config(config_path)
    manager = _manager()
    _expand_targets(manager, config.targets)  # unknown target names fail before any work
    for precision in config.precisions or ():
        from edgex.core.types import PRECISIONS

        if precision not in PRECISIONS:
            raise UsageError(f"{config_path}: unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    from edgex.core.cache import MATRIX_CACHE_DIR

    groups = [(m, p) for m in range(len(config.models)) for p in range(len(config.presets))]
    done: dict[Group, list[dict[str, Any]]] = {}
    execution = Execution(out, jobs, (Path(cache_dir) if cache_dir else out / MATRIX_CACHE_DIR) if use_cache else None, address,
                          started=time.time() - 1.0)  # file times are coarser than the clock on some file systems
    try:
        EXECUTORS[executor](config, groups, execution, done)
    except KeyboardInterrupt as exc:
        message = f"interrupted by {interruption(exc).signal_name}"
        cells = [c for g in groups for c in (done[g] if g in done else _unfinished_group(manager, config, g, "interrupted", out, execution.started))]
        _write_results(out, cells, message)
        raise
    cells = [c for g in groups for c in done[g]]
    _write_results(out, cells)
    return cells


def _write_results(out: Path, cells: list[dict[str, Any]], message: str | None = None) -> None:
    from edgex.core.report import write_json_atomic, write_text_atomic, matrix_junit, matrix_markdown
    from edgex.core.report_html import matrix_page

    write_json_atomic(out / "results.json", cells)
    write_text_atomic(out / "junit.xml", matrix_junit(cells))
    write_text_atomic(out / "report.md", matrix_markdown(cells) + (f"\n{message}: the cells that had not finished are errors\n" if message else ""))
    write_text_atomic(out / "report.html", matrix_page(cells, f"{message}: the cells that had not finished are errors" if message else None))


def exit_code(cells: Sequence[Mapping[str, Any]]) -> int:
    """3 when a target failed (as convert), else 2 when a cell's input was bad, else 1 / 0
    (:func:`edgex.core.errors.exit_code_for_cells`, which the supervisor also reads back)."""
    return exit_code_for_cells(cells)
