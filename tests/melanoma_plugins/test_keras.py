"""Keras image plugins: focal loss, strategy choice, augmentation, schedule, TTA, input paths, weights."""

from __future__ import annotations

import math

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from melanoma_data.dataset import open_dataset  # noqa: E402
from melanoma_data.errors import ConfigError  # noqa: E402
from melanoma_models.api import FitContext, FoldData  # noqa: E402
from melanoma_plugins.keras_image import augment, device, losses, nets, schedule  # noqa: E402
from melanoma_plugins.keras_image import plugins as image_plugins  # noqa: E402
from tests.conftest import small_version  # noqa: E402


def test_focal_loss_matches_the_formula_on_hand_computed_values():
    y = np.array([1.0, 0.0, 1.0, 0.0], dtype="float32")
    p = np.array([0.9, 0.2, 0.3, 0.7], dtype="float32")
    alpha, gamma = 0.75, 2.0
    # slide: FL = -α (1-p)^γ log(p) for melanoma, -(1-α) p^γ log(1-p) for benign
    by_hand = [
        -0.75 * 0.1**2 * math.log(0.9),
        -0.25 * 0.2**2 * math.log(0.8),
        -0.75 * 0.7**2 * math.log(0.3),
        -0.25 * 0.7**2 * math.log(0.3),
    ]
    loss = losses.make_loss("focal", alpha, gamma)
    assert float(loss(y, p)) == pytest.approx(np.mean(by_hand), rel=1e-4)
    # α is applied (Keras ignores it unless apply_class_balancing=True): weighting melanoma up raises its share
    assert float(losses.make_loss("focal", 0.9, gamma)(y[:1], p[:1])) > float(loss(y[:1], p[:1]))
    bce = losses.make_loss("bce")
    assert float(bce(y, p)) == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)), rel=1e-4)
    with pytest.raises(ValueError):
        losses.make_loss("hinge")


def test_strategy_falls_back_from_tpu_to_default(monkeypatch):
    tf = pytest.importorskip("tensorflow")
    strategy, kind = device.select_strategy("auto")
    assert kind == "default" and strategy.num_replicas_in_sync == 1

    class NoTPU:
        def __init__(self, *a, **k):
            raise tf.errors.NotFoundError(None, None, "no TPU here")

    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", NoTPU)
    assert device.select_strategy("auto")[1] == "default"
    with pytest.raises(RuntimeError, match="device=tpu but no TPU"):
        device.select_strategy("tpu")
    monkeypatch.setattr(tf.config, "list_logical_devices", lambda kind=None: ["GPU:0", "GPU:1"])
    monkeypatch.setattr(tf.distribute, "MirroredStrategy", lambda: "mirrored-strategy")
    assert device.select_strategy("auto") == ("mirrored-strategy", "mirrored")
    assert device.precision_policy("auto", "tpu") == "mixed_bfloat16"
    assert device.precision_policy("auto", "cpu") == "float32"


def _lesions(n: int = 6, size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    out = np.zeros((n, size, size, 3), dtype="float32") + np.array([210.0, 170.0, 150.0], dtype="float32")
    for i in range(n):
        r = size * (0.15 + 0.03 * i)
        out[i][(xx - size / 2) ** 2 + (yy - size / 2) ** 2 < r * r] = [90.0, 50.0, 40.0]
    return out


def test_augmentation_is_seeded_training_only_and_leaves_no_black_edges():
    x = _lesions()
    a = np.asarray(augment.Augment(seed=5)(x, training=True))
    b = np.asarray(augment.Augment(seed=5)(x, training=True))
    c = np.asarray(augment.Augment(seed=6)(x, training=True))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 255
    assert np.array_equal(np.asarray(augment.Augment(seed=5)(x, training=False)), x)
    white = np.full((8, 64, 64, 3), 255.0, dtype="float32")
    geo = augment.Augment(rotate=45, zoom=0.3, brightness=0, contrast=0, saturation=0, hue=0, hair=0,
                             microscope=0, seed=1)
    assert np.asarray(geo(white, training=True)).min() >= 254.0  # rotation + zoom: no black (or reflected) edges
    scope = augment.Augment(rotate=0, zoom=0, brightness=0, contrast=0, saturation=0, hue=0, hair=0,
                               microscope=1.0, seed=2)
    field = np.asarray(scope(white, training=True))
    assert field[:, :3, :3].max() < 60 and field[:, 30:34, 30:34].min() > 250  # dark corners, bright centre
    hairy = augment.Augment(rotate=0, zoom=0, brightness=0, contrast=0, saturation=0, hue=0, hair=1.0,
                               microscope=0, seed=3)
    changed = (np.abs(np.asarray(hairy(white, training=True)) - white).max(axis=3) > 30).mean(axis=(1, 2))
    assert (changed > 0.002).sum() >= 4 and changed.max() < 0.3  # thin strands, not blobs


def test_schedule_warms_up_then_decays():
    s = schedule.WarmupDecay(1e-3, total_steps=100, warmup_steps=10, kind="cosine", min_lr=1e-5)
    lrs = [float(s(i)) for i in range(100)]
    assert lrs[0] < lrs[5] < lrs[9] == pytest.approx(1e-3)
    assert all(a >= b - 1e-12 for a, b in zip(lrs[10:], lrs[11:], strict=False)) and lrs[-1] < 2e-5
    e = schedule.WarmupDecay(1e-3, total_steps=100, warmup_steps=0, kind="exponential", decay_rate=0.5,
                               steps_per_epoch=10)
    assert float(e(20)) == pytest.approx(0.25e-3, rel=1e-4)
    assert schedule.WarmupDecay.from_config(s.get_config()).get_config() == s.get_config()


def test_weights_options():
    with pytest.raises(ConfigError, match="weights must be none, imagenet or an existing file path"):
        image_plugins.EffNetParams.build({"weights": "/no/such/file.h5"}, "effnet")
    with pytest.raises(ConfigError, match="variant"):
        image_plugins.EffNetParams.build({"variant": "B9"}, "effnet")


def test_imagenet_weights_offline_say_which_file_goes_where(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # an empty cache: Keras must download, and cannot

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(keras.utils, "get_file", offline)
    import keras.src.applications.efficientnet as eff

    monkeypatch.setattr(eff.file_utils, "get_file", offline)
    with pytest.raises(RuntimeError, match=r"efficientnetb0_notop\.h5.*~/\.keras/models/"):
        nets.backbone("B0", 32, "imagenet")


def test_local_weights_file_is_loaded(tmp_path):
    src = nets.backbone("B0", 32, None)
    path = tmp_path / "b0.weights.h5"
    src.save_weights(path)
    loaded = nets.backbone("B0", 32, str(path))
    assert all(np.array_equal(a, b) for a, b in zip(src.get_weights(), loaded.get_weights(), strict=True))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("keras")
    return small_version(root, n=40, seed=8, size=32, n_folds=2, train_files=4, sizes=((160, 120),))


def _parts(version):
    ds = open_dataset(version)
    cache: dict = {}
    train = FoldData(ds, "train", [0], ds.metadata(split="train", folds=[0]), cache, "train")
    valid = FoldData(ds, "train", [1], ds.metadata(split="train", folds=[1]), cache, "valid")
    return ds, train, valid


@pytest.mark.parametrize("input_path", ["tfdata", "numpy"])
@pytest.mark.slow
def test_cnn_trains_on_both_input_paths_and_tta_is_deterministic(input_path, tiny, tmp_path):
    ds, train, valid = _parts(tiny)
    params = image_plugins.CNNParams.build({"image_size": 32, "epochs": 2, "batch_size": 4, "arch": "v1b",
                                            "input": input_path, "tta": 3, "oversample": 2,
                                            "class_weight": "balanced"}, "cnn")
    model = image_plugins.CNNPlugin(params)
    hist = model.fit(train, valid, FitContext(tmp_path, 0, ds.encodings))
    assert hist["input"] == input_path and hist["strategy"] == "default" and hist["global_batch"] == 4
    assert hist["epochs_run"] >= 1 and "val_auc" in hist["history"]
    n_pos, n = int((train.target == 1).sum()), len(train.target)
    assert hist["steps_per_epoch"] == (n + n_pos) // 4  # positives counted twice (oversample=2)
    p1, p2 = model.predict(valid), model.predict(valid)
    assert np.array_equal(p1, p2)  # TTA is seeded: same input, same output
    single = image_plugins.CNNPlugin(params.model_copy(update={"tta": 1}))
    single.model = model.model
    assert not np.allclose(single.predict(valid), p1)  # TTA really averages augmented passes


@pytest.mark.slow
def test_effnet_freezes_then_unfreezes_the_backbone(tiny, tmp_path):
    ds, train, valid = _parts(tiny)
    params = image_plugins.EffNetParams.build({"image_size": 32, "epochs": 3, "batch_size": 8, "steps_per_epoch": 8,
                                               "freeze_epochs": 1, "loss": "bce", "label_smoothing": 0.05,
                                               "patience": 5}, "effnet")
    model = image_plugins.EffNetPlugin(params)
    hist = model.fit(train, valid, FitContext(tmp_path, 0, ds.encodings))
    assert hist["epochs_run"] == 3 and len(hist["history"]["val_auc"]) == 3
    assert model._backbone_layer().trainable
    # from random init BatchNorm uses momentum 0.9: Keras' 0.99 leaves the moving statistics at their initial
    # values for hundreds of steps, and every image then gets the same score (std ~1e-7 here; with 0.9 the
    # spread is 8e-6 to 2e-5 depending on the processed pixels, so the bound sits a decade above the failure)
    bns = [la for la in model._backbone_layer().layers if isinstance(la, keras.layers.BatchNormalization)]
    assert bns and all(la.momentum == 0.9 for la in bns)
    assert model.predict(valid).std() > 1e-6


@pytest.mark.slow
def test_real_mirrored_strategy_trains_on_two_logical_cpus(tiny, tmp_path):
    """Not a stand-in: TensorFlow's MirroredStrategy over two logical CPU devices, one epoch of the cnn.

    Logical devices must be configured before TensorFlow starts, hence the subprocess.
    """
    pytest.importorskip("tensorflow")
    import json
    import os
    import subprocess
    import sys

    script = f"""
import json, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from melanoma_data.dataset import open_dataset
from melanoma_models.api import FitContext, FoldData
from melanoma_plugins.keras_image import plugins as image_plugins
ds = open_dataset({str(tiny)!r})
cache = {{}}
train = FoldData(ds, "train", [0], ds.metadata(split="train", folds=[0]), cache, "train")
valid = FoldData(ds, "train", [1], ds.metadata(split="train", folds=[1]), cache, "valid")
params = image_plugins.CNNParams.build({{"image_size": 32, "epochs": 1, "batch_size": 4, "arch": "v1a",
                                         "device": "mirrored", "input": "tfdata"}}, "cnn")
model = image_plugins.CNNPlugin(params)
hist = model.fit(train, valid, FitContext({str(tmp_path)!r}, 0, ds.encodings))
p = model.predict(valid)
print(json.dumps({{"strategy": hist["strategy"], "global_batch": hist["global_batch"], "n": int(len(p)),
                  "finite": bool((p == p).all()), "replicas": model.replicas}}))
"""
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", script], cwd=str(root), capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["strategy"] == "mirrored" and got["replicas"] == 2 and got["global_batch"] == 8
    assert got["n"] == len(_parts(tiny)[2].meta) and got["finite"]


@pytest.mark.slow
def test_jax_backend_trains_without_importing_tensorflow(tiny, tmp_path):
    """``KERAS_BACKEND=jax`` (the ``jax`` extra): numpy batches from the shards, and TensorFlow never imported."""
    pytest.importorskip("jax", reason="jax is an optional extra: uv sync --extra jax")
    import json
    import os
    import subprocess
    import sys

    script = f"""
import importlib.abc, json, sys

class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError(f"the JAX path imported {{name}}")
        return None

sys.meta_path.insert(0, NoTensorFlow())
from melanoma_data.dataset import open_dataset
from melanoma_models.api import FitContext, FoldData
from melanoma_plugins.keras_image import plugins as image_plugins
ds = open_dataset({str(tiny)!r})
cache = {{}}
train = FoldData(ds, "train", [0], ds.metadata(split="train", folds=[0]), cache, "train")
valid = FoldData(ds, "train", [1], ds.metadata(split="train", folds=[1]), cache, "valid")
params = image_plugins.CNNParams.build({{"image_size": 32, "epochs": 1, "batch_size": 4, "arch": "v1a"}}, "cnn")
model = image_plugins.CNNPlugin(params)
hist = model.fit(train, valid, FitContext({str(tmp_path)!r}, 0, ds.encodings))
p = model.predict(valid)
model.save(__import__("pathlib").Path({str(tmp_path)!r}) / "model")
print(json.dumps({{"backend": hist["backend"], "input": hist["input"], "n": int(len(p)),
                  "tf": any(m.split(".")[0] == "tensorflow" for m in sys.modules)}}))
"""
    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", script], cwd=str(root), capture_output=True, text=True, timeout=600,
                         env={**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"backend": "jax", "input": "numpy", "n": len(_parts(tiny)[2].meta), "tf": False}


@pytest.mark.slow
def test_fit_output_has_no_tensorflow_startup_lines_unless_debug(tiny, tmp_path):
    """TensorFlow's native start-up lines (absl, oneDNN, CUDA stubs, cuInit) stay out of ``fit``'s output;
    ``--debug`` shows them."""
    pytest.importorskip("tensorflow")
    import subprocess
    import sys

    from melanoma_data.native_logs import NOISE

    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    args = ["fit", "--plugin", "cnn", "--data", str(tiny), "--set", "epochs=1", "--set", "image_size=32",
            "--set", "arch=v1a", "--set", "batch_size=4"]
    env = {k: v for k, v in __import__("os").environ.items() if k != "MELANOMA_NATIVE_LOGS"}
    quiet = subprocess.run([sys.executable, "cli.py", *args, "--runs", str(tmp_path / "a")], cwd=str(root),
                           capture_output=True, text=True, timeout=600, env=env)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    said = quiet.stdout + quiet.stderr
    assert "OOF AUC" in said or "auc" in said.lower()
    assert not [line for line in said.splitlines() if NOISE.search(line)], said[-3000:]
    loud = subprocess.run([sys.executable, "cli.py", "--debug", *args, "--runs", str(tmp_path / "b")],
                          cwd=str(root), capture_output=True, text=True, timeout=600, env=env)
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert [line for line in (loud.stdout + loud.stderr).splitlines() if NOISE.search(line)]


@pytest.mark.parametrize(("plugin", "definition", "input_path"),
                         [("cnn", "melanoma", "numpy"), ("fusion", "malignant", "tfdata")])
@pytest.mark.slow
def test_diagnosis_target_predicts_the_sum_of_the_targets_classes(plugin, definition, input_path, tiny, tmp_path):
    """``target=diagnosis``: a softmax over the nine classes; the prediction is the target's classes' share."""
    import keras

    from melanoma_data.ingest import DIAGNOSIS_CLASSES, TARGET_CLASSES

    ds, train, valid = _parts(tiny)
    cls = {"cnn": image_plugins.CNNPlugin, "fusion": image_plugins.FusionPlugin}[plugin]
    extra = {"arch": "small"} if plugin == "cnn" else {}
    params = cls.Params.build({"image_size": 32, "epochs": 1, "batch_size": 4, "target": "diagnosis",
                               "label_smoothing": 0.05, "class_weight": "balanced", "input": input_path, **extra},
                              plugin)
    model = cls(params)
    hist = model.fit(train, valid, FitContext(tmp_path, 0, ds.encodings, target=definition))
    assert hist["classes"] == list(DIAGNOSIS_CLASSES) and "val_auc" in hist["history"]
    assert model.model.output_shape == (None, 9)
    loss = model.model.loss
    assert isinstance(loss, keras.losses.CategoricalFocalCrossentropy)  # focal loss, extended to classes
    positive = [c in TARGET_CLASSES[definition] for c in DIAGNOSIS_CLASSES]
    assert list(loss.alpha) == [0.75 if pos else 0.25 for pos in positive]
    p = model.predict(valid)
    probs = model.class_probabilities()
    assert list(probs.columns) == list(DIAGNOSIS_CLASSES) and len(probs) == len(p) == len(valid.meta)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(p, probs[list(TARGET_CLASSES[definition])].sum(axis=1), atol=1e-12)
    assert ((p >= 0) & (p <= 1)).all()
    model.save(tmp_path / "model")
    back = cls.load(tmp_path / "model", params)
    np.testing.assert_allclose(back.predict(valid), p, atol=1e-6)
    np.testing.assert_allclose(back.class_probabilities().to_numpy(), probs.to_numpy(), atol=1e-6)


@pytest.mark.slow
def test_diagnosis_target_run_saves_class_probabilities(tiny, tmp_path):
    import pandas as pd

    from melanoma_data.ingest import DIAGNOSIS_CLASSES
    from melanoma_models.runner import fit

    res = fit("cnn", tiny, runs=tmp_path, sets={"target": "diagnosis", "epochs": 1, "image_size": 32,
                                                "arch": "small", "batch_size": 4})
    oof = pd.read_parquet(res.run_dir / "oof.parquet")
    classes = pd.read_parquet(res.run_dir / "oof_classes.parquet")
    assert list(classes.columns) == ["image_name", "fold", *DIAGNOSIS_CLASSES]
    assert classes["image_name"].tolist() == oof["image_name"].tolist()
    assert (classes["fold"] == oof["fold"]).all()
    np.testing.assert_allclose(oof["prediction"], classes["MEL"], atol=1e-12)  # the dataset's target: melanoma
    test = pd.read_parquet(res.run_dir / "test_classes.parquet")
    preds = pd.read_parquet(res.run_dir / "test_predictions.parquet")
    assert test["image_name"].tolist() == sorted(preds["image_name"])
    np.testing.assert_allclose(test.set_index("image_name").loc[preds["image_name"], "MEL"], preds["prediction"],
                               atol=1e-12)


@pytest.mark.slow
def test_a_fixed_seed_fit_reproduces_itself(tiny, tmp_path):
    """Same seed, same data: bit-identical predictions (tf.data path, augmentation and TTA included)."""
    preds = []
    for rep in range(2):
        ds, train, valid = _parts(tiny)
        params = image_plugins.CNNParams.build({"image_size": 32, "epochs": 2, "batch_size": 4, "arch": "small",
                                                "input": "tfdata", "tta": 2, "oversample": 2}, "cnn")
        model = image_plugins.CNNPlugin(params)
        model.fit(train, valid, FitContext(tmp_path / str(rep), 0, ds.encodings))
        preds.append(model.predict(valid))
    assert np.array_equal(preds[0], preds[1])
