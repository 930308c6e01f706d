"""The typed hand-off files: Manifest and RunConfig read what today's main wrote; explanations average and split."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from melanoma_data.config import RENAMED_SECTIONS, PreprocessConfig
from melanoma_data.manifest import ColumnInfo, FileEntry, Manifest, write_manifest
from melanoma_models.explanation import (
    ContributionRow,
    Contributions,
    HeatmapRow,
    Heatmaps,
    StackReasons,
    StackRow,
    as_explanation,
    average,
    scale_maps,
)
from melanoma_models.rundir import RunConfig, run_config

ROOT = Path(__file__).resolve().parents[2]
MAIN = Path(__file__).resolve().parents[1] / "data" / "main-2026-12-03"
MANIFESTS = sorted(MAIN.glob("manifest-*.json"))
RUN_CONFIGS = sorted(MAIN.glob("run-config-*.json"))


def test_the_files_written_by_main_are_here():
    assert len(MANIFESTS) >= 2 and len(RUN_CONFIGS) >= 2


#: What moved (op or column-table versions) since the fixtures were written.
CHANGED_SINCE_FIXTURES = {"columns", "colour"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_manifest_reads_a_manifest_written_by_main(path):
    doc = json.loads(path.read_text())
    m = Manifest(doc)
    assert m.format == doc["format"] and m.name == doc["name"] and m.fingerprint == doc["fingerprint"]
    c = m.counts
    assert c.inputs == c.written + c.quarantined == doc["counts"]["inputs"]
    assert sum(s.rows for s in m.shards) == c.written
    assert all(isinstance(s, FileEntry) and s.split in m.splits for s in (*m.shards, *m.tfrecords))
    assert m.quarantine.quarantine and m.quarantine.path == doc["quarantine"]["path"]
    pre = m.preprocess_config()
    assert isinstance(pre, PreprocessConfig) and pre.square.size == m.image_size
    assert pre.to_dict()["square"] == doc["config"]["square"]
    # made by the ops of 2026-12-03; what moved since, on purpose: the column table (4: the newer datasets'
    # columns) and the colour op (the ITA skin-tone measurement)
    stale = m.stale_ops()
    assert set(stale) <= CHANGED_SINCE_FIXTURES and stale.get("columns", ("3",))[0] == "3"
    assert m.stale_ops({**m.ops, "hair": "0"}) == {"hair": (m.ops["hair"], "0")}
    assert all(isinstance(col, ColumnInfo) for col in m.columns)
    assert {"image_name", "target", "fold"} <= m.column_names
    assert m.n_folds == doc["folds"]["n_folds"] and m.split_names == sorted(doc["splits"])
    assert m.target_definition == doc["target"]["definition"]
    row = m.summary()
    assert row["written"] == c.written and row["files"] == len(doc["shards"]) and row["size"] == m.image_size
    facts = dict(m.show_rows())
    assert facts["counts"] == f"{c.inputs} inputs = {c.written} written + {c.quarantined} quarantined"
    assert len(m.file_rows()) == len(doc["folds"]["files"])
    # still the JSON, read-only, for callers written against the dict
    assert m["counts"] == doc["counts"] and dict(m) == doc and m == Manifest(doc)


@pytest.mark.parametrize("path", MANIFESTS[:1], ids=lambda p: p.stem)
def test_writing_a_manifest_keeps_its_bytes(path, tmp_path):
    import fsspec

    fs = fsspec.filesystem("file")
    m = Manifest(json.loads(path.read_text()))
    write_manifest(fs, str(tmp_path), m.raw)
    assert (tmp_path / "manifest.json").read_bytes() == path.read_bytes()


def test_manifest_reads_an_older_format():
    """Format 1: sections under their old names, no format, target or columns fields."""
    doc = json.loads(MANIFESTS[0].read_text())
    today = Manifest(doc)
    old = {k: v for k, v in doc.items() if k not in ("format", "target", "columns")}
    old["config"] = {({v: k for k, v in RENAMED_SECTIONS.items()}.get(k, k)): v for k, v in doc["config"].items()}
    assert "resize" in old["config"] and "square" not in old["config"]
    m = Manifest(old)
    assert m.format == 1 and m.image_size == today.image_size
    assert m.preprocess_config() == today.preprocess_config()
    assert m.section("field_of_view") == today.section("field_of_view")
    assert m.target_definition == "melanoma" and m.target_meaning == "1 = melanoma"
    assert m.columns == () and m.extra_columns == ()
    assert m.summary()["size"] == today.image_size


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.stem)
def test_run_config_reads_a_config_written_by_main(path, tmp_path):
    doc = json.loads(path.read_text())
    (tmp_path / "config.json").write_text(path.read_text())
    cfg = run_config(tmp_path)
    assert isinstance(cfg, RunConfig)
    assert cfg.run_id == doc["run_id"] and cfg.plugin == doc["plugin"] and cfg.format == doc["format"]
    assert cfg.dataset.fingerprint == doc["dataset"]["fingerprint"] and cfg.dataset.url == doc["dataset"]["url"]
    assert cfg.folds == doc["folds"] and cfg.fold_map == {int(a): b for a, b in doc["fold_map"].items()}
    assert cfg.params == doc["params"] and cfg.seed == doc["seed"] and cfg.calibrate == "none"
    assert cfg.versions == doc["versions"] and cfg.base_runs == doc["base_runs"]
    assert cfg["dataset"]["fingerprint"] == doc["dataset"]["fingerprint"] and dict(cfg) == doc


def test_run_config_params_rebuild_the_plugin_params():
    from melanoma_models.registry import get_plugin

    cfg = RunConfig(json.loads((MAIN / "run-config-logreg.json").read_text()))
    params = get_plugin(cfg.plugin).Params.build(cfg.params, cfg.plugin)
    assert params.model_dump(mode="json") == cfg.params


def test_heatmaps_average_and_split():
    rng = np.random.default_rng(0)
    a, b = rng.random((3, 4, 4)), rng.random((3, 4, 4))
    mean = Heatmaps.mean([Heatmaps(a), Heatmaps(b)])
    np.testing.assert_allclose(mean.heatmaps, scale_maps((a + b) / 2))
    assert mean.heatmaps.min() == 0 and mean.heatmaps.max() == 1
    rows = list(mean.split())
    assert len(rows) == 3 and all(isinstance(r, HeatmapRow) for r in rows)
    np.testing.assert_array_equal(rows[1].heatmap, mean.heatmaps[1])
    assert rows[1]["heatmap"] is rows[1].heatmap  # read by key too
    np.testing.assert_array_equal(scale_maps(np.ones((1, 2, 2))), np.zeros((1, 2, 2)))  # a flat map says nothing


def test_contributions_average_and_split():
    one = Contributions(pd.DataFrame({"age": [1.0, 2.0], "size": [0.0, -1.0]}), np.array([0.5, 0.5]))
    two = Contributions(pd.DataFrame({"age": [3.0, 0.0], "size": [2.0, 1.0]}), np.array([1.5, -0.5]))
    mean = average([one, two])
    assert isinstance(mean, Contributions)
    assert mean.contributions.to_dict("list") == {"age": [2.0, 1.0], "size": [1.0, 0.0]}
    np.testing.assert_allclose(mean.bias, [1.0, 0.0])
    rows = list(mean.split())
    assert all(isinstance(r, ContributionRow) for r in rows)
    assert rows[0].contributions.to_dict() == {"age": 2.0, "size": 1.0} and rows[0].bias == 1.0


def test_stack_reasons_average_and_split():
    one = StackReasons(pd.DataFrame({"a": [0.2, 0.4], "b": [0.6, 0.8]}), {"a": 0.25, "b": 0.75}, "weights")
    two = StackReasons(pd.DataFrame({"a": [0.4, 0.6], "b": [0.8, 1.0]}), {"a": 0.75, "b": 0.25}, "weights")
    mean = StackReasons.mean([one, two])
    assert mean.weights == {"a": 0.5, "b": 0.5} and mean.method == "weights"
    np.testing.assert_allclose(mean.base_scores["a"], [0.3, 0.5])
    rows = list(mean.split())
    assert all(isinstance(r, StackRow) for r in rows) and rows[1].base_scores["b"] == pytest.approx(0.9)


def test_older_dict_explanations_are_typed():
    heat = as_explanation({"heatmaps": np.zeros((2, 3, 3))})
    assert isinstance(heat, Heatmaps) and heat.heatmaps.shape == (2, 3, 3)
    contrib = as_explanation({"contributions": pd.DataFrame({"x": [1.0]}), "bias": np.array([0.0])})
    assert isinstance(contrib, Contributions)
    assert as_explanation(None) is None and as_explanation({}) is None
    assert average([None, None]) is None and average([]) is None


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


def test_models_import_no_plugin_and_no_framework():
    """The model floor sits below the plugins: no module of it imports a plugin, Keras or LightGBM."""
    bad = {}
    for path in sorted((ROOT / "melanoma_models").rglob("*.py")):
        hits = {m for m in _imports(path)
                if m.split(".")[0] in ("melanoma_plugins", "plugins", "keras", "lightgbm", "tensorflow")}
        if hits:
            bad[str(path.relative_to(ROOT))] = sorted(hits)
    assert bad == {}


#: by-key reads of a manifest, a run config or an explanation (the types' own modules excepted)
BY_KEY = re.compile(r"""manifest\[|manifest\.get\(|\bcfg\[["']|\bcfg\.get\(|\[["'](heatmaps|base_scores)["']\]"""
                    r"""|["'](heatmaps|contributions|base_scores)["'] in """)
TYPES = {"melanoma_data/manifest.py", "melanoma_models/rundir.py", "melanoma_models/explanation.py"}


def test_hand_off_files_are_read_through_their_types():
    hits = []
    for folder in ("melanoma_data", "melanoma_models", "melanoma_cli", "melanoma_plugins", "bench"):
        assert (ROOT / folder).is_dir(), folder
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            if rel in TYPES:
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if BY_KEY.search(code) and '``' not in code:
                    hits.append(f"{rel}:{n}: {line.strip()}")
    assert hits == []
