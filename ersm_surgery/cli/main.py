"""Root command group. Commands are imported only when invoked, so ``--help`` stays fast."""
from __future__ import annotations

import importlib
import logging
import sys

import click

from ..plugins import reserve_commands  # no torch: the registries are plain dicts until a plugin loads
from ..version import __version__

# command name -> (module, attribute, one-line help shown by the root --help without importing it)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "inspect": ("ersm_surgery.cli.inspect_cmd", "inspect", "Show where masks can go: stages and candidate nodes."),
    "inject": ("ersm_surgery.cli.inject_cmd", "inject", "Insert Energy-Mask layers and save the masked model."),
    "plugins": ("ersm_surgery.cli.plugins_cmd", "plugins", "List installed plugins and what each registers."),
    "export": ("ersm_surgery.cli.export_cmd", "export", "Export a masked model: safetensors, ONNX, config, card."),
    "info": ("ersm_surgery.cli.info_cmd", "info", "Show what a .safetensors file holds (header only, instant)."),
    "finetune": ("ersm_surgery.cli.finetune_cmd", "finetune",
                 "Fine-tune with the energy regularizer (DDP via torchrun)."),
    "evaluate": ("ersm_surgery.cli.evaluate_cmd", "evaluate",
                 "What the masks bought: numbers, figures, HTML report."),
    "run": ("ersm_surgery.cli.run_cmd", "run", "The whole story: inject, fine-tune vs baseline, evaluate, export."),
    "reproduce": ("ersm_surgery.cli.reproduce_cmd", "reproduce", "Test the paper's five claims on built-in data."),
    "bench": ("ersm_surgery.cli.bench_cmd", "bench", "Time a mask.gate=stage model's sparse runtime against timm."),
}
reserve_commands(COMMANDS)  # a plugin that registers one of these names fails, naming the built-in owner


class LazyGroup(click.Group):
    """A group whose commands are imported on first use, and whose errors end in one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *super().list_commands(ctx)})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in COMMANDS:
            module, attr, _ = COMMANDS[name]
            return getattr(importlib.import_module(module), attr)
        command = super().get_command(ctx, name)
        if command is None and not ctx.params.get("no_plugins"):  # a plugin's command: load plugins only now
            from ..plugins import get_command

            command = get_command(name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][2]) for name in sorted(COMMANDS)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context):
        from ._errors import translate_errors

        with translate_errors(ctx):
            return super().invoke(ctx)

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        """Like click's, but every error is one line on stderr: ``Error: <problem>; <fix>``."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx else "ersm-surgery"
            click.echo(f"Error: {exc.format_message()} (see '{where} --help')", err=True)
            sys.exit(exc.exit_code)
        except click.ClickException as exc:
            click.echo(f"Error: {exc.format_message()}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("Error: aborted", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ersm-surgery")
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logs.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars or info messages.")
@click.option("--no-plugins", is_flag=True, help="Do not load plugins (also: ERSM_SURGERY_NO_PLUGINS=1).")
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool, no_plugins: bool) -> None:
    """Energy-Regularized Spatial Masking (arXiv 2604.06893) for timm models.

    \b
      ersm-surgery inspect resnet50
      ersm-surgery inject resnet50 --stages 2,3 -o r50-ersm/

    Commands added by plugins are listed by 'ersm-surgery plugins'.
    """
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    ctx.obj["quiet"] = quiet
    from ..plugins import disabled, plugins_enabled  # no torch: entry points are loaded only when needed

    if no_plugins or not plugins_enabled():
        ctx.with_resource(disabled())  # until the command ends; hides plugins loaded earlier in this process
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def main() -> None:
    cli(prog_name="ersm-surgery")


if __name__ == "__main__":
    sys.exit(main())
