"""``ersm-surgery inspect MODEL``: the stage table and, with --all-nodes, every candidate node."""
from __future__ import annotations

import click

from ._common import console, emit_json, parse_input_size


@click.command("inspect")
@click.argument("model")
@click.option("--input-size", callback=parse_input_size, help="C,H,W of the example input (default: the model's).")
@click.option("--all-nodes", is_flag=True, help="List every candidate (B, C, H, W) node, not only the stages.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def inspect(ctx: click.Context, model: str, input_size, all_nodes: bool, as_json: bool) -> None:
    """Trace MODEL with torch.fx and show where masks can go.

    MODEL is a timm name (resnet50), hf-hub:ORG/NAME or local-dir:PATH, as in timm.create_model.
    """
    from rich.table import Table

    from ..models import create_base_model, default_input_size
    from ..surgery import analyse

    net = create_base_model(model)
    size = input_size or default_input_size(net)
    result = analyse(net, size)
    adapters = _adapters(net, result, size)
    if as_json:
        data = result.to_dict()
        data["model"] = model
        for stage in data["stages"]:
            stage["adapter"] = adapters.get(stage["index"])
        if not all_nodes:
            data.pop("candidates")
        data.pop("shapes", None)
        emit_json(data)
        return
    out = console(ctx)
    table = Table(title=f"{model}: stages (timm feature_info) at input {size[0]}x{size[1]}x{size[2]}")
    for col in ("stage", "module", "channels", "stride", "shape", "ends at node", "maskable"):
        table.add_column(col, justify="right" if col in ("stage", "channels", "stride") else "left")
    for s in result.stages:
        maskable = "yes" if s.status == "ok" else ("yes (shape differs from feature_info)" if s.status == "mismatch"
                                                   else f"no: {s.layout or s.status}")
        if s.index in adapters:
            maskable = f"yes, via the {adapters[s.index]} adapter"
        shape = "x".join(map(str, s.shape)) if s.shape else "?"
        table.add_row(str(s.index), s.module, str(s.channels), str(s.reduction), shape, s.node or "-", maskable)
    out.print(table)
    if result.method != "fx":
        out.print(f"[yellow]fx could not trace the model ({result.trace_error}); "
                  "masks go after stage modules by hooks.")
    if all_nodes:
        nodes = Table(title=f"{model}: candidate nodes ({len(result.candidates)} with (B, C, H, W) outputs)")
        for col in ("node", "op", "channels", "H x W", "stride"):
            nodes.add_column(col)
        for c in result.candidates:
            stride = f"{c.stride:g}"
            nodes.add_row(c.name, c.op, str(c.channels), f"{c.height}x{c.width}", stride)
        out.print(nodes)
    else:
        out.print("Masks go after stages (--stages 2,3) or nodes (--nodes NAME; list them with --all-nodes).")


def _adapters(net, result, size) -> dict[int, str]:
    """Stage index -> the registered model adapter (plugins) that maps its not-spatial output."""
    from ..plugins import load_plugins
    from ..surgery import find_adapter

    load_plugins()
    found = {s.index: find_adapter(net, s.module, s.shape, s.layout, size)
             for s in result.stages if s.status == "not spatial" and s.shape}
    return {i: f[0] for i, f in found.items() if f}
