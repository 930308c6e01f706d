"""The two-view plugin: a lesion's dermoscopic and clinical image, one prediction per lesion, a missing view masked;
the eleven ISIC 2025 classes; predict, explain and serve taking a lesion's pair of images."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

keras = pytest.importorskip("keras")

from melanoma_data import build, synth  # noqa: E402
from melanoma_data.columns import MONET_COLUMNS  # noqa: E402
from melanoma_data.config import PreprocessConfig  # noqa: E402
from melanoma_data.errors import DataInputError, InputError  # noqa: E402
from melanoma_data.vocabulary import CLASSES_2025  # noqa: E402
from melanoma_models import registry  # noqa: E402
from melanoma_plugins.keras_image import twoview  # noqa: E402

#: one epoch at 32 px, the tiny backbone (the contract and the pairing, not the accuracy)
TINY = {"image_size": 32, "epochs": 1, "batch_size": 4, "variant": "small", "weights": "none", "augment": "false"}
#: (diagnosis text, ISIC 2025 class, target under ``melanoma``) of the generated lesions, in turn
DIAGNOSES = [("melanoma", "MEL", 1), ("nevus", "NV", 0), ("basal cell carcinoma", "BCC", 0),
             ("seborrheic keratosis", "BKL", 0), ("melanoma", "MEL", 1), ("nevus", "NV", 0)]


@pytest.fixture(scope="module", autouse=True)
def _registered():
    """The plugin by its entry point (until the installed metadata carries the new entry point, added here)."""
    if "twoview" in registry.registry().names():
        yield
        return
    old = registry._DEFAULT
    ep = importlib.metadata.EntryPoint("twoview", "melanoma_plugins.keras_image.twoview:TwoViewPlugin",
                                       "melanoma.plugins")
    registry._DEFAULT = registry.Registry([*importlib.metadata.entry_points(group=registry.GROUP), ep])
    yield
    registry._DEFAULT = old


def write_lesions(root: Path, pairs: int = 8, dermoscopic_only: int = 2, clinical_only: int = 2, lone: int = 2,
                  seed: int = 3) -> pd.DataFrame:
    """A generic-layout input of lesions (``metadata.csv`` with the toolkit's column names, ``images/``): ``pairs``
    lesions with a dermoscopic and a clinical image, some with only one view (``view_missing`` says which), and
    ``lone`` images without a lesion id. MONET scores are given for most images, missing for some. Returns the rows.

    (One function, so that it can become the milk10k layout's synthetic writer.)"""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    kinds = ["pair"] * pairs + ["dermoscopic"] * dermoscopic_only + ["clinical"] * clinical_only + ["lone"] * lone
    for i, kind in enumerate(kinds):
        text, c25, target = DIAGNOSES[i % len(DIAGNOSES)]
        lesion = f"IL_{i:04d}" if kind != "lone" else ""
        views = {"pair": ["dermoscopic", "clinical: close-up"], "dermoscopic": ["dermoscopic"],
                 "clinical": ["clinical: close-up"], "lone": ["dermoscopic"]}[kind]
        for j, image_type in enumerate(views):
            clinical = image_type.startswith("clinical")
            spec = (synth.clinical_spec(rng, bool(target), [(64, 48)]) if clinical
                    else synth.random_spec(rng, bool(target), [(64, 48)], 0.0))
            name = f"ISIC_{9000000 + 10 * i + j}"
            (root / "images" / f"{name}.jpg").write_bytes(synth.encode_file(synth.render(spec, seed=(seed, i, j))))
            row = {"image_name": name, "patient_id": f"IP_{i:04d}", "lesion_id": lesion, "image_type": image_type,
                   "view_missing": {"dermoscopic": "clinical", "clinical": "dermoscopic"}.get(kind, ""),
                   "sex": ["female", "male"][i % 2], "age_approx": 30 + 5 * (i % 8),
                   "anatom_site_general_challenge": "torso", "diagnosis": text, "diagnosis_2025": c25,
                   "benign_malignant": "malignant" if c25 in ("MEL", "BCC") else "benign", "target": target}
            for k, col in enumerate(MONET_COLUMNS):
                row[col] = "" if (i + k) % 5 == 0 else round(float(rng.uniform(0, 1)), 3)
            rows.append(row)
    frame = pd.DataFrame(rows)
    frame.to_csv(root / "metadata.csv", index=False)
    return frame


SMALL = {"square": {"size": 32}, "partition_size": 40, "shards": {"n_folds": 2, "train_files": 2, "test_files": 1}}


@pytest.fixture(scope="module")
def lesion_version(tmp_path_factory) -> tuple[str, pd.DataFrame, Path]:
    root = tmp_path_factory.mktemp("twoview")
    rows = write_lesions(root / "in")
    url = build.preprocess([str(root / "in")], str(root / "out"), PreprocessConfig.from_dict(SMALL)).version_url
    return url, rows, root


def test_rows_pair_into_lesions_and_a_missing_view_is_masked():
    meta = pd.DataFrame({"image_name": ["a", "b", "c", "d", "e"], "lesion_id": ["L1", "L1", "L2", None, "L3"],
                         "image_type": ["clinical: close-up", "dermoscopic", "clinical: close-up", "dermoscopic",
                                        None]})
    s = twoview.lesions(meta)
    assert s.lesion == ["image:d", "lesion:L1", "lesion:L2", "lesion:L3"]
    assert s.images == {"dermoscopic": ["d", "b", None, "e"], "clinical": [None, "a", "c", None]}
    assert s.counts() == {"pairs": 1, "dermoscopic_only": 2, "clinical_only": 1}
    assert s.row_lesion == ["lesion:L1", "lesion:L1", "lesion:L2", "image:d", "lesion:L3"]
    spread = meta.assign(fold=[0, 1, 0, 0, 1])
    with pytest.raises(DataInputError, match="lesion.*different folds"):
        twoview.lesions(spread)
    with pytest.raises(DataInputError, match="both the training and the validation"):
        twoview.check_lesions_in_one_part(meta.iloc[:1], meta.iloc[1:2])


def test_views_are_given_as_view_equals_file(tmp_path):
    from melanoma_models.score import parse_views

    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    assert parse_views([f"dermoscopic={a}", f"Clinical={b}"]) == {"dermoscopic": str(a), "clinical": str(b)}
    for bad, message in [([str(a)], "VIEW=FILE"), ([f"overview={a}"], "VIEW=FILE"),
                         ([f"dermoscopic={a}", f"dermoscopic={b}"], "twice"),
                         ([f"clinical={tmp_path / 'nope.jpg'}"], "no such file")]:
        with pytest.raises(InputError, match=message):
            parse_views(bad)


def test_isic2025_target_labels_the_eleven_classes_and_counts_the_definitions_classes():
    params = twoview.TwoViewParams.build({**TINY, "target": "isic2025"}, "twoview")
    model = twoview.TwoViewPlugin(params)
    for definition, counted in (("melanoma", {"MEL"}), ("malignant", {"BCC", "MAL_OTH", "MEL", "SCCKA"})):
        model._set_classes(definition)
        assert model.classes == list(CLASSES_2025) and model.n_out == 11
        assert {c for c, pos in zip(model.classes, model.positive, strict=True) if pos} == counted
    meta = pd.DataFrame({"image_name": ["a", "b", "c"], "diagnosis": ["", "nevus", ""],
                         "diagnosis_2025": ["VASC", "", ""], "target": [0, 0, 1]})
    labels = model._labels([meta], "melanoma")
    assert {k: model.classes[v] for k, v in labels.items()} == {"a": "VASC", "b": "NV", "c": "MEL"}
    with pytest.raises(DataInputError, match="no ISIC 2025 class"):
        model._labels([meta.assign(target=0)], "melanoma")


def test_a_lesions_images_must_agree_on_its_label():
    model = twoview.TwoViewPlugin(twoview.TwoViewParams.build(TINY, "twoview"))
    meta = pd.DataFrame({"image_name": ["a", "b"], "lesion_id": ["L1", "L1"],
                         "image_type": ["dermoscopic", "clinical: close-up"], "target": [1, 0]})
    with pytest.raises(DataInputError, match="lesion L1: its images a, b have different targets"):
        model._targets(twoview.lesions(meta), meta, None)
    y, cls = model._targets(twoview.lesions(meta.assign(target=1)), meta.assign(target=1), None)
    assert y.tolist() == [1] and cls is None


@pytest.mark.slow
def test_pretrained_lite0_backbones_one_per_view_and_grad_cam_per_view(tmp_path):
    """The default backbone (Lite0, the packaged ImageNet weights) twice, one per view: both get the weights,
    the transfer recipe gates both, and Grad-CAM gives each view its own map (a masked view's is empty)."""
    pytest.importorskip("tensorflow")
    from melanoma_plugins.keras_image.gradcam import gradcam_views

    params = twoview.TwoViewParams.build({"image_size": 32, "backbones": "separate", "unfreeze_blocks": 2}, "twoview")
    assert params.variant == "lite0" and params.weights == "imagenet" and params.transfer
    model = twoview.TwoViewPlugin(params)
    model.n_meta = 4
    net = model.build(4)
    bases = [la for la in net.layers if la.name.startswith("efficientnet")]
    assert sorted(b.name for b in bases) == ["efficientnet_lite0_clinical", "efficientnet_lite0_dermoscopic"]
    for a, b in zip(bases[0].get_weights(), bases[1].get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # the same ImageNet weights in both
    assert np.abs(bases[0].get_layer("stem_conv").get_weights()[0]).sum() > 0
    gated = model._trainable_setup(net, head_epochs=1)  # the transfer recipe's stage 2, on both backbones
    for b in bases:
        assert b.trainable_weights and all(v.path in gated for v in b.trainable_weights)
        assert not any(la.trainable for la in b.layers if isinstance(la, keras.layers.BatchNormalization))
        assert not b.get_layer("block1a_dwconv").trainable  # below unfreeze_blocks=2
    rng = np.random.default_rng(1)
    x = {"dermoscopic": rng.integers(0, 255, (2, 32, 32, 3)).astype(np.uint8),
         "clinical": rng.integers(0, 255, (2, 32, 32, 3)).astype(np.uint8),
         "dermoscopic_view": np.ones((2, 1), np.float32), "clinical_view": np.array([[1.0], [0.0]], np.float32),
         "meta": np.zeros((2, 4), np.float32)}
    maps = gradcam_views(net, x)
    assert set(maps) == {"dermoscopic", "clinical"} and maps["dermoscopic"].shape == (2, 32, 32)
    assert maps["clinical"][1].max() == 0.0  # the masked view: no gradient, no map
    assert maps["dermoscopic"].min() >= 0.0 and maps["dermoscopic"].max() <= 1.0
    net.save(tmp_path / "m.keras")  # two backbones of one name prefix save and load (safe mode)
    again = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True, compile=False)
    np.testing.assert_allclose(np.asarray(again(x, training=False)), np.asarray(net(x, training=False)), atol=1e-6)


@pytest.fixture(scope="module")
def twoview_run(lesion_version, tmp_path_factory) -> Path:
    from melanoma_models.runner import fit

    url, _, _ = lesion_version
    return fit("twoview", url, runs=tmp_path_factory.mktemp("runs"),
               sets={**TINY, "target": "isic2025", "steps_per_epoch": 2}).run_dir


@pytest.mark.slow
def test_a_two_view_run_predicts_per_lesion_and_masks_a_missing_view(lesion_version, twoview_run):
    from melanoma_models.runner import load_models

    url, rows, _ = lesion_version
    oof = pd.read_parquet(twoview_run / "oof.parquet").merge(rows[["image_name", "lesion_id", "image_type"]],
                                                             on="image_name")
    assert sorted(oof["image_name"]) == sorted(rows["image_name"])  # image-level: every image once
    lesion_rows = oof[oof["lesion_id"].fillna("") != ""]
    assert (lesion_rows.groupby("lesion_id")["prediction"].nunique() == 1).all()  # one prediction per lesion
    assert (lesion_rows.groupby("lesion_id")["fold"].nunique() == 1).all()  # lesions never split
    classes = pd.read_parquet(twoview_run / "oof_classes.parquet")
    assert list(classes.columns) == ["image_name", "fold", *CLASSES_2025]
    np.testing.assert_allclose(classes[list(CLASSES_2025)].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(oof.set_index("image_name")["prediction"],
                               classes.set_index("image_name").loc[oof["image_name"], "MEL"], atol=1e-12)
    history = json.loads((twoview_run / "fold-0" / "history.json").read_text())
    assert history["target"] == "isic2025" and set(history["views"]) == {"pairs", "dermoscopic_only",
                                                                         "clinical_only"}
    # the missing view is masked: whatever fills its placeholder, a one-view lesion's output is the same
    _, _, models = load_models(twoview_run)
    model = models[0]
    samples = twoview.lesions(rows)
    one = [i for i in range(len(samples)) if samples.images["clinical"][i] is None][:2]
    size = model.params.image_size
    store = {n: np.full((size, size, 3), 120, np.uint8) for n in rows["image_name"]}
    feats = np.zeros((len(samples), model.n_meta), np.float32)
    x = model._inputs(samples, np.array(one), store, feats)
    assert (x["clinical_view"] == 0).all() and (x["dermoscopic_view"] == 1).all()
    noisy = {**x, "clinical": np.random.default_rng(0).integers(0, 255, x["clinical"].shape, dtype=np.uint8)}
    np.testing.assert_allclose(np.asarray(model.model(x, training=False)),
                               np.asarray(model.model(noisy, training=False)), atol=1e-6)
    # test-time augmentation: seeded (the same input, the same output), and really averaging augmented passes
    from melanoma_data.dataset import open_dataset
    from melanoma_models.api import FoldData

    ds = open_dataset(url)
    data = FoldData(ds, "train", None, ds.metadata(split="train"), {}, "valid")
    tta = twoview.TwoViewPlugin(model.params.model_copy(update={"tta": 2}))
    tta.model, tta.encodings, tta.n_meta = model.model, model.encodings, model.n_meta
    tta.classes, tta.positive = model.classes, model.positive
    p1 = tta.predict(data)
    assert np.array_equal(p1, tta.predict(data)) and not np.allclose(p1, model.predict(data))
    unmasked = {**noisy, "clinical_view": np.ones_like(x["clinical_view"])}
    assert not np.allclose(np.asarray(model.model(unmasked, training=False)),
                           np.asarray(model.model(x, training=False)), atol=1e-6)


def _pair(rows: pd.DataFrame, root: Path) -> tuple[Path, Path]:
    lesion = rows[rows["lesion_id"] == "IL_0000"].set_index("image_type")["image_name"]
    return (root / "in" / "images" / f"{lesion['dermoscopic']}.jpg",
            root / "in" / "images" / f"{lesion['clinical: close-up']}.jpg")


@pytest.mark.slow
def test_predict_takes_a_lesions_pair_and_refuses_a_lone_image(lesion_version, twoview_run, tmp_path):
    from typer.testing import CliRunner

    from melanoma_cli.app import app

    _, rows, root = lesion_version
    derm, clin = _pair(rows, root)
    cli = CliRunner()
    meta = tmp_path / "meta.csv"  # the plugin reads sex, age and site: loose files bring them in a CSV
    rows.set_index("image_name").loc[[derm.stem, clin.stem], ["patient_id", "sex", "age_approx",
                                                              "anatom_site_general_challenge", *MONET_COLUMNS]
                                     ].reset_index().to_csv(meta, index=False)
    got = cli.invoke(app, ["predict", "--run", str(twoview_run), "--image", f"dermoscopic={derm}",
                           "--image", f"clinical={clin}", "--metadata", str(meta), "--out", str(tmp_path / "pair.csv")])
    assert got.exit_code == 0, got.output
    pair = pd.read_csv(tmp_path / "pair.csv")
    assert len(pair) == 2 and pair["prediction"].nunique() == 1 and set(pair["lesion_id"]) == {"lesion"}
    assert sorted(pair["image_type"]) == ["clinical: close-up", "dermoscopic"]
    for args in (["--images", str(derm)], ["--image", f"dermoscopic={derm}"]):
        lone = cli.invoke(app, ["predict", "--run", str(twoview_run), *args, "--metadata", str(meta),
                                "--out", str(tmp_path / "x.csv")])
        assert lone.exit_code == 2 and "pair of images" in lone.output, lone.output
        assert len([line for line in lone.output.splitlines() if line.startswith("error:")]) == 1
    pages = cli.invoke(app, ["explain", "--run", str(twoview_run), "--image", f"dermoscopic={derm}",
                             "--image", f"clinical={clin}", "--metadata", str(meta), "--out", str(tmp_path / "why")])
    assert pages.exit_code == 0, pages.output
    for stem in (derm.stem, clin.stem):  # a page per view, each with its own Grad-CAM and the lesion's score
        assert (tmp_path / "why" / f"{stem}_gradcam.png").stat().st_size > 0
        assert "the score is the lesion's" in (tmp_path / "why" / f"{stem}.html").read_text()
    # a folder of an input layout with lesion_id and image_type: lesions scored, a one-view lesion with the mask
    folder = cli.invoke(app, ["predict", "--run", str(twoview_run), "--images", str(root / "in"),
                              "--out", str(tmp_path / "folder.csv")])
    assert folder.exit_code == 0, folder.output
    scores = pd.read_csv(tmp_path / "folder.csv")
    assert sorted(scores["image_name"]) == sorted(rows["image_name"])
    assert (scores.dropna(subset=["lesion_id"]).groupby("lesion_id")["prediction"].nunique() == 1).all()
    assert scores.set_index("image_name").loc[pair.set_index("image_type").loc["dermoscopic", "image_name"],
                                              "prediction"] == pytest.approx(pair["prediction"].iloc[0], abs=1e-6)


@pytest.mark.slow
def test_serve_scores_a_lesions_pair_and_refuses_a_lone_image(lesion_version, twoview_run):
    httpx = pytest.importorskip("httpx")
    from tests.conftest import serving

    _, rows, root = lesion_version
    derm, clin = _pair(rows, root)
    with serving(twoview_run) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
        assert client.get("/health").json()["needs_pair"] is True
        page = client.get("/").text
        assert "name='dermoscopic'" in page and "name='clinical'" in page and "name='image'" not in page
        files = {"dermoscopic": ("d.jpg", derm.read_bytes(), "image/jpeg"),
                 "clinical": ("c.jpg", clin.read_bytes(), "image/jpeg")}
        fields = {"sex": "female", "age_approx": "50", "anatom_site_general_challenge": "torso"}
        got = client.post("/predict", files=files, data=fields)
        assert got.status_code == 200, got.text
        answer = got.json()
        assert 0 <= answer["probability"] <= 1 and set(answer["views"]) == {"dermoscopic", "clinical"}
        for lone in ({"image": files["dermoscopic"]}, {"dermoscopic": files["dermoscopic"]}):
            refused = client.post("/predict", files=lone, data=fields)
            assert refused.status_code == 400 and refused.json()["reason"] == "needs_pair", refused.text
        broken = client.post("/predict", data=fields, files={**files, "clinical": ("c.jpg", clin.read_bytes()[:300],
                                                                                 "image/jpeg")})
        assert broken.status_code == 422 and broken.json()["field"] == "clinical", broken.text
        assert client.get("/health").status_code == 200
        shown = client.post("/", files=files, data=fields)
        assert shown.status_code == 200 and "id='explanation-dermoscopic'" in shown.text
        assert "id='explanation-clinical'" in shown.text


@pytest.mark.slow
def test_a_two_view_run_on_synthetic_milk10k_trains_scores_and_writes_a_submission(tmp_path):
    """End to end on the milk10k layout's synthetic copy (its release's files): preprocess, a tiny two-view run on
    the eleven classes, lesion-level out-of-fold files, the ISIC 2025 score, and the submission file, scored by
    the same code against the release's own ground-truth file."""
    from typer.testing import CliRunner

    from melanoma_cli.app import app
    from melanoma_data import layouts
    from melanoma_models import submission as S
    from melanoma_models.evaluate import evaluate
    from melanoma_models.runner import fit

    written = layouts.get("milk10k").write(tmp_path / "in", n=24, seed=5, sizes=[(64, 48)], defects=0.0,
                                           test_lesions=3, one_view=1)
    url = build.preprocess([str(tmp_path / "in")], str(tmp_path / "out"), PreprocessConfig.from_dict(SMALL)).version_url
    run = fit("twoview", url, runs=tmp_path / "runs", sets={**TINY, "target": "isic2025", "steps_per_epoch": 2}).run_dir
    lesions = pd.read_parquet(run / S.OOF_LESIONS)
    train = [w for w in written if w["split"] == "train"]
    assert len(lesions) == len({w["lesion_id"] for w in train}) and set(CLASSES_2025) <= set(lesions.columns)
    assert lesions["n_images"].max() == 2 and lesions["n_images"].min() == 1  # a one-view lesion is kept
    m = evaluate(run)
    assert m["isic2025"]["n"] == len(lesions) and 0.0 <= m["isic2025"]["macro_dice"] <= 1.0
    out = tmp_path / "submission.csv"
    res = CliRunner().invoke(app, ["submission", str(run), "--out", str(out)])
    assert res.exit_code == 0, res.output
    sub = pd.read_csv(out)
    assert list(sub.columns) == ["lesion_id", *CLASSES_2025] and len(sub) == 3  # the test lesions, one row each
    assert sub[list(CLASSES_2025)].ge(0).all().all() and sub[list(CLASSES_2025)].le(1).all().all()
    # the out-of-fold lesions as a submission, scored against the release's ground-truth file: the evaluate block
    oof_sub = tmp_path / "oof.csv"
    lesions[["lesion_id", *CLASSES_2025]].to_csv(oof_sub, index=False)
    score = S.score_submission(oof_sub, tmp_path / "in" / "MILK10k_Training_GroundTruth.csv")
    assert score["macro_dice"] == pytest.approx(m["isic2025"]["macro_dice"], abs=1e-12)
