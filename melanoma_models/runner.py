"""k-fold cross-validation runner: one model per fold, out-of-fold and test predictions, resume, predict.

Run directory (``RUNS/<plugin>-<hash>/``, the hash covering plugin, parameters, dataset fingerprint
and folds, so the same command finds its own unfinished run and resumes it)::

    config.json                 plugin, parameters, dataset (url, fingerprint), folds, seed, versions
    fold-0/model/...            the plugin's saved model
    fold-0/predictions.parquet  image_name, role (valid|test), prediction
    fold-0/classes.parquet      multi-class plugins only: image_name, role, one probability per class
    fold-0/done.json            written last: the fold is finished
    oof.parquet                 image_name, target, fold, prediction (every training image once)
    test_predictions.parquet    image_name, prediction (mean over folds), prediction_fold_<k>
    calibration.json            ``--set calibrate=platt|isotonic`` only: the calibrator fitted on the pooled
                                OOF scores (plain JSON); oof.parquet and test_predictions.parquet then gain
                                ``prediction_calibrated`` (OOF: nested, each fold by a calibrator of the others)
    oof_classes.parquet         multi-class plugins only: image_name, fold, one out-of-fold probability per class
    test_classes.parquet        multi-class plugins only: image_name, each class's probability averaged over folds
    oof_lesions.parquet         datasets with ``lesion_id`` only: one row per lesion (lesion_id, target, fold,
    test_lesions.parquet        n_images, the mean of its images' predictions and class probabilities), see
                                :mod:`melanoma_models.submission`
    metrics.json, report/       see :mod:`melanoma_models.evaluate`
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import hashlib
import importlib.metadata
import json
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melanoma_data.config import read_toml
from melanoma_data.dataset import Dataset, open_dataset
from melanoma_data.errors import ConfigError, DataInputError, InputError, RunInterrupted
from melanoma_data.progress import Bars
from melanoma_models.api import FitContext, FoldData, Plugin, PluginError, check_predictions
from melanoma_models.evaluate import evaluate
from melanoma_models.metrics import apply_calibration, fit_calibration, nested_calibrated, roc_auc
from melanoma_models.registry import get_plugin
from melanoma_models.rundir import CALIBRATION, CONFIG_FILE, RunConfig, run_config, write_json, write_parquet
from melanoma_models.submission import OOF_LESIONS, TEST_LESIONS, check_lesion_folds, has_lesions, write_lesions

RUN_FORMAT = 1
#: ``--set calibrate=...``: a run-level parameter (not the plugin's); ``none`` stays out of the run key
CALIBRATE = ("none", "platt", "isotonic")
PACKAGES = ["melanoma-toolkit", "numpy", "pandas", "pyarrow", "scikit-learn", "lightgbm", "tensorflow", "keras",
            "jax"]


@dataclasses.dataclass
class RunResult:
    """A finished (or reused) run."""

    run_dir: Path
    config: RunConfig
    metrics: dict[str, Any]
    reused: bool = False
    resumed_folds: int = 0


def parse_sets(items: list[str] | None) -> dict[str, str]:
    """``["key=value", ...]`` → dict (values stay strings; the plugin's model coerces them).

    Raises:
        ConfigError: an item without ``=`` or with an empty key.
    """
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = value.strip()
    return out


def load_fit_config(path: str | Path | None) -> dict[str, Any]:
    """A fit config TOML: top-level or ``[fit]`` keys ``plugin``, ``folds``, and a ``[params]`` table."""
    if path is None:
        return {}
    data = read_toml(path)
    data = data.get("fit", data)
    unknown = sorted(set(data) - {"plugin", "folds", "params", "data"})
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in {path}; known: data, folds, params, plugin")
    return data


def package_versions() -> dict[str, str]:
    """Versions of the packages that shape a run's results (those installed)."""
    out = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def cv_folds(ds: Dataset, k: int | None) -> dict[int, int]:
    """Dataset fold → CV fold. ``k`` below the dataset's fold count merges folds (``fold % k``).

    Raises:
        InputError: the dataset has no folds, or ``k`` is out of range.
    """
    n = ds.n_folds
    if n < 2:
        raise InputError(f"{ds.url} has {n} train fold(s); cross-validation needs at least 2 "
                         "(is there a train split with at least two patients?)")
    k = n if k is None else k
    if not 2 <= k <= n:
        raise InputError(f"--folds {k}: this dataset has {n} folds; choose 2..{n} (folds are merged, never split, "
                         "so that patients stay in one fold)")
    return {f: f % k for f in range(n)}


def _fold_data(ds: Dataset, meta: pd.DataFrame, folds: list[int] | None, split: str, cache: dict,
               role: str) -> FoldData:
    rows = meta if folds is None else meta[meta["fold"].isin(folds)]
    return FoldData(ds, split, folds, rows.reset_index(drop=True), cache, role)


def make_run_id(plugin: str, params: Any, fingerprint: str, folds: int, base_runs: list[str],
                extra: Mapping[str, Any] | None = None) -> str:
    """``<plugin>-<hash>``: the hash covers the plugin, its parameters (:meth:`PluginParams.run_key`: parameters
    added since at their defaults left out), the dataset fingerprint, the number of folds, the base runs'
    out-of-fold sha256s and ``extra`` (the run's other inputs, e.g. the embeddings' fingerprint, and run-level
    settings away from their defaults: absent ones leave earlier ids unchanged)."""
    key = {"plugin": plugin, "params": params.run_key(), "dataset": fingerprint, "folds": folds,
           "base_runs": list(base_runs), **(extra or {})}
    return f"{plugin}-{hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]}"


def fit(
    plugin: str | None,
    data: str | None,
    *,
    runs: str | Path = "runs",
    sets: Mapping[str, Any] | None = None,
    config: str | Path | None = None,
    folds: int | None = None,
    rerun: bool = False,
    progress: bool = False,
    console: Any = None,
    stop_after: int | None = None,
) -> RunResult:
    """Cross-validate a plugin on a dataset version and write the run directory.

    Args:
        plugin: registered plugin name (or from the config file).
        data: dataset version (or from the config file).
        runs: folder holding run directories.
        sets: parameter overrides (strings are coerced by the plugin's model).
        config: fit config TOML (``plugin``, ``data``, ``folds``, ``[params]``).
        folds: number of CV folds (default: the dataset's; fewer merges dataset folds).
        rerun: discard a finished or unfinished run with the same configuration first.
        progress: show progress bars.
        console: rich console for progress and messages.
        stop_after: stop after this many folds were trained in this call (to test resuming).

    Returns:
        The run result (``reused`` when the same run was already finished).
    """
    file_cfg = load_fit_config(config)
    plugin = plugin or file_cfg.get("plugin")
    data = data or file_cfg.get("data")
    if not plugin:
        raise ConfigError("no plugin given (--plugin NAME or plugin = \"...\" in the config file)")
    if not data:
        raise ConfigError("no dataset given (--data VERSION or data = \"...\" in the config file)")
    cls = get_plugin(plugin)
    values = dict(file_cfg.get("params") or {})
    values.update(sets or {})
    calibrate = check_calibrate(plugin, values)
    params = cls.Params.build(values, plugin)
    ds = open_dataset(data)
    mapping = cv_folds(ds, folds if folds is not None else file_cfg.get("folds"))
    k = max(mapping.values()) + 1
    named = params.run_names() if hasattr(params, "run_names") else []  # a stack's runs, a GBDT's image_runs
    base_runs = resolve_base_runs(params, Path(runs), ds, mapping) if "runs" in cls.needs or named else []
    inputs = cls.run_inputs(params, ds)
    extra: dict[str, Any] = {"inputs": dict(inputs)} if inputs else {}
    if calibrate != "none":  # at its default every earlier run id holds
        extra["calibrate"] = calibrate
    run_id = make_run_id(plugin, params, ds.fingerprint, k,
                         [hashlib.sha256((r / "oof.parquet").read_bytes()).hexdigest() for r in base_runs], extra)
    run_dir = Path(runs) / run_id
    if rerun and run_dir.exists():
        shutil.rmtree(run_dir)
    if (run_dir / "metrics.json").exists() and (run_dir / "oof.parquet").exists():
        # a run finished before lesion files were written gains them (no training); on a version whose folds split
        # a lesion (made before folds joined a lesion's images) it is returned as it was, and evaluate says why
        with contextlib.suppress(DataInputError):
            add_lesions(run_dir, ds)
        return RunResult(run_dir, run_config(run_dir), json.loads((run_dir / "metrics.json").read_text()),
                         reused=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    run_cfg = {
        "format": RUN_FORMAT,
        "run_id": run_id,
        "plugin": plugin,
        "params": params.model_dump(mode="json"),
        "seed": params.seed,
        "dataset": {"url": ds.url, "fingerprint": ds.fingerprint, "name": ds.manifest.name,
                    "image_size": ds.image_size},
        "folds": k,
        "fold_map": {str(a): b for a, b in mapping.items()},
        "base_runs": [str(r) for r in base_runs],
        **({"inputs": inputs} if inputs else {}),
        "versions": package_versions(),
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    if calibrate != "none":
        run_cfg["calibrate"] = calibrate
    if not (run_dir / CONFIG_FILE).exists():
        write_json(run_dir / CONFIG_FILE, run_cfg)  # written as a plain dict: these bytes are the format
        config = RunConfig(run_cfg)
    else:
        config = run_config(run_dir)

    meta = ds.metadata(split="train")
    meta["cv_fold"] = meta["fold"].astype(int).map(mapping)
    check_lesion_folds(meta, "cv_fold")  # before any training: a lesion split across folds cannot be pooled
    has_test = ds.manifest.has_split("test")
    test_meta = ds.metadata(split="test") if has_test else None
    cache: dict[Any, Any] = {}
    done_before = sum((run_dir / f"fold-{f}" / "done.json").exists() for f in range(k))
    run_cache: dict[str, Any] = {}  # what plugins reuse across this call's folds (a compiled graph)
    trained = 0
    fold_dir = None
    try:
        with _Progress(progress, k, done_before, console) as bar:
            for f in range(k):
                fold_dir = run_dir / f"fold-{f}"
                if (fold_dir / "done.json").exists():
                    continue
                if stop_after is not None and trained >= stop_after:
                    raise KeyboardInterrupt(f"stopped after {trained} fold(s) (stop_after)")
                train_folds = sorted(a for a, b in mapping.items() if b != f)
                valid_folds = sorted(a for a, b in mapping.items() if b == f)
                train = _fold_data(ds, meta, train_folds, "train", cache, "train")
                valid = _fold_data(ds, meta, valid_folds, "train", cache, "valid")
                ctx = FitContext(fold_dir, f, ds.encodings, bar.step(f), base_runs, target_definition(ds),
                                  run_cache)
                if fold_dir.exists():
                    shutil.rmtree(fold_dir)  # a half-written fold from an interrupted call
                fold_dir.mkdir(parents=True)
                t0 = time.perf_counter()
                model = cls(params)
                history = model.fit(train, valid, ctx) or {}
                pv = check_predictions(model.predict(valid), len(valid.meta), plugin)
                frames = [pd.DataFrame({"image_name": valid.names, "role": "valid", "prediction": pv})]
                classes = [_classes(model, valid.names, "valid")]
                if test_meta is not None and len(test_meta):
                    test = FoldData(ds, "test", None, test_meta, cache, "test")
                    pt = check_predictions(model.predict(test), len(test_meta), plugin)
                    frames.append(pd.DataFrame({"image_name": test.names, "role": "test", "prediction": pt}))
                    classes.append(_classes(model, test.names, "test"))
                model.save(fold_dir / "model")
                write_parquet(fold_dir / "predictions.parquet", pd.concat(frames, ignore_index=True))
                if classes[0] is not None:
                    write_parquet(fold_dir / "classes.parquet", pd.concat(classes, ignore_index=True))
                write_json(fold_dir / "history.json", history)
                auc = roc_auc(valid.target, pv) if len(set(valid.target)) == 2 else float("nan")
                write_json(fold_dir / "done.json", {"fold": f, "seconds": round(time.perf_counter() - t0, 3),
                                                     "valid_rows": len(valid.meta), "auc": auc})
                trained += 1
                bar.fold_done(f, auc)
        oof, test_pred = collect(run_dir, meta, k, test_meta)
        if calibrate != "none":
            oof["prediction_calibrated"] = nested_calibrated(oof["prediction"], oof["target"], oof["fold"],
                                                              calibrate)
        write_parquet(run_dir / "oof.parquet", oof)
        for name, frame in collect_classes(run_dir, k, oof).items():
            write_parquet(run_dir / name, frame)
        if calibrate != "none":
            calibrate_run(run_dir, calibrate, oof, test_pred)
        if test_pred is not None:
            write_parquet(run_dir / "test_predictions.parquet", test_pred)
        write_lesions(run_dir, meta, test_meta)
        metrics = evaluate(run_dir)
    except KeyboardInterrupt as exc:
        if fold_dir is not None and fold_dir.exists() and not (fold_dir / "done.json").exists():
            shutil.rmtree(fold_dir, ignore_errors=True)  # the fold being trained: it starts over
        done = sum((run_dir / f"fold-{f}" / "done.json").exists() for f in range(k))
        why = f" ({exc})" if str(exc) else ""
        raise RunInterrupted(f"interrupted{why}: {done} of {k} folds finished in {run_dir}; run the same command "
                             f"again to {'resume with the next fold' if done < k else 'write the metrics'}") from None
    return RunResult(run_dir, config, metrics, resumed_folds=done_before)


def add_lesions(run_dir: Path, ds: Dataset) -> list[str]:
    """Write the lesion files a finished run lacks (:func:`melanoma_models.submission.write_lesions`), when its
    dataset has lesion ids; returns the files written."""
    if (run_dir / OOF_LESIONS).exists() or (run_dir / TEST_LESIONS).exists():
        return []
    meta = ds.metadata(split="train")
    test_meta = ds.metadata(split="test") if ds.manifest.has_split("test") else None
    if not (has_lesions(meta) or has_lesions(test_meta)):
        return []
    return write_lesions(run_dir, meta, test_meta)


def check_calibrate(plugin: str, values: dict[str, Any]) -> str:
    """Take ``calibrate`` out of the parameter ``values`` (it is the run's, not the plugin's) and check it.

    Raises:
        ConfigError: an unknown method, or a plugin whose scores are calibrated already (``svm`` fits Platt
            scaling on its margins; a ``stack`` with ``method=rank`` or ``auto`` calibrates its combined score).
    """
    calibrate = str(values.pop("calibrate", "none") or "none").strip().lower()
    if calibrate not in CALIBRATE:
        raise ConfigError(f"calibrate={calibrate!r}: expected one of {', '.join(CALIBRATE)}")
    if calibrate != "none" and plugin == "svm":
        raise ConfigError("calibrate: the svm plugin already calibrates its margins (Platt scaling inside each "
                          "fold); a second calibration on top is not offered")
    if calibrate != "none" and plugin == "stack" and str(values.get("method", "weights")) in ("rank", "auto"):
        raise ConfigError(f"calibrate: the stack's method={values.get('method')} already calibrates its score "
                          "(Platt, on inner-CV scores); use another method or leave calibrate out")
    return calibrate


def calibrate_run(run_dir: Path, method: str, oof: pd.DataFrame, test_pred: pd.DataFrame | None) -> dict[str, Any]:
    """Fit the run's calibrator on every out-of-fold score, store it (``calibration.json``) and add
    ``prediction_calibrated`` to the test predictions (``prediction`` stays the raw fold average)."""
    cal = fit_calibration(method, oof["prediction"].to_numpy(dtype=float), oof["target"].to_numpy(dtype=int))
    cal.update(fitted_on=f"pooled out-of-fold scores of {len(oof)} training images (each from one fold model)",
               applies_to="prediction: the mean of the fold models' scores (predict, serve, test predictions)")
    write_json(run_dir / CALIBRATION, cal)
    if test_pred is not None:
        test_pred["prediction_calibrated"] = apply_calibration(cal, test_pred["prediction"].to_numpy(dtype=float))
    return cal


def resolve_base_runs(params: Any, runs: Path, ds: Dataset, mapping: dict[int, int]) -> list[Path]:
    """The base runs a ``runs``-needing plugin names, checked against this dataset and fold assignment.

    Raises:
        InputError: a run that does not exist, is unfinished, or was made on another dataset version
            or with other folds.
    """
    out = []
    for name in params.run_names():
        path = Path(name) if Path(name).exists() else runs / name
        if not (path / "config.json").exists():
            raise InputError(f"base run {name!r} not found (looked for {path}/config.json)")
        if not (path / "oof.parquet").exists():
            raise InputError(f"base run {name!r} is unfinished (no oof.parquet); run its fit command again")
        cfg = run_config(path)
        if cfg.dataset.fingerprint != ds.fingerprint:
            raise InputError(f"base run {name!r} was trained on dataset version {cfg.dataset.fingerprint}, "
                             f"not {ds.fingerprint}: every base run must be on this run's dataset version")
        theirs = cfg.fold_map
        if theirs != mapping:
            raise InputError(f"base run {name!r} used fold assignment {theirs}, this run uses {mapping}: "
                             "fit every run with the same --folds")
        out.append(path.resolve())
    if len({str(p) for p in out}) != len(out):
        raise InputError("the same base run is listed twice")
    return out


def collect(run_dir: Path, meta: pd.DataFrame, k: int,
            test_meta: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Assemble ``oof.parquet`` and ``test_predictions.parquet`` from the finished folds.

    Raises:
        PluginError: an image predicted twice or never (a runner bug or a tampered run).
    """
    preds = [pd.read_parquet(run_dir / f"fold-{f}" / "predictions.parquet").assign(fold=f) for f in range(k)]
    allp = pd.concat(preds, ignore_index=True)
    valid = allp[allp["role"] == "valid"]
    if valid["image_name"].duplicated().any():
        raise PluginError(f"{run_dir}: some training images have two out-of-fold predictions")
    oof = meta[["image_name", "target", "cv_fold"]].rename(columns={"cv_fold": "fold"}).merge(
        valid[["image_name", "prediction"]], on="image_name", how="left")
    if oof["prediction"].isna().any():
        raise PluginError(f"{run_dir}: {int(oof['prediction'].isna().sum())} training images lack an OOF prediction")
    oof["target"] = oof["target"].astype("int8")
    oof["fold"] = oof["fold"].astype("int8")
    test_pred = None
    if test_meta is not None and len(test_meta):
        t = allp[allp["role"] == "test"].pivot(index="image_name", columns="fold", values="prediction")
        t = t.reindex(test_meta["image_name"])
        test_pred = pd.DataFrame({"image_name": t.index.to_numpy(), "prediction": t.mean(axis=1).to_numpy()})
        for f in t.columns:
            test_pred[f"prediction_fold_{f}"] = t[f].to_numpy()
    return oof, test_pred


def target_definition(ds: Dataset) -> str:
    """What the dataset's ``target`` means (``melanoma`` unless its manifest says otherwise)."""
    return ds.manifest.target_definition


def _classes(model: Plugin, names: list[str], role: str) -> pd.DataFrame | None:
    probs = model.class_probabilities()
    if probs is None:
        return None
    if len(probs) != len(names):
        raise PluginError(f"{model.name}: class_probabilities has {len(probs)} rows for {len(names)} predictions")
    return pd.concat([pd.DataFrame({"image_name": names, "role": role}), probs.reset_index(drop=True)], axis=1)


def collect_classes(run_dir: Path, k: int, oof: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """``oof_classes.parquet`` and ``test_classes.parquet`` from the folds' ``classes.parquet`` (none when the
    plugin is not multi-class)."""
    paths = [run_dir / f"fold-{f}" / "classes.parquet" for f in range(k)]
    if not all(p.exists() for p in paths):
        return {}
    allc = pd.concat([pd.read_parquet(p).assign(fold=f) for f, p in enumerate(paths)], ignore_index=True)
    names = [c for c in allc.columns if c not in ("image_name", "role", "fold")]
    valid = allc[allc["role"] == "valid"].set_index("image_name").reindex(oof["image_name"])
    out = {"oof_classes.parquet": pd.DataFrame({"image_name": oof["image_name"].to_numpy(),
                                                "fold": oof["fold"].to_numpy(),
                                                **{c: valid[c].to_numpy() for c in names}})}
    test = allc[allc["role"] == "test"]
    if len(test):
        mean = test.groupby("image_name", sort=True)[names].mean()
        out["test_classes.parquet"] = mean.reset_index()
    return out


def load_models(run_dir: Path) -> tuple[dict[str, Any], type[Plugin], list[Plugin]]:
    """The run's config, plugin class and per-fold models.

    Raises:
        InputError: not a finished run directory.
    """
    run_dir = Path(run_dir)
    cfg = run_config(run_dir)
    cls = get_plugin(cfg.plugin)
    params = cls.Params.build(cfg.params, cfg.plugin)
    models = []
    for f in range(cfg.folds or 0):
        if not (run_dir / f"fold-{f}" / "done.json").exists():
            raise InputError(f"{run_dir}: fold {f} is unfinished; run the same fit command again to finish it")
        models.append(cls.load(run_dir / f"fold-{f}" / "model", params))
    return cfg, cls, models


def predict(run: str | Path, data: str, out: str | Path | None = None,
            warn: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Predict the test split of ``data`` with every fold model of ``run``; average; write the submission.

    Returns:
        The submission frame (``image_name, target``), also written to ``out`` as CSV when given.
    """
    cfg, cls, models = load_models(Path(run))
    ds = open_dataset(data)
    if not ds.manifest.has_split("test"):
        raise InputError(f"{data} has no test split to predict")
    if ds.fingerprint != cfg.dataset.fingerprint and warn is not None:
        warn(f"the run was trained on dataset {cfg.dataset.fingerprint}, predicting {ds.fingerprint}")
    meta = ds.metadata(split="test")
    test = FoldData(ds, "test", None, meta, {}, "test")
    preds = np.mean([check_predictions(m.predict(test), len(meta), cfg.plugin) for m in models], axis=0)
    sub = pd.DataFrame({"image_name": meta["image_name"].to_numpy(), "target": preds})
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        sub.to_csv(out, index=False)
    return sub


class _Progress:
    """A bar over folds and one for the current fold's epochs/iterations (removed when the fold ends)."""

    def __init__(self, show: bool, k: int, done: int, console: Any) -> None:
        self.bars = Bars(show, console)
        self.k, self.done = k, done
        self.inner: Any = None

    def __enter__(self) -> _Progress:
        self.bars.__enter__()
        self.folds = self.bars.add("folds", self.k, self.done)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bars.__exit__(*exc)

    def step(self, fold: int) -> Callable[[int, int, str], None]:
        if self.inner is not None:
            self.inner.close()
        self.inner = self.bars.add(f"fold {fold}")
        return self.inner.update

    def fold_done(self, fold: int, auc: float) -> None:
        if self.inner is not None:
            self.inner.close()
            self.inner = None
        self.folds.advance(1, note=f"fold {fold} AUC {auc:.3f}")
