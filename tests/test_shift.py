"""Claim (f)'s two tests: the background swap's composites, and the cued vs decorrelated evaluation."""
from __future__ import annotations

import math

import pytest
import torch

import ersm_surgery
from ersm_surgery.data import create_dataset
from ersm_surgery.eval.images import load_images
from ersm_surgery.eval.runner import EvalSettings, evaluate
from ersm_surgery.eval.shift import load_cued_images, swap_backgrounds

NAN = [math.nan] * 4


def test_the_object_is_pasted_onto_another_class_whose_own_object_is_removed() -> None:
    n, h, w = 4, 8, 8
    images = torch.stack([torch.full((3, h, w), float(i + 1)) for i in range(n)])
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.25, 0.25, 0.75, 0.75], NAN])
    labels = torch.tensor([0, 1, 1, 0])
    swapped, objects, backs = swap_backgrounds(images, boxes, labels, seed=1)
    assert objects.tolist() == [0, 1, 2]  # image 3 has no box
    for k, (i, j) in enumerate(zip(objects.tolist(), backs.tolist(), strict=True)):
        assert labels[i] != labels[j] and not math.isnan(boxes[j, 0])
        x0, y0, x1, y1 = (int(v * 8) for v in boxes[i])
        inside = torch.zeros(h, w, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert (swapped[k][:, inside] == i + 1).all()  # the object, where it was
        bx0, by0, bx1, by1 = (int(v * 8) for v in boxes[j])
        theirs = torch.zeros(h, w, dtype=torch.bool)
        theirs[by0:by1, bx0:bx1] = True
        assert (swapped[k][:, theirs & ~inside] == 0).all()  # the background's object filled with the mean
        assert (swapped[k][:, ~theirs & ~inside] == j + 1).all()  # the rest of the background
    same_class = swap_backgrounds(images, boxes, torch.zeros(n, dtype=torch.long))
    assert same_class[0].shape[0] == 0


def test_evaluate_reports_the_cue_drop_of_both_models_with_an_interval() -> None:
    torch.manual_seed(0)
    from ersm_surgery.io.source import strip_masks

    model = ersm_surgery.inject("test_resnet", input_size=(3, 32, 32), num_classes=4, stages=[2]).eval()
    baseline = strip_masks(model).eval()
    options = {"num_classes": 4, "size": 16, "spurious_cue": 0.9}
    data = create_dataset("builtin:clutter", "validation", img_size=32, seed=0, **options)
    images = load_images(data, 8, seed=0)
    cued = load_cued_images("builtin:clutter", "validation", data.preprocessing, 0, 8, options)
    assert cued is not None and torch.equal(cued.labels, images.labels)
    assert not torch.equal(cued.images, images.images)  # the tint differs
    r = evaluate(model, images, baseline, EvalSettings(metrics=("accuracy",), batch_size=4), cued=cued).results
    for role in ("model", "baseline"):
        c = r["spurious_cue"][role]
        assert c["decorrelated"] == pytest.approx(r["accuracy"][role]["top1"])
        assert c["drop"] == pytest.approx(c["cued"] - c["decorrelated"])
    drops = r["spurious_cue"]["baseline"]["drop"] - r["spurious_cue"]["model"]["drop"]
    assert r["intervals"]["shift"]["estimate"] == pytest.approx(drops)
    assert load_cued_images("builtin:clutter", "validation", data.preprocessing, 0, 8, {"num_classes": 4}) is None
    with pytest.raises(ValueError, match="cued images"):
        evaluate(model, images, None, EvalSettings(metrics=("accuracy",)), cued=load_images(data, 4, seed=1))
