"""The library's settings resolution behind finetune, inject and run: the documented precedence, from Python."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import ersm_surgery
from ersm_surgery.errors import DataError, OutputExistsError, RecipeError
from ersm_surgery.injection import inject_to_folder, resolve_inject_settings
from ersm_surgery.pipeline.settings import RUN_BASE_IMAGES, RUN_EPOCHS, build_settings, protocol_defaults
from ersm_surgery.train import FinetuneConfig, resolve_finetune_settings
from tests.conftest import ok, run_quiet

SIZE = (3, 32, 32)


def _yaml(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def injected(tmp_path_factory) -> Path:
    """A masked test_resnet whose recipe records finetune settings (lr, epochs, data options)."""
    root = tmp_path_factory.mktemp("settings")
    recipe = ersm_surgery.inject("test_resnet", stages=[2], input_size=SIZE, num_classes=4).ersm_recipe.to_dict()
    recipe["finetune"] = {"lr": 1e-3, "epochs": 7, "data_options": {"size": 12}}
    summary = inject_to_folder("test_resnet", root / "inj", recipe_file=_yaml(root / "r.yaml", recipe),
                               input_size=SIZE)
    assert summary["output"] == str(root / "inj")
    return root / "inj"


def test_finetune_precedence_recorded_file_set_flags(injected: Path, tmp_path: Path) -> None:
    config, mask = resolve_finetune_settings(str(injected))
    assert (config.lr, config.epochs, config.batch_size) == (1e-3, 7, FinetuneConfig().batch_size)  # recorded

    file = _yaml(tmp_path / "ft.yaml", {"finetune": {"lr": 2e-3}, "mask": {"alpha": 0.2, "beta": 0.1}})
    config, mask = resolve_finetune_settings(str(injected), recipe_file=file)
    assert (config.lr, config.epochs) == (2e-3, 7) and mask == {"alpha": 0.2, "beta": 0.1}  # the file over the record

    config, mask = resolve_finetune_settings(str(injected), recipe_file=file,
                                             overrides=["finetune.lr=3e-3", "mask.alpha=0.3"])
    assert config.lr == 3e-3 and mask == {"alpha": 0.3, "beta": 0.1}  # --set over the file

    config, mask = resolve_finetune_settings(str(injected), recipe_file=file, overrides=["finetune.lr=3e-3"],
                                             explicit={"lr": 4e-3, "epochs": 2, "data_options": {"num_classes": 4}},
                                             mask={"alpha": 0.4})
    assert (config.lr, config.epochs) == (4e-3, 2) and mask["alpha"] == 0.4  # flags over everything
    assert config.data_options == {"size": 12, "num_classes": 4}  # typed data options add to the recorded ones


def test_finetune_settings_refuse_what_finetune_cannot_change(injected: Path, tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="model and input_size cannot change"):
        resolve_finetune_settings(str(injected), overrides=["model=resnet50"])
    with pytest.raises(RecipeError, match="does not exist"):
        resolve_finetune_settings(str(injected), recipe_file=tmp_path / "missing.yaml")
    with pytest.raises(RecipeError, match="not a mapping"):
        resolve_finetune_settings(str(injected), recipe_file=_yaml(tmp_path / "bad.yaml", {"finetune": [1, 2]}))


def test_inject_settings_take_placements_from_the_recipe_file_unless_given(injected: Path) -> None:
    recipe = injected / "recipe.yaml"
    settings = resolve_inject_settings("test_resnet", recipe_file=recipe, overrides=["mask.alpha=0.25"])
    assert settings.stages == [2] and settings.nodes == [] and settings.mask.alpha == 0.25
    assert settings.num_classes == 4 and settings.finetune["epochs"] == 7
    assert resolve_inject_settings("test_resnet", recipe_file=recipe, stages=[1, 3]).stages == [1, 3]
    assert resolve_inject_settings("test_resnet", recipe_file=recipe, num_classes=9,
                                   overrides=["num_classes=6"]).num_classes == 6  # --set wins over --num-classes
    with pytest.raises(RecipeError, match="no placement given"):
        resolve_inject_settings("test_resnet")


def test_inject_to_folder_writes_what_the_command_writes(injected: Path, tmp_path: Path) -> None:
    with pytest.raises(OutputExistsError):
        inject_to_folder("test_resnet", injected, stages=[2], input_size=SIZE)
    ok(run_quiet("inject", "test_resnet", "--stages", "2", "--num-classes", "4", "--input-size", "3,32,32",
                 "-o", tmp_path / "cli"))
    summary = inject_to_folder("test_resnet", tmp_path / "lib", stages=[2], num_classes=4, input_size=SIZE)
    assert [row["path"] for row in summary["masks"]] == ["layer2.ersm_mask"] and summary["max_logit_diff"] < 1e-3
    assert (tmp_path / "lib" / "recipe.yaml").read_text() == (tmp_path / "cli" / "recipe.yaml").read_text()


def test_pipeline_settings_from_python(tmp_path: Path) -> None:
    defaults = protocol_defaults(None, RUN_EPOCHS, RUN_BASE_IMAGES, "out")
    settings = build_settings("test_resnet", "2,3", defaults, overrides=["mask.alpha=0.3"], num_classes=3)
    assert settings.stages == [2, 3] and settings.epochs == RUN_EPOCHS["epochs"] and settings.batch_size == 32
    assert settings.mask == {"alpha": 0.3} and settings.data_options == {"num_classes": 3}
    assert settings.base_data_options == {"train_size": RUN_BASE_IMAGES} and settings.output == "out"
    assert build_settings("test_resnet", [2], defaults, epochs=5, data_size=40).base_data_options == {}
    with pytest.raises(DataError, match="does not exist"):
        build_settings("test_resnet", "2", defaults, data_dir=str(tmp_path / "nope"))


def test_evaluate_sources_and_write_evaluation_from_python(injected: Path, tmp_path: Path) -> None:
    from ersm_surgery.eval import EvalSettings, write_evaluation
    from ersm_surgery.eval.sources import default_eval_output, evaluate_sources

    settings = EvalSettings(metrics=("accuracy", "sparsity"), batch_size=4, seed=1, figure_images=2)
    result = evaluate_sources(str(injected), "builtin:clutter", baseline="test_resnet", num_images=4,
                              num_classes=4, settings=settings, img_size=32)
    assert any("the baseline (test_resnet) has random weights" in note for note in result.results["notes"])
    files = write_evaluation(result, tmp_path / "ev")
    assert files["results"] == tmp_path / "ev" / "results.json" and files["report"].is_file()
    saved = json.loads(files["results"].read_text())
    assert saved["report"] == str(files["report"]) and set(saved["figures"]) <= set(files)
    assert default_eval_output(str(injected)) == injected.resolve().parent / "inj-eval"
    with pytest.raises(DataError, match="built-in data only"):
        evaluate_sources(str(injected), str(tmp_path), num_classes=4, settings=settings)
