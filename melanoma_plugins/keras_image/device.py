"""Where a Keras plugin computes: the backend (started once, its native start-up lines filtered), the
distribution strategy (TPU → several GPUs → default; ``mirrored`` on logical CPUs too) and the precision."""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

from melanoma_data import native_logs

log = logging.getLogger(__name__)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")



@functools.cache
def backend() -> str:
    """The Keras backend in use (``tensorflow``, ``jax``, ...), started once: Keras imported and the
    devices listed with TensorFlow's native start-up lines filtered (:mod:`melanoma_data.native_logs`)."""
    with native_logs.filtered():
        try:
            import keras
        except ImportError as exc:
            if os.environ.get("KERAS_BACKEND") == "jax" and exc.name and exc.name.startswith("jax"):
                from melanoma_models.api import PluginError

                raise PluginError(f"KERAS_BACKEND=jax needs JAX, the jax extra: uv sync --all-extras (uv sync "
                                  f"--extra jax alone removes the other extras) ({exc})") from None
            raise

        name = keras.backend.backend()
        if name == "tensorflow":
            import tensorflow as tf

            tf.config.list_physical_devices()  # where TensorFlow tries cuInit and says so
            if not os.environ.get(native_logs.ENV):  # e.g. "triggered tf.function retracing" for each fold
                tf.get_logger().setLevel(logging.ERROR)
    return name


def select_strategy(device: str = "auto") -> tuple[Any, str]:
    """TPU → ``TPUStrategy``; several GPUs → ``MirroredStrategy``; else the default strategy.

    TensorFlow backend only (JAX places computations itself). The TPU is looked for with
    ``TPUClusterResolver``; ``ValueError``/``NotFoundError`` mean there is none. ``device="mirrored"``
    mirrors over every logical GPU, or without GPUs every logical CPU (TensorFlow splits a CPU into
    logical devices when told to before it starts: how the multi-device path runs on a laptop or in CI).

    Returns:
        ``(strategy, kind)`` with kind ``tpu``, ``mirrored``, ``default`` or ``none`` (other backends).
    """
    if backend() != "tensorflow":
        return None, "none"
    import tensorflow as tf

    if device in ("auto", "tpu"):
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            log.info("running on TPU %s", resolver.master())
            return tf.distribute.TPUStrategy(resolver), "tpu"
        except (ValueError, tf.errors.NotFoundError) as exc:
            if device == "tpu":
                raise RuntimeError(f"device=tpu but no TPU was found: {exc}") from exc
    if device == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        log.info("MirroredStrategy over %s", ", ".join(d.name for d in devices))
        return tf.distribute.MirroredStrategy([d.name for d in devices]), "mirrored"
    gpus = tf.config.list_logical_devices("GPU") if device in ("auto", "gpu") else []
    if len(gpus) > 1:
        log.info("running on %d GPUs (MirroredStrategy)", len(gpus))
        return tf.distribute.MirroredStrategy(), "mirrored"
    log.info("running with the default strategy (%s)", "GPU" if gpus else "CPU")
    return tf.distribute.get_strategy(), "default"


def accelerator() -> str:
    """``tpu``, ``gpu`` or ``cpu``: what the current backend computes on."""
    b = backend()
    if b == "jax":
        import jax

        return jax.devices()[0].platform.replace("cuda", "gpu").replace("rocm", "gpu")
    if b == "tensorflow":
        import tensorflow as tf

        if tf.config.list_logical_devices("TPU"):
            return "tpu"
        return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"
    if b == "torch":
        import torch

        return "gpu" if torch.cuda.is_available() else "cpu"
    return "cpu"


def precision_policy(choice: str, where: str) -> str:
    """The Keras dtype policy: ``auto`` is bfloat16 mixed precision on TPU/GPU, float32 on CPU."""
    if choice != "auto":
        return choice
    return "mixed_bfloat16" if where in ("tpu", "gpu") else "float32"
