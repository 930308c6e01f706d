"""The ``effnet`` and ``fusion`` plugins on an accelerator with the JAX backend (no TensorFlow installed).

    KERAS_BACKEND=jax python bench/gpu_smoke.py DATASET_VERSION [effnet|effnet-nofreeze|fusion ...]

Fits each plugin for two short epochs through the numpy input path (Parquet shards → numpy batches),
with bfloat16 mixed precision chosen automatically on the GPU, then checks predictions (range,
one per row), TTA determinism and save → load → identical predictions. Prints one line per check.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    import numpy as np

    from melanoma_data.dataset import open_dataset
    from melanoma_models.api import FitContext, FoldData
    from melanoma_plugins.keras_image import device
    from melanoma_plugins.keras_image import plugins as kp

    ds = open_dataset(sys.argv[1])
    cache: dict = {}
    train = FoldData(ds, "train", [0], ds.metadata(split="train", folds=[0]), cache, "train")
    valid = FoldData(ds, "train", [1], ds.metadata(split="train", folds=[1]), cache, "valid")
    print(f"backend {device.backend()}, accelerator {device.accelerator()}, {len(train.meta)} train / "
          f"{len(valid.meta)} valid rows at {ds.image_size} px", flush=True)
    wanted = sys.argv[2:] or ["effnet", "fusion"]
    plan = {"effnet": (kp.EffNetPlugin, {"freeze_epochs": 1}), "effnet-nofreeze": (kp.EffNetPlugin, {}),
            "fusion": (kp.FusionPlugin, {})}
    for cls, extra in (plan[w] for w in wanted):
        params = cls.Params.build({"image_size": ds.image_size, "epochs": 2, "batch_size": 16, "tta": 2,
                                   "class_weight": "balanced", **extra}, cls.name)
        model = cls(params)
        t = time.perf_counter()
        hist = model.fit(train, valid, FitContext(Path(tempfile.mkdtemp()), 0, ds.encodings))
        fit_s = time.perf_counter() - t
        p1 = model.predict(valid)
        p2 = model.predict(valid)
        ok_range = p1.shape == (len(valid.meta),) and bool(((p1 >= 0) & (p1 <= 1)).all())
        folder = Path(tempfile.mkdtemp()) / "model"
        model.save(folder)
        again = cls.load(folder, params)
        p3 = again.predict(valid)
        print(f"{cls.name}: fit {fit_s:.0f} s, input={hist['input']} precision={hist['precision']} "
              f"strategy={hist['strategy']} epochs={hist['epochs_run']} val_auc={hist['history'].get('val_auc')}; "
              f"predictions ok={ok_range}; TTA deterministic={np.array_equal(p1, p2)}; "
              f"save/load identical={np.allclose(p1, p3, atol=1e-6)} (max diff {np.abs(p1 - p3).max():.2e})",
              flush=True)


if __name__ == "__main__":
    main()
