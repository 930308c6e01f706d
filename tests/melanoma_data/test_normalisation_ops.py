"""Behaviour of the normalisation ops (field of view, hair, colour) on synthetic ground truth and real images."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from melanoma_data import manifest
from melanoma_data.config import PreprocessConfig
from melanoma_data.errors import ConfigError
from melanoma_data.ops import OPS, colour, geometry, hair, vignette
from melanoma_data.ops._cv import cv2
from melanoma_data.synth import SynthSpec, paste_hairs, render

ON = vignette.VignetteParams(enabled=True)


@pytest.mark.parametrize(("radius", "offset"), [(0.45, (0.0, 0.0)), (0.55, (0.03, -0.02)), (0.62, (0.0, 0.02))])
def test_vignette_found_with_small_radius_error(radius, offset):
    img = render(SynthSpec(width=800, height=600, vignette=True, vignette_radius_frac=radius,
                           vignette_offset=offset), seed=5)
    found = vignette.detect_vignette(img.image, ON)
    assert found.detected
    assert abs(found.radius_frac - radius) < 0.03
    cx, cy, _ = img.vignette
    assert abs(found.cx * 800 - cx) < 0.03 * 600 and abs(found.cy * 600 - cy) < 0.03 * 600
    cropped = vignette.field_of_view(img.image, ON).image
    assert cropped.shape[0] < 600 and cropped.shape[1] < 800
    corner = cropped[:10, :10].mean()
    assert corner > 40  # the dark ring is (almost) gone from the crop


def test_no_vignette_and_dark_round_lesion_are_not_fields():
    plain = render(SynthSpec(width=800, height=600), seed=1).image
    assert not vignette.detect_vignette(plain, ON).detected
    dark_lesion = render(SynthSpec(width=800, height=600, melanoma=True, lesion_scale=0.35), seed=2).image
    assert not vignette.detect_vignette(dark_lesion, ON).detected
    np.testing.assert_array_equal(vignette.field_of_view(plain, ON).image, plain)


@pytest.mark.parametrize("fill", [0, 255])
def test_degenerate_images_give_sane_measurements(fill):
    img = np.full((64, 64, 3), fill, np.uint8)
    found = vignette.detect_vignette(img, ON)
    assert not found.detected
    res = colour.shades_of_gray(img, colour.ColourParams(enabled=True, target_brightness=120))
    assert all(np.isfinite(res.gains)) and res.image.dtype == np.uint8


def test_shades_of_gray_removes_a_cast_and_records_gains():
    base = render(SynthSpec(width=300, height=200), seed=3).image
    cast = render(SynthSpec(width=300, height=200, cast=(1.15, 1.0, 0.8)), seed=3).image
    params = colour.ColourParams(enabled=True)
    a, b = colour.shades_of_gray(base, params), colour.shades_of_gray(cast, params)
    assert b.gains[2] > b.gains[0]  # blue was suppressed by the cast, so it is lifted most
    assert np.abs(a.image.astype(int) - b.image.astype(int)).mean() < \
        np.abs(base.astype(int) - cast.astype(int)).mean() / 2
    bright = colour.shades_of_gray(cast, colour.ColourParams(enabled=True, target_brightness=150))
    assert bright.brightness_after == pytest.approx(150, abs=8)


def _illuminant_error(img: np.ndarray, truth: np.ndarray, estimate: str) -> float:
    gains = np.array(colour.shades_of_gray(img, colour.ColourParams(estimate=estimate)).gains)
    e = 1.0 / gains
    return float(np.degrees(np.arccos(np.clip(e @ truth / np.linalg.norm(e) / np.linalg.norm(truth), -1, 1))))


def test_colour_from_skin_on_lesions_that_fill_the_frame():
    """The illuminant comes from the skin: with the lesion covering most of the frame, the skin-only estimate
    stays closer to the cast skin's colour than the whole-image one, and the skin mask leaves the lesion out."""
    skin_rgb = np.array([228.0, 178.0, 152.0])
    errors = {"skin": [], "image": []}
    for i, cast in enumerate([(1.2, 1.0, 0.8), (0.85, 1.0, 1.2), (1.0, 0.85, 1.1), (1.15, 1.1, 0.9)]):
        img = render(SynthSpec(width=400, height=300, lesion_scale=0.52, melanoma=True, skin=tuple(skin_rgb),
                               cast=cast), seed=20 + i)
        assert img.lesion_mask.mean() > 0.55
        for m in errors:
            errors[m].append(_illuminant_error(img.image, skin_rgb * np.array(cast), m))
        small = colour._thumb(img.image)
        mask, skin_only = colour.skin_mask(small, colour._luma(small.astype(np.float32)), colour.ColourParams())
        lesion = cv2.resize(img.lesion_mask.view(np.uint8), small.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0
        assert skin_only and (mask & lesion).sum() < 0.05 * mask.sum()
    assert np.mean(errors["skin"]) < np.mean(errors["image"]) and max(errors["skin"]) < 2.5, errors


def test_colour_estimate_image_is_the_published_shades_of_gray_and_skin_falls_back():
    img = render(SynthSpec(width=300, height=200, cast=(1.1, 1.0, 0.85)), seed=5).image
    small = colour._thumb(img)
    luma = colour._luma(small.astype(np.float32))
    mask, skin_only = colour.skin_mask(small, luma, colour.ColourParams(estimate="image"))
    assert not skin_only and np.array_equal(mask, luma > 15.0)
    # a frame that is all lesion (one dark class, no skin to speak of): the whole image, no crash
    dark = np.full((120, 160, 3), (90, 60, 50), np.uint8)
    dark[:6, :6] = (230, 190, 170)
    res = colour.shades_of_gray(dark, colour.ColourParams())
    assert all(np.isfinite(res.gains))
    # pixels the caller excludes (artefacts) are not skin
    excl = np.zeros(small.shape[:2], bool)
    excl[:, : small.shape[1] // 2] = True
    mask, _ = colour.skin_mask(small, luma, colour.ColourParams(), excl)
    assert not mask[excl].any()
    with pytest.raises(ConfigError):
        colour.ColourParams(estimate="lesion")


# ---------------------------------------------------------------------------------------------- hair


def _square(path, size: int = 512) -> np.ndarray:
    img = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_REDUCED_COLOR_2), cv2.COLOR_BGR2RGB)
    return geometry.square(img, geometry.ResizeParams(size=size, policy="crop"))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


HAIRLESS = ["ISIC_0000000", "ISIC_0000013", "ISIC_0000026", "ISIC_0000085", "ISIC_0010015", "ISIC_0000147"]


@pytest.mark.parametrize("colour_kind", ["dark", "light"])
def test_hair_found_on_real_skin_better_than_dullrazor(sample_dir, colour_kind):
    ours, textbook, better = [], [], 0
    for i, name in enumerate(HAIRLESS):
        clean = _square(sample_dir / "images" / f"{name}.jpg")
        hairy, truth = paste_hairs(clean, 40 + i, colour_kind, hairs=8)
        res = hair.remove_hair(hairy, hair.HairParams())
        grown = cv2.dilate(res.mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
        ours.append(_iou(grown, truth))
        textbook.append(_iou(hair.dullrazor(hairy)[1], truth))
        after = np.abs(res.image.astype(int) - clean.astype(int)).mean()
        before = np.abs(hairy.astype(int) - clean.astype(int)).mean()
        assert after <= before + 1e-9  # never further from the clean skin
        better += after < 0.8 * before
    assert better >= len(HAIRLESS) - 1  # and clearly closer on (almost) every image
    assert np.mean(ours) > 0.3 and np.mean(ours) > np.mean(textbook) + 0.1, (ours, textbook)


def test_hairless_real_images_are_left_alone(sample_dir):
    for name in HAIRLESS:
        clean = _square(sample_dir / "images" / f"{name}.jpg")
        res = hair.remove_hair(clean, hair.HairParams())
        assert res.fraction < 0.01, name
        assert structural_similarity(res.image, clean, channel_axis=2, data_range=255) >= 0.98, name


def test_real_hair_is_measured(sample_dir):
    for name in ("ISIC_0000138", "ISIC_0011300", "ISIC_0000095"):
        res = hair.remove_hair(_square(sample_dir / "images" / f"{name}.jpg"), hair.HairParams())
        assert res.fraction > 0.02, name


def test_lesion_structure_is_not_hair():
    img = render(SynthSpec(width=512, height=512, melanoma=True, lesion_scale=0.3), seed=4).image
    assert hair.hair_mask(img, hair.HairParams()).mean() < 0.005
    dots = np.full((256, 256, 3), 200, np.uint8)
    for k in range(40):  # globules and dots: dark, round, not hair
        cv2.circle(dots, (20 + (k * 37) % 220, 20 + (k * 53) % 220), 3, (60, 40, 30), -1)
    assert not hair.hair_mask(dots, hair.HairParams()).any()


def test_synthetic_hair_ground_truth():
    spec = SynthSpec(width=640, height=640, hairs=10, hair_colour="mixed")
    img = render(spec, seed=9)
    small = cv2.resize(img.image, (512, 512), interpolation=cv2.INTER_AREA)
    truth = cv2.resize(img.hair_mask.astype(np.uint8), (512, 512), interpolation=cv2.INTER_NEAREST).astype(bool)
    found = hair.hair_mask(small, hair.HairParams())
    grown = cv2.dilate(found.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert _iou(grown, truth) > _iou(hair.dullrazor(small)[1], truth)
    assert abs(found.mean() - truth.mean()) < 0.5 * truth.mean() + 0.002


# ----------------------------------------------------------------------------------- field of view


def test_real_microscope_fields(sample_dir):
    params = vignette.VignetteParams()

    def load(name):
        return cv2.cvtColor(cv2.imread(str(sample_dir / "images" / f"{name}.jpg"), cv2.IMREAD_REDUCED_COLOR_2),
                            cv2.COLOR_BGR2RGB)

    v = vignette.detect_vignette(load("ISIC_0001133"), params)
    assert v.detected and v.radius_frac == pytest.approx(0.49, abs=0.03) and v.confidence > 0.9
    assert vignette.detect_vignette(load("ISIC_0000030"), params).detected  # inside a 1-px bright scan frame
    for name in ("ISIC_0000013", "ISIC_0000085", "ISIC_0010015", "ISIC_0052212", "ISIC_0000235", "ISIC_0024320"):
        assert not vignette.detect_vignette(load(name), params).detected, name
    banded = load("ISIC_0000160")  # a black band along the top
    out = vignette.field_of_view(banded, params)
    assert out.vignette.box[1] > 0.02 and out.image.shape[0] < banded.shape[0]
    assert out.image[:3].mean() > 60  # the band is cropped away


# ------------------------------------------------------------------------------------------- colour


def test_colour_p_and_clipping():
    img = render(SynthSpec(width=200, height=150, cast=(1.2, 1.0, 0.7)), seed=6).image
    p1 = colour.shades_of_gray(img, colour.ColourParams(p=1.0))
    p6 = colour.shades_of_gray(img, colour.ColourParams(p=6.0))
    assert p1.gains != p6.gains  # Minkowski p matters
    bright = np.full((40, 40, 3), (250, 200, 120), np.uint8)
    out = colour.shades_of_gray(bright, colour.ColourParams())
    assert out.gains[2] > 1.5 and out.image[..., 2].max() <= 255 and out.image[..., 0].min() > 100  # no wrap
    off = colour.shades_of_gray(img, colour.ColourParams(enabled=False))
    np.testing.assert_array_equal(off.image, img)
    assert off.gains == (1.0, 1.0, 1.0) and off.brightness_before == pytest.approx(off.brightness_after, abs=0.5)


@pytest.mark.parametrize("kind", ["black", "white", "tiny", "one_channel"])
def test_degenerate_inputs_give_sane_measurements(kind):
    img = {"black": np.zeros((64, 64, 3), np.uint8), "white": np.full((64, 64, 3), 255, np.uint8),
           "tiny": np.full((6, 5, 3), 128, np.uint8),
           "one_channel": np.dstack([np.full((64, 64), 255, np.uint8), np.zeros((64, 64), np.uint8),
                                     np.zeros((64, 64), np.uint8)])}[kind]
    v = vignette.detect_vignette(img, vignette.VignetteParams())
    assert not v.detected and 0 <= v.confidence <= 1
    h = hair.remove_hair(img, hair.HairParams())
    assert 0.0 <= h.fraction <= 1.0 and h.image.shape == img.shape
    c = colour.shades_of_gray(img, colour.ColourParams(target_brightness=128))
    assert all(np.isfinite(c.gains)) and all(0 < g < 20 for g in c.gains)
    assert 0 <= c.brightness_before <= 255 and 0 <= c.brightness_after <= 255


def test_op_parameters_are_part_of_the_fingerprint():
    listing = [("in", "a.jpg", 10, 1.0, "")]
    base = PreprocessConfig()
    changed = base.with_overrides(hair__sigma=5.0)
    versions = {name: info.version for name, info in OPS.items()}
    assert manifest.fingerprint(base.fingerprint_dict(), versions, listing) != \
        manifest.fingerprint(changed.fingerprint_dict(), versions, listing)
    assert base.hair.enabled and base.field_of_view.enabled and base.colour.enabled  # on by default
    changed = base.with_overrides(decode__max_bytes=5_000_000)  # a key added later counts once changed
    assert manifest.fingerprint(base.fingerprint_dict(), versions, listing) != \
        manifest.fingerprint(changed.fingerprint_dict(), versions, listing)


def test_config_sections_carry_the_op_names_and_fingerprints_stay():
    import warnings

    from melanoma_data.config import DeprecatedSection, current_sections, manifest_section
    from melanoma_data.errors import ConfigError

    # one name each: every op that has parameters has a config section of its name
    sections = set(PreprocessConfig().to_dict())
    assert {"field_of_view", "landscape", "square", "hair", "colour", "phash"} <= sections
    assert {name for name in OPS if name != "orient"} <= sections
    assert not sections & {"vignette", "portrait", "resize"}

    # fingerprints computed by the code before the rename (and before decode.max_bytes existed), on the
    # same op versions and listing: a version preprocessed then is found again, not redone
    ops = {"orient": "1", "field_of_view": "3", "decode": "2"}
    listing = [("a/ISIC_1.jpg", 1234, 1700000000.0), ("b/ISIC_2.png", 99, 1.5)]
    assert manifest.fingerprint(PreprocessConfig().fingerprint_dict(), ops, listing) == "13469901dc7cf87b"
    new = {"square": {"size": 64, "policy": "pad"}, "field_of_view": {"policy": "leave"},
           "landscape": {"policy": "rotate"}, "hair": {"remove": False}}
    old = {"resize": new["square"], "vignette": new["field_of_view"], "portrait": new["landscape"],
           "hair": new["hair"]}
    cfg = PreprocessConfig.from_dict(new)
    assert manifest.fingerprint({**cfg.fingerprint_dict(), "target": "malignant"}, ops, listing) == "73edf15373e43014"

    # old names are still read, with a deprecation warning, into the same config
    with pytest.warns(DeprecatedSection) as said:
        assert PreprocessConfig.from_dict(old) == cfg
    assert sorted(str(w.message).split("]")[0] for w in said) == [
        "config: section [portrait", "config: section [resize", "config: section [vignette"]
    assert "[resize] is now called [square]" in " ".join(str(w.message) for w in said)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert PreprocessConfig.from_dict(old, warn=False) == cfg  # an old manifest: no warning
    with pytest.raises(ConfigError, match=r"\[resize\] and \[square\] are the same section"):
        current_sections({"resize": {}, "square": {}})
    # manifests of either format answer under today's names
    assert manifest_section({"resize": {"size": 64}}, "square") == {"size": 64}
    assert manifest_section(cfg.to_dict(), "square")["size"] == 64


# ------------------------------------------------------------------------------------------ inspect


def test_inspect_contact_sheet_for_input_and_version(tmp_path):
    from PIL import Image
    from typer.testing import CliRunner

    import cli
    from melanoma_data import build, synth

    synth.write_dataset(tmp_path / "in", n=8, layout="kaggle2020", seed=4, sizes=[(400, 300)], defects=1.0)
    res = CliRunner().invoke(cli.app, ["inspect", str(tmp_path / "in"), "--n", "4", "--out", str(tmp_path / "a.png")])
    assert res.exit_code == 0, res.output
    sheet = Image.open(tmp_path / "a.png")
    assert sheet.width > 800 and sheet.height > 200
    page = (tmp_path / "a.html").read_text()
    assert page.count("data:image/png;base64,") == 8 and "hair_fraction" in page
    cfg = PreprocessConfig.from_dict({"square": {"size": 64}, "hair": {"enabled": False}})
    version = build.preprocess([str(tmp_path / "in")], str(tmp_path / "out"), cfg).version_url
    res = CliRunner().invoke(cli.app, ["inspect", version, "--n", "3", "--out", str(tmp_path / "b.png")])
    assert res.exit_code == 0, res.output
    # the version's own config is used
    assert "ops on: field_of_view, artefacts, colour" in (tmp_path / "b.html").read_text()
    bad = CliRunner().invoke(cli.app, ["inspect", str(tmp_path / "nothing-here")])
    assert bad.exit_code == 2 and "error:" in bad.output


def test_rulers_pen_strokes_and_ink_are_reported_not_inpainted():
    img = render(SynthSpec(width=512, height=512, hairs=6, hair_colour="dark"), seed=12).image.copy()
    cv2.line(img, (30, 400), (480, 380), (35, 30, 30), 3, cv2.LINE_AA)  # a pen stroke / ruler edge: dead straight
    cv2.circle(img, (120, 120), 14, (90, 40, 160), 3)  # violet marker ink
    res = hair.remove_hair(img, hair.HairParams())
    stroke = np.zeros(img.shape[:2], bool)
    cv2.line(stroke.view(np.uint8), (30, 400), (480, 380), 1, 3)
    assert res.marks_fraction > 0.002 and res.fraction > 0.002  # both found, told apart
    assert not (res.mask & stroke).any()
    np.testing.assert_array_equal(res.image[stroke], img[stroke])  # the stroke is not smeared
    ink = hair.ink_mask(img, hair.HairParams())
    near_hair = cv2.dilate(res.mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    assert ink.sum() > 50
    np.testing.assert_array_equal(res.image[ink & ~near_hair], img[ink & ~near_hair])  # nor the ink


# ------------------------------------------- compiled kernels against plain numpy references


def _reference_hair(img: np.ndarray, params: hair.HairParams) -> tuple[np.ndarray, np.ndarray]:
    """The hair detector written with whole-array numpy and OpenCV calls (what the kernel replaced)."""
    grey = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    short = min(grey.shape)
    mask, marks = np.zeros(grey.shape, bool), np.zeros(grey.shape, bool)

    def median(a):
        return float(np.searchsorted(np.cumsum(np.bincount(a.ravel(), minlength=256)), (a.size + 1) / 2))

    for op in (cv2.MORPH_BLACKHAT, cv2.MORPH_TOPHAT):
        k = max(5, int(round(params.scales[0] * short)) | 1)
        resp = cv2.morphologyEx(grey, op, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)),
                                borderType=cv2.BORDER_REFLECT)
        resp[:2], resp[-2:], resp[:, :2], resp[:, -2:] = 0, 0, 0, 0
        sub = resp[::2, ::2]
        med = median(sub)
        mad = median(np.abs(sub.astype(int) - int(med))) * 1.4826
        cand = (resp > max(params.threshold, med + params.sigma * mad)).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(cand, connectivity=8)
        edge = (cv2.erode(cand, np.ones((3, 3), np.uint8)) == 0) & (cand > 0)
        for i in range(1, n):
            comp = labels == i
            area, bw, bh = stats[i, cv2.CC_STAT_AREA], stats[i, cv2.CC_STAT_WIDTH], stats[i, cv2.CC_STAT_HEIGHT]
            length = max((comp & edge).sum() / 2, 1.0)
            extent, fill = max(bw, bh), area / max(bw * bh, 1)
            if not (length >= params.min_length * short and area / length <= params.max_width * short + 1
                    and (extent >= params.straightness * length
                         or (extent >= params.network_extent * short and fill <= params.network_fill))):
                continue
            if extent >= params.ruler_length * short:
                ys, xs = np.nonzero(comp)
                pts = np.stack([xs, ys], axis=1).astype(np.float32)
                vx, vy, x0, y0 = cv2.fitLine(pts, cv2.DIST_L2, 0, 0.01, 0.01).ravel()
                off = np.sort(np.abs((pts[:, 0] - x0) * vy - (pts[:, 1] - y0) * vx))
                if off[int(0.98 * (len(off) - 1))] <= max(3.0, 0.008 * short):
                    marks |= comp
                    continue
            mask |= comp
    ink = hair.ink_mask(img, params)
    marks |= cv2.dilate(ink.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
    return mask & ~marks, marks


def _kernel_cases(sample_dir) -> list[np.ndarray]:
    real = [_square(p, 256) for p in sorted((sample_dir / "images").glob("*.jpg"))[:24]]
    sides = [61, 97, 128, 131, 160, 239] * 4
    tiles = [cv2.resize(r, (s, s), interpolation=cv2.INTER_AREA) for r, s in zip(real, sides, strict=True)]
    ruled = render(SynthSpec(width=512, height=512, hairs=6, hair_colour="dark"), seed=12).image.copy()
    cv2.line(ruled, (30, 400), (480, 380), (35, 30, 30), 3, cv2.LINE_AA)
    cv2.circle(ruled, (120, 120), 14, (90, 40, 160), 3)
    hairy = [render(SynthSpec(width=320, height=320, hairs=8, hair_colour="mixed"), seed=s).image for s in range(4)]
    return real + tiles + hairy + [ruled]


def test_hair_kernel_matches_the_numpy_reference(sample_dir):
    params = hair.HairParams()
    found = 0
    for img in _kernel_cases(sample_dir):
        mask, marks = hair.detect(img, params)
        ref_mask, ref_marks = _reference_hair(img, params)
        np.testing.assert_array_equal(mask, ref_mask)
        np.testing.assert_array_equal(marks, ref_marks)
        found += bool(mask.any()) + bool(marks.any())
    assert found >= 10  # the cases do exercise hair, rulers and ink


def test_field_screen_matches_the_numpy_reference(sample_dir):
    from melanoma_data._jit import fov_screen

    cases = _kernel_cases(sample_dir) + [render(SynthSpec(width=400, height=300, vignette=True), seed=s).image
                                         for s in range(3)]
    for img in cases + [np.zeros((40, 40, 3), np.uint8), np.full((7, 5, 3), 200, np.uint8)]:
        grey = geometry.grey_thumbnail(img)
        h, w = grey.shape
        ref = grey.copy()
        if h > 8 and w > 8:
            ref[:2], ref[-2:] = ref[2], ref[-3]
            ref[:, :2], ref[:, -2:] = ref[:, 2:3], ref[:, -3:-2]
        centre = ref[h // 4: 3 * h // 4, w // 4: 3 * w // 4]
        dark_ref = ref < max(12.0, 0.3 * max(float(np.median(centre if centre.size else ref)), 1.0))
        dark = np.empty((h, w), np.uint8)
        n_dark, y0, y1, x0, x1 = fov_screen(grey, 0.3, dark)
        np.testing.assert_array_equal(dark.view(bool), dark_ref)
        assert n_dark == dark_ref.sum()
        rows, cols = dark_ref.mean(axis=1) > 0.95, dark_ref.mean(axis=0) > 0.95
        if not dark_ref.all():
            assert y0 == (int(np.argmin(rows)) if rows[0] else 0)
            assert y1 == (h - int(np.argmin(rows[::-1])) if rows[-1] else h)
            assert x0 == (int(np.argmin(cols)) if cols[0] else 0)
            assert x1 == (w - int(np.argmin(cols[::-1])) if cols[-1] else w)


def test_phash_matrix_path_agrees_with_resize_then_dct(sample_dir):
    from melanoma_data.ops import encode

    params = encode.PHashParams()
    for img in _kernel_cases(sample_dir):
        grey = geometry.centre_square(geometry.grey_thumbnail(img))
        small = cv2.resize(grey, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32)
        low = cv2.dct(small)[:16, :16].ravel()
        ref = int("".join("1" if v else "0" for v in low > np.median(low[1:])), 2)
        got = int(encode.perceptual_hash(grey, params), 16)
        assert bin(ref ^ got).count("1") <= 6  # only coefficients next to the median may differ (uint8 rounding)


def test_small_shrinks_are_bilinear_and_close_to_area(sample_dir):
    for path in sorted((sample_dir / "images").glob("*.jpg"))[:10]:
        big = _square(path, 176)
        fast = geometry.shrink(big, (128, 128))
        np.testing.assert_array_equal(fast, cv2.resize(big, (128, 128), interpolation=cv2.INTER_LINEAR))
        area = cv2.resize(big, (128, 128), interpolation=cv2.INTER_AREA).astype(float)
        assert 10 * np.log10(255**2 / ((fast - area) ** 2).mean()) > 40
