"""Reports a reviewer can trust: calibration, intervals, decision curves, multi-class figures, recalibration and
the model card, each figure checked against an independent computation."""

from __future__ import annotations

import hashlib
import html.parser
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

import cli
from melanoma_data.dataset import open_dataset
from melanoma_data.errors import ConfigError, InputError
from melanoma_models import clinical as C
from melanoma_models import metrics as M
from melanoma_models.runner import fit
from tests.conftest import small_version

LOGREG = {"image_size": 8, "hist_bins": 4}


@pytest.fixture(scope="module")
def version(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("reports")
    return small_version(root, n=60, seed=5, size=32, n_folds=3, train_files=3, melanoma_rate=0.35)


@pytest.fixture(scope="module")
def calibrated(version, tmp_path_factory):
    """A logreg run with nested Platt recalibration (its report and metrics are shared by several tests)."""
    runs = tmp_path_factory.mktemp("runs")
    return fit("logreg", version, runs=runs, sets={**LOGREG, "calibrate": "platt"}).run_dir


def _miscalibrated(n: int = 2500, seed: int = 0):
    """Labels drawn from known probabilities, and scores three times too confident on the logit scale."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.0, 1.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    p = 1 / (1 + np.exp(-3 * z))
    fold = rng.integers(0, 5, n)
    return y, p, fold


def _wilson_by_hand(k: int, n: int) -> tuple[float, float]:
    z = 1.959963984540054
    ph = k / n
    centre = (2 * n * ph + z**2) / (2 * (n + z**2))
    half = z * np.sqrt(z**2 + 4 * n * ph * (1 - ph)) / (2 * (n + z**2))
    return centre - half, centre + half


def test_wilson_matches_published_values():
    # Newcombe (Stat Med 1998;17:857-872), table I, method 3 (score interval without continuity correction)
    for (k, n), (lo, hi) in {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605), (0, 20): (0.0, 0.1611),
                             (1, 29): (0.0061, 0.1718)}.items():
        got = M.wilson(k, n)
        assert got == pytest.approx((lo, hi), abs=5e-5), (k, n)
        assert got == pytest.approx(_wilson_by_hand(k, n), abs=1e-12)
    assert all(np.isnan(M.wilson(0, 0)))


def test_calibration_figures_match_sklearn():
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import brier_score_loss

    y, p, _ = _miscalibrated(2500, seed=1)
    s = M.calibration_summary(y, p, bins=10)
    assert s["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-12)
    assert s["brier_skill"] == pytest.approx(1 - brier_score_loss(y, p) / brier_score_loss(y, np.full(len(y),
                                                                                                     y.mean())))
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="quantile")
    bins = s["reliability"]
    np.testing.assert_allclose([b["observed"] for b in bins], prob_true, atol=1e-12)
    np.testing.assert_allclose([b["mean_predicted"] for b in bins], prob_pred, atol=1e-12)
    counts = np.array([b["count"] for b in bins])
    assert counts.sum() == len(y) and counts.min() >= len(y) // 10 - 1  # equal mass
    ece = np.sum(counts * np.abs(prob_true - prob_pred)) / len(y)
    assert s["ece"] == pytest.approx(ece, abs=1e-12)
    for b in bins:
        assert b["observed_ci"] == pytest.approx(list(_wilson_by_hand(b["positives"], b["count"])), abs=1e-12)
    assert s["slope"] == pytest.approx(1 / 3, abs=0.06)  # scores 3x too confident on the logit scale
    from sklearn.linear_model import LogisticRegression

    ref = LogisticRegression(C=np.inf, tol=1e-10, max_iter=10_000).fit(np.log(p / (1 - p)).reshape(-1, 1), y)
    assert (s["slope"], s["intercept"]) == pytest.approx((ref.coef_[0, 0], ref.intercept_[0]), abs=1e-5)
    y2 = (np.random.default_rng(2).random(8000) < p[0]).astype(int)  # a calibrated constant
    assert M.ece(y2, np.full(8000, p[0])) < 0.02


def test_nested_recalibration_never_sees_its_own_rows_and_lowers_the_ece():
    y, p, fold = _miscalibrated()
    for method in ("platt", "isotonic"):
        cal = M.nested_calibrated(p, y, fold, method)
        # each fold's calibrated scores are what a calibrator fitted on the other folds alone gives them ...
        for f in range(5):
            held = fold == f
            alone = M.apply_calibration(M.fit_calibration(method, p[~held], y[~held]), p[held])
            np.testing.assert_allclose(cal[held], alone, atol=1e-12)
        # ... so flipping fold 0's labels cannot move fold 0's calibrated scores
        y_flipped = np.where(fold == 0, 1 - y, y)
        np.testing.assert_array_equal(M.nested_calibrated(p, y_flipped, fold, method)[fold == 0], cal[fold == 0])
        assert M.ece(y, cal) < M.ece(y, p) / 3
        for f in range(5):
            held = fold == f
            delta = M.roc_auc(y[held], cal[held]) - M.roc_auc(y[held], p[held])
            if method == "platt":  # a monotone map per fold: the fold's ranking is kept exactly
                assert abs(delta) < 1e-12
            else:  # isotonic merges scores into ties: the AUC moves a little
                assert abs(delta) < 0.02, delta
    iso = M.fit_calibration("isotonic", p, y)
    assert iso["method"] == "isotonic" and np.all(np.diff(iso["x"]) >= 0) and np.all(np.diff(iso["y"]) >= 0)
    from sklearn.isotonic import IsotonicRegression

    ref = IsotonicRegression(out_of_bounds="clip", y_min=0, y_max=1).fit(p, y)
    np.testing.assert_allclose(M.apply_calibration(iso, p[:500]), ref.predict(p[:500]), atol=1e-12)


def test_operating_points_intervals_and_prevalence():
    rng = np.random.default_rng(3)
    patient = rng.integers(0, 150, 600).astype(str)
    y = (rng.random(600) < 0.25).astype(int)
    p = np.clip(0.3 * y + rng.random(600) * 0.7, 0, 1)
    rows = C.operating_points(y, p, patient, ("youden", None), prevalence=0.018, n_boot=60)
    by = {r["name"]: r for r in rows}
    assert list(by) == ["chosen", "0.5", "dermatologists' specificity (60%)", "dermatologists' sensitivity (74.1%)",
                        "rule-out (95% sensitivity)"]
    half = by["0.5"]
    c = half["confusion"]
    assert c == M.confusion(y, p, 0.5) and "bootstrap" not in half  # a fixed threshold: Wilson only
    assert half["sensitivity"] == c["tp"] / (c["tp"] + c["fn"])
    assert half["npv"] == c["tn"] / (c["tn"] + c["fn"])
    assert half["ppv_ci"] == pytest.approx(list(_wilson_by_hand(c["tp"], c["tp"] + c["fp"])), abs=1e-12)
    sens, spec = half["sensitivity"], half["specificity"]
    assert half["ppv_at_prevalence"] == pytest.approx(sens * 0.018 / (sens * 0.018 + (1 - spec) * 0.982))
    assert half["ppv_at_prevalence"] < half["ppv"]  # a clinic's rate is lower than this cohort's
    assert by["chosen"]["threshold"] == M.youden_threshold(y, p)
    assert by["dermatologists' specificity (60%)"]["specificity"] >= 0.6
    assert by["dermatologists' sensitivity (74.1%)"]["threshold"] == M.threshold_at_sensitivity(y, p, 0.741)
    rule_out = by["rule-out (95% sensitivity)"]
    assert rule_out["sensitivity"] >= 0.95 and rule_out["bootstrap"]["draws"] == 60
    lo, hi = rule_out["bootstrap"]["specificity"]
    assert lo < rule_out["specificity"] < hi  # the threshold re-chosen per resample moves the specificity


def test_decision_curve_by_hand():
    y = np.array([1, 1, 0, 0, 0, 1, 0, 0])
    p = np.array([0.9, 0.4, 0.35, 0.1, 0.6, 0.05, 0.2, 0.3])
    dc = M.net_benefit(y, p, [0.1, 0.3, 0.5])
    # t = 0.3: treated 0.9, 0.4, 0.35, 0.6, 0.3 -> TP 2, FP 3; NB = 2/8 - 3/8 * 0.3/0.7
    assert dc["model"][1] == pytest.approx(2 / 8 - 3 / 8 * 0.3 / 0.7)
    assert dc["treat_all"][1] == pytest.approx(3 / 8 - 5 / 8 * 0.3 / 0.7)
    assert dc["treat_none"] == [0.0, 0.0, 0.0]


def _multiclass_case(seed: int = 4):
    rng = np.random.default_rng(seed)
    k, n = 5, 400
    true = rng.choice(k, n, p=[0.3, 0.3, 0.2, 0.2, 0.0])  # class 4: never true
    logits = rng.normal(0, 1, (n, k))
    logits[np.arange(n), true] += 1.5
    logits[:, 4] -= 4  # ... and (almost) never predicted
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return true, probs, [f"C{i}" for i in range(k)], rng.integers(0, 120, n)


def test_multiclass_figures_match_sklearn():
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, roc_auc_score

    true, probs, classes, patient = _multiclass_case()
    mc = C.multiclass(true, probs, classes, patient, n_boot=30)
    onehot = np.eye(5, dtype=int)[true]
    assert mc["macro_f1_0_5"] == pytest.approx(f1_score(onehot, (probs > 0.5).astype(int), average="macro",
                                                        zero_division=1.0), abs=1e-12)
    arg = probs.argmax(axis=1)
    assert mc["macro_f1_argmax"] == pytest.approx(f1_score(true, arg, labels=range(5), average="macro",
                                                           zero_division=1.0), abs=1e-12)
    assert mc["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(true, arg), abs=1e-12)
    assert mc["confusion"] == confusion_matrix(true, arg, labels=range(5)).tolist()
    for c, row in enumerate(mc["per_class"]):
        if c < 4:
            assert row["auc"] == pytest.approx(roc_auc_score(onehot[:, c], probs[:, c]), abs=1e-12)
            assert row["auc_ci"][0] < row["auc"] < row["auc_ci"][1]
        else:
            assert np.isnan(row["auc"]) and row["f1_0_5"] == 1.0  # no positives, no predictions: 1.0
    # the official rule is strict: a probability of exactly 0.5 is not a call
    assert M.f1_per_class_official(np.array([[1, 0]]), np.array([[0.5, 0.5]]), 0.5).tolist() == [0.0, 1.0]
    assert "> 0.5" in mc["tie_rule"]


def _main_run_id(version: str, sets: dict) -> str:
    """The run id of a logreg run as the runner computed it before ``calibrate`` existed (today's main)."""
    from melanoma_plugins.baselines import LogRegPlugin

    params = LogRegPlugin.Params.build(sets, "logreg").model_dump(mode="json")
    for added in ("embeddings", "embeddings_pca"):  # parameters main did not have yet (at their defaults here)
        params.pop(added)
    key = {"plugin": "logreg", "params": params, "dataset": open_dataset(version).fingerprint,
           "folds": 3, "base_runs": []}
    return f"logreg-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]}"


def _run_dir_of(version: str, runs: Path, sets: dict) -> Path:
    """The run directory ``fit`` makes for ``sets``, without training (it stops before the first fold)."""
    with pytest.raises(KeyboardInterrupt):
        fit("logreg", version, runs=runs, sets=sets, stop_after=0)
    (made,) = runs.glob("*")  # a fresh folder: the one run directory
    return made


def test_calibrate_stays_out_of_the_run_key_and_is_refused_where_scores_are_calibrated(version, calibrated,
                                                                                        tmp_path):
    before = _main_run_id(version, LOGREG)
    plain = _run_dir_of(version, tmp_path / "a", LOGREG)
    assert plain.name == before and "calibrate" not in json.loads((plain / "config.json").read_text())
    assert _run_dir_of(version, tmp_path / "b", {**LOGREG, "calibrate": "none"}).name == before
    assert calibrated.name != before  # set, it is part of the key
    assert json.loads((calibrated / "config.json").read_text())["calibrate"] == "platt"
    with pytest.raises(ConfigError, match="svm plugin already calibrates"):
        fit("svm", version, runs=tmp_path, sets={**LOGREG, "calibrate": "platt"})
    with pytest.raises(ConfigError, match="method=rank already calibrates"):
        fit("stack", version, runs=tmp_path, sets={"runs": str(calibrated), "method": "rank", "calibrate": "isotonic"})
    with pytest.raises(ConfigError, match="expected one of none, platt, isotonic"):
        fit("logreg", version, runs=tmp_path, sets={**LOGREG, "calibrate": "beta"})


def test_calibrated_run_stores_json_and_predict_and_serve_apply_it(calibrated, version, tmp_path):
    run = calibrated
    cal = json.loads((run / "calibration.json").read_text())
    assert cal["method"] == "platt" and set(cal) >= {"a", "b", "fitted_on", "applies_to"}
    oof = pd.read_parquet(run / "oof.parquet")
    # stored OOF calibration is the nested one, recomputed here from the raw scores
    np.testing.assert_allclose(oof["prediction_calibrated"],
                               M.nested_calibrated(oof["prediction"], oof["target"], oof["fold"], "platt"), atol=1e-12)
    test = pd.read_parquet(run / "test_predictions.parquet")
    np.testing.assert_allclose(test["prediction"], test[[f"prediction_fold_{k}" for k in range(3)]].mean(axis=1))
    np.testing.assert_allclose(test["prediction_calibrated"], M.apply_calibration(cal, test["prediction"]))
    # predict --images: the raw score stays `prediction`, the stored calibrator gives `prediction_calibrated`
    root = Path(open_dataset(version).manifest["inputs"][0]["url"])
    files = sorted(str(p) for p in (root / "jpeg" / "test").glob("*.jpg"))[:2]
    res = CliRunner().invoke(cli.app, ["predict", "--run", str(run), "--images", *files, "--metadata",
                                       str(root / "test.csv"), "--out", str(tmp_path / "s.csv")])
    assert res.exit_code == 0, res.output
    assert "prediction is the raw score" in " ".join(res.output.split())  # the output says which is which
    scores = pd.read_csv(tmp_path / "s.csv").set_index("image_name")
    assert list(scores.columns[:2]) == ["prediction", "prediction_calibrated"]
    want = test.set_index("image_name").loc[scores.index]
    np.testing.assert_allclose(scores["prediction"], want["prediction"], atol=1e-6)
    np.testing.assert_allclose(scores["prediction_calibrated"], want["prediction_calibrated"], atol=1e-6)
    # serve: the answer carries both, labelled
    pytest.importorskip("fastapi")
    from melanoma_models.serve import Service

    service = Service(run, workers=1)
    row = pd.read_csv(root / "test.csv").set_index("image_name").loc[Path(files[0]).stem]
    fields = {k: str(row[k]) for k in ("sex", "age_approx", "anatom_site_general_challenge", "patient_id")}
    answer = service.score(Path(files[0]).read_bytes(), Path(files[0]).name, fields).answer
    assert answer["probability"] == pytest.approx(want["prediction"].iloc[0], abs=1e-6)
    assert answer["prediction_calibrated"] == pytest.approx(want["prediction_calibrated"].iloc[0], abs=1e-6)
    assert "raw score" in answer["calibration_note"] and "platt" in answer["calibration_note"]
    from fastapi.testclient import TestClient

    from melanoma_models.serve import create_app

    with TestClient(create_app(service)) as client:
        page = client.post("/", files={"image": (Path(files[0]).name, Path(files[0]).read_bytes(), "image/jpeg")},
                           data=fields)
    assert page.status_code == 200 and "calibrated probability: <b>" in page.text and "raw score" in page.text
    # a tampered calibrator is refused, not executed or half-read
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    (bad / "calibration.json").write_text('{"method": "isotonic", "x": [0.2, 0.1], "y": [0, 1]}')
    with pytest.raises(InputError, match="not a calibrator"):
        Service(bad, workers=1)


class _Page(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.tables: list[int] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag == "table":
            self.tables.append(0)
        elif tag == "tr" and self.tables:
            self.tables[-1] += 1


def test_report_images_and_tables(calibrated):
    page = (calibrated / "report" / "index.html").read_text()
    parser = _Page()
    parser.feed(page)
    for name in ("reliability.png", "decision.png"):
        assert name in parser.images
    for src in parser.images:
        path = calibrated / "report" / src
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", src
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.width >= 400 and im.height >= 300, (src, im.size)
    assert parser.tables and all(rows >= 2 for rows in parser.tables)  # a header and at least one row each
    assert "Operating points with 95% intervals" in page and "rule-out (95% sensitivity)" in page
    assert "Calibration" in page and "Decision curve" in page
    m = json.loads((calibrated / "metrics.json").read_text())
    assert m["decision_curve"]["score"] == "prediction_calibrated"
    assert m["calibration"]["method"] == "platt"
    assert m["dermatologists"]["our_specificity_at_their_sensitivity"] == pytest.approx(
        M.operating_point(*_oof_yp(calibrated), M.threshold_at_sensitivity(*_oof_yp(calibrated), 0.741))["specificity"])


def _oof_yp(run: Path):
    oof = pd.read_parquet(run / "oof.parquet")
    return oof["target"].to_numpy(), oof["prediction"].to_numpy()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")
def test_report_renders_in_headless_chromium(calibrated, tmp_path):
    shot = tmp_path / "report.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars", "--window-size=1200,2400",
           f"--screenshot={shot}", (calibrated / "report" / "index.html").as_uri()]
    subprocess.run(cmd, check=True, timeout=90, capture_output=True)
    px = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert px.shape[0] >= 2000 and px.shape[1] >= 1100
    inked = (px.min(axis=2) < 200).mean()
    blue = ((px[..., 2] > px[..., 0] + 40) & (px[..., 2] > px[..., 1] + 10)).mean()
    assert inked > 0.02 and blue > 0.001, (inked, blue)  # text, tables and the plots' curves drawn


def _write_oof_classes(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-class OOF probabilities (nine diagnosis classes, the true one favoured) written into ``run`` as a
    multi-class plugin's runner writes them; returns the true class indices and the probabilities."""
    from melanoma_data.ingest import DIAGNOSIS_CLASSES, diagnosis_class

    oof = pd.read_parquet(run / "oof.parquet")
    meta = open_dataset(json.loads((run / "config.json").read_text())["dataset"]["url"]).metadata(split="train")
    truth = oof.merge(meta[["image_name", "diagnosis"]], on="image_name")
    classes = list(DIAGNOSIS_CLASSES)
    true = np.array([classes.index(diagnosis_class(d, t)) for d, t in zip(truth["diagnosis"], truth["target"],
                                                                           strict=True)])
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1, (len(oof), len(classes)))
    logits[np.arange(len(oof)), true] += 2
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    pd.DataFrame({"image_name": truth["image_name"], "fold": truth["fold"],
                  **{c: probs[:, i] for i, c in enumerate(classes)}}).to_parquet(run / "oof_classes.parquet")
    return true, probs


def test_evaluate_keeps_the_stored_rule_announces_a_change_and_reports_classes(calibrated, tmp_path):
    """One copy of the run evaluated twice: the threshold rule kept and a change announced; with per-class OOF
    probabilities (as a multi-class plugin leaves them) the multi-class figures, checked against sklearn."""
    from sklearn.metrics import balanced_accuracy_score, f1_score

    run = tmp_path / "run"
    shutil.copytree(calibrated, run)
    true, probs = _write_oof_classes(run)
    first = json.loads((run / "metrics.json").read_text())
    assert first["threshold_rule"] == "youden"
    runner = CliRunner()
    res = runner.invoke(cli.app, ["evaluate", "--run", str(run), "--threshold", "0.42", "--prevalence", "0.018"],
                        terminal_width=200)
    assert res.exit_code == 0, res.output
    old = first["at_threshold"]["threshold"]
    assert f"decision threshold {old:.6g} (youden) → 0.42 (fixed 0.42)" in res.output
    assert res.output.index("decision threshold") < res.output.index("OOF AUC")  # said first
    m = json.loads((run / "metrics.json").read_text())
    assert m["at_threshold"]["threshold"] == 0.42 and m["prevalence"] == 0.018
    # a plain evaluate keeps the stored rule (and prevalence) and says nothing about the threshold
    res = runner.invoke(cli.app, ["evaluate", "--run", str(run)], terminal_width=200)
    assert res.exit_code == 0 and "decision threshold" not in res.output
    m = json.loads((run / "metrics.json").read_text())
    assert m["threshold_rule"] == "fixed 0.42" and m["at_threshold"]["threshold"] == 0.42 and m["prevalence"] == 0.018
    assert "ppv_at_prevalence" in m["operating_points"][0]
    mc = m["multiclass"]
    onehot = np.eye(probs.shape[1], dtype=int)[true]
    assert mc["macro_f1_0_5"] == pytest.approx(f1_score(onehot, (probs > 0.5).astype(int), average="macro",
                                                        zero_division=1.0))
    assert mc["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(true, probs.argmax(axis=1)))
    page = (run / "report" / "index.html").read_text()
    assert '<img src="confusion_classes.png">' in page and "Diagnosis classes" in page
    with Image.open(run / "report" / "confusion_classes.png") as im:
        assert im.width >= 400
    res = runner.invoke(cli.app, ["evaluate", "--run", str(run), "--prevalence", "2"])
    assert res.exit_code != 0 and "must be in (0, 1)" in res.output


def _leaves(value, out_num: list, out_str: list) -> None:
    if isinstance(value, dict):
        for v in value.values():
            _leaves(v, out_num, out_str)
    elif isinstance(value, list):
        for v in value:
            _leaves(v, out_num, out_str)
    elif isinstance(value, bool):
        return
    elif isinstance(value, int | float):
        out_num.append(float(value))
    elif isinstance(value, str):
        out_str.append(value)


#: numbers that belong to the card's fixed wording, not to the run (and why)
PROSE = {"80": "the partial AUC's definition (above 80% TPR)", "2024": "the ISIC 2024 scale's name",
         "95": "the interval level (95%) and the rule-out point's definition", "0.5": "the macro-F1 rule at 0.5",
         "2": "Apache License 2.0"}


def _untraced(text: str, nums: list[float]) -> list[str]:
    """The numbers of ``text`` that no source value gives at the shown precision (percentages: the value × 100)."""
    values = np.array(nums)
    out = []
    for token in re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?%?(?![\w])", text):
        num = token.rstrip("%")
        if num in PROSE:
            continue
        d = len(num.split(".")[1]) if "." in num else 0
        cand = np.round(values * (100 if token.endswith("%") else 1), d)
        if not np.any(np.isclose(cand, float(num), atol=10 ** -(d + 3))):
            out.append(token)
    return out


def test_card_numbers_all_trace_to_the_run_and_values_are_escaped(calibrated, tmp_path):
    from melanoma_models.card import CI_WIDTH

    run = tmp_path / "run"
    shutil.copytree(calibrated, run)
    cfg = json.loads((run / "config.json").read_text())
    cfg["params"]["note_for_test"] = "<script>alert(1)</script> | pipe"  # hostile text in a recorded value
    (run / "config.json").write_text(json.dumps(cfg))
    res = CliRunner().invoke(cli.app, ["card", str(run)])
    assert res.exit_code == 0, res.output
    card = (run / "card.md").read_text()
    for section in ("## Intended use", "## Data licences", "## Data", "## Model", "## Evaluation", "## Limitations",
                    "## Reporting checklists"):
        assert section in card
    assert "not a medical device" in card and "CC BY-NC" in card and "not answered" in card
    assert "<script>" not in card and "&lt;script&gt;" in card and "\\| pipe" in card
    sources = [json.loads((run / name).read_text()) for name in ("metrics.json", "config.json")]
    sources.append(open_dataset(cfg["dataset"]["url"]).manifest)
    sources.append(json.loads((run / "calibration.json").read_text()))
    nums: list[float] = []
    strs: list[str] = []
    for s in sources:
        _leaves(s, nums, strs)
    nums.append(CI_WIDTH)
    text = card.split("## Reporting checklists")[0]  # the checklist section holds item numbers, not figures
    for s in sorted({s for s in strs if len(s) >= 3}, key=len, reverse=True):  # ids, paths, dates, group names
        text = re.sub(rf"(?<![\w.]){re.escape(html.escape(s, quote=False))}(?![\w])", " ", text)
    untraced = _untraced(text, nums)
    assert not untraced, f"card figures with no source key: {untraced}"
    assert _untraced(text + "\nAUC 0.12345, 67.89% typed by hand", nums) == ["0.12345", "67.89%"]  # it can fail
    # spot checks: the headline figures are the stored ones
    m = sources[0]
    assert f"| ROC AUC (pooled out-of-fold) | {m['auc']:.4f} |" in card
    assert f"{m['n']}, of which melanoma: {m['positives']}" in card
    html_card = (run / "card.html")
    res = CliRunner().invoke(cli.app, ["card", str(run), "--html", "--out", str(html_card)])
    assert res.exit_code == 0, res.output
    page = html_card.read_text()
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert CliRunner().invoke(cli.app, ["card", str(tmp_path)]).exit_code != 0  # not a run: one readable line
