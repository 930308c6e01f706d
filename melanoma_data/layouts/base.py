"""What every layout module shares: the :class:`Layout` record, the parsed result, and the file readers.

A layout module reads one input root into :class:`Parsed` text rows (its own column names renamed to the
ISIC 2020 names); normalisation, validation and the pairing of rows with files happen afterwards, in
:mod:`melanoma_data.ingest`, the same for every layout.
"""

from __future__ import annotations

import codecs
import dataclasses
import hashlib
import os
import posixpath
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from melanoma_data import columns, fsutil
from melanoma_data.errors import InputError

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp", ".gif")
#: Separator between an HDF5 container and an entry key in input paths (``train-image.hdf5#ISIC_0015670``).
H5_SEP = "#"


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


#: ``detect(fs, root, names)``: does the folder ``root`` (whose entries' base names are ``names``) look like me.
Detect = Callable[[Any, str, set[str]], bool]
#: ``parse(fs, root, encoding)``: the rows and files of ``root`` (one part, or one per split).
Parse = Callable[[Any, str, "str | None"], "Parsed | list[Parsed]"]
#: ``write(root, n, seed, **options)``: a synthetic copy of the layout; returns one dict per image written
#: with at least ``image_name`` (the drawn image), ``rel_path`` (where it lies in ``root``), ``split`` and
#: ``target`` (the label drawn; the files carry it on ``train`` rows only, unless ``labelled`` says otherwise: a
#: release whose official test part comes with its labels, as Derm7pt's and HAM10000's 2018 test set do).
Write = Callable[..., list[dict[str, Any]]]
#: ``synth_entry(name, row, split, i)`` → ``(split, rel_path, {csv file: row})``: how a layout of one file per
#: image lays out one synthetic image (``row``: its drawn metadata; ``split``: its patient's drawn split).
SynthEntry = Callable[[str, dict[str, Any], str, int], tuple[str, str, dict[str, dict[str, Any]]]]


@dataclasses.dataclass(frozen=True)
class Layout:
    """One input layout: how it is recognised, how it is read, and what it means.

    Attributes:
        name: the layout's name (``--layout``, the manifest's ``inputs[].layout``).
        detect: does a folder look like this layout (:data:`Detect`); tried in registration order.
        parse: read a folder of this layout (:data:`Parse`).
        natural_target: what ``target`` means in the layout's own metadata (``melanoma``,
            ``malignant``) or None when it has no labels.
        preset: the name of the :data:`melanoma_data.config.PRESETS` entry chosen when every input is
            in this layout (``preprocess`` without ``--preset``), or None.
        source: the rows' ``source`` value (the dataset's name), or None: the input folder's name.
        write: its synthetic writer (:data:`Write`).
        synth_entry: for a layout of one file per image, how :func:`melanoma_data.synth.write_dataset`
            lays out each image (:data:`SynthEntry`); None for a layout with its own writer.
        example: options of ``write`` that keep a synthetic copy tiny (the round-trip contract test).
        fills: the toolkit's metadata columns its files can fill (the column reference).
        detected_by, reads, release: one line each for the layout reference (how it is recognised, the
            files it reads, the release or tool whose shape it follows).
        hint: how the "no known layout" message names it.
        priority: where detection tries it (lower first): the specific shapes (10–49) before a CSV that names
            images (90) and a bare folder of images (100). Two layouts never share a priority.
        licence: the dataset's licence as its release states it (recorded in the manifest and the EDA report),
            "" when the input's own files say (a folder of images, a user's CSV).
        image_type: the view of its images when its rows do not say (``clinical: close-up`` for smartphone
            photos; None: ``dermoscopic`` unless a row's ``image_type`` says otherwise). Decides the op policy.
        duplicate_rank: where its copy of an image found in several inputs ranks (lower is kept; None: after every
            ranked layout), :data:`melanoma_data.ingest.SOURCE_PRIORITY`.
        sites: its body-site spellings (lower case) → the ISIC 2020 vocabulary, added to
            :data:`melanoma_data.ingest.SITE_MAP` (the detail stays in ``anatom_site_detailed``).
    """

    name: str
    detect: Detect
    parse: Parse
    natural_target: str | None
    write: Write
    detected_by: str
    reads: str
    release: str
    hint: str
    priority: int = 50
    preset: str | None = None
    source: str | None = None
    synth_entry: SynthEntry | None = None
    example: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    fills: Sequence[str] = ()
    licence: str = ""
    image_type: str | None = None
    sites: Mapping[str, str] = dataclasses.field(default_factory=dict)
    duplicate_rank: int | None = None

    def source_name(self, root: str) -> str:
        """The ``source`` value of an input in this layout: the dataset's name, else the folder's name."""
        return self.source or posixpath.basename(root.rstrip("/")) or "input"


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


def _count_header_fields(fh, encoding: str, limit: int, sep: str = ",") -> int:
    """Fields in the first CSV record (quotes respected), read in 64 kB pieces; stops counting above ``limit``."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
    fields, quoted = 1, False
    while block := fh.read(1 << 16):
        text = decoder.decode(block)
        if not quoted and '"' not in text:  # the common case: count separators up to the line end
            end = min((i for i in (text.find("\n"), text.find("\r")) if i >= 0), default=-1)
            fields += text.count(sep, 0, end if end >= 0 else len(text))
            if end >= 0 or fields > limit:
                return fields
            continue
        for ch in text:
            if ch == '"':  # an escaped quote ("") toggles twice
                quoted = not quoted
            elif not quoted and ch == sep:
                fields += 1
                if fields > limit:
                    return fields
            elif not quoted and ch in "\r\n":
                return fields
    return fields


def read_csv(fs, path: str, encoding: str | None = None, max_columns: int | None = None,
             sep: str = ",") -> pd.DataFrame:
    """Read a metadata CSV (or, with ``sep="\\t"``, a tab-separated table) as strings, detecting BOMs and failing
    with a clear message otherwise.

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
        if _count_header_fields(fh, encoding, limit, sep) > limit:
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
            frame = pd.read_csv(fh, sep=sep, dtype=str, keep_default_na=False, encoding=encoding)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise InputError(f"{path}: not a readable CSV file: {exc}") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    frame.attrs["sha256"] = digest.hexdigest()
    return frame


def csv_columns(fs, path: str) -> set[str]:
    """Lower-cased header names of a CSV (BOM-aware, tolerant: used only for layout detection)."""
    with fs.open(path, "rb") as fh:
        raw = fh.read(65536)
    text = raw.decode(_encoding_of(raw, None), errors="replace")
    head = text.splitlines()[0] if text else ""
    return {c.strip().strip('"').lower() for c in head.split(",")}


def read(fs, path: str, encoding: str | None, csvs: dict[str, str], sep: str = ",") -> pd.DataFrame:
    """:func:`read_csv`, recording the file's content hash in ``csvs`` (for the fingerprint)."""
    frame = read_csv(fs, path, encoding, sep=sep)
    csvs[path] = frame.attrs["sha256"]
    return frame


def read_with(fs, path: str, encoding: str | None, csvs: dict[str, str], required: Sequence[str],
              what: str) -> pd.DataFrame:
    """:func:`read`, then a clear error when the table lacks one of the ``required`` columns (``what``: how the
    message names the file, e.g. ``Derm7pt's meta.csv``).

    Raises:
        InputError: a required column is missing (the message lists them and the columns found).
    """
    frame = read(fs, path, encoding, csvs)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise InputError(f"{path}: {what} needs the columns {', '.join(required)}; missing {', '.join(missing)} "
                         f"(found {list(frame.columns)})")
    return frame


def train_only(train: pd.DataFrame | None, test: pd.DataFrame | None) -> set[str]:
    """Input columns the training metadata has and the test metadata lacks (the toolkit's own label
    columns, which exist only for training rows by design, left out)."""
    if train is None or test is None:
        return set()
    return set(train.columns) - set(test.columns) - columns.INPUT_COLUMNS


# ------------------------------------------------------------------------------------ files


def is_image(path: str) -> bool:
    """True for a file name with one of :data:`IMAGE_EXTS`."""
    return path.lower().endswith(IMAGE_EXTS)


def list_images(fs, folder: str, recursive: bool = False) -> list[str]:
    """The image files of ``folder`` (sorted; the toolkit's own temporary files left out)."""
    if not fs.isdir(folder):
        return []
    found = fs.find(folder, maxdepth=None if recursive else 1)
    return sorted(p for p in found if is_image(p) and fsutil.TMP_MARK not in p)


def csvs_with_names(fs, root: str) -> list[str]:
    """The CSVs directly in ``root`` with an ``image_name`` or ``isic_id`` column."""
    out = []
    for p in sorted(fs.find(root, maxdepth=1)):
        if p.lower().endswith(".csv") and csv_columns(fs, p) & {"image_name", "isic_id"}:
            out.append(p)
    return out


def find_first(fs, root: str, prefix: str) -> str | None:
    """The first CSV (by name) directly in ``root`` whose name starts with ``prefix``."""
    for p in sorted(fs.ls(root, detail=False)):
        base = posixpath.basename(p)
        if base.startswith(prefix) and base.endswith(".csv"):
            return p
    return None


def stem(path: str) -> str:
    """The image name a file (or an HDF5 entry ``container#key``) provides (Unicode NFC)."""
    if H5_SEP in path:
        return fsutil.normalise_name(path.split(H5_SEP, 1)[1])
    return fsutil.normalise_name(posixpath.splitext(posixpath.basename(path))[0])


# ------------------------------------------------------------------------------ shared readings


def standard_names(frame: pd.DataFrame, csv_path: str) -> pd.DataFrame:
    """``isic_id`` → ``image_name`` and ``anatom_site_general`` → ``anatom_site_general_challenge``."""
    if "image_name" not in frame.columns:
        if "isic_id" not in frame.columns:
            raise InputError(f"{csv_path}: needs an 'image_name' or 'isic_id' column, found {list(frame.columns)}")
        frame = frame.rename(columns={"isic_id": "image_name"})
    if "anatom_site_general" in frame.columns and "anatom_site_general_challenge" not in frame.columns:
        frame = frame.rename(columns={"anatom_site_general": "anatom_site_general_challenge"})
    return frame


def deepest(frame: pd.DataFrame, levels: list[str]) -> pd.Series:
    """Per row, the first non-blank value among ``levels`` (deepest level first), lower case; "" when none."""
    out = pd.Series("", index=frame.index, dtype="str")
    for col in levels:
        value = frame[col].astype("str").str.strip()
        out = out.where(out != "", value)
    return out.fillna("").str.lower()


def archive_diagnosis(frame: pd.DataFrame) -> pd.DataFrame:
    """isic-cli metadata: derive ``diagnosis``/``benign_malignant``/``target`` from archive columns."""
    if "diagnosis" not in frame.columns:
        levels = [c for c in ("diagnosis_5", "diagnosis_4", "diagnosis_3", "diagnosis_2") if c in frame.columns]
        if levels:
            frame["diagnosis"] = deepest(frame, levels)
    if "benign_malignant" not in frame.columns and "diagnosis_1" in frame.columns:
        frame["benign_malignant"] = frame["diagnosis_1"].str.lower().where(
            frame["diagnosis_1"].str.lower().isin(["benign", "malignant"]), ""
        )
    return frame


def parse_table(fs, root: str, csv_path: str, encoding: str | None) -> Parsed:
    """One metadata CSV (2020 or archive column names) and the images in ``root`` and ``root/images``."""
    csvs: dict[str, str] = {}
    frame = archive_diagnosis(standard_names(read(fs, csv_path, encoding, csvs), csv_path))
    images = list_images(fs, root) + list_images(fs, fsutil.join(root, "images"))
    return Parsed(frame, images, csvs)
