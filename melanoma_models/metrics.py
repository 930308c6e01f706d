"""Binary classification metrics in numpy: ROC AUC, partial AUC above a sensitivity, curves, reports.

The AUC and the partial AUC follow the official ``isic-challenge-scoring`` definitions (its
``metrics.auc`` and ``metrics.auc_above_sensitivity``); a test checks them against that package.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: Dermatologists' operating point on dermoscopy melanoma classification used for comparison:
#: sensitivity 74.1% at specificity 60% (Brinker et al., Eur J Cancer 2019, 157 dermatologists).
DERMATOLOGISTS = {"specificity": 0.60, "sensitivity": 0.741}


def _check(y: Any, p: Any, w: Any = None) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y).astype(np.int64).reshape(-1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    if y.shape != p.shape:
        raise ValueError(f"{len(y)} labels but {len(p)} predictions")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if w is not None and np.shape(w) != y.shape:
        raise ValueError(f"{len(y)} labels but {np.size(w)} weights")
    return y, p


def roc_curve(y: Any, p: Any, w: Any = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), all distinct thresholds, starting at (0, 0) with threshold +inf.

    ``w``: optional non-negative row weights (e.g. how often a bootstrap drew each row's patient);
    rates are then weighted counts over weighted totals.
    """
    y, p = _check(y, p, w)
    order = np.argsort(-p, kind="mergesort")
    ys, ps = y[order], p[order]
    ws = np.ones(len(ys)) if w is None else np.asarray(w, dtype=np.float64).reshape(-1)[order]
    distinct = np.r_[np.nonzero(np.diff(ps))[0], len(ps) - 1] if len(ps) else np.array([], dtype=int)
    tps = np.cumsum(ys * ws)[distinct]
    fps = np.cumsum((1 - ys) * ws)[distinct]
    pos, neg = (ys * ws).sum(), ((1 - ys) * ws).sum()
    tpr = np.r_[0.0, tps / pos] if pos else np.r_[0.0, np.full(len(tps), np.nan)]
    fpr = np.r_[0.0, fps / neg] if neg else np.r_[0.0, np.full(len(fps), np.nan)]
    return fpr, tpr, np.r_[np.inf, ps[distinct]]


def roc_auc(y: Any, p: Any, w: Any = None) -> float:
    """Area under the ROC curve (ties count one half); NaN when only one class is present (or weighted in)."""
    y, p = _check(y, p, w)
    ww = np.ones(len(y)) if w is None else np.asarray(w, dtype=np.float64)
    if not (y * ww).sum() or not ((1 - y) * ww).sum():
        return float("nan")
    fpr, tpr, _ = roc_curve(y, p, w)
    return float(np.trapezoid(tpr, fpr))


def auc_above_sensitivity(y: Any, p: Any, sensitivity: float = 0.8) -> float:
    """The official ISIC "AUC above 80% sensitivity": area under the ROC segment where TPR ≥ ``sensitivity``.

    The area is measured over the segment's whole FPR range, as the official scorer does: a perfect
    model scores 1, a random one ``(1 - s²) / 2`` (0.18 at s = 0.8).
    """
    y, p = _check(y, p)
    if not 0 < sensitivity <= 1:
        raise ValueError(f"sensitivity must be in (0, 1], got {sensitivity}")
    if y.sum() == 0 or y.sum() == len(y):
        return float("nan")
    fpr, tpr, _ = roc_curve(y, p)
    i = int(np.searchsorted(tpr, sensitivity, side="left"))
    seg_t, seg_f = tpr[i:], fpr[i:]
    f_at = np.interp(sensitivity, tpr[max(i - 1, 0) : i + 1], fpr[max(i - 1, 0) : i + 1])
    seg_t = np.r_[sensitivity, seg_t]
    seg_f = np.r_[f_at, seg_f]
    return float(np.trapezoid(seg_t, seg_f))


def pauc_80_2024(y: Any, p: Any, min_tpr: float = 0.8, w: Any = None) -> float:
    """Partial AUC above ``min_tpr`` sensitivity exactly as the ISIC 2024 challenge scores it (range 0–0.2).

    Labels and scores are flipped (benign becomes the positive class, scores negated), the ROC curve
    of that is cut at FPR ``1 - min_tpr`` with linear interpolation, and the area up to the cut is
    returned: a perfect ranking scores ``1 - min_tpr`` (0.2), a fully reversed one 0. Unlike
    :func:`auc_above_sensitivity` (the 2020 scorer: the segment's whole FPR range, 1 for a perfect
    model), the area is not rescaled. NaN when only one class is present. ``w``: row weights, as in
    :func:`roc_curve`.
    """
    y, p = _check(y, p, w)
    if not 0 <= min_tpr < 1:
        raise ValueError(f"min_tpr must be in [0, 1), got {min_tpr}")
    ww = np.ones(len(y)) if w is None else np.asarray(w, dtype=np.float64)
    if not (y * ww).sum() or not ((1 - y) * ww).sum():
        return float("nan")
    max_fpr = 1.0 - min_tpr
    fpr, tpr, _ = roc_curve(1 - y, -p, w)
    stop = int(np.searchsorted(fpr, max_fpr, side="right"))
    if stop >= len(fpr):  # the curve ends at FPR 1 >= max_fpr: cut at the last point
        stop = len(fpr) - 1
    cut = float(np.interp(max_fpr, fpr[stop - 1 : stop + 1], tpr[stop - 1 : stop + 1]))
    return float(np.trapezoid(np.r_[tpr[:stop], cut], np.r_[fpr[:stop], max_fpr]))


def platt_scaling(score: Any, y: Any, class_weight: str | None = None) -> tuple[float, float]:
    """Platt's monotone calibration ``sigmoid(a·score + b)`` fitted on held-out (or inner-CV) scores.

    ``class_weight="balanced"`` weights the classes equally (so a model trained balanced stays balanced
    at 0.5). Returns the identity ``(1, 0)`` when it cannot be fitted (fewer than 4 finite scores, one
    class) or would reverse the ranking (``a <= 0``). The one calibration the plugins share.
    """
    from sklearn.linear_model import LogisticRegression

    score = np.asarray(score, dtype=float).reshape(-1)
    y = np.asarray(y).astype(int).reshape(-1)
    ok = np.isfinite(score)
    if ok.sum() < 4 or len(set(y[ok])) < 2:
        return 1.0, 0.0
    lr = LogisticRegression(C=1e4, class_weight=class_weight, max_iter=1000).fit(score[ok].reshape(-1, 1), y[ok])
    a = float(lr.coef_[0, 0])
    return (a, float(lr.intercept_[0])) if a > 0 else (1.0, 0.0)


def youden_threshold(y: Any, p: Any, w: Any = None) -> float:
    """The threshold that maximises sensitivity + specificity - 1 (predict positive when p ≥ t); ``w``: row
    weights (a bootstrap resample)."""
    fpr, tpr, thr = roc_curve(y, p, w)
    j = tpr - fpr
    best = int(np.nanargmax(j[1:])) + 1  # skip the +inf point
    return float(thr[best])


def threshold_at_specificity(y: Any, p: Any, specificity: float, w: Any = None) -> float:
    """The lowest threshold whose specificity is still ≥ ``specificity`` (``w``: row weights)."""
    fpr, _, thr = roc_curve(y, p, w)
    ok = np.nonzero(1 - fpr >= specificity - 1e-12)[0]
    return float(thr[ok[-1]])


def threshold_at_sensitivity(y: Any, p: Any, sensitivity: float, w: Any = None) -> float:
    """The highest threshold whose sensitivity is at least ``sensitivity`` (``w``: row weights)."""
    _, tpr, thr = roc_curve(y, p, w)
    i = int(np.searchsorted(tpr, sensitivity, side="left"))
    return float(thr[min(i, len(thr) - 1)])


def confusion(y: Any, p: Any, threshold: float) -> dict[str, int]:
    """TN, FP, FN, TP at ``threshold`` (positive when p ≥ threshold)."""
    y, p = _check(y, p)
    pred = p >= threshold
    return {"tn": int(((y == 0) & ~pred).sum()), "fp": int(((y == 0) & pred).sum()),
            "fn": int(((y == 1) & ~pred).sum()), "tp": int(((y == 1) & pred).sum())}


def _safe(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def operating_point(y: Any, p: Any, threshold: float) -> dict[str, Any]:
    """Sensitivity, specificity, precision, F1 and the confusion matrix at ``threshold``."""
    c = confusion(y, p, threshold)
    sens, spec = _safe(c["tp"], c["tp"] + c["fn"]), _safe(c["tn"], c["tn"] + c["fp"])
    prec = _safe(c["tp"], c["tp"] + c["fp"])
    return {"threshold": float(threshold), "sensitivity": sens, "specificity": spec, "precision": prec,
            "f1": _safe(2 * prec * sens, prec + sens), "predicted_positive": c["tp"] + c["fp"], "confusion": c}


def classification_report(y: Any, p: Any, threshold: float) -> dict[str, dict[str, float]]:
    """Per-class precision/recall/f1/support, accuracy, macro and weighted averages (sklearn's layout)."""
    c = confusion(y, p, threshold)
    rows: dict[str, dict[str, float]] = {}
    for name, tp, fp, fn in (("benign", c["tn"], c["fn"], c["fp"]), ("melanoma", c["tp"], c["fp"], c["fn"])):
        prec, rec = _safe(tp, tp + fp), _safe(tp, tp + fn)
        rows[name] = {"precision": prec, "recall": rec, "f1-score": _safe(2 * prec * rec, prec + rec),
                      "support": tp + fn}
    total = c["tn"] + c["fp"] + c["fn"] + c["tp"]
    rows["accuracy"] = {"precision": float("nan"), "recall": float("nan"),
                        "f1-score": _safe(c["tn"] + c["tp"], total), "support": total}
    for avg in ("macro avg", "weighted avg"):
        w = [rows["benign"]["support"], rows["melanoma"]["support"]] if avg == "weighted avg" else [1, 1]
        rows[avg] = {k: _safe(w[0] * rows["benign"][k] + w[1] * rows["melanoma"][k], sum(w))
                     for k in ("precision", "recall", "f1-score")}
        rows[avg]["support"] = total
    return rows


def report_text(report: dict[str, dict[str, float]]) -> str:
    """sklearn-style text table of :func:`classification_report`."""
    lines = [f"{'':>14s} {'precision':>9s} {'recall':>9s} {'f1-score':>9s} {'support':>9s}", ""]
    for name in ("benign", "melanoma"):
        r = report[name]
        lines.append(f"{name:>14s} {r['precision']:9.2f} {r['recall']:9.2f} {r['f1-score']:9.2f} {r['support']:9d}")
    lines.append("")
    a = report["accuracy"]
    lines.append(f"{'accuracy':>14s} {'':9s} {'':9s} {a['f1-score']:9.2f} {a['support']:9d}")
    for name in ("macro avg", "weighted avg"):
        r = report[name]
        lines.append(f"{name:>14s} {r['precision']:9.2f} {r['recall']:9.2f} {r['f1-score']:9.2f} {r['support']:9d}")
    return "\n".join(lines)


def precision_recall_curve(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) over all distinct thresholds, from the highest threshold down."""
    y, p = _check(y, p)
    fpr, tpr, thr = roc_curve(y, p)
    pos, neg = y.sum(), len(y) - y.sum()
    tp, fp = tpr[1:] * pos, fpr[1:] * neg
    precision = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
    return tpr[1:], precision


def average_precision(y: Any, p: Any) -> float:
    """Step-wise area under the precision-recall curve."""
    recall, precision = precision_recall_curve(y, p)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


# --- calibration, intervals, clinical utility, multi-class (issue 25) -------------------------------------------

#: z of a two-sided 95% interval
Z95 = 1.959963984540054


def wilson(k: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of the proportion ``k / n`` (no continuity correction); NaNs when ``n`` is 0."""
    if n <= 0:
        return float("nan"), float("nan")
    phat = k / n
    denom = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denom
    half = z * np.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def brier(y: Any, p: Any) -> float:
    """Mean squared difference between the probability and the 0/1 outcome."""
    y, p = _check(y, p)
    return float(np.mean((p - y) ** 2)) if len(y) else float("nan")


def brier_skill(y: Any, p: Any) -> float:
    """``1 - Brier / Brier of always predicting the prevalence`` (0: no better than the base rate; NaN: one class)."""
    y, p = _check(y, p)
    ref = float(y.mean() * (1 - y.mean())) if len(y) else 0.0
    return float(1 - brier(y, p) / ref) if ref > 0 else float("nan")


def equal_mass_bins(p: Any, bins: int = 10) -> np.ndarray:
    """Bin index of each score with ``bins`` quantile (equal-mass) bins, edges as scikit-learn's
    ``calibration_curve(strategy="quantile")`` draws them (tied scores share a bin, so bins can hold unequal
    counts or be empty)."""
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    edges = np.percentile(p, np.linspace(0, 1, bins + 1) * 100) if len(p) else np.zeros(bins + 1)
    return np.searchsorted(edges[1:-1], p)


def reliability(y: Any, p: Any, bins: int = 10) -> list[dict[str, Any]]:
    """The reliability diagram's bins (equal-mass): count, mean score, observed rate and its Wilson interval.

    Empty bins are left out (as scikit-learn's ``calibration_curve`` does).
    """
    y, p = _check(y, p)
    ids = equal_mass_bins(p, bins)
    rows = []
    for b in range(bins):
        m = ids == b
        n = int(m.sum())
        if not n:
            continue
        k = int(y[m].sum())
        rows.append({"bin": b, "count": n, "mean_predicted": float(p[m].mean()), "observed": k / n,
                     "positives": k, "observed_ci": list(wilson(k, n)), "low": float(p[m].min()),
                     "high": float(p[m].max())})
    return rows


def ece(y: Any, p: Any, bins: int = 10) -> float:
    """Expected calibration error: count-weighted mean |observed rate − mean score| over equal-mass bins."""
    y, p = _check(y, p)
    if not len(y):
        return float("nan")
    return float(sum(r["count"] * abs(r["observed"] - r["mean_predicted"]) for r in reliability(y, p, bins)) / len(y))


def _logit(p: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    q = np.clip(p, eps, 1 - eps)
    return np.log(q / (1 - q))


def calibration_slope_intercept(y: Any, p: Any, max_iter: int = 100) -> tuple[float, float]:
    """Logistic recalibration ``logit P(y=1) = intercept + slope · logit(p)`` fitted by maximum likelihood
    (unpenalised; Newton–Raphson): slope 1 and intercept 0 for a calibrated model, slope < 1 for overconfident
    scores. NaN when one class is present or the fit does not converge (the classes separated by the score)."""
    y, p = _check(y, p)
    if len(set(y.tolist())) < 2:
        return float("nan"), float("nan")
    x = np.column_stack([np.ones(len(p)), _logit(p)])
    beta = np.zeros(2)
    for _ in range(max_iter):
        mu = 1 / (1 + np.exp(-np.clip(x @ beta, -700, 700)))
        grad = x.T @ (y - mu)
        hess = (x * (mu * (1 - mu))[:, None]).T @ x
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            return float("nan"), float("nan")
        beta = beta + step
        if np.abs(step).max() < 1e-10:
            return float(beta[1]), float(beta[0])
    return float("nan"), float("nan")


def calibration_summary(y: Any, p: Any, bins: int = 10) -> dict[str, Any]:
    """Brier score and skill, ECE (equal-mass bins, the count stated), calibration slope and intercept, bins."""
    y, p = _check(y, p)
    slope, intercept = calibration_slope_intercept(y, p)
    return {"brier": brier(y, p), "brier_skill": brier_skill(y, p), "ece": ece(y, p, bins), "ece_bins": bins,
            "slope": slope, "intercept": intercept, "reliability": reliability(y, p, bins)}


def isotonic_fit(score: Any, y: Any) -> dict[str, list[float]]:
    """Isotonic (monotone non-decreasing) calibration as its breakpoints: ``{"x": [...], "y": [...]}``,
    applied with :func:`apply_calibration` (linear between breakpoints, clipped outside, as scikit-learn's
    ``IsotonicRegression(out_of_bounds="clip")``). Identity breakpoints when it cannot be fitted."""
    from sklearn.isotonic import IsotonicRegression

    score = np.asarray(score, dtype=float).reshape(-1)
    y = np.asarray(y).astype(int).reshape(-1)
    ok = np.isfinite(score)
    if ok.sum() < 4 or len(set(y[ok].tolist())) < 2:
        return {"x": [0.0, 1.0], "y": [0.0, 1.0]}
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(score[ok], y[ok])
    return {"x": [float(v) for v in iso.X_thresholds_], "y": [float(v) for v in iso.y_thresholds_]}


def fit_calibration(method: str, score: Any, y: Any) -> dict[str, Any]:
    """A calibrator as plain JSON: ``{"method": "platt", "a": .., "b": ..}`` (``sigmoid(a·logit(score) + b)``)
    or ``{"method": "isotonic", "x": [...], "y": [...]}``.

    Platt is fitted on the logit of the score (the scores are probabilities already), with
    :func:`platt_scaling`.

    Raises:
        ValueError: an unknown method.
    """
    score = np.asarray(score, dtype=float).reshape(-1)
    if method == "platt":
        a, b = platt_scaling(_logit(score), y)
        return {"method": "platt", "a": a, "b": b}
    if method == "isotonic":
        return {"method": "isotonic", **isotonic_fit(score, y)}
    raise ValueError(f"unknown calibration method {method!r}; known: platt, isotonic")


def apply_calibration(cal: dict[str, Any], score: Any) -> np.ndarray:
    """The calibrated probabilities of ``score`` under a calibrator from :func:`fit_calibration`."""
    s = np.asarray(score, dtype=float)
    if cal["method"] == "platt":
        return 1.0 / (1.0 + np.exp(-(float(cal["a"]) * _logit(s) + float(cal["b"]))))
    if cal["method"] == "isotonic":
        return np.interp(s, np.asarray(cal["x"], dtype=float), np.asarray(cal["y"], dtype=float))
    raise ValueError(f"unknown calibration method {cal.get('method')!r}; known: platt, isotonic")


def ppv_npv_at_prevalence(sensitivity: float, specificity: float, prevalence: float) -> tuple[float, float]:
    """PPV and NPV that a test of this sensitivity and specificity has where the condition's rate is ``prevalence``
    (Bayes' rule)."""
    tp, fp = sensitivity * prevalence, (1 - specificity) * (1 - prevalence)
    tn, fn = specificity * (1 - prevalence), (1 - sensitivity) * prevalence
    return _safe(tp, tp + fp), _safe(tn, tn + fn)


def rates_with_ci(y: Any, p: Any, threshold: float, prevalence: float | None = None) -> dict[str, Any]:
    """Sensitivity, specificity, PPV and NPV at ``threshold`` (positive at p ≥ threshold) with Wilson 95% intervals
    (the threshold taken as given), and PPV/NPV at ``prevalence`` when given (their interval from the ends of the
    sensitivity and specificity intervals, since both rise with each)."""
    c = confusion(y, p, threshold)
    tp, fp, fn, tn = c["tp"], c["fp"], c["fn"], c["tn"]
    out: dict[str, Any] = {"threshold": float(threshold), "confusion": c}
    for name, k, n in (("sensitivity", tp, tp + fn), ("specificity", tn, tn + fp), ("ppv", tp, tp + fp),
                       ("npv", tn, tn + fn)):
        out[name] = _safe(k, n) if n else float("nan")
        out[f"{name}_ci"] = list(wilson(k, n))
    if prevalence is not None:
        ppv, npv = ppv_npv_at_prevalence(out["sensitivity"], out["specificity"], prevalence)
        lo = ppv_npv_at_prevalence(out["sensitivity_ci"][0], out["specificity_ci"][0], prevalence)
        hi = ppv_npv_at_prevalence(out["sensitivity_ci"][1], out["specificity_ci"][1], prevalence)
        out.update(prevalence=float(prevalence), ppv_at_prevalence=ppv, npv_at_prevalence=npv,
                   ppv_at_prevalence_ci=[lo[0], hi[0]], npv_at_prevalence_ci=[lo[1], hi[1]])
    return out


def net_benefit(y: Any, p: Any, thresholds: Any) -> dict[str, list[float]]:
    """Decision curve: net benefit ``TP/n − FP/n · t/(1−t)`` of treating at p ≥ t, of treating everyone and of
    treating no one (0), at each threshold probability ``t``."""
    y, p = _check(y, p)
    n = max(len(y), 1)
    prev = float(y.mean()) if len(y) else float("nan")
    model, everyone = [], []
    for t in np.asarray(thresholds, dtype=float):
        odds = t / (1 - t)
        pred = p >= t
        model.append(float(((y == 1) & pred).sum() / n - ((y == 0) & pred).sum() / n * odds))
        everyone.append(float(prev - (1 - prev) * odds))
    return {"threshold": [float(t) for t in thresholds], "model": model, "treat_all": everyone,
            "treat_none": [0.0] * len(model)}


def f1_per_class_official(onehot: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Each class's F1 when it is called at ``probs > threshold`` (strictly above: the official ISIC scorer's
    rule); a class with no positives and no predictions scores 1.0."""
    onehot = np.asarray(onehot, dtype=bool)
    pred = np.asarray(probs, dtype=float) > threshold
    tp = (onehot & pred).sum(axis=0)
    fp = (~onehot & pred).sum(axis=0)
    fn = (onehot & ~pred).sum(axis=0)
    denom = 2 * tp + fp + fn
    return np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)


def f1_per_class_argmax(true: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Each class's F1 when every row is called its most probable class (same rule for an absent class: 1.0)."""
    true, pred = np.asarray(true), np.asarray(pred)
    out = []
    for c in range(k):
        tp = int(((true == c) & (pred == c)).sum())
        fp = int(((true != c) & (pred == c)).sum())
        fn = int(((true == c) & (pred != c)).sum())
        out.append(2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 1.0)
    return np.asarray(out, dtype=float)


def balanced_accuracy(true: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes present among the true labels."""
    true, pred = np.asarray(true), np.asarray(pred)
    recalls = [float((pred[true == c] == c).mean()) for c in np.unique(true)]
    return float(np.mean(recalls)) if recalls else float("nan")


def confusion_matrix(true: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """``k × k`` counts, rows true class, columns predicted class."""
    m = np.zeros((k, k), dtype=np.int64)
    np.add.at(m, (np.asarray(true, dtype=int), np.asarray(pred, dtype=int)), 1)
    return m


def nested_calibrated(score: Any, y: Any, fold: Any, method: str) -> np.ndarray:
    """Out-of-fold scores calibrated without touching their own rows: each fold's scores go through a calibrator
    fitted on the other folds' scores and labels only (:func:`fit_calibration`)."""
    score = np.asarray(score, dtype=float).reshape(-1)
    y = np.asarray(y).astype(int).reshape(-1)
    fold = np.asarray(fold).reshape(-1)
    out = np.full(len(score), np.nan)
    for f in np.unique(fold):
        held = fold == f
        out[held] = apply_calibration(fit_calibration(method, score[~held], y[~held]), score[held])
    return out


def official_labels(probs: Any) -> np.ndarray:
    """Each row's most probable class index, as the official ISIC scorer reads labels from probabilities:
    a row whose largest probability is shared by several classes is *undecided* (-1), which no class counts as
    correct (:func:`balanced_accuracy` then scores it as a miss for its true class)."""
    probs = np.asarray(probs, dtype=float)
    if not probs.size:
        return np.zeros(len(probs), dtype=int)
    top = probs.max(axis=1, keepdims=True)
    return np.where((probs == top).sum(axis=1) > 1, -1, probs.argmax(axis=1))


def isic2025_score(onehot: Any, probs: Any, classes: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """The ISIC 2025 (MILK10k) score of ``probs`` (rows: lesions, columns: ``classes``) against the one-hot truth,
    as the official scorer computes it.

    The score is the macro average over the classes of each class's F1 (Dice) with the class called at
    probability **> 0.5** (strictly, :func:`f1_per_class_official`; a class with no positives and no predictions
    scores 1.0). Beside it: each class's AUC (:func:`roc_auc`; NaN for a class absent from the truth, where the
    official scorer stops with an error) and their mean over the classes that have one, and the balanced
    accuracy of the most probable class (:func:`official_labels`: a tied maximum counts as wrong; mean recall
    over the classes present in the truth).
    """
    onehot = np.asarray(onehot, dtype=float)
    probs = np.asarray(probs, dtype=float)
    if onehot.shape != probs.shape or onehot.ndim != 2 or onehot.shape[1] != len(classes):
        raise ValueError(f"truth {onehot.shape} and probabilities {probs.shape} must both be rows × "
                         f"{len(classes)} classes")
    truth = onehot > 0.5
    called = probs > 0.5
    dice = f1_per_class_official(truth, probs, 0.5)
    per_class = []
    for c, name in enumerate(classes):
        y = truth[:, c].astype(int)
        per_class.append({"class": name, "positives": int(y.sum()), "called": int(called[:, c].sum()),
                          "true_positives": int((truth[:, c] & called[:, c]).sum()), "dice": float(dice[c]),
                          "auc": roc_auc(y, probs[:, c])})
    aucs = np.array([r["auc"] for r in per_class], dtype=float)
    return {"score": float(dice.mean()) if len(dice) else float("nan"),
            "macro_dice": float(dice.mean()) if len(dice) else float("nan"),
            "macro_auc": float(np.nanmean(aucs)) if np.isfinite(aucs).any() else float("nan"),
            "balanced_accuracy": balanced_accuracy(truth.argmax(axis=1), official_labels(probs)),
            "n": len(probs), "classes": list(classes), "per_class": per_class,
            "rule": "a class is called at probability > 0.5 (strictly); a class with no positives and no calls "
                    "scores Dice 1.0; score = mean Dice over the classes"}
