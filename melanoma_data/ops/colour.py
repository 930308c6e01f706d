"""Colour constancy (Shades of Gray) and brightness normalisation, with the gains they applied."""

from __future__ import annotations

import dataclasses

import numpy as np

from melanoma_data.ops._cv import cv2
from melanoma_data.ops.base import Params, check_float

VERSION = "3"  # 2: estimated on a thumbnail, applied through one lookup table; 3: brightness after from the LUT


@dataclasses.dataclass(frozen=True)
class ColourParams(Params):
    """Shades of Gray with Minkowski norm ``p``; optional gamma to reach ``target_brightness``.

    Attributes:
        p: Minkowski norm (1 = grey world, large = max-RGB); 6 is the ISIC-winning default.
        enabled: apply colour constancy (off: gains 1, brightness still measured).
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


def _histograms(img: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(3, 256) per-channel counts of an (H, W, 3) uint8 image (only where ``mask`` is set)."""
    m = None if mask is None else mask.astype(np.uint8)
    return np.stack([cv2.calcHist([img], [c], m, [256], [0, 256]).ravel() for c in range(3)]).astype(np.float64)


def shades_of_gray(img: np.ndarray, params: ColourParams) -> ColourResult:
    """Shades of Gray colour constancy and optional brightness normalisation.

    The illuminant (the Minkowski ``p``-norm of each channel over pixels brighter than
    ``dark_floor``) and the brightness are estimated on a 128-px thumbnail; the correction (gains,
    clipped to [0, 255], then the optional gamma) is applied to the whole image through one lookup
    table, so values never wrap around.
    """
    small = _thumb(img)
    if not params.enabled and params.target_brightness <= 0:  # measure only: the mean luminance, gains 1
        means = cv2.mean(small)
        before = float(0.299 * means[0] + 0.587 * means[1] + 0.114 * means[2])
        return ColourResult(img, (1.0, 1.0, 1.0), before, before)
    luma = _luma(small.astype(np.float32))
    valid = luma > params.dark_floor
    # every statistic below is linear in per-channel histograms (256 bins) of the uint8 thumbnail:
    # x^p, gains, gamma and the lookup table are applied to 256 levels instead of to every pixel
    every = _histograms(small)
    needs_bright = params.enabled or params.target_brightness > 0
    bright = _histograms(small, valid) if needs_bright and valid.any() else every
    weights = np.array([0.299, 0.587, 0.114])
    levels = np.arange(256, dtype=np.float64)
    before = float(weights @ (every @ levels)) / every[0].sum()
    gains = np.ones(3, np.float64)
    if params.enabled and valid.sum() > 16:
        norms = np.power(bright @ np.power(levels / 255.0, params.p) / bright[0].sum(), 1.0 / params.p)
        if np.all(norms > 1e-6):
            gains = np.clip(norms.mean() / norms, 1 / params.max_gain, params.max_gain)
    table = np.clip(levels[:, None] * gains[None, :], 0, 255)  # (256, 3)
    if params.target_brightness > 0:
        current = float(weights @ np.einsum("cv,vc->c", bright, table)) / bright[0].sum()
        if 1.0 < current < 254.0:
            gamma = np.log(params.target_brightness / 255.0) / np.log(current / 255.0)
            table = 255.0 * np.power(table / 255.0, gamma)
    lut = np.clip(np.rint(table), 0, 255).astype(np.uint8)
    if np.array_equal(lut, np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)):
        out = img  # nothing to change (returned as is, never mutated)
    else:
        out = cv2.LUT(img, lut.reshape(256, 1, 3))
    after = float(weights @ np.einsum("cv,vc->c", every, lut.astype(np.float64))) / every[0].sum()  # corrected
    return ColourResult(out, tuple(float(g) for g in gains), before, after)
