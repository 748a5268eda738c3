"""Speed and solver statistics of the built-in world, per regime and body count.

For each regime, N and number of physics steps per observed step (``--substeps``) it runs random
actions (uniform in [-1, 1]) and measures
  * raw steps/s of ``World.step`` (physics steps; resets every 200 steps, not timed),
  * env steps/s through ``make_env`` (observed steps; gymnasium's TimeLimit and checkers included,
    resets timed),
  * per observed step, the world's solver sweeps (the ground truth of how hard a step is: mean,
    fraction with 0, median, 90th and 99th percentiles, max), contacts and the fraction of steps
    where the solver did not converge.
Prints a table and writes everything to a JSON file (``--out``).

    python scripts/bench_world.py                      # about 30 seconds on one core
    python scripts/bench_world.py --steps 500 --n-bodies 5 --substeps 1 8
    python scripts/bench_world.py --regimes rail --n-bodies 16 32 64 --env-args '{"rail_radius": 0.005}'
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np

from loopwm.envs import ENV_IDS, TASK_PRESETS, World, WorldConfig, make_env
from loopwm.utils import atomic_write_json

REGIME_IDS = {regime: env_id for env_id, regime in ENV_IDS.items() if env_id not in TASK_PRESETS}
EPISODE = 200


def bench_raw(regime: str, n: int, steps: int, seed: int, world_args: dict) -> float:
    """Physics steps per second of World.step alone."""
    world = World(WorldConfig(regime=regime, n_bodies=n, **{**world_args, "substeps": 1}))
    rng = np.random.default_rng(seed)
    actions = rng.uniform(-1, 1, size=(steps, 2)).astype(np.float32)
    elapsed = 0.0
    for start in range(0, steps, EPISODE):
        world.reset(rng)
        stop = min(start + EPISODE, steps)
        t0 = time.perf_counter()
        for t in range(start, stop):
            world.step(actions[t])
        elapsed += time.perf_counter() - t0
    return steps / elapsed


def bench_env(regime: str, n: int, steps: int, seed: int, world_args: dict) -> dict:
    """Observed steps per second through the registered Gymnasium id (resets included), and the
    solver's work per observed step from the step's info."""
    env = make_env(REGIME_IDS[regime], n_bodies=n, **world_args)
    actions = np.random.default_rng(seed).uniform(-1, 1, size=(steps, 2)).astype(np.float32)
    sweeps = np.zeros(steps, dtype=np.int64)
    contacts = np.zeros(steps, dtype=np.int64)
    converged = np.zeros(steps, dtype=bool)
    env.reset(seed=seed)
    t0 = time.perf_counter()
    for t, action in enumerate(actions):
        _, _, _, truncated, info = env.step(action)
        sweeps[t], contacts[t], converged[t] = info["solver_iterations"], info["contacts"], info["converged"]
        if truncated:
            env.reset()
    elapsed = time.perf_counter() - t0
    p50, p90, p99 = (float(x) for x in np.percentile(sweeps, [50, 90, 99]))
    return {
        "env_steps_per_s": steps / elapsed,
        "solver_iterations_mean": float(sweeps.mean()),
        "solver_iterations_zero_frac": float(np.mean(sweeps == 0)),
        "solver_iterations_p50": p50,
        "solver_iterations_p90": p90,
        "solver_iterations_p99": p99,
        "solver_iterations_max": int(sweeps.max()),
        "contacts_mean": float(contacts.mean()),
        "not_converged_frac": float(np.mean(~converged)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="results/world_speed.json", help="JSON results file")
    parser.add_argument("--steps", type=int, default=4000, help="steps per measurement")
    parser.add_argument("--n-bodies", type=int, nargs="+", default=[2, 5, 10, 16])
    parser.add_argument("--regimes", nargs="+", default=list(REGIME_IDS), choices=list(REGIME_IDS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--substeps", type=int, nargs="+", default=[1, 4],
                        help="physics steps per observed step (the action held), one row each")
    parser.add_argument("--env-args", default="{}", help="other world options for every row, as a JSON object")
    args = parser.parse_args()
    world_args = json.loads(args.env_args)

    rows = []
    print(f"{'regime':<7} {'N':>3} {'sub':>3} {'raw steps/s':>12} {'env steps/s':>12} {'sweeps mean':>11} "
          f"{'0 frac':>6} {'p50':>5} {'p90':>5} {'p99':>5} {'max':>4} {'contacts':>8} {'not conv':>8}")
    for regime in args.regimes:
        for n in args.n_bodies:
            for k in args.substeps:
                row = {"regime": regime, "n_bodies": n, "substeps": k,
                       "raw_steps_per_s": bench_raw(regime, n, args.steps, args.seed, world_args),
                       **bench_env(regime, n, args.steps, args.seed, {**world_args, "substeps": k})}
                rows.append(row)
                print(f"{regime:<7} {n:>3} {k:>3} {row['raw_steps_per_s']:>12,.0f} {row['env_steps_per_s']:>12,.0f} "
                      f"{row['solver_iterations_mean']:>11.2f} {row['solver_iterations_zero_frac']:>6.3f} "
                      f"{row['solver_iterations_p50']:>5.0f} {row['solver_iterations_p90']:>5.0f} "
                      f"{row['solver_iterations_p99']:>5.0f} {row['solver_iterations_max']:>4d} "
                      f"{row['contacts_mean']:>8.2f} {row['not_converged_frac']:>8.4f}")
    atomic_write_json(args.out, {
        "steps_per_measurement": args.steps,
        "actions": "uniform random in [-1, 1]",
        "world_args": world_args,
        "machine": {"python": platform.python_version(), "numpy": np.__version__,
                    "processor": platform.processor() or platform.machine()},
        "results": rows,
    })
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
