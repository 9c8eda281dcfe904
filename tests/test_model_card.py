"""The export's README.md is a Hugging Face model card: front matter the Hub reads, free text escaped."""
from __future__ import annotations

import re

import pytest
import yaml
from huggingface_hub import ModelCard

import ersm_surgery
from ersm_surgery.io.artifact import input_config
from ersm_surgery.io.model_card import model_card

HOSTILE = ["<script>alert(1)</script>", "a|b", "---", "x: y", "```", "*bold* _it_ [l](u)"]
RESULTS = {"summary": {"top1.model": 0.8125, "top1.baseline": 0.79, "density.layer2.mean": 0.4},
           "data": {"kind": "builtin:clutter", "split": "validation"}}


@pytest.fixture(scope="module")
def model():
    m = ersm_surgery.inject("test_resnet", stages=[2], input_size=(3, 64, 64), num_classes=len(HOSTILE))
    m.ersm_recipe.base_model = "hf-hub:timm/test_resnet.r160_in1k"
    m.ersm_recipe.finetune = {"label_names": HOSTILE}
    return m


def _card(model, **kw) -> str:
    args = dict(files={"model.safetensors": "weights"}, labels=HOSTILE, input_cfg=input_config(model),
                validation=None, results=RESULTS, datasets=["someone/shapes"])
    args.update(kw)
    return model_card(model, model.ersm_recipe, **args)


def _front(card: str) -> dict:
    match = re.match(r"---\n(.*?)\n---\n", card, re.S)
    assert match, card[:200]
    return yaml.safe_load(match.group(1))


def test_front_matter_is_what_the_hub_reads(model) -> None:
    card = _card(model)
    data = ModelCard(card).data.to_dict()
    assert data["library_name"] == "ersm-surgery" and data["pipeline_tag"] == "image-classification"
    assert {"timm", "ersm-surgery", "image-classification"} <= set(data["tags"])
    assert data["base_model"] == "timm/test_resnet.r160_in1k" and data["datasets"] == ["someone/shapes"]
    assert data["metrics"] == ["accuracy"]
    result = data["model-index"][0]["results"][0]
    assert result["metrics"][0]["value"] == 0.8125 and result["dataset"]["type"] == "someone/shapes"
    assert data.get("license") == "apache-2.0"  # the base weights' license, from timm's pretrained_cfg


def test_without_huggingface_hub_the_same_front_matter(model, monkeypatch) -> None:
    with_hub = _front(_card(model))
    monkeypatch.setitem(__import__("sys").modules, "huggingface_hub", None)  # as if not installed
    assert _front(_card(model)) == with_hub


def test_no_evaluation_no_metrics_and_no_base_model_when_unknown(model) -> None:
    model.ersm_recipe.base_model = None
    try:
        data = _front(_card(model, results=None, datasets=None))
    finally:
        model.ersm_recipe.base_model = "hf-hub:timm/test_resnet.r160_in1k"
    assert "metrics" not in data and "model-index" not in data and "base_model" not in data
    assert "datasets" not in data and "license" not in data


def test_class_names_and_free_text_are_escaped(model) -> None:
    card = _card(model)
    body = card.split("\n---\n", 1)[1]
    # outside fenced code blocks (which Markdown shows verbatim) no raw HTML reaches the page
    prose = re.sub(r"^(`{3,})\w*\n.*?^\1$", "", body, flags=re.S | re.M)
    assert "<script>" not in prose and "&lt;script&gt;" in prose
    assert "a\\|b" in body and "\\*bold\\* \\_it\\_ \\[l\\](u)" in body
    assert card.count("\n---\n") == 1  # a class name "---" cannot end the front matter early
    # the fenced blocks that hold the recipe and the settings (with the names) are not broken by "```"
    fences = re.findall(r"^(`{3,})(\w*)$", body, re.M)
    assert any(len(f) > 3 for f, _ in fences)
    table = [line for line in body.splitlines() if line.startswith("| ") and "ersm" in line]
    assert all(line.count("|") - line.count("\\|") == 7 for line in table)
