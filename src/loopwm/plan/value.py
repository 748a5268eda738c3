"""A learned terminal value for planning: what the rewards after the planner's horizon are worth.

A planner that sums imagined rewards over H steps is blind to anything that pays later, and a long
horizon costs compute and compounds the model's error. A value function V(obs) added at the end of
each candidate (discount^H * P(still running) * V(last predicted observation)) lets a short horizon
see past itself.

V is fitted to a dataset's own rewards by fitted lambda-returns (TD(lambda) targets, refreshed each
round from the current V, bootstrapping past time-limit truncations but not past terminations). It
is therefore the value of the policy that collected the data, a pessimistic but well-shaped guide
(a planner usually does better than its data's policy), and it is independent of the world model:
every model family plans with the same V, so a comparison stays fair.

    loopwm value --data data/push --out runs/push-value
    loopwm plan --model runs/push-looped --value runs/push-value --horizon 5

The value reads the flattened observation, so it serves observations of the dataset's shape only
(an entity model run on more bodies than it was trained on cannot use it). Files: `value.safetensors`
(weights, never pickled) and `value.json` (settings, normalisation, fit metrics), written atomically.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from loopwm.utils import LoopWMError, atomic_save, atomic_write_json, read_json


@dataclass
class ValueConfig:
    """Fit a terminal value for planning from a dataset's rewards."""

    data: str = ""
    """Dataset folder (from `loopwm collect`) with the rewards of the task to plan for."""
    out: str = "runs/value"
    """Folder for value.safetensors and value.json."""
    discount: float = 0.99
    """Discount of future rewards; plan with the same one (`loopwm plan --discount`)."""
    lam: float = 0.95
    """TD(lambda) mixing: 1 uses the observed returns only (Monte Carlo, bootstrapped at
    truncations), 0 one-step targets only."""
    hidden: int = 256
    """Width of the two hidden layers."""
    rounds: int = 16
    """Times the targets are recomputed from the current value."""
    steps_per_round: int = 250
    """Gradient steps between target refreshes."""
    batch_size: int = 256
    """Observations per gradient step."""
    lr: float = 1e-3
    """Adam learning rate."""
    val_fraction: float = 0.1
    """Episodes held out to report how well the value predicts the returns it never saw."""
    seed: int = 0
    """Seed of the split, the initialisation and the minibatches."""


class ValueFunction(nn.Module):
    """V(obs): normalised flattened observation -> MLP -> value in reward units."""

    def __init__(self, obs_shape: tuple[int, ...], hidden: int = 256):
        super().__init__()
        self.obs_shape = tuple(int(s) for s in obs_shape)
        n_in = int(np.prod(self.obs_shape))
        self.net = nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                 nn.Linear(hidden, 1))
        # normalisation of the input and of the output, fitted from the data, saved with the weights
        self.register_buffer("obs_mean", torch.zeros(n_in))
        self.register_buffer("obs_std", torch.ones(n_in))
        self.register_buffer("ret_mean", torch.zeros(()))
        self.register_buffer("ret_std", torch.ones(()))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """(..., *obs_shape) observations -> (...) values."""
        k = len(self.obs_shape)
        if obs.dim() < k or tuple(obs.shape[obs.dim() - k:]) != self.obs_shape:
            raise LoopWMError(f"the value was fitted on observations of shape {self.obs_shape}, got {tuple(obs.shape)}: "
                              "fit a value on data of this environment and size (`loopwm value --data ...`)")
        x = obs.reshape(*obs.shape[: obs.dim() - k], -1).float()  # (..., n_in)
        x = (x - self.obs_mean) / self.obs_std
        return self.net(x).squeeze(-1) * self.ret_std + self.ret_mean  # (...)


def lambda_returns(reward: np.ndarray, terminated: np.ndarray, next_value: np.ndarray, discount: float,
                   lam: float) -> np.ndarray:
    """TD(lambda) targets of one episode of T steps.

    reward, terminated: (T,); next_value: (T,) the value of the observation after each step. The last
    step bootstraps from its next value unless it terminated (a truncated episode goes on, unseen).
        G_t = r_t + discount * (1 - term_t) * ((1 - lam) * V(s_t+1) + lam * G_t+1),  G_T = V(s_T)
    """
    T = len(reward)
    out = np.zeros(T, dtype=np.float64)
    ahead = float(next_value[-1])  # what follows the last step: its own value
    for t in range(T - 1, -1, -1):
        out[t] = reward[t] if terminated[t] else reward[t] + discount * ahead
        if t > 0:
            ahead = (1 - lam) * float(next_value[t - 1]) + lam * out[t]
    return out


def fit_value(cfg: ValueConfig) -> Path:
    """Fit V on cfg.data and write it to cfg.out; returns the folder."""
    from loopwm.data import load_dataset

    if not 0 < cfg.discount <= 1 or not 0 <= cfg.lam <= 1:
        raise LoopWMError(f"discount must be in (0, 1] and lam in [0, 1] (got {cfg.discount}, {cfg.lam})")
    if not cfg.data:
        raise LoopWMError("--data is needed: the dataset whose rewards the value learns (from `loopwm collect`)")
    t0 = time.time()
    ds = load_dataset(cfg.data)
    if len(ds.obs_shape) == 3:
        raise LoopWMError("a terminal value from camera frames is not supported: collect state vectors for planning")
    train_eps, val_eps = ds.split(cfg.val_fraction, seed=cfg.seed)
    episodes = [ds.episode(int(i)) for i in range(ds.episodes)]
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    model = ValueFunction(ds.obs_shape, cfg.hidden)
    obs = [torch.as_tensor(e["obs"], dtype=torch.float32) for e in episodes]  # (T+1, *obs_shape) each
    obs_t = torch.cat([obs[i][:-1] for i in train_eps])  # (S, *obs_shape): states whose return is the target
    flat = obs_t.reshape(len(obs_t), -1)  # (S, n_in)
    model.obs_mean.copy_(flat.mean(0))
    model.obs_std.copy_(flat.std(0, unbiased=False) + 1e-6)
    mc = np.concatenate([lambda_returns(episodes[i]["reward"], episodes[i]["terminated"],
                                        np.zeros(len(episodes[i]["reward"])), cfg.discount, 1.0) for i in train_eps])
    model.ret_mean.fill_(float(mc.mean()))
    model.ret_std.fill_(float(mc.std() + 1e-6))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)

    def targets(ids) -> np.ndarray:
        with torch.no_grad():
            out = []
            for i in ids:
                nxt = model(obs[i][1:]).numpy()  # (T,) value after each step
                out.append(lambda_returns(episodes[i]["reward"], episodes[i]["terminated"], nxt, cfg.discount, cfg.lam))
        return np.concatenate(out)

    history = []
    for r in range(cfg.rounds):
        target = torch.as_tensor(targets(train_eps), dtype=torch.float32)  # (S,)
        scale = model.ret_std
        for _ in range(cfg.steps_per_round):
            idx = torch.as_tensor(rng.integers(0, len(obs_t), cfg.batch_size))
            loss = (((model(obs_t[idx]) - target[idx]) / scale) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        history.append({"round": r, "loss": float(loss.detach())})
    metrics = {"train": score_value(model, episodes, obs, train_eps, cfg.discount),
               "val": score_value(model, episodes, obs, val_eps, cfg.discount) if len(val_eps) else None}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    from safetensors.torch import save_file

    atomic_save(out / "value.safetensors", lambda tmp: save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp))
    atomic_write_json(out / "value.json", {"format": "loopwm-value", "config": asdict(cfg), "env_id": ds.env_id,
                                           "env_kwargs": ds.env_kwargs, "obs_shape": list(ds.obs_shape),
                                           "episodes": {"train": len(train_eps), "val": len(val_eps)},
                                           "history": history, "metrics": metrics, "seconds": round(time.time() - t0, 1)})
    return out


def score_value(model: ValueFunction, episodes: list[dict], obs: list[torch.Tensor], ids, discount: float) -> dict:
    """How well V predicts the discounted returns actually seen in episodes `ids` (bootstrapped by V
    itself only where an episode was cut by its time limit): explained variance and rank correlation
    over every step."""
    from loopwm.eval.openloop import spearman

    pred, seen = [], []
    with torch.no_grad():
        for i in ids:
            v = model(obs[i]).numpy()  # (T+1,)
            pred.append(v[:-1])
            seen.append(lambda_returns(episodes[i]["reward"], episodes[i]["terminated"], v[1:], discount, 1.0))
    pred, seen = np.concatenate(pred), np.concatenate(seen)
    var = float(seen.var())
    ev = 1.0 - float(((seen - pred) ** 2).mean()) / var if var > 0 else None
    return {"explained_variance": ev, "spearman": spearman(pred, seen), "steps": int(len(pred))}


# below this held-out explained variance a value misled planners more often than it helped (docs/LOG.md:
# Pendulum at 0.82 lets a 5-step horizon reach the ceiling; Push at 0.08 and Reacher at 0.04 cost even the
# true simulator's planner 15-54% of its return)
RELIABLE_EXPLAINED_VARIANCE = 0.5


def value_warning(meta: dict) -> str | None:
    """A one-line caution when a fitted value predicts held-out returns poorly, else None."""
    metrics = meta.get("metrics") or {}
    held = metrics.get("val") or {}
    ev = held.get("explained_variance")
    if ev is not None and ev >= RELIABLE_EXPLAINED_VARIANCE:
        return None
    seen = "no held-out episodes to check it on" if ev is None else f"held-out explained variance {ev:.2f}"
    return (f"this value predicts returns poorly ({seen}, below {RELIABLE_EXPLAINED_VARIANCE}): it is the value of the "
            "policy that collected the data, and a planner may do worse with it; compare with and without --value, "
            "or fit it on data from a better policy")


def load_value(path: str | Path, device: str | torch.device = "cpu") -> tuple[ValueFunction, dict]:
    """A fitted value and its metadata, from the folder `fit_value` wrote (checked, never unpickled)."""
    from safetensors.torch import load_file

    folder = Path(path)
    meta_path, weights = folder / "value.json", folder / "value.safetensors"
    if not meta_path.exists() or not weights.exists():
        raise LoopWMError(f"{folder} holds no fitted value (value.json and value.safetensors): "
                          "fit one with `loopwm value --data DATA --out FOLDER`")
    meta = read_json(meta_path, "value metadata")
    if not isinstance(meta, dict) or meta.get("format") != "loopwm-value":
        raise LoopWMError(f"{meta_path} is not a loopwm value file; fit one with `loopwm value`")
    model = ValueFunction(tuple(meta["obs_shape"]), int(meta["config"]["hidden"]))
    state = load_file(str(weights))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise LoopWMError(f"{weights} does not match {meta_path} ({str(err).splitlines()[0]}); fit the value again") from None
    return model.to(device).eval(), meta
