"""Behaviour of the (experimental, off by default) normalisation ops on synthetic ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from melanoma_data.ops import colour, vignette
from melanoma_data.synth import SynthSpec, render

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
