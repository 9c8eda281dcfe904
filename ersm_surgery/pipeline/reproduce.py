"""``reproduce``: the protocol of ``run`` repeated over fine-tuning seeds, judged by both criteria versions.

The base is trained once (seed ``settings.seed``) and injected once; then both fine-tunings (ERSM and the
no-mask baseline) run once per seed from that same injected model, with the data of the first seed (only
the data order, the augmentation and any fresh initialisation change), and every pair is evaluated on
the same images, occlusions and evaluation seed. Criteria version 1 judges the first seed, as before;
version 2 combines the seeds (see :mod:`ersm_surgery.eval.stats`).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .claims import judge_claims
from .claims_v2 import CRITERIA_VERSION, judge_claims_v2
from .run import PipelineSettings, Progress, run_pipeline

__all__ = ["reproduce", "CLAIMS_FILE", "DEFAULT_SEEDS"]

_log = logging.getLogger(__name__)

CLAIMS_FILE = "claims.json"
DEFAULT_SEEDS = 3


def _extra_seed(settings: PipelineSettings, out: Path, seed: int, base: dict[str, Any],
                progress: Progress) -> dict[str, Any]:
    """One more fine-tuning seed: both models from ``out/injected``, evaluated as the first seed was."""
    from .run import _evaluate, train_pair

    folder = out / "seeds" / f"seed{seed}"
    # the first seed's data (builtin:clutter draws its images from the seed): only order and init vary
    tuned = replace(settings, seed=seed, data_options={**settings.data_options, "data_seed": settings.seed})
    train_pair(out / "injected", folder, tuned, lambda step, message: progress(step, f"seed {seed}: {message}"))
    progress("evaluate", f"seed {seed}: evaluating both models")
    results, _ = _evaluate(settings, folder / "ersm" / "last", folder / "baseline" / "last", folder / "eval", base,
                           progress)
    return results


def reproduce(settings: PipelineSettings, seeds: int = DEFAULT_SEEDS, progress: Progress | None = None,
              resamples: int | None = None) -> dict[str, Any]:
    """Run the protocol with ``seeds`` fine-tuning seeds and judge the claims with both criteria versions.

    Args:
        settings: the pipeline's settings; ``settings.seed`` is the first seed (base, data, evaluation).
        seeds: fine-tuning seeds (``settings.seed``, ``settings.seed + 1``, ...).
        progress: ``(step, message)`` reporter.
        resamples: bootstrap replicates (default: :data:`~ersm_surgery.eval.stats.DEFAULT_RESAMPLES`).

    Returns:
        ``run_pipeline``'s summary of the first seed plus ``claims`` (version 1), ``claims_v2``, ``seeds``,
        ``seed_results`` (results.json paths) and ``timings["seeds"]``; ``DIR/claims.json`` holds both
        versions.

    Raises:
        ValueError: ``seeds`` < 1.
    """
    from ..eval.results import to_jsonable
    from ..eval.stats import DEFAULT_RESAMPLES
    from ..io.atomic import atomic_write_text

    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    progress = progress or (lambda step, message: _log.info("%s: %s", step, message))
    summary = run_pipeline(settings, progress)
    out = Path(summary["settings"]["output"])
    # every seed fine-tunes as the first did (the run's memory-format choice included)
    settings = replace(settings, finetune=summary["settings"]["finetune"])
    start = time.perf_counter()
    results = [summary["results"]]
    paths = [str(out / "eval" / "results.json")]
    for seed in range(settings.seed + 1, settings.seed + seeds):
        results.append(_extra_seed(settings, out, seed, summary["base"], progress))
        paths.append(str(out / "seeds" / f"seed{seed}" / "eval" / "results.json"))
    summary["timings"]["seeds"] = time.perf_counter() - start
    v1 = judge_claims(results[0])
    v2 = judge_claims_v2(results, resamples=resamples or DEFAULT_RESAMPLES, seed=settings.seed)
    seed_list = list(range(settings.seed, settings.seed + seeds))
    record = {"model": settings.model, "data": settings.data, "seeds": seed_list,
              "criteria": {"1": v1, str(CRITERIA_VERSION): v2}, "results": paths}
    atomic_write_text(out / CLAIMS_FILE, json.dumps(to_jsonable(record), indent=2) + "\n")
    return {**summary, "claims": v1, "claims_v2": v2, "seeds": seed_list, "seed_results": paths}
