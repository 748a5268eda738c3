"""Collected trajectories -> world-modelling samples, and the tokenizer learned from them.

A sample is the paper's protocol: a context (the task description and the trajectory so far, the
most recent part kept when it is too long), then K consecutive actions (K = 1 to 5), and as
target the observation the simulator returned after the K-th action. Intermediate observations are
never shown: with deferred decoding only the last one is decoded.

The tokenizer is byte-level BPE (the `tokenizers` library), learned from the training split only,
so it encodes any text (no unknown tokens) and decodes back to the same string. It is saved as JSON
beside a run's checkpoints.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from loopwm.utils import LoopWMError, read_json

PAD, BOS, EOS, SEP = "<pad>", "<bos>", "<eos>", "<sep>"
SPECIALS = (PAD, BOS, EOS, SEP)
AMBIGUOUS = "ambiguous request"


@dataclass
class Trajectory:
    task: str
    type: str
    split: str
    variation: int
    kind: str
    task_description: str
    observations: list[str]  # o_0 (look around at the start), o_1, ..., o_T
    actions: list[str]  # a_1, ..., a_T
    entities: list[str]

    def __len__(self) -> int:
        return len(self.actions)


def load_trajectories(data: str | Path, split: str | None = None) -> list[Trajectory]:
    """Every trajectory of a `loopwm text collect` folder (one split, or all), in a fixed order."""
    from loopwm.text.collect import read_text_manifest

    data = Path(data)
    if not (data / "manifest.json").exists():
        raise LoopWMError(f"{data} is not a text dataset (no manifest.json); make one with: loopwm text collect --out {data}")
    read_text_manifest(data)
    out = []
    for path in sorted((data / "trajectories").glob(f"{split or '*'}/*/*.json")):  # SPLIT/TASK/vNNNN-KIND.json
        t = read_json(path, "trajectory")
        try:
            out.append(Trajectory(task=t["task"], type=t["type"], split=t["split"], variation=int(t["variation"]),
                                  kind=t["kind"], task_description=t["task_description"],
                                  observations=[t["observation"]] + [s["observation"] for s in t["steps"]],
                                  actions=[s["action"] for s in t["steps"]], entities=list(t["entities"])))
        except (KeyError, TypeError, ValueError) as err:
            raise LoopWMError(f"{path} is not a complete trajectory ({type(err).__name__}: {err}); delete it and "
                              "re-run the collection to record it again") from err
    return out


def fingerprint(trajs: list[Trajectory]) -> str:
    """A short hash of what these trajectories hold (task, split, variation, kind, description, every
    action and observation, in load order). Two collections made by the same command can differ (a
    branch's random actions are drawn from the simulator's valid actions, and those can change between
    loads), so runs and scores record the fingerprint of the data they saw, not only its folder."""
    h = hashlib.sha256()
    for t in trajs:
        record = [t.task, t.split, t.variation, t.kind, t.task_description, t.actions, t.observations]
        h.update(json.dumps(record, ensure_ascii=False).encode("utf-8"))
    return h.hexdigest()[:16]


def is_look_around(action: str) -> bool:
    return action.strip().lower() == "look around"


def is_ambiguity(observation: str) -> bool:
    return observation.strip().lower().startswith(AMBIGUOUS)


def has_number(observation: str) -> bool:
    """Whether a reply holds a number: a reading (a position, a temperature) the world's state decides."""
    return any(ch.isdigit() for ch in observation)


STATE_ROWS = ("look around", "ambiguity")


def reply_row(action: str, reply: str) -> str | None:
    """Which state-tracking row a reply to `action` belongs to, if any: a `look around` (the room as it
    is now) or an ambiguity prompt (the objects that answer to a name right now)."""
    if is_look_around(action):
        return "look around"
    if is_ambiguity(reply):
        return "ambiguity"
    return None


def state_row(traj: Trajectory, t: int, k: int) -> str | None:
    """The state-tracking row of the reply after a_{t+k}, if any (reply_row)."""
    return reply_row(traj.actions[t + k - 1], traj.observations[t + k])


# ----- tokenizer -----
def train_tokenizer(texts, vocab_size: int, split_digits: bool = True):
    """Byte-level BPE learned from `texts`; specials get ids 0-3 (PAD is 0). With `split_digits`,
    every digit is a token of its own, so a number is read and written digit by digit (a brick
    "approximately 15% down the plane" becomes 1, 5, %), not as whichever digit groups BPE merged."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.pre_tokenizer = (pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
                         if split_digits else byte_level)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | Path):
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as err:  # noqa: BLE001 - the library raises its own exception type
        raise LoopWMError(f"{path} is not a tokenizer file ({err}); the run is damaged or incomplete") from err


def need_tokenizers() -> None:
    try:
        import tokenizers  # noqa: F401
    except ImportError as err:
        raise LoopWMError('text models need the text extra: pip install "loopwm[text]"') from err


class Encoder:
    """Text <-> token ids with the run's tokenizer, caching what it has seen (contexts repeat)."""

    def __init__(self, tok):
        self.tok = tok
        self.pad, self.bos, self.eos, self.sep = (tok.token_to_id(s) for s in SPECIALS)
        if self.pad != 0:
            raise LoopWMError("the tokenizer's <pad> token must have id 0; the tokenizer file is not ours")
        self._cache: dict[str, list[int]] = {}
        self._offsets: dict[str, list[tuple[int, int]]] = {}

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def token_strings(self) -> list[str]:
        """Each token id's text (what it decodes to on its own)."""
        return [self.tok.decode([i]) for i in range(self.vocab_size)]

    def ids(self, text: str) -> list[int]:
        got = self._cache.get(text)
        if got is None:
            got = self._cache[text] = self.tok.encode(text).ids
        return got

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Each token's character span (start, end) in `text`, in the order of `ids(text)` (cached: the
        training loss weighs the same replies again and again)."""
        got = self._offsets.get(text)
        if got is None:
            got = self._offsets[text] = self.tok.encode(text).offsets
        return got

    def text(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self.eos in ids:
            ids = ids[: ids.index(self.eos)]
        return self.tok.decode([i for i in ids if i not in (self.pad, self.bos, self.sep)])


def earlier_replies(traj: Trajectory, t: int, action: str) -> list[tuple[int, str]]:
    """(step, reply) for every time `action` was taken within the context o_0 .. o_t, oldest first;
    step j means the reply is o_j."""
    return [(i + 1, traj.observations[i + 1]) for i in range(t) if traj.actions[i] == action]


def changed_lines(reply: str, remembered: str) -> list[tuple[int, int]]:
    """Character spans (start, end) of the lines of `reply` that `remembered` lacks (lines compared
    with their outer spaces stripped): what changed since the action last got a reply, such as the
    door that is open now in a room described again."""
    known = {line.strip() for line in remembered.split("\n")}
    spans, at = [], 0
    for line in reply.split("\n"):
        if line.strip() and line.strip() not in known:
            spans.append((at, at + len(line)))
        at += len(line) + 1
    return spans


# ----- samples -----
@dataclass
class Sample:
    traj: int  # index into the trajectory list
    t: int  # context ends with o_t
    k: int  # actions a_{t+1} .. a_{t+k}; target o_{t+k}


def all_starts(trajs: list[Trajectory], k_max: int) -> list[tuple[int, int]]:
    """Every (trajectory, t) from which k_max actions follow."""
    return [(i, t) for i, traj in enumerate(trajs) for t in range(len(traj) - k_max + 1)]


def eval_starts(trajs: list[Trajectory], k_max: int, max_starts: int, seed: int) -> list[tuple[int, int]]:
    """A fixed, seeded sample of start points (the same for every K, so Step 1..5 compare like with like)."""
    starts = all_starts(trajs, k_max)
    if 0 < max_starts < len(starts):
        pick = np.random.default_rng(seed).choice(len(starts), size=max_starts, replace=False)
        starts = [starts[i] for i in sorted(pick)]
    return starts


def state_starts(trajs: list[Trajectory], k_max: int, per_row: int, seed: int) -> dict[str, list[tuple[int, int]]]:
    """Start points whose reply after the k_max-th action is a state-tracking row, a seeded sample of
    up to `per_row` for each row (0: all). A uniform sample holds few of them (about 5% and 2% of
    ScienceWorld's test starts), too few to tell models apart on the rows that need the world's state."""
    rows: dict[str, list[tuple[int, int]]] = {name: [] for name in STATE_ROWS}
    for i, t in all_starts(trajs, k_max):
        row = state_row(trajs[i], t, k_max)
        if row is not None:
            rows[row].append((i, t))
    rng = np.random.default_rng(seed)
    for name, starts in rows.items():
        if 0 < per_row < len(starts):
            pick = rng.choice(len(starts), size=per_row, replace=False)
            rows[name] = [starts[i] for i in sorted(pick)]
    return rows


class Batcher:
    """Token tensors for a list of samples that share K: contexts left-truncated to `max_context`
    (the task description always kept in front), actions cut at `max_action`, targets at
    `max_target` (with BOS in front and EOS after, where it fits). With a `hints` source
    (`baselines.episode_hints`), each batch also holds the hint texts, newest first, within
    `hint_tokens` tokens in all (the first cut to fit, the rest whole or left out), each ending with
    `hint_end` where that is given. With a `changed_weight` other than 1, each batch also holds
    `weight` (B, T), per target token: `changed_weight` on the lines of the reply that the newest
    earlier reply to the same action lacks (`changed_lines`), 1 elsewhere."""

    def __init__(self, enc: Encoder, trajs: list[Trajectory], max_context: int, max_action: int, max_target: int,
                 hints: Callable[[Trajectory, int, int], list[tuple[int, str]]] | None = None, hint_tokens: int = 256,
                 hint_end: int | None = None, changed_weight: float = 1.0):
        self.enc, self.trajs = enc, trajs
        self.max_context, self.max_action, self.max_target = max_context, max_action, max_target
        self.hints, self.hint_tokens, self.hint_end = hints, hint_tokens, hint_end
        self.changed_weight = changed_weight

    def _task_and_pieces(self, traj: Trajectory, t: int) -> tuple[list[int], list[list[int]]]:
        task = self.enc.ids(traj.task_description.strip())[: self.max_context // 4] + [self.enc.sep]
        # o_0 once, then each transition: pieces are cached, so long trajectories cost little
        pieces = [self.enc.ids(traj.observations[0])]
        for i in range(t):
            pieces.append(self.enc.ids(f"\n> {traj.actions[i]}\n"))
            pieces.append(self.enc.ids(traj.observations[i + 1]))
        return task, pieces

    def first_whole_step(self, traj: Trajectory, t: int) -> int:
        """The oldest step j whose action a_j and reply o_j the context of o_0 .. o_t holds whole: what
        the model can read of the episode (t + 1 when not even the last transition fits)."""
        task, pieces = self._task_and_pieces(traj, t)
        room, first = self.max_context - len(task), t + 1
        for j in range(t, 0, -1):  # pieces[2j - 1] is a_j, pieces[2j] is o_j
            room -= len(pieces[2 * j]) + len(pieces[2 * j - 1])
            if room < 0:
                break
            first = j
        return first

    def context_ids(self, traj: Trajectory, t: int) -> list[int]:
        task, pieces = self._task_and_pieces(traj, t)
        room = self.max_context - len(task)
        tail: list[int] = []
        for piece in reversed(pieces):  # newest first, until the budget is spent
            if len(tail) + len(piece) > room:
                tail = piece[len(piece) - (room - len(tail)):] + tail if room > len(tail) else tail
                break
            tail = piece + tail
        return task + tail

    def target_ids(self, text: str) -> list[int]:
        return ([self.enc.bos] + self.enc.ids(text) + [self.enc.eos])[: self.max_target + 1]

    def target_length(self, sample: Sample) -> int:
        return len(self.target_ids(self.trajs[sample.traj].observations[sample.t + sample.k]))

    def batch(self, samples: list[Sample]) -> dict[str, np.ndarray]:
        k = samples[0].k
        if any(s.k != k for s in samples):
            raise ValueError("a batch holds samples with one number of actions")
        ctx = [self.context_ids(self.trajs[s.traj], s.t) for s in samples]
        acts = [[self.enc.ids(self.trajs[s.traj].actions[s.t + j])[: self.max_action] or [self.enc.sep]
                 for j in range(k)] for s in samples]
        tgt = [self.target_ids(self.trajs[s.traj].observations[s.t + k]) for s in samples]
        B = len(samples)
        L = max(len(c) for c in ctx)
        A = max(len(a) for row in acts for a in row)
        T = max(len(x) for x in tgt)
        context = np.zeros((B, L), np.int64)
        actions = np.zeros((B, k, A), np.int64)
        target = np.zeros((B, T), np.int64)
        for b in range(B):
            context[b, : len(ctx[b])] = ctx[b]
            for j, a in enumerate(acts[b]):
                actions[b, j, : len(a)] = a
            target[b, : len(tgt[b])] = tgt[b]
        out = {"context": context, "actions": actions, "target": target}
        if self.hints is not None:
            out.update(self.hint_arrays(samples))
        if self.changed_weight != 1.0:
            out["weight"] = np.stack([self.target_weights(s, T) for s in samples])
        return out

    def target_weights(self, sample: Sample, length: int) -> np.ndarray:
        """(length,) loss weight of each target position (BOS first): `changed_weight` on the tokens that
        touch a changed line of the reply (`changed_lines` against the newest earlier reply to the same
        action within o_0 .. o_t), 1 elsewhere and on every token when the action was not taken before."""
        traj = self.trajs[sample.traj]
        weight = np.ones(length, np.float32)
        action, text = traj.actions[sample.t + sample.k - 1], traj.observations[sample.t + sample.k]
        earlier = earlier_replies(traj, sample.t, action)
        if not earlier:
            return weight
        spans = changed_lines(text, earlier[-1][1])
        for i, (lo, hi) in enumerate(self.enc.offsets(text)[: length - 1]):
            if any(lo < b and a < hi for a, b in spans):
                weight[i + 1] = self.changed_weight  # position 0 is BOS
        return weight

    def hint_ids(self, sample: Sample) -> list[tuple[int, list[int]]]:
        """(tag, token ids) of each hint of a sample, within the token budget."""
        out, room = [], self.hint_tokens
        for tag, text in self.hints(self.trajs[sample.traj], sample.t, sample.k):
            ids = (self.enc.ids(text) or [self.enc.sep]) + ([] if self.hint_end is None else [self.hint_end])
            if len(ids) > room:
                if not out:  # the newest hint is always given, cut to the budget
                    out.append((tag, ids[:room]))
                break
            out.append((tag, ids))
            room -= len(ids)
        return out

    def hint_arrays(self, samples: list[Sample]) -> dict[str, np.ndarray]:
        """`hints` (B, H) ids, 0-padded; `hint_pos` (B, H) each token's place within its hint; `hint_tags`
        (B, H) its hint's tag. H is at least 1, so a batch without any hint still has the arrays."""
        rows = [self.hint_ids(s) for s in samples]
        H = max([1] + [sum(len(ids) for _, ids in row) for row in rows])
        hints, pos, tags = (np.zeros((len(samples), H), np.int64) for _ in range(3))
        for b, row in enumerate(rows):
            at = 0
            for tag, ids in row:
                hints[b, at:at + len(ids)] = ids
                pos[b, at:at + len(ids)] = np.arange(len(ids))
                tags[b, at:at + len(ids)] = tag
                at += len(ids)
        return {"hints": hints, "hint_pos": pos, "hint_tags": tags}


def tokenizer_corpus(trajs: list[Trajectory]):
    """The texts a tokenizer learns from (training trajectories only)."""
    for traj in trajs:
        yield traj.task_description
        yield from traj.observations
        yield from traj.actions

