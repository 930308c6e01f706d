"""The figures a clinical reviewer asks for: calibration, operating points with intervals, decision curves, multi-class.

Pure functions of out-of-fold labels and scores (and patient ids for the bootstrap); :mod:`melanoma_models.evaluate`
stores what they return in ``metrics.json`` and draws it in the report.

Intervals: a proportion at a fixed threshold gets Wilson's score interval; an operating point whose threshold
was chosen on the same scores (Youden, a target specificity or sensitivity) also gets a 95% percentile bootstrap
that resamples *patients* and chooses the threshold again in every resample, so the interval carries the
threshold's own uncertainty. Tie rule: an operating point calls a score positive at ``score >= threshold``; the
multi-class macro-F1 at 0.5 follows the official ISIC scorer, positive at ``probability > 0.5``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from melanoma_models import metrics as M
from melanoma_models.subgroups import bootstrap, patient_resamples, percentile_interval

#: the rule-out operating point: the threshold that keeps this sensitivity
RULE_OUT_SENSITIVITY = 0.95
#: equal-mass bins of the ECE and the reliability diagram
CALIBRATION_BINS = 10
#: threshold probabilities of the decision curve (stored in metrics.json and drawn)
DECISION_THRESHOLDS = tuple(round(t, 3) for t in np.arange(0.01, 0.505, 0.01))
#: bootstrap draws of the operating points and per-class AUCs
N_BOOT = 200


def _threshold(y: np.ndarray, p: np.ndarray, w: np.ndarray | None, kind: str, value: float) -> float:
    """The threshold of ``kind`` (``youden``, ``spec``, ``sens``) on (weighted) scores, as the run's rule picks it."""
    if kind == "youden":
        return M.youden_threshold(y, p, w)
    if kind == "spec":
        return M.threshold_at_specificity(y, p, value, w)
    return M.threshold_at_sensitivity(y, p, value, w)


def _weighted_rates(y: np.ndarray, p: np.ndarray, w: np.ndarray, t: float,
                    prevalence: float | None) -> dict[str, float]:
    pred = p >= t
    tp, fp = float((w * (y == 1) * pred).sum()), float((w * (y == 0) * pred).sum())
    fn, tn = float((w * (y == 1) * ~pred).sum()), float((w * (y == 0) * ~pred).sum())
    nan = float("nan")
    out = {"sensitivity": tp / (tp + fn) if tp + fn else nan, "specificity": tn / (tn + fp) if tn + fp else nan,
           "ppv": tp / (tp + fp) if tp + fp else nan, "npv": tn / (tn + fn) if tn + fn else nan, "threshold": t}
    if prevalence is not None and np.isfinite(out["sensitivity"]) and np.isfinite(out["specificity"]):
        out["ppv_at_prevalence"], out["npv_at_prevalence"] = M.ppv_npv_at_prevalence(
            out["sensitivity"], out["specificity"], prevalence)
    return out


def operating_points(y: Any, p: Any, patient: Any, chosen: tuple[str, float | None], prevalence: float | None = None,
                     n_boot: int = N_BOOT, seed: int = 0) -> list[dict[str, Any]]:
    """Sensitivity, specificity, PPV, NPV (and PPV/NPV at ``prevalence``) with 95% intervals at five thresholds.

    Args:
        y, p: labels (0/1) and scores.
        patient: patient key of each row (the bootstrap resamples patients).
        chosen: the run's rule as ``(kind, value)``: ``("youden", None)``, ``("spec", 0.9)``, ``("sens", 0.9)`` or
            ``("fixed", 0.3)``.
        prevalence: the rate of melanoma where the model would be used (PPV/NPV are recomputed for it).
        n_boot: bootstrap draws for the thresholds chosen on the data.

    Returns:
        One row per point: ``name``, ``rule``, ``data_chosen``, the figures of
        :func:`melanoma_models.metrics.rates_with_ci` (Wilson intervals) and, for data-chosen thresholds,
        ``bootstrap``: the same figures' percentile intervals with the threshold chosen again per resample.
    """
    y = np.asarray(y).astype(int)
    p = np.asarray(p, dtype=float)
    both = 0 < y.sum() < len(y)
    kind, value = chosen
    points = [("chosen", kind, value), ("0.5", "fixed", 0.5),
              ("dermatologists' specificity (60%)", "spec", M.DERMATOLOGISTS["specificity"]),
              ("dermatologists' sensitivity (74.1%)", "sens", M.DERMATOLOGISTS["sensitivity"]),
              (f"rule-out ({RULE_OUT_SENSITIVITY:.0%} sensitivity)", "sens", RULE_OUT_SENSITIVITY)]
    several = pd.Series(np.asarray(patient)).nunique(dropna=False) > 1
    weights = list(patient_resamples(patient, n_boot, seed)) if both and several else []
    rows = []
    for name, k, v in points:
        data_chosen = k != "fixed"
        t = float(v) if not data_chosen else (_threshold(y, p, None, k, float(v or 0)) if both else 0.5)
        row = {"name": name, "rule": k if v is None else f"{k}={v:g}", "data_chosen": data_chosen,
               **M.rates_with_ci(y, p, t, prevalence)}
        if data_chosen and weights:
            draws = []
            for w in weights:
                if not (w * y).sum() or not (w * (1 - y)).sum():
                    continue
                draws.append(_weighted_rates(y, p, w, _threshold(y, p, w, k, float(v or 0)), prevalence))
            row["bootstrap"] = {key: list(percentile_interval([d.get(key, np.nan) for d in draws]))
                                for key in ("threshold", "sensitivity", "specificity", "ppv", "npv",
                                            *(("ppv_at_prevalence", "npv_at_prevalence") if prevalence else ()))}
            row["bootstrap"]["draws"] = len(draws)
        rows.append(row)
    return rows


def calibration(frame: pd.DataFrame, columns: tuple[str, ...] = ("prediction", "prediction_calibrated"),
                bins: int = CALIBRATION_BINS) -> dict[str, Any]:
    """Pooled and per-fold calibration of each score column present (:func:`metrics.calibration_summary`).

    ``frame``: ``target``, ``fold`` and the score columns. Per fold: the figures without the bins.
    """
    out: dict[str, Any] = {"bins": bins, "binning": "equal-mass (quantile) bins of the scores"}
    y_all = frame["target"].to_numpy(dtype=int)
    for col in columns:
        if col not in frame:
            continue
        p_all = frame[col].to_numpy(dtype=float)
        pooled = M.calibration_summary(y_all, p_all, bins)
        per_fold = {}
        for f, g in frame.groupby("fold"):
            s = M.calibration_summary(g["target"].to_numpy(dtype=int), g[col].to_numpy(dtype=float), bins)
            s.pop("reliability")
            per_fold[str(int(f))] = s
        out[col] = {"pooled": pooled, "folds": per_fold, "auc": M.roc_auc(y_all, p_all)}
    return out


def decision_curve(y: Any, p: Any, thresholds: tuple[float, ...] = DECISION_THRESHOLDS) -> dict[str, Any]:
    """Net benefit of the model, of treating all and of treating none (:func:`metrics.net_benefit`)."""
    return M.net_benefit(y, p, thresholds)


def multiclass(true: np.ndarray, probs: np.ndarray, classes: list[str], patient: Any, n_boot: int = N_BOOT,
               seed: int = 0) -> dict[str, Any]:
    """Per-class one-vs-rest AUC with patient-bootstrap intervals, balanced accuracy, macro-F1 at 0.5 (official rule:
    positive at ``> 0.5``; a class without positives or predictions scores 1) and at argmax, and the confusion
    matrix at argmax (counts and row-normalised).

    Args:
        true: class index of each row.
        probs: ``rows × classes`` probabilities.
        classes: class names in column order.
        patient: patient key of each row.
    """
    true = np.asarray(true, dtype=int)
    probs = np.asarray(probs, dtype=float)
    k = len(classes)
    onehot = np.eye(k, dtype=bool)[true]
    arg = probs.argmax(axis=1)
    per_class = []
    for c, name in enumerate(classes):
        y = onehot[:, c].astype(int)
        auc, ci = float("nan"), [float("nan")] * 2
        if 0 < y.sum() < len(y):
            auc = M.roc_auc(y, probs[:, c])
            ci = list(bootstrap(y, probs[:, c], np.asarray(patient), n_boot, seed)["auc"])
        per_class.append({"class": name, "support": int(y.sum()), "auc": auc, "auc_ci": ci})
    f1_05 = M.f1_per_class_official(onehot, probs, 0.5)
    f1_arg = M.f1_per_class_argmax(true, arg, k)
    for row, a, b in zip(per_class, f1_05, f1_arg, strict=True):
        row["f1_0_5"], row["f1_argmax"] = float(a), float(b)
    counts = M.confusion_matrix(true, arg, k)
    totals = counts.sum(axis=1, keepdims=True)
    return {"classes": list(classes), "per_class": per_class, "balanced_accuracy": M.balanced_accuracy(true, arg),
            "macro_f1_0_5": float(f1_05.mean()), "macro_f1_argmax": float(f1_arg.mean()),
            "confusion": counts.tolist(),
            "confusion_normalised": np.where(totals > 0, counts / np.maximum(totals, 1), 0.0).tolist(),
            "tie_rule": "macro-F1 at 0.5: a class is called at probability > 0.5 (the official ISIC scorer); "
                        "argmax: the most probable class (first in class order on a tie); binary operating "
                        "points: positive at score >= threshold"}
