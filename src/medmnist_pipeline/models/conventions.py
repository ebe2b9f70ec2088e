"""Pixel and score conventions every model shares, in training and at inference: how uint8 pixels become the
network's input and how its logits become probabilities. The lowest module of models/: everything else here uses it.
"""

from __future__ import annotations

import torch

from medmnist_pipeline.metadata import MULTI_LABEL


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float in [-1, 1], the MedMNIST experiments' Normalize(mean=0.5, std=0.5)."""
    return images.to(torch.float32).div(127.5).sub(1.0)  # not in place: a float input stays the caller's


def scores_from_logits(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Per-label sigmoid for multi-label data, softmax over classes otherwise (binary models have 2 outputs)."""
    return torch.sigmoid(logits) if task == MULTI_LABEL else torch.softmax(logits, dim=-1)
