"""``ersm-surgery finetune``: run folder, exact resume, baseline mode, settings, and one-line errors.

Every run is tiny (test_resnet at 32 px, a dozen images per split, batch 8) so the file stays fast.
"""
import json

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

import ersm_surgery
from tests.conftest import ok, one_line_error
from tests.conftest import run_quiet as run

DATA = ["--dataset", "builtin:clutter", "--data-opt", "size=12 num_classes=4", "--img-size", "32", "-b", "8",
        "-j", "0", "--seed", "3"]


@pytest.fixture(scope="module")
def injected(tmp_path_factory):
    out = tmp_path_factory.mktemp("inj") / "tr-ersm"
    ok(run("inject", "test_resnet", "--stages", "2,3", "--input-size", "3,32,32", "--num-classes", "4", "-o", out))
    return out


@pytest.fixture(scope="module")
def first_run(injected, tmp_path_factory):
    """One 2-epoch run that several tests read."""
    out = tmp_path_factory.mktemp("runs") / "ft"
    result = ok(run("finetune", injected, *DATA, "--epochs", "2", "-o", out, "--json", "--tau-end", "0.5",
                    "--set", "finetune.gamma=0.5", "--alpha", "0.7"))
    return out, json.loads(result.stdout)


def tensors(folder):
    return load_file(str(folder / "model.safetensors"))


def test_run_folder_layout_summary_and_records(first_run):
    out, summary = first_run
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "recipe.yaml", "config.json", "last",
                                               "summary.csv", "args.yaml"}
    assert {p.name for p in (out / "last").iterdir()} == {"model.safetensors", "recipe.yaml", "config.json",
                                                          "train_state.pt"}
    assert [r["epoch"] for r in summary["epochs"]] == [1, 2] and summary["world_size"] == 1
    row = summary["epochs"][-1]
    for key in ("train_loss", "train_energy", "val_top1", "val_top5", "lr", "density/layer2", "density_std/layer3"):
        assert key in row, key
    assert 0.0 <= row["density/layer2"] <= 1.0 and row["gamma"] == pytest.approx(0.5)
    header = (out / "summary.csv").read_text().splitlines()[0].split(",")
    assert "density/layer2" in header and len((out / "summary.csv").read_text().splitlines()) == 3
    args = yaml.safe_load((out / "args.yaml").read_text())
    assert args["config"]["gamma"] == 0.5 and args["config"]["tau_end"] == 0.5
    # the best model is loadable from OUT, the last from OUT/last; the recipe records the settings
    best, last = ersm_surgery.load(out), ersm_surgery.load(out / "last")
    recipe = last.ersm_recipe
    assert recipe.finetune["gamma"] == 0.5 and recipe.finetune["epochs"] == 2 and recipe.mask.alpha == 0.7
    assert recipe.mask.tau == pytest.approx(0.5)  # annealed to --tau-end, and saved with the model
    assert recipe.finetune["label_names"] == ["circle", "square", "triangle", "cross"]
    assert len(ersm_surgery.masks(best)) == 2
    state = torch.load(out / "last" / "train_state.pt", weights_only=True)
    assert state["epoch"] == 2 and set(state["rng"][0]) >= {"python", "numpy", "torch"}
    assert state["data_order"]["seed"] == 3 and "optimizer" in state and "scheduler" in state


def test_resume_after_epoch_1_of_3_ends_with_the_same_weights(injected, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    ok(run("finetune", injected, *DATA, "--epochs", "3", "-o", full, "-q"))
    ok(run("finetune", injected, *DATA, "--epochs", "3", "-o", part, "--stop-after", "1", "-q"))
    assert torch.load(part / "last" / "train_state.pt", weights_only=True)["epoch"] == 1
    ok(run("finetune", injected, *DATA, "--epochs", "3", "--resume", part, "-q"))  # writes into the run it resumes
    a, b = tensors(full / "last"), tensors(part / "last")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    assert (part / "summary.csv").read_text() .count("\n") == 4
    csv_full = [line.split(",")[:12] for line in (full / "summary.csv").read_text().splitlines()]
    csv_part = [line.split(",")[:12] for line in (part / "summary.csv").read_text().splitlines()]
    assert csv_full == csv_part


def test_baseline_modes_are_loadable_and_have_no_masks(injected, tmp_path):
    stripped = tmp_path / "nomask"
    ok(run("finetune", injected, *DATA, "--epochs", "1", "--no-masks", "-o", stripped, "-q"))
    model = ersm_surgery.load(stripped)
    assert len(ersm_surgery.masks(model)) == 0 and model.ersm_recipe.placements == []
    assert model.ersm_recipe.finetune["no_masks"] is True
    named = tmp_path / "named"
    ok(run("finetune", "test_resnet", *DATA, "--epochs", "1", "-o", named, "-q"))
    model = ersm_surgery.load(named)
    assert len(ersm_surgery.masks(model)) == 0 and model.num_classes == 4  # a fresh head sized to the data
    # a run of another model cannot be resumed on the injected one
    one_line_error(run("finetune", injected, *DATA, "--resume", named, "-o", tmp_path / "x"), "not of", "--resume")


def test_freeze_backbone_trains_masks_and_head_only(injected, tmp_path):
    out = tmp_path / "frozen"
    ok(run("finetune", injected, *DATA, "--epochs", "1", "--freeze-backbone", "--lr", "1e-2", "-o", out, "-q"))
    before, after = tensors(injected), tensors(out / "last")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".ersm_mask" in k or k.startswith("fc.") for k in changed), sorted(changed)[:5]


def test_num_classes_resets_the_head_and_the_recipe(injected, tmp_path):
    data = [*DATA[:3], "size=12 num_classes=3", *DATA[4:]]
    one_line_error(run("finetune", injected, *data, "--epochs", "1", "-o", tmp_path / "a"), "--num-classes 3")
    out = tmp_path / "b"
    ok(run("finetune", injected, *data, "--epochs", "1", "--num-classes", "3", "-o", out, "-q"))
    model = ersm_surgery.load(out)
    assert model.num_classes == 3 and model.ersm_recipe.num_classes == 3 and len(ersm_surgery.masks(model)) == 2


def test_settings_from_a_recipe_file_and_bad_keys(injected, tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("finetune: {epochs: 1, gamma_warmup: 0.2}\nmask: {beta: 0.4}\n")
    out = tmp_path / "r"
    ok(run("finetune", injected, *DATA, "--recipe", recipe, "--set", "finetune.lr=0.001", "-o", out, "-q"))
    r = ersm_surgery.load(out).ersm_recipe
    assert r.finetune["epochs"] == 1 and r.finetune["gamma_warmup"] == 0.2 and r.finetune["lr"] == 0.001
    assert r.mask.beta == 0.4
    one_line_error(run("finetune", injected, *DATA, "--set", "finetune.bogus=1", "-o", tmp_path / "x"),
                   "finetune.bogus")
    one_line_error(run("finetune", injected, *DATA, "--set", "mask.hidden=3", "-o", tmp_path / "y"),
                   "cannot change after injection")


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(injected, tmp_path):
    line = one_line_error(run("finetune", injected, *DATA, "--epochs", "2", "--lr", "1e30", "-o", tmp_path / "a"),
                          "the loss became", "--lr")
    assert "no checkpoint" in line
    out = tmp_path / "b"
    ok(run("finetune", injected, *DATA, "--epochs", "2", "--stop-after", "1", "-o", out, "-q"))
    good = tensors(out / "last")
    line = one_line_error(run("finetune", injected, *DATA, "--epochs", "2", "--resume", out, "--set",
                              "mask.alpha=1.0e+39"), "the loss became", "epoch 2")
    assert "epoch 1) is kept" in line
    assert torch.load(out / "last" / "train_state.pt", weights_only=True)["epoch"] == 1
    after = tensors(out / "last")
    assert all(torch.equal(good[k], after[k]) for k in good)


def _folder(root, classes=("a", "b"), per_class=3, size=32):
    rng = np.random.default_rng(0)
    for split in ("train", "validation"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


def test_data_problems_end_in_one_line(injected, tmp_path):
    common = ["--img-size", "32", "-b", "4", "-j", "0", "--epochs", "1", "--num-classes", "2"]
    one_line_error(run("finetune", injected, "--data-dir", tmp_path / "missing", *common, "-o", tmp_path / "o1"),
                   "does not exist")
    no_train = tmp_path / "no_train"
    (no_train / "validation" / "a").mkdir(parents=True)
    one_line_error(run("finetune", injected, "--data-dir", no_train, *common, "-o", tmp_path / "o2"), "no train split")
    data = _folder(tmp_path / "data")
    (data / "train" / "empty").mkdir()
    one_line_error(run("finetune", injected, "--data-dir", data, *common, "-o", tmp_path / "o3"), "empty class folder")
    (data / "train" / "empty").rmdir()
    (data / "train" / "a" / "broken.png").write_bytes(b"not a png at all")
    result = ok(run("finetune", injected, "--data-dir", data, *common, "-o", tmp_path / "o4", "--json"))
    assert json.loads(result.stdout)["last"]["skipped_images"] == 1
    one_line_error(run("finetune", injected, "--data-dir", data, *common, "--strict-data", "-o", tmp_path / "o5"),
                   "unreadable image")


def test_strict_data_error_in_a_worker_process_is_one_line(injected, tmp_path):
    data = _folder(tmp_path / "data", size=64)
    bad = data / "train" / "a" / "cut.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(bad)
    bad.write_bytes(bad.read_bytes()[:-400])  # header intact: passes the scan, fails in the worker's decode
    line = one_line_error(run("finetune", injected, "--data-dir", data, "--img-size", "32", "-b", "8", "-j", "1",
                              "--epochs", "1", "--num-classes", "2", "--strict-data", "-o", tmp_path / "o"),
                          "cannot read image", "cut.jpg")
    assert "worker" not in line and "DataError:" not in line


def test_sources_that_hold_no_model_end_in_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    one_line_error(run("finetune", tmp_path / "empty", *DATA, "-o", tmp_path / "o"), "holds no injected model")
    one_line_error(run("finetune", "resnet_does_not_exist", *DATA, "-o", tmp_path / "o"), "neither a folder")
    one_line_error(run("finetune", "test_resnet", "--data-dir", tmp_path, "--dataset", "builtin:clutter"),
                   "not both")


def test_data_order_is_a_function_of_seed_and_epoch_and_shards_cover_it():
    from ersm_surgery.train import EpochSampler, MaskSchedule

    a, b = EpochSampler(10, seed=1, shuffle=True), EpochSampler(10, seed=1, shuffle=True)
    a.set_epoch(1)
    list(b)  # iterating epoch 0 first changes nothing: the order is not a running generator
    b.set_epoch(1)
    assert list(a) == list(b) and sorted(a) == list(range(10))
    b.set_epoch(2)
    assert list(a) != list(b)
    shards = [EpochSampler(10, seed=1, shuffle=True, rank=r, world_size=3) for r in range(3)]
    for s in shards:
        s.set_epoch(1)
    assert {len(s) for s in shards} == {4} and set().union(*map(set, shards)) == set(range(10))
    exact = [list(EpochSampler(10, 0, shuffle=False, rank=r, world_size=3, pad=False)) for r in range(3)]
    assert sorted(sum(exact, [])) == list(range(10))
    sched = MaskSchedule(total_updates=11, gamma=2.0, gamma_warmup=0.5, tau_start=1.0, tau_end=0.5)
    assert sched.gamma_at(0) == 0.0 and sched.gamma_at(3) < 2.0 and sched.gamma_at(6) == 2.0
    assert sched.tau_at(0) == 1.0 and sched.tau_at(10) == 0.5


def test_amp_accumulation_sgd_and_a_constant_schedule_run(injected, tmp_path):
    out = tmp_path / "amp"
    result = ok(run("finetune", injected, *DATA, "--epochs", "1", "--amp", "--grad-accum-steps", "2", "--opt", "sgd",
                    "--sched", "constant", "--clip-grad", "1.0", "-o", out, "--json"))
    summary = json.loads(result.stdout)
    assert summary["updates"] == 1  # 12 images, batch 8: two micro-batches, one update
    assert summary["settings"]["opt"] == "sgd" and summary["settings"]["amp"] is True
    one_line_error(run("finetune", injected, *DATA, "--opt", "nosuchopt", "-o", tmp_path / "x"), "unknown optimizer")


def test_help_states_the_real_defaults():
    import re

    from ersm_surgery.train import FinetuneConfig

    text = " ".join(run("finetune", "--help").output.split())
    defaults = FinetuneConfig()
    for flag, key in (("--epochs", "epochs"), ("--batch-size", "batch_size"), ("--lr", "lr"), ("--opt", "opt"),
                      ("--weight-decay", "weight_decay"), ("--sched", "sched"), ("--gamma", "gamma"),
                      ("--gamma-warmup", "gamma_warmup"), ("--mask-lr-scale", "mask_lr_scale"), ("--seed", "seed"),
                      ("--workers", "workers")):
        found = re.search(re.escape(flag) + r" [A-Z]+ .*?\[default: ([^\]]+)\]", text)
        assert found, flag
        value = found.group(1).strip()
        want = getattr(defaults, key)
        assert (float(value) == want) if isinstance(want, (int, float)) else value == want, (flag, value, want)


def test_train_size_sizes_the_train_split_only():
    from ersm_surgery.train import FinetuneConfig
    from ersm_surgery.train.data import build_datasets

    config = FinetuneConfig(data="builtin:clutter", data_options={"num_classes": 3, "size": 20, "train_size": 50})
    train, val = build_datasets(config, 32)
    assert (len(train), len(val), train.num_classes) == (50, 20, 3)
    assert config.data_options["train_size"] == 50  # the config is not consumed


def test_ctrl_c_names_the_resume_command_and_it_works(injected, tmp_path, monkeypatch):
    from ersm_surgery.cli import finetune_cmd

    out = tmp_path / "ft"
    starts = []
    real = finetune_cmd._Progress.on_epoch_start

    def interrupt_second_epoch(self, epoch, batches):
        starts.append(epoch)
        if len(starts) == 2:  # the first epoch finished and was saved; Ctrl-C as the second begins
            raise KeyboardInterrupt
        real(self, epoch, batches)

    monkeypatch.setattr(finetune_cmd._Progress, "on_epoch_start", interrupt_second_epoch)
    line = one_line_error(run("finetune", injected, *DATA, "--epochs", "2", "-o", out), "interrupted", "--resume")
    assert f"ersm-surgery finetune {injected} --resume {out}" in line
    monkeypatch.setattr(finetune_cmd._Progress, "on_epoch_start", real)
    ok(run("finetune", injected, *DATA, "--epochs", "2", "--resume", out))
    assert torch.load(out / "last" / "train_state.pt", weights_only=True)["epoch"] == 2
