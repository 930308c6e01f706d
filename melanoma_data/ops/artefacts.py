"""Artefacts that classifiers learn: rulers, ink marks, gel bubbles and dark corners — found, measured, kept.

Each detector is a pure function of the oriented image (before any crop), run on a colour thumbnail whose
short side is ``ArtefactParams.side``, and returns a mask at that size; :func:`detect_artefacts` bundles
them with their fractions and flags. What happens to the pixels is a policy (``leave`` by default): an
artefact is recorded and excluded from hair removal, never painted over as hair.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Annotated, Literal

import numpy as np
import pydantic
from pydantic import Field

from melanoma_data.errors import ConfigError
from melanoma_data.ops._cv import cv2, disk
from melanoma_data.ops.base import Bool, Int, OpParams, Real

VERSION = "1"

#: The artefact kinds in the order they are reported (columns ``<kind>_detected``, ``<kind>_fraction``).
KINDS = ("ruler", "ink", "bubbles", "dark_corners")


#: A fraction of the short side, 0 to 1.
_Fraction = Annotated[Real, Field(ge=0.0, le=1.0)]


class ArtefactParams(OpParams):
    """Artefact detection thresholds (sizes are fractions of the short side) and the policy.

    ``policy`` says what happens to ruler, ink and bubble pixels: ``leave`` (default: record only), ``mask`` (set
    them to black, as the field's ``mask`` policy does) or ``crop`` (cut the image edges that hold them, at most
    ``max_crop`` of each side; whatever is left is masked). The detectors look at the oriented image brought to
    about ``side`` on its short side (:func:`thumbnail`); the decode covers it whatever the output size, and a
    smaller original is not looked at.
    """

    enabled: Bool = Field(True, description="run detection (off: nothing detected, image untouched)")
    policy: Literal["leave", "mask", "crop"] = Field(
        "leave", title="artefacts policy", description="what to do with ruler, ink and bubble pixels: record only, "
                                                       "black them out, or crop the edges that hold them")
    side: Int = Field(384, ge=64, le=4096, title="artefacts side",
                      description="short side (px) of the image the detectors look at")
    tick_threshold: Real = Field(14.0, ge=1.0, le=255.0, description="a ruler tick is darker than its surroundings "
                                                                     "by at least this many grey levels")
    tick_length: tuple[_Fraction, _Fraction] = Field((0.012, 0.12), description="(shortest, longest) ruler tick")
    tick_width: Real = Field(0.012, ge=0.001, le=0.1, description="widest ruler tick")
    min_ticks: Int = Field(4, ge=3, le=100, description="ticks needed in one evenly spaced row for a ruler")
    tick_spacing: tuple[_Fraction, _Fraction] = Field((0.01, 0.2), description="(closest, farthest) spacing of "
                                                                                "neighbouring ticks")
    ink_saturation: Real = Field(0.35, ge=0.0, le=1.0, description="green-cyan ink is at least this saturated")
    ink_contrast: Real = Field(15.0, ge=1.0, le=128.0, description="violet ink is at least this red (Lab a*) and "
                                                                   "this blue (-b*)")
    ink_stroke_width: Real = Field(0.04, ge=0.001, le=1.0, description="violet ink comes in strokes at least 0.05 "
                                                                       "of the short side long and at most this wide "
                                                                       "(or four times longer than wide); violet "
                                                                       "blobs and dots are tissue, not ink")
    ink_min_fraction: Real = Field(0.001, ge=0.0, le=1.0, description="the image's ink must cover at least this "
                                                                      "fraction to count as marks")
    ink_max_share: Real = Field(0.15, ge=0.0, le=1.0, description="an ink colour covering more than this share of "
                                                                  "the image is its light or skin (a colour cast)")
    bubble_radius: tuple[_Fraction, _Fraction] = Field((0.012, 0.12), description="(smallest, largest) bubble radius")
    bubble_threshold: Real = Field(15.0, ge=1.0, le=255.0, description="a bubble rim is brighter than its "
                                                                       "surroundings (top-hat) by at least this many "
                                                                       "grey levels, and its inside no darker than "
                                                                       "the skin around it by more than that")
    corner_ratio: Real = Field(0.5, ge=0.05, le=1.0, description="a corner is dark below this fraction of the "
                                                                 "skin's brightness")
    min_dark_corners: Int = Field(3, ge=1, le=4, description="dark corners needed for dark_corners_detected")
    max_crop: Real = Field(0.25, ge=0.0, le=0.45, description="the crop policy never removes more than this "
                                                              "fraction of a side")

    @pydantic.model_validator(mode="after")
    def _ordered_pairs(self) -> ArtefactParams:
        for name in ("tick_length", "tick_spacing", "bubble_radius"):
            low, high = getattr(self, name)
            if high < low:
                raise ConfigError(f"{name}[1] must be >= {low}, got {high}")
        return self


def thumbnail(img: np.ndarray, side: int) -> np.ndarray:
    """``img`` with its short side brought to about ``side``: exact 2:1 area steps while it is at least
    twice as large (OpenCV's fast path), then bilinear for the rest (under 2:1, so no aliasing worth the
    cost: a few ms less per decoded 6000 × 4000 original than one fractional area resize)."""
    h, w = img.shape[:2]
    while min(h, w) >= 2 * side - 4:
        h, w = h // 2, w // 2
        img = cv2.resize(img[: 2 * h, : 2 * w], (w, h), interpolation=cv2.INTER_AREA)
    if min(h, w) > side + 4:
        k = side / min(h, w)
        img = cv2.resize(img, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_LINEAR)
    return img


def _components(binary: np.ndarray, values: np.ndarray | None = None) -> tuple[int, np.ndarray, np.ndarray]:
    """Labels and per-component shape statistics of a binary mask (one compiled pass over the pixels).

    Returns ``(n, labels, stats)`` where ``stats[i]`` (component ``i``, 0 = background) holds
    ``area, cx, cy, major, minor, ux, uy, peak``: centroid, the full lengths of the principal axes of an
    ellipse with the same second moments, the unit vector of the major axis, and the largest of
    ``values`` (uint8, same shape; 0 when not given) over the component.
    """
    from melanoma_data._jit import label_moments  # numba: imported on first use

    n, labels = cv2.connectedComponents(binary.astype(np.uint8), connectivity=8, ltype=cv2.CV_32S)
    sums = label_moments(labels, n, np.zeros(binary.shape, np.uint8) if values is None else values)
    area = sums[:, 0]
    safe = np.maximum(area, 1)
    mx, my = sums[:, 1] / safe, sums[:, 2] / safe
    cxx = sums[:, 3] / safe - mx**2 + 1 / 12
    cyy = sums[:, 4] / safe - my**2 + 1 / 12
    cxy = sums[:, 5] / safe - mx * my
    tr, det = cxx + cyy, cxx * cyy - cxy**2
    disc = np.sqrt(np.maximum(tr**2 / 4 - det, 0))
    l1, l2 = tr / 2 + disc, np.maximum(tr / 2 - disc, 0)
    theta = 0.5 * np.arctan2(2 * cxy, cxx - cyy)
    stats = np.stack([area, mx, my, 4 * np.sqrt(l1), 4 * np.sqrt(l2), np.cos(theta), np.sin(theta), sums[:, 6]],
                     axis=1)
    return n, labels, stats


def _thin(rgb: np.ndarray, grey: np.ndarray | None, op: int, scale: float
          ) -> tuple[np.ndarray, int, np.ndarray | None]:
    """``(grey, k, response)``: thin dark (black-hat) or bright (top-hat) structures narrower than a disk of
    ``scale`` × the short side (``k`` px, odd, at least 5); no response (None) under 32 px."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if grey is None else grey
    short = min(grey.shape)
    k = max(5, int(round(scale * short)) | 1)
    if short < 32:
        return grey, k, None
    return grey, k, cv2.morphologyEx(grey, op, disk(k), borderType=cv2.BORDER_REFLECT)


def _cut_base_lines(cand: np.ndarray, short: int) -> np.ndarray:
    """Remove long straight lines (a ruler's bar edge, a straight hair across ticks) from ``cand`` in place;
    returns where they were.

    The probabilistic Hough transform runs on the candidates at half resolution (a quarter of the cost;
    the lines are long, so nothing is lost) and the lines are cut 3 px wide at full resolution.
    """
    base = np.zeros_like(cand)
    h, w = cand.shape
    half = cv2.resize(cand, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    half = (half > 0).astype(np.uint8)
    lines = cv2.HoughLinesP(half, 1, np.pi / 180, threshold=int(0.075 * short), minLineLength=int(0.1 * short),
                            maxLineGap=1)
    if lines is None:
        return base
    for x0, y0, x1, y1 in lines.reshape(-1, 4)[:200]:
        cv2.line(base, (int(2 * x0), int(2 * y0)), (int(2 * x1), int(2 * y1)), 1, 3)
    cand[base > 0] = 0
    return base


def ruler_mask(rgb: np.ndarray, params: ArtefactParams, grey: np.ndarray | None = None) -> np.ndarray:
    """Ruler ticks: rows of at least ``min_ticks`` short, thin, dark, parallel, evenly spaced strokes.

    Scale bars in dermoscopy are graduated: ticks at a regular pitch, straight across the row (along a
    straight bar or the rim of the field). Hair, pigment network and skin lines make thin dark strokes
    too, but not several of the same length and direction side by side at an even pitch. Long straight
    lines (a ruler's base line) are cut out first, so a comb of ticks on a bar splits into its ticks.
    """
    grey, k, resp = _thin(rgb, grey, cv2.MORPH_BLACKHAT, 0.02)
    h, w = grey.shape
    short = min(h, w)
    out = np.zeros((h, w), bool)
    if resp is None:
        return out
    cand = (resp > params.tick_threshold).astype(np.uint8)
    base = _cut_base_lines(cand, short)
    n, labels, st = _components(cand, resp)
    if n < 2:
        return out
    area, cx, cy, major, minor, ux, uy, peak = st.T
    lo, hi = params.tick_length[0] * short, params.tick_length[1] * short
    # a tick on a bar (touching a cut-out base line) may be a short millimetre tick; a free one must be
    # clearly a stroke
    on_bar, pieces = np.zeros(n, bool), np.zeros(n, bool)
    if base.any():
        near = cv2.dilate(base, np.ones((5, 5), np.uint8)) > 0
        on_bar[np.unique(labels[near & (labels > 0)])] = True
        # a piece cut out of a hair by two crossing lines touches a cut at both ends; a tick only at its foot
        ends = [np.stack([cx + sgn * ux * major / 2, cy + sgn * uy * major / 2], axis=1) for sgn in (-1, 1)]
        touch = [near[np.clip(np.round(e[:, 1]).astype(int), 0, h - 1),
                      np.clip(np.round(e[:, 0]).astype(int), 0, w - 1)] for e in ends]
        pieces = touch[0] & touch[1]
    thin = (major <= hi) & (minor <= params.tick_width * short + 1.5)
    tick = thin & (((major >= max(lo, 4)) & (major >= 3.5 * minor)) | (on_bar & (major >= 3) & (major >= 1.8 * minor)))
    tick &= ~pieces
    tick[0] = False
    idx = np.flatnonzero(tick)
    if len(idx) < params.min_ticks:
        return out
    if len(idx) > 600:  # keep the longest: a ruler's ticks are among the clearest strokes
        idx = idx[np.argsort(-major[idx])[:600]]
    p = np.stack([cx[idx], cy[idx]], axis=1)
    u = np.stack([ux[idx], uy[idx]], axis=1)
    d = p[None, :, :] - p[:, None, :]  # d[i, j] = p[j] - p[i]
    dist = np.hypot(d[..., 0], d[..., 1])
    cos_dir = np.abs(u @ u.T)  # same direction (either sign)
    with np.errstate(invalid="ignore", divide="ignore"):
        across = np.abs(np.einsum("ijk,ik->ij", d, u)) / dist  # |cos| between the step and the tick
    lmaj = major[idx]
    ratio = np.maximum(lmaj[:, None], lmaj[None, :]) / np.minimum(lmaj[:, None], lmaj[None, :])
    ok = ((dist >= params.tick_spacing[0] * short) & (dist <= params.tick_spacing[1] * short)
          & (cos_dir >= np.cos(np.radians(12))) & (across <= 0.45) & (ratio <= 3.0))
    np.fill_diagonal(ok, False)
    # each tick links to its nearest compatible neighbour on either side of the row
    masked = np.where(ok, dist, np.inf)
    side = np.einsum("ijk,ik->ij", d, np.stack([-u[:, 1], u[:, 0]], axis=1))
    parent = np.arange(len(idx))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for sel in (side > 0, side < 0):
        near_d = np.where(sel, masked, np.inf)
        j = np.argmin(near_d, axis=1)
        linked = np.isfinite(near_d[np.arange(len(idx)), j])
        for a_, b_ in zip(np.flatnonzero(linked), j[linked], strict=True):
            parent[find(int(a_))] = find(int(b_))
    roots = np.array([find(i) for i in range(len(idx))])
    keep = np.zeros(n, bool)
    counts = np.bincount(roots, minlength=len(idx))

    def is_row(members: np.ndarray) -> bool:
        # order along the row (its principal axis) and test the pitch
        q = p[members] - p[members].mean(axis=0)
        _, _, vt = np.linalg.svd(q, full_matrices=False)
        order = np.argsort(q @ vt[0])
        steps = np.hypot(*np.diff(p[members][order], axis=0).T)
        pitch = np.percentile(steps, 25)
        if pitch <= 0:
            return False
        r = steps / pitch
        regular = (np.abs(r - np.round(r)) <= 0.2) & (r <= 4.5)  # one pitch, or a few (ticks lost to hair)
        # a short row must be clearly ink-dark; a long one is evidence enough on its own
        strong = np.median(peak[idx[members]]) >= 2.5 * params.tick_threshold or len(members) >= 2 * params.min_ticks
        return bool(strong and np.mean(regular) >= 0.8 and np.sum(np.abs(r - 1) <= 0.2) >= 2)

    rows: list[np.ndarray] = []
    for root in np.flatnonzero(counts >= params.min_ticks):
        members = np.flatnonzero(roots == root)
        # a graduated scale mixes millimetre ticks with longer 5 and 10 mm ones: the long ones alone are a row
        long = members[lmaj[members] >= 1.5 * np.percentile(lmaj[members], 25)]
        if is_row(members) or (len(long) >= params.min_ticks and is_row(long)):
            keep[idx[members]] = True
            rows.append(members)
    if keep.any():
        out = keep[labels]
        # the whole graduated strip: every dark stroke within the row's outline (a tick a hair crosses merged
        # with the hair and was no component of its own; the bar's base line), grown by a pixel
        strip = np.zeros((h, w), np.uint8)
        for members in rows:
            ends = np.concatenate([p[members] + sgn * u[members] * lmaj[members, None] / 2 for sgn in (-1, 1)])
            cv2.fillConvexPoly(strip, cv2.convexHull(np.round(ends).astype(np.int32)), 1)
        strip = cv2.dilate(strip, np.ones((3, 3), np.uint8))
        out |= (strip > 0) & (resp > params.tick_threshold)
    return out


def ink_mask(rgb: np.ndarray, params: ArtefactParams) -> np.ndarray:
    """Marker and surgical-pen ink of colours no tissue has: green-cyan, or blue-violet-magenta with red in it.

    Skin, blood and melanin are red to brown. The bluish light of some dermoscopes and the blue-white veil
    are blue with little red (Lab a* under ~10 on the real sample), so plain pale blue is left alone — which
    also means pale blue ink in skin furrows and grey-black pen are missed (see the README's limits).
    Green-cyan (hue 35–95 on OpenCV's 0–180 scale), or hue 115–165 that is red and blue at once (a* ≥
    ``ink_contrast`` and b* ≤ −``ink_contrast``), with at least ``ink_saturation`` counts; a 2 × 2 opening
    drops isolated pixels of JPEG noise, and violet must come as strokes (see ``ink_stroke_width``).
    """
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    lab = None

    def band(lo: int, hi: int, share: float, red_blue: bool) -> np.ndarray:
        nonlocal lab
        floor = 80 if share >= 1 else 50  # a stroke starts where its ink is clear, not in near-black hair
        m = cv2.inRange(hsv, (lo, int(np.ceil(share * params.ink_saturation * 255)), floor), (hi, 255, 255))
        if red_blue and m.any():
            lab = cv2.cvtColor(rgb, cv2.COLOR_RGB2LAB).astype(np.int16) if lab is None else lab
            c = share * params.ink_contrast
            m &= (((lab[..., 1] >= 128 + c) & (lab[..., 2] <= 128 - c)).astype(np.uint8) * 255)
        return m

    green = cv2.morphologyEx(band(35, 95, 1.0, False), cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
    violet = cv2.morphologyEx(band(115, 165, 1.0, True), cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
    # a colour that covers much of the image is its light or its skin (a strong colour cast), not ink
    for m in (green, violet):
        if np.count_nonzero(m) > params.ink_max_share * m.size:
            m[:] = 0
    if violet.any():  # violet lesions exist (blue nevi, veils): violet ink must come as strokes, not blobs
        n, labels, st = _components(violet > 0)
        short = min(rgb.shape[:2])
        thin = (st[:, 4] <= params.ink_stroke_width * short) | (st[:, 3] >= 4 * st[:, 4])
        stroke = thin & (st[:, 3] >= 0.05 * short)
        stroke[0] = False
        violet = (stroke[labels] * 255).astype(np.uint8)
    ink = green | violet
    if ink.any():
        # hysteresis: a stroke continues where its ink is paler (half the saturation and redness/blueness),
        # and its soft edges belong to it (and must not be taken for hair)
        weak = (band(35, 95, 0.5, False) if green.any() else 0) | (band(115, 165, 0.5, True) if violet.any() else 0)
        n, labels = cv2.connectedComponents(np.asarray(weak | ink, np.uint8), connectivity=8, ltype=cv2.CV_32S)
        seeded = np.zeros(n, bool)
        seeded[np.unique(labels[ink > 0])] = True
        seeded[0] = False
        sizes = np.bincount(labels.ravel(), minlength=n)
        seeded &= sizes <= params.ink_max_share * labels.size  # grown over much of the image: a cast
        ink = cv2.dilate(seeded[labels].view(np.uint8), np.ones((5, 5), np.uint8))
    return ink > 0


def bubble_mask(rgb: np.ndarray, params: ArtefactParams, grey: np.ndarray | None = None) -> np.ndarray:
    """Gel and air bubbles: closed bright rims (a thin ring brighter than both its inside and outside).

    Bright thin structures (a top-hat at ``0.015`` of the short side) that enclose a round hole of a
    bubble's size are rims; the mask is the rim plus the hole it encloses. Specular dots and the bright
    spaces of a pigment network are blobs, not rings, and enclose nothing.
    """
    grey, k, resp = _thin(rgb, grey, cv2.MORPH_TOPHAT, 0.015)
    h, w = grey.shape
    short = min(h, w)
    out = np.zeros((h, w), bool)
    if resp is None:
        return out
    rim = (resp > params.bubble_threshold).astype(np.uint8)
    rim = cv2.morphologyEx(rim, cv2.MORPH_CLOSE, np.ones((3, 3), np.uint8))
    # holes: what the rims enclose — not rim, and not reachable from the image's border (a flood fill from a
    # one-pixel frame is much cheaper than labelling the whole background)
    reach = cv2.copyMakeBorder(rim, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    cv2.floodFill(reach, None, (0, 0), 2)
    enclosed = (reach[1:-1, 1:-1] == 0).view(np.uint8)
    # labelled 8-connected: OpenCV's fast (Grana) labelling; two holes touching only at a corner become one
    n, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(enclosed, 8, cv2.CV_32S, cv2.CCL_GRANA)
    rmin, rmax = params.bubble_radius[0] * short, params.bubble_radius[1] * short
    x, y, bw, bh, area = stats.T
    inner = (x > 0) & (y > 0) & (x + bw < w) & (y + bh < h)  # a hole: enclosed, not touching the border
    r = np.sqrt(area / np.pi)
    roundish = (area >= 0.6 * bw * bh) & (np.maximum(bw, bh) <= 2.5 * np.minimum(bw, bh))
    hole = inner & roundish & (r >= max(rmin, 1.5)) & (r <= rmax)
    hole[0] = False
    # a bubble is clear: what its rim encloses is as bright as the skin around it, and the rim is brighter
    # than that skin; a "hole" closed by crossing hairs or by bright spots around a dark dot is not
    for i in np.flatnonzero(hole):
        x0, y0 = max(int(x[i]) - 2 * k, 0), max(int(y[i]) - 2 * k, 0)
        x1, y1 = min(int(x[i] + bw[i]) + 2 * k, w), min(int(y[i] + bh[i]) + 2 * k, h)
        own = (labels[y0:y1, x0:x1] == i).view(np.uint8)
        near = cv2.dilate(own, disk(k)) > 0
        ring = near & (own == 0) & (rim[y0:y1, x0:x1] > 0)
        around = (cv2.dilate(own, disk(2 * k + 1)) > 0) & ~near & (rim[y0:y1, x0:x1] == 0)
        patch = grey[y0:y1, x0:x1]
        if not around.any() or not ring.any():
            hole[i] = False
            continue
        skin, inside, edge = (float(np.median(patch[m])) for m in (around, own > 0, ring))
        if inside < skin - params.bubble_threshold or edge < skin + params.bubble_threshold / 2:
            hole[i] = False
    if not hole.any():
        return out
    holes = hole[labels]
    grown = cv2.dilate(holes.view(np.uint8), disk(2 * (k // 2) + 1)) > 0
    return holes | (grown & (rim > 0))


def corner_ratios(grey: np.ndarray) -> tuple[np.ndarray, float]:
    """Each corner's median brightness over the skin's (the 75th percentile of the central 60 %).

    Corners are squares of a tenth of the short side; order: top-left, top-right, bottom-left,
    bottom-right. Returns ``(ratios, skin brightness)``.
    """
    h, w = grey.shape
    c = max(2, int(0.1 * min(h, w)))
    centre = grey[int(0.2 * h): int(0.8 * h) + 1, int(0.2 * w): int(0.8 * w) + 1]
    skin = max(float(np.percentile(centre, 75)), 1.0)
    corners = (grey[:c, :c], grey[:c, -c:], grey[-c:, :c], grey[-c:, -c:])
    return np.array([float(np.median(k)) / skin for k in corners]), skin


def dark_corners(rgb_or_grey: np.ndarray, params: ArtefactParams) -> tuple[bool, float, np.ndarray]:
    """Dark corners and dark field rings, graded or sharp, relative to the skin's brightness.

    A corner is dark when its median is below ``corner_ratio`` × the skin's brightness (so brown-grey
    corners on pale skin count, and a dark image with even lighting does not); the image has dark corners
    when at least ``min_dark_corners`` are, or when the four corners' mean ratio is below ``corner_ratio``
    (a soft, graded field darkens every corner a little). The mask is the part of the image darker than that
    level and connected to the border. Returns ``(detected, fraction, mask)``.
    """
    grey = cv2.cvtColor(rgb_or_grey, cv2.COLOR_RGB2GRAY) if rgb_or_grey.ndim == 3 else rgb_or_grey
    ratios, skin = corner_ratios(grey)
    # several clearly dark corners, or all four graded down on average (a soft field's grey corners)
    detected = (int(np.sum(ratios < params.corner_ratio)) >= params.min_dark_corners
                or float(ratios.mean()) < params.corner_ratio)
    if not detected:
        return False, 0.0, np.zeros(grey.shape, bool)
    dark = (grey < params.corner_ratio * skin).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(dark, 8, cv2.CV_32S, cv2.CCL_GRANA)
    h, w = grey.shape
    x, y, bw, bh = stats[:, 0], stats[:, 1], stats[:, 2], stats[:, 3]
    border = (x == 0) | (y == 0) | (x + bw == w) | (y + bh == h)
    border[0] = False
    mask = border[labels]
    return True, float(mask.mean()), mask


@dataclasses.dataclass(frozen=True, eq=False)
class Artefacts:
    """What :func:`detect_artefacts` found.

    Attributes:
        ruler, ink, bubbles: boolean masks at the detection thumbnail's size (``None`` when not run).
        dark_corners: the dark border region (mask at the grey thumbnail's size).
        detected: kind → flag; fraction: kind → fraction of the image's area.
        looked: the detectors ran (off, or an image under half of ``side`` on its short side: too small
            to tell a tick from noise, so nothing is claimed either way).
    """

    ruler: np.ndarray | None
    ink: np.ndarray | None
    bubbles: np.ndarray | None
    dark_corners: np.ndarray | None
    detected: dict[str, bool]
    fraction: dict[str, float]
    looked: bool = True

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Artefacts):
            return NotImplemented
        same = all((a is None and b is None) or (a is not None and b is not None and np.array_equal(a, b))
                   for a, b in ((self.ruler, other.ruler), (self.ink, other.ink), (self.bubbles, other.bubbles),
                                (self.dark_corners, other.dark_corners)))
        return (same and self.detected == other.detected and self.fraction == other.fraction
                and self.looked == other.looked)

    __hash__ = None  # type: ignore[assignment]  # holds arrays

    def kept(self) -> np.ndarray | None:
        """Union of the ruler, ink and bubble masks: the pixels hair removal must leave alone (computed once:
        the policy and the pipeline both ask)."""
        return self._kept

    @functools.cached_property
    def _kept(self) -> np.ndarray | None:
        masks = [m for m in (self.ruler, self.ink, self.bubbles) if m is not None]
        return np.logical_or.reduce(masks) if masks else None


NOTHING = Artefacts(None, None, None, None, {k: False for k in KINDS}, {k: 0.0 for k in KINDS}, looked=False)


def detect_artefacts(img: np.ndarray, params: ArtefactParams, thumb: np.ndarray | None = None) -> Artefacts:
    """Run every detector on the oriented image (before any crop: rulers sit on the field's rim).

    ``thumb``: optionally ``geometry.grey_thumbnail(img)``, which the dark-corner test reads.
    """
    if not params.enabled or img.ndim != 3 or 2 * min(img.shape[:2]) < params.side:
        return NOTHING
    small = thumbnail(img, params.side)
    grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    ruler, ink, bubbles = ruler_mask(small, params, grey), ink_mask(small, params), bubble_mask(small, params, grey)
    if thumb is None:
        from melanoma_data.ops.geometry import grey_thumbnail

        thumb = grey_thumbnail(img)
    corners, corner_fraction, corner_mask = dark_corners(thumb, params)
    ink_fraction = float(ink.mean())
    detected = {"ruler": bool(ruler.any()), "ink": ink_fraction >= params.ink_min_fraction,
                "bubbles": bool(bubbles.any()), "dark_corners": bool(corners)}
    fraction = {"ruler": float(ruler.mean()), "ink": ink_fraction, "bubbles": float(bubbles.mean()),
                "dark_corners": corner_fraction}
    return Artefacts(ruler, ink if detected["ink"] else np.zeros_like(ink), bubbles, corner_mask, detected, fraction)


def crop_edges(mask: np.ndarray, params: ArtefactParams) -> tuple[tuple[float, float, float, float], np.ndarray]:
    """The ``crop`` policy: ``(box, rest)`` — the largest box (fractions) that cuts each artefact piece
    off at the nearest edge, at most ``max_crop`` of a side in all, and the pieces it could not cut off.
    """
    h, w = mask.shape
    rest = np.zeros_like(mask)
    n, labels, stats, _ = cv2.connectedComponentsWithStatsWithAlgorithm(mask.astype(np.uint8), 8, cv2.CV_32S,
                                                                         cv2.CCL_GRANA)
    box = [0, 0, w, h]  # x0, y0, x1, y1
    for i in np.argsort(-stats[1:, cv2.CC_STAT_AREA]) + 1:
        bx, by, bw, bh = (int(v) for v in stats[i, :4])
        x0, y0, x1, y1 = box
        if bx >= x1 or by >= y1 or bx + bw <= x0 or by + bh <= y0:
            continue  # already outside the box
        # (which side of the box moves, to where, the area that costs) for the cuts within max_crop
        cuts = [(k, v, cost) for k, v, room, cost in (
            (0, bx + bw, bx + bw <= params.max_crop * w, (bx + bw - x0) * (y1 - y0)),
            (2, bx, w - bx <= params.max_crop * w, (x1 - bx) * (y1 - y0)),
            (1, by + bh, by + bh <= params.max_crop * h, (by + bh - y0) * (x1 - x0)),
            (3, by, h - by <= params.max_crop * h, (y1 - by) * (x1 - x0))) if room]
        if not cuts:
            rest |= labels == i
            continue
        k, v, _ = min(cuts, key=lambda c: c[2])
        box[k] = max(box[k], v) if k < 2 else min(box[k], v)
    x0, y0, x1, y1 = box
    return (x0 / w, y0 / h, x1 / w, y1 / h), rest


def mask_pixels(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``img`` with the pixels under ``mask`` (any size: resized to the image) set to black; a new array."""
    h, w = img.shape[:2]
    if mask.shape != (h, w):
        mask = cv2.resize(mask.view(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
    out = img.copy()
    out[mask] = 0
    return out


@dataclasses.dataclass(frozen=True)
class ArtefactResult:
    """Result of :func:`artefacts`: the image after the ``mask`` policy, what was found, and for ``crop``
    the box (fractions) that cuts the artefacts off at the edges."""

    image: np.ndarray
    found: Artefacts
    box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)


def artefacts(img: np.ndarray, params: ArtefactParams, thumb: np.ndarray | None = None) -> ArtefactResult:
    """Detect the artefacts and apply the policy (the op the pipeline composes).

    ``leave`` returns ``img`` itself; ``mask`` blackens ruler, ink and bubble pixels; ``crop`` returns the
    box that cuts them off at the edges (the pipeline applies it with the field of view's crop) and
    blackens the pieces it could not cut off.
    """
    found = detect_artefacts(img, params, thumb)
    kept = found.kept()
    if params.policy == "leave" or kept is None or not kept.any():
        return ArtefactResult(img, found)
    if params.policy == "mask":
        return ArtefactResult(mask_pixels(img, kept), found)
    box, rest = crop_edges(kept, params)
    return ArtefactResult(mask_pixels(img, rest) if rest.any() else img, found, box)

