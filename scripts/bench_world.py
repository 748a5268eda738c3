"""Speed and solver statistics of the built-in world, per regime and body count.

For each regime and N it runs random actions (uniform in [-1, 1]) and measures
  * raw steps/s of ``World.step`` (resets every 200 steps, not timed),
  * env steps/s through ``make_env`` (gymnasium's TimeLimit and checkers included, resets timed),
  * solver iterations per step (mean, fraction of steps with 0, max), contacts per step and the
    fraction of steps where the solver did not converge.
Prints a table and writes everything to a JSON file (``--out``).

    python scripts/bench_world.py                      # about 20 seconds on one core
    python scripts/bench_world.py --steps 500 --n-bodies 5
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from loopwm.envs import ENV_IDS, TASK_PRESETS, World, WorldConfig, make_env
from loopwm.utils import atomic_write_json

REGIME_IDS = {regime: env_id for env_id, regime in ENV_IDS.items() if env_id not in TASK_PRESETS}
EPISODE = 200


def bench_raw(regime: str, n: int, steps: int, seed: int) -> dict:
    """Time World.step alone and collect the solver's per-step statistics."""
    world = World(WorldConfig(regime=regime, n_bodies=n))
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1, 1, size=(steps, 2)).astype(np.float32)
    iterations = np.zeros(steps, dtype=np.int64)
    contacts = np.zeros(steps, dtype=np.int64)
    converged = np.zeros(steps, dtype=bool)
    elapsed = 0.0
    for start in range(0, steps, EPISODE):
        world.reset(rng)
        stop = min(start + EPISODE, steps)
        t0 = time.perf_counter()
        stats = [world.step(actions[t]) for t in range(start, stop)]
        elapsed += time.perf_counter() - t0
        for t, s in zip(range(start, stop), stats):
            iterations[t], contacts[t], converged[t] = s.solver_iterations, s.contacts, s.converged
    return {
        "raw_steps_per_s": steps / elapsed,
        "solver_iterations_mean": float(iterations.mean()),
        "solver_iterations_zero_frac": float(np.mean(iterations == 0)),
        "solver_iterations_max": int(iterations.max()),
        "contacts_mean": float(contacts.mean()),
        "not_converged_frac": float(np.mean(~converged)),
    }


def bench_env(regime: str, n: int, steps: int, seed: int) -> float:
    """Steps per second through the registered Gymnasium id, resets included."""
    env = make_env(REGIME_IDS[regime], n_bodies=n)
    actions = np.random.default_rng(seed).uniform(-1, 1, size=(steps, 2)).astype(np.float32)
    env.reset(seed=seed)
    t0 = time.perf_counter()
    for action in actions:
        truncated = env.step(action)[3]
        if truncated:
            env.reset()
    return steps / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/world_speed.json", help="JSON results file")
    parser.add_argument("--steps", type=int, default=4000, help="steps per measurement")
    parser.add_argument("--n-bodies", type=int, nargs="+", default=[2, 5, 10, 16])
    parser.add_argument("--regimes", nargs="+", default=list(REGIME_IDS), choices=list(REGIME_IDS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rows = []
    print(f"{'regime':<7} {'N':>3} {'raw steps/s':>12} {'env steps/s':>12} {'iters mean':>10} "
          f"{'0-iter frac':>11} {'iters max':>9} {'contacts':>8} {'not conv':>8}")
    for regime in args.regimes:
        for n in args.n_bodies:
            row = {"regime": regime, "n_bodies": n, **bench_raw(regime, n, args.steps, args.seed)}
            row["env_steps_per_s"] = bench_env(regime, n, args.steps, args.seed)
            rows.append(row)
            print(f"{regime:<7} {n:>3} {row['raw_steps_per_s']:>12,.0f} {row['env_steps_per_s']:>12,.0f} "
                  f"{row['solver_iterations_mean']:>10.2f} {row['solver_iterations_zero_frac']:>11.3f} "
                  f"{row['solver_iterations_max']:>9d} {row['contacts_mean']:>8.2f} {row['not_converged_frac']:>8.4f}")
    atomic_write_json(args.out, {
        "steps_per_measurement": args.steps,
        "actions": "uniform random in [-1, 1]",
        "machine": {"python": platform.python_version(), "numpy": np.__version__,
                    "processor": platform.processor() or platform.machine()},
        "results": rows,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
