"""Model names as timm takes them: local-dir: and hf-hub: wherever a timm name is accepted, and load() of exports.

The Hub is never contacted: hub names are checked offline (HF_HUB_OFFLINE=1) in a child process, against
a Hugging Face cache built here the way huggingface_hub lays it out (models--ORG--NAME/refs/main +
snapshots/<revision>/), so that the cached path works and the missing one fails in one line.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import timm
import torch
from timm.models._hub import save_for_hf

import ersm_surgery
from ersm_surgery.errors import UnknownModelError
from tests.conftest import run

SIZE = (3, 64, 64)
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory) -> Path:
    """A timm model saved the way timm saves for the Hub: config.json + model.safetensors."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("plain") / "test_resnet-7"
    save_for_hf(timm.create_model("test_resnet.r160_in1k", num_classes=7), folder, safe_serialization=True)
    return folder


def test_inject_local_dir_takes_the_folders_weights_and_rebuilds_offline(plain_dir: Path, tmp_path: Path) -> None:
    reference = timm.create_model(f"local-dir:{plain_dir}", pretrained=True).eval()
    masked = ersm_surgery.inject(f"local-dir:{plain_dir}", stages=[2, 3], pretrained=True, input_size=SIZE)
    recipe = masked.ersm_recipe
    # the recipe records what rebuilds the model without the folder: architecture + tag, its saved arguments
    assert recipe.model == "test_resnet.r160_in1k" and recipe.num_classes == 7
    assert recipe.base_model == f"local-dir:{plain_dir}" and recipe.model_kwargs.get("in_chans") == 3
    own = masked.state_dict()
    assert all(torch.equal(v, own[k]) for k, v in reference.state_dict().items())
    ersm_surgery.save(masked, tmp_path / "ex")
    moved = plain_dir.with_name("moved-away")
    plain_dir.rename(moved)
    try:
        back = ersm_surgery.load(f"local-dir:{tmp_path / 'ex'}")  # the source folder is not needed to load
    finally:
        moved.rename(plain_dir)
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        assert torch.equal(back(x), masked.eval()(x))
    assert "base_model: local-dir:" in (tmp_path / "ex" / "recipe.yaml").read_text()


def test_cli_accepts_local_dir_names(plain_dir: Path, tmp_path: Path) -> None:
    result = run("inspect", f"local-dir:{plain_dir}", "--input-size", "3,64,64", "--json")
    assert result.exit_code == 0, result.output
    assert [s["index"] for s in json.loads(result.stdout)["stages"]][:3] == [0, 1, 2]
    result = run("inject", f"local-dir:{plain_dir}", "--stages", "2,3", "--pretrained", "--input-size", "3,64,64",
                 "-o", tmp_path / "inj", "--json")
    assert result.exit_code == 0, result.output
    assert ersm_surgery.load(tmp_path / "inj").ersm_recipe.model == "test_resnet.r160_in1k"


def test_finetune_source_accepts_local_dir_names(plain_dir: Path, tmp_path: Path) -> None:
    from ersm_surgery.io.source import load_source

    model, kind = load_source(f"local-dir:{plain_dir}", pretrained=True)
    assert kind == "timm" and model.num_classes == 7 and model.ersm_recipe.model == "test_resnet.r160_in1k"
    ersm_surgery.save(ersm_surgery.inject("test_resnet", stages=[2], input_size=SIZE, num_classes=3), tmp_path / "m")
    model, kind = load_source(f"local-dir:{tmp_path / 'm'}")  # an export named as local-dir: is a saved model
    assert kind == "folder" and ersm_surgery.masks(model).names() == ["layer2.ersm_mask"]


@pytest.mark.parametrize("name, words", [
    ("local-dir:/no/such/folder", "does not exist"),
    ("timm/resnet18.a1_in1k", "write hf-hub:timm/resnet18.a1_in1k"),
    ("resnet_18", "did you mean"),
    ("zip:abc", "unknown model"),
])
def test_bad_names_fail_in_one_line(name: str, words: str) -> None:
    result = run("inspect", name)
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and words in lines[0] and "Traceback" not in result.output
    with pytest.raises(UnknownModelError):
        ersm_surgery.inject(name, stages=[2])


def _hub_cache(cache: Path, repo: str, files: dict[str, Path]) -> None:
    """Files in a Hugging Face cache as huggingface_hub lays it out (what 'hf download' leaves behind)."""
    base = cache / f"models--{repo.replace('/', '--')}"
    revision = "0123456789abcdef0123456789abcdef01234567"
    (base / "refs").mkdir(parents=True)
    (base / "refs" / "main").write_text(revision)
    snapshot = base / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name, src in files.items():
        shutil.copy(src, snapshot / name)


def test_hub_names_offline_use_the_cache_or_fail_in_one_line(plain_dir: Path, tmp_path: Path) -> None:
    export = tmp_path / "export"
    ersm_surgery.save(ersm_surgery.inject("test_resnet", stages=[2], input_size=SIZE, num_classes=3), export)
    cache = tmp_path / "hub"
    _hub_cache(cache, "someone/test-resnet-7", {n: plain_dir / n for n in ("config.json", "model.safetensors")})
    _hub_cache(cache, "someone/test-resnet-ersm", {n: export / n for n in ("config.json", "model.safetensors")})
    child = textwrap.dedent(f"""
        import json, sys, torch
        from click.testing import CliRunner
        import ersm_surgery
        from ersm_surgery.cli.main import cli
        out = {{}}
        m = ersm_surgery.inject("hf-hub:someone/test-resnet-7", stages=[2], pretrained=True, input_size=(3, 64, 64))
        out["api_inject"] = [m.ersm_recipe.model, m.ersm_recipe.base_model, m.num_classes]
        out["load"] = ersm_surgery.masks(ersm_surgery.load("hf-hub:someone/test-resnet-ersm")).names()
        for args in (["inject", "hf-hub:timm/resnet18.a1_in1k", "--stages", "2,3", "-o", {str(tmp_path / "o")!r}],
                     ["finetune", "hf-hub:someone/missing", "--dataset", "builtin:clutter"]):
            r = CliRunner().invoke(cli, args)
            out[args[0]] = [r.exit_code, r.output]
        try:
            ersm_surgery.load("hf-hub:someone/missing")
        except Exception as exc:
            out["load_missing"] = [type(exc).__name__, str(exc)]
        print(json.dumps(out))
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "hf_home")}
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["api_inject"] == ["test_resnet.r160_in1k", "hf-hub:someone/test-resnet-7", 7]
    assert out["load"] == ["layer2.ersm_mask"]
    for command in ("inject", "finetune"):
        code, text = out[command]
        lines = text.strip().splitlines()
        assert code == 1 and len(lines) == 1, text
        assert "cannot reach the Hugging Face Hub" in lines[0] and "local-dir:DIR" in lines[0]
    assert out["load_missing"][0] == "UnknownModelError" and "no local copy is cached" in out["load_missing"][1]
    assert not (tmp_path / "o").exists()


def test_load_takes_a_cloned_hub_repo_and_names_an_lfs_pointer(tmp_path: Path) -> None:
    export = tmp_path / "clone"
    ersm_surgery.save(ersm_surgery.inject("test_resnet", stages=[2], input_size=SIZE, num_classes=3), export)
    (export / "README.md").write_text("---\nlibrary_name: ersm-surgery\n---\n")
    assert ersm_surgery.load(export).num_classes == 3
    cache = tmp_path / "cache"
    _hub_cache(cache, "a/b", {"model.safetensors": export / "model.safetensors"})
    assert ersm_surgery.load(cache / "models--a--b").num_classes == 3  # a Hub cache folder
    (export / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\n")
    result = run("export", export, "-o", tmp_path / "o")
    assert result.exit_code == 1 and "Git LFS pointer" in result.output and "git lfs pull" in result.output


@pytest.mark.parametrize("command", ["run", "reproduce"])
def test_run_and_reproduce_check_the_name_before_any_training(command: str, tmp_path: Path) -> None:
    name_args = ["local-dir:/no/such/folder", "--stages", "2,3"] if command == "run" else \
        ["--model", "local-dir:/no/such/folder"]
    result = run(command, *name_args, "-o", tmp_path / "r")
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and "does not exist" in lines[0], result.output
