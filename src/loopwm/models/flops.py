"""Compute per simulated step: FLOPs counted by torch, and the analytic count for one block.

Counting runs one `step` at batch 1 under `torch.utils.flop_counter.FlopCounterMode`, which counts
matrix multiplications and attention (the work that scales); elementwise operations are left out,
as in the usual transformer FLOP estimates. A multiply-add counts as 2 FLOPs.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode


def block_flops(d: int, n_tokens: int, mlp_ratio: int = 4) -> int:
    """Analytic FLOPs of one pre-norm block (attention + MLP) on n_tokens tokens of width d."""
    qkv = 2 * n_tokens * d * 3 * d
    scores = 2 * n_tokens * n_tokens * d  # q @ k^T over all heads
    mix = 2 * n_tokens * n_tokens * d  # attention @ v
    proj = 2 * n_tokens * d * d
    mlp = 2 * 2 * n_tokens * d * mlp_ratio * d
    return qkv + scores + mix + proj + mlp


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    # torch's counter knows the CUDA attention kernels but not the CPU one; same formula
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query, key, value)


def _custom_mapping() -> dict:
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    return {op: _cpu_attention_flops} if op is not None else {}


@torch.no_grad()
def count_step_flops(model, obs: torch.Tensor, action: torch.Tensor, depth: int | None = None,
                     latent: bool = False) -> int:
    """FLOPs of one imagined step of `model` from one observation (as the environment gives it, or
    in entity form (N, F)) and action, at batch 1. The step counted starts from an imagined state
    (one step after the observation), so `latent` (deferred decoding: the learned no-observation
    token instead of encoding the prediction) changes what is counted."""
    was_training = model.training
    model.eval()
    state, _ = model.step(model.initial(obs[None].float()), action[None], depth)  # initial accepts either form
    with FlopCounterMode(display=False, custom_mapping=_custom_mapping()) as counter:
        model.step(state, action[None], depth, latent=latent)
    model.train(was_training)
    return int(counter.get_total_flops())
