"""Evaluation of a run from its out-of-fold predictions: metrics.json and an HTML report with plots."""

from __future__ import annotations

import contextlib
import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melanoma_data import plots
from melanoma_data.errors import ConfigError, InputError
from melanoma_data.vocabulary import CLASSES_2025
from melanoma_models import clinical as C
from melanoma_models import metrics as M
from melanoma_models.rundir import RunConfig, read_calibration, run_config, write_json


def parse_threshold(rule: str | float | None) -> str | float:
    """``youden`` (default), a number in (0, 1), or ``spec=0.9`` / ``sens=0.9`` (an OOF operating point)."""
    if rule is None or rule == "youden":
        return "youden"
    if isinstance(rule, int | float):
        value = float(rule)
    else:
        text = str(rule).strip()
        if text.startswith(("spec=", "sens=")):
            try:
                v = float(text.split("=", 1)[1])
            except ValueError:
                raise ConfigError(f"--threshold {rule!r}: expected spec=0.9 or sens=0.9") from None
            if not 0 < v < 1:
                raise ConfigError(f"--threshold {rule!r}: the rate must be in (0, 1)")
            return text
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"--threshold {rule!r}: expected youden, a number in (0, 1), spec=X or sens=X") from None
    if not 0 < value < 1:
        raise ConfigError(f"--threshold {value}: must be in (0, 1)")
    return value


def choose_threshold(y: np.ndarray, p: np.ndarray, rule: str | float) -> float:
    """The decision threshold for ``rule`` on OOF predictions."""
    if rule == "youden":
        return M.youden_threshold(y, p)
    if isinstance(rule, float):
        return rule
    kind, value = rule.split("=")
    if kind == "spec":
        return M.threshold_at_specificity(y, p, float(value))
    return M.threshold_at_sensitivity(y, p, float(value))


def stored_rule(run_dir: Path) -> tuple[str | float, float | None]:
    """The threshold rule and threshold of the run's current ``metrics.json`` (``youden``, None when there is none)."""
    path = Path(run_dir) / "metrics.json"
    if not path.exists():
        return "youden", None
    try:
        old = json.loads(path.read_text())
    except ValueError:
        return "youden", None
    text = str(old.get("threshold_rule", "youden"))
    try:
        rule: str | float = parse_threshold(float(text.split(" ", 1)[1]) if text.startswith("fixed ") else text)
    except (ConfigError, ValueError):  # a hand-edited metrics.json: back to the default rule
        return "youden", None
    thr = (old.get("at_threshold") or {}).get("threshold")
    return rule, float(thr) if isinstance(thr, int | float) and not isinstance(thr, bool) else None


def _rule_tuple(rule: str | float) -> tuple[str, float | None]:
    if isinstance(rule, float):
        return "fixed", rule
    if rule == "youden":
        return "youden", None
    kind, value = rule.split("=")
    return kind, float(value)


def evaluate(run_dir: str | Path, threshold: str | float | None = None, prevalence: float | None = None,
             say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Compute the run's metrics from ``oof.parquet``, write ``metrics.json`` and ``report/``.

    Args:
        run_dir: a finished run.
        threshold: the decision rule (:func:`parse_threshold`); None keeps the rule stored in ``metrics.json``
            (Youden for a new run).
        prevalence: a melanoma rate at which PPV and NPV are also given (None: the stored one, if any).
        say: receives ``threshold old → new`` before a changed threshold is written (the service reads it).

    Returns:
        The metrics dict (pooled and per-fold AUC, partial AUC above 80% sensitivity, operating points
        with intervals, calibration, decision curve, multi-class figures, classification reports).
    """
    run_dir = Path(run_dir)
    oof_path = run_dir / "oof.parquet"
    if not oof_path.exists():
        raise InputError(f"{run_dir}: no oof.parquet (not a finished run; run the same fit command to finish it)")
    if prevalence is not None and not 0 < float(prevalence) < 1:
        raise ConfigError(f"--prevalence {prevalence}: must be in (0, 1)")
    cfg = run_config(run_dir)
    oof = pd.read_parquet(oof_path)
    y = oof["target"].to_numpy(dtype=int)
    p = oof["prediction"].to_numpy(dtype=float)
    old_rule, old_thr = stored_rule(run_dir)
    if prevalence is None and (run_dir / "metrics.json").exists():
        with contextlib.suppress(ValueError):
            prevalence = json.loads((run_dir / "metrics.json").read_text()).get("prevalence")
    rule = parse_threshold(threshold) if threshold is not None else old_rule
    fold_auc = {str(int(f)): M.roc_auc(g["target"], g["prediction"]) for f, g in oof.groupby("fold")}
    vals = np.array([v for v in fold_auc.values() if np.isfinite(v)])
    both = 0 < y.sum() < len(y)
    thr = choose_threshold(y, p, rule) if both else 0.5
    rule_text = rule if isinstance(rule, str) else f"fixed {rule}"
    if say is not None and old_thr is not None and float(old_thr) != thr:
        old_text = old_rule if isinstance(old_rule, str) else f"fixed {old_rule}"
        say(f"decision threshold {float(old_thr):.6g} ({old_text}) → {thr:.6g} ({rule_text}); "
            "serve and the report use the new one")
    derm_thr = M.threshold_at_specificity(y, p, M.DERMATOLOGISTS["specificity"]) if both else 0.5
    derm = M.operating_point(y, p, derm_thr)
    derm_sens_thr = M.threshold_at_sensitivity(y, p, M.DERMATOLOGISTS["sensitivity"]) if both else 0.5
    derm_sens = M.operating_point(y, p, derm_sens_thr)
    meta = _train_meta(cfg)
    patients = _patients(oof, meta)
    out = {
        "plugin": cfg.plugin,
        "run_id": cfg.run_id,
        "dataset": cfg.dataset.fingerprint,
        "n": len(oof),
        "positives": int(y.sum()),
        "auc": M.roc_auc(y, p),
        "auc_folds": fold_auc,
        "auc_mean": float(vals.mean()) if len(vals) else float("nan"),
        "auc_sd": float(vals.std(ddof=1)) if len(vals) > 1 else float("nan"),
        "pauc_80": M.auc_above_sensitivity(y, p, 0.8),
        "pauc_80_2024": M.pauc_80_2024(y, p, 0.8),
        "average_precision": M.average_precision(y, p) if y.sum() else float("nan"),
        "threshold_rule": rule_text,
        "at_threshold": M.operating_point(y, p, thr),
        "at_0_5": M.operating_point(y, p, 0.5),
        "dermatologists": {"their_sensitivity": M.DERMATOLOGISTS["sensitivity"],
                           "specificity": M.DERMATOLOGISTS["specificity"],
                           "our_sensitivity": derm["sensitivity"], "our_specificity": derm["specificity"],
                           "threshold": derm_thr,
                           "our_specificity_at_their_sensitivity": derm_sens["specificity"],
                           "our_sensitivity_at_their_sensitivity": derm_sens["sensitivity"],
                           "threshold_at_their_sensitivity": derm_sens_thr,
                           "source": "Brinker et al., Eur J Cancer 2019 (157 dermatologists, dermoscopy)"},
        "classification_report": M.classification_report(y, p, thr),
        "classification_report_0_5": M.classification_report(y, p, 0.5),
        "operating_points": C.operating_points(y, p, patients, _rule_tuple(rule), prevalence),
        "tie_rule": "operating points: positive at score >= threshold",
        "calibration": C.calibration(oof),
    }
    if prevalence is not None:
        out["prevalence"] = float(prevalence)
    scored = "prediction_calibrated" if "prediction_calibrated" in oof else "prediction"
    out["decision_curve"] = {"score": scored, **C.decision_curve(y, oof[scored].to_numpy(dtype=float))}
    cal = read_calibration(run_dir)
    if cal is not None:
        out["calibration"]["method"] = cal["method"]
    multi = _multiclass(run_dir, cfg, oof, meta, patients)
    if multi is not None:
        out["multiclass"] = multi
    isic2025 = _isic2025(run_dir, meta)
    if isic2025 is not None:
        out["isic2025"] = isic2025
    importance = _importance(run_dir)
    if importance:
        out["feature_importance"] = dict(list(importance.items())[:20])
    comparison = _comparison(run_dir, oof)
    if comparison:
        out["comparison"] = comparison
    out["subgroups"], out["artefacts"] = _group_tables(cfg, oof, meta)
    out["data"] = _data_summary(oof, meta)
    write_json(run_dir / "metrics.json", out)
    write_report(run_dir, oof, out, importance)
    return out


def _train_meta(cfg: RunConfig) -> pd.DataFrame | str:
    """The training metadata of the run's dataset version, or why it cannot be opened (moved or deleted)."""
    from melanoma_data.dataset import open_dataset

    try:
        return open_dataset(cfg.dataset.url).metadata(split="train")
    except Exception as exc:  # noqa: BLE001 - the report is still written without what needs the metadata
        return f"dataset version {cfg.dataset.url} could not be opened ({type(exc).__name__}: {exc})"


#: (label, column) of the counts the model card shows beside the subgroup table's (absent columns are skipped)
SUMMARY_COLUMNS = (("diagnosis", "diagnosis"), ("source", "source"), ("licence", "copyright_license"),
                   ("licence", "license"), ("sex", "sex"), ("age band", "age_approx"),
                   ("site", "anatom_site_general_challenge"), ("skin type", "fitzpatrick_skin_type"),
                   ("ITA band", "ita_band"), ("skin tone class", "skin_tone_class"),
                   ("Fitzpatrick (fitspatrick)", "fitspatrick"))


def _data_summary(oof: pd.DataFrame, meta: pd.DataFrame | str) -> dict[str, Any] | str:
    """Images and melanomas of the evaluated (training) rows per diagnosis, source, licence, sex, age band, site and
    skin type, and how many rows lack each (a dimension not recorded at all is listed in ``not_recorded``)."""
    from melanoma_models.subgroups import age_band

    if isinstance(meta, str):
        return meta
    frame = oof[["image_name", "target"]].merge(meta.drop(columns=["target"], errors="ignore"), on="image_name",
                                                how="left")
    out: dict[str, Any] = {"images": len(frame), "positives": int(frame["target"].sum()), "counts": {},
                           "missing": {}, "not_recorded": []}
    for label, col in SUMMARY_COLUMNS:
        if col not in frame:
            if label not in out["counts"] and label not in out["not_recorded"]:
                out["not_recorded"].append(label)
            continue
        values = age_band(frame[col]) if label == "age band" else frame[col].astype(object)
        values = values.where(values.notna() & (values.astype(str).str.strip() != ""))
        if label in out["not_recorded"]:
            out["not_recorded"].remove(label)
        out["missing"][label] = int(values.isna().sum())
        if values.notna().sum() == 0:
            out["counts"][label] = []
            continue
        grouped = frame.assign(_v=values).dropna(subset=["_v"]).groupby("_v")["target"]
        out["counts"][label] = [{"group": str(g), "images": int(n), "positives": int(k)}
                                for g, n, k in zip(grouped.size().index, grouped.size(), grouped.sum(), strict=True)]
    return out


def _patients(oof: pd.DataFrame, meta: pd.DataFrame | str) -> np.ndarray:
    """Each OOF row's patient key (each image its own patient where unknown)."""
    from melanoma_data.folds import patient_keys

    if isinstance(meta, str) or "patient_id" not in meta:
        return oof["image_name"].astype(str).to_numpy()
    return patient_keys(oof[["image_name"]].merge(meta[["image_name", "patient_id"]], on="image_name",
                                                  how="left")).to_numpy()


def _multiclass(run_dir: Path, cfg: RunConfig, oof: pd.DataFrame, meta: pd.DataFrame | str,
                patients: np.ndarray) -> dict[str, Any] | str | None:
    """The multi-class figures of a run with ``oof_classes.parquet`` (None for a binary run; a string saying why
    when the true classes cannot be read)."""
    path = run_dir / "oof_classes.parquet"
    if not path.exists():
        return None
    from melanoma_data.ingest import diagnosis_class

    probs = pd.read_parquet(path)
    classes = [c for c in probs.columns if c not in ("image_name", "fold")]
    if isinstance(meta, str):
        return meta
    if sorted(classes) == sorted(CLASSES_2025):
        return _multiclass_2025(oof, meta, probs, classes, patients)
    from melanoma_data.dataset import open_dataset

    definition = open_dataset(cfg.dataset.url).manifest.target_definition
    rows = oof[["image_name", "target"]].merge(meta[["image_name", *(["diagnosis"] if "diagnosis" in meta else [])]],
                                               on="image_name", how="left")
    true = [diagnosis_class(d, t, definition) for d, t in zip(rows.get("diagnosis", pd.Series([None] * len(rows))),
                                                              rows["target"], strict=True)]
    unknown = sorted({str(c) for c in true if c not in classes})
    if unknown:
        return f"true class(es) {', '.join(unknown)} are not among the model's classes {', '.join(classes)}"
    probs = probs.set_index("image_name").reindex(oof["image_name"])
    return C.multiclass(np.array([classes.index(c) for c in true]), probs[classes].to_numpy(dtype=float), classes,
                        patients)


def _multiclass_2025(oof: pd.DataFrame, meta: pd.DataFrame, probs: pd.DataFrame, classes: list[str],
                     patients: np.ndarray) -> dict[str, Any] | str:
    """The image-level multi-class figures of an ISIC 2025 run: the truth is each image's ``diagnosis_2025``
    (images without one are left out and counted in ``images_without_class``)."""
    if "diagnosis_2025" not in meta:
        return "the dataset version has no diagnosis_2025 column: the eleven ISIC 2025 classes cannot be scored"
    true = oof[["image_name"]].merge(meta[["image_name", "diagnosis_2025"]], on="image_name",
                                     how="left")["diagnosis_2025"]
    known = true.isin(classes).to_numpy()
    if not known.any():
        return "no training image has an ISIC 2025 class (diagnosis_2025)"
    rows = probs.set_index("image_name").reindex(oof["image_name"])[classes].to_numpy(dtype=float)[known]
    out = C.multiclass(np.array([classes.index(c) for c in true[known]]), rows, classes, np.asarray(patients)[known])
    out["images_without_class"] = int((~known).sum())
    out["truth"] = "diagnosis_2025 of each image"
    return out


def _isic2025(run_dir: Path, meta: pd.DataFrame | str) -> dict[str, Any] | str | None:
    """The ISIC 2025 score of the run's OOF lesions (``oof_lesions.parquet``) against each lesion's
    ``diagnosis_2025``: :func:`melanoma_models.metrics.isic2025_score`, the function ``score-submission`` uses.

    None for a run whose classes are not the eleven; a string saying why when it cannot be computed. Lesions
    without a class are left out (counted in ``lesions_without_class``); a lesion whose images disagree on the
    class is refused (a string naming them).
    """
    from melanoma_models import submission as S

    classes_path = run_dir / "oof_classes.parquet"
    if not classes_path.exists():
        return None
    import pyarrow.parquet as pq

    image_classes = [c for c in pq.read_schema(classes_path).names if c not in ("image_name", "fold")]
    if sorted(image_classes) != sorted(CLASSES_2025):
        return None
    path = run_dir / S.OOF_LESIONS
    if not path.exists():
        return (f"no {S.OOF_LESIONS} (the dataset has no lesion_id, or the run was fitted before lesion files "
                "were written: run the same fit command again to add them)")
    if isinstance(meta, str):
        return meta
    if "diagnosis_2025" not in meta:
        return "the dataset version has no diagnosis_2025 column: the eleven ISIC 2025 classes cannot be scored"
    lesions = pd.read_parquet(path)
    if sorted(S.lesion_classes(lesions)) != sorted(CLASSES_2025):
        return f"{S.OOF_LESIONS} does not hold the eleven class probabilities (written by an older run?)"
    labels = pd.DataFrame({"lesion_id": S.lesion_keys(meta).to_numpy(), "c": meta["diagnosis_2025"].to_numpy()})
    labels = labels[labels["c"].isin(CLASSES_2025)]
    spans = labels.groupby("lesion_id")["c"].nunique()
    if (spans > 1).any():
        return (f"lesion(s) {S.listed(spans[spans > 1].index.tolist())} have images of different ISIC 2025 classes "
                "(diagnosis_2025); a lesion has one class")
    truth = labels.drop_duplicates("lesion_id").set_index("lesion_id")["c"].reindex(lesions["lesion_id"])
    known = truth.notna().to_numpy()
    if not known.any():
        return "no training lesion has an ISIC 2025 class (diagnosis_2025)"
    onehot = np.array([[float(c == k) for k in CLASSES_2025] for c in truth[known]])
    probs = lesions.loc[known, list(CLASSES_2025)].to_numpy(dtype=float)
    if not np.isfinite(probs).all():
        return f"{int((~np.isfinite(probs)).any(axis=1).sum())} lesion(s) lack a class probability"
    out = M.isic2025_score(onehot, probs, list(CLASSES_2025))
    out.update(level="lesion (out-of-fold, mean of each lesion's image probabilities)",
               truth="diagnosis_2025 of each lesion", lesions_without_class=int((~known).sum()), source=S.SOURCE)
    return out


def _importance(run_dir: Path) -> dict[str, float]:
    """Mean normalised gain per feature over the folds (plugins that write feature_importance.json)."""
    tables = []
    for f in sorted(run_dir.glob("fold-*/model/feature_importance.json")):
        gains = pd.Series(json.loads(f.read_text()), dtype=float)
        tables.append(gains / gains.sum() if gains.sum() > 0 else gains)
    if not tables:
        return {}
    mean = pd.concat(tables, axis=1).fillna(0.0).mean(axis=1).sort_values(ascending=False)
    return {str(k): float(v) for k, v in mean.items()}


def _group_tables(cfg: RunConfig, oof: pd.DataFrame, meta: pd.DataFrame | str
                  ) -> tuple[list[dict[str, Any]] | str, dict[str, Any] | str]:
    """The subgroup table of the OOF scores with the dataset's metadata, and the artefact (bias) tables.

    One :func:`melanoma_models.subgroups.subgroup_table` over the metadata dimensions and artefact presence
    (:data:`melanoma_data.columns.PRESENCE`: ``yes``/``no`` groups), split in two, with each artefact's rate
    among positives and negatives. A string saying why for both when the run's dataset version cannot be opened
    any more (moved or deleted); for the artefacts when the version has no artefact measurements.
    """
    from melanoma_data.columns import PRESENCE, presence, presence_rates
    from melanoma_models.subgroups import DIMENSIONS, subgroup_table

    if isinstance(meta, str):
        return meta, meta
    keep = ["image_name", "patient_id", *(c for _, c in (*DIMENSIONS, *PRESENCE) if c in meta)]
    frame = oof[["image_name", "target", "prediction"]].merge(meta[keep], on="image_name", how="left")
    flags = presence(frame)
    for label, flag in flags.items():
        frame[f"_artefact {label}"] = flag.map({True: "yes", False: "no"}).astype(object)
    rows = subgroup_table(frame, dimensions=(*DIMENSIONS, *((label, f"_artefact {label}") for label in flags)))
    subgroups = [r for r in rows if r["dimension"] not in flags]
    if not flags:
        return subgroups, ("this dataset version has no artefact measurements (preprocessed before the artefacts "
                           "op, or with [artefacts] enabled = false)")
    return subgroups, {"auc": [r for r in rows if r["dimension"] in flags], "rates": presence_rates(frame)}


def _rate_row(r: dict[str, Any]) -> str:
    """One artefact's row of the report's rate table."""

    def pct(v: float) -> str:
        return "—" if v != v else f"{v:.1%}"

    ratio = "" if r["ratio"] != r["ratio"] else f"{r['ratio']:.2f}"
    return (f"<tr><td>{html.escape(r['artefact'])}</td><td>{r['positives_with']}/{r['positives']} "
            f"({pct(r['rate_positive'])})</td><td>{r['negatives_with']}/{r['negatives']} "
            f"({pct(r['rate_negative'])})</td><td>{ratio}</td></tr>")


def _ci(v: float, ci: list[float] | None, fmt: str = ".3f") -> str:
    """``v (lo–hi)``, blank parts for NaN."""
    if v is None or not np.isfinite(v):
        return "—"
    if not ci or not all(np.isfinite(c) for c in ci):
        return f"{v:{fmt}}"
    return f"{v:{fmt}} ({ci[0]:{fmt}}–{ci[1]:{fmt}})"


def _clinical_sections(plt: Any, out: Path, m: dict[str, Any]) -> str:
    """The report's operating points with intervals, calibration, decision curve and multi-class sections (their
    plots written into ``out``)."""
    parts = []
    ops = m.get("operating_points") or []
    prev = m.get("prevalence")
    head = ("<tr><th>operating point</th><th>threshold</th><th>sensitivity</th><th>specificity</th><th>PPV</th>"
            "<th>NPV</th>" + (f"<th>PPV at prevalence {prev:.3g}</th><th>NPV at prevalence {prev:.3g}</th>"
                              if prev else "") + "</tr>")
    rows = []
    for r in ops:
        boot = r.get("bootstrap") or {}
        cells = [html.escape(r["name"]) + (f" <small>({html.escape(r['rule'])})</small>" if r["data_chosen"] else ""),
                 f"{r['threshold']:.4g}" + (f"<br><small>boot {_ci(r['threshold'], boot.get('threshold'), '.3g')}"
                                            "</small>" if boot else "")]
        for key in ("sensitivity", "specificity", "ppv", "npv", *(("ppv_at_prevalence", "npv_at_prevalence")
                                                                  if prev else ())):
            wil = _ci(r.get(key, float("nan")), r.get(f"{key}_ci"))
            cells.append(wil + (f"<br><small>boot {_ci(r.get(key, float('nan')), boot.get(key))}</small>"
                                if key in boot else ""))
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    if rows:
        parts.append("<h2>Operating points with 95% intervals</h2><p>First interval: Wilson's, with the threshold as "
                     "given. <i>boot</i>: patients resampled and the threshold chosen again in every resample "
                     "(thresholds chosen on these scores). A score is positive at score ≥ threshold."
                     + (" PPV/NPV at the stated prevalence: Bayes' rule on sensitivity and specificity; the interval "
                        "from the ends of theirs." if prev else "") + f"</p><table>{head}{''.join(rows)}</table>")
    cal = m.get("calibration") or {}
    cols = [c for c in ("prediction", "prediction_calibrated") if c in cal]
    if cols:
        fig, (ax, axc) = plt.subplots(2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
        ax.plot([0, 1], [0, 1], ls=":", color="grey", label="perfect calibration")
        counts_drawn = False
        for col, colour in zip(cols, ("#4C72B0", "#C44E52"), strict=False):
            bins = cal[col]["pooled"]["reliability"]
            if not bins:
                continue
            x = np.array([b["mean_predicted"] for b in bins])
            yv = np.array([b["observed"] for b in bins])
            lo = np.array([b["observed_ci"][0] for b in bins])
            hi = np.array([b["observed_ci"][1] for b in bins])
            name = "raw score" if col == "prediction" else f"calibrated ({cal.get('method', '')})"
            ax.errorbar(x, yv, yerr=[np.clip(yv - lo, 0, None), np.clip(hi - yv, 0, None)], marker="o", ms=4,
                        capsize=2, color=colour, label=f"{name}: ECE {cal[col]['pooled']['ece']:.3f}")
            if not counts_drawn:
                width = [max(b["high"] - b["low"], 0.01) for b in bins]
                axc.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["count"] for b in bins], width=width,
                        color=colour, alpha=0.7)
                counts_drawn = True
        ax.set_ylabel("observed melanoma rate (95% Wilson)")
        ax.set_title(f"Reliability (pooled OOF, {cal['bins']} equal-mass bins)")
        ax.legend(fontsize=7, loc="upper left")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        axc.set_xlabel("predicted probability of melanoma (bin mean)")
        axc.set_ylabel("images per bin")
        plots.save(fig, out / "reliability.png")
        trows = []
        for col in cols:
            for where, s in (("pooled", cal[col]["pooled"]), *((f"fold {f}", v) for f, v in cal[col]["folds"].items())):
                trows.append(f"<tr><td>{html.escape(col)}</td><td>{html.escape(where)}</td><td>{s['brier']:.4f}</td>"
                             f"<td>{_ci(s['brier_skill'], None)}</td><td>{s['ece']:.4f}</td>"
                             f"<td>{_ci(s['slope'], None)}</td><td>{_ci(s['intercept'], None)}</td></tr>")
        note = ""
        if "prediction_calibrated" in cols:
            note = (f"<p><code>prediction_calibrated</code>: the out-of-fold scores through a {cal.get('method', '')}"
                    " calibration fitted on the <i>other</i> folds' scores only (nested); <code>prediction</code> "
                    "is the raw score. Calibrated OOF AUC "
                    f"{cal['prediction_calibrated']['auc']:.4f} vs raw {cal['prediction']['auc']:.4f} (per-fold "
                    "calibrators differ, so the pooled ranking can move).</p>")
        parts.append("<h2>Calibration</h2><p>Brier score (skill: 1 − Brier / Brier of the prevalence), expected "
                     f"calibration error over {cal['bins']} equal-mass bins, and the calibration slope and intercept "
                     "(logistic regression of the outcome on logit(score); 1 and 0 when calibrated).</p>" + note
                     + '<img src="reliability.png"><table><tr><th>score</th><th>where</th><th>Brier</th>'
                     "<th>Brier skill</th><th>ECE</th><th>slope</th><th>intercept</th></tr>" + "".join(trows)
                     + "</table>")
    dc = m.get("decision_curve")
    if dc and dc.get("threshold"):
        t = np.array(dc["threshold"])
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(t, dc["model"], color="#4C72B0", lw=2, label=f"model ({dc['score']})")
        ax.plot(t, dc["treat_all"], color="#C44E52", ls="--", label="treat all (biopsy every lesion)")
        ax.plot(t, dc["treat_none"], color="black", ls=":", label="treat none")
        top = max(max(dc["model"]), max(dc["treat_all"]), 0.0)
        ax.set_ylim(-0.05 * max(top, 0.01) - 0.01, top * 1.1 + 0.01)
        ax.set_xlabel("threshold probability (biopsy if the probability ≥ it)")
        ax.set_ylabel("net benefit")
        ax.set_title("Decision curve (pooled OOF)")
        ax.legend(fontsize=8)
        plots.save(fig, out / "decision.png")
        shown = [i for i, v in enumerate(dc["threshold"]) if round(v, 3) in (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3,
                                                                              0.4, 0.5)]
        rows = "".join(f"<tr><td>{dc['threshold'][i]:.2f}</td><td>{dc['model'][i]:.4f}</td>"
                       f"<td>{dc['treat_all'][i]:.4f}</td><td>0</td></tr>" for i in shown)
        parts.append("<h2>Decision curve</h2><p>Net benefit = TP/n − FP/n · t/(1 − t) of biopsying at probability "
                     f"≥ t, computed on <code>{html.escape(dc['score'])}</code> (the threshold probability is read "
                     "as a probability, so calibration matters here).</p>"
                     '<img src="decision.png"><table><tr><th>threshold</th><th>model</th><th>treat all</th>'
                     f"<th>treat none</th></tr>{rows}</table>")
    mc = m.get("multiclass")
    if isinstance(mc, dict):
        k = len(mc["classes"])
        mat = np.array(mc["confusion_normalised"])
        fig, ax = plt.subplots(figsize=(1.8 + 0.55 * k, 0.8 + 0.5 * k))
        ax.imshow(mat, cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(mat):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v > 0.5 else "black")
        ax.set_xticks(range(k), mc["classes"], rotation=45, fontsize=8)
        ax.set_yticks(range(k), [f"{c} (n={sum(row)})" for c, row in zip(mc["classes"], mc["confusion"], strict=True)],
                      fontsize=8)
        ax.set_xlabel("predicted (argmax)")
        ax.set_ylabel("true")
        ax.set_title("Confusion matrix (rows sum to 1)", fontsize=9)
        plots.save(fig, out / "confusion_classes.png")
        rows = "".join(f"<tr><td>{html.escape(r['class'])}</td><td>{r['support']}</td><td>{_ci(r['auc'], r['auc_ci'])}"
                       f"</td><td>{r['f1_0_5']:.3f}</td><td>{r['f1_argmax']:.3f}</td></tr>" for r in mc["per_class"])
        parts.append("<h2>Diagnosis classes</h2><p>Balanced accuracy (argmax) "
                     f"<b>{mc['balanced_accuracy']:.3f}</b>; macro-F1 at 0.5 <b>{mc['macro_f1_0_5']:.3f}</b>, at "
                     f"argmax <b>{mc['macro_f1_argmax']:.3f}</b>. Tie rule: {html.escape(mc['tie_rule'])}; a class "
                     "with no images and no predictions scores F1 1.0 (the official scorer's rule). The melanoma "
                     "figures above are melanoma vs the rest.</p>"
                     '<img src="confusion_classes.png"><table><tr><th>class</th><th>images</th>'
                     "<th>one-vs-rest AUC (95% CI, patients resampled)</th><th>F1 at 0.5</th><th>F1 argmax</th></tr>"
                     f"{rows}</table>")
    elif mc:
        parts.append(f"<h2>Diagnosis classes</h2><p>{html.escape(str(mc))}</p>")
    parts.append(_isic2025_section(m.get("isic2025")))
    return "\n".join(parts)


def _isic2025_section(score: dict[str, Any] | str | None) -> str:
    """The report's ISIC 2025 section: the lesion-level score and its per-class table."""
    if score is None:
        return ""
    if isinstance(score, str):
        return f"<h2>ISIC 2025 score (lesions)</h2><p>{html.escape(score)}</p>"

    def num(v: float) -> str:
        return f"{v:.3f}" if np.isfinite(v) else "n/a"

    rows = "".join(f"<tr><td>{html.escape(r['class'])}</td><td>{r['positives']}</td><td>{r['called']}</td>"
                   f"<td>{r['true_positives']}</td><td>{num(r['dice'])}</td><td>{num(r['auc'])}</td></tr>"
                   for r in score["per_class"])
    left = (f" {score['lesions_without_class']} lesion(s) without an ISIC 2025 class are left out."
            if score.get("lesions_without_class") else "")
    return ("<h2>ISIC 2025 score (lesions)</h2><p>Out-of-fold, one row per lesion (the mean of its images' "
            f"probabilities), {score['n']} lesions.{html.escape(left)} Score (macro Dice, a class called at "
            f"probability &gt; 0.5): <b>{num(score['score'])}</b>; macro AUC {num(score['macro_auc'])}; balanced "
            f"accuracy {num(score['balanced_accuracy'])}. A class with no lesions and no calls scores Dice 1.0. "
            f"Source: {html.escape(score.get('source', ''))}.</p><table><tr><th>class</th><th>lesions</th>"
            "<th>called &gt; 0.5</th><th>true positives</th><th>Dice (F1)</th><th>AUC</th></tr>"
            f"{rows}</table>")


def _comparison(run_dir: Path, oof: pd.DataFrame) -> dict[str, float]:
    """Pooled OOF AUC of every column of the folds' extra_predictions.parquet (e.g. each base run and combiner)."""
    parts = [pd.read_parquet(f) for f in sorted(run_dir.glob("fold-*/extra_predictions.parquet"))]
    if not parts:
        return {}
    extra = pd.concat(parts, ignore_index=True).merge(oof[["image_name", "target"]], on="image_name")
    return {c: M.roc_auc(extra["target"], extra[c]) for c in extra.columns if c not in ("image_name", "target")}


def write_report(run_dir: Path, oof: pd.DataFrame, m: dict[str, Any], importance: dict[str, float] | None = None
                 ) -> Path:
    """``report/index.html`` with ROC, precision-recall, score distributions and confusion matrices.

    ``importance``: mean feature importance over the folds (as :func:`evaluate` computed it), plotted when given.
    """
    plt = plots.pyplot()
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    y = oof["target"].to_numpy(dtype=int)
    p = oof["prediction"].to_numpy(dtype=float)

    fig, ax = plt.subplots(figsize=(5, 5))
    for f, g in oof.groupby("fold"):
        if 0 < g["target"].sum() < len(g):
            fpr, tpr, _ = M.roc_curve(g["target"], g["prediction"])
            ax.plot(fpr, tpr, lw=0.8, alpha=0.5, label=f"fold {f} ({m['auc_folds'][str(int(f))]:.3f})")
    if 0 < y.sum() < len(y):
        fpr, tpr, _ = M.roc_curve(y, p)
        ax.plot(fpr, tpr, lw=2, color="black", label=f"pooled OOF ({m['auc']:.3f})")
    ax.plot([0, 1], [0, 1], ls=":", color="grey")
    ax.axhline(0.8, ls="--", lw=0.6, color="grey")
    d = m["dermatologists"]
    ax.scatter([1 - d["specificity"]], [d["their_sensitivity"]], marker="*", s=140, color="#C44E52",
               label="dermatologists (Brinker 2019)", zorder=5)
    t = m["at_threshold"]
    ax.scatter([1 - t["specificity"]], [t["sensitivity"]], marker="o", s=50, color="#4C72B0",
               label=f"chosen threshold {t['threshold']:.3g}", zorder=5)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"ROC — {m['plugin']}")
    ax.legend(fontsize=7, loc="lower right")
    plots.save(fig, out / "roc.png")

    fig, ax = plt.subplots(figsize=(5, 4))
    if y.sum():
        rec, prec = M.precision_recall_curve(y, p)
        ax.step(rec, prec, where="post", color="black", label=f"AP {m['average_precision']:.3f}")
        ax.axhline(y.mean(), ls=":", color="grey", label=f"prevalence {y.mean():.3f}")
    ax.set_xlabel("recall (sensitivity)")
    ax.set_ylabel("precision")
    ax.set_title("Precision–recall")
    ax.legend(fontsize=8)
    plots.save(fig, out / "pr.png")

    fig, ax = plt.subplots(figsize=(6, 3.5))
    bins = np.linspace(0, 1, 41)
    ax.hist(p[y == 0], bins=bins, alpha=0.6, color="#4C72B0", label=f"benign (n={int((y == 0).sum())})", density=True)
    ax.hist(p[y == 1], bins=bins, alpha=0.6, color="#C44E52", label=f"melanoma (n={int(y.sum())})", density=True)
    ax.axvline(0.5, ls=":", color="grey", label="0.5")
    ax.axvline(t["threshold"], ls="--", color="black", label=f"chosen {t['threshold']:.3g}")
    ax.set_xlabel("predicted probability of melanoma")
    ax.set_title("OOF score distribution per class (density)")
    ax.legend(fontsize=7)
    plots.save(fig, out / "scores.png")

    fig, axes = plt.subplots(1, 2, figsize=(7, 3.2))
    for ax, (title, op) in zip(axes, (("threshold 0.5", m["at_0_5"]),
                                      (f"chosen {t['threshold']:.3g}", m["at_threshold"])), strict=True):
        c = op["confusion"]
        mat = np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]])
        ax.imshow(mat, cmap="Blues")
        for (i, j), v in np.ndenumerate(mat):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=11,
                    color="white" if v > mat.max() / 2 else "black")
        ax.set_xticks([0, 1], ["benign", "melanoma"])
        ax.set_yticks([0, 1], ["benign", "melanoma"])
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title, fontsize=9)
    plots.save(fig, out / "confusion.png")

    def op_row(name: str, op: dict[str, Any]) -> str:
        return (f"<tr><td>{html.escape(name)}</td><td>{op['threshold']:.4g}</td><td>{op['sensitivity']:.3f}</td>"
                f"<td>{op['specificity']:.3f}</td><td>{op['precision']:.3f}</td><td>{op['f1']:.3f}</td>"
                f"<td>{op['predicted_positive']}</td></tr>")

    derm_op = M.operating_point(y, p, m["dermatologists"]["threshold"]) if len(y) else m["at_0_5"]
    extras = ""
    if importance:
        top = list(importance.items())[:25][::-1]
        fig, ax = plt.subplots(figsize=(6, 0.22 * len(top) + 1))
        ax.barh([k for k, _ in top], [v for _, v in top], color="#4C72B0")
        ax.set_xlabel("share of total gain (mean over folds)")
        ax.set_title("Feature importance")
        ax.tick_params(axis="y", labelsize=7)
        plots.save(fig, out / "importance.png")
        extras += '<h2>Feature importance</h2><img src="importance.png">'
    if m.get("comparison"):
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>"
                       for k, v in sorted(m["comparison"].items(), key=lambda kv: -kv[1]))
        extras += ("<h2>Base runs and combiners (pooled OOF AUC, nested CV)</h2>"
                   f"<table><tr><th>predictor</th><th>AUC</th></tr>{rows}</table>")
    if isinstance(m.get("subgroups"), list):
        from melanoma_models.subgroups import MIN_IMAGES, MIN_PATIENTS, MIN_POSITIVES, table_html

        extras += ("<h2>Subgroups (95% intervals: patients resampled)</h2>"
                   f"<p>Fewer than {MIN_POSITIVES} melanomas, {MIN_IMAGES} images or {MIN_PATIENTS} patients: "
                   "counts only. "
                   "<b>below overall</b>: the whole interval lies below the overall AUC.</p>"
                   + table_html(m["subgroups"]))
    elif m.get("subgroups"):
        extras += f"<h2>Subgroups</h2><p>{html.escape(str(m['subgroups']))}</p>"
    if isinstance(m.get("artefacts"), dict):
        from melanoma_models.subgroups import table_html

        rates = "".join(_rate_row(r) for r in m["artefacts"]["rates"])
        extras += ("<h2>Artefacts a model could lean on</h2><p>Rulers, ink, bubbles, dark corners and heavy hair "
                   "(found by preprocessing) among melanomas and among benign images, and the AUC with and without "
                   "each: a rate that differs between the classes is a shortcut a model can learn; an AUC that "
                   "differs by presence says whether it did.</p><table><tr><th>artefact</th><th>melanoma</th>"
                   f"<th>benign</th><th>ratio</th></tr>{rates}</table>" + table_html(m["artefacts"]["auc"]))
    elif m.get("artefacts"):
        extras += f"<h2>Artefacts a model could lean on</h2><p>{html.escape(str(m['artefacts']))}</p>"
    clinical = _clinical_sections(plt, out, m)
    folds = ", ".join(f"{k}: {v:.3f}" for k, v in m["auc_folds"].items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(m['run_id'])}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}} td,th{{border:1px solid #ccc;padding:3px 8px}}
table{{border-collapse:collapse;margin:1em 0}} img{{max-width:48%;vertical-align:top}}</style></head><body>
<h1>Run {html.escape(m['run_id'])} — plugin <code>{html.escape(m['plugin'])}</code></h1>
<p>Dataset {html.escape(m['dataset'])}; {m['n']} training images, {m['positives']} melanoma
({m['positives'] / max(m['n'], 1):.2%}); out-of-fold predictions.</p>
<table><tr><th>pooled OOF AUC</th><td><b>{m['auc']:.4f}</b></td></tr>
<tr><th>per-fold AUC</th><td>{m['auc_mean']:.4f} ± {m['auc_sd']:.4f} ({html.escape(folds)})</td></tr>
<tr><th>partial AUC above 80% sensitivity (2020 scorer, 0–1)</th><td>{m['pauc_80']:.4f}</td></tr>
<tr><th>partial AUC above 80% TPR (2024 challenge, 0–0.2)</th><td>{m.get('pauc_80_2024', float('nan')):.4f}</td></tr>
<tr><th>average precision</th><td>{m['average_precision']:.4f}</td></tr>
<tr><th>dermatologists' operating point</th><td>at {m['dermatologists']['specificity']:.0%} specificity:
our sensitivity <b>{m['dermatologists']['our_sensitivity']:.1%}</b> vs their
{m['dermatologists']['their_sensitivity']:.1%} ({html.escape(m['dermatologists']['source'])})</td></tr></table>
<h2>Operating points</h2>
<table><tr><th>threshold</th><th>value</th><th>sensitivity</th><th>specificity</th><th>precision</th><th>f1</th>
<th>predicted melanoma</th></tr>
{op_row('0.5 (default)', m['at_0_5'])}
{op_row('chosen: ' + str(m['threshold_rule']), m['at_threshold'])}
{op_row('dermatologists specificity 60%', derm_op)}</table>
<h2>Classification report at 0.5</h2><pre>{html.escape(M.report_text(m['classification_report_0_5']))}</pre>
<h2>Classification report at the chosen threshold ({m['at_threshold']['threshold']:.4g})</h2>
<pre>{html.escape(M.report_text(m['classification_report']))}</pre>
<h2>Curves</h2><img src="roc.png"><img src="pr.png">
<h2>Scores and confusion matrices</h2><img src="scores.png"><img src="confusion.png">
{clinical}
{extras}
</body></html>"""
    (out / "index.html").write_text(page, encoding="utf-8")
    return out / "index.html"
