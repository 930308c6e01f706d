"""Reading and writing a run directory's files (``config.json``, JSON and Parquet outputs).

The one module the runner (which writes runs) and ``evaluate`` (which reads them and writes the
metrics and report) both use, so neither imports the other.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

import pandas as pd

from melanoma_data import fsutil
from melanoma_data.errors import InputError

CONFIG_FILE = "config.json"


@dataclasses.dataclass(frozen=True)
class DatasetRef:
    """The dataset version a run was trained on, as its ``config.json`` records it."""

    url: str | None = None
    fingerprint: str | None = None
    name: str | None = None
    image_size: int | None = None


class RunConfig(dict[str, Any]):
    """A run directory's ``config.json``, read by attribute (every format the runner has written).

    The runner writes the file from a plain dict (its bytes and the run id are public); this type is how
    everything else reads it. It is still the file's JSON dict (a subclass; treat it as read-only), so code
    written against the dict (``result.config["run_id"]``, ``json.dumps(result.config)``) keeps working.
    """

    @property
    def raw(self) -> dict[str, Any]:
        """The JSON as a plain dict."""
        return dict(self)

    @classmethod
    def load(cls, run_dir: str | Path) -> RunConfig:
        """The ``config.json`` of ``run_dir``.

        Raises:
            InputError: not a run directory.
        """
        path = Path(run_dir) / CONFIG_FILE
        if not path.exists():
            raise InputError(f"{run_dir}: not a run directory (no config.json)")
        return cls(json.loads(path.read_text()))

    def __repr__(self) -> str:
        return f"RunConfig({self.run_id!r}, plugin {self.plugin!r})"

    @property
    def format(self) -> int:
        return int(self.get("format", 1))

    @property
    def run_id(self) -> str | None:
        return self.get("run_id")

    @property
    def plugin(self) -> str | None:
        """The plugin's registered name."""
        return self.get("plugin")

    @property
    def params(self) -> dict[str, Any]:
        """The plugin's parameters as validated and dumped at fit time."""
        return dict(self.get("params") or {})

    @property
    def seed(self) -> int | None:
        return self.get("seed")

    @property
    def dataset(self) -> DatasetRef:
        d = self.get("dataset") or {}
        return DatasetRef(d.get("url"), d.get("fingerprint"), d.get("name"), d.get("image_size"))

    @property
    def folds(self) -> int | None:
        """Cross-validation folds of the run."""
        return None if self.get("folds") is None else int(self["folds"])

    @property
    def fold_map(self) -> dict[int, int]:
        """Dataset fold → the run's CV fold."""
        return {int(a): int(b) for a, b in (self.get("fold_map") or {}).items()}

    @property
    def base_runs(self) -> list[str]:
        return [str(r) for r in self.get("base_runs") or []]

    @property
    def inputs(self) -> dict[str, Any]:
        """Inputs beyond the dataset the run key holds (embeddings, image runs), when any."""
        return dict(self.get("inputs") or {})

    @property
    def calibrate(self) -> str:
        """The recalibration fitted with the run (``none`` when the file does not say)."""
        return str(self.get("calibrate", "none"))

    @property
    def versions(self) -> dict[str, str]:
        """Package versions at fit time."""
        return dict(self.get("versions") or {})

    @property
    def created_at(self) -> str | None:
        return self.get("created_at")


def run_config(run_dir: str | Path) -> RunConfig:
    """A run directory's ``config.json`` (see :class:`RunConfig`).

    Raises:
        InputError: not a run directory.
    """
    return RunConfig.load(run_dir)


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
