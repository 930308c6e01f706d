"""Field of view: detect the round dark microscope field and black bands; crop, mask or leave them."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import numpy as np
from pydantic import Field

from melanoma_data.ops._cv import cv2
from melanoma_data.ops.base import Bool, OpParams, Real
from melanoma_data.ops.geometry import grey_thumbnail

VERSION = "2"  # 2: ignores 1-2 px scanner frames; on by default


class VignetteParams(OpParams):
    """Detection thresholds and the policy applied when a field of view is found."""

    policy: Literal["crop", "mask", "leave"] = Field(
        "crop", title="vignette policy", description="crop to the field (shrunk to exclude the dark ring), mask "
                                                     "outside the circle (black), or leave the image")
    enabled: Bool = Field(True, description="run detection at all (off: no measurement, image untouched)")
    dark_level: Real = Field(0.3, ge=0.01, le=0.9, description="a pixel is dark below dark_level × the median "
                                                               "brightness of the image centre")
    corner_fraction: Real = Field(0.6, ge=0.05, le=1.0, description="at least 3 corners must be this dark (fraction "
                                                                    "of dark pixels) for a field")
    min_confidence: Real = Field(0.6, ge=0.0, le=1.0, description="circle-fit quality needed to accept a field")
    crop_scale: Real = Field(0.68, ge=0.5, le=1.0, description="half-side of the square crop as a fraction of the "
                                                               "radius (0.707 puts the corners on the circle; 0.68 "
                                                               "keeps them clear of the dark ring)")


@dataclasses.dataclass(frozen=True)
class Vignette:
    """What :func:`detect_vignette` found (coordinates as fractions of the image width/height).

    Attributes:
        detected: a circular microscope field was found.
        cx, cy: circle centre (fractions of width, height); None when not detected.
        radius_frac: radius / short side; None when not detected.
        confidence: fraction of the field boundary that lies on the fitted circle.
        box: (x0, y0, x1, y1) fractions of the content without dark bands or field ring.
    """

    detected: bool
    cx: float | None
    cy: float | None
    radius_frac: float | None
    confidence: float
    box: tuple[float, float, float, float]


def _fit_circle(xs: np.ndarray, ys: np.ndarray) -> tuple[float, float, float]:
    """Algebraic (Kåsa) least-squares circle fit."""
    a = np.stack([xs, ys, np.ones_like(xs)], axis=1)
    b = xs**2 + ys**2
    sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    cx, cy = sol[0] / 2, sol[1] / 2
    return float(cx), float(cy), float(np.sqrt(max(sol[2] + cx**2 + cy**2, 0.0)))


def detect_vignette(img: np.ndarray, params: VignetteParams, thumb: np.ndarray | None = None) -> Vignette:
    """Find a round dark microscope field and dark bands at the edges.

    A field is only accepted when at least three image corners are dark *and* the boundary of the
    bright region fits a circle: a dark, round lesion in the middle of bright skin is not a field.
    Detection runs on ``thumb`` (``geometry.grey_thumbnail(img)``, computed when not given, so a
    caller that needs the thumbnail anyway can share it); results are fractions of the image.
    """
    grey = np.ascontiguousarray(grey_thumbnail(img) if thumb is None else thumb)
    h, w = grey.shape
    dark = np.empty((h, w), np.uint8)
    from melanoma_data._jit import fov_screen  # numba: imported on first use

    n_dark, y0, y1, x0, x1 = fov_screen(grey, params.dark_level, dark)
    dark = dark.view(bool)
    full = (0.0, 0.0, 1.0, 1.0)
    if n_dark in (0, h * w):
        return Vignette(False, None, None, None, 0.0, full)
    # dark bands: rows/columns at the edges that are almost entirely dark
    box = (x0 / w, y0 / h, x1 / w, y1 / h)
    c = max(2, int(0.06 * min(h, w)))
    sub = dark[y0:y1, x0:x1]
    if sub.size == 0:
        return Vignette(False, None, None, None, 0.0, full)
    corners = [sub[:c, :c], sub[:c, -c:], sub[-c:, :c], sub[-c:, -c:]]
    if sum(float(k.mean()) >= params.corner_fraction for k in corners) < 3:
        return Vignette(False, None, None, None, 0.0, box)
    bright = (~dark).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(bright, 8, cv2.CV_32S, cv2.CCL_GRANA)
    if n < 2:
        return Vignette(False, None, None, None, 0.0, box)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    region = (labels == biggest).astype(np.uint8)
    region = cv2.morphologyEx(region, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9)))
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    pts = max(contours, key=len)[:, 0, :].astype(np.float64)
    inner = (pts[:, 0] > x0 + 1) & (pts[:, 0] < x1 - 2) & (pts[:, 1] > y0 + 1) & (pts[:, 1] < y1 - 2)
    pts = pts[inner]
    if len(pts) < 20:
        return Vignette(False, None, None, None, 0.0, box)
    cx, cy, r = _fit_circle(pts[:, 0], pts[:, 1])
    dist = np.hypot(pts[:, 0] - cx, pts[:, 1] - cy)
    confidence = float(np.mean(np.abs(dist - r) < 0.03 * r + 1.5))
    # the dark side of the boundary must be outside the circle (a field, not a dark disc)
    yy, xx = np.ogrid[:h, :w]
    inside = (xx - cx) ** 2 + (yy - cy) ** 2 < (0.9 * r) ** 2
    if inside.any() and dark[inside].mean() > 0.5:
        confidence = 0.0
    if confidence < params.min_confidence or r < 0.2 * min(h, w):
        return Vignette(False, None, None, None, confidence, box)
    return Vignette(True, cx / w, cy / h, r / min(h, w), confidence, box)


def crop_box(w: Any, h: Any, box: Any, detected: Any, cx: Any, cy: Any, radius_frac: Any,
             params: VignetteParams) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x0, y0, x1, y1)``: the part of a ``w`` × ``h`` image that the policy keeps, in pixels.

    ``crop``: the band-free ``box`` (``(x0, y0, x1, y1)`` fractions), and when a field was ``detected``
    its square of half-side ``crop_scale`` × radius around ``(cx, cy)`` (fractions) inside it; a region
    under 8 px is not cropped. ``mask`` and ``leave``: the whole image. Scalars or arrays (one row per
    image): the op crops one image with it, ``melanoma_models.features`` rebuilds every stored image's
    extent in its original with it — the one place this arithmetic lives.
    """
    w, h = np.asarray(w, dtype=float), np.asarray(h, dtype=float)
    full = (np.zeros_like(w), np.zeros_like(h), w, h)
    if params.policy != "crop":
        return full
    bx0, by0, bx1, by1 = (np.round(np.asarray(box[0]) * w), np.round(np.asarray(box[1]) * h),
                          np.round(np.asarray(box[2]) * w), np.round(np.asarray(box[3]) * h))
    banded = (bx1 - bx0 > 8) & (by1 - by0 > 8)
    with np.errstate(invalid="ignore"):  # no field: cx, cy, radius are NaN and that branch is not taken
        half = params.crop_scale * np.asarray(radius_frac, dtype=float) * np.minimum(h, w)
        px, py = np.asarray(cx, dtype=float) * w, np.asarray(cy, dtype=float) * h
        x0, x1 = np.maximum(bx0, np.round(px - half)), np.minimum(bx1, np.round(px + half))
        y0, y1 = np.maximum(by0, np.round(py - half)), np.minimum(by1, np.round(py + half))
        field = np.asarray(detected, dtype=bool) & (x1 - x0 >= 8) & (y1 - y0 >= 8)
    detected = np.asarray(detected, dtype=bool)
    keep_band = ~detected & banded
    return tuple(np.where(field, f, np.where(keep_band, b, z))  # type: ignore[return-value]
                 for f, b, z in zip((x0, y0, x1, y1), (bx0, by0, bx1, by1), full, strict=True))


def apply_vignette_policy(img: np.ndarray, found: Vignette, params: VignetteParams) -> np.ndarray:
    """Crop to the field (or the band-free box), mask outside the circle, or leave the image.

    Returns a new array, or ``img`` itself (never mutated) when there is nothing to change.
    """
    h, w = img.shape[:2]
    if params.policy == "mask" and found.detected:
        cx, cy, r = found.cx * w, found.cy * h, found.radius_frac * min(h, w)
        mask = np.zeros((h, w), np.uint8)
        cv2.circle(mask, (round(cx * 16), round(cy * 16)), round(r * 16), 1, -1, cv2.LINE_AA, 4)
        return img * mask[..., None]
    cx, cy, rf = (float("nan") if v is None else v for v in (found.cx, found.cy, found.radius_frac))
    x0, y0, x1, y1 = (int(v) for v in crop_box(w, h, found.box, found.detected, cx, cy, rf, params))
    if (x0, y0, x1, y1) == (0, 0, w, h):
        return img
    return img[y0:y1, x0:x1].copy()


@dataclasses.dataclass(frozen=True)
class FieldOfView:
    """Result of :func:`field_of_view`: the image after the policy and what was detected."""

    image: np.ndarray
    vignette: Vignette


def field_of_view(img: np.ndarray, params: VignetteParams, thumb: np.ndarray | None = None,
                  within: tuple[float, float, float, float] | None = None) -> FieldOfView:
    """Detect the microscope field / dark bands and apply the policy (the op the pipeline composes).

    ``thumb``: optionally, ``geometry.grey_thumbnail(img)`` already computed by the caller. ``within``: a
    box (fractions) the kept part must also stay inside — the artefacts op's ``crop`` policy — narrowing the
    recorded ``box``, so one crop (:func:`crop_box`) does both, also with detection off.
    """
    found = Vignette(False, None, None, None, 0.0, (0.0, 0.0, 1.0, 1.0))
    if params.enabled:
        found = detect_vignette(img, params, thumb)
    elif within is None:
        return FieldOfView(img, found)
    if within is not None:
        b = found.box
        found = dataclasses.replace(found, box=(max(b[0], within[0]), max(b[1], within[1]),
                                                min(b[2], within[2]), min(b[3], within[3])))
    return FieldOfView(apply_vignette_policy(img, found, params), found)
