"""Model side of the toolkit: plugin API, registry and CV runner (framework-free)."""

from __future__ import annotations
