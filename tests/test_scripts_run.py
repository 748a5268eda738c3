"""The study scripts, run end to end in their quick modes: minutes each, so marked slow.

tests/test_scripts.py only imports them; a script can still break where it meets the library at
run time (in session 21 physics_study.py stopped with a KeyError because the depth study's
training job had gained settings its jobs lacked, and nothing in the default run could see it).
`pytest -m slow tests/test_scripts_run.py` runs each script the way its docstring says, small.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_script(name: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / name), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)
    assert proc.returncode == 0, f"{name} {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.mark.slow
def test_physics_study_quick(tmp_path):
    run_script("physics_study.py", "--out", str(tmp_path), "--quick", "--generalist-steps", "60", "--workers", "1")
    runs = {r["model"]: r["steps"] for r in rows(tmp_path / "runs.jsonl")}
    assert runs == {"looped-balls": 30, "looped-cradle": 30, "looped-chain": 30, "looped-mixed": 60, "deep-1-mixed": 60}
    assert {(r["model"], r["regime"]) for r in rows(tmp_path / "results.jsonl")} >= {("looped-mixed", "chain")}
    assert "the two on mixed 60" in (tmp_path / "summary.md").read_text()


@pytest.mark.slow
def test_depth_study_quick(tmp_path):
    run_script("depth_study.py", "--out", str(tmp_path), "--quick", "--workers", "1", "--stages", "train", "score", "long",
               "exits", "summary", "--exit-rules", "token-delta", "token-halt-latent", "--exit-windows", "64",
               "--long-windows", "64", "--exit-training", "0.1")
    assert rows(tmp_path / "runs.jsonl") and rows(tmp_path / "results.jsonl")
    assert json.loads((tmp_path / "runs" / "looped" / "config.json").read_text())["exit_training"] == 0.1
    long = rows(tmp_path / "long.jsonl")
    assert {r["model"] for r in long} == {"looped", "deep-1"} and all(len(r["window_h10"]) == r["windows"] for r in long)
    assert all("vs_round" in r for r in rows(tmp_path / "exits.jsonl") if r["rule"] != "fixed")
    text = (tmp_path / "summary.md").read_text()
    assert "(long stage)" in text and "64 windows" in text
    run_script("depth_report.py", "--study", str(tmp_path))  # the report alone rewrites the same summary
    assert (tmp_path / "summary.md").read_text() == text
    # the long stage's windows read back from the data, ranked by the world's sweeps
    size = json.loads((tmp_path / "study.json").read_text())["n_bodies"]
    run_script("depth_difficulty.py", "--studies", str(tmp_path), "--out", str(tmp_path), "--size", str(size), "--bins", "2")
    assert "| 0 | 20 | looped | deep-1 |" in (tmp_path / "difficulty.md").read_text()
    # a threshold chosen on training windows, then the scored row read at it
    run_script("exit_threshold.py", "--studies", str(tmp_path), "--rule", "token-delta", "--model", "looped",
               "--windows", "32", "--tolerance", "1.0")
    choice = json.loads((tmp_path / "threshold_choice-token-delta.json").read_text())
    assert choice["chosen"] == 0.2 and choice["scored_row"]["threshold"] == 0.2  # within 100%: the largest one
    # chosen on the scored rows instead, judged on other episodes of the same world (here its own data, for speed)
    from loopwm.data import TrajectoryDataset

    data = next(p for p in (tmp_path / "data").iterdir() if TrajectoryDataset.load(p).env_kwargs.get("n_bodies") == size)
    run_script("exit_threshold.py", "--studies", str(tmp_path), "--rule", "token-delta", "--model", "looped",
               "--choose-on", "scored", "--test-data", str(data), "--test-windows", "32")
    tested = json.loads((tmp_path / f"threshold_test-token-delta-{data.name}.json").read_text())
    assert tested["chosen"] is None or tested["test_row"]["threshold"] == tested["chosen"]
    assert {r["max_depth"] for r in tested["test_sweep"] if r["rule"] == "fixed"} >= {1, 8}


@pytest.mark.slow
def test_adaptive_study_quick(tmp_path):
    run_script("adaptive_study.py", "--out", str(tmp_path), "--quick")
    assert any(tmp_path.iterdir())


@pytest.mark.slow
def test_plan_bench_quick(tmp_path):
    run_script("plan_bench.py", "--out", str(tmp_path), "--quick")
    assert (tmp_path / "summary.md").exists()


@pytest.mark.slow
def test_throughput_smoke(tmp_path):
    run_script("throughput.py", "--out", str(tmp_path), "--minutes", "0.05", "--episodes", "8", "--batches", "8",
               "--two-thread-batches", "--compile-batches", "--workers", "1")
    (row,) = rows(tmp_path / "throughput.jsonl")
    assert row["steps"] > 0 and row["device"] == "cpu" and row["workers"] == 1


@pytest.mark.slow
def test_large_data_quick_check(tmp_path):
    run_script("large_data.py", "--out", str(tmp_path), "--steps", "200000", "--train-steps", "50")
    assert any(tmp_path.iterdir())
