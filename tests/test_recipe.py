"""The Recipe: validation, YAML/JSON round trips, --set overrides."""
import pytest

from ersm_surgery.errors import RecipeError
from ersm_surgery.layers import MaskConfig
from ersm_surgery.recipe import Recipe, apply_overrides, load_recipe
from ersm_surgery.surgery import Placement


def make():
    return Recipe(model="resnet50", model_kwargs={"drop_path_rate": 0.1}, num_classes=10, input_size=(3, 64, 64),
                  placements=[Placement(module="layer2", channels=512, reduction=8, stage=2, hidden=32),
                              Placement(module="layer3.2", channels=1024, reduction=16, node="layer3.2.add")],
                  mask=MaskConfig(alpha=0.3))


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip(tmp_path, suffix):
    r = make()
    r.save(tmp_path / f"r{suffix}")
    back = load_recipe(tmp_path / f"r{suffix}")
    assert back == r
    assert back.placements[1].path == "layer3.2.ersm_mask_add"


def test_invalid_values_are_reported_together():
    data = make().to_dict()
    data["num_classes"] = -1  # 0 is a headless backbone
    data["mask"]["tau"] = -1
    with pytest.raises(RecipeError) as err:
        Recipe.from_dict(data)
    assert "num_classes" in str(err.value) and "tau" in str(err.value)


def test_unknown_keys_and_bad_files():
    with pytest.raises(RecipeError, match="unknown recipe key"):
        Recipe.from_dict({"model": "resnet50", "stagez": [2]})
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe("/nonexistent/recipe.yaml")


def test_malformed_yaml(tmp_path):
    (tmp_path / "r.yaml").write_text("model: [unclosed\n")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(tmp_path / "r.yaml")


def test_overrides():
    data = apply_overrides({"model": "resnet50"}, ["mask.alpha=0.2", "mask.train_mode=soft", "num_classes=3",
                                                   "model_kwargs.drop_path_rate=0.1"])
    r = Recipe.from_dict(data)
    assert (r.mask.alpha, r.mask.train_mode, r.num_classes, r.model_kwargs) == (0.2, "soft", 3, {"drop_path_rate": 0.1})


def test_unknown_and_malformed_overrides_are_all_named():
    with pytest.raises(RecipeError) as err:
        apply_overrides({"model": "resnet50"}, ["mask.alpah=1", "oops", "mask.beta=0.1"])
    assert "mask.alpah" in str(err.value) and "'oops'" in str(err.value) and "settable keys" in str(err.value)


def test_exponent_floats_are_numbers_in_overrides_and_recipe_files():
    # PyYAML reads YAML 1.1, where "1e-4" (no dot) is a string; the recipe reader follows YAML 1.2
    data = apply_overrides({"model": "resnet50"}, ["finetune.lr=1e-4", "mask.alpha=2E-1", "finetune.note=1e"])
    assert data["finetune"]["lr"] == 1e-4 and data["mask"]["alpha"] == 0.2 and data["finetune"]["note"] == "1e"
    assert Recipe.from_yaml("model: resnet50\nmask:\n  beta: 5e-1\n").mask.beta == 0.5
