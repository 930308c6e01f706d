"""``lgbm``: LightGBM on tabular features — metadata, patient context ("ugly duckling"), source facts,
preprocessing measurements, simple image statistics and the lesion's ABCD shape and colour measures —
built per fold without leakage.

Label-free features come from :func:`melanoma_models.features.tabular_features`; the one label-based
feature (melanoma rate per site) is fitted on the training folds only. The input's numeric metadata
columns that models may use (the 2024 ``tbp_lv_*``, a user's own) come with the 2024 write-ups'
engineered ratios and their patient context (z-scores within patient and patient × site, rank, deviation
from the patient's median, a per-patient Local Outlier Factor): :func:`melanoma_models.features.metadata_features`.

Imbalance: ``scale_pos_weight`` (negatives / positives) by default. Early stopping on a held-out
training fold (``early_stopping=inner``, the default), so the out-of-fold scores never saw their own
labels; ``valid`` stops on the validation fold, as the 2020 notebooks did — optimistic, since the number
of trees is then chosen with the labels it is scored on. ``image_runs=RUN,...`` adds other runs'
out-of-fold predictions as columns (the 2024 winners' image-model scores): each row's value comes from
that run's model of the row's own fold, which never trained on it; runs on another dataset version or
fold assignment are refused. This shares stacking's second-order leak: the image model that scored a
training row was trained on rows that include this model's validation fold, so the column carries a
trace of those labels; ``image_noise`` adds Gaussian noise to the training rows' column, as the 2024
winner did, to keep the trees from trusting it too much. ``metric`` picks what early stopping watches
(``auc`` or the 2024 challenge's ``pauc_80_2024``); ``seeds=N`` bags N boosters (seeds ``seed``…
``seed+N-1``, their probabilities averaged). The models are saved as LightGBM text, plus the feature
list, the site rates and the gain importance as JSON.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from melanoma_models import metrics
from melanoma_plugins.gbdt.base import GBDTParams, GBDTPlugin, image_column_name, inner_split

__all__ = ["GBDTParams", "GBDTPlugin", "LGBMParams", "LGBMPlugin", "image_column_name", "inner_split"]

#: the params of ``lgbm`` (the shared boosting params)
LGBMParams = GBDTParams


class LGBMPlugin(GBDTPlugin):
    """LightGBM on metadata, patient context, source facts and measurements."""

    name = "lgbm"
    description = "LightGBM on metadata + patient context ('ugly duckling') + source facts + measurements"

    def _train(self, x, y, stop, seed, pos_weight, progress):
        lgb = self.library()
        p = self.params
        params = {
            "objective": "binary", "metric": "auc", "learning_rate": p.learning_rate, "num_leaves": p.num_leaves,
            "min_data_in_leaf": p.min_data_in_leaf, "feature_fraction": p.feature_fraction,
            "bagging_fraction": p.bagging_fraction, "bagging_freq": 1 if p.bagging_fraction < 1 else 0,
            "lambda_l2": p.lambda_l2, "seed": seed, "deterministic": True, "force_row_wise": True,
            "num_threads": 1, "verbose": -1, "scale_pos_weight": pos_weight,
        }
        dtrain = lgb.Dataset(x, y, feature_name=self.columns, free_raw_data=False)
        valid_sets, feval = [], None
        callbacks = [lambda env: progress(env.iteration + 1)]
        if stop is not None:
            valid_sets = [lgb.Dataset(stop[0], stop[1], reference=dtrain)]
            callbacks.append(lgb.early_stopping(p.early_stopping_rounds, verbose=False))
            if p.metric == "pauc_80_2024":
                params["metric"] = "None"
                feval = _pauc_eval
        return lgb.train(params, dtrain, num_boost_round=p.num_boost_round, valid_sets=valid_sets, feval=feval,
                         callbacks=callbacks)

    def _best_iteration(self, booster):
        return int(booster.best_iteration or booster.current_iteration())

    def _predict_one(self, booster, x):
        return booster.predict(x, num_iteration=booster.best_iteration or None)

    def _gains(self, booster):
        return booster.feature_importance(importance_type="gain")

    def _contrib_one(self, booster, x):
        return booster.predict(x, num_iteration=booster.best_iteration or None, pred_contrib=True)

    def _save_one(self, booster, file):
        booster.save_model(str(file), num_iteration=booster.best_iteration or None)

    @classmethod
    def _load_one(cls, file):
        return cls.library().Booster(model_file=str(file))


def _pauc_eval(preds: np.ndarray, data: Any) -> tuple[str, float, bool]:
    """LightGBM ``feval``: the 2024 challenge's partial AUC (higher is better)."""
    return "pauc_80_2024", metrics.pauc_80_2024(data.get_label(), preds), True
