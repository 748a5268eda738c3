"""`loopwm text collect`: transitions of a real text simulator (ScienceWorld), for text world models.

    loopwm text collect --out data/sciworld                      # every task, the default sample
    loopwm text collect --out /tmp/sw --tasks boil --train-variations 2 --dev-variations 0 --test-variations 1
    loopwm text collect --simulator textworld-express --out data/twx   # the ALFWorld stand-in (simulators.py)

For each task and each of the simulator's own variation splits (train, dev, test; so no test
variation is ever seen in training), a sample of variations is played: the gold action sequence
the simulator generates, and (train only) exploratory branches that follow the gold path for a
random number of steps and then take random valid actions. Every trajectory is recorded in one pass
from a fresh load and written atomically as its own JSON file, so a killed collection resumes where
it stopped. The simulator VMs iterate their hash sets in a fixed order (simulators.py), so one
command collects the same trajectories whatever the worker count, the job order or a resume. Jobs
run in worker processes, each with its own simulator (a Java VM).

Layout::

    OUT/manifest.json                    what was collected, how, the task -> type map, the counts
    OUT/variations.json                  each task's variation indices per split (asked once)
    OUT/trajectories/SPLIT/TASK/vNNNN-gold.json, vNNNN-branchK.json

A trajectory: task, type, split, variation, kind ("gold" | "branch"), branch_from (gold steps
before the branch, or null), task_description, observation (the first, from "look around"),
steps [{action, observation, score, done}] (score 0-100 as the simulator gives it), and entities:
every object name the simulator listed as present (`get_possible_objects`) at the start or after
any step, which the text benchmark's entity F1 is computed over.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from loopwm.text import simulators
from loopwm.text.simulators import SIMULATORS, check_ready
from loopwm.text.tasks import SPLITS, TWX_DEFAULT
from loopwm.utils import LoopWMError, atomic_write_json, read_json, worker_pool

FORMAT = "loopwm-text-trajectories"
FORMAT_VERSION = 2  # 2: trajectories list the entities present


@dataclass
class TextCollectConfig:
    """Record text-simulator trajectories (gold paths and exploratory branches) for text world models."""

    out: str = "data/sciworld"
    """Dataset folder (re-running the same command resumes it)."""
    simulator: str = "scienceworld"
    """scienceworld (the paper's benchmark) or textworld-express (household games, standing in for ALFWorld)."""
    tasks: list[str] = field(default_factory=list)
    """Task names (empty: all 30 ScienceWorld tasks; for textworld-express cookingworld, twc and coin).
    Variations are drawn by one seeded generator in task order, so a subset draws other variations for
    a task than the full collection does: compare models on one collection, named by its fingerprint."""
    train_variations: int = 12
    """Variations per task from the train split (-1: every one, 0: none)."""
    dev_variations: int = 2
    """Variations per task from the dev split (-1: every one, 0: none)."""
    test_variations: int = 6
    """Variations per task from the test split (-1: every one, 0: none)."""
    branches: int = 1
    """Exploratory branches per train variation, each off the gold path at a random step."""
    branch_steps: int = 5
    """Random valid actions a branch takes after leaving the gold path."""
    step_limit: int = 200
    """Simulator step limit per trajectory."""
    workers: int = 2
    """Worker processes (one simulator each)."""
    seed: int = 0
    """Seed of which variations are sampled, where branches leave the gold path and what they do."""
    progress: bool = True
    """Show a progress bar."""


# ----- in the parent -----
def read_text_manifest(folder: Path) -> dict:
    """A text dataset's manifest, checked to be one of ours in this loopwm's format."""
    manifest = read_json(folder / "manifest.json", "text dataset manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise LoopWMError(f"{folder} holds something other than a text dataset; collect into an empty folder")
    if manifest.get("format_version", 1) != FORMAT_VERSION:
        raise LoopWMError(f"{folder} was collected by another loopwm version (format {manifest.get('format_version', 1)}, "
                          f"this one uses {FORMAT_VERSION}: entity lists were added); collect it again into a new folder")
    return manifest


def trajectory_path(out: Path, split: str, task: str, variation: int, kind: str) -> Path:
    return out / "trajectories" / split / task / f"v{variation:04d}-{kind}.json"


def _sample(variations: list[int], n: int, rng: np.random.Generator) -> list[int]:
    if n == 0:
        return []
    if n < 0 or n >= len(variations):
        return sorted(variations)
    return sorted(int(v) for v in rng.choice(variations, size=n, replace=False))


def collect_text(cfg: TextCollectConfig) -> Path:
    check_ready(cfg.simulator)
    task_types = SIMULATORS[cfg.simulator][1]
    tasks = cfg.tasks or (list(TWX_DEFAULT) if cfg.simulator == "textworld-express" else list(task_types))
    unknown = [t for t in tasks if t not in task_types]
    if unknown:
        raise LoopWMError(f"unknown {cfg.simulator} task(s) {', '.join(unknown)}: known tasks are {', '.join(task_types)}")
    if cfg.workers < 1 or cfg.branch_steps < 1 or cfg.step_limit < 1:
        raise LoopWMError("--workers, --branch-steps and --step-limit must be at least 1")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("command", "out", "workers", "progress")}
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        old = read_text_manifest(out)
        defaults = {k: v for k, v in asdict(TextCollectConfig()).items() if k in settings}
        if {**defaults, **(old.get("settings") or {})} != settings:  # a setting added since counts at its default
            raise LoopWMError(f"{out} was collected with other settings ({old.get('settings')}); resume with the "
                              "same command or collect into a new folder")
    from loopwm import __version__

    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "created_by": f"loopwm {__version__}",
              "simulator": cfg.simulator, "java_options": simulators.DETERMINISTIC_JVM, "settings": settings,
              "tasks": tasks, "task_types": {t: task_types[t] for t in tasks}}
    atomic_write_json(manifest_path, {**header, "counts": None})  # a resumed run must ask for the same data
    from tqdm import tqdm

    t0 = time.time()
    pool = worker_pool(cfg.workers, initializer=simulators.worker_init, initargs=(cfg.simulator, cfg.step_limit))
    try:
        known_path = out / "variations.json"
        known = read_json(known_path, "variation list") if known_path.exists() else {}
        missing = [t for t in tasks if t not in known]
        for task, splits in zip(missing, pool.map(simulators.variations, missing)):
            known[task] = splits
        if missing:
            atomic_write_json(known_path, known)
        rng = np.random.default_rng(cfg.seed)
        jobs = []
        for task in tasks:  # the draw is made for every task in order, so it does not depend on what is done
            counts = {"train": cfg.train_variations, "dev": cfg.dev_variations, "test": cfg.test_variations}
            for split in SPLITS:
                for v in _sample(known[task][split], counts[split], rng):
                    jobs.append({"task": task, "split": split, "variation": v, "kind": "gold"})
                    for k in range(cfg.branches if split == "train" else 0):
                        jobs.append({"task": task, "split": split, "variation": v, "kind": f"branch{k}",
                                     "seed": int(rng.integers(2**31)), "branch_steps": cfg.branch_steps})
        where = lambda j: trajectory_path(out, j["split"], j["task"], j["variation"], j["kind"])  # noqa: E731
        bar = tqdm(total=len(jobs), initial=sum(where(j).exists() for j in jobs), desc=f"collect {cfg.simulator}",
                   unit="traj", disable=not cfg.progress)
        # gold paths first: a branch leaves its variation's gold path before the step that completes the task
        for phase in ("gold", "branch"):
            todo = [j for j in jobs if j["kind"].startswith(phase) and not where(j).exists()]
            if phase == "branch":
                todo = [{**j, "gold_steps": len(read_json(where({**j, "kind": "gold"}))["steps"])} for j in todo]
            for trajectory in pool.map(simulators.play, todo):
                atomic_write_json(where(trajectory), trajectory)
                bar.update(1)
                bar.set_postfix(steps=len(trajectory["steps"]))
        bar.close()
    finally:  # stopped early (Ctrl-C, SIGTERM, an error): drop the queued jobs, keep no simulator alive
        pool.shutdown(wait=True, cancel_futures=True)
    counts = {split: {"trajectories": 0, "transitions": 0} for split in SPLITS}
    for path in (out / "trajectories").glob("*/*/*.json"):
        trajectory = read_json(path, "trajectory")
        counts[trajectory["split"]]["trajectories"] += 1
        counts[trajectory["split"]]["transitions"] += len(trajectory["steps"])
    atomic_write_json(manifest_path, {**header, "counts": counts, "seconds_this_run": round(time.time() - t0, 1)})
    return out
