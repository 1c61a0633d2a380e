"""The one in-memory CT type: float32 Hounsfield units plus geometry.

Convention (DESIGN.md): HU stay untouched in memory; windowing is for display and network input only.
Axis order is napari's: (z, y, x) for volumes, (y, x) for single slices. Boxes live in pixel coordinates
(x1, y1, x2, y2) with their slice index and are converted to world coordinates only at the layer boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


def checked_spacing(spacing: Any, ndim: int) -> tuple[float, ...]:
    """``spacing`` as ``ndim`` floats (mm per array axis), or ValueError when it is not that many positive numbers."""
    values = np.atleast_1d(np.asarray(spacing, dtype=float))
    if values.shape != (ndim,) or not (np.isfinite(values).all() and (values > 0).all()):
        raise ValueError(f"spacing {values.tolist()} must be {ndim} positive numbers (mm per axis)")
    return tuple(float(v) for v in values)


def n_slices(image: Any) -> int:
    """Number of slices of a (z, y, x) or (y, x) image (an array or anything with ``ndim`` and ``shape``)."""
    return int(image.shape[0]) if image.ndim == 3 else 1


#: napari's unit of a layer whose scale is a voxel size in mm
MM = "mm"
#: metadata lists, one entry per slice
PER_SLICE_KEYS = ("files", "slice_ipp", "instance_numbers", "sop_instance_uids", "frame_numbers", "slice_tags")


def per_slice(metadata: dict[str, Any], key: str, n: int) -> list | None:
    """``metadata[key]`` when it holds one entry per slice of an ``n``-slice image, else None."""
    value = metadata.get(key)
    return list(value) if isinstance(value, (list, tuple)) and len(value) == n else None


def slice_metadata(metadata: dict[str, Any], start: int, n: int) -> dict[str, Any]:
    """``metadata`` of slices ``start:start + n`` of a volume: per-slice lists cut to those slices."""
    out = dict(metadata)
    for key in PER_SLICE_KEYS:
        value = metadata.get(key)
        if isinstance(value, (list, tuple)) and len(value) >= start + n:
            out[key] = list(value[start : start + n])
    return out


@dataclass
class CTVolume:
    """A CT image in HU with its geometry.

    Attributes:
        hu: float32 array, (z, y, x) or (y, x).
        spacing: voxel size in mm per array axis, same length as ``hu.ndim``.
        origin: world position (mm, patient LPS) of voxel 0, per array axis order (z, y, x). With neither origin
            nor direction given, both are made up (0 and the identity) and ``metadata["orientation_unknown"]`` says
            so: writers then leave the patient position out.
        direction: (3, 3) matrix whose columns are the patient-space unit vectors of the x, y and z array axes
            (DICOM ImageOrientationPatient row/column cosines and the slice normal).
        boxes: optional (N, 5) float array of lesion boxes ``slice, x1, y1, x2, y2`` in pixels.
        metadata: free-form provenance (source files, series UID, warnings, DICOM tags to copy on export).
    """

    hu: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...] | None = None
    direction: np.ndarray | None = None
    boxes: np.ndarray | None = None
    name: str = "CT"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.hu = np.asarray(self.hu, dtype=np.float32)  # float32 input is kept, not copied
        self.spacing = checked_spacing(self.spacing, self.hu.ndim)
        if self.origin is None and self.direction is None:  # made up here: no patient position, no R/L letters
            self.metadata = {"orientation_unknown": True, **self.metadata}  # a copy: the caller's dict stays as it was
        if self.origin is None:
            self.origin = (0.0,) * self.hu.ndim
        self.origin = tuple(float(o) for o in self.origin)
        if self.direction is None:
            self.direction = np.eye(3)
        self.direction = np.asarray(self.direction, dtype=float)

    def affine(self) -> np.ndarray:
        """4x4 affine from array index (z, y, x, 1) to patient LPS (x, y, z, 1) in mm."""
        spacing = self.spacing if self.hu.ndim == 3 else (1.0, *self.spacing)
        origin_zyx = self.origin if self.hu.ndim == 3 else (0.0, *self.origin)
        aff = np.eye(4)
        # columns of direction are the x, y, z array axes; array order is z, y, x
        for col, axis in enumerate((2, 1, 0)):
            aff[:3, col] = self.direction[:, axis] * spacing[col]
        aff[:3, 3] = np.asarray(origin_zyx[::-1], dtype=float)
        return aff

    def display_affine(self) -> np.ndarray | None:
        """napari's ``affine`` (applied after scale and translate) for a volume whose slices run toward the feet (a
        feet-first series, sorted along its slice normal): the slice axis mirrored about slice 0, so that the viewer's
        z is the patient's and series stacked either way line up. None otherwise. Rows and columns stay as stored
        (a prone series is shown as it lies, as a PACS shows it; ``affine_lps`` and the letters tell its sides)."""
        stack = self.direction[:, 2]
        if self.hu.ndim != 3 or int(np.argmax(np.abs(stack))) != 2 or stack[2] > 0:
            return None
        aff = np.eye(4)
        aff[0, 0], aff[0, 3] = -1.0, 2.0 * self.origin[0]
        return aff

    def units(self) -> tuple[str, ...] | None:
        """napari's units of its layer: mm on every axis; None (napari's pixels) when the reader assumed the spacing."""
        return None if self.metadata.get("spacing_assumed") else (MM,) * self.hu.ndim

    def layer_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``viewer.add_image``: scale and translate from geometry, in mm (napari's ``units``,
        so its scale bar reads mm) unless the reader assumed the spacing, the mirrored slice axis of a feet-first
        stack as napari's affine (``display_affine``), the patient affine in metadata."""
        flips, units = self.display_affine(), self.units()
        return {
            "name": self.name,
            "scale": self.spacing,
            "translate": self.origin,
            **({} if units is None else {"units": units}),
            **({} if flips is None else {"affine": flips}),
            "metadata": {**self.metadata, "affine_lps": self.affine(), "spacing": self.spacing},
        }


def off_grid_mm(volume: CTVolume) -> float:
    """Largest distance (mm) of a slice's own position (``metadata["slice_ipp"]``, DICOM) from the uniform grid of
    the volume's origin, spacing and direction: a series with a gap or uneven spacing; 0 without positions."""
    ipp = per_slice(volume.metadata, "slice_ipp", n_slices(volume.hu)) if volume.hu.ndim == 3 else None
    if not ipp:
        return 0.0
    k = np.arange(len(ipp))[:, None]
    grid = np.asarray(volume.origin[::-1]) + k * volume.spacing[0] * volume.direction[:, 2]
    return float(np.max(np.linalg.norm(np.asarray(ipp, dtype=float) - grid, axis=1)))


def check_uniform_grid(volume: CTVolume, what: str) -> None:
    """Refuse (one-line ValueError) to write ``volume`` into a format that holds only a uniform grid (``what``:
    NIfTI, .npz, .tif) when a slice lies more than a tenth of the spacing off it."""
    off = off_grid_mm(volume)
    if off > 0.1 * volume.spacing[0]:
        raise ValueError(
            f"{volume.name}: its slices are unevenly spaced (one lies {off:.1f} mm off a {volume.spacing[0]:g} mm "
            f"grid, e.g. a gap in the series); {what} holds a uniform grid and would misplace them: write a DICOM "
            "series (a folder) instead"
        )


def known_pixel_mm(volume: CTVolume) -> tuple[float, float] | None:
    """The (row, column) pixel size in mm, or None when the reader had to assume it (``spacing_assumed``)."""
    if volume.metadata.get("spacing_assumed"):
        return None
    return float(volume.spacing[-2]), float(volume.spacing[-1])


def square_pixel_mm(spacing: float | Any) -> float:
    """One pixel size in mm from a number, or from a (row, column) or (z, y, x) spacing whose rows and columns agree
    within 1% (a :class:`CTVolume`'s ``spacing`` can be passed as it is); ValueError otherwise."""
    values = np.atleast_1d(np.asarray(spacing, dtype=float))
    if values.ndim != 1 or values.size == 0 or not (np.isfinite(values).all() and (values > 0).all()):
        raise ValueError(f"pixel size {spacing!r}: give a positive number of mm (or a spacing of them)")
    row, col = (float(values[-2]), float(values[-1])) if values.size > 1 else (float(values[0]),) * 2
    if abs(row - col) > 0.01 * max(row, col):
        raise ValueError(f"pixels of {row:g} x {col:g} mm are not square: give one size in mm")
    return col
