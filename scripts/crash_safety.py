"""Crash safety, measured: SIGKILL training and collection at random moments, resume each time,
and check that nothing was corrupted, nothing duplicated, little lost, and the end result is the
same, bit for bit, as a run that was never interrupted.

    python scripts/crash_safety.py --out results/crash_safety.json     # about 3 minutes on 2 cores

Training: after every kill, every checkpoint on disk must verify (checksum, loadable), the resumed
run must start from the newest checkpoint (so it loses at most --ckpt-every steps of work; the
metrics log is flushed with each checkpoint, so the steps it records beyond the checkpoint, which
resuming drops, are reported too), metrics.jsonl must hold each step once, and the final weights
must equal the uninterrupted run's exactly.
Collection: after every kill the dataset must load with its checksums verified, and the finished
dataset must equal an uninterrupted collection array for array.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

from loopwm.checkpoint import latest_checkpoint, model_state, read_checkpoint
from loopwm.data import TrajectoryDataset, collect
from loopwm.utils import LoopWMError, atomic_write_json


@dataclass
class CrashConfig:
    """Kill training and collection at random moments and check what survives."""

    kills: int = 6
    """SIGKILLs per phase (training, collection)."""
    steps: int = 400
    """Gradient steps of the training run."""
    ckpt_every: int = 10
    """Checkpoint interval (the most a kill may cost)."""
    episodes: int = 120
    """Episodes of the collection run."""
    startup: float = 4.0
    """Seconds a fresh process needs before it does any work (imports); kills fall after it."""
    seed: int = 0
    """Seed of the kill times."""
    out: str = "results/crash_safety.json"
    """Where to write the figures."""


def run_until_killed(cmd: list[str], delay: float) -> bool:
    """Start cmd, SIGKILL it after `delay` seconds; True if it was killed, False if it finished."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    return False


def train_cmd(data: Path, out: Path, cfg: CrashConfig) -> list[str]:
    return [sys.executable, "-m", "loopwm.train", "--data", str(data), "--out", str(out), "--steps", str(cfg.steps),
            "--ckpt-every", str(cfg.ckpt_every), "--batch-size", "8", "--context", "2", "--horizon", "3",
            "--eval-every", "1000000", "--no-progress", "--device", "cpu", "--model.d", "16", "--model.n-heads", "2"]


def checkpoints_verify(run: Path) -> int:
    n = 0
    for path in sorted((run / "checkpoints").glob("step_*.json")):
        read_checkpoint(path, verify=True)  # raises on any damage
        n += 1
    return n


def training_phase(cfg: CrashConfig, tmp: Path, rng: np.random.Generator) -> dict:
    data = collect(env_id="loopwm/Balls-v0", n_bodies=3, max_episode_steps=40, episodes=12, out=str(tmp / "data"),
                   progress=False)
    reference = tmp / "reference"
    t0 = time.time()
    run_until_killed(train_cmd(data, reference, cfg), 10**6)
    full_seconds = time.time() - t0
    run, kills, lost, resumed_from = tmp / "killed", 0, [], []
    while True:
        done_before = _logged_steps(run)
        remaining = (full_seconds - cfg.startup) * (1 - done_before / cfg.steps)  # seconds of work left
        delay = cfg.startup + rng.uniform(0.05, 0.9) * max(remaining, 0.5)
        if kills < cfg.kills and run_until_killed(train_cmd(data, run, cfg), delay):
            kills += 1
            checkpoints_verify(run)
            found = latest_checkpoint(run)
            ckpt_step = read_checkpoint(found)[1]["step"] if found else 0
            logged = _logged_steps(run)
            lost.append(max(0, logged - ckpt_step))
            resumed_from.append(ckpt_step)
            assert logged >= done_before or found is None
            continue
        if kills >= cfg.kills:
            run_until_killed(train_cmd(data, run, cfg), 10**6)
        break  # finished (either after the last kill, or before a kill came)
    a, meta_a = read_checkpoint(latest_checkpoint(reference))
    b, meta_b = read_checkpoint(latest_checkpoint(run))
    wa, wb = model_state(a), model_state(b)
    identical = wa.keys() == wb.keys() and all(bool((wa[k] == wb[k]).all()) for k in wa)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"kills": kills, "resumed_from_steps": resumed_from, "max_logged_steps_beyond_checkpoint": max(lost, default=0),
            "ckpt_every": cfg.ckpt_every, "final_step": meta_b["step"], "weights_bit_identical": identical,
            "metrics_each_step_once": steps == list(range(1, cfg.steps + 1)), "uninterrupted_seconds": round(full_seconds, 1)}


def _logged_steps(run: Path) -> int:
    path = run / "metrics.jsonl"
    if not path.exists():
        return 0
    good = 0
    for line in path.read_text().splitlines():
        try:
            good = max(good, json.loads(line)["step"])
        except (json.JSONDecodeError, KeyError):
            pass  # a line cut by the kill
    return good


def collection_phase(cfg: CrashConfig, tmp: Path, rng: np.random.Generator) -> dict:
    def cmd(out: Path) -> list[str]:
        return [sys.executable, "-m", "loopwm.cli", "collect", "--env-id", "loopwm/Chain-v0", "--n-bodies", "6",
                "--episodes", str(cfg.episodes), "--shard-episodes", "4", "--out", str(out), "--no-progress"]

    t0 = time.time()
    run_until_killed(cmd(tmp / "collect_ref"), 10**6)
    full_seconds = time.time() - t0
    out, kills, loads = tmp / "collect_killed", 0, 0
    def delay() -> float:
        done = sum(e["episodes"] for e in json.loads((out / "manifest.json").read_text())["shards"]) \
            if (out / "manifest.json").exists() else 0
        return 2.0 + rng.uniform(0.05, 0.9) * max(0.5, (full_seconds - 2.0) * (1 - done / cfg.episodes))

    while kills < cfg.kills and run_until_killed(cmd(out), delay()):
        kills += 1
        if (out / "manifest.json").exists():
            try:
                TrajectoryDataset.load(out)  # verifies every shard's checksum
                loads += 1
            except LoopWMError as err:
                if "no shards yet" not in str(err):
                    raise
    run_until_killed(cmd(out), 10**6)
    ref, got = TrajectoryDataset.load(tmp / "collect_ref"), TrajectoryDataset.load(out)
    same = ref.arrays.keys() == got.arrays.keys() and all(np.array_equal(ref.arrays[k], got.arrays[k]) for k in ref.arrays)
    return {"kills": kills, "intermediate_datasets_loaded_and_verified": loads, "episodes": got.episodes,
            "equal_to_uninterrupted": bool(same)}


def main(cfg: CrashConfig) -> None:
    rng = np.random.default_rng(cfg.seed)
    with tempfile.TemporaryDirectory() as tmp:
        result = {"training": training_phase(cfg, Path(tmp), rng), "collection": collection_phase(cfg, Path(tmp), rng)}
    print(json.dumps(result, indent=2))
    Path(cfg.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(cfg.out), result)
    ok = (result["training"]["weights_bit_identical"] and result["training"]["metrics_each_step_once"]
          and result["training"]["max_logged_steps_beyond_checkpoint"] <= cfg.ckpt_every and result["collection"]["equal_to_uninterrupted"])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main(tyro.cli(CrashConfig))
