"""The one network normalisation: HU / 1000 (air -1, water 0, dense bone ~ +1).

Denoisers take and return this scale (residual learning keeps it linear in HU). The detector takes the same scale
and windows it internally, so gradients of the detection and ROI perceptual losses flow back to the denoiser.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import numpy as np
    import torch

HU_SCALE = 1000.0

#: what the conversions take and give back: a numpy array, a torch tensor or a number
T = TypeVar("T", "np.ndarray", "torch.Tensor", float)


def hu_to_net(hu: T) -> T:
    """HU (numpy array or torch tensor) to network scale."""
    return hu / HU_SCALE


def net_to_hu(x: T) -> T:
    """Network scale back to HU."""
    return x * HU_SCALE
