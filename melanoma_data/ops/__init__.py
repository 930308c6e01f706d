"""Pure image ops and their registry: ``fn(img, params) -> ndarray | measurement``.

Every op takes an RGB uint8 H×W×3 array and a frozen, self-validating parameter object, does no
I/O, keeps no state, never mutates its input, and is deterministic. ``kind`` says whether it returns
a new image (``transform``), a measurement (``measure``), or a frozen result holding the new
``image`` and what the op found (``result``). An op with nothing to change returns its input object
itself (no copy on the hot path); otherwise its image never shares memory with the input. The
version of each op goes into the dataset fingerprint: bump it whenever the op's output changes.

Each op is registered once, as a step of :data:`melanoma_data.ops.steps.STEPS` (with what it reads,
writes and measures); :data:`OPS` and :func:`op_versions` are views of that table.
"""

from __future__ import annotations

from melanoma_data.ops import steps
from melanoma_data.ops.steps import Step

#: The registered ops (steps with a pure ``fn(img, params)``): name → step (``fn``, ``params``, ``version``, ``kind``).
OPS: dict[str, Step] = steps.ops()
#: An op's registry entry (the step that registers it).
OpInfo = Step


def op_versions() -> dict[str, str]:
    """Name → version of every op and codec, and of the shard columns, as recorded in the fingerprint."""
    from melanoma_data import columns  # imported here: the columns table is built from the step table

    return {**steps.versions(), "columns": columns.VERSION}
