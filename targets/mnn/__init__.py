"""Target ``mnn`` (Alibaba MNN, ``.mnn``): the hooks in ``mnn.py``, the file reader in ``mnnfile.py``."""
