"""Bootstrap intervals and verdicts against known answers (issue #15), and the paired figures on them."""
from __future__ import annotations

import numpy as np
import pytest

from ersm_surgery.eval.paired import FIGURES, paired_intervals, sparsity_figure
from ersm_surgery.eval.results_schema import PerImage
from ersm_surgery.eval.stats import (
    DOES_NOT_HOLD,
    HOLDS,
    INCONCLUSIVE,
    NOT_MEASURED,
    Interval,
    Margin,
    bootstrap,
    verdict,
)


def _diff(sample) -> float:
    g = sample["images"]
    return float(np.mean(g["a"]) - np.mean(g["b"]))


def _pair(a, b) -> dict:
    return {"images": {"a": np.asarray(a, dtype=float), "b": np.asarray(b, dtype=float)}}


def test_a_fixed_difference_gives_a_zero_width_interval() -> None:
    rng = np.random.default_rng(0)
    b = rng.random(200)
    iv = bootstrap([_pair(b + 0.1, b)], _diff, resamples=500)
    assert iv.estimate == pytest.approx(0.1)
    assert iv.low == pytest.approx(0.1) and iv.high == pytest.approx(0.1)
    # the same fixed difference on every seed: still zero width over seeds x images
    iv3 = bootstrap([_pair(b + 0.1, b), _pair(b[:50] + 0.1, b[:50]), _pair(b[::-1] + 0.1, b[::-1])], _diff,
                    resamples=300)
    assert iv3.low == pytest.approx(0.1) and iv3.high == pytest.approx(0.1) and iv3.seeds == 3


def test_a_symmetric_difference_straddles_zero() -> None:
    # half the images +1, half -1: mean difference 0, the interval on both sides of it
    a = np.array([1.0, 0.0] * 100)
    b = np.array([0.0, 1.0] * 100)
    iv = bootstrap([_pair(a, b)], _diff, resamples=1000)
    assert iv.estimate == pytest.approx(0.0)
    assert iv.low < 0 < iv.high
    assert verdict(iv, Margin(0.0)) == INCONCLUSIVE


def test_the_interval_is_about_the_normal_one_and_reproducible() -> None:
    rng = np.random.default_rng(1)
    d = rng.normal(0.05, 0.2, size=400)
    iv = bootstrap([_pair(d, np.zeros_like(d))], _diff, resamples=2000, seed=3)
    se = d.std() / np.sqrt(d.size)
    assert iv.low == pytest.approx(d.mean() - 1.96 * se, abs=0.25 * se)
    assert iv.high == pytest.approx(d.mean() + 1.96 * se, abs=0.25 * se)
    assert bootstrap([_pair(d, np.zeros_like(d))], _diff, resamples=2000, seed=3) == iv


def test_seed_to_seed_variation_widens_the_interval() -> None:
    # every seed is exact (a fixed difference) but the seeds disagree: only the seed level adds width
    b = np.zeros(100)
    iv = bootstrap([_pair(b + 0.0, b), _pair(b + 0.1, b), _pair(b + 0.2, b)], _diff, resamples=1000)
    assert iv.estimate == pytest.approx(0.1)
    assert iv.low < 0.05 and iv.high > 0.15


def test_groups_are_resampled_on_their_own() -> None:
    sample = {"x": {"v": np.ones(10)}, "y": {"v": np.zeros(30)}}
    iv = bootstrap([sample], lambda s: float(np.mean(s["x"]["v"]) - np.mean(s["y"]["v"])), resamples=100)
    assert (iv.estimate, iv.low, iv.high, iv.images) == (1.0, 1.0, 1.0, 40)


@pytest.mark.parametrize(("low", "high", "side", "expected"), [
    (0.01, 0.03, "above", HOLDS),
    (-0.03, -0.01, "above", DOES_NOT_HOLD),
    (-0.01, 0.01, "above", INCONCLUSIVE),
    (0.0, 0.02, "above", INCONCLUSIVE),  # touching the margin is not on the claim's side
    (-0.03, -0.01, "below", HOLDS),
    (0.01, 0.03, "below", DOES_NOT_HOLD),
])
def test_each_verdict(low: float, high: float, side: str, expected: str) -> None:
    assert verdict(Interval((low + high) / 2, low, high), Margin(0.0, side)) == expected


def test_not_measured_without_an_interval_or_with_an_undefined_one() -> None:
    assert verdict(None, Margin(0.0)) == NOT_MEASURED
    assert verdict(Interval(float("nan"), float("nan"), float("nan")), Margin(0.0)) == NOT_MEASURED


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        bootstrap([], _diff)
    with pytest.raises(ValueError, match="share a non-empty first axis"):
        bootstrap([{"images": {"a": np.ones(3), "b": np.ones(4)}}], _diff)
    with pytest.raises(ValueError, match="level"):
        bootstrap([_pair([1], [0])], _diff, level=1.0)


def _per_image() -> PerImage:
    right = np.array([1.0, 1.0, 1.0, 0.0])
    return PerImage(
        correct={"model": right, "baseline": np.array([1.0, 1.0, 0.0, 0.0])},
        occlusion={"model": {"cutout": np.stack([right, [1.0, 0.0, 0.0, 0.0]])},
                   "baseline": {"cutout": np.stack([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])}},
        occlusion_levels=[0.0, 0.5],
        deletion={"model": {"l2": {"energy": {"lerf": np.full(4, 0.8), "morf": np.full(4, 0.2)},
                                   "magnitude": {"lerf": np.full(4, 0.6), "morf": np.full(4, 0.4)}}}},
        localization={"l2": {"energy": {"mass_in_box": np.full(2, 0.7), "pointing": np.ones(2)},
                             "baseline_magnitude": {"mass_in_box": np.full(2, 0.4), "pointing": np.ones(2)}}},
        density={"l2": np.array([0.2, 0.3, 0.4, 0.5])},
        boxed=[0, 2],
    )


def test_paired_figures_equal_the_aggregates_on_all_images() -> None:
    iv = paired_intervals([_per_image()], resamples=200)
    assert iv["accuracy"].estimate == pytest.approx(0.75 - 0.5)
    assert iv["occlusion"].estimate == pytest.approx((0.25 / 0.75) - (0.0 / 0.5))
    assert iv["deletion"].estimate == pytest.approx(0.6 - 0.2)
    assert iv["deletion"].low == pytest.approx(0.4)  # constant per image: zero width
    assert iv["localization_mass"].estimate == pytest.approx(0.3)
    assert iv["localization_pointing"].estimate == pytest.approx(0.0)
    assert "shift" not in iv  # no spurious-cue data: not measured
    slack = sparsity_figure(0.6, 0.05)
    d = _per_image().density["l2"]
    assert slack.statistic(slack.build(_per_image())) == pytest.approx(min(0.6 - d.mean(), d.std() - 0.05))


def test_a_seed_without_the_data_makes_the_figure_unmeasured() -> None:
    empty = PerImage()
    assert FIGURES["accuracy"].build(empty) is None
    assert "accuracy" not in paired_intervals([_per_image(), empty], resamples=50)
