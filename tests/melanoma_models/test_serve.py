"""The HTTP service over a real loopback connection: good uploads, every bad kind, a burst of concurrent requests."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import select
import socket
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from melanoma_data import build, synth
from melanoma_data.config import PreprocessConfig
from melanoma_models import score
from melanoma_models.runner import fit
from tests.conftest import serving

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi", reason="the `serve` extra is not installed (uv sync --extra serve)")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("keras")


@pytest.fixture(scope="module")
def service(tmp_path_factory):

    root = tmp_path_factory.mktemp("serve")
    synth.write_dataset(root / "in", n=30, layout="kaggle2020", seed=4, sizes=[(200, 150)], defects=0.2,
                        melanoma_rate=0.3, test_fraction=0.2, images_per_patient=2.0)
    cfg = PreprocessConfig.from_dict({"square": {"size": 32}, "partition_size": 40, "decode": {"max_bytes": 200_000},
                                      "shards": {"n_folds": 2, "train_files": 4, "test_files": 1}})
    version = build.preprocess([str(root / "in")], str(root / "out"), cfg).version_url
    run = fit("cnn", version, runs=root / "runs", sets={"arch": "small", "epochs": 1, "image_size": 32,
                                                        "batch_size": 4}).run_dir
    with serving(run, workers=3) as port, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
        yield {"client": client, "run": run, "root": root, "port": port}


def _image(service) -> Path:
    return sorted((service["root"] / "in" / "jpeg" / "test").glob("*.jpg"))[0]


def _png_claiming(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


@pytest.mark.slow
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
@pytest.mark.slow
def test_bad_uploads_get_the_pipelines_reason_and_the_service_keeps_serving(service, payload, status, reason):
    client = service["client"]
    if payload is None:
        good = _image(service).read_bytes()
        payload = good[: len(good) // 2]
    got = client.post("/predict", files={"image": ("x.jpg", payload, "image/jpeg")})
    assert got.status_code == status and got.json()["reason"] == reason, got.text
    assert client.get("/health").status_code == 200


@pytest.mark.slow
def test_requests_without_an_image_are_refused(service):
    client = service["client"]
    assert client.post("/predict", data={"sex": "male"}).json()["reason"] == "no_image"
    assert client.post("/predict", content=b"plain body", headers={"content-type": "text/plain"}).status_code == 400


@pytest.mark.slow
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


@pytest.mark.slow
def test_upload_page_shows_the_processed_image_score_and_explanation(service):
    client = service["client"]
    page = client.get("/")
    assert page.status_code == 200 and "not a medical device" in page.text and "type='file'" in page.text
    path = _image(service)
    shown = client.post("/", files={"image": (path.name, path.read_bytes(), "image/jpeg")})
    assert shown.status_code == 200 and "Grad-CAM" in shown.text and "data:image/png;base64," in shown.text
    bad = client.post("/", files={"image": ("x.jpg", b"", "image/jpeg")})
    assert bad.status_code == 422 and "empty_file" in bad.text


def _chunked_upload(port: int, path: str, total: int) -> tuple[int, bytes]:
    """POST a multipart image of ``total`` bytes with ``Transfer-Encoding: chunked`` (no Content-Length) over a
    raw socket, until the server answers; the bytes sent by then and the answer."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
            "Content-Type: multipart/form-data; boundary=xyz\r\n\r\n").encode()
    part = (b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n")
    block = np.random.default_rng(1).bytes(65536)
    sock.sendall(head + b"%x\r\n%s\r\n" % (len(part), part))
    sent, answer = len(part), b""
    try:
        while sent < total:
            if select.select([sock], [], [], 0)[0]:
                break  # the server has answered (or closed) before the body was complete
            sock.sendall(b"%x\r\n%s\r\n" % (len(block), block))
            sent += len(block)
        else:
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    try:
        while chunk := sock.recv(65536):
            answer += chunk
            if b"\r\n\r\n" in answer and len(answer) > answer.index(b"\r\n\r\n") + 4:
                break
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    return sent, answer


@pytest.mark.parametrize("path", ["/predict", "/"])
@pytest.mark.slow
def test_a_chunked_upload_past_the_limit_is_refused_as_it_arrives(service, path):
    total = 64 * 1024 * 1024  # 320 times the run's 200 kB image limit
    sent, answer = _chunked_upload(service["port"], path, total)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:300]
    assert b"too_large" in answer
    # answered while the body was still arriving: the server stopped reading near the limit (what was sent beyond
    # it sits in the loopback socket buffers: 0.9 MB measured), it did not spool the 64 MB
    assert sent < total // 8, sent
    assert service["client"].get("/health").status_code == 200


@pytest.mark.slow
def test_a_chunked_upload_within_the_limit_is_scored(service, monkeypatch):
    from melanoma_models import serve

    monkeypatch.setattr(serve, "SPOOL_IN_MEMORY", 4096)  # the body rolls over from memory to a temporary file
    path = _image(service)
    data = path.read_bytes()

    def body():
        for i in range(0, len(data), 1000):
            yield data[i:i + 1000]

    boundary = b"--b0undary"
    head = (boundary + b'\r\nContent-Disposition: form-data; name="image"; filename="' + path.name.encode()
            + b'"\r\nContent-Type: image/jpeg\r\n\r\n')

    def multipart():
        yield head
        yield from body()
        yield b"\r\n" + boundary + b'\r\nContent-Disposition: form-data; name="sex"\r\n\r\nfemale\r\n'
        yield boundary + b"--\r\n"

    got = service["client"].post("/predict", content=multipart(),
                                 headers={"content-type": "multipart/form-data; boundary=b0undary"})
    assert got.status_code == 200, got.text
    want = service["client"].post("/predict", files={"image": (path.name, data, "image/jpeg")}, data={"sex": "female"})
    assert got.json()["probability"] == pytest.approx(want.json()["probability"], abs=1e-9)


@pytest.mark.parametrize(("fields", "field", "says"), [
    ({"patient_id": "P\x001"}, "patient_id", "control character"),
    ({"sex": "fe\nmale"}, "sex", "control character"),
    ({"anatom_site_general_challenge": "torso\x1b[31m"}, "anatom_site_general_challenge", "control character"),
    ({"patient_id": "P" * 65}, "patient_id", "above the limit of 64"),
    ({"age_approx": "fifty"}, "age_approx", "must be a number"),
    ({"age_approx": "nan"}, "age_approx", "between 0 and 120"),
    ({"age_approx": "-5"}, "age_approx", "between 0 and 120"),
    ({"age_approx": "1e9"}, "age_approx", "between 0 and 120"),
    ({"sex": "robot"}, "sex", "must be one of female, male"),
    ({"anatom_site_general_challenge": "elbow"}, "anatom_site_general_challenge", "must be one of"),
    ({"colour": "red"}, "colour", "unknown field"),
])
@pytest.mark.slow
def test_a_malformed_field_is_a_422_naming_it(service, fields, field, says):
    client = service["client"]
    path = _image(service)
    for url in ("/predict", "/"):
        got = client.post(url, files={"image": (path.name, path.read_bytes(), "image/jpeg")}, data=fields)
        assert got.status_code == 422, got.text
        if url == "/predict":
            body = got.json()
            assert body["reason"] == "bad_field" and body["field"] == field and says in body["detail"], body
        else:
            assert "bad_field" in got.text and says in got.text
    assert client.get("/health").status_code == 200


@pytest.mark.slow
def test_a_nul_byte_in_a_raw_field_name_or_value_is_a_422_naming_it(service):
    data = _image(service).read_bytes()
    for name, value, field in ((b"sex", b"fe\x00male", "sex"), (b"se\x00x", b"male", "se\\x00x")):
        body = (b'--bb\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n'
                b"Content-Type: image/jpeg\r\n\r\n" + data + b'\r\n--bb\r\nContent-Disposition: form-data; name="'
                + name + b'"\r\n\r\n' + value + b"\r\n--bb--\r\n")
        got = service["client"].post("/predict", content=body,
                                     headers={"content-type": "multipart/form-data; boundary=bb"})
        assert got.status_code == 422 and got.json()["field"] == field, got.text


@pytest.mark.slow
def test_repeated_fields_and_fields_sent_as_files_are_422(service):
    client = service["client"]
    path = _image(service)
    image = ("image", (path.name, path.read_bytes(), "image/jpeg"))
    twice = client.post("/predict", files=[image, ("sex", (None, "male")), ("sex", (None, "female"))])
    assert twice.status_code == 422 and twice.json()["field"] == "sex" and "more than once" in twice.json()["detail"]
    as_file = client.post("/predict", files=[image, ("patient_id", ("p.txt", b"P1", "text/plain"))])
    assert as_file.status_code == 422 and as_file.json()["field"] == "patient_id", as_file.text
    ok = client.post("/predict", files=[image], data={"sex": "Female", "age_approx": "55",
                                                      "anatom_site_general_challenge": "Anterior Torso"})
    assert ok.status_code == 200, ok.text


@pytest.mark.slow
def test_each_request_writes_one_access_log_line_without_the_upload_or_its_fields(service, caplog):
    client = service["client"]
    path = _image(service)
    data = path.read_bytes()
    with caplog.at_level(logging.INFO, logger="melanoma.serve.access"):
        ok = client.post("/predict?patient=secret-q", files={"image": (path.name, data, "image/jpeg")},
                         data={"patient_id": "SECRET-PATIENT-7"})
        client.post("/predict", files={"image": ("x.jpg", b"", "image/jpeg")})
        client.get("/health")
    lines = [r.getMessage() for r in caplog.records if r.name == "melanoma.serve.access"]
    assert len(lines) == 3, lines
    method, url, status, got, sent, ms = lines[0].split()
    assert (method, url, status) == ("POST", "/predict", "200")
    assert int(got[3:-1]) > len(data) and int(sent[4:-1]) == len(ok.content) and ms.endswith("ms")
    assert lines[1].split()[:3] == ["POST", "/predict", "422"] and lines[2].split()[:3] == ["GET", "/health", "200"]
    text = "\n".join(lines)
    assert "SECRET" not in text and "secret" not in text and path.stem not in text


@pytest.mark.slow
def test_health_reports_the_runs_operating_point(service):
    health = service["client"].get("/health").json()
    metrics = json.loads((service["run"] / "metrics.json").read_text())["at_threshold"]
    assert (health["sensitivity"], health["specificity"]) == (metrics["sensitivity"], metrics["specificity"])
    page = service["client"].get("/").text
    assert f"{metrics['sensitivity']:.0%}" in page and "(sensitivity)" in page and "(specificity)" in page


def test_form_fields_are_checked_without_a_service():
    """The fast loop's serve test: the field checks alone (no run, no server)."""
    from melanoma_models.serve import Rejected, check_fields

    assert check_fields([("sex", "Female"), ("age_approx", "45")]) == {"sex": "female", "age_approx": "45"}
    bad = [([("sex", "fe\x00male")], "sex"), ([("age_approx", "nan")], "age_approx"),
           ([("age_approx", "1e9")], "age_approx"), ([("nope", "x")], "nope"),
           ([("sex", "male"), ("sex", "male")], "sex")]
    for items, field in bad:
        with pytest.raises(Rejected) as caught:
            check_fields(items)
        assert (caught.value.status, caught.value.reason, caught.value.field) == (422, "bad_field", field)
