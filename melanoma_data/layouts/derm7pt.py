"""The Derm7pt (seven-point checklist) layout: ``release_v0/meta/meta.csv``, the official split, ``images/``.

One case of ``meta/meta.csv`` is one lesion with a clinical and a dermoscopic image (the ``clinic`` and ``derm``
columns: paths under ``images/``). Each case gives one row per image, both sharing ``lesion_id`` (the case's
``case_num``, as text) and the case's metadata; ``image_type`` says the view. A case whose ``clinic`` path repeats
its ``derm`` path (the release's ``notes`` say so for a few) has one image: one ``dermoscopic`` row with
``view_missing = clinical: close-up`` (kept, flagged). ``meta/{train,valid,test}_indexes.csv`` (one column
``indexes``: 0-based positions of ``meta.csv`` rows) give the official split, kept as published in
``split_official``; the toolkit's ``split`` is ``test`` for the official test cases (labelled: the release
publishes their diagnoses) and ``train`` for the others, and :func:`melanoma_data.folds.assign_files` keeps the
official ``valid`` cases as the last cross-validation fold on their own. Cases listed in no index file are
``train`` with a blank ``split_official``.

Image names are the files' stems as the listing spells them: a ``meta.csv`` path is looked up exactly
(case-sensitively) under ``images/``, else case-insensitively when exactly one file matches (``.jpg`` in the
CSV for a ``.JPG`` on disk: the file's real name wins). Derm7pt's file names carry their folder's code
(``NEL/NEL025.JPG``), so stems do not repeat across folders; if two files share a stem all the same, the file a
row names is the one its row is paired with (listed first) and the other becomes an ``ambiguous_file`` quarantine
row; two rows naming one stem are both ``duplicate_name`` quarantine rows. Nothing is guessed.

Diagnoses: ``diagnosis`` is the vocabulary's text (:data:`melanoma_data.vocabulary.CODES` ``["derm7pt"]``; the
melanoma sub-types are all ``melanoma``), the code as published stays in ``diagnosis_original``; a code the
vocabulary does not know (or a blank one) makes the row an ``invalid_metadata`` quarantine row saying so (the note
travels in ``target``, which is otherwise left blank for the ingest step to derive). Body sites: :data:`SITES`.

Checked against the real format (public sources, offline): the 19 ``meta.csv`` column names and their order, the
``clinic``/``derm`` path shape with mixed ``.JPG``/``.jpg`` (``NEL/NEL025.JPG``, ``NEL/Nel026.jpg``), the three
index files and their ``indexes`` column (the authors' ``derm7pt`` loader, jeremykawahara/derm7pt, and a third
party's loader), the 1011 cases (413 train, 203 valid, 395 test), the diagnosis strings, the ``location`` values
(``abdomen, acral, back, buttocks, chest, genital areas, head neck, lower limbs, upper limbs``), ``elevation`` and
``management`` values. Not checked: the exact wording of ``notes`` and the content of ``case_id`` (both carried
as extra text columns), and the site's licence text (registration at derm.cs.sfu.ca; no open licence stated).
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melanoma_data import fsutil, vocabulary
from melanoma_data.errors import InputError
from melanoma_data.layouts.base import Layout, Parsed, list_images, read, read_with, stem

NAME = "derm7pt"
#: The release folder (the zip's top folder); the input may be it or its parent.
RELEASE = "release_v0"
#: ``meta/meta.csv``'s columns as published, in order.
META_COLUMNS = ("case_num", "diagnosis", "seven_point_score", "pigment_network", "streaks", "pigmentation",
                "regression_structures", "dots_and_globules", "blue_whitish_veil", "vascular_structures",
                "level_of_diagnostic_difficulty", "elevation", "location", "sex", "management", "clinic", "derm",
                "case_id", "notes")
#: The columns a case cannot be read without.
REQUIRED = ("case_num", "diagnosis", "clinic", "derm")
#: The official split: its value in ``split_official`` → the index file under ``meta/``.
SPLIT_FILES = {"train": "train_indexes.csv", "valid": "valid_indexes.csv", "test": "test_indexes.csv"}
CLINICAL, DERMOSCOPIC = "clinical: close-up", "dermoscopic"
#: Derm7pt's ``location`` values → the ISIC 2020 sites (the spelling stays in ``anatom_site_detailed``). Acral
#: skin is palms and soles; the buttocks count as (posterior) torso, as in the ISIC archive.
SITES = {"abdomen": "torso", "back": "torso", "chest": "torso", "buttocks": "torso", "head neck": "head/neck",
         "upper limbs": "upper extremity", "lower limbs": "lower extremity", "acral": "palms/soles",
         "genital areas": "oral/genital"}


def _meta(fs, root: str) -> str | None:
    """``meta/meta.csv`` of the release at ``root`` or at ``root/release_v0``, or None."""
    for base in (root, fsutil.join(root, RELEASE)):
        path = fsutil.join(base, "meta", "meta.csv")
        if fs.exists(path):
            return path
    return None


def detect(fs, root: str, names: set[str]) -> bool:
    """A ``meta/meta.csv`` in the folder or in its ``release_v0/``."""
    return bool(names & {"meta", RELEASE}) and _meta(fs, root) is not None


def _official_split(fs, meta_dir: str, n: int, encoding: str | None, csvs: dict[str, str]) -> list[str]:
    """Each case's official split ("" for a case no index file lists).

    Raises:
        InputError: an index file without ``indexes``, a value that is not a row number, out of range, or listed
            twice.
    """
    out = [""] * n
    seen: dict[int, str] = {}
    for split, fname in SPLIT_FILES.items():
        path = fsutil.join(meta_dir, fname)
        if not fs.exists(path):
            continue
        frame = read(fs, path, encoding, csvs)
        if "indexes" not in frame.columns:
            raise InputError(f"{path}: expected an 'indexes' column (0-based rows of meta.csv), "
                             f"found {list(frame.columns)}")
        for line, raw in enumerate(frame["indexes"].str.strip(), start=2):
            try:
                number = float(raw)
                if not number.is_integer():
                    raise ValueError
            except ValueError:
                raise InputError(f"{path} line {line}: {raw!r} is not a row number of meta.csv") from None
            k = int(number)
            if not 0 <= k < n:
                raise InputError(f"{path} line {line}: index {k} is out of range: meta.csv has {n} cases "
                                 f"(indexes 0 to {n - 1})")
            if k in seen:
                raise InputError(f"{path} line {line}: case index {k} is listed in {seen[k]} already")
            seen[k] = fname
            out[k] = split
    return out


def _resolver(files: list[str], images: str):
    """``path in meta.csv`` → the listed file it names (exact, else the one case-insensitive match) or None."""
    exact = {posixpath.relpath(p, images): p for p in files}
    folded: dict[str, list[str]] = {}
    for rel, p in exact.items():
        folded.setdefault(rel.lower(), []).append(p)

    def resolve(path: str) -> str | None:
        hit = exact.get(path)
        if hit is None:
            near = folded.get(path.lower(), [])
            hit = near[0] if len(near) == 1 else None
        return hit

    return resolve


def parse(fs, root: str, encoding: str | None) -> Parsed:
    """Two rows per case (one per view; one row for a case with one image), the official split, the images.

    Raises:
        InputError: ``meta.csv`` missing or without a required column, or a malformed index file.
    """
    meta_path = _meta(fs, root)
    if meta_path is None:
        raise InputError(f"{root}: no meta/meta.csv (Derm7pt's {RELEASE}/meta/meta.csv)")
    meta_dir = posixpath.dirname(meta_path)
    base = posixpath.dirname(meta_dir)
    csvs: dict[str, str] = {}
    meta = read_with(fs, meta_path, encoding, csvs, REQUIRED, "Derm7pt's meta.csv")
    official = _official_split(fs, meta_dir, len(meta), encoding, csvs)
    images = fsutil.join(base, "images")
    files = list_images(fs, images, recursive=True)
    resolve = _resolver(files, images)
    carried = [c for c in meta.columns if c not in ("case_num", "diagnosis", "location")]
    rows, named = [], []
    for i, rec in enumerate(meta.to_dict("records")):
        case, code = rec["case_num"].strip(), rec["diagnosis"].strip()
        text = vocabulary.text_of(NAME, code)
        common = {c: rec[c] for c in carried}
        common.update(lesion_id=case, diagnosis=text, diagnosis_original=code,
                      benign_malignant=vocabulary.benign_malignant(text),
                      anatom_site_general_challenge=rec.get("location", ""), split_official=official[i],
                      split="test" if official[i] == "test" else "train", target="")
        if vocabulary.lookup(text) is None:
            common["target"] = (f"no Derm7pt diagnosis (meta.csv row {i + 2})" if not code else
                                f"Derm7pt diagnosis {code!r} (meta.csv row {i + 2}) is not in the class vocabulary")
        derm, clinic = rec["derm"].strip(), rec["clinic"].strip()
        derm_file, clinic_file = (resolve(derm) if derm else None), (resolve(clinic) if clinic else None)
        same = bool(derm and clinic) and ((derm_file is not None and derm_file == clinic_file)
                                          or derm.lower() == clinic.lower())
        views = [(DERMOSCOPIC, derm, derm_file)] if derm else []
        if clinic and not same:
            views.append((CLINICAL, clinic, clinic_file))
        if not views:  # no path at all: a row the ingest step reports as a missing file
            rows.append({**common, "image_name": f"derm7pt_case_{case or i}", "image_type": "", "view_missing": ""})
            continue
        for view, path, hit in views:
            lacking = "" if len(views) == 2 else (CLINICAL if view == DERMOSCOPIC else DERMOSCOPIC)
            rows.append({**common, "image_name": stem(hit or path), "image_type": view, "view_missing": lacking})
            if hit is not None:
                named.append(hit)
    frame = pd.DataFrame(rows, columns=[*carried, "lesion_id", "diagnosis", "diagnosis_original", "benign_malignant",
                                        "anatom_site_general_challenge", "split_official", "split", "target",
                                        "image_name", "image_type", "view_missing"]).astype("str")
    first = list(dict.fromkeys(named))  # the files rows name come first: a shared stem pairs with the one named
    taken = set(first)
    return Parsed(frame, first + [p for p in files if p not in taken], csvs)


# ------------------------------------------------------------------------------ synthetic copy

#: Synthetic folder codes (the release's folders are three-letter codes; names repeat them, in mixed case).
_FOLDERS = ("NEL", "Fgl", "Aal", "Gcl")
_CRITERIA = {  # criterion → (values, the values that score, their score), as the seven-point checklist
    "pigment_network": (["absent", "typical", "atypical"], {"atypical": 2}),
    "streaks": (["absent", "regular", "irregular"], {"irregular": 1}),
    "pigmentation": (["absent", "diffuse regular", "localized regular", "diffuse irregular", "localized irregular"],
                     {"diffuse irregular": 1, "localized irregular": 1}),
    "regression_structures": (["absent", "blue areas", "white areas", "combinations"],
                              {"blue areas": 1, "white areas": 1, "combinations": 1}),
    "dots_and_globules": (["absent", "regular", "irregular"], {"irregular": 1}),
    "blue_whitish_veil": (["absent", "present"], {"present": 2}),
    "vascular_structures": (["absent", "arborizing", "comma", "hairpin", "within regression", "wreath", "dotted",
                             "linear irregular"], {"dotted": 2, "linear irregular": 2}),
}
#: What the synthetic ``notes`` say for a case whose clinical path repeats the dermoscopic one.
SAME_IMAGE_NOTE = "clinical image is the dermoscopic image"


def _split_labels(rng: np.random.Generator, n: int, test_fraction: float, valid_fraction: float) -> list[str]:
    n_test = int(round(n * test_fraction))
    n_valid = int(round(n * valid_fraction))
    if valid_fraction > 0 and n_valid == 0 and n - n_test >= 2:
        n_valid = 1
    labels = ["test"] * n_test + ["valid"] * n_valid
    labels += ["train"] * (n - len(labels))
    return [labels[k] for k in rng.permutation(n)]


def write(root, n: int = 24, seed: int = 0, sizes: list[tuple[int, int]] | None = None, nested: bool = True,
          test_fraction: float = 0.4, valid_fraction: float = 0.2, single_view: float = 0.15,
          melanoma_rate: float = 0.3, defects: float = 0.2, quality: int = 90) -> list[dict[str, Any]]:
    """A synthetic Derm7pt release of ``n`` cases: ``meta/meta.csv`` (the published 19 columns, in order), the three
    index files, and per case a clinical (:func:`melanoma_data.synth.clinical_spec`) and a dermoscopic image under
    ``images/<code>/`` (clinical names upper case ``.JPG``, dermoscopic ones ``.jpg``); a share ``single_view`` of the
    cases repeat the dermoscopic path as their clinical one (one image, a note). ``nested``: under
    ``root/release_v0/`` (the zip's shape), else in ``root`` itself.

    Returns:
        One dict per image written (``image_name``, ``rel_path``, ``split``, ``target``, ``lesion_id``,
        ``split_official``, ``image_type``, ``view_missing``); the files label every case, ``test`` ones included.
    """
    from melanoma_data import synth

    root = Path(root)
    base = root / RELEASE if nested else root
    (base / "meta").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 7])
    sizes = sizes or [(768, 512)]
    codes = list(vocabulary.CODES[NAME])
    melanomas = [c for c in codes if vocabulary.CODES[NAME][c] == "melanoma"]
    others = [c for c in codes if vocabulary.CODES[NAME][c] != "melanoma"]
    splits = _split_labels(rng, n, test_fraction, valid_fraction)
    rows, written, number = [], [], 0
    for i in range(n):
        melanoma = bool(rng.random() < melanoma_rate)
        code = str(rng.choice(melanomas if melanoma else others))
        folder = _FOLDERS[i % len(_FOLDERS)]
        clinic = f"{folder}/{folder.upper()}{number:03d}.JPG"
        derm = f"{folder}/{folder.capitalize()}{number + 1:03d}.jpg"
        number += 2
        one_view = bool(rng.random() < single_view)
        criteria = {crit: str(rng.choice(values)) for crit, (values, _) in _CRITERIA.items()}
        score = sum(scores.get(criteria[crit], 0) for crit, (_, scores) in _CRITERIA.items())
        rec = {"case_num": i + 1, "diagnosis": code, "seven_point_score": score, **criteria,
               "level_of_diagnostic_difficulty": str(rng.choice(["low", "medium", "high"])),
               "elevation": str(rng.choice(["flat", "palpable", "nodular"])),
               "location": str(rng.choice(list(SITES))), "sex": str(rng.choice(["female", "male"])),
               "management": str(rng.choice(["excision", "clinical follow up", "no further examination"])),
               "clinic": derm if one_view else clinic, "derm": derm, "case_id": "",
               "notes": SAME_IMAGE_NOTE if one_view else ""}
        rows.append(rec)
        split = "test" if splits[i] == "test" else "train"
        views = [(DERMOSCOPIC, derm)] + ([] if one_view else [(CLINICAL, clinic)])
        for k, (view, path) in enumerate(views):
            spec_rng = np.random.default_rng([seed, i, k, 1])
            spec = (synth.clinical_spec(spec_rng, melanoma, sizes) if view == CLINICAL
                    else synth.random_spec(spec_rng, melanoma, sizes, defects))
            img = synth.render(spec, seed=(seed, i, k))
            target = base / "images" / path
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(synth.encode_file(img, quality=quality))
            written.append({"image_name": Path(path).stem, "rel_path": str(target.relative_to(root).as_posix()),
                            "split": split, "target": int(melanoma), "labelled": True, "lesion_id": str(i + 1),
                            "split_official": splits[i], "image_type": view,
                            "view_missing": CLINICAL if one_view else ""})
    pd.DataFrame(rows, columns=list(META_COLUMNS)).to_csv(base / "meta" / "meta.csv", index=False)
    for split, fname in SPLIT_FILES.items():
        pd.DataFrame({"indexes": [i for i, s in enumerate(splits) if s == split]}).to_csv(
            base / "meta" / fname, index=False)
    return written


LAYOUT = Layout(
    priority=32,
    name=NAME, detect=detect, parse=parse, natural_target="melanoma", write=write, source=NAME,
    example={"sizes": [(64, 48)], "defects": 0.0},
    fills=("image_name", "sex", "anatom_site_general_challenge", "diagnosis", "benign_malignant", "target", "split",
           "lesion_id", "diagnosis_original", "image_type", "view_missing", "split_official", "pigment_network",
           "streaks", "pigmentation", "regression_structures", "dots_and_globules", "blue_whitish_veil",
           "vascular_structures", "seven_point_score"),
    detected_by=f"a `meta/meta.csv` in the folder or in its `{RELEASE}/`",
    reads=f"`{RELEASE}/meta/meta.csv` (one case per row: two image rows, clinical and dermoscopic, sharing `lesion_id`"
          " = `case_num`), `meta/{train,valid,test}_indexes.csv` (the official split, kept in `split_official`: "
          "`test` → split test, labelled; `train` and `valid` → split train, the `valid` cases alone forming the last "
          "fold), the images under `images/`",
    release=f"Derm7pt {RELEASE} (Kawahara et al., IEEE JBHI 2019; derm.cs.sfu.ca): 1011 cases, the official "
            "train/valid/test split kept, its validation set one fixed cross-validation fold",
    hint="Derm7pt release_v0/meta/meta.csv",
    licence="no open licence: download after registration at derm.cs.sfu.ca, research use under that site's terms",
    sites=SITES,
)
