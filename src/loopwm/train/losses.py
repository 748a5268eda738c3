"""What training minimises: the sequence objective (observe a context, imagine the rest, normalised
error on every prediction, plus the reward, continuation, every-iteration, exit-gate and settling terms)
and the exit gate's own objective. The deferred-decoding objective lives in deferred.py."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from loopwm.models.dynamics import normalised_error, reward_error, reward_loss_scale
from loopwm.train.deferred import deferred_loss

if TYPE_CHECKING:  # annotations only: the loop imports this module
    from loopwm.models.world_model import WorldModel
    from loopwm.train.loop import TrainConfig


def objective_loss(model, batch: dict[str, torch.Tensor], cfg: TrainConfig, step: int):
    """The loss of the objective --objective names: "dd" (deferred decoding, whose curriculum reads
    `step`) or the sequence objective."""
    if cfg.objective == "dd":
        return deferred_loss(model, batch, cfg, step)
    return sequence_loss(model, batch, cfg)


def sequence_loss(model: WorldModel, batch: dict[str, torch.Tensor], cfg: TrainConfig, gen: torch.Generator | None = None):
    """Observe `context` steps, imagine the rest; normalised MSE on every predicted observation."""
    obs = model._as_entities(batch["obs"].float())  # (B, L+1, N, F)
    actions = batch["action"]  # (B, L, ...)
    L = actions.shape[1]
    C = min(cfg.context, L)
    inputs = obs
    if cfg.obs_noise > 0:
        noise = torch.randn(obs.shape, device=obs.device, generator=gen) * cfg.obs_noise * model.std_safe * model.dynamic
        inputs = obs + noise
    state = model.initial(inputs[:, 0])
    preds, rewards, conts, aux, deep_terms, gate_terms, settle_terms, work = [], [], [], [], [], [], [], []
    for t in range(L):
        state, out = model.step(state, actions[:, t])
        if "aux_loss" in out:  # model-specific terms, e.g. the RSSM's KL and reconstruction
            aux.append(out["aux_loss"])
        if "obs_per_iteration" in out:  # (T, B, N, F): the prediction after every loop iteration
            per_iter = normalised_error(model, out["obs_per_iteration"], obs[None, :, t + 1])  # (T, B)
            deep_terms.append(per_iter.mean())
            if "gate" in out:
                gate_terms.append(gate_loss(per_iter, out["gate"], cfg.gate_tolerance, cfg.gate_entropy))
        if "settle" in out:
            settle_terms.append(out["settle"].mean())
        if cfg.exit_training > 0:  # iterations per token: below the drawn depth where tokens settled early
            work.append(out["token_iterations"].float().mean())
        preds.append(out["obs"])
        rewards.append(out["reward"])
        conts.append(out["cont_logit"])
        if t + 1 < C:  # still in the observed context: replace the prediction by the (noisy) truth
            state.obs, state.real = inputs[:, t + 1], True
        elif not cfg.feedback_grad:
            state.obs = state.obs.detach()
    pred = torch.stack(preds, dim=1)  # (B, L, N, F)
    err = ((pred - obs[:, 1:]) / model.std_safe) ** 2 * model.dynamic  # (B, L, N, F)
    obs_loss = err.sum(-1).mean() / model.dynamic.sum()
    per_step = err.sum(-1).mean(dim=(0, 2)) / model.dynamic.sum()  # (L,)
    obs_term = obs_loss
    if cfg.step_weighting == "balanced":  # each step weighted by mean error / its own error (no gradient through the weights)
        obs_term = (per_step * (obs_loss / per_step.clamp(min=1e-12)).detach()).mean()
    reward_loss = reward_error(model, torch.stack(rewards, 1), batch["reward"], cfg.reward_units)
    cont_target = 1.0 - batch["terminated"].float()
    cont_loss = F.binary_cross_entropy_with_logits(torch.stack(conts, 1), cont_target)
    reward_scale = cfg.reward_weight * reward_loss_scale(model, obs.shape[2], cfg.reward_units)
    loss = obs_term + reward_scale * reward_loss + cfg.cont_weight * cont_loss
    aux_loss = torch.stack(aux).sum() / L if aux else torch.zeros(())
    loss = loss + aux_loss
    deep_loss = torch.stack(deep_terms).mean() if deep_terms else torch.zeros(())
    gate_term = torch.stack(gate_terms).mean() if gate_terms else torch.zeros(())
    settle = torch.stack(settle_terms).mean() if settle_terms else torch.zeros(())
    loss = loss + cfg.depth_supervision * deep_loss + cfg.gate_weight * gate_term + cfg.settle_weight * settle
    return loss, {"loss": loss.item(), "obs": obs_loss.item(), "reward": reward_loss.item(), "cont": cont_loss.item(),
                  "aux": aux_loss.item(), "every_iteration": deep_loss.item(), "gate": gate_term.item(), "settle": settle.item(),
                  "obs_first": per_step[0].item(), "obs_last": per_step[-1].item(),
                  **({"token_iterations": torch.stack(work).mean().item()} if work else {})}


def gate_targets(losses: torch.Tensor, tolerance: float) -> torch.Tensor:
    """From per-iteration errors (T, B) of one step, 1.0 where stopping after iteration t loses at
    most `tolerance` (relative) against the best later iteration, else 0.0: (T, B)."""
    later_best = torch.cat([losses.flip(0).cummin(0).values.flip(0)[1:], torch.full_like(losses[:1], float("inf"))])
    return (later_best >= (1.0 - tolerance) * losses).float()  # the last iteration is always "stop"


def gate_loss(losses: torch.Tensor, gates: torch.Tensor, tolerance: float, entropy_weight: float) -> torch.Tensor:
    """The exit gate's objective for one step: binary cross-entropy of the gate probabilities
    (T, B) against `gate_targets` of the (detached) per-iteration errors, minus the paper's
    binary-entropy regulariser (Eq. 11) with weight `entropy_weight`."""
    g = gates.clamp(1e-6, 1 - 1e-6)
    target = gate_targets(losses.detach(), tolerance)
    bce = F.binary_cross_entropy(g, target)
    entropy = -(g * g.log() + (1 - g) * (1 - g).log()).mean()
    return bce - entropy_weight * entropy
