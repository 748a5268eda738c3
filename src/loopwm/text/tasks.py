"""ScienceWorld's 30 tasks grouped into the 14 task types the LoopWM paper reports.

The paper names the types (Boil, Chemistry, Conductivity, Find, Freeze, Genetics, Grow, Incline,
LifeStages, Lifespan, Melt, Power, StateChange, Thermometer) but not which simulator tasks each one
holds. Most follow from the task names. The one judgement call: the two measure-melting-point
tasks count as Melt, not Thermometer. The per-type test counts the paper's exact-match granularity
implies (Melt about 63 samples, Thermometer about 6) fit only that way: the melt task alone has too
few variations for 63, and use-thermometer alone matches 6.
"""

from __future__ import annotations

TASK_TYPES: dict[str, str] = {
    "boil": "Boil",
    "change-the-state-of-matter-of": "StateChange",
    "chemistry-mix": "Chemistry",
    "chemistry-mix-paint-secondary-color": "Chemistry",
    "chemistry-mix-paint-tertiary-color": "Chemistry",
    "find-animal": "Find",
    "find-living-thing": "Find",
    "find-non-living-thing": "Find",
    "find-plant": "Find",
    "freeze": "Freeze",
    "grow-fruit": "Grow",
    "grow-plant": "Grow",
    "identify-life-stages-1": "LifeStages",
    "identify-life-stages-2": "LifeStages",
    "inclined-plane-determine-angle": "Incline",
    "inclined-plane-friction-named-surfaces": "Incline",
    "inclined-plane-friction-unnamed-surfaces": "Incline",
    "lifespan-longest-lived": "Lifespan",
    "lifespan-longest-lived-then-shortest-lived": "Lifespan",
    "lifespan-shortest-lived": "Lifespan",
    "measure-melting-point-known-substance": "Melt",
    "measure-melting-point-unknown-substance": "Melt",
    "melt": "Melt",
    "mendelian-genetics-known-plant": "Genetics",
    "mendelian-genetics-unknown-plant": "Genetics",
    "power-component": "Power",
    "power-component-renewable-vs-nonrenewable-energy": "Power",
    "test-conductivity": "Conductivity",
    "test-conductivity-of-unknown-substances": "Conductivity",
    "use-thermometer": "Thermometer",
}
"""ScienceWorld task name -> the paper's task type."""

TYPES = tuple(sorted(set(TASK_TYPES.values())))
"""The 14 task types, alphabetically."""

SPLITS = ("train", "dev", "test")
"""The simulator's own variation splits: no test variation is ever used for training."""


TWX_TYPES: dict[str, str] = {
    "cookingworld": "CookingWorld",
    "twc": "TextWorldCommonsense",
    "coin": "CoinCollector",
    "mapreader": "MapReader",
    "arithmetic": "Arithmetic",
    "sorting": "Sorting",
    "simonsays": "SimonSays",
    "peckingorder": "PeckingOrder",
}
"""TextWorldExpress game name -> its type (the game itself)."""

TWX_DEFAULT = ("cookingworld", "twc", "coin")
"""The household games, closest to ALFWorld: the stand-in's default."""
