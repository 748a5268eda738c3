"""Sampling-based planners over action sequences: MPPI and the cross-entropy method (CEM).

Both keep a distribution over the next `horizon` actions, draw `candidates` sequences from it,
score them all at once with a function supplied by the caller (a learned world model's imagined
return, or the true simulator's), and move the distribution toward the good ones, `iterations`
times per decision. Continuous (Box) actions use a per-step Gaussian, discrete ones a per-step
categorical. Between decisions the plan is warm-started: shifted one step, the new last step drawn
from the prior again.

    planner = make_planner("mppi", env.action_space, horizon=15, candidates=256)
    action = planner.act(score)        # score: (K, H, *action_shape) tensor -> (K,) returns
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from loopwm.utils import LoopWMError

Score = Callable[[torch.Tensor], torch.Tensor]


class Planner:
    """Shared machinery: the action space, sampling, warm start. Subclasses choose the update."""

    name = "planner"

    def __init__(self, action_space, horizon: int = 15, candidates: int = 256, iterations: int = 3, seed: int = 0,
                 init_std: float = 0.5, min_std: float = 0.05):
        if horizon < 1 or candidates < 2 or iterations < 1:
            raise LoopWMError(f"planning needs horizon >= 1, candidates >= 2 and iterations >= 1 "
                              f"(got {horizon}, {candidates}, {iterations})")
        self.horizon, self.candidates, self.iterations = int(horizon), int(candidates), int(iterations)
        # candidates are drawn on the CPU (the same plans on any machine); the score function moves
        # them to its own device
        self.gen = torch.Generator().manual_seed(int(seed))
        kind = type(action_space).__name__
        if kind == "Discrete":
            self.discrete, self.n, self.start = True, int(action_space.n), int(getattr(action_space, "start", 0))
            self.shape: tuple[int, ...] = ()
        elif kind == "Box":
            self.discrete = False
            low, high = np.asarray(action_space.low, np.float64), np.asarray(action_space.high, np.float64)
            # unbounded components are planned within a unit range around zero
            low, high = np.where(np.isfinite(low), low, -1.0), np.where(np.isfinite(high), high, 1.0)
            self.shape = tuple(action_space.shape)
            self.low = torch.as_tensor(low, dtype=torch.float32).reshape(self.shape)
            self.high = torch.as_tensor(high, dtype=torch.float32).reshape(self.shape)
            self.dtype = action_space.dtype
        else:
            raise LoopWMError(f"planning supports Box and Discrete action spaces, not {kind}")
        self.init_std, self.min_std = float(init_std), float(min_std)
        self.reset()

    # ---- the distribution over action sequences
    def reset(self) -> None:
        """Forget the plan (call at the start of every episode)."""
        H = self.horizon
        if self.discrete:
            self.probs = torch.full((H, self.n), 1.0 / self.n)  # (H, n)
        else:
            self.mean = ((self.low + self.high) / 2).expand(H, *self.shape).clone()  # (H, *A)
            self.std = (self.init_std * (self.high - self.low) / 2).expand(H, *self.shape).clone()

    def shift(self) -> None:
        """Warm start: drop the step just taken, append a fresh prior step."""
        if self.discrete:
            self.probs = torch.cat([self.probs[1:], torch.full((1, self.n), 1.0 / self.n)])
        else:
            self.mean = torch.cat([self.mean[1:], ((self.low + self.high) / 2)[None]])
            self.std = (self.init_std * (self.high - self.low) / 2).expand(self.horizon, *self.shape).clone()

    def sample(self) -> torch.Tensor:
        """(K, H, *A) candidate sequences; the current mean (or most likely) plan is always one of them."""
        K, H = self.candidates, self.horizon
        if self.discrete:
            draws = torch.multinomial(self.probs, K, replacement=True, generator=self.gen).T  # (K, H)
            draws[0] = self.probs.argmax(-1)
            return draws + self.start
        noise = torch.randn((K, H, *self.shape), generator=self.gen)
        seqs = self.mean[None] + self.std[None] * noise  # (K, H, *A)
        seqs[0] = self.mean
        return torch.maximum(torch.minimum(seqs, self.high), self.low)

    def update(self, seqs: torch.Tensor, returns: torch.Tensor) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def act(self, score: Score):
        """Plan and return the first action (a numpy value the environment accepts)."""
        best = -float("inf")
        for _ in range(self.iterations):
            seqs = self.sample()
            returns = score(seqs).detach().float().cpu()  # (K,)
            returns = torch.nan_to_num(returns, nan=-1e9, neginf=-1e9, posinf=1e9)
            best = max(best, float(returns.max()))
            self.update(seqs, returns)
        first = self._first_action()
        self.last_return = best  # the best candidate's return, for diagnostics
        self.shift()
        return first

    def _first_action(self):
        # the distribution's own first step (mean / mode): the best single draw is noisier
        if self.discrete:
            return int(self.probs[0].argmax()) + self.start
        return self.mean[0].numpy().astype(self.dtype)

    def _weighted_fit(self, seqs: torch.Tensor, weights: torch.Tensor, smoothing: float = 0.0) -> None:
        """Move the distribution to the weighted candidates; weights (K,) sum to one."""
        if self.discrete:
            onehot = torch.nn.functional.one_hot(seqs - self.start, self.n).float()  # (K, H, n)
            probs = (weights[:, None, None] * onehot).sum(0)  # (H, n)
            probs = (1 - smoothing) * probs + smoothing / self.n  # never rule an action out for good
            self.probs = probs / probs.sum(-1, keepdim=True)
            return
        w = weights.reshape(-1, *([1] * (seqs.dim() - 1)))  # (K, 1, ...)
        self.mean = (w * seqs).sum(0)  # (H, *A)
        var = (w * (seqs - self.mean[None]) ** 2).sum(0)
        floor = self.min_std * (self.high - self.low) / 2
        self.std = torch.maximum(var.sqrt(), floor.expand_as(var))


class MPPI(Planner):
    """Model predictive path integral control: every candidate weighted by exp(return / temperature),
    the temperature scaled to the spread of this draw's returns so one setting fits any reward scale."""

    name = "mppi"

    def __init__(self, action_space, temperature: float = 0.1, **kw):
        self.temperature = float(temperature)
        super().__init__(action_space, **kw)

    def update(self, seqs, returns):
        spread = (returns.max() - returns.min()).clamp_min(1e-8)
        weights = torch.softmax((returns - returns.max()) / (self.temperature * spread), dim=0)  # (K,)
        self._weighted_fit(seqs, weights, smoothing=0.05)


class CEM(Planner):
    """Cross-entropy method: refit the distribution to the best `elites` fraction of the candidates."""

    name = "cem"

    def __init__(self, action_space, elites: float = 0.1, **kw):
        self.elites = float(elites)
        super().__init__(action_space, **kw)

    def update(self, seqs, returns):
        k = max(2, int(round(self.elites * len(returns))))
        top = returns.topk(k).indices
        weights = torch.zeros_like(returns)
        weights[top] = 1.0 / k
        self._weighted_fit(seqs, weights, smoothing=0.05)


PLANNERS = {"mppi": MPPI, "cem": CEM}


def make_planner(name: str, action_space, **kw) -> Planner:
    if name not in PLANNERS:
        raise LoopWMError(f"unknown planner {name!r}: choose one of {sorted(PLANNERS)}")
    return PLANNERS[name](action_space, **kw)
