"""Input layouts (Kaggle 2020, ISIC 2019, isic-cli, generic) → one normalised, validated input table.

Every input ends up either as a usable record or as a quarantine row with a reason; nothing is
dropped silently. Inputs are metadata rows plus image files that no row names.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import os
import posixpath
from typing import Any

import pandas as pd

from melanoma_data import columns, fsutil, h5, schemas
from melanoma_data.errors import InputError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif")
LAYOUTS = ("kaggle2020", "isic2019", "isic-cli", "isic2024", "generic", "images")
#: A folder of image files and no metadata: every image an unlabelled ``test`` row named by its file.
PLAIN_LAYOUT = "images"
NO_LABELS_NOTE = "no labels found: {root} has no metadata CSV, so its images are read as unlabelled test images " \
                 "(pass --metadata CSV for labels)"
#: Separator between an HDF5 container and an entry key in input paths (``train-image.hdf5#ISIC_0015670``).
H5_SEP = "#"
#: What ``target`` means in each layout's own metadata (2024: any malignancy).
NATURAL_TARGET = {"kaggle2020": "melanoma", "isic2019": "melanoma", "isic-cli": "melanoma", "generic": "melanoma",
                  "isic2024": "malignant", PLAIN_LAYOUT: None}
TARGET_DEFINITIONS = ("melanoma", "malignant")
#: The nine diagnosis classes of the 2020 winner's multi-class target (2018–2020 data; ISIC 2019's classes).
DIAGNOSIS_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
#: The one class table: every diagnosis text the readers produce (2020 spelling, lower case; ISIC 2019's
#: one-hot columns and the 2024 ``iddx_*`` columns are read into these texts) → its class. The 2020 labels
#: are mapped as the 2020 winner did: seborrheic and lichenoid keratosis, solar lentigo and lentigo NOS →
#: BKL; café-au-lait macule, atypical melanocytic proliferation and unknown → UNK. Any other text → UNK.
CLASS_OF_DIAGNOSIS = {
    "melanoma": "MEL", "nevus": "NV", "basal cell carcinoma": "BCC", "actinic keratosis": "AK",
    "benign keratosis": "BKL", "seborrheic keratosis": "BKL", "lichenoid keratosis": "BKL", "solar lentigo": "BKL",
    "lentigo nos": "BKL", "dermatofibroma": "DF", "vascular lesion": "VASC", "squamous cell carcinoma": "SCC",
    "cafe-au-lait macule": "UNK", "café-au-lait macule": "UNK", "atypical melanocytic proliferation": "UNK",
    "unknown": "UNK",
}
#: The classes each target definition counts as positive (its probability is their softmax sum).
TARGET_CLASSES = {"melanoma": ("MEL",), "malignant": ("MEL", "BCC", "SCC")}
#: Diagnoses (2020 spelling, lower case) that count as malignant for the ``malignant`` definition.
MALIGNANT_DIAGNOSES = tuple(d for d, c in CLASS_OF_DIAGNOSIS.items() if c in TARGET_CLASSES["malignant"])


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
#: The 2020 release's list of duplicate pairs, read when it lies beside the 2020 metadata.
DUPLICATES_CSV = "ISIC_2020_Training_Duplicates.csv"

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

#: ISIC 2019 one-hot ground-truth columns → diagnosis text (ISIC 2020 style) and malignancy.
ISIC2019_CLASSES = {
    "MEL": ("melanoma", "malignant"),
    "NV": ("nevus", "benign"),
    "BCC": ("basal cell carcinoma", "malignant"),
    "AK": ("actinic keratosis", "benign"),
    "BKL": ("benign keratosis", "benign"),
    "DF": ("dermatofibroma", "benign"),
    "VASC": ("vascular lesion", "benign"),
    "SCC": ("squamous cell carcinoma", "malignant"),
    "UNK": ("unknown", None),
}

QUARANTINE_COLUMNS = ["image_name", "source", "path", "stage", "reason", "detail"]


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


# ----------------------------------------------------------------------------------------- CSV


def _encoding_of(raw: bytes, encoding: str | None) -> str:
    if encoding is not None:
        return encoding
    if raw.startswith(codecs.BOM_UTF8):
        return "utf-8-sig"
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return "utf-8"


#: Most columns a metadata CSV may have (the ISIC 2024 metadata has 55); ``MELANOMA_MAX_CSV_COLUMNS`` raises it.
MAX_CSV_COLUMNS = 2000
MAX_CSV_COLUMNS_ENV = "MELANOMA_MAX_CSV_COLUMNS"


def max_csv_columns() -> int:
    """The column cap: :data:`MAX_CSV_COLUMNS`, or the positive integer in ``MELANOMA_MAX_CSV_COLUMNS``.

    Raises:
        InputError: the variable is set to something else.
    """
    raw = os.environ.get(MAX_CSV_COLUMNS_ENV, "").strip()
    if not raw:
        return MAX_CSV_COLUMNS
    if not raw.isdigit() or int(raw) < 1:
        raise InputError(f"{MAX_CSV_COLUMNS_ENV}={raw!r} is not a positive whole number")
    return int(raw)


def _count_header_fields(fh, encoding: str, limit: int) -> int:
    """Fields in the first CSV record (quotes respected), read in 64 kB pieces; stops counting above ``limit``."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    fields, quoted = 1, False
    while block := fh.read(1 << 16):
        text = decoder.decode(block)
        if not quoted and '"' not in text:  # the common case: count separators up to the line end
            end = min((i for i in (text.find("\n"), text.find("\r")) if i >= 0), default=-1)
            fields += text.count(",", 0, end if end >= 0 else len(text))
            if end >= 0 or fields > limit:
                return fields
            continue
        for ch in text:
            if ch == '"':  # an escaped quote ("") toggles twice
                quoted = not quoted
            elif not quoted and ch == ",":
                fields += 1
                if fields > limit:
                    return fields
            elif not quoted and ch in "\r\n":
                return fields
    return fields


def read_csv(fs, path: str, encoding: str | None = None, max_columns: int | None = None) -> pd.DataFrame:
    """Read a metadata CSV as strings, detecting BOMs and failing with a clear message otherwise.

    The header line is checked first: a CSV with more than ``max_columns`` columns (default
    :func:`max_csv_columns`) is refused before its body is parsed. The file is then read twice, in 1 MB
    chunks: once through an incremental decoder (to name the first undecodable byte) and a hash, then by
    the CSV parser from the open file; the whole content is never held (a 2024 metadata file is hundreds
    of MB). ``frame.attrs["sha256"]`` is its content hash.

    Raises:
        InputError: too many columns, undecodable bytes or malformed CSV, naming the file and the
            offending position.
    """
    limit = max_csv_columns() if max_columns is None else max_columns
    digest = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        head = fh.read(4)
        encoding = _encoding_of(head, encoding)
        try:
            decoder = codecs.getincrementaldecoder(encoding)()
        except LookupError:
            raise InputError(f"unknown metadata encoding {encoding!r}") from None
        fh.seek(0)
        if _count_header_fields(fh, encoding, limit) > limit:
            raise InputError(f"{path}: more than {limit:,} columns in the header line (a metadata CSV has tens); "
                             f"refused before reading its rows. Set {MAX_CSV_COLUMNS_ENV} to allow more")
        fh.seek(4)
        offset, chunk = 0, head
        while True:
            block = chunk + fh.read((1 << 20) - len(chunk))
            chunk = b""
            digest.update(block)
            last = len(block) < (1 << 20)
            try:
                text = decoder.decode(block, final=last)
            except UnicodeDecodeError as exc:
                at = offset + exc.start
                raise InputError(
                    f"{path}: cannot decode as {encoding} (byte 0x{block[exc.start]:02x} at offset {at}); "
                    "re-save it as UTF-8 or pass --metadata-encoding (e.g. latin-1)"
                ) from None
            if "\x00" in text:
                raise InputError(f"{path}: contains NUL characters; is it really a CSV file in {encoding}?")
            offset += len(block)
            if last:
                break
    try:
        with fs.open(path, "rb") as fh:
            frame = pd.read_csv(fh, dtype=str, keep_default_na=False, encoding=encoding)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: not a readable CSV file: {exc}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    frame.attrs["sha256"] = digest.hexdigest()
    return frame


def _csv_columns(fs, path: str) -> set[str]:
    """Lower-cased header names of a CSV (BOM-aware, tolerant: used only for layout detection)."""
    with fs.open(path, "rb") as fh:
        raw = fh.read(65536)
    text = raw.decode(_encoding_of(raw, None), errors="replace")
    head = text.splitlines()[0] if text else ""
    return {c.strip().strip('"').lower() for c in head.split(",")}


def _read(fs, path: str, encoding: str | None, csvs: dict[str, str]) -> pd.DataFrame:
    """:func:`read_csv`, recording the file's content hash in ``csvs`` (for the fingerprint)."""
    frame = read_csv(fs, path, encoding)
    csvs[path] = frame.attrs["sha256"]
    return frame


@dataclasses.dataclass
class Parsed:
    """What a layout parser found in one input root.

    Attributes:
        frame: metadata rows (text), toolkit input columns renamed to their 2020 names.
        files: image files (paths), or HDF5 entries as ``container#key``.
        csvs: metadata CSVs read → their content hashes (for the fingerprint).
        containers: HDF5 files holding images (their size and mtime go into the fingerprint).
        train_only: columns of the training metadata that the test metadata lacks (empty when the
            input has no separate test metadata).
        known_duplicates: duplicate pairs the input lists.
    """

    frame: pd.DataFrame
    files: list[str]
    csvs: dict[str, str]
    containers: list[str] = dataclasses.field(default_factory=list)
    train_only: set[str] = dataclasses.field(default_factory=set)
    known_duplicates: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def _train_only(train: pd.DataFrame | None, test: pd.DataFrame | None) -> set[str]:
    """Input columns the training metadata has and the test metadata lacks (the toolkit's own label
    columns, which exist only for training rows by design, left out)."""
    if train is None or test is None:
        return set()
    return set(train.columns) - set(test.columns) - columns.INPUT_COLUMNS


# ------------------------------------------------------------------------------------ layouts


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTS)


def _list_images(fs, folder: str, recursive: bool = False) -> list[str]:
    if not fs.isdir(folder):
        return []
    found = fs.find(folder, maxdepth=None if recursive else 1)
    return sorted(p for p in found if _is_image(p) and fsutil.TMP_MARK not in p)


def _csvs_with_names(fs, root: str) -> list[str]:
    out = []
    for p in sorted(fs.find(root, maxdepth=1)):
        if p.lower().endswith(".csv") and _csv_columns(fs, p) & {"image_name", "isic_id"}:
            out.append(p)
    return out


def detect_layout(fs, root: str) -> str:
    """Name of the input layout found at ``root`` (one of :data:`LAYOUTS`).

    Raises:
        InputError: when the folder is missing or matches no layout.
    """
    if not fs.isdir(root):
        raise InputError(f"input folder {root!r} does not exist or is not a folder")
    names = {posixpath.basename(p) for p in fs.ls(root, detail=False)}
    if "train.csv" in names and fs.isdir(fsutil.join(root, "jpeg")):
        return "kaggle2020"
    if any(n.startswith("ISIC_2019_Training_GroundTruth") for n in names):
        return "isic2019"
    if names & {"train-image.hdf5", "test-image.hdf5"} and names & {"train-metadata.csv", "test-metadata.csv"}:
        return "isic2024"
    if (
        "metadata.csv" in names
        and _list_images(fs, root)
        and "isic_id" in _csv_columns(fs, fsutil.join(root, "metadata.csv"))
    ):
        return "isic-cli"
    if _csvs_with_names(fs, root):
        return "generic"
    if _list_images(fs, root):
        return PLAIN_LAYOUT
    raise InputError(
        f"{root}: no known input layout (Kaggle 2020 train.csv + jpeg/, ISIC 2019 ground truth CSV, "
        "isic-cli metadata.csv, ISIC 2024 train-image.hdf5 + train-metadata.csv, a CSV with an "
        f"image_name column, or image files ({', '.join(IMAGE_EXTS)}) in the folder itself); pass --metadata CSV"
    )


def _parse_images(fs, root: str, encoding: str | None) -> Parsed:
    """A plain folder of images: one unlabelled row per file name stem (files in the folder itself)."""
    files = _list_images(fs, root)
    names = sorted({_stem(p) for p in files})
    return Parsed(pd.DataFrame({"image_name": pd.Series(names, dtype="str")}), files, {})


def _parse_kaggle2020(fs, root: str, encoding: str | None) -> Parsed:
    frames, csvs = {}, {}
    for split in ("train", "test"):
        path = fsutil.join(root, f"{split}.csv")
        if fs.exists(path):
            f = _read(fs, path, encoding, csvs)
            f["split"] = split
            frames[split] = f
    images = _list_images(fs, fsutil.join(root, "jpeg", "train")) + _list_images(
        fs, fsutil.join(root, "jpeg", "test")
    )
    known = []
    dup_path = fsutil.join(root, DUPLICATES_CSV)
    if fs.exists(dup_path):
        dup = _read(fs, dup_path, encoding, csvs)
        if not {"image_name_1", "image_name_2"} <= set(dup.columns):
            raise InputError(f"{dup_path}: expected columns image_name_1, image_name_2, found {list(dup.columns)}")
        known = list(zip(dup["image_name_1"].str.strip(), dup["image_name_2"].str.strip(), strict=True))
    train_only = _train_only(frames.get("train"), frames.get("test"))
    return Parsed(pd.concat(frames.values(), ignore_index=True), images, csvs, train_only=train_only,
                  known_duplicates=known)


def _find_first(fs, root: str, prefix: str) -> str | None:
    for p in sorted(fs.ls(root, detail=False)):
        base = posixpath.basename(p)
        if base.startswith(prefix) and base.endswith(".csv"):
            return p
    return None


def _parse_isic2019(fs, root: str, encoding: str | None) -> Parsed:
    gt_path = _find_first(fs, root, "ISIC_2019_Training_GroundTruth")
    csvs: dict[str, str] = {}
    gt = _read(fs, gt_path, encoding, csvs)
    if "image" not in gt.columns:
        raise InputError(f"{gt_path}: expected an 'image' column, found {list(gt.columns)}")
    classes = [c for c in ISIC2019_CLASSES if c in gt.columns]
    diagnosis, malignancy = [], []
    for _, row in gt.iterrows():
        hot = [c for c in classes if str(row[c]).strip() not in ("", "0", "0.0")]
        if len(hot) == 1:
            diagnosis.append(ISIC2019_CLASSES[hot[0]][0])
            malignancy.append(ISIC2019_CLASSES[hot[0]][1] or "")
        else:  # zero or several classes set: leave unknown, the schema does not guess
            diagnosis.append("")
            malignancy.append("")
    frame = pd.DataFrame(
        {
            "image_name": gt["image"],
            "diagnosis": diagnosis,
            "benign_malignant": malignancy,
            "target": ["1" if d == "melanoma" else ("0" if d else "") for d in diagnosis],
        }
    )
    meta_path = _find_first(fs, root, "ISIC_2019_Training_Metadata")
    if meta_path:
        meta = _standard_names(_read(fs, meta_path, encoding, csvs).rename(columns={"image": "image_name"}),
                               meta_path)
        frame = frame.merge(meta.drop_duplicates("image_name"), on="image_name", how="left")
    frame["split"] = "train"
    frames = [frame]
    test_meta = _find_first(fs, root, "ISIC_2019_Test_Metadata")
    if test_meta:
        t = _standard_names(_read(fs, test_meta, encoding, csvs).rename(columns={"image": "image_name"}), test_meta)
        t["split"] = "test"
        frames.append(t)
    images = []
    for p in sorted(fs.ls(root, detail=False)):
        base = posixpath.basename(p)
        if fs.isdir(p) and base.startswith(("ISIC_2019_Training_Input", "ISIC_2019_Test_Input")):
            images += _list_images(fs, p, recursive=True)
    train_only = _train_only(frames[0], frames[1] if len(frames) > 1 else None)
    return Parsed(pd.concat(frames, ignore_index=True).fillna(""), images, csvs, train_only=train_only)


def _archive_diagnosis(frame: pd.DataFrame) -> pd.DataFrame:
    """isic-cli metadata: derive ``diagnosis``/``benign_malignant``/``target`` from archive columns."""
    if "diagnosis" not in frame.columns:
        levels = [c for c in ("diagnosis_5", "diagnosis_4", "diagnosis_3", "diagnosis_2") if c in frame.columns]
        if levels:
            frame["diagnosis"] = _deepest(frame, levels)
    if "benign_malignant" not in frame.columns and "diagnosis_1" in frame.columns:
        frame["benign_malignant"] = frame["diagnosis_1"].str.lower().where(
            frame["diagnosis_1"].str.lower().isin(["benign", "malignant"]), ""
        )
    return frame


def _standard_names(frame: pd.DataFrame, csv_path: str) -> pd.DataFrame:
    """``isic_id`` → ``image_name`` and ``anatom_site_general`` → ``anatom_site_general_challenge``."""
    if "image_name" not in frame.columns:
        if "isic_id" not in frame.columns:
            raise InputError(f"{csv_path}: needs an 'image_name' or 'isic_id' column, found {list(frame.columns)}")
        frame = frame.rename(columns={"isic_id": "image_name"})
    if "anatom_site_general" in frame.columns and "anatom_site_general_challenge" not in frame.columns:
        frame = frame.rename(columns={"anatom_site_general": "anatom_site_general_challenge"})
    return frame


def _parse_table(fs, root: str, csv_path: str, encoding: str | None) -> Parsed:
    csvs: dict[str, str] = {}
    frame = _archive_diagnosis(_standard_names(_read(fs, csv_path, encoding, csvs), csv_path))
    images = _list_images(fs, root) + _list_images(fs, fsutil.join(root, "images"))
    return Parsed(frame, images, csvs)


#: ISIC 2024 ``iddx_full`` fragments → 2020-style diagnosis (first match wins); anything else: the
#: deepest ``iddx_N`` level, lower case; a bare "Benign" is the 2020 "unknown" (benign, not specified).
IDDX_DIAGNOSES = [
    ("melanoma", "melanoma"),
    ("basal cell carcinoma", "basal cell carcinoma"),
    ("squamous cell carcinoma", "squamous cell carcinoma"),
    ("seborrheic keratosis", "seborrheic keratosis"),
    ("solar lentigo", "solar lentigo"),
    ("lichen planus like keratosis", "lichenoid keratosis"),
    ("actinic keratosis", "actinic keratosis"),
    ("dermatofibroma", "dermatofibroma"),
    ("nevus", "nevus"),
]


def _deepest(frame: pd.DataFrame, levels: list[str]) -> pd.Series:
    """Per row, the first non-blank value among ``levels`` (deepest level first), lower case; "" when none."""
    out = pd.Series("", index=frame.index, dtype="str")
    for col in levels:
        value = frame[col].astype("str").str.strip()
        out = out.where(out != "", value)
    return out.fillna("").str.lower()


def _iddx_diagnosis(frame: pd.DataFrame) -> pd.DataFrame:
    """ISIC 2024: ``diagnosis`` and ``benign_malignant`` from ``iddx_full`` / ``iddx_1``–``iddx_5`` (kept)."""
    levels = [c for c in ("iddx_5", "iddx_4", "iddx_3", "iddx_2", "iddx_1") if c in frame.columns]
    if "diagnosis" not in frame.columns and levels:
        full = frame["iddx_full"].str.lower() if "iddx_full" in frame.columns else None
        deepest = _deepest(frame, levels)
        diagnosis = deepest.where(~deepest.isin(["benign"]), "unknown")
        diagnosis = diagnosis.where(~deepest.isin(["malignant", "indeterminate"]), deepest)
        if full is not None:
            for fragment, name in reversed(IDDX_DIAGNOSES):  # reversed: the first entry wins
                diagnosis = diagnosis.where(~full.str.contains(fragment, regex=False), name)
        frame["diagnosis"] = diagnosis
    if "benign_malignant" not in frame.columns and "iddx_1" in frame.columns:
        first = frame["iddx_1"].str.lower()
        frame["benign_malignant"] = first.where(first.isin(["benign", "malignant"]), "")
    return frame


def _parse_isic2024(fs, root: str, encoding: str | None) -> list[Parsed]:
    """The 2024 layout as one part per split (each with its own HDF5 file), never concatenated:
    the training metadata alone is hundreds of MB of text."""
    parts, frames = [], {}
    for split in ("train", "test"):
        meta = fsutil.join(root, f"{split}-metadata.csv")
        container = fsutil.join(root, f"{split}-image.hdf5")
        has_meta, has_container = fs.exists(meta), fs.exists(container)
        if not has_meta and not has_container:
            continue
        csvs: dict[str, str] = {}
        if has_meta:
            f = _iddx_diagnosis(_standard_names(_read(fs, meta, encoding, csvs), meta))
            f["split"] = split
            frames[split] = f
        else:  # entries without any metadata: each becomes a no_metadata quarantine row
            f = pd.DataFrame({"image_name": pd.Series([], dtype="str"), "split": pd.Series([], dtype="str")})
        files: list[str] = []
        if has_container:
            try:
                keys = h5.list_keys(fsutil.to_url(fs, container))
            except (OSError, ValueError) as exc:
                raise InputError(f"{container}: not a readable HDF5 file ({exc})") from None
            files = [f"{container}{H5_SEP}{k}" for k in keys]
        parts.append(Parsed(f, files, csvs, [container] if has_container else []))
    if not frames:
        raise InputError(f"{root}: ISIC 2024 layout without train-metadata.csv or test-metadata.csv")
    parts[0].train_only = _train_only(frames.get("train"), frames.get("test"))
    return parts


def _parse_generic(fs, root: str, encoding: str | None) -> Parsed:
    csvs = _csvs_with_names(fs, root)
    if len(csvs) > 1:
        preferred = [p for p in csvs if posixpath.basename(p) in ("metadata.csv", "train.csv")]
        if len(preferred) != 1:
            names = ", ".join(posixpath.basename(p) for p in csvs)
            raise InputError(f"{root}: several CSVs name images ({names}); pass --metadata CSV")
        csvs = preferred
    return _parse_table(fs, root, csvs[0], encoding)


# ------------------------------------------------------------------------------- normalisation


def _blank(value) -> bool:
    return value is None or (isinstance(value, float) and pd.isna(value)) or str(value).strip() == ""


def _normalise(frame: pd.DataFrame, source: str, extras: columns.Extras = (),
               target: str | None = None) -> tuple[pd.DataFrame, dict[int, list[str]]]:
    """Bring a parsed frame to the standard columns plus the extras; returns it and per-row parse problems.

    ``target``: recompute ``target`` from the diagnosis columns under this definition (``melanoma``
    or ``malignant``) instead of reading the input's own.
    """
    # the parser's frame is modified in place, column by column (a copy of 400k × 50 text columns is
    # hundreds of MB): the caller drops it afterwards
    for col in columns.METADATA_TEXT_COLUMNS + ["split", "lesion_id", "target", "age_approx"]:
        if col not in frame.columns:
            frame[col] = ""
    for e in extras:
        if e.original not in frame.columns:
            frame[e.original] = ""
    columns.strip_columns(frame)  # vectorised over blocks of columns (a wide CSV is not converted one by one)
    problems: dict[int, list[str]] = {}

    def flag(i: int, msg: str) -> None:
        problems.setdefault(i, []).append(msg)

    for col in ("sex", "anatom_site_general_challenge", "benign_malignant", "diagnosis"):
        frame[col] = frame[col].str.lower()
    detailed = frame["anatom_site_general_challenge"]
    frame["anatom_site_detailed"] = detailed
    frame["anatom_site_general_challenge"] = detailed.map(lambda s: SITE_MAP.get(s, s))

    ages, targets = [], []
    given = frame["target"] if target is None else pd.Series("", index=frame.index)
    rows = zip(frame["age_approx"], given, frame["diagnosis"], frame["benign_malignant"], strict=True)
    for i, (age, tgt, diag, bm) in enumerate(rows):
        try:
            ages.append(None if _blank(age) else float(age))
        except ValueError:
            flag(i, f"age_approx={age!r} is not a number")
            ages.append(None)
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
    frame["age_approx"] = pd.array(ages, dtype="Float64")
    frame["target"] = pd.array(targets, dtype="Int8")
    # split: explicit column, else labelled rows train and unlabelled rows test
    has_label = frame["target"].notna()
    frame["split"] = frame["split"].str.lower().where(frame["split"] != "", "")
    frame.loc[(frame["split"] == "") & has_label, "split"] = "train"
    frame.loc[frame["split"] == "", "split"] = "test"
    frame["source"] = source
    keep = columns.METADATA_COLUMNS + ["anatom_site_detailed", "lesion_id"] + [e.original for e in extras]
    out = frame[keep]  # (copy-on-write: the columns replaced below are new, the others shared)
    for col in columns.METADATA_TEXT_COLUMNS + ["anatom_site_detailed", "lesion_id"]:
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


def _stem(path: str) -> str:
    """The image name a file (or an HDF5 entry ``container#key``) provides (Unicode NFC)."""
    if H5_SEP in path:
        return fsutil.normalise_name(path.split(H5_SEP, 1)[1])
    return fsutil.normalise_name(posixpath.splitext(posixpath.basename(path))[0])


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
    for root_url in inputs:
        fs, root = fsutil.resolve(root_url)
        if metadata:
            mfs, mpath = fsutil.resolve(metadata)
            if not mfs.exists(mpath):
                raise InputError(f"metadata file {metadata!r} does not exist")
            if not fs.isdir(root):
                raise InputError(f"input folder {root_url!r} does not exist or is not a folder")
            kind = "generic"
            parsed = _parse_table(fs, root, mpath, encoding)
        else:
            kind = layout or detect_layout(fs, root)
            parser = {
                "kaggle2020": _parse_kaggle2020,
                "isic2019": _parse_isic2019,
                "isic-cli": lambda f, r, e: _parse_table(f, r, fsutil.join(r, "metadata.csv"), e),
                "isic2024": _parse_isic2024,
                "generic": _parse_generic,
                PLAIN_LAYOUT: _parse_images,
            }[kind]
            parsed = parser(fs, root, encoding)
        source = source_name(kind, root)
        layouts.append(kind)
        for part in parsed if isinstance(parsed, list) else [parsed]:
            plain = [p for p in part.files if H5_SEP not in p]
            for p in plain + part.containers + list(part.csvs):
                size, mtime = fsutil.file_stat(fs.info(p))
                listing.append((source, posixpath.relpath(p, root), size, mtime, part.csvs.get(p, "")))
            found.append((fs, root, kind, source, part))
    extras = columns.infer_extras([p.frame for *_, p in found], set().union(*(p.train_only for *_, p in found)))
    natural = {source: NATURAL_TARGET[kind] for _, _, kind, source, _ in found if NATURAL_TARGET[kind]}
    definition = _target_definition(natural or {source: "melanoma" for *_, source, _ in found}, target)
    name_rule = False
    for fs, root, _, source, parsed in found:
        rule = target if target is not None and definition["sources"].get(source, target) != target else None
        frame, problems = _normalise(parsed.frame, source, extras, rule)
        parsed.frame = pd.DataFrame()  # release the raw text as soon as it is normalised
        recs, quar, changed = _match(fs, root, frame, problems, parsed.files, source)
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
    # image names must be unique across all inputs too (they name rows in every shard)
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
                        "detail": "image_name already used by an earlier input",
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
                           if kind == PLAIN_LAYOUT])


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


def source_name(kind: str, root: str) -> str:
    """The ``source`` value of an input: the layout's dataset name, else the folder's name."""
    return {"kaggle2020": "isic2020", "isic2019": "isic2019", "isic-cli": "isic-archive"}.get(
        kind, posixpath.basename(root.rstrip("/")) or "input")


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
