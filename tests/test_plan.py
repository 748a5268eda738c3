"""Planning in imagination: the planners, the worlds they plan in, closed-loop control, and the
learned model as a Gymnasium environment."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from loopwm.plan import LearnedWorld, OracleWorld, discounted_return, make_planner
from loopwm.plan.control import PlanConfig, run_plan
from loopwm.utils import LoopWMError
from tests.test_cli import here, loopwm, trained  # noqa: F401 - the fixture is used below
from tests.test_model import random_obs, small_model


@pytest.mark.parametrize("name", ["mppi", "cem"])
def test_continuous_planner_finds_the_best_sequence_of_a_known_objective(name):
    space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    target = torch.tensor([0.6, -0.3])

    def score(seqs):  # (K, H, 2): best when every step equals the target
        return -((seqs - target) ** 2).sum((1, 2))

    planner = make_planner(name, space, horizon=4, candidates=128, iterations=6, seed=1)
    action = planner.act(score)
    assert action.shape == (2,) and action.dtype == np.float32
    assert np.abs(action - target.numpy()).max() < 0.1
    rand = torch.rand(128, 4, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert planner.last_return > float(score(rand).max())  # better than the best of as many random draws


@pytest.mark.parametrize("name", ["mppi", "cem"])
def test_discrete_planner_picks_the_rewarding_action(name):
    space = gym.spaces.Discrete(4, start=1)

    def score(seqs):  # (K, H) actions in {1..4}; reward for every 3
        assert int(seqs.min()) >= 1 and int(seqs.max()) <= 4
        return (seqs == 3).float().sum(1)

    planner = make_planner(name, space, horizon=5, candidates=64, iterations=4, seed=0)
    assert planner.act(score) == 3


def test_planner_is_seeded_and_warm_started():
    space = gym.spaces.Box(-2.0, 2.0, shape=(1,), dtype=np.float32)

    def score(seqs):
        return -(seqs[:, :, 0] - torch.linspace(-1, 1, seqs.shape[1])).abs().sum(1)

    a = make_planner("mppi", space, horizon=6, candidates=64, seed=3)
    b = make_planner("mppi", space, horizon=6, candidates=64, seed=3)
    assert a.act(score) == b.act(score)
    before = a.mean.clone()
    a.shift()
    torch.testing.assert_close(a.mean[:-1], before[1:])  # the plan moves one step on
    with pytest.raises(LoopWMError, match="unknown planner"):
        make_planner("nope", space)
    with pytest.raises(LoopWMError, match="Box and Discrete"):
        make_planner("mppi", gym.spaces.MultiBinary(3))


def test_discounted_return_on_a_hand_made_example():
    reward = torch.tensor([[1.0, 1.0, 1.0]])
    never_ends = torch.full((1, 3), 50.0)
    ends_after_first = torch.tensor([[-50.0, 50.0, 50.0]])
    assert float(discounted_return(reward, never_ends, 0.5)) == pytest.approx(1 + 0.5 + 0.25)
    assert float(discounted_return(reward, ends_after_first, 0.5)) == pytest.approx(1.0)
    assert float(discounted_return(reward, None, 1.0)) == pytest.approx(3.0)


def test_learned_world_scores_a_batch_as_it_scores_each_candidate():
    model = small_model().eval()
    world = LearnedWorld(model, depth=3)
    obs = random_obs(1, 2)[0]  # (T, N, F)
    world.reset(obs[0].numpy())
    world.observe(np.array([0.1, -0.2], dtype=np.float32), obs[1].numpy())
    seqs = torch.rand(5, 4, 2) * 2 - 1
    batched = world.score(seqs)
    assert batched.shape == (5,)
    for i in range(5):
        torch.testing.assert_close(world.score(seqs[i : i + 1]), batched[i : i + 1], atol=1e-5, rtol=1e-5)
    assert world.imagined_steps == 2 * 5 * 4 and world.iterations == pytest.approx(3 * world.imagined_steps)


def test_planning_with_the_true_simulator_beats_random_actions():
    cfg = dict(env_id="Pendulum-v1", episodes=2, max_episode_steps=30, horizon=8, candidates=48, iterations=2, seed=0)
    oracle = run_plan(PlanConfig(model="oracle", **cfg))
    rand = run_plan(PlanConfig(model="random", **cfg))
    assert oracle["return_mean"] > rand["return_mean"] + 20
    assert oracle["model_steps_per_second"] > 0 and oracle["iterations_per_step"] is None
    again = run_plan(PlanConfig(model="oracle", **cfg))
    assert again["returns"] == oracle["returns"]  # seeded: the same decisions twice


def test_oracle_world_leaves_the_real_environment_untouched():
    env = gym.make("Pendulum-v1")
    env.reset(seed=0)
    before = env.unwrapped.state.copy()
    OracleWorld(env).score(torch.rand(4, 5, 1) * 4 - 2)
    assert np.array_equal(env.unwrapped.state, before)


def test_plan_command_with_a_trained_run(trained, tmp_path):  # noqa: F811 - pytest fixture
    out = tmp_path / "plan"
    proc = loopwm("plan", "--model", str(trained / "run"), "--episodes", "1", "--max-episode-steps", "6",
                  "--horizon", "3", "--candidates", "8", "--iterations", "1", "--out", str(out), "--json",
                  "--device", "cpu", "--depth", "2")
    result = json.loads(proc.stdout)
    for key in ("return_mean", "return_std", "episodes", "decisions_per_second", "model_steps_per_second",
                "iterations_per_step"):
        assert isinstance(result[key], (int, float)), key
    assert result["episodes"] == 1 and result["decisions"] == 6 and result["iterations_per_step"] == pytest.approx(2.0)
    assert (out / "episode.gif").exists() and json.loads((out / "plan.json").read_text())["config"]["horizon"] == 3
    assert result["context"] == json.loads((trained / "run" / "config.json").read_text())["context"]  # read as trained
    proc = here("plan", "--model", "oracle")
    assert proc.returncode == 2 and "--env-id" in proc.stderr


def test_imagined_env_passes_the_gymnasium_checker_and_is_deterministic(trained):  # noqa: F811
    from gymnasium.utils.env_checker import check_env

    import loopwm

    env = loopwm.ImaginedEnv(trained / "run", max_episode_steps=5, depth=2)
    check_env(env, skip_render_check=True)
    runs = []
    for _ in range(2):
        obs, _ = env.reset(seed=7)
        trace = [obs]
        for t in range(5):
            obs, reward, terminated, truncated, info = env.step(np.array([0.5, -0.5], dtype=np.float32))
            trace.append(obs)
            assert env.observation_space.contains(obs) and info["iterations"] == 2
        assert truncated or terminated
        runs.append(np.stack(trace))
    np.testing.assert_array_equal(runs[0], runs[1])
    with pytest.raises(LoopWMError, match="outside the action space"):
        env.step(np.array([5.0, 0.0], dtype=np.float32))


def test_lambda_returns_on_hand_made_episodes():
    from loopwm.plan import lambda_returns

    ones = np.ones(3)
    running = np.array([False, False, False])
    # lam 1: the observed rewards, bootstrapped from the value after the last step (a time limit cut it)
    np.testing.assert_allclose(lambda_returns(ones, running, np.array([0.0, 0.0, 4.0]), 0.5, 1.0), [2.25, 2.5, 3.0])
    # a terminated episode is worth nothing after its last step
    np.testing.assert_allclose(lambda_returns(ones, np.array([False, False, True]), np.array([9.0, 9.0, 9.0]), 0.5, 1.0),
                               [1.75, 1.5, 1.0])
    # lam 0: one-step targets r + discount * V(next)
    np.testing.assert_allclose(lambda_returns(ones, running, np.array([2.0, 4.0, 6.0]), 0.5, 0.0), [2.0, 3.0, 4.0])


def test_discounted_return_adds_the_terminal_value_where_the_episode_still_runs():
    reward = torch.ones(2, 3)
    cont = torch.tensor([[50.0, 50.0, 50.0], [-50.0, 50.0, 50.0]])  # the second candidate ends after step 0
    tail = torch.tensor([8.0, 8.0])
    got = discounted_return(reward, cont, 0.5, tail)
    assert got.tolist() == pytest.approx([1.75 + 0.125 * 8.0, 1.0], abs=1e-6)
    assert discounted_return(reward, None, 0.5, tail).tolist() == pytest.approx([2.75, 2.75])


@pytest.fixture(scope="module")
def pendulum_value(tmp_path_factory):
    root = tmp_path_factory.mktemp("value")
    loopwm("collect", "--env-id", "Pendulum-v1", "--out", str(root / "data"), "--episodes", "20",
           "--max-episode-steps", "100", "--no-progress")
    proc = loopwm("value", "--data", str(root / "data"), "--out", str(root / "value"))
    assert "value written to" in proc.stdout
    return root


def test_fitted_value_ranks_held_out_returns_and_reloads_identically(pendulum_value):
    from loopwm.plan import load_value

    meta = json.loads((pendulum_value / "value" / "value.json").read_text())
    assert meta["env_id"] == "Pendulum-v1" and meta["obs_shape"] == [3]
    assert meta["metrics"]["val"]["spearman"] > 0.5  # it knows which states pay more, on episodes it never saw
    value, _ = load_value(pendulum_value / "value")
    again, _ = load_value(pendulum_value / "value")
    obs = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])  # upright and still; hanging down
    with torch.no_grad():
        assert torch.equal(value(obs), again(obs))
        assert float(value(obs[0])) > float(value(obs[1]))  # upright is worth more than hanging
        assert value(obs[None].expand(5, 2, 3)).shape == (5, 2)  # any leading dims
        with pytest.raises(LoopWMError, match="fitted on observations of shape"):
            value(torch.zeros(2, 4))
    with pytest.raises(LoopWMError, match="holds no fitted value"):
        load_value(pendulum_value / "data")
    proc = here("value")
    assert proc.returncode == 2 and "--data" in proc.stderr


def test_a_terminal_value_lets_a_short_horizon_swing_up(pendulum_value):
    cfg = dict(model="oracle", env_id="Pendulum-v1", episodes=2, max_episode_steps=100, horizon=4, candidates=32,
               iterations=2, seed=0)
    plain = run_plan(PlanConfig(**cfg))
    valued = run_plan(PlanConfig(**cfg, value=str(pendulum_value / "value")))
    assert valued["value"] and valued["return_mean"] > plain["return_mean"] + 100
    with pytest.raises(LoopWMError, match="discount"):
        run_plan(PlanConfig(**cfg, value=str(pendulum_value / "value"), discount=0.9))
    with pytest.raises(LoopWMError, match="fitted on Pendulum-v1"):
        run_plan(PlanConfig(**{**cfg, "env_id": "CartPole-v1"}, value=str(pendulum_value / "value")))


def test_learned_world_adds_the_value_of_its_last_prediction():
    from loopwm.plan import ValueFunction
    from loopwm.plan.worlds import expand_state

    model = small_model().eval()
    torch.manual_seed(0)
    value = ValueFunction(model.spec.obs_shape, hidden=8).eval()
    obs = random_obs(1, 1)[0, 0].numpy()  # (N, F)
    plain, valued = LearnedWorld(model, depth=2, discount=0.9), LearnedWorld(model, depth=2, discount=0.9, value=value)
    plain.reset(obs)
    valued.reset(obs)
    seqs = torch.rand(4, 3, 2) * 2 - 1
    with torch.no_grad():
        _, roll = model.imagine(expand_state(plain.state, 4), seqs, depth=2)
        alive = torch.sigmoid(roll.cont_logit).prod(1)  # (K,) still running after the last step
        tail = 0.9 ** 3 * alive * value(roll.obs[:, -1].reshape(4, *model.spec.obs_shape))
    torch.testing.assert_close(valued.score(seqs), plain.score(seqs) + tail, atol=1e-5, rtol=1e-5)


def test_a_value_fits_and_plans_on_observations_of_several_bodies(trained, tmp_path):  # noqa: F811
    from loopwm.plan import ValueConfig, fit_value, load_value

    # entity observations are (bodies, features): the value must flatten them itself
    folder = fit_value(ValueConfig(data=str(trained / "data"), out=str(tmp_path / "v"), rounds=2, steps_per_round=5))
    value, meta = load_value(folder)
    assert len(meta["obs_shape"]) == 2 and meta["obs_shape"][0] == 4
    assert meta["metrics"]["val"]["explained_variance"] < 0.5  # ten gradient steps: a poor value, and planning says so
    with pytest.warns(UserWarning, match="predicts returns poorly"):
        result = run_plan(PlanConfig(model=str(trained / "run"), value=str(folder), episodes=1, max_episode_steps=5,
                                     horizon=3, candidates=8, iterations=1, seed=0))
    assert result["value"] and np.isfinite(result["return_mean"])


def test_value_warning_names_the_explained_variance():
    from loopwm.plan.value import value_warning

    assert value_warning({"metrics": {"val": {"explained_variance": 0.82}}}) is None
    assert "explained variance 0.04" in value_warning({"metrics": {"val": {"explained_variance": 0.04}}})
    assert "no held-out episodes" in value_warning({"metrics": {"val": None}})


def toy_reward(obs, action, next_obs):
    """A known reward for the tests below: minus the squared size of the next observation."""
    return -(next_obs.reshape(next_obs.shape[0], -1) ** 2).sum(-1)


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "Reacher-v5", "loopwm/Push-v0"])
def test_known_rewards_match_the_environments_own(env_id):
    from loopwm.plan.rewards import KNOWN_REWARDS

    if env_id == "Reacher-v5":
        pytest.importorskip("mujoco", reason="Reacher-v5 needs the mujoco extra")
    from loopwm.envs import make_env

    env = make_env(env_id)
    obs, _ = env.reset(seed=0)
    env.action_space.seed(0)
    before, actions, after, rewards = [], [], [], []
    for _ in range(60):
        action = env.action_space.sample()
        nxt, reward, terminated, truncated, _ = env.step(action)
        before.append(obs), actions.append(action), after.append(nxt), rewards.append(reward)
        obs = nxt
    got = KNOWN_REWARDS[env_id](*(torch.as_tensor(np.stack(x), dtype=torch.float64) for x in (before, actions, after)))
    np.testing.assert_allclose(got.numpy(), rewards, rtol=1e-5, atol=1e-5)


def test_learned_world_scores_with_a_known_reward_instead_of_its_head():
    from loopwm.plan.rewards import rewards_of
    from loopwm.plan.worlds import expand_state

    model = small_model().eval()
    obs = random_obs(1, 1)[0, 0].numpy()  # (N, F)
    world = LearnedWorld(model, depth=2, discount=0.9, reward_fn=toy_reward)
    world.reset(obs)
    seqs = torch.rand(4, 3, 2) * 2 - 1
    with torch.no_grad():
        _, roll = model.imagine(expand_state(world.state, 4), seqs, depth=2)
        reward = -(roll.obs.reshape(4, 3, -1) ** 2).sum(-1)  # (K, H)
        assert torch.allclose(rewards_of(toy_reward, world.state.obs.expand(4, -1, -1), seqs, roll.obs,
                                         model.spec.obs_shape), reward)
        expected = discounted_return(reward, roll.cont_logit, 0.9)
    torch.testing.assert_close(world.score(seqs), expected, atol=1e-5, rtol=1e-5)


def test_reward_option_in_planning_and_in_the_imagined_env(trained):  # noqa: F811
    from loopwm import ImaginedEnv
    from loopwm.plan.rewards import resolve_reward

    result = run_plan(PlanConfig(model=str(trained / "run"), reward="tests.test_plan:toy_reward", episodes=1,
                                 max_episode_steps=4, horizon=3, candidates=8, iterations=1, seed=0))
    assert result["reward"] == "tests.test_plan:toy_reward"
    env = ImaginedEnv(trained / "run", reward="tests.test_plan:toy_reward")
    env.reset(seed=0)
    obs, reward, *_ = env.step(env.action_space.sample())
    assert reward == pytest.approx(-float((obs.astype(np.float64) ** 2).sum()), rel=1e-4)
    with pytest.raises(LoopWMError, match="no known reward function for 'loopwm/Balls-v0'"):
        run_plan(PlanConfig(model=str(trained / "run"), reward="known", episodes=1, max_episode_steps=2))
    with pytest.raises(LoopWMError, match="cannot load the reward function"):
        resolve_reward("no_such_module_xyz:fn", None)
    with pytest.raises(LoopWMError, match="does not imagine"):
        run_plan(PlanConfig(model="oracle", env_id="Pendulum-v1", reward="known", episodes=1))


def test_the_learned_world_reads_its_state_from_the_last_context_observations():
    model = small_model().eval()
    obs = random_obs(1, 6)[0]  # (T, N, F)
    acts = [np.array([0.1 * i, -0.2], dtype=np.float32) for i in range(5)]
    seqs = torch.rand(3, 4, 2) * 2 - 1

    def scores(first, context):
        world = LearnedWorld(model, depth=2, context=context)
        world.reset(first)
        for a, o in zip(acts, obs[1:]):
            world.observe(a, o.numpy())
        return world.score(seqs)

    # two episodes that differ only before the last two observations score alike with context 2
    other_start = random_obs(1, 1, seed=9)[0, 0].numpy()
    torch.testing.assert_close(scores(obs[0].numpy(), 2), scores(other_start, 2))
    # and unlike with a context that reaches back to the start
    assert not torch.allclose(scores(obs[0].numpy(), 6), scores(other_start, 6))
    with pytest.raises(LoopWMError, match="use 1 or more"):
        LearnedWorld(model, context=0)
