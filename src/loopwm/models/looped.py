"""The looped dynamics core: prelude -> (inject + shared block) x T -> coda.

One environment step, the paper's Eqs. 4-8, with shapes batch-first:

    e   = LN(prelude([h_prev; e_obs; u]))[:, :N_h]          (B, N_h, d), computed once per step
    z   <- A_bar * z + B_bar(e) + R(z, e)   T times          (B, N_h, d), weights shared
    h   = LN(coda(C z))                                      (B, N_h, d), feeds heads and next step

The three parts are separate objects: `DiagInjection` (the contractive linear update), the shared
`Stack` repeated by `iterate` (the loop: per-sample depth, truncated gradients, frozen stopped
samples) and an `ExitRule` (when to stop) passed in from outside. An optional `Neighbourhood`
(who may attend to whom this step) is shared by the prelude, every iteration and the coda.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from loopwm.models.blocks import Stack
from loopwm.models.exits import ExitRule
from loopwm.models.locality import Neighbourhood


def inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class DiagInjection(nn.Module):
    """z -> A_bar * z + B_bar e with A_bar = exp(dt * A), A = -diag(exp(a)), B_bar = dt * B.

    Zero-order-hold discretisation of a negative-diagonal continuous-time system: since
    softplus(dt) > 0 and exp(a) > 0, every entry of A_bar lies in (0, 1) whatever the parameters,
    so the linear part of the update is a contraction by construction.
    """

    def __init__(self, d: int, init_decay: float = 0.45):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(d))  # A = -exp(a) = -1 at init
        # softplus(dt_raw) * exp(0) = -log(init_decay)  =>  A_bar = init_decay at init
        self.dt_raw = nn.Parameter(torch.full((d,), inverse_softplus(-math.log(init_decay))))
        self.B = nn.Parameter(torch.eye(d))

    def a_bar(self) -> torch.Tensor:
        # the decay rate is kept in [1e-4, 20] so float32 rounding can never give exactly 0 or 1
        rate = (F.softplus(self.dt_raw) * torch.exp(self.a)).clamp(1e-4, 20.0)  # (d,)
        return torch.exp(-rate)

    def forward(self, z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        dt = F.softplus(self.dt_raw)  # (d,)
        return self.a_bar() * z + dt * (e @ self.B.T)  # (B, N_h, d)


class ExitGate(nn.Module):
    """The paper's learned exit gate, g = mean over tokens of sigmoid(w . LN(z) + b), one exit
    probability per sample, with one input added: each token's log relative change in the last
    iteration. The normalised state alone says where the latent is, not whether it is still moving;
    a gate that saw only that learned the base rate of "stop" (the same value at every iteration)
    in our first study. It starts low (about 0.12): a fresh gate lets the loop run."""

    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d, elementwise_affine=False)  # the gate reads direction, not scale
        self.proj = nn.Linear(d + 1, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.constant_(self.proj.bias, -2.0)

    def forward(self, z_prev: torch.Tensor, z_new: torch.Tensor) -> torch.Tensor:
        """Exit probability (B,) after an iteration took z_prev to z_new, both (B, N_h, d)."""
        change = (z_new - z_prev).norm(dim=-1) / (z_prev.norm(dim=-1) + 1e-6)  # (B, N_h)
        features = torch.cat([self.norm(z_new), torch.log(change + 1e-6).unsqueeze(-1)], dim=-1)  # (B, N_h, d+1)
        return torch.sigmoid(self.proj(features)).squeeze(-1).mean(-1)  # (B, N_h) -> (B,)


class LoopedCore(nn.Module):
    """Prelude / shared recurrent block / coda, with per-sample depth."""

    def __init__(
        self,
        d: int,
        n_heads: int,
        n_prelude: int = 1,
        n_recurrent: int = 1,
        n_coda: int = 1,
        mlp_ratio: int = 4,
        init_decay: float = 0.45,
        init_std: float = 0.02,
        exit_gate: bool = False,
        n_geom: int = 0,
    ):
        super().__init__()
        self.init_std = init_std
        self.gate = ExitGate(d) if exit_gate else None
        self.prelude = Stack(n_prelude, d, n_heads, mlp_ratio, n_geom)
        self.prelude_norm = nn.LayerNorm(d)
        self.inject = DiagInjection(d, init_decay)
        self.core = Stack(n_recurrent, d, n_heads, mlp_ratio, n_geom)  # the ONE shared block (stack)
        self.coda_proj = nn.Linear(d, d)
        self.coda = Stack(n_coda, d, n_heads, mlp_ratio, n_geom)
        self.coda_norm = nn.LayerNorm(d)

    def initial_state(self, shape: tuple[int, ...], device, dtype) -> torch.Tensor:
        """z^(0): a small truncated-normal draw while training, zeros at evaluation (deterministic)."""
        z = torch.zeros(shape, device=device, dtype=dtype)
        if self.training and self.init_std > 0:
            nn.init.trunc_normal_(z, std=self.init_std, a=-3 * self.init_std, b=3 * self.init_std)
        return z

    def recur(self, z: torch.Tensor, e: torch.Tensor, nbhd: Neighbourhood | None = None) -> torch.Tensor:
        """One iteration: inject, then the shared blocks (their residual branches are R(z, e))."""
        return self.core(self.inject(z, e), nbhd)

    def iterate(
        self,
        e: torch.Tensor,
        z: torch.Tensor,
        depth: torch.Tensor,
        n_grad: int | None = None,
        exit_rule: ExitRule | None = None,
        trajectory: list | None = None,
        nbhd: Neighbourhood | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the shared block up to depth[i] times per sample i.

        Args:
            e: (B, N_h, d) injection signal, fixed during the loop.
            z: (B, N_h, d) initial recurrent state.
            depth: (B,) long, maximum iterations per sample (>= 1).
            n_grad: gradients flow only through each sample's last n_grad iterations (None: all).
            exit_rule: may stop a sample before its depth; stopped samples are frozen.
            trajectory: a list that receives the whole batch's state (B, N_h, d): the starting
                state, then the state after every iteration (a finished sample repeats its final
                state), for per-iteration losses and the exit gate's training.
            nbhd: the step's attention context over the N_h state tokens (None: full attention).
        Returns:
            z: (B, N_h, d) final state; used: (B,) long, iterations actually run; work: (B,) float,
            iterations per token (the mean over tokens of the iterations that updated each one).
            Equal to `used` unless the exit rule settles tokens one by one (`per_token`): a settled
            token keeps its state (others still read it) and costs nothing more.
        """
        B, N = z.shape[:2]
        D = int(depth.max()) if B else 0
        if exit_rule is None and trajectory is None and (n_grad is None or n_grad >= D) and bool((depth == D).all()):
            # the fixed-depth path (evaluation, planning, play): every sample runs D iterations, all with
            # gradient, so none of the bookkeeping below applies; same result, fewer small kernels
            for _ in range(D):
                z = self.recur(z, e, nbhd)
            return z, depth.clone(), depth.float()
        used = torch.zeros(B, dtype=torch.long, device=z.device)
        running = torch.ones(B, dtype=torch.bool, device=z.device)
        per_token = exit_rule is not None and exit_rule.per_token
        settled = torch.zeros(B, N, dtype=torch.bool, device=z.device)  # tokens that stopped (per-token rules)
        work = torch.zeros(B, device=z.device)  # token-iterations / N
        grad_from = depth - (n_grad if n_grad is not None else int(depth.max()))  # (B,)
        want_grad = torch.is_grad_enabled()
        if exit_rule is not None:
            exit_rule.start(z)
        if trajectory is not None:
            trajectory.append(z)
        for t in range(int(depth.max())):
            run = running & (t < depth)  # (B,)
            if not bool(run.any()):
                break
            rows = run.nonzero().squeeze(1)  # (R,)
            everyone = rows.numel() == B
            z_in = z if everyone else z[rows]  # (R, N_h, d)
            e_in = e if everyone else e[rows]
            nbhd_in = nbhd if (everyone or nbhd is None) else nbhd.take(rows)
            in_window = t >= grad_from[rows]  # (R,) rows whose gradient passes this iteration
            with torch.set_grad_enabled(want_grad and bool(in_window.any())):
                z_new = self.recur(z_in, e_in, nbhd_in)  # (R, N_h, d)
                if z_new.requires_grad and not bool(in_window.all()):
                    z_new = torch.where(in_window[:, None, None], z_new, z_new.detach())
            if per_token:
                keep = settled if everyone else settled[rows]  # (R, N_h)
                z_new = torch.where(keep[..., None], z_in, z_new)  # settled tokens keep their state
                work = work.index_add(0, rows, (~keep).float().mean(-1))
                keep = keep | exit_rule.should_stop(t, z_in, z_new, rows)  # (R, N_h)
                settled = settled.index_put((rows,), keep)
                stop = keep.all(-1)  # (R,) a sample stops when all its tokens have
                running = running.index_put((rows,), ~stop)
            elif exit_rule is not None:
                stop = exit_rule.should_stop(t, z_in, z_new, rows)  # (R,)
                running = running.index_put((rows,), ~stop) if not everyone else ~stop
            z = z_new if everyone else z.index_copy(0, rows, z_new)
            used = used + run.long()
            if trajectory is not None:
                trajectory.append(z)
        return z, used, (work if per_token else used.float())

    def forward(
        self,
        x: torch.Tensor,
        n_state: int,
        z0: torch.Tensor | None,
        depth: torch.Tensor,
        n_grad: int | None = None,
        exit_rule: ExitRule | None = None,
        trajectory: list | None = None,
        nbhd: Neighbourhood | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One environment step.

        Args:
            x: (B, N_in, d) prelude input; its first n_state tokens are the state slots.
            z0: (B, n_state, d) carried recurrent state, or None for a fresh one.
            nbhd: attention context over all N_in tokens (None: full attention).
        Returns:
            h: (B, n_state, d) coda output; z: (B, n_state, d) final recurrent state;
            used: (B,) iterations run; work: (B,) iterations per token (see `iterate`).
        """
        e = self.prelude_norm(self.prelude(x, nbhd)[:, :n_state])  # (B, N_h, d)
        state_nbhd = nbhd.crop(n_state) if nbhd is not None else None  # the action token drops out
        if z0 is None:
            z0 = self.initial_state(e.shape, e.device, e.dtype)
        z, used, work = self.iterate(e, z0, depth, n_grad, exit_rule, trajectory, state_nbhd)
        return self.readout(z, state_nbhd), z, used, work

    def readout(self, z: torch.Tensor, nbhd: Neighbourhood | None = None) -> torch.Tensor:
        """Coda: the recurrent state (B, N_h, d) -> h (B, N_h, d) for the heads and the next step."""
        return self.coda_norm(self.coda(self.coda_proj(z), nbhd))

    def max_a_bar(self) -> float:
        return float(self.inject.a_bar().detach().max())


class DeepCore(LoopedCore):
    """The fixed-depth baseline: the same prelude and coda, with the shared block replaced by
    `n_blocks` distinct blocks applied once each (no injection, no loop, no state to carry)."""

    def __init__(self, d: int, n_heads: int, n_blocks: int, n_prelude: int = 1, n_coda: int = 1, mlp_ratio: int = 4,
                 n_geom: int = 0):
        super().__init__(d, n_heads, n_prelude, 0, n_coda, mlp_ratio, n_geom=n_geom)
        del self.inject  # no recurrence: nothing to inject into
        self.core = Stack(n_blocks, d, n_heads, mlp_ratio, n_geom)

    def iterate(self, e, z, depth, n_grad=None, exit_rule=None, trajectory=None, nbhd=None):
        used = torch.full((e.shape[0],), len(self.core.blocks), dtype=torch.long, device=e.device)
        return self.core(e, nbhd), used, used.float()  # (B, N_h, d)

    def max_a_bar(self) -> float:
        return float("nan")  # no retention matrix in a fixed-depth stack
