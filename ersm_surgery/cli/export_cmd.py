"""``ersm-surgery export DIR --format safetensors,onnx``: files for deployment, each reloaded and checked."""
from __future__ import annotations

import click

from ._common import console, emit_json

_FORMATS = ("safetensors", "onnx")


def _parse_formats(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[str] | None:
    if value is None:
        return None  # the library's default: every format whose dependencies are installed
    formats = [f.strip().lower() for f in value.split(",") if f.strip()]
    bad = [f for f in formats if f not in _FORMATS]
    if bad or not formats:
        raise click.BadParameter(f"{value!r} names {', '.join(bad) or 'no format'}; "
                                 f"give a comma-separated list of {', '.join(_FORMATS)}")
    return formats


@click.command("export")
@click.argument("src", metavar="DIR", type=click.Path(exists=True))
@click.option("--format", "formats", callback=_parse_formats,
              help="Comma-separated: safetensors, onnx.  [default: both when onnx and onnxruntime are installed, "
                   "else safetensors, saying so]")
@click.option("-o", "--output", help="Output folder (default: DIR/export).")
@click.option("--opset", type=click.IntRange(7, 23), default=18, show_default=True, help="ONNX opset version.")
@click.option("--rtol", type=click.FloatRange(0), default=1e-3, show_default=True,
              help="ONNX validation: each output may differ by atol + rtol x its largest absolute value.")
@click.option("--atol", type=click.FloatRange(0), default=1e-5, show_default=True,
              help="ONNX validation: the absolute floor of the tolerance.")
@click.option("--flip-margin", type=click.FloatRange(0), default=1e-3, show_default=True,
              help="ONNX validation: a hard-mask token flipping with |e| <= this x max(1, max |e|) is rounding.")
@click.option("--data-dir", type=click.Path(file_okay=False, exists=True),
              help="Validate on images of this ImageFolder's validation split (default: random images).")
@click.option("--dataset", help="Validate on images of a built-in data set, e.g. builtin:clutter.")
@click.option("--mask-mode", type=click.Choice(["hard", "soft"]), help="Set every mask's eval mode before export.")
@click.option("--with-masks", is_flag=True, help="Add each mask layer's mask as an extra ONNX output.")
@click.option("--strip-masks", is_flag=True,
              help="Also write backbone/: the model without masks, for timm.create_model(\"local-dir:OUT/backbone\", "
                   "pretrained=True).")
@click.option("--labels", "labels_path", type=click.Path(dir_okay=False),
              help="Class names: .txt (one per line) or .json list (default: from DIR).")
@click.option("--results", "results_path", type=click.Path(exists=True),
              help="An evaluation's results.json for the model card (default: DIR/ or DIR-eval/).")
@click.option("--dataset-id", "dataset_ids", multiple=True, metavar="ORG/NAME",
              help="Hugging Face dataset id the model was trained on, for the model card (repeatable).")
@click.option("--exporter", type=click.Choice(["auto", "torchscript", "dynamo"]), default="auto", show_default=True,
              help="ONNX exporter; auto tries torchscript, then dynamo.")
@click.option("--no-validate", is_flag=True, help="Skip reloading the files and comparing outputs.")
@click.option("--no-verify", is_flag=True, help="Load DIR even if its sha256 does not match.")
@click.option("--force", is_flag=True, help="Write into an existing non-empty output folder.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def export(ctx: click.Context, src: str, formats: list[str], output, opset, rtol, atol, flip_margin, data_dir, dataset,
           mask_mode, with_masks, strip_masks, labels_path, results_path, dataset_ids, exporter, no_validate, no_verify,
           force, as_json) -> None:
    """Export the masked model in DIR (written by inject or finetune) for deployment.

    \b
    Writes model.safetensors (weights, recipe, versions, input config, labels, sha256), recipe.yaml,
    config.json (timm layout + "ersm"), README.md (a Hugging Face model card), model.onnx (dynamic
    batch), with --strip-masks backbone/ (config.json + model.safetensors that plain timm loads with
    "local-dir:"), and validation.json. Files are written to a temporary folder, checked, then moved
    into place: a failure leaves no partial file.
    """
    if with_masks and formats is not None and "onnx" not in formats:
        raise click.BadParameter("--with-masks adds ONNX outputs; add onnx to --format", param_hint="--with-masks")
    from ..io.artifact import check_output_dir
    from ..io.export import default_output
    from ..io.publish import output_lock

    if data_dir and dataset:
        raise click.UsageError("give one of --data-dir DATA or --dataset builtin:clutter")
    check_output_dir(output or default_output(src), force)  # refuse before torch is even imported
    ctx.with_resource(output_lock(output or default_output(src)))  # one writer at a time, until the command ends

    from ..io.export import export as run_export

    out = console(ctx)
    with out.status("exporting") as status:
        summary = run_export(src, output, formats, opset=opset, rtol=rtol, atol=atol, flip_margin=flip_margin,
                             validation_data=data_dir or dataset, mask_mode=mask_mode, with_masks=with_masks,
                             strip=strip_masks, validate=not no_validate, force=force, verify=not no_verify,
                             labels=labels_path, results=results_path, datasets=list(dataset_ids),
                             exporter=exporter,
                             progress=lambda text: status.update(text))
    if as_json:
        emit_json(summary)
        return
    _render(out, summary)


def _render(out, s: dict) -> None:
    from rich.markup import escape
    from rich.table import Table

    for fmt, why in (s.get("skipped") or {}).items():
        out.print(escape(f"skipped {fmt}: {why}"), style="yellow")
    t = Table(title=escape(f"exported to {s['output']}"))
    t.add_column("file")
    t.add_column("content")
    for name, what in s["files"].items():
        t.add_row(name, escape(what))
    out.print(t)
    v = s.get("validation")
    if not v:
        out.print("[yellow]not validated (--no-validate)[/]")
        return
    inputs = v.get("inputs", {}).get("source", "random inputs")
    out.print(escape(f"validation on {v['input_shape'][0]} {inputs} {v['input_shape'][1:]}, {v['mask_mode']} masks "
                     "(validation.json):"))
    c = Table()
    for col in ("file / output", "max |diff|", "relative", "allowed", ""):
        c.add_column(col)
    ok = {True: "[green]ok[/]", False: "[red]over[/]"}
    for key, label in (("safetensors", "model.safetensors"), ("backbone", "backbone/ (timm, masks off)")):
        if key in v:
            part = v[key]
            c.add_row(label, f"{part['max_abs_diff']:.2e}", "", f"{part['tolerance']:g}", ok[part["ok"]])
    onnx = v.get("onnx")
    if onnx:
        for name, d in onnx["outputs"].items():
            rel = f"{d['max_rel_diff']:.1e}" if d.get("max_rel_diff") is not None else "-"
            c.add_row(escape(f"model.onnx {name}"), f"{d.get('max_abs_diff', float('inf')):.2e}", rel,
                      f"{d.get('allowed', 0):.2e}", ok[d["ok"]])
    out.print(c)
    if onnx:
        flips = onnx["mask_flips"]
        out.print(escape(f"model.onnx: top-1 agreement {onnx['top1_agreement']:.1%}; hard-mask tokens flipped between "
                         f"onnxruntime and PyTorch: {flips['near']} near the threshold (|e| <= {onnx['flip_margin']:g},"
                         f" rounding), {flips['far']} far; tolerance atol {onnx['atol']:g} + rtol {onnx['rtol']:g} x "
                         "max |output|" + ("; judged with onnxruntime's mask decisions replayed" if onnx["replayed"]
                                           else "")))
