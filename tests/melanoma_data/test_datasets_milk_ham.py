"""The MILK10k (ISIC 2025) and HAM10000 layouts: the writers' files as released, how each shape is read, and what
a malformed copy gives (the generic round trip of every layout is in test_layouts.py)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pandas as pd
import pytest

from melanoma_data import columns, fsutil, ingest, layouts, vocabulary
from melanoma_data.errors import InputError
from melanoma_data.layouts import ham10000, milk10k

TINY = {"sizes": [(48, 36)], "defects": 0.0}


def _header(path: Path) -> list[str]:
    with open(path, newline="") as fh:
        return next(csv.reader(fh))


def _read(root: Path):
    found = ingest.ingest([str(root)])
    return found, found.records.set_index("image_name")


# ------------------------------------------------------------------------------------------ MILK10k


@pytest.fixture(scope="module")
def milk(tmp_path_factory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("milk") / "in"
    return root, milk10k.write(root, n=10, seed=5, melanoma_rate=0.4, test_lesions=2, one_view=1, **TINY)


def test_the_milk10k_writer_writes_the_published_headers_and_one_hot_cells(milk):
    root, _ = milk
    assert _header(root / "MILK10k_Training_Metadata.csv") == [
        "lesion_id", "image_type", "isic_id", "attribution", "copyright_license", "image_manipulation", "age_approx",
        "sex", "skin_tone_class", "site", "MONET_ulceration_crust", "MONET_hair", "MONET_vasculature_vessels",
        "MONET_erythema", "MONET_pigmented", "MONET_gel_water_drop_fluid_dermoscopy_liquid",
        "MONET_skin_markings_pen_ink_purple_pen"]
    assert _header(root / "MILK10k_Test_Metadata.csv") == _header(root / "MILK10k_Training_Metadata.csv")
    assert _header(root / "MILK10k_Training_Supplement.csv") == [
        "isic_id", "diagnosis_full", "diagnosis_confirm_type", "invasion_thickness_interval"]
    gt = pd.read_csv(root / "MILK10k_Training_GroundTruth.csv", dtype=str)
    assert list(gt.columns) == ["lesion_id", "AKIEC", "BCC", "BEN_OTH", "BKL", "DF", "INF", "MAL_OTH", "MEL", "NV",
                                "SCCKA", "VASC"]
    cells = gt.drop(columns="lesion_id")
    assert set(cells.to_numpy().ravel()) == {"0.0", "1.0"} and (cells == "1.0").sum(axis=1).eq(1).all()
    meta = pd.read_csv(root / "MILK10k_Training_Metadata.csv", dtype=str)
    assert set(meta["image_type"]) == {"clinical: close-up", "dermoscopic"}
    for _, r in meta.iterrows():  # <lesion_id>/<isic_id>.jpg
        assert (root / "MILK10k_Training_Input" / r["lesion_id"] / f"{r['isic_id']}.jpg").is_file()


def test_each_image_carries_its_lesions_class_and_the_test_part_is_unlabelled(milk):
    root, written = milk
    found, recs = _read(root)
    assert found.layouts == ["milk10k"] and found.quarantine.empty
    gt = pd.read_csv(root / "MILK10k_Training_GroundTruth.csv").set_index("lesion_id")
    classes = gt.idxmax(axis=1)
    train = recs[recs["split"] == "train"]
    assert len(train) == sum(w["split"] == "train" for w in written)
    for name, row in train.iterrows():
        cls = classes[row["lesion_id"]]
        assert row["diagnosis_2025"] == row["diagnosis_original"] == cls, name
        assert vocabulary.class_2025(row["diagnosis"]) == cls, name
        assert row["benign_malignant"] == ("malignant" if cls in vocabulary.MALIGNANT_2025 else "benign"), name
        assert row["target"] == int(cls == "MEL"), name
    assert train.groupby("lesion_id")["diagnosis_2025"].nunique().eq(1).all()  # both views, one class
    test = recs[recs["split"] == "test"]
    assert len(test) == 4 and test["target"].isna().all() and test["diagnosis"].isna().all()
    assert test["diagnosis_2025"].isna().all() and test["lesion_id"].notna().all()
    assert found.target["definition"] == "melanoma"
    assert {"diagnosis_full", "invasion_thickness_interval"} <= {e.name for e in found.extras if e.models == "label"}


def test_a_lesion_with_one_view_is_kept_and_flagged(milk):
    root, written = milk
    _, recs = _read(root)
    lone = [w for w in written if w["view_missing"]]
    assert len(lone) == 1
    row = recs.loc[lone[0]["image_name"]]
    assert row["image_type"] == "dermoscopic" and row["view_missing"] == "clinical: close-up"
    assert (recs["lesion_id"] == lone[0]["lesion_id"]).sum() == 1
    assert recs.drop(index=lone[0]["image_name"])["view_missing"].isna().all()


def test_a_view_whose_file_is_lost_flags_the_other_and_quarantines_its_row(tmp_path):
    written = milk10k.write(tmp_path, n=4, seed=2, test_lesions=0, **TINY)
    gone = next(w for w in written if w["image_type"] == "clinical: close-up")
    (tmp_path / gone["rel_path"]).unlink()
    found, recs = _read(tmp_path)
    assert list(found.quarantine["reason"]) == ["missing_file"]
    other = next(w for w in written if w["lesion_id"] == gone["lesion_id"] and w is not gone)
    assert recs.loc[other["image_name"], "view_missing"] == "clinical: close-up"


def test_both_zip_shapes_are_detected_and_read_alike(tmp_path):
    flat = milk10k.write(tmp_path / "flat", n=4, seed=9, **TINY)
    nested = milk10k.write(tmp_path / "nested", n=4, seed=9, nested=True, **TINY)
    assert nested[0]["rel_path"].startswith("MILK10k_Training_Input/MILK10k_Training_Input/")
    assert [w["image_name"] for w in flat] == [w["image_name"] for w in nested]
    frames = []
    for shape in ("flat", "nested"):
        assert layouts.detect(*fsutil.resolve(str(tmp_path / shape))) == "milk10k"
        found, recs = _read(tmp_path / shape)
        assert found.quarantine.empty
        frames.append(recs.drop(columns=["path", "rel_path", "source"]))
    pd.testing.assert_frame_equal(*frames)


def _rewrite(path: Path, change) -> None:
    """Rewrite a CSV through ``change`` (which edits the frame in place or returns a new one)."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    out = change(frame)
    (frame if out is None else out).to_csv(path, index=False)


def test_ground_truth_that_is_not_one_hot_quarantines_the_lesion_with_its_reason(tmp_path):
    written = milk10k.write(tmp_path, n=6, seed=4, test_lesions=0, **TINY)
    lesions = sorted({w["lesion_id"] for w in written})

    def spoil(gt):
        gt.loc[gt["lesion_id"] == lesions[0], ["MEL", "NV"]] = "1.0"  # two classes
        gt.loc[gt["lesion_id"] == lesions[1], list(vocabulary.CLASSES_2025)] = "0.0"  # none
        return gt[gt["lesion_id"] != lesions[2]]  # no row

    _rewrite(tmp_path / "MILK10k_Training_GroundTruth.csv", spoil)
    found, _ = _read(tmp_path)
    assert found.records.empty
    q = found.quarantine
    assert len(q) == len(written) and set(q["reason"]) == {"invalid_metadata"}
    by_lesion = {w["image_name"]: w["lesion_id"] for w in written}
    for name, detail in zip(q["image_name"], q["detail"], strict=True):
        lesion = by_lesion[name]
        expected = {lesions[0]: "is not one-hot: MEL, NV set", lesions[1]: "is not one-hot: no class set",
                    lesions[2]: "has no row in MILK10k_Training_GroundTruth.csv"}[lesion]
        assert f"{lesion} {expected}" in detail, detail


def test_a_ground_truth_cell_that_is_not_a_number_quarantines_its_lesion(tmp_path):
    written = milk10k.write(tmp_path, n=4, seed=4, test_lesions=0, **TINY)
    lesion = written[0]["lesion_id"]

    def not_a_number(gt):
        gt.loc[gt["lesion_id"] == lesion, "VASC"] = "yes"

    _rewrite(tmp_path / "MILK10k_Training_GroundTruth.csv", not_a_number)
    found, _ = _read(tmp_path)
    assert all("VASC='yes', not 0.0 or 1.0" in d for d in found.quarantine["detail"])
    assert set(found.quarantine["image_name"]) == {w["image_name"] for w in written if w["lesion_id"] == lesion}


def test_a_missing_ground_truth_column_or_file_is_a_clear_error(tmp_path):
    milk10k.write(tmp_path, n=4, seed=4, test_lesions=0, **TINY)
    gt = tmp_path / "MILK10k_Training_GroundTruth.csv"
    _rewrite(gt, lambda f: f.drop(columns=["SCCKA"]))
    with pytest.raises(InputError, match="lacks column.s. SCCKA"):
        ingest.ingest([str(tmp_path)])
    gt.unlink()
    with pytest.raises(InputError, match="without MILK10k_Training_GroundTruth.csv"):
        ingest.ingest([str(tmp_path)])


# ------------------------------------------------------------------------------------------ HAM10000


def test_ham10000_reads_the_csv_and_the_tab_metadata_as_the_same_rows(tmp_path):
    ham10000.write(tmp_path / "csv", n=8, seed=6, test_n=0, **TINY)
    ham10000.write(tmp_path / "tab", n=8, seed=6, test_n=0, tab=True, **TINY)
    assert (tmp_path / "tab" / "HAM10000_metadata.tab").read_text().splitlines()[0] == "\t".join(
        ham10000.METADATA_COLUMNS)
    frames, hashes = [], []
    for kind in ("csv", "tab"):
        assert layouts.detect(*fsutil.resolve(str(tmp_path / kind))) == "ham10000"
        found, recs = _read(tmp_path / kind)
        assert found.quarantine.empty and len(recs) == 8
        frames.append(recs.drop(columns=["path"]))
        hashes.append({r for *_, r in found.listing if r})
    pd.testing.assert_frame_equal(*frames)
    assert all(len(h) == 1 for h in hashes) and hashes[0] != hashes[1]  # each file's own content hash
    recs = frames[0]
    assert set(recs["diagnosis_original"]) <= set(vocabulary.CODES["ham10000"])
    assert (recs["diagnosis"] == recs["diagnosis_original"].map(vocabulary.CODES["ham10000"])).all()
    assert (recs["target"] == (recs["diagnosis"] == "melanoma").astype(int)).all()
    assert recs["lesion_id"].str.startswith("HAM_").all() and (recs["split"] == "train").all()
    assert {e.name: e.models for e in found.extras} == {"dx_type": "label", "dataset": "feature"}


def test_a_metadata_file_without_an_extension_is_sniffed_too(tmp_path):
    written = ham10000.write(tmp_path, n=3, seed=6, test_n=0, tab=True, **TINY)
    (tmp_path / "HAM10000_metadata.tab").rename(tmp_path / "HAM10000_metadata")  # as Dataverse may serve it
    found, recs = _read(tmp_path)
    assert found.quarantine.empty and sorted(recs.index) == sorted(w["image_name"] for w in written)


def test_images_still_in_their_zips_are_a_clear_error(tmp_path):
    for name, zipped in (("milk10k", "MILK10k_Training_Input"), ("ham10000", "HAM10000_images_part_1")):
        root = tmp_path / name
        layouts.get(name).write(root, n=2, seed=1, **TINY)
        for folder in [p for p in root.iterdir() if p.is_dir()]:
            shutil.rmtree(folder)
        (root / f"{zipped}.zip").write_bytes(b"PK\x05\x06" + bytes(18))
        assert layouts.detect(*fsutil.resolve(str(root))) == name
        with pytest.raises(InputError, match=f"still zipped .{zipped}.zip.; unzip them here first"):
            ingest.ingest([str(root)])


def test_a_tab_metadata_keeps_the_csv_readers_checks(tmp_path, monkeypatch):
    ham10000.write(tmp_path, n=2, seed=6, test_n=0, tab=True, **TINY)
    meta = tmp_path / "HAM10000_metadata.tab"
    text = meta.read_bytes()
    monkeypatch.setenv("MELANOMA_MAX_CSV_COLUMNS", "5")
    with pytest.raises(InputError, match="more than 5 columns"):
        ingest.ingest([str(tmp_path)])
    monkeypatch.delenv("MELANOMA_MAX_CSV_COLUMNS")
    meta.write_bytes(text + b"HAM_9\tISIC_9\tmel\thisto\t50.0\tmale\tback\t\xff\n")
    with pytest.raises(InputError, match=r"cannot decode as utf-8 \(byte 0xff at offset \d+\)"):
        ingest.ingest([str(tmp_path)])


@pytest.mark.parametrize("schema", ["metadata", "onehot"])
def test_the_2018_test_ground_truth_labels_the_test_rows_in_either_schema(tmp_path, schema):
    written = ham10000.write(tmp_path, n=4, seed=8, test_n=3, test_truth=schema, **TINY)
    if schema == "onehot":  # as the challenge's zip unpacks: in a folder of its name
        (tmp_path / ham10000.TEST_TRUTH).mkdir()
        name = f"{ham10000.TEST_TRUTH}.csv"
        (tmp_path / name).rename(tmp_path / ham10000.TEST_TRUTH / name)
    found, recs = _read(tmp_path)
    assert found.quarantine.empty
    test = [w for w in written if w["split"] == "test"]
    assert [w["rel_path"].split("/")[0] for w in test] == ["ISIC2018_Task3_Test_Images"] * 3
    for w in test:
        row = recs.loc[w["image_name"]]
        code = w["dx"] if schema == "metadata" else w["dx"].upper()
        assert row["split"] == "test" and row["target"] == w["target"]
        assert row["diagnosis_original"] == code and row["diagnosis"] == vocabulary.CODES["ham10000"][w["dx"]]
        assert row["diagnosis_2025"] == vocabulary.class_2025(row["diagnosis"])
        assert row["benign_malignant"] == vocabulary.benign_malignant(row["diagnosis"])


def test_test_images_without_their_ground_truth_are_unlabelled_test_rows(tmp_path):
    written = ham10000.write(tmp_path, n=3, seed=8, test_n=2, **TINY)
    found, recs = _read(tmp_path)
    assert found.quarantine.empty
    test = recs.loc[[w["image_name"] for w in written if w["split"] == "test"]]
    assert (test["split"] == "test").all() and test["target"].isna().all()


def test_unknown_codes_and_broken_one_hot_rows_are_quarantined_with_their_reason(tmp_path):
    written = ham10000.write(tmp_path, n=4, seed=3, test_n=2, test_truth="onehot", **TINY)
    train = [w["image_name"] for w in written if w["split"] == "train"]
    test = [w["image_name"] for w in written if w["split"] == "test"]

    def unknown_code(meta):
        meta.loc[meta["image_id"] == train[0], "dx"] = "xyz"

    def two_classes(truth):
        truth.loc[truth["image"] == test[0], ["MEL", "NV"]] = "1.0"

    _rewrite(tmp_path / "HAM10000_metadata.csv", unknown_code)
    _rewrite(tmp_path / "ISIC2018_Task3_Test_GroundTruth.csv", two_classes)
    found, recs = _read(tmp_path)
    q = found.quarantine.set_index("image_name")
    assert set(q.index) == {train[0], test[0]} and set(q["reason"]) == {"invalid_metadata"}
    assert "diagnosis code 'xyz' is not in the ham10000 vocabulary" in q.loc[train[0], "detail"]
    assert f"the ground truth of {test[0]} is not one-hot (MEL=1.0, NV=1.0)" in q.loc[test[0], "detail"]
    assert len(recs) == len(written) - 2


def test_ham10000_tables_without_their_key_columns_are_clear_errors(tmp_path):
    ham10000.write(tmp_path, n=2, seed=3, test_n=1, test_truth="onehot", **TINY)
    truth = tmp_path / "ISIC2018_Task3_Test_GroundTruth.csv"
    _rewrite(truth, lambda f: f.drop(columns=["VASC"]))
    with pytest.raises(InputError, match="ground truth lacks column.s. VASC"):
        ingest.ingest([str(tmp_path)])
    truth.unlink()
    _rewrite(tmp_path / "HAM10000_metadata.csv", lambda f: f.drop(columns=["dx"]))
    with pytest.raises(InputError, match="metadata lacks column.s. dx"):
        ingest.ingest([str(tmp_path)])
    (tmp_path / "HAM10000_metadata.tab").write_text("lesion_id\timage_id\tdx\n")
    with pytest.raises(InputError, match="several metadata files"):
        ingest.ingest([str(tmp_path)])


# ------------------------------------------------------------------------------------------ both


def test_every_site_spelling_of_both_datasets_maps_into_the_2020_vocabulary():
    for spellings in (ham10000.SITES, milk10k.SITES):
        for spelling in spellings:
            assert ingest.SITE_MAP[spelling] in (*columns.SITES_2020, ""), spelling
    assert set(ham10000.SITES) == {"abdomen", "acral", "back", "chest", "ear", "face", "foot", "genital", "hand",
                                   "lower extremity", "neck", "scalp", "trunk", "unknown", "upper extremity"}
    assert set(milk10k.SITES) == {"foot", "genital", "hand", "head_neck_face", "lower_extremity", "trunk",
                                  "upper_extremity"}


def test_detection_order_keeps_the_two_shapes_before_the_generic_readers(tmp_path):
    names = layouts.names()
    for name in ("milk10k", "ham10000"):
        assert names.index(name) < names.index("isic-cli") < names.index("generic")
    milk10k.write(tmp_path / "m", n=2, seed=1, test_lesions=0, **TINY)  # its CSVs name images by isic_id
    assert layouts.detect(*fsutil.resolve(str(tmp_path / "m"))) == "milk10k"
    for other in ("kaggle2020", "isic2019", "isic-cli", "generic"):
        layouts.get(other).write(tmp_path / other, n=2, seed=1, sizes=[(48, 36)], defects=0.0)
        assert layouts.detect(*fsutil.resolve(str(tmp_path / other))) == other


@pytest.mark.parametrize("name", ["milk10k", "ham10000"])
def test_a_preprocessed_version_never_splits_a_lesion_across_folds(tmp_path, name):
    from melanoma_data import build
    from melanoma_data.config import PreprocessConfig

    options = ({"one_view": 1, "test_lesions": 0} if name == "milk10k" else {"images_per_lesion": 2.5, "test_n": 0})
    layouts.get(name).write(tmp_path / "in", n=16, seed=11, melanoma_rate=0.4, **TINY, **options)
    cfg = PreprocessConfig.from_dict({"square": {"size": 32}, "partition_size": 40,
                                      "shards": {"n_folds": 4, "train_files": 4, "test_files": 1}})
    version = build.preprocess([str(tmp_path / "in")], str(tmp_path / "out"), cfg).version_url
    frame = pd.read_parquet(Path(version) / "parquet", columns=["image_name", "lesion_id", "fold", "split"])
    assert len(frame) == 16 - (1 if name == "milk10k" else 0)
    assert frame["lesion_id"].notna().all() and frame["fold"].nunique() > 1
    per_lesion = frame.groupby("lesion_id")["fold"].nunique()
    assert (per_lesion == 1).all(), per_lesion[per_lesion > 1]
    assert (frame.groupby("lesion_id").size() > 1).any()  # some lesion has several images to keep together
