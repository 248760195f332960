"""The plugin manager lives in :mod:`edgex.core.plugin_manager`; this name stays for plugin
authors and tests that built one themselves."""

from edgex.core.plugin_manager import (  # noqa: F401
    BUILTIN_PLUGINS,
    ENTRY_POINT_GROUP,
    PluginInfo,
    PluginLoadWarning,
    PluginManager,
    RegisteredCompressor,
    RegisteredTarget,
    get_manager,
    make_manager,
)
