"""loopwm: Looped World Models."""
__version__ = "0.1.0"
