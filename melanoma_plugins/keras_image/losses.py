"""The Keras plugins' losses: focal loss or cross-entropy, for one sigmoid unit or a softmax over classes."""

from __future__ import annotations

from melanoma_data.native_logs import filtered

with filtered():  # TensorFlow's native start-up lines (Keras imports it on the default backend)
    import keras



def make_loss(kind: str = "focal", alpha: float = 0.75, gamma: float = 2.0, label_smoothing: float = 0.0,
              positive: list[bool] | None = None):
    """Focal loss (α weights the positive class; needs ``apply_class_balancing``) or binary cross-entropy.

    Focal loss per example: ``-α (1-p)^γ log p`` for a melanoma, ``-(1-α) p^γ log(1-p)`` for a benign
    lesion. Keras ignores ``alpha`` unless ``apply_class_balancing=True``, so it is always set here;
    with 1.8% positives, α > 0.5 weights the rare class up.

    ``positive`` (one flag per class) makes it the multi-class loss of a softmax head: categorical focal
    loss with α for the classes the target counts (MEL; MEL, BCC, SCC for "malignant") and 1 - α for the
    others, or categorical cross-entropy; ``label_smoothing`` applies to both.
    """
    if positive is not None:
        if kind == "focal":
            weights = [alpha if p else 1.0 - alpha for p in positive]
            return keras.losses.CategoricalFocalCrossentropy(alpha=weights, gamma=gamma,
                                                             label_smoothing=label_smoothing)
        if kind == "bce":
            return keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing)
        raise ValueError(f"loss must be 'focal' or 'bce', got {kind!r}")
    if kind == "focal":
        return keras.losses.BinaryFocalCrossentropy(apply_class_balancing=True, alpha=alpha, gamma=gamma,
                                                    label_smoothing=label_smoothing)
    if kind == "bce":
        return keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing)
    raise ValueError(f"loss must be 'focal' or 'bce', got {kind!r}")
