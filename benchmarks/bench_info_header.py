"""Time the header-only reader against loading a whole ~100 MB safetensors file.

Run: ``python benchmarks/bench_info_header.py [--mb 100] [--repeat 5]``. Prints the median times of
``read_header`` and of ``safetensors.torch.load_file`` on the whole file, with the file in the page cache.
load_file's default ``mmap`` backend maps tensors lazily and touches no data, so the ratio is given against
its ``pread`` backend and against mmap plus a copy of every tensor, which do read all bytes.
``file_sha256`` is timed for reference.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from _timing import median_seconds
from safetensors.torch import load_file, save_file

from ersm_surgery.io.safetensors_header import read_header
from ersm_surgery.io.tensor_hash import file_sha256


def _make_file(path: Path, megabytes: int) -> None:
    # Layers of 1 MiB to 4 MiB, like a ResNet-50 sized export, with the metadata an export carries.
    tensors, total, i = {}, 0, 0
    while total < megabytes * 2**20:
        numel = (2**18) * (1 + i % 4)
        tensors[f"layer{i}.weight"] = torch.randn(numel)
        total += numel * 4
        i += 1
    save_file(tensors, str(path), metadata={"format": "pt", "recipe": '{"stages": [2, 3]}'})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=100, help="size of the test file in MiB")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per method (median reported)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.safetensors"
        _make_file(path, args.mb)
        header = read_header(path)
        load_file(str(path))  # warm the page cache so both sides read from memory
        t_header = median_seconds(lambda: read_header(path), args.repeat)
        t_mmap = median_seconds(lambda: load_file(str(path)), args.repeat)
        t_pread = median_seconds(lambda: load_file(str(path), backend="pread"), args.repeat)
        t_copy = median_seconds(lambda: [t.clone() for t in load_file(str(path)).values()], args.repeat)
        t_hash = median_seconds(lambda: file_sha256(path, header), args.repeat)
    size_mb = header.file_size / 2**20
    print(f"file: {size_mb:.1f} MiB, {header.num_tensors} tensors, header {header.header_size} bytes")
    print(f"read_header             median of {args.repeat}: {t_header * 1e3:9.3f} ms")
    rows = [("load_file (mmap, lazy)", t_mmap), ("load_file (pread)", t_pread), ("load_file + clone all", t_copy)]
    for name, seconds in rows:
        print(f"{name:<22}  median of {args.repeat}: {seconds * 1e3:9.3f} ms   {seconds / t_header:8,.0f}x read_header")
    print(f"file_sha256      median of {args.repeat}: {t_hash * 1e3:9.3f} ms ({size_mb / t_hash:,.0f} MiB/s)")


if __name__ == "__main__":
    main()
