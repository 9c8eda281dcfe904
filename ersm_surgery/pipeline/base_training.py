"""The base model of ``run`` and ``reproduce``: settings chosen by rule from the model itself, and a gate.

Masks go into a trained model (DESIGN.md, "collapse"). Without pretrained weights ``run`` trains the
base first, briefly, on the data itself, and every family must learn in that budget: one learning rate
tuned on resnet18 left mobilenetv3 at chance. The settings are therefore read off the model, never
off a table of model names (:func:`model_traits`, :func:`choose_base_settings`):

- the classifier's initial gain ``std(W) * sqrt(fan_in)``: above 1 the fresh head turns unit-variance
  features into large random logits (timm's EfficientNet/MobileNet init scales the head by its
  *output* count, tuned for 1000 classes: with 4 classes it starts with logits of std ~3 and a loss of
  3.3 where log(4) = 1.39), so the head is zeroed and training starts at the uniform prediction;
- the optimizer, through ``timm.optim.create_optimizer_v2``: LAMB for BatchNorm CNNs (timm's own
  from-scratch recipe for them, "ResNet strikes back"), AdamW for LayerNorm/attention models. Adam moves
  every weight by about the learning rate whatever its scale; a layer with no norm after it (mobilenetv3's
  pre-logits ``conv_head``) then changes by a large fraction of itself each step, and mobilenetv3 took
  off at a seed-dependent moment (47% to 89% on three seeds). LAMB scales each layer's step by its weight
  norm (the trust ratio) and took every family tried off in the first epoch (docs/pipeline.md). The
  learning rate (5e-3 at batch 32 for LAMB, 5e-4 for AdamW) is scaled with the square root of the batch
  size (the scaling rule of adaptive optimizers, Malladi et al. 2022);
- warm-up: models normalised by LayerNorm (and attention) get a linear warm-up over a fraction of the
  updates, as every timm recipe for them does; BatchNorm CNNs start at full rate;
- memory format: models with grouped (depthwise included) convolutions train channels-last
  (:func:`prefers_channels_last`); ``run`` keeps that choice for both fine-tunings.

The gate (:func:`base_gate`) then refuses to inject masks into a base that did not learn.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from torch import nn

from ..errors import ErsmError

if TYPE_CHECKING:
    from collections.abc import Callable

    from ..train import FinetuneConfig
    from .run import PipelineSettings

__all__ = ["ModelTraits", "BaseSettings", "BaseNotLearnedError", "GateResult", "model_traits",
           "choose_base_settings", "prefers_channels_last", "zero_head_if_loud", "base_gate", "gate_threshold",
           "refuse", "train_base", "write_settings", "REFERENCE_BATCH", "SETTINGS_FILE"]

_log = logging.getLogger(__name__)

SETTINGS_FILE = "base_settings.json"
# the batch size at which the reference learning rates below were measured (benchmarks/bench_run_families.py)
REFERENCE_BATCH = 32
# BatchNorm CNNs: LAMB at 5e-3, weight decay 0.02 (timm's "ResNet strikes back" A2/A3: lamb 5e-3, wd 0.02 at
# batch 2048; the trust ratio makes the step relative to each layer's norm, so the rate carries over). From
# scratch on the built-in data, 4 epochs at 64 px, three seeds, one thread (docs/pipeline.md): mobilenetv3_large_100
# 98.8-99.8% where AdamW 2e-3 gave 47.0-89.2%; resnet18 and efficientnet_b0 no worse
_BATCHNORM_RECIPE = ("lamb", 5e-3, 0.02)  # optimizer, reference lr at REFERENCE_BATCH, weight decay
# LayerNorm/attention models: AdamW at 5e-4, as timm's own recipes put them an order below BatchNorm CNNs
# (convnext 4e-3 at batch 4096, deit 5e-4 x batch / 512). convnext_atto stays at chance in 4 epochs at 64 px
# (27.0% at 2e-3, 25.6% at 5e-4; bench_run_families.py): the gate stops it
_LAYERNORM_RECIPE = ("adamw", 5e-4, 0.05)
_LAYERNORM_WARMUP = 0.1  # fraction of the base's updates spent warming up LayerNorm/attention models
_LOUD_HEAD_GAIN = 1.0
# one training step at batch 32, 64 px, 2 CPU threads, channels-last over contiguous
# (benchmarks/bench_memory_format.py): mobilenetv3_large_100 1.56x, efficientnet_b0 1.55x, regnetx_002 (grouped)
# 1.45x, convnext_atto 1.05x, resnet18 1.04x (0.97x in another run): oneDNN's grouped and depthwise kernels
# want channels-last, its dense ones do not care
_CHANNELS_LAST_REASON = ("channels-last memory format: {n} grouped or depthwise convolution(s), whose CPU kernels "
                         "run a training step ~1.5x faster channels-last")


class BaseNotLearnedError(ErsmError):
    """The base model trained here stayed near chance: masks would have nothing to select for."""


@dataclass(frozen=True)
class ModelTraits:
    """What the rule reads off a freshly created timm model.

    Attributes:
        params: parameter count.
        norm: the dominant normalisation, ``batch``, ``layer`` (LayerNorm/GroupNorm/RMSNorm) or ``none``.
        depthwise: depthwise convolutions.
        grouped: convolutions with more than one group (the depthwise ones included).
        squeeze_excite: squeeze-and-excitation (or other channel-attention) modules.
        attention: self-attention modules.
        head_gain: ``std(W) * sqrt(fan_in)`` of the classifier: the std of its logits on unit features.
        native_size: the image side of timm's pretrained config (``input_size``), or None.
    """

    params: int
    norm: str
    depthwise: int
    squeeze_excite: int
    attention: int
    head_gain: float
    native_size: int | None
    grouped: int = 0


@dataclass
class BaseSettings:
    """The base-training settings the rule chose, with the reason for each (recorded in the run folder).

    Attributes:
        opt: ``timm.optim.create_optimizer_v2`` name.
        lr: peak learning rate.
        weight_decay: decoupled weight decay.
        warmup_epochs: linear warm-up, in epochs.
        sched: ``timm.scheduler.create_scheduler_v2`` name.
        augment: random resized crop and flip on the train split (the data sets' ``train_augment``).
        zero_head: zero the fresh classifier before training.
        channels_last: channels-last memory format for the model and its inputs.
        reasons: one line per choice.
    """

    opt: str
    lr: float
    weight_decay: float
    warmup_epochs: float
    sched: str
    augment: bool
    zero_head: bool
    channels_last: bool = False
    reasons: list[str] = field(default_factory=list)

    def finetune_keys(self) -> dict[str, Any]:
        """The ``FinetuneConfig`` fields these settings fill."""
        return {"opt": self.opt, "lr": self.lr, "weight_decay": self.weight_decay,
                "warmup_epochs": self.warmup_epochs, "sched": self.sched, "augment": self.augment,
                "channels_last": self.channels_last}


def _is_batchnorm(m: nn.Module) -> bool:
    return isinstance(m, nn.modules.batchnorm._BatchNorm) or "BatchNorm" in type(m).__name__


def _is_layernorm(m: nn.Module) -> bool:
    name = type(m).__name__
    return isinstance(m, (nn.LayerNorm, nn.GroupNorm)) or "LayerNorm" in name or "RmsNorm" in name


def _classifier(model: nn.Module) -> nn.Module | None:
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    return head if isinstance(head, (nn.Linear, nn.Conv2d)) else None


def model_traits(model: nn.Module) -> ModelTraits:
    """Read the traits the rule needs off a model (a timm model, freshly created)."""
    modules = list(model.modules())
    bn = sum(_is_batchnorm(m) for m in modules)
    ln = sum(_is_layernorm(m) for m in modules)
    depthwise = sum(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels for m in modules)
    grouped = sum(isinstance(m, nn.Conv2d) and m.groups > 1 for m in modules)
    # timm's channel attention: SqueezeExcite (efficientnet/mobilenet), SEModule, EffectiveSEModule, EcaModule
    se = sum(any(k in type(m).__name__ for k in ("SqueezeExcite", "SEModule", "EcaModule")) for m in modules)
    attention = sum(type(m).__name__.endswith("Attention") for m in modules)
    head = _classifier(model)
    gain = 0.0
    if head is not None and head.weight.numel():
        fan_in = head.weight[0].numel()
        gain = float(head.weight.detach().float().std()) * math.sqrt(fan_in)
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    size = cfg.get("input_size")
    norm = "batch" if bn > ln else "layer" if ln else "none"
    return ModelTraits(params=sum(p.numel() for p in model.parameters()), norm=norm, depthwise=depthwise,
                       squeeze_excite=se, attention=attention, head_gain=round(gain, 4),
                       native_size=int(size[-1]) if size else None, grouped=grouped)


def choose_base_settings(traits: ModelTraits, batch_size: int, epochs: int) -> BaseSettings:
    """The base-training settings for a model with ``traits`` (the rule of the module docstring).

    Args:
        traits: from :func:`model_traits`.
        batch_size: images per update.
        epochs: base-training epochs.
    """
    reasons = []
    layer_norm = traits.norm != "batch" or traits.attention > 0
    opt, reference, weight_decay = _LAYERNORM_RECIPE if layer_norm else _BATCHNORM_RECIPE
    lr = reference * math.sqrt(batch_size / REFERENCE_BATCH)
    reasons.append(f"opt {opt}, lr {lr:.3g}: {reference:g} at batch {REFERENCE_BATCH} for a "
                   f"{'LayerNorm/attention model' if layer_norm else 'BatchNorm CNN'}, scaled by "
                   f"sqrt({batch_size}/{REFERENCE_BATCH}) (square-root rule of adaptive optimizers)")
    if not layer_norm:
        reasons.append("lamb, not adamw: its trust ratio makes each layer's step relative to the layer's norm, so "
                       "layers without a norm after them (a pre-logits conv) do not swing at the start")
    warmup = 0.0
    if layer_norm:
        warmup = round(_LAYERNORM_WARMUP * epochs, 3)
        reasons.append(f"warm-up {warmup:g} epoch(s): normalised by {traits.norm}norm"
                       f"{' with attention' if traits.attention else ''}, which trains unstably at full rate "
                       "from the first update")
    else:
        reasons.append("no warm-up: BatchNorm keeps the first updates' activations in scale")
    zero_head = traits.head_gain > _LOUD_HEAD_GAIN
    if zero_head:
        reasons.append(f"classifier zeroed: its initial gain {traits.head_gain:.2f} > {_LOUD_HEAD_GAIN:g} would start "
                       "from large random logits instead of the uniform prediction")
    channels_last = prefers_channels_last(traits)
    if channels_last:
        reasons.append(_CHANNELS_LAST_REASON.format(n=traits.grouped))
    reasons.append(f"weight decay {weight_decay:g} (decoupled; not on norms and biases), cosine schedule")
    reasons.append("no augmentation: each image is seen only a few times, so there is nothing to memorise")
    return BaseSettings(opt=opt, lr=lr, weight_decay=weight_decay, warmup_epochs=warmup, sched="cosine", augment=False,
                        zero_head=zero_head, channels_last=channels_last, reasons=reasons)


def prefers_channels_last(traits: ModelTraits) -> bool:
    """Whether a model trains faster channels-last: it has grouped convolutions (the measurement above)."""
    return traits.grouped > 0


def zero_head_if_loud(model: nn.Module, settings: BaseSettings) -> None:
    """Zero the classifier's weights and bias when the settings say so (the uniform prediction at start)."""
    head = _classifier(model)
    if not settings.zero_head or head is None:
        return
    nn.init.zeros_(head.weight)
    if head.bias is not None:
        nn.init.zeros_(head.bias)


@dataclass
class GateResult:
    """The gate's verdict on a trained base.

    Attributes:
        top1: the base's best validation top-1 (the weights that are injected).
        chance: 1 / number of classes.
        threshold: the top-1 the base needs.
        images: validation images behind ``top1``.
        passed: ``top1 >= threshold``.
        rule: the rule in words.
    """

    top1: float
    chance: float
    threshold: float
    images: int
    passed: bool
    rule: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gate_threshold(num_classes: int, images: int) -> float:
    """The validation top-1 a base needs: clearly above chance, and beyond the noise of the split.

    ``max(min(2c, c + (1 - c) / 4), c + 3 sqrt(c (1 - c) / n))`` with chance ``c = 1 / num_classes``: twice
    chance, or a quarter of the way from chance to 100% where twice chance is out of reach (2 classes:
    62.5%; 4 classes: 43.75%; 10 classes: 20%), and at least three standard errors of a chance-level
    classifier on ``n`` validation images above chance, so a small split cannot pass by luck.
    """
    c = 1.0 / max(2, int(num_classes))
    noise = c + 3.0 * math.sqrt(c * (1.0 - c) / max(1, int(images)))
    return max(min(2.0 * c, c + (1.0 - c) / 4.0), noise)


def base_gate(top1: float, num_classes: int, images: int) -> GateResult:
    """Judge a trained base (``top1`` as a fraction in [0, 1])."""
    chance = 1.0 / max(2, int(num_classes))
    threshold = gate_threshold(num_classes, images)
    rule = ("best validation top-1 >= max(min(2 x chance, chance + (1 - chance) / 4), chance + 3 standard errors "
            "of chance on the validation images)")
    return GateResult(top1=float(top1), chance=chance, threshold=threshold, images=int(images),
                      passed=float(top1) >= threshold, rule=rule)


def refuse(gate: GateResult, model: str, epochs: int, img_size: int,
           pictures: int | None = None) -> BaseNotLearnedError:
    """The one-line stop of ``run``/``reproduce`` when the gate fails (``pictures``: unique train pictures
    when the time budget chose them)."""
    of = f" of {pictures} pictures" if pictures else ""
    return BaseNotLearnedError(
        f"the base {model} did not learn: best validation top-1 {100 * gate.top1:.1f}% after {epochs} epoch(s){of} "
        f"(chance {100 * gate.chance:.1f}%, needs {100 * gate.threshold:.1f}%); nothing was injected",
        f"try more --base-epochs (now {epochs}), a larger --img-size (now {img_size}) or trained weights with "
        "--pretrained-path; --force-base continues anyway and marks every figure",
    )


def write_settings(folder: Path, record: dict[str, Any]) -> Path:
    """Write ``base_settings.json`` (traits, settings, reasons, gate) atomically into the base's folder."""
    from ..eval.results import to_jsonable
    from ..io.atomic import atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / SETTINGS_FILE
    atomic_write_text(path, json.dumps(to_jsonable(record), indent=2) + "\n")
    return path


def train_base(settings: PipelineSettings, config: FinetuneConfig, folder: Path, num_classes: int,
               announce: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train ``settings.model`` from random initialisation with the rule's settings; judge it with the gate.

    Args:
        settings: the pipeline's settings (model, batch size, base epochs, an optional ``base_lr`` override);
            ``base_epochs`` None fits the count to the time budget (:mod:`.base_budget`).
        config: the base's ``FinetuneConfig`` before the rule fills opt, lr, weight decay, warm-up, augment
            and, with the budget, epochs.
        folder: the base's run folder (``model.safetensors`` there is the best epoch).
        num_classes: classes of the data.
        announce: called once with a line saying how many epochs the base trains and why.

    Returns:
        ``{"weights", "traits", "settings", "epochs", "config", "best", "last", "gate"}``;
        ``base_settings.json`` in ``folder`` holds the same.
    """
    import dataclasses

    import torch

    from ..train import build_datasets, fit, load_source, seed_everything
    from .base_budget import MIN_EPOCHS, measure_epoch_seconds, measure_read_seconds, plan_epochs

    seed_everything(config.seed, 0)  # the initialisation finetune() would give the same model
    model, _ = load_source(settings.model, num_classes=num_classes)
    traits = model_traits(model)
    chosen = choose_base_settings(traits, config.batch_size, config.epochs)
    train_set, val_set = build_datasets(dataclasses.replace(config, **chosen.finetune_keys()), config.img_size)
    device = torch.device(settings.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if settings.base_epochs is None:
        seconds = measure_epoch_seconds(model, config.batch_size, config.img_size, len(train_set), len(val_set),
                                        chosen.channels_last, device, opt=chosen.opt)
        # the built-in data take their train size as an option: they can draw more pictures, and draw each once
        # (later epochs read it from their cache); an image folder decodes every picture every epoch
        grows = "train_size" in config.data_options
        seconds += measure_read_seconds(train_set) * len(train_set) / (MIN_EPOCHS if grows else 1)
        plan = plan_epochs(None, seconds, len(train_set) if grows else None)
        chosen = choose_base_settings(traits, config.batch_size, plan.epochs)  # the warm-up follows the count
        if plan.train_images is not None and plan.train_images != len(train_set):
            config = dataclasses.replace(config, data_options={**config.data_options,
                                                               "train_size": plan.train_images})
            train_set, val_set = build_datasets(dataclasses.replace(config, **chosen.finetune_keys()),
                                                config.img_size)
    else:
        plan = plan_epochs(settings.base_epochs)
    chosen.reasons.insert(0, plan.reason)
    if settings.base_lr is not None:
        chosen.lr = float(settings.base_lr)
        chosen.reasons.append(f"lr {chosen.lr:g} given by the caller (base_lr), not by the rule")
    zero_head_if_loud(model, chosen)
    config = dataclasses.replace(config, epochs=plan.epochs, **chosen.finetune_keys())
    _log.info("base settings for %s: %s", settings.model, "; ".join(chosen.reasons))
    if announce is not None:
        announce(f"training {settings.model} from random initialisation for {plan.reason}")
    result = fit(model.to(device), train_set, val_set, config, folder,
                 run_args={"source": settings.model, "base_rule": asdict(chosen), "base_epochs": plan.to_dict()})
    best, last = dict(result.best), dict(result.rows[-1]) if result.rows else {}
    gate = base_gate(best.get("val_top1", 0.0) / 100.0, train_set.num_classes, len(val_set))
    record = {"model": settings.model, "traits": asdict(traits), "settings": asdict(chosen),
              "epochs": plan.to_dict(), "config": config.to_dict(), "best": best, "last": last,
              "gate": gate.to_dict(), "weights": str(folder / "model.safetensors")}
    write_settings(folder, record)
    return record
