"""The fixed-depth deep-transformer baseline and FLOP counting."""

from __future__ import annotations

import pytest
import torch

from loopwm.checkpoint import load_model, save_checkpoint
from loopwm.models.flops import block_flops, count_step_flops
from loopwm.models.world_model import ModelConfig, WorldModel
from tests.test_model import make_spec, random_obs


def deep_model(n_deep: int = 3) -> WorldModel:
    torch.manual_seed(0)
    model = WorldModel(make_spec(), ModelConfig(kind="deep", d=16, n_heads=2, n_deep=n_deep))
    torch.nn.init.normal_(model.obs_head.fc2.weight, std=0.5)
    return model


@pytest.mark.parametrize("B", [1, 3])
@pytest.mark.parametrize("T", [1, 4])
def test_deep_shapes_and_depth(B, T):
    model = deep_model().eval()
    obs, act = random_obs(B, T + 1), torch.rand(B, T, 2)
    state, ro = model.observe(model.initial(obs[:, 0]), act, obs[:, 1:])
    assert ro.obs.shape == (B, T, 4, 7) and bool((ro.iterations == 3).all())
    _, ro = model.imagine(state, act)
    assert ro.obs.shape == (B, T, 4, 7)


def test_deep_blocks_are_distinct_and_parameters_grow_with_depth():
    model = deep_model(3)
    blocks = model.core.core.blocks
    assert len(blocks) == 3 and not torch.equal(blocks[0].mlp.fc1.weight, blocks[1].mlp.fc1.weight)
    per_block = sum(p.numel() for p in blocks[0].parameters())
    assert deep_model(5).param_count() - deep_model(3).param_count() == 2 * per_block
    looped = WorldModel(make_spec(), ModelConfig(d=16, n_heads=2))
    assert looped.param_count() < deep_model(3).param_count()  # one shared block vs three
    # the core is what differs: 3 blocks against one block and its injection (a, dt, B: 2d + d^2)
    assert deep_model(3).core_param_count() == 3 * per_block
    assert looped.core_param_count() == per_block + 2 * 16 + 16 * 16
    assert deep_model(3).param_count() - deep_model(3).core_param_count() == looped.param_count() - per_block - 2 * 16 - 16 * 16
    lean = WorldModel(make_spec(), ModelConfig(d=16, n_heads=2, n_prelude=0, n_coda=0))
    assert looped.param_count() - lean.param_count() == 2 * per_block  # no prelude or coda block
    obs = random_obs(2, 3)
    _, ro = lean.eval().imagine(lean.initial(obs[:, 0]), torch.rand(2, 2, 2))  # the encoder feeds the loop directly
    assert ro.obs.shape == (2, 2, 4, 7) and bool(torch.isfinite(ro.obs).all())


def test_deep_determinism_and_checkpoint_round_trip(tmp_path):
    model = deep_model().eval()
    obs, act = random_obs(2, 2), torch.rand(2, 5, 2)
    _, a = model.imagine(model.initial(obs[:, 0]), act)
    _, b = deep_model().eval().imagine(model.initial(obs[:, 0]), act)
    torch.testing.assert_close(a.obs, b.obs)
    save_checkpoint(tmp_path, 1, model, model.checkpoint_meta())
    loaded, meta = load_model(tmp_path)
    assert meta["kind"] == "deep"
    _, c = loaded.imagine(loaded.initial(obs[:, 0]), act)
    torch.testing.assert_close(a.obs, c.obs)
    assert model.max_a_bar() != model.max_a_bar()  # NaN: no retention matrix


def test_counted_flops_agree_with_the_analytic_count_for_one_block():
    torch.manual_seed(0)
    model = WorldModel(make_spec(), ModelConfig(d=16, n_heads=2)).eval()
    obs, action = random_obs(1, 1)[0, 0], torch.zeros(2)
    n_state, d = 4 + model.cfg.n_global, 16
    one_more_iteration = count_step_flops(model, obs, action, depth=3) - count_step_flops(model, obs, action, depth=2)
    injection = 2 * n_state * d * d  # e @ B^T
    assert one_more_iteration == block_flops(d, n_state) + injection
    deep3, deep5 = deep_model(3), deep_model(5)
    assert count_step_flops(deep5, obs, action) - count_step_flops(deep3, obs, action) == 2 * block_flops(d, n_state)


def test_the_bench_suite_has_recurrent_baselines_at_the_looped_models_size():
    from loopwm.bench import model_suite
    from loopwm.models import build_model

    spec = make_spec(5)
    sizes = {name: build_model(spec, m, r).param_count() for name, (m, r) in model_suite(quick=False).items()}
    for name in ("rssm-eq", "gru-eq"):
        assert 0.9 < sizes[name] / sizes["looped"] < 1.1, (name, sizes[name], sizes["looped"])
    assert sizes["rssm"] > 4 * sizes["looped"] and sizes["gru"] > 3 * sizes["looped"]  # the defaults are not
