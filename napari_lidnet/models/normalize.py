"""The one network normalisation: HU / 1000 (air -1, water 0, dense bone ~ +1).

Denoisers take and return this scale (residual learning keeps it linear in HU). The detector takes the same scale
and windows it internally, so gradients of the detection and ROI perceptual losses flow back to the denoiser.
"""

HU_SCALE = 1000.0


def hu_to_net(hu):
    """HU (numpy array or torch tensor) to network scale."""
    return hu / HU_SCALE


def net_to_hu(x):
    """Network scale back to HU."""
    return x * HU_SCALE
