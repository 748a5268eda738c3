"""Open-loop evaluation: observe a context, imagine under the true actions, compare with the truth.

Error is the normalised MSE: squared error divided by each feature's variance in the training
data, averaged over entities and over the features that vary (static features are copied by every
model and would only dilute the figure). `context` counts the real observations the model reads,
the first included, exactly as training's `--context` does: with context C the model reads o_0 ..
o_{C-1} and horizon h scores its prediction of o_{C-1+h}. (Until 2026-12-04 this module read C + 1
observations, one more than any training window had shown the loop state.) Horizon h means h
imagined steps after the last true observation. The same code scores the floors: copy the last
observation, extrapolate at constant velocity, predict the training mean.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

import numpy as np
import torch

from loopwm.models.dynamics import normalised_error  # noqa: F401 - also part of this module's API
from loopwm.models.exits import make_exit_rule
from loopwm.utils import LoopWMError

HORIZONS = (1, 2, 5, 10, 20, 30, 40, 50)


@dataclass
class OpenLoopResult:
    errors: np.ndarray  # (H,) model error at horizons 1..H
    floors: dict[str, np.ndarray]  # name -> (H,)
    iterations: np.ndarray  # (W, H) loop iterations used per window and imagined step
    windows: int
    token_iterations: np.ndarray  # (W, H) iterations per token (differs for per-token exits)
    window_errors: np.ndarray | None = None  # (W, H) model error per window: paired comparisons between models
    window_rows: np.ndarray | None = None  # (W, 3) the scored windows (episode, start, length), in order


def paired_gap(errors, reference) -> tuple[float, float]:
    """How much higher `errors` are than `reference`, both per window on the same windows (e.g. two
    models' OpenLoopResult.window_errors at one horizon): the mean difference as a fraction of the
    reference's mean error, and the standard error of that fraction. Pairing removes the variance
    the models share (a hard window is hard for both), so gaps of a few percent become measurable
    where the spread of either model's error alone would hide them."""
    a, b = np.asarray(errors, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise LoopWMError(f"paired errors need two equal 1-d arrays of at least 2 windows, got shapes {a.shape} and "
                          f"{b.shape}: score both models on the same windows")
    diff, scale = a - b, b.mean()
    return float(diff.mean() / scale), float(diff.std(ddof=1) / np.sqrt(len(diff)) / scale)


def spread_windows(ds, episodes, length: int, max_windows: int) -> np.ndarray:
    """Up to `max_windows` windows of `length` transitions, spread evenly over all those of `episodes`
    (rows as from `ds.windows`). Every scorer picks its windows here, so two scorings of the same
    episodes, length and count meet on the same windows, window by window (paired comparisons, and
    the world's own difficulty of each scored window read back from the data)."""
    windows = ds.windows(episodes, length)
    return windows[np.unique(np.linspace(0, len(windows) - 1, min(max_windows, len(windows))).astype(int))]


def observed_steps(context: int) -> int:
    """Real transitions the model reads after its first observation: context - 1."""
    if context < 1:
        raise LoopWMError(f"context {context} reads no observation at all: use --context 1 or more "
                          "(the number of real observations the model reads before imagining, the first included)")
    return context - 1


def floor_predictions(model, obs: torch.Tensor, last_index: int, horizon: int) -> dict[str, torch.Tensor]:
    """Trivial predictors for obs[:, last_index + h], h = 1..horizon, from obs (B, L+1, N, F), where
    obs[:, last_index] is the last real observation."""
    spec = model.spec
    last = obs[:, last_index]  # (B, N, F)
    hs = torch.arange(1, horizon + 1, device=obs.device, dtype=obs.dtype)[None, :, None, None]  # (1, H, 1, 1)
    copy_last = last[:, None].expand(-1, horizon, -1, -1)  # (B, H, N, F)
    if spec.kinematic:
        const = copy_last.clone()
        vel = last[..., spec.velocity_idx][:, None]  # (B, 1, N, P)
        const[..., spec.position_idx] = last[..., spec.position_idx][:, None] + hs * spec.dt * vel
    else:
        prev = obs[:, max(last_index - 1, 0)]
        const = last[:, None] + hs * (last - prev)[:, None]
    mean = model.mean.expand_as(copy_last)
    return {"copy_last": copy_last, "constant_velocity": const, "mean": mean}


@torch.no_grad()
def open_loop(model, ds, episodes, context: int = 4, horizon: int = 50, max_windows: int = 512,
              depth: int | None = None, exit_rule=None, batch_size: int = 256, device="cpu",
              latent: bool = False, reference=None) -> OpenLoopResult:
    """Score `model` and the floors on windows of held-out `episodes` of dataset `ds`.

    reference: a model whose units (per-feature training std, which features change) the errors are
    measured in, instead of `model`'s own: models trained on different data (a generalist and a
    specialist) are then compared on one scale.

    latent: imagine in latent space (deferred decoding: predictions are never encoded again), so
    the error at horizon K is that of decoding once after K latent steps.

    Where no held-out episode is long enough for context + horizon steps (short, terminating
    episodes such as CartPole under a random policy), the horizon is cut to the longest that fits:
    `len(result.errors)` is the horizon actually scored.
    """
    c = observed_steps(context)
    longest = int(np.max(ds.lengths[np.asarray(episodes, dtype=np.int64)])) if len(episodes) else 0
    if longest <= c:
        raise LoopWMError(f"held-out episodes last at most {longest} steps: none is left to predict after a context of "
                          f"{context} observations; collect longer episodes or lower --context")
    horizon = min(horizon, longest - c)
    windows = spread_windows(ds, episodes, c + horizon, max_windows)
    sums = torch.zeros(horizon)
    units = model if reference is None else reference
    floor_sums = {}
    iters, work, per_window = [], [], []
    for i in range(0, len(windows), batch_size):
        batch = ds.batch(windows[i : i + batch_size])
        obs = model._as_entities(torch.as_tensor(batch["obs"], device=device).float())  # (B, L+1, N, F)
        act = torch.as_tensor(batch["action"], device=device)  # (B, L, ...)
        state = model.read(obs[:, : c + 1], act[:, :c], depth, exit_rule)
        _, roll = model.imagine(state, act[:, c : c + horizon], depth=depth, exit_rule=exit_rule, latent=latent)
        true = obs[:, c + 1 : c + horizon + 1]  # (B, H, N, F)
        err = normalised_error(units, roll.obs, true).cpu()  # (B, H)
        sums += err.sum(0)
        per_window.append(err.numpy())
        for name, pred in floor_predictions(model, obs, c, horizon).items():
            floor_sums[name] = floor_sums.get(name, 0) + normalised_error(units, pred, true).sum(0).cpu()
        iters.append(roll.iterations.cpu().numpy())
        work.append(roll.token_iterations.cpu().numpy())
    n = len(windows)
    return OpenLoopResult(
        errors=(sums / n).numpy(),
        floors={k: (v / n).numpy() for k, v in floor_sums.items()},
        iterations=np.concatenate(iters, 0),
        windows=n,
        token_iterations=np.concatenate(work, 0),
        window_errors=np.concatenate(per_window, 0),
        window_rows=windows,
    )


def truth_digest(ds, windows: np.ndarray, batch_size: int = 256) -> str:
    """SHA-256 of the observations of `windows` (rows from `spread_windows`), in order: two scorings
    pair window by window only if theirs are equal. Read again only when a record asks for it
    (`loopwm eval --per-window`), so scoring itself does no hashing."""
    digest = hashlib.sha256()
    for i in range(0, len(windows), batch_size):
        digest.update(np.ascontiguousarray(ds.batch(windows[i : i + batch_size])["obs"]).tobytes())
    return digest.hexdigest()


@torch.no_grad()
def real_vs_imagined(model, env_id: str, env_kwargs: dict, steps: int = 1000, context: int = 4, seed: int = 12345,
                     depth: int | None = None, exit_rule=None, device="cpu", obs_mode: str = "state",
                     pixel_size: int | None = None) -> dict[str, np.ndarray]:
    """Run the real world and the model side by side from the same start under the same actions.

    The model reads the first `context` observations, then imagines `steps` more. Returns true and
    predicted observations (steps, N, F), the model's iterations per step, and the world's own
    per-step difficulty (contacts, solver iterations) where it reports them.
    """
    from loopwm.data.collect import open_env

    c = observed_steps(context)
    kwargs = {**env_kwargs, "max_episode_steps": steps + c + 1}
    env = open_env(env_id, kwargs, obs_mode, pixel_size)
    obs, _ = env.reset(seed=seed)
    env.action_space.seed(seed)
    rng = np.random.default_rng(seed)
    observations, actions, contacts, solver = [obs], [], [], []
    smooth = None
    for _ in range(steps + c):
        if hasattr(env.action_space, "shape") and env.action_space.shape and np.issubdtype(env.action_space.dtype, np.floating):
            # temporally correlated random actions: a fair test that exercises the pushed bodies
            step_noise = rng.normal(size=env.action_space.shape)
            smooth = step_noise if smooth is None else 0.8 * smooth + 0.6 * step_noise
            action = np.clip(smooth, env.action_space.low, env.action_space.high).astype(env.action_space.dtype)
        else:
            action = env.action_space.sample()
        obs, _, terminated, truncated, info = env.step(action)
        observations.append(obs)
        actions.append(action)
        contacts.append(info.get("contacts", 0))
        solver.append(info.get("solver_iterations", 0))
        if terminated or truncated:
            break
    env.close()
    obs_t = model._as_entities(torch.as_tensor(np.stack(observations), device=device).float())[None]  # (1, L+1, N, F)
    act_t = torch.as_tensor(np.stack(actions), device=device)[None]  # (1, L, ...)
    state = model.read(obs_t[:, : c + 1], act_t[:, :c], depth, exit_rule)
    _, roll = model.imagine(state, act_t[:, c:], depth=depth, exit_rule=exit_rule)
    # the same trajectory tracked one step ahead, each step read from the last `context` real
    # observations as in training: its effort then answers the real world's difficulty step by step,
    # which a long imagined rollout soon stops doing
    tracked = model.track(obs_t, act_t, context, depth=depth, exit_rule=exit_rule)
    return {
        "true": obs_t[0, c + 1 :].cpu().numpy(),
        "pred": roll.obs[0].cpu().numpy(),
        "iterations": roll.iterations[0].cpu().numpy(),
        "token_iterations": roll.token_iterations[0].cpu().numpy(),
        "contacts": np.asarray(contacts[c:]),
        "solver_iterations": np.asarray(solver[c:]),
        "tracked_iterations": tracked.iterations[0].cpu().numpy(),
        "tracked_token_iterations": tracked.token_iterations[0].cpu().numpy(),
        "tracked_contacts": np.asarray(contacts),
        "tracked_solver_iterations": np.asarray(solver),
    }


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 with ties given their average rank."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.arange(len(x))
    values, inverse = np.unique(x, return_inverse=True)
    sums = np.bincount(inverse, weights=ranks)
    return (sums / np.bincount(inverse))[inverse]


def spearman(a, b) -> float | None:
    """Spearman rank correlation; None when either series is constant (no ranking to compare)."""
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if len(a) != len(b) or len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def rollout_stats(model, rollout: dict[str, np.ndarray]) -> dict[str, float]:
    """Boundedness of a long imagined rollout against the true one."""
    pred, true = rollout["pred"], rollout["true"]
    dyn = model.dynamic.cpu().numpy()
    mean, std = model.mean.cpu().numpy(), model.std_safe.cpu().numpy()
    pn = ((pred - mean) / std)[..., dyn]
    tn = ((true - mean) / std)[..., dyn]
    stats = {
        "rollout_steps": int(len(pred)),
        "rollout_max_abs": float(np.abs(pred).max()),
        "rollout_finite": bool(np.isfinite(pred).all()),
        "rollout_std_ratio": float(pn.std() / max(tn.std(), 1e-12)),
    }
    spec = model.spec
    if spec.kinematic:
        low, high = model.low.cpu().numpy(), model.high.cpu().numpy()
        pos = pred[..., spec.position_idx]
        rad = pred[..., spec.radius_idx][..., None] if spec.radius_idx is not None else 0.0
        lo, hi = low[spec.position_idx], high[spec.position_idx]
        inside = (pos - rad >= lo - 1e-5) & (pos + rad <= hi + 1e-5)
        stats["rollout_inside_box"] = float(inside.all(-1).mean())
    contacts, solver = rollout.get("contacts"), rollout.get("solver_iterations")
    if contacts is not None and solver is not None and (np.any(contacts) or np.any(solver)):  # the world reports its difficulty
        n = len(rollout["iterations"])
        stats["iterations_event_spearman"] = spearman(rollout["iterations"], rollout["contacts"][:n])
        stats["iterations_solver_spearman"] = spearman(rollout["iterations"], rollout["solver_iterations"][:n])
        if "tracked_iterations" in rollout:
            stats.update(effort_by_difficulty(rollout))
    return stats


HARD_SWEEPS = 8
"""Steps whose contacts needed at least this many solver sweeps count as hard in the summaries."""


def effort_by_difficulty(rollout: dict[str, np.ndarray], hard: int = HARD_SWEEPS) -> dict[str, float]:
    """The model's iterations per step while tracking the real world, on easy steps (no contact to
    resolve: zero solver sweeps) and hard ones (`hard` or more sweeps), with their rank correlation."""
    solver = np.asarray(rollout["tracked_solver_iterations"])
    n = min(len(solver), len(rollout["tracked_iterations"]))
    solver = solver[:n]
    scene, token = rollout["tracked_iterations"][:n], rollout["tracked_token_iterations"][:n]
    stats = {"tracked_steps": int(n), "tracked_iterations_solver_spearman": spearman(scene, solver),
             "tracked_token_iterations_solver_spearman": spearman(token, solver), "hard_sweeps": int(hard)}
    for name, mask in (("easy", solver == 0), ("hard", solver >= hard)):
        stats[f"{name}_steps"] = int(mask.sum())
        stats[f"{name}_iterations"] = float(scene[mask].mean()) if mask.any() else None
        stats[f"{name}_token_iterations"] = float(token[mask].mean()) if mask.any() else None
    return stats


@torch.no_grad()
def steps_per_second(model, obs0: torch.Tensor, action: torch.Tensor, n: int = 200, depth=None, exit_rule=None,
                     latent: bool = False) -> float:
    """Imagined steps per second at batch 1 (after a short warm-up); `latent` as in `model.step`."""
    state = model.initial(obs0[None])
    for _ in range(10):
        state, _ = model.step(state, action[None], depth, exit_rule, latent=latent)
    state = model.initial(obs0[None])
    start = time.perf_counter()
    for _ in range(n):
        state, _ = model.step(state, action[None], depth, exit_rule, latent=latent)
    return n / (time.perf_counter() - start)


def latent_decoding(decoding: str) -> bool:
    """Whether a --decoding setting imagines in latent space: "deferred" yes, "per-step" no."""
    if decoding not in ("per-step", "deferred"):
        raise LoopWMError(f"unknown --decoding {decoding!r}: use per-step or deferred")
    return decoding == "deferred"


def exit_rule_from(name: str, threshold: float, model=None):
    return None if name == "fixed" else make_exit_rule(name, threshold, model=model)
