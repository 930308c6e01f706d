"""What :meth:`melanoma_models.api.Plugin.explain` returns: one type per kind of reason, each able to average
itself over the fold models and split itself into one row per image.

- :class:`Heatmaps`: image plugins' Grad-CAM maps ``(n, S, S)`` in [0, 1] (averaged, then rescaled per image);
- :class:`Contributions`: tabular plugins' per-feature additive contributions to the log-odds and the baseline;
- :class:`StackReasons`: a stack's base runs' scores and their weights in the mix.

Pure numpy/pandas (no framework import): the explain pages and the web service read these, never dict keys.
A plugin written for the older protocol may still return a plain dict; :func:`as_explanation` turns it into
its type (the only place that looks at the keys).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import numpy as np
import pandas as pd


def scale_maps(cam: np.ndarray) -> np.ndarray:
    """Each map scaled to [0, 1] by its own minimum and maximum (as pytorch-grad-cam does); a flat map, which
    says nothing about where the score came from, becomes all zeros instead of all ones."""
    flat = cam.reshape(len(cam), -1)
    low, span = flat.min(axis=1), flat.max(axis=1) - flat.min(axis=1)
    ok = span > 1e-6 * np.maximum(np.abs(flat).max(axis=1), 1e-12)
    return np.where(ok[:, None, None], (cam - low[:, None, None]) / np.where(ok, span, 1.0)[:, None, None], 0.0)


class _Fields:
    """Read access by field name as well (``why["bias"]``), for callers written against the dict protocol."""

    def __getitem__(self, key: str) -> Any:
        if key not in self:
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in {f.name for f in dataclasses.fields(self)}  # type: ignore[arg-type]


class Explanation(_Fields):
    """Base of the per-kind explanation types (one batch of rows, in ``data.names`` order)."""

    kind: ClassVar[str]

    @classmethod
    def mean(cls, parts: Sequence[Explanation]) -> Explanation:
        """Fold models' explanations of the same rows, averaged."""
        raise NotImplementedError

    def split(self) -> Iterator[Any]:
        """One row object per image, in order."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True, eq=False)
class HeatmapRow(_Fields):
    """One image's Grad-CAM map ``(S, S)`` in [0, 1]."""

    heatmap: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False)
class ContributionRow(_Fields):
    """One image's feature contributions (a Series by feature name) and baseline log-odds."""

    contributions: pd.Series
    bias: float


@dataclasses.dataclass(frozen=True, eq=False)
class StackRow(_Fields):
    """One image's base-run scores (a Series by run name), the weights and the combiner's method."""

    base_scores: pd.Series
    weights: dict[str, float]
    method: str


@dataclasses.dataclass(frozen=True, eq=False)
class Heatmaps(Explanation):
    """Grad-CAM heat maps ``(n, S, S)`` in [0, 1]."""

    heatmaps: np.ndarray
    kind: ClassVar[str] = "heatmaps"

    @classmethod
    def mean(cls, parts: Sequence[Heatmaps]) -> Heatmaps:  # type: ignore[override]
        return cls(scale_maps(np.mean([p.heatmaps for p in parts], axis=0)))

    def split(self) -> Iterator[HeatmapRow]:
        return (HeatmapRow(h) for h in self.heatmaps)


@dataclasses.dataclass(frozen=True, eq=False)
class Contributions(Explanation):
    """Per-feature contributions to each row's log-odds (one column per feature) and each row's baseline."""

    contributions: pd.DataFrame
    bias: np.ndarray
    kind: ClassVar[str] = "contributions"

    @classmethod
    def mean(cls, parts: Sequence[Contributions]) -> Contributions:  # type: ignore[override]
        return cls(sum(p.contributions for p in parts) / len(parts), np.mean([p.bias for p in parts], axis=0))

    def split(self) -> Iterator[ContributionRow]:
        return (ContributionRow(self.contributions.iloc[i], float(self.bias[i])) for i in range(len(self.bias)))


@dataclasses.dataclass(frozen=True, eq=False)
class StackReasons(Explanation):
    """A stack's base runs' scores of each row (one column per run) and their weights in the mix."""

    base_scores: pd.DataFrame
    weights: dict[str, float]
    method: str
    kind: ClassVar[str] = "stack"

    @classmethod
    def mean(cls, parts: Sequence[StackReasons]) -> StackReasons:  # type: ignore[override]
        first = parts[0]
        return cls(sum(p.base_scores for p in parts) / len(parts),
                   {k: float(np.mean([p.weights[k] for p in parts])) for k in first.weights}, first.method)

    def split(self) -> Iterator[StackRow]:
        return (StackRow(self.base_scores.iloc[i], self.weights, self.method) for i in range(len(self.base_scores)))


#: every kind, by the key its older dict form was recognised by
KINDS: dict[str, type[Explanation]] = {"heatmaps": Heatmaps, "contributions": Contributions,
                                       "base_scores": StackReasons}


def as_explanation(value: Explanation | dict[str, Any] | None) -> Explanation | None:
    """A plugin's :meth:`~melanoma_models.api.Plugin.explain` result as its type (a dict of the older protocol
    converted; None, an empty or an unknown dict → None)."""
    if value is None or isinstance(value, Explanation):
        return value
    for key, cls in KINDS.items():
        if key in value:
            names = [f.name for f in dataclasses.fields(cls)]
            return cls(**{n: value[n] for n in names})
    return None


def average(parts: Sequence[Explanation | dict[str, Any] | None]) -> Explanation | None:
    """The fold models' explanations of the same rows averaged (None when the plugin cannot say)."""
    typed = [as_explanation(p) for p in parts]
    if not typed or typed[0] is None:
        return None
    return type(typed[0]).mean(typed)


__all__ = ["ContributionRow", "Contributions", "Explanation", "HeatmapRow", "Heatmaps", "StackReasons", "StackRow",
           "as_explanation", "average", "scale_maps"]
