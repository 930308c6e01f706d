"""Scoring raw images with a trained run: the run's own preprocessing, every fold model, bad inputs quarantined."""

from __future__ import annotations

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
from melanoma_data.errors import InputError
from melanoma_models import score
from melanoma_models.runner import fit
from melanoma_models.runner import predict as predict_version

pytest.importorskip("keras")

FAST_LGBM = {"num_boost_round": 20, "features": "metadata", "early_stopping": "none"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    synth.write_dataset(root / "in", n=36, layout="kaggle2020", seed=12, sizes=[(200, 150)], defects=0.3,
                        melanoma_rate=0.3, test_fraction=0.25, images_per_patient=2.0)
    cfg = PreprocessConfig.from_dict({"square": {"size": 32}, "partition_size": 40,
                                      "shards": {"n_folds": 2, "train_files": 4, "test_files": 1}})
    version = build.preprocess([str(root / "in")], str(root / "out"), cfg).version_url
    cnn = fit("cnn", version, runs=root / "runs", sets={"arch": "small", "epochs": 1, "image_size": 32,
                                                        "batch_size": 4, "tta": 2})
    lgbm = fit("lgbm", version, runs=root / "runs", sets=FAST_LGBM)
    return {"root": root, "version": version, "cnn": cnn.run_dir, "lgbm": lgbm.run_dir}


def _test_images(trained) -> list[str]:
    return sorted(str(p) for p in (trained["root"] / "in" / "jpeg" / "test").glob("*.jpg"))


@pytest.mark.slow
def test_raw_images_score_as_through_the_dataset_path(trained, tmp_path):
    files = _test_images(trained)
    res = CliRunner().invoke(cli.app, ["predict", "--run", str(trained["cnn"]), "--images", *files,
                                       "--out", str(tmp_path / "scores.csv")])
    assert res.exit_code == 0, res.output
    got = pd.read_csv(tmp_path / "scores.csv").set_index("image_name")
    want = predict_version(trained["cnn"], trained["version"]).set_index("image_name")["target"]
    assert sorted(got.index) == sorted(want.index) == sorted(Path(f).stem for f in files)
    np.testing.assert_allclose(got.loc[want.index, "prediction"], want, atol=1e-6)
    assert {"hair_fraction", "vignette_detected", "brightness_before"} <= set(got.columns)
    # the same processed bytes as the dataset version's
    kept = score.score_images(trained["cnn"], files[:3], tmp_path / "s2.csv", work=tmp_path / "work")
    new = open_dataset(kept.version_url).to_dask(images=True, columns=["image_name", "image"]).compute()
    old = open_dataset(trained["version"]).to_dask(images=True, columns=["image_name", "image"]).compute()
    old = dict(zip(old["image_name"], old["image"], strict=True))
    assert len(new) == 3 and all(old[n] == b for n, b in zip(new["image_name"], new["image"], strict=True))


@pytest.mark.slow
def test_layout_folders_and_bad_inputs_are_quarantined_not_fatal(trained, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    good = Path(_test_images(trained)[0]).read_bytes()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "cut.jpg").write_bytes(good[: len(good) // 3])
    (bad / "text.jpg").write_text("not an image at all")
    shutil.copy(_test_images(trained)[1], bad / "fine.jpg")
    res = score.score_images(trained["cnn"], [str(trained["root"] / "in"), str(bad)], tmp_path / "s.csv")
    assert len(res.scores) == 36 + 1 and res.scores["prediction"].between(0, 1).all()
    reasons = dict(zip(res.quarantine["image_name"], res.quarantine["reason"], strict=True))
    assert reasons == {"empty": "empty_file", "cut": "truncated", "text": "not_an_image"}
    q = pd.read_csv(res.quarantine_out)
    assert sorted(q["image_name"]) == ["cut", "empty", "text"] and "detail" in q.columns


def test_other_op_versions_are_refused_unless_allowed(trained, tmp_path, monkeypatch):
    real = score.op_versions()
    monkeypatch.setattr(score, "op_versions", lambda: {**real, "hair": real["hair"] + "-next"})
    with pytest.raises(InputError, match=r"other op versions: hair .* \(the run's data\) vs .*-next \(installed\)"):
        score.score_images(trained["cnn"], _test_images(trained)[:2], tmp_path / "s.csv")
    said: list[str] = []
    res = score.score_images(trained["cnn"], _test_images(trained)[:2], tmp_path / "s.csv",
                             allow_version_mismatch=True, warn=said.append)
    assert len(res.scores) == 2 and any("hair" in s for s in said)


@pytest.mark.slow
def test_metadata_plugins_name_the_missing_columns_and_stacks_score_their_bases(trained, tmp_path):
    files = _test_images(trained)
    with pytest.raises(InputError, match="needs metadata: pass --metadata CSV with the columns image_name, sex"):
        score.score_images(trained["lgbm"], files, tmp_path / "s.csv")
    meta = pd.read_csv(trained["root"] / "in" / "test.csv")
    meta.drop(columns=["sex"]).to_csv(tmp_path / "nosex.csv", index=False)
    with pytest.raises(InputError, match="lacks the column.s. sex"):
        score.score_images(trained["lgbm"], files, tmp_path / "s.csv", metadata=str(tmp_path / "nosex.csv"))
    meta.to_csv(tmp_path / "meta.csv", index=False)
    said: list[str] = []
    res = score.score_images(trained["lgbm"], files, tmp_path / "s.csv", metadata=str(tmp_path / "meta.csv"),
                             warn=said.append)
    assert any("same patient's other images" in s for s in said)
    want = predict_version(trained["lgbm"], trained["version"]).set_index("image_name")["target"]
    got = res.scores.set_index("image_name")["prediction"]
    np.testing.assert_allclose(got.loc[want.index], want, atol=1e-6)  # all of each patient's test images given
    stack = fit("stack", trained["version"], runs=trained["root"] / "runs",
                sets={"runs": f"{trained['cnn']},{trained['lgbm']}", "method": "mean"})
    res = score.score_images(stack.run_dir, files, tmp_path / "st.csv", metadata=str(tmp_path / "meta.csv"))
    want = predict_version(stack.run_dir, trained["version"]).set_index("image_name")["target"]
    np.testing.assert_allclose(res.scores.set_index("image_name").loc[want.index, "prediction"], want, atol=1e-6)


# ------------------------------------------------------------------------------------------ explain


@pytest.mark.slow
def test_explain_pages_for_an_image_and_a_tabular_plugin_on_real_images(trained, tmp_path, sample_dir):
    from PIL import Image

    from melanoma_models.explain import NOTICE

    real = sorted((sample_dir / "images").glob("*.jpg"))[:2]
    meta = pd.read_csv(sample_dir / "metadata.csv")
    meta[meta["image_name"].isin([p.stem for p in real])].to_csv(tmp_path / "meta.csv", index=False)
    for run, kind in ((trained["cnn"], "gradcam"), (trained["lgbm"], "contributions")):
        out = tmp_path / kind
        res = CliRunner().invoke(cli.app, ["explain", "--run", str(run), "--images", *map(str, real),
                                           "--metadata", str(tmp_path / "meta.csv"), "--out", str(out)])
        assert res.exit_code == 0, res.output
        index = (out / "index.html").read_text()
        assert NOTICE in index and all(p.stem in index for p in real)
        for p in real:
            page = (out / f"{p.stem}.html").read_text()
            assert NOTICE in page and f"{p.stem}_preprocessing.png" in page and f"{p.stem}_{kind}.png" in page
            with Image.open(out / f"{p.stem}_{kind}.png") as im:
                assert im.width >= 300 and len(np.unique(np.asarray(im.convert("L")))) > 20  # drawn, not blank


@pytest.mark.parametrize("plugin", ["lgbm", "xgb"])
def test_tree_contributions_add_up_to_the_log_odds(trained, plugin):
    from melanoma_models.api import FoldData
    from melanoma_models.runner import load_models

    if plugin != "lgbm":
        pytest.importorskip("xgboost", reason="the gbdt extra")
    run = trained["lgbm"] if plugin == "lgbm" else fit(plugin, trained["version"], runs=trained["root"] / "runs",
                                                      sets=FAST_LGBM).run_dir
    _, _, models = load_models(run)
    ds = open_dataset(trained["version"])
    data = FoldData(ds, "test", None, ds.metadata(split="test"), {}, "test")
    why = models[0].explain(data)
    p = models[0].predict(data)
    logit = np.log(p / (1 - p))
    np.testing.assert_allclose(why["contributions"].sum(axis=1) + why["bias"], logit, atol=1e-6)
    assert list(why["contributions"].columns) == models[0].columns


@pytest.mark.slow
def test_gradcam_heat_lies_on_the_lesion_in_a_run_that_learns(tmp_path):
    """Generated square images (known lesion masks; no field crop, hair or colour ops, so the processed image
    is the drawn one resized): a small CNN that learns puts most of each image's Grad-CAM heat on the lesion."""
    import json

    from melanoma_data.ops._cv import cv2
    from melanoma_models.explain import reasons

    synth.write_dataset(tmp_path / "in", n=160, layout="kaggle2020", seed=5, sizes=[(192, 192)], defects=0.0,
                        labels="abcd", melanoma_rate=0.3, test_fraction=0.2)
    cfg = PreprocessConfig.from_dict({"square": {"size": 64}, "partition_size": 64, "field_of_view": {"enabled": False},
                                      "hair": {"enabled": False}, "colour": {"enabled": False},
                                      "shards": {"n_folds": 2, "train_files": 4, "test_files": 1}})
    version = build.preprocess([str(tmp_path / "in")], str(tmp_path / "out"), cfg).version_url
    run = fit("cnn", version, runs=tmp_path / "runs", sets={"arch": "small", "image_size": 64, "epochs": 25,
                                                            "batch_size": 16, "lr": 0.003, "class_weight": "balanced",
                                                            "early_stopping": "none"})
    assert run.metrics["auc"] > 0.65  # it learns
    why = reasons(run.run_dir, open_dataset(version))
    truth = json.loads((tmp_path / "in" / "synth_truth.json").read_text())
    shares, areas = [], []
    for i, t in enumerate(truth):
        if t["split"] != "test":
            continue
        spec = synth.SynthSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in t["spec"].items()})
        lesion = synth.render(spec, seed=(5, i)).lesion_mask.astype(np.float32)
        mask = cv2.resize(lesion, (64, 64), interpolation=cv2.INTER_AREA) > 0.5
        heat = why[t["image_name"]]["heatmap"]
        assert heat.shape == (64, 64) and heat.max() <= 1.0
        shares.append(float((heat * mask).sum() / max(float(heat.sum()), 1e-9)))
        areas.append(float(mask.mean()))
    assert len(shares) >= 20
    assert np.median(shares) > 0.5  # most of the heat on the lesion, for most images
    assert np.mean(shares) > 3 * np.mean(areas)  # far more than a map blind to the lesion would put there


def test_quarantine_csv_escapes_formulas_and_the_scores_csv_keeps_names_as_they_are(trained, tmp_path):
    """The quarantine CSV is for people (formula-like names escaped); the scores CSV is a machine output."""
    loose = tmp_path / "loose"
    loose.mkdir()
    shutil.copy(_test_images(trained)[0], loose / "=1+2.jpg")
    (loose / "@SUM(A1).jpg").write_bytes(b"")
    (loose / "-3.jpg").write_bytes(b"GIF89a")
    pd.DataFrame({"image_name": ["=1+2", "@SUM(A1)", "-3"], "sex": "male", "age_approx": 50,
                  "anatom_site_general_challenge": "torso"}).to_csv(tmp_path / "meta.csv", index=False)
    res = CliRunner().invoke(cli.app, ["predict", "--run", str(trained["lgbm"]), "--images", str(loose),
                                       "--metadata", str(tmp_path / "meta.csv"), "--out", str(tmp_path / "scores.csv")])
    assert res.exit_code == 0, res.output
    scores = pd.read_csv(tmp_path / "scores.csv", dtype={"image_name": str})
    assert scores["image_name"].tolist() == ["=1+2"]  # machine output: exactly the name
    q = pd.read_csv(tmp_path / "scores.quarantine.csv", dtype=str).set_index("image_name")["reason"].to_dict()
    assert q == {"'@SUM(A1)": "empty_file", "-3": "not_an_image"}  # a number-like name stays as it is


def test_explain_page_names_never_collide_and_never_leave_the_folder():
    from melanoma_models.explain import _file_stem

    assert _file_stem("ISIC_0000001") == "ISIC_0000001"
    assert _file_stem("élève") == "élève"
    assert _file_stem("a b") != _file_stem("a_b")
    assert _file_stem("a b") != _file_stem("a+b")
    for hostile in ("../x", "a/b", "..", "a\\b"):
        stem = _file_stem(hostile)
        assert "/" not in stem and "\\" not in stem and stem != ".."
