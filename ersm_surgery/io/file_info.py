"""What a safetensors file holds, from its header alone: base model, recipe, mask layers, versions, sizes.

Only the first 8 + N bytes of the file are read (see :func:`.safetensors_header.read_header`) and neither
torch nor timm is imported, so ``ersm-surgery info`` answers at once on files of any size. Reading the
tensor data, to check the sha256, happens only when asked (``verify=True``).
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import ErsmError
from .artifact import INPUT_KEY, LABELS_KEY, MASK_MODE_KEY, RECIPE_KEY, labels_of, weights_path
from .safetensors_header import SafetensorsHeader, read_header
from .tensor_hash import SHA256_KEY, file_sha256, format_of

__all__ = ["file_info", "mask_groups"]

# the prefix of every mask layer's attribute (``surgery.placement.MASK_ATTR_PREFIX``; not imported from
# there because ``ersm_surgery.surgery`` imports torch)
_MASK_PREFIX = "ersm_mask"
_VERSION_KEYS = ("ersm_surgery", "torch", "timm")
_SHOWN_LABELS = 10


def mask_groups(names: list[str]) -> dict[str, list[str]]:
    """Tensor names grouped by the mask layer they belong to (``layer2.ersm_mask`` -> its tensors)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        parts = name.split(".")
        for i, part in enumerate(parts):
            if part.startswith(_MASK_PREFIX):
                groups.setdefault(".".join(parts[: i + 1]), []).append(name)
                break
    return groups


def _placement_path(p: dict[str, Any]) -> str:
    # mirrors Placement.path: "<module>.ersm_mask" for a stage or a hook, "<module>.ersm_mask_<node>" for a node
    module, node = p.get("module") or "", p.get("node")
    attr = _MASK_PREFIX
    if node is not None and p.get("method") != "module":
        local = node[len(module) + 1 :] if module else node
        attr = f"{_MASK_PREFIX}_{local.replace('.', '_')}"
    return f"{module}.{attr}" if module else attr


def _json(meta: dict[str, str], key: str, problems: list[str]) -> Any:
    raw = meta.get(key)
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        problems.append(f"metadata {key!r} is not valid JSON ({exc})")
        return None


def _masks(header: SafetensorsHeader, recipe: dict[str, Any], problems: list[str]) -> list[dict[str, Any]]:
    groups = mask_groups(list(header.tensors))
    rows = []
    placements = recipe.get("placements") or []
    for p in placements if isinstance(placements, list) else []:
        if not isinstance(p, dict):
            problems.append(f"a placement is a JSON {type(p).__name__}, not an object")
            continue
        path = _placement_path(p)
        names = groups.pop(path, [])
        if not names:
            problems.append(f"mask {path!r} of the recipe has no tensors in the file")
        stage = p.get("stage")
        anchor = f"stage {stage} ({p.get('module')})" if stage is not None else f"node {p.get('node')}"
        rows.append({"path": path, "anchor": anchor, "method": p.get("method"), "channels": p.get("channels"),
                     "stride": p.get("reduction"), "hidden": p.get("hidden"), "tensors": len(names),
                     "params": sum(_numel(header.tensors[n].shape) for n in names),
                     "bytes": sum(header.tensors[n].nbytes for n in names)})
    for path in groups:
        problems.append(f"mask tensors under {path!r} match no placement of the recipe")
    return rows


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def file_info(path: str | Path, verify: bool = False) -> dict[str, Any]:
    """Describe a safetensors file (or a folder's model.safetensors) from its header.

    Args:
        path: a .safetensors file, or a folder written by inject/finetune/export.
        verify: also read the tensor data and check the stored sha256 (reads the whole file).

    Returns:
        A JSON-ready dict: ``kind`` ("ersm" or "plain"), file and tensor sizes, dtypes, metadata keys,
        and for an ersm file the base model, recipe, mask layers, input config, labels, versions and the
        sha256 state ("present", "absent", or with ``verify`` "verified" / "mismatch"). ``problems``
        lists inconsistencies found in the metadata.

    Raises:
        ArtifactError: missing, truncated, pickled or otherwise invalid file.
    """
    weights = weights_path(path)
    header = read_header(weights)
    meta = header.metadata
    problems: list[str] = []
    info: dict[str, Any] = {
        "path": str(weights),
        "kind": "ersm" if RECIPE_KEY in meta else "plain",
        "file_bytes": header.file_size,
        "header_bytes": header.header_size,
        "tensors": {"count": header.num_tensors, "bytes": header.tensor_bytes,
                    "dtypes": dict(Counter(t.dtype for t in header.tensors.values()).most_common()),
                    "params": sum(_numel(t.shape) for t in header.tensors.values())},
        "metadata_keys": sorted(meta),
        "model": meta.get("model"),
        "format": meta.get("format"),
        "versions": {k: meta[k] for k in _VERSION_KEYS if k in meta},
    }
    if info["kind"] == "plain":
        info["problems"] = problems
        return info

    recipe = _json(meta, RECIPE_KEY, problems)
    recipe = recipe if isinstance(recipe, dict) else {}
    labels = labels_of(meta)
    info.update({
        "model": meta.get("model") or recipe.get("model"),
        "model_kwargs": recipe.get("model_kwargs") or {},
        "num_classes": recipe.get("num_classes") if recipe.get("num_classes") is not None else meta.get("num_classes"),
        "input_size": recipe.get("input_size"),
        "input_config": _json(meta, INPUT_KEY, problems),
        "mask_mode": meta.get(MASK_MODE_KEY) or (recipe.get("mask") or {}).get("eval_mode"),
        "labels": {"count": len(labels), "names": labels[:_SHOWN_LABELS]} if labels else None,
        "mask_settings": recipe.get("mask") or {},
        "finetune": recipe.get("finetune") or {},
        "recipe": recipe,
        "masks": _masks(header, recipe, problems),
    })
    if LABELS_KEY in meta and labels is None:
        problems.append(f"metadata {LABELS_KEY!r} is not a JSON list")
    info["mask_params"] = sum(m["params"] for m in info["masks"])
    stored = meta.get(SHA256_KEY)
    sha: dict[str, Any] = {"state": "present" if stored else "absent", "stored": stored}
    try:
        version = format_of(meta)
    except ErsmError as exc:
        problems.append(exc.problem)
        version = None
    if not stored and version is not None and version >= 2:
        sha["state"] = "missing"  # a current-format file always carries it: the header was edited
        problems.append(f"file format {version} requires {SHA256_KEY}, which is missing: the header was edited")
    info["ersm_format"] = version
    if verify and stored:
        computed = file_sha256(weights, header, meta.get(RECIPE_KEY, "").encode("utf-8"))
        sha.update(state="verified" if computed == stored else "mismatch", computed=computed)
    info["sha256"] = sha
    info["problems"] = problems
    return info
