"""Subgroup performance: AUC and partial AUC by sex, age band, site, source, attribution and skin type.

Intervals are 95% percentile bootstraps that resample *patients* (a patient's images move together: the
rows of one patient are not independent), drawn as row weights (how often each row's patient was drawn)
instead of copied rows. A subgroup whose whole interval lies below the overall AUC is flagged; one with
fewer than :data:`MIN_POSITIVES` positives, :data:`MIN_IMAGES` images, :data:`MIN_PATIENTS` patients or
no negatives shows its counts and "too few". ``subgroup_table`` takes any ``(label, column)`` dimensions, so
the artefact issue's bias table can reuse it on its own columns.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd

from melanoma_data.folds import patient_keys
from melanoma_models import metrics as M

MIN_POSITIVES = 5
MIN_IMAGES = 20
#: fewer patients than this and the patient bootstrap has nothing to resample (one patient: a zero-width interval)
MIN_PATIENTS = 5
#: (label, column) of the subgroup dimensions; ``age band`` is cut from ``age_approx``. The skin-tone
#: dimensions are each their own scale, never merged: the archive's ``fitzpatrick_skin_type``, the ITA band the
#: colour op measures on every image (``ita_band``), MILK10k's ``skin_tone_class`` and PAD-UFES-20's
#: ``fitspatrick``.
DIMENSIONS: tuple[tuple[str, str], ...] = (
    ("sex", "sex"), ("age band", "age_approx"), ("site", "anatom_site_general_challenge"), ("source", "source"),
    ("attribution", "attribution"), ("skin type", "fitzpatrick_skin_type"), ("ITA band", "ita_band"),
    ("skin tone class", "skin_tone_class"), ("Fitzpatrick (fitspatrick)", "fitspatrick"),
)
AGE_BANDS = (0, 30, 45, 60, 75, 200)


def age_band(age: pd.Series) -> pd.Series:
    """``<30``, ``30-44``, ``45-59``, ``60-74``, ``75+`` (missing ages: NA)."""
    a = pd.to_numeric(age, errors="coerce")
    labels = ["<30", "30-44", "45-59", "60-74", "75+"]
    return pd.cut(a, AGE_BANDS, right=False, labels=labels).astype(object)


def patient_resamples(patient: Any, n_boot: int = 200, seed: int = 0) -> Iterator[np.ndarray]:
    """``n_boot`` bootstrap resamples of the patients, as row weights (how often each row's patient was drawn)."""
    codes, _ = pd.factorize(pd.Series(np.asarray(patient)), use_na_sentinel=False)
    n_pat = int(codes.max()) + 1 if len(codes) else 0
    rng = np.random.default_rng(seed)
    for _ in range(n_boot if n_pat else 0):
        yield np.bincount(rng.integers(0, n_pat, n_pat), minlength=n_pat)[codes].astype(np.float64)


def percentile_interval(values: Any) -> tuple[float, float]:
    """The 95% percentile interval of bootstrap values (NaN ones left out; NaN with fewer than 10 left)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if len(v) >= 10 else (np.nan, np.nan)


def bootstrap(y: np.ndarray, p: np.ndarray, patient: np.ndarray, n_boot: int = 200, seed: int = 0
              ) -> dict[str, tuple[float, float]]:
    """95% intervals of AUC and the 2024 pAUC over ``n_boot`` resamplings of the patients (NaN when undefined)."""
    aucs, paucs = [], []
    for w in patient_resamples(patient, n_boot, seed):
        aucs.append(M.roc_auc(y, p, w))
        paucs.append(M.pauc_80_2024(y, p, 0.8, w))
    return {"auc": percentile_interval(aucs), "pauc_80_2024": percentile_interval(paucs)}


def subgroup_table(frame: pd.DataFrame, n_boot: int = 200, seed: int = 0,
                   dimensions: tuple[tuple[str, str], ...] = DIMENSIONS) -> list[dict[str, Any]]:
    """One row per subgroup (and one for everything) with counts, AUC, 2024 pAUC and their intervals.

    Args:
        frame: ``target``, ``prediction``, ``patient_id`` (missing: each image its own patient, see
            :func:`melanoma_data.folds.patient_keys`) and the
            dimensions' columns (absent ones are skipped; missing values form no subgroup).
        n_boot: bootstrap draws per subgroup.
        dimensions: ``(label, column)`` pairs.

    Returns:
        Rows with ``dimension``, ``group``, ``images``, ``positives``, ``patients``, ``auc``, ``auc_ci``,
        ``pauc_80_2024``, ``pauc_ci``, ``too_few`` and ``below_overall`` (the AUC interval's upper end
        is below the overall AUC).
    """
    y_all = frame["target"].to_numpy(dtype=int)
    p_all = frame["prediction"].to_numpy(dtype=float)
    patient_all = patient_keys(frame)
    overall = M.roc_auc(y_all, p_all) if 0 < y_all.sum() < len(y_all) else float("nan")

    def row(dimension: str, group: str, mask: np.ndarray) -> dict[str, Any]:
        y, p = y_all[mask], p_all[mask]
        n, pos = int(len(y)), int(y.sum())
        patients = int(patient_all[mask].nunique())
        out: dict[str, Any] = {"dimension": dimension, "group": group, "images": n, "positives": pos,
                               "patients": patients,
                               "auc": float("nan"), "auc_ci": [float("nan")] * 2, "pauc_80_2024": float("nan"),
                               "pauc_ci": [float("nan")] * 2, "too_few": pos < MIN_POSITIVES or n < MIN_IMAGES
                               or patients < MIN_PATIENTS or pos == n, "below_overall": False}
        if out["too_few"]:
            return out
        cis = bootstrap(y, p, patient_all.to_numpy()[mask], n_boot, seed)
        out.update(auc=M.roc_auc(y, p), auc_ci=list(cis["auc"]), pauc_80_2024=M.pauc_80_2024(y, p),
                   pauc_ci=list(cis["pauc_80_2024"]))
        out["below_overall"] = bool(dimension != "all" and np.isfinite(out["auc_ci"][1])
                                    and out["auc_ci"][1] < overall)
        return out

    rows = [row("all", "all", np.ones(len(frame), bool))]
    for label, col in dimensions:
        if col not in frame:
            continue
        values = age_band(frame[col]) if label == "age band" else frame[col].astype(object)
        values = values.where(values.notna() & (values.astype(str) != ""))
        for group in sorted(values.dropna().unique(), key=str):
            rows.append(row(label, str(group), (values == group).to_numpy()))
    return rows


def table_html(rows: list[Mapping[str, Any]]) -> str:
    """The report's subgroup table (flagged rows marked, "too few" rows with their counts only)."""
    import html

    def cell(v: float, ci: list[float], fmt: str) -> str:
        if not np.isfinite(v):
            return "<td></td>"
        lo, hi = ci
        tail = f" ({lo:{fmt}}–{hi:{fmt}})" if np.isfinite(lo) else ""
        return f"<td>{v:{fmt}}{tail}</td>"

    body = []
    for r in rows:
        note = "too few" if r["too_few"] else ("<b>below overall</b>" if r["below_overall"] else "")
        body.append(f"<tr><td>{html.escape(r['dimension'])}</td><td>{html.escape(r['group'])}</td>"
                    f"<td>{r['images']}</td><td>{r['positives']}</td><td>{r.get('patients', '')}</td>"
                    + ("<td></td><td></td>" if r["too_few"] else cell(r["auc"], r["auc_ci"], ".3f")
                       + cell(r["pauc_80_2024"], r["pauc_ci"], ".4f"))
                    + f"<td>{note}</td></tr>")
    return ("<table><tr><th>by</th><th>group</th><th>images</th><th>positives</th><th>patients</th>"
            "<th>AUC (95% CI)</th><th>pAUC 2024 (95% CI)</th><th></th></tr>" + "".join(body) + "</table>")
