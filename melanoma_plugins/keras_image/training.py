"""What every Keras plugin shares: its parameters and the training loop.

Training: warm-up then cosine/exponential decay, gradient clipping, focal loss or BCE with label smoothing,
class weights or oversampling, early stopping with best-epoch selection on validation AUC (or none).
A pretrained backbone trains by the transfer recipe (head first with the backbone frozen, then fine-tuning
with BatchNorm in inference mode) in one compiled graph, and the folds of one run share that graph (each
fold resets weights, seed states and optimizer state into it). Prediction averages ``tta`` passes of seeded
test-time augmentation. Models are saved in the ``.keras``
format and loaded with ``safe_mode=True`` (no code executed).
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydantic

from melanoma_data import native_logs
from melanoma_data.errors import DataInputError
from melanoma_models.api import FitContext, FoldData, Plugin, PluginParams, read_model_doc, write_model_doc
from melanoma_models.explanation import Heatmaps
from melanoma_plugins.keras_image.device import accelerator, backend, precision_policy, select_strategy
from melanoma_plugins.keras_image.inputs import (
    meta_features,
    numpy_batches,
    numpy_predict_batches,
    numpy_valid_batches,
    tf_train_dataset,
    tf_valid_dataset,
)


class KerasParams(PluginParams):
    """Training parameters shared by the Keras plugins."""

    image_size: int = pydantic.Field(256, ge=16, le=1024, description="input side in pixels (images are resized)")
    batch_size: int = pydantic.Field(32, ge=1, description="batch size per replica")
    epochs: int = pydantic.Field(12, ge=1, description="maximum epochs")
    steps_per_epoch: int = pydantic.Field(0, ge=0, description="0 = one pass over the (oversampled) training rows")
    lr: float = pydantic.Field(1e-3, gt=0, description="peak learning rate (scaled by the number of replicas)")
    min_lr: float = pydantic.Field(1e-6, ge=0, description="floor of the decay")
    warmup_epochs: float = pydantic.Field(1.0, ge=0, description="linear warm-up length")
    schedule: Literal["cosine", "exponential", "constant"] = pydantic.Field("cosine", description="decay after warm-up")
    decay_rate: float = pydantic.Field(0.8, gt=0, le=1, description="per-epoch factor of the exponential decay")
    loss: Literal["focal", "bce"] = pydantic.Field("focal", description="focal loss or binary cross-entropy")
    focal_alpha: float = pydantic.Field(0.75, gt=0, lt=1, description="focal α: weight of the melanoma class")
    focal_gamma: float = pydantic.Field(2.0, ge=0, description="focal γ: down-weights easy examples")
    label_smoothing: float = pydantic.Field(0.0, ge=0, lt=0.5, description="label smoothing")
    clipnorm: float = pydantic.Field(1.0, ge=0, description="gradient clipping by norm (0 = off)")
    patience: int = pydantic.Field(3, ge=1, description="early-stopping patience (epochs without better val AUC)")
    early_stopping: Literal["valid", "none"] = pydantic.Field(
        "valid", description="valid: stop on, and keep the best epoch of, the held-out fold's AUC (optimistic: "
                             "the fold that is then scored chose the epoch); none: train every epoch, no selection")
    class_weight: Literal["none", "balanced"] = pydantic.Field("none", description="per-class loss weights")
    oversample: int = pydantic.Field(1, ge=1, le=100, description="repeat each melanoma this many times per epoch")
    augment: bool = pydantic.Field(True, description="training-time augmentation")
    rotate: float = pydantic.Field(20.0, ge=0, le=45, description="max rotation (degrees; zoomed: no black edges)")
    zoom: float = pydantic.Field(0.15, ge=0, le=1, description="extra random zoom/crop")
    colour_jitter: float = pydantic.Field(0.1, ge=0, le=0.5, description="brightness/contrast/saturation jitter")
    hue: float = pydantic.Field(0.02, ge=0, le=0.5, description="hue jitter (fraction of a turn)")
    holes: int = pydantic.Field(0, ge=0, le=16, description="coarse-dropout squares per image")
    hair: float = pydantic.Field(0.3, ge=0, le=1, description="probability of simulated hair")
    microscope: float = pydantic.Field(0.2, ge=0, le=1, description="probability of a simulated microscope field")
    tta: int = pydantic.Field(1, ge=1, le=64, description="test-time augmentation passes (1 = none)")
    input: Literal["auto", "tfdata", "numpy"] = pydantic.Field(
        "auto", description="tf.data over TFRecords (TensorFlow backend) or numpy batches (any backend)")
    precision: Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"] = pydantic.Field(
        "auto", description="auto: bfloat16 mixed precision on TPU/GPU, float32 on CPU")
    device: Literal["auto", "tpu", "gpu", "cpu", "mirrored"] = pydantic.Field(
        "auto", description="distribution strategy choice; mirrored = MirroredStrategy over every logical GPU, "
                            "else every logical CPU")
    steps_per_execution: int = pydantic.Field(0, ge=0, description="0 = auto (16 on accelerators, 1 on CPU)")
    verbose: int = pydantic.Field(0, ge=0, le=2, description="Keras fit verbosity")
    target: Literal["binary", "diagnosis", "isic2025"] = pydantic.Field(
        "binary", description="binary: the dataset's target; diagnosis: a softmax over the nine diagnosis classes "
                              "(MEL NV BCC AK BKL DF VASC SCC UNK, the 2020 winner's), predicting the sum of the "
                              "classes the target counts (MEL; MEL+BCC+SCC for 'malignant'); isic2025: a softmax "
                              "over the eleven ISIC 2025 classes (diagnosis_2025), predicting MEL ('melanoma') or "
                              "BCC+MAL_OTH+MEL+SCCKA ('malignant')")


class ImagePlugin(Plugin):
    needs = ("images",)
    uses_meta = False
    #: whether ``input=auto`` reads tf.data over the TFRecords on the TensorFlow backend (else numpy batches)
    tf_input = True

    def __init__(self, params: KerasParams) -> None:
        super().__init__(params)
        self.model = None
        self.encodings: dict[str, Any] = {}
        self.history: dict[str, Any] = {}
        #: ``target=diagnosis``: the classes of the softmax head, and which of them the target counts
        self.classes: list[str] = []
        self.positive: list[bool] = []
        self._last_classes = None
        self._graph_reused = False

    @staticmethod
    def _features_by_name(meta: Any, encodings: dict[str, Any]) -> dict[str, np.ndarray]:
        """The fusion model's metadata features of each row, by image name (the inputs look them up by name)."""
        return dict(zip(meta["image_name"], meta_features(meta, encodings), strict=True))

    @property
    def n_out(self) -> int:
        """Units of the head: 1 (sigmoid) or one per diagnosis class (softmax)."""
        return len(self.classes) or 1

    def _set_classes(self, definition: str) -> None:
        from melanoma_data.ingest import DIAGNOSIS_CLASSES, TARGET_CLASSES
        from melanoma_data.vocabulary import CLASSES_2025, MALIGNANT_2025

        if self.params.target == "diagnosis":
            self.classes = list(DIAGNOSIS_CLASSES)
            self.positive = [c in TARGET_CLASSES[definition] for c in self.classes]
        elif self.params.target == "isic2025":
            self.classes = list(CLASSES_2025)
            counted = ("MEL",) if definition == "melanoma" else MALIGNANT_2025
            self.positive = [c in counted for c in self.classes]
        else:
            self.classes, self.positive = [], []

    def _labels(self, frames: list, definition: str) -> dict[str, int] | None:
        """Image name → class index: ``target=diagnosis`` from the diagnosis, else from the target;
        ``target=isic2025`` from ``diagnosis_2025`` (else the class of the diagnosis text, else MEL for a
        positive row under the ``melanoma`` definition).

        Raises:
            DataInputError: ``target=isic2025`` and labelled rows without an ISIC 2025 class (listed).
        """
        if not self.classes:
            return None
        from melanoma_data.ingest import diagnosis_class

        out: dict[str, int] = {}
        if self.params.target == "isic2025":
            return self._labels_2025(frames, definition)
        for meta in frames:
            diagnosis = meta["diagnosis"] if "diagnosis" in meta else [None] * len(meta)
            for name, d, t in zip(meta["image_name"], diagnosis, meta["target"], strict=True):
                out[name] = self.classes.index(diagnosis_class(d, t, definition) or "UNK")
        return out

    def _labels_2025(self, frames: list, definition: str) -> dict[str, int]:
        import pandas as pd

        from melanoma_data.vocabulary import fill_2025

        out: dict[str, int] = {}
        missing: list[str] = []
        for meta in frames:
            classes = fill_2025(meta) if len(meta) else pd.Series(dtype=object)
            for name, c, t in zip(meta["image_name"], classes, meta["target"], strict=True):
                c = c if isinstance(c, str) and c in self.classes else None
                if c is None and definition == "melanoma" and not pd.isna(t) and int(t) == 1:
                    c = "MEL"
                if c is None:
                    missing.append(str(name))
                    continue
                out[name] = self.classes.index(c)
        if missing:
            raise DataInputError(f"target=isic2025: {len(missing)} training image(s) have no ISIC 2025 class "
                                 f"(no diagnosis_2025 and no diagnosis the class vocabulary maps to one), e.g. "
                                 f"{', '.join(missing[:5])}; label them or use target=diagnosis or binary")
        return out
    # -- model

    def _augment(self, seed: int):
        from melanoma_plugins.keras_image.augment import Augment

        p = self.params
        if not p.augment:
            return None
        return Augment(rotate=p.rotate, zoom=p.zoom, brightness=p.colour_jitter, contrast=p.colour_jitter,
                       saturation=p.colour_jitter, hue=p.hue, holes=p.holes, hair=p.hair, microscope=p.microscope,
                       seed=seed, name="augment")

    def build(self, n_meta: int = 0):  # pragma: no cover - abstract
        raise NotImplementedError

    def _backbone_layer(self):
        """The model's (first) EfficientNet backbone, or None."""
        return next(iter(self._backbone_layers()), None)

    def _backbone_layers(self, model: Any = None) -> list:
        """Every EfficientNet backbone of ``model`` (default: the plugin's; the two-view model may have one per
        view)."""
        return [layer for layer in (model or self.model).layers if layer.name.startswith("efficientnet")]

    def _compile(self, steps_per_epoch: int, epochs_total: int, offset: int, spe: int) -> None:
        import keras

        from melanoma_plugins.keras_image.schedule import WarmupDecay

        p = self.params
        schedule = WarmupDecay(p.lr * self.replicas, total_steps=steps_per_epoch * epochs_total,
                               warmup_steps=int(p.warmup_epochs * steps_per_epoch), kind=p.schedule, min_lr=p.min_lr,
                               decay_rate=p.decay_rate, steps_per_epoch=steps_per_epoch, offset=offset)
        opt = keras.optimizers.Adam(learning_rate=schedule, clipnorm=p.clipnorm or None)
        self._compile_with(opt, spe)

    def _compile_with(self, opt: Any, spe: int) -> None:
        """Compile the model with ``opt``: the loss of the params and the AUC of the target's classes (averaged
        when several)."""
        import keras

        from melanoma_plugins.keras_image.losses import make_loss

        p = self.params
        if self.classes:
            auc = keras.metrics.AUC(name="auc", multi_label=True, num_labels=len(self.classes),
                                    label_weights=[float(x) for x in self.positive])
        else:
            auc = keras.metrics.AUC(name="auc")
        loss = make_loss(p.loss, p.focal_alpha, p.focal_gamma, p.label_smoothing, self.positive or None)
        self.model.compile(optimizer=opt, loss=loss, metrics=[auc], steps_per_execution=spe, jit_compile="auto")

    def _trainable_setup(self, model, head_epochs: int) -> dict[str, float]:
        """Sets what trains (the transfer recipe: BatchNorm layers of an inference-mode backbone and the blocks
        below ``unfreeze_blocks`` never do) and returns the gated variables: backbone variable path → its
        stage-2 learning-rate multiplier (layer-wise decay), empty without a stage 1."""
        backbones = self._backbone_layers(model)
        if not backbones or not head_epochs:
            return {}
        gated: dict[str, float] = {}
        for bb in backbones:  # one, or (the two-view model with a backbone per view) one per view
            gated.update(self._gate_backbone(bb))
        return gated

    def _gate_backbone(self, bb) -> dict[str, float]:
        import keras

        p = self.params
        blocks = sorted({la.name.split("_")[0] for la in bb.layers if la.name.startswith("block")},
                        key=lambda n: (int(n[5:-1]), n[-1]))
        keep = blocks[-p.unfreeze_blocks:] if p.unfreeze_blocks else blocks
        depth = {name: len(blocks) - 1 - i for i, name in enumerate(blocks)}  # 0 = the top block
        gated: dict[str, float] = {}
        for layer in bb.layers:
            block = layer.name.split("_")[0]
            frozen = (p.bn_inference and isinstance(layer, keras.layers.BatchNormalization)) or (
                block.startswith("block") and block not in keep) or (
                not block.startswith("block") and not layer.name.startswith("top") and p.unfreeze_blocks > 0)
            layer.trainable = not frozen
            if not frozen:
                d = depth.get(block, len(blocks) if not layer.name.startswith("top") else -1) + 1
                for v in layer.trainable_weights:
                    gated[v.path] = float(p.layer_decay ** d) if p.layer_decay < 1 else 1.0
        return gated

    def _schedule_values(self, steps: int, head_epochs: int) -> dict[str, float]:
        p = self.params
        head_steps = head_epochs * steps
        transfer = head_epochs > 0
        return {"lr": (p.finetune_lr if transfer else p.lr) * self.replicas, "total_steps": p.epochs * steps,
                "warmup_steps": int(p.warmup_epochs * steps), "min_lr": p.min_lr, "decay_rate": p.decay_rate,
                "steps_per_epoch": steps, "head_steps": head_steps, "head_lr": p.lr * self.replicas}

    def _prepare(self, scope, steps: int, spe: int, head_epochs: int, run_cache: dict | None, use_tf: bool) -> None:
        """Builds this fold's model (seeded: its initial weights) and compiles it, or, when an earlier fold of the
        same run compiled the same graph, copies the fresh weights and seed states into that model and resets
        its optimizer: the fold trains exactly as if it had compiled its own, without paying the compilation."""
        import json

        import keras

        p = self.params
        with scope():
            fresh = self.build(self.n_meta)
            gated = self._trainable_setup(fresh, head_epochs)
        key = json.dumps([self.name, p.model_dump(mode="json"), self.n_meta, self.n_out, self.replicas, use_tf, spe,
                          head_epochs > 0, keras.backend.backend()], sort_keys=True, default=str)
        cached = run_cache.get("keras_graph") if run_cache is not None else None
        values = self._schedule_values(steps, head_epochs)
        self._graph_reused = bool(cached and cached["key"] == key)
        if self._graph_reused:
            model = cached["model"]
            self._trainable_setup(model, head_epochs)
            model.set_weights(fresh.get_weights())
            for src, dst in zip(_seed_states(fresh), _seed_states(model), strict=True):
                dst.assign(src.value)
            for var, value in zip(model.optimizer.variables, cached["optimizer"], strict=True):
                var.assign(value)
            model.optimizer.inner_optimizer.set_schedule(**values) if hasattr(model.optimizer, "inner_optimizer") \
                else model.optimizer.set_schedule(**values)
            self.model = model
            return
        self.model = fresh
        with scope():
            self._compile_once(values, gated, spe)
            opt = self.model.optimizer
            opt.build(self.model.trainable_variables)
        if run_cache is not None:
            run_cache["keras_graph"] = {"key": key, "model": self.model,
                                        "optimizer": [keras.ops.convert_to_numpy(v.value) for v in opt.variables]}

    def _compile_once(self, values: dict[str, float], gated: dict[str, float], spe: int) -> None:
        from melanoma_plugins.keras_image.schedule import RunAdam

        p = self.params
        opt = RunAdam(kind=p.schedule, gated=gated, clipnorm=p.clipnorm or None, **values)
        self._compile_with(opt, spe)

    def _fit_data(self, train: FoldData, valid: FoldData | None, ctx: FitContext, labels: dict[str, int] | None,
                  gbatch: int, use_tf: bool) -> tuple[Any, Any, int | None, int, dict[int, float] | None]:
        """The training batches, the validation batches (None without early stopping) and their steps, the steps
        per epoch and the class weights (given to Keras on the tf.data path; the numpy batches carry them as
        sample weights); sets ``n_meta``. One row per image here; the two-view plugin's rows are lesions."""
        p = self.params
        y = train.target
        n_rows = len(y) + (p.oversample - 1) * int((y == 1).sum())
        steps = p.steps_per_epoch or max(1, n_rows // gbatch)
        feats = None
        if self.uses_meta:
            frames = [train.meta] + ([valid.meta] if valid is not None else [])
            import pandas as pd

            allm = pd.concat(frames, ignore_index=True)
            feats = self._features_by_name(allm, ctx.encodings)
        self.n_meta = len(next(iter(feats.values()))) if feats else 0
        class_weight = self._class_weight(y, None if labels is None else [labels[n] for n in train.meta["image_name"]])
        if use_tf:
            train_ds = tf_train_dataset(train, p.image_size, gbatch, p.seed, p.oversample, feats, labels, self.n_out)
        else:
            train_ds = numpy_batches(train, p.image_size, gbatch, p.seed, p.oversample, feats, class_weight,
                                      labels, self.n_out)
        val_data, val_steps = None, None
        if valid is not None and len(set(valid.target)) == 2 and p.early_stopping == "valid":
            val_steps = math.ceil(len(valid.meta) / gbatch)
            val_data = (tf_valid_dataset(valid, p.image_size, gbatch, feats, labels, self.n_out) if use_tf
                        else numpy_valid_batches(valid, p.image_size, gbatch, feats, labels, self.n_out))
        return train_ds, val_data, val_steps, steps, class_weight

    def _class_weight(self, y: np.ndarray, classes: list[int] | None) -> dict[int, float] | None:
        """``class_weight=balanced``: each class present weighs the same in total (positives counted
        ``oversample`` times); ``classes``: each training row's class index (multi-class targets). None otherwise."""
        p = self.params
        if p.class_weight != "balanced":
            return None
        if classes is not None:
            seen = np.bincount(classes, minlength=self.n_out).astype(float)
            seen[[i for i, pos in enumerate(self.positive) if pos]] *= p.oversample
            present = seen > 0
            return {i: float(seen.sum() / (present.sum() * seen[i])) if seen[i] else 1.0 for i in range(self.n_out)}
        pos = max(int((y == 1).sum()) * p.oversample, 1)
        neg = max(int((y == 0).sum()), 1)
        return {0: (pos + neg) / (2 * neg), 1: (pos + neg) / (2 * pos)}

    # -- training

    def fit(self, train: FoldData, valid: FoldData | None, ctx: FitContext) -> dict[str, Any]:
        backend()
        import keras

        p = self.params
        with native_logs.filtered():  # it imports TensorFlow, where installed, to seed it too
            _seed_everything(p.seed + 1000 * max(ctx.fold, 0), p.seed, ctx.run_cache)
        self.encodings = ctx.encodings
        self._set_classes(ctx.target)
        self.target_definition = ctx.target
        labels = self._labels([train.meta] + ([valid.meta] if valid is not None else []), ctx.target)
        where = accelerator()
        policy = precision_policy(p.precision, where)
        keras.mixed_precision.set_dtype_policy(policy)
        strategy, kind = select_strategy(p.device)
        self.replicas = strategy.num_replicas_in_sync if strategy is not None else 1
        use_tf = p.input == "tfdata" or (p.input == "auto" and self.tf_input and backend() == "tensorflow")
        if use_tf and backend() != "tensorflow":
            raise DataInputError("input=tfdata needs the TensorFlow backend; use input=numpy with KERAS_BACKEND=jax")
        gbatch = p.batch_size * self.replicas
        spe_exec = p.steps_per_execution or (16 if where in ("tpu", "gpu") else 1)
        scope = strategy.scope if strategy is not None else contextlib.nullcontext
        train_ds, val_data, val_steps, steps, class_weight = self._fit_data(train, valid, ctx, labels, gbatch, use_tf)
        transfer = bool(getattr(p, "transfer", False))
        freeze = getattr(p, "freeze_epochs", 0)
        head_epochs = min(freeze or 2, p.epochs) if transfer else 0
        callbacks = [_ProgressCallback(ctx, p.epochs)]
        best_epoch = _BestEpoch(p.patience, head_epochs)
        if val_data is not None:
            callbacks.append(best_epoch)
        hist: dict[str, list[float]] = {}
        if freeze and not transfer:  # plain recipe with a frozen start: two compilations, as before
            with scope():
                self.model = self.build(self.n_meta)
            phases = [(0, min(freeze, p.epochs), False), (min(freeze, p.epochs), p.epochs, True)]
        else:  # one compiled graph for the whole fit (both transfer stages), reused by later folds of the run
            self._prepare(scope, steps, spe_exec, head_epochs, ctx.run_cache, use_tf)
            phases = [(0, p.epochs, None)]
        for start, stop, trainable in phases:
            if stop <= start:
                continue
            if trainable is not None:
                with scope():
                    for bb in self._backbone_layers():
                        bb.trainable = trainable
                    self._compile(steps, p.epochs, start * steps, spe_exec)
            with native_logs.filtered():
                h = self.model.fit(train_ds, epochs=stop, initial_epoch=start, steps_per_epoch=steps,
                                   validation_data=val_data, validation_steps=val_steps,
                                   class_weight=class_weight if use_tf else None,
                                   callbacks=callbacks, shuffle=False,
                                   verbose=p.verbose)
            for k, v in h.history.items():
                hist.setdefault(k, []).extend(float(x) for x in v)
        best = best_epoch.best_epoch if best_epoch.best_epoch is not None else len(hist.get("loss", [])) - 1
        self.history = {"strategy": kind, "backend": backend(), "accelerator": where, "precision": policy,
                        "target": p.target, "classes": self.classes,
                        "input": "tfdata" if use_tf else "numpy", "global_batch": gbatch, "steps_per_epoch": steps,
                        "epochs_run": len(hist.get("loss", [])), "best_epoch": best, "history": hist,
                        "recipe": "transfer" if transfer else "plain", "head_epochs": head_epochs,
                        "graph_reused": self._graph_reused, "epoch_seconds": list(callbacks[0].seconds)}
        return self.history

    # -- prediction

    def _predictor(self):
        """The model, or (tta > 1) the model behind a seeded augmentation run in training mode."""
        import keras

        p = self.params
        if p.tta <= 1:
            return lambda x: self.model(x, training=False)
        aug = self._augment(seed=p.seed + 7919)
        if aug is None:
            from melanoma_plugins.keras_image.augment import Augment

            aug = Augment(seed=p.seed + 7919, hair=0.0, microscope=0.0)

        def run(x):
            if isinstance(x, dict):
                return self.model({"meta": keras.ops.convert_to_tensor(x["meta"]),
                                   "image": aug(keras.ops.cast(x["image"], "float32"), training=True)},
                                  training=False)
            return self.model(aug(keras.ops.cast(x, "float32"), training=True), training=False)

        return run

    def predict(self, data: FoldData) -> np.ndarray:
        """Probabilities aligned with ``data.meta``; ``tta`` seeded augmented passes averaged (deterministic)."""
        p = self.params
        feats = None
        if self.uses_meta:
            feats = self._features_by_name(data.meta, self.encodings)
        run = self._predictor()  # a fresh seeded augmentation each call: same input, same output
        total: dict[str, np.ndarray] = {}
        with native_logs.filtered():
            for _ in range(p.tta):
                for x, names, n in numpy_predict_batches(data, p.image_size, p.batch_size, feats):
                    y = np.asarray(run(x), dtype=np.float64).reshape(-1, self.n_out)[:n]
                    for name, v in zip(names, y, strict=True):
                        total[name] = total[name] + v if name in total else v.copy()
        probs = np.stack([total[n] / p.tta for n in data.names]) if len(data.names) else np.zeros((0, self.n_out))
        if not self.classes:
            self._last_classes = None
            return np.clip(probs[:, 0], 0.0, 1.0)
        import pandas as pd

        self._last_classes = pd.DataFrame(probs, columns=self.classes)
        return np.clip(probs[:, np.asarray(self.positive, dtype=bool)].sum(axis=1), 0.0, 1.0)

    def class_probabilities(self):
        """The softmax over the diagnosis classes behind the last :meth:`predict` (``target=diagnosis``)."""
        return self._last_classes

    def explain(self, data: FoldData) -> Heatmaps | None:
        """Grad-CAM heat maps ``(n, S, S)`` in [0, 1] at the model's input size, rows as ``data.names``; None on
        a backend other than TensorFlow (the Grad-CAM here takes TensorFlow's gradient tape)."""
        if backend() != "tensorflow":
            return None
        from melanoma_plugins.keras_image.gradcam import gradcam

        p = self.params
        feats = None
        if self.uses_meta:
            feats = self._features_by_name(data.meta, self.encodings)
        maps: dict[str, np.ndarray] = {}
        for x, names, n in numpy_predict_batches(data, p.image_size, p.batch_size, feats):
            images, meta = (x["image"], x["meta"]) if isinstance(x, dict) else (x, None)
            for name, heat in zip(names, gradcam(self.model, images, meta, self.positive or None)[:n], strict=False):
                maps[name] = heat
        return Heatmaps(np.stack([maps[name] for name in data.names]))

    # -- persistence

    def save(self, path: Path) -> None:
        write_model_doc(path, self.name, {"n_meta": getattr(self, "n_meta", 0), "history": self.history,
                                          "classes": self.classes, "positive": self.positive,
                                          "target_definition": getattr(self, "target_definition", "melanoma")},
                        self.encodings, name="plugin.json")
        self.model.save(path / "model.keras")

    @classmethod
    def load(cls, path: Path, params: KerasParams) -> ImagePlugin:
        backend()
        import keras

        import melanoma_plugins.keras_image.augment  # noqa: F401  (registers the custom layer and schedule)
        import melanoma_plugins.keras_image.schedule  # noqa: F401

        doc = read_model_doc(path, cls.name, name="plugin.json")
        model = cls(params)
        model.model = keras.saving.load_model(path / "model.keras", safe_mode=True, compile=False)
        model.encodings = doc["encodings"]
        model.n_meta = doc["n_meta"]
        model.history = doc["history"]
        model.classes, model.positive = list(doc.get("classes") or []), list(doc.get("positive") or [])
        model.target_definition = doc.get("target_definition", "melanoma")
        return model


class _ProgressCallback:
    """Reports epochs to the runner's progress bar (a tiny Keras callback without subclass import at module load)."""

    def __new__(cls, ctx: FitContext, epochs: int):
        """A callback that also keeps each epoch's wall seconds (validation included) in ``seconds``."""
        import keras

        class _CB(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.seconds: list[float] = []
                self.t0 = time.perf_counter()

            def on_epoch_begin(self, epoch, logs=None):
                self.t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(round(time.perf_counter() - self.t0, 4))
                logs = logs or {}
                note = " ".join(f"{k}={v:.3f}" for k, v in logs.items() if k in ("loss", "auc", "val_auc"))
                ctx.progress(epoch + 1, epochs, note)

        return _CB()


def _seed_everything(fold_seed: int, run_seed: int, run_cache: dict | None) -> None:
    """Python's, numpy's and Keras' seeds from the fold's seed (initial weights, seed generators); TensorFlow's
    global seed (tf.data shuffling combines it with its explicit op seeds) from the run's seed, set once per
    run: any ``tf.random.set_seed`` call makes every tf.function retrace (30–80 s for an EfficientNet at
    128 px on 2 cores), which the folds sharing one compiled graph must not pay."""
    import random

    import keras

    random.seed(fold_seed)
    np.random.seed(fold_seed)
    try:  # the rest of keras.utils.set_random_seed: the recorded seed, and a fresh global SeedGenerator
        from keras.src.backend.common import global_state
        from keras.src.random import seed_generator
        from keras.src.utils.rng_utils import GLOBAL_RANDOM_SEED

        global_state.set_global_attribute(GLOBAL_RANDOM_SEED, fold_seed)
        global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    except ImportError:  # pragma: no cover - a Keras without them
        pass
    if keras.backend.backend() == "tensorflow" and (run_cache is None or run_cache.get("tf_seed") != run_seed):
        import tensorflow as tf

        tf.random.set_seed(run_seed)
        if run_cache is not None:
            run_cache["tf_seed"] = run_seed


def _seed_states(model) -> list:
    """The state variables of every seed generator in ``model`` (augmentation, dropout), in layer order."""
    out = []
    for layer in model._flatten_layers(include_self=True):
        out.extend(sg.state for sg in getattr(layer, "_seed_generators", []))
    return out


class _BestEpoch:
    """Early stopping on validation AUC with best-epoch selection; ties go to the later epoch. ``start``: the
    transfer recipe's stage-1 epochs, inside which it never stops.

    (Keras' ``EarlyStopping(restore_best_weights=True)`` keeps the earliest of equal epochs, which on
    short runs restores weights whose BatchNorm statistics have barely moved.)
    """

    def __new__(cls, patience: int, start: int = 0):
        import keras

        class _CB(keras.callbacks.Callback):
            def __init__(self) -> None:
                super().__init__()
                self.patience, self.best, self.best_epoch, self.weights, self.wait = patience, -np.inf, None, None, 0

            def on_epoch_end(self, epoch, logs=None):
                auc = (logs or {}).get("val_auc")
                if auc is None or not np.isfinite(auc):
                    return
                if auc > self.best:
                    self.wait = 0
                else:
                    self.wait += 1
                if auc >= self.best:
                    self.best, self.best_epoch, self.weights = auc, epoch, self.model.get_weights()
                if self.wait >= self.patience and epoch + 1 > start:  # never stops inside stage 1
                    self.model.stop_training = True

            def on_train_end(self, logs=None):
                if self.weights is not None:
                    self.model.set_weights(self.weights)

        return _CB()
