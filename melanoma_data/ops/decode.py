"""Bytes → RGB array: header probe, size guards, DCT-domain reduced decode, odd-format conversion."""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from melanoma_data.errors import ImageRejected
from melanoma_data.ops._cv import cv2
from melanoma_data.ops.base import Params, check_choice, check_int

VERSION = "1"

_REDUCED_FLAGS = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What the file header says, read without decoding pixels.

    Attributes:
        width: stored width in pixels (before EXIF orientation).
        height: stored height in pixels.
        format: container format as Pillow names it (``JPEG``, ``PNG``, ...).
        mode: pixel mode (``RGB``, ``L``, ``CMYK``, ``I;16``, ``RGBA``, ...).
        orientation: EXIF orientation tag 1..8 (1 when absent or invalid).
    """

    width: int
    height: int
    format: str
    mode: str
    orientation: int = 1

    @property
    def has_alpha(self) -> bool:
        """True when the pixel mode carries an alpha channel or transparency."""
        return self.mode in {"RGBA", "LA", "PA", "La", "RGBa"}


@dataclasses.dataclass(frozen=True)
class DecodeParams(Params):
    """Guards and policy for decoding.

    Attributes:
        max_pixels: refuse images whose header claims more pixels (decompression bombs).
        min_side: refuse images whose shorter side is below this (thumbnails, icons).
        alpha_background: grey level transparent pixels are composited onto.
    """

    max_pixels: int = 150_000_000
    min_side: int = 32
    alpha_background: int = 0

    def validate(self) -> None:
        check_int("max_pixels", self.max_pixels, 1)
        check_int("min_side", self.min_side, 1)
        check_int("alpha_background", self.alpha_background, 0, 255)


def read_header(data: bytes) -> ImageHeader:
    """Read dimensions, format, mode and EXIF orientation without decoding pixels.

    Args:
        data: the whole file content.

    Returns:
        The header facts.

    Raises:
        ImageRejected: ``empty_file`` or ``not_an_image``.
    """
    if len(data) == 0:
        raise ImageRejected("empty_file", "file has 0 bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # oversized images are refused by check_dimensions from the header, with the config's limit;
            # Pillow's global bomb check (its own fixed limit) is off while probing (no pixels load here)
            saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                im = Image.open(io.BytesIO(data))
            finally:
                Image.MAX_IMAGE_PIXELS = saved
            width, height = im.size
            orientation = 1
            try:
                orientation = int(im.getexif().get(0x0112, 1))
            except Exception:  # a broken EXIF block must not cost the image
                orientation = 1
    except UnidentifiedImageError:
        raise ImageRejected(
            "not_an_image", f"content is not a recognised image format (starts with {data[:8]!r})"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected("unreadable_header", f"image header cannot be parsed: {exc}") from None
    if orientation not in range(1, 9):
        orientation = 1
    return ImageHeader(int(width), int(height), str(im.format), str(im.mode), orientation)


def check_dimensions(header: ImageHeader, params: DecodeParams) -> ImageHeader:
    """Refuse headers that are too large (before any allocation) or too small.

    Raises:
        ImageRejected: ``too_large`` or ``too_small``.
    """
    pixels = header.width * header.height
    if pixels > params.max_pixels:
        raise ImageRejected(
            "too_large",
            f"header claims {header.width}x{header.height} = {pixels:,} pixels, "
            f"above the limit of {params.max_pixels:,} (possible decompression bomb)",
        )
    if min(header.width, header.height) < params.min_side:
        raise ImageRejected(
            "too_small",
            f"{header.width}x{header.height} is below the minimum side of {params.min_side} px",
        )
    return header


def choose_reduction(header: ImageHeader, needed_side: int, policy: str = "crop") -> int:
    """Largest DCT-domain reduction (1, 2, 4, 8) whose decode still covers ``needed_side``.

    Args:
        header: the image header.
        needed_side: pixels the working image must keep on the side that the resize policy uses.
        policy: ``crop`` (the short side matters) or ``pad`` (the long side matters).

    Returns:
        The reduction factor; always 1 for formats without DCT scaling.
    """
    check_choice("policy", policy, ("crop", "pad"))
    if header.format != "JPEG":
        return 1
    side = min(header.width, header.height) if policy == "crop" else max(header.width, header.height)
    for factor in (8, 4, 2):
        if side // factor >= needed_side:
            return factor
    return 1


def _looks_truncated(data: bytes) -> bool:
    tail = data.rstrip(b"\x00\r\n ")[-2:]
    return tail != b"\xff\xd9"


def _composite(rgba: np.ndarray, background: int) -> np.ndarray:
    rgb = rgba[..., :3].astype(np.float32)
    alpha = rgba[..., 3:4].astype(np.float32) / (65535.0 if rgba.dtype == np.uint16 else 255.0)
    scale = 257.0 if rgba.dtype == np.uint16 else 1.0
    out = rgb * alpha + background * scale * (1.0 - alpha)
    return np.clip(np.rint(out / scale), 0, 255).astype(np.uint8)


def decode(data: bytes, header: ImageHeader, reduction: int, params: DecodeParams | None = None) -> np.ndarray:
    """Decode to an RGB uint8 array, downscaled by ``reduction`` in the DCT domain where possible.

    Greyscale, CMYK, 16-bit and palette images are converted to 8-bit RGB; alpha is composited onto
    ``params.alpha_background``. EXIF orientation is *not* applied here (see ``ops.geometry``).

    Raises:
        ImageRejected: ``truncated`` or ``decode_failed``.
    """
    params = params or DecodeParams()
    buf = np.frombuffer(data, np.uint8)
    if header.has_alpha:
        arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
        if arr is not None and arr.ndim == 3 and arr.shape[2] == 4:
            rgba = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
            out = _composite(rgba, params.alpha_background)
            if reduction > 1:
                h, w = out.shape[:2]
                out = cv2.resize(out, (max(1, w // reduction), max(1, h // reduction)), interpolation=cv2.INTER_AREA)
            return out
    arr = cv2.imdecode(buf, _REDUCED_FLAGS[reduction] | cv2.IMREAD_IGNORE_ORIENTATION)
    if arr is None:
        if header.format == "JPEG" and _looks_truncated(data):
            raise ImageRejected("truncated", f"JPEG data ends early ({len(data):,} bytes, no end-of-image marker)")
        arr = _decode_with_pillow(data, header, reduction)
        return arr
    if arr.ndim == 2:
        arr = cv2.cvtColor(arr, cv2.COLOR_GRAY2BGR)
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def _decode_with_pillow(data: bytes, header: ImageHeader, reduction: int) -> np.ndarray:
    """Fallback for formats OpenCV cannot read (GIF, some TIFF/BMP variants)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if reduction > 1:
                im.draft("RGB", (header.width // reduction, header.height // reduction))
            im.load()
            rgb = im.convert("RGB")
            if reduction > 1 and rgb.size[0] > header.width // reduction:
                rgb = rgb.reduce(reduction)
            return np.asarray(rgb, dtype=np.uint8).copy()
    except Exception as exc:
        raise ImageRejected("decode_failed", f"{header.format} data could not be decoded: {exc}") from None
