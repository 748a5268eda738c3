"""Numbers in text read as quantities, and a head that writes a reply's number from earlier readings.

    read:   E[w] + N(value, place) on every digit token             (number features, `numbers`)
    write:  w_i = softmax_i(q(y_t) . k(r_i))                         which earlier readings r_i to fit
            v_bar = sum w_i v_i, tau_bar = sum w_i tau_i             tau_i: steps between r_i and the reply
            b = sum w_i (tau_i - tau_bar)(v_i - v_bar) / sum w_i (tau_i - tau_bar)^2
            V_t = v_bar - c(y_t) b tau_bar                           the fitted line read at tau = 0
            p(w) = g p_model(w) + (1 - g) [w = the next digit of round(V_t)]

A decoder over digit tokens can repeat a reading it sees but has no easy way to extend a line through
several of them ("approximately 53% down the plane", then 55%, so about 65% five steps later). The
line-fit head gives it one: a weighted least-squares line through earlier readings, with the weights
(which readings, of which reply, how recent) and how far along the line to go (c in [0, 2]; 0 repeats
the weighted mean, 1 extends the fitted line) learned from the decoder's state. One reading with all
the weight repeats it. The arithmetic is built in; the choices are learned. A regression loss on V
teaches the weights (rounding to digits has no gradient); the gate g, as the copy head's, learns where
the proposed digit is worth writing.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

NUMBER_PERIODS = (10.0, 100.0, 1000.0)  # the value's phase over these periods: its last 1, 2, 3 digits
MAX_PLACE = 8  # places of a digit within its number told apart (later ones share the last)
NUMBER_TOKENS = 12  # a number's value is read from at most its last 12 tokens


def number_values(ids: torch.Tensor, digit_value: torch.Tensor, digit_count: torch.Tensor, causal: bool):
    """For token ids (B, N): the value of the number each digit token belongs to (B, N) float32, its
    place in it (B, N) long, and which tokens are digits (B, N) bool. A number is a run of consecutive
    all-digit tokens. `causal`: the value of the digits up to and including this one and the place
    counted from the left (1 = the first digit), as a reply being written knows them; else the whole
    number's value and the place from the right (0 = units)."""
    B, N = ids.shape
    dv, cnt = digit_value[ids], digit_count[ids]  # (B, N), (B, N)
    is_digit = dv >= 0
    pos = torch.arange(N, device=ids.device).expand(B, N)  # (B, N)
    prev = F.pad(is_digit[:, :-1], (1, 0), value=False)
    start = is_digit & ~prev  # the first token of each number
    start_pos = torch.where(start, pos, 0).cummax(1).values  # (B, N) where this token's number begins
    c = (cnt * is_digit).cumsum(1)  # (B, N) digits seen so far
    e = c - c.gather(1, start_pos) + cnt.gather(1, start_pos)  # (B, N) digits of this number up to here
    e = torch.where(is_digit, e, 0)
    # prefix_t = prefix_{t-1} * 10^{digits of token t} + value of token t, inside a number: one pass per
    # token of the longest number (at most NUMBER_TOKENS), in float32 (every device has it; exact below 2^24)
    own = torch.where(is_digit, dv.float(), 0.0)  # (B, N)
    scale = torch.pow(10.0, cnt.float())  # (B, N)
    longest = int((pos - start_pos + 1)[is_digit].max()) if bool(is_digit.any()) else 0
    prefix = own
    for _ in range(min(longest, NUMBER_TOKENS) - 1):
        prefix = torch.where(prev & is_digit, F.pad(prefix[:, :-1], (1, 0)) * scale + own, own)  # (B, N)
    if causal:  # places 1 .. MAX_PLACE - 1 from the left, later digits sharing the last (the table holds no more)
        return prefix, e.clamp(0, MAX_PLACE - 1), is_digit
    nxt = F.pad(is_digit[:, 1:], (0, 1), value=False)
    end = is_digit & ~nxt  # the last token of each number
    end_pos = torch.where(end, pos, N - 1).flip(1).cummin(1).values.flip(1)  # (B, N) where it ends
    whole = prefix.gather(1, end_pos)
    place = (e.gather(1, end_pos) - e).clamp(0, MAX_PLACE - 1)  # 0 for the units digit
    return torch.where(is_digit, whole, 0.0), torch.where(is_digit, place, 0), is_digit



MAX_DIGITS = 7  # the line-fit head writes whole numbers below 10^7 (larger values propose nothing)
LINE_GATE_INIT = 3.0  # starting logit of the model's weight against the head: g = 0.95, nearly shut
LINE_LOSS_SCALE = 10.0  # the head's regression error is counted in units of 10 (a reading's coarse grain)
LINE_LOSS_WEIGHT = 0.1  # its weight beside the cross-entropy


class Readings(NamedTuple):
    """Numbers the line-fit head may fit through: for each candidate (B, R) the head's key for it
    (B, R, d), its value (float), how many steps before the predicted reply it was read (float), and
    whether it is a reading at all (B, R) bool (one per number: its units digit)."""

    keys: torch.Tensor
    value: torch.Tensor
    tag: torch.Tensor
    valid: torch.Tensor


class LineFitHead(nn.Module):
    """Proposes the next digit of a number in the reply from a line fitted through earlier readings."""

    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.query = nn.Linear(d, d, bias=False)
        self.key = nn.Linear(d, d, bias=False)
        self.extend = nn.Linear(d, 1)  # c = 2 sigmoid(.): starts at 1, the plain least-squares line
        self.gate = nn.Linear(d, 1)  # logit of g, the model's own distribution's weight
        for w in (self.extend.weight, self.extend.bias, self.gate.weight):
            nn.init.zeros_(w)
        nn.init.constant_(self.gate.bias, LINE_GATE_INIT)

    def readings(self, x: torch.Tensor, ids: torch.Tensor, tags: torch.Tensor, digit_value: torch.Tensor,
                 digit_count: torch.Tensor) -> Readings:
        """The numbers in the hints (ids (B, H), their vectors (B, H, d), tags (B, H)) as readings, keyed
        once per memory (generation reads them at every token)."""
        value, place, is_digit = number_values(ids, digit_value, digit_count, causal=False)  # (B, H) x 3
        return Readings(self.key(self.norm(x)), value, tags.float(), is_digit & (place == 0))

    def value(self, y: torch.Tensor, r: Readings) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder outputs (B, T, d) -> the number each position would write (B, T) and whether it has
        any reading to write it from (B, T)."""
        scores = self.query(y) @ r.keys.transpose(1, 2) / y.shape[-1] ** 0.5  # (B, T, R)
        scores = scores.masked_fill(~r.valid[:, None, :], torch.finfo(scores.dtype).min)
        w = scores.softmax(-1) * r.valid[:, None, :]  # (B, T, R); all zero without readings
        tau, v = r.tag[:, None, :], r.value[:, None, :]  # (B, 1, R)
        tau_bar, v_bar = (w * tau).sum(-1), (w * v).sum(-1)  # (B, T)
        dt = tau - tau_bar[..., None]  # (B, T, R)
        cov = (w * dt * (v - v_bar[..., None])).sum(-1)  # (B, T)
        var = (w * dt * dt).sum(-1)  # (B, T)
        slope = cov / var.clamp_min(1e-4)  # (B, T): change per step further back; ~0 with one reading
        c = 2 * torch.sigmoid(self.extend(y)[..., 0])  # (B, T)
        return v_bar - c * slope * tau_bar, r.valid.any(-1)[:, None].expand_as(v_bar)

    def propose(self, value: torch.Tensor, has: torch.Tensor, prefix: torch.Tensor, written: torch.Tensor):
        """The digit (B, T) long each position would write next for the number `value` (B, T), given the
        digits of the current number written so far (their value `prefix` and count `written`, from
        `number_values(..., causal=True)`), and where it proposes one (B, T) bool: where there is a
        reading, the value is a whole number >= 0 below 10^MAX_DIGITS, the prefix agrees with it and it
        has a digit left."""
        r = value.detach().round().clamp(0, 10 ** MAX_DIGITS - 1).long()  # (B, T)
        n_digits = 1 + sum((r >= 10 ** i).long() for i in range(1, MAX_DIGITS))  # (B, T)
        left = (n_digits - written).clamp_min(0)  # digits still to write
        digit = (r // torch.pow(10, (left - 1).clamp_min(0))) % 10  # (B, T)
        agrees = r // torch.pow(10, left) == prefix.round().long()
        return digit, has & (value.detach() > -0.5) & (left > 0) & agrees

    def mix(self, base: torch.Tensor, y: torch.Tensor, digit_token: torch.Tensor, proposes: torch.Tensor) -> torch.Tensor:
        """Log-probabilities over the vocabulary (B, T, V) with the proposed digit token (B, T) mixed in
        where the head proposes one."""
        gate = self.gate(y)  # (B, T, 1)
        add = torch.full_like(base, float("-inf")).scatter(2, digit_token[..., None], F.logsigmoid(-gate))
        return torch.where(proposes[..., None], torch.logaddexp(F.logsigmoid(gate) + base, add), base)

    def mix_target(self, log_p: torch.Tensor, y: torch.Tensor, hit: torch.Tensor, proposes: torch.Tensor) -> torch.Tensor:
        """The same mixture for the right tokens only: their log-probabilities (N,) under the model, decoder
        outputs (N, d), whether the head proposes the right token (N,) and whether it proposes at all."""
        gate = self.gate(y)[..., 0]  # (N,)
        head = torch.where(hit, F.logsigmoid(-gate), float("-inf"))
        return torch.where(proposes, torch.logaddexp(F.logsigmoid(gate) + log_p, head), log_p)


def line_loss(value: torch.Tensor, has: torch.Tensor, target_value: torch.Tensor, target_digit: torch.Tensor) -> torch.Tensor:
    """Regression of the head's value (B, T) on the number the reply writes at each position whose next
    token is one of its digits (target values (B, T) from `number_values(..., causal=False)`)."""
    keep = has & target_digit
    if not bool(keep.any()):
        return value.sum() * 0.0
    err = (value[keep] - target_value[keep]) / LINE_LOSS_SCALE
    return LINE_LOSS_WEIGHT * F.smooth_l1_loss(err, torch.zeros_like(err), beta=0.05)
