"""Camera frames as observations: any environment that renders `rgb_array` becomes a pixel world.

    env = PixelObservation(make_env("CartPole-v1", render_mode="rgb_array"), size=64)
    frame, info = env.reset(seed=0)          # uint8 (64, 64, 3)

Frames are resized with Pillow (area averaging), so no OpenCV is needed. MuJoCo renderers are told
to skip shadows, reflections and multisampling first: on software GL that is what makes them
5-25x faster, and none of it carries information at 64x64.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from loopwm.utils import LoopWMError


class PixelObservation(gym.ObservationWrapper):
    """Replace the observation by the rendered frame, resized to (size, size, 3) uint8."""

    def __init__(self, env: gym.Env, size: int = 64):
        super().__init__(env)
        if env.render_mode != "rgb_array":
            raise LoopWMError(f"pixel observations need render_mode='rgb_array', but {env.spec.id if env.spec else env} "
                              f"was made with render_mode={env.render_mode!r}")
        if size < 8 or size % 8:
            raise LoopWMError(f"--pixel-size must be a multiple of 8 and at least 8, got {size}")
        self.size = size
        self.observation_space = spaces.Box(0, 255, shape=(size, size, 3), dtype=np.uint8)
        _fast_mujoco_rendering(env)

    def observation(self, observation):
        frame = self.env.render()
        if frame is None or np.asarray(frame).ndim != 3:
            raise LoopWMError(f"{self.env} returned no RGB frame from render(); it cannot give pixel observations")
        from PIL import Image

        image = Image.fromarray(np.ascontiguousarray(np.asarray(frame, dtype=np.uint8)[..., :3]))
        return np.asarray(image.resize((self.size, self.size), Image.BILINEAR, reducing_gap=2.0), dtype=np.uint8)

    @property
    def kinematics(self):
        return None  # positions are no longer observed: nothing to integrate


def _fast_mujoco_rendering(env: gym.Env) -> None:
    model = getattr(env.unwrapped, "model", None)
    if model is None or not hasattr(model, "vis"):
        return
    try:
        import mujoco

        model.vis.quality.shadowsize = 0
        model.vis.quality.offsamples = 0
        model.mat_reflectance[:] = 0
        renderer = getattr(env.unwrapped, "mujoco_renderer", None)
        scene = getattr(getattr(renderer, "viewer", None), "scn", None)
        if scene is not None:
            scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
    except (ImportError, AttributeError):  # another MuJoCo binding layout: render as it comes
        pass
