"""Readers for the on-disk formats of the built-in data sets: IDX (MNIST, Fashion-MNIST) and
CIFAR-10's binary batches. Every reader checks what it reads and names the file in its errors.

IDX (LeCun et al.): a 4-byte magic ``0x00 0x00 <type> <ndim>``, then ``ndim`` big-endian
uint32 sizes, then the data. Files may be gzipped (detected by content, not by name).

CIFAR-10 binary: records of ``1 + 3*32*32`` bytes, a label then the red, green and blue planes.
"""

from __future__ import annotations

import gzip
import io
import math
import tarfile
from pathlib import Path

import numpy as np

__all__ = ["DataFormatError", "read_idx", "read_cifar_batches"]

IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
CIFAR_RECORD = 1 + 3 * 32 * 32


class DataFormatError(ValueError):
    """A data file is corrupt, truncated or not what it claims to be."""


class ImageTooLargeError(DataFormatError):
    """An image decodes, but has more pixels than Pillow's decompression-bomb limit allows."""


def _read_bytes(path: Path) -> bytes:
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataFormatError(f"{path}: corrupt or truncated gzip data ({err})") from None
    return raw


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (raw or gzipped) into a numpy array, checking magic, type code and length."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataFormatError(f"{path}: too short for an IDX header ({len(data)} bytes)")
    zero, type_code, ndim = data[:2], data[2], data[3]
    if zero != b"\x00\x00":
        raise DataFormatError(f"{path}: not an IDX file (magic {data[:4].hex()}, expected 0000<type><ndim>)")
    if type_code not in IDX_TYPES:
        raise DataFormatError(f"{path}: unknown IDX type code 0x{type_code:02x} (allowed: {', '.join(f'0x{t:02x}' for t in IDX_TYPES)})")
    if ndim == 0 or len(data) < 4 + 4 * ndim:
        raise DataFormatError(f"{path}: IDX header declares {ndim} dimensions but the file ends after {len(data)} bytes")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_TYPES[type_code])
    expected = 4 + 4 * ndim + math.prod(shape) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        raise DataFormatError(f"{path}: {what}: header says shape {shape} ({expected} bytes), file has {len(data)} bytes")
    array = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim).reshape(shape)
    return array.astype(dtype.newbyteorder("="), copy=False)


def _cifar_records(name: str, data: bytes) -> tuple[np.ndarray, np.ndarray]:
    if len(data) == 0 or len(data) % CIFAR_RECORD:
        raise DataFormatError(f"{name}: {len(data)} bytes is not a whole number of CIFAR-10 records of {CIFAR_RECORD} bytes")
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DataFormatError(f"{name}: label {labels.max()} out of range 0-9")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def read_cifar_batches(source: str | Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read CIFAR-10 binary batches, from a ``cifar-10-binary.tar.gz`` or a folder holding the ``.bin`` files.

    Returns images (N, 3, 32, 32) uint8 and labels (N,) int64.
    """
    source = Path(source)
    blobs = []
    if source.is_file():
        try:
            with tarfile.open(source, "r:gz") as tar:
                members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
                for name in names:
                    if name not in members:
                        raise DataFormatError(f"{source}: archive has no {name}")
                    blobs.append((f"{source}:{name}", tar.extractfile(members[name]).read()))
        except (tarfile.TarError, OSError, EOFError) as err:
            raise DataFormatError(f"{source}: corrupt or truncated archive ({err})") from None
    else:
        for name in names:
            blobs.append((str(source / name), (source / name).read_bytes()))
    parts = [_cifar_records(name, data) for name, data in blobs]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def to_idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX (used to make test fixtures)."""
    if array.dtype != np.uint8:
        raise ValueError(f"to_idx_bytes writes uint8 arrays, got {array.dtype}")
    buf = io.BytesIO()
    buf.write(bytes([0, 0, 0x08, array.ndim]))
    for size in array.shape:
        buf.write(int(size).to_bytes(4, "big"))
    buf.write(array.tobytes())
    return buf.getvalue()
