"""Training runs: outputs, resume after an interruption, refusal to mix configurations."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import loopwm.train.loop as loop
import loopwm.train.losses as losses
import loopwm.train.schedule as schedule
from loopwm.checkpoint import latest_checkpoint, model_state, read_checkpoint
from loopwm.data import CollectConfig, collect
from loopwm.models import RSSMConfig
from loopwm.models.world_model import ModelConfig
from loopwm.train.loop import TrainConfig, train
from loopwm.utils import LoopWMError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "balls"
    collect(CollectConfig(env_id="loopwm/Balls-v0", out=str(out), episodes=6, seed=0, n_bodies=4,
                          max_episode_steps=40, progress=False))
    return out


def tiny_cfg(dataset, out, **kw) -> TrainConfig:
    base = TrainConfig(data=str(dataset), out=str(out), model=ModelConfig(d=16, n_heads=2, mu_rec=2.0),
                       steps=6, batch_size=4, context=2, horizon=3, warmup=2, eval_every=3, ckpt_every=2,
                       obs_noise=0.01, val_fraction=0.2, progress=False, device="cpu")
    return replace(base, **kw)


def final_weights(run):
    tensors, meta = read_checkpoint(latest_checkpoint(run))
    return model_state(tensors), meta


def test_run_directory_contents(dataset, tmp_path):
    run = train(tiny_cfg(dataset, tmp_path / "run"))
    assert json.loads((run / "config.json").read_text())["steps"] == 6
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert "val/obs" in records[2] and records[2]["loop/max_a_bar"] < 1
    assert all(r["train/loss"] == r["train/loss"] for r in records)  # no NaN
    assert sorted(p.suffix for p in (run / "checkpoints").iterdir()) == [".json", ".json", ".safetensors", ".safetensors"]


KINDS = {
    "looped": {},
    "deep": {"model": ModelConfig(kind="deep", d=16, n_heads=2, n_deep=2)},
    "rssm": {"model": ModelConfig(kind="rssm"), "rssm": RSSMConfig(deter=32, stoch=4, classes=4, hidden=32)},
}


def train_killed_then_resumed(cfg: TrainConfig, kill_at: int, monkeypatch):
    """Train `cfg`, killed right after the checkpoint of step `kill_at` is written, then run it again
    (a resume); returns the run folder."""
    real_save = loop.save_checkpoint

    def save_then_die(run_dir, step, *args, **kwargs):
        path = real_save(run_dir, step, *args, **kwargs)
        if step == kill_at:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    return train(cfg)


@pytest.mark.parametrize("kind", list(KINDS))
def test_interrupted_run_resumes_to_the_same_result(dataset, tmp_path, monkeypatch, kind):
    straight, _ = final_weights(train(tiny_cfg(dataset, tmp_path / "straight", **KINDS[kind])))

    # killed right after the checkpoint at step 4
    resumed, meta = final_weights(train_killed_then_resumed(tiny_cfg(dataset, tmp_path / "resumed", **KINDS[kind]), 4,
                                                            monkeypatch))
    assert meta["kind"] == kind
    assert meta["step"] == 6
    for key in straight:
        torch.testing.assert_close(straight[key], resumed[key], msg=key)
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_a_different_configuration(dataset, tmp_path):
    train(tiny_cfg(dataset, tmp_path / "run", steps=2))
    with pytest.raises(LoopWMError, match="different configuration"):
        train(tiny_cfg(dataset, tmp_path / "run", lr=0.5))
    # more steps on the same configuration is a resume, not a conflict
    train(tiny_cfg(dataset, tmp_path / "run", steps=4))
    assert final_weights(tmp_path / "run")[1]["step"] == 4


def test_runs_saved_before_a_setting_existed_still_resume(dataset, tmp_path):
    """A config.json written by an older loopwm lacks newer settings: at their defaults they match."""
    train(tiny_cfg(dataset, tmp_path / "run", steps=2))
    path = tmp_path / "run" / "config.json"
    saved = json.loads(path.read_text())
    del saved["model"]["depth_sampling"], saved["rssm"]["decode_from"]
    path.write_text(json.dumps(saved))
    train(tiny_cfg(dataset, tmp_path / "run", steps=3))
    assert final_weights(tmp_path / "run")[1]["step"] == 3
    cfg = tiny_cfg(dataset, tmp_path / "run", steps=4)
    cfg.model.depth_sampling = "sample"  # not the default: the old run did not do this
    with pytest.raises(LoopWMError, match=r"model\.depth_sampling"):
        train(cfg)


def test_a_run_from_before_reward_units_resumes_only_in_raw_units(dataset, tmp_path):
    """Runs saved before --reward-units existed trained in raw units at weight 0.1: the new defaults
    (standard, 1.0) would change their loss, so resuming asks for the old values back."""
    train(tiny_cfg(dataset, tmp_path / "run", steps=2, reward_units="raw", reward_weight=0.1))
    path = tmp_path / "run" / "config.json"
    saved = json.loads(path.read_text())
    del saved["reward_units"]
    path.write_text(json.dumps(saved))
    with pytest.raises(LoopWMError, match="reward_units"):
        train(tiny_cfg(dataset, tmp_path / "run", steps=3))
    train(tiny_cfg(dataset, tmp_path / "run", steps=3, reward_units="raw", reward_weight=0.1))
    assert final_weights(tmp_path / "run")[1]["step"] == 3


def test_windows_longer_than_episodes_give_a_clear_error(dataset, tmp_path):
    with pytest.raises(LoopWMError, match="no training window"):
        train(tiny_cfg(dataset, tmp_path / "run", horizon=100))


def test_a_run_killed_with_sigkill_resumes(dataset, tmp_path):
    """A real kill -9 in the middle of training: re-running the same command finishes the run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    run = tmp_path / "killed"
    args = [sys.executable, "-m", "loopwm.cli", "train", "--data", str(dataset), "--out", str(run), "--steps", "400",
            "--batch-size", "4", "--context", "2", "--horizon", "3", "--ckpt-every", "1", "--eval-every", "1000",
            "--no-progress", "--device", "cpu", "--model.d", "16", "--model.n-heads", "2", "--model.mu-rec", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and latest_checkpoint(run) is None:
        time.sleep(0.2)
    time.sleep(1.0)  # let it write a few more checkpoints, then kill it wherever it is
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = read_checkpoint(latest_checkpoint(run))[1]["step"]
    assert 0 < killed_at < 400
    args[args.index("--steps") + 1] = str(killed_at + 5)  # finish quickly: a few more steps
    subprocess.run(args, check=True, capture_output=True, timeout=120)
    tensors, meta = read_checkpoint(latest_checkpoint(run))
    assert meta["step"] == killed_at + 5
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, killed_at + 6))


_ORPHAN_SCRIPT = """
import os, sys, time
from loopwm.utils import worker_pool

def report(path):
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(path + ".tmp", path)
    time.sleep(120)  # a long task, as an hour of training is

if __name__ == "__main__":
    pool = worker_pool(1)
    pool.submit(report, sys.argv[1])
    time.sleep(120)
"""


def test_pool_workers_end_when_the_run_that_started_them_is_killed(tmp_path):
    """Killing a study mid-run must not leave its workers training on alone (they did for an hour)."""
    import os
    import signal
    import subprocess
    import sys
    import time

    script, pid_file = tmp_path / "study.py", tmp_path / "worker.pid"
    script.write_text(_ORPHAN_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(pid_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline and not pid_file.exists():
        time.sleep(0.1)
    assert pid_file.exists(), "the worker never started"
    worker = int(pid_file.read_text())

    def alive(pid: int) -> bool:  # a zombie nobody has reaped yet counts as gone
        try:
            return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
        except (OSError, IndexError):
            return False

    assert alive(worker)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.time() + 20
    while time.time() < deadline and alive(worker):
        time.sleep(0.2)
    gone = not alive(worker)
    if not gone:
        os.kill(worker, signal.SIGKILL)
    assert gone, "a pool worker outlived the killed run"


def test_plateau_rule_on_hand_made_curves():
    falling = [(s, 1.0 / s) for s in range(1, 21)]  # still improving in its last fifth
    flat = [(s, 1.0) for s in range(1, 21)]
    slow = [(s, 1.0 - 0.001 * s) for s in range(1, 21)]  # under 2% better in the last fifth
    assert not schedule.plateaued(falling, 0.02) and schedule.plateaued(flat, 0.02) and schedule.plateaued(slow, 0.02)
    assert not schedule.plateaued(slow, 0.001)  # ... but more than 0.1% better
    assert not schedule.plateaued(flat[:4], 0.02)  # too few points to judge
    assert not schedule.plateaued(flat[:15], 0.02) and schedule.plateaued(flat[:16], 0.02)  # 3 evaluations in the last fifth, then 4
    # a real curve at a constant learning rate (a 4-block stack on the rail, steps 300-2,100), which
    # the raw rule called a plateau at 2,100 of 12,000 steps; smoothed, the rule waits for more evidence
    noisy = [(300, 0.4006), (600, 0.2862), (900, 0.2644), (1200, 0.2641), (1500, 0.2322), (1800, 0.2316), (2100, 0.2336)]
    assert schedule.plateaued(noisy, 0.02, smooth=1, min_recent=1) and not schedule.plateaued(noisy, 0.02)
    assert schedule.plateaued(noisy + [(2400 + 300 * i, 0.2316) for i in range(9)], 0.02)  # flat from there: stop
    # a looped model on the rail whose last evaluation spiked: smoothing alone called it a plateau at
    # 2,160 of 9,600 steps, with two evaluations in the last fifth; the rule now waits for four
    spike = [(240, 0.366), (480, 0.295), (720, 0.285), (960, 0.272), (1200, 0.259), (1440, 0.266), (1680, 0.244),
             (1920, 0.246), (2160, 0.279)]
    assert schedule.plateaued(spike, 0.02, min_recent=1) and not schedule.plateaued(spike, 0.02)


def test_until_plateau_holds_the_peak_rate_then_cools_down_and_stops(dataset, tmp_path):
    # a tolerance of 99% calls any curve a plateau as soon as its last fifth holds four evaluations
    # (step 16 when validating every step: steps 13-16), then cools down over a fifth of that (3 steps)
    cfg = tiny_cfg(dataset, tmp_path / "plateau", steps=1000, eval_every=1, ckpt_every=4, until_plateau=0.99, warmup=1)
    _, meta = final_weights(train(cfg))
    records = [json.loads(line) for line in (tmp_path / "plateau" / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in records]
    assert meta["stop_reason"] == "plateau" and meta["cooldown_from"] == 16 and meta["step"] == 19
    assert lrs[1:16] == [cfg.lr] * 15 and lrs[16] == pytest.approx(cfg.lr) and lrs[17] < cfg.lr
    assert records[15]["train/cooldown_from"] == 16


def test_until_plateau_without_a_plateau_cools_down_to_end_at_the_cap(dataset, tmp_path):
    cfg = tiny_cfg(dataset, tmp_path / "cap", steps=12, eval_every=100, until_plateau=0.02, warmup=1)
    _, meta = final_weights(train(cfg))
    assert meta["stop_reason"] == "cap" and meta["cooldown_from"] == 10 and meta["step"] == 12


def test_until_plateau_resumes_mid_cooldown_to_the_same_result(dataset, tmp_path, monkeypatch):
    kw = dict(steps=1000, eval_every=1, ckpt_every=1, until_plateau=0.99, warmup=1)
    straight, _ = final_weights(train(tiny_cfg(dataset, tmp_path / "straight", **kw)))
    # killed inside the cool-down (steps 16-19)
    resumed, meta = final_weights(train_killed_then_resumed(tiny_cfg(dataset, tmp_path / "resumed", **kw), 17, monkeypatch))
    assert meta["step"] == 19 and meta["stop_reason"] == "plateau"
    for key in straight:
        torch.testing.assert_close(straight[key], resumed[key], msg=key)


def test_weight_average_follows_the_live_weights():
    from loopwm.train.average import WeightAverage

    live = torch.nn.BatchNorm1d(3)  # a weight, a bias and buffers
    avg = WeightAverage(live, decay=0.5)
    start = live.weight.detach().clone()
    avg.update(live, step=1000)  # unchanged live weights leave the average where it is
    torch.testing.assert_close(avg.model.weight, start)
    with torch.no_grad():
        live.weight.add_(1.0)
        live.running_mean.fill_(7.0)
    avg.update(live, step=0)  # early on the decay is (1 + step) / (10 + step) = 0.1: nearly the live weights
    torch.testing.assert_close(avg.model.weight, start + 0.9)
    avg.update(live, step=1000)  # later the decay itself: half-way to the live weights
    torch.testing.assert_close(avg.model.weight, start + 0.95)
    torch.testing.assert_close(avg.model.running_mean, torch.full((3,), 7.0))  # buffers are copied
    assert not any(p.requires_grad for p in avg.model.parameters())
    with pytest.raises(ValueError):
        WeightAverage(live, decay=1.0)


def test_until_plateau_can_judge_the_weight_average(dataset, tmp_path, monkeypatch):
    # the live weights' validation loss is flat (a plateau at once) while the average's keeps falling:
    # judged on the average, the run never plateaus and cools down at the cap
    def fake_validate(model, ds, windows, cfg, device, n=256):
        averaged = not any(p.requires_grad for p in model.parameters())
        fake_validate.calls[averaged] += 1
        return {"val/obs": 1.0 / fake_validate.calls[averaged] if averaged else 1.0}

    fake_validate.calls = {True: 0, False: 0}
    monkeypatch.setattr(loop, "validate", fake_validate)
    kw = dict(steps=30, eval_every=1, until_plateau=0.02, warmup=1)
    _, live = final_weights(train(tiny_cfg(dataset, tmp_path / "live", **kw)))
    assert live["stop_reason"] == "plateau"
    _, judged = final_weights(train(tiny_cfg(dataset, tmp_path / "avg", plateau_ema=0.9, **kw)))
    assert judged["stop_reason"] == "cap" and judged["step"] == 30
    records = [json.loads(line) for line in (tmp_path / "avg" / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["val_avg/obs"] < records[0]["val_avg/obs"] and records[-1]["val/obs"] == 1.0
    with pytest.raises(LoopWMError, match="plateau-ema"):
        train(tiny_cfg(dataset, tmp_path / "bad", plateau_ema=1.5, **kw))
    with pytest.raises(LoopWMError, match="until-plateau"):
        train(tiny_cfg(dataset, tmp_path / "alone", plateau_ema=0.9, steps=3))


def test_weight_average_survives_a_kill(dataset, tmp_path, monkeypatch):
    kw = dict(steps=1000, eval_every=1, ckpt_every=1, until_plateau=0.99, warmup=1, plateau_ema=0.9)
    straight = read_checkpoint(latest_checkpoint(train(tiny_cfg(dataset, tmp_path / "straight", **kw))))[0]
    resumed = read_checkpoint(latest_checkpoint(train_killed_then_resumed(tiny_cfg(dataset, tmp_path / "resumed", **kw),
                                                                         10, monkeypatch)))[0]
    averaged = [k for k in straight if k.startswith("average/")]
    assert averaged and set(averaged) == {k for k in resumed if k.startswith("average/")}
    for key in averaged + [k for k in straight if k.startswith("model/")]:
        torch.testing.assert_close(straight[key], resumed[key], msg=key)
    moved = [k for k in averaged if not torch.equal(straight[k], straight["model/" + k[len("average/"):]])]
    assert moved  # the average is not a copy of the final weights


def _with_rewards(src, dst, scale: float, shift: float):
    """A copy of dataset `src` whose rewards are scale * r + shift (observations untouched)."""
    import shutil

    import numpy as np

    from loopwm.data.shards import read_manifest, write_manifest
    from loopwm.utils import sha256_file

    shutil.copytree(src, dst)
    manifest = read_manifest(dst)
    for entry in manifest["shards"]:
        path = dst / entry["file"]
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["reward"] = (arrays["reward"].astype(np.float64) * scale + shift).astype(arrays["reward"].dtype)
        with open(path, "wb") as f:
            np.savez(f, **arrays)
        entry["sha256"] = sha256_file(path)
    write_manifest(dst, manifest)
    return dst


@pytest.mark.parametrize("kind", ["looped", "rssm"])
def test_standard_reward_units_make_training_blind_to_the_rewards_scale(dataset, tmp_path, kind):
    """With --reward-units standard the loss, and so every weight, is the same whether rewards come
    in units of 1 or of 1000 (or shifted): only the head's output is rescaled. In raw units it is not."""
    scaled = _with_rewards(dataset, tmp_path / "scaled", scale=1000.0, shift=-7.0)
    model = ModelConfig(d=16, n_heads=2, mu_rec=2.0, kind=kind)
    runs = {}
    for units in ("standard", "raw"):
        for name, data in (("orig", dataset), ("scaled", scaled)):
            run = tmp_path / f"{units}-{name}"
            train(tiny_cfg(data, run, steps=4, model=model, reward_units=units, reward_weight=1.0))
            runs[units, name] = final_weights(run)
    (w1, m1), (w2, m2) = runs["standard", "orig"], runs["standard", "scaled"]
    assert m2["spec"]["reward_std"] == pytest.approx(1000 * m1["spec"]["reward_std"], rel=1e-4)
    assert m2["spec"]["reward_mean"] == pytest.approx(1000 * m1["spec"]["reward_mean"] - 7.0, rel=1e-4, abs=1e-3)
    def gap(a, b):  # largest weight difference between two runs
        return max((a[k].double() - b[k].double()).abs().max().item() for k in a)

    # equal up to float32 rounding of the rescaled rewards (Adam magnifies it on near-zero gradients)
    assert gap(w1, w2) < 3e-4
    assert gap(runs["raw", "orig"][0], runs["raw", "scaled"][0]) > 30 * max(gap(w1, w2), 1e-5)


def test_reward_head_speaks_the_environments_units(dataset, tmp_path):
    """The head predicts in standard units; the model's reward is mean + std * head, and a checkpoint
    written before the reward fields existed loads as raw units (mean 0, std 1)."""
    from loopwm.checkpoint import load_model
    from loopwm.data import TrajectoryDataset

    run = tmp_path / "run"
    train(tiny_cfg(dataset, run, steps=2))
    ds = TrajectoryDataset.load(dataset)
    model, meta = load_model(run)
    rewards = np.concatenate([ds.episode(int(i))["reward"] for i in range(ds.episodes) if i not in meta["val_episodes"]])
    assert meta["spec"]["reward_mean"] == pytest.approx(rewards.mean(), rel=1e-5)
    assert meta["spec"]["reward_std"] == pytest.approx(rewards.std(), rel=1e-5)
    ep = ds.episode(0)
    obs, act = torch.as_tensor(ep["obs"][None, :3]), torch.as_tensor(ep["action"][None, :2])
    with torch.no_grad():
        r = model.imagine(model.observe(model.initial(obs[:, 0]), act[:, :1], obs[:, 1:2])[0], act[:, 1:])[1].reward
        model.spec = replace(model.spec, reward_mean=0.0, reward_std=1.0)  # the head's own units
        head = model.imagine(model.observe(model.initial(obs[:, 0]), act[:, :1], obs[:, 1:2])[0], act[:, 1:])[1].reward
    torch.testing.assert_close(r, meta["spec"]["reward_mean"] + meta["spec"]["reward_std"] * head)
    # an older checkpoint: no reward fields in its spec -> raw units, and training it on keeps them
    path = latest_checkpoint(run)
    old = json.loads(path.read_text())
    del old["spec"]["reward_mean"], old["spec"]["reward_std"]
    path.write_text(json.dumps(old))
    assert load_model(run)[0].reward_std == 1.0
    train(tiny_cfg(dataset, run, steps=3))
    assert final_weights(run)[1]["spec"]["reward_std"] == 1.0


def test_unknown_reward_units_are_refused(dataset, tmp_path):
    with pytest.raises(LoopWMError, match="reward-units"):
        train(tiny_cfg(dataset, tmp_path / "run", reward_units="percent"))


def test_standard_reward_error_weighs_like_one_observed_value(dataset, tmp_path):
    """In standard units the reward term adds weight * (reward MSE / std^2) / (bodies x changing
    features) to the loss: the reward counts as one more observed value. Raw units add it at face value."""
    from loopwm.checkpoint import load_model
    from loopwm.data import TrajectoryDataset

    train(tiny_cfg(dataset, tmp_path / "run", steps=1))
    model, _ = load_model(tmp_path / "run")
    ds = TrajectoryDataset.load(dataset)
    batch = loop.to_tensors(ds.batch(ds.windows(range(ds.episodes), 5)[:4]), "cpu")
    n_values = 4 * int(model.dynamic.sum())  # 4 bodies
    assert n_values == 16  # x, y, vx, vy change; radius, mass and the controlled flag do not
    terms = {}
    for units in ("standard", "raw"):
        for w in (0.0, 2.0):
            cfg = tiny_cfg(dataset, tmp_path / "run", reward_units=units, reward_weight=w, obs_noise=0.0)
            torch.manual_seed(0)
            loss, info = losses.sequence_loss(model, batch, cfg)
            terms[units, w] = (loss.item(), info["reward"])
    for units, scale in (("standard", 2.0 / n_values), ("raw", 2.0)):
        added = terms[units, 2.0][0] - terms[units, 0.0][0]
        assert added == pytest.approx(scale * terms[units, 2.0][1], rel=1e-4)
    std = model.reward_std
    assert terms["standard", 2.0][1] == pytest.approx(terms["raw", 2.0][1] / std**2, rel=1e-4)


def test_horizon_curriculum_trains_short_windows_first_then_the_full_horizon(dataset, tmp_path):
    run = train(tiny_cfg(dataset, tmp_path / "run", steps=8, horizon=3, horizon_start=1, horizon_final=0.25))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # the step taken at fraction f = step / steps uses the full horizon once f >= 0.75
    assert [r["train/horizon"] for r in records] == [1] * 6 + [3] * 2
    assert all(r["val/obs"] > 0 for r in records if "val/obs" in r)  # validation keeps the full windows
    # a short window is the full window's first steps (observations keep one more: o_0 .. o_length)
    from loopwm.data import TrajectoryDataset

    ds = TrajectoryDataset.load(dataset)
    rows = ds.windows(range(ds.episodes), 5)[:2]
    full, short = ds.batch(rows), ds.batch(rows[:, :2], length=3)
    assert short["obs"].shape[:2] == (2, 4) and short["action"].shape[:2] == (2, 3) and short["reward"].shape == (2, 3)
    assert all(np.array_equal(short[k], full[k][:, : short[k].shape[1]]) for k in full)


def test_balanced_step_weighting_keeps_the_loss_and_reweights_the_gradient(dataset, tmp_path):
    """The balanced loss has the plain mean's value; its gradient weighs each step by the mean error over
    that step's own, so on a one-step window it is the plain gradient, and on a long one it is not."""
    from loopwm.checkpoint import load_model
    from loopwm.data import TrajectoryDataset

    train(tiny_cfg(dataset, tmp_path / "run", steps=1))
    model, _ = load_model(tmp_path / "run")
    ds = TrajectoryDataset.load(dataset)

    def loss_and_grad(length: int, weighting: str):
        batch = loop.to_tensors(ds.batch(ds.windows(range(ds.episodes), length)[:4]), "cpu")
        cfg = tiny_cfg(dataset, tmp_path / "run", obs_noise=0.0, step_weighting=weighting, context=1)
        model.zero_grad()
        torch.manual_seed(0)
        loss, info = losses.sequence_loss(model, batch, cfg)
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    for length in (1, 6):
        (mean_loss, mean_grad), (bal_loss, bal_grad) = loss_and_grad(length, "mean"), loss_and_grad(length, "balanced")
        assert bal_loss == pytest.approx(mean_loss, rel=1e-5)
        same = torch.allclose(bal_grad, mean_grad, rtol=1e-4, atol=1e-7)
        assert same == (length == 1)


@pytest.mark.parametrize("settings, message", [
    (dict(step_weighting="log"), "step-weighting"),
    (dict(horizon_start=5), "horizon-start"),
    (dict(horizon_start=1, horizon_final=0.0), "horizon-final"),
    (dict(horizon_start=1, until_plateau=0.02), "until-plateau"),
    (dict(horizon_start=1, objective="dd"), "objective dd"),
])
def test_curriculum_and_weighting_settings_are_checked(dataset, tmp_path, settings, message):
    with pytest.raises(LoopWMError, match=message):
        train(tiny_cfg(dataset, tmp_path / "run", **settings))
