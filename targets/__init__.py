"""Built-in target plugins, by family: ``onnx/`` (onnx, jetson), ``litert/`` (tflite, coral),
``mcu/``, ``coreml/``, and ``executorch.py``; each plugin is the module named after its target
(registered from ``BUILTIN_PLUGINS``). They import edgex only through ``edgex.plugins``, as a
third-party plugin does (tests/test_architecture.py)."""
