"""inspect and inject from the command line: results, files, and one-line errors for bad input."""
import json
import subprocess
import sys
import time

import pytest
import torch

import ersm_surgery
from ersm_surgery.cli.main import COMMANDS
from tests.conftest import one_line_error, run


def test_cold_help_is_fast_and_every_command_has_help():
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "ersm_surgery.cli.main", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "inject" in out.stdout
    assert time.perf_counter() - start < 3.0  # the benchmark holds the real figure; this catches a torch import
    for name in COMMANDS:
        result = run(name, "--help")
        assert result.exit_code == 0 and "Usage:" in result.output, name


def test_inspect_resnet50_shows_layer2_and_layer3_at_stride_8_and_16():
    result = run("inspect", "resnet50", "--json")
    assert result.exit_code == 0, result.output
    stages = {s["module"]: s for s in json.loads(result.output)["stages"]}
    assert stages["layer2"]["reduction"] == 8 and stages["layer2"]["shape"] == [1, 512, 28, 28]
    assert stages["layer3"]["reduction"] == 16 and stages["layer3"]["shape"] == [1, 1024, 14, 14]
    table = run("inspect", "resnet50")
    assert "layer2" in table.output and "layer3.5.act3" in table.output


def test_inspect_all_nodes_lists_candidates():
    result = run("inspect", "test_resnet", "--input-size", "3,64,64", "--all-nodes", "--json")
    names = [c["name"] for c in json.loads(result.output)["candidates"]]
    assert "layer3.0.add" in names and "fc" not in names


def test_inject_resnet50_writes_three_files_and_load_reproduces(tmp_path):
    out = tmp_path / "out"
    result = run("inject", "resnet50", "--stages", "2,3", "-o", str(out), "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors", "recipe.yaml"]
    assert summary["top1_agreement"] == 1.0 and summary["max_logit_diff"] == 0.0
    assert (summary["params_after"] - summary["params_before"]) / summary["params_before"] < 0.01
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "resnet50" and config["ersm"]["placements"][0]["module"] == "layer2"
    model = ersm_surgery.load(out)
    again = ersm_surgery.load(out)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert len(ersm_surgery.masks(model)) == 2


def test_inject_with_nodes_recipe_and_set(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: test_resnet\nmask:\n  alpha: 0.2\n")
    result = run("inject", "test_resnet", "--nodes", "layer3.0.add", "--recipe", str(recipe), "--set", "mask.beta=0.5",
                 "--input-size", "3,64,64", "-o", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    r = ersm_surgery.load(tmp_path / "o").ersm_recipe
    assert (r.mask.alpha, r.mask.beta, r.placements[0].node) == (0.2, 0.5, "layer3.0.add")


def test_pretrained_path_is_loaded(tmp_path):
    import timm
    from safetensors.torch import save_file

    base = timm.create_model("test_resnet", num_classes=4)
    save_file(base.state_dict(), str(tmp_path / "w.safetensors"))
    result = run("inject", "test_resnet", "--stages", "2", "--num-classes", "4", "--input-size", "3,64,64",
                 "--pretrained-path", str(tmp_path / "w.safetensors"), "-o", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    loaded = ersm_surgery.load(tmp_path / "o")
    assert torch.equal(loaded.fc.weight, base.fc.weight)


@pytest.fixture
def busy_dir(tmp_path):
    (tmp_path / "keep.txt").write_text("user data")
    return tmp_path


BAD = [
    (["inject", "resnet5", "--stages", "2"], ["unknown model 'resnet5'", "did you mean resnet50"]),
    (["inject", "test_resnet", "--stages", "7"], ["stage 7 is out of range 0..4", "inspect"]),
    (["--no-plugins", "inject", "test_vit", "--stages", "1"], ["not a (B, C, H, W) map", "token-grid adapter"]),
    (["inject", "test_resnet", "--nodes", "layer3.0.ad"], ["node 'layer3.0.ad' not found", "did you mean"]),
    (["inject", "test_resnet", "--stages", ""], ["empty or malformed", "--stages 2,3"]),
    (["inject", "test_resnet", "--stages", "2,,3"], ["empty or malformed"]),
    (["inject", "test_resnet", "--stages", "two"], ["is not an integer"]),
    (["inject", "test_resnet", "--stages", "2", "--num-classes", "-1"], ["--num-classes", "0 (headless)"]),
    (["inject", "test_resnet", "--stages", "2", "--set", "mask.alpah=1"], ["unknown key 'mask.alpah'", "settable"]),
    (["inject", "test_resnet", "--stages", "2", "--set", "mask.tau=0"], ["mask.tau must be > 0"]),
    (["inject", "test_resnet", "--stages", "2", "--pretrained-path", "/no/such.safetensors"], ["does not exist"]),
    (["inject", "test_resnet"], ["no placement given"]),
    (["inspect", "test_resnet", "--input-size", "3,64"], ["C,H,W"]),
]


@pytest.mark.parametrize("args, fragments", BAD, ids=[" ".join(a[:4]) for a, _ in BAD])
def test_bad_input_is_one_line_with_the_fix(tmp_path, args, fragments):
    if "inject" in args[:2]:
        args = [*args, "-o", str(tmp_path / "o")]
    result = run(*args)
    one_line_error(result, *fragments)
    assert not (tmp_path / "o").exists()


def test_corrupt_pretrained_path(tmp_path):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    one_line_error(run("inject", "test_resnet", "--stages", "2", "--pretrained-path", str(bad),
                       "-o", str(tmp_path / "o")), "cannot read weights")
    pth = tmp_path / "w.pth"
    pth.write_bytes(b"garbage")
    one_line_error(run("inject", "test_resnet", "--stages", "2", "--pretrained-path", str(pth),
                       "-o", str(tmp_path / "o")), "cannot read weights")


def test_output_dir_not_empty_needs_force(busy_dir):
    result = run("inject", "test_resnet", "--stages", "2", "--input-size", "3,64,64", "-o", str(busy_dir))
    one_line_error(result, "exists and is not empty", "--force")
    assert sorted(p.name for p in busy_dir.iterdir()) == ["keep.txt"]
    ok = run("inject", "test_resnet", "--stages", "2", "--input-size", "3,64,64", "-o", str(busy_dir), "--force")
    assert ok.exit_code == 0 and (busy_dir / "keep.txt").read_text() == "user data"


def test_debug_shows_the_traceback(tmp_path):
    result = run("--debug", "inject", "resnet5", "--stages", "2", "-o", str(tmp_path / "o"))
    assert result.exit_code != 0 and result.exception is not None
