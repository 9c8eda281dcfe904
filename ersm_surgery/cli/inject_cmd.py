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
@click.option("--num-classes", type=int, help="Classifier size (default: the model's).")
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
    from ..errors import RecipeError
    from ..io import check_output_dir
    from ..io.publish import output_lock

    if num_classes is not None and num_classes <= 0:
        raise click.BadParameter(f"{num_classes} is not a class count; give a positive integer",
                                 param_hint="--num-classes")
    from ..model_source import short_name

    out_dir = check_output_dir(output or f"{short_name(model)}-ersm", force)
    ctx.with_resource(output_lock(out_dir))  # until the command ends: a second run into it fails at once
    settings = _settings(model, recipe_path, overrides, num_classes)
    stage_list, node_list = _placements(stages, nodes, settings)
    if not stage_list and not node_list:
        raise RecipeError("no placement given", "name stages (--stages 2,3) or nodes (--nodes layer3.2.act3)")

    import copy

    import torch

    from ..api import inject as inject_masks
    from ..io import save
    from ..models import create_base_model, recorded_name
    from ..report import describe_injection

    out = console(ctx)
    with out.status(f"building {model} and tracing it"):
        base = create_base_model(model, pretrained, pretrained_path, settings["num_classes"],
                                 **settings["model_kwargs"])
        original = copy.deepcopy(base)
        name, kwargs, base_model = recorded_name(model, base, pretrained, settings["model_kwargs"])
        masked = inject_masks(base, stages=stage_list, nodes=node_list, config=settings["mask"],
                              input_size=input_size or settings["input_size"], model_kwargs=kwargs)
        masked.ersm_recipe.model = name
        masked.ersm_recipe.base_model = base_model
        if settings["finetune"]:
            masked.ersm_recipe.finetune = settings["finetune"]
        torch.manual_seed(0)
        summary = describe_injection(original, masked)
        save(masked, out_dir, force=force)
    summary["output"] = str(out_dir)
    if as_json:
        emit_json(summary)
        return
    _render(out, model, summary)


def _settings(model: str, recipe_path: str | None, overrides, num_classes: int | None) -> dict:
    from ..plugins import components_of, require_components
    from ..recipe import Recipe, apply_overrides, load_recipe

    data = load_recipe(recipe_path).to_dict() if recipe_path else {"model": model}
    data["model"] = model
    if num_classes is not None:
        data["num_classes"] = num_classes
    data = apply_overrides(data, list(overrides))
    recipe = Recipe.from_dict(data)  # validates every setting before the model is built
    require_components(components_of(recipe.mask), recipe.plugins)  # names the plugin a recipe needs
    return {"num_classes": recipe.num_classes, "model_kwargs": recipe.model_kwargs, "mask": recipe.mask,
            "input_size": recipe.input_size, "finetune": recipe.finetune, "placements": recipe.placements}


def _placements(stages: str | None, nodes, settings: dict) -> tuple[list[int], list[str]]:
    from ..surgery import parse_stages

    stage_list = parse_stages(stages) if stages is not None else []
    node_list = [n.strip() for item in nodes for n in item.split(",") if n.strip()]
    if stages is None and not node_list and settings["placements"]:
        stage_list = [p.stage for p in settings["placements"] if p.stage is not None]
        node_list = [p.node for p in settings["placements"] if p.node is not None]
    return stage_list, node_list


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
