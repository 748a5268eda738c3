"""The token-halt exit rule: its fitted halting head, the head's training targets, saving it beside
a run and loading it back with the model it was fitted to."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from loopwm.checkpoint import load_model
from loopwm.data import collect
from loopwm.data.dataset import TrajectoryDataset
from loopwm.models.exits import HaltingHead, make_exit_rule
from loopwm.models.world_model import ModelConfig
from loopwm.train.halting import HaltingConfig, fit_halting_head, gain_targets, run_halting
from loopwm.train.loop import TrainConfig, train
from loopwm.utils import LoopWMError
from tests.test_cli import here, loopwm
from tests.test_model import random_obs, small_model


def with_head(model, bias: float | None = None, seed: int = 0):
    """`model` with a halting head attached as load_model attaches one; `bias` pins its output."""
    torch.manual_seed(seed)
    head = HaltingHead(model.cfg.d, hidden=8).eval()
    if bias is not None:
        torch.nn.init.zeros_(head.mlp[2].weight)
        torch.nn.init.constant_(head.mlp[2].bias, bias)
    object.__setattr__(model, "halting_head", head)
    return model


def test_gain_targets_are_the_fall_to_the_best_later_iteration():
    # one body's error after each of 4 iterations, and a second body whose error rises at the end
    errors = torch.tensor([[1.0, 0.2], [0.5, 0.1], [0.6, 0.3], [0.4, 0.3]])
    gain = gain_targets(errors)
    torch.testing.assert_close(gain[:, 0], torch.tensor([0.6, 0.1, 0.2, 0.0]))
    torch.testing.assert_close(gain[:, 1], torch.tensor([0.1, 0.0, 0.0, 0.0]))  # never negative


def test_a_head_that_never_stops_equals_fixed_depth_and_one_that_always_does_equals_one_pass():
    model = small_model().eval()
    obs, act = random_obs(3, 2), torch.rand(3, 4, 2)
    state = model.initial(obs[:, 0])
    _, fixed = model.imagine(state, act, depth=6)
    _, one = model.imagine(state, act, depth=1)
    _, never = model.imagine(state, act, depth=6, exit_rule=make_exit_rule("token-halt", 1e-3, model=with_head(model, 50.0)))
    _, always = model.imagine(state, act, depth=6, exit_rule=make_exit_rule("token-halt", 1e-3, model=with_head(model, -50.0)))
    torch.testing.assert_close(fixed.obs, never.obs)
    assert bool((never.token_iterations == 6).all())
    torch.testing.assert_close(one.obs, always.obs)
    assert bool((always.iterations == 1).all()) and bool((always.token_iterations == 1).all())


def test_batched_token_halt_exits_equal_per_sample_ones():
    model = small_model(attention="local").eval()
    obs, act = random_obs(4, 2, seed=5), torch.rand(4, 5, 2)
    head_model = with_head(model, seed=3)
    outputs = []
    for t in range(3):  # choose the threshold at a median of the head's outputs, so tokens stop at different times
        outputs.append(head_model.halting_head(head_model.halting_head.features(t, torch.randn(4, 5, 16), torch.randn(4, 5, 16))))
    threshold = float(torch.cat(outputs).flatten().median().exp().detach())
    rule = make_exit_rule("token-halt", threshold, model=head_model)
    _, batched = model.imagine(model.initial(obs[:, 0]), act, depth=8, exit_rule=rule)
    assert batched.token_iterations.unique().numel() > 1
    for i in range(4):
        _, alone = model.imagine(model.initial(obs[i : i + 1, 0]), act[i : i + 1], depth=8, exit_rule=rule)
        torch.testing.assert_close(batched.obs[i : i + 1], alone.obs, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched.token_iterations[i : i + 1], alone.token_iterations)


def test_without_a_fitted_head_the_rule_says_how_to_fit_one():
    with pytest.raises(LoopWMError, match="loopwm halting RUN"):
        make_exit_rule("token-halt", 1e-3, model=small_model())


@pytest.fixture(scope="module")
def rail_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("halting")
    from loopwm.data import CollectConfig

    collect(CollectConfig(env_id="loopwm/Rail-v0", out=str(root / "data"), episodes=6, n_bodies=8, max_episode_steps=40,
                          progress=False))
    train(TrainConfig(data=str(root / "data"), out=str(root / "run"), steps=40, batch_size=8, progress=False, device="cpu",
                      threads=1, model=ModelConfig(d=16, n_heads=2, mu_rec=3, attention="local", attn_bias=True)))
    return root


def test_a_fitted_head_is_saved_with_its_checkpoint_and_loads_with_it(rail_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(rail_run / "run", run)
    path, report = run_halting(HaltingConfig(run=str(run), windows=96, horizon=4, max_depth=6, steps=300, device="cpu"))
    assert report["examples"] > 0 and report["held_out_examples"] > 0
    assert report["held_out_mse"] < report["held_out_mse_of_mean"]  # it predicts better than a constant
    info = json.loads(path.read_text())
    assert info["target"] == "latent"  # the default
    model, meta = load_model(run, "cpu")
    assert info["checkpoint_sha256"] == meta["sha256"] and hasattr(model, "halting_head")
    assert not any(k.startswith("halting") for k in model.state_dict())  # never saved as part of the world model
    # the loaded rule runs and spends fewer iterations than its depth at a generous threshold
    obs = torch.as_tensor(TrajectoryDataset.load(rail_run / "data").episode(0)["obs"][:3]).float()[None]
    act = torch.as_tensor(TrajectoryDataset.load(rail_run / "data").episode(0)["action"][:2])[None]
    _, ro = model.imagine(model.read(obs[:, :1]), act, depth=6, exit_rule=make_exit_rule("token-halt", 1.0, model=model))
    assert bool((ro.token_iterations < 6).all())
    # a head fitted to another checkpoint is not attached, and the rule says why
    info["checkpoint_sha256"] = "0" * 64
    path.write_text(json.dumps(info))
    stale, _ = load_model(run, "cpu")
    assert not hasattr(stale, "halting_head")
    with pytest.raises(LoopWMError, match="fitted to the checkpoint of step"):
        make_exit_rule("token-halt", 1e-3, model=stale)


def test_fitting_is_seeded_and_refuses_models_without_a_loop_or_without_bodies(rail_run, monkeypatch):
    model, meta = load_model(rail_run / "run", "cpu")
    ds = TrajectoryDataset.load(rail_run / "data")
    kw = dict(context=2, windows=12, horizon=3, max_depth=4, steps=20, seed=7)
    a, ra = fit_halting_head(model, ds, np.arange(4), **kw)
    b, rb = fit_halting_head(model, ds, np.arange(4), **kw)
    assert ra == rb
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb)
    latent, rl = fit_halting_head(model, ds, np.arange(4), **{**kw, "steps": 200}, target="latent")
    assert latent.target == "latent" and rl["held_out_mse"] < rl["held_out_mse_of_mean"]
    with pytest.raises(LoopWMError, match="unknown halting target"):
        fit_halting_head(model, ds, np.arange(4), **kw, target="loss")
    deep = small_model(kind="deep")
    with pytest.raises(LoopWMError, match="not a looped one"):
        fit_halting_head(deep, ds, np.arange(4), **kw)
    monkeypatch.setattr(type(model.spec), "pixels", property(lambda spec: True))  # a frame model's tokens are patches
    with pytest.raises(LoopWMError, match="token-delta"):
        fit_halting_head(model, ds, np.arange(4), **kw)


def test_halting_command_and_eval_with_the_rule(rail_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(rail_run / "run", run)
    out = loopwm("halting", str(run), "--windows", "16", "--horizon", "3", "--max-depth", "4", "--steps", "30",
                 "--device", "cpu").stdout
    assert "halting head written to" in out and (run / "halting.safetensors").exists()
    small = ["--json", "--rollout-steps", "10", "--horizon", "5", "--max-windows", "8", "--depth", "4"]
    result = json.loads(loopwm("eval", str(run), *small, "--exit", "token-halt", "--threshold", "1e-4").stdout)
    assert result["exit_rule"] == "token-halt" and 1.0 <= result["token_iterations_per_step"] <= 4.0
    missing = here("eval", str(tmp_path / "nothing"), *small)
    assert missing.returncode == 2
    bare = tmp_path / "bare"
    shutil.copytree(rail_run / "run", bare)
    refused = here("eval", str(bare), *small, "--exit", "token-halt")
    assert refused.returncode == 2 and "loopwm halting RUN" in refused.stderr
