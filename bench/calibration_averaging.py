"""What a calibrator fitted on single-model out-of-fold scores does to fold-averaged test scores (generated data).

A run with ``--set calibrate=platt|isotonic`` fits its calibrator on the OOF scores, each from one fold model,
and applies it to ``prediction``, the mean of the k fold models' scores (test predictions, ``predict``,
``serve``). Averaging probabilities pulls scores towards the middle, so the calibrator meets less extreme scores
than it was fitted on. This prints, on generated logistic data with k = 5 logistic-regression fold models, the ECE
(10 equal-mass bins), the calibration slope and the Brier score on a large test set of: the raw single-model
score, the raw fold average, and each calibrated one.

Usage: ``uv run python bench/calibration_averaging.py [--n 800] [--features 60] [--C 100] [--seeds 5]``
(``--C 100`` with few rows: high-variance fold models, where averaging matters; ``--n 3000 --C 1``: stable ones).
"""

from __future__ import annotations

import argparse

import numpy as np
from sklearn.linear_model import LogisticRegression

from melanoma_models import metrics as M


def one(seed: int, n: int, d: int, c: float, k: int = 5, n_test: int = 20000) -> tuple[np.ndarray, dict]:
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.35, d)
    x = rng.normal(0, 1, (n + n_test, d))
    y = (rng.random(n + n_test) < 1 / (1 + np.exp(-(x @ w - 2.0)))).astype(int)
    xtr, ytr, xte, yte = x[:n], y[:n], x[n:], y[n:]
    fold = rng.integers(0, k, n)
    oof, test = np.zeros(n), []
    for f in range(k):
        model = LogisticRegression(C=c, max_iter=2000).fit(xtr[fold != f], ytr[fold != f])
        oof[fold == f] = model.predict_proba(xtr[fold == f])[:, 1]
        test.append(model.predict_proba(xte)[:, 1])
    scores = {"raw, one fold model": test[0], "raw, fold average": np.mean(test, axis=0)}
    for method in ("platt", "isotonic"):
        cal = M.fit_calibration(method, oof, ytr)
        scores[f"{method}, one fold model"] = M.apply_calibration(cal, test[0])
        scores[f"{method}, fold average"] = M.apply_calibration(cal, scores["raw, fold average"])
    return yte, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=800)
    ap.add_argument("--features", type=int, default=60)
    ap.add_argument("--C", type=float, default=100.0)
    ap.add_argument("--seeds", type=int, default=5)
    a = ap.parse_args()
    table: dict[str, list[tuple[float, float, float]]] = {}
    for seed in range(a.seeds):
        y, scores = one(seed, a.n, a.features, a.C)
        for name, p in scores.items():
            table.setdefault(name, []).append((M.ece(y, p), M.calibration_slope_intercept(y, p)[0], M.brier(y, p)))
    print(f"{a.n} training rows, 5 folds, {a.features} features, logreg C={a.C:g}, {a.seeds} seeds, 20000 test rows")
    for name, rows in table.items():
        v = np.array(rows)
        print(f"{name:24s} ECE {v[:, 0].mean():.4f} ± {v[:, 0].std():.4f}  slope {v[:, 1].mean():.3f} ± "
              f"{v[:, 1].std():.3f}  Brier {v[:, 2].mean():.5f}")


if __name__ == "__main__":
    main()
