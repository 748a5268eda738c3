"""The RSSM baseline: a DreamerV3-style recurrent state-space model behind the `Dynamics` interface.

Reading order: `RSSMConfig`, the small helpers (`symlog`, `dense`, `unimix_probs`,
`sample_onehot`, `kl_balanced`), then `RSSM` (`initial` and one `step`; `observe` and `imagine`
come from `Dynamics`).

The latent state has two parts: a deterministic GRU state h (B, deter) and a stochastic state z,
`stoch` categorical variables with `classes` classes each, kept as a flattened one-hot sample
(B, stoch * classes). One step, as in DreamerV3:

    real observation o_t:  z_t ~ q(z | h_t, embed(o_t))     (posterior; KL to the prior p(z | h_t))
    otherwise:             z_t = the prior sample carried from the previous step
    h_{t+1} = GRU(h_t, MLP([z_t, a_t]))
    z_{t+1} ~ p(z | h_{t+1})                                (prior; its mode in eval mode)
    o_{t+1} = decode(o_t, head([h_{t+1}, z_{t+1}]))

Observations are predicted exactly as the looped model predicts them (normalised change, velocity
integrated into position, clamped into the box): the decoding, the normalisation buffers and the
shape helpers are `WorldModel`'s own functions, borrowed rather than copied, so the two models can
never drift apart. Unlike the looped model, the RSSM flattens all N entities into one vector, so it
only runs on the number of bodies it was built for.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from loopwm.models.dynamics import Dynamics, State
from loopwm.models.pixels import ConvDecoder, ConvEncoder
from loopwm.models.world_model import WorldModel, WorldSpec
from loopwm.utils import LoopWMError


@dataclass
class RSSMConfig:
    """RSSM architecture and latent losses (defaults follow DreamerV3 where it applies)."""

    deter: int = 256
    """Width of the deterministic GRU state h."""
    stoch: int = 16
    """Number of categorical latent variables in z; 0 gives the deterministic GRU world model
    (no z, no KL: every step encodes its input observation, the model's own prediction in
    imagination, as the looped model does)."""
    classes: int = 16
    """Classes of each categorical variable."""
    hidden: int = 256
    """Width of every MLP hidden layer and of the observation embedding."""
    unimix: float = 0.01
    """Fraction of uniform probability mixed into every categorical (keeps KL and log-probs finite)."""
    free_nats: float = 1.0
    """Each KL term is clipped below at this many nats (summed over the variables), per sample."""
    kl_dyn: float = 0.5
    """Weight of the dynamics loss KL(sg(posterior) || prior): trains the prior to predict."""
    kl_rep: float = 0.1
    """Weight of the representation loss KL(posterior || sg(prior)): keeps the posterior predictable."""
    recon_weight: float = 1.0
    """Weight of the reconstruction loss of o_t from the posterior state (normalised MSE)."""
    decode_from: str = "sample"
    """What the next-observation head reads besides h: "sample" (the prior's one-hot z, as
    DreamerV3) or "probs" (the prior's class probabilities: deterministic given h, less noisy)."""
    gru: str = "torch"
    """Recurrent cell: "torch" (torch's GRUCell) or "layernorm" (DreamerV3's GRU: one linear map
    of [input, h] to the three gates, LayerNorm over them, the update gate biased towards keeping
    h). DreamerV3's cell planned no better in results/plan-rssm (docs/LOG.md), so the default
    stays the one every committed result was made with."""
    learned_init: bool = False
    """Start h from a learned vector (tanh of a parameter, as DreamerV3's `initial: learned`)
    instead of zeros."""

    def resolved_eval_depth(self) -> int:
        """One GRU update per environment step: the RSSM has no loop whose depth could vary."""
        return 1


# ----- small pieces -----
def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x) * log(1 + |x|): squashes large inputs while staying the identity near 0 (DreamerV3)."""
    return torch.sign(x) * torch.log1p(x.abs())


def dense(d_in: int, d_out: int) -> nn.Sequential:
    """One DreamerV3 hidden layer: Linear (no bias, LayerNorm has one) -> LayerNorm -> SiLU."""
    return nn.Sequential(nn.Linear(d_in, d_out, bias=False), nn.LayerNorm(d_out), nn.SiLU())


def head(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    """One hidden layer, then a plain linear output."""
    return nn.Sequential(dense(d_in, d_hidden), nn.Linear(d_hidden, d_out))


class LayerNormGRUCell(nn.Module):
    """DreamerV3's GRU cell: the gates come from one bias-free linear map of [input, h], normalised
    together; the candidate is reset-gated after the map, and the update gate starts biased to
    keep the old state (-1 before its sigmoid), which keeps long imagined rollouts stable."""

    def __init__(self, d_in: int, d_hidden: int):
        super().__init__()
        self.linear = nn.Linear(d_in + d_hidden, 3 * d_hidden, bias=False)
        self.norm = nn.LayerNorm(3 * d_hidden)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        gates = self.norm(self.linear(torch.cat([x, h], dim=-1)))  # (B, 3 * deter)
        reset, cand, update = gates.chunk(3, dim=-1)  # 3 x (B, deter)
        cand = torch.tanh(torch.sigmoid(reset) * cand)
        update = torch.sigmoid(update - 1.0)
        return update * cand + (1.0 - update) * h  # (B, deter)


def unimix_probs(logits: torch.Tensor, unimix: float) -> torch.Tensor:
    """Class probabilities (..., S, C) with `unimix` of a uniform distribution mixed in, so no
    probability falls below unimix / C (a sample is never impossible, a KL never infinite)."""
    C = logits.shape[-1]
    return (1.0 - unimix) * logits.softmax(-1) + unimix / C


def sample_onehot(probs: torch.Tensor, sample: bool) -> torch.Tensor:
    """One-hot draw (sample=True) or mode (False) of categoricals (B, S, C), with straight-through
    gradients: the value is the one-hot, the gradient is that of the probabilities."""
    B, S, C = probs.shape
    if sample:
        idx = torch.multinomial(probs.detach().reshape(B * S, C), 1).reshape(B, S)  # (B, S); global RNG
    else:
        idx = probs.argmax(-1)  # (B, S)
    onehot = F.one_hot(idx, C).to(probs.dtype)  # (B, S, C)
    return onehot + probs - probs.detach()


def categorical_kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) between categoricals (B, S, C), summed over the S variables: (B,)."""
    return (p * (p.log() - q.log())).sum(dim=(-2, -1))


def kl_balanced(post: torch.Tensor, prior: torch.Tensor, cfg: RSSMConfig) -> torch.Tensor:
    """DreamerV3's KL balancing with free nats: a scalar.

    The dynamics term moves the prior towards the (fixed) posterior, the representation term moves
    the posterior towards the (fixed) prior, with a smaller weight so the posterior keeps what the
    observation tells it. Below `free_nats` a term is constant: no pressure to shrink it further.
    """
    dyn = categorical_kl(post.detach(), prior).clamp(min=cfg.free_nats)  # (B,)
    rep = categorical_kl(post, prior.detach()).clamp(min=cfg.free_nats)  # (B,)
    return cfg.kl_dyn * dyn.mean() + cfg.kl_rep * rep.mean()


# ----- the model -----
class PixelRSSMEncoder(nn.Module):
    """Frames (B, H*W, C) -> (B, hidden): the shared convolutional encoder, flattened."""

    def __init__(self, obs_shape: list[int], hidden: int, d: int = 32):
        super().__init__()
        self.conv = ConvEncoder(obs_shape, d)
        self.out = dense(self.conv.pos.numel(), hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.conv(x).flatten(1))  # (B, P, d) -> (B, hidden)


class PixelRSSMDecoder(nn.Module):
    """Model state (B, n_feat) -> per-pixel outputs (B, H*W, C) through the shared decoder."""

    def __init__(self, obs_shape: list[int], n_feat: int, d: int = 32):
        super().__init__()
        self.deconv = ConvDecoder(obs_shape, d)
        self.n_patches, self.d = self.deconv.gh * self.deconv.gw, d
        self.inp = nn.Linear(n_feat, self.n_patches * d)

    def forward(self, feat: torch.Tensor) -> torch.Tensor:
        tokens = self.inp(feat).view(feat.shape[0], self.n_patches, self.d)  # (B, P, d)
        return self.deconv(tokens)  # (B, H*W, C)


class RSSM(Dynamics, nn.Module):
    """A DreamerV3-style RSSM world model. Implements the `Dynamics` interface: initial / step /
    observe / imagine, with the same observation conventions as `WorldModel`.

    `step` returns, besides obs / reward / cont_logit / iterations (always 1), an `aux_loss`: the
    KL-balanced latent loss plus the weighted reconstruction loss, nonzero only on steps that start
    from a real observation. The training loop adds it to the prediction loss.

    Example:
        >>> model = RSSM(spec, RSSMConfig(deter=64, hidden=64))
        >>> state = model.initial(obs0)                      # obs0: (B, N, F)
        >>> state, out = model.observe(state, actions, obs)  # posterior on every true observation
        >>> state, out = model.imagine(state, actions2)      # prior only; out.obs: (B, H, N, F)
    """

    # Borrowed from the looped model so both read, normalise and decode observations identically
    # (these functions only use `self.spec` and the buffers they register).
    _register_norm_buffers = WorldModel._register_norm_buffers
    _as_entities = WorldModel._as_entities
    _action_features = WorldModel._action_features
    _decode = WorldModel._decode
    param_count = WorldModel.param_count

    def __init__(self, spec: WorldSpec, cfg: RSSMConfig):
        super().__init__()
        if spec.action_kind not in ("box", "discrete"):
            raise LoopWMError(f"unknown action kind {spec.action_kind!r}: use 'box' or 'discrete'")
        self.spec, self.cfg = spec, cfg
        n_obs = spec.n_entities * spec.n_features  # all bodies flattened into one vector
        n_z = cfg.stoch * cfg.classes
        n_feat = cfg.deter + n_z  # the model state [h, z] every head reads
        if spec.pixels:  # frames: convolutional encoder and decoders, as DreamerV3
            self.encoder = PixelRSSMEncoder(spec.obs_shape, cfg.hidden)
        else:
            self.encoder = nn.Sequential(dense(n_obs, cfg.hidden), dense(cfg.hidden, cfg.hidden))
        if cfg.decode_from not in ("sample", "probs"):
            raise LoopWMError(f"unknown --rssm.decode-from {cfg.decode_from!r}: use sample or probs")
        # [z_t, a_t] -> GRU input; without z, [embed(o_t), a_t]
        self.img_in = dense((n_z or cfg.hidden) + spec.action_dim, cfg.hidden)
        if cfg.gru not in ("layernorm", "torch"):
            raise LoopWMError(f"unknown --rssm.gru {cfg.gru!r}: use layernorm or torch")
        self.gru = LayerNormGRUCell(cfg.hidden, cfg.deter) if cfg.gru == "layernorm" else nn.GRUCell(cfg.hidden, cfg.deter)
        if cfg.learned_init:
            self.h0 = nn.Parameter(torch.zeros(cfg.deter))  # h at the start is tanh(h0)
        if n_z:
            self.prior_head = head(cfg.deter, cfg.hidden, n_z)  # p(z | h)
            self.post_head = head(cfg.deter + cfg.hidden, cfg.hidden, n_z)  # q(z | h, embed(o))
        decoder = (lambda: PixelRSSMDecoder(spec.obs_shape, n_feat)) if spec.pixels else (lambda: head(n_feat, cfg.hidden, n_obs))
        self.obs_head = decoder()  # normalised change o_t -> o_{t+1}
        if n_z:
            self.recon_head = decoder()  # normalised o_t from the posterior state, for the latent loss
        self.reward_head = head(n_feat, cfg.hidden, 1)
        self.cont_head = head(n_feat, cfg.hidden, 1)
        if not spec.pixels:  # (the pixel decoder starts at zero by itself)
            nn.init.zeros_(self.obs_head[-1].weight)  # start as "nothing changes", like the looped model
            nn.init.zeros_(self.obs_head[-1].bias)
        self._register_norm_buffers(spec)

    def max_a_bar(self) -> float:
        """NaN: the RSSM has no state injection A_bar (evaluation reports it as missing)."""
        return float("nan")

    def checkpoint_meta(self) -> dict:
        """What `loopwm.checkpoint.build_model` needs to rebuild this model."""
        return {"kind": "rssm", "spec": asdict(self.spec), "model": asdict(self.cfg)}

    # ----- pieces of one step -----
    def _normalise(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.mean) / self.std_safe  # (B, N, F)

    def _dist(self, logits: torch.Tensor) -> torch.Tensor:
        """Flat logits (B, S*C) -> unimix probabilities (B, S, C)."""
        return unimix_probs(logits.view(logits.shape[0], self.cfg.stoch, self.cfg.classes), self.cfg.unimix)  # (B, S, C)

    def _sample(self, probs: torch.Tensor) -> torch.Tensor:
        """A flattened one-hot z (B, S*C): sampled while training, the mode in eval mode."""
        return sample_onehot(probs, sample=self.training).flatten(1)  # (B, S*C)

    def _recon_loss(self, feat: torch.Tensor, obs: torch.Tensor) -> torch.Tensor:
        """Normalised MSE of o_t decoded from the posterior state, on dynamic features only (as the
        training loss: features that never change are copied, so they carry no signal)."""
        recon = self.recon_head(feat).view_as(obs)  # (B, N, F)
        err = (recon - self._normalise(obs)) ** 2 * self.dynamic  # (B, N, F)
        return err.sum(-1).mean() / self.dynamic.sum().clamp(min=1)

    # ----- the Dynamics interface -----
    def initial(self, obs: torch.Tensor) -> State:
        """Start from a first observation (B, N, F) (or (B, F) for flat worlds): h the learned initial
        state (or 0), no z yet."""
        self.check_obs(obs, 1, "the first observation")
        obs = (obs if obs.dim() == 3 else self._as_entities(obs)).float()  # raw (B, *obs_shape) or (B, N, F)
        if self.cfg.learned_init:
            h = torch.tanh(self.h0).to(obs.dtype).expand(obs.shape[0], -1).contiguous()  # (B, deter)
        else:
            h = obs.new_zeros(obs.shape[0], self.cfg.deter)  # (B, deter)
        return State(h=h, z=None, obs=obs, real=True)

    def step(self, state: State, action: torch.Tensor, depth=None, exit_rule=None, latent: bool = False
             ) -> tuple[State, dict[str, torch.Tensor]]:
        """Predict the next observation from the state and `action` (B, *action_shape).

        depth and exit_rule are accepted for the common interface and ignored (one GRU update);
        so is latent (the RSSM always imagines in latent space, from its prior).
        Returns the new state (h_{t+1}, prior z_{t+1}, the prediction, real=False) and a dict with
        obs (B, N, F), reward (B,), cont_logit (B,), iterations (B,) and aux_loss (scalar).
        """
        obs = state.obs
        B, N, Fdim = obs.shape
        if [N, Fdim] != [self.spec.n_entities, self.spec.n_features]:
            raise LoopWMError(f"the RSSM was built for {self.spec.n_entities} x {self.spec.n_features} observations, got {N} x {Fdim}")
        act = self._action_features(action)  # (B, A)
        h = state.h  # (B, deter)
        aux = obs.new_zeros(())
        x = symlog(self._normalise(obs))  # (B, N, F)
        if not self.cfg.stoch:  # deterministic GRU: encode whatever observation the state holds
            embed = self.encoder(x if self.spec.pixels else x.reshape(B, N * Fdim))  # (B, hidden)
            h_next = self.gru(self.img_in(torch.cat([embed, act], dim=-1)), h)  # (B, deter)
            z_next, feat = None, h_next
        else:
            if state.real:  # an observation to correct the belief with: posterior, and its losses
                embed = self.encoder(x if self.spec.pixels else x.reshape(B, N * Fdim))  # (B, hidden)
                post = self._dist(self.post_head(torch.cat([h, embed], dim=-1)))  # (B, S, C)
                prior = self._dist(self.prior_head(h))  # (B, S, C)
                z = self._sample(post)  # (B, S*C)
                recon = self._recon_loss(torch.cat([h, z], dim=-1), obs)
                aux = kl_balanced(post, prior, self.cfg) + self.cfg.recon_weight * recon
            elif state.z is not None:  # imagining: the prior sample drawn by the previous step
                z = state.z  # (B, S*C)
            else:  # imagining from a state that never saw an observation nor a step
                z = self._sample(self._dist(self.prior_head(h)))  # (B, S*C)
            h_next = self.gru(self.img_in(torch.cat([z, act], dim=-1)), h)  # (B, deter)
            probs = self._dist(self.prior_head(h_next))  # (B, S, C)
            z_next = self._sample(probs)  # (B, S*C)
            read = z_next if self.cfg.decode_from == "sample" else probs.flatten(1)
            feat = torch.cat([h_next, read], dim=-1)  # (B, deter + S*C)
        pred = self._decode(obs, self.obs_head(feat).view(B, N, Fdim))  # (B, N, F)
        out = {
            "obs": pred,
            "reward": self.reward_mean + self.reward_std * self.reward_head(feat).squeeze(-1),  # (B,) in env units
            "cont_logit": self.cont_head(feat).squeeze(-1),  # (B,)
            "iterations": torch.ones(B, dtype=torch.long, device=obs.device),
            "aux_loss": aux,
        }
        return State(h=h_next, z=z_next, obs=pred, real=False), out
