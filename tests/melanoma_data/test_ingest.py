"""Input layouts and metadata validation: every row and file is either usable or quarantined."""

from __future__ import annotations

import pandas as pd
import pytest

from melanoma_data import ingest, synth
from melanoma_data.errors import InputError
from tests.conftest import jpeg_bytes, write_generic


@pytest.mark.parametrize("layout", ["kaggle2020", "isic2019", "isic-cli", "generic"])
def test_layouts_detected_and_normalised(tmp_path, layout):
    truth = synth.write_dataset(tmp_path / layout, n=9, layout=layout, seed=3, sizes=[(200, 150)], defects=0.0)
    found = ingest.ingest([str(tmp_path / layout)])
    assert found.layouts == [layout]
    assert found.quarantine.empty, found.quarantine
    recs = found.records
    assert len(recs) == 9
    assert list(recs["image_name"]) == sorted(recs["image_name"])
    assert recs["split"].isin(["train", "test"]).all()
    assert set(recs["anatom_site_general_challenge"].dropna()) <= set(ingest.SITE_MAP.values())
    labelled = recs[recs["split"] == "train"]
    by_name = {t["image_name"]: t["target"] for t in truth}
    for name, target in zip(labelled["image_name"], labelled["target"], strict=True):
        assert target == by_name[name.removesuffix("_downsampled")]
    assert all(p.endswith(".jpg") for p in recs["path"])


def test_isic2019_sites_map_to_2020_vocabulary_keeping_detail(tmp_path):
    synth.write_dataset(tmp_path, n=12, layout="isic2019", seed=5, sizes=[(200, 150)], defects=0.0)
    recs = ingest.ingest([str(tmp_path)]).records
    torso = recs[recs["anatom_site_detailed"].str.contains("torso", na=False)]
    assert len(torso) and (torso["anatom_site_general_challenge"] == "torso").all()
    assert recs["lesion_id"].notna().all()
    assert recs["image_name"].str.endswith("_downsampled").any()  # listed names kept as given


def test_sample_layout_is_generic_and_complete(sample_dir):
    found = ingest.ingest([str(sample_dir)])
    assert found.layouts == ["generic"]
    assert len(found.records) == 89 and found.quarantine.empty
    unlabelled = found.records[found.records["target"].isna()]
    assert set(unlabelled["image_name"]) == {"ISIC_0010436", "ISIC_0011332"}
    assert (unlabelled["split"] == "test").all()


def test_bad_metadata_each_gets_a_reason(tmp_path):
    files = {f"ISIC_{i:07d}": jpeg_bytes(64, 48, seed=i) for i in range(8)}
    files["ORPHAN_1"] = jpeg_bytes(64, 48)
    rows = [
        {"image_name": "ISIC_0000000", "sex": "female", "age_approx": "40", "target": "0"},
        {"image_name": "ISIC_0000001", "sex": "M", "age_approx": "40", "target": "0"},  # invalid enum
        {"image_name": "ISIC_0000002", "sex": "male", "age_approx": "old", "target": "0"},  # not a number
        {"image_name": "ISIC_0000003", "sex": "male", "age_approx": "40", "target": "0"},
        {"image_name": "ISIC_0000003", "sex": "female", "age_approx": "40", "target": "1"},  # conflicting dup
        {"image_name": "ISIC_0000004", "sex": "male", "age_approx": "40", "target": "0"},
        {"image_name": "ISIC_0000004", "sex": "male", "age_approx": "40", "target": "0"},  # identical dup
        {"image_name": "../../x", "sex": "male", "age_approx": "40", "target": "0"},
        {"image_name": "sub/ISIC_0000005", "sex": "male", "age_approx": "40", "target": "0"},
        {"image_name": "ISIC_MISSING", "sex": "male", "age_approx": "40", "target": "0"},
        {"image_name": "ISIC_0000006", "sex": "male", "age_approx": "40", "target": "2"},
        {"image_name": "ISIC_0000007", "sex": "male", "age_approx": "40",
         "anatom_site_general_challenge": "elbow", "target": "0"},
    ]
    root = write_generic(tmp_path / "in", files, rows)
    (tmp_path / "x.jpg").write_bytes(jpeg_bytes())  # what ../../x would point at: must not be read
    found = ingest.ingest([str(root)])
    reasons = found.quarantine.groupby("image_name")["reason"].apply(sorted).to_dict()
    assert reasons["ISIC_0000001"] == ["invalid_metadata"]
    assert reasons["ISIC_0000002"] == ["invalid_metadata"]
    assert reasons["ISIC_0000003"] == ["duplicate_name", "duplicate_name"]
    assert reasons["ISIC_0000004"] == ["duplicate_row"]
    assert reasons["../../x"] == ["unsafe_name"]
    assert reasons["sub/ISIC_0000005"] == ["unsafe_name"]
    assert reasons["ISIC_MISSING"] == ["missing_file"]
    assert reasons["ISIC_0000006"] == ["invalid_metadata"]
    assert reasons["ISIC_0000007"] == ["invalid_metadata"]
    assert reasons["ORPHAN_1"] == ["no_metadata"]
    assert reasons["ISIC_0000005"] == ["no_metadata"]  # the file nobody (safely) claims
    detail = found.quarantine.set_index("image_name").loc["ISIC_0000001", "detail"]
    assert "sex='m'" in detail and "female" in detail
    assert "age_approx='old'" in found.quarantine.set_index("image_name").loc["ISIC_0000002", "detail"]
    assert sorted(found.records["image_name"]) == ["ISIC_0000000", "ISIC_0000004"]
    assert found.n_inputs == len(rows) + 2  # every row plus the two files no row names
    assert not any(p.rsplit("/", 1)[-1] == "x.jpg" for p in found.records["path"])


def test_unreadable_csv_encoding_is_one_clear_error(tmp_path):
    root = tmp_path / "in"
    write_generic(root, {"ISIC_0000001": jpeg_bytes()})
    (root / "metadata.csv").write_bytes("image_name,sex\nISIC_0000001,f\xe9male\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"cannot decode as utf-8 .*--metadata-encoding"):
        ingest.ingest([str(root)])
    found = ingest.ingest([str(root)], encoding="latin-1")
    assert found.quarantine["reason"].tolist() == ["invalid_metadata"]  # 'fémale' is still not a sex


def test_utf16_and_bom_csvs_are_read(tmp_path):
    root = write_generic(tmp_path / "in", {"ISIC_0000001": jpeg_bytes()})
    text = "image_name,sex,target\nISIC_0000001,female,0\n"
    for enc in ("utf-16", "utf-8-sig"):
        (root / "metadata.csv").write_bytes(text.encode(enc))
        assert ingest.ingest([str(root)]).records["sex"].tolist() == ["female"]


def test_no_images_and_missing_folder_are_fatal(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        ingest.ingest([str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no known input layout"):
        ingest.ingest([str(tmp_path / "empty")])
    root = tmp_path / "rows-only"
    root.mkdir()
    pd.DataFrame({"image_name": ["ISIC_1"]}).to_csv(root / "metadata.csv", index=False)
    with pytest.raises(InputError, match="no image files"):
        ingest.ingest([str(root)])


def test_metadata_override_and_several_inputs(tmp_path):
    a = write_generic(tmp_path / "a", {"ISIC_0000001": jpeg_bytes()})
    b = write_generic(tmp_path / "b", {"ISIC_0000002": jpeg_bytes(), "ISIC_0000001": jpeg_bytes(seed=2)})
    found = ingest.ingest([str(a), str(b)])
    assert sorted(found.records["image_name"]) == ["ISIC_0000001", "ISIC_0000002"]
    # one name in two inputs: the earlier input's copy is kept (a tie of the source priority)
    assert found.quarantine["reason"].tolist() == ["cross_source_duplicate"]
    assert set(found.records["source"]) == {"a", "b"}
    other = tmp_path / "labels.csv"
    pd.DataFrame({"isic_id": ["ISIC_0000001"], "sex": ["male"]}).to_csv(other, index=False)
    found = ingest.ingest([str(a)], metadata=str(other))
    assert found.records["sex"].tolist() == ["male"]


def test_diagnosis_classes_from_2019_one_hot_and_2020_text(tmp_path):
    """The one class table maps every source's diagnosis onto the 2020 winner's nine classes."""
    import pandas as pd

    # ISIC 2019: each one-hot column read into a diagnosis that maps back onto that column
    root = tmp_path / "isic2019"
    synth.write_dataset(root, n=18, layout="isic2019", seed=2, sizes=[(120, 90)], defects=0.0, test_fraction=0.0)
    (truth,) = root.rglob("ISIC_2019_Training_GroundTruth.csv")
    gt = pd.read_csv(truth)
    chosen = [ingest.DIAGNOSIS_CLASSES[i % 9] for i in range(len(gt))]
    for cls in ingest.DIAGNOSIS_CLASSES:
        gt[cls] = [1.0 if c == cls else 0.0 for c in chosen]
    gt.to_csv(truth, index=False)
    recs = ingest.ingest([str(root)]).records
    want = dict(zip(gt["image"], chosen, strict=True))
    got = {n: ingest.diagnosis_class(d) for n, d in zip(recs["image_name"], recs["diagnosis"], strict=True)}
    assert got == {n: want[n] for n in got} and set(got.values()) == set(ingest.DIAGNOSIS_CLASSES)

    # ISIC 2020: the winner's mapping of the 2020 labels (as the metadata CSV spells them)
    mapping = {"melanoma": "MEL", "nevus": "NV", "seborrheic keratosis": "BKL", "lichenoid keratosis": "BKL",
               "solar lentigo": "BKL", "lentigo NOS": "BKL", "cafe-au-lait macule": "UNK",
               "atypical melanocytic proliferation": "UNK", "unknown": "UNK"}
    files = {f"ISIC_{i:07d}": jpeg_bytes(64, 48, seed=i) for i in range(len(mapping))}
    rows = [{"image_name": n, "diagnosis": d, "target": int(d == "melanoma")}
            for n, d in zip(files, mapping, strict=True)]
    recs = ingest.ingest([str(write_generic(tmp_path / "k2020", files, rows))]).records
    assert [ingest.diagnosis_class(d) for d in recs["diagnosis"]] == list(mapping.values())
    # no diagnosis: a labelled row takes its target's class, an unlabelled one none
    assert ingest.diagnosis_class(None, 1) == "MEL" and ingest.diagnosis_class("", 0) == "UNK"
    assert ingest.diagnosis_class(None, None) is None
    assert ingest.diagnosis_class("something new") == "UNK"
    assert ingest.MALIGNANT_DIAGNOSES == ("melanoma", "basal cell carcinoma", "squamous cell carcinoma")


def test_the_artefact_labels_cover_the_real_sample_once(sample_dir):
    """The by-eye labels (tests/labels/) name every real image exactly once, with valid values."""
    from pathlib import Path

    labels = pd.read_csv(Path(__file__).resolve().parents[1] / "labels" / "isic_sample_artefacts.csv")
    images = sorted(p.stem for p in (sample_dir / "images").glob("*.jpg"))
    assert sorted(labels["image_name"]) == images and not labels["image_name"].duplicated().any()
    assert set(labels["field"]) <= {"none", "soft", "dark", "band"}
    assert labels[["ruler", "ink", "bubbles"]].isin([0, 1]).all().all()


def _nfd(s: str) -> str:
    import unicodedata

    return unicodedata.normalize("NFD", s)


def test_ordinary_file_names_are_accepted_and_only_unsafe_ones_refused(tmp_path):
    long_ok = "n" * 249 + "é"  # 251 bytes in UTF-8 (255 with ".jpg", the file system's limit)
    ok = ["_DSC0001", "élève", "a..2", "=1+2", "IMG 0042 (copy)", "日本語", long_ok]
    unsafe = {"../x": "path separator", "a\\b": "path separator", "..": "relative path component",
              ".": "relative path component", "bell\x07": "U+0007", "rtl\u202egpj": "U+202E",
              "é" * 128: "256 bytes long"}
    files = {n: jpeg_bytes(40, 40, seed=i) for i, n in enumerate(ok)}
    files[_nfd("élève")] = files.pop("élève")  # on disk decomposed (as macOS writes it), in the CSV composed
    rows = [{"image_name": n, "sex": "female", "age_approx": 50, "target": 0} for n in [*ok, *unsafe]]
    root = write_generic(tmp_path / "in", files, rows)
    found = ingest.ingest([str(root)])
    assert sorted(found.records["image_name"]) == sorted(ok)
    assert found.records.set_index("image_name").loc["élève", "rel_path"] == f"images/{_nfd('élève')}.jpg"
    q = found.quarantine.set_index("image_name")
    assert len(q) == len(unsafe) and set(q["reason"]) == {"unsafe_name"}
    for name, why in unsafe.items():
        assert why in q.loc[name, "detail"], (name, q.loc[name, "detail"])
    assert found.name_rule == "2"  # these inputs are written differently than under rule 1: new fingerprint


def test_names_that_collide_once_normalised_are_clear_duplicates(tmp_path):
    rows = [{"image_name": "café", "sex": "female", "age_approx": 50, "target": 0},
            {"image_name": _nfd("café"), "sex": "male", "age_approx": 40, "target": 1}]
    files = {"café": jpeg_bytes(40, 40, seed=1), _nfd("café"): jpeg_bytes(40, 40, seed=2)}
    found = ingest.ingest([str(write_generic(tmp_path / "in", files, rows))])
    assert found.records.empty
    q = found.quarantine
    assert sorted(q["reason"]) == ["ambiguous_file", "duplicate_name", "duplicate_name"]
    assert (q["image_name"] == "café").all()  # one name, in NFC
    assert all("Unicode-normalised" in d for d in q["detail"])
    assert found.n_inputs == 3  # two rows and the second file: nothing dropped


def test_names_rule_1_accepted_keep_their_fingerprint(tmp_path):
    """Inputs whose names were all accepted before get the fingerprint they had; the new rule enters only where
    it decides differently."""
    from melanoma_data import build, manifest
    from melanoma_data.config import PreprocessConfig
    from melanoma_data.ops import op_versions

    cfg = PreprocessConfig.from_dict({"square": {"size": 32}})
    root = write_generic(tmp_path / "in", {"ISIC_0000001": jpeg_bytes(64, 48, seed=1), "b-2.x": jpeg_bytes(64, 48)})
    found = ingest.ingest([str(root)])
    assert found.name_rule is None
    res = build.preprocess([str(root)], str(tmp_path / "out"), cfg, workers=0)
    assert res.fingerprint == manifest.fingerprint(cfg.fingerprint_dict(), op_versions(), found.listing)
    (root / "images" / "élève.jpg").write_bytes(jpeg_bytes(64, 48, seed=3))
    with open(root / "metadata.csv", "a", encoding="utf-8") as fh:
        fh.write("élève,female,50,0\n")
    found = ingest.ingest([str(root)])
    assert found.name_rule == "2" and "élève" in set(found.records["image_name"])
    assert manifest.fingerprint({**cfg.fingerprint_dict(), "name_rule": "2"}, op_versions(), found.listing) != \
        manifest.fingerprint(cfg.fingerprint_dict(), op_versions(), found.listing)


def test_a_csv_with_too_many_columns_is_refused_from_its_header(tmp_path, monkeypatch):
    import time

    root = tmp_path / "wide"
    (root / "images").mkdir(parents=True)
    (root / "images" / "A.jpg").write_bytes(jpeg_bytes(40, 40))
    header = "image_name,target," + ",".join(f"c{i}" for i in range(100_000))
    (root / "metadata.csv").write_text(header + "\n" + "A,0," + ",".join("1" for _ in range(100_000)) + "\n")
    parsed = []
    monkeypatch.setattr(ingest.pd, "read_csv", lambda *a, **k: parsed.append(a))
    start = time.perf_counter()
    with pytest.raises(InputError, match=r"more than 2,000 columns in the header line.*MELANOMA_MAX_CSV_COLUMNS"):
        ingest.ingest([str(root)])
    assert time.perf_counter() - start < 2 and parsed == []  # refused before the body is parsed
    monkeypatch.setenv("MELANOMA_MAX_CSV_COLUMNS", "ten")
    with pytest.raises(InputError, match="MELANOMA_MAX_CSV_COLUMNS='ten' is not a positive whole number"):
        ingest.ingest([str(root)])


def test_header_fields_are_counted_as_csv_fields(tmp_path, monkeypatch):
    """Quoted commas, escaped quotes and a quoted newline are one field; a wide CSV under the cap converts fast."""
    import time

    root = write_generic(tmp_path / "in", {"A": jpeg_bytes(40, 40), "B": jpeg_bytes(40, 40, seed=2)})
    (root / "metadata.csv").write_text('image_name,"x,y","say ""hi"", twice","two\nlines",target\n'
                                       "A,1,t,-1,0\nB,2.5,u,,1\n")
    monkeypatch.setenv("MELANOMA_MAX_CSV_COLUMNS", "5")
    recs = ingest.ingest([str(root)]).records.set_index("image_name")
    assert recs.loc["B", "x,y"] == 2.5 and recs.loc["A", "two\nlines"] == -1 and pd.isna(recs.loc["B", "two\nlines"])
    monkeypatch.setenv("MELANOMA_MAX_CSV_COLUMNS", "4")
    with pytest.raises(InputError, match="more than 4 columns"):
        ingest.ingest([str(root)])
    monkeypatch.delenv("MELANOMA_MAX_CSV_COLUMNS")
    cols = {f"m{i}": [f" {i}.5", str(i)] if i % 2 else ["text", ""] for i in range(1000)}
    pd.DataFrame({"image_name": ["A", "B"], "target": [0, 1], **cols}).to_csv(root / "metadata.csv", index=False)
    start = time.perf_counter()
    found = ingest.ingest([str(root)])
    took = time.perf_counter() - start
    recs = found.records.set_index("image_name")
    assert recs.loc["A", "m1"] == 1.5 and recs.loc["B", "m1"] == 1.0 and recs.loc["A", "m0"] == "text"
    assert pd.isna(recs.loc["B", "m0"]) and {e.dtype for e in found.extras} == {"float64", "string"}
    assert took < 4, took  # 1.1 s here; column by column it took 6.0 s (2 shared cores, 2026-12-03)


_ONE_MORE_COLUMN = '''
import importlib.util, sys
from pathlib import Path

import pandas as pd

# the column table with one more metadata column: the only edit "add a metadata column" needs
spec = importlib.util.find_spec("melanoma_data.columns")
source = Path(spec.origin).read_text()
anchor = '    _c("rel_path",'
assert anchor in source
source = source.replace(anchor, '    _c("clin_size_mm", _F, "Float64", "metadata", check=_checks("range", 0, 100), '
                                'ingest="input", doc="lesion diameter"),\\n' + anchor, 1)
module = importlib.util.module_from_spec(spec)
sys.modules["melanoma_data.columns"] = module
exec(compile(source, spec.origin, "exec"), module.__dict__)

from melanoma_data import ingest, schemas, shards  # noqa: E402

root = Path(sys.argv[1])
found = ingest.ingest([str(root)])
recs = found.records.set_index("image_name")
assert "clin_size_mm" not in {e.name for e in found.extras}, found.extras
assert str(recs["clin_size_mm"].dtype) == "Float64" and recs.loc["A", "clin_size_mm"] == 4.5
assert pd.isna(recs.loc["B", "clin_size_mm"])
reasons = dict(zip(found.quarantine["image_name"], found.quarantine["detail"]))
assert "clin_size_mm='big' is not a number" in reasons["C"] and "clin_size_mm=" in reasons["D"], reasons
assert "clin_size_mm" in schemas.METADATA_SCHEMA.columns and "clin_size_mm" in schemas.shard_schema(64).columns
print("ok")
'''


def test_a_metadata_column_is_one_edit_in_the_column_table(tmp_path):
    """With one more :class:`Column` in the table (and nothing else changed), a CSV's column of that name is
    read, converted, validated and kept as a toolkit column, not an extra."""
    import subprocess
    import sys
    from pathlib import Path

    files = {n: jpeg_bytes(40, 40, seed=i) for i, n in enumerate("ABCD")}
    rows = [{"image_name": n, "target": 0, "clin_size_mm": v} for n, v in zip("ABCD", ["4.5", "", "big", "400"],
                                                                               strict=True)]
    root = write_generic(tmp_path / "in", files, rows)
    repo = Path(__file__).resolve().parents[2]
    res = subprocess.run([sys.executable, "-c", _ONE_MORE_COLUMN, str(root)], cwd=repo, capture_output=True,
                         text=True, env={**__import__("os").environ, "PYTHONPATH": str(repo)}, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]
