"""Exit rules: when does one sample stop iterating the shared block?

An exit rule is consulted after every iteration of the loop with the rows still running. It returns
a boolean mask over those rows: True means "this sample stops now". Stopped samples are frozen by
the loop (their state no longer changes) and no compute is spent on them. Rules are small and
stateless between steps except for what `start` resets; choose one by name with `make_exit_rule`.

A per-token rule (`per_token = True`) answers for every token of every running row instead, an
(R, N) mask: a token that stops keeps its state for the rest of the step (the others still attend
to it, so its keys and values are computed once more at most) and the sample stops when all its
tokens have. In a scene where one run of discs is struck while the rest fly free, the free bodies
settle after an iteration or two and only the struck run keeps iterating.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from loopwm.utils import LoopWMError


class ExitRule:
    """Never stops early: the loop runs its full depth (same as fixed-depth evaluation)."""

    name = "fixed"
    per_token = False
    reads_predictions = False
    """True for rules that read the model's prediction mid-loop: the model calls `bind(readout)` first."""

    def __init__(self, threshold: float = 0.0, min_iterations: int = 1):
        self.threshold = float(threshold)
        self.min_iterations = max(1, int(min_iterations))

    def start(self, z0: torch.Tensor) -> None:
        """Reset per-sample memory before iteration 0; z0 is the (B, N, d) initial state."""

    def should_stop(self, t: int, z_prev: torch.Tensor, z_new: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """After iteration t (0-based), return (R,) bool for the R running `rows` (indices into B)."""
        return torch.zeros(z_new.shape[0], dtype=torch.bool, device=z_new.device)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(threshold={self.threshold})"


FixedExit = ExitRule


def _per_sample_norm(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).norm(dim=1)  # (R,)


class DeltaExit(ExitRule):
    """Stop when the relative latent change ||z_t - z_{t-1}|| / ||z_t|| falls below the threshold."""

    name = "delta"

    def should_stop(self, t, z_prev, z_new, rows):
        rel = _per_sample_norm(z_new - z_prev) / (_per_sample_norm(z_new) + 1e-8)
        return (rel < self.threshold) & (t + 1 >= self.min_iterations)


class AccelExit(ExitRule):
    """Stop when the relative second difference ||z_t - 2 z_{t-1} + z_{t-2}|| / ||z_t|| stays
    below the threshold on two consecutive checks (a change that has stopped changing)."""

    name = "accel"

    def start(self, z0):
        self.prev_diff = torch.zeros_like(z0)  # (B, N, d): z_{t-1} - z_{t-2}
        self.hits = torch.zeros(z0.shape[0], dtype=torch.long, device=z0.device)  # (B,)

    def should_stop(self, t, z_prev, z_new, rows):
        diff = z_new - z_prev  # (R, N, d)
        if t == 0:  # no second difference exists yet
            self.prev_diff[rows] = diff.detach()
            return torch.zeros(z_new.shape[0], dtype=torch.bool, device=z_new.device)
        accel = _per_sample_norm(diff - self.prev_diff[rows]) / (_per_sample_norm(z_new) + 1e-8)
        self.prev_diff[rows] = diff.detach()
        hits = torch.where(accel < self.threshold, self.hits[rows] + 1, torch.zeros_like(self.hits[rows]))
        self.hits[rows] = hits
        return (hits >= 2) & (t + 1 >= self.min_iterations)


class GateExit(ExitRule):
    """Stop when the model's learned exit gate (`looped.ExitGate`) exceeds the threshold."""

    name = "gate"

    def __init__(self, threshold: float = 0.5, min_iterations: int = 1, gate=None):
        super().__init__(threshold, min_iterations)
        if gate is None:
            raise LoopWMError("the gate exit rule needs a looped model trained with an exit gate "
                              "(loopwm train --model.exit-gate); this model has none: use delta or accel")
        self.gate = gate

    def should_stop(self, t, z_prev, z_new, rows):
        return (self.gate(z_prev, z_new) > self.threshold) & (t + 1 >= self.min_iterations)


class TokenDeltaExit(ExitRule):
    """Per token: a token stops when its own relative change ||z_t,i - z_{t-1},i|| / ||z_t,i|| falls
    below the threshold (the delta rule, asked of each body instead of the whole scene)."""

    name = "token-delta"
    per_token = True

    def should_stop(self, t, z_prev, z_new, rows):
        rel = (z_new - z_prev).norm(dim=-1) / (z_new.norm(dim=-1) + 1e-8)  # (R, N)
        return (rel < self.threshold) & (t + 1 >= self.min_iterations)


class PredictionDeltaExit(ExitRule):
    """Per token: a body stops when its own *predicted change* stops moving, the RMS over features of
    the difference between the heads' outputs (normalised units) after iterations t-1 and t. The
    latent rules measure how far the state moves, which a body in free flight does as well while
    the loop settles; this one asks whether another pass would change what the model says about
    the body. Tokens without a prediction (global tokens) stop when every body of their scene has.
    Needs a model that can read its state out mid-loop: the world model binds `readout` per step
    (`bind`); costs one coda pass per iteration."""

    name = "pred-delta"
    per_token = True
    reads_predictions = True

    def __init__(self, threshold: float = 0.0, min_iterations: int = 1):
        super().__init__(threshold, min_iterations)
        self.readout = None

    def bind(self, readout) -> None:
        """readout(z (R, N_h, d), rows (R,)) -> (R, P, F): the heads' output for those rows' bodies."""
        self.readout = readout

    def start(self, z0):
        self.batch, self.prev = z0.shape[0], None  # prev: (B, P, F), every row's last prediction

    def should_stop(self, t, z_prev, z_new, rows):
        if self.readout is None:
            raise LoopWMError("the pred-delta exit rule reads predictions mid-loop; only the physics world "
                              "models provide them: use token-delta or delta for this model")
        new = self.readout(z_new, rows).detach()  # (R, P, F)
        if t == 0:  # every row runs the first iteration: the prediction before it is the baseline
            self.prev = new.new_zeros((self.batch, *new.shape[1:]))
            self.prev[rows] = self.readout(z_prev, rows).detach()
        change = (new - self.prev[rows]).pow(2).mean(-1).sqrt()  # (R, P)
        self.prev[rows] = new
        bodies = change < self.threshold  # (R, P)
        rest = bodies.all(-1, keepdim=True).expand(-1, z_new.shape[1] - bodies.shape[1])  # (R, N_h - P)
        return torch.cat([bodies, rest], dim=1) & (t + 1 >= self.min_iterations)


class HaltingHead(nn.Module):
    """Per token: how much more would this body's one-step error fall if it kept iterating?

    A small probe fitted after training to a frozen looped model (`loopwm halting RUN`,
    train/halting.py): it reads each token's layer-normalised state, its log relative change in the
    last iteration, the scene's mean and largest such change, and the iteration count, and predicts
    log(g + eps), where g is the fall of that body's error from here to the best later iteration
    (a global token: the largest over the scene's bodies); or, fitted with target "latent", the
    distance from this state to the state the loop ends in. The latent rules measure how far a state
    still moves; a body in free flight keeps moving while the loop settles, and a struck run can
    move little per pass while every pass still pays. This head is taught which is which."""

    TARGETS = {"error": 1e-5, "latent": 1e-4}  # what it predicts -> the eps of its log

    def __init__(self, d: int, hidden: int = 32, eps: float | None = None, target: str = "error"):
        super().__init__()
        self.d, self.hidden, self.target = d, hidden, target
        self.eps = self.TARGETS[target] if eps is None else eps
        self.norm = nn.LayerNorm(d, elementwise_affine=False)
        self.mlp = nn.Sequential(nn.Linear(d + 4, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def features(self, t: int, z_prev: torch.Tensor, z_new: torch.Tensor) -> torch.Tensor:
        """(R, N_h, d + 4) inputs after iteration t (0-based) took z_prev to z_new, both (R, N_h, d)."""
        change = torch.log((z_new - z_prev).norm(dim=-1) / (z_new.norm(dim=-1) + 1e-8) + 1e-6)  # (R, N_h)
        scene = torch.stack([change.mean(-1), change.amax(-1)], -1)[:, None, :].expand(-1, change.shape[1], -1)  # (R, N_h, 2)
        count = torch.full_like(change, math.log(t + 1.0))[..., None]  # (R, N_h, 1)
        return torch.cat([self.norm(z_new), change[..., None], scene, count], dim=-1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Predicted log(gain + eps) per token: (..., d + 4) -> (...)."""
        return self.mlp(features).squeeze(-1)


class TokenHaltExit(ExitRule):
    """Per token: a body stops when its fitted halting head (`HaltingHead`) predicts that more
    iterations would lower its one-step error by less than the threshold (normalised squared
    error, the units of the open-loop error), or with a head of target "latent", that its state is
    closer than the threshold (relative) to where the loop ends. Needs a head fitted to this model
    (`loopwm halting RUN`)."""

    name = "token-halt"
    per_token = True

    def __init__(self, threshold: float = 0.0, min_iterations: int = 1, head: HaltingHead | None = None, why: str = ""):
        super().__init__(threshold, min_iterations)
        if head is None:
            raise LoopWMError("the token-halt exit rule needs a halting head fitted to this model: run "
                              f"`loopwm halting RUN` first{why}, or use token-delta")
        self.head = head
        self.cut = math.log(max(self.threshold, 0.0) + head.eps)

    @torch.no_grad()
    def should_stop(self, t, z_prev, z_new, rows):
        return (self.head(self.head.features(t, z_prev, z_new)) < self.cut) & (t + 1 >= self.min_iterations)


EXIT_RULES = {"fixed": ExitRule, "delta": DeltaExit, "accel": AccelExit, "gate": GateExit, "token-delta": TokenDeltaExit,
              "pred-delta": PredictionDeltaExit, "token-halt": TokenHaltExit}


def check_exit_rule(name: str) -> None:
    """Refuse an unknown exit-rule name with an error that lists the known ones (callers that build
    the rule only later, after training, check the name first)."""
    if name not in EXIT_RULES:
        raise LoopWMError(f"unknown exit rule {name!r}: choose one of {sorted(EXIT_RULES)}")


def make_exit_rule(name: str, threshold: float = 0.0, min_iterations: int = 1, model=None) -> ExitRule:
    """Build an exit rule by name; unknown names raise an error that lists the known ones.
    The gate rule reads the gate of `model` (a looped world model trained with one); token-halt reads
    the halting head `checkpoint.load_model` attached to `model` (fitted with `loopwm halting`)."""
    check_exit_rule(name)
    if name == "gate":
        return GateExit(threshold, min_iterations, gate=getattr(getattr(model, "core", None), "gate", None))
    if name == "token-halt":
        why = getattr(model, "halting_stale", "")
        return TokenHaltExit(threshold, min_iterations, head=getattr(model, "halting_head", None),
                             why=f" ({why})" if why else "")
    return EXIT_RULES[name](threshold=threshold, min_iterations=min_iterations)
