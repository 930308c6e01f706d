"""What the boosting plugins share: one parameter model (:class:`GBDTParams`, each library reading the params that
mean the same to it), the per-fold feature table, early stopping on a held-out training fold, bagging over
seeds, image-run columns, contributions and saving; a library plugin (``lgbm``, ``xgb``, ``catboost``)
supplies only its ``_train``, ``_predict_one``, ``_contrib_one`` and ``_load_one``.

See :mod:`melanoma_plugins.gbdt.lgbm` for the features and the leakage rules they follow.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pydantic

from melanoma_data.errors import DataInputError
from melanoma_data.folds import patient_keys
from melanoma_models.api import (
    FitContext,
    FoldData,
    Plugin,
    PluginError,
    read_model_doc,
    write_model_doc,
)
from melanoma_models.explanation import Contributions
from melanoma_models.features import SiteRate, metadata_features, model_columns, tabular_features
from melanoma_plugins.embedded import EmbeddingFeatures, EmbeddingParams, UsesEmbeddings, fitted


class GBDTParams(EmbeddingParams):
    """Parameters of the gradient-boosted tree plugins (``lgbm``, ``xgb``, ``catboost``).

    Each library reads the ones that mean the same to it: ``num_leaves`` is LightGBM's leaves, XGBoost's
    ``max_leaves`` (loss-guided growth) and CatBoost's ``max_leaves`` (Lossguide); ``min_data_in_leaf``,
    ``feature_fraction`` (column sampling; CatBoost's ``rsm``), ``bagging_fraction`` (row subsampling) and
    ``lambda_l2`` likewise.
    """

    features: Literal["all", "metadata", "abcd", "none"] = pydantic.Field(
        "all", description="all tabular features, metadata only (sex, age, site, patient image count), the "
                           "lesion's ABCD with its patient context, or none (e.g. embeddings alone, with "
                           "embeddings=lite0 site_rate=false)")
    site_rate: bool = pydantic.Field(True, description="add the melanoma rate per site (fitted on training folds)")
    learning_rate: float = pydantic.Field(0.03, gt=0, le=1, description="boosting learning rate")
    num_leaves: int = pydantic.Field(15, ge=2, le=1024, description="leaves per tree")
    min_data_in_leaf: int = pydantic.Field(20, ge=1, description="minimum rows per leaf")
    feature_fraction: float = pydantic.Field(0.8, gt=0, le=1, description="features sampled per tree")
    bagging_fraction: float = pydantic.Field(0.8, gt=0, le=1, description="rows sampled per iteration")
    lambda_l2: float = pydantic.Field(1.0, ge=0, description="L2 regularisation")
    num_boost_round: int = pydantic.Field(2000, ge=1, description="maximum trees")
    early_stopping_rounds: int = pydantic.Field(100, ge=1, description="stop after this many rounds without gain")
    early_stopping: Literal["inner", "valid", "none"] = pydantic.Field(
        "inner", description="stop on a held-out training fold (default), on the validation fold (optimistic: "
                             "the OOF scores then chose their own tree count), or never")
    metric: Literal["auc", "pauc_80_2024"] = pydantic.Field(
        "auc", description="what early stopping watches: AUC or the 2024 challenge's pAUC above 80% sensitivity")
    seeds: int = pydantic.Field(1, ge=1, le=50, description="boosters bagged over seeds seed..seed+N-1 (averaged)")
    patient_context: bool = pydantic.Field(
        True, description="add each metadata column's patient context (z-scores, rank, deviation from the "
                          "patient's median) and the per-patient outlier score")
    imbalance: Literal["scale_pos_weight", "none"] = pydantic.Field(
        "scale_pos_weight", description="weight melanoma up by negatives/positives")
    image_size: int = pydantic.Field(32, ge=8, le=256, description="image side for the colour/size statistics")
    columns: str = pydantic.Field(
        "auto", description="input metadata columns carried into the shards to use as features: auto (every "
                            "numeric one models may use, e.g. the 2024 tbp_lv_*), none, or names separated by commas")
    allow_columns: str = pydantic.Field(
        "", description="columns marked 'models may not use' (label-carrying or train-only) to use anyway, by name")
    image_runs: str = pydantic.Field(
        "", description="finished runs (e.g. image models) whose out-of-fold predictions become columns, comma-"
                        "separated; they must share this run's dataset version and fold assignment")
    image_noise: float = pydantic.Field(
        0.0, ge=0, le=1, description="sd of Gaussian noise added to the image_runs columns of the training rows")

    def run_names(self) -> list[str]:
        """The runs named by ``image_runs`` (the runner checks them and passes them as ``base_runs``)."""
        return [r.strip() for r in self.image_runs.split(",") if r.strip()]



class GBDTPlugin(UsesEmbeddings, Plugin):
    """What the boosted-tree plugins share: the features, the early-stopping split, seed bagging, saving.

    A subclass names its library and implements :meth:`_train` (one booster), :meth:`_predict_one`,
    :meth:`_gains`, :meth:`_save_one` and :meth:`_load_one`.
    """

    needs = ("metadata",)
    Params = GBDTParams
    #: the library's module (optional ones are named with the extra that installs them when missing)
    module = "lightgbm"
    #: model file suffix
    suffix = ".txt"

    def patient_context(self) -> bool:
        """Always: the tabular features hold each image's deviation from the patient's other images."""
        return True

    def __init__(self, params: GBDTParams) -> None:
        super().__init__(params)
        self.boosters: list[Any] = []
        self.columns: list[str] = []
        self.site: SiteRate | None = None
        self.encodings: dict[str, Any] = {}
        self.extra: list[str] = []
        self.image_runs: list[str] = []
        self._image_tables: dict[str, tuple[pd.Series, pd.Series | None]] = {}
        self.embedded: EmbeddingFeatures | None = None

    @classmethod
    def library(cls) -> Any:
        """The library's module.

        Raises:
            PluginError: it is not installed (naming the extra that installs it).
        """
        try:
            return importlib.import_module(cls.module)
        except ImportError as exc:
            how = ("a core dependency: uv sync" if cls.module == "lightgbm" else
                   "the gbdt extra: uv sync --all-extras (uv sync --extra gbdt alone removes the other extras)")
            raise PluginError(f"plugin {cls.name!r} needs the {cls.module} package, {how} ({exc})") from exc

    def features(self, data: FoldData) -> pd.DataFrame:
        """The model's feature frame for ``data`` (label-free part + fitted label-based part)."""
        if self.params.features == "none":
            f = pd.DataFrame(index=pd.RangeIndex(len(data.meta)))
        else:
            f = tabular_features(data, self.encodings, self.params.features, self.params.image_size)
        if self.embedded is not None:
            emb = pd.DataFrame(self.embedded.transform(data), columns=self.embedded.columns, index=f.index)
            f = pd.concat([f, emb], axis=1)
        if self.extra:
            extra = metadata_features(data.meta, self.extra, self.params.patient_context)
            f = pd.concat([f, extra.drop(columns=[c for c in extra if c in f]).set_index(f.index)], axis=1)
        if self.site is not None:
            f["site_rate"] = self.site.transform(data.meta)
        for run in self.image_runs:
            f[image_column_name(run)] = self._image_column(run, data)
        return f

    def _image_column(self, run: str, data: FoldData) -> np.ndarray:
        """``run``'s out-of-fold predictions for ``data``'s rows (its test predictions for the test split).

        An out-of-fold prediction of a row comes from that run's model of the row's own fold, which did
        not train on it; the runner has checked that the run uses this run's fold assignment.
        """
        if run not in self._image_tables:
            oof = pd.read_parquet(Path(run) / "oof.parquet").set_index("image_name")["prediction"]
            tp = Path(run) / "test_predictions.parquet"
            test = pd.read_parquet(tp).set_index("image_name")["prediction"] if tp.exists() else None
            self._image_tables[run] = (oof, test)
        oof, test = self._image_tables[run]
        table = test if data.split == "test" else oof
        if table is None:
            raise DataInputError(f"image run {run} has no test_predictions.parquet; cannot score the test split")
        missing = sorted(set(data.names) - set(table.index))
        if missing:
            raise DataInputError(f"image run {run} has no prediction for {len(missing)} rows, e.g. {missing[:3]}")
        return table.loc[data.names].to_numpy(dtype=float)

    def fit(self, train: FoldData, valid: FoldData | None, ctx: FitContext) -> dict[str, Any]:
        self.library()  # a clear error before any feature is built
        p = self.params
        self.encodings = ctx.encodings
        y = train.target
        if set(np.unique(y)) != {0, 1}:
            raise DataInputError(f"fold {ctx.fold}: the training rows need both classes")
        self.site = SiteRate().fit(train.meta, y) if p.site_rate else None
        self.extra = model_columns(train.dataset.manifest, p.columns, p.allow_columns)
        self.image_runs = [str(r) for r in ctx.base_runs]
        self.embedded = fitted(p, train)
        x = self.features(train)
        if not len(x.columns):
            raise DataInputError("no features: features=none needs site_rate, columns, image_runs or embeddings")
        self.columns = list(x.columns)
        if p.image_noise > 0 and self.image_runs:  # the 2024 winner's noise on the image-score columns
            rng = np.random.default_rng(p.seed)
            for run in self.image_runs:
                col = image_column_name(run)
                x[col] = x[col] + rng.normal(0.0, p.image_noise, len(x))
        weight = float((y == 0).sum() / max((y == 1).sum(), 1)) if p.imbalance == "scale_pos_weight" else 1.0
        fit_x, fit_y, stop = x, y, None
        stopping = p.early_stopping
        if p.early_stopping == "valid" and valid is not None and len(set(valid.target)) == 2:
            stop = (self.features(valid), valid.target)
        elif p.early_stopping == "inner":
            inner = inner_split(train.meta, y, p.seed)
            if inner is not None:
                fit_x, fit_y, stop = x[~inner], y[~inner], (x[inner], y[inner])
            else:
                stopping = "none (no inner split with both classes on each side)"
        total = p.num_boost_round * p.seeds
        self.boosters = []
        for k in range(p.seeds):
            def progress(done: int, k: int = k) -> None:
                ctx.progress(k * p.num_boost_round + done, total, "")

            self.boosters.append(self._train(fit_x, fit_y, stop, p.seed + k, weight, progress))
        best = [self._best_iteration(b) for b in self.boosters]
        return {"best_iteration": best[0] if len(best) == 1 else best, "features": len(self.columns),
                "early_stopping": stopping, "metric": p.metric, "importance": self.importance()}

    def importance(self) -> dict[str, float]:
        """Total gain per feature (mean over the bagged boosters)."""
        gains = np.mean([self._gains(b) for b in self.boosters], axis=0)
        return {c: float(g) for c, g in sorted(zip(self.columns, gains, strict=True), key=lambda t: -t[1])}

    def predict(self, data: FoldData) -> np.ndarray:
        x = self.features(data)[self.columns]
        return np.clip(np.mean([self._predict_one(b, x) for b in self.boosters], axis=0), 0.0, 1.0)

    def explain(self, data: FoldData) -> Contributions:
        """Each feature's contribution to each row's log-odds (the library's own SHAP values: TreeSHAP),
        averaged over the bagged boosters."""
        x = self.features(data)[self.columns]
        contrib = np.mean([self._contrib_one(b, x) for b in self.boosters], axis=0)
        return Contributions(pd.DataFrame(contrib[:, : len(self.columns)], columns=self.columns), contrib[:, -1])

    def save(self, path: Path) -> None:
        write_model_doc(path, self.name, {"columns": self.columns, "extra": self.extra, "image_runs": self.image_runs,
                                          "site": self.site.to_dict() if self.site else None}, self.encodings)
        for k, b in enumerate(self.boosters):  # model.txt, then model_1.txt, … for bagged seeds
            self._save_one(b, path / (f"model{self.suffix}" if k == 0 else f"model_{k}{self.suffix}"))
        (path / "feature_importance.json").write_text(json.dumps(self.importance(), indent=1))
        if self.embedded is not None:
            self.embedded.save(path)

    @classmethod
    def load(cls, path: Path, params: GBDTParams) -> GBDTPlugin:
        doc = read_model_doc(path, cls.name)
        model = cls(params)
        files = [path / f"model{cls.suffix}",
                 *sorted(path.glob(f"model_*{cls.suffix}"), key=lambda f: int(f.stem.split("_")[1]))]
        model.boosters = [cls._load_one(f) for f in files]
        model.columns = doc["columns"]
        model.extra = doc.get("extra", [])
        model.image_runs = doc.get("image_runs", [])
        model.site = SiteRate.from_dict(doc["site"]) if doc["site"] else None
        model.encodings = doc["encodings"]
        model.embedded = EmbeddingFeatures.load(path)
        return model

    # -- per library

    def _train(self, x: pd.DataFrame, y: np.ndarray, stop: tuple[pd.DataFrame, np.ndarray] | None, seed: int,
               pos_weight: float, progress: Any) -> Any:
        raise NotImplementedError

    def _best_iteration(self, booster: Any) -> int:
        raise NotImplementedError

    def _predict_one(self, booster: Any, x: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError

    def _gains(self, booster: Any) -> np.ndarray:
        raise NotImplementedError

    def _save_one(self, booster: Any, file: Path) -> None:
        raise NotImplementedError

    @classmethod
    def _load_one(cls, file: Path) -> Any:
        raise NotImplementedError


def image_column_name(run: str) -> str:
    """The feature name of an image run's scores: ``image_`` + the run's folder name (characters every GBDT
    library accepts in a feature name)."""
    return "image_" + re.sub(r"[^A-Za-z0-9_]", "_", Path(run).name)


def inner_split(meta: pd.DataFrame, y: np.ndarray, seed: int) -> np.ndarray | None:
    """Rows held out of the training folds for early stopping (a boolean mask), or None.

    The last training fold when there are several (the folds already group patients and duplicates);
    otherwise a fifth of the patients, drawn with ``seed``. None when either side would lack a class.
    """
    folds = meta["fold"].astype(int).to_numpy()
    if len(set(folds)) > 1:
        inner = folds == max(folds)
    else:
        ids = patient_keys(meta).astype(str).to_numpy()
        unique = np.unique(ids)
        held = np.random.default_rng(seed).permutation(len(unique))[: max(1, len(unique) // 5)]
        inner = np.isin(ids, unique[held])
    if len(set(y[inner])) == 2 and len(set(y[~inner])) == 2:
        return inner
    return None
