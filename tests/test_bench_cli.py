"""``ersm-surgery bench`` and ``--set mask.gate=stage`` through the commands."""
import json

import pytest
import torch
import yaml

import ersm_surgery
from ersm_surgery.layers import StageGate
from tests.conftest import one_line_error, run, run_quiet


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    for name, extra in (("gated", ["--set", "mask.gate=stage"]), ("features", [])):
        result = run_quiet("inject", "test_resnet", "--stages", "2,3", "--input-size", "3,32,32", "--num-classes", "4",
                           "-o", root / name, *extra)
        assert result.exit_code == 0, result.output
    return root


def test_bench_json_reports_both_batches(folders):
    result = run_quiet("bench", folders / "gated", "-b", "1,3", "--repeat", "1", "--warmup", "0", "--json",
                       "--dataset", "builtin:clutter", "--break-even", "1.0")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [r["batch"] for r in report["results"]] == [1, 3] and report["inputs"] == "builtin:clutter"
    for r in report["results"]:
        assert set(r["density"]) == {"layer2.ersm_mask", "layer3.ersm_mask"}
        assert r["max_abs_logit_diff"] <= 1e-4 and r["dense_ops"] == [] and r["sparse_flop_share"] == 1.0
        assert 0.0 <= r["dense_float32_error"] <= 1e-3  # the dense model's own rounding, against float64
        assert set(r["computed_density"]) == {"layer3", "layer4"}
        assert all(0.0 <= v <= 1.0 for v in r["computed_density"].values())
        assert set(r["computed_output_density"]) == {"layer3", "layer4"}
        assert r["speedup"] > 0 and r["stages"]["speedup"] > 0 and all(r["ran_sparse"].values())
        assert r["dense_folded"]["wall_s"] > 0  # the timm model with its norms folded, timed beside the others
        assert r["speedup_over_folded"] == r["dense_folded"]["wall_s"] / r["sparse"]["wall_s"]
        for med, lo, hi in (r["speedup_interval"], r["speedup_over_folded_interval"], r["stages"]["speedup_interval"]):
            assert 0 < lo <= med <= hi


def test_bench_table(folders):
    result = run("bench", folders / "gated", "-b", "2", "--repeat", "1", "--warmup", "0")
    assert result.exit_code == 0 and "ops that ran densely: none" in result.output, result.output
    assert "kept tokens the gated stages compute: layer3" in result.output and "(output grid" in result.output
    assert "vs folded" in result.output


def test_bench_refuses_models_it_cannot_speed_up(folders):
    one_line_error(run_quiet("bench", "test_resnet", "--repeat", "1"), "no ERSM masks", "--set mask.gate=stage")
    one_line_error(run_quiet("bench", folders / "features", "--repeat", "1"), "mask.gate=features",
                   "--set mask.gate=stage")
    one_line_error(run_quiet("bench", folders / "gated", "-b", "1,x"), "not a comma-separated list")


@pytest.mark.parametrize("source,settings,pool", [("features", ["mask.gate=stage"], "sample"),
                                                  ("gated", ["mask.gate_pool=any"], "any")])
def test_finetune_can_switch_the_gate_on_or_change_its_pooling(folders, tmp_path, source, settings, pool):
    out = tmp_path / "ft"
    result = run_quiet("finetune", folders / source, "--dataset", "builtin:clutter", "--data-opt",
                       "size=8 num_classes=4", "--img-size", "32", "-b", "8", "-j", "0", "--epochs", "1", "--set",
                       *settings, "-o", out)
    assert result.exit_code == 0, result.output
    recipe = yaml.safe_load((out / "last" / "recipe.yaml").read_text())
    assert recipe["mask"]["gate"] == "stage" and recipe["mask"]["gate_pool"] == pool
    model = ersm_surgery.load(out / "last").eval()
    gates = [m for m in model.modules() if isinstance(m, StageGate)]
    assert gates and all(g.pool == pool for g in gates)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ersm_surgery.sparse(model, break_even=1.0)(x), model(x), atol=1e-4, rtol=1e-4)


def test_bench_isolate_times_each_model_alone_in_its_own_processes(folders):
    result = run_quiet("bench", folders / "gated", "-b", "2", "--repeat", "2", "--warmup", "1", "--json",
                       "--isolate", "--rounds", "2")
    assert result.exit_code == 0, result.output
    iso = json.loads(result.stdout)["results"][0]["isolated"]
    assert iso["rounds"] == 2 and len(iso["dense_s"]) == len(iso["sparse_s"]) == 2
    assert all(t > 0 for t in iso["dense_s"] + iso["sparse_s"])
    low, high = iso["speedup_interval"]
    assert 0 < low <= iso["speedup"] <= high
    table = run("bench", folders / "gated", "-b", "1", "--repeat", "1", "--warmup", "0", "--isolate", "--rounds", "1")
    assert table.exit_code == 0 and "each model alone in its own process (1 round)" in table.output, table.output


def test_isolated_timing_fails_with_one_line(monkeypatch, folders):
    from ersm_surgery.eval import isolated

    monkeypatch.setattr(isolated, "__name__", "ersm_surgery.no_such_module")  # the child cannot start
    model = ersm_surgery.load(folders / "gated")
    with pytest.raises(ersm_surgery.errors.SparseError, match="the dense timing process failed: .*leave out --isolate"):
        isolated.isolated_latency(model, torch.randn(1, 3, 32, 32), rounds=1, repeat=1, warmup=0)
