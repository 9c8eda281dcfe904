"""finetune.mask_freeze: the masks learn for a fraction of the updates, then the backbone adapts to them."""
import pytest
import torch

import ersm_surgery
from ersm_surgery.data import create_dataset
from ersm_surgery.layers import MaskConfig
from ersm_surgery.train import Callbacks, FinetuneConfig, fit


def _mask_params(model) -> dict[str, torch.Tensor]:
    return {f"{name}.{p}": t.detach().clone() for name, layer in ersm_surgery.masks(model).items()
            for p, t in layer.named_parameters()}


def _backbone_params(model) -> dict[str, torch.Tensor]:
    mask_ids = {id(t) for layer in ersm_surgery.masks(model) for t in layer.parameters()}
    return {n: t.detach().clone() for n, t in model.named_parameters() if id(t) not in mask_ids}


def _changed(before: dict, after: dict) -> bool:
    return any(not torch.equal(before[k], after[k]) for k in before)


class _Snapshots(Callbacks):
    def __init__(self, model) -> None:
        self.model = model
        self.masks: list[dict[str, torch.Tensor]] = []
        self.backbone: list[dict[str, torch.Tensor]] = []

    def on_epoch_end(self, row) -> None:
        self.masks.append(_mask_params(self.model))
        self.backbone.append(_backbone_params(self.model))


def _model_and_data():
    torch.manual_seed(0)
    model = ersm_surgery.inject("test_resnet", stages=[2, 3], input_size=(3, 32, 32), num_classes=4,
                                config=MaskConfig(alpha=0.3, init_logit=1.0, norm_prior=1.0))
    data = {"num_classes": 4, "size": 16}
    train = create_dataset("builtin:clutter", "train", img_size=32, seed=0, **data)
    val = create_dataset("builtin:clutter", "validation", img_size=32, seed=0, **data)
    return model, train, val


def _fit(freeze: float | None):
    model, train, val = _model_and_data()
    config = FinetuneConfig(epochs=2, batch_size=4, lr=1e-3, workers=0, mask_freeze=freeze)
    start = _mask_params(model)
    snaps = _Snapshots(model)
    fit(model, train, val, config, None, callbacks=snaps)
    return start, snaps


def test_frozen_masks_keep_what_they_learned_while_the_backbone_adapts():
    # 2 epochs of 4 updates, frozen from update 4: the masks learn in epoch 1 only, the backbone in both
    start, snaps = _fit(0.5)
    assert _changed(start, snaps.masks[0])  # they did learn before the freeze
    assert not _changed(snaps.masks[0], snaps.masks[1])  # exactly the same weights after it
    assert _changed(snaps.backbone[0], snaps.backbone[1])  # while the backbone kept training


def test_without_a_freeze_the_masks_learn_to_the_end():
    _, snaps = _fit(None)
    assert _changed(snaps.masks[0], snaps.masks[1])


def test_mask_freeze_is_off_by_default_and_validated():
    assert FinetuneConfig().mask_freeze is None
    assert FinetuneConfig.from_sources({"mask_freeze": 0.5}).mask_freeze == 0.5
    for bad in (1.5, -0.1, "half"):
        with pytest.raises(Exception, match="mask_freeze"):
            FinetuneConfig.from_sources({"mask_freeze": bad})


def test_run_lets_the_masks_learn_to_the_end_unless_told_otherwise():
    from ersm_surgery.pipeline.run import PipelineSettings, _config

    settings = PipelineSettings(model="test_resnet", stages=[2], data_options={"num_classes": 4, "size": 8})
    assert _config(settings, 2, 3e-4).mask_freeze is None  # the pull holds them instead (test_mask_pull.py)
    settings.finetune = {"mask_freeze": 0.25}
    assert _config(settings, 2, 3e-4).mask_freeze == 0.25
    assert _config(settings, 2, 3e-4, base=True).mask_freeze is None  # base training has no masks to freeze


class _PerUpdate(Callbacks):
    def __init__(self, model) -> None:
        self.model = model
        self.masks: list[dict[str, torch.Tensor]] = []

    def on_batch(self, epoch, batch, loss) -> None:
        self.masks.append(_mask_params(self.model))


def test_mask_updates_caps_the_masks_phase_in_updates():
    # 2 epochs of 4 updates with the masks' phase capped at 3: they change in updates 1-3 and never after,
    # although mask_freeze alone (0.5) would let them learn 4
    model, train, val = _model_and_data()
    config = FinetuneConfig(epochs=2, batch_size=4, lr=1e-3, workers=0, mask_freeze=0.5, mask_updates=3)
    start = _mask_params(model)
    snaps = _PerUpdate(model)
    fit(model, train, val, config, None, callbacks=snaps)
    assert len(snaps.masks) == 8
    assert _changed(start, snaps.masks[0]) and _changed(snaps.masks[1], snaps.masks[2])
    assert all(not _changed(snaps.masks[2], later) for later in snaps.masks[3:])


def test_mask_phase_takes_the_shorter_of_the_fraction_and_the_count():
    from ersm_surgery.train.schedule import mask_phase

    assert mask_phase(126, 0.5, 0.5, None) == (0.5, 63)  # fractions only: run's 2 epochs of 63 updates
    assert mask_phase(126, 0.5, 0.5, 63) == (0.5, 63)  # the cap is run's own phase there: nothing changes
    warmup, frozen = mask_phase(500, 0.5, 0.5, 63)  # four times the updates: the masks still learn 63
    assert frozen == 63 and round(warmup * 500) == 63
    assert mask_phase(40, 0.5, 0.5, 63) == (0.5, 20)  # a shorter run: half of it, as before
    assert mask_phase(500, 0.5, None, 63)[1] == 63  # a cap alone also freezes
    assert mask_phase(500, 0.5, None, None) == (0.5, None)


def test_mask_updates_is_off_by_default_and_validated():
    assert FinetuneConfig().mask_updates is None
    assert FinetuneConfig.from_sources({"mask_updates": 63}).mask_updates == 63
    for bad in (0, -3, 2.5, "many", True):
        with pytest.raises(Exception, match="mask_updates"):
            FinetuneConfig.from_sources({"mask_updates": bad})
