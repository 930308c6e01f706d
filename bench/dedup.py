"""Near-duplicate grouping at archive scale: time and peak memory at 100k, 200k and 500k hashes.

Everything in one run (the machines are noisy): the exact grouping the pipeline uses
(``melanoma_data.hamming.link``: compiled, blocked XOR + popcount over every pair, groups joined as pairs
are found) on 256-bit hashes with 1% planted near-duplicates at distances up to the 56-bit threshold, the
same kernel's cost per pair, and the NumPy XOR-block approach it replaced on a smaller set for the ratio.
Targets: 500,000 hashes grouped in under 3 minutes and under 1 GB on 2 cores.

Run: ``uv run python bench/dedup.py [--quick]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.preprocess import _peak_rss_mb, _reset_peak_rss, _rss_mb  # noqa: E402
from melanoma_data import hamming  # noqa: E402

MAX_BITS = 56  # 0.22 × 256, the default threshold


def hashes(n: int, seed: int = 0) -> np.ndarray:
    """``n`` random 256-bit hashes, 1% of them near-duplicates (0–56 bits) of another."""
    rng = np.random.default_rng(seed)
    w = rng.integers(0, 2**63, size=(n, 4), dtype=np.uint64) | (rng.integers(0, 2, (n, 4), dtype=np.uint64) << 63)
    k = n // 100
    src, dst = rng.choice(n, size=(2, k), replace=False)
    flips = rng.integers(0, MAX_BITS + 1, size=k)
    for s, d, f in zip(src, dst, flips, strict=True):
        v = w[s].copy()
        for b in rng.choice(256, size=int(f), replace=False):
            v[b // 64] ^= np.uint64(1) << np.uint64(b % 64)
        w[d] = v
    return w


def numpy_blocks(w: np.ndarray, chunk: int = 2048) -> int:
    """The approach replaced: a (chunk × n × words) XOR block per step, pairs listed (count returned)."""
    n, found = len(w), 0
    for start in range(0, n, chunk):
        dist = np.bitwise_count(w[start : start + chunk, None, :] ^ w[None, start:, :]).sum(axis=2, dtype=np.int32)
        ii, jj = np.nonzero(dist <= MAX_BITS)
        found += int((start + ii < start + jj).sum())
    return found


def measure(fn, *args) -> tuple[float, float, object]:
    """(seconds, peak RSS above the RSS before the call in MB, result)."""
    base = _rss_mb()
    _reset_peak_rss()
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, _peak_rss_mb() - base, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="20k/40k/100k instead of 100k/200k/500k")
    args = ap.parse_args()
    sizes = (20_000, 40_000, 100_000) if args.quick else (100_000, 200_000, 500_000)
    hamming.link(hashes(3000), MAX_BITS)  # compile (cached on disk after the first run)
    print("== exact near-duplicate grouping (256-bit hashes, threshold 56 bits, 2 cores)")
    print(f"{'hashes':>8s} {'pairs':>10s} {'seconds':>8s} {'ns/pair':>8s} {'peak MB':>8s} {'grouped rows':>12s}")
    for n in sizes:
        w = hashes(n)
        el, mb, (labels, closest) = measure(hamming.link, w, MAX_BITS)
        pairs = n * (n - 1) / 2
        print(f"{n:8d} {pairs:10.3g} {el:8.1f} {el / pairs * 1e9:8.2f} {mb:8.0f} {int((closest >= 0).sum()):12d}")
    print("(target: 500,000 hashes in < 180 s and < 1,024 MB)")
    n = 20_000
    w = hashes(n, seed=1)
    t_new, mb_new, _ = measure(hamming.link, w, MAX_BITS)
    t_old, mb_old, _ = measure(numpy_blocks, w)
    print(f"\n== the same {n} hashes: compiled kernel {t_new:.2f} s ({mb_new:.0f} MB) vs NumPy XOR blocks "
          f"{t_old:.2f} s ({mb_old:.0f} MB) -> {t_old / t_new:.1f}x faster")


if __name__ == "__main__":
    main()
