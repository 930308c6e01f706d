"""Model plugins: registry, contract over every plugin, CV runner, resume, predict, evaluate, CLI errors."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import cli
from melanoma_data import build, synth
from melanoma_data.config import PreprocessConfig
from melanoma_data.dataset import open_dataset
from melanoma_data.errors import ConfigError, InputError
from melanoma_models import metrics as M
from melanoma_models.api import FitContext, FoldData, PluginError
from melanoma_models.registry import Registry, builtins
from melanoma_models.runner import fit, predict
from tests.conftest import ink

#: Small, fast parameters per plugin for the contract tests. A plugin without an entry fails the guard.
CASES: dict[str, dict[str, object]] = {
    "logreg": {"image_size": 8, "hist_bins": 4},
    "svm": {"image_size": 8, "hist_bins": 4},
    # Keras plugins: one short epoch at 32 px (the contract, not the accuracy); more in
    # tests/melanoma_plugins/test_keras.py
    "cnn": {"image_size": 32, "epochs": 1, "batch_size": 8, "arch": "v1a"},
    "effnet": {"image_size": 32, "epochs": 1, "batch_size": 8, "steps_per_epoch": 3},
    "fusion": {"image_size": 32, "epochs": 1, "batch_size": 8, "steps_per_epoch": 3},
    # images without lesion ids or views: every image a lesion of one (dermoscopic) view, the clinical one masked
    "twoview": {"image_size": 32, "epochs": 1, "batch_size": 8, "steps_per_epoch": 3, "variant": "small",
                "weights": "none"},
    "lgbm": {"num_boost_round": 50, "min_data_in_leaf": 5, "early_stopping_rounds": 10},
    "xgb": {"num_boost_round": 30, "early_stopping_rounds": 10, "seeds": 2},
    "catboost": {"num_boost_round": 30, "min_data_in_leaf": 5, "early_stopping_rounds": 10, "metric": "pauc_80_2024"},
    "stack": {},  # base runs are made by the contract test itself
}

#: plugins whose library is an optional extra → the module they need
OPTIONAL = {"xgb": "xgboost", "catboost": "catboost"}

SMALL = PreprocessConfig.from_dict({"square": {"size": 32}, "partition_size": 40,
                                    "shards": {"n_folds": 3, "train_files": 6, "test_files": 2}})


@pytest.fixture(scope="module")
def version(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("models")
    synth.write_dataset(root / "in", n=90, layout="kaggle2020", seed=21, sizes=[(320, 240)], defects=0.2,
                        melanoma_rate=0.3, test_fraction=0.2, images_per_patient=2.0)
    return build.preprocess([str(root / "in")], str(root / "out"), SMALL).version_url


def _data(version: str, folds: list[int] | None, role: str = "train", cache: dict | None = None) -> FoldData:
    ds = open_dataset(version)
    split = "test" if role == "test" else "train"
    return FoldData(ds, split, folds, ds.metadata(split=split, folds=folds), {} if cache is None else cache, role)


BUILTIN = builtins()


def test_every_builtin_plugin_has_a_contract_case():
    missing = sorted(set(BUILTIN.names()) - set(CASES))
    assert not missing, f"plugins without a contract test entry in test_models.py CASES: {missing}"
    assert {"logreg", "svm", "lgbm", "stack", "effnet"} <= set(BUILTIN.names())


def test_a_third_party_plugin_installed_beside_does_not_enter_the_builtin_registry(monkeypatch):
    import importlib.metadata

    real = importlib.metadata.entry_points

    def with_stranger(**kw):
        eps = list(real(**kw))
        stranger = importlib.metadata.EntryPoint("stranger", "elsewhere:Stranger", kw.get("group", ""))
        return [*eps, stranger] if kw.get("group") == "melanoma.plugins" else eps

    monkeypatch.setattr(importlib.metadata, "entry_points", with_stranger)
    assert "stranger" in Registry().names()  # the process-wide view sees it...
    assert "stranger" not in builtins().names()  # ...the tests' registry does not
    assert set(builtins().names()) == set(BUILTIN.names())


#: the contract cases that train a network or a second library (the fast loop keeps the linear and lgbm ones)
SLOW_CASES = {"cnn", "effnet", "fusion", "twoview", "catboost", "xgb", "stack"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_CASES else n
                                  for n in sorted(CASES)])
def test_plugin_contract(name, version, tmp_path):
    if name in OPTIONAL:  # CI installs the extra (.ci/run); a plain `uv sync` skips these with the reason
        pytest.importorskip(OPTIONAL[name], reason=f"{OPTIONAL[name]} is an optional extra: uv sync --extra gbdt")
    cls = BUILTIN.get(name)
    assert cls.name == name and cls.description and set(cls.needs) <= {"images", "metadata", "runs"}
    values = dict(CASES[name])
    base: list = []
    if "runs" in cls.needs:
        base = [fit("logreg", version, runs=tmp_path / "base", sets={**CASES["logreg"], "C": c}).run_dir
                for c in (0.1, 10.0)]
        values["runs"] = ",".join(str(b) for b in base)
    params = cls.Params.build(values, name)
    cache: dict = {}
    train, valid = _data(version, [0, 1], cache=cache), _data(version, [2], cache=cache)
    test = _data(version, None, "test", cache)
    ds = open_dataset(version)
    model = cls(params)
    model.fit(train, valid, FitContext(tmp_path / "fold", 0, ds.encodings, base_runs=base))
    for part in (valid, test):
        p = model.predict(part)
        assert p.shape == (len(part.meta),) and np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()
    model.save(tmp_path / "model")
    assert not list((tmp_path / "model").rglob("*.pkl")) and not list((tmp_path / "model").rglob("*.pickle"))
    again = cls.load(tmp_path / "model", params)
    assert np.array_equal(again.predict(valid), model.predict(valid))
    # parameters are validated with readable errors
    with pytest.raises(ConfigError, match="unknown parameter"):
        cls.Params.build({"no_such_thing": 1}, name)
    with pytest.raises(ConfigError, match=f"invalid parameter.*{name}"):
        cls.Params.build({**values, "seed": "minus one"}, name)


def test_registry_errors():
    def ep(name, value, load):
        return SimpleNamespace(name=name, value=value, load=load, dist=SimpleNamespace(name="pkg-" + value))

    with pytest.raises(PluginError, match="duplicate plugin name 'logreg'"):
        Registry([ep("logreg", "a:A", None), ep("logreg", "b:B", None)])

    def broken():
        raise ImportError("No module named 'torch'")

    reg = Registry([ep("good", "melanoma_plugins.baselines:LogRegPlugin", lambda: BUILTIN.get("logreg")),
                    ep("bad", "thirdparty:Model", broken)])
    with pytest.raises(PluginError, match="unknown plugin 'nope'; known plugins: bad, good"):
        reg.get("nope")
    with pytest.raises(PluginError, match="cannot be loaded: ImportError"):
        reg.get("bad")
    assert [e.error is None for e in reg.entries()] == [False, False]  # 'good' declares name 'logreg'
    assert "declares name 'logreg'" in reg.entry("good").error


@pytest.mark.slow
def test_cv_run_writes_oof_test_predictions_and_metrics(version, tmp_path):
    res = fit("logreg", version, runs=tmp_path / "runs", sets=CASES["logreg"])
    run = res.run_dir
    ds = open_dataset(version)
    train = ds.metadata(split="train")
    oof = pd.read_parquet(run / "oof.parquet")
    assert list(oof.columns) == ["image_name", "target", "fold", "prediction"]
    assert sorted(oof["image_name"]) == sorted(train["image_name"])  # every training image exactly once
    merged = oof.merge(train[["image_name", "patient_id"]], on="image_name")
    assert (merged.groupby("patient_id")["fold"].nunique() == 1).all()  # no patient in two folds
    test = pd.read_parquet(run / "test_predictions.parquet")
    assert sorted(test["image_name"]) == sorted(ds.metadata(split="test")["image_name"])
    assert {"prediction_fold_0", "prediction_fold_1", "prediction_fold_2"} <= set(test.columns)
    assert np.allclose(test["prediction"], test[[f"prediction_fold_{k}" for k in range(3)]].mean(axis=1))
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["dataset"]["fingerprint"] == ds.fingerprint and cfg["seed"] == 0 and "numpy" in cfg["versions"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["auc_folds"]) == {"0", "1", "2"}
    drawn = {png: ink(run / "report" / f"{png}.png") for png in ("roc", "pr", "scores", "confusion")}
    assert drawn["roc"]["black"] > 0.003 and drawn["roc"]["red"] > 0.0005  # pooled curve; dermatologists' star
    assert drawn["scores"]["blue"] > 0.01 and drawn["scores"]["red"] > 0.002  # both classes' histograms
    assert drawn["confusion"]["blue"] > 0.05 and drawn["pr"]["black"] > 0.002  # the matrices; the PR step curve
    assert "Classification report at 0.5" in (run / "report" / "index.html").read_text()
    # the AUC equals the official ISIC scorer's on the same predictions
    from isic_challenge_scoring import metrics as official

    w = pd.Series(np.ones(len(oof)))
    truth = oof["target"].astype(float).reset_index(drop=True)
    pred = oof["prediction"].reset_index(drop=True)
    assert metrics["auc"] == pytest.approx(official.auc(truth, pred, w), abs=1e-12)
    assert metrics["pauc_80"] == pytest.approx(official.auc_above_sensitivity(truth, pred, w, 0.8), abs=1e-12)
    # the same command finds the finished run; --rerun trains again to the same predictions (seeded)
    again = fit("logreg", version, runs=tmp_path / "runs", sets=CASES["logreg"])
    assert again.reused and again.run_dir == run
    fresh = fit("logreg", version, runs=tmp_path / "runs", sets=CASES["logreg"], rerun=True)
    assert pd.read_parquet(fresh.run_dir / "oof.parquet").equals(oof)
    # predict writes the Kaggle submission format
    sub = predict(run, version, tmp_path / "sub.csv")
    csv = pd.read_csv(tmp_path / "sub.csv")
    assert list(csv.columns) == ["image_name", "target"] and len(csv) == len(test)
    assert np.allclose(csv.set_index("image_name").loc[test["image_name"], "target"], test["prediction"])
    assert sub["target"].between(0, 1).all()


@pytest.mark.slow
def test_interrupted_fit_resumes_at_the_first_unfinished_fold(version, tmp_path):
    clean = fit("svm", version, runs=tmp_path / "a", sets=CASES["svm"])
    with pytest.raises(KeyboardInterrupt):
        fit("svm", version, runs=tmp_path / "b", sets=CASES["svm"], stop_after=1)
    run = tmp_path / "b" / clean.run_dir.name
    assert (run / "fold-0" / "done.json").exists() and not (run / "fold-1" / "done.json").exists()
    (run / "fold-1").mkdir(exist_ok=True)
    (run / "fold-1" / "predictions.parquet").write_bytes(b"half-written")  # debris of the interruption
    resumed = fit("svm", version, runs=tmp_path / "b", sets=CASES["svm"])
    assert resumed.resumed_folds == 1 and not resumed.reused
    assert pd.read_parquet(run / "oof.parquet").equals(pd.read_parquet(clean.run_dir / "oof.parquet"))


def test_fewer_folds_merge_dataset_folds(version, tmp_path):
    res = fit("logreg", version, runs=tmp_path, sets=CASES["logreg"], folds=2)
    assert res.config["fold_map"] == {"0": 0, "1": 1, "2": 0}
    with pytest.raises(InputError, match="this dataset has 3 folds"):
        fit("logreg", version, runs=tmp_path, folds=4)


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("imbalanced")
    synth.write_dataset(root / "in", n=240, layout="kaggle2020", seed=3, sizes=[(200, 150)], defects=0.1,
                        melanoma_rate=0.05, test_fraction=0.0, images_per_patient=2.0)
    return build.preprocess([str(root / "in")], str(root / "out"), SMALL).version_url


@pytest.mark.parametrize("name", ["logreg", "svm"])
@pytest.mark.slow
def test_class_weights_fix_the_imbalance_problem(name, imbalanced, tmp_path):
    """The seed's lesson: unweighted, (almost) nothing is called melanoma at 0.5; weighted, it is."""
    base = {"image_size": 8, "features": "histogram", "C": 0.003}
    plain = fit(name, imbalanced, runs=tmp_path, sets={**base, "class_weight": "none"}).metrics
    weighted = fit(name, imbalanced, runs=tmp_path, sets={**base, "class_weight": "balanced"}).metrics
    positives = plain["positives"]
    assert 5 <= positives <= 0.1 * plain["n"]
    assert plain["at_0_5"]["sensitivity"] <= 0.3, plain["at_0_5"]
    assert plain["at_0_5"]["predicted_positive"] <= 0.5 * positives
    assert weighted["at_0_5"]["sensitivity"] >= plain["at_0_5"]["sensitivity"] + 0.25, weighted["at_0_5"]
    assert weighted["at_0_5"]["predicted_positive"] >= plain["at_0_5"]["predicted_positive"] + 4


def _scored_cases(seed: int, trials: int):
    """Random labelled scores of varied size and prevalence, every third case with many ties."""
    rng = np.random.default_rng(seed)
    for trial in range(trials):
        n = int(rng.integers(20, 400))
        y = (rng.random(n) < rng.uniform(0.02, 0.5)).astype(int)
        y[:2] = [0, 1]
        p = np.clip(rng.random(n) * 0.6 + y * rng.random(n) * 0.4, 0, 1)
        yield y, (np.round(p, 1) if trial % 3 == 0 else p)


def test_metrics_agree_with_the_official_scorer_and_sklearn():
    from isic_challenge_scoring import metrics as official
    from sklearn.metrics import average_precision_score, roc_auc_score

    for y, p in _scored_cases(0, 20):
        n = len(y)
        w = pd.Series(np.ones(n))
        assert M.roc_auc(y, p) == pytest.approx(roc_auc_score(y, p), abs=1e-12)
        assert M.roc_auc(y, p) == pytest.approx(official.auc(pd.Series(y.astype(float)), pd.Series(p), w), abs=1e-12)
        assert M.auc_above_sensitivity(y, p) == pytest.approx(
            official.auc_above_sensitivity(pd.Series(y.astype(float)), pd.Series(p), w, 0.8), abs=1e-12)
        assert M.average_precision(y, p) == pytest.approx(average_precision_score(y, p), abs=1e-9)
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.3, 0.35, 0.8])
    assert M.youden_threshold(y, p) == 0.35
    rep = M.classification_report(y, p, 0.5)
    assert rep["melanoma"]["recall"] == 0.5 and rep["benign"]["support"] == 2 and rep["accuracy"]["f1-score"] == 0.75
    assert M.operating_point(y, p, 0.35)["confusion"] == {"tn": 2, "fp": 0, "fn": 0, "tp": 2}


def _pauc_2024_sklearn(y, p, min_tpr=0.8):
    """The 2024 challenge's scoring code, written separately on sklearn (labels and scores flipped)."""
    from sklearn.metrics import auc, roc_curve

    v_gt = np.abs(np.asarray(y) - 1)
    v_pred = -1.0 * np.asarray(p)
    max_fpr = abs(1 - min_tpr)
    fpr, tpr, _ = roc_curve(v_gt, v_pred)
    stop = np.searchsorted(fpr, max_fpr, "right")
    tpr = np.append(tpr[:stop], np.interp(max_fpr, [fpr[stop - 1], fpr[stop]], [tpr[stop - 1], tpr[stop]]))
    fpr = np.append(fpr[:stop], max_fpr)
    return auc(fpr, tpr)


def test_pauc_2024_matches_a_second_implementation_and_hand_worked_cases():
    for y, p in _scored_cases(3, 40):
        assert M.pauc_80_2024(y, p) == pytest.approx(_pauc_2024_sklearn(y, p), abs=1e-12)
    y = np.array([1, 1, 1, 0, 0, 0])
    assert M.pauc_80_2024(y, [0.9, 0.8, 0.7, 0.3, 0.2, 0.1]) == pytest.approx(0.2)  # perfect ranking
    assert M.pauc_80_2024(y, [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]) == pytest.approx(0.0)  # fully reversed
    assert M.pauc_80_2024(y, [0.5] * 6) == pytest.approx(0.02)  # all tied: the diagonal, 0.2 * 0.2 / 2
    # by hand: malignant 0.9, 0.8, 0.7, 0.2; benign 0.1, 0.2 (tied with a melanoma), 0.3, 0.85. Flipped ROC:
    # (0,0) (0,.25) (.25,.5) ...; cut at FPR .2 on the tied step: TPR .25 + .25 * .2/.25 = .45;
    # area .2 * (.25 + .45) / 2 = .07
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.2, 0.1, 0.2, 0.3, 0.85])
    assert M.pauc_80_2024(y, p) == pytest.approx(0.07, abs=1e-12)
    assert np.isnan(M.pauc_80_2024([0, 0], [0.1, 0.2]))


def test_cli_errors_are_one_readable_line(version, tmp_path):
    runner = CliRunner()

    def run(*args):
        res = runner.invoke(cli.app, list(args))
        assert res.exit_code == 2, res.output
        lines = [x for x in res.output.strip().splitlines() if x.strip()]
        assert len(lines) <= 3 and lines[0].startswith("error:"), res.output  # one line (wrapped at most)
        return " ".join(lines)

    out = run("fit", "--plugin", "nope", "--data", version, "--runs", str(tmp_path))
    assert "known plugins: catboost, cnn, effnet, fusion, lgbm, logreg, stack, svm, twoview, xgb" in out
    assert "unknown parameter(s) colour" in run("fit", "--plugin", "logreg", "--data", version, "--set", "colour=1",
                                                "--runs", str(tmp_path))
    assert "--set expects key=value" in run("fit", "--plugin", "logreg", "--data", version, "--set", "C",
                                            "--runs", str(tmp_path))
    assert "C='-1'" in run("fit", "--plugin", "logreg", "--data", version, "--set", "C=-1", "--runs", str(tmp_path))
    assert "no such dataset version" in run("fit", "--plugin", "logreg", "--data", str(tmp_path / "missing"),
                                            "--runs", str(tmp_path))
    assert "not a run directory" in run("predict", "--run", str(tmp_path), "--data", version)
    # user errors found inside a plugin's fit (not by its params model) are one line too, not a traceback
    cases = (("logreg", ["features=none", "metadata=false"]), ("lgbm", ["features=none", "site_rate=false"]))
    for plugin, sets in cases:
        res = runner.invoke(cli.app, ["fit", "--plugin", plugin, "--data", version, "--runs", str(tmp_path),
                                      *[x for kv in sets for x in ("--set", kv)]])
        errors = [x for x in res.output.splitlines() if x.startswith("error:")]
        assert res.exit_code == 2 and len(errors) == 1 and "no features" in errors[0], res.output
        assert "Traceback" not in res.output
    res = runner.invoke(cli.app, ["plugins"], terminal_width=200)
    assert res.exit_code == 0 and "logreg" in res.output and "images, metadata" in res.output


@pytest.mark.slow
def test_cli_fit_evaluate_predict(version, tmp_path):
    runner = CliRunner()
    cfg = tmp_path / "fit.toml"
    cfg.write_text(f'plugin = "logreg"\ndata = "{version}"\n[params]\nimage_size = 8\nC = 0.5\n')
    res = runner.invoke(cli.app, ["fit", "--config", str(cfg), "--runs", str(tmp_path / "runs"), "--no-progress"])
    assert res.exit_code == 0, res.output
    run = next((tmp_path / "runs").iterdir())
    assert json.loads((run / "config.json").read_text())["params"]["C"] == 0.5
    res = runner.invoke(cli.app, ["evaluate", "--run", str(run), "--threshold", "spec=0.9"])
    assert res.exit_code == 0, res.output
    assert json.loads((run / "metrics.json").read_text())["at_threshold"]["specificity"] >= 0.9
    res = runner.invoke(cli.app, ["evaluate", "--run", str(run), "--threshold", "often"])
    assert res.exit_code == 2 and "expected youden" in res.output
    res = runner.invoke(cli.app, ["predict", "--run", str(run), "--data", version, "--out", str(tmp_path / "s.csv")])
    assert res.exit_code == 0, res.output
    assert pd.read_csv(tmp_path / "s.csv").shape[1] == 2


def test_metadata_features_patient_context_ratios_and_outliers():
    from melanoma_models.features import metadata_features

    area = [2.0, 2.2, 1.9, 2.1, 12.0, 3.0]
    meta = pd.DataFrame({
        "image_name": [f"I{i}" for i in range(6)], "patient_id": ["A"] * 5 + ["B"],
        "anatom_site_general_challenge": ["torso", "torso", "torso", "head/neck", "torso", "torso"],
        "age_approx": [50.0] * 6, "target": [0, 0, 0, 0, 1, 0],
        "tbp_lv_areaMM2": area, "tbp_lv_perimeterMM": [5.0, 5.2, 4.9, 5.1, 20.0, 6.0],
        "clin_size_long_diam_mm": [2.0, 2.1, 2.0, 2.1, 6.0, 2.5],
    })
    cols = ["tbp_lv_areaMM2", "tbp_lv_perimeterMM", "clin_size_long_diam_mm"]
    f = metadata_features(meta, cols)
    assert f.loc[0, "lesion_shape_index"] == pytest.approx(2.0 / 25.0)
    assert f.loc[0, "size_for_age"] == pytest.approx(2.0 / 50.0) and "hue_contrast" not in f  # inputs absent
    a = np.array(area[:5])
    assert f.loc[4, "tbp_lv_areaMM2_z_patient"] == pytest.approx((12.0 - a.mean()) / a.std(ddof=1))
    assert f.loc[4, "tbp_lv_areaMM2_rank_patient"] == 1.0
    assert f.loc[4, "tbp_lv_areaMM2_minus_patient_median"] == pytest.approx(12.0 - np.median(a))
    torso = np.array([2.0, 2.2, 1.9, 12.0])  # patient A's torso lesions only
    assert f.loc[4, "tbp_lv_areaMM2_z_patient_site"] == pytest.approx((12.0 - torso.mean()) / torso.std(ddof=1))
    assert f.loc[3, "tbp_lv_areaMM2_z_patient_site"] == 0.0  # alone at its site
    # the patient's only lesion: no context to stand out from
    assert f.loc[5, "tbp_lv_areaMM2_z_patient"] == 0.0 and f.loc[5, "tbp_lv_areaMM2_rank_patient"] == 0.5
    assert f.loc[5, "patient_lof"] == 1.0
    assert f["patient_lof"][:5].idxmax() == 4 and f.loc[4, "patient_lof"] > 1.5  # the ugly duckling
    # label-free: the targets are not read
    flipped = meta.assign(target=1 - meta["target"])
    pd.testing.assert_frame_equal(metadata_features(flipped, cols), f)
    assert list(metadata_features(meta, cols, context=False).columns) == [*cols, "lesion_shape_index",
                                                                          "perimeter_to_area", "size_for_age",
                                                                          "log_area"]


def test_weighted_metrics_equal_repeated_rows():
    from melanoma_models import metrics as M

    rng = np.random.default_rng(3)
    y = (rng.random(300) < 0.2).astype(int)
    p = np.round(rng.random(300) + 0.4 * y, 2)  # rounded: ties
    w = rng.integers(0, 4, 300)
    rep = np.repeat(np.arange(300), w)
    assert M.roc_auc(y, p, w) == pytest.approx(M.roc_auc(y[rep], p[rep]))
    assert M.pauc_80_2024(y, p, 0.8, w) == pytest.approx(M.pauc_80_2024(y[rep], p[rep]))
    assert M.roc_auc(y, p, np.ones(300)) == M.roc_auc(y, p)


def test_subgroup_table_flags_a_weak_group_and_counts_small_ones(monkeypatch):
    from melanoma_models import metrics as M
    from melanoma_models import subgroups

    rng = np.random.default_rng(0)
    n = 600
    site = np.where(np.arange(n) < 200, "head/neck", "torso").astype(object)
    site[-15:] = "palms/soles"  # a small group
    y = (rng.random(n) < 0.25).astype(int)
    p = np.where(site == "head/neck", rng.random(n), y * 0.6 + rng.random(n) * 0.5)  # head/neck: chance
    frame = pd.DataFrame({"target": y, "prediction": p, "patient_id": [f"P{i // 4}" for i in range(n)],
                          "anatom_site_general_challenge": site, "sex": np.where(np.arange(n) % 2, "male", "female"),
                          "age_approx": np.where(np.arange(n) % 3, 40.0, 80.0)})
    seen = []
    real = M.roc_auc

    def spy(y_, p_, w=None):
        seen.append(w)
        return real(y_, p_, w)

    monkeypatch.setattr(M, "roc_auc", spy)
    rows = {(r["dimension"], r["group"]): r for r in subgroups.subgroup_table(frame, n_boot=50)}
    overall = rows[("all", "all")]
    head, torso, small = rows[("site", "head/neck")], rows[("site", "torso")], rows[("site", "palms/soles")]
    assert head["below_overall"] and head["auc_ci"][1] < overall["auc"]
    assert not torso["below_overall"] and torso["auc_ci"][0] <= torso["auc"] <= torso["auc_ci"][1]
    assert small["too_few"] and small["images"] == 15 and np.isnan(small["auc"])
    assert {("age band", "30-44"), ("age band", "75+"), ("sex", "male")} <= set(rows)
    # patients, not images, are resampled: every image of a patient carries the same weight
    seen.clear()
    patient = np.array([f"P{i % 37}" for i in range(300)])
    subgroups.bootstrap(y[:300], p[:300], patient, n_boot=20)
    assert len(seen) == 20
    for w in seen:
        per_patient = pd.Series(w).groupby(patient)
        assert (per_patient.nunique() == 1).all()  # one weight per patient
        assert per_patient.first().sum() == 37 and set(np.unique(w)) != {1.0}  # 37 patients drawn, with repeats
    html_table = subgroups.table_html(list(rows.values()))
    assert "too few" in html_table and "below overall" in html_table


def test_gbdt_plugins_name_the_missing_extra(monkeypatch, version, tmp_path):
    import importlib

    real = importlib.import_module

    def missing(name, *a, **k):
        if name in ("xgboost", "catboost"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", missing)
    for name in ("xgb", "catboost"):
        cls = BUILTIN.get(name)
        model = cls(cls.Params.build(CASES[name], name))
        with pytest.raises(PluginError, match="uv sync --extra gbdt"):
            model.fit(_data(version, [0, 1]), None, FitContext(tmp_path, 0, {}))


def test_platt_scaling_is_monotone_weighted_and_falls_back_to_identity():
    from melanoma_models.metrics import platt_scaling

    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.1).astype(int)
    s = rng.normal(0, 1, 400) + 2 * y
    a, b = platt_scaling(s, y)
    p = 1 / (1 + np.exp(-(a * s + b)))
    assert a > 0 and abs(p.mean() - y.mean()) < 0.02  # calibrated: mean probability = prevalence
    ab, bb = platt_scaling(s, y, "balanced")
    pb = 1 / (1 + np.exp(-(ab * s + bb)))
    assert abs((pb[y == 1].mean() + pb[y == 0].mean()) / 2 - 0.5) < 0.02  # both classes weigh the same
    assert platt_scaling(-s, y) == (1.0, 0.0)  # would reverse the ranking
    assert platt_scaling(s[:3], y[:3]) == (1.0, 0.0) and platt_scaling(s, np.zeros(400)) == (1.0, 0.0)


def test_evaluate_and_runner_do_not_import_each_other():
    import subprocess
    import sys

    code = ("import sys, melanoma_models.evaluate as e; assert 'melanoma_models.runner' not in sys.modules, "
            "'evaluate imported the runner'")
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(root))


def test_fold_progress_ends_without_a_stale_inner_bar():
    import io

    from rich.console import Console

    from melanoma_models.runner import _Progress

    buf = io.StringIO()
    console = Console(file=buf, width=100, force_terminal=True, color_system=None)
    with _Progress(True, 2, 0, console) as bars:
        for fold in range(2):
            bars.step(fold)(196, 2000, "early stop")  # a fold that stops at 196 of 2,000 rounds
            bars.fold_done(fold, 0.7)
    last_frame = buf.getvalue().rsplit("\x1b[2K", 1)[-1]  # what stays on the terminal
    lines = [line for line in last_frame.splitlines() if line.strip() and not line.startswith("\x1b[?")]
    assert len(lines) == 1 and lines[0].startswith("folds") and "2/2" in lines[0], lines
    assert "196" not in last_frame
