"""Requests/s and latency of ``serve`` on this machine, for an EfficientNet-B0 run and an lgbm run.

Each run is trained on a small generated dataset (stored at 256 px; B0 at 256 px, random weights, one epoch,
two folds — its speed, not its accuracy, is measured), then served on 127.0.0.1 in this process
(``--workers`` threads) and sent a bounded number of uploads (``--requests``, at most ``--seconds`` each)
twice in one run — from one client thread, then from ``--clients`` client threads — after a warm-up request.
Every answer must be 200. Prints, side by side, requests/s and the p50/p99 latency of one client and of N, and
their ratios (N clients' requests/s over one client's: about ``--workers`` when scoring scales, about 1 when it
is serialised; their p50 over one client's: the queueing a user feels), so a regression is visible in one line;
then the per-request time of scoring the same image with ``predict --images``.

    uv run python bench/serve.py [--requests 40] [--clients 4] [--workers 2] [--plugins effnet,lgbm]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

WORK = Path(__file__).resolve().parent / "_work" / "serve"  # (the toolkit is imported as the installed package)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=300.0, help="time limit per run")
    ap.add_argument("--plugins", default="effnet,lgbm", help="runs to serve: effnet, lgbm or both")
    args = ap.parse_args()
    chosen = {p.strip() for p in args.plugins.split(",") if p.strip()}
    if not chosen or chosen - {"effnet", "lgbm"}:
        ap.error(f"--plugins takes effnet and/or lgbm, got {args.plugins!r}")
    import httpx
    import uvicorn

    from melanoma_data import build, synth
    from melanoma_data.config import PreprocessConfig
    from melanoma_models.runner import fit
    from melanoma_models.score import score_images
    from melanoma_models.serve import Service, create_app

    if WORK.exists():
        shutil.rmtree(WORK)
    synth.write_dataset(WORK / "in", n=48, layout="kaggle2020", seed=3, sizes=[(1024, 768)], defects=0.3,
                        melanoma_rate=0.3, test_fraction=0.2)
    cfg = PreprocessConfig.from_dict({"square": {"size": 256}, "partition_size": 48,
                                      "shards": {"n_folds": 2, "train_files": 4, "test_files": 1}})
    version = build.preprocess([str(WORK / "in")], str(WORK / "out"), cfg).version_url
    runs = {}
    if "effnet" in chosen:
        runs["effnet B0 @256"] = fit("effnet", version, runs=WORK / "runs",
                                     sets={"variant": "B0", "image_size": 256, "epochs": 1, "batch_size": 8,
                                           "early_stopping": "none"}).run_dir
    if "lgbm" in chosen:
        runs["lgbm"] = fit("lgbm", version, runs=WORK / "runs",
                           sets={"num_boost_round": 50, "early_stopping": "none"}).run_dir
    image = sorted((WORK / "in" / "jpeg" / "test").glob("*.jpg"))[0]
    data = image.read_bytes()
    fields = {"sex": "female", "age_approx": "55", "anatom_site_general_challenge": "torso", "patient_id": "P1"}
    print(f"{args.requests} uploads of a {len(data) / 1e3:.0f} kB 1024x768 JPEG, {args.clients} clients, "
          f"{args.workers} workers, loopback")
    for label, run in runs.items():
        server = uvicorn.Server(uvicorn.Config(create_app(Service(run, workers=args.workers)), host="127.0.0.1",
                                               port=0, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        port = server.servers[0].sockets[0].getsockname()[1]
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            def one(_: int) -> float:
                t = time.perf_counter()
                r = client.post("/predict", files={"image": (image.name, data, "image/jpeg")}, data=fields)
                assert r.status_code == 200, r.text
                return time.perf_counter() - t

            one(0)  # warm-up: graph tracing, first imports
            side = {n: _load(one, n, args.requests, args.seconds) for n in (1, args.clients)}
        server.should_exit = True
        thread.join(30)
        meta = WORK / "meta.csv"
        meta.write_text("image_name," + ",".join(fields) + "\n" + image.stem + "," + ",".join(fields.values()) + "\n")
        t = time.perf_counter()
        score_images(run, [str(image)], WORK / "scores.csv", metadata=str(meta))
        cli_s = time.perf_counter() - t
        (rate1, p50_1, p99_1), (rate_n, p50_n, p99_n) = side[1], side[args.clients]
        print(f"{label:16s} 1 client: {rate1:6.2f} req/s p50 {p50_1 * 1e3:6.0f} ms p99 {p99_1 * 1e3:6.0f} ms | "
              f"{args.clients} clients: {rate_n:6.2f} req/s p50 {p50_n * 1e3:6.0f} ms p99 {p99_n * 1e3:6.0f} ms | "
              f"{args.clients}:1 req/s x{rate_n / rate1:.2f}, p50 x{p50_n / p50_1:.2f}")
        print(f"{'':16s} (predict --images, one image, models loaded per call: {cli_s:.1f} s)")


def _load(one: Callable[[int], float], clients: int, requests: int, seconds: float) -> tuple[float, float, float]:
    """``requests`` uploads from ``clients`` threads (stopping after ``seconds``): requests/s, p50 and p99 (s)."""
    import numpy as np

    t0 = time.perf_counter()
    lat: list[float] = []
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for dt in pool.map(one, range(requests)):
            lat.append(dt)
            if time.perf_counter() - t0 > seconds:
                break
    wall = time.perf_counter() - t0
    p50, p99 = np.percentile(lat, [50, 99])
    return len(lat) / wall, float(p50), float(p99)


if __name__ == "__main__":
    main()
