"""The evaluation's pictures, as PNG files: masks on images, deletion curves, occlusion curves, densities.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot, no global backend
switch, no display needed) and written atomically.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .results_schema import LayerSparsity, OcclusionCurve, Results
from .stats import Interval

__all__ = ["write_figures", "mask_grid", "deletion_figure", "occlusion_figure", "density_figure", "intervals_figure",
           "background_figure"]

_RANKING_STYLE = {
    "energy": {"color": "#d62728", "label": "ERSM energy"},
    "magnitude": {"color": "#1f77b4", "label": "L2 magnitude"},
    "random": {"color": "#7f7f7f", "label": "random"},
    "baseline": {"color": "#1f77b4", "linestyle": "--", "label": "baseline magnitude"},
}
_OCCLUDER_TITLES = {"patch_drop": "random patch drop", "cutout": "Cutout (one square)",
                    "hide_and_seek": "Hide-and-Seek"}


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(fig, path: Path) -> Path:
    from ..io.atomic import atomic_write_bytes
    from .results import make_readable

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    atomic_write_bytes(path, buf.getvalue())
    return make_readable(path)


def _upsample(token_map: torch.Tensor, h: int, w: int) -> np.ndarray:
    m = token_map.float()[None, None]
    return torch.nn.functional.interpolate(m, size=(h, w), mode="nearest")[0, 0].numpy()


def _box(ax, box, h: int, w: int) -> None:
    from matplotlib.patches import Rectangle

    if box is None:
        return
    x0, y0, x1, y1 = box
    ax.add_patch(Rectangle((x0 * w - 0.5, y0 * h - 0.5), (x1 - x0) * w, (y1 - y0) * h, fill=False,
                           edgecolor="#ffdd00", linewidth=1.2))


def _short(name: str) -> str:
    from .tables import short_name

    return short_name(name)


def mask_grid(samples: dict[str, Any], path: Path) -> Path | None:
    """Rows of images: the image, then per mask layer the kept tokens, -energy and feature magnitude."""
    layers = samples.get("layers") or {}
    images = samples["images"]
    if not images or not layers:
        return None
    per_layer = [(name, kind) for name in layers for kind in ("mask", "energy", "magnitude", "baseline_magnitude")
                 if (kind == "mask" and "hard" in layers[name]) or kind in layers[name]]
    cols = 1 + len(per_layer)
    rows = len(images)
    fig = _figure(1.6 * cols, 1.65 * rows + 0.3)
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    classes = samples["classes"]
    boxes = samples.get("boxes")
    for r, img in enumerate(images):
        pic = img.numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        h, w = pic.shape[:2]
        box = boxes[r] if boxes else None
        ax = axes[r, 0]
        ax.imshow(pic)
        _box(ax, box, h, w)
        pred = samples["pred"]["model"][r]
        ax.set_title(f"{classes[samples['labels'][r]]} / pred {classes[pred]}", fontsize=7)
        for c, (name, kind) in enumerate(per_layer, start=1):
            ax = axes[r, c]
            maps = layers[name]
            if kind == "mask":
                keep = _upsample(maps["hard"][r], h, w)
                ax.imshow(pic * (0.2 + 0.8 * keep[..., None]))
                title = f"{_short(name)} kept {100 * float(maps['hard'][r].float().mean()):.0f}%"
            elif kind == "energy":
                ax.imshow(-maps["energy"][r].numpy(), cmap="magma", extent=(-0.5, w - 0.5, h - 0.5, -0.5))
                title = f"{_short(name)} -energy"
            else:
                ax.imshow(maps[kind][r].numpy(), cmap="viridis", extent=(-0.5, w - 0.5, h - 0.5, -0.5))
                title = f"{_short(name)} {'baseline |f|' if kind == 'baseline_magnitude' else '|f|'}"
            _box(ax, box, h, w)
            if r == 0:
                ax.set_title(title, fontsize=7)
            elif kind == "mask":
                ax.set_title(title.split(" ", 1)[1], fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return _save(fig, path)


def deletion_figure(results: Results, layer: str, path: Path) -> Path | None:
    """LeRF and MoRF curves at one layer: top-1 and clean-class probability vs fraction removed."""
    model = (results.deletion.get("model") or {}).get(layer)
    if not model:
        return None
    baseline = (results.deletion.get("baseline") or {}).get(layer)
    fractions = results.deletion_info["fractions"]
    fig = _figure(8.5, 5.5)
    axes = fig.subplots(2, 2, sharex=True)
    for col, order in enumerate(("lerf", "morf")):
        for row, metric in enumerate(("accuracy", "probability")):
            ax = axes[row, col]
            for ranking, curves in model.items():
                curve = curves.get(order)
                if curve:
                    style = _RANKING_STYLE[ranking]
                    ax.plot(fractions, getattr(curve, metric), marker="o", markersize=3, color=style["color"],
                            label=f"{style['label']} (AUC {getattr(curve, metric + '_auc'):.3f})")
            if baseline and "magnitude" in baseline and order in baseline["magnitude"]:
                curve = baseline["magnitude"][order]
                style = _RANKING_STYLE["baseline"]
                ax.plot(fractions, getattr(curve, metric), marker="s", markersize=3, color=style["color"],
                        linestyle=style["linestyle"],
                        label=f"{style['label']} (AUC {getattr(curve, metric + '_auc'):.3f})")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
            if row == 0:
                ax.set_title(f"{order.upper()} ({'least' if order == 'lerf' else 'most'} important first)",
                             fontsize=9)
            ax.set_ylabel("top-1 accuracy" if metric == "accuracy" else "p(clean prediction)", fontsize=8)
            if row == 1:
                ax.set_xlabel("fraction of tokens removed", fontsize=8)
    fig.suptitle(f"feature deletion at {layer} (fill: {results.deletion_info['fill']})", fontsize=10)
    return _save(fig, path)


def occlusion_figure(occlusion: dict[str, dict[str, OcclusionCurve]], path: Path) -> Path | None:
    """Accuracy vs information loss for each occluder, model and baseline."""
    roles = [r for r in ("model", "baseline") if r in occlusion]
    if not roles:
        return None
    names = list(occlusion[roles[0]])
    fig = _figure(3.2 * len(names), 3.2)
    axes = np.atleast_1d(fig.subplots(1, len(names), sharey=True, squeeze=False)[0])
    for ax, name in zip(axes, names, strict=True):
        for role in roles:
            curve = occlusion[role][name]
            ax.plot(curve.levels, curve.accuracy, marker="o", markersize=3,
                    linestyle="-" if role == "model" else "--",
                    label=f"{role} (occluded/clean {curve.ratio:.2f})" if curve.ratio == curve.ratio else role)
        ax.set_title(_OCCLUDER_TITLES.get(name, name), fontsize=9)
        ax.set_xlabel("information loss", fontsize=8)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("top-1 accuracy", fontsize=8)
    return _save(fig, path)


def density_figure(sparsity: dict[str, LayerSparsity], path: Path) -> Path | None:
    """Histogram of per-image mask density for each layer (input adaptivity)."""
    if not sparsity:
        return None
    fig = _figure(3.2 * len(sparsity), 2.8)
    axes = np.atleast_1d(fig.subplots(1, len(sparsity), squeeze=False)[0])
    for ax, (name, layer) in zip(axes, sparsity.items(), strict=True):
        hist = layer.detail["histogram"]
        edges, counts = np.asarray(hist["edges"]), np.asarray(hist["counts"])
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", color="#d62728", alpha=0.8,
               edgecolor="white")
        ax.set_title(f"{_short(name)}: density {layer.density_mean:.2f} ± {layer.density_std:.2f}", fontsize=9)
        ax.set_xlabel("kept fraction per image", fontsize=8)
        ax.set_xlim(0, 1)
    axes[0].set_ylabel("images", fontsize=8)
    return _save(fig, path)


def intervals_figure(intervals: dict[str, Interval], path: Path) -> Path | None:
    """Each paired difference (ERSM - baseline) with its 95% interval, against zero."""
    if not intervals:
        return None
    from .tables import _INTERVAL_NAMES

    names = list(intervals)
    fig = _figure(7.5, 0.45 * len(names) + 1.0)
    ax = fig.subplots()
    for y, name in enumerate(names):
        iv = intervals[name]
        ax.plot([iv.low, iv.high], [y, y], color="#d62728", linewidth=2)
        ax.plot([iv.estimate], [y], "o", color="#d62728", markersize=5)
    ax.axvline(0.0, color="#7f7f7f", linewidth=1, linestyle="--")
    ax.set_yticks(range(len(names)), [_INTERVAL_NAMES.get(n, n) for n in names], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ERSM - baseline (95% interval)", fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def background_figure(results: Results, path: Path) -> Path | None:
    """Claim (f): top-1 cued vs decorrelated and the share kept after a background swap, per model."""
    b = results.background
    if b is None:
        return None
    roles = [r for r in ("model", "baseline") if r in b.cue or r in b.swap]
    swap = {role: {"kept": kept} for role, kept in b.swap.items()}
    bars = [(k, part) for k, part in (("cued", b.cue), ("decorrelated", b.cue), ("kept", swap)) if part]
    fig = _figure(1.6 + 1.3 * len(bars), 3.0)
    ax = fig.subplots()
    width = 0.8 / len(roles)
    for i, role in enumerate(roles):
        values = [part.get(role, {}).get(k, float("nan")) for k, part in bars]
        ax.bar(np.arange(len(bars)) + i * width, values, width, label="ERSM" if role == "model" else role,
               color="#d62728" if role == "model" else "#1f77b4")
    names = {"cued": "top-1 cued", "decorrelated": "top-1 decorrelated", "kept": "kept (background swap)"}
    ax.set_xticks(np.arange(len(bars)) + width * (len(roles) - 1) / 2, [names[k] for k, _ in bars], fontsize=7)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    return _save(fig, path)


# the figures with one file each; deletion curves add deletion_<layer>.png per masked layer
FIXED_FIGURES = ("masks.png", "density.png", "occlusion.png", "background.png", "intervals.png")


def write_figures(results: dict | Results, samples: dict, out_dir: str | Path) -> dict[str, Path]:
    """Write every figure the results allow into ``out_dir``; returns {figure id: path}."""
    r = Results.from_dict(results)
    out = Path(out_dir)
    written: dict[str, Path] = {}

    def keep(key: str, path: Path | None) -> None:
        if path is not None:
            written[key] = path

    keep("masks", mask_grid(samples, out / "masks.png"))
    keep("density", density_figure(r.sparsity, out / "density.png"))
    keep("occlusion", occlusion_figure(r.occlusion, out / "occlusion.png"))
    for layer in r.deletion.get("model", {}):
        keep(f"deletion:{layer}", deletion_figure(r, layer, out / f"deletion_{_short(layer)}.png"))
    keep("background", background_figure(r, out / "background.png"))
    keep("intervals", intervals_figure(r.intervals, out / "intervals.png"))
    return written
