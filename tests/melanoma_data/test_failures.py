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


# ------------------------------------------------------------------ 2. two runs, one version: the lock

def _cfg_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text("[preprocess]\npartition_size = 8\n[preprocess.square]\nsize = 32\n"
                    "[preprocess.shards]\ntrain_files = 3\ntest_files = 1\nn_folds = 3\n")
    return path


def _cli(*args: str):
    from typer.testing import CliRunner

    import cli

    return CliRunner().invoke(cli.app, list(args))


def _preprocess(tiny_input: Path, out: Path, tmp_path: Path):
    return _cli("preprocess", str(tiny_input), "--out", str(out), "--workers", "0", "--no-progress",
                "--config", str(_cfg_file(tmp_path)))


def _errors(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(("error:", "interrupted:"))]


def test_a_second_run_on_a_locked_version_is_refused_then_goes_on(tiny_input, tiny_version, tmp_path):
    from melanoma_data import fsutil
    from melanoma_data.validate import validate_version

    out = tmp_path / "out"
    vdir = out / "in" / tiny_version.name
    vdir.mkdir(parents=True)
    fs, _ = fsutil.resolve(str(vdir))
    lock = fsutil.OutputLock(fs, str(vdir / fsutil.LOCK_FILE), "test").acquire()  # a live run: this process
    try:
        with pytest.raises(fsutil.LockHeld):  # O_EXCL: one owner
            fsutil.OutputLock(fs, str(vdir / fsutil.LOCK_FILE)).acquire()
        res = _preprocess(tiny_input, out, tmp_path)
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output and len(_errors(res.output)) == 1
        assert f"pid {os.getpid()}" in res.output and "being written by another run" in res.output
        assert sorted(p.name for p in vdir.iterdir()) == [fsutil.LOCK_FILE]  # the refused run wrote nothing
    finally:
        lock.release()
    assert not vdir.exists() or not any(vdir.iterdir())
    res = _preprocess(tiny_input, out, tmp_path)
    assert res.exit_code == 0, res.output
    assert validate_version(str(vdir))["fingerprint"] == tiny_version.name
    assert not (vdir / fsutil.LOCK_FILE).exists()


@pytest.mark.parametrize("stale", ["dead pid", "old owner file"])
def test_a_stale_lock_does_not_block(tiny_input, tiny_version, tmp_path, stale):
    import json
    import subprocess
    import time

    from melanoma_data import fsutil

    vdir = tmp_path / "out" / "in" / tiny_version.name
    vdir.mkdir(parents=True)
    if stale == "dead pid":
        gone = subprocess.Popen(["true"])
        gone.wait()
        owner = {"host": __import__("socket").gethostname(), "pid": gone.pid, "refreshed": time.time()}
    else:  # another host's run that stopped refreshing its owner file
        owner = {"host": "elsewhere", "pid": 1, "refreshed": time.time() - 2 * fsutil.LOCK_STALE_S}
    (vdir / fsutil.LOCK_FILE).write_text(json.dumps(owner))
    if stale == "old owner file":
        old = time.time() - 2 * fsutil.LOCK_STALE_S
        os.utime(vdir / fsutil.LOCK_FILE, (old, old))
    res = _preprocess(tiny_input, tmp_path / "out", tmp_path)
    assert res.exit_code == 0, res.output
    assert (vdir / "manifest.json").exists() and not (vdir / fsutil.LOCK_FILE).exists()


def test_a_fresh_owner_file_of_another_host_blocks(tiny_input, tiny_version, tmp_path):
    import json
    import time

    from melanoma_data import fsutil

    vdir = tmp_path / "out" / "in" / tiny_version.name
    vdir.mkdir(parents=True)
    (vdir / fsutil.LOCK_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": time.time(),
                                                     "refreshed": time.time()}))
    res = _preprocess(tiny_input, tmp_path / "out", tmp_path)
    assert res.exit_code == 2 and "pid 1 on elsewhere" in res.output, res.output


def test_validate_reports_leftovers_and_a_rerun_removes_them(tiny_input, tiny_version, tmp_path):
    from melanoma_data.errors import ValidationFailed
    from melanoma_data.validate import validate_version

    vdir = tmp_path / "out" / "in" / tiny_version.name
    shutil.copytree(tiny_version, vdir)
    (vdir / "_parts").mkdir()
    (vdir / "_parts" / "records.parquet").write_bytes(b"left by a run that died after its manifest")
    (vdir / "parquet" / "train00.parquet.tmp-0123").write_bytes(b"half a file")
    with pytest.raises(ValidationFailed) as err:
        validate_version(str(vdir))
    said = "\n".join(err.value.problems)
    assert "_parts/: leftovers of an interrupted run" in said and "train00.parquet.tmp-0123" in said
    res = _preprocess(tiny_input, tmp_path / "out", tmp_path)
    assert res.exit_code == 0 and "already up to date" in res.output, res.output
    assert validate_version(str(vdir))["fingerprint"] == tiny_version.name


# ------------------------------------------------------------------ 3. disk full


def test_disk_full_is_one_line_saying_what_was_kept_then_resumes(tiny_input, tiny_version, tmp_path, monkeypatch):
    import errno

    from melanoma_data import manifest, shards

    real = shards.write_partition
    calls = []

    def full_disk(*args, **kw):
        calls.append(args[2])
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "rows-00002.parquet")
        return real(*args, **kw)

    monkeypatch.setattr(shards, "write_partition", full_disk)
    out = tmp_path / "out"
    res = _preprocess(tiny_input, out, tmp_path)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and len(_errors(res.output)) == 1
    assert "no space left" in res.output and "kept 2 of 3 partitions (16 images)" in res.output
    vdir = out / "in" / tiny_version.name
    assert not [p for p in vdir.rglob("*") if ".tmp-" in p.name]
    monkeypatch.setattr(shards, "write_partition", real)
    res = _preprocess(tiny_input, out, tmp_path)
    assert res.exit_code == 0, res.output
    doc = manifest.read_manifest(*__import__("melanoma_data.fsutil", fromlist=["x"]).resolve(str(vdir)))
    assert doc["timings"]["resumed_images"] == 16


# ------------------------------------------------------------------ 5. Ctrl-C


@pytest.mark.slow
def test_ctrl_c_during_preprocess_is_one_line_and_the_run_resumes(tiny_input, tmp_path):
    """A terminal's Ctrl-C reaches the whole process group: the client and its Dask workers."""
    import signal
    import subprocess
    import sys
    import time

    from melanoma_data import fsutil, manifest

    out = tmp_path / "out"
    cmd = [sys.executable, str(Path(__file__).resolve().parents[2] / "cli.py"), "preprocess", str(tiny_input),
           "--out", str(out), "--workers", "1", "--partition-size", "2", "--size", "32", "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(out.glob("in/*/_parts/summary-*.json"))) < 2:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stdout + stderr
    assert "Traceback" not in stderr and stderr.strip().count("\n") == 0, stderr
    assert stderr.startswith("interrupted: kept ") and "run the same command again to resume" in stderr
    (vdir,) = out.glob("in/*")
    assert not (vdir / fsutil.LOCK_FILE).exists() and not [p for p in vdir.rglob("*.tmp-*")]
    kept = len(list(vdir.glob("_parts/summary-*.json")))
    assert f"kept {kept} of 12 partitions" in stderr
    res = build.preprocess([str(tiny_input)], str(out), PreprocessConfig.from_dict({"square": {"size": 32},
                                                                                   "partition_size": 2}))
    assert res.manifest["timings"]["resumed_images"] >= 2 * kept
    assert manifest.read_manifest(*fsutil.resolve(str(vdir)))["counts"]["inputs"] == 24


def test_ctrl_c_during_fit_is_one_line_and_the_run_resumes(tiny_version, tmp_path, monkeypatch):
    from melanoma_plugins.baselines import LogRegPlugin

    real, calls = LogRegPlugin.fit, []

    def interrupted_on_the_second_fold(self, *args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kw)

    monkeypatch.setattr(LogRegPlugin, "fit", interrupted_on_the_second_fold)
    args = ("fit", "--plugin", "logreg", "--data", str(tiny_version), "--runs", str(tmp_path / "runs"),
            "--no-progress")
    res = _cli(*args)
    assert res.exit_code == 130, res.output
    assert "Traceback" not in res.output and len(_errors(res.output)) == 1
    assert "interrupted: 1 of 3 folds finished in" in res.output and "resume with the next fold" in res.output
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert sorted(p.name for p in run_dir.glob("fold-*")) == ["fold-0"]  # the half-trained fold is gone
    monkeypatch.setattr(LogRegPlugin, "fit", real)
    res = _cli(*args)
    assert res.exit_code == 0, res.output
    assert (run_dir / "oof.parquet").exists() and len(calls) == 2


# ------------------------------------------------------------------ 7. datasets list / show


def test_datasets_list_prints_paths_show_accepts_and_refuses_a_missing_root(tiny_version, tmp_path):
    from typer.testing import CliRunner

    import cli

    runner = CliRunner()
    missing = runner.invoke(cli.app, ["datasets", "list", str(tmp_path / "nowhere")])
    assert missing.exit_code == 2 and len(_errors(missing.output)) == 1 and "no such folder" in missing.output
    root = tiny_version.parent.parent
    listed = runner.invoke(cli.app, ["datasets", "list", str(root)], terminal_width=300)
    assert listed.exit_code == 0, listed.output
    paths = [line.split()[0] for line in listed.output.splitlines()[1:] if line.strip()]
    assert paths == [str(tiny_version)]
    shown = runner.invoke(cli.app, ["datasets", "show", paths[0]], terminal_width=300)
    assert shown.exit_code == 0, shown.output
    line = next(x for x in shown.output.splitlines() if "artefacts found" in x)
    for name in ("ruler", "ink", "bubbles", "dark_corners"):
        assert f"{name}: " in line and "/24" in line
    assert "artefacts (leave)" in shown.output


# ------------------------------------------------------------------ 4. predict --images: scratch and paths


def test_scoring_cleans_scratch_of_killed_runs_and_names_inputs_by_their_own_paths(tiny_input, tiny_version,
                                                                                   tmp_path, monkeypatch):
    import json
    import socket
    import subprocess
    import tempfile

    from melanoma_models import score
    from melanoma_models.runner import fit

    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    gone = subprocess.Popen(["true"])
    gone.wait()
    host = socket.gethostname()
    for name, pid in (("killed", gone.pid), ("running", os.getpid())):
        d = temp / f"{score.SCRATCH_PREFIX}{name}"
        (d / "inputs").mkdir(parents=True)
        (d / score.SCRATCH_OWNER).write_text(json.dumps({"host": host, "pid": pid}))
    (temp / f"{score.SCRATCH_PREFIX}unrelated").write_text("a file, not a scratch folder")

    run = fit("logreg", str(tiny_version), runs=tmp_path / "runs").run_dir
    mine = tmp_path / "mine"
    mine.mkdir()
    good = next(tiny_input.rglob("*.jpg"))
    shutil.copy(good, mine / good.name)
    (mine / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a JPEG")
    meta = tmp_path / "meta.csv"
    meta.write_text(f"image_name,sex,age_approx,anatom_site_general_challenge\n{good.stem},male,50,torso\n"
                    "broken,female,40,torso\n")
    res = score.score_images(run, [str(mine / good.name), str(mine / "broken.jpg")], tmp_path / "scores.csv",
                             metadata=str(meta))
    assert len(res.scores) == 1
    (row,) = res.quarantine.itertuples()
    assert (row.source, row.path) == (str(mine), "broken.jpg"), row
    assert "melanoma-score-" not in row.detail and str(temp) not in row.source
    left = sorted(p.name for p in temp.iterdir())
    assert left == [f"{score.SCRATCH_PREFIX}running", f"{score.SCRATCH_PREFIX}unrelated"]  # and its own is gone


# ------------------------------------------------------------------ 6. small inputs: partitioning and progress


def test_partitioning_is_derived_from_the_input_count_and_kept_out_of_the_fingerprint():
    from melanoma_data.config import auto_partition_size

    assert [auto_partition_size(n) for n in (1, 89, 1000, 10_000, 400_000)] == [8, 8, 32, 128, 128]
    assert PreprocessConfig().partitioning(89) == 8 and -(-89 // 8) == 12  # 12 partitions for 2 workers, not 1
    assert PreprocessConfig(partition_size=5).partitioning(89) == 5  # explicit: today's meaning
    # the derived default hashes as the 128 fingerprints were taken with; an explicit other size is hashed
    assert PreprocessConfig().fingerprint_dict() == PreprocessConfig(partition_size=128).fingerprint_dict()
    assert PreprocessConfig().fingerprint_dict() != PreprocessConfig(partition_size=5).fingerprint_dict()
    assert "partition_size" not in PreprocessConfig().to_dict()


@pytest.mark.slow
def test_derived_and_explicit_partitions_write_the_same_bytes_and_resume_by_the_recorded_layout(tiny_input,
                                                                                                tmp_path, monkeypatch):
    import errno

    from melanoma_data import shards

    cfg = PreprocessConfig.from_dict({"square": {"size": 32}, "shards": {"train_files": 3, "test_files": 1,
                                                                         "n_folds": 3}})
    auto = build.preprocess([str(tiny_input)], str(tmp_path / "auto"), cfg)
    assert auto.manifest["timings"]["partition_size"] == 8 and auto.manifest["timings"]["partitions"] == 3
    explicit = build.preprocess([str(tiny_input)], str(tmp_path / "explicit"),
                                PreprocessConfig.from_dict({**cfg.to_dict(), "partition_size": 5}))
    assert explicit.manifest["timings"]["partitions"] == 5
    want = [s["sha256"] for s in auto.manifest["shards"]]
    assert [s["sha256"] for s in explicit.manifest["shards"]] == want

    # a derived run cut in 8s dies after two partitions; partition_size=128 has the same fingerprint (the
    # default hashes as 128) and must resume by the recorded layout, not cut the records in 128s
    real, calls = shards.write_partition, []

    def third_fails(*args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kw)

    monkeypatch.setattr(shards, "write_partition", third_fails)
    with pytest.raises(build.OutputError, match="kept 2 of 3 partitions"):
        build.preprocess([str(tiny_input)], str(tmp_path / "resumed"), cfg)
    monkeypatch.setattr(shards, "write_partition", real)
    big = PreprocessConfig.from_dict({**cfg.to_dict(), "partition_size": 128})
    resumed = build.preprocess([str(tiny_input)], str(tmp_path / "resumed"), big)
    assert resumed.fingerprint == auto.fingerprint and resumed.manifest["timings"]["resumed_images"] == 16
    assert [s["sha256"] for s in resumed.manifest["shards"]] == want


@pytest.mark.slow
def test_the_progress_bar_moves_inside_a_partition(tiny_input, tmp_path, monkeypatch):
    import contextlib

    steps: list[int] = []

    @contextlib.contextmanager
    def recorder(show, total, done, console):
        yield steps.append

    monkeypatch.setattr(build, "_progress", recorder)
    cfg = PreprocessConfig.from_dict({"square": {"size": 32}, "partition_size": 24,
                                      "shards": {"train_files": 3, "test_files": 1, "n_folds": 3}})
    build.preprocess([str(tiny_input)], str(tmp_path / "eager"), cfg)
    assert steps == [16, 8]  # one partition of 24: a step after 16 images, the rest when it is committed
    steps.clear()
    build.preprocess([str(tiny_input)], str(tmp_path / "dask"), cfg, workers=1)
    assert sum(steps) == 24 and steps[0] < 24, steps  # the worker's report reached the client's bar first
