"""GPU training throughput: Keras 3 EfficientNetB0 on JAX vs timm's efficientnet_b0 in PyTorch, bf16, same card.

Run on a machine with a GPU, with the JAX backend (TensorFlow is not needed):

    KERAS_BACKEND=jax python bench/train_gpu.py --size 256 --batch 128

Both train a binary head (focal loss for Keras as in the ``effnet`` plugin, BCE-with-logits for timm)
with Adam on uint8 images that are cast and normalised inside the model. Keras runs
``fit(steps_per_execution=16)`` (Python out of the step loop), its first epoch (XLA compilation)
excluded; timm runs eager PyTorch under ``autocast(bfloat16)`` with channels-last memory, its warm-up
steps excluded. Prints images/s for each and the ratio (target ≥ 1.0×).

``--plugin VERSION`` also times the whole ``effnet`` plugin on a dataset version: its input pipeline
(Parquet → numpy batches, resized to ``--size``), the augmentation layer and the training step, B0, bf16
chosen by the plugin on the GPU, ``steps_per_execution`` 16; images/s over the epochs after the first
(compilation), and its ratio to timm's bare step. ``--only-plugin`` skips timm and the bare Keras step
(runs anywhere, e.g. to check the script on a CPU).

On a lent GPU machine, everything at once: ``bash bench/gpu_check.sh`` (see the README).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def keras_rate(size: int, batch: int, steps: int, spe: int) -> tuple[float, float]:
    import keras
    import numpy as np

    from melanoma_plugins.keras_image.losses import make_loss
    from melanoma_plugins.keras_image.nets import backbone

    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    inp = keras.Input((size, size, 3), dtype="uint8")
    x = keras.ops.cast(inp, "float32")
    out = keras.layers.Dense(1, activation="sigmoid", dtype="float32")(backbone("B0", size, None)(x))
    model = keras.Model(inp, out)
    model.compile(keras.optimizers.Adam(1e-3, clipnorm=1.0), make_loss("focal"), steps_per_execution=spe,
                  jit_compile=True)
    rng = np.random.default_rng(0)
    n = batch * spe * 2
    xs = rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)
    ys = (rng.random(n) < 0.1).astype("float32")
    t = time.perf_counter()
    model.fit(xs, ys, batch_size=batch, epochs=1, verbose=0)
    compile_s = time.perf_counter() - t
    epochs = max(1, steps // (n // batch))
    t = time.perf_counter()
    model.fit(xs, ys, batch_size=batch, epochs=epochs, verbose=0)
    return epochs * n / (time.perf_counter() - t), compile_s


def plugin_rate(version: str, size: int, batch: int, epochs: int) -> tuple[float, dict]:
    """images/s of the full ``effnet`` plugin's training (epochs after the first), and its history."""
    import tempfile

    from melanoma_data.dataset import open_dataset
    from melanoma_models.api import FitContext, FoldData
    from melanoma_plugins.keras_image.plugins import EffNetParams, EffNetPlugin

    ds = open_dataset(version)
    meta = ds.metadata(split="train")
    train = FoldData(ds, "train", None, meta, {}, "train")
    params = EffNetParams.build({"image_size": size, "batch_size": batch, "epochs": epochs, "variant": "B0",
                                 "early_stopping": "none", "steps_per_execution": 16, "input": "numpy",
                                 "class_weight": "balanced"}, "effnet")
    ends: list[float] = []
    ctx = FitContext(Path(tempfile.mkdtemp()), 0, ds.encodings,
                     lambda done, total, msg: ends.append(time.perf_counter()))  # called at each epoch's end
    model = EffNetPlugin(params)
    hist = model.fit(train, None, ctx)
    images = hist["steps_per_epoch"] * hist["global_batch"] * (len(ends) - 1)
    return images / (ends[-1] - ends[0]), hist


def timm_rate(size: int, batch: int, steps: int, compile_model: bool) -> float:
    import timm
    import torch

    torch.backends.cudnn.benchmark = True
    model = timm.create_model("efficientnet_b0", num_classes=1, pretrained=False).cuda()
    model = model.to(memory_format=torch.channels_last)
    if compile_model:
        model = torch.compile(model)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    mean = torch.tensor([0.485, 0.456, 0.406], device="cuda").view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225], device="cuda").view(1, 3, 1, 1) * 255
    x8 = torch.randint(0, 255, (batch, 3, size, size), dtype=torch.uint8, device="cuda")
    y = (torch.rand(batch, 1, device="cuda") < 0.1).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step() -> None:
        x = ((x8.float() - mean) / std).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    for _ in range(15):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=96, help="timed steps (Keras: rounded to whole epochs)")
    ap.add_argument("--spe", type=int, default=16, help="Keras steps_per_execution")
    ap.add_argument("--torch-compile", action="store_true", help="also time timm under torch.compile")
    ap.add_argument("--plugin", metavar="VERSION", help="also time the full effnet plugin on this dataset version")
    ap.add_argument("--plugin-epochs", type=int, default=3, help="plugin epochs (the first is not timed)")
    ap.add_argument("--only-plugin", action="store_true", help="time only the plugin (no GPU needed)")
    args = ap.parse_args()
    import keras

    if args.only_plugin:
        rate, hist = plugin_rate(args.plugin, args.size, args.batch, args.plugin_epochs)
        print(f"effnet plugin (input pipeline + augmentation + step, {hist['backend']} on {hist['accelerator']}, "
              f"{hist['precision']}): {rate:8.1f} img/s")
        return
    import torch

    print(f"GPU: {torch.cuda.get_device_name(0)}; Keras {keras.__version__} on {keras.backend.backend()}; "
          f"torch {torch.__version__}; {args.size} px, batch {args.batch}, bf16")
    t_rate = timm_rate(args.size, args.batch, args.steps, False)
    print(f"timm efficientnet_b0 (eager):      {t_rate:8.0f} img/s", flush=True)
    k_rate, compile_s = keras_rate(args.size, args.batch, args.steps, args.spe)
    print(f"Keras EfficientNetB0 (JAX, XLA):  {k_rate:8.0f} img/s  (first epoch incl. compilation {compile_s:.0f} s)")
    print(f"ratio Keras/timm: {k_rate / t_rate:.2f}×  (target ≥ 1.0×)", flush=True)
    if args.plugin:
        p_rate, hist = plugin_rate(args.plugin, args.size, args.batch, args.plugin_epochs)
        print(f"effnet plugin (input pipeline + augmentation + step, {hist['precision']}): {p_rate:8.0f} img/s; "
              f"plugin/timm {p_rate / t_rate:.2f}×  (goal 1.0×)", flush=True)
    if args.torch_compile:
        c_rate = timm_rate(args.size, args.batch, args.steps, True)
        print(f"timm efficientnet_b0 (torch.compile): {c_rate:8.0f} img/s; Keras/compiled timm {k_rate / c_rate:.2f}×")


if __name__ == "__main__":
    main()
