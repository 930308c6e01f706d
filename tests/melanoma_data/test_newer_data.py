"""The data side of the newer datasets: skin tone measured as ITA, the op policy for clinical photos, one copy of
an image name found in several inputs (by source priority), licences, and the EDA report's concept and skin-tone
comparisons."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from melanoma_data import build, folds, ingest, synth
from melanoma_data import layouts as registry
from melanoma_data.config import PreprocessConfig
from melanoma_data.errors import ConfigError
from melanoma_data.manifest import Manifest
from melanoma_data.ops import colour as col
from melanoma_data.ops import steps
from melanoma_data.pipeline import process_image
from tests.conftest import ink, jpeg_bytes, write_generic

SMALL = PreprocessConfig.from_dict({"square": {"size": 64}})


def ita_of_rgb(rgb) -> float:
    """ITA (degrees) of one sRGB colour through CIELAB (D65), computed directly (no OpenCV)."""
    c = np.asarray(rgb, float) / 255
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    x, y, z = m @ lin / np.array([0.95047, 1.0, 1.08883])

    def f(t: float) -> float:
        return float(np.cbrt(t)) if t > (6 / 29) ** 3 else t / (3 * (6 / 29) ** 2) + 4 / 29

    lightness, b = 116 * f(y) - 16, 200 * (f(y) - f(z))
    return float(np.degrees(np.arctan2(lightness - 50, b)))


# ------------------------------------------------------------------------------ 1. ITA


TONES = [(245, 222, 208), (232, 192, 168), (215, 165, 135), (195, 140, 105), (170, 115, 85), (120, 80, 60),
         (85, 55, 40)]


def test_ita_of_known_skin_colours_light_to_dark():
    itas, bands = [], []
    for tone in TONES:
        img = synth.render(synth.SynthSpec(width=64, height=48, skin=tone, lesion_scale=0.12), 3).image
        result = col.shades_of_gray(img, col.ColourParams())
        assert result.ita == pytest.approx(ita_of_rgb(tone), abs=3.0), tone  # the skin's, lesion left out
        itas.append(result.ita)
        bands.append(result.ita_band)
    assert itas == sorted(itas, reverse=True)
    order = [col.ITA_BAND_NAMES.index(b) for b in bands]
    assert order == sorted(order) and bands[0] == "very light" and bands[-1] == "dark"
    # through the pipeline (JPEG, the hair step before it): the same bands, before the colour correction
    cast = synth.render(synth.SynthSpec(width=64, height=48, skin=TONES[2], lesion_scale=0.12), 3)
    out = process_image(synth.encode_file(cast), "x", SMALL)
    assert out["ita_band"] == "light" and out["ita"] == pytest.approx(ita_of_rgb(TONES[2]), abs=4.0)


def test_ita_bands_boundaries_and_degenerate_b():
    assert [col.ita_band(v) for v in (90, 55.01, 55, 41, 28, 10, -29.9, -30, -90)] == [
        "very light", "very light", "light", "intermediate", "tan", "brown", "brown", "dark", "dark"]
    grey = np.array([[[200, 200, 200], [60, 60, 60]]], np.uint8)  # b* = 0: ±90° by the lightness, no division
    assert col.ita_degrees(grey).tolist() == [[90.0, -90.0]]
    blue = np.array([[[150, 170, 240]]], np.uint8)  # b* < 0, light: clipped to 90°, not a sign flip to "dark"
    assert col.ita_degrees(blue)[0, 0] == 90.0


def test_ita_missing_when_colour_off_and_never_a_default_model_feature():
    from melanoma_models import features, score

    data = synth.encode_file(synth.render(synth.SynthSpec(width=64, height=48, skin=TONES[1]), 1))
    off = process_image(data, "x", PreprocessConfig.from_dict({"square": {"size": 64}, "colour": {"enabled": False}}))
    assert off["ita"] is None and off["ita_band"] is None
    uniform_lesion = np.full((48, 64, 3), (110, 70, 50), np.uint8)  # all lesion-dark, no skin to tell: measured
    assert col.shades_of_gray(uniform_lesion, col.ColourParams()).ita is not None  # (no distinct lesion: all skin)
    assert steps.audit_columns() == ["ita", "ita_band"]
    assert not set(steps.audit_columns()) & set(features.MEASUREMENTS)
    assert not set(steps.audit_columns()) & set(score.MEASUREMENT_COLUMNS)
    assert features.MEASUREMENTS == ["vignette_detected", "vignette_radius_frac", "hair_fraction", "brightness_before",
                                     "brightness_after", "colour_gain_r", "colour_gain_g", "colour_gain_b"]
    spec = steps.ColumnSpec("x_audit", steps._F, "Float64", "measurement", audit=True)
    with pytest.raises(steps.StepTableError, match="audit"):
        steps.Step("x", lambda cfg: {}, reads=(), columns=(spec,), features=("x_audit",))


def test_ita_of_the_real_sample_is_plausible(sample_dir):
    names = sorted(p.stem for p in (sample_dir / "images").glob("*.jpg"))[:12]
    itas = [process_image((sample_dir / "images" / f"{n}.jpg").read_bytes(), n, SMALL)["ita"] for n in names]
    known = [v for v in itas if v is not None]
    assert len(known) >= 10 and all(-90 <= v <= 90 for v in known)
    assert np.median(known) > 0  # mostly light skin in the 2016–2019 archive images


# ------------------------------------------------------------------------------ 2. the op policy by view


def shadowed_photo(seed: int) -> bytes:
    """A clinical close-up (uneven light) with a dark background towards the corners, as a limb photographed
    on a dark cloth: what the dermoscopy path takes for a microscope field."""
    rng = np.random.default_rng(seed)
    img = synth.render(synth.clinical_spec(rng, False, [(512, 384)]), seed).image.astype(np.float32)
    h, w = img.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    r = np.sqrt(((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2) / np.sqrt(2)
    fall = np.clip(1 - 0.95 * np.clip((r - 0.55) / 0.45, 0, 1), 0.05, 1)
    buf = io.BytesIO()
    Image.fromarray(np.clip(img * fall[..., None], 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def test_clinical_photos_keep_the_whole_frame_and_skip_the_dermoscopy_detectors():
    data = shadowed_photo(0)
    old = process_image(data, "x", SMALL)
    assert old["vignette_detected"] and old["dark_corners_detected"]  # what the dermoscopy path makes of it
    for view in ("clinical: close-up", "Clinical: overview"):
        out = process_image(data, "x", SMALL, debug=True, image_type=view)
        assert out["vignette_detected"] is None and out["vignette_radius_frac"] is None
        assert all(out[f"{k}_detected"] is None and out[f"{k}_fraction"] is None for k in ("ruler", "ink", "bubbles",
                                                                                             "dark_corners"))
        assert (out["crop_x0"], out["crop_y0"], out["crop_x1"], out["crop_y1"]) == (0.0, 0.0, 1.0, 1.0)
        assert "field_of_view" in out["ops_skipped"] and "artefacts" in out["ops_skipped"]
        assert out["hair_fraction"] is not None and out["colour_gain_r"] is not None and out["ita"] is not None
    # the whole frame: the same pixels as the dermoscopy path with the field crop switched off
    whole = process_image(data, "x", PreprocessConfig.from_dict({"square": {"size": 64},
                                                                 "field_of_view": {"enabled": False}}))
    clinical = process_image(data, "x", SMALL, image_type="clinical: close-up")
    assert clinical["image"] == whole["image"] and clinical["image"] != old["image"]


def test_the_partition_loop_passes_each_rows_view(tmp_path):
    from melanoma_data.pipeline import process_partition

    (tmp_path / "a.jpg").write_bytes(shadowed_photo(0))
    records = [{"image_name": n, "path": str(tmp_path / "a.jpg"), "image_type": v}
               for n, v in (("A", "clinical: close-up"), ("B", None), ("C", float("nan")))]
    rows, quarantine = process_partition(records, SMALL)
    assert not quarantine and [r["ops_skipped"] is None for r in rows] == [False, True, True]
    assert rows[0]["image_type"] == "clinical: close-up" and rows[1]["vignette_detected"]


def test_dermoscopic_rows_take_the_old_path_and_a_policy_enters_the_fingerprint():
    data = shadowed_photo(1)
    old = process_image(data, "x", SMALL)
    for view in (None, "dermoscopic", "TBP tile: close-up", "something else"):
        assert process_image(data, "x", SMALL, image_type=view) == old
    assert old["ops_skipped"] is None
    assert steps.plan(SMALL.views, "dermoscopic") == tuple((s.label, s.run, s.reads) for s in steps.ORDER)
    # run everything on clinical photos too: the old path, and a fingerprint of its own
    every = PreprocessConfig.from_dict({"square": {"size": 64}, "views": {"clinical_skip": []}})
    assert process_image(data, "x", every, image_type="clinical: close-up") == old
    assert "views" not in SMALL.fingerprint_dict() and "views" in SMALL.to_dict()
    assert every.fingerprint_dict()["views"] == {"clinical_skip": ()}
    assert PreprocessConfig.from_dict({"views": {"clinical_skip": ["artefacts", "field_of_view"]}}) \
        .fingerprint_dict() == PreprocessConfig().fingerprint_dict()  # the default, in any order
    with pytest.raises(ConfigError, match="'hair' cannot be skipped"):
        PreprocessConfig.from_dict({"views": {"clinical_skip": ["hair"]}})
    with pytest.raises(ConfigError, match="clinical_skip must be a list, got 'artefacts'"):
        PreprocessConfig.from_dict({"views": {"clinical_skip": "artefacts"}})
    ref = steps.reference_markdown()
    assert "not on clinical ones by default" in ref and "[views]" in ref


def test_a_layouts_view_fills_blank_image_types(tmp_path, monkeypatch):
    rows = [{"image_name": "IMG_1", "target": 0}, {"image_name": "IMG_2", "target": 1, "image_type": "dermoscopic"}]
    root = write_generic(tmp_path / "in", {"IMG_1": jpeg_bytes(), "IMG_2": jpeg_bytes(seed=1)}, rows)
    assert ingest.ingest([str(root)]).records["image_type"].isna().tolist() == [True, False]  # no view: as before
    clinical = dataclasses.replace(registry.get("generic"), image_type="clinical: close-up")
    monkeypatch.setitem(registry._REGISTRY, "generic", clinical)
    assert ingest.ingest([str(root)]).records["image_type"].tolist() == ["clinical: close-up", "dermoscopic"]


# ------------------------------------------------------------------------------ 3. cross-source duplicates


def _isic2019_input(root: Path) -> pd.DataFrame:
    registry.get("isic2019").write(root, n=4, seed=3, sizes=[(64, 48)], defects=0.0)
    gt = next(root.rglob("*GroundTruth*.csv"))
    return pd.read_csv(gt)


def test_one_name_in_two_inputs_keeps_the_copy_of_the_higher_priority_source(tmp_path):
    gt = _isic2019_input(tmp_path / "isic2019")
    names = gt["image"].tolist()[:2]
    melanoma = {n: int(gt.set_index("image").loc[n, "MEL"]) for n in names}
    rows = [{"image_name": names[0], "target": melanoma[names[0]], "patient_id": "IP_7"},  # the same label
            {"image_name": names[1], "target": 1 - melanoma[names[1]]},  # a different one
            {"image_name": "OWN_1", "target": 0, "patient_id": "IP_7"}]
    mine = write_generic(tmp_path / "mine", {n: jpeg_bytes(seed=i) for i, n in enumerate([*names, "OWN_1"])}, rows)
    found = ingest.ingest([str(mine), str(tmp_path / "isic2019")])  # the generic input first: priority decides
    kept = found.records.set_index("image_name")["source"]
    assert kept[names[0]] == kept[names[1]] == "isic2019" and kept["OWN_1"] == "mine"
    # the kept copy (no patient in ISIC 2019's files) takes the patient the other copy names: one fold with OWN_1
    patients = found.records.set_index("image_name")["patient_id"]
    assert patients[names[0]] == patients["OWN_1"] == "IP_7" and pd.isna(patients[names[1]])
    q = found.quarantine.set_index("image_name")
    assert q.loc[names, "reason"].tolist() == ["cross_source_duplicate"] * 2
    assert q.loc[names, "source"].tolist() == ["mine", "mine"]
    assert all("isic2019" in d and "input 2" in d for d in q.loc[names, "detail"])
    report = found.cross_source
    assert report["images"] == 2 and report["by_source"] == {"isic2019 > mine": 2}
    assert (report["labels_agree"], report["labels_disagree"]) == (1, 1)
    assert [d["image_name"] for d in report["disagree"]] == [names[1]]
    rows = dict(folds.duplicate_rows({"groups": 0, "cross_source": report}))
    assert "isic2019 > mine: 2" in rows["cross-source duplicates"] and names[1] in rows["labels disagree"]
    # the other way round, and two inputs of one priority: the earlier input wins
    again = ingest.ingest([str(tmp_path / "isic2019"), str(mine)])
    assert again.cross_source["by_source"] == {"isic2019 > mine": 2}
    other = write_generic(tmp_path / "other", {"OWN_1": jpeg_bytes(seed=9)}, [{"image_name": "OWN_1", "target": 0}])
    tie = ingest.ingest([str(other), str(mine)])
    assert tie.records.set_index("image_name").loc["OWN_1", "source"] == "other"
    assert tie.cross_source["labels_agree"] == 1
    assert ingest.source_rank("generic", 0) > ingest.source_rank("isic-cli", 5)  # any listed layout beats the rest


# ------------------------------------------------------------------------------ 4./5. manifest and EDA report


def test_old_manifests_read_without_licences():
    old = Path(__file__).parents[1] / "data" / "main-2026-12-03" / "manifest-kaggle2020-default.json"
    doc = Manifest(json.loads(old.read_text()))
    assert doc.inputs and all(i.licence == "" for i in doc.inputs)
    assert dict(doc.show_rows())["licences"] == "not recorded"
    assert registry.get("kaggle2020").licence.startswith("CC BY-NC 4.0")
    assert "copyright_license" in registry.get("isic-cli").licence


@pytest.mark.slow
def test_version_records_licences_cross_source_duplicates_and_reports_concepts_and_skin_tone(tmp_path):
    from melanoma_data.dataset import open_dataset
    from melanoma_data.report import concept_checks, skin_tone_confusion, write_report

    rng = np.random.default_rng(5)
    files, rows = {}, []
    for i in range(16):
        tone = TONES[i % 6]
        spec = synth.SynthSpec(width=384, height=288, skin=tone, hairs=int(rng.integers(0, 30)), lesion_scale=0.15,
                               pen=1 if i % 4 == 0 else 0, pen_ink="green")
        img = synth.render(spec, i)
        name = f"IMG_{i:03d}"
        files[name] = synth.encode_file(img)
        rows.append({"image_name": name, "patient_id": f"P{i // 2}", "target": int(i % 3 == 0),
                     "MONET_hair": round(min(1.0, img.hair_mask.mean() * 8 + rng.uniform(0, 0.1)), 3),
                     "MONET_skin_markings_pen_ink_purple_pen": round(0.7 if spec.pen else rng.uniform(0, 0.4), 3),
                     "skin_tone_class": i % 6, "copyright_license": "CC-BY" if i % 2 else "CC-0"})
    root = write_generic(tmp_path / "in", files, rows)
    dup = write_generic(tmp_path / "again", {"IMG_000": files["IMG_000"]}, [{"image_name": "IMG_000", "target": 1}])
    cfg = PreprocessConfig.from_dict({"square": {"size": 128}, "shards": {"n_folds": 2, "train_files": 2,
                                                                         "test_files": 1}})
    version = build.preprocess([str(root), str(dup)], str(tmp_path / "out"), cfg)
    doc = version.manifest
    assert [i.licence for i in doc.inputs] == ["", ""] and [i.layout for i in doc.inputs] == ["generic"] * 2
    cross = doc.duplicates["cross_source"]
    assert cross["images"] == 1 and cross["by_source"] == {"in > again": 1} and cross["labels_agree"] == 1
    assert doc.quarantine_reasons == {"cross_source_duplicate": 1}
    assert any(label == "cross-source duplicates" for label, _ in doc.show_rows())
    ds = open_dataset(version.version_url)
    meta = ds.metadata()
    assert meta["ita_band"].notna().all() and meta["ops_skipped"].isna().all()
    page = write_report(ds, tmp_path / "report").read_text()
    checks = concept_checks(meta)  # the generated scores follow what was drawn: our detectors agree with them
    assert checks["hair"]["n"] == 16 and checks["hair"]["spearman"] > 0.3
    assert checks["ink"]["flagged"] == 4 and checks["ink"]["auc"] > 0.9
    assert "Spearman" in page and "AUC of the score for the flag" in page
    assert "skin_tone_class" in page and "ita_band" in page and "per-image licences: in" in page
    assert "CC-0: 8" in page and "CC-BY: 8" in page
    confusion = skin_tone_confusion(meta)
    assert confusion.to_numpy().sum() == 16 and list(confusion.columns) == list(col.ITA_BAND_NAMES)
    for png in ("concepts.png", "skin_tone.png"):
        assert ink(tmp_path / "report" / png)["ink"] > 0.02


def test_a_lesions_images_share_a_fold_group_whatever_their_patient_ids():
    meta = pd.DataFrame({"image_name": list("abcdef"), "patient_id": ["P1", "P2", None, "P3", "P3", None],
                         "lesion_id": ["L1", "L1", "L1", None, "", None]})
    labels, _ = folds.linked_groups(meta)
    assert len(set(labels[:3])) == 1 and labels[3] == labels[4] and len(set(labels)) == 3
