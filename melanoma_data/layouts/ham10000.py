"""The HAM10000 layout (Harvard Dataverse release): ``HAM10000_metadata`` and flat image folders, plus the ISIC 2018
Task 3 test set when present.

The release::

    HAM10000_metadata.csv | .tab | (no extension)    one row per image: lesion_id, image_id, dx, dx_type, age, sex,
                                                     localization (and, in the Dataverse release, dataset);
                                                     comma- or tab-separated (the delimiter is sniffed)
    HAM10000_images_part_1/<image_id>.jpg            600×450 dermoscopic images, split over two folders
    HAM10000_images_part_2/<image_id>.jpg
    ISIC2018_Task3_Test_Images/<image>.jpg           the ISIC 2018 Task 3 test images (``_Test_Input`` as the
                                                     challenge names the folder)
    ISIC2018_Task3_Test_GroundTruth.csv              their ground truth: in the metadata's schema (Dataverse, public
                                                     since 2023) or one-hot ``image,MEL,NV,BCC,AKIEC,BKL,DF,VASC``
                                                     (the challenge's); also read from a folder of that name

How it is read:

* ``image_id`` → ``image_name``, ``age`` → ``age_approx``, ``localization`` → ``anatom_site_general_challenge``
  (:data:`SITES`; ``unknown`` → blank, the spelling kept in ``anatom_site_detailed``), ``sex`` ``unknown`` → blank;
* ``dx`` → ``diagnosis_original`` (as published) and ``diagnosis`` / ``benign_malignant`` through the class vocabulary
  (:data:`melanoma_data.vocabulary.CODES` ``ham10000``; the one-hot test truth through ``isic2018``); ``target`` is
  derived from the text (1 = melanoma) and ``diagnosis_2025`` from its class by the ingest step;
* a row whose code the vocabulary does not know, or without any (a blank ``dx``, a one-hot row that is not one-hot)
  is **quarantined** (``invalid_metadata``) with the reason in its ``diagnosis_2025`` value (the schema check refuses
  anything that is not a 2025 class), never guessed;
* ``dx_type`` (how the diagnosis was confirmed: a label column) and ``dataset`` are carried as extra columns;
* training rows are split ``train``; the test images split ``test``, **labelled** when their ground truth is present
  (the Parquet shards keep the label; the TFRecords of the test split leave it out as for every layout), unlabelled
  rows named by their files when it is not;
* images still in their zips (``HAM10000_images_part_1.zip`` and no folder) are a clear error, and so are
  several ``HAM10000_metadata*`` files (say a ``.csv`` and a ``.tab`` copy): which one is meant is not guessed.

HAM10000's image names are ISIC ids, the names ISIC 2019 uses for the same images: duplicates across inputs are found
by the version's duplicate step, not here.

Checked against public material (the ``search`` corpora): the Dataverse description (the two image zips, the
metadata's ``lesion_id`` tracking, the ``dx`` codes and ``dx_type`` values, the test images
``ISIC2018_Task3_Test_Images.zip`` (1511) with a ground truth "in the same format as the HAM10000 data"), the metadata
header ``lesion_id,image_id,dx,dx_type,age,sex,localization`` (+ ``dataset``), the Dataverse habit of serving a
tabular upload as a tab-separated ``.tab`` or without an extension, the image folders' names, and the challenge's
one-hot test ground truth with an ``image`` column. Not verified (no copy of the files here): the exact list of
``localization`` values (:data:`SITES` holds the 15 the metadata is known for) and ``dataset`` values, whether the
Dataverse test ground truth has ``lesion_id`` values, and the licence (CC BY-NC 4.0 per the brief; one third-party
copy states CC BY-NC-SA 4.0).
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melanoma_data import vocabulary
from melanoma_data.errors import InputError
from melanoma_data.layouts.base import (
    Layout,
    Parsed,
    _encoding_of,
    list_images,
    read,
    stem,
)

NAME = "ham10000"
METADATA = "HAM10000_metadata"
IMAGES = "HAM10000_images"
TEST_IMAGES = ("ISIC2018_Task3_Test_Images", "ISIC2018_Task3_Test_Input")
TEST_TRUTH = "ISIC2018_Task3_Test_GroundTruth"
#: The metadata's columns as the Dataverse release publishes them (the Kaggle copy lacks ``dataset``).
METADATA_COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset")
#: The ISIC 2018 Task 3 one-hot ground truth's columns, in the challenge's order.
ONE_HOT_COLUMNS = ("image", "MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")
#: HAM10000's ``localization`` values → the ISIC 2020 vocabulary. The torso's parts → torso; the face, scalp, ears
#: and neck → head/neck; ``acral`` (palms and soles) → palms/soles; a hand or a foot (listed apart from ``acral``)
#: → its extremity; ``genital`` → oral/genital; ``unknown`` → blank.
SITES = {"abdomen": "torso", "back": "torso", "chest": "torso", "trunk": "torso", "face": "head/neck",
         "scalp": "head/neck", "ear": "head/neck", "neck": "head/neck", "acral": "palms/soles",
         "hand": "upper extremity", "foot": "lower extremity", "upper extremity": "upper extremity",
         "lower extremity": "lower extremity", "genital": "oral/genital", "unknown": ""}


def detect(fs, root: str, names: set[str]) -> bool:
    """A file named ``HAM10000_metadata*`` or a folder ``HAM10000_images*``."""
    return any(n.startswith((METADATA, IMAGES)) for n in names)


# ------------------------------------------------------------------------------------ reading files


def _separator(fs, path: str) -> str:
    """``\\t`` when the header line has more tabs than commas, else ``,``."""
    with fs.open(path, "rb") as fh:
        raw = fh.read(65536)
    text = raw.decode(_encoding_of(raw, None), errors="replace")
    head = text.splitlines()[0] if text else ""
    return "\t" if head.count("\t") > head.count(",") else ","


def read_table(fs, path: str, encoding: str | None, csvs: dict[str, str]) -> pd.DataFrame:
    """A comma- or tab-separated metadata table (the delimiter sniffed from its header line), as text, its content
    hash recorded in ``csvs`` (for the fingerprint)."""
    return read(fs, path, encoding, csvs, sep=_separator(fs, path))


def _files(fs, root: str, prefix: str) -> list[str]:
    """Plain files directly in ``root`` whose names start with ``prefix`` (sorted)."""
    return sorted(p for p in fs.ls(root, detail=False)
                  if posixpath.basename(p).startswith(prefix) and not fs.isdir(p))


def _truth_file(fs, root: str) -> str | None:
    """The test ground truth: ``ISIC2018_Task3_Test_GroundTruth*`` in ``root``, else in a folder of that name.

    Raises:
        InputError: several such files.
    """
    found = _files(fs, root, TEST_TRUTH)
    if not found:
        for p in sorted(fs.ls(root, detail=False)):
            if posixpath.basename(p).startswith(TEST_TRUTH) and fs.isdir(p):
                found = _files(fs, p, TEST_TRUTH)
                break
    if len(found) > 1:
        raise InputError(f"{root}: several test ground-truth files ({', '.join(posixpath.basename(p) for p in found)})"
                         "; keep the one to read")
    return found[0] if found else None


# ------------------------------------------------------------------------------------ reading rows


def _label(frame: pd.DataFrame, codes: list[str], dataset: str, path: str) -> pd.DataFrame:
    """``diagnosis_original``, ``diagnosis``, ``benign_malignant`` from each row's code; a row whose code is blank
    or unknown gets its reason in ``diagnosis_2025`` (quarantined by the schema check)."""
    texts = [vocabulary.text_of(dataset, c) for c in codes]
    known = [vocabulary.lookup(t) is not None for t in texts]
    frame["diagnosis_original"] = codes
    frame["diagnosis"] = [t if k else "" for t, k in zip(texts, known, strict=True)]
    frame["benign_malignant"] = [vocabulary.benign_malignant(t) if k else "" for t, k in zip(texts, known, strict=True)]
    frame["diagnosis_2025"] = [
        "" if k else (f"{posixpath.basename(path)}: diagnosis code {c!r} is not in the {dataset} vocabulary" if c
                      else f"{posixpath.basename(path)}: no diagnosis code (dx) given")
        for c, k in zip(codes, known, strict=True)]
    return frame


def _metadata_rows(table: pd.DataFrame, path: str, split: str) -> pd.DataFrame:
    """Rows in the metadata schema (``HAM10000_metadata``, or the Dataverse test ground truth)."""
    missing = [c for c in ("image_id", "dx") if c not in table.columns]
    if missing:
        raise InputError(f"{path}: the HAM10000 metadata lacks column(s) {', '.join(missing)} "
                         f"(expected {','.join(METADATA_COLUMNS[:7])}), found {list(table.columns)}")
    frame = table.rename(columns={"image_id": "image_name", "age": "age_approx",
                                  "localization": "anatom_site_general_challenge"})
    if "sex" in frame.columns:
        frame["sex"] = frame["sex"].where(frame["sex"].str.strip().str.lower() != "unknown", "")
    frame = _label(frame, frame["dx"].str.strip().tolist(), "ham10000", path).drop(columns=["dx"])
    frame["split"] = split
    return frame


def _one_hot_rows(table: pd.DataFrame, path: str) -> pd.DataFrame:
    """Test rows from the challenge's one-hot ground truth."""
    missing = [c for c in ONE_HOT_COLUMNS if c not in table.columns]
    if missing:
        raise InputError(f"{path}: the ISIC 2018 Task 3 ground truth lacks column(s) {', '.join(missing)} "
                         f"(expected {','.join(ONE_HOT_COLUMNS)}), found {list(table.columns)}")
    classes = ONE_HOT_COLUMNS[1:]
    codes, problems = [], []
    for _, row in table.iterrows():
        cells = [str(row[c]).strip() for c in classes]
        hot = [c for c, v in zip(classes, cells, strict=True) if v not in ("0", "0.0")]
        ok = len(hot) == 1 and cells[classes.index(hot[0])] in ("1", "1.0")
        codes.append(hot[0] if ok else "")
        set_cells = ", ".join(f"{c}={v}" for c, v in zip(classes, cells, strict=True) if c in hot) or "no class set"
        problems.append("" if ok else f"{posixpath.basename(path)}: the ground truth of {row['image']} is not one-hot "
                                      f"({set_cells})")
    frame = pd.DataFrame({"image_name": table["image"]})
    frame = _label(frame, codes, "isic2018", path)
    frame["diagnosis_2025"] = [p or d for p, d in zip(problems, frame["diagnosis_2025"], strict=True)]
    frame["split"] = "test"
    return frame


def parse(fs, root: str, encoding: str | None) -> Parsed:
    """The metadata (training rows), the test ground truth (test rows, labelled) or, without it, one unlabelled test
    row per test image, and the images of both.

    Raises:
        InputError: no metadata file or several, a table without its key columns, or one in neither ground-truth
            schema.
    """
    csvs: dict[str, str] = {}
    images, test_images = [], []
    for p in sorted(fs.ls(root, detail=False)):
        base = posixpath.basename(p)
        if base.startswith(IMAGES) and fs.isdir(p):
            images += list_images(fs, p, recursive=True)
        elif base.startswith(TEST_IMAGES) and fs.isdir(p):
            test_images += list_images(fs, p, recursive=True)
    zipped = [posixpath.basename(p) for p in fs.ls(root, detail=False)
              if posixpath.basename(p).startswith((IMAGES, *TEST_IMAGES)) and p.lower().endswith(".zip")]
    if zipped and not images:
        raise InputError(f"{root}: the images are still zipped ({', '.join(zipped)}); unzip them here first")
    metas = _files(fs, root, METADATA)
    if not metas:
        raise InputError(f"{root}: HAM10000 images without {METADATA}.csv / .tab (the rows and their diagnoses)")
    if len(metas) > 1:
        raise InputError(f"{root}: several metadata files ({', '.join(posixpath.basename(p) for p in metas)}); "
                         "keep the one to read")
    frames = [_metadata_rows(read_table(fs, metas[0], encoding, csvs), metas[0], "train")]
    truth = _truth_file(fs, root)
    if truth is not None:
        table = read_table(fs, truth, encoding, csvs)
        if "image_id" in table.columns:
            frames.append(_metadata_rows(table, truth, "test"))
        elif "image" in table.columns:
            frames.append(_one_hot_rows(table, truth))
        else:
            raise InputError(f"{truth}: neither the HAM10000 metadata schema (image_id, dx, ...) nor the one-hot "
                             f"ISIC 2018 ground truth ({','.join(ONE_HOT_COLUMNS)}); found {list(table.columns)}")
    elif test_images:
        names = sorted({stem(p) for p in test_images})
        frames.append(pd.DataFrame({"image_name": pd.Series(names, dtype="str"), "split": "test"}))
    return Parsed(pd.concat(frames, ignore_index=True).fillna(""), images + test_images, csvs)


# ------------------------------------------------------------------------------------ synthetic copy

_DX = ("nv", "bkl", "bcc", "akiec", "vasc", "df")
_DX_TYPES = ("histo", "follow_up", "consensus", "confocal")
_DATASETS = ("vidir_modern", "vidir_molemax", "rosendahl", "vienna_dias")


def write(root, n: int = 48, seed: int = 0, sizes: list[tuple[int, int]] | None = None, defects: float = 0.3,
          melanoma_rate: float = 0.2, images_per_lesion: float = 1.4, test_n: int = 2, test_truth: str | None = None,
          tab: bool = False, dataset_column: bool = True, quality: int = 90) -> list[dict[str, Any]]:
    """A synthetic HAM10000 copy in the Dataverse shape (see the module docstring).

    Args:
        root: folder to write (created).
        n: training images (lesions of one or more images each), split over the two image folders.
        seed: everything is deterministic from it.
        sizes: (width, height) choices (default 600×450, as released).
        defects: probability scale of hair, vignette, casts and rotations.
        melanoma_rate: share of ``mel`` lesions (the others drawn from the six other codes).
        images_per_lesion: mean images per lesion.
        test_n: ISIC 2018 Task 3 test images (``ISIC2018_Task3_Test_Images/``).
        test_truth: their ground truth: ``metadata`` (the Dataverse file, in the metadata schema), ``onehot`` (the
            challenge's) or None (the images alone: unlabelled test rows).
        tab: write the metadata tab-separated as ``HAM10000_metadata.tab`` (else ``HAM10000_metadata.csv``).
        dataset_column: include the Dataverse release's ``dataset`` column.

    Returns:
        One dict per image written: ``image_name``, ``rel_path``, ``split``, ``target`` (1 = mel: the label drawn,
        carried by the test files only with ``test_truth``), ``lesion_id``, ``dx``, ``localization``.
    """
    from melanoma_data import synth

    if test_truth not in (None, "metadata", "onehot"):
        raise ValueError(f"test_truth must be 'metadata', 'onehot' or None, got {test_truth!r}")
    root = Path(root)
    rng = np.random.default_rng([seed, 10000])
    sizes = sizes or [(600, 450)]
    written: list[dict[str, Any]] = []
    tables: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    lesion, left, number = 0, 0, 0
    for split, count in (("train", n), ("test", test_n)):
        left = 0
        for i in range(count):
            if left == 0:
                lesion += 1
                left = max(1, int(rng.poisson(images_per_lesion)))
                dx = "mel" if rng.random() < melanoma_rate else str(rng.choice(_DX))
                row = {"lesion_id": f"HAM_{lesion * 3 + 17:07d}" if split == "train" else f"HAMTEST_{lesion:07d}",
                       "dx": dx, "dx_type": "histo" if dx == "mel" else str(rng.choice(_DX_TYPES)),
                       "age": "" if rng.random() < 0.05 else f"{float(rng.integers(1, 18) * 5):.1f}",
                       "sex": str(rng.choice(["female", "male", "male", "unknown"])),
                       "localization": str(rng.choice(list(SITES))), "dataset": str(rng.choice(_DATASETS))}
            left -= 1
            number += 1
            name = f"ISIC_{(24306 if split == 'train' else 34524) + number * 3:07d}"
            folder = (f"{IMAGES}_part_{1 if i < count / 2 else 2}" if split == "train" else TEST_IMAGES[0])
            spec = synth.random_spec(np.random.default_rng([seed, number, 1]), row["dx"] == "mel", sizes, defects)
            path = root / folder / f"{name}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(synth.encode_file(synth.render(spec, seed=(seed, number)), quality=quality))
            tables[split].append({**row, "image_id": name})
            written.append({"image_name": name, "rel_path": f"{folder}/{name}.jpg", "split": split,
                            "labelled": split == "train" or test_truth is not None,
                            "target": int(row["dx"] == "mel"), "lesion_id": row["lesion_id"], "dx": row["dx"],
                            "localization": row["localization"]})
    header = list(METADATA_COLUMNS if dataset_column else METADATA_COLUMNS[:7])
    train = pd.DataFrame(tables["train"], columns=header)
    if tab:
        train.to_csv(root / f"{METADATA}.tab", sep="\t", index=False)
    else:
        train.to_csv(root / f"{METADATA}.csv", index=False)
    if test_truth == "metadata" and tables["test"]:
        pd.DataFrame(tables["test"], columns=header).to_csv(root / f"{TEST_TRUTH}.csv", index=False)
    elif test_truth == "onehot" and tables["test"]:
        pd.DataFrame([{"image": r["image_id"], **{c: float(c.lower() == r["dx"]) for c in ONE_HOT_COLUMNS[1:]}}
                      for r in tables["test"]], columns=list(ONE_HOT_COLUMNS)).to_csv(root / f"{TEST_TRUTH}.csv",
                                                                                     index=False)
    return written


LAYOUT = Layout(
    priority=27,
    duplicate_rank=2,
    name=NAME, detect=detect, parse=parse, natural_target="melanoma", write=write, source="ham10000",
    example={"sizes": [(64, 48)], "defects": 0.0, "test_n": 2, "test_truth": "onehot"},
    fills=("image_name", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis", "benign_malignant",
           "target", "split", "lesion_id", "diagnosis_original"),
    detected_by="a file named `HAM10000_metadata*` or a folder `HAM10000_images*`",
    reads="`HAM10000_metadata` (`.csv`, or tab-separated `.tab`: the delimiter is sniffed), the images below "
          "`HAM10000_images_part_1/` and `_part_2/`; the ISIC 2018 Task 3 test images (`ISIC2018_Task3_Test_Images/`) "
          "with `ISIC2018_Task3_Test_GroundTruth.csv` (metadata schema or one-hot) as labelled `test` rows, or "
          "unlabelled without it",
    release="HAM10000 as the Harvard Dataverse publishes it (doi:10.7910/DVN/DBW86T: 10,015 dermoscopic images, "
            "seven `dx` codes, with the ISIC 2018 Task 3 test set and its ground truth); the Kaggle copy reads too",
    hint="HAM10000_metadata.csv",
    licence="CC BY-NC 4.0",
    sites=SITES,
)
