"""edgex-openvino: the edgex target ``openvino`` (alias ``intel``), loaded by edgex from the
``edgex`` entry-point group; the hooks live in :mod:`edgex_openvino.plugin`."""

__version__ = "0.1.0"
