"""Any folder with one CSV that names its images (``image_name`` or ``isic_id``) in the ISIC 2020 columns."""

from __future__ import annotations

import posixpath
from typing import Any

from melanoma_data import columns
from melanoma_data.errors import InputError
from melanoma_data.layouts.base import Layout, Parsed, csvs_with_names, parse_table

NAME = "generic"


def detect(fs, root: str, names: set[str]) -> bool:
    """A CSV in the folder with an ``image_name`` or ``isic_id`` column."""
    return bool(csvs_with_names(fs, root))


def parse(fs, root: str, encoding: str | None) -> Parsed:
    """That CSV (``metadata.csv`` or ``train.csv`` when several name images) and the images.

    Raises:
        InputError: several CSVs name images and none is preferred.
    """
    csvs = csvs_with_names(fs, root)
    if len(csvs) > 1:
        preferred = [p for p in csvs if posixpath.basename(p) in ("metadata.csv", "train.csv")]
        if len(preferred) != 1:
            names = ", ".join(posixpath.basename(p) for p in csvs)
            raise InputError(f"{root}: several CSVs name images ({names}); pass --metadata CSV")
        csvs = preferred
    return parse_table(fs, root, csvs[0], encoding)


def synth_entry(name: str, row: dict[str, Any], split: str, i: int) -> tuple[str, str, dict[str, dict]]:
    """One synthetic image (all ``train``) in ``images/``, its row in ``metadata.csv``."""
    rec = {"image_name": name, "patient_id": row["patient_id"], "sex": row["sex"],
           "age_approx": row["age_approx"], "anatom_site_general_challenge": row["site_2019"],
           "diagnosis": row["diagnosis"], "benign_malignant": "malignant" if row["target"] else "benign",
           "target": row["target"]}
    return "train", f"images/{name}.jpg", {"metadata.csv": rec}


def write(root, n: int = 48, seed: int = 0, **options: Any) -> list[dict[str, Any]]:
    """A synthetic copy (:func:`melanoma_data.synth.write_dataset`)."""
    from melanoma_data import synth

    return synth.write_dataset(root, n=n, layout=NAME, seed=seed, **options)


LAYOUT = Layout(
    priority=90,
    licence="",  # a user's CSV: its own files say (a copyright_license column is counted in the EDA report)
    name=NAME, detect=detect, parse=parse, natural_target="melanoma", write=write, synth_entry=synth_entry,
    example={"sizes": [(64, 48)], "defects": 0.0},
    fills=tuple(c.name for c in columns.COLUMNS if c.ingest == "input"),  # any of them, by its 2020 name
    detected_by="a CSV in the folder with an `image_name` or `isic_id` column",
    reads="that CSV (`metadata.csv` or `train.csv` when several name images; or `--metadata CSV`), "
          "the images in the folder and in `images/`",
    release="the ISIC 2020 column names (archive names are read too); any source",
    hint="a CSV with an image_name column",
)
