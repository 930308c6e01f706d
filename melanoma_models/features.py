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

from melanoma_data import tfrecord
from melanoma_data.config import manifest_section
from melanoma_data.errors import DataInputError
from melanoma_data.folds import patient_keys
from melanoma_data.manifest import Manifest
from melanoma_data.ops import steps
from melanoma_data.ops._cv import cv2
from melanoma_models.api import FoldData

#: Preprocessing measurements used as features (missing → NaN; trees handle it): the step table's ``features``.
MEASUREMENTS = steps.model_features()
#: Per-image values whose deviation from the patient's other images is a feature.
DEVIATION = ["mean_r", "mean_g", "mean_b", "std_grey", "dark_fraction", "lesion_contrast", "hair_fraction",
             "brightness_before", "orig_pixels", "file_bytes", "variegation", "asymmetry", "border", "diameter",
             "dark_share", "blue_share", "border_harmonics"]


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


def lesion_mask(img: np.ndarray) -> tuple[np.ndarray, float] | None:
    """The lesion as a uint8 mask (1 inside) and the skin's grey level; None when nothing stands out.

    Otsu on the blurred grey image alone splits a lesion with dark blotches between its dark and its
    brown parts; so the threshold is put halfway between the skin (the border ring's 80th percentile) and the
    median of what Otsu calls dark: the whole lesion, brown and dark parts, either way. The lesion is
    the large component nearest the centre.
    """
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    s = grey.shape[0]
    blur = cv2.GaussianBlur(grey, (0, 0), max(1.0, s / 64))
    otsu, _ = cv2.threshold(blur, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    ring = np.ones(blur.shape, bool)
    k = max(1, s // 10)
    ring[k:-k, k:-k] = False
    skin = float(np.percentile(blur[ring], 80))  # the brightest big region: a lesion may reach the ring
    below = blur[blur <= otsu]
    if below.size == 0 or skin - float(np.median(below)) < 8:
        return None
    level = (skin + float(np.median(below))) / 2
    mask = (blur < level).astype(np.uint8)
    n, labels, stats, cents = cv2.connectedComponentsWithStats(mask, connectivity=8)
    if n < 2:
        return None
    score = stats[1:, cv2.CC_STAT_AREA] / (1.0 + np.linalg.norm(cents[1:] - s / 2, axis=1) / s * 4)
    return (labels == 1 + int(np.argmax(score))).astype(np.uint8), skin


def _radial_harmonics(contour: np.ndarray, cx: float, cy: float, axes: tuple[float, float] | None = None,
                      bins: int = 64) -> np.ndarray:
    """Amplitudes of the border's radius r(θ) around the centroid, harmonics 0..bins/2, over the mean radius.

    ``axes = (angle in radians, major/minor ratio)``: first squeeze the outline along its major axis
    into a round shape, so that an oval's stretch does not leak into the higher harmonics.
    """
    pts = contour[:, 0, :].astype(np.float64) - (cx, cy)
    if axes is not None:
        angle, ratio = axes
        c, s = np.cos(angle), np.sin(angle)
        u, v = pts[:, 0] * c + pts[:, 1] * s, -pts[:, 0] * s + pts[:, 1] * c
        pts = np.stack([u / max(ratio, 1e-9), v], axis=1)
    ang = np.arctan2(pts[:, 1], pts[:, 0])
    rad = np.hypot(pts[:, 0], pts[:, 1])
    idx = ((ang + np.pi) / (2 * np.pi) * bins).astype(int) % bins
    total = np.bincount(idx, weights=rad, minlength=bins)
    count = np.bincount(idx, minlength=bins)
    have = count > 0
    if have.sum() < bins // 4:
        return np.zeros(bins // 2 + 1)
    centres = np.arange(bins)
    r = np.interp(centres, centres[have], total[have] / count[have], period=bins)  # fill empty angles
    amp = np.abs(np.fft.rfft(r)) / bins
    return amp / max(amp[0], 1e-9)


#: Columns of :func:`lesion_shape`.
SHAPE_COLUMNS = ["asymmetry", "elongation", "shape_harmonics", "border", "border_harmonics", "solidity",
                 "variegation", "dark_share", "blue_share", "diameter", "diameter_major", "diameter_minor"]


def lesion_shape(images: np.ndarray) -> pd.DataFrame:
    """The dermatologist's ABCD from small RGB images: a lesion mask (:func:`lesion_mask`), then
    asymmetry, border irregularity, colour variegation and diameter.

    ``asymmetry``: 1 − overlap of the mask with its mirror images about the principal axes;
    ``elongation``: 1 − minor/major axis ratio; ``shape_harmonics``: amplitude of the border radius's
    first two harmonics (off-centre bulge, oval) over the mean radius;
    ``border``: perimeter² / (4π area) − 1 (0 for a disc); ``border_harmonics``: amplitude of harmonics
    3–8 of the border radius once the oval is squeezed round (lobes and notches; Fourier descriptors);
    ``solidity``: area / convex hull;
    ``variegation``: spread of the lesion's colours (mean per-channel std inside the mask, /255),
    ``dark_share`` (below 0.65 × the lesion's median grey level: dark blotches, whatever the exposure)
    and ``blue_share`` (blue − red at least 40 above the lesion's median, not dark): shares of very dark
    and of blue-grey pixels; ``diameter``:
    equivalent diameter / image side; ``diameter_major``, ``diameter_minor``: axes of the ellipse with the
    mask's second moments / image side (the greatest diameter, and the one that elongation leaves alone).
    Images with no lesion found give zeros.
    """
    rows = []
    for img in images:
        found = lesion_mask(img)
        s = img.shape[0]
        if found is None:
            rows.append((0.0,) * len(SHAPE_COLUMNS))
            continue
        les, skin = found
        area = float(les.sum())
        contours, _ = cv2.findContours(les, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        outline = max(contours, key=len)
        perim = float(sum(cv2.arcLength(c, True) for c in contours))
        hull = float(cv2.contourArea(cv2.convexHull(outline)))
        m = cv2.moments(les, binaryImage=True)
        cx, cy = m["m10"] / max(m["m00"], 1), m["m01"] / max(m["m00"], 1)
        harm = _radial_harmonics(outline, cx, cy)
        theta = 0.5 * np.arctan2(2 * m["mu11"], m["mu20"] - m["mu02"] + 1e-9)
        angle = np.degrees(theta)
        rot = cv2.warpAffine(les, cv2.getRotationMatrix2D((cx, cy), angle, 1.0), (s, s), flags=cv2.INTER_NEAREST)
        rot = cv2.warpAffine(rot, np.float32([[1, 0, s / 2 - cx], [0, 1, s / 2 - cy]]), (s, s),
                             flags=cv2.INTER_NEAREST)
        asym = [1 - (rot & np.flip(rot, axis=a)).sum() / max(rot.sum(), 1) for a in (0, 1)]
        common = np.sqrt(4 * m["mu11"] ** 2 + (m["mu20"] - m["mu02"]) ** 2)
        lam1, lam2 = m["mu20"] + m["mu02"] + common, m["mu20"] + m["mu02"] - common
        elong = float(1 - np.sqrt(max(lam2, 0) / max(lam1, 1e-9)))
        round_harm = _radial_harmonics(outline, cx, cy, (theta, 1 / max(1 - elong, 1e-3)))
        px = img[les.astype(bool)].astype(np.float32)
        lum = px.mean(axis=1)
        dark = lum < 0.65 * np.median(lum)  # dark blotches, whatever the exposure
        blue = px[:, 2] - px[:, 0]  # blue-grey veil: far bluer than the lesion's typical colour (casts cancel)
        rows.append((float(np.mean(asym)), elong, float(np.hypot(harm[1], harm[2])),
                     perim**2 / (4 * np.pi * max(area, 1)) - 1, float(np.sqrt((round_harm[3:9] ** 2).sum())),
                     area / max(hull, area, 1.0),
                     float(px.std(axis=0).mean() / 255), float(dark.mean()),
                     float(((blue > np.median(blue) + 40) & ~dark).mean()), float(np.sqrt(4 * area / np.pi) / s),
                     4 * float(np.sqrt(max(lam1, 0) / (2 * max(m["m00"], 1)))) / s,  # the fitted ellipse's axes
                     4 * float(np.sqrt(max(lam2, 0) / (2 * max(m["m00"], 1)))) / s))
    return pd.DataFrame(rows, columns=SHAPE_COLUMNS)


def stored_side_fraction(meta: pd.DataFrame, config: Mapping[str, Any] | None = None) -> np.ndarray:
    """The stored image's side as a fraction of the original's short side.

    The part of the (oriented) original the field-of-view op kept comes from the op's own
    :func:`melanoma_data.ops.vignette.crop_box` applied to the recorded measurements and the dataset's
    ``[field_of_view]`` config; the stored square is its short side (``[square] policy = "crop"``) or its long
    side (``"pad"``). A lesion's ``diameter`` times this factor is relative to the whole original frame,
    so a crop that zooms in on a microscope field does not make lesions look larger.

    Args:
        meta: the rows' metadata (orig size, EXIF orientation, crop and vignette measurements).
        config: the dataset version's preprocessing config (``manifest["config"]``).
    """
    from melanoma_data.ops import vignette as vig

    need = {"crop_x0", "crop_x1", "crop_y0", "crop_y1", "orig_width", "orig_height"}
    if not need <= set(meta.columns):
        return np.ones(len(meta))
    config = config or {}
    params = vig.VignetteParams.from_dict(manifest_section(config, "field_of_view"))
    longest = manifest_section(config, "square").get("policy", "crop") == "pad"

    def col(name: str, default: float = np.nan) -> np.ndarray:
        if name not in meta:
            return np.full(len(meta), default)
        return pd.to_numeric(meta[name], errors="coerce").astype(float).to_numpy()

    w, h = col("orig_width"), col("orig_height")
    turned = col("exif_orientation", 1.0) >= 5  # crop fractions are of the displayed (oriented) image
    w, h = np.where(turned, h, w), np.where(turned, w, h)
    box = tuple(np.nan_to_num(col(c, d), nan=0.0) for c, d in
                (("crop_x0", 0.0), ("crop_y0", 0.0), ("crop_x1", 1.0), ("crop_y1", 1.0)))
    cx, cy, rf = col("vignette_cx"), col("vignette_cy"), col("vignette_radius_frac")
    detected = (col("vignette_detected", 0.0) > 0) & np.isfinite(cx) & np.isfinite(cy) & np.isfinite(rf)
    usable = np.isfinite(w) & np.isfinite(h) & (w > 0) & (h > 0)
    w, h = np.where(usable, np.floor(np.nan_to_num(w)), 1.0), np.where(usable, np.floor(np.nan_to_num(h)), 1.0)
    x0, y0, x1, y1 = vig.crop_box(w, h, box, detected, cx, cy, rf, params)
    side = np.maximum(x1 - x0, y1 - y0) if longest else np.minimum(x1 - x0, y1 - y0)
    return np.where(usable & (side > 0), side / np.minimum(w, h), 1.0)


def _codes(values: pd.Series, vocab: Mapping[str, int]) -> np.ndarray:
    return np.asarray(tfrecord.codes(vocab, values.astype(object)), dtype=float)


#: The dermatologist's ABCD as measured by :func:`lesion_shape` (diameters relative to the original
#: frame), their deviations from the patient's other lesions, and age: the focused set of ``features="abcd"``.
ABCD_COLUMNS = ["elongation", "shape_harmonics", "asymmetry", "border_harmonics", "solidity", "border",
                "dark_share", "variegation", "blue_share", "diameter_minor_frame", "diameter_frame",
                "dark_share_vs_patient", "variegation_vs_patient", "blue_share_vs_patient", "age"]


def lesion_features(data: FoldData, size: int = 128) -> pd.DataFrame:
    """:func:`lesion_shape` of every row's image at ``size`` px, cached per run by image name.

    The features (a few numbers per image) are cached, not the images: at 128 px the images of the
    2020 training set would hold 1.6 GB.
    """
    rows = data.per_image("lesion_shape", size, lambda imgs: list(lesion_shape(imgs).itertuples(index=False)))
    return pd.DataFrame([tuple(r) for r in rows], columns=SHAPE_COLUMNS)


def tabular_features(data: FoldData, encodings: Mapping[str, Any], kind: str = "all",
                     image_size: int = 32, shape_size: int = 128) -> pd.DataFrame:
    """Label-free features of ``data`` (rows aligned with ``data.meta``).

    ``kind="metadata"`` keeps sex, age, site and the patient's image count (no image information at
    all); ``"all"`` adds source facts, measurements, image statistics and patient deviations;
    ``"abcd"`` is sex, site and :data:`ABCD_COLUMNS` (the lesion's ABCD and its patient context).
    ``image_size``: side of the colour statistics; ``shape_size``: side at which the ABCD are measured.
    """
    if kind not in ("all", "metadata", "abcd"):
        raise ValueError(f"kind must be all, metadata or abcd, got {kind!r}")
    meta = data.meta.reset_index(drop=True)
    f = pd.DataFrame(index=meta.index)
    f["sex"] = _codes(meta["sex"], encodings.get("sex", {}))
    f["age"] = pd.to_numeric(meta["age_approx"], errors="coerce").astype(float)
    f["site"] = _codes(meta["anatom_site_general_challenge"], encodings.get("anatom_site_general_challenge", {}))
    count = pd.to_numeric(meta.get("patient_image_count"), errors="coerce") if "patient_image_count" in meta else None
    f["patient_images"] = count.astype(float).to_numpy() if count is not None else 1.0
    patient = patient_keys(meta)
    if kind == "metadata":
        age_mean = f.groupby(patient.to_numpy())["age"].transform("mean")
        f["age_minus_patient"] = f["age"] - age_mean
        return f
    if kind == "all":  # source facts, measurements and colour statistics ("abcd" does not use them)
        f["orig_width"] = meta["orig_width"].astype(float)
        f["orig_height"] = meta["orig_height"].astype(float)
        f["orig_pixels"] = f["orig_width"] * f["orig_height"]
        f["file_bytes"] = meta["file_bytes"].astype(float)
        for col in MEASUREMENTS:
            f[col] = pd.to_numeric(meta[col], errors="coerce").astype(float) if col in meta else np.nan
        stats = image_statistics(data.images(image_size))
        for col in stats:
            f[col] = stats[col].to_numpy()
    shape = lesion_features(data, shape_size)
    for col in shape:
        f[col] = shape[col].to_numpy()
    frame = stored_side_fraction(meta, data.dataset.manifest.config)
    for col in ("diameter", "diameter_major", "diameter_minor"):
        f[f"{col}_frame"] = f[col] * frame
    groups = patient.to_numpy()
    for col in (c for c in DEVIATION if c in f):
        g = f.groupby(groups)[col]
        mean, std, n = g.transform("mean"), g.transform("std"), g.transform("size")
        # deviation from the mean of the patient's *other* images (0 for a patient's only image)
        others = (mean * n - f[col]) / (n - 1).where(n > 1)
        f[f"{col}_vs_patient"] = (f[col] - others).where(n > 1, 0.0)
        f[f"{col}_z_patient"] = ((f[col] - mean) / std.where(std > 0)).where(n > 1, 0.0).fillna(0.0)
    if kind == "abcd":
        return f[["sex", "site", *ABCD_COLUMNS]]
    return f


def _ratio(a: pd.Series, b: pd.Series) -> pd.Series:
    return a / b.where(b != 0)


#: Lesion ratios and interactions the ISIC 2024 write-ups built from the measured TBP columns:
#: ``name → (input columns, formula)``; each is added where all its inputs are columns the model uses.
ENGINEERED: dict[str, tuple[tuple[str, ...], Callable[..., pd.Series]]] = {
    "lesion_size_ratio": (("tbp_lv_minorAxisMM", "clin_size_long_diam_mm"), _ratio),
    "lesion_shape_index": (("tbp_lv_areaMM2", "tbp_lv_perimeterMM"), lambda a, p: _ratio(a, p**2)),
    "perimeter_to_area": (("tbp_lv_perimeterMM", "tbp_lv_areaMM2"), _ratio),
    "hue_contrast": (("tbp_lv_H", "tbp_lv_Hext"), lambda h, e: (h - e).abs()),
    "luminance_contrast": (("tbp_lv_L", "tbp_lv_Lext"), lambda v, e: (v - e).abs()),
    "lesion_colour_difference": (("tbp_lv_deltaA", "tbp_lv_deltaB", "tbp_lv_deltaL"),
                                 lambda a, b, v: np.sqrt(a**2 + b**2 + v**2)),
    "border_complexity": (("tbp_lv_norm_border", "tbp_lv_symm_2axis"), lambda b, s: b + s),
    "colour_uniformity": (("tbp_lv_color_std_mean", "tbp_lv_radial_color_std_max"), _ratio),
    "lesion_visibility": (("tbp_lv_deltaLBnorm", "tbp_lv_norm_color"), lambda d, c: d + c),
    "border_colour_interaction": (("tbp_lv_norm_border", "tbp_lv_norm_color"), lambda b, c: b * c),
    "size_for_age": (("clin_size_long_diam_mm", "age_approx"), _ratio),
    "position_distance": (("tbp_lv_x", "tbp_lv_y", "tbp_lv_z"), lambda x, y, z: np.sqrt(x**2 + y**2 + z**2)),
    "log_area": (("tbp_lv_areaMM2",), lambda a: np.log1p(a.clip(lower=0))),
}


def patient_context(values: pd.DataFrame, patient: np.ndarray, site: np.ndarray | None = None) -> pd.DataFrame:
    """Each column relative to the same patient's other lesions (the "ugly duckling" signal).

    Per column: ``_z_patient`` (z-score within the patient), ``_z_patient_site`` (within patient ×
    anatomic site), ``_rank_patient`` (percentile rank within the patient, 0–1) and ``_minus_patient_median``.
    Label-free (only the rows' own values), so computing them over all rows cannot leak labels; a
    patient's only lesion gets 0 (z, deviation) and 0.5 (rank).
    """
    out = {}
    keys = {"patient": patient}
    if site is not None:
        keys["patient_site"] = pd.Series(patient).astype(str).to_numpy() + "|" + pd.Series(site).astype(str).to_numpy()
    for col in values:
        v = values[col].astype(float)
        for tag, key in keys.items():
            g = v.groupby(key)
            mean, std = g.transform("mean"), g.transform("std")
            out[f"{col}_z_{tag}"] = ((v - mean) / std.where(std > 0)).fillna(0.0).to_numpy()
        g = v.groupby(patient)
        out[f"{col}_rank_patient"] = g.rank(pct=True).where(g.transform("count") > 1, 0.5).to_numpy()
        out[f"{col}_minus_patient_median"] = (v - g.transform("median")).fillna(0.0).to_numpy()
    return pd.DataFrame(out, index=values.index)


def patient_outlier_score(values: pd.DataFrame, patient: np.ndarray, neighbours: int = 20) -> np.ndarray:
    """Local Outlier Factor of each lesion among its patient's lesions (the 2024 "ugly duckling" score).

    Columns are standardised over all rows (median/IQR, missing → the median); patients with fewer
    than 3 lesions get 1.0 (an inlier's LOF). Higher is more unusual for that patient. Label-free.
    """
    from sklearn.neighbors import LocalOutlierFactor

    x = values.astype(float)
    med = x.median()
    scale = (x.quantile(0.75) - x.quantile(0.25)).replace(0, 1.0).fillna(1.0)
    z = ((x - med) / scale).fillna(0.0).to_numpy()
    score = np.ones(len(x))
    for _, idx in pd.Series(np.arange(len(x))).groupby(patient):
        rows = idx.to_numpy()
        if len(rows) < 3:
            continue
        # at most half the patient's other lesions: with all of them every neighbourhood holds the outlier
        lof = LocalOutlierFactor(n_neighbors=min(neighbours, max(1, (len(rows) - 1) // 2)))
        lof.fit(z[rows])
        score[rows] = -lof.negative_outlier_factor_
    return score


def metadata_features(meta: pd.DataFrame, columns: list[str], context: bool = True) -> pd.DataFrame:
    """The input's numeric metadata ``columns`` as features, the 2024 engineered ratios, and their patient context.

    Args:
        meta: the rows' metadata (a fold's rows; patients never span folds, and nothing here reads labels).
        columns: the numeric input columns the model may use (see :func:`model_columns`).
        context: add :func:`patient_context` of every column and ratio, and :func:`patient_outlier_score`.
    """
    meta = meta.reset_index(drop=True)
    base = pd.DataFrame({c: pd.to_numeric(meta[c], errors="coerce").astype(float) if c in meta else np.nan
                         for c in columns}, index=meta.index)
    avail = {**{c: base[c] for c in base}, "age_approx": pd.to_numeric(meta.get("age_approx"), errors="coerce")}
    for name, (inputs, formula) in ENGINEERED.items():
        if all(c in columns or (c == "age_approx" and "age_approx" in meta) for c in inputs):
            base[name] = formula(*(avail[c].astype(float) for c in inputs)).replace([np.inf, -np.inf], np.nan)
    if not context or base.empty:
        return base
    patient = patient_keys(meta).to_numpy()
    site = meta["anatom_site_general_challenge"].astype(object).fillna("").to_numpy() \
        if "anatom_site_general_challenge" in meta else None
    out = pd.concat([base, patient_context(base, patient, site)], axis=1)
    out["patient_lof"] = patient_outlier_score(base, patient)
    return out


def model_columns(manifest: Manifest | Mapping[str, Any], spec: str = "auto", allow: str = "") -> list[str]:
    """The input metadata columns (carried into the shards) a tabular model uses.

    Args:
        manifest: the dataset version's manifest (its ``columns`` table).
        spec: ``auto`` (every numeric extra column that models may use), ``none``, or names separated
            by commas.
        allow: columns marked "models may not use" (``label``, ``train_only``) to use anyway, by name.

    Raises:
        ValueError: a named column does not exist, is not numeric, or may not be used and is not allowed.
    """
    from melanoma_data import columns

    manifest = Manifest.of(manifest)
    allowed = [a.strip() for a in allow.split(",") if a.strip()]
    if spec == "none":
        return []
    if spec == "auto":
        return columns.model_features(manifest.column_records, allowed)
    names = [c.strip() for c in spec.split(",") if c.strip()]
    table = {d.name: d for d in manifest.columns}
    for n in names:
        if n not in table:
            raise DataInputError(f"column {n!r} is not in this dataset; its input columns are: "
                             + ", ".join(d.name for d in manifest.extra_columns))
        if table[n].dtype not in ("float64", "int8", "int32", "int64", "bool"):
            raise DataInputError(f"column {n!r} is {table[n].dtype}, not numeric")
    bad = columns.forbidden(manifest.column_records, names, allowed)
    if bad:
        why = "; ".join(f"{n}: {table[n].models}" + (f" ({table[n].why})" if table[n].why else "") for n in bad)
        raise DataInputError(f"column(s) marked 'models may not use': {why}. Pass --set allow_columns="
                         f"{','.join(bad)} to use them anyway")
    return names


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
