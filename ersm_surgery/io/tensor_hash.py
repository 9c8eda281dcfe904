"""The tensor hash: one byte stream, computed from tensors in memory or streamed from their file.

An ersm-surgery weights file stores, in its header metadata, a SHA-256 over its tensors and its recipe
(``ersm_sha256``) and the format version that promises it (``ersm_format``). The hash is **unkeyed**: it
detects accidental corruption and edits made without recomputing it (integrity), not a deliberate
forgery, since anyone can recompute it (no authenticity; sign the file or compare the digest with one
obtained over a trusted channel for that). See docs/reliability.md.

Hashed byte stream (version 1, ``_HASH_DOMAIN``): the domain tag, then per tensor in name order (Unicode
code points) ``u64 len(desc) || desc || u64 nbytes || data`` with ``desc = json.dumps([name, dtype,
shape], separators=(",", ":"))`` in UTF-8 and dtype the safetensors name, then ``u64 len(extra) ||
extra``; u64 are little-endian. The digest does not depend on the tensors' order in the file or on the
other metadata, which can therefore store it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ArtifactError

if TYPE_CHECKING:
    import torch

    from .safetensors_header import SafetensorsHeader

__all__ = [
    "DTYPE_BITS", "SHA256_KEY", "FORMAT_KEY", "FORMAT_VERSION", "state_sha256", "file_sha256", "format_of",
    "verify_digest", "torch_dtype_names",
]  # fmt: skip

_log = logging.getLogger(__name__)

# Bits per element of every dtype in safetensors 0.8 (Rust enum ``Dtype``, 22 variants). F4 and F6 are
# packed below one byte, so a tensor's size is numel * bits / 8 and must land on a byte boundary.
DTYPE_BITS: dict[str, int] = {
    "BOOL": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6, "U8": 8, "I8": 8,
    "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
    "C64": 64, "F64": 64, "I64": 64, "U64": 64,
}  # fmt: skip
# torch dtype attribute -> safetensors name (the names safetensors.torch writes)
_TORCH_NAMES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16", "int64": "I64",
    "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL", "complex64": "C64",
    "uint16": "U16", "uint32": "U32", "uint64": "U64", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
    "float8_e4m3fnuz": "F8_E4M3FNUZ", "float8_e5m2fnuz": "F8_E5M2FNUZ", "float8_e8m0fnu": "F8_E8M0",
}  # fmt: skip

SHA256_KEY = "ersm_sha256"  # the digest below, extra = the recipe JSON (UTF-8)
FORMAT_KEY = "ersm_format"  # the file format version; from version 2 on, SHA256_KEY is mandatory
# 1: the sha256 was optional (files written before FORMAT_KEY existed carry no FORMAT_KEY);
# 2: every file carries it, so a version-2 file without it was edited and is refused.
FORMAT_VERSION = 2
_HASH_DOMAIN = b"ersm-surgery tensor-data-sha256 v1\n"  # versions the byte layout hashed
_CHUNK = 1 << 20
# names only flags that exist: the export command's --no-verify, and load()'s verify argument
_REEXPORT = ("re-export the model; to accept the file as it is: ersm_surgery.load(path, verify=False), or "
             "ersm-surgery export PATH --no-verify")
_warned_old: set[str] = set()


def torch_dtype_names() -> dict[torch.dtype, str]:
    """torch dtype -> safetensors dtype name, for the dtypes this torch has."""
    import torch

    return {getattr(torch, k): v for k, v in _TORCH_NAMES.items() if hasattr(torch, k)}


def _desc(name: str, dtype: str, shape: list[int], nbytes: int) -> bytes:
    desc = json.dumps([name, dtype, shape], separators=(",", ":")).encode("utf-8")
    return len(desc).to_bytes(8, "little") + desc + nbytes.to_bytes(8, "little")


def state_sha256(tensors: Mapping[str, torch.Tensor], extra: bytes = b"") -> str:
    """The digest of tensors in memory, byte for byte what :func:`file_sha256` computes from their file.

    Hashing before writing saves reading the file back. Tensor bytes are taken in native order, which is
    the file's little-endian order on every platform torch ships for.

    Args:
        tensors: name -> tensor, as written to (or read from) the safetensors file.
        extra: bytes appended to the hash (the recipe JSON).

    Returns:
        The hex digest.

    Raises:
        ArtifactError: a tensor's dtype has no safetensors name.
    """
    import torch

    names = torch_dtype_names()
    digest = hashlib.sha256(_HASH_DOMAIN)
    for name in sorted(tensors):
        t = tensors[name].detach()
        if t.dtype not in names:
            raise ArtifactError(f"tensor {name!r} has dtype {t.dtype}, which safetensors cannot store",
                                "convert it to a float or integer dtype")
        data = t.reshape(-1).contiguous().view(torch.uint8).cpu() if t.numel() else None
        digest.update(_desc(name, names[t.dtype], list(t.shape), 0 if data is None else data.numel()))
        if data is not None:
            digest.update(memoryview(data.numpy()))
    digest.update(len(extra).to_bytes(8, "little") + extra)
    return digest.hexdigest()


def file_sha256(path: str | Path, header: SafetensorsHeader, extra: bytes = b"") -> str:
    """The digest streamed from a file in 1 MiB chunks, without torch.

    Args:
        path: the file ``header`` was read from.
        header: its header, from :func:`.safetensors_header.read_header`.
        extra: bytes appended to the hash, e.g. the recipe JSON.

    Raises:
        ArtifactError: the file is missing, or its size changed since ``header`` was read.
    """
    from .safetensors_header import _TRUNCATED, _open, _open_unbuffered

    path = Path(path)
    digest = hashlib.sha256(_HASH_DOMAIN)
    buf = memoryview(bytearray(_CHUNK))
    with _open(path, _open_unbuffered) as f:
        size = f.seek(0, os.SEEK_END)
        if size != header.file_size:
            raise ArtifactError(f"{str(path)!r} is {size} bytes but its header was read at {header.file_size}",
                                "read the header again")
        for name in sorted(header.tensors):
            t = header.tensors[name]
            digest.update(_desc(name, t.dtype, list(t.shape), t.nbytes))
            f.seek(header.data_start + t.begin)
            left = t.nbytes
            while left:
                got = f.readinto(buf[: min(left, _CHUNK)])
                if not got:
                    raise ArtifactError(f"{str(path)!r} ended inside tensor {name!r}", _TRUNCATED)
                digest.update(buf[:got])
                left -= got
    digest.update(len(extra).to_bytes(8, "little") + extra)
    return digest.hexdigest()


def format_of(metadata: Mapping[str, str]) -> int:
    """The file format version a header claims (1 for files written before ``FORMAT_KEY`` existed).

    Raises:
        ArtifactError: the version is not an integer, or newer than this ersm-surgery reads.
    """
    raw = metadata.get(FORMAT_KEY)
    if raw is None:
        return 1
    try:
        version = int(raw)
    except ValueError:
        raise ArtifactError(f"metadata {FORMAT_KEY}={raw!r} is not a format version", _REEXPORT) from None
    if version > FORMAT_VERSION:
        raise ArtifactError(f"file format {version} is newer than this ersm-surgery reads ({FORMAT_VERSION})",
                            "upgrade ersm-surgery (pip install -U ersm-surgery)")
    return version


def verify_digest(where: str | Path, metadata: Mapping[str, str], actual: str | None) -> bool:
    """Apply the hash policy to a file's metadata and the digest computed from its tensors.

    A current-format file must carry its digest; a file of format 1 without one (written before the digest
    existed) passes with one warning per file and process.

    Args:
        where: the file, for the messages.
        metadata: its header metadata.
        actual: the digest computed from its tensors and recipe (None: not computed, e.g. ``--no-verify``).

    Returns:
        True when the digest was checked, False for an old file without one.

    Raises:
        ArtifactError: the digest is missing from a current-format file, or does not match.
    """
    stored = metadata.get(SHA256_KEY)
    version = format_of(metadata)
    if not stored:
        if version >= 2:
            raise ArtifactError(f"{str(where)!r} claims file format {version} but its {SHA256_KEY} is missing: the "
                                "header was edited", _REEXPORT)
        if str(where) not in _warned_old:
            _warned_old.add(str(where))
            _log.warning("%s has no sha256 (written by an older ersm-surgery); loaded without verifying it", where)
        return False
    if actual is not None and actual != stored:
        raise ArtifactError(f"sha256 mismatch in {str(where)!r}: the tensor data or the recipe was changed after"
                            f" it was written (stored {stored[:12]}..., computed {actual[:12]}...)", _REEXPORT)
    return True
