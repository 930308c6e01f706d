"""Table contracts: the input metadata schema and the shard schemas, both built from :mod:`columns`."""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
import pyarrow

from melanoma_data import columns
from melanoma_data.columns import METADATA_COLUMNS, METADATA_TEXT_COLUMNS, SEXES, SITES_2020, SPLITS

__all__ = ["METADATA_COLUMNS", "METADATA_TEXT_COLUMNS", "SEXES", "SITES_2020", "SPLITS", "METADATA_SCHEMA",
           "QUARANTINE_SCHEMA", "metadata_failures", "shard_arrow_schema", "shard_schema"]

def _pandera_dtype(col: columns.Column) -> object:
    return {"str": str, "object": object, "float64": float}.get(col.pandas, col.pandas)


#: The input metadata after normalisation: every metadata column the ingest step produces, with its type,
#: nullability and checks from the column table.
METADATA_SCHEMA = pa.DataFrameSchema(
    {col.name: pa.Column(_pandera_dtype(col), col.check(0) if col.check else None, nullable=col.nullable)
     for col in columns.COLUMNS if col.ingest},
    strict=False,
    name="input metadata",
)


def metadata_failures(frame: pd.DataFrame, chunk: int = 50_000) -> dict[int, list[str]]:
    """Validate input metadata lazily and return ``{row index: [readable problem, ...]}``.

    Large tables are checked ``chunk`` rows at a time (pandera's working copies stay small).
    """
    if len(frame) > chunk:
        out: dict[int, list[str]] = {}
        for start in range(0, len(frame), chunk):
            out.update(metadata_failures(frame.iloc[start : start + chunk], chunk))
        return out
    if frame.empty:
        return {}
    frame = frame[[c for c in METADATA_SCHEMA.columns if c in frame.columns]]
    try:
        METADATA_SCHEMA.validate(frame, lazy=True)
    except pa.errors.SchemaErrors as exc:
        out: dict[int, list[str]] = {}
        for _, f in exc.failure_cases.iterrows():
            idx = f["index"]
            if idx is None or pd.isna(idx):
                raise  # a column-level problem (missing column, dtype): a bug in ingest, not bad data
            check = str(f["check"])
            if check.startswith("isin("):
                allowed = check[len("isin(") : -1]
                msg = f"{f['column']}={f['failure_case']!r} not in {allowed}"
            else:
                msg = f"{f['column']}={f['failure_case']!r} fails {check}"
            out.setdefault(int(idx), []).append(msg)
        return out
    return {}


# ------------------------------------------------------------------------------ shard contract


def shard_arrow_schema(final: bool = True, extras: columns.Extras = ()) -> pyarrow.Schema:
    """The pyarrow schema of a Parquet shard (image bytes last); ``final=False``: a staged partition."""
    return columns.arrow_schema(extras, final)


def shard_schema(size: int, final: bool = True, extras: columns.Extras = ()) -> pa.DataFrameSchema:
    """pandera schema of a shard (output images are ``size``×``size`` JPEGs), from the column table.

    ``final=False`` checks a staged partition, before near-duplicates and folds are known. Extra
    (passthrough) columns are checked for their recorded type.
    """
    spec = {}
    for col in columns.table(extras, final):
        unique = col.name == "image_name"
        spec[col.name] = pa.Column(_pandera_dtype(col), col.check(size) if col.check else None, nullable=col.nullable,
                                   unique=unique)
    return pa.DataFrameSchema(
        spec,
        checks=[pa.Check(lambda df: (df["split"] != "train") | df["fold"].notna(),
                         error="train rows must have a fold")] if final else None,
        strict=False,
        name="shard" if final else "staged partition",
    )


QUARANTINE_SCHEMA = pa.DataFrameSchema(
    {
        "image_name": pa.Column(str),
        "source": pa.Column(str),
        "path": pa.Column(str),
        "stage": pa.Column(str, pa.Check.str_length(min_value=1)),
        "reason": pa.Column(str, pa.Check.str_length(min_value=1)),
        "detail": pa.Column(str),
    },
    strict=True,
    name="quarantine",
)
