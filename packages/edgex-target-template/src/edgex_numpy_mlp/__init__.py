"""The template edgex target ``numpy-mlp``; its hooks live in :mod:`edgex_numpy_mlp.plugin`."""

__version__ = "0.1.0"
