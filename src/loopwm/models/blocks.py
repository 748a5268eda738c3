"""Transformer building blocks shared by the looped core and the fixed-depth baselines.

A pre-norm block: x + Attn(LN(x)), then x + MLP(LN(x)). The block returns the updated stream; the
looped core evaluates it after the state injection, so the sum of its two residual branches is the
paper's nonlinear term R(h, e). Every block takes an optional `Neighbourhood` (loopwm.models.locality):
an attention mask that keeps entity tokens local, and pair geometry for a learned per-head bias.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from loopwm.models.locality import Neighbourhood
from loopwm.utils import LoopWMError


class SelfAttention(nn.Module):
    """Bidirectional multi-head self-attention over the token axis (tokens are entities, not time)."""

    def __init__(self, d: int, n_heads: int, n_geom: int = 0):
        super().__init__()
        if d % n_heads != 0:
            raise LoopWMError(f"model width d={d} must be divisible by n_heads={n_heads}: set --model.d to a multiple of "
                              f"{n_heads} (e.g. {max(n_heads, d - d % n_heads)}) or --model.n-heads to a divisor of {d}")
        self.n_heads = n_heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        # per-head attention bias, linear in the pair geometry (n_geom features per pair)
        self.geom_bias = nn.Linear(n_geom, n_heads) if n_geom else None

    def forward(self, x: torch.Tensor, nbhd: Neighbourhood | None = None) -> torch.Tensor:
        B, N, D = x.shape
        H = self.n_heads
        q, k, v = self.qkv(x).view(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)  # 3 x (B, H, N, D/H)
        bias = nbhd.attn_bias(self.geom_bias) if nbhd is not None else None  # (B, 1 or H, N, N) or None
        if bias is None:
            y = F.scaled_dot_product_attention(q, k, v)  # (B, H, N, D/H)
        else:
            # written out: with an additive mask, torch's CPU attention takes a generic path that
            # also guards against rows with nothing to read (which ours never have: every token
            # reads itself); this is the same arithmetic in fewer kernels (docs/LOG.md, session 26)
            scores = torch.baddbmm(bias.expand(B, H, N, N).reshape(B * H, N, N), q.reshape(B * H, N, D // H),
                                   k.reshape(B * H, N, D // H).transpose(1, 2), alpha=(D // H) ** -0.5)  # (B*H, N, N)
            y = torch.bmm(scores.softmax(dim=-1), v.reshape(B * H, N, D // H)).view(B, H, N, D // H)  # (B, H, N, D/H)
        y = y.transpose(1, 2).reshape(B, N, D)  # (B, N, D)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, d_in: int, d_hidden: int, d_out: int):
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    """One pre-norm transformer block acting on (B, N, d) token streams."""

    def __init__(self, d: int, n_heads: int, mlp_ratio: int = 4, n_geom: int = 0):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = SelfAttention(d, n_heads, n_geom)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = MLP(d, mlp_ratio * d, d)

    def forward(self, x: torch.Tensor, nbhd: Neighbourhood | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), nbhd)
        return x + self.mlp(self.ln2(x))


class Stack(nn.Module):
    """A few distinct (non-shared) blocks applied in order."""

    def __init__(self, n_blocks: int, d: int, n_heads: int, mlp_ratio: int = 4, n_geom: int = 0):
        super().__init__()
        self.blocks = nn.ModuleList(Block(d, n_heads, mlp_ratio, n_geom) for _ in range(n_blocks))

    def forward(self, x: torch.Tensor, nbhd: Neighbourhood | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, nbhd)
        return x


def compile_blocks(model: nn.Module) -> int:
    """torch.compile every transformer block in place (weights and checkpoints are unchanged);
    returns how many were compiled. Blocks, not the whole step: the loop's depth changes from step
    to step, which would recompile a whole-step graph every time."""
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    for block in blocks:
        block.compile(dynamic=True)
    return len(blocks)
