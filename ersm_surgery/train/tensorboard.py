"""TensorBoard logging of a run (``--log-tensorboard DIR``): one point per epoch for every number of the epoch row.

Tags: ``train/loss``, ``train/energy``, ``train/top1``, ``train/density``, ``train/density/<mask>``,
``train/lr``, ``train/gamma``, ``train/tau``, ``val/loss``, ``val/top1``, ``val/top5``,
``val/density/<mask>``, ``val/density_std/<mask>`` and ``time/epoch_s``. TensorBoard is an optional extra:
``pip install "ersm-surgery[tensorboard]"``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..optional import install_hint
from .errors import TrainingError

__all__ = ["TensorboardLog", "require_tensorboard", "tag_of", "INSTALL_HINT"]

INSTALL_HINT = install_hint("tensorboard")  # the one place that knows which extra installs what


def require_tensorboard() -> type:
    """torch's ``SummaryWriter``; raises the one-line install hint when the tensorboard package is missing.

    Raises:
        TrainingError: tensorboard is not installed.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch raises ImportError naming TensorBoard when the package is absent
        raise TrainingError("--log-tensorboard needs the tensorboard package, which is not installed",
                            INSTALL_HINT) from exc
    return SummaryWriter


def tag_of(key: str) -> str | None:
    """The TensorBoard tag of an epoch-row key (None for keys that are not logged)."""
    if key in ("epoch", "skipped_images"):
        return None
    if key == "epoch_s":
        return "time/epoch_s"
    if key.startswith("val_"):
        return "val/" + key[4:]
    if key.startswith(("density/", "density_std/")):
        return "val/" + key
    if key.startswith("train_"):
        return "train/" + key[6:]
    return "train/" + key


class TensorboardLog:
    """Writes each epoch row as scalars at step ``epoch`` (primary process only).

    Args:
        log_dir: the event files' folder (created).
    """

    def __init__(self, log_dir: str | Path) -> None:
        writer = require_tensorboard()
        self.log_dir = Path(log_dir)
        self.writer = writer(log_dir=str(self.log_dir))

    def write(self, row: dict[str, Any]) -> None:
        step = int(row["epoch"])
        for key, value in row.items():
            tag = tag_of(key)
            if tag is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(tag, float(value), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
