"""EDA report of a dataset version: one HTML page with PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import contextvars
import datetime as _dt
import html
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from melanoma_data import columns, folds, fsutil, plots
from melanoma_data.config import manifest_section
from melanoma_data.dataset import Dataset, decode_jpeg

BENIGN, MELANOMA, UNLABELLED = "#4C72B0", "#C44E52", "#999999"


#: What target = 1 means in the version being reported (``melanoma``; 2024 data: ``malignant``), set by
#: :func:`write_report` for the plots it draws (a context variable: safe with concurrent reports).
_POSITIVE: contextvars.ContextVar[str] = contextvars.ContextVar("positive_class", default="melanoma")


def _save(fig, out: Path, name: str) -> str:
    positive = _POSITIVE.get()
    if positive != "melanoma":  # the plots name the positive class "melanoma"; say what target = 1 means here
        from matplotlib.text import Text

        for text in fig.findobj(Text):
            label = text.get_text()
            if "elanoma" in label:
                text.set_text(label.replace("melanoma", positive).replace("Melanoma", positive.capitalize()))
    plots.save(fig, out / name)
    return name


def _label(meta: pd.DataFrame) -> pd.Series:
    return np.where(meta["target"].isna(), "unlabelled", np.where(meta["target"].fillna(0) == 1, "melanoma", "benign"))


def plot_class_balance(meta: pd.DataFrame, out: Path) -> str:
    plt = plots.pyplot()
    counts = pd.crosstab(meta["source"], _label(meta)).reindex(columns=["benign", "melanoma", "unlabelled"],
                                                                fill_value=0)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    left = np.zeros(len(counts))
    for col, colour in zip(counts.columns, (BENIGN, MELANOMA, UNLABELLED), strict=True):
        ax.barh(counts.index, counts[col], left=left, color=colour, label=col)
        left += counts[col].to_numpy()
    for i, (_, row) in enumerate(counts.iterrows()):
        labelled = row["benign"] + row["melanoma"]
        rate = row["melanoma"] / labelled if labelled else float("nan")
        ax.text(left[i], i, f"  {rate:.1%} melanoma of {labelled} labelled", va="center", fontsize=8)
    ax.set_xlim(0, left.max() * 1.6 if len(left) else 1)
    ax.set_xlabel("images")
    ax.set_title("Class balance per source")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, out, "class_balance.png")


def plot_sizes(meta: pd.DataFrame, out: Path) -> str:
    plt = plots.pyplot()
    sizes = (meta["orig_width"].astype(str) + "×" + meta["orig_height"].astype(str)).value_counts().head(15)
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.barh(sizes.index[::-1], sizes.to_numpy()[::-1], color=BENIGN)
    n_sizes = meta[["orig_width", "orig_height"]].drop_duplicates().shape[0]
    a.set_title(f"Original sizes (top {len(sizes)} of {n_sizes})")
    a.set_xlabel("images")
    a.tick_params(axis="y", labelsize=7)
    lab = _label(meta)
    for name, colour in (("benign", BENIGN), ("melanoma", MELANOMA), ("unlabelled", UNLABELLED)):
        m = lab == name
        b.scatter(meta.loc[m, "orig_width"], meta.loc[m, "orig_height"], s=8, alpha=0.5, color=colour, label=name)
    b.set_xlabel("width (px)")
    b.set_ylabel("height (px)")
    b.set_title("Original width × height")
    b.legend(fontsize=7)
    return _save(fig, out, "sizes.png")


def plot_sites(meta: pd.DataFrame, out: Path) -> str:
    plt = plots.pyplot()
    lab = meta[meta["target"].notna()]
    site = lab["anatom_site_general_challenge"].fillna("(missing)")
    table = pd.crosstab(site, lab["target"].astype(int)).reindex(columns=[0, 1], fill_value=0)
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.barh(table.index, table[0], color=BENIGN, label="benign")
    ax.barh(table.index, table[1], left=table[0], color=MELANOMA, label="melanoma")
    for i, (_, row) in enumerate(table.iterrows()):
        ax.text(row.sum(), i, f"  {row[1] / max(row.sum(), 1):.1%}", va="center", fontsize=8)
    ax.set_xlim(0, table.sum(axis=1).max() * 1.25 if len(table) else 1)
    ax.set_title("Anatomic site (labelled images; melanoma rate)")
    ax.legend(fontsize=8)
    return _save(fig, out, "sites.png")


def plot_sex_age(meta: pd.DataFrame, out: Path) -> str:
    plt = plots.pyplot()
    lab = meta[meta["target"].notna()]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
    sex = pd.crosstab(lab["sex"].fillna("(missing)"), lab["target"].astype(int)).reindex(columns=[0, 1], fill_value=0)
    x = np.arange(len(sex))
    a.bar(x - 0.2, sex[0], width=0.4, color=BENIGN, label="benign")
    a.bar(x + 0.2, sex[1], width=0.4, color=MELANOMA, label="melanoma")
    a.set_xticks(x, sex.index)
    a.set_title("Sex")
    a.legend(fontsize=8)
    bins = np.arange(0, 95, 5)
    for t, colour, name in ((0, BENIGN, "benign"), (1, MELANOMA, "melanoma")):
        ages = lab.loc[lab["target"] == t, "age_approx"].dropna().astype(float)
        if len(ages):
            b.hist(ages, bins=bins, density=True, alpha=0.55, color=colour, label=f"{name} (n={len(ages)})")
    b.set_title("Age (density per class)")
    b.set_xlabel("age_approx")
    b.legend(fontsize=8)
    return _save(fig, out, "sex_age.png")


def plot_patients(meta: pd.DataFrame, out: Path) -> str:
    plt = plots.pyplot()
    per = meta.dropna(subset=["patient_id"]).groupby("patient_id").agg(n=("image_name", "size"),
                                                                       pos=("target", lambda s: (s == 1).any()))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    if len(per):
        bins = np.arange(0.5, per["n"].max() + 1.5) if per["n"].max() < 40 else 30
        ax.hist([per.loc[~per["pos"], "n"], per.loc[per["pos"], "n"]], bins=bins, stacked=True,
                color=[BENIGN, MELANOMA], label=["patients without melanoma", "patients with melanoma"])
        ax.legend(fontsize=8)
    ax.set_xlabel("images per patient")
    ax.set_ylabel("patients")
    ax.set_title(f"Images per patient ({len(per)} patients; "
                 f"{int(meta['patient_id'].isna().sum())} images without patient id)")
    return _save(fig, out, "patients.png")


def plot_folds(ds: Dataset, out: Path) -> str:
    plt = plots.pyplot()
    files = {k: v for k, v in ds.manifest.fold_files.items() if k.startswith("train")}
    folds = ds.manifest.fold_stats
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.4), gridspec_kw={"width_ratios": [2, 1]})
    if files:
        names = sorted(files)
        rates = [files[k]["melanoma"] / max(files[k]["images"], 1) for k in names]
        a.bar(names, rates, color=[f"C{files[k]['fold']}" for k in names])
        for i, k in enumerate(names):
            a.text(i, rates[i], f"{files[k]['melanoma']}/{files[k]['images']}\n{files[k]['patients']}p",
                   ha="center", va="bottom", fontsize=6)
        a.tick_params(axis="x", labelrotation=60, labelsize=7)
    a.set_title("Melanoma rate per train file (colour = fold; melanoma/images, patients)")
    if folds:
        ks = sorted(folds, key=int)
        b.bar(ks, [folds[k]["melanoma"] / max(folds[k]["images"], 1) for k in ks], color=[f"C{int(k)}" for k in ks])
        b.set_xlabel("fold")
    b.set_title("Melanoma rate per fold")
    return _save(fig, out, "folds.png")


def plot_measurements(meta: pd.DataFrame, out: Path, config: dict[str, Any]) -> str:
    plt = plots.pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(13, 3))
    lab = _label(meta)
    panels = [("vignette_radius_frac", "vignette radius / short side", "field_of_view"),
              ("hair_fraction", "hair fraction", "hair"),
              ("brightness_before", "brightness before", "colour"), ("brightness_after", "brightness after", "colour")]
    for ax, (col, title, section) in zip(axes, panels, strict=True):
        measured = section == "colour" or bool(manifest_section(config, section).get("enabled"))
        if not measured:
            ax.text(0.5, 0.5, f"not measured:\n[{section}] enabled = false\nin this version", ha="center",
                    va="center", transform=ax.transAxes, fontsize=9, color="#666")
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            every = pd.to_numeric(meta[col], errors="coerce").dropna()
            bins = np.histogram_bin_edges(every, bins=20) if len(every) else 20
            for name, colour in (("benign", BENIGN), ("melanoma", MELANOMA)):
                vals = pd.to_numeric(meta.loc[lab == name, col], errors="coerce").dropna()
                if len(vals):
                    ax.hist(vals, bins=bins, alpha=0.55, color=colour, label=name)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
        extra = ""
        if col == "vignette_radius_frac" and measured:
            extra = f" (found in {meta['vignette_detected'].fillna(False).astype(bool).mean():.0%})"
        ax.set_title(title + extra, fontsize=9)
    return _save(fig, out, "measurements.png")


def plot_artefacts(meta: pd.DataFrame, out: Path) -> str:
    """Each artefact's rate among melanomas and among benign images: what a model could learn instead of
    the lesion (Winkler et al. 2019: skin markings raised a CNN's melanoma scores)."""
    plt = plots.pyplot()
    rows = columns.presence_rates(meta)
    fig, ax = plt.subplots(figsize=(8, 3))
    if not rows:
        ax.text(0.5, 0.5, "not measured: this version has no artefact measurements\n(preprocessed before the "
                "artefacts op, or with [artefacts] enabled = false)", ha="center", va="center", transform=ax.transAxes,
                fontsize=9, color="#666")
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        x = np.arange(len(rows))
        for dx, key, colour, name in ((-0.2, "negative", BENIGN, "benign"), (0.2, "positive", MELANOMA, "melanoma")):
            rates = [0.0 if r[f"rate_{key}"] != r[f"rate_{key}"] else r[f"rate_{key}"] for r in rows]
            ax.bar(x + dx, rates, 0.4, color=colour, label=name)
            for xi, r, rate in zip(x, rows, rates, strict=True):
                n = r["positives" if key == "positive" else "negatives"]
                ax.text(xi + dx, rate, f"{r[f'{key}s_with']}/{n}", ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, [r["artefact"] for r in rows])
        ax.set_ylabel("share of images")
        ax.legend(fontsize=7)
    ax.set_title("Artefact rate per class (a model can learn what differs)", fontsize=9)
    return _save(fig, out, "artefacts.png")


# ------------------------------------------------------------------------------ external checks and skin tone

#: MONET concept scores (MILK10k) compared with the toolkit's own artefact measurements: (score, our column).
MONET_HAIR, MONET_INK = "MONET_hair", "MONET_skin_markings_pen_ink_purple_pen"
#: The skin-tone columns, each on its own scale (never merged): ours (ITA bands) and the datasets' own.
SKIN_TONE_COLUMNS = ("ita_band", "skin_tone_class", "fitspatrick")


def _numeric(meta: pd.DataFrame, col: str) -> pd.Series:
    return pd.to_numeric(meta[col], errors="coerce").astype(float) if col in meta else pd.Series(dtype=float)


def auc(score: pd.Series, flag: pd.Series) -> float:
    """The area under the ROC curve of ``score`` for the boolean ``flag`` (rank form, ties halved); NaN when
    either class is empty."""
    ok = score.notna() & flag.notna()
    s, f = score[ok].astype(float), flag[ok].astype(bool)
    n_pos, n_neg = int(f.sum()), int((~f).sum())
    if not n_pos or not n_neg:
        return float("nan")
    ranks = s.rank(method="average")
    return float((ranks[f].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def concept_checks(meta: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """The MONET concept scores against our detectors, for the columns the version has with values.

    ``hair``: Spearman ρ of ``MONET_hair`` and ``hair_fraction`` over the rows with both (``n``); ``ink``: the
    AUC of the pen/ink score for ``ink_detected``, the flag's rate, and the share of images whose score is at
    least 0.5 among flagged and unflagged images.
    """
    out: dict[str, dict[str, Any]] = {}
    hair, ours = _numeric(meta, MONET_HAIR), _numeric(meta, "hair_fraction")
    both = hair.notna() & ours.notna()
    if both.sum() >= 3:
        rho = hair[both].corr(ours[both], method="spearman")
        out["hair"] = {"n": int(both.sum()), "spearman": float(rho) if rho == rho else float("nan")}
    ink = _numeric(meta, MONET_INK)
    flag = meta["ink_detected"].astype("boolean") if "ink_detected" in meta else pd.Series(dtype="boolean")
    if len(ink) and len(flag):
        ok = ink.notna() & flag.notna()
        if ok.sum() >= 2:
            f = flag[ok].astype(bool)
            high = ink[ok] >= 0.5
            out["ink"] = {"n": int(ok.sum()), "flagged": int(f.sum()), "auc": auc(ink[ok], f),
                          "score_high_flagged": float(high[f].mean()) if f.any() else float("nan"),
                          "score_high_unflagged": float(high[~f].mean()) if (~f).any() else float("nan")}
    return out


def concept_rows(checks: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """:func:`concept_checks` as (label, text) rows of the report's facts table."""
    rows = []
    if "hair" in checks:
        h = checks["hair"]
        rows.append(("MONET hair vs hair_fraction", f"Spearman ρ = {h['spearman']:.2f} over {h['n']} images"))
    if "ink" in checks:
        k = checks["ink"]
        rows.append(("MONET pen/ink vs ink_detected",
                     f"AUC of the score for the flag {k['auc']:.2f}; flagged {k['flagged']} of {k['n']}; score ≥ 0.5 "
                     f"in {k['score_high_flagged']:.0%} of flagged, {k['score_high_unflagged']:.0%} of unflagged"))
    return rows


def plot_concepts(meta: pd.DataFrame, out: Path) -> str | None:
    """MONET's hair score against our hair fraction (scatter) and its pen/ink score by our ink flag (box plot):
    a free external check of our detectors; None when the version has neither pair."""
    checks = concept_checks(meta)
    if not checks:
        return None
    plt = plots.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), squeeze=False)
    a, b = axes[0]
    if "hair" in checks:
        a.scatter(_numeric(meta, "hair_fraction"), _numeric(meta, MONET_HAIR), s=8, alpha=0.5, color=BENIGN)
        a.set_xlabel("hair_fraction (ours)")
        a.set_ylabel(MONET_HAIR)
        rho = checks["hair"]["spearman"]
        said = f"Spearman ρ = {rho:.2f}" if rho == rho else "ρ undefined: one side is constant"
        a.set_title(f"Hair: MONET vs ours ({said}, n = {checks['hair']['n']})", fontsize=9)
    else:
        _no_pair(a, "hair: no images with both MONET_hair and hair_fraction")
    if "ink" in checks:
        score, flag = _numeric(meta, MONET_INK), meta["ink_detected"].astype("boolean")
        groups = [score[(flag == v).fillna(False).to_numpy()].dropna() for v in (False, True)]
        b.boxplot([g.to_numpy() for g in groups], showfliers=True)
        b.set_xticks([1, 2], [f"no ink found (n={len(groups[0])})", f"ink found (n={len(groups[1])})"])
        b.set_ylabel("MONET pen / ink score")
        b.set_title(f"Ink: MONET score by our flag (AUC {checks['ink']['auc']:.2f})", fontsize=9)
    else:
        _no_pair(b, "ink: no images with both the MONET pen/ink score\nand our ink flag (ink_detected; not looked "
                    "for\non clinical photos)")
    return _save(fig, out, "concepts.png")


def _no_pair(ax: Any, text: str) -> None:
    """An empty panel that says why it is empty."""
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=9, transform=ax.transAxes)


def skin_tone_counts(meta: pd.DataFrame) -> dict[str, pd.Series]:
    """Each skin-tone column the version has with values → its counts (ITA bands light to dark, the datasets'
    own scales in order), each on its own scale."""
    from melanoma_data.ops.colour import ITA_BAND_NAMES

    out: dict[str, pd.Series] = {}
    for col in SKIN_TONE_COLUMNS:
        if col not in meta or meta[col].isna().all():
            continue
        values = meta[col].dropna()
        if col == "ita_band":
            counts = values.astype(str).value_counts().reindex(list(ITA_BAND_NAMES), fill_value=0)
        else:  # the whole scale, zero counts included (MILK10k 0-5, Fitzpatrick 1-6)
            counts = pd.to_numeric(values, errors="coerce").dropna().astype(int).value_counts()
            scale = range(0, 6) if col == "skin_tone_class" else range(1, 7)
            counts = counts.reindex(sorted(set(scale) | set(counts.index)), fill_value=0)
        out[col] = counts
    return out


def skin_tone_confusion(meta: pd.DataFrame) -> pd.DataFrame | None:
    """``skin_tone_class`` (rows) × ``ita_band`` (columns, light to dark) counts, where both are present
    (MILK10k); None otherwise."""
    from melanoma_data.ops.colour import ITA_BAND_NAMES

    if not {"skin_tone_class", "ita_band"} <= set(meta.columns):
        return None
    both = meta[["skin_tone_class", "ita_band"]].dropna()
    if not len(both):
        return None
    table = pd.crosstab(pd.to_numeric(both["skin_tone_class"], errors="coerce").astype(int).rename("skin_tone_class"),
                        both["ita_band"].astype(str).rename("ita_band"))
    return table.reindex(columns=list(ITA_BAND_NAMES), fill_value=0)


def plot_skin_tone(meta: pd.DataFrame, out: Path) -> str | None:
    """One bar chart per skin-tone column present (never merged: each is its own scale); None when none is."""
    from melanoma_data.ops.colour import ITA_BANDS

    counts = skin_tone_counts(meta)
    if not counts:
        return None
    plt = plots.pyplot()
    ita = _numeric(meta, "ita").dropna()
    fig, axes = plt.subplots(1, len(counts) + bool(len(ita)), figsize=(4.2 * (len(counts) + bool(len(ita))), 3.2),
                             squeeze=False)
    panels = list(axes[0])
    if len(ita):  # the angles themselves: where they pile up (±90°: the skin's b* ≤ 0, a blue or grey light)
        ax = panels.pop(0)
        ax.hist(ita, bins=np.arange(-90, 91, 5), color=BENIGN)
        for _, low in ITA_BANDS[:-1]:
            ax.axvline(low, color="#888", lw=0.8, ls="--")
        ax.set_xlabel("ITA (degrees; dashed: band boundaries)")
        ax.set_ylabel("images")
        ax.set_title(f"ITA of the skin before colour correction (n={len(ita)})", fontsize=9)
    titles = {"ita_band": "ITA band (measured from the skin, ours)",
              "skin_tone_class": "skin_tone_class (MILK10k, 0-5)",
              "fitspatrick": "Fitzpatrick type (PAD-UFES-20, clinician)"}
    for ax, (col, c) in zip(panels, counts.items(), strict=True):
        ax.bar([str(i) for i in c.index], c.to_numpy(), color=BENIGN)
        for i, v in enumerate(c.to_numpy()):
            ax.text(i, v, str(int(v)), ha="center", va="bottom", fontsize=7)
        ax.set_title(titles[col], fontsize=9)
        ax.set_ylabel("images")
        ax.tick_params(axis="x", labelsize=7, labelrotation=30 if col == "ita_band" else 0)
    return _save(fig, out, "skin_tone.png")


def licence_rows(doc: Any, meta: pd.DataFrame) -> list[tuple[str, str]]:
    """Each input's licence (its layout's, as the release states it) and the per-image ``copyright_license``
    counts per source where a column has them."""
    rows = [(f"licence: {i.layout}", i.licence or "not stated by the layout (see the input's own files)")
            for i in doc.inputs]
    for col in ("copyright_license", "meta_copyright_license"):
        if col in meta and meta[col].notna().any():
            counts = meta.groupby(meta["source"].astype(str))[col].value_counts()
            for source in counts.index.get_level_values(0).unique():
                per = counts[source]
                rows.append((f"per-image licences: {source}", ", ".join(f"{k}: {v}" for k, v in per.items())))
            break
    return rows


def _html_table(table: pd.DataFrame, caption: str) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join(f"<tr><th>{html.escape(str(i))}</th>" + "".join(f"<td>{int(v)}</td>" for v in row) + "</tr>"
                   for i, row in zip(table.index, table.to_numpy(), strict=True))
    return (f"<table><caption>{html.escape(caption)}</caption><tr><th>{html.escape(str(table.index.name))} \\ "
            f"{html.escape(str(table.columns.name))}</th>{head}</tr>{body}</table>")


def plot_examples(ds: Dataset, meta: pd.DataFrame, out: Path, n: int = 8, seed: int = 0) -> str:
    plt = plots.pyplot()
    rng = np.random.default_rng(seed)
    lab = _label(meta)
    picks = {}
    for name in ("benign", "melanoma"):
        names = meta.loc[lab == name, "image_name"].to_numpy()
        picks[name] = list(rng.choice(names, min(n, len(names)), replace=False)) if len(names) else []
    images = _images(ds, [x for v in picks.values() for x in v])
    fig, axes = plt.subplots(2, n, figsize=(1.3 * n, 3))
    for r, name in enumerate(("benign", "melanoma")):
        for c in range(n):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(picks[name]):
                ax.imshow(images[picks[name][c]])
                ax.set_title(picks[name][c][-7:], fontsize=6)
        axes[r, 0].text(-0.1, 0.5, name, transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=9)
    fig.suptitle("Processed examples (what the models see)", fontsize=9)
    return _save(fig, out, "examples.png")


def plot_duplicates(ds: Dataset, meta: pd.DataFrame, out: Path, groups: int = 6) -> str | None:
    if "duplicate_group_size" not in meta or not (meta["duplicate_group_size"] > 1).any():
        return None
    plt = plots.pyplot()
    dup = meta[meta["duplicate_group_size"] > 1]
    top = dup.drop_duplicates("duplicate_group").sort_values(["duplicate_group_size", "duplicate_group"],
                                                             ascending=[False, True]).head(groups)
    members = {g: dup.loc[dup["duplicate_group"] == g, "image_name"].tolist()[:4] for g in top["duplicate_group"]}
    images = _images(ds, [x for v in members.values() for x in v])
    fig, axes = plt.subplots(len(members), 4, figsize=(5.5, 1.4 * len(members)), squeeze=False)
    for r, (_g, names) in enumerate(members.items()):
        for c in range(4):
            ax = axes[r, c]
            ax.axis("off")
            if c < len(names):
                ax.imshow(images[names[c]])
                ax.set_title(names[c], fontsize=6)
    fig.suptitle(f"Near-duplicate groups ({dup['duplicate_group'].nunique()} groups, {len(dup)} images)", fontsize=9)
    return _save(fig, out, "duplicates.png")


def _images(ds: Dataset, names: list[str]) -> dict[str, np.ndarray]:
    wanted = set(names)
    found: dict[str, np.ndarray] = {}
    if not wanted:
        return found
    for url in ds.files("parquet"):
        fs, path = fsutil.resolve(url)
        with fs.open(path, "rb") as fh:
            table = pq.read_table(fh, columns=["image_name", "image"],
                                  filters=[("image_name", "in", sorted(wanted))])
        for name, data in zip(table.column("image_name").to_pylist(), table.column("image").to_pylist(), strict=True):
            found[name] = decode_jpeg(data, 96)
        if len(found) == len(wanted):
            break
    return found


def write_report(ds: Dataset, out: str | Path) -> Path:
    """Write ``index.html`` and its PNG plots into ``out``; returns the HTML path."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = ds.metadata()
    doc = ds.manifest
    _POSITIVE.set(doc.target_definition)
    plots = [
        ("Class balance", plot_class_balance(meta, out)),
        ("Original sizes", plot_sizes(meta, out)),
        ("Anatomic site", plot_sites(meta, out)),
        ("Sex and age", plot_sex_age(meta, out)),
        ("Images per patient", plot_patients(meta, out)),
        ("Files and folds", plot_folds(ds, out)),
        ("Measurements from preprocessing", plot_measurements(meta, out, doc.config)),
        ("Artefacts per class", plot_artefacts(meta, out)),
        ("Examples", plot_examples(ds, meta, out)),
        ("Near-duplicates", plot_duplicates(ds, meta, out)),
        ("Concept scores (MONET) against our detectors", plot_concepts(meta, out)),
        ("Skin tone (each scale on its own)", plot_skin_tone(meta, out)),
    ]
    c = doc.counts
    facts: list[tuple[str, Any]] = [
        ("dataset", f"{doc.name} @ {doc.fingerprint}"),
        ("created", doc.created_at),
        ("inputs / written / quarantined", f"{c.inputs} / {c.written} / {c.quarantined}"),
        ("quarantine reasons", ", ".join(f"{k}: {v}" for k, v in doc.quarantine_reasons.items()) or "—"),
        ("splits", ", ".join(f"{k}: {v}" for k, v in doc.splits.items())),
        ("image size", f"{ds.image_size} px"),
        ("folds", ds.n_folds),
        *folds.duplicate_rows(doc.duplicates),
        *licence_rows(doc, meta),
        *concept_rows(concept_checks(meta)),
        ("target", doc.target_meaning),
        ("positive rate (labelled)", f"{meta['target'].dropna().astype(float).mean():.2%}"
         if meta["target"].notna().any() else "—"),
        ("input columns", ", ".join(f"{d.name} ({d.dtype}, {d.models})" for d in doc.extra_columns) or "—"),
        *(("warning", w) for w in doc.warnings),
    ]
    rows = "\n".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts)
    sections = "\n".join(f'<h2>{html.escape(t)}</h2>\n<img src="{p}" alt="{html.escape(t)}">' for t, p in plots if p)
    confusion = skin_tone_confusion(meta)
    if confusion is not None:
        sections += "\n<h2>Skin tone: the dataset's class against our ITA band</h2>\n" + _html_table(
            confusion, "images per skin_tone_class (rows, MILK10k's scale) and ita_band (columns, light to dark)")
    page = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>EDA — {html.escape(doc.name)} {doc.fingerprint}</title>
<style>body{{font-family:sans-serif;max-width:1400px;margin:2em auto;}} img{{max-width:100%;}}
table{{border-collapse:collapse}} th,td{{border:1px solid #ccc;padding:3px 8px;text-align:left}}</style></head>
<body><h1>Dataset report: {html.escape(doc.name)}</h1>
<p>Version <code>{html.escape(ds.url)}</code>, report written {_dt.datetime.now(_dt.UTC):%Y-%m-%d %H:%M} UTC.</p>
<table>{rows}</table>
{sections}
</body></html>
"""
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
