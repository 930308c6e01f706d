"""Known-answer benchmark: every plugin's OOF AUC against the Bayes-optimal AUC of a generated dataset.

The generator's ``labels="abcd"`` mode draws each lesion's asymmetry, border irregularity, colour
variegation and diameter and gives it a melanoma probability that is a known logistic function of
those, of age and site, and of the patient's other lesions ("ugly duckling"); ``AUC(target, p_true)``
is the best any model can reach on the drawn labels. Image-driven labels: the metadata-only model
should trail the image models clearly; the stack should come within 0.02 of Bayes and be at least as
good as its best base run.

``--labels structures`` is the honest mode: the label is a known function of dermoscopic structures drawn
as textures (network, globules, streaks, veil, regression, border roughness, colour mixture), not the
inverse of any feature; it measures transfer, with no target.

Usage: ``uv run python bench/synthetic_auc.py [--n 2000] [--size 128] [--image-size 64] [--epochs 8] [--skip effnet]
[--seeds 3] [--labels abcd|structures|both]``.
"""

from __future__ import annotations

import argparse
import json
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
from melanoma_models.metrics import roc_auc  # noqa: E402
from melanoma_models.runner import fit  # noqa: E402

WORK = ROOT / "bench" / "_work" / "synthetic_auc"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=128, help="stored image size")
    ap.add_argument("--image-size", type=int, default=64, help="input size of the CNNs")
    ap.add_argument("--epochs", type=int, default=8, help="epochs of the Keras models")
    ap.add_argument("--rate", type=float, default=0.1, help="melanoma rate")
    ap.add_argument("--skip", nargs="*", default=[], help="plugins to leave out (e.g. effnet)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--labels", choices=["abcd", "structures", "both"], default="abcd",
                    help="known-answer mode: abcd (drawn as the features' inverse), structures (honest: dermoscopic "
                         "structures drawn as textures) or both")
    ap.add_argument("--seeds", type=int, default=1, help="data seeds (2020, 2021, …): the stack's floor is "
                                                        "judged on the mean over them")
    args = ap.parse_args()
    modes = ["abcd", "structures"] if args.labels == "both" else [args.labels]
    table: dict[str, list[dict[str, float]]] = {}
    for mode in modes:
        gaps = []
        for i in range(args.seeds):
            bayes, results = run_once(args, 2020 + i, mode)
            table.setdefault(mode, []).append({"bayes": bayes, **results})
            gaps.append(results["stack"] - max(v for k, v in results.items() if k != "stack"))
        if args.seeds > 1:
            target = "; target >= -0.002" if mode == "abcd" else "; no target: it measures transfer"
            print(f"\n{mode}: over {args.seeds} data seeds, stack - best base {np.mean(gaps):+.4f} on average "
                  f"(per seed: {', '.join(f'{g:+.4f}' for g in gaps)}{target})")
    print("\nmean OOF AUC over data seeds (Bayes = the known optimum):")
    names = list(next(iter(table.values()))[0])
    print(f"{'':14s}" + "".join(f"{m:>12s}" for m in table))
    for name in names:
        print(f"{name:14s}" + "".join(f"{np.mean([r.get(name, np.nan) for r in rows]):12.4f}"
                                       for rows in table.values()))


def run_once(args: argparse.Namespace, seed: int, labels: str = "abcd") -> tuple[float, dict[str, float]]:
    """One generated dataset (data seed ``seed``, known-answer mode ``labels``): every plugin, then the stack."""
    work = WORK / f"{labels}-{seed}"
    if work.exists():
        shutil.rmtree(work)
    t0 = time.perf_counter()
    truth = synth.write_dataset(work / "in", n=args.n, layout="kaggle2020", seed=seed, sizes=[(320, 240)],
                                defects=0.3, melanoma_rate=args.rate, test_fraction=0.0, images_per_patient=4.0,
                                labels=labels)
    cfg = PreprocessConfig.from_dict({"square": {"size": args.size}, "partition_size": 128})
    version = build.preprocess([str(work / "in")], str(work / "out"), cfg, workers=args.workers).version_url
    y = [t["target"] for t in truth]
    bayes = roc_auc(y, [t["p_true"] for t in truth])
    print(f"\n== {labels}, data seed {seed}: {args.n} images ({sum(y)} melanoma), {args.size} px, prepared in "
          f"{time.perf_counter() - t0:.0f} s")
    print(f"Bayes-optimal AUC (p_true): {bayes:.4f}", flush=True)
    k = args.epochs
    plan = [
        ("lgbm-metadata", "lgbm", {"features": "metadata"}),
        ("lgbm", "lgbm", {}),
        ("logreg", "logreg", {"image_size": 32}),
        ("logreg-tabular", "logreg", {"features": "tabular", "C": 0.01}),
        ("logreg-abcd", "logreg", {"features": "abcd", "C": 0.1}),
        ("cnn", "cnn", {"image_size": args.image_size, "epochs": k, "batch_size": 32, "class_weight": "balanced",
                        "hair": 0.0, "microscope": 0.0}),
        ("effnet", "effnet", {"image_size": args.image_size, "epochs": k, "batch_size": 32, "lr": 2e-3,
                              "class_weight": "balanced", "hair": 0.0, "microscope": 0.0}),
    ]
    runs, results = {}, {}
    for label, plugin, sets in plan:
        if label in args.skip or plugin in args.skip:
            continue
        t = time.perf_counter()
        res = fit(plugin, version, runs=work / "runs", sets=sets)
        runs[label] = res.run_dir
        results[label] = res.metrics["auc"]
        print(f"{label:14s} OOF AUC {res.metrics['auc']:.4f}  ({time.perf_counter() - t:.0f} s)", flush=True)
    base = [str(runs[k]) for k in runs]
    t = time.perf_counter()
    stack = fit("stack", version, runs=work / "runs", sets={"runs": ",".join(base)})
    results["stack"] = stack.metrics["auc"]
    print(f"{'stack':14s} OOF AUC {stack.metrics['auc']:.4f}  ({time.perf_counter() - t:.0f} s; combiners: "
          + ", ".join(f"{k.removeprefix('stack: ')} {v:.4f}" for k, v in stack.metrics.get('comparison', {}).items()
                      if k.startswith("stack:")) + ")")
    best_base = max(v for k, v in results.items() if k != "stack")
    cnn_best = max(results.get(k, float("nan")) for k in ("cnn", "effnet"))
    meta_only = results.get("lgbm-metadata", float("nan"))
    print(f"\nstack vs Bayes: {results['stack'] - bayes:+.4f} (target within 0.02)  "
          f"stack vs best base: {results['stack'] - best_base:+.4f} (target ≥ 0)  "
          f"best CNN vs metadata-only: {cnn_best - meta_only:+.4f}  "
          f"lgbm (with image features) vs metadata-only: {results.get('lgbm', float('nan')) - meta_only:+.4f}")
    (work / "results.json").write_text(json.dumps({"bayes": bayes, **results}, indent=1))
    return bayes, results


if __name__ == "__main__":
    main()
