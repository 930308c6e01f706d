"""Hair: a multi-scale, multi-orientation line detector (dark and light hair) and masked inpainting."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

import numpy as np
import pydantic
from pydantic import Field

from melanoma_data.errors import ConfigError
from melanoma_data.ops._cv import cv2, disk
from melanoma_data.ops.base import Bool, Int, OpParams, Real

VERSION = "5"  # 2: shape-filtered black/top-hat; 3: rulers, pen strokes and ink reported, never inpainted;
#                4: Navier-Stokes inpainting, radius 1 (same quality as Telea radius 3 at a third of the cost);
#                5: the artefacts op's ruler, ink and bubble pixels are never hair


class HairParams(OpParams):
    """Hair detection and removal (at working resolution; sizes are fractions of the short side).

    Candidates are thin structures darker (black-hat) or lighter (top-hat) than their surroundings
    at each scale in ``scales``, above a robust threshold (``sigma`` × the response's MAD above its
    median, at least ``threshold`` grey levels). A connected candidate is hair when it is long
    (``min_length``), thin (``max_width``) and either fairly straight (its extent is at least
    ``straightness`` × its length) or a sparse network spanning much of the image (crossing hairs:
    extent ≥ ``network_extent``, fill of its bounding box ≤ ``network_fill``). Pigment network, dots,
    globules and lesion borders are short, thick, tortuous or dense, and are left alone.
    """

    enabled: Bool = Field(True, description="run detection (off: fraction 0, image untouched)")
    scales: tuple[Annotated[Real, Field(ge=0.002, le=0.2)], ...] = Field(
        (0.018,), title="hair scale", description="structuring-element diameters (fractions of the "
                                                                "short side)")
    colours: Literal["dark", "light", "both"] = Field("both", title="hair colours",
                                                      description="hair polarities looked for")
    sigma: Real = Field(8.0, ge=0.0, le=50.0, description="robust threshold in MADs above the median response")
    threshold: Real = Field(10.0, ge=0.0, le=255.0, title="hair threshold",
                            description="minimum response in grey levels")
    min_length: Real = Field(0.1, ge=0.0, le=2.0, description="shortest hair (fraction of the short side)")
    max_width: Real = Field(0.012, ge=0.0005, le=0.2, description="widest hair (fraction of the short side)")
    straightness: Real = Field(0.35, ge=0.0, le=1.0, description="a hair's extent is at least this × its length")
    network_extent: Real = Field(0.3, ge=0.0, le=1.5, description="or it is a network spanning at least this ...")
    network_fill: Real = Field(0.12, ge=0.0, le=1.0, description="... filling at most this of its bounding box")
    min_fraction: Real = Field(0.002, ge=0.0, le=1.0, description="below this hair fraction nothing is inpainted "
                                                                  "(the image is left alone)")
    inpaint_method: Literal["ns", "telea"] = Field("ns", description="Navier-Stokes (Bertalmío et al.) or Telea "
                                                                     "(fast marching) inpainting")
    inpaint_radius: Int = Field(1, ge=1, le=20, description="inpainting neighbourhood radius in pixels")
    remove: Bool = Field(True, description="inpaint the detected hair (otherwise only measure it)")
    ruler_length: Real = Field(0.35, ge=0.05, le=2.0, description="a candidate line at least this long (fraction of "
                                                                  "the short side) and almost perfectly straight is a "
                                                                  "ruler edge or pen stroke: reported, never inpainted")
    ink_saturation: Real = Field(0.45, ge=0.0, le=1.0, description="pixels of marker-ink hue (green, blue, violet) "
                                                                   "with at least this saturation are ink marks: "
                                                                   "reported, never inpainted")

    @pydantic.model_validator(mode="after")
    def _some_scale(self) -> HairParams:
        if not self.scales:
            raise ConfigError("scales must be a non-empty list of fractions")
        return self


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
