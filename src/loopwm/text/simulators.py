"""The text simulators `loopwm text collect` records from, one adapter each, run inside workers.

- `scienceworld` (the paper's benchmark): 30 tasks, each with its own train/dev/test variations.
- `textworld-express` (a stand-in for ALFWorld, whose game files are a download we do not make):
  household games generated on the fly (CookingWorld, TextWorld-Commonsense, Coin Collector), each
  with its own train/dev/test seeds. It is not ALFWorld and is reported under its own name.

An adapter knows how to start its simulator, list a task's variations per split, and play one
trajectory from a fresh load: the gold path, or a branch that follows the gold path for a number
of steps and then takes random valid actions. Both run on Java (py4j), one VM per worker process.

ScienceWorld keeps its objects in Java hash sets, and what it builds and lists follows their order:
which doors a gold path opens first, even which animal a variation holds. With the VM's default
identity hashes that order depends on everything the VM did before (the tasks its worker played
earlier, how many processors it saw), so two collections by one command differed. The workers'
VMs therefore run with one constant identity hash (`DETERMINISTIC_JVM`): every set then iterates in
insertion order, and a trajectory depends only on its task, variation and seed (checked: the same
trajectories whatever was played before, on 1 or 2 processors; collecting three tasks took 239 s
against 205 s with the default hash, once each, beside other jobs).

Its gold-path planner also remembers the search patterns it worked out, in one map for the whole VM
(`PathFinder.precomputedExhaustivePaths`), and reuses them in later loads of other variations, whose
rooms differ: the gold path of boil variation 23 came out 120 steps long after variation 21 had been
played in the same VM, 102 in a fresh one (session 42). The adapter empties that map before every
load, so a gold path is worked out afresh from its own variation each time.

TextWorldExpress builds each game from its seed alone, but its gold agents walk at random (Coin
Collector searches room by room, TextWorld-Commonsense puts things away on the way) and every game
but CookingWorld draws that walk from an unseeded generator (`new scala.util.Random()` in each
`mkGameWithGoldPath`; read with `javap`, session 43): the same twc or coin variation got a different
gold path at every load, in fresh VMs too. The adapter therefore runs the game's own gold agent
itself, as that method does (up to its number of attempts, each on a freshly made game), with the
generator seeded by the variation as CookingWorld's already is; CookingWorld's gold path is
unchanged by this.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np

from loopwm.text.tasks import TASK_TYPES, TWX_TYPES
from loopwm.utils import LoopWMError

DETERMINISTIC_JVM = "-XX:+IgnoreUnrecognizedVMOptions -XX:+UnlockExperimentalVMOptions -XX:hashCode=2"
"""Java options of the simulator VMs: a constant identity hash (see above); ignored, not fatal, on a VM
that lacks the option."""

SIMULATORS = {"scienceworld": ("scienceworld", TASK_TYPES), "textworld-express": ("textworld_express", TWX_TYPES)}
"""Simulator name -> (its Python package, its task -> type map)."""


def check_ready(simulator: str = "scienceworld") -> None:
    """A one-line error when the simulator's package or Java is missing."""
    if simulator not in SIMULATORS:
        raise LoopWMError(f"unknown text simulator {simulator!r}: choose one of {', '.join(SIMULATORS)}")
    package = SIMULATORS[simulator][0]
    try:
        __import__(package)
    except ImportError as err:
        raise LoopWMError(f'text worlds need the text extra: pip install "loopwm[text]" ({simulator} is missing; it '
                          "also needs a Java runtime, e.g. the Debian package openjdk-17-jre-headless)") from err
    if shutil.which("java") is None:
        raise LoopWMError(f"{simulator} runs on Java, and no `java` is on PATH: install a Java runtime "
                          "(Debian: apt-get install openjdk-17-jre-headless)")


def _record(job: dict, task_types: dict, first: str, steps: list, entities: set, description: str, gold: list,
            start: float, branch_from) -> dict:
    return {**{k: job[k] for k in ("task", "split", "variation", "kind")}, "type": task_types[job["task"]],
            "branch_from": branch_from, "task_description": description, "observation": first, "steps": steps,
            "entities": sorted(entities), "gold_length": len(gold), "seconds": time.perf_counter() - start}


def _walk(job: dict, gold: list[str], step, valid_actions) -> tuple[list, int | None]:
    """The gold path to its end, or a branch: gold for a random number of steps, then random valid actions."""
    steps: list[dict] = []
    if job["kind"] == "gold":
        for action in gold:
            steps.append(step(action))
            if steps[-1]["done"]:
                break
        return steps, None
    rng = np.random.default_rng(job["seed"])
    branch_from = int(rng.integers(0, max(job["gold_steps"], 1)))  # before the gold path completes the task
    for action in gold[:branch_from]:
        steps.append(step(action))
    for _ in range(job["branch_steps"]):
        if steps and steps[-1]["done"]:
            break
        valid = sorted(valid_actions())  # sorted: the draw must not depend on list order
        steps.append(step(valid[int(rng.integers(len(valid)))] if valid else "look around"))
    return steps, branch_from


class ScienceWorld:
    def __init__(self, step_limit: int):
        from scienceworld import ScienceWorldEnv

        self.env = ScienceWorldEnv("", envStepLimit=step_limit)
        try:  # the planner's memory of search patterns, shared by every load in this VM (see above)
            self.planner_memory = self.env._gateway.jvm.scienceworld.goldagent.PathFinder.precomputedExhaustivePaths()
            self.planner_memory.size()
        except Exception as e:  # py4j raises its own errors for a class or method this jar lacks
            raise LoopWMError(f"this scienceworld package does not have the gold-path planner loopwm expects ({e}); "
                              "install the pinned one: pip install 'loopwm[text]'") from e

    def variations(self, task: str) -> dict[str, list[int]]:
        self.env.load(task, 0, "", generateGoldPath=False)
        return {"train": list(self.env.get_variations_train()), "dev": list(self.env.get_variations_dev()),
                "test": list(self.env.get_variations_test())}

    def play(self, job: dict) -> dict:
        env, start, entities = self.env, time.perf_counter(), set()
        self.planner_memory.clear()  # else the gold path follows what this VM played before
        env.load(job["task"], job["variation"], "", generateGoldPath=True)
        gold = list(env.get_gold_action_sequence())
        first = env.server.step("look around")  # the first observation, as the simulator's reset gives it
        entities.update(env.get_possible_objects())

        def step(action: str) -> dict:
            observation = env.server.step(action)  # the raw step: the high-level one also lists valid actions
            entities.update(env.get_possible_objects())  # about 7 ms: what is in view now
            return {"action": action, "observation": observation, "score": int(round(100 * env.server.getScore())),
                    "done": bool(env.server.getCompleted())}

        steps, branch_from = _walk(job, gold, step, env.get_valid_action_object_combinations)
        return _record(job, TASK_TYPES, first, steps, entities, env.taskdescription(), gold, start, branch_from)


def _names(tree, out: set[str]) -> set[str]:
    """Every object name in a TextWorldExpress object tree (nested dicts with "name" fields)."""
    if isinstance(tree, dict):
        if isinstance(tree.get("name"), str):
            out.add(tree["name"])
        for value in tree.values():
            _names(value, out)
    elif isinstance(tree, list):
        for value in tree:
            _names(value, out)
    return out


_VERBS = {"take", "put", "open", "close", "examine", "eat", "drop", "read", "cook", "slice", "chop", "dice",
          "prepare", "insert", "move", "drink", "use", "look", "inventory", "pick"}
_LINKS = (" in ", " on ", " with ", " into ", " from ")
_MOVES = {"north", "south", "east", "west", "around", "up", "down"}


def _action_objects(actions) -> set[str]:
    """Object names in valid actions ("put knife in dining chair" -> knife, dining chair): where a game
    keeps no object tree (TextWorld-Commonsense, Coin Collector), what the simulator offers to act on."""
    found = set()
    for action in actions:
        words = action.split(" ", 1)
        if len(words) < 2 or words[0] not in _VERBS:
            continue
        rest = words[1]
        for link in _LINKS:
            rest = rest.replace(link, "|")
        found.update(p.strip() for p in rest.split("|") if p.strip() and p.strip() not in _MOVES)
    return found


TWX_GOLD_AGENTS = {"cookingworld": ("CookingWorldGoldAgent", 50), "twc": ("TWCGoldAgent", 50),
                   "coin": ("CoinGoldAgent", 50), "mapreader": ("MapReaderGoldAgent", 1),
                   "arithmetic": ("ArithmeticGoldAgent", 50), "sorting": ("SortingGoldAgent", 50),
                   "simonsays": ("SimonSaysGoldAgent", 50), "peckingorder": ("PeckingOrderGoldAgent", 50)}
"""TextWorldExpress game -> (its gold agent's class, the attempts its generator gives it), as in the jar."""


class TextWorldExpress:
    def __init__(self, step_limit: int):
        from textworld_express import TextWorldExpressEnv

        self.env = TextWorldExpressEnv(envStepLimit=step_limit)
        self.jvm = self.env._gateway.jvm
        for agent_class, _ in TWX_GOLD_AGENTS.values():  # py4j names a missing class without complaint until called
            try:
                self.jvm.java.lang.Class.forName(f"textworldexpress.goldagent.{agent_class}")
            except Exception as e:
                self.env.close()
                raise LoopWMError(f"this textworld-express package lacks the gold agent {agent_class} loopwm runs; "
                                  "install the pinned one: pip install 'loopwm[text]'") from e

    def gold_path(self, task: str, seed: int, fold: str) -> list[str]:
        """The game's own gold agent run on the variation's game, drawing its walk from a generator
        seeded by the variation (see above); empty when no attempt reaches the goal, as in the jar."""
        from py4j.java_gateway import get_field

        agent_class, attempts = TWX_GOLD_AGENTS[task]
        agent, walk = getattr(self.jvm.textworldexpress.goldagent, agent_class), self.jvm.scala.util.Random(int(seed))
        generator = self.env.server.gameGenerator()  # the one the load made, with the game's settings
        for _ in range(attempts):
            done_and_path = agent(generator.mkGame(int(seed), fold)).mkGoldPath(walk)
            if get_field(done_and_path, "_1"):  # a scala Tuple2 (reached the goal, the actions)
                return list(get_field(done_and_path, "_2"))
        return []

    def variations(self, task: str) -> dict[str, list[int]]:
        self.env.load(task, "")
        return {"train": list(self.env.getValidSeedsTrain()), "dev": list(self.env.getValidSeedsDev()),
                "test": list(self.env.getValidSeedsTest())}

    def play(self, job: dict) -> dict:
        env, start = self.env, time.perf_counter()
        first, infos = env.reset(seed=job["variation"], gameFold=job["split"], gameName=job["task"], gameParams="",
                                 generateGoldPath=False)
        gold = self.gold_path(job["task"], job["variation"], job["split"])
        if gold and gold[0] == "look around":
            gold = gold[1:]  # the reset's observation is that look already
        entities = _names(env.getObjectTree(), set())  # the whole world, every room, at the start (CookingWorld)
        state = {"valid": list(infos.get("validActions", []))}
        entities |= _action_objects(state["valid"])

        def step(action: str) -> dict:
            observation, _, done, info = env.step(action)
            state["valid"] = list(info.get("validActions", []))
            entities.update(_action_objects(state["valid"]))
            return {"action": action, "observation": observation, "score": int(round(100 * float(info.get("score", 0)))),
                    "done": bool(done)}

        steps, branch_from = _walk(job, gold, step, lambda: state["valid"])
        return _record(job, TWX_TYPES, first, steps, entities, infos.get("taskDescription", ""), gold, start, branch_from)


ADAPTERS = {"scienceworld": ScienceWorld, "textworld-express": TextWorldExpress}

# ----- in the workers: one simulator per process -----
_SIM = None


def worker_init(simulator: str, step_limit: int) -> None:
    global _SIM
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # read by every VM this worker starts (py4j launches plain `java`); the user's own options are kept
    os.environ["JAVA_TOOL_OPTIONS"] = f"{os.environ.get('JAVA_TOOL_OPTIONS', '')} {DETERMINISTIC_JVM}".strip()
    _SIM = ADAPTERS[simulator](step_limit)


def variations(task: str) -> dict[str, list[int]]:
    return _SIM.variations(task)


def play(job: dict) -> dict:
    return _SIM.play(job)
