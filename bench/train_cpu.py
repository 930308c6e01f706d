"""CPU training throughput of ``effnet`` B0 at 128 and 256 px, fed from the shards, with the input alone.

For each size, in one run: the plugin's tf.data training input (TFRecords → decode → resize →
oversample → batch; augmentation runs inside the model) iterated alone, then the model's training
steps fed by that input (after a first epoch that traces and compiles). The input must not be the
bottleneck: its images/s should be several times the training images/s.

With ``--folds K``: a K-fold ``fit`` of the plugin through the runner (``--plugin-set`` for its parameters;
default EfficientNet-Lite0 with ImageNet weights, the transfer recipe), printing per fold the wall time,
the steps, and the overhead = wall − steps × steady step time (the steady step time: the fastest
fold's median epoch time after its first epoch, per step, validation included), and the overhead of
folds 2…K against fold 1's (the first fold compiles the graph; later folds reuse it).

Usage: ``uv run python bench/train_cpu.py [--steps 6] [--batch 16] [--sizes 128 256]``, or
``uv run python bench/train_cpu.py --folds 3 [--size 128] [--epochs 3] [--steps 4]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from melanoma_data import build  # noqa: E402
from melanoma_data.config import PreprocessConfig  # noqa: E402
from melanoma_data.dataset import open_dataset  # noqa: E402
from melanoma_models.api import FoldData  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "isic-sample"  # as the other benches and the tests
WORK = ROOT / "bench" / "_work" / "train_cpu"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="timed training steps per size")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--folds", type=int, default=0, help="K > 0: per-fold overhead of a K-fold runner fit")
    ap.add_argument("--size", type=int, default=128, help="--folds: image size")
    ap.add_argument("--epochs", type=int, default=3, help="--folds: epochs per fold")
    ap.add_argument("--plugin-set", nargs="*", default=["variant=lite0", "weights=imagenet", "freeze_epochs=1"],
                    help="--folds: effnet parameters key=value")
    args = ap.parse_args()
    if args.folds:
        folds_overhead(args)
        return
    import keras
    import tensorflow as tf

    from melanoma_plugins.keras_image.augment import Augment
    from melanoma_plugins.keras_image.inputs import tf_train_dataset
    from melanoma_plugins.keras_image.losses import make_loss
    from melanoma_plugins.keras_image.nets import build_effnet

    if WORK.exists():
        shutil.rmtree(WORK)
    cfg = PreprocessConfig.from_dict({"square": {"size": 256}, "partition_size": 32,
                                      "shards": {"train_files": 4, "test_files": 1, "n_folds": 4}})
    res = build.preprocess([str(SAMPLE)], str(WORK), cfg, workers=0)
    ds = open_dataset(res.version_url)
    train = FoldData(ds, "train", None, ds.metadata(split="train"), {}, "train")
    print(f"effnet B0 on {os.cpu_count()} CPU cores, TF {tf.__version__}, Keras {keras.__version__} "
          f"({keras.backend.backend()}), batch {args.batch}, {len(train.meta)} real images (repeated)")
    print(f"{'size':>5s} {'input img/s':>12s} {'train img/s':>12s} {'input/train':>12s} {'first epoch s':>14s}")
    for size in args.sizes:
        data = tf_train_dataset(train, size, args.batch, seed=0, oversample=2, feats=None)
        it = iter(data)
        next(it)
        n = max(args.steps * 4, 20)
        t = time.perf_counter()
        for _ in range(n):
            x, _y = next(it)
        _ = x.numpy()
        input_rate = n * args.batch / (time.perf_counter() - t)

        model = build_effnet(size, "B0", None, 0.3, Augment(seed=0))
        model.compile(keras.optimizers.Adam(1e-3, clipnorm=1.0), make_loss("focal"), jit_compile="auto")
        t = time.perf_counter()
        model.fit(data, epochs=1, steps_per_epoch=2, verbose=0)
        first = time.perf_counter() - t
        t = time.perf_counter()
        model.fit(data, epochs=1, steps_per_epoch=args.steps, verbose=0)
        train_rate = args.steps * args.batch / (time.perf_counter() - t)
        print(f"{size:5d} {input_rate:12.1f} {train_rate:12.1f} {input_rate / train_rate:11.1f}× {first:14.1f}")


def folds_overhead(args: argparse.Namespace) -> None:
    """Per-fold wall time, steps and overhead of a K-fold runner fit (folds 2…K against fold 1)."""
    import json
    import statistics

    import keras

    from melanoma_models.runner import fit, parse_sets

    if WORK.exists():
        shutil.rmtree(WORK)
    cfg = PreprocessConfig.from_dict({"square": {"size": args.size}, "partition_size": 32,
                                      "shards": {"train_files": 4, "test_files": 1, "n_folds": args.folds}})
    res = build.preprocess([str(SAMPLE)], str(WORK / "data"), cfg, workers=0)
    sets = {"image_size": str(args.size), "batch_size": str(args.batch), "epochs": str(args.epochs),
            "steps_per_epoch": str(args.steps), "early_stopping": "none", **parse_sets(args.plugin_set)}
    t = time.perf_counter()
    run = fit("effnet", res.version_url, runs=WORK / "runs", sets=sets, folds=args.folds)
    total = time.perf_counter() - t
    rows = []
    for f in range(args.folds):
        done = json.loads((run.run_dir / f"fold-{f}" / "done.json").read_text())
        hist = json.loads((run.run_dir / f"fold-{f}" / "history.json").read_text())
        rows.append((f, done["seconds"], hist["epochs_run"] * hist["steps_per_epoch"], hist["epoch_seconds"],
                     hist.get("graph_reused")))
    steady = min(statistics.median(r[3][1:]) / (r[2] / len(r[3])) for r in rows if len(r[3]) > 1)
    print(f"effnet {' '.join(args.plugin_set)} at {args.size} px, batch {args.batch}, {args.folds} folds × "
          f"{args.epochs} epochs × {args.steps} steps, {os.cpu_count()} CPU cores, Keras {keras.__version__} "
          f"({keras.backend.backend()}); steady step {steady:.2f} s (validation included); run {total:.0f} s")
    print(f"{'fold':>4s} {'wall s':>8s} {'steps':>6s} {'overhead s':>11s} {'vs fold 1':>10s} {'graph reused':>13s}")
    first = None
    for f, wall, steps, _, reused in rows:
        over = wall - steps * steady
        first = over if first is None else first
        print(f"{f + 1:4d} {wall:8.1f} {steps:6d} {over:11.1f} {over / first:10.2f} {str(reused):>13s}")


if __name__ == "__main__":
    main()
