"""Where a copied span goes on: for each memory token, how many of the tokens just written repeat the
tokens just before it.

The copy head's pointer attends by content, so on its own it does not know where in a span it is:
having written "A door to the", every door line of a remembered room description looks the same to
it. The length of the match between the reply's last tokens and the text before a memory token tells
the pointer which line it is in the middle of: a long match is a long span being copied, and its next
token is the likely next one. (`TextModelConfig.copy_match`; `copy_follow` is the one-token case.)
"""

from __future__ import annotations

import torch


def match_lengths(history: torch.Tensor, before: torch.Tensor, T: int, longest: int) -> torch.Tensor:
    """(B, T, M) match lengths for the last T positions of `history` (B, H >= T: the tokens written so
    far, the newest last, 0 for padding) against the memory: `before` (B, M) is the token before each
    memory token (0 where there is none: a text's start, padding). Entry (t, j) is the largest n <=
    `longest` with history[t - i] == before[j - i] for i = 0 .. n - 1, 0 where the token before j is not
    the one just written. A history that holds only the last few tokens gives the same lengths as the
    whole one, as far as it reaches back."""
    equal = (history[:, :, None] == before[:, None, :]) & (before != 0)[:, None, :]  # (B, H, M)
    B, H, M = equal.shape
    length = torch.empty(B, H, M, dtype=torch.uint8, device=history.device)  # capped at longest <= 255
    run = torch.zeros(B, M, dtype=torch.uint8, device=history.device)
    # one step along the history at a time: a match at (t, j) extends the one at (t - 1, j - 1). Sequential
    # in t, but each step is one small (B, M) operation, far cheaper than comparing whole shifted copies
    for t in range(H):
        run = torch.nn.functional.pad(run[:, :-1], (1, 0)).add_(1).clamp_(max=longest).mul_(equal[:, t])  # (B, M)
        length[:, t] = run
    return length[:, -T:].long()  # (B, T, M)
