"""The dataset catalog: find the versions under an output root and summarise each one."""

from __future__ import annotations

import json
from typing import Any

from melanoma_data import fsutil, manifest, shards


def _entry(fs, vdir: str) -> dict[str, Any]:
    url = fsutil.to_url(fs, vdir)
    parts = vdir.rstrip("/").split("/")
    row: dict[str, Any] = {"path": url, "name": parts[-2] if len(parts) > 1 else "", "fingerprint": parts[-1]}
    path = fsutil.join(vdir, manifest.MANIFEST_FILE)
    if not fs.exists(path):
        row["status"] = "unfinished (no manifest.json; run the same preprocess command again)"
        return row
    try:
        doc = manifest.Manifest(json.loads(fs.cat_file(path)))
        summary = doc.summary()
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        row["status"] = f"corrupt manifest.json ({type(exc).__name__}: {exc})"
        return row
    row.update(status="ok", **{**summary, "name": summary["name"] if doc.name is not None else row["name"]})
    return row


def list_versions(root: str) -> list[dict[str, Any]]:
    """Every dataset version up to three levels below ``root`` (a version, a dataset folder, an output root).

    Unfinished versions and versions with a corrupt manifest are listed too, with a readable
    ``status`` instead of failing the listing.
    """
    fs, base = fsutil.resolve(root)
    if not fs.exists(base):
        return []
    found: set[str] = set()
    for depth in ("", "*/", "*/*/", "*/*/*/"):
        for marker in (manifest.MANIFEST_FILE, shards.PARTS_DIR):  # finished, or started and unfinished
            found.update(p.rsplit("/", 1)[0] for p in fs.glob(fsutil.join(base, depth + marker)))
    rows = [_entry(fs, v) for v in sorted(found)]
    return sorted(rows, key=lambda r: (r.get("name", ""), r.get("created", ""), r["fingerprint"]))


def human_bytes(n: int | None) -> str:
    """``1234567`` → ``1.2 MB``."""
    if n is None:
        return ""
    size = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"
