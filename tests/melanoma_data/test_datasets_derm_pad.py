"""The Derm7pt and PAD-UFES-20 layouts: their files as published, both views of a case, the official split kept as
one fixed fold, nested image folders, body sites, and malformed inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from melanoma_data import columns, folds, fsutil, ingest, layouts, vocabulary
from melanoma_data.errors import InputError
from melanoma_data.layouts import derm7pt, pad_ufes_20

#: The published headers (Derm7pt release_v0/meta/meta.csv; PAD-UFES-20 metadata.csv), written out here on purpose.
DERM7PT_HEADER = ["case_num", "diagnosis", "seven_point_score", "pigment_network", "streaks", "pigmentation",
                  "regression_structures", "dots_and_globules", "blue_whitish_veil", "vascular_structures",
                  "level_of_diagnostic_difficulty", "elevation", "location", "sex", "management", "clinic", "derm",
                  "case_id", "notes"]
PAD_HEADER = ["patient_id", "lesion_id", "smoke", "drink", "background_father", "background_mother", "age", "pesticide",
              "gender", "skin_cancer_history", "cancer_history", "has_piped_water", "has_sewage_system", "fitspatrick",
              "region", "diameter_1", "diameter_2", "diagnostic", "itch", "grew", "hurt", "changed", "bleed",
              "elevation", "img_id", "biopsed"]
DERM7PT_LOCATIONS = ["abdomen", "acral", "back", "buttocks", "chest", "genital areas", "head neck", "lower limbs",
                     "upper limbs"]
PAD_REGIONS = ["ABDOMEN", "ARM", "BACK", "CHEST", "EAR", "FACE", "FOOT", "FOREARM", "HAND", "LIP", "NECK", "NOSE",
               "SCALP", "THIGH"]
TINY = {"sizes": [(48, 36)], "defects": 0.0}


def _derm(root: Path, n: int = 10, seed: int = 1, **kw) -> list[dict]:
    return derm7pt.write(root, n=n, seed=seed, **{**TINY, **kw})


def _ingest(root: Path):
    found = ingest.ingest([str(root)])
    return found, found.records.set_index("image_name")


def _header(path: Path) -> list[str]:
    return path.read_text().splitlines()[0].split(",")


# ------------------------------------------------------------------------------ Derm7pt


def test_derm7pt_writer_writes_the_published_files(tmp_path):
    written = _derm(tmp_path, n=12, single_view=0.3)
    meta_dir = tmp_path / "release_v0" / "meta"
    assert _header(meta_dir / "meta.csv") == DERM7PT_HEADER
    meta = pd.read_csv(meta_dir / "meta.csv", dtype=str, keep_default_na=False)
    assert meta["case_num"].tolist() == [str(i) for i in range(1, 13)]
    assert set(meta["diagnosis"]) <= set(vocabulary.CODES["derm7pt"])
    assert set(meta["location"]) <= set(DERM7PT_LOCATIONS)
    listed = []
    for split in ("train", "valid", "test"):
        assert _header(meta_dir / f"{split}_indexes.csv") == ["indexes"]
        listed += pd.read_csv(meta_dir / f"{split}_indexes.csv")["indexes"].tolist()
    assert sorted(listed) == list(range(12))  # every case in exactly one official part
    # clinical names upper case .JPG, dermoscopic .jpg, in three-letter code folders, as the release spells them
    assert all(p.endswith(".JPG") for p in meta["clinic"][meta["clinic"] != meta["derm"]])
    assert all(p.endswith(".jpg") for p in meta["derm"])
    on_disk = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.suffix.lower() == ".jpg"}
    assert on_disk == {w["rel_path"] for w in written}


def test_derm7pt_reads_both_views_per_case_and_keeps_a_single_view_case_flagged(tmp_path):
    written = _derm(tmp_path, n=12, single_view=0.3)
    found, recs = _ingest(tmp_path)
    assert found.layouts == ["derm7pt"] and found.quarantine.empty
    meta = pd.read_csv(tmp_path / "release_v0" / "meta" / "meta.csv", dtype=str, keep_default_na=False)
    single = meta[meta["clinic"] == meta["derm"]]
    assert 0 < len(single) < len(meta)
    by_case = found.records.groupby("lesion_id")
    for rec in meta.itertuples():
        rows = by_case.get_group(rec.case_num)
        if rec.clinic == rec.derm:  # one image: one dermoscopic row, flagged
            assert rows["image_type"].tolist() == ["dermoscopic"]
            assert rows["view_missing"].tolist() == ["clinical: close-up"]
        else:
            assert sorted(rows["image_type"]) == ["clinical: close-up", "dermoscopic"]
            assert rows["view_missing"].isna().all()
            clinical = rows[rows["image_type"] == "clinical: close-up"].iloc[0]
            assert clinical["rel_path"] == f"release_v0/images/{rec.clinic}"  # the .JPG name as listed
        assert (rows["diagnosis_original"] == rec.diagnosis).all()
        assert (rows["diagnosis"] == vocabulary.CODES["derm7pt"][rec.diagnosis]).all()
        assert (rows["seven_point_score"] == float(rec.seven_point_score)).all()
        assert (rows["pigment_network"] == rec.pigment_network).all()
        assert (rows["anatom_site_detailed"] == rec.location).all()
    assert len(found.records) == len(written) == 2 * len(meta) - len(single)
    # melanoma sub-types are all the diagnosis text "melanoma", the target the ingest step derives from it
    assert ((recs["diagnosis"] == "melanoma") == (recs["target"] == 1)).all()
    assert set(recs["benign_malignant"]) <= {"benign", "malignant"}
    # the case's metadata that the toolkit does not know is carried, the label-carrying ones marked so
    extras = {e.name: e.models for e in found.extras}
    assert extras["management"] == extras["level_of_diagnostic_difficulty"] == "label"
    assert "case_num" not in extras  # it is lesion_id (ordered by diagnosis in the release: never a feature)


def test_derm7pt_keeps_the_official_split(tmp_path):
    written = _derm(tmp_path, n=15, test_fraction=0.4, valid_fraction=0.2)
    found, recs = _ingest(tmp_path)
    for w in written:
        row = recs.loc[w["image_name"]]
        assert row["split_official"] == w["split_official"]
        assert row["split"] == ("test" if w["split_official"] == "test" else "train")
    test = recs[recs["split"] == "test"]
    assert len(test) and test["target"].notna().all()  # the release labels its test cases: kept
    assert set(recs["split_official"]) == {"train", "valid", "test"}


def test_derm7pt_input_is_the_release_folder_or_its_parent(tmp_path):
    _derm(tmp_path / "parent", n=4)
    _derm(tmp_path / "flat", n=4, nested=False)
    for root in (tmp_path / "parent", tmp_path / "parent" / "release_v0", tmp_path / "flat"):
        assert layouts.detect(*fsutil.resolve(str(root))) == "derm7pt", root
    a, b = _ingest(tmp_path / "parent")[1], _ingest(tmp_path / "parent" / "release_v0")[1]
    assert a.index.tolist() == b.index.tolist()
    assert (a["rel_path"] == "release_v0/" + b["rel_path"]).all()


def test_derm7pt_file_names_come_from_the_listing(tmp_path):
    """``.jpg`` in meta.csv for a ``.JPG`` on disk: the file's real name wins; an exact match is case-sensitive."""
    _derm(tmp_path, n=3, single_view=0.0, nested=False)
    meta_path = tmp_path / "meta" / "meta.csv"
    meta = pd.read_csv(meta_path, dtype=str, keep_default_na=False)
    first = meta.loc[0, "clinic"]  # e.g. NEL/NEL000.JPG on disk
    meta.loc[0, "clinic"] = first[:-4] + ".jpg"
    meta.to_csv(meta_path, index=False)
    found, recs = _ingest(tmp_path)
    assert found.quarantine.empty
    real = Path(first).stem
    assert recs.loc[real, "rel_path"] == f"images/{first}" and recs.loc[real, "image_type"] == "clinical: close-up"


def test_derm7pt_a_stem_in_two_folders_pairs_the_row_with_its_own_file(tmp_path):
    """The rule for a repeated stem: the file the row names is used, the other is quarantined, nothing guessed."""
    _derm(tmp_path, n=2, single_view=0.0, nested=False)
    meta_path = tmp_path / "meta" / "meta.csv"
    meta = pd.read_csv(meta_path, dtype=str, keep_default_na=False)
    named = tmp_path / "images" / meta.loc[0, "derm"]
    other = tmp_path / "images" / "AAA" / named.name  # sorts before the named folder
    other.parent.mkdir()
    shutil.copy(tmp_path / "images" / meta.loc[1, "derm"], other)
    found, recs = _ingest(tmp_path)
    assert recs.loc[named.stem, "rel_path"] == f"images/{meta.loc[0, 'derm']}"
    q = found.quarantine.set_index("path")
    assert q.loc[f"images/AAA/{named.name}", "reason"] == "ambiguous_file"
    assert len(found.records) + len(found.quarantine) == 4 + 1
    # two cases naming one stem: neither is guessed, both rows are quarantined with the reason
    meta.loc[1, "derm"] = f"AAA/{named.name}"
    meta.to_csv(meta_path, index=False)
    found, _ = _ingest(tmp_path)
    reasons = found.quarantine.groupby("reason").size().to_dict()
    assert reasons == {"duplicate_name": 2, "ambiguous_file": 1, "no_metadata": 1}, found.quarantine
    assert sorted(found.records["image_type"]) == ["clinical: close-up"] * 2


def test_derm7pt_every_location_maps_to_a_2020_site():
    assert sorted(derm7pt.SITES) == DERM7PT_LOCATIONS
    for spelling in DERM7PT_LOCATIONS:
        assert ingest.SITE_MAP[spelling] in columns.SITES_2020, spelling


def test_derm7pt_malformed_inputs_fail_clearly_or_quarantine(tmp_path):
    _derm(tmp_path, n=4, nested=False, test_fraction=0.25, valid_fraction=0.25, single_view=0.0)
    meta_path, valid = tmp_path / "meta" / "meta.csv", tmp_path / "meta" / "valid_indexes.csv"
    meta = pd.read_csv(meta_path, dtype=str, keep_default_na=False)
    meta.drop(columns=["derm"]).to_csv(meta_path, index=False)
    with pytest.raises(InputError, match=r"meta\.csv needs the columns .*missing derm"):
        ingest.ingest([str(tmp_path)])
    meta.to_csv(meta_path, index=False)
    original = valid.read_text()
    valid.write_text(original + "4\n")
    with pytest.raises(InputError, match=r"valid_indexes\.csv line \d+: index 4 is out of range: meta\.csv has 4 "):
        ingest.ingest([str(tmp_path)])
    train = pd.read_csv(tmp_path / "meta" / "train_indexes.csv")["indexes"].tolist()
    valid.write_text(f"indexes\n{train[0]}\n")
    with pytest.raises(InputError, match="is listed in train_indexes.csv already"):
        ingest.ingest([str(tmp_path)])
    valid.write_text("indexes\nthree\n")
    with pytest.raises(InputError, match="'three' is not a row number"):
        ingest.ingest([str(tmp_path)])
    valid.write_text(original)
    meta.loc[1, "diagnosis"] = "pink nevus"
    meta.to_csv(meta_path, index=False)
    found = ingest.ingest([str(tmp_path)])
    q = found.quarantine
    bad = q[q["detail"].str.contains("pink nevus")]
    assert len(bad) == 2  # both images of the case
    assert (bad["reason"] == "invalid_metadata").all()
    assert bad["detail"].str.contains("'pink nevus' (meta.csv row 3) is not in the class vocabulary", regex=False).all()
    assert len(found.records) + len(q) == 8


def test_a_derm7pt_version_keeps_its_validation_set_as_the_last_fold_and_no_lesion_or_patient_spans_folds(tmp_path):
    """Through a tiny preprocessed version of both layouts together (slowest test here: a few seconds)."""
    from melanoma_data import build
    from melanoma_data.config import PreprocessConfig
    from melanoma_data.manifest import read_manifest
    from melanoma_data.validate import validate_version

    _derm(tmp_path / "derm7pt", n=14, test_fraction=0.3, valid_fraction=0.3)
    pad_ufes_20.write(tmp_path / "pad", n=12, seed=2, sizes=[(48, 36)])
    cfg = PreprocessConfig.from_dict({"square": {"size": 32}, "partition_size": 40,
                                      "shards": {"n_folds": 3, "train_files": 6, "test_files": 1, "tfrecord": False}})
    res = build.preprocess([str(tmp_path / "derm7pt"), str(tmp_path / "pad")], str(tmp_path / "out"), cfg, workers=0)
    assert validate_version(res.version_url)["counts"]["quarantined"] == 0
    frame = pd.read_parquet(Path(res.version_url) / "parquet")
    assert len(frame) == 12 + sum(1 for _ in (tmp_path / "derm7pt").rglob("*.[jJ][pP][gG]"))
    train = frame[frame["split"] == "train"]
    valid = train["split_official"] == "valid"
    assert valid.any() and (train.loc[valid, "fold"] == 2).all()  # the last of three folds …
    assert set(train.loc[~valid, "fold"]) == {0, 1}  # … and nothing else in it
    assert (frame[frame["split"] == "test"]["split_official"] == "test").all()
    assert (train.groupby("lesion_id")["fold"].nunique() == 1).all()
    pad = frame[frame["source"] == "pad-ufes-20"]
    assert len(pad) == 12 and (pad.groupby("patient_id")["fold"].nunique() == 1).all()
    assert pad["fitspatrick"].notna().any()
    manifest = read_manifest(*fsutil.resolve(res.version_url))
    assert {"fitspatrick", "split_official", "view_missing"}.isdisjoint(e.name for e in manifest.extras)


# ------------------------------------------------------------------------------ the fixed fold


def _plan_frame(seed: int = 0, n: int = 300) -> pd.DataFrame:
    """Rows with patients, lesions and lone images, a few melanomas (the shapes the fold assignment groups)."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 3, n)
    return pd.DataFrame({
        "image_name": [f"I{i:04d}" for i in range(n)],
        "patient_id": [f"P{i // 4}" if k == 0 else None for i, k in enumerate(kind)],
        "lesion_id": [f"L{i // 2}" if k == 1 else None for i, k in enumerate(kind)],
        "split": np.where(rng.random(n) < 0.2, "test", "train"),
        "target": pd.array((rng.random(n) < 0.15).astype(int), dtype="Int8"),
    })


def test_without_an_official_split_the_assignment_is_what_it_was():
    for seed in (0, 1):
        meta = _plan_frame(seed)
        dup = pd.Series(meta["image_name"].where(meta.index % 17 != 3, "I0003"))
        params = folds.ShardParams(train_files=8, n_folds=4)
        before = folds.assign_files(meta, params, dup)
        for blank in (pd.Series([None] * len(meta), dtype="str"), pd.Series([pd.NA] * len(meta), dtype="string")):
            after = folds.assign_files(meta.assign(split_official=blank), params, dup)
            pd.testing.assert_frame_equal(before, after)
        # an official split without a validation part changes nothing either
        other = meta.assign(split_official=np.where(meta["split"] == "test", "test", "train"))
        pd.testing.assert_frame_equal(before, folds.assign_files(other, params, dup))


def test_the_official_validation_rows_are_the_last_fold_alone_and_groups_stay_whole():
    meta = _plan_frame(3)
    valid = (meta.index % 5 == 0) & (meta["split"] == "train")
    meta["split_official"] = np.where(valid, "valid", np.where(meta["split"] == "test", "test", "train"))
    plan = folds.assign_files(meta, folds.ShardParams(train_files=10, n_folds=5))
    f = meta.assign(fold=plan["fold"], file=plan["file"])
    train = f[f["split"] == "train"]
    keys = folds._group_keys(train)
    fixed = keys.isin(keys[train["split_official"] == "valid"])  # a valid row's patient or lesion goes with it
    assert (train.loc[fixed, "fold"] == 4).all() and (train.loc[~fixed, "fold"] != 4).all()
    assert sorted(train["fold"].unique()) == [0, 1, 2, 3, 4]
    assert (train.groupby(keys)["fold"].nunique() == 1).all()
    assert f[f["split"] == "test"]["fold"].isna().all()
    # every train row official validation: nothing to keep apart, the ordinary assignment
    every = meta[meta["split"] == "train"].assign(split_official="valid")
    pd.testing.assert_frame_equal(folds.assign_files(every, folds.ShardParams()),
                                  folds.assign_files(every.drop(columns="split_official"), folds.ShardParams()))


# ------------------------------------------------------------------------------ PAD-UFES-20


def test_pad_writer_writes_the_published_metadata(tmp_path):
    written = pad_ufes_20.write(tmp_path, n=14, seed=4, sizes=[(48, 36)])
    assert _header(tmp_path / "metadata.csv") == PAD_HEADER
    meta = pd.read_csv(tmp_path / "metadata.csv", dtype=str, keep_default_na=False)
    assert len(meta) == len(written) == 14 and meta["img_id"].str.fullmatch(r"PAT_\d+_\d+_\d+\.png").all()
    assert set(meta["gender"]) <= {"FEMALE", "MALE", ""} and set(meta["diagnostic"]) <= set(
        vocabulary.CODES["pad-ufes-20"])
    assert set(meta["region"]) <= set(PAD_REGIONS)
    assert set(meta["itch"]) <= {"True", "False", "UNK"}
    assert meta["fitspatrick"].isin(["", "1.0", "2.0", "3.0", "4.0", "5.0", "6.0"]).all()
    assert {Path(w["rel_path"]).parts[0] for w in written} <= {"imgs_part_1", "imgs_part_2", "imgs_part_3"}


def test_pad_reads_nested_folders_its_own_columns_and_unique_lesions(tmp_path):
    pad_ufes_20.write(tmp_path, n=9, seed=5, sizes=[(48, 36)])
    moved = next((tmp_path / "imgs_part_1").glob("*.png"))  # one more nesting: images/imgs_part_1/
    (tmp_path / "images" / "imgs_part_1").mkdir(parents=True)
    moved.rename(tmp_path / "images" / "imgs_part_1" / moved.name)
    meta_path = tmp_path / "metadata.csv"
    meta = pd.read_csv(meta_path, dtype=str, keep_default_na=False)
    meta.loc[0, "fitspatrick"], meta.loc[0, "gender"] = "2.0", "FEMALE"
    meta.loc[1, "gender"] = "UNK"
    meta.loc[len(meta) - 1, "lesion_id"] = meta.loc[0, "lesion_id"]  # a lesion number another patient has too
    meta.to_csv(meta_path, index=False)
    found, recs = _ingest(tmp_path)
    assert found.layouts == ["pad-ufes-20"] and found.quarantine.empty, found.quarantine
    assert recs.loc[moved.stem, "rel_path"] == f"images/imgs_part_1/{moved.name}"
    assert any(p.startswith("imgs_part_3/imgs_part_3/") for p in recs["rel_path"])
    first, last = meta.loc[0], meta.loc[len(meta) - 1]
    row = recs.loc[Path(first["img_id"]).stem]
    assert row["fitspatrick"] == 2.0 and row["sex"] == "female" and row["age_approx"] == float(first["age"])
    assert pd.isna(recs.loc[Path(meta.loc[1, "img_id"]).stem, "sex"])
    assert row["lesion_id"] == f"{first['patient_id']}_{first['lesion_id']}"
    if last["patient_id"] != first["patient_id"]:
        assert recs.loc[Path(last["img_id"]).stem, "lesion_id"] != row["lesion_id"]
    assert row["diagnosis_original"] == first["diagnostic"]
    assert row["diagnosis"] == vocabulary.CODES["pad-ufes-20"][first["diagnostic"]]
    assert row["anatom_site_detailed"] == first["region"].lower()
    extras = {e.name: e.models for e in found.extras}
    assert "fitspatrick" not in extras and "gender" not in extras and extras["biopsed"] == "label"
    assert {"smoke", "itch", "diameter_1"} <= set(extras)
    assert layouts.get("pad-ufes-20").image_type == "clinical: close-up"
    assert layouts.get("pad-ufes-20").licence == "CC BY 4.0"


def test_pad_every_region_maps_to_a_2020_site():
    assert sorted(s.upper() for s in pad_ufes_20.SITES) == PAD_REGIONS
    for spelling in PAD_REGIONS:
        assert ingest.SITE_MAP[spelling.lower()] in columns.SITES_2020, spelling


def test_pad_malformed_inputs_fail_clearly_or_quarantine(tmp_path):
    pad_ufes_20.write(tmp_path, n=4, seed=6, sizes=[(48, 36)])
    meta_path = tmp_path / "metadata.csv"
    meta = pd.read_csv(meta_path, dtype=str, keep_default_na=False)
    meta.drop(columns=["patient_id"]).to_csv(meta_path, index=False)
    with pytest.raises(InputError, match=r"metadata\.csv needs the columns .*missing patient_id"):
        ingest.ingest([str(tmp_path)], layout="pad-ufes-20")
    meta.loc[0, "diagnostic"], meta.loc[1, "diagnostic"], meta.loc[2, "gender"] = "XYZ", "", "OTHER"
    meta.to_csv(meta_path, index=False)
    found = ingest.ingest([str(tmp_path)])
    q = found.quarantine.set_index("image_name")
    names = [Path(n).stem for n in meta["img_id"]]
    assert (q.loc[names[:3], "reason"] == "invalid_metadata").all()
    assert "'XYZ' (metadata.csv row 2) is not in the class vocabulary" in q.loc[names[0], "detail"]
    assert "no PAD-UFES-20 diagnostic (metadata.csv row 3)" in q.loc[names[1], "detail"]
    assert "sex='other'" in q.loc[names[2], "detail"]
    assert found.records["image_name"].tolist() == [names[3]]
