"""Mask and fine-tuning settings are type- and range-checked: one line naming the key, never a hang or a NaN model."""
from __future__ import annotations

import math

import pytest

from ersm_surgery.errors import RecipeError
from ersm_surgery.layers.config import MAX_STEPS, MaskConfig
from ersm_surgery.recipe import Recipe
from ersm_surgery.train.config import FinetuneConfig


@pytest.mark.parametrize(("key", "value"), [
    ("alpha", math.nan), ("alpha", math.inf), ("beta", -math.inf), ("tau", math.nan), ("init_logit", math.inf),
    ("alpha", "x"), ("beta", [1]), ("tau", None), ("steps", 1e20), ("steps", MAX_STEPS + 1), ("steps", "3"),
    ("steps", 2.5), ("steps", True), ("neighbourhood", "4"), ("hidden", 0.5), ("global_context", "yes"),
    ("head", 3),
])  # fmt: skip
def test_bad_mask_setting_is_one_line_naming_the_key(key: str, value: object) -> None:
    with pytest.raises(RecipeError) as info:
        Recipe.from_dict({"model": "test_resnet", "mask": {key: value}})
    line = str(info.value)
    assert "\n" not in line and f"mask.{key} " in line, line
    assert "not supported between" not in line  # Python's own comparison error would leak the types


def test_good_mask_settings_pass_and_whole_floats_become_ints() -> None:
    cfg = MaskConfig(alpha=0, beta=0.0, tau=0.5, steps=3.0, hidden=8.0)
    assert cfg.steps == 3 and isinstance(cfg.steps, int) and cfg.hidden == 8
    assert MaskConfig(steps=MAX_STEPS).steps == MAX_STEPS


@pytest.mark.parametrize(("key", "value"), [
    ("lr", math.inf), ("lr", math.nan), ("gamma", math.inf), ("weight_decay", math.nan), ("mask_lr_scale", math.inf),
    ("tau_end", math.nan), ("clip_grad", math.inf), ("mean", [0.5, math.nan, 0.5]), ("epochs", "x"),
    ("lr", "fast"),
])  # fmt: skip
def test_bad_finetune_setting_is_one_line_naming_the_key(key: str, value: object) -> None:
    with pytest.raises(RecipeError) as info:
        FinetuneConfig.from_sources({key: value})
    assert f"finetune.{key} " in str(info.value) and "\n" not in str(info.value)
