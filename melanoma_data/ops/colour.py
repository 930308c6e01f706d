"""Colour constancy (Shades of Gray) and brightness normalisation, with the gains they applied."""

from __future__ import annotations

import dataclasses

import numpy as np

from melanoma_data.ops._cv import cv2
from melanoma_data.ops.base import Params, check_float

VERSION = "2"  # 2: estimated on a thumbnail, applied through one lookup table


@dataclasses.dataclass(frozen=True)
class ColourParams(Params):
    """Shades of Gray with Minkowski norm ``p``; optional gamma to reach ``target_brightness``.

    Attributes:
        p: Minkowski norm (1 = grey world, large = max-RGB); 6 is the ISIC-winning default.
        enabled: apply colour constancy (off by default until validated with the other ops).
        target_brightness: mean luminance (0–255) to reach by a gamma curve; 0 disables it.
        max_gain: per-channel gains are clipped to [1/max_gain, max_gain].
        dark_floor: pixels darker than this (vignette, borders) are ignored when estimating.
    """

    p: float = 6.0
    enabled: bool = True
    target_brightness: float = 0.0
    max_gain: float = 3.0
    dark_floor: float = 15.0

    def validate(self) -> None:
        check_float("p", self.p, 1.0, 64.0)
        check_float("target_brightness", self.target_brightness, 0.0, 250.0)
        check_float("max_gain", self.max_gain, 1.0, 20.0)
        check_float("dark_floor", self.dark_floor, 0.0, 128.0)


@dataclasses.dataclass(frozen=True)
class ColourResult:
    """Corrected image, the per-channel gains applied and the luminance before and after."""

    image: np.ndarray
    gains: tuple[float, float, float]
    brightness_before: float
    brightness_after: float


def _luma(img: np.ndarray) -> np.ndarray:
    return img[..., 0] * 0.299 + img[..., 1] * 0.587 + img[..., 2] * 0.114


def _thumb(img: np.ndarray, side: int = 128) -> np.ndarray:
    h, w = img.shape[:2]
    k = side / max(h, w)
    if k >= 1:
        return img
    return cv2.resize(img, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA)


def shades_of_gray(img: np.ndarray, params: ColourParams) -> ColourResult:
    """Shades of Gray colour constancy and optional brightness normalisation.

    The illuminant (the Minkowski ``p``-norm of each channel over pixels brighter than
    ``dark_floor``) and the brightness are estimated on a 128-px thumbnail; the correction (gains,
    clipped to [0, 255], then the optional gamma) is applied to the whole image through one lookup
    table, so values never wrap around.
    """
    small = _thumb(img).astype(np.float32)
    luma = _luma(small)
    before = float(luma.mean())
    valid = luma > params.dark_floor
    gains = np.ones(3, np.float64)
    if params.enabled and valid.sum() > 16:
        px = small[valid] / 255.0
        norms = np.power(np.mean(np.power(px, params.p), axis=0), 1.0 / params.p)
        if np.all(norms > 1e-6):
            gains = np.clip(norms.mean() / norms, 1 / params.max_gain, params.max_gain)
    levels = np.arange(256, dtype=np.float64)[:, None] * gains[None, :]  # (256, 3)
    levels = np.clip(levels, 0, 255)
    if params.target_brightness > 0:
        corrected = np.take_along_axis(levels, small.astype(np.uint8).reshape(-1, 3).astype(np.intp), axis=0)
        cur = _luma(corrected.reshape(small.shape))
        current = float(cur[valid].mean()) if valid.any() else float(cur.mean())
        if 1.0 < current < 254.0:
            gamma = np.log(params.target_brightness / 255.0) / np.log(current / 255.0)
            levels = 255.0 * np.power(levels / 255.0, gamma)
    lut = np.clip(np.rint(levels), 0, 255).astype(np.uint8)
    if np.array_equal(lut, np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)):
        out = img.copy()
    else:
        out = cv2.LUT(img, lut.reshape(256, 1, 3))
    after = float(_luma(_thumb(out).astype(np.float32)).mean())
    return ColourResult(out, tuple(float(g) for g in gains), before, after)
