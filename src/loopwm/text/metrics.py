"""The text benchmark's scores: exact match, token F1, BLEU-4 and entity F1, all in [0, 1].

Texts are compared after `normalise` (lower case, runs of white space made one space, ends
stripped): the simulator's layout (tabs before list items, trailing spaces) carries no meaning, and
a model should not lose a match over it. Words are white-space separated tokens of the normalised
text, with punctuation split off (so "kitchen." and "kitchen" share a word).

- exact match: normalised prediction equals normalised reference.
- token F1: harmonic mean of word precision and recall with multiplicity (the SQuAD definition),
  per sample, averaged; 1 when both are empty.
- BLEU-4: corpus BLEU (Papineni et al. 2002) over a group of samples, uniform weights over 1- to
  4-gram precisions clipped by the reference counts, times the brevity penalty
  exp(1 - r / c) when the total candidate length c is below the total reference length r. Corpus
  level, because per-sentence BLEU-4 is zero for any reply shorter than four words, which many
  simulator replies are ("The door is now open.").
- exact match in any order (ambiguity prompts only): the first line equal and the numbered options
  equal as a multiset, their numbers and order aside. The simulator lists the objects that answer to
  a name in the order of its internal object list, which the text shows only through earlier
  prompts (and which can differ between loads of one variation); this match scores which objects,
  where and how many, apart from that order.
- entity F1: micro-averaged over a group: the entities of a text are the names from the
  simulator's own object list of its trajectory that occur in it as whole words, longest first
  ("door to kitchen" before "kitchen"); true positives are names in both texts. Undefined for a
  group where neither side names any.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence

_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+|[^\w\s]")


def normalise(text: str) -> str:
    return _SPACE.sub(" ", text.lower()).strip()


def words(text: str) -> list[str]:
    return _WORD.findall(normalise(text))


def exact_match(prediction: str, reference: str) -> float:
    return float(normalise(prediction) == normalise(reference))


_OPTION = re.compile(r"^\d+:\s*")


def prompt_options(text: str) -> tuple[str, Counter, tuple[str, ...]]:
    """A prompt's first line, its numbered options as a multiset (numbers dropped), and its other
    lines in order; all normalised, empty lines left out."""
    lines = [line for line in (normalise(x) for x in text.strip().splitlines()) if line]
    head, rest = (lines[0], lines[1:]) if lines else ("", [])
    options = Counter(_OPTION.sub("", line) for line in rest if _OPTION.match(line))
    return head, options, tuple(line for line in rest if not _OPTION.match(line))


def exact_match_any_order(prediction: str, reference: str) -> float:
    """Exact match of a prompt that lists options, in whatever order the options come (at least the
    exact match: a text that matches exactly matches in any order)."""
    return max(exact_match(prediction, reference), float(prompt_options(prediction) == prompt_options(reference)))


def token_f1(prediction: str, reference: str) -> float:
    pred, ref = words(prediction), words(reference)
    if not pred and not ref:
        return 1.0
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def _ngrams(tokens: Sequence[str], n: int) -> Counter:
    return Counter(tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(predictions: Sequence[str], references: Sequence[str], max_n: int = 4) -> float:
    """Corpus BLEU-`max_n` of paired predictions and references (one reference each)."""
    matched, total = [0] * max_n, [0] * max_n
    c_len = r_len = 0
    for prediction, reference in zip(predictions, references, strict=True):
        pred, ref = words(prediction), words(reference)
        c_len, r_len = c_len + len(pred), r_len + len(ref)
        for n in range(1, max_n + 1):
            pred_n, ref_n = _ngrams(pred, n), _ngrams(ref, n)
            matched[n - 1] += sum((pred_n & ref_n).values())
            total[n - 1] += max(len(pred) - n + 1, 0)
    if c_len == 0 or min(matched) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matched, total)) / max_n
    brevity = 1.0 if c_len >= r_len else math.exp(1 - r_len / c_len)
    return brevity * math.exp(log_precision)


def entity_pattern(names: Iterable[str]) -> re.Pattern | None:
    """One regular expression that finds any of `names` as whole words, longest names first."""
    names = sorted({normalise(n) for n in names if n.strip()}, key=len, reverse=True)
    if not names:
        return None
    return re.compile(r"(?<!\w)(?:" + "|".join(re.escape(n) for n in names) + r")(?!\w)")


def entities(text: str, pattern: re.Pattern | None) -> set[str]:
    return set(pattern.findall(normalise(text))) if pattern is not None else set()


def entity_counts(prediction: str, reference: str, pattern: re.Pattern | None) -> tuple[int, int, int]:
    """(true positives, predicted, reference) entity counts of one sample."""
    pred, ref = entities(prediction, pattern), entities(reference, pattern)
    return len(pred & ref), len(pred), len(ref)


def micro_f1(counts: Iterable[tuple[int, int, int]]) -> float:
    """F1 from summed (true positive, predicted, reference) counts; NaN (undefined, shown as "-")
    when neither side names any entity: a group without entities says nothing about them."""
    tp = n_pred = n_ref = 0
    for a, b, c in counts:
        tp, n_pred, n_ref = tp + a, n_pred + b, n_ref + c
    if n_pred == 0 and n_ref == 0:
        return float("nan")
    return 2 * tp / (n_pred + n_ref)


def score_group(predictions: Sequence[str], references: Sequence[str], patterns: Sequence[re.Pattern | None],
                any_order: bool = False) -> dict:
    """All four scores of a group of samples, in percent, and its size; with `any_order` also
    `em_any_order` (exact_match_any_order), for a group of prompts that list options."""
    n = len(references)
    if any_order:
        extra = {"em_any_order": 100 * sum(exact_match_any_order(p, r) for p, r in zip(predictions, references)) / n
                 if n else float("nan")}
        return {**score_group(predictions, references, patterns), **extra}
    if n == 0:
        return {"em": float("nan"), "f1": float("nan"), "bleu4": float("nan"), "entity": float("nan"), "n": 0}
    em = sum(exact_match(p, r) for p, r in zip(predictions, references)) / n
    f1 = sum(token_f1(p, r) for p, r in zip(predictions, references)) / n
    ent = micro_f1(entity_counts(p, r, pat) for p, r, pat in zip(predictions, references, patterns))
    return {"em": 100 * em, "f1": 100 * f1, "bleu4": 100 * corpus_bleu(predictions, references), "entity": 100 * ent, "n": n}
