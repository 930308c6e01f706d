"""CSV files for people escape formula-like text cells; numbers and machine outputs stay as they are."""

from __future__ import annotations

import pandas as pd
import pytest

from melanoma_data.spreadsheet import escape_cell, escape_formulas, to_csv_for_people


@pytest.mark.parametrize("raw", ['=HYPERLINK("http://x","click")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1)",
                                 "\t=1", "\r=1", "-", "=", "+inf"])
def test_formula_like_text_is_prefixed(raw):
    assert escape_cell(raw) == "'" + raw


@pytest.mark.parametrize("value", ["-1", "+0.5", "-3.2e-4", "ISIC_0000001", "a=b", "", " =1", -1, -0.25, None])
def test_numbers_and_ordinary_text_are_unchanged(value):
    assert escape_cell(value) == value if value is not None else escape_cell(value) is None


def test_csv_for_people_round_trips_numbers_and_escapes_text(tmp_path):
    frame = pd.DataFrame({"image_name": ["=HYPERLINK(\"http://evil\")", "ISIC_1"], "score": [-1, 0.5],
                          "age": pd.array([-1, None], dtype="Int64"), "note": ["@x", None]})
    to_csv_for_people(frame, tmp_path / "q.csv")
    back = pd.read_csv(tmp_path / "q.csv")
    assert back["image_name"].tolist() == ["'=HYPERLINK(\"http://evil\")", "ISIC_1"]
    assert back["score"].tolist() == [-1, 0.5] and back["age"].iloc[0] == -1
    assert back["note"].iloc[0] == "'@x" and pd.isna(back["note"].iloc[1])
    assert frame["image_name"].iloc[0].startswith("=")  # the caller's frame is not changed
    assert escape_formulas(frame)["score"].dtype == frame["score"].dtype
