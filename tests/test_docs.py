"""The reference pages under docs/reference/ say what the code does: each is regenerated from its table and compared."""

from __future__ import annotations

from pathlib import Path

import pytest

from melanoma_cli import docs

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    from melanoma_models.registry import registry

    broken = [e.name for e in registry().entries() if e.cls is None]
    if broken:  # the plugins page names every plugin's params: it needs every optional extra (what CI installs)
        pytest.skip(f"plugins that cannot be loaded here: {broken} (uv sync --all-extras)")
    return docs.render()


def test_no_reference_page_is_stale(rendered):
    folder = ROOT / docs.REFERENCE
    stale = [name for name, text in rendered.items()
             if not (folder / name).exists() or (folder / name).read_text() != text]
    assert not stale, f"stale pages under docs/reference/: {stale}; run `uv run melanoma docs` and commit them"
    assert sorted(p.name for p in folder.glob("*.md")) == sorted(rendered), "a page no table renders"


def test_each_page_names_every_entry_of_its_table(rendered):
    from melanoma_data import columns, layouts, vocabulary
    from melanoma_data.ops import steps
    from melanoma_models.registry import registry

    assert all(f"`{name}`" in rendered["layouts.md"] for name in layouts.names())
    assert all(f"| {text} |" in rendered["classes.md"] for text in vocabulary.DIAGNOSES)
    assert all(f"| `{code}` |" in rendered["classes.md"] for codes in vocabulary.CODES.values() for code in codes)
    assert all(f"`{s.name}`" in rendered["ops.md"] for s in steps.STEPS)
    assert all(f"`{c.name}`" in rendered["columns.md"] or f"`{c.name}`" in rendered["ops.md"]
               for c in columns.COLUMNS)
    for e in registry().entries():
        assert f"## `{e.name}`" in rendered["plugins.md"]
        assert all(f"`{name}`" in rendered["plugins.md"] for name in e.cls.Params.model_fields)


def test_a_changed_table_makes_its_page_stale(rendered, tmp_path, monkeypatch):
    docs.write(tmp_path)
    assert docs.stale(tmp_path) == []
    from melanoma_data import layouts

    monkeypatch.setattr(layouts, "reference_markdown", lambda: "# Input layouts\n\n(one changed)\n")
    assert docs.stale(tmp_path) == ["layouts.md"]
