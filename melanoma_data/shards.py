"""Parquet shard writing (validated, deterministic, atomic) and reading back."""

from __future__ import annotations

import hashlib
import io
import json
from typing import Any

import pandas as pd
import pandera.pandas as pa
import pyarrow
import pyarrow.parquet as pq

from melanoma_data import fsutil, schemas
from melanoma_data.ingest import QUARANTINE_COLUMNS

PARQUET_DIR = "parquet"
PARTS_DIR = "_parts"
QUARANTINE_FILE = "quarantine.parquet"


def part_name(index: int) -> str:
    """File name of partition ``index``."""
    return f"part-{index:05d}.parquet"


def rows_to_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Shard rows → a DataFrame with the contract's columns, order and dtypes."""
    schema = schemas.shard_arrow_schema()
    frame = pd.DataFrame(rows, columns=schema.names)
    for col, dtype in schemas.PANDAS_DTYPES.items():
        frame[col] = frame[col].astype(dtype)
    for field in schema:
        if pyarrow.types.is_string(field.type):
            frame[field.name] = frame[field.name].astype("str").where(frame[field.name].notna(), None)
    return frame


def validate_rows(frame: pd.DataFrame, size: int) -> tuple[pd.DataFrame, dict[int, str]]:
    """Validate a partition; returns the valid rows and ``{row index: problems}`` for the others."""
    try:
        schemas.shard_schema(size).validate(frame, lazy=True)
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
    compression = {name: "zstd" for name in schema.names}
    if "image" in compression:
        compression["image"] = "none"  # JPEG bytes do not compress; don't pay for trying
    buf = io.BytesIO()
    pq.write_table(table, buf, compression=compression, row_group_size=max(1, len(frame)))
    return buf.getvalue()


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
) -> dict[str, Any]:
    """Validate and atomically write one partition; the summary file written last commits it.

    Rows that fail the shard schema are moved to quarantine (stage ``validate``) rather than written.

    Returns:
        The partition summary (small): file name, row count, sha256, byte size, quarantine count.
    """
    frame = rows_to_frame(rows)
    frame, problems = validate_rows(frame, size)
    for i, detail in problems.items():
        r = rows[i]
        quarantine.append(
            {"image_name": r["image_name"], "source": r.get("source") or "", "path": r.get("rel_path") or "",
             "stage": "validate", "reason": "invalid_output", "detail": detail}
        )
    frame = frame.reset_index(drop=True)
    summary: dict[str, Any] = {"index": index, "rows": len(frame), "quarantined": len(quarantine)}
    if len(frame):
        data = parquet_bytes(frame, schemas.shard_arrow_schema())
        path = fsutil.join(PARQUET_DIR, part_name(index))
        fsutil.atomic_write(fs, fsutil.join(version_dir, path), data)
        summary.update(path=path, sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
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


def read_summary(fs, version_dir: str, index: int) -> dict[str, Any] | None:
    """The committed summary of partition ``index``, or None when it has not been committed."""
    path = fsutil.join(version_dir, PARTS_DIR, f"summary-{index:05d}.json")
    if not fs.exists(path):
        return None
    return json.loads(fs.cat_file(path))


def read_part_quarantine(fs, version_dir: str, index: int) -> pd.DataFrame:
    """Quarantine rows of one committed partition."""
    data = fs.cat_file(fsutil.join(version_dir, PARTS_DIR, f"quarantine-{index:05d}.parquet"))
    return pq.read_table(io.BytesIO(data)).to_pandas()
