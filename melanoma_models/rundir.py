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


#: the stored recalibration of a run fitted with ``--set calibrate=platt|isotonic`` (plain JSON, no code)
CALIBRATION = "calibration.json"


def read_calibration(run_dir: str | Path) -> dict[str, Any] | None:
    """A run's ``calibration.json`` checked to be one of the two plain forms, or None when the run has none.

    Raises:
        InputError: a calibration file that is not valid JSON or not a Platt / isotonic calibrator.
    """
    import math

    path = Path(run_dir) / CALIBRATION
    if not path.exists():
        return None
    try:
        cal = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None

    def finite(v: Any) -> bool:
        return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)

    method = cal.get("method") if isinstance(cal, dict) else None
    if method == "platt" and finite(cal.get("a")) and finite(cal.get("b")) and cal["a"] > 0:
        return cal
    if method == "isotonic":
        x, y = cal.get("x"), cal.get("y")
        if (isinstance(x, list) and isinstance(y, list) and 1 <= len(x) == len(y) and all(map(finite, x + y))
                and all(a <= b for a, b in zip(x, x[1:], strict=False))
                and all(a <= b for a, b in zip(y, y[1:], strict=False)) and min(y) >= 0 and max(y) <= 1):
            return cal
    raise InputError(f"{path}: not a calibrator this toolkit writes (expected method platt with a > 0 and b, or "
                     "isotonic with increasing x and y in [0, 1])")
