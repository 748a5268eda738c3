"""Text worlds: ScienceWorld collection from the real simulator (the `text` extra and a Java runtime)."""

import importlib.util
import json
import shutil
import sys

import pytest

from loopwm.text.collect import TextCollectConfig, check_ready, collect_text, trajectory_path
from loopwm.text.tasks import SPLITS, TASK_TYPES, TYPES
from loopwm.utils import LoopWMError

needs_express = pytest.mark.skipif(
    importlib.util.find_spec("textworld_express") is None or shutil.which("java") is None,
    reason="TextWorldExpress needs the text extra (pip install 'loopwm[text]') and a Java runtime")
needs_simulator = pytest.mark.skipif(
    importlib.util.find_spec("scienceworld") is None or shutil.which("java") is None,
    reason="ScienceWorld needs the text extra (pip install 'loopwm[text]') and a Java runtime")

SMALL = dict(tasks=["use-thermometer"], train_variations=2, dev_variations=0, test_variations=1,
             branches=1, branch_steps=3, workers=1, progress=False)


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    out = tmp_path_factory.mktemp("sciworld") / "data"
    collect_text(TextCollectConfig(out=str(out), **SMALL))
    return out


def trajectories(out):
    return {p: json.loads(p.read_text()) for p in sorted((out / "trajectories").glob("*/*/*.json"))}


def untimed(trajectory):
    """A trajectory without its wall-clock seconds, the one field a replay may change."""
    return {k: v for k, v in trajectory.items() if k != "seconds"}


def test_a_missing_extra_or_java_is_named_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "scienceworld", None)  # as if not installed
    with pytest.raises(LoopWMError, match=r'pip install "loopwm\[text\]"'):
        check_ready()
    monkeypatch.setitem(sys.modules, "scienceworld", type(sys)("scienceworld"))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(LoopWMError, match="openjdk-17-jre-headless"):
        check_ready()


@needs_simulator
def test_the_paper_types_cover_every_simulator_task():
    from scienceworld import ScienceWorldEnv

    env = ScienceWorldEnv("", envStepLimit=10)
    try:
        assert sorted(env.get_task_names()) == sorted(TASK_TYPES)
    finally:
        env.close()
    assert len(TYPES) == 14 and "Thermometer" in TYPES and TASK_TYPES["measure-melting-point-known-substance"] == "Melt"


@needs_simulator
def test_collection_records_gold_paths_and_branches_from_the_simulators_own_splits(collected):
    found = trajectories(collected)
    known = json.loads((collected / "variations.json").read_text())["use-thermometer"]
    assert set(known) == set(SPLITS) and not set(known["train"]) & set(known["test"])
    kinds = sorted((t["split"], t["kind"]) for t in found.values())
    assert kinds == [("test", "gold"), ("train", "branch0"), ("train", "branch0"), ("train", "gold"), ("train", "gold")]
    for t in found.values():
        assert t["variation"] in known[t["split"]]  # every variation comes from its own split's list
        assert t["type"] == "Thermometer" and t["task_description"].strip() and t["observation"].strip()
        assert all(step["action"] and isinstance(step["observation"], str) for step in t["steps"])
        assert "thermometer" in t["entities"] and t["entities"] == sorted(set(t["entities"]))  # what the simulator listed
    train_vs = {t["variation"] for t in found.values() if t["split"] == "train"}
    test_vs = {t["variation"] for t in found.values() if t["split"] == "test"}
    assert train_vs and test_vs and not train_vs & test_vs  # no test variation is ever in training data
    for t in found.values():
        if t["kind"] == "gold":
            assert t["steps"][-1]["done"] and t["steps"][-1]["score"] == 100  # the gold path solves the task
        else:
            gold = next(g for g in found.values() if g["kind"] == "gold" and g["variation"] == t["variation"])
            assert 0 <= t["branch_from"] < len(gold["steps"])
            prefix = [s["action"] for s in t["steps"][: t["branch_from"]]]
            assert prefix == [s["action"] for s in gold["steps"][: t["branch_from"]]]  # it followed the gold path
            assert len(t["steps"]) == t["branch_from"] + 3 or t["steps"][-1]["done"]
    manifest = json.loads((collected / "manifest.json").read_text())
    assert manifest["counts"]["train"]["trajectories"] == 4 and manifest["counts"]["dev"]["trajectories"] == 0
    assert manifest["counts"]["test"]["transitions"] == sum(len(t["steps"]) for t in found.values() if t["split"] == "test")


@needs_simulator
def test_a_killed_collection_resumes_with_only_the_missing_trajectories(collected):
    before = trajectories(collected)
    gone = trajectory_path(collected, "train", "use-thermometer", sorted(t["variation"] for t in before.values()
                                                                          if t["split"] == "train")[0], "branch0")
    gone.unlink()
    stamps = {p: p.stat().st_mtime_ns for p in before if p != gone}
    collect_text(TextCollectConfig(out=str(collected), **SMALL))
    after = trajectories(collected)
    assert set(after) == set(before) and {p: p.stat().st_mtime_ns for p in stamps} == stamps  # the others untouched
    assert untimed(after[gone]) == untimed(before[gone])  # seeded: the same branch again, recorded afresh


@needs_simulator
def test_a_trajectory_does_not_depend_on_what_its_simulator_played_before(collected, tmp_path):
    # ScienceWorld iterates Java hash sets, whose order (even which animal a variation holds) followed
    # the VM's history; collected again beside another task, in two workers, nothing may change
    other = tmp_path / "data"
    collect_text(TextCollectConfig(out=str(other), **{**SMALL, "tasks": ["use-thermometer", "find-animal"], "workers": 2}))
    alone = {p.relative_to(collected): untimed(t) for p, t in trajectories(collected).items()}
    beside = {p.relative_to(other): untimed(t) for p, t in trajectories(other).items() if t["task"] == "use-thermometer"}
    assert alone == beside


@needs_simulator
def test_a_gold_path_does_not_follow_the_variation_played_before_it(monkeypatch):
    # ScienceWorld's planner kept the search patterns of one load for the next: boil 23's gold path
    # was 120 steps after boil 21 in the same VM and 102 in a fresh one, until the adapter cleared them
    from loopwm.text.simulators import DETERMINISTIC_JVM, ScienceWorld

    monkeypatch.setenv("JAVA_TOOL_OPTIONS", DETERMINISTIC_JVM)
    job = {"task": "boil", "split": "test", "variation": 23, "kind": "gold"}
    sim = ScienceWorld(200)
    sim.play({**job, "variation": 21})
    after = sim.play(job)
    sim.env.close()
    fresh = ScienceWorld(200)
    alone = fresh.play(job)
    fresh.env.close()
    assert untimed(after) == untimed(alone) and alone["gold_length"] > 0


@needs_simulator
def test_collection_refuses_other_settings_and_unknown_tasks(collected, tmp_path):
    with pytest.raises(LoopWMError, match="other settings"):
        collect_text(TextCollectConfig(out=str(collected), **{**SMALL, "train_variations": 3}))
    with pytest.raises(LoopWMError, match="unknown scienceworld task"):
        collect_text(TextCollectConfig(out=str(tmp_path / "x"), **{**SMALL, "tasks": ["bake-a-cake"]}))


def test_every_household_game_has_its_gold_agent():
    from loopwm.text.simulators import TWX_GOLD_AGENTS
    from loopwm.text.tasks import TWX_TYPES

    assert set(TWX_GOLD_AGENTS) == set(TWX_TYPES)  # a game collect accepts must have an agent to run


def test_an_unknown_simulator_is_named():
    with pytest.raises(LoopWMError, match="unknown text simulator 'zork'"):
        check_ready("zork")


@needs_express
def test_the_alfworld_stand_in_records_household_games_from_their_own_seed_splits(tmp_path):
    out = tmp_path / "twx"
    collect_text(TextCollectConfig(out=str(out), simulator="textworld-express", tasks=["cookingworld", "coin"],
                                   train_variations=2, dev_variations=0, test_variations=1, branch_steps=3, workers=1,
                                   progress=False))
    found = trajectories(out)
    known = json.loads((out / "variations.json").read_text())
    assert len(found) == 2 * (2 + 2 + 1)  # per game: 2 train gold + 2 branches + 1 test gold
    for t in found.values():
        assert t["variation"] in known[t["task"]][t["split"]] and t["type"] in ("CookingWorld", "CoinCollector")
        assert t["observation"].strip() and t["entities"] and all(s["observation"] for s in t["steps"])
        if t["kind"] == "gold":
            assert t["steps"][-1]["done"] and t["steps"][-1]["score"] == 100
    assert not {t["variation"] for t in found.values() if t["split"] == "train"} & \
        {t["variation"] for t in found.values() if t["split"] == "test"}
    cooking = next(t for t in found.values() if t["task"] == "cookingworld")
    assert "cookbook" in cooking["entities"]
    assert json.loads((out / "manifest.json").read_text())["simulator"] == "textworld-express"
    # collected again, in another VM, nothing may change: Coin Collector's gold agent walks at
    # random, and the package drew that walk unseeded
    again = tmp_path / "twx-again"
    collect_text(TextCollectConfig(out=str(again), simulator="textworld-express", tasks=["cookingworld", "coin"],
                                   train_variations=2, dev_variations=0, test_variations=1, branch_steps=3, workers=1,
                                   progress=False))
    assert {p.relative_to(again): untimed(t) for p, t in trajectories(again).items()} == \
        {p.relative_to(out): untimed(t) for p, t in found.items()}


@needs_express
def test_a_household_gold_path_is_the_games_own_agent_seeded_by_the_variation(monkeypatch):
    from loopwm.text import simulators
    from loopwm.text.simulators import TextWorldExpress

    with monkeypatch.context() as m:  # a jar without an agent the adapter runs is named at the start
        m.setitem(simulators.TWX_GOLD_AGENTS, "twc", ("NoSuchGoldAgent", 50))
        with pytest.raises(LoopWMError, match="lacks the gold agent NoSuchGoldAgent"):
            TextWorldExpress(100)

    sim = TextWorldExpress(100)
    try:
        paths = {}
        for task in ("cookingworld", "twc", "coin"):
            seed = sim.variations(task)["test"][0]
            sim.env.reset(seed=seed, gameFold="test", gameName=task, gameParams="", generateGoldPath=True)
            theirs = list(sim.env.getGoldActionSequence())
            paths[task] = [sim.gold_path(task, seed, "test") for _ in range(2)]
            assert paths[task][0] == paths[task][1] and paths[task][0], task  # the same walk at every load
            if task == "cookingworld":  # whose generator the package already seeds: its path unchanged
                assert paths[task][0] == theirs
        played = sim.play({"task": "coin", "split": "test", "variation": sim.variations("coin")["test"][0], "kind": "gold"})
        assert played["steps"][-1]["done"] and played["steps"][-1]["score"] == 100
    finally:
        sim.env.close()
