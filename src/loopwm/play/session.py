"""One player's pair of worlds: the real environment and the model's imagination, stepped together.

    session = PlaySession(Player.open("runs/demo"), seed=0)
    frame = session.step()          # both worlds one step under the same action

The imagined world goes through `Dynamics.imagine`, the path evaluation and planning take, one
step at a time; it never reads the real world unless told to (`resync`, or `sync_every`). Nothing
here knows about the web: the server only moves these frames (`frame` dicts of plain JSON values)
to the page.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from loopwm.data.shards import read_manifest
from loopwm.play.protocol import POLICIES, ActionMessage, ResetMessage, ResyncMessage, SettingsMessage, StepMessage
from loopwm.utils import LoopWMError

VECTOR_VALUES_SHOWN = 64
"""Observation values sent to the page for worlds whose states cannot be drawn (drawn as bars)."""


@dataclass
class Settings:
    """What a player can change while playing."""

    exit: str
    """Exit rule: fixed, or one of the model's adaptive rules."""
    threshold: float
    """Threshold of the exit rule."""
    depth: int
    """Loop iterations per step: the count with the fixed rule, the cap with an adaptive one."""
    policy: str = "keyboard"
    """Who acts: the page's keys, or a scripted policy (random, still, sweep)."""
    rate: float = 30.0
    """Steps per second while running."""
    running: bool = True
    """Step continuously, or only on request."""
    sync_every: int = 0
    """Let the model read the real observation every this many steps (0: pure imagination)."""


class Player:
    """What every session of one server shares: the model (read only) and how to make its world."""

    def __init__(self, model, meta: dict, run: str, env_id: str | None = None, n_bodies: int = 0,
                 max_episode_steps: int = 1000, frame_size: int = 128):
        from loopwm.eval.evaluate import frame_renderer, resolve_exit
        from loopwm.models.exits import EXIT_RULES

        self.model, self.meta, self.run = model, meta, run
        self.env_id = env_id or meta.get("env_id")
        if not self.env_id:
            raise LoopWMError(f"the run {run} does not say which environment it was trained on; pass --env-id")
        self.env_kwargs = {k: v for k, v in (meta.get("env_kwargs") or {}).items() if k != "max_episode_steps"}
        if n_bodies:
            if not getattr(model, "any_entity_count", False):
                raise LoopWMError(f"this {meta.get('kind')} model runs only on the body count it was trained on; "
                                  "leave --n-bodies at 0")
            self.env_kwargs["n_bodies"] = int(n_bodies)
        manifest = (read_manifest(meta["data"]) if meta.get("data") else None) or {}
        self.obs_mode, self.pixel_size = manifest.get("obs", "state"), manifest.get("pixel_size")
        self.max_episode_steps = int(max_episode_steps)
        self.draw = frame_renderer(model, self.env_id, size=frame_size)
        self.looped = meta.get("kind") == "looped"
        rules = ["fixed"] + [n for n in EXIT_RULES if n != "fixed" and (n != "gate" or _has_gate(model))]
        self.exits = rules if self.looped else ["fixed"]
        name, threshold, depth = resolve_exit(run, "auto", 0.0, 0)
        depth = depth or int(model.cfg.resolved_eval_depth()) if self.looped else 1
        self.defaults = Settings(exit=name if name in self.exits else "fixed", threshold=float(threshold),
                                 depth=int(max(1, depth)))
        self.depth_max = int(max(self.defaults.depth, getattr(model.cfg, "depth_max", 1), 16)) if self.looped else 1

    @classmethod
    def open(cls, run: str | Path, device: str = "auto", **kwargs) -> "Player":
        from loopwm.checkpoint import load_model
        from loopwm.utils import pick_device

        model, meta = load_model(run, pick_device(device))
        model.eval()
        return cls(model, meta, str(run), **kwargs)

    def make_env(self):
        from loopwm.data.collect import open_env
        from loopwm.envs import make_env

        kwargs = {**self.env_kwargs, "max_episode_steps": self.max_episode_steps}
        if self.obs_mode == "pixels" or self.env_id.startswith("loopwm/"):
            return open_env(self.env_id, kwargs, self.obs_mode, self.pixel_size)
        try:  # a vector world: render its own frames where it can, for the real view
            return make_env(self.env_id, render_mode="rgb_array", **kwargs)
        except Exception:  # noqa: BLE001 - an env without rgb_array rendering still plays, drawn as bars
            return make_env(self.env_id, **kwargs)

    def hello(self) -> dict:
        """What the page needs to build its controls: the action space, the choices, the limits."""
        from loopwm.play.protocol import MAX_DEPTH, MAX_RATE, MAX_MESSAGE_BYTES

        spec = self.model.spec
        if spec.action_kind == "discrete":
            action = {"kind": "discrete", "n": int(spec.action_dim), "start": int(spec.action_start)}
        else:
            action = {"kind": "continuous", "dim": int(spec.action_dim),
                      "low": [_finite(v, -1.0) for v in spec.action_low], "high": [_finite(v, 1.0) for v in spec.action_high]}
        return {"type": "hello", "run": Path(self.run).name, "env_id": self.env_id, "env_kwargs": self.env_kwargs,
                "model": {"kind": self.meta.get("kind"), "params": int(sum(p.numel() for p in self.model.parameters())),
                          "looped": self.looped},
                "action": action, "exits": self.exits, "policies": list(POLICIES),
                "depth_max": min(self.depth_max, MAX_DEPTH), "settings": asdict(self.defaults),
                "limits": {"max_rate": MAX_RATE, "max_message_bytes": MAX_MESSAGE_BYTES},
                "drawn": self.draw is not None}


class PlaySession:
    """The real world and the imagined one for one player, with one model state of its own."""

    def __init__(self, player: Player, seed: int = 0):
        self.player, self.model = player, player.model
        self.settings = Settings(**asdict(player.defaults))
        self.env = player.make_env()
        self.device = next(self.model.parameters()).device
        self.lock = threading.Lock()  # steps run in worker threads; settings arrive between them
        self.keys_action = self._still()
        self.rule = None
        self._apply_rule()
        self.reset(seed)

    # ----- messages -----
    def handle(self, message) -> dict | None:
        """Apply one validated client message; returns the reply to send (None: nothing to say)."""
        with self.lock:
            if isinstance(message, ActionMessage):
                self.keys_action = self._check_action(message.action)
                return None
            if isinstance(message, SettingsMessage):
                return self._settings(message)
            if isinstance(message, ResetMessage):
                self._reset(self.seed + 1 if message.seed is None else message.seed)
                return self._frame(None, self.last_info, 0.0, None)
            if isinstance(message, ResyncMessage):
                self._resync()
                return self._frame(None, self.last_info, 0.0, None)
            if isinstance(message, StepMessage):
                return self._step()
        raise LoopWMError(f"unhandled message {message!r}")  # pragma: no cover - the protocol lists every type

    def step(self) -> dict:
        with self.lock:
            return self._step()

    def reset(self, seed: int) -> dict:
        with self.lock:
            self._reset(seed)
            return self._frame(None, self.last_info, 0.0, None)

    # ----- the two worlds -----
    def _reset(self, seed: int) -> None:
        self.seed, self.t, self.episode_return = int(seed), 0, 0.0
        obs, info = self.env.reset(seed=self.seed)
        self.rng = np.random.default_rng(self.seed)
        self.smooth = None
        self.real_obs, self.last_info = obs, info
        with torch.no_grad():
            self.state = self.model.initial(self._entities(obs))
        self.imagined = self._entities(obs)[0]  # (N, F): both worlds start from the same observation
        self.step_seconds = None

    def _resync(self) -> None:
        from loopwm.models.dynamics import State

        self.state = State(h=self.state.h, z=self.state.z, obs=self._entities(self.real_obs), real=True)
        self.imagined = self.state.obs[0]

    def _step(self) -> dict:
        action = self._policy_action()
        obs, reward, terminated, truncated, info = self.env.step(action)
        act = torch.as_tensor(np.asarray(action), device=self.device)[None, None]  # (1, 1, *A)
        depth = self.settings.depth if self.player.looped else None
        t0 = time.perf_counter()
        with torch.no_grad():
            self.state, roll = self.model.imagine(self.state, act, depth, self.rule)
        seconds = time.perf_counter() - t0
        self.step_seconds = seconds if self.step_seconds is None else 0.9 * self.step_seconds + 0.1 * seconds
        self.imagined = roll.obs[0, 0]  # (N, F)
        self.real_obs, self.last_info = obs, info
        self.t += 1
        self.episode_return += float(reward)
        frame = self._frame(roll, info, float(reward), action)
        if self.settings.sync_every and self.t % self.settings.sync_every == 0:
            self._resync()
        if terminated or truncated:
            frame["episode_end"] = {"return": self.episode_return, "steps": self.t, "terminated": bool(terminated)}
            self._reset(self.seed + 1)
        return frame

    def _frame(self, roll, info: dict, reward: float, action) -> dict:
        from loopwm.models.dynamics import normalised_error

        real = self._entities(self.real_obs)[0]  # (N, F)
        error = float(normalised_error(self.model, self.imagined[None], real[None])[0])
        frame: dict[str, Any] = {
            "type": "frame", "t": self.t, "seed": self.seed, "error": error, "reward": reward,
            "real": self._real_picture(real), "imagined": self._picture(self.imagined),
            "solver_iterations": _int_or_none(info.get("solver_iterations")),
            "contacts": _int_or_none(info.get("contacts")),
            "imagined_steps_per_second": (1.0 / self.step_seconds) if self.step_seconds else None,
            "settings": asdict(self.settings),
        }
        if roll is not None:
            frame["iterations"] = int(roll.iterations[0, 0])
            frame["token_iterations"] = float(roll.token_iterations[0, 0])
            frame["imagined_reward"] = float(roll.reward[0, 0])
        if action is not None:
            frame["action"] = np.asarray(action).tolist()
        if self.player.draw is None:  # not drawable: the page compares the two observation vectors
            frame["real_values"] = _values(real)
            frame["imagined_values"] = _values(self.imagined)
        return frame

    def _real_picture(self, real: torch.Tensor) -> str | None:
        if self.player.draw is not None:
            return self._picture(real)  # the same renderer for both worlds, so they look alike
        frame = self.env.render() if getattr(self.env, "render_mode", None) == "rgb_array" else None
        return _png(np.asarray(frame)[..., :3], max_width=320) if frame is not None else None

    def _picture(self, obs: torch.Tensor) -> str | None:
        if self.player.draw is None:
            return None
        return _png(self.player.draw(obs.detach().cpu().numpy()))

    def _entities(self, obs) -> torch.Tensor:
        return self.model._as_entities(torch.as_tensor(np.array(obs, dtype=np.float32), device=self.device)[None])  # (1, N, F)

    # ----- actions -----
    def _policy_action(self):
        policy, space = self.settings.policy, self.env.action_space
        if policy == "keyboard":
            return self.keys_action
        if policy == "still":
            return self._still()
        discrete = self.model.spec.action_kind == "discrete"
        if policy == "random":
            if discrete:
                return int(self.rng.integers(space.start, space.start + space.n))
            noise = self.rng.normal(size=space.shape)  # temporally correlated, so pushes last a while
            self.smooth = noise if self.smooth is None else 0.8 * self.smooth + 0.6 * noise
            return np.clip(self.smooth, space.low, space.high).astype(space.dtype)
        # sweep: push one way, then the other, every 20 steps (discrete: cycle through the actions)
        phase = (self.t // 20) % 2
        if discrete:
            return int(space.start + (self.t // 20) % space.n)
        a = np.zeros(space.shape, dtype=space.dtype).reshape(-1)
        a[0] = space.high.reshape(-1)[0] if phase == 0 else space.low.reshape(-1)[0]
        return np.clip(a.reshape(space.shape), space.low, space.high).astype(space.dtype)

    def _still(self):
        space = self.env.action_space
        if self.model.spec.action_kind == "discrete":
            return int(space.start)
        return np.clip(np.zeros(space.shape), space.low, space.high).astype(space.dtype)

    def _check_action(self, action):
        from loopwm.play.protocol import ProtocolError

        space = self.env.action_space
        if self.model.spec.action_kind == "discrete":
            if not isinstance(action, int) or not space.start <= action < space.start + space.n:
                raise ProtocolError(f"bad action message: this world takes one whole number in "
                                    f"[{int(space.start)}, {int(space.start + space.n)})")
            return action
        if not isinstance(action, list) or len(action) != int(np.prod(space.shape)):
            raise ProtocolError(f"bad action message: this world takes a list of {int(np.prod(space.shape))} numbers")
        return np.clip(np.asarray(action, dtype=np.float64).reshape(space.shape), space.low, space.high).astype(space.dtype)

    # ----- settings -----
    def _settings(self, message: SettingsMessage) -> dict:
        from loopwm.play.protocol import ProtocolError

        changes = message.model_dump(exclude_none=True, exclude={"type"})
        if "exit" in changes and changes["exit"] not in self.player.exits:
            raise ProtocolError(f"bad settings message: exit must be one of {', '.join(self.player.exits)}")
        if "depth" in changes and changes["depth"] > self.player.depth_max:
            raise ProtocolError(f"bad settings message: depth must be at most {self.player.depth_max}")
        for key, value in changes.items():
            setattr(self.settings, key, value)
        self._apply_rule()
        return {"type": "settings", "settings": asdict(self.settings)}

    def _apply_rule(self) -> None:
        from loopwm.eval.openloop import exit_rule_from

        self.rule = exit_rule_from(self.settings.exit, self.settings.threshold, self.model) if self.player.looped else None


def _has_gate(model) -> bool:
    return getattr(getattr(model, "core", None), "gate", None) is not None


def _finite(value, default: float) -> float:
    return float(value) if value is not None and np.isfinite(value) else default


def _int_or_none(value) -> int | None:
    return None if value is None else int(value)


def _values(obs: torch.Tensor) -> list[float]:
    flat = obs.detach().reshape(-1)[:VECTOR_VALUES_SHOWN].cpu().numpy()
    return [round(float(v), 4) for v in np.nan_to_num(flat)]


def _png(image: np.ndarray, max_width: int | None = None) -> str:
    """An RGB array as a PNG data URL (fast compression: frames are small and short-lived)."""
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(image.astype(np.uint8)))
    if max_width and picture.width > max_width:
        picture = picture.resize((max_width, max(1, round(picture.height * max_width / picture.width))))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
