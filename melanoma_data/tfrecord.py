"""TFRecord files without TensorFlow: ``tf.train.Example`` encoding, record framing, label encodings.

The files are read unchanged by the parser the 2020 community notebooks used::

    {"image": tf.io.FixedLenFeature([], tf.string), "image_name": tf.io.FixedLenFeature([], tf.string),
     "patient_id": tf.io.FixedLenFeature([], tf.int64), "sex": ..., "age_approx": ...,
     "anatom_site_general_challenge": ..., "diagnosis": ..., "target": ...}   # int64 each

A record is ``uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)``
(little endian); TensorFlow's reader checks both CRCs. The ``Example`` protobuf is written by hand
(it is four nested messages), so preprocessing workers never import TensorFlow or protobuf.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO

import crc32c as _crc32c
import pandas as pd

from melanoma_data.columns import SEXES, SITES_2020, TFRECORD_COLUMNS

#: Integer-coded features of the community format, in the order the notebooks list them (from the column table).
INT_FEATURES = [c.name for c in TFRECORD_COLUMNS if c.tfrecord in ("code", "int") and c.group == "metadata"]
#: Features test records omit.
LABEL_FEATURES = [c.tfrecord_name or c.name for c in TFRECORD_COLUMNS if c.models == "label"]
MISSING = -1

#: The 2020 diagnoses, so that codes do not depend on which ones a dataset happens to contain.
DIAGNOSES_2020 = [
    "atypical melanocytic proliferation",
    "cafe-au-lait macule",
    "lentigo NOS",
    "lichenoid keratosis",
    "melanoma",
    "nevus",
    "seborrheic keratosis",
    "solar lentigo",
    "unknown",
]


class CorruptRecord(ValueError):
    """A TFRecord file whose framing or CRCs are wrong."""


# ------------------------------------------------------------------------------ framing


def masked_crc(data: bytes) -> int:
    """TFRecord's masked CRC32C of ``data``."""
    crc = _crc32c.crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """One framed record (length, its CRC, data, data CRC)."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc(length)) + data + struct.pack("<I", masked_crc(data))


def iter_records(blob: bytes, *, check_crc: bool = True) -> Iterator[bytes]:
    """The record payloads of a TFRecord file's content.

    Raises:
        CorruptRecord: truncated file or CRC mismatch (with the record's offset).
    """
    return iter_stream(io.BytesIO(blob), check_crc=check_crc)


def iter_stream(fh: BinaryIO, *, check_crc: bool = True) -> Iterator[bytes]:
    """The record payloads of an open TFRecord file, read record by record (nothing else is held).

    Raises:
        CorruptRecord: truncated file or CRC mismatch (with the record's offset).
    """
    pos = 0
    while True:
        head = fh.read(12)
        if not head:
            return
        if len(head) < 12:
            raise CorruptRecord(f"truncated record header at byte {pos}")
        header = head[:8]
        (length,) = struct.unpack("<Q", header)
        (hcrc,) = struct.unpack("<I", head[8:12])
        if check_crc and hcrc != masked_crc(header):
            raise CorruptRecord(f"length CRC mismatch at byte {pos}")
        body = fh.read(length + 4)
        if len(body) < length + 4:
            raise CorruptRecord(f"truncated record at byte {pos} (needs {length} bytes)")
        data = body[:length]
        (dcrc,) = struct.unpack("<I", body[length:])
        if check_crc and dcrc != masked_crc(data):
            raise CorruptRecord(f"data CRC mismatch in the record at byte {pos}")
        yield data
        pos += 12 + length + 4


# ------------------------------------------------------------------------------ protobuf


def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # negative int64 → two's complement, 10 bytes, as protobuf does
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _len_field(field: int, payload: bytes) -> bytes:
    return _varint((field << 3) | 2) + _varint(len(payload)) + payload


def _feature(value: bytes | int | float | Sequence[Any]) -> bytes:
    values = list(value) if isinstance(value, list | tuple) else [value]
    if all(isinstance(v, bytes) for v in values):
        return _len_field(1, b"".join(_len_field(1, v) for v in values))  # BytesList
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return _len_field(3, _len_field(1, b"".join(_varint(v) for v in values)))  # Int64List, packed
    if all(isinstance(v, float) for v in values):
        return _len_field(2, _len_field(1, struct.pack(f"<{len(values)}f", *values)))  # FloatList, packed
    raise TypeError(f"feature values must all be bytes, int or float, got {values!r}")


def encode_example(features: Mapping[str, bytes | int | float | Sequence[Any]]) -> bytes:
    """Serialise a ``tf.train.Example`` (keys sorted, so equal input gives equal bytes)."""
    entries = b"".join(
        _len_field(1, _len_field(1, key.encode()) + _len_field(2, _feature(features[key])))
        for key in sorted(features)
    )
    return _len_field(1, entries)  # Example.features → Features.feature map entries


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise CorruptRecord(f"truncated or overlong varint at byte {pos} of a {len(buf)}-byte message")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 2:
            n, pos = _read_varint(buf, pos)
            if pos + n > len(buf):
                raise CorruptRecord(f"field {field} claims {n} bytes at byte {pos} of a {len(buf)}-byte message")
            yield field, wire, buf[pos : pos + n]
            pos += n
        elif wire == 0:
            v, pos = _read_varint(buf, pos)
            yield field, wire, v
        elif wire == 5:
            if pos + 4 > len(buf):
                raise CorruptRecord(f"field {field} truncated at byte {pos} of a {len(buf)}-byte message")
            yield field, wire, buf[pos : pos + 4]
            pos += 4
        else:
            raise CorruptRecord(f"unsupported protobuf wire type {wire}")


def _signed(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def decode_example(data: bytes) -> dict[str, list[Any]]:
    """Parse a serialised ``tf.train.Example`` into ``{name: [values]}`` (pure Python, for checks)."""
    out: dict[str, list[Any]] = {}
    for _, _, features in _fields(data):
        for _, _, entry in _fields(features):
            key, values = "", []
            for f, _, v in _fields(entry):
                if f == 1:
                    key = v.decode()
                elif f == 2:
                    for kind, _, lst in _fields(v):
                        for _, wire, item in _fields(lst):
                            if kind == 1:
                                values.append(bytes(item))
                            elif kind == 3:
                                if wire == 2:
                                    p = 0
                                    while p < len(item):
                                        x, p = _read_varint(item, p)
                                        values.append(_signed(x))
                                else:
                                    values.append(_signed(item))
                            elif kind == 2:  # packed (wire 2) or one fixed32 (wire 5): raw floats either way
                                values.extend(struct.unpack(f"<{len(item) // 4}f", item))
            out[key] = values
    return out


def read_file(blob: bytes, name: str = "TFRecord file") -> list[dict[str, list[Any]]]:
    """All examples of a TFRecord file's content, CRCs checked.

    Raises:
        CorruptRecord: bad framing, CRCs or protobuf, naming ``name`` and the record's byte offset.
    """
    out, pos = [], 0
    try:
        for record in iter_records(blob):
            try:
                out.append(decode_example(record))
            except CorruptRecord as exc:
                raise CorruptRecord(f"{name}: the record at byte {pos} is not a valid Example: {exc}") from None
            pos += 16 + len(record)
    except CorruptRecord as exc:
        if str(exc).startswith(name):
            raise
        raise CorruptRecord(f"{name}: {exc}") from None
    return out


# ------------------------------------------------------------------------------ label encodings


def build_encodings(meta: pd.DataFrame) -> dict[str, Any]:
    """String ↔ int codes for the integer features (stored in the manifest).

    Fixed vocabularies where the domain is known (sex, the six 2020 sites, the 2020 diagnoses,
    extended in sorted order by any other diagnosis present); ``patient_id`` codes are the sorted
    patient ids of the dataset. Missing values are -1 everywhere; ``age_approx`` is the age in whole
    years, missing → -1.
    """
    diagnoses = sorted(set(DIAGNOSES_2020) | {d for d in meta["diagnosis"].dropna().astype(str)},
                       key=lambda d: (d not in DIAGNOSES_2020, d))
    patients = sorted({p for p in meta["patient_id"].dropna().astype(str)})
    return {
        "missing": MISSING,
        "sex": {v: i for i, v in enumerate(SEXES)},
        "anatom_site_general_challenge": {v: i for i, v in enumerate(SITES_2020)},
        "diagnosis": {v: i for i, v in enumerate(diagnoses)},
        "patient_id": {v: i for i, v in enumerate(patients)},
        "age_approx": "whole years; missing -> -1",
        "target": "0 benign, 1 melanoma (omitted in test records)",
    }


def code(mapping: Mapping[str, int], value: Any) -> int:
    """A metadata value's integer code under one of :func:`build_encodings`' vocabularies (-1: missing or
    unknown). The one encoder of metadata strings: TFRecords, tree features and one-hot columns use it."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return MISSING
    return int(mapping.get(str(value), MISSING))


def codes(mapping: Mapping[str, int], values: Iterable[Any]) -> list[int]:
    """:func:`code` of each value."""
    return [code(mapping, v) for v in values]


def example_for_row(row: Mapping[str, Any], encodings: Mapping[str, Any], labelled: bool) -> bytes:
    """The serialised Example for one shard row: every column the table gives a TFRecord encoding
    (the community features + original width/height); ``label`` columns only in labelled records."""
    features: dict[str, Any] = {}
    for col in TFRECORD_COLUMNS:
        if col.models == "label" and not labelled:
            continue
        value = row.get(col.name)
        if col.tfrecord == "bytes":
            encoded: Any = bytes(value) if isinstance(value, bytes | bytearray | memoryview) else str(value).encode()
        elif col.tfrecord == "code":
            encoded = code(encodings[col.name], value)
        else:  # int: whole numbers, missing -> -1
            encoded = MISSING if value is None or pd.isna(value) else int(round(float(value)))
        features[col.tfrecord_name or col.name] = encoded
    return encode_example(features)


def tfrecord_bytes(rows: Iterable[Mapping[str, Any]], encodings: Mapping[str, Any], labelled: bool) -> bytes:
    """A whole TFRecord file's content for ``rows``."""
    return b"".join(frame_record(example_for_row(r, encodings, labelled)) for r in rows)


def file_name(split: str, index: int, count: int) -> str:
    """``train{NN:02d}-{count}.tfrec`` / ``test{NN:02d}-{count}.tfrec`` (the community naming)."""
    return f"{split}{index:02d}-{count}.tfrec"
