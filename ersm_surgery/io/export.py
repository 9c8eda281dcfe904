"""Exporting a masked model for deployment: safetensors + metadata, config.json, model card, ONNX, backbone.

Every file is first written into a temporary folder beside the output, reloaded and compared with the
model (``validation.json``), and only then moved into place; a failure at any step (a full disk, an
unwritable folder, a tolerance exceeded) leaves no partial file and an earlier export untouched.

The folder is laid out like a Hugging Face Hub repo: ``model.safetensors`` + ``config.json`` +
``README.md`` (a model card, :mod:`.model_card`); ``ersm_surgery.load("local-dir:DIR")`` or, once
uploaded, ``ersm_surgery.load("hf-hub:ORG/NAME")`` gives the model back. With ``strip`` the sub-folder
``backbone/`` holds the model without masks in the layout plain timm opens (:mod:`.backbone`).
"""
from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ArtifactError, ExportValidationError
from ..optional import install_hint, is_installed, require
from .artifact import (
    CONFIG,
    RECIPE,
    SHA256_KEY,
    WEIGHTS,
    check_output_dir,
    input_config,
    load,
    timm_config,
    weights_metadata,
    weights_path,
    write_weights,
)
from .atomic import atomic_write_text
from .backbone import BACKBONE_DIR, backbone_state_dict, load_with_timm, write_backbone
from .labels import read_labels, resolve_labels
from .model_card import CARD, find_results, model_card
from .onnx_export import DEFAULT_OPSET, export_onnx
from .onnx_validation import (
    DEFAULT_ATOL,
    DEFAULT_FLIP_MARGIN,
    DEFAULT_RTOL,
    OnnxTolerance,
    data_images,
    failure_line,
    validate_onnx,
    validation_inputs,
)
from .publish import output_lock, publish, staging_dir, write_error
from .safetensors_header import read_header

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..recipe import Recipe

__all__ = ["export", "FORMATS", "ONNX", "BACKBONE", "CARD", "VALIDATION", "SAFETENSORS_TOL", "backbone_state_dict",
           "default_formats", "skipped_formats", "read_labels", "default_output"]

_log = logging.getLogger(__name__)

FORMATS = ("safetensors", "onnx")
ONNX = "model.onnx"
BACKBONE = BACKBONE_DIR  # the stripped backbone: a sub-folder timm opens with "local-dir:"
VALIDATION = "validation.json"
ONNX_DATA = ONNX + ".data"  # the ONNX weights of a model over 2 GB (external data)
# names an export owns in its folder; the last two are what versions before 0.2 wrote instead of README.md
# and backbone/, removed on re-export so that no stale file stays beside the new ones
EXPORT_FILES = (WEIGHTS, RECIPE, CONFIG, CARD, ONNX, ONNX_DATA, BACKBONE, VALIDATION, "model_card.md",
                "backbone.safetensors")
SAFETENSORS_TOL = 1e-5  # a reloaded safetensors model must match (it is bit-identical in practice)
_ONNX_NEEDS = ("onnx", "onnxruntime")  # writing, and the parity check that every export runs


def skipped_formats() -> dict[str, str]:
    """Formats whose optional dependencies are missing -> the install line."""
    missing = [m for m in _ONNX_NEEDS if not is_installed(m)]
    return {"onnx": f"{', '.join(missing)} not installed; {install_hint(missing[0])}"} if missing else {}


def default_formats() -> tuple[str, ...]:
    """The formats ``export`` writes when none are named: every one whose dependencies are installed."""
    skipped = skipped_formats()
    return tuple(f for f in FORMATS if f not in skipped)


def _step(progress: Callable[[str], None] | None, text: str) -> None:
    _log.info(text)
    if progress is not None:
        progress(text)


# -- validation --------------------------------------------------------------------------------------------


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def _validate(model: nn.Module, recipe: Recipe, staging: Path, files: dict[str, Any], input_size: Sequence[int],
              tol: OnnxTolerance, with_masks: bool, images: torch.Tensor | None, onnx_info: dict[str, Any] | None,
              progress) -> dict[str, Any]:
    import torch

    from ..mask_set import masks

    x, inputs = validation_inputs(model, input_size, images)
    with torch.no_grad():
        ref = model(x)
    report: dict[str, Any] = {"input_shape": list(x.shape), "inputs": inputs, "seed": 0,
                              "mask_mode": recipe.mask.eval_mode}
    if WEIGHTS in files:
        _step(progress, "validating model.safetensors (reload and compare)")
        with torch.no_grad():
            diff = _max_diff(load(staging / WEIGHTS, verify=True)(x), ref)
        report["safetensors"] = {"max_abs_diff": diff, "tolerance": SAFETENSORS_TOL, "ok": diff <= SAFETENSORS_TOL,
                                 "sha256": "verified"}
    if ONNX in files and onnx_info is not None:
        _step(progress, f"validating model.onnx with onnxruntime on {inputs['count']} {inputs['source']}")
        report["onnx"] = validate_onnx(model, staging / ONNX, x, input_size, tolerance=tol, with_masks=with_masks,
                                       opset=onnx_info["opset"], exporter=onnx_info["exporter"], workdir=staging)
    if any(name.startswith(f"{BACKBONE}/") for name in files):
        _step(progress, "validating backbone/ with timm.create_model(\"local-dir:...\", pretrained=True)")
        with torch.no_grad(), masks(model).switched_off():
            unmasked = model(x)
        with torch.no_grad():
            diff = _max_diff(load_with_timm(staging / BACKBONE)(x), unmasked)
        report["backbone"] = {"max_abs_diff": diff, "tolerance": SAFETENSORS_TOL, "ok": diff <= SAFETENSORS_TOL,
                              "compared_with": "the masked model with its masks switched off"}
    return report


_CHECKED = (("safetensors", WEIGHTS), ("backbone", f"{BACKBONE}/"), ("onnx", ONNX))


def _failed_files(report: dict[str, Any]) -> list[str]:
    return [label for key, label in _CHECKED if key in report and not report[key]["ok"]]


def _failure_text(report: dict[str, Any]) -> str:
    parts = []
    for key, label in _CHECKED:
        part = report.get(key)
        if part and not part["ok"]:
            if key == "onnx":
                parts.append(f"{label}: {failure_line(part)}")
            else:
                parts.append(f"{label} differs from the PyTorch model by {part['max_abs_diff']:.3g}, more than "
                             f"{part['tolerance']:g}")
    return "validation failed: " + "; ".join(parts)


# -- writing -----------------------------------------------------------------------------------------------


def default_output(src: str | Path) -> Path:
    """Where ``export`` writes without ``-o``: ``DIR/export`` (or ``<file stem>-export`` for a file)."""
    src = Path(src)
    return src / "export" if src.is_dir() else src.with_name(f"{src.stem}-export")


def _check_formats(formats: list[str], mask_mode: str | None, with_masks: bool, validate: bool) -> None:
    from ..layers.config import EVAL_MODES

    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ArtifactError(f"unknown export format(s) {', '.join(bad) or '(none)'}",
                            f"choose from {', '.join(FORMATS)}")
    if mask_mode is not None and mask_mode not in EVAL_MODES:
        raise ArtifactError(f"mask mode {mask_mode!r} is not one of {', '.join(EVAL_MODES)}",
                            "pass --mask-mode hard or soft")
    if with_masks and "onnx" not in formats:
        raise ArtifactError("--with-masks adds mask outputs to the ONNX file, but onnx is not exported",
                            "add onnx to --format")
    if "onnx" in formats:  # before anything is loaded: a plain install lacks the onnx extra
        require("onnx", "ONNX export")
        if validate:
            require("onnxruntime", "checking the ONNX file (--no-validate skips it)")


def export(
    src: str | Path,
    output: str | Path | None = None,
    formats: Sequence[str] | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    flip_margin: float = DEFAULT_FLIP_MARGIN,
    validation_images: torch.Tensor | None = None,
    validation_data: str | Path | None = None,
    keep_on_failure: bool = False,
    mask_mode: str | None = None,
    with_masks: bool = False,
    strip: bool = False,
    validate: bool = True,
    force: bool = False,
    verify: bool = True,
    labels: str | Path | Sequence[str] | None = None,
    results: str | Path | None = None,
    datasets: Sequence[str] | None = None,
    exporter: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Export a saved masked model (a folder written by inject/finetune) for deployment.

    Writes ``model.safetensors`` (weights; metadata: versions, base model, kwargs, num_classes, recipe,
    input config, label names, sha256), ``recipe.yaml``, ``config.json`` (timm's layout + "ersm"),
    ``README.md`` (a Hugging Face model card), ``model.onnx`` (dynamic batch), ``backbone/`` (``strip``:
    ``config.json`` + ``model.safetensors`` for ``timm.create_model("local-dir:...", pretrained=True)``)
    and ``validation.json``.

    Args:
        src: folder (or .safetensors file) to export.
        output: output folder (default: ``src/export``).
        formats: any of "safetensors", "onnx" (default: :func:`default_formats`, those installed; the
            summary's ``skipped`` says what was left out and how to install it).
        opset: ONNX opset.
        atol: absolute floor of the ONNX tolerance: an output may differ by ``atol + rtol * max |output|``.
        rtol: the ONNX tolerance relative to each output's scale.
        flip_margin: a hard-mask token that flips between onnxruntime and PyTorch with ``|e| <=`` this x
            max(1, the layer's max |e|) is rounding (reported); a farther flip fails the validation.
        validation_images: normalised images (N, C, H, W) at the model's input size to validate on (the first
            16); default: random images normalised with the model's mean and std.
        validation_data: else a data set to take them from: a folder's (or ``builtin:clutter``'s) validation split.
        keep_on_failure: when a file fails the validation, still write the others (those that passed, the
            model card and ``validation.json``) before raising; default: write nothing.
        mask_mode: set every mask's eval mode ("hard" or "soft") before export; recorded in the recipe.
        with_masks: add each mask layer's mask as an ONNX output.
        strip: also write the backbone without masks as ``backbone/``, a folder plain timm loads.
        validate: reload every file and compare outputs (written to validation.json).
        force: write into an existing non-empty output folder.
        verify: check the source's sha256.
        labels: class names, or a .txt/.json file of them (default: from the source's metadata, a
            labels.txt/labels.json beside it, or the recipe).
        results: an evaluation's results.json for the model card (default: DIR/results.json or
            ``<DIR>-eval/results.json``, where ``ersm-surgery evaluate`` writes it).
        datasets: Hugging Face Hub dataset ids the model was trained on, for the card's metadata.
        exporter: ONNX exporter: "auto", "torchscript" or "dynamo".
        progress: called with a short text at each step.

    Returns:
        A summary: output folder, files, validation report, ONNX details, skipped formats.

    Raises:
        ArtifactError: bad source, export failure, output not writable.
        ExportValidationError: a file outside its tolerance (``kept`` names what was written all the same).
        OutputExistsError: output not empty without ``force``.
        MissingDependencyError: onnx asked for but not installed.
    """
    from ..mask_set import masks

    if formats is None and with_masks:
        formats = FORMATS  # --with-masks means ONNX: a missing onnx is then an error, not a skip
    skipped = skipped_formats() if formats is None else {}
    formats = list(dict.fromkeys(default_formats() if formats is None else formats))
    _check_formats(formats, mask_mode, with_masks, validate)
    src = Path(src)
    source = weights_path(src)
    out = check_output_dir(output if output is not None else default_output(src), force)

    _step(progress, f"loading {source}")
    model = load(src, verify=verify)
    meta = dict(read_header(source).metadata)
    recipe = model.ersm_recipe
    if mask_mode is not None:
        masks(model).set_mode(eval_mode=mask_mode)
        recipe.mask.eval_mode = mask_mode
    num_classes = int(model.num_classes)
    names = resolve_labels(src, meta, labels, num_classes)
    input_cfg = input_config(model)
    evaluation = find_results(src, results)
    input_size = list(recipe.input_size or input_cfg.get("input_size") or (3, 224, 224))
    if validate and validation_images is None and validation_data is not None:
        _step(progress, f"loading validation images from {validation_data}")
        validation_images = data_images(model, str(validation_data), input_size)

    files: dict[str, str] = {}
    summary: dict[str, Any] = {"source": str(source), "output": str(out), "formats": formats,
                               "mask_mode": recipe.mask.eval_mode, "num_classes": num_classes,
                               "labels": len(names) if names else 0, "skipped": skipped}
    for fmt, why in skipped.items():
        _log.warning("not exporting %s: %s", fmt, why)
    with output_lock(out):  # held from staging to publishing: a second writer fails at once
        try:
            staging = staging_dir(out)
        except OSError as exc:
            raise write_error(out, exc) from None
        try:
            sha = None
            if "safetensors" in formats:
                _step(progress, "writing model.safetensors")
                written = write_weights(model, staging / WEIGHTS, weights_metadata(model, recipe, names))
                sha = written[SHA256_KEY]
                files[WEIGHTS] = f"weights + metadata (recipe, versions, input config{', labels' if names else ''}), " \
                                 f"sha256 {sha[:16]}..."
                summary["sha256"] = sha
            atomic_write_text(staging / RECIPE, recipe.to_yaml())
            files[RECIPE] = "the recipe: base model, placements, layer settings"
            atomic_write_text(staging / CONFIG, json.dumps(timm_config(model, recipe, names), indent=2) + "\n")
            files[CONFIG] = "timm's config layout plus an \"ersm\" block"
            if "onnx" in formats:
                _step(progress, f"exporting model.onnx (opset {opset})")
                summary["onnx"] = export_onnx(model, staging / ONNX, input_size, opset=opset, with_masks=with_masks,
                                              exporter=exporter)
                files[ONNX] = f"ONNX opset {opset}, input [batch, {', '.join(map(str, input_size))}], outputs " \
                              f"{', '.join(summary['onnx']['outputs'])}"
                unexpected = set(summary["onnx"]["files"]) - {ONNX, ONNX_DATA}
                if unexpected:
                    raise ArtifactError(f"the ONNX exporter wrote unexpected files {sorted(unexpected)}",
                                        "report this; export with --format safetensors meanwhile")
                if ONNX_DATA in summary["onnx"]["files"]:
                    files[ONNX_DATA] = "the ONNX weights (external data: the model is over 2 GB)"
            if strip:
                _step(progress, "writing backbone/ (masks stripped, for plain timm)")
                files.update(write_backbone(model, recipe, staging / BACKBONE, names, input_cfg, sha))
            report = None
            failed: list[str] = []
            if validate:
                tol = OnnxTolerance(rtol=rtol, atol=atol, flip_margin=flip_margin)
                report = _validate(model, recipe, staging, files, input_size, tol, with_masks, validation_images,
                                   summary.get("onnx"), progress)
                failed = _failed_files(report)
                if failed and not keep_on_failure:
                    raise ExportValidationError(_failure_text(report), "raise --rtol, check the model, or pass "
                                                "--no-validate to export anyway; nothing was written", report)
                for name in failed:  # a file that does not compute what the model computes is not published
                    for key in [k for k in files if k == name or (name.endswith("/") and k.startswith(name))]:
                        files.pop(key)
                    if name == ONNX:
                        files.pop(ONNX_DATA, None)
                atomic_write_text(staging / VALIDATION, json.dumps(report, indent=2) + "\n")
                files[VALIDATION] = "reload-and-compare results" + (f" ({', '.join(failed)} failed: not written)"
                                                                    if failed else "")
                summary["validation"] = report
            card = model_card(model, recipe, {**files, CARD: "this card"}, names, input_cfg, report, evaluation,
                              list(datasets or []), BACKBONE if strip else None)
            atomic_write_text(staging / CARD, card)
            files[CARD] = "a Hugging Face model card: what is known about the model"
            _step(progress, f"moving the files into {out}")
            publish(staging, out, list(dict.fromkeys(name.split("/")[0] for name in files)), EXPORT_FILES)
            if failed:
                raise ExportValidationError(_failure_text(report), f"{', '.join(failed)} not written, the other files "
                                            f"are in {out}", report, list(files))
        except OSError as exc:
            raise write_error(out, exc) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    summary["files"] = files
    return summary

