"""The ISIC 2025 challenge layout (MILK10k): lesion folders of two views, image metadata, lesion ground truth.

The release (ISIC 2025 / MILK10k training data and its benchmark test input)::

    MILK10k_Training_Input/<lesion_id>/<isic_id>.jpg  two images per lesion: one clinical close-up, one dermoscopic
    MILK10k_Training_Metadata.csv                     one row per image (17 columns, :data:`METADATA_COLUMNS`)
    MILK10k_Training_Supplement.csv                   one row per image: diagnosis_full (48 values), how it was
                                                      confirmed, invasion thickness (:data:`SUPPLEMENT_COLUMNS`)
    MILK10k_Training_GroundTruth.csv                  one row per lesion: lesion_id + the eleven 2025 classes, 0.0/1.0
    MILK10k_Test_Input/<lesion_id>/<isic_id>.jpg      the benchmark's images (no ground truth published)
    MILK10k_Test_Metadata.csv                         their metadata (the same 17 columns)

The zips unpack with or without one more top folder of the same name (``MILK10k_Training_Input/
MILK10k_Training_Input/IL_.../ISIC_....jpg``): the images are found anywhere below the input folders.

How it is read:

* one row per image; the lesion's ground-truth class is copied onto both of its images (``diagnosis_2025``, the
  class; ``diagnosis_original``, the class as published; ``diagnosis``, the image's ``diagnosis_full`` where the
  class vocabulary knows that text under the same class and malignancy, else the class's text
  (:data:`melanoma_data.vocabulary.TEXT_OF_2025`); ``benign_malignant``: malignant iff the class is one of
  :data:`melanoma_data.vocabulary.MALIGNANT_2025`; ``target``: 1 iff the class is MEL, so a ``melanoma metastasis``
  text still counts);
* a training image whose lesion has no usable ground truth (no row, a row that is not one-hot, a cell that is not
  0.0/1.0, or two different rows) is **quarantined** (``invalid_metadata``) with the reason in its
  ``diagnosis_2025`` value (e.g. ``diagnosis_2025='ground truth of lesion IL_0000001 is not one-hot: MEL, NV set'
  not in [...]``), never read as unlabelled or guessed: the schema check refuses any value that is not a class;
* a lesion with one view (its other image missing from the metadata or from the folders) is kept: its image is
  flagged with the view it lacks (``view_missing``);
* ``site`` → ``anatom_site_general_challenge`` (:data:`SITES`), a ``sex`` of ``unknown`` → blank;
  ``skin_tone_class``, ``image_type`` and the seven ``MONET_*`` concept scores by their own names; ``attribution``,
  ``copyright_license``, ``image_manipulation`` and the supplement's columns are carried as extra columns (the
  supplement's are label columns, and train-only);
* images still in their zips (``MILK10k_Training_Input.zip`` and no folder) are a clear error;
* test rows: split ``test``, unlabelled.

Checked against public material (the ``search`` corpora): the challenge page (two views per lesion, the eleven
classes and their names, the seven MONET concept groups, skin tone 0 = very dark … 5 = very light); the file and
folder names, the metadata's column order (``lesion_id,image_type,isic_id,attribution,copyright_license,
image_manipulation,age_approx,sex,skin_tone_class,site,...``, in code that reads the release), the ground truth's
``lesion_id,AKIEC,…,VASC`` header with ``0.0``/``1.0`` cells, the nested top folder of the zip, the two
``image_type`` spellings and the seven ``site`` values (``foot, genital, hand, head_neck_face, lower_extremity,
trunk, upper_extremity``, from code that one-hot encodes them). Not verified (no copy of the files here): the
supplement's exact header and the values of ``diagnosis_confirm_type`` / ``invasion_thickness_interval`` (the
synthetic writer's are plausible stand-ins), the 48 ``diagnosis_full`` strings (the writer uses those a third-party
reader lists), whether ``site`` or ``sex`` can be blank, and the licence: the dataset is published as CC BY-NC 4.0
according to the brief; each image's own licence is its ``copyright_license`` cell.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melanoma_data import columns, fsutil, vocabulary
from melanoma_data.errors import InputError
from melanoma_data.layouts.base import Layout, Parsed, find_first, list_images, read, standard_names, stem, train_only

NAME = "milk10k"
PREFIX = "MILK10k_"
TRAIN_INPUT, TEST_INPUT = "MILK10k_Training_Input", "MILK10k_Test_Input"
TRAIN_METADATA, TEST_METADATA = "MILK10k_Training_Metadata", "MILK10k_Test_Metadata"
SUPPLEMENT, GROUND_TRUTH = "MILK10k_Training_Supplement", "MILK10k_Training_GroundTruth"
CLINICAL, DERMOSCOPIC = "clinical: close-up", "dermoscopic"
#: The two views of a lesion (``image_type`` as published).
VIEWS = (CLINICAL, DERMOSCOPIC)
#: The metadata's 17 columns, in the published order (training and test metadata alike).
METADATA_COLUMNS = ("lesion_id", "image_type", "isic_id", "attribution", "copyright_license", "image_manipulation",
                    "age_approx", "sex", "skin_tone_class", "site", *columns.MONET_COLUMNS)
SUPPLEMENT_COLUMNS = ("isic_id", "diagnosis_full", "diagnosis_confirm_type", "invasion_thickness_interval")
GROUND_TRUTH_COLUMNS = ("lesion_id", *vocabulary.CLASSES_2025)
#: MILK10k's ``site`` values → the ISIC 2020 vocabulary (the detail stays in ``anatom_site_detailed``). A hand is
#: an upper extremity and a foot a lower one (MILK10k has no separate palms/soles value; HAM10000 files them alike).
SITES = {"head_neck_face": "head/neck", "trunk": "torso", "upper_extremity": "upper extremity",
         "lower_extremity": "lower extremity", "hand": "upper extremity", "foot": "lower extremity",
         "genital": "oral/genital"}


def detect(fs, root: str, names: set[str]) -> bool:
    """A file or folder named ``MILK10k_*`` (the release's CSVs or input folders)."""
    return any(n.startswith(PREFIX) for n in names)


# ------------------------------------------------------------------------------------------ reading


def _one_hot(lesion: str, cells: list[str]) -> tuple[str | None, str]:
    """The class of one ground-truth row, or None and why not."""
    hot = []
    for cls, cell in zip(vocabulary.CLASSES_2025, cells, strict=True):
        try:
            value = float(cell)
        except ValueError:
            value = -1.0
        if value not in (0.0, 1.0):
            return None, f"ground truth of lesion {lesion} has {cls}={cell!r}, not 0.0 or 1.0"
        if value == 1.0:
            hot.append(cls)
    if len(hot) == 1:
        return hot[0], ""
    return None, f"ground truth of lesion {lesion} is not one-hot: {', '.join(hot) + ' set' if hot else 'no class set'}"


def lesion_classes(gt: pd.DataFrame, path: str) -> dict[str, tuple[str | None, str]]:
    """Each lesion's class from the one-hot ground truth: ``lesion_id → (class, "")`` or ``(None, reason)``.

    Raises:
        InputError: a column of :data:`GROUND_TRUTH_COLUMNS` is missing.
    """
    missing = [c for c in GROUND_TRUTH_COLUMNS if c not in gt.columns]
    if missing:
        raise InputError(f"{path}: the ground truth lacks column(s) {', '.join(missing)} "
                         f"(expected {','.join(GROUND_TRUTH_COLUMNS)}), found {list(gt.columns)}")
    out: dict[str, tuple[str | None, str]] = {}
    cells = columns.stripped_text(gt, list(GROUND_TRUTH_COLUMNS))
    for row in cells.T:
        lesion, verdict = str(row[0]), _one_hot(str(row[0]), [str(c) for c in row[1:]])
        if not lesion:
            continue
        if lesion in out and out[lesion] != verdict:
            verdict = (None, f"lesion {lesion} has several different ground-truth rows")
        out[lesion] = verdict
    return out


def _text(cls: str, full: str) -> str:
    """The diagnosis text of an image of class ``cls`` whose ``diagnosis_full`` is ``full``."""
    entry = vocabulary.lookup(vocabulary.text_of("milk10k-full", full))
    if entry is not None and entry.class_2025 == cls and entry.malignant == (cls in vocabulary.MALIGNANT_2025):
        return entry.text  # (Bowen's disease, malignant by its text but AKIEC by its class, keeps the class text)
    return vocabulary.TEXT_OF_2025[cls]


def _rows(meta: pd.DataFrame, path: str, split: str, present: set[str],
          classes: dict[str, tuple[str | None, str]] | None, gt_name: str = "") -> pd.DataFrame:
    """One metadata table (training or test) read into the toolkit's columns."""
    frame = standard_names(meta, path).rename(columns={"site": "anatom_site_general_challenge"})
    if "lesion_id" not in frame.columns:
        raise InputError(f"{path}: needs a 'lesion_id' column (MILK10k metadata), found {list(meta.columns)}")
    if "image_type" not in frame.columns:
        frame["image_type"] = ""
    if "sex" in frame.columns:
        frame["sex"] = frame["sex"].where(frame["sex"].str.strip().str.lower() != "unknown", "")
    lesion = frame["lesion_id"].str.strip()
    view = frame["image_type"].str.strip()
    has_file = frame["image_name"].str.strip().map(fsutil.normalise_name).isin(present)
    seen: dict[str, set[str]] = {}
    for lid, v in zip(lesion[has_file], view[has_file], strict=True):
        seen.setdefault(lid, set()).add(v)
    lacking = []
    for lid, found in zip(lesion, has_file, strict=True):
        lack = [v for v in VIEWS if v not in seen.get(lid, set())]
        lacking.append(lack[0] if found and lid and len(lack) == 1 else "")
    frame["view_missing"] = lacking
    frame["split"] = split
    if classes is None:
        return frame
    blank = pd.Series("", index=frame.index)
    full = frame["diagnosis_full"].str.strip() if "diagnosis_full" in frame.columns else blank
    diagnosis, original, malignancy, target, class_2025 = [], [], [], [], []
    for lid, text in zip(lesion, full, strict=True):
        cls, why = classes.get(lid, (None, f"lesion {lid} has no row in {gt_name}" if lid else
                                     f"an image without a lesion_id has no ground truth in {gt_name}"))
        if cls is None:  # not a class: the schema check quarantines the row with this reason
            diagnosis.append("")
            original.append("")
            malignancy.append("")
            target.append("")
            class_2025.append(why)
            continue
        diagnosis.append(_text(cls, text))
        original.append(cls)
        malignancy.append("malignant" if cls in vocabulary.MALIGNANT_2025 else "benign")
        target.append("1" if cls == "MEL" else "0")
        class_2025.append(cls)
    frame["diagnosis"], frame["diagnosis_original"], frame["benign_malignant"] = diagnosis, original, malignancy
    frame["target"], frame["diagnosis_2025"] = target, class_2025
    return frame


def parse(fs, root: str, encoding: str | None) -> Parsed:
    """The training metadata (with the supplement merged on by image and the lesions' classes), the test
    metadata, and the images below both input folders.

    Raises:
        InputError: no metadata CSV, training metadata without its ground truth, a ground truth or supplement
            without its key column or classes.
    """
    csvs: dict[str, str] = {}
    images = []
    for p in sorted(fs.ls(root, detail=False)):
        if posixpath.basename(p).startswith((TRAIN_INPUT, TEST_INPUT)) and fs.isdir(p):
            images += list_images(fs, p, recursive=True)
    zipped = [posixpath.basename(p) for p in fs.ls(root, detail=False)
              if posixpath.basename(p).startswith((TRAIN_INPUT, TEST_INPUT)) and p.lower().endswith(".zip")]
    if zipped and not images:
        raise InputError(f"{root}: the images are still zipped ({', '.join(zipped)}); unzip them here first")
    present = {stem(p) for p in images}
    train_path, test_path = find_first(fs, root, TRAIN_METADATA), find_first(fs, root, TEST_METADATA)
    if train_path is None and test_path is None:
        raise InputError(f"{root}: a MILK10k folder without {TRAIN_METADATA}.csv or {TEST_METADATA}.csv")
    frames: dict[str, pd.DataFrame] = {}
    if train_path is not None:
        gt_path = find_first(fs, root, GROUND_TRUTH)
        if gt_path is None:
            raise InputError(f"{root}: {posixpath.basename(train_path)} without {GROUND_TRUTH}.csv (the lesions' "
                             "classes); restore it, or remove the training metadata to read the test part alone")
        classes = lesion_classes(read(fs, gt_path, encoding, csvs), gt_path)
        meta = read(fs, train_path, encoding, csvs)
        sup_path = find_first(fs, root, SUPPLEMENT)
        if sup_path is not None:
            sup = read(fs, sup_path, encoding, csvs)
            if "isic_id" not in sup.columns or "isic_id" not in meta.columns:
                raise InputError(f"{sup_path}: the supplement and the metadata are joined on 'isic_id'; "
                                 f"found {list(sup.columns)}")
            extra = [c for c in sup.columns if c != "isic_id" and c not in meta.columns]
            meta = meta.merge(sup[["isic_id", *extra]].drop_duplicates("isic_id"), on="isic_id", how="left")
        frames["train"] = _rows(meta, train_path, "train", present, classes, posixpath.basename(gt_path))
    if test_path is not None:
        frames["test"] = _rows(read(fs, test_path, encoding, csvs), test_path, "test", present, None)
    only = train_only(frames.get("train"), frames.get("test"))
    return Parsed(pd.concat(frames.values(), ignore_index=True).fillna(""), images, csvs, train_only=only)


# ------------------------------------------------------------------------------------ synthetic copy

#: Per class, ``diagnosis_full`` values the writer draws (a subset of the 48, as a third-party reader lists them).
DIAGNOSIS_FULL = {
    "AKIEC": ("Solar or actinic keratosis", "Squamous cell carcinoma in situ, Bowens disease"),
    "BCC": ("Basal cell carcinoma",), "BEN_OTH": ("Sebaceous hyperplasia", "Infundibular or epidermal cyst"),
    "BKL": ("Seborrheic keratosis", "Solar lentigo", "Lichen planus like keratosis"), "DF": ("Dermatofibroma",),
    "INF": ("Inflammatory or infectious diseases", "Molluscum"),
    "MAL_OTH": ("Collision - At least one malignant proliferation",), "MEL": ("Melanoma Invasive", "Melanoma in situ"),
    "NV": ("Nevus", "Blue nevus", "Nevus, Spitz"), "SCCKA": ("Squamous cell carcinoma, Invasive", "Keratoacanthoma"),
    "VASC": ("Hemangioma", "Pyogenic granuloma"),
}
_SITE_VALUES = tuple(SITES)


def _image_bytes(seed: int, clinical: bool, melanoma: bool, sizes: list[tuple[int, int]], defects: float,
                 quality: int) -> bytes:
    from melanoma_data import synth

    rng = np.random.default_rng([seed, 2025])
    spec = (synth.clinical_spec(rng, melanoma, sizes) if clinical
            else synth.random_spec(rng, melanoma, sizes, defects))
    return synth.encode_file(synth.render(spec, seed=(seed, 25)), quality=quality)


def write(root, n: int = 48, seed: int = 0, sizes: list[tuple[int, int]] | None = None, defects: float = 0.3,
          melanoma_rate: float = 0.3, test_lesions: int = 2, nested: bool = False, one_view: int = 0,
          quality: int = 90) -> list[dict[str, Any]]:
    """A synthetic MILK10k copy: the release's files, headers and cell formats (see the module docstring).

    Args:
        root: folder to write (created).
        n: training images (``n // 2`` lesions of two views, at least one).
        seed: everything is deterministic from it.
        sizes: (width, height) choices of the images (default 1024×768 and 800×600).
        defects: probability scale of the dermoscopic images' defects.
        melanoma_rate: share of MEL lesions (the others drawn from the ten other classes).
        test_lesions: lesions of the test part (``MILK10k_Test_*``, no ground truth).
        nested: write the images one folder deeper (``MILK10k_Training_Input/MILK10k_Training_Input/...``), as
            the zips unpack.
        one_view: training lesions written with their clinical image left out (file and metadata row).

    Returns:
        One dict per image written: ``image_name``, ``rel_path``, ``split``, ``target`` (1 = MEL), ``lesion_id``,
        ``diagnosis_2025``, ``image_type``, ``view_missing``.
    """
    root = Path(root)
    rng = np.random.default_rng([seed, 10])
    sizes = sizes or [(1024, 768), (800, 600)]
    others = [c for c in vocabulary.CLASSES_2025 if c != "MEL"]
    written: list[dict[str, Any]] = []
    number = 0
    for split, lesions in (("train", max(1, n // 2)), ("test", test_lesions)):
        if lesions <= 0:
            continue
        folder = TRAIN_INPUT if split == "train" else TEST_INPUT
        meta_rows, sup_rows, gt_rows = [], [], []
        offset = (0 if split == "train" else 5_000_000) + int(rng.integers(0, 400_000))
        for i in range(lesions):
            lesion = f"IL_{offset + i * 11:07d}"
            cls = "MEL" if rng.random() < melanoma_rate else str(rng.choice(others))
            person = {"age_approx": float(rng.integers(4, 18) * 5), "sex": str(rng.choice(["female", "male"])),
                      "skin_tone_class": int(rng.integers(0, 6)), "site": str(rng.choice(_SITE_VALUES))}
            full = str(rng.choice(DIAGNOSIS_FULL[cls]))
            views = VIEWS[1:] if split == "train" and i < one_view else VIEWS
            for view in views:
                number += 1
                isic = f"ISIC_{(0 if split == 'train' else 8_000_000) + number * 37 + 11:07d}"
                rel = posixpath.join(folder, *([folder] if nested else []), lesion, f"{isic}.jpg")
                path = root / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(_image_bytes(seed * 1_000_003 + number, view == CLINICAL, cls == "MEL", sizes,
                                              defects, quality))
                meta_rows.append({
                    "lesion_id": lesion, "image_type": view, "isic_id": isic, "attribution": "Synthetic clinic",
                    "copyright_license": "CC-BY-NC",
                    "image_manipulation": "instrument only" if rng.random() < 0.8 else "altered",
                    "age_approx": person["age_approx"], "sex": person["sex"],
                    "skin_tone_class": person["skin_tone_class"], "site": person["site"],
                    **{c: round(float(rng.beta(1.2, 4.0)), 6) for c in columns.MONET_COLUMNS}})
                sup_rows.append({"isic_id": isic, "diagnosis_full": full,
                                 "diagnosis_confirm_type": "histopathology" if rng.random() < 0.95
                                 else "single image expert consensus",
                                 "invasion_thickness_interval": "<0.8 mm" if full == "Melanoma Invasive" else ""})
                written.append({"image_name": isic, "rel_path": rel, "split": split, "target": int(cls == "MEL"),
                                "lesion_id": lesion, "diagnosis_2025": cls, "image_type": view,
                                "view_missing": CLINICAL if len(views) == 1 else ""})
            gt_rows.append({"lesion_id": lesion, **{c: float(c == cls) for c in vocabulary.CLASSES_2025}})
        prefix = "MILK10k_Training" if split == "train" else "MILK10k_Test"
        pd.DataFrame(meta_rows, columns=list(METADATA_COLUMNS)).to_csv(root / f"{prefix}_Metadata.csv", index=False)
        if split == "train":
            pd.DataFrame(sup_rows, columns=list(SUPPLEMENT_COLUMNS)).to_csv(root / f"{SUPPLEMENT}.csv", index=False)
            pd.DataFrame(gt_rows, columns=list(GROUND_TRUTH_COLUMNS)).to_csv(root / f"{GROUND_TRUTH}.csv",
                                                                            index=False)
    return written


LAYOUT = Layout(
    priority=23,
    duplicate_rank=1,
    name=NAME, detect=detect, parse=parse, natural_target="melanoma", write=write, source="milk10k",
    example={"sizes": [(64, 48)], "defects": 0.0, "test_lesions": 1},
    fills=("image_name", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis", "benign_malignant",
           "target", "split", "lesion_id", "diagnosis_original", "diagnosis_2025", "image_type", "view_missing",
           "skin_tone_class", *columns.MONET_COLUMNS),
    detected_by="a file or folder named `MILK10k_*`",
    reads="`MILK10k_Training_Metadata.csv` (one row per image), `MILK10k_Training_Supplement.csv` (by image), "
          "`MILK10k_Training_GroundTruth.csv` (one-hot class per lesion, copied onto both of its images), "
          "`MILK10k_Test_Metadata.csv`, the images anywhere below `MILK10k_Training_Input/` and `MILK10k_Test_Input/`; "
          "a lesion with one view is kept and flagged (`view_missing`)",
    release="the ISIC 2025 challenge (MILK10k: 5,240 lesions, one clinical close-up and one dermoscopic image each; "
            "eleven classes) and its benchmark test input; zips unpacked with or without their extra top folder",
    hint="MILK10k_Training_Metadata.csv",
    licence="CC BY-NC 4.0 (each image's own licence: its `copyright_license` cell)",
    sites=SITES,
)
