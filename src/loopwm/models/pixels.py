"""Convolutional encoder and decoder for camera frames, shared by every model kind.

A frame enters the models in entity form, (B, H*W, C): one "entity" per pixel, so the open-loop
error, the floors and the normalisation treat pixels exactly as they treat bodies. The encoder turns
it into a grid of patch tokens, (B, P, d) with P = (H/8) * (W/8), which the transformer core attends
over as it would over bodies; the decoder maps tokens back to a per-pixel output.

    (B, H*W, C) -> (B, C, H, W) -> 3 x [conv 4x4 stride 2] -> (B, d, H/8, W/8) -> (B, P, d)
    (B, P, d) -> (B, d, H/8, W/8) -> 3 x [transposed conv 4x4 stride 2] -> (B, C, H, W) -> (B, H*W, C)
"""

from __future__ import annotations

import torch
import torch.nn as nn

from loopwm.utils import LoopWMError


def patch_grid(obs_shape: list[int]) -> tuple[int, int]:
    H, W, _ = obs_shape
    if H % 8 or W % 8:
        raise LoopWMError(f"frames must have sides divisible by 8 for the convolutional encoder, got {H}x{W}: "
                          "collect with --pixel-size 32, 48 or 64")
    return H // 8, W // 8


class ConvEncoder(nn.Module):
    """Normalised frames (B, H*W, C) -> patch tokens (B, P, d), with a learned position per patch."""

    def __init__(self, obs_shape: list[int], d: int, width: int = 32):
        super().__init__()
        self.H, self.W, self.C = obs_shape
        gh, gw = patch_grid(obs_shape)
        self.net = nn.Sequential(
            nn.Conv2d(self.C, width, 4, 2, 1), nn.GELU(),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.GELU(),
            nn.Conv2d(2 * width, d, 4, 2, 1),
        )
        self.pos = nn.Parameter(torch.randn(gh * gw, d) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B = x.shape[0]
        img = x.reshape(B, self.H, self.W, self.C).permute(0, 3, 1, 2)  # (B, C, H, W)
        t = self.net(img)  # (B, d, H/8, W/8)
        return t.flatten(2).transpose(1, 2) + self.pos  # (B, P, d)


class ConvDecoder(nn.Module):
    """Patch tokens (B, P, d) -> per-pixel outputs (B, H*W, C); starts at zero ("nothing changes")."""

    def __init__(self, obs_shape: list[int], d: int, width: int = 32):
        super().__init__()
        self.H, self.W, self.C = obs_shape
        self.gh, self.gw = patch_grid(obs_shape)
        self.net = nn.Sequential(
            nn.ConvTranspose2d(d, 2 * width, 4, 2, 1), nn.GELU(),
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.GELU(),
            nn.ConvTranspose2d(width, self.C, 4, 2, 1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        B, P, d = tokens.shape
        grid = tokens.transpose(1, 2).reshape(B, d, self.gh, self.gw)  # (B, d, H/8, W/8)
        img = self.net(grid)  # (B, C, H, W)
        return img.permute(0, 2, 3, 1).reshape(B, self.H * self.W, self.C)  # (B, H*W, C)


class PixelEncoder(nn.Module):
    """The looped and deep models' observation encoder for frames: patch tokens plus the action."""

    def __init__(self, obs_shape: list[int], d: int, action_features: int):
        super().__init__()
        self.conv = ConvEncoder(obs_shape, d)
        self.action = nn.Linear(action_features, d)

    def forward(self, obs: torch.Tensor, norm: dict[str, torch.Tensor], action_feat: torch.Tensor) -> torch.Tensor:
        x = (obs - norm["mean"]) / norm["std_safe"]  # (B, H*W, C)
        return self.conv(x) + self.action(action_feat)[:, None, :]  # (B, P, d)
