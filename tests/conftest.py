"""Shared fixtures: the real ISIC sample, synthetic datasets, and a corpus of bad input files."""

from __future__ import annotations

import contextlib
import io
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from melanoma_data import synth

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT.parent / "shared" / "data" / "isic-sample"


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The 89 real ISIC originals (read in place, never copied into the repository)."""
    if not (SAMPLE / "metadata.csv").exists():
        pytest.skip(f"real sample not found at {SAMPLE}")
    return SAMPLE


@pytest.fixture(scope="session")
def synthetic_kaggle(tmp_path_factory) -> Path:
    """A small synthetic Kaggle-2020-layout dataset (24 images, varied defects)."""
    root = tmp_path_factory.mktemp("synth") / "kaggle"
    synth.write_dataset(root, n=24, layout="kaggle2020", seed=7, sizes=[(640, 480), (800, 600)], defects=0.6)
    return root


def jpeg_bytes(w: int = 96, h: int = 72, mode: str = "RGB", seed: int = 0, **save) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    im = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def png_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, "PNG") if mode else Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def png_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A tiny PNG whose header claims ``width``×``height`` (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = chunk(b"IDAT", zlib.compress(b"\x00" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + idat + chunk(b"IEND", b"")


def jpeg_bomb(width: int = 60000, height: int = 60000) -> bytes:
    """A small valid JPEG whose SOF header is patched to claim ``width``×``height``."""
    data = bytearray(jpeg_bytes(64, 48))
    i = 2
    while i < len(data):
        marker = data[i + 1]
        length = struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker in (0xC0, 0xC1, 0xC2):
            data[i + 5 : i + 9] = struct.pack(">HH", height, width)
            return bytes(data)
        i += 2 + length
    raise AssertionError("no SOF marker")


def bad_corpus() -> dict[str, tuple[bytes, str | None]]:
    """name → (file bytes, expected quarantine reason or None when the file must be processed)."""
    rng = np.random.default_rng(1)
    good = jpeg_bytes(120, 90)
    rgba = rng.integers(0, 255, (80, 100, 4), dtype=np.uint8)
    grey16 = (rng.random((80, 100)) * 65535).astype(np.uint16)
    return {
        "BAD_empty": (b"", "empty_file"),
        "BAD_truncated": (good[: len(good) // 2], "truncated"),
        "BAD_text": (b"image_name,target\nnot,an image\n" * 4, "not_an_image"),
        "BAD_bomb_png": (png_bomb(), "too_large"),
        "BAD_bomb_jpeg": (jpeg_bomb(), "too_large"),
        "BAD_tiny": (jpeg_bytes(8, 8), "too_small"),
        "ODD_png_named_jpg": (png_bytes(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)), None),
        "ODD_cmyk": (jpeg_bytes(120, 90, mode="CMYK"), None),
        "ODD_grey": (jpeg_bytes(120, 90, mode="L"), None),
        "ODD_png16": (png_bytes(grey16), None),
        "ODD_alpha": (png_bytes(rgba), None),
    }


def write_generic(root: Path, files: dict[str, bytes], rows: list[dict] | None = None, ext: str = ".jpg") -> Path:
    """A generic-layout folder: ``metadata.csv`` + ``images/NAME.jpg``."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / "images" / f"{name}{ext}").write_bytes(data)
    if rows is None:
        rows = [{"image_name": n, "sex": "female", "age_approx": 50, "target": 0} for n in files]
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


@pytest.fixture()
def copy_sample(tmp_path, sample_dir):
    """Copy a few sample images into a temporary generic folder (for tests that modify inputs)."""

    def make(names: list[str] | None = None) -> Path:
        meta = pd.read_csv(sample_dir / "metadata.csv", dtype=str, keep_default_na=False)
        if names:
            meta = meta[meta["image_name"].isin(names)]
        root = tmp_path / "sample-copy"
        (root / "images").mkdir(parents=True)
        for n in meta["image_name"]:
            shutil.copy(sample_dir / "images" / f"{n}.jpg", root / "images" / f"{n}.jpg")
        meta.to_csv(root / "metadata.csv", index=False)
        return root

    return make


def ink(png) -> dict[str, float]:
    """What a report plot has drawn: shares of non-white, near-black, blue-ish and red-ish pixels.

    A blank or axes-only figure has almost no blue/red and little ink; a plotted curve or histogram
    shows up in the colour the report draws it with.
    """
    import numpy as np
    from PIL import Image

    px = np.asarray(Image.open(png).convert("RGB")).astype(int)
    r, g, b = px[..., 0], px[..., 1], px[..., 2]
    return {"ink": float((px.min(axis=2) < 235).mean()), "black": float((px.max(axis=2) < 60).mean()),
            "blue": float(((b > r + 40) & (b > g + 10)).mean()), "red": float(((r > b + 40) & (r > g + 40)).mean())}


@contextlib.contextmanager
def serving(run, workers: int = 1, **config):
    """``serve``'s app for ``run`` on 127.0.0.1 (a free port) in a thread, with a bounded request count; yields the
    port and stops the server afterwards."""
    import threading
    import time

    import uvicorn

    from melanoma_models.serve import Service, create_app

    server = uvicorn.Server(uvicorn.Config(create_app(Service(run, workers=workers)), host="127.0.0.1", port=0,
                                           log_level="warning", limit_max_requests=500, **config))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the service did not start"
        time.sleep(0.05)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(30)


def small_version(root: Path, *, n: int, seed: int, size: int, n_folds: int, train_files: int, test_files: int = 1,
                  sizes: tuple[tuple[int, int], ...] = ((200, 150),), defects: float = 0.2, melanoma_rate: float = 0.3,
                  test_fraction: float = 0.2, **shards) -> str:
    """A generated Kaggle-2020 input under ``root/in`` preprocessed into a tiny version under ``root/out`` (two
    images per patient, partitions of 40); returns the version's URL."""
    from melanoma_data import build
    from melanoma_data.config import PreprocessConfig

    synth.write_dataset(root / "in", n=n, layout="kaggle2020", seed=seed, sizes=list(sizes), defects=defects,
                        melanoma_rate=melanoma_rate, test_fraction=test_fraction, images_per_patient=2.0)
    cfg = PreprocessConfig.from_dict({"square": {"size": size}, "partition_size": 40, "shards": {
        "n_folds": n_folds, "train_files": train_files, "test_files": test_files, **shards}})
    return build.preprocess([str(root / "in")], str(root / "out"), cfg).version_url
