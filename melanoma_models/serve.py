"""A trained run behind HTTP (FastAPI + uvicorn, the ``serve`` extra: ``uv sync --all-extras``), loaded once.

* ``POST /predict`` — multipart ``image`` (+ optional metadata fields ``sex``, ``age_approx``,
  ``anatom_site_general_challenge``, ``patient_id``): JSON with the probability (every fold model averaged),
  the decision at the run's operating threshold, the preprocessing measurements and the op versions.
* ``GET /`` — an upload page; ``POST /`` shows the processed image, the score and its explanation.
* ``GET /health``.

A two-view run (a plugin declaring ``views``, e.g. ``twoview``) scores a lesion: the form's files are
``dermoscopic`` and ``clinical`` (both required when the run was trained on pairs: a lone ``image`` is a 400
``needs_pair``), and the answer is the lesion's probability with each view's measurements (and, on the page,
each view's processed image and Grad-CAM).

Each upload is preprocessed exactly as the run's training data was (the same pipeline and configuration
as ``predict --images``) in a temporary folder that is removed when the request ends: uploads are not
stored. Bad uploads get a 4xx answer with the pipeline's reason code (``empty_file``, ``not_an_image``,
``truncated``, ``too_large``, ...) and the service keeps serving. Requests are scored in a pool of
``workers`` threads; the models' own prediction calls are serialised.

Limits, checked before anything is preprocessed: the request body is counted as it arrives (with or without
``Content-Length``, chunked or not) and refused with 413 ``too_large`` once it passes the image limit
(``decode.max_bytes`` of the run's preprocessing) plus :data:`FORM_OVERHEAD`; every form field is checked
(:func:`check_fields`) and a malformed one is a 422 ``bad_field`` naming it. Each request writes one access-log
line (method, path, status, bytes in and out, milliseconds) to the ``melanoma.serve.access`` logger, never the
upload's content or its field values.
"""

# no "from __future__ import annotations": FastAPI reads the endpoints' annotations (Request) at runtime

import asyncio
import base64
import concurrent.futures
import dataclasses
import html
import json
import logging
import math
import re
import tempfile
import threading
import time
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melanoma_data import build
from melanoma_data.dataset import open_dataset
from melanoma_data.errors import InputError
from melanoma_data.ingest import SITE_MAP
from melanoma_data.ops import op_versions
from melanoma_models.explain import NOTICE, _bars, _fmt, _overlay, png, reasons
from melanoma_models.explanation import ContributionRow, HeatmapRow, StackRow
from melanoma_models.metrics import apply_calibration
from melanoma_models.rundir import read_calibration
from melanoma_models.score import (
    METADATA_NEEDED,
    VIEW_IMAGE_TYPES,
    _predict_version,
    loaded,
    measurements,
    needs_pairs,
    scoring_config,
)

FIELDS = ["sex", "age_approx", "anatom_site_general_challenge", "patient_id"]
#: Bytes a request may carry beyond the image itself (multipart headers, boundaries, the metadata fields).
FORM_OVERHEAD = 65536
#: The longest value a metadata field may have (characters).
MAX_FIELD_CHARS = 64
SEXES = ("female", "male")
ACCESS_LOG = logging.getLogger("melanoma.serve.access")



def _upload_name(filename: str | None, limit: int) -> tuple[str, str]:
    """A safe file stem (at most ``limit`` characters of ``[A-Za-z0-9_.-]``) and image suffix for an upload."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(filename or "upload").stem)[:limit] or "upload"
    ext = Path(filename or "").suffix.lower()
    return stem, ext if re.fullmatch(r"\.[a-z0-9]{2,5}", ext) else ".jpg"


def _given(fields: dict[str, str]) -> dict[str, str]:
    """The form's metadata fields the toolkit reads, blank ones left out."""
    return {k: v for k, v in fields.items() if k in FIELDS and str(v).strip()}

class Rejected(Exception):
    """An upload the service answers with a 4xx: HTTP status, the pipeline's reason code, a detail and the
    offending form field (``None`` when the problem is not one field's)."""

    def __init__(self, status: int, reason: str, detail: str, field: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.status, self.reason, self.detail, self.field = status, reason, detail, field

    def body(self) -> dict[str, Any]:
        """The JSON answer."""
        return {"reason": self.reason, "detail": self.detail, **({"field": self.field} if self.field else {})}


def _shown(name: str) -> str:
    """A client-chosen name made safe to echo: control characters escaped, at most 40 characters."""
    return ascii(name[:40])[1:-1]


def check_fields(items: list[tuple[str, Any]]) -> dict[str, str]:
    """The metadata fields of an upload's form, validated; blank values dropped.

    Args:
        items: the form's (name, value) pairs other than ``image``, in order (repeated names included).

    Returns:
        Field name → the value as the preprocessing expects it (``sex`` and the site lower case, the age a
        number in text).

    Raises:
        Rejected: 422 ``bad_field`` naming the first malformed field: an unknown or repeated name, a file where
            text belongs, control characters (NUL, line breaks, ...), more than :data:`MAX_FIELD_CHARS`
            characters, an age that is not a number in [0, 120], a sex or site outside the vocabulary.
    """
    out: dict[str, str] = {}
    seen: set[str] = set()
    for name, value in items:
        shown = _shown(name)
        if name not in FIELDS:
            raise Rejected(422, "bad_field", f"unknown field {shown!r}; the fields are image, {', '.join(FIELDS)}",
                           shown)
        if name in seen:
            raise Rejected(422, "bad_field", f"field {name!r} is sent more than once", name)
        seen.add(name)
        if not isinstance(value, str):
            raise Rejected(422, "bad_field", f"field {name!r} must be text, not a file", name)
        if len(value) > MAX_FIELD_CHARS:
            raise Rejected(422, "bad_field", f"field {name!r} has {len(value):,} characters, above the limit of "
                           f"{MAX_FIELD_CHARS}", name)
        bad = next((c for c in value if unicodedata.category(c) in ("Cc", "Cs")), None)
        if bad is not None:
            raise Rejected(422, "bad_field", f"field {name!r} contains the control character {bad!r}", name)
        value = value.strip()
        if not value:
            continue
        if name == "age_approx":
            try:
                age = float(value)
            except ValueError:
                raise Rejected(422, "bad_field", f"field 'age_approx' must be a number of years, got "
                               f"{_shown(value)!r}", name) from None
            if not (math.isfinite(age) and 0 <= age <= 120):
                raise Rejected(422, "bad_field", f"field 'age_approx' must be between 0 and 120, got {age:g}", name)
        elif name == "sex":
            value = value.lower()
            if value not in SEXES:
                raise Rejected(422, "bad_field", f"field 'sex' must be one of {', '.join(SEXES)}, got "
                               f"{_shown(value)!r}", name)
        elif name == "anatom_site_general_challenge":
            value = value.lower()
            if value not in SITE_MAP:
                sites = sorted(set(SITE_MAP.values()))
                raise Rejected(422, "bad_field", f"field 'anatom_site_general_challenge' must be one of "
                               f"{', '.join(sites)}, got {_shown(value)!r}", name)
        out[name] = value
    return out


@dataclasses.dataclass
class Scored:
    """One upload's result."""

    answer: dict[str, Any]
    processed: np.ndarray
    why: HeatmapRow | ContributionRow | StackRow | None  # the image's explanation row, when asked for and given
    #: a two-view run's lesion: each view's processed image and explanation row
    views: dict[str, tuple[np.ndarray, Any]] | None = None


class Service:
    """The run, its preprocessing configuration and threshold, loaded once; :meth:`score` per upload."""

    def __init__(self, run: str | Path, workers: int = 2, allow_version_mismatch: bool = False) -> None:
        self.run = Path(run)
        self.cache: dict = {}
        self.cfg, self.cls, self.models = loaded(self.run, self.cache)
        self.config, self.target = scoring_config(self.run, self.cfg, allow_version_mismatch, lambda msg: None)
        self.max_bytes = self.config.decode.max_bytes
        metrics = json.loads((self.run / "metrics.json").read_text()) if (self.run / "metrics.json").exists() else {}
        at = metrics.get("at_threshold") or {}
        self.threshold = float(at.get("threshold", 0.5))
        self.threshold_rule = metrics.get("threshold_rule", "0.5")
        #: the run's out-of-fold sensitivity and specificity at the threshold (None where metrics lack them)
        self.sensitivity, self.specificity = at.get("sensitivity"), at.get("specificity")
        self.calibration = read_calibration(self.run)
        self.ops = op_versions()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="score")
        self.lock = threading.Lock()
        #: a two-view run's views (its uploads are a lesion's files, one per view), empty for one-image runs
        self.views: tuple[str, ...] = tuple(getattr(self.cls, "views", ()))
        #: whether both views are required (the run was trained on pairs)
        self.pairs = bool(self.views) and needs_pairs(self.models)

    def health(self) -> dict[str, Any]:
        out = {"status": "ok", "run": self.run.name, "plugin": self.cfg.plugin, "folds": len(self.models),
               "target": self.target, "threshold": self.threshold, "sensitivity": self.sensitivity,
               "specificity": self.specificity}
        if self.views:
            out.update(views=list(self.views), needs_pair=self.pairs)
        return out

    def threshold_meaning(self) -> str:
        """What the threshold means, in one sentence a person can act on."""
        text = (f"The threshold {self.threshold:.3f} was chosen on the run's out-of-fold scores "
                f"({self.threshold_rule}).")
        if self.sensitivity is not None and self.specificity is not None:
            text += (f" There, out of fold, the run flagged {self.sensitivity:.0%} of the {self.target} cases "
                     f"(sensitivity) and passed {self.specificity:.0%} of the others (specificity).")
        return text

    def _check_fields(self, fields: dict[str, str]) -> None:
        """A plugin that reads metadata gets the fields it needs, or the upload is refused (422)."""
        if "metadata" in self.cls.needs:
            missing = [c for c in METADATA_NEEDED if not str(fields.get(c) or "").strip()]
            if missing:
                raise Rejected(422, "missing_metadata",
                               f"plugin {self.cfg.plugin!r} needs the field(s) {', '.join(missing)}")

    def _preprocess(self, tmp: Path, images: dict[str, bytes], rows: list[dict[str, Any]]) -> tuple[Any, pd.DataFrame]:
        """An upload as a one-off dataset version under ``tmp`` (its images and metadata rows, the run's
        preprocessing config): the version and its quarantine table."""
        root = tmp / "in"
        (root / "images").mkdir(parents=True)
        for name, data in images.items():
            (root / "images" / name).write_bytes(data)
        pd.DataFrame(rows).to_csv(root / "metadata.csv", index=False)
        res = build.preprocess([str(root)], str(tmp / "out"), self.config, name="upload", workers=0,
                               target=self.target)
        version = open_dataset(res.version_url)
        return version, version.quarantine()

    def score(self, data: bytes, filename: str, fields: dict[str, str], explain: bool = False) -> Scored:
        """Preprocess and score one upload (in a temporary folder, removed at once)."""
        if len(data) > self.max_bytes:
            raise Rejected(413, "too_large", f"{len(data):,} bytes, above the limit of {self.max_bytes:,}")
        self._check_fields(fields)
        stem, ext = _upload_name(filename, 100)
        with tempfile.TemporaryDirectory(prefix="melanoma-serve-") as tmp:
            version, q = self._preprocess(Path(tmp), {f"{stem}{ext}": data}, [{"image_name": stem, **_given(fields)}])
            if len(q):
                reason, detail = str(q["reason"].iloc[0]), str(q["detail"].iloc[0])
                raise Rejected(413 if reason == "too_large" else 422, reason, detail)
            with self.lock:
                preds = _predict_version(self.run, version, lambda msg: None, self.cache)
                why = reasons(self.run, version, self.cache).get(stem) if explain else None
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


    def score_lesion(self, files: dict[str, tuple[bytes, str]], fields: dict[str, str],
                     explain: bool = False) -> Scored:
        """Preprocess and score one lesion of a two-view run (``files``: view → (bytes, file name)), in a
        temporary folder removed at once; a bad file's :class:`Rejected` names its view's field."""
        for view, (data, _) in files.items():
            if len(data) > self.max_bytes:
                raise Rejected(413, "too_large", f"{view}: {len(data):,} bytes, above the limit of "
                               f"{self.max_bytes:,}", view)
        self._check_fields(fields)
        names: dict[str, str] = {}
        images: dict[str, bytes] = {}
        rows = []
        for view, (data, filename) in files.items():
            stem, ext = _upload_name(filename, 90)
            names[view] = f"{view}_{stem}"
            images[f"{names[view]}{ext}"] = data
            rows.append({"image_name": names[view], "lesion_id": "upload", "image_type": VIEW_IMAGE_TYPES[view],
                         **_given(fields)})
        with tempfile.TemporaryDirectory(prefix="melanoma-serve-") as tmp:
            version, q = self._preprocess(Path(tmp), images, rows)
            if len(q):
                reason, detail = str(q["reason"].iloc[0]), str(q["detail"].iloc[0])
                bad = next((v for v, n in names.items() if n in str(q["image_name"].iloc[0])), None)
                raise Rejected(413 if reason == "too_large" else 422, reason, f"{bad or 'upload'}: {detail}", bad)
            with self.lock:
                preds = _predict_version(self.run, version, lambda msg: None, self.cache)
                why = reasons(self.run, version, self.cache) if explain else {}
            table = measurements(version, preds, lesions=True).set_index("image_name")
            processed: dict[str, np.ndarray] = {}
            for b in version.iter_batches("test", batch_size=8, columns=("image_name",)):
                processed.update(zip(b["image_name"], b["image"], strict=True))
        p = float(table["prediction"].iloc[0])
        per_view = {}
        for view, name in names.items():
            facts = {k: (None if pd.isna(v) else (v.item() if hasattr(v, "item") else v))
                     for k, v in table.loc[name].items() if k not in ("prediction", "lesion_id")}
            per_view[view] = {"image_name": name, "measurements": facts}
        answer = {"lesion_id": "upload", "probability": p, "target": self.target,
                  "decision": int(p >= self.threshold), "threshold": self.threshold,
                  "threshold_note": (f"chosen on the run's out-of-fold scores ({self.threshold_rule}), applied to "
                                     "the average of the fold models' scores of the lesion (its views together)"),
                  "views": per_view, "op_versions": self.ops, "run": self.run.name, "notice": NOTICE}
        if self.calibration is not None:
            answer["prediction_calibrated"] = float(apply_calibration(self.calibration, np.array([p]))[0])
            answer["calibration_note"] = (f"probability: the raw score (fold models averaged; the threshold applies "
                                          f"to it); prediction_calibrated: that score through the run's "
                                          f"{self.calibration['method']} calibration, fitted on out-of-fold scores")
        first = next(iter(names.values()))
        return Scored(answer, processed[first], why.get(first),
                      {view: (processed[name], why.get(name)) for view, name in names.items()})


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


PAGE = """<!doctype html><html><head><meta charset='utf-8'><title>melanoma toolkit</title><style>body{{font-family:
sans-serif;max-width:1000px;margin:1em auto;padding:0 1em}}.notice{{background:#fff3cd;padding:6px;border:1px solid
#e0c36a}}label{{display:inline-block;min-width:14em}}img{{max-width:100%}}td,th{{border:1px solid #ccc;padding:2px
6px;text-align:left}}.pair{{display:flex;gap:1em;flex-wrap:wrap;align-items:flex-start}}.pair figure{{margin:0}}
figcaption{{font-size:90%;color:#444}}.error{{color:#a00}}</style></head><body><p class='notice'>{notice}</p>
<h1>{title}</h1><p>run <code>{run}</code> ({plugin}, {folds} fold models averaged; decision
threshold <span id='threshold'>{threshold:.3f}</span>)</p><p id='threshold-meaning'>{meaning}</p>
<form method='post' action='/' enctype='multipart/form-data'>{files}\
<p><label>sex</label><select name='sex'><option></option><option>female</option><option>male</option>
</select></p><p><label>age</label><input name='age_approx' type='number' min='0' max='120'></p><p><label>site
</label><select name='anatom_site_general_challenge'><option></option>{sites}</select></p><p><label>patient id
</label><input name='patient_id' maxlength='{maxlen}'></p><p><button type='submit'>score</button></p></form>
{result}</body></html>"""


#: The upload page's title and file field of a one-image run.
SINGLE_TITLE = "Score a dermoscopy image"
SINGLE_FILE = """<p><input type='file' name='image' accept='image/*'
required></p>"""
#: A two-view run's: one file field per view.
LESION_TITLE = "Score a lesion (its dermoscopic and clinical image)"


def _view_files(views: tuple[str, ...], required: bool) -> str:
    return "".join(f"<p><label>{html.escape(v)} image</label><input type='file' name='{html.escape(v)}' "
                   f"accept='image/*'{' required' if required else ''}></p>" for v in views)


#: Bytes of a request body kept in memory; the rest of it waits in an anonymous temporary file.
SPOOL_IN_MEMORY = 1 << 20


async def _read_body(receive: Any, limit: int) -> tempfile.SpooledTemporaryFile:
    """The whole request body, counted as it arrives, in a spool (memory up to :data:`SPOOL_IN_MEMORY`, then an
    anonymous temporary file), rewound; :class:`Rejected` (413) as soon as it passes ``limit`` bytes, with the
    rest left unread."""
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)  # noqa: SIM115 (the caller closes it)
    total = 0
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise Rejected(400, "bad_request", "the client went away before the body was complete")
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > limit:
                raise Rejected(413, "too_large", f"request body passed {limit:,} bytes (the image limit "
                               f"{limit - FORM_OVERHEAD:,} plus {FORM_OVERHEAD:,} for the form); not read further")
            spool.write(chunk)
            if not message.get("more_body", False):
                spool.seek(0)
                return spool
    except BaseException:
        spool.close()
        raise


class AccessLog:
    """ASGI middleware: one line per HTTP request on :data:`ACCESS_LOG` (method, path, status, bytes received
    and sent, milliseconds). The path is escaped and cut at 200 characters; the query string, the upload and
    the field values are never written."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0, got, sent, status, logged = time.perf_counter(), 0, 0, 0, False

        def log() -> None:
            nonlocal logged
            if not logged:
                logged = True
                path = ascii(scope.get("path", "")[:200])[1:-1]
                ACCESS_LOG.info("%s %s %d in=%dB out=%dB %.0fms", scope.get("method", "?"), path, status or 500,
                                got, sent, (time.perf_counter() - t0) * 1e3)

        async def counting_receive() -> dict:
            nonlocal got
            message = await receive()
            got += len(message.get("body", b""))
            return message

        async def counting_send(message: dict) -> None:
            nonlocal sent, status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
                if not message.get("more_body"):  # written before the client can have the answer
                    log()
            await send(message)

        try:
            await self.app(scope, counting_receive, counting_send)
        finally:
            log()  # a request that ended without a complete answer


def create_app(service: Service) -> Any:
    """The FastAPI application of ``service`` (with the :class:`AccessLog` middleware)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse

    app = FastAPI(title="melanoma toolkit", description=NOTICE)
    app.add_middleware(AccessLog)
    limit = service.max_bytes + FORM_OVERHEAD

    files_allowed = len(FIELDS) + 1 + len(service.views)

    async def read_upload(request: Request) -> tuple[Any, ...]:
        """The upload's bytes, file name and checked fields (a two-view run: ``({view: (bytes, file name)},
        fields)``); :class:`Rejected` for anything else."""
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > limit:
            raise Rejected(413, "too_large", f"request of {int(length):,} bytes, above the limit of {limit:,} (the "
                           f"image limit {service.max_bytes:,} plus {FORM_OVERHEAD:,} for the form)")
        with await _read_body(request.receive, limit) as body:  # counted as it arrives: chunked bodies too
            async def replay() -> dict:
                chunk = body.read(1 << 16)
                return {"type": "http.request", "body": chunk, "more_body": bool(chunk)}

            try:
                form = await Request(request.scope, replay).form(max_files=files_allowed, max_fields=20)
            except Exception as exc:  # a body that is not multipart, or too many parts
                raise Rejected(400, "bad_request", str(exc)[:200]) from None
        try:
            if service.views:
                return await lesion_upload(form)
            uploads = [v for k, v in form.multi_items() if k == "image"]
            if len(uploads) != 1 or isinstance(uploads[0], str):
                raise Rejected(400, "no_image", "send the image as one multipart file field 'image'", "image")
            fields = check_fields([(k, v) for k, v in form.multi_items() if k != "image"])
            data = await uploads[0].read(service.max_bytes + 1)
            return data, uploads[0].filename or "upload", fields
        finally:
            await form.close()  # the parsed parts' temporary files

    async def lesion_upload(form: Any) -> tuple[dict[str, tuple[bytes, str]], dict[str, str]]:
        """A two-view run's form: one file per view (``image`` alone stands for the dermoscopic view of a run
        trained without pairs); a lone image for a run trained on pairs is a 400 ``needs_pair``."""
        pair = ", ".join(f"'{v}'" for v in service.views)
        uploads = [(k, v) for k, v in form.multi_items() if k in (*service.views, "image")]
        names = [k for k, _ in uploads]
        for k, v in uploads:
            if names.count(k) > 1 or isinstance(v, str):
                raise Rejected(400, "no_image", f"send each view as one multipart file field ({pair})", k)
        if "image" in names and (service.pairs or len(names) > 1):
            raise Rejected(400, "needs_pair", f"run {service.run.name} ({service.cfg.plugin}) scores a lesion's "
                           f"pair of images: send the files {pair}, not one 'image'", "image")
        missing = [v for v in service.views if v not in names]
        if service.pairs and missing and uploads:
            raise Rejected(400, "needs_pair", f"run {service.run.name} ({service.cfg.plugin}) scores a lesion's "
                           f"pair of images (trained on both views): the file '{missing[0]}' is missing",
                           missing[0])
        if not uploads:
            raise Rejected(400, "no_image", f"send the lesion's images as multipart file fields {pair}", "image")
        fields = check_fields([(k, v) for k, v in form.multi_items() if k not in (*service.views, "image")])
        files = {}
        for k, v in uploads:
            files["dermoscopic" if k == "image" else k] = (await v.read(service.max_bytes + 1), v.filename or k)
        return files, fields

    async def run(got: tuple[Any, ...], explain: bool) -> Scored:
        loop = asyncio.get_running_loop()
        if service.views:
            return await loop.run_in_executor(service.pool, service.score_lesion, *got, explain)
        return await loop.run_in_executor(service.pool, service.score, *got, explain)

    @app.get("/health")
    def health() -> dict[str, Any]:
        return service.health()

    @app.post("/predict")
    async def predict(request: Request) -> Any:
        try:
            return (await run(await read_upload(request), False)).answer
        except Rejected as exc:
            return JSONResponse(exc.body(), status_code=exc.status)

    sites = "".join(f"<option>{html.escape(s)}</option>" for s in sorted(set(SITE_MAP.values())))

    def page(result: str = "") -> str:
        h = service.health()
        title, files = ((LESION_TITLE, _view_files(service.views, service.pairs)) if service.views
                        else (SINGLE_TITLE, SINGLE_FILE))
        return PAGE.format(notice=html.escape(NOTICE), run=html.escape(h["run"]), plugin=html.escape(h["plugin"]),
                           folds=h["folds"], threshold=h["threshold"], meaning=html.escape(service.threshold_meaning()),
                           sites=sites, maxlen=MAX_FIELD_CHARS, result=result, title=title, files=files)

    @app.get("/", response_class=HTMLResponse)
    def upload_page() -> str:
        return page()

    @app.post("/", response_class=HTMLResponse)
    async def upload_result(request: Request) -> Any:
        try:
            scored = await run(await read_upload(request), True)
        except Rejected as exc:
            field = f" (field <code>{html.escape(exc.field)}</code>)" if exc.field else ""
            return HTMLResponse(page(f"<div class='error' id='error'><h2>Not scored: {html.escape(exc.reason)}{field}"
                                     f"</h2><p>{html.escape(exc.detail)}</p></div>"), status_code=exc.status)
        return HTMLResponse(page(_lesion_html(scored) if scored.views is not None else _result_html(scored)))

    return app


def _result_html(scored: Scored) -> str:
    """The upload page's result: the score, the processed image beside its explanation, the measurements."""
    a, why = scored.answer, scored.why
    parts = [f"<h2 id='result'>{html.escape(a['image_name'])}: score <span id='score'>{a['probability']:.3f}"
             f"</span>, <span id='decision'>{'above' if a['decision'] else 'below'}</span> the threshold "
             f"{a['threshold']:.3f}</h2>"]
    if "prediction_calibrated" in a:
        parts.append(f"<p>calibrated probability: <b>{a['prediction_calibrated']:.3f}</b> "
                     f"({html.escape(a['calibration_note'])})</p>")
    if isinstance(why, HeatmapRow):  # the overlay is the processed image and its heat map, side by side
        overlay = _data_uri(png(_overlay(scored.processed, why.heatmap)))
        figures = [f"<figure><img id='explanation' src='{overlay}' width='648'><figcaption>processed image (as "
                   "preprocessing stored it) and Grad-CAM: where the image model looked (red: what raised the "
                   "score most)</figcaption></figure>"]
    else:
        figures = [f"<figure><img id='processed' src='{_data_uri(png(scored.processed))}' width='320'><figcaption>"
                   "processed image (as preprocessing stored it)</figcaption></figure>"]
    if isinstance(why, ContributionRow):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "bars.png"
            _bars(why.contributions, why.bias, a["probability"], path, 12)
            figures.append(f"<figure><img id='contributions' src='{_data_uri(path.read_bytes())}' width='560'>"
                           "<figcaption>top feature contributions (SHAP values of the fold models)</figcaption>"
                           "</figure>")
    parts.append(f"<div class='pair'>{''.join(figures)}</div>")
    if isinstance(why, StackRow):
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{why.base_scores[k]:.3f}</td><td>{w:.3f}</td></tr>"
                       for k, w in why.weights.items())
        parts.append(f"<h3>Stack</h3><table><tr><th>base run</th><th>score</th><th>weight</th></tr>{rows}</table>")
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in a["measurements"].items())
    parts.append(f"<h3>Measurements</h3><table>{rows}</table>")
    return "".join(parts)


def _lesion_html(scored: Scored) -> str:
    """A two-view run's result: the lesion's score, then per view its processed image (beside its Grad-CAM when
    the plugin gives one) and its measurements."""
    a = scored.answer
    parts = [f"<h2 id='result'>lesion: score <span id='score'>{a['probability']:.3f}</span>, <span id='decision'>"
             f"{'above' if a['decision'] else 'below'}</span> the threshold {a['threshold']:.3f}</h2>"]
    if "prediction_calibrated" in a:
        parts.append(f"<p>calibrated probability: <b>{a['prediction_calibrated']:.3f}</b> "
                     f"({html.escape(a['calibration_note'])})</p>")
    figures = []
    for view, (image, why) in (scored.views or {}).items():
        v = html.escape(view)
        if isinstance(why, HeatmapRow):
            figures.append(f"<figure><img id='explanation-{v}' src='{_data_uri(png(_overlay(image, why.heatmap)))}' "
                           f"width='648'><figcaption>{v}: processed image and Grad-CAM of this view (red: what "
                           "raised the lesion's score most)</figcaption></figure>")
        else:
            figures.append(f"<figure><img id='processed-{v}' src='{_data_uri(png(image))}' width='320'><figcaption>"
                           f"{v}: processed image (as preprocessing stored it)</figcaption></figure>")
    parts.append(f"<div class='pair'>{''.join(figures)}</div>")
    for view, info in a["views"].items():
        rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(x))}</td></tr>"
                       for k, x in info["measurements"].items())
        parts.append(f"<h3>Measurements: {html.escape(view)}</h3><table>{rows}</table>")
    return "".join(parts)


def serve(run: str | Path, host: str = "127.0.0.1", port: int = 8000, workers: int = 2,
          allow_version_mismatch: bool = False) -> None:
    """Load the run and serve it until interrupted; the access log goes to stderr."""
    try:
        import uvicorn
    except ImportError as exc:
        raise InputError(f"serve needs FastAPI and uvicorn, an optional extra: uv sync --all-extras (or uv sync "
                         f"--extra serve, which removes the other extras) ({exc})") from None
    service = Service(run, workers, allow_version_mismatch)
    if not ACCESS_LOG.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        ACCESS_LOG.addHandler(handler)
        ACCESS_LOG.setLevel(logging.INFO)
    uvicorn.run(create_app(service), host=host, port=port, log_level="warning", access_log=False)
