"""Training throughput, measured as what matters: validation error reached per wall-clock minute.

Every setting trains the same model on the same data for the same wall-clock budget, from the same
seed; the learning curve (validation observation loss against training seconds) and the open-loop
error at horizons 1 and 10 afterwards say which setting converges fastest. One-thread settings run
two at a time (one per core), two-thread settings alone, so every run has the cores it asks for.

    python scripts/throughput.py --out results/throughput                 # about 30 minutes on 2 cores
    python scripts/throughput.py --out results/throughput-rail --preset demo --minutes 12 \
        --batches 32 128 256 --two-thread-batches 256 1024 --compile-batches 128   # the demo's setting
    python scripts/throughput.py --out /tmp/tp --minutes 0.3 --episodes 20   # a smoke run
    python scripts/throughput.py --out OUT --env-id loopwm/Rail-v0 --n-bodies 32 --batches 256 1024 4096 \
        --two-thread-batches --compile-batches --minutes 1 --workers 1   # one setting at a time (an accelerator)

Writes OUT/throughput.jsonl (one row per setting, with its curve), OUT/summary.md and
OUT/learning_curves.png. Re-running re-uses finished rows.
"""

from __future__ import annotations

import json
import math
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import tyro

from loopwm.utils import atomic_write_text, worker_pool


@dataclass
class ThroughputConfig:
    """Compare batch sizes, threads and torch.compile by validation error per minute."""

    out: str = "results/throughput"
    """Result folder (runs and data go under it, ignored by git)."""
    env_id: str = "loopwm/Balls-v0"
    """World to train on."""
    n_bodies: int = 5
    """Bodies in the world."""
    episodes: int = 300
    """Episodes collected."""
    minutes: float = 3.0
    """Wall-clock training budget of every setting."""
    base_lr: float = 2e-3
    """Learning rate at batch 32; other batches scale it by sqrt(batch / 32) (Adam's usual rule)."""
    batches: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 512, 1024])
    """Batch sizes swept at one thread."""
    two_thread_batches: list[int] = field(default_factory=lambda: [32, 256, 1024])
    """Batch sizes also run with two threads."""
    compile_batches: list[int] = field(default_factory=lambda: [32, 256])
    """Batch sizes also run with torch.compile'd blocks (one thread)."""
    model_kind: str = "looped"
    """Model trained ("looped" or "deep")."""
    report_minutes: list[float] = field(default_factory=lambda: [1.0])
    """Times at which the summary reports each setting's validation loss (the last value by then)."""
    summary_only: bool = False
    """Only rewrite summary.md and the plot from throughput.jsonl."""
    eval_every: int = 0
    """Steps between validations; 0: about every 20 s at this machine's CPU speed (on an accelerator
    that estimate validates far too often for a batch of thousands: give a number)."""
    workers: int = 2
    """One-thread settings trained at once (one per core). Use 1 on an accelerator: processes there
    take turns on the device, so settings run side by side would time each other."""
    preset: str = "default"
    """"default": the library's default model, world and window on `env_id`; "demo": the demo's world
    (the rail, 16 discs), model, window (context 2, horizon 4) and base learning rate 3e-3 at batch 32,
    overriding env_id, n_bodies and base_lr."""

    def __post_init__(self) -> None:
        if self.preset not in ("default", "demo"):
            raise SystemExit(f"--preset {self.preset!r}: use 'default' or 'demo'")
        if self.preset == "demo":
            self.env_id, self.n_bodies, self.base_lr = "loopwm/Rail-v0", 16, 3e-3


def settings(cfg: ThroughputConfig) -> list[dict]:
    rows = []
    for b in cfg.batches:
        rows.append({"name": f"b{b}-t1", "batch": b, "threads": 1, "compile": False})
    for b in cfg.two_thread_batches:
        rows.append({"name": f"b{b}-t2", "batch": b, "threads": 2, "compile": False})
    for b in cfg.compile_batches:
        rows.append({"name": f"b{b}-t1-compile", "batch": b, "threads": 1, "compile": True})
    for r in rows:
        r["lr"] = cfg.base_lr * math.sqrt(r["batch"] / 32)
    return rows


def _run(job: dict) -> dict:
    import torch

    from loopwm.checkpoint import load_model
    from loopwm.data import TrajectoryDataset
    from loopwm.eval.openloop import open_loop
    from loopwm.models.world_model import ModelConfig
    from loopwm.train.loop import TrainConfig, train, validate
    from loopwm.utils import pick_device

    from loopwm.demo import DemoConfig, demo_model
    from loopwm.train.schedule import plateaued

    torch.set_num_threads(job["threads"])
    out = Path(job["run"])
    window = {}
    model_cfg = ModelConfig(kind=job["kind"])
    if job["preset"] == "demo":
        demo = DemoConfig()
        window = {"context": demo.context, "horizon": demo.horizon}
        model_cfg = replace(demo_model(), kind=job["kind"])
    tcfg = TrainConfig(data=job["data"], out=str(out), model=model_cfg, minutes=job["minutes"],
                       steps=10**9, batch_size=job["batch"], lr=job["lr"], threads=job["threads"],
                       compile=job["compile"], eval_every=job["eval_every"], ckpt_every=10**9, progress=False,
                       warmup=job["warmup"], **window)
    t0 = time.time()
    train(tcfg)
    wall = time.time() - t0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    curve = [(r["time"], r["val/obs"]) for r in records if "val/obs" in r]
    steps = records[-1]["step"]
    train_s = records[-1]["time"]
    # the steady rate, over the second half of training (compilation and warm-up excluded)
    half = [r for r in records if r["time"] >= train_s / 2]
    steady = (half[-1]["step"] - half[0]["step"]) / max(half[-1]["time"] - half[0]["time"], 1e-9) if len(half) > 1 else 0.0
    device = pick_device("auto")  # the device training picked
    model, meta = load_model(out, device)
    ds = TrajectoryDataset.load(job["data"])
    _, val_idx = ds.split(tcfg.val_fraction, seed=tcfg.seed)
    final = validate(model, ds, ds.window_index(val_idx, tcfg.context + tcfg.horizon), tcfg, device)["val/obs"]
    curve.append((train_s, final))
    res = open_loop(model, ds, np.asarray(meta["val_episodes"]), horizon=10, max_windows=512, device=device)
    return {**{k: job[k] for k in ("name", "batch", "threads", "compile", "lr", "workers")}, "steps": steps,
            "device": meta["device"],  # recorded by the training loop
            "train_seconds": train_s, "wall_seconds": round(wall, 1), "steps_per_s": steps / train_s,
            "samples_per_s": steps * job["batch"] / train_s, "steady_samples_per_s": steady * job["batch"],
            "curve": curve, "val_obs_final": final,
            "still_improving": not plateaued(curve, 0.02),
            "h1": float(res.errors[0]), "h10": float(res.errors[9])}


def main(cfg: ThroughputConfig) -> None:
    from loopwm.data import collect

    out = Path(cfg.out)
    if cfg.summary_only:
        write_summary(out, cfg)
        return
    out.mkdir(parents=True, exist_ok=True)
    data = collect(env_id=cfg.env_id, n_bodies=cfg.n_bodies, out=str(out / "data"), episodes=cfg.episodes)
    path = out / "throughput.jsonl"
    done = {}
    if path.exists():
        done = {r["name"]: r for r in (json.loads(x) for x in path.read_text().splitlines() if x.strip())}
    jobs = []
    for s in settings(cfg):
        if s["name"] in done:
            continue
        # steps between validations: about 20 s of training at a rough 0.15 s per 32 samples per thread
        est_step = 0.15 * max(1.0, s["batch"] / 32) ** 0.8 / (1.4 if s["threads"] == 2 and s["batch"] >= 128 else 1.0)
        jobs.append({**s, "data": str(data), "run": str(out / "runs" / s["name"]), "minutes": cfg.minutes,
                     "kind": cfg.model_kind, "preset": cfg.preset, "workers": cfg.workers, "eval_every": cfg.eval_every or max(2, int(20 / est_step)),
                     "warmup": 200 if s["batch"] <= 32 else max(20, int(200 * 32 / s["batch"]))})

    def record(row):
        done[row["name"]] = row
        atomic_write_text(path, "".join(json.dumps(done[k]) + "\n" for k in done))
        print(f"{row['name']:>16}: {row['steps']} steps, {row['samples_per_s']:.0f} samples/s, "
              f"val {row['val_obs_final']}, h1 {row['h1']:.4f}, h10 {row['h10']:.4f}", flush=True)

    failed = {}
    for group, workers in (([j for j in jobs if j["threads"] == 1], max(1, cfg.workers)),
                           ([j for j in jobs if j["threads"] == 2], 1)):
        failed.update(_run_all(group, workers, record))
    # a setting that cannot run here (a batch too large for memory kills its process) is named in the
    # summary and tried again by the next invocation; the others still finish
    atomic_write_text(out / "failed.json", json.dumps(failed, indent=1) + "\n")
    write_summary(out, cfg)
    if failed:
        print(f"failed: {', '.join(failed)} (see {out / 'failed.json'})", flush=True)


def _run_all(jobs: list[dict], workers: int, record) -> dict[str, str]:
    """Run jobs `workers` at a time and record each row; returns {name: why} for those that failed."""
    failed = {}

    def settled(job, future) -> bool:
        """Record a finished job (or why it failed); False when its process pool broke under it."""
        try:
            record(future.result())
        except BrokenProcessPool:
            return False
        except Exception as exc:  # noqa: BLE001 - reported; the other settings go on
            failed[job["name"]] = f"{type(exc).__name__}: {exc}"
        return True

    with worker_pool(workers) as pool:
        suspects = [job for job, future in [(j, pool.submit(_run, j)) for j in jobs] if not settled(job, future)]
    # a process that dies breaks its whole pool: each job it took down runs again alone, which
    # finishes the innocent ones and names the one that died
    for job in suspects:
        with worker_pool(1) as pool:
            if not settled(job, pool.submit(_run, job)):
                failed[job["name"]] = "its process was killed; out of memory at this batch?"
    return failed


def _improving(row: dict) -> str:
    """Whether the run was still improving when its budget ended (older rows do not say)."""
    flag = row.get("still_improving")
    return "" if flag is None else "yes" if flag else "no"


def write_summary(out: Path, cfg: ThroughputConfig) -> None:
    path = out / "throughput.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
    rows.sort(key=lambda r: (r["compile"], r["threads"], r["batch"]))
    lines = [f"# Training throughput ({cfg.env_id}, {cfg.n_bodies} bodies, {cfg.model_kind} model, "
             f"{cfg.preset} preset, {cfg.minutes:g} min per setting)", "",
             f"Trained on: {', '.join(sorted({r.get('device', 'cpu') for r in rows}))}; "
             f"one-thread settings trained {' / '.join(sorted({str(r.get('workers', 2)) for r in rows}))} at a time.",
             "Still improving: the last fifth of the run lowered validation loss by more than 2%.", "",
             "| setting | batch | lr | threads | compile | steps | samples/s (steady) | "
             + " | ".join(f"val loss at {m:g} min" for m in cfg.report_minutes)
             + " | final val loss | still improving | h1 | h10 |",
             "|---|---|---|---|---|---|---|" + "---|" * len(cfg.report_minutes) + "---|---|---|---|"]
    for r in rows:
        at = [[v for t, v in r["curve"] if t <= 60.0 * m] for m in cfg.report_minutes]
        lines.append(f"| {r['name']} | {r['batch']} | {r['lr']:.2g} | {r['threads']} | {'yes' if r['compile'] else 'no'} | "
                     f"{r['steps']} | {r['samples_per_s']:.0f} ({r['steady_samples_per_s']:.0f}) | "
                     + "".join(f"{a[-1] if a else float('nan'):.4f} | " for a in at) +
                     f"{r['val_obs_final']:.4f} | {_improving(r)} | {r['h1']:.4f} | {r['h10']:.4f} |")
    if rows:
        best = min(rows, key=lambda r: r["h10"])
        lines += ["", f"Lowest horizon-10 error after {cfg.minutes:g} minutes: **{best['name']}** ({best['h10']:.4f})."]
    failed = json.loads((out / "failed.json").read_text()) if (out / "failed.json").exists() else {}
    if failed:
        lines += ["", "Did not run here: " + "; ".join(f"{name} ({why})" for name, why in failed.items()) + "."]
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        if r["curve"]:
            t, v = zip(*r["curve"])
            ax.plot(np.array(t) / 60, v, marker=".", label=r["name"], linestyle="--" if r["threads"] == 2 else "-")
    ax.set_xlabel("training minutes")
    ax.set_ylabel("validation observation loss")
    ax.set_yscale("log")
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("validation loss against wall-clock")
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main(tyro.cli(ThroughputConfig))
