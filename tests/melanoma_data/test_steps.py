"""The step table: what derives from it, how the run order is derived, and the fingerprints it must not move."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import pickle
import warnings

import pytest

from melanoma_data import columns
from melanoma_data.config import _SECTIONS, RENAMED_SECTIONS, PreprocessConfig
from melanoma_data.errors import ConfigError
from melanoma_data.manifest import canonical_json
from melanoma_data.ops import OPS, colour, geometry, hair, op_versions, steps
from melanoma_data.ops.steps import STEPS, ColumnSpec, Step, StepTableError
from melanoma_models import features, score

# ------------------------------------------------------------------------------ the fingerprint contract

#: config values → (sha256 of the fingerprint dict's repr with keys sorted, sha256 of its canonical JSON), both
#: computed with the code before the step table (op params as dataclasses checked by hand). The repr pins the
#: Python types (an int in a float field stays an int; lists given for pairs become tuples); the JSON is what
#: the fingerprint hashes.
PINNED = {
    "default": ({}, "92ffc7f8b1044804", "f565b1c73361c624"),
    "int_in_float": ({"colour": {"p": 6, "max_gain": 3, "lesion_contrast": 20, "min_skin": 0}, "oversample": 1,
                      "field_of_view": {"dark_level": 0.3, "crop_scale": 1}, "hair": {"sigma": 8}},
                     "208790fb7481f2e4", "e1cf8db4a3baa09a"),
    "float_in_float": ({"colour": {"p": 6.0, "lesion_contrast": 21.0}, "oversample": 1.0},
                       "89ff34405ac646bc", "0705c2516be25360"),
    "lists_vs_tuples": ({"hair": {"scales": [0.018, 0.03]},
                         "artefacts": {"tick_length": [0.01, 0.1], "bubble_radius": (0, 1)}},
                        "ac4f99855e633cee", "24be70b2b1d9648f"),
    "tuples": ({"hair": {"scales": (0.018,)}, "artefacts": {"tick_spacing": (0.01, 0.2)}},
               "92ffc7f8b1044804", "f565b1c73361c624"),
    "old_names": ({"vignette": {"policy": "leave"}, "portrait": {"policy": "rotate"},
                   "resize": {"size": 64, "policy": "pad"}}, "3e1a2d71ee34a96e", "d760a1830197cd81"),
    "added_keys_changed": ({"decode": {"max_bytes": 5}, "colour": {"estimate": "image"}, "partition_size": 7},
                           "52a0143eaa89eafa", "167008b412674c7a"),
    "tiles": ({"square": {"size": 128}, "hair": {"remove": False}, "colour": {"enabled": False},
               "artefacts": {"enabled": False}, "shards": {"duplicate_distance": 0.07}, "partition_size": 1024},
              "a446cdeb3c6bad1f", "d90b9b0e2ba870fe"),
}
#: op_versions() before the step table.
VERSIONS = {"orient": "4", "field_of_view": "2", "artefacts": "1", "hair": "5", "colour": "5", "landscape": "4",
            "square": "4", "phash": "5", "decode": "1", "encode": "5",
            "columns": "4"}  # columns 4: the newer datasets' columns; colour 5: ITA


def _sorted(value):
    return {k: _sorted(value[k]) for k in sorted(value)} if isinstance(value, dict) else value


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@pytest.mark.parametrize("case", sorted(PINNED))
def test_fingerprint_dicts_are_those_of_the_code_before_the_step_table(case):
    values, want_repr, want_json = PINNED[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the old section names warn
        fp = PreprocessConfig.from_dict(values).fingerprint_dict()
    assert (_sha(repr(_sorted(fp))), _sha(canonical_json(fp))) == (want_repr, want_json), repr(_sorted(fp))


def test_ints_in_float_fields_stay_ints_and_pairs_become_tuples():
    fp = PreprocessConfig.from_dict(PINNED["int_in_float"][0]).fingerprint_dict()
    assert type(fp["colour"]["p"]) is int and fp["oversample"] == 1 and type(fp["oversample"]) is int
    assert "lesion_contrast" not in fp["colour"]  # an added key at its default (20 == 20.0) is left out, as before
    six = PreprocessConfig().with_overrides(colour__p=6).fingerprint_dict()
    assert canonical_json(six) != canonical_json(PreprocessConfig().fingerprint_dict())  # "p": 6 vs "p": 6.0
    fp = PreprocessConfig.from_dict(PINNED["lists_vs_tuples"][0]).fingerprint_dict()
    assert fp["hair"]["scales"] == (0.018, 0.03) and fp["artefacts"]["bubble_radius"] == (0, 1)
    assert set(fp) >= {"vignette", "portrait", "resize"} and not set(fp) & {"field_of_view", "landscape", "square"}


def test_op_versions_unchanged():
    assert op_versions() == VERSIONS


# ------------------------------------------------------------------------------ what derives from the table


def test_config_sections_come_from_the_table():
    assert list(_SECTIONS) == [*steps.sections(), "views", "shards"]
    assert [f.name for f in dataclasses.fields(PreprocessConfig)] == [*_SECTIONS, "partition_size", "oversample"]
    cfg = PreprocessConfig.from_dict({"square": {"size": 64}})
    assert pickle.loads(pickle.dumps(cfg)) == cfg  # shipped to Dask workers
    assert dataclasses.replace(cfg, shards=cfg.shards.model_copy(update={"seed": 1})).shards.seed == 1
    for step in STEPS:
        if step.section:
            assert _SECTIONS[step.name] is step.params and isinstance(getattr(PreprocessConfig(), step.name),
                                                                      step.params)
    assert RENAMED_SECTIONS == {"vignette": "field_of_view", "portrait": "landscape", "resize": "square"}
    assert steps.added_sections() == ("artefacts",)


def test_columns_and_measurement_lists_come_from_the_table():
    produced = [c.name for c in steps.column_specs()]
    table = [c.name for c in columns.COLUMNS if c.group in ("processing", "measurement")]
    assert table == produced  # every processing / measurement column is declared by a step, in table order
    for spec in steps.column_specs():
        c = columns.BY_NAME[spec.name]
        assert (c.group, c.pandas, c.nullable, c.models, c.doc) == (spec.group, spec.pandas, spec.nullable,
                                                                     spec.models, spec.doc)
    for step in STEPS:
        own = {c.name for c in step.columns}
        assert set(step.features) <= own and set(step.reported) <= own, step.name
    assert steps.model_features() == features.MEASUREMENTS
    assert score.MEASUREMENT_COLUMNS[:-2] == steps.reported_columns()
    assert set(features.MEASUREMENTS) <= set(produced) and set(steps.reported_columns()) <= set(produced)
    assert list(OPS) == [s.name for s in STEPS if s.fn is not None]


def test_the_run_order_is_derived_from_reads_and_writes():
    names = [s.name for s in steps.ORDER]
    assert names == ["header", "decode", "orient", "thumbnail", "artefacts", "field_of_view", "landscape", "square",
                     "follow", "hair", "colour", "enlarge", "encode", "phash", "sha256", "view"]
    seen = set(steps.GIVEN)
    for step in steps.ORDER:
        assert set(step.reads) <= seen, step.name
        seen |= set(step.outputs)
        params = list(inspect.signature(step.run).parameters)
        assert params[1:] == list(step.reads), step.name  # run(cfg, *reads): the declared reads are its arguments


def _step(name, reads, writes):
    return Step(name, lambda cfg, *values: {k: None for k in writes}, reads=reads, writes=writes)


def test_the_order_derivation_fails_clearly():
    a, b = _step("a", ("data",), ("x",)), _step("b", ("x",), ("y",))
    assert [s.name for s in steps.order([b, a])] == ["a", "b"]  # a step runs after what it reads, wherever listed
    with pytest.raises(StepTableError, match="'b' reads 'nowhere', which no step writes"):
        steps.order([a, _step("b", ("nowhere",), ("y",))])
    with pytest.raises(StepTableError, match="the steps p, q read each other's writes in a cycle"):
        steps.order([a, _step("p", ("x", "q_out"), ("p_out",)), _step("q", ("p_out",), ("q_out",))])
    with pytest.raises(StepTableError, match="'c' writes 'x', which step 'a' already provides"):
        steps.order([a, _step("c", ("data",), ("x",))])
    with pytest.raises(StepTableError, match="two steps are named 'a'"):
        steps.order([a, _step("a", ("x",), ("z",))])
    with pytest.raises(StepTableError, match="already provides"):
        steps.order([Step("d", lambda cfg: {}, reads=(), columns=(ColumnSpec("data", None, "str", "measurement"),))])


def test_each_step_writes_exactly_what_it_declares():
    from melanoma_data.ops.encode import EncodeParams, encode_jpeg
    from melanoma_data.synth import SynthSpec, render

    data = encode_jpeg(render(SynthSpec(width=120, height=90, hairs=3, vignette=True), seed=1).image, EncodeParams())
    cfg = PreprocessConfig.from_dict({"square": {"size": 32}})
    rec = {"data": data, "image_type": None}
    for step in steps.ORDER:
        args = [rec[k] for k in step.reads]
        out = step.run(cfg, *args)
        assert set(out) == set(step.outputs), step.name
        if step.bypass is not None:  # what the op policy runs instead on a clinical photo: the same keys
            assert set(step.bypass(cfg, *args)) == set(step.outputs), step.name
        rec.update(out)


def test_reference_markdown_names_every_step_column_and_parameter():
    text = steps.reference_markdown()
    for n, step in enumerate(steps.ORDER, 1):
        assert f"## {n}. `{step.name}`" in text
        for c in step.columns:
            assert f"| `{c.name}` |" in text and c.doc in text
        for p in step.params.describe() if step.params else ():
            assert f"| `{p['name']}` |" in text
    assert "| `p` | number | `6.0` | >= 1.0, <= 64.0 |" in text
    assert "config section: `[field_of_view]` (formerly `[vignette]`)" in text


# ------------------------------------------------------------------------------ op params: the pydantic idiom


def test_op_params_are_frozen_hashable_and_keep_values_as_given():
    p = colour.ColourParams(p=6)
    assert p.p == 6 and type(p.p) is int and hash(p) == hash(colour.ColourParams(p=6))
    assert p != colour.ColourParams(p=6.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.p = 4
    with pytest.raises(AttributeError):
        PreprocessConfig().oversample = 2.0
    assert geometry.OrientParams(6) == geometry.OrientParams(exif_orientation=6)  # positional, as before
    assert hair.HairParams(scales=[0.02]).scales == (0.02,)
    square = geometry.ResizeParams(size=64).model_copy(update={"pad_value": 0})
    assert square.size == 64 and hash(PreprocessConfig()) == hash(PreprocessConfig())
    for bad, message in [({"p": "6"}, "p must be a number, got '6'"), ({"p": True}, "p must be a number"),
                         ({"p": 0.5}, "p must be >= 1.0, got 0.5"), ({"enabled": 1}, "enabled must be true or false"),
                         ({"estimate": "lesion"}, "colour estimate must be one of 'skin', 'image'")]:
        with pytest.raises(ConfigError, match=message):
            colour.ColourParams(**bad)
    with pytest.raises(ConfigError, match=r"^\[square\]: size must be an integer, got 64.0$"):
        PreprocessConfig.from_dict({"square": {"size": 64.0}})
    with pytest.raises(ConfigError, match="partition_size must be >= 1, got 0"):
        PreprocessConfig.from_dict({"partition_size": 0})
