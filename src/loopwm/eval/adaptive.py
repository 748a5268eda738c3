"""Where do loop iterations go, and what do they buy? Measurements for adaptive depth.

    depth_by_difficulty   one-step error at each fixed depth, split by the world's own difficulty
                          (its solver iterations for that step): does depth help hard steps only?
    exit_sweep            open-loop error at horizon 10 against mean iterations per step, for every
                          exit rule over a range of thresholds, with the fixed-depth curve
    wallclock             imagined steps per second of an exit rule against fixed depth, side by
                          side in this process, at batch 1 and batch 256

All of them score held-out windows of a dataset with the same open-loop code as `loopwm eval`.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from loopwm.eval.openloop import (exit_rule_from, normalised_error, observed_steps, open_loop, paired_gap, spearman,
                                 spread_windows)


@torch.no_grad()
def one_step_errors(model, ds, episodes, context: int = 4, depth: int | None = None, exit_rule=None,
                    max_windows: int = 1024, device="cpu") -> dict[str, np.ndarray]:
    """Per-window error of the prediction one step after `context` real observations, the iterations
    it used, and the world's contact and solver-iteration counts for that step (W,) each."""
    c = observed_steps(context)  # the model reads o_0 .. o_c and predicts o_{c+1}, as open_loop's horizon 1
    windows = spread_windows(ds, episodes, c + 1, max_windows)
    batch = ds.batch(windows)
    obs = model._as_entities(torch.as_tensor(batch["obs"], device=device).float())  # (W, C+1, N, F)
    act = torch.as_tensor(batch["action"], device=device)  # (W, C, ...)
    state = model.read(obs[:, : c + 1], act[:, :c], depth, exit_rule)
    _, out = model.step(state, act[:, c], depth, exit_rule)
    err = normalised_error(model, out["obs"][:, None], obs[:, c + 1][:, None])[:, 0]  # (W,)
    info = {k: batch[f"info_{k}"][:, c] for k in ("contacts", "solver_iterations") if f"info_{k}" in batch}
    work = out.get("token_iterations", out["iterations"]).float()
    return {"error": err.cpu().numpy(), "iterations": out["iterations"].cpu().numpy(), "token_iterations": work.cpu().numpy(),
            **info}


def depth_by_difficulty(model, ds, episodes, depths, context: int = 4, device="cpu") -> list[dict]:
    """Mean one-step error at each fixed depth for the easiest, middle and hardest third of steps
    (by the world's solver iterations)."""
    rows = []
    base = one_step_errors(model, ds, episodes, context, depth=1, device=device)
    solver = base.get("solver_iterations")
    if solver is None:
        return rows
    cuts = np.quantile(solver, [1 / 3, 2 / 3])
    groups = {"easy": solver <= cuts[0], "middle": (solver > cuts[0]) & (solver <= cuts[1]), "hard": solver > cuts[1]}
    for depth in depths:
        res = one_step_errors(model, ds, episodes, context, depth=depth, device=device)
        for name, mask in groups.items():
            if mask.any():
                rows.append({"depth": int(depth), "group": name, "windows": int(mask.sum()),
                             "solver_iterations_mean": float(solver[mask].mean()), "error_h1": float(res["error"][mask].mean())})
    return rows


SWEEP_BINS = (0, 1, 2, 4, 8, 16, 32)
"""Lower edges of the solver-sweep strata: 0 (free flight), 1, 2-3, 4-7, 8-15, 16-31, 32+."""


def sweep_stratum(sweeps: np.ndarray, bins=SWEEP_BINS) -> list[str]:
    """Stratum names ("0", "1", "2-3", ..., "32+") of solver-sweep counts."""
    names = [f"{lo}" if hi == lo + 1 else f"{lo}-{hi - 1}" for lo, hi in zip(bins[:-1], bins[1:])] + [f"{bins[-1]}+"]
    return [names[int(np.searchsorted(bins, s, side="right")) - 1] for s in np.asarray(sweeps).tolist()]


def pooled_error(strata: list[dict]) -> tuple[float, int] | None:
    """The one-step error over every window of some `error_by_sweeps` rows (weighted by their
    windows) and the number of windows; None when there are none."""
    n = sum(row["windows"] for row in strata)
    return (sum(row["windows"] * row["error_h1"] for row in strata) / n, n) if n else None


def strata_error(strata: list[dict], model: str, size: int, depth: int) -> tuple[float, int] | None:
    """One model's one-step error over every window its `error_by_sweeps` rows of one world size
    and test depth cover (tagged "model", "size", "depth"), and how many windows. Errors on the rail
    are heavy-tailed (a few steps of many sweeps carry much of the mean), so this is steadier than an
    open-loop h1 over 512 windows, which moved 10-20% against it there (docs/LOG.md, session 18)."""
    return pooled_error([s for s in strata if s["model"] == model and s["size"] == size and s["depth"] == depth])


def best_depth_row(rows: list[dict], strata: list[dict]) -> dict | None:
    """Of one model's result rows on one world size (one per test depth, with "h1"), the one whose
    depth has the lowest one-step error over the strata's windows; by "h1" where a depth has none."""
    if not rows:
        return None
    steady = {r["depth"]: strata_error(strata, r["model"], r["size"], r["depth"]) for r in rows}
    if all(v is not None for v in steady.values()):
        return min(rows, key=lambda r: steady[r["depth"]][0])
    return min(rows, key=lambda r: r["h1"])


def error_by_sweeps(model, ds, episodes, depths, context: int = 4, max_windows: int = 4096, device="cpu",
                    bins=SWEEP_BINS) -> list[dict]:
    """Mean one-step error in every stratum of the world's solver sweeps (`SWEEP_BINS`), at each
    fixed test depth: where the extra iterations go to work, or fail to.

    Every depth scores the same windows, so each row also carries `paired_se`: the standard error
    of its per-window error minus that of the stratum's best depth (0 at the best), the noise
    against which "more iterations stopped helping" is judged. Windows of one episode are
    correlated, so it errs on the small side."""
    per_depth = {}
    for depth in depths:
        res = one_step_errors(model, ds, episodes, context, depth=depth, max_windows=max_windows, device=device)
        if "solver_iterations" not in res:
            return []
        per_depth[depth] = res
    if not per_depth:
        return []
    sweeps = next(iter(per_depth.values()))["solver_iterations"]  # the same windows at every depth
    strata = np.array(sweep_stratum(sweeps, bins))
    rows = []
    for name in dict.fromkeys(sweep_stratum(sorted(set(sweeps.tolist())), bins)):
        mask = strata == name
        errors = {d: np.asarray(res["error"])[mask] for d, res in per_depth.items()}  # each (windows,)
        best = min(errors, key=lambda d: errors[d].mean())
        for depth, err in errors.items():
            diff = err - errors[best]
            rows.append({"depth": None if depth is None else int(depth), "sweeps": name, "windows": int(mask.sum()),
                         "solver_iterations_mean": float(sweeps[mask].mean()), "error_h1": float(err.mean()),
                         "paired_se": float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0})
    order = {d: i for i, d in enumerate(per_depth)}  # rows by depth, then stratum, as before
    return sorted(rows, key=lambda r: order[r["depth"]])


def equal_cost_reference(fixed: dict[int, np.ndarray], m: float) -> tuple[int, int, float, np.ndarray]:
    """The fixed-depth errors at mean compute `m`, per window: the line between the two scored depths
    that bracket m (lo <= m <= hi), weighted by where m falls between them (a mix of the two depths
    over steps costs m on average). Outside the scored depths, the nearest one. Unlike the single
    depth round(m), it does not jump where m crosses a half-integer. Returns (lo, hi, weight of hi,
    errors)."""
    depths = sorted(fixed)
    lo = max((d for d in depths if d <= m), default=depths[0])
    hi = min((d for d in depths if d >= m), default=depths[-1])
    w = 0.0 if hi == lo else (m - lo) / (hi - lo)
    return lo, hi, w, (1 - w) * np.asarray(fixed[lo], dtype=np.float64) + w * np.asarray(fixed[hi], dtype=np.float64)


def exit_sweep(model, ds, episodes, rules: dict[str, list[float]], depths, max_depth: int, context: int = 4,
               device="cpu", windows: int = 512, make_rule=None) -> list[dict]:
    """Horizon-10 open-loop error against mean iterations for fixed depths and each rule's thresholds,
    with the rank correlation of one-step iterations against the world's difficulty. Per-token
    rules also report iterations per token (`mean_token_iterations`), the compute they spend.

    Every rule and depth scores the same `windows`, so each rule's row also carries its paired gap at
    h10 (openloop.paired_gap: fraction and standard error) to the fixed depth nearest its compute M
    (`vs_round`; M = iterations per token, the same M as the fixed depths'), to the fixed depths at
    equal cost (`vs_equal_cost`: equal_cost_reference, the depths bracketing M mixed to cost M) and to
    the largest fixed depth (`vs_max`): whether "beats round(M)" and "within 2% of the maximum" are
    measured or noise.
    make_rule(name, threshold, model): builds each rule (default: by name, `exit_rule_from`)."""
    rows, fixed = [], {}
    for depth in depths:
        res = open_loop(model, ds, episodes, context, 10, windows, depth=depth, device=device)
        fixed[int(depth)] = res.window_errors[:, 9]
        rows.append({"rule": "fixed", "threshold": None, "max_depth": int(depth), "mean_iterations": float(res.iterations.mean()),
                     "mean_token_iterations": float(res.token_iterations.mean()),
                     "error_h10": float(res.errors[9]), "error_h1": float(res.errors[0]), "windows": res.windows})
    for name, thresholds in rules.items():
        for threshold in thresholds:
            rule = (make_rule or exit_rule_from)(name, threshold, model)
            res = open_loop(model, ds, episodes, context, 10, windows, depth=max_depth, exit_rule=rule, device=device)
            one = one_step_errors(model, ds, episodes, context, depth=max_depth, exit_rule=rule, device=device)
            row = {"rule": name, "threshold": float(threshold), "max_depth": int(max_depth),
                   "mean_iterations": float(res.iterations.mean()),
                   "mean_token_iterations": float(res.token_iterations.mean()), "error_h10": float(res.errors[9]),
                   "error_h1": float(res.errors[0]), "windows": res.windows,
                   "iterations_event_spearman": spearman(one["iterations"], one.get("contacts", [])),
                   "iterations_solver_spearman": spearman(one["iterations"], one.get("solver_iterations", [])),
                   "token_iterations_solver_spearman": spearman(one["token_iterations"],
                                                                one.get("solver_iterations", []))}
            if len(fixed) and res.windows > 1:
                m = max(1, round(row["mean_token_iterations"]))
                for key, depth in (("vs_round", min(fixed, key=lambda d: (abs(d - m), d))), ("vs_max", max(fixed))):
                    gap, se = paired_gap(res.window_errors[:, 9], fixed[depth])
                    row[key] = {"depth": depth, "gap_h10": gap, "se_h10": se}
                lo, hi, w, ref = equal_cost_reference(fixed, row["mean_token_iterations"])
                gap, se = paired_gap(res.window_errors[:, 9], ref)
                row["vs_equal_cost"] = {"depths": [lo, hi], "weight_hi": w, "gap_h10": gap, "se_h10": se}
            rows.append(row)
    return rows


@torch.no_grad()
def wallclock(model, starts: torch.Tensor, actions: torch.Tensor, depth: int, exit_rule, batch: int,
              seconds: float = 1.5, fixed_depth: int | None = None) -> dict:
    """Imagined steps per second with `exit_rule` and with fixed `depth`, alternated rollout by
    rollout so that machine noise hits both alike; also the mean iterations the rule used.

    starts: (P, *obs_shape) first observations of P held-out windows; actions: (P, H, *action_shape)
    their real actions. Each rollout imagines H steps from `batch` of them (taken in turn, so batch 1
    sees many different windows): real situations, not one state driven to a standstill. The rule
    runs with at most `depth` iterations; the fixed model runs `fixed_depth` (default: `depth`).
    """
    fixed_depth = depth if fixed_depth is None else fixed_depth
    P, H = actions.shape[:2]
    timings = {"fixed": [0, 0.0], "adaptive": [0, 0.0]}
    iters = []
    start, k = time.perf_counter(), 0
    while time.perf_counter() - start < 2 * seconds or min(v[0] for v in timings.values()) < 3 * H:
        rows = (k * batch + torch.arange(batch)) % P  # (batch,)
        k += 1
        for key, rule, d in (("fixed", None, fixed_depth), ("adaptive", exit_rule, depth)):
            state, plan = model.initial(starts[rows]), actions[rows]  # plan: (batch, H, ...)
            t0 = time.perf_counter()
            for t in range(H):
                state, out = model.step(state, plan[:, t], d, rule)
                if key == "adaptive":
                    iters.append(float(out["iterations"].float().mean()))
            timings[key][1] += time.perf_counter() - t0
            timings[key][0] += H
    fixed, adaptive = (timings[k][0] * batch / timings[k][1] for k in ("fixed", "adaptive"))
    return {"batch": batch, "steps_per_s_fixed": fixed, "steps_per_s_adaptive": adaptive,
            "speedup": adaptive / fixed, "mean_iterations_adaptive": float(np.mean(iters)), "depth_fixed": fixed_depth}
