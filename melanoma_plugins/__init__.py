"""Built-in model plugins; each sub-package registers through the ``melanoma.plugins`` entry points."""

from __future__ import annotations
