"""A looped world model over text: context -> latent state tokens -> one loop per action -> decoder.

    x_ctx = Enc(E[context] + P)                       (B, L, d)   the context, encoded once
    h_0   = ReadOut(Q, x_ctx)                         (B, S, d)   S learned queries read it
    for each action a_k (k = 1..K):                               one outer step per action
        h_k, z_k = LoopedCore([h_{k-1}; E[a_k] + P + t_act], z_{k-1})   the shared block, T times
    o_K   = Dec(<bos> ..., memory = [h_K; x_ctx; a_1..K])   (B, T, V)   written after the last action only
    with copy: p(w) = g p_vocab(w) + (1 - g) sum_{m: id_m = w} attn_m   a pointer into the context and actions
    with numbers: E[w] + N(value, place) on every digit token       numbers read as quantities
    with line_head: p(w) = g p(w) + (1 - g) [w = next digit of a line fitted through the hints' readings]

The looped core is the same `LoopedCore` as the physics models (prelude, contractive injection,
the one shared block, coda; exit rules, truncated gradients, per-sample depth); `kind="deep"`
swaps it for `DeepCore`, a stack of distinct blocks, with everything else equal. The decoder reads
the state tokens, the encoded context and the actions' tokens: the context holds text to copy (a
room description seen earlier), the actions the names a reply repeats ("examine liquid lead" ->
"a substance called liquid lead"), the state what the actions changed. Intermediate observations are never decoded (deferred
decoding). One token embedding serves context, actions, decoder input and output (tied weights).
With `copy`, a pointer-generator head lets the decoder write a token by pointing at it in the context
or the actions, mixed with the vocabulary by a learned gate: names the reply repeats ("examine liquid
gallium" -> "a substance called liquid gallium") need not be regenerated from the embedding.
With `copy_pool="all"` and a decoder that reads only the state tokens, the pointer may still point
into the context and the actions, but what it points at is chosen by a query that has seen only the
latent state and the reply so far: the state must carry which text to repeat.
The attention blocks (the read-out's and the decoder's) are in `loopwm.text.blocks`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from loopwm.models.blocks import Stack
from loopwm.models.exits import ExitRule
from loopwm.models.locality import Neighbourhood
from loopwm.models.looped import DeepCore, LoopedCore
from loopwm.text.blocks import DecoderBlock, ReadBlock, key_mask
from loopwm.text.numbers import MAX_PLACE, NUMBER_PERIODS, NUMBER_TOKENS, LineFitHead, Readings, line_loss, number_values
from loopwm.text.spans import match_lengths
from loopwm.utils import LoopWMError


@dataclass
class TextModelConfig:
    """The text world model's shape and loop settings."""

    kind: str = "looped"
    """"looped" (one shared block, iterated) or "deep" (n_deep distinct blocks, once each)."""
    d: int = 96
    """Token width (sized for training on 2 CPU cores; raise it where compute allows)."""
    n_heads: int = 4
    """Attention heads."""
    mlp_ratio: int = 4
    """MLP hidden width as a multiple of d."""
    n_state: int = 16
    """Latent state tokens carried from action to action."""
    n_context_layers: int = 1
    """Blocks of the context encoder."""
    n_decoder_layers: int = 2
    """Blocks of the observation decoder."""
    mu_rec: float = 4.0
    """Mean training loop count per action, T ~ max(1, Poisson(mu_rec))."""
    depth_max: int = 12
    """Cap on the sampled loop count during training."""
    eval_depth: int = 0
    """Loop count per action at evaluation; 0 means round(mu_rec)."""
    n_grad: int = 0
    """Iterations per action that receive gradients; 0 means ceil(mu_rec / 2) as in the paper."""
    n_deep: int = 4
    """Distinct blocks of the deep baseline (kind "deep"); its default matches the loop's mean count."""
    init_decay: float = 0.45
    """Initial value of every entry of A_bar."""
    decoder_reads_context: bool = True
    """The decoder attends to the encoded context as well as to the state tokens (False: to the
    state tokens only, a strict latent bottleneck)."""
    decoder_reads_actions: bool = True
    """The decoder also attends to the K actions' tokens (each marked by its place from the last),
    so it can copy the names they mention."""
    copy: bool = False
    """A pointer-generator head: the decoder may copy a token of the context or the actions by
    attending to it, mixed with the vocabulary distribution by a learned gate."""
    copy_pool: str = "read"
    """What the copy head may point at: "read" (the context and actions the decoder reads) or "all"
    (the context and the actions even where the decoder does not read them). With "all" and a decoder
    that reads only the state tokens, the pointer's keys see the text but the decoder's query comes
    from the latent state and the reply so far: which name to copy must come through the state."""
    copy_gate_init: float = 0.0
    """Starting logit of the copy head's gate (the vocabulary's weight g = sigmoid of it). 0, an even
    mix, is what was measured (results/text-v4-copy): it costs up to log 2 nats a token at first and
    the model catches up with the plain one by about step 3,000. 3 would start nearly shut (g = 0.95)."""
    copy_follow: bool = False
    """The copy head may continue a span: a memory token whose predecessor (within its text) is the token
    just written gets a bonus in the pointer's scores, weighed by a learned function of the decoder's state (zero
    at the start, so a new model starts as the same model without it). Pointer attention alone does not
    know where in a span it is, and loops ("a substance called tin substance called ..."). Hints then
    end with <eos>, so a copied hint can be closed by pointing at its end."""
    copy_match: int = 0
    """Longest span match the copy head's pointer reads (0: off). A memory token whose preceding n
    tokens repeat the last n tokens written gets a bonus in the pointer's scores, a learned function of
    the decoder's state and of n (up to this many; zero at the start). Where `copy_follow` knows only
    the token just written, this knows how far into a span the copy is: having written "A door to the",
    the pointer can tell the door line it is copying from the other door lines of the same room
    (`spans.match_lengths`). Hints then end with <eos>, as with `copy_follow`."""
    max_context: int = 192
    """Context tokens kept (the most recent; the task description always)."""
    max_action: int = 16
    """Tokens per action."""
    numbers: bool = False
    """Number features: each digit token's embedding also carries the value of the number it belongs
    to (sines and cosines of the value over periods of 10, 100 and 1,000, and its logarithm) and its
    place in that number, so readings such as "approximately 53% down the plane" or "57 degrees" are
    read as quantities, not only as digit symbols. In the context and the actions a digit knows its whole
    number (and its place from the right: units, tens, ...); in the reply being written it knows only the
    digits written so far (the value of the prefix, its place from the left), so nothing leaks from later
    tokens. Added through zero-initialised layers: a new model starts as the same model without them."""
    hints: str = "none"
    """What the decoder is also given from the whole episode, beyond the context window (computed
    from o_0 .. o_t only, by `baselines.episode_hints`): "none"; "replies", the replies the last
    action got earlier in the episode, newest first, each marked by how many steps before the
    predicted one it came (the history a reading's rate is read from); "trend", the trend baseline's
    reply, for a model that learns where to trust it (then it is not a pure world model: report it
    beside the trend); "similar", the replies as well as the newest reply to each of a few earlier
    actions most like the last one, written after their action ("move seed to pot 1" for "move seed
    to pot 2": an ambiguity prompt, or a template, seen for a neighbouring object); "since", the
    replies as well as the actions taken since the newest of them, with their short replies (a room
    looked at again is the remembered description edited by what was done since: a door opened);
    "mentions", the replies as well as the lines of earlier replies that name what the action names
    (the seed jar's listed contents for "move orange seed in seed jar to flower pot 1": several
    identical seeds there mean an ambiguity prompt); "mentions-after", the same lines placed after all
    the replies rather than after the newest, so they only take what the hint budget leaves over (the
    older replies a reading's rate needs come first); "mentions-dup", as "mentions-after" but the
    lines only where an earlier line lists two or more identical objects the action names (where
    an ambiguity prompt may come), the replies alone elsewhere. The decoder reads them and the copy
    head may point at them."""
    line_head: bool = False
    """A line-fit number head (`numbers.LineFitHead`): where the reply writes a number, it may propose
    the digits of a weighted least-squares line through the numbers in the hints, read at the reply's
    step (the weights and how far to extend the line learned), mixed with the decoder's own choice by a
    learned gate. Needs `numbers` (digit tables) and `hints` (readings with their distances in steps)."""
    hint_window: int = 0
    """Hint tokens also carry the tokens before them within their hint, up to this many back (0: off):
    a learned weight per distance and channel, through a zero-initialised projection, so a new model
    starts as the same model without it. Hint tokens are otherwise read one by one (embedding, place,
    tag): "kitchen" in "> open door to kitchen" would not know the door was opened, nor "closed" in
    "A door to the kitchen (that is closed)" which door it belongs to."""
    hint_replies: int = 16
    """Earlier replies given with hints "replies" (the newest ones)."""
    hint_tokens: int = 256
    """Tokens of hints at most (the newest hint is cut to fit; older ones that do not fit are left out)."""
    max_target: int = 320
    """Tokens of the decoded observation (longer ones are cut, and cannot match exactly). 320 covers
    all but 0.1% of ScienceWorld's replies (a `look around` runs to 310) and all of
    TextWorldExpress's; the 128 of the first runs cut 5% and 32% of their test replies."""

    def resolved_eval_depth(self) -> int:
        return self.eval_depth or max(1, round(self.mu_rec))

    def resolved_n_grad(self) -> int:
        return self.n_grad or max(1, math.ceil(self.mu_rec / 2))


HINT_KINDS = ("none", "replies", "trend", "similar", "since", "mentions", "mentions-after", "mentions-dup")  # what `hints` may be (baselines.episode_hints makes them)
MAX_HINT_TAG = 63  # a hint's tag: 0 for a proposal, else the steps between it and the reply (capped)
SIMILAR_TAG = 32  # with hints "similar", "since" or a "mentions" kind: tags from here on mark texts that are not replies to this action
OTHER_TEXT_KINDS = ("similar", "since", "mentions", "mentions-after", "mentions-dup")  # the hint kinds that give such texts, tagged from SIMILAR_TAG on
MAX_COPY_MATCH = 32  # copy_match: longer spans than this are matched as this long


def check_hint_kind(kind: str) -> None:
    if kind not in HINT_KINDS:
        raise LoopWMError(f"unknown hints {kind!r}: use --model.hints {', '.join(HINT_KINDS[:-1])} or {HINT_KINDS[-1]}")


class Hints(NamedTuple):
    """Episode hints of a batch (`Batcher.hint_arrays`): ids (B, H) 0-padded, each token's place within
    its hint (B, H), and its hint's tag (B, H)."""

    ids: torch.Tensor
    pos: torch.Tensor
    tags: torch.Tensor


def batch_hints(batch: dict) -> Hints | None:
    """The hints of a batch of tensors, if it has them."""
    return Hints(batch["hints"], batch["hint_pos"], batch["hint_tags"]) if "hints" in batch else None


class Memory(NamedTuple):
    """What the decoder sees: vectors (B, M, d), their validity (B, M), the token id behind each
    (B, M; 0 where there is none: state tokens, padding), which the copy head points at, and how many
    of the M the decoder cross-attends to (the first n_read; None: all). The rest are there only for
    the copy head to point at. `readings`: the numbers a line-fit head may fit through. `before` (B, M):
    the token before each memory token within its text (the context, each action, the hints), 0 at a
    text's start, so a span the copy head follows never runs on from the padding or the text laid
    before it (a row batched with longer ones reads as it does alone)."""

    x: torch.Tensor
    valid: torch.Tensor
    ids: torch.Tensor
    n_read: int | None = None
    readings: Readings | None = None
    before: torch.Tensor | None = None

    def read(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The vectors the decoder cross-attends to and their validity: (B, R, d), (B, R)."""
        return self.x[:, : self.n_read], self.valid[:, : self.n_read]


class TextWorldModel(nn.Module):
    def __init__(self, vocab_size: int, cfg: TextModelConfig):
        super().__init__()
        if cfg.kind not in ("looped", "deep"):
            raise LoopWMError(f"unknown text model kind {cfg.kind!r}: use --model.kind looped or deep")
        if cfg.copy_pool not in ("read", "all"):
            raise LoopWMError(f"unknown copy pool {cfg.copy_pool!r}: use --model.copy-pool read or all")
        check_hint_kind(cfg.hints)
        if cfg.copy_follow and not cfg.copy:
            raise LoopWMError("--model.copy-follow continues the copy head's spans: add --model.copy")
        if cfg.copy_match and not cfg.copy or not 0 <= cfg.copy_match <= MAX_COPY_MATCH:
            raise LoopWMError(f"--model.copy-match continues the copy head's spans: add --model.copy, and give a length "
                              f"from 1 to {MAX_COPY_MATCH} (0: off)")
        if cfg.line_head and (not cfg.numbers or cfg.hints == "none"):
            raise LoopWMError("--model.line-head fits a line through the numbers in the hints: add --model.numbers "
                              "and --model.hints replies")
        if cfg.hint_replies < 1 or cfg.hint_tokens < 1:
            raise LoopWMError("--model.hint-replies and --model.hint-tokens must be at least 1")
        if cfg.hint_window and cfg.hints == "none" or cfg.hint_window < 0:
            raise LoopWMError("--model.hint-window reads the tokens before each hint token: give --model.hints too, "
                              "and a window of 0 (off) or more")
        self.cfg, self.vocab_size = cfg, vocab_size
        d = cfg.d
        pool_all = cfg.copy and cfg.copy_pool == "all"
        # what goes into the decoder's memory, read by it or only pointed at by the copy head
        self.decoder_sees_context = cfg.decoder_reads_context or pool_all
        self.decoder_sees_actions = cfg.decoder_reads_actions or pool_all
        self.embed = nn.Embedding(vocab_size, d)
        hint_span = cfg.hint_tokens if cfg.hints != "none" else 0
        self.pos = nn.Embedding(max(cfg.max_context, cfg.max_action, cfg.max_target + 1, hint_span), d)
        self.action_type = nn.Parameter(torch.zeros(d))  # marks action tokens in the loop's input
        if self.decoder_sees_actions:  # in the decoder's memory: which action, counted from the last
            self.action_index = nn.Embedding(16, d)
        self.context_encoder = Stack(cfg.n_context_layers, d, cfg.n_heads, cfg.mlp_ratio)
        self.context_norm = nn.LayerNorm(d)
        self.state_queries = nn.Parameter(torch.randn(cfg.n_state, d) * 0.02)
        self.read = ReadBlock(d, cfg.n_heads, cfg.mlp_ratio)
        if cfg.kind == "looped":
            self.core = LoopedCore(d, cfg.n_heads, mlp_ratio=cfg.mlp_ratio, init_decay=cfg.init_decay)
        else:
            self.core = DeepCore(d, cfg.n_heads, cfg.n_deep, mlp_ratio=cfg.mlp_ratio)
        if cfg.hints != "none":  # in the decoder's memory: how far back the hint came from
            self.hint_tag = nn.Embedding(MAX_HINT_TAG + 1, d)
        self.decoder = nn.ModuleList(DecoderBlock(d, cfg.n_heads, cfg.mlp_ratio) for _ in range(cfg.n_decoder_layers))
        self.decoder_norm = nn.LayerNorm(d)
        nn.init.normal_(self.embed.weight, std=0.02)
        nn.init.normal_(self.pos.weight, std=0.02)
        if cfg.numbers:  # zero-initialised: the model starts as it would without number features
            # token id -> its value when it is all digits (-1 otherwise) and how many digits it has;
            # filled from the tokenizer by `set_digits` and saved with the weights
            self.register_buffer("digit_value", torch.full((vocab_size,), -1, dtype=torch.long))
            self.register_buffer("digit_count", torch.zeros(vocab_size, dtype=torch.long))
            self.number_proj = nn.Linear(len(NUMBER_PERIODS) * 2 + 1, d)
            self.number_place = nn.Embedding(2 * MAX_PLACE, d)  # from the right (read), from the left (written)
            for w in (self.number_proj.weight, self.number_proj.bias, self.number_place.weight):
                nn.init.zeros_(w)
        if cfg.copy:  # created last, so the rest starts as the same model would without it
            self.copy_norm = nn.LayerNorm(d)
            self.copy_query = nn.Linear(d, d, bias=False)
            self.copy_key = nn.Linear(d, d, bias=False)
            self.copy_gate = nn.Linear(d, 1)  # logit of g, the weight of the vocabulary
            nn.init.constant_(self.copy_gate.bias, cfg.copy_gate_init)
            if cfg.copy_follow:  # the pointer's bonus for the token after the one just written
                self.copy_follow = nn.Linear(d, 1)
                nn.init.zeros_(self.copy_follow.weight)
                nn.init.zeros_(self.copy_follow.bias)
            if cfg.copy_match:  # the pointer's bonus by the length of the span match, for each length
                self.copy_match = nn.Linear(d, cfg.copy_match)
                nn.init.zeros_(self.copy_match.weight)
                nn.init.zeros_(self.copy_match.bias)
        if cfg.hint_window:  # after the rest, likewise
            self.hint_window_mix = nn.Parameter(torch.full((cfg.hint_window, d), 1.0 / cfg.hint_window))
            self.hint_window_proj = nn.Linear(d, d)
            nn.init.zeros_(self.hint_window_proj.weight)
            nn.init.zeros_(self.hint_window_proj.bias)
        if cfg.line_head:  # after the rest, likewise; the token of each digit 0-9, filled by `set_digits`
            self.register_buffer("digit_ids", torch.full((10,), -1, dtype=torch.long))
            self.line_head = LineFitHead(d)

    def set_digits(self, token_strings: list[str]) -> None:
        """Fill the number tables from the tokenizer: `token_strings[i]` is token i's text."""
        values = [int(t) if t.isascii() and t.isdigit() else -1 for t in token_strings]
        counts = [len(t) if v >= 0 else 0 for t, v in zip(token_strings, values)]
        self.digit_value.copy_(torch.tensor(values[: self.vocab_size]))
        self.digit_count.copy_(torch.tensor(counts[: self.vocab_size]))
        if self.cfg.line_head:
            ids = {t: i for i, t in enumerate(token_strings[: self.vocab_size]) if len(t) == 1 and t.isdigit()}
            missing = [str(n) for n in range(10) if str(n) not in ids]
            if missing:
                raise LoopWMError(f"--model.line-head writes numbers digit by digit, but the tokenizer has no token "
                                  f"for {', '.join(missing)}: train it with split digits (the default)")
            self.digit_ids.copy_(torch.tensor([ids[str(n)] for n in range(10)]))

    def embed_tokens(self, ids: torch.Tensor, causal: bool = False) -> torch.Tensor:
        """Token embeddings (B, N, d), with the number features where `numbers` is on."""
        e = self.embed(ids)  # (B, N, d)
        if not self.cfg.numbers:
            return e
        value, place, is_digit = number_values(ids, self.digit_value, self.digit_count, causal)  # (B, N) x 3
        angle = value[..., None] * (2 * math.pi / value.new_tensor(NUMBER_PERIODS))  # (B, N, P)
        feats = torch.cat([angle.sin(), angle.cos(), (value[..., None] + 1).log10() / 4], -1).to(e.dtype)  # (B, N, 2P+1)
        extra = self.number_proj(feats) + self.number_place(place + (MAX_PLACE if causal else 0))  # (B, N, d)
        return e + extra * is_digit[..., None]

    @property
    def reads_beyond_state(self) -> bool:
        """Whether the decoder cross-attends to anything besides the state tokens (context, actions, hints)."""
        return self.cfg.decoder_reads_context or self.cfg.decoder_reads_actions or self.cfg.hints != "none"

    # ----- context -> state -----
    def encode(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Context ids (B, L), 0-padded -> state tokens h (B, S, d), memory (B, L, d), its validity (B, L)."""
        B, L = context.shape
        valid = context != 0  # (B, L)
        x = self.embed_tokens(context) + self.pos.weight[:L]  # (B, L, d)
        x = self.context_norm(self.context_encoder(x, Neighbourhood(key_mask(valid), None)))  # (B, L, d)
        q = self.state_queries.expand(B, -1, -1)  # (B, S, d)
        h = self.read(q, x, key_mask(valid, q.shape[1]))  # (B, S, d)
        return h, x, valid

    # ----- one action: the loop -----
    def sample_depth(self, batch: int, device) -> torch.Tensor:
        """Training loop count, one per training step: (B,) long."""
        rate = torch.full((1,), float(self.cfg.mu_rec), device=device)
        return torch.poisson(rate).long().clamp(1, self.cfg.depth_max).expand(batch)  # (B,)

    def step(self, h: torch.Tensor, z: torch.Tensor | None, action: torch.Tensor, depth: torch.Tensor,
             exit_rule: ExitRule | None = None, n_grad: int | None = None):
        """State (B, S, d), carried loop state or None, action ids (B, A) -> h, z, used (B,), work (B,)."""
        B, S, _ = h.shape
        A = action.shape[1]
        a = self.embed_tokens(action) + self.pos.weight[:A] + self.action_type  # (B, A, d)
        x = torch.cat([h, a], dim=1)  # (B, S + A, d)
        valid = torch.cat([torch.ones(B, S, dtype=torch.bool, device=h.device), action != 0], dim=1)  # (B, S + A)
        nbhd = Neighbourhood(key_mask(valid), None)
        return self.core(x, S, z, depth, n_grad, exit_rule, nbhd=nbhd)

    def imagine(self, context: torch.Tensor, actions: torch.Tensor, depth: int | torch.Tensor | None = None,
                exit_rule: ExitRule | None = None, n_grad: int | None = None, hints: Hints | None = None):
        """Context (B, L) and K actions (B, K, A) -> final state h (B, S, d), the decoder's `Memory`,
        and the iterations run per action (B, K). No observation is decoded on the way. `hints`: the
        batch's episode hints, which a model with `hints` set needs."""
        h, x, _ = self.encode(context)
        B, K = actions.shape[:2]
        z, used = None, []
        for k in range(K):
            if depth is not None:
                d_k = depth
            elif self.training:
                d_k = self.sample_depth(B, h.device)  # a fresh loop count per action
            else:
                d_k = self.cfg.resolved_eval_depth()
            if not torch.is_tensor(d_k):
                d_k = torch.full((B,), int(d_k), dtype=torch.long, device=h.device)
            h, z, n_used, _ = self.step(h, z, actions[:, k], d_k, exit_rule, n_grad)
            used.append(n_used)
        return h, self.decoder_memory(h, x, context, actions, hints), torch.stack(used, dim=1)  # (B, K)

    # ----- state -> observation text -----
    def decoder_memory(self, h, x, context, actions, hints: Hints | None = None) -> Memory:
        """The decoder's memory: the state tokens, then the context, the actions and the hints it reads
        (by config), then those only the copy head points at."""
        B, S, _ = h.shape

        def starts(n: int, every: int | None = None) -> torch.Tensor:  # (B, n): True where a text begins
            at = torch.zeros(B, n, dtype=torch.bool, device=h.device)
            at[:, :: every or n] = True
            return at

        parts = [(True, h, torch.zeros(B, S, dtype=torch.long, device=h.device), starts(S))]  # (read, vectors, ids, starts)
        readings = None
        if self.decoder_sees_context:
            parts.append((self.cfg.decoder_reads_context, x, context, starts(context.shape[1])))  # (B, L, d), (B, L)
        if self.decoder_sees_actions:
            K, A = actions.shape[1:]
            back = torch.arange(K - 1, -1, -1, device=h.device).clamp(max=15)  # (K,) 0 for the last action
            a = self.embed_tokens(actions.reshape(B * K, A)).view(B, K, A, -1)  # (B, K, A, d)
            a = a + self.pos.weight[:A] + self.action_index(back)[:, None]  # (B, K, A, d)
            parts.append((self.cfg.decoder_reads_actions, a.reshape(B, K * A, -1), actions.reshape(B, K * A),
                          starts(K * A, A)))  # (B, K*A, d)
        if self.cfg.hints != "none":
            if hints is None:
                raise ValueError(f"this model reads episode hints ({self.cfg.hints!r}): batch with a Batcher "
                                 "that has them (text_batcher) and pass batch_hints(batch)")
            tags = hints.tags.clamp(0, MAX_HINT_TAG)
            e = self.embed_tokens(hints.ids) + self.pos(hints.pos) + self.hint_tag(tags)  # (B, H, d)
            if self.cfg.hint_window:
                e = e + self.hint_window_proj(self.hint_context(e, hints.pos))  # (B, H, d)
            parts.append((True, e, hints.ids, starts(hints.ids.shape[1])))
            if self.cfg.line_head:
                readings = self.line_head.readings(e, hints.ids, hints.tags, self.digit_value, self.digit_count)
                if self.cfg.hints in OTHER_TEXT_KINDS:  # other texts are not readings of this action's gauge
                    readings = readings._replace(valid=readings.valid & (hints.tags < SIMILAR_TAG))
        parts.sort(key=lambda p: not p[0])  # read parts first (stable: the order above otherwise)
        ids = torch.cat([p[2] for p in parts], dim=1)  # (B, M)
        valid = ids != 0
        valid[:, :S] = True  # the state tokens carry no id but are always read
        n_read = sum(p[2].shape[1] for p in parts if p[0])
        begins = torch.cat([p[3] for p in parts], dim=1)  # (B, M): where a text begins
        before = F.pad(ids[:, :-1], (1, 0)).masked_fill(begins, 0)  # (B, M): once per memory, read at every token
        return Memory(torch.cat([p[1] for p in parts], dim=1), valid, ids, None if n_read == ids.shape[1] else n_read,
                      readings, before)  # (B, M, d), (B, M), (B, M), ..., (B, M)

    def hint_context(self, e: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """(B, H, d): for each hint token, the sum over j = 1 .. hint_window of the token j places back
        within the same hint (pos, its place there, is at least j), weighted per channel."""
        ctx = torch.zeros_like(e)
        for j in range(1, min(self.cfg.hint_window, e.shape[1] - 1) + 1):  # a short batch has fewer
            back = F.pad(e[:, :-j], (0, 0, j, 0))  # (B, H, d): token i - j at i
            ctx = ctx + back * (pos >= j)[..., None] * self.hint_window_mix[j - 1]  # (B, H, d)
        return ctx

    def decode_hidden(self, memory: Memory, tokens: torch.Tensor, caches: list | None = None, offset: int = 0,
                      kvs: list | None = None, history: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder's normalised output (B, T, d) for input ids (B, T), teacher-forced (or cached,
        one position at a time; `history` then ends with the T inputs and holds at least NUMBER_TOKENS
        before them where there are, which the number features of a digit being continued need)."""
        T = tokens.shape[1]
        if self.cfg.numbers and history is not None:
            y = self.embed_tokens(history, causal=True)[:, -T:]  # (B, T, d)
        else:
            y = self.embed_tokens(tokens, causal=True)  # (B, T, d)
        y = y + self.pos.weight[offset:offset + T]  # (B, T, d)
        x, valid = memory.read()  # (B, R, d), (B, R)
        mask = key_mask(valid, T)  # (B, 1, T, R)
        kvs = kvs or [block.memory(x) for block in self.decoder]
        for i, block in enumerate(self.decoder):
            y = block(y, kvs[i], mask, None if caches is None else caches[i])
        return self.decoder_norm(y)

    def copy_keys(self, memory: Memory) -> torch.Tensor:
        return self.copy_key(self.copy_norm(memory.x))  # (B, M, d)

    def copy_attention(self, y: torch.Tensor, memory: Memory, keys: torch.Tensor, written: torch.Tensor | None = None,
                       history: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Where the copy head points, (B, T, M) over the memory's tokens with an id, and the gate's
        logit (B, T): log g = logsigmoid(it) weighs the vocabulary, log(1 - g) = logsigmoid(-it) the copy.
        `written` (B, T): the decoder's input at each position (the token just written), which
        `copy_follow` and `copy_match` need; `history` (B, >= T): the inputs up to and including them
        (default `written`), from which `copy_match` reads span matches longer than the T positions."""
        scores = self.copy_query(y) @ keys.transpose(1, 2) / math.sqrt(y.shape[-1])  # (B, T, M)
        if (self.cfg.copy_follow or self.cfg.copy_match) and written is None:
            raise ValueError("a copy head with copy_follow or copy_match needs the tokens just written")
        if self.cfg.copy_match:
            T = written.shape[1]
            with torch.no_grad():  # token comparisons only
                n = match_lengths(written if history is None else history, memory.before, T, self.cfg.copy_match)  # (B, T, M)
            bonus = F.pad(self.copy_match(y).cumsum(-1), (1, 0))  # (B, T, L + 1): the bonus for a match of 0 .. L
            scores = scores + bonus.gather(2, n)  # (B, T, M)
        if self.cfg.copy_follow:
            before = memory.before  # (B, M): the token before each memory token, 0 at a text's start
            follows = (before[:, None, :] == written[..., None]) & (before != 0)[:, None, :]  # (B, T, M)
            scores = scores + self.copy_follow(y) * follows  # (B, T, 1) * (B, T, M)
        scores = scores.masked_fill((memory.ids == 0)[:, None, :], torch.finfo(scores.dtype).min)
        return scores.softmax(-1), self.copy_gate(y)[..., 0]

    def line_proposal(self, y: torch.Tensor, memory: Memory, history: torch.Tensor):
        """The line-fit head at decoder outputs y (B, T, d) whose inputs end `history` (B, >= T): the value
        each position would write (B, T), whether it has readings (B, T), the digit token it proposes (B, T)
        and where it proposes one (B, T)."""
        T = y.shape[1]
        prefix, written, _ = number_values(history, self.digit_value, self.digit_count, causal=True)  # (B, N) x 3
        value, has = self.line_head.value(y, memory.readings)  # (B, T) x 2
        digit, proposes = self.line_head.propose(value, has, prefix[:, -T:], written[:, -T:])
        return value, has, self.digit_ids[digit], proposes

    def next_token_scores(self, y: torch.Tensor, memory: Memory, keys: torch.Tensor | None = None,
                          written: torch.Tensor | None = None, history: torch.Tensor | None = None) -> torch.Tensor:
        """Decoder output (B, T, d) -> scores over the vocabulary (B, T, V) whose argmax is the next token:
        the logits, or with the copy head or the line-fit head the log-probabilities of the mixed
        distribution. `written`: the input ids (B, T) the outputs came from; `history`: the inputs up to
        them (B, >= T), which the line-fit head reads a number being written from (default `written`)."""
        logits = y @ self.embed.weight.T  # (B, T, V), tied
        if self.cfg.copy:
            attn, gate = self.copy_attention(y, memory, self.copy_keys(memory) if keys is None else keys, written, history)
            B, T, M = attn.shape
            p_copy = attn.new_zeros(B, T, logits.shape[-1]).scatter_add_(2, memory.ids[:, None].expand(B, T, M), attn)
            logits = torch.logaddexp(F.logsigmoid(gate)[..., None] + logits.log_softmax(-1),
                                     F.logsigmoid(-gate)[..., None] + p_copy.log())  # (B, T, V)
        if self.cfg.line_head:
            _, _, digit_token, proposes = self.line_proposal(y, memory, written if history is None else history)
            base = logits if self.cfg.copy else logits.log_softmax(-1)  # the copy mixture is already log-probabilities
            logits = self.line_head.mix(base, y, digit_token, proposes)  # (B, T, V)
        return logits

    def decode(self, memory: Memory, tokens: torch.Tensor, caches: list | None = None, offset: int = 0,
               kvs: list | None = None, keys: torch.Tensor | None = None,
               history: torch.Tensor | None = None) -> torch.Tensor:
        """Next-token scores (B, T, V) for input ids (B, T)."""
        y = self.decode_hidden(memory, tokens, caches, offset, kvs, history)  # (B, T, d)
        return self.next_token_scores(y, memory, keys, written=tokens, history=history)

    def loss(self, context, actions, target, n_grad: int | None = None, hide_state: bool = False,
             depth: int | None = None, hints: Hints | None = None,
             weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy of the observation after the last action (pad positions ignored), and the
        iterations used per action (B, K). `hide_state` masks the latent state tokens out of what the
        decoder reads: how much the loss rises measures how much the prediction relies on the state.
        `weight` (B, T), aligned with `target`, makes the token mean a weighted one."""
        _, memory, used = self.imagine(context, actions, depth=depth, n_grad=n_grad, hints=hints)
        if hide_state:
            if not self.reads_beyond_state:
                raise ValueError("hide_state needs a decoder that reads more than the state tokens")
            valid = memory.valid.clone()
            valid[:, : self.cfg.n_state] = False
            memory = memory._replace(valid=valid)
        y = self.decode_hidden(memory, target[:, :-1])  # (B, T-1, d)
        nxt = target[:, 1:]  # (B, T-1)
        keep = nxt != 0  # padding is most of a batch whose targets differ in length
        w = None if weight is None else weight[:, 1:][keep]  # (N,)

        def mean(nll: torch.Tensor) -> torch.Tensor:  # (N,) -> the (weighted) mean over real tokens
            return nll.mean() if w is None else (w * nll).sum() / w.sum()

        logits = y[keep] @ self.embed.weight.T  # (N, V): the vocabulary projection on real tokens only
        log_p = -F.cross_entropy(logits, nxt[keep], reduction="none")  # (N,)
        if not self.cfg.copy and not self.cfg.line_head:
            return mean(-log_p), used
        if self.cfg.copy:  # the mixture's probability of the right token, without spreading the copy over the vocabulary
            attn, gate = self.copy_attention(y, memory, self.copy_keys(memory), target[:, :-1])  # (B, T-1, M), (B, T-1)
            hit = (memory.ids[:, None, :] == nxt[..., None])  # (B, T-1, M): memory tokens equal to the target
            p_copy = (attn * hit).sum(-1)[keep]  # (N,)
            gate = gate[keep]
            log_p = torch.logaddexp(F.logsigmoid(gate) + log_p, F.logsigmoid(-gate) + p_copy.clamp_min(1e-30).log())
        if not self.cfg.line_head:
            return mean(-log_p), used
        value, has, digit_token, proposes = self.line_proposal(y, memory, target[:, :-1])  # (B, T-1) x 4
        log_p = self.line_head.mix_target(log_p, y[keep], (digit_token == nxt)[keep], proposes[keep])
        whole, _, is_digit = number_values(target, self.digit_value, self.digit_count, causal=False)  # (B, T) x 3
        return mean(-log_p) + line_loss(value, has, whole[:, 1:], is_digit[:, 1:]), used

    @torch.no_grad()
    def generate(self, memory: Memory, bos: int, eos: int, max_len: int) -> torch.Tensor:
        """Greedy decoding, every row until its <eos> or max_len tokens: (B, <= max_len) ids."""
        B = memory.x.shape[0]
        device = memory.x.device
        caches = [{} for _ in self.decoder]
        kvs = [block.memory(memory.read()[0]) for block in self.decoder]
        keys = self.copy_keys(memory) if self.cfg.copy else None
        token = torch.full((B, 1), bos, dtype=torch.long, device=device)
        out, done = [], torch.zeros(B, dtype=torch.bool, device=device)
        # (B, <= keep): the latest inputs, what the number features and the span matches read
        keep = max(NUMBER_TOKENS if self.cfg.numbers else 0, self.cfg.copy_match) + 1
        history = token if self.cfg.numbers or self.cfg.copy_match else None
        for t in range(max_len):
            scores = self.decode(memory, token, caches, offset=t, kvs=kvs, keys=keys, history=history)  # (B, 1, V)
            token = scores[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            token = token.masked_fill(done[:, None], 0)
            out.append(token)
            if history is not None:  # the latest inputs only: a number or a match reads no further back
                history = torch.cat([history, token], 1)[:, -keep:]  # (B, <= keep)
            done = done | (token[:, 0] == eos)
            if bool(done.all()):
                break
        return torch.cat(out, dim=1)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
