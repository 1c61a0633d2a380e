"""CTVolume -> a new derived DICOM CT series (one file per slice, explicit VR little endian, int16 pixels)."""

from __future__ import annotations

import contextlib
import datetime as _dt
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from .atomic import new_folder, remove_stale_partials
from .dicom_read import SLICE_TAGS as PER_IMAGE_TAGS
from .dicom_read import written_to_tenth_mm
from .dicom_values import tag_value
from .volume import CTVolume, per_slice
from .windowing import SCAN_WINDOW, level_width

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: a source's PixelPaddingValue is written back only when its HU lie below every value a scan stores (-1024), so no
#: air pixel of a derived image (the denoiser holds air at -1024) reads as padding
LOWEST_WRITTEN_HU = -1024.5
_INT16_MIN, _INT16_MAX = -32768, 32767


def _intercept_for(lo: float, hi: float) -> float:
    """Rescale intercept (slope 1) so that rounded HU from ``lo`` to ``hi`` minus it fit int16; 0 when they fit."""
    if lo >= _INT16_MIN and hi <= _INT16_MAX:
        return 0.0
    return float(np.floor((lo + hi) / 2))


def _slice_positions(volume: CTVolume, n: int) -> np.ndarray:
    """(n, 3) ImagePositionPatient (LPS mm) of each slice: the source slices' own (a series with a gap keeps it),
    else from the volume's affine."""
    own = per_slice(volume.metadata, "slice_ipp", n)
    if own is not None:
        return np.asarray(own, dtype=float).reshape(n, 3)
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


def _check_out_dir(out_dir: Path) -> None:
    """Refuse a file, or a folder that already holds anything (outputs never overwrite)."""
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ValueError(f"{out_dir}: exists and is not a folder; choose an empty or new folder")
        remove_stale_partials(out_dir)  # a killed write's hidden leftovers; a running writer's stay and count
        if any(out_dir.iterdir()):
            raise ValueError(f"{out_dir}: folder is not empty; refusing to write a DICOM series into it")


class _StoredSlices:
    """A volume's int16 stored values, made one slice at a time as they are written (a whole-volume conversion held
    6.5 times the volume: 5.8 GB more at the end of a 600-slice export)."""

    def __init__(self, hu: np.ndarray, intercept: float) -> None:
        self.hu, self.intercept = hu, intercept

    def __len__(self) -> int:
        return len(self.hu)

    def __getitem__(self, k: int) -> np.ndarray:
        stored = np.rint(np.asarray(self.hu[k], dtype=np.float64)) - self.intercept
        return np.clip(stored, _INT16_MIN, _INT16_MAX).astype("<i2")


def _stored_int16(volume: CTVolume) -> tuple[_StoredSlices, float]:
    """(z, y, x) int16 stored values (slice by slice) and the RescaleIntercept that maps them back to rounded HU."""
    hu = volume.hu if volume.hu.ndim == 3 else volume.hu[None]
    lo, hi = np.inf, -np.inf
    for plane in hu:  # the range and the check slice by slice: no whole-volume copy
        if not np.all(np.isfinite(plane)):
            raise ValueError(f"volume {volume.name!r} contains NaN or infinite values; cannot write DICOM")
        lo, hi = min(lo, float(np.rint(plane.min()))), max(hi, float(np.rint(plane.max())))
    intercept = _intercept_for(lo, hi)
    if lo - intercept < _INT16_MIN or hi - intercept > _INT16_MAX:
        warnings.warn(f"volume {volume.name!r}: HU range exceeds 16 bits; values clipped", UserWarning, stacklevel=3)
    return _StoredSlices(hu, intercept), intercept


#: Type 2 (and 2C for CT) attributes of the Patient, General Study, General Series, Frame of Reference, General
#: Equipment and CT Image modules (PS3.3 A.3): written empty when the source does not give them
TYPE2_TAGS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
              "ReferringPhysicianName", "StudyID", "AccessionNumber", "PatientPosition", "PositionReferenceIndicator",
              "Manufacturer", "KVP", "AcquisitionNumber")  # fmt: skip


def derived_series_number(source: Any, offset: int) -> int:
    """A derived series' number in a PACS list: ``offset`` + the source series' number, so the pair reads at a glance
    (series 3 -> 9003 denoised, 9903 its report; a series this program numbered, 9003, counts as its source 3);
    ``offset + 1`` when the source has none or another one of 900 or more."""
    try:
        n = int(str(source).strip())
    except (TypeError, ValueError):
        return offset + 1
    n = n - 9000 if 9000 <= n < 9900 else n
    return offset + n if 0 <= n < 900 else offset + 1


def _series_header(volume: CTVolume, description: str, derivation: str) -> Any:
    """The tags every slice of the new series shares: copied source tags, UIDs, dates, geometry, pixel format."""
    from pydicom.dataset import Dataset
    from pydicom.uid import generate_uid

    tags = dict(volume.metadata.get("source_tags") or {})
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    for kw, value in tags.items():
        if kw in ("StudyInstanceUID", "FrameOfReferenceUID", "SeriesNumber"):  # set below
            continue
        try:
            setattr(ds, kw, tag_value(value))
        except (ValueError, TypeError, AttributeError) as exc:
            warnings.warn(f"source tag {kw}={value!r} not copied: {exc}", UserWarning, stacklevel=3)
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.StudyInstanceUID = str(tags.get("StudyInstanceUID", "") or _stand_in_uid(volume, "study"))
    ds.SeriesInstanceUID = generate_uid()
    ds.FrameOfReferenceUID = str(tags.get("FrameOfReferenceUID", "") or _stand_in_uid(volume, "frame of reference"))
    ds.Modality = "CT"
    ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    ds.SeriesDescription = description[:64]
    earlier = str(tags.get("DerivationDescription") or "")  # the source's own history comes first
    ds.DerivationDescription = f"{earlier + '; ' if earlier else ''}napari-lidnet: {derivation or description}"[-1024:]
    ds.SeriesNumber = derived_series_number(tags.get("SeriesNumber"), 9000)
    now = _dt.datetime.now()
    ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    for kw in TYPE2_TAGS:  # Type 2: present, empty when the source does not say
        if kw not in ds:
            setattr(ds, kw, "")
    ds.ContributingEquipmentSequence = [_processing_equipment(now)]
    _set_pixel_format(ds, volume)
    return ds


def _stand_in_uid(volume: CTVolume, what: str) -> str:
    """``stand_in_uid`` for ``volume``'s source (its series UID, else its path)."""
    return stand_in_uid(str(volume.metadata.get("series_uid") or volume.metadata.get("source") or ""), what)


def stand_in_uid(source: str, what: str) -> str:
    """A UID for a source that has none (a study, a frame of reference): the same for every series and report
    written from one source (``source``: its series UID or path), so a viewer links them; random for no source."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["napari-lidnet", what, source]) if source else generate_uid()


def _processing_equipment(when: _dt.datetime) -> Any:
    """A Contributing Equipment item naming this program as the processing equipment (PS3.3 C.7.5.1, CID 7005);
    General Equipment keeps describing the scanner that acquired the images."""
    from pydicom.dataset import Dataset

    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = "109102", "DCM", "Processing Equipment"
    item = Dataset()
    item.PurposeOfReferenceCodeSequence = [purpose]
    item.Manufacturer = "napari-lidnet"
    item.SoftwareVersions = __version__
    item.ContributionDateTime = when.strftime("%Y%m%d%H%M%S")
    item.ContributionDescription = "LIDnet denoising"
    return item


def _spacing_between(volume: CTVolume, dz: float, direction: np.ndarray) -> float | None:
    """SpacingBetweenSlices: the stack's step measured along the slice normal (a tilted stack steps obliquely: 2.5 mm
    at 15 deg is 2.415 mm between the planes), None when the slices' own positions are unevenly spaced."""
    ipp = volume.metadata.get("slice_ipp")
    if isinstance(ipp, list) and len(ipp) > 2:
        pos = np.asarray(ipp, float)
        steps = np.linalg.norm(np.diff(pos, axis=0), axis=1)
        rounded = written_to_tenth_mm(pos)  # positions written to 0.1 mm: their steps differ by that much
        if np.max(np.abs(steps - dz)) > 0.01 * dz + (0.1 if rounded else 0.0) + 1e-3:  # a gap, or another step
            return None
    normal = np.cross(direction[:, 0], direction[:, 1])
    cos = abs(float(np.dot(direction[:, 2], normal))) if np.linalg.norm(normal) > 0 else 1.0
    return dz * (cos if cos > 0 else 1.0)


def _set_pixel_format(ds: Any, volume: CTVolume) -> None:
    """Orientation, pixel size, thickness, int16 MONOCHROME2 layout and the default display window."""
    spacing = volume.spacing if np.ndim(volume.hu) == 3 else (None, *volume.spacing)
    dz = float(spacing[0]) if spacing[0] is not None else float(volume.metadata.get("slice_thickness") or 1.0)
    direction = np.asarray(volume.direction, dtype=float)
    ds.ImageOrientationPatient = [_ds_str(v) for v in (*direction[:, 0], *direction[:, 1])]
    if not volume.metadata.get("spacing_assumed"):  # a source without a pixel size: none is invented for its copy
        ds.PixelSpacing = [_ds_str(spacing[1]), _ds_str(spacing[2])]
    thickness = volume.metadata.get("slice_thickness")  # Type 2: empty where the source does not say (PNG, array)
    ds.SliceThickness = _ds_str(float(thickness)) if thickness else ""
    if volume.metadata.get("orientation_unknown"):  # Type 1 all the same: said to be assumed
        ds.ImageComments = ("The source image gives no patient orientation or position: the axial orientation and "
                            "the positions stated here are assumed.")  # fmt: skip
    between = _spacing_between(volume, dz, direction)
    if between is not None:  # Type 3: left out where the slices are not evenly spaced
        ds.SpacingBetweenSlices = _ds_str(between)
    ds.Rows, ds.Columns = (int(n) for n in np.shape(volume.hu)[-2:])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    if _given(ds.get("WindowCenter")) and _given(ds.get("WindowWidth")):  # the source's windows (copied above)
        return
    level, width = level_width(SCAN_WINDOW, volume.metadata)  # the source's own, else the default preset
    ds.WindowCenter, ds.WindowWidth = _ds_str(float(level)), _ds_str(float(width))
    if "WindowCenterWidthExplanation" in ds:
        del ds.WindowCenterWidthExplanation


def _given(value: Any) -> bool:
    """Whether a header value says something (not absent, not empty)."""
    return value is not None and value != "" and not (isinstance(value, list | tuple) and not value)


def _slice_dataset(
    header: Any, k: int, position: np.ndarray, normal: np.ndarray, pixels: np.ndarray, source: tuple[Any, ...],
    own: dict[str, Any] | None = None,
) -> Any:
    """Slice ``k`` of the series: a copy of the shared header with its own UID, position and pixels; ``source``:
    the source slice's (InstanceNumber, SOPInstanceUID, frame number or None, SOPClassUID), kept as its number and
    referenced (None, '': unknown); ``own``: the source slice's per-image tags (``dicom_read.SLICE_TAGS``)."""
    import copy

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    ds = copy.deepcopy(header)
    ds.SOPInstanceUID = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    number, uid, frame, sop_class = source
    ds.InstanceNumber = int(number) if number is not None else k + 1  # PACS image numbers match the source's
    if uid:
        ref = Dataset()
        ref.ReferencedSOPClassUID = sop_class or CT_IMAGE_STORAGE
        ref.ReferencedSOPInstanceUID = uid
        if frame is not None:  # a frame of an enhanced multi-frame source
            ref.ReferencedFrameNumber = int(frame)
        ds.SourceImageSequence = [ref]
    ds.ImagePositionPatient = [_ds_str(v) for v in position]
    ds.SliceLocation = _ds_str(float(np.dot(position, normal)))
    if own is not None:  # the source slice's own (tube current, window, lossy, location): none of slice 0's
        for kw in PER_IMAGE_TAGS:
            if _given(own.get(kw)):
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    setattr(ds, kw, own[kw])
            elif kw in TYPE2_TAGS:  # present, empty (a missing AcquisitionNumber is a dciodvfy error)
                setattr(ds, kw, "")
            elif kw in ds and not kw.startswith("Window"):  # a window stays the series' (one is required)
                del ds[kw]
    ds.PixelData = pixels.tobytes()
    return ds


def _declare_padding(header: Any, pad: Any, intercept: float) -> None:
    """PixelPaddingValue (and PixelPaddingRangeLimit) of the source's padding HU range ``pad`` (``(low, high)``,
    or one value), in the new series' stored values; nothing when the range reaches air, which the denoiser writes
    (it would mark tissue), or does not fit int16."""
    if pad is None:
        return
    lo, hi = (float(pad), float(pad)) if np.ndim(pad) == 0 else (float(min(pad)), float(max(pad)))
    stored = int(round(lo - intercept)), int(round(hi - intercept))
    if hi >= LOWEST_WRITTEN_HU or not all(_INT16_MIN <= v <= _INT16_MAX for v in stored):
        return
    header.PixelPaddingValue = stored[0]  # the source's padding, kept where it was
    if stored[1] != stored[0]:
        header.PixelPaddingRangeLimit = stored[1]


def write_dicom_series(
    volume: CTVolume,
    out_dir: str | Path,
    series_description: str,
    derivation: str = "",
) -> list[Path]:
    """Write ``volume`` as a new DERIVED/SECONDARY CT series into an empty (or new) folder.

    ``derivation``: what was done, whole, for the DerivationDescription (up to 1024 characters; default the
    SeriesDescription, which DICOM cuts at 64).

    ``volume.metadata["source_tags"]`` are copied onto every slice (patient, study,
    frame of reference, acquisition). HU are rounded to integers and stored as int16 with RescaleSlope 1 and a
    RescaleIntercept chosen so they fit. Returns the written files in slice order. Never overwrites: a folder that
    already contains anything is refused. On any error every file written so far (a half-written one included)
    and a folder this call created are removed, and the original error is raised.
    """
    import pydicom

    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    stored, intercept = _stored_int16(volume)
    header = _series_header(volume, series_description, derivation)
    header.RescaleIntercept = _ds_str(intercept)
    _declare_padding(header, volume.metadata.get("padding_hu"), intercept)
    direction = np.asarray(volume.direction, dtype=float)
    normal = np.cross(direction[:, 0], direction[:, 1])
    positions = _slice_positions(volume, len(stored))
    numbers = per_slice(volume.metadata, "instance_numbers", len(stored)) or [None] * len(stored)
    uids = per_slice(volume.metadata, "sop_instance_uids", len(stored)) or [""] * len(stored)
    frames = per_slice(volume.metadata, "frame_numbers", len(stored)) or [None] * len(stored)
    own = per_slice(volume.metadata, "slice_tags", len(stored)) or [None] * len(stored)
    if volume.metadata.get("orientation_unknown"):  # positions are made up: the source's SliceLocation contradicts them
        own = [None if o is None else {**o, "SliceLocation": _ds_str(float(np.dot(p, normal)))}
               for o, p in zip(own, positions)]  # fmt: skip
    sop_class = str(volume.metadata.get("sop_class_uid") or "")
    created = [p for p in out_dir.parents if not p.exists()]  # deepest first
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    names = _file_numbers(numbers)
    try:
        with new_folder(out_dir) as tmp:  # the series appears whole or not at all
            for k in range(len(stored)):
                source = (numbers[k], uids[k], frames[k], sop_class)
                ds = _slice_dataset(header, k, positions[k], normal, stored[k], source, own[k])
                pydicom.dcmwrite(tmp / f"IM{names[k]:05d}.dcm", ds, enforce_file_format=True)
    except BaseException:
        _remove_folders(created)
        raise
    return [out_dir / f"IM{n:05d}.dcm" for n in names]


def _file_numbers(numbers: list[Any]) -> list[int]:
    """Each slice's file number: its InstanceNumber when every slice has a distinct positive one (a PACS and a file
    browser then list the files in the same order), else its place along the normal from 1."""
    try:
        values = [int(n) for n in numbers]
    except (TypeError, ValueError):
        values = []
    if values and min(values) > 0 and len(set(values)) == len(values):
        return values
    return list(range(1, len(numbers) + 1))


def _remove_folders(folders: list[Path]) -> None:
    """Best-effort clean-up after a failed write: the (empty) folders it created, deepest first; never masks the
    error that caused it."""
    for folder in folders:
        with contextlib.suppress(OSError):
            folder.rmdir()


def strength_note(remove_sd: float | None, leave_sd: float | None) -> str:
    """", 10 HU SD removed" / ", 4 HU SD left" for a denoising that did not remove all the noise, else ""."""
    return ("" if remove_sd is None else f", {remove_sd:g} HU SD removed") + (
        "" if leave_sd is None else f", {leave_sd:g} HU SD left")  # fmt: skip


def denoised_description(
    source: str, model: str, remove_sd: float | None = None, leave_sd: float | None = None, whole: bool = False
) -> str:
    """SeriesDescription of a denoised series: the source's and the model's names and the noise SD removed (or
    left) when not all, within DICOM LO's 64 characters: "denoised (LIDnet" is never cut off (a PACS would list the
    processed series under the original's name); the source keeps 36 characters, the model's name what is left.
    ``whole``: nothing cut (for the DerivationDescription)."""
    strength = strength_note(remove_sd, leave_sd)
    fixed, source = len(f" denoised (LIDnet {strength})"), source or "CT"
    if whole:
        return f"{source} denoised (LIDnet {model}{strength})"

    def cut(text: str, room: int) -> str:
        return text if len(text) <= room else text[: max(room - 3, 0)] + "..."

    model = cut(model, 64 - fixed - len(cut(source, 36)))
    return f"{cut(source, 64 - fixed - len(model))} denoised (LIDnet {model}{strength})"
