"""Per-image composition of the ops, and the eager per-partition loop the Dask layer maps."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from melanoma_data import fsutil, h5
from melanoma_data.config import PreprocessConfig
from melanoma_data.errors import ImageRejected, PipelineStepError
from melanoma_data.ops import artefacts as art
from melanoma_data.ops import colour as col
from melanoma_data.ops import decode as dec
from melanoma_data.ops import encode as enc
from melanoma_data.ops import geometry as geo
from melanoma_data.ops import hair as hr
from melanoma_data.ops import vignette as vig
from melanoma_data.ops._cv import cv2

#: Record fields that locate the input and are not shard columns.
INTERNAL = ("path", "h5_key")


def process_image(data: bytes, image_name: str, cfg: PreprocessConfig, debug: bool = False,
                  timings: dict[str, float] | None = None) -> dict[str, Any]:
    """Turn one file's bytes into the processed JPEG plus source facts and measurements.

    Args:
        data: the original file content.
        image_name: used only for error context.
        cfg: the preprocessing configuration.
        debug: also return, under ``"_debug"``, what ``inspect`` draws: the oriented working-resolution
            image, the field of view found, the hair mask and the final pixels.
        timings: when given, each step's seconds are added to it under the step's name (the bench's
            per-op breakdown).

    Returns:
        A dict with the source-fact, processing and measurement columns and ``image`` (JPEG bytes).

    Raises:
        PipelineStepError: naming the failing step, the image and a reason code.
    """
    def _step(name: str, fn: Callable[..., Any], *args: Any) -> Any:
        start = time.perf_counter() if timings is not None else 0.0
        try:
            out = fn(*args)
        except Exception as exc:
            raise PipelineStepError(name, image_name, exc) from exc
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
        return out

    header = _step("header", dec.read_header, data, cfg.decode)
    _step("header", dec.check_dimensions, header, cfg.decode)
    # the artefact detectors need their own resolution (thin ruler ticks), whatever the output size
    needed = max(cfg.working_side, cfg.artefacts.side) if cfg.artefacts.enabled else cfg.working_side
    reduction = dec.choose_reduction(header, needed, cfg.square.policy)
    img = _step("decode", dec.decode, data, header, reduction, cfg.decode)
    img = _step("orient", geo.apply_orientation, img, geo.OrientParams(header.orientation))
    oriented = img
    # one grey thumbnail of the oriented original serves the field detector and the near-duplicate
    # hash (its centre square: taken before the field crop and the other ops, so two copies of an
    # image hash alike even when an op decides differently on them)
    thumb = _step("thumbnail", geo.grey_thumbnail, img)
    # artefacts are looked for in the whole original (rulers sit on the field's rim, which the crop removes)
    found = _step("artefacts", art.artefacts, img, cfg.artefacts, thumb)
    # the artefacts op's crop policy narrows the field's one crop box
    within = None if found.box == (0.0, 0.0, 1.0, 1.0) else found.box
    fov = _step("field_of_view", vig.field_of_view, found.image, cfg.field_of_view, thumb, within)
    img, v = fov.image, fov.vignette
    portrait = img.shape[0] > img.shape[1]
    img = _step("landscape", geo.to_landscape, img, cfg.landscape)
    img = _step("square", geo.square, img, cfg.square, False)  # small originals: ops at own size
    keep = _step("artefacts", _follow, found.found.kept(), oriented.shape[:2], v, img.shape[:2], cfg)
    hair = _step("hair", hr.remove_hair, img, cfg.hair, keep)
    colour = _step("colour", col.shades_of_gray, hair.image, cfg.colour, keep)
    img = _step("square", geo.enlarge, colour.image, cfg.square.size)
    jpeg = _step("encode", enc.encode_jpeg, img, cfg.encode)
    phash = _step("phash", enc.perceptual_hash, geo.centre_square(thumb), cfg.phash)
    out = {
        "orig_width": header.width,
        "orig_height": header.height,
        "orig_format": header.format,
        "orig_mode": header.mode,
        "file_bytes": len(data),
        "file_sha256": _step("sha256", lambda: hashlib.sha256(data).hexdigest()),
        "exif_orientation": header.orientation,
        "orientation_applied": geo.ORIENTATION_NAMES[header.orientation],
        "portrait_rotated": bool(portrait and cfg.landscape.policy == "rotate"),
        "decode_reduction": reduction,
        "width": img.shape[1],
        "height": img.shape[0],
        "vignette_detected": v.detected,
        "vignette_radius_frac": v.radius_frac,
        "vignette_cx": v.cx,
        "vignette_cy": v.cy,
        "vignette_confidence": v.confidence,
        "crop_x0": v.box[0],
        "crop_y0": v.box[1],
        "crop_x1": v.box[2],
        "crop_y1": v.box[3],
        "hair_fraction": hair.fraction,
        "marks_fraction": hair.marks_fraction,
        **_artefact_columns(found.found),
        "colour_gain_r": colour.gains[0],
        "colour_gain_g": colour.gains[1],
        "colour_gain_b": colour.gains[2],
        "brightness_before": colour.brightness_before,
        "brightness_after": colour.brightness_after,
        "phash": phash,
        "image": jpeg,
    }
    if debug:
        mask = hair.mask
        if mask is not None and mask.shape[:2] != img.shape[:2]:  # a small original, enlarged after the ops
            mask = cv2.resize(mask.astype(np.uint8), img.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0
        out["_debug"] = {"oriented": oriented, "vignette": v, "hair_mask": mask, "processed": img,
                         "artefacts": found.found}
    return out


def _artefact_columns(found: art.Artefacts) -> dict[str, Any]:
    """``<kind>_detected`` and ``<kind>_fraction`` for every artefact kind; missing (None) when the detectors
    did not look (off, or the image too small), so "not looked for" never reads as "not there"."""
    out: dict[str, Any] = {}
    for kind in art.KINDS:
        out[f"{kind}_detected"] = found.detected[kind] if found.looked else None
        out[f"{kind}_fraction"] = found.fraction[kind] if found.looked else None
    return out


def _follow(mask: np.ndarray | None, oriented: tuple[int, int], v: vig.Vignette, frame: tuple[int, int],
            cfg: PreprocessConfig) -> np.ndarray | None:
    """An artefact mask of the oriented original carried through the field crop, the landscape turn and
    the square resize into the frame hair removal works in (``None`` when there is nothing to carry)."""
    if mask is None or not mask.any():
        return None
    h, w = oriented
    m = cv2.resize(mask.view(np.uint8) * np.uint8(255), (w, h), interpolation=cv2.INTER_NEAREST)
    if cfg.field_of_view.policy == "crop":
        m = vig.apply_vignette_policy(m, v, cfg.field_of_view)
    m = geo.square(geo.to_landscape(m, cfg.landscape), dataclasses.replace(cfg.square, pad_value=0), False)
    if m.shape[:2] != frame:
        m = cv2.resize(m, frame[::-1], interpolation=cv2.INTER_NEAREST)
    return m > 127


def read_input(record: Mapping[str, Any], containers: h5.Readers, max_bytes: int) -> bytes:
    """The bytes of one input: a file (local or fsspec URL) or an HDF5 entry (``h5_key``).

    The size is checked from the filesystem or the entry's metadata before anything is read.

    Raises:
        ImageRejected: ``too_large`` (more than ``max_bytes``: not read when the size says so, else
            refused once read).
        OSError, h5.EntryError: the input cannot be read.
    """
    key = record.get("h5_key")
    if isinstance(key, str) and key:
        size, read = containers.size(record["path"], key), lambda: containers.read(record["path"], key)
    else:
        fs, path = fsutil.resolve(record["path"])
        size, read = int(fs.size(path)), lambda: fs.cat_file(path)
    if size > max_bytes:
        raise ImageRejected("too_large", f"{size:,} bytes, above decode.max_bytes = {max_bytes:,} (not read)")
    data = read()
    if len(data) > max_bytes:  # a variable-length HDF5 item, or a file that grew since it was sized
        raise ImageRejected("too_large", f"{len(data):,} bytes read, above decode.max_bytes = {max_bytes:,}")
    return data


def quarantine_row(record: Mapping[str, Any], stage: str, reason: str, detail: str) -> dict[str, str]:
    """A quarantine row for one input record."""
    return {
        "image_name": str(record["image_name"]),
        "source": str(record.get("source") or ""),
        "path": str(record.get("rel_path") or ""),
        "stage": stage,
        "reason": reason,
        "detail": detail,
    }


def process_partition(
    records: list[Mapping[str, Any]],
    cfg: PreprocessConfig,
    poisoned: Mapping[str, str] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Process a list of input records eagerly (no Dask): the unit the Dask layer maps.

    Args:
        records: input records (metadata columns plus ``path``).
        cfg: preprocessing configuration.
        poisoned: image names known to kill worker processes → detail; they are quarantined
            without being touched.

    Returns:
        ``(rows, quarantine)``: shard rows (metadata + facts + image bytes) and quarantine rows.
    """
    cv2.setNumThreads(1)  # one thread per Dask worker process; parallelism comes from processes
    poisoned = poisoned or {}
    rows: list[dict[str, Any]] = []
    quarantine: list[dict[str, str]] = []
    with h5.Readers() as containers:  # HDF5 inputs: each file opened once per partition, on the worker
        for record in records:
            name = str(record["image_name"])
            if name in poisoned:
                quarantine.append(quarantine_row(record, "worker", "worker_crash", poisoned[name]))
                continue
            try:
                data = read_input(record, containers, cfg.decode.max_bytes)
            except ImageRejected as exc:
                quarantine.append(quarantine_row(record, "read", exc.reason, exc.detail))
                continue
            except (OSError, h5.EntryError) as exc:
                quarantine.append(quarantine_row(record, "read", "unreadable_file", f"{type(exc).__name__}: {exc}"))
                continue
            try:
                result = process_image(data, name, cfg)
            except PipelineStepError as exc:
                quarantine.append(quarantine_row(record, exc.step, exc.reason, exc.detail))
                continue
            row = {k: v for k, v in record.items() if k not in INTERNAL}  # metadata and extra columns
            row.update(result)
            rows.append(row)
    return rows, quarantine
