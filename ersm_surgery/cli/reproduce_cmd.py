"""``ersm-surgery reproduce``: the paper's claims tested over fine-tuning seeds, each with a verdict."""
from __future__ import annotations

from functools import partial
from pathlib import Path

import click

from ..model_source import short_name
from ._common import console, emit_json
from .run_cmd import build_settings, fail_if_export_failed, pipeline_options, protocol_defaults, run_with_display

# The protocol of benchmarks/bench_finetune.py, where the default mask settings were measured: on the
# built-in data 4 classes, a base trained on 6000 unique images for 4 epochs, then 3 epochs of fine-tuning
# on 2000 at batch 32 and lr 3e-4. 6 min 20 s on an idle 2-core CPU for one seed (benchmarks/README.md).
DEFAULT_BUDGET_MINUTES = 20
# a fixed base count (not run's time budget): the evidence protocol gives the same base on every machine
DEFAULT_EPOCHS = {"base_epochs": 4, "epochs": 3}
BASE_IMAGES = 6000
# claim (f) on the built-in data: the share of train images whose background tint names the class
# at 0.9 resnet18's base learned the tint alone (train top-1 93%, decorrelated validation 25.6% = chance,
# stopped by the base gate): half the images untinted leaves shape as the only way to fit the rest
DEFAULT_SPURIOUS_CUE = 0.5


@click.command("reproduce")
@click.option("--model", default="resnet18", show_default=True,
              help="A timm name, hf-hub:ORG/NAME or local-dir:PATH; a comma-separated list runs the protocol per "
                   "model (e.g. resnet18,convnext_atto).")
@click.option("--stages", default="2,3", show_default=True)
@click.option("--seeds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Fine-tuning seeds: both fine-tunings run once per seed from the same base.")
@click.option("--spurious-cue", type=click.FloatRange(0, 1), default=None,
              help=f"Built-in data: share of train images whose background tint names the class, for claim (f) "
                   f"(default {DEFAULT_SPURIOUS_CUE}; 0 turns the cue off).")
@click.option("--budget-minutes", type=click.FloatRange(min=1), default=DEFAULT_BUDGET_MINUTES, show_default=True,
              help="Scales the default epochs (measured on a 2-core CPU) to this budget.")
@pipeline_options
@click.pass_context
def reproduce(ctx: click.Context, model: str, stages: str, seeds: int, spurious_cue: float | None,
              budget_minutes: float, as_json: bool, **options) -> None:
    """Train a base, fine-tune with ERSM and without masks for the same steps over --seeds seeds, and test the
    claims with both criteria versions.

    The criteria are fixed in ersm_surgery/pipeline/claims.py (version 1) and claims_v2.py (version 2) before
    any run and printed with the verdicts.
    """
    from ..pipeline.reproduce import reproduce as run_reproduce

    models = [m.strip() for m in model.split(",") if m.strip()]
    if not models:
        raise click.BadParameter("name at least one model", param_hint="--model")
    builtin = options["data_dir"] is None and options["dataset"] in (None, "builtin:clutter")
    if spurious_cue is not None and not builtin:
        raise click.BadParameter("applies to built-in data only (a folder has no planted cue)",
                                 param_hint="--spurious-cue")
    scale = budget_minutes / DEFAULT_BUDGET_MINUTES
    epochs = {k: max(1, round(v * scale)) for k, v in DEFAULT_EPOCHS.items()}
    root = options["output"]
    quiet = bool((ctx.obj or {}).get("quiet")) or as_json
    summaries = {}
    for name in models:
        # several models: one folder each under -o (default ./reproduce)
        per_model = {**options, "output": str(Path(root or "reproduce") / short_name(name)) if len(models) > 1
                     else root}
        defaults = protocol_defaults(per_model, epochs, BASE_IMAGES, f"{short_name(name)}-reproduce")
        settings = build_settings(name, stages, defaults, **per_model)
        if builtin:
            cue = DEFAULT_SPURIOUS_CUE if spurious_cue is None else spurious_cue
            settings.data_options = {**settings.data_options, "spurious_cue": cue}
        summaries[name] = run_with_display(ctx, settings, quiet, partial(run_reproduce, seeds=seeds))
    if as_json:
        emit_json({"models": {name: {k: s[k] for k in ("claims", "claims_v2", "seeds", "report", "timings",
                                                       "export_error")} for name, s in summaries.items()},
                   # one model: its rows at the top level too, as before
                   **({k: next(iter(summaries.values()))[k] for k in ("claims", "claims_v2", "report", "timings",
                                                                       "export_error")} if len(models) == 1 else {})})
    else:
        _render(console(ctx), summaries, stages)
    for s in summaries.values():
        fail_if_export_failed(s)


def _render(out, summaries: dict, stages: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    for name, summary in summaries.items():
        base = summary["summary"]
        settings = summary["settings"]
        if base.get("base.untrained"):
            out.print(f"[bold red]UNTRAINED BASE (--force-base):[/] the base reached {100 * base['base.top1']:.1f}% "
                      f"(chance {100 * base['base.chance']:.1f}%); no verdict below tests a claim")
        elif "base.top1" in base:
            out.print(f"base: {100 * base['base.top1']:.1f}% validation top-1 "
                      f"(chance {100 * base['base.chance']:.1f}%)")
        t = Table(title=escape(f"ERSM claims, criteria version 1 ({name} on {settings['data']}, stages {stages}, "
                               f"seed {settings['seed']})"))
        for col in ("claim", "criterion", "ERSM", "baseline / magnitude", "verdict"):
            t.add_column(col)
        for r in summary["claims"]:
            t.add_row(escape(r["claim"]), escape(r["criterion"]), _fmt(r["ersm"]), _fmt(r["comparison"]), r["verdict"])
        out.print(t)
        seeds = summary["seeds"]
        t = Table(title=f"ERSM claims, criteria version 2 ({name}, seeds {seeds[0]}-{seeds[-1]}, paired bootstrap "
                        "over seeds x images)")
        for col in ("claim", "criterion", "estimate [95% interval]", "verdict"):
            t.add_column(col)
        for r in summary["claims_v2"]:
            figure = "-" if r["estimate"] is None else f"{r['estimate']:.3f} [{r['low']:.3f}, {r['high']:.3f}]"
            t.add_row(escape(r["claim"]), escape(r["criterion"]), escape(figure), r["verdict"])
        out.print(t)
        out.print(f"report: [bold]{summary['report']}[/]; claims: {settings['output']}/claims.json")
    if len(summaries) > 1:
        t = Table(title="Summary: criteria version 2 verdicts per model")
        t.add_column("claim")
        for name in summaries:
            t.add_column(name)
        first = next(iter(summaries.values()))["claims_v2"]
        for i, row in enumerate(first):
            t.add_row(escape(row["claim"]), *[s["claims_v2"][i]["verdict"] for s in summaries.values()])
        out.print(t)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
