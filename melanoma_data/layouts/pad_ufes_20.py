"""The PAD-UFES-20 layout: ``metadata.csv`` (26 columns) and smartphone PNGs in ``imgs_part_1..3/``.

Every row of ``metadata.csv`` is one clinical close-up (a smartphone photo: the layout declares
``image_type = clinical: close-up``; the op policy for that view applies). Read: ``img_id`` (``PAT_46_881_939.png``)
→ ``image_name`` (its stem), ``patient_id`` as published, ``lesion_id`` made unique across patients as
``<patient_id>_<lesion_id>`` (the release numbers lesions with numbers that recur under different patients:
``PAT_680`` and ``PAT_260`` both have a lesion ``1289``), ``age`` → ``age_approx``, ``gender`` → ``sex`` (``FEMALE``/
``MALE`` → ``female``/``male``; blank or ``UNK`` → missing; any other value is kept, so the row's validation names
it), ``region`` → the body site (:data:`SITES`; the spelling stays in ``anatom_site_detailed``), ``fitspatrick``
(Fitzpatrick 1–6 as the clinicians recorded it, spelt as published) into its own column, ``diagnostic`` → the
vocabulary's diagnosis text (:data:`melanoma_data.vocabulary.CODES` ``["pad-ufes-20"]``) with the code in
``diagnosis_original``; a code the vocabulary lacks (``BOD``, Bowen's disease, which this release merged into
``SCC``) or a blank one makes the row an ``invalid_metadata`` quarantine row saying so. Every other column
(``smoke``, ``drink``, ``background_father`` … ``biopsed``: booleans written ``True``/``False``, some blank or
``UNK``) is carried as an extra column (``biopsed`` as a label column). All rows are ``train``; natural target
``melanoma``.

Images: PNG (or any image file) below the input whose path has a folder named ``imgs_part_<n>``, at most three
folders deep (``imgs_part_1/x.png``, ``images/imgs_part_1/x.png``, ``imgs_part_1/imgs_part_1/x.png``: how the
archive unpacks).

Checked against the real format (public sources, offline): the 26 column names and their order (third-party
loaders, a copy of the release's ``metadata.csv`` in a public repository), value spellings (``True``/``False``/
``UNK``, ``FEMALE``/``MALE``, ``fitspatrick`` written ``3.0``, upper-case ``region`` values ``ABDOMEN, ARM, BACK, CHEST,
EAR, FACE, FOOT, FOREARM, HAND, NECK, NOSE, SCALP, THIGH``, six ``diagnostic`` codes), lesion numbers repeated
across patients, the ``imgs_part_1..3`` folders, the licence (CC BY 4.0, Mendeley Data doi 10.17632/zr7vgbcyr2.1).
Not checked: ``LIP`` (a region the data article lists; mapped all the same) and the archive's exact top folder.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melanoma_data import fsutil, vocabulary
from melanoma_data.layouts.base import Layout, Parsed, csv_columns, is_image, read_with, stem

NAME = "pad-ufes-20"
METADATA = "metadata.csv"
#: ``metadata.csv``'s columns as published, in order.
COLUMNS = ("patient_id", "lesion_id", "smoke", "drink", "background_father", "background_mother", "age", "pesticide",
           "gender", "skin_cancer_history", "cancer_history", "has_piped_water", "has_sewage_system", "fitspatrick",
           "region", "diameter_1", "diameter_2", "diagnostic", "itch", "grew", "hurt", "changed", "bleed", "elevation",
           "img_id", "biopsed")
#: The columns a row cannot be read without.
REQUIRED = ("patient_id", "lesion_id", "img_id", "diagnostic")
#: PAD-UFES-20's ``region`` values (lower case) → the ISIC 2020 sites: arm, forearm and hand are the upper
#: extremity, thigh and foot the lower one, face, nose, lip, ear, scalp and neck head/neck, chest, back and abdomen
#: the torso (the same words as HAM10000's ``localization``, mapped the same way).
SITES = {"arm": "upper extremity", "forearm": "upper extremity", "hand": "upper extremity",
         "thigh": "lower extremity", "foot": "lower extremity",
         "face": "head/neck", "nose": "head/neck", "lip": "head/neck", "ear": "head/neck", "scalp": "head/neck",
         "neck": "head/neck", "chest": "torso", "back": "torso", "abdomen": "torso"}
CLINICAL = "clinical: close-up"
_PART = re.compile(r"^imgs_part_\d+$")
_SEXES = {"FEMALE": "female", "MALE": "male", "UNK": "", "": ""}


def detect(fs, root: str, names: set[str]) -> bool:
    """A ``metadata.csv`` with ``img_id`` and ``diagnostic`` columns."""
    return METADATA in names and {"img_id", "diagnostic"} <= csv_columns(fs, fsutil.join(root, METADATA))


def _images(fs, root: str) -> list[str]:
    """Image files whose path below ``root`` has an ``imgs_part_<n>`` folder (at most three folders deep)."""
    out = []
    for p in sorted(fs.find(root, maxdepth=4)):
        folders = posixpath.relpath(p, root).split("/")[:-1]
        if is_image(p) and fsutil.TMP_MARK not in p and any(_PART.match(f) for f in folders):
            out.append(p)
    return out


def parse(fs, root: str, encoding: str | None) -> Parsed:
    """``metadata.csv`` (one row per image) renamed to the toolkit's columns, and the images.

    Raises:
        InputError: ``metadata.csv`` lacks a required column.
    """
    path = fsutil.join(root, METADATA)
    csvs: dict[str, str] = {}
    frame = read_with(fs, path, encoding, csvs, REQUIRED, "PAD-UFES-20's metadata.csv")
    code = frame["diagnostic"].str.strip()
    text = code.map(lambda c: vocabulary.text_of(NAME, c))
    known = text.map(lambda t: vocabulary.lookup(t) is not None)
    patient, lesion = frame["patient_id"].str.strip(), frame["lesion_id"].str.strip()
    out = frame.drop(columns=["diagnostic"]).rename(columns={
        "img_id": "image_name", "age": "age_approx", "gender": "sex", "region": "anatom_site_general_challenge"})
    out["image_name"] = out["image_name"].str.strip().map(lambda n: stem(n) if n else "")
    out["lesion_id"] = (patient + "_" + lesion).where((patient != "") & (lesion != ""), "")
    if "sex" in out.columns:
        raw = out["sex"].str.strip()
        out["sex"] = raw.str.upper().map(_SEXES).fillna(raw)
    out["diagnosis"] = text
    out["diagnosis_original"] = code
    out["benign_malignant"] = text.map(vocabulary.benign_malignant)
    rows = pd.Series(range(2, len(frame) + 2), index=frame.index).astype(str)
    out["target"] = ("PAD-UFES-20 diagnostic " + code.map(repr) + " (metadata.csv row " + rows
                     + ") is not in the class vocabulary").where(~known, "")
    out.loc[~known & (code == ""), "target"] = "no PAD-UFES-20 diagnostic (metadata.csv row " + rows + ")"
    out["split"] = "train"
    return Parsed(out, _images(fs, root), csvs)


# ------------------------------------------------------------------------------ synthetic copy

_COUNTRIES = ("POMERANIA", "GERMANY", "ITALY", "BRAZIL", "PORTUGAL", "NETHERLANDS", "POLAND", "UNK")
#: Diagnostic codes drawn for synthetic lesions that are not melanoma.
_OTHER = ("ACK", "BCC", "NEV", "SCC", "SEK")


def _flag(rng: np.random.Generator, unknown: float = 0.0) -> str:
    return "UNK" if rng.random() < unknown else str(bool(rng.random() < 0.4))


def write(root, n: int = 24, seed: int = 0, sizes: list[tuple[int, int]] | None = None, melanoma_rate: float = 0.3,
          images_per_lesion: float = 1.4, lesions_per_patient: float = 1.3) -> list[dict[str, Any]]:
    """A synthetic PAD-UFES-20 release of ``n`` images: ``metadata.csv`` (the published 26 columns in order, values
    written as the release writes them: ``True``/``False``/``UNK``, ``FEMALE``/``MALE``, ``3.0``, upper-case regions;
    half the patients with the extended fields blank, as the release's later patients) and smartphone-like clinical
    PNGs (:func:`melanoma_data.synth.clinical_spec`) spread over ``imgs_part_1``–``3``, the third nested one folder
    deeper (``imgs_part_3/imgs_part_3/``) as an unpacked archive can be.

    Returns:
        One dict per image (``image_name``, ``rel_path``, ``split`` = ``train``, ``target``, ``patient_id``,
        ``lesion_id`` as the layout reads it).
    """
    from melanoma_data import synth

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 20])
    sizes = sizes or [(1024, 768)]
    rows, written = [], []
    patient = lesion = 0
    while len(rows) < n:
        patient += 1
        pid = f"PAT_{patient * 7 + 11}"
        extended = bool(rng.random() < 0.5)
        fields: dict[str, Any] = {"age": int(rng.integers(6, 95)), "gender": "", "fitspatrick": ""}
        for col in ("smoke", "drink", "background_father", "background_mother", "pesticide", "skin_cancer_history",
                    "cancer_history", "has_piped_water", "has_sewage_system"):
            fields[col] = ""
        if extended:
            fields.update(smoke=_flag(rng), drink=_flag(rng), background_father=str(rng.choice(_COUNTRIES)),
                          background_mother=str(rng.choice(_COUNTRIES)), pesticide=_flag(rng),
                          gender=str(rng.choice(["FEMALE", "MALE"])), skin_cancer_history=_flag(rng),
                          cancer_history=_flag(rng), has_piped_water=_flag(rng), has_sewage_system=_flag(rng),
                          fitspatrick=f"{float(rng.integers(1, 7)):.1f}")
        for _ in range(max(1, int(rng.poisson(lesions_per_patient - 1) + 1))):
            lesion += 1
            melanoma = bool(rng.random() < melanoma_rate)
            code = "MEL" if melanoma else str(rng.choice(_OTHER))
            site = str(rng.choice(list(SITES))).upper()
            d1 = float(rng.integers(3, 30)) if extended else None
            lesion_fields = {
                "region": site, "diameter_1": "" if d1 is None else f"{d1:.1f}",
                "diameter_2": "" if d1 is None else f"{max(1.0, d1 - float(rng.integers(0, 5))):.1f}",
                "diagnostic": code, **{c: _flag(rng, 0.1 if extended else 0.0)
                                       for c in ("itch", "grew", "hurt", "changed", "bleed", "elevation")},
                "biopsed": str(code in ("MEL", "BCC", "SCC") or bool(rng.random() < 0.3))}
            for _ in range(max(1, int(rng.poisson(images_per_lesion - 1) + 1))):
                if len(rows) >= n:
                    break
                i = len(rows)
                name = f"{pid}_{lesion}_{int(rng.integers(0, 1000))}"
                while any(r["img_id"] == f"{name}.png" for r in rows):
                    name += "0"
                rows.append({"patient_id": pid, "lesion_id": str(lesion), **fields, **lesion_fields,
                             "img_id": f"{name}.png"})
                part = 1 + i % 3
                rel = f"imgs_part_{part}/" + (f"imgs_part_{part}/" if part == 3 else "") + f"{name}.png"
                img = synth.render(synth.clinical_spec(np.random.default_rng([seed, i, 1]), melanoma, sizes),
                                   seed=(seed, i))
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                (root / rel).write_bytes(synth.encode_file(img, "PNG"))
                written.append({"image_name": name, "rel_path": rel, "split": "train", "target": int(melanoma),
                                "patient_id": pid, "lesion_id": f"{pid}_{lesion}"})
    pd.DataFrame(rows, columns=list(COLUMNS)).to_csv(root / METADATA, index=False)
    return written


LAYOUT = Layout(
    priority=34,
    name=NAME, detect=detect, parse=parse, natural_target="melanoma", write=write, source=NAME,
    example={"sizes": [(64, 48)]},
    fills=("image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis",
           "benign_malignant", "target", "split", "lesion_id", "diagnosis_original", "fitspatrick", "image_type"),
    detected_by=f"a `{METADATA}` with `img_id` and `diagnostic` columns",
    reads=f"`{METADATA}` (one row per image; `lesion_id` made `<patient_id>_<lesion_id>`, `gender` → `sex`, `age` → "
          "`age_approx`, `region` → the body site, `fitspatrick` kept in its own column, `diagnostic` → the "
          "diagnosis), the images in `imgs_part_*/` folders (up to three folders deep)",
    release="PAD-UFES-20 (Pacheco et al., Data in Brief 2020; Mendeley Data v1): 2,298 smartphone clinical images "
            "of 1,641 lesions of 1,373 patients, six diagnoses",
    hint="PAD-UFES-20 metadata.csv (img_id, diagnostic)",
    licence="CC BY 4.0",
    image_type=CLINICAL,
    sites=SITES,
)
