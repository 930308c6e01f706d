"""The main job on the embedded default: generate → preprocess → EDA → embed (lite0) → fit lgbm, logreg, a linear
model on the pretrained embeddings, an image model → stack."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from melanoma_data import build, synth
from melanoma_data.config import PreprocessConfig
from melanoma_data.dataset import open_dataset
from melanoma_data.report import write_report
from melanoma_models.metrics import roc_auc
from melanoma_models.registry import get_plugin
from melanoma_models.runner import RunResult, fit


@dataclasses.dataclass
class DemoResult:
    """Where everything went and how each model did."""

    version: str
    eda: Path
    runs: dict[str, RunResult]
    bayes_auc: float


#: The demo's image models: what each trains on 2 CPU cores in about a minute (pixels only, 64 px).
#: ``cnn`` (the default) is the small BatchNorm CNN, which learns from the demo's ~160 training images;
#: an EfficientNet-B0 from random weights needs far more images than the demo has, and stays at chance.
#: Neither selects its epoch on the held-out fold (``early_stopping=none``): the OOF AUC is honest.
IMAGE_MODELS: dict[str, dict[str, Any]] = {
    "cnn": {"arch": "small", "epochs": 20, "batch_size": 16, "lr": 0.003, "class_weight": "balanced",
            "early_stopping": "none"},
    "effnet": {"variant": "B0", "epochs": 4, "batch_size": 16, "class_weight": "balanced", "early_stopping": "none"},
}


#: The demo's pretrained-embeddings base: EfficientNet-Lite0 (packaged ImageNet weights) at its native size (224
#: px), and a logistic regression on their first principal components (fitted per fold on its training rows).
EMBEDDING_MODEL = {"features": "none", "metadata": False, "embeddings": "lite0", "embeddings_pca": 32, "C": 0.1}


def image_label(image_model: str, image_size: int) -> str:
    """The demo table's name of the image run: which model, which size."""
    kind = {"cnn": "small", "effnet": IMAGE_MODELS["effnet"]["variant"]}[image_model]
    return f"{image_model}-{kind.lower()}-{image_size}px"


def run_demo(root: Path, n: int = 200, workers: int = 2, image_model: str = "cnn", epochs: int | None = None,
             image_size: int = 64, say: Callable[[str], None] = print, progress: bool = False,
             console: Any = None, seed: int = 0, embeddings: bool = True) -> DemoResult:
    """Run the whole toolkit on a generated known-answer dataset under ``root``.

    Args:
        root: folder for the data, shards, runs and reports.
        n: number of synthetic images.
        workers: Dask workers for preprocessing, and then for embedding (0 = in-process).
        image_model: ``cnn`` (small CNN), ``effnet`` (B0) or ``none`` (see :data:`IMAGE_MODELS`).
        epochs: epochs of the image model (default: its entry in :data:`IMAGE_MODELS`).
        image_size: image model input size.
        say: progress messages.
        progress: progress bars.
        console: rich console for them.
        seed: the image model's seed.
        embeddings: add lite0 embeddings + a linear model (:data:`EMBEDDING_MODEL`) as a base.
    """
    if image_model not in ("effnet", "cnn", "none"):
        raise ValueError(f"image_model must be effnet, cnn or none, got {image_model!r}")
    root = Path(root)
    data = root / "synthetic"
    if not (data / "synth_truth.json").exists():
        say(f"generating {n} synthetic dermoscopy images (known-answer labels) in {data} ...")
        synth.write_dataset(data, n=n, layout="kaggle2020", seed=0, melanoma_rate=0.15, labels="abcd",
                            images_per_patient=3.0)
    truth = json.loads((data / "synth_truth.json").read_text())
    train = [t for t in truth if t["split"] == "train"]
    bayes = roc_auc([t["target"] for t in train], [t["p_true"] for t in train])
    say("preprocessing (Dask) ...")
    cfg = PreprocessConfig.from_dict({"square": {"size": 128}, "partition_size": 32})
    res = build.preprocess([str(data)], str(root / "shards"), cfg, workers=workers, progress=progress,
                           console=console)
    eda = write_report(open_dataset(res.version_url), root / "reports" / "eda")
    say(f"EDA report: {eda}")
    runs_dir = root / "runs"
    # lgbm on every tabular feature; a linear model on the measured ABCD (a fitted Total Dermoscopy
    # Score); and an image model that learns from the pixels
    plan: list[tuple[str, str, dict[str, Any]]] = [("lgbm", "lgbm", {}),
                                                   ("logreg-abcd", "logreg", {"features": "abcd", "C": 0.1})]
    if embeddings:  # computed through the plugin (the embedding code is plugin-floor code)
        say(f"embedding every image with {EMBEDDING_MODEL['embeddings']} (ImageNet weights, native size) ...")
        cls = get_plugin("logreg")
        emb = cls.prepare_inputs(cls.Params.build(EMBEDDING_MODEL, "logreg"), res.version_url, workers=workers,
                                 progress=progress, console=console)["embeddings"]
        plan.append((f"logreg-{emb['key'].rsplit('-', 1)[0]}", "logreg", {**EMBEDDING_MODEL, "embeddings": emb["key"]}))
    if image_model != "none":
        sets = {**IMAGE_MODELS[image_model], "image_size": image_size, "seed": seed}
        if epochs is not None:
            sets["epochs"] = epochs
        plan.append((image_label(image_model, image_size), image_model, sets))
    runs: dict[str, RunResult] = {}
    for label, plugin, sets in plan:
        say(f"fitting {label} (cross-validation) ...")
        runs[label] = fit(plugin, res.version_url, runs=runs_dir, sets=sets, progress=progress, console=console)
    say("stacking ...")
    runs["stack"] = fit("stack", res.version_url, runs=runs_dir,
                        sets={"runs": ",".join(str(r.run_dir) for r in runs.values())},
                        progress=progress, console=console)
    return DemoResult(res.version_url, eda, runs, bayes)
