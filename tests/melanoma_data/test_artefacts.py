"""Artefacts (issue 17): rulers, ink, bubbles and dark corners — on drawn ground truth, on the labelled real
sample, kept out of hair removal, recorded in the shards and reported by class."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from melanoma_data import synth
from melanoma_data.config import PreprocessConfig
from melanoma_data.errors import ConfigError
from melanoma_data.ops import artefacts as art
from melanoma_data.ops import decode as dec
from melanoma_data.ops import hair
from melanoma_data.ops._cv import cv2
from melanoma_data.pipeline import _follow, process_image

LABELS = Path(__file__).resolve().parents[1] / "labels" / "isic_sample_artefacts.csv"
P = art.ArtefactParams()
BASE = {"width": 1024, "height": 768, "hairs": 8, "hair_colour": "mixed"}


def _truth(img: synth.SynthImage, kind: str, shape: tuple[int, int]) -> np.ndarray:
    return cv2.resize(img.artefacts[kind].view(np.uint8), shape[::-1], interpolation=cv2.INTER_NEAREST) > 0


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def test_generated_ticks_rulers_bubbles_and_ink_are_found_where_they_were_drawn():
    hits = {"ticks": 0, "ruler": 0, "bubbles": 0, "ink": 0}
    ious = {"ticks": [], "bubbles": [], "ink": []}
    n = 8
    for i in range(n):
        for key, spec in (("ticks", {"ticks": True}), ("ruler", {"ruler": True}), ("bubbles", {"bubbles": 4}),
                          ("ink", {"pen": 2, "pen_ink": ("violet", "purple", "green", "blue")[i % 4]})):
            img = synth.render(synth.SynthSpec(**BASE, **spec), seed=(11, i))
            found = art.detect_artefacts(img.image, P)
            kind = {"ticks": "ruler"}.get(key, key)
            hits[key] += found.detected[kind]
            if key in ious:
                ious[key].append(_iou(getattr(found, kind), _truth(img, kind, found.ruler.shape)))
            assert not found.detected["dark_corners"]  # no field was drawn
    # ink: some strokes leave the frame at once (measured 51 of 64 over the four inks, bench/quality.py)
    assert hits["ticks"] == hits["ruler"] == hits["bubbles"] == n and hits["ink"] >= n - 3, hits
    assert np.mean(ious["ticks"]) > 0.4 and np.mean(ious["bubbles"]) > 0.6 and np.mean(ious["ink"]) > 0.25, ious


def test_clean_generated_images_raise_no_flags():
    """Also under the generator's colour casts (0.85–1.12 per channel: a green- or blue-lit image's skin is not
    ink) and with variegated lesions (blue-grey areas)."""
    flags = {k: 0 for k in art.KINDS}
    casts = [(1.0, 1.0, 1.0), (0.86, 1.12, 0.9), (0.86, 0.95, 1.12), (1.12, 0.92, 0.86)]
    for i in range(12):
        spec = synth.SynthSpec(**BASE, cast=casts[i % 4], melanoma=bool(i % 2),
                               abcd=(0.6, 0.6, 0.8) if i % 3 == 0 else None)
        found = art.detect_artefacts(synth.render(spec, seed=(12, i)).image, P)
        for k in art.KINDS:
            flags[k] += found.detected[k]
    assert flags["ruler"] == 0 and flags["ink"] == 0 and flags["dark_corners"] == 0 and flags["bubbles"] <= 1, flags


def test_generated_field_of_view_is_dark_corners():
    img = synth.render(synth.SynthSpec(**BASE, vignette=True, vignette_radius_frac=0.5), seed=3).image
    found = art.detect_artefacts(img, P)
    assert found.detected["dark_corners"] and 0.1 < found.fraction["dark_corners"] < 0.6


def test_hair_removal_leaves_drawn_artefacts_alone():
    """At most 5% of a ruler's, a tick row's or a bubble's pixels may end up in the hair mask."""
    hp = hair.HairParams()
    cases = (("ruler", {"ticks": True}), ("bubbles", {"bubbles": 5}), ("ink", {"pen": 2, "pen_ink": "violet"}))
    for key, spec in cases:
        shares = []
        for i in range(5):
            img = synth.render(synth.SynthSpec(**BASE, **spec), seed=(13, i))
            small = art.thumbnail(img.image, P.side)
            found = art.detect_artefacts(img.image, P)
            truth = _truth(img, key, small.shape[:2])
            if not found.detected[key]:
                continue  # what is not found is not protected (detection rates: the test above)
            mask = hair.remove_hair(small, hp, found.kept()).mask
            shares.append((mask & truth).sum() / truth.sum())
        assert len(shares) >= 3 and np.mean(shares) <= 0.05, (key, shares)


def _labels() -> list[dict[str, str]]:
    with LABELS.open(encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _detect_real(sample_dir: Path, name: str) -> art.Artefacts:
    data = (sample_dir / "images" / f"{name}.jpg").read_bytes()
    header = dec.read_header(data)
    img = dec.decode(data, header, dec.choose_reduction(header, 512), dec.DecodeParams())
    return art.detect_artefacts(img, P)


def test_real_sample_against_the_labels_made_by_eye(sample_dir):
    """The labels were made before any detector; the detectors were tuned on the even ids only. The bounds
    are regression guards a little below what was measured (both halves: see bench/quality.py)."""
    rows = _labels()
    assert len(rows) == 89
    found = {r["image_name"]: _detect_real(sample_dir, r["image_name"]).detected for r in rows}
    rulers = [r["image_name"] for r in rows if r["ruler"] == "1"]
    others = [r["image_name"] for r in rows if r["ruler"] != "1" and r["ink"] != "1"]
    assert sum(found[n]["ruler"] for n in rulers) >= 0.8 * len(rulers)  # measured 14 of 16
    assert sum(found[n]["ruler"] or found[n]["ink"] for n in others) <= 2  # measured 0 of 70
    dark = [r["image_name"] for r in rows if r["field"] == "dark"]
    plain = [r["image_name"] for r in rows if r["field"] == "none"]
    assert sum(found[n]["dark_corners"] for n in dark) >= 0.7 * len(dark)  # measured 14 of 18
    assert sum(found[n]["dark_corners"] for n in plain) <= 2  # measured 1 of 65
    assert sum(found[n]["bubbles"] for n in plain if n not in {r["image_name"] for r in rows if r["bubbles"] == "1"}) \
        <= 6


def test_ruler_of_isic_0232101_is_found_and_never_inpainted(sample_dir):
    """The issue's example: its ruler went into the hair mask and was painted over."""
    data = (sample_dir / "images" / "ISIC_0232101.jpg").read_bytes()
    cfg = PreprocessConfig()
    out = process_image(data, "ISIC_0232101", cfg, debug=True)
    assert out["ruler_detected"] and out["ruler_fraction"] > 0
    dbg = out["_debug"]
    kept = _follow(dbg["artefacts"].kept(), dbg["oriented"].shape[:2], dbg["vignette"], dbg["hair_mask"].shape, cfg)
    assert kept is not None and kept.sum() > 50
    assert not (dbg["hair_mask"] & kept).any()
    assert out["marks_fraction"] >= kept.mean() * 0.99


def test_policies_mask_and_crop_and_their_errors():
    img = synth.render(synth.SynthSpec(**BASE, ruler=True, ticks=True), seed=4)
    data = synth.encode_file(img, "PNG")
    leave = process_image(data, "x", PreprocessConfig(), debug=True)
    masked = process_image(data, "x", PreprocessConfig.from_dict({"artefacts": {"policy": "mask"}}), debug=True)
    cropped = process_image(data, "x", PreprocessConfig.from_dict({"artefacts": {"policy": "crop"}}), debug=True)
    assert leave["ruler_detected"] and masked["ruler_detected"] and cropped["ruler_detected"]
    found = leave["_debug"]["artefacts"]
    small = cv2.resize(found.ruler.view(np.uint8), img.image.shape[1::-1], interpolation=cv2.INTER_NEAREST) > 0
    # mask: every ruler pixel found is black in the processed original's frame, the rest unchanged
    m = masked["_debug"]["processed"]
    assert m.shape == leave["_debug"]["processed"].shape
    assert not np.array_equal(m, leave["_debug"]["processed"])
    assert small.sum() > 0
    # crop: the kept box is narrower than the whole image, recorded in the crop columns
    box = (cropped["crop_x0"], cropped["crop_y0"], cropped["crop_x1"], cropped["crop_y1"])
    assert box != (0.0, 0.0, 1.0, 1.0) and all(0.0 <= v <= 1.0 for v in box)
    assert (box[2] - box[0]) * (box[3] - box[1]) >= (1 - P.max_crop) ** 2 - 1e-9
    with pytest.raises(ConfigError, match="needs \\[field_of_view\\] policy = 'crop'"):
        PreprocessConfig.from_dict({"artefacts": {"policy": "crop"}, "field_of_view": {"policy": "leave"}})
    with pytest.raises(ConfigError, match="artefacts policy"):
        art.ArtefactParams(policy="inpaint")


def test_artefact_columns_and_off_means_missing():
    img = synth.render(synth.SynthSpec(**BASE, bubbles=4), seed=5)
    data = synth.encode_file(img)
    on = process_image(data, "x", PreprocessConfig())
    off = process_image(data, "x", PreprocessConfig.from_dict({"artefacts": {"enabled": False}}))
    for kind in art.KINDS:
        assert isinstance(on[f"{kind}_detected"], bool) and 0.0 <= on[f"{kind}_fraction"] <= 1.0
        assert off[f"{kind}_detected"] is None and off[f"{kind}_fraction"] is None  # not looked for ≠ not there
    assert on["bubbles_detected"]
    # a 128-px output still decodes enough for the detectors; an original too small to look at is not looked at
    small_out = process_image(data, "x", PreprocessConfig.from_dict({"square": {"size": 128}}))
    assert small_out["bubbles_detected"] is True
    tiny = synth.encode_file(synth.render(synth.SynthSpec(width=160, height=120), seed=1))
    assert process_image(tiny, "x", PreprocessConfig())["ruler_detected"] is None


def test_default_artefacts_section_keeps_old_fingerprints():
    """A config without an [artefacts] section, or with it at its defaults, hashes as before the section
    existed; any change to it changes the fingerprint."""
    base = PreprocessConfig().fingerprint_dict()
    assert "artefacts" not in base
    assert "artefacts" in PreprocessConfig.from_dict({"artefacts": {"policy": "mask"}}).fingerprint_dict()


def test_presence_rates_per_class():
    from melanoma_data.columns import presence, presence_rates

    frame = pd.DataFrame({"target": [1, 1, 1, 0, 0, 0, 0, None],
                          "ruler_detected": [True, True, False, False, False, True, False, True],
                          "ink_detected": [None] * 8,  # not looked for: no row
                          "hair_fraction": [0.2, 0.0, 0.0, 0.0, 0.1, 0.0, np.nan, 0.0]})
    assert set(presence(frame)) == {"ruler", "heavy hair"}
    rows = {r["artefact"]: r for r in presence_rates(frame)}
    assert (rows["ruler"]["positives_with"], rows["ruler"]["positives"]) == (2, 3)
    assert (rows["ruler"]["negatives_with"], rows["ruler"]["negatives"]) == (1, 4)
    assert rows["ruler"]["ratio"] == pytest.approx((2 / 3) / (1 / 4))
    assert (rows["heavy hair"]["negatives_with"], rows["heavy hair"]["negatives"]) == (1, 3)  # NaN hair: unknown
