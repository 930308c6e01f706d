"""Re-check a dataset version: manifest, checksums, schemas, counts and name uniqueness."""

from __future__ import annotations

import hashlib
import io

import pandera.pandas as pa
import pyarrow.parquet as pq

from melanoma_data import columns, fsutil, manifest, schemas, shards, tfrecord
from melanoma_data.errors import ValidationFailed
from melanoma_data.manifest import FileEntry, Manifest


def _listed_file(fs, vdir: str, entry: FileEntry, listed: set[str], problems: list[str]) -> str | None:
    """Path of a file the manifest lists, when it is inside the version and exists."""
    try:
        path = fsutil.within(vdir, entry.path, "manifest entry path")
    except fsutil.UnsafePath as exc:
        problems.append(f"{exc}; not read")
        return None
    listed.add(path)
    if not fs.exists(path):
        problems.append(f"{entry.path}: missing")
        return None
    return path


def _check_digest(entry: FileEntry, digest: str, problems: list[str]) -> None:
    if digest != entry.sha256:
        problems.append(f"{entry.path}: sha256 differs from the manifest (file changed or corrupt)")


def _check_shard(fs, path: str, entry: FileEntry, schema: pa.DataFrameSchema, extras: columns.Extras,
                 names: list[str], problems: list[str]) -> int:
    """Validate one Parquet shard row group by row group; returns its row count."""
    rows = 0
    try:
        with fs.open(path, "rb") as fh:
            pf = pq.ParquetFile(fh)
            for g in range(pf.num_row_groups):
                # the readers' dtypes (Arrow gives bool for a nullable boolean without nulls, etc.)
                frame = shards.rows_to_frame(pf.read_row_group(g).to_pandas(), final=True, extras=extras)
                frame.index = range(rows, rows + len(frame))
                rows += len(frame)
                names.extend(frame["image_name"].tolist())
                try:
                    schema.validate(frame, lazy=True)
                except pa.errors.SchemaErrors as exc:
                    for _, f in exc.failure_cases.head(20).iterrows():
                        problems.append(f"{entry.path}: {f['column']}={f['failure_case']!r} fails {f['check']}")
    except Exception as exc:
        problems.append(f"{entry.path}: unreadable Parquet: {exc}")
        return rows
    if rows != entry.rows:
        problems.append(f"{entry.path}: {rows} rows, manifest says {entry.rows}")
    return rows


def leftovers(fs, vdir: str) -> list[str]:
    """What interrupted or concurrent runs left in a version: ``_parts/``, temporary files, a lock file."""
    out = []
    if fs.exists(fsutil.join(vdir, shards.PARTS_DIR)):
        out.append(f"{shards.PARTS_DIR}/: leftovers of an interrupted run (run the same preprocess command again: "
                   "it removes them)")
    for p in fs.find(vdir):
        if fsutil.TMP_MARK in p.rsplit("/", 1)[-1] and f"/{shards.PARTS_DIR}/" not in p:
            out.append(f"{p.removeprefix(vdir + '/')}: temporary file of an interrupted write")
    lock = fsutil.join(vdir, fsutil.LOCK_FILE)
    owner, age = fsutil.lock_owner(fs, lock)
    if owner is not None:
        who = f"pid {owner.get('pid', '?')} on {owner.get('host', '?')}"
        out.append(f"{fsutil.LOCK_FILE}: left by a run that is gone ({who}; run the same preprocess command again)"
                   if fsutil.lock_is_stale(owner, age) else
                   f"{fsutil.LOCK_FILE}: a run ({who}) is writing this version now")
    return out


def validate_version(url: str) -> Manifest:
    """Validate the dataset version at ``url``.

    Checks that the manifest exists and names this directory's fingerprint; every shard exists with
    the recorded sha256 and row count and passes the shard schema; every TFRecord file has its
    checksum, intact record CRCs and the recorded count; the quarantine table passes its
    schema and checksum; inputs = written + quarantined; image names are unique across shards and
    never both written and quarantined; no stray Parquet files lie beside the listed ones; no
    ``_parts/``, temporary file or lock file of an interrupted or running run is left; and the
    embeddings beside it (:func:`melanoma_data.embeddings.validate_embeddings`) pass their checks.

    Returns:
        The manifest, when everything passes.

    Raises:
        ValidationFailed: with every problem found listed in ``problems``.
    """
    fs, vdir = fsutil.resolve(url)
    fsutil.forget_listings(fs)
    if not fs.isdir(vdir):
        raise ValidationFailed(f"{url}: not a folder", [f"{url} does not exist or is not a folder"])
    doc = manifest.read_manifest(fs, vdir)
    if doc is None:
        raise ValidationFailed(
            f"{url}: no manifest.json (unfinished run? run the same preprocess command again)",
            ["manifest.json missing"],
        )
    problems: list[str] = []
    if doc.fingerprint != vdir.rstrip("/").split("/")[-1]:
        problems.append(f"manifest fingerprint {doc.fingerprint!r} does not match the folder name")
    size = doc.image_size
    extras = doc.extras
    schema = schemas.shard_schema(size, final=True, extras=extras)
    names: list[str] = []
    written = 0
    listed = set()
    for shard in doc.shards:
        path = _listed_file(fs, vdir, shard, listed, problems)
        if path is not None:  # Parquet is read by row group (random access): the checksum is its own pass
            _check_digest(shard, fsutil.sha256_file(fs, path), problems)
            written += _check_shard(fs, path, shard, schema, extras, names, problems)
    for rec in doc.tfrecords:
        path = _listed_file(fs, vdir, rec, listed, problems)
        if path is None:
            continue
        with fs.open(path, "rb") as fh:  # records counted and the checksum taken in one pass
            reader = fsutil.HashingReader(fh)
            try:
                n = sum(1 for _ in tfrecord.iter_stream(reader))
            except tfrecord.CorruptRecord as exc:
                problems.append(f"{rec.path}: {exc}")
                n = rec.rows
            _check_digest(rec, reader.sha256_to_end(), problems)
        if n != rec.rows:
            problems.append(f"{rec.path}: {n} records, manifest says {rec.rows}")
    for sub in (shards.PARQUET_DIR, shards.TFRECORD_DIR):
        folder = fsutil.join(vdir, sub)
        if fs.exists(folder):
            for p in fs.find(folder):
                if p not in listed:
                    problems.append(f"{p.removeprefix(vdir + '/')}: not listed in the manifest")
    qpath = fsutil.join(vdir, shards.QUARANTINE_FILE)
    quarantined = 0
    if not fs.exists(qpath):
        problems.append("quarantine.parquet: missing")
    else:
        data = fs.cat_file(qpath)
        if hashlib.sha256(data).hexdigest() != doc.quarantine.sha256:
            problems.append("quarantine.parquet: sha256 differs from the manifest")
        qframe = pq.read_table(io.BytesIO(data)).to_pandas()
        quarantined = len(qframe)
        try:
            schemas.QUARANTINE_SCHEMA.validate(qframe, lazy=True)
        except pa.errors.SchemaErrors as exc:
            problems.append(f"quarantine.parquet: {exc.failure_cases.shape[0]} schema failures")
        both = set(names) & set(qframe.loc[qframe["stage"].isin(["read", "header", "decode", "worker"]),
                                           "image_name"])
        if both:
            problems.append(f"{len(both)} images are both written and quarantined, e.g. {sorted(both)[:3]}")
    counts = doc.counts
    if counts.written != written:
        problems.append(f"counts.written={counts.written} but the shards hold {written} rows")
    if counts.quarantined != quarantined:
        problems.append(f"counts.quarantined={counts.quarantined} but quarantine.parquet has {quarantined}")
    if counts.inputs != written + quarantined:
        problems.append(f"inputs ({counts.inputs}) != written ({written}) + quarantined ({quarantined})")
    problems.extend(leftovers(fs, vdir))
    dups = len(names) - len(set(names))
    if dups:
        problems.append(f"{dups} duplicate image_name values across shards")
    from melanoma_data.embeddings import validate_embeddings

    problems += validate_embeddings(fsutil.to_url(fs, vdir), set(names))
    if problems:
        raise ValidationFailed(f"{url}: {len(problems)} problem(s)", problems)
    return doc
