"""Decoding: header guards, reduced decode, odd formats, orientation, and the bad-input corpus."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from melanoma_data.errors import ImageRejected
from melanoma_data.ops import decode as dec
from melanoma_data.ops import geometry as geo
from melanoma_data.ops._cv import cv2
from melanoma_data.synth import SynthSpec, encode_file, render
from tests.conftest import bad_corpus, jpeg_bomb, jpeg_bytes, png_bomb


def _decode_all(data: bytes, reduction: int = 1) -> np.ndarray:
    header = dec.read_header(data)
    dec.check_dimensions(header, dec.DecodeParams())
    return dec.decode(data, header, reduction)


@pytest.mark.parametrize("name", sorted(bad_corpus()))
def test_bad_corpus_is_rejected_with_reason_or_converted(name):
    data, reason = bad_corpus()[name]
    if reason is None:
        img = _decode_all(data)
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    else:
        with pytest.raises(ImageRejected) as info:
            _decode_all(data)
        assert info.value.reason == reason
        assert info.value.detail


@pytest.mark.parametrize("bomb", [png_bomb, jpeg_bomb])
def test_bomb_refused_from_header_without_allocation(bomb, monkeypatch):
    calls = []
    monkeypatch.setattr(dec.cv2, "imdecode", lambda *a, **k: calls.append(a) or None)
    data = bomb()
    header = dec.read_header(data)
    assert (header.width, header.height) == (60000, 60000)
    with pytest.raises(ImageRejected, match="60000x60000"):
        dec.check_dimensions(header, dec.DecodeParams())
    # through the whole per-image pipeline, which would decode next: refused, and decoding never reached
    from melanoma_data import pipeline
    from melanoma_data.config import PreprocessConfig
    from melanoma_data.errors import PipelineStepError

    with pytest.raises(PipelineStepError) as info:
        pipeline.process_image(data, "bomb", PreprocessConfig())
    assert info.value.reason == "too_large" and info.value.step == "header"
    assert calls == []
    ok = dec.read_header(jpeg_bytes(64, 48))  # the stand-in does record a decode that is reached
    dec.decode(jpeg_bytes(64, 48), ok, 1)
    assert len(calls) == 1


def test_pixel_limit_is_configurable():
    header = dec.read_header(jpeg_bytes(200, 100))
    dec.check_dimensions(header, dec.DecodeParams(max_pixels=20_000))
    with pytest.raises(ImageRejected, match="too_large"):
        dec.check_dimensions(header, dec.DecodeParams(max_pixels=19_999))


def test_cmyk_colours_match_pillow_conversion():
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[:, :32] = (200, 40, 40)
    rgb[:, 32:] = (40, 60, 200)
    buf = io.BytesIO()
    Image.fromarray(rgb).convert("CMYK").save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    assert dec.read_header(data).mode == "CMYK"
    ours = _decode_all(data).astype(int)
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    assert np.abs(ours - ref).mean() < 6


def test_16bit_png_scaled_not_clipped():
    grey16 = np.full((40, 50), 40000, np.uint16)
    buf = io.BytesIO()
    Image.fromarray(grey16).save(buf, "PNG")
    img = _decode_all(buf.getvalue())
    assert abs(int(img.mean()) - 40000 // 257) <= 1


def test_alpha_is_composited_onto_background():
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[:, :20, 3] = 255  # left opaque, right transparent
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    img = _decode_all(buf.getvalue())
    assert img[:, :20].mean() == pytest.approx(200, abs=1)
    assert img[:, 20:].mean() == pytest.approx(0, abs=1)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_alpha_composite_in_strips_equals_the_whole_image_formula(dtype):
    rng = np.random.default_rng(3)
    top = 65535 if dtype == np.uint16 else 255
    bgra = rng.integers(0, top + 1, (dec._STRIP_ROWS * 2 + 17, 53, 4)).astype(dtype)  # strips and a partial one
    bgra[:5, :, 3] = 0
    bgra[5:9, :, 3] = top
    rgb = bgra[..., 2::-1].astype(np.float32)  # the whole-image formula the strips replace
    alpha = bgra[..., 3:4].astype(np.float32) / float(top)
    scale = 257.0 if dtype == np.uint16 else 1.0
    ref = np.clip(np.rint((rgb * alpha + 128 * scale * (1.0 - alpha)) / scale), 0, 255).astype(np.uint8)
    out = dec._composite(bgra.copy(), 128)
    np.testing.assert_array_equal(out, ref)
    assert out.dtype == np.uint8 and out.shape == ref.shape


def _opencv_composite(data: bytes, background: int) -> np.ndarray:
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED | cv2.IMREAD_IGNORE_ORIENTATION)
    return dec._composite(arr, background)


def test_streamed_png_alpha_decode_equals_opencv_then_composite(monkeypatch):
    rng = np.random.default_rng(5)
    cases = 0
    for trial in range(24):
        h, w = int(rng.integers(1, 70)), int(rng.integers(1, 70))
        wide, grey = trial % 2 == 0, trial % 3 == 0
        top = 65535 if wide else 255
        img = rng.integers(0, top + 1, (h, w, 4)).astype(np.uint16 if wide else np.uint8)
        img[: h // 2] = img[: h // 2].mean(axis=(0, 1)).astype(img.dtype)  # flat rows: other PNG filters
        img[: h // 4, :, 3] = 0
        if grey and not wide:  # grey + alpha (Pillow writes it; OpenCV decodes it as BGRA)
            out = io.BytesIO()
            Image.fromarray(np.dstack([img[..., 0], img[..., 3]]), "LA").save(out, "PNG")
            data = out.getvalue()
        else:
            ok, buf = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, int(rng.integers(0, 10))])
            data = buf.tobytes()
        background = int(rng.choice([0, 128, 255]))
        streamed = dec._png_alpha_streamed(data, background)
        assert streamed is not None
        np.testing.assert_array_equal(streamed, _opencv_composite(data, background))
        cases += 1
    assert cases == 24
    # a long image whose one IDAT chunk is decompressed and unfiltered a few rows at a time
    monkeypatch.setattr(dec, "_PNG_IN", 1000)
    monkeypatch.setattr(dec, "_PNG_OUT", 777)
    img = rng.integers(0, 65536, (300, 41, 4)).astype(np.uint16)
    data = cv2.imencode(".png", img)[1].tobytes()
    np.testing.assert_array_equal(dec._png_alpha_streamed(data, 7), _opencv_composite(data, 7))
    header = dec.read_header(data)
    np.testing.assert_array_equal(dec.decode(data, header, 1, dec.DecodeParams(alpha_background=7)),
                                  _opencv_composite(data, 7))


def test_streamed_png_decode_leaves_other_pngs_to_opencv():
    rgba = np.zeros((30, 20, 4), np.uint8)
    rgba[..., 0], rgba[:, :10, 3] = 180, 255
    pal = io.BytesIO()
    Image.fromarray(rgba, "RGBA").convert("P").save(pal, "PNG", transparency=0)  # palette + tRNS
    assert dec._png_alpha_streamed(pal.getvalue(), 0) is None
    rgb = cv2.imencode(".png", rgba[..., :3])[1].tobytes()  # no alpha
    assert dec._png_alpha_streamed(rgb, 0) is None
    good = cv2.imencode(".png", rgba)[1].tobytes()
    assert dec._png_alpha_streamed(good, 0) is not None
    bad_crc = bytearray(good)
    bad_crc[-20] ^= 0xFF  # inside the last chunks: the CRC no longer matches
    assert dec._png_alpha_streamed(bytes(bad_crc), 0) is None
    assert dec._png_alpha_streamed(good[: len(good) // 2], 0) is None  # truncated: OpenCV's path decides
    with pytest.raises(ImageRejected):
        _decode_all(good[: len(good) // 2])  # and rejects it, as before


@pytest.mark.parametrize(("w", "h", "needed", "policy", "expected"), [
    (6000, 4000, 512, "crop", 4), (6000, 4000, 512, "pad", 8), (1024, 768, 512, "crop", 1),
    (2048, 1536, 512, "crop", 2), (4288, 2848, 256, "crop", 8),
])
def test_choose_reduction_covers_needed_side(w, h, needed, policy, expected):
    header = dec.ImageHeader(w, h, "JPEG", "RGB")
    factor = dec.choose_reduction(header, needed, policy)
    assert factor == expected
    side = min(w, h) if policy == "crop" else max(w, h)
    assert side // factor >= needed


def test_reduced_decode_matches_full_decode_downscaled():
    data = encode_file(render(SynthSpec(width=1600, height=1200, hairs=5), seed=1), quality=95)
    header = dec.read_header(data)
    reduced = dec.decode(data, header, 4).astype(np.float32)
    full = dec.decode(data, header, 1)
    ref = cv2.resize(full, (reduced.shape[1], reduced.shape[0]), interpolation=cv2.INTER_AREA).astype(np.float32)
    assert reduced.shape == (300, 400, 3)
    assert np.abs(reduced - ref).mean() < 3


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_restores_displayed_image(orientation):
    spec = SynthSpec(width=160, height=100, exif_orientation=orientation, hairs=3)
    shown = render(spec, seed=orientation)
    data = encode_file(shown, fmt="PNG")  # lossless: exact comparison
    header = dec.read_header(data)
    assert header.orientation == orientation
    img = geo.apply_orientation(dec.decode(data, header, 1), geo.OrientParams(header.orientation))
    np.testing.assert_array_equal(img, shown.image)
    pil = np.asarray(__import__("PIL.ImageOps", fromlist=["x"]).exif_transpose(Image.open(io.BytesIO(data))))
    np.testing.assert_array_equal(img, pil)


def _pillow_header(data: bytes):
    import io

    from PIL import Image

    im = Image.open(io.BytesIO(data))
    o = int(im.getexif().get(0x0112, 1))
    return im.size[0], im.size[1], im.format, im.mode, o if o in range(1, 9) else 1


def test_header_from_jpeg_markers_equals_pillow(sample_dir, tmp_path):
    """The marker parser answers what Pillow answers, on every real and generated file we have."""
    from melanoma_data import synth
    from melanoma_data.ops import decode as dec
    from tests.conftest import bad_corpus, jpeg_bytes

    files = [p.read_bytes() for p in sorted((sample_dir / "images").glob("*.jpg"))]
    for o in range(1, 9):
        spec = synth.SynthSpec(width=120, height=90, exif_orientation=o)
        files.append(synth.encode_file(synth.render(spec, seed=o)))
    files += [jpeg_bytes(100, 80, mode=m) for m in ("RGB", "L", "CMYK")]
    files.append(jpeg_bytes(100, 80, progressive=True))
    files += [data for data, reason in bad_corpus().values() if reason is None]
    fast = 0
    for data in files:
        h = dec.read_header(data)
        assert (h.width, h.height, h.format, h.mode, h.orientation) == _pillow_header(data)
        fast += dec._jpeg_header(data) is not None
    assert fast >= 89 + 8  # the real sample and the rotations take the fast path


def test_header_probe_leaves_pillows_global_limit_alone(monkeypatch):
    """Reading a bomb's header never switches Pillow's process-wide limit off (threaded Dask clients)."""
    from PIL import Image

    from melanoma_data.ops import decode as dec
    from tests.conftest import png_bomb

    seen = []
    original = Image.MAX_IMAGE_PIXELS
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", original)

    def guard(*a, **k):
        seen.append(Image.MAX_IMAGE_PIXELS)
        return real(*a, **k)

    real = Image._decompression_bomb_check
    monkeypatch.setattr(Image, "_decompression_bomb_check", guard)
    h = dec.read_header(png_bomb())
    assert (h.width, h.height) == (60000, 60000)
    assert original == Image.MAX_IMAGE_PIXELS and seen == []  # no bomb check, no change of the global


def test_files_over_max_bytes_are_quarantined_without_being_read(tmp_path, monkeypatch):
    from melanoma_data import pipeline
    from melanoma_data.config import PreprocessConfig
    from tests.conftest import jpeg_bytes, write_generic

    big, small = jpeg_bytes(400, 300, seed=1), jpeg_bytes(64, 48, seed=2)
    assert len(big) > 20_000 > len(small)
    root = write_generic(tmp_path, {"BIG": big, "SMALL": small})
    cfg = PreprocessConfig.from_dict({"decode": {"max_bytes": 20_000}, "square": {"size": 32}})
    from fsspec.implementations.local import LocalFileSystem

    real = LocalFileSystem.cat_file
    read = []

    def guarded(self, path, *a, **k):
        assert not str(path).endswith("BIG.jpg"), "an oversized file was read"
        read.append(path)
        return real(self, path, *a, **k)

    monkeypatch.setattr(LocalFileSystem, "cat_file", guarded)
    from melanoma_data.ingest import ingest

    records = ingest([str(root)]).records.to_dict(orient="records")
    rows, quarantine = pipeline.process_partition(records, cfg)
    assert [r["image_name"] for r in rows] == ["SMALL"]
    assert quarantine[0]["reason"] == "too_large" and "max_bytes" in quarantine[0]["detail"]
    assert any(str(p).endswith("SMALL.jpg") for p in read)  # the guard sits where inputs are read


@pytest.mark.parametrize("data", [b"v", b"vm\n", b"\x89PN", b"GIF", b"\xff\xd8\xff"])
def test_files_of_a_few_bytes_are_not_images_not_crashes(data):
    with pytest.raises(ImageRejected) as err:
        dec.read_header(data)
    assert err.value.reason in ("not_an_image", "truncated", "unreadable_header")


def _chunk(kind: bytes, body: bytes) -> bytes:
    import struct
    import zlib

    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _zeros_deflated(n: int, step: int = 1 << 22) -> bytes:
    """zlib stream of ``n`` zero bytes, compressed piecewise (the raw zeros are never held whole)."""
    import zlib

    z, out, block = zlib.compressobj(9), [], bytes(step)
    for start in range(0, n, step):
        out.append(z.compress(block[: min(step, n - start)]))
    out.append(z.flush())
    return b"".join(out)


def _full_png_bomb(width: int = 14000, height: int = 14000) -> bytes:
    """A valid greyscale PNG with a *complete* image data chunk (every row present, all zero)."""
    import struct

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = _zeros_deflated(height * (width + 1))  # one filter byte per row
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _full_tiff_bomb(width: int = 14000, height: int = 14000) -> bytes:
    """A valid greyscale deflate TIFF, one strip holding every (zero) pixel."""
    import struct

    strip = _zeros_deflated(width * height)
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 8), (262, 3, 1), (273, 4, 0),
            (277, 3, 1), (278, 4, height), (279, 4, len(strip))]
    ifd_size = 2 + 12 * len(tags) + 4
    data_at = 8 + ifd_size
    entries = b"".join(struct.pack("<HHI", tag, kind, 1)
                       + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value if tag != 273
                                                                                       else data_at))
                       for tag, kind, value in tags)
    return b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(tags)) + entries + b"\x00" * 4 + strip


def _webp_bomb() -> bytes:
    """A WebP whose extended header (VP8X) declares a 16384×16384 canvas."""
    import struct

    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\x00\x00\x00\x00" + (16383).to_bytes(3, "little") * 2
    body = b"WEBP" + vp8x + b"VP8 " + struct.pack("<I", 0)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _gif_bomb() -> bytes:
    import struct

    return b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00" + b"\x3b"


@pytest.mark.parametrize("make,fmt", [(_full_png_bomb, "PNG"), (_full_tiff_bomb, "TIFF"), (_webp_bomb, "WEBP"),
                                      (_gif_bomb, "GIF"), (lambda: jpeg_bomb(14000, 14000), "JPEG")])
def test_bomb_with_full_image_data_is_refused_before_any_decode(make, fmt, monkeypatch):
    """The header is read and refused before Pillow or OpenCV decodes (or allocates) a pixel."""
    from PIL import ImageFile, WebPImagePlugin

    from melanoma_data import pipeline
    from melanoma_data.config import PreprocessConfig
    from melanoma_data.errors import PipelineStepError

    data = make()
    assert len(data) < 2_000_000
    reached = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self, *a, **k: reached.append("load") or real_load(self))
    monkeypatch.setattr(dec.cv2, "imdecode", lambda *a, **k: reached.append("imdecode"))
    monkeypatch.setattr(WebPImagePlugin._webp, "WebPAnimDecoder", lambda *a, **k: reached.append("webp canvas"))
    header = dec.read_header(data, dec.DecodeParams())
    assert header.format == fmt and header.width * header.height > dec.DecodeParams().max_pixels
    with pytest.raises(PipelineStepError) as info:
        pipeline.process_image(data, "bomb", PreprocessConfig())
    assert info.value.reason == "too_large" and info.value.step == "header"
    assert f"{header.width}x{header.height}" in str(info.value)
    assert reached == []


def test_png_below_the_limit_still_reads_its_exif_orientation():
    """The canvas probe only answers oversized images: the others keep Pillow's header (EXIF included)."""
    rgb = np.zeros((40, 60, 3), np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG", exif=exif)
    h = dec.read_header(buf.getvalue(), dec.DecodeParams())
    assert (h.width, h.height, h.format, h.orientation) == (60, 40, "PNG", 6)
    with pytest.raises(ImageRejected, match="too_large"):
        dec.check_dimensions(dec.read_header(buf.getvalue(), dec.DecodeParams(max_pixels=2000)),
                             dec.DecodeParams(max_pixels=2000))


def test_eps_content_is_refused_without_running_ghostscript(monkeypatch):
    """A PostScript file named .jpg: Pillow would render it with Ghostscript; it is refused instead."""
    from PIL import EpsImagePlugin

    ran = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: ran.append(a))
    data = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 100 100\nshowpage\n%%EOF\n"
    header = dec.read_header(data)
    assert header.format == "EPS"
    with pytest.raises(ImageRejected, match="EPS content is not decoded") as info:
        dec.decode(data, dec.check_dimensions(header, dec.DecodeParams()), 1)
    assert info.value.reason == "decode_failed" and ran == []
