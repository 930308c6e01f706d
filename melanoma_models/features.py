"""Tabular features for tree models, built per fold without leakage.

Two kinds:

* **label-free** (:func:`tabular_features`): metadata codes, patient context (images per patient,
  the image's deviation from its patient's other images — the "ugly duckling" signal), source facts
  and preprocessing measurements, and simple colour/size statistics of the image. Computed from the
  rows' own features only (patients never span folds), so they cannot carry labels across folds.
* **label-based** (:class:`SiteRate`): statistics of the training labels, fitted on the training
  folds only and then applied to the validation/test rows.

:func:`check_no_label_leak` is the guard the tests use: validation features must not change when the
validation labels do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from melanoma_models.api import FoldData

#: Preprocessing measurements used as features (missing → NaN; trees handle it).
MEASUREMENTS = ["vignette_detected", "vignette_radius_frac", "hair_fraction", "brightness_before",
                "brightness_after", "colour_gain_r", "colour_gain_g", "colour_gain_b"]
#: Per-image values whose deviation from the patient's other images is a feature.
DEVIATION = ["mean_r", "mean_g", "mean_b", "std_grey", "dark_fraction", "lesion_contrast", "hair_fraction",
             "brightness_before", "orig_pixels", "file_bytes"]


def image_statistics(images: np.ndarray) -> pd.DataFrame:
    """Colour and size statistics of small RGB images (uint8, N×S×S×3).

    ``dark_fraction`` is the share of pixels clearly darker than the image's border ring (a proxy
    for lesion size); ``lesion_contrast`` the brightness difference between the ring and the dark part.
    """
    x = images.astype(np.float32)
    grey = x.mean(axis=3)
    n, s = grey.shape[:2]
    ring = np.ones((s, s), bool)
    k = max(1, s // 8)
    ring[k:-k, k:-k] = False
    border = np.median(grey[:, ring], axis=1) if n else np.zeros(0)
    dark = grey < (border[:, None, None] * 0.8)
    dark_mean = np.where(dark.any(axis=(1, 2)), (grey * dark).sum(axis=(1, 2)) / np.maximum(dark.sum(axis=(1, 2)), 1),
                         border)
    out = {}
    for i, c in enumerate("rgb"):
        out[f"mean_{c}"] = x[..., i].mean(axis=(1, 2))
        out[f"std_{c}"] = x[..., i].std(axis=(1, 2))
    return pd.DataFrame({
        **out,
        "std_grey": grey.std(axis=(1, 2)),
        "dark_fraction": dark.mean(axis=(1, 2)),
        "lesion_contrast": border - dark_mean,
    })


def _codes(values: pd.Series, vocab: Mapping[str, int]) -> np.ndarray:
    return np.array([vocab.get(v, -1) if isinstance(v, str) else -1 for v in values.astype(object)], dtype=float)


def tabular_features(data: FoldData, encodings: Mapping[str, Any], kind: str = "all",
                     image_size: int = 32) -> pd.DataFrame:
    """Label-free features of ``data`` (rows aligned with ``data.meta``).

    ``kind="metadata"`` keeps sex, age, site and the patient's image count (no image information at
    all); ``"all"`` adds source facts, measurements, image statistics and patient deviations.
    """
    meta = data.meta.reset_index(drop=True)
    f = pd.DataFrame(index=meta.index)
    f["sex"] = _codes(meta["sex"], encodings.get("sex", {}))
    f["age"] = pd.to_numeric(meta["age_approx"], errors="coerce").astype(float)
    f["site"] = _codes(meta["anatom_site_general_challenge"], encodings.get("anatom_site_general_challenge", {}))
    count = pd.to_numeric(meta.get("patient_image_count"), errors="coerce") if "patient_image_count" in meta else None
    f["patient_images"] = count.astype(float).to_numpy() if count is not None else 1.0
    patient = meta["patient_id"].astype(object).where(meta["patient_id"].notna(), meta["image_name"])
    if kind == "metadata":
        age_mean = f.groupby(patient.to_numpy())["age"].transform("mean")
        f["age_minus_patient"] = f["age"] - age_mean
        return f
    f["orig_width"] = meta["orig_width"].astype(float)
    f["orig_height"] = meta["orig_height"].astype(float)
    f["orig_pixels"] = f["orig_width"] * f["orig_height"]
    f["file_bytes"] = meta["file_bytes"].astype(float)
    for col in MEASUREMENTS:
        f[col] = pd.to_numeric(meta[col], errors="coerce").astype(float) if col in meta else np.nan
    stats = image_statistics(data.images(image_size))
    for col in stats:
        f[col] = stats[col].to_numpy()
    groups = patient.to_numpy()
    for col in DEVIATION:
        g = f.groupby(groups)[col]
        mean, std, n = g.transform("mean"), g.transform("std"), g.transform("size")
        # deviation from the mean of the patient's *other* images (0 for a patient's only image)
        others = (mean * n - f[col]) / (n - 1).where(n > 1)
        f[f"{col}_vs_patient"] = (f[col] - others).where(n > 1, 0.0)
        f[f"{col}_z_patient"] = ((f[col] - mean) / std.where(std > 0)).where(n > 1, 0.0).fillna(0.0)
    return f


class SiteRate:
    """Smoothed melanoma rate per anatomic site, fitted on training rows only (a label-based encoder)."""

    def __init__(self, smoothing: float = 20.0) -> None:
        self.smoothing = smoothing
        self.rates: dict[str, float] = {}
        self.prior = 0.0

    def fit(self, meta: pd.DataFrame, target: np.ndarray) -> SiteRate:
        site = meta["anatom_site_general_challenge"].astype(object).fillna("(missing)").to_numpy()
        y = np.asarray(target, dtype=float)
        self.prior = float(y.mean()) if len(y) else 0.0
        frame = pd.DataFrame({"site": site, "y": y}).groupby("site")["y"].agg(["sum", "count"])
        self.rates = {str(k): float((r["sum"] + self.smoothing * self.prior) / (r["count"] + self.smoothing))
                      for k, r in frame.iterrows()}
        return self

    def transform(self, meta: pd.DataFrame) -> np.ndarray:
        site = meta["anatom_site_general_challenge"].astype(object).fillna("(missing)")
        return np.array([self.rates.get(str(s), self.prior) for s in site], dtype=float)

    def to_dict(self) -> dict[str, Any]:
        return {"smoothing": self.smoothing, "rates": self.rates, "prior": self.prior}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SiteRate:
        out = cls(float(d["smoothing"]))
        out.rates, out.prior = dict(d["rates"]), float(d["prior"])
        return out


def check_no_label_leak(build: Callable[[FoldData, FoldData], pd.DataFrame], train: FoldData, valid: FoldData,
                        seed: int = 0) -> None:
    """Raise AssertionError when validation features depend on the validation labels.

    ``build(train, valid)`` returns the validation feature frame; it is built twice, the second time
    with the validation targets permuted (and flipped), and must come out identical.
    """
    before = build(train, valid)
    rng = np.random.default_rng(seed)
    meta = valid.meta.copy()
    t = meta["target"].to_numpy(dtype=float, na_value=np.nan)
    shuffled = 1 - t[rng.permutation(len(t))]
    meta["target"] = pd.array(np.where(np.isnan(shuffled), 0, shuffled).astype(int), dtype="Int8")
    changed = FoldData(valid.dataset, valid.split, valid.folds, meta, valid.cache, valid.role)
    after = build(train, changed)
    pd.testing.assert_frame_equal(before.reset_index(drop=True), after.reset_index(drop=True),
                                  obj="validation features after changing only the validation labels")
