"""One class vocabulary for every dataset: each dataset's diagnosis codes → one diagnosis text → its classes.

Every layout reads its own codes (HAM10000's ``dx``, MILK10k's one-hot ground truth and ``diagnosis_full``,
Derm7pt's ``diagnosis``, PAD-UFES-20's ``diagnostic``) into one **diagnosis text** (ISIC 2020 spelling, lower
case: the shards' ``diagnosis`` column), keeps the code as published in ``diagnosis_original``, and reads every
class from the text through :data:`DIAGNOSES`:

* ``class_2019``: the nine classes of ISIC 2019 / the 2020 winner's multi-class target (``target=diagnosis``);
* ``class_2025``: the eleven classes of ISIC 2025 (MILK10k), None where a text has none (``unknown``);
* ``malignant``: whether the text counts as malignant for the ``malignant`` target definition of the new
  layouts (``benign_malignant``); the 2016–2024 layouts keep their own columns and
  :data:`LEGACY_MALIGNANT_DIAGNOSES`.

Sources: the ISIC 2019 class definitions (challenge page, 2019), the 2020 winner's grouping of the 2020 labels
(Ha, Liu & Liu, 2020), the MILK10k ground-truth classes (ISIC 2025 challenge page and its official scorer), the
HAM10000 ``dx`` codes (Tschandl et al., Sci. Data 2018), Derm7pt's 20 diagnoses (Kawahara et al., JBHI 2018,
``release_v0/meta/meta.csv``) and PAD-UFES-20's six (Pacheco et al., Data in Brief 2020).

``AKIEC`` (actinic keratosis / intraepidermal carcinoma) is **not** counted as malignant: the ISIC archive's
diagnosis hierarchy files solar/actinic keratosis under "Indeterminate" (``diagnosis_1``), the ISIC 2019 table
this toolkit already used counts AK as benign, and the ISIC 2025 challenge scores the eleven classes without a
malignancy grouping. Bowen's disease (squamous cell carcinoma in situ) follows its dataset's class: AKIEC in MILK10k,
SCC in PAD-UFES-20 (its v1 merged it there).

The newer datasets' codes map onto the texts the older layouts already produce wherever one fits (Derm7pt's nevus
sub-types → ``nevus``, its melanoma sub-types and metastases → ``melanoma``, ``lentigo`` → ``lentigo nos``), and
only the three ISIC 2025 classes without a 2019 counterpart add texts. So a text an older layout produces keeps
its classes and its target exactly (``target`` under ``melanoma`` is ``diagnosis == "melanoma"``), and the detail
stays in ``diagnosis_original`` (and MILK10k's ``diagnosis_full``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

#: The nine ISIC 2019 classes (``target=diagnosis``), in the order of the softmax head.
CLASSES_2019 = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK")
#: The eleven ISIC 2025 (MILK10k) classes, in the ground truth's column order.
CLASSES_2025 = ("AKIEC", "BCC", "BEN_OTH", "BKL", "DF", "INF", "MAL_OTH", "MEL", "NV", "SCCKA", "VASC")
#: Of the eleven, those counted as malignant (see the module docstring for AKIEC).
MALIGNANT_2025 = ("BCC", "MAL_OTH", "MEL", "SCCKA")


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """One diagnosis text and its classes (see the module docstring)."""

    text: str
    class_2019: str
    class_2025: str | None
    malignant: bool
    source: str


def _d(text: str, c19: str, c25: str | None, malignant: bool, source: str) -> tuple[str, Diagnosis]:
    return text, Diagnosis(text, c19, c25, malignant, source)


_I19, _W20, _M25 = "ISIC 2019 classes", "2020 winner's grouping", "ISIC 2025 (MILK10k) classes"

#: Every diagnosis text a layout produces → its classes. The first block is the table the 2016–2024 layouts
#: always had (its 2019 classes unchanged); the last three are the ISIC 2025 classes without a 2019 counterpart.
DIAGNOSES: dict[str, Diagnosis] = dict([
    _d("melanoma", "MEL", "MEL", True, _I19),
    _d("nevus", "NV", "NV", False, _I19),
    _d("basal cell carcinoma", "BCC", "BCC", True, _I19),
    _d("actinic keratosis", "AK", "AKIEC", False, _I19),
    _d("benign keratosis", "BKL", "BKL", False, _I19),
    _d("seborrheic keratosis", "BKL", "BKL", False, _W20),
    _d("lichenoid keratosis", "BKL", "BKL", False, _W20),
    _d("solar lentigo", "BKL", "BKL", False, _W20),
    _d("lentigo nos", "BKL", "BKL", False, _W20),
    _d("dermatofibroma", "DF", "DF", False, _I19),
    _d("vascular lesion", "VASC", "VASC", False, _I19),
    _d("squamous cell carcinoma", "SCC", "SCCKA", True, _I19),
    _d("cafe-au-lait macule", "UNK", "BEN_OTH", False, _W20),
    _d("café-au-lait macule", "UNK", "BEN_OTH", False, _W20),
    _d("atypical melanocytic proliferation", "UNK", None, False, _W20),
    _d("unknown", "UNK", None, False, _W20),
    # ISIC 2025: the classes without a 2019 counterpart
    _d("other benign", "UNK", "BEN_OTH", False, _M25),
    _d("inflammatory or infectious", "UNK", "INF", False, _M25),
    _d("other malignant", "UNK", "MAL_OTH", True, _M25),
])

#: Each 2025 class → the diagnosis text a MILK10k lesion gets when its ``diagnosis_full`` is not in the table.
TEXT_OF_2025 = {"AKIEC": "actinic keratosis", "BCC": "basal cell carcinoma", "BEN_OTH": "other benign",
                "BKL": "benign keratosis", "DF": "dermatofibroma", "INF": "inflammatory or infectious",
                "MAL_OTH": "other malignant", "MEL": "melanoma", "NV": "nevus", "SCCKA": "squamous cell carcinoma",
                "VASC": "vascular lesion"}

#: The codes of each dataset as published → the diagnosis text. A test walks every code through this table and
#: :data:`DIAGNOSES`. Derm7pt's melanoma sub-types (thickness, in situ, metastasis) are all ``melanoma`` and its
#: nevus sub-types ``nevus``: the code keeps the detail in ``diagnosis_original``.
CODES: dict[str, dict[str, str]] = {
    "ham10000": {"akiec": "actinic keratosis", "bcc": "basal cell carcinoma", "bkl": "benign keratosis",
                 "df": "dermatofibroma", "mel": "melanoma", "nv": "nevus", "vasc": "vascular lesion"},
    "isic2018": {"AKIEC": "actinic keratosis", "BCC": "basal cell carcinoma", "BKL": "benign keratosis",
                 "DF": "dermatofibroma", "MEL": "melanoma", "NV": "nevus", "VASC": "vascular lesion"},
    "milk10k": dict(TEXT_OF_2025),
    # MILK10k's supplement (``diagnosis_full``, the ISIC archive's deepest diagnosis): the values seen in public
    # copies; a value not here takes its lesion's class text (layouts/milk10k.py)
    "milk10k-full": {
        "Basal cell carcinoma": "basal cell carcinoma", "Blue nevus": "nevus",
        "Collision - At least one malignant proliferation": "other malignant", "Dermatofibroma": "dermatofibroma",
        "Hemangioma": "vascular lesion", "Infundibular or epidermal cyst": "other benign",
        "Inflammatory or infectious diseases": "inflammatory or infectious",
        "Keratoacanthoma": "squamous cell carcinoma",
        "Lichen planus like keratosis": "lichenoid keratosis", "Melanoma Invasive": "melanoma",
        "Melanoma in situ": "melanoma", "Molluscum": "inflammatory or infectious", "Nevus": "nevus",
        "Nevus, Spitz": "nevus", "Pyogenic granuloma": "vascular lesion",
        "Sebaceous hyperplasia": "other benign", "Seborrheic keratosis": "seborrheic keratosis",
        "Solar lentigo": "solar lentigo", "Solar or actinic keratosis": "actinic keratosis",
        "Squamous cell carcinoma, Invasive": "squamous cell carcinoma"},
    "derm7pt": {
        "basal cell carcinoma": "basal cell carcinoma", "blue nevus": "nevus", "clark nevus": "nevus",
        "combined nevus": "nevus", "congenital nevus": "nevus", "dermal nevus": "nevus",
        "dermatofibroma": "dermatofibroma", "lentigo": "lentigo nos", "melanoma": "melanoma",
        "melanoma (0.76 to 1.5 mm)": "melanoma", "melanoma (in situ)": "melanoma",
        "melanoma (less than 0.76 mm)": "melanoma", "melanoma (more than 1.5 mm)": "melanoma",
        "melanoma metastasis": "melanoma", "melanosis": "other benign", "miscellaneous": "unknown",
        "recurrent nevus": "nevus", "reed or spitz nevus": "nevus",
        "seborrheic keratosis": "seborrheic keratosis", "vascular lesion": "vascular lesion"},
    "pad-ufes-20": {"ACK": "actinic keratosis", "BCC": "basal cell carcinoma", "MEL": "melanoma", "NEV": "nevus",
                    "SCC": "squamous cell carcinoma", "SEK": "seborrheic keratosis",
                    # Bowen's disease: listed separately in the first release, merged into SCC in v1
                    "BOD": "squamous cell carcinoma"},
}

#: The diagnoses the ``malignant`` definition counted before the newer datasets (the 2016–2024 layouts' meaning of
#: ``target``, kept as it was: a text added to :data:`DIAGNOSES` never changes it).
LEGACY_MALIGNANT_DIAGNOSES = ("melanoma", "basal cell carcinoma", "squamous cell carcinoma")


def lookup(text: Any) -> Diagnosis | None:
    """The table's entry for a diagnosis text (case and surrounding space ignored), None when unknown or blank."""
    if not isinstance(text, str) or not text.strip():
        return None
    return DIAGNOSES.get(text.strip().lower())


def text_of(dataset: str, code: Any) -> str:
    """The diagnosis text of a dataset's code ("" for a blank code; the code itself, lower case, when the table
    does not know it — its classes are then UNK / none, and the layout's validation says so)."""
    if not isinstance(code, str) or not code.strip():
        return ""
    table = CODES[dataset]
    code = code.strip()
    return table.get(code, table.get(code.lower(), table.get(code.upper(), code.lower())))


def class_2025(text: Any) -> str | None:
    """The ISIC 2025 class of a diagnosis text (None when it has none or is unknown)."""
    entry = lookup(text)
    return entry.class_2025 if entry else None


def benign_malignant(text: Any) -> str:
    """``malignant`` / ``benign`` for a diagnosis text the table knows, "" otherwise."""
    entry = lookup(text)
    return "" if entry is None else ("malignant" if entry.malignant else "benign")


def fill_2025(frame: pd.DataFrame) -> pd.Series:
    """Each row's ``diagnosis_2025``: its own value where given, else the class of its ``diagnosis`` text."""
    own = frame["diagnosis_2025"] if "diagnosis_2025" in frame else pd.Series("", index=frame.index)
    derived = frame["diagnosis"].map(lambda t: class_2025(t) or "") if "diagnosis" in frame else own
    blank = own.isna() | (own.astype(str).str.strip() == "")
    return own.where(~blank, derived)


def reference_markdown() -> str:
    """The class vocabulary as a Markdown page: every diagnosis text with its classes and source, then every
    dataset's codes."""
    lines = ["# Class vocabulary", "",
             "Every layout reads its diagnosis codes into one diagnosis text (the `diagnosis` column; the code as "
             "published stays in `diagnosis_original`), and every class comes from the text. `target=diagnosis` "
             "trains the nine ISIC 2019 classes, `target=isic2025` the eleven ISIC 2025 classes. AKIEC is not "
             "counted as malignant (the ISIC archive files actinic keratosis under *Indeterminate*). The newer "
             "datasets' codes map onto the older texts wherever one fits, so the older layouts' classes and "
             "targets do not move.", "",
             "| diagnosis text | 2019 class | 2025 class | malignant | source |", "|---|---|---|---|---|"]
    for d in DIAGNOSES.values():
        lines.append(f"| {d.text} | {d.class_2019} | {d.class_2025 or '—'} | {'yes' if d.malignant else 'no'} | "
                     f"{d.source} |")
    for dataset, codes in CODES.items():
        lines += ["", f"## `{dataset}` codes", "", "| code | diagnosis text |", "|---|---|"]
        lines += [f"| `{code}` | {text} |" for code, text in codes.items()]
    return "\n".join(lines) + "\n"
