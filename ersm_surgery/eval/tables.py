"""The evaluation's tables as plain data, rendered by the CLI (rich) and the HTML report alike.

Each table is ``{"key", "title", "columns", "rows" (lists of strings), "caption"}``.
"""
from __future__ import annotations

import math
from typing import Any

from .results_schema import Results

__all__ = ["build_tables", "fmt_flops", "short_name"]


def _pct(v: float | None) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}%"


def _num(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _signed_pct(v: float) -> str:
    return f"{100 * v:+.1f} pt"


def fmt_flops(v: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.2f} {unit}"
    return f"{v:.0f}"


def short_name(name: str) -> str:
    """``layer2.ersm_mask`` -> ``layer2``; ``layer3.0.ersm_mask_act1`` -> ``layer3.0.act1``."""
    return name.replace(".ersm_mask_", ".").replace(".ersm_mask", "").replace("ersm_mask_", "") or name


def _table(key: str, title: str, columns: list[str], rows: list[list[str]], caption: str = "") -> dict:
    return {"key": key, "title": title, "columns": columns, "rows": rows, "caption": caption}


def _accuracy(r: Results) -> dict:
    acc = r.accuracy
    k = acc["model"].top5_k
    rows = [[role, _pct(a.top1), _pct(a.top5), _num(a.mean_confidence)] for role, a in acc.items()]
    if "model" in acc and "baseline" in acc:
        m, b = acc["model"], acc["baseline"]
        rows.append(["model - baseline", _signed_pct(m.top1 - b.top1), _signed_pct(m.top5 - b.top5), ""])
    return _table("accuracy", "Accuracy", ["", "top-1", f"top-{k}", "mean confidence"], rows,
                  f"{acc['model'].images} images")


def _sparsity(r: Results) -> dict:
    rows = []
    for name, layer in r.sparsity.items():
        s = layer.detail
        d, a = s["density"], s["adaptivity"]
        rows.append([short_name(name), f"{s['grid'][0]}x{s['grid'][1]}", _num(d["mean"]), _num(d["std"]),
                     f"{_num(d['min'], 2)} - {_num(d['max'], 2)}", f"{_num(a['p10'], 2)} - {_num(a['p90'], 2)}",
                     _num(s["soft_density"]), f"{_num(s['coherence']['mask'])} ({_num(s['coherence']['random'])})",
                     f"{s['components']['mask']:.1f} ({s['components']['random']:.1f})",
                     _empty_full(s)])
    return _table("sparsity", "Sparsity (hard masks)",
                  ["mask", "grid", "density", "std", "min - max", "p10 - p90", "mean q",
                   "coherence (random)", "components (random)", "empty / full"], rows,
                  "density: kept fraction per image; std and p10-p90 show input adaptivity; coherence: mean "
                  "|m_i - m_j| over neighbour pairs (lower is more coherent), against random masks of the same "
                  "density per image; empty / full: share of images whose mask keeps no token / every token")


def _empty_full(s: dict) -> str:
    if "empty" not in s:  # results written before the count existed
        return "-"
    return f"{_pct(s['empty']['share'])} / {_pct(s['full']['share'])}"


def _compute(cp: dict) -> dict:
    rows = []
    for role, c in cp.items():
        lat, fast = c["latency"], c.get("sparse_latency")
        rows.append([role, fmt_flops(c["dense_flops"]), fmt_flops(c["conditional_flops"]),
                     _pct(c["conditional_ratio"]), fmt_flops(c["mask_flops"]), f"{c['params']:,}",
                     f"{lat['per_image_ms']:.2f} ms", f"{fast['per_image_ms']:.2f} ms" if fast else "-"])
    return _table("compute", "Compute per image",
                  ["", "dense FLOPs", "conditional FLOPs (theoretical)", "cond./dense", "mask FLOPs",
                   "parameters", f"latency (batch {next(iter(cp.values()))['latency']['batch_size']})",
                   "sparse latency (measured)"],
                  rows, "FLOPs from torch.utils.flop_counter; conditional FLOPs count the modules after each mask "
                  "at its mean kept fraction (a sparse-runtime estimate; the dense model computes every token, as "
                  "the measured latency shows); sparse latency: ersm_surgery.sparse(model), measured, for a "
                  "mask.gate=stage model only (docs/sparse.md)")


def _occlusion(r: Results) -> dict:
    rows = []
    for role, curves in r.occlusion.items():
        for name, curve in curves.items():
            rows.append([role, name, _pct(curve.clean_accuracy), _pct(curve.mean_accuracy),
                         _num(curve.ratio), " ".join(f"{100 * a:.0f}" for a in curve.accuracy)])
    info = r.occlusion_info
    levels = " ".join(f"{v:g}" for v in info["levels"])
    return _table("occlusion", "Occlusion robustness",
                  ["", "occluder", "clean", "mean occluded", "occluded / clean", f"top-1 % at IL {levels}"], rows,
                  f"grid {info['grid']} cells per side for patch drop and Hide-and-Seek; fill: {info['fill']}")


def _deletion(r: Results) -> dict:
    rows = []
    for role, layers in r.deletion.items():
        for layer, rankings in layers.items():
            for ranking, orders in rankings.items():
                lerf, morf = orders.get("lerf"), orders.get("morf")
                rows.append([short_name(layer), ranking if role == "model" else f"{ranking} (baseline)",
                             _num(lerf.accuracy_auc) if lerf else "", _num(morf.accuracy_auc) if morf else "",
                             _num(lerf.accuracy_auc - morf.accuracy_auc) if lerf and morf else "",
                             _num(lerf.probability_auc) if lerf else "",
                             _num(morf.probability_auc) if morf else ""])
    dl = r.deletion_info
    caption = (f"AUC over fractions {dl['fractions'][0]:g}-{dl['fractions'][-1]:g} (normalised: mean height); "
               f"fill {dl['fill']}. A better ranking has a higher LeRF and a lower MoRF AUC. ")
    cost = dl.get("cost")
    if cost:
        caption += (f"Cost: {cost['deletion_seconds']:.1f} s = {cost['ratio']:.1f}x one plain pass "
                    f"({cost['method']} split, {cost['rows']} rows rerun, {cost['reused']} reused).")
    return _table("deletion", "Feature deletion (top-1 AUC; probability AUC)",
                  ["mask", "ranking", "LeRF acc", "MoRF acc", "LeRF - MoRF", "LeRF prob", "MoRF prob"], rows, caption)


def _localization(r: Results) -> dict:
    rows = []
    for layer, s in r.localization.items():
        for kind, v in s.maps.items():
            rows.append([short_name(layer), kind.replace("_", " "), _pct(v.pointing), _pct(v.mass_in_box),
                         _num(v.iou)])
        rows.append([short_name(layer), "chance", _pct(s.pointing_chance), _pct(s.box_fraction), ""])
    return _table("localization", "Localization (object boxes)",
                  ["mask", "map", "pointing game", "mass in box", "IoU"], rows,
                  f"pointing game with {r.pointing_tolerance:g}-token tolerance; IoU of each map's top tokens "
                  "with the box, as many per image as the hard mask kept (for energy: the hard mask's own IoU); "
                  "chance: a uniformly random top token, and the share of tokens in the box")


_INTERVAL_NAMES = {"accuracy": "top-1", "occlusion": "occluded / clean ratio",
                   "localization_mass": "mass in box (energy - baseline magnitude)",
                   "localization_pointing": "pointing game (energy - baseline magnitude)",
                   "deletion": "LeRF - MoRF AUC (energy - magnitude)", "shift": "cued -> decorrelated drop "
                   "(baseline - ERSM)", "swap": "kept after background swap"}


def _intervals(r: Results) -> dict:
    rows = [[_INTERVAL_NAMES.get(k, k), _num(v.estimate), f"[{_num(v.low)}, {_num(v.high)}]", str(v.images)]
            for k, v in r.intervals.items()]
    first = next(iter(r.intervals.values()))
    return _table("intervals", "Paired differences, ERSM vs baseline (95% intervals)",
                  ["figure", "estimate", "95% interval", "images"], rows,
                  f"percentile intervals of a paired bootstrap over the evaluated images ({first.resamples} "
                  f"resamples, {first.seeds} seed(s)); see docs/pipeline.md for how seeds and images combine")


def _background(r: Results) -> dict:
    b = r.background
    rows = [[role, "spurious cue", f"cued {_pct(c['cued'])}, decorrelated {_pct(c['decorrelated'])}",
             _signed_pct(c["drop"])] for role, c in b.cue.items()]
    rows += [[role, "background swap", f"{_pct(kept)} of predictions kept", ""] for role, kept in b.swap.items()]
    return _table("background", "Reliance on the background (claim (f))", ["", "test", "top-1 / kept", "drop"], rows,
                  (f"spurious cue: the same {b.cue_images} images with the background tint that names the class "
                   "(cued) and with an independent one (decorrelated). " if b.cue else "")
                  + (f"background swap: {b.swap_method} ({b.swap_images} images)." if b.swap else ""))


def _compute_of(r: Results) -> dict:
    return _compute(r.other["compute"])


def build_tables(results: dict[str, Any] | Results) -> list[dict]:
    """Every table the results allow, in report order (any results.json version, see :mod:`.results_schema`)."""
    r = Results.from_dict(results)
    present = {"accuracy": bool(r.accuracy), "sparsity": bool(r.sparsity), "compute": bool(r.other.get("compute")),
               "occlusion": bool(r.occlusion), "deletion": bool(r.deletion), "localization": bool(r.localization),
               "background": r.background is not None,
               "intervals": bool(r.intervals)}
    builders = (("accuracy", _accuracy), ("sparsity", _sparsity), ("compute", _compute_of), ("occlusion", _occlusion),
                ("deletion", _deletion), ("localization", _localization), ("background", _background),
                ("intervals", _intervals))
    return [build(r) for key, build in builders if present[key]]
