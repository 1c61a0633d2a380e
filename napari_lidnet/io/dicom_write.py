"""CTVolume -> a new derived DICOM CT series (one file per slice, explicit VR little endian, int16 pixels)."""

from __future__ import annotations

import datetime as _dt
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .volume import CTVolume
from .windowing import DEFAULT_PRESET, WINDOW_PRESETS

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
_INT16_MIN, _INT16_MAX = -32768, 32767


def _intercept_for(hu_rounded: np.ndarray) -> float:
    """Rescale intercept (slope 1) so that ``hu - intercept`` fits int16; 0 when HU already fit."""
    lo, hi = float(hu_rounded.min()), float(hu_rounded.max())
    if lo >= _INT16_MIN and hi <= _INT16_MAX:
        return 0.0
    return float(np.floor((lo + hi) / 2))


def _slice_positions(volume: CTVolume, n: int) -> np.ndarray:
    """(n, 3) ImagePositionPatient (LPS mm) of each slice from the volume's affine."""
    if volume.hu.ndim == 2:
        ipp = volume.metadata.get("image_position_patient")
        if ipp is not None and len(ipp) == 3:
            return np.asarray([ipp], dtype=float)
    aff = volume.affine()
    idx = np.stack([np.arange(n), np.zeros(n), np.zeros(n), np.ones(n)], axis=1)
    return (aff @ idx.T).T[:, :3]


def _ds_str(value: float) -> str:
    """A decimal string (DS) of at most 16 characters."""
    text = f"{value:.10g}"
    if len(text) > 16:
        text = f"{value:.6e}"
    return text


def write_dicom_series(
    volume: CTVolume,
    out_dir: str | Path,
    series_description: str,
    source_tags: dict[str, Any] | None = None,
) -> list[Path]:
    """Write ``volume`` as a new DERIVED/SECONDARY CT series into an empty (or new) folder.

    ``source_tags`` (default ``volume.metadata["source_tags"]``) are copied onto every slice (patient, study,
    frame of reference, acquisition). HU are rounded to integers and stored as int16 with RescaleSlope 1 and a
    RescaleIntercept chosen so they fit. Returns the written files in slice order. Never overwrites: a folder that
    already contains anything is refused.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    out_dir = Path(out_dir)
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ValueError(f"{out_dir}: exists and is not a folder; choose an empty or new folder")
        if any(out_dir.iterdir()):
            raise ValueError(f"{out_dir}: folder is not empty; refusing to write a DICOM series into it")
    hu = np.asarray(volume.hu, dtype=np.float64)
    if not np.all(np.isfinite(hu)):
        raise ValueError(f"volume {volume.name!r} contains NaN or infinite values; cannot write DICOM")
    vol3 = hu if hu.ndim == 3 else hu[None]
    n, rows, cols = vol3.shape
    spacing = volume.spacing if hu.ndim == 3 else (None, *volume.spacing)
    dz = float(spacing[0]) if spacing[0] is not None else float(volume.metadata.get("slice_thickness") or 1.0)

    rounded = np.rint(vol3)
    intercept = _intercept_for(rounded)
    stored = rounded - intercept
    if stored.min() < _INT16_MIN or stored.max() > _INT16_MAX:
        warnings.warn(f"volume {volume.name!r}: HU range exceeds 16 bits; values clipped", UserWarning, stacklevel=2)
        stored = np.clip(stored, _INT16_MIN, _INT16_MAX)
    stored = stored.astype("<i2")

    tags = dict(volume.metadata.get("source_tags") or {}) if source_tags is None else dict(source_tags)
    direction = np.asarray(volume.direction, dtype=float)
    iop = [*direction[:, 0], *direction[:, 1]]
    normal = np.cross(direction[:, 0], direction[:, 1])
    positions = _slice_positions(volume, n)
    series_uid = generate_uid()
    study_uid = str(tags.pop("StudyInstanceUID", "") or generate_uid())
    frame_uid = str(tags.pop("FrameOfReferenceUID", "") or generate_uid())
    now = _dt.datetime.now()
    date, time = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    level, width = WINDOW_PRESETS[DEFAULT_PRESET]

    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    try:
        for k in range(n):
            sop_uid = generate_uid()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
            ds = Dataset()
            ds.file_meta = meta
            ds.SpecificCharacterSet = "ISO_IR 192"
            for kw, value in tags.items():
                try:
                    setattr(ds, kw, value)
                except (ValueError, TypeError, AttributeError) as exc:
                    warnings.warn(f"source tag {kw}={value!r} not copied: {exc}", UserWarning, stacklevel=2)
            ds.SOPClassUID = CT_IMAGE_STORAGE
            ds.SOPInstanceUID = sop_uid
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = frame_uid
            ds.Modality = "CT"
            ds.ImageType = ["DERIVED", "SECONDARY"]
            ds.SeriesDescription = series_description[:64]
            ds.DerivationDescription = f"napari-lidnet: {series_description}"[:1024]
            ds.SeriesNumber = 9001
            ds.InstanceNumber = k + 1
            ds.SeriesDate = ds.ContentDate = date
            ds.SeriesTime = ds.ContentTime = time
            for kw in ("PatientID", "PatientName", "StudyDate", "StudyTime", "StudyID", "AccessionNumber"):
                if kw not in ds:
                    setattr(ds, kw, "")
            ds.ImagePositionPatient = [_ds_str(v) for v in positions[k]]
            ds.ImageOrientationPatient = [_ds_str(v) for v in iop]
            ds.SliceLocation = _ds_str(float(np.dot(positions[k], normal)))
            ds.PixelSpacing = [_ds_str(spacing[1]), _ds_str(spacing[2])]
            ds.SliceThickness = _ds_str(float(volume.metadata.get("slice_thickness") or dz))
            ds.SpacingBetweenSlices = _ds_str(dz)
            ds.Rows, ds.Columns = rows, cols
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1
            ds.RescaleSlope = "1"
            ds.RescaleIntercept = _ds_str(intercept)
            ds.RescaleType = "HU"
            ds.WindowCenter = _ds_str(level)
            ds.WindowWidth = _ds_str(width)
            ds.PixelData = stored[k].tobytes()
            path = out_dir / f"IM{k + 1:05d}.dcm"
            pydicom.dcmwrite(path, ds, enforce_file_format=True)
            written.append(path)
    except Exception:
        for p in written:
            p.unlink(missing_ok=True)
        if created:
            out_dir.rmdir()
        raise
    return written


def denoised_description(source: str, model: str) -> str:
    """SeriesDescription of a denoised series: the source's and the model's names (DICOM LO: at most 64 chars)."""
    return f"{source or 'CT'} denoised (LIDnet {model})"[:64]
