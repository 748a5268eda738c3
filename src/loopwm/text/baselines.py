"""Answers without a learned model, scored beside every text world model by the same code.

- `copy`: the context's last observation.
- `lookup`: the observation that most often followed the last action's string in the training
  split (the copy when that action was never seen). It knows the world's templates, not its state.
- `recall`: the reply the last action got the previous time it was taken in this episode, as far as
  the context has seen (the lookup when it was not taken before). Episodic memory: right whenever
  the world did not change in between (a room looked at again, a reading of something at rest).
- `trend`: the recall, with every number moved along its trend: a least-squares line through the
  last few replies to the same action that share the recall's wording (numbers aside), read at the
  step being predicted. The floor for readings that change at a steady rate (a block sliding down a
  plane, a pot heating up); the recall when there are fewer than two such replies.
- `trend-context` (with a model's Batcher): the trend from the transitions the model's own context
  window holds whole, so a model is compared with what it was given to read.

A model that only beats `lookup` knows the templates; one that beats `recall` and `trend` tracks
the world's state as well as the history in front of it does.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from typing import Callable, Iterator

import numpy as np

from loopwm.text.corpus import Batcher, Sample, Trajectory, earlier_replies
from loopwm.text.model import MAX_HINT_TAG, SIMILAR_TAG, check_hint_kind

BASELINES = ("copy", "lookup", "recall", "trend", "trend-context")  # in the order text eval prints them
# a number in a reply: digits with an optional fraction and sign (not a hyphen inside a word)
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")
# earlier replies a trend line is fitted through (the most recent ones). Chosen on the dev split at 5
# actions: 2 / 4 / 8 / 16 / 32 / all of them gave 54.8 / 64.2 / 66.0 / 69.5 / 69.0 / 69.5 EM (rounded
# readings need many points to pin a slope down)
TREND_REPLIES = 16


def lookup_table(trajs: list[Trajectory]) -> dict[str, str]:
    """Action string -> the observation that most often followed it in these trajectories."""
    seen: dict[str, Counter] = defaultdict(Counter)
    for traj in trajs:
        for action, obs in zip(traj.actions, traj.observations[1:]):
            seen[action][obs] += 1
    return {a: c.most_common(1)[0][0] for a, c in seen.items()}


def template(text: str) -> str:
    """The reply with every number masked: two readings of one gauge share it."""
    return NUMBER.sub("#", text)


def extrapolate(replies: list[tuple[int, str]], step: int) -> str | None:
    """The last reply with each number read off a line fitted through the same number in the last
    TREND_REPLIES replies of the same wording, at `step`; None with fewer than two such replies."""
    last = replies[-1][1]
    shape = template(last)
    same = [(j, NUMBER.findall(r)) for j, r in replies if template(r) == shape][-TREND_REPLIES:]
    if len(same) < 2 or not same[-1][1]:
        return None
    steps = np.array([j for j, _ in same], dtype=np.float64)  # (R,)
    values = np.array([[float(v) for v in nums] for _, nums in same])  # (R, numbers in the reply)
    slope, intercept = np.polyfit(steps, values, 1)  # (numbers,), (numbers,)
    guess = slope * step + intercept
    decimals = [len(v.split(".")[1]) if "." in v else 0 for v in same[-1][1]]
    texts = iter(f"{g:.{d}f}" if d else str(int(np.floor(g + 0.5))) for g, d in zip(guess, decimals))
    return NUMBER.sub(lambda _: next(texts), last)


def trend_answer(replies: list[tuple[int, str]], step: int, fallback: str) -> str:
    """The trend baseline's reply at `step` from these earlier replies: the fallback when there are
    none, the last one when they hold no line."""
    if not replies:
        return fallback
    guess = extrapolate(replies, step)
    return replies[-1][1] if guess is None else guess


def baseline_answers(samples: list[Sample], trajs: list[Trajectory], table: dict[str, str],
                     batcher: Batcher | None = None) -> dict[str, list[str]]:
    """Each baseline's reply to each sample (the observation after a_{t+k}, from the context o_0 .. o_t);
    with a model's `batcher`, `trend-context` as well."""
    out: dict[str, list[str]] = {name: [] for name in BASELINES if batcher is not None or name != "trend-context"}
    for s in samples:
        traj = trajs[s.traj]
        last_obs, action = traj.observations[s.t], traj.actions[s.t + s.k - 1]
        looked_up = table.get(action, last_obs)
        replies = earlier_replies(traj, s.t, action)
        out["copy"].append(last_obs)
        out["lookup"].append(looked_up)
        out["recall"].append(replies[-1][1] if replies else looked_up)
        out["trend"].append(trend_answer(replies, s.t + s.k, looked_up))
        if batcher is not None:
            first = batcher.first_whole_step(traj, s.t)
            out["trend-context"].append(trend_answer([r for r in replies if r[0] >= first], s.t + s.k, looked_up))
    return out


# with hints "similar": another action counts as similar to the last one when at least this share of
# their words (as sets) is shared ("move seed in jar to pot 1" and "... to pot 2": 6 of 8), and at most
# this many such actions are given
SIMILAR_OVERLAP = 0.5
SIMILAR_ACTIONS = 4


def word_overlap(a: str, b: str) -> float:
    """Shared words over all words of two action strings (as sets): 1 for the same words."""
    x, y = set(a.split()), set(b.split())
    return len(x & y) / len(x | y) if x | y else 1.0


def similar_replies(traj: Trajectory, t: int, action: str, n: int) -> list[tuple[int, str, str]]:
    """(step, action, reply) of the newest reply to each of the `n` earlier actions most like `action`
    (SIMILAR_OVERLAP at least; the same string excluded) within the context o_0 .. o_t: the most alike
    first, the newer first among equals."""
    newest: dict[str, int] = {}
    for i in range(t):
        if traj.actions[i] != action:
            newest[traj.actions[i]] = i
    scored = [(word_overlap(action, a), i) for a, i in newest.items()]
    chosen = sorted([x for x in scored if x[0] >= SIMILAR_OVERLAP], reverse=True)[:n]
    return [(i + 1, traj.actions[i], traj.observations[i + 1]) for _, i in chosen]


# with hints "since": the actions since the remembered reply are given, the newest SINCE_ACTIONS of them,
# each with its reply where the context holds it and it is at most SINCE_REPLY_WORDS words ("The door is
# now open."); a longer reply (a room described) is left to the replies hints, its action alone is given
SINCE_ACTIONS = 16
SINCE_REPLY_WORDS = 12


def since_text(traj: Trajectory, j: int, t: int, k: int) -> str:
    """What happened between o_j (an earlier reply to the last action a_{t+k-1}) and that action: the
    actions a_j .. a_{t+k-2}, oldest first, one line "> action" each, each followed by its reply o_{i+1}
    when the context o_0 .. o_t holds it and it is short. Empty when nothing was done in between."""
    lines = []
    for i in range(max(j, t + k - 1 - SINCE_ACTIONS), t + k - 1):
        lines.append(f"> {traj.actions[i]}")
        if i < t and len(traj.observations[i + 1].split()) <= SINCE_REPLY_WORDS:
            lines.append(traj.observations[i + 1])
    return "\n".join(lines)


# with hints "mentions": the lines of earlier replies that name what the last action names, found by the
# action's words after its verb, short linking words left out ("orange", "seed", "jar", "flower", "pot",
# "1"), then by its word pairs ("seed jar"): at most MENTION_LINES lines, MENTION_PER_REPLY from any one
# reply (a room's description would otherwise fill them with its doors)
MENTION_LINES = 6
MENTION_PER_REPLY = 2
_LINKING = frozenset("a an the in on to into onto at from with of and or is".split())
_WORD = re.compile(r"[a-z0-9]+")


def words_of(text: str) -> list[str]:
    """The words of `text`, lower-cased, punctuation dropped."""
    return _WORD.findall(text.lower())


def named_words(action: str) -> set[str]:
    """What `action` names: its words after the verb, linking words left out."""
    return set(words_of(action)[1:]) - _LINKING


def other_lines(traj: Trajectory, t: int, action: str) -> Iterator[tuple[int, str]]:
    """(step, line) of every line of the replies o_1 .. o_t, oldest first, replies to `action` itself
    left out (the "replies" hints give them)."""
    for j in range(1, t + 1):
        if traj.actions[j - 1] != action:
            for line in traj.observations[j].split("\n"):
                yield j, line


def mention_lines(traj: Trajectory, t: int, action: str, n: int) -> list[tuple[int, str]]:
    """(step, line) of up to `n` lines of the replies o_1 .. o_t that name what `action` names: ranked by
    how many of its words after the verb (linking words left out) they hold, then how many of its word
    pairs, then the newer first; each distinct line (outer spaces stripped) once, at its newest step,
    and at most MENTION_PER_REPLY from one reply. Replies to `action` itself are left out (the "replies"
    hints give them). The seed jar's line "a seed jar (containing a orange seed, a orange seed)" tells
    that "move orange seed in seed jar to flower pot 1" names one of several identical seeds (an
    ambiguity prompt), and "a flower pot 1 (containing nothing)" where it goes."""
    words = words_of(action)
    names = named_words(action)
    pairs = set(zip(words, words[1:]))
    if not names:
        return []
    newest: dict[str, tuple[int, int, int]] = {}  # line -> (names held, pairs held, step)
    for j, line in other_lines(traj, t, action):
        line = line.strip()
        held = words_of(line)
        named = len(names & set(held))
        if named:
            newest[line] = (named, len(pairs & set(zip(held, held[1:]))), j)
    out, per_reply = [], Counter()
    for line, (_, _, j) in sorted(newest.items(), key=lambda x: x[1], reverse=True):
        if per_reply[j] < MENTION_PER_REPLY:
            per_reply[j] += 1
            out.append((j, line))
            if len(out) == n:
                break
    return out


# with hints "mentions-dup": the mention lines only where an earlier line lists two or more identical
# objects that the action names ("a seed jar (containing a orange seed, a orange seed)"), that is where
# the name may answer for several objects and the simulator ask which (an ambiguity prompt); elsewhere
# the lines cost more than they tell (session 41: words of them leak into Melt's replies). On a
# ScienceWorld collection (5 actions, every start) this fires before 87% of the test prompts and 0.6%
# of the other replies (docs/LOG.md, session 42).
_ITEM = re.compile(r"[,():;]|\band\b")  # where one listed item ends and the next begins
_NOT_A_NAME = _LINKING | {"containing", "nothing"}


def listed_twice(line: str) -> set[tuple[str, ...]]:
    """The names `line` lists two or more times, each as its words without linking words: items are
    split at commas, brackets, colons, semicolons and "and" ("a jar (containing a pea seed, a pea seed)"
    -> {("pea", "seed")}; "containing nothing" twice is no name)."""
    names = Counter(tuple(w for w in words_of(item) if w not in _NOT_A_NAME) for item in _ITEM.split(line))
    return {name for name, n in names.items() if name and n >= 2}


def names_duplicates(traj: Trajectory, t: int, action: str) -> bool:
    """Whether a line of the replies o_1 .. o_t (replies to `action` itself left out, as in
    `mention_lines`) lists two or more identical objects whose name shares a word with what `action`
    names after its verb."""
    names = named_words(action)
    return any(names & set(name) for _, line in other_lines(traj, t, action) for name in listed_twice(line))


def episode_hints(kind: str, n_replies: int) -> Callable[[Trajectory, int, int], list[tuple[int, str]]] | None:
    """What a model configured with `hints` (TextModelConfig) is given from the whole episode, beyond its
    context window: a function (trajectory, t, k) -> [(tag, text)] for the sample whose context ends with
    o_t and whose target is the reply after a_{t+k}, read from o_0 .. o_t only.

    - "replies": the replies the last action a_{t+k} got earlier in this episode, newest first, at most
      `n_replies`; each tagged with how many steps before the predicted reply it came (t + k - j for o_j),
      which is what a reading's rate needs.
    - "trend": the trend baseline's reply, tagged 0: the model then learns where to trust it.
    - "similar": the "replies" hints (tags capped at SIMILAR_TAG - 1), then the newest reply to each of
      up to SIMILAR_ACTIONS earlier actions most like the last one (`similar_replies`), each written
      after its action ("> action\nreply") and tagged SIMILAR_TAG + its distance (capped), so the two
      kinds stay apart. Replies to "move seed to pot 1" tell what "move seed to pot 2" will list.
    - "since": the "replies" hints (tags capped at SIMILAR_TAG - 1) with, after the newest one, what was
      done since it (`since_text`), tagged SIMILAR_TAG: a room looked at again is the remembered
      description with the edits of those actions (a door opened, a thing taken).
    - "mentions": the "replies" hints (tags capped at SIMILAR_TAG - 1) with, after the newest one, the
      lines of earlier replies that name what the action names (`mention_lines`), each tagged
      SIMILAR_TAG + its distance (capped): what a container held when last seen, where a thing is.
    - "mentions-after": the same lines after all the "replies" hints, so that a hint budget too small
      for both cuts the mentions, not the older replies a reading's rate is fitted to.
    - "mentions-dup": as "mentions-after", but the lines only where an earlier line lists identical
      objects the action names (`names_duplicates`): the replies alone elsewhere.
    Nothing when neither the action nor one like it was taken before, nor (for the mentions) named
    (None for "none")."""
    check_hint_kind(kind)
    if kind == "none":
        return None

    def hints(traj: Trajectory, t: int, k: int) -> list[tuple[int, str]]:
        action = traj.actions[t + k - 1]
        replies = earlier_replies(traj, t, action)
        # with other texts beside them, the replies' tags stay below SIMILAR_TAG
        own = [(min(t + k - j, SIMILAR_TAG - 1), text) for j, text in reversed(replies[-n_replies:])]
        other = lambda j: SIMILAR_TAG + min(t + k - j, MAX_HINT_TAG - SIMILAR_TAG)  # noqa: E731  the tag of another text from o_j
        if kind == "similar":
            return own + [(other(j), f"> {a}\n{text}") for j, a, text in similar_replies(traj, t, action, SIMILAR_ACTIONS)]
        if kind == "mentions-dup" and not names_duplicates(traj, t, action):
            return own
        if kind in ("mentions", "mentions-after", "mentions-dup"):
            named = [(other(j), line) for j, line in mention_lines(traj, t, action, MENTION_LINES)]
            return own[:1] + named + own[1:] if kind == "mentions" else own + named
        if not replies:
            return []
        if kind == "since":
            done = since_text(traj, replies[-1][0], t, k)
            return own[:1] + ([(SIMILAR_TAG, done)] if done else []) + own[1:]
        if kind == "trend":
            return [(0, trend_answer(replies, t + k, replies[-1][1]))]
        return [(t + k - j, text) for j, text in reversed(replies[-n_replies:])]

    return hints
