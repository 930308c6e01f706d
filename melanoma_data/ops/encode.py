"""RGB array → JPEG bytes, and the perceptual hash measured on the processed image."""

from __future__ import annotations

import functools

import numpy as np
from pydantic import Field

from melanoma_data.errors import ImageRejected
from melanoma_data.ops._cv import cv2
from melanoma_data.ops.base import Int, OpParams

VERSION = "5"  # 2: 256-bit pHash by default; 3: hashed on the oriented original, before the ops;
#                4: on the centre square of the shared 256-px grey thumbnail; 5: the area shrink and the
#                low-frequency DCT as one pair of matrix products (no uint8 rounding in between)


class EncodeParams(OpParams):
    """JPEG encoding settings (baseline JPEG, readable by TensorFlow's ``decode_jpeg``)."""

    quality: Int = Field(95, ge=1, le=100, title="jpeg quality", description="JPEG quality of the stored images")


def encode_jpeg(img: np.ndarray, params: EncodeParams) -> bytes:
    """Encode an RGB uint8 image as JPEG (deterministic: same pixels, same bytes)."""
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, params.quality]
    )
    if not ok:
        raise ImageRejected("encode_failed", "OpenCV could not encode the processed image")
    return buf.tobytes()


class PHashParams(OpParams):
    """Perceptual hash (DCT pHash): ``hash_size``² bits from a ``4·hash_size`` grey thumbnail."""

    hash_size: Int = Field(16, ge=4, le=16, description="the hash has hash_size² bits")


@functools.lru_cache(maxsize=512)
def _dct_basis(n: int, k: int) -> np.ndarray:
    """The first ``k`` rows of the orthonormal DCT-II of length ``n`` (what ``cv2.dct`` computes), float64."""
    x, u = np.arange(n), np.arange(k)[:, None]
    basis = np.cos(np.pi * (2 * x + 1) * u / (2 * n)) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    return basis


@functools.lru_cache(maxsize=512)
def _area_dct(n_in: int, n_out: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(B, B.T)``: ``B`` (``k × n_in``, float32) = the low DCT rows of length ``n_out`` @ the area shrink.

    The area operator averages each output pixel's footprint ``[i·s, (i+1)·s)`` with partial weights
    for the input pixels it cuts (OpenCV's ``INTER_AREA`` when shrinking), so ``B X Bᵀ`` is the
    low-frequency block of ``dct(resize_area(X))`` without the resized image.
    """
    scale = n_in / n_out
    lo, hi = np.arange(n_out)[:, None] * scale, (np.arange(n_out)[:, None] + 1) * scale
    j = np.arange(n_in)[None, :]
    area = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0, None) / scale
    b = (_dct_basis(n_out, k) @ area).astype(np.float32)
    return b, np.ascontiguousarray(b.T)


def perceptual_hash(img: np.ndarray, params: PHashParams) -> str:
    """DCT perceptual hash as a hex string (64 hex digits for the default 256 bits).

    Robust to re-encoding and resizing; near-duplicates differ in few bits (Hamming distance). The
    image (a square) is shrunk to ``4·hash_size`` px by area averaging and the ``hash_size²`` lowest DCT
    frequencies compared with their median; a square of at least that size goes through two small
    matrix products that do both at once.
    """
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    k, n = params.hash_size, params.hash_size * 4
    if grey.shape[0] == grey.shape[1] and grey.shape[0] >= n:
        left, right = _area_dct(grey.shape[0], n, k)
    else:  # smaller than the thumbnail (or not square): resize, then the plain low DCT rows
        grey = cv2.resize(grey, (n, n), interpolation=cv2.INTER_AREA)
        left, right = _area_dct(n, n, k)
    low = (left @ grey.astype(np.float32) @ right).ravel()
    ac = np.sort(low[1:])  # the AC terms (255 at 16x16); np.median costs ~0.7 ms here, sorting them microseconds
    median = (ac[(len(ac) - 1) // 2] + ac[len(ac) // 2]) / 2
    bits = low > median
    value = int.from_bytes(np.packbits(bits).tobytes(), "big") >> (-len(bits) % 8)
    return f"{value:0{k * k // 4}x}"
