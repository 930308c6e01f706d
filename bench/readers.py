"""Reader throughput: iter_batches and tf_dataset at 256 px against the bare JPEG decode floor.

Measured side by side in one run on the same bytes (the real ISIC sample preprocessed at 256 px):

* floor        — ``cv2.imdecode`` of every stored JPEG in a plain loop, one thread, nothing else;
* iter_batches — the numpy reader (Parquet → decode threads → batches), default threads;
* tf_dataset   — tf.data over the TFRecords (parse, decode_jpeg, static-shape batches, prefetch).

Target: each reader ≥ 0.8× the floor's images/s. Usage: ``uv run python bench/readers.py [--epochs N]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from melanoma_data import build  # noqa: E402
from melanoma_data.config import PreprocessConfig  # noqa: E402
from melanoma_data.dataset import open_dataset  # noqa: E402
from melanoma_data.ops._cv import cv2  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "isic-sample"
WORK = ROOT / "bench" / "_work" / "readers"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=20, help="passes over the sample per measurement")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    if WORK.exists():
        shutil.rmtree(WORK)
    cfg = PreprocessConfig.from_dict({"square": {"size": args.size}, "partition_size": 32,
                                      "shards": {"train_files": 4, "test_files": 1, "n_folds": 4}})
    res = build.preprocess([str(SAMPLE)], str(WORK), cfg, workers=0)
    ds = open_dataset(res.version_url)
    blobs = []
    for url in ds.files("parquet"):
        import pandas as pd

        blobs += pd.read_parquet(url, columns=["image"])["image"].tolist()
    n = len(blobs)
    print(f"{n} images at {args.size} px, {os.cpu_count()} cores, batch {args.batch}, {args.epochs} epochs each")

    def floor() -> float:
        t = time.perf_counter()
        for _ in range(args.epochs):
            for b in blobs:
                cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR_RGB)
        return n * args.epochs / (time.perf_counter() - t)

    def numpy_reader() -> float:
        t = time.perf_counter()
        count = 0
        for _ in range(args.epochs):
            for batch in ds.iter_batches(None, batch_size=args.batch, columns=("target",)):
                count += len(batch["image"])
        return count / (time.perf_counter() - t)


    tf_ds = ds.tf_dataset("train", batch_size=args.batch, repeat=True, drop_remainder=True)
    n_train = sum(e.rows or 0 for e in ds.manifest.tfrecords if e.split == "train")
    steps = max(1, n_train * args.epochs // args.batch)
    it = iter(tf_ds)
    next(it)  # graph tracing and file opening are not throughput

    def tf_reader() -> float:
        t = time.perf_counter()
        for _ in range(steps):
            x, _ = next(it)
        _ = x.numpy()
        return steps * args.batch / (time.perf_counter() - t)

    results = {"floor": [], "iter_batches": [], "tf_dataset": []}
    for _ in range(3):  # interleaved rounds: these machines are noisy
        results["floor"].append(floor())
        results["iter_batches"].append(numpy_reader())
        results["tf_dataset"].append(tf_reader())
    best = {k: max(v) for k, v in results.items()}
    print(f"{'reader':14s} {'img/s (best of 3)':>18s} {'vs floor':>9s}")
    for k, v in best.items():
        print(f"{k:14s} {v:18.0f} {v / best['floor']:8.2f}×")
    ok = all(best[k] >= 0.8 * best["floor"] for k in ("iter_batches", "tf_dataset"))
    print("target ≥ 0.8× floor:", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
