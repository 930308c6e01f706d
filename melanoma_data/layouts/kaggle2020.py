"""The Kaggle SIIM-ISIC 2020 competition layout: ``train.csv`` / ``test.csv`` and ``jpeg/{train,test}/``."""

from __future__ import annotations

from typing import Any

import pandas as pd

from melanoma_data import fsutil
from melanoma_data.errors import InputError
from melanoma_data.layouts.base import Layout, Parsed, list_images, read, train_only

NAME = "kaggle2020"
#: The 2020 release's list of duplicate pairs, read when it lies beside the 2020 metadata.
DUPLICATES_CSV = "ISIC_2020_Training_Duplicates.csv"


def detect(fs, root: str, names: set[str]) -> bool:
    """A ``train.csv`` beside a ``jpeg/`` folder."""
    return "train.csv" in names and fs.isdir(fsutil.join(root, "jpeg"))


def parse(fs, root: str, encoding: str | None) -> Parsed:
    """Both CSVs (each row's ``split`` from its file), the JPEGs of both splits, the duplicate list."""
    frames, csvs = {}, {}
    for split in ("train", "test"):
        path = fsutil.join(root, f"{split}.csv")
        if fs.exists(path):
            f = read(fs, path, encoding, csvs)
            f["split"] = split
            frames[split] = f
    images = list_images(fs, fsutil.join(root, "jpeg", "train")) + list_images(
        fs, fsutil.join(root, "jpeg", "test")
    )
    known = []
    dup_path = fsutil.join(root, DUPLICATES_CSV)
    if fs.exists(dup_path):
        dup = read(fs, dup_path, encoding, csvs)
        if not {"image_name_1", "image_name_2"} <= set(dup.columns):
            raise InputError(f"{dup_path}: expected columns image_name_1, image_name_2, found {list(dup.columns)}")
        known = list(zip(dup["image_name_1"].str.strip(), dup["image_name_2"].str.strip(), strict=True))
    return Parsed(pd.concat(frames.values(), ignore_index=True), images, csvs,
                  train_only=train_only(frames.get("train"), frames.get("test")), known_duplicates=known)


def synth_entry(name: str, row: dict[str, Any], split: str, i: int) -> tuple[str, str, dict[str, dict]]:
    """One synthetic image: the patient's split, ``jpeg/<split>/<name>.jpg`` and its ``<split>.csv`` row."""
    site20 = "torso" if "torso" in row["site_2019"] else row["site_2019"]
    rec = {"image_name": name, "patient_id": row["patient_id"], "sex": row["sex"],
           "age_approx": row["age_approx"], "anatom_site_general_challenge": site20}
    if split == "train":
        rec.update(diagnosis=row["diagnosis"], benign_malignant="malignant" if row["target"] else "benign",
                   target=row["target"])
    return split, f"jpeg/{split}/{name}.jpg", {f"{split}.csv": rec}


def write(root, n: int = 48, seed: int = 0, **options: Any) -> list[dict[str, Any]]:
    """A synthetic copy (:func:`melanoma_data.synth.write_dataset`; patients split into train and test)."""
    from melanoma_data import synth

    return synth.write_dataset(root, n=n, layout=NAME, seed=seed, **options)


LAYOUT = Layout(
    priority=10,
    duplicate_rank=4,
    licence="CC BY-NC 4.0 (the SIIM-ISIC 2020 challenge data; attribution: the ISIC Archive)",
    name=NAME, detect=detect, parse=parse, natural_target="melanoma", write=write, source="isic2020",
    synth_entry=synth_entry, example={"sizes": [(64, 48)], "defects": 0.0},
    fills=("image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis",
           "benign_malignant", "target", "split"),
    detected_by="a `train.csv` beside a `jpeg/` folder",
    reads=f"`train.csv`, `test.csv`, `jpeg/train/*`, `jpeg/test/*`, `{DUPLICATES_CSV}` when present",
    release="the SIIM-ISIC Melanoma Classification challenge 2020 (Kaggle)",
    hint="Kaggle 2020 train.csv + jpeg/",
)
