"""Readers (pandas, Dask, numpy batches, tf.data), the catalog, the EDA report, and their CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import cli
from melanoma_data import build, synth
from melanoma_data.catalog import list_versions
from melanoma_data.config import PreprocessConfig
from melanoma_data.dataset import open_dataset
from melanoma_data.errors import InputError
from tests.conftest import ink

CFG = PreprocessConfig.from_dict({"square": {"size": 48}, "partition_size": 9,
                                  "shards": {"train_files": 6, "test_files": 2, "n_folds": 3}})


@pytest.fixture(scope="module")
def out_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("readers")
    synth.write_dataset(root / "in", n=40, layout="kaggle2020", seed=5, sizes=[(320, 240)], test_fraction=0.25)
    build.preprocess([str(root / "in")], str(root / "out"), CFG)
    return root / "out"


@pytest.fixture(scope="module")
def version(out_root) -> str:
    return str(next((out_root / "in").iterdir()))


def test_metadata_and_dask_agree_without_image_bytes(version):
    ds = open_dataset(version)
    meta = ds.metadata()
    assert "image" not in meta and len(meta) == ds.manifest["counts"]["written"]
    assert meta["image_name"].is_monotonic_increasing
    dask = ds.to_dask().compute().sort_values("image_name").reset_index(drop=True)
    assert list(dask["image_name"]) == list(meta["image_name"])
    assert ds.to_dask(images=True).npartitions == len(ds.files("parquet"))
    sub = ds.metadata(split="train", folds=[1], columns=["image_name", "fold"])
    assert list(sub.columns) == ["image_name", "fold"] and set(sub["fold"]) == {1}


def test_iter_batches_covers_the_folds_with_numpy_arrays(version):
    ds = open_dataset(version)
    meta = ds.metadata(split="train")
    want = sorted(meta.loc[meta["fold"].isin([0, 2]), "image_name"])
    batches = list(ds.iter_batches("train", folds=[0, 2], batch_size=5))
    names = [n for b in batches for n in b["image_name"]]
    assert sorted(names) == want and len(names) == len(set(names))
    first = batches[0]
    assert first["image"].dtype == np.uint8 and first["image"].shape == (5, 48, 48, 3)
    assert first["target"].dtype == np.int64 and set(first["target"]) <= {0, 1}
    assert all(len(b["image"]) == 5 for b in batches[:-1])
    # images equal a plain decode of the stored bytes (RGB order)
    import cv2
    import pandas as pd

    stored = pd.read_parquet(ds.files("parquet", "train", [0])[0], columns=["image_name", "image"]).iloc[0]
    for b in batches:
        hit = np.nonzero(b["image_name"] == stored["image_name"])[0]
        if len(hit):
            bgr = cv2.imdecode(np.frombuffer(stored["image"], np.uint8), cv2.IMREAD_COLOR)
            assert np.array_equal(b["image"][hit[0]], bgr[:, :, ::-1])


def test_iter_batches_shuffle_is_seeded_and_options_work(version):
    ds = open_dataset(version)

    def order(**kw):
        return [n for b in ds.iter_batches("train", batch_size=4, **kw) for n in b["image_name"]]

    plain = order()
    a, b, c = order(shuffle=True, seed=1), order(shuffle=True, seed=1), order(shuffle=True, seed=2)
    assert a == b and a != c and a != plain and sorted(a) == sorted(plain)
    dropped = list(ds.iter_batches("train", batch_size=7, drop_remainder=True, image_size=32,
                                   columns=("image_name", "age_approx", "patient_image_count")))
    assert all(x["image"].shape == (7, 32, 32, 3) for x in dropped)
    assert len(dropped) == len(plain) // 7
    assert dropped[0]["age_approx"].dtype == np.float32
    test = next(ds.iter_batches("test", batch_size=3))
    assert (test["target"] == -1).all()  # unknown labels are -1, as in the TFRecords


def test_tf_dataset_has_static_shapes_and_the_right_rows(version):
    tf = pytest.importorskip("tensorflow")
    ds = open_dataset(version)
    train = ds.tf_dataset("train", folds=[1], batch_size=2, with_names=True)
    img_spec, y_spec, _ = train.element_spec
    assert img_spec.shape.as_list() == [2, 48, 48, 3] and img_spec.dtype == tf.uint8
    assert y_spec.shape.as_list() == [2]
    names = [n.decode() for _, _, batch in train for n in batch.numpy()]
    fold1 = ds.metadata(split="train", folds=[1])
    assert len(names) == len(fold1) // 2 * 2 and set(names) <= set(fold1["image_name"])
    small = ds.tf_dataset("train", batch_size=4, image_size=32, shuffle=True, seed=3, repeat=True)
    assert small.element_spec[0].shape.as_list() == [4, 32, 32, 3]
    x, y = next(iter(small))
    assert x.shape == (4, 32, 32, 3)
    test = ds.tf_dataset("test", batch_size=2, drop_remainder=False)
    assert test.element_spec[1].dtype == tf.string


def test_reader_errors_are_readable(version, out_root, tmp_path):
    ds = open_dataset(version)
    with pytest.raises(InputError, match="fold"):
        list(ds.iter_batches("train", folds=[9]))
    with pytest.raises(InputError, match="split 'valid' not in this dataset"):
        ds.metadata(split="valid")
    with pytest.raises(InputError, match="no such dataset version"):
        open_dataset(tmp_path / "nope")
    with pytest.raises(InputError, match="several versions"):
        open_dataset(out_root / "in")
    broken = tmp_path / "broken"
    shutil.copytree(version, broken)
    (broken / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="corrupt"):
        open_dataset(broken)
    with pytest.raises(InputError, match="unknown column"):
        ds.metadata(columns=["image_name", "nonsense"])


def test_catalog_lists_finished_unfinished_and_corrupt_versions(version, out_root, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(out_root, root)
    (root / "in" / "0000000000000000" / "_parts").mkdir(parents=True)
    bad = root / "other" / "1111111111111111"
    shutil.copytree(version, bad)
    (bad / "manifest.json").write_text("[]")
    rows = {r["fingerprint"]: r for r in list_versions(str(root))}
    fp = Path(version).name
    assert rows[fp]["status"] == "ok" and rows[fp]["written"] == 40 and rows[fp]["folds"] == 3
    assert rows["0000000000000000"]["status"].startswith("unfinished")
    assert rows["1111111111111111"]["status"].startswith("corrupt")
    runner = CliRunner()
    res = runner.invoke(cli.app, ["datasets", "list", str(root)], terminal_width=200)
    assert res.exit_code == 0 and fp in res.output and "unfinished" in res.output
    res = runner.invoke(cli.app, ["datasets", "show", version], terminal_width=200)
    assert res.exit_code == 0 and "train00" in res.output and "40 inputs = 40 written" in res.output
    res = runner.invoke(cli.app, ["datasets", "show", str(tmp_path / "missing")])
    assert res.exit_code == 2 and "no such dataset version" in res.output


def test_report_writes_html_and_plots(version, tmp_path):
    res = CliRunner().invoke(cli.app, ["report", version, "--out", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "rep" / "index.html").read_text()
    for png in ("class_balance", "sizes", "sites", "sex_age", "patients", "folds", "measurements", "examples"):
        assert f'src="{png}.png"' in page
        drawn = ink(tmp_path / "rep" / f"{png}.png")
        assert drawn["ink"] > 0.03 and drawn["blue"] + drawn["red"] > 0.005, (png, drawn)  # data drawn, not axes
    assert json.loads(Path(version, "manifest.json").read_text())["fingerprint"] in page


def test_manifest_paths_outside_the_version_are_refused(version, tmp_path):
    """A crafted manifest must not make validate, open_dataset or inspect read outside the version."""
    from melanoma_data.errors import InputError, ValidationFailed
    from melanoma_data.validate import validate_version

    secret = tmp_path / "secret.parquet"
    secret.write_bytes(b"not yours")
    for bad in (str(secret), "../../secret.parquet", "parquet/../../x.parquet", "s3://bucket/x.parquet"):
        copy = tmp_path / "v" / Path(version).name
        shutil.rmtree(copy.parent, ignore_errors=True)
        shutil.copytree(version, copy)
        doc = json.loads((copy / "manifest.json").read_text())
        doc["shards"][0]["path"] = bad
        (copy / "manifest.json").write_text(json.dumps(doc))
        with pytest.raises(InputError, match=r"shards\[0\]\.path = .* is not a path inside"):
            open_dataset(str(copy))
        with pytest.raises(ValidationFailed) as exc:
            validate_version(str(copy))
        assert any("is not a path inside" in p for p in exc.value.problems)
        res = CliRunner().invoke(cli.app, ["inspect", str(copy), "--n", "2", "--out", str(tmp_path / "s.png")])
        assert res.exit_code == 2 and "is not a path inside" in res.output
