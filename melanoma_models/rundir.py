"""Reading and writing a run directory's files (``config.json``, JSON and Parquet outputs).

The one module the runner (which writes runs) and ``evaluate`` (which reads them and writes the
metrics and report) both use, so neither imports the other.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pandas as pd

from melanoma_data import fsutil
from melanoma_data.errors import InputError


def run_config(run_dir: str | Path) -> dict[str, Any]:
    """A run directory's ``config.json``.

    Raises:
        InputError: not a run directory.
    """
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise InputError(f"{run_dir}: not a run directory (no config.json)")
    return json.loads(path.read_text())


def write_json(path: str | Path, value: Any) -> None:
    """``value`` as indented, key-sorted JSON, written atomically."""
    fsutil.atomic_write(fsutil.resolve(str(path))[0], str(path),
                        json.dumps(value, indent=2, sort_keys=True, default=str).encode())


def write_parquet(path: str | Path, frame: pd.DataFrame) -> None:
    """``frame`` (without its index) as Parquet, written atomically."""
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    fsutil.atomic_write(fsutil.resolve(str(path))[0], str(path), buf.getvalue())
