"""RGB array → JPEG bytes, and the perceptual hash measured on the processed image."""

from __future__ import annotations

import dataclasses

import numpy as np

from melanoma_data.errors import ImageRejected
from melanoma_data.ops._cv import cv2
from melanoma_data.ops.base import Params, check_int

VERSION = "4"  # 2: 256-bit pHash by default; 3: hashed on the oriented original, before the ops;
#                4: on the centre square of the shared 256-px grey thumbnail


@dataclasses.dataclass(frozen=True)
class EncodeParams(Params):
    """JPEG encoding settings (baseline JPEG, readable by TensorFlow's ``decode_jpeg``)."""

    quality: int = 95

    def validate(self) -> None:
        check_int("jpeg quality", self.quality, 1, 100)


def encode_jpeg(img: np.ndarray, params: EncodeParams) -> bytes:
    """Encode an RGB uint8 image as JPEG (deterministic: same pixels, same bytes)."""
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, params.quality]
    )
    if not ok:
        raise ImageRejected("encode_failed", "OpenCV could not encode the processed image")
    return buf.tobytes()


@dataclasses.dataclass(frozen=True)
class PHashParams(Params):
    """Perceptual hash (DCT pHash): ``hash_size``² bits from a ``4·hash_size`` grey thumbnail."""

    hash_size: int = 16

    def validate(self) -> None:
        check_int("hash_size", self.hash_size, 4, 16)


def perceptual_hash(img: np.ndarray, params: PHashParams) -> str:
    """DCT perceptual hash as a hex string (64 hex digits for the default 256 bits).

    Robust to re-encoding and resizing; near-duplicates differ in few bits (Hamming distance).
    """
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    n = params.hash_size * 4
    small = cv2.resize(grey, (n, n), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[: params.hash_size, : params.hash_size].ravel()
    ac = np.sort(low[1:])  # the AC terms (255 at 16x16); np.median costs ~0.7 ms here, sorting them microseconds
    median = (ac[(len(ac) - 1) // 2] + ac[len(ac) // 2]) / 2
    bits = low > median
    value = int.from_bytes(np.packbits(bits).tobytes(), "big") >> (-len(bits) % 8)
    return f"{value:0{params.hash_size * params.hash_size // 4}x}"
