"""``evaluate``: the split reruns, batched deletion, the runner's known answers and the command's errors.

Everything runs on test_resnet at 32 px with a handful of images; the masks are made to drop about
half of their tokens, so sparsity, deletion reuse and localization see non-trivial masks.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import ersm_surgery
from ersm_surgery.errors import ErsmError
from ersm_surgery.eval import deletion_curve, energy_scores, magnitude_scores
from ersm_surgery.eval.compute import conditional_flops, flop_breakdown
from ersm_surgery.eval.deletion_batched import DeletionJob, run_deletion_jobs
from ersm_surgery.eval.images import EvalImages, load_images
from ersm_surgery.eval.rerun import Anchor, FxSplit, HookSplit, RerunError, Rerunner, make_split
from ersm_surgery.eval.runner import EvalSettings, evaluate
from tests.conftest import one_line_error, run

SIZE = 32
K = 4
FRACTIONS = [i / 10 for i in range(10)]


def sparsify(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random mask heads around the token price, so the hard masks keep about half of the tokens."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in ersm_surgery.masks(model):
            score = layer.head.score
            score.weight.copy_(torch.randn(score.weight.shape, generator=g) * 3.0)
            score.bias.fill_(layer.config.alpha)
    return model


def masked_model(**kwargs) -> torch.nn.Module:
    torch.manual_seed(0)
    model = ersm_surgery.inject("test_resnet", input_size=(3, SIZE, SIZE), num_classes=K, **kwargs)
    return sparsify(model).eval()


# ------------------------------------------------------------------ the split


def test_fx_split_rerun_equals_a_full_forward_with_the_same_substitution() -> None:
    model = masked_model(stages=[2, 3])
    names = ersm_surgery.masks(model).names()
    anchors = [Anchor(n, module=n, capture_input=True) for n in names]
    x = torch.randn(5, 3, SIZE, SIZE)
    with torch.no_grad():
        fx_split, hook_split = FxSplit(model, anchors), HookSplit(model, anchors)
        clean = model(x)
        assert torch.equal(fx_split.clean(x), clean) and torch.equal(hook_split.clean(x), clean)
        rows = torch.tensor([4, 0, 0, 2, 1, 3, 3])  # mixed and repeated images in one call
        for name in names:
            feats = fx_split.features(name)
            assert torch.equal(feats, hook_split.features(name))
            assert torch.equal(fx_split.inputs(name), hook_split.inputs(name))
            z = torch.randn(rows.numel(), *feats.shape[1:])
            assert torch.equal(fx_split.rerun(name, z, rows), hook_split.rerun(name, z, rows))
            # the untouched features give back the clean logits
            assert torch.equal(fx_split.rerun(name, feats), clean)
    fx_split.close()
    hook_split.close()


def test_split_inside_a_residual_block_carries_the_skip_branch() -> None:
    model = masked_model(nodes=["layer3.0.act1"])
    name = ersm_surgery.masks(model).names()[0]
    x = torch.randn(3, 3, SIZE, SIZE)
    with torch.no_grad():
        split, full = FxSplit(model, [Anchor(name, module=name)]), HookSplit(model, [Anchor(name, module=name)])
        split.clean(x)
        full.clean(x)
        assert split._frontier[name], "the downsample branch must be an input of the tail"
        z = torch.randn_like(split.features(name))
        assert torch.equal(split.rerun(name, z), full.rerun(name, z))
        # a plain timm model split at a function node (the residual add) by qualname
        import timm

        base = timm.create_model("test_resnet", num_classes=K).eval()
        node_split = FxSplit(base, [Anchor("add", node="layer3.0.add")])
        assert torch.equal(node_split.clean(x), base(x))


def test_make_split_falls_back_to_hooks_and_says_why() -> None:
    model = masked_model(stages=[2])
    name = ersm_surgery.masks(model).names()[0]
    split, reason = make_split(model, [Anchor(name, module=name)], prefer="hook")
    assert isinstance(split, HookSplit) and reason
    # a module inside an fx leaf (the mask's own head) is no node of the trace, but a hook can reach it
    split, reason = make_split(model, [Anchor("head", module=f"{name}.head")])
    assert isinstance(split, HookSplit) and "not a node" in reason


def test_both_rerunners_implement_the_protocol_and_fail_with_an_ersm_error() -> None:
    model = masked_model(stages=[2]).eval()
    name = ersm_surgery.masks(model).names()[0]
    x = torch.randn(2, 3, 64, 64)
    for prefer, kind in (("fx", FxSplit), ("hook", HookSplit)):
        split, _ = make_split(model, [Anchor(name, module=name)], example=x, prefer=prefer)
        assert isinstance(split, kind) and isinstance(split, Rerunner)
        with torch.no_grad():
            same = split.rerun(name, split.features(name))
            assert torch.allclose(same, model(x), atol=1e-5)
        split.close()
    with pytest.raises(RerunError, match="is not a module") as failed:
        HookSplit(model, [Anchor("nowhere", module="no.such.module")])
    assert isinstance(failed.value, ErsmError)


# ------------------------------------------------------------------ batched deletion


def test_batched_deduplicated_deletion_equals_deletion_curve() -> None:
    torch.manual_seed(0)
    head = torch.nn.Sequential(torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                               torch.nn.Flatten(), torch.nn.Linear(8, 5)).eval()
    feats = torch.randn(7, 6, 5, 5)
    feats[:, :, :2] = 0.0  # tokens a hard mask dropped: removing them changes nothing with zero fill
    labels = torch.randint(0, 5, (7,))
    scores = {"energy": torch.randn(7, 5, 5), "magnitude": magnitude_scores(feats)}
    jobs = [DeletionJob(r, o, s) for r, s in scores.items() for o in ("lerf", "morf")]
    calls = []

    def rerun(z, rows):
        calls.append(z.shape[0])
        return head(z)

    for fill in ("zero", "mean"):
        calls.clear()
        with torch.no_grad():
            curves, counts = run_deletion_jobs(feats, jobs, rerun, head(feats), labels, FRACTIONS, fill, max_rows=16)
        assert max(calls) <= 16
        for job in jobs:
            with torch.no_grad():
                ref = deletion_curve(feats, job.scores, head, labels, FRACTIONS, job.order, fill)
            got = curves[(job.ranking, job.order)]
            for key in ("accuracy", "probability", "accuracy_auc", "probability_auc", "removed"):
                assert got[key] == ref[key], (fill, job.ranking, job.order, key)
        if fill == "zero":  # LeRF by magnitude removes the ten zero tokens first: fractions 0.1-0.4 are free
            assert counts["reused"] >= 7 * 4 + 4 * 7  # + the clean fraction of every job
        assert counts["rows"] + counts["reused"] == len(jobs) * len(FRACTIONS) * 7


# ------------------------------------------------------------------ compute


def test_conditional_flops_scale_the_modules_after_each_mask() -> None:
    model = masked_model(stages=[2, 3])
    breakdown = flop_breakdown(model, torch.randn(1, 3, SIZE, SIZE))
    assert sum(m["flops"] for m in breakdown["modules"].values()) == breakdown["total"]
    names = ersm_surgery.masks(model).names()
    full = conditional_flops(breakdown, dict.fromkeys(names, 1.0))
    assert full["conditional"] == full["dense"] == breakdown["total"]
    half = conditional_flops(breakdown, dict.fromkeys(names, 0.5))
    gated = sum(half["scaled"].values())
    assert gated > 0 and half["conditional"] == pytest.approx(half["dense"] - 0.5 * gated)
    # the classifier reads pooled features: never scaled; the layer4 convolutions follow layer3's mask
    assert breakdown["modules"]["fc"]["spatial"] is False
    assert breakdown["modules"]["layer4.0.conv1"]["mask"] == "layer3.ersm_mask"


# ------------------------------------------------------------------ the runner


@pytest.fixture(scope="module")
def clutter_images() -> EvalImages:
    from ersm_surgery.data import create_dataset

    data = create_dataset("builtin:clutter", "validation", img_size=SIZE, seed=0, num_classes=K, size=12)
    return load_images(data, 6, seed=0, batch_size=3)


def test_occlusion_of_model_and_baseline_side_by_side_equals_one_after_another(clutter_images: EvalImages) -> None:
    from ersm_surgery.eval.side_by_side import run_side_by_side
    from ersm_surgery.io.source import strip_masks

    model = masked_model(stages=[2, 3])
    baseline = strip_masks(model).eval()
    settings = EvalSettings(batch_size=3, latency_repeats=1, occlusion_levels=(0.0, 0.3, 0.6), occlusion_grid=4,
                            metrics=("occlusion",))
    threads = torch.get_num_threads()
    assert threads >= 2  # conftest: two threads, so the two occlusion passes run at once
    together = evaluate(model, clutter_images, baseline, settings).results["occlusion"]
    torch.set_num_threads(1)  # fewer threads than passes: one after the other
    try:
        apart = evaluate(model, clutter_images, baseline, settings).results["occlusion"]
    finally:
        torch.set_num_threads(threads)
    assert together == apart and torch.get_num_threads() == threads
    # a job's error reaches the caller; the threads are given back either way
    with pytest.raises(ZeroDivisionError):
        run_side_by_side([lambda: 1, lambda: 1 / 0], torch.device("cpu"))
    assert torch.get_num_threads() == threads
    assert run_side_by_side([lambda: 1, lambda: 2], torch.device("cpu")) == [1, 2]


def test_runner_known_answers(clutter_images: EvalImages) -> None:
    from ersm_surgery.io.source import strip_masks

    model = masked_model(stages=[2, 3])
    baseline = strip_masks(model).eval()
    settings = EvalSettings(batch_size=3, latency_repeats=1, occlusion_levels=(0.0, 0.3), occlusion_grid=4,
                            deletion_fractions=(0.0, 0.5, 0.9), figure_images=2)
    result = evaluate(model, clutter_images, baseline, settings)
    r = result.results
    # IL = 0 through the runner is the clean accuracy of the feature pass
    for role in ("model", "baseline"):
        for curve in r["occlusion"][role].values():
            assert curve["accuracy"][0] == curve["clean_accuracy"] == r["accuracy"][role]["top1"]
    assert r["accuracy"]["delta"]["top1"] == r["accuracy"]["model"]["top1"] - r["accuracy"]["baseline"]["top1"]
    # the hard masks keep part of the tokens; the density the sparsity table shows is the masks' own
    for s in r["sparsity"]["layers"].values():
        assert 0.0 < s["density"]["mean"] < 1.0
        assert sum(s["histogram"]["counts"]) == len(clutter_images)
    # deletion at f = 0 is the clean accuracy for every ranking; the baseline has magnitude only
    for name, rankings in r["deletion"]["model"]["layers"].items():
        assert set(rankings) == {"energy", "magnitude", "random"}
        for orders in rankings.values():
            assert orders["lerf"]["accuracy"][0] == orders["morf"]["accuracy"][0]
            assert orders["lerf"]["accuracy"][0] == pytest.approx(r["accuracy"]["model"]["top1"])
        assert rankings["random"]["lerf"] == rankings["random"]["morf"]
        assert set(r["deletion"]["baseline"]["layers"][name]) == {"magnitude"}
    assert r["deletion"]["cost"]["method"] == "fx" and r["deletion"]["cost"]["reused"] > 0
    # the stripped baseline has the same features before the first mask: equal magnitude maps there
    first = next(iter(r["localization"]["layers"].values()))
    assert first["magnitude"] == first["baseline_magnitude"]
    assert r["compute"]["model"]["conditional_flops"] < r["compute"]["model"]["dense_flops"]
    assert r["compute"]["baseline"]["conditional_flops"] == r["compute"]["baseline"]["dense_flops"]
    assert len(result.samples["images"]) == 2 and set(result.samples["layers"]) == set(r["sparsity"]["layers"])
    # the same numbers with full reruns (the fallback) as with the fx split
    hooked = evaluate(model, clutter_images, None, EvalSettings(batch_size=3, metrics=("deletion",), split="hook",
                                                                deletion_fractions=(0.0, 0.5, 0.9)))
    assert hooked.results["deletion"]["model"]["layers"] == r["deletion"]["model"]["layers"]
    assert hooked.results["deletion"]["cost"]["method"] == "hook" and hooked.results["notes"]
    _per_image_figures_give_back_the_aggregates(r)


def _per_image_figures_give_back_the_aggregates(r: dict) -> None:
    """results.json version 2: every aggregate is the mean of its per-image figure, and has an interval."""
    from ersm_surgery.eval.results import to_jsonable
    from ersm_surgery.eval.results_schema import Results

    typed = Results.from_dict(to_jsonable(r))
    assert typed.version == 2 and r["schema"] == {"name": "ersm-surgery/results", "version": 2}
    p = typed.per_image
    for role in ("model", "baseline"):
        assert p.correct[role].mean() == pytest.approx(r["accuracy"][role]["top1"])
        for name, curve in r["occlusion"][role].items():
            assert p.occlusion[role][name].mean(axis=1) == pytest.approx(curve["accuracy"])
    for name, rankings in r["deletion"]["model"]["layers"].items():
        for ranking, orders in rankings.items():
            for order, curve in orders.items():
                assert p.deletion["model"][name][ranking][order].mean() == pytest.approx(curve["accuracy_auc"])
        assert p.density[name].mean() == pytest.approx(r["sparsity"]["layers"][name]["density"]["mean"])
    for name, layer in r["localization"]["layers"].items():
        for kind in ("energy", "magnitude", "baseline_magnitude"):
            for score in ("mass_in_box", "pointing"):
                assert p.localization[name][kind][score].mean() == pytest.approx(layer[kind][score])
    assert set(r["intervals"]) == {"accuracy", "occlusion", "deletion", "localization_mass", "localization_pointing",
                                   "swap"}
    assert p.swap["model"].mean() == pytest.approx(r["background_swap"]["model"]["kept"])
    acc = r["intervals"]["accuracy"]
    assert acc["estimate"] == pytest.approx(r["accuracy"]["delta"]["top1"]) and acc["low"] <= acc["high"]
    assert Results.from_dict(typed.to_dict()).to_dict() == typed.to_dict()


# ------------------------------------------------------------------ the command


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> dict[str, Path]:
    from ersm_surgery.io.source import strip_masks
    from ersm_surgery.recipe import Recipe

    root = tmp_path_factory.mktemp("models")
    model = masked_model(stages=[2, 3])
    ersm_surgery.save(model, root / "masked")
    ersm_surgery.save(strip_masks(model), root / "plain")
    import timm

    wrong = timm.create_model("test_resnet", num_classes=7)
    wrong.ersm_recipe = Recipe(model="test_resnet", num_classes=7, input_size=(3, SIZE, SIZE))
    ersm_surgery.save(wrong, root / "seven")
    return {"masked": root / "masked", "plain": root / "plain", "seven": root / "seven"}


SMALL = ["--num-images", "4", "-b", "4", "-j", "0", "--occlusion-grid", "4", "--figure-images", "2"]


@pytest.fixture(scope="module")
def full_run(saved, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "out"
    result = run("evaluate", str(saved["masked"]), "--dataset", "builtin:clutter", "--num-classes", str(K),
                 "--baseline", str(saved["plain"]), "-o", str(out), "--json", *SMALL)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["accuracy"]["model"]["images"] == 4
    return out


def test_evaluate_writes_results_figures_and_a_self_contained_report(full_run: Path) -> None:
    names = {p.name for p in full_run.iterdir()}
    assert {"results.json", "report.html", "masks.png", "density.png", "occlusion.png",
            "deletion_layer2.png", "deletion_layer3.png"} <= names
    r = json.loads((full_run / "results.json").read_text())
    for key in ("accuracy", "sparsity", "compute", "occlusion", "deletion", "localization", "versions", "data",
                "settings"):
        assert key in r, key
    assert r["data"]["kind"] == "builtin:clutter" and r["data"]["evaluated_images"] == 4
    assert r["settings"]["seed"] == 0 and r["versions"]["torch"] == torch.__version__
    assert r["models"]["model"]["masked"] and not r["models"]["baseline"]["masked"]
    assert r["compute"]["model"]["theoretical"] is True and r["compute"]["model"]["latency"]["per_image_ms"] > 0
    html = (full_run / "report.html").read_text()
    assert html.count('src="data:image/png;base64,') == len(r["figures"]) and "src=\"http" not in html
    for png in r["figures"].values():
        with Image.open(full_run / png) as im:
            assert im.size[0] > 100 and im.size[1] > 100


def test_model_without_masks_is_evaluated_as_a_baseline_with_a_notice(saved, tmp_path) -> None:
    result = run("evaluate", str(saved["plain"]), "--dataset", "builtin:clutter", "--num-classes", str(K),
                 "--metrics", "accuracy,deletion,sparsity", "-o", str(tmp_path / "o"), *SMALL)
    assert result.exit_code == 0, result.output
    assert "no Energy-Mask layers: evaluated as a baseline only" in result.output
    r = json.loads((tmp_path / "o" / "results.json").read_text())
    assert "accuracy" in r and "deletion" not in r and "sparsity" not in r


def test_data_without_boxes_skips_localization_and_says_so(saved, tmp_path) -> None:
    for split in ("train", "validation"):
        for c, colour in enumerate(("red", "green", "blue", "white")):
            folder = tmp_path / "data" / split / f"class{c}"
            folder.mkdir(parents=True)
            Image.new("RGB", (SIZE, SIZE), colour).save(folder / "a.png")
    result = run("evaluate", str(saved["masked"]), "--data-dir", str(tmp_path / "data"),
                 "--metrics", "accuracy,localization", "-o", str(tmp_path / "o"), *SMALL)
    assert result.exit_code == 0, result.output
    assert "no object boxes: localization skipped" in result.output
    assert "localization" not in json.loads((tmp_path / "o" / "results.json").read_text())


def test_class_count_mismatch_is_one_line_naming_the_fix(saved, tmp_path) -> None:
    result = run("evaluate", str(saved["masked"]), "--dataset", "builtin:clutter", "-o", str(tmp_path / "o"),
                 *SMALL)
    one_line_error(result, "4-class head", "10 classes", "--num-classes 4")
    result = run("evaluate", str(saved["masked"]), "--dataset", "builtin:clutter", "--num-classes", str(K),
                 "--baseline", str(saved["seven"]), "-o", str(tmp_path / "o2"), *SMALL)
    one_line_error(result, "baseline has a 7-class head")
    headless = ersm_surgery.inject("test_resnet", stages=[2], input_size=(3, SIZE, SIZE), num_classes=0)
    ersm_surgery.save(headless, tmp_path / "headless")
    result = run("evaluate", str(tmp_path / "headless"), "--dataset", "builtin:clutter", "-o", str(tmp_path / "o3"),
                 *SMALL)
    one_line_error(result, "headless", "--num-classes 10")


def test_empty_split_and_bad_arguments_are_one_line_errors(saved, tmp_path) -> None:
    (tmp_path / "data" / "train" / "a").mkdir(parents=True)
    Image.new("RGB", (SIZE, SIZE)).save(tmp_path / "data" / "train" / "a" / "x.png")
    (tmp_path / "data" / "validation" / "a").mkdir(parents=True)
    result = run("evaluate", str(saved["masked"]), "--data-dir", str(tmp_path / "data"), "-o", str(tmp_path / "o"))
    one_line_error(result, "validation")
    masked = str(saved["masked"])
    for args, fragment in [
        ([masked], "exactly one of --data-dir"),
        ([masked, "--dataset", "builtin:clutter", "--data-dir", "x"], "exactly one of --data-dir"),
        ([masked, "--dataset", "builtin:clutter", "--metrics", "speed"], "unknown metric(s) speed"),
        ([masked, "--dataset", "builtin:clutter", "--num-images", "0"], "--num-images"),
        ([str(tmp_path / "nothing"), "--dataset", "builtin:clutter"], "nothing"),
    ]:
        one_line_error(run("evaluate", *args, "-o", str(tmp_path / "o3")), fragment)


def test_energy_scores_rank_kept_tokens_first() -> None:
    energy = torch.tensor([[[[-1.0, 2.0], [0.5, -3.0]]]])
    assert energy_scores(energy).argmax().item() == 3


def test_an_evaluation_folder_is_published_whole(clutter_images: EvalImages, tmp_path: Path, monkeypatch) -> None:
    """Stale figures of an older evaluation go, a user's own file stays, a failed write changes nothing."""
    from ersm_surgery.eval import report
    from ersm_surgery.eval.outputs import write_evaluation

    model = masked_model(stages=[2])
    settings = EvalSettings(batch_size=3, latency_repeats=1, occlusion_levels=(0.0,), occlusion_grid=4,
                            deletion_fractions=(0.0, 0.5), figure_images=2, metrics=("accuracy", "sparsity"))
    result = evaluate(model, clutter_images, None, settings)
    out = tmp_path / "eval"
    out.mkdir()
    (out / "deletion_layer9.png").write_bytes(b"an older run's figure")
    (out / "notes.txt").write_text("mine")
    files = write_evaluation(result, out)
    names = {p.name for p in out.iterdir()}
    assert "deletion_layer9.png" not in names and "notes.txt" in names
    assert {"results.json", "report.html"} <= names and all(p.exists() for p in files.values())
    assert json.loads((out / "results.json").read_text())["report"] == str(out.resolve() / "report.html")
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(report, "write_report", broken)
    with pytest.raises(OSError):
        write_evaluation(result, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["eval"]  # no staging or lock left beside it
