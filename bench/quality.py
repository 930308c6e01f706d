"""Quality of the normalisation ops against ground truth, side by side with the textbook recipes.

* Hair: synthetic strands (curved, 1–4 px at 768, dark and light; known masks) pasted on real
  hairless sample images at the 512 px working resolution → mask IoU, and PSNR/SSIM of the cleaned
  image against the clean original, for ``remove_hair`` and for DullRazor (grey → black-hat 17×17 →
  threshold 10 → Telea radius 1). Also SSIM of each method on the untouched hairless images.
* Vignette: synthetic circular fields (radius 0.42–0.62 of the short side, darkness, soft ring,
  centre offset ±5%) applied to real sample images without one → detection rate, radius error,
  false-positive rate on the untouched originals; against Gessert's crop (Otsu threshold × 0.2).
* Artefacts: generated images with ticks, rulers, pen strokes and bubbles drawn by ``synth`` (their
  masks are the ground truth; drawn without reference to the detectors) → detection rate, false flags
  on clean generated images, mask IoU, and the share of each artefact's pixels that hair removal took.
  On the real sample, the flags against the by-eye labels (``tests/labels``), each half separately:
  the detectors were tuned on the even ISIC ids only.
* Colour constancy: generated images under a known colour cast (gains 0.75–1.25 per channel) with a lesion
  covering 10–80% of the frame; the true illuminant is the cast applied to the drawn skin colour (what a
  constancy step must undo for skin to look alike across images). Angular error of the recovered
  illuminant, median and worst, per lesion-coverage band, for the skin-only estimate and today's
  whole-image one. ``--sheet PATH`` also writes a contact sheet of real lesion-dominated images under both.
* Real sample: the distribution of each measurement over the 89 originals.
* Cost: the default op chain per 6000×4000 real image against the reduced-decode floor.

The image lists below were chosen by eye from the sample's contact sheet (``python cli.py inspect``).
Usage: ``uv run python bench/quality.py [--sheet colour.png]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from melanoma_data import synth  # noqa: E402
from melanoma_data.config import PreprocessConfig  # noqa: E402
from melanoma_data.ops import artefacts, colour, geometry, hair, vignette  # noqa: E402
from melanoma_data.ops._cv import cv2  # noqa: E402
from melanoma_data.pipeline import process_image  # noqa: E402

IMAGES = ROOT.parent / "shared" / "data" / "isic-sample" / "images"
HAIRLESS = [f"{i:07d}" for i in (0, 2, 6, 8, 13, 15, 26, 40, 85, 174, 10015, 247330, 7, 9, 16, 35, 49, 54, 56, 77,
                                  147, 175, 235, 261)]
FIELDLESS = [f"{i:07d}" for i in (8, 13, 15, 26, 85, 174, 10015, 247330, 9, 49, 54, 56, 147, 175, 235, 261, 12, 82,
                                   139, 244, 24306, 52212, 390, 24320)]


def load(name: str, size: int | None = 512) -> np.ndarray:
    img = cv2.cvtColor(cv2.imread(str(IMAGES / f"ISIC_{name}.jpg"), cv2.IMREAD_REDUCED_COLOR_2), cv2.COLOR_BGR2RGB)
    return img if size is None else geometry.square(img, geometry.ResizeParams(size=size, policy="crop"))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    return float(structural_similarity(a, b, channel_axis=2, data_range=255))


def hair_bench() -> None:
    params = hair.HairParams()
    rows = {"remove_hair": [], "dullrazor": []}
    clean_ssim = {"remove_hair": [], "dullrazor": []}
    for i, name in enumerate(HAIRLESS):
        clean = load(name)
        ours = hair.remove_hair(clean, params)
        clean_ssim["remove_hair"].append(ssim(ours.image, clean))
        clean_ssim["dullrazor"].append(ssim(hair.dullrazor(clean)[0], clean))
        for shade in ("dark", "light"):
            hairy, truth = synth.paste_hairs(clean, 1000 + 2 * i + (shade == "light"), shade)
            res = hair.remove_hair(hairy, params)
            grown = cv2.dilate(res.mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            dr_img, dr_mask = hair.dullrazor(hairy)
            for key, out, mask in (("remove_hair", res.image, grown), ("dullrazor", dr_img, dr_mask)):
                rows[key].append((shade, iou(mask, truth), peak_signal_noise_ratio(clean, out, data_range=255),
                                  ssim(out, clean)))
    hairy_psnr = np.mean([peak_signal_noise_ratio(load(n), synth.paste_hairs(load(n), 7, "dark")[0], data_range=255)
                          for n in HAIRLESS[:6]])
    print(f"HAIR — {len(HAIRLESS)} real hairless images × (dark, light) synthetic strands, 512 px")
    print(f"  {'method':12s} {'IoU dark':>9s} {'IoU light':>9s} {'PSNR dB':>8s} {'SSIM':>7s} {'SSIM untouched':>15s}")
    for key, vals in rows.items():
        dark = np.mean([v[1] for v in vals if v[0] == "dark"])
        light = np.mean([v[1] for v in vals if v[0] == "light"])
        untouched = clean_ssim[key]
        print(f"  {key:12s} {dark:9.3f} {light:9.3f} {np.mean([v[2] for v in vals]):8.2f} "
              f"{np.mean([v[3] for v in vals]):7.4f} {np.mean(untouched):9.4f} (min {np.min(untouched):.4f})")
    print(f"  (hairy input itself: PSNR {hairy_psnr:.2f} dB against the clean original)")


def add_field(img: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, float]:
    h, w = img.shape[:2]
    short = min(h, w)
    r = rng.uniform(0.42, 0.62)
    cx = w / 2 + rng.uniform(-0.05, 0.05) * w
    cy = h / 2 + rng.uniform(-0.05, 0.05) * h
    level = rng.uniform(0, 40)
    ramp = rng.uniform(0.01, 0.04) * short
    yy, xx = np.ogrid[:h, :w]
    keep = np.clip((r * short - np.sqrt((xx - cx) ** 2 + (yy - cy) ** 2)) / ramp, 0, 1)[..., None]
    return np.clip(img * keep + level * (1 - keep), 0, 255).astype(np.uint8), r


def gessert(img: np.ndarray) -> tuple[bool, float | None]:
    """Gessert et al.'s field crop: threshold at 0.2 × Otsu; a field when the corners fall below it."""
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    otsu, _ = cv2.threshold(grey, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    dark = grey < 0.2 * otsu
    h, w = grey.shape
    c = max(2, int(0.06 * min(h, w)))
    corners = [dark[:c, :c], dark[:c, -c:], dark[-c:, :c], dark[-c:, -c:]]
    if sum(float(k.mean()) > 0.5 for k in corners) < 3:
        return False, None
    return True, float(np.sqrt((~dark).sum() / np.pi) / min(h, w))


def vignette_bench() -> None:
    params = vignette.VignetteParams()
    rng = np.random.default_rng(0)
    stats = {"detect_vignette": [], "gessert": []}
    fp = {"detect_vignette": 0, "gessert": 0}
    for name in FIELDLESS:
        clean = load(name, None)
        clean = cv2.resize(clean, (768, round(768 * clean.shape[0] / clean.shape[1])), interpolation=cv2.INTER_AREA)
        fp["detect_vignette"] += vignette.detect_vignette(clean, params).detected
        fp["gessert"] += gessert(clean)[0]
        for _ in range(3):
            img, r = add_field(clean, rng)
            v = vignette.detect_vignette(img, params)
            stats["detect_vignette"].append((v.detected, abs(v.radius_frac - r) if v.detected else None))
            g, gr = gessert(img)
            stats["gessert"].append((g, abs(gr - r) if g else None))
    print(f"VIGNETTE — {len(FIELDLESS)} real images without a field, 3 synthetic fields each")
    print(f"  {'method':16s} {'detected':>9s} {'radius err (mean/max)':>22s} {'false positives':>16s}")
    for key, vals in stats.items():
        det = np.mean([d for d, _ in vals])
        errs = [e for d, e in vals if d]
        err = f"{np.mean(errs):.3f} / {np.max(errs):.3f}" if errs else "—"
        print(f"  {key:16s} {det:9.1%} {err:>22s} {fp[key]:>8d} of {len(FIELDLESS)}")


def artefact_bench(n: int = 60) -> None:
    """Detectors on generated ground truth, and on the labelled real sample (both halves)."""
    import csv

    params = artefacts.ArtefactParams()
    kinds = {"ruler": "ruler", "ticks": "ruler", "pen": "ink", "bubbles": "bubbles"}
    stats = {k: {"hit": 0, "iou": [], "in_hair": []} for k in kinds}
    false = {k: 0 for k in ("ruler", "ink", "bubbles", "dark_corners")}
    hp = hair.HairParams()
    base = {"width": 1024, "height": 768, "hairs": 8, "hair_colour": "mixed"}
    for i in range(n):
        clean = synth.render(synth.SynthSpec(**base), seed=(5, i)).image
        found = artefacts.detect_artefacts(clean, params)
        for k in false:
            false[k] += found.detected[k]
        for key, kind in kinds.items():
            spec = {"ruler": {"ruler": True}, "ticks": {"ticks": True}, "pen": {"pen": 2},
                    "bubbles": {"bubbles": 4}}[key]
            img = synth.render(synth.SynthSpec(**base, **spec), seed=(5, i))
            found = artefacts.detect_artefacts(img.image, params)
            stats[key]["hit"] += found.detected[kind]
            small = artefacts.thumbnail(img.image, params.side)
            truth = cv2.resize(img.artefacts[kind].view(np.uint8), small.shape[1::-1],
                               interpolation=cv2.INTER_NEAREST) > 0
            got = getattr(found, kind)
            stats[key]["iou"].append(iou(got, truth))
            # hair removal in the same frame, told what the detectors kept, and not told
            told = hair.remove_hair(small, hp, found.kept()).mask
            blind = hair.remove_hair(small, hp).mask
            stats[key]["in_hair"].append(((told & truth).sum() / max(truth.sum(), 1),
                                          (blind & truth).sum() / max(truth.sum(), 1)))
    print(f"ARTEFACTS — {n} generated 1024×768 images per kind (hair on all), detection at {params.side} px")
    print(f"  {'kind':10s} {'detected':>9s} {'mask IoU':>9s} {'in hair mask (told / not told)':>32s}")
    for key, s in stats.items():
        told = np.mean([v[0] for v in s["in_hair"]])
        blind = np.mean([v[1] for v in s["in_hair"]])
        print(f"  {key:10s} {s['hit'] / n:9.0%} {np.mean(s['iou']):9.3f} {told:15.1%} / {blind:.1%}")
    print(f"  false flags on the same images without artefacts: {false}")
    with open(ROOT / "tests" / "labels" / "isic_sample_artefacts.csv", encoding="utf-8") as fh:
        labels = list(csv.DictReader(fh))
    flags = {}
    cfg = PreprocessConfig()
    for row in labels:  # through the pipeline, as preprocess sees them (its decode, its columns)
        out = process_image((IMAGES / f"{row['image_name']}.jpg").read_bytes(), row["image_name"], cfg)
        flags[row["image_name"]] = {k: bool(out[f"{k}_detected"]) for k in artefacts.KINDS}
    print("  real sample, by-eye labels (tuned on the even ids; the odd ids reported, but see the note on ink):")
    for half, parity in (("even", 0), ("odd", 1)):
        rows = [r for r in labels if int(r["image_name"][5:]) % 2 == parity]
        for kind, truth_of in (("ruler or ink", lambda r: r["ruler"] == "1" or r["ink"] == "1"),
                               ("ruler", lambda r: r["ruler"] == "1"), ("ink", lambda r: r["ink"] == "1"),
                               ("bubbles", lambda r: r["bubbles"] == "1"),
                               ("dark corners", lambda r: {"dark": True, "none": False}.get(r["field"])),
                               ("soft field", lambda r: True if r["field"] == "soft" else None)):
            def flag(r: dict, kind: str = kind) -> bool:
                d = flags[r["image_name"]]
                either = {"ruler or ink": d["ruler"] or d["ink"], "dark corners": d["dark_corners"],
                          "soft field": d["dark_corners"]}
                return either.get(kind, d.get(kind))
            pos = [r for r in rows if truth_of(r) is True]
            neg = [r for r in rows if truth_of(r) is False]
            hit = sum(flag(r) for r in pos)
            fp = [r["image_name"] for r in neg if flag(r)]
            missed = [r["image_name"] for r in pos if not flag(r)]
            print(f"    {half:4s} {kind:13s} flagged {hit:2d} of {len(pos):2d} ({hit / max(len(pos), 1):4.0%}), "
                  f"false {len(fp)} of {len(neg)} ({len(fp) / max(len(neg), 1):4.1%})"
                  f"{'; missed ' + ' '.join(missed) if missed else ''}{'; false ' + ' '.join(fp) if fp else ''}")


def angular_error(a: np.ndarray, b: np.ndarray) -> float:
    """Degrees between two RGB vectors."""
    c = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def colour_bench(n: int = 120, seed: int = 0) -> None:
    """Skin-only vs whole-image Shades of Gray on generated casts, by lesion coverage."""
    rng = np.random.default_rng(seed)
    methods = {"skin": colour.ColourParams(estimate="skin"), "image": colour.ColourParams(estimate="image")}
    rows = []
    for i in range(n):
        skin = np.array([225, 175, 150], float) + rng.uniform(-35, 20, 3) * np.array([1.0, 1.1, 1.1])
        cast = rng.uniform(0.75, 1.25, 3)
        spec = synth.SynthSpec(width=1024, height=768, lesion_scale=float(rng.uniform(0.2, 0.62)),
                               melanoma=bool(rng.random() < 0.5), hairs=int(rng.integers(0, 8)),
                               skin=tuple(float(v) for v in skin), cast=tuple(float(v) for v in cast))
        img = synth.render(spec, seed=(9, i))
        truth = cast * skin
        errors = {}
        for name, params in methods.items():
            gains = np.array(colour.shades_of_gray(img.image, params).gains)
            errors[name] = angular_error(1.0 / gains, truth)
        rows.append((float(img.lesion_mask.mean()), errors))
    print(f"COLOUR — {n} generated 1024×768 images, cast gains 0.75–1.25, angular error of the illuminant (degrees)")
    print(f"  {'lesion covers':14s} {'n':>4s} {'skin median / worst':>22s} {'image median / worst':>22s}")
    for lo, hi in ((0.1, 0.3), (0.3, 0.5), (0.5, 0.8), (0.0, 1.0)):
        band = [e for f, e in rows if lo <= f < hi] if (lo, hi) != (0.0, 1.0) else [e for _, e in rows]
        if not band:
            continue
        cells = [f"{np.median([e[m] for e in band]):9.2f} / {max(e[m] for e in band):6.2f}" for m in methods]
        label = "all" if (lo, hi) == (0.0, 1.0) else f"{lo:.0%}–{hi:.0%}"
        print(f"  {label:14s} {len(band):4d} {cells[0]:>22s} {cells[1]:>22s}")


def colour_sheet(path: str, names: tuple[str, ...] = ("0001133", "0000000", "0000160", "0000036", "0000235",
                                                      "0010233", "0000030", "0000174")) -> None:
    """Real lesion-dominated images: original | whole-image estimate | skin estimate (after the field crop)."""
    from PIL import Image, ImageDraw

    cfg = PreprocessConfig()
    tiles = []
    for name in names:
        crop = geometry.square(vignette.field_of_view(load(name, None), cfg.field_of_view).image,
                               geometry.ResizeParams(size=256, policy="crop"))
        row = [crop] + [colour.shades_of_gray(crop, colour.ColourParams(estimate=m)).image for m in ("image", "skin")]
        tiles.append(np.hstack(row))
    sheet = Image.fromarray(np.vstack(tiles))
    draw = ImageDraw.Draw(sheet)
    for j, label in enumerate(("original (field cropped)", "Shades of Gray, whole image", "Shades of Gray, skin only")):
        draw.text((j * 256 + 4, 4), label, fill=(255, 255, 0))
    for i, name in enumerate(names):
        draw.text((4, i * 256 + 244), f"ISIC_{name}", fill=(255, 255, 0))
    sheet.save(path)
    print(f"  colour sheet: {path}")


def real_distributions(cfg: PreprocessConfig) -> None:
    rows = []
    for path in sorted(IMAGES.glob("*.jpg")):
        res = process_image(path.read_bytes(), path.stem, cfg)
        rows.append(res)
    print(f"REAL SAMPLE — {len(rows)} originals, default config")
    names = [p.stem for p in sorted(IMAGES.glob("*.jpg"))]
    found = [n for n, r in zip(names, rows, strict=True) if r["vignette_detected"]]
    print(f"  microscope field found: {len(found)} ({', '.join(found)})")
    for col in ("vignette_radius_frac", "hair_fraction", "colour_gain_r", "colour_gain_g", "colour_gain_b",
                "brightness_before", "brightness_after"):
        vals = np.array([r[col] for r in rows if r[col] is not None], dtype=float)
        if len(vals):
            q = np.percentile(vals, [0, 10, 50, 90, 100])
            print(f"  {col:22s} min {q[0]:7.3f}  p10 {q[1]:7.3f}  median {q[2]:7.3f}  p90 {q[3]:7.3f}  max {q[4]:7.3f}")
    hairy = sum(r["hair_fraction"] >= 0.002 for r in rows)
    print(f"  images with hair ≥ 0.2% (inpainted): {hairy} of {len(rows)}")


def cost(cfg: PreprocessConfig, repeats: int = 5) -> None:
    """Per real 6000×4000 original, measured as bench/preprocess.py measures (same floor, best of
    ``repeats`` per image, median over images): the pipeline with the ops off, and the default chain."""
    from preprocess import NO_OPS, floor, per_image

    big = [p for p in sorted(IMAGES.glob("*.jpg"))
           if cv2.imread(str(p), cv2.IMREAD_REDUCED_GRAYSCALE_8).shape[1] >= 750]
    datas = [p.read_bytes() for p in big]

    def pipeline(d: bytes, c: PreprocessConfig) -> None:
        process_image(d, "x", c)

    f = per_image(floor, datas, cfg, repeats)
    o = per_image(pipeline, datas, NO_OPS, repeats)
    full = per_image(pipeline, datas, cfg, repeats)
    print(f"COST — {len(datas)} real 6000×4000 originals, best of {repeats} runs each, median, one thread")
    print(f"  reduced-decode floor {1000 * f:.1f} ms; pipeline without the ops {1000 * o:.1f} ms ({o / f:.2f}×); "
          f"default op chain {1000 * full:.1f} ms ({full / f:.2f}×, target ≤ 1.5×)")


def main() -> None:
    cv2.setNumThreads(1)
    cfg = PreprocessConfig()
    hair_bench()
    vignette_bench()
    artefact_bench()
    colour_bench()
    if "--sheet" in sys.argv:
        colour_sheet(sys.argv[sys.argv.index("--sheet") + 1])
    real_distributions(cfg)
    cost(cfg)


if __name__ == "__main__":
    main()
