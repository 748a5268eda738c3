"""Local attention: one block pass is one round of message passing over a neighbour graph that
follows the bodies; the models stay permutation-equivariant and batch-independent."""

from __future__ import annotations

from collections import deque

import pytest
import torch

from loopwm.models.exits import make_exit_rule
from loopwm.models.locality import neighbour_graph, pair_geometry
from loopwm.models.world_model import ModelConfig, WorldModel, WorldSpec
from loopwm.utils import LoopWMError

N = 24


def rail_spec(n: int = N) -> WorldSpec:
    return WorldSpec(
        obs_shape=[n, 7], action_kind="box", action_dim=2,
        obs_mean=[0.5, 0.5, 0.0, 0.0, 0.01, 0.1, 0.0], obs_std=[0.28, 0.0, 0.3, 0.0, 0.0, 0.3, 0.0],
        delta_std=[0.015, 0.0, 0.05, 0.0, 0.0, 0.0, 0.0],
        obs_low=[0, 0, -2, -2, 0, 0, 0], obs_high=[1, 1, 2, 2, 1, 1, 1],
        position_idx=[0, 1], velocity_idx=[2, 3], radius_idx=4, dt=0.05,
    )


def rail_obs(B: int, n: int = N, seed: int = 0) -> torch.Tensor:
    """Discs on the line y = 0.5 at random, distinct spacings, with random velocities."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.zeros(B, n, 7)
    spacing = 0.021 + 0.03 * torch.rand(B, n, generator=g)  # (B, n) >= one diameter apart
    x = 0.05 + spacing.cumsum(1)
    obs[..., 0] = x[:, torch.randperm(n, generator=g)]  # bodies not numbered left to right
    obs[..., 1] = 0.5
    obs[..., 2] = 0.5 * torch.randn(B, n, generator=g)
    obs[..., 4] = 0.01
    obs[:, 0, 5] = 1.0
    return obs


def model(kind: str = "looped", **kw) -> WorldModel:
    torch.manual_seed(0)
    cfg = dict(d=16, n_heads=2, attention="local", attn_neighbours=2, neighbours=2, kind=kind)
    cfg.update(kw)
    m = WorldModel(rail_spec(kw.pop("n", N)), ModelConfig(**cfg))
    torch.nn.init.normal_(m.obs_head.fc2.weight, std=0.5)  # a zero head would hide every difference
    return m


def hops(adj: torch.Tensor, source: int) -> list[int]:
    """Graph distance from `source` to every node of a (N, N) adjacency."""
    dist = [-1] * adj.shape[0]
    dist[source] = 0
    queue = deque([source])
    while queue:
        i = queue.popleft()
        for j in torch.nonzero(adj[i]).flatten().tolist():
            if dist[j] < 0:
                dist[j] = dist[i] + 1
                queue.append(j)
    return dist


def influence(m: WorldModel, obs: torch.Tensor, j: int, depth: int) -> torch.Tensor:
    """(T, N): how strongly body j's velocity moves each body's recurrent state after every loop
    iteration (or after the fixed stack), as the gradient norm |d z_t[i] / d v_j|. Gradients, not
    differences of two runs: an effect damped over many hops is tiny but not rounded to zero, while
    one that the mask forbids is exactly zero."""
    m = m.eval()
    states = []
    hook = m.core.core.register_forward_hook(lambda module, args, out: states.append(out))
    obs = obs.clone().requires_grad_(True)
    try:
        m.step(m.initial(obs), torch.zeros(obs.shape[0], 2), depth=depth)
    finally:
        hook.remove()
    n = obs.shape[1]
    w = torch.randn(states[0].shape[-1], generator=torch.Generator().manual_seed(0))
    out = torch.zeros(len(states), n)
    for t, z in enumerate(states):
        for i in range(n):
            (g,) = torch.autograd.grad(z[0, i] @ w, obs, retain_graph=True)
            out[t, i] = g[0, j, 2].abs()
    return out


@pytest.mark.parametrize("attn_bias", [False, True])
def test_a_perturbation_travels_one_hop_per_iteration(attn_bias):
    m = model(attn_bias=attn_bias)
    obs = rail_obs(1)
    j = int(obs[0, :, 0].argmin())  # the leftmost disc: the others lie up to ~N/2 hops away
    T = 8
    reached = influence(m, obs, j, T) > 0  # (T, N)
    dist = hops(neighbour_graph(pair_geometry(obs[..., :2], obs[..., 4]), 2)[0], j)
    assert max(dist) > 2 + T, "the row is too short to test the hop count"
    for t in range(T):
        # the prelude's pass plus t + 1 loop passes; the encoder's edge features follow each body's
        # own nearest bodies, a subgraph of the symmetric mask, and add at most one more hop
        lo, hi = m.cfg.n_prelude + t + 1, 1 + m.cfg.n_prelude + t + 1
        for i in range(N):
            if dist[i] > hi:
                assert not reached[t, i], f"body {i}, {dist[i]} hops from {j}, moved after {t + 1} iterations"
            if dist[i] <= lo:
                assert reached[t, i], f"body {i}, {dist[i]} hops from {j}, still untouched after {t + 1} iterations"


def test_a_fixed_stack_reaches_only_as_far_as_its_blocks():
    m = model("deep", n_deep=3).eval()
    obs = rail_obs(1, seed=1)
    j = int(obs[0, :, 0].argmin())
    reached = influence(m, obs, j, 1)[0] > 0  # (N,) after the 3 distinct blocks
    dist = hops(neighbour_graph(pair_geometry(obs[..., :2], obs[..., 4]), 2)[0], j)
    assert max(dist) > 2 + 3 + 1
    assert all(not reached[i] for i in range(N) if dist[i] > 1 + m.cfg.n_prelude + 3)
    assert all(reached[i] for i in range(N) if dist[i] <= m.cfg.n_prelude + 3)


def test_full_attention_reaches_everyone_in_one_pass():
    m = model(attention="full")
    assert bool((influence(m, rail_obs(1), 3, 1) > 0).all())


@pytest.mark.parametrize("kind,attention,attn_bias", [("looped", "local", True), ("looped", "local+globals", False),
                                                      ("deep", "local", True)])
def test_local_models_are_permutation_equivariant(kind, attention, attn_bias):
    m = model(kind, attention=attention, attn_bias=attn_bias).eval()
    obs = rail_obs(2, seed=2)
    act = torch.rand(2, 3, 2) * 2 - 1
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        _, a = m.imagine(m.initial(obs), act, depth=4)
        _, b = m.imagine(m.initial(obs[:, perm]), act, depth=4)
    torch.testing.assert_close(b.obs, a.obs[:, :, perm], atol=1e-5, rtol=1e-4)


def test_batched_equals_per_sample_with_local_attention_and_an_exit_rule():
    m = model(attn_bias=True).eval()
    obs = rail_obs(3, seed=3)
    act = torch.rand(3, 4, 2) * 2 - 1
    with torch.no_grad():
        _, batched = m.imagine(m.initial(obs), act, depth=6, exit_rule=make_exit_rule("delta", 0.05))
        for b in range(3):
            _, one = m.imagine(m.initial(obs[b : b + 1]), act[b : b + 1], depth=6, exit_rule=make_exit_rule("delta", 0.05))
            torch.testing.assert_close(one.obs[0], batched.obs[b], atol=1e-5, rtol=1e-4)
            assert torch.equal(one.iterations[0], batched.iterations[b])


def test_the_graph_follows_predicted_positions_in_imagination():
    m = model().eval()
    seen = []
    build = m.neighbourhood
    m.neighbourhood = lambda obs, *rest: (seen.append(obs.clone()), build(obs, *rest))[1]
    obs = rail_obs(2, seed=4)
    with torch.no_grad():
        _, roll = m.imagine(m.initial(obs), torch.zeros(2, 3, 2), depth=2)
    assert len(seen) == 3
    torch.testing.assert_close(seen[0], obs)
    for t in range(2):  # step t+1 reads the positions step t predicted
        torch.testing.assert_close(seen[t + 1], roll.obs[:, t])


def test_neighbour_graph_is_symmetric_with_self_loops_and_a_radius_rule():
    obs = rail_obs(2, seed=6)
    adj = neighbour_graph(pair_geometry(obs[..., :2], obs[..., 4]), 1)
    assert torch.equal(adj, adj.transpose(1, 2)) and bool(adj.diagonal(dim1=1, dim2=2).all())
    wide = neighbour_graph(pair_geometry(obs[..., :2], obs[..., 4]), 1, radius=10.0)
    assert bool(wide.all())


def test_local_attention_needs_positions():
    spec = rail_spec()
    spec.position_idx, spec.velocity_idx, spec.dt = [], [], None
    with pytest.raises(LoopWMError, match="needs body positions"):
        WorldModel(spec, ModelConfig(d=16, n_heads=2, attention="local"))
    with pytest.raises(LoopWMError, match="unknown attention"):
        WorldModel(rail_spec(), ModelConfig(d=16, n_heads=2, attention="nearby"))
