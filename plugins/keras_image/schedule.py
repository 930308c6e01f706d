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
