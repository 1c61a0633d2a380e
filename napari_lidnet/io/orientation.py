"""Patient-orientation letters for the edges of a displayed plane: the R/L, A/P, S/I markers of a reading room.

DICOM patient coordinates are LPS: +x towards the patient's left, +y posterior, +z superior (head). A standard
axial series shown with rows down and columns right reads A at the top, P at the bottom, R on the left and L on the
right (the radiological convention: the patient's right on the viewer's left). Oblique directions get two or three
letters, largest component first, as scanner consoles print them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: (negative, positive) letter along patient x, y, z (DICOM LPS)
LPS_LETTERS = (("R", "L"), ("A", "P"), ("I", "S"))
#: a direction component is named from this |cosine| on (about 17 degrees off an axis)
OBLIQUE_MIN = 0.3
EDGES = ("top", "bottom", "left", "right")


def direction_letters(vector: Any) -> str:
    """Letters of a patient-space (LPS) direction: 'L' for (1, 0, 0), 'LP' for a direction between them."""
    v = np.asarray(vector, dtype=float)[:3]
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0:
        return ""
    v = v / norm
    order = np.argsort(-np.abs(v), kind="stable")
    return "".join(LPS_LETTERS[i][int(v[i] > 0)] for i in order if abs(v[i]) >= OBLIQUE_MIN)


def edge_letters(
    affine_lps: Any, down_axis: int, right_axis: int, flip_down: bool = False, flip_right: bool = False
) -> dict[str, str]:
    """Letters at the screen edges when array axis ``down_axis`` runs down the screen and ``right_axis`` to the right.

    ``affine_lps`` is the 4x4 map from array index (z, y, x, 1) to patient LPS millimetres (``CTVolume.affine``);
    axes count in that (z, y, x) order. ``flip_*``: the viewer shows that axis reversed (up, or to the left).
    """
    aff = np.asarray(affine_lps, dtype=float)
    down = aff[:3, down_axis] * (-1 if flip_down else 1)
    right = aff[:3, right_axis] * (-1 if flip_right else 1)
    return {
        "top": direction_letters(-down),
        "bottom": direction_letters(down),
        "left": direction_letters(-right),
        "right": direction_letters(right),
    }
