"""Tests for the header-only safetensors reader: real files from safetensors, then corrupted byte-wise."""
from __future__ import annotations

import io
import json
import pickle
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ersm_surgery.errors import ArtifactError
from ersm_surgery.io.safetensors_header import (
    MAX_HEADER_SIZE,
    TensorInfo,
    is_torch_pickle,
    read_header,
)
from ersm_surgery.io.tensor_hash import DTYPE_BITS, file_sha256

F32_2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {
        "conv.weight": torch.randn(8, 3, 3, 3, generator=g),
        "conv.bias": torch.randn(8, generator=g).half(),
        "bn.num_batches_tracked": torch.tensor(7, dtype=torch.int64),
        "mask.bf16": torch.randn(4, 5, generator=g).bfloat16(),
        "mask.keep": torch.rand(3, 3, generator=g) > 0.5,
        "q.f8": torch.randn(6, generator=g).to(torch.float8_e4m3fn),
        "empty": torch.zeros(0, 4),
    }


@pytest.fixture
def good(tmp_path: Path) -> Path:
    path = tmp_path / "model.safetensors"
    save_file(_tensors(), str(path), metadata={"format": "pt", "recipe": '{"stages": [2, 3]}'})
    return path


def _split(path: Path) -> tuple[dict[str, Any], bytes]:
    """The header as a dict and the data buffer of a safetensors file."""
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def _write(path: Path, header: dict[str, Any] | bytes, data: bytes = b"") -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def _rewrite(path: Path, header: dict[str, Any], data: bytes | None = None) -> Path:
    return _write(path, header, _split(path)[1] if data is None else data)


def _by_begin(header: dict[str, Any]) -> list[str]:
    return sorted((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"])


def _error(path: Path) -> str:
    """The ArtifactError read_header raises, checking that safetensors rejects the file too."""
    with pytest.raises(ArtifactError) as info:
        read_header(path)
    message = str(info.value)
    assert "\n" not in message and info.value.fix and message.endswith(info.value.fix)
    with pytest.raises((SafetensorError, OSError, ValueError)), safe_open(str(path), "pt") as f:
        f.keys()
    return message


# Good files.


def test_reads_metadata_shapes_and_offsets(good: Path) -> None:
    header = read_header(good)
    tensors = _tensors()
    assert header.metadata == {"format": "pt", "recipe": '{"stages": [2, 3]}'}
    assert header.num_tensors == len(tensors)
    with safe_open(str(good), "pt") as f:
        assert set(f.keys()) == set(header.tensors)
        for name, t in tensors.items():
            info = header.tensors[name]
            assert info.shape == tuple(t.shape) == tuple(f.get_slice(name).get_shape())
            assert info.dtype == f.get_slice(name).get_dtype()
            assert info.nbytes == t.numel() * t.element_size()
    assert header.tensor_bytes == sum(t.numel() * t.element_size() for t in tensors.values())
    assert header.file_size == good.stat().st_size == header.data_start + header.tensor_bytes
    assert header.data_start == 8 + header.header_size
    scalar = header.tensors["bn.num_batches_tracked"]
    assert (scalar.dtype, scalar.shape, scalar.nbytes) == ("I64", (), 8)
    assert header.tensors["empty"].nbytes == 0


def test_reads_only_the_header(good: Path) -> None:
    class CountingFile(io.FileIO):
        """Records how many bytes the reader takes and the furthest position it reaches."""

        taken = 0
        furthest = 0

        def read(self, size: int = -1) -> bytes:
            data = super().read(size)
            CountingFile.taken += len(data)
            CountingFile.furthest = max(CountingFile.furthest, self.tell())
            return data

        def readinto(self, buffer: Any) -> int:
            raise AssertionError("read_header must not read into buffers")

        def readall(self) -> bytes:
            raise AssertionError("read_header must not read the whole file")

    header = read_header(good, opener=lambda p: CountingFile(p, "r"))
    assert CountingFile.taken == CountingFile.furthest == header.data_start < header.file_size


def test_empty_header_and_no_metadata(tmp_path: Path) -> None:
    header = read_header(_write(tmp_path / "e.safetensors", {}))
    assert (header.metadata, header.tensors, header.tensor_bytes) == ({}, {}, 0)


def test_sub_byte_dtypes_must_end_on_a_byte(tmp_path: Path) -> None:
    ok = {"a": {"dtype": "F4", "shape": [4], "data_offsets": [0, 2]}, "b": {"dtype": "F6_E2M3", "shape": [4],
                                                                            "data_offsets": [2, 5]}}
    assert read_header(_write(tmp_path / "ok.safetensors", ok, b"\0" * 5)).tensor_bytes == 5
    odd = {"a": {"dtype": "F4", "shape": [3], "data_offsets": [0, 2]}}
    assert "byte boundary" in _error(_write(tmp_path / "odd.safetensors", odd, b"\0" * 2))


def test_dtype_table_matches_safetensors_torch() -> None:
    from safetensors.torch import _TYPES

    for name, dtype in _TYPES.items():
        if dtype is not None:
            assert DTYPE_BITS[name] == dtype.itemsize * 8, name


# Truncated, empty and oversized files.


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist; check the path"):
        read_header(tmp_path / "nope.safetensors")
    with pytest.raises(ArtifactError, match="is a folder"):
        read_header(tmp_path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    assert "is empty" in _error(path)
    assert not is_torch_pickle(path)


def test_shorter_than_eight_bytes(tmp_path: Path) -> None:
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x10\x00\x00")
    assert "shorter than the 8-byte header length; the file is truncated" in _error(path)


def test_truncated_data(good: Path) -> None:
    good.write_bytes(good.read_bytes()[:-10])
    assert "not fully covered" in _error(good) and "the file is truncated" in _error(good)


def test_truncated_inside_header(good: Path) -> None:
    blob = good.read_bytes()
    good.write_bytes(blob[: 8 + struct.unpack("<Q", blob[:8])[0] // 2])
    assert "runs past the end" in _error(good)


def test_header_length_larger_than_file(good: Path) -> None:
    blob = good.read_bytes()
    good.write_bytes(struct.pack("<Q", len(blob)) + blob[8:])
    assert "runs past the end" in _error(good)


def test_absurd_header_length(good: Path) -> None:
    blob = good.read_bytes()
    good.write_bytes(struct.pack("<Q", MAX_HEADER_SIZE + 1) + blob[8:])
    assert "exceeds safetensors' limit" in _error(good)


# Bad JSON and metadata.


def test_bad_json(good: Path) -> None:
    blob = bytearray(good.read_bytes())
    blob[8 + 3 : 8 + 7] = b"\x01{[:"
    good.write_bytes(bytes(blob))
    assert "invalid JSON in header" in _error(good)


def test_not_utf8(tmp_path: Path) -> None:
    assert "invalid UTF-8 in header" in _error(_write(tmp_path / "u.safetensors", b'{"\xff": 1}'))


def test_header_not_an_object(tmp_path: Path) -> None:
    assert "invalid type: sequence" in _error(_write(tmp_path / "l.safetensors", b"[]"))


def test_non_string_metadata(good: Path) -> None:
    header, _ = _split(good)
    header["__metadata__"]["epochs"] = 3
    assert "invalid type: integer `3`, expected a string" in _error(_rewrite(good, header))


def test_duplicate_tensor_names_are_rejected(tmp_path: Path) -> None:
    # Stricter than safetensors (which keeps the last one): a repeated name makes the file ambiguous.
    entry = json.dumps(F32_2)
    path = _write(tmp_path / "d.safetensors", f'{{"a": {entry}, "a": {entry}}}'.encode(), b"\0" * 8)
    with pytest.raises(ArtifactError, match="key 'a' appears twice"):
        read_header(path)


# Bad tensor entries.


def test_unknown_dtype_lists_the_valid_ones(good: Path) -> None:
    header, _ = _split(good)
    header["conv.weight"]["dtype"] = "F33"
    message = _error(_rewrite(good, header))
    assert "unknown variant `F33`, expected one of `BOOL`, `F4`," in message and "F8_E5M2FNUZ" in message


@pytest.mark.parametrize("shape", [[-1, 3], [2.0, 4], [True], "8"])
def test_bad_shape(good: Path, shape: Any) -> None:
    header, _ = _split(good)
    header["conv.weight"]["shape"] = shape
    message = _error(_rewrite(good, header))
    assert "expected usize" in message or "expected a sequence" in message


def test_wrong_byte_length_for_shape(good: Path) -> None:
    header, _ = _split(good)
    header["conv.weight"]["shape"] = [8, 3, 3, 2]
    assert "invalid shape, data type, or offset for tensor); re-export" in _error(_rewrite(good, header))


def test_out_of_range_offsets(good: Path) -> None:
    header, data = _split(good)
    last = _by_begin(header)[-1]
    begin, end = header[last]["data_offsets"]
    header[last]["data_offsets"] = [begin + 8, end + 8]
    message = _error(_rewrite(good, header))
    assert f"invalid offset for tensor `{last}`" in message


def test_overlapping_offsets(good: Path) -> None:
    header, data = _split(good)
    first, second = _by_begin(header)[-2:]
    shift = 4
    header[second]["data_offsets"] = [o - shift for o in header[second]["data_offsets"]]
    message = _error(_rewrite(good, header, data[:-shift]))
    assert f"invalid offset for tensor `{second}`" in message


def test_gap_between_tensors(good: Path) -> None:
    header, data = _split(good)
    first, second = _by_begin(header)[-2:]
    header[second]["data_offsets"] = [o + 4 for o in header[second]["data_offsets"]]
    message = _error(_rewrite(good, header, data + b"\0" * 4))
    assert f"invalid offset for tensor `{second}`" in message


def test_gap_at_start(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}
    assert "invalid offset for tensor `a`" in _error(_write(tmp_path / "g.safetensors", header, b"\0" * 12))


def test_trailing_bytes(good: Path) -> None:
    good.write_bytes(good.read_bytes() + b"\0" * 3)
    assert "not fully covered); re-export" in _error(good)  # longer than its tensors: not a truncation


def test_begin_after_end(tmp_path: Path) -> None:
    header = {"a": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}, "b": F32_2}
    assert "invalid offset for tensor `a`" in _error(_write(tmp_path / "b.safetensors", header, b"\0" * 8))


def test_a_bad_entry_is_named(good: Path) -> None:
    # safetensors stops at the first problem; the line carries its reason
    header, _ = _split(good)
    header["mask.keep"] = {"dtype": "BOOL"}
    assert "missing field `shape`" in _error(_rewrite(good, header))


# PyTorch pickles.


def test_torch_save_zip_is_named(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save(_tensors(), path)
    assert is_torch_pickle(path)
    message = _error(path)
    assert "is a PyTorch pickle checkpoint, not safetensors" in message and "weights_only=True" in message


def test_legacy_torch_save_is_named(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    torch.save({"w": torch.ones(3)}, path, _use_new_zipfile_serialization=False)
    assert is_torch_pickle(path)
    assert "PyTorch pickle checkpoint" in _error(path)


@pytest.mark.parametrize("obj", [None, {"w": list(range(1000))}])
def test_plain_pickle_is_named(tmp_path: Path, obj: Any) -> None:
    path = tmp_path / "state.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=4))
    assert is_torch_pickle(path)
    assert "PyTorch pickle checkpoint" in _error(path)


def test_safetensors_starting_like_a_pickle_is_not_one(tmp_path: Path) -> None:
    # A 640-byte header makes the file start with b"\x80\x02", the bytes of a protocol 2 pickle.
    raw = json.dumps({"a": F32_2}).encode().ljust(640)
    path = _write(tmp_path / "s.safetensors", raw, b"\0" * 8)
    assert path.read_bytes()[:2] == b"\x80\x02"
    assert not is_torch_pickle(path)
    assert read_header(path).tensors["a"] == TensorInfo("F32", (2,), 0, 8)


def test_is_torch_pickle_is_false_for_safetensors_and_missing(good: Path, tmp_path: Path) -> None:
    assert not is_torch_pickle(good)
    assert not is_torch_pickle(tmp_path / "missing.pt")


# Data hash.


def _reversed_layout(src: Path, dst: Path) -> Path:
    """Copy ``src`` with its tensors stored in reverse order in the data buffer (safetensors sorts them)."""
    header, data = _split(src)
    new_data = b""
    for name in reversed(_by_begin(header)):
        begin, end = header[name]["data_offsets"]
        header[name]["data_offsets"] = [len(new_data), len(new_data) + end - begin]
        new_data += data[begin:end]
    return _write(dst, header, new_data)


def test_hash_ignores_order_in_file_and_metadata(good: Path, tmp_path: Path) -> None:
    flipped = _reversed_layout(good, tmp_path / "flipped.safetensors")
    plain = tmp_path / "plain.safetensors"
    save_file(_tensors(), str(plain))  # no metadata
    header, header_flipped = read_header(good), read_header(flipped)
    assert [t.begin for t in header.tensors.values()] != [header_flipped.tensors[k].begin for k in header.tensors]
    with safe_open(str(good), "pt") as f, safe_open(str(flipped), "pt") as g:
        names = f.keys()
        assert all(torch.equal(f.get_tensor(k).float(), g.get_tensor(k).float()) for k in names)
    digest = file_sha256(good, header, b"recipe")
    assert digest == file_sha256(flipped, header_flipped, b"recipe")
    assert digest == file_sha256(plain, read_header(plain), b"recipe")
    assert digest == file_sha256(good, header, b"recipe")


def test_hash_covers_names_dtypes_and_shapes(good: Path) -> None:
    header, _ = _split(good)
    base = file_sha256(good, read_header(good))
    header["mask.bf16"]["dtype"] = "F16"  # same bytes, other dtype
    assert file_sha256(good, read_header(_rewrite(good, header))) != base
    header["mask.bf16"].update(dtype="BF16", shape=[5, 4])  # same bytes, other shape
    assert file_sha256(good, read_header(_rewrite(good, header))) != base
    header["mask.bf16"]["shape"] = [4, 5]
    assert file_sha256(good, read_header(_rewrite(good, header))) == base


def test_hash_changes_with_data_and_extra(good: Path) -> None:
    header = read_header(good)
    base = file_sha256(good, header, b'{"recipe": 1}')
    assert file_sha256(good, header, b'{"recipe": 2}') != base
    assert file_sha256(good, header) != base
    blob = bytearray(good.read_bytes())
    blob[-1] ^= 1
    good.write_bytes(bytes(blob))
    assert file_sha256(good, header, b'{"recipe": 1}') != base


def test_hash_rejects_a_changed_file(good: Path) -> None:
    header = read_header(good)
    good.write_bytes(good.read_bytes()[:-4])
    with pytest.raises(ArtifactError, match="read the header again"):
        file_sha256(good, header)
