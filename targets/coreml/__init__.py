"""The Core ML family: target ``coreml`` (``coreml.py``), and edgex's MIL interpreter
(``interpreter.py``) with its kernels (``kernels.py``), which runs a saved .mlpackage where Core ML
itself cannot (off macOS)."""
