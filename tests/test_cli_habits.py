"""CLI habits shared by every command: python -m, --help everywhere, one --device, one -j default, -o/--output,
shell completion, and optional dependencies that are missing (simulated in a child process)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import click
import pytest
import torch

import ersm_surgery
from ersm_surgery.cli._common import WORKERS_DEFAULT, check_device
from ersm_surgery.cli.main import COMMANDS
from ersm_surgery.train.config import FinetuneConfig
from tests.conftest import run

ROOT = Path(__file__).resolve().parents[1]


def _child(code: str, env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *(["-c", code] if code else [])], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, timeout=timeout)


def test_python_m_and_help_on_every_command() -> None:
    proc = subprocess.run([sys.executable, "-m", "ersm_surgery", "--help"], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert proc.returncode == 0 and "Usage: ersm-surgery" in proc.stdout
    for name in COMMANDS:
        assert name in proc.stdout
        result = run(name, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output, (name, result.output)


def test_one_device_option_checked_in_one_place() -> None:
    assert check_device("auto") in ("cpu", "cuda", "mps") and check_device(" CPU ") == "cpu"
    for bad in ("gpu", "cuda:x", "cuda:", "tpu:0"):
        with pytest.raises(click.BadParameter, match="auto, cpu, cuda, cuda:N, mps"):
            check_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(click.BadParameter, match="no CUDA device"):
            check_device("cuda:1")
    for command in ("finetune", "evaluate"):
        help_text = run(command, "--help").output
        assert "--device DEVICE" in help_text and "auto, cpu, cuda, cuda:N, mps" in help_text
        result = run(command, "somewhere", "--dataset", "builtin:clutter", "--device", "gpu")
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and "'gpu' is not a device" in lines[0], result.output
    for args in (("run", "test_resnet", "--stages", "2"), ("reproduce", "--model", "test_resnet")):
        assert "--device DEVICE" in run(args[0], "--help").output
        result = run(*args, "--device", "gpu")  # refused before any training
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and "'gpu' is not a device" in lines[0], result.output


def test_workers_default_is_the_same_everywhere() -> None:
    assert WORKERS_DEFAULT == FinetuneConfig().workers
    for command in ("finetune", "evaluate"):
        help_text = " ".join(run(command, "--help").output.split())
        assert f"-j, --workers INTEGER RANGE DataLoader worker processes. [default: {WORKERS_DEFAULT}]" in help_text


def test_evaluate_output_is_o_and_out_is_a_hidden_deprecated_alias(tmp_path: Path) -> None:
    help_text = run("evaluate", "--help").output
    assert "-o, --output" in help_text and "--out " not in help_text
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("mine")
    result = run("evaluate", "m", "--dataset", "builtin:clutter", "--out", taken)
    assert "--out is deprecated; use -o/--output" in result.output
    assert result.exit_code == 1 and "exists and is not empty" in result.output  # --out went where -o goes
    result = run("evaluate", "m", "--dataset", "builtin:clutter", "--out", taken, "-o", taken)
    assert result.exit_code == 2 and "give -o/--output only" in result.output


def test_shell_completion_lists_the_commands() -> None:
    env = {"_ERSM_SURGERY_COMPLETE": "bash_complete", "COMP_WORDS": "ersm-surgery ex", "COMP_CWORD": "1"}
    proc = subprocess.run([sys.executable, "-m", "ersm_surgery"], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **env}, timeout=120)
    assert proc.returncode == 0 and "plain,export" in proc.stdout.split(), proc.stdout + proc.stderr
    env["_ERSM_SURGERY_COMPLETE"] = "bash_source"
    proc = subprocess.run([sys.executable, "-m", "ersm_surgery"], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **env}, timeout=120)
    assert proc.returncode == 0 and "_ersm_surgery_completion" in proc.stdout


def test_missing_optional_dependencies_give_the_install_line(tmp_path: Path) -> None:
    """onnx and onnxruntime made unimportable in a child (sys.modules[name] = None), as on a plain install."""
    saved = tmp_path / "m"
    ersm_surgery.save(ersm_surgery.inject("test_resnet", stages=[2], input_size=(3, 64, 64), num_classes=3), saved)
    code = textwrap.dedent(f"""
        import json, sys
        sys.modules["onnx"] = None
        sys.modules["onnxruntime"] = None
        sys.modules["tensorboard"] = None
        from click.testing import CliRunner
        from ersm_surgery.cli.main import cli
        from ersm_surgery.optional import require, MissingDependencyError
        out = {{}}
        for key, args in (("onnx", ["export", {str(saved)!r}, "--format", "onnx", "-o", {str(tmp_path / "a")!r}]),
                          ("default", ["export", {str(saved)!r}, "-o", {str(tmp_path / "b")!r}])):
            r = CliRunner().invoke(cli, args)
            out[key] = [r.exit_code, r.output]
        try:
            require("tensorboard", "TensorBoard logging (--log-tensorboard)")
        except MissingDependencyError as exc:
            out["tensorboard"] = str(exc)
        print(json.dumps(out))
    """)
    proc = _child(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    code_, text = out["onnx"]
    lines = text.strip().splitlines()
    assert code_ == 1 and len(lines) == 1 and "Traceback" not in text
    assert lines[0] == "Error: ONNX export needs onnx, which is not installed; pip install \"ersm-surgery[onnx]\""
    code_, text = out["default"]
    assert code_ == 0, text
    assert "skipped onnx: onnx, onnxruntime not installed; pip install \"ersm-surgery[onnx]\"" in " ".join(text.split())
    assert (tmp_path / "b" / "model.safetensors").is_file() and not (tmp_path / "b" / "model.onnx").exists()
    assert not (tmp_path / "a").exists()
    assert out["tensorboard"] == ("TensorBoard logging (--log-tensorboard) needs tensorboard, which is not installed; "
                                  "pip install \"ersm-surgery[tensorboard]\"")
