"""The layout registry's contract: every layout writes a synthetic copy that reads back as the same rows."""

from __future__ import annotations

import pandas as pd
import pytest

from melanoma_data import columns, fsutil, ingest, layouts, synth
from melanoma_data.errors import InputError

#: Layouts whose round trip below runs (it is parametrised over the registry; the guard checks it stays so).
ROUND_TRIPPED = [lay.name for lay in layouts.registered()]


@pytest.mark.parametrize("name", ROUND_TRIPPED)
def test_a_synthetic_copy_is_detected_and_reads_back_as_the_rows_written(tmp_path, name):
    layout = layouts.get(name)
    written = layout.write(tmp_path, n=6, seed=3, **layout.example)
    assert written, f"{name}: the synthetic writer wrote nothing"
    fs, root = fsutil.resolve(str(tmp_path))
    assert layouts.detect(fs, root) == name
    parsed = layout.parse(fs, root, None)
    assert all(isinstance(p, layouts.Parsed) for p in (parsed if isinstance(parsed, list) else [parsed]))
    found = ingest.ingest([str(tmp_path)])
    assert found.layouts == [name]
    assert found.quarantine.empty, found.quarantine
    recs = found.records.set_index("rel_path")
    assert sorted(recs.index) == sorted(w["rel_path"] for w in written)
    for w in written:
        row = recs.loc[w["rel_path"]]
        assert row["split"] == w["split"], w
        labelled = w.get("labelled", w["split"] == "train") and layout.natural_target is not None
        assert (row["target"] == w["target"]) if labelled else pd.isna(row["target"]), w
        if "patient_id" in w:
            assert row["patient_id"] == w["patient_id"]
    assert (found.records["source"] == layout.source_name(root)).all()
    assert found.target["definition"] == (layout.natural_target or "melanoma")
    filled = {c for c in columns.INPUT_COLUMNS if found.records[c].notna().any()}
    unsaid = sorted(filled - set(layout.fills) - ingest.DERIVED_COLUMNS)
    assert not unsaid, f"{name} fills {unsaid} but does not say so"


def test_every_registered_layout_has_a_writer_a_round_trip_and_its_reference_lines():
    assert list(layouts.names()) == ROUND_TRIPPED  # a layout registered later than this list is a missing row
    for lay in layouts.registered():
        assert callable(lay.write) and callable(lay.detect) and callable(lay.parse), lay.name
        assert lay.natural_target in (None, *ingest.TARGET_DEFINITIONS), lay.name
        assert lay.detected_by and lay.reads and lay.release and lay.hint, lay.name
        assert set(lay.fills) <= columns.INPUT_COLUMNS, lay.name
    text = layouts.reference_markdown()
    assert all(f"## `{n}`" in text for n in layouts.names())


def test_detection_order_is_registration_order_and_unknown_names_list_the_known():
    assert layouts.names()[0] == "kaggle2020" and layouts.names()[-1] == "images"
    assert layouts.names().index("isic2024") < layouts.names().index("isic-cli") < layouts.names().index("generic")
    with pytest.raises(InputError, match="unknown layout 'nope'; known: kaggle2020, isic2019"):
        layouts.get("nope")
    with pytest.raises(ValueError, match="unknown layout 'isic2024'; known: kaggle2020, isic2019, isic-cli"):
        synth.write_dataset("unused", n=1, layout="isic2024")
    with pytest.raises(ValueError, match="registered twice"):
        layouts.register(layouts.get("generic"))


def test_every_module_of_the_package_with_a_layout_is_registered_by_its_priority():
    """Adding a layout is its file alone: the registry finds each module's ``LAYOUT`` and orders them."""
    import ast
    from pathlib import Path

    folder = Path(layouts.__file__).parent
    defining = {f.stem for f in folder.glob("*.py")
                if any(isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "LAYOUT" for t in n.targets)
                       for n in ast.parse(f.read_text()).body)}
    assert len(defining) == len(layouts.names()) >= 6
    priorities = [lay.priority for lay in layouts.registered()]
    assert priorities == sorted(priorities) and len(set(priorities)) == len(priorities)


def test_a_folder_in_two_shapes_is_the_first_registered(tmp_path):
    synth.write_dataset(tmp_path, n=3, layout="kaggle2020", seed=1, sizes=[(64, 48)], defects=0.0)
    pd.DataFrame({"image_name": ["x"]}).to_csv(tmp_path / "metadata.csv", index=False)  # also "generic"
    assert layouts.detect(*fsutil.resolve(str(tmp_path))) == "kaggle2020"


def test_the_preset_comes_from_the_layouts_of_all_inputs():
    assert layouts.auto_preset({"isic2024"}) == "tiles"
    assert layouts.auto_preset({"isic2024", "kaggle2020"}) is None
    assert layouts.auto_preset({"generic"}) is None


def test_the_column_reference_names_every_metadata_column_and_who_fills_it():
    text = columns.reference_markdown()
    for c in columns.COLUMNS:
        if c.group == "metadata":
            assert f"| `{c.name}` |" in text
    lesion = next(line for line in text.splitlines() if line.startswith("| `lesion_id`"))
    assert "`isic2019`" in lesion and "`kaggle2020`" not in lesion


def test_the_metadata_schema_and_the_plan_follow_the_column_table():
    from melanoma_data import schemas, shards

    assert list(schemas.METADATA_SCHEMA.columns) == columns.METADATA_COLUMNS
    assert set(columns.INPUT_COLUMNS) <= set(schemas.METADATA_SCHEMA.columns)
    codes = [c.name for c in columns.COLUMNS if c.tfrecord == "code"]
    assert set(codes) <= set(shards.PLAN_INPUT_COLUMNS)  # the TFRecord codes are built from the planned rows
