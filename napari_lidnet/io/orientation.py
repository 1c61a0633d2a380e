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


def edge_letters(down: Any, right: Any) -> dict[str, str]:
    """Letters at the screen edges, given the patient-space (LPS) directions in which the screen's rows run down
    (``down``) and its columns run right (``right``)."""
    down, right = np.asarray(down, dtype=float), np.asarray(right, dtype=float)
    return {
        "top": direction_letters(-down),
        "bottom": direction_letters(down),
        "left": direction_letters(-right),
        "right": direction_letters(right),
    }
