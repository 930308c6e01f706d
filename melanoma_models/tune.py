"""Hyper-parameter search: grid or random search over plugin parameters, scored by CV AUC (or ``metric``).

Every trial is an ordinary ``fit`` run (so finished trials are reused and interrupted ones resume);
the search writes ``RUNS/tune-<plugin>-<hash>/`` with ``results.csv`` (one row per trial: parameters,
pooled and per-fold AUC, pAUC, run directory), ``results.png``, ``index.html`` and ``best.toml`` —
reusable as ``python cli.py fit --config best.toml``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import itertools
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melanoma_data import plots
from melanoma_data.errors import ConfigError
from melanoma_data.spreadsheet import to_csv_for_people
from melanoma_models import runner
from melanoma_models.registry import get_plugin


@dataclasses.dataclass
class TuneResult:
    """A finished search."""

    tune_dir: Path
    results: pd.DataFrame
    best: dict[str, Any]


def parse_grid(items: list[str] | None) -> dict[str, list[str]]:
    """``["C=0.1,1,10", "class_weight=none,balanced"]`` → ``{"C": ["0.1", "1", "10"], ...}``.

    Raises:
        ConfigError: malformed items, empty value lists or a key given twice.
    """
    grid: dict[str, list[str]] = {}
    for item in items or []:
        key, sep, values = item.partition("=")
        key = key.strip()
        vals = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not vals:
            raise ConfigError(f"--grid expects key=v1,v2,..., got {item!r}")
        if key in grid:
            raise ConfigError(f"--grid key {key!r} given twice")
        grid[key] = vals
    if not grid:
        raise ConfigError("no --grid given (e.g. --grid C=0.1,1,10)")
    return grid


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    return json.dumps(str(v))


def tune(
    plugin: str,
    data: str,
    grid: Mapping[str, list[str]],
    *,
    budget: int | None = None,
    runs: str | Path = "runs",
    sets: Mapping[str, Any] | None = None,
    folds: int | None = None,
    seed: int = 0,
    on_trial: Callable[[int, int, dict[str, str], float], None] | None = None,
) -> TuneResult:
    """Search ``grid`` (all combinations, or ``budget`` of them drawn at random) by pooled OOF AUC.

    ``sets["metric"] = "pauc_80_2024"`` ranks the trials by the 2024 challenge's partial AUC instead
    (and is passed on to plugins that optimise a metric themselves, such as ``lgbm``'s early stopping).

    Args:
        plugin: plugin name.
        data: dataset version.
        grid: parameter → candidate values (strings, validated by the plugin's model).
        budget: at most this many trials (random search when the grid is larger).
        runs: folder for the trial runs and the search directory.
        sets: fixed parameters for every trial.
        folds: CV folds.
        seed: seed of the random subset.
        on_trial: called after each trial with (index, total, parameters, AUC).

    Returns:
        The search result with the best trial's parameters.
    """
    cls = get_plugin(plugin)
    sets = dict(sets or {})
    metric = str(sets.get("metric", "auc"))
    if metric not in ("auc", "pauc_80_2024"):
        raise ConfigError(f"metric must be auc or pauc_80_2024, got {metric!r}")
    if "metric" not in cls.Params.model_fields:  # the plugin has nothing to optimise: only the ranking uses it
        sets.pop("metric", None)
    overlap = sorted(set(grid) & set(sets))
    if overlap:
        raise ConfigError(f"parameter(s) {overlap} are both in --grid and --set")
    keys = list(grid)
    combos = [dict(zip(keys, vals, strict=True)) for vals in itertools.product(*(grid[k] for k in keys))]
    for combo in combos:  # fail before training anything if a value is invalid
        cls.Params.build({**sets, **combo}, plugin)
    if budget is not None:
        if budget < 1:
            raise ConfigError(f"--budget must be >= 1, got {budget}")
        if budget < len(combos):
            pick = np.random.default_rng(seed).choice(len(combos), budget, replace=False)
            combos = [combos[i] for i in sorted(pick)]
    runs = Path(runs)
    rows = []
    for i, combo in enumerate(combos):
        res = runner.fit(plugin, data, runs=runs, sets={**sets, **combo}, folds=folds)
        m = res.metrics
        rows.append({**combo, "auc": m["auc"], "auc_mean": m["auc_mean"], "auc_sd": m["auc_sd"],
                     "pauc_80": m["pauc_80"], "pauc_80_2024": m.get("pauc_80_2024"), "run": str(res.run_dir)})
        if on_trial is not None:
            on_trial(i + 1, len(combos), combo, m["auc"])
    results = pd.DataFrame(rows).sort_values(metric, ascending=False, kind="stable").reset_index(drop=True)
    key = json.dumps({"plugin": plugin, "data": data, "grid": grid, "budget": budget, "sets": sets, "folds": folds,
                      "seed": seed, "metric": metric}, sort_keys=True, default=str)
    tune_dir = runs / f"tune-{plugin}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"
    tune_dir.mkdir(parents=True, exist_ok=True)
    to_csv_for_people(results, tune_dir / "results.csv")  # a table for people (parameters may be text)
    best_cfg = runner.run_config(results.loc[0, "run"])
    lines = [f"# best of {len(results)} trials by {metric}: pooled OOF AUC {results.loc[0, 'auc']:.4f}, "
             f"2024 pAUC {results.loc[0, 'pauc_80_2024']:.4f}",
             f"plugin = {_toml_value(plugin)}", f"data = {_toml_value(data)}", f"folds = {best_cfg.folds}",
             "", "[params]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in best_cfg.params.items()]
    (tune_dir / "best.toml").write_text("\n".join(lines) + "\n")
    _plot(results, keys, tune_dir / "results.png", plugin)
    table = results.drop(columns=["run"]).to_html(index=False, float_format=lambda v: f"{v:.4f}")
    (tune_dir / "index.html").write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>tune {html.escape(plugin)}</title></head><body>"
        f"<h1>Search over {html.escape(', '.join(keys))} for <code>{html.escape(plugin)}</code></h1>"
        f"<p>{len(results)} trials, scored by pooled out-of-fold AUC. Best: reuse with "
        f"<code>python cli.py fit --config {html.escape(str(tune_dir / 'best.toml'))}</code></p>{table}"
        f"<img src='results.png'></body></html>", encoding="utf-8")
    return TuneResult(tune_dir, results, {k: results.loc[0, k] for k in keys})


def _plot(results: pd.DataFrame, keys: list[str], path: Path, plugin: str) -> None:
    plt = plots.pyplot()
    ordered = results.iloc[::-1]
    labels = [", ".join(f"{k}={r[k]}" for k in keys) for _, r in ordered.iterrows()]
    fig, ax = plt.subplots(figsize=(7, 0.3 * len(labels) + 1.2))
    ax.errorbar(ordered["auc_mean"], range(len(labels)), xerr=ordered["auc_sd"].fillna(0), fmt="o", color="grey",
                capsize=3, label="per-fold mean ± sd")
    ax.scatter(ordered["auc"], range(len(labels)), color="black", zorder=3, label="pooled OOF")
    ax.set_yticks(range(len(labels)), labels, fontsize=7)
    ax.set_xlabel("AUC")
    ax.set_title(f"{plugin}: {len(labels)} trials")
    ax.legend(fontsize=7)
    plots.save(fig, path)
