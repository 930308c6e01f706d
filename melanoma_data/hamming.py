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


def _kernels():
    """Compile (once, cached on disk) the numba kernels."""
    global _COMPILED
    if _COMPILED is not None:
        return _COMPILED
    from numba import njit, prange

    @njit(inline="always")
    def popcount(x):
        x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
        x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
        x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
        return (x * np.uint64(0x0101010101010101)) >> np.uint64(56)

    @njit(inline="always")
    def distance(w, i, j):
        d = np.uint64(0)
        for k in range(w.shape[1]):
            d += popcount(w[i, k] ^ w[j, k])
        return d

    @njit(parallel=True, cache=True)
    def block(w, start, stop, max_bits, out_j, out_d, out_n):
        n = w.shape[0]
        cap = out_j.shape[1]
        for t in prange(stop - start):
            i = start + t
            c = 0
            for j in range(i + 1, n):
                d = distance(w, i, j)
                if d <= max_bits:
                    if c < cap:
                        out_j[t, c] = j
                        out_d[t, c] = d
                    c += 1
            out_n[t] = c

    @njit(cache=True)
    def find(parent, i):
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            nxt = parent[i]
            parent[i] = root
            i = nxt
        return root

    @njit(cache=True)
    def join(parent, best, i, j, d):
        a, b = find(parent, i), find(parent, j)
        if a != b:
            if a < b:
                parent[b] = a
            else:
                parent[a] = b
        if d < best[i]:
            best[i] = d
        if d < best[j]:
            best[j] = d

    @njit(cache=True)
    def merge(w, start, max_bits, out_j, out_d, out_n, parent, best):
        cap = out_j.shape[1]
        for t in range(out_n.shape[0]):
            i = start + t
            if out_n[t] <= cap:
                for c in range(out_n[t]):
                    join(parent, best, i, out_j[t, c], out_d[t, c])
            else:  # more matches than the buffer holds (a bulk-linked hash): redo this row alone
                for j in range(i + 1, w.shape[0]):
                    d = distance(w, i, j)
                    if d <= max_bits:
                        join(parent, best, i, j, d)

    @njit(cache=True)
    def roots(parent):
        out = np.empty(parent.shape[0], np.int64)
        for i in range(parent.shape[0]):
            out[i] = find(parent, i)
        return out

    _COMPILED = (block, merge, roots)
    return _COMPILED


_COMPILED = None


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
        block, merge, roots = _kernels()
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
