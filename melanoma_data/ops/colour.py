"""Colour constancy (Shades of Gray, estimated from skin) and brightness normalisation, with the gains applied."""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np
from pydantic import Field

from melanoma_data.ops._cv import cv2
from melanoma_data.ops.base import Bool, OpParams, Real

VERSION = "5"  # 2: estimated on a thumbnail, applied through one lookup table; 3: brightness after from the LUT;
#                4: the illuminant is estimated from skin only (lesion, dark ring and artefacts left out);
#                5: the skin's individual typology angle (ita, ita_band) is measured too (pixels and gains unchanged)

#: The ITA bands of Del Bino & Bernerd (2013), lightest first, each with its lower bound in degrees. A value on a
#: boundary falls in the darker band (lower bounds are exclusive, upper bounds inclusive): 55° is ``light``,
#: -30° is ``dark``.
ITA_BANDS: tuple[tuple[str, float], ...] = (("very light", 55.0), ("light", 41.0), ("intermediate", 28.0),
                                             ("tan", 10.0), ("brown", -30.0), ("dark", float("-inf")))
ITA_BAND_NAMES = tuple(name for name, _ in ITA_BANDS)


class ColourParams(OpParams):
    """Shades of Gray with Minkowski norm ``p``; optional gamma to reach ``target_brightness``.

    ``estimate = "skin"`` (the default) takes the illuminant from skin pixels only: the lesion (the darker class
    of an Otsu split of the smoothed luminance, when the two classes differ by at least ``lesion_contrast``
    levels), the dark ring, specular highlights and the pixels the caller excludes (artefacts) are left out,
    falling back to the whole image when less than ``min_skin`` of it is skin; ``image`` uses every pixel above
    ``dark_floor`` (Shades of Gray as published, which turns brown lesions that fill the frame olive or purple).
    """

    added_params = ("estimate", "min_skin", "lesion_contrast")

    p: Real = Field(6.0, ge=1.0, le=64.0, description="Minkowski norm (1 = grey world, large = max-RGB); 6 is the "
                                                      "ISIC-winning default")
    enabled: Bool = Field(True, description="apply colour constancy (off: gains 1, brightness still measured)")
    target_brightness: Real = Field(0.0, ge=0.0, le=250.0, description="mean luminance (0-255) to reach by a gamma "
                                                                       "curve; 0 disables it")
    max_gain: Real = Field(3.0, ge=1.0, le=20.0, description="per-channel gains are clipped to [1/max_gain, max_gain]")
    dark_floor: Real = Field(15.0, ge=0.0, le=128.0, description="pixels darker than this (vignette, borders) are "
                                                                 "ignored when estimating")
    estimate: Literal["skin", "image"] = Field(
        "skin", title="colour estimate", description="estimate the illuminant from skin only, or from every pixel "
                                                     "above dark_floor (as published)")
    min_skin: Real = Field(0.1, ge=0.0, le=1.0, description="the share of usable pixels that must be skin for the "
                                                            "skin estimate")
    lesion_contrast: Real = Field(20.0, ge=0.0, le=255.0, description="luminance difference (levels) between the "
                                                                      "Otsu classes for a lesion to be cut out")


@dataclasses.dataclass(frozen=True)
class ColourResult:
    """Corrected image, the per-channel gains applied and the luminance before and after."""

    image: np.ndarray
    gains: tuple[float, float, float]
    brightness_before: float
    brightness_after: float
    ita: float | None = None

    @property
    def ita_band(self) -> str | None:
        """The Del Bino band of :attr:`ita` (None when it was not measured)."""
        return None if self.ita is None else ita_band(self.ita)


def ita_band(ita: float) -> str:
    """The band of :data:`ITA_BANDS` an individual typology angle (degrees) falls in."""
    return next(name for name, low in ITA_BANDS if ita > low)


def ita_degrees(rgb: np.ndarray) -> np.ndarray:
    """The individual typology angle of each pixel of an (..., 3) uint8 RGB array, in degrees.

    ITA = arctan((L* - 50) / b*) with CIELAB L* and b* (OpenCV's 8-bit Lab rescaled: L* = L · 100 / 255,
    b* = b - 128). Computed as atan2(L* - 50, b*) clipped to [-90°, 90°]: the same for b* > 0, and ±90° (by the
    sign of L* - 50) where b* ≤ 0 instead of a division by zero or a sign flip.
    """
    lab = cv2.cvtColor(np.ascontiguousarray(rgb.reshape(-1, 1, 3)), cv2.COLOR_RGB2LAB).reshape(-1, 3)
    lightness = lab[:, 0].astype(np.float64) * (100.0 / 255.0)
    b = lab[:, 2].astype(np.float64) - 128.0
    return np.clip(np.degrees(np.arctan2(lightness - 50.0, b)), -90.0, 90.0).reshape(rgb.shape[:-1])


def skin_ita(small: np.ndarray, skin: np.ndarray) -> float | None:
    """The median ITA (degrees) of the pixels of ``small`` under ``skin`` (None when there are none)."""
    if not skin.any():
        return None
    return float(np.median(ita_degrees(small[skin])))


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


def skin_mask(small: np.ndarray, luma: np.ndarray, params: ColourParams,
              exclude: np.ndarray | None = None) -> tuple[np.ndarray, bool]:
    """``(pixels to estimate from, whether they are skin only)`` on the thumbnail ``small``.

    Usable pixels are brighter than ``dark_floor`` and not saturated highlights (luma < 250) nor in
    ``exclude`` (with ``estimate = "image"``: every pixel brighter than ``dark_floor``, nothing else). The
    lesion is the darker class of an Otsu split of the smoothed luminance when the classes
    differ by ``lesion_contrast``; when what remains is under ``min_skin`` of the usable pixels, all usable
    pixels are returned (``False``).
    """
    if params.estimate != "skin":
        return luma > params.dark_floor, False  # as published (and as this op did before version 4)
    usable = (luma > params.dark_floor) & (luma < 250)
    if exclude is not None and exclude.any():
        if exclude.shape != usable.shape:
            exclude = cv2.resize(exclude.view(np.uint8), usable.shape[::-1], interpolation=cv2.INTER_AREA) > 0
        usable &= ~exclude
    if usable.sum() < 32:
        return usable, False
    smooth = cv2.GaussianBlur(luma, (0, 0), 1.5)
    values = np.clip(smooth[usable], 0, 255).astype(np.uint8).reshape(-1, 1)
    t, _ = cv2.threshold(values, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    dark, bright = values[values <= t], values[values > t]
    if not len(dark) or not len(bright) or float(bright.mean()) - float(dark.mean()) < params.lesion_contrast:
        return usable, True  # no distinct lesion: all of it is skin
    skin = usable & (smooth > t)
    if skin.sum() < params.min_skin * usable.sum():
        return usable, False
    return skin, True


def shades_of_gray(img: np.ndarray, params: ColourParams, exclude: np.ndarray | None = None) -> ColourResult:
    """Shades of Gray colour constancy and optional brightness normalisation.

    The illuminant (the Minkowski ``p``-norm of each channel over the skin pixels, see :func:`skin_mask`,
    or over every pixel brighter than ``dark_floor`` with ``estimate = "image"``) and the brightness are
    estimated on a 128-px thumbnail; the correction (gains, clipped to [0, 255], then the optional gamma) is
    applied to the whole image through one lookup table, so values never wrap around. ``exclude``: pixels
    that are not skin whatever they look like (the artefacts op's rulers, ink, bubbles), any size.

    ``ita``: the median individual typology angle of the skin pixels (:func:`skin_mask` with the skin estimate,
    whatever ``estimate`` says), before any correction; None when colour constancy is off or no pixels are
    skin only (the lesion fills the frame, too few usable pixels). For auditing, not a model feature.
    """
    small = _thumb(img)
    if not params.enabled and params.target_brightness <= 0:  # measure only: the mean luminance, gains 1
        means = cv2.mean(small)
        before = float(0.299 * means[0] + 0.587 * means[1] + 0.114 * means[2])
        return ColourResult(img, (1.0, 1.0, 1.0), before, before)
    luma = _luma(small.astype(np.float32))
    valid = luma > params.dark_floor
    source = valid  # estimate = "image": the published method, over the same pixels as the brightness
    ita = None
    if params.enabled:
        as_skin = params if params.estimate == "skin" else params.model_copy(update={"estimate": "skin"})
        skin, only_skin = skin_mask(small, luma, as_skin, exclude)
        if params.estimate == "skin":
            source = skin
        ita = skin_ita(small, skin) if only_skin else None
    # every statistic below is linear in per-channel histograms (256 bins) of the uint8 thumbnail:
    # x^p, gains, gamma and the lookup table are applied to 256 levels instead of to every pixel
    every = _histograms(small)
    needs_bright = params.enabled or params.target_brightness > 0
    bright = _histograms(small, valid) if needs_bright and valid.any() else every
    weights = np.array([0.299, 0.587, 0.114])
    levels = np.arange(256, dtype=np.float64)
    before = float(weights @ (every @ levels)) / every[0].sum()
    gains = np.ones(3, np.float64)
    if params.enabled and source.sum() > 16:
        skin = _histograms(small, source) if source is not valid else bright
        norms = np.power(skin @ np.power(levels / 255.0, params.p) / skin[0].sum(), 1.0 / params.p)
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
    return ColourResult(out, tuple(float(g) for g in gains), before, after, ita)
