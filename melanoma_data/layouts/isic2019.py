"""The ISIC 2019 challenge layout: ground-truth CSV (one-hot classes), metadata CSV, image folders."""

from __future__ import annotations

import posixpath
from typing import Any

import pandas as pd

from melanoma_data.errors import InputError
from melanoma_data.layouts.base import Layout, Parsed, find_first, list_images, read, standard_names, train_only

NAME = "isic2019"

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


def detect(fs, root: str, names: set[str]) -> bool:
    """A file named ``ISIC_2019_Training_GroundTruth*``."""
    return any(n.startswith("ISIC_2019_Training_GroundTruth") for n in names)


def parse(fs, root: str, encoding: str | None) -> Parsed:
    """The ground truth (one hot class per row → diagnosis), the metadata merged on, test metadata, images."""
    gt_path = find_first(fs, root, "ISIC_2019_Training_GroundTruth")
    csvs: dict[str, str] = {}
    gt = read(fs, gt_path, encoding, csvs)
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
    meta_path = find_first(fs, root, "ISIC_2019_Training_Metadata")
    if meta_path:
        meta = standard_names(read(fs, meta_path, encoding, csvs).rename(columns={"image": "image_name"}), meta_path)
        frame = frame.merge(meta.drop_duplicates("image_name"), on="image_name", how="left")
    frame["split"] = "train"
    frames = [frame]
    test_meta = find_first(fs, root, "ISIC_2019_Test_Metadata")
    if test_meta:
        t = standard_names(read(fs, test_meta, encoding, csvs).rename(columns={"image": "image_name"}), test_meta)
        t["split"] = "test"
        frames.append(t)
    images = []
    for p in sorted(fs.ls(root, detail=False)):
        base = posixpath.basename(p)
        if fs.isdir(p) and base.startswith(("ISIC_2019_Training_Input", "ISIC_2019_Test_Input")):
            images += list_images(fs, p, recursive=True)
    only = train_only(frames[0], frames[1] if len(frames) > 1 else None)
    return Parsed(pd.concat(frames, ignore_index=True).fillna(""), images, csvs, train_only=only)


def synth_entry(name: str, row: dict[str, Any], split: str, i: int) -> tuple[str, str, dict[str, dict]]:
    """One synthetic image (all ``train``; every third listed with the ``_downsampled`` suffix)."""
    listed = name + ("_downsampled" if i % 3 == 0 else "")
    onehot = {k: 0.0 for k in ISIC2019_CLASSES}
    onehot["MEL" if row["target"] else "NV"] = 1.0
    meta = {"image": listed, "age_approx": row["age_approx"], "anatom_site_general": row["site_2019"],
            "lesion_id": f"BCN_{i // 2:07d}", "sex": row["sex"]}
    return "train", f"ISIC_2019_Training_Input/{listed}.jpg", {
        "ISIC_2019_Training_GroundTruth.csv": {"image": listed, **onehot}, "ISIC_2019_Training_Metadata.csv": meta}


def write(root, n: int = 48, seed: int = 0, **options: Any) -> list[dict[str, Any]]:
    """A synthetic copy (:func:`melanoma_data.synth.write_dataset`)."""
    from melanoma_data import synth

    return synth.write_dataset(root, n=n, layout=NAME, seed=seed, **options)


LAYOUT = Layout(
    priority=20,
    duplicate_rank=3,
    licence="CC BY-NC 4.0 (the ISIC 2019 challenge data: BCN20000, HAM10000, MSK; attribution per the release)",
    name=NAME, detect=detect, parse=parse, natural_target="melanoma", write=write, source="isic2019",
    synth_entry=synth_entry, example={"sizes": [(64, 48)], "defects": 0.0},
    fills=("image_name", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis", "benign_malignant",
           "target", "split", "lesion_id"),
    detected_by="a file named `ISIC_2019_Training_GroundTruth*`",
    reads="`ISIC_2019_Training_GroundTruth*.csv` (one-hot classes), `ISIC_2019_Training_Metadata*.csv`, "
          "`ISIC_2019_Test_Metadata*.csv`, images under `ISIC_2019_Training_Input*/` and `ISIC_2019_Test_Input*/`",
    release="the ISIC 2019 challenge (BCN20000, HAM10000, MSK); names with `_downsampled` match either spelling",
    hint="ISIC 2019 ground truth CSV",
)
