"""The one preprocessing every target shares.

Images are stored and fed to hardware as uint8 grayscale pixels [N, 1, H, W].
The torch models see `pixels * (1/255)` in float32: a multiplication by the float32
constant, never a division, so the FPGA graph's Mul-by-1/255 preprocessing node
computes the same float32 values bit for bit.
"""
import numpy as np
import torch

PIXEL_SCALE = np.float32(1.0 / 255.0)


def to_input(pixels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 pixels [N, 1, H, W] -> float32 model input in [0, 1]."""
    if isinstance(pixels, np.ndarray):
        pixels = torch.from_numpy(np.ascontiguousarray(pixels))
    return pixels.to(torch.float32) * torch.tensor(PIXEL_SCALE)


def to_input_np(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float32) * PIXEL_SCALE
