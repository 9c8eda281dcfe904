"""The run folder of ``finetune``: best and last model, training state, summary.csv, args.yaml.

    OUT/
      model.safetensors  recipe.yaml  config.json     the best model (val top-1): ersm_surgery.load(OUT)
      last/
        model.safetensors  recipe.yaml  config.json   the model after the last finished epoch
        train_state.pt                                 optimizer, scheduler, epoch, update, RNG, data order
      summary.csv                                      one row per epoch
      args.yaml                                        every setting of the run

Every file is written under a temporary name and renamed into place. ``train_state.pt`` holds only
tensors and plain containers (RNG states are converted to tensors and lists), so it is read back with
``torch.load(weights_only=True)``; it is written after the last model and names that model's sha256,
so a run stopped between the two writes is detected instead of resumed from mismatched files.
"""
from __future__ import annotations

import csv
import io
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from ..errors import ArtifactError
from ..io import atomic_path, atomic_write_text, read_metadata, save
from ..io.artifact import SHA256_KEY, WEIGHTS

__all__ = ["RunFolder", "capture_rng", "restore_rng", "seed_everything", "load_train_state", "find_train_state",
           "STATE_FILE",
           "STATE_FORMAT"]

STATE_FILE = "train_state.pt"
STATE_FORMAT = "ersm-finetune-state/1"
LAST = "last"


def capture_rng() -> dict[str, Any]:
    """This process's python, numpy and torch (and CUDA) RNG states, as tensors and plain values."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": str(name), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed python, numpy and torch with ``seed + rank`` (timm's ``random_seed``)."""
    random.seed(seed + rank)
    np.random.seed((seed + rank) % 2**32)
    torch.manual_seed(seed + rank)


def restore_rng(state: dict[str, Any]) -> None:
    """Set the RNGs back to a state from :func:`capture_rng`."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state((npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def find_train_state(path: str | Path) -> Path:
    """The train_state.pt of a run: given the run folder, its last/ folder or the file itself.

    Raises:
        ArtifactError: none there.
    """
    path = Path(path)
    for candidate in (path, path / STATE_FILE, path / LAST / STATE_FILE):
        if candidate.is_file():
            return candidate
    raise ArtifactError(f"no {STATE_FILE} at {str(path)!r}",
                        "pass --resume the output folder of an earlier finetune run (it holds last/train_state.pt)")


def load_train_state(path: str | Path) -> tuple[dict[str, Any], Path]:
    """Read a run's training state (``torch.load(weights_only=True)``) and check its model file.

    Returns:
        The state and the folder of the model it belongs to (``OUT/last``).

    Raises:
        ArtifactError: missing, unreadable, not a finetune state, or its model file is not the one it names.
    """
    file = find_train_state(path)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a corrupt or unsafe file
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise ArtifactError(f"cannot read {str(file)!r} ({type(exc).__name__}: {first})",
                            "the file is corrupt; resume from another run or start afresh") from exc
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ArtifactError(f"{str(file)!r} is not an ersm-surgery training state",
                            "pass --resume the output folder of a finetune run")
    folder = file.parent
    try:
        sha = read_metadata(folder / WEIGHTS).get(SHA256_KEY)
    except ArtifactError as exc:
        raise ArtifactError(f"the run at {str(folder)!r} has a training state but no readable model ({exc.problem})",
                            "resume from another run or start afresh") from exc
    if sha != state.get("weights_sha256"):
        raise ArtifactError(f"{str(folder / WEIGHTS)!r} is not the model {STATE_FILE} was saved with (the run was "
                            "stopped while writing its checkpoint, or a file was replaced)",
                            "resume from another run or start afresh")
    return state, folder


class RunFolder:
    """Writes a run's files (call only on the primary process).

    Args:
        root: the output folder.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.last = self.root / LAST

    def save_best(self, model: nn.Module) -> None:
        save(model, self.root, force=True)

    def save_last(self, model: nn.Module, state: dict[str, Any]) -> None:
        """The model, then the training state naming the model's sha256 (see the module docstring)."""
        save(model, self.last, force=True)
        state = {**state, "format": STATE_FORMAT,
                 "weights_sha256": read_metadata(self.last / WEIGHTS).get(SHA256_KEY)}
        with atomic_path(self.last / STATE_FILE) as tmp:
            torch.save(state, tmp)

    def write_summary(self, rows: list[dict[str, Any]]) -> None:
        columns: list[str] = []
        for row in rows:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _fmt(v) for k, v in row.items()})
        atomic_write_text(self.root / "summary.csv", buf.getvalue())

    def write_args(self, args: dict[str, Any]) -> None:
        atomic_write_text(self.root / "args.yaml", yaml.safe_dump(args, sort_keys=False))


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value
