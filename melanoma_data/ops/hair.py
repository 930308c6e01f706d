"""Hair: a multi-scale, multi-orientation line detector (dark and light hair) and masked inpainting."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from melanoma_data.ops._cv import cv2
from melanoma_data.ops.base import Params, check_choice, check_float, check_int

VERSION = "1"


@dataclasses.dataclass(frozen=True)
class HairParams(Params):
    """Hair detection and removal.

    Attributes:
        enabled: run detection at all (off: fraction 0, image untouched). Off by default: on real
            images the current thresholds also fire on skin texture (see the issue notes).
        lengths: structuring-element lengths as fractions of the short side (multi-scale).
        orientations: number of line orientations.
        colours: ``dark``, ``light`` or ``both`` hair polarities.
        threshold: minimum line response (grey levels) for a hair pixel.
        elongation: a pixel is hair only when its response along the best orientation exceeds the
            response along the worst by this factor (lines, not dots or globules).
        min_fraction: below this hair fraction nothing is inpainted (the image is left alone).
        inpaint_radius: Telea inpainting radius in pixels.
        remove: inpaint the detected hair (otherwise only measure it).
    """

    enabled: bool = False
    lengths: tuple[float, ...] = (0.025, 0.05)
    orientations: int = 8
    colours: str = "both"
    threshold: float = 14.0
    elongation: float = 2.5
    min_fraction: float = 0.002
    inpaint_radius: int = 3
    remove: bool = True

    def validate(self) -> None:
        if not isinstance(self.lengths, tuple | list) or not self.lengths:
            raise TypeError("lengths must be a non-empty list of fractions")
        for v in self.lengths:
            check_float("hair length", v, 0.002, 0.3)
        check_int("orientations", self.orientations, 2, 32)
        check_choice("hair colours", self.colours, ("dark", "light", "both"))
        check_float("hair threshold", self.threshold, 0.0, 255.0)
        check_float("elongation", self.elongation, 1.0, 100.0)
        check_float("min_fraction", self.min_fraction, 0.0, 1.0)
        check_int("inpaint_radius", self.inpaint_radius, 1, 20)

    def __post_init__(self) -> None:
        if isinstance(self.lengths, list):
            object.__setattr__(self, "lengths", tuple(self.lengths))
        super().__post_init__()


@functools.lru_cache(maxsize=64)
def _line_kernel(length: int, k: int, n: int) -> np.ndarray:
    theta = np.pi * k / n
    kern = np.zeros((length, length), np.uint8)
    c = length // 2
    dx, dy = np.cos(theta) * c, np.sin(theta) * c
    cv2.line(kern, (round(c - dx), round(c - dy)), (round(c + dx), round(c + dy)), 1, 1)
    return kern


def _line_response(grey: np.ndarray, length: int, n: int, op: int) -> tuple[np.ndarray, np.ndarray]:
    """Max and min over orientations of the black-hat or top-hat response with line elements."""
    hi = lo = None
    for k in range(n):
        resp = cv2.morphologyEx(grey, op, _line_kernel(length, k, n))  # uint8, saturating
        hi = resp if hi is None else cv2.max(hi, resp)
        lo = resp if lo is None else cv2.min(lo, resp)
    return hi, lo


def hair_mask(img: np.ndarray, params: HairParams) -> np.ndarray:
    """Boolean mask of hair pixels.

    A linear closing fills a dark hair that crosses the line direction but not one that runs along it,
    so for hair the response differs strongly between orientations; round dots, globules and the
    lesion body respond in every orientation and are left alone.
    """
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    short = min(grey.shape)
    mask = np.zeros(grey.shape, bool)
    ops = {"dark": [cv2.MORPH_BLACKHAT], "light": [cv2.MORPH_TOPHAT],
           "both": [cv2.MORPH_BLACKHAT, cv2.MORPH_TOPHAT]}
    for op in ops[params.colours]:
        for frac in params.lengths:
            length = max(5, int(round(frac * short)) | 1)
            if length >= short:
                continue
            hi, lo = _line_response(grey, length, params.orientations, op)
            line = (hi >= params.threshold) & (hi > params.elongation * np.maximum(lo, 1).astype(np.float32))
            mask |= line
    if mask.any():
        m = mask.astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
        keep = np.zeros(n, bool)
        min_len = 0.03 * short
        extent = np.maximum(stats[:, cv2.CC_STAT_WIDTH], stats[:, cv2.CC_STAT_HEIGHT])
        keep[1:] = extent[1:] >= min_len  # hairs are long; speckle is not
        mask = keep[labels]
        mask = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    return mask


@dataclasses.dataclass(frozen=True)
class HairResult:
    """Hair removal output: the cleaned image, the mask and the fraction of pixels it covers."""

    image: np.ndarray
    mask: np.ndarray
    fraction: float


def remove_hair(img: np.ndarray, params: HairParams) -> HairResult:
    """Detect hair and inpaint only under the mask; images with (almost) no hair are returned as is."""
    if not params.enabled:
        return HairResult(img.copy(), np.zeros(img.shape[:2], bool), 0.0)
    mask = hair_mask(img, params)
    fraction = float(mask.mean())
    if not params.remove or fraction < params.min_fraction:
        return HairResult(img.copy(), mask, fraction)
    out = cv2.inpaint(img, mask.astype(np.uint8), params.inpaint_radius, cv2.INPAINT_TELEA)
    return HairResult(out, mask, fraction)


def dullrazor(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The textbook recipe (grey → black-hat 17×17 → threshold 10 → Telea radius 1), for comparison."""
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    bh = cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, cv2.getStructuringElement(cv2.MORPH_RECT, (17, 17)))
    mask = (bh > 10).astype(np.uint8)
    return cv2.inpaint(img, mask, 1, cv2.INPAINT_TELEA), mask.astype(bool)
