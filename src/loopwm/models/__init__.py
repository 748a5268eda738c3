"""World models behind one `Dynamics` interface: the looped model and its baselines."""

from loopwm.models.dynamics import Dynamics, Rollout, State
from loopwm.models.rssm import RSSM, RSSMConfig
from loopwm.models.world_model import ModelConfig, WorldModel, WorldSpec

KINDS = ("looped", "deep", "rssm")


def build_model(spec: WorldSpec, cfg: ModelConfig, rssm: RSSMConfig | None = None):
    """The model a config asks for: looped (one shared block in a loop), deep (distinct blocks in
    its place) or rssm (the DreamerV3-style baseline, configured by `rssm`)."""
    if cfg.kind == "rssm":
        return RSSM(spec, rssm or RSSMConfig())
    return WorldModel(spec, cfg)


__all__ = ["KINDS", "RSSM", "Dynamics", "ModelConfig", "RSSMConfig", "Rollout", "State", "WorldModel", "WorldSpec",
           "build_model"]
