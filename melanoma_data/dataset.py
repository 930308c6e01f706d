"""Reading a dataset version: metadata (pandas), Dask, numpy batches (no TensorFlow), tf.data.

>>> ds = open_dataset("out/isic2020/1a2b3c4d5e6f7a8b")
>>> ds.metadata(split="train").groupby("fold").target.mean()
>>> for batch in ds.iter_batches("train", folds=[1, 2, 3, 4], batch_size=64, shuffle=True, seed=0):
...     batch["image"]   # uint8 (64, S, S, 3) RGB;  batch["target"]  int64, -1 where unknown
>>> tf_ds = ds.tf_dataset("train", folds=[0], batch_size=64)   # (uint8 images, int32 targets), static shapes

Every Parquet file is checked against its manifest entry before it is first read (size, row count,
schema, split and fold from the footer statistics), and its sha256 too when it was modified after the
manifest was written or when the version is opened with ``verify="hash"``: a truncated, altered or
swapped file raises :class:`~melanoma_data.errors.CorruptShard` naming the file.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pandas as pd
import pyarrow
import pyarrow.parquet as pq

from melanoma_data import fsutil, manifest, native_logs, schemas, shards, tfrecord
from melanoma_data.errors import CorruptShard, InputError
from melanoma_data.manifest import FileEntry, Manifest
from melanoma_data.ops._cv import cv2

_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)
#: ``open_dataset(verify=...)``: cheap checks (hash only of files changed after the manifest), or always hash
VERIFY_MODES = ("auto", "hash")


def decode_jpeg(data: bytes, size: int | None = None) -> np.ndarray:
    """JPEG bytes → RGB uint8 array, resized to ``size``×``size`` when given and different."""
    buf = np.frombuffer(data, dtype=np.uint8)
    if _IMREAD_RGB is not None:
        img = cv2.imdecode(buf, _IMREAD_RGB)
    else:  # pragma: no cover - OpenCV < 4.10
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB) if img is not None else None
    if img is None:
        raise InputError("an image in the shards is not decodable JPEG (run `validate` on the version)")
    if size is not None and (img.shape[0] != size or img.shape[1] != size):
        interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
        img = cv2.resize(img, (size, size), interpolation=interp)
    return img


def _column_array(col: pyarrow.ChunkedArray | pyarrow.Array) -> np.ndarray:
    """Arrow column → numpy: integers with nulls → int64 with -1, strings → object arrays."""
    t = col.type
    if pyarrow.types.is_integer(t) or pyarrow.types.is_boolean(t):
        return np.asarray(col.fill_null(-1 if not pyarrow.types.is_boolean(t) else False).to_numpy(),
                          dtype=np.int64 if pyarrow.types.is_integer(t) else bool)
    if pyarrow.types.is_floating(t):
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float32)
    return np.asarray(col.to_pylist(), dtype=object)


class Dataset:
    """A finished dataset version (see :func:`open_dataset`).

    Attributes:
        url: the version directory.
        manifest: its :class:`~melanoma_data.manifest.Manifest` (config, counts, shards, encodings, folds,
            duplicates, timings).
    """

    def __init__(self, url: str, doc: Mapping[str, Any], verify: str = "auto") -> None:
        if verify not in VERIFY_MODES:
            raise InputError(f"verify must be one of {', '.join(VERIFY_MODES)}, got {verify!r}")
        self.url = url
        self.manifest = Manifest.of(doc)
        self.verify = verify
        self._fs, self._dir = fsutil.resolve(url)
        self._checked: dict[str, tuple[int, float]] = {}
        self._manifest_mtime: float | None = None

    def __repr__(self) -> str:
        c = self.manifest.counts
        return (f"Dataset({self.url!r}, written={c.written}, quarantined={c.quarantined}, "
                f"size={self.image_size}, folds={self.n_folds})")

    # ----------------------------------------------------------------- facts

    @property
    def fingerprint(self) -> str:
        """The version's fingerprint."""
        return self.manifest.fingerprint

    @property
    def image_size(self) -> int:
        """Side of the stored square images, in pixels."""
        return self.manifest.image_size

    @property
    def n_folds(self) -> int:
        """Number of folds of the train split."""
        return self.manifest.n_folds

    @property
    def encodings(self) -> dict[str, Any]:
        """String ↔ int codes of the TFRecord integer features."""
        return self.manifest.encodings

    def _entries(self, kind: str, split: str | None, folds: Iterable[int] | None) -> list[FileEntry]:
        entries = list(self.manifest.shards if kind == "parquet" else self.manifest.tfrecords)
        if kind == "tfrecord" and not entries:
            raise InputError(f"{self.url} has no TFRecord files (preprocessed with shards.tfrecord = false)")
        if split is not None:
            splits = sorted({e.split for e in entries})
            if split not in splits:
                raise InputError(f"split {split!r} not in this dataset; it has: {', '.join(splits) or 'nothing'}")
            entries = [e for e in entries if e.split == split]
        if folds is not None:
            wanted = {int(f) for f in folds}
            bad = sorted(wanted - set(range(self.n_folds)))
            if bad:
                raise InputError(f"fold(s) {bad} do not exist; this dataset has folds 0..{self.n_folds - 1}")
            entries = [e for e in entries if e.fold is not None and e.fold in wanted]
        return entries

    def files(self, kind: str = "parquet", split: str | None = None, folds: Iterable[int] | None = None) -> list[str]:
        """URLs of the ``parquet`` or ``tfrecord`` files of a split (and folds)."""
        return [fsutil.to_url(self._fs, fsutil.join(self._dir, e.path)) for e in self._entries(kind, split, folds)]

    # ----------------------------------------------------------------- checks

    def _listed(self) -> dict[str, FileEntry]:
        entries = {e.path: e for e in self.manifest.shards}
        q = self.manifest.quarantine
        entries[q.path] = q
        return entries

    def _manifest_time(self) -> float:
        if self._manifest_mtime is None:
            info = self._fs.info(fsutil.join(self._dir, manifest.MANIFEST_FILE))
            self._manifest_mtime = fsutil.file_stat(info)[1]
        return self._manifest_mtime

    def check_file(self, path: str) -> None:
        """Check one Parquet file of the version against its manifest entry (once per size and mtime).

        Always: it exists, has the recorded size and row count, its columns have the shard schema's
        types, and its footer statistics match the entry's split and fold. Its sha256 too, when the
        version was opened with ``verify="hash"`` or the file changed after the manifest was written.

        Raises:
            CorruptShard: naming the file and what differs.
        """
        entry = self._listed().get(path)
        if entry is None:
            return
        full = fsutil.join(self._dir, path)
        try:
            size, mtime = fsutil.file_stat(self._fs.info(full))
        except FileNotFoundError:
            raise CorruptShard(path, "missing") from None
        if self._checked.get(path) == (size, mtime):
            return
        if entry.bytes is not None and size != entry.bytes:
            raise CorruptShard(path, f"{size} bytes, the manifest says {entry.bytes} (truncated or replaced)")
        changed = self.verify == "hash" or mtime > self._manifest_time()
        if entry.sha256 and changed and fsutil.sha256_file(self._fs, full) != entry.sha256:
            raise CorruptShard(path, "sha256 differs from the manifest (the file was changed or is corrupt)")
        try:
            with self._fs.open(full, "rb") as fh:
                meta = pq.ParquetFile(fh).metadata
        except (pyarrow.ArrowException, OSError, ValueError) as exc:
            raise CorruptShard(path, f"unreadable Parquet ({exc})") from None
        if entry.rows is not None and meta.num_rows != entry.rows:
            raise CorruptShard(path, f"{meta.num_rows} rows, the manifest says {entry.rows}")
        expected = (shards.quarantine_arrow_schema() if entry.quarantine
                    else schemas.shard_arrow_schema(final=True, extras=self.manifest.extras))
        found = meta.schema.to_arrow_schema()
        for field in found:
            if field.name not in expected.names:
                raise CorruptShard(path, f"column {field.name!r} is not a column of this version's files")
            want = expected.field(field.name).type
            if field.type != want:
                raise CorruptShard(path, f"column {field.name!r} is {field.type}, expected {want}")
        if not entry.quarantine:
            for col, want in (("split", entry.split), ("fold", entry.fold)):
                if want is None or col not in found.names:
                    continue
                seen = _footer_values(meta, found.get_field_index(col))
                if seen is not None and seen != {want}:
                    raise CorruptShard(path, f"holds {col} {sorted(seen, key=str)}, the manifest says "
                                             f"{want!r} (a file swapped for another?)")
        self._checked[path] = (size, mtime)

    @contextlib.contextmanager
    def _reading(self, path: str) -> Iterator[None]:
        """Turn Arrow's errors while reading ``path`` into :class:`CorruptShard`."""
        try:
            yield
        except (pyarrow.ArrowException, OSError) as exc:
            raise CorruptShard(path, f"unreadable Parquet ({type(exc).__name__}: {exc})") from None

    # ----------------------------------------------------------------- tables

    def _read(self, path: str, columns: list[str] | None) -> pyarrow.Table:
        self.check_file(path)
        with self._reading(path), self._fs.open(fsutil.join(self._dir, path), "rb") as fh:
            return pq.read_table(fh, columns=columns)

    def _columns(self, path: str, columns: Sequence[str] | None) -> list[str]:
        """``columns`` checked against a shard's schema; by default every column but the image bytes."""
        self.check_file(path)
        with self._reading(path), self._fs.open(fsutil.join(self._dir, path), "rb") as fh:
            names = pq.read_schema(fh).names
        cols = list(columns) if columns is not None else [n for n in names if n != "image"]
        unknown = sorted(set(cols) - set(names))
        if unknown:
            raise InputError(f"unknown column(s) {unknown}; the shards have: {', '.join(names)}")
        return cols

    def metadata(self, split: str | None = None, folds: Iterable[int] | None = None,
                 columns: Sequence[str] | None = None) -> pd.DataFrame:
        """All rows without the image bytes (or only ``columns``), sorted by image name."""
        entries = self._entries("parquet", split, folds)
        if not entries:
            return pd.DataFrame(columns=list(columns or []))
        cols = self._columns(entries[0].path, columns)
        tables = [self._read(e.path, cols) for e in entries]
        frame = pyarrow.concat_tables(tables).to_pandas()
        for col, dtype in (("target", "Int8"), ("fold", "Int8"), ("age_approx", "Float64")):
            if col in frame:
                frame[col] = frame[col].astype(dtype)
        if "image_name" in frame:
            frame = frame.sort_values("image_name", kind="stable").reset_index(drop=True)
        return frame

    def embeddings(self, which: str, *, size: int | None = None, tta: str | None = None):
        """Finished embeddings of this version by backbone (``"lite0"``), key or fingerprint: an
        :class:`melanoma_data.embeddings.Embeddings` (``.pandas()``, ``.numpy()``, ``.to_dask()``, rows aligned
        with :meth:`metadata` by ``image_name``). ``size``/``tta`` pick one when several exist."""
        from melanoma_data.embeddings import open_embeddings

        return open_embeddings(self, which, size=size, tta=tta)

    def quarantine(self) -> pd.DataFrame:
        """The quarantine table (one row per input not written, with stage, reason and detail)."""
        return self._read(shards.QUARANTINE_FILE, None).to_pandas()

    def to_dask(self, split: str | None = None, folds: Iterable[int] | None = None,
                columns: Sequence[str] | None = None, images: bool = False):
        """A Dask DataFrame over the Parquet files (one partition per file; image bytes only if asked)."""
        import dask.dataframe as dd

        urls = self.files("parquet", split, folds)
        for e in self._entries("parquet", split, folds):
            self.check_file(e.path)
        if columns is None and not images:
            columns = self._columns(self._entries("parquet", split, folds)[0].path, None)
        return dd.read_parquet(urls, columns=list(columns) if columns is not None else None)

    # ----------------------------------------------------------------- numpy batches

    def iter_batches(
        self,
        split: str = "train",
        folds: Iterable[int] | None = None,
        batch_size: int = 32,
        *,
        image_size: int | None = None,
        columns: Sequence[str] = ("image_name", "target"),
        shuffle: bool = False,
        seed: int | None = None,
        drop_remainder: bool = False,
        threads: int | None = None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Yield batches as numpy arrays, without TensorFlow.

        Args:
            split: ``train`` or ``test``.
            folds: train folds to read (all when None).
            batch_size: rows per batch.
            image_size: resize images to this side (default: as stored).
            columns: other shard columns to return (integers with nulls become int64 with -1,
                floats float32, strings object arrays).
            shuffle: shuffle the file order and the rows within each file (seeded).
            seed: shuffle seed (fixed order for a given seed).
            drop_remainder: drop the last, smaller batch.
            threads: JPEG decoding threads (default: CPU count); OpenCV releases the GIL.

        Yields:
            ``{"image": uint8 (B, S, S, 3), column: (B,), ...}``.
        """
        if batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {batch_size}")
        entries = self._entries("parquet", split, folds)
        wanted = ["image", *[c for c in columns if c != "image"]]
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(entries)) if shuffle else np.arange(len(entries))
        size = image_size or None
        pool = ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1)

        def pieces() -> Iterator[pyarrow.Table]:
            for i in order:
                path = entries[int(i)].path
                if shuffle:
                    table = self._read(path, wanted)
                    yield table.take(pyarrow.array(rng.permutation(table.num_rows)))
                else:
                    self.check_file(path)
                    with self._reading(path), self._fs.open(fsutil.join(self._dir, path), "rb") as fh:
                        pf = pq.ParquetFile(fh)
                        for g in range(pf.num_row_groups):
                            yield pf.read_row_group(g, columns=wanted)

        def tables() -> Iterator[pyarrow.Table]:
            carry: pyarrow.Table | None = None
            for piece in pieces():
                carry = piece if carry is None else pyarrow.concat_tables([carry, piece])
                while carry.num_rows >= batch_size:
                    yield carry.slice(0, batch_size)
                    carry = carry.slice(batch_size)
            if carry is not None and carry.num_rows and not drop_remainder:
                yield carry

        def start(table: pyarrow.Table):
            images = table.column("image").to_pylist()
            return table, [pool.submit(decode_jpeg, b, size) for b in images]

        try:
            pending = None
            for table in tables():
                nxt = start(table)  # decode the next batch while the caller works on this one
                if pending is not None:
                    yield self._assemble(*pending, columns)
                pending = nxt
            if pending is not None:
                yield self._assemble(*pending, columns)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _assemble(table: pyarrow.Table, futures: list, columns: Sequence[str]) -> dict[str, np.ndarray]:
        batch = {"image": np.stack([f.result() for f in futures])}
        for c in columns:
            if c != "image":
                batch[c] = _column_array(table.column(c))
        return batch

    # ----------------------------------------------------------------- tf.data

    def tf_dataset(
        self,
        split: str = "train",
        folds: Iterable[int] | None = None,
        batch_size: int | None = 32,
        *,
        image_size: int | None = None,
        labelled: bool | None = None,
        with_names: bool = False,
        shuffle: bool = False,
        seed: int | None = None,
        shuffle_buffer: int = 2048,
        repeat: bool = False,
        drop_remainder: bool = True,
        prefetch: bool = True,
    ):
        """A ``tf.data.Dataset`` over the TFRecord files, with static shapes (TPU-ready).

        Elements are ``(images, targets)`` for labelled data (uint8 ``(B, S, S, 3)`` and int32 ``(B,)``)
        or ``(images, image_names)`` for the test split; ``with_names`` adds the names as a third
        element to labelled data. Files are interleaved in parallel; shuffling is seeded.
        ``batch_size=None`` returns single examples (to compose further pipelines).
        """
        with native_logs.filtered():
            import tensorflow as tf

        urls = self.files("tfrecord", split, folds)
        labelled = split == "train" if labelled is None else labelled
        stored = self.image_size
        size = image_size or stored
        features = {"image": tf.io.FixedLenFeature([], tf.string),
                    "image_name": tf.io.FixedLenFeature([], tf.string)}
        if labelled:
            features["target"] = tf.io.FixedLenFeature([], tf.int64)

        def parse(record):
            ex = tf.io.parse_single_example(record, features)
            img = tf.io.decode_jpeg(ex["image"], channels=3)
            img = tf.reshape(img, [stored, stored, 3])
            if size != stored:
                img = tf.cast(tf.clip_by_value(tf.image.resize(img, [size, size], antialias=True), 0, 255), tf.uint8)
            if labelled:
                out = (img, tf.cast(ex["target"], tf.int32))
                return (*out, ex["image_name"]) if with_names else out
            return img, ex["image_name"]

        files = tf.data.Dataset.from_tensor_slices(urls)
        if shuffle:
            files = files.shuffle(len(urls), seed=seed)
        ds = files.interleave(tf.data.TFRecordDataset, cycle_length=min(len(urls), 8),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=not shuffle or seed is not None)
        if shuffle:
            ds = ds.shuffle(shuffle_buffer, seed=seed)
        if repeat:
            ds = ds.repeat()
        ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=seed is not None or not shuffle)
        if batch_size is not None:
            ds = ds.batch(batch_size, drop_remainder=drop_remainder)
        return ds.prefetch(tf.data.AUTOTUNE) if prefetch else ds

    def parse_tfrecord_file(self, url: str) -> list[dict[str, Any]]:
        """Decode one TFRecord file in pure Python (CRCs checked): ``[{feature: value}]``."""
        fs, path = fsutil.resolve(url)
        try:
            examples = tfrecord.read_file(fs.cat_file(path), name=url)
        except tfrecord.CorruptRecord as exc:
            raise InputError(str(exc)) from None
        return [{k: (v[0] if len(v) == 1 else v) for k, v in ex.items()} for ex in examples]


def _footer_values(meta: pq.FileMetaData, col: int) -> set[Any] | None:
    """The values of column ``col`` by its footer statistics, when every row group has one value (else None)."""
    seen: set[Any] = set()
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(col).statistics
        if stats is None or not stats.has_min_max or stats.min != stats.max:
            return None
        value = stats.min
        seen.add(value.decode() if isinstance(value, bytes) else value)
    return seen or None


def open_dataset(path_or_url: str | os.PathLike, verify: str = "auto") -> Dataset:
    """Open a finished dataset version (a folder with ``manifest.json``; local path or fsspec URL).

    Args:
        path_or_url: the version directory.
        verify: ``auto`` checks each Parquet file cheaply before it is first read (size, rows, schema,
            split/fold) and hashes it when it changed after the manifest; ``hash`` always hashes too.

    Raises:
        InputError: the folder does not exist, is unfinished, or its manifest is unreadable.
    """
    url = str(path_or_url)
    fs, vdir = fsutil.resolve(url)
    fsutil.forget_listings(fs)  # a listing cached while the version was being written would hide its files
    if not fs.exists(vdir):
        raise InputError(f"{url}: no such dataset version")
    path = fsutil.join(vdir, manifest.MANIFEST_FILE)
    if not fs.exists(path):
        if fs.isdir(vdir) and any(fs.exists(fsutil.join(p, manifest.MANIFEST_FILE)) for p in fs.ls(vdir)
                                  if fs.isdir(p)):
            raise InputError(f"{url} is a dataset folder with several versions; pass one of them "
                             f"(see `python cli.py datasets list`)")
        raise InputError(f"{url}: no manifest.json — not a dataset version, or an unfinished run "
                         "(run the same preprocess command again)")
    try:
        doc = json.loads(fs.cat_file(path))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{url}: manifest.json is corrupt ({exc})") from None
    if not isinstance(doc, dict) or "shards" not in doc or "counts" not in doc:
        fmt = doc.get("format") if isinstance(doc, dict) else None
        raise InputError(f"{url}: manifest.json lacks shards/counts (format {fmt!r})")
    doc = Manifest(doc)
    listed = [(f"{key}[{i}].path", e.path) for key, files in (("shards", doc.shards), ("tfrecords", doc.tfrecords))
              for i, e in enumerate(files)]
    listed.append(("quarantine.path", doc.quarantine.path))
    for what, rel in listed:
        try:
            fsutil.within(vdir, rel, what)
        except fsutil.UnsafePath as exc:
            raise InputError(f"{url}: manifest.json {exc}") from None
    return Dataset(fsutil.to_url(fs, vdir), doc, verify=verify)


__all__ = ["VERIFY_MODES", "CorruptShard", "Dataset", "decode_jpeg", "open_dataset"]
