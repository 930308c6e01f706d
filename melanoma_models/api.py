"""The plugin contract: parameters, the data a plugin sees, and the methods it implements.

A plugin is a class registered under the entry-point group ``melanoma.plugins``::

    [project.entry-points."melanoma.plugins"]
    logreg = "melanoma_plugins.baselines:LogRegPlugin"

It declares ``name``, ``description``, ``needs`` (``images``, ``metadata``, ``runs``) and a ``Params``
model (pydantic, unknown keys rejected, values coerced from ``--set key=value`` strings), and
implements :meth:`Plugin.fit`, :meth:`Plugin.predict`, :meth:`Plugin.save` and :meth:`Plugin.load`.
Framework code (TensorFlow, LightGBM, scikit-learn) is imported inside the plugin modules only.
"""

from __future__ import annotations

import abc
import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import pydantic

from melanoma_data import tfrecord
from melanoma_data.dataset import Dataset
from melanoma_data.errors import ConfigError, MelanomaDataError
from melanoma_models.explanation import Explanation


class PluginError(MelanomaDataError):
    """A plugin cannot be found, configured, trained or loaded."""


class PluginParams(pydantic.BaseModel):
    """Base of every plugin's parameter model: frozen, unknown keys are errors, strings coerced."""

    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, validate_default=True)

    seed: int = pydantic.Field(0, ge=0, description="random seed of everything the plugin draws")

    #: Parameters added after run ids were first taken: left out of the run id while at their default, so a
    #: run with unchanged settings keeps its id (a finished run is reused, an unfinished one resumed).
    #: Subclasses and mixins add theirs (every class's ``added_params`` along the MRO counts).
    added_params: ClassVar[frozenset[str]] = frozenset()

    def run_key(self) -> dict[str, Any]:
        """The parameters as the run id hashes them: every value, except :attr:`added_params` at their default."""
        values = self.model_dump(mode="json")
        fields = type(self).model_fields
        added = set().union(*(vars(c).get("added_params", ()) for c in type(self).__mro__))  # mixins' too
        for name in sorted(added):
            if name in values and getattr(self, name) == fields[name].default:
                del values[name]
        return values

    @classmethod
    def build(cls, values: Mapping[str, Any], plugin: str = "") -> PluginParams:
        """Validate ``values`` into the model; every problem becomes one readable line.

        Raises:
            ConfigError: unknown keys (listing the known ones) or invalid values.
        """
        known = set(cls.model_fields)
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown parameter(s) {', '.join(unknown)} for plugin {plugin!r}; "
                              f"known: {', '.join(sorted(known))}")
        try:
            return cls(**values)
        except pydantic.ValidationError as exc:
            problems = []
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"]) or "value"
                problems.append(f"{where}={err.get('input')!r}: {err['msg']}")
            raise ConfigError(f"invalid parameter(s) for plugin {plugin!r}: " + "; ".join(problems)) from None

    @classmethod
    def describe(cls) -> list[tuple[str, str, str]]:
        """(name, default, description) of every parameter, for ``plugins`` and error messages."""
        return [(n, repr(f.default), f.description or "") for n, f in cls.model_fields.items()]


@dataclasses.dataclass
class FoldData:
    """The rows a plugin fits on or predicts for (one CV fold's train or validation part, or the test split).

    Attributes:
        dataset: the dataset version.
        split: ``train`` or ``test``.
        folds: dataset folds included (None = the whole split).
        meta: the rows' metadata (no image bytes), sorted by image name; predictions are aligned
            with it.
        cache: shared between the folds of one run (e.g. decoded thumbnails); keyed by the caller.
        role: ``train``, ``valid`` or ``test``.
    """

    dataset: Dataset
    split: str
    folds: list[int] | None
    meta: pd.DataFrame
    cache: dict[Any, Any]
    role: str = "train"

    @property
    def names(self) -> np.ndarray:
        """Image names, in the order predictions must follow."""
        return self.meta["image_name"].to_numpy()

    @property
    def target(self) -> np.ndarray:
        """0/1 labels (-1 where unknown), aligned with :attr:`meta`."""
        return self.meta["target"].fillna(-1).to_numpy(dtype=np.int64)

    def iter_batches(self, **kwargs: Any):
        """:meth:`Dataset.iter_batches` restricted to these rows' split and folds."""
        return self.dataset.iter_batches(self.split, self.folds, **kwargs)

    def per_image(self, key: str, size: int, compute: Callable[[np.ndarray], Sequence[Any]]) -> list[Any]:
        """``compute``'s value for every row's image at ``size`` px, aligned with :attr:`meta`, cached per run.

        ``compute`` maps a uint8 batch ``(B, size, size, 3)`` to one value per image. The first call
        streams the whole split once and caches every image's value by name under ``(key, size,
        split)`` (the other folds' rows are asked for next); later calls only look up.
        """
        store: dict[str, Any] = self.cache.setdefault((key, size, self.split), {})
        if any(n not in store for n in self.names):
            for batch in self.dataset.iter_batches(self.split, None, batch_size=256, image_size=size,
                                                   columns=("image_name",)):
                todo = [i for i, n in enumerate(batch["image_name"]) if n not in store]
                if todo:
                    for i, value in zip(todo, compute(batch["image"][todo]), strict=True):
                        store[batch["image_name"][i]] = value
        return [store[n] for n in self.names]

    def images(self, size: int) -> np.ndarray:
        """All images of these rows at ``size`` px (uint8, aligned with :attr:`meta`), cached per run.

        Only for small sizes (baselines): 33k images at 32 px are ~100 MB.
        """
        found = self.per_image("images", size, list)
        return np.stack(found) if found else np.zeros((0, size, size, 3), np.uint8)


@dataclasses.dataclass
class FitContext:
    """What the runner tells a plugin about the run.

    Attributes:
        run_dir: the run directory (plugins write only inside their fold directory).
        fold: the CV fold being trained (-1 for a final fit on everything).
        encodings: the dataset's label encodings.
        progress: ``progress(done, total, message)`` for epochs/iterations; may be a no-op.
        base_runs: other runs' directories (for plugins that need ``runs``).
        target: the dataset's target definition (``melanoma`` or ``malignant``): what ``predict`` returns
            the probability of (a multi-class model sums the classes it counts, see
            :data:`melanoma_data.ingest.TARGET_CLASSES`).
        run_cache: state a plugin keeps across the folds of one run (see the field).
    """

    run_dir: Path
    fold: int
    encodings: dict[str, Any]
    progress: Callable[[int, int, str], None] = lambda done, total, msg: None
    base_runs: list[Path] = dataclasses.field(default_factory=list)
    target: str = "melanoma"
    #: One dict shared by every fold of one ``fit`` call (the runner's): what a plugin may reuse across the
    #: folds of a run, e.g. a compiled Keras graph; never shared between runs. None outside the runner.
    run_cache: dict[str, Any] | None = None


class Plugin(abc.ABC):
    """A model that trains on a dataset version and predicts the probability of melanoma."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs: ClassVar[tuple[str, ...]] = ("metadata",)
    Params: ClassVar[type[PluginParams]] = PluginParams

    def __init__(self, params: PluginParams) -> None:
        self.params = params

    @abc.abstractmethod
    def fit(self, train: FoldData, valid: FoldData | None, ctx: FitContext) -> dict[str, Any]:
        """Train on ``train`` (``valid`` may be used for early stopping only). Returns a small history."""

    @abc.abstractmethod
    def predict(self, data: FoldData) -> np.ndarray:
        """Probabilities of melanoma in [0, 1], one per row of ``data.meta``, in that order."""

    @classmethod
    def run_inputs(cls, params: PluginParams, dataset: Dataset) -> dict[str, Any]:
        """Inputs beside the dataset version that the run depends on (e.g. the embeddings' fingerprint): recorded
        in the run's config and part of its run key when not empty. Resolved once, before any fold trains."""
        return {}

    @classmethod
    def prepare_inputs(cls, params: PluginParams, version: str, *, workers: int = 1, progress: bool = False,
                       console: Any = None) -> dict[str, Any]:
        """Compute the inputs beside the dataset version that ``params`` name and that are not there yet (e.g.
        embeddings), then return :meth:`run_inputs`. The default has nothing to compute."""
        from melanoma_data.dataset import open_dataset

        return cls.run_inputs(params, open_dataset(version))

    def patient_context(self) -> bool:
        """True when a row's features depend on the same patient's other images (scoring an image without
        them changes its features)."""
        return False

    def explain(self, data: FoldData) -> Explanation | None:
        """Why each row got its score, or None when the plugin cannot say: one of the types in
        :mod:`melanoma_models.explanation` — :class:`Heatmaps` (image plugins: ``(n, S, S)`` in [0, 1], where the
        score came from), :class:`Contributions` (one column per named feature, each row's additive contribution
        to its log-odds, and the baseline) or :class:`StackReasons`. A dict of the older protocol
        (``{"heatmaps": ...}``, ``{"contributions": ..., "bias": ...}``) is still accepted."""
        return None

    def class_probabilities(self) -> pd.DataFrame | None:
        """Per-class probabilities behind the last :meth:`predict` (rows in its order, one column per
        class), for plugins trained on several classes; None for the others. The runner saves them."""
        return None

    @abc.abstractmethod
    def save(self, path: Path) -> None:
        """Write the fitted model into the folder ``path`` (no pickle where the library allows)."""

    @classmethod
    @abc.abstractmethod
    def load(cls, path: Path, params: PluginParams) -> Plugin:
        """Read a model written by :meth:`save`."""


#: The label encodings a saved model keeps (what ``encode_metadata`` needs to predict).
SAVED_ENCODINGS = ("sex", "anatom_site_general_challenge")


def write_model_doc(path: Path, plugin: str, fields: Mapping[str, Any], encodings: Mapping[str, Any],
                    name: str = "model.json") -> None:
    """Write a saved model's JSON description (``path`` is created): plugin name, ``fields``, encodings."""
    path.mkdir(parents=True, exist_ok=True)
    doc = {"plugin": plugin, **fields, "encodings": {k: v for k, v in encodings.items() if k in SAVED_ENCODINGS}}
    (path / name).write_text(json.dumps(doc, indent=1, default=float))


def read_model_doc(path: Path, plugin: str, name: str = "model.json") -> dict[str, Any]:
    """Read what :func:`write_model_doc` wrote, refusing a model saved by another plugin."""
    doc = json.loads((path / name).read_text())
    if doc.get("plugin") != plugin:
        raise ValueError(f"{path} holds a {doc.get('plugin')!r} model, not {plugin!r}")
    return doc


def check_predictions(pred: Any, n: int, plugin: str) -> np.ndarray:
    """Validate a plugin's output: ``n`` finite probabilities in [0, 1]."""
    arr = np.asarray(pred, dtype=np.float64).reshape(-1)
    if arr.shape != (n,):
        raise PluginError(f"plugin {plugin!r} returned {arr.shape[0]} predictions for {n} rows")
    if not np.isfinite(arr).all():
        raise PluginError(f"plugin {plugin!r} returned non-finite predictions")
    if arr.min(initial=0.0) < 0 or arr.max(initial=0.0) > 1:
        raise PluginError(f"plugin {plugin!r} returned values outside [0, 1] (min {arr.min()}, max {arr.max()})")
    return arr


def encode_metadata(meta: pd.DataFrame, encodings: Mapping[str, Any], columns: Iterable[str] = (
        "sex", "age_approx", "anatom_site_general_challenge")) -> np.ndarray:
    """Metadata → numeric matrix: one-hot sex/site (plus a missing column), age/100 (missing → 50) and a flag.

    Uses only the fixed vocabularies of the dataset's encodings: nothing is fitted, so nothing leaks.
    """
    cols = []
    for col in columns:
        if col == "age_approx":
            age = pd.to_numeric(meta["age_approx"], errors="coerce").astype(float)
            cols.append((age.fillna(50.0) / 100.0).to_numpy()[:, None])  # a constant: no statistic to leak
            cols.append(age.isna().to_numpy(dtype=float)[:, None])
        else:
            # one column per value in the vocabulary's stored order, the last for missing or unknown
            position = {v: i for i, v in enumerate(encodings.get(col, {}))}
            index = np.asarray(tfrecord.codes(position, meta[col].astype(object)), dtype=np.int64)
            onehot = np.zeros((len(meta), len(position) + 1))
            onehot[np.arange(len(meta)), np.where(index < 0, len(position), index)] = 1.0
            cols.append(onehot)
    return np.hstack(cols) if cols else np.zeros((len(meta), 0))
