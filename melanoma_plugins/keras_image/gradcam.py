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
        return _score(out, len(images), positive)

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
    return _cam(tape.gradient(y, fmap), fmap, images.shape[1])


def _score(out, n: int, positive: list[bool] | None):
    """The explained score of each row: the sigmoid, or the sum of the ``positive`` softmax columns."""
    import tensorflow as tf

    out = tf.reshape(tf.cast(out, tf.float32), (n, -1))
    if positive:
        return tf.reduce_sum(tf.boolean_mask(out, np.asarray(positive, bool), axis=1), axis=1)
    return out[:, 0]


def _cam(grads, fmap, size: int) -> np.ndarray:
    """Feature maps weighted by their mean gradients, summed, ReLU, upsampled to ``size`` and scaled to [0, 1]."""
    import tensorflow as tf

    weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
    cam = tf.nn.relu(tf.reduce_sum(weights * fmap, axis=-1))
    cam = tf.image.resize(cam[..., None], (size, size), method="bilinear")[..., 0].numpy()
    return scale_maps(cam)


def gradcam_views(model: Any, inputs: dict[str, np.ndarray], positive: list[bool] | None = None,
                  views: tuple[str, ...] = ("dermoscopic", "clinical")) -> dict[str, np.ndarray]:
    """Grad-CAM of the two-view model, per view: ``{view: (n, S, S)}`` for the model's ``inputs`` (each view's
    images and mask, ``meta``). Each view's backbone's last feature maps (the shared backbone's for both, or
    ``efficientnet_…_<view>``'s) are weighted by the gradient of the score through the ``twoview_head``; a
    masked (missing) view's map is all zeros. The backbones are the nested models named ``efficientnet…`` or
    ``backbone_small…`` (:data:`melanoma_plugins.keras_image.nets.BACKBONE_PREFIXES`)."""
    import tensorflow as tf

    if keras.backend.backend() != "tensorflow":
        raise RuntimeError("Grad-CAM is implemented for the TensorFlow backend")
    backbones = [layer for layer in model.layers if layer.name.startswith(("efficientnet", "backbone_small"))]
    head = model.get_layer("twoview_head")
    n = len(inputs["meta"])
    fmaps = {}
    with filtered():
        for v in views:
            base = next((b for b in backbones if b.name.endswith(f"_{v}")), backbones[0])
            features = keras.Model(base.input, base.get_layer("top_activation").output)
            fmaps[v] = tf.cast(features(tf.convert_to_tensor(inputs[v], tf.float32), training=False), tf.float32)
    others = {k: tf.convert_to_tensor(inputs[k], tf.float32) for k in ("meta", *(f"{v}_view" for v in views))}
    out = {}
    for v in views:
        with filtered(), tf.GradientTape() as tape:
            tape.watch(fmaps[v])
            pooled = {f"{u}_features": tf.reduce_mean(fmaps[u], axis=(1, 2)) for u in views}
            y = _score(head({**pooled, **others}, training=False), n, positive)
        out[v] = _cam(tape.gradient(y, fmaps[v]), fmaps[v], inputs[v].shape[1])
    return out


#: the per-map [0, 1] scaling lives with the explanation types (pure numpy); kept here under its old name
scale = scale_maps
