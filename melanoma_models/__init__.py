"""Model side of the toolkit: plugin API, registry and CV runner (framework-free).

The public face (everything else is the house's inside and may move):

- :func:`fit` — cross-validate a plugin on a dataset version into a run directory;
- :func:`predict` — a run's predictions for another version;
- :func:`score_images` — score image files (preprocessed as the run's data was);
- :class:`Plugin` / :class:`PluginParams` — what a model plugin implements (third-party plugins import
  them from :mod:`melanoma_models.api`, which stays where it is).

Names are imported on first use, so ``import melanoma_models`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Plugin", "PluginParams", "fit", "predict", "score_images"]

_WHERE = {"fit": "melanoma_models.runner", "predict": "melanoma_models.runner",
          "score_images": "melanoma_models.score", "Plugin": "melanoma_models.api",
          "PluginParams": "melanoma_models.api"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'melanoma_models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
