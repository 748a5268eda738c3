"""The looped world model: entity encoder + looped core + heads, behind the `Dynamics` interface.

Reading order: `WorldSpec` (what the model knows about the world's observations), `ModelConfig`,
`EntityEncoder` (observation rows -> tokens, with features relative to neighbours and walls),
`WorldModel` (`initial` and one `step`; `observe` and `imagine` come from `Dynamics`).

Observations are (B, N, F): N entities (one row per body), F features. A flat observation (F,) is
treated as one entity. The latent state has one token per entity plus `n_global` global tokens, so
state slot i belongs to entity i (this keeps the model permutation-equivariant and lets it run on
more bodies than it was trained on).

Prediction is residual and, where the world declares its kinematics (which features are positions,
which velocities, and the timestep), physical: the head predicts the change of velocity, velocity is
integrated into position (x' = x + dt * v', unless the world says an observed step holds several
physics steps, when positions are predicted as changes too), and the result is clamped into the
observation bounds (the box). Features that never vary in the data are copied.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from loopwm.models.blocks import MLP
from loopwm.models.dynamics import Dynamics, State
from loopwm.models.exits import ExitRule
from loopwm.models.locality import Neighbourhood, PairGeometry, neighbour_graph, pair_geometry, relative_geometry, token_mask
from loopwm.models.looped import DeepCore, LoopedCore
from loopwm.models.pixels import ConvDecoder, PixelEncoder
from loopwm.utils import LoopWMError

BIG = 1e6  # stands in for an infinite observation bound when clamping


@dataclass
class WorldSpec:
    """What the model knows about the world; saved with every checkpoint."""

    obs_shape: list[int]
    """Observation shape: (N, F) for entity worlds, (F,) for flat vectors."""
    action_kind: str
    """"box" or "discrete"."""
    action_dim: int
    """Number of action components (box) or of discrete actions."""
    obs_mean: list[float]
    """Per-feature mean of the observations (F,)."""
    obs_std: list[float]
    """Per-feature standard deviation (F,) over time and bodies."""
    delta_std: list[float]
    """Per-feature standard deviation of one-step changes (F,); 0 marks a feature that never changes."""
    obs_low: list[float | None]
    """Per-feature lower bound (None: unbounded)."""
    obs_high: list[float | None]
    """Per-feature upper bound (None: unbounded)."""
    position_idx: list[int] = field(default_factory=list)
    """Feature indices of positions (empty: no kinematics known)."""
    velocity_idx: list[int] = field(default_factory=list)
    """Feature indices of velocities, in the same order as positions."""
    radius_idx: int | None = None
    """Feature index of the body radius, if any (used for gaps to walls and neighbours)."""
    dt: float | None = None
    """Time one observed step spans: velocities times dt give the typical step length."""
    integrates: bool = True
    """Positions follow x' = x + dt * v' exactly, so the model integrates its predicted velocity
    rather than predicting positions (false where several physics steps make one observed step)."""
    action_low: list[float | None] = field(default_factory=list)
    """Per-component lower bound of a box action (None: unbounded; empty: not recorded)."""
    action_high: list[float | None] = field(default_factory=list)
    """Per-component upper bound of a box action."""
    action_start: int = 0
    """Smallest discrete action (gymnasium's Discrete(n, start))."""
    reward_mean: float = 0.0
    """Mean reward of the training steps: the reward head predicts in units of reward_std around it
    (0 and 1, the raw units, in checkpoints written before these fields existed)."""
    reward_std: float = 1.0
    """Standard deviation of the training rewards (1.0 where they never vary)."""

    @property
    def pixels(self) -> bool:
        """Camera frames (H, W, C): seen as H*W pixel entities, encoded as patch tokens."""
        return len(self.obs_shape) == 3

    @property
    def n_entities(self) -> int:
        if self.pixels:
            return self.obs_shape[0] * self.obs_shape[1]
        return self.obs_shape[0] if len(self.obs_shape) == 2 else 1

    @property
    def n_features(self) -> int:
        return self.obs_shape[-1]

    @property
    def kinematic(self) -> bool:
        return bool(self.position_idx) and self.dt is not None and not self.pixels


@dataclass
class ModelConfig:
    """Looped world model architecture."""

    kind: str = "looped"
    """"looped" (one shared block run in a loop), "deep" (the fixed-depth baseline: `n_deep`
    distinct blocks in its place, same encoder, prelude, coda and heads) or "rssm" (the
    DreamerV3-style baseline, configured separately)."""
    d: int = 64
    """Token width."""
    n_heads: int = 4
    """Attention heads."""
    mlp_ratio: int = 4
    """MLP hidden width as a multiple of d."""
    n_prelude: int = 1
    """Prelude blocks (own weights)."""
    n_recurrent: int = 1
    """Blocks in the shared recurrent block (weights shared across iterations)."""
    n_coda: int = 1
    """Coda blocks (own weights)."""
    n_global: int = 1
    """Global state tokens besides the one-per-entity tokens."""
    mu_rec: float = 4.0
    """Mean of the Poisson loop count T ~ max(1, Poisson(mu_rec)) during training."""
    depth_sampling: str = "step"
    """"step": one T per training step, shared by the batch (1.8x more gradient steps per second
    on CPU, since the loop never runs on a ragged batch); "sample": one T per sample, as in the
    paper (the batch runs until its largest T, the finished rows set aside)."""
    depth_max: int = 16
    """Cap on the sampled loop count during training (bounds time and memory)."""
    eval_depth: int = 0
    """Loop count at evaluation; 0 means round(mu_rec)."""
    n_grad: int = 0
    """Iterations that receive gradients; 0 means ceil(mu_rec / 2) as in the paper."""
    carry_state: bool = True
    """Carry the final recurrent state to the next step as its z^(0)."""
    neighbours: int = 3
    """Nearest neighbours whose relative features enter each entity token."""
    feedback: str = "prediction"
    """In imagination, encode the model's own predicted observation ("prediction") or use the
    learned no-observation token ("latent")."""
    init_decay: float = 0.45
    """Initial value of every entry of A_bar."""
    n_deep: int = 4
    """Distinct blocks replacing the shared one when kind is "deep"."""
    exit_gate: bool = False
    """Give the looped model the paper's learned exit gate (for `--exit gate`). While training,
    every loop iteration is then decoded, and the gate learns from those per-iteration errors
    when further iterations stop paying (see TrainConfig.gate_*)."""
    consistency_head: bool = False
    """A small projection g(h) of each latent state onto the encoder's embedding of the observation
    it stands for: deferred decoding's latent-consistency loss and its "monitoring" read-out
    (`loopwm train --objective dd` turns it on)."""
    attention: str = "full"
    """Who entity tokens attend to, in every block: "full" (every token), "local" (only their
    neighbours and themselves, a graph rebuilt each step from the current positions, observed or
    predicted: one block pass is then one round of message passing), or "local+globals" (local,
    plus the global and action tokens, which see every body: a shortcut around locality). Needs a
    world with positions (kinematics)."""
    attn_neighbours: int = 2
    """Local attention: each body is linked to its k nearest bodies by surface gap (links work
    both ways). 2 suits bodies on a line; 4-6 suit a plane."""
    attn_radius: float = 0.0
    """Local attention: also link bodies whose surface gap is below this distance (world units;
    0: no radius rule)."""
    attn_bias: bool = False
    """Add a learned per-head attention bias from each pair's geometry (unit direction and surface
    gap), so a head can read the neighbour on one side or the touching one. Needs kinematics."""
    slot_ids: int = 0
    """0: bodies are interchangeable (the model is the same for any order and any number of them).
    K > 0: add a learned embedding of each body's place in the observation (at most K bodies), for
    worlds where the place says who a body is, e.g. Push-v0, whose reward is the distance of body 1
    to the goal while body 2 looks just like it (same features, random radius)."""

    def resolved_eval_depth(self) -> int:
        return self.eval_depth or max(1, round(self.mu_rec))

    def resolved_n_grad(self) -> int:
        return self.n_grad or max(1, math.ceil(self.mu_rec / 2))


class EntityEncoder(nn.Module):
    """Observation rows -> tokens (B, N, d), each carrying features relative to its surroundings.

    For kinematic worlds each entity sees its own normalised features, its gaps to the walls and,
    for its K nearest neighbours (nearest by surface gap), the relative position, relative
    velocity, gap and closing speed: the edge features of graph-network simulators, so that
    contacts are visible to a single token without first having to be inferred by attention.
    """

    def __init__(self, spec: WorldSpec, cfg: ModelConfig, action_features: int):
        super().__init__()
        self.spec = spec
        self.k = min(cfg.neighbours, spec.n_entities - 1) if spec.kinematic else 0
        n_pos = len(spec.position_idx)
        n_in = spec.n_features + action_features
        if spec.kinematic:
            n_in += 2 * n_pos + cfg.neighbours * (2 * n_pos + 2)
        self.n_neighbour_slots = cfg.neighbours if spec.kinematic else 0
        self.mlp = MLP(n_in, 2 * cfg.d, cfg.d)
        self.slot = nn.Embedding(cfg.slot_ids, cfg.d) if cfg.slot_ids > 0 else None  # who is who, by place
        if self.slot is not None:
            nn.init.normal_(self.slot.weight, std=0.02)

    def features(self, obs: torch.Tensor, norm: dict[str, torch.Tensor], action_feat: torch.Tensor,
                 pairs: PairGeometry | None = None) -> torch.Tensor:
        spec = self.spec
        B, N, Fdim = obs.shape
        parts = [(obs - norm["mean"]) / norm["std_safe"]]  # (B, N, F)
        if spec.kinematic:
            pos = obs[..., spec.position_idx]  # (B, N, P)
            vel = obs[..., spec.velocity_idx]  # (B, N, P)
            rad = obs[..., spec.radius_idx] if spec.radius_idx is not None else torch.zeros_like(obs[..., 0])
            step_scale = norm["step_scale"]  # distance a typical body moves in one step
            vel_scale = norm["vel_scale"]
            lo, hi = norm["pos_low"], norm["pos_high"]  # (P,)
            parts.append(((pos - lo) - rad[..., None]).clamp(max=10.0) / step_scale)  # (B, N, P) wall gaps
            parts.append(((hi - pos) - rad[..., None]).clamp(max=10.0) / step_scale)
            slots = self.n_neighbour_slots
            if self.k > 0:
                rel, dist, gap = pairs if pairs is not None else pair_geometry(pos, rad)  # (B, N, N, P), (B, N, N) x2
                relv = vel[:, None, :, :] - vel[:, :, None, :]  # (B, N, N, P)
                gap_k, idx = gap.topk(self.k, dim=-1, largest=False)  # (B, N, K)
                take = lambda t: torch.gather(t, 2, idx[..., None].expand(-1, -1, -1, t.shape[-1]))  # noqa: E731
                rel_k, relv_k = take(rel), take(relv)  # (B, N, K, P)
                dist_k = torch.gather(dist, 2, idx)  # (B, N, K)
                closing = -(rel_k * relv_k).sum(-1) / dist_k  # (B, N, K) > 0 when approaching
                edge = torch.cat(
                    [
                        rel_k / norm["pos_scale"],
                        relv_k / vel_scale,
                        (gap_k.clamp(max=10.0) / step_scale)[..., None],
                        (closing / vel_scale)[..., None],
                    ],
                    dim=-1,
                )  # (B, N, K, 2P+2)
                if self.k < slots:  # fewer bodies than neighbour slots: pad with far-away zeros
                    pad = edge.new_zeros(B, N, slots - self.k, edge.shape[-1])
                    edge = torch.cat([edge, pad], dim=2)
                parts.append(edge.flatten(2))  # (B, N, slots*(2P+2))
            elif slots > 0:
                parts.append(obs.new_zeros(B, N, slots * (2 * len(spec.position_idx) + 2)))
        parts.append(action_feat[:, None, :].expand(B, N, -1))  # (B, N, A) the action, broadcast
        return torch.cat(parts, dim=-1)

    def forward(self, obs, norm, action_feat, pairs=None):
        tokens = self.mlp(self.features(obs, norm, action_feat, pairs))  # (B, N, d)
        if self.slot is not None:
            N = obs.shape[1]
            if N > self.slot.num_embeddings:
                raise LoopWMError(f"this model tells bodies apart by place for at most {self.slot.num_embeddings} "
                                  f"bodies (--model.slot-ids) and got {N}: train it with --model.slot-ids {N} or more")
            tokens = tokens + self.slot.weight[:N]  # (B, N, d) + (N, d)
        return tokens


class WorldModel(Dynamics, nn.Module):
    """A Looped World Model. Implements the `Dynamics` interface: initial / step / observe / imagine.

    Example:
        >>> model = WorldModel(spec, ModelConfig(d=32))
        >>> state = model.initial(obs0)                      # obs0: (B, N, F)
        >>> state, out = model.observe(state, actions, obs)  # teacher forcing over T steps
        >>> state, out = model.imagine(state, actions2)      # open loop; out.obs: (B, H, N, F)
    """

    def __init__(self, spec: WorldSpec, cfg: ModelConfig):
        super().__init__()
        if cfg.feedback not in ("prediction", "latent"):
            raise LoopWMError(f"unknown feedback mode {cfg.feedback!r}: use 'prediction' or 'latent'")
        if cfg.depth_sampling not in ("step", "sample"):
            raise LoopWMError(f"unknown depth sampling {cfg.depth_sampling!r}: use 'step' or 'sample'")
        self.spec, self.cfg = spec, cfg
        self.any_entity_count = not spec.pixels and len(spec.obs_shape) == 2  # one token per body: any N works
        d = cfg.d
        n_act = spec.action_dim
        if spec.pixels:  # frames: a convolutional encoder and decoder around the same core
            self.encoder = PixelEncoder(spec.obs_shape, d, n_act)
            self.n_patches = self.encoder.conv.pos.shape[0]
        else:
            self.encoder = EntityEncoder(spec, cfg, n_act)
        self.action_token = nn.Linear(n_act, d)
        self.global_embed = nn.Parameter(torch.randn(cfg.n_global, d) * 0.02)
        self.no_obs = nn.Parameter(torch.randn(d) * 0.02)  # imagination mode: "no observation"
        if cfg.slot_ids < 0:
            raise LoopWMError(f"--model.slot-ids must be 0 (bodies interchangeable) or a body count, got {cfg.slot_ids}")
        if cfg.attention not in ("full", "local", "local+globals"):
            raise LoopWMError(f"unknown attention {cfg.attention!r}: use 'full', 'local' or 'local+globals'")
        if (cfg.attention != "full" or cfg.attn_bias) and not spec.kinematic:
            raise LoopWMError(f"--model.attention {cfg.attention}{' with --model.attn-bias' if cfg.attn_bias else ''} needs "
                              "body positions, and this world declares none (pixels or a flat vector): use "
                              "--model.attention full without --model.attn-bias")
        if cfg.attention != "full" and cfg.attn_neighbours < 1 and cfg.attn_radius <= 0:
            raise LoopWMError("local attention needs --model.attn-neighbours >= 1 or --model.attn-radius > 0")
        n_geom = len(spec.position_idx) + 1 if cfg.attn_bias else 0  # unit direction + surface gap
        if cfg.kind == "looped":
            self.core = LoopedCore(d, cfg.n_heads, cfg.n_prelude, cfg.n_recurrent, cfg.n_coda, cfg.mlp_ratio, cfg.init_decay,
                                   exit_gate=cfg.exit_gate, n_geom=n_geom)
        elif cfg.kind == "deep":
            if cfg.exit_gate:
                raise LoopWMError("--model.exit-gate needs a loop to exit from: use it with --model.kind looped")
            self.core = DeepCore(d, cfg.n_heads, cfg.n_deep, cfg.n_prelude, cfg.n_coda, cfg.mlp_ratio, n_geom)
        else:
            raise LoopWMError(f"unknown model kind {cfg.kind!r} for WorldModel: use 'looped' or 'deep' "
                              "('rssm' is built by loopwm.models.build_model)")
        if spec.pixels:
            self.obs_head = ConvDecoder(spec.obs_shape, d)  # zero at init, like the MLP head below
        else:
            self.obs_head = MLP(d, d, spec.n_features)
            nn.init.zeros_(self.obs_head.fc2.weight)  # start as "nothing changes": a stable first rollout
            nn.init.zeros_(self.obs_head.fc2.bias)
        self.reward_head = MLP(d, d, 1)
        self.cont_head = MLP(d, d, 1)
        self.consistency = nn.Linear(d, d) if cfg.consistency_head else None  # g(h) -> embedding space
        self._register_norm_buffers(spec)
        self.supervise_every_iteration = False  # set by training when it weights every iteration's error
        self.report_settling = False  # set by training when it penalises the loop state's last move (settle_weight)
        self.train_exit: ExitRule | None = None  # set by training, step by step, for exit-aware training (exit_training)

    # ----- normalisation constants (buffers, saved in the checkpoint) -----
    def _register_norm_buffers(self, spec: WorldSpec) -> None:
        f32 = dict(dtype=torch.float32)
        std = torch.tensor(spec.obs_std, **f32)
        # a feature is dynamic if it changes over time; one that only differs between bodies
        # (a radius, a "controlled" flag) is copied by every model and left out of the error
        dynamic = (std > 1e-8) & (torch.tensor(spec.delta_std, **f32) > 1e-8)
        self.register_buffer("mean", torch.tensor(spec.obs_mean, **f32))
        self.register_buffer("std_safe", torch.where(dynamic, std, torch.ones_like(std)))
        self.register_buffer("dynamic", dynamic)
        self.register_buffer("delta_scale", torch.tensor(spec.delta_std, **f32).clamp(min=1e-6) * dynamic)
        low = torch.tensor([-BIG if v is None else v for v in spec.obs_low], **f32)
        high = torch.tensor([BIG if v is None else v for v in spec.obs_high], **f32)
        self.register_buffer("low", low)
        self.register_buffer("high", high)
        if spec.kinematic:
            pos_std = std[spec.position_idx].mean().clamp(min=1e-6)
            vel_std = std[spec.velocity_idx].mean().clamp(min=1e-6)
            self.register_buffer("pos_scale", pos_std)
            self.register_buffer("vel_scale", vel_std)
            self.register_buffer("step_scale", vel_std * spec.dt)
            self.register_buffer("pos_low", low[spec.position_idx])
            self.register_buffer("pos_high", high[spec.position_idx])
        if spec.action_kind == "box" and spec.action_low:
            # components bounded on both sides enter as [-1, 1]; unbounded ones pass unchanged
            both = [lo is not None and hi is not None for lo, hi in zip(spec.action_low, spec.action_high)]
            centre = [(lo + hi) / 2 if ok else 0.0 for lo, hi, ok in zip(spec.action_low, spec.action_high, both)]
            half = [max((hi - lo) / 2, 1e-6) if ok else 1.0 for lo, hi, ok in zip(spec.action_low, spec.action_high, both)]
            # not persistent: they follow from the spec saved with every checkpoint (and older
            # checkpoints, written before actions were scaled, still load)
            self.register_buffer("action_centre", torch.tensor(centre, **f32), persistent=False)
            self.register_buffer("action_half_range", torch.tensor(half, **f32), persistent=False)

    def _norm(self) -> dict[str, torch.Tensor]:
        keys = ["mean", "std_safe", "pos_scale", "vel_scale", "step_scale", "pos_low", "pos_high"]
        return {k: getattr(self, k) for k in keys if hasattr(self, k)}

    # ----- shapes in, shapes out -----
    def _as_entities(self, obs: torch.Tensor) -> torch.Tensor:
        shape = self.spec.obs_shape
        if len(shape) == 3:  # frames (..., H, W, C) -> (..., H*W, C)
            return obs.reshape(*obs.shape[:-3], shape[0] * shape[1], shape[2])
        return obs if len(shape) == 2 else obs.unsqueeze(-2)  # (..., N, F)

    def _action_features(self, action: torch.Tensor) -> torch.Tensor:
        if self.spec.action_kind == "discrete":
            index = action.long().reshape(-1) - self.spec.action_start  # (B,)
            if bool(((index < 0) | (index >= self.spec.action_dim)).any()):
                raise LoopWMError(f"discrete actions must lie in [{self.spec.action_start}, "
                                  f"{self.spec.action_start + self.spec.action_dim}), got {action.reshape(-1).tolist()[:8]}")
            return F.one_hot(index, self.spec.action_dim).float()  # (B, A)
        act = action.reshape(action.shape[0], -1).float()  # (B, A)
        if hasattr(self, "action_centre"):  # bounded components mapped to [-1, 1]
            act = (act - self.action_centre) / self.action_half_range
        return act

    def n_obs_tokens(self, n_entities: int) -> int:
        """Tokens an observation becomes: one per entity, or one per patch for frames."""
        return self.n_patches if self.spec.pixels else n_entities

    def n_state_tokens(self, n_entities: int) -> int:
        return self.n_obs_tokens(n_entities) + self.cfg.n_global

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def core_param_count(self) -> int:
        """Parameters of what sits between prelude and coda: the shared block (and its injection) of a
        looped model, the distinct blocks of a deep one. The rest (encoder, prelude, coda, heads) is
        the scaffold every model shares, which bounds any parameter ratio between a stack of K blocks
        and the loop at (scaffold + K blocks) / (scaffold + 1 block)."""
        parts = [self.core.core] + ([self.core.inject] if hasattr(self.core, "inject") else [])
        return sum(p.numel() for part in parts for p in part.parameters())

    def max_a_bar(self) -> float:
        return self.core.max_a_bar()

    # ----- the Dynamics interface -----
    def initial(self, obs: torch.Tensor) -> State:
        """Start from a first observation (B, N, F) (or (B, F) for flat worlds)."""
        self.check_obs(obs, 1, "the first observation")
        obs = (obs if obs.dim() == 3 else self._as_entities(obs)).float()  # raw (B, *obs_shape) or (B, N, F)
        B, N, _ = obs.shape
        h = obs.new_zeros(B, self.n_state_tokens(N), self.cfg.d)  # (B, N_h, d)
        return State(h=h, z=None, obs=obs, real=True)

    def embed(self, obs: torch.Tensor, act: torch.Tensor, pairs: PairGeometry | None = None) -> torch.Tensor:
        """The encoder's tokens (B, P, d) for observations (B, N, F) and action features (B, A)."""
        if pairs is not None:
            return self.encoder(obs, self._norm(), act, pairs)
        return self.encoder(obs, self._norm(), act)

    def pairs(self, obs: torch.Tensor) -> PairGeometry | None:
        """Pairwise geometry of the bodies of an observation (B, N, F), or None where nothing uses
        it (no kinematics, or no edge features and full attention without bias)."""
        spec, cfg = self.spec, self.cfg
        edges = isinstance(self.encoder, EntityEncoder) and self.encoder.k > 0
        if not spec.kinematic or not (edges or cfg.attention != "full" or cfg.attn_bias):
            return None
        rad = obs[..., spec.radius_idx] if spec.radius_idx is not None else torch.zeros_like(obs[..., 0])  # (B, N)
        return pair_geometry(obs[..., spec.position_idx], rad)

    def neighbourhood(self, obs: torch.Tensor, pairs: PairGeometry | None = None) -> Neighbourhood | None:
        """The attention context of one step from the observation it reads (B, N, F): a mask
        over the step's N + G + 1 tokens (local attention) and pair geometry (attention bias), or
        None for plain full attention. `pairs`: that observation's `pairs()`, if already computed."""
        cfg = self.cfg
        if cfg.attention == "full" and not cfg.attn_bias:
            return None
        pairs = pairs if pairs is not None else self.pairs(obs)
        n_extra = cfg.n_global + 1  # global tokens and the action token
        mask = None
        if cfg.attention != "full":
            adj = neighbour_graph(pairs, cfg.attn_neighbours, cfg.attn_radius)  # (B, N, N)
            mask = token_mask(adj, n_extra, entities_read_globals=cfg.attention == "local+globals")
        geom = relative_geometry(pairs, self.step_scale, n_extra) if cfg.attn_bias else None
        return Neighbourhood(mask, geom)

    def sample_depth(self, batch: int, device) -> torch.Tensor:
        """Training loop counts T ~ max(1, Poisson(mu_rec)), capped at depth_max: (B,) long,
        drawn per step or per sample (`depth_sampling`)."""
        draws = 1 if self.cfg.depth_sampling == "step" else batch
        rate = torch.full((draws,), float(self.cfg.mu_rec), device=device)
        return torch.poisson(rate).long().clamp(1, self.cfg.depth_max).expand(batch)  # (B,)

    def step(
        self,
        state: State,
        action: torch.Tensor,
        depth: int | torch.Tensor | None = None,
        exit_rule: ExitRule | None = None,
        latent: bool = False,
    ) -> tuple[State, dict[str, torch.Tensor]]:
        """Predict the next observation from state.obs and `action` (B, *action_shape).

        depth: None samples it (training) or uses the evaluation depth; an int or a (B,) tensor fixes it.
        latent: from an imagined state, read the learned no-observation token instead of encoding
        the predicted observation, whatever `feedback` says (deferred decoding's latent roll-out).
        Returns the new state (whose obs is the prediction) and a dict with obs (B, N, F),
        reward (B,), cont_logit (B,), iterations (B,), token_iterations (B,).
        """
        obs = state.obs
        B, N, _ = obs.shape
        P = self.n_obs_tokens(N)  # observation tokens: N entities, or the patches of a frame
        act = self._action_features(action)  # (B, A)
        if depth is None:
            depth = self.sample_depth(B, obs.device) if self.training else self.cfg.resolved_eval_depth()
        if exit_rule is None and self.training:
            exit_rule = self.train_exit  # exit-aware training: tokens settle as an exit rule would stop them
        if isinstance(depth, int):
            depth = torch.full((B,), depth, dtype=torch.long, device=obs.device)
        pairs = self.pairs(obs)  # once per step: the encoder's edge features and the attention context
        if state.real or (self.cfg.feedback == "prediction" and not latent):
            e_obs = self.embed(obs, act, pairs)  # (B, P, d)
        else:
            e_obs = self.no_obs.expand(B, P, -1)  # (B, P, d)
        h_prev = state.h  # (B, P + G, d)
        x = torch.cat(
            [
                h_prev[:, :P] + e_obs,  # entity slots paired with their own observation row
                h_prev[:, P:] + self.global_embed,  # (B, G, d)
                self.action_token(act)[:, None, :],  # (B, 1, d)
            ],
            dim=1,
        )  # (B, P + G + 1, d)
        z0 = state.z if self.cfg.carry_state else None
        nbhd = self.neighbourhood(obs, pairs)  # rebuilt every step from the positions this step reads
        n_grad = self.cfg.resolved_n_grad() if self.training else None
        if exit_rule is not None and exit_rule.reads_predictions:
            exit_rule.bind(self._readout_for(nbhd, B, N, P))
        # per-iteration outputs, for the gate's training signal and for depth supervision
        decode_each = self.training and (self.cfg.exit_gate or self.supervise_every_iteration)
        per_iteration = [] if (decode_each or (self.training and self.report_settling)) else None
        h, z, used, work = self.core(x, self.n_state_tokens(N), z0, depth, n_grad, exit_rule, per_iteration, nbhd)  # (B, N_h, d) x2
        pred = self._decode(obs, self.obs_head(h[:, :P]))  # (B, N, F)
        pooled = h.mean(dim=1)  # (B, d)
        out = {
            "obs": pred,
            "reward": self.reward_mean + self.reward_std * self.reward_head(pooled).squeeze(-1),  # (B,) in env units
            "cont_logit": self.cont_head(pooled).squeeze(-1),
            "iterations": used,
            "token_iterations": work,
        }
        zs = torch.stack(per_iteration) if per_iteration else None  # (T+1, B, N_h, d): the start, then each iteration
        if zs is not None and self.report_settling:
            # each token's relative move in its sample's last iteration, what the token-delta exit reads
            rows = torch.arange(B, device=obs.device)
            last, before = zs[used, rows], zs[(used - 1).clamp(min=0), rows]  # (B, N_h, d) each
            out["settle"] = (last - before).norm(dim=-1) / (last.norm(dim=-1) + 1e-8)  # (B, N_h)
        if zs is not None and decode_each:  # decode the state after every iteration, and ask the gate at each one
            T = zs.shape[0] - 1
            state_nbhd = nbhd.crop(self.n_state_tokens(N)).repeat(T) if nbhd is not None else None
            hs = self.core.readout(zs[1:].flatten(0, 1), state_nbhd)  # (T*B, N_h, d)
            raw = self.obs_head(hs[:, :P])  # (T*B, P or N, F)
            preds = self._decode(obs.repeat(T, 1, 1), raw)  # (T*B, N, F)
            out["obs_per_iteration"] = preds.view(T, B, N, -1)  # (T, B, N, F)
            if self.core.gate is not None:
                # detached: the gate is a probe that learns when to stop; its loss must not reshape the dynamics
                steps = zs.detach()
                out["gate"] = self.core.gate(steps[:-1].flatten(0, 1), steps[1:].flatten(0, 1)).view(T, B)  # (T, B)
        return State(h=h, z=z, obs=pred, real=False), out

    def _readout_for(self, nbhd: Neighbourhood | None, B: int, N: int, P: int):
        """The heads' output (normalised changes) for some rows' loop state, mid-loop: for exit rules."""
        state_nbhd = nbhd.crop(self.n_state_tokens(N)) if nbhd is not None else None

        def readout(z: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            nb = state_nbhd.take(rows) if state_nbhd is not None and rows.numel() != B else state_nbhd
            return self.obs_head(self.core.readout(z, nb)[:, :P])  # (R, P, F)

        return readout

    def _decode(self, obs: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
        """Turn head outputs (normalised changes, (B, N, F)) into the next observation."""
        spec = self.spec
        delta = raw * self.delta_scale  # (B, N, F); zero on features that never change
        pred = obs + delta
        if spec.kinematic and spec.integrates:
            vel = obs[..., spec.velocity_idx] + delta[..., spec.velocity_idx]  # (B, N, P)
            vel = torch.maximum(torch.minimum(vel, self.high[spec.velocity_idx]), self.low[spec.velocity_idx])
            pos = obs[..., spec.position_idx] + spec.dt * vel  # semi-implicit Euler, as the world
            pred = pred.clone()
            pred[..., spec.velocity_idx] = vel
            pred[..., spec.position_idx] = pos
        low = self.low.expand_as(pred)
        high = self.high.expand_as(pred)
        if spec.kinematic and spec.radius_idx is not None:  # keep whole bodies inside the box
            rad = obs[..., spec.radius_idx : spec.radius_idx + 1]  # (B, N, 1)
            low, high = low.clone(), high.clone()
            low[..., spec.position_idx] = low[..., spec.position_idx] + rad
            high[..., spec.position_idx] = high[..., spec.position_idx] - rad
        return torch.maximum(torch.minimum(pred, high), low)

    def checkpoint_meta(self) -> dict:
        return {"kind": self.cfg.kind, "spec": asdict(self.spec), "model": asdict(self.cfg)}

