"""edgex-rknn: the edgex target ``rknn`` (alias ``rockchip``), loaded by edgex from the ``edgex``
entry-point group; the hooks live in :mod:`edgex_rknn.plugin`, and :mod:`edgex_rknn.toolkit` runs
inside the rknn toolchain (``edgex toolchains build rknn``)."""

__version__ = "0.1.0"
