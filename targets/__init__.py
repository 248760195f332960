"""Built-in target plugins, one module per target family (registered from BUILTIN_PLUGINS), and
the modules they share (``litert``, ``tflite_graph``, ...). They import edgex only through
``edgex.plugins``, as a third-party plugin does (tests/test_architecture.py)."""
