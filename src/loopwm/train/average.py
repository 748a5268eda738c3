"""An exponential moving average of a model's weights, for judging when training has converged.

At the peak learning rate of a warmup-stable-decay run the live weights bounce around a basin: their
validation loss jumps by 10-20% between evaluations and can look flat while a longer stable phase
would still end lower after the cool-down. The average of recent weights sits nearer the basin's
floor, as a cool-down would, so its validation curve is smooth and keeps falling for as long as more
training pays; the plateau rule reads it instead of the live curve (`TrainConfig.plateau_ema`).
"""

from __future__ import annotations

import copy

import torch

from loopwm.utils import LoopWMError


def check_plateau_ema(decay: float, until_plateau: float) -> None:
    """The one check of a trainer's --plateau-ema, before anything is written."""
    if not 0.0 <= decay < 1.0 or (decay > 0 and until_plateau <= 0):
        raise LoopWMError(f"--plateau-ema {decay} must be in [0, 1) and goes with --until-plateau, whose plateau "
                          "it judges (e.g. --until-plateau 0.02 --plateau-ema 0.998; 0: the live weights)")


class WeightAverage:
    """`model`'s weights averaged over steps: after each optimiser step, avg <- d * avg + (1 - d) * live,
    with d = min(decay, (1 + step) / (10 + step)) so that early, fast-moving weights are not held back by
    the random initial ones. Buffers are copied, not averaged."""

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        self._params = list(self.model.parameters())
        for p in self._params:
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1.0 + step) / (10.0 + step))
        torch._foreach_lerp_(self._params, [p.detach() for p in model.parameters()], 1.0 - d)
        for b_avg, b_live in zip(self.model.buffers(), model.buffers()):
            b_avg.copy_(b_live)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(state)
