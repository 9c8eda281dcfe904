"""Exporting a masked model for deployment: safetensors + metadata, config.json, model card, ONNX.

Every file is first written into a temporary folder beside the output, reloaded and compared with the
model (``validation.json``), and only then moved into place; a failure at any step (a full disk, an
unwritable folder, a tolerance exceeded) leaves no partial file and an earlier export untouched.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ArtifactError, ExportValidationError
from .artifact import (
    CONFIG,
    RECIPE,
    SHA256_KEY,
    WEIGHTS,
    check_output_dir,
    input_config,
    labels_of,
    load,
    state_to_save,
    timm_config,
    versions,
    weights_metadata,
    weights_path,
    write_weights,
)
from .atomic import atomic_path, atomic_write_text
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
from .safetensors_header import read_header

if TYPE_CHECKING:
    import torch
    from torch import nn

    from ..recipe import Recipe

__all__ = ["export", "FORMATS", "ONNX", "BACKBONE", "CARD", "VALIDATION", "SAFETENSORS_TOL", "strip_masks"]

_log = logging.getLogger(__name__)

FORMATS = ("safetensors", "onnx")
ONNX = "model.onnx"
BACKBONE = "backbone.safetensors"
CARD = "model_card.md"
VALIDATION = "validation.json"
RESULTS = "results.json"  # an evaluation's results, shown in the model card when found in the source
ONNX_DATA = ONNX + ".data"  # the ONNX weights of a model over 2 GB (external data)
EXPORT_FILES = (WEIGHTS, RECIPE, CONFIG, CARD, ONNX, ONNX_DATA, BACKBONE, VALIDATION)
SAFETENSORS_TOL = 1e-5  # a reloaded safetensors model must match (it is bit-identical in practice)
_LABEL_FILES = ("labels.txt", "labels.json")


def _step(progress: Callable[[str], None] | None, text: str) -> None:
    _log.info(text)
    if progress is not None:
        progress(text)


# -- labels ----------------------------------------------------------------------------------------------


def read_labels(path: str | Path) -> list[str]:
    """Class names from a .txt (one per line) or .json (a list, or {index: name}) file.

    Raises:
        ArtifactError: missing or unreadable file.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ArtifactError(f"cannot read labels file {str(path)!r} ({exc.strerror})", "check the path") from None
    if path.suffix != ".json":
        return [line.strip() for line in text.splitlines() if line.strip()]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"labels file {str(path)!r} is not valid JSON ({exc})", "fix the file") from None
    if isinstance(data, dict):
        try:
            return [str(data[k]) for k in sorted(data, key=int)]
        except ValueError:
            raise ArtifactError(f"labels file {str(path)!r} maps non-integer keys", "use {\"0\": name, ...}") from None
    if isinstance(data, list):
        return [str(x) for x in data]
    raise ArtifactError(f"labels file {str(path)!r} holds a JSON {type(data).__name__}", "give a list of names")


def _labels(src: Path, meta: dict[str, str], given: str | Path | Sequence[str] | None, num_classes: int | None
            ) -> list[str] | None:
    if isinstance(given, (str, Path)):
        labels = read_labels(given)
    elif given is not None:
        labels = [str(x) for x in given]
    else:
        labels = labels_of(meta)
        folder = src if src.is_dir() else src.parent
        for name in _LABEL_FILES:
            if labels is None and (folder / name).is_file():
                labels = read_labels(folder / name)
    if labels is not None and num_classes is not None and len(labels) != num_classes:
        raise ArtifactError(f"{len(labels)} label names for a model with {num_classes} classes",
                            "give one name per class (--labels FILE)")
    return labels


# -- stripped backbone -------------------------------------------------------------------------------------


def strip_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's state dict without the mask layers: a plain timm state dict."""
    from ..surgery.placement import is_mask_key

    return {k: v for k, v in state_to_save(model).items() if not is_mask_key(k)}


def _write_backbone(model: nn.Module, recipe: Recipe, path: Path, source_sha: str | None) -> None:
    from safetensors.torch import save_file

    meta = {"format": "pt", "model": recipe.model, "num_classes": str(recipe.num_classes or model.num_classes),
            "model_kwargs": json.dumps(recipe.model_kwargs, sort_keys=True, default=str), **versions()}
    if source_sha:
        meta["ersm_stripped_from"] = source_sha
    with atomic_path(path) as tmp:
        save_file(strip_masks(model), str(tmp), metadata=meta)


def _timm_backbone(recipe: Recipe, num_classes: int, path: Path) -> nn.Module:
    """The stripped backbone loaded the way a timm user would: ``pretrained_cfg_overlay=dict(file=...)``."""
    import timm

    kwargs = dict(recipe.model_kwargs)
    kwargs["num_classes"] = num_classes
    overlay = {"file": str(path), "num_classes": num_classes}
    return timm.create_model(recipe.model, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs).eval()


# -- validation --------------------------------------------------------------------------------------------


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max()) if a.numel() else 0.0


def _validate(model: nn.Module, recipe: Recipe, staging: Path, files: dict[str, Any], input_size: Sequence[int],
              tol: OnnxTolerance, with_masks: bool, images: torch.Tensor | None, onnx_info: dict[str, Any] | None,
              progress) -> dict[str, Any]:
    import torch

    from ..models import create_base_model

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
    if BACKBONE in files:
        _step(progress, "validating backbone.safetensors with timm.create_model")
        num_classes = int(model.num_classes)
        plain = create_base_model(recipe.model, num_classes=num_classes, **recipe.model_kwargs).eval()
        plain.load_state_dict(strip_masks(model), strict=True)
        with torch.no_grad():
            diff = _max_diff(_timm_backbone(recipe, num_classes, staging / BACKBONE)(x), plain(x))
        report["backbone"] = {"max_abs_diff": diff, "tolerance": SAFETENSORS_TOL, "ok": diff <= SAFETENSORS_TOL}
    return report


_CHECKED = (("safetensors", WEIGHTS), ("backbone", BACKBONE), ("onnx", ONNX))


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


# -- model card --------------------------------------------------------------------------------------------


def _flat(data: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, Any]]:
    if isinstance(data, dict) and depth < 3:
        rows = []
        for k, v in data.items():
            rows += _flat(v, f"{prefix}{k}." if isinstance(v, dict) else f"{prefix}{k}", depth + 1)
        return rows
    if isinstance(data, (int, float, str, bool)) or data is None:
        return [(prefix.rstrip("."), data)]
    return []


def _results(src: Path, given: str | Path | None = None) -> dict[str, Any] | None:
    """An evaluation's results.json: ``given``, else in DIR, else where ``evaluate`` puts it (``<DIR>-eval/``)."""
    folder = src if src.is_dir() else src.parent
    name = folder.resolve().name
    candidates = [Path(given)] if given else [folder / RESULTS, folder.parent / f"{name}-eval" / RESULTS,
                                              Path.cwd() / f"{name}-eval" / RESULTS]
    path = next((p / RESULTS if p.is_dir() else p for p in candidates if p.exists()), None)
    if path is None or not path.is_file():
        if given:
            raise ArtifactError(f"no results file at {str(given)!r}", "pass the results.json written by evaluate")
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        _log.warning("ignoring %s (%s)", path, exc)
        return None
    return data if isinstance(data, dict) else None


def model_card(model: nn.Module, recipe: Recipe, files: dict[str, Any], labels: list[str] | None,
               input_cfg: dict[str, Any], validation: dict[str, Any] | None, results: dict[str, Any] | None) -> str:
    """model_card.md: what is known about the exported model, in Markdown."""
    from ..mask_set import masks

    name = recipe.model
    lines = [f"# {name} with Energy-Regularized Spatial Masks", "",
             "Energy-Mask layers (ERSM, arXiv 2604.06893) inserted into the timm model "
             f"`{name}` by ersm-surgery.", "", "## Model", "",
             f"- base model: `{name}` (timm), kwargs `{json.dumps(recipe.model_kwargs, default=str)}`",
             f"- classes: {model.num_classes}" + (f" ({', '.join(labels[:10])}{', ...' if len(labels) > 10 else ''})"
                                                  if labels else ""),
             f"- preprocessing (timm pretrained_cfg): input {input_cfg.get('input_size')}, mean {input_cfg.get('mean')}"
             f", std {input_cfg.get('std')}, interpolation {input_cfg.get('interpolation')}, "
             f"crop_pct {input_cfg.get('crop_pct')}",
             f"- masks placed and checked at input size {list(recipe.input_size) if recipe.input_size else 'default'}",
             f"- parameters: {sum(p.numel() for p in model.parameters()):,}, of which masks "
             f"{sum(p.numel() for p in masks(model).parameters()):,}",
             f"- mask eval mode: {recipe.mask.eval_mode}", "", "## Mask layers", "",
             "| mask | after | method | channels | stride | hidden |", "|---|---|---|---|---|---|"]
    for p in recipe.placements:
        lines.append(f"| `{p.path}` | {p.label} | {p.method} | {p.channels} | {p.reduction} | {p.hidden} |")
    m = recipe.mask
    lines += ["", f"Layer settings: alpha={m.alpha}, beta={m.beta}, tau={m.tau}, steps={m.steps}, "
                  f"neighbourhood={m.neighbourhood}, train_mode={m.train_mode}, eval_mode={m.eval_mode}."]
    if recipe.finetune:
        lines += ["", "## Fine-tuning", "", "```json", json.dumps(recipe.finetune, indent=2, default=str), "```"]
    lines += ["", "## Recipe", "", "```yaml", recipe.to_yaml().rstrip(), "```"]
    lines += ["", "## Evaluation", ""]
    rows = _flat(results)[:60] if results else []
    if rows:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows]
    else:
        lines.append("No evaluation results were found next to the model (run `ersm-surgery evaluate`).")
    lines += ["", "## Files", ""]
    for fname, info in files.items():
        lines.append(f"- `{fname}`: {info}")
    if validation:
        lines += ["", "## Validation", ""]
        for key in ("safetensors", "onnx", "backbone"):
            if key in validation:
                v = validation[key]
                lines.append(f"- {key}: max |diff| {v['max_abs_diff']:.3g} (tolerance {v['tolerance']:g}) "
                             f"on {validation['input_shape']}")
    size = list(recipe.input_size or input_cfg.get("input_size") or (3, 224, 224))
    lines += ["", "## Use", "", "```python", "import ersm_surgery", "model = ersm_surgery.load(\"<this folder>\")  "
              "# rebuilt from base model + recipe + weights; sha256 checked", "```"]
    if ONNX in files:
        shape = ", ".join(map(str, [1, *size]))
        lines += ["", "```python", "import numpy as np, onnxruntime as ort",
                  f"session = ort.InferenceSession(\"{ONNX}\")",
                  f"logits = session.run(None, {{\"input\": np.zeros(({shape}), np.float32)}})[0]", "```"]
    if BACKBONE in files:
        lines += ["", "The backbone without masks, for plain timm:", "", "```python", "import timm",
                  f"model = timm.create_model(\"{name}\", pretrained=True, num_classes={model.num_classes},",
                  f"    pretrained_cfg_overlay=dict(file=\"{BACKBONE}\", num_classes={model.num_classes}))", "```"]
    lines += ["", "## Versions", ""] + [f"- {k} {v}" for k, v in versions().items()]
    return "\n".join(lines) + "\n"


# -- writing -----------------------------------------------------------------------------------------------


def default_output(src: str | Path) -> Path:
    """Where ``export`` writes without ``-o``: ``DIR/export`` (or ``<file stem>-export`` for a file)."""
    src = Path(src)
    return src / "export" if src.is_dir() else src.with_name(f"{src.stem}-export")


def _staging_dir(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))


def _file_mode() -> int:
    """The mode ``open()`` gives a new file under the current umask (0o644 with the usual 022)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _publish(staging: Path, out: Path, names: list[str]) -> None:
    """Move the staged files into ``out``; an export file there that is not replaced is removed.

    Renames within one file system do not need space. If one still fails, the files moved so far are
    taken back and the previous ones restored, so ``out`` is as before.
    """
    out.mkdir(parents=True, exist_ok=True)
    mode = _file_mode()
    for name in names:  # mkstemp made them owner-only; an export is meant to be shared like any written file
        os.chmod(staging / name, mode)
    previous = staging / ".previous"
    previous.mkdir()
    moved: list[str] = []
    displaced: list[str] = []
    try:
        for name in EXPORT_FILES:
            if (out / name).exists():
                os.replace(out / name, previous / name)
                displaced.append(name)
        for name in names:
            os.replace(staging / name, out / name)
            moved.append(name)
    except BaseException:
        for name in moved:
            (out / name).unlink(missing_ok=True)
        for name in displaced:
            os.replace(previous / name, out / name)
        raise


def export(
    src: str | Path,
    output: str | Path | None = None,
    formats: Sequence[str] = FORMATS,
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
    exporter: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Export a saved masked model (a folder written by inject/finetune) for deployment.

    Writes ``model.safetensors`` (weights; metadata: versions, base model, kwargs, num_classes, recipe,
    input config, label names, sha256), ``recipe.yaml``, ``config.json`` (timm's layout + "ersm"),
    ``model_card.md``, ``model.onnx`` (dynamic batch), ``backbone.safetensors`` (``strip``) and
    ``validation.json``.

    Args:
        src: folder (or .safetensors file) to export.
        output: output folder (default: ``src/export``).
        formats: any of "safetensors", "onnx".
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
        strip: also write the backbone without masks as a plain timm state dict.
        validate: reload every file and compare outputs (written to validation.json).
        force: write into an existing non-empty output folder.
        verify: check the source's sha256.
        labels: class names, or a .txt/.json file of them (default: from the source's metadata, a
            labels.txt/labels.json beside it, or the recipe).
        results: an evaluation's results.json for the model card (default: DIR/results.json or
            ``<DIR>-eval/results.json``, where ``ersm-surgery evaluate`` writes it).
        exporter: ONNX exporter: "auto", "torchscript" or "dynamo".
        progress: called with a short text at each step.

    Returns:
        A summary: output folder, files, validation report, ONNX details.

    Raises:
        ArtifactError: bad source, export failure, output not writable.
        ExportValidationError: a file outside its tolerance (``kept`` names what was written all the same).
        OutputExistsError: output not empty without ``force``.
    """
    from ..layers.config import EVAL_MODES
    from ..mask_set import masks

    formats = list(dict.fromkeys(formats))
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
    names = _labels(src, meta, labels, num_classes)
    input_cfg = input_config(model)
    evaluation = _results(src, results)
    input_size = list(recipe.input_size or input_cfg.get("input_size") or (3, 224, 224))
    if validate and validation_images is None and validation_data is not None:
        _step(progress, f"loading validation images from {validation_data}")
        validation_images = data_images(str(validation_data), input_size)

    files: dict[str, str] = {}
    summary: dict[str, Any] = {"source": str(source), "output": str(out), "formats": formats,
                               "mask_mode": recipe.mask.eval_mode, "num_classes": num_classes,
                               "labels": len(names) if names else 0}
    try:
        staging = _staging_dir(out)
    except OSError as exc:
        raise _write_error(out, exc) from None
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
            _step(progress, "writing backbone.safetensors (masks stripped)")
            _write_backbone(model, recipe, staging / BACKBONE, sha)
            files[BACKBONE] = "the backbone without masks, a plain timm state dict"
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
                files.pop(name, None)
                if name == ONNX:
                    files.pop(ONNX_DATA, None)
            atomic_write_text(staging / VALIDATION, json.dumps(report, indent=2) + "\n")
            files[VALIDATION] = "reload-and-compare results" + (f" ({', '.join(failed)} failed: not written)"
                                                                if failed else "")
            summary["validation"] = report
        card = model_card(model, recipe, {**files, CARD: "this card"}, names, input_cfg, report, evaluation)
        atomic_write_text(staging / CARD, card)
        files[CARD] = "what is known about the model"
        _step(progress, f"moving the files into {out}")
        _publish(staging, out, list(files))
        if failed:
            raise ExportValidationError(_failure_text(report), f"{', '.join(failed)} not written, the other files "
                                        f"are in {out}", report, list(files))
    except OSError as exc:
        raise _write_error(out, exc) from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    summary["files"] = files
    return summary


def _write_error(out: Path, exc: OSError) -> ArtifactError:
    reason = exc.strerror or str(exc)
    return ArtifactError(f"cannot write the export to {str(out)!r} ({reason})",
                         "free some space or choose a writable folder with -o; nothing was changed")
