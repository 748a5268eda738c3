"""The text baselines on hand-built trajectories: what each may read, and the replies it gives."""

from loopwm.text.baselines import (
    BASELINES,
    TREND_REPLIES,
    baseline_answers,
    episode_hints,
    extrapolate,
    lookup_table,
    template,
)
from loopwm.text.corpus import Sample, Trajectory


def traj(actions, observations):
    return Trajectory(task="t", type="Incline", split="test", variation=0, kind="gold", task_description="d",
                      observations=observations, actions=actions, entities=[])


def gauge(v):
    return f"the gauge reads {v} units"


def test_template_masks_numbers_not_names():
    assert template("a brick approximately 53% down plane 2, at -4.5 degrees") == \
        "a brick approximately #% down plane #, at # degrees"
    assert template("room2 and x-ray") == "room2 and x-ray"  # digits inside a word are not readings


def test_recall_reads_only_the_context_and_falls_back_to_the_lookup():
    acts = ["look", "open door", "look", "open door", "look"]
    obs = ["start", "room A", "done", "room B", "already open", "room C"]
    tr = [traj(acts, obs)]
    table = {"look": "a room", "open door": "The door is now open."}
    # context o_0..o_2, then a_3 = look, a_4 = open door: the last look in the context saw room A
    ans = baseline_answers([Sample(0, 2, 1), Sample(0, 2, 2), Sample(0, 0, 1)], tr, table)
    assert ans["recall"] == ["room A", "done", "a room"]  # nothing seen from o_0 alone: the lookup's reply
    assert ans["copy"] == ["done", "done", "start"]
    assert ans["lookup"] == ["a room", "The door is now open.", "a room"]
    assert set(ans) == set(BASELINES) - {"trend-context"} and all(len(v) == 3 for v in ans.values())


def test_trend_reads_a_line_through_the_readings_at_the_step_asked():
    acts = ["read"] * 6
    obs = ["start", gauge(10), gauge(12), "the gauge is broken", gauge(16), gauge(18), gauge(20)]
    tr = [traj(acts, obs)]
    # context o_0..o_4: readings 10, 12, 16 at steps 1, 2, 4 (the reply of another wording is skipped)
    ans = baseline_answers([Sample(0, 4, 2)], tr, {})
    assert ans["recall"] == [gauge(16)] and ans["trend"] == [gauge(20)]
    assert extrapolate([(1, gauge(3)), (2, gauge(4))], 10) == gauge(12)
    assert extrapolate([(1, "at 1.5 and 7"), (3, "at 2.5 and 7")], 5) == "at 3.5 and 7"  # decimals kept
    assert extrapolate([(1, gauge(-2)), (2, gauge(-4))], 3) == gauge(-6)
    assert extrapolate([(1, gauge(3))], 5) is None  # one reading has no trend
    assert extrapolate([(1, "no reading"), (2, "no reading")], 5) is None
    only_one = baseline_answers([Sample(0, 1, 1)], tr, {})
    assert only_one["trend"] == only_one["recall"] == [gauge(10)]


def test_trend_fits_the_last_readings_only():
    values = [500] * 3 + [10 * i for i in range(TREND_REPLIES)]  # a start off the line, then TREND_REPLIES on it
    readings = [(j, gauge(v)) for j, v in enumerate(values, start=1)]
    assert extrapolate(readings, len(values) + 2) == gauge(10 * (TREND_REPLIES + 1))


def test_lookup_table_takes_the_most_frequent_reply():
    trs = [traj(["a", "a", "b"], ["o", "x", "y", "z"]), traj(["a"], ["o", "y"])]
    assert lookup_table(trs) == {"a": "y", "b": "z"}


class CharEncoder:
    """One token per character: enough for the Batcher's window arithmetic."""

    sep, bos, eos = 0, 1, 2

    def ids(self, text):
        return [ord(c) for c in text]


def test_first_whole_step_matches_the_context_window():
    from loopwm.text.corpus import Batcher

    acts = ["read"] * 8
    obs = ["start"] + [gauge(10 * i) for i in range(1, 9)]
    tr = traj(acts, obs)
    for budget in (40, 90, 160, 400):
        batcher = Batcher(CharEncoder(), [tr], budget, 16, 64)
        for t in range(1, 9):
            first = batcher.first_whole_step(tr, t)
            ctx = batcher.context_ids(tr, t)
            held = "".join(f"\n> {acts[j - 1]}\n{obs[j]}" for j in range(first, t + 1))
            assert "".join(map(chr, ctx)).endswith(held)  # steps first .. t are all in the context
            room = budget - 2  # the task description "d" and its separator come first
            assert len(held) <= room
            if first > 1:  # and one step more would not fit
                assert len(f"\n> {acts[first - 2]}\n{obs[first - 1]}" + held) > room
            if budget == 400:
                assert first == 1  # everything fits
    narrow = Batcher(CharEncoder(), [tr], 60, 16, 64)
    ans = baseline_answers([Sample(0, 6, 2)], [tr], {}, narrow)
    first = narrow.first_whole_step(tr, 6)
    assert first == 6 and ans["trend-context"] == [gauge(60)]  # one reading in the window: its recall
    assert ans["trend"] == [gauge(80)]


def test_episode_hints_read_only_the_context_newest_first_with_their_distance():
    acts = ["read", "open", "read", "read", "open", "read"]
    obs = ["start", gauge(10), "opened", gauge(12), gauge(14), "already open", gauge(18)]
    tr = traj(acts, obs)
    replies = episode_hints("replies", 16)
    # context o_0..o_4, then a_5 = open, a_6 = read: the reply after a_6 (step 6) is predicted
    assert replies(tr, 4, 2) == [(2, gauge(14)), (3, gauge(12)), (5, gauge(10))]
    assert episode_hints("replies", 2)(tr, 4, 2) == [(2, gauge(14)), (3, gauge(12))]  # the newest ones
    assert replies(tr, 4, 1) == [(3, "opened")]  # a_5 = open was taken once before, at step 2
    assert replies(tr, 0, 1) == []  # nothing seen yet
    assert episode_hints("trend", 16)(tr, 4, 2) == [(0, gauge(16))]  # the line through 10, 12, 14 at steps 1, 3, 4
    assert episode_hints("trend", 16)(tr, 4, 2)[0][1] == baseline_answers([Sample(0, 4, 2)], [tr], {})["trend"][0]
    assert episode_hints("none", 16) is None


def test_batched_hints_keep_the_newest_within_the_token_budget():
    from loopwm.text.corpus import Batcher

    acts = ["read"] * 6
    obs = ["start"] + [gauge(10 * i) for i in range(1, 7)]  # each reply is 24 characters
    tr = traj(acts, obs)
    batcher = Batcher(CharEncoder(), [tr], 400, 16, 64, hints=episode_hints("replies", 16), hint_tokens=50)
    arrays = batcher.hint_arrays([Sample(0, 4, 1), Sample(0, 1, 1), Sample(0, 0, 1)])
    ids, pos, tags = arrays["hints"], arrays["hint_pos"], arrays["hint_tags"]
    assert ids.shape == pos.shape == tags.shape == (3, 48)
    first = "".join(map(chr, ids[0][ids[0] > 0]))
    assert first == gauge(40) + gauge(30)  # two whole replies fit in 50 tokens, the third does not
    assert list(tags[0]) == [1] * 24 + [2] * 24 and pos[0, 24] == 0 and pos[0, 47] == 23
    assert "".join(map(chr, ids[1][ids[1] > 0])) == gauge(10) and (ids[2] == 0).all()  # none before o_1
    tight = Batcher(CharEncoder(), [tr], 400, 16, 64, hints=episode_hints("replies", 16), hint_tokens=8)
    assert "".join(map(chr, tight.hint_arrays([Sample(0, 4, 1)])["hints"][0])) == gauge(40)[:8]  # the newest, cut
    assert "hints" not in Batcher(CharEncoder(), [tr], 400, 16, 64).batch([Sample(0, 4, 1)])
    ended = Batcher(CharEncoder(), [tr], 400, 16, 64, hints=episode_hints("replies", 16), hint_tokens=50, hint_end=2)
    row = list(ended.hint_arrays([Sample(0, 4, 1)])["hints"][0])
    assert row == [ord(c) for c in gauge(40)] + [2] + [ord(c) for c in gauge(30)] + [2]  # each hint closed


def test_similar_hints_add_the_newest_reply_to_each_alike_action_tagged_apart():
    from loopwm.text.baselines import SIMILAR_ACTIONS, similar_replies, word_overlap
    from loopwm.text.model import MAX_HINT_TAG, SIMILAR_TAG

    assert word_overlap("move seed to pot 1", "move seed to pot 2") == 4 / 6
    assert word_overlap("open door", "read gauge") == 0.0
    acts = ["move seed to pot 1", "read", "move seed to pot 3", "move seed to pot 1", "open door", "read",
            "move seed to pot 2"]
    obs = ["start", "which pot 1?", gauge(10), "which pot 3?", "which pot 1, again?", "opened", gauge(12), "which pot 2?"]
    tr = traj(acts, obs)
    # context o_0..o_5, then a_6 = read, a_7 = move seed to pot 2: its reply (o_7) is predicted
    alike = similar_replies(tr, 5, acts[6], SIMILAR_ACTIONS)
    assert alike == [(4, acts[3], "which pot 1, again?"), (3, acts[2], "which pot 3?")]  # newest reply each, newer first
    similar = episode_hints("similar", 16)
    assert similar(tr, 5, 2) == [(SIMILAR_TAG + 3, f"> {acts[3]}\nwhich pot 1, again?"), (SIMILAR_TAG + 4, f"> {acts[2]}\nwhich pot 3?")]
    # a_3 = move seed to pot 1 was taken before (its own reply first), and pot 3 is alike (the same string is not)
    assert similar(tr, 3, 1) == [(3, "which pot 1?"), (SIMILAR_TAG + 1, f"> {acts[2]}\nwhich pot 3?")]
    assert similar(tr, 0, 1) == [] and similar(tr, 1, 1) == []  # nothing alike seen yet ("read" was never taken)
    assert similar(tr, 2, 1) == [(SIMILAR_TAG + 2, f"> {acts[0]}\nwhich pot 1?")]  # pot 3 is like pot 1
    far = traj(["move seed to pot 1"] + ["read"] * 80 + ["move seed to pot 2"], ["start"] + ["x"] * 82)
    assert similar(far, 81, 1)[-1][0] == MAX_HINT_TAG  # capped within the embedding
    long_own = traj(["read"] * 40, ["start"] + [gauge(i) for i in range(40)])
    assert max(tag for tag, _ in episode_hints("similar", 64)(long_own, 39, 1)) == SIMILAR_TAG - 1


def test_since_hints_add_what_was_done_after_the_newest_reply_with_short_replies_the_context_holds():
    from loopwm.text.baselines import SINCE_ACTIONS, SINCE_REPLY_WORDS, since_text
    from loopwm.text.model import SIMILAR_TAG

    room = "This room is called the hall. A door to the kitchen (that is closed)"
    long_reply = " ".join(["word"] * (SINCE_REPLY_WORDS + 1))
    acts = ["look around", "open door to kitchen", "go to kitchen", "look around", "inventory", "go to hall",
            "look around"]
    obs = ["start", room, "The door is now open.", "You move to the kitchen.", "This room is called the kitchen.",
           long_reply, "You move to the hall.", room.replace("closed", "open")]
    tr = traj(acts, obs)
    since = episode_hints("since", 16)
    # context o_0..o_4, then a_4 = inventory, a_5 = go to hall, a_6 = look around: its reply o_7 is predicted.
    # The newest earlier look is o_4 (the kitchen); a_4 and a_5 came after it, their replies not yet in the context
    assert since(tr, 4, 3) == [(3, "This room is called the kitchen."), (SIMILAR_TAG, "> inventory\n> go to hall"),
                               (6, room)]
    # context o_0..o_6: the long reply to inventory is left out, the short one kept
    assert since_text(tr, 4, 6, 1) == "> inventory\n> go to hall\nYou move to the hall."
    # from the first look: the door opened, with its reply; a look in between is written as its action
    assert since_text(tr, 1, 6, 1).splitlines()[:3] == ["> open door to kitchen", "The door is now open.", "> go to kitchen"]
    assert "> look around" in since_text(tr, 1, 6, 1).splitlines()
    assert since(tr, 0, 1) == [] and since(tr, 1, 1) == []  # no earlier reply to the action: no hints at all
    assert since_text(tr, 4, 4, 1) == ""  # nothing done in between: no since hint
    assert since(tr, 3, 1) == [(3, room), (SIMILAR_TAG, "> open door to kitchen\nThe door is now open.\n"
                                                        "> go to kitchen\nYou move to the kitchen.")]
    busy = traj(["read"] + ["wait"] * 40 + ["read"], ["start"] + ["x"] * 41 + [gauge(1)])
    assert since_text(busy, 1, 41, 1).count("> wait") == SINCE_ACTIONS  # only the newest actions


def test_mention_hints_give_the_lines_that_name_what_the_action_names_ranked_and_capped():
    from loopwm.text.baselines import MENTION_LINES, MENTION_PER_REPLY, mention_lines
    from loopwm.text.model import SIMILAR_TAG

    jar = "a seed jar (containing a pea seed, a pea seed)"
    room = "This room is called the greenhouse. In it, you see:\n\t" + jar + "\n\ta flower pot 1 (containing soil)" \
           "\n\ta flower pot 2 (containing soil)\n\ta bee hive\n\tA door to the hallway (that is open)"
    acts = ["look around", "pick up seed jar", "move pea seed in seed jar to flower pot 1", "wait",
            "move pea seed in seed jar to flower pot 1"]
    obs = ["start", room, "You move the seed jar to the inventory.", "Ambiguous request: 0: move pea seed ...",
           "You wait.", "(the prompt again)"]
    tr = traj(acts, obs)
    # context o_0..o_2 (a_2 = the move is predicted): the jar's line holds pea, seed, jar and two pairs; the
    # pot's holds flower, pot, 1; the room gives two lines at most; the pick-up's reply names the jar
    assert mention_lines(tr, 2, acts[2], 6) == [(1, jar), (1, "a flower pot 1 (containing soil)"),
                                                (2, "You move the seed jar to the inventory.")]
    assert MENTION_PER_REPLY == 2 and mention_lines(tr, 2, acts[2], 1) == [(1, jar)]
    assert mention_lines(tr, 0, acts[2], 6) == []  # only o_1 .. o_t are read
    assert mention_lines(tr, 2, "look around", 6) == [] and mention_lines(tr, 2, "wait", 6) == []  # names nothing
    # context o_0..o_4 for the move taken again: its own earlier reply (o_3) is a "replies" hint, not a mention
    mentions = episode_hints("mentions", 16)
    hints = mentions(tr, 4, 1)
    assert hints[0] == (2, obs[3])  # the newest own reply first, tagged by its distance
    assert hints[1:] == [(SIMILAR_TAG + 4, jar), (SIMILAR_TAG + 4, "a flower pot 1 (containing soil)"),
                         (SIMILAR_TAG + 3, "You move the seed jar to the inventory.")]
    assert all(line != obs[3] for _, line in mention_lines(tr, 4, acts[4], MENTION_LINES))
    assert mentions(tr, 2, 1)[0] == (SIMILAR_TAG + 2, jar)  # no own reply yet: the mentions alone


def test_mentions_after_put_every_own_reply_before_the_named_lines():
    from loopwm.text.model import SIMILAR_TAG

    jar = "a seed jar (containing a pea seed)"
    acts = ["look around", "focus on pea seed", "wait", "focus on pea seed", "wait", "focus on pea seed"]
    obs = ["start", "In it, you see:\n\t" + jar, "You focus on the pea seed.", "You wait.", "Again.", "You wait.",
           "(predicted)"]
    tr = traj(acts, obs)
    first, after = episode_hints("mentions", 16)(tr, 5, 1), episode_hints("mentions-after", 16)(tr, 5, 1)
    own = [(2, obs[4]), (4, obs[2])]  # o_4 and o_2, newest first: 2 and 4 steps before the predicted o_6
    assert after[:2] == own and first[0] == own[0] and first[-1] == own[1]  # "mentions" puts them between
    assert sorted(after) == sorted(first) and all(tag >= SIMILAR_TAG for tag, _ in after[2:])
    assert (SIMILAR_TAG + 5, jar) in after[2:]


def test_changed_lines_weigh_what_the_newest_earlier_reply_to_the_action_lacked():
    from loopwm.text.corpus import Batcher, changed_lines

    room = "kitchen:\n\ta door (closed)\n\ta table"
    later = "kitchen:\n\ta door (open)\n\ta table  "
    assert changed_lines(later, room) == [(9, 23)] and later[9:23] == "\ta door (open)"
    assert changed_lines(room, room) == [] and changed_lines("a\n\nb", "a") == [(3, 4)]  # blank lines never count

    class Chars:  # one token per character, ids from 10 on: offsets are easy to check by hand
        bos, eos, sep = 1, 2, 3

        def ids(self, text):
            return [10 + ord(c) % 50 for c in text]

        def offsets(self, text):
            return [(i, i + 1) for i in range(len(text))]

    acts = ["look around", "open door", "look around", "look around"]
    tr = traj(acts, ["start", room, "The door is now open.", later, later])
    b = Batcher(Chars(), [tr], max_context=64, max_action=8, max_target=64, changed_weight=3.0)
    w = b.target_weights(Sample(0, 2, 1), 1 + len(later) + 1)  # target o_3, remembered o_1
    assert w[0] == 1 and (w[1 + 9:1 + 23] == 3).all() and w.sum() == len(w) + 2 * 14
    assert (b.target_weights(Sample(0, 3, 1), 5) == 1).all()  # o_4 repeats o_3, which the context holds
    assert (b.target_weights(Sample(0, 0, 3), 5) == 1).all()  # looked around at a_0, but o_1 is beyond o_0
    assert (b.target_weights(Sample(0, 1, 1), 5) == 1).all()  # "open door" never taken before
    batch = b.batch([Sample(0, 2, 1), Sample(0, 1, 1)])
    assert batch["weight"].shape == batch["target"].shape and batch["weight"].sum() > batch["weight"].size
    assert "weight" not in Batcher(Chars(), [tr], 64, 8, 64).batch([Sample(0, 2, 1)])


def test_mentions_dup_gives_the_named_lines_only_where_identical_objects_are_listed():
    from loopwm.text.baselines import listed_twice, names_duplicates

    assert listed_twice("a seed jar (containing a pea seed, a pea seed, and a pea seed)") == {("pea", "seed")}
    assert listed_twice("a cupboard (containing nothing), a drawer (containing nothing)") == set()
    assert listed_twice("a pea seed, a rose seed") == set()
    jar = "a seed jar (containing a pea seed, a pea seed)"
    acts = ["look around", "open door", "focus on pea seed", "wait", "move pea seed in seed jar to flower pot 1"]
    obs = ["start", "In it, you see:\n\t" + jar + "\n\ta door (open)", "The door is open.", "You focus on it.",
           "You wait.", "(predicted)"]
    tr = traj(acts, obs)
    dup, after = episode_hints("mentions-dup", 16), episode_hints("mentions-after", 16)
    assert names_duplicates(tr, 4, acts[4]) and dup(tr, 4, 1) == after(tr, 4, 1) and dup(tr, 4, 1)
    assert not names_duplicates(tr, 4, "open door")  # the listed twins are not what it names
    single = traj(acts, [o.replace(", a pea seed)", ")") for o in obs])
    assert not names_duplicates(single, 4, acts[4]) and dup(single, 4, 1) == []  # no own reply, no duplicates
    assert after(single, 4, 1)  # where "mentions-after" still gives the jar's line
