"""Losses for imbalanced inspection data: cross-entropy, focal, class-balanced."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class FocalLoss(nn.Module):
    """Lin et al. 2017: down-weights easy examples. gamma=0 is cross-entropy."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight if weight is not None else torch.tensor([]))

    def forward(self, logits, target):
        logp = F.log_softmax(logits, dim=1)
        logp_t = logp.gather(1, target[:, None]).squeeze(1)
        loss = -((1 - logp_t.exp()) ** self.gamma) * logp_t
        if self.weight.numel():
            loss = loss * self.weight[target]
        return loss.mean()


def class_balanced_weights(labels: np.ndarray, num_classes: int, beta: float = 0.999) -> torch.Tensor:
    """Cui et al. 2019 effective-number weights, normalised to mean 1."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    eff = (1.0 - np.power(beta, np.maximum(counts, 1))) / (1.0 - beta)
    w = 1.0 / eff
    return torch.tensor(w / w.mean() , dtype=torch.float32)


def make_loss(name: str, labels: np.ndarray, num_classes: int) -> nn.Module:
    if name == "ce":
        return nn.CrossEntropyLoss()
    if name == "focal":
        return FocalLoss(gamma=2.0)
    if name == "class_balanced":
        return nn.CrossEntropyLoss(weight=class_balanced_weights(labels, num_classes))
    raise ValueError(f"unknown loss {name!r}; valid: ce, focal, class_balanced")


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton et al. 2015: T^2 x KL(teacher || student) of the softened distributions (the T^2
    keeps its gradient on the scale of the label loss's)."""
    t = temperature
    return F.kl_div(F.log_softmax(student_logits / t, dim=1), F.log_softmax(teacher_logits / t, dim=1),
                    reduction="batchmean", log_target=True) * (t * t)


class Distilled(nn.Module):
    """(1 - weight) x `label_loss`(student, target) + weight x distillation_loss(student, teacher):
    called with the teacher's logits of the same (augmented) batch."""

    def __init__(self, label_loss: nn.Module, weight: float, temperature: float):
        super().__init__()
        self.label_loss, self.weight, self.temperature = label_loss, weight, temperature

    def forward(self, logits, target, teacher_logits):
        return ((1 - self.weight) * self.label_loss(logits, target)
                + self.weight * distillation_loss(logits, teacher_logits, self.temperature))
