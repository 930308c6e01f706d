"""Contract tests over the op registry: dtype/shape rules, determinism, no mutation, validated params."""

from __future__ import annotations

import numpy as np
import pytest

from melanoma_data.errors import ConfigError
from melanoma_data.ops import OPS, artefacts, colour, geometry, hair, vignette
from melanoma_data.synth import SynthSpec, render

#: op name → (valid params, a dict of invalid params that must be refused): one row per op of the step table
CASES = {
    "orient": (geometry.OrientParams(6), {"exif_orientation": 9}),
    "landscape": (geometry.LandscapeParams("rotate"), {"policy": "sideways"}),
    "square": (geometry.ResizeParams(size=64, policy="crop"), {"size": 3}),
    "phash": (OPS["phash"].params(), {"hash_size": 1}),
    "field_of_view": (vignette.VignetteParams(enabled=True), {"policy": "blur"}),
    "hair": (hair.HairParams(enabled=True), {"max_width": 0.0}),
    "artefacts": (artefacts.ArtefactParams(policy="mask"), {"policy": "paint"}),
    "colour": (colour.ColourParams(enabled=True, p=4.0, target_brightness=120.0), {"p": 0.5}),
}

IMAGES = {
    "synthetic": lambda: render(SynthSpec(width=160, height=120, hairs=4, vignette=True), seed=2).image,
    "portrait": lambda: render(SynthSpec(width=90, height=140), seed=3).image,
    "black": lambda: np.zeros((50, 70, 3), np.uint8),
    "white": lambda: np.full((50, 70, 3), 255, np.uint8),
    "tiny": lambda: np.full((3, 4, 3), 120, np.uint8),
    "red_saturated": lambda: np.dstack([np.full((40, 40), 255, np.uint8), np.full((40, 40), 90, np.uint8),
                                        np.full((40, 40), 60, np.uint8)]),
}


def test_every_registered_op_has_a_contract_case():
    assert set(CASES) == set(OPS), f"ops without contract case: {set(OPS) - set(CASES)}"


@pytest.mark.parametrize("image", sorted(IMAGES))
@pytest.mark.parametrize("name", sorted(OPS))
def test_op_contract(name, image):
    op = OPS[name]
    params, _ = CASES[name]
    img = IMAGES[image]()
    before = img.copy()
    out1 = op.fn(img, params)
    out2 = op.fn(img, params)
    np.testing.assert_array_equal(img, before)  # input never mutated
    if op.kind == "transform":
        assert isinstance(out1, np.ndarray) and out1.dtype == np.uint8 and out1.ndim == 3 and out1.shape[2] == 3
        assert out1 is img or not np.shares_memory(out1, img)  # the input itself, or fresh memory
        np.testing.assert_array_equal(out1, out2)
    elif op.kind == "result":
        for out in (out1, out2):
            assert out.image.dtype == np.uint8 and out.image.ndim == 3 and out.image.shape[2] == 3
            assert out.image is img or not np.shares_memory(out.image, img)  # the input itself, or fresh memory
        np.testing.assert_array_equal(out1.image, out2.image)
        for field in vars(out1):
            if field != "image":
                a, b = getattr(out1, field), getattr(out2, field)
                assert (np.array_equal(a, b) if isinstance(a, np.ndarray) else a == b), field
    else:
        assert out1 == out2


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_params_are_validated(name):
    op = OPS[name]
    _, bad = CASES[name]
    with pytest.raises(ConfigError):
        op.params(**bad)
    with pytest.raises(ConfigError, match="unknown parameter"):
        op.params.from_dict({"nonsense": 1})
    params = CASES[name][0]
    with pytest.raises(AttributeError):
        params.__setattr__(next(iter(params.to_dict())), 0)  # frozen


def test_square_policies():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, 50:150] = 255
    crop = geometry.square(img, geometry.ResizeParams(size=50, policy="crop"))
    pad = geometry.square(img, geometry.ResizeParams(size=50, policy="pad", pad_value=7))
    assert crop.shape == pad.shape == (50, 50, 3)
    assert crop.mean() == pytest.approx(255, abs=1)
    assert pad[0, 0, 0] == 7 and pad[25, 25, 0] == 255
