"""The attention blocks of the text world model: learned queries that read a memory (the encoder's
read-out), and the decoder's block (causal self-attention with a key/value cache for generation,
cross-attention to the memory, MLP). Pre-norm throughout; the MLP is the physics models' one."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from loopwm.models.blocks import MLP


def key_mask(valid: torch.Tensor, n_queries: int | None = None) -> torch.Tensor:
    """Attention mask (B, 1, Q, K) from key validity (B, K): every query reads every valid key."""
    B, K = valid.shape
    return valid[:, None, None, :].expand(B, 1, n_queries or K, K)


class CrossAttention(nn.Module):
    """Queries from one stream read keys and values of another (the memory)."""

    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.proj = nn.Linear(d, d)

    def memory(self, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, M, D = m.shape
        k, v = self.kv(m).view(B, M, 2, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)  # 2 x (B, H, M, D/H)
        return k, v

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None) -> torch.Tensor:
        B, N, D = x.shape
        q = self.q(x).view(B, N, self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, H, N, D/H)
        y = F.scaled_dot_product_attention(q, *kv, attn_mask=mask)  # (B, H, N, D/H)
        return self.proj(y.transpose(1, 2).reshape(B, N, D))  # (B, N, D)


class CausalSelfAttention(nn.Module):
    """Masked self-attention over the decoded prefix, with a key/value cache for generation."""

    def __init__(self, d: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, cache: dict | None = None) -> torch.Tensor:
        B, N, D = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.n_heads, D // self.n_heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, N, D/H)
        if cache is not None and "k" in cache:  # generation: one new position reads every earlier one
            k, v = torch.cat([cache["k"], k], 2), torch.cat([cache["v"], v], 2)  # (B, H, N_past + N, D/H)
        if cache is not None:
            cache["k"], cache["v"] = k, v
        y = F.scaled_dot_product_attention(q, k, v, is_causal=N > 1)  # (B, H, N, D/H)
        return self.proj(y.transpose(1, 2).reshape(B, N, D))  # (B, N, D)


class ReadBlock(nn.Module):
    """Learned queries read a memory: q + CrossAttn(LN(q), LN(m)), then q + MLP(LN(q))."""

    def __init__(self, d: int, n_heads: int, mlp_ratio: int):
        super().__init__()
        self.ln_q, self.ln_m, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = CrossAttention(d, n_heads)
        self.mlp = MLP(d, mlp_ratio * d, d)

    def forward(self, q: torch.Tensor, m: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        q = q + self.attn(self.ln_q(q), self.attn.memory(self.ln_m(m)), mask)
        return q + self.mlp(self.ln2(q))


class DecoderBlock(nn.Module):
    """Pre-norm: causal self-attention, cross-attention to the memory, MLP."""

    def __init__(self, d: int, n_heads: int, mlp_ratio: int):
        super().__init__()
        self.ln1, self.ln2, self.ln_m, self.ln3 = (nn.LayerNorm(d) for _ in range(4))
        self.self_attn = CausalSelfAttention(d, n_heads)
        self.cross = CrossAttention(d, n_heads)
        self.mlp = MLP(d, mlp_ratio * d, d)

    def memory(self, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cross.memory(self.ln_m(m))

    def forward(self, x, kv, mask, cache: dict | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.ln1(x), cache)
        x = x + self.cross(self.ln2(x), kv, mask)
        return x + self.mlp(self.ln3(x))
