"""Lesion-level outputs of a run, and the ISIC 2025 (MILK10k) submission file and its score.

**Lesion files.** ``oof.parquet`` and ``test_predictions.parquet`` stay one row per image. When the run's dataset
has a ``lesion_id`` for its rows, the runner also writes ``oof_lesions.parquet`` (training split) and
``test_lesions.parquet`` (test split): one row per lesion, sorted by ``lesion_id``, with

* ``lesion_id``: the lesion; a row without one (missing or blank) is a lesion of its own, keyed by its
  ``image_name`` (an image name that is also another row's lesion id is refused: the two would merge);
* ``target`` (OOF only): the lesion's label, the largest over its images (the images of one lesion share it);
* ``fold`` (OOF only): the lesion's CV fold; all its images must share one (folds group lesions), else
  :class:`~melanoma_data.errors.DataInputError` (``fit`` checks this before training);
* ``n_images``: how many image rows the lesion has;
* the mean over the lesion's images of every prediction column (``prediction``, ``prediction_calibrated``, the
  test split's ``prediction_fold_<k>``) and, for a multi-class run, of each class probability (one column per
  class, named as in ``oof_classes.parquet``). An image whose value is missing makes its lesion's mean missing
  (never a mean over fewer images).

Run directories written before these files existed still load; nothing requires them (:func:`write_lesions`
adds them to a finished run, as ``fit`` does when it finds the run already finished).

**Submission.** The ISIC 2025 submission is a CSV: ``lesion_id`` and the eleven class probabilities
(:data:`melanoma_data.vocabulary.CLASSES_2025`, in that order), each in [0, 1], one row per lesion.
:func:`write_submission` writes it from a run's test lesions, :func:`read_submission` and
:func:`read_ground_truth` read one strictly (as the official scorer refuses a file, with a
:class:`~melanoma_data.errors.DataInputError` naming the lesions or columns), and :func:`score_frames` scores it
with :func:`melanoma_models.metrics.isic2025_score`, the same function ``evaluate`` scores the OOF lesions with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melanoma_data.errors import DataInputError, InputError
from melanoma_data.vocabulary import CLASSES_2025
from melanoma_models import metrics as M
from melanoma_models.rundir import run_config, write_parquet

OOF_LESIONS = "oof_lesions.parquet"
TEST_LESIONS = "test_lesions.parquet"
#: the default submission file inside a run directory
SUBMISSION = "submission.csv"
#: columns of a lesion file that are neither predictions nor class probabilities
LESION_FIELDS = ("lesion_id", "target", "fold", "n_images")
#: the official scorer's optional weight columns of a ground truth file (accepted when every weight is 1)
WEIGHT_COLUMNS = ("score_weight", "validation_weight")
#: where the score's definition comes from (stored beside every score)
SOURCE = ("ISIC 2025 challenge (MILK10k) page; official scorer ImageMarkup/isic-challenge-scoring "
          "(per-category Dice at probability > 0.5, macro-averaged)")
#: lesion ids or column names shown in one error message
SHOWN = 10


def listed(values: Any) -> str:
    """Up to :data:`SHOWN` values quoted and joined, with how many more there are."""
    values = [str(v) for v in values]
    more = f" and {len(values) - SHOWN} more" if len(values) > SHOWN else ""
    return ", ".join(repr(v) for v in values[:SHOWN]) + more


def present_ids(values: pd.Series) -> np.ndarray:
    """Which values are a real id (not missing, not blank)."""
    text = values.astype(object).where(values.notna(), None)
    return np.array([v is not None and str(v).strip() != "" for v in text], dtype=bool)


def has_lesions(meta: pd.DataFrame | None) -> bool:
    """Whether ``meta`` has a ``lesion_id`` for at least one row."""
    return meta is not None and "lesion_id" in meta and bool(present_ids(meta["lesion_id"]).any())


def lesion_keys(meta: pd.DataFrame) -> pd.Series:
    """Each row's lesion: its ``lesion_id``, or its ``image_name`` when it has none (aligned with ``meta``).

    Raises:
        DataInputError: a row without a lesion id whose image name is another row's lesion id.
    """
    names = meta["image_name"].astype(str)
    if "lesion_id" not in meta:
        return names
    have = present_ids(meta["lesion_id"])
    ids = meta["lesion_id"].astype(object).where(have, None)
    clash = sorted(set(names[~have]) & {str(v) for v in ids[have]})
    if clash:
        raise DataInputError(f"image name(s) {listed(clash)} are also lesion ids of other rows: a row without a "
                             "lesion_id is its own lesion, keyed by its image name, so these would merge; rename "
                             "them or give the rows their lesion_id")
    return pd.Series(np.where(have, ids.astype(str), names), index=meta.index, dtype=object)


def check_lesion_folds(meta: pd.DataFrame, fold: str = "fold") -> None:
    """Refuse a lesion whose images lie in more than one fold (its OOF predictions would mix models that saw it).

    Raises:
        DataInputError: the lesions that span folds, with their folds.
    """
    if not has_lesions(meta) or fold not in meta:
        return
    spans = pd.DataFrame({"k": lesion_keys(meta).to_numpy(), "f": meta[fold].to_numpy()}).groupby("k")["f"].nunique()
    bad = spans[spans > 1].index.tolist()
    if bad:
        raise DataInputError(f"lesion(s) {listed(bad)} have images in more than one fold: a lesion's images in "
                             "different folds would mix models that saw it; the folds keep each lesion's images "
                             "together, so preprocess the version again")


def lesion_frame(images: pd.DataFrame, keys: pd.Series) -> pd.DataFrame:
    """One row per lesion from image rows (see the module docstring for the rule).

    Args:
        images: ``image_name``, optionally ``target`` and ``fold``, and numeric prediction/class columns.
        keys: each row's lesion (:func:`lesion_keys`), aligned by position.

    Raises:
        DataInputError: a lesion whose images lie in more than one fold.
    """
    frame = images.drop(columns=["image_name"]).reset_index(drop=True)
    frame.insert(0, "lesion_id", np.asarray(keys, dtype=object))
    groups = frame.groupby("lesion_id", sort=True)
    out = pd.DataFrame(index=groups.size().index)
    if "target" in frame:
        out["target"] = groups["target"].max().astype("int8")
    if "fold" in frame:
        spans = groups["fold"].nunique()
        if (spans > 1).any():
            bad = spans[spans > 1].index.tolist()
            raise DataInputError(f"lesion(s) {listed(bad)} have images in more than one fold; their out-of-fold "
                                 "predictions cannot be pooled into one lesion row")
        out["fold"] = groups["fold"].first().astype("int8")
    out["n_images"] = groups.size().astype("int32")
    values = [c for c in frame.columns if c not in LESION_FIELDS]
    if values:
        mean = groups[values].mean()
        complete = groups[values].count().eq(groups.size(), axis=0)
        out = out.join(mean.where(complete))
    return out.reset_index()


def lesion_classes(lesions: pd.DataFrame) -> list[str]:
    """The class probability columns of a lesion file (none for a binary run)."""
    return [c for c in lesions.columns if c not in LESION_FIELDS and not str(c).startswith("prediction")]


def write_lesions(run_dir: str | Path, meta: pd.DataFrame | None = None,
                  test_meta: pd.DataFrame | None = None) -> list[str]:
    """Write ``oof_lesions.parquet`` / ``test_lesions.parquet`` of a finished run from its image-level files.

    Args:
        run_dir: the run.
        meta, test_meta: the dataset's train and test metadata (``image_name``, ``lesion_id``); read from the
            run's dataset version when both are None.

    Returns:
        The files written: none when the dataset has no lesion ids (or the run no image-level outputs).
    """
    run_dir = Path(run_dir)
    if meta is None and test_meta is None:
        from melanoma_data.dataset import open_dataset

        ds = open_dataset(run_config(run_dir).dataset.url)
        meta = ds.metadata(split="train")
        test_meta = ds.metadata(split="test") if ds.manifest.has_split("test") else None
    written = []
    for name, images, classes, rows in (
            (OOF_LESIONS, "oof.parquet", "oof_classes.parquet", meta),
            (TEST_LESIONS, "test_predictions.parquet", "test_classes.parquet", test_meta)):
        if not has_lesions(rows) or not (run_dir / images).exists():
            continue
        frame = pd.read_parquet(run_dir / images)
        if (run_dir / classes).exists():
            probs = pd.read_parquet(run_dir / classes).drop(columns=["fold"], errors="ignore")
            frame = frame.merge(probs, on="image_name", how="left")
        keys = rows[["image_name"]].assign(_key=lesion_keys(rows).to_numpy())
        keyed = frame[["image_name"]].merge(keys, on="image_name", how="left")["_key"]
        keyed = keyed.where(keyed.notna(), frame["image_name"])  # an image the metadata lacks: its own lesion
        write_parquet(run_dir / name, lesion_frame(frame, keyed))
        written.append(name)
    return written


# ------------------------------------------------------------------------------------ the submission file


def _eleven(classes: list[str], what: str) -> None:
    if sorted(classes) != sorted(CLASSES_2025):
        shown = ", ".join(classes) if classes else "none (a binary run)"
        raise InputError(f"{what} predicts the classes {shown}, not the eleven ISIC 2025 classes "
                         f"({', '.join(CLASSES_2025)}): fit a model with target=isic2025")


def submission_frame(run_dir: str | Path) -> pd.DataFrame:
    """The ISIC 2025 submission of a run: its test lesions' ``lesion_id`` and eleven class probabilities.

    Raises:
        InputError: not a run, a run without test lesions or without the eleven classes.
        DataInputError: a probability that is missing or outside [0, 1], or a lesion id a spreadsheet would run.
    """
    run_dir = Path(run_dir)
    run_config(run_dir)  # a run directory at all
    path = run_dir / TEST_LESIONS
    if not path.exists():
        if not (run_dir / "oof_classes.parquet").exists():
            _eleven([], str(run_dir))
        raise InputError(f"{run_dir}: no test lesions ({TEST_LESIONS}): its dataset has no test split or no "
                         "lesion_id, or the run was fitted before lesion files were written (run the same fit "
                         "command again: a finished run gains them without training)")
    lesions = pd.read_parquet(path)
    _eleven(lesion_classes(lesions), str(run_dir))
    frame = lesions[["lesion_id", *CLASSES_2025]].copy()
    values = frame[list(CLASSES_2025)].to_numpy(dtype=float)
    near = np.isfinite(values) & (values >= -1e-9) & (values <= 1 + 1e-9)  # float rounding of a mean
    frame[list(CLASSES_2025)] = np.clip(values, 0.0, 1.0)
    bad = frame["lesion_id"][~near.all(axis=1)].tolist()
    if bad:
        raise DataInputError(f"{run_dir}: test lesion(s) {listed(bad)} have a class probability that is missing or "
                             "outside [0, 1]; the submission would be refused")
    _check_ids(frame["lesion_id"], str(path))
    return frame.sort_values("lesion_id", kind="stable").reset_index(drop=True)


def _check_ids(ids: pd.Series, where: str) -> None:
    """Refuse a lesion id a spreadsheet would run as a formula (it cannot be escaped: the scorer matches ids
    exactly), or a blank one."""
    from melanoma_data.spreadsheet import escape_cell

    risky = [v for v in ids.astype(str) if escape_cell(v) != v]
    if risky:
        raise DataInputError(f"{where}: lesion id(s) {listed(risky)} start like a spreadsheet formula (=, +, -, @, "
                             "tab, CR); refused rather than written into a CSV (an escaped id would no longer "
                             "match the ground truth)")


def write_submission(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, pd.DataFrame]:
    """Write the run's ISIC 2025 submission CSV (default ``RUN/submission.csv``); returns its path and rows."""
    frame = submission_frame(run_dir)
    path = Path(out) if out is not None else Path(run_dir) / SUBMISSION
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)  # machine output: cells exactly as computed (no id needs escaping: checked)
    return path, frame


def _read_table(path: str | Path, what: str) -> pd.DataFrame:
    from melanoma_data import fsutil
    from melanoma_data.layouts.base import read_csv

    fs, p = fsutil.resolve(str(path))
    if not fs.exists(p) or fs.isdir(p):
        raise InputError(f"{path}: no such {what} file")
    frame = read_csv(fs, p)  # decoding, NUL bytes, a header of thousands of columns: refused with the position
    if "lesion_id" not in frame:
        raise DataInputError(f"{path}: no lesion_id column (the ISIC 2025 {what} has lesion_id and the classes "
                             f"{', '.join(CLASSES_2025)}); its columns: {listed(frame.columns)}")
    ids = frame["lesion_id"]
    blank = np.nonzero(~present_ids(ids))[0]
    if len(blank):
        raise DataInputError(f"{path}: {len(blank)} row(s) without a lesion_id (data rows {listed(blank + 1)})")
    dup = ids[ids.duplicated()].unique().tolist()
    if dup:
        raise DataInputError(f"{path}: duplicate lesion row(s): {listed(dup)}")
    columns = [c for c in frame.columns if c != "lesion_id"]
    missing = [c for c in CLASSES_2025 if c not in columns]
    if missing:
        raise DataInputError(f"{path}: missing class column(s): {listed(missing)}")
    extra = [c for c in columns if c not in CLASSES_2025 and not (what == "ground truth" and c in WEIGHT_COLUMNS)]
    if extra:
        raise DataInputError(f"{path}: extra column(s): {listed(extra)} (expected lesion_id and "
                             f"{', '.join(CLASSES_2025)})")
    out = pd.DataFrame(index=pd.Index(ids.to_numpy(dtype=object), name="lesion_id"))
    for col in columns:
        text = frame[col].str.strip()
        value = pd.to_numeric(text, errors="coerce")
        empty = (text == "") | (value.isna() & text.str.lower().isin(["nan", "na", "null", "none"]))
        if empty.any():
            raise DataInputError(f"{path}: missing value(s) in column {col} for lesion(s) {listed(ids[empty])}")
        if value.isna().any():
            rows = value.isna()
            raise DataInputError(f"{path}: column {col} has text that is not a number for lesion(s) "
                                 f"{listed(ids[rows])} (e.g. {frame[col][rows].iloc[0]!r})")
        out[col] = value.to_numpy(dtype=float)
    outside = ~((out[list(CLASSES_2025)] >= 0) & (out[list(CLASSES_2025)] <= 1)).all(axis=1)
    if outside.any():
        raise DataInputError(f"{path}: values outside [0, 1] for lesion(s) {listed(out.index[outside.to_numpy()])}")
    return out


def read_submission(path: str | Path) -> pd.DataFrame:
    """An ISIC 2025 submission CSV, checked as the official scorer checks it: a ``lesion_id`` column, one row per
    lesion, exactly the eleven class columns (any order), every value a number in [0, 1].

    Returns:
        The probabilities indexed by ``lesion_id``, columns in :data:`CLASSES_2025` order.

    Raises:
        InputError: no such file, or not a readable CSV.
        DataInputError: a missing/blank/duplicate lesion id, a missing or extra column, a missing, non-numeric,
            NaN or out-of-range value (the message names the lesions or columns).
    """
    return _read_table(path, "submission")[list(CLASSES_2025)]


def read_ground_truth(path: str | Path) -> pd.DataFrame:
    """An ISIC 2025 ground truth CSV as MILK10k publishes it: ``lesion_id`` and the eleven classes one-hot
    (``0.0``/``1.0``, one class per lesion). The official scorer's ``score_weight``/``validation_weight`` columns
    are accepted when every weight is 1 (weighted scoring is not offered).

    Raises:
        InputError, DataInputError: as :func:`read_submission`, and a row that is not one-hot or a weight
            other than 1.
    """
    table = _read_table(path, "ground truth")
    for col in WEIGHT_COLUMNS:
        if col in table and not (table[col] == 1).all():
            raise DataInputError(f"{path}: column {col} has weights other than 1 (lesion(s) "
                                 f"{listed(table.index[(table[col] != 1).to_numpy()])}); weighted scoring is not "
                                 "offered")
    truth = table[list(CLASSES_2025)]
    if truth.empty:
        raise DataInputError(f"{path}: no lesion rows (a ground truth with nothing to score)")
    values = truth.to_numpy(dtype=float)
    bad = ~(np.isin(values, (0.0, 1.0)).all(axis=1) & (values.sum(axis=1) == 1))
    if bad.any():
        raise DataInputError(f"{path}: lesion(s) {listed(truth.index[bad])} are not one-hot (exactly one class 1.0, "
                             "the others 0.0)")
    return truth


def score_frames(submission: pd.DataFrame, truth: pd.DataFrame) -> dict[str, Any]:
    """The ISIC 2025 score of a submission against the ground truth (both indexed by ``lesion_id``, columns the
    eleven classes), after checking that they hold the same lesions (:func:`melanoma_models.metrics.isic2025_score`).

    Raises:
        DataInputError: lesions of the truth missing from the submission, or lesions it does not have.
    """
    missing = truth.index.difference(submission.index)
    extra = submission.index.difference(truth.index)
    problems = ([f"missing lesion(s) in the submission: {listed(sorted(missing))}"] if len(missing) else []) + (
        [f"extra lesion(s) in the submission (not in the ground truth): {listed(sorted(extra))}"] if len(extra) else [])
    if problems:
        raise DataInputError("; ".join(problems))
    probs = submission.reindex(truth.index)[list(CLASSES_2025)]
    out = M.isic2025_score(truth[list(CLASSES_2025)].to_numpy(dtype=float), probs.to_numpy(dtype=float),
                           list(CLASSES_2025))
    out["source"] = SOURCE
    return out


def score_submission(submission: str | Path, ground_truth: str | Path) -> dict[str, Any]:
    """:func:`score_frames` of two CSV files (:func:`read_submission`, :func:`read_ground_truth`)."""
    return score_frames(read_submission(submission), read_ground_truth(ground_truth))


def score_rows(score: dict[str, Any]) -> list[list[str]]:
    """The score as table rows (class, lesions, called > 0.5, true positives, Dice, AUC), then the macro row;
    what ``score-submission`` prints."""
    def num(v: float) -> str:
        return "n/a" if not np.isfinite(v) else f"{v:.4f}"

    rows = [[r["class"], str(r["positives"]), str(r["called"]), str(r["true_positives"]), num(r["dice"]),
             num(r["auc"])] for r in score["per_class"]]
    rows.append(["macro", str(score["n"]), "", "", num(score["macro_dice"]), num(score["macro_auc"])])
    return rows
