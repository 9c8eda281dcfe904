"""``ersm-surgery run MODEL --stages 2,3``: the whole story in one command."""
from __future__ import annotations

import click

from ..model_source import short_name
from ._common import DEVICES, console, device_callback, emit_json


def pipeline_options(func):
    """Options shared by ``run`` and ``reproduce``."""
    options = [
        click.option("--data-dir", type=click.Path(file_okay=False), help="ImageFolder with train/ and validation/."),
        click.option("--dataset", default=None, help="Built-in data (default: builtin:clutter)."),
        click.option("--boxes", type=click.Path(), help="Object boxes for --data-dir's validation images: a JSON "
                     "{relpath: [x0, y0, x1, y1]}, a COCO instances JSON or a folder of Pascal VOC XML."),
        click.option("--epochs", type=click.IntRange(min=1),
                     help="Fine-tuning epochs, ERSM and baseline alike (run: 2, reproduce: 3)."),
        click.option("--base-epochs", type=click.IntRange(min=1),
                     help="Base-training epochs without pretrained weights (reproduce: 4; run: what ~130 s affords "
                          "on this machine, measured: built-in data get more unique pictures, a folder more "
                          "epochs; recorded in base/base_settings.json)."),
        click.option("--img-size", type=click.IntRange(min=16), default=64, show_default=True),
        click.option("--data-size", type=click.IntRange(min=8),
                     help="Images per split of built-in data (default: 2000 train, 500 validation; the base "
                          "trains on more unique images unless this is given)."),
        click.option("--num-classes", type=click.IntRange(min=2),
                     help="Classes of built-in data (default: 4; a folder's are its class folders)."),
        click.option("-b", "--batch-size", type=click.IntRange(min=1),
                     help="Images per step.  [default: 32]"),
        click.option("--pretrained", is_flag=True, help="Start from timm's pretrained weights (needs the network)."),
        click.option("--pretrained-path", type=click.Path(dir_okay=False), help="Start from local base weights."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--num-images", type=click.IntRange(min=1), default=256, show_default=True,
                     help="Validation images evaluated."),
        click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                     help="mask.* or finetune.* settings, e.g. mask.alpha=0.3."),
        click.option("--export-rtol", type=click.FloatRange(min=0),
                     help="ONNX validation: tolerance relative to each output's scale (export's --rtol)."),
        click.option("--export-atol", type=click.FloatRange(min=0),
                     help="ONNX validation: absolute floor of the tolerance (export's --atol)."),
        click.option("--device", default="auto", show_default=True, callback=device_callback, metavar="DEVICE",
                     help=f"Where every step runs: {DEVICES} (auto: CUDA, then MPS, then CPU)."),
        click.option("-j", "--workers", type=click.IntRange(min=0), default=0, show_default=True,
                     help="DataLoader worker processes of the trainings (0 here: the built-in data render fast "
                          "in the main process, and the main job's time was measured so)."),
        click.option("--one-after-another", "one_after_another", is_flag=True,
                     help="Fine-tune ERSM and the baseline one after the other (on a CPU they otherwise run side "
                          "by side in two processes: ~1.3x faster on 2 cores, twice the peak memory)."),
        click.option("-o", "--output", help="Run folder."),
        click.option("--force", is_flag=True, help="Write into an existing non-empty folder."),
        click.option("--force-base", is_flag=True,
                     help="Inject even when the base trained here stayed near chance; every figure is then "
                          "marked as computed on an untrained base."),
        click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def protocol_defaults(options: dict, epochs: dict[str, int], base_images: int, output: str) -> dict:
    """The command's defaults (:func:`ersm_surgery.pipeline.settings.protocol_defaults`) for its options."""
    from ..pipeline.settings import protocol_defaults as defaults_for

    return defaults_for(options["dataset"], epochs, base_images, output)


def build_settings(model: str, stages: str, defaults: dict, **options):
    """Check the flag combinations, then resolve the settings in the library (pipeline.settings)."""
    from ..pipeline.settings import build_settings as resolve

    if options["data_dir"] and options["dataset"]:
        raise click.UsageError("give one of --data-dir DATA or --dataset builtin:clutter")
    if options["pretrained"] and options["pretrained_path"]:
        raise click.UsageError("give one of --pretrained or --pretrained-path")
    from pathlib import Path

    # a missing folder is the library's error (it names the folder); a flag that a folder cannot use is ours
    if options.get("boxes") and not options["data_dir"]:
        raise click.BadParameter("applies to --data-dir only (built-in data has its own boxes)", param_hint="--boxes")
    if options["data_dir"] and Path(options["data_dir"]).is_dir() and (options["num_classes"] or options["data_size"]):
        flag = "--num-classes" if options["num_classes"] else "--data-size"
        raise click.BadParameter("applies to built-in data only; a folder's classes and images are its own",
                                 param_hint=flag)
    side_by_side = not options.pop("one_after_another", False)
    return resolve(model, stages, defaults, side_by_side=side_by_side, **options)


def run_with_display(ctx: click.Context, settings, quiet: bool, runner=None) -> dict:
    """Run the pipeline (or ``runner(settings, progress)``, e.g. reproduce's) with one progress display."""
    from ..pipeline import run_pipeline
    from ..pipeline.run import STEPS

    out = console(ctx)
    runner = runner or run_pipeline
    if quiet:
        return runner(settings, progress=None)
    with out.status("starting") as status:
        done: list[str] = []

        def progress(step: str, message: str) -> None:
            if step not in done:
                done.append(step)
            status.update(f"[{STEPS.index(step) + 1}/{len(STEPS)}] {message}")
            out.log(f"{step}: {message}")

        return runner(settings, progress=progress)


def skipped_exports(summary: dict) -> dict[str, str]:
    """Formats the run did not export because their optional dependencies are missing -> the install line."""
    from ..io.export import skipped_formats

    formats = summary["settings"].get("formats") or ()
    return {fmt: why for fmt, why in skipped_formats().items() if fmt not in formats}


def fail_if_export_failed(summary: dict) -> None:
    """After everything else is shown: a failed export ends the command with its one line and exit code 1."""
    if summary.get("export_error"):
        raise click.ClickException(summary["export_error"])


def render_summary(out, summary: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    s = summary["summary"]
    if s.get("base.untrained"):
        out.print("[bold red]UNTRAINED BASE (--force-base):[/] every figure below was computed on a base that "
                  "did not learn")
    t = Table(title="ERSM vs baseline (same base, same fine-tuning budget, same images)")
    t.add_column("measure")
    t.add_column("value", justify="right")
    for key, value in s.items():
        t.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    out.print(t)
    timings = ", ".join(f"{k} {v:.0f}s" for k, v in summary["timings"].items())
    both = " (the two fine-tunings side by side)" if summary.get("side_by_side") else ""
    out.print(f"time: {timings}{both}")
    out.print(f"report: [bold]{summary['report']}[/]; export: {summary['settings']['output']}/export")
    for fmt, why in skipped_exports(summary).items():
        out.print(escape(f"skipped {fmt} export: {why}"), style="yellow")


@click.command("run")
@click.argument("model")
@click.option("--stages", required=True, help="feature_info indices to mask, e.g. 2,3.")
@pipeline_options
@click.pass_context
def run(ctx: click.Context, model: str, stages: str, as_json: bool, **options) -> None:
    """Inject MODEL, fine-tune it with ERSM and a baseline on the same budget, evaluate both, export.

    MODEL is a timm name, hf-hub:ORG/NAME or local-dir:PATH, as in timm.create_model.

    \b
      ersm-surgery run resnet18 --stages 2,3 --dataset builtin:clutter -o runs/r18
    """
    from ..pipeline.settings import RUN_BASE_IMAGES, RUN_EPOCHS

    defaults = protocol_defaults(options, RUN_EPOCHS, RUN_BASE_IMAGES, f"{short_name(model)}-ersm-run")
    settings = build_settings(model, stages, defaults, **options)
    summary = run_with_display(ctx, settings, bool((ctx.obj or {}).get("quiet")) or as_json)
    if as_json:
        emit_json({**{k: v for k, v in summary.items() if k != "results"}, "export_skipped": skipped_exports(summary)})
    else:
        render_summary(console(ctx), summary)
    fail_if_export_failed(summary)
