"""Runs that fail well: corrupt shards, locked outputs, a full disk, Ctrl-C, scratch folders, small inputs."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from melanoma_data import build, synth
from melanoma_data.config import PreprocessConfig
from melanoma_data.dataset import open_dataset
from melanoma_data.errors import CorruptShard

TINY = PreprocessConfig.from_dict({"square": {"size": 32}, "partition_size": 8,
                                   "shards": {"train_files": 3, "test_files": 1, "n_folds": 3}})


@pytest.fixture(scope="module")
def tiny_input(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    synth.write_dataset(root / "in", n=24, layout="kaggle2020", seed=3, sizes=[(160, 120)], test_fraction=0.25)
    return root / "in"


@pytest.fixture(scope="module")
def tiny_version(tiny_input, tmp_path_factory) -> Path:
    res = build.preprocess([str(tiny_input)], str(tmp_path_factory.mktemp("tinyout") / "out"), TINY)
    return Path(res.version_url)


@pytest.fixture
def copy(tiny_version, tmp_path) -> Path:
    """A private copy of the version (copytree keeps the modification times)."""
    return Path(shutil.copytree(tiny_version, tmp_path / "v"))


def _train_files(version: Path) -> list[Path]:
    ds = open_dataset(version)
    return [version / e["path"] for e in ds.manifest["shards"] if e["split"] == "train"]


def _read_all(version: Path, **kw) -> int:
    ds = open_dataset(version, **kw)
    return sum(len(b["image"]) for b in ds.iter_batches("train", batch_size=4))


# ------------------------------------------------------------------ 1. corrupt Parquet


def test_an_intact_version_reads_every_row(copy):
    ds = open_dataset(copy, verify="hash")
    assert _read_all(copy, verify="hash") == ds.manifest["splits"]["train"]


def test_a_truncated_shard_is_named(copy):
    victim = _train_files(copy)[0]
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptShard, match=victim.name) as err:
        _read_all(copy)
    assert "truncated" in str(err.value)
    victim.write_bytes(data)  # recovery: the original file reads again
    assert _read_all(copy) > 0


def test_a_flipped_byte_is_caught_by_the_hash(copy):
    victim = _train_files(copy)[1]
    before = victim.stat()
    data = bytearray(victim.read_bytes())
    data[len(data) // 3] ^= 0x5A
    victim.write_bytes(bytes(data))
    with pytest.raises(CorruptShard, match=f"{victim.name}: sha256 differs"):  # changed after the manifest
        _read_all(copy)
    os.utime(victim, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size, same time: only a hash sees it
    with pytest.raises(CorruptShard, match="sha256 differs"):
        _read_all(copy, verify="hash")


def test_a_shard_swapped_for_another_is_named(copy):
    a, b = _train_files(copy)[:2]
    shutil.copy2(a, b)
    with pytest.raises(CorruptShard, match=b.name):
        open_dataset(copy).metadata(split="train")
    with pytest.raises(CorruptShard, match=b.name):
        open_dataset(copy).to_dask(split="train")


def test_a_swapped_shard_of_the_same_size_is_caught_by_its_fold(copy):
    """Two files whose size, rows and hash coincide still differ in the fold their footer records."""
    import json

    doc = json.loads((copy / "manifest.json").read_text())
    train = [e for e in doc["shards"] if e["split"] == "train"]
    a, b = train[0], train[1]
    b.update(rows=a["rows"], bytes=a["bytes"], sha256=a["sha256"])
    (copy / "manifest.json").write_text(json.dumps(doc))
    shutil.copy2(copy / a["path"], copy / b["path"])
    with pytest.raises(CorruptShard, match=rf"{b['path']}: holds fold \[{a['fold']}\].*says {b['fold']}"):
        open_dataset(copy, verify="hash").metadata(split="train")
