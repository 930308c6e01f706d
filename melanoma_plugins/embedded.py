"""Frozen embeddings as plugin features: the ``embeddings`` / ``embeddings_pca`` parameters that logreg, svm,
lgbm, xgb, catboost and stack share, and the per-fold transform behind them.

``embeddings=lite0`` names a finished set of embeddings of the run's dataset version (a backbone, a key or
a fingerprint; see ``python cli.py datasets show``); the run resolves it once, records its fingerprint in
``config.json`` and in the run key, and every fold uses exactly that set. ``embeddings_pca=K`` projects
them on the first K principal components fitted on the fold's *training* rows only (the validation and
test rows are only transformed). New images (``predict --images``, ``serve``) get embeddings computed
with the same backbone, weights, size and TTA (:func:`melanoma_plugins.keras_image.embed.embeddings_of`); other
installed weights are refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pydantic

from melanoma_data.embeddings import EmbeddingSpec, list_embeddings, open_embeddings
from melanoma_models.api import FoldData, PluginParams

STATE_FILE = "embeddings.json"
ARRAYS_FILE = "embeddings.npz"


class EmbeddingParams(PluginParams):
    """The embedding parameters (left out of the run id at their defaults)."""

    added_params: ClassVar[frozenset[str]] = frozenset({"embeddings", "embeddings_pca"})

    embeddings: str = pydantic.Field(
        "", description="add frozen embeddings of the dataset version as features: a backbone (lite0), key or "
                        "fingerprint of `python cli.py embed` output (empty: none)")
    embeddings_pca: int = pydantic.Field(
        0, ge=0, le=4096, description="project the embeddings on this many principal components, fitted on each "
                                      "fold's training rows only (0: the raw embeddings)")


def run_inputs(params: Any, dataset: Any) -> dict[str, Any]:
    """The run's embeddings (fingerprint, key and settings), or nothing when it uses none."""
    if not getattr(params, "embeddings", ""):
        return {}
    emb = open_embeddings(dataset, params.embeddings)
    return {"embeddings": {"key": emb.key, "fingerprint": emb.fingerprint, "dim": emb.dim, **emb.spec.as_dict()}}


def prepare_inputs(params: Any, version: str, *, workers: int = 1, progress: bool = False, console: Any = None
                   ) -> dict[str, Any]:
    """:func:`run_inputs`, after embedding the version (native size, no TTA) when ``params.embeddings`` names a
    backbone the version has no embeddings of yet."""
    from melanoma_data.dataset import open_dataset
    from melanoma_data.errors import InputError

    ds = open_dataset(version)
    try:
        return run_inputs(params, ds)
    except InputError:
        from melanoma_plugins.keras_image.embed import NATIVE_SIZE, embed_version

        if params.embeddings not in NATIVE_SIZE or any(
                d.get("backbone") == params.embeddings for d in list_embeddings(ds.url)):
            raise  # not a backbone, or ambiguous / unfinished: nothing to compute here
        embed_version(version, params.embeddings, workers=workers, progress=progress, console=console)
        return run_inputs(params, ds)


class EmbeddingFeatures:
    """One fold's embedding features: which embeddings, and the PCA and scaling fitted on its training rows."""

    def __init__(self, ref: str, pca: int = 0, scale: bool = False) -> None:
        self.ref, self.pca, self.scale = ref, int(pca), scale
        self.info: dict[str, Any] = {}
        self.mean: np.ndarray | None = None
        self.components: np.ndarray | None = None
        self.std: np.ndarray | None = None
        self.mean_after: np.ndarray | None = None

    @property
    def spec(self) -> EmbeddingSpec:
        return EmbeddingSpec(**{k: self.info[k] for k in ("backbone", "weights", "weights_sha256", "size", "tta")})

    @property
    def columns(self) -> list[str]:
        """Feature names: ``pca_000`` … with a PCA, ``emb_0000`` … without."""
        if self.components is not None:
            return [f"pca_{i:03d}" for i in range(len(self.components))]
        return [f"emb_{i:04d}" for i in range(int(self.info["dim"]))]

    def raw(self, data: FoldData) -> np.ndarray:
        """The rows' embeddings (stored ones on the training version, computed for new images)."""
        from melanoma_plugins.keras_image.embed import embeddings_of

        return embeddings_of(data.dataset, data.split, list(data.names), self.spec, self.info["fingerprint"],
                             data.cache).astype(np.float64)

    def fit(self, train: FoldData) -> EmbeddingFeatures:
        """Resolve the embeddings on the training rows' version and fit the PCA / scaling on those rows only."""
        self.info = run_inputs(_Ref(self.ref), train.dataset)["embeddings"]
        x = self.raw(train)
        if self.pca:
            k = min(self.pca, x.shape[0], x.shape[1])
            self.mean = x.mean(axis=0)
            _, _, vt = np.linalg.svd(x - self.mean, full_matrices=False)
            vt = vt[:k]
            signs = np.sign(vt[np.arange(k), np.argmax(np.abs(vt), axis=1)])  # a fixed sign per component
            self.components = vt * np.where(signs == 0, 1.0, signs)[:, None]
            x = self._project(x)
        if self.scale:
            self.std = np.where(x.std(axis=0) > 1e-12, x.std(axis=0), 1.0)
            self.mean_after = x.mean(axis=0)
        return self

    def _project(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean) @ self.components.T if self.components is not None else x

    def transform(self, data: FoldData) -> np.ndarray:
        """The rows' features (``(n, len(columns))``)."""
        x = self._project(self.raw(data))
        if self.std is not None:
            x = (x - self.mean_after) / self.std
        return x

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / STATE_FILE).write_text(json.dumps({"ref": self.ref, "pca": self.pca, "scale": self.scale,
                                                   "info": self.info}, indent=1))
        arrays = {k: v for k, v in (("mean", self.mean), ("components", self.components), ("std", self.std),
                                    ("mean_after", self.mean_after)) if v is not None}
        np.savez(path / ARRAYS_FILE, **arrays)

    @classmethod
    def load(cls, path: Path) -> EmbeddingFeatures | None:
        """What :meth:`save` wrote, or None when the model uses no embeddings."""
        if not (path / STATE_FILE).exists():
            return None
        doc = json.loads((path / STATE_FILE).read_text())
        out = cls(doc["ref"], doc["pca"], doc["scale"])
        out.info = doc["info"]
        arrays = np.load(path / ARRAYS_FILE, allow_pickle=False)
        out.mean = arrays.get("mean")
        out.components = arrays.get("components")
        out.std = arrays.get("std")
        out.mean_after = arrays.get("mean_after")
        return out


class _Ref:
    """A params-like holder of an embeddings reference (for :func:`run_inputs`)."""

    def __init__(self, ref: str) -> None:
        self.embeddings = ref


def fitted(params: Any, train: FoldData, scale: bool = False) -> EmbeddingFeatures | None:
    """The fold's fitted embedding features, or None when ``params.embeddings`` is empty."""
    if not params.embeddings:
        return None
    return EmbeddingFeatures(params.embeddings, params.embeddings_pca, scale).fit(train)


class UsesEmbeddings:
    """Mixin of the plugins whose parameters include :class:`EmbeddingParams`: the run's embeddings are an input
    beside the dataset version (:meth:`Plugin.run_inputs`), embedded first when missing (:meth:`prepare_inputs`)."""

    @classmethod
    def run_inputs(cls, params: Any, dataset: Any) -> dict[str, Any]:
        return run_inputs(params, dataset)

    @classmethod
    def prepare_inputs(cls, params: Any, version: str, **kwargs: Any) -> dict[str, Any]:
        """Embed the version first when ``embeddings`` names a backbone it has no embeddings of."""
        return prepare_inputs(params, version, **kwargs)
