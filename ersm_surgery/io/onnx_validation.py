"""Judging an ONNX file against the PyTorch model it came from: per-output relative tolerance, top-1, mask flips.

Two float32 runtimes differ by rounding that grows with the size of the numbers: the logits of a trained
efficientnet_b0 differ by about 1e-3 between onnxruntime and PyTorch where a freshly initialised one differs
by 1e-10. So, as the ecosystem does, each output is judged against a tolerance relative to its own scale
plus an absolute floor: ``max |ONNX - PyTorch| <= atol + rtol * max |PyTorch|``.

Hard masks add a second, discrete source: a token whose energy lies within rounding of the threshold
(``e = 0``) can be kept by one runtime and dropped by the other, which moves that token's features by far
more than rounding. The validation therefore also exports a *probe* (the same model with every mask
layer's energies and masks as extra outputs; never published), counts the tokens whose mask differs
between the runtimes and sorts each flip: *near* (``|e| <= flip_margin * max(1, max |e|)`` in both runtimes:
reported, not a failure) or *far* (a failure: the file computes another mask). PyTorch is then rerun with onnxruntime's
mask decisions forced (a replay), and the file's outputs are judged against that run, so a near-threshold
flip neither fails the logits nor hides a real difference elsewhere.
"""
from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ArtifactError
from .onnx_export import LOGITS_NAME, export_onnx, mask_output_names, run_onnx, with_mask_outputs

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

__all__ = ["DEFAULT_ATOL", "DEFAULT_FLIP_MARGIN", "DEFAULT_RTOL", "VALIDATION_IMAGES", "OnnxTolerance",
           "classify_flips", "data_images", "failure_line", "forced_masks", "random_inputs", "validate_onnx",
           "validation_inputs"]

_log = logging.getLogger(__name__)

# Defaults from benchmarks/bench_onnx_parity.py (docs/export.md, "The defaults, measured"): over the
# fine-tuned families the logits' relative difference stayed below 1e-5 and the energies' below 1e-5 of
# their scale, so both defaults leave two orders of magnitude over rounding and stay far below what a wrong
# weight does.
DEFAULT_RTOL = 1e-3
DEFAULT_ATOL = 1e-5
DEFAULT_FLIP_MARGIN = 1e-3
VALIDATION_IMAGES = 16  # a batch that differs from the traced one (2), so the dynamic batch axis is exercised
_FLIPS_LISTED = 10  # flips listed one by one in the report


@dataclass(frozen=True)
class OnnxTolerance:
    """How far an ONNX file may stray from PyTorch.

    Attributes:
        rtol: allowed difference per unit of the output's scale (its largest absolute PyTorch value).
        atol: absolute floor, for outputs near zero.
        flip_margin: a hard-mask token that flips between the runtimes while its energy is within
            ``flip_margin * max(1, max |e|)`` of the threshold 0 in both is rounding (reported); farther, it
            is a failure. Relative to the layer's energy scale, as the outputs' tolerance is: the energies'
            rounding grows with them too.
    """

    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL
    flip_margin: float = DEFAULT_FLIP_MARGIN

    def allowed(self, scale: float) -> float:
        """The largest absolute difference accepted for an output whose values reach ``scale``."""
        return self.atol + self.rtol * scale


# -- inputs ------------------------------------------------------------------------------------------------


def random_inputs(count: int, input_size: Sequence[int], mean: Sequence[float], std: Sequence[float],
                  seed: int = 0) -> torch.Tensor:
    """Random images: pixels uniform in [0, 1], normalised with the model's ``(x - mean) / std``."""
    import torch

    pixels = torch.rand(count, *input_size, generator=torch.Generator().manual_seed(seed))
    channels = int(input_size[0])
    m = torch.tensor(list(mean)[:channels] or [0.0], dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(list(std)[:channels] or [1.0], dtype=torch.float32).view(-1, 1, 1)
    return (pixels - m) / s


def data_images(model: nn.Module, spec: str, input_size: Sequence[int], count: int = VALIDATION_IMAGES,
                seed: int = 0) -> torch.Tensor:
    """``count`` images of the validation split of ``spec`` (a folder or ``builtin:clutter``), prepared with the
    preprocessing ``model`` records (as it was fine-tuned), at its input size.

    Raises:
        ArtifactError: the model's input is not square (data sets give square images).
        DataError: the data cannot be read.
    """
    from ..data import create_dataset, resolve_preprocessing
    from ..eval.images import load_images

    if input_size[1] != input_size[2]:
        raise ArtifactError(f"the model's input {list(input_size)} is not square, data sets give square images",
                            "validate on random inputs (leave out --data-dir/--dataset)")
    pre = resolve_preprocessing(model, spec, img_size=int(input_size[1]))
    data = create_dataset(spec, split="validation", preprocessing=pre, seed=seed)
    return load_images(data, count, seed).images


def validation_inputs(model: nn.Module, input_size: Sequence[int], images: torch.Tensor | None = None,
                      count: int = VALIDATION_IMAGES, seed: int = 0) -> tuple[torch.Tensor, dict[str, Any]]:
    """The inputs every exported file is checked on, and what they were.

    Args:
        model: the model (its timm preprocessing gives the mean and std of random inputs).
        input_size: (C, H, W) the model was exported at.
        images: normalised evaluation images (N, C, H, W); the first ``count`` are used.
        count: how many inputs.
        seed: seed of random inputs.

    Raises:
        ArtifactError: ``images`` are not of ``input_size``.
    """
    from .artifact import input_config

    if images is not None:
        if tuple(images.shape[1:]) != tuple(input_size):
            raise ArtifactError(f"validation images are {list(images.shape[1:])}, the model is exported at "
                                f"{list(input_size)}", "give images at the model's input size (--img-size)")
        x = images[:count].float().cpu()
        return x, {"source": "evaluation images", "count": int(x.shape[0]), "shape": list(x.shape)}
    cfg = input_config(model)
    mean, std = cfg.get("mean") or (0.0,), cfg.get("std") or (1.0,)
    x = random_inputs(count, input_size, mean, std, seed)
    return x, {"source": "random images normalised with the model's mean and std", "count": count,
               "shape": list(x.shape), "seed": seed, "mean": list(mean), "std": list(std)}


# -- comparisons -------------------------------------------------------------------------------------------


def _difference(ref: np.ndarray, got: np.ndarray, tol: OnnxTolerance) -> dict[str, Any]:
    import numpy as np

    if ref.shape != got.shape:
        return {"shape": list(got.shape), "expected_shape": list(ref.shape), "ok": False}
    diff = float(np.abs(ref.astype(np.float64) - got).max()) if ref.size else 0.0
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    allowed = tol.allowed(scale)
    return {"max_abs_diff": diff, "max_rel_diff": diff / scale if scale else (0.0 if diff == 0 else None),
            "scale": scale, "allowed": allowed, "ok": bool(diff <= allowed)}


def classify_flips(energy_ref: np.ndarray, energy_got: np.ndarray, mask_ref: np.ndarray, mask_got: np.ndarray,
                   margin: float) -> dict[str, Any]:
    """Tokens whose hard mask differs between two runtimes, each near or far from the threshold.

    Args:
        energy_ref: PyTorch's token energies (B, 1, H, W).
        energy_got: the other runtime's.
        mask_ref: PyTorch's hard mask (1 keep, 0 drop).
        mask_got: the other runtime's.
        margin: relative margin: a flip with ``|e| <= margin * max(1, max |energy_ref|)`` in both runtimes is
            near (rounding at the threshold).

    Returns:
        ``{"tokens", "flips", "near", "far", "energy_scale", "margin" (the absolute one), "max_energy_diff",
        "listed": [{"index": [b, 0, y, x], "energy_pytorch", "energy_onnx", "near"}, ...]}`` (the first flips,
        far ones first).
    """
    import numpy as np

    scale = float(np.abs(energy_ref).max()) if energy_ref.size else 0.0
    limit = margin * max(1.0, scale)
    flipped = (mask_ref > 0.5) != (mask_got > 0.5)
    near = flipped & (np.abs(energy_ref) <= limit) & (np.abs(energy_got) <= limit)
    far = flipped & ~near
    listed = []
    for where, is_near in ((far, False), (near, True)):
        for index in np.argwhere(where)[: _FLIPS_LISTED - len(listed)]:
            i = tuple(int(v) for v in index)
            listed.append({"index": list(i), "energy_pytorch": float(energy_ref[i]),
                           "energy_onnx": float(energy_got[i]), "near": is_near})
    diff = float(np.abs(energy_ref.astype(np.float64) - energy_got).max()) if energy_ref.size else 0.0
    return {"tokens": int(flipped.size), "flips": int(flipped.sum()), "near": int(near.sum()), "far": int(far.sum()),
            "energy_scale": scale, "margin": limit, "max_energy_diff": diff, "listed": listed}


@contextlib.contextmanager
def forced_masks(model: nn.Module, forced: dict[str, torch.Tensor]) -> Iterator[None]:
    """Within the block, each named mask layer applies the given mask instead of its own decision.

    The layer still computes q and e (kept in its state); only the mask multiplied onto the features, and
    the state's ``hard`` and ``mask``, are replaced.
    """
    from ..mask_set import masks

    def hook_for(mask: torch.Tensor):
        def hook(module: nn.Module, args: tuple, _output: torch.Tensor) -> torch.Tensor:
            x = args[0]
            m = mask.to(device=x.device, dtype=module.state.mask.dtype)
            module.state = module.state._replace(hard=m, mask=m)
            return x * m.to(x.dtype)
        return hook

    layers = dict(masks(model).items())
    handles = [layers[name].register_forward_hook(hook_for(mask)) for name, mask in forced.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


# -- the validation ----------------------------------------------------------------------------------------


def _torch_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    """logits, ``energy:<layer>`` and ``mask:<layer>`` of one PyTorch pass, as float32 arrays."""
    import torch

    from ..mask_set import masks

    names = masks(model).names()
    module = with_mask_outputs(model, energies=True) if names else model
    with torch.no_grad():
        out = module(x)
    out = [out] if isinstance(out, torch.Tensor) else list(out)
    keys = [LOGITS_NAME, *[f"energy:{n}" for n in names], *[f"mask:{n}" for n in names]]
    return {k: v.detach().float().cpu().numpy() for k, v in zip(keys, out, strict=True)}


def _probe(model: nn.Module, x: torch.Tensor, input_size: Sequence[int], opset: int, exporter: str,
           workdir: Path | None) -> dict[str, np.ndarray]:
    """onnxruntime's energies and masks: the model exported once more with them as outputs, then deleted."""
    from ..mask_set import masks

    names = masks(model).names()
    folder = Path(tempfile.mkdtemp(prefix=".probe.", dir=workdir))
    try:
        path = folder / "probe.onnx"
        export_onnx(model, path, input_size, opset=opset, exporter=exporter, with_energies=True)
        got = run_onnx(path, x.detach().cpu().numpy())
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    keys = [LOGITS_NAME, *[f"energy:{n}" for n in names], *[f"mask:{n}" for n in names]]
    return dict(zip(keys, got, strict=True))


def validate_onnx(
    model: nn.Module,
    path: str | Path,
    x: torch.Tensor,
    input_size: Sequence[int],
    *,
    tolerance: OnnxTolerance | None = None,
    with_masks: bool = False,
    opset: int = 18,
    exporter: str = "torchscript",
    workdir: str | Path | None = None,
) -> dict[str, Any]:
    """Compare an exported ONNX file with the model on ``x``; see the module's docstring for the method.

    Args:
        model: the PyTorch model the file was exported from (put in eval mode).
        path: the exported file (outputs ``logits`` and, with ``with_masks``, ``mask:<layer>``).
        x: the validation inputs (N, C, H, W).
        input_size: (C, H, W) the file was exported at (the probe is exported the same way).
        tolerance: rtol, atol, flip margin (default :class:`OnnxTolerance`).
        with_masks: the file has the masks as outputs.
        opset: the file's opset, for the probe.
        exporter: the exporter that wrote the file, for the probe.
        workdir: where the probe is written (a temporary folder inside it, removed after).

    Returns:
        ``{"ok", "failures": [line, ...], "outputs": {name: {"max_abs_diff", "max_rel_diff", "scale", "allowed",
        "ok"}}, "max_abs_diff", "max_rel_diff", "tolerance" (the logits' allowed difference), "rtol", "atol",
        "flip_margin", "top1_agreement", "batch", "masks": {layer: {"mode", "max_energy_diff", and for hard
        masks the flips: "tokens", "flips", "near", "far", "listed"}}, "mask_flips": {"near", "far"},
        "replayed"}``. ``top1_agreement`` compares the file with the model as it is (no replay).
    """
    import numpy as np
    import torch

    from ..mask_set import masks

    tol = tolerance or OnnxTolerance()
    model.eval()
    layers = masks(model)
    hard = [name for name, layer in layers.items() if layer.config.eval_mode == "hard"]
    ref = _torch_outputs(model, x)
    mask_report: dict[str, Any] = {}
    forced: dict[str, torch.Tensor] = {}
    if len(layers):
        probe = _probe(model, x, input_size, opset, exporter, Path(workdir) if workdir else None)
        for name, layer in layers.items():
            e_ref, e_got = ref[f"energy:{name}"], probe[f"energy:{name}"]
            entry: dict[str, Any] = {"mode": layer.config.eval_mode}
            if name in hard:
                entry.update(classify_flips(e_ref, e_got, ref[f"mask:{name}"], probe[f"mask:{name}"], tol.flip_margin))
                if entry["flips"]:
                    forced[name] = torch.from_numpy(np.ascontiguousarray(probe[f"mask:{name}"]))
            else:
                entry["energy_scale"] = float(np.abs(e_ref).max()) if e_ref.size else 0.0
                entry["max_energy_diff"] = float(np.abs(e_ref.astype(np.float64) - e_got).max()) if e_ref.size else 0.0
            mask_report[name] = entry
    expected = ref
    if forced:  # judge the file against PyTorch making onnxruntime's mask decisions
        with forced_masks(model, forced):
            expected = _torch_outputs(model, x)
    names = [LOGITS_NAME, *(mask_output_names(model) if with_masks else [])]
    got = run_onnx(path, x.detach().cpu().numpy())
    if len(got) != len(names):
        raise ArtifactError(f"{Path(path).name} has {len(got)} outputs where {len(names)} were exported",
                            "re-export it")
    outputs = {name: _difference(expected[name], g, tol) for name, g in zip(names, got, strict=True)}
    top1 = float(np.mean(ref[LOGITS_NAME].argmax(-1) == got[0].argmax(-1))) if got[0].size else 1.0
    failures = [_output_failure(name, d, tol) for name, d in outputs.items() if not d["ok"]]
    failures += [f"{m['far']} token(s) of mask {name} flipped between the runtimes at |e| > {m['margin']:.3g} "
                 f"(flip margin {tol.flip_margin:g} x energy scale {m['energy_scale']:.3g}): not rounding"
                 for name, m in mask_report.items() if m.get("far")]
    rel = [d["max_rel_diff"] for d in outputs.values() if d.get("max_rel_diff") is not None]
    return {
        "ok": not failures, "failures": failures, "outputs": outputs, "batch": int(x.shape[0]),
        "max_abs_diff": max((d.get("max_abs_diff", float("inf")) for d in outputs.values()), default=0.0),
        "max_rel_diff": max(rel, default=0.0), "tolerance": outputs[LOGITS_NAME].get("allowed", tol.atol),
        **asdict(tol), "top1_agreement": top1, "masks": mask_report,
        "mask_flips": {"near": sum(m.get("near", 0) for m in mask_report.values()),
                       "far": sum(m.get("far", 0) for m in mask_report.values())},
        "replayed": bool(forced),
    }


def _output_failure(name: str, d: dict[str, Any], tol: OnnxTolerance) -> str:
    if "shape" in d:
        return f"output {name!r} has shape {d['shape']}, PyTorch {d['expected_shape']}"
    rel = f"{d['max_rel_diff']:.2g}" if d["max_rel_diff"] is not None else "inf"
    return (f"output {name!r} differs by {d['max_abs_diff']:.3g} (relative {rel}), more than "
            f"{d['allowed']:.3g} = atol {tol.atol:g} + rtol {tol.rtol:g} x {d['scale']:.3g}")


def failure_line(report: dict[str, Any]) -> str:
    """What failed, in one line: the failures, and the top-1 agreement."""
    top1 = f" (top-1 agreement {report['top1_agreement']:.1%} on {report['batch']} inputs)"
    return "; ".join(report["failures"]) + top1
