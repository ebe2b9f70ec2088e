"""The one place image arrays change layout: splits are stored as uint8 (N, H, W) for grey or (N, H, W, C), the
layout of MedMNIST's files and of albumentations; networks take (N, C, H, W) tensors."""

from __future__ import annotations

import warnings

import numpy as np
import torch


def nchw(block: np.ndarray, fresh: bool = False) -> torch.Tensor:
    """uint8 (N, H, W[, C]) -> a contiguous uint8 tensor (N, C, H, W) that owns its memory (the source may be a
    read-only map), copied once; ``fresh``: ``block`` is a new array of the caller's, used without a copy."""
    with warnings.catch_warnings():  # read only for the moment: the tensor returned is always writable
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        x = torch.from_numpy(block)
    if x.ndim == 4:
        return x.permute(0, 3, 1, 2).contiguous()
    return x.unsqueeze(1) if fresh and block.flags.writeable and block.flags.c_contiguous else x.unsqueeze(1).clone()


def nchw_view(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W[, C]) -> (N, C, H, W) as a view, no copy: for a writable (e.g. copy-on-write mapped) split that
    is read a batch at a time."""
    x = torch.from_numpy(images)
    return x.permute(0, 3, 1, 2) if x.ndim == 4 else x.unsqueeze(1)


def stored_layout(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) uint8 tensor -> the stored layout, (N, H, W) for one channel or (N, H, W, C), as a view."""
    array = images.permute(0, 2, 3, 1).numpy()
    return array[..., 0] if array.shape[-1] == 1 else array
