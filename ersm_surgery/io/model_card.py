"""The export's README.md: a Hugging Face model card (YAML front matter + Markdown) of a masked model.

The front matter carries ``library_name``, ``tags``, ``pipeline_tag``, ``base_model`` (the Hub repo the
base weights came from, when known), ``datasets`` (when given), ``metrics`` and a ``model-index`` with the
accuracy of an evaluation, when one was run. huggingface_hub's ``ModelCardData`` writes the front matter
when it is installed (it is optional); otherwise PyYAML writes the same fields. Class names, model
arguments and other free text are escaped: they cannot break the YAML, the Markdown or the HTML the Hub
renders.
"""
from __future__ import annotations

import html
import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ArtifactError
from ..optional import is_installed
from .artifact import versions

if TYPE_CHECKING:
    from torch import nn

    from ..eval.results_schema import Results
    from ..recipe import Recipe

__all__ = ["model_card", "front_matter", "find_results", "base_model_repo", "escape_md", "CARD", "RESULTS"]

_log = logging.getLogger(__name__)

CARD = "README.md"
RESULTS = "results.json"  # an evaluation's results, shown in the model card when found near the source
LIBRARY = "ersm-surgery"
TAGS = ("image-classification", "timm", "ersm-surgery", "energy-regularized-spatial-masking", "spatial-masking")
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|~])")


def escape_md(text: Any) -> str:
    """``text`` as literal Markdown inline text: HTML escaped, Markdown's special characters backslashed."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False)).replace("\n", " ")


def _fenced(language: str, body: str) -> list[str]:
    """A fenced code block whose fence is longer than any run of backticks in ``body``."""
    longest = max((len(run) for run in re.findall(r"`+", body)), default=0)
    fence = "`" * max(3, longest + 1)
    return [f"{fence}{language}", body.rstrip("\n"), fence]


def base_model_repo(recipe: Recipe) -> str | None:
    """The Hub repo id the base weights came from (``hf-hub:ORG/NAME[@rev]`` -> ``ORG/NAME``), else None."""
    source = getattr(recipe, "base_model", None)
    if isinstance(source, str) and source.startswith("hf-hub:"):
        return source.removeprefix("hf-hub:").split("@")[0] or None
    return None


def find_results(src: Path, given: str | Path | None = None) -> dict[str, Any] | None:
    """An evaluation's results.json: ``given``, else in DIR, else where ``evaluate`` puts it (``<DIR>-eval/``).

    Raises:
        ArtifactError: ``given`` does not exist.
    """
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


def _read(results: dict[str, Any] | None) -> Results | None:
    """results.json through its schema (any version); one this version cannot read is left out of the card."""
    from ..eval.results_schema import Results, ResultsSchemaError

    if not results:
        return None
    try:
        return Results.from_dict(results)
    except ResultsSchemaError as exc:
        _log.warning("the evaluation results are left out of the card: %s", exc)
        return None


def _accuracy(results: dict[str, Any] | None) -> float | None:
    r = _read(results)
    value = r.summary.get("top1.model") if r else None
    return float(value) if isinstance(value, (int, float)) else None


def _data_name(results: dict[str, Any] | None) -> str:
    r = _read(results)
    data = r.data if r else {}
    kind = data.get("kind") or data.get("root") or "evaluation data"
    split = data.get("split")
    return f"{kind} ({split})" if split else str(kind)


def front_matter(recipe: Recipe, title: str, results: dict[str, Any] | None, datasets: list[str] | None,
                 license_: str | None = None) -> dict[str, Any]:
    """The card's metadata as the Hub reads it (``model-index`` holds the evaluation's top-1 accuracy)."""
    meta: dict[str, Any] = {"library_name": LIBRARY, "pipeline_tag": "image-classification", "tags": list(TAGS)}
    repo = base_model_repo(recipe)
    if repo:
        meta["base_model"] = repo
    if license_:
        meta["license"] = license_
    if datasets:
        meta["datasets"] = list(datasets)
    top1 = _accuracy(results)
    if top1 is not None:
        meta["metrics"] = ["accuracy"]
        dataset = {"name": _data_name(results), "type": datasets[0] if datasets else str(
            ((results or {}).get("data") or {}).get("kind") or "custom")}
        meta["model-index"] = [{"name": title, "results": [{
            "task": {"type": "image-classification"}, "dataset": dataset,
            "metrics": [{"type": "accuracy", "value": round(top1, 6), "name": "top-1 accuracy (hard masks)"}]}]}]
    return meta


def _yaml(meta: dict[str, Any]) -> str:
    """The front matter text: huggingface_hub's ``ModelCardData`` when installed, else PyYAML."""
    if is_installed("huggingface_hub"):
        from huggingface_hub import EvalResult, ModelCardData

        plain = {k: v for k, v in meta.items() if k != "model-index"}
        evals = []
        for entry in meta.get("model-index", []):
            for r in entry["results"]:
                for m in r["metrics"]:
                    evals.append(EvalResult(task_type=r["task"]["type"], dataset_type=r["dataset"]["type"],
                                            dataset_name=r["dataset"]["name"], metric_type=m["type"],
                                            metric_value=m["value"], metric_name=m.get("name")))
        name = meta["model-index"][0]["name"] if evals else None
        return ModelCardData(**plain, model_name=name, eval_results=evals or None).to_yaml()
    import yaml

    return yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip("\n")


def _flat(data: Any, prefix: str = "", depth: int = 0) -> list[tuple[str, Any]]:
    if isinstance(data, dict) and depth < 3:
        rows = []
        for k, v in data.items():
            rows += _flat(v, f"{prefix}{k}." if isinstance(v, dict) else f"{prefix}{k}", depth + 1)
        return rows
    if isinstance(data, (int, float, str, bool)) or data is None:
        return [(prefix.rstrip("."), data)]
    return []


def model_card(model: nn.Module, recipe: Recipe, files: dict[str, Any], labels: list[str] | None,
               input_cfg: dict[str, Any], validation: dict[str, Any] | None, results: dict[str, Any] | None,
               datasets: list[str] | None = None, backbone: str | None = None) -> str:
    """README.md: a Hugging Face model card of the exported model.

    Args:
        model: the masked model.
        recipe: its recipe.
        files: file name -> what it holds (listed in the card).
        labels: class names, when known.
        input_cfg: timm's data config of the model (preprocessing).
        validation: the export's validation report, when it ran.
        results: an evaluation's results.json, when one was found.
        datasets: Hub dataset ids the model was trained on, when known.
        backbone: the stripped backbone's sub-folder, when written.
    """
    from ..mask_set import masks

    name = recipe.model
    title = f"{name} with Energy-Regularized Spatial Masks"
    license_ = (getattr(model, "pretrained_cfg", None) or {}).get("license") if base_model_repo(recipe) else None
    lines = ["---", _yaml(front_matter(recipe, title, results, datasets, license_)), "---", "",
             f"# {escape_md(title)}", "",
             "Energy-Mask layers (ERSM, arXiv 2604.06893) inserted into the timm model "
             f"{escape_md(name)} by ersm-surgery.", "", "## Model", "",
             f"- base model: {escape_md(name)} (timm)"
             + (f", from {escape_md(recipe.base_model)}" if getattr(recipe, "base_model", None) else "")
             + f", arguments {escape_md(json.dumps(recipe.model_kwargs, default=str))}",
             f"- classes: {model.num_classes}" + (f" ({', '.join(escape_md(x) for x in labels[:10])}"
                                                  f"{', ...' if len(labels) > 10 else ''})" if labels else ""),
             f"- preprocessing (timm data config): input {input_cfg.get('input_size')}, mean {input_cfg.get('mean')}"
             f", std {input_cfg.get('std')}, interpolation {escape_md(input_cfg.get('interpolation'))}, "
             f"crop\\_pct {input_cfg.get('crop_pct')}",
             f"- masks placed and checked at input size {list(recipe.input_size) if recipe.input_size else 'default'}",
             f"- parameters: {sum(p.numel() for p in model.parameters()):,}, of which masks "
             f"{sum(p.numel() for p in masks(model).parameters()):,}",
             f"- mask eval mode: {escape_md(recipe.mask.eval_mode)}", "", "## Mask layers", "",
             "| mask | after | method | channels | stride | hidden |", "|---|---|---|---|---|---|"]
    for p in recipe.placements:
        lines.append(f"| {escape_md(p.path)} | {escape_md(p.label)} | {escape_md(p.method)} | {p.channels} "
                     f"| {p.reduction} | {p.hidden} |")
    m = recipe.mask
    lines += ["", escape_md(f"Layer settings: alpha={m.alpha}, beta={m.beta}, tau={m.tau}, steps={m.steps}, "
                            f"neighbourhood={m.neighbourhood}, train_mode={m.train_mode}, eval_mode={m.eval_mode}.")]
    if recipe.finetune:
        lines += ["", "## Fine-tuning", "", *_fenced("json", json.dumps(recipe.finetune, indent=2, default=str))]
    lines += ["", "## Recipe", "", *_fenced("yaml", recipe.to_yaml())]
    lines += ["", "## Evaluation", ""]
    read = _read(results)
    # the schema's headline numbers; a file without them is listed as it is
    rows = _flat((read.summary if read else None) or results)[:60] if results else []
    if rows:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {escape_md(k)} | {v:.4g} |" if isinstance(v, float) else f"| {escape_md(k)} | {escape_md(v)} |"
                  for k, v in rows]
    else:
        lines.append("No evaluation results were found next to the model (run `ersm-surgery evaluate`).")
    lines += ["", "## Files", ""]
    for fname, info in files.items():
        lines.append(f"- {escape_md(fname)}: {escape_md(info)}")
    if validation:
        lines += ["", "## Validation", ""]
        for key in ("safetensors", "onnx", "backbone"):
            if key in validation:
                v = validation[key]
                lines.append(f"- {key}: max \\|diff\\| {v['max_abs_diff']:.3g} (tolerance {v['tolerance']:g}) "
                             f"on {validation['input_shape']}")
    size = list(recipe.input_size or input_cfg.get("input_size") or (3, 224, 224))
    lines += ["", "## Use", "", "```python", "import ersm_surgery",
              "model = ersm_surgery.load(\"local-dir:<this folder>\")  # or \"hf-hub:ORG/NAME\" once uploaded;",
              "# rebuilt from base model + recipe + weights, sha256 checked", "```"]
    if "model.onnx" in files:
        shape = ", ".join(map(str, [1, *size]))
        lines += ["", "```python", "import numpy as np, onnxruntime as ort",
                  "session = ort.InferenceSession(\"model.onnx\")",
                  f"logits = session.run(None, {{\"input\": np.zeros(({shape}), np.float32)}})[0]", "```"]
    if backbone:
        lines += ["", "The backbone without masks, for plain timm (its outputs equal this model's with the masks "
                      "switched off):", "", "```python", "import timm",
                  f"model = timm.create_model(\"local-dir:<this folder>/{backbone}\", pretrained=True)", "```"]
    lines += ["", "## Versions", ""] + [f"- {k} {escape_md(v)}" for k, v in versions().items()]
    return "\n".join(lines) + "\n"
