"""``ersm-surgery inject MODEL --stages 2,3 -o DIR``: insert masks, check, save."""
from __future__ import annotations

import click

from ._common import console, emit_json, parse_input_size


@click.command("inject")
@click.argument("model")
@click.option("--stages", help="Comma-separated timm feature_info indices, e.g. 2,3 (see inspect).")
@click.option("--nodes", multiple=True, help="Node name(s) from inspect --all-nodes; repeat or comma-separate.")
@click.option("--pretrained", is_flag=True,
              help="Start from pretrained weights: timm's (network, or the HF cache) or a local-dir: folder's.")
@click.option("--pretrained-path", type=click.Path(dir_okay=False), help="Local base weights (.safetensors or .pth).")
@click.option("--num-classes", type=int, help="Classifier size (default: the model's; 0: headless, as in timm).")
@click.option("--recipe", "recipe_path", type=click.Path(dir_okay=False), help="Recipe file (YAML/JSON) with settings.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a setting, e.g. mask.alpha=0.3.")
@click.option("--input-size", callback=parse_input_size, help="C,H,W to check the model at (default: the model's).")
@click.option("-o", "--output", help="Output folder (default: ./<model>-ersm).")
@click.option("--force", is_flag=True, help="Write into an existing non-empty folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def inject(ctx: click.Context, model: str, stages, nodes, pretrained, pretrained_path, num_classes, recipe_path,
           overrides, input_size, output, force, as_json) -> None:
    """Insert Energy-Mask layers into MODEL and save it (model.safetensors, recipe.yaml, config.json).

    MODEL is a timm name (resnet50, resnet50.a1_in1k), hf-hub:ORG/NAME or local-dir:PATH, as in
    timm.create_model.
    """
    if num_classes is not None and num_classes < 0:
        raise click.BadParameter(f"{num_classes} is not a class count; give 0 (headless) or a positive integer",
                                 param_hint="--num-classes")
    from ..injection import inject_to_folder
    from ..surgery import parse_stages

    node_list = [n.strip() for item in nodes for n in item.split(",") if n.strip()]
    out = console(ctx)
    with out.status(f"building {model} and tracing it"):
        summary = inject_to_folder(model, output, recipe_file=recipe_path, overrides=overrides,
                                   num_classes=num_classes, stages=parse_stages(stages) if stages is not None else None,
                                   nodes=node_list, pretrained=pretrained, pretrained_path=pretrained_path,
                                   input_size=input_size, force=force)
    if as_json:
        emit_json(summary)
        return
    _render(out, model, summary)


def _render(out, model: str, s: dict) -> None:
    from rich.table import Table

    before, after = s["params_before"], s["params_after"]
    t = Table(title=f"{model}: before / after injection")
    for col in ("", "before", "after"):
        t.add_column(col, justify="right")
    t.add_row("parameters", f"{before:,}", f"{after:,} (+{100 * (after - before) / before:.3f}%)")
    t.add_row("mask layers", "0", str(len(s["masks"])))
    t.add_row("max |logit diff| (eval)", "", f"{s['max_logit_diff']:.2e}")
    t.add_row("top-1 agreement (eval)", "", f"{100 * s['top1_agreement']:.1f}% of {s['check_inputs']} inputs")
    out.print(t)
    m = Table(title="mask layers")
    for col in ("mask", "after", "method", "channels", "stride", "hidden", "params"):
        m.add_column(col)
    for row in s["masks"]:
        m.add_row(row["path"], row["anchor"], row["method"], str(row["channels"]), str(row["reduction"]),
                  str(row["hidden"]), f"{row['params']:,}")
    out.print(m)
    out.print(f"saved to [bold]{s['output']}[/] (model.safetensors, recipe.yaml, config.json); "
              f"load it with ersm_surgery.load({s['output']!r})")
