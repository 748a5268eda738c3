"""The RSSM baseline: shapes, determinism, latent losses and gradients, the box, discrete actions, checkpoints."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from loopwm.checkpoint import model_state, read_checkpoint, save_checkpoint
from loopwm.models.rssm import RSSM, RSSMConfig, sample_onehot, unimix_probs
from loopwm.models.world_model import WorldSpec
from tests.test_model import make_spec, random_obs

SMALL = RSSMConfig(deter=32, stoch=4, classes=5, hidden=32)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls gain nothing from threads, and on a busy 2-core machine OpenMP's thread
    hand-offs made them ~300x slower; run this module on one thread and restore the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def small_rssm(spec: WorldSpec | None = None, **kw) -> RSSM:
    torch.manual_seed(0)
    model = RSSM(spec or make_spec(), replace(SMALL, **kw))
    # the obs head starts at zero ("nothing changes"); give it weights so tests see real outputs
    torch.nn.init.normal_(model.obs_head[-1].weight, std=0.5)
    return model


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("T", [1, 4])
def test_shapes_and_dtypes(B, T):
    model = small_rssm().eval()
    obs, act = random_obs(B, T + 1), torch.rand(B, T, 2) * 2 - 1
    state, ro = model.observe(model.initial(obs[:, 0]), act, obs[:, 1:])
    assert ro.obs.shape == (B, T, 4, 7) and ro.obs.dtype == torch.float32
    assert ro.reward.shape == (B, T) and ro.cont_logit.shape == (B, T)
    assert ro.iterations.shape == (B, T) and ro.iterations.dtype == torch.long and bool((ro.iterations == 1).all())
    assert state.h.shape == (B, 32) and state.z.shape == (B, 4 * 5)
    state, ro = model.imagine(state, act)
    assert ro.obs.shape == (B, T, 4, 7) and ro.reward.shape == (B, T)
    assert state.real is False and state.obs.shape == (B, 4, 7)


def test_seeded_determinism_in_train_mode():
    def run():
        model = small_rssm().train()
        torch.manual_seed(1)
        obs, act = random_obs(4, 6), torch.rand(4, 5, 2)
        state, ro = model.observe(model.initial(obs[:, 0]), act, obs[:, 1:])
        _, ri = model.imagine(state, act)
        return ro.obs, ri.obs, state.z

    for a, b in zip(run(), run()):
        torch.testing.assert_close(a, b)


def test_eval_mode_is_deterministic_without_seeding():
    model = small_rssm().eval()
    obs, act = random_obs(3, 5), torch.rand(3, 4, 2)
    outs = []
    for seed in (1, 2):
        torch.manual_seed(seed)  # a different global RNG state must not matter in eval mode
        state, ro = model.observe(model.initial(obs[:, 0]), act, obs[:, 1:])
        _, ri = model.imagine(state, act)
        outs.append((ro.obs, ri.obs))
    torch.testing.assert_close(outs[0], outs[1])


@pytest.mark.parametrize("cell", [{}, {"gru": "layernorm", "learned_init": True}])
def test_batched_imagination_equals_per_sample_imagination(cell):
    model = small_rssm(**cell).eval()
    obs, act = random_obs(3, 3), torch.rand(3, 6, 2)
    state, _ = model.observe(model.initial(obs[:, 0]), act[:, :2], obs[:, 1:])
    _, ro = model.imagine(state, act)
    for i in range(3):
        si, _ = model.observe(model.initial(obs[i : i + 1, 0]), act[i : i + 1, :2], obs[i : i + 1, 1:])
        _, ri = model.imagine(si, act[i : i + 1])
        torch.testing.assert_close(ro.obs[i : i + 1], ri.obs, atol=1e-5, rtol=1e-5)


def test_aux_loss_on_real_steps_only_with_gradients():
    model = small_rssm().train()
    obs, act = random_obs(3, 2), torch.rand(3, 3, 2)
    state, out = model.step(model.initial(obs[:, 0]), act[:, 0])
    aux = out["aux_loss"]
    value = aux.item()
    assert aux.dim() == 0 and math.isfinite(value) and value > 0
    # the KL terms alone are at least their free-nats floor
    assert value >= (model.cfg.kl_dyn + model.cfg.kl_rep) * model.cfg.free_nats - 1e-6
    aux.backward()
    for name in ("encoder.0.0.weight", "post_head.0.0.weight", "recon_head.1.weight"):
        assert float(dict(model.named_parameters())[name].grad.abs().sum()) > 0, name
    _, out = model.step(state, act[:, 1])  # an imagined step: nothing to reconstruct, no KL
    assert out["aux_loss"].dim() == 0 and out["aux_loss"].item() == 0.0


def test_straight_through_gradient_reaches_the_logits():
    logits = torch.randn(2, 3, 4, requires_grad=True)
    z = sample_onehot(unimix_probs(logits, 0.01), sample=True)
    # the value is a one-hot (up to rounding of `+ probs - probs`), the gradient that of the probabilities
    torch.testing.assert_close(z.detach(), torch.nn.functional.one_hot(z.detach().argmax(-1), 4).float())
    (z * torch.randn(2, 3, 4)).sum().backward()
    assert float(logits.grad.abs().sum()) > 0
    # in the model: with the KL flat (huge free nats), the prior head learns only through the sampled
    # z_{t+1} the prediction is decoded from, the posterior head only through the z the
    # reconstruction is decoded from
    model = small_rssm(free_nats=1e6).train()
    obs, act = random_obs(2, 2), torch.rand(2, 1, 2)
    _, out = model.step(model.initial(obs[:, 0]), act[:, 0])
    params = dict(model.named_parameters())
    (out["obs"] ** 2).sum().backward(retain_graph=True)
    assert float(params["prior_head.1.weight"].grad.abs().sum()) > 0
    model.zero_grad()
    out["aux_loss"].backward()
    assert float(params["post_head.1.weight"].grad.abs().sum()) > 0


def test_unimix_floor():
    cfg = SMALL
    logits = torch.randn(8, cfg.stoch, cfg.classes) * 50  # nearly deterministic before mixing
    probs = unimix_probs(logits, cfg.unimix)
    assert float(probs.min()) >= cfg.unimix / cfg.classes - 1e-7
    torch.testing.assert_close(probs.sum(-1), torch.ones(8, cfg.stoch))
    model = small_rssm()
    with torch.no_grad():
        model.prior_head[-1].bias.mul_(0).add_(torch.randn(cfg.stoch * cfg.classes) * 100)
    with torch.no_grad():
        probs = model._dist(model.prior_head(torch.randn(5, cfg.deter)))  # (B, S, C)
    assert probs.shape == (5, cfg.stoch, cfg.classes)
    assert float(probs.min()) >= cfg.unimix / cfg.classes - 1e-7


def test_prediction_stays_inside_the_box():
    model = small_rssm().eval()
    with torch.no_grad():
        model.obs_head[-1].bias.fill_(50.0)  # absurd velocity changes
    obs, act = random_obs(2, 2), torch.rand(2, 30, 2)
    _, ro = model.imagine(model.initial(obs[:, 0]), act)
    pos, rad = ro.obs[..., :2], ro.obs[..., 4:5]
    assert bool((pos - rad >= -1e-6).all()) and bool((pos + rad <= 1 + 1e-6).all())


def test_discrete_actions():
    spec = replace(make_spec(), action_kind="discrete", action_dim=3)
    model = small_rssm(spec).train()
    obs = random_obs(3, 4)
    act = torch.randint(0, 3, (3, 3))  # (B, T) action indices
    state, _ = model.step(model.initial(obs[:, 0]), act[:, 0])  # (B,) for one step
    assert state.obs.shape == (3, 4, 7)
    state, ro = model.observe(model.initial(obs[:, 0]), act, obs[:, 1:])
    _, ri = model.imagine(state, act)
    assert ro.obs.shape == ri.obs.shape == (3, 3, 4, 7)
    assert bool(torch.isfinite(ri.obs).all())


def test_flat_observations():
    spec = WorldSpec(obs_shape=[3], action_kind="box", action_dim=1, obs_mean=[0.0] * 3, obs_std=[1.0] * 3,
                     delta_std=[0.1] * 3, obs_low=[None] * 3, obs_high=[None] * 3)
    model = small_rssm(spec).eval()
    obs = torch.randn(2, 3, 3)  # (B, T+1, F)
    state, ro = model.observe(model.initial(obs[:, 0]), torch.rand(2, 2, 1), obs[:, 1:])
    assert ro.obs.shape == (2, 2, 1, 3)


def test_checkpoint_round_trip(tmp_path):
    model = small_rssm().eval()
    meta = model.checkpoint_meta()
    assert meta["kind"] == "rssm" and meta["model"]["stoch"] == 4
    json_path = save_checkpoint(tmp_path, 3, model, meta)
    tensors, meta = read_checkpoint(json_path)
    loaded = RSSM(WorldSpec(**meta["spec"]), RSSMConfig(**meta["model"]))
    loaded.load_state_dict(model_state(tensors))
    loaded.eval()
    obs, act = random_obs(2, 3), torch.rand(2, 4, 2)
    outs = []
    for m in (model, loaded):
        state, ro = m.observe(m.initial(obs[:, 0]), act[:, :2], obs[:, 1:])
        _, ri = m.imagine(state, act)
        outs.append((ro.obs, ri.obs, ri.reward))
    torch.testing.assert_close(outs[0], outs[1])
    assert math.isnan(model.max_a_bar()) and model.param_count() == loaded.param_count()


def test_layernorm_gru_cell_matches_its_equations():
    from loopwm.models.rssm import LayerNormGRUCell

    torch.manual_seed(0)
    cell = LayerNormGRUCell(3, 4)
    x, h = torch.randn(2, 3), torch.randn(2, 4)
    g = torch.nn.functional.layer_norm(torch.cat([x, h], -1) @ cell.linear.weight.T, (12,),
                                       cell.norm.weight, cell.norm.bias)
    r, c, u = g[:, :4], g[:, 4:8], g[:, 8:]
    u = torch.sigmoid(u - 1)
    want = u * torch.tanh(torch.sigmoid(r) * c) + (1 - u) * h
    torch.testing.assert_close(cell(x, h), want)
    # at initialisation the update gate keeps most of h: sigmoid(-1) = 0.27 of the candidate on average
    assert torch.sigmoid(torch.tensor(-1.0)) < 0.3


def test_learned_initial_state_is_used_and_trained():
    model = small_rssm(gru="layernorm", learned_init=True)
    with torch.no_grad():
        model.h0.fill_(0.5)
    state = model.initial(random_obs(3, 1)[:, 0])
    torch.testing.assert_close(state.h, torch.full((3, SMALL.deter), math.tanh(0.5)))
    _, out = model.step(state, torch.rand(3, 2))
    (out["obs"].square().mean() + out["aux_loss"]).backward()
    assert model.h0.grad is not None and model.h0.grad.abs().sum() > 0
    assert not hasattr(small_rssm(), "h0") and isinstance(small_rssm().gru, torch.nn.GRUCell)  # the defaults


def test_runs_saved_before_the_dreamer_gru_still_load(tmp_path):
    from loopwm.checkpoint import load_model

    old = small_rssm().eval()
    meta = old.checkpoint_meta()
    for key in ("gru", "learned_init"):  # what a run saved before these options holds
        del meta["model"][key]
    save_checkpoint(tmp_path, 1, old, meta)
    loaded, _ = load_model(tmp_path)
    assert isinstance(loaded.gru, torch.nn.GRUCell) and not loaded.cfg.learned_init
    obs = random_obs(2, 1)[:, 0]
    torch.testing.assert_close(loaded.imagine(loaded.initial(obs), torch.zeros(2, 3, 2))[1].obs,
                               old.imagine(old.initial(obs), torch.zeros(2, 3, 2))[1].obs)
