"""``ersm-surgery info FILE``: what a safetensors file holds, from its header alone (instant, no torch)."""
from __future__ import annotations

import click

from ._common import console, emit_json


@click.command("info")
@click.argument("path", metavar="FILE", type=click.Path(exists=True))
@click.option("--verify", is_flag=True, help="Also read the tensor data and check the sha256 (reads the whole file).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def info(ctx: click.Context, path: str, verify: bool, as_json: bool) -> None:
    """Show the base model, recipe, mask layers, versions and sizes of FILE (a .safetensors or a folder).

    Only the header is read; --verify reads the data to check the sha256 and fails on a mismatch.
    """
    from ..errors import ArtifactError
    from ..io.file_info import file_info

    result = file_info(path, verify=verify)
    mismatch = (result.get("sha256") or {}).get("state") in ("mismatch", "missing")
    if as_json:
        emit_json(result)  # scripts get the whole picture on stdout, and the error below on stderr
    elif not mismatch:
        _render(console(ctx), result)
    if mismatch and result["sha256"]["state"] == "missing":
        raise ArtifactError(f"{result['path']!r} claims file format {result.get('ersm_format')} but its ersm_sha256 is "
                            "missing: the header was edited", "re-export the model")
    if mismatch:
        raise ArtifactError(f"sha256 mismatch in {result['path']!r}: the tensor data or the recipe was changed after"
                            " it was written", "re-export the model")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    return str(n)


def _render(out, r: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    kind = "ersm masked model" if r["kind"] == "ersm" else "plain safetensors (no ersm metadata)"
    t = Table(title=escape(r["path"]), show_header=False)
    t.add_column(style="bold", no_wrap=True)
    t.add_column()
    t.add_row("kind", kind)
    if r.get("model"):
        t.add_row("base model", escape(r["model"] + (f"  {r['model_kwargs']}" if r.get("model_kwargs") else "")))
    if r["kind"] == "ersm":
        labels = r.get("labels")
        shown = f" ({', '.join(labels['names'])}{', ...' if labels['count'] > len(labels['names']) else ''})" \
            if labels else ""
        t.add_row("classes", escape(f"{r.get('num_classes')}{shown}"))
        cfg = r.get("input_config") or {}
        t.add_row("input", escape(f"checked at {r.get('input_size')}; timm config {cfg.get('input_size')}, "
                                  f"mean {cfg.get('mean')}, std {cfg.get('std')}, {cfg.get('interpolation')}"))
        t.add_row("mask mode", escape(str(r.get("mask_mode"))))
        m = r.get("mask_settings") or {}
        settings = ", ".join(f"{k}={m[k]}" for k in ("alpha", "beta", "tau", "steps") if k in m)
        t.add_row("mask settings", escape(settings))
    tensors = r["tensors"]
    dtypes = ", ".join(f"{k} x{v}" for k, v in tensors["dtypes"].items())
    t.add_row("tensors", escape(f"{tensors['count']:,} ({_size(tensors['bytes'])}, {tensors['params']:,} values; "
                                f"{dtypes})"))
    if r["kind"] == "ersm":
        t.add_row("mask parameters", f"{r['mask_params']:,} in {len(r['masks'])} layer(s)")
        sha = r["sha256"]
        state = {"present": "present (check it with --verify)", "absent": "[yellow]absent (an older file)[/]",
                 "missing": "[red]MISSING (the header was edited)[/]",
                 "verified": "[green]verified[/]", "mismatch": "[red]MISMATCH[/]"}[sha["state"]]
        t.add_row("sha256", f"{state}{'  ' + sha['stored'][:16] + '...' if sha.get('stored') else ''}")
    if r.get("versions"):
        t.add_row("written by", escape(", ".join(f"{k} {v}" for k, v in r["versions"].items())))
    t.add_row("file", f"{_size(r['file_bytes'])}, header {_size(r['header_bytes'])}")
    out.print(t)
    if r.get("masks"):
        mt = Table(title="mask layers")
        mt.add_column("mask", overflow="fold", min_width=16)
        for col in ("after", "method", "C", "stride", "hidden", "params"):
            mt.add_column(col, justify="left" if col in ("after", "method") else "right")
        for row in r["masks"]:
            cells = (row["path"], row["anchor"], row["method"], row["channels"], row["stride"], row["hidden"])
            mt.add_row(*(escape(str(c)) for c in cells), f"{row['params']:,}")
        out.print(mt)
    for problem in r.get("problems") or []:
        out.print(f"[yellow]warning:[/] {escape(problem)}")
