"""The shard columns, declared once: name, types, schema check, TFRecord encoding, and model use.

Every column a Parquet shard holds is a :class:`Column` in :data:`COLUMNS` (the toolkit's own) or an
:class:`ExtraColumn` (a metadata column of the input that the toolkit does not know, carried through
with an inferred type). The pipeline, the pandera schemas, the Parquet writer, the TFRecord writer,
the manifest and the model feature builders all read this table, so adding a column is one edit.

``models`` says what a model may do with a column:

* ``feature`` — a model may use it as an input;
* ``id`` — identifies or locates a row (names, paths, hashes, groups): never an input;
* ``label`` — the target or what carries it (diagnosis, malignancy, the 2024 ``iddx_*`` columns,
  tumour thickness): "models may not use";
* ``train_only`` — present in the training metadata but not in the test metadata (a model that
  used it could not score the test split): "models may not use".

``label`` and ``train_only`` columns are refused by the plugins unless a user allows them by name.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow

#: Bump when the set of columns or their meaning changes (it is part of every version's fingerprint).
VERSION = "4"  # 3: artefact columns; 4: the newer datasets' columns (views, concepts, skin tone, 2025 class)

SEXES = ["female", "male"]
SITES_2020 = ["head/neck", "lower extremity", "oral/genital", "palms/soles", "torso", "upper extremity"]
SPLITS = ["test", "train"]
#: The official split of a dataset that publishes one with a validation part (Derm7pt), kept as published.
OFFICIAL_SPLITS = ["test", "train", "valid"]
#: MILK10k's seven MONET concept scores (automatic, CLIP-based: Kim et al., Nat. Med. 2024), as published.
MONET_COLUMNS = ("MONET_ulceration_crust", "MONET_hair", "MONET_vasculature_vessels", "MONET_erythema",
                 "MONET_pigmented", "MONET_gel_water_drop_fluid_dermoscopy_liquid",
                 "MONET_skin_markings_pen_ink_purple_pen")
#: Derm7pt's seven-point checklist criteria (clinician labels, Argenziano et al. 1998), as published.
SEVEN_POINT_COLUMNS = ("pigment_network", "streaks", "pigmentation", "regression_structures", "dots_and_globules",
                       "blue_whitish_veil", "vascular_structures")
#: Model uses that the plugins refuse unless a user allows the column by name.
FORBIDDEN_USES = ("label", "train_only")

#: Check factories: ``size`` (the output side) → pandera checks. Built lazily so this module does not
#: import pandera (the Dask workers do not need it until they validate).
CheckFactory = Callable[[int], list[Any]]


def _checks(kind: str, *args: Any) -> CheckFactory:
    def make(size: int) -> list[Any]:
        import pandera.pandas as pa

        if kind == "isin":
            return [pa.Check.isin(args[0])]
        if kind == "range":
            return [pa.Check.in_range(*args)]
        if kind == "gt":
            return [pa.Check.gt(args[0])]
        if kind == "ge":
            return [pa.Check.ge(args[0])]
        if kind == "eq_size":
            return [pa.Check.eq(size)]
        if kind == "matches":
            return [pa.Check.str_matches(args[0])]
        if kind == "jpeg":
            return [pa.Check(_is_jpeg, error="image must be non-empty JPEG bytes")]
        raise ValueError(kind)

    return make


def _is_jpeg(series: pd.Series) -> pd.Series:
    return series.map(lambda b: isinstance(b, bytes) and len(b) > 4 and b[:2] == b"\xff\xd8")


@dataclasses.dataclass(frozen=True)
class Column:
    """One shard column.

    Attributes:
        name: column name in Parquet (and in the pandas frames).
        arrow: pyarrow type in the Parquet files.
        pandas: pandas dtype the readers and writers use.
        group: ``metadata`` (from the input's metadata), ``source`` (facts about the file), ``processing``
            (what preprocessing did), ``measurement`` (what the ops measured), ``final`` (known once the
            whole version is: duplicates, files and folds), ``image`` (the JPEG bytes) or ``extra``
            (an input column the toolkit does not know).
        nullable: may be missing (measurements are always nullable in Parquet; this is what the
            schema check enforces).
        check: pandera checks (a function of the output size), or None.
        tfrecord: how the TFRecord writer stores it: ``code`` (int64 label code from the manifest's
            encodings), ``int`` (int64 value), ``bytes``, or None (not in the TFRecords). ``label``
            columns are left out of unlabelled (test) records.
        tfrecord_name: the feature's name in the TFRecords when it differs from ``name``.
        models: ``feature``, ``id``, ``label`` or ``train_only`` (see the module docstring).
        doc: one line for the README and the manifest.
        ingest: for a metadata column, where the ingest step gets it: ``input`` (read from the input's
            metadata under this name, after the layouts' renames; blank cells are missing), ``made``
            (made by the ingest step itself), or None (filled later, or not metadata). Its type
            (``pandas``), ``nullable`` and ``check`` are the input metadata schema.
        lower: an ``input`` text column whose values are read in lower case (vocabularies).
    """

    name: str
    arrow: pyarrow.DataType
    pandas: str
    group: str
    nullable: bool = True
    check: CheckFactory | None = None
    tfrecord: str | None = None
    models: str = "feature"
    doc: str = ""
    tfrecord_name: str | None = None
    ingest: str | None = None
    lower: bool = False

    @property
    def is_string(self) -> bool:
        """True for text columns."""
        return pyarrow.types.is_string(self.arrow)

    def describe(self) -> dict[str, Any]:
        """The manifest's entry for this column."""
        dtype = "float64" if pyarrow.types.is_float64(self.arrow) else str(self.arrow)
        return {"name": self.name, "dtype": dtype, "group": self.group, "models": self.models,
                "nullable": self.nullable, "tfrecord": self.tfrecord}


_S, _F, _B = pyarrow.string(), pyarrow.float64(), pyarrow.bool_()


def _c(name: str, arrow: pyarrow.DataType, pandas: str, group: str, **kw: Any) -> Column:
    return Column(name, arrow, pandas, group, **kw)


#: The toolkit's own columns, in shard order (extras follow the measurements; ``image`` is last).
COLUMNS: list[Column] = [
    # metadata (ISIC 2020 names) and provenance
    _c("image_name", _S, "str", "metadata", nullable=False, tfrecord="bytes", models="id", ingest="input",
       doc="image id"),
    _c("patient_id", _S, "str", "metadata", tfrecord="code", models="id", ingest="input", doc="patient id"),
    _c("sex", _S, "str", "metadata", check=_checks("isin", SEXES), tfrecord="code", ingest="input", lower=True,
       doc="female / male"),
    _c("age_approx", _F, "Float64", "metadata", check=_checks("range", 0, 120), tfrecord="int", ingest="input",
       doc="age in years (5-year steps)"),
    _c("anatom_site_general_challenge", _S, "str", "metadata", check=_checks("isin", SITES_2020), tfrecord="code",
       ingest="input", lower=True, doc="body site, 2020 vocabulary"),
    _c("diagnosis", _S, "str", "metadata", tfrecord="code", models="label", ingest="input", lower=True,
       doc="diagnosis (2020 style, lower case)"),
    _c("benign_malignant", _S, "str", "metadata", check=_checks("isin", ["benign", "malignant"]), models="label",
       ingest="input", lower=True, doc="benign / malignant"),
    _c("target", pyarrow.int8(), "Int8", "metadata", check=_checks("isin", [0, 1]), tfrecord="int", models="label",
       ingest="input", doc="label under the version's target definition"),
    _c("split", _S, "str", "metadata", nullable=False, check=_checks("isin", SPLITS), models="id", ingest="input",
       doc="train / test"),
    _c("source", _S, "str", "metadata", nullable=False, models="id", ingest="made", doc="input the row came from"),
    _c("fold", pyarrow.int8(), "Int8", "metadata", check=_checks("ge", 0), models="id", doc="CV fold (train)"),
    _c("anatom_site_detailed", _S, "str", "metadata", ingest="made", doc="body site as the input spelt it"),
    _c("lesion_id", _S, "str", "metadata", models="id", ingest="input",
       doc="lesion id (ISIC 2019, archive, 2024, MILK10k, HAM10000, PAD-UFES-20; Derm7pt's case_num)"),
    # the newer datasets (ISIC 2025 MILK10k, HAM10000, Derm7pt, PAD-UFES-20): missing for the older layouts
    _c("diagnosis_original", _S, "str", "metadata", models="label", ingest="input",
       doc="the diagnosis code as the dataset published it (melanoma_data/vocabulary.py maps it to `diagnosis`)"),
    _c("diagnosis_2025", _S, "str", "metadata", check=_checks("isin", list(
        __import__("melanoma_data.vocabulary", fromlist=["CLASSES_2025"]).CLASSES_2025)), models="label",
       ingest="input", doc="ISIC 2025 class (MILK10k's ground truth; other layouts: the class of `diagnosis`)"),
    _c("image_type", _S, "str", "metadata", models="id", ingest="input",
       doc="view: `dermoscopic` or `clinical: close-up` (archive spelling); decides which ops run"),
    _c("view_missing", _S, "str", "metadata", models="id", ingest="input",
       doc="the view this image's lesion lacks (a lesion with one view is kept and flagged, not dropped)"),
    _c("split_official", _S, "str", "metadata", check=_checks("isin", OFFICIAL_SPLITS), models="id",
       ingest="input", doc="the dataset's own split as published (Derm7pt: train / valid / test)"),
    _c("skin_tone_class", _F, "Float64", "metadata", check=_checks("range", 0, 5), ingest="input",
       doc="skin tone class 0-5 as MILK10k records it (its own scale, never merged with another)"),
    _c("fitspatrick", _F, "Float64", "metadata", check=_checks("range", 1, 6), ingest="input",
       doc="Fitzpatrick skin type 1-6 as PAD-UFES-20 records it (clinician; spelt as published)"),
    *(_c(name, _F, "Float64", "metadata", check=_checks("range", 0, 1), ingest="input",
         doc="MONET concept score in [0, 1] (automatic image-text model, not a clinician label)")
      for name in MONET_COLUMNS),
    *(_c(name, _S, "str", "metadata", ingest="input", lower=True,
         doc="seven-point checklist criterion (Derm7pt clinician label, text as published)")
      for name in SEVEN_POINT_COLUMNS),
    _c("seven_point_score", _F, "Float64", "metadata", check=_checks("range", 0, 10), ingest="input",
       doc="seven-point checklist score (Derm7pt clinician label)"),
    _c("rel_path", _S, "str", "metadata", nullable=False, models="id", doc="file (or HDF5 file#key) in the input"),
    # source facts
    _c("orig_width", pyarrow.int32(), "int32", "source", nullable=False, check=_checks("gt", 0), tfrecord="int",
       tfrecord_name="width", doc="original width"),
    _c("orig_height", pyarrow.int32(), "int32", "source", nullable=False, check=_checks("gt", 0), tfrecord="int",
       tfrecord_name="height", doc="original height"),
    _c("orig_format", _S, "str", "source", nullable=False, doc="JPEG, PNG, ..."),
    _c("orig_mode", _S, "str", "source", nullable=False, doc="RGB, CMYK, L, ..."),
    _c("file_bytes", pyarrow.int64(), "int64", "source", nullable=False, check=_checks("gt", 0),
       doc="original file size"),
    _c("file_sha256", _S, "str", "source", nullable=False, check=_checks("matches", r"^[0-9a-f]{64}$"), models="id",
       doc="sha256 of the original bytes"),
    # what processing did, then what the ops measured: declared with the step that produces each, in the step
    # table (melanoma_data/ops/steps.py; imported here, where it is needed, as it imports the ops)
    *(_c(spec.name, spec.arrow, spec.pandas, spec.group, nullable=spec.nullable, models=spec.models, doc=spec.doc,
         check=_checks(*spec.check) if spec.check else None)
      for spec in __import__("melanoma_data.ops.steps", fromlist=["column_specs"]).column_specs()),
    # known once the whole version is
    _c("duplicate_group", _S, "str", "final", nullable=False, models="id", doc="near-duplicate group"),
    _c("duplicate_group_size", pyarrow.int32(), "int32", "final", nullable=False, check=_checks("ge", 1),
       doc="images in the group"),
    _c("patient_image_count", pyarrow.int32(), "int32", "final", nullable=False, check=_checks("ge", 1),
       doc="images of the patient"),
    _c("image", pyarrow.binary(), "object", "image", nullable=False, check=_checks("jpeg"), tfrecord="bytes",
       models="id", doc="processed JPEG"),
]

BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
#: The metadata columns the ingest step produces (read from the input or made by it), in table order.
METADATA_COLUMNS = [c.name for c in COLUMNS if c.ingest]
#: Text metadata columns read from the input that may be missing (a blank cell is a missing value).
METADATA_TEXT_COLUMNS = [c.name for c in COLUMNS if c.ingest == "input" and c.is_string and c.name != "split"]
#: The columns the TFRecords hold, in table order.
TFRECORD_COLUMNS = [c for c in COLUMNS if c.tfrecord]
#: The input columns the toolkit reads into its own columns (after the layouts' renames); any other
#: input column is an extra.
INPUT_COLUMNS = {c.name for c in COLUMNS if c.ingest == "input"}
#: Prefix of an input column whose name is a toolkit column with another meaning (e.g. a CSV's ``width``).
COLLISION_PREFIX = "meta_"

# ------------------------------------------------------------------------------ extra columns

#: Extra columns that carry the label or exist only because the label is known (by name).
LABEL_PATTERNS = [re.compile(p) for p in (
    r"^iddx_", r"^mel_thick_mm$", r"^mel_mitotic_index$", r"^mel_class$", r"^mel_type$", r"^diagnosis_\d",
    r"^diagnosis_confirm_type$", r"^benign_malignant", r"^malignant$", r"^melanocytic$", r"^nevus_type$",
    r"^(MEL|NV|BCC|AK|BKL|DF|VASC|SCC|UNK)$", r"^(AKIEC|BEN_OTH|INF|MAL_OTH|SCCKA)$", r"^dx_type$",
    r"^diagnosis_full$", r"^invasion_thickness_interval$", r"^biopsed$", r"^management$",
    r"^level_of_diagnostic_difficulty$", r"^diagnostic$", r"^dx$",
    # Derm7pt's case numbers: row numbers of a table ordered by diagnosis (as a number they would leak it)
    r"^case_id$", r"^case_num$",
)]


@dataclasses.dataclass(frozen=True)
class ExtraColumn:
    """An input metadata column the toolkit does not know, carried into the shards.

    Attributes:
        name: name in the shards (``original``, or ``meta_<original>`` when it collides).
        dtype: ``float64`` (every non-blank value is a number) or ``string``.
        original: the name in the input.
        models: ``feature``, ``label`` or ``train_only``.
        why: why a model may not use it (empty for features).
    """

    name: str
    dtype: str
    original: str
    models: str = "feature"
    why: str = ""

    def column(self) -> Column:
        """As a :class:`Column` of the table."""
        arrow, pandas = (_F, "float64") if self.dtype == "float64" else (_S, "str")
        return Column(self.name, arrow, pandas, "extra", models=self.models, doc=f"input column {self.original!r}")

    def describe(self) -> dict[str, Any]:
        """The manifest's entry."""
        return {**self.column().describe(), "original": self.original, "why": self.why}

    @classmethod
    def from_manifest(cls, d: Mapping[str, Any]) -> ExtraColumn:
        """Inverse of :meth:`describe`."""
        return cls(d["name"], "float64" if d["dtype"] == "float64" else "string", d["original"], d["models"],
                   d.get("why", ""))


Extras = tuple[ExtraColumn, ...]


def label_carrier(name: str) -> bool:
    """True for an input column that carries the diagnosis (by name)."""
    return any(p.search(name) for p in LABEL_PATTERNS)


#: cells converted at a time: a wide table (thousands of columns, few rows) is converted many columns in one
#: vectorised step, a tall one (400k rows) a column or two at a time, so working copies stay small
_BLOCK_CELLS = 1 << 20


def _blocks(n_rows: int, cols: Sequence[str]) -> Iterator[list[str]]:
    step = max(1, _BLOCK_CELLS // max(1, n_rows))
    for start in range(0, len(cols), step):
        yield list(cols[start : start + step])


def stripped_text(frame: pd.DataFrame, cols: Sequence[str], missing: str | None = "") -> np.ndarray:
    """The cells of ``cols`` as text with surrounding whitespace stripped, shape ``(len(cols), len(frame))``.

    ``missing``: what a missing value becomes (``None``: its ``str()``, as ``astype(str)`` writes it).
    One vectorised pass over all the cells (callers pass blocks from :func:`_blocks`).
    """
    flat = pd.Series(frame[list(cols)].to_numpy(dtype=object).ravel(order="F"))
    text = flat.astype(str).str.strip()
    if missing is not None:
        na = flat.isna().to_numpy()
        if na.any():
            text[na] = missing
    return text.to_numpy(dtype=object).reshape(len(cols), len(frame))


def strip_columns(frame: pd.DataFrame) -> None:
    """Every column of ``frame`` as stripped text (``astype(str)``), in place, block by block."""
    n = len(frame)
    for block in _blocks(n, list(frame.columns)):
        values = stripped_text(frame, block, missing=None)
        for j, col in enumerate(block):
            frame[col] = pd.Series(values[j], index=frame.index, dtype="str")


def _kinds(frame: pd.DataFrame, cols: Sequence[str]) -> dict[str, str]:
    """Each column's kind: ``blank`` (no value at all), ``numeric`` (every non-blank value a number) or ``text``."""
    out: dict[str, str] = {}
    n = len(frame)
    for block in _blocks(n, cols):
        if n == 0:
            out.update(dict.fromkeys(block, "blank"))
            continue
        text = stripped_text(frame, block)
        blank = text == ""
        number = pd.to_numeric(pd.Series(text.ravel()), errors="coerce").notna().to_numpy().reshape(text.shape)
        all_blank, numeric = blank.all(axis=1), (number | blank).all(axis=1)
        out.update({c: "blank" if all_blank[j] else "numeric" if numeric[j] else "text" for j, c in enumerate(block)})
    return out


def infer_extras(frames: pd.DataFrame | Sequence[pd.DataFrame], train_only: set[str] = frozenset()) -> Extras:
    """The extra columns of the inputs (toolkit input columns excluded), in first-seen order.

    Args:
        frames: the input rows, as read (text), with the columns each layout parser produced; a
            column is numeric when it is numeric in every frame that has it (never concatenated).
        train_only: columns an input's training metadata has and its test metadata lacks (inputs
            without separate test metadata contribute none; then only the name rules mark columns
            models may not use).
    """
    frames = [frames] if isinstance(frames, pd.DataFrame) else list(frames)
    out = []
    taken = set(BY_NAME) | INPUT_COLUMNS
    seen: list[str] = []
    for f in frames:
        known = set(seen)
        seen += [c for c in f.columns if c not in known]
    wanted = [c for c in seen if c not in INPUT_COLUMNS and not c.startswith("_")]
    kinds_of = [_kinds(f, [c for c in wanted if c in f.columns]) for f in frames]
    for original in seen:
        if original in INPUT_COLUMNS or original.startswith("_"):
            continue
        name = original
        while name in taken:
            name = COLLISION_PREFIX + name
        taken.add(name)
        kinds = {k[original] for k in kinds_of if original in k}
        # numeric where it has values; a frame where it is wholly blank (e.g. absent rows) does not count
        dtype = "float64" if kinds - {"blank"} == {"numeric"} else "string"
        if label_carrier(original):
            models, why = "label", "carries the diagnosis"
        elif original in train_only:
            models, why = "train_only", "absent from the test metadata"
        else:
            models, why = "feature", ""
        out.append(ExtraColumn(name, dtype, original, models, why))
    return tuple(out)


def convert_extras(frame: pd.DataFrame, extras: Extras) -> pd.DataFrame:
    """Rename extra columns to their shard names and convert them to their types (blank → null).

    Vectorised over blocks of columns (a CSV with thousands of columns converts in one step per block).
    """
    frame = frame.rename(columns={e.original: e.name for e in extras if e.original != e.name})
    n = len(frame)
    for numeric in (True, False):
        names = [e.name for e in extras if (e.dtype == "float64") == numeric]
        for block in _blocks(n, names):
            text = stripped_text(frame, block)
            blank = text == ""
            if numeric:
                flat = pd.Series(np.where(blank, None, text).ravel())
                values = pd.to_numeric(flat, errors="coerce").astype("float64").to_numpy().reshape(text.shape)
            else:
                values = np.where(blank, None, text)
            for j, col in enumerate(block):
                frame[col] = values[j] if numeric else pd.Series(values[j], index=frame.index, dtype="str")
    if len(extras) > 64 and frame.size <= 4 * _BLOCK_CELLS:  # a wide, short table: defragment (cheap)
        frame = frame.copy()
    return frame


# ------------------------------------------------------------------------------ the table for a version


def table(extras: Extras = (), final: bool = True) -> list[Column]:
    """The columns of a shard: toolkit columns, extras after the measurements, ``image`` last.

    ``final=False``: a staged partition (before duplicates, files and folds are known).
    """
    own = [c for c in COLUMNS if c.group != "image" and (final or c.group != "final")]
    return [*own, *(e.column() for e in extras), BY_NAME["image"]]


def arrow_schema(extras: Extras = (), final: bool = True) -> pyarrow.Schema:
    """The pyarrow schema of a shard (image bytes last)."""
    # measurements are nullable in Parquet (an op switched off writes nothing); pandera checks the rest
    return pyarrow.schema([pyarrow.field(c.name, c.arrow, nullable=c.nullable or c.group == "measurement")
                           for c in table(extras, final)])


def describe(extras: Extras = ()) -> list[dict[str, Any]]:
    """The manifest's ``columns`` list (every shard column, extras marked with their original names)."""
    known = {e.name: e for e in extras}
    return [known[c.name].describe() if c.name in known else c.describe() for c in table(extras)]


def extras_of(records: Iterable[Mapping[str, Any]]) -> Extras:
    """The extra columns among a version's column records (the manifest's ``columns`` list, as :func:`describe`
    writes it; :attr:`melanoma_data.manifest.Manifest.extras` reads them from a manifest)."""
    return tuple(ExtraColumn.from_manifest(d) for d in records if d.get("group") == "extra")


def forbidden(records: Iterable[Mapping[str, Any]], names: Iterable[str], allow: Iterable[str] = ()) -> list[str]:
    """Of ``names``, the columns a model may not use (``label``/``train_only``) and the user did not allow
    (``records``: the version's column records; without any, the table's own uses)."""
    uses = {d["name"]: d["models"] for d in records} or {c.name: c.models for c in COLUMNS}
    allowed = set(allow)
    return [n for n in names if uses.get(n) in FORBIDDEN_USES and n not in allowed]


def model_features(records: Iterable[Mapping[str, Any]], allow: Iterable[str] = ()) -> list[str]:
    """Numeric extra columns a model may use (plus any forbidden ones allowed by name), in shard order."""
    allowed = set(allow)
    return [e.name for e in extras_of(records)
            if e.dtype == "float64" and (e.models == "feature" or e.name in allowed)]


#: Hair fraction from which an image counts as heavily haired in the bias tables.
HEAVY_HAIR = 0.05
#: The bias tables' dimensions: label → the shard column it is read from (``heavy hair``: ``hair_fraction``
#: at least :data:`HEAVY_HAIR`).
PRESENCE = (("ruler", "ruler_detected"), ("ink / marks", "ink_detected"), ("bubbles", "bubbles_detected"),
            ("dark corners", "dark_corners_detected"), ("heavy hair", "hair_fraction"))


def presence(frame: pd.DataFrame) -> dict[str, pd.Series]:
    """Label → boolean Series (NA where unknown) of each artefact's presence, for the columns ``frame`` has
    with at least one value (a version preprocessed with ``[artefacts] enabled = false`` has them all NA).

    The one reading of the artefact columns shared by the EDA report and the run reports.
    """
    out: dict[str, pd.Series] = {}
    for label, col in PRESENCE:
        if col not in frame or frame[col].isna().all():
            continue
        values = frame[col]
        if col == "hair_fraction":
            values = pd.to_numeric(values, errors="coerce")
            out[label] = (values >= HEAVY_HAIR).astype("boolean").mask(values.isna())
        else:
            out[label] = values.astype("boolean")
    return out


def presence_rates(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Each artefact's rate among positives and among negatives (labelled rows of ``frame``): the bias a
    model can learn. Rows: ``artefact``, ``positives``, ``positives_with``, ``negatives``, ``negatives_with``,
    ``rate_positive``, ``rate_negative`` and ``ratio`` (positive rate / negative rate; NaN when undefined)."""
    target = pd.to_numeric(frame["target"], errors="coerce") if "target" in frame else pd.Series(dtype=float)
    rows = []
    for label, flag in presence(frame).items():
        known = flag.notna() & target.notna()
        pos, neg = known & (target == 1), known & (target == 0)
        with_pos, with_neg = int((flag[pos] == True).sum()), int((flag[neg] == True).sum())  # noqa: E712 (NA-safe)
        rp = with_pos / int(pos.sum()) if pos.any() else float("nan")
        rn = with_neg / int(neg.sum()) if neg.any() else float("nan")
        rows.append({"artefact": label, "positives": int(pos.sum()), "positives_with": with_pos,
                     "negatives": int(neg.sum()), "negatives_with": with_neg, "rate_positive": rp,
                     "rate_negative": rn, "ratio": rp / rn if rn and rn == rn else float("nan")})
    return rows


# ------------------------------------------------------------------------------ reference


def reference_markdown(fills: Mapping[str, Sequence[str]] | None = None) -> str:
    """The metadata column reference (Markdown): every metadata column with its type, whether it may be
    missing, what models may do with it, its description, and where it comes from (the layouts that fill it).

    Args:
        fills: layout name → the metadata columns it fills (default: each registered layout's ``fills``).
    """
    if fills is None:
        from melanoma_data import layouts  # (the layouts read this table; the registry is needed only here)

        fills = {lay.name: tuple(lay.fills) for lay in layouts.registered()}
    lines = ["# Metadata columns", "",
             "One row per image, ISIC 2020 names. Columns read from the input are normalised (blank cells are "
             "missing, vocabularies lower case) and validated with the checks below; a row that fails is "
             "quarantined. Any other input column is carried through as an extra column.", "",
             "| column | type | missing | models | description | filled by |",
             "|---|---|---|---|---|---|"]
    for c in COLUMNS:
        if c.group != "metadata":
            continue
        dtype = "float64" if pyarrow.types.is_float64(c.arrow) else str(c.arrow)
        if c.ingest == "input":
            source = ", ".join(f"`{name}`" for name, cols in fills.items() if c.name in cols) or "no layout yet"
        elif c.ingest == "made":
            source = "the ingest step (every layout)"
        else:
            source = {"rel_path": "the ingest step (where the image lies)"}.get(c.name, "the build")
        lines.append(f"| `{c.name}` | {dtype} | {'yes' if c.nullable else 'no'} | {c.models} | {c.doc} | {source} |")
    return "\n".join(lines) + "\n"
