"""``ersm-surgery bench MODEL_OR_DIR``: dense timm model against the sparse runtime, side by side."""
from __future__ import annotations

import math
import statistics

import click

from ._common import console, emit_json


def _batch_sizes(_ctx, _param, value: str) -> list[int]:
    parts = [p.strip() for p in str(value).split(",")]
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise click.BadParameter(f"{value!r} is not a comma-separated list of positive integers, e.g. 1,16")
    return [int(p) for p in parts]


@click.command("bench")
@click.argument("source", metavar="MODEL_OR_DIR")
@click.option("-b", "--batch-size", "batch_sizes", default="1,16", show_default=True, callback=_batch_sizes,
              help="Batch sizes to time, comma-separated.")
@click.option("--img-size", type=click.IntRange(min=8), help="Image side (default: the recipe's input size).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Real images (timm ImageFolder layout): real masks.")
@click.option("--dataset", help="A built-in data set instead, e.g. builtin:clutter.")
@click.option("--split", default="validation", show_default=True, help="Split the images come from.")
@click.option("--repeat", type=click.IntRange(min=1), default=10, show_default=True, help="Timed runs (median).")
@click.option("--warmup", type=click.IntRange(min=0), default=2, show_default=True, help="Untimed runs first.")
@click.option("--threads", type=click.IntRange(min=1), help="torch threads (default: torch's choice).")
@click.option("--break-even", type=click.FloatRange(0.0, 1.0),
              help="Kept fraction above which a gated stage runs densely (default: the measured one).")
@click.option("--isolate", is_flag=True,
              help="Also time each model alone in fresh processes (what one deployed model sees at large batches).")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="With --isolate: process pairs per batch size (the interval is over rounds).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def bench(ctx: click.Context, source: str, batch_sizes: list[int], img_size, data_dir, dataset, split, repeat,
          warmup, threads, break_even, isolate, rounds, seed, as_json) -> None:
    """Time the original timm model against ersm_surgery.sparse(MODEL_OR_DIR) (a mask.gate=stage model).

    Reports per batch size: per-mask density, dense and sparse latency (median wall and CPU time,
    interleaved), the speed-up of the whole model (over timm, and over timm with the sparse model's dense
    rewrites: BatchNorms folded, max pools channels-last) and of the gated stages, max |logit difference|
    against the dense gated model, the ops that ran densely and the share of the gated stages' FLOPs
    that ran sparse. Without --data-dir/--dataset the inputs are random (masks of random inputs).
    With --isolate each model is also timed alone in fresh processes: at larger batches a model's time
    depends on what its process allocated before, and a deployment runs one model per process.

    \b
      ersm-surgery bench r50-ersm/ --dataset builtin:clutter -b 1,16 --img-size 224
    """
    import torch

    from ..eval.isolated import isolated_latency
    from ..io.source import load_source
    from ..models import default_input_size
    from ..sparse.measure import measure_batch, plain_model
    from ..sparse.model import DEFAULT_BREAK_EVEN, check_sparsable

    if data_dir is not None and dataset is not None:
        raise click.UsageError("give at most one of --data-dir DATA or --dataset builtin:clutter")
    if threads:
        torch.set_num_threads(threads)
    model, _ = load_source(source)
    model.eval()
    check_sparsable(model)
    recipe = model.ersm_recipe
    size = img_size or int((recipe.input_size or default_input_size(model))[-1])
    x = _inputs(model, data_dir or dataset, split, size, max(batch_sizes), seed)
    base = plain_model(model)
    out = console(ctx)
    results = []
    with _progress(ctx, len(batch_sizes)) as advance:
        for b in batch_sizes:
            results.append(measure_batch(model, x[:b], repeat=repeat, warmup=warmup, base=base,
                                         break_even=DEFAULT_BREAK_EVEN if break_even is None else break_even))
            if isolate:
                results[-1]["isolated"] = isolated_latency(model, x[:b], rounds=rounds, repeat=repeat, warmup=warmup,
                                                           threads=torch.get_num_threads(), break_even=break_even)
            advance()
    report = {"source": source, "model": recipe.model, "img_size": size, "threads": torch.get_num_threads(),
              "inputs": data_dir or dataset or "random", "repeat": repeat, "results": results}
    if as_json:
        emit_json(report)
    else:
        _render(out, report)


def _inputs(model, spec, split: str, size: int, count: int, seed: int):
    import torch

    if spec is None:
        return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))
    from ..data import create_dataset, resolve_preprocessing

    # the images as the model was fine-tuned on them (its recorded preprocessing), at the size asked for
    data = create_dataset(spec, split=split, preprocessing=resolve_preprocessing(model, spec, img_size=size), seed=seed)
    return torch.stack([data[i % len(data)][0] for i in range(count)])


class _progress:
    """A rich bar over the batch sizes (quiet with --json or -q)."""

    def __init__(self, ctx: click.Context, total: int) -> None:
        from rich.progress import Progress

        self.bar = Progress(console=console(ctx), transient=True, disable=bool((ctx.obj or {}).get("quiet")))
        self.total = total

    def __enter__(self):
        self.bar.__enter__()
        task = self.bar.add_task("timing dense vs sparse", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)


def _render(out, report: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title=escape(f"{report['model']} at {report['img_size']} px, {report['threads']} threads, "
                           f"{report['inputs']} inputs, median of {report['repeat']}"))
    for col in ("batch", "density", "dense ms", "sparse ms", "speed-up", "vs folded", "gated stages",
                "max |dlogit|", "dense fp32 error", "sparse FLOPs"):
        t.add_column(col, justify="right" if col != "density" else "left")
    for r in report["results"]:
        dens = ", ".join(f"{k.rsplit('.', 1)[0]} {v:.2f}" for k, v in r["density"].items())
        share = "-" if r["sparse_flop_share"] is None else f"{100 * r['sparse_flop_share']:.0f}%"
        t.add_row(str(r["batch"]), escape(dens), f"{r['dense']['wall_s'] * 1e3:.1f}",
                  f"{r['sparse']['wall_s'] * 1e3:.1f}", f"{r['speedup']:.2f}x", f"{r['speedup_over_folded']:.2f}x",
                  f"{r['stages']['speedup']:.2f}x", f"{r['max_abs_logit_diff']:.1e}",
                  f"{r['dense_float32_error']:.1e}", share)
    out.print(t)
    out.print("speed-up: over the timm model; vs folded: over the same timm model with the dense rewrites sparse makes "
              "too (BatchNorms folded into convolutions, max pools channels-last): this column is what the masks buy")
    for r in report["results"]:
        # a gated stage computes the tokens its input carries: the overlap of every mask before it
        # and on its output grid, where a strided first block does most of the work (more under gate_pool=any)
        outputs = r.get("computed_output_density", {})
        computed = ", ".join(f"{p} {v:.2f}" + (f" (output grid {outputs[p]:.2f})" if p in outputs else "")
                             for p, v in r["computed_density"].items())
        out.print(f"batch {r['batch']}: kept tokens the gated stages compute: {escape(computed)}")
        dense_regions = [p for p, ran in r["ran_sparse"].items() if not ran]
        if dense_regions:
            out.print(f"batch {r['batch']}: above the break-even, ran densely: {escape(', '.join(dense_regions))}")
        iso = r.get("isolated")
        if iso:
            low, high = iso["speedup_interval"]
            interval = "" if math.isnan(low) else f" [{low:.2f}, {high:.2f}]"
            rounds = f"{iso['rounds']} round" + "s" * (iso["rounds"] != 1)
            out.print(f"batch {r['batch']}, each model alone in its own process ({rounds}): dense "
                      f"{statistics.median(iso['dense_s']) * 1e3:.1f} ms, sparse "
                      f"{statistics.median(iso['sparse_s']) * 1e3:.1f} ms, speed-up {iso['speedup']:.2f}x{interval}")
    ops = sorted({op for r in report["results"] for op in r["dense_ops"]})
    out.print(f"ops that ran densely: {escape(', '.join(ops)) if ops else 'none'}")
