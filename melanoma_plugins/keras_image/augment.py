"""Training-time augmentation as a seeded Keras layer (backend-agnostic: TensorFlow or JAX).

It runs inside the model on the accelerator (TensorFlow ops on the TF backend, so the TPU input path stays
TFRecords → decode → batch with static shapes), only when called with ``training=True``; test-time
augmentation calls it explicitly.
"""

from __future__ import annotations

import math
from typing import Any

from melanoma_data.native_logs import filtered

with filtered():  # TensorFlow's native start-up lines (Keras imports it on the default backend)
    import keras
    from keras import ops



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
