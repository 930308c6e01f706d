"""The step table: every preprocessing step once — what it runs, reads, writes and measures, its config and version.

One :class:`Step` per op (and per helper step such as the header probe or the thumbnail): its name, the
function the pipeline calls, the record keys it reads and writes, the shard columns it produces, its
parameter class (the config section of the same name), its version (part of the fingerprint) and which
of its columns the models use and the scorer reports. Everything else derives from :data:`STEPS`:

* the order :func:`melanoma_data.pipeline.process_image` runs the steps in (:func:`order`: a stable
  topological order of what each reads and writes — not the order of the table);
* the sections of :class:`melanoma_data.config.PreprocessConfig` (:func:`sections`), the names they
  had before (:func:`renamed_sections`) and the sections added since fingerprints were first taken;
* the op versions of the fingerprint (:func:`versions`, via :func:`melanoma_data.ops.op_versions`);
* the processing and measurement columns of the shards, in table order (:func:`column_specs`, which
  :mod:`melanoma_data.columns` turns into its ``Column`` rows), and the measurement lists of the models
  (:func:`model_features`) and of ``score`` (:func:`reported_columns`);
* the Markdown reference of every step (:func:`reference_markdown`).

Adding an op is its file plus one :class:`Step` here (and its row in the contract tests). The table's
order is the order of the columns in the shards (processing columns first, then measurements); the run
order is derived, so a step is placed by what it reads.

The pipeline calls ``run(cfg, *values)`` with the whole :class:`PreprocessConfig` and the values of
``reads`` in that order; ``run`` returns a dict of exactly ``writes`` and the names of ``columns``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow
import pydantic
from pydantic import Field

from melanoma_data.ops import artefacts as art
from melanoma_data.ops import colour as col
from melanoma_data.ops import decode as dec
from melanoma_data.ops import encode as enc
from melanoma_data.ops import geometry as geo
from melanoma_data.ops import hair as hr
from melanoma_data.ops import vignette as vig
from melanoma_data.ops._cv import cv2
from melanoma_data.ops.base import OpParams

#: What the pipeline is given before any step runs: the original file's bytes and the row's ``image_type``.
GIVEN = ("data", "image_type")

#: The views the op policy tells apart: ``dermoscopic`` (the default, and any view not clinical) and ``clinical``
#: (close-ups and overviews taken with a camera or a smartphone: ``image_type`` starting with ``clinical``).
VIEWS = ("dermoscopic", "clinical")


def view_of(image_type: Any) -> str:
    """The op policy's view of a row's ``image_type``: ``clinical`` for ``clinical: close-up`` / ``clinical:
    overview`` (any text starting with ``clinical``, any case), else ``dermoscopic`` (also when missing)."""
    if isinstance(image_type, str) and image_type.strip().lower().startswith("clinical"):
        return "clinical"
    return "dermoscopic"


class StepTableError(ValueError):
    """The step table cannot be ordered: a cycle, a read no step writes, a key two steps write, a repeated name."""


@dataclasses.dataclass(frozen=True)
class ColumnSpec:
    """A shard column a step produces (:mod:`melanoma_data.columns` makes it a ``Column`` of its table).

    Attributes:
        name: column name (and the record key the step writes it under).
        arrow: pyarrow type in the Parquet files.
        pandas: pandas dtype.
        group: ``processing`` (what preprocessing did) or ``measurement`` (what the op measured).
        nullable: may be missing.
        check: the schema check as ``(kind, *args)`` of ``melanoma_data.columns._checks``, or None.
        models: ``feature`` or ``id`` (see :mod:`melanoma_data.columns`).
        doc: one line for the docs and the manifest.
        audit: for auditing only (subgroup tables, the EDA report), never a default model feature: a step that
            lists it among its ``features`` is a :class:`StepTableError` (so adding such a column leaves every
            plugin's inputs, and its predictions on old data, as they were).
    """

    name: str
    arrow: pyarrow.DataType
    pandas: str
    group: str
    nullable: bool = True
    check: tuple[Any, ...] | None = None
    models: str = "feature"
    doc: str = ""
    audit: bool = False


@dataclasses.dataclass(frozen=True)
class Step:
    """One preprocessing step.

    Attributes:
        name: the step's name: its config section, its key in the op versions, timings and error messages.
        run: what the pipeline calls: ``run(cfg, *values of reads) -> {key: value}`` for ``writes`` and
            ``columns``.
        reads: record keys it needs (:data:`GIVEN` or another step's writes).
        writes: record keys it adds besides its columns (intermediate images, results, source facts).
        columns: the processing and measurement columns it produces (also record keys).
        params: its parameter class; its config section ``[name]`` unless ``configured`` is false.
        configured: the parameters come from the config (false: from each image, as the EXIF orientation).
        version: part of the dataset fingerprint; bump whenever the step's output changes (None: no version).
        fn: the pure op ``fn(img, params, ...)`` (what the op contract tests exercise); None for helper steps.
        kind: the op's kind: ``transform`` (returns an image), ``result`` (a frozen result with ``image``)
            or ``measure`` (a measurement).
        part_of: timed and reported (errors, timings) under that step's name, as part of it.
        renamed_from: the section's name before it took the op's name (still read, fingerprinted under it).
        added_later: the section was added after fingerprints were first taken: left out of the fingerprint
            while all at defaults.
        features: of ``columns``, those the models use as features, in that order.
        reported: of ``columns``, those ``score`` copies next to each score, in that order.
        doc: one line on what the step does.
        views: the views (:data:`VIEWS`) it runs on by default; on the others the op policy (``[views]``) runs
            ``bypass`` instead. Only a step with a ``bypass`` may leave a view out.
        bypass: what the pipeline calls instead of ``run`` where the op policy skips the step (same arguments,
            same keys: its columns null, its intermediate results passed through unchanged).
        view_note: why it runs, or does not, on each view (the reference and ``ops_skipped`` say it).
    """

    name: str
    run: Callable[..., dict[str, Any]]
    reads: tuple[str, ...]
    writes: tuple[str, ...] = ()
    columns: tuple[ColumnSpec, ...] = ()
    params: type[OpParams] | None = None
    configured: bool = True
    version: str | None = None
    fn: Callable[..., Any] | None = None
    kind: str | None = None
    part_of: str | None = None
    renamed_from: str | None = None
    added_later: bool = False
    features: tuple[str, ...] = ()
    reported: tuple[str, ...] = ()
    doc: str = ""
    views: tuple[str, ...] = VIEWS
    bypass: Callable[..., dict[str, Any]] | None = None
    view_note: str = ""

    def __post_init__(self) -> None:
        audit = {c.name for c in self.columns if c.audit}
        if audit & set(self.features):
            raise StepTableError(f"step {self.name!r}: audit column(s) {', '.join(sorted(audit & set(self.features)))}"
                                 " may not be model features")
        if set(self.views) != set(VIEWS) and self.bypass is None:
            raise StepTableError(f"step {self.name!r} leaves a view out but has no bypass")

    @property
    def outputs(self) -> tuple[str, ...]:
        """Every record key the step writes: ``writes`` and its columns."""
        return (*self.writes, *(c.name for c in self.columns))

    @property
    def label(self) -> str:
        """The name its time and its errors are reported under."""
        return self.part_of or self.name

    @property
    def section(self) -> str | None:
        """Its config section (its name), or None when it has none."""
        return self.name if self.params is not None and self.configured else None


_S, _F, _B = pyarrow.string(), pyarrow.float64(), pyarrow.bool_()
_FULL = (0.0, 0.0, 1.0, 1.0)
_ORIENT = {o: geo.OrientParams(exif_orientation=o) for o in geo.ORIENTATION_NAMES}


# ------------------------------------------------------------------------------ what each step runs


def _header(cfg: Any, data: bytes) -> dict[str, Any]:
    header = dec.check_dimensions(dec.read_header(data, cfg.decode), cfg.decode)
    return {"header": header, "orig_width": header.width, "orig_height": header.height,
            "orig_format": header.format, "orig_mode": header.mode}


def _decode(cfg: Any, data: bytes, header: dec.ImageHeader) -> dict[str, Any]:
    # the artefact detectors need their own resolution (thin ruler ticks), whatever the output size
    needed = max(cfg.working_side, cfg.artefacts.side) if cfg.artefacts.enabled else cfg.working_side
    reduction = dec.choose_reduction(header, needed, cfg.square.policy)
    return {"decoded": dec.decode(data, header, reduction, cfg.decode), "decode_reduction": reduction}


def _orient(cfg: Any, decoded: np.ndarray, header: dec.ImageHeader) -> dict[str, Any]:
    o = header.orientation
    return {"oriented": geo.apply_orientation(decoded, _ORIENT[o]), "exif_orientation": o,
            "orientation_applied": geo.ORIENTATION_NAMES[o]}


def _artefacts(cfg: Any, oriented: np.ndarray, thumb: np.ndarray) -> dict[str, Any]:
    result = art.artefacts(oriented, cfg.artefacts, thumb)
    found = result.found
    out: dict[str, Any] = {"artefacts": result}
    # missing (None) when the detectors did not look (off, or the image too small): "not looked for" never
    # reads as "not there"
    for kind in art.KINDS:
        out[f"{kind}_detected"] = found.detected[kind] if found.looked else None
        out[f"{kind}_fraction"] = found.fraction[kind] if found.looked else None
    return out


def _artefacts_skipped(cfg: Any, oriented: np.ndarray, thumb: np.ndarray) -> dict[str, Any]:
    # the op policy's clinical view: nothing looked for, the image untouched (the columns null: "not looked")
    out: dict[str, Any] = {"artefacts": art.ArtefactResult(oriented, art.NOTHING)}
    for kind in art.KINDS:
        out[f"{kind}_detected"] = out[f"{kind}_fraction"] = None
    return out


def _field_of_view(cfg: Any, artefacts: art.ArtefactResult, thumb: np.ndarray) -> dict[str, Any]:
    # the artefacts op's crop policy narrows the field's one crop box
    within = None if artefacts.box == _FULL else artefacts.box
    fov = vig.field_of_view(artefacts.image, cfg.field_of_view, thumb, within)
    v = fov.vignette
    return {"in_field": fov.image, "vignette": v, "vignette_detected": v.detected,
            "vignette_radius_frac": v.radius_frac, "vignette_cx": v.cx, "vignette_cy": v.cy,
            "vignette_confidence": v.confidence, "crop_x0": v.box[0], "crop_y0": v.box[1], "crop_x1": v.box[2],
            "crop_y1": v.box[3]}


def _field_of_view_skipped(cfg: Any, artefacts: art.ArtefactResult, thumb: np.ndarray) -> dict[str, Any]:
    # the op policy's clinical view: no field looked for, the whole frame kept (the artefacts op's crop box, when
    # it ran with policy = "crop", still applies); the field's columns null, the crop box the frame kept
    within = None if artefacts.box == _FULL else artefacts.box
    params = cfg.field_of_view.model_copy(update={"enabled": False})
    fov = vig.field_of_view(artefacts.image, params, thumb, within)
    v = fov.vignette
    return {"in_field": fov.image, "vignette": v, "vignette_detected": None, "vignette_radius_frac": None,
            "vignette_cx": None, "vignette_cy": None, "vignette_confidence": None, "crop_x0": v.box[0],
            "crop_y0": v.box[1], "crop_x1": v.box[2], "crop_y1": v.box[3]}


def _landscape(cfg: Any, in_field: np.ndarray) -> dict[str, Any]:
    portrait = in_field.shape[0] > in_field.shape[1]
    return {"turned": geo.to_landscape(in_field, cfg.landscape),
            "portrait_rotated": bool(portrait and cfg.landscape.policy == "rotate")}


def _square(cfg: Any, turned: np.ndarray) -> dict[str, Any]:
    return {"squared": geo.square(turned, cfg.square, False)}  # small originals: the ops run at their own size


def follow(mask: np.ndarray | None, oriented: tuple[int, int], v: vig.Vignette, frame: tuple[int, int],
           cfg: Any) -> np.ndarray | None:
    """An artefact mask of the oriented original carried through the field crop, the landscape turn and
    the square resize into the frame hair removal works in (``None`` when there is nothing to carry)."""
    if mask is None or not mask.any():
        return None
    h, w = oriented
    m = cv2.resize(mask.view(np.uint8) * np.uint8(255), (w, h), interpolation=cv2.INTER_NEAREST)
    if cfg.field_of_view.policy == "crop":
        m = vig.apply_vignette_policy(m, v, cfg.field_of_view)
    m = geo.square(geo.to_landscape(m, cfg.landscape), cfg.square.model_copy(update={"pad_value": 0}), False)
    if m.shape[:2] != frame:
        m = cv2.resize(m, frame[::-1], interpolation=cv2.INTER_NEAREST)
    return m > 127


def _follow(cfg: Any, artefacts: art.ArtefactResult, oriented: np.ndarray, vignette: vig.Vignette,
            squared: np.ndarray) -> dict[str, Any]:
    return {"keep": follow(artefacts.found.kept(), oriented.shape[:2], vignette, squared.shape[:2], cfg)}


def _hair(cfg: Any, squared: np.ndarray, keep: np.ndarray | None) -> dict[str, Any]:
    result = hr.remove_hair(squared, cfg.hair, keep)
    return {"hair": result, "hair_fraction": result.fraction, "marks_fraction": result.marks_fraction}


def _colour(cfg: Any, hair: hr.HairResult, keep: np.ndarray | None) -> dict[str, Any]:
    result = col.shades_of_gray(hair.image, cfg.colour, keep)
    gains = result.gains
    return {"colour": result, "colour_gain_r": gains[0], "colour_gain_g": gains[1], "colour_gain_b": gains[2],
            "brightness_before": result.brightness_before, "brightness_after": result.brightness_after,
            "ita": result.ita, "ita_band": result.ita_band}


def _view(cfg: Any, image_type: Any) -> dict[str, Any]:
    skipped = skipped_steps(cfg.views, view_of(image_type))
    if not skipped:
        return {"ops_skipped": None}
    # the names only (the reasons are the steps' view notes, in the ops reference): one short value per row
    return {"ops_skipped": f"{', '.join(skipped)} ({view_of(image_type)} view)"}


def _enlarge(cfg: Any, colour: col.ColourResult) -> dict[str, Any]:
    img = geo.enlarge(colour.image, cfg.square.size)
    return {"processed": img, "width": img.shape[1], "height": img.shape[0]}


def _encode(cfg: Any, processed: np.ndarray) -> dict[str, Any]:
    return {"image": enc.encode_jpeg(processed, cfg.encode)}


def _phash(cfg: Any, thumb: np.ndarray) -> dict[str, Any]:
    # the centre square of the oriented original's thumbnail: taken before the field crop and the other ops, so
    # two copies of an image hash alike even when an op decides differently on them
    return {"phash": enc.perceptual_hash(geo.centre_square(thumb), cfg.phash)}


def _sha256(cfg: Any, data: bytes) -> dict[str, Any]:
    return {"file_bytes": len(data), "file_sha256": hashlib.sha256(data).hexdigest()}


def _artefact_columns() -> tuple[ColumnSpec, ...]:
    what = {"ruler": ("ruler ticks found", "ruler pixels"), "ink": ("pen / marker ink found", "ink pixels"),
            "bubbles": ("gel / air bubbles found", "bubble pixels"),
            "dark_corners": ("dark corners / field ring, relative to the skin", "dark border pixels")}
    return tuple(spec for kind in art.KINDS for spec in (
        ColumnSpec(f"{kind}_detected", _B, "boolean", "measurement", doc=f"{what[kind][0]} (artefacts)"),
        ColumnSpec(f"{kind}_fraction", _F, "Float64", "measurement", check=("range", 0.0, 1.0),
                   doc=f"{what[kind][1]}, of the original")))


_M = "measurement"
_GAIN = {"check": ("gt", 0), "nullable": False, "doc": "Shades of Gray gain"}
_LUMA = {"check": ("range", 0.0, 255.0), "nullable": False, "doc": "mean luminance"}

# ------------------------------------------------------------------------------ the table

#: Every step, in the order of the columns they produce (the run order is :func:`order`'s).
STEPS: tuple[Step, ...] = (
    Step("header", _header, reads=("data",), writes=("header", "orig_width", "orig_height", "orig_format",
                                                      "orig_mode"),
         doc="read the file's header (size, format, mode, EXIF orientation) without decoding; refuse bombs and "
             "tiny images ([decode] max_pixels, min_side)"),
    Step("orient", _orient, reads=("decoded", "header"), writes=("oriented",),
         columns=(ColumnSpec("exif_orientation", pyarrow.int8(), "int8", "processing", nullable=False,
                             check=("range", 1, 8), doc="EXIF orientation tag"),
                  ColumnSpec("orientation_applied", _S, "str", "processing", nullable=False, doc="what the tag did")),
         params=geo.OrientParams, configured=False, version=geo.VERSION, fn=geo.apply_orientation, kind="transform",
         doc="undo the EXIF orientation (the image as it should be displayed)"),
    Step("landscape", _landscape, reads=("in_field",), writes=("turned",),
         columns=(ColumnSpec("portrait_rotated", _B, "bool", "processing", nullable=False,
                             doc="turned to landscape"),),
         params=geo.LandscapeParams, version=geo.VERSION, fn=geo.to_landscape, kind="transform",
         renamed_from="portrait", doc="turn portrait images to landscape, or keep them"),
    Step("decode", _decode, reads=("data", "header"), writes=("decoded",),
         columns=(ColumnSpec("decode_reduction", pyarrow.int8(), "int8", "processing", nullable=False,
                             check=("isin", [1, 2, 4, 8]), doc="DCT-domain decode reduction"),),
         params=dec.DecodeParams, version=dec.VERSION,
         doc="decode to RGB, reduced in the DCT domain to what the output size and the artefact detectors need"),
    Step("field_of_view", _field_of_view, reads=("artefacts", "thumb"), writes=("in_field", "vignette"),
         columns=(ColumnSpec("vignette_detected", _B, "boolean", _M, doc="microscope field found (missing: not "
                             "looked for, see ops_skipped)"),
                  ColumnSpec("vignette_radius_frac", _F, "Float64", _M, check=("range", 0.1, 2.0),
                             doc="field radius / short side"),
                  ColumnSpec("vignette_cx", _F, "Float64", _M, doc="field centre x (fraction)"),
                  ColumnSpec("vignette_cy", _F, "Float64", _M, doc="field centre y (fraction)"),
                  ColumnSpec("vignette_confidence", _F, "float64", _M, doc="field fit confidence"),
                  *(ColumnSpec(f"crop_{c}", _F, "float64", _M, doc="band-free box") for c in ("x0", "y0", "x1", "y1"))),
         params=vig.VignetteParams, version=vig.VERSION, fn=vig.field_of_view, kind="result", renamed_from="vignette",
         features=("vignette_detected", "vignette_radius_frac"), reported=("vignette_detected", "vignette_radius_frac"),
         views=("dermoscopic",), bypass=_field_of_view_skipped,
         view_note="a clinical photo has no microscope field; its dark corners are shadows or background, and a "
                   "crop to a 'field' would cut the lesion's surroundings (the whole frame is kept)",
         doc="find the round microscope field and dark bands; crop to the field, mask outside it, or leave it"),
    Step("thumbnail", lambda cfg, oriented: {"thumb": geo.grey_thumbnail(oriented)}, reads=("oriented",),
         writes=("thumb",),
         doc="one grey thumbnail of the oriented original, shared by the field detector, the dark-corner test and "
             "the perceptual hash"),
    Step("square", _square, reads=("turned",), writes=("squared",),
         params=geo.ResizeParams, version=geo.VERSION, fn=geo.square, kind="transform", renamed_from="resize",
         doc="centre-crop or pad to a square and resize to the output size (a smaller original stays at its own "
             "size until enlarge)"),
    Step("hair", _hair, reads=("squared", "keep"), writes=("hair",),
         columns=(ColumnSpec("hair_fraction", _F, "float64", _M, nullable=False, check=("range", 0.0, 1.0),
                             doc="hair pixels"),
                  ColumnSpec("marks_fraction", _F, "float64", _M,
                             doc="ruler / pen / ink / bubble pixels kept from hair removal")),
         params=hr.HairParams, version=hr.VERSION, fn=hr.remove_hair, kind="result",
         features=("hair_fraction",), reported=("hair_fraction", "marks_fraction"),
         view_note="runs on every view: hair lies on the skin in clinical photos as in dermoscopy",
         doc="detect hair (dark and light, any direction) and inpaint it; rulers, pen strokes and ink are kept"),
    Step("artefacts", _artefacts, reads=("oriented", "thumb"), writes=("artefacts",), columns=_artefact_columns(),
         params=art.ArtefactParams, version=art.VERSION, fn=art.artefacts, kind="result", added_later=True,
         reported=("ruler_detected", "ink_detected", "bubbles_detected", "dark_corners_detected"),
         views=("dermoscopic",), bypass=_artefacts_skipped,
         view_note="its detectors are tuned to dermoscopy (a ruler on the field's rim, gel bubbles, dark corners of "
                   "a round field): on a clinical photo uneven light reads as dark corners, and the ink thresholds "
                   "are set for dermoscopic skin; their columns are null (not looked for)",
         doc="find rulers, ink, gel bubbles and dark corners in the whole oriented original; leave, mask or crop "
             "them"),
    Step("follow", _follow, reads=("artefacts", "oriented", "vignette", "squared"), writes=("keep",),
         part_of="artefacts",
         doc="carry the artefact mask into the squared frame, so hair removal and colour estimation leave it out"),
    Step("colour", _colour, reads=("hair", "keep"), writes=("colour",),
         columns=(*(ColumnSpec(f"colour_gain_{c}", _F, "float64", _M, **_GAIN) for c in "rgb"),
                  ColumnSpec("brightness_before", _F, "float64", _M, **_LUMA),
                  ColumnSpec("brightness_after", _F, "float64", _M, **_LUMA),
                  ColumnSpec("ita", _F, "Float64", _M, check=("range", -90.0, 90.0), audit=True,
                             doc="individual typology angle (degrees) of the skin, median, before correction; "
                                 "for auditing, not a model feature (missing: colour off, or no skin-only pixels)"),
                  ColumnSpec("ita_band", _S, "str", _M, check=("isin", list(col.ITA_BAND_NAMES)), audit=True,
                             doc="ITA band (Del Bino & Bernerd 2013: very light > 55°, light > 41°, intermediate > "
                                 "28°, tan > 10°, brown > -30°, dark; a boundary value is the darker band)")),
         params=col.ColourParams, version=col.VERSION, fn=col.shades_of_gray, kind="result",
         features=("brightness_before", "brightness_after", "colour_gain_r", "colour_gain_g", "colour_gain_b"),
         reported=("brightness_before", "brightness_after", "colour_gain_r", "colour_gain_g", "colour_gain_b"),
         view_note="runs on every view: estimated from skin pixels, which a clinical photo shows more of",
         doc="Shades of Gray colour constancy estimated from skin, and an optional brightness target; the skin's "
             "individual typology angle (ITA) measured before the correction"),
    Step("enlarge", _enlarge, reads=("colour",), writes=("processed",),
         columns=(ColumnSpec("width", pyarrow.int32(), "int32", "processing", nullable=False, check=("eq_size",),
                             models="id", doc="stored width"),
                  ColumnSpec("height", pyarrow.int32(), "int32", "processing", nullable=False, check=("eq_size",),
                             models="id", doc="stored height")),
         part_of="square", doc="enlarge a square smaller than the output size, last, so no op works on "
                               "interpolated pixels"),
    Step("encode", _encode, reads=("processed",), writes=("image",), params=enc.EncodeParams, version=enc.VERSION,
         doc="encode the processed pixels as baseline JPEG"),
    Step("phash", _phash, reads=("thumb",),
         columns=(ColumnSpec("phash", _S, "str", _M, check=("matches", r"^[0-9a-f]+$"), models="id",
                             doc="perceptual hash (hex)"),),
         params=enc.PHashParams, version=enc.VERSION, fn=enc.perceptual_hash, kind="measure",
         doc="DCT perceptual hash of the oriented original's centre square (near-duplicates differ in few bits)"),
    Step("sha256", _sha256, reads=("data",), writes=("file_bytes", "file_sha256"),
         doc="the original file's size and SHA-256"),
    Step("view", _view, reads=("image_type",),
         columns=(ColumnSpec("ops_skipped", _S, "str", "processing", models="id",
                             doc="the steps the op policy did not run for the image's view, e.g. `field_of_view, "
                                 "artefacts (clinical view)` (why: each step's view note in the ops reference; "
                                 "missing: every step ran)"),),
         doc="the row's view (its `image_type`: clinical photos, else dermoscopy) and the steps the op policy "
             "([views]) skips for it"),
)


# ------------------------------------------------------------------------------ what derives from it


def order(steps: Sequence[Step] = STEPS, given: Iterable[str] = GIVEN) -> list[Step]:
    """The steps in an order where each runs after every step whose writes it reads.

    Stable: among the steps that could run next, the one earliest in ``steps`` runs first.

    Raises:
        StepTableError: two steps share a name or write the same key, a step reads a key no step writes
            (nor ``given``), or the steps' reads and writes form a cycle (the message names the steps).
    """
    given = set(given)
    writer: dict[str, int] = {}
    names: set[str] = set()
    for i, step in enumerate(steps):
        if step.name in names:
            raise StepTableError(f"two steps are named {step.name!r}")
        names.add(step.name)
        for key in step.outputs:
            if key in writer or key in given:
                other = "the pipeline's input" if key in given else f"step {steps[writer[key]].name!r}"
                raise StepTableError(f"step {step.name!r} writes {key!r}, which {other} already provides")
            writer[key] = i
    needs: list[set[int]] = []
    for step in steps:
        missing = [k for k in step.reads if k not in writer and k not in given]
        if missing:
            raise StepTableError(f"step {step.name!r} reads {', '.join(map(repr, missing))}, which no step writes")
        needs.append({writer[k] for k in step.reads if k in writer})
    users: list[list[int]] = [[] for _ in steps]
    for i, before in enumerate(needs):
        for j in before:
            users[j].append(i)
    waiting = [len(n) for n in needs]
    ready = [i for i, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    out: list[int] = []
    while ready:
        i = heapq.heappop(ready)
        out.append(i)
        for j in users[i]:
            waiting[j] -= 1
            if waiting[j] == 0:
                heapq.heappush(ready, j)
    if len(out) < len(steps):
        stuck = [steps[i].name for i in range(len(steps)) if i not in set(out)]
        raise StepTableError(f"the steps {', '.join(stuck)} read each other's writes in a cycle (or wait on one)")
    return [steps[i] for i in out]


#: The run order of :data:`STEPS` (derived once).
ORDER: tuple[Step, ...] = tuple(order())
BY_NAME: dict[str, Step] = {s.name: s for s in STEPS}
#: The steps the op policy may skip (those with a bypass), in table order.
SKIPPABLE: tuple[str, ...] = tuple(s.name for s in STEPS if s.bypass is not None)


def default_skips(view: str, steps: Sequence[Step] = STEPS) -> tuple[str, ...]:
    """The steps that do not run on ``view`` by default (their ``views`` leave it out), in table order."""
    return tuple(s.name for s in steps if view not in s.views)


class ViewPolicy(OpParams):
    """The op policy by view (config section ``[views]``): the steps not run on clinical photos.

    A row's view is its ``image_type``, else its layout's (``Layout.image_type``), else dermoscopic; only
    ``clinical`` views (``clinical: close-up``, ``clinical: overview``) are treated differently. The default comes
    from the step table (each step's ``views`` and why); a skipped step's columns are null and the row's
    ``ops_skipped`` says why. Dermoscopic rows always run every step.
    """

    clinical_skip: tuple[str, ...] = Field(default_skips("clinical"), title="views clinical_skip",
                                           description="steps that do not run on clinical photos (of: "
                                                       + ", ".join(SKIPPABLE) + ")")

    @pydantic.field_validator("clinical_skip")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [v for v in value if v not in SKIPPABLE]
        if bad:
            raise ValueError(f"{', '.join(map(repr, bad))} cannot be skipped; the steps that can: "
                             f"{', '.join(SKIPPABLE)}")
        return tuple(sorted(set(value), key=SKIPPABLE.index))


def skipped_steps(policy: ViewPolicy, view: str) -> tuple[str, ...]:
    """The steps ``policy`` does not run on ``view`` (none on dermoscopic rows)."""
    return policy.clinical_skip if view == "clinical" else ()


def plan(policy: ViewPolicy, view: str) -> tuple[tuple[str, Callable[..., dict[str, Any]], tuple[str, ...]], ...]:
    """The run order as ``(label, function, keys read)`` for a row of ``view``: each skipped step's bypass in
    place of its run."""
    skip = set(skipped_steps(policy, view))
    return tuple((s.label, s.bypass if s.name in skip else s.run, s.reads) for s in ORDER)  # type: ignore[misc]


def sections(steps: Sequence[Step] = STEPS) -> dict[str, type[OpParams]]:
    """Config section → parameter class, for every step configured by a section of its name, in table order."""
    return {s.name: s.params for s in steps if s.section is not None}  # type: ignore[misc]


def renamed_sections(steps: Sequence[Step] = STEPS) -> dict[str, str]:
    """Old section name → today's (the op's), for the sections named differently before."""
    return {s.renamed_from: s.name for s in steps if s.renamed_from}


def added_sections(steps: Sequence[Step] = STEPS) -> tuple[str, ...]:
    """Sections added after fingerprints were first taken (left out of the fingerprint while at defaults)."""
    return tuple(s.name for s in steps if s.added_later and s.section)


def versions(steps: Sequence[Step] = STEPS) -> dict[str, str]:
    """Step name → version, for every step that has one (the op versions of the fingerprint, less ``columns``)."""
    return {s.name: s.version for s in steps if s.version is not None}


def ops(steps: Sequence[Step] = STEPS) -> dict[str, Step]:
    """The steps that are pure image ops (``fn(img, params)``), by name: what the op contract tests cover."""
    return {s.name: s for s in steps if s.fn is not None}


def column_specs(steps: Sequence[Step] = STEPS) -> list[ColumnSpec]:
    """The columns the steps produce: processing columns, then measurements, each in table order."""
    every = [c for s in steps for c in s.columns]
    return [c for group in ("processing", "measurement") for c in every if c.group == group]


def model_features(steps: Sequence[Step] = STEPS) -> list[str]:
    """The measurement columns the models use as features, in table order (never an ``audit`` column)."""
    return [name for s in steps for name in s.features]


def audit_columns(steps: Sequence[Step] = STEPS) -> list[str]:
    """The columns measured for auditing only (subgroups, the EDA report), in table order."""
    return [c.name for s in steps for c in s.columns if c.audit]


def reported_columns(steps: Sequence[Step] = STEPS) -> list[str]:
    """The measurement columns ``score`` copies next to each score, in table order."""
    return [name for s in steps for name in s.reported]


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def reference_markdown(steps: Sequence[Step] = STEPS) -> str:
    """A Markdown reference of every step, in run order: what it reads and writes, the columns it produces, its
    version and config section, and each parameter with its type, default, bounds and description."""
    lines = ["# Preprocessing steps", "",
             "Generated from the step table (`melanoma_data/ops/steps.py`). The steps run in this order, derived "
             "from what each reads and writes; `data` is the original file's bytes.", ""]
    for n, step in enumerate(order(steps), 1):
        lines += [f"## {n}. `{step.name}`", "", step.doc[:1].upper() + step.doc[1:] + ".", ""]
        facts = [f"- reads: {', '.join(f'`{k}`' for k in step.reads)}",
                 f"- writes: {', '.join(f'`{k}`' for k in step.outputs) or '(nothing)'}"]
        if step.version is not None:
            facts.append(f"- version: `{step.version}` (part of the dataset fingerprint)")
        if step.part_of:
            facts.append(f"- timed and reported as part of `{step.part_of}`")
        if set(step.views) != set(VIEWS):
            left = [v for v in VIEWS if v not in step.views]
            facts.append(f"- views: runs on {', '.join(step.views)} images; not on {', '.join(left)} ones by default "
                         f"(`[views]`): {step.view_note}")
        elif step.view_note:
            facts.append(f"- views: {step.view_note}")
        if step.section:
            old = f" (formerly `[{step.renamed_from}]`)" if step.renamed_from else ""
            facts.append(f"- config section: `[{step.section}]`{old}")
        elif step.params is not None:
            facts.append(f"- parameters: `{step.params.__name__}`, set per image (not configured)")
        lines += [*facts, ""]
        if step.columns:
            lines += ["| column | type | group | description |", "|---|---|---|---|"]
            lines += [f"| `{c.name}` | {c.pandas} | {c.group} | {_cell(c.doc)} |" for c in step.columns]
            lines.append("")
        if step.params is not None:
            lines += ["| parameter | type | default | bounds | description |", "|---|---|---|---|---|"]
            lines += [f"| `{p['name']}` | {_cell(p['type'])} | `{p['default']!r}` | {_cell(p['bounds'])} | "
                      f"{_cell(p['description'])} |" for p in step.params.describe()]
            lines.append("")
    lines += ["## The op policy by view: `[views]`", "", ViewPolicy.__doc__.split("\n\n")[1].replace("\n    ", " ")
              .strip(), "", "| parameter | type | default | bounds | description |", "|---|---|---|---|---|"]
    lines += [f"| `{p['name']}` | {_cell(p['type'])} | `{p['default']!r}` | {_cell(p['bounds'])} | "
              f"{_cell(p['description'])} |" for p in ViewPolicy.describe()]
    return "\n".join(lines).rstrip() + "\n"
