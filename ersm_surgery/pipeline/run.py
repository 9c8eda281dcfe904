"""``run``: inject, fine-tune against a baseline on the same budget, evaluate both, export.

Masks are meant for a trained model (DESIGN.md, "collapse"): without ``--pretrained`` or
``--pretrained-path`` the base model is first trained briefly on the data itself. The ERSM model and the
baseline then start from the same base weights and are fine-tuned with the same loop, data order,
seed and number of steps; the evaluation runs both on the same images, occlusions and seeds.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = ["PipelineSettings", "run_pipeline", "STEPS", "UNTRAINED_NOTE"]

_log = logging.getLogger(__name__)

UNTRAINED_NOTE = ("UNTRAINED BASE (--force-base): the base reached only {top1:.1f}% validation top-1 (chance "
                  "{chance:.1f}%); every figure here was computed on a network that did not learn")

STEPS = ("base", "inject", "finetune", "baseline", "evaluate", "export")


@dataclass
class PipelineSettings:
    """What ``run`` does.

    Attributes:
        model: timm model name.
        stages: feature_info indices to mask.
        data: ``builtin:clutter`` or an ImageFolder directory.
        output: the run folder (base/, injected/, ersm/, baseline/, eval/, export/).
        epochs: fine-tuning epochs for ERSM and for the baseline (the same budget).
        base_epochs: epochs of base training when no pretrained weights are given (None: what the base's
            time budget affords on this machine, 4 to 12 epochs' worth, spent on more unique pictures where
            ``base_data_options`` has a ``train_size``; see ``base_budget``).
        img_size: image side.
        batch_size: images per step.
        lr: fine-tuning learning rate.
        base_lr: base-training learning rate (None: chosen by the rule of ``base_training``).
        pretrained: start from timm's pretrained weights (network).
        pretrained_path: start from local base weights.
        seed: seeds data order, initialisation and evaluation.
        num_images: images evaluated.
        device: where every step runs: ``cpu``, ``cuda``, ``cuda:N``, ``mps`` (None: CUDA when available, else
            the CPU).
        workers: DataLoader worker processes of the trainings (0: the built-in data render in the main
            process, which is how the main job's time was measured).
        data_options: more ``create_dataset`` options (``size``, ``num_classes`` of builtin:clutter).
        base_data_options: data options for base training only, over ``data_options`` (e.g.
            ``train_size`` of built-in data: the base then sees more unique images rather than more epochs).
        mask: ``mask.*`` settings for the injected layers.
        finetune: more fine-tuning settings (``FinetuneConfig`` fields) for both fine-tunings; base
            training takes only the ones that are not part of its own recipe (see ``BASE_KEEPS``).
        formats: export formats (default: every format whose dependencies are installed; without the
            onnx extra that is safetensors alone, and ``run`` says ONNX was skipped).
        force: write into a non-empty output folder.
        export_rtol: the ONNX validation's relative tolerance (None: the export's default).
        export_atol: the ONNX validation's absolute floor (None: the export's default).
        force_base: inject even when the base trained here failed the gate (``base_training.base_gate``);
            every later figure is then marked as computed on an untrained base.
        boxes: object boxes of an image folder's validation images (``ersm_surgery.data.boxes``), or None.
        side_by_side: on a CPU, fine-tune ERSM and the baseline at once in two processes (:func:`train_pair`;
            the CLI's default). Off by default here: the second process is started by spawn, which imports
            the caller's main script again, so a script needs an ``if __name__ == "__main__":`` guard.
    """

    model: str
    stages: list[int]
    data: str = "builtin:clutter"
    output: str | Path = "ersm-run"
    epochs: int = 2
    base_epochs: int | None = None
    img_size: int = 64
    batch_size: int = 64
    lr: float = 5e-4
    base_lr: float | None = None
    pretrained: bool = False
    pretrained_path: str | None = None
    seed: int = 0
    num_images: int = 256
    device: str | None = None
    workers: int = 0
    data_options: dict[str, Any] = field(default_factory=dict)
    base_data_options: dict[str, Any] = field(default_factory=dict)
    mask: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)
    formats: tuple[str, ...] = field(default_factory=lambda: _installed_formats())
    force: bool = False
    export_rtol: float | None = None
    export_atol: float | None = None
    force_base: bool = False
    boxes: str | None = None
    side_by_side: bool = False


Progress = Callable[[str, str], None]  # (step, message)


def _installed_formats() -> tuple[str, ...]:
    from ..io.export import default_formats

    return default_formats()

# finetune.* settings that base training shares: how to run, not what to train (its epochs are --base-epochs and
# the rest is chosen by base_training's rule, so ``--set finetune.lr=...`` changes the fine-tunings only)
BASE_KEEPS = ("amp", "strict_data", "grad_accum_steps")


def _config(settings: PipelineSettings, epochs: int, lr: float, no_masks: bool = False,
            data_options: dict[str, Any] | None = None, base: bool = False):
    """The validated FinetuneConfig of one training step (RecipeError names every bad finetune.* setting)."""
    from ..train import FinetuneConfig

    overrides = ({k: v for k, v in settings.finetune.items() if k in BASE_KEEPS} if base
                 else {**PIPELINE_FINETUNE, **settings.finetune})
    return FinetuneConfig.from_sources({
        "data": settings.data, "data_options": {**settings.data_options, **(data_options or {})}, "epochs": epochs,
        "batch_size": settings.batch_size, "lr": lr, "img_size": settings.img_size, "seed": settings.seed,
        "workers": settings.workers, "no_masks": no_masks,
    }, overrides)


# The masks run and reproduce inject: open at q0 = sigmoid(1) rather than sigmoid(3), so that in a fine-tuning
# of ~125 updates the price can close tokens at all (Adam moves the score's bias by about its lr per update),
# with the magnitude prior choosing which first (the weakest tokens of each image). Measured on the price
# robustness matrix (docs/finetune.md); --set mask.init_logit=3 mask.norm_prior=0 gives the masks of before.
# The prior starts at weight 2 (1 until 2026-12-05): on the matrix's two sets of bases 15/16 and 13/16 cells
# passed against 10/16 and 11/16, none open, accuracy paired by cell +0.21 [-0.63, +1.06] and +0.41 [-0.27,
# +1.09] points (one fine-tuning seed a cell). The layer's own defaults stay open (init_logit 3, no prior):
# ``inject`` alone keeps the model's function.
# The prior is standardised by the data's statistics (norm_prior_stats "running", since 2026-12-05 night), not per
# picture: a picture with more strong tokens than usual keeps more, where the per-picture rule kept about the same
# share of each. On the matrix over two seeds: 15/16 cells against 14/16, per-image std of the densities +0.18
# [+0.15, +0.20] paired by mask, accuracy paired by cell +0.19 [-0.36, +0.75] (inconclusive);
# --set mask.norm_prior_stats=image gives the prior of before.
PIPELINE_MASK = {"alpha": 0.42, "init_logit": 1.0, "norm_prior": 2.0, "norm_prior_stats": "running"}
# Under the gate (--set mask.gate=stage) the stage after a mask computes nothing at the tokens it switched off.
# There run's masks compute a coarse token when any token of its stride block is kept (gate_pool "any": the mask
# that gates the last stage keeps accuracy, docs/sparse.md) and rank the prior per picture: with the data's
# statistics a gated mask emptied whole pictures of efficientnet_b0 (-18 points on one cell). On the price
# matrix's late cells under the gate (one seed, 2026-12-05): 6/8 cells against 4/8 (running) and 0/8 (running,
# the prior counting the stage's zeros, before recipe version 6), the mask that gates the last stage at 0.40-0.56
# (-0.24 [-0.26, -0.22] paired by cell against 0.67-0.80), accuracy -0.45 [-2.40, +1.50] points (inconclusive);
# over two seeds on 2000 pictures 5/8 (efficientnet_b0 -3.1 and -3.7 points).
# A user's own --set mask.gate_pool / mask.norm_prior_stats wins.
PIPELINE_GATED_MASK = {"gate_pool": "any", "norm_prior_stats": "image"}
# The fine-tuning run and reproduce give the masks: they learn to the end, pulled towards the values they were
# injected with (finetune.mask_pull, L2-SP on the masks). The price alone has no equilibrium in a fine-tuning's
# length: the masks close for as long as they learn, so until 2026-12-05 run froze them at half-time and capped their
# phase at 63 updates, and the density was whatever that many updates reached. The pull is a restoring force that
# grows as they move, so they settle: from 4 epochs of 2000 pictures on, twice the updates moved no density by more
# than 0.07 (run's own 2 epochs are on the approach: 8000 pictures end 0.02-0.17 lower, in range). On the price
# matrix over two seeds 14/16 cells against the freeze's 12/16, paired +0.65 points [-0.11, +1.42];
# step time 1.07x the baseline's (docs/finetune.md);
# --set finetune.mask_pull=null finetune.mask_freeze=0.5 finetune.mask_updates=63 gives the fine-tuning of before.
PIPELINE_FINETUNE = {"mask_pull": 0.1}


def pipeline_alpha(masks: int) -> float:
    """Each mask's price when ``run`` injects ``masks`` of them: PIPELINE_MASK's alpha / sqrt(masks).

    A token switched off at one mask is also missing from every later stage, so the masks' damage compounds
    while each charges its own price: on the price matrix (docs/finetune.md, masks learning to the end) two
    masks at 0.3 each failed 5 of 8 cells (4 by 2.2-3.8 points), at 0.15 each most stayed above 0.65 of their
    tokens, at 0.21 (0.3 / sqrt 2) 6 of 8 cells passed; one mask at 0.3 passed 8 of 8; three masks at 0.17
    kept the accuracy but one mask in each well-trained base stayed above 0.65. With the masks frozen at
    half-time the same rule ran from 0.42, and with their pull (PIPELINE_FINETUNE) it still does. Still a price per
    token and no target density.
    """
    return round(PIPELINE_MASK["alpha"] / math.sqrt(max(1, masks)), 4)


def _mask_config(settings: PipelineSettings):
    """The layers' settings, checked before any training; injection writes them into the recipe.

    ``mask.alpha`` given by the user is each mask's price as is; otherwise :func:`pipeline_alpha`. Under
    ``mask.gate=stage`` the settings of :data:`PIPELINE_GATED_MASK` replace run's own, unless the user set them.
    """
    from ..errors import RecipeError
    from ..layers import MaskConfig

    shared = {**PIPELINE_MASK, "alpha": pipeline_alpha(len(settings.stages))}
    if settings.mask.get("gate") == "stage":
        shared.update(PIPELINE_GATED_MASK)
    try:
        return MaskConfig.from_dict({**MaskConfig().to_dict(), **shared, **settings.mask})
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"invalid mask setting: {exc}", "see docs/recipe.md") from exc


def _train(source: str, output: Path, settings: PipelineSettings, epochs: int, lr: float, *, no_masks: bool = False,
           pretrained_path: str | None = None) -> dict[str, Any]:
    from ..train import RunInputs, finetune

    config = _config(settings, epochs, lr, no_masks)
    inputs = RunInputs(source=source, output=output, force=True, pretrained=settings.pretrained and not pretrained_path,
                       pretrained_path=pretrained_path, device=_device(settings))
    result = finetune(inputs, config)
    last = result.rows[-1] if result.rows else {}
    return {"folder": str(output), "rows": result.rows, "best": result.best, "last": last}


def _train_timed(source: str, output: Path, settings: PipelineSettings, no_masks: bool,
                 threads: int | None = None) -> dict[str, Any]:
    """:func:`_train` with its wall time; ``threads`` sets torch's CPU threads (a side-by-side child's share)."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    result = _train(source, output, settings, settings.epochs, settings.lr, no_masks=no_masks)
    return {**result, "seconds": time.perf_counter() - start}


def _train_child(send: Any, source: str, output: Path, settings: PipelineSettings, threads: int) -> None:
    """The baseline's side of :func:`train_pair`, in its own process: the result or the error goes back."""
    try:
        send.send(("ok", _train_timed(source, output, settings, no_masks=True, threads=threads)))
    except BaseException as exc:  # noqa: BLE001 - every failure, Ctrl-C included, goes back to the parent
        try:
            send.send(("error", exc))
        except Exception:  # noqa: BLE001 - an error that does not pickle goes back as its text
            send.send(("error", RuntimeError(f"the baseline's fine-tuning failed: {exc}")))
    finally:
        send.close()


def train_pair(injected: Path, folder: Path, settings: PipelineSettings,
               progress: Progress) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fine-tune ERSM (``folder/ersm``) and the baseline (``folder/baseline``) from ``injected``.

    On a CPU with two or more torch threads the two run side by side: the baseline in a child process
    (started by spawn) with half the threads, ERSM here with the rest. Two single-threaded training loops
    get through ~1.3x more steps per second on 2 cores than one loop on both (measured: resnet18, batch 32,
    64 px: 309 ms per step on 2 threads against ~465 ms each for two 1-thread loops at once), and the two
    fine-tunings share nothing but the injected model they start from. Each fine-tuning is still decided by
    its own seed alone; only the thread count differs from running them one after the other, which can
    move the last bits of a float. On CUDA, with one thread, or with ``settings.side_by_side`` off (the
    library's default, ``--one-after-another`` in the CLI), they run one after the other. Spawn imports the
    caller's main module again in the child: a script that calls this needs an ``if __name__ == "__main__":``
    guard (the ``ersm-surgery`` command has one).

    Returns:
        ``(ersm, baseline)``: each ``_train``'s record plus ``seconds`` (its wall time) and ``parallel``.
    """
    import torch

    threads = torch.get_num_threads()
    source = str(injected)
    if _device(settings) != "cpu" or threads < 2 or not settings.side_by_side:
        progress("finetune", f"fine-tuning with ERSM for {settings.epochs} epoch(s)")
        ersm = _train_timed(source, folder / "ersm", settings, no_masks=False)
        progress("baseline", f"fine-tuning the baseline (no masks) for {settings.epochs} epoch(s)")
        baseline = _train_timed(source, folder / "baseline", settings, no_masks=True)
        return {**ersm, "parallel": False}, {**baseline, "parallel": False}
    import multiprocessing

    from ..errors import ErsmError

    progress("finetune", f"fine-tuning with ERSM and the baseline (no masks) side by side for {settings.epochs} "
                         f"epoch(s) ({threads - threads // 2} + {threads // 2} CPU threads)")
    context = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools mid-flight
    receive, send = context.Pipe(duplex=False)
    child = context.Process(target=_train_child, args=(send, source, folder / "baseline", settings, threads // 2),
                            name="ersm-baseline-finetune")
    child.start()
    send.close()  # the child holds the only writer: its death without a word is an EOFError below
    torch.set_num_threads(threads - threads // 2)
    try:
        ersm = _train_timed(source, folder / "ersm", settings, no_masks=False)
    except BaseException:
        child.terminate()  # the user hears of the failure now, not after the baseline's epochs
        child.join()
        raise
    finally:
        torch.set_num_threads(threads)
    try:
        status, payload = receive.recv()
    except EOFError:
        child.join()
        raise ErsmError(f"the baseline's fine-tuning process stopped without a result (exit code {child.exitcode}; "
                        "killed for memory?)", "rerun with --one-after-another (half the peak memory)") from None
    child.join()
    if status == "error":
        raise payload
    baseline = payload
    return {**ersm, "parallel": True}, {**baseline, "parallel": True}


def _device(settings: PipelineSettings) -> str:
    return settings.device or ("cuda" if _cuda() else "cpu")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _base(settings: PipelineSettings, out: Path, num_classes: int,
          progress: Progress) -> tuple[str | None, dict[str, Any]]:
    """Local weights of the trained base model (None with --pretrained: inject downloads them).

    Raises:
        BaseNotLearnedError: the base trained here failed the gate and ``force_base`` is off (nothing injected).
    """
    from .base_training import GateResult, refuse, train_base

    if settings.pretrained_path:
        return settings.pretrained_path, {"source": settings.pretrained_path}
    if settings.pretrained:
        return None, {"source": "timm pretrained weights"}
    # the lr (and without base_epochs the epochs) here are placeholders: the rule sets them with the optimizer,
    # warm-up and augmentation
    config = _config(settings, settings.base_epochs or 1, settings.base_lr or 1e-3, no_masks=True,
                     data_options=settings.base_data_options, base=True)
    record = train_base(settings, config, out / "base", num_classes, lambda line: progress("base", line))
    gate = record["gate"]
    progress("base", f"base top-1 {100 * gate['top1']:.1f}% (chance {100 * gate['chance']:.1f}%, gate "
                     f"{100 * gate['threshold']:.1f}%)")
    info = {"source": "trained here", "folder": str(out / "base"), "best": record["best"], "last": record["last"],
            "top1": gate["top1"], "chance": gate["chance"], "gate": gate, "settings": record["settings"],
            "epochs": record["epochs"], "untrained": not gate["passed"]}
    if not gate["passed"]:
        plan = record["epochs"]
        error = refuse(GateResult(**gate), settings.model, plan["epochs"], settings.img_size, plan.get("train_images"))
        if not settings.force_base:
            raise error
        _log.warning("--force-base: %s; continuing on an untrained base",
                     error.problem.removesuffix("; nothing was injected"))
    return record["weights"], info


def _add_base(results: dict[str, Any], base: dict[str, Any]) -> None:
    """Put the base's accuracy and chance next to the ERSM figures; flag every figure of an untrained base."""
    head: dict[str, Any] = {}
    if base.get("top1") is not None:
        head = {"base.top1": base["top1"], "base.chance": base["chance"]}
    if base.get("untrained"):
        head["base.untrained"] = True
        results.setdefault("notes", []).insert(0, UNTRAINED_NOTE.format(top1=100 * base["top1"],
                                                                        chance=100 * base["chance"]))
    results["summary"] = {**head, **results.get("summary", {})}
    results["base"] = {k: v for k, v in base.items() if k not in ("settings",)}


def _num_classes(settings: PipelineSettings) -> int:
    from ..data import create_dataset

    data = create_dataset(settings.data, split="train", img_size=settings.img_size, seed=settings.seed,
                          **settings.data_options)
    return data.num_classes


def _evaluate(settings: PipelineSettings, ersm: Path, baseline: Path, out: Path, base_info: dict[str, Any],
              progress: Progress) -> tuple[dict[str, Any], torch.Tensor]:
    """Evaluate both models; returns the results and the evaluated images (the export validates on them)."""
    from ..data import create_dataset, resolve_preprocessing
    from ..eval.images import load_images
    from ..eval.outputs import write_evaluation
    from ..eval.runner import EvalSettings, evaluate
    from ..io import load, versions

    model, base = load(ersm), load(baseline)
    # the preprocessing the fine-tuning recorded (both models were fine-tuned on the same data the same way)
    pre = resolve_preprocessing(model, settings.data, img_size=settings.img_size)
    data = create_dataset(settings.data, split="validation", preprocessing=pre, seed=settings.seed,
                          **settings.data_options)
    if settings.boxes:
        from ..data.boxes import attach_boxes

        data = attach_boxes(data, settings.boxes)
    images = load_images(data, settings.num_images, settings.seed)
    progress("evaluate", f"evaluating both models on {len(images)} validation images")
    from ..eval.shift import load_cued_images

    # claim (f): the same images with the spurious cue naming the class (built-in data with a cue only)
    cued = load_cued_images(settings.data, "validation", pre, settings.seed, settings.num_images, settings.data_options)
    result = evaluate(model, images, base, EvalSettings(seed=settings.seed, device=_device(settings)),
                      model_info={"source": str(ersm)}, baseline_info={"source": str(baseline)}, cued=cued)
    result.results["versions"] = {k: str(v) for k, v in versions().items()}
    _add_base(result.results, base_info)
    write_evaluation(result, out)
    return result.results, images.images


def _export(settings: PipelineSettings, out: Path, images: torch.Tensor) -> tuple[dict[str, Any], str | None]:
    """The export step, validated on the first evaluation ``images`` (prepared as the model was fine-tuned);
    a failure is returned as one line, never raised.

    Everything the run made before stays where it is; a file that fails validation is left out of export/,
    the rest of the export (safetensors, card, validation.json) is written all the same.
    """
    from ..errors import ArtifactError, ExportValidationError
    from ..io.export import export
    from ..io.onnx_validation import VALIDATION_IMAGES

    source, target = out / "ersm" / "last", out / "export"
    tolerances = {k: v for k, v in (("rtol", settings.export_rtol), ("atol", settings.export_atol)) if v is not None}
    anyway = f"export anyway with `ersm-surgery export {source} -o {target} --force --no-validate`"
    try:
        return export(source, target, formats=settings.formats, force=True, results=out / "eval" / "results.json",
                      validation_images=images[:VALIDATION_IMAGES], keep_on_failure=True, **tolerances), None
    except ExportValidationError as exc:
        kept = ", ".join(exc.kept) or "nothing"
        line = (f"export {exc.problem}; every earlier step is kept in {out} and export/ holds {kept}; {anyway} "
                f"(or with a larger --rtol)")
        return {"output": str(target), "files": exc.kept, "validation": exc.report, "ok": False, "error": line}, line
    except ArtifactError as exc:  # the exporter itself failed: export/ is unchanged
        line = f"export failed: {exc}; every earlier step is kept in {out}; export with `ersm-surgery export {source}`"
        return {"output": str(target), "files": [], "ok": False, "error": line}, line


def run_pipeline(settings: PipelineSettings, progress: Progress | None = None) -> dict[str, Any]:
    """Run every step; returns a summary (paths, figures, timings) that ``run --json`` prints.

    Raises:
        ErsmError subclasses from each step, before any training where the input is at fault (an unknown
        model, a stage that cannot be masked, missing data): injection is checked first. The export step
        never raises: its failure is the summary's ``export_error`` line (None on success).
    """
    from ..io import check_output_dir
    from ..io.publish import output_lock

    out = check_output_dir(settings.output, settings.force)
    with output_lock(out):  # a second run into the same folder fails at once instead of interleaving
        return _run_steps(settings, out, progress)


def _run_steps(settings: PipelineSettings, out: Path, progress: Progress | None) -> dict[str, Any]:
    from ..api import inject
    from ..io import save

    progress = progress or (lambda step, message: _log.info("%s: %s", step, message))
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    size = (3, settings.img_size, settings.img_size)

    # fail fast: bad settings and a model that cannot be masked stop before any training
    start = time.perf_counter()
    _config(settings, settings.epochs, settings.lr)
    mask = _mask_config(settings)
    num_classes = _num_classes(settings)
    if settings.boxes:  # a bad box file stops the run here, not after the trainings
        from ..data import create_dataset
        from ..data.boxes import attach_boxes

        attach_boxes(create_dataset(settings.data, split="validation", img_size=settings.img_size, seed=settings.seed,
                                    **settings.data_options), settings.boxes)
    inject(settings.model, stages=settings.stages, input_size=size, num_classes=num_classes,
           pretrained=False, config=mask)
    timings["check"] = time.perf_counter() - start

    start = time.perf_counter()
    base_weights, base_info = _base(settings, out, num_classes, progress)
    timings["base"] = time.perf_counter() - start

    start = time.perf_counter()
    progress("inject", f"injecting masks after stages {settings.stages}")
    masked = inject(settings.model, stages=settings.stages, input_size=size, num_classes=num_classes,
                    pretrained=settings.pretrained and base_weights is None, pretrained_path=base_weights, config=mask)
    save(masked, out / "injected", force=True)
    timings["inject"] = time.perf_counter() - start
    if "channels_last" not in settings.finetune:  # the base's memory-format rule, for both fine-tunings alike
        from .base_training import model_traits, prefers_channels_last

        settings = replace(settings, finetune={**settings.finetune,
                                               "channels_last": prefers_channels_last(model_traits(masked))})

    start = time.perf_counter()
    ersm, baseline = train_pair(out / "injected", out, settings, progress)
    timings["finetune"], timings["baseline"] = ersm["seconds"], baseline["seconds"]  # overlapping when side by side

    start = time.perf_counter()
    # the last epochs, not the best: the same number of steps for both, and a choice by val top-1 would
    # favour the first epochs of ERSM, before its masks close (and peek at the evaluation images)
    results, images = _evaluate(settings, out / "ersm" / "last", out / "baseline" / "last", out / "eval", base_info,
                        progress)
    timings["evaluate"] = time.perf_counter() - start

    start = time.perf_counter()
    progress("export", f"exporting as {', '.join(settings.formats)}")
    exported, export_error = _export(settings, out, images)
    if export_error:
        _log.info("%s", export_error)
    timings["export"] = time.perf_counter() - start

    return {
        "settings": {**asdict(settings), "output": str(out)},
        "base": {k: v for k, v in base_info.items() if k != "rows"},
        "ersm": {"folder": ersm["folder"], "last": ersm["last"]},
        "baseline": {"folder": baseline["folder"], "last": baseline["last"]},
        "side_by_side": baseline["parallel"],
        "summary": results.get("summary", {}),
        "results": results,
        "export": exported,
        "export_error": export_error,
        "report": str(out / "eval" / "report.html"),
        "timings": timings,
    }
