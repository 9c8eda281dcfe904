"""Imports only point down: each part of ``ersm_surgery`` imports only the parts its row of ``ALLOWED`` names.

The table is the layering of docs/index.md written as data. A new import between parts fails here until the
table (and the map in the docs) says it is meant; that is the point: the direction is a decision, not an
accident. The checker reads the source with ``ast`` (function-level and ``TYPE_CHECKING`` imports count too)
and is itself tested on a copy of the tree with an upward import planted in it.
"""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

import ersm_surgery

LIBRARY = Path(ersm_surgery.__file__).parent

# small leaf modules any part may use; they import only each other
SHARED = {"errors", "version", "optional", "io.atomic"}

# part -> the parts it may import (besides SHARED and itself)
ALLOWED: dict[str, set[str]] = {
    "__init__": set(),  # names are imported lazily, by string
    "layers": set(),
    "surgery": {"layers"},
    "mask_set": {"layers"},
    "model_source": set(),
    "models": {"model_source"},
    "plugins": {"layers", "surgery"},
    "data": {"plugins"},
    "recipe": {"layers", "surgery", "data"},
    "build": {"models", "plugins", "recipe", "surgery"},
    "sparse": {"layers", "mask_set", "models", "recipe", "surgery"},
    # io and eval use each other on purpose, inside functions: eval records io.versions(), export
    # validation reads images through eval.images
    "io": {"build", "data", "eval", "layers", "mask_set", "model_source", "models", "recipe", "surgery"},
    "eval": {"data", "io", "layers", "mask_set", "model_source", "sparse", "surgery"},
    "api": {"build", "layers", "models", "plugins", "recipe", "surgery"},
    "injection_summary": {"io", "mask_set", "surgery"},
    "injection": {"api", "injection_summary", "io", "layers", "model_source", "models", "plugins", "recipe",
                  "surgery"},
    "train": {"build", "data", "io", "layers", "mask_set", "model_source", "recipe"},
    "pipeline": {"api", "data", "eval", "io", "layers", "recipe", "surgery", "train"},
    "cli": {"api", "build", "data", "eval", "injection", "injection_summary", "io", "layers", "mask_set",
            "model_source", "models", "pipeline", "plugins", "recipe", "sparse", "surgery", "train"},
    "__main__": {"cli"},
}

CORE = ("layers", "surgery", "recipe", "io", "data", "train", "eval", "pipeline", "plugins", "sparse", "build")


def _imported(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, dotted module) of every ``ersm_surgery`` import in ``path``, relative ones resolved."""
    rel = path.relative_to(root).with_suffix("").parts
    package = [root.name, *rel[:-1]]  # the package a relative import starts from
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                if node.module:
                    found.append((node.lineno, ".".join([*base, node.module])))
                else:  # from .. import layers: each name may be a module
                    found += [(node.lineno, ".".join([*base, a.name])) for a in node.names]
            else:
                found.append((node.lineno, node.module or ""))
    return [(line, name) for line, name in found if name.split(".")[0] == root.name]


def _part(dotted: str) -> str:
    parts = dotted.split(".")[1:]
    if not parts:
        return "__init__"
    return ".".join(parts[:2]) if ".".join(parts[:2]) in SHARED else parts[0]


def layering_violations(root: Path, allowed: dict[str, set[str]]) -> list[str]:
    """``"file:line: part imports target"`` for every import the table does not allow (and unknown parts)."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("").parts
        source = _part(".".join([root.name, *rel]))
        if source in SHARED:
            targets = {_part(name) for _, name in _imported(path, root)} - SHARED
            problems += [f"{path.relative_to(root)}: shared leaf {source} imports {t}" for t in sorted(targets)]
            continue
        if source not in allowed:
            problems.append(f"{path.relative_to(root)}: part {source!r} is not in the layering table")
            continue
        for line, name in _imported(path, root):
            target = _part(name)
            if target != source and target not in SHARED and target not in allowed[source]:
                problems.append(f"{path.relative_to(root)}:{line}: {source} imports {target} ({name})")
    return problems


def test_the_library_follows_the_layering_table():
    assert layering_violations(LIBRARY, ALLOWED) == []


def test_the_core_never_imports_the_command_line_and_io_never_the_api():
    assert [part for part in CORE if "cli" in ALLOWED[part]] == []
    assert [part for part, targets in ALLOWED.items() if "cli" in targets] == ["__main__"]
    assert "api" not in ALLOWED["io"] and "api" not in ALLOWED["train"]


@pytest.mark.parametrize("where, line, expected", [
    ("plugins/_registry.py", "from ..cli.main import COMMANDS\n", "plugins imports cli (ersm_surgery.cli.main)"),
    ("io/artifact.py", "    from ersm_surgery.api import build_model\n", "io imports api (ersm_surgery.api)"),
    ("layers/loss.py", "from .. import surgery\n", "layers imports surgery (ersm_surgery.surgery)"),
    ("errors.py", "from .io import load\n", "shared leaf errors imports io"),
])
def test_a_planted_upward_import_is_caught(tmp_path, where, line, expected):
    copy = tmp_path / "ersm_surgery"
    shutil.copytree(LIBRARY, copy, ignore=shutil.ignore_patterns("__pycache__"))
    assert layering_violations(copy, ALLOWED) == []
    target = copy / where
    target.write_text(target.read_text() + ("\n\ndef _planted():\n" + line if line.startswith(" ") else "\n" + line))
    problems = layering_violations(copy, ALLOWED)
    assert len(problems) == 1 and expected in problems[0], problems
    assert problems[0].startswith(where)


def test_a_new_part_must_be_placed_in_the_table(tmp_path):
    copy = tmp_path / "ersm_surgery"
    shutil.copytree(LIBRARY, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "newthing.py").write_text("from .layers import EnergyMask\n")
    assert layering_violations(copy, ALLOWED) == ["newthing.py: part 'newthing' is not in the layering table"]


def test_the_core_package_imports_no_plugin():
    for path in LIBRARY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("ersm_token_grid", "ersm_edge_aware") for n in names), path


def test_the_docs_map_lists_every_part_and_says_what_it_may_import():
    docs = (LIBRARY.parent / "docs" / "index.md").read_text()
    rows = [line for line in docs.split("## The packages at one glance", 1)[1].splitlines() if line.startswith("| `")]
    documented = {row.split("`")[1].rstrip("/").removesuffix(".py"): row for row in rows}
    assert set(documented) == set(ALLOWED) - {"__init__", "__main__"}
    for part, row in documented.items():
        listed = row.rsplit("|", 2)[1]
        if part != "cli":  # "everything below"
            named = {w.strip() for w in listed.split(",")} - {"(leaves only)"}
            assert named == ALLOWED[part], (part, named ^ ALLOWED[part])
    order = list(documented)
    upward = [(p, t) for p in order for t in ALLOWED[p] if order.index(t) < order.index(p)]
    assert upward == [("io", "eval")]  # the one documented exception: each calls the other inside functions
