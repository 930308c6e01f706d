"""The HTTP service over a real loopback connection: good uploads, every bad kind, a burst of concurrent requests."""

from __future__ import annotations

import concurrent.futures
import struct
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from melanoma_data import build, synth
from melanoma_data.config import PreprocessConfig
from melanoma_models import score
from melanoma_models.runner import fit

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi", reason="the `serve` extra is not installed (uv sync --extra serve)")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("keras")


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    from melanoma_models.serve import Service, create_app

    root = tmp_path_factory.mktemp("serve")
    synth.write_dataset(root / "in", n=30, layout="kaggle2020", seed=4, sizes=[(200, 150)], defects=0.2,
                        melanoma_rate=0.3, test_fraction=0.2, images_per_patient=2.0)
    cfg = PreprocessConfig.from_dict({"square": {"size": 32}, "partition_size": 40, "decode": {"max_bytes": 200_000},
                                      "shards": {"n_folds": 2, "train_files": 4, "test_files": 1}})
    version = build.preprocess([str(root / "in")], str(root / "out"), cfg).version_url
    run = fit("cnn", version, runs=root / "runs", sets={"arch": "small", "epochs": 1, "image_size": 32,
                                                        "batch_size": 4}).run_dir
    server = uvicorn.Server(uvicorn.Config(create_app(Service(run, workers=3)), host="127.0.0.1", port=0,
                                           log_level="warning", limit_max_requests=500))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the service did not start"
        time.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        yield {"client": client, "run": run, "root": root}
    server.should_exit = True
    thread.join(30)


def _image(service) -> Path:
    return sorted((service["root"] / "in" / "jpeg" / "test").glob("*.jpg"))[0]


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def test_health_and_a_good_upload_scores_as_the_raw_image_path(service, tmp_path):
    client = service["client"]
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["plugin"] == "cnn" and health["folds"] == 2
    path = _image(service)
    got = client.post("/predict", files={"image": (path.name, path.read_bytes(), "image/jpeg")})
    assert got.status_code == 200, got.text
    body = got.json()
    want = score.score_images(service["run"], [str(path)], tmp_path / "s.csv").scores["prediction"].iloc[0]
    assert body["probability"] == pytest.approx(want, abs=1e-6)
    assert body["decision"] == int(body["probability"] >= body["threshold"]) and "out-of-fold" in body["threshold_note"]
    assert {"hair_fraction", "vignette_detected"} <= set(body["measurements"]) and body["op_versions"]["hair"]
    assert "not a medical device" in body["notice"]


@pytest.mark.parametrize(("payload", "status", "reason"), [
    (b"", 422, "empty_file"),
    (b"these are not the pixels you are looking for", 422, "not_an_image"),
    (None, 422, "truncated"),
    (_png_claiming(60_000, 60_000), 413, "too_large"),
    (np.random.default_rng(0).bytes(300_000), 413, "too_large"),
])
def test_bad_uploads_get_the_pipelines_reason_and_the_service_keeps_serving(service, payload, status, reason):
    client = service["client"]
    if payload is None:
        good = _image(service).read_bytes()
        payload = good[: len(good) // 2]
    got = client.post("/predict", files={"image": ("x.jpg", payload, "image/jpeg")})
    assert got.status_code == status and got.json()["reason"] == reason, got.text
    assert client.get("/health").status_code == 200


def test_requests_without_an_image_are_refused(service):
    client = service["client"]
    assert client.post("/predict", data={"sex": "male"}).json()["reason"] == "no_image"
    assert client.post("/predict", content=b"plain body", headers={"content-type": "text/plain"}).status_code == 400


def test_a_burst_of_concurrent_requests_all_succeed_and_nothing_is_kept(service):
    client = service["client"]
    path = _image(service)
    before = {p.name for p in Path(tempfile.gettempdir()).glob("melanoma-serve-*")}

    def one(_):
        return client.post("/predict", files={"image": (path.name, path.read_bytes(), "image/jpeg")})

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(16)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers if a.status_code != 200]
    assert len({round(a.json()["probability"], 9) for a in answers}) == 1
    assert {p.name for p in Path(tempfile.gettempdir()).glob("melanoma-serve-*")} == before  # uploads not stored


def test_upload_page_shows_the_processed_image_score_and_explanation(service):
    client = service["client"]
    page = client.get("/")
    assert page.status_code == 200 and "not a medical device" in page.text and "type='file'" in page.text
    path = _image(service)
    shown = client.post("/", files={"image": (path.name, path.read_bytes(), "image/jpeg")})
    assert shown.status_code == 200 and "Grad-CAM" in shown.text and "data:image/png;base64," in shown.text
    bad = client.post("/", files={"image": ("x.jpg", b"", "image/jpeg")})
    assert bad.status_code == 422 and "empty_file" in bad.text
