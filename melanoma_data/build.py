"""Dask orchestration of a preprocessing run: partition, map, commit, resume, manifest.

The Dask layer only maps :func:`run_partition` (the eager, Dask-free unit) over partitions and
collects the small summaries it returns; pixels never travel back to the client.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import errno
import hashlib
import json
import logging
import posixpath
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import pandas as pd
import pyarrow
import pyarrow.parquet as pq

from melanoma_data import (
    __version__,
    columns,
    folds,
    fsutil,
    ingest,
    layouts,
    manifest,
    pipeline,
    progress,
    shards,
    tfrecord,
)
from melanoma_data.config import PreprocessConfig
from melanoma_data.errors import InputError, OutputError, RunInterrupted
from melanoma_data.ops import op_versions

log = logging.getLogger(__name__)

#: images processed between two progress reports from inside a partition
PROGRESS_CHUNK = 16
#: the Dask event topic a worker posts its partition's progress to
PROGRESS_TOPIC = "melanoma-preprocess-progress"
POISON_DETAIL = "the worker process died repeatedly while processing this image (Dask KilledWorker)"


@dataclasses.dataclass
class BuildResult:
    """What a preprocessing run produced (or found already produced).

    Attributes:
        version_url: the dataset version directory.
        fingerprint: its fingerprint.
        manifest: the manifest written (or read, when ``reused``).
        reused: True when the version already existed and nothing was computed.
        dashboard: the Dask dashboard address, when a cluster was used.
    """

    version_url: str
    fingerprint: str
    manifest: dict[str, Any]
    reused: bool = False
    dashboard: str | None = None


def run_partition(
    index: int,
    records: list[Mapping[str, Any]] | str,
    cfg: PreprocessConfig,
    version_url: str,
    poisoned: Mapping[str, str] | None = None,
    extras: columns.Extras = (),
    report: Callable[[int], None] | bool | None = None,
) -> dict[str, Any]:
    """Process and commit one partition; returns its (small) summary. Runs on a worker or eagerly.

    ``records``: the partition's input records, or the URL of the version's records file to read
    partition ``index`` from (what the Dask tasks get). ``report`` hears the images done every
    :data:`PROGRESS_CHUNK` images but the last chunk (the caller counts the partition when it returns);
    ``True`` on a Dask worker: posted to the ``PROGRESS_TOPIC`` event topic.
    """
    fs, vdir = fsutil.resolve(version_url)
    if isinstance(records, str):
        records = read_records(records, index)
    if report is True:  # a Dask task: tell the client through the scheduler's event log
        from distributed import get_worker

        worker = get_worker()
        report = lambda n: worker.log_event(PROGRESS_TOPIC, {"part": index, "n": n})  # noqa: E731
    rows: list[dict[str, Any]] = []
    quarantine: list[dict[str, str]] = []
    for start in range(0, len(records), PROGRESS_CHUNK):  # same rows as one call: every image is processed alone
        chunk = records[start : start + PROGRESS_CHUNK]
        r, q = pipeline.process_partition(chunk, cfg, poisoned)
        rows.extend(r)
        quarantine.extend(q)
        if callable(report) and start + PROGRESS_CHUNK < len(records):
            report(len(chunk))
    return shards.write_partition(fs, vdir, index, rows, quarantine, cfg.square.size, extras)


def probe_image(record: Mapping[str, Any], cfg: PreprocessConfig) -> bool:
    """Process one image and discard the result: used to find images that kill workers."""
    pipeline.process_partition([record], cfg)
    return True


#: inputs from which a run hands freed memory back to the system between its steps (below, the full garbage
#: collection costs more than it frees: 0.2 s of a 0.5 s one-image run, seconds in a process holding TensorFlow)
RELEASE_FROM = 20_000


def _release_memory(n_inputs: int = RELEASE_FROM) -> None:
    """Hand freed memory back to the system (the ingest step's text columns: ~500 MB at 400k rows).

    Python's and Arrow's allocators keep freed blocks for reuse; the client then looks as large as its
    peak for the rest of a long run. Skipped for runs of fewer than :data:`RELEASE_FROM` inputs.
    """
    if n_inputs < RELEASE_FROM:
        return
    import ctypes
    import gc

    gc.collect()
    pyarrow.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def auto_preset(inputs: list[str], metadata: str | None = None) -> str | None:
    """The preset the inputs' layout wants (its ``preset``: ``tiles`` for the ISIC 2024 layout) when every
    input is in a layout wanting the same one, else None."""
    if metadata:
        return None
    try:
        kinds = {layouts.detect(*fsutil.resolve(i)) for i in inputs}
    except InputError:
        return None  # the run itself reports it
    return layouts.auto_preset(kinds)


def dataset_name(inputs: list[str], name: str | None) -> str:
    """A safe directory name for the dataset (from ``name`` or the first input's folder name)."""
    raw = name or posixpath.basename(fsutil.resolve(inputs[0])[1].rstrip("/")) or "dataset"
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", raw).strip("._") or "dataset"
    if name and safe != name:
        raise InputError(f"--name {name!r} may only use letters, digits, '_', '-' and '.'")
    return safe


def _records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    out = []
    for rec in frame.to_dict(orient="records"):
        out.append({k: (None if (v is None or (not isinstance(v, str) and pd.isna(v))) else v) for k, v in rec.items()})
    return out


RECORDS_FILE = f"{shards.PARTS_DIR}/records.parquet"


class _Partitions:
    """The input records of a run, stored once in the version (``_parts/records.parquet``).

    One Parquet row group per partition: a task gets only its partition number and reads its own
    records there, so neither the client nor the (in-process) scheduler holds record dicts, and the
    client drops the records frame once it is written (400k inputs with 50 metadata columns are
    gigabytes as dicts and hundreds of MB as a frame).
    """

    def __init__(self, fs, version_dir: str, frame: pd.DataFrame, size: int) -> None:
        self.n = len(frame)
        self.size = size
        self.url = fsutil.to_url(fs, fsutil.join(version_dir, RECORDS_FILE))
        path = fsutil.join(version_dir, RECORDS_FILE)
        recorded = self._recorded(fs, path)
        if recorded is not None:  # resuming: partitions are found by index, so keep the layout they were cut by
            self.size = recorded
        else:
            schema = pyarrow.Schema.from_pandas(frame, preserve_index=False)
            with fsutil.atomic_open(fs, path) as out, pq.ParquetWriter(out, schema, compression="zstd") as writer:
                for start in range(0, self.n, size):
                    piece = frame.iloc[start : start + size]
                    writer.write_table(pyarrow.Table.from_pandas(piece, schema=schema, preserve_index=False),
                                       row_group_size=size)

    def _recorded(self, fs, path: str) -> int | None:
        """The partition size an earlier run of this version cut its records file with (None: no usable file)."""
        data = fsutil.cat_or_none(fs, path)
        if data is None:
            return None
        try:
            meta = pq.ParquetFile(pyarrow.BufferReader(data)).metadata
        except pyarrow.ArrowException:
            fs.rm(path)  # unreadable: cut again (no partition can have been committed from it)
            return None
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        if meta.num_rows != self.n or not sizes or any(n != sizes[0] for n in sizes[:-1]) or sizes[-1] > sizes[0]:
            raise OutputError(f"{path}: the records of an earlier run ({meta.num_rows} in row groups {sizes[:5]}...) "
                              f"do not match this run's {self.n} inputs; remove the version's {shards.PARTS_DIR}/ "
                              "folder to start it over")
        return sizes[0]

    def __len__(self) -> int:
        return -(-self.n // self.size)

    def count(self, i: int) -> int:
        return min(self.size, self.n - i * self.size)

    def records(self, i: int) -> list[dict[str, Any]]:
        return read_records(self.url, i)


def read_records(url: str, index: int) -> list[dict[str, Any]]:
    """The input records of partition ``index`` from a version's records file."""
    fs, path = fsutil.resolve(url)
    with fs.open(path, "rb") as fh:
        return _records(pq.ParquetFile(fh).read_row_group(index).to_pandas())


def _check_writable(fs, version_dir: str, out: str) -> None:
    try:
        fs.makedirs(version_dir, exist_ok=True)
        probe = fsutil.join(version_dir, f".write-probe-{uuid.uuid4().hex}")  # its own: runs may start together
        fsutil.atomic_write(fs, probe, b"ok")
        fs.rm(probe)
    except (OSError, ValueError) as exc:
        raise OutputError(f"cannot write to output location {out!r}: {exc}") from None


@contextlib.contextmanager
def _dask_client(workers: int | None, scheduler: str | None, client: Any) -> Iterator[Any]:
    """Yield a distributed Client (given, connected to ``scheduler``, or a new local cluster)."""
    if client is not None:
        yield client
        return
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            c = Client(scheduler, timeout="20s")
        except (OSError, ValueError, TypeError) as exc:  # unreachable, or not an address (distributed's parser)
            raise InputError(f"cannot connect to Dask scheduler {scheduler!r}: {exc}") from None
        try:
            yield c
        finally:
            c.close()
        return
    cluster = LocalCluster(
        n_workers=workers,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
        preload=["melanoma_data.worker_setup"],  # Ctrl-C is the client's: no traceback per worker
    )
    c = Client(cluster)
    try:
        yield c
    finally:
        c.close()
        cluster.close()


def _run_dask(
    client: Any,
    todo: list[int],
    parts: _Partitions,
    cfg: PreprocessConfig,
    version_url: str,
    extras: columns.Extras,
    on_done: Callable[[int], None],
) -> None:
    """Run the partitions in ``todo`` on the cluster, a bounded number in flight at a time.

    Each task gets its partition number and the records file, not the records; at most ``window``
    tasks are in flight, so the scheduler (in this process for a local cluster) holds a few task
    states, not one per partition. Only a partition that killed workers is read here, to probe it.
    """
    from distributed import KilledWorker, as_completed

    workers = max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))
    window = max(4, 3 * workers)
    pending = iter(todo)
    futures: dict[Any, int] = {}

    reported: dict[int, int] = {}
    finished: set[int] = set()
    lock = threading.Lock()

    def heard(event) -> None:  # on the client's event loop thread
        msg = event[1] if isinstance(event, tuple) else event
        with lock:
            i = int(msg["part"])
            n = min(int(msg["n"]), parts.count(i) - reported.get(i, 0))  # a retried task reports again
            if i in finished or n <= 0:
                return
            reported[i] = reported.get(i, 0) + n
        on_done(n)

    def done(i: int) -> None:
        with lock:
            finished.add(i)
            rest = parts.count(i) - reported.pop(i, 0)
        on_done(max(0, rest))

    with contextlib.suppress(Exception):  # progress only: a scheduler without events still runs the tasks
        client.subscribe_topic(PROGRESS_TOPIC, heard)

    def submit_next(queue) -> None:
        i = next(pending, None)
        if i is not None:
            fut = client.submit(run_partition, i, parts.url, cfg, version_url, None, extras, True, pure=False)
            futures[fut] = i
            queue.add(fut)

    try:
        queue = as_completed([])
        for _ in range(window):
            submit_next(queue)
        for fut in queue:
            i = futures.pop(fut)
            try:
                fut.result()
            except KilledWorker:
                recs = parts.records(i)
                log.warning("partition %d killed workers repeatedly; probing its images one by one", i)
                poisoned = {}
                for rec in recs:
                    try:
                        client.submit(probe_image, rec, cfg, pure=False).result()
                    except KilledWorker:
                        poisoned[rec["image_name"]] = POISON_DETAIL
                    except Exception:  # ordinary failures are quarantined by the partition task
                        pass
                try:
                    client.submit(run_partition, i, recs, cfg, version_url, poisoned, extras, pure=False).result()
                except KilledWorker:
                    everything = {rec["image_name"]: POISON_DETAIL + " (could not be isolated)" for rec in recs}
                    client.submit(run_partition, i, recs, cfg, version_url, everything, extras, pure=False).result()
            fut.release()
            done(i)
            submit_next(queue)
    finally:
        with contextlib.suppress(Exception):
            client.unsubscribe_topic(PROGRESS_TOPIC)


def preprocess(
    inputs: list[str] | str,
    out: str,
    cfg: PreprocessConfig | None = None,
    *,
    name: str | None = None,
    metadata: str | None = None,
    encoding: str | None = None,
    workers: int | None = None,
    scheduler: str | None = None,
    client: Any = None,
    progress: bool = False,
    console: Any = None,
    target: str | None = None,
) -> BuildResult:
    """Preprocess inputs into the dataset version ``OUT/<name>/<fingerprint>/``.

    Args:
        inputs: one or more input folders (paths or fsspec URLs).
        out: output root (path or fsspec URL).
        cfg: preprocessing configuration (defaults when None).
        name: dataset name (default: the first input's folder name).
        metadata: metadata CSV overriding layout detection.
        encoding: metadata CSV text encoding.
        workers: local Dask worker processes; 0 (or None without scheduler/client) runs eagerly
            in this process without Dask.
        scheduler: address of an existing Dask scheduler (``tcp://host:port``).
        client: an existing ``distributed.Client`` to use.
        progress: show a rich progress bar.
        console: rich console for messages.
        target: ``melanoma`` or ``malignant`` (see :func:`melanoma_data.ingest.ingest`).

    Returns:
        The build result; ``reused`` when the version already existed.

    Raises:
        InputError: fatal input problems (no images, unreadable metadata, bad scheduler).
        OutputError: the output location cannot be written.
    """
    t0 = time.perf_counter()
    cfg = cfg or PreprocessConfig()
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    if not inputs:
        raise InputError("no INPUT given")
    ds_name = dataset_name(inputs, name)
    found = ingest.ingest(inputs, metadata=metadata, encoding=encoding, target=target)
    t_ingest = time.perf_counter() - t0
    fp = manifest.fingerprint({**cfg.fingerprint_dict(), **({"target": target} if target else {}),
                               **({"name_rule": found.name_rule} if found.name_rule else {})}, op_versions(),
                              found.listing)
    out_fs, out_root = fsutil.resolve(out)
    version_dir = fsutil.join(out_root, ds_name, fp)
    version_url = fsutil.to_url(out_fs, version_dir)
    fsutil.forget_listings(out_fs)

    existing = manifest.read_manifest(out_fs, version_dir) if out_fs.exists(version_dir) else None
    if existing is not None:
        _drop_leftovers(out_fs, version_dir)
        return BuildResult(version_url, fp, existing, reused=True)
    _check_writable(out_fs, version_dir, out)
    lock = _take_lock(out_fs, version_dir, version_url)
    failed = True
    try:
        existing = manifest.read_manifest(out_fs, version_dir)  # finished by another run while we looked
        if existing is not None:
            failed = False
            return BuildResult(version_url, fp, existing, reused=True)
        result = _build(out_fs, version_dir, version_url, ds_name, fp, cfg, inputs, found, workers, scheduler, client,
                        progress, console, t0, t_ingest)
        failed = False
        return result
    except KeyboardInterrupt:
        raise RunInterrupted(f"interrupted: {_kept(out_fs, version_dir, version_url)}") from None
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f": {exc.filename}" if exc.filename else ""
        raise OutputError(f"no space left on the device ({exc.strerror}{where}); "
                          f"{_kept(out_fs, version_dir, version_url, 'after freeing space')}") from None
    finally:
        if failed:
            _after_failure(out_fs, version_dir)
        lock.release()
        if failed:
            with contextlib.suppress(Exception):
                if not out_fs.ls(version_dir, detail=False):
                    out_fs.rm(version_dir, recursive=True)


def _build(out_fs, version_dir: str, version_url: str, ds_name: str, fp: str, cfg: PreprocessConfig,
           inputs: list[str], found: ingest.Ingested, workers: int | None, scheduler: str | None, client: Any,
           progress: bool, console: Any, t0: float, t_ingest: float) -> BuildResult:
    """Process, finalise and write the manifest of a version this run holds the lock of."""
    fsutil.remove_temporaries(out_fs, version_dir)

    parts = _Partitions(out_fs, version_dir, found.records, cfg.partitioning(len(found.records)))
    found.release_records()
    _release_memory(parts.n)
    todo = [i for i in range(len(parts)) if shards.read_summary(out_fs, version_dir, i) is None]
    n_total = parts.n
    n_done = n_total - sum(parts.count(i) for i in todo)
    dashboard = None
    t1 = time.perf_counter()
    t_cluster = 0.0
    use_dask = bool(workers or scheduler or client is not None)
    needs_cluster = bool(todo) or not _finalised(out_fs, version_dir, len(parts))
    with contextlib.ExitStack() as stack:
        c = None
        if use_dask and needs_cluster:
            c = stack.enter_context(_dask_client(workers, scheduler, client))
            t_cluster = time.perf_counter() - t1
            dashboard = getattr(c, "dashboard_link", None)
            if console is not None and dashboard:
                console.print(f"Dask dashboard: {dashboard}", highlight=False)
        with _progress(progress, n_total, n_done, console) as advance:
            if c is not None:
                _run_dask(c, todo, parts, cfg, version_url, found.extras, advance)
            else:
                for i in todo:
                    seen = []

                    def heard(n: int, seen: list[int] = seen) -> None:
                        seen.append(n)
                        advance(n)

                    run_partition(i, parts.url, cfg, version_url, None, found.extras, heard)
                    advance(parts.count(i) - sum(seen))
        fsutil.forget_listings(out_fs)  # workers wrote below the version since it was listed
        t_process = time.perf_counter() - t1 - t_cluster
        t2 = time.perf_counter()
        final = _finalise(out_fs, version_dir, version_url, cfg, len(parts), c, found)
        t_finalise = time.perf_counter() - t2
    result = _finish(out_fs, version_dir, ds_name, fp, cfg, inputs, found, len(parts), final,
                     {"ingest_s": t_ingest, "cluster_start_s": t_cluster, "process_s": t_process,
                      "finalise_s": t_finalise, "resumed_images": n_done, "partitions": len(parts),
                      "partition_size": parts.size}, t0)
    return BuildResult(version_url, fp, result, dashboard=dashboard)


def _take_lock(fs, version_dir: str, version_url: str) -> fsutil.OutputLock:
    """Own the version's lock file, or refuse: another live run is writing this version."""
    try:
        return fsutil.OutputLock(fs, fsutil.join(version_dir, fsutil.LOCK_FILE), "preprocess").acquire()
    except fsutil.LockHeld as held:
        o = held.owner
        since = time.strftime("%H:%M:%S", time.localtime(o["started"])) if o.get("started") else "?"
        raise OutputError(f"{version_url} is being written by another run (pid {o.get('pid', '?')} on "
                          f"{o.get('host', '?')}, since {since}); wait for it to finish, or delete "
                          f"{fsutil.LOCK_FILE} there if that run is gone") from None


def _drop_leftovers(fs, version_dir: str) -> None:
    """A finished version's ``_parts/`` (a run that died between writing the manifest and removing it)."""
    if fsutil.cat_or_none(fs, fsutil.join(version_dir, fsutil.LOCK_FILE)) is not None:
        owner, age = fsutil.lock_owner(fs, fsutil.join(version_dir, fsutil.LOCK_FILE))
        if owner is not None and not fsutil.lock_is_stale(owner, age):
            return  # its owner is removing them now
        with contextlib.suppress(FileNotFoundError):
            fs.rm(fsutil.join(version_dir, fsutil.LOCK_FILE))
    with contextlib.suppress(FileNotFoundError):
        if fs.exists(fsutil.join(version_dir, shards.PARTS_DIR)):
            fs.rm(fsutil.join(version_dir, shards.PARTS_DIR), recursive=True)
    fsutil.remove_temporaries(fs, version_dir)


def _committed(fs, version_dir: str) -> tuple[int, int, int]:
    """(partitions committed, partitions in all, images committed) of an unfinished version."""
    data = fsutil.cat_or_none(fs, fsutil.join(version_dir, RECORDS_FILE))
    if data is None:
        return 0, 0, 0
    meta = pq.ParquetFile(pyarrow.BufferReader(data)).metadata
    done = images = 0
    for i in range(meta.num_row_groups):
        if shards.read_summary(fs, version_dir, i) is not None:
            done += 1
            images += meta.row_group(i).num_rows
    return done, meta.num_row_groups, images


def _kept(fs, version_dir: str, version_url: str, when: str = "") -> str:
    """What an interrupted run kept and how to go on, in one sentence."""
    try:
        fsutil.forget_listings(fs)
        done, total, images = _committed(fs, version_dir)
    except Exception:  # the message must not fail: say less
        return f"nothing is lost; run the same command again {when} to resume".replace("  ", " ")
    again = f"run the same command again{' ' + when if when else ''}"
    if total and done == total:
        return f"all {total} partitions are committed in {version_url}; {again} to finish the files"
    if done:
        return f"kept {done} of {total} partitions ({images} images) in {version_url}; {again} to resume from there"
    return f"nothing was committed yet; {again} to start over"


def _after_failure(fs, version_dir: str) -> None:
    """Remove what a failed run leaves: temporaries, and the version folder when nothing was committed."""
    with contextlib.suppress(Exception):
        fsutil.forget_listings(fs)
        if _committed(fs, version_dir)[0] == 0 and manifest.read_manifest(fs, version_dir) is None:
            for p in fs.ls(version_dir, detail=False):
                if posixpath.basename(p) != fsutil.LOCK_FILE:
                    fs.rm(p, recursive=True)
        else:
            fsutil.remove_temporaries(fs, version_dir)


def _finalised(fs, version_dir: str, n_parts: int) -> bool:
    """True when every file of the version has been gathered (only the manifest is missing)."""
    data = fsutil.cat_or_none(fs, fsutil.join(version_dir, shards.PARTS_DIR, "files.json"))
    if data is None:
        return False
    keys = json.loads(data)
    return all(shards.read_file_summary(fs, version_dir, k) is not None for k in keys)


def scatter_task(index: int, plan: pd.DataFrame, version_url: str, extras: columns.Extras = ()) -> dict[str, Any]:
    """Dask/eager unit of the scatter step."""
    fs, vdir = fsutil.resolve(version_url)
    return shards.scatter_partition(fs, vdir, index, plan, extras)


def gather_task(key: str, sources: list[int], size: int, encodings: dict[str, Any] | None,
                version_url: str, extras: columns.Extras = ()) -> dict[str, Any]:
    """Dask/eager unit of the gather step."""
    fs, vdir = fsutil.resolve(version_url)
    return shards.gather_file(fs, vdir, key, sources, size, encodings, extras)


def _map(client: Any, fn: Callable[..., Any], calls: list[tuple]) -> list[Any]:
    if client is None:
        return [fn(*args) for args in calls]
    futures = [client.submit(fn, *args, pure=False) for args in calls]
    return client.gather(futures)


@dataclasses.dataclass
class _Final:
    files: list[dict[str, Any]]
    quarantine: pd.DataFrame
    encodings: dict[str, Any] | None
    folds: dict[str, Any]
    duplicates: dict[str, Any]
    warnings: list[str] = dataclasses.field(default_factory=list)


def _finalise(fs, version_dir: str, version_url: str, cfg: PreprocessConfig, n_parts: int, client: Any,
              found: ingest.Ingested) -> _Final:
    """Plan near-duplicates, files and folds from the staged rows, then scatter and gather (resumable)."""

    summaries = [shards.read_summary(fs, version_dir, i) for i in range(n_parts)]
    missing = [i for i, s in enumerate(summaries) if s is None]
    if missing:
        raise OutputError(f"partitions {missing} were not committed; run the same command again to finish")
    pieces = []
    for i, s in enumerate(summaries):
        if s["rows"]:
            pieces.append(shards.read_stage_columns(fs, version_dir, i, shards.PLAN_INPUT_COLUMNS).assign(_part=i))
    meta = (pd.concat(pieces, ignore_index=True) if pieces
            else pd.DataFrame(columns=[*shards.PLAN_INPUT_COLUMNS, "_part"]))
    params = cfg.shards
    extras = found.extras
    dups = folds.duplicate_groups(meta, params)
    keep = dups["duplicate_keep"].to_numpy(dtype=bool) if params.drop_duplicates else np.ones(len(meta), dtype=bool)
    kept = meta[keep]
    plan = folds.assign_files(kept, params, dups["duplicate_group"][keep])
    not_kept = int(plan.attrs.get("duplicate_links_not_kept", 0))
    plan = plan.reindex(meta.index)
    plan["duplicate_group"] = dups["duplicate_group"]
    plan["duplicate_group_size"] = dups["duplicate_group_size"]
    plan["keep"] = keep
    plan["file"] = plan["file"].where(keep, "dropped")
    plan.index = meta["image_name"].to_numpy()
    encodings = tfrecord.build_encodings(kept) if params.tfrecord else None

    dropped = meta[~keep]
    qrows = [
        {"image_name": r.image_name, "source": r.source, "path": r.rel_path or "", "stage": "dedup",
         "reason": "near_duplicate",
         "detail": f"near-duplicate of {g} (pHash distance ≤ {d} bits); shards.drop_duplicates is on"}
        for r, g, d in zip(dropped.itertuples(), dups["duplicate_group"][~keep], dups["duplicate_distance"][~keep],
                           strict=True)
    ]
    keys = sorted(k for k in plan["file"].dropna().unique() if k != "dropped")
    _release_memory(len(meta))
    fsutil.atomic_write(fs, fsutil.join(version_dir, shards.PARTS_DIR, "files.json"), json.dumps(keys).encode())

    parts_with_rows = sorted(meta["_part"].unique().tolist())
    by_part = meta.groupby("_part").indices
    todo = [i for i in parts_with_rows if shards.read_scatter(fs, version_dir, i) is None]
    _map(client, scatter_task,
         [(i, plan.iloc[by_part[i]][shards.PLAN_COLUMNS], version_url, extras) for i in todo])
    fsutil.forget_listings(fs)
    sources: dict[str, list[int]] = {k: [] for k in keys}
    for i in parts_with_rows:
        for key in shards.read_scatter(fs, version_dir, i)["files"]:
            sources[key].append(i)
    todo_files = [k for k in keys if shards.read_file_summary(fs, version_dir, k) is None]
    _map(client, gather_task,
         [(k, sources[k], cfg.square.size, encodings, version_url, extras) for k in todo_files])
    fsutil.forget_listings(fs)
    files = [shards.read_file_summary(fs, version_dir, k) for k in keys]
    duplicates = {
        **folds.duplicate_report(meta, dups, found.known_duplicates or None, found.known_source),
        "dropped": int((~keep).sum()),
        "links_not_kept_in_folds": not_kept,
        "max_distance_bits": folds.max_bits(params, meta["phash"].dropna().iloc[0])
        if meta["phash"].notna().any() else None,
        **({"cross_source": found.cross_source} if found.cross_source else {}),
    }
    summary = folds.fold_summary(kept.reset_index(drop=True), plan[keep].reset_index(drop=True))
    return _Final(files, shards.quarantine_frame(qrows), encodings, summary, duplicates,
                  _warnings(duplicates, summary, params))


def _warnings(duplicates: dict[str, Any], summary: dict[str, Any], params: folds.ShardParams) -> list[str]:
    """What a user must hear about the grouping: bulk-linked duplicates, files a group unbalances."""
    out = []
    largest = duplicates.get("largest")
    # groups of a few patients are joined in the fold assignment (nothing to act on: the demo's own generated
    # sample has such pairs); the warning is for bulk linking, a group beyond what the folds join
    if duplicates.get("multi_patient_groups") and largest and largest["patients"] > folds.MAX_LINKED_PATIENTS:
        out.append(f"{duplicates['multi_patient_groups']} near-duplicate group(s) span several patients; the largest "
                   f"has {largest['size']} images of {largest['patients']} patients (group {largest['group']}). "
                   f"Small tiles can link in bulk at duplicate_distance={params.duplicate_distance}: check the "
                   f"group, or lower shards.duplicate_distance. Groups spanning more than "
                   f"{folds.MAX_LINKED_PATIENTS} patients do not join those patients in the fold assignment")
    if duplicates.get("links_not_kept_in_folds"):
        out.append(f"{duplicates['links_not_kept_in_folds']} near-duplicate group(s) join patients that the fold "
                   "assignment keeps apart (the group spans more than "
                   f"{folds.MAX_LINKED_PATIENTS} patients, or keeping it together would make a linked group larger "
                   "than a file): such near-duplicates may sit in different folds")
    sizes = {k: f["images"] for k, f in summary.get("files", {}).items() if k.startswith("train")}
    if sizes and len(sizes) < params.train_files:
        out.append(f"{len(sizes)} train file(s) instead of {params.train_files}: there are only {len(sizes)} groups "
                   "(patients, lesions or images joined by near-duplicates) to spread over the files")
    if len(sizes) > 1:
        median = float(np.median(list(sizes.values())))
        worst = max(sizes, key=sizes.get)
        if sizes[worst] > 1.5 * median + 1:
            out.append(f"file {worst} holds {sizes[worst]} images against a median of {median:.0f}: a group that "
                       "must stay in one file (a patient joined with its near-duplicates) is larger than a file; "
                       "folds are unbalanced")
    for w in out:
        log.warning(w)
    return out


@contextlib.contextmanager
def _progress(show: bool, total: int, done: int, console: Any) -> Iterator[Callable[[int], None]]:
    with progress.Bars(show, console, unit="img") as bars:
        yield bars.add("preprocess", total, done).advance


def _finish(fs, version_dir, ds_name, fp, cfg, inputs, found, n_parts, final: _Final, timings, t0) -> dict:
    qparts = [found.quarantine, final.quarantine] + [shards.read_part_quarantine(fs, version_dir, i)
                                                     for i in range(n_parts)]
    quarantine = shards.quarantine_frame(pd.concat(qparts, ignore_index=True))
    quarantine = quarantine.sort_values(["image_name", "stage", "reason"], kind="stable").reset_index(drop=True)
    qbytes = shards.parquet_bytes(quarantine, shards.quarantine_arrow_schema())
    fsutil.atomic_write(fs, fsutil.join(version_dir, shards.QUARANTINE_FILE), qbytes)
    written = sum(f["rows"] for f in final.files)
    counts = {"inputs": found.n_inputs, "written": written, "quarantined": len(quarantine)}
    if counts["inputs"] != written + len(quarantine):
        raise OutputError(f"accounting error: {counts} (inputs must equal written + quarantined)")
    splits = Counter()
    for f in final.files:
        splits[f["split"]] += f["rows"]
    total_s = time.perf_counter() - t0
    doc = {
        "format": manifest.MANIFEST_FORMAT,
        "name": ds_name,
        "fingerprint": fp,
        "created_at": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "package_version": __version__,
        "config": cfg.to_dict(),
        "ops": op_versions(),
        "inputs": [{"url": u, "layout": lay, "licence": layouts.get(lay).licence}
                   for u, lay in zip(inputs, found.layouts, strict=True)],
        "counts": counts,
        "quarantine_reasons": dict(sorted(Counter(quarantine["reason"]).items())),
        "splits": dict(sorted(splits.items())),
        "shards": [
            {"path": f["parquet"]["path"], "rows": f["rows"], "sha256": f["parquet"]["sha256"],
             "bytes": f["parquet"]["bytes"], "file": f["file"], "split": f["split"], "fold": f["fold"]}
            for f in final.files
        ],
        "tfrecords": [
            {"path": f["tfrecord"]["path"], "rows": f["rows"], "sha256": f["tfrecord"]["sha256"],
             "bytes": f["tfrecord"]["bytes"], "file": f["file"], "split": f["split"], "fold": f["fold"]}
            for f in final.files if f["tfrecord"]
        ],
        "encodings": final.encodings,
        "columns": columns.describe(found.extras),
        "target": found.target,
        "warnings": final.warnings,
        "folds": final.folds,
        "duplicates": final.duplicates,
        "quarantine": {"path": shards.QUARANTINE_FILE, "rows": len(quarantine),
                       "sha256": hashlib.sha256(qbytes).hexdigest()},
        "timings": {**{k: round(v, 3) if isinstance(v, float) else v for k, v in timings.items()},
                    "total_s": round(total_s, 3),
                    "images_per_s": round(written / timings["process_s"], 2) if timings["process_s"] > 0 else None},
    }
    manifest.write_manifest(fs, version_dir, doc)
    with contextlib.suppress(FileNotFoundError):
        fs.rm(fsutil.join(version_dir, shards.PARTS_DIR), recursive=True)
    return manifest.read_manifest(fs, version_dir)  # exactly what a later run will read
