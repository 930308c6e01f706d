"""Shard writing (validated, deterministic, atomic): staged partitions, scatter by file, final files.

A version is written in three steps, each a set of independent tasks that commit by writing a small
summary file last (so an interrupted run resumes where it stopped):

1. :func:`write_partition` — processed rows of one input partition → ``_parts/rows-NNNNN.parquet``.
2. :func:`scatter_partition` — a staged partition, with its rows' file/fold/duplicate columns filled
   in, split by output file → ``_parts/scatter/<file>/from-NNNNN.parquet``.
3. :func:`gather_file` — one output file's pieces → ``parquet/<file>.parquet`` (rows sorted by name)
   and ``tfrecord/<file>-<count>.tfrec``.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
from collections.abc import Iterator
from typing import Any

import pandas as pd
import pandera.pandas as pa
import pyarrow
import pyarrow.compute as pc
import pyarrow.parquet as pq

from melanoma_data import columns, fsutil, schemas
from melanoma_data.ingest import QUARANTINE_COLUMNS

PARQUET_DIR = "parquet"
TFRECORD_DIR = "tfrecord"
PARTS_DIR = "_parts"
QUARANTINE_FILE = "quarantine.parquet"
ROW_GROUP = 256  # rows per Parquet row group in final files: readers stream without loading a file
GATHER_BLOCK = 2 * ROW_GROUP  # rows validated and written at a time while gathering: a worker holds this many


def stage_name(index: int) -> str:
    """Path (below the version) of staged partition ``index``."""
    return f"{PARTS_DIR}/rows-{index:05d}.parquet"


def rows_to_frame(rows: list[dict[str, Any]] | pd.DataFrame, final: bool = False,
                  extras: columns.Extras = ()) -> pd.DataFrame:
    """Shard rows (dicts or a frame) → a DataFrame with the column table's columns, order and dtypes."""
    table = columns.table(extras, final)
    frame = pd.DataFrame(rows, columns=[c.name for c in table])
    for col in table:
        if col.is_string:
            frame[col.name] = frame[col.name].astype("str").where(frame[col.name].notna(), None)
        elif col.pandas != "object":
            frame[col.name] = frame[col.name].astype(col.pandas)
    return frame


def validate_rows(frame: pd.DataFrame, size: int, extras: columns.Extras = ()) -> tuple[pd.DataFrame, dict[int, str]]:
    """Validate a partition; returns the valid rows and ``{row index: problems}`` for the others."""
    try:
        schemas.shard_schema(size, final=False, extras=extras).validate(frame, lazy=True)
        return frame, {}
    except pa.errors.SchemaErrors as exc:
        bad: dict[int, list[str]] = {}
        for _, f in exc.failure_cases.iterrows():
            idx = f["index"]
            if idx is None or pd.isna(idx):
                raise
            bad.setdefault(int(idx), []).append(f"{f['column']}={f['failure_case']!r} fails {f['check']}")
        return frame.drop(index=list(bad)), {i: "; ".join(m) for i, m in bad.items()}


def parquet_bytes(frame: pd.DataFrame, schema: pyarrow.Schema) -> bytes:
    """Serialise deterministically: same frame → same bytes (no timestamps, fixed codecs)."""
    table = pyarrow.Table.from_pandas(frame, schema=schema, preserve_index=False)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression=_compression(schema), row_group_size=max(1, len(frame)))
    return buf.getvalue()


def _compression(schema: pyarrow.Schema) -> dict[str, str]:
    compression = {name: "zstd" for name in schema.names}
    if "image" in compression:
        compression["image"] = "none"  # JPEG bytes do not compress; don't pay for trying
    return compression


def quarantine_frame(rows: list[dict[str, str]] | pd.DataFrame) -> pd.DataFrame:
    """Quarantine rows (dicts or a frame) → DataFrame with the fixed columns and string dtype."""
    frame = pd.DataFrame(rows, columns=QUARANTINE_COLUMNS)
    return frame.fillna("").astype(str)


def quarantine_arrow_schema() -> pyarrow.Schema:
    """Arrow schema of the quarantine table."""
    return pyarrow.schema([pyarrow.field(c, pyarrow.string(), nullable=False) for c in QUARANTINE_COLUMNS])


def write_partition(
    fs,
    version_dir: str,
    index: int,
    rows: list[dict[str, Any]],
    quarantine: list[dict[str, str]],
    size: int,
    extras: columns.Extras = (),
) -> dict[str, Any]:
    """Validate and atomically write one partition; the summary file written last commits it.

    Rows that fail the shard schema are moved to quarantine (stage ``validate``) rather than written.

    Returns:
        The partition summary (small): staged file, row count, quarantine count.
    """
    frame = rows_to_frame(rows, extras=extras)
    frame, problems = validate_rows(frame, size, extras)
    for i, detail in problems.items():
        r = rows[i]
        quarantine.append(
            {"image_name": r["image_name"], "source": r.get("source") or "", "path": r.get("rel_path") or "",
             "stage": "validate", "reason": "invalid_output", "detail": detail}
        )
    frame = frame.reset_index(drop=True)
    summary: dict[str, Any] = {"index": index, "rows": len(frame), "quarantined": len(quarantine)}
    if len(frame):
        data = parquet_bytes(frame, schemas.shard_arrow_schema(final=False, extras=extras))
        path = stage_name(index)
        fsutil.atomic_write(fs, fsutil.join(version_dir, path), data)
        summary.update(path=path, bytes=len(data))
    qframe = quarantine_frame(quarantine)
    schemas.QUARANTINE_SCHEMA.validate(qframe)
    fsutil.atomic_write(
        fs, fsutil.join(version_dir, PARTS_DIR, f"quarantine-{index:05d}.parquet"),
        parquet_bytes(qframe, quarantine_arrow_schema()),
    )
    fsutil.atomic_write(
        fs, fsutil.join(version_dir, PARTS_DIR, f"summary-{index:05d}.json"),
        json.dumps(summary, sort_keys=True).encode(),
    )
    return summary


def _read_marker(fs, path: str) -> dict[str, Any] | None:
    """A commit marker's JSON, or None when the step has not committed yet."""
    data = fsutil.cat_or_none(fs, path)
    return None if data is None else json.loads(data)


def _read_table(fs, path: str, columns: list[str] | None = None) -> pyarrow.Table:
    """One Parquet file (any fsspec filesystem) as Arrow."""
    with fs.open(path, "rb") as fh:
        return pq.read_table(fh, columns=columns)


def _read_frame(fs, path: str, columns: list[str] | None = None) -> pd.DataFrame:
    """One Parquet file (any fsspec filesystem) as pandas."""
    return _read_table(fs, path, columns).to_pandas()


def read_summary(fs, version_dir: str, index: int) -> dict[str, Any] | None:
    """The committed summary of partition ``index``, or None when it has not been committed."""
    return _read_marker(fs, fsutil.join(version_dir, PARTS_DIR, f"summary-{index:05d}.json"))


def read_part_quarantine(fs, version_dir: str, index: int) -> pd.DataFrame:
    """Quarantine rows of one committed partition."""
    return _read_frame(fs, fsutil.join(version_dir, PARTS_DIR, f"quarantine-{index:05d}.parquet"))


# ------------------------------------------------------------------------------ finalisation

#: Columns the client reads from staged partitions to plan files, folds and near-duplicates: the metadata
#: columns of the ingest step that the TFRecords encode (their codes are built from the kept rows) or that
#: identify rows (patients, lesions, splits, sources), then the facts the near-duplicate search compares.
PLAN_INPUT_COLUMNS = [
    *(c.name for c in columns.COLUMNS if c.ingest and (c.tfrecord or c.models == "id")),
    "phash", "file_sha256", "orig_width", "orig_height", "rel_path",
]
#: Columns of the plan sent to the scatter tasks (one row per staged image).
PLAN_COLUMNS = ["file", "fold", "duplicate_group", "duplicate_group_size", "patient_image_count", "keep"]


def read_stage_columns(fs, version_dir: str, index: int, columns: list[str]) -> pd.DataFrame:
    """Some columns of a staged partition (empty frame when it wrote no rows)."""
    path = fsutil.join(version_dir, stage_name(index))
    if not fs.exists(path):
        return pd.DataFrame(columns=columns)
    return _read_frame(fs, path, columns)


def scatter_marker(index: int) -> str:
    """Commit marker of the scatter step of partition ``index``."""
    return f"{PARTS_DIR}/scatter-{index:05d}.json"


def scatter_partition(fs, version_dir: str, index: int, plan: pd.DataFrame,
                      extras: columns.Extras = ()) -> dict[str, Any]:
    """Fill a staged partition's final columns from ``plan`` and split its rows by output file.

    Args:
        fs: filesystem of the version.
        version_dir: the version directory.
        index: staged partition index.
        plan: indexed by image name, columns :data:`PLAN_COLUMNS`; rows with ``keep`` False are
            dropped (near-duplicates removed by configuration; they are quarantined by the caller).

    Returns:
        ``{"index": i, "files": {file: rows}}``, also written as the commit marker.
    """
    path = fsutil.join(version_dir, stage_name(index))
    files: dict[str, int] = {}
    if fs.exists(path):
        frame = _read_frame(fs, path)
        p = plan.reindex(frame["image_name"])
        if p["file"].isna().any():
            missing = frame["image_name"][p["file"].isna().to_numpy()].tolist()
            raise RuntimeError(f"no file/fold planned for {missing[:5]} (bug)")
        keep = p["keep"].to_numpy(dtype=bool)
        frame = frame[keep].reset_index(drop=True)
        p = p[keep]
        frame["fold"] = pd.array(p["fold"].to_numpy(), dtype="Int8")
        for col in ("duplicate_group", "duplicate_group_size", "patient_image_count"):
            frame[col] = p[col].to_numpy()
        frame = rows_to_frame(frame, final=True, extras=extras) if len(frame) else frame
        schema = schemas.shard_arrow_schema(final=True, extras=extras)
        for key, piece in frame.groupby(p["file"].to_numpy(), sort=True):
            data = parquet_bytes(piece.reset_index(drop=True), schema)
            fsutil.atomic_write(fs, fsutil.join(version_dir, PARTS_DIR, "scatter", str(key),
                                                f"from-{index:05d}.parquet"), data)
            files[str(key)] = len(piece)
    summary = {"index": index, "files": files}
    fsutil.atomic_write(fs, fsutil.join(version_dir, scatter_marker(index)), json.dumps(summary).encode())
    return summary


def read_scatter(fs, version_dir: str, index: int) -> dict[str, Any] | None:
    """The scatter summary of partition ``index``, or None when not done yet."""
    return _read_marker(fs, fsutil.join(version_dir, scatter_marker(index)))


def file_marker(key: str) -> str:
    """Commit marker of the gather step of output file ``key``."""
    return f"{PARTS_DIR}/file-{key}.json"


def gather_file(
    fs,
    version_dir: str,
    key: str,
    sources: list[int],
    size: int,
    encodings: dict[str, Any] | None,
    extras: columns.Extras = (),
) -> dict[str, Any]:
    """Write output file ``key`` (e.g. ``train03``) from its scattered pieces, streaming.

    Writes ``parquet/<key>.parquet`` (rows sorted by image name, validated against the final shard
    schema block by block) and, when ``encodings`` is given, ``tfrecord/<key>-<count>.tfrec`` with
    the same rows. Only the names are read up front (the row count names the TFRecord file); rows
    come piece by piece, :data:`GATHER_BLOCK` at a time, are validated and appended to both files
    as they come (Parquet row groups of :data:`ROW_GROUP` rows): memory is a block, not a file.

    Returns:
        The file summary (paths, rows, sha256, bytes, melanoma count, patients), also written as
        the commit marker.
    """
    from melanoma_data import tfrecord

    paths = [fsutil.join(version_dir, PARTS_DIR, "scatter", key, f"from-{i:05d}.parquet") for i in sorted(sources)]
    names = pyarrow.concat_arrays([_read_table(fs, p, ["image_name"]).column("image_name").combine_chunks()
                                   for p in paths])
    n = len(names)
    blocks = _blocks_in_order(fs, paths, bool(pc.all(pc.less(names[:-1], names[1:])).as_py()) if n > 1 else True)
    first = next(blocks)
    split = str(first.column("split")[0].as_py())
    index = int(key[len(split):])
    labelled = split == "train"
    schema = schemas.shard_arrow_schema(final=True, extras=extras)
    check = schemas.shard_schema(size, final=True, extras=extras)
    ppath = fsutil.join(PARQUET_DIR, f"{key}.parquet")
    tpath = fsutil.join(TFRECORD_DIR, tfrecord.file_name(split, index, n)) if encodings is not None else None
    melanoma, patients, fold = 0, set(), None
    with contextlib.ExitStack() as stack:
        pout = stack.enter_context(fsutil.atomic_open(fs, fsutil.join(version_dir, ppath)))
        tout = stack.enter_context(fsutil.atomic_open(fs, fsutil.join(version_dir, tpath))) if tpath else None
        writer = stack.enter_context(pq.ParquetWriter(pout, schema, compression=_compression(schema)))
        start = 0
        for block in itertools.chain([first], blocks):
            frame = rows_to_frame(block.to_pandas(), final=True, extras=extras)
            frame.index = range(start, start + len(frame))
            start += len(frame)
            check.validate(frame, lazy=True)
            writer.write_table(pyarrow.Table.from_pandas(frame, schema=schema, preserve_index=False),
                               row_group_size=ROW_GROUP)
            if tout is not None:
                tout.write(tfrecord.tfrecord_bytes(frame.to_dict(orient="records"), encodings, labelled))
            melanoma += int(frame["target"].fillna(0).astype(int).sum()) if labelled else 0
            patients.update(frame["patient_id"].dropna().tolist())
            if fold is None and len(frame):
                fold = frame["fold"].iloc[0]
        writer.close()
    summary: dict[str, Any] = {
        "file": key,
        "split": split,
        "file_index": index,
        "fold": None if fold is None or pd.isna(fold) else int(fold),
        "rows": n,
        "melanoma": melanoma if labelled else None,
        "patients": len(patients),
        "parquet": {"path": ppath, "sha256": pout.sha256, "bytes": pout.bytes},
        "tfrecord": {"path": tpath, "sha256": tout.sha256, "bytes": tout.bytes} if tout is not None else None,
    }
    fsutil.atomic_write(fs, fsutil.join(version_dir, file_marker(key)), json.dumps(summary).encode())
    return summary


def _blocks_in_order(fs, paths: list[str], ordered: bool) -> Iterator[pyarrow.Table]:
    """An output file's rows in name order, :data:`GATHER_BLOCK` at a time.

    Staged partitions are consecutive slices of the inputs sorted by name, so their pieces of one
    file, read in partition order, are already in name order (``ordered``): they are streamed one
    piece at a time. Otherwise (never in a run of this code; kept for safety) the pieces are read
    once and taken in sorted order.
    """
    if ordered:
        buf: list[pyarrow.Table] = []
        held = 0
        for path in paths:
            piece = _read_table(fs, path)
            buf.append(piece)
            held += piece.num_rows
            while held >= GATHER_BLOCK:
                joined = pyarrow.concat_tables(buf)
                yield joined.slice(0, GATHER_BLOCK)
                rest = joined.slice(GATHER_BLOCK)
                buf, held = [rest], rest.num_rows
        if held or not paths:
            yield pyarrow.concat_tables(buf) if buf else pyarrow.table({})
        return
    table = pyarrow.concat_tables([_read_table(fs, p) for p in paths]).combine_chunks()
    order = pc.sort_indices(table, sort_keys=[("image_name", "ascending")])
    for start in range(0, table.num_rows, GATHER_BLOCK):
        yield table.take(order[start : start + GATHER_BLOCK])


def read_file_summary(fs, version_dir: str, key: str) -> dict[str, Any] | None:
    """The gather summary of output file ``key``, or None when not written yet."""
    return _read_marker(fs, fsutil.join(version_dir, file_marker(key)))
