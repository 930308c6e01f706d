"""Dermoscopy preprocessing: ingest, pure image ops, Dask build, validated Parquet shards."""

from __future__ import annotations

__version__ = "0.1.0"
