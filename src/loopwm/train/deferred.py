"""Deferred decoding (LoopWM-DD, the paper's section 3.5): roll K actions forward in latent space
and decode only the last state.

After `context` observed steps, the model takes K steps on the learned no-observation token (it
never reads an intermediate observation, real or predicted) and its decoder is scored on the K-th
state only. Two more terms keep the roll-out honest:

    L_DD = L_terminal + alpha * L_consist + beta * max(0, sum_k ||h_{k+1} - h_k|| - K * C_max)

L_consist pulls a small projection g(h_k) of every intermediate state toward the encoder's
(stop-gradient) embedding of the true observation o_k, and the hinge bounds how far the latent may
travel over the roll-out. K grows with training: K(step) = min(K_max, 1 + step // interval).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from loopwm.models.dynamics import reward_error, reward_loss_scale
from loopwm.utils import LoopWMError


def dd_horizon(step: int, k_max: int, interval: int) -> int:
    """The curriculum: K = min(K_max, 1 + step // interval) (K = 1 is per-step decoding)."""
    return max(1, min(int(k_max), 1 + int(step) // max(1, int(interval))))


def latent_travel(hs: list[torch.Tensor]) -> torch.Tensor:
    """sum_k ||h_{k+1} - h_k|| per sample (B,), each h (B, N_h, d) flattened over tokens and width."""
    return torch.stack([(b - a).flatten(1).norm(dim=1) for a, b in zip(hs[:-1], hs[1:])], dim=1).sum(1)


def budget_penalty(travel: torch.Tensor, k: int, c_max: float) -> torch.Tensor:
    """max(0, travel - K * C_max), averaged over the batch."""
    return F.relu(travel - k * c_max).mean()


def deferred_loss(model, batch: dict[str, torch.Tensor], cfg, step: int):
    """The DD objective on a batch of windows (B, L+1, ...) with L = context + horizon actions."""
    if getattr(model, "consistency", None) is None:
        raise LoopWMError("--objective dd needs a looped or deep world model with a consistency head "
                          "(--model.consistency-head; loopwm train sets it for --objective dd), not an RSSM")
    obs = model._as_entities(batch["obs"].float())  # (B, L+1, N, F)
    actions = batch["action"]  # (B, L, ...)
    C = max(1, cfg.context)
    K = dd_horizon(step, cfg.dd_k_max or cfg.horizon, cfg.dd_interval)
    K = min(K, actions.shape[1] - C + 1)
    state = model.initial(obs[:, 0])
    if C > 1:  # teacher-forced context: the state that reads the real o_{C-1}
        state, _ = model.observe(state, actions[:, : C - 1], obs[:, 1:C])
    P = model.n_obs_tokens(obs.shape[2])
    hs, consist = [state.h], []
    for k in range(K):
        t = C - 1 + k  # the action a_t takes o_t to o_{t+1}
        state, out = model.step(state, actions[:, t], latent=True)
        hs.append(state.h)
        if k < K - 1:  # an intermediate state: only the consistency head looks at it
            with torch.no_grad():
                target = model.embed(obs[:, t + 1], model._action_features(actions[:, t + 1]))  # (B, P, d)
            consist.append(F.mse_loss(model.consistency(state.h[:, :P]), target))
    true = obs[:, C + K - 1]  # (B, N, F)
    err = ((out["obs"] - true) / model.std_safe) ** 2 * model.dynamic  # (B, N, F)
    obs_loss = err.sum(-1).mean() / model.dynamic.sum()
    t_last = C + K - 2
    reward_loss = reward_error(model, out["reward"], batch["reward"][:, t_last], cfg.reward_units)
    cont_loss = F.binary_cross_entropy_with_logits(out["cont_logit"], 1.0 - batch["terminated"][:, t_last].float())
    reward_scale = cfg.reward_weight * reward_loss_scale(model, obs.shape[2], cfg.reward_units)
    terminal = obs_loss + reward_scale * reward_loss + cfg.cont_weight * cont_loss
    consist_loss = torch.stack(consist).mean() if consist else torch.zeros((), device=obs.device)
    budget = budget_penalty(latent_travel(hs), K, cfg.dd_c_max)  # h_0 (before the roll-out) to h_K
    loss = terminal + cfg.dd_consistency * consist_loss + cfg.dd_budget * budget
    return loss, {"loss": loss.item(), "obs": obs_loss.item(), "reward": reward_loss.item(), "cont": cont_loss.item(),
                  "dd_k": float(K), "dd_consist": consist_loss.item(), "dd_budget": budget.item()}
