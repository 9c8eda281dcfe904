"""What ersm-surgery adds to safetensors' own header parser: the pickle sniff, clear lines, a light reader.

A safetensors file is an 8-byte little-endian length N, N bytes of UTF-8 JSON describing every tensor
(``dtype``, ``shape``, ``data_offsets`` relative to the data buffer) plus optional ``__metadata__``
(str -> str), then the data buffer at byte 8 + N. Validating that header is safetensors' job:
``read_header`` asks its parser (``safe_open`` with numpy, no torch, the data memory-mapped and not
read) and turns its errors into one line. What only this module does: recognise PyTorch pickles and say
how to convert them, name truncated files as such (with "copy it again" rather than "re-export"), refuse
repeated tensor names (safetensors keeps the last one silently), and give ``ersm-surgery info`` the
header as Python objects after reading exactly its first 8 + N bytes. The tensor hash is
:mod:`.tensor_hash`'s.
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

__all__ = [
    "MAX_HEADER_SIZE",
    "SafetensorsHeader",
    "TensorInfo",
    "is_torch_pickle",
    "read_header",
]

MAX_HEADER_SIZE = 100_000_000  # safetensors' own limit; anything larger is corruption, not a model
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save() since 1.6 writes a zip archive
_PICKLE_PROTO = 0x80  # pickle protocol >= 2 starts with the PROTO opcode, then the protocol number

_REEXPORT = "re-export the model"
_TRUNCATED = "the file is truncated: copy it again, or re-export the model"
_PICKLE_FIX = ("read it with torch.load(path, weights_only=True) and write it with safetensors.torch.save_file, "
               "or pass it as --pretrained-path (read with weights_only=True)")

Opener = Callable[[Path], IO[bytes]]


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives in the data buffer.

    Attributes:
        dtype: safetensors dtype name, a key of :data:`.tensor_hash.DTYPE_BITS`.
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


def _needed(raw: bytes) -> int:
    """The data length the header asks for (0 when it cannot be read): to word the fix of a coverage error."""
    try:
        obj = json.loads(raw)
        return max((int(v["data_offsets"][1]) for k, v in obj.items() if k != "__metadata__"), default=0)
    except Exception:  # the header is invalid anyway; safetensors' reason says why
        return 0


def _validate(path: Path, raw: bytes, data_len: int) -> None:
    """Let safetensors' parser judge the header; its error becomes one line with the fix that fits it."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            f.keys()
    except (SafetensorError, OSError, ValueError) as exc:
        reason = " ".join(str(exc).split()).removeprefix("Error while deserializing header: ")
        fix = _TRUNCATED if "not fully covered" in reason and data_len < _needed(raw) else _REEXPORT
        raise ArtifactError(f"{str(path)!r} is not a valid safetensors file ({reason[:300]})", fix) from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json keeps the last of repeated keys, as safetensors does; a repeated tensor name makes the file ambiguous
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ArtifactError(f"key {key!r} appears twice in the header", _REEXPORT)
        out[key] = value
    return out


def read_header(path: str | Path, *, opener: Opener = _open_unbuffered) -> SafetensorsHeader:
    """Read the header of a safetensors file (its first 8 + N bytes), validated by safetensors' parser.

    Args:
        path: the ``.safetensors`` file.
        opener: opens ``path`` for binary reading; the default is unbuffered so no tensor data is read
            ahead. Tests pass one that counts the bytes read.

    Returns:
        The parsed header.

    Raises:
        ArtifactError: the file is missing, empty, truncated, a PyTorch pickle, has a repeated tensor
            name, or safetensors rejects its header (the line carries safetensors' reason).
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
    _validate(path, raw, size - 8 - n)
    obj = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)  # valid: safetensors parsed it
    metadata = dict(obj.pop("__metadata__", None) or {})
    tensors = {name: TensorInfo(e["dtype"], tuple(e["shape"]), *e["data_offsets"]) for name, e in obj.items()}
    return SafetensorsHeader(path, metadata, tensors, n, 8 + n, size)
