"""Built-in target plugins, one module per target family (registered from BUILTIN_PLUGINS)."""
