"""The study scripts under scripts/ import and build their command lines.

Their runs take minutes to hours and are not part of the suite; this catches what breaks them
before anyone waits for one: an import that moved, a config field tyro cannot turn into a flag, a
default that no longer constructs.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "scripts").glob("*.py"))


@pytest.fixture
def load():
    """Import a script as a module; it stays in sys.modules while the test runs, since dataclasses
    and tyro resolve string annotations through it."""
    names = []

    def _load(path: Path):
        if str(path.parent) not in sys.path:  # as when run: a script imports its siblings (depth_report)
            sys.path.append(str(path.parent))
        spec = importlib.util.spec_from_file_location(f"loopwm_script_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        names.append(spec.name)
        spec.loader.exec_module(module)
        return module

    yield _load
    for name in names:
        sys.modules.pop(name, None)


def test_every_script_is_found():
    assert len(SCRIPTS) >= 10 and any(p.name == "depth_study.py" for p in SCRIPTS)


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.stem)
def test_a_script_imports_and_its_config_builds_a_command_line(path, load, capsys):
    import tyro

    module = load(path)
    configs = [v for v in vars(module).values()
               if isinstance(v, type) and dataclasses.is_dataclass(v) and v.__module__ == module.__name__
               and v.__name__.endswith("Config")]
    if "tyro.cli" not in path.read_text():
        assert callable(getattr(module, "main", None)), f"{path.name} has neither a tyro config nor a main()"
        return
    assert configs, f"{path.name} calls tyro.cli but defines no *Config dataclass"
    for cls in configs:
        defaults = cls()  # every field has a default: the script runs with no arguments
        with pytest.raises(SystemExit) as stop:
            tyro.cli(cls, args=["--help"])
        assert stop.value.code == 0
        text = capsys.readouterr().out
        first = next(f for f in dataclasses.fields(cls) if f.init)
        assert "--" + first.name.replace("_", "-") in text  # a flag per field, named after it
        assert tyro.cli(cls, args=[]) == defaults


def test_depth_report_saturation_depth_is_the_fewest_iterations_near_the_best(load):
    study = load(next(p for p in SCRIPTS if p.name == "depth_report.py"))
    assert study.saturation_depth({1: 1.0, 2: 0.5, 4: 0.495, 8: 0.49}) == 4  # 0.495 is within 2% of 0.49
    assert study.saturation_depth({1: 1.0, 2: 0.5, 4: 0.495, 8: 0.40}) == 8
    assert study.saturation_depth({1: 0.1, 2: 0.2, 4: 0.3}) == 1  # overthinking: the first pass is the best
    assert study.saturation_depth({8: 0.3, 2: 0.3}) == 2  # order of the keys does not matter
    # a gap inside two paired standard errors is noise: the fewer iterations are as good
    assert study.saturation_depth({1: 1.0, 2: 0.5, 4: 0.45, 8: 0.40}, noise={2: 0.01, 4: 0.03}) == 4
    assert study.saturation_depth({1: 1.0, 2: 0.5, 4: 0.45, 8: 0.40}, noise={4: 0.02}) == 8  # 0.05 > 2 x 0.02


def test_depth_report_summary_lists_the_models_of_every_invocation(load):
    study = load(next(p for p in SCRIPTS if p.name == "depth_report.py"))
    runs = {"looped": {}, "deep-4": {}, "looped-full": {}}  # looped-full trained, not scored yet
    results = [{"model": "looped"}, {"model": "deep-4"}, {"model": "deep-8"}]
    assert study.study_models(["deep-8"], runs, results) == ["deep-8", "looped", "deep-4"]
    assert study.study_models(["looped", "deep-4"], runs, results) == ["looped", "deep-4"]


def test_depth_report_exits_table_says_whether_beating_round_m_is_measured(load):
    study = load(next(p for p in SCRIPTS if p.name == "depth_report.py"))
    fixed = [{"model": "looped", "size": 32, "rule": "fixed", "threshold": None, "max_depth": d, "mean_iterations": d,
              "mean_token_iterations": d, "error_h10": e, "error_h1": e / 4} for d, e in ((2, 0.44), (3, 0.43), (16, 0.42))]
    rule = {"model": "looped", "size": 32, "rule": "token-delta", "threshold": 0.03, "max_depth": 16, "mean_iterations": 5.0,
            "mean_token_iterations": 2.6, "error_h10": 0.428, "error_h1": 0.1, "iterations_solver_spearman": 0.5,
            "token_iterations_solver_spearman": 0.6, "vs_round": {"depth": 3, "gap_h10": -0.0047, "se_h10": 0.004},
            "vs_max": {"depth": 16, "gap_h10": 0.019, "se_h10": 0.003}}
    old = {k: v for k, v in rule.items() if not k.startswith("vs_")}  # rows of before session 24: no brackets
    lines = study.exits_table(fixed + [rule], 32)
    row = next(line for line in lines if line.startswith("| token-delta"))
    assert "| 0.4300 (depth 3) | yes [-0.5% ± 0.8%] | yes (16% of its iterations) [+1.9% ± 0.6%] | 0.50 (per token 0.60) |" in row
    row = next(line for line in study.exits_table(fixed + [old], 32) if line.startswith("| token-delta"))
    assert "| 0.4300 (depth 3) | yes | yes (16% of its iterations) |" in row
    priced = {**rule, "vs_equal_cost": {"depths": [2, 3], "weight_hi": 0.6, "gap_h10": -0.0101, "se_h10": 0.004}}
    row = next(line for line in study.exits_table(fixed + [priced], 32) if line.startswith("| token-delta"))
    assert "| yes [-0.5% ± 0.8%]; at equal cost [-1.0% ± 0.8%] |" in row
    # rows scored on 1,024 windows beside those of 512: each rule meets only the fixed depths of its own count
    more = [{**r, "asked": 1024, "error_h10": r["error_h10"] - 0.01} for r in fixed + [rule]]
    lines = study.exits_table(fixed + [old] + more, 32)
    assert [line for line in lines if line.startswith("## ")] == [
        "## looped: exit rules against fixed depth (32 discs, 512 windows; horizon-10 error, iterations per step)",
        "## looped: exit rules against fixed depth (32 discs, 1,024 windows; horizon-10 error, iterations per step)"]
    assert sum("| 0.4200 (depth 3) | yes [-0.5% ± 0.8%]" in line for line in lines) == 1


def test_depth_report_rewrites_a_summary_from_the_files_alone(load, tmp_path):
    report = load(next(p for p in SCRIPTS if p.name == "depth_report.py"))
    settings = {"out": str(tmp_path), "n_bodies": 16, "steps": 40, "seed": 3, "models": ["deep-1"], "test_sizes": [16],
                "no_longer_a_field": 1, "earlier": []}  # an older or newer study.json: unknown keys are dropped
    (tmp_path / "study.json").write_text(json.dumps(settings))
    (tmp_path / "world.json").write_text(json.dumps({"16": {"mean": 1.0, "p50": 0, "p90": 3, "p99": 9, "max": 12,
                                                            "fraction": {"0": 0.6, "8-15": 0.1}}}))
    (tmp_path / "runs.jsonl").write_text(json.dumps({"model": "deep-1", "steps": 40, "train_seconds": 60.0,
                                                     "val_curve": [[20, 0.5], [40, 0.4]]}) + "\n")
    (tmp_path / "results.jsonl").write_text(json.dumps({"model": "deep-1", "size": 16, "depth": 1, "params": 1234, "h1": 0.1,
                                                        "h10": 0.4, "copy_last_h1": 0.2, "copy_last_h10": 0.9}) + "\n")
    report.main(report.ReportConfig(study=str(tmp_path)))
    text = (tmp_path / "summary.md").read_text()
    assert text.startswith("# Depth study: loopwm/Rail-v0, trained on 16 discs (40 steps each, batch 64, lr 0.003, "
                           "context 2, horizon 4, seed 3)")
    assert "| deep-1 | 1,234 | 40 | 1.0 | 0.5000, 0.4000 | steps | 1 |  | 0.1000 | 0.4000 | 0.200 / 0.900 |" in text
    assert (tmp_path / "depth_study.png").exists()
    with pytest.raises(SystemExit, match="no study.json"):
        report.main(report.ReportConfig(study=str(tmp_path / "missing")))


def test_depth_study_settings_keep_every_invocation(load, tmp_path):
    study = load(next(p for p in SCRIPTS if p.name == "depth_study.py"))
    path = tmp_path / "study.json"
    study.write_settings(path, {"models": ["looped"], "stages": ["train"]})
    study.write_settings(path, {"models": ["deep-4"], "stages": ["score"]})
    study.write_settings(path, {"models": ["looped"], "stages": ["summary"]})
    got = json.loads(path.read_text())
    assert got["stages"] == ["summary"]
    assert [e["stages"] for e in got["earlier"]] == [["train"], ["score"]]
    assert all("earlier" not in e for e in got["earlier"])


def test_depth_study_dataset_folders_name_every_setting_and_count(load):
    study = load(next(p for p in SCRIPTS if p.name == "depth_study.py"))
    cfg = study.DepthStudyConfig(out="/r/o", data_root="/d", n_bodies=32, episodes=1500, test_episodes=100,
                                 rail_radius=0.005)
    got = study.datasets(cfg, [16, 32, 64])
    assert {n: (str(f), e) for n, (f, e, _) in got.items()} == {
        16: ("/d/rail16-r0.005-e100", 100), 32: ("/d/rail32-r0.005-e1500", 1500), 64: ("/d/rail64-r0.005-e100", 100)}
    assert got[32][2] == {"rail_radius": 0.005}
    plain = study.datasets(study.DepthStudyConfig(out="/r/o", n_bodies=16), [16, 32])  # defaults: 300 each, no suffix
    assert {n: (str(f), e, k) for n, (f, e, k) in plain.items()} == {16: ("/r/o/data/rail16", 300, {}),
                                                                    32: ("/r/o/data/rail32", 300, {})}


def _strata(model, size, depth, cells):
    return [{"model": model, "size": size, "depth": depth, "sweeps": k, "windows": n, "error_h1": e,
             "solver_iterations_mean": float(i)} for i, (k, (n, e)) in enumerate(cells.items())]


@pytest.mark.parametrize("script", ["depth_report.py", "depth_compare.py"])
def test_the_steady_one_step_error_weighs_strata_by_windows_and_picks_the_depth(load, script):
    from loopwm.eval.adaptive import best_depth_row

    module = load(next(p for p in SCRIPTS if p.name == script))
    strata = (_strata("looped", 16, 2, {"0": (900, 0.01), "32+": (100, 1.0)})  # mean 0.109
              + _strata("looped", 16, 8, {"0": (900, 0.02), "32+": (100, 0.5)}))  # mean 0.068
    got = module.one_step(strata, "looped", 16, 2)
    assert (got[0] if isinstance(got, tuple) else got) == pytest.approx(0.109)  # the study also says how many windows
    assert module.one_step(strata, "looped", 16, 4) is None
    # the open-loop h1 over fewer windows prefers depth 2; all the windows say 8
    results = [{"model": "looped", "size": 16, "depth": 2, "h1": 0.05}, {"model": "looped", "size": 16, "depth": 8, "h1": 0.06}]
    pick = module.best_depth(results, "looped", 16, strata) if script == "depth_report.py" else best_depth_row(results, strata)
    assert pick["depth"] == 8
    # a depth without strata: fall back to the open-loop h1
    results.append({"model": "looped", "size": 16, "depth": 4, "h1": 0.04})
    pick = module.best_depth(results, "looped", 16, strata) if script == "depth_report.py" else best_depth_row(results, strata)
    assert pick["depth"] == 4


def test_depth_compare_matches_a_loop_only_with_stacks_of_its_attention_and_scaffold(load):
    compare = load(next(p for p in SCRIPTS if p.name == "depth_compare.py"))
    row = dict(seed=0, setting="s")
    loop = {**row, "model": "looped-full", "params": 100, "h1": 0.05}
    rows = [loop, {**row, "model": "deep-1", "params": 110, "h1": 0.04},  # local attention: not a match
            {**row, "model": "deep-2-lean-full", "params": 120, "h1": 0.04},  # lean: not a match
            {**row, "model": "deep-4-full", "params": 300, "h1": 0.0504}]
    assert compare.matching_ratio(rows, loop, "h1") == "deep-4-full (3.0x)"


def test_depth_compare_reads_the_smallest_loop_that_matches_a_stack(load):
    compare = load(next(p for p in SCRIPTS if p.name == "depth_compare.py"))
    row = dict(seed=0, setting="s")
    stack = {**row, "model": "deep-4", "params": 330, "h1": 0.10}
    rows = [stack, {**row, "model": "looped-d32", "params": 50, "h1": 0.12},  # too weak
            {**row, "model": "looped-d48", "params": 110, "h1": 0.1005},  # within 1%: the answer
            {**row, "model": "looped", "params": 180, "h1": 0.09},
            {**row, "model": "looped-d16-full", "params": 20, "h1": 0.05},  # full attention: not a match
            {**{**row, "seed": 1}, "model": "looped-d16", "params": 20, "h1": 0.05}]  # another seed
    assert compare.matching_ratio(rows, stack, "h1") == "looped-d48 (3.0x fewer)"
    assert compare.matching_ratio(rows, {**stack, "h1": 0.05}, "h1") == "none of 3 (smallest 0.15x)"
    summary = compare.write_summary(compare.CompareConfig(), [
        {**r, "study": "x", "core_params": None, "steps": 1, "stop": "steps", "minutes": 1.0, "depth": 1, "h10": 0.3, "h1s": r["h1"],
         "other": None, "free": None, "hard": None} for r in rows[:4]])
    assert "| 0 | 1 | deep-4 | 330 | 0.1000 | looped-d48 (3.0x fewer) |" in summary
    longer = {**row, "setting": "longer", "model": "looped-d32", "params": 50, "h1": 0.08}
    curves = compare._curves(rows[:4] + [longer])
    assert sorted(len(v) for v in curves.values()) == [1, 1, 3]  # the longer run is not on the 4,000-step curve


def _long(h10: list[float], episodes: str = "e0") -> dict:
    return {"episodes": episodes, "windows": len(h10), "window_h1": [x / 4 for x in h10], "window_h10": h10}


def test_depth_compare_says_whether_a_match_on_many_windows_is_measured(load):
    compare = load(next(p for p in SCRIPTS if p.name == "depth_compare.py"))
    rng = np.random.default_rng(0)
    windows = rng.lognormal(0.0, 1.0, 2000)
    row = dict(seed=0, setting="s")

    def model(name, params, factor, episodes="e0"):
        errors = list(windows * factor)
        return {**row, "model": name, "params": params, "h1l": float(np.mean(errors)) / 4, "h10l": float(np.mean(errors)),
                "long": _long(errors, episodes)}

    loop = model("looped-d24", 30, 1.0)
    rows = [loop, model("deep-1", 180, 1.03), model("deep-2", 230, 1.005)]
    got = compare.matching_ratio(rows, loop, "h10l")
    assert got.startswith("deep-2 (7.7x) [+0.5% ± ")  # the match, and its gap on the same windows
    # nothing within 1%: the closest stack's gap says whether the miss is measured
    got = compare.matching_ratio(rows[:2], loop, "h10l")
    assert got.startswith("none of 1 (largest 6.00x); closest deep-1 [+3.0% ± ")
    # stacks scored on other episodes (another seed's split) pair with nothing
    other = [loop, model("deep-2", 230, 1.005, episodes="e1")]
    assert compare.matching_ratio(other, loop, "h10l") == "deep-2 (7.7x)"
    assert compare.plotted_keys([{"h1s": 0.1, "h10l": 0.4}, {"h1s": 0.1}]) == ["h1s", "h10"]
    # h1 pairs on the windows' own one-step errors, not on their h10
    assert compare.matching_ratio(rows[:2], loop, "h1l").startswith("none of 1 (largest 6.00x); closest deep-1 [+3.0% ± ")
    extra = dict(study="x", core_params=None, steps=1, stop="steps", minutes=1.0, depth=1, h1=0.1, h10=0.3, h1s=None,
                 other=None, free=None, hard=None)
    summary = compare.write_summary(compare.CompareConfig(), [{**r, **extra} for r in rows])
    line = next(x for x in summary.splitlines() if x.startswith("| 0 | 1 | looped-d24 |"))
    assert f"| {loop['h1l']:.4f} | deep-2 (7.7x) [+0.5% ± " in line and f"| {loop['h10l']:.4f} | deep-2 (7.7x) [+0.5% ± " in line


def test_depth_compare_own_rates_keeps_each_models_best_run_by_validation(load):
    compare = load(next(p for p in SCRIPTS if p.name == "depth_compare.py"))
    base = "rail (10000 steps each, batch 32, lr {}, context 2, horizon 4)"
    row = dict(seed=2, steps=10000, params=1)
    rows = [{**row, "model": "looped-d32", "setting": base.format(0.003), "val": 0.17, "h1": 0.09},
            {**row, "model": "deep-4", "setting": base.format(0.003), "val": 0.23, "h1": 0.13},
            {**row, "model": "deep-4", "setting": base.format(0.002), "val": 0.18, "h1": 0.10},
            {**row, "model": "deep-4", "setting": base.format("1e-3"), "val": None, "h1": 0.01},  # no curve: never chosen
            {**row, "seed": 1, "model": "deep-4", "setting": base.format(0.003), "val": 0.19, "h1": 0.09}]
    kept = compare.own_rates(rows)
    assert len(kept) == 3 and {r["setting"] for r in kept} == {"rail (10000 steps each, batch 32, context 2, horizon 4)"}
    deep = next(r for r in kept if r["model"] == "deep-4" and r["seed"] == 2)
    assert deep["h1"] == 0.10  # the lower validation error, not the lower test error
    loop = next(r for r in kept if r["model"] == "looped-d32")
    assert compare.matching_ratio(kept, loop, "h1") == "none of 1 (largest 1.00x)"  # now paired within one setting
    assert compare.own_rates([rows[3]])[0]["h1"] == 0.01  # alone, it is kept
    assert rows[1]["setting"] == base.format(0.003)  # the input rows are left as they were


def test_depth_compare_sets_training_variants_against_the_usual_setting(load):
    compare = load(next(p for p in SCRIPTS if p.name == "depth_compare.py"))
    rng = np.random.default_rng(1)
    windows = rng.lognormal(0.0, 1.0, 2000)

    def model(name, setting, factor, seed=0):
        errors = list(windows * factor)
        return {"seed": seed, "setting": setting, "model": name, "params": 30, "steps": 4000, "minutes": 10.0,
                "h1s": 0.1, "h1l": float(np.mean(errors)) / 4, "h10l": float(np.mean(errors)), "long": _long(errors, "e0")}

    rows = [model("looped", "horizon 4", 1.0), model("deep-1", "horizon 4", 1.1), model("looped", "curriculum", 0.97),
            model("looped", "horizon 4", 1.0, seed=1), model("deep-2", "curriculum", 1.0)]
    settings = sorted({r["setting"] for r in rows})
    lines = compare.training_variants(rows, settings)
    assert "against the usual one (2)" in lines[0 + 1]  # horizon 4: the setting most rows share
    table = [x for x in lines if x.startswith("| 0 |") or x.startswith("| 1 |")]
    # only seed 0's loop has a variant; deep-2 has no usual-setting twin and seed 1 no variant
    assert [x.split(" | ")[1:4] for x in table] == [["looped", "4000", "(2) (the usual)"], ["looped", "4000", "(1)"]]
    assert "[-3.0% ± " in table[1]
    assert compare.training_variants(rows[:2], ["horizon 4"]) == []
    # a group without the usual setting is set against its most common one, marked as the reference
    rows += [model("looped", "curriculum", 1.0, seed=2), model("looped", "penalty", 1.02, seed=2)]
    settings = sorted({r["setting"] for r in rows})
    seed2 = [x for x in compare.training_variants(rows, settings) if x.startswith("| 2 |")]
    assert [x.split(" | ")[3] for x in seed2] == ["(1) (reference)", "(3)"] and "[+2.0% ± " in seed2[1]


def test_depth_difficulty_numbers_settings_as_depth_compare_does(load):
    difficulty = load(next(p for p in SCRIPTS if p.name == "depth_difficulty.py"))
    h = list(np.linspace(1.0, 2.0, 40))
    loop = {"seed": 0, "steps": 4000, "model": "looped", "setting": "c", "long": _long(h)}
    stack = {"model": "deep-1", "long": _long([x * 1.1 for x in h])}
    groups = {key: [{"gap": 0.1, "se": 0.01, "lo": 0, "hi": 9}] for key in ("h10", "h1")}
    cfg = difficulty.DifficultyConfig(studies=["x"], bins=1)
    # "a" and "b" belong to studies with no pair here: the loop's setting keeps its number among all three
    text = difficulty.write_summary(cfg, [(loop, stack, groups)], ["a", "b", "c"])
    assert "(3) c)" in text and "| 0 | 4000 (3) | looped | deep-1 |" in text
    assert "Settings" not in difficulty.write_summary(cfg, [(loop, stack, groups)])  # one setting: no numbers


def test_depth_difficulty_finds_where_a_gap_sits_by_the_worlds_difficulty(load):
    difficulty = load(next(p for p in SCRIPTS if p.name == "depth_difficulty.py"))
    rng = np.random.default_rng(0)
    sweeps = rng.permutation(np.repeat([0.0, 5.0, 10.0, 30.0], 1000))
    loop = rng.lognormal(0.0, 0.5, 4000) * (1 + sweeps / 20)
    stack = loop * np.where(sweeps == 30, 1.10, 1.0) * rng.normal(1.0, 0.01, 4000)  # 10% worse on the hardest quarter only
    groups = difficulty.quantile_gaps(stack, loop, sweeps, 4)
    assert [(g["lo"], g["hi"], g["windows"]) for g in groups] == [(0, 0, 1000), (5, 5, 1000), (10, 10, 1000), (30, 30, 1000)]
    assert all(abs(g["gap"]) < 3 * g["se"] for g in groups[:3])  # level where they are the same
    assert abs(groups[-1]["gap"] - 0.10) < 0.01 and groups[-1]["gap"] > 10 * groups[-1]["se"]
    with pytest.raises(SystemExit, match="at least 2 per bin"):
        difficulty.quantile_gaps(stack[:5], loop[:5], sweeps[:5], 4)


def test_depth_report_long_table_pairs_models_scored_on_the_same_windows(load):
    study = load(next(p for p in SCRIPTS if p.name == "depth_report.py"))
    base = dict(size=32, depth=4, asked=3000)
    rows = [{**base, "model": "looped", "h1": 0.10, "h10": 0.40, **_long([0.4, 0.5, 0.3])},
            {**base, "model": "deep-1", "h1": 0.11, "h10": 0.42, **_long([0.42, 0.52, 0.32])},
            {**base, "model": "deep-2", "h1": 0.12, "h10": 0.39, **_long([0.39, 0.3, 0.48], "e1")}]
    lines = study.long_table(rows, ["looped", "deep-1", "deep-2", "deep-4"], 32)
    assert any(line.startswith("| deep-2 | 4 | 3 | 0.1200 | other windows | 0.3900 | best |") for line in lines)
    assert any(line.startswith("| looped | 4 | 3 | 0.1000 | best | 0.4000 | other windows |") for line in lines)
    assert any(line.startswith("| deep-1 | 4 | 3 | 0.1100 | +") for line in lines)
    assert study.long_table(rows, ["deep-4"], 32) == []


def test_depth_compare_plots_each_training_setting_in_its_own_row(load, tmp_path):
    import matplotlib.image

    compare = load(next(p for p in SCRIPTS if p.name == "depth_compare.py"))
    base = dict(seed=0, study="x", h10=0.4)
    rows = [{**base, "setting": "4,000 steps", "model": "looped-d32", "params": 50, "h1": 0.10},
            {**base, "setting": "4,000 steps", "model": "deep-4", "params": 330, "h1": 0.11}]
    longer = [{**r, "setting": "10,000 steps", "h1": r["h1"] - 0.02} for r in rows]
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    compare.plot(compare.CompareConfig(), rows, one)
    compare.plot(compare.CompareConfig(), rows + longer, two)
    h_one, w_one = matplotlib.image.imread(one).shape[:2]
    h_two, w_two = matplotlib.image.imread(two).shape[:2]
    assert w_one == w_two and h_two == pytest.approx(2 * h_one, abs=2)  # budgets are not mixed on one axis


def test_plan_bench_replan_drops_only_the_rows_it_plans_again(load):
    bench = load(next(p for p in SCRIPTS if p.name == "plan_bench.py"))
    rows = [{"task": "A", "world": "looped"}, {"task": "A", "world": "oracle"}, {"task": "B", "world": "looped"},
            {"task": "A", "world": "gru"}]
    cfg = bench.PlanBenchConfig(tasks=["A"], models=["looped"], variants=[])
    assert bench.kept_rows(rows, cfg) == rows  # a plain re-run resumes: nothing is planned twice
    again = bench.kept_rows(rows, bench.PlanBenchConfig(tasks=["A"], models=["looped"], variants=[], replan=True))
    assert again == [{"task": "B", "world": "looped"}, {"task": "A", "world": "gru"}]


def test_depth_study_keeps_a_run_only_when_trained_with_the_budget_asked(load):
    study = load(next(p for p in SCRIPTS if p.name == "depth_study.py"))
    cfg = study.DepthStudyConfig(steps=4000)
    assert study.trained_as_asked({"steps": 4000, "cap": 4000}, cfg)  # a row from before --minutes
    assert study.trained_as_asked({"steps": 3990}, study.DepthStudyConfig(steps=3990))  # rows without a cap
    assert not study.trained_as_asked({}, cfg)
    assert not study.trained_as_asked({"steps": 1500, "cap": 1500}, cfg)
    timed = study.DepthStudyConfig(steps=10**6, minutes=4.5)
    assert study.trained_as_asked({"steps": 531, "cap": 10**6, "minutes": 4.5}, timed)
    assert not study.trained_as_asked({"steps": 531, "cap": 10**6, "minutes": 4.5}, study.DepthStudyConfig(steps=10**6, minutes=9))


def test_physics_study_gives_the_generalists_their_own_step_cap(load, monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS[0].parent))  # as when run: it imports the depth study beside it
    study = load(next(p for p in SCRIPTS if p.name == "physics_study.py"))
    data = {r: f"/data/{r}" for r in ("balls", "cradle", "chain", "mixed")}
    steps = {j["name"]: j["steps"] for j in study.jobs_for(study.PhysicsStudyConfig(steps=6, generalist_steps=18),
                                                            data, Path("/out"))}
    assert steps == {"looped-balls": 6, "looped-cradle": 6, "looped-chain": 6, "looped-mixed": 18, "deep-1-mixed": 18}
    same = study.jobs_for(study.PhysicsStudyConfig(steps=6), data, Path("/out"))
    assert {j["steps"] for j in same} == {6}  # 0: the generalists train as long as the specialists
    # built by the depth study's own job maker, whose _train runs them: no setting of it left out
    depth = load(next(p for p in SCRIPTS if p.name == "depth_study.py"))
    full = depth.train_job("m", None, "d", "r", steps=1, batch_size=1, lr=1.0, context=1, horizon=1, seed=0)
    assert all(set(j) == set(full) for j in same)


def test_depth_study_model_names_set_width_locality_and_scaffold(load):
    study = load(next(p for p in SCRIPTS if p.name == "depth_study.py"))
    cfg = study.DepthStudyConfig(mu_rec=6)
    narrow = study.model_config("looped-d32", cfg)
    assert (narrow.kind, narrow.d, narrow.attention, narrow.n_prelude) == ("looped", 32, "local", 1)
    both = study.model_config("looped-lean-d48-full", cfg)
    assert (both.d, both.attention, both.n_prelude, both.n_coda) == (48, "full", 0, 0)
    stack = study.model_config("deep-4-d32", cfg)
    assert (stack.kind, stack.n_deep, stack.d) == ("deep", 4, 32)
    assert study.model_config("looped", cfg).d == 64
    for bad in ("looped-d30", "looped-x32", "deep-four", "deep-4-wide", "looped-full-d32"):
        with pytest.raises(SystemExit, match="model"):
            study.model_config(bad, cfg)


def test_depth_study_gives_the_settling_penalty_to_loops_only_and_names_it_in_the_title(load):
    import sys

    study = load(next(p for p in SCRIPTS if p.name == "depth_study.py"))
    cfg = study.DepthStudyConfig(settle_weight=0.3, settle_from=0.75)
    loop = study.train_overrides("looped-d32", cfg)
    assert (loop["settle_weight"], loop["settle_from"]) == (0.3, 0.75)
    assert "settle_weight" not in study.train_overrides("deep-4", cfg)  # a stack has no loop to settle
    report = sys.modules.get("depth_report") or load(next(p for p in SCRIPTS if p.name == "depth_report.py"))
    assert report.horizon_text(cfg).endswith("loops' settling penalty 0.3 over the last 25%")
    assert "settling" not in report.horizon_text(study.DepthStudyConfig())  # the usual setting reads as before


def test_throughput_names_a_setting_whose_process_dies_and_finishes_the_others(load, tmp_path, monkeypatch):
    (tmp_path / "fake_throughput_run.py").write_text(
        "import os\n"
        "def run(job):\n"
        "    if job['name'] == 'die':\n"
        "        os._exit(9)  # as the kernel's out-of-memory killer would\n"
        "    if job['name'] == 'err':\n"
        "        raise ValueError('bad')\n"
        "    return job['name']\n")
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers inherit sys.path
    import fake_throughput_run

    throughput = load(next(p for p in SCRIPTS if p.name == "throughput.py"))
    monkeypatch.setattr(throughput, "_run", fake_throughput_run.run)
    rows = []
    failed = throughput._run_all([{"name": n} for n in ("a", "die", "err", "b")], 2, rows.append)
    assert sorted(rows) == ["a", "b"]
    assert set(failed) == {"die", "err"} and "killed" in failed["die"] and "ValueError" in failed["err"]


def test_text_paired_pairs_two_models_on_the_same_starts(load, tmp_path, capsys):
    module = load(SCRIPTS[0].parent / "text_paired.py")

    def write(name, predictions):
        rows = [{"task": "incline", "type": "Incline", "variation": 1, "t": t, "actions": ["look at plane"],
                 "reference": ref, "prediction": p} for t, (ref, p) in enumerate(predictions)]
        (tmp_path / name).write_text("\n".join(json.dumps(r) for r in rows) + "\n")
        return str(tmp_path / name)

    refs = ["a brick 12% down", "a brick 14% down", "The door is open.", "a brick 17% down"]
    a = write("a.jsonl", [(r, p) for r, p in zip(refs, ["a brick 11% down", "a brick 14% down", "The door is open.", "x"])])
    b = write("b.jsonl", [(r, p) for r, p in zip(refs, ["a brick 12% down", "a brick 14% down", "the door is  open.", "y"])])
    assert module.main([a, b]) == 0
    out = capsys.readouterr().out
    assert "| overall | 4 | 50.0 | 75.0 | +25.0 (25.0) |" in out  # one start flips: mean 0.25, SE 0.5 / 2
    assert "| numbers | 3 | 33.3 | 66.7 | +33.3 (33.3) |" in out
    other = write("c.jsonl", [(r + " more", r) for r in refs])
    with pytest.raises(SystemExit, match="different start points"):
        module.main([a, other])
    rows = [json.loads(x) for x in Path(b).read_text().splitlines()]  # text eval writes each baseline's reply too
    for r, trend in zip(rows, ["a brick 12% down", "a brick 13% down", "The door is open.", "a brick 17% down"]):
        r["baselines"] = {"trend": trend}
    Path(b).write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    capsys.readouterr()
    assert module.main(["--against", "trend", b]) == 0  # the trend (A) against the model (B)
    assert "| overall | 4 | 75.0 | 75.0 | +0.0 (40.8) |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no 'recall' baseline replies"):
        module.main(["--against", "recall", b])
    rows = [{"type": "Find", "actions": ["look around"], "reference": "Ambiguous request: 0: a, 1: a"},
            {"type": "Find", "actions": ["focus on a"], "reference": "Ambiguous request: 0: a, 1: a"}]
    assert dict(module.groups(rows)) == {"overall": [0, 1], "Find": [0, 1], "numbers": [0, 1],
                                         "look around": [0], "ambiguity": [1]}  # text eval's rows


def test_text_bench_passes_hints_and_copy_follow_to_both_models_and_refuses_follow_without_copy(load):
    from loopwm.utils import LoopWMError

    bench = load(next(p for p in SCRIPTS if p.stem == "text_bench"))
    cfg = bench.TextBenchConfig(copy=True, state_only=True, hints="since", copy_follow=True, numbers=True, line_head=True,
                                copy_match=8, hint_tokens=448, hint_window=4, changed_weight=3.0, quick=True)
    job = bench._job(cfg, "deep", Path("out"), 1.0)
    model = bench._model_config(job)
    assert (model.kind, model.hints, model.copy_follow, model.copy_pool, model.line_head) == ("deep", "since", True, "all", True)
    assert (model.copy_match, model.hint_tokens, model.hint_window, job["changed_weight"]) == (8, 448, 4, 3.0)
    assert "copy-match" in bench._hint_words({"copy_match": 8})
    assert "448 tokens" in bench._hint_words({"hint_tokens": 448}) and "3x" in bench._hint_words({"changed_weight": 3.0})
    with pytest.raises(LoopWMError, match="add --hints"):
        bench._check(bench.TextBenchConfig(hint_window=4))
    with pytest.raises(LoopWMError, match="add --copy"):
        bench._check(bench.TextBenchConfig(copy_match=8))
    assert "trend baseline" in bench._hint_words({"hints": "trend", "copy_follow": True})
    assert "line-fit head" in bench._hint_words({"hints": "replies", "line_head": True})
    with pytest.raises(LoopWMError, match="add --copy"):
        bench._check(bench.TextBenchConfig(copy_follow=True))
    with pytest.raises(LoopWMError, match="add --numbers"):
        bench._check(bench.TextBenchConfig(line_head=True, hints="replies"))
    with pytest.raises(LoopWMError, match="hints"):
        bench._check(bench.TextBenchConfig(hints="everything"))


def test_text_table_lays_models_beside_the_paper_and_refuses_mismatched_starts(load, tmp_path):
    from loopwm.utils import LoopWMError

    tt = load(next(p for p in SCRIPTS if p.stem == "text_table"))

    def result(em: float, n: int = 3, with_trend: bool = True) -> dict:
        scores = lambda e: {"em": e, "f1": 90.0, "bleu4": 70.0, "entity": 80.0}  # noqa: E731
        base = {"lookup": {"overall": scores(10.0), "per_task": {"Incline": {**scores(10.0), "n": 2}}}}
        if with_trend:
            base["trend"] = {"overall": scores(60.0), "per_task": {"Incline": {**scores(75.0), "n": 2}}}
        return {"params": 1, "n_samples": n, "actions": 5, "overall": scores(em),
                "per_task": {"Incline": {**scores(em + 1), "n": 2}, "Boil": {**scores(em - 1), "n": 1}}, "baselines": base}

    (tmp_path / "old.json").write_text(json.dumps(result(40.0, with_trend=False)))
    (tmp_path / "new.json").write_text(json.dumps(result(66.0)))
    text = tt.main(tt.TextTableConfig(runs=[f"old={tmp_path / 'old.json'}", f"hinted={tmp_path / 'new.json'}"],
                                      hinted=["hinted"], baselines=["trend", "lookup"], out=str(tmp_path / "t.md")))
    incline = next(line for line in text.splitlines() if line.startswith("| Incline"))
    assert incline.split("|")[2:-1] == [" 2 ", " 59.3 ", " 34.0 ", " 41.0 ", " 67.0 ", " 75.0 ", " 10.0 "]  # trend from new.json
    assert "hinted (reads the trend's reply)" in text and (tmp_path / "t.md").read_text() == text
    (tmp_path / "other.json").write_text(json.dumps(result(50.0, n=4)))
    with pytest.raises(LoopWMError, match="same test starts"):
        tt.main(tt.TextTableConfig(runs=[f"a={tmp_path / 'old.json'}", f"b={tmp_path / 'other.json'}"], baselines=["lookup"]))
    with pytest.raises(LoopWMError, match="no file has the baseline 'trend'"):
        tt.main(tt.TextTableConfig(runs=[f"a={tmp_path / 'old.json'}"]))
    with pytest.raises(LoopWMError, match="KEY=PATH pairs"):
        tt.main(tt.TextTableConfig(runs=["nolabel"]))
    for name, prints in (("a", "aaaa"), ("b", "bbbb")):  # the same starts, on two collections
        (tmp_path / f"{name}.json").write_text(json.dumps({**result(50.0), "split": "test", "data_fingerprint": {"test": prints}}))
    with pytest.raises(LoopWMError, match="different collections"):
        tt.main(tt.TextTableConfig(runs=[f"a={tmp_path / 'a.json'}", f"b={tmp_path / 'b.json'}"], baselines=["lookup"]))


def test_text_plots_draw_from_evaluation_files_only_and_refuse_other_collections(load, tmp_path):
    from loopwm.utils import LoopWMError

    load(next(p for p in SCRIPTS if p.stem == "text_bench"))  # the sibling it draws with, as when run from scripts/
    tp = load(next(p for p in SCRIPTS if p.stem == "text_plots"))

    def result(em: float, ks=(1, 2, 3), prints: str = "aaaa") -> dict:
        scores = {"em": em, "f1": 90.0, "bleu4": 70.0, "entity": 80.0}
        base = {name: {**scores, "em": 40.0} for name in ("copy", "lookup", "recall", "trend")}
        return {"n_samples": 4, "actions": max(ks), "split": "test", "data_fingerprint": {"test": prints},
                "overall": scores, "per_task": {"Boil": {**scores, "n": 4}}, "rows": {"look around": {**scores, "n": 1}},
                "by_actions": {str(k): {"overall": {**scores, "em": em - k}, **base} for k in ks}}

    files = {"looped": result(70.0), "deep": result(60.0), "d1": result(65.0, ks=(3,)), "d4": result(70.0, ks=(3,))}
    for name, r in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(r))
    out = tmp_path / "plots"
    drawn = tp.main(tp.TextPlotsConfig(runs=[f"looped={tmp_path / 'looped.json'}", f"deep={tmp_path / 'deep.json'}"],
                                       depths=[f"1={tmp_path / 'd1.json'}", f"4={tmp_path / 'd4.json'}"], out=str(out)))
    assert drawn == [out / "metrics_vs_actions.png", out / "em_vs_iterations.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in drawn)
    (tmp_path / "other.json").write_text(json.dumps(result(60.0, prints="bbbb")))
    with pytest.raises(LoopWMError, match="different collections"):
        tp.main(tp.TextPlotsConfig(runs=[f"a={tmp_path / 'looped.json'}", f"b={tmp_path / 'other.json'}"], out=str(out)))
    with pytest.raises(LoopWMError, match="loop counts"):
        tp.main(tp.TextPlotsConfig(runs=[f"a={tmp_path / 'looped.json'}"], depths=[f"x={tmp_path / 'd1.json'}"], out=str(out)))
    # text_bench's own depth sweep, as its results.json keeps it (one saved in session 43 lacked the count)
    bench = load(next(p for p in SCRIPTS if p.stem == "text_bench"))
    sweep = {str(d): {"overall": files[f"d{d}"]["overall"], "rows": files[f"d{d}"]["rows"]} for d in (1, 4)}
    bench.plots({"looped": files["looped"]}, sweep, tmp_path)
    assert (tmp_path / "em_vs_iterations.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_exit_threshold_picks_the_largest_threshold_near_the_fixed_maximum(load):
    from loopwm.utils import LoopWMError

    module = load(Path(__file__).resolve().parents[1] / "scripts" / "exit_threshold.py")
    rows = [{"rule": "fixed", "max_depth": 4, "error_h10": 0.50}, {"rule": "fixed", "max_depth": 16, "error_h10": 0.40},
            {"rule": "token-halt-latent", "threshold": 0.05, "error_h10": 0.401},
            {"rule": "token-halt-latent", "threshold": 0.1, "error_h10": 0.4039},  # within 1% of 0.40
            {"rule": "token-halt-latent", "threshold": 0.2, "error_h10": 0.41}]  # 2.5% off
    assert module.choose(rows, 0.01) == 0.1
    assert module.choose(rows, 0.001) is None  # none close enough: no threshold is claimed

    def row(threshold, m, gap_round, se_round, gap_max):
        return {"rule": "token-delta", "threshold": threshold, "max_depth": 16, "mean_token_iterations": m,
                "vs_round": {"gap_h10": gap_round, "se_h10": se_round}, "vs_max": {"gap_h10": gap_max, "se_h10": 0.01}}

    scored = [row(0.01, 7.0, -0.010, 0.004, 0.001),  # 2.5 standard errors ahead of round(M)
              row(0.03, 4.0, -0.030, 0.015, 0.010),  # ahead by more, but by only 2 standard errors
              row(0.1, 2.0, -0.060, 0.010, 0.030),   # furthest ahead, but 3% from the maximum
              row(0.003, 9.0, -0.050, 0.010, 0.000)]  # more than half the maximum's iterations
    assert module.choose_on_scored(scored) == 0.01
    assert module.choose_on_scored(scored[2:]) is None
    with pytest.raises(LoopWMError, match="--test-data"):
        module.main(module.ThresholdConfig(studies=["anywhere"], choose_on="scored"))


@pytest.mark.skipif(importlib.util.find_spec("tokenizers") is None, reason="text models need the text extra")
def test_text_revisits_scores_the_replies_to_an_action_seen_before_in_the_same_place(load, tmp_path):
    from loopwm.cli import main
    from loopwm.text.corpus import all_starts, load_trajectories
    from tests.test_text_model import make_toy_corpus, tiny_text_train

    toy, run = make_toy_corpus(tmp_path / "data", n_test=8), tmp_path / "run"
    for path in (toy / "trajectories").glob("*/*/*.json"):  # room descriptions of several lines, as ScienceWorld's
        path.write_text(path.read_text().replace("you see: ", "you see:\\n"))
    assert main(tiny_text_train(toy, run, "--steps", "8")) == 0
    rv = load(next(p for p in SCRIPTS if p.stem == "text_revisits"))
    trajs = load_trajectories(toy, "test")
    found = rv.revisits(trajs, 2, "look around")
    assert found
    for i, t in all_starts(trajs, 2):  # a revisit: the newest earlier look in the context shows the same room
        if trajs[i].actions[t + 1] != "look around":
            continue
        looks = [trajs[i].observations[j + 1] for j in range(t) if trajs[i].actions[j] == "look around"]
        same = bool(looks) and looks[-1].split(".")[0] == trajs[i].observations[t + 2].split(".")[0]
        assert same == any((i, t) == (a, b) for a, b, _ in found)
        assert not same or (i, t, looks[-1]) in found
    result = rv.main(rv.TextRevisitsConfig(run=str(run), actions=2, out=str(tmp_path / "r.json")))
    refs = [trajs[i].observations[t + 2] for i, t, _ in found]
    assert result["revisits"] == len(found) == len(result["samples"])
    assert result["recall_em"] == pytest.approx(100 * sum(prev == r for (_, _, prev), r in zip(found, refs)) / len(found))
    assert all(0 <= result[k] <= 100 for k in ("em", "first_line_right", "copied_whole", "model_lines_in_reference"))
    assert json.loads((tmp_path / "r.json").read_text())["revisits"] == len(found)
    # edits: the reference's lines the remembered reply lacks, and whether the prediction wrote them
    assert rv.edit_counts("a\nb open\nc", "a\nb closed\nc", "a\nb open\nc") == (1, 1, 2, 2)
    assert rv.edit_counts("a\nb closed\nc", "a\nb closed\nc", "a\nb open\nc") == (0, 1, 2, 2)  # recall itself
    assert rv.edit_counts("x", "a", "a\nb") == (0, 1, 0, 1)
    assert rv.edit_figures([{"prediction": "a\nb", "remembered": "a", "reference": "a\nb"},
                            {"prediction": "a", "remembered": "a", "reference": "a\nc"}])["changed_lines_written"] == 50.0
