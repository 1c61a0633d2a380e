"""DICOM CT series -> float32 HU volumes with geometry.

Headers are read first (``stop_before_pixels``) to group files by SeriesInstanceUID and sort slices along the
slice normal; pixels are decoded afterwards, one slice at a time, each with its own rescale slope/intercept.
Non-DICOM files in a folder are skipped silently (a file counts as DICOM by its suffix, the "DICM" magic, or the
first element of a data set stored without the Part 10 header); unreadable DICOM files, and series that cannot be
read, are skipped with a warning while another series opens (an error when nothing opens). Sizes are checked from
the headers before any pixel is decoded. Enhanced CT files are read frame by frame from their functional groups;
localizers (ImageType LOCALIZER) are left out with a note.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .checks import NotHU, check_image_shape, one_line
from .dicom_scan import DicomHeader, DicomScan, enhanced, frame_items, n_frames, scan_dicom, scan_files
from .dicom_values import (
    PADDING_HU,
    fill_padding_values,
    header_float,
    header_floats,
    header_rescale,
    padding_hu,
    padding_stored,
    series_rescales,
    stored_values_only,
)
from .volume import CTVolume, n_slices

#: tags copied from the source series onto exported (derived) series
SOURCE_TAGS = (
    "PatientID",
    "IssuerOfPatientID",
    "PatientName",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientPosition",
    "StudyInstanceUID",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "SeriesNumber",  # a derived series is numbered after it (dicom_write.derived_series_number)
    "AccessionNumber",
    "ReferringPhysicianName",
    "FrameOfReferenceUID",
    "PositionReferenceIndicator",
    "Manufacturer",
    "ManufacturerModelName",
    "InstitutionName",
    "BodyPartExamined",
    "KVP",
    "XRayTubeCurrent",
    "Exposure",
    "ExposureTime",
    "ConvolutionKernel",
    "Laterality",
    "DerivationDescription",  # a derived source's history, kept ahead of ours
    "ReconstructionDiameter",
    "AcquisitionDate",
    "AcquisitionNumber",
    "ContrastBolusAgent",
    "ContrastBolusRoute",
    "CTDIvol",
    "GantryDetectorTilt",
    # every display window the scanner stored (the writer sets one of its own only when there were none)
    "WindowCenter",
    "WindowWidth",
    "WindowCenterWidthExplanation",
    # what the pixels may show, and what was removed from the header: a release filter reads these on every copy
    "BurnedInAnnotation",
    "RecognizableVisualFeatures",
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",  # the PS3.15 profile codes DeidentificationMethod refers to
    # once lossy, a derived image stays flagged (PS3.3 C.7.6.1.1.5): carried to every series written from this one
    "LossyImageCompression",
    "LossyImageCompressionRatio",
    "LossyImageCompressionMethod",
)

#: source tags that belong to each image (tube current modulation, a window per slice, a slice compressed lossy):
#: kept slice by slice in ``metadata["slice_tags"]`` when they vary, and written so on derived series
SLICE_TAGS = ("XRayTubeCurrent", "Exposure", "ExposureTime", "CTDIvol", "SliceLocation", "AcquisitionNumber",
              "WindowCenter", "WindowWidth", "LossyImageCompression", "LossyImageCompressionRatio",
              "LossyImageCompressionMethod")  # fmt: skip
#: the compression method a lossy transfer syntax implies (PS3.3 C.7.6.1.1.5.1), for sources that do not say
_LOSSY_METHODS = {"1.2.840.10008.1.2.4.50": "ISO_10918_1", "1.2.840.10008.1.2.4.51": "ISO_10918_1",
                  "1.2.840.10008.1.2.4.81": "ISO_14495_1", "1.2.840.10008.1.2.4.91": "ISO_15444_1",
                  "1.2.840.10008.1.2.4.203": "ISO_15444_1"}  # fmt: skip

_SPACING_RTOL = 0.01  # relative tolerance on slice spacing before warning "uneven"
_TILT_TOL = 1e-3  # tolerance on |cos| between stacking direction and slice normal


def _read_scan(scan: DicomScan, uids: list[str], source: Path) -> list[CTVolume]:
    """Read the series ``uids`` of a scan, largest first (most slices, then most voxels). A series that cannot be
    read is skipped with a warning while another one opens; when none opens, the first error is raised."""
    vols, failed = [], []
    for uid in uids:
        try:
            vols.append(read_series(scan.series[uid], source=source))
        except ValueError as exc:
            failed.append(str(exc))
            continue
        vols[-1].metadata["series_key"] = uid  # what --series takes (a stand-in key when the UID is blank)
    if not vols:
        more = f" (and {len(failed) - 1} other series could not be read)" if len(failed) > 1 else ""
        raise ValueError(failed[0] + more)
    notes = list(scan.notes)
    for msg in failed:
        notes.append(f"skipped a series that cannot be read: {msg}")
        warnings.warn(notes[-1], UserWarning, stacklevel=3)
    for vol in vols:
        vol.metadata["warnings"] = notes + vol.metadata.get("warnings", [])
    return sorted(vols, key=lambda v: (-n_slices(v.hu), -int(np.prod(v.hu.shape[-2:])),  # as list_series orders
                                       v.metadata["series_description"], v.metadata["series_uid"]))  # fmt: skip


def read_dicom(path: str | Path, series_uid: str | None = None) -> list[CTVolume]:
    """Read every image series (or only ``series_uid``) under a DICOM file or folder as CTVolumes.

    Files or series that cannot be read are skipped with a warning (also in each volume's
    ``metadata["warnings"]``) as long as another series opens.
    """
    scan = scan_dicom(path)
    uids = list(scan.series)
    if series_uid is not None:
        if series_uid not in scan.series:
            found = ", ".join(uids)
            raise ValueError(f"{path}: no series with SeriesInstanceUID {series_uid} (found: {found})")
        uids = [series_uid]
    return _read_scan(scan, uids, Path(path))


def read_dicom_files(files: Sequence[str | Path]) -> list[CTVolume]:
    """Read an explicit list of DICOM files, grouped by series (unreadable files skipped with a warning)."""
    scan = scan_files(files)
    for note in scan.notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    return _read_scan(scan, list(scan.series), scan.root)


# ----------------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    """pydicom value -> JSON-friendly Python value."""
    from pydicom.multival import MultiValue
    from pydicom.sequence import Sequence

    if isinstance(value, Sequence):  # a code sequence: its items' elements by keyword (pydicom's again on writing)
        return [{e.keyword: _plain(e.value) for e in item if e.keyword} for item in value]
    if isinstance(value, MultiValue | list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


#: value representations that an empty string writes back as it was read (text, dates, numbers as text)
_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"}


def _source_tags(ds: Any, keywords: Sequence[str] = SOURCE_TAGS) -> dict[str, Any]:
    """The source's ``keywords`` it holds; an empty text one as "" (a Type 2 element stays present, if empty),
    an empty binary one (FD, US, ...) left out."""
    tags = {}
    for kw in (kw for kw in keywords if kw in ds):
        if ds.get(kw) not in (None, ""):
            tags[kw] = _plain(ds.get(kw))
        elif ds.data_element(kw).VR in _TEXT_VRS:
            tags[kw] = ""
    tsyntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    if tags.get("LossyImageCompression") == "01" and not tags.get("LossyImageCompressionMethod"):
        if tsyntax in _LOSSY_METHODS:
            tags["LossyImageCompressionMethod"] = _LOSSY_METHODS[tsyntax]
    return tags


def _sop_uid(ds: Any, key: str) -> str:
    """The slice's ``SOPInstanceUID`` / ``SOPClassUID`` ('' when blank). Not the file meta's copy: where an
    anonymiser blanked the dataset's, that copy may still be the original, identifying UID; what is
    written from such a slice references no source image instead (``dicom_sr.write_sr``)."""
    return str(ds.get(key, "") or "").strip()


def _slice_tags(headers: list[DicomHeader]) -> list[dict[str, Any]] | None:
    """Each slice's ``SLICE_TAGS`` (as ``_source_tags`` reads them), when some differ from the first slice's, or
    for a single slice (its SliceLocation is the scanner's, not one worked out from its position)."""
    per = [_source_tags(h.ds, SLICE_TAGS) for h in headers]
    return per if len(per) == 1 or any(p != per[0] for p in per[1:]) else None


def _pixel_error(f: Path, tsyntax: Any, exc: Exception) -> str:
    """One line saying why the pixels of ``f`` cannot be decoded."""
    detail = one_line(str(exc))[:400]
    if isinstance(exc, OSError) and exc.errno is not None:  # the file, not its content: gone, no permission, I/O
        return f"{f}: cannot be read ({exc.strerror or detail})"
    if tsyntax is not None and not tsyntax.is_transfer_syntax:
        return f"{f}: unknown transfer syntax {tsyntax}; cannot decode its pixel data"
    if tsyntax is not None and tsyntax.is_compressed:
        return (
            f"{f}: cannot decode pixel data in transfer syntax '{tsyntax.name}' ({tsyntax}); "
            f"no installed decoder handles it ({type(exc).__name__}: {detail})"
        )
    return f"{f}: pixel data cannot be read, the file may be truncated ({detail})"


def _read_pixels(f: Path) -> tuple[Any, np.ndarray]:
    """(dataset, stored values (frames, rows, cols)) of one file, after the checks that need no decoding."""
    import pydicom

    try:
        ds = pydicom.dcmread(f, force=True, defer_size="16 MB")  # pixels read only after the size check
    except Exception as exc:
        raise ValueError(f"{f}: unreadable DICOM file ({type(exc).__name__}: {one_line(str(exc))})") from exc
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise ValueError(f"{f}: DICOM file has no PixelData element (header only, or truncated)")
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise ValueError(
            f"{f}: {ds.get('PhotometricInterpretation', 'colour')} image with {ds.SamplesPerPixel} "
            "samples per pixel is not a grayscale CT image"
        )
    rows, cols, frames = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0), n_frames(ds)
    check_image_shape((frames, rows, cols) if frames > 1 else (rows, cols), np.float32, str(f))  # before decoding
    _raw_transfer_syntax(ds)
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        raw = ds.pixel_array
    except Exception as exc:
        raise ValueError(_pixel_error(f, tsyntax, exc)) from exc
    return ds, raw.reshape((-1, *raw.shape[-2:]))


def _raw_transfer_syntax(ds: Any) -> None:
    """A file without the Part 10 header has no TransferSyntaxUID: take it from the encoding pydicom read."""
    from pydicom import uid
    from pydicom.dataset import FileMetaDataset

    meta = getattr(ds, "file_meta", None)
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit, little = ds.original_encoding
        meta.TransferSyntaxUID = (uid.ImplicitVRLittleEndian if implicit else
                                  uid.ExplicitVRLittleEndian if little else uid.ExplicitVRBigEndian)  # fmt: skip


def _frame_rescale(ds: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(slope, intercept) per frame: an enhanced image's functional groups (the frame's own, else the shared), else
    the top-level RescaleSlope/Intercept."""
    slopes, intercepts, is_enhanced = np.ones(n), np.zeros(n), enhanced(ds)
    for i in range(n):
        items = frame_items(ds, i, "PixelValueTransformationSequence") if is_enhanced else []
        slopes[i], intercepts[i] = header_rescale(items[-1] if items else ds) or (1.0, 0.0)
    return slopes, intercepts


def decode_pixels(header: DicomHeader) -> np.ndarray:
    """Decode one file's pixels (frames, rows, cols) as float32 HU, each frame with its own rescale (and its
    PixelPaddingValue filled as ``_decode_series`` fills it)."""
    ds, raw = _read_pixels(header.path)
    slopes, intercepts = _frame_rescale(ds, len(raw))
    pad = padding_stored(ds)
    hu = np.empty(raw.shape, np.float32)
    for i in range(len(hu)):  # frame by frame: no float64 copy of a whole multi-frame file
        _frame_hu(hu[i], raw[i], (slopes[i], intercepts[i]), pad)
    return hu


def _frame_hu(out: np.ndarray, stored: np.ndarray, rescale: tuple[float, float], pad: tuple | None) -> int:
    """Fill ``out`` with one frame's HU (float64 arithmetic, float32 result) and its padding
    (``dicom_values.fill_padding_values``); returns the number of padding pixels set."""
    out[...] = stored.astype(np.float64) * rescale[0] + rescale[1]
    return fill_padding_values(out, stored, pad, rescale) if pad is not None else 0


def _decode_series(headers: list[DicomHeader], rescales: list[tuple[float, float]], notes: list[str],
                   label: str) -> np.ndarray:  # fmt: skip
    """The pixels of sorted headers as (slices, rows, cols) HU, each with its own (slope, intercept): each file
    decoded once, a frame header taking its own frame; PixelPaddingValue that would read as tissue or above set to
    a padding fill (``dicom_values.fill_padding_values``)."""
    files: dict[Path, tuple[Any, np.ndarray]] = {}
    uses = Counter(h.path for h in headers)  # a file's pixels are let go after its last header
    n_out = sum(1 if h.frame is not None else n_frames(h.ds) for h in headers)
    out = np.empty((n_out, int(headers[0].ds.Rows), int(headers[0].ds.Columns)), np.float32)
    k, padded, said = 0, 0, None
    for h, rescale in zip(headers, rescales):
        if h.path not in files:
            files[h.path] = _read_pixels(h.path)
        ds, raw = files[h.path]
        stored = raw if h.frame is None else raw[h.frame : h.frame + 1]
        if k + len(stored) > n_out:
            raise ValueError(f"{label}: {h.path.name} holds more frames than its header says")
        pad = padding_stored(ds)
        for frame in stored:  # frame by frame: no float64 copy of a whole multi-frame file
            n_pad = _frame_hu(out[k], frame, rescale, pad)
            padded, said = padded + n_pad, said or (pad[0] * rescale[0] + rescale[1] if n_pad else None)
            k += 1
        uses[h.path] -= 1
        if not uses[h.path]:
            del files[h.path]
    if padded:
        _warn(notes, f"{label}: {padded} pixels of PixelPaddingValue (outside the field of view) would read as "
                     f"{said:.0f} HU; set to {PADDING_HU:.0f} HU")  # fmt: skip
    return out[:k]


def _warn(msgs: list[str], msg: str) -> None:
    msgs.append(msg)
    warnings.warn(msg, UserWarning, stacklevel=3)


def _warn_lossy(headers: list[DicomHeader], notes: list[str], label: str) -> None:
    """A note when a slice says it was lossy compressed (LossyImageCompression 01), with its method and ratio."""
    lossy = [h.ds for h in headers if str(h.ds.get("LossyImageCompression", "") or "") == "01"]
    if not lossy:
        return
    parts = []
    for kw in ("LossyImageCompressionMethod", "LossyImageCompressionRatio"):  # multi-valued: the last step
        value = _plain(lossy[0].get(kw)) if kw in lossy[0] else None
        value = value[-1] if isinstance(value, list) and value else value
        if value not in (None, ""):
            parts.append(f"{float(value):.0f}:1" if kw.endswith("Ratio") else str(value))
    how = ", ".join(parts) or "LossyImageCompression 01"
    _warn(notes, f"{label}: lossy compressed ({how}): the codec smoothed the image, so noise measures and "
                 "denoising see its artefacts, not the scanner's noise")  # fmt: skip


def _series_label(ds0: Any) -> str:
    return series_label(str(ds0.get("SeriesDescription", "") or ""), str(ds0.get("SeriesInstanceUID", "")))


def series_label(description: str, uid: str) -> str:
    """How the reader's messages name a series: "series 'DESC' (UID)", or "series UID" without a description."""
    return f"series {description!r} ({uid})" if description else f"series {uid}"


def _check_grid(headers: list[DicomHeader], label: str) -> None:
    """Refuse a series whose images differ in rows x cols or in pixel spacing (a second reconstruction that kept
    the UID), naming a few files of each."""
    for what, key in (("image sizes (rows x cols)", lambda ds: f"{int(ds.Rows)}x{int(ds.Columns)}"),
                      ("pixel spacings (mm)", _spacing_text)):  # fmt: skip
        keys = [key(h.ds) for h in headers]
        if len(set(keys)) > 1:
            parts = []
            for k in sorted(set(keys)):
                names = list(dict.fromkeys(h.path.name for h, kk in zip(headers, keys) if kk == k))
                parts.append(f"{k}: {', '.join(names[:3])}{'...' if len(names) > 3 else ''}")
            raise ValueError(f"{label} mixes {what} and cannot be stacked: {'; '.join(parts)}")


def _grid_key(ds: Any) -> tuple[tuple, np.ndarray | None]:
    """What every image of one volume shares: (rows, columns, pixel spacing), and its orientation (or None)."""
    return (int(ds.Rows), int(ds.Columns), _spacing_text(ds)), header_floats(ds.get("ImageOrientationPatient"), 6)


def _same_orientation(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Both absent, or equal to ``ORIENTATION_TOLERANCE`` (``_orientation``'s)."""
    if a is None or b is None:
        return a is None and b is None
    return bool(np.allclose(a, b, atol=ORIENTATION_TOLERANCE))


def _odd_ones_out(headers: list[DicomHeader], notes: list[str], label: str) -> list[DicomHeader]:
    """The series without a few images that differ from all the others in size, pixel spacing or orientation (a
    scout or a screen capture filed in the axial series): at most one in ten (one in a series of 4-19), left out
    with a note naming them; a larger mix is left to the checks after, which refuse it."""
    if len(headers) < 4:
        return headers
    keys = [_grid_key(h.ds) for h in headers]
    coarse = [(size, None if iop is None else tuple(np.round(iop, 1))) for size, iop in keys]  # grouping only
    size, iop = keys[coarse.index(Counter(coarse).most_common(1)[0][0])]
    inside = [s == size and _same_orientation(o, iop) for s, o in keys]
    odd, n_main = [h.path.name for h, ok in zip(headers, inside) if not ok], sum(inside)
    if not odd or len(odd) > max(1, len(headers) // 10):
        return headers
    names = ", ".join(odd[:3]) + (", ..." if len(odd) > 3 else "")
    _warn(notes, f"{label}: left out {len(odd)} image{'s' if len(odd) > 1 else ''} whose size, pixel spacing or "
                 f"orientation differ from the other {n_main} ({names})")  # fmt: skip
    return [h for h, ok in zip(headers, inside) if ok]


def _spacing_text(ds: Any) -> str:
    """PixelSpacing to 0.1 micrometre ('none' when absent), for comparing slices."""
    ps = header_floats(ds.get("PixelSpacing"), 2)
    return "none" if ps is None else "x".join(f"{v:.4f}" for v in ps)


#: direction cosines of one series' slices may differ by this much (0.06 deg: a workstation's re-export writes its
#: orientation with float noise; 1e-4, 0.006 deg, refused such a series whole)
ORIENTATION_TOLERANCE = 1e-3


def _orientation(headers: list[DicomHeader], label: str) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """(ImageOrientationPatient or None, row cosines, column cosines); refuses mixed orientations."""
    iop = header_floats(headers[0].ds.get("ImageOrientationPatient"), 6)
    if iop is None:
        return None, np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    for h in headers[1:]:
        other = header_floats(h.ds.get("ImageOrientationPatient"), 6)
        if not _same_orientation(other, iop):
            found = "none" if other is None else " ".join(f"{v:.4g}" for v in other)
            raise ValueError(f"{label} mixes slice orientations ({headers[0].path.name}: "
                             f"{' '.join(f'{v:.4g}' for v in iop)}; {h.path.name}: {found}); cannot stack one volume")
    return iop, iop[:3], iop[3:]


def _sorted_slices(
    headers: list[DicomHeader], normal: np.ndarray | None, notes: list[str], label: str
) -> tuple[list[DicomHeader], np.ndarray | None]:
    """Headers sorted along the slice normal (by InstanceNumber without positions), and their positions."""
    positions = [header_floats(h.ds.get("ImagePositionPatient"), 3) for h in headers]
    placed = [i for i, p in enumerate(positions) if p is not None]
    if normal is not None and placed and (len(placed) == len(headers) or len(placed) >= max(2, len(headers) / 2)):
        if len(placed) < len(headers):  # a few slices cannot be placed: left out, not stacked by guess
            lost = [h.path.name for h, p in zip(headers, positions) if p is None]
            _warn(notes, f"{label}: left out {len(lost)} of {len(headers)} slices without a readable "
                         f"ImagePositionPatient ({', '.join(lost[:3])}{', ...' if len(lost) > 3 else ''})")  # fmt: skip
        order = sorted(placed, key=lambda i: float(np.dot(positions[i], normal)))
        return [headers[i] for i in order], np.array([positions[i] for i in order])
    if len(headers) > 1:
        have = "orientation" if normal is None else f"position on {len(headers) - len(placed)} of {len(headers)}"
        _warn(notes, f"{label}: slices lack ImagePositionPatient/Orientation ({have}); sorted by InstanceNumber")
    order = np.argsort([instance_number(h.ds) or 0 for h in headers], kind="stable")
    return [headers[i] for i in order], None


#: slice positions written to 0.1 mm and within this of an even stack are one (0.05 mm of rounding in each position
#: and in the stack's ends)
ROUNDED_MM = 0.1 + 1e-3


def written_to_tenth_mm(positions: np.ndarray) -> bool:
    """Whether every coordinate of the slice positions is a multiple of 0.1 mm (a scanner that rounds them so)."""
    pos = np.asarray(positions, dtype=float)
    return bool(np.allclose(pos * 10, np.rint(pos * 10), atol=1e-3))


def _slice_axis(
    headers: list[DicomHeader], pos: np.ndarray | None, normal: np.ndarray, notes: list[str], label: str
) -> tuple[np.ndarray, float | None]:
    """(stacking direction, median slice spacing or None); refuses duplicated positions, warns of uneven spacing
    and of gantry tilt."""
    if pos is None or len(pos) < 2:
        return normal, None
    dists = np.linalg.norm(np.diff(pos, axis=0), axis=1)
    if np.any(dists < 1e-4):
        dup = [headers[i + 1].path.name for i in np.flatnonzero(dists < 1e-4)]
        raise ValueError(f"{label} has several slices at the same position ({', '.join(dup[:5])})")
    dz = float(np.median(dists))
    total = pos[-1] - pos[0]
    stack_dir = total / np.linalg.norm(total)
    mean = float(np.linalg.norm(total)) / (len(pos) - 1)
    even = pos[0] + np.arange(len(pos))[:, None] * mean * stack_dir
    if written_to_tenth_mm(pos) and float(np.max(np.linalg.norm(pos - even, axis=1))) <= min(ROUNDED_MM, 0.25 * mean):
        dz = mean  # positions written to 0.1 mm: 0.625 mm slices read 0.6 by the median, 4% short, "uneven"
    elif np.max(np.abs(dists - dz)) > _SPACING_RTOL * dz + 1e-3:
        grid = pos[0] + np.arange(len(pos))[:, None] * dz * stack_dir
        off = float(np.max(np.linalg.norm(pos - grid, axis=1)))
        _warn(
            notes,
            f"{label}: uneven slice spacing ({dists.min():.3f} to {dists.max():.3f} mm, median {dz:.3f} mm); the "
            f"viewer stacks the slices on the median, so its positions are up to {off:.1f} mm off beyond a gap "
            "(the navigator, box exports and DICOM outputs use each slice's own position)",
        )
    cos = abs(float(np.dot(stack_dir, normal)))
    if cos >= 1 - _TILT_TOL:
        return normal, dz
    _warn(
        notes,
        f"{label}: gantry tilt of {np.degrees(np.arccos(min(1.0, cos))):.2f} deg "
        "(slices not stacked along their normal)",
    )
    return stack_dir, dz


def _windows(ds: Any) -> list[list[Any]]:
    """Every display window the scan stores, [level, width, explanation] (a reader picks among them as at a
    console: an abdomen may store 40/300 and 300/1500); the valid ones, in their order."""
    def values(kw: str) -> list[Any]:
        v = ds.get(kw)
        return list(v) if isinstance(v, Sequence) and not isinstance(v, str) else ([] if v in (None, "") else [v])

    out = []
    names = values("WindowCenterWidthExplanation")
    for k, (c, w) in enumerate(zip(values("WindowCenter"), values("WindowWidth"))):
        try:
            level, width = float(c), float(w)
        except (TypeError, ValueError):
            continue
        if np.isfinite([level, width]).all() and width > 0:
            out.append([level, width, str(names[k]).strip() if k < len(names) else ""])
    return out


def instance_number(ds: Any) -> int | None:
    """A header's InstanceNumber as an int; None when missing or malformed (text such as 'x1', a fraction, too
    large): a bad value counts as missing, as other header numbers do."""
    value = header_float(ds.get("InstanceNumber"))
    return int(value) if value is not None and value.is_integer() and abs(value) < 2**31 else None


def _slice_ids(headers: list[DicomHeader]) -> dict[str, list]:
    """Per-slice identifiers a reader needs to find a slice on the scanner or in PACS (one file per slice, or one
    frame of an enhanced file: its 1-based frame number)."""
    frames = [None if h.frame is None else h.frame + 1 for h in headers]
    if any(frames) and len({h.path for h in headers}) > 1:  # frames of several files: number them in slice order
        numbers = list(range(1, len(headers) + 1))
    else:  # a frame's image number is its frame number, as viewers show "frame k of N"
        numbers = [f or instance_number(h.ds) or None for h, f in zip(headers, frames)]
    ids = {
        "instance_numbers": numbers,
        "sop_instance_uids": [_sop_uid(h.ds, "SOPInstanceUID") for h in headers],
    }
    if any(frames):
        ids["frame_numbers"] = frames
    return ids


def _series_metadata(
    headers: list[DicomHeader], source: Path | None, notes: list[str], pos: np.ndarray | None
) -> dict[str, Any]:
    ds0 = headers[0].ds
    first = None if pos is None else pos[0]
    windows = _windows(ds0)
    return {
        "format": "dicom",
        "source": str(source if source is not None else headers[0].path),
        "series_uid": str(ds0.get("SeriesInstanceUID", "")),
        "sop_class_uid": _sop_uid(ds0, "SOPClassUID"),
        "series_description": str(ds0.get("SeriesDescription", "") or ""),
        "modality": str(ds0.get("Modality", "") or ""),
        "written_here": written_here(ds0),  # a series this program denoised: denoising it again removes more
        "files": [str(h.path) for h in headers],
        "source_tags": _source_tags(ds0),
        "slice_tags": _slice_tags(headers),
        "warnings": notes,
        "slice_thickness": header_float(ds0.get("SliceThickness")) or None,
        "image_position_patient": None if first is None else [float(v) for v in first],
        "window": windows[0][:2] if windows else None,  # the scan's own: the first valid one it stores
        "windows": windows,
        "slice_ipp": None if pos is None else pos.astype(float).tolist(),  # each slice's own (gaps included)
        **_slice_ids(headers),
    }


def written_here(ds: Any) -> bool:
    """Whether a DICOM slice was written by napari-lidnet (its Contributing Equipment names it)."""
    equipment = ds.get("ContributingEquipmentSequence", [])
    return any(str(item.get("Manufacturer", "")) == "napari-lidnet" for item in equipment)


def _spacing_without_positions(ds0: Any, n_images: int, notes: list[str], label: str) -> float:
    """The slice spacing of a series or multi-frame file whose slices have no positions: SpacingBetweenSlices (some
    vendors sign it; a size is its magnitude), else SliceThickness, else 1 mm; said when there is more than one."""
    between = abs(header_float(ds0.get("SpacingBetweenSlices")) or 0.0)
    thickness = header_float(ds0.get("SliceThickness")) or 0.0
    dz, source = (between, "SpacingBetweenSlices") if between else (thickness, "SliceThickness") if thickness else (
        1.0, "assumed")  # fmt: skip
    if n_images > 1:
        _warn(notes, f"{label}: no slice positions; slices stacked {dz:g} mm apart ({source})")
    return dz


def _pixel_spacing(ds0: Any, notes: list[str], label: str) -> np.ndarray | None:
    """The (row, column) PixelSpacing in mm, or None (1 mm assumed, said) when it is missing or not a pixel size (a
    size of 0 broke every mm later on)."""
    ps = header_floats(ds0.get("PixelSpacing"), 2)
    if ps is not None and not (np.all(np.isfinite(ps)) and np.all(ps > 0)):
        _warn(notes, f"{label}: PixelSpacing {ps[0]:g} x {ps[1]:g} mm is not a pixel size; assuming 1 mm pixels")
        return None
    if ps is None:
        imager = header_floats(ds0.get("ImagerPixelSpacing"), 2)
        at_detector = (f" (its ImagerPixelSpacing {imager[0]:g} x {imager[1]:g} mm is at the detector, not in the "
                       "patient: not used)") if imager is not None else ""  # fmt: skip
        _warn(notes, f"{label}: no PixelSpacing; assuming 1 mm pixels{at_detector}")
    return ps


def read_series(headers: Iterable[DicomHeader], source: Path | None = None) -> CTVolume:
    """Sort the headers of one series along the slice normal and decode them into a CTVolume."""
    headers = list(headers)
    label = _series_label(headers[0].ds)
    notes: list[str] = []
    headers = _odd_ones_out(headers, notes, label)
    ds0 = headers[0].ds  # after the odd ones are out: a scout's spacing is not the volume's
    _check_grid(headers, label)
    n_images = sum(n_frames(h.ds) for h in headers)
    shape = (int(ds0.Rows), int(ds0.Columns))
    check_image_shape((n_images, *shape) if n_images > 1 else shape, np.float32, label)
    modality = str(ds0.get("Modality", "") or "")
    if int(ds0.get("BitsAllocated", 16) or 16) <= 8:  # as an 8-bit NIfTI or array is refused (a batch leaves it out)
        raise NotHU(label, "8-bit pixels cannot hold HU (-1024..3071); a label map or display image?")
    if modality != "CT":
        _warn(notes, f"{label}: modality is {modality or 'missing'!r}, not 'CT'; HU values may not be meaningful")
    headers, pos, row_cos, col_cos = _ordered(headers, notes, label)
    normal = np.cross(row_cos, col_cos)
    ps = _pixel_spacing(ds0, notes, label)
    stack_dir, dz = _slice_axis(headers, pos, normal, notes, label)
    tilt_tag = header_float(ds0.get("GantryDetectorTilt")) or 0.0
    if tilt_tag != 0 and not any("gantry tilt" in n for n in notes):
        _warn(notes, f"{label}: GantryDetectorTilt is {tilt_tag} deg")
    _warn_lossy(headers, notes, label)
    metadata = _series_metadata(headers, source, notes, pos)
    metadata["spacing_assumed"] = ps is None
    ps = np.array([1.0, 1.0]) if ps is None else ps
    # no positions or orientation: the geometry is made up (axial, from 0), and exports say so (otherwise a
    # derived series states it as the patient's, and its boxes have lps_* columns)
    no_iop = header_floats(headers[0].ds.get("ImageOrientationPatient"), 6) is None
    metadata["orientation_unknown"] = pos is None or no_iop
    if dz is None:
        dz = _spacing_without_positions(ds0, n_images, notes, label)
    rescale_type = str(ds0.get("RescaleType", "") or "").strip()
    if rescale_type and rescale_type.upper() != "HU":
        _warn(notes, f"{label}: RescaleType is {rescale_type!r}, not 'HU'; values are read as HU")
    rescales, rescale_notes = series_rescales([h.ds for h in headers], label)
    for note in rescale_notes:
        _warn(notes, note)
    hu = _decode_series(headers, rescales, notes, label)
    metadata["padding_hu"] = padding_hu(ds0, rescales[0])  # written back as PixelPaddingValue on derived series
    if modality == "CT" and stored_values_only([h.ds for h in headers], hu):
        _warn(notes, f"{label}: no RescaleIntercept and no pixel below 0 HU (air is -1000): stored values without "
                     "their rescale, or a display image? The models need HU")  # fmt: skip
    if hu.shape[0] > len(headers) and len(headers) > 1:
        raise ValueError(f"{label} mixes multi-frame files with other files; read them one at a time")
    direction = np.stack([row_cos, col_cos, stack_dir], axis=1)
    first = None if pos is None else pos[0]
    name = metadata["series_description"] or f"{modality or 'CT'} {metadata['series_uid'][-8:]}"
    if hu.shape[0] == 1:
        origin2 = (float(first[1]), float(first[0])) if first is not None else None
        return CTVolume(hu[0], (float(ps[0]), float(ps[1])), origin2, direction, name=name, metadata=metadata)
    origin = (float(first[2]), float(first[1]), float(first[0])) if first is not None else None
    return CTVolume(hu, (dz, float(ps[0]), float(ps[1])), origin, direction, name=name, metadata=metadata)


def order_series(headers: list[DicomHeader]) -> tuple[list[DicomHeader], list[str]]:
    """The headers of one series as ``read_series`` stacks them (a scout among them left out, sorted along the
    slice normal, by InstanceNumber without positions) and the notes said on the way; ValueError for a series that
    mixes orientations. Headers only: nothing is decoded."""
    label = _series_label(headers[0].ds)
    notes: list[str] = []
    ordered, *_ = _ordered(_odd_ones_out(list(headers), notes, label), notes, label)
    return ordered, notes


def _ordered(headers: list[DicomHeader], notes: list[str], label: str) -> tuple[list, Any, np.ndarray, np.ndarray]:
    """(headers sorted along the slice normal, their positions or None, row and column direction cosines): the one
    ordering ``read_series`` stacks by and ``order_series`` reports (ValueError for mixed orientations)."""
    iop, row_cos, col_cos = _orientation(headers, label)
    ordered, pos = _sorted_slices(headers, None if iop is None else np.cross(row_cos, col_cos), notes, label)
    return ordered, pos, row_cos, col_cos
