"""Per-image composition of the ops (driven by the step table), and the eager per-partition loop the Dask layer maps."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from melanoma_data import columns, fsutil, h5
from melanoma_data.config import PreprocessConfig
from melanoma_data.errors import ImageRejected, PipelineStepError
from melanoma_data.ops import steps
from melanoma_data.ops._cv import cv2

#: Record fields that locate the input and are not shard columns.
INTERNAL = ("path", "h5_key")

#: The steps in run order, as (name reported in timings and errors, function, keys read): every step runs.
_PLAN = tuple((s.label, s.run, s.reads) for s in steps.ORDER)
#: The shard columns the steps write, in table order (source facts, processing, measurements, ``image``).
OUTPUTS = tuple(c.name for c in columns.COLUMNS if any(c.name in s.outputs for s in steps.STEPS))
#: Names this module had before the step table, for their callers.
_follow, dec = steps.follow, steps.dec


def _plan(cfg: PreprocessConfig, image_type: Any) -> tuple:
    """The plan for a row of ``image_type`` under the config's op policy (``[views]``)."""
    view = steps.view_of(image_type)
    if not steps.skipped_steps(cfg.views, view):
        return _PLAN
    key = (view, cfg.views)
    if key not in _PLANS:
        _PLANS[key] = steps.plan(cfg.views, view)
    return _PLANS[key]


_PLANS: dict[tuple[str, Any], tuple] = {}


def process_image(data: bytes, image_name: str, cfg: PreprocessConfig, debug: bool = False,
                  timings: dict[str, float] | None = None, image_type: str | None = None) -> dict[str, Any]:
    """Turn one file's bytes into the processed JPEG plus source facts and measurements.

    Runs the steps of :data:`melanoma_data.ops.steps.STEPS` in the order derived from what each reads and
    writes, on one record (a dict) that starts as ``{"data": data}``.

    Args:
        data: the original file content.
        image_name: used only for error context.
        cfg: the preprocessing configuration.
        debug: also return, under ``"_debug"``, what ``inspect`` draws: the oriented working-resolution
            image, the field of view found, the hair mask and the final pixels.
        timings: when given, each step's seconds are added to it under the step's name (the bench's
            per-op breakdown).
        image_type: the row's view (``clinical: close-up`` ...; None: dermoscopic): on a clinical view the op
            policy (``cfg.views``) runs each skipped step's bypass instead (its columns null, ``ops_skipped``
            says why).

    Returns:
        A dict with the source-fact, processing and measurement columns and ``image`` (JPEG bytes).

    Raises:
        PipelineStepError: naming the failing step, the image and a reason code.
    """
    rec: dict[str, Any] = {"data": data, "image_type": image_type}
    get = rec.__getitem__
    for label, run, reads in _plan(cfg, image_type):
        start = time.perf_counter() if timings is not None else 0.0
        try:
            rec.update(run(cfg, *map(get, reads)))  # the plan was checked: every key read is there
        except Exception as exc:
            raise PipelineStepError(label, image_name, exc) from exc
        if timings is not None:
            timings[label] = timings.get(label, 0.0) + time.perf_counter() - start
    out = {name: rec[name] for name in OUTPUTS}
    if debug:
        img = rec["processed"]
        mask = rec["hair"].mask
        if mask is not None and mask.shape[:2] != img.shape[:2]:  # a small original, enlarged after the ops
            mask = cv2.resize(mask.astype(np.uint8), img.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0
        out["_debug"] = {"oriented": rec["oriented"], "vignette": rec["vignette"], "hair_mask": mask, "processed": img,
                         "artefacts": rec["artefacts"].found}
    return out


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
                view = record.get("image_type")
                result = process_image(data, name, cfg, image_type=view if isinstance(view, str) else None)
            except PipelineStepError as exc:
                quarantine.append(quarantine_row(record, exc.step, exc.reason, exc.detail))
                continue
            row = {k: v for k, v in record.items() if k not in INTERNAL}  # metadata and extra columns
            row.update(result)
            rows.append(row)
    return rows, quarantine
