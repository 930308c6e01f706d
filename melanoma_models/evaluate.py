"""Evaluation of a run from its out-of-fold predictions: metrics.json and an HTML report with plots."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melanoma_data import plots
from melanoma_data.errors import ConfigError, InputError
from melanoma_models import metrics as M
from melanoma_models.rundir import run_config, write_json


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


def evaluate(run_dir: str | Path, threshold: str | float | None = None) -> dict[str, Any]:
    """Compute the run's metrics from ``oof.parquet``, write ``metrics.json`` and ``report/``.

    Returns:
        The metrics dict (pooled and per-fold AUC, partial AUC above 80% sensitivity, operating points
        at the chosen threshold, at 0.5 and at the dermatologists' specificity, classification reports).
    """
    run_dir = Path(run_dir)
    oof_path = run_dir / "oof.parquet"
    if not oof_path.exists():
        raise InputError(f"{run_dir}: no oof.parquet (not a finished run; run the same fit command to finish it)")
    cfg = run_config(run_dir)
    oof = pd.read_parquet(oof_path)
    y = oof["target"].to_numpy(dtype=int)
    p = oof["prediction"].to_numpy(dtype=float)
    rule = parse_threshold(threshold)
    fold_auc = {str(int(f)): M.roc_auc(g["target"], g["prediction"]) for f, g in oof.groupby("fold")}
    vals = np.array([v for v in fold_auc.values() if np.isfinite(v)])
    thr = choose_threshold(y, p, rule) if 0 < y.sum() < len(y) else 0.5
    derm_thr = M.threshold_at_specificity(y, p, M.DERMATOLOGISTS["specificity"]) if 0 < y.sum() < len(y) else 0.5
    derm = M.operating_point(y, p, derm_thr)
    out = {
        "plugin": cfg["plugin"],
        "run_id": cfg["run_id"],
        "dataset": cfg["dataset"]["fingerprint"],
        "n": len(oof),
        "positives": int(y.sum()),
        "auc": M.roc_auc(y, p),
        "auc_folds": fold_auc,
        "auc_mean": float(vals.mean()) if len(vals) else float("nan"),
        "auc_sd": float(vals.std(ddof=1)) if len(vals) > 1 else float("nan"),
        "pauc_80": M.auc_above_sensitivity(y, p, 0.8),
        "pauc_80_2024": M.pauc_80_2024(y, p, 0.8),
        "average_precision": M.average_precision(y, p) if y.sum() else float("nan"),
        "threshold_rule": rule if isinstance(rule, str) else f"fixed {rule}",
        "at_threshold": M.operating_point(y, p, thr),
        "at_0_5": M.operating_point(y, p, 0.5),
        "dermatologists": {"their_sensitivity": M.DERMATOLOGISTS["sensitivity"],
                           "specificity": M.DERMATOLOGISTS["specificity"],
                           "our_sensitivity": derm["sensitivity"], "our_specificity": derm["specificity"],
                           "threshold": derm_thr,
                           "source": "Brinker et al., Eur J Cancer 2019 (157 dermatologists, dermoscopy)"},
        "classification_report": M.classification_report(y, p, thr),
        "classification_report_0_5": M.classification_report(y, p, 0.5),
    }
    importance = _importance(run_dir)
    if importance:
        out["feature_importance"] = dict(list(importance.items())[:20])
    comparison = _comparison(run_dir, oof)
    if comparison:
        out["comparison"] = comparison
    out["subgroups"], out["artefacts"] = _group_tables(cfg, oof)
    write_json(run_dir / "metrics.json", out)
    write_report(run_dir, oof, out, importance)
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


def _group_tables(cfg: dict[str, Any], oof: pd.DataFrame
                  ) -> tuple[list[dict[str, Any]] | str, dict[str, Any] | str]:
    """The subgroup table of the OOF scores with the dataset's metadata, and the artefact (bias) tables.

    One :func:`melanoma_models.subgroups.subgroup_table` over the metadata dimensions and artefact presence
    (:data:`melanoma_data.columns.PRESENCE`: ``yes``/``no`` groups), split in two, with each artefact's rate
    among positives and negatives. A string saying why for both when the run's dataset version cannot be opened
    any more (moved or deleted); for the artefacts when the version has no artefact measurements.
    """
    from melanoma_data.columns import PRESENCE, presence, presence_rates
    from melanoma_data.dataset import open_dataset
    from melanoma_models.subgroups import DIMENSIONS, subgroup_table

    try:
        meta = open_dataset(cfg["dataset"]["url"]).metadata(split="train")
    except Exception as exc:  # noqa: BLE001 - the report is still written without the table
        why = f"dataset version {cfg['dataset'].get('url')} could not be opened ({type(exc).__name__}: {exc})"
        return why, why
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
{extras}
</body></html>"""
    (out / "index.html").write_text(page, encoding="utf-8")
    return out / "index.html"
