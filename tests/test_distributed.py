"""Multi-process training with torchrun (gloo on CPU): ranks stay identical, the result matches one
process on the same global batch, and a run resumes with a different number of processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from loopwm.checkpoint import latest_checkpoint, model_state, read_checkpoint
from loopwm.data import collect
from loopwm.models.world_model import ModelConfig
from loopwm.train.loop import TrainConfig, train

TINY = dict(d=16, n_heads=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return collect(env_id="loopwm/Balls-v0", n_bodies=3, max_episode_steps=30, episodes=6,
                   out=str(tmp_path_factory.mktemp("ddp") / "data"), progress=False)


def torchrun(nproc: int, data, out, steps: int, kind: str = "deep", port: int = 29517, warmup: int = 1):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port),
           "-m", "loopwm.train", "--data", str(data), "--out", str(out), "--steps", str(steps), "--batch-size", "8",
           "--context", "2", "--horizon", "2", "--warmup", str(warmup), "--eval-every", "1000000", "--ckpt-every", "2",
           "--no-progress", "--device", "cpu", "--model.kind", kind, "--model.d", "16", "--model.n-heads", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]


def single(data, out, steps: int, kind: str = "deep", warmup: int = 1):
    return train(TrainConfig(data=str(data), out=str(out), steps=steps, batch_size=8, context=2, horizon=2, warmup=warmup,
                             eval_every=10**6, ckpt_every=2, progress=False, device="cpu",
                             model=ModelConfig(kind=kind, **TINY)))


def weights(run):
    tensors, meta = read_checkpoint(latest_checkpoint(run))
    return model_state(tensors), meta


def test_two_processes_match_one_process_on_the_same_global_batch(data, tmp_path):
    torchrun(2, data, tmp_path / "ddp", steps=4)
    single(data, tmp_path / "one", steps=4)
    (w2, meta2), (w1, meta1) = weights(tmp_path / "ddp"), weights(tmp_path / "one")
    assert meta2["world_size"] == 2 and meta1["world_size"] == 1 and meta2["step"] == 4
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], atol=2e-5, rtol=1e-4, msg=key)
    steps = [json.loads(line)["step"] for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]  # one writer: no duplicated records


def test_resume_with_a_different_number_of_processes(data, tmp_path):
    # all steps inside the warm-up, so the learning rate does not depend on the planned --steps
    torchrun(2, data, tmp_path / "run", steps=2, port=29518, warmup=100)
    single(data, tmp_path / "run", steps=4, warmup=100)  # the same run, continued by one process
    single(data, tmp_path / "straight", steps=4, warmup=100)
    (a, meta), (b, _) = weights(tmp_path / "run"), weights(tmp_path / "straight")
    assert meta["step"] == 4
    for key in b:
        torch.testing.assert_close(a[key], b[key], atol=2e-5, rtol=1e-4, msg=key)


def test_looped_model_ranks_stay_in_sync(data, tmp_path):
    # train() compares every rank's weights with rank 0's at the end and fails if any differ
    torchrun(2, data, tmp_path / "looped", steps=3, kind="looped", port=29519)
    assert weights(tmp_path / "looped")[1]["world_size"] == 2


def test_parallel_collection_equals_serial(tmp_path):
    from loopwm.data import TrajectoryDataset

    kw = dict(env_id="loopwm/Chain-v0", n_bodies=4, max_episode_steps=15, episodes=7, shard_episodes=3, progress=False)
    serial = TrajectoryDataset.load(collect(out=str(tmp_path / "serial"), **kw))
    parallel = TrajectoryDataset.load(collect(out=str(tmp_path / "parallel"), workers=2, **kw))
    assert serial.arrays.keys() == parallel.arrays.keys()
    for key in serial.arrays:
        assert (serial.arrays[key] == parallel.arrays[key]).all(), key
    assert (serial.lengths == parallel.lengths).all()
