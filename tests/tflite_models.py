"""Real .tflite files for the tests, made at test time with TensorFlow's converter.

TensorFlow comes from the ``tflite-export`` extra (in ``dev``); the hub never imports it.
A small Keras MLP (a Normalization layer fitted on the training rows, Dense 16 relu,
Dense softmax) is trained, seeded, on the rows a hub build trains on (the same seeded,
stratified split), then converted:

- float: ``TFLiteConverter.from_keras_model``, batch axis dynamic;
- full int8: ``Optimize.DEFAULT`` with a representative dataset (the training rows) and
  ``TFLITE_BUILTINS_INT8`` only, float input and output (what DESIGN §8 says runs
  fastest on a device), the same layers behind an input whose batch axis is fixed at 1.

Nothing here is committed as a binary: each file is rebuilt per test session (cached).
"""

from __future__ import annotations

import os
import warnings
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt
from sklearn.datasets import load_wine

from hub.ml.training_data import Dataset, split_arrays

EPOCHS = 40  # passes over the training rows (hold-out accuracy 1.0 from ~30 on)
SEED = 0


def wine_split(*, standardized: bool = False) -> Dataset:
    """scikit-learn's wine rows as a hub build splits them (seed 7, 20% held out).

    ``standardized``: every feature z-scored over all rows (what the ``wine-z`` dataset of
    the tests holds).
    """
    wine = load_wine()
    x = wine.data.astype(np.float32)
    if standardized:
        x = ((x - x.mean(axis=0)) / x.std(axis=0)).astype(np.float32)
    return split_arrays(
        x,
        wine.target,
        task="classification",
        classes=("c0", "c1", "c2"),
        features=[f"f{i}" for i in range(x.shape[1])],
    )


@cache
def wine_tflite(*, int8: bool, standardized: bool = False, features: int = 13) -> bytes:
    """A .tflite MLP trained on the first ``features`` columns of the wine training rows."""
    tf = _tensorflow()
    rows = wine_split(standardized=standardized)
    x, y = rows.x_train[:, :features], rows.y_train
    model = _keras_mlp(tf, x, y, n_classes=3)
    if not int8:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
    else:
        one_row = tf.keras.Input(shape=(features,), batch_size=1, name="x")
        converter = tf.lite.TFLiteConverter.from_keras_model(
            tf.keras.Model(one_row, model(one_row))
        )
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([row[None]] for row in x)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    with warnings.catch_warnings():
        # "Statistics for quantized inputs were expected": float input, as intended.
        warnings.simplefilter("ignore", UserWarning)
        return bytes(converter.convert())


def _keras_mlp(tf: Any, x: npt.NDArray[np.float32], y: npt.NDArray[Any], n_classes: int) -> Any:
    tf.keras.utils.set_random_seed(SEED)
    inputs = tf.keras.Input(shape=(x.shape[1],), name="x")
    scaled = tf.keras.layers.Normalization(mean=x.mean(axis=0), variance=x.var(axis=0))(inputs)
    hidden = tf.keras.layers.Dense(16, activation="relu")(scaled)
    scores = tf.keras.layers.Dense(n_classes, activation="softmax")(hidden)
    model = tf.keras.Model(inputs, scores)
    model.compile(tf.keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")
    repeats = 8  # fewer, longer epochs: Keras spends ~60 ms per epoch whatever its size
    model.fit(
        np.tile(x, (repeats, 1)),
        np.tile(y, repeats),
        epochs=EPOCHS // repeats,
        batch_size=16,
        verbose=0,
    )
    return model


@cache
def _tensorflow() -> Any:
    # Before the import: no C++ info lines, and oneDNN off so runs repeat bit for bit.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf

    return tf
