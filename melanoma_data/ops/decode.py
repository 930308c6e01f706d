"""Bytes → RGB array: header probe, size guards, DCT-domain reduced decode, odd-format conversion."""

from __future__ import annotations

import dataclasses
import io
import struct
import warnings
import zlib

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import Field

from melanoma_data.errors import ImageRejected
from melanoma_data.ops._cv import cv2
from melanoma_data.ops.base import Int, OpParams, check_choice

VERSION = "1"  # (the strip-wise alpha composite writes the same bytes: no new version)

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


class DecodeParams(OpParams):
    """Guards and policy for decoding."""

    added_params = ("max_bytes",)

    max_pixels: Int = Field(150_000_000, ge=1, description="refuse images whose header claims more pixels "
                                                           "(decompression bombs)")
    min_side: Int = Field(32, ge=1, description="refuse images whose shorter side is below this (thumbnails, icons)")
    alpha_background: Int = Field(0, ge=0, le=255, description="grey level transparent pixels are composited onto")
    max_bytes: Int = Field(100_000_000, ge=1, description="refuse files larger than this, from their size, before "
                                                          "reading them (the largest ISIC original is about 20 MB)")


#: JPEG start-of-frame markers (baseline, extended, progressive, lossless; Huffman and arithmetic).
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_JPEG_MODES = {1: "L", 3: "RGB", 4: "CMYK"}


def _exif_orientation(app1: bytes) -> int:
    """Orientation tag (0x0112) of IFD0 in an APP1 Exif payload (after ``Exif\\0\\0``); 1 when absent."""
    tiff = app1[6:]
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    order = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", tiff[4:8])
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack(order + "H", tiff[ifd : ifd + 2])
    for k in range(count):
        entry = tiff[ifd + 2 + 12 * k : ifd + 14 + 12 * k]
        if len(entry) < 12:
            return 1
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag == 0x0112:
            if kind == 3:
                return struct.unpack(order + "H", entry[8:10])[0]
            if kind == 4:
                return struct.unpack(order + "I", entry[8:12])[0]
            return 1
    return 1


def _jpeg_header(data: bytes) -> ImageHeader | None:
    """Size, mode and orientation of a JPEG from its markers (no Pillow), or None to let Pillow decide.

    Only the unambiguous case is answered here: SOI, then marker segments up to the first start of
    frame with 1, 3 or 4 components; anything unusual (a second Exif block, odd padding, other
    component counts) falls back to Pillow, which the tests compare against on every file they have.
    """
    if data[:2] != b"\xff\xd8":
        return None
    pos, n, orientation, exif_seen = 2, len(data), 1, False
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF or 0xD0 <= marker <= 0xD9 or marker == 0x01:
            return None  # fill bytes, restart markers or EOI before a frame: let Pillow judge
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        seg = data[pos + 4 : pos + 2 + length]
        if length < 2 or len(seg) != length - 2:
            return None
        if marker == 0xE1 and seg[:6] == b"Exif\x00\x00":
            if exif_seen:
                return None
            exif_seen = True
            try:
                orientation = int(_exif_orientation(seg))
            except struct.error:
                orientation = 1
        elif marker in _SOF:
            if len(seg) < 6:
                return None
            height, width = struct.unpack(">HH", seg[1:5])
            mode = _JPEG_MODES.get(seg[5])
            if mode is None or seg[0] != 8 or width == 0 or height == 0:
                return None
            return ImageHeader(width, height, "JPEG", mode, orientation if orientation in range(1, 9) else 1)
        pos += 2 + length
    return None


def _open_without_bomb_check(data: bytes) -> Image.Image:
    """``Image.open`` without its decompression-bomb check, and without touching ``Image.MAX_IMAGE_PIXELS``.

    The size limit is the config's (``check_dimensions``), applied to the header; Pillow's global is
    process-wide, so switching it off around a probe is not safe with threaded Dask clients. No pixels
    are loaded here. Uses Pillow's plugin registry the way ``Image.open`` does.
    """
    prefix = data[:16]
    for init in (Image.preinit, Image.init):
        init()
        for fmt in Image.ID:
            factory, accept = Image.OPEN[fmt]
            if accept is not None:
                verdict = accept(prefix)
                if not verdict or isinstance(verdict, str):  # a string is Pillow's "almost, but no"
                    continue
            try:
                return factory(io.BytesIO(data), None)
            except (SyntaxError, IndexError, TypeError, struct.error):
                continue
    raise UnidentifiedImageError("cannot identify image file")


_PNG_MODES = {0: "L", 2: "RGB", 3: "P", 4: "LA", 6: "RGBA"}


def _canvas(data: bytes) -> ImageHeader | None:
    """Width and height of a PNG, WebP or GIF from its first bytes (no Pillow), or None.

    Only used to refuse an oversized canvas before Pillow sees the file: Pillow's PNG ``getexif``
    decodes the whole image when the EXIF block is not ahead of the pixel data, and its WebP reader
    allocates the whole canvas when it opens the file. Orientation is not read (the image is refused).
    """
    if data.startswith(_PNG_SIGNATURE) and len(data) >= 29 and data[12:16] == b"IHDR":
        width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
        mode = "I;16" if colour == 0 and depth == 16 else _PNG_MODES.get(colour, "RGB")
        return ImageHeader(width, height, "PNG", mode)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        kind = data[12:16]
        if kind == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
            width, height = (v & 0x3FFF for v in struct.unpack("<HH", data[26:30]))
            return ImageHeader(width, height, "WEBP", "RGB")
        if kind == b"VP8X":
            width = int.from_bytes(data[24:27], "little") + 1
            height = int.from_bytes(data[27:30], "little") + 1
            return ImageHeader(width, height, "WEBP", "RGBA" if data[20] & 0x10 else "RGB")
        if kind == b"VP8L" and data[20] == 0x2F:
            (bits,) = struct.unpack("<I", data[21:25])
            return ImageHeader((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, "WEBP",
                               "RGBA" if bits >> 28 & 1 else "RGB")
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return ImageHeader(width, height, "GIF", "P")
    return None


def read_header(data: bytes, params: DecodeParams | None = None) -> ImageHeader:
    """Read dimensions, format, mode and EXIF orientation without decoding pixels.

    JPEGs are read from their markers; other formats (and unusual JPEGs) through Pillow's plugins,
    never through Pillow's process-wide bomb limit (the config's ``max_pixels`` is the limit). A PNG,
    WebP or GIF whose canvas is above ``params.max_pixels`` is answered from its first bytes and never
    reaches Pillow (which may decode or allocate the whole canvas to read EXIF); :func:`check_dimensions`
    then refuses it.

    Args:
        data: the whole file content.
        params: the decode guards (only ``max_pixels`` is used here; default :class:`DecodeParams`).

    Returns:
        The header facts.

    Raises:
        ImageRejected: ``empty_file``, ``not_an_image`` or ``unreadable_header``.
    """
    if len(data) == 0:
        raise ImageRejected("empty_file", "file has 0 bytes")
    fast = _jpeg_header(data)
    if fast is not None:
        return fast
    limit = (params or DecodeParams()).max_pixels
    canvas = _canvas(data)
    if canvas is not None and canvas.width * canvas.height > limit:
        return canvas
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = _open_without_bomb_check(data)
            width, height = im.size
            orientation = 1
            try:
                orientation = int(im.getexif().get(0x0112, 1))
            except Exception:  # a broken EXIF block must not cost the image
                orientation = 1
    except (UnidentifiedImageError, struct.error):  # struct.error: a plugin's signature check on a 1-3 byte file
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


#: rows composited at a time: the float temporaries stay a few MB whatever the image size
_STRIP_ROWS = 64


def _composite(bgra: np.ndarray, background: int) -> np.ndarray:
    """RGB uint8 of a BGRA image (8- or 16-bit, as OpenCV decodes it) composited onto a grey ``background``.

    Strip by strip, and written over the decoded array's own memory (each strip's RGB bytes land at or
    before where its BGRA bytes were, after they are read): the peak is the decoded array plus one
    strip's temporaries, not the several full-size float copies of a whole-image composite. The
    result is a view into that memory (``bgra`` is consumed).
    """
    h, w = bgra.shape[:2]
    full = 65535.0 if bgra.dtype == np.uint16 else 255.0
    scale = 257.0 if bgra.dtype == np.uint16 else 1.0
    flat = bgra.reshape(-1).view(np.uint8)  # the decoded bytes, reused for the output
    row_bytes = w * 3
    for y0 in range(0, h, _STRIP_ROWS):
        strip = bgra[y0 : y0 + _STRIP_ROWS]
        rgb = strip[..., 2::-1].astype(np.float32)  # BGR → RGB while converting
        alpha = strip[..., 3:4].astype(np.float32) / full
        out = np.clip(np.rint((rgb * alpha + background * scale * (1.0 - alpha)) / scale), 0, 255).astype(np.uint8)
        flat[y0 * row_bytes : y0 * row_bytes + out.size] = out.reshape(-1)
    return flat[: h * row_bytes].reshape(h, w, 3)


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: compressed bytes fed to zlib at a time, and most bytes it may return at once: a PNG written as one
#: giant IDAT chunk is still decompressed a few MB at a time
_PNG_IN, _PNG_OUT = 1 << 18, 1 << 22


def _png_alpha_streamed(data: bytes, background: int) -> np.ndarray | None:
    """RGB uint8 of a non-interlaced 8- or 16-bit RGBA or grey+alpha PNG, decompressed, unfiltered and
    composited a few rows at a time: the full-resolution 4-channel array is never built, so memory
    beyond the file is the RGB result (3/8 of the 16-bit RGBA array OpenCV would decode).

    Identical bytes to :func:`_composite` of OpenCV's decode. ``None`` for any other PNG (palette,
    interlaced, no alpha) and for anything off (a bad chunk CRC, a truncated stream, an unknown filter):
    the OpenCV path then decodes or rejects it as it always did.
    """
    if not data.startswith(_PNG_SIGNATURE):
        return None
    view = memoryview(data)
    pos, ihdr, idat = len(_PNG_SIGNATURE), b"", []
    while pos + 12 <= len(data):
        length, kind = struct.unpack(">I4s", view[pos : pos + 8])
        end = pos + 12 + length
        if end > len(data) or zlib.crc32(view[pos + 4 : end - 4]) != struct.unpack(">I", view[end - 4 : end])[0]:
            return None
        if kind == b"IHDR":
            ihdr = bytes(view[pos + 8 : end - 4])
        elif kind == b"IDAT":
            idat.append(view[pos + 8 : end - 4])
        elif kind == b"IEND":
            break
        pos = end
    if len(ihdr) != 13 or not idat:
        return None
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(">IIBBBBB", ihdr)
    if colour not in (4, 6) or depth not in (8, 16) or compression or filtering or interlace or not width * height:
        return None
    from melanoma_data import _jit

    channels, wide = (4 if colour == 6 else 2), depth == 16
    bpp = channels * (2 if wide else 1)
    stride = 1 + width * bpp
    out = np.empty((height, width, 3), np.uint8)
    prev = np.zeros(stride - 1, np.uint8)
    inflate = zlib.decompressobj()
    pending, y = b"", 0

    def rows(piece: bytes) -> bool:
        nonlocal pending, y
        pending += piece
        n = min(len(pending) // stride, height - y)
        if n:
            done = _jit.png_alpha_rows(np.frombuffer(pending, np.uint8, n * stride), stride, bpp, prev, out, y,
                                       wide, channels, background)
            if done != n:
                return False
            y += n
            pending = pending[n * stride :]
        return True

    try:
        for body in idat:
            for start in range(0, len(body), _PNG_IN):
                chunk = body[start : start + _PNG_IN]
                while chunk:
                    if not rows(inflate.decompress(chunk, _PNG_OUT)):
                        return None
                    chunk = inflate.unconsumed_tail
        if not rows(inflate.flush()):
            return None
    except zlib.error:
        return None
    return out if y == height else None


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
        out = _png_alpha_streamed(data, params.alpha_background) if header.format == "PNG" else None
        if out is None:
            arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
            if arr is not None and arr.ndim == 3 and arr.shape[2] == 4:
                out = _composite(arr, params.alpha_background)
        if out is not None:
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


#: formats the Pillow fallback decodes: those of the image file extensions ingest reads. Anything else that
#: Pillow could open (EPS runs Ghostscript to render, and other exotic plugins) is refused, not rendered.
PILLOW_DECODES = frozenset({"JPEG", "MPO", "PNG", "TIFF", "BMP", "DIB", "WEBP", "GIF"})


def _decode_with_pillow(data: bytes, header: ImageHeader, reduction: int) -> np.ndarray:
    """Fallback for formats OpenCV cannot read (GIF, some TIFF/BMP variants).

    Raises:
        ImageRejected: ``decode_failed`` (also for a format outside :data:`PILLOW_DECODES`).
    """
    if header.format not in PILLOW_DECODES:
        raise ImageRejected("decode_failed", f"{header.format} content is not decoded (only "
                                             f"{', '.join(sorted(PILLOW_DECODES))}; EPS would run Ghostscript)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = _open_without_bomb_check(data)  # the header was checked against the config's limit
        with im:
            if reduction > 1:
                im.draft("RGB", (header.width // reduction, header.height // reduction))
            im.load()
            rgb = im.convert("RGB")
            if reduction > 1 and rgb.size[0] > header.width // reduction:
                rgb = rgb.reduce(reduction)
            return np.asarray(rgb, dtype=np.uint8).copy()
    except Exception as exc:
        raise ImageRejected("decode_failed", f"{header.format} data could not be decoded: {exc}") from None
