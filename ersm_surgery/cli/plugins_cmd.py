"""``ersm-surgery plugins``: the installed plugins, their versions, what each registers, and failures."""
from __future__ import annotations

import click

from ._common import console, emit_json


@click.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """List the plugins found through the 'ersm_surgery.plugins' entry points.

    A plugin that fails to import or register is listed with its error; it does not stop other
    commands. --no-plugins or ERSM_SURGERY_NO_PLUGINS=1 turn discovery off.
    """
    from ..plugins import DISABLE_ENV, ENTRY_POINT_GROUP, load_plugins, plugins_enabled

    enabled = plugins_enabled()
    infos = load_plugins()
    result = {"enabled": enabled, "entry_point_group": ENTRY_POINT_GROUP, "plugins": [i.to_dict() for i in infos]}
    if as_json:
        emit_json(result)
        return
    out = console(ctx)
    if not enabled:
        out.print(f"plugin discovery is off (--no-plugins or {DISABLE_ENV})")
        return
    if not infos:
        out.print(f"no plugins installed (none declares an entry point in group {ENTRY_POINT_GROUP!r})")
        return
    from rich.table import Table

    table = Table(title=f"plugins ({ENTRY_POINT_GROUP})")
    for col in ("plugin", "version", "status", "registers"):
        table.add_column(col, overflow="fold", no_wrap=col in ("plugin", "version"))
    for i in infos:
        status = "[green]ok[/]" if i.status == "ok" else f"[red]failed[/] ({i.name} = {i.target}): {i.error}"
        table.add_row(i.dist or i.name, i.version or "?", status, ", ".join(i.provides) or "-")
    out.print(table)
