"""DICOM headers: which files of a file or folder (or DICOMDIR) are DICOM images, grouped by series and ordered,
without decoding a pixel (``stop_before_pixels``). Non-DICOM files are skipped silently (a file counts as DICOM by
its suffix, the "DICM" magic, or the first element of a data set stored without the Part 10 header); unreadable
DICOM files are noted. Enhanced CT files give one header per frame (functional groups); localizers (ImageType
LOCALIZER) are left out with a note. ``dicom_read`` turns a series' headers into a volume.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .checks import one_line
from .dicom_values import (
    header_floats,
)
from .dicomdir import DICOMDIR_SOP_CLASS, dicomdir_files, is_dicomdir
from .nifti import is_nifti

DICOM_SUFFIXES = {".dcm", ".dicom", ".ima"}
#: the start of the series key a file without SeriesInstanceUID gets (``_stand_in_uid``)
NO_UID = "no-series-uid:"

@dataclass
class SeriesInfo:
    """One DICOM image series found under a path (for pickers)."""

    uid: str
    description: str
    modality: str
    n_slices: int
    rows: int
    cols: int

    def label(self) -> str:
        """Short human-readable line for a combo box, starting with the name its layer gets (the description, else
        modality and the UID's tail, as ``dicom_read`` names it); a series without a UID says so and where it is."""
        size = f"[{self.modality}, {self.n_slices} x {self.rows} x {self.cols}]"
        if self.uid.startswith(NO_UID):
            folder = self.uid[len(NO_UID) :].split(":", 1)[0]
            return f"{self.description or self.modality or 'CT'} {size} (no series UID; in {folder or '.'})"
        if not self.description:
            return f"{self.modality or 'CT'} {self.uid[-8:]} {size}"
        return f"{self.description} {size} ...{self.uid[-8:]}"


@dataclass
class DicomHeader:
    """One DICOM image file and its header read without pixels (``ds`` None: not read yet)."""

    path: Path
    ds: Any  # pydicom Dataset without pixels
    frame: int | None = None  # 0-based frame of an enhanced multi-frame file (ds: that frame's own attributes)


@dataclass
class DicomScan:
    """Result of scanning a path: image headers grouped by series, files skipped and unreadable on the way."""

    root: Path
    series: dict[str, list[DicomHeader]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # warnings about the scan (files skipped, duplicates)


def _has_dicm_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


#: the first elements of a data set stored without the Part 10 header (older archives, ACR-NEMA era exports):
#: (group, element) little endian, as they start such files
_RAW_FIRST = {(0x0002, 0x0000), (0x0002, 0x0001), (0x0008, 0x0000), (0x0008, 0x0001), (0x0008, 0x0005),
              (0x0008, 0x0008), (0x0008, 0x0012), (0x0008, 0x0016), (0x0008, 0x0018)}  # fmt: skip
_VRS = {b"UL", b"OB", b"CS", b"DA", b"TM", b"UI", b"SH", b"LO", b"US"}


def _has_raw_start(path: Path) -> bool:
    """A DICOM data set without the Part 10 preamble: the file starts with one of its usual first tags, followed by
    an explicit VR or a short implicit length (8 bytes read; a random file rarely passes both)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return False
    if len(head) < 8 or (int.from_bytes(head[:2], "little"), int.from_bytes(head[2:4], "little")) not in _RAW_FIRST:
        return False
    return head[4:6] in _VRS or int.from_bytes(head[4:8], "little") <= 256


def folder_files(folder: Path) -> list[Path]:
    """Every file under ``folder`` (recursive, sorted), following linked folders (a curated archive of links into
    storage) but entering each real folder once, so a link back up never loops; paths stay under ``folder``. Hidden
    folders are not entered (a killed write's half-written series lies in one)."""
    files, visited = [], set()
    for top, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(top)
        if real in visited:
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # hidden: a killed write's half series, .git...
        files.extend(p for p in (Path(top) / n for n in names) if p.is_file())
    return sorted(files)


def _candidate_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return [p for p in folder_files(path) if not p.name.startswith(".") and not is_nifti(p)]


def looks_like_dicom(path: str | Path) -> bool:
    """Cheap test: DICM magic at byte 128, a DICOM file suffix, or a raw dataset's first tag."""
    path = Path(path)
    return path.is_file() and (path.suffix.lower() in DICOM_SUFFIXES or _has_dicm_magic(path) or _has_raw_start(path))


def _scan_file(scan: DicomScan, f: Path, in_folder: bool, seen: dict[str, list[tuple[Path, tuple]]]) -> None:
    """Add one file's header to ``scan``: an image to its series, anything else to skipped or unreadable."""
    import pydicom

    magic = _has_dicm_magic(f)
    if not magic and f.suffix.lower() not in DICOM_SUFFIXES and in_folder and not _has_raw_start(f):
        return  # not DICOM: skip silently (README, thumbnails, ...)
    try:
        ds = pydicom.dcmread(f, stop_before_pixels=True, force=not magic)
    except Exception as exc:  # pydicom raises many types on broken files
        scan.unreadable.append((f, f"{type(exc).__name__}: {one_line(str(exc))}"))
        return
    sop_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    if f.name.upper() == "DICOMDIR" or sop_class == DICOMDIR_SOP_CLASS:
        scan.skipped.append(f"{f} (DICOMDIR)")
        return
    if "Rows" not in ds or "Columns" not in ds:
        if not any(k in ds for k in ("SOPClassUID", "SeriesInstanceUID", "Modality")):
            scan.unreadable.append((f, "no DICOM image header: truncated, or not a DICOM file"))
        else:
            scan.skipped.append(f"{f} (no image: {ds.get('Modality', '?')} {ds.get('SOPClassUID', '')})")
        return
    if "LOCALIZER" in [str(v).upper() for v in _values(ds.get("ImageType"))]:
        scan.skipped.append(f"{f} (localizer)")
        return
    screen = _screen_capture(ds, sop_class)
    if screen:  # otherwise an exam's colour dose screen fails every --all-series run
        scan.skipped.append(f"{f} ({screen})")
        return
    sop = str(ds.get("SOPInstanceUID", "") or "")
    same = _image_key(ds)
    earlier = seen.setdefault(sop, []) if sop else []
    copy_of = next((p for p, key in earlier if key == same), None)
    if copy_of is not None:
        scan.notes.append(f"{f} is a copy of {copy_of} (same SOPInstanceUID and position); read once")
        scan.skipped.append(f"{f} (duplicate of {copy_of.name})")
        return
    if earlier:  # one UID on different images: a broken anonymiser, not a copy
        scan.notes.append(f"{f} and {earlier[0][0]} share a SOPInstanceUID but are different images; both read")
    earlier.append((f, same))
    uid = str(ds.get("SeriesInstanceUID", "") or _stand_in_uid(ds, f, scan.root))
    scan.series.setdefault(uid, []).extend(frame_headers(f, ds) if enhanced(ds) else [DicomHeader(f, ds)])


#: Secondary Capture image storage SOP classes (single- and multi-frame): screens, scanned documents
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: how a skipped screen capture's reason ends (the notes and the refusal find them by it)
SCREEN = "a screen capture, not CT"


def _screen_capture(ds: Any, meta_sop_class: str) -> str:
    """Why an image is a screen capture rather than a CT reconstruction ('' when it is not): a colour image, or a
    secondary capture with no rescale to HU (display values: an exam's dose screen or protocol page)."""
    try:
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (TypeError, ValueError):
        samples = 1
    if samples != 1:
        return f"colour image, {samples} samples per pixel: {SCREEN}"
    sop_class = str(ds.get("SOPClassUID", "") or meta_sop_class)
    if not sop_class.startswith(SECONDARY_CAPTURE) or "RescaleIntercept" in ds:
        return ""
    try:
        bits = int(ds.get("BitsAllocated", 16) or 16)
    except (TypeError, ValueError):
        bits = 16
    placed = "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds
    if bits <= 8 or not placed:  # a workstation's 16-bit HU export with its geometry is a CT reconstruction
        return f"an 8-bit or unplaced secondary capture without a rescale to HU: {SCREEN}"
    return ""


def _image_key(ds: Any) -> tuple:
    """What makes two files with one SOPInstanceUID the same image: position, number, size and frames."""
    return (str(ds.get("ImagePositionPatient", "")), str(ds.get("InstanceNumber", "")), ds.get("Rows"),
            ds.get("Columns"), n_frames(ds))  # fmt: skip


def is_derived(ds: Any) -> bool:
    """True when a DICOM image says it is DERIVED (ImageType value 1): a reconstruction, reformat or processed
    copy (another program's denoising, or this one's), not the scanner's original image."""
    kinds = _values(ds.get("ImageType"))
    return bool(kinds) and str(kinds[0]).strip().upper() == "DERIVED"


def _values(value: Any) -> list:
    """A DICOM value as a list (a single value, a multi-value, or nothing)."""
    if value is None:
        return []
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]


#: functional-group macros (PS3.3 C.7.6.16) whose attributes each frame of an enhanced image takes as its own
FRAME_MACROS = ("PixelMeasuresSequence", "PlanePositionSequence", "PlaneOrientationSequence",
                "PixelValueTransformationSequence", "FrameVOILUTSequence")  # fmt: skip
_GROUPS = ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")


def enhanced(ds: Any) -> bool:
    """An enhanced image (Enhanced CT, Legacy Converted Enhanced CT; one frame or many): geometry and rescale in
    functional groups."""
    return any(key in ds for key in _GROUPS)


def frame_items(ds: Any, i: int, macro: str) -> list[Any]:
    """The items of functional-group ``macro`` for frame ``i``: the shared one, then the frame's own (later ones
    win), those present."""
    out = []
    for key, k in ((_GROUPS[0], 0), (_GROUPS[1], i)):
        groups = ds.get(key) or []
        if k < len(groups):
            out.extend((groups[k].get(macro) or [])[:1])
    return out


def frame_headers(f: Path, ds: Any) -> list[DicomHeader]:
    """One header per frame of an enhanced multi-frame image, its position, orientation, pixel spacing, rescale
    and window set as top-level attributes (the shared groups, then the frame's own), so that the series code
    sorts and stacks the frames as it does single-frame files."""
    from pydicom.dataset import Dataset

    base = [e for e in ds if e.keyword not in (*_GROUPS, "NumberOfFrames")]
    headers = []
    for i in range(n_frames(ds)):
        frame = Dataset()
        for elem in base:
            frame.add(elem)
        for macro in FRAME_MACROS:
            for item in frame_items(ds, i, macro):
                for elem in item:
                    frame[elem.tag] = elem
        headers.append(DicomHeader(f, frame, frame=i))
    return headers


def _stand_in_uid(ds: Any, f: Path, root: Path) -> str:
    """A series key for a file without SeriesInstanceUID: its folder under the scanned ``root`` plus what one series
    shares (study, series number, frame of reference, image size, pixel spacing, orientation), so two such series
    never merge, and one archive gives the same key whatever path reaches it (relative, absolute, moved)."""
    ps = header_floats(ds.get("PixelSpacing"), 2)
    iop = header_floats(ds.get("ImageOrientationPatient"), 6)
    parts = [
        str(ds.get(tag, "") or "") for tag in ("StudyInstanceUID", "SeriesNumber", "FrameOfReferenceUID")
    ] + [f"{ds.Rows}x{ds.Columns}", "" if ps is None else "x".join(f"{v:.4f}" for v in ps),
         "" if iop is None else ",".join(f"{v:.3f}" for v in iop)]  # fmt: skip
    return f"{NO_UID}{_folder_under(f.parent, root)}:{'|'.join(parts)}"


def _folder_under(folder: Path, root: Path) -> str:
    """``folder`` relative to the scanned ``root`` (a folder, or the folder of a scanned file), as a POSIX path:
    as walked when it lies under it, else between their resolved paths."""
    base = root if root.is_dir() else root.parent
    try:
        return folder.relative_to(base).as_posix()
    except ValueError:
        return Path(os.path.relpath(folder.resolve(), base.resolve())).as_posix()


def _note_localizers(scan: DicomScan, where: str) -> None:
    """A note when localizer (scout, topogram) images were left out while a series remains."""
    n = sum(s.endswith("(localizer)") for s in scan.skipped)
    if n and scan.series:
        scan.notes.append(f"{where}: left out {n} localizer image{'s' if n > 1 else ''} (ImageType LOCALIZER)")
    screens = [s for s in scan.skipped if s.endswith(f"{SCREEN})")]
    if screens:
        scan.notes.append(f"{where}: left out {len(screens)} screen capture{'s' if len(screens) > 1 else ''} (a dose "
                          f"screen or protocol page, not CT: colour, or a secondary capture without a rescale to HU; "
                          f"first {screens[0].rsplit(' (', 1)[0]})")  # fmt: skip


def _unreadable_text(scan: DicomScan) -> str:
    """'N unreadable DICOM file(s), first FILE (reason)'."""
    f, reason = scan.unreadable[0]
    n = len(scan.unreadable)
    return f"{n} unreadable DICOM file{'s' if n > 1 else ''}, first {f} ({reason})"


def scan_dicom(path: str | Path) -> DicomScan:
    """Read the headers of every DICOM image under ``path`` (file or folder, recursive; a DICOMDIR: the files it
    lists), grouped by series.

    Unreadable files in a folder are skipped with a warning (in ``scan.notes``); raises ValueError for an unreadable
    file, a folder without a readable DICOM image, or FileNotFoundError for a missing path.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    scan = DicomScan(root=path)
    many = path.is_dir() or is_dicomdir(path)  # a folder or a file-set: what cannot be read is skipped
    if path.is_file() and many:
        files, scan.notes = dicomdir_files(path)
        scan.root = path.parent
    else:
        files = _candidate_files(path)
    seen: dict[str, list[tuple[Path, tuple]]] = {}
    for f in files:
        _scan_file(scan, f, path.is_dir(), seen)
    _note_localizers(scan, str(path))
    if scan.unreadable and not many:
        f, reason = scan.unreadable[0]
        raise ValueError(f"{f}: unreadable DICOM file ({reason})")
    if scan.unreadable and not scan.series:
        raise ValueError(f"{path}: no readable DICOM image; {_unreadable_text(scan)}")
    if scan.unreadable:
        scan.notes.append(f"{path}: skipped {_unreadable_text(scan)}")
        scan.skipped.extend(f"{f} (unreadable: {reason})" for f, reason in scan.unreadable)
    for note in scan.notes:
        warnings.warn(note, UserWarning, stacklevel=2)
    if not scan.series and scan.skipped and all(s.endswith(f"{SCREEN})") for s in scan.skipped):
        first = scan.skipped[0].rsplit(" (", 1)[1].rstrip(")")  # the reason (a path may hold " (" too)
        n = len(scan.skipped)
        raise ValueError(f"{path}: {'a screen capture' if n == 1 else f'{n} screen captures and no CT'} ({first})")
    if not scan.series:
        what = "folder" if path.is_dir() else "DICOMDIR" if many else "file"
        extra = f" (skipped: {'; '.join(scan.skipped[:3])}{'; ...' if len(scan.skipped) > 3 else ''})"
        if path.is_dir() and not files:
            niftis = [p for p in path.rglob("*") if p.name.lower().endswith((".nii", ".nii.gz"))]
            if niftis:  # a folder of NIfTI files is not "empty"
                raise ValueError(f"{path}: holds NIfTI files only ({len(niftis)}, first {niftis[0].name}), no DICOM "
                                 "series: open one file (denoise/detect take the folder with --all-series; index "
                                 "and train take DICOM series, lidnet datasets or DeepLesion)")  # fmt: skip
            raise ValueError(f"{path}: folder is empty")
        raise ValueError(f"{path}: {what} contains no DICOM image{extra if scan.skipped else ''}")
    return scan


def list_dicom_series(path: str | Path) -> list[SeriesInfo]:
    """Image series under ``path`` (headers only), largest first."""
    scan = scan_dicom(path)
    infos = []
    for uid, headers in scan.series.items():
        ds = headers[0].ds
        infos.append(
            SeriesInfo(
                uid=uid,
                description=str(ds.get("SeriesDescription", "") or ""),
                modality=str(ds.get("Modality", "") or ""),
                n_slices=sum(n_frames(h.ds) for h in headers),
                rows=int(ds.Rows),
                cols=int(ds.Columns),
            )
        )
    return sorted(infos, key=lambda s: (-s.n_slices, -s.rows * s.cols, s.description, s.uid))


def scan_files(files: Sequence[str | Path]) -> DicomScan:
    """The headers of an explicit list of DICOM files, grouped by series (unreadable files noted); raises a
    one-line ValueError when none is a readable DICOM image."""
    scan = DicomScan(root=Path(files[0]).parent)
    seen: dict[str, list[tuple[Path, tuple]]] = {}
    for f in files:
        _scan_file(scan, Path(f), False, seen)
    _note_localizers(scan, f"{len(files)} files")
    if not scan.series:
        if scan.unreadable:
            raise ValueError(f"no readable DICOM image among {len(files)} files; {_unreadable_text(scan)}")
        raise ValueError(f"no DICOM image among {len(files)} files (skipped: {'; '.join(scan.skipped[:3])})")
    if scan.unreadable:
        scan.notes.append(f"skipped {_unreadable_text(scan)}")
    return scan


def n_frames(ds: Any) -> int:
    """Frames of a (multi-frame) image header; 1 when absent or bad."""
    try:
        return max(1, int(ds.get("NumberOfFrames", 1) or 1))
    except (TypeError, ValueError):
        return 1
