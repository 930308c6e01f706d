"""ISIC 2025 (MILK10k): lesion-level run outputs, the submission file, and its score checked against the official
``isic-challenge-scoring`` package."""

from __future__ import annotations

import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import cli
from melanoma_data.dataset import open_dataset
from melanoma_data.errors import DataInputError, InputError
from melanoma_data.vocabulary import CLASSES_2025
from melanoma_models import metrics as M
from melanoma_models import submission as S
from tests.conftest import jpeg_bytes, write_generic

K = len(CLASSES_2025)
LOGREG = {"image_size": 8, "hist_bins": 4}
#: the official scorer 5.6.0 warns about pandas keywords it uses
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:isic_challenge_scoring")
DIAGNOSES = ["melanoma", "nevus", "basal cell carcinoma", "benign keratosis", "dermatofibroma", "vascular lesion"]


@pytest.fixture(autouse=True)
def _official_on_pandas_3(monkeypatch):
    """The official scorer 5.6.0 calls ``DataFrame.applymap``, which pandas 3 renamed ``map`` (5.8.0 calls
    ``map``): the same function under its old name, so its CSV checks run here."""
    monkeypatch.setattr(pd.DataFrame, "applymap", pd.DataFrame.map, raising=False)


def _official(truth: pd.DataFrame, probs: pd.DataFrame):
    """The official scorer's result for lesion-indexed frames, through its CSV reader. 5.6.0 keys rows by an
    ``image`` column; 5.8.0 (Python >= 3.13 only) also accepts ``lesion_id`` as that column and changes nothing
    else in reading or scoring, so the lesion ids go in under ``image``."""
    from isic_challenge_scoring import ClassificationMetric, ClassificationScore

    def csv(frame: pd.DataFrame) -> io.StringIO:
        return io.StringIO(frame.rename_axis("image").reset_index().to_csv(index=False))

    return ClassificationScore.from_stream(csv(truth), csv(probs), ClassificationMetric.BALANCED_ACCURACY)


def _case(n: int = 80, seed: int = 3) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Lesion truth (every class present) and probabilities with exact 0.5 values and a tied row."""
    rng = np.random.default_rng(seed)
    ids = [f"IL_{i:07d}" for i in rng.permutation(n)]
    true = np.r_[np.arange(K), rng.integers(0, K, n - K)]
    logits = rng.normal(0, 1.2, (n, K))
    logits[np.arange(n), true] += 2.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    probs[:6, 7] = 0.5  # exactly 0.5: not called (the scorer's rule is > 0.5)
    probs[6] = 1 / K  # every class tied: undecided for the balanced accuracy
    truth = pd.DataFrame(np.eye(K)[true], index=pd.Index(ids, name="lesion_id"), columns=list(CLASSES_2025))
    return truth, pd.DataFrame(probs, index=truth.index, columns=list(CLASSES_2025))


def test_score_agrees_with_the_official_scorer(tmp_path):
    truth, probs = _case()
    (tmp_path / "gt.csv").write_text(truth.reset_index().to_csv(index=False))
    # columns in another order and rows shuffled: the scorer matches by name and id
    probs.sample(frac=1, random_state=0)[list(CLASSES_2025)[::-1]].reset_index().to_csv(tmp_path / "s.csv",
                                                                                        index=False)
    ours = S.score_submission(tmp_path / "s.csv", tmp_path / "gt.csv")
    official = _official(truth, probs)
    dice = official.per_category["dice"]
    assert [r["dice"] for r in ours["per_class"]] == pytest.approx(dice.loc[list(CLASSES_2025)].tolist(), abs=1e-12)
    assert [r["auc"] for r in ours["per_class"]] == pytest.approx(
        official.per_category["auc"].loc[list(CLASSES_2025)].tolist(), abs=1e-12)
    assert ours["score"] == pytest.approx(official.macro_average["dice"], abs=1e-12)  # 5.8.0's `dice` metric
    assert ours["balanced_accuracy"] == pytest.approx(official.overall, abs=1e-12)
    assert ours["macro_auc"] == pytest.approx(official.macro_average["auc"], abs=1e-12)
    mel = ours["per_class"][7]
    assert mel["called"] == int((probs["MEL"] > 0.5).sum()) < int((probs["MEL"] >= 0.5).sum())  # strictly above


def test_an_absent_class_scores_one_without_calls_and_zero_with_them():
    from isic_challenge_scoring.confusion import create_binary_confusion_matrix
    from isic_challenge_scoring.metrics import binary_dice

    truth, probs = _case(40, seed=1)
    truth = truth[truth["INF"] == 0]
    probs = probs.loc[truth.index].copy()
    probs["INF"] = 0.1
    probs.loc[probs.index[0], "SCCKA"] = 0.9 if truth["SCCKA"].iloc[0] == 0 else 0.1
    truth["SCCKA"], probs["SCCKA"] = 0.0, probs["SCCKA"].where(probs.index == probs.index[0], 0.0)
    truth.loc[truth.sum(axis=1) == 0, "NV"] = 1.0  # the SCCKA lesions become NV: SCCKA has no positives
    score = S.score_frames(probs, truth)
    by = {r["class"]: r for r in score["per_class"]}
    for name, expected in (("INF", 1.0), ("SCCKA", 0.0)):
        cm = create_binary_confusion_matrix(truth[name].gt(0.5).to_numpy(), probs[name].gt(0.5).to_numpy())
        assert by[name]["dice"] == binary_dice(cm) == expected
        assert np.isnan(by[name]["auc"])  # the official scorer stops here (one class); we give n/a
    assert score["macro_auc"] == pytest.approx(np.nanmean([r["auc"] for r in score["per_class"]]))
    assert score["score"] == pytest.approx(np.mean([r["dice"] for r in score["per_class"]]))


def _bad(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(",".join(r) for r in [header, *rows]) + "\n"


HEADER = ["lesion_id", *CLASSES_2025]
GOOD = [["IL_1", *(["0.1"] * K)], ["IL_2", *(["0.2"] * K)]]
BAD_SUBMISSIONS = {
    "no lesion_id column": (_bad(["image", *CLASSES_2025], GOOD), "no lesion_id column"),
    "duplicate lesion": (_bad(HEADER, [GOOD[0], GOOD[0], GOOD[1]]), "duplicate lesion row.*'IL_1'"),
    "missing column": (_bad(HEADER[:-1], [r[:-1] for r in GOOD]), "missing class column.*'VASC'"),
    "extra column": (_bad([*HEADER, "UNK"], [[*r, "0"] for r in GOOD]), "extra column.*'UNK'"),
    "above one": (_bad(HEADER, [GOOD[0], ["IL_2", "1.5", *(["0"] * (K - 1))]]), r"outside \[0, 1\].*'IL_2'"),
    "negative": (_bad(HEADER, [GOOD[0], ["IL_2", "-0.01", *(["0"] * (K - 1))]]), r"outside \[0, 1\].*'IL_2'"),
    "infinite": (_bad(HEADER, [GOOD[0], ["IL_2", "inf", *(["0"] * (K - 1))]]), r"outside \[0, 1\]"),
    "NaN": (_bad(HEADER, [GOOD[0], ["IL_2", "NaN", *(["0"] * (K - 1))]]), "missing value.*AKIEC.*'IL_2'"),
    "empty cell": (_bad(HEADER, [GOOD[0], ["IL_2", "", *(["0"] * (K - 1))]]), "missing value.*'IL_2'"),
    "text": (_bad(HEADER, [GOOD[0], ["IL_2", "high", *(["0"] * (K - 1))]]), "not a number.*'high'"),
    "blank lesion id": (_bad(HEADER, [GOOD[0], ["", *(["0.2"] * K)]]), "without a lesion_id"),
    "missing lesion": (_bad(HEADER, GOOD[:1]), "missing lesion.*'IL_2'"),
    "extra lesion": (_bad(HEADER, [*GOOD, ["IL_9", *(["0"] * K)]]), "extra lesion.*'IL_9'"),
}


@pytest.mark.parametrize("case", sorted(BAD_SUBMISSIONS))
def test_bad_submissions_are_refused_as_the_official_scorer_refuses_them(tmp_path, case):
    from isic_challenge_scoring.load_csv import parse_csv, validate_rows
    from isic_challenge_scoring.types import ScoreError

    text, message = BAD_SUBMISSIONS[case]
    truth = pd.DataFrame(np.eye(K)[[0, 1]], index=pd.Index(["IL_1", "IL_2"], name="lesion_id"),
                         columns=list(CLASSES_2025))
    (tmp_path / "gt.csv").write_text(truth.reset_index().to_csv(index=False))
    (tmp_path / "s.csv").write_text(text)
    with pytest.raises(DataInputError, match=message):
        S.score_submission(tmp_path / "s.csv", tmp_path / "gt.csv")
    if case != "no lesion_id column":  # the official parser, keyed by `image` in 5.6.0, refuses it too
        with pytest.raises(ScoreError):
            probs = parse_csv(io.StringIO(text.replace("lesion_id", "image", 1)), truth.columns)
            validate_rows(truth, probs)


def test_bad_ground_truth_and_unreadable_files_are_refused(tmp_path):
    sub = tmp_path / "s.csv"
    sub.write_text(_bad(HEADER, GOOD))
    cases = {"not one-hot": (_bad(HEADER, [["IL_1", "1.0", "1.0", *(["0.0"] * (K - 2))],
                                           ["IL_2", *(["0.0"] * K)]]), "not one-hot.*'IL_1', 'IL_2'"),
             "soft labels": (_bad(HEADER, [["IL_1", "0.5", "0.5", *(["0.0"] * (K - 2))], GOOD[1]]), "not one-hot"),
             "weights": (_bad([*HEADER, "score_weight"], [["IL_1", "1.0", *(["0.0"] * (K - 1)), "0.5"],
                                                          ["IL_2", "1.0", *(["0.0"] * (K - 1)), "1"]]),
                         "weights other than 1.*'IL_1'"),
             "empty": (_bad(HEADER, []), "no lesion rows")}
    for name, (text, message) in cases.items():
        (tmp_path / f"{name}.csv").write_text(text)
        with pytest.raises(DataInputError, match=message):
            S.score_submission(sub, tmp_path / f"{name}.csv")
    (tmp_path / "latin.csv").write_bytes(_bad(HEADER, [["IL_\xe9", *(["0.1"] * K)]]).encode("latin-1"))
    with pytest.raises(InputError, match="cannot decode"):
        S.read_submission(tmp_path / "latin.csv")
    with pytest.raises(InputError, match="no such submission file"):
        S.read_submission(tmp_path / "missing.csv")


def test_lesion_rows_pool_images_and_refuse_a_lesion_split_across_folds():
    images = pd.DataFrame({"image_name": ["a", "b", "c", "d"], "lesion_id": ["L1", "L1", None, " "],
                           "target": [1, 1, 0, 0], "fold": [0, 0, 1, 1], "prediction": [0.2, 0.4, 0.9, 0.1],
                           "MEL": [0.5, np.nan, 0.2, 0.3]})
    keys = S.lesion_keys(images)
    assert keys.tolist() == ["L1", "L1", "c", "d"]  # no lesion id (missing or blank): the image is its lesion
    rows = S.lesion_frame(images.drop(columns=["lesion_id"]), keys)
    assert rows["lesion_id"].tolist() == ["L1", "c", "d"] and rows["n_images"].tolist() == [2, 1, 1]
    assert rows["prediction"].tolist() == pytest.approx([0.3, 0.9, 0.1])
    assert np.isnan(rows["MEL"].iloc[0]) and rows["MEL"].iloc[1] == 0.2  # a missing image value: no mean of fewer
    assert rows["target"].tolist() == [1, 0, 0] and rows["fold"].tolist() == [0, 1, 1]
    split = images.assign(fold=[0, 1, 1, 1])
    with pytest.raises(DataInputError, match="'L1' have images in more than one fold"):
        S.check_lesion_folds(split)
    with pytest.raises(DataInputError, match="more than one fold"):
        S.lesion_frame(split.drop(columns=["lesion_id"]), keys)
    with pytest.raises(DataInputError, match="'L1' are also lesion ids"):
        S.lesion_keys(images.assign(image_name=["a", "b", "L1", "d"]))


# ------------------------------------------------------------------------------------ runs


@pytest.fixture(scope="module")
def lesion_run(tmp_path_factory) -> Path:
    """A logreg run on a tiny generic version with lesion ids (two images each, one lesion without an id) and a
    test split of three lesions (one without an id)."""
    from melanoma_data import build
    from melanoma_data.config import PreprocessConfig
    from melanoma_models.runner import fit

    root = tmp_path_factory.mktemp("isic2025")
    rows, files = [], {}
    for i in range(36):
        lesion, name = i // 2, f"IMG_{i:04d}"
        d = DIAGNOSES[lesion % len(DIAGNOSES)]
        rows.append({"image_name": name, "patient_id": f"P{lesion // 2}", "lesion_id": "" if lesion == 5 else
                     f"IL_{lesion:04d}", "diagnosis": d, "target": int(d == "melanoma"), "split": "train"})
        files[name] = jpeg_bytes(64, 48, seed=i)
    for i in range(6):
        rows.append({"image_name": f"TST_{i:04d}", "patient_id": f"Q{i}", "lesion_id": f"IL_T{i // 2}" if i < 4
                     else "", "split": "test"})
        files[f"TST_{i:04d}"] = jpeg_bytes(64, 48, seed=100 + i)
    write_generic(root / "in", files, rows)
    cfg = PreprocessConfig.from_dict({"square": {"size": 32}, "partition_size": 40,
                                      "shards": {"n_folds": 2, "train_files": 2, "test_files": 1}})
    version = build.preprocess([str(root / "in")], str(root / "out"), cfg).version_url
    return fit("logreg", version, runs=root / "runs", sets=LOGREG).run_dir


def test_runs_write_lesion_files_beside_the_image_files(lesion_run, tmp_path):
    from melanoma_models.runner import fit

    oof = pd.read_parquet(lesion_run / "oof.parquet")
    assert list(oof.columns) == ["image_name", "target", "fold", "prediction"]  # image level, as before
    lesions = pd.read_parquet(lesion_run / S.OOF_LESIONS)
    cfg = json.loads((lesion_run / "config.json").read_text())
    meta = open_dataset(cfg["dataset"]["url"]).metadata(split="train")
    keyed = oof.merge(meta[["image_name", "lesion_id"]], on="image_name")
    keyed["lesion_id"] = keyed["lesion_id"].fillna(keyed["image_name"])
    expected = keyed.groupby("lesion_id").agg(target=("target", "max"), fold=("fold", "first"),
                                              n_images=("image_name", "size"), prediction=("prediction", "mean"))
    assert list(lesions.columns) == ["lesion_id", "target", "fold", "n_images", "prediction"]
    assert lesions["lesion_id"].tolist() == expected.index.tolist() and len(lesions) == 19
    assert {"IMG_0010", "IMG_0011"} <= set(lesions["lesion_id"])  # the lesion without an id: one row per image
    assert lesions["prediction"].to_numpy() == pytest.approx(expected["prediction"].to_numpy())
    assert (lesions[["target", "fold", "n_images"]].to_numpy() == expected[["target", "fold", "n_images"]]
            .to_numpy()).all()
    test = pd.read_parquet(lesion_run / S.TEST_LESIONS)
    assert test["lesion_id"].tolist() == ["IL_T0", "IL_T1", "TST_0004", "TST_0005"]
    assert test["n_images"].tolist() == [2, 2, 1, 1] and "target" not in test
    # a run directory written before the lesion files still evaluates; the same fit command adds them back
    old = tmp_path / "runs" / lesion_run.name
    shutil.copytree(lesion_run, old)
    for name in (S.OOF_LESIONS, S.TEST_LESIONS):
        (old / name).unlink()
    from melanoma_models.evaluate import evaluate

    assert "isic2025" not in evaluate(old)
    again = fit("logreg", cfg["dataset"]["url"], runs=tmp_path / "runs", sets=LOGREG)
    assert again.reused and again.run_dir == old
    assert pd.read_parquet(old / S.OOF_LESIONS).equals(lesions)


def _eleven_classes(run: Path, file: str, names: pd.Series, truth: pd.Series | None, seed: int) -> np.ndarray:
    """Per-image probabilities of the eleven classes (the true one favoured) as a class plugin leaves them."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (len(names), K))
    if truth is not None:
        logits[np.arange(len(names)), [CLASSES_2025.index(c) for c in truth]] += 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    frame = pd.DataFrame({"image_name": names.to_numpy(), **{c: probs[:, i] for i, c in enumerate(CLASSES_2025)}})
    if file == "oof_classes.parquet":
        frame.insert(1, "fold", pd.read_parquet(run / "oof.parquet")["fold"].to_numpy())
    frame.to_parquet(run / file, index=False)
    return probs


def test_eleven_class_run_scores_its_lesions_and_writes_the_submission(lesion_run, tmp_path):
    from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

    run = tmp_path / "run"
    shutil.copytree(lesion_run, run)
    cfg = json.loads((run / "config.json").read_text())
    ds = open_dataset(cfg["dataset"]["url"])
    meta, test_meta = ds.metadata(split="train"), ds.metadata(split="test")
    oof = pd.read_parquet(run / "oof.parquet")
    truth = oof[["image_name"]].merge(meta[["image_name", "lesion_id", "diagnosis_2025"]], on="image_name")
    probs = _eleven_classes(run, "oof_classes.parquet", oof["image_name"], truth["diagnosis_2025"], 0)
    _eleven_classes(run, "test_classes.parquet", test_meta["image_name"], None, 1)
    assert S.write_lesions(run) == [S.OOF_LESIONS, S.TEST_LESIONS]
    runner = CliRunner()
    res = runner.invoke(cli.app, ["evaluate", "--run", str(run)], terminal_width=200)
    assert res.exit_code == 0, res.output
    m = json.loads((run / "metrics.json").read_text())
    assert re.search(rf"ISIC 2025 score \(lesions\) +│ {m['isic2025']['score']:.4f} macro Dice", res.output)
    # by hand: each lesion's mean image probability, its class from diagnosis_2025
    frame = pd.DataFrame(probs, columns=list(CLASSES_2025)).assign(
        lesion=truth["lesion_id"].fillna(truth["image_name"]).to_numpy(), c=truth["diagnosis_2025"].to_numpy())
    by = frame.groupby("lesion").agg({**{c: "mean" for c in CLASSES_2025}, "c": "first"})
    onehot = np.eye(K)[[CLASSES_2025.index(c) for c in by["c"]]]
    p = by[list(CLASSES_2025)].to_numpy()
    block = m["isic2025"]
    assert block["n"] == len(by) == 19 and block["lesions_without_class"] == 0
    assert block["score"] == pytest.approx(f1_score(onehot, (p > 0.5).astype(int), average="macro",
                                                    zero_division=1.0))
    assert block["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(onehot.argmax(1), p.argmax(1)))
    present = [i for i in range(K) if onehot[:, i].any()]
    assert [block["per_class"][i]["auc"] for i in present] == pytest.approx(
        [roc_auc_score(onehot[:, i], p[:, i]) for i in present])
    absent = [r for r in block["per_class"] if not r["positives"]]
    assert absent and all(r["dice"] == (1.0 if not r["called"] else 0.0) and np.isnan(r["auc"]) for r in absent)
    from melanoma_models.card import build_card, render_markdown

    card = render_markdown(build_card(run))  # the card shows the block, its numbers from metrics.json
    assert f"macro Dice (F1) {block['macro_dice']:.3f} over {block['n']} lesions" in card
    assert all(f"| {r['class']} | {r['positives']} | {r['called']} |" in card for r in block["per_class"])
    from isic_challenge_scoring.confusion import create_binary_confusion_matrix
    from isic_challenge_scoring.metrics import binary_dice

    # the official per-category Dice (its whole score object stops at the AUC of the classes this data lacks)
    assert block["score"] == pytest.approx(np.mean([binary_dice(create_binary_confusion_matrix(
        onehot[:, i] > 0.5, p[:, i] > 0.5)) for i in range(K)]), abs=1e-12)
    assert m["multiclass"]["truth"] == "diagnosis_2025 of each image"  # the image level, eleven classes too
    from melanoma_models.evaluate import _isic2025

    unlabelled = meta.assign(diagnosis_2025=meta["diagnosis_2025"].where(meta["lesion_id"] != "IL_0003", None))
    assert _isic2025(run, unlabelled)["lesions_without_class"] == 1 and _isic2025(run, unlabelled)["n"] == 18
    mixed = meta.assign(diagnosis_2025=np.where(meta["image_name"] == "IMG_0000", "NV", meta["diagnosis_2025"]))
    assert "'IL_0000' have images of different ISIC 2025 classes" in _isic2025(run, mixed)
    page = (run / "report" / "index.html").read_text()
    assert "ISIC 2025 score (lesions)" in page and f"<b>{block['score']:.3f}</b>" in page

    out = tmp_path / "sub" / "submission.csv"
    res = runner.invoke(cli.app, ["submission", str(run), "--out", str(out)], terminal_width=200)
    assert res.exit_code == 0, res.output
    written = pd.read_csv(out)
    assert list(written.columns) == ["lesion_id", *CLASSES_2025]
    assert written["lesion_id"].tolist() == ["IL_T0", "IL_T1", "TST_0004", "TST_0005"]
    test_lesions = pd.read_parquet(run / S.TEST_LESIONS)
    assert written[list(CLASSES_2025)].to_numpy() == pytest.approx(test_lesions[list(CLASSES_2025)].to_numpy())
    gt = pd.DataFrame(np.eye(K)[[7, 8, 1, 8]], columns=list(CLASSES_2025)).assign(lesion_id=written["lesion_id"])
    gt[["lesion_id", *CLASSES_2025]].to_csv(tmp_path / "gt.csv", index=False)
    res = runner.invoke(cli.app, ["score-submission", str(out), str(tmp_path / "gt.csv"), "--json",
                                  str(tmp_path / "score.json")], terminal_width=200)
    assert res.exit_code == 0, res.output
    score = S.score_submission(out, tmp_path / "gt.csv")
    assert f"ISIC 2025 score {score['score']:.4f}" in res.output and "MAL_OTH" in res.output
    assert json.loads((tmp_path / "score.json").read_text())["score"] == pytest.approx(score["score"])
    # refused clearly: a binary run, a run without test lesions, an id a spreadsheet would run
    res = runner.invoke(cli.app, ["submission", str(lesion_run), "--out", str(tmp_path / "x.csv")])
    assert res.exit_code == 2 and "not the eleven ISIC 2025 classes" in res.output
    test_lesions.assign(lesion_id=["=1+1", *test_lesions["lesion_id"][1:]]).to_parquet(run / S.TEST_LESIONS)
    with pytest.raises(DataInputError, match="spreadsheet formula"):
        S.write_submission(run, tmp_path / "y.csv")
    (run / S.TEST_LESIONS).unlink()
    res = runner.invoke(cli.app, ["submission", str(run)])
    assert res.exit_code == 2 and "no test lesions" in res.output
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "y.csv").exists()


def test_official_labels_count_a_tie_as_undecided():
    probs = np.array([[0.2, 0.2, 0.6], [0.4, 0.4, 0.2], [0.1, 0.8, 0.1]])
    assert M.official_labels(probs).tolist() == [2, -1, 1]
    assert M.balanced_accuracy(np.array([2, 0, 1]), M.official_labels(probs)) == pytest.approx(2 / 3)
