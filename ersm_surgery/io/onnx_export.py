"""ONNX export of a masked model (dynamic batch axis) and its parity check against PyTorch with onnxruntime.

The default exporter is torch's TorchScript-based one (``dynamo=False``): on the fx-surgered timm models
of the coverage list it exports every family the torch.export-based exporter does, in a fraction of the
time, and writes byte-identical files for the same model. Where it cannot (an operator it does not
support, e.g. VGG's adaptive pooling at a small input), ``exporter="auto"`` retries with the
torch.export-based exporter (``dynamo=True``, needs onnxscript).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ArtifactError

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

__all__ = ["EXPORTERS", "INPUT_NAME", "LOGITS_NAME", "energy_output_names", "export_onnx", "mask_output_names",
           "run_onnx", "with_mask_outputs"]

_log = logging.getLogger(__name__)

EXPORTERS = ("auto", "torchscript", "dynamo")
INPUT_NAME = "input"
LOGITS_NAME = "logits"
DEFAULT_OPSET = 18
_TRACE_BATCH = 2  # the batch the graph is traced with; the batch axis is exported as dynamic
_EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf caps a file at 2 GB: larger weights go to a .data file


def mask_output_names(model: nn.Module) -> list[str]:
    """ONNX output names of the masks added by ``with_masks``: ``mask:<layer path>``."""
    from ..mask_set import masks

    return [f"mask:{name}" for name in masks(model).names()]


def energy_output_names(model: nn.Module) -> list[str]:
    """ONNX output names of the token energies added by ``with_energies``: ``energy:<layer path>``."""
    from ..mask_set import masks

    return [f"energy:{name}" for name in masks(model).names()]


def with_mask_outputs(model: nn.Module, energies: bool = False) -> nn.Module:
    """A module that runs ``model`` and returns ``(logits, mask_1, ..., mask_k)``.

    Each mask is the (B, 1, H, W) mask its layer multiplied onto the features in that pass
    (``MaskState.mask``: hard or soft, as the layer's eval mode says), in ``masks(model)`` order. With
    ``energies``, the token energies e of every layer come first: ``(logits, e_1, ..., e_k, mask_1, ..., mask_k)``
    (the validation's probe, which tells a mask decision near the threshold e = 0 from one far from it).
    """
    from torch import nn

    from ..mask_set import masks

    class MaskOutputs(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.model = inner
            self.names = masks(inner).names()

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            logits = self.model(x)
            states = masks(self.model).states()
            front = [states[name].energy for name in self.names] if energies else []
            return (logits, *front, *[states[name].mask for name in self.names])

    return MaskOutputs(model).eval()


@contextlib.contextmanager
def _quiet() -> Iterator[io.StringIO]:
    """Swallow what the exporters print: Python's stdout (which --json keeps for JSON), and file descriptors
    1 and 2, where the TorchScript exporter dumps a whole graph from C++ when it fails."""
    text = io.StringIO()
    with tempfile.TemporaryFile() as sink:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        saved = {}
        for fd in (1, 2):
            with contextlib.suppress(OSError):
                saved[fd] = os.dup(fd)
                os.dup2(sink.fileno(), fd)
        try:
            with contextlib.redirect_stdout(text):
                yield text
        finally:
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            text.write(sink.read().decode("utf-8", errors="replace"))


def _export(module: nn.Module, sample: torch.Tensor, path: Path, names: list[str], opset: int, dynamo: bool,
            external: bool) -> None:
    import torch

    kwargs: dict[str, Any] = {"input_names": [INPUT_NAME], "output_names": names, "opset_version": opset}
    if dynamo:
        # external_data defaults to True: the weights would go to "<file name>.data" beside the file
        kwargs.update(dynamo=True, verbose=False, external_data=external,
                      dynamic_shapes=({0: torch.export.Dim("batch")},))
    else:
        kwargs.update(dynamo=False, dynamic_axes={n: {0: "batch"} for n in [INPUT_NAME, *names]})
    with warnings.catch_warnings(), _quiet() as chatter, torch.no_grad():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer warnings
        try:
            torch.onnx.export(module, (sample,), str(path), **kwargs)
        finally:
            _log.debug("torch.onnx (dynamo=%s) printed: %s", dynamo, chatter.getvalue()[-4000:])


def _move_into_place(folder: Path, path: Path) -> list[str]:
    """Move what the exporter wrote in ``folder`` beside ``path``: data files first, the graph last."""
    written = sorted(folder.iterdir(), key=lambda f: f.name == path.name)
    for f in written:
        os.replace(f, path.parent / f.name)
    return [f.name for f in written]


def export_onnx(
    model: nn.Module,
    path: str | Path,
    input_size: Sequence[int],
    *,
    opset: int = DEFAULT_OPSET,
    with_masks: bool = False,
    exporter: str = "auto",
    with_energies: bool = False,
) -> dict[str, Any]:
    """Export a masked model (in eval mode) to ONNX with a dynamic batch axis, atomically.

    The file is written in a temporary folder beside ``path`` under its final name (external data, used only
    for models over 2 GB, names its file after it), checked with ``onnx.checker``, then moved into place.

    Args:
        model: the masked model; it is put in eval mode.
        path: the .onnx file to write.
        input_size: (C, H, W) of the traced input.
        opset: ONNX opset version.
        with_masks: add each mask layer's mask as an extra output (see :func:`with_mask_outputs`).
        exporter: "torchscript", "dynamo", or "auto" (torchscript, then dynamo if it fails).
        with_energies: also add each mask layer's token energies as outputs, before the masks (implies
            ``with_masks``; the graph the validation probes, not one to deploy).

    Returns:
        ``{"exporter", "opset", "inputs", "outputs", "input_size", "files"}``; ``files`` are the names written
        beside ``path`` (``path``'s own, plus ``<name>.data`` for external data).

    Raises:
        ArtifactError: the exporter failed, or the written graph does not pass ``onnx.checker``.
    """
    import onnx
    import torch

    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    path = Path(path)
    model.eval()
    with_masks = with_masks or with_energies
    module = with_mask_outputs(model, with_energies) if with_masks else model
    names = [LOGITS_NAME, *(energy_output_names(model) if with_energies else []),
             *(mask_output_names(model) if with_masks else [])]
    sample = torch.randn(_TRACE_BATCH, *input_size, generator=torch.Generator().manual_seed(0))
    sample = sample.to(next(model.parameters()).device)
    external = sum(t.numel() * t.element_size() for t in model.state_dict().values()) > _EXTERNAL_DATA_BYTES
    order = {"auto": (False, True), "torchscript": (False,), "dynamo": (True,)}[exporter]
    errors = []
    path.parent.mkdir(parents=True, exist_ok=True)
    for dynamo in order:
        folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            try:
                _export(module, sample, folder / path.name, names, opset, dynamo, external)
                onnx.checker.check_model(str(folder / path.name), full_check=False)
            except OSError:
                raise
            except Exception as exc:  # the exporters raise many types; each means "this exporter cannot"
                first = (str(exc).strip().splitlines() or [""])[0][:200]
                errors.append(f"{'dynamo' if dynamo else 'torchscript'}: {type(exc).__name__}: {first}")
                _log.debug("ONNX export with dynamo=%s failed", dynamo, exc_info=True)
                continue
            files = _move_into_place(folder, path)
            return {"exporter": "dynamo" if dynamo else "torchscript", "opset": opset, "inputs": [INPUT_NAME],
                    "outputs": names, "input_size": list(input_size), "files": files}
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    raise ArtifactError(f"ONNX export failed ({' | '.join(errors)})",
                        "try another --opset or --exporter, or export safetensors only (--format safetensors)")


def run_onnx(path: str | Path, x: np.ndarray) -> list[np.ndarray]:
    """Run an exported model with onnxruntime on CPU; all outputs, in order."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})
