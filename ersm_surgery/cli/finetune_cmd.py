"""``ersm-surgery finetune DIR (--data-dir DATA | --dataset builtin:clutter)``: train with the energy regularizer.

Settings come, lowest priority first, from the defaults, DIR's recorded ``recipe.finetune``, the run given
to ``--resume``, ``--recipe FILE`` (its ``finetune`` and ``mask`` sections), ``--set key=value`` and the
flags typed on the command line: :func:`ersm_surgery.train.settings.resolve_finetune_settings` resolves them.
Under ``torchrun`` every process runs this command; only rank 0 prints.
"""
from __future__ import annotations

import os
from typing import Any

import click

from ._common import console, device_option, emit_json, is_tty, workers_option

_RUN_FLAGS = ("output", "force", "resume", "stop_after", "pretrained", "pretrained_path", "device", "recipe_path",
              "overrides", "as_json", "source", "data_dir", "dataset", "data_opt", "log_tensorboard")
_MASK_FLAGS = {"alpha": "alpha", "beta": "beta", "tau": "tau", "mf_steps": "steps", "mask_mode": "train_mode"}


@click.command("finetune")
@click.argument("source", metavar="DIR")
@click.option("--data-dir", type=click.Path(file_okay=False), help="ImageFolder with train/ and validation/ splits.")
@click.option("--dataset", help="A built-in data set instead, e.g. builtin:clutter.")
@click.option("--data-opt", multiple=True, metavar="KEY=VALUE", help="Data set option, e.g. size=200 num_classes=4.")
@click.option("--epochs", type=int, help="Epochs of the schedule.  [default: 5]")
@click.option("-b", "--batch-size", type=int, help="Images per process and step.  [default: 64]")
@click.option("--lr", type=float, help="Base learning rate.  [default: 3e-4]")
@click.option("--opt", help="timm optimizer name.  [default: adamw]")
@click.option("--momentum", type=float, help="Momentum of SGD-like optimizers.  [default: 0.9]")
@click.option("--weight-decay", type=float, help="Weight decay of the backbone's weights.  [default: 0.05]")
@click.option("--sched", help="timm scheduler: cosine, step, poly, constant, none...  [default: cosine]")
@click.option("--warmup-epochs", type=float, help="Linear lr warm-up in epochs.  [default: 0]")
@click.option("--warmup-lr", type=float, help="lr at the start of the warm-up.  [default: 1e-6]")
@click.option("--min-lr", type=float, help="lr floor of decaying schedules.  [default: 0]")
@click.option("--clip-grad", type=float, help="Clip the gradient norm to this value.")
@click.option("--amp", is_flag=True, help="Mixed precision (float16 on CUDA, bfloat16 on CPU).")
@click.option("--grad-accum-steps", type=int, help="Micro-batches per optimizer update.  [default: 1]")
@click.option("--img-size", type=int, help="Image side (default: the size the model was injected at).")
@workers_option
@click.option("--seed", type=int, help="Seed of data order, augmentation and a reset head.  [default: 42]")
@click.option("--augment", is_flag=True, help="timm's training transform on the train split (random resized crop, "
              "flip, colour jitter); off: the evaluation transform.")
@click.option("--aa", help="timm auto-augment policy of the training transform, e.g. rand-m9-mstd0.5 (with --augment).")
@click.option("--mean", type=float, nargs=3, default=None, metavar="R G B",
              help="Normalisation mean (default: the recorded preprocessing, else the model's pretrained config).")
@click.option("--std", type=float, nargs=3, default=None, metavar="R G B",
              help="Normalisation std (default: as --mean).")
@click.option("--interpolation", help="Resize filter: bilinear, bicubic, ... (default: as --mean).")
@click.option("--crop-pct", type=float, help="Centre-crop fraction of evaluation (default: as --mean; 1.0 for built-in "
              "data).")
@click.option("--smoothing", type=float, help="Label smoothing.  [default: 0]")
@click.option("--mixup", type=float, help="Mixup alpha (timm Mixup; 0 is off).  [default: 0]")
@click.option("--cutmix", type=float, help="CutMix alpha (timm Mixup; 0 is off).  [default: 0]")
@click.option("--model-ema", is_flag=True, help="Keep an EMA of the weights (timm ModelEmaV3); the EMA weights are "
              "validated and saved.")
@click.option("--model-ema-decay", type=float, help="EMA decay per update.  [default: 0.9998]")
@click.option("--drop-path", type=float, help="Stochastic depth rate (timm drop_path_rate).")
@click.option("--channels-last", is_flag=True, help="Channels-last memory format for the model and inputs.")
@click.option("--amp-dtype", type=click.Choice(["float16", "bfloat16"]),
              help="Autocast dtype with --amp (default: float16 on CUDA, bfloat16 on CPU).")
@click.option("--log-tensorboard", type=click.Path(file_okay=False), metavar="DIR",
              help='Write TensorBoard logs here (pip install "ersm-surgery[tensorboard]").')
@click.option("--strict-data", is_flag=True, help="Stop on an unreadable image instead of skipping it.")
@click.option("--freeze-backbone", is_flag=True, help="Train only the mask layers and the classifier.")
@click.option("--num-classes", type=int, help="Reset the classifier to this many classes (the data's count).")
@click.option("--no-masks", is_flag=True, help="Baseline: strip the masks, train the base model the same way.")
@click.option("--pretrained", is_flag=True, help="DIR is a timm name: start from timm's weights (network).")
@click.option("--pretrained-path", type=click.Path(dir_okay=False), help="DIR is a timm name: local base weights.")
@click.option("--alpha", type=float, help="mask.alpha: the price of a kept token.")
@click.option("--beta", type=float, help="mask.beta: Potts coherence.")
@click.option("--tau", type=float, help="mask.tau: mean-field temperature (at the start).")
@click.option("--tau-end", type=float, help="Anneal tau linearly to this value over the run.")
@click.option("--gamma", type=float, help="Final weight of the energy regularizer.  [default: 1.0]")
@click.option("--gamma-warmup", type=float, help="Fraction of the updates gamma ramps up over.  [default: 0.5]")
@click.option("--mask-lr-scale", type=float, help="Mask layers' lr relative to --lr.  [default: 10]")
@click.option("--mf-steps", type=int, help="mask.steps: mean-field steps T.")
@click.option("--mask-mode", type=click.Choice(["straight_through", "soft"]), help="mask.train_mode.")
@click.option("--recipe", "recipe_path", type=click.Path(dir_okay=False), help="YAML/JSON with finetune: and mask:.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="e.g. finetune.lr=1e-4 mask.alpha=0.3.")
@click.option("-o", "--output", help="Run folder (default: DIR-ft, or the --resume run).")
@click.option("--force", is_flag=True, help="Write into an existing non-empty folder.")
@click.option("--resume", type=click.Path(), help="Continue a run exactly: its folder, last/ or train_state.pt.")
@click.option("--stop-after", type=int, help="Stop after this many epochs (the schedule spans --epochs).")
@device_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
def finetune(ctx: click.Context, source: str, **opts: Any) -> None:
    """Fine-tune DIR (an injected model folder, a finetune output, or a timm model name for a baseline).

    \b
      ersm-surgery finetune r18-ersm/ --dataset builtin:clutter --img-size 64 --epochs 3
      ersm-surgery finetune r18-ersm/ --data-dir DATA --no-masks -o r18-base/
      torchrun --nproc_per_node=2 -m ersm_surgery.cli.main finetune r18-ersm/ --data-dir DATA

    Writes OUT/ (best model: ersm_surgery.load(OUT)), OUT/last/ (last model and train_state.pt),
    OUT/summary.csv and OUT/args.yaml. Loss = cross-entropy + gamma(t) * energy regularizer.
    """
    from ..errors import ErsmError

    primary = int(os.environ.get("RANK", "0")) == 0
    try:
        _run(ctx, source, opts, primary)
    except ErsmError:
        if not primary:  # rank 0 prints the one line; the other ranks only exit non-zero
            raise click.exceptions.Exit(1) from None
        raise


def _explicit(ctx: click.Context, name: str) -> bool:
    from click.core import ParameterSource

    return ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)


def _run(ctx: click.Context, source: str, opts: dict[str, Any], primary: bool) -> None:
    if opts["data_dir"] and opts["dataset"]:
        raise click.UsageError("give --data-dir or --dataset, not both")
    for name in ("epochs", "batch_size", "grad_accum_steps", "stop_after", "num_classes"):
        if opts[name] is not None and opts[name] < 1:
            raise click.BadParameter(f"{opts[name]} is not a positive integer",
                                     param_hint=f"--{name.replace('_', '-')}")
    settings, mask = _settings(ctx, source, opts)

    from ..train import RunInputs
    from ..train import finetune as run_finetune
    from ..train.settings import default_run_output

    output = opts["output"] or default_run_output(source, opts["resume"])
    inputs = RunInputs(source=source, output=output, mask=mask, resume=opts["resume"], stop_after=opts["stop_after"],
                       force=opts["force"], pretrained=opts["pretrained"], pretrained_path=opts["pretrained_path"],
                       device=opts["device"], args=_args(source, output, opts, settings),
                       log_tensorboard=opts["log_tensorboard"])
    if primary:  # only rank 0 writes the run folder; it holds its lock until the command ends
        from ..io.publish import output_lock

        ctx.with_resource(output_lock(output))
    out = console(ctx)
    if not primary:
        out.quiet = True
    quiet = bool((ctx.obj or {}).get("quiet")) or not primary
    try:
        with _Progress(out, enabled=is_tty() and not quiet) as progress:
            result = run_finetune(inputs, settings, callbacks=progress)
    except KeyboardInterrupt:
        if (ctx.obj or {}).get("debug"):
            raise
        raise click.ClickException(_interrupted(source, output)) from None
    if not primary:
        return
    summary = _summary(result, output, settings)
    if opts["as_json"]:
        emit_json(summary)
        return
    _render(out, summary)


def _interrupted(source: str, output: str) -> str:
    """The line for Ctrl-C: how to continue, when an epoch finished (its state is in OUT/last/)."""
    import shlex
    from pathlib import Path

    from ..train.checkpoint import LAST, STATE_FILE

    if (Path(output) / LAST / STATE_FILE).is_file():
        return (f"interrupted; the last finished epoch is saved in {output}/{LAST}/: continue exactly with "
                f"ersm-surgery finetune {shlex.quote(source)} --resume {shlex.quote(output)}")
    return "interrupted before the first epoch finished, so there is nothing to resume; run the command again"


def _settings(ctx: click.Context, source: str, opts: dict[str, Any]):
    """The flags typed on the command line, handed to the library's resolution (train.settings)."""
    from ..train.config import FinetuneConfig
    from ..train.settings import resolve_finetune_settings

    explicit: dict[str, Any] = {}
    for key in FinetuneConfig.keys():
        if key in opts and key not in _RUN_FLAGS and _explicit(ctx, key):
            explicit[key] = opts[key]
    if opts["data_dir"] or opts["dataset"]:
        explicit["data"] = opts["data_dir"] or opts["dataset"]
    if opts["data_opt"]:
        explicit["data_options"] = _parse_pairs(opts["data_opt"], "--data-opt")
    mask = {key: opts[flag] for flag, key in _MASK_FLAGS.items() if opts[flag] is not None}
    return resolve_finetune_settings(source, resume=opts["resume"], recipe_file=opts["recipe_path"],
                                     overrides=opts["overrides"], explicit=explicit, mask=mask)


def _parse_pairs(items, flag: str) -> dict[str, Any]:
    from ..recipe import load_yaml

    out = {}
    for item in items:
        for pair in item.split():
            key, sep, raw = pair.partition("=")
            if not sep or not key:
                raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint=flag)
            out[key] = load_yaml(raw) if raw else None
    return out


def _args(source: str, output: str, opts: dict[str, Any], config) -> dict[str, Any]:
    import sys

    from ..io import versions

    run = {k: opts.get(k) for k in ("resume", "stop_after", "force", "pretrained", "pretrained_path", "device",
                                    "log_tensorboard")}
    return {"command": " ".join(["ersm-surgery", *sys.argv[1:]]) if sys.argv else "", "source": source,
            "output": output, **run, "versions": {k: str(v) for k, v in versions().items()}}


def _summary(result, output: str, config) -> dict[str, Any]:
    from ..mask_set import masks

    rows = result.rows
    return {
        "output": output,
        "best": result.best,
        "last": rows[-1] if rows else None,
        "epochs": rows,
        "updates": result.updates,
        "masks": masks(result.model).names(),
        "stopped_early": result.stopped_early,
        "world_size": result.world_size,
        "ranks_in_sync": result.ranks_in_sync,
        "settings": config.to_dict(),
    }


class _Progress:
    """Rich progress bars for epochs and batches, and one log line per epoch (train.Callbacks)."""

    def __init__(self, out, enabled: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.out = out
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=out, disable=not enabled, transient=True)
        self.epochs = self.batches = None
        self.total = 0

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def on_start(self, info: dict[str, Any]) -> None:
        self.total = info["epochs"]
        self.epochs = self.progress.add_task("epochs", total=info["epochs"], completed=info["start_epoch"])
        self.batches = self.progress.add_task("batches", total=info["batches"])
        where = f"{info['world_size']} processes" if info["world_size"] > 1 else "1 process"
        masks = ", ".join(info["masks"]) or "none (baseline)"
        ema = "; EMA weights are validated and saved" if info.get("model_ema") else ""
        self.out.print(f"fine-tuning on {where}; masks: {masks}{ema}")

    def on_epoch_start(self, epoch: int, batches: int) -> None:
        self.progress.reset(self.batches, total=batches, description=f"epoch {epoch + 1} train")

    def on_batch(self, epoch: int, batch: int, loss: float) -> None:
        self.progress.update(self.batches, completed=batch, description=f"epoch {epoch + 1} loss {loss:.3f}")

    def on_validate(self, epoch: int, batches: int) -> None:
        self.progress.update(self.batches, description=f"epoch {epoch + 1} validating")

    def on_epoch_end(self, row: dict[str, Any]) -> None:
        self.progress.advance(self.epochs)
        dens = "  ".join(f"{k.split('/', 1)[1]} {v:.2f}±{row['density_std/' + k.split('/', 1)[1]]:.2f}"
                         for k, v in row.items() if k.startswith("density/"))
        self.out.print(f"epoch {row['epoch']}/{self.total}  task {row['train_loss']:.4f}  energy "
                       f"{row['train_energy']:.4f}  val top-1 {row['val_top1']:.2f}  top-5 {row['val_top5']:.2f}  "
                       f"lr {row['lr']:.2e}" + (f"  density {dens}" if dens else ""))


def _render(out, s: dict[str, Any]) -> None:
    from rich.table import Table

    rows = s["epochs"]
    if not rows:
        out.print("no epoch ran (the run was already complete)")
        return
    layers = [k.split("/", 1)[1] for k in rows[0] if k.startswith("density/")]
    t = Table(title="fine-tuning")
    for col in ("epoch", "lr", "task loss", "energy", "gamma", "val top-1", "val top-5",
                *[f"density {n}" for n in layers], "s"):
        t.add_column(col, justify="right")
    for r in rows:
        t.add_row(str(r["epoch"]), f"{r['lr']:.2e}", f"{r['train_loss']:.4f}", f"{r['train_energy']:.4f}",
                  f"{r['gamma']:.3f}", f"{r['val_top1']:.2f}", f"{r['val_top5']:.2f}",
                  *[f"{r['density/' + n]:.3f} ± {r['density_std/' + n]:.3f}" for n in layers], f"{r['epoch_s']:.0f}")
    out.print(t)
    best = s["best"]
    out.print(f"best epoch {best['epoch']} (val top-1 {best['val_top1']:.2f}) saved to [bold]{s['output']}[/] "
              f"(ersm_surgery.load({s['output']!r})); last epoch and training state in {s['output']}/last/")
