"""Unary importance heads s = h(X) and pairwise terms w_ij for the Energy-Mask layer.

Both are looked up by name, so a plugin can add its own with :func:`register_unary_head` or
:func:`register_pairwise`; the built-ins register the same way.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .config import MaskConfig
from .energy import _tracing

__all__ = [
    "ConvUnaryHead",
    "PottsPairwise",
    "register_unary_head",
    "register_pairwise",
    "unregister_unary_head",
    "unregister_pairwise",
    "list_unary_heads",
    "list_pairwise",
    "get_unary_head",
    "get_pairwise",
    "create_unary_head",
    "create_pairwise",
    "auto_hidden",
    "log_norm",
    "relative_log_norm",
    "RunningLogNorm",
]

UnaryHeadFactory = Callable[[int, int, MaskConfig], nn.Module]
PairwiseFactory = Callable[[int, MaskConfig], nn.Module]

_UNARY_HEADS: dict[str, UnaryHeadFactory] = {}
_PAIRWISE: dict[str, PairwiseFactory] = {}


def _register(table: dict, kind: str, name: str, factory: Callable) -> Callable:
    if name in table and table[name] is not factory:
        raise ValueError(f"{kind} {name!r} is already registered; choose another name")
    table[name] = factory
    return factory


def register_unary_head(name: str) -> Callable[[UnaryHeadFactory], UnaryHeadFactory]:
    """Decorator: register ``factory(channels, hidden, config) -> nn.Module`` mapping X to (B, 1, H, W)."""
    return lambda factory: _register(_UNARY_HEADS, "unary head", name, factory)


def register_pairwise(name: str) -> Callable[[PairwiseFactory], PairwiseFactory]:
    """Decorator: register ``factory(channels, config) -> nn.Module`` mapping X to w (B, K, H, W) or None."""
    return lambda factory: _register(_PAIRWISE, "pairwise term", name, factory)


def unregister_unary_head(name: str) -> UnaryHeadFactory | None:
    """Remove the unary head ``name``; return its factory, or None when nothing was registered under it."""
    return _UNARY_HEADS.pop(name, None)


def unregister_pairwise(name: str) -> PairwiseFactory | None:
    """Remove the pairwise term ``name``; return its factory, or None when nothing was registered under it."""
    return _PAIRWISE.pop(name, None)


def list_unary_heads() -> list[str]:
    return sorted(_UNARY_HEADS)


def list_pairwise() -> list[str]:
    return sorted(_PAIRWISE)


def get_unary_head(name: str) -> UnaryHeadFactory:
    """The factory registered as unary head ``name`` (KeyError naming the registered ones)."""
    if name not in _UNARY_HEADS:
        raise KeyError(f"unknown unary head {name!r}; registered: {', '.join(list_unary_heads())}")
    return _UNARY_HEADS[name]


def get_pairwise(name: str) -> PairwiseFactory:
    """The factory registered as pairwise term ``name`` (KeyError naming the registered ones)."""
    if name not in _PAIRWISE:
        raise KeyError(f"unknown pairwise term {name!r}; registered: {', '.join(list_pairwise())}")
    return _PAIRWISE[name]


def create_unary_head(name: str, channels: int, hidden: int, config: MaskConfig) -> nn.Module:
    return get_unary_head(name)(channels, hidden, config)


def create_pairwise(name: str, channels: int, config: MaskConfig) -> nn.Module:
    return get_pairwise(name)(channels, config)


def auto_hidden(channels: int, param_budget: int | None = None) -> int:
    """Width of the unary head: channels // 16 within [8, 64], shrunk to fit ``param_budget``."""
    hidden = max(8, min(64, channels // 16))
    if param_budget is not None:
        # norm (2C) + conv1 (C*h + h) + conv2 (h + 1) + optional context (C) must fit the budget
        fit = (param_budget - 3 * channels - 1) // (channels + 2)
        hidden = min(hidden, fit)
    return max(1, int(hidden))


# a token's standardised log norm is clamped: one outlier token must not decide a whole mask at injection
PRIOR_CLAMP = 3.0


def _squared_norm(x: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W): each token's squared feature norm, summed in float32."""
    return x.float().pow(2).sum(dim=1, keepdim=True)


def log_norm(x: torch.Tensor, squared_norm: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 1, H, W): each token's log feature norm in float32.

    A token whose features are all zero (switched off by an earlier gate) sits at the floor: log of a
    millionth of its image's mean squared norm. ``squared_norm``: each token's squared norm (B, 1, H, W) in
    float32 when the caller has it already (the head's LayerNorm statistics).
    """
    n2 = _squared_norm(x) if squared_norm is None else squared_norm
    floor = 1e-6 * n2.mean(dim=(2, 3), keepdim=True) + torch.finfo(torch.float32).tiny
    return 0.5 * torch.log(n2 + floor)


def _standardise(value: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return ((value - mean) / (std + 1e-3)).clamp(-PRIOR_CLAMP, PRIOR_CLAMP)


def _carried_stats(ln: torch.Tensor, carries: torch.Tensor, dims) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (biased) variance of ``ln`` over ``dims``, counting only the tokens that carry a value."""
    w = carries.to(ln.dtype)
    count = w.sum(dims, keepdim=True).clamp_min(1.0)
    mean = (ln * w).sum(dims, keepdim=True) / count
    return mean, ((ln - mean).square() * w).sum(dims, keepdim=True) / count


def _per_image(ln: torch.Tensor, carries: torch.Tensor | None = None) -> torch.Tensor:
    if carries is None:
        return _standardise(ln, ln.mean(dim=(2, 3), keepdim=True), ln.std(dim=(2, 3), keepdim=True, correction=0))
    mean, var = _carried_stats(ln, carries, (2, 3))
    return _standardise(ln, mean, var.sqrt())


def relative_log_norm(x: torch.Tensor, squared_norm: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 1, H, W): each token's log feature norm, standardised over its image's tokens, clamped to +-3.

    Scale-free (multiplying the features changes nothing) and per image: it ranks a token against the others
    of the same picture, so a mask led by it keeps about the same share of every picture. A token that is
    exactly zero (a gated stage's output where it computed nothing) sits at the floor and is left out of the
    statistics.
    """
    n2 = _squared_norm(x) if squared_norm is None else squared_norm
    return _per_image(log_norm(x, n2), n2 > 0)


class RunningLogNorm(nn.Module):
    """Standardises log feature norms by the data's statistics, as BatchNorm does its features.

    In training: the mean and variance over every token of the batch (the gradient flows through them), and
    running averages of both (momentum 0.1; the first batch sets them). In evaluation: the running averages, so
    a picture with more strong tokens than the data's usual scores them higher and its mask keeps more of it,
    where :func:`relative_log_norm` keeps a fixed share of every picture. Free of the model's feature scale
    (a constant scale shifts every log norm alike and the statistics absorb it), but, as BatchNorm, tied to
    the data it was fine-tuned on: pictures whose features are weaker across the board than that data's keep
    fewer tokens. Before any training step (a freshly injected model, no statistics yet) it standardises per
    image, as :func:`relative_log_norm`.
    """

    def __init__(self, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("running_mean", torch.zeros(()))
        self.register_buffer("running_var", torch.ones(()))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))
        # a Python flag, not a test of the buffer, so exporters and compilers see no data-dependent branch
        self.tracked = False
        self.register_load_state_dict_post_hook(_sync_tracked)

    def forward(self, ln: torch.Tensor, carries: torch.Tensor | None = None) -> torch.Tensor:
        if self.training:
            if carries is None:
                mean, var = ln.mean(), ln.var(correction=0)
            else:
                mean, var = (t.squeeze() for t in _carried_stats(ln, carries, (0, 1, 2, 3)))
            with torch.no_grad():
                if self.tracked:
                    self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                    self.running_var.lerp_(var.detach().to(self.running_var.dtype), self.momentum)
                else:
                    self.running_mean.copy_(mean)
                    self.running_var.copy_(var)
                self.num_batches_tracked.add_(1)
            self.tracked = True
        elif self.tracked:
            mean, var = self.running_mean.float(), self.running_var.float()
        else:
            return _per_image(ln, carries)
        # clamped below so that a batch of identical tokens has a finite gradient
        return _standardise(ln, mean, var.clamp_min(1e-12).sqrt())


def _sync_tracked(module: RunningLogNorm, incompatible_keys: object) -> None:
    module.tracked = bool(module.num_batches_tracked > 0)


class ConvUnaryHead(nn.Module):
    """Per-token channel normalisation, two 1x1 convolutions with a GELU, optional global context.

    The last layer starts with tiny weights and a bias of ``alpha + init_logit * tau``, so that
    u = alpha - s ~ -init_logit * tau and q0 = sigmoid(init_logit): the mask starts open. The
    normalisation makes that hold whatever the scale of the features (an untrained timm model's
    activations can reach 1e8), so injection preserves the function on any model. It also hides each token's
    magnitude from the convolutions; with ``config.norm_prior`` a learned weight (starting there) adds the
    token's standardised log norm (:func:`relative_log_norm`) back to the score: on trained bases, zeroing the
    weakest tokens of a map costs a fraction of what zeroing as many random ones does (docs/finetune.md).
    """

    def __init__(self, channels: int, hidden: int, config: MaskConfig) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.act = nn.GELU()
        self.score = nn.Conv2d(hidden, 1, 1)
        self.context = nn.Linear(channels, 1, bias=False) if config.global_context else None
        # only with a prior: a model without one keeps the state dict it always had
        self.norm_weight = nn.Parameter(torch.tensor(float(config.norm_prior))) if config.norm_prior else None
        self.prior_stats = RunningLogNorm() if config.norm_prior and config.norm_prior_stats == "running" else None
        self.prior_skips_zeros = config.norm_prior_zeros == "skip"
        nn.init.normal_(self.score.weight, std=1e-3)
        nn.init.constant_(self.score.bias, config.alpha + config.init_logit * config.tau)
        if self.context is not None:
            nn.init.normal_(self.context.weight, std=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        if self._inference(x):
            s, mean_sq = self._scores_channels_last(x)
        else:
            z, mean_sq = self._reduce_normalised(x.flatten(2))
            hidden = self.act(z)  # (B, hidden, H*W)
            s = torch.matmul(self.score.weight.flatten(1).to(x.dtype), hidden) + self.score.bias.to(x.dtype)[:, None]
            s = s.view(b, 1, h, w)
        if self.context is not None:
            s = s + self.context(self.norm(x.mean(dim=(2, 3))))[:, :, None, None]
        if self.norm_weight is not None:
            # the LayerNorm's mean square gives each token's squared norm at no cost in float32 (the prior's
            # strided sum over the channels was a fifth of a mask's time at batch 1); in lower precision the
            # prior sums its own in float32
            n2 = mean_sq.view(b, 1, h, w) * x.shape[1] if x.dtype == torch.float32 else _squared_norm(x)
            # a token that is exactly zero (a gated stage's output where it computed nothing) carries no value: it
            # sits at the floor, but counting it in the statistics would squeeze the others' standardised norms
            carries = n2 > 0 if self.prior_skips_zeros else None
            ln = log_norm(x, n2)
            prior = _per_image(ln, carries) if self.prior_stats is None else self.prior_stats(ln, carries)
            s = s + self.norm_weight.to(s.dtype) * prior.to(s.dtype)
        return s

    def _inference(self, x: torch.Tensor) -> bool:
        """No gradient wanted and no exporter recording: the scores may take the path with the fewest ops."""
        if _tracing():  # exporters keep the matrix-product path, whose ops every exporter reads
            return False
        return not torch.is_grad_enabled() or not (x.requires_grad or self.reduce.weight.requires_grad)

    def _scores_channels_last(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(scores (B, 1, H, W), each token's mean square over the channels (B, 1, H*W)) without autograd: the map
        in channels-last layout (a copy for an NCHW map, none for a channels-last one), then ``F.layer_norm`` and
        two ``F.linear`` over its last dimension. At batch 1 a mask's cost is its count of small ops, not its
        arithmetic: this is 5-6 ops where :meth:`_reduce_normalised` and the scoring are ~20 (docs/sparse.md)."""
        b, c, h, w = x.shape
        tokens = x.permute(0, 2, 3, 1).contiguous()  # (B, H, W, C)
        norm, reduce, score = self.norm, self.reduce, self.score
        z = F.linear(F.layer_norm(tokens, (c,), norm.weight.to(x.dtype), norm.bias.to(x.dtype), norm.eps),
                     reduce.weight.flatten(1).to(x.dtype), reduce.bias.to(x.dtype))
        s = F.linear(self.act(z), score.weight.flatten(1).to(x.dtype), score.bias.to(x.dtype))  # (B, H, W, 1)
        # the prior's squared norms in float32 (only a model with the prior reads them)
        mean_sq = tokens.float().square().mean(-1).view(b, 1, h * w) if self.norm_weight is not None else None
        return s.view(b, 1, h, w), mean_sq

    def _reduce_normalised(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``reduce(LayerNorm_C(x))`` on tokens (B, C, N), without materialising the normalised map, and each
        token's mean square over the channels (B, 1, N).

        conv(W, (x - mu) * r * g + b) = r * (W g x - mu * W g) + W b + b_reduce with the per-token mean
        mu and inverse std r. The 1x1 convolutions and the channel statistics are matrix products: a
        strided reduction over C or a convolution with a per-call weight costs several times more on CPU.
        """
        c = x.shape[1]
        weight = self.reduce.weight.flatten(1)  # (hidden, C)
        scaled = weight * self.norm.weight
        rows = torch.cat([scaled, torch.full_like(scaled[:1], 1.0 / c)]).to(x.dtype)
        z = torch.matmul(rows, x)  # (B, hidden + 1, N): the projection and the channel mean in one pass
        z, mu = z[:, :-1], z[:, -1:]
        mean_sq = torch.matmul(torch.full_like(rows[:1], 1.0 / c), x * x)
        rstd = torch.rsqrt((mean_sq - mu * mu).clamp_min(0) + self.norm.eps)
        bias = (weight @ self.norm.bias + self.reduce.bias).to(x.dtype)
        return (z - scaled.sum(1).to(x.dtype)[:, None] * mu) * rstd + bias[:, None], mean_sq


class PottsPairwise(nn.Module):
    """The plain Potts term: w_ij = 1, signalled by returning None (the fast convolution path)."""

    def forward(self, x: torch.Tensor) -> None:
        return None


register_unary_head("conv")(ConvUnaryHead)
register_pairwise("potts")(lambda channels, config: PottsPairwise())
