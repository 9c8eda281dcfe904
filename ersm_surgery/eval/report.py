"""One self-contained HTML report: the tables and every figure, images embedded as base64 PNG.

The file needs nothing else (no scripts, no network, no sibling files), so it can be mailed or
archived on its own.
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from .tables import build_tables

__all__ = ["render_report", "write_report"]

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1200px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.88em; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.6em; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
.caption { color: #666; font-size: 0.82em; max-width: 60em; }
.notes li { color: #8a4b00; } figure { margin: 1em 0; } img { max-width: 100%; height: auto; }
figcaption { color: #666; font-size: 0.82em; } dl { display: grid; grid-template-columns: max-content auto;
gap: 0.2em 1em; font-size: 0.9em; } dt { font-weight: 600; }
"""

_FIGURE_CAPTIONS = {
    "masks": "Images (object box in yellow), then per mask layer: the kept tokens, the negative token energy "
             "(bright = important) and the L2 magnitude of the features the mask received.",
    "density": "Per-image kept fraction of each mask: its spread shows how input-adaptive the sparsity is.",
    "occlusion": "Top-1 accuracy against the fraction of the image hidden, for the same occlusions on both models.",
    "background": "Claim (f): top-1 with the background cue that names the class and with an independent one, "
                  "and the share of predictions kept when the object is pasted onto another class's background.",
    "intervals": "Each paired difference ERSM - baseline with its 95% bootstrap interval over the evaluated images; "
                 "an interval that crosses the dashed zero line does not separate the models.",
}


def _table_html(t: dict) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t["columns"])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in t["rows"])
    caption = f'<p class="caption">{html.escape(t["caption"])}</p>' if t.get("caption") else ""
    return f'<h2 id="{t["key"]}">{html.escape(t["title"])}</h2><table><tr>{head}</tr>{body}</table>{caption}'


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _figure_html(key: str, path: Path) -> str:
    caption = _FIGURE_CAPTIONS.get(key)
    if key.startswith("deletion:"):
        caption = (f"Deletion at {key.split(':', 1)[1]}: tokens removed from the masked features by ERSM energy, "
                   "L2 magnitude and at random (and by magnitude on the baseline).")
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f"<figure>{_img(path, key)}{cap}</figure>"


def _about(results: dict[str, Any]) -> str:
    rows = []
    for role, info in (results.get("models") or {}).items():
        what = info.get("source") or info.get("name") or ""
        masks = ", ".join(info.get("masks") or []) or ("no masks" if role == "model" else "")
        rows.append((role, f"{what} {('(' + masks + ')') if masks else ''}"))
    base = results.get("base") or {}
    if base.get("top1") is not None:
        mark = "; UNTRAINED (failed the gate, --force-base)" if base.get("untrained") else ""
        plan = base.get("epochs") or {}
        trained = ""
        if plan.get("epochs"):
            pictures = f" of {plan['train_images']} pictures" if plan.get("train_images") else ""
            how = "the time budget" if plan.get("chosen_by") == "budget" else "given"
            trained = f", after {plan['epochs']} epoch(s){pictures} ({how})"
        rows.append(("base", f"{base.get('source', '')}: validation top-1 {100 * base['top1']:.1f}% "
                             f"(chance {100 * base['chance']:.1f}%){trained}{mark}"))
    data = results.get("data") or {}
    rows.append(("data", ", ".join(f"{k}={v}" for k, v in data.items() if k not in ("classes",))))
    settings = results.get("settings") or {}
    rows.append(("seed", str(settings.get("seed"))))
    rows.append(("versions", ", ".join(f"{k} {v}" for k, v in (results.get("versions") or {}).items())))
    return "<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(str(v))}</dd>" for k, v in rows) + "</dl>"


def render_report(results: dict[str, Any], figures: dict[str, Path], title: str = "ERSM evaluation") -> str:
    """The report as one HTML string."""
    parts = [f"<h1>{html.escape(title)}</h1>", _about(results)]
    notes = results.get("notes") or []
    if notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{html.escape(n)}</li>" for n in notes) + "</ul>")
    placed = set()
    for table in build_tables(results):
        parts.append(_table_html(table))
        related = {"sparsity": ["density"], "occlusion": ["occlusion"], "intervals": ["intervals"],
                   "background": ["background"],
                   "deletion": [k for k in figures if k.startswith("deletion:")]}.get(table["key"], [])
        for key in related:
            if key in figures:
                parts.append(_figure_html(key, figures[key]))
                placed.add(key)
    rest = [k for k in figures if k not in placed]
    if rest:
        parts.append('<h2 id="masks">Masks</h2>')
        parts += [_figure_html(k, figures[k]) for k in rest]
    payload = json.dumps({"figures": sorted(figures)})
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style>"
            f'<meta name="ersm-figures" content="{html.escape(payload)}"></head><body>'
            + "\n".join(parts) + "</body></html>\n")


def write_report(results: dict[str, Any], figures: dict[str, Path], path: str | Path,
                 title: str = "ERSM evaluation") -> Path:
    """Write the report atomically; returns its path."""
    from ..io.atomic import atomic_write_text
    from .results import make_readable

    path = Path(path)
    atomic_write_text(path, render_report(results, figures, title))
    return make_readable(path)
