"""The learning-rate schedule: linear warm-up, then cosine or exponential decay (saved with the model)."""

from __future__ import annotations

import math
from typing import Any

from melanoma_data.native_logs import filtered

with filtered():  # TensorFlow's native start-up lines (Keras imports it on the default backend)
    import keras
    from keras import ops



@keras.saving.register_keras_serializable("melanoma")
class WarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to ``lr`` over ``warmup_steps``, then cosine (to ``min_lr``) or exponential decay."""

    def __init__(self, lr: float, total_steps: int, warmup_steps: int = 0, kind: str = "cosine",
                 min_lr: float = 1e-6, decay_rate: float = 0.8, steps_per_epoch: int = 1, offset: int = 0) -> None:
        self.lr, self.total_steps, self.warmup_steps = float(lr), int(total_steps), int(warmup_steps)
        self.kind, self.min_lr, self.decay_rate = kind, float(min_lr), float(decay_rate)
        self.steps_per_epoch, self.offset = max(1, int(steps_per_epoch)), int(offset)

    def __call__(self, step):
        step = ops.cast(step, "float32") + self.offset
        warm = self.lr * (step + 1.0) / max(self.warmup_steps, 1)
        after = ops.maximum(step - self.warmup_steps, 0.0)
        if self.kind == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            frac = ops.minimum(after / span, 1.0)
            decayed = self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + ops.cos(math.pi * frac))
        elif self.kind == "exponential":
            decayed = ops.maximum(self.lr * ops.power(self.decay_rate, after / self.steps_per_epoch), self.min_lr)
        else:
            decayed = ops.ones_like(step) * self.lr
        return ops.where(step < self.warmup_steps, warm, decayed)

    def get_config(self) -> dict[str, Any]:
        return {"lr": self.lr, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "kind": self.kind, "min_lr": self.min_lr, "decay_rate": self.decay_rate,
                "steps_per_epoch": self.steps_per_epoch, "offset": self.offset}


def _warmup_decay(step, lr, total_steps, warmup_steps, kind: str, min_lr, decay_rate, steps_per_epoch):
    """:class:`WarmupDecay`'s curve at ``step`` (tensors or numbers)."""
    warm = lr * (step + 1.0) / ops.maximum(warmup_steps, 1.0)
    after = ops.maximum(step - warmup_steps, 0.0)
    if kind == "cosine":
        span = ops.maximum(total_steps - warmup_steps, 1.0)
        frac = ops.minimum(after / span, 1.0)
        decayed = min_lr + 0.5 * (lr - min_lr) * (1.0 + ops.cos(math.pi * frac))
    elif kind == "exponential":
        decayed = ops.maximum(lr * ops.power(decay_rate, after / steps_per_epoch), min_lr)
    else:
        decayed = ops.ones_like(step) * lr
    return ops.where(step < warmup_steps, warm, decayed)


#: The numbers of a :class:`RunAdam` schedule (optimizer variables: set per fold without recompiling).
SCHEDULE_KEYS = ("lr", "total_steps", "warmup_steps", "min_lr", "decay_rate", "steps_per_epoch", "head_steps",
                 "head_lr")


@keras.saving.register_keras_serializable("melanoma")
class RunAdam(keras.optimizers.Adam):
    """Adam whose learning-rate schedule lives in optimizer variables, so one compiled training step serves
    every fold of a run and both stages of the transfer recipe.

    Schedule, by optimizer step: before ``head_steps`` (the transfer recipe's stage 1) a constant ``head_lr``,
    and the variables listed in ``gated`` (the backbone) get neither updates nor moment updates; from
    ``head_steps`` on, a linear warm-up to ``lr`` over ``warmup_steps`` then cosine (to ``min_lr`` at
    ``total_steps``), exponential (``decay_rate`` per epoch) or constant, each gated variable's rate times its
    multiplier (layer-wise decay). ``head_steps=0`` is :class:`WarmupDecay` with no stage 1.
    """

    def __init__(self, lr: float = 1e-3, total_steps: int = 1, warmup_steps: int = 0, kind: str = "cosine",
                 min_lr: float = 1e-6, decay_rate: float = 0.8, steps_per_epoch: int = 1, head_steps: int = 0,
                 head_lr: float = 0.0, gated: dict[str, float] | None = None, **kwargs: Any) -> None:
        kwargs.pop("learning_rate", None)
        super().__init__(learning_rate=float(lr), **kwargs)
        self.kind = kind
        self.gated = {str(k): float(v) for k, v in (gated or {}).items()}
        self.schedule_values = {"lr": float(lr), "total_steps": float(total_steps),
                                "warmup_steps": float(warmup_steps), "min_lr": float(min_lr),
                                "decay_rate": float(decay_rate), "steps_per_epoch": float(max(1, steps_per_epoch)),
                                "head_steps": float(head_steps), "head_lr": float(head_lr)}
        self._schedule: dict[str, Any] = {}
        self._scales: list[float | None] = []

    def build(self, var_list) -> None:
        if self.built:
            return
        super().build(var_list)
        for key in SCHEDULE_KEYS:  # initialised to their values (build may run inside a traced step)
            self._schedule[key] = self.add_variable(
                (), initializer=keras.initializers.Constant(self.schedule_values[key]), dtype="float32",
                name=f"schedule_{key}")
        self._scales = [self.gated.get(v.path) for v in var_list]

    def set_schedule(self, **values: float) -> None:
        """Sets schedule numbers (those of :data:`SCHEDULE_KEYS` given) without recompiling anything."""
        for key, value in values.items():
            if key not in SCHEDULE_KEYS:
                raise ValueError(f"unknown schedule value {key!r}")
            self.schedule_values[key] = float(value)
            if key in self._schedule:
                self._schedule[key].assign(float(value))

    def _get_current_learning_rate(self):
        if not self._schedule:  # before build (Keras reads it for logging)
            return self._learning_rate
        s = {k: v.value for k, v in self._schedule.items()}  # tensors (JAX refuses variables in ops.where)
        step = ops.cast(self._iterations.value, "float32") - s["head_steps"]
        curve = _warmup_decay(step, s["lr"], s["total_steps"] - s["head_steps"], s["warmup_steps"], self.kind,
                              s["min_lr"], s["decay_rate"], s["steps_per_epoch"])
        return ops.where(step < 0.0, s["head_lr"], curve)

    def update_step(self, gradient, variable, learning_rate):
        scale = self._scales[self._get_variable_index(variable)] if self._scales else None
        if scale is not None:  # a backbone variable: still in stage 1 → no update at all
            on = ops.cast(ops.cast(self._iterations.value, "float32") >= self._schedule["head_steps"].value,
                          gradient.dtype)
            gradient = gradient * on
            learning_rate = learning_rate * ops.cast(on, learning_rate.dtype) * scale
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self) -> dict[str, Any]:
        cfg = super().get_config()
        cfg.pop("learning_rate", None)
        v = self.schedule_values
        cfg.update(lr=v["lr"], total_steps=int(v["total_steps"]), warmup_steps=int(v["warmup_steps"]),
                   kind=self.kind, min_lr=v["min_lr"], decay_rate=v["decay_rate"],
                   steps_per_epoch=int(v["steps_per_epoch"]), head_steps=int(v["head_steps"]),
                   head_lr=v["head_lr"], gated=self.gated)
        return cfg
