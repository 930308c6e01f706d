"""A trained run behind HTTP (FastAPI + uvicorn: ``uv sync --extra serve``), loaded once.

* ``POST /predict`` — multipart ``image`` (+ optional metadata fields ``sex``, ``age_approx``,
  ``anatom_site_general_challenge``, ``patient_id``): JSON with the probability (every fold model averaged),
  the decision at the run's operating threshold, the preprocessing measurements and the op versions.
* ``GET /`` — an upload page; ``POST /`` shows the processed image, the score and its explanation.
* ``GET /health``.

Each upload is preprocessed exactly as the run's training data was (the same pipeline and configuration
as ``predict --images``) in a temporary folder that is removed when the request ends: uploads are not
stored. Bad uploads get a 4xx answer with the pipeline's reason code (``empty_file``, ``not_an_image``,
``truncated``, ``too_large``, ...) and the service keeps serving. Requests are scored in a pool of
``workers`` threads; the models' own prediction calls are serialised.
"""

# no "from __future__ import annotations": FastAPI reads the endpoints' annotations (Request) at runtime

import asyncio
import base64
import concurrent.futures
import dataclasses
import html
import json
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melanoma_data import build
from melanoma_data.dataset import open_dataset
from melanoma_data.errors import InputError
from melanoma_data.ops import op_versions
from melanoma_models.explain import NOTICE, _bars, _fmt, _overlay, png, reasons
from melanoma_models.metrics import apply_calibration
from melanoma_models.rundir import read_calibration
from melanoma_models.score import METADATA_NEEDED, _predict_version, loaded, measurements, scoring_config

FIELDS = ["sex", "age_approx", "anatom_site_general_challenge", "patient_id"]


class Rejected(Exception):
    """An upload the service answers with a 4xx: HTTP status, the pipeline's reason code and a detail."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.status, self.reason, self.detail = status, reason, detail


@dataclasses.dataclass
class Scored:
    """One upload's result."""

    answer: dict[str, Any]
    processed: np.ndarray
    why: dict[str, Any]


class Service:
    """The run, its preprocessing configuration and threshold, loaded once; :meth:`score` per upload."""

    def __init__(self, run: str | Path, workers: int = 2, allow_version_mismatch: bool = False) -> None:
        self.run = Path(run)
        self.cache: dict = {}
        self.cfg, self.cls, self.models = loaded(self.run, self.cache)
        self.config, self.target = scoring_config(self.run, self.cfg, allow_version_mismatch, lambda msg: None)
        self.max_bytes = self.config.decode.max_bytes
        metrics = json.loads((self.run / "metrics.json").read_text()) if (self.run / "metrics.json").exists() else {}
        self.threshold = float((metrics.get("at_threshold") or {}).get("threshold", 0.5))
        self.threshold_rule = metrics.get("threshold_rule", "0.5")
        self.calibration = read_calibration(self.run)
        self.ops = op_versions()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="score")
        self.lock = threading.Lock()

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "run": self.run.name, "plugin": self.cfg["plugin"], "folds": len(self.models),
                "target": self.target, "threshold": self.threshold}

    def score(self, data: bytes, filename: str, fields: dict[str, str], explain: bool = False) -> Scored:
        """Preprocess and score one upload (in a temporary folder, removed at once)."""
        if len(data) > self.max_bytes:
            raise Rejected(413, "too_large", f"{len(data):,} bytes, above the limit of {self.max_bytes:,}")
        if "metadata" in self.cls.needs:
            missing = [c for c in METADATA_NEEDED if not str(fields.get(c) or "").strip()]
            if missing:
                raise Rejected(422, "missing_metadata",
                               f"plugin {self.cfg['plugin']!r} needs the field(s) {', '.join(missing)}")
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(filename or "upload").stem)[:100] or "upload"
        ext = Path(filename or "").suffix.lower()
        ext = ext if re.fullmatch(r"\.[a-z0-9]{2,5}", ext) else ".jpg"
        with tempfile.TemporaryDirectory(prefix="melanoma-serve-") as tmp:
            root = Path(tmp) / "in"
            (root / "images").mkdir(parents=True)
            (root / "images" / f"{stem}{ext}").write_bytes(data)
            row = {"image_name": stem, **{k: v for k, v in fields.items() if k in FIELDS and str(v).strip()}}
            pd.DataFrame([row]).to_csv(root / "metadata.csv", index=False)
            res = build.preprocess([str(root)], str(Path(tmp) / "out"), self.config, name="upload", workers=0,
                                   target=self.target)
            version = open_dataset(res.version_url)
            q = version.quarantine()
            if len(q):
                reason, detail = str(q["reason"].iloc[0]), str(q["detail"].iloc[0])
                raise Rejected(413 if reason == "too_large" else 422, reason, detail)
            with self.lock:
                preds = _predict_version(self.run, version, lambda msg: None, self.cache)
                why = reasons(self.run, version, self.cache).get(stem, {}) if explain else {}
            table = measurements(version, preds)
            batch = next(version.iter_batches("test", batch_size=1, columns=("image_name",)))
        facts = {k: (None if pd.isna(v) else (v.item() if hasattr(v, "item") else v))
                 for k, v in table.iloc[0].items() if k not in ("image_name", "prediction")}
        p = float(table["prediction"].iloc[0])
        answer = {"image_name": stem, "probability": p, "target": self.target,
                  "decision": int(p >= self.threshold), "threshold": self.threshold,
                  "threshold_note": (f"chosen on the run's out-of-fold scores ({self.threshold_rule}), applied to "
                                     "the average of the fold models' scores"),
                  "measurements": facts, "op_versions": self.ops, "run": self.run.name,
                  "notice": NOTICE}
        if self.calibration is not None:
            answer["prediction_calibrated"] = float(apply_calibration(self.calibration, np.array([p]))[0])
            answer["calibration_note"] = (f"probability: the raw score (fold models averaged; the threshold applies "
                                          f"to it); prediction_calibrated: that score through the run's "
                                          f"{self.calibration['method']} calibration, fitted on out-of-fold scores")
        return Scored(answer, batch["image"][0], why)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


PAGE = """<!doctype html><html><head><meta charset='utf-8'><title>melanoma toolkit</title><style>body{{font-family:
sans-serif;max-width:900px;margin:1em auto}}.notice{{background:#fff3cd;padding:6px;border:1px solid #e0c36a}}
label{{display:inline-block;min-width:14em}}img{{max-width:100%}}td,th{{border:1px solid #ccc;padding:2px 6px}}
</style></head><body><p class='notice'>{notice}</p><h1>Score a dermoscopy image</h1><p>run <code>{run}</code>
({plugin}, {folds} fold models averaged; decision threshold {threshold:.3f}, chosen on out-of-fold scores)</p>
<form method='post' action='/' enctype='multipart/form-data'><p><input type='file' name='image' accept='image/*'
required></p><p><label>sex</label><select name='sex'><option></option><option>female</option><option>male</option>
</select></p><p><label>age</label><input name='age_approx' type='number' min='0' max='120'></p><p><label>site
</label><input name='anatom_site_general_challenge' placeholder='torso, head/neck, ...'></p><p><label>patient id
</label><input name='patient_id'></p><p><button type='submit'>score</button></p></form>{result}</body></html>"""


def create_app(service: Service) -> Any:
    """The FastAPI application of ``service``."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse

    app = FastAPI(title="melanoma toolkit", description=NOTICE)

    async def read_upload(request: Request) -> tuple[bytes, str, dict[str, str]] | JSONResponse:
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > service.max_bytes + 65536:
            return JSONResponse({"reason": "too_large", "detail": f"request of {int(length):,} bytes, above the "
                                 f"limit of {service.max_bytes:,}"}, status_code=413)
        try:
            form = await request.form(max_files=1, max_fields=20)
        except Exception as exc:  # a body that is not multipart
            return JSONResponse({"reason": "bad_request", "detail": str(exc)[:200]}, status_code=400)
        upload = form.get("image")
        if upload is None or isinstance(upload, str):
            return JSONResponse({"reason": "no_image", "detail": "send the image as the multipart field 'image'"},
                                status_code=400)
        data = await upload.read(service.max_bytes + 1)
        fields = {k: str(v) for k, v in form.items() if k != "image" and isinstance(v, str)}
        return data, upload.filename or "upload", fields

    async def run(data: bytes, name: str, fields: dict[str, str], explain: bool) -> Scored:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(service.pool, service.score, data, name, fields, explain)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return service.health()

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        got = await read_upload(request)
        if isinstance(got, JSONResponse):
            return got
        try:
            return (await run(*got, False)).answer
        except Rejected as exc:
            return JSONResponse({"reason": exc.reason, "detail": exc.detail}, status_code=exc.status)

    def page(result: str = "") -> str:
        h = service.health()
        return PAGE.format(notice=html.escape(NOTICE), run=html.escape(h["run"]), plugin=html.escape(h["plugin"]),
                           folds=h["folds"], threshold=h["threshold"], result=result)

    @app.get("/", response_class=HTMLResponse)
    def upload_page() -> str:
        return page()

    @app.post("/", response_class=HTMLResponse)
    async def upload_result(request: Request) -> Any:
        got = await read_upload(request)
        if isinstance(got, JSONResponse):
            body = json.loads(got.body)
            return HTMLResponse(page(f"<h2>Not scored: {html.escape(body['reason'])}</h2><p>"
                                     f"{html.escape(body['detail'])}</p>"), status_code=got.status_code)
        try:
            scored = await run(*got, True)
        except Rejected as exc:
            return HTMLResponse(page(f"<h2>Not scored: {html.escape(exc.reason)}</h2><p>{html.escape(exc.detail)}"
                                     "</p>"), status_code=exc.status)
        a = scored.answer
        parts = [f"<h2>{html.escape(a['image_name'])}: {a['probability']:.3f} "
                 f"({'above' if a['decision'] else 'below'} the threshold {a['threshold']:.3f})</h2>",
                 f"<p>{html.escape(a['threshold_note'])}</p>"]
        if "prediction_calibrated" in a:
            parts.append(f"<p>calibrated probability: <b>{a['prediction_calibrated']:.3f}</b> "
                         f"({html.escape(a['calibration_note'])})</p>")
        why = scored.why
        if "heatmap" in why:
            parts.append("<h3>Processed image and Grad-CAM</h3>"
                         f"<img src='{_data_uri(png(_overlay(scored.processed, why['heatmap'])))}'>")
        else:
            parts.append(f"<h3>Processed image</h3><img src='{_data_uri(png(scored.processed))}' width='256'>")
        if "contributions" in why:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "bars.png"
                _bars(why["contributions"], why["bias"], a["probability"], path, 12)
                parts.append(f"<h3>Top feature contributions</h3><img src='{_data_uri(path.read_bytes())}'>")
        if "weights" in why:
            rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{why['base_scores'][k]:.3f}</td><td>{w:.3f}</td></tr>"
                           for k, w in why["weights"].items())
            parts.append(f"<h3>Stack</h3><table><tr><th>base run</th><th>score</th><th>weight</th></tr>{rows}</table>")
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>"
                       for k, v in a["measurements"].items())
        parts.append(f"<h3>Measurements</h3><table>{rows}</table>")
        return HTMLResponse(page("".join(parts)))

    return app


def serve(run: str | Path, host: str = "127.0.0.1", port: int = 8000, workers: int = 2,
          allow_version_mismatch: bool = False) -> None:
    """Load the run and serve it until interrupted."""
    try:
        import uvicorn
    except ImportError as exc:
        raise InputError(f"serve needs FastAPI and uvicorn, an optional extra: uv sync --extra serve ({exc})") from None
    service = Service(run, workers, allow_version_mismatch)
    uvicorn.run(create_app(service), host=host, port=port, log_level="warning")
