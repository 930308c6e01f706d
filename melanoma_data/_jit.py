"""Compiled (numba) inner loops: near-duplicate linking and the ops' per-pixel passes.

Top-level functions compiled on first use and cached on disk (``cache=True``: a closure that calls other
compiled closures is recompiled by every process, which cost each Dask worker seconds), so a process
pays the compilation once per installation. Import this module lazily: importing numba takes ~0.3 s.

The ops' kernels do in one or two passes over the pixels what took a dozen whole-array numpy calls; on a
128-px ISIC 2024 tile those calls' fixed overheads, not the arithmetic, were most of an op's time.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

# ------------------------------------------------------------------------ near-duplicate linking


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


# ---------------------------------------------------------------------------- hair and field of view


@njit(cache=True)
def median_u8(hist, n):
    # the smallest level whose cumulative count reaches (n + 1) / 2 (what searchsorted on the cumsum gives)
    c = 0
    for v in range(256):
        c += hist[v]
        if 2 * c >= n + 1:
            return v
    return 255

@njit(cache=True)
def hair_components(resp, margin, min_thr, sigma, short, min_length, max_width, straightness, net_extent, net_fill,
           ruler_length, mask, marks):
    """Threshold one polarity's response, label its 8-connected candidates and keep the hair-shaped ones.

    ``resp`` (uint8, its ``margin``-px border zeroed here) → ``mask`` (uint8, set to 1 under kept hair)
    and ``marks`` (set to 1 under dead straight long lines: ruler edges, pen strokes); both are
    ``OR``-ed into, so the polarities share them.
    """
    h, w = resp.shape
    for y in range(h):
        if y < margin or y >= h - margin:
            resp[y, :] = 0
        else:
            resp[y, :margin] = 0
            resp[y, w - margin:] = 0
    # robust threshold from a quarter of the pixels: median + sigma * 1.4826 * MAD
    hist = np.zeros(256, np.int64)
    n = 0
    for y in range(0, h, 2):
        for x in range(0, w, 2):
            hist[resp[y, x]] += 1
            n += 1
    med = median_u8(hist, n)
    hist[:] = 0
    for y in range(0, h, 2):
        for x in range(0, w, 2):
            hist[abs(np.int64(resp[y, x]) - med)] += 1
    mad = median_u8(hist, n) * 1.4826
    thr = int(np.floor(max(min_thr, med + sigma * mad)))  # resp is an integer: resp > t ⇔ resp > floor(t)
    # 8-connected components of resp > thr (union-find over the candidates only)
    parent = np.empty(h * w, np.int32)
    cand = np.empty(h * w, np.int32)
    nc = 0
    for y in range(h):
        for x in range(w):
            if resp[y, x] > thr:
                p = y * w + x
                parent[p] = p
                cand[nc] = p
                nc += 1
                for q in range(4):  # the neighbours already visited: up-left, up, up-right, left
                    yy, xx = (y - 1, x - 1 + q) if q < 3 else (y, x - 1)
                    if yy >= 0 and 0 <= xx < w and resp[yy, xx] > thr:
                        a, b = find(parent, p), find(parent, yy * w + xx)
                        if a != b:
                            if a < b:
                                parent[b] = a
                            else:
                                parent[a] = b
    if nc == 0:
        return
    comp = np.empty(h * w, np.int32)  # component number, set at each root pixel
    cid = np.empty(nc, np.int32)  # each candidate's component number
    area = np.zeros(nc, np.float64)
    perim = np.zeros(nc, np.float64)
    x0 = np.full(nc, w, np.int64)
    y0 = np.full(nc, h, np.int64)
    x1 = np.full(nc, -1, np.int64)
    y1 = np.full(nc, -1, np.int64)
    k = 0
    for i in range(nc):
        p = cand[i]
        r = find(parent, p)
        if r == p:  # a root is its set's smallest pixel index (unions keep the smaller), so it comes first
            comp[r] = k
            k += 1
        c = comp[r]
        cid[i] = c
        y, x = p // w, p % w
        area[c] += 1.0
        x0[c] = min(x0[c], x)
        x1[c] = max(x1[c], x)
        y0[c] = min(y0[c], y)
        y1[c] = max(y1[c], y)
        edge = False  # a neighbour inside the image that is not a candidate (outside counts as candidate)
        for yy in range(max(y - 1, 0), min(y + 2, h)):
            for xx in range(max(x - 1, 0), min(x + 2, w)):
                if not resp[yy, xx] > thr:
                    edge = True
        if edge:
            perim[c] += 1.0
    # 0: not hair, 1: hair, 2: a ruler candidate (long and kept: hair unless dead straight)
    kind = np.zeros(k, np.int8)
    rulers = False
    for c in range(k):
        length = max(perim[c] / 2, 1.0)  # a thin curve's outline is twice its length
        width = area[c] / length
        bw, bh = float(x1[c] - x0[c] + 1), float(y1[c] - y0[c] + 1)
        extent = max(bw, bh)
        fill = area[c] / max(bw * bh, 1.0)
        if (length >= min_length * short and width <= max_width * short + 1.0
                and (extent >= straightness * length
                     or (extent >= net_extent * short and fill <= net_fill))):
            kind[c] = 1
            if extent >= ruler_length * short:
                kind[c] = 2
                rulers = True
    if rulers:
        pix = np.empty(nc, np.int32)  # candidate pixels in component order
        start = np.zeros(k + 1, np.int64)
        for i in range(nc):
            start[cid[i] + 1] += 1
        for c in range(k):
            start[c + 1] += start[c]
        fill_at = start[:-1].copy()
        for i in range(nc):
            pix[fill_at[cid[i]]] = cand[i]
            fill_at[cid[i]] += 1
        tol = max(3.0, 0.008 * short)
        for c in range(k):
            if kind[c] != 2:
                continue
            # a least-squares line through the pixels (cv2.fitLine's DIST_L2); its 98th-percentile
            # distance (lower neighbour) within tol: dead straight, a ruler edge or pen stroke
            m = start[c + 1] - start[c]
            sx = sy = sxx = syy = sxy = 0.0
            for t in range(start[c], start[c + 1]):
                px, py = float(pix[t] % w), float(pix[t] // w)
                sx += px
                sy += py
                sxx += px * px
                syy += py * py
                sxy += px * py
            mx, my = sx / m, sy / m
            dxx, dyy, dxy = sxx / m - mx * mx, syy / m - my * my, sxy / m - mx * my
            angle = np.arctan2(2 * dxy, dxx - dyy) / 2
            vx, vy = np.cos(angle), np.sin(angle)
            off = np.empty(m, np.float64)
            for t in range(m):
                px, py = float(pix[start[c] + t] % w), float(pix[start[c] + t] // w)
                off[t] = abs((px - mx) * vy - (py - my) * vx)
            q = int(0.98 * (m - 1))
            if np.sort(off)[q] <= tol:
                kind[c] = 3
    # kept hair → mask; ruler edges and pen strokes → marks
    for i in range(nc):
        p = cand[i]
        c = kind[cid[i]]
        y, x = p // w, p % w
        if c == 1 or c == 2:
            mask[y, x] = 1
        elif c == 3:
            marks[y, x] = 1


@njit(cache=True)
def fov_screen(thumb, dark_level, dark):
    """Dark pixels of the grey thumbnail and the dark bands at its edges.

    The 1–2 px frame is replaced by its inner neighbours (scanners leave bright or dark frames); a
    pixel is dark below ``max(12, dark_level × the median of the centre half)``. Writes ``dark``
    (uint8, the thumbnail's shape) and returns ``(n_dark, y0, y1, x0, x1)``: the box without edge
    rows/columns that are more than 95% dark.
    """
    h, w = thumb.shape
    frame = 2 if h > 8 and w > 8 else 0
    hist = np.zeros(256, np.int64)
    cy0, cy1, cx0, cx1 = h // 4, 3 * h // 4, w // 4, 3 * w // 4
    if cy1 <= cy0 or cx1 <= cx0:  # no centre: the whole image
        cy0, cy1, cx0, cx1 = 0, h, 0, w
    for y in range(cy0, cy1):
        for x in range(cx0, cx1):
            hist[thumb[min(max(y, frame), h - 1 - frame), min(max(x, frame), w - 1 - frame)]] += 1
    n = (cy1 - cy0) * (cx1 - cx0)
    lo = hi = -1
    c = 0
    for v in range(256):  # np.median: the mean of the two middle order statistics
        c += hist[v]
        if lo < 0 and c >= (n - 1) // 2 + 1:
            lo = v
        if c >= n // 2 + 1:
            hi = v
            break
    ref = (lo + hi) / 2.0
    thresh = max(12.0, dark_level * max(ref, 1.0))
    rows = np.zeros(h, np.int64)
    cols = np.zeros(w, np.int64)
    n_dark = 0
    for y in range(h):
        sy = min(max(y, frame), h - 1 - frame)
        for x in range(w):
            d = thumb[sy, min(max(x, frame), w - 1 - frame)] < thresh
            dark[y, x] = d
            if d:
                rows[y] += 1
                cols[x] += 1
                n_dark += 1
    y0, y1, x0, x1 = 0, h, 0, w
    while y0 < h and rows[y0] > 0.95 * w:
        y0 += 1
    while y1 > 0 and rows[y1 - 1] > 0.95 * w:
        y1 -= 1
    while x0 < w and cols[x0] > 0.95 * h:
        x0 += 1
    while x1 > 0 and cols[x1 - 1] > 0.95 * h:
        x1 -= 1
    return n_dark, y0, y1, x0, x1



# ------------------------------------------------------------------------ streamed PNG with alpha


@njit(inline="always")
def _sample(row, i, wide):
    """Sample ``i`` of an unfiltered PNG row as float32 (16-bit samples are big-endian)."""
    if wide:
        return np.float32((np.int32(row[2 * i]) << 8) | np.int32(row[2 * i + 1]))
    return np.float32(row[i])


@njit(cache=True)
def png_alpha_rows(raw, stride, bpp, prev, out, y0, wide, channels, background):
    """Unfilter whole PNG rows (filter byte + ``stride - 1`` bytes each) and composite them onto grey.

    ``prev`` holds the previous row's unfiltered bytes (zeros before the first) and is updated;
    ``out[y0 + i]`` receives row ``i`` as RGB uint8, with the same float32 arithmetic as the strip
    composite of an OpenCV-decoded array (so both give identical bytes). ``wide``: 16-bit samples;
    ``channels``: 4 (RGBA) or 2 (grey + alpha). Returns the rows done, or -1 on an unknown filter type.
    """
    n_rows = raw.shape[0] // stride
    row_bytes = stride - 1
    width = out.shape[1]
    full = np.float32(65535.0) if wide else np.float32(255.0)
    scale = np.float32(257.0) if wide else np.float32(1.0)
    bg = np.float32(background) * scale
    one = np.float32(1.0)
    cur = np.empty(row_bytes, np.uint8)
    for r in range(n_rows):
        base = r * stride
        ftype = raw[base]
        for i in range(row_bytes):
            x = np.int32(raw[base + 1 + i])
            a = np.int32(cur[i - bpp]) if i >= bpp else np.int32(0)
            b = np.int32(prev[i])
            if ftype == 0:
                v = x
            elif ftype == 1:
                v = x + a
            elif ftype == 2:
                v = x + b
            elif ftype == 3:
                v = x + ((a + b) >> 1)
            elif ftype == 4:
                c = np.int32(prev[i - bpp]) if i >= bpp else np.int32(0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                if pa <= pb and pa <= pc:
                    v = x + a
                elif pb <= pc:
                    v = x + b
                else:
                    v = x + c
            else:
                return -1
            cur[i] = np.uint8(v & 255)
        for px in range(width):
            first = px * channels
            alpha = _sample(cur, first + channels - 1, wide) / full
            for ch in range(3):
                value = _sample(cur, first + (ch if channels == 4 else 0), wide)
                val = np.rint((value * alpha + bg * (one - alpha)) / scale)
                out[y0 + r, px, ch] = np.uint8(min(max(val, np.float32(0.0)), np.float32(255.0)))
        prev[:] = cur
    return n_rows


# ------------------------------------------------------------------------ artefacts: component shapes


@njit(cache=True)
def label_moments(labels, n, values):
    """Per label (0 … n-1) of an int32 label image: count, Σx, Σy, Σx², Σy², Σxy and the largest ``values``
    (a uint8 image of the same shape), in one pass over the pixels."""
    out = np.zeros((n, 7), np.float64)
    h, w = labels.shape
    for y in range(h):
        for x in range(w):
            lab = labels[y, x]
            if lab == 0:
                continue
            out[lab, 0] += 1.0
            out[lab, 1] += x
            out[lab, 2] += y
            out[lab, 3] += x * x
            out[lab, 4] += y * y
            out[lab, 5] += x * y
            v = values[y, x]
            if v > out[lab, 6]:
                out[lab, 6] = v
    return out
