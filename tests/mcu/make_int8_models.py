"""Writes the small full-int8 .tflite files tests/mcu uses, with TensorFlow's own converter.

Run by tests/mcu/conftest.py as ``python make_int8_models.py FOLDER`` in a subprocess: TensorFlow
is never imported into the pytest process, whose later tests fork converters (TensorFlow's
thread pools do not survive a fork). Test scaffolding, not product code.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

import numpy as np


def _keras_int8(model, input_shapes, path: Path, seed: int = 0) -> Path:
    """``model`` as a full-int8 .tflite at ``path``, calibrated on seeded normal samples per input."""
    import tensorflow as tf

    def representative():
        rng = np.random.default_rng(seed)
        for _ in range(16):
            yield [rng.standard_normal((1, *shape)).astype(np.float32) for shape in input_shapes]

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Statistics for quantized inputs were expected"
        path.write_bytes(converter.convert())
    return path


def main(folder: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    layers = tf.keras.layers
    made: dict[str, Path] = {}

    # keyword-spotting shape: conv, depthwise conv, pointwise conv, global average, dense
    x_in = tf.keras.Input((49, 10, 1), batch_size=1)
    x = layers.Conv2D(16, (10, 4), strides=2, padding="same", activation="relu")(x_in)
    x = layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    x = layers.Conv2D(16, 1, activation="relu")(x)
    x = layers.GlobalAveragePooling2D()(x)
    made["kws"] = _keras_int8(tf.keras.Model(x_in, layers.Dense(12)(x)), [(49, 10, 1)], folder / "kws.tflite")

    # GELU: full int8, but TFLM has no kernel for it
    x_in = tf.keras.Input((16,), batch_size=1)
    x = layers.Activation("gelu")(layers.Dense(16)(x_in))
    made["gelu"] = _keras_int8(tf.keras.Model(x_in, layers.Dense(4)(x)), [(16,)], folder / "gelu.tflite")

    # CUMSUM has no int8 kernel: the converter leaves a float DEQUANTIZE -> CUMSUM -> QUANTIZE island
    x_in = tf.keras.Input((16,), batch_size=1)
    x = layers.Dense(16, activation="relu")(x_in)
    x = layers.Lambda(lambda t: tf.math.cumsum(t, axis=-1))(x)
    made["float_island"] = _keras_int8(tf.keras.Model(x_in, layers.Dense(4)(x)), [(16,)], folder / "float_island.tflite")

    # a stride-4 convolution: TFLM runs it, vela leaves it on the Cortex-M (Ethos-U55 strides are 1-3)
    x_in = tf.keras.Input((32, 32, 3), batch_size=1)
    x = layers.Flatten()(layers.Conv2D(8, 5, strides=4, padding="same", activation="relu")(x_in))
    made["stride4"] = _keras_int8(tf.keras.Model(x_in, layers.Dense(4)(x)), [(32, 32, 3)], folder / "stride4.tflite")

    # two inputs: binding order must follow tensor names, not position
    a_in, b_in = tf.keras.Input((8,), batch_size=1, name="left"), tf.keras.Input((6,), batch_size=1, name="right")
    x = layers.Concatenate()([layers.Dense(4)(a_in), layers.Dense(4)(b_in)])
    two = tf.keras.Model([a_in, b_in], layers.Dense(3)(x))
    made["two_inputs"] = _keras_int8(two, [(8,), (6,)], folder / "two_inputs.tflite", seed=1)
    print(" ".join(sorted(made)))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
