"""CSV files meant for people: cells a spreadsheet would run as formulas are escaped (OWASP's rule)."""

from __future__ import annotations

import os
import re
from typing import Any

import pandas as pd

#: first characters that make a spreadsheet read a cell as a formula (OWASP: CSV injection)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def escape_cell(value: Any) -> Any:
    """``value`` with a ``'`` in front when it is text a spreadsheet would run as a formula.

    Only strings change: numbers, missing values and text that is a plain number (``-1``, ``+0.5``, which
    a spreadsheet reads as that number) are returned as they are.
    """
    if isinstance(value, str) and value.startswith(FORMULA_START) and not _NUMBER.fullmatch(value):
        return "'" + value
    return value


def escape_formulas(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` with :func:`escape_cell` applied to every text column (numeric columns untouched)."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object or isinstance(out[col].dtype, pd.StringDtype):
            out[col] = out[col].map(escape_cell, na_action="ignore")
    return out


def to_csv_for_people(frame: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write ``frame`` as a CSV a person opens in a spreadsheet: formula-like text cells escaped, no index.

    Machine outputs (``predict --out`` scores, submissions, files the toolkit reads back) are written
    with plain ``to_csv`` instead: their cells must stay exactly what the code produced.
    """
    escape_formulas(frame).to_csv(path, index=False)
