"""Read and check a safetensors header without touching the tensor data.

A safetensors file is an 8-byte little-endian length N, N bytes of UTF-8 JSON describing every tensor
(``dtype``, ``shape``, ``data_offsets`` relative to the data buffer) plus optional ``__metadata__``
(str -> str), then the data buffer at byte 8 + N. ``read_header`` reads exactly those first 8 + N bytes
and rejects everything safetensors 0.8 rejects, so ``ersm-surgery info`` stays instant on large exports.
The tensor hash is :mod:`.tensor_hash`'s.
"""
from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ersm_surgery.errors import ArtifactError

from .tensor_hash import DTYPE_BITS

__all__ = [
    "DTYPE_BITS",
    "MAX_HEADER_SIZE",
    "SafetensorsHeader",
    "TensorInfo",
    "is_torch_pickle",
    "read_header",
]

MAX_HEADER_SIZE = 100_000_000  # safetensors' own limit; anything larger is corruption, not a model
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save() since 1.6 writes a zip archive
_PICKLE_PROTO = 0x80  # pickle protocol >= 2 starts with the PROTO opcode, then the protocol number
_MAX_LISTED = 5

_REEXPORT = "re-export the model"
_TRUNCATED = "the file is truncated: copy it again, or re-export the model"
_PICKLE_FIX = ("read it with torch.load(path, weights_only=True) and write it with safetensors.torch.save_file, "
               "or pass it as --pretrained-path (read with weights_only=True)")

Opener = Callable[[Path], IO[bytes]]


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in the data buffer.

    Attributes:
        dtype: safetensors dtype name, a key of ``DTYPE_BITS``.
        shape: dimensions; ``()`` for a scalar.
        begin: first byte, relative to the start of the data buffer.
        end: one past the last byte, relative to the start of the data buffer.
    """

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes."""
        return self.end - self.begin


@dataclass(frozen=True)
class SafetensorsHeader:
    """The parsed, validated header of a safetensors file.

    Attributes:
        path: the file it was read from.
        metadata: the ``__metadata__`` mapping (empty when absent).
        tensors: tensor name -> ``TensorInfo``, in header order.
        header_size: N, the length of the JSON header in bytes.
        data_start: 8 + N, the file offset of the data buffer.
        file_size: size of the file in bytes when it was read.
    """

    path: Path
    metadata: dict[str, str]
    tensors: dict[str, TensorInfo]
    header_size: int
    data_start: int
    file_size: int

    @property
    def tensor_bytes(self) -> int:
        """Total bytes of tensor data (equals the data buffer size for a valid file)."""
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def num_tensors(self) -> int:
        """Number of tensors in the file."""
        return len(self.tensors)


def _open_unbuffered(path: Path) -> IO[bytes]:
    # Unbuffered, so the operating system is asked for the header bytes only, not a read-ahead block.
    return open(path, "rb", buffering=0)


def _open(path: Path, opener: Opener) -> IO[bytes]:
    try:
        return opener(path)
    except FileNotFoundError:
        raise ArtifactError(f"safetensors file {str(path)!r} does not exist", "check the path") from None
    except IsADirectoryError:
        raise ArtifactError(f"{str(path)!r} is a folder", "pass the .safetensors file inside it") from None
    except PermissionError:
        raise ArtifactError(f"{str(path)!r} cannot be read (permission denied)", "fix its permissions") from None


def _read_exact(f: IO[bytes], n: int) -> bytes:
    # A raw read may return fewer bytes than asked, so loop; stop early only at end of file.
    parts = []
    while n > 0:
        part = f.read(min(n, MAX_HEADER_SIZE))
        if not part:
            break
        parts.append(part)
        n -= len(part)
    return b"".join(parts)


def _looks_like_torch_pickle(first: bytes, size: int) -> bool:
    """Whether the first (up to 9) bytes of a file of ``size`` bytes mark a pickle or torch zip."""
    if not (first.startswith(_ZIP_MAGIC) or (len(first) >= 2 and first[0] == _PICKLE_PROTO and 2 <= first[1] <= 5)):
        return False
    # Valid safetensors can start with these bytes too (N = 640 begins b"\x80\x02"), so only call it a
    # pickle when the bytes cannot be a safetensors header.
    if len(first) < 9:
        return True
    (n,) = struct.unpack("<Q", first[:8])
    return not (n <= MAX_HEADER_SIZE and 8 + n <= size and first[8:9] in b"{ \t\r\n")


def is_torch_pickle(path: str | Path) -> bool:
    """Whether ``path`` is a pickled PyTorch checkpoint (``torch.save`` zip or legacy pickle).

    Args:
        path: the file to sniff; only its first 9 bytes are read.

    Returns:
        True for a zip archive or a protocol 2-5 pickle that is not a valid-looking safetensors header;
        False otherwise, including when the file cannot be opened (like ``zipfile.is_zipfile``).
    """
    try:
        with _open_unbuffered(Path(path)) as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(0)
            return _looks_like_torch_pickle(_read_exact(f, 9), size)
    except OSError:
        return False


def _pickle_error(path: Path) -> ArtifactError:
    return ArtifactError(f"{str(path)!r} is a PyTorch pickle checkpoint, not safetensors", _PICKLE_FIX)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of repeated keys silently; a repeated tensor name makes the file ambiguous.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} appears twice")
        out[key] = value
    return out


def _parse_json(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ArtifactError(f"{str(path)!r}: header is not valid UTF-8 ({err.reason} at byte {8 + err.start})",
                            _REEXPORT) from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except (ValueError, RecursionError) as err:
        raise ArtifactError(f"{str(path)!r}: header is not valid JSON ({err})", _REEXPORT) from None
    if not isinstance(obj, dict):
        raise ArtifactError(f"{str(path)!r}: header is a JSON {type(obj).__name__}, not an object", _REEXPORT)
    return obj


def _parse_metadata(path: Path, raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ArtifactError(f"{str(path)!r}: __metadata__ is a JSON {type(raw).__name__}, not an object", _REEXPORT)
    bad = [k for k, v in raw.items() if not isinstance(v, str)]
    if bad:
        shown = ", ".join(f"{k!r}={raw[k]!r}" for k in bad[:_MAX_LISTED])
        raise ArtifactError(f"{str(path)!r}: __metadata__ values must be strings, got {shown}", _REEXPORT)
    return dict(raw)


def _is_count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _parse_tensor(name: str, raw: Any) -> TensorInfo | str:
    """A ``TensorInfo``, or the reason the entry ``raw`` is invalid (the data range is checked later)."""
    if not isinstance(raw, dict) or not {"dtype", "shape", "data_offsets"} <= raw.keys():
        return f"{name!r} must be an object with dtype, shape and data_offsets"
    dtype, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
    if dtype not in DTYPE_BITS:
        return f"{name!r} has dtype {dtype!r}, not one of {', '.join(DTYPE_BITS)}"
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        return f"{name!r} has shape {shape!r}, not a list of non-negative integers"
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        return f"{name!r} has data_offsets {offsets!r}, not [begin, end] non-negative integers"
    begin, end = offsets
    if begin > end:
        return f"{name!r} has data_offsets {offsets!r} with begin > end"
    numel = 1
    for d in shape:
        numel *= d
    bits = numel * DTYPE_BITS[dtype]
    if bits % 8:
        return f"{name!r} packs {numel} x {dtype} into {bits} bits, which does not end on a byte boundary"
    if end - begin != bits // 8:
        return f"{name!r} spans {end - begin} bytes but shape {shape} x {dtype} needs {bits // 8}"
    return TensorInfo(dtype, tuple(shape), begin, end)


def _raise_listed(path: Path, what: str, problems: list[str], fix: str) -> None:
    if problems:
        more = f" (and {len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
        raise ArtifactError(f"{str(path)!r}: {what}: {' | '.join(problems[:_MAX_LISTED])}{more}", fix)


def _check_coverage(path: Path, tensors: dict[str, TensorInfo], data_len: int) -> None:
    # safetensors requires the tensors to tile the data buffer exactly: no overlap, no gap, no tail.
    problems = []
    covered, previous = 0, None
    for name, t in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end, item[0])):
        if t.begin < covered:
            problems.append(f"{name!r} (bytes {t.begin}-{t.end}) overlaps {previous!r} by {covered - t.begin} bytes")
        elif t.begin > covered:
            where = f"after {previous!r}" if previous is not None else "at the start of the data buffer"
            problems.append(f"gap of {t.begin - covered} unused bytes {where}, before {name!r}")
        if t.end >= covered:
            covered, previous = t.end, name
    if covered < data_len:
        problems.append(f"{data_len - covered} trailing bytes after the last tensor")
    _raise_listed(path, "data buffer is not exactly covered by the tensors", problems, _REEXPORT)


def read_header(path: str | Path, *, opener: Opener = _open_unbuffered) -> SafetensorsHeader:
    """Read and validate the header of a safetensors file, reading only its first 8 + N bytes.

    Args:
        path: the ``.safetensors`` file.
        opener: opens ``path`` for binary reading; the default is unbuffered so no tensor data is read
            ahead. Tests pass one that counts the bytes read.

    Returns:
        The parsed header.

    Raises:
        ArtifactError: the file is missing, empty, truncated, a PyTorch pickle, or its header is not a
            valid safetensors header (bad JSON, metadata, dtype, shape or offsets, or tensors that do not
            tile the data buffer exactly).
    """
    path = Path(path)
    with _open(path, opener) as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(0)
        head = _read_exact(f, 8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        fits = 0 <= n <= MAX_HEADER_SIZE and 8 + n <= size
        if not fits and _looks_like_torch_pickle(head, size):
            raise _pickle_error(path)
        if size == 0:
            raise ArtifactError(f"{str(path)!r} is empty (0 bytes)", _TRUNCATED)
        if n < 0:
            raise ArtifactError(f"{str(path)!r} is {size} bytes, shorter than the 8-byte header length", _TRUNCATED)
        if n > MAX_HEADER_SIZE:
            raise ArtifactError(f"{str(path)!r}: header length {n} exceeds safetensors' limit of {MAX_HEADER_SIZE}"
                                " bytes, so it is corrupt or not a safetensors file", _REEXPORT)
        if not fits:
            raise ArtifactError(f"{str(path)!r}: header length {n} runs past the end of the {size}-byte file",
                                _TRUNCATED)
        raw = _read_exact(f, n)
    if len(raw) < n:
        raise ArtifactError(f"{str(path)!r} shrank while its header was read", "read it again")
    if _looks_like_torch_pickle(head + raw[:1], size):
        raise _pickle_error(path)

    obj = _parse_json(path, raw)
    metadata = _parse_metadata(path, obj.pop("__metadata__", None))
    parsed = {name: _parse_tensor(name, entry) for name, entry in obj.items()}
    _raise_listed(path, "invalid tensor entries", [p for p in parsed.values() if isinstance(p, str)], _REEXPORT)
    tensors = {name: t for name, t in parsed.items() if isinstance(t, TensorInfo)}
    data_len = size - 8 - n
    beyond = [f"{name!r} ends at data byte {t.end}" for name, t in tensors.items() if t.end > data_len]
    _raise_listed(path, f"tensors run past the {data_len}-byte data buffer", beyond, _TRUNCATED)
    _check_coverage(path, tensors, data_len)
    return SafetensorsHeader(path, metadata, tensors, n, 8 + n, size)
