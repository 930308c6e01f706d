"""Dermoscopy preprocessing: ingest, pure image ops, Dask build, validated Parquet shards.

The public face (everything else is the house's inside and may move):

- :func:`preprocess` — inputs → a fingerprinted dataset version (:func:`melanoma_data.build.preprocess`);
- :func:`open_dataset` — read a finished version (:func:`melanoma_data.dataset.open_dataset`);
- :func:`load_config` / :class:`PreprocessConfig` — the preprocessing configuration;
- :class:`MelanomaError` — the root of every error the toolkit raises on purpose.

Names are imported on first use, so ``import melanoma_data`` stays light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["MelanomaError", "PreprocessConfig", "load_config", "open_dataset", "preprocess"]

_WHERE = {"preprocess": "melanoma_data.build", "open_dataset": "melanoma_data.dataset",
          "load_config": "melanoma_data.config", "PreprocessConfig": "melanoma_data.config",
          "MelanomaError": "melanoma_data.errors"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'melanoma_data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
