"""The looped core and the world model: shapes, equivalences, gradients, determinism, checkpoints."""

from __future__ import annotations

import json
import math

import pytest
import torch

from loopwm.checkpoint import load_model, read_checkpoint, save_checkpoint
from loopwm.models.exits import make_exit_rule
from loopwm.models.looped import DiagInjection, LoopedCore
from loopwm.models.world_model import ModelConfig, WorldModel, WorldSpec
from loopwm.utils import LoopWMError


def make_spec(n: int = 4) -> WorldSpec:
    return WorldSpec(
        obs_shape=[n, 7], action_kind="box", action_dim=2,
        obs_mean=[0.5, 0.5, 0.0, 0.0, 0.06, 0.25, 0.0], obs_std=[0.28, 0.28, 0.3, 0.3, 0.0, 0.43, 0.0],
        delta_std=[0.015, 0.015, 0.05, 0.05, 0.0, 0.0, 0.0],
        obs_low=[0, 0, -2, -2, 0, 0, 0], obs_high=[1, 1, 2, 2, 1, 1, 1],
        position_idx=[0, 1], velocity_idx=[2, 3], radius_idx=4, dt=0.05,
    )


def random_obs(B: int, T: int, n: int = 4, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    obs = torch.zeros(B, T, n, 7)
    obs[..., :2] = 0.1 + 0.8 * torch.rand(B, T, n, 2, generator=g)
    obs[..., 2:4] = 0.5 * torch.randn(B, T, n, 2, generator=g)
    obs[..., 4] = 0.06
    obs[..., 0, 5] = 1.0
    return obs


def small_model(**kw) -> WorldModel:
    torch.manual_seed(0)
    cfg = ModelConfig(d=16, n_heads=2, **kw)
    model = WorldModel(make_spec(), cfg)
    # the obs head starts at zero ("nothing changes"); give it weights so tests see real outputs
    torch.nn.init.normal_(model.obs_head.fc2.weight, std=0.5)
    return model


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("T", [1, 4])
@pytest.mark.parametrize("depth", [1, 3])
def test_shapes_and_dtypes(B, T, depth):
    model = small_model().eval()
    obs = random_obs(B, T + 1)
    act = torch.rand(B, T, 2) * 2 - 1
    state = model.initial(obs[:, 0])
    state, ro = model.observe(state, act, obs[:, 1:], depth=depth)
    assert ro.obs.shape == (B, T, 4, 7) and ro.obs.dtype == torch.float32
    assert ro.reward.shape == (B, T) and ro.cont_logit.shape == (B, T)
    assert ro.iterations.shape == (B, T) and bool((ro.iterations == depth).all())
    state, ro = model.imagine(state, act, depth=depth)
    assert ro.obs.shape == (B, T, 4, 7)
    assert state.h.shape == (B, 4 + model.cfg.n_global, 16)


def test_a_bar_in_open_unit_interval_for_random_parameters():
    inj = DiagInjection(32)
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            inj.a.copy_(torch.randn(32, generator=g) * 5)
            inj.dt_raw.copy_(torch.randn(32, generator=g) * 5)
        a_bar = inj.a_bar()
        assert bool((a_bar > 0).all()) and bool((a_bar < 1).all())
    assert math.isclose(float(DiagInjection(8).a_bar().detach()[0]), 0.45, rel_tol=1e-5)


def test_looped_core_equals_weight_tied_unrolled_stack():
    torch.manual_seed(0)
    core = LoopedCore(d=16, n_heads=2, n_recurrent=2).eval()
    e, z0 = torch.randn(3, 5, 16), torch.randn(3, 5, 16)
    z, used, _ = core.iterate(e, z0, torch.full((3,), 4))
    ref = z0
    for _ in range(4):  # by hand: inject, then the same two blocks each time
        x = core.inject.a_bar() * ref + torch.nn.functional.softplus(core.inject.dt_raw) * (e @ core.inject.B.T)
        for block in core.core.blocks:
            x = block(x)
        ref = x
    torch.testing.assert_close(z, ref)
    assert used.tolist() == [4, 4, 4]


def test_per_sample_depths_equal_separate_runs():
    torch.manual_seed(0)
    core = LoopedCore(d=16, n_heads=2).eval()
    e, z0 = torch.randn(3, 5, 16), torch.randn(3, 5, 16)
    depth = torch.tensor([2, 5, 3])
    z, used, _ = core.iterate(e, z0, depth)
    assert used.tolist() == [2, 5, 3]
    for i in range(3):
        zi, _, _ = core.iterate(e[i : i + 1], z0[i : i + 1], depth[i : i + 1])
        torch.testing.assert_close(z[i : i + 1], zi)


def test_no_gradient_reaches_iterations_before_the_window():
    torch.manual_seed(0)
    core = LoopedCore(d=16, n_heads=2).train()
    e = torch.randn(2, 5, 16, requires_grad=True)
    z0 = torch.randn(2, 5, 16, requires_grad=True)
    z, _, _ = core.iterate(e, z0, torch.tensor([6, 2]), n_grad=2)
    z.sum().backward()
    # sample 0 ran 6 iterations, only the last 2 with gradient: z0 gets none; sample 1 ran 2: z0 gets some
    assert float(z0.grad[0].abs().sum()) == 0.0
    assert float(z0.grad[1].abs().sum()) > 0.0
    # e's gradient for sample 0 equals a reference that runs 4 iterations without gradient, then 2 with
    e_ref = e.detach().clone().requires_grad_(True)
    with torch.no_grad():
        zr = z0.detach()[:1]
        for _ in range(4):
            zr = core.recur(zr, e_ref[:1])
    for _ in range(2):
        zr = core.recur(zr, e_ref[:1])
    zr.sum().backward()
    torch.testing.assert_close(e.grad[0], e_ref.grad[0])


def test_seeded_determinism_of_the_model():
    def run():
        model = small_model(mu_rec=3.0).train()
        torch.manual_seed(1)
        obs, act = random_obs(4, 6), torch.rand(4, 5, 2)
        state = model.initial(obs[:, 0])
        _, ro = model.observe(state, act, obs[:, 1:])
        return ro.obs, ro.iterations

    a, b = run(), run()
    torch.testing.assert_close(a[0], b[0])
    assert torch.equal(a[1], b[1])


def test_training_depth_is_per_sample_poisson():
    model = small_model(mu_rec=6.0, depth_sampling="sample")
    torch.manual_seed(0)
    d = model.sample_depth(4000, "cpu")
    assert d.min() >= 1 and d.max() <= model.cfg.depth_max
    assert abs(d.float().mean().item() - 6.0) < 0.2
    assert d.unique().numel() > 5


def test_training_depth_per_step_is_shared_by_the_batch_and_poisson_over_steps():
    model = small_model(mu_rec=6.0, depth_sampling="step")
    torch.manual_seed(0)
    draws = torch.stack([model.sample_depth(8, "cpu") for _ in range(3000)])  # (steps, B)
    assert draws.shape == (3000, 8) and bool((draws == draws[:, :1]).all())
    assert draws.min() >= 1 and draws.max() <= model.cfg.depth_max
    assert abs(draws[:, 0].float().mean().item() - 6.0) < 0.2 and draws[:, 0].unique().numel() > 5
    with pytest.raises(LoopWMError, match="depth sampling"):
        small_model(depth_sampling="sometimes")


def test_batched_rollout_equals_per_sample_rollouts():
    model = small_model().eval()
    obs, act = random_obs(3, 2), torch.rand(3, 6, 2)
    _, ro = model.imagine(model.initial(obs[:, 0]), act, depth=3)
    for i in range(3):
        _, ri = model.imagine(model.initial(obs[i : i + 1, 0]), act[i : i + 1], depth=3)
        torch.testing.assert_close(ro.obs[i : i + 1], ri.obs, atol=1e-5, rtol=1e-5)


def test_exit_rule_limits():
    model = small_model().eval()
    obs, act = random_obs(3, 2), torch.rand(3, 4, 2)
    state = model.initial(obs[:, 0])
    _, fixed = model.imagine(state, act, depth=6)
    _, never = model.imagine(state, act, depth=6, exit_rule=make_exit_rule("delta", threshold=0.0))
    _, always = model.imagine(state, act, depth=6, exit_rule=make_exit_rule("delta", threshold=1e9))
    torch.testing.assert_close(fixed.obs, never.obs)
    assert bool((never.iterations == 6).all())
    assert bool((always.iterations == 1).all())
    with pytest.raises(LoopWMError, match="unknown exit rule"):
        make_exit_rule("nope")


def test_halted_samples_are_frozen():
    torch.manual_seed(0)
    core = LoopedCore(d=16, n_heads=2).eval()
    e, z0 = torch.randn(4, 5, 16), torch.randn(4, 5, 16)

    class StopFirstAfterTwo(make_exit_rule("fixed").__class__):
        def should_stop(self, t, z_prev, z_new, rows):
            return (rows == 0) & torch.tensor(t + 1 >= 2)

    z, used, _ = core.iterate(e, z0, torch.full((4,), 5), exit_rule=StopFirstAfterTwo())
    assert used.tolist() == [2, 5, 5, 5]
    z2, _, _ = core.iterate(e[:1], z0[:1], torch.tensor([2]))
    torch.testing.assert_close(z[:1], z2)


def test_prediction_stays_inside_the_box():
    model = small_model().eval()
    with torch.no_grad():
        model.obs_head.fc2.bias.fill_(50.0)  # absurd velocity changes
    obs, act = random_obs(2, 2), torch.rand(2, 30, 2)
    _, ro = model.imagine(model.initial(obs[:, 0]), act, depth=2)
    pos, rad = ro.obs[..., :2], ro.obs[..., 4:5]
    assert bool((pos - rad >= -1e-6).all()) and bool((pos + rad <= 1 + 1e-6).all())


def test_checkpoint_round_trip_and_corruption(tmp_path):
    model = small_model().eval()
    save_checkpoint(tmp_path, 7, model, model.checkpoint_meta())
    loaded, meta = load_model(tmp_path)
    assert meta["step"] == 7
    obs, act = random_obs(2, 2), torch.rand(2, 3, 2)
    _, a = model.imagine(model.initial(obs[:, 0]), act, depth=2)
    _, b = loaded.imagine(loaded.initial(obs[:, 0]), act, depth=2)
    torch.testing.assert_close(a.obs, b.obs)
    tensors_file = tmp_path / "checkpoints" / "step_00000007.safetensors"
    data = bytearray(tensors_file.read_bytes())
    data[-10] ^= 0xFF
    tensors_file.write_bytes(bytes(data))
    with pytest.raises(LoopWMError, match="corrupt"):
        read_checkpoint(tmp_path / "checkpoints" / "step_00000007.json")
    with pytest.raises(LoopWMError, match="no intact checkpoint"):
        load_model(tmp_path)
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"hello": 1}))
    with pytest.raises(LoopWMError, match="not a loopwm checkpoint"):
        load_model(foreign)
    with pytest.raises(LoopWMError, match="no such run"):
        load_model(tmp_path / "missing")


def test_checkpoints_that_saved_derived_buffers_still_load():
    from loopwm.checkpoint import load_weights

    torch.manual_seed(0)
    spec = make_spec()
    spec.action_low, spec.action_high = [-2.0, -2.0], [2.0, 2.0]
    model = WorldModel(spec, ModelConfig(d=16, n_heads=2))
    assert "action_centre" not in model.state_dict()  # derived from the spec, not saved
    old = {**model.state_dict(), "action_centre": torch.zeros(2), "action_half_range": torch.full((2,), 2.0)}
    load_weights(model, old)
    with pytest.raises(RuntimeError, match="unexpected_key"):
        load_weights(model, {**model.state_dict(), "unexpected_key": torch.zeros(1)})


def test_bodies_are_interchangeable_unless_slot_ids_tell_them_apart():
    """Without slot ids, swapping two bodies swaps their predictions and leaves the reward alone;
    with them the model can tell body 1 from body 2 (a reward may depend on which is which)."""
    obs = random_obs(2, 1)[:, 0]  # (B, N, F)
    act = torch.zeros(2, 2)
    swap = [0, 2, 1, 3]

    def run(model, o):
        with torch.no_grad():
            _, out = model.step(model.initial(o), act)
        return out

    def with_reward(model):  # a reward head with real outputs
        torch.nn.init.normal_(model.reward_head.fc2.weight, std=0.5)
        return model.eval()

    plain = with_reward(small_model())
    a, b = run(plain, obs), run(plain, obs[:, swap])
    torch.testing.assert_close(b["obs"], a["obs"][:, swap], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(b["reward"], a["reward"], rtol=1e-4, atol=1e-5)
    ids = with_reward(small_model(slot_ids=4))
    torch.nn.init.normal_(ids.encoder.slot.weight)  # as if trained (it starts near zero)
    a, b = run(ids, obs), run(ids, obs[:, swap])
    assert not torch.allclose(b["reward"], a["reward"], rtol=1e-3, atol=1e-4)
    with pytest.raises(LoopWMError, match="slot-ids 5"):
        ids.step(ids.initial(random_obs(1, 1, n=5)[:, 0]), act[:1])


@pytest.mark.parametrize("context", [1, 2, 3])
def test_tracking_reads_each_step_from_the_last_context_observations_only(context):
    """track's prediction of o_{t+1} is the window o_{t-C+1} .. o_t read as training reads it, and a
    batch of trajectories tracks as each one alone."""
    model = small_model(mu_rec=2.0).eval()
    obs = random_obs(2, 7)  # (B, T+1, N, F)
    act = torch.rand(2, 6, 2) * 2 - 1  # (B, T, A)
    roll = model.track(obs, act, context, depth=2)
    assert roll.obs.shape == (2, 6, 4, 7) and roll.iterations.shape == (2, 6)
    with torch.no_grad():
        for t in range(6):
            s = max(0, t - context + 1)
            state = model.initial(obs[:, s])
            if t > s:
                state, _ = model.observe(state, act[:, s:t], obs[:, s + 1 : t + 1], depth=2)
            _, out = model.step(state, act[:, t], 2)
            torch.testing.assert_close(roll.obs[:, t], out["obs"], atol=1e-5, rtol=1e-5)
    alone = model.track(obs[1:], act[1:], context, depth=2, chunk=2)  # chunked windows give the same
    torch.testing.assert_close(alone.obs[0], roll.obs[1], atol=1e-5, rtol=1e-5)
    # what lies before the window does not matter
    early = obs.clone()
    early[:, 0] = random_obs(2, 1, seed=5)[:, 0]
    changed = model.track(early, act, context, depth=2)
    torch.testing.assert_close(changed.obs[:, context:], roll.obs[:, context:])


def test_a_world_that_does_not_integrate_gets_its_positions_predicted_as_changes():
    from dataclasses import replace

    model = small_model().eval()
    obs = random_obs(3, 1)[:, 0]  # (B, N, F)
    raw = torch.randn(3, 4, 7)
    integrated = model._decode(obs, raw)
    model.spec = replace(model.spec, integrates=False)
    free = model._decode(obs, raw)
    assert torch.allclose(integrated[..., 2:4], free[..., 2:4])  # velocities: the same change either way
    expect = (obs + raw * model.delta_scale)[..., :2]
    inside = (expect > 0.1) & (expect < 0.9)  # away from the box's clamp
    assert inside.any() and torch.allclose(free[..., :2][inside], expect[inside])
    assert not torch.allclose(integrated[..., :2][inside], expect[inside])
