"""Score new images end to end: raw files → the run's own preprocessing → every fold model → probabilities.

:func:`score_images` reads the preprocessing configuration and op versions from the dataset version the
run was trained on (its manifest: nothing is re-typed), refuses a version made with other op versions
than the installed code (``allow_version_mismatch`` overrides it with a warning), preprocesses the images
with :func:`melanoma_data.build.preprocess` into a scratch version (so they get exactly the bytes the
dataset path gives them), averages every fold model's prediction (with the run's TTA), and writes
``image_name, prediction`` plus the preprocessing measurements, and a quarantine CSV for unusable inputs.
A stack scores its base runs on the same images first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melanoma_data import build, fsutil, ingest
from melanoma_data.config import PreprocessConfig
from melanoma_data.dataset import Dataset, open_dataset
from melanoma_data.errors import InputError
from melanoma_data.manifest import Manifest
from melanoma_data.ops import op_versions, steps
from melanoma_data.spreadsheet import to_csv_for_people
from melanoma_models.api import FoldData, check_predictions
from melanoma_models.metrics import apply_calibration
from melanoma_models.registry import get_plugin
from melanoma_models.rundir import RunConfig, read_calibration, run_config
from melanoma_models.runner import load_models, target_definition

#: Measurement columns copied next to each score (those the dataset version has): the step table's ``reported``
#: columns, then the original's size.
MEASUREMENT_COLUMNS = [*steps.reported_columns(), "orig_width", "orig_height"]
#: Metadata columns the plugins that need metadata read (``needs`` contains ``metadata``).
METADATA_NEEDED = ["sex", "age_approx", "anatom_site_general_challenge"]
#: The views of a two-view run's lesion (a plugin declaring ``views``) and the ``image_type`` a staged view gets.
VIEW_IMAGE_TYPES = {"dermoscopic": "dermoscopic", "clinical": "clinical: close-up"}
#: Columns a two-view run's scores carry beside ``image_name``: which lesion and view each image is.
LESION_COLUMNS = ["lesion_id", "image_type"]


@dataclasses.dataclass
class ScoreResult:
    """What :func:`score_images` wrote and found."""

    scores: pd.DataFrame
    quarantine: pd.DataFrame
    out: Path
    quarantine_out: Path
    version_url: str


def version_mismatch(manifest: Manifest | Mapping[str, Any]) -> list[str]:
    """Ops (and codecs) whose version differs between a dataset version's manifest and the installed code."""
    stale = Manifest.of(manifest).stale_ops(op_versions())
    return [f"{name} {'(none)' if theirs is None else theirs} (the run's data) vs "
            f"{'(none)' if ours is None else ours} (installed)" for name, (theirs, ours) in stale.items()]


def _trained_on(cfg: RunConfig, run: Path) -> Dataset:
    url = cfg.dataset.url
    try:
        return open_dataset(url)
    except InputError as exc:
        raise InputError(f"{run} was trained on {url}, which cannot be opened ({exc}); its manifest holds the "
                         "preprocessing configuration new images must get") from None


def scoring_config(run: Path, cfg: RunConfig, allow_version_mismatch: bool,
                   warn: Callable[[str], None]) -> tuple[PreprocessConfig, str]:
    """The preprocessing configuration and target definition new images get for ``run`` (from the manifest of
    the version it was trained on), after refusing a version made by other op versions unless allowed."""
    ds = _trained_on(cfg, run)
    mismatch = version_mismatch(ds.manifest)
    if mismatch and not allow_version_mismatch:
        raise InputError(f"{run} was trained on data preprocessed by other op versions: {'; '.join(mismatch)}; "
                         "its images would not be processed the same way (--allow-version-mismatch scores anyway)")
    if mismatch:
        warn(f"scoring despite other op versions: {'; '.join(mismatch)}")
    pre = ds.manifest.preprocess_config()
    # every image gets a score: near-duplicates among the new images are kept (files and folds, the only
    # other thing [shards] decides, do not touch the pixels)
    pre = dataclasses.replace(pre, shards=pre.shards.model_copy(update={"drop_duplicates": False}))
    return pre, target_definition(ds)


def _with_metadata(rows: pd.DataFrame, metadata: str | None, also_drop: tuple[str, ...] = ()) -> pd.DataFrame:
    """Staged rows (``image_name`` …) with the ``--metadata`` CSV's columns for those names, labels dropped
    (scoring needs none), and ``also_drop`` (what the staging itself decides).

    Raises:
        InputError: the CSV has no ``image_name`` column.
    """
    if metadata is None:
        return rows
    given = ingest.read_csv(*fsutil.resolve(metadata))
    if "image_name" not in given.columns:
        raise InputError(f"--metadata {metadata}: no image_name column")
    drop = ("target", "diagnosis", "benign_malignant", "split", *also_drop)
    keep = [c for c in given.columns if c not in drop]
    return rows.merge(given[keep].drop_duplicates("image_name"), on="image_name", how="left")


def _stage(images: list[str], metadata: str | None, work: Path) -> tuple[list[str], bool]:
    """Input folders for :func:`melanoma_data.ingest.ingest`, and whether loose files were staged.

    The staged files' own paths are in ``work/loose/originals.json`` (``{path in the folder: input path}``).

    Folders in a known layout are used as they are (with their own metadata); loose image files (given, or
    in a folder without a layout) are linked into a generic folder whose metadata CSV holds the given
    ``metadata`` rows (labels dropped: scoring needs none) or just the names.
    """
    folders: list[str] = []
    loose: list[Path] = []
    for item in images:
        path = Path(item)
        if "://" in item:
            folders.append(item)
        elif path.is_dir():
            try:
                kind = ingest.detect_layout(*fsutil.resolve(str(path)))
            except InputError:
                kind = None
            if kind is not None and kind != ingest.PLAIN_LAYOUT:
                folders.append(str(path))
            else:  # a folder of images without metadata: staged as loose files (with --metadata rows, if given)
                loose.extend(sorted(p for p in path.rglob("*") if p.is_file()
                                    and p.suffix.lower() in ingest.IMAGE_EXTS))
        elif path.is_file():
            loose.append(path)
        else:
            raise InputError(f"{item}: no such file or folder")
    if loose:
        staged = work / "loose"
        (staged / "images").mkdir(parents=True)
        names: list[str] = []
        originals: dict[str, str] = {}
        for i, src in enumerate(loose):
            link = staged / "images" / f"{src.stem}{src.suffix.lower()}"
            if link.exists() or link.is_symlink():  # two files with one name: the second under a marked name
                link = staged / "images" / f"{src.stem}__duplicate{i}{src.suffix.lower()}"
            link.symlink_to(src.resolve())
            names.append(link.stem)
            originals[f"images/{link.name}"] = str(src)
        _with_metadata(pd.DataFrame({"image_name": names}), metadata).to_csv(staged / "metadata.csv", index=False)
        (work / "originals.json").write_text(json.dumps(originals))
        folders.append(str(staged))
    if not folders:
        raise InputError("no images given")
    return folders, bool(loose)


def parse_views(items: list[str] | None) -> dict[str, str]:
    """``["dermoscopic=a.jpg", "clinical=b.jpg"]`` (``--image VIEW=FILE``, once per view) → ``{view: file}``.

    Raises:
        InputError: an item without ``VIEW=``, an unknown view, a view given twice, or a file that is not there.
    """
    out: dict[str, str] = {}
    for item in items or []:
        view, sep, path = item.partition("=")
        view = view.strip().lower()
        if not sep or view not in VIEW_IMAGE_TYPES:
            raise InputError(f"--image expects VIEW=FILE with VIEW one of {', '.join(VIEW_IMAGE_TYPES)}, got {item!r}")
        if view in out:
            raise InputError(f"--image {view}=... is given twice; a lesion has one image of each view")
        if not Path(path).is_file():
            raise InputError(f"--image {view}={path}: no such file")
        out[view] = path
    return out


def two_view(cls: Any) -> bool:
    """Whether a plugin scores lesions of several views (it declares ``views``)."""
    return bool(getattr(cls, "views", ()))


def needs_pairs(models: list[Any]) -> bool:
    """Whether a two-view run's fold models were trained on lesions with both views (a lone image is then
    refused: the model would see one view where it learnt from two)."""
    return any(getattr(m, "needs_pairs", lambda: False)() for m in models)


def pair_refusal(run: Path, plugin: str, got: str) -> InputError:
    """The one-line refusal of a lone image for a run that needs a lesion's pair."""
    return InputError(f"{run.name} ({plugin}) scores a lesion's pair of images (it was trained on dermoscopic + "
                      f"clinical pairs), got {got}: pass --image dermoscopic=FILE --image clinical=FILE, or --images "
                      "FOLDER whose metadata has lesion_id and image_type")


def _stage_views(views: dict[str, str], metadata: str | None, work: Path) -> tuple[str, dict[str, str]]:
    """One lesion's images (``{view: file}``) as a generic input folder: each image linked under its file's name
    (a view's name added when two share one), ``metadata.csv`` with ``lesion_id`` and each view's ``image_type``,
    and the ``metadata`` CSV's columns for those names (labels dropped). Returns the folder and the
    ``{path in the folder: input path}`` of its files."""
    staged = work / "lesion"
    (staged / "images").mkdir(parents=True)
    stems = [Path(p).stem for p in views.values()]
    rows, originals = [], {}
    for view, src in views.items():
        src_path = Path(src)
        name = src_path.stem if stems.count(src_path.stem) == 1 else f"{src_path.stem}__{view}"
        link = staged / "images" / f"{name}{src_path.suffix.lower()}"
        link.symlink_to(src_path.resolve())
        originals[f"images/{link.name}"] = str(src)
        rows.append({"image_name": name, "lesion_id": "lesion", "image_type": VIEW_IMAGE_TYPES[view]})
    _with_metadata(pd.DataFrame(rows), metadata, ("lesion_id", "image_type")).to_csv(staged / "metadata.csv",
                                                                                       index=False)
    return str(staged), originals


def _check_pairs(run: Path, cfg: RunConfig, cls: Any, images: list[str], views: dict[str, str] | None,
                 metadata: str | None, cache: dict | None) -> None:
    """Refuse what a two-view run cannot score: ``--image`` views for a one-image run, and for a run trained on
    pairs a lone view or loose images without the lesion metadata (``lesion_id`` and ``image_type``) that
    pairs them. Folders in a known layout are scored as their metadata says (a one-view lesion masked)."""
    if views and not two_view(cls):
        raise InputError(f"--image VIEW=FILE is for two-view runs; {run.name} ({cfg.plugin}) scores single "
                         "images: pass them with --images")
    if not two_view(cls) or not needs_pairs(loaded(run, cache)[2]):
        return
    if views:
        if len(views) < len(VIEW_IMAGE_TYPES):
            raise pair_refusal(run, cfg.plugin, f"only --image {next(iter(views))}=...")
        return
    has = set(ingest.read_csv(*fsutil.resolve(metadata)).columns) if metadata is not None else set()
    loose = [i for i in images if "://" not in i and Path(i).is_file()]
    if loose and not set(LESION_COLUMNS) <= has:
        raise pair_refusal(run, cfg.plugin, f"{len(loose)} image file(s) without lesion metadata")


def _check_metadata(cls: Any, metadata: str | None, loose: bool) -> None:
    """Loose images carry no metadata: a plugin that needs it needs ``--metadata`` with its columns."""
    if "metadata" not in cls.needs or not loose:
        return
    if metadata is None:
        raise InputError(f"plugin {cls.name!r} needs metadata: pass --metadata CSV with the columns image_name, "
                         f"{', '.join(METADATA_NEEDED)} (and patient_id, for features that compare a patient's "
                         "images)")
    have = set(ingest.read_csv(*fsutil.resolve(metadata)).columns)
    missing = [c for c in ["image_name", *METADATA_NEEDED] if c not in have]
    if missing:
        raise InputError(f"--metadata {metadata} lacks the column(s) {', '.join(missing)} that plugin "
                         f"{cls.name!r} needs")


def loaded(run: Path, cache: dict | None = None) -> tuple[dict[str, Any], Any, list[Any]]:
    """:func:`melanoma_models.runner.load_models`, once per run when a ``cache`` dict is given (a service)."""
    if cache is None:
        return load_models(run)
    key = str(Path(run).resolve())
    if key not in cache:
        cache[key] = load_models(run)
    return cache[key]


def _predict_version(run: Path, ds: Dataset, warn: Callable[[str], None], cache: dict | None = None) -> pd.Series:
    """Every fold model of ``run`` on every row of ``ds`` (averaged), by image name; stacks score their base
    runs first."""
    cfg, cls, models = loaded(run, cache)
    if "runs" in cls.needs:
        feed_base_runs(run, models, ds, warn, cache)
    if any(m.patient_context() for m in models):
        warn(f"{cfg.plugin} ({run.name}) compares each image with the same patient's other images: scored "
             "without them, those features change; pass a patient's images together, with patient_id in "
             "--metadata")
    out = []
    for split in ds.manifest.split_names:
        meta = ds.metadata(split=split)
        if not len(meta):
            continue
        data = FoldData(ds, split, None, meta, {}, split)
        preds = np.mean([check_predictions(m.predict(data), len(meta), cfg.plugin) for m in models], axis=0)
        out.append(pd.Series(preds, index=meta["image_name"].to_numpy()))
    return pd.concat(out) if out else pd.Series(dtype=float)


def feed_base_runs(run: Path, models: list[Any], ds: Dataset, warn: Callable[[str], None],
                   cache: dict | None = None) -> None:
    """Give a stack's fold models its base runs' scores of ``ds``'s images (computed once per version when a
    ``cache`` is given)."""
    key = ("base scores", str(Path(run).resolve()), ds.url)
    base = cache.get(key) if cache is not None else None
    if base is None:
        base_runs = [Path(p) for p in getattr(models[0], "base", [])]
        missing = [str(p) for p in base_runs if not (p / "config.json").exists()]
        if missing:
            raise InputError(f"stack {run}: base run(s) {', '.join(missing)} are not there to score the images")
        base = pd.concat([_predict_version(p, ds, warn, cache).rename(f"base{i}") for i, p in enumerate(base_runs)],
                         axis=1)
        if cache is not None:
            cache[key] = base
    for m in models:
        m.use_base_predictions(base)


#: prefix of the scratch folders in the temp dir; each holds an owner file naming its process
SCRATCH_PREFIX = "melanoma-score-"
SCRATCH_OWNER = "owner.json"
#: a scratch folder without a readable owner file is removed once it is this old (seconds)
SCRATCH_ORPHAN_S = 24 * 3600.0


def clean_stale_scratch(base: str | Path | None = None) -> list[Path]:
    """Remove scratch folders of killed runs from the temp dir (or ``base``); returns those removed.

    Only this user's folders whose owner process is gone (a dead pid on this host), and folders with no
    readable owner file a day old; symbolic links and other users' folders are left alone.
    """
    removed = []
    for d in Path(base or tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        try:
            if d.is_symlink() or not d.is_dir() or d.stat().st_uid != os.getuid():
                continue
            try:
                owner = json.loads((d / SCRATCH_OWNER).read_text())
                stale = isinstance(owner, dict) and fsutil.lock_is_stale(owner, 0.0)
            except (OSError, ValueError):
                stale = time.time() - d.stat().st_mtime > SCRATCH_ORPHAN_S
        except OSError:
            continue
        if stale:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
    return removed


def _scratch() -> Path:
    """A new scratch folder in the temp dir, with the owner file that lets a later run clean it up."""
    clean_stale_scratch()
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX))
    (scratch / SCRATCH_OWNER).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid()}))
    return scratch


@dataclasses.dataclass
class Prepared:
    """New images preprocessed for a run: its config and models, and the scratch version holding them."""

    run: Path
    cfg: RunConfig
    cls: Any
    inputs: list[str]
    version: Dataset
    config: PreprocessConfig
    #: the ``metadata`` CSV as ingest was given it (None when loose images were staged with it)
    ingest_metadata: str | None
    #: loose files staged for ingest: (staged folder, {path in it: the input's own path})
    staged: tuple[str, dict[str, str]] | None = None

    def quarantine(self) -> pd.DataFrame:
        """The scratch version's quarantine rows, naming each loose input by its own path, not the staged one."""
        return input_paths(self.version.quarantine(), self.staged)


def input_paths(quarantine: pd.DataFrame, staged: tuple[str, dict[str, str]] | None) -> pd.DataFrame:
    """Quarantine rows of staged loose files: ``source`` and ``path`` of the input as given, not of the scratch."""
    if staged is None or not len(quarantine):
        return quarantine
    folder, originals = staged
    out = quarantine.copy()
    for i, row in out.iterrows():
        original = originals.get(str(row["path"]))
        if str(row["source"]).rstrip("/") not in (folder.rstrip("/"), Path(folder).name) or original is None:
            continue
        out.at[i, "source"] = str(Path(original).parent)
        out.at[i, "path"] = Path(original).name
        out.at[i, "detail"] = str(row["detail"]).replace(str(Path(folder) / str(row["path"])), original).replace(
            str(row["path"]), Path(original).name)
    return out


@contextlib.contextmanager
def prepared(run: str | Path, images: list[str], *, metadata: str | None = None, workers: int | None = 0,
             scheduler: str | None = None, allow_version_mismatch: bool = False, work: str | Path | None = None,
             warn: Callable[[str], None] | None = None, views: dict[str, str] | None = None,
             cache: dict | None = None) -> Iterator[Prepared]:
    """Preprocess ``images`` (or one lesion's ``views``) exactly as ``run``'s training data was, into a scratch
    version (removed on exit unless ``work`` is given). Arguments and errors as :func:`score_images`; ``cache``:
    the models, loaded once (see :func:`loaded`)."""
    warn = warn or (lambda msg: None)
    run = Path(run)
    cfg = run_config(run)  # the models themselves are loaded where they predict, once
    cls = get_plugin(cfg.plugin)
    pre, target = scoring_config(run, cfg, allow_version_mismatch, warn)
    _check_pairs(run, cfg, cls, images, views, metadata, cache)
    scratch = Path(work) if work is not None else _scratch()
    try:
        scratch.mkdir(parents=True, exist_ok=True)
        if views:
            folder, originals = _stage_views(views, metadata, scratch / "inputs")
            inputs, loose = [folder], True
        else:
            inputs, loose = _stage(images, metadata, scratch / "inputs")
        _check_metadata(cls, metadata, loose)
        result = build.preprocess(inputs, str(scratch / "version"), pre, name="scored",
                                  metadata=None if loose else metadata, workers=workers, scheduler=scheduler,
                                  target=target)
        staged = None
        if views:
            staged = (folder, originals)
        elif loose:
            staged = (str(scratch / "inputs" / "loose"),
                      json.loads((scratch / "inputs" / "originals.json").read_text()))
        yield Prepared(run, cfg, cls, inputs, open_dataset(result.version_url), pre, None if loose else metadata,
                       staged)
    finally:
        if work is None:
            shutil.rmtree(scratch, ignore_errors=True)


def score_images(run: str | Path, images: list[str], out: str | Path, *, metadata: str | None = None,
                 workers: int | None = 0, scheduler: str | None = None, allow_version_mismatch: bool = False,
                 work: str | Path | None = None, warn: Callable[[str], None] | None = None,
                 views: dict[str, str] | None = None) -> ScoreResult:
    """Score raw images with a trained run (see the module doc).

    A two-view run (a plugin declaring ``views``) scores lesions: ``views`` (``{view: file}``, see
    :func:`parse_views`) is one lesion's pair, and input folders pair their images by ``lesion_id`` and
    ``image_type``; every image of a lesion gets the lesion's score, and the scores carry
    :data:`LESION_COLUMNS`.

    Args:
        run: a run directory written by ``fit``.
        images: image files, folders of images, or input folders in any layout the toolkit reads.
        out: the scores CSV; the quarantine CSV goes beside it (``NAME.quarantine.csv``).
        metadata: a CSV with ``image_name`` and metadata columns, for plugins that need metadata.
        workers: local Dask workers for preprocessing (0: in this process).
        scheduler: an existing Dask scheduler's address instead.
        allow_version_mismatch: score even when the run's data was preprocessed by other op versions.
        work: keep the scratch dataset version here (default: a temporary folder, removed afterwards).
        warn: receives warnings (patient context, version mismatch overridden).
        views: one lesion's images by view (two-view runs), instead of ``images``.

    Raises:
        InputError: the run's dataset version is gone, op versions differ, metadata is missing, no
            image was given, or a two-view run trained on pairs got a lone image.
    """
    warn = warn or (lambda msg: None)
    cache: dict = {}  # the fold models, loaded once (the pair check reads them too)
    with prepared(run, images, metadata=metadata, workers=workers, scheduler=scheduler,
                  allow_version_mismatch=allow_version_mismatch, work=work, warn=warn, views=views,
                  cache=cache) as prep:
        preds = _predict_version(prep.run, prep.version, warn, cache)
        scores = with_calibrated(measurements(prep.version, preds, lesions=two_view(prep.cls)),
                                 read_calibration(prep.run))
        quarantine = prep.quarantine()
        version_url = prep.version.url
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    scores.to_csv(out, index=False)
    q_out = out.with_name(f"{out.stem}.quarantine.csv")
    to_csv_for_people(quarantine, q_out)  # read by people; the scores CSV above is a machine output
    return ScoreResult(scores, quarantine, out, q_out, version_url)


def with_calibrated(scores: pd.DataFrame, calibration: dict[str, Any] | None) -> pd.DataFrame:
    """``scores`` with ``prediction_calibrated`` (the run's stored calibrator applied to ``prediction``, the raw
    fold average) next to ``prediction``; unchanged for a run fitted without ``calibrate``."""
    if calibration is None:
        return scores
    at = list(scores.columns).index("prediction") + 1
    scores.insert(at, "prediction_calibrated", apply_calibration(calibration, scores["prediction"].to_numpy(float)))
    return scores


def measurements(version: Dataset, preds: pd.Series, lesions: bool = False) -> pd.DataFrame:
    """``image_name, prediction`` and the preprocessing measurements of each scored image (``lesions``: with
    :data:`LESION_COLUMNS` after the name, for a two-view run)."""
    meta = version.metadata()
    cols = ["image_name", *[c for c in MEASUREMENT_COLUMNS if c in meta.columns]]
    out = pd.DataFrame({"image_name": preds.index, "prediction": preds.to_numpy()}).merge(
        meta[cols], on="image_name", how="left").sort_values("image_name", ignore_index=True)
    if lesions:
        ids = meta.set_index("image_name").reindex(out["image_name"])
        for i, col in enumerate(LESION_COLUMNS):
            values = ids[col].to_numpy() if col in ids else np.full(len(out), None)
            out.insert(1 + i, col, values)
    return out
