"""Datasets larger than you would like to hold in memory, measured: collect a 10-million-step
dataset of the built-in world, then train on it twice, side by side, with the shards memory-mapped
(the default) and read into memory (--no-mmap), recording each run's peak resident memory.

    python scripts/large_data.py --out results/large_data      # about 25 minutes on 2 cores
    python scripts/large_data.py --out /tmp/ld --steps 200000 --train-steps 50   # a quick check

Writes OUT/large_data.json. The dataset goes to OUT/data (kept, and re-used by a later run: the
collection resumes) and the runs to OUT/runs. Peak resident memory is the kernel's high-water mark
of the training process (VmHWM, also ru_maxrss), plus the peaks of its two parts sampled every
0.1 s: anonymous memory (the process's own arrays and tensors) and mapped file pages.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from loopwm.data import CollectConfig, TrajectoryDataset, collect
from loopwm.envs import DEFAULT_EPISODE_STEPS
from loopwm.utils import atomic_write_json


@dataclass
class LargeDataConfig:
    """Collect a large dataset and measure training's peak memory on it."""

    out: str = "results/large_data"
    """Folder for large_data.json, the dataset (OUT/data) and the runs (OUT/runs)."""
    steps: int = 10_000_000
    """Environment steps the dataset should hold (rounded up to whole episodes)."""
    env_id: str = "loopwm/Balls-v0"
    """World to collect."""
    workers: int = 2
    """Collection processes."""
    train_steps: int = 400
    """Gradient steps of each training run (long enough to touch pages all over the dataset)."""
    modes: tuple[str, ...] = ("mmap", "in-memory")
    """Loading modes to measure, in this order."""


def _status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/PID/status we track (empty once the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            rows = [line.split() for line in f]
    except OSError:
        return {}
    return {r[0].rstrip(":"): int(r[1]) for r in rows if r and r[0] in ("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:")}


def measure_training(data: Path, run: Path, mode: str, steps: int) -> dict:
    """Train in a child process and follow its memory until it exits."""
    shutil.rmtree(run, ignore_errors=True)
    cmd = [sys.executable, "-m", "loopwm.train", "--data", str(data), "--out", str(run), "--steps", str(steps),
           "--eval-every", "100", "--ckpt-every", str(10**9), "--no-progress"] + (["--no-mmap"] if mode == "in-memory" else [])
    start = time.time()
    child = subprocess.Popen(cmd)
    peak = {"VmHWM": 0, "RssAnon": 0, "RssFile": 0}
    while True:
        done, status, usage = os.wait4(child.pid, os.WNOHANG)
        if done:
            break
        now = _status(child.pid)
        for key in peak:
            peak[key] = max(peak[key], now.get(key, 0))
        time.sleep(0.1)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"training ({mode}) failed: {' '.join(cmd)}")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_s = rows[-1]["time"] - rows[0]["time"]
    return {"mode": mode, "command": " ".join(cmd[1:]), "wall_s": round(time.time() - start, 1),
            "train_steps": rows[-1]["step"], "train_steps_per_s": round((len(rows) - 1) / train_s, 2),
            "peak_rss_gib": round(max(peak["VmHWM"], usage.ru_maxrss) / 2**20, 3),
            "peak_anon_gib": round(peak["RssAnon"] / 2**20, 3), "peak_file_gib": round(peak["RssFile"] / 2**20, 3),
            "final_val_obs_loss": next((r.get("val/obs") for r in reversed(rows) if "val/obs" in r), None)}


def main(cfg: LargeDataConfig) -> None:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    episodes = math.ceil(cfg.steps / DEFAULT_EPISODE_STEPS)
    t0 = time.time()
    data = collect(CollectConfig(env_id=cfg.env_id, out=str(out / "data"), episodes=episodes, workers=cfg.workers,
                                 shard_episodes=500))
    collect_s = time.time() - t0
    t0 = time.time()
    ds = TrajectoryDataset.load(data)
    load_s = time.time() - t0
    disk = sum(f.stat().st_size for f in Path(data).glob("shard_*.npz"))
    result = {"config": asdict(cfg), "dataset": {"path": str(data), "env_id": ds.env_id, "steps": ds.steps,
              "episodes": ds.episodes, "shards": len(ds.shards), "bytes_on_disk": disk,
              "gib_on_disk": round(disk / 2**30, 3), "collect_s_this_run": round(collect_s, 1),
              "load_and_verify_s": round(load_s, 1)}, "runs": []}
    del ds
    print(json.dumps(result["dataset"]), flush=True)
    previous = out / "large_data.json"
    if previous.exists():  # keep the other modes' measurements of the same dataset, and its collection time
        old = json.loads(previous.read_text())
        if old.get("dataset", {}).get("steps") == result["dataset"]["steps"]:
            result["runs"] = [r for r in old.get("runs", []) if r["mode"] not in cfg.modes]
            first = old["dataset"].get("collect_s_first_run") or old["dataset"].get("collect_s_this_run")
            result["dataset"]["collect_s_first_run"] = max(first or 0.0, result["dataset"]["collect_s_this_run"])
    atomic_write_json(out / "large_data.json", result)
    for mode in cfg.modes:
        run = measure_training(Path(data), out / "runs" / mode, mode, cfg.train_steps)
        print(json.dumps(run), flush=True)
        result["runs"].append(run)
        atomic_write_json(out / "large_data.json", result)


if __name__ == "__main__":
    import tyro

    main(tyro.cli(LargeDataConfig))
