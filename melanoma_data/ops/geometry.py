"""Geometry ops: EXIF orientation, portrait→landscape, square crop/pad and resize."""

from __future__ import annotations

import dataclasses

import numpy as np

from melanoma_data.ops._cv import cv2
from melanoma_data.ops.base import Params, check_choice, check_int

VERSION = "1"

ORIENTATION_NAMES = {
    1: "none",
    2: "flip_horizontal",
    3: "rotate_180",
    4: "flip_vertical",
    5: "transpose",
    6: "rotate_90_cw",
    7: "transverse",
    8: "rotate_90_ccw",
}


@dataclasses.dataclass(frozen=True)
class OrientParams(Params):
    """EXIF orientation to undo (1..8; 1 = nothing to do)."""

    exif_orientation: int = 1

    def validate(self) -> None:
        check_int("exif_orientation", self.exif_orientation, 1, 8)


def apply_orientation(img: np.ndarray, params: OrientParams) -> np.ndarray:
    """Return the image as it should be displayed, undoing the EXIF orientation tag.

    Args:
        img: H×W×C array as stored in the file.
        params: the tag value.

    Returns:
        A new array, or ``img`` itself when the tag says there is nothing to do (never mutated).
    """
    o = params.exif_orientation
    if o == 1:
        return img
    if o == 2:
        out = img[:, ::-1]
    elif o == 3:
        out = img[::-1, ::-1]
    elif o == 4:
        out = img[::-1]
    elif o == 5:
        out = np.swapaxes(img, 0, 1)
    elif o == 6:
        out = np.swapaxes(img, 0, 1)[:, ::-1]
    elif o == 7:
        out = np.swapaxes(img, 0, 1)[::-1, ::-1]
    else:  # 8
        out = np.swapaxes(img, 0, 1)[::-1]
    return np.ascontiguousarray(out)


@dataclasses.dataclass(frozen=True)
class LandscapeParams(Params):
    """Portrait policy: ``keep`` leaves portrait images alone, ``rotate`` turns them 90° clockwise."""

    policy: str = "keep"

    def validate(self) -> None:
        check_choice("portrait policy", self.policy, ("keep", "rotate"))


def to_landscape(img: np.ndarray, params: LandscapeParams) -> np.ndarray:
    """Rotate a portrait image (height > width) 90° clockwise when the policy says so."""
    h, w = img.shape[:2]
    if params.policy == "rotate" and h > w:
        return np.ascontiguousarray(np.swapaxes(img, 0, 1)[:, ::-1])
    return img


@dataclasses.dataclass(frozen=True)
class ResizeParams(Params):
    """Final square resize.

    Attributes:
        size: output side in pixels.
        policy: ``crop`` (centre-crop the long side to a square) or ``pad`` (pad the short side).
        pad_value: grey level of the padding.
    """

    size: int = 512
    policy: str = "crop"
    pad_value: int = 0

    def validate(self) -> None:
        check_int("size", self.size, 16, 4096)
        check_choice("resize policy", self.policy, ("crop", "pad"))
        check_int("pad_value", self.pad_value, 0, 255)


def square(img: np.ndarray, params: ResizeParams) -> np.ndarray:
    """Centre-crop or pad ``img`` to a square, then resize to ``params.size``.

    Area interpolation when shrinking (no aliasing), cubic when enlarging.
    """
    h, w = img.shape[:2]
    if params.policy == "crop":
        side = min(h, w)
        y0, x0 = (h - side) // 2, (w - side) // 2
        sq = img[y0 : y0 + side, x0 : x0 + side]
    else:
        side = max(h, w)
        y0, x0 = (side - h) // 2, (side - w) // 2
        sq = np.full((side, side) + img.shape[2:], params.pad_value, dtype=img.dtype)
        sq[y0 : y0 + h, x0 : x0 + w] = img
    if side == params.size:
        return np.ascontiguousarray(sq).copy()
    interp = cv2.INTER_AREA if side > params.size else cv2.INTER_CUBIC
    return cv2.resize(np.ascontiguousarray(sq), (params.size, params.size), interpolation=interp)
