"""fsspec helpers: resolve paths/URLs, list files, atomic writes (temporary name, then rename)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import re
import socket
import threading
import time
import unicodedata
import uuid
from collections.abc import Iterator
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from melanoma_data.errors import InputError

TMP_MARK = ".tmp-"


def resolve(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """Return the filesystem and the protocol-less path for a local path or fsspec URL."""
    try:
        fs, path = fsspec.core.url_to_fs(str(url))
    except ImportError as exc:  # e.g. s3:// without s3fs
        extra = (" (the cloud extra: uv sync --all-extras; uv sync --extra cloud alone removes the other extras)"
                 if str(url).startswith(("s3://", "s3a://")) else "")
        raise InputError(f"{url}: the filesystem's package is not installed{extra}: {exc}") from None
    if isinstance(fs, LocalFileSystem):
        path = fs._strip_protocol(path)
    return fs, path.rstrip("/") or "/"


def join(base: str, *parts: str) -> str:
    """Join path components with ``/`` (fsspec paths are POSIX-style on every filesystem)."""
    return posixpath.join(base, *parts)


def to_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """The string that :func:`resolve` turns back into ``(fs, path)``."""
    return fs.unstrip_protocol(path) if not isinstance(fs, LocalFileSystem) else path


class UnsafePath(ValueError):
    """A path read from a file (a manifest, a shard's ``rel_path``) that would leave its folder."""


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


def within(base: str, rel: Any, what: str) -> str:
    """``base/rel`` when ``rel`` is a plain relative path that stays inside ``base``.

    Raises:
        UnsafePath: ``rel`` is empty, absolute, a URL, uses backslashes or has a ``..`` component
            (naming ``what``, e.g. the manifest entry).
    """
    if (not isinstance(rel, str) or not rel or rel.startswith(("/", "~")) or "\\" in rel or "\x00" in rel
            or _SCHEME.match(rel) or any(part in ("..",) for part in rel.split("/"))):
        raise UnsafePath(f"{what} = {rel!r} is not a path inside {base}")
    return join(base, rel)


#: The image-name rule, versioned: it decides which inputs are written. 2: any Unicode name, normalised to
#: NFC, refused only for a path separator, ``.`` or ``..``, a control character or more than
#: :data:`MAX_NAME_BYTES` in UTF-8. 1 (before): ASCII letters, digits, ``_ - .``, no ``..``, at most 200.
NAME_RULE = "2"
MAX_NAME_BYTES = 255
_NAME_RULE_1 = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,199}$")
#: bidirectional-text controls (a name displayed reversed): refused like control characters
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def normalise_name(name: str) -> str:
    """An image name in Unicode NFC (``é`` typed as one code point or as ``e`` + accent is one name)."""
    return unicodedata.normalize("NFC", name)


def name_rule_1_accepts(name: str) -> bool:
    """Whether the previous name rule (1) accepted ``name`` (used to keep old fingerprints where nothing changed)."""
    return bool(_NAME_RULE_1.match(name)) and ".." not in name


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an image name under :data:`NAME_RULE`, or None when it can.

    Refused: a path separator (``/`` or ``\\``), a name that is ``.`` or ``..``, a control character
    (C0, DEL, C1, line/paragraph separators, bidirectional-text controls, lone surrogates) and more than
    :data:`MAX_NAME_BYTES` bytes in UTF-8. Everything else is an ordinary name (``_DSC0001``, ``élève``,
    ``a..2``).
    """
    if name_rule_1_accepts(name):  # the common case: plain ASCII names
        return None
    if "/" in name or "\\" in name:
        return "contains a path separator ('/' or '\\')"
    if name in (".", ".."):
        return "is a relative path component ('.' or '..')"
    for c in name:
        if unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") or c in _BIDI:
            return f"contains the control character U+{ord(c):04X}"
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        return f"is {size} bytes long in UTF-8, above the limit of {MAX_NAME_BYTES}"
    return None


def cat_or_none(fs: fsspec.AbstractFileSystem, path: str) -> bytes | None:
    """A small file's bytes, or None when it does not exist.

    Asks the store itself instead of ``fs.exists``: object-store filesystems (s3fs) answer ``exists``
    from a cached listing, which misses files other processes (Dask workers) wrote since it was taken.
    """
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        return None


def forget_listings(fs: fsspec.AbstractFileSystem) -> None:
    """Drop cached directory listings (after other processes wrote below a folder this one listed)."""
    if not isinstance(fs, LocalFileSystem):
        fs.invalidate_cache()


def atomic_write(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either nothing or the whole file."""
    with atomic_open(fs, path, digest=False) as out:
        out.write(data)


def sha256_file(fs: fsspec.AbstractFileSystem, path: str, chunk: int = 8 << 20) -> str:
    """Hex sha256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class HashingReader:
    """A read-only file wrapper that hashes what is read (one pass: parse and checksum together)."""

    def __init__(self, fh: Any) -> None:
        self._fh = fh
        self._hash = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        data = self._fh.read(n)
        self._hash.update(data)
        return data

    def sha256_to_end(self) -> str:
        """Hex digest of the whole file (reading whatever the parser left unread)."""
        while self.read(8 << 20):
            pass
        return self._hash.hexdigest()


class HashingWriter:
    """A write-only file wrapper that counts the bytes written and their sha256."""

    def __init__(self, fh: Any, digest: bool = True) -> None:
        self._fh = fh
        self._hash = hashlib.sha256() if digest else None
        self.bytes = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        data = bytes(data)
        if self._hash is not None:
            self._hash.update(data)
        self.bytes += len(data)
        self._fh.write(data)
        return len(data)

    def tell(self) -> int:
        return self.bytes

    def flush(self) -> None:
        self._fh.flush()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    def close(self) -> None:  # the context manager closes the real file
        self.closed = True

    @property
    def sha256(self) -> str:
        """Hex digest of everything written so far (``digest=True`` only)."""
        return self._hash.hexdigest() if self._hash is not None else ""


@contextlib.contextmanager
def atomic_open(fs: fsspec.AbstractFileSystem, path: str, digest: bool = True) -> Iterator[HashingWriter]:
    """Stream a file to ``path`` atomically: written under a temporary name, renamed on success.

    Yields a :class:`HashingWriter` (``.bytes`` and, with ``digest``, ``.sha256`` once done). On an
    exception the temporary file is removed and nothing appears at ``path``.
    """
    tmp = f"{path}{TMP_MARK}{uuid.uuid4().hex}"
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    try:
        with fs.open(tmp, "wb") as fh:
            yield HashingWriter(fh, digest)
        fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        raise


def remove_temporaries(fs: fsspec.AbstractFileSystem, root: str) -> int:
    """Delete leftovers of interrupted atomic writes below ``root``; returns how many."""
    if not fs.exists(root):
        return 0
    stale = [p for p in fs.find(root) if TMP_MARK in posixpath.basename(p)]
    for p in stale:
        fs.rm(p)
    return len(stale)


def file_stat(info: dict[str, Any]) -> tuple[int, float]:
    """(size, modification time) from an fsspec ``info`` dict, whatever the filesystem names them."""
    size = int(info.get("size") or 0)
    mtime = info.get("mtime") or info.get("LastModified") or info.get("created") or 0
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return size, float(mtime)


# ----------------------------------------------------------------- output locks

LOCK_FILE = ".lock.json"
#: seconds between the owner's refreshes of its lock file
LOCK_HEARTBEAT_S = 30.0
#: a lock file not refreshed for this long is stale (its owner died on another host, or lost its store)
LOCK_STALE_S = 300.0


class LockHeld(Exception):
    """Another live run owns the lock; ``owner`` is what its lock file says."""

    def __init__(self, path: str, owner: dict[str, Any]) -> None:
        super().__init__(path)
        self.path = path
        self.owner = owner


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_owner(fs: fsspec.AbstractFileSystem, path: str) -> tuple[dict[str, Any] | None, float]:
    """(what the lock file at ``path`` says, seconds since it was refreshed); (None, 0) when there is none."""
    data = cat_or_none(fs, path)
    if data is None:
        return None, 0.0
    try:
        owner = json.loads(data)
        if not isinstance(owner, dict):
            raise ValueError("not an object")
    except (ValueError, UnicodeDecodeError):
        owner = {}
    try:
        mtime = file_stat(fs.info(path))[1]
    except FileNotFoundError:
        return None, 0.0
    refreshed = max(float(owner.get("refreshed") or 0.0), mtime)
    return owner, max(0.0, time.time() - refreshed)


def lock_is_stale(owner: dict[str, Any], age_s: float) -> bool:
    """A lock whose owner is a dead process on this host, or that was not refreshed for :data:`LOCK_STALE_S`."""
    if age_s > LOCK_STALE_S:
        return True
    pid = owner.get("pid")
    return owner.get("host") == socket.gethostname() and isinstance(pid, int) and not _pid_alive(pid)


class OutputLock:
    """An owner file at ``path`` that says this process writes there, refreshed by a daemon thread.

    Local disks: created with ``O_CREAT | O_EXCL`` (one winner). Object stores have no exclusive create:
    the file is written when none exists or the one there is stale, then read back; a run that finds
    another run's token refuses (best effort: two runs starting within the store's latency can both win).
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, path: str, what: str = "") -> None:
        self.fs = fs
        self.path = path
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex,
                      "started": time.time(), "refreshed": time.time(), "what": what}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _create(self) -> bool:
        data = json.dumps(self.owner).encode()
        if isinstance(self.fs, LocalFileSystem):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            return True
        if cat_or_none(self.fs, self.path) is not None:
            return False
        self.fs.pipe_file(self.path, data)
        forget_listings(self.fs)
        back = cat_or_none(self.fs, self.path)
        return back is not None and json.loads(back).get("token") == self.owner["token"]

    def acquire(self) -> OutputLock:
        """Take the lock, replacing a stale one.

        Raises:
            LockHeld: a live run owns it.
        """
        parent = posixpath.dirname(self.path)
        if parent:
            self.fs.makedirs(parent, exist_ok=True)
        for _ in range(3):
            if self._create():
                self._thread = threading.Thread(target=self._beat, name="output-lock", daemon=True)
                self._thread.start()
                return self
            owner, age = lock_owner(self.fs, self.path)
            if owner is None:
                continue  # released meanwhile
            if not lock_is_stale(owner, age):
                raise LockHeld(self.path, owner)
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm(self.path)
        owner, _ = lock_owner(self.fs, self.path)
        raise LockHeld(self.path, owner or {})

    def _beat(self) -> None:
        while not self._stop.wait(LOCK_HEARTBEAT_S):
            with contextlib.suppress(Exception):
                self.owner["refreshed"] = time.time()
                if isinstance(self.fs, LocalFileSystem):
                    os.utime(self.path)
                else:
                    self.fs.pipe_file(self.path, json.dumps(self.owner).encode())

    def release(self) -> None:
        """Stop refreshing and remove the lock file (only when it is still ours)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        data = cat_or_none(self.fs, self.path)
        with contextlib.suppress(ValueError, UnicodeDecodeError, FileNotFoundError):
            if data is not None and json.loads(data).get("token") == self.owner["token"]:
                self.fs.rm(self.path)

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
