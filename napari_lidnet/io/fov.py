"""Pixels outside the scanner's reconstruction field of view (padding).

Scanners fill what lies outside the reconstructed circle with a padding value far below air (-2048 or -3024 HU after
the rescale on many scanners, -2000 on others): not a measurement. A network trained on air there sees a step of
1000-2000 HU at the circle's edge and rings it into the image (the shipped denoiser: up to 340 HU, 33 HU on average
within 4 px of the edge, with -3024 padding). So the networks get air in its place, and the padding is put back.

A slice's padding is every region of pixels below -1200 HU that touches the image border, when together they cover
at least 0.5% of the slice (and 64 pixels): air is -1000 HU and its noise seldom reaches -1200 in more than a few
scattered pixels, while a fill covers the corners; a lossy (JPEG 2000) file smears the fill into a range of values,
which this still catches. Thin dark structures (streaks up to 6 px wide, even when they run out to the fill) are
cut off: the region is eroded by 3 px and grown back by at most 6 px inside itself; within 6 px of the image's edge
the whole region counts (where the circle meets the edge the fill tapers to slivers thinner than the erosion).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

AIR_HU = -1000.0
PADDING_BELOW_HU = -1200.0
MIN_SHARE = 0.005
MIN_PIXELS = 64
THIN_PX = 3  # erosion depth: structures up to 2 x THIN_PX wide are not padding


def padding_mask(image: np.ndarray) -> np.ndarray | None:
    """Boolean mask of the padding pixels of one 2D image (HU), or None when it has none."""
    image = np.asarray(image)
    least = max(MIN_SHARE * image.size, MIN_PIXELS)
    low = image < PADDING_BELOW_HU
    if image.size == 0 or low.sum() < least:
        return None
    labels, _ = ndi.label(low)
    edge = np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    region = np.isin(labels, np.unique(edge[edge > 0]))
    core = ndi.binary_erosion(region, iterations=THIN_PX, border_value=1)  # the border is outside the field too
    mask = ndi.binary_dilation(core, iterations=2 * THIN_PX) & region
    if not mask.any():
        return None
    band = np.ones_like(mask)  # the slivers where the circle meets the image's edge: thin, yet padding
    band[2 * THIN_PX : -2 * THIN_PX, 2 * THIN_PX : -2 * THIN_PX] = False
    mask |= region & band
    return mask if mask.sum() >= least else None


def fill_padding(stack: np.ndarray) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """``(images, masks)``: the (B, H, W) stack with every slice's padding set to air (a copy only when some slice
    has padding), and each slice's padding mask (None where it has none)."""
    masks = [padding_mask(image) for image in stack]
    if all(m is None for m in masks):
        return stack, masks
    filled = np.array(stack, np.float32, copy=True)
    for image, mask in zip(filled, masks):
        if mask is not None:
            image[mask] = AIR_HU
    return filled, masks


def air_filled(image: np.ndarray) -> np.ndarray:
    """One 2D image with its padding set to air (the image itself when it has none)."""
    image = np.asarray(image)
    filled, masks = fill_padding(image[None])
    return image if masks[0] is None else filled[0]
