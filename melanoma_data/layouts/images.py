"""A folder of image files and no metadata: every image an unlabelled ``test`` row named by its file."""

from __future__ import annotations

from typing import Any

import pandas as pd

from melanoma_data.layouts.base import IMAGE_EXTS, Layout, Parsed, list_images, stem

NAME = "images"


def detect(fs, root: str, names: set[str]) -> bool:
    """Image files in the folder itself (and nothing a layout above recognises)."""
    return bool(list_images(fs, root))


def parse(fs, root: str, encoding: str | None) -> Parsed:
    """One unlabelled row per file name stem (files in the folder itself)."""
    files = list_images(fs, root)
    names = sorted({stem(p) for p in files})
    return Parsed(pd.DataFrame({"image_name": pd.Series(names, dtype="str")}), files, {})


def synth_entry(name: str, row: dict[str, Any], split: str, i: int) -> tuple[str, str, dict[str, dict]]:
    """One synthetic image in the folder itself, no metadata (so an unlabelled ``test`` row)."""
    return "test", f"{name}.jpg", {}


def write(root, n: int = 48, seed: int = 0, **options: Any) -> list[dict[str, Any]]:
    """A synthetic copy (:func:`melanoma_data.synth.write_dataset`): images and ``synth_truth.json`` only."""
    from melanoma_data import synth

    return synth.write_dataset(root, n=n, layout=NAME, seed=seed, **options)


LAYOUT = Layout(
    priority=100,
    licence="",  # a bare folder of images: nothing says
    name=NAME, detect=detect, parse=parse, natural_target=None, write=write, synth_entry=synth_entry,
    example={"sizes": [(64, 48)], "defects": 0.0}, fills=("image_name", "split"),
    detected_by="image files in the folder itself, when no layout above matches",
    reads=f"the image files ({', '.join(IMAGE_EXTS)}) in the folder itself; no labels",
    release="none: any folder of dermoscopy images (scoring, inspection)",
    hint=f"or image files ({', '.join(IMAGE_EXTS)}) in the folder itself",
)
