"""Near-duplicate groups (pHash) and triple-stratified file/fold assignment of a dataset version.

Both run once per version on the client, on the metadata columns of the staged rows (no pixels):

* :func:`duplicate_groups` links images whose perceptual hashes differ in at most
  ``duplicate_distance`` × bits (plus identical file content), within and across sources.
* :func:`assign_files` puts *groups* of images (a patient, else a lesion, else one image; joined with
  their near-duplicates) into files so that no group spans two files and every file gets about the
  same melanoma count, image count and images-per-patient mix — the 2020 community's "triple
  stratified" recipe (15 train files, ~2,200 images and 38–40 melanomas each). Fold ``k`` is the set
  of train files whose index ``i`` has ``i % n_folds == k`` (an official validation set is the last fold, alone).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from pydantic import Field

from melanoma_data import hamming
from melanoma_data.ops.base import Bool, Int, OpParams, Real


class ShardParams(OpParams):
    """How the processed rows are grouped into files and folds (config section ``[shards]``)."""

    n_folds: Int = Field(5, ge=2, le=100, description="folds for cross-validation (train split)")
    train_files: Int = Field(15, ge=1, le=10_000,
                             description="TFRecord/Parquet files of the train split (capped by the number of groups)")
    test_files: Int = Field(16, ge=1, le=10_000, description="files of the test split")
    seed: Int = Field(42, ge=0, description="seed of the assignment (ties and group order)")
    duplicate_distance: Real = Field(0.22, ge=0.0, le=0.45, description=(
        "largest pHash Hamming distance, as a fraction of the hash bits, at which two images count as "
        "near-duplicates (0 = identical hashes only)"))
    drop_duplicates: Bool = Field(False, description=(
        "keep one image per near-duplicate group (a labelled one, then the largest original, then the first "
        "name); the others go to quarantine as near_duplicate"))
    tfrecord: Bool = Field(True, description="also write TFRecord files")


# ------------------------------------------------------------------------------ union-find


class _Union:
    def __init__(self, n: int) -> None:
        self.parent = np.arange(n)

    def find(self, i: int) -> int:
        p = self.parent
        root = i
        while p[root] != root:
            root = p[root]
        while p[i] != root:
            p[i], i = root, p[i]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def join(self, keys: np.ndarray) -> None:
        """Union every set of rows that share a key (missing keys join nothing).

        Only repeated keys are grouped: grouping 400k unique keys (file hashes, image ids) would cost
        ~100 MB and seconds for nothing.
        """
        keys = pd.Series(keys)
        rows = np.nonzero((keys.duplicated(keep=False) & keys.notna()).to_numpy())[0]
        for ids in pd.Series(rows).groupby(keys.to_numpy()[rows]).agg(list):
            for k in ids[1:]:
                self.union(int(ids[0]), int(k))

    def labels(self) -> np.ndarray:
        """Root of every row (pointer jumping over the whole array; no per-row Python loop)."""
        p = self.parent
        while True:
            q = p[p]
            if np.array_equal(q, p):
                return p.copy()
            p = q
            self.parent = p


def max_bits(params: ShardParams, example_hash: str) -> int:
    """The largest Hamming distance (bits) that links two hashes like ``example_hash`` (hex)."""
    return int(np.floor(params.duplicate_distance * len(example_hash) * 4 + 1e-9))


def duplicate_groups(meta: pd.DataFrame, params: ShardParams) -> pd.DataFrame:
    """Near-duplicate groups of the rows of ``meta``.

    Args:
        meta: one row per image with ``image_name, phash, file_sha256, split, target, orig_width,
            orig_height``.
        params: shard parameters (``duplicate_distance``).

    Returns:
        A frame aligned with ``meta`` holding ``duplicate_group`` (the representative's image name,
        the image's own name when it has no near-duplicate), ``duplicate_group_size``,
        ``duplicate_keep`` (the representative) and ``duplicate_distance`` (bits to the closest member,
        0 for singletons).
    """
    n = len(meta)
    out = pd.DataFrame(index=meta.index)
    if n == 0:
        for col, dtype in (("duplicate_group", "str"), ("duplicate_group_size", "int32"),
                           ("duplicate_keep", "bool"), ("duplicate_distance", "int32")):
            out[col] = pd.Series(dtype=dtype)
        return out
    names = meta["image_name"].astype(str).to_numpy()
    uf = _Union(n)
    best = np.full(n, np.iinfo(np.int32).max, dtype=np.int64)
    hashes = meta["phash"].to_numpy(dtype=object)
    have = np.array([isinstance(h, str) and bool(h) for h in hashes], dtype=bool)
    if have.any():
        idx = np.nonzero(have)[0]
        labels, closest = hamming.link(hamming.words(hashes[idx]), max_bits(params, hashes[idx[0]]))
        uf.parent[idx] = idx[labels]  # each hashed row points at its group's first row
        linked = closest >= 0
        best[idx[linked]] = closest[linked]
    same_file = meta["file_sha256"]
    uf.join(same_file.to_numpy())
    best[(same_file.duplicated(keep=False) & same_file.notna()).to_numpy()] = 0  # identical content: distance 0
    labels = uf.labels()
    # representative: labelled first, then the largest original, then the smallest name
    labelled = (meta["split"].astype(str).to_numpy() == "train")
    pixels = meta["orig_width"].to_numpy(dtype=np.int64) * meta["orig_height"].to_numpy(dtype=np.int64)
    order = np.lexsort((names, -pixels, ~labelled))
    rep: dict[int, int] = {}
    for i in order:
        rep.setdefault(int(labels[i]), int(i))
    sizes = pd.Series(labels).map(pd.Series(labels).value_counts()).to_numpy()
    closest = np.where(best == np.iinfo(np.int32).max, 0, best)
    out["duplicate_group"] = [names[rep[int(lab)]] for lab in labels]
    out["duplicate_group_size"] = sizes.astype("int32")
    out["duplicate_keep"] = [rep[int(lab)] == i for i, lab in enumerate(labels)]
    out["duplicate_distance"] = closest.astype("int32")
    return out


# ------------------------------------------------------------------------------ files and folds


def patient_keys(meta: pd.DataFrame) -> pd.Series:
    """Each row's patient: ``patient_id``, else the image itself (``image_name``, else the row's index)."""
    alone = meta["image_name"] if "image_name" in meta else pd.Series(meta.index.astype(str), index=meta.index)
    if "patient_id" not in meta:
        return alone.astype(object)
    return meta["patient_id"].astype(object).where(meta["patient_id"].notna(), alone)


def _group_keys(meta: pd.DataFrame) -> pd.Series:
    """Patient id, else lesion id, else the image itself."""
    def values(col: str) -> list[str | None]:
        if col not in meta:
            return [None] * len(meta)
        return [None if (v is None or (not isinstance(v, str) and pd.isna(v)) or v == "") else str(v)
                for v in meta[col].tolist()]

    keys = ["p:" + p if p is not None else ("l:" + le if le is not None else "i:" + str(n))
            for p, le, n in zip(values("patient_id"), values("lesion_id"), meta["image_name"], strict=True)]
    return pd.Series(keys, index=meta.index)


#: A near-duplicate group spanning more patients than this does not join them in the fold assignment:
#: true copies of one lesion come in twos and threes, while similar-looking small tiles can chain
#: hundreds of images of many patients into one group, which would put whole patients in one file.
MAX_LINKED_PATIENTS = 3


def linked_groups(meta: pd.DataFrame, duplicate_group: pd.Series | None = None,
                  cap: int | None = None) -> tuple[np.ndarray, int]:
    """Group label per row: rows of one patient/lesion (and every row of a lesion, whatever its patient id),
    joined with their near-duplicates.

    Near-duplicate groups that span more than :data:`MAX_LINKED_PATIENTS` patients are not used to
    join patients, and a near-duplicate group whose join would make a linked group larger than
    ``cap`` images (a file's share) is not used either: at archive scale many small cross-patient
    links chain most patients into one group, which would put them all in one file. Groups are
    considered in name order (deterministic).

    Returns:
        ``(labels, skipped)``: the labels, and how many near-duplicate groups joining several
        linked groups were left unjoined by either rule.
    """
    uf = _Union(len(meta))
    uf.join(_group_keys(meta).to_numpy())
    if "lesion_id" in meta:  # a lesion's images share a group even where their patient ids differ or are missing
        lesion = meta["lesion_id"].astype(object)
        uf.join(lesion.where(lesion.notna() & (lesion.astype(str) != ""), None).to_numpy())
    skipped = 0
    if duplicate_group is not None and len(meta):
        dg = pd.Series(duplicate_group.to_numpy(dtype=object))
        counts = dg.value_counts()
        multi = np.nonzero(dg.isin(counts.index[counts > 1]).to_numpy())[0]  # rows of groups of two or more
        patients = patient_keys(meta)
        groups = dg.iloc[multi].to_numpy()
        members = pd.Series(multi).groupby(groups, sort=True).agg(list)
        span = pd.Series(patients.to_numpy()[multi]).groupby(groups).nunique()
        labels = uf.labels()
        size = np.bincount(labels, minlength=len(meta))
        for group, rows in members.items():
            roots = {uf.find(int(r)) for r in rows}
            if len(roots) < 2:
                continue
            total = sum(int(size[r]) for r in roots)
            if span[group] > MAX_LINKED_PATIENTS or (cap is not None and total > cap):
                skipped += 1
                continue
            first, *rest = sorted(roots)
            for r in rest:
                uf.union(first, r)
            size[uf.find(first)] = total
    return uf.labels(), skipped


def _balance(groups: np.ndarray, positives: np.ndarray, n_bins: int, seed: int) -> np.ndarray:
    """Greedy assignment of groups to bins: positives first (fewest positives wins), then by size.

    Largest groups go first to the bin with the fewest (positives, images, groups), ties broken by a
    seeded random order, so every bin gets the same mix of large and small patients.
    """
    uniq, inverse = np.unique(groups, return_inverse=True)
    size = np.bincount(inverse)
    pos = np.bincount(inverse, weights=positives).astype(int)
    rng = np.random.default_rng(seed)
    shuffle = rng.permutation(len(uniq))
    order = np.lexsort((shuffle, -size, -pos))  # most positives, then largest, then random
    load_pos = np.zeros(n_bins, dtype=int)
    load_img = np.zeros(n_bins, dtype=int)
    load_grp = np.zeros(n_bins, dtype=int)
    tie = rng.permutation(n_bins)
    group_bin = np.empty(len(uniq), dtype=int)
    for g in order:
        if pos[g]:
            key = np.lexsort((tie, load_grp, load_img, load_pos + pos[g]))
        else:
            key = np.lexsort((tie, load_grp, load_img))
        b = int(key[0])
        group_bin[g] = b
        load_pos[b] += pos[g]
        load_img[b] += size[g]
        load_grp[b] += 1
    return group_bin[inverse]


#: The ``split_official`` value whose rows form one fixed cross-validation fold (Derm7pt's validation set).
OFFICIAL_VALID = "valid"


def _fixed_fold_bins(groups: np.ndarray, valid: np.ndarray, target: np.ndarray, n_files: int, n_folds: int,
                     seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(train file, fold)`` of each row when the official validation set must be one fold, else None.

    ``valid`` marks the rows whose ``split_official`` is ``valid``; a linked group (lesion, patient, with its
    near-duplicates) holding any such row counts as validation as a whole, so no group is split. The validation
    groups alone make the **last** fold (``n - 1`` of the ``n`` folds), in the last files; every other group is
    balanced over the first files, file ``i`` in fold ``i % (n - 1)``, each of those folds with as many files. The
    files are shared out about in proportion to the rows (an official validation set is rarely a fold's share:
    Derm7pt's is a third of its train and validation cases), so files keep about the same size. None (the ordinary
    assignment) when no row or every row is official validation, or when fewer than two folds can be made.
    """
    if not valid.any():
        return None
    _, inverse = np.unique(groups, return_inverse=True)
    in_valid = np.bincount(inverse, weights=valid.astype(float)) > 0
    n_valid, n_other = int(in_valid.sum()), int((~in_valid).sum())
    folds_made = min(n_folds, n_files, n_other + 1)
    if n_valid == 0 or n_other == 0 or folds_made < 2:
        return None
    rows_valid = in_valid[inverse]
    step = folds_made - 1  # the other folds get the same number of files each, the validation fold the rest
    wanted_valid = max(1, int(round(n_files * float(rows_valid.mean()))))
    other_files = min(n_other, max(step, (n_files - wanted_valid) // step * step))
    valid_files = min(n_valid, n_files - other_files)
    bins = np.empty(len(groups), dtype=np.int64)
    fold = np.empty(len(groups), dtype=np.int64)
    bins[~rows_valid] = _balance(groups[~rows_valid], target[~rows_valid], other_files, seed)
    fold[~rows_valid] = bins[~rows_valid] % (folds_made - 1)
    bins[rows_valid] = other_files + _balance(groups[rows_valid], target[rows_valid], valid_files, seed)
    fold[rows_valid] = folds_made - 1
    return bins, fold


def assign_files(meta: pd.DataFrame, params: ShardParams, duplicate_group: pd.Series | None = None) -> pd.DataFrame:
    """File and fold of every row.

    A dataset's official validation set stays one fold: train rows whose ``split_official`` is ``valid``
    (Derm7pt's ``valid_indexes.csv``), with every row linked to them (same lesion or patient, near-duplicates),
    make up the **last** fold on their own (in the last train files), and the other train rows are balanced over
    the other folds (:func:`_fixed_fold_bins`). Rows without ``split_official`` (or a frame without the column) are
    assigned exactly as before.

    Args:
        meta: rows with ``image_name, patient_id, lesion_id (optional), split, target, split_official
            (optional)``.
        params: shard parameters.
        duplicate_group: near-duplicate group per row (aligned with ``meta``), kept in one file.

    Returns:
        A frame aligned with ``meta`` with ``file`` (e.g. ``train03``), ``file_index``, ``fold``
        (train rows; null for test) and ``patient_image_count`` (images of the row's patient, 1 when
        the row has no patient id).
    """
    n = len(meta)
    file_index = np.full(n, -1, dtype=np.int32)
    file_name = np.full(n, None, dtype=object)
    fold = np.full(n, -1, dtype=np.int64)
    labels = np.zeros(n, dtype=np.int64)
    split = meta["split"].astype(str).to_numpy()
    official = meta["split_official"].isin([OFFICIAL_VALID]).to_numpy(dtype=bool) if "split_official" in meta \
        else np.zeros(n, dtype=bool)
    skipped = 0
    for name, wanted in (("train", params.train_files), ("test", params.test_files)):
        rows = np.nonzero(split == name)[0]
        if not len(rows):
            continue
        sub = meta[[c for c in ("image_name", "patient_id", "lesion_id") if c in meta]].iloc[rows]
        sub = sub.reset_index(drop=True)
        dup = duplicate_group.iloc[rows].reset_index(drop=True) if duplicate_group is not None else None
        found, lost = linked_groups(sub, dup, cap=-(-len(rows) // wanted))
        labels[rows] = found
        skipped += lost
        n_groups = len(np.unique(labels[rows]))
        n_files = min(wanted, n_groups)
        if name == "train":
            target = meta["target"].iloc[rows].fillna(0).to_numpy(dtype=int)
        else:
            target = np.zeros(len(rows), dtype=int)
        fixed = (_fixed_fold_bins(labels[rows], official[rows], target, n_files, params.n_folds, params.seed)
                 if name == "train" else None)
        bins = _balance(labels[rows], target, n_files, params.seed) if fixed is None else fixed[0]
        file_index[rows] = bins
        file_name[rows] = [f"{name}{b:02d}" for b in bins]
        if name == "train":
            fold[rows] = bins % min(params.n_folds, n_files) if fixed is None else fixed[1]
    out = pd.DataFrame(index=meta.index)
    out["file"] = pd.Series(file_name, index=meta.index, dtype="str")
    out["file_index"] = file_index
    out["fold"] = pd.array(np.where(fold >= 0, fold, 0), dtype="Int8")
    out.loc[fold < 0, "fold"] = pd.NA
    patient = meta["patient_id"]
    counts = patient.map(patient.value_counts())
    out["patient_image_count"] = counts.fillna(1).astype("int32")
    out.attrs["duplicate_links_not_kept"] = skipped
    return out


def fold_summary(meta: pd.DataFrame, plan: pd.DataFrame) -> dict[str, Any]:
    """Per file and per fold: images, melanomas, patients (for the manifest and the report)."""
    frame = meta[["target", "split", "patient_id"]].assign(file=plan["file"], fold=plan["fold"])
    files = {}
    for key, g in frame.groupby("file", sort=True):
        files[str(key)] = {
            "images": len(g),
            "melanoma": int(g["target"].fillna(0).astype(int).sum()) if (g["split"] == "train").all() else None,
            "patients": int(g["patient_id"].nunique()),
            "fold": None if pd.isna(g["fold"].iloc[0]) else int(g["fold"].iloc[0]),
        }
    train = frame[frame["split"] == "train"]
    folds = {}
    for k, g in train.groupby("fold", sort=True):
        folds[str(int(k))] = {
            "images": len(g),
            "melanoma": int(g["target"].fillna(0).astype(int).sum()),
            "patients": int(g["patient_id"].nunique()),
        }
    return {"n_folds": len(folds), "files": files, "folds": folds}


# ------------------------------------------------------------------------------ duplicate report


def duplicate_report(meta: pd.DataFrame, dups: pd.DataFrame, known: list[tuple[str, str]] | None = None,
                     known_source: str | None = None) -> dict[str, Any]:
    """What near-duplicate grouping found, for the manifest, ``datasets show`` and the EDA report.

    Args:
        meta: rows with ``image_name, patient_id, source``.
        dups: :func:`duplicate_groups` of ``meta``.
        known: pairs of image names an input lists as duplicates (the 2020 release's
            ``ISIC_2020_Training_Duplicates.csv``), compared with what the hash found.
        known_source: the source that shipped ``known`` (pairs the hash links within it and the
            list lacks are ``extra``).

    Returns:
        ``groups``, ``images_in_groups``, the largest group (size, patients, sources),
        ``multi_patient_groups`` (groups spanning several patients: a tile set can link in bulk),
        ``by_source_pair`` (groups joining two sources, or several images of one source) and, when
        ``known`` is given, ``known`` = found / missed / absent / extra pair counts. (Image names found in several
        inputs never reach the hash: the build adds the ingest step's ``cross_source`` report beside these.)
    """
    out: dict[str, Any] = {"groups": 0, "images_in_groups": 0, "largest": None, "multi_patient_groups": 0,
                           "by_source_pair": {}}
    if not len(meta):
        return out
    frame = pd.DataFrame({"group": dups["duplicate_group"].to_numpy(), "source": meta["source"].astype(str).to_numpy(),
                          "patient": meta["patient_id"].astype(object).to_numpy(),
                          "name": meta["image_name"].astype(str).to_numpy()})
    multi = frame[dups["duplicate_group_size"].to_numpy() > 1]
    out["groups"] = int(multi["group"].nunique())
    out["images_in_groups"] = len(multi)
    if len(multi):
        per = multi.groupby("group").agg(size=("name", "size"), patients=("patient", "nunique"),
                                         sources=("source", lambda s: sorted(set(s))))
        top = per.sort_values(["size", "patients"], ascending=False).iloc[0]
        out["largest"] = {"group": str(per.index[per.index.get_loc(top.name)]), "size": int(top["size"]),
                          "patients": int(top["patients"]), "sources": list(top["sources"])}
        out["multi_patient_groups"] = int((per["patients"] > 1).sum())
        pairs: dict[str, int] = {}
        for _, g in multi.groupby("group"):
            counts = g["source"].value_counts()
            srcs = sorted(counts.index)
            for a_i, a in enumerate(srcs):
                for b in srcs[a_i:]:
                    if a == b and counts[a] < 2:
                        continue
                    key = f"{a} ~ {b}"
                    pairs[key] = pairs.get(key, 0) + 1
        out["by_source_pair"] = dict(sorted(pairs.items()))
    if known is not None:
        group_of = dict(zip(frame["name"], frame["group"], strict=True))
        found = missed = absent = 0
        listed = set()
        for a, b in known:
            if a not in group_of or b not in group_of:
                absent += 1
                continue
            listed.add(frozenset((a, b)))
            if group_of[a] == group_of[b]:
                found += 1
            else:
                missed += 1
        inside = multi[multi["source"] == known_source] if known_source else multi
        linked = int(sum(k * (k - 1) // 2 for k in inside.groupby("group").size()))
        out["known"] = {"listed": len(known), "found": found, "missed": missed, "absent": absent,
                        "extra": max(0, linked - found)}
    return out


def duplicate_rows(dup: dict[str, Any]) -> list[tuple[str, str]]:
    """The near-duplicate summary as (label, text) rows, for ``datasets show`` and the EDA report."""
    plain = ", ".join(f"{k}: {v}" for k, v in dup.items() if not isinstance(v, dict | list) and v is not None)
    rows = [("near-duplicates", plain)]
    largest = dup.get("largest")
    if largest:
        rows.append(("largest group", f"{largest['size']} images, {largest['patients']} patients, "
                                      f"sources {', '.join(largest['sources'])} ({largest['group']})"))
    if dup.get("by_source_pair"):
        rows.append(("duplicates by source", ", ".join(f"{k}: {v}" for k, v in dup["by_source_pair"].items())))
    known = dup.get("known")
    if known:
        rows.append(("listed duplicates", f"{known['listed']} pairs listed: found {known['found']}, missed "
                                          f"{known['missed']}, absent {known['absent']}; extra {known['extra']}"))
    cross = dup.get("cross_source")
    if cross and cross.get("images"):
        kept = ", ".join(f"{k}: {v}" for k, v in cross.get("by_source", {}).items())
        rows.append(("cross-source duplicates", f"{cross['images']} image names in several inputs, one copy kept by "
                                                f"source priority (kept > not kept: {kept}); labels agree "
                                                f"{cross.get('labels_agree', 0)}, disagree "
                                                f"{cross.get('labels_disagree', 0)}"))
        for d in cross.get("disagree", [])[:10]:
            rows.append(("labels disagree", f"{d['image_name']}: {d['kept']} (kept) target {d['target_kept']}, "
                                            f"{d['diagnosis_kept']}; {d['dropped']} target {d['target_dropped']}, "
                                            f"{d['diagnosis_dropped']}"))
    return rows
