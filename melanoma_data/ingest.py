"""Every input root → one normalised, validated input table (the layouts themselves: :mod:`melanoma_data.layouts`).

Every input ends up either as a usable record or as a quarantine row with a reason; nothing is
dropped silently. Inputs are metadata rows plus image files that no row names. This module keeps what
is the same for every layout: normalisation (the column table's metadata columns), the diagnosis and
site vocabularies, and the matching of rows with files.
"""

from __future__ import annotations

import dataclasses
import posixpath
from typing import Any

import pandas as pd

from melanoma_data import columns, fsutil, schemas, vocabulary
from melanoma_data import layouts as registry
from melanoma_data.errors import InputError
from melanoma_data.layouts.base import H5_SEP, IMAGE_EXTS, Parsed, parse_table, read_csv  # noqa: F401 (read here)
from melanoma_data.layouts.base import stem as _stem
from melanoma_data.layouts.images import NAME as PLAIN_LAYOUT
from melanoma_data.layouts.isic2024 import iddx_diagnosis
from melanoma_data.layouts.kaggle2020 import DUPLICATES_CSV  # noqa: F401 (read here)

_iddx_diagnosis = iddx_diagnosis  # (its name before the layouts had their own modules)

#: A folder of image files and no metadata (:mod:`melanoma_data.layouts.images`) is read with this note.
NO_LABELS_NOTE = "no labels found: {root} has no metadata CSV, so its images are read as unlabelled test images " \
                 "(pass --metadata CSV for labels)"
TARGET_DEFINITIONS = ("melanoma", "malignant")
#: The nine diagnosis classes of the 2020 winner's multi-class target (2018–2020 data; ISIC 2019's classes).
DIAGNOSIS_CLASSES = vocabulary.CLASSES_2019
#: The one class table (:mod:`melanoma_data.vocabulary`): every diagnosis text the readers produce (2020 spelling,
#: lower case; ISIC 2019's one-hot columns, the 2024 ``iddx_*`` columns and the newer datasets' codes are read into
#: these texts) → its 2019 class. The 2020 labels are mapped as the 2020 winner did: seborrheic and lichenoid
#: keratosis, solar lentigo and lentigo NOS → BKL; café-au-lait macule, atypical melanocytic proliferation and
#: unknown → UNK. Any other text → UNK.
CLASS_OF_DIAGNOSIS = {text: d.class_2019 for text, d in vocabulary.DIAGNOSES.items()}
#: The classes each target definition counts as positive (its probability is their softmax sum).
TARGET_CLASSES = {"melanoma": ("MEL",), "malignant": ("MEL", "BCC", "SCC")}
#: Diagnoses (2020 spelling, lower case) that count as malignant for the ``malignant`` definition of a row without
#: ``benign_malignant`` (as before the newer datasets: they fill ``benign_malignant`` from the vocabulary).
MALIGNANT_DIAGNOSES = vocabulary.LEGACY_MALIGNANT_DIAGNOSES


def diagnosis_class(diagnosis: Any, target: Any = None, definition: str = "melanoma") -> str | None:
    """The class (:data:`DIAGNOSIS_CLASSES`) of a diagnosis text; ``None`` for an unlabelled row.

    Without a diagnosis, a labelled row takes its target: the definition's first class (MEL) when
    positive, UNK when negative.
    """
    if isinstance(diagnosis, str) and diagnosis.strip():
        return CLASS_OF_DIAGNOSIS.get(diagnosis.strip().lower(), "UNK")
    if target is None or (not isinstance(target, str) and pd.isna(target)):
        return None
    return TARGET_CLASSES[definition][0] if int(target) == 1 else "UNK"


#: Input columns the ingest step derives where a layout leaves them blank (``diagnosis_2025``: the class of the
#: diagnosis text), so a layout need not list them among what it fills.
DERIVED_COLUMNS = frozenset({"diagnosis_2025"})


#: ISIC 2019 / archive body sites → the ISIC 2020 vocabulary (detail kept in ``anatom_site_detailed``).
SITE_MAP = {
    "anterior torso": "torso",
    "posterior torso": "torso",
    "lateral torso": "torso",
    "torso": "torso",
    "upper extremity": "upper extremity",
    "lower extremity": "lower extremity",
    "head/neck": "head/neck",
    "palms/soles": "palms/soles",
    "oral/genital": "oral/genital",
    # isic-cli (archive) spellings
    "head_neck": "head/neck",
    "upper_extremity": "upper extremity",
    "lower_extremity": "lower extremity",
    "palms_soles": "palms/soles",
    "oral_genital": "oral/genital",
    "anterior_torso": "torso",
    "posterior_torso": "torso",
    "lateral_torso": "torso",
}

# each layout's own site spellings (HAM10000's localization, Derm7pt's location, ...)
for _layout in registry.registered():
    for _spelling, _site in _layout.sites.items():
        if SITE_MAP.setdefault(_spelling, _site) != _site:
            raise ValueError(f"layout {_layout.name}: site {_spelling!r} is mapped to {SITE_MAP[_spelling]!r} already")

QUARANTINE_COLUMNS = ["image_name", "source", "path", "stage", "reason", "detail"]

#: Which copy of an image name found in several inputs is kept, by layout name, first wins: the releases with
#: the richer labels first. MILK10k (ISIC ids, the 2025 classes, MONET concepts, skin tone, paired views) before
#: HAM10000 (lesion ids, how each diagnosis was confirmed), before ISIC 2019 (which contains HAM10000 under the
#: same names, with eight classes and no lesion confirmation type), before the 2020 release (patients, binary
#: target), the 2024 tiles and the archive's per-image download; any other layout after them, in input order.
#: Between two inputs of one priority the earlier input wins. The others are quarantined as
#: ``cross_source_duplicate`` (the detail names the copy kept) and counted in the version's duplicate report.
#: (Each layout's ``duplicate_rank``, kept with the layout it ranks.)
SOURCE_PRIORITY = tuple(lay.name for lay in sorted((lay for lay in registry.registered()
                                                     if lay.duplicate_rank is not None),
                                                    key=lambda lay: lay.duplicate_rank))
#: What the cross-source report lists in full (the disagreeing labels); the rest is counted.
CROSS_SOURCE_EXAMPLES = 50


def source_rank(layout: str, position: int) -> tuple[int, int]:
    """Sort key of an input under :data:`SOURCE_PRIORITY` (lower wins): its layout's place, then its position."""
    return (SOURCE_PRIORITY.index(layout) if layout in SOURCE_PRIORITY else len(SOURCE_PRIORITY), position)


def detect_layout(fs, root: str) -> str:
    """Name of the input layout found at ``root`` (:func:`melanoma_data.layouts.detect`).

    Raises:
        InputError: when the folder is missing or matches no layout.
    """
    return registry.detect(fs, root)


def source_name(kind: str, root: str) -> str:
    """The ``source`` value of an input: the layout's dataset name, else the folder's name."""
    if kind in registry.names():
        return registry.get(kind).source_name(root)
    return posixpath.basename(root.rstrip("/")) or "input"


@dataclasses.dataclass
class Ingested:
    """Result of reading all inputs.

    Attributes:
        records: one row per usable input: the metadata columns plus ``path`` (fsspec URL of the file)
            and ``rel_path`` (path relative to its input root).
        quarantine: rows for inputs that cannot be used (stage ``ingest`` or ``metadata``).
        layouts: the layout detected for each input root.
        listing: ``(source, rel_path, size, mtime)`` of every image file and metadata CSV, for the
            fingerprint.
        extras: the input columns the toolkit does not know, carried into the shards.
        target: the target definition (``definition``, each source's own, the sources recomputed).
        known_duplicates: pairs of image names the input lists as duplicates
            (``ISIC_2020_Training_Duplicates.csv``).
        known_source: the source that listed them.
        n_records: the number of records once the frame has been released (-1 before).
        plain: ``(input, image files)`` of each input read as a plain folder of images (no metadata).
        cross_source: the image names found in several inputs (:func:`cross_source_report`): which copy was
            kept by :data:`SOURCE_PRIORITY`, and whether the labels agree; empty when there are none.
        name_rule: :data:`melanoma_data.fsutil.NAME_RULE` when the image-name rule decided differently
            from rule 1 for some input (so it enters the fingerprint), else None.
    """

    records: pd.DataFrame
    quarantine: pd.DataFrame
    layouts: list[str]
    listing: list[tuple[str, str, int, float, str]]
    extras: columns.Extras = ()
    target: dict | None = None
    known_duplicates: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    known_source: str | None = None
    n_records: int = -1
    name_rule: str | None = None
    plain: list[tuple[str, int]] = dataclasses.field(default_factory=list)
    cross_source: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def n_inputs(self) -> int:
        """Number of inputs (usable + quarantined)."""
        return (len(self.records) if self.n_records < 0 else self.n_records) + len(self.quarantine)

    def notes(self) -> list[str]:
        """One line per input read as a plain folder of images (no labels found), for the user."""
        return [NO_LABELS_NOTE.format(root=root) for root, _ in self.plain]

    def release_records(self) -> None:
        """Drop the records frame (once it is stored elsewhere), keeping the counts."""
        self.n_records = len(self.records) if self.n_records < 0 else self.n_records
        self.records = self.records.iloc[:0]


# ------------------------------------------------------------------------------- normalisation


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and pd.isna(value)) or str(value).strip() == ""


#: The column table's metadata columns as the normalisation reads them: every column read from the input
#: (added blank where a layout has none), those read in lower case, the numbers (blank → missing; text that
#: is not a number is a problem of its row; ``target`` has its own rule) and the text (blank → missing).
_READ = [c.name for c in columns.COLUMNS if c.ingest == "input"]
_LOWER = [c.name for c in columns.COLUMNS if c.ingest == "input" and c.lower]
_NUMBERS = [c.name for c in columns.COLUMNS if c.ingest == "input" and not c.is_string and c.name != "target"]
_TEXT = [c.name for c in columns.COLUMNS if c.ingest and c.is_string]


def _normalise(frame: pd.DataFrame, source: str, extras: columns.Extras = (),
               target: str | None = None) -> tuple[pd.DataFrame, dict[int, list[str]]]:
    """Bring a parsed frame to the standard columns plus the extras; returns it and per-row parse problems.

    ``target``: recompute ``target`` from the diagnosis columns under this definition (``melanoma``
    or ``malignant``) instead of reading the input's own.
    """
    # the parser's frame is modified in place, column by column (a copy of 400k × 50 text columns is
    # hundreds of MB): the caller drops it afterwards
    for col in _READ:
        if col not in frame.columns:
            frame[col] = ""
    for e in extras:
        if e.original not in frame.columns:
            frame[e.original] = ""
    columns.strip_columns(frame)  # vectorised over blocks of columns (a wide CSV is not converted one by one)
    problems: dict[int, list[str]] = {}

    def flag(i: int, msg: str) -> None:
        problems.setdefault(i, []).append(msg)

    for col in _LOWER:
        frame[col] = frame[col].str.lower()
    frame["diagnosis_2025"] = vocabulary.fill_2025(frame)
    detailed = frame["anatom_site_general_challenge"]
    frame["anatom_site_detailed"] = detailed
    frame["anatom_site_general_challenge"] = detailed.map(lambda s: SITE_MAP.get(s, s))

    for col in _NUMBERS:
        values = []
        for i, v in enumerate(frame[col]):
            try:
                values.append(None if _blank(v) else float(v))
            except ValueError:
                flag(i, f"{col}={v!r} is not a number")
                values.append(None)
        frame[col] = pd.array(values, dtype=columns.BY_NAME[col].pandas)
    targets = []
    given = frame["target"] if target is None else pd.Series("", index=frame.index)
    rows = zip(given, frame["diagnosis"], frame["benign_malignant"], strict=True)
    for i, (tgt, diag, bm) in enumerate(rows):
        if _blank(tgt):
            targets.append(_derived_target(diag, bm, target or "melanoma"))
        else:
            try:
                t = float(tgt)
                if t not in (0.0, 1.0):
                    raise ValueError
                targets.append(int(t))
            except ValueError:
                flag(i, f"target={tgt!r} is not 0 or 1")
                targets.append(None)
    frame["target"] = pd.array(targets, dtype="Int8")
    # split: explicit column, else labelled rows train and unlabelled rows test
    has_label = frame["target"].notna()
    frame["split"] = frame["split"].str.lower().where(frame["split"] != "", "")
    frame.loc[(frame["split"] == "") & has_label, "split"] = "train"
    frame.loc[frame["split"] == "", "split"] = "test"
    frame["source"] = source
    keep = columns.METADATA_COLUMNS + [e.original for e in extras]
    out = frame[keep]  # (copy-on-write: the columns replaced below are new, the others shared)
    for col in _TEXT:
        out[col] = out[col].replace("", None)
    out = columns.convert_extras(out, extras)
    return out.reset_index(drop=True), problems


def _derived_target(diagnosis: str, benign_malignant: str, definition: str) -> int | None:
    """Target from the diagnosis columns: 1/0 under ``definition``, None when nothing is known."""
    if _blank(diagnosis) and _blank(benign_malignant):
        return None
    if definition == "melanoma":
        return int(diagnosis == "melanoma")
    return int(benign_malignant == "malignant" or diagnosis in MALIGNANT_DIAGNOSES)


def _raw_stem(path: str) -> str:
    return path.split(H5_SEP, 1)[1] if H5_SEP in path else posixpath.splitext(posixpath.basename(path))[0]


def _stem_index(files: list[str]) -> tuple[dict[str, str], list[str]]:
    """Map file stem → path; second and later files with one stem are returned as ambiguous."""
    index: dict[str, str] = {}
    ambiguous = []
    for p in files:
        stem = _stem(p)
        if stem in index:
            ambiguous.append(p)
        else:
            index[stem] = p
    return index, ambiguous


def _candidates(name: str) -> list[str]:
    if name.endswith("_downsampled"):
        return [name, name[: -len("_downsampled")]]
    return [name, name + "_downsampled"]


def ingest(
    inputs: list[str],
    metadata: str | None = None,
    encoding: str | None = None,
    layout: str | None = None,
    target: str | None = None,
) -> Ingested:
    """Read every input root and return usable records plus quarantine rows.

    Args:
        inputs: input folders (local paths or fsspec URLs).
        metadata: a CSV that overrides layout detection (applies to the single input).
        encoding: text encoding of the metadata CSVs (default: UTF-8, BOMs detected).
        layout: force a layout instead of detecting it.
        target: ``melanoma`` or ``malignant``: the target definition of the version, derived from the
            diagnosis columns for inputs whose own ``target`` means something else. Needed when
            inputs with different definitions are combined (2024's target is any malignancy).

    Raises:
        InputError: an input cannot be read at all, or there are no images.
    """
    if metadata and len(inputs) != 1:
        raise InputError("--metadata applies to a single INPUT")
    if target is not None and target not in TARGET_DEFINITIONS:
        raise InputError(f"--target must be one of {', '.join(TARGET_DEFINITIONS)}, got {target!r}")
    records, quarantine, layouts, listing = [], [], [], []
    found: list[tuple[Any, str, str, str, Parsed]] = []
    owner: list[int] = []
    for root_url in inputs:
        fs, root = fsutil.resolve(root_url)
        if metadata:
            mfs, mpath = fsutil.resolve(metadata)
            if not mfs.exists(mpath):
                raise InputError(f"metadata file {metadata!r} does not exist")
            if not fs.isdir(root):
                raise InputError(f"input folder {root_url!r} does not exist or is not a folder")
            kind = "generic"
            parsed = parse_table(fs, root, mpath, encoding)
        else:
            kind = layout or registry.detect(fs, root)
            parsed = registry.get(kind).parse(fs, root, encoding)
        source = registry.get(kind).source_name(root)
        layouts.append(kind)
        for part in parsed if isinstance(parsed, list) else [parsed]:
            plain = [p for p in part.files if H5_SEP not in p]
            for p in plain + part.containers + list(part.csvs):
                size, mtime = fsutil.file_stat(fs.info(p))
                listing.append((source, posixpath.relpath(p, root), size, mtime, part.csvs.get(p, "")))
            found.append((fs, root, kind, source, part))
            owner.append(len(layouts) - 1)  # the input (not the part: a release's train and test) it came from
    extras = columns.infer_extras([p.frame for *_, p in found], set().union(*(p.train_only for *_, p in found)))
    natural = {source: registry.get(kind).natural_target for _, _, kind, source, _ in found
               if registry.get(kind).natural_target}
    definition = _target_definition(natural or {source: "melanoma" for *_, source, _ in found}, target)
    name_rule = False
    for position, (fs, root, kind, source, parsed) in zip(owner, found, strict=True):
        rule = target if target is not None and definition["sources"].get(source, target) != target else None
        frame, problems = _normalise(parsed.frame, source, extras, rule)
        parsed.frame = pd.DataFrame()  # release the raw text as soon as it is normalised
        view = registry.get(kind).image_type
        if view and frame["image_type"].isna().any():  # the layout's view where a row does not say (the op policy)
            frame["image_type"] = frame["image_type"].fillna(view)
        recs, quar, changed = _match(fs, root, frame, problems, parsed.files, source)
        recs["_input"] = position
        name_rule = name_rule or changed
        del frame
        records.append(recs)
        quarantine.append(quar)
    known = [pair for *_, p in found for pair in p.known_duplicates]
    known_source = next((source for _, _, _, source, p in found if p.known_duplicates), None)
    nonempty = [r for r in records if len(r)] or records[:1]
    recs = pd.concat(nonempty, ignore_index=True) if len(nonempty) > 1 else nonempty[0].reset_index(drop=True)
    del records, nonempty  # (each copy of 400k records is ~300 MB)
    quar = pd.concat(quarantine, ignore_index=True)
    # image names must be unique across all inputs too (they name rows in every shard): one copy is kept by the
    # source priority, the others are quarantined and reported
    cross: dict[str, Any] = {}
    if len(inputs) > 1 and recs["image_name"].duplicated().any():
        several = recs.groupby("image_name")["_input"].transform("nunique") > 1
        if several.any():
            ranks = {i: source_rank(kind, i) for i, kind in enumerate(layouts)}
            named = {i: (kind, source) for i, (_, _, kind, source, _) in zip(owner, found, strict=True)}
            recs, moved, cross = _cross_source(recs, several, ranks, named)
            quar = pd.concat([quar, moved], ignore_index=True)
    recs = recs.drop(columns="_input")
    # the parts of one input (a release's train and test metadata) naming one image: the first is used
    dup = recs["image_name"].duplicated(keep="first")
    if dup.any():
        moved = recs[dup]
        quar = pd.concat(
            [
                quar,
                pd.DataFrame(
                    {
                        "image_name": moved["image_name"],
                        "source": moved["source"],
                        "path": moved["rel_path"],
                        "stage": "ingest",
                        "reason": "duplicate_name",
                        "detail": "image_name already used by an earlier part of the input",
                    }
                ),
            ],
            ignore_index=True,
        )
        recs = recs[~dup]
    if len(recs) + len(quar) == 0:
        raise InputError(f"no images or metadata rows found in {', '.join(inputs)}")
    if len(recs) == 0 and not (quar["reason"] != "missing_file").any():
        raise InputError(f"no image files found in {', '.join(inputs)} (looked for {', '.join(IMAGE_EXTS)})")
    if not recs["image_name"].is_monotonic_increasing:
        recs = recs.sort_values("image_name", kind="stable").reset_index(drop=True)
    quar = quar.sort_values(["image_name", "reason"], kind="stable").reset_index(drop=True)
    return Ingested(recs, quar[QUARANTINE_COLUMNS], layouts, sorted(listing), extras, definition, known,
                    known_source, name_rule=fsutil.NAME_RULE if name_rule else None,
                    plain=[(fsutil.to_url(fs, root), len(p.files)) for fs, root, kind, _, p in found
                           if kind == PLAIN_LAYOUT], cross_source=cross)


def _cross_source(recs: pd.DataFrame, dup: pd.Series, ranks: dict[int, tuple[int, int]],
                  inputs: dict[int, tuple[str, str]]) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, Any]]:
    """Keep one copy of each image name found in several inputs (the best :func:`source_rank`); returns the kept
    records, the quarantine rows of the others and the cross-source report (:func:`cross_source_report`)."""
    rows = recs[dup].copy()
    rows["_rank"] = rows["_input"].map(ranks)
    rows = rows.sort_values(["image_name", "_rank"], kind="stable")
    first = ~rows["image_name"].duplicated(keep="first")
    kept = rows[first].set_index("image_name")
    dropped = rows[~first]
    winner = kept.loc[dropped["image_name"]]
    detail = [f"image_name also in input {int(k) + 1} ({inputs[int(k)][1]}, layout {inputs[int(k)][0]}), kept by the "
              f"source priority ({', '.join(SOURCE_PRIORITY)}, then others; ties: the earlier input)"
              for k in winner["_input"]]
    moved = pd.DataFrame({"image_name": dropped["image_name"].to_numpy(), "source": dropped["source"].to_numpy(),
                          "path": dropped["rel_path"].to_numpy(), "stage": "ingest",
                          "reason": "cross_source_duplicate", "detail": detail})
    pairs = pd.DataFrame({"image_name": dropped["image_name"].to_numpy(),
                          "kept": winner["source"].to_numpy(), "dropped": dropped["source"].to_numpy(),
                          "target_kept": winner["target"].to_numpy(), "target_dropped": dropped["target"].to_numpy(),
                          "diagnosis_kept": winner["diagnosis"].to_numpy(),
                          "diagnosis_dropped": dropped["diagnosis"].to_numpy()})
    recs = recs.drop(index=dropped.index)
    # the kept copy takes the grouping ids it lacks from a copy not kept (a patient's other images stay in its fold:
    # the ISIC 2019 copy of a 2020 image has no patient_id, the 2020 copy has)
    for col in ("patient_id", "lesion_id"):
        if col not in recs:
            continue
        given = dropped[dropped[col].notna() & (dropped[col].astype(str) != "")].drop_duplicates("image_name")
        if not len(given):
            continue
        fill = given.set_index("image_name")[col]
        names = recs["image_name"]
        blank = recs[col].isna() | (recs[col].astype(str) == "")
        take = blank & names.isin(fill.index)
        recs.loc[take, col] = names[take].map(fill).to_numpy()
    return recs, moved, cross_source_report(pairs)


def _missing(v: Any) -> bool:
    return v is None or v is pd.NA or (isinstance(v, float) and v != v)


def _same(a: Any, b: Any) -> bool:
    """Equal values, or both missing."""
    return _missing(a) and _missing(b) or (not _missing(a) and not _missing(b) and a == b)


def cross_source_report(pairs: pd.DataFrame) -> dict[str, Any]:
    """The cross-source duplicate report: one image name from several inputs, one copy kept.

    Args:
        pairs: one row per copy not kept: ``image_name``, ``kept`` and ``dropped`` (the sources),
            ``target_kept``/``target_dropped`` and ``diagnosis_kept``/``diagnosis_dropped``.

    Returns:
        ``images`` (copies not kept), ``by_source`` (``"kept > dropped"`` → copies), ``labels_agree`` /
        ``labels_disagree`` (the same target, and the same diagnosis where both give one), ``disagree``
        (the first :data:`CROSS_SOURCE_EXAMPLES` disagreeing names with both labels) and ``priority``.
    """
    out: dict[str, Any] = {"images": int(len(pairs)), "priority": list(SOURCE_PRIORITY), "by_source": {},
                           "labels_agree": 0, "labels_disagree": 0, "disagree": []}
    if not len(pairs):
        return out
    agree = []
    for row in pairs.itertuples(index=False):
        both = all(isinstance(d, str) and d for d in (row.diagnosis_kept, row.diagnosis_dropped))
        agree.append(_same(row.target_kept, row.target_dropped)
                     and (not both or row.diagnosis_kept == row.diagnosis_dropped))
    agree_s = pd.Series(agree, index=pairs.index)
    key = pairs["kept"].astype(str) + " > " + pairs["dropped"].astype(str)
    out["by_source"] = {k: int(v) for k, v in sorted(key.value_counts().items())}
    out["labels_agree"], out["labels_disagree"] = int(agree_s.sum()), int((~agree_s).sum())

    def text(v: Any) -> Any:  # JSON: a missing value is null, a target an int
        return None if _missing(v) else v if isinstance(v, str) else int(v)

    out["disagree"] = [{k: text(getattr(r, k)) for k in pairs.columns}
                       for r in pairs[~agree_s].head(CROSS_SOURCE_EXAMPLES).itertuples(index=False)]
    return out


def _target_definition(natural: dict[str, str], target: str | None) -> dict[str, Any]:
    """The version's target definition; sources whose own definitions differ need ``target``.

    Raises:
        InputError: sources with different definitions combined without ``--target``.
    """
    kinds = sorted(set(natural.values()))
    if target is None and len(kinds) > 1:
        detail = ", ".join(f"{s}: {d}" for s, d in sorted(natural.items()))
        raise InputError(f"the inputs define target differently ({detail}); pass --target melanoma or "
                         "--target malignant to derive one definition from the diagnosis columns")
    chosen = target or kinds[0]
    return {"definition": chosen, "sources": dict(sorted(natural.items())),
            "derived_from_diagnosis": sorted(s for s, d in natural.items() if d != chosen),
            "meaning": {"melanoma": "1 = melanoma", "malignant": "1 = melanoma, basal or squamous cell carcinoma"
                        }[chosen]}


def _match(fs, root: str, frame: pd.DataFrame, problems: dict[int, list[str]], files: list[str],
           source: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Validate normalised rows and pair them with files; everything unusable becomes a quarantine row.

    ``frame`` and ``problems`` come from :func:`_normalise`.
    """
    quarantine: list[dict] = []

    def q(name, path, stage, reason, detail):
        quarantine.append(
            {"image_name": name, "source": source, "path": path, "stage": stage, "reason": reason, "detail": detail}
        )

    index, ambiguous = _stem_index(files)
    # the name rule (fsutil.NAME_RULE) enters the fingerprint only where it decides differently from
    # rule 1: a name it now accepts, or a name (or file stem) that Unicode normalisation changes
    changed = False
    for p in ambiguous:
        stem = _stem(p)
        other = index[stem]
        same = "" if _raw_stem(p) == _raw_stem(other) else " (spelled differently, one name once Unicode-normalised)"
        changed |= bool(same)
        q(stem, posixpath.relpath(p, root), "ingest", "ambiguous_file",
          f"another file with the same name stem is used instead{same}: {posixpath.relpath(other, root)}")
    changed |= any(_raw_stem(p) != stem for stem, p in index.items())
    raw = frame["image_name"]
    plain = raw.str.fullmatch(r"[A-Za-z0-9._\-]*").fillna(True).astype(bool)  # ASCII: NFC keeps it
    if not plain.all():
        nfc = raw.where(plain, raw.map(fsutil.normalise_name, na_action="ignore"))
        spelled = set(raw.index[(nfc != raw) & raw.notna()])
        changed |= bool(spelled)
        frame["image_name"] = nfc
    else:
        spelled = set()
    bad = set()
    for i, name in enumerate(frame["image_name"]):
        if _blank(name):
            q(f"<row {i + 2}>", None, "metadata", "missing_name", f"CSV row {i + 2} has an empty image_name")
            bad.add(i)
        elif fsutil.name_rule_1_accepts(name):
            continue
        elif (why := fsutil.name_problem(name)) is not None:
            q(name, None, "metadata", "unsafe_name", f"image_name {name!r} {why}")
            bad.add(i)
        else:
            changed = True  # refused by rule 1, accepted now
    names = frame["image_name"]
    counts = names.value_counts()
    for name in counts[counts > 1].index:
        if _blank(name) or frame.index[names == name].isin(list(bad)).all():
            continue
        rows = frame[names == name]
        identical = rows.drop_duplicates().shape[0] == 1
        idx = list(rows.index)
        drop = idx[1:] if identical else idx
        for i in drop:
            if i in bad:
                continue
            q(name, None, "metadata", "duplicate_row" if identical else "duplicate_name",
              f"image_name {name!r} appears on CSV rows {', '.join(str(j + 2) for j in idx)}"
              + (" (spelled differently, one name once Unicode-normalised to NFC)" if spelled & set(idx) else "")
              + (" (identical rows; the first is used)" if identical else " with different values; none is used"))
            bad.add(i)
    # schema validation (enum values, ranges), all failures at once
    candidates = frame.drop(index=list(bad)) if bad else frame  # (a row selection copies: only when needed)
    failures = schemas.metadata_failures(candidates)
    del candidates
    for i, msgs in problems.items():
        if i not in bad:
            failures.setdefault(i, []).extend(msgs)
    for i in sorted(failures):
        q(frame.at[i, "image_name"], None, "metadata", "invalid_metadata", "; ".join(failures[i]))
        bad.add(i)
    ok_index = frame.index.difference(sorted(bad))
    ok_names = frame["image_name"].loc[ok_index]
    used: set[str] = set()
    paths, rel, keys = [], [], []
    missing = []
    for i, name in zip(ok_index, ok_names, strict=True):
        hit = next((index[c] for c in _candidates(name) if c in index), None)
        if hit is None:
            missing.append(i)
            continue
        used.add(hit)
        container, _, key = hit.partition(H5_SEP)
        paths.append(fsutil.to_url(fs, container))
        keys.append(key or None)
        rel.append(posixpath.relpath(container, root) + (H5_SEP + key if key else ""))
    containers = sorted({p.split(H5_SEP, 1)[0] for p in files if H5_SEP in p})
    for i in missing:
        name = frame.at[i, "image_name"]
        where = (f"no entry {name!r} in {', '.join(posixpath.basename(c) for c in containers)}" if containers
                 else f"no image file named {name}{{{','.join(IMAGE_EXTS)}}} in {root}")
        q(name, None, "ingest", "missing_file", where)
    # files referenced by rows that were quarantined are accounted for by those rows
    claimed = set(used)
    for i in bad:
        name = frame.at[i, "image_name"]
        if not _blank(name):
            claimed.update(index[c] for c in _candidates(name) if c in index)
    drop = set(bad) | set(missing)
    ok = frame.loc[frame.index.difference(sorted(drop))] if drop else frame
    ok["path"] = paths
    ok["rel_path"] = rel
    if containers:
        ok["h5_key"] = keys
    ambiguous_set = set(ambiguous)
    for p in files:
        if p not in claimed and p not in ambiguous_set:
            stem = _stem(p)
            q(stem, posixpath.relpath(p, root), "ingest", "no_metadata", "image file has no metadata row")
    for item in quarantine:
        if item["path"] is None:
            item["path"] = ""
    quar = pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS)
    return ok.reset_index(drop=True), quar, changed
