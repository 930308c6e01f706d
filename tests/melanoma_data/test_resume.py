"""Crash safety: SIGKILL in the middle of a real CLI run, then the same command finishes the job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from melanoma_data import synth

ROOT = Path(__file__).resolve().parents[2]


def _cmd(inp: Path, out: Path, workers: int) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), "preprocess", str(inp), "--out", str(out), "--size", "96",
            "--partition-size", "2", "--workers", str(workers), "--no-progress"]


def _tree(version: Path) -> dict[str, bytes]:
    return {str(p.relative_to(version)): p.read_bytes() for p in sorted(version.rglob("*"))
            if p.is_file() and p.name != "manifest.json"}


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_is_byte_identical(tmp_path):
    inp = tmp_path / "in"
    synth.write_dataset(inp, n=60, layout="kaggle2020", seed=11, sizes=[(1600, 1200)], defects=0.5)
    ref = subprocess.run(_cmd(inp, tmp_path / "ref", 0), capture_output=True, text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr
    (ref_version,) = (tmp_path / "ref" / "in").iterdir()

    out = tmp_path / "out"
    proc = subprocess.Popen(_cmd(inp, out, 1), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 120
    parts = out / "in" / ref_version.name / "_parts"
    while time.time() < deadline:
        if parts.exists() and len(list(parts.glob("summary-*.json"))) >= 3:
            break
        assert proc.poll() is None, "the run finished before it could be killed"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    time.sleep(1.0)  # let orphaned worker processes notice and exit
    version = out / "in" / ref_version.name
    assert not (version / "manifest.json").exists()
    committed = len(list(parts.glob("summary-*.json")))
    assert 3 <= committed < 30

    again = subprocess.run(_cmd(inp, out, 1), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert _tree(version) == _tree(ref_version)
    import json

    doc = json.loads((version / "manifest.json").read_text())
    assert doc["timings"]["resumed_images"] >= 2 * 3
    ref_doc = json.loads((ref_version / "manifest.json").read_text())
    # the manifest differs only where the README says: when it was written and how long it took
    volatile = {"created_at", "timings"}
    assert ({k: v for k, v in doc.items() if k not in volatile}
            == {k: v for k, v in ref_doc.items() if k not in volatile})
    assert not list(version.rglob("*.tmp-*"))
    # and once finished, the same command does nothing
    third = subprocess.run(_cmd(inp, out, 0), capture_output=True, text=True, timeout=300)
    assert "already up to date" in third.stdout


def test_a_run_stopped_between_partitions_resumes_to_the_same_files(tmp_path, monkeypatch):
    """The in-process twin of the SIGKILL test (the fast loop's): a run that stops after two committed partitions
    leaves an unfinished version; the same call finishes it with every shard byte-identical to a clean run."""
    from melanoma_data import build
    from melanoma_data.config import PreprocessConfig
    from melanoma_data.dataset import open_dataset
    from melanoma_data.errors import MelanomaDataError

    inp = tmp_path / "in"
    synth.write_dataset(inp, n=8, layout="kaggle2020", seed=3, sizes=[(320, 240)])
    cfg = PreprocessConfig.from_dict({"square": {"size": 64}, "partition_size": 2})
    ref = build.preprocess([str(inp)], str(tmp_path / "ref"), cfg=cfg, workers=0, progress=False)

    real, calls = build.run_partition, []

    def stop_after_two(index, *args, **kwargs):
        if len(calls) == 2:
            raise KeyboardInterrupt
        calls.append(index)
        return real(index, *args, **kwargs)

    monkeypatch.setattr(build, "run_partition", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        build.preprocess([str(inp)], str(tmp_path / "out"), cfg=cfg, workers=0, progress=False)
    version = tmp_path / "out" / "in" / Path(ref.version_url).name
    assert not (version / "manifest.json").exists()
    with pytest.raises(MelanomaDataError):
        open_dataset(str(version))
    monkeypatch.setattr(build, "run_partition", real)
    again = build.preprocess([str(inp)], str(tmp_path / "out"), cfg=cfg, workers=0, progress=False)
    assert again.version_url.endswith(Path(ref.version_url).name)
    assert _tree(version) == _tree(Path(ref.version_url))
    import json

    assert json.loads((version / "manifest.json").read_text())["timings"]["resumed_images"] == 4  # kept, not redone
