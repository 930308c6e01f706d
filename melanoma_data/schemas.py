"""Table contracts: the input metadata schema and the Parquet shard schema (pandera + pyarrow)."""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
import pyarrow

SEXES = ["female", "male"]
SITES_2020 = ["head/neck", "lower extremity", "oral/genital", "palms/soles", "torso", "upper extremity"]
SPLITS = ["test", "train"]

METADATA_TEXT_COLUMNS = [
    "image_name",
    "patient_id",
    "sex",
    "anatom_site_general_challenge",
    "diagnosis",
    "benign_malignant",
]
METADATA_COLUMNS = [
    "image_name",
    "patient_id",
    "sex",
    "age_approx",
    "anatom_site_general_challenge",
    "diagnosis",
    "benign_malignant",
    "target",
    "split",
    "source",
]

METADATA_SCHEMA = pa.DataFrameSchema(
    {
        "image_name": pa.Column(str, nullable=False),
        "patient_id": pa.Column(str, nullable=True),
        "sex": pa.Column(str, pa.Check.isin(SEXES), nullable=True),
        "age_approx": pa.Column("Float64", pa.Check.in_range(0, 120), nullable=True),
        "anatom_site_general_challenge": pa.Column(str, pa.Check.isin(SITES_2020), nullable=True),
        "diagnosis": pa.Column(str, nullable=True),
        "benign_malignant": pa.Column(str, pa.Check.isin(["benign", "malignant"]), nullable=True),
        "target": pa.Column("Int8", pa.Check.isin([0, 1]), nullable=True),
        "split": pa.Column(str, pa.Check.isin(SPLITS)),
        "source": pa.Column(str),
    },
    strict=False,
    name="input metadata",
)


def metadata_failures(frame: pd.DataFrame) -> dict[int, list[str]]:
    """Validate input metadata lazily and return ``{row index: [readable problem, ...]}``."""
    if frame.empty:
        return {}
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

#: Measurement columns filled by the ops (name → pyarrow type); all nullable.
MEASUREMENT_FIELDS: list[tuple[str, pyarrow.DataType]] = [
    ("vignette_detected", pyarrow.bool_()),
    ("vignette_radius_frac", pyarrow.float64()),
    ("vignette_cx", pyarrow.float64()),
    ("vignette_cy", pyarrow.float64()),
    ("vignette_confidence", pyarrow.float64()),
    ("crop_x0", pyarrow.float64()),
    ("crop_y0", pyarrow.float64()),
    ("crop_x1", pyarrow.float64()),
    ("crop_y1", pyarrow.float64()),
    ("hair_fraction", pyarrow.float64()),
    ("marks_fraction", pyarrow.float64()),
    ("colour_gain_r", pyarrow.float64()),
    ("colour_gain_g", pyarrow.float64()),
    ("colour_gain_b", pyarrow.float64()),
    ("brightness_before", pyarrow.float64()),
    ("brightness_after", pyarrow.float64()),
    ("phash", pyarrow.string()),
]

SHARD_FIELDS: list[tuple[str, pyarrow.DataType, bool]] = [
    # metadata (ISIC 2020 names) + provenance
    ("image_name", pyarrow.string(), False),
    ("patient_id", pyarrow.string(), True),
    ("sex", pyarrow.string(), True),
    ("age_approx", pyarrow.float64(), True),
    ("anatom_site_general_challenge", pyarrow.string(), True),
    ("diagnosis", pyarrow.string(), True),
    ("benign_malignant", pyarrow.string(), True),
    ("target", pyarrow.int8(), True),
    ("split", pyarrow.string(), False),
    ("source", pyarrow.string(), False),
    ("fold", pyarrow.int8(), True),
    ("anatom_site_detailed", pyarrow.string(), True),
    ("lesion_id", pyarrow.string(), True),
    ("rel_path", pyarrow.string(), False),
    # source facts
    ("orig_width", pyarrow.int32(), False),
    ("orig_height", pyarrow.int32(), False),
    ("orig_format", pyarrow.string(), False),
    ("orig_mode", pyarrow.string(), False),
    ("file_bytes", pyarrow.int64(), False),
    ("file_sha256", pyarrow.string(), False),
    # what processing did
    ("exif_orientation", pyarrow.int8(), False),
    ("orientation_applied", pyarrow.string(), False),
    ("portrait_rotated", pyarrow.bool_(), False),
    ("decode_reduction", pyarrow.int8(), False),
    ("width", pyarrow.int32(), False),
    ("height", pyarrow.int32(), False),
]

#: Columns filled once the whole version is known (near-duplicates, files and folds, patient context).
FINAL_FIELDS: list[tuple[str, pyarrow.DataType, bool]] = [
    ("duplicate_group", pyarrow.string(), False),
    ("duplicate_group_size", pyarrow.int32(), False),
    ("patient_image_count", pyarrow.int32(), False),
]

IMAGE_FIELD = ("image", pyarrow.binary(), False)


def shard_arrow_schema(final: bool = True) -> pyarrow.Schema:
    """The pyarrow schema of a Parquet shard (image bytes last); ``final=False``: a staged partition."""
    fields = [pyarrow.field(n, t, nullable=nl) for n, t, nl in SHARD_FIELDS]
    fields += [pyarrow.field(n, t, nullable=True) for n, t in MEASUREMENT_FIELDS]
    if final:
        fields += [pyarrow.field(n, t, nullable=nl) for n, t, nl in FINAL_FIELDS]
    fields.append(pyarrow.field(IMAGE_FIELD[0], IMAGE_FIELD[1], nullable=False))
    return pyarrow.schema(fields)


PANDAS_DTYPES = {
    "age_approx": "Float64",
    "target": "Int8",
    "fold": "Int8",
    "orig_width": "int32",
    "orig_height": "int32",
    "file_bytes": "int64",
    "exif_orientation": "int8",
    "decode_reduction": "int8",
    "width": "int32",
    "height": "int32",
    "portrait_rotated": "bool",
    "vignette_detected": "boolean",
    "vignette_radius_frac": "Float64",
    "vignette_cx": "Float64",
    "vignette_cy": "Float64",
    "duplicate_group_size": "int32",
    "patient_image_count": "int32",
}


for _name, _type in MEASUREMENT_FIELDS:
    if pyarrow.types.is_float64(_type):
        PANDAS_DTYPES.setdefault(_name, "float64")


def _is_jpeg(series: pd.Series) -> pd.Series:
    return series.map(lambda b: isinstance(b, bytes) and len(b) > 4 and b[:2] == b"\xff\xd8")


def shard_schema(size: int, final: bool = True) -> pa.DataFrameSchema:
    """pandera schema of a shard (output images are ``size``×``size`` JPEGs).

    ``final=False`` checks a staged partition, before near-duplicates and folds are known.
    """
    text = {"nullable": True}
    extra = {}
    if final:
        extra = {
            "duplicate_group": pa.Column(str),
            "duplicate_group_size": pa.Column("int32", pa.Check.ge(1)),
            "patient_image_count": pa.Column("int32", pa.Check.ge(1)),
        }
    return pa.DataFrameSchema(
        {
            **extra,
            "image_name": pa.Column(str, unique=True),
            "patient_id": pa.Column(str, **text),
            "sex": pa.Column(str, pa.Check.isin(SEXES), **text),
            "age_approx": pa.Column("Float64", pa.Check.in_range(0, 120), **text),
            "anatom_site_general_challenge": pa.Column(str, pa.Check.isin(SITES_2020), **text),
            "diagnosis": pa.Column(str, **text),
            "benign_malignant": pa.Column(str, pa.Check.isin(["benign", "malignant"]), **text),
            "target": pa.Column("Int8", pa.Check.isin([0, 1]), **text),
            "split": pa.Column(str, pa.Check.isin(SPLITS)),
            "source": pa.Column(str),
            "fold": pa.Column("Int8", pa.Check.ge(0), **text),
            "orig_width": pa.Column("int32", pa.Check.gt(0)),
            "orig_height": pa.Column("int32", pa.Check.gt(0)),
            "file_bytes": pa.Column("int64", pa.Check.gt(0)),
            "file_sha256": pa.Column(str, pa.Check.str_matches(r"^[0-9a-f]{64}$")),
            "exif_orientation": pa.Column("int8", pa.Check.in_range(1, 8)),
            "decode_reduction": pa.Column("int8", pa.Check.isin([1, 2, 4, 8])),
            "width": pa.Column("int32", pa.Check.eq(size)),
            "height": pa.Column("int32", pa.Check.eq(size)),
            "vignette_detected": pa.Column("boolean"),
            "vignette_radius_frac": pa.Column("Float64", pa.Check.in_range(0.1, 2.0), **text),
            "hair_fraction": pa.Column(float, pa.Check.in_range(0.0, 1.0)),
            "colour_gain_r": pa.Column(float, pa.Check.gt(0)),
            "colour_gain_g": pa.Column(float, pa.Check.gt(0)),
            "colour_gain_b": pa.Column(float, pa.Check.gt(0)),
            "brightness_before": pa.Column(float, pa.Check.in_range(0.0, 255.0)),
            "brightness_after": pa.Column(float, pa.Check.in_range(0.0, 255.0)),
            "phash": pa.Column(str, pa.Check.str_matches(r"^[0-9a-f]+$"), **text),
            "image": pa.Column(object, pa.Check(_is_jpeg, error="image must be non-empty JPEG bytes")),
        },
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
