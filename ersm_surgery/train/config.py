"""Fine-tuning settings: one dataclass, validated at once, merged from a recipe, --set and the flags.

The names follow timm's train.py where a setting means the same (``epochs``, ``batch_size``, ``lr``,
``opt``, ``sched``, ``warmup_epochs``, ``weight_decay``, ``amp``, ``grad_accum_steps``, ...). The ERSM
settings are ``gamma`` (final weight of the energy regularizer), ``gamma_warmup`` (fraction of the
updates over which gamma ramps up from 0), ``tau_end`` (anneal the mean-field temperature from
``mask.tau`` to it) and ``mask_lr_scale`` (the mask layers' learning rate relative to ``lr``). The
price ``alpha``, ``beta``, ``tau``, the mean-field steps and the train mode are the model's
``mask.*`` settings (see :class:`~ersm_surgery.layers.MaskConfig`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import RecipeError

__all__ = ["FinetuneConfig", "RECORD_KEYS", "MASK_FLAGS"]

# keys that a finished run records in recipe.finetune next to the settings (never settings themselves)
RECORD_KEYS = ("label_names", "result", "data_description")

# command-line flag -> mask.* key of the recipe
MASK_FLAGS = {"alpha": "alpha", "beta": "beta", "tau": "tau", "mf_steps": "steps", "mask_mode": "train_mode"}


@dataclass
class FinetuneConfig:
    """Every fine-tuning setting (recorded in ``recipe.finetune`` and ``args.yaml``).

    Attributes:
        data: ``"builtin:clutter"`` or a directory with ``train/`` and ``validation/`` (timm's layout).
        data_options: more ``create_dataset`` arguments (``size``, ``num_classes`` for builtin:clutter;
            ``train_size`` sets ``size`` of the train split only).
        epochs: epochs of the schedule.
        batch_size: images per process and step.
        lr: base learning rate.
        opt: ``timm.optim.create_optimizer_v2`` name.
        momentum: for SGD-like optimizers.
        weight_decay: decoupled or L2 decay of the backbone's weights (never of biases, norms, masks).
        sched: ``timm.scheduler.create_scheduler_v2`` name (``cosine``, ``step``, ``constant``, ``none``...).
        warmup_epochs: linear lr warm-up, in epochs (fractions allowed: the schedule runs per update).
        warmup_lr: lr at the start of the warm-up.
        min_lr: lr floor of decaying schedules.
        clip_grad: clip the gradient norm to this value (None: no clipping).
        amp: mixed precision (float16 with a grad scaler on CUDA, bfloat16 on CPU).
        grad_accum_steps: micro-batches per optimizer update.
        img_size: image side (None: the size the model was injected at).
        workers: DataLoader worker processes.
        seed: seed of the data order, the augmentation and the initialisation of a reset head.
        augment: timm's training transform on the train split (else the evaluation transform).
        strict_data: stop on an unreadable image instead of skipping and counting it.
        freeze_backbone: train only the mask layers and the classifier.
        num_classes: reset the classifier to this many classes (None: keep the model's head).
        gamma: final weight of the energy regularizer (loss = CE + gamma(t) * R).
        gamma_warmup: fraction of the updates over which gamma ramps linearly from 0.
        tau_end: anneal tau linearly from mask.tau to this value over the run (None: constant).
        mask_lr_scale: learning rate of the mask layers relative to ``lr``.
        loss_brake: the tolerated relative rise of the task loss over its value in the first updates; gamma
            is eased off linearly as the running task loss climbs towards ``(1 + loss_brake)`` times it, and
            is off beyond (``train.loss_brake``). None: no brake (the behaviour before it existed).
        mask_freeze: the fraction of the updates after which the mask layers stop learning (their parameters
            get no more updates; the masks keep deciding per image with what they learned while the backbone
            and classifier adapt to them, ``train.loop``). None: they learn to the end (the behaviour before
            it existed).
        mask_updates: the most optimizer updates the masks learn for: their phase (the price's ramp and
            ``mask_freeze``) ends after at most this many updates, however many the run has. The density the
            masks reach is set by how many updates they get, not by an equilibrium (docs/finetune.md), so a
            fixed count keeps it when the data set or the epochs grow. None: fractions only (the behaviour
            before it existed).
        mask_pull: the weight of a pull of the mask layers towards the values they started the run with, added
            to the loss as ``mask_pull * sum ||theta - theta_0||^2`` (``train.mask_pull``): a restoring force that
            grows as the masks move, so they settle where it balances the price instead of closing for as long
            as they learn. None or 0: no pull (the behaviour before it existed).
        no_masks: baseline: strip the masks and train the base model with the same loop.
        mean: normalisation mean (None: the recorded one, else the model's pretrained config).
        std: normalisation std (None: as ``mean``).
        interpolation: resize filter (None: as ``mean``).
        crop_pct: evaluation crop fraction (None: as ``mean``; 1.0 for built-in data).
        aa: timm auto-augment policy of the training transform (needs ``augment``).
        smoothing: label smoothing (timm's LabelSmoothingCrossEntropy; in the mixed targets with mixup).
        mixup: mixup alpha (timm's Mixup; 0 is off).
        cutmix: cutmix alpha (timm's Mixup; 0 is off).
        model_ema: keep an exponential moving average of the weights (timm's ModelEmaV3); the EMA weights
            are the ones validated and saved.
        model_ema_decay: the EMA's decay per update.
        drop_path: stochastic depth rate (timm's ``drop_path_rate``; the model is rebuilt with it and the
            rate is recorded in ``recipe.model_kwargs``).
        channels_last: channels-last memory format for the model and its inputs.
        amp_dtype: ``float16`` or ``bfloat16`` under ``amp`` (None: float16 on CUDA, bfloat16 on CPU).
    """

    data: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 5
    batch_size: int = 64
    lr: float = 3e-4
    opt: str = "adamw"
    momentum: float = 0.9
    weight_decay: float = 0.05
    sched: str = "cosine"
    warmup_epochs: float = 0.0
    warmup_lr: float = 1e-6
    min_lr: float = 0.0
    clip_grad: float | None = None
    amp: bool = False
    grad_accum_steps: int = 1
    img_size: int | None = None
    workers: int = 2
    seed: int = 42
    augment: bool = False
    strict_data: bool = False
    freeze_backbone: bool = False
    num_classes: int | None = None
    gamma: float = 1.0
    gamma_warmup: float = 0.5
    tau_end: float | None = None
    mask_lr_scale: float = 10.0
    loss_brake: float | None = None
    mask_freeze: float | None = None
    mask_updates: int | None = None
    mask_pull: float | None = None
    no_masks: bool = False
    mean: list[float] | None = None
    std: list[float] | None = None
    interpolation: str | None = None
    crop_pct: float | None = None
    aa: str | None = None
    smoothing: float = 0.0
    mixup: float = 0.0
    cutmix: float = 0.0
    model_ema: bool = False
    model_ema_decay: float = 0.9998
    drop_path: float | None = None
    channels_last: bool = False
    amp_dtype: str | None = None

    @property
    def mixes(self) -> bool:
        """Whether mixup or cutmix is on (the loss then takes soft targets)."""
        return self.mixup > 0 or self.cutmix > 0

    def problems(self) -> list[str]:
        """Every invalid setting as ``finetune.<key>: <reason>`` (empty when valid)."""
        out = []

        def need(ok: bool, key: str, rule: str) -> None:
            if not ok:
                out.append(f"finetune.{key} {rule}, got {getattr(self, key)!r}")

        def is_int(v: Any) -> bool:
            return isinstance(v, int) and not isinstance(v, bool)

        def is_num(v: Any) -> bool:  # finite: an inf lr or a NaN gamma trains nothing and says nothing
            return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

        need(self.data is None or isinstance(self.data, str), "data", "must be a path or builtin:<name>")
        need(isinstance(self.data_options, dict), "data_options", "must be a mapping")
        for key in ("epochs", "batch_size", "grad_accum_steps"):
            need(is_int(getattr(self, key)) and getattr(self, key) >= 1, key, "must be an integer >= 1")
        for key in ("workers", "seed"):
            need(is_int(getattr(self, key)) and getattr(self, key) >= 0, key, "must be an integer >= 0")
        need(is_num(self.lr) and self.lr > 0, "lr", "must be > 0")
        for key in ("momentum", "weight_decay", "warmup_epochs", "warmup_lr", "min_lr", "gamma", "gamma_warmup"):
            need(is_num(getattr(self, key)) and getattr(self, key) >= 0, key, "must be a number >= 0")
        need(is_num(self.gamma_warmup) and self.gamma_warmup <= 1, "gamma_warmup", "must be a fraction in [0, 1]")
        need(is_num(self.mask_lr_scale) and self.mask_lr_scale > 0, "mask_lr_scale", "must be > 0")
        need(self.clip_grad is None or (is_num(self.clip_grad) and self.clip_grad > 0), "clip_grad", "must be > 0")
        need(self.tau_end is None or (is_num(self.tau_end) and self.tau_end > 0), "tau_end", "must be > 0")
        need(self.loss_brake is None or (is_num(self.loss_brake) and self.loss_brake > 0), "loss_brake",
             "must be > 0 (or null: no brake)")
        need(self.mask_freeze is None or (is_num(self.mask_freeze) and 0 <= self.mask_freeze <= 1), "mask_freeze",
             "must be a fraction in [0, 1] (or null: the masks learn to the end)")
        need(self.mask_updates is None or (is_int(self.mask_updates) and self.mask_updates >= 1), "mask_updates",
             "must be an integer >= 1 (or null: the masks' phase is set by the fractions alone)")
        need(self.mask_pull is None or (is_num(self.mask_pull) and self.mask_pull >= 0), "mask_pull",
             "must be a number >= 0 (or null: no pull)")
        need(self.img_size is None or (is_int(self.img_size) and self.img_size >= 8), "img_size", "must be >= 8")
        need(self.num_classes is None or (is_int(self.num_classes) and self.num_classes >= 1), "num_classes",
             "must be a positive integer")
        need(isinstance(self.opt, str) and bool(self.opt), "opt", "must be a timm optimizer name")
        need(isinstance(self.sched, str) and bool(self.sched), "sched", "must be a timm scheduler name")
        for key in ("amp", "augment", "strict_data", "freeze_backbone", "no_masks", "model_ema", "channels_last"):
            need(isinstance(getattr(self, key), bool), key, "must be true or false")
        for key in ("mean", "std"):
            value = getattr(self, key)
            need(value is None or (isinstance(value, (list, tuple)) and len(value) > 0 and all(map(is_num, value))),
                 key, "must be a list of numbers, one per channel")
        need(self.interpolation is None or isinstance(self.interpolation, str), "interpolation",
             "must be a resize filter name (bilinear, bicubic, ...)")
        need(self.crop_pct is None or (is_num(self.crop_pct) and 0 < self.crop_pct <= 1), "crop_pct",
             "must be in (0, 1]")
        need(self.aa is None or (isinstance(self.aa, str) and bool(self.aa)), "aa", "must be a timm policy string")
        need(self.aa is None or self.augment is True, "aa", "needs finetune.augment (--augment): auto-augment is "
             "part of the training transform")
        for key in ("mixup", "cutmix"):
            need(is_num(getattr(self, key)) and getattr(self, key) >= 0, key, "must be an alpha >= 0 (0 is off)")
        need(is_num(self.smoothing) and 0 <= self.smoothing < 1, "smoothing", "must be in [0, 1)")
        need(is_num(self.model_ema_decay) and 0 < self.model_ema_decay < 1, "model_ema_decay", "must be in (0, 1)")
        need(self.drop_path is None or (is_num(self.drop_path) and 0 <= self.drop_path < 1), "drop_path",
             "must be in [0, 1)")
        need(self.amp_dtype in (None, "float16", "bfloat16"), "amp_dtype", "must be float16 or bfloat16")
        if self.mixes and is_int(self.batch_size):
            need(self.batch_size % 2 == 0, "batch_size", "must be even with mixup/cutmix (timm's Mixup pairs images)")
        return out

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_sources(cls, *sources: dict[str, Any], strict: tuple[bool, ...] | None = None) -> FinetuneConfig:
        """Merge mappings (later ones win) into a validated config; record keys are ignored.

        Args:
            *sources: ``finetune`` mappings, lowest priority first.
            strict: per source, whether an unknown key is an error (a recorded recipe is read leniently).

        Raises:
            RecipeError: unknown keys in a strict source, or invalid values; every problem in one message.
        """
        known = set(cls.keys())
        strict = strict or (True,) * len(sources)
        merged: dict[str, Any] = {}
        unknown: list[str] = []
        for source, is_strict in zip(sources, strict, strict=True):
            for key, value in (source or {}).items():
                if key in known:
                    merged[key] = value
                elif is_strict and key not in RECORD_KEYS:
                    unknown.append(f"finetune.{key}")
        config = cls(**merged)
        problems = [f"unknown setting(s) {', '.join(sorted(set(unknown)))}"] if unknown else []
        problems += config.problems()
        if problems:
            raise RecipeError("invalid fine-tuning settings: " + "; ".join(problems),
                              f"valid finetune.* keys: {', '.join(sorted(known))} (see docs/finetune.md)")
        if isinstance(config.data_options, dict):
            config.data_options = dict(config.data_options)
        for key in ("lr", "momentum", "weight_decay", "warmup_epochs", "warmup_lr", "min_lr", "gamma",
                    "gamma_warmup", "mask_lr_scale"):
            setattr(config, key, float(getattr(config, key)))
        for key in ("smoothing", "mixup", "cutmix", "model_ema_decay"):
            setattr(config, key, float(getattr(config, key)))
        for key in ("clip_grad", "tau_end", "crop_pct", "drop_path", "loss_brake", "mask_freeze",
                    "mask_pull"):
            if getattr(config, key) is not None:
                setattr(config, key, float(getattr(config, key)))
        for key in ("mean", "std"):
            if getattr(config, key) is not None:
                setattr(config, key, [float(v) for v in getattr(config, key)])
        return config
