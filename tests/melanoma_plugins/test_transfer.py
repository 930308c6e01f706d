"""The transfer recipe on a pretrained EfficientNet-Lite0: frozen stage 1, BatchNorm statistics that never move,
one compiled graph per run (later folds reuse it; a resumed run gives the same out-of-fold predictions), run
ids unchanged by the new parameters, raw-image scoring equal to the dataset path, Grad-CAM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

keras = pytest.importorskip("keras")

import cli  # noqa: E402
from melanoma_models.runner import fit, load_models, make_run_id  # noqa: E402
from melanoma_models.runner import predict as predict_version  # noqa: E402
from melanoma_plugins.keras_image import plugins as image_plugins  # noqa: E402
from melanoma_plugins.keras_image import pretrained  # noqa: E402
from melanoma_plugins.keras_image.schedule import RunAdam  # noqa: E402
from tests.conftest import small_version  # noqa: E402

LITE = {"variant": "lite0", "weights": "imagenet", "image_size": 32, "epochs": 2, "freeze_epochs": 1,
        "steps_per_epoch": 2, "batch_size": 4, "early_stopping": "none", "hair": 0.0, "microscope": 0.0}


@pytest.fixture(scope="module")
def lite_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    version = small_version(root, n=24, seed=5, size=32, n_folds=2, train_files=2, sizes=((160, 120),),
                            defects=0.0, melanoma_rate=0.35, test_fraction=0.25)
    res = fit("effnet", version, runs=root / "runs", sets=LITE)
    return {"root": root, "version": version, "run": res.run_dir}


def test_run_ids_of_todays_parameters_are_unchanged():
    """Golden ids computed by the code before this change (commit 8a76c0d's runner on its parameter models):
    the new parameters at their defaults are not part of the hash; set, they are."""
    cases = [("effnet", image_plugins.EffNetParams, {}, "effnet-502c3fd88f"),
             ("effnet", image_plugins.EffNetParams, {"weights": "imagenet", "image_size": 64, "freeze_epochs": 1},
              "effnet-6944ba6168"),
             ("fusion", image_plugins.FusionParams, {"variant": "B1"}, "fusion-126eebc652")]
    for plugin, cls, values, want in cases:
        assert make_run_id(plugin, cls.build(values, plugin), "0123456789abcdef", 5, []) == want
    changed = image_plugins.EffNetParams.build({"layer_decay": 0.8}, "effnet")
    assert make_run_id("effnet", changed, "0123456789abcdef", 5, []) != "effnet-502c3fd88f"


def test_stage_one_leaves_gated_weights_bit_identical_then_stage_two_trains_them():
    keras.utils.set_random_seed(0)
    inp = keras.Input((4,))
    hidden = keras.layers.Dense(3, name="body")(inp)
    model = keras.Model(inp, keras.layers.Dense(1, name="head")(hidden))
    body = [v.path for v in model.get_layer("body").weights]
    opt = RunAdam(lr=1e-2, total_steps=6, warmup_steps=1, head_steps=3, head_lr=1e-1, gated=dict.fromkeys(body, 0.5))
    model.compile(opt, "mse")
    x, y = np.random.default_rng(0).normal(size=(8, 4)), np.ones((8, 1))
    body0, head0 = model.get_layer("body").get_weights(), model.get_layer("head").get_weights()
    model.fit(x, y, batch_size=8, epochs=3, verbose=0)  # 3 steps: stage 1
    assert all(np.array_equal(a, b) for a, b in zip(body0, model.get_layer("body").get_weights(), strict=True))
    assert not np.array_equal(head0[0], model.get_layer("head").get_weights()[0])
    assert float(opt.learning_rate) == pytest.approx(1e-2 * 1 / 1)  # step 3: warm-up of stage 2 reaches lr
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert not np.array_equal(body0[0], model.get_layer("body").get_weights()[0])


def test_transfer_keeps_batchnorm_statistics_and_trains_the_backbone_once_unfrozen(lite_run):
    cfg, _, models = load_models(lite_run["run"])
    state = pretrained.read_state_dict(pretrained.weights_file("lite0"))
    for model in models:
        assert model.history["recipe"] == "transfer" and model.history["head_epochs"] == 1
        bb = model._backbone_layer()
        assert bb.name.startswith("efficientnet_lite0")  # the convention freeze_epochs and Grad-CAM rely on
        for layer, torch_bn in (("stem_bn", "_bn0"), ("block4a_bn", "_blocks.5._bn1"), ("top_bn", "_bn1")):
            bn = bb.get_layer(layer)
            np.testing.assert_array_equal(bn.moving_mean.numpy(), state[f"{torch_bn}.running_mean"])
            np.testing.assert_array_equal(bn.moving_variance.numpy(), state[f"{torch_bn}.running_var"])
            np.testing.assert_array_equal(bn.gamma.numpy(), state[f"{torch_bn}.weight"])
        kernel = bb.get_layer("top_conv").kernel.numpy()
        assert not np.array_equal(kernel, state["_conv_head.weight"].transpose(2, 3, 1, 0))  # stage 2 ran
    folds = sorted(lite_run["run"].glob("fold-*/history.json"))
    import json

    reused = [json.loads(f.read_text())["graph_reused"] for f in folds]
    assert reused == [False, True]  # fold 2 trained in fold 1's compiled graph


def test_a_resumed_run_gives_bit_identical_out_of_fold_predictions(lite_run, tmp_path):
    """The fixture's run trained fold 2 in fold 1's compiled graph; here the run is cut after fold 1 (its
    finished fold kept, as an interrupted run leaves it) and resumed in a fresh graph: the same predictions."""
    import shutil

    run = tmp_path / lite_run["run"].name
    run.mkdir()
    shutil.copy(lite_run["run"] / "config.json", run / "config.json")
    shutil.copytree(lite_run["run"] / "fold-0", run / "fold-0")
    resumed = fit("effnet", lite_run["version"], runs=tmp_path, sets=LITE)
    assert resumed.run_dir == run and resumed.resumed_folds == 1
    a = pd.read_parquet(lite_run["run"] / "oof.parquet")
    b = pd.read_parquet(run / "oof.parquet")
    assert a["image_name"].tolist() == b["image_name"].tolist()
    assert np.array_equal(a["prediction"].to_numpy(), b["prediction"].to_numpy())
    assert np.array_equal(pd.read_parquet(lite_run["run"] / "test_predictions.parquet")["prediction"],
                          pd.read_parquet(run / "test_predictions.parquet")["prediction"])


def test_raw_images_score_as_the_dataset_path_for_a_pretrained_lite0(lite_run, tmp_path):
    files = sorted(str(p) for p in (lite_run["root"] / "in" / "jpeg" / "test").glob("*.jpg"))
    res = CliRunner().invoke(cli.app, ["predict", "--run", str(lite_run["run"]), "--images", *files,
                                       "--out", str(tmp_path / "scores.csv")])
    assert res.exit_code == 0, res.output
    got = pd.read_csv(tmp_path / "scores.csv").set_index("image_name")
    want = predict_version(lite_run["run"], lite_run["version"]).set_index("image_name")["target"]
    assert sorted(got.index) == sorted(want.index) == sorted(Path(f).stem for f in files) and len(files)
    np.testing.assert_allclose(got.loc[want.index, "prediction"], want, atol=1e-6, rtol=0)


def test_gradcam_on_lite0(lite_run):
    """At 64 px (the last feature maps are 2×2; at 32 px they are one pixel, a flat map)."""
    from melanoma_data.dataset import open_dataset
    from melanoma_models.api import FoldData

    params = image_plugins.EffNetParams.build({**LITE, "image_size": 64}, "effnet")
    plugin = image_plugins.EffNetPlugin(params)
    plugin.model = plugin.build()
    ds = open_dataset(lite_run["version"])
    data = FoldData(ds, "test", None, ds.metadata(split="test"), {}, "test")
    heat = plugin.explain(data)["heatmaps"]
    assert heat.shape == (len(data.names), 64, 64) and np.isfinite(heat).all()
    assert heat.min() >= 0 and heat.max() <= 1
    assert (heat.reshape(len(heat), -1).max(axis=1) == 1.0).all()  # every map has a hottest spot


def test_unfreeze_blocks_and_layer_decay_choose_what_stage_two_trains_and_how_fast():
    params = image_plugins.EffNetParams.build({**LITE, "unfreeze_blocks": 2, "layer_decay": 0.5}, "effnet")
    plugin = image_plugins.EffNetPlugin(params)
    model = plugin.build()
    gated = plugin._trainable_setup(model, head_epochs=1)
    bb = model.get_layer(next(la.name for la in model.layers if la.name.startswith("efficientnet")))
    assert gated[bb.get_layer("top_conv").kernel.path] == 1.0
    assert gated[bb.get_layer("block7a_project_conv").kernel.path] == 0.5  # lite0's last block
    assert gated[bb.get_layer("block6d_dwconv").kernel.path] == 0.25
    assert not bb.get_layer("block6c_dwconv").trainable and not bb.get_layer("stem_conv").trainable
    bns = [la for la in bb.layers if isinstance(la, keras.layers.BatchNormalization)]
    assert bns and not any(la.trainable for la in bns)  # inference-mode BatchNorm: scale and offset frozen
    head = [v.path for v in model.trainable_weights if v.path not in gated]
    assert sorted(head) == sorted(v.path for v in model.get_layer("melanoma").weights)  # the head trains in stage 1
