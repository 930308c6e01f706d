"""What today's outputs are, as hashes: the guard that a restructuring changes no byte a user relies on.

For every layout the synthetic generator writes, and for the real sample, at the default config, the ``tiles``
preset and a config with every op off, this builds a dataset version and hashes each Parquet column (values, in
file order), each TFRecord file, the quarantine table and the fingerprint; then fits ``logreg`` and ``lgbm`` on
one version and hashes their out-of-fold predictions and run ids. Input files get a fixed modification time (it
is part of the fingerprint), and the real sample is read from a copy in a temporary folder for that reason.

``python tests/guard_outputs.py --write`` records the hashes in ``tests/guard_hashes.json``;
``tests/test_guard.py`` recomputes them and compares key by key. A change that moves outputs on purpose records
``--diff`` (by kind of output: how many hashes stayed, changed, were added or removed) in its note, then ``--write``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
HASHES = HERE / "guard_hashes.json"
SAMPLE = HERE.parent.parent / "shared" / "data" / "isic-sample"
MTIME = 1_700_000_000  # a fixed modification time for every input file

#: the configs every input is built with: defaults, the ``tiles`` preset, and every op that can be off, off
CONFIGS: dict[str, dict[str, Any]] = {
    "default": {"preset": None, "values": {}},
    "tiles": {"preset": "tiles", "values": {}},
    "ops_off": {"preset": None, "values": {
        "field_of_view": {"enabled": False}, "artefacts": {"enabled": False}, "hair": {"enabled": False},
        "colour": {"enabled": False}}},
}
#: shard settings that keep the generated versions small (folds and file counts for 10–40 images)
SMALL = {"square": {"size": 64}, "shards": {"n_folds": 3, "train_files": 2, "test_files": 1}}


def _freeze(root: Path) -> None:
    for dirpath, _, files in os.walk(root):
        for f in files:
            os.utime(Path(dirpath) / f, (MTIME, MTIME))


def write_inputs(tmp: Path, sample: bool = True) -> dict[str, Path]:
    """Every synthetic layout (small) and, when present, a copy of the real sample; mtimes fixed."""
    from melanoma_data import synth

    roots: dict[str, Path] = {}
    for layout in ("kaggle2020", "isic2019", "isic-cli", "generic"):
        roots[layout] = tmp / "in" / layout
        synth.write_dataset(roots[layout], n=24 if layout == "kaggle2020" else 10, layout=layout, seed=11,
                            sizes=[(240, 180), (200, 200), (180, 240)], defects=0.6, melanoma_rate=0.3,
                            images_per_patient=2.0)
    roots["isic2024"] = tmp / "in" / "isic2024"
    synth.write_isic2024(roots["isic2024"], n=24, seed=5, positive_rate=0.2, tiles_per_patient=6, test_n=3)
    roots["images"] = tmp / "in" / "images"
    roots["images"].mkdir(parents=True)
    for p in sorted((roots["generic"] / "images").iterdir())[:5]:  # a plain folder: images, no metadata
        shutil.copy(p, roots["images"] / p.name)
    if sample and (SAMPLE / "metadata.csv").exists():
        roots["isic-sample"] = tmp / "in" / "isic-sample"
        shutil.copytree(SAMPLE, roots["isic-sample"])
    for root in roots.values():
        _freeze(root)
    return roots


def _hash(*parts: Any) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else repr(p).encode())
    return h.hexdigest()[:20]


#: Relative and absolute tolerance of a float column's values. Measured floats differ in their last bits between
#: CPUs (OpenCV picks its SIMD code at run time: the brightness and vignette measurements and the predictions made
#: from them moved by rounding noise between two machines of this workplace, everything else was bit-identical), so
#: float columns are recorded as values (12 significant digits) and compared with this tolerance; every other
#: column, the TFRecords and the quarantine table are compared by hash, exactly.
RTOL, ATOL = 1e-6, 1e-9
#: The first item of a float column's record: this and the column's type (other lists, file names, compare exactly).
FLOATS = "floats:"


def _column_hashes(files: list[Path]) -> dict[str, Any]:
    """One hash per column over all files' values in order (bytes values hashed as they are); float columns as
    ``["floats:double", value, ...]`` lists instead (see :data:`RTOL`)."""
    hashes: dict[str, Any] = {}
    floats: dict[str, list[Any]] = {}
    for f in files:
        table = pq.read_table(f)
        for name in table.column_names:
            kind = table.schema.field(name).type
            if pa.types.is_floating(kind):
                floats.setdefault(name, [f"{FLOATS}{kind}"]).extend(
                    None if v is None else float(f"{v:.12g}") for v in table.column(name).to_pylist())
                continue
            h = hashes.setdefault(name, hashlib.sha256())
            h.update(str(kind).encode())
            for v in table.column(name).to_pylist():
                h.update(v if isinstance(v, bytes) else repr(v).encode())
                h.update(b"\x00")
    return {**{k: v.hexdigest()[:20] for k, v in hashes.items()}, **floats}


def same(a: Any, b: Any) -> bool:
    """Two recorded values agree: hashes equal, float lists of one type equal within :data:`RTOL`/:data:`ATOL`
    (missing values in the same places; NaN equal to NaN)."""
    if isinstance(a, list) and isinstance(b, list) and a[:1] == b[:1] and str(a[0]).startswith(FLOATS):
        if len(a) != len(b):
            return False
        if [v is None for v in a] != [v is None for v in b]:
            return False
        x = np.array([v for v in a[1:] if v is not None], dtype=float)
        y = np.array([v for v in b[1:] if v is not None], dtype=float)
        return bool(np.allclose(x, y, rtol=RTOL, atol=ATOL, equal_nan=True))
    return a == b


def version_hashes(version: Path) -> dict[str, Any]:
    """Fingerprint, per-column hashes of the shards, TFRecord file hashes and the quarantine table's hash."""
    manifest = json.loads((version / "manifest.json").read_text())
    shards = sorted(p for p in version.rglob("*.parquet") if p.name != "quarantine.parquet"
                    and "embeddings" not in p.parts)
    out: dict[str, Any] = {
        "fingerprint": manifest["fingerprint"],
        "files": [str(p.relative_to(version)) for p in shards],
        "columns": _column_hashes(shards),
        "tfrecord": {str(p.relative_to(version)): _hash(p.read_bytes()) for p in sorted(version.rglob("*.tfrec"))},
    }
    quarantine = version / "quarantine.parquet"
    if quarantine.exists():
        out["quarantine"] = _column_hashes([quarantine])
    return out


def build_all(tmp: Path, sample: bool = True) -> tuple[dict[str, Any], dict[str, Path]]:
    from melanoma_data import build
    from melanoma_data.config import PreprocessConfig, _merge, load_config

    roots = write_inputs(tmp, sample)
    out: dict[str, Any] = {}
    versions: dict[str, Path] = {}
    for layout, root in roots.items():
        for name, spec in CONFIGS.items():
            cfg = load_config(preset=spec["preset"])
            values = _merge(_merge(cfg.to_dict(), SMALL), spec["values"])
            if layout == "isic-sample":  # the real originals at the real output size (only the shards kept small)
                values = _merge(values, {"square": {"size": cfg.square.size}})
            cfg = PreprocessConfig.from_dict(values)
            res = build.preprocess([str(root)], str(tmp / "out" / name), cfg, workers=0)
            versions[f"{layout}/{name}"] = Path(res.version_url.removeprefix("file://"))
            out[f"{layout}/{name}"] = version_hashes(versions[f"{layout}/{name}"])
    return out, versions


def run_hashes(version: Path, runs: Path) -> dict[str, Any]:
    """logreg and lgbm fitted on one version: run ids and hashes of their out-of-fold (and test) predictions."""
    from melanoma_models import runner

    out: dict[str, Any] = {}
    lgbm = {"num_boost_round": "30", "num_leaves": "4", "min_data_in_leaf": "2"}
    for plugin, sets in (("logreg", {}), ("lgbm", lgbm)):
        res = runner.fit(plugin, str(version), runs=runs, sets=sets)
        run_dir = Path(res.run_dir)
        files = {p.name: _column_hashes([p]) for p in sorted(run_dir.glob("*.parquet"))}
        out[plugin] = {"run_id": run_dir.name, "predictions": files}
    return out


def compute(tmp: Path, sample: bool = True, keep: Path | None = None) -> dict[str, Any]:
    """All hashes; with ``keep``, also copy one manifest and the runs' ``config.json`` there (the old-format
    fixtures the typed readers are tested on)."""
    versions, paths = build_all(tmp, sample)
    runs = run_hashes(paths["kaggle2020/default"], tmp / "runs")
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        for name in ("kaggle2020/default", "isic2024/tiles"):
            shutil.copy(paths[name] / "manifest.json", keep / f"manifest-{name.replace('/', '-')}.json")
        for plugin, info in runs.items():
            shutil.copy(tmp / "runs" / info["run_id"] / "config.json", keep / f"run-config-{plugin}.json")
    return {"versions": versions, "runs": runs}


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a/b": 1}``."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _kind(key: str) -> str:
    """What a flat key hashes: ``fingerprint``, ``column <name>``, ``tfrecord``, ``quarantine``, ``run id``, ..."""
    parts = key.split("/")  # versions/<layout>/<config>/<kind>[/<name>], runs/<plugin>/...
    if parts[0] == "runs":
        return f"{parts[1]} run id" if parts[-1] == "run_id" else f"{parts[1]} {parts[-2]}:{parts[-1]}"
    if parts[3] in ("columns", "quarantine"):
        return f"{parts[3]} {parts[4]}"
    return parts[3]


def diff(recorded: dict[str, Any], got: dict[str, Any]) -> dict[str, dict[str, int]]:
    """How two hash records differ, by kind of key: ``changed``, ``added`` and ``removed`` counts, and ``same``."""
    want, have = flat(recorded), flat(got)
    out: dict[str, dict[str, int]] = {}
    for key in want.keys() | have.keys():
        state = ("added" if key not in want else "removed" if key not in have
                 else "same" if same(want[key], have[key]) else "changed")
        row = out.setdefault(_kind(key), {"same": 0, "changed": 0, "added": 0, "removed": 0})
        row[state] += 1
    return dict(sorted(out.items()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"record the hashes in {HASHES.name}")
    ap.add_argument("--diff", action="store_true",
                    help=f"print, by kind of output, how many hashes are the same as, differ from, are new to or are "
                         f"missing from {HASHES.name} (the record of a change that moves outputs on purpose)")
    ap.add_argument("--fixtures", type=Path, default=None,
                    help="also keep one manifest and the runs' config.json there (the typed readers' fixtures)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE.parent))
    with tempfile.TemporaryDirectory() as tmp:
        got = compute(Path(tmp), keep=args.fixtures)
    if args.diff:
        for kind, row in diff(json.loads(HASHES.read_text()), got).items():
            print(f"{kind:<40} " + "  ".join(f"{k} {v:>4}" for k, v in row.items()))
    text = json.dumps(got, indent=1, sort_keys=True) + "\n"
    if args.write:
        HASHES.write_text(text)
        print(f"wrote {HASHES} ({len(got['versions'])} versions, {len(got['runs'])} runs)")
    elif not args.diff:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
