"""Batches for the Keras plugins, the same on both paths: ``tf.data`` over the TFRecords (TensorFlow backend;
the TPU path, static shapes) or numpy arrays from the Parquet shards (any backend). Training batches are
endless, shuffled and fixed-size (melanomas repeated ``oversample`` times), validation batches cycle the
fold in order, prediction batches are padded to one static shape. Targets are the dataset's 0/1 target or,
with ``labels`` (image name → class index), one-hot diagnosis classes; the fusion model's metadata
features are looked up by image name.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from melanoma_models.api import FoldData, encode_metadata

#: Measurement columns the fusion model's metadata network sees (scaled; missing → 0).
MEASUREMENTS = [("vignette_detected", 1.0), ("vignette_radius_frac", 1.0), ("hair_fraction", 1.0),
                ("brightness_before", 1 / 255), ("colour_gain_r", 1.0), ("colour_gain_g", 1.0),
                ("colour_gain_b", 1.0)]



def meta_features(meta, encodings: dict[str, Any]) -> np.ndarray:
    """Fusion metadata: encoded sex/age/site, images per patient, preprocessing measurements (fixed scaling)."""
    import pandas as pd

    parts = [encode_metadata(meta, encodings)]
    count = pd.to_numeric(meta.get("patient_image_count", pd.Series(1, index=meta.index)), errors="coerce")
    parts.append((np.log1p(count.fillna(1).to_numpy(dtype=float)) / 5.0)[:, None])
    for col, scale in MEASUREMENTS:
        values = pd.to_numeric(meta[col], errors="coerce") if col in meta else pd.Series(0.0, index=meta.index)
        parts.append((values.astype(float).fillna(0.0).to_numpy() * scale)[:, None])
    return np.hstack(parts).astype(np.float32)


def numpy_batches(data: FoldData, size: int, batch: int, seed: int, oversample: int, feats: dict | None,
                   class_weight: dict[int, float] | None = None,
                   labels: dict[str, int] | None = None, n_classes: int = 1) -> Iterator[tuple[Any, ...]]:
    """Endless fixed-size training batches from the Parquet shards (positives repeated ``oversample``×).

    Keras takes no ``class_weight`` with Python generators, so class weights come as per-sample weights.
    ``labels`` (image name → class index) makes the targets one-hot diagnosis classes.
    """
    rng = np.random.default_rng(seed)
    pool_x, pool_y, pool_n = [], [], []
    while True:
        for b in data.iter_batches(batch_size=256, image_size=size, shuffle=True, seed=int(rng.integers(1 << 31)),
                                   columns=("image_name", "target")):
            reps = np.where(b["target"] == 1, oversample, 1)
            idx = np.repeat(np.arange(len(reps)), reps)
            pool_x.append(b["image"][idx])
            pool_y.append(b["target"][idx])
            pool_n.append(b["image_name"][idx])
            xs, ys, ns = np.concatenate(pool_x), np.concatenate(pool_y), np.concatenate(pool_n)
            order = rng.permutation(len(ys))
            xs, ys, ns = xs[order], ys[order], ns[order]
            while len(ys) >= batch:
                x = xs[:batch]
                x = {"image": x, "meta": np.stack([feats[n] for n in ns[:batch]])} if feats is not None else x
                cls = (np.array([labels[n] for n in ns[:batch]]) if labels is not None
                       else ys[:batch].astype(np.int64))
                yb = (np.eye(n_classes, dtype=np.float32)[cls] if labels is not None
                      else ys[:batch].astype(np.float32))
                if class_weight is None:
                    yield x, yb
                else:
                    yield x, yb, np.array([class_weight[int(c)] for c in cls], dtype=np.float32)
                xs, ys, ns = xs[batch:], ys[batch:], ns[batch:]
            pool_x, pool_y, pool_n = [xs], [ys], [ns]


def numpy_predict_batches(data: FoldData, size: int, batch: int, feats: dict | None):
    """Prediction batches of ``batch`` rows; a short last batch is padded to the next power of two (at most
    ``batch``): few distinct shapes to compile, and one image (a served upload) is not run as 32."""
    for b in data.iter_batches(batch_size=batch, image_size=size, columns=("image_name",)):
        n = len(b["image_name"])
        x = b["image"]
        to = min(batch, 1 << max(n - 1, 0).bit_length())
        if n < to:
            x = np.concatenate([x, np.repeat(x[-1:], to - n, axis=0)])
        names = list(b["image_name"])
        if feats is not None:
            m = np.stack([feats[nm] for nm in names])
            if n < to:
                m = np.concatenate([m, np.repeat(m[-1:], to - n, axis=0)])
            x = {"image": x, "meta": m}
        yield x, names, n


def tf_train_dataset(data: FoldData, size: int, batch: int, seed: int, oversample: int, feats: dict | None,
                      labels: dict[str, int] | None = None, n_classes: int = 1):
    import tensorflow as tf

    ds = data.dataset.tf_dataset(data.split, data.folds, batch_size=None, image_size=size, with_names=True,
                                 shuffle=True, seed=seed, repeat=True, prefetch=False)
    if oversample > 1:
        ds = ds.flat_map(lambda x, y, n: tf.data.Dataset.from_tensors((x, y, n)).repeat(
            tf.where(y == 1, tf.constant(oversample, tf.int64), tf.constant(1, tf.int64))))
        ds = ds.shuffle(2048, seed=seed)
    ds = ds.map(_attach(feats, labels, n_classes), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def _lookup(names: list[str]):
    """A TensorFlow table: image name → its row in ``names`` (-1 when absent)."""
    import tensorflow as tf

    return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(names, tf.range(len(names), dtype=tf.int64)),
                                     default_value=-1)


def _attach(feats: dict | None, labels: dict[str, int] | None = None, n_classes: int = 1):
    """``(x, y, name)`` → the model's inputs and target: metadata features and one-hot classes looked up by name."""
    import tensorflow as tf

    if labels is not None:
        names = list(labels)
        by_name = _lookup(names)
        codes = tf.constant([labels[n] for n in names], tf.int64)

        def target(y, n):
            return tf.one_hot(tf.gather(codes, tf.maximum(by_name.lookup(n), 0)), n_classes, dtype=tf.float32)
    else:
        def target(y, n):
            return tf.cast(y, tf.float32)
    if feats is None:
        return lambda x, y, n: (x, target(y, n))
    names = list(feats)
    table = _lookup(names)
    matrix = tf.constant(np.stack([feats[n] for n in names]))

    def add(x, y, n):
        return {"image": x, "meta": tf.gather(matrix, tf.maximum(table.lookup(n), 0))}, target(y, n)

    return add


def tf_valid_dataset(data: FoldData, size: int, batch: int, feats: dict | None,
                      labels: dict[str, int] | None = None, n_classes: int = 1):
    import tensorflow as tf

    ds = data.dataset.tf_dataset(data.split, data.folds, batch_size=None, image_size=size, with_names=True,
                                 prefetch=False, repeat=True)
    return ds.map(_attach(feats, labels, n_classes)).batch(batch).prefetch(tf.data.AUTOTUNE)


def numpy_valid_batches(data: FoldData, size: int, batch: int, feats: dict | None,
                         labels: dict[str, int] | None = None, n_classes: int = 1):
    """Validation batches, cycled (Keras draws ``validation_steps`` of them each epoch)."""
    while True:
        for b in data.iter_batches(batch_size=batch, image_size=size, columns=("image_name", "target")):
            x = b["image"]
            if feats is not None:
                x = {"image": x, "meta": np.stack([feats[n] for n in b["image_name"]])}
            if labels is not None:
                yield x, np.eye(n_classes, dtype=np.float32)[[labels[n] for n in b["image_name"]]]
            else:
                yield x, b["target"].astype(np.float32)
