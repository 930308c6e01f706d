"""Frozen image embeddings stored beside a dataset version: layout, fingerprint, descriptor, readers, checks.

One set of embeddings is the pooled features of a backbone for every written image of a version (train
and test), at one input size and test-time augmentation::

    <version>/embeddings/<key>/
        embedding.json          the descriptor (written last: its presence means finished)
        part-00000.parquet      one per Parquet shard of the version: image_name, split, embedding
        quarantine.parquet      images that could not be embedded (stage, reason, detail), maybe empty

``embedding`` is a fixed-size list of float32 (``dim`` values). The key is readable
(``lite0-224px-flip-<fingerprint[:8]>``); the fingerprint covers the version's fingerprint, the backbone,
the sha256 of its weights, the size and the TTA, so two settings never share a folder. Nothing here is
named ``manifest.json`` or ``_parts/``: the dataset catalog would take the folder for a version.

No TensorFlow here: the computation lives in :mod:`melanoma_plugins.keras_image.embed`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import pyarrow
import pyarrow.parquet as pq

from melanoma_data import fsutil, shards
from melanoma_data.errors import InputError

EMBEDDINGS_DIR = "embeddings"
DESCRIPTOR_FILE = "embedding.json"
FORMAT = "melanoma-embeddings/1"
TTA_CHOICES = ("none", "flip")
#: stage name of embedding failures in the quarantine table
STAGE = "embed"


@dataclasses.dataclass(frozen=True)
class EmbeddingSpec:
    """What an embedding is computed with (everything its fingerprint covers besides the version).

    Attributes:
        backbone: backbone name (``lite0`` … ``lite4``, ``B0`` …).
        weights: ``imagenet`` (packaged weights) or ``none`` (seeded random initialisation).
        weights_sha256: sha256 of the weights file (or of the random-init recipe).
        size: input side in pixels (stored images are resized to it).
        tta: ``none`` or ``flip`` (mean of the image's and its mirror image's features).
    """

    backbone: str
    weights: str
    weights_sha256: str
    size: int
    tta: str = "none"

    def __post_init__(self) -> None:
        if self.tta not in TTA_CHOICES:
            raise InputError(f"tta must be one of {', '.join(TTA_CHOICES)}, got {self.tta!r}")
        if not 16 <= int(self.size) <= 1024:
            raise InputError(f"embedding size must be 16..1024 px, got {self.size}")
        if not self.backbone or "/" in self.backbone or self.backbone.startswith("."):
            raise InputError(f"invalid backbone name {self.backbone!r}")

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def fingerprint(version_fingerprint: str, spec: EmbeddingSpec) -> str:
    """16 hex digits over the version's fingerprint, backbone, weights sha256, size and TTA."""
    key = {"version": version_fingerprint, "backbone": spec.backbone, "weights_sha256": spec.weights_sha256,
           "size": int(spec.size), "tta": spec.tta}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def key_of(spec: EmbeddingSpec, fp: str) -> str:
    """The folder name under ``embeddings/``: readable, and unique per fingerprint."""
    return f"{spec.backbone}-{int(spec.size)}px-{spec.tta}-{fp[:8]}"


def part_path(index: int) -> str:
    """Relative path of the part made from the version's ``index``-th Parquet shard."""
    return f"part-{index:05d}.parquet"


def arrow_schema(dim: int) -> pyarrow.Schema:
    """Schema of a part: ``image_name``, ``split`` and ``embedding`` (fixed-size list of ``dim`` float32)."""
    return pyarrow.schema([pyarrow.field("image_name", pyarrow.string(), nullable=False),
                           pyarrow.field("split", pyarrow.string(), nullable=False),
                           pyarrow.field("embedding", pyarrow.list_(pyarrow.float32(), dim), nullable=False)])


def part_bytes(names: list[str], split: str, vectors: np.ndarray, metadata: dict[bytes, bytes] | None = None
               ) -> bytes:
    """A part's Parquet bytes (rows sorted by image name; ``metadata``: the file's key-value metadata)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or len(vectors) != len(names):
        raise ValueError(f"{len(names)} names but embeddings of shape {vectors.shape}")
    order = np.argsort(np.asarray(names, dtype=object), kind="stable")
    dim = vectors.shape[1]
    flat = pyarrow.array(vectors[order].reshape(-1), type=pyarrow.float32())
    table = pyarrow.Table.from_arrays(
        [pyarrow.array([names[i] for i in order], pyarrow.string()), pyarrow.array([split] * len(names)),
         pyarrow.FixedSizeListArray.from_arrays(flat, dim)], schema=arrow_schema(dim))
    if metadata:
        table = table.replace_schema_metadata(metadata)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


def quarantine_bytes(rows: list[dict[str, str]]) -> bytes:
    """The embedding quarantine table's Parquet bytes (the dataset's quarantine columns)."""
    buf = io.BytesIO()
    table = pyarrow.Table.from_pandas(shards.quarantine_frame(rows), schema=shards.quarantine_arrow_schema(),
                                      preserve_index=False)
    pq.write_table(table, buf)
    return buf.getvalue()


# --------------------------------------------------------------------------- reading


def _root(version_url: str) -> tuple[Any, str]:
    fs, vdir = fsutil.resolve(version_url)
    return fs, fsutil.join(vdir, EMBEDDINGS_DIR)


def list_embeddings(version_url: str) -> list[dict[str, Any]]:
    """Every embeddings folder of a version: its descriptor (``status: ok``) or a readable status.

    Unfinished folders (parts but no descriptor: an interrupted ``embed``) and corrupt descriptors are
    listed too, with the reason, instead of failing the listing.
    """
    fs, root = _root(version_url)
    fsutil.forget_listings(fs)
    if not fs.isdir(root):
        return []
    out = []
    for p in sorted(fs.ls(root, detail=False)):
        if not fs.isdir(p):
            continue
        key = p.rstrip("/").rsplit("/", 1)[-1]
        raw = fsutil.cat_or_none(fs, fsutil.join(p, DESCRIPTOR_FILE))
        if raw is None:
            out.append({"key": key, "status": "unfinished (run the same embed command again)"})
            continue
        try:
            doc = json.loads(raw)
            if doc.get("format") != FORMAT or not isinstance(doc.get("parts"), list):
                raise ValueError(f"format {doc.get('format')!r}")
        except (ValueError, UnicodeDecodeError) as exc:
            out.append({"key": key, "status": f"corrupt {DESCRIPTOR_FILE} ({exc})"})
            continue
        out.append({**doc, "key": key, "status": "ok"})
    return out


class Embeddings:
    """A finished set of embeddings of a dataset version (see :func:`open_embeddings`).

    Rows are read as pandas (one column per dimension), numpy (aligned with
    ``Dataset.metadata(split, folds)``) or Dask (the parts, with the list column).
    """

    def __init__(self, dataset: Any, doc: dict[str, Any]) -> None:
        self.dataset = dataset
        self.descriptor = doc
        self.key = str(doc["key"])
        self._fs, vdir = fsutil.resolve(dataset.url)
        self._dir = fsutil.join(vdir, EMBEDDINGS_DIR, self.key)
        self._table: pd.DataFrame | None = None

    def __repr__(self) -> str:
        return f"Embeddings({self.key!r}, dim={self.dim}, rows={self.descriptor['counts']['embedded']})"

    @property
    def fingerprint(self) -> str:
        return str(self.descriptor["fingerprint"])

    @property
    def dim(self) -> int:
        return int(self.descriptor["dim"])

    @property
    def spec(self) -> EmbeddingSpec:
        return EmbeddingSpec(**{k: self.descriptor[k] for k in ("backbone", "weights", "weights_sha256", "size",
                                                                 "tta")})

    def files(self, split: str | None = None) -> list[str]:
        """URLs of the part files (of one split)."""
        return [fsutil.to_url(self._fs, fsutil.within(self._dir, p["path"], "parts.path"))
                for p in self.descriptor["parts"] if split is None or p["split"] == split]

    def quarantine(self) -> pd.DataFrame:
        """Images of the version that have no embedding, with stage, reason and detail."""
        with self._fs.open(fsutil.join(self._dir, shards.QUARANTINE_FILE), "rb") as fh:
            return pq.read_table(fh).to_pandas()

    def _all(self) -> pd.DataFrame:
        if self._table is None:
            tables = []
            for url in self.files():
                fs, path = fsutil.resolve(url)
                with fs.open(path, "rb") as fh:
                    tables.append(pq.read_table(fh))
            table = pyarrow.concat_tables(tables) if tables else pyarrow.Table.from_pylist([], arrow_schema(self.dim))
            col = table.column("embedding").combine_chunks()
            matrix = np.asarray(col.values.to_numpy(zero_copy_only=False), np.float32).reshape(-1, self.dim)
            frame = pd.DataFrame({"split": table.column("split").to_pylist()},
                                 index=pd.Index(table.column("image_name").to_pylist(), name="image_name"))
            frame.attrs["matrix"] = matrix
            self._table = frame
        return self._table

    def matrix(self, names: Iterable[str]) -> np.ndarray:
        """Embeddings of these image names, in their order (float32, ``(n, dim)``).

        Raises:
            InputError: a name has no embedding (its quarantine reason, when it has one, is named).
        """
        names = list(names)
        frame = self._all()
        pos = pd.Series(np.arange(len(frame)), index=frame.index)
        missing = [n for n in names if n not in pos.index]
        if missing:
            q = self.quarantine().set_index("image_name")
            why = "; ".join(f"{n}: " + (f"{q.loc[n, 'reason']} ({q.loc[n, 'detail']})" if n in q.index else
                                        "not in these embeddings (another dataset version?)") for n in missing[:3])
            raise InputError(f"embeddings {self.key}: {len(missing)} image(s) have no embedding, e.g. {why}")
        return frame.attrs["matrix"][pos.loc[names].to_numpy()] if names else np.zeros((0, self.dim), np.float32)

    def numpy(self, split: str | None = None, folds: Iterable[int] | None = None) -> np.ndarray:
        """Embeddings aligned row for row with ``dataset.metadata(split, folds)``."""
        names = self.dataset.metadata(split=split, folds=folds, columns=["image_name"])["image_name"]
        return self.matrix(names)

    def pandas(self, split: str | None = None, folds: Iterable[int] | None = None) -> pd.DataFrame:
        """``image_name`` and one float32 column per dimension (``emb_0000`` …), rows as ``metadata``."""
        names = self.dataset.metadata(split=split, folds=folds, columns=["image_name"])["image_name"]
        x = self.matrix(names)
        frame = pd.DataFrame(x, columns=[f"emb_{i:04d}" for i in range(self.dim)])
        frame.insert(0, "image_name", names.to_numpy())
        return frame

    def to_dask(self, split: str | None = None):
        """A Dask DataFrame over the parts (``image_name``, ``split``, ``embedding`` list column)."""
        import dask.dataframe as dd

        return dd.read_parquet(self.files(split))


def open_embeddings(dataset: Any, which: str, *, size: int | None = None, tta: str | None = None) -> Embeddings:
    """The finished embeddings of ``dataset`` named by ``which``: a backbone (``lite0``), a key or a fingerprint.

    ``size`` and ``tta`` narrow a backbone name down when a version holds several.

    Raises:
        InputError: nothing matches (listing what the version has), or several do (listing their keys).
    """
    found = list_embeddings(dataset.url)
    ok = [d for d in found if d["status"] == "ok"]
    hits = [d for d in ok if which in (d["key"], d["fingerprint"])]
    if not hits:
        hits = [d for d in ok if d.get("backbone") == which and (size is None or int(d["size"]) == int(size))
                and (tta is None or d["tta"] == tta)]
    have = ", ".join(f"{d['key']} ({d['status']})" if d["status"] != "ok" else d["key"] for d in found) or "none"
    if not hits:
        raise InputError(f"{dataset.url} has no finished embeddings {which!r}"
                         f"{f' at {size} px' if size else ''}{f' with tta={tta}' if tta else ''}; it has: {have} "
                         f"(compute them with `python cli.py embed {dataset.url} --backbone {which}`)")
    if len(hits) > 1:
        raise InputError(f"{dataset.url} has several embeddings {which!r}: "
                         f"{', '.join(d['key'] for d in hits)}; name one by its key or fingerprint")
    doc = hits[0]
    if doc.get("dataset") != dataset.fingerprint:
        raise InputError(f"embeddings {doc['key']} were made from dataset version {doc.get('dataset')}, "
                         f"not {dataset.fingerprint}")
    return Embeddings(dataset, doc)


# --------------------------------------------------------------------------- checking


def validate_embeddings(version_url: str, names: set[str]) -> list[str]:
    """Problems of every embeddings folder of a version (empty when all pass).

    Checks each descriptor's fingerprint against its settings and the version's, each part's sha256,
    row count, schema and dimension; that every written image (``names``) is embedded or quarantined
    exactly once, and nothing else is; that counts add up; and that no stray file lies in the folder.
    """
    fs, root = _root(version_url)
    vfp = version_url.rstrip("/").rsplit("/", 1)[-1]
    problems: list[str] = []
    for doc in list_embeddings(version_url):
        key = doc["key"]
        where = f"{EMBEDDINGS_DIR}/{key}"
        if doc["status"] != "ok":
            problems.append(f"{where}: {doc['status']}")
            continue
        try:
            spec = EmbeddingSpec(**{k: doc[k] for k in ("backbone", "weights", "weights_sha256", "size", "tta")})
        except (KeyError, TypeError, InputError) as exc:
            problems.append(f"{where}: descriptor lacks or has invalid settings ({exc})")
            continue
        fp = fingerprint(vfp, spec)
        if doc.get("dataset") != vfp or doc.get("fingerprint") != fp:
            problems.append(f"{where}: fingerprint {doc.get('fingerprint')!r} does not match its settings on this "
                            f"version ({fp})")
        if key != key_of(spec, fp):
            problems.append(f"{where}: folder name does not match the descriptor (expected {key_of(spec, fp)})")
        kdir = fsutil.join(root, key)
        listed = {fsutil.join(kdir, DESCRIPTOR_FILE), fsutil.join(kdir, shards.QUARANTINE_FILE)}
        seen: list[str] = []
        dim = int(doc.get("dim", 0))
        for part in doc["parts"]:
            try:
                path = fsutil.within(kdir, part.get("path"), "parts.path")
            except fsutil.UnsafePath as exc:
                problems.append(f"{where}: {exc}")
                continue
            listed.add(path)
            data = fsutil.cat_or_none(fs, path)
            if data is None:
                problems.append(f"{where}/{part['path']}: missing")
                continue
            if hashlib.sha256(data).hexdigest() != part.get("sha256"):
                problems.append(f"{where}/{part['path']}: sha256 differs from the descriptor")
            try:
                table = pq.read_table(io.BytesIO(data))
            except (pyarrow.ArrowInvalid, OSError) as exc:
                problems.append(f"{where}/{part['path']}: unreadable Parquet ({exc})")
                continue
            if not table.schema.equals(arrow_schema(dim)):
                problems.append(f"{where}/{part['path']}: schema {table.schema} is not {dim} float32 values per row")
            if table.num_rows != part.get("rows"):
                problems.append(f"{where}/{part['path']}: {table.num_rows} rows, descriptor says {part.get('rows')}")
            if "embedding" in table.column_names and table.num_rows:
                flat = table.column("embedding").combine_chunks().flatten().to_numpy(zero_copy_only=False)
                if not np.isfinite(flat).all():
                    problems.append(f"{where}/{part['path']}: non-finite values")
            seen += table.column("image_name").to_pylist() if "image_name" in table.column_names else []
        qdata = fsutil.cat_or_none(fs, fsutil.join(kdir, shards.QUARANTINE_FILE))
        quarantined: list[str] = []
        if qdata is None:
            problems.append(f"{where}/quarantine.parquet: missing")
        else:
            if hashlib.sha256(qdata).hexdigest() != (doc.get("quarantine") or {}).get("sha256"):
                problems.append(f"{where}/quarantine.parquet: sha256 differs from the descriptor")
            quarantined = pq.read_table(io.BytesIO(qdata)).column("image_name").to_pylist()
        counts = doc.get("counts") or {}
        if counts.get("embedded") != len(seen) or counts.get("quarantined") != len(quarantined) \
                or counts.get("images") != len(seen) + len(quarantined):
            problems.append(f"{where}: counts {counts} do not add up (parts hold {len(seen)}, quarantine "
                            f"{len(quarantined)})")
        both = set(seen) & set(quarantined)
        dups = len(seen) - len(set(seen))
        if both or dups:
            problems.append(f"{where}: {len(both)} images both embedded and quarantined, {dups} embedded twice")
        accounted = set(seen) | set(quarantined)
        if accounted != names:
            lost, extra = sorted(names - accounted), sorted(accounted - names)
            problems.append(f"{where}: {len(lost)} written image(s) neither embedded nor quarantined "
                            f"(e.g. {lost[:3]}), {len(extra)} not in the version (e.g. {extra[:3]})")
        for p in fs.find(kdir):
            if p not in listed:
                problems.append(f"{where}/{p.removeprefix(kdir + '/')}: not listed in the descriptor")
    return problems


__all__ = ["DESCRIPTOR_FILE", "EMBEDDINGS_DIR", "EmbeddingSpec", "Embeddings", "fingerprint", "key_of",
           "list_embeddings", "open_embeddings", "validate_embeddings"]
