"""The LiteRT family: targets ``tflite`` (``tflite.py``) and ``coral`` (``coral.py``, with the Edge
TPU analysis in ``edgetpu.py``), and what they share with ``mcu``: the conversion and its int8
checks (``convert.py``, converter paths in ``converters.py``), the flatbuffer reader
(``graph.py``), the op tables (``ops.py``) and the interpreter (``runtime.py``)."""
