"""The ``s3://`` path for real: a local S3-compatible server (moto's, on loopback) as input and output.

Object stores have no atomic rename: a version's files are written under temporary keys and copied to
their names, and ``manifest.json`` is written last; a run killed before it leaves a version that every
reader refuses as unfinished, and the same command finishes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from melanoma_data import dataset, synth
from melanoma_data.build import preprocess
from melanoma_data.config import PreprocessConfig
from melanoma_data.errors import InputError

s3fs = pytest.importorskip("s3fs", reason="the `cloud` extra is not installed (uv sync --extra cloud)")
moto_server = pytest.importorskip("moto.server", reason="moto[server] (dev group) is not installed")

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def s3():
    """An S3 endpoint on 127.0.0.1 and the environment that points boto/s3fs (and subprocesses) at it."""
    import fsspec

    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "FSSPEC_S3_ENDPOINT_URL": endpoint,  # fsspec's per-protocol default: every s3:// URL goes here
    }
    saved = {k: os.environ.get(k) for k in env}
    saved_conf = fsspec.config.conf.get("s3")
    os.environ.update(env)
    fsspec.config.conf["s3"] = {"endpoint_url": endpoint}
    fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    fs.mkdir("toolkit-test")
    try:
        yield fs
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if saved_conf is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = saved_conf


def _cli(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), *args]


def _images(version) -> dict[str, bytes]:
    frame = dataset.open_dataset(version).to_dask(images=True, columns=["image_name", "image"]).compute()
    return dict(zip(frame["image_name"], frame["image"], strict=True))


@pytest.mark.slow
def test_s3_in_and_out_killed_run_is_unfinished_then_resumes(s3, tmp_path):
    local = tmp_path / "in"
    synth.write_dataset(local, n=36, layout="kaggle2020", seed=21, sizes=[(800, 600)], defects=0.5)
    s3.put(str(local), "toolkit-test/in", recursive=True)
    ref = preprocess([str(local)], str(tmp_path / "ref"), PreprocessConfig.from_dict({"square": {"size": 64}}))
    want = _images(ref.version_url)

    cmd = _cli("preprocess", "s3://toolkit-test/in", "--out", "s3://toolkit-test/out", "--size", "64",
               "--partition-size", "2", "--workers", "1", "--no-progress")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 180
    summaries: list[str] = []
    while time.time() < deadline:
        s3.invalidate_cache()
        summaries = s3.glob("toolkit-test/out/in/*/_parts/summary-*.json")
        if len(summaries) >= 3:
            break
        assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()}"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    time.sleep(1.0)
    s3.invalidate_cache()
    (version_dir,) = {p.split("/_parts/")[0] for p in summaries}
    url = f"s3://{version_dir}"
    assert not s3.exists(f"{version_dir}/manifest.json")
    committed = len(s3.glob(f"{version_dir}/_parts/summary-*.json"))
    assert 3 <= committed < 18

    # no reader takes the killed run for a finished version
    with pytest.raises(InputError, match="unfinished run"):
        dataset.open_dataset(url)
    checked = subprocess.run(_cli("validate", url), capture_output=True, text=True, timeout=120)
    assert checked.returncode != 0 and "no manifest.json" in checked.stderr

    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    s3.invalidate_cache()
    doc = json.loads(s3.cat_file(f"{version_dir}/manifest.json"))
    assert doc["timings"]["resumed_images"] >= 2 * 3
    assert doc["counts"]["inputs"] == 36
    assert not [p for p in s3.find(version_dir) if ".tmp-" in p or "/_parts/" in p]

    checked = subprocess.run(_cli("validate", url), capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("ok ")
    # the same pixels as the local run from the same files
    assert _images(url) == want
    third = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and "already up to date" in third.stdout


def test_s3_owner_file_refuses_a_second_run_and_a_dead_owner_does_not_block(s3, tmp_path):
    """Object stores have no exclusive create: a fresh owner file refuses, one of a dead process is replaced."""
    import socket

    from melanoma_data import fsutil, ingest, manifest
    from melanoma_data.errors import OutputError
    from melanoma_data.ops import op_versions

    local = tmp_path / "lockin"
    synth.write_dataset(local, n=6, layout="kaggle2020", seed=2, sizes=[(120, 90)])
    cfg = PreprocessConfig.from_dict({"square": {"size": 32}, "shards": {"train_files": 1, "test_files": 1,
                                                                         "n_folds": 2}})
    fp = manifest.fingerprint(cfg.fingerprint_dict(), op_versions(), ingest.ingest([str(local)]).listing)
    lock_key = f"toolkit-test/locked/lockin/{fp}/{fsutil.LOCK_FILE}"

    mine = fsutil.OutputLock(s3, lock_key, "test").acquire()
    with pytest.raises(fsutil.LockHeld):
        fsutil.OutputLock(s3, lock_key).acquire()
    with pytest.raises(OutputError, match=f"being written by another run \\(pid {os.getpid()}"):
        preprocess([str(local)], "s3://toolkit-test/locked", cfg)
    mine.release()
    assert not s3.exists(lock_key)

    gone = subprocess.Popen(["true"])
    gone.wait()
    s3.pipe_file(lock_key, json.dumps({"host": socket.gethostname(), "pid": gone.pid}).encode())
    res = preprocess([str(local)], "s3://toolkit-test/locked", cfg)
    assert res.manifest["counts"]["inputs"] == 6
    s3.invalidate_cache()
    assert not s3.exists(lock_key)
