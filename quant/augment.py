"""Inspection-safe augmentation on a float batch [N,1,H,W] in [0,1].

Flips, quarter turns (square inputs only), small rotations and brightness/contrast
jitter. No elastic warps, crops or blurs that could erase a small defect.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def augment_batch(x: torch.Tensor, gen: torch.Generator, max_degrees: float = 8.0) -> torch.Tensor:
    n, _, h, w = x.shape
    flip_h = torch.rand(n, generator=gen) < 0.5
    flip_v = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip_h[:, None, None, None], x.flip(3), x)
    x = torch.where(flip_v[:, None, None, None], x.flip(2), x)
    if h == w:
        k = int(torch.randint(0, 4, (1,), generator=gen))
        x = torch.rot90(x, k, dims=(2, 3))
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(max_degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    gain = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * 0.15
    bias = (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * 0.08
    mean = x.mean(dim=(2, 3), keepdim=True)
    x = (x - mean) * gain + mean + bias
    # back onto the pixel grid, so augmented inputs look like real uint8 images
    return (x.clamp(0, 1) * 255).round() * (1.0 / 255.0)
