"""lgbm features without leakage, the stack (nested CV, refusals, ≥ best base), tune, demo, known-answer data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import cli
from melanoma_data import build, synth
from melanoma_data.config import PreprocessConfig
from melanoma_data.dataset import open_dataset
from melanoma_data.errors import ConfigError, InputError
from melanoma_data.ops._cv import cv2
from melanoma_models.api import FitContext, FoldData
from melanoma_models.features import (
    ABCD_COLUMNS,
    check_no_label_leak,
    lesion_features,
    lesion_shape,
    stored_side_fraction,
    tabular_features,
)
from melanoma_models.metrics import pauc_80_2024, roc_auc
from melanoma_models.runner import fit
from melanoma_models.tune import tune
from melanoma_plugins.gbdt.lgbm import LGBMParams, LGBMPlugin

SMALL = PreprocessConfig.from_dict({"square": {"size": 32}, "partition_size": 50,
                                    "shards": {"n_folds": 3, "train_files": 6, "test_files": 2}})
FAST_LGBM = {"num_boost_round": 60, "min_data_in_leaf": 5, "early_stopping_rounds": 20}


@pytest.fixture(scope="module")
def version(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("ensemble")
    synth.write_dataset(root / "in", n=120, layout="kaggle2020", seed=31, sizes=[(160, 120)], defects=0.2,
                        melanoma_rate=0.25, test_fraction=0.15, images_per_patient=3.0, labels="abcd")
    return build.preprocess([str(root / "in")], str(root / "out"), SMALL).version_url


def _parts(version):
    ds = open_dataset(version)
    cache: dict = {}
    train = FoldData(ds, "train", [0, 1], ds.metadata(split="train", folds=[0, 1]), cache, "train")
    valid = FoldData(ds, "train", [2], ds.metadata(split="train", folds=[2]), cache, "valid")
    return ds, train, valid


def test_known_answer_generator(tmp_path):
    truth = synth.write_dataset(tmp_path / "a", n=60, seed=3, sizes=[(96, 72)], labels="abcd", melanoma_rate=0.2)
    again = synth.write_dataset(tmp_path / "b", n=60, seed=3, sizes=[(96, 72)], labels="abcd", melanoma_rate=0.2)
    assert [t["p_true"] for t in truth] == [t["p_true"] for t in again]
    p = np.array([t["p_true"] for t in truth])
    assert 0.1 < p.mean() < 0.3 and p.min() > 0 and p.max() < 1
    y = [t["target"] for t in truth]
    assert 0.6 < roc_auc(y, p) <= 1.0  # p_true is the Bayes-optimal score: informative, not perfect
    more = np.array([sum(t["abcd"]) for t in truth])
    assert np.corrcoef(more, p)[0, 1] > 0.5  # larger A, B, C, D → more likely melanoma
    meta = pd.read_csv(tmp_path / "a" / "train.csv")
    assert set(meta.loc[meta["target"] == 1, "diagnosis"]) == {"melanoma"}
    with pytest.raises(ValueError, match="labels must be"):
        synth.write_dataset(tmp_path / "c", n=2, labels="nope")


def test_honest_generator_labels_follow_drawn_structures_not_size(tmp_path):
    truth = synth.write_dataset(tmp_path / "s", n=80, seed=4, sizes=[(160, 120)], labels="structures",
                                melanoma_rate=0.2, images_per_patient=4.0)
    p = np.array([t["p_true"] for t in truth])
    st = np.array([t["structures"] for t in truth])
    assert 0.1 < p.mean() < 0.3 and 0.6 < roc_auc([t["target"] for t in truth], p) <= 1.0
    assert np.corrcoef(st.sum(axis=1), p)[0, 1] > 0.5  # more structure → more likely melanoma
    size = np.array([t["spec"]["lesion_scale"] for t in truth])
    assert abs(np.corrcoef(size, p)[0, 1]) < 0.35  # size varies with the patient, not with the label
    assert len({tuple(t["spec"]["skin"]) for t in truth}) > 10  # skin tones vary
    # the structures are drawn: a veiled lesion is bluer, a regressed one whiter than a plain one
    plain, veil, regr = ((0.0,) * 7, (0, 0, 0, 1.0, 0, 0, 0), (0, 0, 0, 0, 1.0, 0, 0))
    imgs = {k: synth.render(synth.SynthSpec(width=160, height=120, structures=v, lesion_scale=0.25), seed=1)
            for k, v in (("plain", plain), ("veil", veil), ("regr", regr))}

    def blue_minus_red(name):
        px = imgs[name].image[imgs[name].lesion_mask].astype(float)
        return (px[:, 2] - px[:, 0]).mean()

    def inside(name):
        return imgs[name].image[imgs[name].lesion_mask].astype(float)

    assert blue_minus_red("veil") > blue_minus_red("plain") + 10
    assert inside("regr").mean() > inside("plain").mean() + 10


def test_known_answer_abcd_is_visible_in_the_drawn_image():
    """What p_true depends on must be recoverable from the pixels, or its AUC is no Bayes bound."""
    rng = np.random.default_rng(7)
    latents = rng.uniform(0, 1, (80, 4))
    imgs = []
    for i, (a, b, c, d) in enumerate(latents):
        spec = synth.SynthSpec(width=160, height=120, abcd=(a, b, c), lesion_scale=0.1 + 0.2 * d)
        img = synth.render(spec, seed=(5, i)).image[:, 20:140]  # the centre square, as preprocessing keeps it
        imgs.append(cv2.resize(img, (128, 128), interpolation=cv2.INTER_AREA))
    shape = lesion_shape(np.stack(imgs))

    def corr(col: str, k: int) -> float:
        return float(np.corrcoef(shape[col], latents[:, k])[0, 1])

    assert corr("elongation", 0) > 0.85  # A: the drawn oval
    assert corr("border_harmonics", 1) > 0.75  # B: lobes (Fourier harmonics 3–6 of the outline)
    assert corr("dark_share", 2) > 0.85 and corr("blue_share", 2) > 0.85  # C: exact dark / blue-grey shares
    assert corr("diameter_minor", 3) > 0.95  # D: the radius, untouched by the oval's stretch
    assert corr("border_harmonics", 0) < 0.3  # an oval is not an irregular border


def test_stored_side_fraction_undoes_the_field_crop():
    meta = pd.DataFrame({
        "orig_width": [1000, 1000, 600], "orig_height": [800, 800, 800], "exif_orientation": [1, 1, 6],
        "crop_x0": [0.0, 0.0, 0.0], "crop_x1": [1.0, 1.0, 1.0], "crop_y0": [0.0, 0.1, 0.0], "crop_y1": [1.0, 0.9, 1.0],
        "vignette_detected": [True, False, False], "vignette_cx": [0.5, None, None],
        "vignette_cy": [0.5, None, None], "vignette_radius_frac": [0.5, None, None],
    })
    frac = stored_side_fraction(meta, {"vignette": {"policy": "crop", "crop_scale": 0.68}})
    # a field of radius 400 px cropped to a square of half-side 0.68 × 400: 544 of the 800 px short side
    assert frac[0] == pytest.approx(0.68)
    assert frac[1] == pytest.approx(640 / 800)  # dark bands cropped: 640 rows left
    assert frac[2] == pytest.approx(1.0)  # rotated by EXIF, nothing cropped
    assert stored_side_fraction(meta, {"vignette": {"policy": "leave"}})[0] == pytest.approx(1.0)
    # resize by padding keeps the long side of what the op kept: 1000 x 640 → a 1000 px square
    padded = stored_side_fraction(meta, {"vignette": {"policy": "crop"}, "resize": {"policy": "pad"}})  # format 1
    assert np.array_equal(padded, stored_side_fraction(meta, {"field_of_view": {"policy": "crop"},
                                                              "square": {"policy": "pad"}}), equal_nan=True)
    assert padded[1] == pytest.approx(1000 / 800)
    # the same box as the op itself crops
    from melanoma_data.ops import vignette as vig

    found = vig.Vignette(False, None, None, None, 0.0, (0.0, 0.1, 1.0, 0.9))
    kept = vig.apply_vignette_policy(np.zeros((800, 1000, 3), np.uint8), found, vig.VignetteParams())
    assert min(kept.shape[:2]) / 800 == pytest.approx(frac[1]) and max(kept.shape[:2]) / 800 == pytest.approx(padded[1])


@pytest.mark.slow
def test_abcd_features_cached_per_run_and_linear_models_on_them(version, tmp_path):
    ds, train, valid = _parts(version)
    feats = lesion_features(train, 64)
    assert len(feats) == len(train.meta) and len(train.cache[("lesion_shape", 64, "train")]) > len(train.meta)
    direct = lesion_shape(train.images(64))
    pd.testing.assert_frame_equal(feats, direct)
    abcd = tabular_features(valid, ds.encodings, "abcd")
    assert list(abcd.columns) == ["sex", "site", *ABCD_COLUMNS] and len(abcd) == len(valid.meta)
    for mode in ("abcd", "tabular"):  # NaN-holding tabular features: imputed, not propagated
        res = fit("logreg", version, runs=tmp_path, sets={"features": mode, "C": 0.1})
        oof = pd.read_parquet(res.run_dir / "oof.parquet")
        assert np.isfinite(oof["prediction"]).all() and res.metrics["auc"] > 0.5


def test_lgbm_features_carry_no_validation_labels(version):
    ds, train, valid = _parts(version)

    def honest(tr: FoldData, va: FoldData) -> pd.DataFrame:
        model = LGBMPlugin(LGBMParams.build(FAST_LGBM, "lgbm"))
        model.fit(tr, None, FitContext(Path("."), 0, ds.encodings))
        return model.features(va)

    check_no_label_leak(honest, train, valid)  # passes: site rates come from training labels only

    def leaky(tr: FoldData, va: FoldData) -> pd.DataFrame:
        f = tabular_features(va, ds.encodings, "metadata")
        f["patient_melanoma_rate"] = va.meta.groupby("patient_id")["target"].transform("mean").astype(float)
        return f

    with pytest.raises(AssertionError, match="validation features"):
        check_no_label_leak(leaky, train, valid)  # the guard catches a feature made from validation labels

    # the label-based encoder is fitted on the training rows: their labels move it
    model = LGBMPlugin(LGBMParams.build(FAST_LGBM, "lgbm"))
    model.fit(train, None, FitContext(Path("."), 0, ds.encodings))
    flipped = train.meta.copy()
    flipped["target"] = (1 - flipped["target"].astype(int)).astype("Int8")
    other = LGBMPlugin(LGBMParams.build(FAST_LGBM, "lgbm"))
    other.fit(FoldData(ds, "train", [0, 1], flipped, train.cache), None, FitContext(Path("."), 0, ds.encodings))
    assert not np.allclose(model.features(valid)["site_rate"], other.features(valid)["site_rate"])


def test_patient_context_features(version):
    ds, train, _ = _parts(version)
    f = tabular_features(train, ds.encodings, "all")
    assert len(f) == len(train.meta)
    single = train.meta["patient_image_count"].to_numpy() == 1
    assert (f.loc[single, "mean_r_vs_patient"] == 0).all()
    multi = train.meta.groupby("patient_id")["image_name"].transform("size").to_numpy() > 1
    assert f.loc[multi, "dark_fraction_vs_patient"].abs().sum() > 0
    meta_only = tabular_features(train, ds.encodings, "metadata")
    assert set(meta_only.columns) == {"sex", "age", "site", "patient_images", "age_minus_patient"}


@pytest.mark.slow
def test_lgbm_run_reports_feature_importance(version, tmp_path):
    res = fit("lgbm", version, runs=tmp_path, sets=FAST_LGBM)
    assert res.metrics["feature_importance"] and (res.run_dir / "report" / "importance.png").exists()
    assert (res.run_dir / "fold-0" / "model" / "model.txt").read_text().startswith("tree")
    assert "Feature importance" in (res.run_dir / "report" / "index.html").read_text()


def _fake_run(root: Path, name: str, version: str, score: np.ndarray, meta: pd.DataFrame, test: pd.DataFrame,
              fold_map: dict | None = None) -> Path:
    ds = open_dataset(version)
    run = root / name
    run.mkdir(parents=True)
    fm = fold_map or {str(f): f for f in range(ds.n_folds)}
    (run / "config.json").write_text(json.dumps({"run_id": name, "plugin": "fake", "folds": len(set(fm.values())),
                                                 "fold_map": fm, "dataset": {"fingerprint": ds.fingerprint}}))
    pd.DataFrame({"image_name": meta["image_name"], "target": meta["target"].astype("int8"),
                  "fold": meta["fold"].astype("int8"), "prediction": score}).to_parquet(run / "oof.parquet")
    pd.DataFrame({"image_name": test["image_name"], "prediction": np.full(len(test), 0.5)}).to_parquet(
        run / "test_predictions.parquet")
    return run


@pytest.mark.slow
def test_stack_beats_its_best_base_on_complementary_runs(version, tmp_path):
    ds = open_dataset(version)
    meta, test = ds.metadata(split="train"), ds.metadata(split="test")
    y = meta["target"].to_numpy(dtype=float)
    rng = np.random.default_rng(0)
    half = rng.random(len(y)) < 0.5  # each base run sees the label in a different half of the rows
    a = np.where(half, y, rng.random(len(y))) * 0.8 + rng.random(len(y)) * 0.2
    b = np.where(~half, y, rng.random(len(y))) * 0.8 + rng.random(len(y)) * 0.2
    ra = _fake_run(tmp_path, "a", version, a, meta, test)
    rb = _fake_run(tmp_path, "b", version, b, meta, test)
    res = fit("stack", version, runs=tmp_path, sets={"runs": "a,b"})
    best = max(roc_auc(y, a), roc_auc(y, b))
    assert res.metrics["auc"] >= best + 0.05, (res.metrics["auc"], best)
    comp = res.metrics["comparison"]
    assert {"base: a", "base: b", "stack: mean", "stack: rank", "stack: weights", "stack: logreg"} <= set(comp)
    assert "Base runs and combiners" in (res.run_dir / "report" / "index.html").read_text()
    hist = json.loads((res.run_dir / "fold-0" / "history.json").read_text())
    assert set(hist["inner_cv_auc"]) == {"best", "mean", "rank", "weights", "logreg"}
    by_pauc = fit("stack", version, runs=tmp_path, sets={"runs": "a,b", "metric": "pauc_80_2024"})
    hist = json.loads((by_pauc.run_dir / "fold-0" / "history.json").read_text())
    assert hist["metric"] == "pauc_80_2024" and all(0 <= v <= 0.2 for v in hist["inner_cv_auc"].values())
    assert by_pauc.metrics["pauc_80_2024"] >= max(pauc_80_2024(y, a), pauc_80_2024(y, b))
    assert (res.run_dir / "test_predictions.parquet").exists()
    assert res.config["base_runs"] == [str(ra.resolve()), str(rb.resolve())]


def test_stack_refuses_mismatched_runs(version, tmp_path):
    ds = open_dataset(version)
    meta, test = ds.metadata(split="train"), ds.metadata(split="test")
    score = np.random.default_rng(1).random(len(meta))
    _fake_run(tmp_path, "a", version, score, meta, test)
    _fake_run(tmp_path, "b", version, score, meta, test)
    other = _fake_run(tmp_path, "c", version, score, meta, test, fold_map={"0": 0, "1": 1, "2": 0})
    cfg = json.loads((other / "config.json").read_text())
    with pytest.raises(InputError, match="fold assignment"):
        fit("stack", version, runs=tmp_path, sets={"runs": "a,c"})
    shutil.copytree(tmp_path / "a", tmp_path / "d")
    cfg = json.loads((tmp_path / "d" / "config.json").read_text())
    cfg["dataset"]["fingerprint"] = "0123456789abcdef"
    (tmp_path / "d" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(InputError, match="trained on dataset version 0123456789abcdef"):
        fit("stack", version, runs=tmp_path, sets={"runs": "a,d"})
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "config.json").write_text((tmp_path / "a" / "config.json").read_text())
    with pytest.raises(InputError, match="unfinished"):
        fit("stack", version, runs=tmp_path, sets={"runs": "a,e"})
    with pytest.raises(InputError, match="not found"):
        fit("stack", version, runs=tmp_path, sets={"runs": "a,zzz"})
    with pytest.raises(ConfigError, match="at least two base runs"):
        fit("stack", version, runs=tmp_path, sets={"runs": "a"})


@pytest.mark.slow
def test_tune_grid_random_subset_and_best_config(version, tmp_path):
    res = tune("logreg", version, {"C": ["0.01", "1"], "class_weight": ["none", "balanced"]},
               runs=tmp_path, sets={"image_size": "8"})
    assert len(res.results) == 4 and res.results["auc"].is_monotonic_decreasing
    assert (res.tune_dir / "results.png").stat().st_size > 5000
    csv = pd.read_csv(res.tune_dir / "results.csv")
    assert list(csv.columns[:2]) == ["C", "class_weight"]
    best_run = Path(res.results.loc[0, "run"])
    again = CliRunner().invoke(cli.app, ["fit", "--config", str(res.tune_dir / "best.toml"), "--runs", str(tmp_path),
                                         "--no-progress"])
    assert again.exit_code == 0, again.output
    assert "reused" in again.output and best_run.name in again.output
    sub = tune("logreg", version, {"C": ["0.01", "0.1", "1", "10"]}, budget=2, runs=tmp_path,
               sets={"image_size": "8"})
    assert len(sub.results) == 2
    # logreg optimises no metric itself: the metric only ranks the trials
    by_pauc = tune("logreg", version, {"C": ["0.01", "1"], "class_weight": ["none", "balanced"]},
                   runs=tmp_path, sets={"image_size": "8", "metric": "pauc_80_2024"})
    assert by_pauc.results["pauc_80_2024"].is_monotonic_decreasing and by_pauc.tune_dir != res.tune_dir
    assert "by pauc_80_2024" in (by_pauc.tune_dir / "best.toml").read_text()
    with pytest.raises(ConfigError, match="metric must be"):
        tune("logreg", version, {"C": ["1"]}, runs=tmp_path, sets={"metric": "f1"})
    with pytest.raises(ConfigError, match="invalid parameter"):
        tune("logreg", version, {"C": ["1", "-5"]}, runs=tmp_path)
    res = CliRunner().invoke(cli.app, ["tune", "--plugin", "logreg", "--data", version, "--grid", "C"])
    assert res.exit_code == 2 and "--grid expects key=v1,v2" in res.output


@pytest.mark.slow
def test_demo_runs_end_to_end_in_reduced_size(tmp_path):
    res = CliRunner().invoke(cli.app, ["demo", "--root", str(tmp_path), "--n", "120", "--workers", "0",
                                       "--image-model", "cnn", "--epochs", "1", "--no-embeddings"],
                             terminal_width=200)
    assert res.exit_code == 0, res.output
    for name in ("lgbm", "logreg", "cnn", "stack"):
        assert name in res.output
    assert "Bayes-optimal AUC" in res.output
    assert (tmp_path / "reports" / "eda" / "index.html").exists()
    stacks = list((tmp_path / "runs").glob("stack-*"))
    assert len(stacks) == 1 and (stacks[0] / "report" / "index.html").exists()
    assert len(json.loads((stacks[0] / "config.json").read_text())["base_runs"]) == 3
    # the pooled stack does not lose to its best base run (by more than 0.01, the demo's floor; at 120 images, where
    # the ABCD model is well above chance: at 48 every model is near chance and which one is "best" is noise)
    aucs = {json.loads((r / "config.json").read_text())["plugin"]: json.loads((r / "metrics.json").read_text())["auc"]
            for r in (tmp_path / "runs").iterdir() if (r / "metrics.json").exists()}
    assert aucs["stack"] >= max(v for k, v in aucs.items() if k != "stack") - 0.01, aucs
    # the printed table is the run files' figures, and the Bayes AUC the truth file's
    import re

    from melanoma_models.demo import image_label

    for plugin, auc in aucs.items():
        label = {"logreg": "logreg-abcd", "cnn": image_label("cnn", 64)}.get(plugin, plugin)
        row = re.search(rf"│ {re.escape(label)}\s+│ ([0-9.]+)\s+│", res.output)
        assert row and float(row.group(1)) == pytest.approx(auc, abs=0.0006), (label, auc)
    truth = [t for t in json.loads((tmp_path / "synthetic" / "synth_truth.json").read_text()) if t["split"] == "train"]
    bayes = roc_auc([t["target"] for t in truth], [t["p_true"] for t in truth])
    printed = float(re.search(r"Bayes-optimal AUC of their labels ([0-9.]+)", res.output).group(1))
    assert printed == pytest.approx(bayes, abs=0.0006)


def test_optimal_weights_are_deterministic_and_order_free():
    from melanoma_plugins.stack import _hill_climb

    rng = np.random.default_rng(1)
    y = (rng.random(600) < 0.2).astype(int)
    signal = rng.normal(0, 1, 600) + 1.5 * y
    z = np.column_stack([signal + rng.normal(0, 1.0, 600), signal + rng.normal(0, 1.5, 600),
                         rng.normal(0, 1, 600)])  # two noisy views of one signal, and noise
    w = _hill_climb(z, y, 50)
    assert w.min() >= 0 and w.sum() == pytest.approx(1.0) and w[2] == 0.0
    assert w[0] > 0 and w[1] > 0  # both views are used: their noise averages out
    assert roc_auc(y, z @ w) >= max(roc_auc(y, z[:, j]) for j in range(3))
    order = [2, 0, 1]
    np.testing.assert_allclose(_hill_climb(z[:, order], y, 50), w[order])


def test_weights_mix_tied_runs_and_refuse_clearly_weaker_ones():
    from melanoma_plugins.stack import _hill_climb

    tied, weaker = 0, 0
    for seed in range(20):
        rng = np.random.default_rng(seed)
        y = np.zeros(400, int)
        y[:60] = 1
        s = rng.normal(0, 1, 400) + 1.2 * y
        a, b = s + rng.normal(0, 0.5, 400), s + rng.normal(0, 0.5, 400)  # two equally good runs
        tied += bool(_hill_climb(np.column_stack([a, b]), y, 50, min_gain_se=1.0).min() > 0)
        weak = s + rng.normal(0, 4.0, 400)  # a clearly weaker one
        weaker += _hill_climb(np.column_stack([a, weak]), y, 50, min_gain_se=1.0)[1] > 0
    # which of two equally good runs "wins" a fold's training rows is luck (and folds that pick differently
    # pool badly): a paired test at one standard error ties them in about half to two thirds of the draws;
    # a run that is worse beyond the noise never gets a share
    assert 5 <= tied <= 17 and weaker == 0


def test_paired_auc_difference_se_matches_a_bootstrap():
    from melanoma_plugins.stack import paired_difference_se

    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.2).astype(int)
    s = rng.normal(0, 1, 400) + 1.2 * y
    a, near, other = s + rng.normal(0, 0.5, 400), s + rng.normal(0, 0.5, 400), rng.normal(0, 1, 400) + 0.8 * y
    boot = []
    for _ in range(300):
        i = rng.integers(0, 400, 400)
        boot.append(roc_auc(y[i], a[i]) - roc_auc(y[i], other[i]))
    assert paired_difference_se("auc", a, other, y) == pytest.approx(np.std(boot), rel=0.2)
    assert paired_difference_se("auc", a, near, y) < 0.6 * paired_difference_se("auc", a, other, y)  # correlated


def test_image_runs_become_out_of_fold_columns(version, tmp_path):
    from melanoma_plugins.gbdt.lgbm import image_column_name

    image = fit("logreg", version, runs=tmp_path, sets={"image_size": 8})  # an image model (pixels only)
    img_oof = pd.read_parquet(image.run_dir / "oof.parquet").set_index("image_name")
    res = fit("lgbm", version, runs=tmp_path, sets={**FAST_LGBM, "image_runs": image.run_dir.name})
    col = image_column_name(str(image.run_dir))
    doc = json.loads(next((res.run_dir / "fold-0" / "model").glob("*.json")).read_text())
    assert col in doc["columns"] and doc["image_runs"] == [str(image.run_dir.resolve())]
    # each row's value is the image run's out-of-fold score: made by its model of the row's own fold
    ds = open_dataset(version)
    cfg = json.loads((res.run_dir / "config.json").read_text())
    train_folds = [int(a) for a, b in cfg["fold_map"].items() if b != 0]
    valid_folds = [int(a) for a, b in cfg["fold_map"].items() if b == 0]
    cache: dict = {}
    model = LGBMPlugin.load(res.run_dir / "fold-0" / "model", LGBMParams.build(FAST_LGBM, "lgbm"))
    for folds, role in ((train_folds, "train"), (valid_folds, "valid")):
        data = FoldData(ds, "train", folds, ds.metadata(split="train", folds=folds), cache, role)
        values = model.features(data)[col].to_numpy()
        np.testing.assert_allclose(values, img_oof.loc[data.names, "prediction"].to_numpy())
        row_fold = data.meta.set_index("image_name").loc[data.names, "fold"].map(
            lambda f: cfg["fold_map"][str(int(f))]).to_numpy()
        assert (img_oof.loc[data.names, "fold"].to_numpy() == row_fold).all()  # never scored by a model that saw it
    noisy = fit("lgbm", version, runs=tmp_path, sets={**FAST_LGBM, "image_runs": image.run_dir.name,
                                                      "image_noise": 0.05})
    assert noisy.run_dir != res.run_dir and np.isfinite(noisy.metrics["auc"])
    # another fold assignment is refused
    meta, test = ds.metadata(split="train"), ds.metadata(split="test")
    _fake_run(tmp_path, "other-folds", version, np.random.default_rng(2).random(len(meta)), meta, test,
              fold_map={"0": 0, "1": 1, "2": 0})
    with pytest.raises(InputError, match="fold assignment"):
        fit("lgbm", version, runs=tmp_path, sets={**FAST_LGBM, "image_runs": "other-folds"})
