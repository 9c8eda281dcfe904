"""``ersm-surgery reproduce``: the paper's five claims tested on built-in data, each with a verdict."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ._common import console, emit_json
from .run_cmd import build_settings, pipeline_options, run_with_display

# epochs that fit the default budget on a 2-core CPU (resnet18, 64 px, builtin:clutter)
DEFAULT_BUDGET_MINUTES = 20
DEFAULT_EPOCHS = {"base_epochs": 8, "epochs": 4}


@click.command("reproduce")
@click.option("--model", default="resnet18", show_default=True)
@click.option("--stages", default="2,3", show_default=True)
@click.option("--budget-minutes", type=click.FloatRange(min=1), default=DEFAULT_BUDGET_MINUTES, show_default=True,
              help="Scales the default epochs (measured on a 2-core CPU) to this budget.")
@pipeline_options
@click.pass_context
def reproduce(ctx: click.Context, model, stages, budget_minutes, data_dir, dataset, epochs, base_epochs, img_size,
              data_size, batch_size, pretrained, pretrained_path, seed, num_images, overrides, output, force,
              as_json) -> None:
    """Train a base, fine-tune with ERSM and without masks for the same steps, and test the five claims.

    The criteria are fixed in ersm_surgery/pipeline/claims.py before any run and printed with the verdicts.
    """
    scale = budget_minutes / DEFAULT_BUDGET_MINUTES
    defaults = {k: max(1, round(v * scale)) for k, v in DEFAULT_EPOCHS.items()}
    settings = build_settings(model, stages, data_dir, dataset, epochs, base_epochs, img_size, data_size, batch_size,
                              pretrained, pretrained_path, seed, num_images, overrides,
                              output or f"{model}-reproduce", force, defaults)
    summary = run_with_display(ctx, settings, bool((ctx.obj or {}).get("quiet")) or as_json)

    from ..eval.results import to_jsonable
    from ..io.atomic import atomic_write_text
    from ..pipeline import judge_claims

    rows = judge_claims(summary["results"])

    atomic_write_text(Path(settings.output) / "claims.json", json.dumps(to_jsonable(rows), indent=2) + "\n")
    if as_json:
        emit_json({"claims": rows, "report": summary["report"], "timings": summary["timings"]})
        return
    from rich.table import Table

    out = console(ctx)
    t = Table(title=f"ERSM claims on {settings.data} ({model}, stages {stages}, seed {seed})")
    for col in ("claim", "criterion", "ERSM", "baseline / magnitude", "verdict"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["claim"], r["criterion"], _fmt(r["ersm"]), _fmt(r["comparison"]), r["verdict"])
    out.print(t)
    out.print(f"report: [bold]{summary['report']}[/]; claims: {settings.output}/claims.json")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
