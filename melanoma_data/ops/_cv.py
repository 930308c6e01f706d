"""The one place that imports OpenCV, after setting its pixel limit (which must precede the import)."""

from __future__ import annotations

import functools
import os

# OpenCV checks this limit against the *reduced* decode size and reads it only at import time.
# Our own header check (ops.decode.check_dimensions) is the authoritative guard, so OpenCV's is
# set high enough never to be the one that fires with a less helpful message.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(1 << 34))

import cv2  # noqa: E402

__all__ = ["cv2", "disk"]


@functools.lru_cache(maxsize=64)
def disk(k: int):
    """An elliptical ``k`` × ``k`` structuring element (cached: the ops ask for the same few sizes per image)."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
