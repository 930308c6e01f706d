"""Archive scale: the ISIC 2024 HDF5 layout, every metadata column kept, target definitions, exact
near-duplicate linking against brute force, duplicate reports, the tiles preset."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import h5py
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
from PIL import Image
from scipy.sparse.csgraph import connected_components

from melanoma_data import build, columns, folds, hamming, ingest, synth
from melanoma_data.config import PreprocessConfig, load_config
from melanoma_data.dataset import open_dataset
from melanoma_data.errors import InputError
from melanoma_data.validate import validate_version
from tests.conftest import ROOT, jpeg_bytes, png_bytes, write_generic

TILES = load_config(preset="tiles")


@pytest.fixture(scope="module")
def isic2024(tmp_path_factory):
    """A small 2024-shaped input with every kind of bad entry added."""
    root = tmp_path_factory.mktemp("s24") / "isic2024"
    info = synth.write_isic2024(root, n=120, seed=3, positive_rate=0.1, tiles_per_patient=20)
    meta = pd.read_csv(root / "train-metadata.csv", dtype=str, keep_default_na=False)
    with h5py.File(root / "train-image.hdf5", "a") as f:
        names = sorted(f)
        good = bytes(f[names[0]][()])
        truncated = names[1]
        del f[truncated]
        f.create_dataset(truncated, data=np.bytes_(good[: len(good) // 2]))
        unreadable = names[2]
        del f[unreadable]
        f.create_dataset(unreadable, data=np.arange(10, dtype=np.float32))  # not image bytes
        f.create_dataset("ISIC_9999990", data=np.bytes_(good))  # an entry without a metadata row
        missing = names[3]
        del f[missing]  # a metadata row without an entry
    return {"root": root, "info": info, "meta": meta, "truncated": truncated, "unreadable": unreadable,
            "missing": missing, "extra": "ISIC_9999990"}


@pytest.fixture(scope="module")
def isic2024_version(isic2024, tmp_path_factory):
    out = tmp_path_factory.mktemp("o24")
    res = build.preprocess([str(isic2024["root"])], str(out), TILES, workers=0)
    return res


@pytest.mark.slow
def test_isic2024_layout_detected_and_bad_entries_quarantined(isic2024, isic2024_version):
    assert ingest.detect_layout(*__import__("melanoma_data").fsutil.resolve(str(isic2024["root"]))) == "isic2024"
    doc = isic2024_version.manifest
    q = open_dataset(isic2024_version.version_url).quarantine().set_index("image_name")
    assert q.loc[isic2024["truncated"], "reason"] == "truncated"
    assert q.loc[isic2024["unreadable"], "reason"] == "unreadable_file"
    assert q.loc[isic2024["missing"], "reason"] == "missing_file"
    assert "train-image.hdf5" in q.loc[isic2024["missing"], "detail"]
    assert q.loc[isic2024["extra"], "reason"] == "no_metadata"
    assert q.loc[isic2024["extra"], "path"] == f"train-image.hdf5#{isic2024['extra']}"
    c = doc["counts"]
    assert c["inputs"] == 120 + 3 + 1  # train rows + test rows + the entry without a row
    assert c["written"] + c["quarantined"] == c["inputs"] and c["quarantined"] == 4
    assert validate_version(isic2024_version.version_url)["fingerprint"] == doc["fingerprint"]


def test_isic2024_columns_mapped_and_kept(isic2024, isic2024_version):
    doc = isic2024_version.manifest
    meta = open_dataset(isic2024_version.version_url).metadata()
    raw = isic2024["meta"].set_index("isic_id")
    row = meta.set_index("image_name")
    ok = row.index.intersection(raw.index)
    # 2020 meanings mapped, originals kept
    assert set(row["anatom_site_general_challenge"].dropna()) <= set(columns.SITES_2020)
    assert (row.loc[ok, "anatom_site_detailed"] == raw.loc[ok, "anatom_site_general"]).all()
    assert (row.loc[ok, "target"].astype(int) == raw.loc[ok, "target"].astype(int)).all()
    assert (row.loc[ok, "iddx_full"] == raw.loc[ok, "iddx_full"]).all()
    bcc = raw.index[raw["iddx_full"].str.contains("Basal cell")].intersection(ok)
    mel = raw.index[raw["iddx_full"].str.contains("Melanoma")].intersection(ok)
    assert len(bcc) and len(mel)
    assert (row.loc[bcc, "diagnosis"] == "basal cell carcinoma").all()
    assert (row.loc[mel, "diagnosis"] == "melanoma").all()
    assert (row.loc[raw.index[raw["iddx_full"] == "Benign"].intersection(ok), "diagnosis"] == "unknown").all()
    # every 2024 column carried with its type; label and train-only columns marked
    table = {d["name"]: d for d in doc["columns"]}
    pf = pq.ParquetFile(next((isic2024_version_path(isic2024_version) / "parquet").glob("train*.parquet")))
    types = {f.name: str(f.physical_type) for f in pf.schema}
    for col in synth.TBP_COLUMNS:
        assert table[col]["dtype"] == "float64" and types[col] == "DOUBLE", col
        assert meta[col].dtype == "float64"
    for col in ("attribution", "tbp_tile_type", "tbp_lv_location", "iddx_full", "mel_mitotic_index"):
        assert table[col]["dtype"] == "string", col
    for col in ("iddx_full", "iddx_1", "iddx_3", "mel_thick_mm", "mel_mitotic_index"):
        assert table[col]["models"] == "label", col
    assert table["tbp_lv_dnn_lesion_confidence"]["models"] == "train_only"
    assert table["tbp_lv_A"]["models"] == "feature"
    assert doc["target"]["definition"] == "malignant"
    assert doc["config"]["square"]["size"] == 128 and doc["config"]["hair"]["remove"] is False


def isic2024_version_path(res):
    from pathlib import Path

    return Path(res.version_url)


def test_passthrough_columns_types_and_collisions(tmp_path):
    files = {f"IMG_{i:03d}": jpeg_bytes(96, 72, seed=i) for i in range(6)}
    rows = [{"image_name": n, "target": i % 2, "sex": "female", "age_approx": 40,
             "lesion_size_mm": ["1.5", "2", "", "3.25", "4", "5e0"][i],
             "clinic": ["a", "b", "c", "", "a", "b"][i],
             "mixed": ["1", "x", "2", "3", "4", "5"][i],
             "width": [100, 200, 300, 400, 500, 600][i],   # collides with the stored width
             "fold": [9, 9, 9, 9, 9, 9][i],               # collides with the fold column
             "diagnosis_3": ["Nevus"] * 6,                # an archive diagnosis level: carries the label
             } for i, n in enumerate(files)]
    root = write_generic(tmp_path / "in", files, rows)
    res = build.preprocess([str(root)], str(tmp_path / "out"), PreprocessConfig.from_dict({"square": {"size": 64}}))
    table = {d["name"]: d for d in res.manifest["columns"]}
    assert table["lesion_size_mm"]["dtype"] == "float64" and table["clinic"]["dtype"] == "string"
    assert table["mixed"]["dtype"] == "string"  # one value is not a number: text, nothing lost
    assert table["meta_width"]["original"] == "width" and table["meta_fold"]["original"] == "fold"
    assert table["diagnosis_3"]["models"] == "label" and table["clinic"]["models"] == "feature"
    meta = open_dataset(res.version_url).metadata().set_index("image_name")
    assert meta["lesion_size_mm"].tolist() == [1.5, 2.0, None, 3.25, 4.0, 5.0] or \
        meta["lesion_size_mm"].isna().tolist() == [False, False, True, False, False, False]
    assert meta.loc["IMG_002", "lesion_size_mm"] != meta.loc["IMG_002", "lesion_size_mm"]  # blank → null
    assert meta.loc["IMG_003", "lesion_size_mm"] == 3.25
    assert pd.isna(meta.loc["IMG_003", "clinic"]) and meta.loc["IMG_001", "clinic"] == "b"
    assert meta["mixed"].tolist() == ["1", "x", "2", "3", "4", "5"]
    assert meta["meta_width"].tolist() == [100.0, 200.0, 300.0, 400.0, 500.0, 600.0]
    assert (meta["width"] == 64).all() and meta["fold"].notna().all() and (meta["meta_fold"] == 9).all()
    validate_version(res.version_url)
    # the schema built from the table catches a wrongly typed extra column
    bad = meta.reset_index().head(2).copy()
    bad["lesion_size_mm"] = ["big", "small"]
    from melanoma_data import schemas

    with pytest.raises(Exception, match="lesion_size_mm"):
        schemas.shard_schema(64, extras=res.manifest.extras).validate(bad, lazy=True)


def test_train_only_columns_from_the_test_metadata(tmp_path):
    root = tmp_path / "kaggle"
    synth.write_dataset(root, n=24, layout="kaggle2020", seed=1, sizes=[(120, 90)], test_fraction=0.5)
    train = pd.read_csv(root / "train.csv")
    train["clinic_note"] = "x"          # only in train.csv
    train["lesion_size_mm"] = 2.0       # in both
    train.to_csv(root / "train.csv", index=False)
    test = pd.read_csv(root / "test.csv")
    test["lesion_size_mm"] = 3.0
    test.to_csv(root / "test.csv", index=False)
    found = ingest.ingest([str(root)])
    uses = {e.name: e.models for e in found.extras}
    assert uses == {"clinic_note": "train_only", "lesion_size_mm": "feature"}


def test_models_may_not_use_label_columns_unless_allowed(isic2024_version):
    from melanoma_models.features import model_columns

    doc = isic2024_version.manifest
    auto = model_columns(doc, "auto")
    assert "tbp_lv_A" in auto and "clin_size_long_diam_mm" in auto
    assert "mel_thick_mm" not in auto and "tbp_lv_dnn_lesion_confidence" not in auto
    with pytest.raises(ValueError, match="mel_thick_mm: label"):
        model_columns(doc, "tbp_lv_A,mel_thick_mm")
    with pytest.raises(ValueError, match="tbp_lv_dnn_lesion_confidence: train_only"):
        model_columns(doc, "tbp_lv_dnn_lesion_confidence")
    assert model_columns(doc, "tbp_lv_A,mel_thick_mm", allow="mel_thick_mm") == ["tbp_lv_A", "mel_thick_mm"]
    with pytest.raises(ValueError, match="not in this dataset"):
        model_columns(doc, "nope")
    assert model_columns(doc, "none") == []


def test_lgbm_uses_tbp_columns_and_refuses_label_columns(isic2024_version, tmp_path):
    from melanoma_models.runner import fit

    run = fit("lgbm", isic2024_version.version_url, runs=tmp_path / "runs",
              sets={"num_boost_round": 20, "features": "metadata", "early_stopping": "none"}, folds=2).run_dir
    model_doc = json.loads(next((run / "fold-0" / "model").glob("*.json")).read_text())
    assert "tbp_lv_A" in model_doc["extra"] and "mel_thick_mm" not in model_doc["extra"]
    used = set(model_doc["columns"])  # the columns, the 2024 ratios and their patient context
    assert {"tbp_lv_A", "lesion_size_ratio", "hue_contrast", "tbp_lv_A_z_patient", "tbp_lv_A_z_patient_site",
            "tbp_lv_A_rank_patient", "tbp_lv_A_minus_patient_median", "patient_lof"} <= used
    assert not any(c.startswith(("mel_thick_mm", "tbp_lv_dnn_lesion_confidence")) for c in used)
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["pauc_80_2024"] <= 0.2
    groups = {(r["dimension"], r["group"]): r for r in metrics["subgroups"]}
    assert groups[("all", "all")]["images"] == metrics["n"]
    assert {d for d, _ in groups} >= {"all", "sex", "site", "attribution"}
    assert "Subgroups (95% intervals: patients resampled)" in (run / "report" / "index.html").read_text()
    # tiles are not searched for dermoscope artefacts: their rows are absent (not "none found"); hair is measured
    assert {r["dimension"] for r in metrics["artefacts"]["auc"]} == {"heavy hair"}
    assert [r["artefact"] for r in metrics["artefacts"]["rates"]] == ["heavy hair"]


def test_lgbm_bags_seeds_and_stops_early_on_the_2024_metric_inside_the_training_folds(isic2024_version, tmp_path):
    from melanoma_models.registry import get_plugin
    from melanoma_models.runner import fit

    sets = {"num_boost_round": 60, "early_stopping_rounds": 5, "features": "metadata", "seeds": 2,
            "metric": "pauc_80_2024", "min_data_in_leaf": 3}
    run = fit("lgbm", isic2024_version.version_url, runs=tmp_path / "runs", sets=sets, folds=2).run_dir
    fold = run / "fold-0"
    assert (fold / "model" / "model.txt").exists() and (fold / "model" / "model_1.txt").exists()
    history = json.loads((fold / "history.json").read_text())
    # the default stops on a fifth of the training patients (one training fold here), never on the valid fold
    assert history["early_stopping"] == "inner" and history["metric"] == "pauc_80_2024"
    assert len(history["best_iteration"]) == 2 and all(1 <= b <= 60 for b in history["best_iteration"])
    cls = get_plugin("lgbm")
    assert cls.Params.model_fields["early_stopping"].default == "inner"
    model = cls.load(fold / "model", cls.Params.build(sets, "lgbm"))
    assert len(model.boosters) == 2


def test_target_definitions_combining_releases(tmp_path, isic2024):
    other = tmp_path / "generic"
    files = {f"GEN_{i}": jpeg_bytes(96, 72, seed=i) for i in range(4)}
    rows = [{"image_name": n, "diagnosis": d, "benign_malignant": bm, "target": t}
            for n, d, bm, t in zip(files, ["melanoma", "basal cell carcinoma", "nevus", "nevus"],
                                   ["malignant", "malignant", "benign", "benign"], [1, 0, 0, 0], strict=True)]
    write_generic(other, files, rows)
    with pytest.raises(InputError, match="--target melanoma or --target malignant"):
        ingest.ingest([str(isic2024["root"]), str(other)])
    mel = ingest.ingest([str(isic2024["root"]), str(other)], target="melanoma")
    assert mel.target["definition"] == "melanoma" and mel.target["derived_from_diagnosis"] == ["isic2024"]
    recs = mel.records.set_index("image_name")
    raw = isic2024["meta"].set_index("isic_id")
    bcc = raw.index[raw["iddx_full"].str.contains("Basal cell")].intersection(recs.index)
    melanoma = raw.index[raw["iddx_full"].str.contains("Melanoma")].intersection(recs.index)
    assert (recs.loc[bcc, "target"] == 0).all() and (recs.loc[melanoma, "target"] == 1).all()
    assert recs.loc["GEN_1", "target"] == 0  # the generic input keeps its own (melanoma) target
    mal = ingest.ingest([str(isic2024["root"]), str(other)], target="malignant")
    recs = mal.records.set_index("image_name")
    assert recs.loc["GEN_1", "target"] == 1 and recs.loc["GEN_2", "target"] == 0
    assert (recs.loc[bcc, "target"] == 1).all()
    with pytest.raises(InputError, match="--target must be one of"):
        ingest.ingest([str(other)], target="cancer")


def test_diagnosis_classes_from_2024_iddx(isic2024):
    recs = ingest.ingest([str(isic2024["root"])]).records.set_index("image_name")
    raw = isic2024["meta"].set_index("isic_id")["iddx_full"].reindex(recs.index)
    classes = recs["diagnosis"].map(ingest.diagnosis_class)
    expect = {"Melanoma Invasive": "MEL", "Basal cell carcinoma": "BCC", "Squamous cell carcinoma": "SCC",
              "Nevus": "NV", "Seborrheic keratosis": "BKL", "Solar lentigo": "BKL"}
    seen = set()
    for fragment, cls in expect.items():
        rows = raw.str.endswith(fragment, na=False)
        if rows.any():
            seen.add(cls)
            assert (classes[rows] == cls).all(), (fragment, classes[rows].unique())
    assert {"MEL", "BCC"} <= seen
    assert (classes[raw == "Benign"] == "UNK").all()  # benign without a finer diagnosis
    # every 2024 malignant kind the generator writes, through the same reader
    frame = pd.DataFrame({"iddx_full": [full for _, full in synth._MALIGNANT_2024]})
    for level in range(1, 6):
        frame[f"iddx_{level}"] = [(f.split("::") + [""] * 5)[level - 1] for f in frame["iddx_full"]]
    got = [ingest.diagnosis_class(d) for d in ingest._iddx_diagnosis(frame)["diagnosis"]]
    assert got == ["MEL", "BCC", "SCC"]


def _brute_force(w: np.ndarray, max_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Reference: every pair's distance with numpy, components with scipy."""
    n = len(w)
    rows, cols, dist = [], [], []
    for start in range(0, n, 256):
        d = np.bitwise_count(w[start : start + 256, None, :] ^ w[None, :, :]).sum(axis=2, dtype=np.int64)
        i, j = np.nonzero(d <= max_bits)
        keep = start + i != j
        rows.append(start + i[keep])
        cols.append(j[keep])
        dist.append(d[i[keep], j[keep]])
    r, c, d = np.concatenate(rows), np.concatenate(cols), np.concatenate(dist)
    _, labels = connected_components(sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(n, n)), directed=False)
    closest = np.full(n, -1)
    if len(r):
        best = pd.Series(d).groupby(r).min()
        closest[best.index.to_numpy()] = best.to_numpy()
    return labels, closest


@pytest.mark.slow
def test_near_duplicate_linking_equals_brute_force_on_20k_hashes():
    rng = np.random.default_rng(0)
    n, max_bits = 20_000, 56
    w = rng.integers(0, 2**63, size=(n, 4), dtype=np.uint64) ^ rng.integers(0, 2, size=(n, 4), dtype=np.uint64) << 63
    # planted near-duplicates at every distance up to the threshold and just past it, chains too
    planted = rng.choice(n, size=600, replace=False)
    for k, src in enumerate(planted[:300]):
        dst = planted[300 + k]
        bits = rng.choice(256, size=int(k % (max_bits + 3)), replace=False)  # 0..58 bits
        v = w[src].copy()
        for b in bits:
            v[b // 64] ^= np.uint64(1) << np.uint64(b % 64)
        w[dst] = v
    # a bulk-linked cluster (more matches per row than the kernel's buffer)
    base = w[0].copy()
    for dst in range(1, 200):
        v = base.copy()
        for b in rng.choice(256, size=int(rng.integers(10, 50)), replace=False):
            v[b // 64] ^= np.uint64(1) << np.uint64(b % 64)
        w[dst] = v
    labels, closest = hamming.link(w, max_bits, block_rows=512, cap=8)
    ref_labels, ref_closest = _brute_force(w, max_bits)
    assert len(set(zip(labels.tolist(), ref_labels.tolist(), strict=True))) == len(set(ref_labels.tolist())) \
        == len(set(labels.tolist()))
    assert np.array_equal(closest, ref_closest)
    assert (labels <= np.arange(n)).all()  # a group is named by its first row
    linked = closest >= 0
    assert linked.sum() > 400 and closest[linked].max() == max_bits  # the threshold itself is inclusive


def test_hash_words_roundtrip():
    hashes = ["0123456789abcdef" * 4, "f" * 64, "0" * 64]
    w = hamming.words(hashes)
    assert w.shape == (3, 4) and w.dtype == np.uint64
    assert [("".join(f"{int(x):016x}" for x in row)) for row in w] == hashes


def test_bulk_linked_groups_do_not_join_patients_in_folds():
    n = 60
    meta = pd.DataFrame({"image_name": [f"I{i:03d}" for i in range(n)],
                         "patient_id": [f"P{i // 6}" for i in range(n)], "split": "train",
                         "target": [int(i % 6 == 0) for i in range(n)]})
    # one near-duplicate group chaining nine patients (what similar tiles do)
    group = pd.Series(["G"] * n)
    group.iloc[:6] = "I000"
    group.iloc[6:] = "I006"
    spread = folds.assign_files(meta, folds.ShardParams(train_files=10, n_folds=5), group)
    assert spread["file"].nunique() == 10  # the chain is not used: every patient can get its own file
    assert spread.attrs["duplicate_links_not_kept"] == 1
    pair = pd.Series(meta["image_name"].to_numpy())
    pair.iloc[[0, 6]] = "I000"  # a true copy across two patients joins them (a file's share: 12 images)
    joined = folds.assign_files(meta, folds.ShardParams(train_files=5, n_folds=5), pair)
    assert joined.loc[0, "file"] == joined.loc[6, "file"]
    assert (joined.iloc[:12]["file"] == joined.loc[0, "file"]).all()
    assert joined.attrs["duplicate_links_not_kept"] == 0


def test_chains_of_small_cross_patient_links_never_collapse_the_files():
    """What 401k similar tiles did: many 2-patient links chaining every patient into one linked group."""
    n_pat, per = 100, 20
    n = n_pat * per
    meta = pd.DataFrame({"image_name": [f"I{i:05d}" for i in range(n)],
                         "patient_id": [f"P{i // per:03d}" for i in range(n)], "split": "train",
                         "target": [int(i % 97 == 0) for i in range(n)]})
    group = pd.Series(meta["image_name"].to_numpy())
    for p in range(n_pat - 1):  # the last image of patient p is a "near-duplicate" of the first of p + 1
        group.iloc[p * per + per - 1] = group.iloc[(p + 1) * per]
    plan = folds.assign_files(meta, folds.ShardParams(train_files=10, n_folds=5), group)
    sizes = plan["file"].value_counts()
    assert len(sizes) == 10 and sizes.max() <= 1.5 * sizes.median()
    assert plan.attrs["duplicate_links_not_kept"] > 0
    kept = sum(plan.loc[p * per + per - 1, "file"] == plan.loc[(p + 1) * per, "file"] for p in range(n_pat - 1))
    assert kept >= 50  # links are kept together up to a file's share of images


def test_duplicate_report_by_source_and_known_pairs(tmp_path, sample_dir):
    import cv2

    meta = pd.read_csv(sample_dir / "metadata.csv", dtype=str, keep_default_na=False)
    names = meta["image_name"].tolist()[:12]
    a = tmp_path / "kaggle"
    (a / "jpeg" / "train").mkdir(parents=True)
    rows = []
    for n in names:
        (a / "jpeg" / "train" / f"{n}.jpg").write_bytes((sample_dir / "images" / f"{n}.jpg").read_bytes())
        rows.append({"image_name": n, "patient_id": f"IP_{n}", "sex": "female", "age_approx": 50,
                     "anatom_site_general_challenge": "torso", "diagnosis": "nevus", "benign_malignant": "benign",
                     "target": 0})
    # a re-encoded copy inside 2020, listed in the duplicates CSV, plus a listed pair that is not a copy
    img = cv2.imread(str(sample_dir / "images" / f"{names[0]}.jpg"))
    (a / "jpeg" / "train" / "ISIC_COPY000.jpg").write_bytes(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY,
                                                                                        60])[1].tobytes())
    rows.append({**rows[0], "image_name": "ISIC_COPY000", "patient_id": "IP_other"})
    pd.DataFrame(rows).to_csv(a / "train.csv", index=False)
    pd.DataFrame({"image_name_1": [names[0], names[1], "ISIC_GONE"],
                  "image_name_2": ["ISIC_COPY000", names[2], names[3]]}).to_csv(a / ingest.DUPLICATES_CSV,
                                                                               index=False)
    # a second source holding a byte-identical copy of another 2020 image
    b = tmp_path / "archive"
    write_generic(b, {"ARCH_1": (sample_dir / "images" / f"{names[5]}.jpg").read_bytes()},
                  [{"image_name": "ARCH_1", "target": 0}])
    res = build.preprocess([str(a), str(b)], str(tmp_path / "out"),
                           PreprocessConfig.from_dict({"square": {"size": 64}}), name="combined")
    dup = res.manifest["duplicates"]
    assert dup["by_source_pair"] == {"archive ~ isic2020": 1, "isic2020 ~ isic2020": 1}
    assert dup["known"] == {"listed": 3, "found": 1, "missed": 1, "absent": 1, "extra": 0}
    out = subprocess.run([sys.executable, "cli.py", "datasets", "show", res.version_url], capture_output=True,
                         text=True, cwd=ROOT)
    assert out.returncode == 0 and "archive ~ isic2020: 1" in out.stdout and "found 1" in out.stdout


def test_tile_copies_found_and_distinct_tiles_not_linked_under_the_tiles_preset(tmp_path):
    import cv2

    root = tmp_path / "t"
    synth.write_isic2024(root, n=200, seed=5, positive_rate=0.05, tiles_per_patient=40, test_n=0)
    with h5py.File(root / "train-image.hdf5", "a") as f:
        names = sorted(f)[:5]
        meta = pd.read_csv(root / "train-metadata.csv")
        extra = []
        for n in names:
            img = cv2.imdecode(np.frombuffer(bytes(f[n][()]), np.uint8), cv2.IMREAD_COLOR)
            h, w = img.shape[:2]
            copies = {"q70": cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 70])[1].tobytes(),
                      "half": cv2.imencode(".jpg", cv2.resize(img, (w // 2 + 1, h // 2 + 1),
                                                              interpolation=cv2.INTER_AREA))[1].tobytes(),
                      "png": png_bytes(img[..., ::-1])}
            for kind, data in copies.items():
                f.create_dataset(f"{n}{kind}", data=np.bytes_(data))
                extra.append({**meta[meta["isic_id"] == n].iloc[0].to_dict(), "isic_id": f"{n}{kind}",
                              "patient_id": "IP_copyholder"})
        pd.concat([meta, pd.DataFrame(extra)]).to_csv(root / "train-metadata.csv", index=False)
    res = build.preprocess([str(root)], str(tmp_path / "out"), TILES)
    got = open_dataset(res.version_url).metadata().set_index("image_name")["duplicate_group"]
    for n in names:
        for kind in ("q70", "half", "png"):
            assert got[f"{n}{kind}"] == got[n] == n, (n, kind)
    assert res.manifest["duplicates"]["groups"] == len(names)  # nothing else linked


@pytest.mark.slow
def test_cli_synth_isic2024_then_preprocess_chooses_the_tiles_preset(tmp_path):
    out = tmp_path / "s"
    r = subprocess.run([sys.executable, "cli.py", "synth", str(out), "--layout", "isic2024", "--n", "400",
                        "--positive-rate", "0.02"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "400 train + 3 test tiles" in r.stdout
    meta = pd.read_csv(out / "train-metadata.csv")
    assert {"tbp_lv_A", "tbp_lv_z", "clin_size_long_diam_mm", "attribution", "iddx_full"} <= set(meta.columns)
    sides = []
    with h5py.File(out / "train-image.hdf5") as f:
        for k in list(f)[:100]:
            sides.append(Image.open(io.BytesIO(bytes(f[k][()]))).size[0])
    assert min(sides) >= 61 and max(sides) <= 239 and 100 <= np.median(sides) <= 160
    r = subprocess.run([sys.executable, "cli.py", "preprocess", str(out), "--out", str(tmp_path / "o"),
                        "--workers", "0", "--no-progress"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "preset tiles" in r.stdout
    version = next((tmp_path / "o" / "s").iterdir())
    pf = pq.ParquetFile(next((version / "parquet").glob("train*.parquet")))
    fields = {f.name: f.type for f in pf.schema_arrow}
    assert all(str(fields[c]) == "double" for c in synth.TBP_COLUMNS)
    assert validate_version(str(version))["config"]["square"]["size"] == 128


def test_ops_run_at_tile_resolution():
    from melanoma_data import pipeline

    data = synth.encode_file(synth.render(synth.SynthSpec(width=100, height=100, hairs=3), seed=1))
    out = pipeline.process_image(data, "t", TILES, debug=True)
    assert out["width"] == out["height"] == 128
    assert out["_debug"]["hair_mask"].shape == (128, 128)
    # the hair op saw the 100 px original, not an upsampled 128 px copy: same answer as at 100 px
    from melanoma_data.ops import geometry, hair

    img = geometry.apply_orientation(pipeline.dec.decode(data, pipeline.dec.read_header(data), 1, TILES.decode),
                                     geometry.OrientParams(1))
    assert out["hair_fraction"] == hair.remove_hair(img, TILES.hair).fraction


def test_report_names_the_positive_class_by_the_target_definition(isic2024_version, tmp_path, monkeypatch):
    from matplotlib.text import Text

    from melanoma_data import plots, report

    seen: list[str] = []
    real = plots.save

    def capture(fig, path):
        seen.extend(t.get_text() for t in fig.findobj(Text))
        return real(fig, path)

    monkeypatch.setattr(plots, "save", capture)
    page = report.write_report(open_dataset(isic2024_version.version_url), tmp_path / "rep").read_text()
    assert any("malignant" in t for t in seen) and not any("melanoma" in t.lower() for t in seen)
    assert "1 = melanoma, basal or squamous cell carcinoma" in page and "tbp_lv_A (float64, feature)" in page


def test_hdf5_groups_links_and_entries_that_decode_large_are_one_quarantine_row_each(tmp_path):
    """A group, a link, and entries whose stored size hides their decoded size: one row each, the run goes on."""
    root = tmp_path / "s24"
    synth.write_isic2024(root, n=12, seed=4, positive_rate=0.2, tiles_per_patient=6, test_n=0)
    limit = 1_000_000
    with h5py.File(root / "train-image.hdf5", "a") as f:
        names = sorted(f)
        bad = dict(zip(("group", "compressed", "sparse", "vlen", "external"), names[:5], strict=True))
        for key in bad.values():
            del f[key]
        f.create_group(bad["group"]).create_dataset("inner", data=np.bytes_(b"x"))
        f.create_dataset(bad["compressed"], data=np.zeros(5 * limit, np.uint8), compression="gzip")
        sparse = f.create_dataset(bad["sparse"], shape=(10**12,), dtype=np.uint8, chunks=(1 << 16,), fillvalue=0)
        sparse[: 1 << 16] = 1  # one chunk stored: 64 kB on disk, a terabyte once read
        f.create_dataset(bad["vlen"], data=b"\xff\xd8" + b"A" * (2 * limit), dtype=h5py.vlen_dtype(bytes))
        f[bad["external"]] = h5py.ExternalLink("/etc/elsewhere.h5", "/data")
        stored = {k: f[v].id.get_storage_size() for k, v in bad.items() if k in ("compressed", "sparse")}
    assert stored["compressed"] < limit and stored["sparse"] < limit  # the old cap (stored bytes) let them pass
    cfg = TILES.with_overrides(decode__max_bytes=limit)
    res = build.preprocess([str(root)], str(tmp_path / "out"), cfg, workers=0)
    c = res.manifest["counts"]
    assert c["inputs"] == 12 and c["written"] == 7 and c["quarantined"] == 5
    q = open_dataset(res.version_url).quarantine().set_index("image_name")
    assert q.loc[bad["group"], "reason"] == "unreadable_file" and "group" in q.loc[bad["group"], "detail"]
    assert q.loc[bad["external"], "reason"] == "unreadable_file"
    assert "ExternalLink" in q.loc[bad["external"], "detail"]
    for kind in ("compressed", "sparse", "vlen"):
        assert q.loc[bad[kind], "reason"] == "too_large", kind
        assert "max_bytes" in q.loc[bad[kind], "detail"]
    assert "1,000,000,000,000 bytes" in q.loc[bad["sparse"], "detail"]  # the logical size, before reading
    assert "bytes read" in q.loc[bad["vlen"], "detail"]  # a variable-length item: checked once read
