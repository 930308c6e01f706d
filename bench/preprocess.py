"""Preprocessing benchmark: pipeline vs decode floor vs naive, 1 vs 2 workers, worker peak RSS vs input count,
and archive scale: ISIC 2024 tiles per core against a bare decode + encode loop, worker peak RSS at 5,000 vs
50,000 tiles, the driver's peak RSS and the time at 100,000 tiles.

Everything is measured side by side in one run (the machines are noisy); ratios are what to read.
Run: ``uv run python bench/preprocess.py [--quick] [--tiles-only]``; one big run with its peak memory:
``uv run python bench/preprocess.py --run INPUT`` (e.g. 401,059 tiles from ``cli.py synth --layout isic2024``).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from melanoma_data import build, pipeline, synth  # noqa: E402
from melanoma_data.config import PreprocessConfig, load_config  # noqa: E402
from melanoma_data.manifest import Manifest  # noqa: E402
from melanoma_data.ops import colour, hair, vignette  # noqa: E402
from melanoma_data.ops import decode as dec  # noqa: E402
from melanoma_data.ops import encode as enc  # noqa: E402
from melanoma_data.ops import geometry as geo  # noqa: E402
from melanoma_data.ops._cv import cv2  # noqa: E402

WORK = ROOT / "bench" / "_work"
SAMPLE = ROOT.parent / "shared" / "data" / "isic-sample"
#: decode, orient, square, encode, hashes: the normalisation ops switched off
NO_OPS = PreprocessConfig.from_dict({"field_of_view": {"enabled": False}, "hair": {"enabled": False},
                                     "colour": {"enabled": False}, "artefacts": {"enabled": False},
                                     "partition_size": 32})
#: the default op chain (field of view, artefacts, hair, colour constancy on)
FULL = PreprocessConfig(partition_size=32)
#: the configuration chosen for the ISIC 2024 layout
TILES = load_config(preset="tiles")


def big_images(n: int) -> list[bytes]:
    """``n`` generated 6000×4000 q90 JPEGs (cached)."""
    out = []
    for i in range(n):
        path = WORK / "big" / f"big{i}.jpg"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            spec = synth.SynthSpec(width=6000, height=4000, hairs=12, hair_colour="mixed", vignette=i % 2 == 0,
                                   melanoma=i % 3 == 0, vignette_radius_frac=0.55)
            path.write_bytes(synth.encode_file(synth.render(spec, seed=i), quality=90))
        out.append(path.read_bytes())
    return out


def floor(data: bytes, cfg: PreprocessConfig) -> None:
    header = dec.read_header(data)
    dec.decode(data, header, dec.choose_reduction(header, cfg.working_side, cfg.square.policy))


def naive(data: bytes, cfg: PreprocessConfig) -> None:
    """Full decode, every op at full resolution, resize last."""
    header = dec.read_header(data)
    img = dec.decode(data, header, 1)
    img = geo.apply_orientation(img, geo.OrientParams(header.orientation))
    img = vignette.field_of_view(img, cfg.field_of_view).image
    side = min(img.shape[:2])
    img = geo.square(img, geo.ResizeParams(size=min(side, 4096), policy=cfg.square.policy))
    img = hair.remove_hair(img, cfg.hair).image
    img = colour.shades_of_gray(img, cfg.colour).image
    img = cv2.resize(img, (cfg.square.size, cfg.square.size), interpolation=cv2.INTER_AREA)
    enc.encode_jpeg(img, cfg.encode)
    enc.perceptual_hash(img, cfg.phash)


def per_image(fn, images: list[bytes], cfg, repeat: int = 2) -> float:
    """Median seconds per image, runs interleaved per image."""
    times = []
    for data in images:
        best = min(_time(fn, data, cfg) for _ in range(repeat))
        times.append(best)
    return statistics.median(times)


def _time(fn, data, cfg) -> float:
    t = time.perf_counter()
    fn(data, cfg)
    return time.perf_counter() - t


def replicated_sample(n: int) -> Path:
    """A generic-layout folder with ``n`` inputs: symbolic links to the real sample under new names."""
    root = WORK / f"sample-x{n}"
    if (root / "metadata.csv").exists():
        return root
    meta = pd.read_csv(SAMPLE / "metadata.csv", dtype=str, keep_default_na=False)
    (root / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        src = meta.iloc[i % len(meta)]
        name = f"{src['image_name']}_{i:05d}"
        link = root / "images" / f"{name}.jpg"
        if not link.exists():
            os.symlink(SAMPLE / "images" / f"{src['image_name']}.jpg", link)
        rows.append({**src.to_dict(), "image_name": name})
    pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
    return root


def run_cluster(inp: Path, out: Path, workers: int, cfg: PreprocessConfig, full: bool = False):
    """(processing seconds, max worker peak RSS in MB) for one build on a fresh local cluster.

    ``full``: also the driver's peak RSS (MB; the local scheduler runs in this process), the wall time of the
    whole build (ingest, processing, finalisation) and the manifest's timings.
    """
    import threading

    from distributed import Client, LocalCluster

    samples: list[tuple[float, int]] = []
    stop = threading.Event()

    def sample() -> None:  # the driver's RSS over time, to say in which phase its peak falls
        while not stop.is_set():
            samples.append((time.perf_counter(), _rss_mb()))
            stop.wait(0.1)

    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \
            Client(cl) as client:
        client.run(_reset_peak_rss)  # forked workers inherit the parent's high-water mark
        _reset_peak_rss()
        t = time.perf_counter()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        res = build.preprocess([str(inp)], str(out), cfg, client=client)
        wall = time.perf_counter() - t
        stop.set()
        sampler.join()
        rss = client.run(_peak_rss_mb)
        driver = _peak_rss_mb()
    if full:
        tm = Manifest.of(res.manifest).timings
        edges = [("ingest", tm["ingest_s"]), ("processing", tm["ingest_s"] + tm["process_s"]),
                 ("finalise", tm["ingest_s"] + tm["process_s"] + tm["finalise_s"]), ("manifest", float("inf"))]
        phases: dict[str, int] = {}
        for when, mb in samples:
            phase = next(name for name, end in edges if when - t <= end)
            phases[phase] = max(phases.get(phase, 0), mb)
        print(f"driver RSS peak by phase (MB, sampled every 0.1 s): {phases}")
        return tm, max(rss.values()), driver, wall
    return Manifest.of(res.manifest).timings["process_s"], max(rss.values())


def tile_input(n: int) -> Path:
    """``n`` generated ISIC 2024 tiles (HDF5 + metadata; cached)."""
    root = WORK / f"tiles-{n}"
    if not (root / "train-metadata.csv").exists():
        synth.write_isic2024(root, n=n, seed=n, positive_rate=0.02, workers=2)
    return root


def tile_floor(data: bytes, cfg: PreprocessConfig) -> None:
    """A bare decode + encode of the tile (no header parse, no resize, no ops)."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, cfg.encode.quality])


def tile_floor_sized(data: bytes, cfg: PreprocessConfig) -> None:
    """Decode, resize to the output size, encode: the least any tile pipeline storing one size must do."""
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    img = cv2.resize(img, (cfg.square.size, cfg.square.size), interpolation=cv2.INTER_AREA)
    cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, cfg.encode.quality])


def tiles_section(quick: bool) -> None:
    import h5py

    print("\n== ISIC 2024 tiles, one process (ms per tile, median; images/s per core = 1000 / ms)")
    root = tile_input(2000)
    with h5py.File(root / "train-image.hdf5") as f:
        tiles = [bytes(f[k][()]) for k in list(f)[:300]]
    fl = per_image(tile_floor, tiles, TILES, repeat=3)
    fs = per_image(tile_floor_sized, tiles, TILES, repeat=3)
    full = per_image(lambda d, c: pipeline.process_image(d, "x", c), tiles, TILES, repeat=3)
    dflt = per_image(lambda d, c: pipeline.process_image(d, "x", c), tiles, PreprocessConfig(), repeat=1)
    print(f"decode+encode floor {fl * 1e3:.3f} ({1 / fl:.0f}/s); decode+resize+encode {fs * 1e3:.3f}; "
          f"tiles preset {full * 1e3:.3f} ({1 / full:.0f}/s); default 512-px config {dflt * 1e3:.3f}")
    print(f"tiles/floor {full / fl:.2f} (target <= 2.0); tiles/(decode+resize+encode) {full / fs:.2f}; "
          f"default/tiles {dflt / full:.2f}")
    steps: dict[str, list[float]] = {}
    for data in tiles:  # where the tiles preset's time goes: each step's median, in units of the floor
        timings: dict[str, float] = {}
        pipeline.process_image(data, "x", TILES, timings=timings)
        for name, sec in timings.items():
            steps.setdefault(name, []).append(sec)
    parts = sorted(((statistics.median(v), k) for k, v in steps.items()), reverse=True)
    print("per step (median ms, x floor): " + ", ".join(f"{k} {m * 1e3:.3f} ({m / fl:.2f})" for m, k in parts
                                                        if m > 0.002 * fl))

    print("\n== tiles through preprocess, 2 workers: worker and driver peak RSS (MB) vs number of tiles")
    counts = (2000, 20_000) if quick else (5000, 50_000)
    peaks = []
    for n in counts:
        timings, worker, driver, wall = run_cluster(tile_input(n), WORK / f"out-tiles{n}", 2, TILES, full=True)
        peaks.append(worker)
        print(f"{n:7d} tiles: worker peak {worker} MB, driver peak {driver} MB, {wall:.0f} s "
              f"({n / wall:.0f} tiles/s end to end; processing {timings['process_s']:.0f} s, "
              f"finalise {timings['finalise_s']:.0f} s)")
    print(f"worker peak ratio {counts[1]}/{counts[0]}: {peaks[1] / peaks[0]:.3f} (target within 10%)")
    n = 20_000 if quick else 100_000
    timings, worker, driver, wall = run_cluster(tile_input(n), WORK / f"out-tiles{n}", 2, TILES, full=True)
    print(f"{n:7d} tiles: {wall:.0f} s end to end ({n / wall:.0f} tiles/s; ingest {timings['ingest_s']:.0f} s, "
          f"processing {timings['process_s']:.0f} s, finalise {timings['finalise_s']:.0f} s), worker peak "
          f"{worker} MB, driver peak {driver} MB (target < 1,536 MB); 401,059 tiles at this rate: "
          f"{401_059 / (n / wall) / 60:.1f} min (target < 20)")


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def status_mb(field: str) -> int | None:
    """A memory line of /proc/self/status (``VmRSS``, ``VmHWM``) in MB, or None where there is none."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) // 1024
    return None


def _rss_mb() -> int:
    return status_mb("VmRSS") or 0


def _peak_rss_mb() -> int:
    peak = status_mb("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer images (a smoke run)")
    ap.add_argument("--tiles-only", action="store_true", help="only the ISIC 2024 tiles sections")
    ap.add_argument("--run", help="preprocess this input once (2 workers, its layout's preset) and print the "
                                  "time and the driver's and workers' peak RSS")
    args = ap.parse_args()
    cv2.setNumThreads(1)
    if args.run:
        cfg = load_config(preset=build.auto_preset([args.run]))
        timings, worker, driver, wall = run_cluster(Path(args.run), WORK / "out-run", 2, cfg, full=True)
        print(f"{args.run}: {wall:.0f} s end to end ({wall / 60:.1f} min); {timings}; worker peak {worker} MB, "
              f"driver peak {driver} MB")
        return
    if args.tiles_only:
        tiles_section(args.quick)
        return
    n_big = 2 if args.quick else 6
    big = big_images(n_big)
    real = [p.read_bytes() for p in sorted((SAMPLE / "images").glob("*.jpg"))]
    real_big = [d for d in real if min((h := dec.read_header(d)).width, h.height) >= 2000]

    print("== per-image cost (ms, median; one process, OpenCV single-threaded)")
    print("floor = header + reduced decode; no-ops = pipeline with the normalisation ops off; full = the default\n"
          "op chain (field of view, hair, colour); naive = full decode, every op at full resolution, resize last")
    print(f"{'set':40s} {'floor':>7s} {'no-ops':>7s} {'full':>7s} {'naive':>8s}  "
          f"{'no-ops/floor':>12s} {'full/floor':>10s} {'naive/full':>10s}")
    with_field = [d for i, d in enumerate(big) if i % 2 == 0]
    without = [d for i, d in enumerate(big) if i % 2 == 1]
    real_6k = [d for d in real if (h := dec.read_header(d)).width * h.height >= 6000 * 4000]
    for label, images, n_naive in [
        (f"real 6000x4000 originals (n={len(real_6k)})", real_6k, 1),
        (f"generated 6000x4000, 12 hairs (n={len(without)})", without, 1),
        (f"generated 6000x4000, 12 hairs + field (n={len(with_field)})", with_field, 1),
        (f"real sample, all (n={len(real)})", real, 6),
        (f"real sample, short side>=2000 (n={len(real_big)})", real_big, 2),
    ]:
        if not images:
            continue
        f = per_image(lambda d, c: floor(d, c), images, FULL, repeat=3)
        p0 = per_image(lambda d, c: pipeline.process_image(d, "x", c), images, NO_OPS, repeat=3)
        pf = per_image(lambda d, c: pipeline.process_image(d, "x", c), images, FULL, repeat=3)
        nv = per_image(naive, images[:n_naive], FULL, repeat=1)
        print(f"{label:40s} {f * 1e3:7.1f} {p0 * 1e3:7.1f} {pf * 1e3:7.1f} {nv * 1e3:8.1f}  "
              f"{p0 / f:12.2f} {pf / f:10.2f} {nv / pf:10.1f}")
    print("(target: full/floor <= 1.5 per 6000x4000 image)")

    print("\n== scaling: 1 vs 2 worker processes (processing time, cluster start excluded)")
    n_scale = 178 if args.quick else 712
    inp = replicated_sample(n_scale)
    t1, _ = run_cluster(inp, WORK / "out-w1", 1, FULL)
    t2, _ = run_cluster(inp, WORK / "out-w2", 2, FULL)
    print(f"{n_scale} real images: 1 worker {t1:.1f} s, 2 workers {t2:.1f} s -> speed-up {t1 / t2:.2f}x")

    print("\n== worker peak RSS (MB) vs number of images (2 workers)")
    counts = (200, 2000) if args.quick else (500, 5000)
    peaks = []
    for n in counts:
        inp = replicated_sample(n)
        _, peak = run_cluster(inp, WORK / f"out-rss{n}", 2, FULL)
        peaks.append(peak)
        print(f"{n:5d} images: peak worker RSS {peak} MB")
    print(f"ratio {counts[1]}/{counts[0]}: {peaks[1] / peaks[0]:.2f}")
    tiles_section(args.quick)
    import shutil

    for p in WORK.glob("out-*"):
        shutil.rmtree(p, ignore_errors=True)


if __name__ == "__main__":
    main()
