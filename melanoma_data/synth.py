"""Synthetic dermoscopy generator: skin, lesion, hair, microscope vignette, ruler, casts, EXIF.

Deterministic from a seed, with ground truth for what it drew (hair mask, vignette circle,
lesion mask), and writers for every input layout the toolkit reads. Used by tests, benchmarks and
the ``demo`` command; it covers sizes, orientations and defects the real sample lacks.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from melanoma_data import layouts
from melanoma_data.layouts import isic2024
from melanoma_data.layouts.isic2024 import TBP_COLUMNS, TRAIN_ONLY_2024  # noqa: F401 (the writers' tables)
from melanoma_data.ops._cv import cv2

_MALIGNANT_2024 = isic2024._MALIGNANT_2024
SITES_2019 = ["anterior torso", "posterior torso", "lateral torso", "upper extremity", "lower extremity", "head/neck"]
_INVERSE_ORIENTATION = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}


@dataclasses.dataclass(frozen=True)
class SynthSpec:
    """What to draw for one image (sizes in pixels of the displayed image).

    Attributes:
        width, height: displayed size (portrait when height > width).
        melanoma: lesion drawn asymmetric, irregular and variegated.
        hairs: number of hair strands.
        hair_colour: ``dark``, ``light`` or ``mixed``.
        vignette: draw a dark circular microscope field.
        vignette_radius_frac: field radius / short side.
        vignette_offset: centre offset as fractions of (width, height).
        ruler: draw a ruler along the bottom edge.
        ticks: draw a free row of scale ticks (no bar) at a random edge and angle, as some dermoscopes
            etch on their plate.
        pen: number of pen / marker strokes.
        pen_ink: their ink (a key of :data:`INKS`); empty: one drawn at random.
        bubbles: number of gel / air bubbles (bright round rims).
        exposure: global brightness multiplier.
        cast: per-channel (R, G, B) gains (a colour cast).
        exif_orientation: EXIF tag written to the file; pixels are stored so that a viewer which
            honours the tag shows the displayed image.
        lesion_scale: lesion radius / short side.
        abcd: for the known-answer mode, the lesion's (asymmetry, border irregularity, colour
            variegation) in [0, 1] drawn continuously instead of from ``melanoma`` (the diameter is
            ``lesion_scale``). Drawn so that they can be read back from the pixels: the radius is
            exactly ``lesion_scale``; asymmetry is an off-centre bulge, an oval and a stretch of
            ``1 + 0.5 A``; the border has fixed energy ``∝ 0.01 + 0.15 B`` in outline harmonics 3–6
            with random phases; exactly ``30% × C`` of the lesion is dark brown-black and ``20% × C``
            blue-grey. Only position, orientation, phases, skin and defects are random.
        structures: for the structures mode (:data:`STRUCTURES`, each in [0, 1]): the 7-point
            checklist's dermoscopic structures drawn as textures, not as the inverse of any feature —
            atypical pigment network, globules, streaks, blue-white veil, regression, border roughness
            (multi-scale noise over many outline harmonics) and colour mixture (a continuous blend of
            browns). Their visibility varies with exposure, skin tone and noise.
        skin: base skin colour (RGB) for the structures mode (tones vary from light to dark).
    """

    width: int = 1024
    height: int = 768
    melanoma: bool = False
    hairs: int = 0
    hair_colour: str = "dark"
    vignette: bool = False
    vignette_radius_frac: float = 0.5
    vignette_offset: tuple[float, float] = (0.0, 0.0)
    ruler: bool = False
    ticks: bool = False
    pen: int = 0
    pen_ink: str = ""
    bubbles: int = 0
    exposure: float = 1.0
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    exif_orientation: int = 1
    lesion_scale: float = 0.22
    abcd: tuple[float, float, float] | None = None
    structures: tuple[float, ...] | None = None
    skin: tuple[float, float, float] | None = None
    clinical: bool = False


@dataclasses.dataclass
class SynthImage:
    """A generated image (as displayed) plus the ground truth of what was drawn."""

    image: np.ndarray
    hair_mask: np.ndarray
    lesion_mask: np.ndarray
    vignette: tuple[float, float, float] | None  # (cx, cy, r) in displayed pixels
    spec: SynthSpec
    artefacts: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # kind → drawn mask

    @property
    def hair_fraction(self) -> float:
        """Fraction of pixels covered by drawn hair."""
        return float(self.hair_mask.mean())


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """Zero-mean, unit-ish noise varying over about ``cells`` cells along the short side."""
    short = min(h, w)
    gh, gw = max(2, round(cells * h / short)), max(2, round(cells * w / short))
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _lesion_mask(rng: np.random.Generator, h: int, w: int, spec: SynthSpec) -> np.ndarray:
    short = min(h, w)
    cx = w / 2 + rng.uniform(-0.08, 0.08) * w
    cy = h / 2 + rng.uniform(-0.08, 0.08) * h
    theta = np.linspace(0, 2 * np.pi, 240, endpoint=False)
    r = np.ones_like(theta)
    if spec.abcd is not None:
        # known-answer mode: what is drawn is a deterministic function of (A, B, C, D) up to nuisance
        # (position, orientation, phases), so an observer can recover them and p_true is attainable
        radius = spec.lesion_scale * short
        asym, border, _ = spec.abcd
        r += 0.3 * asym * np.sin(theta + rng.uniform(0, 2 * np.pi)) + 0.15 * asym * np.sin(2 * theta)
        for k in range(3, 7):  # border irregularity: fixed energy in harmonics 3–6 (2 is elongation's; higher
            # ones would be below a pixel at the 64–128 px the models see, and the answer no longer known)
            r += (0.01 + 0.15 * border) / (k**0.5) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
        ecc = 1.0 + 0.5 * asym
    elif spec.structures is not None:
        # multi-scale roughness: random amplitudes over harmonics 2–40 with a 1/k falloff, so no feature
        # that sums a few harmonics reads it back exactly
        radius = spec.lesion_scale * short
        rough = spec.structures[STRUCTURES.index("border")]
        for k in range(2, 41):
            amp = (0.015 + 0.09 * rough) * rng.rayleigh(1.0) / k**0.8
            r += amp * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
        ecc = rng.uniform(1.0, 1.35)
    else:
        radius = spec.lesion_scale * short * rng.uniform(0.8, 1.2)
        irregular = 0.18 if spec.melanoma else 0.06
        for k in range(2, 9):
            r += rng.uniform(0, irregular) / (k**0.5) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
        ecc = rng.uniform(1.0, 1.5 if spec.melanoma else 1.2)
    pts = np.stack([cx + radius * r * np.cos(theta) * ecc, cy + radius * r * np.sin(theta)], axis=1)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(pts * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=4)
    return mask


def _draw_hairs(rng: np.random.Generator, img: np.ndarray, spec: SynthSpec) -> np.ndarray:
    """Draw curved strands onto ``img`` (float32, in place); returns the hair mask."""
    h, w = img.shape[:2]
    short = min(h, w)
    scale = short / 768
    mask = np.zeros((h, w), bool)
    for _ in range(spec.hairs):
        colour_kind = spec.hair_colour if spec.hair_colour != "mixed" else rng.choice(["dark", "light"])
        if colour_kind == "dark":
            colour = np.array([40, 28, 22]) + rng.integers(-15, 15, 3)
        else:
            colour = np.array([215, 200, 180]) + rng.integers(-15, 15, 3)
        thickness = max(1, round(rng.uniform(1.0, 4.0) * scale))
        length = rng.uniform(0.3, 0.9) * short
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        angle = rng.uniform(0, 2 * np.pi)
        curl = rng.uniform(-1.5, 1.5) / short
        steps = 40
        pts = []
        for _ in range(steps):
            pts.append((x, y))
            angle += curl * length / steps + rng.normal(0, 0.02)
            x += math.cos(angle) * length / steps
            y += math.sin(angle) * length / steps
        pts_arr = np.array(pts)
        pad = thickness + 2
        x0, y0 = (np.floor(pts_arr.min(axis=0)) - pad).astype(int).clip(0)
        x1, y1 = np.ceil(pts_arr.max(axis=0) + pad).astype(int)
        x1, y1 = min(x1, w), min(y1, h)
        if x1 <= x0 or y1 <= y0:
            continue
        layer = np.zeros((y1 - y0, x1 - x0), np.uint8)
        poly = np.round((pts_arr - (x0, y0)) * 16).astype(np.int32)
        cv2.polylines(layer, [poly], False, 255, thickness=thickness, lineType=cv2.LINE_AA, shift=4)
        alpha = (layer.astype(np.float32) / 255.0)[..., None] * 0.9
        roi = img[y0:y1, x0:x1]
        roi[:] = roi * (1 - alpha) + colour.astype(np.float32) * alpha
        mask[y0:y1, x0:x1] |= layer > 96
    return mask


def paste_hairs(img: np.ndarray, seed: int, colour: str = "dark",
                hairs: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Draw synthetic hair strands on a copy of a real RGB image: ``(hairy image, true hair mask)``.

    The ground truth of the hair benchmarks and tests: ``hairs`` strands (default 4–13, drawn from
    ``seed``) of the given colour (``dark``, ``light`` or ``mixed``), as :func:`render` draws them.
    """
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 14)) if hairs is None else hairs
    out = img.astype(np.float32).copy()
    mask = _draw_hairs(rng, out, SynthSpec(width=img.shape[1], height=img.shape[0], hairs=n, hair_colour=colour))
    return np.clip(np.rint(out), 0, 255).astype(np.uint8), mask


def _draw_ruler(img: np.ndarray) -> np.ndarray:
    """A white bar with graduated ticks along the bottom edge; returns its mask."""
    h, w = img.shape[:2]
    short = min(h, w)
    mask = np.zeros((h, w), np.uint8)
    y0 = int(h - 0.07 * short)
    cv2.rectangle(img, (int(0.1 * w), y0), (int(0.9 * w), h - 1), (235, 235, 225), -1)
    cv2.rectangle(mask, (int(0.1 * w), y0), (int(0.9 * w), h - 1), 1, -1)
    step = max(4, int(0.02 * short))
    for i, x in enumerate(range(int(0.1 * w), int(0.9 * w), step)):
        tick = int(0.035 * short) if i % 5 == 0 else int(0.02 * short)
        cv2.line(img, (x, y0), (x, y0 + tick), (20, 20, 20), max(1, short // 500))
    return mask > 0


def _draw_ticks(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """A free row of 6–14 dark ticks near a random edge, at a random angle; returns their mask."""
    h, w = img.shape[:2]
    short = min(h, w)
    mask = np.zeros((h, w), np.uint8)
    n = int(rng.integers(6, 15))
    pitch = rng.uniform(0.025, 0.06) * short
    angle = rng.uniform(0, np.pi)  # the row's tilt from its edge
    edge = rng.uniform(0.06, 0.14) * short
    side = int(rng.integers(4))
    anchor = [np.array([edge, rng.uniform(0.2, 0.8) * h]), np.array([w - edge, rng.uniform(0.2, 0.8) * h]),
              np.array([rng.uniform(0.2, 0.8) * w, edge]), np.array([rng.uniform(0.2, 0.8) * w, h - edge])][side]
    if side < 2:  # d: along the row (rows along the left/right edges run roughly vertically); nrm: the ticks
        d, nrm = np.array([np.sin(angle) * 0.3, 1.0]), np.array([1.0, -np.sin(angle) * 0.3])
    else:
        d, nrm = np.array([1.0, np.sin(angle) * 0.3]), np.array([-np.sin(angle) * 0.3, 1.0])
    d, nrm = d / np.linalg.norm(d), nrm / np.linalg.norm(nrm)
    colour = [float(v) for v in rng.uniform(10, 45, 3)]
    width = max(1, int(round(short * rng.uniform(0.002, 0.004))))
    for i in range(n):
        length = (rng.uniform(0.05, 0.07) if i % 5 == 0 else rng.uniform(0.025, 0.04)) * short
        c = anchor + (i - n / 2) * pitch * d
        p0, p1 = c - nrm * length / 2, c + nrm * length / 2
        for target, value in ((img, colour), (mask, 1)):
            cv2.line(target, (int(p0[0]), int(p0[1])), (int(p1[0]), int(p1[1])), value, width, cv2.LINE_AA)
    return mask > 0


#: Pen and marker inks drawn by the generator (RGB): gentian violet, purple, blue and green markers.
INKS = {"violet": (110, 60, 160), "purple": (140, 50, 150), "blue": (50, 70, 170), "green": (40, 140, 100)}


def _draw_pen(rng: np.random.Generator, img: np.ndarray, strokes: int, ink: str = "") -> np.ndarray:
    """``strokes`` smooth marker strokes in one ink (``ink``, or one at random); returns their mask."""
    h, w = img.shape[:2]
    short = min(h, w)
    mask = np.zeros((h, w), np.uint8)
    drawn = str(rng.choice(list(INKS)))  # drawn even when ``ink`` is given: the same strokes in any ink
    name = ink or drawn
    colour = np.array(INKS[name], np.float32) + rng.uniform(-15, 15, 3).astype(np.float32)
    width = max(2, int(round(short * rng.uniform(0.006, 0.014))))
    for _ in range(strokes):
        p = np.array([rng.uniform(0, w), rng.uniform(0, h)])
        heading = rng.uniform(0, 2 * np.pi)
        pts = [p.copy()]
        for _ in range(int(rng.integers(8, 20))):
            heading += rng.normal(0, 0.25)
            p = p + 0.025 * short * np.array([np.cos(heading), np.sin(heading)])
            pts.append(p.copy())
        cv2.polylines(mask, [np.round(np.array(pts)).astype(np.int32)], False, 1, width, cv2.LINE_AA)
    alpha = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), 0.6)[..., None] * np.float32(rng.uniform(0.6, 0.9))
    img[:] = img * (1 - alpha) + colour * alpha
    return mask > 0


def _draw_bubbles(rng: np.random.Generator, img: np.ndarray, n: int) -> np.ndarray:
    """``n`` gel / air bubbles: a thin bright rim with a faint dark outline; returns their discs' mask."""
    h, w = img.shape[:2]
    short = min(h, w)
    mask = np.zeros((h, w), np.uint8)
    for _ in range(n):
        r = rng.uniform(0.012, 0.06) * short
        c = (int(rng.uniform(r, w - r)), int(rng.uniform(r, h - r)))
        rim = max(1, int(round(r * rng.uniform(0.08, 0.15))))
        cv2.circle(img, c, int(r + rim), [float(v) for v in img[c[1], c[0]] * 0.7], max(1, rim // 2), cv2.LINE_AA)
        cv2.circle(img, c, int(r), (250, 250, 248), rim, cv2.LINE_AA)
        cv2.circle(mask, c, int(r + rim), 1, -1)
    return mask > 0


#: Skin and lesion are drawn at most this many pixels on the long side, then upscaled: texture is
#: low-frequency anyway, and it keeps a 6000×4000 image at about a second.
_INTERNAL_LONG_SIDE = 1536


def render(spec: SynthSpec, seed: int | tuple[int, ...] = 0) -> SynthImage:
    """Draw one synthetic dermoscopy image.

    Args:
        spec: what to draw.
        seed: random seed (int or tuple, fed to ``numpy.random.default_rng``).

    Returns:
        The image as displayed (RGB uint8) and ground truth.
    """
    rng = np.random.default_rng(seed)
    h, w = spec.height, spec.width
    k = min(1.0, _INTERNAL_LONG_SIDE / max(h, w))
    ih, iw = max(8, round(h * k)), max(8, round(w * k))
    base = np.array([222, 172, 150], np.float32) + rng.uniform(-25, 20, 3).astype(np.float32)
    if spec.skin is not None:
        base = np.asarray(spec.skin, np.float32)
    img = np.empty((ih, iw, 3), np.float32)
    img[:] = base
    img += (_smooth_noise(rng, ih, iw, 4) * 10 + _smooth_noise(rng, ih, iw, 40) * 4)[..., None]
    mask = _lesion_mask(rng, ih, iw, spec)
    brown = np.array([120, 75, 50], np.float32) + rng.uniform(-20, 20, 3).astype(np.float32)
    colour = np.empty_like(img)
    colour[:] = brown
    if spec.melanoma or spec.abcd is not None:
        patches = _smooth_noise(rng, ih, iw, 10)
        dark = np.array([45, 30, 30], np.float32)
        blue = np.array([95, 100, 125], np.float32)
        if spec.abcd is None:
            hi, lo = 0.5, -0.8
        else:  # exactly 30% × C of the lesion dark brown-black and 20% × C blue-grey
            inside = patches[mask > 127]
            c = spec.abcd[2]
            hi = np.quantile(inside, 1 - 0.3 * c) if inside.size and c > 0 else np.inf
            lo = np.quantile(inside, 0.2 * c) if inside.size and c > 0 else -np.inf
        colour = np.where((patches > hi)[..., None], dark, colour)
        colour = np.where((patches < lo)[..., None], blue, colour)
    if spec.structures is not None:
        colour = _structured_lesion(rng, mask, spec.structures, base)  # streaks extend the mask
    soft = cv2.GaussianBlur(mask, (0, 0), max(1.0, min(ih, iw) / 200)).astype(np.float32)[..., None] / 255.0
    colour += (_smooth_noise(rng, ih, iw, 120) * 12)[..., None]
    img = img * (1 - soft) + colour * soft
    img += rng.normal(0, 3, (ih, iw, 1)).astype(np.float32)
    if (ih, iw) != (h, w):
        img = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask, (w, h), interpolation=cv2.INTER_LINEAR)
    hair_mask = _draw_hairs(rng, img, spec) if spec.hairs else np.zeros((h, w), bool)
    drawn: dict[str, np.ndarray] = {}
    if spec.ruler:
        drawn["ruler"] = _draw_ruler(img)
    if spec.ticks or spec.pen or spec.bubbles:  # their own random stream: other images' pixels stay as they were
        extra = np.random.default_rng((*np.atleast_1d(seed).tolist(), 17))
        if spec.ticks:
            ticks = _draw_ticks(extra, img)
            drawn["ruler"] = drawn["ruler"] | ticks if "ruler" in drawn else ticks
        if spec.pen:
            drawn["ink"] = _draw_pen(extra, img, spec.pen, spec.pen_ink)
        if spec.bubbles:
            drawn["bubbles"] = _draw_bubbles(extra, img, spec.bubbles)
    img *= np.float32(spec.exposure) * np.asarray(spec.cast, np.float32)
    if spec.clinical:  # a photo: light falls off across the frame (flash or window), no microscope field
        img *= _illumination(np.random.default_rng((*np.atleast_1d(seed).tolist(), 29)), h, w)[..., None]
    vignette = None
    if spec.vignette:
        cx = w / 2 + spec.vignette_offset[0] * w
        cy = h / 2 + spec.vignette_offset[1] * h
        r = spec.vignette_radius_frac * min(h, w)
        yy, xx = np.ogrid[:ih, :iw]
        dist = np.sqrt((xx / k - cx) ** 2 + (yy / k - cy) ** 2)
        ramp = max(2.0, 0.02 * min(h, w))
        keep = np.clip((r - dist) / ramp, 0, 1).astype(np.float32)
        if (ih, iw) != (h, w):
            keep = cv2.resize(keep, (w, h), interpolation=cv2.INTER_LINEAR)
        keep = keep[..., None]
        img = img * keep + np.float32(8) * (1 - keep)
        vignette = (cx, cy, r)
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return SynthImage(out, hair_mask, mask > 127, vignette, spec, drawn)


def _illumination(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A clinical photo's uneven light: a linear fall-off in a random direction (0.7–1.05 of the exposure) times
    a broad radial fall-off around a random point (a flash's hot spot), never a dark disc."""
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = ((xx / w - 0.5) * np.cos(angle) + (yy / h - 0.5) * np.sin(angle)) + 0.5
    lo = rng.uniform(0.7, 0.9)
    ramp = lo + (1.05 - lo) * np.clip(t, 0, 1)
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    r = np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2) / max(h, w)
    return (ramp * (1.0 - 0.12 * np.clip(r, 0, 1))).astype(np.float32)


def clinical_spec(rng: np.random.Generator, melanoma: bool, sizes: list[tuple[int, int]]) -> SynthSpec:
    """A clinical close-up (camera or smartphone photo): a smaller lesion in a wider field of skin, uneven light,
    sometimes a few hairs or a pen mark, no microscope field, gel bubbles or ruler."""
    w, h = sizes[int(rng.integers(len(sizes)))]
    return SynthSpec(width=w, height=h, melanoma=melanoma, clinical=True,
                     hairs=int(rng.integers(2, 10)) if rng.random() < 0.3 else 0,
                     pen=1 if rng.random() < 0.1 else 0,
                     exposure=float(rng.uniform(0.8, 1.1)),
                     cast=tuple(float(x) for x in rng.uniform(0.9, 1.08, 3)),
                     lesion_scale=float(rng.uniform(0.06, 0.14)))


def stored_pixels(displayed: np.ndarray, exif_orientation: int) -> np.ndarray:
    """Pixels to store so that applying ``exif_orientation`` shows ``displayed``."""
    from melanoma_data.ops.geometry import OrientParams, apply_orientation

    return apply_orientation(displayed, OrientParams(_INVERSE_ORIENTATION[exif_orientation]))


def encode_file(img: SynthImage, fmt: str = "JPEG", quality: int = 90) -> bytes:
    """Encode a generated image as a file, storing pixels and EXIF tag per its orientation."""
    stored = stored_pixels(img.image, img.spec.exif_orientation)
    pil = Image.fromarray(stored)
    buf = io.BytesIO()
    kwargs: dict[str, Any] = {}
    if img.spec.exif_orientation != 1:
        exif = Image.Exif()
        exif[0x0112] = img.spec.exif_orientation
        kwargs["exif"] = exif.tobytes()
    if fmt == "JPEG":
        kwargs["quality"] = quality
    pil.save(buf, fmt, **kwargs)
    return buf.getvalue()


# ------------------------------------------------------------------------------- datasets


def random_spec(rng: np.random.Generator, melanoma: bool, sizes: list[tuple[int, int]], defects: float) -> SynthSpec:
    """A varied spec: each defect (hair, vignette, ruler, cast, rotation) with probability ``defects``."""
    w, h = sizes[int(rng.integers(len(sizes)))]
    if rng.random() < defects * 0.3:
        w, h = h, w  # portrait original
    return SynthSpec(
        width=w,
        height=h,
        melanoma=melanoma,
        hairs=int(rng.integers(3, 25)) if rng.random() < defects else 0,
        hair_colour=str(rng.choice(["dark", "dark", "light", "mixed"])),
        vignette=bool(rng.random() < defects * 0.6),
        vignette_radius_frac=float(rng.uniform(0.42, 0.6)),
        vignette_offset=(float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.04, 0.04))),
        ruler=bool(rng.random() < defects * 0.2),
        exposure=float(rng.uniform(0.7, 1.15)) if rng.random() < defects else 1.0,
        cast=tuple(float(x) for x in rng.uniform(0.85, 1.12, 3)) if rng.random() < defects else (1.0, 1.0, 1.0),
        exif_orientation=int(rng.choice([3, 6, 8])) if rng.random() < defects * 0.2 else 1,
        lesion_scale=float(rng.uniform(0.12, 0.3)),
    )


def _metadata(rng: np.random.Generator, n: int, melanoma_rate: float, images_per_patient: float) -> list[dict]:
    rows = []
    patient = 0
    left = 0
    sex, age = "female", 50.0
    for i in range(n):
        if left == 0:
            patient += 1
            left = max(1, int(rng.poisson(images_per_patient)))
            sex = str(rng.choice(["female", "male"]))
            age = float(rng.integers(4, 18) * 5)
        left -= 1
        target = int(rng.random() < melanoma_rate)
        rows.append(
            {
                "index": i,
                "patient_id": f"IP_{patient:07d}",
                "sex": sex,
                "age_approx": age,
                "site_2019": str(rng.choice(SITES_2019)),
                "target": target,
                "diagnosis": "melanoma" if target else str(rng.choice(["nevus", "nevus", "unknown"])),
            }
        )
    return rows


#: Known-answer label model: logit weights of asymmetry, border, colour variegation, diameter (all in
#: [0, 1]), of (age - 50) / 10, of the head/neck site, and of the "ugly duckling" term (the lesion's
#: variegation minus the mean of its patient's other lesions).
ABCD_WEIGHTS = {"asymmetry": 3.0, "border": 3.0, "variegation": 3.5, "diameter": 2.5, "age": 0.3,
                "head_neck": 0.5, "ugly_duckling": 2.0}


#: The structures mode's drawn quantities (each in [0, 1]), in :attr:`SynthSpec.structures` order.
STRUCTURES = ("network", "globules", "streaks", "veil", "regression", "border", "colours")
#: Its label model: logit weights of each structure, of (age - 50) / 10, head/neck, and the "ugly
#: duckling" term (the lesion's veil + colours minus the mean of its patient's other lesions).
STRUCTURE_WEIGHTS = {"network": 1.6, "globules": 1.2, "streaks": 1.8, "veil": 2.4, "regression": 1.4,
                     "border": 1.8, "colours": 1.6, "age": 0.3, "head_neck": 0.5, "ugly_duckling": 1.5}


def _draw_labels(rng: np.random.Generator, z: np.ndarray, melanoma_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """``(p_true, target)``: ``sigmoid(z + c)`` with the intercept ``c`` that makes the mean probability the
    melanoma rate (bisection), and labels drawn from it."""
    lo, hi = -30.0, 30.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if (1 / (1 + np.exp(-(z + mid)))).mean() < melanoma_rate else (lo, mid)
    p = 1 / (1 + np.exp(-(z + (lo + hi) / 2)))
    return p, (rng.random(len(z)) < p).astype(int)


def _structured_lesion(rng: np.random.Generator, mask: np.ndarray, st: tuple[float, ...], skin: np.ndarray
                       ) -> np.ndarray:
    """The lesion's colour field for the structures mode: a continuous brown mixture with dermoscopic
    structures drawn on it (each with random placement, size and contrast: seen, never read back exactly)."""
    h, w = mask.shape
    short = min(h, w)
    net, glob, streak, veil, regr, _, cols = st
    ys, xs = np.nonzero(mask > 127)
    if not len(ys):
        return np.broadcast_to(skin, (h, w, 3)).astype(np.float32).copy()
    cy, cx = ys.mean(), xs.mean()
    rad = max(4.0, np.sqrt(len(ys) / np.pi))
    light, mid, darkc = (np.array(c, np.float32) for c in ([165, 115, 80], [120, 75, 50], [60, 38, 30]))
    mix = 1 / (1 + np.exp(-(_smooth_noise(rng, h, w, rng.uniform(4, 9)) * (0.6 + 2.5 * cols))))  # 0..1
    depth = np.clip(0.4 + (mix - 0.5) * (0.3 + 1.6 * cols) + rng.normal(0, 0.08), 0, 1)[..., None]
    colour = np.where(depth < 0.5, light + (mid - light) * depth * 2, mid + (darkc - mid) * (depth - 0.5) * 2)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    # pigment network: a mesh of darker lines; atypical = thicker, darker, irregular spacing
    period = short * rng.uniform(0.025, 0.04)
    warp = _smooth_noise(rng, h, w, 6) * period * (0.2 + 1.5 * net)
    mesh = np.abs(np.sin(np.pi * (xx + warp) / period)) * np.abs(np.sin(np.pi * (yy - warp) / period))
    line = (mesh < 0.12 + 0.3 * net * rng.uniform(0.7, 1.3)).astype(np.float32)
    colour = colour * (1 - (0.1 + 0.35 * net) * line[..., None])
    # globules: dark brown dots, more of them and larger with the score, towards the periphery
    for _ in range(int(rng.poisson(2 + 30 * glob))):
        a, d = rng.uniform(0, 2 * np.pi), rad * np.sqrt(rng.uniform(0.2, 1.0)) * 0.9
        r0 = max(1.0, short * rng.uniform(0.006, 0.012 + 0.012 * glob))
        cv2.circle(colour, (int(cx + d * np.cos(a)), int(cy + d * np.sin(a))), int(round(r0)),
                   [float(v) for v in darkc * rng.uniform(0.7, 1.1)], -1, cv2.LINE_AA)
    # streaks: radial dark lines crossing the border
    for _ in range(int(rng.poisson(20 * streak))):
        a = rng.uniform(0, 2 * np.pi)
        reach = rad * rng.uniform(1.05, 1.35)
        p0 = (int(cx + 0.6 * rad * np.cos(a)), int(cy + 0.6 * rad * np.sin(a)))
        p1 = (int(cx + reach * np.cos(a)), int(cy + reach * np.sin(a)))
        cv2.line(colour, p0, p1, [float(v) for v in darkc * 0.8], max(1, int(short * 0.01)), cv2.LINE_AA)
        cv2.line(mask, p0, p1, 255, max(1, int(short * 0.01)), cv2.LINE_AA)  # streaks leave the lesion
    def patch(colour: np.ndarray, cells: int, share: float, opacity: float, tint: tuple[int, int, int]
              ) -> tuple[np.ndarray, np.ndarray]:
        """``tint`` blended over the ``share`` of the lesion where a smooth noise field is highest; the alpha."""
        field = _smooth_noise(rng, h, w, cells)
        inside = field[mask > 127]
        lim = np.quantile(inside, 1 - share) if inside.size else np.inf
        alpha = (np.clip((field - lim) * 2, 0, 1) * opacity)[..., None]
        return colour * (1 - alpha) + np.array(tint, np.float32) * alpha, alpha[..., 0]

    # blue-white veil: a structureless blue-grey haze; regression: white scar areas with grey-blue peppering
    colour, _ = patch(colour, 5, min(0.9, 0.05 + 0.6 * veil), 0.15 + 0.7 * veil, (110, 125, 160))
    colour, scar = patch(colour, 7, min(0.8, 0.02 + 0.4 * regr), 0.2 + 0.6 * regr, (215, 200, 195))
    pepper = (rng.random((h, w)) < 0.03 * regr) & (scar > 0.1)
    colour[pepper] = np.array([100, 105, 120], np.float32)
    return colour.astype(np.float32)


def structure_labels(rng: np.random.Generator, meta: list[dict], melanoma_rate: float) -> None:
    """Draw each lesion's structures (:data:`STRUCTURES`) and a label from a known logistic model (in place).

    Adds ``structures``, ``p_true``, ``target``, a patient size factor and a skin tone. ``p_true`` depends
    on the drawn structures, metadata and the patient's other lesions only (not on the size, which
    varies with the patient, nor on skin tone or exposure), so ``AUC(target, p_true)`` is the
    Bayes-optimal AUC for an observer who reads the structures exactly.
    """
    w = STRUCTURE_WEIGHTS
    st = rng.beta(1.2, 2.0, (len(meta), len(STRUCTURES)))  # most lesions show little of each structure
    patients = np.array([r["patient_id"] for r in meta])
    ugly = np.zeros(len(meta))
    size = np.zeros(len(meta))
    tone = {}
    for pid in np.unique(patients):
        idx = np.nonzero(patients == pid)[0]
        size[idx] = rng.uniform(0.1, 0.22)  # the patient's typical lesion size
        tone[pid] = np.array([230, 180, 160], np.float32) * rng.uniform(0.55, 1.05) + rng.uniform(-10, 10, 3)
        if len(idx) > 1:
            v = st[idx, 3] + st[idx, 6]
            ugly[idx] = v - (v.sum() - v) / (len(idx) - 1)
    age = np.array([r["age_approx"] for r in meta], dtype=float)
    head = np.array([r["site_2019"] == "head/neck" for r in meta], dtype=float)
    z = sum(w[k] * st[:, j] for j, k in enumerate(STRUCTURES)) + w["age"] * (age - 50) / 10 \
        + w["head_neck"] * head + w["ugly_duckling"] * ugly
    p, target = _draw_labels(rng, z, melanoma_rate)
    for row, s_, pt, t, sz, pid in zip(meta, st, p, target, size, patients, strict=True):
        row.update(structures=[float(v) for v in s_], p_true=float(pt), target=int(t),
                   lesion_scale=float(np.clip(sz * rng.lognormal(0, 0.25), 0.06, 0.32)),
                   skin=[float(v) for v in np.clip(tone[pid], 60, 255)],
                   diagnosis="melanoma" if t else str(rng.choice(["nevus", "nevus", "unknown"])))


def abcd_labels(rng: np.random.Generator, meta: list[dict], melanoma_rate: float) -> None:
    """Draw (A, B, C, D) per lesion and a melanoma label from a known logistic model (in place).

    Adds ``abcd``, ``p_true`` and ``target`` to each row. ``p_true`` depends only on what an observer
    can see — the lesion's drawing (rendered as a deterministic function of A, B, C, D: see
    :class:`SynthSpec`), the metadata, and the patient's other lesions — so ``AUC(target, p_true)`` is
    the Bayes-optimal AUC of the dataset (for an observer who reads the drawing exactly; defects such
    as hair, casts and fields of view blur that reading a little).
    """
    w = ABCD_WEIGHTS
    abcd = rng.uniform(0, 1, (len(meta), 4))
    patients = np.array([r["patient_id"] for r in meta])
    ugly = np.zeros(len(meta))
    for pid in np.unique(patients):
        idx = np.nonzero(patients == pid)[0]
        if len(idx) > 1:
            c = abcd[idx, 2]
            ugly[idx] = c - (c.sum() - c) / (len(idx) - 1)
    age = np.array([r["age_approx"] for r in meta], dtype=float)
    head = np.array([r["site_2019"] == "head/neck" for r in meta], dtype=float)
    z = (w["asymmetry"] * abcd[:, 0] + w["border"] * abcd[:, 1] + w["variegation"] * abcd[:, 2]
         + w["diameter"] * abcd[:, 3] + w["age"] * (age - 50) / 10 + w["head_neck"] * head + w["ugly_duckling"] * ugly)
    p, target = _draw_labels(rng, z, melanoma_rate)
    for row, a, pt, t in zip(meta, abcd, p, target, strict=True):
        row.update(abcd=[float(v) for v in a], p_true=float(pt), target=int(t),
                   diagnosis="melanoma" if t else str(rng.choice(["nevus", "nevus", "unknown"])))


def write_dataset(
    root: str | os.PathLike,
    n: int = 48,
    layout: str = "kaggle2020",
    seed: int = 0,
    sizes: list[tuple[int, int]] | None = None,
    defects: float = 0.5,
    melanoma_rate: float = 0.2,
    test_fraction: float = 0.2,
    images_per_patient: float = 3.0,
    quality: int = 90,
    labels: str = "flag",
) -> list[dict[str, Any]]:
    """Write a synthetic dataset in one of the input layouts, plus ``synth_truth.json``.

    Args:
        root: folder to write (created).
        n: number of images.
        layout: a layout of one file per image (``kaggle2020``, ``isic2019``, ``isic-cli``, ``generic``,
            ``images``): each lays out its images and metadata rows (its module's ``synth_entry``).
        seed: everything is deterministic from it.
        sizes: displayed (width, height) choices; default a mix of ISIC-like sizes.
        defects: probability scale of hair, vignette, ruler, casts and rotations.
        melanoma_rate: fraction of positives.
        test_fraction: fraction written as the test split (kaggle2020 only).
        images_per_patient: mean images per patient.
        quality: JPEG quality of the files.
        labels: ``flag`` (melanomas drawn irregular and variegated, benign lesions regular) or
            ``abcd`` (the known-answer mode: each lesion's melanoma probability is a known function of
            its drawn asymmetry, border, colour variegation and diameter and of metadata and patient
            context; ``p_true`` in the truth file gives the Bayes-optimal AUC) or ``structures`` (the
            honest known-answer mode: the label is a known function of drawn dermoscopic structures —
            network, globules, streaks, veil, regression, border roughness, colour mixture — of metadata
            and patient context; nothing is drawn as the inverse of a feature; sizes vary with the
            patient, skin tone and exposure vary).

    Returns:
        One ground-truth dict per image (name, split, spec, hair fraction, vignette circle).
    """
    known = [lay.name for lay in layouts.registered() if lay.synth_entry is not None]
    if layout not in known:
        raise ValueError(f"unknown layout {layout!r}; known: {', '.join(known)}")
    entry = layouts.get(layout).synth_entry
    root = Path(root)
    rng = np.random.default_rng(seed)
    sizes = sizes or [(1024, 768), (1022, 767), (1504, 1129), (600, 450), (1872, 1053)]
    if labels not in ("flag", "abcd", "structures"):
        raise ValueError(f"labels must be 'flag', 'abcd' or 'structures', got {labels!r}")
    meta = _metadata(rng, n, melanoma_rate, images_per_patient)
    if labels == "abcd":
        abcd_labels(np.random.default_rng([seed, 99]), meta, melanoma_rate)
    elif labels == "structures":
        structure_labels(np.random.default_rng([seed, 98]), meta, melanoma_rate)
    truth = []
    csv_rows: dict[str, list[dict]] = {}
    patient_split: dict[str, str] = {}  # as in 2020, a patient is either in train or in test
    for row in meta:
        i = row["index"]
        name = f"ISIC_{9000000 + i:07d}"
        spec = random_spec(np.random.default_rng([seed, i, 1]), bool(row["target"]), sizes, defects)
        if labels == "abcd":
            a, b, c, d = row["abcd"]
            spec = dataclasses.replace(spec, melanoma=False, abcd=(a, b, c), lesion_scale=0.1 + 0.2 * d)
        elif labels == "structures":
            spec = dataclasses.replace(spec, melanoma=False, structures=tuple(row["structures"]),
                                       lesion_scale=row["lesion_scale"], skin=tuple(row["skin"]),
                                       exposure=float(np.random.default_rng([seed, i, 2]).uniform(0.8, 1.15)))
        img = render(spec, seed=(seed, i))
        if row["patient_id"] not in patient_split:
            patient_split[row["patient_id"]] = "test" if rng.random() < test_fraction else "train"
        split, rel, entries = entry(name, row, patient_split[row["patient_id"]], i)
        for fname, rec in entries.items():
            csv_rows.setdefault(fname, []).append(rec)
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encode_file(img, quality=quality))
        truth.append(
            {"image_name": name, "rel_path": rel, "split": split, "target": row["target"],
             "hair_fraction": img.hair_fraction, "vignette": img.vignette, "spec": dataclasses.asdict(spec),
             **({"p_true": row["p_true"], "abcd": row["abcd"]} if labels == "abcd" else {}),
             **({"p_true": row["p_true"], "structures": row["structures"]} if labels == "structures" else {})}
        )
    import pandas as pd

    for fname, rows in csv_rows.items():
        pd.DataFrame(rows).to_csv(root / fname, index=False)
    (root / "synth_truth.json").write_text(json.dumps(truth, indent=1))
    return truth


# ------------------------------------------------------------------------------ ISIC 2024 (SLICE-3D) shape


def write_isic2024(root: str | os.PathLike, n: int = 3000, seed: int = 0, positive_rate: float = 0.001,
                   tiles_per_patient: float = 385.0, test_n: int = 3, workers: int = 1) -> dict[str, Any]:
    """Write the ISIC 2024 challenge layout: ``train-image.hdf5`` + ``train-metadata.csv`` (+ test).

    Tiles of 61–239 px (median ~131) with a lesion at the centre, one HDF5 dataset of JPEG bytes per
    ``isic_id``, and the 2024 metadata columns in realistic ranges: the ~34 ``tbp_lv_*``
    measurements, ``clin_size_long_diam_mm``, ``attribution``, ``tbp_tile_type``, ``lesion_id`` and
    ``iddx_*`` for malignant and some benign tiles, ``mel_thick_mm`` for melanomas. ``target`` is any
    malignancy (melanoma, BCC, SCC) at ``positive_rate``; malignant tiles are drawn more irregular and
    their measurements shifted (see :data:`TBP_COLUMNS`). Many tiles per patient. The writer is the
    layout's (:func:`melanoma_data.layouts.isic2024.write_frame`).

    Returns:
        A summary: counts, the malignant names, the file paths.
    """
    frame = isic2024.write_frame(root, n=n, seed=seed, positive_rate=positive_rate,
                                 tiles_per_patient=tiles_per_patient, test_n=test_n, workers=workers)
    train = frame[frame["split"] == "train"]
    return {"train": len(train), "test": int((frame["split"] == "test").sum()),
            "malignant": train.loc[train["target"] == 1, "isic_id"].tolist(),
            "patients": int(train["patient_id"].nunique())}
