"""End-to-end preprocessing: real sample, bad inputs, determinism, Dask = eager, fsspec, validate."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from melanoma_data import build, fsutil
from melanoma_data.config import PreprocessConfig
from melanoma_data.errors import OutputError, ValidationFailed
from melanoma_data.validate import validate_version
from tests.conftest import bad_corpus, jpeg_bytes, write_generic

SMALL = PreprocessConfig.from_dict({"square": {"size": 64}, "partition_size": 5})


def _files(version: str) -> dict[str, bytes]:
    root = Path(version)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
            and p.name != "manifest.json"}


@pytest.mark.slow
def test_real_sample_preprocesses_cleanly(sample_dir, tmp_path):
    res = build.preprocess([str(sample_dir)], str(tmp_path / "out"), PreprocessConfig(partition_size=32))
    doc = validate_version(res.version_url)
    assert doc["counts"] == {"inputs": 89, "written": 89, "quarantined": 0}
    frame = pd.read_parquet(Path(res.version_url) / "parquet")
    assert len(frame) == 89 and frame["image_name"].is_unique
    notes = pd.read_csv(sample_dir / "image_notes.csv").set_index("image_name")
    frame = frame.set_index("image_name")
    assert (frame["file_sha256"] == notes.loc[frame.index, "sha256"]).all()
    assert (frame["orig_width"] == notes.loc[frame.index, "width"]).all()
    big = frame.loc["ISIC_0015719"]
    assert (big["orig_width"], big["orig_height"], big["decode_reduction"]) == (6000, 4000, 4)
    img = np.asarray(Image.open(io.BytesIO(big["image"])))
    assert img.shape == (512, 512, 3) and 40 < img.mean() < 230
    assert frame.loc["ISIC_0000000", "anatom_site_general_challenge"] == "torso"
    assert frame.loc["ISIC_0000000", "anatom_site_detailed"] == "anterior torso"


def test_bad_input_corpus_end_to_end(tmp_path):
    corpus = bad_corpus()
    files = {name: data for name, (data, _) in corpus.items()}
    files["GOOD_1"] = jpeg_bytes(100, 80)
    rows = [{"image_name": n, "sex": "female", "target": 0} for n in files] + [
        {"image_name": "ROW_WITHOUT_FILE", "sex": "male", "target": 0},
        {"image_name": "../../escape", "sex": "male", "target": 0},
        {"image_name": "SEX_M", "sex": "M", "target": 0},
    ]
    root = write_generic(tmp_path / "in", files, rows)
    (root / "images" / "FILE_WITHOUT_ROW.jpg").write_bytes(jpeg_bytes(90, 90))
    (root / "images" / "SEX_M.jpg").write_bytes(jpeg_bytes(90, 90))
    out = tmp_path / "out"
    res = build.preprocess([str(root)], str(out), SMALL)
    doc = validate_version(res.version_url)
    q = pd.read_parquet(Path(res.version_url) / "quarantine.parquet").set_index("image_name")
    for name, (_, reason) in corpus.items():
        if reason:
            assert q.loc[name, "reason"] == reason, name
            assert q.loc[name, "detail"]
    assert q.loc["ROW_WITHOUT_FILE", "reason"] == "missing_file"
    assert q.loc["../../escape", "reason"] == "unsafe_name"
    assert q.loc["FILE_WITHOUT_ROW", "reason"] == "no_metadata"
    assert q.loc["SEX_M", "reason"] == "invalid_metadata"
    assert q.loc["BAD_truncated", "stage"] == "decode" and q.loc["BAD_bomb_png", "stage"] == "header"
    written = set(pd.read_parquet(Path(res.version_url) / "parquet")["image_name"])
    assert written == {"GOOD_1"} | {n for n, (_, r) in corpus.items() if r is None}
    assert doc["counts"]["inputs"] == len(rows) + 1 == doc["counts"]["written"] + doc["counts"]["quarantined"]
    # nothing was written outside the version directory
    assert sorted(p.name for p in out.iterdir()) == ["in"]
    assert not list(tmp_path.glob("escape*"))


def test_same_config_same_fingerprint_and_bytes_rerun_does_nothing(synthetic_kaggle, tmp_path):
    a = build.preprocess([str(synthetic_kaggle)], str(tmp_path / "a"), SMALL)
    b = build.preprocess([str(synthetic_kaggle)], str(tmp_path / "b"), SMALL)
    assert a.fingerprint == b.fingerprint and not a.reused
    assert _files(a.version_url) == _files(b.version_url)
    again = build.preprocess([str(synthetic_kaggle)], str(tmp_path / "a"), SMALL)
    assert again.reused and again.manifest == a.manifest
    other = build.preprocess([str(synthetic_kaggle)], str(tmp_path / "a"), SMALL.with_overrides(encode__quality=80))
    assert other.fingerprint != a.fingerprint
    assert sorted(p.name for p in (tmp_path / "a" / "kaggle").iterdir()) == sorted([a.fingerprint, other.fingerprint])


def test_dask_result_equals_eager_loop(synthetic_kaggle, tmp_path):
    from distributed import Client, LocalCluster

    eager = build.preprocess([str(synthetic_kaggle)], str(tmp_path / "eager"), SMALL)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        dask = build.preprocess([str(synthetic_kaggle)], str(tmp_path / "dask"), SMALL, client=client)
    assert dask.fingerprint == eager.fingerprint
    assert _files(dask.version_url) == _files(eager.version_url)
    assert dask.manifest["counts"] == eager.manifest["counts"]


def test_non_local_fsspec_filesystem(synthetic_kaggle):
    from distributed import Client

    fs = fsutil.resolve("memory://")[0]
    for p in synthetic_kaggle.rglob("*"):
        if p.is_file():
            fs.pipe(f"/in/kaggle/{p.relative_to(synthetic_kaggle)}", p.read_bytes())
    with Client(processes=False, n_workers=1, threads_per_worker=2, dashboard_address=None) as client:
        res = build.preprocess(["memory://in/kaggle"], "memory://out", SMALL, client=client)
    assert res.version_url.startswith("memory://")
    doc = validate_version(res.version_url)
    assert doc["counts"]["written"] == 24
    frame = pd.read_parquet(res.version_url + "/parquet")
    assert len(frame) == 24
    # a different filesystem, same inputs → same shards as a local run
    local = build.preprocess([str(synthetic_kaggle)], str(Path(synthetic_kaggle).parent / "local-out"), SMALL)
    assert fs.cat_file(res.version_url.removeprefix("memory://") + "/parquet/train00.parquet") == \
        (Path(local.version_url) / "parquet" / "train00.parquet").read_bytes()


def test_validate_reports_tampering(synthetic_kaggle, tmp_path):
    res = build.preprocess([str(synthetic_kaggle)], str(tmp_path / "out"), SMALL)
    version = Path(res.version_url)
    shard = version / "parquet" / "train01.parquet"
    shard.write_bytes(shard.read_bytes()[:-10] + b"0123456789")
    manifest = json.loads((version / "manifest.json").read_text())
    manifest["counts"]["inputs"] += 1
    (version / "manifest.json").write_text(json.dumps(manifest))
    (version / "parquet" / "part-99999.parquet").write_bytes(b"stray")
    with pytest.raises(ValidationFailed) as info:
        validate_version(str(version))
    text = "\n".join(info.value.problems)
    assert "train01.parquet: sha256 differs" in text
    assert "inputs (25)" in text
    assert "part-99999.parquet: not listed" in text


def test_unwritable_output_is_a_clear_error(synthetic_kaggle, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="cannot write to output location"):
        build.preprocess([str(synthetic_kaggle)], str(blocker / "out"), SMALL)
