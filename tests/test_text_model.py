"""Text world models: metrics on hand-computed examples, the tokenizer, samples, the model's
equivalences, and `loopwm text train` / `text eval` on a tiny corpus (no simulator needed)."""

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from loopwm.cli import main
from loopwm.text.metrics import (
    corpus_bleu,
    entity_counts,
    entity_pattern,
    exact_match,
    exact_match_any_order,
    micro_f1,
    score_group,
    token_f1,
)
from loopwm.utils import LoopWMError

needs_tokenizers = pytest.mark.skipif(importlib.util.find_spec("tokenizers") is None,
                                      reason="text models need the text extra (pip install 'loopwm[text]')")


# ----- metrics -----
def test_any_order_match_reads_a_prompt_as_its_first_line_and_a_multiset_of_options():
    head = "Ambiguous request: Please enter the number for the action you intended (or blank to cancel):"
    ref = f"{head}\n0:\tseed (in pot 2)\n1:\tseed (in pot 5)\n2:\tseed (in pot 2)\n"
    shuffled = f"{head}\n0:\tseed (in pot 5)\n1:\tseed (in pot 2)\n2:\tseed (in pot 2)"
    assert exact_match(shuffled, ref) == 0.0 and exact_match_any_order(shuffled, ref) == 1.0
    assert exact_match_any_order(f"{head}\n0:\tseed (in pot 5)\n1:\tseed (in pot 2)", ref) == 0.0  # one too few
    assert exact_match_any_order(f"{head}\n0:\tseed (in pot 5)\n1:\tseed (in pot 5)\n2:\tseed (in pot 2)", ref) == 0.0
    assert exact_match_any_order(shuffled.replace("Please", "Now"), ref) == 0.0  # the first line counts
    assert exact_match_any_order("You move the seed.", "you move the  seed.") == 1.0  # a plain reply: exact match
    assert exact_match_any_order(shuffled + "\nand one more line", ref) == 0.0  # other lines count, in order
    assert exact_match_any_order("a\nb", "a b") == exact_match("a\nb", "a b") == 1.0  # never below exact match
    scores = score_group([shuffled, "x"], [ref, ref], [None, None], any_order=True)
    assert scores["em"] == 0.0 and scores["em_any_order"] == 50.0 and "em_any_order" not in score_group([ref], [ref], [None])


def test_exact_match_ignores_case_and_layout_only():
    assert exact_match("You move to the  kitchen.\n", "you move to the kitchen.") == 1.0
    assert exact_match("You move to the kitchen", "You move to the kitchen.") == 0.0


def test_token_f1_counts_shared_words():
    # pred: the door is open (4); ref: the door is now open . (6); 4 shared -> P 1, R 2/3 -> F1 0.8
    assert token_f1("the door is open", "The door is now open.") == pytest.approx(0.8)
    assert token_f1("", "") == 1.0 and token_f1("abc", "xyz") == 0.0
    assert token_f1("a a b", "a b b") == pytest.approx(2 / 3)  # multiplicity: 2 shared of 3 each


def test_bleu4_with_its_brevity_penalty():
    assert corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    # n-gram precisions 4/5, 3/4, 2/3, 1/2; candidate 5 words against 6: penalty exp(1 - 6/5)
    expected = math.exp(1 - 6 / 5) * (4 / 5 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert corpus_bleu(["a b c d e"], ["a b c d f g"]) == pytest.approx(expected)
    assert corpus_bleu(["a b c"], ["a b c"]) == 0.0  # no 4-gram at all
    # corpus level: counts add up over pairs before the precisions are taken
    both = corpus_bleu(["a b c d e", "a b c d"], ["a b c d f g", "a b c d"])
    expected = math.exp(1 - 10 / 9) * (8 / 9 * 6 / 7 * 4 / 5 * 2 / 3) ** 0.25
    assert both == pytest.approx(expected)
    longer = corpus_bleu(["a b c d e f g"], ["a b c d e f"])  # longer than the reference: no penalty
    assert longer == pytest.approx((6 / 7 * 5 / 6 * 4 / 5 * 3 / 4) ** 0.25)


def test_entity_f1_finds_whole_names_longest_first():
    pattern = entity_pattern(["door to kitchen", "kitchen", "thermometer", "pot"])
    assert entity_counts("You open the door to kitchen.", "The thermometer is in the kitchen.", pattern) == (0, 1, 2)
    assert entity_counts("kitchen and thermometer", "The thermometer is in the kitchen.", pattern) == (2, 2, 2)
    assert entity_counts("a teapot", "a pot", pattern) == (0, 0, 1)  # "pot" inside "teapot" is not the pot
    assert micro_f1([(0, 1, 2), (2, 2, 2)]) == pytest.approx(4 / 7)
    assert math.isnan(micro_f1([(0, 0, 0)]))  # no entity on either side: undefined, not perfect
    s = score_group(["kitchen and thermometer", "wrong"], ["The thermometer is in the kitchen.", "right"], [pattern] * 2)
    assert s["n"] == 2 and s["em"] == 0.0 and s["entity"] == pytest.approx(100.0)


# ----- a tiny text world in the collection format -----
ROOMS = ("kitchen", "hallway", "garden")


def toy_trajectory(rng, split, variation, task, length=10, clock=False):
    """A small deterministic world: three rooms joined by doors that must be opened first (`clock`:
    each move also tells the time, a number that counts the steps)."""
    here, open_doors = "hallway", set()
    desc = lambda: (f"This room is called the {here}. In it, you see: a table. Doors: "  # noqa: E731
                    + ", ".join(f"door to {r} ({'open' if r in open_doors else 'closed'})" for r in ROOMS if r != here))
    first, steps = desc(), []
    for _ in range(length):
        other = str(rng.choice([r for r in ROOMS if r != here]))
        kind = rng.integers(3)
        if kind == 0:
            action, obs = "look around", None
        elif kind == 1:
            action = f"open door to {other}"
            obs = "The door is already open." if other in open_doors else "The door is now open."
            open_doors.add(other)
        else:
            action = f"go to {other}"
            if other in open_doors:
                here, obs = other, f"You move to the {other}." + (f" The clock reads {7 * len(steps)}." if clock else "")
            else:
                obs = f"The door to the {other} is closed."
        steps.append({"action": action, "observation": obs if obs is not None else desc(), "score": 0, "done": False})
    return {"task": task, "type": "Find" if task == "find-plant" else "Boil", "split": split, "variation": variation,
            "kind": "gold", "branch_from": None, "task_description": f"Your task is to {task.replace('-', ' ')}.",
            "observation": first, "steps": steps, "entities": ["door to " + r for r in ROOMS] + list(ROOMS) + ["table"]}


def make_toy_corpus(out, n_train=24, n_dev=3, n_test=4, seed=0, clock=False):
    from loopwm.text.collect import FORMAT, FORMAT_VERSION

    rng = np.random.default_rng(seed)
    v = 0
    for split, n in (("train", n_train), ("dev", n_dev), ("test", n_test)):
        for i in range(n):
            task = ("find-plant", "boil")[i % 2]
            t = toy_trajectory(rng, split, v, task, clock=clock)
            path = out / "trajectories" / split / task / f"v{v:04d}-gold.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(t))
            v += 1
    (out / "manifest.json").write_text(json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION}))
    return out


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return make_toy_corpus(tmp_path_factory.mktemp("toy") / "data")


@pytest.fixture(scope="module")
def toy_encoder(toy):
    from loopwm.text.corpus import Encoder, load_trajectories, tokenizer_corpus, train_tokenizer

    trajs = load_trajectories(toy, "train")
    return Encoder(train_tokenizer(tokenizer_corpus(trajs), 400)), trajs


# ----- tokenizer and samples -----
@needs_tokenizers
def test_tokenizer_round_trips_any_text(toy_encoder):
    enc, _ = toy_encoder
    for text in ["This room is called the kitchen.\n\ta table", "naïve café ☕ 42°C", "  spaces\tand\ttabs  ", ""]:
        ids = enc.ids(text)
        assert enc.text(ids) == text
    assert enc.pad == 0 and len({enc.pad, enc.bos, enc.eos, enc.sep}) == 4
    assert enc.text(enc.ids("ab") + [enc.eos] + enc.ids("cd")) == "ab"  # decoding stops at <eos>
    assert [enc.text([i]) for i in enc.ids("1250")] == ["1", "2", "5", "0"]  # numbers go digit by digit


@needs_tokenizers
def test_splits_never_mix_and_samples_keep_the_newest_context(toy, toy_encoder):
    from loopwm.text.corpus import Batcher, Sample, load_trajectories

    enc, train = toy_encoder
    test = load_trajectories(toy, "test")
    assert {t.split for t in train} == {"train"} and {t.split for t in test} == {"test"}
    assert not {t.variation for t in train} & {t.variation for t in test}
    b = Batcher(enc, train, max_context=40, max_action=6, max_target=12)
    batch = b.batch([Sample(0, 6, 3), Sample(1, 0, 3)])
    assert batch["context"].shape[0] == 2 and batch["context"].shape[1] <= 40 and batch["actions"].shape[:2] == (2, 3)
    ctx = [i for i in batch["context"][0] if i]
    task = enc.ids(train[0].task_description)
    assert ctx[: len(task)] == task and ctx[len(task)] == enc.sep  # the task description is always kept in front
    newest = enc.ids(train[0].observations[6])
    assert ctx[-len(newest):] == newest  # ... and the context ends with o_t
    tgt = [i for i in batch["target"][0] if i]
    assert tgt[0] == enc.bos and enc.text(tgt[1:]) == enc.text(enc.ids(train[0].observations[9]))[: len(enc.text(tgt[1:]))]


@needs_tokenizers
def test_state_starts_hold_only_their_row_and_a_seeded_sample_of_it(toy):
    from loopwm.text.corpus import all_starts, load_trajectories, state_row, state_starts

    trajs = load_trajectories(toy, "test")
    every = state_starts(trajs, 3, 0, seed=0)
    looks = [(i, t) for i, t in all_starts(trajs, 3) if trajs[i].actions[t + 2] == "look around"]
    assert every["look around"] == looks and len(looks) >= 4 and every["ambiguity"] == []  # the toy never asks
    some = state_starts(trajs, 3, 3, seed=1)["look around"]
    assert len(some) == 3 and set(some) <= set(looks) and some == state_starts(trajs, 3, 3, seed=1)["look around"]
    assert all(state_row(trajs[i], t, 3) == "look around" for i, t in some)


# ----- the model -----
def tiny_model(kind="looped", vocab=400, **kw):
    from loopwm.text.model import TextModelConfig, TextWorldModel

    cfg = TextModelConfig(kind=kind, d=32, n_heads=2, n_state=4, n_context_layers=1, n_decoder_layers=1, mu_rec=3,
                          n_deep=3, max_context=48, max_action=6, max_target=16, **kw)
    torch.manual_seed(0)
    model = TextWorldModel(vocab, cfg).eval()
    if cfg.numbers:  # a third of the vocabulary digits, and features that are not yet zero
        model.set_digits(DIGIT_STRINGS[:vocab])
        with torch.no_grad():
            for w in (model.number_proj.weight, model.number_place.weight):
                w.normal_(0, 0.5)
    return model


DIGIT_STRINGS = ["<pad>", "<bos>", "<eos>", "<sep>"] + [str(i % 10) if i % 3 == 0 else f"w{i}" for i in range(4, 400)]


def random_batch(B=3, L=20, K=2, A=5, T=9, vocab=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    context = torch.randint(4, vocab, (B, L), generator=g)
    actions = torch.randint(4, vocab, (B, K, A), generator=g)
    target = torch.randint(4, vocab, (B, T), generator=g)
    context[1, 12:] = 0  # ragged rows: padding
    actions[2, :, 3:] = 0
    return context, actions, target


STATE_ONLY_POINTER = dict(copy=True, copy_pool="all", decoder_reads_context=False, decoder_reads_actions=False)


@pytest.mark.parametrize("kind,kw", [("looped", {}), ("deep", {}), ("looped", {"copy": True}),
                                     ("deep", STATE_ONLY_POINTER), ("looped", {"numbers": True, **STATE_ONLY_POINTER})])
def test_shapes_and_padding_never_leaks_into_other_samples(kind, kw):
    model = tiny_model(kind, **kw)
    context, actions, target = random_batch()
    h, memory, used = model.imagine(context, actions, depth=3)
    assert h.shape == (3, 4, 32) and used.shape == (3, 2) and memory.x.shape[:2] == memory.valid.shape == memory.ids.shape
    logits = model.decode(memory, target)
    assert logits.shape == (3, 9, 400)
    for b in range(3):  # batched equals per-sample, each row cut to its own length
        L = int((context[b] != 0).sum())
        A = int((actions[b, 0] != 0).sum())
        _, m1, _ = model.imagine(context[b:b + 1, :L], actions[b:b + 1, :, :A], depth=3)
        torch.testing.assert_close(model.decode(m1, target[b:b + 1]), logits[b:b + 1], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("kw", [{}, {"copy": True}, STATE_ONLY_POINTER])
def test_the_loss_scores_real_tokens_only_and_equals_full_cross_entropy(kw):
    import torch.nn.functional as F

    model = tiny_model(**kw)
    context, actions, target = random_batch()
    target[0, 4:], target[2, 7:] = 0, 0  # ragged targets
    target[1, 2:5] = context[1, 3:6]  # tokens the copy head can point at
    torch.manual_seed(1)
    loss, _ = model.loss(context, actions, target, n_grad=1)
    torch.manual_seed(1)
    _, memory, _ = model.imagine(context, actions, n_grad=1)
    logits = model.decode(memory, target[:, :-1])  # every position, padding included (with copy: log-probabilities)
    full = F.cross_entropy(logits.reshape(-1, 400), target[:, 1:].reshape(-1), ignore_index=0)
    torch.testing.assert_close(loss, full)
    target[1, 5] = 3  # a changed real token changes the loss; a changed padding position could not
    assert float(model.loss(context, actions, target, n_grad=1)[0].detach()) != float(loss.detach())


@pytest.mark.parametrize("kw", [{}, {"copy": True}])
def test_a_token_weight_makes_the_loss_a_weighted_mean_that_ones_leave_unchanged(kw):
    import torch.nn.functional as F

    model = tiny_model(**kw)
    context, actions, target = random_batch()
    target[0, 4:] = 0
    weight = torch.ones(target.shape)
    torch.manual_seed(1)
    plain, _ = model.loss(context, actions, target, n_grad=1)
    torch.manual_seed(1)
    ones, _ = model.loss(context, actions, target, n_grad=1, weight=weight)
    torch.testing.assert_close(ones, plain)
    weight[1, 3], weight[0, 6] = 5.0, 100.0  # (0, 6) is padding: its weight must count for nothing
    torch.manual_seed(1)
    weighted, _ = model.loss(context, actions, target, n_grad=1, weight=weight)
    torch.manual_seed(1)
    _, memory, _ = model.imagine(context, actions, n_grad=1)
    logits = model.decode(memory, target[:, :-1])  # (B, T-1, V)
    nll = F.cross_entropy(logits.transpose(1, 2), target[:, 1:], reduction="none")  # (B, T-1)
    w = weight[:, 1:] * (target[:, 1:] != 0)
    torch.testing.assert_close(weighted, (w * nll).sum() / w.sum())


def test_the_copy_head_mixes_a_pointer_into_the_memory_with_the_vocabulary():
    plain, copying = tiny_model(), tiny_model(copy=True)
    for name, p in plain.state_dict().items():  # the copy head is created last: the rest starts the same
        torch.testing.assert_close(copying.state_dict()[name], p)
    context, actions, target = random_batch()
    _, memory, _ = copying.imagine(context, actions, depth=2)
    with torch.no_grad():
        copying.copy_gate.weight.zero_()
        copying.copy_gate.bias.fill_(40.0)  # the gate shut: the plain decoder's distribution
        torch.testing.assert_close(copying.decode(memory, target), plain.decode(memory, target).log_softmax(-1),
                                   atol=1e-5, rtol=1e-4)
        copying.copy_gate.bias.fill_(-40.0)  # the gate open: only tokens of the context and actions
        p = copying.decode(memory, target).exp()  # (B, T, V)
    torch.testing.assert_close(p.sum(-1), torch.ones(3, 9))
    for b in range(3):
        present = set(memory.ids[b].tolist()) - {0}
        outside = [w for w in range(400) if w not in present]
        assert float(p[b][:, outside].max()) < 1e-6 and len(present) > 1


def test_copy_follow_starts_as_the_same_model_and_continues_a_span():
    plain, follow = tiny_model(copy=True), tiny_model(copy=True, copy_follow=True)
    for name, p in plain.state_dict().items():  # created last: the rest starts the same
        torch.testing.assert_close(follow.state_dict()[name], p)
    context, actions, target = random_batch()
    target[:, 1:5] = context[0, 2:6]  # the reply copies a span of the first context
    torch.testing.assert_close(follow.loss(context, actions, target, depth=2)[0],
                               plain.loss(context, actions, target, depth=2)[0])  # zero bonus: the same loss
    _, memory, _ = follow.imagine(context, actions, depth=2)
    y = follow.decode_hidden(memory, target[:, :-1])
    with torch.no_grad():
        follow.copy_follow.bias.fill_(30.0)
        attn, _ = follow.copy_attention(y, memory, follow.copy_keys(memory), target[:, :-1])  # (B, T-1, M)
    ids = memory.ids[0]
    for t in (1, 2, 3):  # having written context token j, the pointer moves to token j + 1
        written = int(target[0, t])
        after = [m for m in range(1, ids.shape[0]) if int(ids[m - 1]) == written and int(ids[m])]
        assert float(attn[0, t, after].sum()) > 0.99
    with pytest.raises(ValueError, match="tokens just written"):
        follow.copy_attention(y, memory, follow.copy_keys(memory))
    with pytest.raises(LoopWMError, match="--model.copy"):
        tiny_model(copy_follow=True)


def test_match_lengths_count_how_far_the_written_tokens_repeat_the_text_before_each_memory_token():
    from loopwm.text.spans import match_lengths

    ids = torch.tensor([[5, 6, 7, 8, 5, 6, 9, 0, 6, 7]])  # "a b c d a b x <none> b c"
    memory = torch.nn.functional.pad(ids[:, :-1], (1, 0))  # the token before each
    written = torch.tensor([[1, 5, 6]])  # <bos> a b
    n = match_lengths(written, memory, 3, longest=4)  # (1, 3, 10)
    assert n[0, 0].tolist() == [0] * 10  # <bos> is nowhere in the memory
    assert n[0, 1].tolist() == [0, 1, 0, 0, 0, 1, 0, 0, 0, 0]  # after each "a"
    assert n[0, 2].tolist() == [0, 0, 2, 0, 0, 0, 2, 0, 0, 1]  # after "a b" twice; after "b" alone once (no text before it)
    assert match_lengths(written, memory, 3, longest=1)[0, 2].tolist() == [0, 0, 1, 0, 0, 0, 1, 0, 0, 1]  # capped
    assert torch.equal(match_lengths(written[:, 1:], memory, 1, 4), n[:, -1:])  # the last tokens alone suffice
    long = torch.tensor([[1, 5, 6, 7, 8, 5, 6]])
    assert match_lengths(long, memory, 1, longest=8)[0, 0, 6] == 6  # "a b c d a b" before x
    assert match_lengths(long, memory, 1, longest=4)[0, 0, 6] == 4


def test_copy_match_starts_as_the_same_model_and_continues_the_longest_span():
    plain, match = tiny_model(copy=True), tiny_model(copy=True, copy_match=4)
    for name, p in plain.state_dict().items():  # created last: the rest starts the same
        torch.testing.assert_close(match.state_dict()[name], p)
    context, actions, target = random_batch()
    context[0, 10:14] = context[0, 2:6]  # a span that occurs twice, with different tokens after it
    context[0, 14] = (context[0, 6] + 1) % 400 or 7
    target[0, 1:6] = context[0, 1:6]  # the reply copies the span that starts one token earlier
    torch.testing.assert_close(match.loss(context, actions, target, depth=2)[0],
                               plain.loss(context, actions, target, depth=2)[0])  # zero bonus: the same loss
    _, memory, _ = match.imagine(context, actions, depth=2)
    y = match.decode_hidden(memory, target[:, :-1])
    with torch.no_grad():
        match.copy_match.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 30.0]))  # only a match of 4 tokens counts
        attn, _ = match.copy_attention(y, memory, match.copy_keys(memory), target[:, :-1])  # (B, T-1, M)
    ids, at = memory.ids[0].tolist(), 5  # having written context tokens 1-5, the pointer goes to token 6
    where = [m for m in range(len(ids)) if m >= 4 and ids[m - 4:m] == context[0, 2:6].tolist()]
    assert float(attn[0, at, where].sum()) > 0.99 and ids[where[0]] == int(context[0, 6])
    with pytest.raises(ValueError, match="tokens just written"):
        match.copy_attention(y, memory, match.copy_keys(memory))
    with pytest.raises(LoopWMError, match="--model.copy"):
        tiny_model(copy_match=4)
    with pytest.raises(LoopWMError, match="from 1 to"):
        tiny_model(copy=True, copy_match=99)


def test_a_state_only_decoder_may_point_into_text_it_does_not_read():
    from loopwm.text.model import Memory

    model = tiny_model(**STATE_ONLY_POINTER)
    context, actions, target = random_batch()
    _, memory, _ = model.imagine(context, actions, depth=2)
    S = model.cfg.n_state
    assert memory.n_read == S and memory.x.shape[1] == S + context.shape[1] + actions[0].numel()
    assert bool((memory.ids[:, :S] == 0).all()) and bool((memory.ids[:, S:] != 0).any())
    with torch.no_grad():
        y = model.decode_hidden(memory, target)  # (B, T, d)
        noise = memory.x.clone()
        noise[:, S:] = torch.randn_like(noise[:, S:])  # other text behind the pointer, the same state
        other = memory._replace(x=noise)
        torch.testing.assert_close(model.decode_hidden(other, target), y)  # the decoder never reads the text
        assert not torch.allclose(model.decode(other, target), model.decode(memory, target))  # the pointer does
        model.copy_gate.weight.zero_()
        model.copy_gate.bias.fill_(-40.0)  # the gate open: only tokens of the context and actions
        p = model.decode(memory, target).exp()  # (B, T, V)
    for b in range(3):
        present = set(memory.ids[b].tolist()) - {0}
        assert float(p[b][:, [w for w in range(400) if w not in present]].max()) < 1e-6
    with pytest.raises(ValueError, match="reads more than the state"):
        model.loss(context, actions, target, hide_state=True)
    with pytest.raises(LoopWMError, match="copy pool"):
        tiny_model(copy=True, copy_pool="context")
    assert isinstance(memory, Memory)


def test_hiding_the_state_from_the_decoder_changes_only_what_reads_it():
    model = tiny_model()
    context, actions, target = random_batch()
    with torch.no_grad():
        seen, _ = model.loss(context, actions, target, depth=2)
        hidden, _ = model.loss(context, actions, target, depth=2, hide_state=True)
        model.state_queries.mul_(3.0)  # another latent state: the hidden loss cannot notice
        assert float(model.loss(context, actions, target, depth=2, hide_state=True)[0]) == pytest.approx(float(hidden))
        assert float(model.loss(context, actions, target, depth=2)[0]) != pytest.approx(float(seen))
    assert float(seen) != pytest.approx(float(hidden))


def test_an_exit_rule_that_never_fires_equals_fixed_depth_and_depth_matters():
    from loopwm.models.exits import make_exit_rule

    model = tiny_model()
    context, actions, target = random_batch()
    fixed = model.imagine(context, actions, depth=5)[0]
    never = model.imagine(context, actions, depth=5, exit_rule=make_exit_rule("delta", 0.0))
    torch.testing.assert_close(never[0], fixed)
    assert bool((never[2] == 5).all())
    assert not torch.allclose(model.imagine(context, actions, depth=1)[0], fixed)


def test_the_decoder_can_read_the_actions_and_old_checkpoints_still_load():
    from loopwm.text.train import build_text_model

    reads, blind = tiny_model(), tiny_model(decoder_reads_actions=False)
    context, actions, target = random_batch()
    m1 = reads.imagine(context, actions, depth=2)[1].x
    m0 = blind.imagine(context, actions, depth=2)[1].x
    assert m1.shape[1] == m0.shape[1] + 2 * 5  # K actions of A tokens each joined the memory
    old = {"kind": "text-looped", "spec": {"vocab_size": 400},
           "model": {k: v for k, v in vars(blind.cfg).items() if k != "decoder_reads_actions"}}
    rebuilt = build_text_model(old)  # written before the setting existed: the model it described
    assert not rebuilt.cfg.decoder_reads_actions
    rebuilt.load_state_dict(blind.state_dict())


@pytest.mark.parametrize("kw", [{}, {"copy": True}, {"numbers": True}, {"copy": True, "copy_follow": True},
                                {"copy": True, "copy_match": 3}, {"copy": True, "copy_match": 20, "numbers": True}])
def test_cached_generation_equals_teacher_forced_argmax(kw):
    model = tiny_model(**kw)
    if model.cfg.copy_follow or model.cfg.copy_match:  # a bonus that matters: the cached path must pass the tokens written
        with torch.no_grad():
            bonus = model.copy_follow if model.cfg.copy_follow else model.copy_match
            bonus.bias.fill_(3.0)
            model.copy_gate.bias.fill_(-3.0)
    context, actions, _ = random_batch()
    _, memory, _ = model.imagine(context, actions, depth=2)
    out = model.generate(memory, bos=1, eos=2, max_len=8)  # (B, <= 8)
    inp = torch.cat([torch.ones(3, 1, dtype=torch.long), out[:, :-1]], dim=1)
    steps = model.decode(memory, inp).argmax(-1)
    finished = torch.cumsum((out == 2).long(), 1) - (out == 2).long() > 0  # positions after a row's <eos>
    assert torch.equal(steps[~finished], out[~finished])


def test_number_values_read_whole_numbers_and_written_prefixes():
    from loopwm.text.model import number_values

    strings = ["", *map(str, range(10)), "%", " ", "42"]  # ids 1-10 are the digits, 13 a merged pair
    value = torch.tensor([int(t) if t.isdigit() else -1 for t in strings])
    count = torch.tensor([len(t) if t.isdigit() else 0 for t in strings])
    ids = torch.tensor([[12, 6, 4, 11, 12, 2, 12, 13, 1, 12, 10, 10, 10]])  # " 53% 1 420 999"
    v, place, is_digit = number_values(ids, value, count, causal=False)
    assert v[0].tolist() == [0, 53, 53, 0, 0, 1, 0, 420, 420, 0, 999, 999, 999]
    assert place[0].tolist() == [0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 2, 1, 0]  # 0 for units
    v, place, _ = number_values(ids, value, count, causal=True)
    assert v[0].tolist() == [0, 5, 53, 0, 0, 1, 0, 42, 420, 0, 9, 99, 999]  # only what is written so far
    assert place[0].tolist() == [0, 1, 2, 0, 0, 1, 0, 2, 3, 0, 1, 2, 3]
    assert is_digit[0].tolist() == [t.isdigit() for t in (strings[i] for i in ids[0].tolist())]
    long = torch.tensor([[12, 2, 3, 4, 5, 6, 7, 8, 12]])  # 1234567: exact in float32
    assert number_values(long, value, count, causal=False)[0][0, 1:8].tolist() == [1234567.0] * 7
    assert number_values(long, value, count, causal=True)[0][0, 5:8].tolist() == [12345.0, 123456.0, 1234567.0]
    from loopwm.text.model import NUMBER_TOKENS

    run = torch.tensor([[12] + [2, 3, 4] * 7])  # a 21-digit run: read from its last NUMBER_TOKENS tokens
    full = number_values(run, value, count, causal=True)
    window = number_values(run[:, -(NUMBER_TOKENS + 1):], value, count, causal=True)  # what generation keeps
    assert full[0][0, -1] == window[0][0, -1] and full[1][0, -1] == window[1][0, -1]
    from loopwm.text.numbers import MAX_PLACE

    # a model that writes a long run of digits (a degenerate reply) must still embed it: places beyond the
    # table share its last row, read and written alike
    assert int(full[1].max()) == MAX_PLACE - 1 and int(number_values(run, value, count, False)[1].max()) == MAX_PLACE - 1
    model = tiny_model(numbers=True)
    model.set_digits([str(i) for i in range(model.vocab_size)])
    digits = torch.arange(1, 11).repeat(1, 3)  # (1, 30): ids 1-9 are the one-digit numbers, 10 the pair "10"
    assert model.embed_tokens(digits, causal=True).shape == (1, 30, model.cfg.d)


def test_number_features_start_at_zero_see_values_and_never_leak_from_later_digits():
    plain, numbers = tiny_model(), tiny_model(numbers=True)
    context, actions, target = random_batch()
    target[:, 2:6] = torch.tensor([6, 9, 12, 15])  # digits in the reply: 2 of the 4 tokens
    with torch.no_grad():
        numbers.number_proj.weight.zero_()
        numbers.number_place.weight.zero_()
        numbers.load_state_dict(plain.state_dict(), strict=False)
        same = numbers.loss(context, actions, target, depth=2)[0]
        torch.testing.assert_close(same, plain.loss(context, actions, target, depth=2)[0])  # zero: the plain model
        numbers.number_proj.weight.normal_(0, 0.5)
        _, memory, _ = numbers.imagine(context, actions, depth=2)
        scores = numbers.decode(memory, target)
        later = target.clone()
        later[:, 3] = 27  # the second digit of a written number changes: earlier positions cannot see it
        changed = numbers.decode(memory, later)
        torch.testing.assert_close(changed[:, :3], scores[:, :3])
        assert not torch.allclose(changed[:, 3:], scores[:, 3:])
        context[:, 1:5] = torch.tensor([5, 6, 9, 5])  # the number 69, between two words, in every context
        read = numbers.embed_tokens(context)
        context[:, 3] = 12  # 62: its first digit, the same token, now reads another value
        again = numbers.embed_tokens(context)
        assert not torch.allclose(again[:, 2], read[:, 2])
        torch.testing.assert_close(again[:, 4:], read[:, 4:])


# ----- the commands -----
def tiny_text_train(toy, run, *extra: str) -> list[str]:
    """`loopwm text train` on the toy world with a model small enough for a test, plus `extra`."""
    return ["text", "train", "--data", str(toy), "--out", str(run), "--vocab-size", "400", "--model.d", "32",
            "--model.n-heads", "2", "--model.n-state", "4", "--model.n-decoder-layers", "1", "--model.max-context",
            "64", "--model.max-target", "32", "--batch-size", "8", "--eval-every", "10", "--dev-samples", "8",
            "--threads", "1", "--no-progress", "--lr", "3e-3", "--warmup", "5", *extra]


@needs_tokenizers
def test_number_features_train_save_and_load_with_the_tokenizers_digits(tmp_path, capsys):
    from loopwm.text.train import load_text_run

    run, toy = tmp_path / "run", make_toy_corpus(tmp_path / "data", clock=True)
    assert main(tiny_text_train(toy, run, "--model.numbers", "--steps", "12")) == 0
    model, enc, _, _ = load_text_run(run)
    digits = [i for i, t in enumerate(enc.token_strings()) if t.isdigit()]
    assert len(digits) == 10 and sorted(model.digit_value[digits].tolist()) == list(range(10))
    assert int((model.digit_value >= 0).sum()) == 10  # nothing else counts as a digit
    assert float(model.number_proj.weight.detach().abs().sum()) > 0  # trained away from its zero start
    capsys.readouterr()
    preds = tmp_path / "predictions.jsonl"
    assert main(["text", "eval", str(run), "--json", "--max-starts", "4", "--actions", "2", "--batch-size", "4",
                 "--state-starts", "0", "--predictions", str(preds)]) == 0
    result = json.loads(capsys.readouterr().out)
    lines = [json.loads(x) for x in preds.read_text().splitlines()]
    assert result["n_samples"] == len(lines) == 4 and all(len(r["actions"]) == 2 for r in lines)
    assert all(set(r["baselines"]) == set(result["baselines"]) for r in lines)  # for text_paired.py --against
    numeric = [r for r in lines if any(ch.isdigit() for ch in r["reference"])]  # the clock's readings
    assert result["rows"]["numbers"]["n"] == len(numeric)


@needs_tokenizers
def test_runs_and_scores_record_the_fingerprint_of_their_data(tmp_path, capsys):
    from loopwm.text.corpus import fingerprint, load_trajectories

    toy = make_toy_corpus(tmp_path / "data")
    train = load_trajectories(toy, "train")
    assert fingerprint(train) == fingerprint(load_trajectories(toy, "train")) != fingerprint(train[1:])
    run = tmp_path / "run"
    args = tiny_text_train(toy, run)
    assert main(args + ["--steps", "10"]) == 0
    capsys.readouterr()
    assert main(["text", "eval", str(run), "--json", "--max-starts", "4", "--actions", "1", "--state-starts", "0"]) == 0
    out = capsys.readouterr()
    result = json.loads(out.out)
    assert result["data_fingerprint"] == {"test": fingerprint(load_trajectories(toy, "test")), "train": fingerprint(train)}
    assert result["trained_on_fingerprint"] == fingerprint(train) and "warning" not in out.err
    # one training reply changes, as a collection made again by the same command may differ
    path = min((toy / "trajectories" / "train").glob("*/*.json"))
    record = json.loads(path.read_text())
    record["steps"][0]["observation"] += " (changed)"
    path.write_text(json.dumps(record))
    assert main(args + ["--steps", "20"]) == 2  # resuming would mix two collections: refused, with the fix
    err = capsys.readouterr().err
    assert "other data" in err and "new --out" in err
    assert main(["text", "eval", str(run), "--json", "--max-starts", "4", "--actions", "1", "--state-starts", "0"]) == 0
    out = capsys.readouterr()
    assert "trained on another collection" in out.err  # scored, but said plainly
    assert json.loads(out.out)["data_fingerprint"]["train"] != json.loads(out.out)["trained_on_fingerprint"]


@needs_tokenizers
def test_text_train_resumes_and_eval_reports_the_papers_fields(toy, tmp_path, capsys):
    run = tmp_path / "run"
    args = tiny_text_train(toy, run, "--model.n-context-layers", "1")
    assert main(args + ["--steps", "10"]) == 0
    assert main(args + ["--steps", "60"]) == 0  # resumes from step 10: more steps are resumable
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 61))
    dev = [r["dev_loss"] for r in records if "dev_loss" in r]
    assert dev[-1] < 0.6 * math.log(400)  # far below guessing among the 400 tokens: it learns the templates
    assert main(args + ["--steps", "60", "--lr", "1e-3"]) == 2  # another setting: refused, with the reason
    assert "lr differ" in capsys.readouterr().err
    saved = json.loads((run / "config.json").read_text())
    del saved["bucket"]  # as a run saved before batches were grouped by length
    (run / "config.json").write_text(json.dumps(saved))
    assert main(args + ["--steps", "60"]) == 2 and "bucket differ" in capsys.readouterr().err
    assert main(args + ["--steps", "60", "--bucket", "1"]) == 0  # it drew plain batches: resumes as such
    capsys.readouterr()
    assert main(["text", "eval", str(run), "--json", "--max-starts", "6", "--actions", "1", "3", "--batch-size", "4",
                 "--state-starts", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    sr = result["state_reliance"]  # the toy's replies depend on the rooms' state: hiding it costs
    assert 0 < sr["nll"] < sr["nll_state_hidden"] < 50
    looks = result["state_rows"]["look around"]
    assert looks["model"]["n"] == looks["lookup"]["n"] == 3 and result["state_rows"]["ambiguity"]["model"]["n"] == 0
    assert set(result["baselines"]) == set(looks) - {"model"} == {"copy", "lookup", "recall", "trend", "trend-context"}
    for key in ("overall", "per_task", "n_samples", "iterations_per_step", "params", "baselines", "by_actions"):
        assert key in result
    assert set(result["per_task"]) <= {"Find", "Boil"} and result["n_samples"] == 6
    from loopwm.text.corpus import Encoder, eval_starts, load_tokenizer, load_trajectories

    enc, trajs = Encoder(load_tokenizer(run / "tokenizer.json")), load_trajectories(toy, "test")
    longer = [len(enc.ids(trajs[i].observations[t + 3])) + 1 > 32 for i, t in eval_starts(trajs, 3, 6, seed=0)]
    assert result["cut_references"] == sum(longer)  # references the 32-token decoder cannot write whole
    assert set(result["overall"]) >= {"em", "f1", "bleu4", "entity"} and 0 <= result["overall"]["f1"] <= 100
    assert set(result["by_actions"]) == {"1", "3"} and result["iterations_per_step"] == 4.0  # round(mu_rec)
    assert (run / "text_eval.json").exists()
    assert main(["text", "eval", str(run), "--max-starts", "4", "--actions", "2", "--exit", "delta", "--depth", "6"]) == 0
    assert "overall" in capsys.readouterr().out
    # the baselines alone, without a model: the same samples, the same scores
    out = tmp_path / "baselines.json"
    assert main(["text", "baselines", str(toy), "--json", "--max-starts", "6", "--actions", "1", "3",
                 "--state-starts", "3", "--out", str(out)]) == 0
    alone = json.loads(capsys.readouterr().out)
    assert alone == json.loads(out.read_text()) and alone["n_samples"] == 6
    assert alone["baselines"] == {n: b for n, b in result["baselines"].items() if n != "trend-context"}
    assert alone["by_actions"]["1"]["recall"] == result["by_actions"]["1"]["recall"]
    assert alone["state_rows"]["look around"]["trend"] == looks["trend"]
    assert main(["text", "baselines", str(toy), "--max-starts", "6", "--actions", "1", "3"]) == 0
    table = capsys.readouterr().out
    assert "overall" in table and "step 3" in table and "trend EM" in table


@needs_tokenizers
def test_text_commands_name_bad_input(tmp_path, capsys):
    assert main(["text", "train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")]) == 2
    assert "not a text dataset" in capsys.readouterr().err
    assert main(["text", "eval", str(tmp_path / "nothing")]) == 2
    assert "no such run" in capsys.readouterr().err
    assert main(["text", "baselines", str(tmp_path / "nowhere")]) == 2
    assert "not a text dataset" in capsys.readouterr().err
    toy = make_toy_corpus(tmp_path / "data", n_train=4, n_dev=1, n_test=1)
    assert main(tiny_text_train(toy, tmp_path / "r", "--model.hints", "future", "--steps", "1")) == 2
    assert "use --model.hints none, replies, trend, similar, since, mentions, mentions-after or mentions-dup" in capsys.readouterr().err


@needs_tokenizers
def test_text_train_until_plateau_cools_down_and_stops_before_the_cap(toy, tmp_path):
    run = tmp_path / "run"
    args = tiny_text_train(toy, run, "--steps", "3000", "--until-plateau", "0.02")
    assert main(args) == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    start = [r["cooldown_from"] for r in records if "cooldown_from" in r]
    last = records[-1]["step"]
    assert len(start) == 1 and last < 3000  # the toy world is learned long before the cap
    assert last == start[0] + round(0.2 * start[0])  # then a cool-down of a fifth of the steps so far
    assert records[-1]["lr"] < 0.15 * 3e-3 and max(r["lr"] for r in records) == pytest.approx(3e-3)
    meta = json.loads(sorted((run / "checkpoints").glob("step_*.json"))[-1].read_text())
    assert meta["stop_reason"] == "plateau" and meta["cooldown_from"] == start[0]
    assert main(args) == 0  # re-running a finished run trains nothing more
    assert len((run / "metrics.jsonl").read_text().splitlines()) == last


@needs_tokenizers
def test_text_train_can_judge_the_plateau_on_a_weight_average(toy, tmp_path, capsys):
    from loopwm.checkpoint import latest_checkpoint, read_checkpoint

    run = tmp_path / "run"
    args = tiny_text_train(toy, run, "--steps", "60", "--until-plateau", "0.02", "--plateau-ema", "0.9")
    assert main(args) == 0
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    judged = [r for r in records if "dev_loss" in r]
    assert judged and all("dev_loss_avg" in r for r in judged)
    assert any(r["dev_loss_avg"] != r["dev_loss"] for r in judged)
    tensors, _ = read_checkpoint(latest_checkpoint(run))
    assert any(k.startswith("average/") for k in tensors)
    assert main(args) == 0  # re-running a finished run trains nothing more
    assert len((run / "metrics.jsonl").read_text().splitlines()) == len(records)
    assert main(tiny_text_train(toy, tmp_path / "bad", "--steps", "60", "--plateau-ema", "0.9")) == 2  # nothing to judge
    assert "--plateau-ema" in capsys.readouterr().err


def test_bucketed_batches_draw_the_same_samples_grouped_by_target_length():
    import numpy as np

    from loopwm.text.train import draw_batches

    pool = [(i, t) for i in range(7) for t in range(13)]
    length = lambda s: (s.traj * 31 + s.t * 17) % 23  # noqa: E731 - any fixed length per sample
    batches = draw_batches(np.random.default_rng(3), pool, 2, batch_size=5, bucket=4, length=length)
    plain = np.random.default_rng(3).integers(0, len(pool), 20)  # what an unbucketed draw picks
    assert sorted((s.traj, s.t) for b in batches for s in b) == sorted(pool[i] for i in plain)
    assert len(batches) == 4 and all(len(b) == 5 and {s.k for s in b} == {2} for b in batches)
    spans = sorted((min(map(length, b)), max(map(length, b))) for b in batches)
    assert all(hi <= lo for (_, hi), (lo, _) in zip(spans, spans[1:]))  # no overlap: like lengths together
    assert len(draw_batches(np.random.default_rng(3), pool, 2, 5, 1, length)) == 1


# ----- episode hints -----
def random_hints(B=3, H=7, vocab=400, seed=2):
    """Row 0: two hints (4 and 3 tokens, tags 2 and 5); row 1: one of 4 tokens; row 2: none."""
    from loopwm.text.model import Hints

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, vocab, (B, H), generator=g)
    ids[1, 4:], ids[2] = 0, 0
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2]] * B)
    tags = torch.tensor([[2] * 4 + [5] * 3] * B)
    return Hints(ids, pos * (ids != 0), tags * (ids != 0))


LINE_HEAD = {"hints": "replies", "numbers": True, "line_head": True}


@pytest.mark.parametrize("kw", [{"hints": "replies"}, {"hints": "trend", "numbers": True, **STATE_ONLY_POINTER},
                                {**LINE_HEAD, **STATE_ONLY_POINTER},
                                {"hints": "replies", "copy_match": 4, **STATE_ONLY_POINTER},
                                {"hints": "replies", "copy_follow": True, **STATE_ONLY_POINTER},
                                {"hints": "since", "hint_window": 3, "copy_match": 4, **STATE_ONLY_POINTER},
                                {"hints": "mentions", "numbers": True, "line_head": True, **STATE_ONLY_POINTER}])
def test_hints_are_required_read_per_sample_and_change_only_their_row(kw):
    from loopwm.text.model import Hints

    model = tiny_model(**kw)
    if model.cfg.hint_window:  # a window that matters: it must not reach across hints or padding
        with torch.no_grad():
            model.hint_window_proj.weight.normal_(0.0, 0.5)
    if model.cfg.copy_match or model.cfg.copy_follow:  # a bonus that matters: spans must not run on across padding
        with torch.no_grad():                                 # or from the text before
            if model.cfg.copy_match:
                model.copy_match.bias.copy_(torch.tensor([2.0, 1.0, 1.0, 1.0]))
            else:
                model.copy_follow.bias.fill_(2.0)
            model.copy_gate.bias.fill_(-2.0)
    assert model.reads_beyond_state  # hiding the state leaves the hints: state_reliance measures it
    context, actions, target = random_batch()
    if model.cfg.copy_match or model.cfg.copy_follow:  # replies that run from one text into the next, rows padded
        for b in range(3):
            L, A = int((context[b] != 0).sum()), int((actions[b, 0] != 0).sum())
            target[b, 1:5] = torch.stack([context[b, L - 1], actions[b, 0, 0], actions[b, 0, A - 1], actions[b, 1, 0]])
    hints = random_hints()
    with pytest.raises(ValueError, match="hints"):
        model.imagine(context, actions, depth=2)
    _, memory, _ = model.imagine(context, actions, depth=2, hints=hints)
    logits = model.decode(memory, target)
    for b in range(3):  # batched equals per-sample, each row cut to its own length
        L, A = int((context[b] != 0).sum()), int((actions[b, 0] != 0).sum())
        H = max(1, int((hints.ids[b] != 0).sum()))
        own = Hints(*(x[b:b + 1, :H] for x in hints))
        _, m1, _ = model.imagine(context[b:b + 1, :L], actions[b:b + 1, :, :A], depth=2, hints=own)
        torch.testing.assert_close(model.decode(m1, target[b:b + 1]), logits[b:b + 1], atol=2e-5, rtol=1e-4)
    farther = hints._replace(tags=hints.tags.masked_fill(hints.ids[:, :] != 0, 9))  # the same text from further back
    changed = model.decode(model.imagine(context, actions, depth=2, hints=farther)[1], target)
    assert not torch.allclose(changed[:2], logits[:2]) and torch.equal(changed[2], logits[2])


def test_the_hint_window_starts_as_the_same_model_and_reads_only_earlier_tokens_of_the_same_hint():
    plain, windowed = tiny_model(hints="since"), tiny_model(hints="since", hint_window=3)
    for name, p in plain.state_dict().items():  # created last: the rest starts the same
        torch.testing.assert_close(windowed.state_dict()[name], p)
    context, actions, target = random_batch()
    hints = random_hints()
    torch.testing.assert_close(windowed.loss(context, actions, target, depth=2, hints=hints)[0],
                               plain.loss(context, actions, target, depth=2, hints=hints)[0])  # zero projection
    e = torch.randn(1, 7, windowed.cfg.d)
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2]])  # two hints: 4 tokens, then 3
    with torch.no_grad():
        windowed.hint_window_mix.copy_(torch.tensor([1.0, 10.0, 100.0])[:, None].expand(3, windowed.cfg.d))
        ctx = windowed.hint_context(e, pos)
    torch.testing.assert_close(ctx[0, 3], e[0, 2] + 10 * e[0, 1] + 100 * e[0, 0])
    torch.testing.assert_close(ctx[0, 5], e[0, 4])  # the second hint's second token: only its first, not the first hint
    assert float(ctx[0, 0].abs().max()) == 0.0 and float(ctx[0, 4].abs().max()) == 0.0  # hint starts read nothing
    with pytest.raises(LoopWMError, match="--model.hints"):
        tiny_model(hint_window=3)


@needs_tokenizers
@pytest.mark.parametrize("hints", ["replies", "trend", "similar", "since --model.hint-window 4", "mentions-after",
                                   "replies --model.numbers --model.line-head --changed-weight 3"])
def test_a_model_with_hints_trains_and_evaluates(hints, tmp_path, capsys):
    run, toy = tmp_path / "run", make_toy_corpus(tmp_path / "data", clock=True)
    assert main(tiny_text_train(toy, run, "--model.hints", *hints.split(), "--model.copy", "--steps", "12")) == 0
    capsys.readouterr()
    assert main(["text", "eval", str(run), "--json", "--max-starts", "4", "--actions", "1", "2",
                 "--batch-size", "4", "--state-starts", "2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_samples"] == 4 and set(result["by_actions"]) == {"1", "2"}
    assert set(result["state_reliance"]) == {"nll", "nll_state_hidden"}


# ----- the line-fit number head -----
def test_the_line_fit_head_extends_a_line_through_readings_and_repeats_a_single_one():
    from loopwm.text.numbers import LineFitHead, Readings

    head = LineFitHead(8)
    with torch.no_grad():
        head.query.weight.zero_()  # equal weight on every reading; c starts at 1: the least-squares line
    y = torch.randn(3, 2, 8)
    value = torch.tensor([[55.0, 53.0, 51.0, 0.0], [40.0, 0.0, 0.0, 0.0], [0.0] * 4])
    tag = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0], [0.0] * 4])
    valid = torch.tensor([[True, True, True, False], [True, False, False, False], [False] * 4])
    v, has = head.value(y, Readings(torch.randn(3, 4, 8), value, tag, valid))
    torch.testing.assert_close(v[0], torch.tensor([57.0, 57.0]))  # 55, 53, 51 one step apart: 57 next
    torch.testing.assert_close(v[1], torch.tensor([40.0, 40.0]))  # one reading: repeated
    assert has.tolist() == [[True, True], [True, True], [False, False]] and v[2].abs().max() == 0
    with torch.no_grad():
        head.extend.bias.fill_(-30.0)  # c = 0: the weighted mean, no extension
    torch.testing.assert_close(head.value(y, Readings(torch.randn(3, 4, 8), value, tag, valid))[0][0], torch.tensor([53.0, 53.0]))


def test_the_line_fit_head_proposes_the_next_digit_only_where_the_number_agrees():
    from loopwm.text.numbers import LineFitHead

    head = LineFitHead(8)
    value = torch.tensor([[57.2, 57.0, 56.6, 57.0, 105.0, 105.0, -3.0, 7.0]])
    prefix = torch.tensor([[0.0, 5.0, 57.0, 6.0, 10.0, 1.0, 0.0, 0.0]])  # digits of the number written so far
    written = torch.tensor([[0, 1, 2, 1, 2, 1, 0, 0]])
    has = torch.tensor([[True] * 7 + [False]])
    digit, proposes = head.propose(value, has, prefix, written)
    assert proposes.tolist() == [[True, True, False, False, True, True, False, False]]
    assert digit[proposes].tolist() == [5, 7, 5, 0]  # 5|7, 57 done, 6 disagrees, 10|5, 1|0; negative; no readings


def test_a_shut_line_head_is_the_model_without_it_and_an_open_one_writes_the_lines_digits():
    from loopwm.text.model import Hints

    plain = tiny_model(hints="replies", numbers=True, **STATE_ONLY_POINTER)
    model = tiny_model(**LINE_HEAD, **STATE_ONLY_POINTER)
    model.load_state_dict(plain.state_dict(), strict=False)
    context, actions, target = random_batch()
    five, three, word = DIGIT_STRINGS.index("5"), DIGIT_STRINGS.index("3"), 4  # digit tokens, and a word
    ids = torch.tensor([[word, five, five, word, five, three, word]] * 3)  # "55" read 1 step back, "53" 2 steps back
    hints = Hints(ids, torch.tensor([[0, 1, 2, 3, 0, 1, 2]] * 3), torch.tensor([[1] * 4 + [2] * 3] * 3))
    with torch.no_grad():
        model.line_head.gate.bias.fill_(40.0)
        shut = model.decode(model.imagine(context, actions, depth=2, hints=hints)[1], target)
        torch.testing.assert_close(shut, plain.decode(plain.imagine(context, actions, depth=2, hints=hints)[1], target))
        model.line_head.gate.bias.fill_(-40.0)  # always the head where it proposes
        model.line_head.query.weight.zero_()  # both readings weighed alike: 57 at the reply's step
        _, memory, _ = model.imagine(context, actions, depth=2, hints=hints)
        out = model.generate(memory, bos=1, eos=2, max_len=6)
    assert [[DIGIT_STRINGS[i] for i in row[:2]] for row in out.tolist()] == [["5", "7"]] * 3
    inp = torch.cat([torch.ones(3, 1, dtype=torch.long), out[:, :-1]], dim=1)
    finished = torch.cumsum((out == 2).long(), 1) - (out == 2).long() > 0
    assert torch.equal(model.decode(memory, inp).argmax(-1)[~finished], out[~finished])  # cached = teacher-forced


def test_the_line_head_is_trained_by_its_regression_and_needs_numbers_hints_and_single_digits():
    from loopwm.text.model import TextModelConfig, TextWorldModel

    from loopwm.text.model import Hints

    model = tiny_model(**LINE_HEAD, **STATE_ONLY_POINTER).train()
    context, actions, target = random_batch()
    d = [DIGIT_STRINGS.index(str(n)) for n in range(10)]
    target[:, 3:5] = torch.tensor([d[5], d[8]])  # the reply writes 58
    ids = torch.tensor([[4, d[5], d[5], 4, d[5], d[0], 4, d[5], d[3]]] * 3)  # 55, 50 and 53, not on one line
    hints = Hints(ids, torch.tensor([[0, 1, 2] * 3] * 3), torch.tensor([[1] * 3 + [2] * 3 + [3] * 3] * 3))
    loss, _ = model.loss(context, actions, target, depth=2, hints=hints)
    loss.backward()
    assert torch.isfinite(loss) and model.line_head.query.weight.grad.abs().sum() > 0  # which readings to fit
    assert model.line_head.extend.weight.grad.abs().sum() > 0  # how far along the line
    similar = tiny_model(**{**LINE_HEAD, "hints": "similar"}, **STATE_ONLY_POINTER)
    other = hints._replace(tags=hints.tags.masked_fill(hints.tags == 3, 35))  # the third: a reply to another action
    readings = similar.imagine(context, actions, depth=2, hints=other)[1].readings
    assert readings.valid.sum(1).tolist() == [2, 2, 2]  # not a reading of this action's gauge
    with pytest.raises(LoopWMError, match="--model.numbers"):
        TextWorldModel(400, TextModelConfig(line_head=True, hints="replies"))
    with pytest.raises(LoopWMError, match="--model.hints"):
        TextWorldModel(400, TextModelConfig(line_head=True, numbers=True))
    merged = TextWorldModel(20, TextModelConfig(d=16, n_heads=2, **LINE_HEAD))
    with pytest.raises(LoopWMError, match="split digits"):
        merged.set_digits(["<pad>", "<bos>", "<eos>", "<sep>", "12", "3"] + [f"w{i}" for i in range(14)])
