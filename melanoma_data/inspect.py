"""``inspect``: a before/after contact sheet (PNG) and an HTML page of what the normalisation ops did.

Each selected original (downscaled, with the detected microscope field drawn in green, the crop in
yellow, and the artefacts in their own colours: :data:`ARTEFACT_COLOURS`) is shown next to its
processed version (hair mask in red over it), captioned with the measurements. Works on an input
folder (processed now with the given config) or on a dataset version (its own config; the originals
are read from the version's inputs).
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from melanoma_data import fsutil, h5, ingest, manifest, pipeline
from melanoma_data.config import PreprocessConfig
from melanoma_data.errors import ImageRejected, InputError, PipelineStepError
from melanoma_data.ops._cv import cv2

TILE = 200
#: Overlay colour (RGB) of each artefact kind on the original's tile.
ARTEFACT_COLOURS = {"ruler": (255, 140, 0), "ink": (255, 0, 255), "bubbles": (0, 220, 255),
                    "dark_corners": (40, 80, 255)}


def _overlay(tile: np.ndarray, mask: np.ndarray | None, colour: tuple[int, int, int], alpha: float) -> np.ndarray:
    """``tile`` with ``mask`` (any size; area-resized, so thin structures stay visible) blended in ``colour``."""
    if mask is None or not mask.any():
        return tile
    m = cv2.resize(mask.astype(np.float32), tile.shape[1::-1], interpolation=cv2.INTER_AREA) > 0
    out = tile.copy()
    out[m] = (alpha * np.array(colour) + (1 - alpha) * tile[m]).astype(np.uint8)
    return out


@dataclasses.dataclass
class Inspected:
    """One image's before/after pair and measurements."""

    name: str
    before: np.ndarray
    after: np.ndarray
    facts: dict[str, Any]
    error: str | None = None


def _records(source: str, n: int, seed: int, metadata: str | None = None,
             warn: Callable[[str], None] | None = None) -> tuple[list[dict[str, Any]], PreprocessConfig, str]:
    fs, path = fsutil.resolve(source)
    doc = manifest.read_manifest(fs, path) if fs.isdir(path) else None
    if doc is not None and metadata:
        raise InputError(f"{source} is a dataset version (it has its metadata); --metadata is for an input folder")
    if doc is not None:
        cfg = doc.preprocess_config()
        from melanoma_data.dataset import open_dataset

        meta = open_dataset(source).metadata()
        roots = {}
        for item in doc.inputs:
            ifs, iroot = fsutil.resolve(item.url)
            roots[ingest.source_name(item.layout, iroot)] = item.url
        paths, keys = [], []
        for s, r in zip(meta["source"], meta["rel_path"], strict=True):
            rel, _, key = str(r).partition(ingest.H5_SEP)  # an HDF5 entry: container#key
            try:
                paths.append(fsutil.within(roots.get(s, ""), rel, f"rel_path of a {s} row"))
            except fsutil.UnsafePath as exc:
                raise InputError(f"{source}: {exc}") from None
            keys.append(key or None)
        meta["path"], meta["h5_key"] = paths, keys
        label = f"dataset {doc.name} @ {doc.fingerprint}"
        records = meta.to_dict(orient="records")
    else:
        found = ingest.ingest([source], metadata=metadata)
        for note in found.notes():
            (warn or (lambda msg: None))(note)
        if found.records.empty:
            raise InputError(f"{source}: no usable images found")
        records = found.records.to_dict(orient="records")
        cfg = None
        label = f"input {source}"
    rng = np.random.default_rng(seed)
    pick = sorted(rng.choice(len(records), min(n, len(records)), replace=False))
    return [records[i] for i in pick], cfg, label


def _downscale(img: np.ndarray, side: int = TILE) -> tuple[np.ndarray, float]:
    h, w = img.shape[:2]
    k = side / max(h, w)
    out = cv2.resize(img, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_AREA)
    return out, k


def inspect_one(record: dict[str, Any], cfg: PreprocessConfig, side: int = TILE) -> Inspected:
    """Process one record with ``cfg`` and draw its before/after tiles (``side`` pixels on their long side)."""
    name = str(record["image_name"])
    try:
        with h5.Readers() as containers:
            data = pipeline.read_input(record, containers, cfg.decode.max_bytes)
        res = pipeline.process_image(data, name, cfg, debug=True)
    except (OSError, h5.EntryError, ImageRejected, PipelineStepError) as exc:
        blank = np.full((side, side, 3), 40, np.uint8)
        return Inspected(name, blank, blank, {}, f"{type(exc).__name__}: {exc}")
    dbg = res.pop("_debug")
    before, k = _downscale(dbg["oriented"], side)
    h, w = dbg["oriented"].shape[:2]
    v = dbg["vignette"]
    if v.detected:
        cv2.circle(before, (round(v.cx * w * k), round(v.cy * h * k)), round(v.radius_frac * min(h, w) * k),
                   (0, 255, 0), max(2, side // 100), cv2.LINE_AA)
    x0, y0, x1, y1 = v.box
    if (x0, y0, x1, y1) != (0.0, 0.0, 1.0, 1.0) or v.detected:
        bw, bh = before.shape[1], before.shape[0]
        cv2.rectangle(before, (round(x0 * bw), round(y0 * bh)), (round(x1 * bw) - 1, round(y1 * bh) - 1),
                      (255, 220, 0), max(1, side // 200))
    found = dbg["artefacts"]
    for kind, alpha in (("dark_corners", 0.35), ("bubbles", 0.6), ("ink", 0.8), ("ruler", 0.9)):
        before = _overlay(before, getattr(found, kind), ARTEFACT_COLOURS[kind], alpha)
    after = dbg["processed"].copy()
    mask = dbg["hair_mask"]
    if mask.any() and mask.shape == after.shape[:2]:
        red = np.zeros_like(after)
        red[..., 0] = 255
        after = np.where(mask[..., None], (0.45 * after + 0.55 * red).astype(np.uint8), after)
    after, _ = _downscale(after, side)
    facts = {c: res[c] for c in ("orig_width", "orig_height", "exif_orientation", "vignette_detected",
                                 "vignette_radius_frac", "vignette_confidence", "hair_fraction", "colour_gain_r",
                                 "colour_gain_g", "colour_gain_b", "brightness_before", "brightness_after",
                                 "ruler_detected", "ink_detected", "bubbles_detected", "dark_corners_detected")}
    facts["target"] = record.get("target")
    return Inspected(name, before, after, facts)


def _caption(it: Inspected) -> list[str]:
    if it.error:
        return [it.name, "failed:", it.error[:40]]
    f = it.facts
    t = f.get("target")
    label = {1: "melanoma", 0: "benign"}.get(None if t is None or pd.isna(t) else int(t), "unlabelled")
    vig = f"field r={f['vignette_radius_frac']:.2f}" if f["vignette_detected"] else "no field"
    gains = "/".join(f"{f[c]:.2f}" for c in ("colour_gain_r", "colour_gain_g", "colour_gain_b"))
    found = [k.replace("_", " ") for k in ARTEFACT_COLOURS if f.get(f"{k}_detected")]
    return [f"{it.name} ({label}) {f['orig_width']}x{f['orig_height']}",
            f"{vig}; hair {100 * f['hair_fraction']:.1f}%; {', '.join(found) or 'no artefacts'}",
            f"gains {gains}; Y {f['brightness_before']:.0f}->{f['brightness_after']:.0f}"]


def _font(size: int = 12) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """DejaVu Sans (matplotlib ships it; Pillow's own default font drops the spaces between words at small
    sizes), else Pillow's default."""
    try:
        import matplotlib

        return ImageFont.truetype(str(Path(matplotlib.__file__).parent / "mpl-data" / "fonts" / "ttf"
                                      / "DejaVuSans.ttf"), size)
    except (ImportError, OSError):
        return ImageFont.load_default(size)


def contact_sheet(items: list[Inspected], title: str, per_row: int = 3) -> Image.Image:
    """Pairs (before | after) in a grid, captions under each pair."""
    font = _font(11)
    cap_h = 44
    pair_w = 2 * TILE + 6
    rows = (len(items) + per_row - 1) // per_row
    sheet = Image.new("RGB", (per_row * (pair_w + 12) + 12, 30 + rows * (TILE + cap_h + 12)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    draw.text((12, 8), title, fill=(0, 0, 0), font=font)
    for i, it in enumerate(items):
        r, c = divmod(i, per_row)
        x, y = 12 + c * (pair_w + 12), 30 + r * (TILE + cap_h + 12)
        for j, tile in enumerate((it.before, it.after)):
            im = Image.fromarray(tile)
            sheet.paste(im, (x + j * (TILE + 6) + (TILE - im.width) // 2, y + (TILE - im.height) // 2))
        for k, line in enumerate(_caption(it)):
            draw.text((x, y + TILE + 2 + 13 * k), line, fill=(0, 0, 0) if not it.error else (200, 0, 0), font=font)
    return sheet


def _data_uri(arr: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(arr, cv2.COLOR_RGB2BGR))
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode()


def inspect(source: str, out: str | Path, n: int = 24, seed: int = 0,
            cfg: PreprocessConfig | None = None, metadata: str | None = None,
            warn: Callable[[str], None] | None = None) -> tuple[Path, Path]:
    """Write the contact sheet ``out`` (PNG) and ``out`` with ``.html`` (same content + a measurement table).

    Args:
        source: a dataset version or an input folder.
        out: PNG path.
        n: images to show (a seeded random choice).
        seed: the choice's seed.
        cfg: config for an input folder (default: the defaults); a version uses its own.
        metadata: a metadata CSV for an input folder (overrides layout detection, as in ``preprocess``).
        warn: receives notes for the user (an input folder without metadata: no labels found).

    Returns:
        (PNG path, HTML path).
    """
    records, version_cfg, label = _records(source, n, seed, metadata, warn)
    use = version_cfg or cfg or PreprocessConfig()
    items = [inspect_one(r, use) for r in records]
    ops_on = ", ".join(k for k in ("field_of_view", "artefacts", "hair", "colour") if getattr(use, k).enabled) or "none"
    title = f"{label}: {len(items)} images, left original (field green, crop yellow, ruler orange, ink magenta, " \
            f"bubbles cyan, dark corners blue), right processed (hair red); ops on: {ops_on}"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    contact_sheet(items, title).save(out)
    page = _page(items, label, ops_on, {k: use.to_dict()[k] for k in ("field_of_view", "artefacts", "hair", "colour")})
    html_path = out.with_suffix(".html")
    html_path.write_text(page, encoding="utf-8")
    return out, html_path


#: The inspect page's style: plain, readable, the wide measurement table scrolls on its own.
_STYLE = """body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:1.5em auto;
max-width:1200px;padding:0 1em;color:#222;line-height:1.4}h1{font-size:1.4em;margin-bottom:.2em}
.legend span{display:inline-block;margin-right:1.2em}.sw{display:inline-block;width:.9em;height:.9em;
border:1px solid #888;vertical-align:-.1em;margin-right:.3em}figure{margin:0}.pairs{display:grid;
grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:1.2em;margin:1em 0}.pair img{width:200px;
height:200px;object-fit:contain;background:#f4f4f4}.pair figcaption{font-size:.9em}.pair .name{font-weight:600}
.error{color:#a00}.scroll{overflow-x:auto}table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid
#ccc;padding:3px 6px;text-align:right;white-space:nowrap}th{background:#f0f0f0;position:sticky;top:0}
td:first-child,th:first-child{text-align:left}pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.85em}"""


def _page(items: list[Inspected], label: str, ops_on: str, config: dict[str, Any]) -> str:
    """The HTML page: a legend, each pair with its caption, the measurement table, the config."""
    swatch = "".join(f"<span><i class='sw' style='background:rgb{c}'></i>{html.escape(k)}</span>" for k, c in
                     {"field of view": (0, 255, 0), "crop": (255, 220, 0),
                      **{k.replace("_", " "): v for k, v in ARTEFACT_COLOURS.items()},
                      "hair (processed)": (255, 0, 0)}.items())
    pairs = []
    for it in items:
        lines = _caption(it)
        caption = (f"<span class='name'>{html.escape(lines[0])}</span><br>"
                   + "<br>".join(html.escape(line) for line in lines[1:]))
        pairs.append(f"<figure class='pair{' error' if it.error else ''}'><img src='{_data_uri(it.before)}' "
                     f"alt='original {html.escape(it.name)}'> <img src='{_data_uri(it.after)}' alt='processed "
                     f"{html.escape(it.name)}'><figcaption>{caption}</figcaption></figure>")
    columns = next((list(it.facts) for it in items if it.facts), [])
    rows = []
    for it in items:
        if it.error:
            cells = f"<td colspan={max(1, len(columns))} class='error'>{html.escape(it.error)}</td>"
        else:
            cells = "".join(f"<td>{html.escape(_cell(it.facts.get(c)))}</td>" for c in columns)
        rows.append(f"<tr><td>{html.escape(it.name)}</td>{cells}</tr>")
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><meta name='viewport' "
            f"content='width=device-width'><title>inspect: {html.escape(label)}</title><style>{_STYLE}</style>"
            f"</head><body><h1>{html.escape(label)}: {len(items)} images</h1><p>Left: the original, with what the "
            f"ops found drawn on it. Right: the processed image; ops on: {html.escape(ops_on)}.</p>"
            f"<p class='legend'>{swatch}</p><div class='pairs'>{''.join(pairs)}</div><h2>Measurements</h2>"
            f"<div class='scroll'><table><tr><th>image</th>{head}</tr>{''.join(rows)}</table></div>"
            f"<h2>Configuration of these ops</h2><pre>{html.escape(json.dumps(config, indent=2))}</pre>"
            "</body></html>")


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "–"
    if isinstance(v, float | np.floating):
        return f"{v:.3f}"
    return str(v)
