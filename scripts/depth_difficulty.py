"""Where a loop gains or loses against a stack: the paired gap of the long stage's errors per
quantile of the world's own difficulty (its solver sweeps) on the scored windows.

    python scripts/depth_difficulty.py --studies results/depth-r005-local-n32 \
        results/depth-r005-local-n32-stacks --out results/depth-compare-n32 --size 32

Each loop with long-stage rows (long.jsonl) is paired with the stack of its seed, setting and
attention whose long h10 is closest to its own, scored on the same windows. The windows are read
back from the study's dataset (`--data-root` points elsewhere when it moved): for h10 the solver
sweeps summed over the ten predicted steps, for h1 those of the one predicted step. The windows are
ranked by that difficulty and cut into `--bins` groups of equal size; in each group the stack's gap
to the loop is given with two paired standard errors (positive: the loop is better). Trains and
scores nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import tyro

from depth_compare import CompareConfig, collect, shape
from depth_study import datasets, episode_key, study_settings
from loopwm.utils import atomic_write_text

HORIZON = 10  # the long stage scores h1 and h10 on windows of context + 10 steps


@dataclass
class DifficultyConfig:
    """Loop against stack, per quantile of the world's difficulty."""

    studies: list[str] = field(default_factory=lambda: ["results/depth-r005-local-n32", "results/depth-r005-local-n32-stacks"])
    """Study folders written by scripts/depth_study.py (with its long stage)."""
    out: str = "results/depth-compare-n32"
    """Where difficulty.md goes."""
    size: int = 32
    """The training size (the long stage scores only it)."""
    bins: int = 4
    """Groups of equal size, from the easiest windows to the hardest."""
    data_root: str = ""
    """The datasets' folder, where it is not the one each study recorded (study.json's data_root)."""
    own_rates: bool = False
    """Each model at the learning rate that trained it best, chosen on validation (depth_compare's
    --own-rates; use the same choice in both so their settings are numbered alike)."""


def quantile_gaps(errors, reference, difficulty, bins: int) -> list[dict]:
    """`errors` against `reference` (two models' errors on the same windows) in `bins` groups of
    equal size ranked by `difficulty`: per group its difficulty range, window count and the relative
    gap (mean difference over the reference's mean) with its paired standard error."""
    from loopwm.eval.openloop import paired_gap

    a, b, x = (np.asarray(v, dtype=np.float64) for v in (errors, reference, difficulty))
    if not a.shape == b.shape == x.shape or len(x) < 2 * bins:
        raise SystemExit(f"quantile_gaps needs three arrays of one length, at least 2 per bin: got {a.shape}, "
                         f"{b.shape}, {x.shape} for {bins} bins")
    order = np.argsort(x, kind="stable")  # ties keep window order, so the groups are equal in size
    rows = []
    for group in np.array_split(order, bins):
        gap, se = paired_gap(a[group], b[group])
        rows.append({"lo": float(x[group].min()), "hi": float(x[group].max()), "windows": int(len(group)),
                     "gap": gap, "se": se})
    return rows


def window_difficulty(study: Path, size: int, seed: int, long_row: dict, data_root: str = "") -> dict[str, np.ndarray]:
    """The solver sweeps of the long stage's windows, read back from the study's dataset: "h1" those
    of the one predicted step, "h10" their sum over the ten predicted steps, each (windows,)."""
    from loopwm.data import TrajectoryDataset
    from loopwm.eval.openloop import observed_steps, spread_windows
    from loopwm.train.loop import TrainConfig

    cfg = study_settings(study)
    cfg = replace(cfg, data_root=data_root or cfg.data_root)
    folder = datasets(cfg, [size])[size][0]
    if not folder.exists():
        raise SystemExit(f"{study}: its dataset {folder} is not here; collect it again (the study's own command "
                         "does) or point --data-root at it")
    ds = TrajectoryDataset.load(folder)
    _, held_out = ds.split(TrainConfig().val_fraction, seed=seed)  # training's own split of this seed
    if episode_key(held_out) != long_row["episodes"]:
        raise SystemExit(f"{study}: {folder} does not hold the episodes {long_row['model']} was scored on (another "
                         "collection, or a split other than training's default): its windows cannot be read back")
    c = observed_steps(cfg.context)
    windows = spread_windows(ds, held_out, c + HORIZON, long_row["asked"])
    if len(windows) != long_row["windows"]:
        raise SystemExit(f"{study}: {len(windows)} windows read back where {long_row['model']} was scored on "
                         f"{long_row['windows']}: the data or the window rule changed since")
    batch = ds.batch(windows)
    if "info_solver_iterations" not in batch:
        raise SystemExit(f"{folder}: its world reports no solver sweeps, so there is no difficulty to rank by")
    sweeps = batch["info_solver_iterations"]  # (W, c + 10): transition k's sweeps; c .. c + 9 are predicted
    return {"h1": sweeps[:, c].astype(np.float64), "h10": sweeps[:, c:c + HORIZON].sum(axis=1).astype(np.float64)}


def pairs(rows: list[dict]) -> list[tuple[dict, dict]]:
    """Each loop with long rows and the stack of its seed, setting and attention, scored on the same
    windows, whose long h10 is closest to the loop's."""
    out = []
    for loop in sorted((r for r in rows if r["model"].startswith("looped") and r.get("long")),
                       key=lambda r: (r["seed"], r["steps"], r["params"], r["model"])):
        same = [r for r in rows if r["model"].startswith("deep-") and r.get("long")
                and (r["seed"], r["setting"], shape(r["model"])) == (loop["seed"], loop["setting"], shape(loop["model"]))
                and (r["long"]["episodes"], r["long"]["windows"]) == (loop["long"]["episodes"], loop["long"]["windows"])]
        if same:
            out.append((loop, min(same, key=lambda r: abs(r["h10l"] - loop["h10l"]))))
    return out


def write_summary(cfg: DifficultyConfig, found: list[tuple[dict, dict, dict]], settings: list[str] | None = None) -> str:
    """`settings`: every setting of the studies read, so that they are numbered as depth_compare numbers
    them over the same studies (default: only those of the loops found)."""
    from loopwm.eval.openloop import paired_gap

    settings = settings or sorted({loop["setting"] for loop, _, _ in found})
    several = len(settings) > 1
    lines = [f"# Loop against stack by the world's difficulty ({', '.join(cfg.studies)})", "",
             f"{cfg.size} discs, long stage (up to 3,000 windows). Each loop against the stack of its seed, setting and "
             "attention closest to it at long h10, on the same windows, ranked by the world's solver sweeps (h10: summed "
             f"over the ten predicted steps; h1: of the one predicted step) and cut into {cfg.bins} groups of equal size, "
             "easiest first. Each cell: the stack's error above the loop's in that group, ± two paired standard errors "
             "(positive: the loop is better), and in brackets the group's sweeps.", ""]
    if several:
        lines += ["Settings: " + "; ".join(f"({i + 1}) {t})" for i, t in enumerate(settings)) + ".", ""]
    for key, title in (("h10", "h10"), ("h1", "h1")):
        lines += [f"## {title}", "", f"| seed | steps{' (setting)' if several else ''} | loop | stack | all windows | " +
                  " | ".join(f"group {i + 1}" for i in range(cfg.bins)) + " |", "|---" * (5 + cfg.bins) + "|"]
        for loop, stack, groups in found:
            whole = paired_gap(stack["long"][f"window_{key}"], loop["long"][f"window_{key}"])
            cells = [f"{g['gap']:+.1%} ± {2 * g['se']:.1%} ({g['lo']:.0f}-{g['hi']:.0f})" for g in groups[key]]
            steps = f"{loop['steps']}" + (f" ({settings.index(loop['setting']) + 1})" if several else "")
            lines.append(f"| {loop['seed']} | {steps} | {loop['model']} | {stack['model']} | "
                         f"{whole[0]:+.1%} ± {2 * whole[1]:.1%} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(cfg: DifficultyConfig) -> None:
    rows = collect(CompareConfig(studies=cfg.studies, size=cfg.size, other_size=0, own_rates=cfg.own_rates))
    found = []
    for loop, stack in pairs(rows):
        difficulty = window_difficulty(Path(next(s for s in cfg.studies if Path(s).name == loop["study"])), cfg.size,
                                       loop["seed"], {**loop["long"], "model": loop["model"]}, cfg.data_root)
        found.append((loop, stack, {key: quantile_gaps(stack["long"][f"window_{key}"], loop["long"][f"window_{key}"],
                                                       difficulty[key], cfg.bins) for key in ("h10", "h1")}))
    if not found:
        raise SystemExit(f"no loop and stack of one seed and setting with long-stage rows in {cfg.studies}: run "
                         "scripts/depth_study.py --stages long on them first")
    text = write_summary(cfg, found, sorted({r["setting"] for r in rows}))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "difficulty.md", text)
    print(text)


if __name__ == "__main__":
    main(tyro.cli(DifficultyConfig))
