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

from melanoma_data.ops._cv import cv2
from melanoma_models.api import FoldData

#: Preprocessing measurements used as features (missing → NaN; trees handle it).
MEASUREMENTS = ["vignette_detected", "vignette_radius_frac", "hair_fraction", "brightness_before",
                "brightness_after", "colour_gain_r", "colour_gain_g", "colour_gain_b"]
#: Per-image values whose deviation from the patient's other images is a feature.
DEVIATION = ["mean_r", "mean_g", "mean_b", "std_grey", "dark_fraction", "lesion_contrast", "hair_fraction",
             "brightness_before", "orig_pixels", "file_bytes", "variegation", "asymmetry", "border", "diameter"]


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


def lesion_shape(images: np.ndarray) -> pd.DataFrame:
    """The dermatologist's ABCD from small RGB images: a lesion mask (darker than the skin ring by Otsu),
    then asymmetry, border irregularity, colour variegation and diameter.

    ``asymmetry``: 1 − overlap of the mask with its mirror images about the principal axes;
    ``elongation``: 1 − minor/major axis ratio;
    ``border``: perimeter² / (4π area) − 1 (0 for a disc); ``variegation``: spread of the lesion's
    colours (mean per-channel std inside the mask, /255) plus the share of very dark and of bluish
    pixels; ``diameter``: equivalent diameter / image side. Images with no lesion found give zeros.
    """
    rows = []
    for img in images:
        grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
        blur = cv2.GaussianBlur(grey, (0, 0), max(1.0, grey.shape[0] / 64))
        _, mask = cv2.threshold(blur, 0, 1, cv2.THRESH_BINARY_INV + cv2.THRESH_OTSU)
        n, labels, stats, cents = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
        s = grey.shape[0]
        if n < 2:
            rows.append((0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0))
            continue
        centre = np.array([s / 2, s / 2])
        score = stats[1:, cv2.CC_STAT_AREA] / (1.0 + np.linalg.norm(cents[1:] - centre, axis=1) / s * 4)
        k = 1 + int(np.argmax(score))
        les = (labels == k).astype(np.uint8)
        area = float(les.sum())
        contours, _ = cv2.findContours(les, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        perim = float(sum(cv2.arcLength(c, True) for c in contours))
        m = cv2.moments(les, binaryImage=True)
        cx, cy = m["m10"] / max(m["m00"], 1), m["m01"] / max(m["m00"], 1)
        angle = 0.5 * np.degrees(np.arctan2(2 * m["mu11"], m["mu20"] - m["mu02"] + 1e-9))
        rot = cv2.warpAffine(les, cv2.getRotationMatrix2D((cx, cy), angle, 1.0), (s, s), flags=cv2.INTER_NEAREST)
        rot = cv2.warpAffine(rot, np.float32([[1, 0, s / 2 - cx], [0, 1, s / 2 - cy]]), (s, s),
                             flags=cv2.INTER_NEAREST)
        asym = [1 - (rot & np.flip(rot, axis=a)).sum() / max(rot.sum(), 1) for a in (0, 1)]
        common = np.sqrt(4 * m["mu11"] ** 2 + (m["mu20"] - m["mu02"]) ** 2)
        lam1, lam2 = m["mu20"] + m["mu02"] + common, m["mu20"] + m["mu02"] - common
        elong = float(1 - np.sqrt(max(lam2, 0) / max(lam1, 1e-9)))
        px = img[les.astype(bool)].astype(np.float32)
        lum = px.mean(axis=1)
        rows.append((float(np.mean(asym)), elong, perim**2 / (4 * np.pi * max(area, 1)) - 1,
                     float(px.std(axis=0).mean() / 255), float((lum < 70).mean()),
                     float(((px[:, 2] > px[:, 0]) & (lum < 160)).mean()), float(np.sqrt(4 * area / np.pi) / s)))
    return pd.DataFrame(rows, columns=["asymmetry", "elongation", "border", "variegation", "dark_share",
                                       "blue_share", "diameter"])


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
    small = data.images(image_size)
    stats = image_statistics(small)
    for col in stats:
        f[col] = stats[col].to_numpy()
    shape = lesion_shape(data.images(max(image_size, 64)))
    for col in shape:
        f[col] = shape[col].to_numpy()
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
