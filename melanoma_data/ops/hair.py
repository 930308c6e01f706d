"""Hair: a multi-scale, multi-orientation line detector (dark and light hair) and masked inpainting."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from melanoma_data.ops._cv import cv2
from melanoma_data.ops.base import Params, check_choice, check_float, check_int

VERSION = "4"  # 2: shape-filtered black/top-hat; 3: rulers, pen strokes and ink reported, never inpainted;
#                4: Navier-Stokes inpainting, radius 1 (same quality as Telea radius 3 at a third of the cost)


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


@functools.lru_cache(maxsize=32)
def _disk(k: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))


def _hair_components(cand: np.ndarray, short: int, params: HairParams) -> tuple[np.ndarray, np.ndarray]:
    """Split connected candidates into hair (long, thin, straight-ish or a sparse network) and ruler-like lines."""
    n, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(cand, 8, cv2.CV_32S, cv2.CCL_GRANA)
    if n < 2:
        return np.zeros(cand.shape, bool), np.zeros(cand.shape, bool)
    where = np.flatnonzero(cand.view(bool))  # candidates are a few % of the image: index those, not every pixel
    lab = labels.ravel()[where]
    on_edge = cv2.erode(cand, np.ones((3, 3), np.uint8)).ravel()[where] == 0
    perimeter = np.bincount(lab[on_edge], minlength=n).astype(np.float64)
    area = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
    bw, bh = stats[:, cv2.CC_STAT_WIDTH].astype(np.float64), stats[:, cv2.CC_STAT_HEIGHT].astype(np.float64)
    length = np.maximum(perimeter / 2, 1.0)  # a thin curve's outline is twice its length
    width = area / length
    extent = np.maximum(bw, bh)
    fill = area / np.maximum(bw * bh, 1.0)
    keep = ((length >= params.min_length * short) & (width <= params.max_width * short + 1.0)
            & ((extent >= params.straightness * length)
               | ((extent >= params.network_extent * short) & (fill <= params.network_fill))))
    ruler = np.zeros(n, bool)
    for i in np.nonzero(keep & (extent >= params.ruler_length * short))[0]:
        ys, xs = np.divmod(where[lab == i], cand.shape[1])
        pts = np.stack([xs, ys], axis=1).astype(np.float32)
        vx, vy, x0, y0 = cv2.fitLine(pts, cv2.DIST_L2, 0, 0.01, 0.01).ravel()
        off = np.abs((pts[:, 0] - x0) * vy - (pts[:, 1] - y0) * vx)  # distance to the fitted line
        k = int(0.98 * (len(off) - 1))  # the 98th percentile (lower neighbour)
        ruler[i] = float(np.partition(off, k)[k]) <= max(3.0, 0.008 * short)  # dead straight: not a hair
    keep &= ~ruler
    keep[0] = ruler[0] = False
    hair, lines = np.zeros(cand.size, bool), np.zeros(cand.size, bool)
    hair[where] = keep[lab]
    if ruler.any():
        lines[where] = ruler[lab]
    return hair.reshape(cand.shape), lines.reshape(cand.shape)


def ink_mask(img: np.ndarray, params: HairParams) -> np.ndarray:
    """Marker ink: saturated green, blue or violet pixels (skin and lesions are red to brown)."""
    if img.ndim != 3:
        return np.zeros(img.shape[:2], bool)
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)
    sat = int(np.ceil(params.ink_saturation * 255))
    return cv2.inRange(hsv, (40, sat, 40), (165, 255, 255)) > 0  # hue 40–165 (OpenCV's 0–180 scale)


def _median_u8(a: np.ndarray) -> float:
    """Median of a uint8 array from its histogram (a tenth of ``np.median``'s cost)."""
    counts = cv2.calcHist([np.ascontiguousarray(a)], [0], None, [256], [0, 256]).ravel()
    return float(np.searchsorted(np.cumsum(counts), (a.size + 1) / 2))


def hair_mask(img: np.ndarray, params: HairParams) -> np.ndarray:
    """Boolean mask of hair pixels (dark and/or light hair, any direction, several widths)."""
    return detect(img, params)[0]


def detect(img: np.ndarray, params: HairParams) -> tuple[np.ndarray, np.ndarray]:
    """(hair mask, marks mask): hair to inpaint; ruler edges, pen strokes and ink to report and keep."""
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    short = min(grey.shape)
    mask = np.zeros(grey.shape, bool)
    marks = np.zeros(grey.shape, bool)
    if short < 16:
        return mask, marks
    ops = {"dark": [cv2.MORPH_BLACKHAT], "light": [cv2.MORPH_TOPHAT],
           "both": [cv2.MORPH_BLACKHAT, cv2.MORPH_TOPHAT]}[params.colours]
    margin = 2
    for op in ops:
        for frac in params.scales:
            k = max(5, int(round(frac * short)) | 1)
            resp = cv2.morphologyEx(grey, op, _disk(k), borderType=cv2.BORDER_REFLECT)
            resp[:margin], resp[-margin:], resp[:, :margin], resp[:, -margin:] = 0, 0, 0, 0
            sub = resp[::2, ::2]  # the threshold's robust statistics from a quarter of the pixels
            med = _median_u8(sub)
            mad = _median_u8(cv2.absdiff(sub, np.full_like(sub, int(round(med))))) * 1.4826
            thr = max(params.threshold, med + params.sigma * mad)
            cand = (resp > thr).astype(np.uint8)
            if cand.any():  # each polarity separately: a dark hair and its light glint are not one thick thing
                hair, ruler = _hair_components(cand, short, params)
                mask |= hair
                marks |= ruler
    ink = ink_mask(img, params)
    if ink.any():
        ink = cv2.dilate(ink.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
        marks |= ink
    return mask & ~marks, marks


@dataclasses.dataclass(frozen=True)
class HairResult:
    """Hair removal output: the cleaned image, the hair mask, its fraction, and the marks left alone."""

    image: np.ndarray
    mask: np.ndarray
    fraction: float
    marks_fraction: float = 0.0


def remove_hair(img: np.ndarray, params: HairParams) -> HairResult:
    """Detect hair and inpaint only under the mask; images with (almost) no hair are returned as is.

    ``image`` is a new array, or ``img`` itself (never mutated) when nothing was inpainted.
    """
    if not params.enabled:
        return HairResult(img, np.zeros(img.shape[:2], bool), 0.0)
    mask, marks = detect(img, params)
    fraction, marks_fraction = float(mask.mean()), float(marks.mean())
    if not params.remove or fraction < params.min_fraction:
        return HairResult(img, mask, fraction, marks_fraction)
    grow = cv2.dilate(mask.astype(np.uint8), np.ones((3, 3), np.uint8))  # cover the hair's soft edges
    method = cv2.INPAINT_NS if params.inpaint_method == "ns" else cv2.INPAINT_TELEA
    out = cv2.inpaint(img, grow, params.inpaint_radius, method)
    return HairResult(out, mask, fraction, marks_fraction)


def dullrazor(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The textbook recipe (grey → black-hat 17×17 → threshold 10 → Telea radius 1), for comparison."""
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    bh = cv2.morphologyEx(grey, cv2.MORPH_BLACKHAT, cv2.getStructuringElement(cv2.MORPH_RECT, (17, 17)))
    mask = (bh > 10).astype(np.uint8)
    return cv2.inpaint(img, mask, 1, cv2.INPAINT_TELEA), mask.astype(bool)
