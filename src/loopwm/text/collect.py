"""`loopwm text collect`: transitions of the real ScienceWorld simulator, for text world models.

    loopwm text collect --out data/sciworld                      # every task, the default sample
    loopwm text collect --out /tmp/sw --tasks boil --train-variations 2 --dev-variations 0 --test-variations 1

For each task and each of the simulator's own variation splits (train, dev, test; so no test
variation is ever seen in training), a sample of variations is played: the gold action sequence
the simulator generates, and (train only) exploratory branches that follow the gold path for a
random number of steps and then take random valid actions. Every trajectory is recorded in one pass
from a fresh load (object lists in the text can come out in another order on another load, so
nothing is ever replayed) and written atomically as its own JSON file, so a killed collection
resumes where it stopped. Jobs run in worker processes, each with its own simulator (a Java VM).

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

import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from loopwm.text.tasks import SPLITS, TASK_TYPES
from loopwm.utils import LoopWMError, atomic_write_json, read_json

FORMAT = "loopwm-text-trajectories"
FORMAT_VERSION = 2  # 2: trajectories list the entities present


@dataclass
class TextCollectConfig:
    """Record ScienceWorld trajectories (gold paths and exploratory branches) for text world models."""

    out: str = "data/sciworld"
    """Dataset folder (re-running the same command resumes it)."""
    tasks: list[str] = field(default_factory=list)
    """ScienceWorld task names (empty: all 30)."""
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


def check_ready() -> None:
    """A one-line error when the text extra or Java is missing."""
    try:
        import scienceworld  # noqa: F401
    except ImportError as err:
        raise LoopWMError('text worlds need the text extra: pip install "loopwm[text]" (and a Java runtime, e.g. '
                          "the Debian package openjdk-17-jre-headless)") from err
    if shutil.which("java") is None:
        raise LoopWMError("ScienceWorld runs on Java, and no `java` is on PATH: install a Java runtime "
                          "(Debian: apt-get install openjdk-17-jre-headless)")


# ----- in the workers: one simulator per process -----
_ENV = None


def _worker_init(step_limit: int) -> None:
    global _ENV
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from scienceworld import ScienceWorldEnv

    _ENV = ScienceWorldEnv("", envStepLimit=step_limit)


def _variations(task: str) -> dict[str, list[int]]:
    _ENV.load(task, 0, "", generateGoldPath=False)
    return {"train": list(_ENV.get_variations_train()), "dev": list(_ENV.get_variations_dev()),
            "test": list(_ENV.get_variations_test())}


def _step(action: str, entities: set[str]) -> dict:
    observation = _ENV.server.step(action)  # the raw step: the high-level one also lists valid actions
    entities.update(_ENV.get_possible_objects())  # about 7 ms: what is in view now
    return {"action": action, "observation": observation, "score": int(round(100 * _ENV.server.getScore())),
            "done": bool(_ENV.server.getCompleted())}


def _play(job: dict) -> dict:
    """One trajectory from a fresh load of (task, variation)."""
    start = time.perf_counter()
    _ENV.load(job["task"], job["variation"], "", generateGoldPath=True)
    gold = list(_ENV.get_gold_action_sequence())
    first = _ENV.server.step("look around")  # the first observation, as the simulator's reset gives it
    entities = set(_ENV.get_possible_objects())
    steps, branch_from = [], None
    if job["kind"] == "gold":
        for action in gold:
            steps.append(_step(action, entities))
            if steps[-1]["done"]:
                break
    else:
        rng = np.random.default_rng(job["seed"])
        branch_from = int(rng.integers(0, max(job["gold_steps"], 1)))  # before the gold path completes the task
        for action in gold[:branch_from]:
            steps.append(_step(action, entities))
        for _ in range(job["branch_steps"]):
            if steps and steps[-1]["done"]:
                break
            valid = sorted(_ENV.get_valid_action_object_combinations())  # sorted: the draw must not depend on list order
            steps.append(_step(valid[int(rng.integers(len(valid)))] if valid else "look around", entities))
    return {**{k: job[k] for k in ("task", "split", "variation", "kind")}, "type": TASK_TYPES[job["task"]],
            "branch_from": branch_from, "task_description": _ENV.taskdescription(), "observation": first,
            "steps": steps, "entities": sorted(entities), "gold_length": len(gold), "seconds": time.perf_counter() - start}


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
    check_ready()
    tasks = cfg.tasks or list(TASK_TYPES)
    unknown = [t for t in tasks if t not in TASK_TYPES]
    if unknown:
        raise LoopWMError(f"unknown ScienceWorld task(s) {', '.join(unknown)}: known tasks are {', '.join(TASK_TYPES)}")
    if cfg.workers < 1 or cfg.branch_steps < 1 or cfg.step_limit < 1:
        raise LoopWMError("--workers, --branch-steps and --step-limit must be at least 1")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("command", "out", "workers", "progress")}
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        old = read_text_manifest(out)
        if old.get("settings") != settings:
            raise LoopWMError(f"{out} was collected with other settings ({old.get('settings')}); resume with the "
                              "same command or collect into a new folder")
    from loopwm import __version__

    header = {"format": FORMAT, "format_version": FORMAT_VERSION, "created_by": f"loopwm {__version__}", "simulator": "scienceworld",
              "settings": settings, "tasks": tasks, "task_types": {t: TASK_TYPES[t] for t in tasks}}
    atomic_write_json(manifest_path, {**header, "counts": None})  # a resumed run must ask for the same data
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    t0 = time.time()
    pool = ProcessPoolExecutor(cfg.workers, mp_context=mp.get_context("spawn"), initializer=_worker_init,
                               initargs=(cfg.step_limit,))
    try:
        known_path = out / "variations.json"
        known = read_json(known_path, "variation list") if known_path.exists() else {}
        missing = [t for t in tasks if t not in known]
        for task, splits in zip(missing, pool.map(_variations, missing)):
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
        bar = tqdm(total=len(jobs), initial=sum(where(j).exists() for j in jobs), desc="collect ScienceWorld",
                   unit="traj", disable=not cfg.progress)
        # gold paths first: a branch leaves its variation's gold path before the step that completes the task
        for phase in ("gold", "branch"):
            todo = [j for j in jobs if j["kind"].startswith(phase) and not where(j).exists()]
            if phase == "branch":
                todo = [{**j, "gold_steps": len(read_json(where({**j, "kind": "gold"}))["steps"])} for j in todo]
            for trajectory in pool.map(_play, todo):
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
