"""The ``edgex`` command line.

Heavy frameworks are imported by the commands that use them, never here: ``edgex --help`` and
``edgex targets`` stay fast. Errors a user can act on print as one line (``edgex: error: ...``)
with the exit code of docs/contract.md; tracebacks only with ``--debug``.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from edgex.core.version import __version__
from edgex.core.errors import EdgexError, UsageError
from edgex.core.isolation import end_run_on_signals
from edgex.core.settings import MIXED_PRECISION_MODES, REWRITE_MODES
from edgex.core.supervisor import REPORTING, reported, supervise, time_limit

if TYPE_CHECKING:  # pragma: no cover -- the manager imports pluggy; `edgex --help` stays light
    from edgex.core.plugin_manager import PluginManager

EPILOG = "exit codes: 0 all passed, 1 an artifact failed parity or its check was inconclusive, 2 bad usage or input, 3 a target failed to convert or its backend is missing"


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# --------------------------------------------------------------------------- options


def _manager():
    from edgex.core.plugin_manager import make_manager

    return make_manager()


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--input-shape", action="append", metavar="N,C,H,W", help="input shape, once per input (e.g. 1,3,224,224)")
    group.add_argument("--example-inputs", type=Path, metavar="FILE", help="example inputs (.npy, or .npz with one array per input); several rows are used as parity samples")
    group.add_argument("--weights", type=Path, metavar="FILE", help="a state dict to load into a factory's model (weights_only=True)")
    group.add_argument("--trust-pickle", action="store_true", help="allow unpickling a whole nn.Module (runs code from the file: only for files you trust)")


def _add_artifact_arguments(parser: argparse.ArgumentParser, reference_help: str) -> None:
    """An existing artifact, the reference it must match, and how to read it (validate, explain)."""
    parser.add_argument("artifact", type=Path, metavar="ARTIFACT")
    parser.add_argument("--reference", required=True, metavar="MODEL", help=reference_help)
    parser.add_argument("--target", "-t", metavar="T", help="the artifact's target (default: from its file name)")
    parser.add_argument("--quantize", choices=["none", "fp16", "int8", "dynamic-int8"], help="judge at this precision (default: read from the artifact)")
    _add_model_options(parser)


def _add_parity_options(parser: argparse.ArgumentParser, samples: int = 32, eval_data: bool = True) -> None:
    group = parser.add_argument_group("parity")
    group.add_argument("--samples", type=int, default=samples, metavar="N", help=f"parity inputs per target (default {samples})")
    group.add_argument("--seed", type=int, default=0, help="seed for sampled inputs (default 0)")
    group.add_argument("--atol", type=float, help="absolute tolerance, replacing the precision's own")
    group.add_argument("--rtol", type=float, help="relative tolerance, replacing the precision's own")
    if eval_data:
        group.add_argument("--eval-data", type=Path, metavar="FILE.npz", help="labelled data (x, y) for task accuracy")
        group.add_argument("--max-accuracy-drop", type=float, metavar="POINTS", help="with labelled data, the accuracy a pass may lose (default 0.5 points)")
        group.add_argument("--min-top1-agreement", type=float, metavar="SHARE", help="with labelled data, the top-1 agreement a pass needs (default 0.99)")
    group.add_argument("--timeout", type=float, metavar="S", help="per-target time limit in seconds")


OVERWRITE_HELP = "use --out even when it holds another model's results or files edgex did not write (edgex replaces only what it writes itself)"


def _add_output_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("edgex-out"), metavar="DIR", help="output folder (default ./edgex-out); nothing is written outside it")
    parser.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    parser.add_argument("--json", action="store_true", help="print report.json instead of the table")


def _add_target_options(parser: argparse.ArgumentParser, manager: PluginManager) -> None:
    """``--<option>`` for every option an installed target declares."""
    if manager is None:
        return
    seen: dict[str, Any] = {}
    group = parser.add_argument_group("target options")
    try:
        targets = manager.targets().values()
    except EdgexError:
        return  # reported when the command resolves its targets
    for target in targets:
        for option in target.spec.options:
            if option.name in seen:
                continue
            seen[option.name] = option
            flag = "--" + option.name.replace("_", "-")
            help_text = f"{option.help} [{target.name}]"
            if option.type is bool:
                group.add_argument(flag, dest=f"opt_{option.name}", action="store_true", default=None, help=help_text)
            else:
                group.add_argument(
                    flag, dest=f"opt_{option.name}", type=option.type, default=None, help=help_text,
                    choices=list(option.choices) or None,
                )


def _target_options(args: argparse.Namespace) -> dict[str, Any]:
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("opt_") and v is not None}


def _shapes(args: argparse.Namespace) -> list[tuple[int, ...]] | None:
    from edgex.core.loading import parse_shape

    return [parse_shape(s) for s in args.input_shape] if args.input_shape else None


def _quantize(value: str | None) -> str | None:
    return {"none": "fp32", None: None}.get(value, value)


# --------------------------------------------------------------------------- commands


def _print_report(report: Any, args: argparse.Namespace, out: Path) -> None:
    from edgex.core.report import dumps, render_table, summary_line

    if args.json:
        print(dumps(report.to_json()))
        return
    print(render_table(report))
    print(summary_line(report, out))
    if args.debug:
        for row in report.targets.values():
            if getattr(row, "traceback", ""):
                print(f"--- {row.name} traceback (from the child process) ---\n{row.traceback}", file=sys.stderr)


def cmd_targets(args: argparse.Namespace) -> int:
    from edgex.core.report import dumps

    manager = _manager()
    rows = []
    for target in manager.targets().values():
        status = manager.backend_status(target.name)
        rows.append(
            {
                "name": target.name,
                "aliases": list(target.spec.aliases),
                "plugin": target.plugin,
                "package": target.package,
                "version": target.version,
                "status": ("emulated" if status.emulated else "available") if status.available else "unavailable",
                "backend": status.backend,
                "install_hint": status.install_hint or None,
                "precisions": list(target.spec.precisions),
                "refuses": dict(target.spec.refuses),
                "default_precision": target.spec.default_precision,
                "artifacts": list(target.spec.artifact_kinds),
                "description": target.spec.description,
            }
        )
    if args.json:
        print(dumps(rows))
        return 0
    from edgex.core.tables import table

    lines = []
    for r in rows:
        backend = r["backend"] if r["status"] != "unavailable" else f"{r['backend']} -- {r['install_hint'] or 'unavailable'}"
        precisions = ",".join(r["precisions"]) + (f" (no {', '.join(r['refuses'])})" if r["refuses"] else "")
        lines.append((r["name"], ",".join(r["aliases"]) or "-", r["status"], precisions, f"{r['plugin']} ({r['package']} {r['version']})", backend))
    print("\n".join(table(("target", "aliases", "status", "precisions", "plugin", "backend"), lines)))
    return 0


def _toolchain_specs() -> dict[str, tuple[Any, list[str]]]:
    """Each toolchain the installed targets declare, with the targets that run in it."""
    specs: dict[str, tuple[Any, list[str]]] = {}
    for target in _manager().targets().values():
        spec = target.spec.toolchain
        if spec is not None:
            specs.setdefault(spec.name, (spec, []))[1].append(target.name)
    return specs


def cmd_toolchains(args: argparse.Namespace) -> int:
    """List, build or remove the environments targets declare (docs/toolchains.md)."""
    from edgex.core import toolchains

    specs = _toolchain_specs()
    if args.action in ("build", "remove"):
        if not args.name:
            raise UsageError(f"edgex toolchains {args.action} needs a NAME: one of {', '.join(specs) or '(none: no installed target declares a toolchain)'}")
        if args.name not in specs and args.action == "build":
            raise toolchains.unknown(args.name, list(specs))
    if args.action == "build":
        started = time.monotonic()
        toolchain, made = toolchains.build(specs[args.name][0], say=lambda line: print(line, file=sys.stderr))
        if made:
            print(f"toolchain {args.name} built in {time.monotonic() - started:.0f} s: {toolchain.path}")
        else:
            print(f"toolchain {args.name} is built: {toolchain.path}")
        return 0
    if args.action == "remove":
        removed = toolchains.remove(args.name)
        print("\n".join(f"removed {path}" for path in removed) if removed else f"toolchain {args.name} has no environment in {toolchains.root()}")
        return 0
    rows = []
    for name, (spec, targets) in specs.items():
        toolchain = toolchains.locate(spec)
        others = [p for p in toolchains.folders(name) if p != toolchain.path]
        state = "built" if toolchain.built else ("unfinished (build again)" if toolchain.path.exists() else "not built")
        rows.append({"name": name, "targets": targets, "state": state, "python": toolchain.version, "requirements": list(spec.requirements), "path": str(toolchain.path), "stale": [str(p) for p in others]})
    if args.json:
        from edgex.core.report import dumps

        print(dumps(rows))
        return 0
    from edgex.core.tables import table

    if not rows:
        print(f"no installed target declares a toolchain (they live in {toolchains.root()})")
        return 0
    lines = [(r["name"], ",".join(r["targets"]), r["state"], r["python"], " ".join(r["requirements"]), r["path"]) for r in rows]
    print("\n".join(table(("toolchain", "targets", "state", "python", "requirements", "path"), lines)))
    for r in rows:
        for path in r["stale"]:
            print(f"{r['name']}: {path} is of an older spec (edgex toolchains remove {r['name']} removes every environment of it)")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from edgex.core.report import dumps

    manager = _manager()
    infos = manager.plugins()
    if args.json:
        print(dumps([p.to_json() for p in infos]))
    else:
        for info in infos:
            where = f"{info.package} {info.version}".strip()
            line = f"{info.name}  [{info.status}]  {where}"
            print(line)
            if info.status == "failed":
                print(f"    error: {info.error}")
            else:
                print(f"    hooks: {', '.join(info.hooks)}")
    return 1 if any(p.status == "failed" for p in infos) and args.strict else 0


def _settings(args: argparse.Namespace, **extra: Any):
    from edgex.core.settings import make_settings

    return make_settings(
        samples=args.samples,
        seed=args.seed,
        atol=args.atol,
        rtol=args.rtol,
        eval_data=getattr(args, "eval_data", None),
        max_accuracy_drop=getattr(args, "max_accuracy_drop", None),
        min_top1_agreement=getattr(args, "min_top1_agreement", None),
        parity_inputs=args.example_inputs,
        options=_target_options(args),
        timeout_s=args.timeout,
        **extra,
    )


def _load(args: argparse.Namespace, spec: str):
    from edgex.core.loading import load_model

    # the model's own code runs here: --timeout covers it, and the supervisor knows the stage
    with time_limit(getattr(args, "timeout", None), "load", f"loading the model {spec}"):
        return load_model(spec, input_shapes=_shapes(args), example_inputs=args.example_inputs, weights=args.weights, trust_pickle=args.trust_pickle)


def _reported(args: argparse.Namespace, manager: PluginManager | None, report_path: Path, kind: str = "report") -> None:
    """Tell the supervisor the report this run wrote and the targets it must hold a row for."""
    asked = getattr(args, "target", None) or ()
    asked = (asked,) if isinstance(asked, str) else asked  # validate's --target is one name, convert's a list
    names = [] if manager is None else [manager.resolve_target(t).name for t in asked if t != "all"]
    reported(report_path.resolve(), names, kind)


def _compression_steps(args: argparse.Namespace) -> tuple[Any, ...]:
    from edgex.core.compression.options import steps_from_args

    return steps_from_args(args)


def cmd_convert(args: argparse.Namespace, manager: PluginManager) -> int:
    from edgex.core import pipeline

    model = _load(args, args.model)
    settings = _settings(
        args,
        targets=tuple(args.target or ()),
        precision=_quantize(args.quantize),
        calibration=args.calibration,
        compression=_compression_steps(args),
        distill_data=getattr(args, "distill_data", None),
        rewrite=args.rewrite,
        mixed_precision=args.mixed_precision,
        keep_wider=tuple(args.keep_wider) if args.keep_wider else None,
    )
    cache = None
    if args.cache is not None and not args.no_cache:
        from edgex.core.cache import ResultCache

        cache = ResultCache(args.cache)
    report = pipeline.convert(manager, model, settings, args.out, overwrite=args.overwrite, cache=cache)
    _reported(args, manager, args.out / "report.json")
    _print_report(report, args, args.out)
    return report.exit_code


def cmd_compress(args: argparse.Namespace, manager: PluginManager) -> int:
    from edgex.core import pipeline
    from edgex.core.compression import check_program_path, save_program
    from edgex.core.report import describe_compression, dumps
    from edgex.core.settings import make_settings

    steps = _compression_steps(args)
    if not steps:
        raise UsageError("nothing to do: give --prune AMOUNT (and --distill to recover accuracy)")
    check_program_path(args.out)
    model = _load(args, args.model)
    settings = make_settings(seed=args.seed, calibration=args.calibration, eval_data=args.eval_data, compression=steps, distill_data=args.distill_data)
    compressed, summary = pipeline.compress(manager, model, settings)
    save_program(compressed, args.out)
    if args.json:
        print(dumps({"model": args.model, "out": str(args.out), "compression": summary}))
    else:
        print("\n".join(describe_compression(summary)))
        print(f"saved {args.out} (convert it with: edgex convert {args.out} --target ...)")
    return 0


def cmd_validate(args: argparse.Namespace, manager: PluginManager) -> int:
    from edgex.core import pipeline

    model = _load(args, args.reference)
    settings = _settings(args, precision=_quantize(args.quantize), calibration=args.calibration)
    report = pipeline.validate(manager, args.artifact, model, settings, args.out, target=args.target, overwrite=args.overwrite)
    _reported(args, manager, args.out / "report.json")
    _print_report(report, args, args.out)
    return report.exit_code


def cmd_explain(args: argparse.Namespace, manager: PluginManager) -> int:
    from edgex.core.explain import explain, render
    from edgex.core.report import dumps

    model = _load(args, args.reference)
    settings = _settings(args, precision=_quantize(args.quantize), calibration=args.calibration)
    report = explain(manager, args.artifact, model, settings, args.out, target=args.target, overwrite=args.overwrite)
    if args.json:
        print(dumps(report.to_json()))
    else:
        print(render(report))
        print(f"explain.json: {args.out / 'explain.json'}, page: {args.out / 'explain.html'}")
    return report.exit_code


def cmd_check(args: argparse.Namespace, manager: PluginManager) -> int:
    from edgex.core.check import check, render
    from edgex.core.report import dumps
    from edgex.core.settings import make_settings

    model = _load(args, args.model)
    settings = make_settings(
        targets=tuple(args.target or ()), precision=_quantize(args.quantize), samples=args.samples, seed=args.seed,
        parity_inputs=args.example_inputs, rewrite=args.rewrite,
    )
    report = check(manager, model, settings)
    print(dumps(report.to_json()) if args.json else render(report))
    return report.exit_code


def cmd_matrix(args: argparse.Namespace) -> int:
    from edgex.core.matrix import exit_code, run_matrix
    from edgex.core.report import matrix_markdown

    cells = run_matrix(args.config, args.out, jobs=args.jobs, executor=args.executor, cache_dir=args.cache, use_cache=not args.no_cache, address=args.address)
    _reported(args, None, args.out / "results.json", "results")
    if args.json:
        from edgex.core.report import dumps

        print(dumps(cells))
    else:
        print(matrix_markdown(cells).strip())
        print(f"results: {args.out / 'results.json'}, page: {args.out / 'report.html'} (junit.xml, report.md beside them)")
    return exit_code(cells)


def cmd_demo(args: argparse.Namespace, manager: PluginManager) -> int:
    """The whole job on the shipped digits CNN, offline."""
    from edgex.core import pipeline
    from edgex.core.loading import load_model
    from edgex.core.settings import make_settings

    print("edgex demo: the digits CNN (trained on scikit-learn's digits) converted for every installed target,")
    print("each artifact run on its own runtime and compared with PyTorch on the digits test split.\n")
    model = load_model("examples:digits")
    settings = make_settings(targets=("all",), samples=args.samples, compression=_compression_steps(args), distill_data=args.distill_data)
    report = pipeline.convert(manager, model, settings, args.out, command="demo", overwrite=args.overwrite)
    _reported(args, manager, args.out / "report.json")
    _print_report(report, args, args.out)
    return report.exit_code


# --------------------------------------------------------------------------- parser


def build_parser(manager: PluginManager | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="edgex",
        description="Compress a PyTorch model, convert it for edge targets, and prove on each target's own runtime that it still computes the same thing.",
        epilog=EPILOG,
    )
    parser.add_argument("--version", action="version", version=f"edgex {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("targets", help="list every target and whether its backend is available", epilog=EPILOG)
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_targets)

    p = sub.add_parser("toolchains", help="list, build or remove the environments of targets whose toolkits cannot share yours", epilog=EPILOG)
    p.add_argument("action", choices=("list", "build", "remove"), nargs="?", default="list")
    p.add_argument("name", nargs="?", help="the toolchain (edgex toolchains list names them)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_toolchains)

    p = sub.add_parser("plugins", help="list every plugin module and the hooks it implements", epilog=EPILOG)
    p.add_argument("--json", action="store_true")
    p.add_argument("--strict", action="store_true", help="exit 1 when a plugin failed to load")
    p.set_defaults(handler=cmd_plugins)

    p = sub.add_parser("convert", help="convert MODEL for targets and validate each artifact", epilog=EPILOG)
    p.add_argument("model", metavar="MODEL", help="file.py:factory, package.module:factory, model.pt2, model.pt, model.onnx or examples:NAME")
    p.add_argument("--target", "-t", action="append", metavar="T", help="target name or alias (repeatable), or 'all'")
    p.add_argument("--quantize", choices=["none", "fp16", "int8", "dynamic-int8"], help="precision (default: each target's own)")
    p.add_argument("--calibration", type=Path, metavar="FILE|DIR", help="calibration samples for int8 (.npy, .npz or a folder of images); an .npz with labels y also lets a target control accuracy while quantizing")
    p.add_argument(
        "--rewrite", choices=REWRITE_MODES, default=None,
        help="auto (default): before converting, rewrite what a target lacks (GELU for mcu/coral, int64 ids as int32, ...), "
        "each rewrite proven by fp32 parity against the model first; none: convert the model as it is (docs/rewrites.md)",
    )
    p.add_argument(
        "--mixed-precision", choices=MIXED_PRECISION_MODES, default=None,
        help="auto (default): where full int8 misses its floor in edgex's simulation, keep the fewest sensitive layers "
        "at the wider type the target offers (float, int16), proven by parity like the rest; off: full int8 only (docs/mixed_precision.md)",
    )
    p.add_argument("--keep-wider", action="append", metavar="MODULE", help="keep this torch module (and its submodules) wider in every int8 artifact (repeatable; replaces auto's choice)")
    _add_model_options(p)
    _add_parity_options(p)
    _add_compression_options(p)
    _add_target_options(p, manager)
    _add_output_options(p)
    p.add_argument("--cache", type=Path, metavar="DIR", help="reuse each target's result from DIR when nothing it depends on changed, and store fresh ones there (see docs/cache.md)")
    p.add_argument("--no-cache", action="store_true", help="ignore --cache: convert and validate every target")
    p.set_defaults(handler=cmd_convert, needs_manager=True)

    p = sub.add_parser("compress", help="prune MODEL (and recover its accuracy) and save it as a .pt2 program", epilog=EPILOG)
    p.add_argument("model", metavar="MODEL", help="file.py:factory, package.module:factory, model.pt2, model.pt or examples:NAME")
    p.add_argument("--calibration", type=Path, metavar="FILE|DIR", help="unlabelled data for recovery when --distill-data is not given (.npy, .npz or a folder of images)")
    p.add_argument("--seed", type=int, default=0, help="seed for recovery training and sampled inputs (default 0)")
    p.add_argument("--eval-data", type=Path, metavar="FILE.npz", help="labelled data (x, y) to report accuracy before and after")
    _add_model_options(p)
    _add_compression_options(p)
    p.add_argument("--out", type=Path, required=True, metavar="FILE.pt2", help="where to save the compressed model (torch.export program)")
    p.add_argument("--json", action="store_true", help="print the compression report as JSON")
    p.set_defaults(handler=cmd_compress, needs_manager=True)

    p = sub.add_parser("validate", help="validate an existing artifact against its reference model", epilog=EPILOG)
    _add_artifact_arguments(p, "the model the artifact must match (a MODEL spec)")
    p.add_argument("--calibration", type=Path, metavar="FILE|DIR", help="the calibration data the artifact was quantized with: edgex's own int8 reference is calibrated on it")
    _add_parity_options(p)
    _add_target_options(p, manager)
    _add_output_options(p)
    p.set_defaults(handler=cmd_validate, needs_manager=True)

    p = sub.add_parser("explain", help="find the layer where an artifact parts ways with its reference model", epilog=EPILOG)
    _add_artifact_arguments(p, "the torch model the artifact must match (a MODEL spec)")
    p.add_argument("--calibration", type=Path, metavar="FILE|DIR", help="the calibration data an int8 artifact was quantized with: the per-layer int8 sensitivity is measured on edgex's simulation calibrated on it")
    _add_parity_options(p, samples=8, eval_data=False)
    _add_target_options(p, manager)
    p.add_argument("--out", type=Path, default=Path("edgex-out"), metavar="DIR", help="output folder for explain.json (default ./edgex-out); nothing is written outside it")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    p.add_argument("--json", action="store_true", help="print explain.json instead of the table")
    p.set_defaults(handler=cmd_explain, needs_manager=True)

    p = sub.add_parser("check", help="before converting, in seconds: the operators each target lacks, the predicted outcome and the fix", epilog=EPILOG)
    p.add_argument("model", metavar="MODEL", help="file.py:factory, package.module:factory, model.pt2, model.pt, model.onnx or examples:NAME")
    p.add_argument("--target", "-t", action="append", metavar="T", help="target name or alias (repeatable), or 'all'")
    p.add_argument("--quantize", choices=["none", "fp16", "int8", "dynamic-int8"], help="precision (default: each target's own)")
    p.add_argument("--rewrite", choices=REWRITE_MODES, default=None, help="auto (default): predict with the rewrites convert would apply, each proven first; none: the model as it is")
    p.add_argument("--samples", type=int, default=4, metavar="N", help="inputs each rewrite is proven on (default 4)")
    p.add_argument("--seed", type=int, default=0, help="seed for sampled inputs (default 0)")
    _add_model_options(p)
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.set_defaults(handler=cmd_check, needs_manager=True)

    p = sub.add_parser("matrix", help="run every model x compression x precision x target of a TOML config", epilog=EPILOG)
    p.add_argument("config", type=Path, metavar="CONFIG.toml")
    p.add_argument("--jobs", "-j", type=int, default=1, metavar="N", help="(model, compression) groups run in parallel (default 1)")
    p.add_argument("--executor", choices=["local", "ray"], default="local", help="where groups run (default local processes)")
    p.add_argument("--address", metavar="ADDR", help="with --executor ray: the running Ray cluster to use (e.g. 10.0.0.5:6379 or ray://head:10001; default: a local one started for the run)")
    p.add_argument("--out", type=Path, default=Path("edgex-matrix"), metavar="DIR", help="output folder (default ./edgex-matrix)")
    p.add_argument("--cache", type=Path, metavar="DIR", help="the result cache (default OUT/.edgex-cache): an unchanged cell is served from it (see docs/cache.md)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache: every cell is converted and validated")
    p.add_argument("--json", action="store_true", help="print results.json instead of the table")
    p.set_defaults(handler=cmd_matrix)

    p = sub.add_parser("demo", help="the whole job on the shipped digits CNN, offline, in minutes", epilog=EPILOG)
    p.add_argument("--samples", type=int, default=32, metavar="N")
    _add_compression_options(p)
    _add_output_options(p)
    p.set_defaults(handler=cmd_demo, needs_manager=True)
    return parser


def _add_compression_options(parser: argparse.ArgumentParser) -> None:
    from edgex.core.compression.options import add_compression_options

    add_compression_options(parser)


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand's name (the first word that is not an option), if any."""
    words = [a for a in argv if not a.startswith("-")]
    return words[0] if words else None


def _wants_manager(argv: Sequence[str]) -> bool:
    """Whether parsing needs the plugins' options (not for --help of the top level or listings)."""
    return _command(argv) in ("convert", "validate", "explain", "compress", "demo", "check")


def main(argv: Sequence[str] | None = None) -> int:
    """The ``edgex`` command. As the program (``argv`` from the command line), commands that run
    a model's code are supervised (:mod:`edgex.core.supervisor`): the exit status is derived
    from the report the work wrote, and a model that exits, hangs or runs out of memory is named.
    Called from Python with ``argv``, the command runs in the calling process."""
    if argv is None:
        argv = sys.argv[1:]
        command = _command(argv)
        if command in REPORTING or _wants_manager(argv):
            return supervise(lambda: _run(argv), command, tidy=_tidy)
    return _run(argv)


def _tidy(out: Path) -> None:
    """A dead worker's leftovers in the ``--out`` it held, removed as the next run would."""
    from edgex.core.runner import tidy_after_death

    tidy_after_death(out)


def _run(argv: Sequence[str]) -> int:
    argv = list(argv)
    # --debug is global and may come before or after the subcommand: taken out before parsing
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end]
    argv = [a for a in argv[:end] if a != "--debug"] + argv[end:]
    if not debug:
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
    progress = args = None
    saved_handlers = end_run_on_signals()
    try:
        manager = _manager() if _wants_manager(argv) else None
        parser = build_parser(manager)
        args = parser.parse_args(argv)
        args.debug = debug
        if not getattr(args, "handler", None):
            parser.print_help()
            return 2
        if getattr(args, "needs_manager", False):
            from edgex.core.progress import ProgressDisplay

            progress = ProgressDisplay(enabled=None if not args.json else False)
            manager.register_observer(progress, "edgex.progress")
            return int(args.handler(args, manager))
        return int(args.handler(args))
    except SystemExit as exc:  # parsing's --help/--version exit before a handler runs; this is the model's code
        if args is None:
            raise
        if debug:
            traceback.print_exc()
        print(f"edgex: error: the model's code called sys.exit({exc.code!r}) while edgex was running it; a model file must not exit: guard script code with `if __name__ == \"__main__\":`", file=sys.stderr)
        return 2
    except MemoryError as exc:
        if debug:
            traceback.print_exc()
        print(f"edgex: error: out of memory{': ' + str(exc).splitlines()[0] if str(exc) else ''}; the job needs more memory than this machine has (give a smaller --input-shape or fewer --samples)", file=sys.stderr)
        return 3
    except EdgexError as exc:
        if debug:  # more to read, the same exit code
            traceback.print_exc()
        print(f"edgex: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        from edgex.core.isolation import interruption

        interrupted = interruption(exc)
        if debug:
            traceback.print_exc()
        print(f"edgex: interrupted by {interrupted.signal_name}: children stopped; the report (report.json, or a matrix's results.json) keeps what finished", file=sys.stderr)
        return interrupted.exit_code
    except Exception as exc:
        if debug:
            traceback.print_exc()
        from edgex.core.resources import disk_full_message, is_disk_full

        if is_disk_full(exc):  # a write the run did not expect to fail: the disk is named
            print(f"edgex: error: {disk_full_message(exc, getattr(args, 'out', None))}", file=sys.stderr)
            return 3
        print(f"edgex: internal error: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} (rerun with --debug for the traceback)", file=sys.stderr)
        return 3
    finally:
        if progress is not None:
            progress.close()
        for signum, handler in saved_handlers.items():
            signal.signal(signum, handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
