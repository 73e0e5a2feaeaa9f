"""Atomic file writes and hashing (used by the cache, runs and the registry)."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the whole new one.

    The bytes go to a temporary file in the same folder, are flushed to disk, and the
    temporary file is renamed over ``path`` (atomic on POSIX).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file ordinary permissions
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, payload: object) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: First bytes of a file written by :func:`pack_arrays`.
ARRAYS_MAGIC = b"ADEXARR1"
_ALIGN = 64


def pack_arrays(arrays: dict) -> bytes:
    """Named numpy arrays as one flat byte string (for many small cache files, where
    ``np.load`` of an ``.npz`` costs ~2 ms of zip and header parsing per file).

    Layout: ``ARRAYS_MAGIC``, the header length (8 bytes, little endian), a JSON header
    ``{"arrays": [[name, dtype, shape, offset, nbytes], ...], "sha256": ...}`` and the raw
    C-order data, each array aligned to 64 bytes. ``sha256`` covers the array list and the
    data (:func:`_arrays_checksum`), so :func:`unpack_arrays` detects a damaged file. Only
    numeric, boolean and fixed-width string dtypes (no objects, nothing executed on read).
    """
    import numpy as np

    entries, chunks, offset = [], [], 0
    for name, value in arrays.items():
        array = np.asarray(value)  # tobytes() writes C order whatever the strides
        if array.dtype.kind not in "biufcU":
            raise TypeError(f"pack_arrays: {name} has dtype {array.dtype}; only numbers, booleans and strings")
        data = array.tobytes()
        entries.append([name, array.dtype.str, list(array.shape), offset, len(data)])
        pad = -len(data) % _ALIGN
        chunks.append(data + b"\0" * pad)
        offset += len(data) + pad
    body = b"".join(chunks)
    header = json.dumps({"arrays": entries, "sha256": _arrays_checksum(entries, body)}, separators=(",", ":")).encode()
    header += b" " * (-(len(ARRAYS_MAGIC) + 8 + len(header)) % _ALIGN)
    return ARRAYS_MAGIC + len(header).to_bytes(8, "little") + header + body


def _arrays_checksum(entries: list, body) -> str:
    """sha256 (hex) of the canonical JSON of the array list followed by the data bytes."""
    digest = hashlib.sha256(json.dumps(entries, separators=(",", ":")).encode())
    digest.update(body)
    return digest.hexdigest()


def unpack_arrays(data: bytes, require_checksum: bool = False) -> dict:
    """The arrays of :func:`pack_arrays` (writable copies). ValueError on anything else
    (wrong magic, truncated data, unsupported dtype, checksum mismatch).

    Files written before the checksum existed have none and are accepted, unless
    ``require_checksum`` (the prediction caches, whose entries are cheap to rebuild)."""
    import numpy as np

    if data[: len(ARRAYS_MAGIC)] != ARRAYS_MAGIC or len(data) < len(ARRAYS_MAGIC) + 8:
        raise ValueError("not an adex array file")
    start = len(ARRAYS_MAGIC) + 8
    size = int.from_bytes(data[len(ARRAYS_MAGIC):start], "little")
    if size > len(data) - start:
        raise ValueError("adex array file: truncated header")
    try:
        header = json.loads(data[start:start + size])
        entries = header["arrays"]
        checksum = header.get("sha256")
        if not isinstance(entries, list) or not all(isinstance(e, list) and len(e) == 5 for e in entries):
            raise TypeError("bad array list")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"adex array file: unreadable header ({exc})") from None
    base = start + size
    if checksum is not None:
        if checksum != _arrays_checksum(entries, memoryview(data)[base:]):
            raise ValueError("adex array file: checksum mismatch (damaged file)")
    elif require_checksum:
        raise ValueError("adex array file: no checksum")
    out = {}
    for name, dtype, shape, offset, nbytes in entries:
        try:
            dtype = np.dtype(dtype)
            count = int(np.prod(shape, dtype=np.int64))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"adex array file: bad entry for {name!r} ({exc})") from None
        if dtype.kind not in "biufcU":
            raise ValueError(f"adex array file: unsupported dtype {dtype} for {name}")
        if count < 0 or count * dtype.itemsize != nbytes or not 0 <= offset <= len(data) - base - nbytes:
            raise ValueError(f"adex array file: {name} is truncated or inconsistent")
        out[name] = np.frombuffer(data, dtype=dtype, count=count, offset=base + offset).reshape(shape).copy()
    return out
