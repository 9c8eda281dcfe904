"""Hyper-parameters of one Energy-Mask layer (ERSM, arXiv 2604.06893, section 2 of DESIGN.md)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = ["MaskConfig", "TRAIN_MODES", "EVAL_MODES", "BORDERS", "GATES", "PRICES"]

TRAIN_MODES = ("straight_through", "soft")
EVAL_MODES = ("hard", "soft")
BORDERS = ("zero", "normalise")  # how the pairwise pull treats tokens at the border (energy.mean_field)
# what a stage mask multiplies: its own feature map only, or also every map of the next stage (docs/layer.md)
GATES = ("features", "stage")
PRICES = ("relative", "absolute")  # what alpha is measured in (layers.price)


@dataclass
class MaskConfig:
    """Settings of an Energy-Mask layer.

    Attributes:
        alpha: price of keeping a token (the intrinsic cost in u = alpha - s). Under ``price="relative"``
            (the default) the regularizer charges alpha times the mean magnitude of the task gradient the
            mask sees, so the same alpha means the same on every model and stage (``layers.price``); under
            ``"absolute"`` it charges alpha in units of the loss (recipe versions 1 and 2). The default is
            the one benchmarks/bench_price_robustness.py measured across families (docs/finetune.md).
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
        price: "relative" (alpha is a fraction of the task gradient's scale) or "absolute" (alpha is in
            units of the loss, the behaviour before recipe version 3; a recipe of version 1 or 2 without
            this key reads as "absolute").
    """

    alpha: float = 0.5
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
    price: str = "relative"

    def __post_init__(self) -> None:
        if self.pairwise_args is None:  # "pairwise_args: null" in a recipe
            self.pairwise_args = {}
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        """Every invalid setting, as 'mask.<key>: <reason>' strings (empty when valid)."""
        out = []
        if self.alpha < 0:
            out.append(f"mask.alpha must be >= 0, got {self.alpha}")
        if self.beta < 0:
            out.append(f"mask.beta must be >= 0, got {self.beta}")
        if not self.tau > 0:
            out.append(f"mask.tau must be > 0, got {self.tau}")
        if int(self.steps) != self.steps or self.steps < 0:
            out.append(f"mask.steps must be an integer >= 0, got {self.steps}")
        if self.neighbourhood not in (4, 8):
            out.append(f"mask.neighbourhood must be 4 or 8, got {self.neighbourhood}")
        if self.border not in BORDERS:
            out.append(f"mask.border must be one of {', '.join(BORDERS)}, got {self.border!r}")
        if self.train_mode not in TRAIN_MODES:
            out.append(f"mask.train_mode must be one of {', '.join(TRAIN_MODES)}, got {self.train_mode!r}")
        if self.eval_mode not in EVAL_MODES:
            out.append(f"mask.eval_mode must be one of {', '.join(EVAL_MODES)}, got {self.eval_mode!r}")
        if self.hidden is not None and (int(self.hidden) != self.hidden or self.hidden < 1):
            out.append(f"mask.hidden must be a positive integer or null, got {self.hidden}")
        if self.gate not in GATES:
            out.append(f"mask.gate must be one of {', '.join(GATES)}, got {self.gate!r}")
        if self.price not in PRICES:
            out.append(f"mask.price must be one of {', '.join(PRICES)}, got {self.price!r}")
        if not isinstance(self.pairwise_args, dict):
            out.append(f"mask.pairwise_args must be a mapping, got {self.pairwise_args!r}")
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.gate == "features":  # the default is left out: older readers understand the recipe
            del d["gate"]
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MaskConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown mask setting(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
        return cls(**data)
