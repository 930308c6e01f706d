"""The output guard: today's outputs, recomputed, equal the record in ``guard_hashes.json``.

Recorded by ``python tests/guard_outputs.py --write`` on main before the redesign (2026-12-03), and again on
2026-12-04 when the newer datasets' columns and the ITA measurement were added on purpose: ``--diff`` against
main's own outputs (commit 0294eb2, recomputed on the same machine) showed every existing column, TFRecord file,
quarantine table and out-of-fold prediction unchanged, 24 new columns per version, and the fingerprints and run
ids moved (the column table's and the colour op's versions feed them). Float columns compare within a tolerance
(``guard_outputs.RTOL``); a difference names the version (layout/config), the file and the column that moved.
"""

from __future__ import annotations

import json

import guard_outputs
import pytest


@pytest.fixture(scope="module")
def recomputed(tmp_path_factory):
    return guard_outputs.compute(tmp_path_factory.mktemp("guard"), sample=guard_outputs.SAMPLE.exists())


def test_outputs_unchanged_by_the_redesign(recomputed):
    recorded = json.loads(guard_outputs.HASHES.read_text())
    if not guard_outputs.SAMPLE.exists():  # without the real sample only the generated inputs are compared
        recorded["versions"] = {k: v for k, v in recorded["versions"].items() if not k.startswith("isic-sample/")}
    want, got = guard_outputs.flat(recorded), guard_outputs.flat(recomputed)
    moved = sorted(k for k in want.keys() | got.keys() if not guard_outputs.same(want.get(k), got.get(k)))
    assert not moved, f"{len(moved)} recorded output hashes moved, e.g.: " + "; ".join(
        f"{k}: {str(want.get(k))[:80]} -> {str(got.get(k))[:80]}" for k in moved[:8])
    assert len(want) > 1000  # every version's columns, files and fingerprint, and both runs
