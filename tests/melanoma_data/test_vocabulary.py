"""The one class vocabulary: every code of every dataset reaches a diagnosis text with valid classes, and the
meaning of the older targets does not move."""

from __future__ import annotations

import pytest

from melanoma_data import ingest, vocabulary

#: The 2019 class of every text the 2016–2024 layouts produced before the newer datasets (ingest.py, 2026-12-03).
BEFORE = {
    "melanoma": "MEL", "nevus": "NV", "basal cell carcinoma": "BCC", "actinic keratosis": "AK",
    "benign keratosis": "BKL", "seborrheic keratosis": "BKL", "lichenoid keratosis": "BKL", "solar lentigo": "BKL",
    "lentigo nos": "BKL", "dermatofibroma": "DF", "vascular lesion": "VASC", "squamous cell carcinoma": "SCC",
    "cafe-au-lait macule": "UNK", "café-au-lait macule": "UNK", "atypical melanocytic proliferation": "UNK",
    "unknown": "UNK",
}


@pytest.mark.parametrize("dataset", sorted(vocabulary.CODES))
def test_every_code_of_every_dataset_reaches_a_text_with_valid_classes(dataset):
    for code, text in vocabulary.CODES[dataset].items():
        assert vocabulary.text_of(dataset, code) == text, (dataset, code)
        entry = vocabulary.lookup(text)
        assert entry is not None, f"{dataset} code {code!r} → {text!r} is not in the table"
        assert entry.class_2019 in vocabulary.CLASSES_2019, (dataset, code)
        assert entry.class_2025 in (*vocabulary.CLASSES_2025, None), (dataset, code)
        assert entry.source, (dataset, code)


def test_every_registered_newer_layout_has_its_codes():
    from melanoma_data import layouts

    newer = {"milk10k", "ham10000", "derm7pt", "pad-ufes-20"}
    assert newer & set(layouts.names()) <= set(vocabulary.CODES)


def test_the_2025_classes_and_their_own_texts():
    assert len(vocabulary.CLASSES_2025) == 11 and len(set(vocabulary.CLASSES_2025)) == 11
    for cls in vocabulary.CLASSES_2025:  # each class's default text is of that class, malignant as the class is
        entry = vocabulary.lookup(vocabulary.TEXT_OF_2025[cls])
        assert entry.class_2025 == cls
        assert entry.malignant == (cls in vocabulary.MALIGNANT_2025), cls
    assert "AKIEC" not in vocabulary.MALIGNANT_2025  # the documented choice
    # the milk10k codes are the 2025 classes themselves
    assert set(vocabulary.CODES["milk10k"]) == set(vocabulary.CLASSES_2025)


def test_the_older_targets_keep_their_meaning():
    assert ingest.MALIGNANT_DIAGNOSES == ("melanoma", "basal cell carcinoma", "squamous cell carcinoma")
    assert {t: ingest.CLASS_OF_DIAGNOSIS[t] for t in BEFORE} == BEFORE
    assert ingest.DIAGNOSIS_CLASSES == ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
    assert ingest.TARGET_CLASSES == {"melanoma": ("MEL",), "malignant": ("MEL", "BCC", "SCC")}
    # the newer datasets add only the 2025 classes without a 2019 counterpart: no text an older layout produces
    # (the archive's "melanoma metastasis", "blue nevus", ...) changes its class or target
    assert set(vocabulary.DIAGNOSES) - set(BEFORE) == {"other benign", "inflammatory or infectious", "other malignant"}
    assert vocabulary.text_of("derm7pt", "melanoma metastasis") == "melanoma"  # so its target is 1
    # a text the table does not know is UNK, as before; a blank one is no class
    assert ingest.diagnosis_class("something new") == "UNK" and ingest.diagnosis_class(" ", None) is None


def test_lookup_tolerates_case_and_space_and_knows_blank():
    assert vocabulary.lookup("  Melanoma ").class_2025 == "MEL"
    assert vocabulary.lookup("") is None and vocabulary.lookup(None) is None
    assert vocabulary.text_of("pad-ufes-20", "nev") == "nevus" and vocabulary.text_of("ham10000", "MEL") == "melanoma"
    assert vocabulary.text_of("ham10000", "") == "" and vocabulary.text_of("ham10000", "zzz") == "zzz"
    assert vocabulary.benign_malignant("nevus") == "benign" and vocabulary.benign_malignant("zzz") == ""
