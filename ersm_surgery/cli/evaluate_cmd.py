"""``ersm-surgery evaluate DIR (--data-dir DATA | --dataset builtin:clutter)``: what the masks bought.

Accuracy, sparsity, compute, occlusion robustness, feature deletion and localization of a masked model
and (with ``--baseline``) its unmasked comparison, on the same images, occlusions and seeds. Writes
results.json, PNG figures and one self-contained HTML report into ``--out``.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import click

from ._common import WORKERS_DEFAULT, console, device_option, emit_json, is_tty, workers_option

_METRICS = ("accuracy", "sparsity", "flops", "occlusion", "deletion", "localization")


def _parse_metrics(_ctx, _param, value: str) -> tuple[str, ...]:
    items = [v.strip().lower() for v in value.split(",") if v.strip()]
    if not items or items == ["all"]:
        return _METRICS
    bad = [v for v in items if v not in _METRICS]
    if bad:
        raise click.BadParameter(f"unknown metric(s) {', '.join(bad)}; choose all or any of {', '.join(_METRICS)}")
    return tuple(dict.fromkeys(items))


def _positive(_ctx, param, value):
    if value is not None and value < 1:
        raise click.BadParameter(f"{value} is not a positive number", param_hint=f"--{param.name.replace('_', '-')}")
    return value


@click.command("evaluate")
@click.argument("source", metavar="DIR")
@click.option("--data-dir", type=click.Path(file_okay=False), help="ImageFolder with a validation/ split.")
@click.option("--dataset", help="A built-in data set instead, e.g. builtin:clutter.")
@click.option("--split", default="validation", show_default=True, help="Which split to evaluate on.")
@click.option("--boxes", type=click.Path(), help="Object boxes for --data-dir: a JSON {relpath: [x0, y0, x1, y1]}, a "
              "COCO instances JSON or a folder of Pascal VOC XML (docs/evaluate.md).")
@click.option("--spurious-cue", type=click.FloatRange(0, 1), help="builtin:clutter: plant the background cue with "
              "this probability and measure claim (f) (cued vs decorrelated top-1).")
@click.option("--baseline", help="Comparison model: a saved folder (e.g. finetune --no-masks) or a timm name.")
@click.option("--baseline-weights", type=click.Path(dir_okay=False), help="Local weights for a --baseline timm name.")
@click.option("--metrics", default="all", show_default=True, callback=_parse_metrics,
              help=f"all, or a comma-separated subset of {', '.join(_METRICS)}.")
@click.option("--num-images", type=int, default=256, show_default=True, callback=_positive,
              help="Images evaluated (a seeded subset of the split).")
@click.option("--img-size", type=int, callback=_positive,
              help="Image side (default: the size the model was injected at).")
@click.option("--mean", type=float, nargs=3, default=None, metavar="R G B",
              help="Normalisation mean (default: the model's recorded preprocessing, else its pretrained config).")
@click.option("--std", type=float, nargs=3, default=None, metavar="R G B",
              help="Normalisation std (default: as --mean).")
@click.option("--interpolation", help="Resize filter: bilinear, bicubic, ... (default: as --mean).")
@click.option("--crop-pct", type=float, help="Centre-crop fraction of evaluation (default: as --mean).")
@click.option("-b", "--batch-size", type=int, default=32, show_default=True, callback=_positive,
              help="Images per forward pass.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of the image subset, occlusions and random rankings.")
@click.option("--num-classes", type=int, callback=_positive,
              help="Classes of built-in data (must match the model's head; default: the data set's).")
@click.option("--deletion-fill", type=click.Choice(["zero", "mean"]), default="zero", show_default=True,
              help="What removed feature tokens become.")
@click.option("--occlusion-grid", type=int, default=8, show_default=True, callback=_positive,
              help="Cells per side for patch drop and Hide-and-Seek.")
@click.option("--figure-images", type=int, default=8, show_default=True, help="Images shown in the mask figure.")
@device_option
@workers_option
@click.option("-o", "--output", "out_dir", type=click.Path(file_okay=False),
              help="Folder for results.json and figures (default: <DIR>-eval beside DIR).")
@click.option("--out", "deprecated_out", type=click.Path(file_okay=False), hidden=True,
              help="Deprecated spelling of -o/--output.")
@click.option("--report", type=click.Path(dir_okay=False), help="HTML report path (default: OUTPUT/report.html).")
@click.option("--force", is_flag=True, help="Write into an existing non-empty output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print results.json to stdout.")
@click.pass_context
def evaluate(ctx: click.Context, source: str, data_dir, dataset, split, boxes, spurious_cue, baseline, baseline_weights,
             metrics, num_images,
             img_size, mean, std, interpolation, crop_pct, batch_size, seed, num_classes, deletion_fill, occlusion_grid,
             figure_images, device, workers, out_dir, deprecated_out, report, force, as_json) -> None:
    """Measure a masked model (DIR) and its baseline on the same images: numbers, figures, an HTML report.

    \b
      ersm-surgery evaluate r18-ersm-ft/ --dataset builtin:clutter --baseline r18-plain-ft/
      ersm-surgery evaluate r50-ersm/ --data-dir DATA --metrics accuracy,deletion --report report.html
    """
    if (data_dir is None) == (dataset is None):
        raise click.UsageError("give exactly one of --data-dir DATA or --dataset builtin:clutter")
    if baseline_weights and not baseline:
        raise click.BadParameter("only applies with --baseline NAME", param_hint="--baseline-weights")
    if deprecated_out is not None:
        if out_dir is not None:
            raise click.UsageError("give -o/--output only (--out is its deprecated spelling)")
        click.echo("Warning: --out is deprecated; use -o/--output", err=True)
        out_dir = deprecated_out
    workers = WORKERS_DEFAULT if workers is None else workers
    from ..data import BUILTIN_PREFIX
    from ..io import check_output_dir

    if num_classes is not None and (data_dir is not None or not str(dataset).startswith(BUILTIN_PREFIX)):
        raise click.BadParameter("applies to built-in data only; a folder's classes are its class folders",
                                 param_hint="--num-classes")
    from ..eval.outputs import write_evaluation
    from ..eval.runner import EvalSettings
    from ..eval.sources import default_eval_output, evaluate_sources
    from ..io.publish import output_lock

    out_path = check_output_dir(out_dir or default_eval_output(source), force)
    ctx.with_resource(output_lock(out_path))  # one writer per folder, for the whole command
    out = console(ctx)
    quiet = bool((ctx.obj or {}).get("quiet"))
    if boxes and data_dir is None:
        raise click.BadParameter("applies to --data-dir only (built-in data has its own boxes)", param_hint="--boxes")
    if spurious_cue is not None and data_dir is not None:
        raise click.BadParameter("applies to builtin:clutter only", param_hint="--spurious-cue")
    settings = EvalSettings(metrics=metrics, batch_size=batch_size, seed=seed, deletion_fill=deletion_fill,
                            occlusion_grid=occlusion_grid, figure_images=max(0, figure_images),
                            device=device)
    with _progress(out, quiet or not is_tty()) as progress:
        result = evaluate_sources(source, data_dir if data_dir is not None else dataset, baseline=baseline,
                                  baseline_weights=baseline_weights, split=split, num_images=num_images,
                                  workers=workers, num_classes=num_classes, settings=settings, progress=progress,
                                  img_size=img_size, mean=mean, std=std, interpolation=interpolation,
                                  crop_pct=crop_pct, boxes=boxes, spurious_cue=spurious_cue)
    files = write_evaluation(result, out_path, report)
    if as_json:
        from ..eval.results import to_jsonable

        emit_json(to_jsonable(result.results))
    _render(out, result.results, files)


class _RichProgress:
    """The runner's progress protocol on one rich ``Progress`` (one bar per task)."""

    def __init__(self, progress) -> None:
        self.progress = progress
        self.tasks: dict[str, Any] = {}

    def start(self, task: str, total: int) -> None:
        if self.progress is None:
            return
        for other in self.tasks.values():  # one bar at a time ends complete
            self.progress.update(other, visible=False)
        self.tasks[task] = self.progress.add_task(task, total=total)

    def advance(self, task: str, n: int = 1) -> None:
        if self.progress is not None and task in self.tasks:
            self.progress.advance(self.tasks[task], n)


@contextlib.contextmanager
def _progress(out, disabled: bool):
    if disabled:
        yield _RichProgress(None)
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=out, transient=True) as bar:
        yield _RichProgress(bar)


def _render(out, results: dict, files: dict[str, Path]) -> None:
    from rich.table import Table

    from ..eval.tables import build_tables

    for note in results.get("notes", []):
        out.print(f"[yellow]Note:[/] {note}", highlight=False)
    for t in build_tables(results):
        table = Table(title=t["title"], caption=t["caption"] or None, caption_justify="left")
        for i, col in enumerate(t["columns"]):
            table.add_column(col, justify="left" if i < 2 else "right")
        for row in t["rows"]:
            table.add_row(*row)
        out.print(table)
    figures = [p for k, p in files.items() if k not in ("results", "report")]
    out.print(f"wrote [bold]{files['results']}[/], {len(figures)} figure(s) and the report "
              f"[bold]{files['report']}[/]", highlight=False)
