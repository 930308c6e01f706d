"""Shards for training and reuse: TFRecords read by TensorFlow, folds, near-duplicates, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from melanoma_data import build, folds, synth, tfrecord
from melanoma_data.config import PreprocessConfig
from melanoma_data.dataset import open_dataset
from melanoma_data.ops._cv import cv2
from melanoma_data.validate import validate_version
from tests.conftest import write_generic

CFG = PreprocessConfig.from_dict({"square": {"size": 64}, "partition_size": 7,
                                  "shards": {"train_files": 6, "test_files": 2, "n_folds": 3}})

#: The parser the 2020 community notebooks used (Chris Deotte's "triple stratified" TFRecords).
COMMUNITY_TRAIN = ["image", "image_name", "patient_id", "sex", "age_approx", "anatom_site_general_challenge",
                   "diagnosis", "target"]


@pytest.fixture(scope="module")
def version(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("shards")
    synth.write_dataset(root / "in", n=48, layout="kaggle2020", seed=11, sizes=[(320, 240), (400, 300)],
                        defects=0.3, melanoma_rate=0.25, test_fraction=0.25, images_per_patient=3.0)
    return build.preprocess([str(root / "in")], str(root / "out"), CFG).version_url


@pytest.mark.slow
def test_tfrecords_read_by_tensorflow_match_the_parquet_shards(version):
    tf = pytest.importorskip("tensorflow")
    ds = open_dataset(version)
    meta = ds.metadata().set_index("image_name")
    enc = ds.encodings
    int64 = tf.io.FixedLenFeature([], tf.int64)
    train_spec = {"image": tf.io.FixedLenFeature([], tf.string), "image_name": tf.io.FixedLenFeature([], tf.string),
                  **{k: int64 for k in COMMUNITY_TRAIN[2:]}}
    test_spec = {k: v for k, v in train_spec.items() if k not in ("diagnosis", "target")}
    parquet_images = {}
    for url in ds.files("parquet"):
        frame = pd.read_parquet(url, columns=["image_name", "image"])
        parquet_images.update(zip(frame["image_name"], frame["image"], strict=True))
    seen = []
    for entry in ds.manifest["tfrecords"]:
        name = Path(entry["path"]).name
        split = entry["split"]
        assert name == f"{entry['file']}-{entry['rows']}.tfrec"
        spec = train_spec if split == "train" else test_spec
        records = list(tf.data.TFRecordDataset(f"{version}/{entry['path']}"))  # CRCs checked by TF
        assert len(records) == entry["rows"]
        for raw in records:
            ex = {k: v.numpy() for k, v in tf.io.parse_single_example(raw, spec).items()}
            image_name = ex["image_name"].decode()
            row = meta.loc[image_name]
            seen.append(image_name)
            assert ex["image"] == parquet_images[image_name]
            assert ex["patient_id"] == enc["patient_id"][row["patient_id"]]
            assert ex["sex"] == (enc["sex"][row["sex"]] if pd.notna(row["sex"]) else -1)
            assert ex["age_approx"] == (int(row["age_approx"]) if pd.notna(row["age_approx"]) else -1)
            site = row["anatom_site_general_challenge"]
            assert ex["anatom_site_general_challenge"] == (enc["anatom_site_general_challenge"][site]
                                                           if pd.notna(site) else -1)
            assert row["fold"] == entry["fold"] if split == "train" else pd.isna(row["fold"])
            if split == "train":
                assert ex["target"] == row["target"]
                assert ex["diagnosis"] == enc["diagnosis"][row["diagnosis"]]
            decoded = tf.io.decode_jpeg(ex["image"]).numpy()
            assert decoded.shape == (64, 64, 3)
            # test records carry no label at all
            keys = set(tfrecord.decode_example(raw.numpy()))
            assert ("target" in keys) == (split == "train")
            assert {"width", "height"} <= keys
    assert sorted(seen) == sorted(meta.index)


def test_tfrecord_crc_damage_is_detected(version, tmp_path):
    tf = pytest.importorskip("tensorflow")
    entry = open_dataset(version).manifest["tfrecords"][0]
    blob = bytearray(Path(version, entry["path"]).read_bytes())
    blob[40] ^= 0xFF
    bad = tmp_path / "bad.tfrec"
    bad.write_bytes(bytes(blob))
    with pytest.raises(tfrecord.CorruptRecord):
        tfrecord.read_file(bytes(blob))
    with pytest.raises(tf.errors.DataLossError):
        list(tf.data.TFRecordDataset(str(bad)))


def test_folds_keep_patients_whole_and_are_balanced(version):
    ds = open_dataset(version)
    meta = ds.metadata()
    train = meta[meta["split"] == "train"]
    assert train["fold"].notna().all() and meta.loc[meta["split"] == "test", "fold"].isna().all()
    assert (train.groupby("patient_id")["fold"].nunique() == 1).all()
    assert (meta.groupby("duplicate_group")["fold"].nunique(dropna=False) == 1).all()
    assert sorted(train["fold"].unique()) == [0, 1, 2]
    # balanced as far as whole patients allow: melanomas and images per fold differ by at most what one
    # patient (twice, as a fold is two files here) can tip
    per_patient = train.groupby("patient_id").agg(pos=("target", "sum"), n=("image_name", "size"))
    pos, n_img = train.groupby("fold")["target"].sum(), train.groupby("fold").size()
    assert pos.sum() >= 6 and pos.max() - pos.min() <= max(1, int(per_patient["pos"].max()))
    assert n_img.max() - n_img.min() <= 2 * int(per_patient["n"].max())
    pic = meta.groupby("patient_id")["image_name"].transform("size")
    assert (meta["patient_image_count"] == pic).all()
    # each file holds whole patients
    entries = {e["file"]: e for e in ds.manifest["shards"]}
    owner = {}
    for key in entries:
        for p in pd.read_parquet(f"{version}/{entries[key]['path']}", columns=["patient_id"])["patient_id"]:
            assert owner.setdefault(p, key) == key


def _community_like(seed: int = 0) -> pd.DataFrame:
    """Metadata shaped like the 2020 training set: 2,056 patients, ~33k images, 584 melanomas."""
    rng = np.random.default_rng(seed)
    sizes = np.clip(rng.lognormal(2.5, 0.6, 2056).astype(int), 1, 115)
    sizes = (sizes * 33126 / sizes.sum()).round().astype(int).clip(1)
    patient = np.repeat([f"IP_{i:07d}" for i in range(len(sizes))], sizes)
    meta = pd.DataFrame({"image_name": [f"ISIC_{i:07d}" for i in range(len(patient))], "patient_id": patient,
                         "split": "train", "target": 0})
    sick = rng.choice(len(sizes), 428, replace=False)
    first = meta.groupby("patient_id").head(1).set_index("patient_id")
    idx = list(first.loc[[f"IP_{i:07d}" for i in sick], "image_name"].index)
    meta.loc[meta["patient_id"].isin(idx) & meta["image_name"].isin(first["image_name"]), "target"] = 1
    pool = meta.index[meta["patient_id"].isin(idx) & (meta["target"] == 0)]
    meta.loc[rng.choice(pool, 584 - 428, replace=False), "target"] = 1
    meta["target"] = meta["target"].astype("Int8")
    return meta


def test_triple_stratification_matches_the_community_recipe():
    meta = _community_like()
    plan = folds.assign_files(meta, folds.ShardParams())
    f = meta.assign(file=plan["file"], fold=plan["fold"])
    per = f.groupby("file").agg(images=("image_name", "size"), mel=("target", "sum"),
                                patients=("patient_id", "nunique"))
    assert len(per) == 15
    assert per["images"].between(2190, 2210).all(), per
    assert per["mel"].between(38, 40).all(), per
    assert per["patients"].between(130, 145).all(), per
    assert (f.groupby("patient_id")["file"].nunique() == 1).all()
    # the images-per-patient mix is the same in every file
    big = f.groupby(["file", "patient_id"]).size().groupby("file").apply(lambda s: (s >= 30).sum())
    assert big.max() - big.min() <= 2
    assert sorted(plan["fold"].unique()) == [0, 1, 2, 3, 4]
    # deterministic for a seed, different for another
    again = folds.assign_files(meta, folds.ShardParams())
    assert again["file"].equals(plan["file"])
    other = folds.assign_files(meta, folds.ShardParams(seed=7))
    assert not other["file"].equals(plan["file"])


def test_rows_without_patient_group_by_lesion_then_alone():
    meta = pd.DataFrame({
        "image_name": [f"I{i}" for i in range(8)],
        "patient_id": [None, None, None, None, "P1", "P1", None, None],
        "lesion_id": ["L1", "L1", "L1", "L2", None, None, None, None],
        "split": "train", "target": pd.array([0, 0, 1, 0, 0, 1, 0, 0], dtype="Int8"),
    })
    plan = folds.assign_files(meta, folds.ShardParams(train_files=4, n_folds=4))
    assert plan["file"].iloc[0] == plan["file"].iloc[1] == plan["file"].iloc[2]
    assert plan["file"].iloc[4] == plan["file"].iloc[5]
    assert (plan["patient_image_count"] == [1, 1, 1, 1, 2, 2, 1, 1]).all()
    dup = pd.Series(["I0", "I0", "I0", "I3", "P", "P", "I3", "I7"])  # I6 is a near-duplicate of I3
    plan = folds.assign_files(meta, folds.ShardParams(train_files=4, n_folds=4), dup)
    assert plan["file"].iloc[3] == plan["file"].iloc[6]


def _variants(img: np.ndarray) -> dict[str, bytes]:
    h, w = img.shape[:2]
    dy, dx = int(h * 0.02), int(w * 0.02)
    return {
        "q60": cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 60])[1].tobytes(),
        "half": cv2.imencode(".jpg", cv2.resize(img, (w // 2, h // 2), interpolation=cv2.INTER_AREA))[1].tobytes(),
        "crop": cv2.imencode(".jpg", img[dy:, dx : w - dx // 2])[1].tobytes(),
    }


@pytest.mark.slow
def test_near_duplicates_found_across_edits_and_not_confused(sample_dir, tmp_path):
    meta = pd.read_csv(sample_dir / "metadata.csv", dtype=str, keep_default_na=False)
    names = meta["image_name"].tolist()
    files, rows = {}, []
    copied = names[:10]
    for name in names:
        data = (sample_dir / "images" / f"{name}.jpg").read_bytes()
        files[name] = data
        rows.append({"image_name": name, "target": 0})
        if name in copied:
            for kind, blob in _variants(cv2.imread(str(sample_dir / "images" / f"{name}.jpg"))).items():
                files[f"{name}_{kind}"] = blob
                rows.append({"image_name": f"{name}_{kind}", "target": 0})
    root = write_generic(tmp_path / "in", files, rows)
    cfg = PreprocessConfig.from_dict({"square": {"size": 128}, "partition_size": 40})
    res = build.preprocess([str(root)], str(tmp_path / "out"), cfg)
    out = open_dataset(res.version_url).metadata()
    group = dict(zip(out["image_name"], out["duplicate_group"], strict=True))
    for name in copied:
        for kind in ("q60", "half", "crop"):
            assert group[f"{name}_{kind}"] == group[name] == name, (name, kind)
    originals = out[~out["image_name"].str.contains("_", regex=False) | out["image_name"].isin(names)]
    originals = originals[originals["image_name"].isin(names)]
    shared = originals.groupby("duplicate_group").size()
    assert (shared == 1).all(), shared[shared > 1]  # 89 different lesions, none confused
    assert res.manifest["duplicates"]["groups"] == len(copied)

    # drop_duplicates keeps the original (largest, first name) and quarantines the copies
    cfg2 = PreprocessConfig.from_dict({"square": {"size": 128}, "partition_size": 40,
                                       "shards": {"drop_duplicates": True}})
    res2 = build.preprocess([str(root)], str(tmp_path / "out"), cfg2)
    assert res2.fingerprint != res.fingerprint
    kept = open_dataset(res2.version_url).metadata()["image_name"]
    assert sorted(kept) == sorted(names)
    q = open_dataset(res2.version_url).quarantine()
    assert (q["reason"] == "near_duplicate").sum() == 3 * len(copied)
    assert q.loc[q["image_name"] == f"{copied[0]}_half", "detail"].str.contains(copied[0]).all()
    c = res2.manifest["counts"]
    assert c["inputs"] == c["written"] + c["quarantined"] == len(files)
    validate_version(res2.version_url)


def test_several_sources_in_one_version(tmp_path):
    synth.write_dataset(tmp_path / "k", n=16, layout="kaggle2020", seed=1, sizes=[(320, 240)])
    synth.write_dataset(tmp_path / "i", n=12, layout="isic2019", seed=2, sizes=[(320, 240)])
    res = build.preprocess([str(tmp_path / "k"), str(tmp_path / "i")], str(tmp_path / "out"), CFG)
    ds = open_dataset(res.version_url)
    meta = ds.metadata()
    assert set(meta["source"]) == {"isic2020", "isic2019"}
    isic = meta[meta["source"] == "isic2019"]
    # the two generated inputs reuse image names: those names are one image to the toolkit, kept from ISIC 2019 (the
    # source priority) with the patient the 2020 copy names; the others have no patient
    in_2020 = set(pd.concat([pd.read_csv(tmp_path / "k" / f) for f in ("train.csv", "test.csv")])["image_name"])
    shared = isic["image_name"].isin(in_2020)
    assert shared.any() and isic.loc[shared, "patient_id"].notna().all()
    assert isic.loc[~shared, "patient_id"].isna().all()
    assert (isic.groupby("lesion_id")["fold"].nunique() == 1).all()  # a lesion's images in one fold
    records = [r for url in ds.files("tfrecord", "train") for r in ds.parse_tfrecord_file(url)]
    by_name = {r["image_name"].decode(): r for r in records}
    for name in isic.loc[~shared, "image_name"]:
        assert by_name.get(name, {"patient_id": -1})["patient_id"] == -1
    validate_version(res.version_url)


@pytest.mark.slow
def test_interrupted_finalisation_resumes_to_the_same_files(tmp_path, monkeypatch):
    synth.write_dataset(tmp_path / "in", n=20, layout="kaggle2020", seed=4, sizes=[(320, 240)])
    clean = build.preprocess([str(tmp_path / "in")], str(tmp_path / "clean"), CFG)
    calls = {"n": 0}
    real = build.gather_task

    def flaky(*args):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return real(*args)

    monkeypatch.setattr(build, "gather_task", flaky)
    with pytest.raises(KeyboardInterrupt):
        build.preprocess([str(tmp_path / "in")], str(tmp_path / "resumed"), CFG)
    monkeypatch.setattr(build, "gather_task", real)
    version = Path(tmp_path / "resumed" / "in" / clean.fingerprint)
    assert not (version / "manifest.json").exists() and (version / "_parts").exists()
    again = build.preprocess([str(tmp_path / "in")], str(tmp_path / "resumed"), CFG)

    def files(url):
        root = Path(url)
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*")
                if p.is_file() and p.name != "manifest.json"}

    assert files(again.version_url) == files(clean.version_url)
    assert not (version / "_parts").exists()
    doc = json.loads((version / "manifest.json").read_text())
    assert doc["folds"] == clean.manifest["folds"] and doc["encodings"] == clean.manifest["encodings"]


def test_corrupt_example_inside_a_valid_record_names_file_and_offset(tmp_path):
    from melanoma_data import tfrecord

    good = tfrecord.encode_example({"image_name": b"a", "target": 1})
    bad = bytes([0x0A, 0x7F]) + b"\x0a\x05"  # a field claiming 127 bytes in a 4-byte message
    overlong = bytes([0x0A]) + b"\xff" * 12  # a varint that never ends
    for payload in (bad, overlong):
        blob = tfrecord.frame_record(good) + tfrecord.frame_record(payload)
        with pytest.raises(tfrecord.CorruptRecord, match=r"x\.tfrec: the record at byte \d+ is not a valid Example"):
            tfrecord.read_file(blob, name="x.tfrec")
    assert tfrecord.read_file(tfrecord.frame_record(good))[0]["target"] == [1]
