"""Keras 3 building blocks of the image plugins, backend-agnostic (TensorFlow, JAX): networks, losses,
learning-rate schedule, and the training-time augmentation as a seeded layer.

This module imports Keras only (no TensorFlow, no project data code but the stdlib-only start-up log
filter), so it runs where only JAX is installed (``KERAS_BACKEND=jax``), e.g. the GPU benchmark.

Augmentation runs inside the model on the accelerator (TensorFlow ops on the TF backend, so the
TPU input path stays TFRecords → decode → batch with static shapes). It is active only when the
layer is called with ``training=True``; test-time augmentation calls it explicitly.
"""

from __future__ import annotations

import math
from typing import Any

from melanoma_data.native_logs import filtered

with filtered():  # TensorFlow's native start-up lines (Keras imports it on the default backend)
    import keras
    from keras import ops

EFFNET_VARIANTS = {
    "B0": "EfficientNetB0", "B1": "EfficientNetB1", "B2": "EfficientNetB2", "B3": "EfficientNetB3",
    "B4": "EfficientNetB4", "B5": "EfficientNetB5", "B6": "EfficientNetB6", "B7": "EfficientNetB7",
    "V2B0": "EfficientNetV2B0", "V2B1": "EfficientNetV2B1", "V2B2": "EfficientNetV2B2", "V2B3": "EfficientNetV2B3",
    "V2S": "EfficientNetV2S",
}
#: File names Keras looks for in ``~/.keras/models/`` for ``weights="imagenet"`` (no top).
IMAGENET_FILES = {
    **{f"B{i}": f"efficientnetb{i}_notop.h5" for i in range(8)},
    **{f"V2B{i}": f"efficientnetv2-b{i}_notop.h5" for i in range(4)},
    "V2S": "efficientnetv2-s_notop.h5",
}


# ------------------------------------------------------------------------------ losses


def make_loss(kind: str = "focal", alpha: float = 0.75, gamma: float = 2.0, label_smoothing: float = 0.0,
              positive: list[bool] | None = None):
    """Focal loss (α weights the positive class; needs ``apply_class_balancing``) or binary cross-entropy.

    Focal loss per example: ``-α (1-p)^γ log p`` for a melanoma, ``-(1-α) p^γ log(1-p)`` for a benign
    lesion. Keras ignores ``alpha`` unless ``apply_class_balancing=True``, so it is always set here;
    with 1.8% positives, α > 0.5 weights the rare class up.

    ``positive`` (one flag per class) makes it the multi-class loss of a softmax head: categorical focal
    loss with α for the classes the target counts (MEL; MEL, BCC, SCC for "malignant") and 1 - α for the
    others, or categorical cross-entropy; ``label_smoothing`` applies to both.
    """
    if positive is not None:
        if kind == "focal":
            weights = [alpha if p else 1.0 - alpha for p in positive]
            return keras.losses.CategoricalFocalCrossentropy(alpha=weights, gamma=gamma,
                                                             label_smoothing=label_smoothing)
        if kind == "bce":
            return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
        raise ValueError(f"loss must be 'focal' or 'bce', got {kind!r}")
    if kind == "focal":
        return keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True, alpha=alpha, gamma=gamma,
                                                    label_smoothing=label_smoothing)
    if kind == "bce":
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
    raise ValueError(f"loss must be 'focal' or 'bce', got {kind!r}")


# ------------------------------------------------------------------------------ schedule


@keras.saving.register_keras_serializable("melanoma")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine (to ``min_lr``) or exponential decay."""

    def __init__(self, lr: float, total_steps: int, warmup_steps: int = 0, kind: str = "cosine",
                 min_lr: float = 1e-6, decay_rate: float = 0.8, steps_per_epoch: int = 1, offset: int = 0) -> None:
        self.lr, self.total_steps, self.warmup_steps = float(lr), int(total_steps), int(warmup_steps)
        self.kind, self.min_lr, self.decay_rate = kind, float(min_lr), float(decay_rate)
        self.steps_per_epoch, self.offset = max(1, int(steps_per_epoch)), int(offset)

    def __call__(self, step):
        step = ops.cast(step, "float32") + self.offset
        warm = self.lr * (step + 1.0) / max(self.warmup_steps, 1)
        after = ops.maximum(step - self.warmup_steps, 0.0)
        if self.kind == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            frac = ops.minimum(after / span, 1.0)
            decayed = self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + ops.cos(math.pi * frac))
        elif self.kind == "exponential":
            decayed = ops.maximum(self.lr * ops.power(self.decay_rate, after / self.steps_per_epoch), self.min_lr)
        else:
            decayed = ops.ones_like(step) * self.lr
        return ops.where(step < self.warmup_steps, warm, decayed)

    def get_config(self) -> dict[str, Any]:
        return {"lr": self.lr, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "kind": self.kind, "min_lr": self.min_lr, "decay_rate": self.decay_rate,
                "steps_per_epoch": self.steps_per_epoch, "offset": self.offset}


# ------------------------------------------------------------------------------ augmentation


@keras.saving.register_keras_serializable("melanoma")
class Augment(keras.layers.Layer):
    """Seeded training-time augmentation of float RGB images in [0, 255] (square, batched).

    Per image: a random dihedral orientation (flips and transpose), a rotation by up to ``rotate``
    degrees combined with a zoom-in just large enough that no corner leaves the image (the slides'
    "restrict augmentation": no black edges) plus up to ``zoom`` more and a random translation inside
    the margin (a random resized crop), brightness/contrast/saturation/hue jitter, ``holes`` coarse
    dropout squares, simulated hair (random dark/light curved strands) with probability ``hair`` and a
    simulated microscope field (dark circular vignette) with probability ``microscope``.
    """

    def __init__(self, flip: bool = True, rotate: float = 20.0, zoom: float = 0.15, brightness: float = 0.1,
                 contrast: float = 0.1, saturation: float = 0.1, hue: float = 0.02, holes: int = 0,
                 hole_size: float = 0.1, hair: float = 0.3, microscope: float = 0.2, seed: int | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.flip, self.rotate, self.zoom = bool(flip), float(rotate), float(zoom)
        self.brightness, self.contrast, self.saturation, self.hue = (float(brightness), float(contrast),
                                                                     float(saturation), float(hue))
        self.holes, self.hole_size = int(holes), float(hole_size)
        self.hair, self.microscope = float(hair), float(microscope)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def get_config(self) -> dict[str, Any]:
        cfg = super().get_config()
        cfg.update(flip=self.flip, rotate=self.rotate, zoom=self.zoom, brightness=self.brightness,
                   contrast=self.contrast, saturation=self.saturation, hue=self.hue, holes=self.holes,
                   hole_size=self.hole_size, hair=self.hair, microscope=self.microscope, seed=self.seed)
        return cfg

    def compute_output_shape(self, input_shape):
        return input_shape

    def _u(self, shape, lo=0.0, hi=1.0):
        return keras.random.uniform(shape, lo, hi, seed=self.seed_generator)

    def call(self, x, training=None):
        if not training:
            return x
        x = ops.cast(x, "float32")
        b = ops.shape(x)[0]
        size = x.shape[1]
        if self.flip:
            x = ops.where(ops.reshape(self._u((b,)) < 0.5, (-1, 1, 1, 1)), ops.flip(x, axis=2), x)
            x = ops.where(ops.reshape(self._u((b,)) < 0.5, (-1, 1, 1, 1)), ops.flip(x, axis=1), x)
            x = ops.where(ops.reshape(self._u((b,)) < 0.5, (-1, 1, 1, 1)), ops.transpose(x, (0, 2, 1, 3)), x)
        if self.rotate > 0 or self.zoom > 0:
            x = self._rotate_zoom(x, b, size)
        x = self._colour(x, b)
        if self.holes > 0:
            x = self._holes(x, b, size)
        if self.hair > 0:
            x = self._hair(x, b, size)
        if self.microscope > 0:
            x = self._microscope(x, b, size)
        return ops.clip(x, 0.0, 255.0)

    def _rotate_zoom(self, x, b, size):
        theta = self._u((b,), -1.0, 1.0) * (self.rotate * math.pi / 180.0)
        c, s = ops.cos(theta), ops.sin(theta)
        need = ops.abs(c) + ops.abs(s)  # zoom that keeps a rotated square inside the original
        z = need * self._u((b,), 1.0, 1.0 + self.zoom)
        scale = 1.0 / z
        half = (size - 1) / 2.0
        footprint = half * scale * need
        margin = ops.maximum(half - footprint, 0.0) * 0.999
        tx = self._u((b,), -1.0, 1.0) * margin
        ty = self._u((b,), -1.0, 1.0) * margin
        # output (x, y) → input: R(θ)·scale·((x, y) - centre) + centre + t
        a0, a1 = c * scale, -s * scale
        b0, b1 = s * scale, c * scale
        a2 = half - a0 * half - a1 * half + tx
        b2 = half - b0 * half - b1 * half + ty
        zero = ops.zeros_like(a0)
        transform = ops.stack([a0, a1, a2, b0, b1, b2, zero, zero], axis=1)
        return ops.image.affine_transform(x, transform, interpolation="bilinear", fill_mode="reflect")

    def _colour(self, x, b):
        if self.brightness > 0:
            x = x * ops.reshape(1.0 + self._u((b,), -self.brightness, self.brightness), (-1, 1, 1, 1))
        if self.contrast > 0:
            mean = ops.mean(x, axis=(1, 2, 3), keepdims=True)
            x = (x - mean) * ops.reshape(1.0 + self._u((b,), -self.contrast, self.contrast), (-1, 1, 1, 1)) + mean
        if self.saturation > 0:
            grey = ops.mean(x, axis=3, keepdims=True)
            x = grey + (x - grey) * ops.reshape(1.0 + self._u((b,), -self.saturation, self.saturation), (-1, 1, 1, 1))
        if self.hue > 0:  # rotate chroma in YIQ space
            angle = self._u((b,), -self.hue, self.hue) * 2.0 * math.pi
            yiq = ops.convert_to_tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
            rgb = ops.convert_to_tensor([[1.0, 0.956, 0.621], [1.0, -0.272, -0.647], [1.0, -1.106, 1.703]])
            q = ops.einsum("bhwc,dc->bhwd", x, yiq)
            ca, sa = ops.reshape(ops.cos(angle), (-1, 1, 1)), ops.reshape(ops.sin(angle), (-1, 1, 1))
            i2 = q[..., 1] * ca - q[..., 2] * sa
            q2 = q[..., 1] * sa + q[..., 2] * ca
            q = ops.stack([q[..., 0], i2, q2], axis=-1)
            x = ops.einsum("bhwd,cd->bhwc", q, rgb)
        return x

    def _grid(self, size):
        r = ops.arange(size, dtype="float32")
        yy = ops.reshape(r, (1, size, 1))
        xx = ops.reshape(r, (1, 1, size))
        return xx, yy

    def _holes(self, x, b, size):
        xx, yy = self._grid(size)
        side = self.hole_size * size
        keep = ops.ones((b, size, size), dtype="float32")
        for _ in range(self.holes):
            cx = ops.reshape(self._u((b,), 0, size), (-1, 1, 1))
            cy = ops.reshape(self._u((b,), 0, size), (-1, 1, 1))
            inside = ops.logical_and(ops.abs(xx - cx) < side / 2, ops.abs(yy - cy) < side / 2)
            keep = keep * (1.0 - ops.cast(inside, "float32"))
        return x * ops.expand_dims(keep, -1)

    def _hair(self, x, b, size, strands: int = 4, segments: int = 10):
        xx, yy = self._grid(size)
        on = ops.reshape(ops.cast(self._u((b,)) < self.hair, "float32"), (-1, 1, 1))
        cover = ops.zeros((b, size, size), dtype="float32")
        shade = ops.zeros((b, size, size), dtype="float32")
        for _ in range(strands):
            pts = self._u((b, 3, 2), -0.1, 1.1) * size  # quadratic Bézier control points
            width = ops.reshape(self._u((b,), 0.6, 1.8) * size / 256.0 + 0.5, (-1, 1, 1))
            colour = ops.reshape(ops.where(self._u((b,)) < 0.8, self._u((b,), 10.0, 60.0),
                                           self._u((b,), 180.0, 235.0)), (-1, 1, 1))
            present = ops.reshape(ops.cast(self._u((b,)) < 0.75, "float32"), (-1, 1, 1))
            dist = ops.full((b, size, size), 1e6)
            prev = pts[:, 0, :]
            for k in range(1, segments + 1):
                t = k / segments
                cur = (1 - t) ** 2 * pts[:, 0, :] + 2 * (1 - t) * t * pts[:, 1, :] + t**2 * pts[:, 2, :]
                px, py = ops.reshape(prev[:, 0], (-1, 1, 1)), ops.reshape(prev[:, 1], (-1, 1, 1))
                dx = ops.reshape(cur[:, 0] - prev[:, 0], (-1, 1, 1))
                dy = ops.reshape(cur[:, 1] - prev[:, 1], (-1, 1, 1))
                u = ops.clip(((xx - px) * dx + (yy - py) * dy) / (dx * dx + dy * dy + 1e-6), 0.0, 1.0)
                d = ops.sqrt((xx - px - u * dx) ** 2 + (yy - py - u * dy) ** 2)
                dist = ops.minimum(dist, d)
                prev = cur
            alpha = ops.clip(width - dist, 0.0, 1.0) * present * on
            shade = shade * (1.0 - alpha) + colour * alpha
            cover = cover + alpha * (1.0 - cover)
        cover = ops.expand_dims(cover, -1)
        return x * (1.0 - cover) + ops.expand_dims(shade, -1) / ops.maximum(cover, 1e-6) * cover

    def _microscope(self, x, b, size):
        xx, yy = self._grid(size)
        on = ops.reshape(ops.cast(self._u((b,)) < self.microscope, "float32"), (-1, 1, 1))
        cx = ops.reshape(size / 2.0 + self._u((b,), -0.05, 0.05) * size, (-1, 1, 1))
        cy = ops.reshape(size / 2.0 + self._u((b,), -0.05, 0.05) * size, (-1, 1, 1))
        radius = ops.reshape(self._u((b,), 0.45, 0.62) * size, (-1, 1, 1))
        dist = ops.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)
        dark = ops.sigmoid((dist - radius) / (0.015 * size)) * on
        level = ops.reshape(self._u((b,), 0.0, 25.0), (-1, 1, 1, 1))
        dark = ops.expand_dims(dark, -1)
        return x * (1.0 - dark) + level * dark


# ------------------------------------------------------------------------------ networks


def backbone(variant: str, image_size: int, weights: str | None = None, bn_momentum: float | None = None):
    """An EfficientNet (B0–B7, V2B0–V2B3, V2S) without top, global-average pooled; inputs in [0, 255].

    ``weights``: None (random), ``"imagenet"`` (Keras' cache ``~/.keras/models/``; offline this needs
    the file named in :data:`IMAGENET_FILES` placed there), or a local weights file path.
    ``bn_momentum``: momentum of every BatchNormalization moving average (Keras' default 0.99 needs
    thousands of steps to fit randomly initialised statistics: short runs predict a constant).
    """
    if variant not in EFFNET_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(EFFNET_VARIANTS)}, got {variant!r}")
    cls = getattr(keras.applications, EFFNET_VARIANTS[variant])
    kwargs: dict[str, Any] = {"include_top": False, "weights": weights, "input_shape": (image_size, image_size, 3),
                              "pooling": "avg"}
    if variant.startswith("V2"):
        kwargs["include_preprocessing"] = True
    try:
        model = cls(**kwargs)
    except Exception as exc:
        if weights == "imagenet":
            raise RuntimeError(
                f"could not load ImageNet weights for EfficientNet{variant} ({type(exc).__name__}: {exc}). "
                f"Offline, download {IMAGENET_FILES[variant]} from "
                f"https://storage.googleapis.com/keras-applications/ and place it in ~/.keras/models/, "
                f"or pass weights=<path to the file>"
            ) from exc
        raise
    if bn_momentum is not None:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = float(bn_momentum)
    return model


def _head(features, dropout: float, classes: int = 1, name: str = "melanoma"):
    """One sigmoid unit (the target), or a softmax over ``classes`` diagnosis classes."""
    if dropout > 0:
        features = keras.layers.Dropout(dropout)(features)
    if classes > 1:
        return keras.layers.Dense(classes, activation="softmax", dtype="float32", name="diagnosis")(features)
    return keras.layers.Dense(1, activation="sigmoid", dtype="float32", name=name)(features)


def build_effnet(image_size: int, variant: str = "B0", weights: str | None = None, dropout: float = 0.3,
                 augment: Augment | None = None, bn_momentum: float | None = None, classes: int = 1) -> keras.Model:
    """Image → (augmentation when training) → EfficientNet → dropout → sigmoid (or softmax over ``classes``)."""
    inp = keras.Input((image_size, image_size, 3), name="image")
    x = augment(inp) if augment is not None else inp
    base = backbone(variant, image_size, weights, bn_momentum)
    out = _head(base(x), dropout, classes)
    return keras.Model(inp, out, name=f"effnet_{variant.lower()}")


def build_cnn(image_size: int, arch: str = "v1b", augment: Augment | None = None, classes: int = 1) -> keras.Model:
    """The seed's barebone CNNs.

    ``v1a``: conv 3×3×64 → conv 3×3×32 → flatten → dense. ``v1b``: conv 3×3×75 → pool → dropout 0.15 →
    conv 3×3×125 → pool → dropout 0.15 → flatten → dense. ``small`` (not the seed's; what the demo trains
    on CPU): four conv 3×3 + BatchNorm + ReLU blocks (16, 32, 64, 64 filters, 2×2 pooling down to 8 px),
    global average and max pooling, dropout 0.2 → dense (~60k weights: learns from a few hundred images).
    Sigmoid output (softmax over ``classes`` when more than one).
    """
    inp = keras.Input((image_size, image_size, 3), name="image")
    x = augment(inp) if augment is not None else inp
    x = keras.layers.Rescaling(1.0 / 255)(x)
    if arch == "v1a":
        x = keras.layers.Conv2D(64, 3, activation="relu")(x)
        x = keras.layers.Conv2D(32, 3, activation="relu")(x)
    elif arch == "v1b":
        x = keras.layers.Conv2D(75, 3, activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Dropout(0.15)(x)
        x = keras.layers.Conv2D(125, 3, activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Dropout(0.15)(x)
    elif arch == "small":
        for filters in (16, 32, 64, 64):
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = keras.layers.BatchNormalization(momentum=0.9)(x)
            x = keras.layers.Activation("relu")(x)
            if filters != 64 or x.shape[1] > 8:
                x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(x),
                                        keras.layers.GlobalMaxPooling2D()(x)])
        return keras.Model(inp, _head(x, 0.2, classes), name=f"cnn_{arch}")
    else:
        raise ValueError(f"arch must be 'v1a', 'v1b' or 'small', got {arch!r}")
    x = keras.layers.Flatten()(x)
    return keras.Model(inp, _head(x, 0.0, classes), name=f"cnn_{arch}")


def build_fusion(image_size: int, n_meta: int, variant: str = "B0", weights: str | None = None,
                 dropout: float = 0.3, meta_dropout: float = 0.3, augment: Augment | None = None,
                 bn_momentum: float | None = None, classes: int = 1) -> keras.Model:
    """Image backbone + metadata MLP concatenated before the head (the seed's V3, the 2020 winners' recipe)."""
    img = keras.Input((image_size, image_size, 3), name="image")
    meta = keras.Input((n_meta,), name="meta")
    x = augment(img) if augment is not None else img
    f_img = backbone(variant, image_size, weights, bn_momentum)(x)
    if dropout > 0:
        f_img = keras.layers.Dropout(dropout)(f_img)
    m = keras.layers.Dense(32, activation="relu")(meta)
    m = keras.layers.BatchNormalization(momentum=bn_momentum or 0.99)(m)
    m = keras.layers.Dropout(meta_dropout)(m)
    m = keras.layers.Dense(16, activation="relu")(m)
    z = keras.layers.Concatenate()([f_img, m])
    z = keras.layers.Dense(64, activation="relu")(z)
    return keras.Model({"image": img, "meta": meta}, _head(z, dropout, classes), name=f"fusion_{variant.lower()}")
