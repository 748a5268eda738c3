"""World models behind one `Dynamics` interface: the looped model and its baselines."""

from loopwm.models.dynamics import Dynamics, Rollout, State
from loopwm.models.world_model import ModelConfig, WorldModel, WorldSpec


def build_model(spec: WorldSpec, cfg: ModelConfig):
    """The model a config asks for: looped (one shared block in a loop) or deep (distinct blocks)."""
    return WorldModel(spec, cfg)


__all__ = ["Dynamics", "ModelConfig", "Rollout", "State", "WorldModel", "WorldSpec", "build_model"]
