"""Colour constancy (Shades of Gray) and brightness normalisation, with the gains they applied."""

from __future__ import annotations

import dataclasses

import numpy as np

from melanoma_data.ops.base import Params, check_float

VERSION = "1"


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
    enabled: bool = False
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


def shades_of_gray(img: np.ndarray, params: ColourParams) -> ColourResult:
    """Shades of Gray colour constancy and optional brightness normalisation.

    Values are clipped to [0, 255] before the uint8 cast (no wrap-around).
    """
    f = img.astype(np.float32)
    luma = _luma(f)
    before = float(luma.mean())
    valid = luma > params.dark_floor
    gains = np.ones(3, np.float32)
    if params.enabled and valid.sum() > 16:
        px = f[valid]
        norms = np.power(np.mean(np.power(px / 255.0, params.p), axis=0), 1.0 / params.p)
        if np.all(norms > 1e-6):
            gains = np.clip(norms.mean() / norms, 1 / params.max_gain, params.max_gain).astype(np.float32)
            f = f * gains
    f = np.clip(f, 0, 255)
    if params.target_brightness > 0:
        current = float(_luma(f)[valid].mean()) if valid.any() else float(_luma(f).mean())
        if 1.0 < current < 254.0:
            gamma = np.log(params.target_brightness / 255.0) / np.log(current / 255.0)
            f = 255.0 * np.power(f / 255.0, gamma)
    out = np.clip(np.rint(f), 0, 255).astype(np.uint8)
    return ColourResult(out, tuple(float(g) for g in gains), before, float(_luma(out.astype(np.float32)).mean()))
