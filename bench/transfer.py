"""What ImageNet pretraining buys a linear probe: out-of-fold AUC of a logistic regression on (a) pretrained
EfficientNet-Lite0 pooled features, (b) the same backbone's features from random initialisation, (c) 32×32
pixels — on generated images (``melanoma_data/synth.py``) and on the real sample
(``../shared/data/isic-sample/``, 87 labelled images: one AUC's standard error is about 0.06).

Each image set is preprocessed by the toolkit (square, ``--size`` px) and its features computed once with
:func:`melanoma_plugins.keras_image.nets.backbone` (inputs in [0, 255], the backbone's normalisation inside it). The
probe (standardised features, ``LogisticRegression(C=1.0)``, fixed beforehand, not tuned) is scored with
5-fold patient-grouped stratified CV for each of ``--seeds`` fold seeds; the random-init backbone is redrawn
per seed. Printed: each feature set's AUC over the seeds (mean, sd, min–max) and the paired bootstrap 95%
interval of (a)−(c) and (a)−(b) (images resampled, the same draw for both arms, AUCs averaged over seeds).

Usage: ``uv run python bench/transfer.py [--size 224] [--synth 160] [--seeds 5] [--boot 1000]``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from melanoma_data import build, synth  # noqa: E402
from melanoma_data.config import PreprocessConfig  # noqa: E402
from melanoma_data.dataset import open_dataset  # noqa: E402
from melanoma_models.api import FoldData  # noqa: E402

SAMPLE = ROOT.parent / "shared" / "data" / "isic-sample"  # as the other benches and the tests
WORK = ROOT / "bench" / "_work" / "transfer"


def images(inputs: Path, size: int, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Preprocessed uint8 images, targets and groups (patient, else the image) of the labelled rows."""
    cfg = PreprocessConfig.from_dict({"square": {"size": size}, "partition_size": 64,
                                      "shards": {"train_files": 2, "test_files": 1, "n_folds": 5}})
    ds = open_dataset(build.preprocess([str(inputs)], str(WORK / name), cfg, workers=0).version_url)
    meta = ds.metadata(split="train")
    meta = meta[meta["target"].isin([0, 1])].reset_index(drop=True)
    data = FoldData(ds, "train", None, meta, {}, "train")
    got: dict[str, np.ndarray] = {}
    for b in data.iter_batches(batch_size=32, image_size=size, columns=("image_name",)):
        got.update(zip(b["image_name"], b["image"], strict=True))
    x = np.stack([got[n] for n in meta["image_name"]])
    groups = meta["patient_id"].astype("string").fillna(meta["image_name"]).to_numpy()
    return x, meta["target"].to_numpy(int), groups


def features(x: np.ndarray, weights: str | None, seed: int = 0) -> np.ndarray:
    import keras

    from melanoma_plugins.keras_image.nets import backbone

    keras.utils.set_random_seed(seed)
    model = backbone("lite0", x.shape[1], weights)
    return np.asarray(model.predict(x.astype(np.float32), batch_size=16, verbose=0), dtype=np.float64)


def pixels(x: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((32, 32), Image.BILINEAR), np.float64).ravel() / 255
                     for im in x])


def oof(feats: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = np.zeros(len(y))
    for tr, va in StratifiedGroupKFold(5, shuffle=True, random_state=seed).split(feats, y, groups):
        probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
        out[va] = probe.fit(feats[tr], y[tr]).predict_proba(feats[va])[:, 1]
    return out


def report(name: str, x: np.ndarray, y: np.ndarray, groups: np.ndarray, seeds: int, boot: int) -> None:
    from sklearn.metrics import roc_auc_score

    t = time.perf_counter()
    pre = features(x, "imagenet")
    pix = pixels(x)
    preds: dict[str, list[np.ndarray]] = {"pretrained": [], "random": [], "pixels": []}
    for s in range(seeds):
        preds["pretrained"].append(oof(pre, y, groups, s))
        preds["random"].append(oof(features(x, None, seed=100 + s), y, groups, s))
        preds["pixels"].append(oof(pix, y, groups, s))
    print(f"\n{name}: {len(y)} labelled images ({int(y.sum())} positive, {len(set(groups))} groups), "
          f"{x.shape[1]} px, {seeds} seeds ({time.perf_counter() - t:.0f} s)")
    print(f"{'features':>12s} {'AUC mean':>9s} {'sd':>6s} {'min':>6s} {'max':>6s}")
    for k, ps in preds.items():
        a = np.array([roc_auc_score(y, p) for p in ps])
        print(f"{k:>12s} {a.mean():9.3f} {a.std(ddof=1) if len(a) > 1 else 0:6.3f} {a.min():6.3f} {a.max():6.3f}")
    rng = np.random.default_rng(0)
    diffs: dict[str, list[float]] = {"pretrained - pixels": [], "pretrained - random": []}
    for _ in range(boot):
        i = rng.integers(0, len(y), len(y))
        if len(set(y[i])) < 2:
            continue

        def auc(k: str, i: np.ndarray = i) -> float:
            return float(np.mean([roc_auc_score(y[i], p[i]) for p in preds[k]]))

        a = auc("pretrained")
        diffs["pretrained - pixels"].append(a - auc("pixels"))
        diffs["pretrained - random"].append(a - auc("random"))
    for k, d in diffs.items():
        lo, mid, hi = np.percentile(d, [2.5, 50, 97.5])
        print(f"{k:>22s}: {mid:+.3f}  95% CI [{lo:+.3f}, {hi:+.3f}]  ({len(d)} paired bootstrap draws)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=224, help="image side (lite0's native 224)")
    ap.add_argument("--synth", type=int, default=160, help="generated images (0: skip)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--boot", type=int, default=1000)
    args = ap.parse_args()
    import keras

    if WORK.exists():
        shutil.rmtree(WORK)
    print(f"EfficientNet-Lite0 linear probes on {os.cpu_count()} CPU cores, Keras {keras.__version__} "
          f"({keras.backend.backend()})")
    if args.synth:
        synth.write_dataset(WORK / "synth_in", n=args.synth, layout="kaggle2020", seed=3, sizes=[(400, 300)],
                            defects=0.3, melanoma_rate=0.3, test_fraction=0.0, images_per_patient=2.0)
        report("generated (synth.py)", *images(WORK / "synth_in", args.size, "synth"), args.seeds, args.boot)
    report("real (isic-sample)", *images(SAMPLE, args.size, "sample"), args.seeds, args.boot)


if __name__ == "__main__":
    main()
