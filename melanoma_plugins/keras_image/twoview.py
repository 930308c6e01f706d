"""The two-view plugin ``twoview``: a lesion's dermoscopic and clinical image (ISIC 2025 / MILK10k) through one
shared EfficientNet (or one per view), late fusion with the metadata and the concept scores, one prediction per
lesion.

Samples are lesions: the rows of one ``lesion_id`` paired by ``image_type`` (``clinical: …`` → the clinical view,
anything else → the dermoscopic view, as the ops decide); a row without ``lesion_id`` is a lesion of one image. A
lesion with one view gets a placeholder image for the other and that view's mask input set to 0, which zeroes the
branch's features and which the head sees. A lesion with several images of one view (HAM10000's repeated
dermoscopy) gives one sample per image of its larger view, each paired with the other view's images in turn; its
prediction is the mean over its samples. Every image row gets its lesion's prediction (``oof.parquet`` stays
image-level), and its class probabilities likewise.

Features beside the images (``meta``): the lesion's encoded sex, age and site and its patient's image count (as
``fusion``), then per view the preprocessing measurements, the seven MONET concept scores and the skin tone
class, each with a 0/1 column saying whether it is there (a missing value is 0 with its flag 0, never a silent 0).

Batches are numpy arrays assembled from the images decoded once per run (``FoldData.per_image``: every training
image at ``image_size`` in memory, S² × 3 bytes each: 10k images at 256 px are 2 GB), on any backend.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pydantic

from melanoma_data import native_logs
from melanoma_data.columns import MONET_COLUMNS
from melanoma_data.errors import DataInputError
from melanoma_data.ops.steps import view_of  # the op policy's reading of image_type: one rule for both
from melanoma_models.api import FitContext, FoldData
from melanoma_models.explanation import Heatmaps
from melanoma_models.submission import check_lesion_folds, present_ids
from melanoma_plugins.keras_image.device import backend
from melanoma_plugins.keras_image.inputs import MEASUREMENTS, meta_features
from melanoma_plugins.keras_image.plugins import FusionParams
from melanoma_plugins.keras_image.training import ImagePlugin

#: The views, in the model's input order (:data:`melanoma_plugins.keras_image.nets.VIEWS`).
VIEWS = ("dermoscopic", "clinical")
#: Per-view numeric columns beside the measurements: (column, scale), each with a presence flag.
CONCEPTS = [*((c, 1.0) for c in MONET_COLUMNS), ("skin_tone_class", 1 / 5)]


def lesion_keys(meta: pd.DataFrame) -> pd.Series:
    """Each row's lesion: ``lesion:<lesion_id>``, or ``image:<image_name>`` (a lesion of one image) where it has none
    (the rule of :func:`melanoma_models.submission.lesion_keys`, prefixed so that no image name meets a lesion id)."""
    own = "image:" + meta["image_name"].astype(str)
    if "lesion_id" not in meta:
        return own.astype(object)
    have = present_ids(meta["lesion_id"])
    return pd.Series(np.where(have, "lesion:" + meta["lesion_id"].astype(str), own), index=meta.index, dtype=object)


@dataclass
class Lesions:
    """The samples of a frame of image rows: per sample its lesion and the image of each view (None: missing)."""

    lesion: list[str]
    images: dict[str, list[str | None]]
    #: every image row's lesion, in the frame's order
    row_lesion: list[str]

    def __len__(self) -> int:
        return len(self.lesion)

    def counts(self) -> dict[str, int]:
        """Samples with both views and with one."""
        d, c = (np.array([n is not None for n in self.images[v]]) for v in VIEWS)
        return {"pairs": int((d & c).sum()), "dermoscopic_only": int((d & ~c).sum()),
                "clinical_only": int((~d & c).sum())}


def lesions(meta: pd.DataFrame) -> Lesions:
    """Pair a frame's image rows into lesion samples (see the module doc).

    Raises:
        DataInputError: a lesion whose images lie in different folds (its views would be split across training
            and validation).
    """
    keys = lesion_keys(meta)
    check_lesion_folds(meta, "fold")
    views = [view_of(t) for t in (meta["image_type"] if "image_type" in meta else [None] * len(meta))]
    by_lesion: dict[str, dict[str, list[str]]] = {}
    for key, view, name in zip(keys, views, meta["image_name"], strict=True):
        by_lesion.setdefault(key, {v: [] for v in VIEWS})[view].append(str(name))
    out = Lesions([], {v: [] for v in VIEWS}, list(keys))
    for key in sorted(by_lesion):
        names = {v: sorted(by_lesion[key][v]) for v in VIEWS}
        for i in range(max(len(n) for n in names.values())):
            out.lesion.append(key)
            for v in VIEWS:
                out.images[v].append(names[v][i % len(names[v])] if names[v] else None)
    return out


def check_lesions_in_one_part(train: pd.DataFrame, valid: pd.DataFrame | None) -> None:
    """Raises :class:`DataInputError` when a lesion has images on both sides of a fold's split."""
    if valid is None or not len(valid):
        return
    a = {k for k in lesion_keys(train) if k.startswith("lesion:")}
    both = sorted(a & {k for k in lesion_keys(valid) if k.startswith("lesion:")})
    if both:
        raise DataInputError(f"{len(both)} lesion(s) have images in both the training and the validation folds "
                             f"(e.g. {both[0].removeprefix('lesion:')}): the two-view model needs a lesion's images "
                             "in one fold")


class TwoViewParams(FusionParams):
    """``twoview`` parameters."""

    variant: Literal["B0", "B1", "B2", "B3", "B4", "B5", "B6", "B7", "V2B0", "V2B1", "V2B2", "V2B3", "V2S",
                     "lite0", "lite1", "lite2", "lite3", "lite4", "small"] = pydantic.Field(
        "lite0", description="backbone: an EfficientNet (B0-B7, V2B0-V2B3, V2S, lite0-lite4), or small (a tiny CNN "
                             "without pretrained weights, for CPU tests and demos; weights=none)")
    weights: str = pydantic.Field(
        "imagenet", description="imagenet (lite0-lite2: the packaged file, no download; B0-B7/V2: the Keras cache), "
                                "none, or a local weights file path")
    backbones: Literal["shared", "separate"] = pydantic.Field(
        "shared", description="shared: one backbone sees both views; separate: one backbone per view")
    input: Literal["auto", "numpy"] = pydantic.Field(
        "auto", description="numpy batches of lesion pairs (any backend; auto means numpy here)")


    @pydantic.model_validator(mode="after")
    def _small_has_no_weights(self) -> TwoViewParams:
        if self.variant == "small" and self.weights != "none":
            raise ValueError("variant=small has no pretrained weights: set weights=none with it")
        return self


class TwoViewPlugin(ImagePlugin):
    """A lesion's two views + metadata and concepts, one prediction per lesion."""

    name = "twoview"
    description = ("a lesion's dermoscopic and clinical image (ISIC 2025 / MILK10k) through a shared or two "
                   "EfficientNets (Lite0 ImageNet weights by default), late fusion with metadata and MONET concepts, "
                   "missing views masked; target=isic2025 for the eleven classes")
    needs = ("images", "metadata")
    Params = TwoViewParams
    uses_meta = True
    #: the image views a lesion sample holds (serve, predict and explain take a lesion's pair of images)
    views = VIEWS
    tf_input = False

    def __init__(self, params: TwoViewParams) -> None:
        super().__init__(params)
        self.views_seen: dict[str, int] = {}

    def patient_context(self) -> bool:
        """The metadata network sees how many images the patient has (as ``fusion``)."""
        return True

    def needs_pairs(self) -> bool:
        """Whether this model was trained on lesions with both views (then a lone image is refused in scoring)."""
        return bool(self.views_seen.get("pairs"))

    def build(self, n_meta: int = 0):
        from melanoma_plugins.keras_image.nets import build_twoview

        p = self.params
        return build_twoview(p.image_size, n_meta, p.variant, None if p.weights == "none" else p.weights, p.dropout,
                             p.meta_dropout, self._augment(p.seed), p.momentum, self.n_out,
                             bn_inference=p.bn_inference, shared=p.backbones == "shared")

    # -- inputs

    def _image_store(self, data: FoldData) -> dict[str, np.ndarray]:
        """Every image of ``data``'s rows at the model's size, by name (decoded once per run, see the module doc)."""
        size = self.params.image_size
        return dict(zip(data.names, data.per_image("images", size, list), strict=True))

    def _row_features(self, meta: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Image name → (the lesion-level part of its features, its view's part)."""
        base = meta_features(meta, self.encodings)
        n_view = len(MEASUREMENTS)
        concepts = []
        for col, scale in CONCEPTS:
            values = (pd.to_numeric(meta[col], errors="coerce").astype(float) if col in meta
                      else pd.Series(np.nan, index=meta.index))
            concepts.append((values.fillna(0.0).to_numpy() * scale)[:, None])
            concepts.append(values.notna().to_numpy(dtype=float)[:, None])
        view = np.hstack([base[:, base.shape[1] - n_view:], *concepts]).astype(np.float32)
        lesion = base[:, :base.shape[1] - n_view]
        return {n: (lesion[i], view[i]) for i, n in enumerate(meta["image_name"])}

    def _sample_features(self, samples: Lesions, rows: dict[str, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """One metadata vector per sample: the lesion part (from its first image), then each view's part (zeros
        for a missing view: its mask says so)."""
        width = len(next(iter(rows.values()))[1])
        out = []
        for i in range(len(samples)):
            names = [samples.images[v][i] for v in VIEWS]
            first = next(n for n in names if n is not None)
            out.append(np.concatenate([rows[first][0], *[rows[n][1] if n is not None else np.zeros(width, np.float32)
                                                         for n in names]]))
        return np.stack(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)

    def _inputs(self, samples: Lesions, idx: np.ndarray, store: dict[str, np.ndarray],
                feats: np.ndarray) -> dict[str, np.ndarray]:
        size = self.params.image_size
        blank = np.zeros((size, size, 3), np.uint8)
        x: dict[str, np.ndarray] = {}
        for v in VIEWS:
            names = [samples.images[v][i] for i in idx]
            x[v] = np.stack([blank if n is None else store[n] for n in names])
            x[f"{v}_view"] = np.array([[0.0 if n is None else 1.0] for n in names], np.float32)
        x["meta"] = feats[idx]
        return x

    def _targets(self, samples: Lesions, meta: pd.DataFrame,
                 labels: dict[str, int] | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Each sample's 0/1 target and (multi-class) class index, from its lesion's images.

        Raises:
            DataInputError: the images of one lesion disagree on the target or the class.
        """
        target = dict(zip(meta["image_name"], meta["target"].fillna(-1).astype(int), strict=True))
        ys, cs = [], []
        for i, key in enumerate(samples.lesion):
            names = [n for n in (samples.images[v][i] for v in VIEWS) if n is not None]
            t = {target[n] for n in names}
            c = {labels[n] for n in names} if labels is not None else {0}
            if len(t) > 1 or len(c) > 1:
                what = "target" if len(t) > 1 else "class"
                raise DataInputError(f"lesion {key.removeprefix('lesion:')}: its images {', '.join(names)} have "
                                     f"different {what}s; a lesion sample needs one label")
            ys.append(t.pop())
            cs.append(c.pop())
        return np.array(ys, np.int64), (np.array(cs, np.int64) if labels is not None else None)

    def _onehot(self, y: np.ndarray, cls: np.ndarray | None) -> np.ndarray:
        return np.eye(self.n_out, dtype=np.float32)[cls] if cls is not None else y.astype(np.float32)

    def _train_batches(self, samples: Lesions, store: dict, feats: np.ndarray, y: np.ndarray, cls: np.ndarray | None,
                       batch: int, class_weight: dict[int, float] | None) -> Iterator[tuple[Any, ...]]:
        """Endless shuffled fixed-size batches of lesion samples (positives repeated ``oversample`` times)."""
        p = self.params
        rng = np.random.default_rng(p.seed)
        pool = np.repeat(np.arange(len(y)), np.where(y == 1, p.oversample, 1))
        target = self._onehot(y, cls)
        classes = cls if cls is not None else y
        queue = np.zeros(0, np.int64)
        while True:
            while len(queue) < batch:
                queue = np.concatenate([queue, rng.permutation(pool)])
            idx, queue = queue[:batch], queue[batch:]
            x = self._inputs(samples, idx, store, feats)
            if class_weight is None:
                yield x, target[idx]
            else:
                yield x, target[idx], np.array([class_weight[int(c)] for c in classes[idx]], np.float32)

    def _valid_batches(self, samples: Lesions, store: dict, feats: np.ndarray, y: np.ndarray, cls: np.ndarray | None,
                       batch: int) -> Iterator[tuple[Any, ...]]:
        target = self._onehot(y, cls)
        while True:
            for start in range(0, len(y), batch):
                idx = np.arange(start, min(start + batch, len(y)))
                yield self._inputs(samples, idx, store, feats), target[idx]

    def _fit_data(self, train: FoldData, valid: FoldData | None, ctx: FitContext, labels: dict[str, int] | None,
                  gbatch: int, use_tf: bool) -> tuple[Any, Any, int | None, int, dict[int, float] | None]:
        """:meth:`ImagePlugin._fit_data` with lesion samples for rows."""
        p = self.params
        check_lesions_in_one_part(train.meta, valid.meta if valid is not None else None)
        frames = [train.meta] + ([valid.meta] if valid is not None else [])
        rows = self._row_features(pd.concat(frames, ignore_index=True))
        tr = lesions(train.meta)
        self.views_seen = tr.counts()
        feats = self._sample_features(tr, rows)
        self.n_meta = feats.shape[1]
        y, cls = self._targets(tr, train.meta, labels)
        store = self._image_store(train)
        n_rows = len(y) + (p.oversample - 1) * int((y == 1).sum())
        steps = p.steps_per_epoch or max(1, n_rows // gbatch)
        class_weight = self._class_weight(y, None if cls is None else list(cls))
        train_ds = self._train_batches(tr, store, feats, y, cls, gbatch, class_weight)
        val_data, val_steps = None, None
        if valid is not None and p.early_stopping == "valid":
            va = lesions(valid.meta)
            vy, vcls = self._targets(va, valid.meta, labels)
            if len(set(vy)) == 2:
                val_steps = math.ceil(len(vy) / gbatch)
                val_data = self._valid_batches(va, self._image_store(valid), self._sample_features(va, rows), vy,
                                               vcls, gbatch)
        return train_ds, val_data, val_steps, steps, class_weight

    def fit(self, train: FoldData, valid: FoldData | None, ctx: FitContext) -> dict[str, Any]:
        history = super().fit(train, valid, ctx)
        history["views"] = dict(self.views_seen)
        return history

    # -- prediction

    def _lesion_outputs(self, data: FoldData) -> tuple[Lesions, np.ndarray]:
        """Every sample's model output ``(n, n_out)`` (``tta`` seeded augmented passes averaged)."""
        p = self.params
        samples = lesions(data.meta.drop(columns=["fold"], errors="ignore"))
        if not len(samples):
            return samples, np.zeros((0, self.n_out))
        feats = self._sample_features(samples, self._row_features(data.meta))
        store = self._image_store(data)
        aug = None
        if p.tta > 1:
            from melanoma_plugins.keras_image.augment import Augment

            aug = self._augment(seed=p.seed + 7919) or Augment(seed=p.seed + 7919, hair=0.0, microscope=0.0)
        total = np.zeros((len(samples), self.n_out))
        import keras

        with native_logs.filtered():
            for _ in range(p.tta):
                for start in range(0, len(samples), p.batch_size):
                    idx = np.arange(start, min(start + p.batch_size, len(samples)))
                    n = len(idx)
                    to = min(p.batch_size, 1 << max(n - 1, 0).bit_length())  # few shapes to compile (as images)
                    x = self._inputs(samples, np.concatenate([idx, np.repeat(idx[-1:], to - n)]), store, feats)
                    if aug is not None:  # the views augmented in the graph: every input a tensor then
                        x = {k: keras.ops.convert_to_tensor(v) for k, v in x.items()}
                        for v in VIEWS:
                            x[v] = aug(keras.ops.cast(x[v], "float32"), training=True)
                    y = np.asarray(self.model(x, training=False), dtype=np.float64).reshape(-1, self.n_out)[:n]
                    total[idx] += y
        return samples, total / p.tta

    def _per_image(self, data: FoldData, samples: Lesions, values: np.ndarray) -> np.ndarray:
        """Each image row's lesion's value (the mean over the lesion's samples), in ``data.names`` order."""
        frame = pd.DataFrame(values).assign(_lesion=samples.lesion).groupby("_lesion").mean()
        return frame.loc[samples.row_lesion].to_numpy(dtype=np.float64)

    def predict(self, data: FoldData) -> np.ndarray:
        """Each image row gets its lesion's probability (see the module doc)."""
        samples, out = self._lesion_outputs(data)
        probs = self._per_image(data, samples, out) if len(samples) else np.zeros((0, self.n_out))
        if not self.classes:
            self._last_classes = None
            return np.clip(probs[:, 0], 0.0, 1.0)
        self._last_classes = pd.DataFrame(probs, columns=self.classes)
        return np.clip(probs[:, np.asarray(self.positive, dtype=bool)].sum(axis=1), 0.0, 1.0)

    def explain(self, data: FoldData) -> Heatmaps | None:
        """Grad-CAM per view: each image row gets the map of its own view in its lesion's sample (the first
        sample holding it); None on a backend other than TensorFlow."""
        if backend() != "tensorflow":
            return None
        from melanoma_plugins.keras_image.gradcam import gradcam_views

        p = self.params
        samples = lesions(data.meta.drop(columns=["fold"], errors="ignore"))
        feats = self._sample_features(samples, self._row_features(data.meta))
        store = self._image_store(data)
        maps: dict[str, np.ndarray] = {}
        for start in range(0, len(samples), p.batch_size):
            idx = np.arange(start, min(start + p.batch_size, len(samples)))
            heat = gradcam_views(self.model, self._inputs(samples, idx, store, feats), self.positive or None)
            for v in VIEWS:
                for j, i in enumerate(idx):
                    name = samples.images[v][i]
                    if name is not None and name not in maps:
                        maps[name] = heat[v][j]
        return Heatmaps(np.stack([maps[n] for n in data.names]))

    # -- persistence

    def save(self, path: Path) -> None:
        self.history = {**self.history, "views": dict(self.views_seen)}
        super().save(path)

    @classmethod
    def load(cls, path: Path, params: TwoViewParams) -> TwoViewPlugin:
        model = super().load(path, params)
        model.views_seen = dict(model.history.get("views") or {})
        return model


__all__ = ["VIEWS", "Lesions", "TwoViewParams", "TwoViewPlugin", "check_lesions_in_one_part",
           "lesion_keys", "lesions", "view_of"]
