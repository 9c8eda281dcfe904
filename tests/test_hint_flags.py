"""Every ``--flag`` that a message or hint of the library names exists on some ersm-surgery command."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import click

import ersm_surgery
from ersm_surgery.cli.main import COMMANDS, cli

ROOT = Path(ersm_surgery.__file__).parent
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]")
# flags of other programs that hints quote verbatim (torchrun, pip, hf download)
FOREIGN = {"--nproc_per_node", "--nnodes", "--upgrade", "--local-dir"}


def _options(command: click.Command) -> set[str]:
    flags = {o for p in command.params for o in (*p.opts, *p.secondary_opts) if o.startswith("--")}
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None:
                flags |= _options(sub)
    return flags


def _in_click_decorator(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "option", "argument", "Option", "BadParameter", "UsageError"):
            return True
    return False


def _named_flags() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and not _in_click_decorator(node,
                                                                                                         parents):
                for flag in FLAG.findall(node.value):
                    found.setdefault(flag, []).append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_every_flag_named_in_a_message_exists() -> None:
    known = _options(cli) | {"--help", "--version"} | FOREIGN
    assert len(COMMANDS) >= 8 and "--strict-data" in known and "--no-verify" in known
    missing = {flag: where for flag, where in _named_flags().items() if flag not in known}
    assert not missing, f"hints name flags no command has: {missing}"
