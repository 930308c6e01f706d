"""``lgbm``: LightGBM on tabular features — metadata, patient context ("ugly duckling"), source facts,
preprocessing measurements, simple image statistics and the lesion's ABCD shape and colour measures —
built per fold without leakage.

Label-free features come from :func:`melanoma_models.features.tabular_features`; the one label-based
feature (melanoma rate per site) is fitted on the training folds only. Imbalance: ``scale_pos_weight``
(negatives / positives) by default. Early stopping on the validation fold (as the issue and the 2020
notebooks do; ``early_stopping=inner`` stops on a held-out training fold instead, which keeps the OOF
estimate free of any validation-label influence). The model is saved as LightGBM text, plus the
feature list, the site rates and the gain importance as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pydantic

from melanoma_models.api import FitContext, FoldData, Plugin, PluginParams, read_model_doc, write_model_doc
from melanoma_models.features import SiteRate, model_columns, tabular_features


class LGBMParams(PluginParams):
    """``lgbm`` parameters."""

    features: Literal["all", "metadata", "abcd"] = pydantic.Field(
        "all", description="all tabular features, metadata only (sex, age, site, patient image count), or the "
                           "lesion's ABCD with its patient context")
    site_rate: bool = pydantic.Field(True, description="add the melanoma rate per site (fitted on training folds)")
    learning_rate: float = pydantic.Field(0.03, gt=0, le=1, description="boosting learning rate")
    num_leaves: int = pydantic.Field(15, ge=2, le=1024, description="leaves per tree")
    min_data_in_leaf: int = pydantic.Field(20, ge=1, description="minimum rows per leaf")
    feature_fraction: float = pydantic.Field(0.8, gt=0, le=1, description="features sampled per tree")
    bagging_fraction: float = pydantic.Field(0.8, gt=0, le=1, description="rows sampled per iteration")
    lambda_l2: float = pydantic.Field(1.0, ge=0, description="L2 regularisation")
    num_boost_round: int = pydantic.Field(2000, ge=1, description="maximum trees")
    early_stopping_rounds: int = pydantic.Field(100, ge=1, description="stop after this many rounds without gain")
    early_stopping: Literal["valid", "inner", "none"] = pydantic.Field(
        "valid", description="stop on the validation fold, on a held-out training fold, or never")
    imbalance: Literal["scale_pos_weight", "none"] = pydantic.Field(
        "scale_pos_weight", description="weight melanoma up by negatives/positives")
    image_size: int = pydantic.Field(32, ge=8, le=256, description="image side for the colour/size statistics")
    columns: str = pydantic.Field(
        "auto", description="input metadata columns carried into the shards to use as features: auto (every "
                            "numeric one models may use, e.g. the 2024 tbp_lv_*), none, or names separated by commas")
    allow_columns: str = pydantic.Field(
        "", description="columns marked 'models may not use' (label-carrying or train-only) to use anyway, by name")


class LGBMPlugin(Plugin):
    """LightGBM on metadata, patient context, source facts and measurements."""

    name = "lgbm"
    description = "LightGBM on metadata + patient context ('ugly duckling') + source facts + measurements"
    needs = ("metadata",)
    Params = LGBMParams

    def __init__(self, params: LGBMParams) -> None:
        super().__init__(params)
        self.booster = None
        self.columns: list[str] = []
        self.site: SiteRate | None = None
        self.encodings: dict[str, Any] = {}
        self.extra: list[str] = []

    def features(self, data: FoldData) -> pd.DataFrame:
        """The model's feature frame for ``data`` (label-free part + fitted label-based part)."""
        f = tabular_features(data, self.encodings, self.params.features, self.params.image_size)
        for col in self.extra:
            f[col] = pd.to_numeric(data.meta[col], errors="coerce").astype(float).to_numpy() \
                if col in data.meta else np.nan
        if self.site is not None:
            f["site_rate"] = self.site.transform(data.meta)
        return f

    def fit(self, train: FoldData, valid: FoldData | None, ctx: FitContext) -> dict[str, Any]:
        import lightgbm as lgb

        p = self.params
        self.encodings = ctx.encodings
        y = train.target
        if set(np.unique(y)) != {0, 1}:
            raise ValueError(f"fold {ctx.fold}: the training rows need both classes")
        self.site = SiteRate().fit(train.meta, y) if p.site_rate else None
        self.extra = model_columns(train.dataset.manifest, p.columns, p.allow_columns)
        x = self.features(train)
        self.columns = list(x.columns)
        lgb_params = {
            "objective": "binary", "metric": "auc", "learning_rate": p.learning_rate, "num_leaves": p.num_leaves,
            "min_data_in_leaf": p.min_data_in_leaf, "feature_fraction": p.feature_fraction,
            "bagging_fraction": p.bagging_fraction, "bagging_freq": 1 if p.bagging_fraction < 1 else 0,
            "lambda_l2": p.lambda_l2, "seed": p.seed, "deterministic": True, "force_row_wise": True,
            "num_threads": 1, "verbose": -1,
        }
        if p.imbalance == "scale_pos_weight":
            lgb_params["scale_pos_weight"] = float((y == 0).sum() / max((y == 1).sum(), 1))
        fit_x, fit_y, stop_x, stop_y = x, y, None, None
        if p.early_stopping == "valid" and valid is not None and len(set(valid.target)) == 2:
            stop_x, stop_y = self.features(valid), valid.target
        elif p.early_stopping == "inner":
            folds = train.meta["fold"].astype(int).to_numpy()
            held = sorted(set(folds))[-1]
            inner = folds == held
            if len(set(y[inner])) == 2 and len(set(y[~inner])) == 2:
                fit_x, fit_y, stop_x, stop_y = x[~inner], y[~inner], x[inner], y[inner]
        dtrain = lgb.Dataset(fit_x, fit_y, feature_name=self.columns, free_raw_data=False)
        callbacks = []
        valid_sets = []
        if stop_x is not None:
            valid_sets = [lgb.Dataset(stop_x, stop_y, reference=dtrain)]
            callbacks.append(lgb.early_stopping(p.early_stopping_rounds, verbose=False))
        callbacks.append(lambda env: ctx.progress(env.iteration + 1, p.num_boost_round, ""))
        self.booster = lgb.train(lgb_params, dtrain, num_boost_round=p.num_boost_round, valid_sets=valid_sets,
                                 callbacks=callbacks)
        best = int(self.booster.best_iteration or self.booster.current_iteration())
        return {"best_iteration": best, "features": len(self.columns), "early_stopping": p.early_stopping,
                "importance": self.importance()}

    def importance(self) -> dict[str, float]:
        """Total gain per feature."""
        gains = self.booster.feature_importance(importance_type="gain")
        return {c: float(g) for c, g in sorted(zip(self.columns, gains, strict=True), key=lambda t: -t[1])}

    def predict(self, data: FoldData) -> np.ndarray:
        x = self.features(data)[self.columns]
        best = self.booster.best_iteration or None
        return np.clip(self.booster.predict(x, num_iteration=best), 0.0, 1.0)

    def save(self, path: Path) -> None:
        write_model_doc(path, self.name, {"columns": self.columns, "extra": self.extra,
                                          "site": self.site.to_dict() if self.site else None}, self.encodings)
        self.booster.save_model(str(path / "model.txt"), num_iteration=self.booster.best_iteration or None)
        (path / "feature_importance.json").write_text(json.dumps(self.importance(), indent=1))

    @classmethod
    def load(cls, path: Path, params: LGBMParams) -> LGBMPlugin:
        import lightgbm as lgb

        doc = read_model_doc(path, cls.name)
        model = cls(params)
        model.booster = lgb.Booster(model_file=str(path / "model.txt"))
        model.columns = doc["columns"]
        model.extra = doc.get("extra", [])
        model.site = SiteRate.from_dict(doc["site"]) if doc["site"] else None
        model.encodings = doc["encodings"]
        return model
