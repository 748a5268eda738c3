"""What a step costs as the scene grows: FLOPs and wall-clock per imagined step against the number of
bodies and the loop's depth, for the looped model and the deep stacks, with full and local attention.

    python scripts/scale_cost.py --out results/scale-cost     # about 5 minutes on one core

Cost does not depend on the weights, so the models are untrained (built from a world's spec with the
demo's architecture); the observations are real starts of the rail at each size, so the neighbour
graphs of local attention are the ones a trained model would build. FLOPs are counted by torch for
one imagined step at batch 1 (`loopwm.models.flops.count_step_flops`); wall-clock is measured on one
torch thread at batch 1 and at a planner's batch, in rounds that visit every configuration in turn
so that a busy machine slows them alike. Writes OUT/scale_cost.jsonl, OUT/summary.md and
OUT/scale_cost.png. Error against scene size needs trained models: the depth studies report it
(results/depth, results/depth-n8).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import tyro

from loopwm.utils import atomic_write_text


@dataclass
class ScaleCostConfig:
    """Per-step cost against scene size and depth."""

    out: str = "results/scale-cost"
    """Result folder (the small datasets that give each size's spec go to OUT/data, ignored by git)."""
    sizes: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    """Discs on the rail."""
    rail_radius: float = 0.005
    """Disc radius at every size (64 discs of the default 0.01 do not fit on the unit rail)."""
    depths: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16])
    """Loop iterations per step of the looped model."""
    deep_blocks: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    """Distinct blocks of the deep stacks."""
    attentions: list[str] = field(default_factory=lambda: ["full", "local"])
    """Attention of every model."""
    batches: list[int] = field(default_factory=lambda: [1, 64])
    """Batch sizes timed (1: play and tracking; 64: a planner's candidates)."""
    horizon: int = 5
    """Imagined steps per timed call."""
    rounds: int = 3
    """Rounds over all configurations."""
    seconds: float = 0.25
    """Time per configuration and batch within a round."""


def _spec(cfg: ScaleCostConfig, n: int, root: Path):
    from loopwm.data import TrajectoryDataset, collect
    from loopwm.train.loop import world_spec_from_data

    folder = collect(env_id="loopwm/Rail-v0", n_bodies=n, env_kwargs={"rail_radius": cfg.rail_radius},
                     out=str(root / f"rail-{n}"), episodes=4, max_steps=50, progress=False)
    ds = TrajectoryDataset.load(folder)
    return world_spec_from_data(ds, np.arange(ds.episodes)), torch.as_tensor(np.asarray(ds.episode(0)["obs"][:1]))


def configurations(cfg: ScaleCostConfig) -> list[dict]:
    rows = []
    for attention in cfg.attentions:
        rows += [{"model": f"looped-{attention}", "kind": "looped", "attention": attention, "blocks": 1, "depth": t}
                 for t in cfg.depths]
        rows += [{"model": f"deep-{k}-{attention}", "kind": "deep", "attention": attention, "blocks": k, "depth": k}
                 for k in cfg.deep_blocks]
    return rows


def main(cfg: ScaleCostConfig) -> list[dict]:
    from loopwm.demo import demo_model
    from loopwm.models import build_model
    from loopwm.models.flops import count_step_flops

    torch.set_num_threads(1)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    models, starts, rows = {}, {}, []
    for n in cfg.sizes:
        spec, starts[n] = _spec(cfg, n, out / "data")
        for c in configurations(cfg):
            mcfg = replace(demo_model(), kind=c["kind"], attention=c["attention"], n_deep=c["blocks"],
                           eval_depth=c["depth"] if c["kind"] == "looped" else 0)
            torch.manual_seed(0)
            model = build_model(spec, mcfg).eval()
            depth = c["depth"] if c["kind"] == "looped" else None
            action = torch.zeros(spec.action_dim)
            row = {**c, "bodies": n, "params": int(sum(p.numel() for p in model.parameters())),
                   "flops_per_step": count_step_flops(model, starts[n][0], action, depth)}
            models[len(rows)] = (model, depth)
            rows.append(row)
    spent = {(i, b): 0.0 for i in models for b in cfg.batches}
    steps = {(i, b): 0 for i in models for b in cfg.batches}
    with torch.no_grad():
        for _ in range(cfg.rounds):
            for i, (model, depth) in models.items():
                for b in cfg.batches:
                    obs = starts[rows[i]["bodies"]].expand(b, -1, -1).float()  # (b, N, F)
                    act = torch.zeros(b, cfg.horizon, model.spec.action_dim)  # (b, H, A)
                    state = model.initial(obs)
                    model.imagine(state, act, depth)  # warm-up
                    start = time.perf_counter()
                    while time.perf_counter() - start < cfg.seconds:
                        model.imagine(state, act, depth)
                        steps[i, b] += b * cfg.horizon
                    spent[i, b] += time.perf_counter() - start
    for i, row in enumerate(rows):
        for b in cfg.batches:
            row[f"steps_per_s_b{b}"] = steps[i, b] / spent[i, b]
        print(json.dumps(row), flush=True)
    atomic_write_text(out / "scale_cost.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_summary(out, cfg, rows)
    return rows


def write_summary(out: Path, cfg: ScaleCostConfig, rows: list[dict]) -> None:
    big, small = max(cfg.sizes), min(cfg.sizes)
    lines = [f"# Cost per imagined step against scene size and depth (rail, radius {cfg.rail_radius}; untrained "
             "models with the demo's architecture; one torch thread)", "",
             "Produced by `python scripts/scale_cost.py`. FLOPs: one imagined step at batch 1, counted by torch "
             "(matmuls and attention). Steps/s: imagined steps per second at batch 1 and at batch "
             f"{max(cfg.batches)}.", ""]
    for attention in cfg.attentions:
        names = [f"looped-{attention}"] + [f"deep-{k}-{attention}" for k in cfg.deep_blocks]
        lines += [f"## {attention} attention", "",
                  "| model | depth | params | " + " | ".join(f"MFLOPs @{n}" for n in cfg.sizes) + " | "
                  + " | ".join(f"steps/s b1 / b{max(cfg.batches)} @{n}" for n in cfg.sizes) + " |",
                  "|---|---|---|" + "---|" * (2 * len(cfg.sizes))]
        for r in rows:
            if r["model"] not in names or r["bodies"] != small:
                continue
            same = [next(x for x in rows if x["model"] == r["model"] and x["depth"] == r["depth"] and x["bodies"] == n)
                    for n in cfg.sizes]
            lines.append(f"| {r['model']} | {r['depth']} | {r['params']:,} | "
                         + " | ".join(f"{x['flops_per_step'] / 1e6:.2f}" for x in same) + " | "
                         + " | ".join(f"{x['steps_per_s_b1']:.0f} / {x[f'steps_per_s_b{max(cfg.batches)}']:.0f}"
                                      for x in same) + " |")
        lines.append("")
        looped = [r for r in rows if r["model"] == f"looped-{attention}"]
        if len(cfg.sizes) > 1 and looped:
            d = min(cfg.depths)
            grow = (next(r for r in looped if r["bodies"] == big and r["depth"] == d)["flops_per_step"]
                    / next(r for r in looped if r["bodies"] == small and r["depth"] == d)["flops_per_step"])
            per_it = {n: [r["flops_per_step"] for r in sorted(looped, key=lambda r: r["depth"]) if r["bodies"] == n]
                      for n in cfg.sizes}
            marginal = ", ".join(f"{(v[-1] - v[0]) / (max(cfg.depths) - min(cfg.depths)) / 1e6:.2f} at {n}"
                                 for n, v in per_it.items() if len(v) > 1)
            lines += [f"FLOPs of the looped model at depth {d} grow {grow:.1f}x from {small} to {big} bodies "
                      f"({big / small:.0f}x the bodies). Each further loop iteration costs (MFLOPs): {marginal}.", ""]
    if "local" in cfg.attentions:
        lines += ["Local attention is a mask over dense attention (`scaled_dot_product_attention` with an additive "
                  "mask), so it costs what full attention costs. Attention scores are N / (6d + N) of a block's "
                  "FLOPs, so a sparse kernel would save little at these sizes; the N^2 pairwise geometry (elementwise, "
                  "not in the FLOP count) is what shows in wall-clock.", ""]
    atomic_write_text(out / "summary.md", "\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for attention, style in zip(cfg.attentions, ("-", "--")):
        for t in cfg.depths:
            pts = sorted((r["bodies"], r["flops_per_step"]) for r in rows
                         if r["model"] == f"looped-{attention}" and r["depth"] == t)
            axes[0].plot(*zip(*pts), style, marker="o", label=f"looped {attention}, {t} it")
            pts = sorted((r["bodies"], r["steps_per_s_b1"]) for r in rows
                         if r["model"] == f"looped-{attention}" and r["depth"] == t)
            axes[1].plot(*zip(*pts), style, marker="o", label=f"looped {attention}, {t} it")
    for ax, label in zip(axes, ("FLOPs per imagined step (batch 1)", "imagined steps/s (batch 1, one thread)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("bodies")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(out / "scale_cost.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main(tyro.cli(ScaleCostConfig))
