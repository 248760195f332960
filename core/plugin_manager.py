"""Loads the plugins and is the only place that calls ``pm.hook``.

Built-in plugins are registered from ``BUILTIN_PLUGINS``, exactly like third-party ones, which
come only from the ``edgex`` entry-point group of installed distributions. Environment switches:

- ``EDGEX_DISABLE_PLUGIN_AUTOLOAD=1``: load no third-party plugin (built-ins still load).
- ``EDGEX_LOAD_PLUGINS=a,b``: load only these entry points (by entry-point or distribution
  name); an empty value loads none. It overrides ``EDGEX_DISABLE_PLUGIN_AUTOLOAD``.
- ``EDGEX_TRACE_PLUGINS=1``: print every hook call and result to stderr.

A third-party plugin that fails to import, or implements a hook that does not exist, is a
warning and a ``failed`` row in ``edgex plugins``, never a crash. Two plugins claiming one target
or compression-method name is a :class:`PluginError` naming both.
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import pluggy

from edgex.core import hookspecs
from edgex.core.version import __version__
from edgex.core.errors import PluginError, TargetError, UsageError, one_line
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

ENTRY_POINT_GROUP = "edgex"

#: Built-in plugins, registered in this order (it is also the order of ``--target all``).
BUILTIN_PLUGINS: tuple[str, ...] = (
    "edgex.targets.onnx.onnx",
    "edgex.targets.onnx.jetson",
    "edgex.targets.litert.tflite",
    "edgex.targets.litert.coral",
    "edgex.targets.coreml.coreml",
    "edgex.targets.mcu.mcu",
    "edgex.targets.executorch",
    "edgex.targets.ncnn.ncnn",
    "edgex.targets.mnn.mnn",
    "edgex.core.compression.pruning",
    "edgex.core.compression.distill",
)


class PluginLoadWarning(UserWarning):
    """A plugin could not be loaded; edgex goes on without it."""


@dataclass(frozen=True)
class PluginInfo:
    """One row of ``edgex plugins``."""

    name: str
    package: str
    version: str
    builtin: bool
    status: str  # "loaded" or "failed"
    hooks: tuple[str, ...] = ()
    error: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "package": self.package,
            "version": self.version,
            "builtin": self.builtin,
            "status": self.status,
            "hooks": list(self.hooks),
            "error": self.error or None,
        }


@dataclass(frozen=True)
class RegisteredTarget:
    """A target together with the plugin that declared it."""

    spec: TargetSpec
    plugin: str
    package: str
    version: str

    @property
    def name(self) -> str:
        return self.spec.name


@dataclass(frozen=True)
class RegisteredCompressor:
    spec: CompressorSpec
    plugin: str
    package: str
    version: str


@dataclass
class _Loaded:
    obj: Any
    info: PluginInfo




class PluginManager:
    """The loaded plugins, with one typed method per hook."""

    def __init__(
        self,
        *,
        builtins: Iterable[str] = BUILTIN_PLUGINS,
        load_entry_points: bool = True,
        extra_plugins: Sequence[Any] = (),
        environ: Mapping[str, str] | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self._loaded: list[_Loaded] = []
        self._targets: dict[str, RegisteredTarget] | None = None
        self._aliases: dict[str, str] = {}
        self._compressors: dict[str, RegisteredCompressor] | None = None
        if env.get("EDGEX_TRACE_PLUGINS", "").strip() not in ("", "0"):
            self.pm.trace.root.setwriter(sys.stderr.write)
            self.pm.enable_tracing()

        version = __version__
        for module_name in builtins:
            self._load(lambda m=module_name: importlib.import_module(m), module_name, "edgex", version, True)
        for plugin in extra_plugins:
            name = getattr(plugin, "__name__", type(plugin).__name__)
            self._load(lambda p=plugin: p, name, "(registered in-process)", "", False)
        if load_entry_points:
            self._load_entry_points(env)

    # ----------------------------------------------------------------------- loading

    def _load_entry_points(self, env: Mapping[str, str]) -> None:
        wanted: set[str] | None = None
        if "EDGEX_LOAD_PLUGINS" in env:
            wanted = {n.strip() for n in env["EDGEX_LOAD_PLUGINS"].split(",") if n.strip()}
        elif env.get("EDGEX_DISABLE_PLUGIN_AUTOLOAD", "").strip() not in ("", "0"):
            return
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist
            package = dist.name if dist is not None else "?"
            version = dist.version if dist is not None else "?"
            if wanted is not None and ep.name not in wanted and package not in wanted:
                continue
            self._load(ep.load, ep.name, package, version, False)

    def _load(self, importer: Callable[[], Any], name: str, package: str, version: str, builtin: bool) -> None:
        try:
            if self.pm.has_plugin(name):
                raise PluginError(f"a plugin named {name!r} is already registered")
            obj = importer()
            self.pm.register(obj, name=name)
            try:
                self.pm.check_pending()
            except pluggy.PluginValidationError:
                self.pm.unregister(obj)
                raise
        except Exception as exc:  # a broken plugin must never take the tool down
            error = one_line(exc)
            warnings.warn(f"edgex: plugin {name!r} ({package}) failed to load: {error}", PluginLoadWarning, stacklevel=2)
            self._loaded.append(_Loaded(None, PluginInfo(name, package, version, builtin, "failed", (), error)))
            return
        hooks = tuple(sorted(c.name for c in self.pm.get_hookcallers(obj) or ()))
        self._loaded.append(_Loaded(obj, PluginInfo(name, package, version, builtin, "loaded", hooks)))

    # ----------------------------------------------------------------------- listing

    def plugins(self) -> list[PluginInfo]:
        """Every plugin edgex tried to load, loaded or failed."""
        return [entry.info for entry in self._loaded]

    def _declarations(self, hook_name: str) -> Iterable[tuple[_Loaded, Any]]:
        """Call a declaration hook per plugin, so each declaration is attributed to its plugin."""
        by_object = {id(e.obj): e for e in self._loaded if e.obj is not None}
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            entry = by_object.get(id(impl.plugin))
            if entry is None:
                continue
            try:
                declared = impl.function() or ()
            except Exception as exc:
                self._mark_failed(entry, f"{hook_name} raised {one_line(exc)}")
                continue
            for item in declared:
                yield entry, item

    def _mark_failed(self, entry: _Loaded, error: str) -> None:
        warnings.warn(f"edgex: plugin {entry.info.name!r} ({entry.info.package}) is broken: {error}", PluginLoadWarning, stacklevel=3)
        self.pm.unregister(entry.obj)
        entry.obj = None
        entry.info = PluginInfo(entry.info.name, entry.info.package, entry.info.version, entry.info.builtin, "failed", entry.info.hooks, error)

    def targets(self) -> dict[str, RegisteredTarget]:
        """Every declared target by name, in registration order."""
        if self._targets is None:
            targets: dict[str, RegisteredTarget] = {}
            aliases: dict[str, str] = {}
            for entry, spec in self._declarations("edgex_targets"):
                if not isinstance(spec, TargetSpec):
                    self._mark_failed(entry, f"edgex_targets returned {type(spec).__name__}, not TargetSpec")
                    continue
                registered = RegisteredTarget(spec, entry.info.name, entry.info.package, entry.info.version)
                for claimed in (spec.name, *spec.aliases):
                    owner = targets.get(aliases.get(claimed, claimed))
                    if owner is not None:
                        raise PluginError(
                            f"target name {claimed!r} is claimed by two plugins: {owner.plugin} "
                            f"({owner.package} {owner.version}) and {entry.info.name} "
                            f"({entry.info.package} {entry.info.version}); uninstall one of them "
                            "or choose the plugins to load with EDGEX_LOAD_PLUGINS"
                        )
                targets[spec.name] = registered
                aliases.update({alias: spec.name for alias in spec.aliases})
            self._targets, self._aliases = targets, aliases
        return self._targets

    def resolve_target(self, name: str) -> RegisteredTarget:
        """A target by name or alias; an unknown name is a usage error listing the known ones."""
        targets = self.targets()
        canonical = self._aliases.get(name, name)
        if canonical not in targets:
            known = ", ".join(sorted(targets)) or "none"
            raise UsageError(f"unknown target {name!r}; installed targets: {known} (see `edgex targets`)")
        return targets[canonical]

    def compressors(self) -> dict[str, RegisteredCompressor]:
        """Every declared compression method by name (aliases included as keys)."""
        if self._compressors is None:
            found: dict[str, RegisteredCompressor] = {}
            for entry, spec in self._declarations("edgex_compressors"):
                if not isinstance(spec, CompressorSpec):
                    self._mark_failed(entry, f"edgex_compressors returned {type(spec).__name__}, not CompressorSpec")
                    continue
                registered = RegisteredCompressor(spec, entry.info.name, entry.info.package, entry.info.version)
                for claimed in (spec.name, *spec.aliases):
                    owner = found.get(claimed)
                    if owner is not None:
                        raise PluginError(
                            f"compression method {claimed!r} is claimed by two plugins: {owner.plugin} "
                            f"({owner.package} {owner.version}) and {entry.info.name} "
                            f"({entry.info.package} {entry.info.version}); uninstall one of them"
                        )
                    found[claimed] = registered
            self._compressors = found
        return self._compressors

    def resolve_compressor(self, name: str) -> RegisteredCompressor:
        found = self.compressors()
        if name not in found:
            known = ", ".join(sorted({c.spec.name for c in found.values()})) or "none installed"
            raise UsageError(f"unknown compression method {name!r}; available: {known}")
        return found[name]

    # ----------------------------------------------------------------------- dispatched hooks

    def _owner(self, plugin_name: str) -> Any:
        obj = self.pm.get_plugin(plugin_name)
        if obj is None:
            raise PluginError(f"plugin {plugin_name!r} is not loaded")
        return obj

    def _dispatch(self, hook_name: str, plugin_name: str, what: str, **kwargs: Any) -> Any:
        owner = self._owner(plugin_name)
        others = [p for p in self.pm.get_plugins() if p is not owner]
        result = self.pm.subset_hook_caller(hook_name, remove_plugins=others)(**kwargs)
        if result is None:
            raise TargetError(f"plugin {plugin_name} declared {what} but its {hook_name} returned nothing", plugin=plugin_name)
        return result

    def backend_status(self, target: str) -> BackendStatus:
        registered = self.resolve_target(target)
        if registered.spec.toolchain is not None:  # unbuilt: unavailable, whatever the plugin says
            from edgex.core.toolchains import locate

            toolchain = locate(registered.spec.toolchain)
            if not toolchain.built:
                name = toolchain.spec.name
                return BackendStatus(False, f"toolchain {name}", install_hint=f"edgex toolchains build {name}", detail=f"toolchain {name!r} ({', '.join(toolchain.spec.requirements)}) is not built")
        try:
            return self._dispatch("edgex_backend_status", registered.plugin, f"target {registered.name!r}", target=registered.name)
        except Exception as exc:
            return BackendStatus(False, "unknown", detail=f"edgex_backend_status raised {one_line(exc)}")

    def convert(self, request: ConversionRequest) -> ConversionResult:
        registered = self.resolve_target(request.target)
        return self._dispatch("edgex_convert", registered.plugin, f"target {registered.name!r}", request=request)

    def describe_artifact(self, target: str, path: Path, reference: ReferenceModel) -> ArtifactIO:
        registered = self.resolve_target(target)
        return self._dispatch("edgex_describe_artifact", registered.plugin, f"target {registered.name!r}", target=registered.name, path=path, reference=reference)

    def load_runtime(self, target: str, io: ArtifactIO, options: Mapping[str, Any]) -> Runtime:
        registered = self.resolve_target(target)
        return self._dispatch("edgex_load_runtime", registered.plugin, f"target {registered.name!r}", target=registered.name, io=io, options=options)

    def can_trace(self, target: str) -> bool:
        """Whether the plugin that declared ``target`` implements the optional ``edgex_load_tracer``."""
        owner = self._owner(self.resolve_target(target).plugin)
        return any(impl.plugin is owner for impl in self.pm.hook.edgex_load_tracer.get_hookimpls())

    def require_tracer(self, target: str) -> None:
        """A usage error unless ``target``'s plugin can trace its artifacts (``edgex explain``)."""
        registered = self.resolve_target(target)
        if not self.can_trace(registered.name):
            raise UsageError(
                f"target {registered.name!r} cannot explain artifacts: its plugin {registered.plugin} ({registered.package} "
                f"{registered.version}) does not implement edgex_load_tracer; `edgex validate` still checks its outputs"
            )

    def load_tracer(self, target: str, io: ArtifactIO, reference: ReferenceModel, options: Mapping[str, Any]) -> Tracer:
        """The artifact loaded for ``edgex explain``; a usage error where the target cannot trace it."""
        self.require_tracer(target)
        registered = self.resolve_target(target)
        owner = self._owner(registered.plugin)
        others = [p for p in self.pm.get_plugins() if p is not owner]
        tracer = self.pm.subset_hook_caller("edgex_load_tracer", remove_plugins=others)(target=registered.name, io=io, reference=reference, options=options)
        if tracer is None:  # the plugin traces some of its targets' artifacts, not this one
            raise UsageError(f"target {registered.name!r} cannot explain {io.path.name}: its plugin {registered.plugin} returned no tracer for it")
        return tracer

    def check_operators(self, target: str, operators: ModelOperators, precision: str) -> OperatorCheck | None:
        """The plugin's judgement of ``operators`` for ``target`` (``edgex check``); None when the
        plugin does not implement the optional ``edgex_check_operators``."""
        registered = self.resolve_target(target)
        owner = self._owner(registered.plugin)
        others = [p for p in self.pm.get_plugins() if p is not owner]
        return self.pm.subset_hook_caller("edgex_check_operators", remove_plugins=others)(target=registered.name, operators=operators, precision=precision)

    def compress(self, request: CompressionRequest) -> CompressionResult:
        registered = self.resolve_compressor(request.method)
        return self._dispatch("edgex_compress", registered.plugin, f"compression method {request.method!r}", request=request)

    # ----------------------------------------------------------------------- observers

    def _notify(self, hook_name: str, event: StageEvent) -> None:
        for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
            try:
                impl.function(event=event)
            except Exception as exc:
                warnings.warn(f"edgex: observer {impl.plugin_name} raised in {hook_name}: {one_line(exc)}", PluginLoadWarning, stacklevel=2)

    def stage_started(self, event: StageEvent) -> None:
        self._notify("edgex_stage_started", event)

    def stage_progress(self, event: StageEvent) -> None:
        self._notify("edgex_stage_progress", event)

    def stage_finished(self, event: StageEvent) -> None:
        self._notify("edgex_stage_finished", event)

    def register_observer(self, plugin: Any, name: str) -> None:
        """Register an in-process observer (the command line's progress display, a notebook's)."""
        self.pm.register(plugin, name=name)


_shared: PluginManager | None = None


def make_manager(observers: Iterable[Any] = ()) -> PluginManager:
    """The installed plugins (built-ins and the ``edgex`` entry-point group) plus in-process
    ``observers``: the one factory the command line, the Python API and the matrix use. The
    first one made is also the process's shared manager (:func:`get_manager`)."""
    global _shared
    manager = PluginManager()
    for index, observer in enumerate(observers):
        manager.register_observer(observer, f"observer-{index}")
    if _shared is None:
        _shared = manager
    return manager


def get_manager() -> PluginManager:
    """The process's manager, for code that is handed none (a plugin asking whether another
    target's backend is here: ``edgex.plugins.target_status``): the first one made, else a new one."""
    return _shared if _shared is not None else make_manager()
