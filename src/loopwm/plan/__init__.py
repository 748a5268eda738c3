"""Acting with a world model: sampling planners (MPPI, CEM) over imagined rollouts, the worlds they
plan in (a trained model, or the true simulator as the ceiling), a learned terminal value, known
reward functions, and closed-loop control."""

from loopwm.plan.imagined_env import ImaginedEnv
from loopwm.plan.planners import CEM, MPPI, Planner, make_planner
from loopwm.plan.rewards import KNOWN_REWARDS, resolve_reward
from loopwm.plan.value import ValueConfig, ValueFunction, fit_value, lambda_returns, load_value
from loopwm.plan.worlds import LearnedWorld, OracleWorld, discounted_return

__all__ = ["ImaginedEnv", "CEM", "MPPI", "Planner", "make_planner", "LearnedWorld", "OracleWorld", "discounted_return",
           "ValueConfig", "ValueFunction", "fit_value", "lambda_returns", "load_value", "KNOWN_REWARDS", "resolve_reward"]
