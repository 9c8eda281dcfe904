"""Known-answer tests for the pure evaluation metrics (no model, no timm)."""
from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest
import torch

from ersm_surgery.eval import (
    as_token_maps,
    auc_trapezoid,
    box_to_token_mask,
    coherence,
    combine_deletion_curves,
    connected_components,
    cutout,
    deletion_curve,
    density_stats,
    energy_scores,
    hide_and_seek,
    histogram,
    magnitude_scores,
    mask_box_iou,
    mass_in_box,
    occlusion_curve,
    pointing_game,
    random_mask_like,
    random_patch_drop,
    random_scores,
    tokens_removed,
)

FRACTIONS = [i / 10 for i in range(10)]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def hidden_fraction(original: torch.Tensor, occluded: torch.Tensor) -> torch.Tensor:
    """Per-image share of pixels changed (inputs are all-ones images, fill 0)."""
    return (occluded != original).any(dim=1).flatten(1).float().mean(dim=1)


# ---------------------------------------------------------------- curves


@pytest.mark.parametrize("c", [0.0, 0.37, 1.0])
def test_constant_curve_auc_is_the_constant(c: float) -> None:
    assert auc_trapezoid(FRACTIONS, [c] * len(FRACTIONS)) == pytest.approx(c)
    assert auc_trapezoid([0.0, 0.5, 1.0], torch.tensor([c, c, c])) == pytest.approx(c)


def test_auc_of_a_line_and_bad_inputs() -> None:
    assert auc_trapezoid([0.0, 1.0], [0.0, 1.0]) == pytest.approx(0.5)
    assert auc_trapezoid([0.0, 0.25, 1.0], [1.0, 1.0, 0.0]) == pytest.approx((0.25 + 0.375) / 1.0)
    assert auc_trapezoid([0.3], [0.8]) == pytest.approx(0.8)
    with pytest.raises(ValueError, match="equal length"):
        auc_trapezoid([0.0, 1.0], [1.0])
    with pytest.raises(ValueError, match="increasing"):
        auc_trapezoid([0.0, 0.0, 1.0], [1.0, 1.0, 1.0])


# ---------------------------------------------------------------- occlusion


OCCLUDERS = {
    "patch": partial(random_patch_drop, grid=4),
    "cutout": cutout,
    "hide_and_seek": partial(hide_and_seek, grid=4),
}


@pytest.mark.parametrize("name", OCCLUDERS)
def test_il_zero_returns_the_input_unchanged(name: str) -> None:
    images = torch.randn(3, 3, 16, 16)
    out = OCCLUDERS[name](images, 0.0, generator=gen())
    assert torch.equal(out, images)
    assert out is not images


@pytest.mark.parametrize("il", [0.1, 0.25, 0.5, 0.75])
def test_patch_drop_removes_the_requested_area(il: float) -> None:
    images = torch.ones(8, 3, 32, 32)
    frac = hidden_fraction(images, random_patch_drop(images, il, grid=4, generator=gen()))
    # grid divides the image: exactly round(il * 16) patches, i.e. within half a patch (1/32) of il
    assert torch.allclose(frac, torch.full_like(frac, round(il * 16) / 16))
    assert (frac - il).abs().max() <= 1 / 16


@pytest.mark.parametrize("il", [0.1, 0.3, 0.5])
def test_patch_drop_on_a_grid_that_does_not_divide_the_image(il: float) -> None:
    images = torch.ones(8, 1, 30, 27)
    frac = hidden_fraction(images, random_patch_drop(images, il, grid=(4, 5), generator=gen()))
    biggest_patch = (8 * 6) / (30 * 27)
    assert (frac - il).abs().max() <= biggest_patch


@pytest.mark.parametrize("il", [0.05, 0.2, 0.5, 0.9])
def test_cutout_removes_the_requested_area_in_one_square(il: float) -> None:
    images = torch.ones(8, 3, 32, 32)
    out = cutout(images, il, generator=gen())
    frac = hidden_fraction(images, out)
    side = round((il * 32 * 32) ** 0.5)
    assert torch.allclose(frac, torch.full_like(frac, side * side / (32 * 32)))
    assert (frac - il).abs().max() <= (2 * side + 1) / (32 * 32)  # rounding the side by at most half a pixel
    hidden = (out != images).any(dim=1)
    rows, cols = hidden.any(dim=2), hidden.any(dim=1)
    assert torch.all(rows.sum(dim=1) == side) and torch.all(cols.sum(dim=1) == side)  # one square, inside


def test_cutout_wider_than_the_short_side_becomes_a_strip() -> None:
    images = torch.ones(4, 1, 8, 32)
    frac = hidden_fraction(images, cutout(images, 0.75, generator=gen()))
    assert torch.allclose(frac, torch.full_like(frac, 0.75))


@pytest.mark.parametrize("il", [0.2, 0.5])
def test_hide_and_seek_removes_the_requested_area_on_average(il: float) -> None:
    images = torch.ones(2000, 1, 16, 16)
    frac = hidden_fraction(images, hide_and_seek(images, il, grid=4, generator=gen()))
    assert abs(float(frac.mean()) - il) < 1 / 16  # within one patch, in expectation
    assert set((frac * 16).round().unique().tolist()) <= set(range(17))  # whole cells only


@pytest.mark.parametrize("name", OCCLUDERS)
def test_identical_seeds_give_identical_occlusions(name: str) -> None:
    occluder = OCCLUDERS[name]
    images = torch.randn(6, 3, 16, 16)
    a = occluder(images, 0.4, generator=gen(7))
    b = occluder(images, 0.4, generator=gen(7))
    c = occluder(images, 0.4, generator=gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # draws are image by image: the same generator over two chunks gives the same occlusions
    g = gen(7)
    chunked = torch.cat([occluder(images[:2], 0.4, generator=g), occluder(images[2:], 0.4, generator=g)])
    assert torch.equal(chunked, a)


def test_occluder_paints_the_per_channel_fill() -> None:
    images = torch.ones(2, 3, 8, 8)
    fill = torch.tensor([-1.0, 2.0, 5.0])
    out = random_patch_drop(images, 0.5, grid=2, generator=gen(), fill=fill)
    hidden = (out != images).any(dim=1)
    for ch in range(3):
        assert torch.all(out[:, ch][hidden] == fill[ch])
    with pytest.raises(ValueError, match="il"):
        cutout(images, 1.0, generator=gen())


def _region_classifier(images: torch.Tensor) -> torch.Tensor:
    """Class 1 when the mean of the top-left quadrant is positive, else class 0 (logits)."""
    score = images[:, :, :8, :8].mean(dim=(1, 2, 3))
    return torch.stack([-score, score], dim=1)


def test_occlusion_curve_at_zero_equals_clean_accuracy() -> None:
    torch.manual_seed(0)
    images = torch.randn(64, 3, 16, 16)
    labels = (images[:, :, :8, :8].mean(dim=(1, 2, 3)) > 0).long()
    labels[:10] = 1 - labels[:10]  # clean accuracy 54 / 64
    clean = float((_region_classifier(images).argmax(1) == labels).float().mean())
    for name, occluder in OCCLUDERS.items():
        res = occlusion_curve(_region_classifier, images, labels, occluder, [0.0, 0.25, 0.5], seed=3)
        assert res["accuracy"][0] == pytest.approx(clean), name
        assert res["clean_accuracy"] == pytest.approx(clean)
        assert res["mean_accuracy"] == pytest.approx(sum(res["accuracy"][1:]) / 2)
        assert res["ratio"] == pytest.approx(res["mean_accuracy"] / clean)
        # without 0 in the levels, the clean accuracy is still measured; batching changes nothing
        again = occlusion_curve(_region_classifier, images, labels, occluder, [0.25, 0.5], seed=3, batch_size=10)
        assert again["clean_accuracy"] == pytest.approx(clean)
        assert again["accuracy"] == res["accuracy"][1:]


# ---------------------------------------------------------------- deletion


def _known_token_setup() -> tuple[torch.Tensor, torch.Tensor, Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """A head that reads only a known set of tokens, each with a known, distinct weight.

    Features are all ones (C = 1); the logit of class 1 is sum_i g_i x_i - threshold, class 0 is 0.
    Zeroing token i lowers the class-1 logit by exactly g_i, so g is the ground-truth importance.
    """
    b, h, w = 4, 6, 6
    g = torch.zeros(h, w)
    g[1:4, 2:5] = torch.arange(1, 10, dtype=torch.float32).view(3, 3)  # 9 read tokens, weights 1..9
    features = torch.ones(b, 1, h, w)
    threshold = 30.0  # 45 in total: class 1 until more than 15 of the weight is gone

    def head(x: torch.Tensor) -> torch.Tensor:
        s = (x[:, 0] * g).flatten(1).sum(dim=1) - threshold
        return torch.stack([torch.zeros_like(s), s], dim=1)

    truth = g.expand(b, h, w) + 1e-3 * torch.rand(b, h, w, generator=gen(1))  # break ties among unread tokens
    labels = torch.ones(b, dtype=torch.long)
    return features, truth, head, labels


def test_ground_truth_ranking_is_best_for_lerf_and_worst_for_morf() -> None:
    features, truth, head, labels = _known_token_setup()
    rankings = {"truth": truth, "random": random_scores(truth.shape, gen(5)), "reversed": -truth}
    auc = {}
    for order in ("lerf", "morf"):
        for name, scores in rankings.items():
            res = deletion_curve(features, scores, head, labels, FRACTIONS, order=order)
            auc[order, name] = (res["probability_auc"], res["accuracy_auc"])
    for k in (0, 1):
        assert auc["lerf", "truth"][k] >= auc["lerf", "random"][k] >= auc["lerf", "reversed"][k]
        assert auc["morf", "truth"][k] <= auc["morf", "random"][k] <= auc["morf", "reversed"][k]
    assert auc["lerf", "truth"][0] > auc["lerf", "random"][0] > auc["lerf", "reversed"][0]
    assert auc["morf", "truth"][0] < auc["morf", "random"][0] < auc["morf", "reversed"][0]
    # LeRF with the truth removes the 27 unread tokens first: accuracy stays 1 up to f = 0.7 (25 tokens)
    res = deletion_curve(features, truth, head, labels, FRACTIONS, order="lerf")
    assert res["accuracy"][:8] == [1.0] * 8


def test_deletion_counts_fill_and_head_calls() -> None:
    features, truth, head, labels = _known_token_setup()
    calls = []

    def counting_head(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape[0])
        return head(x)

    res = deletion_curve(features, truth, counting_head, labels, FRACTIONS, order="morf")
    assert len(calls) == len(FRACTIONS)  # one call per fraction, the clean one shared with f = 0
    assert res["removed"] == [tokens_removed(f, 36) for f in FRACTIONS] == [0, 3, 7, 10, 14, 18, 21, 25, 28, 32]
    assert res["per_image_correct"].shape == res["per_image_probability"].shape == (10, 4)
    calls.clear()
    deletion_curve(features, truth, counting_head, None, [0.5], order="morf")
    assert len(calls) == 2  # no f = 0: one extra clean call
    # mean fill of all-ones features is 1: nothing changes however many tokens go
    res = deletion_curve(features, truth, head, labels, FRACTIONS, order="morf", fill="mean")
    assert res["accuracy"] == [1.0] * 10
    assert res["probability_auc"] == pytest.approx(res["probability"][0])


def test_deletion_batches_pool_to_the_whole() -> None:
    features, truth, head, labels = _known_token_setup()
    whole = deletion_curve(features, truth, head, labels, FRACTIONS, order="morf")
    parts = [deletion_curve(features[i : i + 2], truth[i : i + 2], head, labels[i : i + 2], FRACTIONS, order="morf")
             for i in (0, 2)]
    pooled = combine_deletion_curves(parts)
    assert pooled["accuracy"] == whole["accuracy"]
    assert pooled["probability_auc"] == pytest.approx(whole["probability_auc"])


def test_score_helpers() -> None:
    energy = torch.randn(2, 1, 3, 3)
    assert torch.equal(energy_scores(energy), -energy[:, 0])
    features = torch.zeros(1, 2, 2, 2)
    features[0, :, 0, 1] = torch.tensor([3.0, 4.0])
    assert torch.equal(magnitude_scores(features), torch.tensor([[[0.0, 5.0], [0.0, 0.0]]]))
    assert torch.equal(random_scores((2, 3, 3), gen(1)), random_scores((2, 3, 3), gen(1)))
    with pytest.raises(ValueError, match="order"):
        deletion_curve(torch.ones(1, 1, 2, 2), torch.ones(1, 2, 2), lambda x: x.flatten(1), None, [0.0], order="x")


# ---------------------------------------------------------------- localization


def _looking_model(region: tuple[int, int], h: int = 7, w: int = 7) -> torch.Tensor:
    """Importance map of a "model" that only looks at one token region (row, col): a peak there."""
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    return -((ys - region[0]) ** 2 + (xs - region[1]) ** 2)[None]


def _box_around(row: int, col: int, h: int = 7, w: int = 7) -> torch.Tensor:
    return torch.tensor([[col / w, row / h, (col + 1) / w, (row + 1) / h]])


def test_pointing_game_hits_boxes_around_the_region_and_misses_elsewhere() -> None:
    maps = torch.cat([_looking_model((2, 5)), _looking_model((6, 0))])
    around = torch.cat([_box_around(2, 5), torch.tensor([[0.0, 0.8, 0.3, 1.0]])])
    elsewhere = torch.cat([_box_around(5, 1), torch.tensor([[0.5, 0.0, 1.0, 0.4]])])
    res = pointing_game(maps, around)
    assert res["mean"] == 1.0 and res["per_image"].tolist() == [1.0, 1.0]
    assert pointing_game(maps, elsewhere)["per_image"].tolist() == [0.0, 0.0]
    # tolerance: a box one token to the right of the peak is a hit with tolerance 1, a miss with 0
    beside = torch.cat([_box_around(2, 6), _box_around(6, 1)])
    assert pointing_game(maps, beside, tolerance_tokens=1)["per_image"].tolist() == [1.0, 1.0]
    assert pointing_game(maps, beside, tolerance_tokens=0)["per_image"].tolist() == [0.0, 0.0]


def test_box_to_token_mask_uses_token_centres() -> None:
    mask = box_to_token_mask(torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.3, 0.3, 0.32, 0.32]]), 4, 4)
    expected = torch.zeros(2, 4, 4, dtype=torch.bool)
    expected[0, :2, :2] = True
    expected[1, 1, 1] = True  # too small for any centre: the token holding its centre
    assert torch.equal(mask, expected)


def test_mass_in_box_and_iou_known_values() -> None:
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5]] * 3)  # the top-left 2 x 2 tokens of a 4 x 4 grid
    maps = torch.zeros(3, 4, 4)
    maps[0, :2, :2] = 1.0
    maps[0, 3, 3] = 4.0  # half the mass outside
    maps[1] = -1.0
    maps[1, 0, 0] = 2.0  # negatives count as 0: all mass inside
    maps[2] = -5.0  # no positive mass: chance level = 4 / 16
    assert mass_in_box(maps, boxes)["per_image"].tolist() == pytest.approx([0.5, 1.0, 0.25])
    masks = torch.zeros(3, 1, 4, 4)
    masks[0, 0, :2, :2] = 1.0  # exact
    masks[1, 0, :2, :4] = 1.0  # 4 / 8
    masks[2, 0, 2:, 2:] = 1.0  # disjoint
    res = mask_box_iou(masks, boxes)
    assert res["per_image"].tolist() == pytest.approx([1.0, 0.5, 0.0])
    assert res["mean"] == pytest.approx(0.5)


# ---------------------------------------------------------------- sparsity


def _checkerboard(h: int, w: int) -> torch.Tensor:
    return ((torch.arange(h)[:, None] + torch.arange(w)[None]) % 2).float()


def test_coherence_of_checkerboard_is_one_and_constant_zero() -> None:
    masks = torch.stack([_checkerboard(6, 5), torch.ones(6, 5), torch.zeros(6, 5), torch.full((6, 5), 0.3)])[:, None]
    assert coherence(masks)["per_image"].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0])
    half = torch.zeros(1, 4, 4)
    half[0, :, :2] = 1.0  # one vertical edge: 4 of the 24 pairs differ
    assert coherence(half)["mean"] == pytest.approx(4 / 24)


def test_connected_components_of_known_patterns() -> None:
    patterns = torch.zeros(7, 6, 6)
    patterns[1] = 1.0  # full: 1
    patterns[2] = _checkerboard(6, 6)  # 4-connectivity: every kept token alone, 18
    patterns[3, 0:2, 0:2] = 1.0
    patterns[3, 4:6, 3:6] = 1.0  # two blobs: 2
    patterns[4, 0, :] = 1.0  # a snake through the grid: 1
    patterns[4, 0:6, 5] = 1.0
    patterns[4, 5, :] = 1.0
    patterns[4, 2:6, 0] = 1.0
    patterns[4, 2, 0:4] = 1.0
    patterns[5] = torch.eye(6)  # diagonal touches only: 6
    patterns[6, 1:5, 1:5] = 1.0
    patterns[6, 2:4, 2:4] = 0.0  # a ring: 1
    counts = connected_components(patterns[:, None])
    assert counts.tolist() == [0, 1, 18, 2, 1, 6, 1]


def test_density_histogram_and_random_masks_of_equal_density() -> None:
    masks = torch.zeros(4, 1, 5, 5)
    masks[1, 0, :2] = 1.0  # 10 / 25
    masks[2, 0, :, :] = 1.0
    masks[3, 0, 0, :3] = 0.5  # soft: 1.5 / 25
    stats = density_stats(masks)
    assert stats["per_image"].tolist() == pytest.approx([0.0, 0.4, 1.0, 0.06])
    assert stats["mean"] == pytest.approx(0.365) and stats["min"] == 0.0 and stats["max"] == 1.0
    assert stats["std"] == pytest.approx(float(stats["per_image"].std(unbiased=False)))
    hist = histogram(stats["per_image"], bins=4)
    assert hist["counts"].tolist() == [2.0, 1.0, 0.0, 1.0] and hist["edges"].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    rand = random_mask_like(masks, gen(2))
    assert rand.shape == masks.shape
    assert set(rand.unique().tolist()) <= {0.0, 1.0}
    assert as_token_maps(rand).flatten(1).sum(dim=1).tolist() == [0.0, 10.0, 25.0, 2.0]  # round(1.5) = 2
    assert torch.equal(rand, random_mask_like(masks, gen(2)))
    assert not torch.equal(rand[1], masks[1])  # not the same 10 tokens (for this seed)


def test_sparsity_counts_the_images_a_mask_empties_or_keeps_whole_and_evaluate_says_so():
    from ersm_surgery.eval import sparsity_summary
    from ersm_surgery.eval.runner import _empty_mask_notes

    hard = torch.ones(20, 4, 4)
    hard[:3] = 0.0  # three images switched off entirely, two of class 1
    hard[3:10, 0] = 0.0  # partly kept
    labels = torch.tensor([1, 1, 0] + [0, 1] * 8 + [2])
    s = sparsity_summary(hard, hard, labels, ["a", "b", "c"])
    assert s["empty"] == {"images": 3, "share": pytest.approx(0.15), "per_class": {"a": 1, "b": 2}}
    assert s["full"] == {"images": 10, "share": 0.5}
    logits = torch.zeros(20, 3)
    logits[:, 1] = 1.0  # every image called "b": two of the three empty ones right
    (note,) = _empty_mask_notes({"layer3.ersm_mask": s}, {"layer3.ersm_mask": {"hard": hard}}, logits, labels)
    assert note.startswith("layer3 keeps no token of 3 images (15%; 67% of them b, top-1 on them 67%)")
    hard[:3] = 1.0
    hard[0, 1:] = 0.0  # nearly empty, not empty: no note
    s = sparsity_summary(hard, hard, labels, ["a", "b", "c"])
    assert _empty_mask_notes({"layer3.ersm_mask": s}, {"layer3.ersm_mask": {"hard": hard}}, logits, labels) == []
