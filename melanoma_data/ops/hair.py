"""Hair: a multi-scale, multi-orientation line detector (dark and light hair) and masked inpainting."""

from __future__ import annotations

import dataclasses

import numpy as np

from melanoma_data.ops._cv import cv2, disk
from melanoma_data.ops.base import Params, check_choice, check_float, check_int

VERSION = "5"  # 2: shape-filtered black/top-hat; 3: rulers, pen strokes and ink reported, never inpainted;
#                4: Navier-Stokes inpainting, radius 1 (same quality as Telea radius 3 at a third of the cost);
#                5: the artefacts op's ruler, ink and bubble pixels are never hair


@dataclasses.dataclass(frozen=True)
class HairParams(Params):
    """Hair detection and removal (at working resolution; sizes are fractions of the short side).

    Candidates are thin structures darker (black-hat) or lighter (top-hat) than their surroundings
    at each scale in ``scales``, above a robust threshold (``sigma`` × the response's MAD above its
    median, at least ``threshold`` grey levels). A connected candidate is hair when it is long
    (``min_length``), thin (``max_width``) and either fairly straight (its extent is at least
    ``straightness`` × its length) or a sparse network spanning much of the image (crossing hairs:
    extent ≥ ``network_extent``, fill of its bounding box ≤ ``network_fill``). Pigment network, dots,
    globules and lesion borders are short, thick, tortuous or dense, and are left alone.

    Attributes:
        enabled: run detection (off: fraction 0, image untouched).
        scales: structuring-element diameters (fractions of the short side).
        colours: ``dark``, ``light`` or ``both`` hair polarities.
        sigma: robust threshold in MADs above the median response.
        threshold: minimum response in grey levels.
        min_length, max_width, straightness, network_extent, network_fill: shape tests (above).
        min_fraction: below this hair fraction nothing is inpainted (the image is left alone).
        inpaint_method: ``ns`` (Navier-Stokes, Bertalmío et al.) or ``telea`` (fast marching).
        inpaint_radius: inpainting neighbourhood radius in pixels.
        remove: inpaint the detected hair (otherwise only measure it).
        ruler_length: a candidate line at least this long (fraction of the short side) and almost
            perfectly straight is a ruler edge or pen stroke, not hair: reported, never inpainted.
        ink_saturation: pixels of marker-ink hue (green, blue, violet) with at least this saturation
            are ink marks: reported, never inpainted.
    """

    enabled: bool = True
    scales: tuple[float, ...] = (0.018,)
    colours: str = "both"
    sigma: float = 8.0
    threshold: float = 10.0
    min_length: float = 0.1
    max_width: float = 0.012
    straightness: float = 0.35
    network_extent: float = 0.3
    network_fill: float = 0.12
    min_fraction: float = 0.002
    inpaint_method: str = "ns"
    inpaint_radius: int = 1
    remove: bool = True
    ruler_length: float = 0.35
    ink_saturation: float = 0.45

    def validate(self) -> None:
        if not isinstance(self.scales, tuple | list) or not self.scales:
            raise TypeError("scales must be a non-empty list of fractions")
        for v in self.scales:
            check_float("hair scale", v, 0.002, 0.2)
        check_choice("hair colours", self.colours, ("dark", "light", "both"))
        check_float("sigma", self.sigma, 0.0, 50.0)
        check_float("hair threshold", self.threshold, 0.0, 255.0)
        check_float("min_length", self.min_length, 0.0, 2.0)
        check_float("max_width", self.max_width, 0.0005, 0.2)
        check_float("straightness", self.straightness, 0.0, 1.0)
        check_float("network_extent", self.network_extent, 0.0, 1.5)
        check_float("network_fill", self.network_fill, 0.0, 1.0)
        check_float("min_fraction", self.min_fraction, 0.0, 1.0)
        check_choice("inpaint_method", self.inpaint_method, ("ns", "telea"))
        check_int("inpaint_radius", self.inpaint_radius, 1, 20)
        check_float("ruler_length", self.ruler_length, 0.05, 2.0)
        check_float("ink_saturation", self.ink_saturation, 0.0, 1.0)

    def __post_init__(self) -> None:
        if isinstance(self.scales, list):
            object.__setattr__(self, "scales", tuple(self.scales))
        super().__post_init__()


def ink_mask(img: np.ndarray, params: HairParams) -> np.ndarray:
    """Marker ink: saturated green, blue or violet pixels (skin and lesions are red to brown)."""
    if img.ndim != 3:
        return np.zeros(img.shape[:2], bool)
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    sat = int(np.ceil(params.ink_saturation * 255))
    return cv2.inRange(hsv, (40, sat, 40), (165, 255, 255)) > 0  # hue 40–165 (OpenCV's 0–180 scale)


def hair_mask(img: np.ndarray, params: HairParams) -> np.ndarray:
    """Boolean mask of hair pixels (dark and/or light hair, any direction, several widths)."""
    return detect(img, params)[0]


def detect(img: np.ndarray, params: HairParams) -> tuple[np.ndarray, np.ndarray]:
    """(hair mask, marks mask): hair to inpaint; ruler edges, pen strokes and ink to report and keep."""
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    short = min(grey.shape)
    mask = np.zeros(grey.shape, np.uint8)
    marks = np.zeros(grey.shape, np.uint8)
    if short < 16:
        return mask.view(bool), marks.view(bool)
    ops = {"dark": [cv2.MORPH_BLACKHAT], "light": [cv2.MORPH_TOPHAT],
           "both": [cv2.MORPH_BLACKHAT, cv2.MORPH_TOPHAT]}[params.colours]
    from melanoma_data._jit import hair_components as components  # numba: imported on first use

    for op in ops:
        for frac in params.scales:
            k = max(5, int(round(frac * short)) | 1)
            resp = cv2.morphologyEx(grey, op, disk(k), borderType=cv2.BORDER_REFLECT)
            # each polarity separately: a dark hair and its light glint are not one thick thing
            components(resp, 2, params.threshold, params.sigma, short, params.min_length, params.max_width,
                       params.straightness, params.network_extent, params.network_fill, params.ruler_length,
                       mask, marks)
    ink = ink_mask(img, params)
    if ink.any():
        marks |= cv2.dilate(ink.view(np.uint8), np.ones((5, 5), np.uint8))
    mask[marks.view(bool)] = 0
    return mask.view(bool), marks.view(bool)


@dataclasses.dataclass(frozen=True)
class HairResult:
    """Hair removal output: the cleaned image, the hair mask, its fraction, and the marks left alone."""

    image: np.ndarray
    mask: np.ndarray
    fraction: float
    marks_fraction: float = 0.0


def remove_hair(img: np.ndarray, params: HairParams, keep: np.ndarray | None = None) -> HairResult:
    """Detect hair and inpaint only under the mask; images with (almost) no hair are returned as is.

    ``keep``: pixels that are not hair whatever they look like (the artefacts op's rulers, ink and bubble
    rims, in this image's frame): left out of the mask, so never inpainted, and counted as marks.
    ``image`` is a new array, or ``img`` itself (never mutated) when nothing was inpainted.
    """
    if not params.enabled:
        return HairResult(img, np.zeros(img.shape[:2], bool), 0.0)
    mask, marks = detect(img, params)
    if keep is not None and keep.any():
        mask &= ~keep
        marks |= keep
    fraction, marks_fraction = np.count_nonzero(mask) / mask.size, np.count_nonzero(marks) / marks.size
    if not params.remove or fraction < params.min_fraction:
        return HairResult(img, mask, fraction, marks_fraction)
    grow = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8))  # cover the hair's soft edges
    if keep is not None:
        grow[keep] = 0  # but not onto what must be kept
    method = cv2.INPAINT_NS if params.inpaint_method == "ns" else cv2.INPAINT_TELEA
    out = cv2.inpaint(img, grow, params.inpaint_radius, method)
    return HairResult(out, mask, fraction, marks_fraction)


def dullrazor(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The textbook recipe (grey → black-hat 17×17 → threshold 10 → Telea radius 1), for comparison."""
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    bh = cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, cv2.getStructuringElement(cv2.MORPH_RECT, (17, 17)))
    mask = (bh > 10).astype(np.uint8)
    return cv2.inpaint(img, mask, 1, cv2.INPAINT_TELEA), mask.astype(bool)
