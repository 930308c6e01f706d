"""Frozen embeddings beside a dataset version: embed (fingerprint, no-op, resume, accounting), validate,
readers, plugins using them with fold-confined PCA, run ids, and scoring new images the same way."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import cli
from melanoma_data import embeddings as store
from melanoma_data.dataset import decode_jpeg, open_dataset
from melanoma_data.errors import InputError, ValidationFailed
from melanoma_data.validate import validate_version
from melanoma_models.registry import get_plugin
from melanoma_models.runner import fit, make_run_id

pytest.importorskip("keras")

from melanoma_plugins.keras_image import embed  # noqa: E402
from tests.conftest import small_version  # noqa: E402

#: The default backbone with its packaged ImageNet weights (a default dependency), at a tiny size: real features
#: (a random-init B0's are ~1e-7, rounding noise), cheaply.
BACKBONE, SIZE = "lite0", 32
FAST_GBDT = {"num_boost_round": 15, "early_stopping": "none", "features": "none", "site_rate": False,
             "columns": "none", "min_data_in_leaf": 2}


@pytest.fixture(scope="module")
def version(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("embed")
    return small_version(root, n=36, seed=5, size=48, n_folds=3, train_files=3, melanoma_rate=0.35,
                         test_fraction=0.25, tfrecord=False)


@pytest.fixture(scope="module")
def embedded(version) -> store.EmbeddingSpec:
    """The version embedded once (interrupted after one part, then resumed)."""
    with pytest.raises(KeyboardInterrupt):
        embed.embed_version(version, BACKBONE, size=SIZE, workers=0, stop_after=1)
    assert [d["status"] for d in store.list_embeddings(version)] == ["unfinished (run the same embed command again)"]
    with pytest.raises(ValidationFailed) as err:
        validate_version(version)
    assert any("unfinished" in p for p in err.value.problems)
    res = embed.embed_version(version, BACKBONE, size=SIZE, workers=0)
    assert not res.reused and res.resumed_parts == 1
    return embed.resolve_spec(BACKBONE, SIZE)


def test_embed_fingerprint_noop_resume_and_accounting(version, embedded):
    ds = open_dataset(version)
    doc = json.loads((Path(version) / "embeddings" / store.key_of(embedded, store.fingerprint(
        ds.fingerprint, embedded)) / store.DESCRIPTOR_FILE).read_text())
    assert doc["fingerprint"] == store.fingerprint(ds.fingerprint, embedded)
    assert doc["counts"] == {"images": ds.manifest["counts"]["written"], "embedded": ds.manifest["counts"]["written"],
                             "quarantined": 0}
    # every setting moves the fingerprint
    fps = {store.fingerprint(ds.fingerprint, s) for s in (
        embedded, store.EmbeddingSpec(BACKBONE, "imagenet", embedded.weights_sha256, 48),
        store.EmbeddingSpec(BACKBONE, "imagenet", embedded.weights_sha256, SIZE, "flip"),
        store.EmbeddingSpec(BACKBONE, "none", "0" * 64, SIZE), store.EmbeddingSpec("lite1", "none",
                                                                                    embedded.weights_sha256, SIZE))}
    assert len(fps) == 5 and store.fingerprint("0" * 16, embedded) not in fps
    # a re-run is a no-op; validate passes; the catalog does not take the folder for a version
    again = embed.embed_version(version, BACKBONE, size=SIZE, workers=0)
    assert again.reused and again.descriptor == doc
    validate_version(version)
    from melanoma_data.catalog import list_versions

    assert [r["fingerprint"] for r in list_versions(str(Path(version).parent.parent))] == [ds.fingerprint]
    # the resumed result is what a direct forward pass gives, row for row
    meta = ds.metadata(columns=["image_name", "image"])
    imgs = np.stack([decode_jpeg(b, SIZE) for b in meta["image"]])
    direct = embed.embed_images(embed.load_model(embedded), imgs, "none")
    np.testing.assert_allclose(ds.embeddings(BACKBONE).matrix(meta["image_name"]), direct, rtol=1e-5, atol=1e-6)


def test_bad_images_are_quarantined_with_a_reason():
    from tests.conftest import jpeg_bytes

    ok, imgs, bad = embed._decode_all(["a", "b", "c"], [jpeg_bytes(40, 40), b"not a jpeg", None], SIZE)
    assert ok == [0] and imgs.shape == (1, SIZE, SIZE, 3)
    assert [(q["image_name"], q["stage"], q["reason"]) for q in bad] == [("b", "embed", "undecodable"),
                                                                         ("c", "embed", "undecodable")]
    assert all(q["detail"] for q in bad)


def test_validate_catches_tampering(version, embedded, tmp_path):
    copy = tmp_path / "v" / Path(version).name
    shutil.copytree(version, copy)
    kdir = next((copy / "embeddings").iterdir())
    part = kdir / "part-00000.parquet"
    part.write_bytes(part.read_bytes()[:-40] + b"\0" * 40)
    (kdir / "stray.parquet").write_bytes(b"x")
    with pytest.raises(ValidationFailed) as err:
        validate_version(str(copy))
    text = "\n".join(err.value.problems)
    assert "part-00000.parquet: sha256 differs" in text and "stray.parquet: not listed" in text


def test_readers_align_with_metadata_and_datasets_show_lists_them(version, embedded):
    ds = open_dataset(version)
    emb = ds.embeddings(BACKBONE)
    for split in ("train", "test"):
        meta = ds.metadata(split=split)
        frame = emb.pandas(split)
        assert list(frame["image_name"]) == list(meta["image_name"]) and frame.shape[1] == 1 + emb.dim
        np.testing.assert_array_equal(frame.drop(columns="image_name").to_numpy(), emb.numpy(split))
    folds = ds.metadata(split="train", folds=[1])
    assert emb.numpy("train", folds=[1]).shape == (len(folds), emb.dim)
    dd = emb.to_dask().compute().set_index("image_name")
    np.testing.assert_array_equal(np.stack(dd.loc[folds["image_name"], "embedding"].to_numpy()),
                                  emb.numpy("train", folds=[1]))
    res = CliRunner().invoke(cli.app, ["datasets", "show", version])
    assert res.exit_code == 0, res.output
    assert emb.key in res.output and emb.fingerprint in res.output
    with pytest.raises(InputError, match="no finished embeddings 'lite4'.*lite0-32px"):
        ds.embeddings("lite4")


@pytest.mark.slow
def test_several_settings_are_never_ambiguous(version, embedded, tmp_path):
    """Also: embed on a Dask worker process of its own, which builds the model once for all parts."""
    res = CliRunner().invoke(cli.app, ["embed", version, "--backbone", BACKBONE, "--size", str(SIZE), "--tta", "flip",
                                       "--workers", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    ds = open_dataset(version)
    try:
        doc = ds.embeddings(BACKBONE, tta="flip").descriptor
        assert doc["timings"]["workers"] == 1 and doc["timings"]["model_builds"] == 1 < len(doc["parts"])
        meta = ds.metadata(split="test", columns=["image_name", "image"])
        imgs = np.stack([decode_jpeg(b, SIZE) for b in meta["image"]])
        here = embed.embed_images(embed.load_model(embedded), imgs, "flip")  # this process, every thread
        np.testing.assert_allclose(ds.embeddings(BACKBONE, tta="flip").matrix(meta["image_name"]), here, rtol=1e-4,
                                   atol=1e-6)
        with pytest.raises(InputError, match="several embeddings 'lite0'"):
            ds.embeddings(BACKBONE)
        flip = ds.embeddings(BACKBONE, tta="flip")
        assert flip.spec.tta == "flip" and not np.allclose(flip.numpy("test"), ds.embeddings(BACKBONE, tta="none")
                                                           .numpy("test"))
        with pytest.raises(InputError, match="several embeddings"):
            fit("logreg", version, runs=tmp_path, sets={"features": "none", "embeddings": BACKBONE})
        run = fit("logreg", version, runs=tmp_path, sets={"features": "none", "embeddings": flip.key, "C": 0.1})
        assert run.config["inputs"]["embeddings"]["fingerprint"] == flip.fingerprint
        validate_version(version)
    finally:
        shutil.rmtree(Path(version) / "embeddings" / ds.embeddings(BACKBONE, tta="flip").key)


@pytest.mark.parametrize("plugin,sets,folds", [
    ("logreg", {"features": "none", "metadata": False}, 3),
    ("svm", {"features": "histogram"}, 2),
    ("lgbm", FAST_GBDT, 2),
    ("xgb", FAST_GBDT, 2),
    ("catboost", {**FAST_GBDT, "features": "metadata"}, 2),
])
def test_plugins_take_embeddings_with_pca_fitted_on_training_rows_only(version, embedded, tmp_path, plugin, sets,
                                                                       folds):
    ds = open_dataset(version)
    run = fit(plugin, version, runs=tmp_path, sets={**sets, "embeddings": BACKBONE, "embeddings_pca": 3}, folds=folds)
    emb = ds.embeddings(BACKBONE)
    assert run.config["inputs"]["embeddings"]["fingerprint"] == emb.fingerprint
    meta = ds.metadata(split="train")
    cv_fold = meta["fold"].astype(int).astype(str).map(run.config["fold_map"]).to_numpy()
    x_all = emb.matrix(meta["image_name"]).astype(np.float64)
    for f in range(run.config["folds"]):
        arrays = np.load(run.run_dir / f"fold-{f}" / "model" / "embeddings.npz")
        train_rows = cv_fold != f
        # the PCA's centre is the mean of this fold's training rows, not of anything with its validation rows
        np.testing.assert_allclose(arrays["mean"], x_all[train_rows].mean(axis=0), rtol=1e-6, atol=1e-9)
        assert not np.allclose(arrays["mean"], x_all.mean(axis=0), rtol=1e-3, atol=0)
        assert arrays["components"].shape == (3, emb.dim)
    assert np.isfinite(run.metrics["auc"])


def test_stack_uses_embeddings_in_its_logreg_combiner(version, embedded, tmp_path):
    a = fit("logreg", version, runs=tmp_path, sets={"features": "histogram"}, folds=2)
    b = fit("logreg", version, runs=tmp_path, sets={"features": "none"}, folds=2)
    runs = f"{a.run_dir},{b.run_dir}"
    with pytest.raises(Exception, match="logreg combiner"):
        fit("stack", version, runs=tmp_path, sets={"runs": runs, "embeddings": BACKBONE}, folds=2)
    st = fit("stack", version, runs=tmp_path, sets={"runs": runs, "method": "logreg", "embeddings": BACKBONE,
                                                    "embeddings_pca": 2}, folds=2)
    doc = json.loads((st.run_dir / "fold-0" / "model" / "model.json").read_text())
    assert len(doc["state"]["coef"]) == 2 + 2  # two base logits + two components
    assert st.config["inputs"]["embeddings"]["key"] == open_dataset(version).embeddings(BACKBONE).key


def test_new_params_at_defaults_keep_todays_run_ids():
    """The ids today's main computes (dataset 0123456789abcdef, 3 folds) stay the same."""
    today = {"logreg": "logreg-d756ba4867", "svm": "svm-3a785f031c", "lgbm": "lgbm-7a670973d8",
             "xgb": "xgb-bedd48f1cc", "catboost": "catboost-28ce030f1d"}
    for plugin, rid in today.items():
        params = get_plugin(plugin).Params.build({}, plugin)
        assert make_run_id(plugin, params, "0123456789abcdef", 3, []) == rid
        with_emb = get_plugin(plugin).Params.build({"embeddings": "lite0"}, plugin)
        assert make_run_id(plugin, with_emb, "0123456789abcdef", 3, []) != rid
    params = get_plugin("stack").Params.build({"runs": "runs/a,runs/b"}, "stack")
    assert make_run_id("stack", params, "0123456789abcdef", 3, ["ab" * 32, "cd" * 32]) == "stack-7bfd7a3ec1"


def test_new_images_get_the_same_embeddings_and_other_weights_are_refused(version, embedded, tmp_path):
    from melanoma_models import score

    run = fit("logreg", version, runs=tmp_path, sets={"features": "none", "embeddings": BACKBONE, "C": 0.1})
    inputs = Path(version).parent.parent.parent / "in"
    files = sorted(str(p) for p in (inputs / "jpeg" / "test").glob("*.jpg"))[:4]
    assert files
    res = score.score_images(run.run_dir, files, tmp_path / "s.csv", metadata=str(inputs / "test.csv"))
    got = res.scores.set_index("image_name")["prediction"]
    want = pd.read_parquet(run.run_dir / "test_predictions.parquet").set_index("image_name")["prediction"]
    np.testing.assert_allclose(got.to_numpy(), want.loc[got.index].to_numpy(), atol=1e-6)
    for f in range(run.config["folds"]):
        state = run.run_dir / f"fold-{f}" / "model" / "embeddings.json"
        doc = json.loads(state.read_text())
        doc["info"]["weights_sha256"] = "f" * 64
        state.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="were made with weights imagenet .sha256 ffffffffffff"):
        score.score_images(run.run_dir, files, tmp_path / "s2.csv", metadata=str(inputs / "test.csv"))
