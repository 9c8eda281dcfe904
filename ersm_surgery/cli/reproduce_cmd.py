"""``ersm-surgery reproduce``: the paper's five claims tested on built-in data, each with a verdict."""
from __future__ import annotations

import json
from pathlib import Path

import click

from ..model_source import short_name
from ._common import console, emit_json
from .run_cmd import build_settings, fail_if_export_failed, pipeline_options, protocol_defaults, run_with_display

# The protocol of benchmarks/bench_finetune.py, where the default mask settings were measured: on the
# built-in data 4 classes, a base trained on 6000 unique images for 4 epochs, then 3 epochs of fine-tuning
# on 2000 at batch 32 and lr 3e-4. 6 min 20 s on an idle 2-core CPU (benchmarks/README.md).
DEFAULT_BUDGET_MINUTES = 20
DEFAULT_EPOCHS = {"base_epochs": 4, "epochs": 3}
BASE_IMAGES = 6000


@click.command("reproduce")
@click.option("--model", default="resnet18", show_default=True,
              help="A timm name, hf-hub:ORG/NAME or local-dir:PATH.")
@click.option("--stages", default="2,3", show_default=True)
@click.option("--budget-minutes", type=click.FloatRange(min=1), default=DEFAULT_BUDGET_MINUTES, show_default=True,
              help="Scales the default epochs (measured on a 2-core CPU) to this budget.")
@pipeline_options
@click.pass_context
def reproduce(ctx: click.Context, model: str, stages: str, budget_minutes: float, as_json: bool, **options) -> None:
    """Train a base, fine-tune with ERSM and without masks for the same steps, and test the five claims.

    The criteria are fixed in ersm_surgery/pipeline/claims.py before any run and printed with the verdicts.
    """
    scale = budget_minutes / DEFAULT_BUDGET_MINUTES
    epochs = {k: max(1, round(v * scale)) for k, v in DEFAULT_EPOCHS.items()}
    defaults = protocol_defaults(options, epochs, BASE_IMAGES, f"{short_name(model)}-reproduce")
    settings = build_settings(model, stages, defaults, **options)
    summary = run_with_display(ctx, settings, bool((ctx.obj or {}).get("quiet")) or as_json)

    from ..eval.results import to_jsonable
    from ..io.atomic import atomic_write_text
    from ..pipeline import judge_claims

    rows = judge_claims(summary["results"])

    atomic_write_text(Path(settings.output) / "claims.json", json.dumps(to_jsonable(rows), indent=2) + "\n")
    if as_json:
        emit_json({"claims": rows, "report": summary["report"], "timings": summary["timings"],
                   "export_error": summary["export_error"]})
        fail_if_export_failed(summary)
        return
    from rich.table import Table

    out = console(ctx)
    base = summary["summary"]
    if base.get("base.untrained"):
        out.print(f"[bold red]UNTRAINED BASE (--force-base):[/] the base reached {100 * base['base.top1']:.1f}% "
                  f"(chance {100 * base['base.chance']:.1f}%); no verdict below tests a claim")
    elif "base.top1" in base:
        out.print(f"base: {100 * base['base.top1']:.1f}% validation top-1 (chance {100 * base['base.chance']:.1f}%)")
    t = Table(title=f"ERSM claims on {settings.data} ({model}, stages {stages}, seed {settings.seed})")
    for col in ("claim", "criterion", "ERSM", "baseline / magnitude", "verdict"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["claim"], r["criterion"], _fmt(r["ersm"]), _fmt(r["comparison"]), r["verdict"])
    out.print(t)
    out.print(f"report: [bold]{summary['report']}[/]; claims: {settings.output}/claims.json")
    fail_if_export_failed(summary)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
