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
import torch.nn.functional as F

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
    """Per-pair features for a learned attention bias, (B, P + 1, L, L), feature-first: the unit
    direction from query i to key j, and their surface gap in units of a typical step (clipped at
    10). Zero for pairs that involve a global or action token, and for i = j. With them a head can
    prefer the neighbour on one side, or the touching one, which plain dot-product attention over
    absolute features finds hard. Feature-first, so the per-head bias is one matrix product that
    lands in the (B, H, L, L) layout attention reads, with no transposing copy."""
    B, N, _, P = pairs.rel.shape
    eye = torch.eye(N, dtype=torch.bool, device=pairs.rel.device)
    unit = pairs.rel.permute(0, 3, 1, 2) / pairs.dist[:, None]  # (B, P, N, N)
    gap = pairs.gap[:, None].clamp(min=0.0, max=10.0 * step_scale) / step_scale  # (B, 1, N, N)
    # zero, and no gradient, on the diagonal: there rel = 0 over a clamped distance, whose huge
    # derivative would only cancel out after rounding away the gradients of everything else
    pair = torch.cat([unit, gap], dim=1).masked_fill(eye, 0.0)  # (B, P+1, N, N)
    if n_extra == 0:
        return pair
    return F.pad(pair, (0, n_extra, 0, n_extra))  # (B, P+1, L, L): zero rows and columns for the extra tokens


class Neighbourhood:
    """One step's attention context, shared by every block and loop iteration of that step:
    `mask` (B, 1, L, L) bool or None (full attention), `geom` (B, P+1, L, L) or None (no bias)."""

    def __init__(self, mask: torch.Tensor | None, geom: torch.Tensor | None):
        self.mask, self.geom = mask, geom
        self._bias: dict[int, torch.Tensor] = {}

    def attn_bias(self, geom_bias: nn.Linear | None) -> torch.Tensor | None:
        """The additive attention bias of a block with this bias layer: (B, 1 or H, L, L) float,
        -inf where the mask forbids a pair (every row keeps its own token), or None for plain full
        attention. Built once per layer and step, then shared by every iteration of that step: in
        training with gradient even when first asked for inside an iteration that runs without it
        (the truncated window's early iterations), so the later ones reuse it rather than build it
        again."""
        if (geom_bias is None or self.geom is None) and self.mask is None:
            return None
        key = id(geom_bias)
        cached = self._bias.get(key)
        want_grad = torch.is_grad_enabled() or (geom_bias is not None and geom_bias.training)
        if cached is not None and (cached.requires_grad or not want_grad or not self._needs_grad(geom_bias)):
            return cached
        with torch.set_grad_enabled(want_grad):
            if geom_bias is not None and self.geom is not None:
                B, Q, L, _ = self.geom.shape
                bias = torch.matmul(geom_bias.weight, self.geom.flatten(2))  # (H, Q) @ (B, Q, L*L) -> (B, H, L*L)
                bias = (bias + geom_bias.bias[:, None]).view(B, -1, L, L)  # (B, H, L, L)
            else:
                bias = torch.zeros(self.mask.shape, dtype=torch.get_default_dtype(), device=self.mask.device)
            if self.mask is not None:
                bias = bias.masked_fill(~self.mask, float("-inf"))
        self._bias[key] = bias
        return bias

    def _needs_grad(self, geom_bias: nn.Linear | None) -> bool:
        return (geom_bias is not None and geom_bias.weight.requires_grad) or (self.geom is not None and self.geom.requires_grad)

    def take(self, rows: torch.Tensor) -> "Neighbourhood":
        """The context of a subset of the batch (rows still iterating); it slices the biases
        already built rather than building them again."""
        part = Neighbourhood(None if self.mask is None else self.mask[rows], None if self.geom is None else self.geom[rows])
        part._bias = {key: bias[rows] for key, bias in self._bias.items()}
        return part

    def crop(self, n: int) -> "Neighbourhood":
        """The context of the first n tokens (the state slots, without the action token)."""
        return Neighbourhood(None if self.mask is None else self.mask[:, :, :n, :n],
                             None if self.geom is None else self.geom[:, :, :n, :n])

    def repeat(self, times: int) -> "Neighbourhood":
        """The context of `times` stacked copies of the batch ((times*B, ...), copy-major)."""
        return Neighbourhood(None if self.mask is None else self.mask.repeat(times, 1, 1, 1),
                             None if self.geom is None else self.geom.repeat(times, 1, 1, 1))
