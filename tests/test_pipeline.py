"""`run` and `reproduce`: the pipeline end to end on a tiny model and tiny built-in data."""
import json

import pytest
import yaml

from ersm_surgery.pipeline import CLAIMS, judge_claims
from tests.conftest import run

# a plumbing check: a base of 1 epoch on 64 images stays near chance, so the gate is forced open
TINY = ["--epochs", "1", "--base-epochs", "1", "--data-size", "64", "--num-images", "16", "-b", "32",
        "--img-size", "48", "--force-base"]


def test_run_end_to_end(tmp_path):
    out = tmp_path / "run"
    result = run("-q", "run", "test_resnet", "--stages", "2,3", *TINY, "-o", str(out), "--json",
                 "--set", "finetune.lr=1e-4", "--device", "cpu", "-j", "1")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    # --device and -j reach every training (recorded in each run's config)
    workers = {f: yaml.safe_load((out / f / "args.yaml").read_text())["config"]["workers"]
               for f in ("ersm", "baseline")}
    assert workers == {"ersm": 1, "baseline": 1} and summary["settings"]["device"] == "cpu"
    # finetune.* settings change the two fine-tunings, not the base training (the rule's: LAMB at 5e-3, batch 32)
    config = {f: yaml.safe_load((out / f / "args.yaml").read_text())["config"] for f in ("base", "ersm", "baseline")}
    assert {f: c["lr"] for f, c in config.items()} == {"base": 5e-3, "ersm": 1e-4, "baseline": 1e-4}
    assert config["base"]["opt"] == "lamb"
    assert json.loads((out / "base" / "base_settings.json").read_text())["settings"]["lr"] == 5e-3
    for folder in ("base", "injected", "ersm", "baseline", "eval", "export"):
        assert (out / folder).is_dir(), folder
    assert (out / "eval" / "report.html").is_file() and (out / "export" / "model.onnx").is_file()
    assert "top1.model" in summary["summary"] and "top1.baseline" in summary["summary"]
    assert set(summary["timings"]) >= {"base", "finetune", "baseline", "evaluate", "export"}
    assert summary["side_by_side"] is True  # a CPU with 2 threads (conftest): the fine-tunings ran at once
    # the same budget for both: the last epochs are evaluated, not the best by val top-1
    models = json.loads((out / "eval" / "results.json").read_text())["models"]
    assert models["model"]["source"] == str(out / "ersm" / "last")
    assert models["baseline"]["source"] == str(out / "baseline" / "last")


@pytest.mark.parametrize("args, fragment", [
    (["run", "test_resnet", "--stages", "9"], "out of range"),
    (["run", "resnet5", "--stages", "2"], "unknown model"),
    (["run", "test_resnet", "--stages", "2", "--data-dir", "/no/such/data"], "does not exist"),
    (["run", "test_resnet", "--stages", "2", "--set", "finetune.lr=fast"], "finetune.lr"),
    (["run", "test_resnet", "--stages", "2", "--set", "finetune.nope=1"], "unknown setting(s) finetune.nope"),
    (["run", "test_resnet", "--stages", "2", "--set", "mask.alpha=-1"], "mask.alpha must be >= 0"),
    (["reproduce", "--model", "test_resnet", "--set", "mask.hidden=zero"], "invalid mask setting"),
])
def test_run_stops_before_training_with_the_reason(tmp_path, args, fragment):
    result = run(*args, "-o", str(tmp_path / "o"))
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and fragment in lines[0], result.output
    assert not (tmp_path / "o" / "base").exists()


def test_side_by_side_fine_tunings_match_one_after_another(tmp_path):
    import torch

    import ersm_surgery
    from ersm_surgery.pipeline.run import PipelineSettings, train_pair

    ersm_surgery.save(ersm_surgery.inject("test_resnet", stages=[2], input_size=(3, 48, 48), num_classes=4),
                      tmp_path / "injected")
    # opt-in from Python (spawn re-imports the caller's script); the CLI asks for it (test_run_end_to_end)
    assert PipelineSettings(model="test_resnet", stages=[2]).side_by_side is False
    rows = {}
    for side_by_side in (True, False):
        settings = PipelineSettings(model="test_resnet", stages=[2], epochs=1, batch_size=16, img_size=48,
                                    data_options={"num_classes": 4, "size": 32}, side_by_side=side_by_side)
        ersm, baseline = train_pair(tmp_path / "injected", tmp_path / str(side_by_side), settings, lambda *_: None)
        assert ersm["parallel"] is baseline["parallel"] is side_by_side
        assert torch.get_num_threads() == 2  # given back after the side-by-side half
        rows[side_by_side] = (ersm["last"], baseline["last"])
        assert (tmp_path / str(side_by_side) / "baseline" / "last" / "model.safetensors").is_file()
    # the same seeds, data and steps: only the thread count differs
    for a, b in zip(rows[True], rows[False], strict=True):
        assert a["val_top1"] == b["val_top1"] and a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)


def _die_on_arrival():
    import os

    os._exit(3)  # the spawned child dies while it unpacks its arguments, before it can answer


class _DiesInTheChild:
    def __reduce__(self):
        return _die_on_arrival, ()


def test_a_side_by_side_baseline_that_dies_is_one_line_naming_the_fix(tmp_path):
    import ersm_surgery
    from ersm_surgery.errors import ErsmError
    from ersm_surgery.pipeline.run import PipelineSettings, train_pair

    ersm_surgery.save(ersm_surgery.inject("test_resnet", stages=[2], input_size=(3, 48, 48), num_classes=4),
                      tmp_path / "injected")
    # boxes is not read by the fine-tunings: only the child, which unpickles it, is affected
    settings = PipelineSettings(model="test_resnet", stages=[2], epochs=1, batch_size=16, img_size=48,
                                data_options={"num_classes": 4, "size": 16}, side_by_side=True,
                                boxes=_DiesInTheChild())
    with pytest.raises(ErsmError) as err:
        train_pair(tmp_path / "injected", tmp_path / "out", settings, lambda *_: None)
    line = str(err.value)
    assert "\n" not in line and "exit code 3" in line and "--one-after-another" in line


def test_the_side_by_side_baseline_sends_its_error_back_as_one_line(tmp_path):
    import multiprocessing

    import torch

    from ersm_surgery.errors import ErsmError
    from ersm_surgery.pipeline.run import PipelineSettings, _train_child

    receive, send = multiprocessing.Pipe(duplex=False)
    settings = PipelineSettings(model="test_resnet", stages=[2], data_options={"num_classes": 4, "size": 8})
    try:
        _train_child(send, str(tmp_path / "no-such-model"), tmp_path / "b", settings, 1)
    finally:
        torch.set_num_threads(2)
    status, error = receive.recv()
    assert status == "error" and isinstance(error, ErsmError)
    assert "no-such-model" in str(error) and "\n" not in str(error)


def test_claims_are_judged_from_results_and_missing_ones_are_not_measured():
    results = {
        "accuracy": {"model": {"top1": 0.80}, "baseline": {"top1": 0.81}},
        "sparsity": {"layers": {"a": {"density": {"mean": 0.4, "std": 0.1}}}},
        "deletion": {"model": {"layers": {"a": {
            "energy": {"lerf": {"accuracy_auc": 0.8}, "morf": {"accuracy_auc": 0.3}},
            "magnitude": {"lerf": {"accuracy_auc": 0.7}, "morf": {"accuracy_auc": 0.4}}}}}},
    }
    rows = {r["claim"][:3]: r for r in judge_claims(results)}
    assert len(rows) == len(CLAIMS) == 5
    assert rows["(a)"]["verdict"] == "HOLDS" and rows["(b)"]["verdict"] == "HOLDS"
    assert rows["(e)"]["verdict"] == "HOLDS" and rows["(e)"]["ersm"] == pytest.approx(0.5)
    assert rows["(c)"]["verdict"] == "NOT MEASURED" and rows["(d)"]["verdict"] == "NOT MEASURED"
    results["accuracy"]["model"]["top1"] = 0.70
    assert judge_claims(results)[0]["verdict"] == "DOES NOT HOLD"


def test_reproduce_prints_the_claims_and_two_runs_give_the_same_table(tmp_path):
    tables = []
    for name in ("r1", "r2"):
        out = tmp_path / name
        result = run("-q", "reproduce", "--model", "test_resnet", *TINY, "--seeds", "2", "-o", str(out), "--json")
        assert result.exit_code == 0, result.output
        printed = json.loads(result.output)
        claims, v2 = printed["claims"], printed["claims_v2"]
        assert [c["claim"][:3] for c in claims] == ["(a)", "(b)", "(c)", "(d)", "(e)"]
        # built-in data has boxes; the tiny base is forced past the gate, so every verdict says so
        assert all(c["verdict"] in ("HOLDS (untrained base)", "DOES NOT HOLD (untrained base)") for c in claims)
        # version 2: every claim measured on the built-in data (boxes, the spurious cue), over both seeds
        assert [c["claim"].split(" ")[0] for c in v2] == ["(a)", "(b)", "(c)", "(d)", "(d')", "(e)", "(f)", "(f')"]
        assert all(c["seeds"] == 2 and c["low"] <= c["estimate"] <= c["high"] for c in v2), v2
        assert all(c["verdict"].endswith("(untrained base)") and not c["verdict"].startswith("NOT MEASURED")
                   for c in v2), v2
        record = json.loads((out / "claims.json").read_text())
        assert record["criteria"] == {"1": claims, "2": v2} and record["seeds"] == [0, 1]
        assert (out / "seeds" / "seed1" / "eval" / "results.json").is_file()
        # the second seed fine-tuned on the first seed's data, from the same injected model
        args = yaml.safe_load((out / "seeds" / "seed1" / "ersm" / "args.yaml").read_text())["config"]
        assert args["seed"] == 1 and args["data_options"]["data_seed"] == 0
        assert args["data_options"]["spurious_cue"] == 0.5
        tables.append((claims, v2))
    assert tables[0] == tables[1]
    # the built-in protocol's class count (the one the default mask settings were measured on)
    assert "num_classes: 4" in (tmp_path / "r1" / "ersm" / "recipe.yaml").read_text()


def test_run_refuses_built_in_data_options_with_a_folder(tmp_path):
    (tmp_path / "data").mkdir()
    result = run("run", "test_resnet", "--stages", "2", "--data-dir", str(tmp_path / "data"),
                 "--num-classes", "3", "-o", str(tmp_path / "o"))
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--num-classes" in lines[0] and "built-in data only" in lines[0], result.output


def test_reproduce_runs_the_protocol_per_model_and_prints_a_summary(tmp_path):
    out = tmp_path / "many"
    result = run("reproduce", "--model", "test_resnet,test_efficientnet", *TINY, "--seeds", "1",
                 "--spurious-cue", "0", "-o", str(out))
    assert result.exit_code == 0, result.output
    for name in ("test_resnet", "test_efficientnet"):
        record = json.loads((out / name / "claims.json").read_text())
        assert record["model"] == name and record["seeds"] == [0]
        rows = {r["claim"].split(" ")[0]: r["verdict"] for r in record["criteria"]["2"]}
        assert rows["(f)"].startswith("NOT MEASURED")  # --spurious-cue 0: no cue planted
        assert "criteria version 1 (" + name in " ".join(result.output.split())
        # depthwise convolutions: base and both fine-tunings channels-last; the resnet stays contiguous
        for step in ("base", "ersm", "baseline"):
            config = yaml.safe_load((out / name / step / "args.yaml").read_text())["config"]
            assert config["channels_last"] is (name == "test_efficientnet"), (name, step)
    assert "Summary: criteria version 2 verdicts per model" in result.output


@pytest.mark.parametrize("args, fragment", [
    (["--seeds", "0"], "--seeds"),
    (["--data-dir", ".", "--spurious-cue", "0.5"], "--spurious-cue"),
    (["--model", ","], "--model"),
])
def test_reproduce_refuses_bad_options_in_one_line(tmp_path, args, fragment):
    result = run("reproduce", *args, "-o", str(tmp_path / "o"))
    assert result.exit_code == 2 and fragment in result.output, result.output
