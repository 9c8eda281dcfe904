"""The plugin API: discovery through entry points, registries, failures that break nothing, recipes.

Plugins are installed for a test by writing a ``*.dist-info`` folder (METADATA + entry_points.txt) and
their modules into a temporary directory on ``sys.path``: importlib.metadata finds them as it finds
pip-installed ones, and no pip is needed.
"""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import ersm_surgery
from ersm_surgery import plugins
from ersm_surgery.errors import DataError, PluginError
from ersm_surgery.layers import list_pairwise
from ersm_surgery.recipe import Recipe
from tests.conftest import run

GOOD = '''
import click
import torch
from torch import nn


class Uniform(nn.Module):
    """w_ij = 1 spelled out: must give exactly the Potts masks."""

    def __init__(self, neighbourhood):
        super().__init__()
        self.k = neighbourhood

    def forward(self, x):
        return torch.ones(x.shape[0], self.k, *x.shape[2:], dtype=x.dtype)


@click.command("fake-hello")
def hello():
    """Say hello."""
    click.echo("hello from fakeplug")


def tiny(split, img_size, seed, **kwargs):
    return {"split": split, "img_size": img_size, "seed": seed, **kwargs}


def register(registry):
    registry.register_pairwise("fake_uniform", lambda channels, config: Uniform(config.neighbourhood))
    registry.register_dataset("fakeplug:tiny", tiny)
    registry.register_command(hello)
'''

BROKEN = {
    "fakeplug_import": "raise ImportError('fakeplug_import needs a library that is not installed')\n",
    "fakeplug_half": textwrap.dedent('''
        def register(registry):
            registry.register_pairwise("half_done", lambda channels, config: None)
            raise RuntimeError("register() gave up half-way")
        NOT_CALLABLE = 42
    '''),
    "fakeplug_clash": textwrap.dedent('''
        def register(registry):
            registry.register_pairwise("potts", lambda channels, config: None)
    '''),
}


def write_dist(root: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "".join(f"{k} = {v}\n" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[ersm_surgery.plugins]\n{lines}")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A directory on sys.path for fake distributions; plugins are rediscovered before and after."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.delenv(plugins.DISABLE_ENV, raising=False)
    before = set(sys.modules)
    yield root
    monkeypatch.undo()
    for name in set(sys.modules) - before:
        if name.startswith(("fakeplug", "ersm_uniform")):
            del sys.modules[name]
    plugins.load_plugins(reload=True)


@pytest.fixture
def good(site):
    write_dist(site, "fakeplug-good", {"good": "fakeplug_good:register"}, {"fakeplug_good": GOOD})
    plugins.load_plugins(reload=True)
    return site


@pytest.fixture
def broken(site):
    write_dist(site, "fakeplug-broken", {
        "on_import": "fakeplug_import:register",
        "on_register": "fakeplug_half:register",
        "clash": "fakeplug_clash:register",
        "not_callable": "fakeplug_half:NOT_CALLABLE",
    }, BROKEN)
    plugins.load_plugins(reload=True)
    return site


def test_a_plugin_registers_a_pairwise_term_a_dataset_and_a_command(good, tmp_path):
    info = {i.owner: i for i in plugins.load_plugins()}["fakeplug-good"]
    assert (info.status, info.version) == ("ok", "0.1")
    assert info.provides == ["pairwise:fake_uniform", "dataset:fakeplug:tiny", "command:fake-hello"]
    listed = json.loads(run("plugins", "--json").output)
    assert any(p["dist"] == "fakeplug-good" and p["status"] == "ok" for p in listed["plugins"])

    from ersm_surgery.data import create_dataset

    assert create_dataset("fakeplug:tiny", split="validation", img_size=8, seed=3) == {
        "split": "validation", "img_size": 8, "seed": 3}
    with pytest.raises(DataError, match="unknown data set 'fakeplug:nope'.*fakeplug:tiny"):
        create_dataset("fakeplug:nope")

    hello = run("fake-hello")
    assert hello.exit_code == 0 and "hello from fakeplug" in hello.output
    assert "No such command" in run("--no-plugins", "fake-hello").output


def test_a_plugin_component_is_recorded_in_the_recipe_and_rebuilt(good, tmp_path):
    x = torch.randn(2, 3, 64, 64)
    potts = ersm_surgery.inject("test_resnet", stages=[2], input_size=(3, 64, 64), config={"beta": 1.0})
    torch.manual_seed(0)
    fake = ersm_surgery.inject("test_resnet", stages=[2], input_size=(3, 64, 64),
                               config={"beta": 1.0, "pairwise": "fake_uniform"})
    fake.load_state_dict(potts.state_dict())
    assert fake.ersm_recipe.plugins == {"pairwise:fake_uniform": "fakeplug-good"}
    assert "plugins" not in potts.ersm_recipe.to_dict()  # built-in components only: the recipe is as before
    fake.eval()
    potts.eval()
    with torch.no_grad():
        assert torch.allclose(fake(x), potts(x), atol=1e-6)  # w_ij = 1 is the Potts term
    ersm_surgery.save(fake, tmp_path / "m")
    assert Recipe.from_yaml((tmp_path / "m" / "recipe.yaml").read_text()).plugins == fake.ersm_recipe.plugins
    with torch.no_grad():
        assert torch.equal(ersm_surgery.load(tmp_path / "m")(x), fake(x))
    with plugins.disabled(), pytest.raises(PluginError, match="fakeplug-good.*plugins are turned off"):
        ersm_surgery.load(tmp_path / "m")


def test_broken_plugins_are_listed_with_their_errors_and_break_nothing(broken, tmp_path):
    listed = json.loads(run("plugins", "--json").output)["plugins"]
    failed = {p["name"]: p["error"] for p in listed if p["dist"] == "fakeplug-broken"}
    assert "fakeplug_import needs a library" in failed["on_import"]
    assert "register() gave up half-way" in failed["on_register"]
    assert "'ersm-surgery (built-in)' and 'fakeplug-broken'" in failed["clash"]
    assert "neither register(registry)" in failed["not_callable"]
    assert all(p["status"] == "failed" for p in listed if p["dist"] == "fakeplug-broken")
    assert "half_done" not in list_pairwise()  # a failed plugin leaves nothing half-registered
    table = run("plugins")
    assert table.exit_code == 0 and "failed" in table.output

    result = run("inject", "test_resnet", "--stages", "2", "--input-size", "3,64,64", "-o", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    assert len(ersm_surgery.masks(ersm_surgery.load(tmp_path / "o"))) == 1


def test_two_plugins_claiming_one_name_fail_the_second_naming_both(good):
    write_dist(good, "fakeplug-zdup", {"dup": "fakeplug_dup:register"},
               {"fakeplug_dup": "def register(registry):\n"
                                "    registry.register_pairwise('fake_uniform', lambda c, cfg: None)\n"})
    infos = {i.owner: i for i in plugins.load_plugins(reload=True)}
    assert infos["fakeplug-good"].status == "ok"
    assert infos["fakeplug-zdup"].status == "failed"
    assert "'fakeplug-good' and 'fakeplug-zdup'" in infos["fakeplug-zdup"].error


def test_a_recipe_naming_a_missing_plugin_fails_with_one_line_naming_it(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: test_resnet\nmask:\n  pairwise: fancy\nplugins:\n  pairwise:fancy: ersm-fancy\n")
    result = run("inject", "test_resnet", "--stages", "2", "--input-size", "3,64,64", "--recipe", str(recipe),
                 "-o", str(tmp_path / "o"))
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    assert "pairwise term 'fancy' comes from plugin 'ersm-fancy', which is not installed" in lines[0]
    assert "pip install ersm-fancy" in lines[0]
    data = {"model": "test_resnet", "mask": {"head": "nope"},
            "placements": [{"module": "layer2", "channels": 48, "stage": 2}]}
    with pytest.raises(PluginError, match="unknown unary head 'nope' \\(registered: conv"):
        ersm_surgery.build_model(Recipe.from_dict(data))


def test_discovery_can_be_turned_off(good, monkeypatch):
    assert json.loads(run("--no-plugins", "plugins", "--json").output) == {
        "enabled": False, "entry_point_group": "ersm_surgery.plugins", "plugins": []}
    assert "fake_uniform" in list_pairwise()  # --no-plugins hid it only while the command ran
    monkeypatch.setenv(plugins.DISABLE_ENV, "1")
    assert "discovery is off" in run("plugins").output
    with plugins.disabled():
        assert "fake_uniform" not in list_pairwise() and plugins.load_plugins() == []


def test_help_imports_no_plugin_no_torch_and_no_timm(site):
    write_dist(site, "fakeplug-loud", {"loud": "fakeplug_loud:register"},
               {"fakeplug_loud": "raise SystemExit('a plugin was imported by --help')\n"})
    code = ("import sys\nfrom ersm_surgery.cli.main import cli\n"
            "try:\n    cli(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('IMPORTED', sorted(m for m in sys.modules if m.split('.')[0] in "
            "('torch', 'timm', 'fakeplug_loud', 'ersm_token_grid', 'ersm_edge_aware')))")
    env = {"PYTHONPATH": f"{site}:{Path(__file__).parents[1]}", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert "Commands:" in out.stdout and "plugins" in out.stdout, out.stderr
    assert "IMPORTED []" in out.stdout


def test_registry_rejects_bad_components_by_name():
    registry = plugins.PluginRegistry("someone")
    with pytest.raises(ValueError, match="must look like '<plugin>:<name>'"):
        registry.register_dataset("builtin:clutter", lambda **kw: None)
    with pytest.raises(ValueError, match="must be a click.Command"):
        registry.register_command(print, name="print")
    with pytest.raises(ValueError, match="must be callable"):
        registry.register_pairwise("x", 3)


def test_a_plugin_cannot_take_a_built_in_command_name_and_commit_uses_the_public_registries():
    import click

    from ersm_surgery.cli.main import COMMANDS
    from ersm_surgery.layers import get_pairwise, unregister_pairwise

    assert "inspect" in COMMANDS  # the CLI reserved its names when it was imported (conftest imports it)
    registry = plugins.PluginRegistry("someone")
    registry.register_command(click.Command("inspect"))
    with pytest.raises(ValueError, match="'inspect' is registered by both 'ersm-surgery \\(built-in\\)' and 'someone'"):
        registry.commit()
    assert plugins.get_command("inspect") is None  # nothing half-registered

    def factory(channels, config):
        return None

    registry = plugins.PluginRegistry("someone")
    registry.register_pairwise("test_none", factory)
    registry.commit()
    try:
        assert get_pairwise("test_none") is factory and "test_none" in list_pairwise()
        assert plugins.component_owner("pairwise:test_none") == "someone"
    finally:
        assert unregister_pairwise("test_none") is factory
        plugins._registry.OWNERS.pop("pairwise:test_none")
    assert "test_none" not in list_pairwise() and unregister_pairwise("test_none") is None


def test_the_documented_example_plugin_works(site, tmp_path):
    docs = (Path(__file__).parents[1] / "docs" / "plugins.md").read_text()
    source = docs.split("```python\n# ersm_uniform.py\n", 1)[1].split("```", 1)[0]
    assert "uniform = \"ersm_uniform:register\"" in docs
    write_dist(site, "ersm-uniform", {"uniform": "ersm_uniform:register"}, {"ersm_uniform": source})
    plugins.load_plugins(reload=True)
    assert "pairwise term 'uniform'" in run("uniform-info").output
    result = run("inject", "test_resnet", "--stages", "2", "--input-size", "3,64,64", "-o", str(tmp_path / "o"),
                 "--set", "mask.pairwise=uniform", "--set", "mask.pairwise_args={weight: 0.5}")
    assert result.exit_code == 0, result.output
    assert ersm_surgery.load(tmp_path / "o").ersm_recipe.plugins == {"pairwise:uniform": "ersm-uniform"}


def test_an_entry_point_may_name_a_module_with_register(site):
    source = ("from ersm_surgery.layers import ConvUnaryHead\n\n\n"
              "def register(registry):\n    registry.register_unary_head('fake_conv')(ConvUnaryHead)\n")
    write_dist(site, "fakeplug-module", {"as_module": "fakeplug_module"}, {"fakeplug_module": source})
    info = {i.owner: i for i in plugins.load_plugins(reload=True)}["fakeplug-module"]
    assert (info.status, info.provides) == ("ok", ["unary_head:fake_conv"])
    assert plugins.component_owner("unary_head:fake_conv") == "fakeplug-module"
