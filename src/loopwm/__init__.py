"""loopwm: Looped World Models."""
__version__ = "0.1.0"


def __getattr__(name: str):
    # `loopwm.ImaginedEnv` without importing torch and gymnasium on `import loopwm`
    if name == "ImaginedEnv":
        from loopwm.plan.imagined_env import ImaginedEnv

        return ImaginedEnv
    raise AttributeError(f"module 'loopwm' has no attribute {name!r}")
