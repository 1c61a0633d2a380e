"""napari sample data: a simulated low-dose abdomen CT (25 % dose), its full-dose reference and the true lesions.

The low-dose layer names its full-dose partner (``metadata["normal_dose"]``); every layer's axes are z, y, x.

Generated on first use (phantom volume -> scanner model: ~20 s on an idle 2-core CPU, about a second on a GPU),
then cached in the process (functools.lru_cache) and on disk in the per-user cache folder, so opening it again is
instant, also in a new session. torch is imported only when the data are generated.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

LOW_NAME = "low-dose CT (25%)"
FULL_NAME = "full-dose CT"
TRUTH_NAME = "lesions (ground truth)"
SAMPLE_SEED = 2021
SAMPLE_DOSE = 0.25
SLICE_MM = 2.5
TRUTH_EDGE_COLOR = "lime"
CACHE_VERSION = 1
AXIS_LABELS = ("z", "y", "x")

#: where generated samples are kept between sessions (None: no disk cache)
CACHE_DIR: Path | None = None


def _cache_dir() -> Path | None:
    if CACHE_DIR is not None:
        return CACHE_DIR
    try:
        from platformdirs import user_cache_dir
    except ImportError:  # pragma: no cover - platformdirs is a dependency
        return None
    return Path(user_cache_dir("napari-lidnet")) / "samples"


def _load_cached(path: Path) -> tuple | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            return (
                z["low"],
                z["full"],
                z["boxes"],
                tuple(str(k) for k in z["kinds"]),
                tuple(float(v) for v in z["spacing"]),
            )
    except (OSError, KeyError, ValueError):
        return None


def _save_cached(path: Path, low, full, boxes, kinds, spacing) -> None:
    from napari_lidnet.io.atomic import write_atomically

    buffer = io.BytesIO()
    np.savez_compressed(buffer, low=low, full=full, boxes=boxes, kinds=np.array(kinds, dtype=str), spacing=spacing)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, buffer.getvalue())
    except OSError:
        pass  # a read-only home only costs regeneration next time


LayerDataTuple = tuple[Any, dict[str, Any], str]


@lru_cache(maxsize=4)
def _sample_arrays(n_slices: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[str, ...], tuple]:
    """(low HU, full HU, boxes (N, 5), lesion kinds, spacing zyx) for the fixed-seed sample; cached."""
    cache = _cache_dir()
    fname = f"abdomen_v{CACHE_VERSION}_s{SAMPLE_SEED}_d{SAMPLE_DOSE:g}_{n_slices}x{size}.npz"
    cached = _load_cached(cache / fname) if cache is not None else None
    if cached is not None:
        return cached
    import torch

    from napari_lidnet.sim.lowdose import simulate_pair
    from napari_lidnet.sim.phantom import make_phantom_volume

    vol = make_phantom_volume(SAMPLE_SEED, n_slices, "abdomen", size, slice_mm=SLICE_MM, pixel_mm=0.75, n_lesions=5)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    full, low = simulate_pair(vol.hu, SAMPLE_DOSE, vol.spacing_mm[1], seed=SAMPLE_SEED, device=device)
    if cache is not None:
        _save_cached(cache / fname, low, full, vol.boxes, vol.lesion_kinds, vol.spacing_mm)
    return low, full, vol.boxes, tuple(vol.lesion_kinds), vol.spacing_mm


def sample_abdomen(n_slices: int = 6, size: int = 512) -> list[LayerDataTuple]:
    """Layer tuples: full-dose image, low-dose image above it (soft-tissue window, mm scale), ground-truth boxes."""
    from napari_lidnet.io.volume import MM, CTVolume
    from napari_lidnet.layer_data import boxes_layer_tuple, data_key, volume_to_layer_tuple

    low, full, boxes, kinds, spacing = _sample_arrays(int(n_slices), int(size))
    source = f"simulated abdomen phantom (seed {SAMPLE_SEED}), {SAMPLE_DOSE:.0%} dose, napari_lidnet.sim"
    meta = {"source": source, "dose": SAMPLE_DOSE}
    low_meta = {**meta, "normal_dose": FULL_NAME, "normal_dose_key": data_key(full)}  # ROI compare's reference,
    # Fine-tune's pairing (by the full dose's fingerprint: a second sample's low dose is not paired with the first's)
    axial = {"origin": (0.0, 0.0, 0.0), "direction": np.eye(3)}  # the phantom is drawn as an axial slice is read:
    # the patient's right (its liver) on the image's left, the front up
    layers = [  # the low dose on top of its reference: the image a user opens the sample to denoise is the one shown
        volume_to_layer_tuple(CTVolume(full.copy(), spacing, **axial, name=FULL_NAME, metadata={**meta, "dose": 1.0})),
        volume_to_layer_tuple(CTVolume(low.copy(), spacing, **axial, name=LOW_NAME, metadata=low_meta)),
    ]
    layers.append(
        boxes_layer_tuple(
            boxes.copy(),
            3,
            name=TRUTH_NAME,
            scale=spacing,
            translate=(0.0, 0.0, 0.0),
            units=(MM,) * 3,
            labels=list(kinds),
            edge_color=TRUTH_EDGE_COLOR,
        )  # fmt: skip
    )
    for _data, kwargs, _kind in layers:
        kwargs["axis_labels"] = AXIS_LABELS
    return layers
