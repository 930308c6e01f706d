"""The seed's first attempts: logistic regression (``logreg``) and a linear SVM (``svm``) on small images.

Features per image (no fitted statistic, so nothing leaks across folds): downsampled pixels
(``image_size``² × 3, or grey), per-channel colour histograms, and the encoded metadata (sex, age,
site); or (``features = "tabular"``) the label-free tabular features of ``lgbm`` — metadata, patient
context, measurements and the lesion's ABCD; or (``"abcd"``) only the lesion's measured ABCD, its
deviation from the patient's other lesions, age, sex and site: a fitted Total-Dermoscopy-Score.
A standard scaler is fitted on the training fold only (missing values → the training mean).
Without class weights both models predict almost no melanoma at threshold 0.5 (1.8% prevalence);
``class_weight = "balanced"`` (the default) fixes that — the run report shows both operating points.

Models are saved as JSON + ``.npz`` arrays (no pickle) and predict with numpy alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydantic

from melanoma_data.errors import DataInputError
from melanoma_models.api import (
    FitContext,
    FoldData,
    Plugin,
    encode_metadata,
    read_model_doc,
    write_model_doc,
)
from melanoma_models.metrics import platt_scaling
from melanoma_plugins.embedded import EmbeddingFeatures, EmbeddingParams, UsesEmbeddings, fitted


class BaselineParams(EmbeddingParams):
    """Parameters shared by ``logreg`` and ``svm``."""

    features: Literal["pixels", "histogram", "both", "tabular", "abcd", "none"] = pydantic.Field(
        "both", description="image features: downsampled pixels, colour histograms, or both; 'none' (e.g. "
                            "embeddings alone, with embeddings=lite0 metadata=false); or 'tabular': "
                            "lgbm's label-free features (metadata, patient context, measurements, ABCD); "
                            "or 'abcd': the lesion's measured ABCD, its patient context, age, sex and site "
                            "(a linear ABCD score, like the Total Dermoscopy Score)")
    image_size: int = pydantic.Field(32, ge=4, le=128, description="side of the downsampled image")
    grey: bool = pydantic.Field(False, description="grey pixels instead of RGB")
    hist_bins: int = pydantic.Field(16, ge=2, le=128, description="histogram bins per channel")
    metadata: bool = pydantic.Field(True, description="append encoded sex, age and site")
    class_weight: Literal["none", "balanced"] = pydantic.Field(
        "balanced", description="'balanced' weights melanoma up by the inverse class frequency")
    C: float = pydantic.Field(1.0, gt=0, description="inverse regularisation strength")
    max_iter: int = pydantic.Field(2000, ge=10, description="solver iterations")


class SVMParams(BaselineParams):
    """``svm`` parameters."""

    calibration_folds: int = pydantic.Field(3, ge=2, le=10, description="internal folds of the Platt scaling")


def features(data: FoldData, params: BaselineParams, encodings: dict[str, Any],
             embedded: EmbeddingFeatures | None = None) -> np.ndarray:
    """The feature matrix of ``data`` (rows aligned with ``data.meta``; NaN where a value is missing), with the
    fold's embedding features appended when ``embedded`` is given."""
    x = _features(data, params, encodings)
    if embedded is not None:
        x = np.hstack([x, embedded.transform(data)])
    if x.shape[1] == 0:
        raise DataInputError("no features: features=none needs metadata=true or embeddings=...")
    return x


def _features(data: FoldData, params: BaselineParams, encodings: dict[str, Any]) -> np.ndarray:
    if params.features == "none":
        cols = encode_metadata(data.meta, encodings) if params.metadata else np.zeros((len(data.meta), 0))
        return cols.astype(np.float64)
    if params.features in ("tabular", "abcd"):
        from melanoma_models.features import tabular_features

        kind = "all" if params.features == "tabular" else "abcd"
        tab = tabular_features(data, encodings, kind, params.image_size).drop(columns=["sex", "site"])
        # a linear model needs sex and site one-hot, not as integer codes
        onehot = encode_metadata(data.meta, encodings, ("sex", "anatom_site_general_challenge"))
        return np.hstack([tab.to_numpy(dtype=np.float64), onehot])
    imgs = data.images(params.image_size).astype(np.float32) / 255.0
    parts = []
    if params.features in ("pixels", "both"):
        px = imgs.mean(axis=3, keepdims=True) if params.grey else imgs
        parts.append(px.reshape(len(imgs), -1))
    if params.features in ("histogram", "both"):
        edges = np.linspace(0, 1.0 + 1e-6, params.hist_bins + 1)
        n, bins = len(imgs), params.hist_bins
        hist = []
        for c in range(3):
            idx = np.clip(np.digitize(imgs[..., c].reshape(n, -1), edges) - 1, 0, bins - 1)
            flat = (np.arange(n)[:, None] * bins + idx).ravel()  # (image, bin) → one counter each
            h = np.bincount(flat, minlength=n * bins).reshape(n, bins).astype(np.float32)
            hist.append(h / max(idx.shape[1], 1))
        parts.append(np.hstack(hist))
    if params.metadata:
        parts.append(encode_metadata(data.meta, encodings).astype(np.float32))
    return np.hstack(parts).astype(np.float64)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))


class _Linear(UsesEmbeddings, Plugin):
    """A standardised linear score ``w·x + b`` followed by a sigmoid (with Platt scaling for the SVM)."""

    needs = ("images", "metadata")

    def patient_context(self) -> bool:
        """The tabular and ABCD features compare each lesion with the patient's other lesions."""
        return self.params.features in ("tabular", "abcd")

    def __init__(self, params: BaselineParams) -> None:
        super().__init__(params)
        self.mean: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.coef: np.ndarray | None = None
        self.intercept = 0.0
        self.platt = (1.0, 0.0)
        self.encodings: dict[str, Any] = {}
        self.embedded: EmbeddingFeatures | None = None

    def _standardise(self, x: np.ndarray) -> np.ndarray:
        return np.nan_to_num((x - self.mean) / self.scale, nan=0.0, posinf=0.0, neginf=0.0)

    def _scores(self, x: np.ndarray) -> np.ndarray:
        return self._standardise(x) @ self.coef + self.intercept

    def _weights(self) -> str | None:
        return "balanced" if self.params.class_weight == "balanced" else None

    def fit(self, train: FoldData, valid: FoldData | None, ctx: FitContext) -> dict[str, Any]:
        ctx.progress(0, 3, "features")
        self.encodings = ctx.encodings
        self.embedded = fitted(self.params, train)
        x = features(train, self.params, ctx.encodings, self.embedded)
        y = train.target
        if set(np.unique(y)) != {0, 1}:
            raise DataInputError(f"fold {ctx.fold}: the training rows need both classes, got {sorted(set(y))}")
        with np.errstate(all="ignore"):
            mean, std = np.nanmean(x, axis=0), np.nanstd(x, axis=0)
        self.mean = np.nan_to_num(mean)
        self.scale = np.where(np.nan_to_num(std) > 1e-12, np.nan_to_num(std), 1.0)
        xs = self._standardise(x)
        ctx.progress(1, 3, "fitting")
        history = self._fit_linear(xs, y)
        ctx.progress(3, 3, "done")
        return {"features": int(x.shape[1]), "rows": int(len(y)), **history}

    def _fit_linear(self, xs: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        raise NotImplementedError

    def predict(self, data: FoldData) -> np.ndarray:
        x = features(data, self.params, self.encodings, self.embedded)
        a, b = self.platt
        return _sigmoid(a * self._scores(x) + b)

    def save(self, path: Path) -> None:
        write_model_doc(path, self.name, {"intercept": float(self.intercept), "platt": list(self.platt)},
                        self.encodings)
        np.savez(path / "weights.npz", mean=self.mean, scale=self.scale, coef=self.coef)
        if self.embedded is not None:
            self.embedded.save(path)

    @classmethod
    def load(cls, path: Path, params: BaselineParams) -> _Linear:
        doc = read_model_doc(path, cls.name)
        arrays = np.load(path / "weights.npz", allow_pickle=False)
        model = cls(params)
        model.mean, model.scale, model.coef = arrays["mean"], arrays["scale"], arrays["coef"]
        model.intercept = float(doc["intercept"])
        model.platt = tuple(doc["platt"])
        model.encodings = doc["encodings"]
        model.embedded = EmbeddingFeatures.load(path)
        return model


class LogRegPlugin(_Linear):
    """Logistic regression on downsampled pixels, colour histograms and metadata."""

    name = "logreg"
    description = "logistic regression on downsampled pixels + colour histograms + metadata (seed baseline)"
    Params = BaselineParams

    def _fit_linear(self, xs: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        from sklearn.linear_model import LogisticRegression

        clf = LogisticRegression(C=self.params.C, class_weight=self._weights(), max_iter=self.params.max_iter,
                                 random_state=self.params.seed)
        clf.fit(xs, y)
        self.coef, self.intercept = clf.coef_[0].astype(np.float64), float(clf.intercept_[0])
        return {"iterations": int(np.max(clf.n_iter_))}


class SVMPlugin(_Linear):
    """Linear SVM with Platt-scaled probabilities."""

    name = "svm"
    description = "linear SVM with Platt-calibrated probabilities on the logreg features (seed baseline)"
    Params = SVMParams

    def _fit_linear(self, xs: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        from sklearn.model_selection import StratifiedKFold, cross_val_predict
        from sklearn.svm import LinearSVC

        def svc() -> LinearSVC:
            return LinearSVC(C=self.params.C, class_weight=self._weights(), max_iter=self.params.max_iter,
                             random_state=self.params.seed)

        n_cal = int(min(self.params.calibration_folds, np.bincount(y).min()))
        if n_cal >= 2:
            cv = StratifiedKFold(n_cal, shuffle=True, random_state=self.params.seed)
            decision = cross_val_predict(svc(), xs, y, cv=cv, method="decision_function")
        else:  # too few positives for held-out calibration: calibrate on the training scores
            decision = svc().fit(xs, y).decision_function(xs)
        clf = svc().fit(xs, y)
        self.coef, self.intercept = clf.coef_[0].astype(np.float64), float(clf.intercept_[0])
        # Platt scaling on held-out decision values; class weights apply here too, so that "balanced"
        # means balanced probabilities (otherwise calibration would undo the weighting at 0.5)
        self.platt = platt_scaling(decision, y, self._weights())
        return {"calibration_folds": n_cal}
