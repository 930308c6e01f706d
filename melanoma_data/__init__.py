"""Dermoscopy preprocessing: ingest, pure image ops, Dask build, validated Parquet shards."""

from __future__ import annotations

__version__ = "0.1.0"


def open_dataset(path_or_url):  # noqa: ANN001, ANN201 - re-exported lazily (keeps `import melanoma_data` light)
    """Open a finished dataset version; see :func:`melanoma_data.dataset.open_dataset`."""
    from melanoma_data.dataset import open_dataset as _open

    return _open(path_or_url)
