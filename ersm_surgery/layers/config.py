"""Hyper-parameters of one Energy-Mask layer (ERSM, arXiv 2604.06893, section 2 of DESIGN.md)."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["MaskConfig", "MAX_STEPS", "TRAIN_MODES", "EVAL_MODES", "BORDERS", "GATES", "GATE_POOLS", "PRICES",
           "NORM_PRIOR_STATS", "NORM_PRIOR_ZEROS"]

TRAIN_MODES = ("straight_through", "soft")
EVAL_MODES = ("hard", "soft")
BORDERS = ("zero", "normalise")  # how the pairwise pull treats tokens at the border (energy.mean_field)
# what a stage mask multiplies: its own feature map only, or also every map of the next stage (docs/layer.md)
GATES = ("features", "stage")
GATE_POOLS = ("sample", "any")  # how a gating mask is taken to the coarser grids of its stage (layers.gate)
PRICES = ("relative", "absolute")  # what alpha is measured in (layers.price)
NORM_PRIOR_STATS = ("image", "running")  # what the magnitude prior standardises a token's log norm by (layers.heads)
NORM_PRIOR_ZEROS = ("skip", "count")  # whether the prior's statistics count tokens that are exactly zero
# Mean-field converges in a handful of steps (default 3); each step is one 3x3 convolution per mask and
# forward, kept in memory for the backward. 100 is ~30x what any setting needs and still finishes, while
# an unbounded value (steps: 1e20) would hang injection's function-preservation check.
MAX_STEPS = 100


def _is_int(v: Any) -> bool:
    # a float that happens to be whole (3.0 from JSON) is accepted; bool is not a number here
    return not isinstance(v, bool) and (isinstance(v, int) or (isinstance(v, float) and v.is_integer()))


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass
class MaskConfig:
    """Settings of an Energy-Mask layer.

    Attributes:
        alpha: price of keeping a token (the intrinsic cost in u = alpha - s). Under ``price="absolute"``
            (the default) the regularizer charges alpha in units of the loss; 0.2 is the price
            benchmarks/bench_finetune.py measured on a trained resnet18. Under ``"relative"`` it charges alpha
            times the mean magnitude of the task gradient the mask sees (``layers.price``; docs/finetune.md).
        beta: strength of the Potts coherence term.
        tau: temperature of the mean-field sigmoids.
        steps: number of unrolled mean-field updates T.
        neighbourhood: 4 or 8.
        border: "zero" (the Potts energy on the grid: border tokens have fewer neighbours) or "normalise"
            (each token's pairwise pull scaled by K / its neighbours, so border tokens are not ranked as
            less important for their position); see ``layers.energy.mean_field``.
        train_mode: "straight_through" (hard forward, soft gradient) or "soft" (X * q).
        eval_mode: "hard" (X * 1[e < 0]) or "soft" (X * q).
        hidden: width of the unary head; None picks it from the channel count and the 1% budget.
        global_context: add a per-image term from globally pooled features to the importance.
        init_logit: q0 = sigmoid(init_logit) at initialisation, so the mask starts open.
        head: registered unary head ("conv" is built in).
        pairwise: registered pairwise term ("potts" is built in: w_ij = 1).
        pairwise_args: settings of the pairwise term, read by its factory (e.g. ``{sigma: 0.5}`` for
            the edge-aware plugin's term); empty for "potts".
        gate: "features" (the mask multiplies the map it follows) or "stage" (a stage mask also
            multiplies every intermediate map of the next stage, so that stage can be computed on the
            kept tokens alone; see ``layers.gate`` and ``ersm_surgery.sparse``). Left out of a
            recipe when "features", so recipes written before the setting existed keep their meaning.
        gate_pool: under ``gate="stage"``, how the mask is taken to a coarser grid of the gated stage:
            "sample" (the default, and the only rule before recipe version 4: a coarse token is computed when
            the token the strided op centres on is kept) or "any" (when any token of its stride block is:
            more accuracy under fine-tuning, fewer tokens saved). See ``layers.gate``. Written into every
            gated recipe of version 4; left out under "features".
        norm_prior: start weight of the magnitude prior of the built-in head: its score gains ``norm_prior``
            times each token's log feature norm, standardised over the image (clamped to +-3), so the tokens
            a mask gives up first are the weakest of their image (``heads.relative_log_norm``). The weight is
            learned with the head. 0 (the default; recipes written before it existed): no prior and no
            parameter. Left out of a recipe when 0.
        norm_prior_stats: what the prior standardises a token's log norm by: "image" (the default, and the only
            rule before recipe version 5: its own picture's mean and std, so the prior ranks tokens within a
            picture and a mask led by it keeps about the same share of each) or "running" (the data's: the
            batch's statistics in training, running averages in evaluation, as BatchNorm; a picture with more
            strong tokens than usual keeps more; ``heads.RunningLogNorm``, three buffers a mask). Left out of
            a recipe when "image".
        norm_prior_zeros: whether the prior's statistics count the tokens that are exactly zero, which only a
            gated stage's output has (``gate="stage"``: zero where it computed nothing): "skip" (the default since
            recipe version 6: they sit at the prior's floor and are left out of the mean and variance, which
            they would widen, squeezing the computed tokens' standardised norms together) or "count" (what a
            gated recipe with a prior meant before version 6). Left out of a recipe when "skip".
        price: "absolute" (alpha is in units of the loss; the only price before recipe version 3, so a
            recipe of version 1 or 2 reads as "absolute") or "relative" (alpha is a fraction of the task
            gradient's scale).
    """

    alpha: float = 0.2
    beta: float = 0.25
    tau: float = 1.0
    steps: int = 3
    neighbourhood: int = 4
    border: str = "zero"
    train_mode: str = "straight_through"
    eval_mode: str = "hard"
    hidden: int | None = None
    global_context: bool = False
    init_logit: float = 3.0
    head: str = "conv"
    pairwise: str = "potts"
    pairwise_args: dict[str, Any] = field(default_factory=dict)
    gate: str = "features"
    gate_pool: str = "sample"
    price: str = "absolute"
    norm_prior: float = 0.0
    norm_prior_stats: str = "image"
    norm_prior_zeros: str = "skip"

    def __post_init__(self) -> None:
        if self.pairwise_args is None:  # "pairwise_args: null" in a recipe
            self.pairwise_args = {}
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))
        self.steps = int(self.steps)  # 3.0 from a JSON writer is 3; range() needs the int
        if self.hidden is not None:
            self.hidden = int(self.hidden)

    def problems(self) -> list[str]:
        """Every invalid setting, as 'mask.<key>: <reason>' strings (empty when valid).

        Types are checked before ranges, so a recipe with ``alpha: "x"`` gets a line naming the key instead
        of Python's comparison error; numbers must be finite (a NaN price makes every token's energy NaN,
        and the hard mask then drops every token for every input).
        """
        out = []

        def need(ok: bool, key: str, rule: str) -> None:
            if not ok:
                out.append(f"mask.{key} {rule}, got {getattr(self, key)!r}")

        for key, low, strict in (("alpha", 0, False), ("beta", 0, False), ("tau", 0, True)):
            v = getattr(self, key)
            need(_is_num(v) and (v > low if strict else v >= low), key,
                 f"must be {'>' if strict else '>='} {low} (a finite number)")
        need(_is_num(self.init_logit), "init_logit", "must be a finite number")
        need(_is_num(self.norm_prior), "norm_prior", "must be a finite number (0: no prior)")
        need(_is_int(self.steps) and 0 <= self.steps <= MAX_STEPS, "steps", f"must be an integer in [0, {MAX_STEPS}]")
        need(_is_int(self.neighbourhood) and self.neighbourhood in (4, 8), "neighbourhood", "must be 4 or 8")
        for key, choices in (("border", BORDERS), ("train_mode", TRAIN_MODES), ("eval_mode", EVAL_MODES),
                             ("gate", GATES), ("gate_pool", GATE_POOLS), ("price", PRICES),
                             ("norm_prior_stats", NORM_PRIOR_STATS), ("norm_prior_zeros", NORM_PRIOR_ZEROS)):
            need(getattr(self, key) in choices, key, f"must be one of {', '.join(choices)}")
        need(self.hidden is None or (_is_int(self.hidden) and self.hidden >= 1), "hidden",
             "must be a positive integer or null")
        need(isinstance(self.global_context, bool), "global_context", "must be true or false")
        for key in ("head", "pairwise"):
            need(isinstance(getattr(self, key), str) and bool(getattr(self, key)), key, "must be a registered name")
        need(isinstance(self.pairwise_args, dict), "pairwise_args", "must be a mapping")
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.gate == "features":  # the default is left out: older readers understand the recipe
            del d["gate"], d["gate_pool"]
        if self.norm_prior == 0:
            del d["norm_prior"]
        if self.norm_prior_stats == "image":
            del d["norm_prior_stats"]
        if self.norm_prior_zeros == "skip":
            del d["norm_prior_zeros"]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MaskConfig:
        check_known_keys(cls, data, "mask setting(s)")
        return cls(**data)


def check_known_keys(cls: type, data: dict[str, Any], what: str) -> None:
    """Raise ValueError naming every key of ``data`` that is not a field of the dataclass ``cls``."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {what} {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
