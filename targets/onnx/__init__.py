"""The ONNX family: targets ``onnx`` (``onnx.py``) and ``jetson`` (``jetson.py``, TensorRT), and
what they share: ONNX files (``model.py``) and onnxruntime (``runtime.py``)."""
