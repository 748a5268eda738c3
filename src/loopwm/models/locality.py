"""Local interaction: which tokens may attend to which, recomputed every step from positions.

With full attention one block links every pair of bodies, so a loop iteration adds nothing a
single block could not do. Restricting entity tokens to their neighbours makes one pass of a block
one round of message passing: an impulse through a run of k touching bodies then needs about k
passes, and a looped block can supply them where a fixed stack runs out of layers.

The graph is built from the observation the step reads (the real one, or in imagination the
model's own prediction), so it follows the bodies as they move. Token layout (as in
`WorldModel.step`): P entity tokens, then G global tokens, then one action token. Entity tokens read
only their neighbours and themselves; global and action tokens read everything, but are read by no
entity unless `entities_read_globals` (they would otherwise carry any body's state to any other in
one hop and undo the locality).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn

BIG = 1e6


class PairGeometry(NamedTuple):
    """Every pair of bodies of one step, computed once and shared by the entity encoder's edge
    features, the neighbour graph and the attention bias."""

    rel: torch.Tensor
    """(B, N, N, P) centre of j minus centre of i."""
    dist: torch.Tensor
    """(B, N, N) centre distance, at least 1e-6."""
    gap: torch.Tensor
    """(B, N, N) surface gap; BIG on the diagonal, so nobody is their own neighbour."""


def pair_geometry(pos: torch.Tensor, rad: torch.Tensor) -> PairGeometry:
    """Pairwise geometry from centres (B, N, P) and radii (B, N)."""
    rel = pos[:, None, :, :] - pos[:, :, None, :]  # (B, N, N, P): j minus i
    dist = rel.norm(dim=-1).clamp(min=1e-6)  # (B, N, N)
    gap = dist - rad[:, :, None] - rad[:, None, :]  # (B, N, N)
    gap = gap + torch.eye(pos.shape[1], device=pos.device, dtype=pos.dtype) * BIG
    return PairGeometry(rel, dist, gap)


def neighbour_graph(pairs: PairGeometry, k: int, radius: float = 0.0) -> torch.Tensor:
    """Who interacts with whom: (B, N, N) bool, symmetric, True on the diagonal.

    i and j are linked when j is among i's k nearest bodies by surface gap (or i among j's), or
    when their gap is below `radius` (0: no radius rule).
    """
    gap = pairs.gap  # (B, N, N)
    B, N, _ = gap.shape
    adj = torch.zeros(B, N, N, dtype=torch.bool, device=gap.device)
    k = min(k, N - 1)
    if k > 0:
        idx = gap.topk(k, dim=-1, largest=False).indices  # (B, N, k)
        adj.scatter_(2, idx, True)
    if radius > 0:
        adj |= gap < radius
    adj = adj | adj.transpose(1, 2)  # a link works both ways
    return adj | torch.eye(N, dtype=torch.bool, device=gap.device)


def token_mask(adj: torch.Tensor, n_extra: int, entities_read_globals: bool = False) -> torch.Tensor:
    """Attention mask (B, 1, L, L) over L = N entity tokens + n_extra (global and action) tokens;
    True where the query token (row) may read the key token (column)."""
    B, N, _ = adj.shape
    L = N + n_extra
    mask = torch.ones(B, L, L, dtype=torch.bool, device=adj.device)
    mask[:, :N, :N] = adj
    if not entities_read_globals:
        mask[:, :N, N:] = False
    return mask[:, None]  # (B, 1, L, L): broadcast over heads


def relative_geometry(pairs: PairGeometry, step_scale: torch.Tensor, n_extra: int) -> torch.Tensor:
    """Per-pair features for a learned attention bias, (B, L, L, P + 1): the unit direction from
    query i to key j, and their surface gap in units of a typical step (clipped at 10). Zero for
    pairs that involve a global or action token, and for i = j. With them a head can prefer the
    neighbour on one side, or the touching one, which plain dot-product attention over absolute
    features finds hard."""
    B, N, _, P = pairs.rel.shape
    eye = torch.eye(N, dtype=torch.bool, device=pairs.rel.device)[None, :, :, None]
    unit = pairs.rel / pairs.dist[..., None]  # (B, N, N, P)
    gap = pairs.gap[..., None].clamp(min=0.0, max=10.0 * step_scale) / step_scale  # (B, N, N, 1)
    # zero, and no gradient, on the diagonal: there rel = 0 over a clamped distance, whose huge
    # derivative would only cancel out after rounding away the gradients of everything else
    pair = torch.cat([unit, gap], dim=-1).masked_fill(eye, 0.0)  # (B, N, N, P+1)
    geom = pairs.rel.new_zeros(B, N + n_extra, N + n_extra, P + 1)
    geom[:, :N, :N] = pair
    return geom


class Neighbourhood:
    """One step's attention context, shared by every block and loop iteration of that step:
    `mask` (B, 1, L, L) bool or None (full attention), `geom` (B, L, L, P+1) or None (no bias)."""

    def __init__(self, mask: torch.Tensor | None, geom: torch.Tensor | None):
        self.mask, self.geom = mask, geom
        self._bias: dict[tuple[int, bool], torch.Tensor] = {}

    def attn_bias(self, geom_bias: nn.Module | None) -> torch.Tensor | None:
        """What `scaled_dot_product_attention` takes as attn_mask for a block with this bias layer:
        the mask alone, or the learned per-head bias (B, H, L, L) with masked pairs at -inf. Kept
        per layer and grad mode, so the shared block computes it once per step, not per iteration."""
        if geom_bias is None or self.geom is None:
            return self.mask
        key = (id(geom_bias), torch.is_grad_enabled())  # a bias built without grad must not serve one with
        if key not in self._bias:
            bias = geom_bias(self.geom).permute(0, 3, 1, 2)  # (B, L, L, H) -> (B, H, L, L)
            if self.mask is not None:
                bias = bias.masked_fill(~self.mask, float("-inf"))  # every row keeps its own token
            self._bias[key] = bias
        return self._bias[key]

    def take(self, rows: torch.Tensor) -> "Neighbourhood":
        """The context of a subset of the batch (rows still iterating)."""
        return Neighbourhood(None if self.mask is None else self.mask[rows], None if self.geom is None else self.geom[rows])

    def crop(self, n: int) -> "Neighbourhood":
        """The context of the first n tokens (the state slots, without the action token)."""
        return Neighbourhood(None if self.mask is None else self.mask[:, :, :n, :n],
                             None if self.geom is None else self.geom[:, :n, :n])

    def repeat(self, times: int) -> "Neighbourhood":
        """The context of `times` stacked copies of the batch ((times*B, ...), copy-major)."""
        return Neighbourhood(None if self.mask is None else self.mask.repeat(times, 1, 1, 1),
                             None if self.geom is None else self.geom.repeat(times, 1, 1, 1))
