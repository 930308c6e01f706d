"""The ISIC 2024 challenge (SLICE-3D) layout: ``{train,test}-image.hdf5`` + ``{train,test}-metadata.csv``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melanoma_data import fsutil, h5
from melanoma_data.errors import InputError
from melanoma_data.layouts.base import H5_SEP, Layout, Parsed, deepest, read, standard_names, train_only

NAME = "isic2024"

#: ISIC 2024 ``iddx_full`` fragments → 2020-style diagnosis (first match wins); anything else: the
#: deepest ``iddx_N`` level, lower case; a bare "Benign" is the 2020 "unknown" (benign, not specified).
IDDX_DIAGNOSES = [
    ("melanoma", "melanoma"),
    ("basal cell carcinoma", "basal cell carcinoma"),
    ("squamous cell carcinoma", "squamous cell carcinoma"),
    ("seborrheic keratosis", "seborrheic keratosis"),
    ("solar lentigo", "solar lentigo"),
    ("lichen planus like keratosis", "lichenoid keratosis"),
    ("actinic keratosis", "actinic keratosis"),
    ("dermatofibroma", "dermatofibroma"),
    ("nevus", "nevus"),
]


def detect(fs, root: str, names: set[str]) -> bool:
    """An ``*-image.hdf5`` file beside an ``*-metadata.csv`` (train or test)."""
    return bool(names & {"train-image.hdf5", "test-image.hdf5"} and names & {"train-metadata.csv", "test-metadata.csv"})


def iddx_diagnosis(frame: pd.DataFrame) -> pd.DataFrame:
    """ISIC 2024: ``diagnosis`` and ``benign_malignant`` from ``iddx_full`` / ``iddx_1``–``iddx_5`` (kept)."""
    levels = [c for c in ("iddx_5", "iddx_4", "iddx_3", "iddx_2", "iddx_1") if c in frame.columns]
    if "diagnosis" not in frame.columns and levels:
        full = frame["iddx_full"].str.lower() if "iddx_full" in frame.columns else None
        deep = deepest(frame, levels)
        diagnosis = deep.where(~deep.isin(["benign"]), "unknown")
        diagnosis = diagnosis.where(~deep.isin(["malignant", "indeterminate"]), deep)
        if full is not None:
            for fragment, name in reversed(IDDX_DIAGNOSES):  # reversed: the first entry wins
                diagnosis = diagnosis.where(~full.str.contains(fragment, regex=False), name)
        frame["diagnosis"] = diagnosis
    if "benign_malignant" not in frame.columns and "iddx_1" in frame.columns:
        first = frame["iddx_1"].str.lower()
        frame["benign_malignant"] = first.where(first.isin(["benign", "malignant"]), "")
    return frame


def parse(fs, root: str, encoding: str | None) -> list[Parsed]:
    """The 2024 layout as one part per split (each with its own HDF5 file), never concatenated:
    the training metadata alone is hundreds of MB of text."""
    parts, frames = [], {}
    for split in ("train", "test"):
        meta = fsutil.join(root, f"{split}-metadata.csv")
        container = fsutil.join(root, f"{split}-image.hdf5")
        has_meta, has_container = fs.exists(meta), fs.exists(container)
        if not has_meta and not has_container:
            continue
        csvs: dict[str, str] = {}
        if has_meta:
            f = iddx_diagnosis(standard_names(read(fs, meta, encoding, csvs), meta))
            f["split"] = split
            frames[split] = f
        else:  # entries without any metadata: each becomes a no_metadata quarantine row
            f = pd.DataFrame({"image_name": pd.Series([], dtype="str"), "split": pd.Series([], dtype="str")})
        files: list[str] = []
        if has_container:
            try:
                keys = h5.list_keys(fsutil.to_url(fs, container))
            except (OSError, ValueError) as exc:
                raise InputError(f"{container}: not a readable HDF5 file ({exc})") from None
            files = [f"{container}{H5_SEP}{k}" for k in keys]
        parts.append(Parsed(f, files, csvs, [container] if has_container else []))
    if not frames:
        raise InputError(f"{root}: ISIC 2024 layout without train-metadata.csv or test-metadata.csv")
    parts[0].train_only = train_only(frames.get("train"), frames.get("test"))
    return parts


# ------------------------------------------------------------------------------ synthetic copy

#: The measured lesion columns of the 2024 metadata: name → (benign mean, sd, malignant shift in sds, low, high).
TBP_COLUMNS: dict[str, tuple[float, float, float, float, float]] = {
    "clin_size_long_diam_mm": (3.9, 1.8, 1.2, 1.0, 28.0),
    "tbp_lv_A": (19.9, 4.0, 0.3, -5.0, 50.0), "tbp_lv_Aext": (14.9, 3.5, 0.0, -5.0, 45.0),
    "tbp_lv_B": (28.3, 5.1, 0.0, 0.0, 60.0), "tbp_lv_Bext": (26.9, 4.0, 0.0, 0.0, 55.0),
    "tbp_lv_C": (34.8, 5.8, 0.2, 5.0, 70.0), "tbp_lv_Cext": (30.9, 4.6, 0.0, 5.0, 60.0),
    "tbp_lv_H": (54.7, 5.5, -0.3, 20.0, 90.0), "tbp_lv_Hext": (60.0, 5.2, 0.0, 20.0, 90.0),
    "tbp_lv_L": (42.3, 7.9, -0.5, 10.0, 90.0), "tbp_lv_Lext": (50.5, 7.2, 0.0, 10.0, 90.0),
    "tbp_lv_areaMM2": (8.6, 7.9, 1.0, 1.0, 300.0), "tbp_lv_area_perim_ratio": (19.0, 5.4, 0.6, 10.0, 60.0),
    "tbp_lv_color_std_mean": (0.86, 0.9, 1.0, 0.0, 12.0), "tbp_lv_deltaA": (8.3, 3.3, 0.5, -5.0, 30.0),
    "tbp_lv_deltaB": (5.8, 3.1, 0.2, -10.0, 30.0), "tbp_lv_deltaL": (-8.2, 4.1, -0.6, -40.0, 10.0),
    "tbp_lv_deltaLB": (13.1, 5.1, 0.6, 1.0, 50.0), "tbp_lv_deltaLBnorm": (7.7, 2.5, 0.5, 1.0, 30.0),
    "tbp_lv_eccentricity": (0.73, 0.14, 0.2, 0.0, 1.0), "tbp_lv_minorAxisMM": (2.5, 1.1, 1.0, 0.5, 20.0),
    "tbp_lv_nevi_confidence": (19.4, 30.0, 0.8, 0.0, 100.0), "tbp_lv_norm_border": (3.3, 2.0, 1.0, 0.0, 10.0),
    "tbp_lv_norm_color": (2.6, 2.6, 1.0, 0.0, 10.0), "tbp_lv_perimeterMM": (11.6, 6.1, 1.0, 3.0, 160.0),
    "tbp_lv_radial_color_std_max": (0.55, 0.8, 1.0, 0.0, 10.0), "tbp_lv_stdL": (1.8, 1.0, 0.9, 0.0, 12.0),
    "tbp_lv_stdLExt": (2.6, 1.1, 0.0, 0.0, 12.0), "tbp_lv_symm_2axis": (0.33, 0.16, 0.7, 0.0, 1.0),
    "tbp_lv_symm_2axis_angle": (88.0, 52.0, 0.0, 0.0, 180.0), "tbp_lv_x": (-3.0, 54.0, 0.0, -200.0, 200.0),
    "tbp_lv_y": (872.0, 390.0, 0.0, 0.0, 1900.0), "tbp_lv_z": (-23.0, 50.0, 0.0, -200.0, 200.0),
    "tbp_lv_dnn_lesion_confidence": (97.0, 8.0, 0.0, 0.0, 100.0),
}
#: 2024 columns that only the training metadata has (the test metadata lacks them).
TRAIN_ONLY_2024 = ["target", "lesion_id", "iddx_full", "iddx_1", "iddx_2", "iddx_3", "iddx_4", "iddx_5",
                   "mel_mitotic_index", "mel_thick_mm", "tbp_lv_dnn_lesion_confidence"]
_SITES_2024 = ["posterior torso", "lower extremity", "anterior torso", "upper extremity", "head/neck"]
_LOCATIONS = {"posterior torso": "Torso Back", "anterior torso": "Torso Front", "lower extremity": "Left Leg",
              "upper extremity": "Right Arm", "head/neck": "Head & Neck"}
_MALIGNANT_2024 = [  # (share of malignant tiles, iddx_full)
    (0.40, "Malignant::Malignant melanocytic proliferations (Melanoma)::Melanoma Invasive"),
    (0.42, "Malignant::Malignant adnexal epithelial proliferations - Follicular::Basal cell carcinoma"),
    (0.18, "Malignant::Malignant epidermal proliferations::Squamous cell carcinoma in situ"),
]


def _tile_file(args: tuple[int, int, bool, int]) -> bytes:
    """One 2024-style tile (a lesion centred on skin, 15×15 mm) as JPEG bytes."""
    from melanoma_data.synth import SynthSpec, encode_file, render

    seed, side, malignant, hairs = args
    rng = np.random.default_rng([seed, 2024])
    spec = SynthSpec(width=side, height=side, melanoma=malignant, hairs=hairs,
                     exposure=float(rng.uniform(0.8, 1.1)), lesion_scale=float(rng.uniform(0.12, 0.3)))
    return encode_file(render(spec, seed=(seed, 7)), quality=int(rng.integers(85, 96)))


def _map_tiles(jobs: list[tuple[int, int, bool, int]], workers: int):
    """Tiles in job order, drawn by ``workers`` processes (1: in this process)."""
    if workers <= 1 or len(jobs) < 2000:
        for job in jobs:
            yield _tile_file(job)
        return
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers) as pool:
        yield from pool.map(_tile_file, jobs, chunksize=512)


def write_frame(root: str | os.PathLike, n: int = 3000, seed: int = 0, positive_rate: float = 0.001,
                tiles_per_patient: float = 385.0, test_n: int = 3, workers: int = 1) -> pd.DataFrame:
    """Write the 2024 layout (see :func:`melanoma_data.synth.write_isic2024`); returns the rows written
    (metadata columns plus ``split``, ``_side`` and ``_hairs``)."""
    import h5py

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 2024])
    rows = []
    for split, count in (("train", n), ("test", test_n)):
        if count <= 0:
            continue
        patient, left = 0, 0
        for _ in range(count):
            if left == 0:
                patient += 1
                left = max(1, int(rng.poisson(tiles_per_patient)))
                pid = f"IP_{(0 if split == 'train' else 9_000_000) + int(rng.integers(0, 8_999_999)):07d}"
                sex = str(rng.choice(["female", "male"]))
                age = float(rng.integers(6, 17) * 5)
                attribution = str(rng.choice(["Memorial Sloan Kettering Cancer Center", "ACEMID MIA",
                                              "Department of Dermatology, Hospital Clínic de Barcelona",
                                              "University Hospital of Basel", "Frazer Institute"]))
            left -= 1
            malignant = split == "train" and bool(rng.random() < positive_rate)
            site = str(rng.choice(_SITES_2024))
            row: dict[str, Any] = {
                "isic_id": f"ISIC_{(0 if split == 'train' else 9_000_000) + len(rows) * 7 + 11:07d}",
                "target": int(malignant), "patient_id": pid, "age_approx": age, "sex": sex,
                "anatom_site_general": site, "image_type": "TBP tile: close-up",
                "tbp_tile_type": str(rng.choice(["3D: white", "3D: XP"])),
                "tbp_lv_location": f"{_LOCATIONS[site]} {rng.choice(['Top', 'Middle', 'Bottom'])} Third",
                "tbp_lv_location_simple": _LOCATIONS[site], "attribution": attribution,
                "copyright_license": str(rng.choice(["CC-BY", "CC-BY-NC", "CC-0"])),
                "split": split,
            }
            for col, (mean, sd, shift, lo, hi) in TBP_COLUMNS.items():
                row[col] = round(float(np.clip(rng.normal(mean + (shift * sd if malignant else 0.0), sd), lo, hi)), 6)
            if malignant:
                shares = np.cumsum([p for p, _ in _MALIGNANT_2024])
                pick = min(int(np.searchsorted(shares, rng.random())), len(_MALIGNANT_2024) - 1)
                row["iddx_full"] = _MALIGNANT_2024[pick][1]
            elif rng.random() < 0.05:
                row["iddx_full"] = str(rng.choice([
                    "Benign::Benign melanocytic proliferations::Nevus",
                    "Benign::Benign epidermal proliferations::Seborrheic keratosis",
                    "Benign::Benign epidermal proliferations::Solar lentigo"]))
            else:
                row["iddx_full"] = "Benign"
            parts = row["iddx_full"].split("::")
            for level in range(1, 6):
                row[f"iddx_{level}"] = parts[level - 1] if level <= len(parts) else ""
            row["lesion_id"] = f"IL_{int(rng.integers(0, 9_999_999)):07d}" if (malignant or rng.random() < 0.05) else ""
            melanoma = "Melanoma" in row["iddx_full"]
            row["mel_thick_mm"] = round(float(rng.gamma(2.0, 0.4)), 2) if melanoma else ""
            row["mel_mitotic_index"] = str(rng.choice(["<1/mm^2", "1/mm^2", "2/mm^2"])) if melanoma else ""
            row["_side"] = int(np.clip(round(rng.normal(131, 28)), 61, 239))
            row["_hairs"] = int(rng.integers(1, 4)) if rng.random() < 0.2 else 0
            rows.append(row)
    frame = pd.DataFrame(rows)
    jobs = [(seed * 1_000_003 + i, int(s), bool(t), int(h))
            for i, (s, t, h) in enumerate(zip(frame["_side"], frame["target"], frame["_hairs"], strict=True))]
    for split in ("train", "test"):
        part = frame[frame["split"] == split]
        if part.empty:
            continue
        idx = part.index.to_numpy()
        with h5py.File(root / f"{split}-image.hdf5", "w") as f:
            for name, data in zip(part["isic_id"], _map_tiles([jobs[i] for i in idx], workers), strict=True):
                f.create_dataset(name, data=np.bytes_(data))
        meta = part.drop(columns=["split", "_side", "_hairs"])
        if split == "test":
            meta = meta.drop(columns=[c for c in TRAIN_ONLY_2024 if c in meta])
        meta.to_csv(root / f"{split}-metadata.csv", index=False)
    return frame


def write(root, n: int = 3000, seed: int = 0, **options: Any) -> list[dict[str, Any]]:
    """A synthetic copy (options of :func:`write_frame`); one dict per tile written."""
    frame = write_frame(root, n=n, seed=seed, **options)
    if frame.empty:
        return []
    return [{"image_name": name, "rel_path": f"{split}-image.hdf5{H5_SEP}{name}", "split": split,
             "target": int(t), "patient_id": pid}
            for name, split, t, pid in zip(frame["isic_id"], frame["split"], frame["target"], frame["patient_id"],
                                           strict=True)]


LAYOUT = Layout(
    priority=30,
    duplicate_rank=5,
    licence="CC BY-NC 4.0 (the ISIC 2024 challenge data, SLICE-3D); per-image licences in the metadata's "
            "copyright_license column",
    name=NAME, detect=detect, parse=parse, natural_target="malignant", preset="tiles", write=write,
    example={"positive_rate": 0.4, "tiles_per_patient": 3.0, "test_n": 2},
    fills=("image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge", "diagnosis",
           "benign_malignant", "target", "split", "lesion_id", "image_type"),
    detected_by="an `*-image.hdf5` file beside an `*-metadata.csv` (train or test)",
    reads="`train-metadata.csv`, `test-metadata.csv`, the JPEG entries of `train-image.hdf5` and `test-image.hdf5`; "
          "diagnosis from `iddx_full` / `iddx_1`–`iddx_5`",
    release="the ISIC 2024 challenge (SLICE-3D, 3D total-body photo tiles); `target` is any malignancy",
    hint="ISIC 2024 train-image.hdf5 + train-metadata.csv",
)
