"""Every CLI command, smoke-run as a user would (subprocess), with tiny settings."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import pytest

from loopwm.demo import DemoConfig

TINY_MODEL = ["--model.d", "16", "--model.n-heads", "2", "--model.mu-rec", "2"]


def loopwm(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "loopwm.cli", *args], capture_output=True, text=True, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"loopwm {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def here(*args) -> subprocess.CompletedProcess:
    """`loopwm ARGS` run in this process through the same `main` the installed command calls, for a
    call that must stop with a message or that does no training: a fresh interpreter would spend
    seconds importing torch for a refusal that comes before any work. What this process holds
    globally (torch threads, the SIGTERM handler) is put back; an exception that escapes `main` is
    written out as the interpreter would (a traceback, exit status 1), so the callers' "no
    traceback" checks still hold."""
    import contextlib
    import io
    import signal
    import traceback

    import torch

    from loopwm.cli import main

    threads, handler = torch.get_num_threads(), signal.getsignal(signal.SIGTERM)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as stop:  # tyro's parse errors
                code = stop.code if isinstance(stop.code, int) else 1
            except Exception:  # noqa: BLE001 - shown to the test as a crashed command would be
                traceback.print_exc()
                code = 1
    finally:
        torch.set_num_threads(threads)
        signal.signal(signal.SIGTERM, handler)
    return subprocess.CompletedProcess(["loopwm", *args], code or 0, out.getvalue(), err.getvalue())


def bench(*args, check=True):
    """`loopwm bench`, each speed figure measured for 0.05 s instead of 1 s: the smoke tests time nothing."""
    return loopwm("bench", "--speed-seconds", "0.05", *args, check=check)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    loopwm("collect", "--env-id", "loopwm/Balls-v0", "--out", str(root / "data"), "--episodes", "6",
           "--n-bodies", "4", "--max-episode-steps", "80")
    loopwm("train", "--data", str(root / "data"), "--out", str(root / "run"), "--steps", "3", "--batch-size", "4",
           "--no-progress", "--device", "cpu", *TINY_MODEL)
    return root


def test_help_lists_the_commands():
    out = loopwm("--help").stdout
    for command in ("demo", "collect", "train", "eval", "compare", "bench", "plan", "play", "text", "doctor", "halting"):
        assert command in out
    # every command is described by its own config's docstring (the text group once showed typing.Union's)
    assert "Union" not in out and "Text worlds" in out


def test_eval_json_has_the_documented_fields(trained):
    proc = loopwm("eval", str(trained / "run"), "--json", "--rollout-steps", "40", "--horizon", "20", "--max-windows", "8")
    result = json.loads(proc.stdout)
    assert isinstance(result["params"], int) and result["params"] > 0
    assert set(result["open_loop_error"]) >= {"1", "10"}
    assert set(result["floors"]) == {"copy_last", "constant_velocity", "mean"}
    assert set(result["floors"]["copy_last"]) == set(result["open_loop_error"])
    for key in ("iterations_per_step", "max_a_bar", "steps_per_second", "rollout_max_abs", "rollout_std_ratio"):
        assert isinstance(result[key], float), key
    assert 0 < result["max_a_bar"] < 1
    assert result["context"] == json.loads((trained / "run" / "config.json").read_text())["context"]  # the run's own


def test_eval_table_and_exit_rule(trained):
    proc = loopwm("eval", str(trained / "run"), "--rollout-steps", "20", "--horizon", "10", "--max-windows", "4",
                  "--exit", "delta", "--threshold", "1e9", "--depth", "5")
    assert "copy_last" in proc.stdout


def test_demo_tiny_writes_every_artifact(tmp_path):
    out = tmp_path / "demo"
    proc = loopwm("demo", "--tiny", "--out", str(out), "--no-progress", "--device", "cpu", "--rail-radius", "0.007", "--threads", "1")
    for name in ("config.json", "metrics.jsonl", "eval.json", "error_vs_horizon.png", "iterations.png", "real_vs_imagined.gif"):
        assert (out / name).exists(), name
    assert json.loads((out / "data" / "manifest.json").read_text())["env_kwargs"]["rail_radius"] == 0.007
    assert json.loads((out / "config.json").read_text())["threads"] == 1
    assert list((out / "checkpoints").glob("*.safetensors")) and list((out / "checkpoints").glob("*.json"))
    result, default = json.loads((out / "eval.json").read_text()), DemoConfig()
    assert (result["exit_rule"], result["threshold"]) == (default.exit_rule, default.threshold)  # scored with the rule it records
    assert result["easy_token_iterations"] is not None and 1 <= result["token_iterations_per_step"] <= 4
    assert "open-loop error at horizon  1" in proc.stdout and "parameters" in proc.stdout
    assert f"loopwm play {out}" in proc.stdout  # it ends with the command that plays its run


def test_demo_with_token_halt_fits_its_head(tmp_path):
    out = tmp_path / "demo"
    loopwm("demo", "--tiny", "--out", str(out), "--no-progress", "--device", "cpu", "--threads", "1",
           "--exit-rule", "token-halt", "--threshold", "0.1")
    fit = json.loads((out / "halting.json").read_text())
    assert fit["fit"]["max_depth"] == json.loads((out / "exit.json").read_text())["depth"]
    result = json.loads((out / "eval.json").read_text())
    assert result["exit_rule"] == "token-halt" and result["threshold"] == 0.1
    assert 1 <= result["token_iterations_per_step"] <= 4
    proc = here("demo", "--tiny", "--out", str(tmp_path / "d2"), "--no-progress", "--exit-rule", "token-halting")
    assert proc.returncode == 2 and "unknown exit rule 'token-halting'" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "d2" / "data").exists()  # refused before collecting or training


def test_errors_are_messages_not_tracebacks(tmp_path):
    proc = here("eval", str(tmp_path / "nothing-here"), "--json")
    assert proc.returncode == 2 and "no such run" in proc.stderr and "Traceback" not in proc.stderr
    proc = here("collect", "--env-id", "NoSuchWorld-v9", "--out", str(tmp_path / "d"), "--episodes", "1")
    assert proc.returncode == 2 and "NoSuchWorld-v9" in proc.stderr and "Traceback" not in proc.stderr
    for env_args, says in (("{rail_radius: 0.1}", "not valid JSON"), ("[0.1]", "must be a JSON object")):
        proc = here("collect", "--env-id", "loopwm/Rail-v0", "--out", str(tmp_path / "d"), "--episodes", "1",
                    "--env-args", env_args)
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, env_args
    proc = here("collect", "--env-id", "loopwm/Rail-v0", "--out", str(tmp_path / "d"), "--episodes", "1",
                "--env-args", '{"n_bodies": 8}', "--n-bodies", "16")
    assert proc.returncode == 2 and "give it in one place only" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "d").exists()
    proc = here("train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_bench_quick_writes_rows_table_and_plots(tmp_path):
    out = tmp_path / "bench"
    bench("--quick", "--out", str(out), "--steps", "3", "--minutes", "0.01", "--episodes", "8",
           "--horizon", "12", "--no-progress", "--device", "cpu", "--lrs", "1e-3", "3e-3")
    tuned = json.loads((out / "tuning.json").read_text())
    assert set(tuned["best"]) == {"looped", "deep", "rssm"} and set(tuned["best"].values()) <= {1e-3, 3e-3}
    assert all(set(scores) == {"0.001", "0.003"} for scores in tuned["h10_error"].values())
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    required = {"model", "world", "seed", "horizon", "error", "params", "flops_per_step", "iterations",
                "steps_per_s_b1", "steps_per_s_b256", "budget"}
    assert rows and all(required <= set(r) for r in rows)
    assert {r["budget"] for r in rows} == {"steps", "wallclock"}
    assert {r["model"] for r in rows} >= {"looped", "deep-4"}
    assert {r["horizon"] for r in rows} == set(range(1, 13))
    assert {r["lr"] for r in rows if r["model"].startswith("deep")} == {tuned["best"]["deep"]}
    assert "looped" in (out / "findings.md").read_text()
    (out / "table.md").unlink()
    loopwm("bench", "--out", str(out), "--report-only")  # redraws reports from results.jsonl alone
    for name in ("table.md", "findings.md", "error_vs_horizon.png", "param_efficiency.png", "depth_scaling.png", "compute.png"):
        assert (out / name).exists(), name


def test_bench_can_tune_the_learning_rate_on_every_world(tmp_path):
    out = tmp_path / "bench"
    bench("--out", str(out), "--worlds", "Pendulum-v1", "balls", "--models", "looped", "--seeds", "1",
           "--test-depths", "1", "2", "--steps", "3", "--episodes", "6", "--max-episode-steps", "30", "--horizon", "10", "--budgets", "steps",
           "--no-progress", "--device", "cpu", "--lrs", "1e-3", "3e-3", "--workers", "1", "--tune-each-world")
    tuned = json.loads((out / "tuning.json").read_text())
    assert set(tuned["best"]) == {"Pendulum-v1", "balls"}
    assert all(set(t["looped"]) == {"0.001", "0.003"} for t in tuned["h10_error"].values())
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    for world in ("Pendulum-v1", "balls"):  # each world trained at its own winner
        assert {r["lr"] for r in rows if r["world"] == world} == {tuned["best"][world]["looped"]}


def test_bench_can_tune_the_learning_rate_of_every_model(tmp_path):
    out = tmp_path / "bench"
    bench("--out", str(out), "--worlds", "balls", "--models", "deep-1", "deep-2", "--seeds", "1",
           "--steps", "3", "--episodes", "6", "--max-episode-steps", "30", "--horizon", "10", "--budgets", "steps",
           "--no-progress", "--device", "cpu", "--lrs", "1e-3", "3e-3", "--workers", "1", "--tune-each-model")
    tuned = json.loads((out / "tuning.json").read_text())
    assert tuned["per"] == "model" and set(tuned["best"]) == {"deep-1", "deep-2"}  # each swept, not the family once
    assert all(set(errors) == {"0.001", "0.003"} for errors in tuned["h10_error"].values())
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    for model in ("deep-1", "deep-2"):  # each trained at its own winner
        assert {r["lr"] for r in rows if r["model"] == model} == {tuned["best"][model]}
        assert sorted(p.name for p in (out / "runs" / "balls" / model).iterdir()) == ["lr0.001", "lr0.003"]
    # back to one rate per family in the same folder: the per-model rates stay on record beside it
    bench("--out", str(out), "--worlds", "balls", "--models", "deep-1", "--seeds", "1",
           "--steps", "3", "--episodes", "6", "--max-episode-steps", "30", "--horizon", "10", "--budgets", "steps",
           "--no-progress", "--device", "cpu", "--lrs", "1e-3", "3e-3", "--workers", "1")
    again = json.loads((out / "tuning.json").read_text())
    assert again["per"] == "family" and set(again["best"]) == {"deep"}
    assert again["per_model"] == tuned


def test_bench_adding_a_model_keeps_its_familys_tuned_rate(tmp_path):
    out = tmp_path / "bench"
    args = ("--out", str(out), "--worlds", "balls", "--seeds", "1", "--test-depths", "1", "--steps", "3", "--episodes", "6",
            "--max-episode-steps", "30", "--horizon", "10", "--budgets", "steps", "--no-progress", "--device", "cpu",
            "--lrs", "1e-3", "3e-3", "--workers", "1")
    bench(*args, "--models", "looped", "deep-1")
    tuned = json.loads((out / "tuning.json").read_text())
    rate = tuned["best"]["deep"]
    bench(*args, "--models", "deep-2")
    # deep-2 joins the finished comparison at the rate its family was tuned to: no second sweep on deep-2
    assert json.loads((out / "tuning.json").read_text()) == tuned
    assert [p.name for p in (out / "runs" / "balls" / "deep-2").iterdir()] == [f"lr{rate:g}"]
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["model"] for r in rows} == {"looped", "deep-1", "deep-2"}
    assert {r["lr"] for r in rows if r["model"] == "deep-2"} == {rate}
    # other rates are another sweep: the family is swept again over them
    bench(*args[:-4], "--lrs", "1e-3", "2e-3", "--workers", "1", "--models", "deep-2")
    assert set(json.loads((out / "tuning.json").read_text())["h10_error"]["deep"]) == {"0.001", "0.002"}


def test_bench_converged_budget_trains_each_model_until_it_stops_improving(tmp_path):
    out = tmp_path / "bench"
    bench("--out", str(out), "--worlds", "balls", "--models", "looped", "deep-1", "--seeds", "1",
           "--test-depths", "1", "--episodes", "6", "--max-episode-steps", "30", "--horizon", "10", "--budgets", "converged",
           "--converge-cap", "40", "--converge-eval-every", "1", "--converge-tolerance", "0.99", "--no-progress",
           "--device", "cpu", "--lrs", "1e-3", "--workers", "1")
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    # a 99% tolerance calls the curve flat once its last fifth holds four evaluations (step 16); a
    # fifth more (3 steps) to cool down
    assert {(r["model"], r["train_steps"], r["stop_reason"]) for r in rows} == {("looped", 19, "plateau"),
                                                                                 ("deep-1", 19, "plateau")}
    assert all(r["train_samples"] == 19 * 32 for r in rows)
    curves = [json.loads(line) for line in (out / "curves.jsonl").read_text().splitlines()]
    assert {c["model"] for c in curves} == {"looped", "deep-1"} and all(len(c["val_curve"]) == 19 for c in curves)
    assert (out / "learning_curves.png").exists()
    assert "stopped improving" in (out / "findings.md").read_text() and "1/1 seeds" in (out / "table.md").read_text()
    proc = here("bench", "--out", str(tmp_path / "b2"), "--budgets", "forever")
    assert proc.returncode == 2 and "converged" in proc.stderr

    # the kept scores stand in for the runs: with runs/ gone (a new machine, a later session) the
    # same command trains nothing and reports the same numbers
    kept = sorted((out / "scores").rglob("*.json"))
    assert [p.relative_to(out / "scores").parts[:2] for p in kept] == [("balls", "deep-1"), ("balls", "looped")]
    shutil.rmtree(out / "runs")
    for path in kept:  # scores kept by an older loopwm lack settings added since: at their defaults they match
        saved = json.loads(path.read_text())
        del saved["identity"]["train"]["model"]["slot_ids"]
        path.write_text(json.dumps(saved))
    before = [(r["model"], r["horizon"], r["error"], r["train_steps"]) for r in rows]
    bench("--out", str(out), "--worlds", "balls", "--models", "looped", "deep-1", "--seeds", "1",
           "--test-depths", "1", "--episodes", "6", "--max-episode-steps", "30", "--horizon", "10", "--budgets", "converged",
           "--converge-cap", "40", "--converge-eval-every", "1", "--converge-tolerance", "0.99", "--no-progress",
           "--device", "cpu", "--lrs", "1e-3", "--workers", "1")
    assert not (out / "runs").exists()
    again = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["model"], r["horizon"], r["error"], r["train_steps"]) for r in again] == before
    assert all(r["params"] > 0 and r["flops_per_step"] > 0 for r in again)  # timed on the rebuilt architectures
    # re-running one model adds to the report: the other model's rows, curves and rate stay (an
    # earlier report that lacks a setting added since counts as made at its default)
    config = json.loads((out / "config.json").read_text())
    del config["converge_ema"]
    (out / "config.json").write_text(json.dumps(config))
    bench("--out", str(out), "--worlds", "balls", "--models", "looped", "--seeds", "1",
           "--test-depths", "1", "--episodes", "6", "--max-episode-steps", "30", "--horizon", "10", "--budgets", "converged",
           "--converge-cap", "40", "--converge-eval-every", "1", "--converge-tolerance", "0.99", "--no-progress",
           "--device", "cpu", "--lrs", "1e-3", "--workers", "1")
    merged = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted((r["model"], r["horizon"], r["error"]) for r in merged) == sorted((m, h, e) for m, h, e, _ in before)
    assert {c["model"] for c in map(json.loads, (out / "curves.jsonl").read_text().splitlines())} == {"looped", "deep-1"}
    assert json.loads((out / "config.json").read_text())["kept_from_earlier"] == ["deep-1"]
    assert set(json.loads((out / "tuning.json").read_text())["best"]) == {"looped", "deep"}
    assert "deep-1" in (out / "table.md").read_text()
    # a changed setting (here the rule judged on a weight average) is a different run: it trains again
    # rather than reusing the kept score, and the curve the rule read is kept beside the live one
    bench("--out", str(out), "--worlds", "balls", "--models", "deep-1", "--seeds", "1",
          "--test-depths", "1", "--episodes", "6", "--max-episode-steps", "30", "--horizon", "10", "--budgets", "converged",
          "--converge-cap", "12", "--converge-eval-every", "1", "--converge-tolerance", "0.02", "--converge-ema", "0.9",
          "--no-progress", "--device", "cpu", "--lrs", "1e-3", "--workers", "1")
    assert (out / "runs" / "balls" / "deep-1").exists()
    # ... and a different comparison: the earlier looped rows are not mixed into its report
    assert {r["model"] for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())} == {"deep-1"}
    (curve,) = map(json.loads, (out / "curves.jsonl").read_text().splitlines())
    assert len(curve["val_avg_curve"]) == len(curve["val_curve"]) == 12 and curve["val_avg_curve"] != curve["val_curve"]


def test_doctor_reports_every_part_with_a_fix_for_problems():
    proc = loopwm("doctor", "--json", "--no-render", check=False)
    assert proc.returncode in (0, 1)  # 1 only when something is broken
    checks = {c["name"]: c for c in json.loads(proc.stdout)}
    assert {"loopwm", "python", "torch", "accelerator", "gymnasium", "mujoco", "java", "headless GL", "disk"} <= set(checks)
    assert checks["torch"]["status"] == "ok" and "threads" in checks["torch"]["detail"]
    assert all(c["fix"] for c in checks.values() if c["status"] != "ok")  # every problem comes with a fix
    assert proc.returncode == (1 if any(c["status"] == "broken" for c in checks.values()) else 0)


def test_bench_runs_a_gymnasium_world_and_a_model_subset(tmp_path):
    out = tmp_path / "bench"
    bench("--quick", "--out", str(out), "--worlds", "Pendulum-v1", "--models", "looped", "rssm",
           "--steps", "3", "--minutes", "0.01", "--episodes", "6", "--max-episode-steps", "30", "--horizon", "12",
           "--no-progress", "--device", "cpu", "--lrs", "2e-3", "--workers", "1")
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert {r["model"] for r in rows} == {"looped", "rssm"} and {r["world"] for r in rows} == {"Pendulum-v1"}
    assert "copy-last-observation floor" in (out / "findings.md").read_text()
    proc = here("bench", "--quick", "--out", str(out), "--models", "nope")
    assert proc.returncode == 2 and "unknown model" in proc.stderr


def test_bench_runs_the_rail_world_with_local_attention_and_narrower_loops(tmp_path):
    out = tmp_path / "bench"
    bench("--out", str(out), "--worlds", "rail", "--n-bodies", "8", "--rail-radius", "0.005", "--attention", "local",
           "--loop-widths", "16", "--models", "looped-d16", "deep-1", "--seeds", "1", "--test-depths", "1", "2", "--steps", "3",
           "--episodes", "6", "--horizon", "10", "--budgets", "steps", "--no-progress", "--device", "cpu", "--lrs", "1e-3",
           "--workers", "1")
    manifest = json.loads((out / "data" / "rail-r0.005" / "manifest.json").read_text())
    assert manifest["env_id"] == "loopwm/Rail-v0" and manifest["env_kwargs"]["rail_radius"] == 0.005
    models = {p.parts[-4]: json.loads(p.read_text())["model_meta"]["model"] for p in (out / "scores").rglob("steps.json")}
    assert set(models) == {"looped-d16", "deep-1"} and all(m["attention"] == "local" for m in models.values())
    assert models["looped-d16"]["d"] == 16 and models["deep-1"]["d"] == 64
    depth = [json.loads(line) for line in (out / "depth.jsonl").read_text().splitlines()]
    assert sorted((r["model"], r["depth"]) for r in depth) == [("looped-d16", 1), ("looped-d16", 2)]
    assert "looped-d16 loop's horizon-1 error" in (out / "findings.md").read_text()
    assert "looped-d16 loop's best test-time depth" in (out / "findings.md").read_text()
    for args, says in ((["--attention", "local", "--worlds", "Pendulum-v1"], "needs body positions"),
                       (["--loop-widths", "10"], "multiple of the 4 attention heads"),
                       (["--models", "looped-d16"], "needs --loop-widths"),
                       (["--attention", "sparse"], "unknown --attention"),
                       (["--speed-seconds", "0"], "--speed-seconds must be a positive")):
        proc = here("bench", "--out", str(tmp_path / "bad"), *args)
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, args


def test_rail_world_trains_and_evaluates_with_local_attention(tmp_path):
    loopwm("collect", "--env-id", "loopwm/Rail-v0", "--out", str(tmp_path / "data"), "--episodes", "4",
           "--n-bodies", "10", "--max-episode-steps", "40", "--env-args", '{"rail_radius": 0.02}')
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["env_kwargs"] == {"rail_radius": 0.02, "n_bodies": 10, "max_episode_steps": 40}
    loopwm("train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--steps", "2", "--batch-size", "4",
           "--no-progress", "--device", "cpu", "--threads", "1", "--model.attention", "local", "--model.attn-bias",
           *TINY_MODEL)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["attention"] == "local" and config["threads"] == 1
    small = ["--json", "--rollout-steps", "20", "--horizon", "10", "--max-windows", "8"]
    result = json.loads(loopwm("eval", str(tmp_path / "run"), *small).stdout)
    assert result["params"] > 0 and result["exit_rule"] == "fixed"
    # an entity model scores a world with more bodies than it was trained on
    loopwm("collect", "--env-id", "loopwm/Rail-v0", "--out", str(tmp_path / "data14"), "--episodes", "2",
           "--n-bodies", "14", "--max-episode-steps", "40")
    bigger = json.loads(loopwm("eval", str(tmp_path / "run"), *small, "--data", str(tmp_path / "data14"), "--depth", "6").stdout)
    assert bigger["depth"] == 6 and bigger["iterations_per_step"] == 6.0
    # an exit rule kept for the run becomes its default
    kept = json.loads(loopwm("eval", str(tmp_path / "run"), *small, "--exit", "delta", "--threshold", "1e9", "--depth", "5",
                             "--keep-exit").stdout)
    again = json.loads(loopwm("eval", str(tmp_path / "run"), *small).stdout)
    assert (again["exit_rule"], again["threshold"], again["depth"]) == ("delta", 1e9, 5)
    assert again["iterations_per_step"] == kept["iterations_per_step"] == 1.0  # a threshold that always fires


def test_sigterm_stops_a_parallel_collection_without_leaving_workers_and_it_resumes(tmp_path):
    import signal
    import time
    from pathlib import Path

    out = tmp_path / "data"
    proc = subprocess.Popen([sys.executable, "-m", "loopwm.cli", "collect", "--env-id", "loopwm/Balls-v0", "--out",
                             str(out), "--episodes", "2000", "--shard-episodes", "20", "--workers", "2", "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    def shards() -> int:
        try:
            return len(json.loads((out / "manifest.json").read_text())["shards"])
        except (OSError, ValueError, KeyError):
            return 0

    deadline = time.time() + 120
    while shards() == 0 and time.time() < deadline:  # stop it mid-way, after its first shard
        time.sleep(0.2)
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    workers = [int(p) for p in children.read_text().split()] if children.exists() else []
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "re-run the same command to resume" in err
    for _ in range(50):  # every worker has gone with its parent
        alive = [w for w in workers if Path(f"/proc/{w}").exists() and "spawn" in Path(f"/proc/{w}/cmdline").read_text()]
        if not alive:
            break
        time.sleep(0.2)
    assert workers and not alive, f"workers {alive} of {workers} outlived the collection"
    from loopwm.data import TrajectoryDataset

    assert TrajectoryDataset.load(out).episodes >= 20  # what was written is a valid dataset to resume


def test_compare_pairs_two_evaluations_of_the_same_windows(trained, tmp_path):
    common = ["--rollout-steps", "20", "--horizon", "10", "--max-windows", "8", "--per-window"]
    loopwm("eval", str(trained / "run"), *common, "--depth", "1", "--out", str(tmp_path / "d1"))
    loopwm("eval", str(trained / "run"), *common, "--depth", "3", "--out", str(tmp_path / "d3"))
    result = json.loads(here("compare", str(tmp_path / "d1"), str(tmp_path / "d3" / "eval.json"), "--json").stdout)
    assert result["horizons"] == [1, 2, 5, 10] and result["windows"] == 8
    reference, other = result["rows"]
    assert reference["gap"] == {} and other["depth"] == 3
    assert other["gap"]["10"] == pytest.approx(other["error"]["10"] / reference["error"]["10"] - 1, rel=1e-4)
    table = here("compare", str(tmp_path / "d1"), str(tmp_path / "d3"), "--horizons", "1", "10").stdout
    assert "d3 (depth 3)" in table and "± two paired standard errors" in table
    # the --json output saved to a file pairs as well, and reads by its file name
    saved = tmp_path / "saved-d3.json"
    saved.write_text(loopwm("eval", str(trained / "run"), *common, "--depth", "3", "--json").stdout)
    assert "saved-d3 (depth 3)" in here("compare", str(tmp_path / "d1"), str(saved)).stdout
    # windows that differ are refused with the fix, not paired by position
    loopwm("eval", str(trained / "run"), *common[:-2], "4", "--per-window", "--out", str(tmp_path / "w4"))
    proc = here("compare", str(tmp_path / "d1"), str(tmp_path / "w4"))
    assert proc.returncode == 2 and "other windows" in proc.stderr and "--max-windows" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command, target, said", [
    ("eval", "loopwm.eval.evaluate.evaluate", "loopwm: interrupted\n"),
    ("play", "loopwm.play.server.run_play", "loopwm: play server stopped\n"),
    ("train", "loopwm.train.loop.train", "loopwm: interrupted; re-run the same command to resume\n"),
])
def test_an_interrupt_promises_a_resume_only_where_the_command_keeps_its_progress(command, target, said, monkeypatch,
                                                                                  capsys, tmp_path):
    from loopwm.cli import main

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(target, stopped)
    argv = [command, str(tmp_path)] if command != "train" else [command, "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    assert main(argv) == 130
    assert capsys.readouterr().err == said


def test_a_world_with_substeps_is_collected_trained_and_scored_without_integrating_positions(tmp_path):
    from loopwm.checkpoint import read_checkpoint, resolve_checkpoint

    loopwm("collect", "--env-id", "loopwm/Rail-v0", "--out", str(tmp_path / "data"), "--episodes", "3",
           "--n-bodies", "10", "--max-episode-steps", "30", "--env-args", '{"rail_radius": 0.02, "substeps": 4}')
    kinematics = json.loads((tmp_path / "data" / "manifest.json").read_text())["kinematics"]
    assert kinematics["integrates"] is False and kinematics["dt"] == pytest.approx(0.2)
    loopwm("train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "run"), "--steps", "2", "--batch-size", "4",
           "--no-progress", "--device", "cpu", "--threads", "1", "--model.attention", "local", *TINY_MODEL)
    _, meta = read_checkpoint(resolve_checkpoint(str(tmp_path / "run")))
    assert meta["spec"]["integrates"] is False and meta["spec"]["dt"] == pytest.approx(0.2)
    result = json.loads(loopwm("eval", str(tmp_path / "run"), "--json", "--rollout-steps", "10", "--horizon", "5",
                               "--max-windows", "4").stdout)
    assert result["params"] > 0 and math.isfinite(result["open_loop_error"]["5"])
    # scored on data whose observed step spans another time, it refuses rather than moving bodies wrongly
    loopwm("collect", "--env-id", "loopwm/Rail-v0", "--out", str(tmp_path / "plain"), "--episodes", "2",
           "--n-bodies", "10", "--max-episode-steps", "30", "--env-args", '{"rail_radius": 0.02}')
    proc = loopwm("eval", str(tmp_path / "run"), "--data", str(tmp_path / "plain"), check=False)
    assert proc.returncode == 2 and "same dt and substeps" in proc.stderr and "Traceback" not in proc.stderr
