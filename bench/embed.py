"""Throughput of ``embed`` against a bare Keras forward pass over the same preloaded batches, in one run.

    PYTHONPATH=. .venv/bin/python bench/embed.py [--n 1536] [--backbone lite0] [--size 224]

Builds a synthetic dataset version (``--n`` images stored at 128 px; what they show does not matter for
speed), then measures:

* bare: this process, the backbone built once, ``predict_on_batch`` over the version's images decoded and
  resized beforehand (batches of 32, TensorFlow's default threads: every core);
* ``embed --workers 1`` and ``--workers 2`` (each worker its own process with one TensorFlow thread),
  end to end (cluster start, TensorFlow import and model build included) and steady (images over the
  workers' summed inference seconds, per worker × workers).

Prints images/s, the ratios embed / bare (target ≥ 0.8) and the two-worker scaling.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=1536)  # enough that model builds do not overlap most of it
    ap.add_argument("--backbone", default="lite0")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--keep", type=Path, default=None, help="work folder to keep (default: a temporary one)")
    args = ap.parse_args()

    from melanoma_data import build, synth
    from melanoma_data.config import PreprocessConfig
    from melanoma_data.dataset import decode_jpeg, open_dataset
    from melanoma_plugins.keras_image import embed

    work = args.keep or Path(tempfile.mkdtemp(prefix="bench-embed-"))
    try:
        if not (work / "in" / "synth_truth.json").exists():
            synth.write_dataset(work / "in", n=args.n, layout="kaggle2020", seed=0, sizes=[(320, 240)],
                                test_fraction=0.2)
        cfg = PreprocessConfig.from_dict({"square": {"size": 128}, "partition_size": 64,
                                          "shards": {"tfrecord": False, "train_files": 6, "test_files": 2}})
        version = build.preprocess([str(work / "in")], str(work / "out"), cfg, workers=0).version_url
        ds = open_dataset(version)
        meta = ds.metadata(columns=["image_name", "image"])
        n = len(meta)
        print(f"{n} images, {len(ds.manifest.shards)} parts, {args.backbone} at {args.size} px, "
              f"{os.cpu_count()} cores")

        spec = embed.resolve_spec(args.backbone, args.size)
        imgs = np.stack([decode_jpeg(b, args.size) for b in meta["image"]]).astype(np.float32)
        batches = [imgs[i:i + embed.BATCH] for i in range(0, n - n % embed.BATCH, embed.BATCH)]
        model = embed.load_model(spec).model  # the plain Keras model
        model.predict_on_batch(batches[0])  # trace once
        t0 = time.perf_counter()
        for b in batches:
            model.predict_on_batch(b)
        bare = sum(len(b) for b in batches) / (time.perf_counter() - t0)
        print(f"bare Keras predict_on_batch (this process, default threads): {bare:7.1f} img/s")

        rows = {}
        for workers in (1, 2):
            shutil.rmtree(Path(version) / "embeddings", ignore_errors=True)
            t0 = time.perf_counter()
            res = embed.embed_version(version, args.backbone, size=args.size, workers=workers)
            wall = time.perf_counter() - t0
            t = res.descriptor["timings"]
            steady = n / t["infer_s"] * workers
            rows[workers] = (n / wall, steady)
            print(f"embed --workers {workers}: end to end {n / wall:7.1f} img/s ({wall:.1f} s), steady "
                  f"{steady:7.1f} img/s (summed over workers: inference {t['infer_s']:.1f} s, read + decode "
                  f"{t['decode_s']:.1f} s, model build {t['model_s']:.1f} s)")
        for workers, (e2e, steady) in rows.items():
            print(f"ratio embed/bare, {workers} worker(s): end to end {e2e / bare:.2f}, steady {steady / bare:.2f}")
        print(f"two-worker scaling (2 vs 1 worker): end to end {rows[2][0] / rows[1][0]:.2f}x, "
              f"steady {rows[2][1] / rows[1][1]:.2f}x")
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
