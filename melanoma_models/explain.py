"""Explain each score of new images: a page per image with what preprocessing found and why the run scored it so.

:func:`explain_images` preprocesses the images exactly as :func:`melanoma_models.score.score_images` does and
writes ``OUT/index.html`` and, per image, ``OUT/NAME.html`` with PNGs: the original with the detected field
of view (green circle) and crop (yellow box) beside the processed image with the hair mask (red); then the
reasons, by plugin: Grad-CAM heat maps of the image plugins' last convolutional block (fold models
averaged), the tabular plugins' per-feature contributions to the log-odds (the boosted-tree libraries'
own TreeSHAP values, fold models averaged, the largest first), or a stack's base runs with their scores
and weights. Research software, not a medical device: every page says so.
"""

from __future__ import annotations

import hashlib
import html
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melanoma_data import ingest, plots
from melanoma_data.inspect import inspect_one
from melanoma_data.ops._cv import cv2
from melanoma_models.api import FoldData
from melanoma_models.explanation import ContributionRow, HeatmapRow, StackRow, average
from melanoma_models.score import _predict_version, feed_base_runs, loaded, measurements, prepared, two_view

NOTICE = ("Research software, not a medical device: these scores and pictures are for studying models, "
          "not for diagnosing anyone.")


def reasons(run: Path, version: Any, cache: dict | None = None) -> dict[str, Any]:
    """Per image name: its explanation row (a :class:`~melanoma_models.explanation.HeatmapRow`,
    :class:`~melanoma_models.explanation.ContributionRow` or :class:`~melanoma_models.explanation.StackRow`, fold
    models averaged); no entry for plugins that cannot say. ``cache``: models loaded once (see :func:`score.loaded`)."""
    _, _, models = loaded(run, cache)
    if "runs" in type(models[0]).needs:  # a stack: its base runs' scores of these images
        feed_base_runs(run, models, version, lambda m: None, cache)
    out: dict[str, Any] = {}
    for split in version.manifest.split_names:
        meta = version.metadata(split=split)
        if not len(meta):
            continue
        data = FoldData(version, split, None, meta, {}, split)
        agg = average([m.explain(data) for m in models])
        if agg is None:
            continue
        out.update(zip(data.names, agg.split(), strict=True))
    return out


def _overlay(image: np.ndarray, heat: np.ndarray, side: int = 320) -> np.ndarray:
    """The processed image and the heat map (jet colours) over it, side by side, ``side`` pixels tall."""
    image = cv2.resize(image, (side, side), interpolation=cv2.INTER_LINEAR)
    heat = cv2.resize(heat.astype(np.float32), (image.shape[1], image.shape[0]), interpolation=cv2.INTER_LINEAR)
    colour = cv2.applyColorMap(np.clip(heat * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    alpha = 0.55 * heat[..., None]
    blended = (image * (1 - alpha) + colour * alpha).astype(np.uint8)
    return np.concatenate([image, np.full((side, 8, 3), 255, np.uint8), blended], axis=1)


#: Long side (pixels) of the original in the preprocessing picture: with the processed image beside it the
#: picture is at least 900 px wide for any aspect ratio.
PICTURE_SIDE = 520


def _preprocessing_picture(seen: Any) -> np.ndarray:
    """The original (what the ops found drawn on it) and the processed image side by side, same height, each
    under a label naming what its colours mean."""
    from PIL import Image, ImageDraw

    from melanoma_data.inspect import ARTEFACT_COLOURS, _font

    before, after = seen.before, seen.after
    h = before.shape[0]
    after = cv2.resize(after, (round(after.shape[1] * h / after.shape[0]), h), interpolation=cv2.INTER_AREA)
    gap, head = 16, 70
    canvas = Image.new("RGB", (before.shape[1] + gap + after.shape[1], head + h), (255, 255, 255))
    canvas.paste(Image.fromarray(before), (0, head))
    canvas.paste(Image.fromarray(after), (before.shape[1] + gap, head))
    draw, bold, small = ImageDraw.Draw(canvas), _font(17), _font(13)
    draw.text((0, 2), "original", fill=(0, 0, 0), font=bold)
    x, y = 0, 28
    for label, colour in {"field of view": (0, 255, 0), "crop": (255, 220, 0),
                          **{k.replace("_", " "): c for k, c in ARTEFACT_COLOURS.items()}}.items():
        width = 15 + round(draw.textlength(label, font=small))
        if x and x + width > before.shape[1]:  # wrap under the original, never over the processed image
            x, y = 0, y + 19
        draw.rectangle((x, y + 2, x + 11, y + 13), fill=colour, outline=(90, 90, 90))
        draw.text((x + 15, y), label, fill=(0, 0, 0), font=small)
        x += width + 12
    x0 = before.shape[1] + gap
    draw.text((x0, 2), "processed (as stored)", fill=(0, 0, 0), font=bold)
    draw.rectangle((x0, 30, x0 + 11, 41), fill=(255, 0, 0), outline=(90, 90, 90))
    draw.text((x0 + 15, 28), "hair mask", fill=(0, 0, 0), font=small)
    return np.asarray(canvas)


def png(arr: np.ndarray) -> bytes:
    """An RGB array as PNG bytes."""
    return cv2.imencode(".png", np.ascontiguousarray(arr[..., ::-1]))[1].tobytes()


def _save_png(arr: np.ndarray, path: Path) -> str:
    path.write_bytes(png(arr))
    return path.name


def _bars(contrib: pd.Series, bias: float, score: float, path: Path, top: int) -> str:
    plt = plots.pyplot()
    order = contrib.abs().sort_values(ascending=False).index[:top]
    values = contrib[order][::-1]
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(values) + 1.2))
    ax.barh(range(len(values)), values.to_numpy(), color=["#c0392b" if v > 0 else "#2471a3" for v in values])
    ax.set_yticks(range(len(values)), [str(n) for n in values.index], fontsize=8)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("contribution to the log-odds (red: towards the target, blue: away)")
    ax.set_title(f"score {score:.3f}; baseline log-odds {bias:+.2f}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def _page(name: str, score: float, facts: dict[str, Any], parts: list[str], run: Path) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in facts.items())
    body = "\n".join(parts)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(name)}</title>"
            "<style>body{font-family:sans-serif;max-width:980px;margin:1em auto}img{max-width:100%}"
            "td,th{border:1px solid #ccc;padding:2px 6px;text-align:left}.notice{background:#fff3cd;"
            "padding:6px;border:1px solid #e0c36a}</style></head><body>"
            f"<p class='notice'>{html.escape(NOTICE)}</p><h1>{html.escape(name)}: {score:.3f}</h1>"
            f"<p>run <code>{html.escape(run.name)}</code> (every fold model averaged) · "
            "<a href='index.html'>all images</a></p>"
            f"{body}<h2>Measurements</h2><table>{rows}</table></body></html>")


def _file_stem(name: str) -> str:
    """A file name for ``name``'s page and pictures: its letters, digits and ``._-`` kept, anything else ``_``, and a
    short hash of the name added when something was replaced (``a b`` and ``a_b`` must not share a page)."""
    slug = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    if slug == name and slug.strip("."):
        return slug
    return f"{slug}-{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"


def _fmt(v: Any) -> str:
    if isinstance(v, float | np.floating):
        return f"{v:.4g}"
    return str(v)


def explain_images(run: str | Path, images: list[str], out_dir: str | Path, *, metadata: str | None = None,
                   workers: int | None = 0, scheduler: str | None = None, allow_version_mismatch: bool = False,
                   top: int = 12, warn: Callable[[str], None] | None = None,
                   views: dict[str, str] | None = None) -> Path:
    """Write the explanation pages (see the module doc); returns ``OUT/index.html``.

    Arguments and errors as :func:`melanoma_models.score.score_images` (``views``: one lesion's images of a
    two-view run: each view gets its page, with its own Grad-CAM and the lesion's score); ``top``: contributions
    shown.
    """
    warn = warn or (lambda msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache: dict = {}  # the fold models, loaded once for the pair check, the scores and the reasons
    with prepared(run, images, metadata=metadata, workers=workers, scheduler=scheduler,
                  allow_version_mismatch=allow_version_mismatch, warn=warn, views=views, cache=cache) as prep:
        version = prep.version
        lesion = two_view(prep.cls)
        scores = measurements(version, _predict_version(prep.run, version, warn, cache),
                              lesions=lesion).set_index("image_name")
        why = reasons(prep.run, version, cache)
        processed: dict[str, np.ndarray] = {}
        for split in version.manifest.split_names:
            for b in version.iter_batches(split, batch_size=64, columns=("image_name",)):
                processed.update(zip(b["image_name"], b["image"], strict=True))
        records = ingest.ingest(prep.inputs, metadata=prep.ingest_metadata).records
        records = {r["image_name"]: r for r in records.to_dict("records")}
        quarantine = prep.quarantine()  # loose inputs named by their own paths, not the scratch copies
        entries = []
        for name, score_row in scores.iterrows():
            score = float(score_row["prediction"])
            safe = _file_stem(str(name))
            parts = []
            if name in records:
                file = _save_png(_preprocessing_picture(inspect_one(records[name], prep.config, side=PICTURE_SIDE)),
                                 out / f"{safe}_preprocessing.png")
                parts.append("<h2>Preprocessing</h2><p>original with the detected field of view (green) and the crop "
                             "(yellow); processed image with the hair mask (red)</p>"
                             f"<img src='{file}' alt='preprocessing of {html.escape(str(name))}'>")
            reason = why.get(name)
            if lesion and isinstance(score_row["lesion_id"], str):
                partners = [n for n in scores.index
                            if n != name and scores.at[n, "lesion_id"] == score_row["lesion_id"]]
                parts.append(f"<p>lesion <code>{html.escape(str(score_row['lesion_id']))}</code>, view "
                             f"<code>{html.escape(str(score_row['image_type']))}</code>: the score is the lesion's "
                             "(both views together)"
                             + "".join(f"; other view: <a href='{_file_stem(str(n))}.html'>{html.escape(str(n))}</a>"
                                       for n in partners) + "</p>")
            if isinstance(reason, HeatmapRow) and name in processed:
                file = _save_png(_overlay(processed[name], reason.heatmap), out / f"{safe}_gradcam.png")
                parts.append("<h2>Where the score came from</h2><p>Grad-CAM of the last convolutional block "
                             f"{'of this view ' if lesion else ''}(red: regions that raised the score most)</p>"
                             f"<img src='{file}' alt='Grad-CAM heat map'>")
            if isinstance(reason, ContributionRow):
                file = _bars(reason.contributions, reason.bias, score, out / f"{safe}_contributions.png", top)
                parts.append("<h2>Top feature contributions</h2><p>TreeSHAP values of the boosted trees "
                             f"(largest {top}; they add up to the log-odds with the baseline)</p>"
                             f"<img src='{file}' alt='feature contributions'>")
            if isinstance(reason, StackRow):
                rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{reason.base_scores[k]:.3f}</td>"
                               f"<td>{reason.weights[k]:.3f}</td></tr>" for k in reason.weights)
                parts.append(f"<h2>Stack ({html.escape(reason.method)})</h2><table><tr><th>base run</th>"
                             f"<th>its score</th><th>weight</th></tr>{rows}</table>")
            if reason is None:
                parts.append("<p>This plugin gives no per-image reasons.</p>")
            facts = {k: v for k, v in score_row.items() if k != "prediction"}
            (out / f"{safe}.html").write_text(_page(str(name), score, facts, parts, prep.run), encoding="utf-8")
            entries.append((name, safe, score))
    rows = "".join(f"<tr><td><a href='{s}.html'>{html.escape(str(n))}</a></td><td>{p:.3f}</td></tr>"
                   for n, s, p in entries)
    qrows = "".join(f"<tr><td>{html.escape(str(r.image_name))}</td><td>{html.escape(str(r.reason))}</td>"
                    f"<td>{html.escape(str(r.detail))}</td></tr>" for r in quarantine.itertuples())
    index = out / "index.html"
    index.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>explanations</title><style>body{font-family:"
        "sans-serif;max-width:980px;margin:1em auto}td,th{border:1px solid #ccc;padding:2px 6px}.notice{"
        "background:#fff3cd;padding:6px;border:1px solid #e0c36a}</style></head><body>"
        f"<p class='notice'>{html.escape(NOTICE)}</p><h1>{len(entries)} image(s) explained</h1>"
        f"<table><tr><th>image</th><th>score</th></tr>{rows}</table>"
        + (f"<h2>Not scored</h2><table><tr><th>image</th><th>reason</th><th>detail</th></tr>{qrows}</table>"
           if qrows else "") + "</body></html>", encoding="utf-8")
    return index
