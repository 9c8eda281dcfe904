"""timm's training flags in ``finetune``: each one changes what it says, and exact resume still holds.

Runs are tiny (test_resnet at 32 px, 8 to 16 generated images, one or two epochs).
"""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from timm.layers import DropPath
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

import ersm_surgery
from ersm_surgery.data import create_dataset, resolve_preprocessing
from ersm_surgery.train import FinetuneConfig, fit
from ersm_surgery.train import loop as loop_module
from ersm_surgery.train.regularization import task_criterion
from tests.conftest import ok
from tests.conftest import run_quiet as run

DATA = ["--dataset", "builtin:clutter", "--data-opt", "size=8 num_classes=4", "--img-size", "32", "-b", "4",
        "-j", "0", "--seed", "3"]


@pytest.fixture(scope="module")
def injected(tmp_path_factory):
    out = tmp_path_factory.mktemp("inj") / "tr"
    ok(run("inject", "test_resnet", "--stages", "2", "--input-size", "3,32,32", "--num-classes", "4", "-o", out))
    return out


def _sets(model, augment=False, aa=None, size=8):
    pre = resolve_preprocessing(model, "builtin:clutter", img_size=32)
    train = create_dataset("builtin:clutter", "train", preprocessing=pre, size=size, num_classes=4,
                           train_augment=augment, auto_augment=aa)
    val = create_dataset("builtin:clutter", "validation", preprocessing=pre, size=4, num_classes=4)
    return train, val


def _config(**kw):
    base = dict(data="builtin:clutter", epochs=1, batch_size=4, workers=0, seed=1, lr=1e-3)
    return FinetuneConfig.from_sources({**base, **kw})


class _Spy(torch.nn.Module):
    """Wraps the run's real criterion and keeps what it was called with."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.targets = inner, []

    def forward(self, logits, target):
        self.targets.append(target.detach().clone())
        return self.inner(logits, target)


def _spy_criterion(monkeypatch):
    spies = []

    def make(config):
        spies.append(_Spy(task_criterion(config)))
        return spies[-1]

    monkeypatch.setattr(loop_module, "task_criterion", make)
    return spies


def test_model_ema_is_what_is_validated_and_saved_and_resume_is_exact(injected, tmp_path):
    flags = ["--model-ema", "--model-ema-decay", "0.5", "--epochs", "2", "--mixup", "0.4", "--smoothing", "0.1",
             "--drop-path", "0.1", "--augment"]
    ok(run("finetune", injected, *DATA, *flags, "-o", tmp_path / "full"))
    state = torch.load(tmp_path / "full" / "last" / "train_state.pt", weights_only=True)
    ema = load_file(str(tmp_path / "full" / "last" / "model.safetensors"))
    raw = state["raw_model"]
    assert set(raw) >= set(ema)
    differ = [k for k in ema if ema[k].is_floating_point() and not torch.equal(ema[k], raw[k])]
    assert differ, "the EMA weights equal the trained ones"
    # stop after epoch 1, resume: the same EMA and trained weights as the uninterrupted run
    ok(run("finetune", injected, *DATA, *flags, "-o", tmp_path / "part", "--stop-after", "1"))
    ok(run("finetune", injected, *DATA, *flags, "--resume", tmp_path / "part"))
    ema2 = load_file(str(tmp_path / "part" / "last" / "model.safetensors"))
    raw2 = torch.load(tmp_path / "part" / "last" / "train_state.pt", weights_only=True)["raw_model"]
    assert all(torch.equal(ema[k], ema2[k]) for k in ema)
    assert all(torch.equal(raw[k], raw2[k]) for k in raw)


def test_ema_result_model_differs_from_the_trained_model(injected):
    model = ersm_surgery.load(injected).train()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    train, val = _sets(model)
    result = fit(model, train, val, _config(model_ema=True, model_ema_decay=0.9), None)
    assert result.model is not model and result.model.ersm_recipe is model.ersm_recipe
    ema, raw = result.model.state_dict(), model.state_dict()
    weights = [k for k in ema if k.endswith(".weight")]
    assert any(not torch.equal(ema[k], raw[k]) for k in weights)  # the average lags the trained weights
    assert any(not torch.equal(ema[k], start[k]) for k in weights)  # but it did follow them


def test_mixup_and_cutmix_mix_the_targets_and_use_soft_target_loss(injected, monkeypatch):
    spies = _spy_criterion(monkeypatch)
    model = ersm_surgery.load(injected).train()
    train, val = _sets(model)
    fit(model, train, val, _config(mixup=0.8, cutmix=1.0, smoothing=0.1), None)
    spy = spies[0]
    assert isinstance(spy.inner, SoftTargetCrossEntropy)
    targets = torch.cat(spy.targets)
    assert targets.shape == (8, 4) and torch.allclose(targets.sum(1), torch.ones(8))
    assert (targets.max(1).values < 1).all()  # mixed and smoothed: no one-hot row left


def test_mixup_needs_an_even_batch_in_one_line(injected, tmp_path):
    result = run("finetune", injected, *DATA, "--mixup", "0.2", "-b", "3", "-o", tmp_path / "x")
    assert result.exit_code != 0 and "must be even with mixup" in result.output.strip().splitlines()[-1]


def test_smoothing_changes_the_loss(injected, monkeypatch):
    spies = _spy_criterion(monkeypatch)
    losses = []
    for smoothing in (0.0, 0.3):
        model = ersm_surgery.load(injected).train()
        train, val = _sets(model)
        result = fit(model, train, val, _config(smoothing=smoothing), None)
        losses.append(result.rows[0]["train_loss"])
    assert type(spies[0].inner) is torch.nn.CrossEntropyLoss
    assert isinstance(spies[1].inner, LabelSmoothingCrossEntropy) and spies[1].inner.smoothing == 0.3
    assert losses[0] != pytest.approx(losses[1], rel=1e-3)
    logits, target = torch.tensor([[4.0, 0.0, 0.0, 0.0]]), torch.tensor([0])
    assert float(spies[1].inner(logits, target)) > float(torch.nn.functional.cross_entropy(logits, target))


def test_drop_path_reaches_the_model_and_is_recorded(injected, tmp_path):
    ok(run("finetune", injected, *DATA, "--drop-path", "0.25", "-o", tmp_path / "ft"))
    model = ersm_surgery.load(tmp_path / "ft")
    assert model.ersm_recipe.model_kwargs["drop_path_rate"] == 0.25
    rates = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    assert rates and max(rates) == pytest.approx(0.25)  # timm spreads the rate linearly over the blocks
    x = torch.randn(2, 3, 32, 32)
    model.train()
    torch.manual_seed(0)
    a = model(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, model(x))  # stochastic in train mode ...
    model.eval()
    assert torch.equal(model(x), model(x))  # ... and not in eval mode


def test_channels_last_and_amp_dtype_are_used(injected):
    model = ersm_surgery.load(injected).train()
    seen = []
    first = model.get_submodule("conv1.0")
    hook = first.register_forward_hook(lambda m, inp, out: seen.append(
        (inp[0].is_contiguous(memory_format=torch.channels_last), out.dtype, m.training)))
    train, val = _sets(model)
    try:
        fit(model, train, val, _config(channels_last=True, amp=True, amp_dtype="float16"), None)
    finally:
        hook.remove()
    training = [s for s in seen if s[2]]
    assert training and all(s[0] for s in training) and all(s[1] == torch.float16 for s in training)
    assert first.weight.is_contiguous(memory_format=torch.channels_last)


def test_auto_augment_goes_into_timms_training_transform(injected, tmp_path):
    model = ersm_surgery.load(injected)
    train, _ = _sets(model, augment=True, aa="rand-m9-mstd0.5")
    names = [type(t).__name__ for t in train.transform.transforms]
    assert "RandAugment" in names and "RandomResizedCropAndInterpolation" in names
    assert train.description()["auto_augment"] == "rand-m9-mstd0.5"
    result = run("finetune", injected, *DATA, "--aa", "rand-m9-mstd0.5", "-o", tmp_path / "x")
    assert result.exit_code != 0 and "--augment" in result.output.strip().splitlines()[-1]


def test_new_flags_are_settable_by_set_and_recorded(injected, tmp_path):
    ok(run("finetune", injected, *DATA, "--set", "finetune.smoothing=0.2", "--set", "finetune.model_ema=true",
           "-o", tmp_path / "ft", "--json"))
    recorded = ersm_surgery.load(tmp_path / "ft").ersm_recipe.finetune
    assert recorded["smoothing"] == 0.2 and recorded["model_ema"] is True


def _has_tensorboard():
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _has_tensorboard(),
                    reason='tensorboard is not installed (pip install "ersm-surgery[tensorboard]")')
def test_tensorboard_writes_losses_lr_densities_and_val_metrics(injected, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ok(run("finetune", injected, *DATA, "--epochs", "2", "--log-tensorboard", tmp_path / "tb", "-o", tmp_path / "ft"))
    files = list((tmp_path / "tb").glob("events.out.tfevents.*"))
    assert files
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/energy", "train/lr", "train/density", "val/loss", "val/top1"} <= tags
    assert any(t.startswith("val/density/") for t in tags)
    assert [e.step for e in events.Scalars("val/top1")] == [1, 2]


def test_missing_tensorboard_is_one_line_with_the_install_command(injected, tmp_path):
    code = ("import sys; sys.modules['tensorboard'] = None; "  # makes 'import tensorboard' fail
            "from ersm_surgery.cli.main import main; sys.argv = ['ersm-surgery'] + sys.argv[1:]; main()")
    args = ["finetune", str(injected), *DATA, "--log-tensorboard", str(tmp_path / "tb"), "-o", str(tmp_path / "ft")]
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "200"}, timeout=300)
    lines = [line for line in (proc.stdout + proc.stderr).strip().splitlines() if line.strip()]
    assert proc.returncode != 0
    assert len(lines) == 1 and "Traceback" not in proc.stderr, lines
    assert 'pip install "ersm-surgery[tensorboard]"' in lines[0]
    assert not (tmp_path / "tb").exists()


def test_help_lists_the_timm_flags():
    text = run("finetune", "--help").output
    for flag in ("--amp-dtype", "--smoothing", "--mixup", "--cutmix", "--aa", "--model-ema", "--model-ema-decay",
                 "--drop-path", "--channels-last", "--log-tensorboard", "--mean", "--std", "--interpolation",
                 "--crop-pct"):
        assert flag in text, flag
    assert json.dumps(FinetuneConfig().model_ema_decay) in text
