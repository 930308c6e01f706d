"""``stack``: combine base runs using only their out-of-fold predictions (nothing leaks).

``fit --plugin stack --set runs=RUN_A,RUN_B`` — the base runs must be on the same dataset version with
the same fold assignment. For the validation fold ``k`` the combiner is fitted on the base runs' OOF
predictions of the other folds (themselves made by models that never saw those rows) and applied to
fold ``k``'s OOF predictions: a nested CV over the same folds. Test predictions combine the base
runs' test predictions with the combiner fitted on every training row.

Combiners: ``best`` (the base run with the best training AUC — what small data often supports),
``mean`` (of probabilities), ``rank`` (mean of ranks among the training predictions),
``weights`` (non-negative weights maximising the training AUC by greedy hill climbing — the slides'
"Ensemble Optimal"),
``logreg`` (a level-2 logistic regression on the base logits, optionally with metadata) and ``auto``
(per fold, the combiner with the best inner-CV AUC on the training folds). Every fold also records
all combiners' predictions, so the report compares each base run and each combiner.

The default is ``weights``: it starts from the best base run and adds another's share only when that
raises the training AUC by more than its standard error (``weight_min_gain_se``), so it is ``best``
when nothing helps beyond noise. ``best``, ``mean``, ``weights`` and ``logreg`` keep the base runs'
probability scale in every fold; only ``rank`` and ``auto`` are calibrated (Platt, on their inner-CV
scores) — a per-fold calibration of the others put the folds on different scales before pooling.
``auto`` is noisier than it looks:
inner-CV AUCs of the combiners differ by less than their noise, folds then choose differently, and
the pooled out-of-fold scores mix combiners (on the known-answer benchmark, same base runs: ``auto``
0.8715, ``weights`` 0.8722, best base run 0.8720).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
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
from melanoma_models.explanation import StackReasons
from melanoma_models.metrics import pauc_80_2024, platt_scaling, roc_auc
from melanoma_plugins.embedded import EmbeddingFeatures, EmbeddingParams, UsesEmbeddings, fitted

#: What the combiners optimise (``metric``): the AUC or the 2024 challenge's partial AUC.
SCORES = {"auc": roc_auc, "pauc_80_2024": pauc_80_2024}

METHODS = ("best", "mean", "rank", "weights", "logreg")


class StackParams(EmbeddingParams):
    """``stack`` parameters (``embeddings``: features of the ``logreg`` combiner beside the base logits,
    standardised on the training folds)."""

    runs: str = pydantic.Field("", description="comma-separated base run directories (or names under --runs)")
    method: Literal["auto", "best", "mean", "rank", "weights", "logreg"] = pydantic.Field(
        "weights", description="combiner; weights = hill-climbed optimal weights (the best run when nothing "
                               "helps); auto = per fold, the best inner-CV AUC on the training folds")
    with_metadata: bool = pydantic.Field(False, description="logreg combiner: add encoded sex, age and site")
    C: float = pydantic.Field(1.0, gt=0, description="logreg combiner: inverse regularisation")
    weight_steps: int = pydantic.Field(
        50, ge=1, le=10_000, description="weights combiner: hill-climbing steps (each adds one base run's share)")
    metric: Literal["auc", "pauc_80_2024"] = pydantic.Field(
        "auc", description="what best, weights and auto optimise on the training folds: AUC or the 2024 pAUC")
    weight_min_gain_se: float = pydantic.Field(
        1.0, ge=0, description="weights combiner: a share is added only when it raises the training score by more "
                               "than this many standard errors, and runs within this many standard errors of the "
                               "paired difference to the best start mixed with it; 0 = any gain, no mixing")

    @pydantic.field_validator("runs")
    @classmethod
    def _runs(cls, v: str) -> str:
        if len([r for r in v.split(",") if r.strip()]) < 2:
            raise ValueError("runs needs at least two base runs, comma-separated (runs=RUN_A,RUN_B)")
        return v

    @pydantic.model_validator(mode="after")
    def _embeddings_need_logreg(self) -> StackParams:
        if self.embeddings and self.method not in ("logreg", "auto"):
            raise ValueError(f"embeddings are features of the logreg combiner; method={self.method} does not use "
                             "features (set method=logreg)")
        return self

    def run_names(self) -> list[str]:
        return [r.strip() for r in self.runs.split(",") if r.strip()]


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def _quantiles(p: np.ndarray, n: int = 513) -> list[list[float]]:
    """Per column, ``n`` quantiles of the training predictions: the empirical CDF the rank combiner uses."""
    return [np.quantile(p[:, j], np.linspace(0, 1, n)).tolist() for j in range(p.shape[1])]


def _ranks(p: np.ndarray, quantiles: list[list[float]]) -> np.ndarray:
    """Each column's values as their rank among the *training* predictions, in [0, 1].

    Fitted on the training rows, so validation folds and the test split share one scale (ranking
    within each predicted set would make pooled out-of-fold scores incomparable across folds).
    """
    grid = np.linspace(0, 1, len(quantiles[0]))
    out = np.empty_like(p, dtype=float)
    for j, q in enumerate(quantiles):
        q = np.maximum.accumulate(np.asarray(q))
        out[:, j] = np.interp(p[:, j], q, grid)
    return out


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC estimated from ``positives`` and ``negatives``."""
    if not positives or not negatives or not np.isfinite(auc):
        return float("nan")
    q1, q2 = auc / (2 - auc), 2 * auc**2 / (1 + auc)
    var = (auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)) \
        / (positives * negatives)
    return float(np.sqrt(max(var, 0.0)))


def _bootstrap_sd(statistic: Callable[[np.ndarray], float], n: int, draws: int = 30) -> float:
    """The sd of ``statistic(rows)`` over ``draws`` (seeded) bootstrap resamples of ``n`` rows."""
    rng = np.random.default_rng(0)
    return float(np.nanstd([statistic(rng.integers(0, n, n)) for _ in range(draws)], ddof=1))


def _noise(metric: str, score: float, z: np.ndarray, y: np.ndarray) -> float:
    """The standard error of ``metric`` at ``score``: Hanley-McNeil for the AUC; for the pAUC the bootstrap
    sd of the rows scored by ``z``."""
    pos = int(np.sum(y))
    if metric == "auc":
        return auc_standard_error(score, pos, len(y) - pos)
    return _bootstrap_sd(lambda i: SCORES[metric](y[i], z[i]), len(y))


def paired_difference_se(metric: str, a: np.ndarray, b: np.ndarray, y: np.ndarray) -> float:
    """Standard error of ``metric(y, a) - metric(y, b)`` for two scores of the same rows.

    AUC: DeLong's variance of the difference of two correlated AUCs (the fast midrank form of Sun & Xu
    2014); two near-copies of one model have a small one, two different models a larger one. pAUC: the
    bootstrap sd of the difference, both scores resampled with the same rows.
    """
    from scipy.stats import rankdata

    y = np.asarray(y).astype(int)
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    if m < 2 or n < 2:
        return float("nan")
    if metric != "auc":
        score = SCORES[metric]
        return _bootstrap_sd(lambda i: score(y[i], a[i]) - score(y[i], b[i]), len(y))
    v01, v10 = [], []
    for s in (a, b):
        tz = rankdata(s)
        v01.append((tz[pos] - rankdata(s[pos])) / n)  # each positive: share of negatives below it
        v10.append(1.0 - (tz[neg] - rankdata(s[neg])) / m)  # each negative: share of positives above it
    sx, sy = np.cov(np.vstack(v01)), np.cov(np.vstack(v10))
    var = (sx[0, 0] + sx[1, 1] - 2 * sx[0, 1]) / m + (sy[0, 0] + sy[1, 1] - 2 * sy[0, 1]) / n
    return float(np.sqrt(max(var, 0.0)))


def _hill_climb(z: np.ndarray, y: np.ndarray, steps: int, min_gain_se: float = 0.0, metric: str = "auc"
                ) -> np.ndarray:
    """Non-negative weights (summing to 1) of the columns of ``z`` that maximise ``metric`` of ``z @ w``.

    Caruana et al.'s ensemble selection: start from the best single column (with ``min_gain_se``: an
    equal mix of it and every column whose gap to it is within that many standard errors of the paired
    difference, :func:`paired_difference_se`), then repeatedly add one more share of whichever column
    (repeats allowed) raises the training score most; stop when none raises it by more than
    ``min_gain_se`` standard errors (:func:`_noise`): on few positives a gain within the noise is the
    rows' luck, and the pooled out-of-fold AUC pays for it. Deterministic and independent of the column
    order (ties go to the first column), unlike a random search over the simplex, whose optimum moves
    with the draw.
    """
    k = z.shape[1]
    score = SCORES[metric]
    scores = np.array([score(y, z[:, j]) for j in range(k)], dtype=float)
    counts = np.zeros(k)
    top = int(np.nanargmax(scores))
    counts[top] = 1
    if min_gain_se > 0:  # columns a paired test cannot tell from the best start as an equal mix: which of
        # them "wins" on a fold's training rows is luck, and folds that pick different ones pool badly
        for j in range(k):
            if j != top and np.isfinite(scores[j]):
                gap = scores[top] - scores[j]
                counts[j] = float(gap <= min_gain_se * paired_difference_se(metric, z[:, top], z[:, j], y))
    total = z @ counts
    best = float(score(y, total))
    pauc_noise = _noise(metric, best, total, y) if metric != "auc" and min_gain_se > 0 else 0.0
    for _ in range(steps - 1):
        trial = [score(y, total + z[:, j]) for j in range(k)]
        j = int(np.nanargmax(trial))
        noise = _noise(metric, best, total, y) if metric == "auc" else pauc_noise
        need = min_gain_se * noise if min_gain_se > 0 else 0.0
        if not trial[j] > best + max(need, 1e-9):
            break
        best, counts[j], total = trial[j], counts[j] + 1, total + z[:, j]
    return counts / counts.sum()


class Combiner:
    """One fitted combiner; ``state`` is JSON-serialisable."""

    def __init__(self, method: str, params: StackParams, state: dict[str, Any] | None = None) -> None:
        self.method, self.params, self.state = method, params, state or {}

    def fit(self, p: np.ndarray, y: np.ndarray, meta_x: np.ndarray | None) -> Combiner:
        if self.method == "rank":
            self.state = {"quantiles": _quantiles(p)}
        elif self.method == "best":
            score = SCORES[self.params.metric]
            self.state = {"index": int(np.nanargmax([score(y, p[:, j]) for j in range(p.shape[1])]))}
        elif self.method == "weights":
            self.state = {"weights": _hill_climb(_logit(p), y, self.params.weight_steps,
                                                 self.params.weight_min_gain_se, self.params.metric).tolist()}
        elif self.method == "logreg":
            from sklearn.linear_model import LogisticRegression

            x = self._x(p, meta_x)
            clf = LogisticRegression(C=self.params.C, max_iter=2000).fit(x, y)
            self.state = {"coef": clf.coef_[0].tolist(), "intercept": float(clf.intercept_[0])}
        return self

    def _x(self, p: np.ndarray, meta_x: np.ndarray | None) -> np.ndarray:
        x = _logit(p)
        if meta_x is not None:  # metadata (with_metadata) and/or embeddings
            x = np.hstack([x, meta_x])
        return x

    def predict(self, p: np.ndarray, meta_x: np.ndarray | None) -> np.ndarray:
        if self.method == "best":
            return p[:, self.state["index"]]
        if self.method == "mean":
            return p.mean(axis=1)
        if self.method == "rank":
            return _ranks(p, self.state["quantiles"]).mean(axis=1)
        if self.method == "weights":
            z = _logit(p) @ np.asarray(self.state["weights"])
            return 1 / (1 + np.exp(-z))
        z = self._x(p, meta_x) @ np.asarray(self.state["coef"]) + self.state["intercept"]
        return 1 / (1 + np.exp(-np.clip(z, -500, 500)))


class StackPlugin(UsesEmbeddings, Plugin):
    """Level-2 ensemble of base runs' out-of-fold predictions."""

    name = "stack"
    description = "ensemble of base runs from their OOF predictions: mean, rank, optimal weights, level-2 logreg"
    needs = ("runs",)
    Params = StackParams

    def __init__(self, params: StackParams) -> None:
        super().__init__(params)
        self.combiner: Combiner | None = None
        self.base: list[str] = []
        self.oof: pd.DataFrame | None = None
        self.test: pd.DataFrame | None = None
        self.encodings: dict[str, Any] = {}
        self.inner: dict[str, float] = {}
        self.calibration: tuple[float, float] | None = None
        self.embedded: EmbeddingFeatures | None = None

    # -- data

    def _load_base(self, runs: list[Path]) -> None:
        oofs, tests = [], []
        for i, run in enumerate(runs):
            oof = pd.read_parquet(run / "oof.parquet")
            oofs.append(oof.set_index("image_name")["prediction"].rename(f"base{i}"))
            tp = run / "test_predictions.parquet"
            if tp.exists():
                tests.append(pd.read_parquet(tp).set_index("image_name")["prediction"].rename(f"base{i}"))
        self.oof = pd.concat(oofs, axis=1)
        self.test = pd.concat(tests, axis=1) if len(tests) == len(runs) else None
        self.base = [str(r) for r in runs]

    def use_base_predictions(self, table: pd.DataFrame) -> None:
        """Combine these base predictions (columns ``base0``, ``base1``, … by image name; e.g. the base runs'
        scores of new images) instead of the base runs' saved ones."""
        self.oof = self.test = table

    def _matrix(self, data: FoldData) -> np.ndarray:
        if data.split == "test":
            if self.test is None:
                raise DataInputError("a base run has no test_predictions.parquet; cannot predict the test split")
            table = self.test
        else:
            table = self.oof
        missing = sorted(set(data.names) - set(table.index))
        if missing:
            raise DataInputError(f"{len(missing)} rows have no base prediction, e.g. {missing[:3]} "
                             "(base runs from another dataset version?)")
        return table.loc[data.names].to_numpy(dtype=float)

    def _meta(self, data: FoldData) -> np.ndarray | None:
        parts = [encode_metadata(data.meta, self.encodings)] if self.params.with_metadata else []
        if self.embedded is not None:
            parts.append(self.embedded.transform(data))
        return np.hstack(parts) if parts else None

    # -- plugin API

    def fit(self, train: FoldData, valid: FoldData | None, ctx: FitContext) -> dict[str, Any]:
        if len(ctx.base_runs) < 2:
            raise DataInputError("stack needs at least two base runs (runs=RUN_A,RUN_B)")
        self.encodings = ctx.encodings
        self._load_base(ctx.base_runs)
        self.embedded = fitted(self.params, train, scale=True)
        p, y, mx = self._matrix(train), train.target, self._meta(train)
        folds = train.meta["fold"].to_numpy()
        # inner CV over the training folds: how well would each combiner do?
        self.inner = {}
        inner_pred: dict[str, np.ndarray] = {}
        for method in METHODS:
            pred = np.full(len(y), np.nan)
            for f in sorted(set(folds)):
                tr, te = folds != f, folds == f
                if len(set(y[tr])) < 2:
                    continue
                c = Combiner(method, self.params).fit(p[tr], y[tr], mx[tr] if mx is not None else None)
                pred[te] = c.predict(p[te], mx[te] if mx is not None else None)
            ok = ~np.isnan(pred)
            inner_pred[method] = pred
            self.inner[method] = SCORES[self.params.metric](y[ok], pred[ok]) \
                if ok.any() and len(set(y[ok])) == 2 else float("nan")
        method = self.params.method
        if method == "auto":
            method = max(METHODS, key=lambda m: -np.inf if np.isnan(self.inner[m]) else self.inner[m])
        self.combiner = Combiner(method, self.params).fit(p, y, mx)
        # best, mean, weights and logreg already give every fold the base runs' probability scale (or
        # probabilities): a per-fold calibration on top put the folds on different scales before pooling
        # and cost more than combining gained (demo: 0.926 → 0.917). Only outputs that are not
        # probabilities are mapped onto them: ``rank`` (training ranks) and ``auto`` (its folds may choose
        # combiners with different outputs)
        self.calibration = platt_scaling(inner_pred[method], y) if self.params.method in ("auto", "rank") else None
        if valid is not None:  # every combiner's predictions for the report's comparison
            pv, mv = self._matrix(valid), self._meta(valid)
            table = pd.DataFrame({"image_name": valid.names})
            for i in range(pv.shape[1]):
                table[f"base: {Path(self.base[i]).name}"] = pv[:, i]
            for m in METHODS:
                table[f"stack: {m}"] = Combiner(m, self.params).fit(p, y, mx).predict(pv, mv)
            ctx.run_dir.mkdir(parents=True, exist_ok=True)
            table.to_parquet(ctx.run_dir / "extra_predictions.parquet", index=False)
        return {"method": method, "metric": self.params.metric, "inner_cv_auc": self.inner,
                "state": self.combiner.state}

    def predict(self, data: FoldData) -> np.ndarray:
        score = self.combiner.predict(self._matrix(data), self._meta(data))
        if self.calibration is None:
            return np.clip(score, 0.0, 1.0)
        a, b = self.calibration
        return np.clip(1 / (1 + np.exp(-np.clip(a * score + b, -500, 500))), 0.0, 1.0)

    def explain(self, data: FoldData) -> StackReasons:
        """Each base run's score of each row, and its weight in the mix (``weights``, ``best``, ``mean``)."""
        p = self._matrix(data)
        names = [Path(b).name for b in self.base]
        state, method = self.combiner.state, self.combiner.method
        if method == "weights":
            weights = list(state["weights"])
        elif method == "best":
            weights = [1.0 if j == state["index"] else 0.0 for j in range(len(names))]
        elif method == "mean":
            weights = [1.0 / len(names)] * len(names)
        else:
            weights = [float("nan")] * len(names)
        return StackReasons(pd.DataFrame(p, columns=names), dict(zip(names, weights, strict=True)), method)

    def save(self, path: Path) -> None:
        write_model_doc(path, self.name, {"method": self.combiner.method, "state": self.combiner.state,
                                          "base_runs": self.base, "inner_cv_auc": self.inner,
                                          "calibration": list(self.calibration) if self.calibration else None},
                        self.encodings)
        if self.embedded is not None:
            self.embedded.save(path)

    @classmethod
    def load(cls, path: Path, params: StackParams) -> StackPlugin:
        doc = read_model_doc(path, cls.name)
        model = cls(params)
        model.combiner = Combiner(doc["method"], params, doc["state"])
        model.encodings = doc["encodings"]
        model.inner = doc["inner_cv_auc"]
        model.calibration = tuple(doc["calibration"]) if doc.get("calibration") else None
        model.embedded = EmbeddingFeatures.load(path)
        model._load_base([Path(r) for r in doc["base_runs"]])
        return model
