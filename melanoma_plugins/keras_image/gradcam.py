"""Grad-CAM heat maps of the Keras plugins' scores (TensorFlow backend).

For each image, the last convolutional block's feature maps are weighted by the mean gradient of the score
(the sigmoid, or the softmax share of the target's classes) with respect to each map, summed, passed
through a ReLU, upsampled to the input and scaled to [0, 1] by its minimum and maximum (Selvaraju et al.
2017). The last block is
the EfficientNet backbone's ``top_activation``, or the small/seed CNNs' last 4-D layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from melanoma_data.native_logs import filtered
from melanoma_models.explanation import scale_maps

with filtered():
    import keras


def _split(model: Any) -> tuple[Any, Any]:
    """``(features, head)``: image → last feature maps, and (pooled maps, other inputs) → score; or for a model
    without a nested backbone ``(grad_model, None)``: inputs → (last feature maps, score)."""
    backbone = next((layer for layer in model.layers if layer.name.startswith("efficientnet")), None)
    if backbone is not None:
        features = keras.Model(backbone.input, backbone.get_layer("top_activation").output)
        pooled = backbone._inbound_nodes[-1].output_tensors[0]  # the backbone's output in the outer graph
        others = [t for t in model.inputs if t.name != "image"]
        return features, keras.Model([pooled, *others], model.output)
    last = [layer for layer in model.layers if len(layer.output.shape) == 4][-1]
    return keras.Model(model.inputs, [last.output, model.output]), None


def gradcam(model: Any, images: np.ndarray, meta: np.ndarray | None = None,
            positive: list[bool] | None = None) -> np.ndarray:
    """Heat maps ``(n, S, S)`` in [0, 1] for uint8 images ``(n, S, S, 3)`` (``meta`` for the fusion model;
    ``positive``: the softmax columns the score sums)."""
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError("Grad-CAM is implemented for the TensorFlow backend")
    features, head = _split(model)
    x = tf.convert_to_tensor(images, tf.float32)

    def score(out):
        out = tf.reshape(tf.cast(out, tf.float32), (len(images), -1))
        if positive:
            return tf.reduce_sum(tf.boolean_mask(out, np.asarray(positive, bool), axis=1), axis=1)
        return out[:, 0]

    with filtered(), tf.GradientTape() as tape:
        if head is not None:
            fmap = tf.cast(features(x, training=False), tf.float32)
            tape.watch(fmap)
            pooled = tf.reduce_mean(fmap, axis=(1, 2))  # the backbone's pooling="avg"
            others = [] if meta is None else [tf.convert_to_tensor(meta, tf.float32)]
            y = score(head([pooled, *others], training=False))
        else:
            inputs = {"image": x, "meta": tf.convert_to_tensor(meta, tf.float32)} if meta is not None else x
            fmap, out = features(inputs, training=False)
            fmap = tf.cast(fmap, tf.float32)
            y = score(out)
    grads = tape.gradient(y, fmap)
    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1))
    size = images.shape[1]
    cam = tf.image.resize(cam[..., None], (size, size), method="bilinear")[..., 0].numpy()
    return scale_maps(cam)


#: the per-map [0, 1] scaling lives with the explanation types (pure numpy); kept here under its old name
scale = scale_maps
