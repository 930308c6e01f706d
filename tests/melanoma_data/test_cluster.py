"""Real Dask clusters: a scheduler + workers started by address on loopback, dying workers, poison images."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from distributed.diagnostics.plugin import WorkerPlugin

from melanoma_data import build
from melanoma_data.config import PreprocessConfig
from melanoma_data.validate import validate_version
from tests.conftest import jpeg_bytes, write_generic

SMALL = PreprocessConfig.from_dict({"square": {"size": 64}, "partition_size": 4})
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def cluster_address(tmp_path):
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    log = (tmp_path / "cluster.log").open("w")
    procs = [subprocess.Popen([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", ":0"], env=env, stdout=subprocess.DEVNULL, stderr=log)]
    for _ in range(2):
        procs.append(subprocess.Popen([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--nworkers", "1",
                                       "--no-dashboard"], env=env, stdout=subprocess.DEVNULL, stderr=log))
    from distributed import Client

    deadline = time.time() + 60
    while True:
        try:
            with Client(address, timeout="5s") as c:
                c.wait_for_workers(2, timeout=30)
            break
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.5)
    yield address
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(20)
    log.close()


@pytest.mark.slow
def test_preprocess_on_existing_cluster_by_address(synthetic_kaggle, tmp_path, cluster_address):
    res = build.preprocess([str(synthetic_kaggle)], str(tmp_path / "out"), SMALL, scheduler=cluster_address)
    eager = build.preprocess([str(synthetic_kaggle)], str(tmp_path / "eager"), SMALL)
    assert validate_version(res.version_url)["counts"]["written"] == 24
    for part in sorted((Path(eager.version_url) / "parquet").iterdir()):
        assert (Path(res.version_url) / "parquet" / part.name).read_bytes() == part.read_bytes()


class _Sabotage(WorkerPlugin):
    """Worker plugin that makes one image kill its worker process (always, or only the first time)."""

    name = "sabotage"

    def __init__(self, image: str, marker: str | None = None) -> None:
        self.image, self.marker = image, marker

    def setup(self, worker) -> None:
        from melanoma_data import pipeline

        original = pipeline.process_image
        image, marker = self.image, self.marker

        def deadly(data, name, cfg, **kw):
            if name == image:
                if marker is None:
                    os._exit(1)
                if not os.path.exists(marker):
                    open(marker, "w").close()
                    os._exit(1)
            return original(data, name, cfg, **kw)

        pipeline.process_image = deadly

    def teardown(self, worker) -> None:
        pass


def _cluster_with(plugin):
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = Client(cluster)
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    client.register_plugin(plugin)
    return cluster, client


def _dataset(tmp_path, n=10) -> Path:
    return write_generic(tmp_path / "in", {f"ISIC_{i:07d}": jpeg_bytes(80, 60, seed=i) for i in range(n)})


@pytest.mark.slow
def test_worker_dying_once_is_retried(tmp_path):
    root = _dataset(tmp_path)
    cluster, client = _cluster_with(_Sabotage("ISIC_0000003", marker=str(tmp_path / "died-once")))
    try:
        res = build.preprocess([str(root)], str(tmp_path / "out"), SMALL, client=client)
    finally:
        client.close()
        cluster.close()
    assert (tmp_path / "died-once").exists()  # it really died
    assert res.manifest["counts"] == {"inputs": 10, "written": 10, "quarantined": 0}


@pytest.mark.slow
def test_poison_image_ends_in_quarantine(tmp_path):
    root = _dataset(tmp_path)
    cluster, client = _cluster_with(_Sabotage("ISIC_0000005"))
    try:
        res = build.preprocess([str(root)], str(tmp_path / "out"), SMALL, client=client)
    finally:
        client.close()
        cluster.close()
    q = pd.read_parquet(Path(res.version_url) / "quarantine.parquet")
    assert q[["image_name", "stage", "reason"]].values.tolist() == [["ISIC_0000005", "worker", "worker_crash"]]
    assert res.manifest["counts"] == {"inputs": 10, "written": 9, "quarantined": 1}
    validate_version(res.version_url)


@pytest.mark.parametrize("address", ["htp:/nowhere", "tcp://127.0.0.1:notaport"])
def test_a_malformed_scheduler_address_is_one_clear_error(tmp_path, address):
    from melanoma_data.errors import InputError

    inp = tmp_path / "in"
    write_generic(inp, {"a": jpeg_bytes(64, 48)})
    with pytest.raises(InputError, match="cannot connect to Dask scheduler"):
        build.preprocess([str(inp)], str(tmp_path / "out"), cfg=SMALL, scheduler=address)
    assert not list((tmp_path / "out").rglob("*.parquet"))
