"""Pure image ops and their registry: ``fn(img, params) -> ndarray | measurement``.

Every op takes an RGB uint8 H×W×3 array and a frozen, self-validating parameter object, does no
I/O, keeps no state, never mutates its input, and is deterministic. ``kind`` says whether it returns
a new image (``transform``), a measurement (``measure``), or a frozen result holding the new
``image`` and what the op found (``result``). An op with nothing to change returns its input object
itself (no copy on the hot path); otherwise its image never shares memory with the input. The
version of each op goes into the dataset fingerprint: bump it whenever the op's output changes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from melanoma_data import columns
from melanoma_data.ops import artefacts, colour, decode, encode, geometry, hair, vignette
from melanoma_data.ops.base import Params


@dataclasses.dataclass(frozen=True)
class OpInfo:
    """One registered op: the function, its parameter class, its version and its kind."""

    name: str
    fn: Callable[[Any, Any], Any]
    params: type[Params]
    version: str
    kind: str


OPS: dict[str, OpInfo] = {
    op.name: op
    for op in [
        OpInfo("orient", geometry.apply_orientation, geometry.OrientParams, geometry.VERSION, "transform"),
        OpInfo("field_of_view", vignette.field_of_view, vignette.VignetteParams, vignette.VERSION, "result"),
        OpInfo("artefacts", artefacts.artefacts, artefacts.ArtefactParams, artefacts.VERSION, "result"),
        OpInfo("hair", hair.remove_hair, hair.HairParams, hair.VERSION, "result"),
        OpInfo("colour", colour.shades_of_gray, colour.ColourParams, colour.VERSION, "result"),
        OpInfo("landscape", geometry.to_landscape, geometry.LandscapeParams, geometry.VERSION, "transform"),
        OpInfo("square", geometry.square, geometry.ResizeParams, geometry.VERSION, "transform"),
        OpInfo("phash", encode.perceptual_hash, encode.PHashParams, encode.VERSION, "measure"),
    ]
}

#: Versions of the byte-level steps that are not array ops (decode, encode), and of the shard columns.
CODEC_VERSIONS = {"decode": decode.VERSION, "encode": encode.VERSION, "columns": columns.VERSION}


def op_versions() -> dict[str, str]:
    """Name → version of every op and codec, as recorded in the fingerprint."""
    return {**{name: op.version for name, op in OPS.items()}, **CODEC_VERSIONS}
