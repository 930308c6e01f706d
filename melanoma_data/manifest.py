"""Dataset-version fingerprint and manifest (the index of what a version holds)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from melanoma_data import fsutil

MANIFEST_FILE = "manifest.json"
#: 2: config sections named as their ops (field_of_view, landscape, square); 1: vignette, portrait, resize
#: (readers take both through :func:`melanoma_data.config.manifest_section`).
MANIFEST_FORMAT = 2


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(config: dict[str, Any], op_versions: dict[str, str], listing: list[tuple]) -> str:
    """Fingerprint of (config, op versions, input listing) — the dataset version's directory name.

    The listing holds every image file's relative path, size and modification time, and the
    content hash of every metadata CSV: editing a CSV or replacing an image gives a new version.
    """
    payload = canonical_json({"config": config, "ops": op_versions, "inputs": [list(x) for x in listing]})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def write_manifest(fs, version_dir: str, manifest: dict[str, Any]) -> None:
    """Atomically write ``manifest.json`` (its presence marks a finished version)."""
    data = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
    fsutil.atomic_write(fs, fsutil.join(version_dir, MANIFEST_FILE), data)


def read_manifest(fs, version_dir: str) -> dict[str, Any] | None:
    """The manifest of a version, or None when the version is unfinished."""
    path = fsutil.join(version_dir, MANIFEST_FILE)
    data = fsutil.cat_or_none(fs, path)
    return None if data is None else json.loads(data)
