"""An early word when the masks are not finding an equilibrium: closing towards zero, or never closing.

Both show in the per-epoch densities long before the end of a run, so the loop says so at the epoch they
appear, in one line per mask with the setting to change, instead of leaving the user to find a useless
model at the end. Nothing is changed automatically: the price is the user's (ERSM has no budget).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["MaskWatch", "CLOSED_BELOW", "OPEN_ABOVE"]

# a mask keeping under 5% of the tokens has all but erased its stage; one keeping over 95% after the price
# is fully on has not started to select (the thresholds of issue #13's "collapsed" and "open" cells)
CLOSED_BELOW = 0.05
OPEN_ABOVE = 0.95
# the price the advice names for a mask whose price is 0 (run's price for two masks is 0.21, for one 0.3)
FREE_MASK_EXAMPLE = 0.2
# a mask closed in evaluation that keeps at least this much in training is not closing: its evaluation differs
TRAIN_KEEPS = 0.2


@dataclass
class MaskWatch:
    """Reads each epoch's validation densities; returns the warnings not given yet.

    Args:
        open_after: the update from which a mask still open is worth a word: gamma at its final value for a
            whole epoch (the masks close only once the price is on, and take a while to).
        alphas: each mask's ``mask.alpha``, to name the current value in the advice.
        without_prior: masks injected without the magnitude prior and started at the layer's default
            ``init_logit`` (3): the advice for an open one names the injection settings ``run`` uses.
        running_prior: masks whose prior is standardised by running statistics (``mask.norm_prior_stats``):
            one closed in evaluation while it keeps tokens in training gets the advice for that instead.
    """

    open_after: int
    alphas: dict[str, float]
    without_prior: set[str] = field(default_factory=set)
    running_prior: set[str] = field(default_factory=set)
    given: set[tuple[str, str]] = field(default_factory=set)

    def check(self, row: dict[str, Any], update: int) -> list[str]:
        out = []
        for key, density in row.items():
            if not key.startswith("density/"):
                continue
            name = key[len("density/"):]
            alpha = self.alphas.get(name)
            now = f" (mask.alpha is {alpha:g})" if alpha is not None else ""
            if density < CLOSED_BELOW and (name, "closed") not in self.given:
                self.given.add((name, "closed"))
                train = row.get(f"train_density/{name}")
                if name in self.running_prior and train is not None and train >= TRAIN_KEEPS:
                    # the prior's statistics are gathered on training features; with the backbone's BatchNorm
                    # statistics still lagging (a few updates), evaluation's features are on another scale
                    out.append(f"mask {name} keeps {100 * density:.1f}% of the tokens in evaluation but "
                               f"{100 * train:.1f}% in training after epoch {row['epoch']}: its prior's running "
                               "statistics, gathered in training, do not fit the evaluation features (the backbone's "
                               "BatchNorm statistics still lag, as after few updates); train longer (--epochs), or "
                               "inject with --set mask.norm_prior_stats=image")
                else:
                    out.append(f"mask {name} is closing: it keeps {100 * density:.1f}% of the tokens after epoch "
                               f"{row['epoch']}, so its stage is all but erased; lower the price: --alpha{now}, "
                               "e.g. half of it, or --gamma")
            elif density > OPEN_ABOVE and update >= self.open_after and (name, "open") not in self.given:
                self.given.add((name, "open"))
                # a price of 0 charges nothing for a token: "twice it" would still be 0
                example = f"e.g. {FREE_MASK_EXAMPLE:g}" if alpha is not None and alpha <= 0 else "e.g. twice it"
                out.append(f"mask {name} stays open: it keeps {100 * density:.1f}% of the tokens after epoch "
                           f"{row['epoch']} with the price fully on; raise the price: --alpha{now}, "
                           f"{example}, or train longer (--epochs)"
                           + (", or inject with --set mask.norm_prior=2 --set mask.init_logit=1 (the masks run "
                              "injects)" if name in self.without_prior else ""))
        return out
