"""Time ``ersm-surgery info`` on a ~100 MB masked model (resnet50 with masks after stages 2 and 3).

Run: ``python benchmarks/bench_info.py [--model resnet50] [--repeat 5] [--keep DIR]``. Prints the median time of
``file_info()`` in process, of the whole ``ersm-surgery info FILE --json`` command (Python start-up included),
of a bare ``python -c pass`` for reference, and of ``file_info(verify=True)``, which reads all the data.
No network: the model has random weights.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from _timing import median_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50", help="timm model to mask and save (resnet50: ~100 MB)")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per measurement (median reported)")
    parser.add_argument("--keep", help="write the model here and keep it (default: a temporary folder)")
    args = parser.parse_args()

    import ersm_surgery
    from ersm_surgery.io.file_info import file_info

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.keep or tmp) / f"{args.model}-ersm"
        if not (folder / "model.safetensors").is_file():
            ersm_surgery.save(ersm_surgery.inject(args.model, stages=[2, 3]), folder)
        path = folder / "model.safetensors"
        info = file_info(path)
        command = [str(Path(sys.executable).with_name("ersm-surgery")), "info", str(path), "--json"]
        if not Path(command[0]).exists():
            command = [sys.executable, "-m", "ersm_surgery.cli.main", "info", str(path), "--json"]
        run = lambda argv: subprocess.run(argv, check=True, capture_output=True)  # noqa: E731
        run(command)  # warm the page cache and the bytecode
        t_lib = median_seconds(lambda: file_info(path), args.repeat)
        t_cli = median_seconds(lambda: run(command), args.repeat)
        t_python = median_seconds(lambda: run([sys.executable, "-c", "pass"]), args.repeat)
        t_verify = median_seconds(lambda: file_info(path, verify=True), max(1, args.repeat // 2))

    mib = info["file_bytes"] / 2**20
    print(f"file: {mib:.1f} MiB, {info['tensors']['count']} tensors, header {info['header_bytes']:,} bytes, "
          f"{len(info['masks'])} mask layers")
    print(f"file_info (header only), in process   median of {args.repeat}: {t_lib * 1e3:9.2f} ms")
    print(f"ersm-surgery info --json, whole command median of {args.repeat}: {t_cli * 1e3:9.2f} ms")
    print(f"python -c pass (start-up, reference)  median of {args.repeat}: {t_python * 1e3:9.2f} ms")
    print(f"file_info(verify=True), reads the data:                {t_verify * 1e3:9.2f} ms "
          f"({mib / t_verify:,.0f} MiB/s)")


if __name__ == "__main__":
    main()
