"""CPU training throughput of ``effnet`` B0 at 128 and 256 px, fed from the shards, with the input alone.

For each size, in one run: the plugin's tf.data training input (TFRecords → decode → resize →
oversample → batch; augmentation runs inside the model) iterated alone, then the model's training
steps fed by that input (after a first epoch that traces and compiles). The input must not be the
bottleneck: its images/s should be several times the training images/s.

Usage: ``uv run python bench/train_cpu.py [--steps 6] [--batch 16] [--sizes 128 256]``.
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

SAMPLE = ROOT.parent / "shared" / "data" / "isic-sample"
WORK = ROOT / "bench" / "_work" / "train_cpu"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6, help="timed training steps per size")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    args = ap.parse_args()
    import keras
    import tensorflow as tf

    from plugins.keras_image.augment import Augment
    from plugins.keras_image.inputs import tf_train_dataset
    from plugins.keras_image.losses import make_loss
    from plugins.keras_image.nets import build_effnet

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


if __name__ == "__main__":
    main()
