"""``xgb`` and ``catboost``: the ``lgbm`` plugin's features, early stopping, metric and seed bagging on the
other two GBDT libraries the 2024 winners averaged.

Both are optional (``uv sync --all-extras``); without them the plugins are listed but ``fit`` stops with
a one-line error naming the extra. Parameters are :class:`melanoma_plugins.gbdt.lgbm.GBDTParams`, read where they mean
the same: ``num_leaves`` → ``max_leaves`` with loss-guided growth, ``feature_fraction`` → column sampling
(``colsample_bytree`` / ``rsm``), ``bagging_fraction`` → row subsampling, ``lambda_l2`` → L2 on leaf
values, ``min_data_in_leaf`` → CatBoost's ``min_data_in_leaf`` (XGBoost has no row count per leaf; its
``min_child_weight`` is left at its default).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from melanoma_models import metrics
from melanoma_plugins.gbdt.base import GBDTPlugin


class XGBPlugin(GBDTPlugin):
    """XGBoost (hist, loss-guided) on the ``lgbm`` features."""

    name = "xgb"
    description = "XGBoost on the lgbm features (metadata, 2024 columns with patient context, measurements)"
    module = "xgboost"
    suffix = ".ubj"

    def _train(self, x, y, stop, seed, pos_weight, progress):
        xgb = self.library()
        p = self.params
        params = {
            "objective": "binary:logistic", "eval_metric": "auc", "eta": p.learning_rate, "tree_method": "hist",
            "grow_policy": "lossguide", "max_leaves": p.num_leaves, "max_depth": 0,
            "colsample_bytree": p.feature_fraction, "subsample": p.bagging_fraction, "reg_lambda": p.lambda_l2,
            "scale_pos_weight": pos_weight, "seed": seed, "nthread": 1, "verbosity": 0,
        }
        dtrain = xgb.DMatrix(x.to_numpy(dtype=float), label=y, feature_names=self.columns)

        class Progress(xgb.callback.TrainingCallback):
            def after_iteration(self, model, epoch, evals_log):
                progress(epoch + 1)
                return False

        kwargs: dict[str, Any] = {"callbacks": [Progress()]}
        if stop is not None:
            kwargs["evals"] = [(xgb.DMatrix(stop[0].to_numpy(dtype=float), label=stop[1],
                                            feature_names=self.columns), "stop")]
            kwargs["early_stopping_rounds"] = p.early_stopping_rounds
            if p.metric == "pauc_80_2024":
                params["disable_default_eval_metric"] = 1
                kwargs["custom_metric"] = lambda pred, d: ("pauc_80_2024", metrics.pauc_80_2024(d.get_label(), pred))
                kwargs["maximize"] = True
        booster = xgb.train(params, dtrain, num_boost_round=p.num_boost_round, verbose_eval=False, **kwargs)
        if stop is not None:  # keep the trees up to the best round only
            booster = booster[: booster.best_iteration + 1]
        return booster

    def _best_iteration(self, booster):
        return int(booster.num_boosted_rounds())

    def _predict_one(self, booster, x):
        xgb = self.library()
        return booster.predict(xgb.DMatrix(x.to_numpy(dtype=float), feature_names=self.columns))

    def _gains(self, booster):
        score = booster.get_score(importance_type="total_gain")
        return np.array([score.get(c, 0.0) for c in self.columns])

    def _contrib_one(self, booster, x):
        xgb = self.library()
        return booster.predict(xgb.DMatrix(x.to_numpy(dtype=float), feature_names=self.columns), pred_contribs=True)

    def _save_one(self, booster, file):
        booster.save_model(str(file))

    @classmethod
    def _load_one(cls, file):
        booster = cls.library().Booster()
        booster.load_model(str(file))
        return booster


class _PAUC:
    """CatBoost custom metric: the 2024 challenge's partial AUC of the raw scores (monotone in probability)."""

    def is_max_optimal(self) -> bool:
        return True

    def evaluate(self, approxes, target, weight):
        return metrics.pauc_80_2024(np.asarray(target).astype(int), np.asarray(approxes[0])), 1.0

    def get_final_error(self, error, weight):
        return error


class CatBoostPlugin(GBDTPlugin):
    """CatBoost (loss-guided) on the ``lgbm`` features."""

    name = "catboost"
    description = "CatBoost on the lgbm features (metadata, 2024 columns with patient context, measurements)"
    module = "catboost"
    suffix = ".cbm"

    def _train(self, x, y, stop, seed, pos_weight, progress):
        cb = self.library()
        p = self.params

        class Progress:
            def after_iteration(self, info):
                progress(info.iteration)
                return True

        model = cb.CatBoostClassifier(
            iterations=p.num_boost_round, learning_rate=p.learning_rate, grow_policy="Lossguide",
            max_leaves=p.num_leaves, min_data_in_leaf=p.min_data_in_leaf, rsm=p.feature_fraction,
            bootstrap_type="Bernoulli", subsample=p.bagging_fraction, l2_leaf_reg=max(p.lambda_l2, 1e-6),
            scale_pos_weight=pos_weight, random_seed=seed, thread_count=1, verbose=False,
            allow_writing_files=False,  # no catboost_info/ folder in the working directory
            eval_metric=_PAUC() if p.metric == "pauc_80_2024" else "AUC",
            od_type="Iter" if stop is not None else None, od_wait=p.early_stopping_rounds if stop is not None else None,
            use_best_model=stop is not None,
        )
        with warnings.catch_warnings():  # CatBoost tries to numba-compile a Python metric, fails, runs it as is
            warnings.filterwarnings("ignore", message="Failed to optimize method", category=UserWarning)
            model.fit(pd.DataFrame(x.to_numpy(dtype=float), columns=self.columns), y,
                      eval_set=(pd.DataFrame(stop[0].to_numpy(dtype=float), columns=self.columns), stop[1])
                      if stop is not None else None, callbacks=[Progress()])
        return model

    def _best_iteration(self, booster):
        return int(booster.tree_count_)

    def _predict_one(self, booster, x):
        return booster.predict_proba(pd.DataFrame(x.to_numpy(dtype=float), columns=self.columns))[:, 1]

    def _gains(self, booster):
        return np.asarray(booster.get_feature_importance(), dtype=float)

    def explain(self, data):
        """None: CatBoost's SHAP values for the loss-guided (non-symmetric) trees used here did not add up to
        the model's log-odds (0.44 off on a small check) and crashed the process in another; no reasons
        rather than wrong ones."""
        return None

    def _save_one(self, booster, file):
        booster.save_model(str(file))

    @classmethod
    def _load_one(cls, file):
        model = cls.library().CatBoostClassifier()
        model.load_model(str(file))
        return model
