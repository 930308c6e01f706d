"""The input layouts: one module per layout, registered here in detection order.

Each module (``kaggle2020.py``, ``isic2019.py``, ...) holds one :class:`Layout`: how a folder of that
layout is recognised (``detect``), how it is read (``parse``), what its ``target`` means, the preset it
wants, its rows' ``source`` name, and a synthetic writer. The registry answers "which layout is this
folder" (:func:`detect`: the first registered layout whose ``detect`` says yes), and the CLI's layout
choices, ``build.auto_preset`` and the layout reference (:func:`reference_markdown`) read it.

Adding a layout is one module here: every module of this package that defines ``LAYOUT`` is registered, in
the order of the layouts' ``priority`` (the detection priority is one number, kept with the layout it orders).
"""

from __future__ import annotations

import importlib
import pkgutil
import posixpath

from melanoma_data.errors import InputError
from melanoma_data.layouts.base import H5_SEP, IMAGE_EXTS, Layout, Parsed

__all__ = ["H5_SEP", "IMAGE_EXTS", "Layout", "Parsed", "auto_preset", "detect", "get", "names", "reference_markdown",
           "register", "registered"]

_REGISTRY: dict[str, Layout] = {}


def register(layout: Layout) -> Layout:
    """Add a layout (tried after those registered before it).

    Raises:
        ValueError: a layout of that name is registered already.
    """
    if layout.name in _REGISTRY:
        raise ValueError(f"layout {layout.name!r} is registered twice")
    _REGISTRY[layout.name] = layout
    return layout


def _builtin() -> list[Layout]:
    """Every ``LAYOUT`` of this package's modules, by priority (a folder is the first layout whose ``detect``
    matches: the specific shapes first, a CSV that names images next, a bare folder of images last)."""
    found = []
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        if isinstance(getattr(module, "LAYOUT", None), Layout):
            found.append(module.LAYOUT)
    found.sort(key=lambda layout: layout.priority)
    clash = [a.name for a, b in zip(found, found[1:], strict=False) if a.priority == b.priority]
    if clash:
        raise ValueError(f"layouts {clash} share a priority with the next one; give each its own")
    return found


for _layout in _builtin():
    register(_layout)


def registered() -> tuple[Layout, ...]:
    """Every layout, in detection order."""
    return tuple(_REGISTRY.values())


def names() -> tuple[str, ...]:
    """The layouts' names, in detection order."""
    return tuple(_REGISTRY)


def get(name: str) -> Layout:
    """The layout called ``name``.

    Raises:
        InputError: no such layout (the message lists the known ones).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown layout {name!r}; known: {', '.join(_REGISTRY)}") from None


def detect(fs, root: str) -> str:
    """Name of the input layout found at ``root``: the first registered layout whose ``detect`` matches.

    Raises:
        InputError: when the folder is missing or matches no layout.
    """
    if not fs.isdir(root):
        raise InputError(f"input folder {root!r} does not exist or is not a folder")
    entries = {posixpath.basename(p) for p in fs.ls(root, detail=False)}
    for layout in _REGISTRY.values():
        if layout.detect(fs, root, entries):
            return layout.name
    hints = [layout.hint for layout in _REGISTRY.values()]
    raise InputError(f"{root}: no known input layout ({', '.join(hints)}); pass --metadata CSV")


def auto_preset(kinds: set[str]) -> str | None:
    """The preset every layout in ``kinds`` wants, when they all want the same one, else None."""
    presets = {get(k).preset for k in kinds}
    return presets.pop() if len(presets) == 1 else None


def reference_markdown() -> str:
    """The layout reference (Markdown): for each layout in detection order, how it is detected, the files
    it reads, what its ``target`` means, the preset it chooses, its rows' ``source`` and the release it
    follows."""
    lines = ["# Input layouts", "",
             "A folder is read as the first layout below whose detection rule matches it (`--metadata CSV` reads "
             "any folder as `generic`). Every layout's rows are then normalised and validated the same way.", ""]
    for layout in _REGISTRY.values():
        target = {"melanoma": "1 = melanoma", "malignant": "1 = melanoma, basal or squamous cell carcinoma",
                  None: "none (unlabelled)"}.get(layout.natural_target, layout.natural_target)
        lines += [f"## `{layout.name}`", "",
                  f"- follows: {layout.release}",
                  f"- detected by: {layout.detected_by}",
                  f"- reads: {layout.reads}",
                  f"- natural target: {target}",
                  f"- preset: {f'`{layout.preset}`' if layout.preset else 'none'}",
                  f"- source: {f'`{layout.source}`' if layout.source else 'the input folder name'}",
                  f"- fills: {', '.join(f'`{c}`' for c in layout.fills)}",
                  *([f"- licence: {layout.licence}"] if layout.licence else []),
                  *([f"- images: {layout.image_type} (the op policy for that view applies)"]
                    if layout.image_type else []), ""]
    return "\n".join(lines)
