"""The ncnn family: target ``ncnn`` (``ncnn.py``: pnnx, the ncnn runtime) and ncnn's files read
without ncnn (``model.py``)."""
