"""What a newcomer reads first: the help of fit/synth/plugins, plugin parameter listings, readable pictures and
pages, warnings that are not false alarms, and import errors that name the command that fixes them."""

from __future__ import annotations

import re

import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from cli import app
from melanoma_data import build, folds, fsutil, ingest
from melanoma_data.config import PreprocessConfig
from melanoma_data.errors import InputError
from melanoma_data.inspect import _font, inspect, inspect_one
from melanoma_models.api import PluginError
from melanoma_models.registry import registry

runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, list(args), env={"COLUMNS": "200"})


@pytest.mark.parametrize("plugin", ["lgbm", "logreg"])
def test_plugins_params_lists_every_parameter_with_its_default_and_description(plugin):
    res = _run("plugins", "--params", plugin)
    assert res.exit_code == 0, res.output
    described = registry().get(plugin).Params.describe()
    assert len(described) > 3
    for name, default, description in described:
        line = next((ln for ln in res.output.splitlines() if re.match(rf"│ {re.escape(name)}\s+│", ln)), None)
        assert line is not None and default in line, (name, res.output)
        assert description.split()[0] in res.output
    assert "[params]" in res.output


def test_plugins_params_of_an_unknown_plugin_is_one_line_naming_the_known_ones():
    res = _run("plugins", "--params", "nope")
    assert res.exit_code == 2 and "unknown plugin 'nope'" in res.output and "lgbm" in res.output
    assert "Traceback" not in res.output


def test_fit_help_shows_the_params_table_and_where_to_list_params():
    out = _run("fit", "--help").output
    assert "[params] table" in out and "plugins --params NAME" in out
    assert "[params]" in _run("plugins", "--help").output


def test_synth_help_has_no_literal_backticks_and_no_broken_sentences():
    out = _run("synth", "--help").output
    assert "`" not in out and "--layout isic2024 writes the 2024 challenge shape" in " ".join(out.split())


def test_the_caption_font_keeps_the_spaces_between_words():
    draw = ImageDraw.Draw(Image.new("RGB", (10, 10)))
    font = _font(11)
    space = draw.textlength("no artefacts", font=font) - draw.textlength("noartefacts", font=font)
    assert space >= 0.4 * draw.textlength("n", font=font)  # Pillow's default font: 2 px against 7 for an "n"


def test_inspect_page_is_styled_and_captioned_with_whole_words(synthetic_kaggle, tmp_path):
    png, page = inspect(str(synthetic_kaggle), tmp_path / "sheet.png", n=2)
    text = page.read_text()
    assert "<style>" in text and "font-family" in text and "<figcaption>" in text
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", text)
    assert len(captions) == 2 and all("hair " in c and "gains " in c for c in captions), captions
    assert re.search(r"no field|field r=", captions[0])
    assert Image.open(png).size[0] > 1000


def test_explain_preprocessing_picture_is_readable(synthetic_kaggle):
    from melanoma_models.explain import PICTURE_SIDE, _preprocessing_picture

    records = ingest.ingest([str(synthetic_kaggle)]).records.to_dict("records")
    for record in records[:2]:  # 640x480 and 800x600 originals, landscape after orientation or not
        pic = _preprocessing_picture(inspect_one(record, PreprocessConfig(), side=PICTURE_SIDE))
        assert pic.shape[1] >= 900 and pic.shape[0] >= 400, pic.shape
        header = pic[:60]
        assert (header < 80).any(axis=2).sum() > 500  # dark label text drawn above the images


def test_a_few_patients_linked_by_near_duplicates_are_not_a_bulk_tile_warning():
    params = folds.ShardParams()
    demo_like = {"multi_patient_groups": 3, "links_not_kept_in_folds": 0,
                 "largest": {"group": "ISIC_9000005", "patients": 2, "size": 2, "sources": ["isic2020"]}}
    assert build._warnings(demo_like, {}, params) == []
    bulk = {**demo_like, "multi_patient_groups": 1,
            "largest": {"group": "ISIC_1", "patients": folds.MAX_LINKED_PATIENTS + 9, "size": 40, "sources": ["x"]}}
    (warning,) = build._warnings(bulk, {}, params)
    assert "link in bulk" in warning and "ISIC_1" in warning


def test_a_missing_optional_package_names_the_command_that_installs_it(monkeypatch):
    xgb = registry().get("xgb")
    monkeypatch.setattr(xgb, "module", "not_an_installed_module_xyz")
    with pytest.raises(PluginError, match=r"uv sync --all-extras \(uv sync --extra gbdt alone removes"):
        xgb.library()
    with pytest.raises(InputError, match="not installed"):
        fsutil.resolve("dropbox://folder/file.jpg")
