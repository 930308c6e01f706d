"""Exact near-duplicate linking of perceptual hashes: a blocked, compiled popcount over all pairs.

Measured before choosing (bench/dedup.py): exact-match banding needs more bands than the bit threshold
(57 at 56 bits of 256) and multi-index search inside the bands explodes at a 22% radius, so neither
beats looking at every pair; a compiled XOR + popcount over all pairs is exact by construction at
about 1 ns per pair on two cores. Pairs are never listed: each block of rows is compared with every
later row in parallel, its matches (at most ``cap`` per row; rows with more are redone one at a
time) are joined into a union-find at once, and memory stays at the hashes plus one block.
"""

from __future__ import annotations

import numpy as np

_BLOCK = 1024
_CAP = 32


def words(hashes: list[str] | np.ndarray) -> np.ndarray:
    """Hex hashes of one length → a C-contiguous uint64 matrix ``(n, words)`` (big-endian words)."""
    hashes = list(hashes)
    if not hashes:
        return np.zeros((0, 1), np.uint64)
    width = len(hashes[0])
    n_words = -(-width // 16)
    raw = bytes.fromhex("".join(h.rjust(n_words * 16, "0") for h in hashes))
    return np.frombuffer(raw, dtype=">u8").reshape(len(hashes), n_words).astype(np.uint64)


def link(w: np.ndarray, max_bits: int, block_rows: int = _BLOCK, cap: int = _CAP) -> tuple[np.ndarray, np.ndarray]:
    """Group rows whose hashes differ in at most ``max_bits`` bits (transitively).

    Args:
        w: ``(n, words)`` uint64 hashes (see :func:`words`).
        max_bits: largest Hamming distance that links two rows.
        block_rows: rows compared with all later rows per parallel step.
        cap: matches kept per row per step before the row is redone alone.

    Returns:
        ``(labels, closest)``: per row the smallest row index of its group, and the distance to its
        closest linked row (-1 for rows linked to nothing).
    """
    n = len(w)
    parent = np.arange(n, dtype=np.int64)
    best = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    if n >= 2:
        from melanoma_data._jit import block, merge, roots  # numba: imported on first use

        w = np.ascontiguousarray(w, dtype=np.uint64)
        out_j = np.empty((block_rows, cap), np.int64)
        out_d = np.empty((block_rows, cap), np.int64)
        out_n = np.empty(block_rows, np.int64)
        for start in range(0, n - 1, block_rows):
            stop = min(n, start + block_rows)
            block(w, start, stop, np.uint64(max_bits), out_j, out_d, out_n)
            merge(w, start, np.uint64(max_bits), out_j, out_d, out_n[: stop - start], parent, best)
        labels = roots(parent)
    else:
        labels = parent
    closest = np.where(best == np.iinfo(np.int64).max, -1, best)
    return labels, closest
