"""The ISIC archive as the ``isic-cli`` tool downloads it: ``metadata.csv`` (``isic_id`` rows) beside the images."""

from __future__ import annotations

from typing import Any

from melanoma_data import fsutil
from melanoma_data.layouts.base import Layout, Parsed, csv_columns, list_images, parse_table

NAME = "isic-cli"


def detect(fs, root: str, names: set[str]) -> bool:
    """A ``metadata.csv`` with an ``isic_id`` column beside image files."""
    return (
        "metadata.csv" in names
        and bool(list_images(fs, root))
        and "isic_id" in csv_columns(fs, fsutil.join(root, "metadata.csv"))
    )


def parse(fs, root: str, encoding: str | None) -> Parsed:
    """``metadata.csv`` (archive names: ``isic_id``, ``anatom_site_general``, ``diagnosis_1``–``5``) and the images."""
    return parse_table(fs, root, fsutil.join(root, "metadata.csv"), encoding)


def synth_entry(name: str, row: dict[str, Any], split: str, i: int) -> tuple[str, str, dict[str, dict]]:
    """One synthetic image (all ``train``) beside ``metadata.csv``, in the archive's column names."""
    rec = {"isic_id": name, "attribution": "synthetic", "copyright_license": "CC-0",
           "age_approx": row["age_approx"], "anatom_site_general": row["site_2019"],
           "benign_malignant": "malignant" if row["target"] else "benign",
           "diagnosis": row["diagnosis"], "sex": row["sex"], "patient_id": row["patient_id"],
           "lesion_id": f"IL_{i:07d}"}
    return "train", f"{name}.jpg", {"metadata.csv": rec}


def write(root, n: int = 48, seed: int = 0, **options: Any) -> list[dict[str, Any]]:
    """A synthetic copy (:func:`melanoma_data.synth.write_dataset`)."""
    from melanoma_data import synth

    return synth.write_dataset(root, n=n, layout=NAME, seed=seed, **options)


LAYOUT = Layout(
    priority=40,
    duplicate_rank=6,
    licence="per image, as the archive records it (the metadata's copyright_license: CC-0, CC-BY or CC-BY-NC)",
    name=NAME, detect=detect, parse=parse, natural_target="melanoma", write=write, source="isic-archive",
    synth_entry=synth_entry, example={"sizes": [(64, 48)], "defects": 0.0},
    fills=("image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis",
           "benign_malignant", "target", "split", "lesion_id", "image_type"),
    detected_by="a `metadata.csv` with an `isic_id` column beside image files",
    reads="`metadata.csv`, the images in the folder and in `images/`; `target` derived from the diagnosis",
    release="the ISIC archive as `isic-cli image download` writes it",
    hint="isic-cli metadata.csv",
)
