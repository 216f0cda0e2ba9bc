"""An exponential moving average of a model's weights (Polyak averaging, as torchvision's
reference recipes and timm's ModelEmaV2 keep it): validation, the kept state and the exported
model use the average, which smooths the last steps' noise on small validation sets.

    avg = WeightAverage(model, decay)   # decay per optimizer step, e.g. 0.99
    avg.update(model)                   # after every optimizer step
    avg.model(model)                    # a copy of `model` carrying the averaged state
"""
from __future__ import annotations

import copy

import torch


class WeightAverage:
    """Every floating-point tensor of the state dict (weights, quantizer scales, BatchNorm
    statistics) is averaged; integer ones (counters) follow the model. The effective decay
    ramps up as min(decay, (1 + n) / (10 + n)) so the first steps' weights fade out fast."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.decay, self.updates = decay, 0
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in model.state_dict().items():
            mine = self.state.get(k)
            if mine is None or mine.shape != v.shape:  # a tensor created in training (a quantizer's scale)
                self.state[k] = v.detach().clone()
            elif v.dtype.is_floating_point:
                mine.lerp_(v.detach(), 1.0 - d)
            else:
                mine.copy_(v)

    def model(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of `model` (its structure and mode) holding the averaged state."""
        out = copy.deepcopy(model)
        out.load_state_dict(self.state)
        return out
