"""The microcontroller family: target ``mcu`` (``mcu.py``, TensorFlow Lite Micro), the model checks
and TFLM op table (``model.py``), memory planning against board profiles (``memory.py``) and
Ethos-U compilation with vela (``vela.py``). The full-int8 conversion is LiteRT's (``edgex.targets.litert``)."""
