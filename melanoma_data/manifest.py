"""Dataset-version fingerprint and manifest (the index of what a version holds).

``manifest.json`` is written from a plain dict (:func:`write_manifest`; its bytes are a public format) and read
through :class:`Manifest`, whose typed attributes are the one place that knows the file's keys and what
older formats lacked. A :class:`Manifest` is still the file's JSON dict (a subclass), so code written against
the dict (``ds.manifest["counts"]``, ``json.dumps(ds.manifest)``) keeps working; the project reads attributes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from melanoma_data import fsutil

MANIFEST_FILE = "manifest.json"
#: 2: config sections named as their ops (field_of_view, landscape, square); 1: vignette, portrait, resize
#: (readers take both through :func:`melanoma_data.config.manifest_section`).
MANIFEST_FORMAT = 2


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def fingerprint(config: dict[str, Any], op_versions: dict[str, str], listing: list[tuple]) -> str:
    """Fingerprint of (config, op versions, input listing) — the dataset version's directory name.

    The listing holds every image file's relative path, size and modification time, and the
    content hash of every metadata CSV: editing a CSV or replacing an image gives a new version.
    """
    payload = canonical_json({"config": config, "ops": op_versions, "inputs": [list(x) for x in listing]})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def write_manifest(fs, version_dir: str, manifest: dict[str, Any]) -> None:
    """Atomically write ``manifest.json`` (its presence marks a finished version)."""
    data = json.dumps(manifest, indent=2, sort_keys=True, default=str).encode()
    fsutil.atomic_write(fs, fsutil.join(version_dir, MANIFEST_FILE), data)


def read_manifest(fs, version_dir: str) -> Manifest | None:
    """The manifest of a version, or None when the version is unfinished."""
    path = fsutil.join(version_dir, MANIFEST_FILE)
    data = fsutil.cat_or_none(fs, path)
    return None if data is None else Manifest(json.loads(data))


if TYPE_CHECKING:
    from melanoma_data.columns import Extras
    from melanoma_data.config import PreprocessConfig

#: where the quarantine table lies when a manifest does not say (every format so far)
_QUARANTINE_FILE = "quarantine.parquet"


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One file the manifest lists (a Parquet or TFRecord shard, or the quarantine table).

    Attributes:
        path: relative to the version directory.
        rows: rows (records) it holds, None when not recorded.
        bytes: its size, None when not recorded.
        sha256: its checksum, "" when not recorded.
        split: ``train``/``test`` (shards), None for the quarantine table.
        fold: the train fold of a shard, None for test files and the quarantine table.
        file: the shard's stem (``train00``), "" when not recorded.
        quarantine: True for the quarantine table.
    """

    path: str
    rows: int | None = None
    bytes: int | None = None
    sha256: str = ""
    split: str | None = None
    fold: int | None = None
    file: str = ""
    quarantine: bool = False

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, quarantine: bool = False) -> FileEntry:
        return cls(path=d.get("path", _QUARANTINE_FILE) if quarantine else d.get("path"),
                   rows=None if d.get("rows") is None else int(d["rows"]),
                   bytes=None if d.get("bytes") is None else int(d["bytes"]), sha256=d.get("sha256") or "",
                   split=d.get("split"), fold=None if d.get("fold") is None else int(d["fold"]),
                   file=d.get("file") or "", quarantine=quarantine)


@dataclasses.dataclass(frozen=True)
class ColumnInfo:
    """One shard column as the manifest's ``columns`` table describes it."""

    name: str
    dtype: str
    group: str = ""
    models: str = ""
    nullable: bool = True
    tfrecord: str | None = None
    why: str = ""

    @property
    def is_extra(self) -> bool:
        """An input column beyond the ISIC ones (kept from the metadata CSV)."""
        return self.group == "extra"


@dataclasses.dataclass(frozen=True)
class Counts:
    """Inputs = written + quarantined (None where the manifest lacks a count)."""

    inputs: int | None
    written: int | None
    quarantined: int | None


@dataclasses.dataclass(frozen=True)
class InputSource:
    """One input folder of the version, its layout and the dataset's licence ("" when the release does not state
    one, or the manifest predates licences)."""

    url: str
    layout: str
    licence: str = ""


class Manifest(dict[str, Any]):
    """A dataset version's ``manifest.json`` (today's format and older ones), read by attribute.

    Build with ``Manifest(doc)`` from the parsed JSON. It is that dict (treat it as read-only); :attr:`raw` is
    the plain dict, as written.
    """

    @classmethod
    def of(cls, doc: Manifest | Mapping[str, Any]) -> Manifest:
        """``doc`` as a :class:`Manifest` (itself when it is one)."""
        return doc if isinstance(doc, Manifest) else cls(doc)

    @property
    def raw(self) -> dict[str, Any]:
        """The JSON as a plain dict (what :func:`write_manifest` writes and the column table reads)."""
        return dict(self)

    def __repr__(self) -> str:
        return f"Manifest({self.name!r} @ {self.fingerprint!r}, format {self.format})"

    # ----------------------------------------------------------------- identity

    @property
    def format(self) -> int:
        """The manifest format (1 when the file predates the field)."""
        return int(self.get("format", 1))

    @property
    def name(self) -> str | None:
        """The dataset's name (the folder above the version)."""
        return self.get("name")

    @property
    def fingerprint(self) -> str:
        return str(self.get("fingerprint", ""))

    @property
    def created_at(self) -> str:
        return str(self.get("created_at", ""))

    @property
    def package_version(self) -> str:
        return str(self.get("package_version", ""))

    @property
    def inputs(self) -> tuple[InputSource, ...]:
        return tuple(InputSource(str(i.get("url", "")), str(i.get("layout", "")), str(i.get("licence") or ""))
                     for i in self.get("inputs") or [])

    @property
    def sources(self) -> list[str]:
        """The input layouts, sorted and unique."""
        return sorted({i.layout for i in self.inputs})

    # ----------------------------------------------------------------- preprocessing

    @property
    def config(self) -> dict[str, Any]:
        """The preprocessing config as recorded (section names of the manifest's format)."""
        return dict(self.get("config") or {})

    def section(self, name: str) -> dict[str, Any]:
        """One config section by today's name, whichever name the manifest's format used."""
        from melanoma_data.config import manifest_section

        return manifest_section(self.config, name)

    def preprocess_config(self) -> PreprocessConfig:
        """The :class:`~melanoma_data.config.PreprocessConfig` the version was built with."""
        from melanoma_data.config import PreprocessConfig

        return PreprocessConfig.from_dict(self.config, warn=False)  # old section names read as today's

    @property
    def image_size(self) -> int:
        """Side of the stored square images, in pixels."""
        return int(self.section("square")["size"])

    @property
    def ops(self) -> dict[str, str]:
        """Op (and codec) versions the version was made with."""
        return dict(self.get("ops") or {})

    def stale_ops(self, installed: Mapping[str, str] | None = None) -> dict[str, tuple[str | None, str | None]]:
        """Ops whose version differs from the installed code's: ``{name: (this version's, installed)}``, None
        where one side lacks the op; sorted by name."""
        if installed is None:
            from melanoma_data.ops import op_versions

            installed = op_versions()
        theirs = self.ops
        return {n: (theirs.get(n), installed.get(n)) for n in sorted(set(theirs) | set(installed))
                if theirs.get(n) != installed.get(n)}

    # ----------------------------------------------------------------- contents

    @property
    def counts(self) -> Counts:
        c = self.get("counts") or {}
        return Counts(*(None if c.get(k) is None else int(c[k]) for k in ("inputs", "written", "quarantined")))

    @property
    def quarantine_reasons(self) -> dict[str, int]:
        return dict(self.get("quarantine_reasons") or {})

    @property
    def splits(self) -> dict[str, int]:
        """Images per split, as recorded."""
        return dict(self.get("splits") or {})

    @property
    def split_names(self) -> list[str]:
        return sorted(self.splits)

    def has_split(self, split: str) -> bool:
        return split in self.splits

    @property
    def shards(self) -> tuple[FileEntry, ...]:
        """The Parquet files."""
        return tuple(FileEntry.from_dict(e) for e in self.get("shards") or [])

    @property
    def tfrecords(self) -> tuple[FileEntry, ...]:
        """The TFRecord files (none when written with ``shards.tfrecord = false``)."""
        return tuple(FileEntry.from_dict(e) for e in self.get("tfrecords") or [])

    @property
    def quarantine(self) -> FileEntry:
        """The quarantine table's entry."""
        return FileEntry.from_dict(self.get("quarantine") or {}, quarantine=True)

    @property
    def encodings(self) -> dict[str, Any]:
        """String ↔ int codes of the TFRecord integer features."""
        return self.get("encodings") or {}

    @property
    def n_folds(self) -> int:
        return int((self.get("folds") or {}).get("n_folds", 0))

    @property
    def fold_files(self) -> dict[str, dict[str, Any]]:
        """Per shard stem: its fold, images, melanoma and patients."""
        return dict((self.get("folds") or {}).get("files") or {})

    @property
    def fold_stats(self) -> dict[str, dict[str, Any]]:
        """Per fold (as a string): images, melanoma and patients."""
        return dict((self.get("folds") or {}).get("folds") or {})

    @property
    def duplicates(self) -> dict[str, Any]:
        """The near-duplicate summary (as :func:`melanoma_data.folds.duplicate_rows` reads it)."""
        return dict(self.get("duplicates") or {})

    @property
    def target(self) -> dict[str, Any]:
        return dict(self.get("target") or {})

    @property
    def target_definition(self) -> str:
        """What ``target = 1`` means as a definition name (``melanoma`` before the field existed)."""
        return self.target.get("definition") or "melanoma"

    @property
    def target_meaning(self) -> str:
        return self.target.get("meaning", "1 = melanoma")

    @property
    def columns(self) -> tuple[ColumnInfo, ...]:
        """The shard columns (empty for manifests from before the table was recorded)."""
        fields = {f.name for f in dataclasses.fields(ColumnInfo)}
        return tuple(ColumnInfo(**{k: v for k, v in d.items() if k in fields}) for d in self.get("columns") or [])

    @property
    def column_names(self) -> set[str]:
        return {c.name for c in self.columns}

    @property
    def extra_columns(self) -> tuple[ColumnInfo, ...]:
        return tuple(c for c in self.columns if c.is_extra)

    @property
    def extras(self) -> Extras:
        """The extra columns as the shard schema takes them."""
        from melanoma_data.columns import extras_of

        return extras_of(self.column_records)

    @property
    def column_records(self) -> list[dict[str, Any]]:
        """The ``columns`` list as written (what the column table's functions take)."""
        return [dict(d) for d in self.get("columns") or []]

    @property
    def timings(self) -> dict[str, Any]:
        return dict(self.get("timings") or {})

    @property
    def warnings(self) -> list[str]:
        return list(self.get("warnings") or [])

    # ----------------------------------------------------------------- summaries

    def summary(self) -> dict[str, Any]:
        """The one-row summary ``datasets list`` shows (besides path and status).

        Raises:
            KeyError: the manifest lacks its counts or config (a corrupt file).
        """
        for key in ("counts", "config"):
            if not isinstance(self.get(key), dict):
                raise KeyError(key)
        files = (*self.shards, *self.tfrecords)
        c = self.counts
        return dict(name=self.name, created=self.created_at, size=self.section("square").get("size"),
                    written=c.written, quarantined=c.quarantined, inputs=c.inputs, splits=self.splits,
                    folds=(self.get("folds") or {}).get("n_folds"), files=len(self.shards),
                    tfrecords=len(self.tfrecords), bytes=sum(f.bytes or 0 for f in files),
                    duplicates=self.duplicates.get("groups"), sources=self.sources)

    def show_rows(self) -> list[tuple[str, str]]:
        """The facts ``datasets show`` lists, in order, before the per-file table (path and artefact counts,
        which need the files, are the caller's)."""
        from melanoma_data.catalog import human_bytes
        from melanoma_data.folds import duplicate_rows

        c = self.counts
        square, encode = self.section("square"), self.section("encode")
        cfg = {k: self.section(k) for k in ("field_of_view", "artefacts", "hair", "colour")}
        ops_on = [k if k != "artefacts" else f"artefacts ({cfg[k].get('policy', 'leave')})"
                  for k in ("field_of_view", "artefacts", "hair", "colour") if cfg[k].get("enabled")]
        return [
            ("created", self.created_at),
            ("inputs", ", ".join(f"{i.url} ({i.layout})" for i in self.inputs)),
            ("licences", "; ".join(f"{i.layout}: {i.licence}" for i in self.inputs if i.licence) or "not recorded"),
            ("counts", f"{c.inputs} inputs = {c.written} written + {c.quarantined} quarantined"),
            ("quarantine reasons", ", ".join(f"{k}: {v}" for k, v in self.quarantine_reasons.items()) or "none"),
            ("splits", ", ".join(f"{k}: {v}" for k, v in self.splits.items())),
            ("image", f"{square['size']} px, {square['policy']}, JPEG q{encode['quality']}"),
            ("ops on", ", ".join(ops_on) or "none"),
            ("folds", f"{self.n_folds} folds over {sum(1 for s in self.shards if s.split == 'train')} train files"),
            *duplicate_rows(self.duplicates),
            ("target", self.target_meaning),
            ("input columns", ", ".join(
                f"{d.name} ({d.dtype}{'' if d.models == 'feature' else ', ' + d.models})"
                for d in self.extra_columns) or "none"),
            ("on disk", f"{human_bytes(sum(s.bytes or 0 for s in self.shards))} Parquet, "
                        f"{human_bytes(sum(s.bytes or 0 for s in self.tfrecords))} TFRecord"),
            ("speed", f"{self.timings.get('images_per_s')} img/s"),
        ]

    def file_rows(self) -> list[tuple[str, str, str, str, str, str]]:
        """``datasets show``'s file table: file, fold, images, melanoma, patients, TFRecord file name."""
        tf_names = {t.file: t.path.rsplit("/", 1)[-1] for t in self.tfrecords}
        return [(key, str("" if f["fold"] is None else f["fold"]), str(f["images"]),
                 str("" if f["melanoma"] is None else f["melanoma"]), str(f["patients"]), tf_names.get(key, ""))
                for key, f in sorted(self.fold_files.items())]
