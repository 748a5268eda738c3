"""The `loopwm` command. Each subcommand is a typed dataclass config; tyro turns it into flags.

    loopwm demo     collect, train, evaluate and draw on the built-in world
    loopwm collect  record episodes from an environment into a dataset folder
    loopwm train    train (or resume) a looped world model on a dataset
    loopwm eval     evaluate a run on held-out episodes (--json for machines)
    loopwm compare  pair two or more evaluations window by window: gaps with standard errors
    loopwm bench    train and score the looped model against baselines on the same data
    loopwm plan     act in the real environment by planning with a world model (or the true simulator)
    loopwm value    fit a terminal value for the planner from a dataset's rewards
    loopwm halting  fit a per-token halting head to a trained looped model (for --exit token-halt)
    loopwm play     drive the real world and the model's imagined one side by side in the browser
    loopwm text     text worlds: text collect (ScienceWorld trajectories), text train, text eval, text baselines
    loopwm import   turn a Minari dataset into a loopwm dataset (loopwm import minari PATH_OR_ID --out DIR)
    loopwm export   write a loopwm dataset as a Minari dataset (loopwm export minari DATA --dataset-id ID)
"""

from __future__ import annotations

import json
import sys

import tyro

from loopwm.utils import LoopWMError, read_json


def main(argv: list[str] | None = None) -> int:
    # heavy imports inside main so `loopwm --help` stays quick and import errors surface as messages
    from loopwm.bench import BenchConfig, run_bench
    from loopwm.data import CollectConfig, collect
    from loopwm.data.minari_io import ExportConfig, ImportConfig, run_export, run_import
    from loopwm.demo import DemoConfig, run_demo
    from loopwm.doctor import DoctorConfig, doctor
    from loopwm.eval.compare import CompareConfig, compare, format_comparison
    from loopwm.eval.evaluate import EvalConfig, evaluate, format_table
    from loopwm.plan.control import PlanConfig, format_result, run_plan
    from loopwm.plan.value import ValueConfig, fit_value, value_warning
    from loopwm.play.server import PlayConfig, run_play
    from loopwm.text import TextCommand
    from loopwm.text.collect import TextCollectConfig, collect_text
    from loopwm.text.evaluate import (TextBaselinesConfig, TextEvalConfig, evaluate_text, format_baselines_table,
                                      format_text_table, score_baselines)
    from loopwm.text.train import TextTrainConfig, train_text
    from loopwm.train.halting import HaltingConfig, run_halting
    from loopwm.train.loop import TrainConfig, train

    commands = {
        "demo": DemoConfig,
        "collect": CollectConfig,
        "train": TrainConfig,
        "eval": EvalConfig,
        "compare": CompareConfig,
        "bench": BenchConfig,
        "plan": PlanConfig,
        "value": ValueConfig,
        "halting": HaltingConfig,
        "play": PlayConfig,
        "text": TextCommand,
        "import": ImportConfig,
        "export": ExportConfig,
        "doctor": DoctorConfig,
    }
    cfg = tyro.extras.subcommand_cli_from_dict(commands, args=argv, prog="loopwm",
                                               description="Looped World Models: train, evaluate and use learned simulators.")
    if isinstance(cfg, TextCommand):
        cfg = cfg.command
    _stop_on_sigterm()
    try:
        if isinstance(cfg, DemoConfig):
            run_demo(cfg)
        elif isinstance(cfg, CollectConfig):
            path = collect(cfg)
            print(f"dataset written to {path}")
        elif isinstance(cfg, TrainConfig):
            run = train(cfg)
            print(f"run written to {run}")
        elif isinstance(cfg, BenchConfig):
            print(f"results written to {run_bench(cfg)}")
        elif isinstance(cfg, DoctorConfig):
            return doctor(cfg)
        elif isinstance(cfg, ImportConfig):
            print(f"dataset written to {run_import(cfg)}")
        elif isinstance(cfg, ExportConfig):
            exported = run_export(cfg)
            print(f"Minari dataset {exported.spec.dataset_id} written to {exported.spec.data_path}")
        elif isinstance(cfg, PlanConfig):
            result = run_plan(cfg)
            print(json.dumps(result) if cfg.json else format_result(result))
        elif isinstance(cfg, TextCollectConfig):
            print(f"text dataset written to {collect_text(cfg)}")
        elif isinstance(cfg, TextTrainConfig):
            print(f"text run written to {train_text(cfg)}")
        elif isinstance(cfg, TextEvalConfig):
            result = evaluate_text(cfg)
            print(json.dumps(result) if cfg.json else format_text_table(result))
        elif isinstance(cfg, TextBaselinesConfig):
            result = score_baselines(cfg)
            print(json.dumps(result) if cfg.json else format_baselines_table(result))
        elif isinstance(cfg, ValueConfig):
            out = fit_value(cfg)
            meta = read_json(out / "value.json", "value metadata")
            fit = meta["metrics"]
            held = fit["val"] or fit["train"]
            ev, rho = held["explained_variance"], held["spearman"]
            which = "held-out episodes" if fit["val"] else "training episodes (too few to hold any out)"
            print(f"value written to {out} ({which}: explained variance "
                  f"{'n/a' if ev is None else f'{ev:.2f}'}, rank correlation {'n/a' if rho is None else f'{rho:.2f}'})")
            caution = value_warning(meta)
            if caution:
                print(f"note: {caution}")
        elif isinstance(cfg, HaltingConfig):
            path, report = run_halting(cfg)
            rho = report["held_out_rank_corr"]
            print(f"halting head written to {path} ({report['examples']:,} examples from {report['windows']} windows; "
                  f"held out: squared error {report['held_out_mse']:.3f} against {report['held_out_mse_of_mean']:.3f} "
                  f"for the mean, rank correlation {'n/a' if rho is None else f'{rho:.2f}'})")
        elif isinstance(cfg, CompareConfig):
            result = compare(cfg)
            print(json.dumps(result) if cfg.json else format_comparison(result))
        elif isinstance(cfg, PlayConfig):
            run_play(cfg)
        elif isinstance(cfg, EvalConfig):
            result = evaluate(cfg)
            if cfg.json:
                print(json.dumps(result))
            else:
                print(format_table(result))
    except LoopWMError as err:
        print(f"loopwm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # only the commands that keep their progress on disk may promise a resume
        resumable = (DemoConfig, CollectConfig, TrainConfig, BenchConfig, TextCollectConfig, TextTrainConfig)
        if isinstance(cfg, resumable):
            print("loopwm: interrupted; re-run the same command to resume", file=sys.stderr)
        elif isinstance(cfg, PlayConfig):
            print("loopwm: play server stopped", file=sys.stderr)
        else:
            print("loopwm: interrupted", file=sys.stderr)
        return 130
    return 0


def _stop_on_sigterm() -> None:
    """Treat SIGTERM (kill, a job scheduler) like Ctrl-C, so cleanup runs: worker pools shut down
    instead of outliving the command, and the user is told to re-run to resume."""
    import signal

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread (main() called from a worker thread): leave signals alone
        pass


if __name__ == "__main__":
    raise SystemExit(main())
