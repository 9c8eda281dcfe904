"""results.json's versioned schema: typed records, old files still read, newer ones refused in one line."""
from __future__ import annotations

import copy
import math

import pytest

from ersm_surgery.eval.results_schema import SCHEMA_VERSION, Results, ResultsSchemaError
from ersm_surgery.eval.tables import build_tables
from ersm_surgery.pipeline import judge_claims, judge_claims_v2

# a results.json as version 1 wrote it (no "schema", no per-image figures), trimmed to one layer
V1 = {
    "summary": {"top1.model": 0.75, "top1.baseline": 0.8},
    "settings": {"seed": 0}, "data": {"kind": "builtin:clutter", "split": "validation"}, "notes": [],
    "accuracy": {"model": {"top1": 0.75, "top5": 1.0, "top5_k": 4, "images": 4, "mean_confidence": 0.6},
                 "baseline": {"top1": 0.8, "top5": 1.0, "top5_k": 4, "images": 4, "mean_confidence": 0.7},
                 "delta": {"top1": 0.75 - 0.8, "top5": 0.0}},
    "sparsity": {"layers": {"layer2.ersm_mask": {
        "tokens": 64, "grid": [8, 8], "images": 4, "density": {"mean": 0.4, "std": 0.1, "min": 0.3, "max": 0.5},
        "soft_density": 0.45, "histogram": {"counts": [0, 4], "edges": [0.0, 0.5, 1.0]},
        "adaptivity": {"std": 0.1, "iqr": 0.1, "p10": 0.3, "p90": 0.5, "cv": 0.25, "per_class": {}},
        "coherence": {"mask": 0.2, "random": 0.5}, "components": {"mask": 1.0, "random": 9.0}}}},
    "occlusion": {"levels": [0.0, 0.5], "grid": 4, "fill": "data mean",
                  "model": {"cutout": {"levels": [0.0, 0.5], "accuracy": [0.75, 0.5], "clean_accuracy": 0.75,
                                       "mean_accuracy": 0.5, "ratio": 2 / 3, "relative": [1.0, 2 / 3]}},
                  "baseline": {"cutout": {"levels": [0.0, 0.5], "accuracy": [0.8, 0.4], "clean_accuracy": 0.8,
                                          "mean_accuracy": 0.4, "ratio": None, "relative": [1.0, 0.5]}}},
    "deletion": {"fractions": [0.0, 0.5], "fill": "zero", "metric": "top-1",
                 "model": {"seconds": 1.0, "method": "fx", "layers": {"layer2.ersm_mask": {
                     "energy": {"lerf": {"accuracy": [0.75, 0.7], "probability": [0.6, 0.5], "accuracy_auc": 0.725,
                                         "probability_auc": 0.55},
                                "morf": {"accuracy": [0.75, 0.2], "probability": [0.6, 0.3], "accuracy_auc": 0.475,
                                         "probability_auc": 0.45}}}}}},
    "localization": {"tolerance_tokens": 1.0, "layers": {"layer2.ersm_mask": {
        "energy": {"pointing": 1.0, "mass_in_box": 0.7, "iou": 0.5},
        "baseline_magnitude": {"pointing": 1.0, "mass_in_box": 0.4, "iou": 0.3},
        "mask_iou": 0.5, "box_fraction": 0.3, "pointing_chance": 0.4}}},
    "compute": {"model": {"dense_flops": 1e6, "conditional_flops": 5e5, "conditional_ratio": 0.5, "mask_flops": 10,
                          "params": 100, "latency": {"per_image_ms": 1.0, "batch_size": 4}, "sparse_latency": None}},
}


def test_a_version_1_file_reads_into_typed_records() -> None:
    r = Results.from_dict(copy.deepcopy(V1))
    assert r.version == 1 and r.per_image is None and r.intervals == {}
    assert r.accuracy["model"].top1 == 0.75 and r.accuracy["baseline"].top5_k == 4
    assert r.sparsity["layer2.ersm_mask"].density_mean == 0.4
    assert r.occlusion["model"]["cutout"].ratio == pytest.approx(2 / 3)
    assert math.isnan(r.occlusion["baseline"]["cutout"].ratio)  # null in the file: undefined
    assert r.deletion["model"]["layer2.ersm_mask"]["energy"]["morf"].accuracy_auc == 0.475
    assert r.localization["layer2.ersm_mask"].maps["baseline_magnitude"].mass_in_box == 0.4
    assert r.data["kind"] == "builtin:clutter" and r.other["compute"]["model"]["params"] == 100


def test_a_version_1_file_upgrades_and_its_sections_survive_the_round_trip() -> None:
    out = Results.from_dict(copy.deepcopy(V1)).to_dict()
    assert out["schema"] == {"name": "ersm-surgery/results", "version": SCHEMA_VERSION}
    for key in ("accuracy", "sparsity", "localization", "compute", "settings", "data"):
        assert out[key] == V1[key], key
    assert out["deletion"]["model"]["seconds"] == 1.0 and out["deletion"]["fractions"] == [0.0, 0.5]
    assert Results.from_dict(out).to_dict() == out


def test_tables_and_both_criteria_read_a_version_1_file() -> None:
    keys = [t["key"] for t in build_tables(copy.deepcopy(V1))]
    assert keys == ["accuracy", "sparsity", "compute", "occlusion", "deletion", "localization"]
    v1 = {row["claim"][:3]: row["verdict"] for row in judge_claims(V1)}
    assert v1["(a)"] == "DOES NOT HOLD" and v1["(d)"] == "DOES NOT HOLD"  # equal pointing is not better
    # the baseline's ratio is undefined (null); no magnitude ranking to beat
    assert v1["(c)"] == "NOT MEASURED" and v1["(e)"] == "NOT MEASURED"
    # version 2 needs the per-image figures a version-1 file does not have
    assert {row["verdict"] for row in judge_claims_v2([V1], resamples=10)} == {"NOT MEASURED"}


@pytest.mark.parametrize(("schema", "fragment"), [
    ({"name": "ersm-surgery/results", "version": SCHEMA_VERSION + 1}, "newer than this ersm-surgery reads"),
    ({"name": "someone-else", "version": 1}, "unknown schema"),
    ("2", "unknown schema"),
])
def test_a_newer_or_foreign_schema_is_one_line_with_the_fix(schema, fragment) -> None:
    with pytest.raises(ResultsSchemaError, match=fragment) as info:
        Results.from_dict({**V1, "schema": schema})
    assert "\n" not in str(info.value) and info.value.fix


def test_a_malformed_section_names_the_problem() -> None:
    with pytest.raises(ResultsSchemaError, match="malformed"):
        Results.from_dict({**V1, "accuracy": {"model": {"top5": 1.0}}})


def test_claim_f_sections_read_into_a_typed_record_and_back() -> None:
    v2 = {**copy.deepcopy(V1), "schema": {"name": "ersm-surgery/results", "version": 2},
          "spurious_cue": {"images": 4, "cue": 0.9, "model": {"cued": 1.0, "decorrelated": 0.75, "drop": 0.25},
                           "baseline": {"cued": 1.0, "decorrelated": 0.5, "drop": 0.5}},
          "background_swap": {"images": 3, "method": "pasted", "model": {"kept": 2 / 3}, "baseline": {"kept": 1 / 3}}}
    r = Results.from_dict(v2)
    assert r.background.cue["baseline"]["drop"] == 0.5 and r.background.swap["model"] == pytest.approx(2 / 3)
    assert r.to_dict()["spurious_cue"] == v2["spurious_cue"]
    assert r.to_dict()["background_swap"] == v2["background_swap"]
    assert "background" in [t["key"] for t in build_tables(v2)]
    assert Results.from_dict(copy.deepcopy(V1)).background is None
