"""CLI behaviour through typer's CliRunner: outputs, errors as one line, exit codes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app
from tests.conftest import jpeg_bytes, write_generic

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args))


def test_preprocess_and_validate_ok(synthetic_kaggle, tmp_path):
    res = _run("preprocess", str(synthetic_kaggle), "--out", str(tmp_path / "o"), "--workers", "0",
               "--size", "64", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "written" in res.output and "24" in res.output
    (version,) = (tmp_path / "o" / "kaggle").iterdir()
    assert str(version) in res.output.replace("\n", "")
    ok = _run("validate", str(version))
    assert ok.exit_code == 0 and "ok" in ok.output


def test_validate_fails_with_report_and_nonzero_exit(synthetic_kaggle, tmp_path):
    _run("preprocess", str(synthetic_kaggle), "--out", str(tmp_path / "o"), "--workers", "0", "--size", "64",
         "--no-progress")
    (version,) = (tmp_path / "o" / "kaggle").iterdir()
    doc = json.loads((version / "manifest.json").read_text())
    doc["counts"]["written"] = 999
    (version / "manifest.json").write_text(json.dumps(doc))
    res = _run("validate", str(version))
    assert res.exit_code == 1
    assert "counts.written=999" in res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize(("args", "message"), [
    (["preprocess", "/nonexistent/in", "--out", "OUT", "--workers", "0"], "does not exist"),
    (["preprocess", "IN", "--out", "OUT", "--workers", "0", "--size", "5"], "size must be >= 16"),
    (["preprocess", "IN", "--out", "OUT", "--workers", "0", "--resize-policy", "stretch"], "resize policy"),
    (["preprocess", "IN", "--out", "OUT", "--workers", "0", "--config", "missing.toml"], "does not exist"),
    (["preprocess", "IN", "--out", "OUT", "--workers", "0", "--metadata-encoding", "klingon"], "unknown"),
])
def test_errors_are_one_readable_line(tmp_path, args, message):
    inp = write_generic(tmp_path / "in", {"ISIC_0000001": jpeg_bytes()})
    args = [str(inp) if a == "IN" else str(tmp_path / a) if a.startswith(("OUT", "missing")) else a for a in args]
    res = _run(*args)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output
    assert res.output.strip().startswith("error:")


def test_bad_config_keys_are_reported(tmp_path):
    inp = write_generic(tmp_path / "in", {"ISIC_0000001": jpeg_bytes()})
    cfg = tmp_path / "c.toml"
    cfg.write_text("[preprocess.square]\nsize = 128\nsmooth = true\n")
    res = _run("preprocess", str(inp), "--out", str(tmp_path / "o"), "--workers", "0", "--config", str(cfg))
    assert res.exit_code == 2 and "unknown parameter(s) smooth in [square]" in res.output


def test_unwritable_output_and_debug_traceback(tmp_path):
    inp = write_generic(tmp_path / "in", {"ISIC_0000001": jpeg_bytes()})
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    res = _run("preprocess", str(inp), "--out", str(blocker / "o"), "--workers", "0", "--no-progress")
    assert res.exit_code == 2 and "cannot write to output location" in res.output
    dbg = _run("--debug", "preprocess", str(inp), "--out", str(blocker / "o"), "--workers", "0", "--no-progress")
    assert dbg.exit_code != 0 and dbg.exception is not None


def test_config_file_and_flags_layer(tmp_path):
    inp = write_generic(tmp_path / "in", {"ISIC_0000001": jpeg_bytes(200, 150)})
    cfg = tmp_path / "c.toml"
    cfg.write_text("[preprocess]\npartition_size = 3\n[preprocess.square]\nsize = 128\npolicy = \"pad\"\n")
    res = _run("preprocess", str(inp), "--out", str(tmp_path / "o"), "--workers", "0", "--config", str(cfg),
               "--size", "64", "--no-progress")
    assert res.exit_code == 0, res.output
    (version,) = Path(tmp_path / "o" / "in").iterdir()
    doc = json.loads((version / "manifest.json").read_text())
    assert doc["config"]["square"] == {"size": 64, "policy": "pad", "pad_value": 0}
    assert doc["config"]["partition_size"] == 3


def test_old_section_names_still_work_with_a_note_and_find_the_same_version(tmp_path):
    inp = write_generic(tmp_path / "in", {"ISIC_0000001": jpeg_bytes(200, 150)})
    new, old = tmp_path / "new.toml", tmp_path / "old.toml"
    new.write_text("[preprocess.square]\nsize = 48\n[preprocess.field_of_view]\npolicy = \"leave\"\n")
    old.write_text("[preprocess.resize]\nsize = 48\n[preprocess.vignette]\npolicy = \"leave\"\n")
    first = _run("preprocess", str(inp), "--out", str(tmp_path / "o"), "--workers", "0", "--config", str(new),
                 "--no-progress")
    assert first.exit_code == 0 and "deprecated" not in first.output, first.output
    again = _run("preprocess", str(inp), "--out", str(tmp_path / "o"), "--workers", "0", "--config", str(old),
                 "--no-progress")
    assert again.exit_code == 0, again.output
    assert "section [resize] is now called [square]" in again.output
    assert "section [vignette] is now called [field_of_view]" in again.output
    assert "already up to date" in again.output  # the same settings: the same version, not a new one
    (version,) = Path(tmp_path / "o" / "in").iterdir()
    doc = json.loads((version / "manifest.json").read_text())
    assert doc["format"] == 2 and doc["config"]["field_of_view"]["policy"] == "leave"


def test_synth_command_writes_a_layout(tmp_path):
    res = _run("synth", str(tmp_path / "s"), "--n", "4", "--layout", "isic-cli", "--size", "120x90")
    assert res.exit_code == 0, res.output
    assert len(list((tmp_path / "s").glob("*.jpg"))) == 4
    bad = _run("synth", str(tmp_path / "t"), "--size", "big")
    assert bad.exit_code == 2 and "--size must look like" in bad.output


@pytest.mark.parametrize("layout", ["milk10k", "ham10000", "derm7pt", "pad-ufes-20"])
def test_synth_writes_the_layouts_with_their_own_writers(tmp_path, layout):
    from melanoma_data import fsutil, layouts

    res = _run("synth", str(tmp_path / "s"), "--n", "3", "--layout", layout, "--size", "48x36")
    assert res.exit_code == 0, res.output
    assert f"({layout})" in res.output
    assert layouts.detect(*fsutil.resolve(str(tmp_path / "s"))) == layout


def test_validate_missing_version(tmp_path):
    res = _run("validate", str(tmp_path / "nothing"))
    assert res.exit_code == 1 and "does not exist" in res.output and "Traceback" not in res.output


def test_a_plain_folder_of_images_preprocesses_and_inspects_unlabelled(tmp_path):
    """No metadata CSV: every image becomes an unlabelled test row named by its file, with a one-line note."""
    import pandas as pd

    from melanoma_data.dataset import open_dataset

    folder = tmp_path / "photos"
    folder.mkdir()
    for i, name in enumerate(["_DSC0001", "élève", "a..2", "IMG_7"]):
        (folder / f"{name}.jpg").write_bytes(jpeg_bytes(96, 72, seed=i))
    (folder / "IMG_7.png").write_bytes(jpeg_bytes(96, 72, seed=9))  # a second file with that name
    (folder / "broken.jpg").write_bytes(b"not a picture")
    (folder / "notes.txt").write_text("not an image file: not an input")
    res = _run("preprocess", str(folder), "--out", str(tmp_path / "out"), "--workers", "0", "--size", "32",
               "--no-progress")
    assert res.exit_code == 0, res.output
    assert "no labels found" in res.output and "--metadata CSV" in res.output
    version = next((tmp_path / "out" / "photos").iterdir())
    doc = json.loads((version / "manifest.json").read_text())
    assert doc["counts"] == {"inputs": 6, "written": 4, "quarantined": 2}
    assert doc["inputs"][0]["layout"] == "images"
    meta = open_dataset(str(version)).metadata()
    assert sorted(meta["image_name"]) == sorted(["_DSC0001", "élève", "a..2", "IMG_7"])
    assert (meta["split"] == "test").all() and meta["target"].isna().all()
    q = open_dataset(str(version)).quarantine().set_index("image_name")["reason"].to_dict()
    assert q == {"broken": "not_an_image", "IMG_7": "ambiguous_file"}

    res = _run("inspect", str(folder), "--n", "2", "--out", str(tmp_path / "i.png"))
    assert res.exit_code == 0, res.output
    assert "no labels found" in res.output and (tmp_path / "i.html").exists()
    # inspect --metadata, as preprocess has it: the labels come from the given CSV, no note
    pd.DataFrame({"image_name": ["_DSC0001", "élève"], "target": [1, 0]}).to_csv(tmp_path / "m.csv", index=False)
    res = _run("inspect", str(folder), "--n", "2", "--out", str(tmp_path / "j.png"), "--metadata",
               str(tmp_path / "m.csv"))
    assert res.exit_code == 0, res.output
    assert "no labels found" not in res.output
    page = (tmp_path / "j.html").read_text(encoding="utf-8")
    assert "_DSC0001" in page and "élève" in page
    res = _run("inspect", str(version), "--metadata", str(tmp_path / "m.csv"))
    assert res.exit_code == 2 and "--metadata is for an input folder" in res.output


def test_the_console_script_and_python_cli_py_are_one_command_line():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).parent / "melanoma"
    assert script.exists(), "the melanoma console script is not installed ([project.scripts] in pyproject.toml)"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "COLUMNS": "100"}
    via_script = subprocess.run([str(script), "plugins"], capture_output=True, text=True, timeout=120, env=env)
    via_file = subprocess.run([sys.executable, str(root / "cli.py"), "plugins"], capture_output=True, text=True,
                              timeout=120, env=env)
    assert via_script.returncode == via_file.returncode == 0, via_script.stderr + via_file.stderr
    assert via_script.stdout == via_file.stdout and "effnet" in via_script.stdout
