"""HDF5 image containers (the ISIC 2024 ``train-image.hdf5``: one dataset of JPEG bytes per ``isic_id``).

The driver only lists keys; workers open the file themselves and read their own entries, so image
bytes never pass through the client.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
from fsspec.implementations.local import LocalFileSystem

from melanoma_data import fsutil


class EntryError(Exception):
    """An HDF5 entry that exists but cannot be read as bytes."""


def _open(url: str) -> tuple[Any, Any]:
    """``(h5py.File, underlying file object or None)`` for a local path or fsspec URL."""
    import h5py

    fs, path = fsutil.resolve(url)
    if isinstance(fs, LocalFileSystem):
        return h5py.File(path, "r"), None
    fh = fs.open(path, "rb")
    return h5py.File(fh, "r"), fh


def list_keys(url: str) -> list[str]:
    """Names of the top-level entries of an HDF5 file (no data is read).

    Raises:
        OSError: the file is not readable HDF5.
    """
    f, fh = _open(url)
    try:
        return sorted(str(k) for k in f)
    finally:
        f.close()
        if fh is not None:
            fh.close()


def entry_bytes(value: Any) -> bytes:
    """An HDF5 entry's value (scalar bytes, opaque void or a uint8 array) as bytes."""
    if isinstance(value, bytes):  # numpy.bytes_ too
        return bytes(value)
    if isinstance(value, np.void):
        return value.tobytes()
    if isinstance(value, np.ndarray) and value.dtype == np.uint8:
        return value.tobytes()
    if isinstance(value, np.ndarray) and value.dtype.kind in "SV" and value.size == 1:
        return entry_bytes(value.reshape(())[()])
    raise EntryError(f"entry holds {type(value).__name__} {getattr(value, 'dtype', '')}, not image bytes")


class Readers:
    """Open HDF5 files by URL for one partition's reads (a context manager closing them at the end)."""

    def __init__(self) -> None:
        self._files: dict[str, tuple[Any, Any]] = {}

    def __enter__(self) -> Readers:
        return self

    def __exit__(self, *exc: Any) -> None:
        for f, fh in self._files.values():
            with contextlib.suppress(Exception):
                f.close()
            if fh is not None:
                with contextlib.suppress(Exception):
                    fh.close()
        self._files.clear()

    def _dataset(self, url: str, key: str):
        """The dataset ``key`` of the file at ``url``: a plain (hard-linked) dataset, never a group or a link.

        Raises:
            OSError: the file cannot be opened.
            EntryError: the entry is missing, a group, a soft or external link, or otherwise not a dataset.
        """
        import h5py

        if url not in self._files:
            self._files[url] = _open(url)
        f = self._files[url][0]
        try:
            link = f.get(key, getlink=True)
            if link is None:
                raise EntryError(f"no entry {key!r} in {url}")
            if not isinstance(link, h5py.HardLink):  # an external link would read another file
                raise EntryError(f"entry {key!r} is a {type(link).__name__} (to {getattr(link, 'path', '?')!r}), "
                                 "not a dataset of image bytes")
            obj = f[key]
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise EntryError(f"entry {key!r} unreadable: {exc}") from None
        if not isinstance(obj, h5py.Dataset):
            kind = "group" if isinstance(obj, h5py.Group) else type(obj).__name__
            raise EntryError(f"entry {key!r} is an HDF5 {kind}, not a dataset of image bytes")
        return obj

    def size(self, url: str, key: str) -> int:
        """Bytes that reading entry ``key`` would produce, from its metadata (no data is read).

        The larger of the stored size and the logical size (``dtype.itemsize`` × the number of elements):
        a compressed or sparse (chunked, fill-value) dataset stores far fewer bytes than it decodes to. A
        variable-length entry's logical size is unknown before reading; only a single item is accepted
        (its bytes are checked once read, see :func:`melanoma_data.pipeline.read_input`).

        Raises:
            OSError: the file cannot be opened.
            EntryError: the entry is missing, not a dataset, or holds several variable-length items.
        """
        import h5py

        ds = self._dataset(url, key)
        try:
            count = int(ds.size or 0)
            if h5py.check_vlen_dtype(ds.dtype) is not None and count != 1:
                raise EntryError(f"entry {key!r} holds {count:,} variable-length items, not image bytes")
            return max(int(ds.id.get_storage_size()), count * int(ds.dtype.itemsize))
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise EntryError(f"entry {key!r} unreadable: {exc}") from None

    def read(self, url: str, key: str) -> bytes:
        """The bytes of entry ``key`` of the HDF5 file at ``url``.

        Raises:
            OSError: the file cannot be opened, or the entry's storage is unreadable (h5py raises
                OSError for corrupt or truncated data).
            EntryError: the entry is missing, not a dataset or does not hold bytes.
        """
        ds = self._dataset(url, key)
        try:
            value = ds[()]
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise EntryError(f"entry {key!r} unreadable: {exc}") from None
        return entry_bytes(value)
