"""Reviewed lesion boxes -> a DICOM Comprehensive SR (plain pydicom, no Qt).

The document is a TID 1500 measurement report: a root "Imaging Measurement Report" container (template 1500 in
ContentTemplateSequence) holding its language (TID 1204), the observer (TID 1001: this program, as a device),
"Procedure reported" (CT), the image library (TID 1600: the source images cited) and an "Imaging Measurements"
container with one "Measurement Group" per region. Each group holds a tracking identifier and a tracking unique
identifier, the region as a closed SCOORD POLYLINE in the source slice's pixel coordinates (DICOM's convention:
(0, 0) is the top-left corner of the first pixel, the same as a box edge ``x1, y1`` here), selected from an IMAGE
item that references the source slice's SOP instance when it is known, and the long axis, short axis (mm), mean
attenuation (HU; TID 1419: an attenuation coefficient derived as "Mean"), detector score and review status. Patient
and study tags are copied from the source series so the report files next to it in a PACS.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .atomic import check_new, new_file
from .dicom_values import tag_value
from .dicom_write import derived_series_number, stand_in_uid

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
#: the private coding scheme of the detector's score and the review status, declared in the header
PRIVATE_SCHEME = "99LIDNET"
#: (value, scheme, meaning) of the concept names used
REPORT = ("126000", "DCM", "Imaging Measurement Report")
PROCEDURE = ("121058", "DCM", "Procedure reported")
CT_PROCEDURE = ("77477000", "SCT", "Computed tomography")
MEASUREMENTS = ("126010", "DCM", "Imaging Measurements")
TRACKING_UID = ("112040", "DCM", "Tracking Unique Identifier")
GROUP = ("125007", "DCM", "Measurement Group")
TRACKING_ID = ("112039", "DCM", "Tracking Identifier")
IMAGE_REGION = ("111030", "DCM", "Image Region")
SOURCE_IMAGE = ("260753009", "SCT", "Source")
LONG_AXIS = ("103339001", "SCT", "Long Axis")
SHORT_AXIS = ("103340004", "SCT", "Short Axis")
MEAN = ("373098007", "SCT", "Mean")
ATTENUATION = ("112031", "DCM", "Attenuation Coefficient")
DERIVATION = ("121401", "DCM", "Derivation")
LANGUAGE = ("121049", "DCM", "Language of Content Item and Descendants")
ENGLISH = ("en-US", "RFC5646", "English (United States)")
OBSERVER_TYPE = ("121005", "DCM", "Observer Type")
DEVICE = ("121007", "DCM", "Device")
DEVICE_UID = ("121012", "DCM", "Device Observer UID")
DEVICE_NAME = ("121013", "DCM", "Device Observer Name")
DEVICE_MAKER = ("121014", "DCM", "Device Observer Manufacturer")
IMAGE_LIBRARY = ("111028", "DCM", "Image Library")
LIBRARY_GROUP = ("126200", "DCM", "Image Library Group")
FRAME_OF_REFERENCE = ("112227", "DCM", "Frame of Reference UID")
MODALITY = ("121139", "DCM", "Modality")
CT_MODALITY = ("CT", "DCM", "Computed Tomography")

SCORE = ("score", PRIVATE_SCHEME, "Detector score")
STATUS = ("status", PRIVATE_SCHEME, "Review status")
MM = ("mm", "UCUM", "millimeter")
HU = ("[hnsf'U]", "UCUM", "Hounsfield unit")
NO_UNITS = ("1", "UCUM", "no units")
#: source tags copied into the report (patient and study)
COPIED_TAGS = ("PatientID", "IssuerOfPatientID", "PatientName", "PatientBirthDate", "PatientSex", "PatientAge",
               "StudyInstanceUID", "StudyID", "StudyDate", "StudyTime", "StudyDescription", "AccessionNumber",
               "ReferringPhysicianName", "PatientIdentityRemoved", "DeidentificationMethod",
               "DeidentificationMethodCodeSequence")  # fmt: skip


@dataclass
class SRRegion:
    """One reviewed region: slice index, polygon corners (K, 2) as (row, col) pixels, measurements, status."""

    slice: int
    corners: np.ndarray
    long_mm: float
    short_mm: float
    mean_hu: float
    score: float | None = None
    status: str = "accepted"
    label: str = ""
    lesion: int | None = None  # regions of one lesion (on neighbouring slices) share its tracking identifier and UID


def instance_refs(files: Sequence[str | Path]) -> list[tuple[str, str] | None]:
    """(SOPClassUID, SOPInstanceUID) of each file, header only; None for a file that cannot be read."""
    import pydicom

    refs: list[tuple[str, str] | None] = []
    for f in files:
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"],
                                 force=True)  # a file without the Part 10 header too
            refs.append((str(ds.SOPClassUID), str(ds.SOPInstanceUID)))
        except (OSError, AttributeError, ValueError, pydicom.errors.InvalidDicomError):
            refs.append(None)
    return refs


def _code(code: tuple[str, str, str]) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code
    return item


def _item(value_type: str, name: tuple[str, str, str], relationship: str = "CONTAINS") -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.RelationshipType = relationship
    item.ValueType = value_type
    item.ConceptNameCodeSequence = [_code(name)]
    return item


def _text(name: tuple[str, str, str], value: str, relationship: str = "CONTAINS") -> Any:
    item = _item("TEXT", name, relationship)
    item.TextValue = value
    return item


def _uidref(name: tuple[str, str, str], uid: str, relationship: str = "CONTAINS") -> Any:
    item = _item("UIDREF", name, relationship)
    item.UID = uid
    return item


def _coded(name: tuple[str, str, str], value: tuple[str, str, str], relationship: str) -> Any:
    """A CODE content item: concept ``name``, coded value ``value``."""
    item = _item("CODE", name, relationship)
    item.ConceptCodeSequence = [_code(value)]
    return item


def _num(
    name: tuple[str, str, str], value: float, unit: tuple[str, str, str], derivation: tuple[str, str, str] | None = None
) -> Any:
    from pydicom.dataset import Dataset

    item = _item("NUM", name)
    measured = Dataset()
    measured.NumericValue = f"{float(value):.6g}"[:16]
    measured.MeasurementUnitsCodeSequence = [_code(unit)]
    item.MeasuredValueSequence = [measured]
    if derivation is not None:
        item.ContentSequence = [_coded(DERIVATION, derivation, "HAS CONCEPT MOD")]
    return item


def _image_ref(ref: tuple[str, str], frame: int | None, relationship: str = "SELECTED FROM") -> Any:
    from pydicom.dataset import Dataset

    item = _item("IMAGE", SOURCE_IMAGE, relationship)
    sop = Dataset()
    sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID = ref
    if frame is not None:
        sop.ReferencedFrameNumber = frame
    item.ReferencedSOPSequence = [sop]
    return item


def closed_polyline(corners: np.ndarray) -> list[float]:
    """(K, 2) (row, col) corners -> GraphicData ``col, row, ...`` with the first point repeated at the end."""
    c = np.asarray(corners, dtype=float)
    pts = np.vstack([c, c[:1]])[:, ::-1]
    return [float(v) for v in pts.reshape(-1)]


def _group(k: int, region: SRRegion, ref: tuple[str, str] | None, frame: int | None, uid: str) -> Any:
    group = _item("CONTAINER", GROUP)
    group.ContinuityOfContent = "SEPARATE"
    scoord = _item("SCOORD", IMAGE_REGION)
    scoord.GraphicType = "POLYLINE"
    scoord.GraphicData = closed_polyline(region.corners)
    if ref is not None:
        scoord.ContentSequence = [_image_ref(ref, frame)]
    tracking_uid = _uidref(TRACKING_UID, uid)
    label = region.label or f"finding {k + 1} (slice {region.slice})"
    children = [  # one tracked lesion: the same identifier and UID in each of its groups (TID 1500)
        _text(TRACKING_ID, label if region.lesion is None else f"lesion {region.lesion}"),
        tracking_uid,
        scoord,
        *[_num(axis, mm, MM) for axis, mm in ((LONG_AXIS, region.long_mm), (SHORT_AXIS, region.short_mm))
          if np.isfinite(mm)],  # no pixel size: no size in mm is made up
    ]
    if np.isfinite(region.mean_hu):
        children.append(_num(ATTENUATION, region.mean_hu, HU, derivation=MEAN))
    if region.score is not None:
        children.append(_num(SCORE, region.score, NO_UNITS))
    children.append(_text(STATUS, region.status))
    group.ContentSequence = children
    return group


def _evidence(refs: Sequence[tuple[str, str]], study_uid: str, series_uid: str) -> Any:
    """CurrentRequestedProcedureEvidenceSequence: the referenced source instances, one study, one series."""
    from pydicom.dataset import Dataset

    series = Dataset()
    series.SeriesInstanceUID = series_uid
    series.ReferencedSOPSequence = []
    for cls, uid in dict.fromkeys(refs):
        sop = Dataset()
        sop.ReferencedSOPClassUID, sop.ReferencedSOPInstanceUID = cls, uid
        series.ReferencedSOPSequence.append(sop)
    study = Dataset()
    study.StudyInstanceUID = study_uid
    study.ReferencedSeriesSequence = [series]
    return [study]


def _context() -> list[Any]:
    """The root's language (TID 1204) and observer (TID 1001/1004: this program, a device) items."""
    from pydicom.uid import generate_uid

    from .. import __version__

    context = "HAS OBS CONTEXT"
    # the program's UID, one per version (a device observer UID names the device, not one installation of it)
    uid = generate_uid(entropy_srcs=["napari-lidnet", __version__])
    return [
        _coded(LANGUAGE, ENGLISH, "HAS CONCEPT MOD"),
        _coded(OBSERVER_TYPE, DEVICE, context),
        _uidref(DEVICE_UID, uid, context),
        _text(DEVICE_NAME, f"LIDnet detector (napari-lidnet {__version__})", context),
        _text(DEVICE_MAKER, "napari-lidnet", context),
    ]


def _library(images: Sequence[tuple[tuple[str, str], int | None]], frame_of_reference: str) -> Any:
    """TID 1600 Image Library: one group (CT, one frame of reference: TID 1602's shared descriptors) citing each
    source image once."""
    group = _item("CONTAINER", LIBRARY_GROUP)
    group.ContinuityOfContent = "SEPARATE"
    group.ContentSequence = [_coded(MODALITY, CT_MODALITY, "HAS ACQ CONTEXT")]
    if frame_of_reference:
        group.ContentSequence.append(_uidref(FRAME_OF_REFERENCE, frame_of_reference, "HAS ACQ CONTEXT"))
    group.ContentSequence.extend(_image_ref(ref, frame, "CONTAINS") for ref, frame in dict.fromkeys(images))
    library = _item("CONTAINER", IMAGE_LIBRARY)
    library.ContinuityOfContent = "SEPARATE"
    library.ContentSequence = [group]
    return library


#: Type 2 attributes of the SR's patient, study and SR document modules (written empty when the source lacks them)
TYPE2_TAGS = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
              "AccessionNumber", "ReferringPhysicianName")  # fmt: skip


def _header(source_tags: dict[str, Any], description: str, source: str = "") -> Any:
    """The SR's patient, study, series and document tags (patient/study copied from the source; a source without a
    study UID gets the stand-in its denoised series gets, ``dicom_write.stand_in_uid`` of ``source``)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    now = _dt.datetime.now()
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    for kw in COPIED_TAGS:
        if source_tags.get(kw) not in (None, ""):
            setattr(ds, kw, tag_value(source_tags[kw]))
    for kw in TYPE2_TAGS:  # Type 2: present, empty when the source does not say
        if kw not in ds:
            setattr(ds, kw, "")
    ds.PerformedProcedureCodeSequence = ds.get("PerformedProcedureCodeSequence", [])  # Type 2 (SR Document General)
    ds.ReferencedPerformedProcedureStepSequence = []  # Type 2 (SR Document Series)
    scheme = Dataset()
    scheme.CodingSchemeDesignator = PRIVATE_SCHEME
    scheme.CodingSchemeName = "napari-lidnet detector score and review status"
    scheme.CodingSchemeResponsibleOrganization = "napari-lidnet"
    ds.CodingSchemeIdentificationSequence = [scheme]
    ds.StudyInstanceUID = ds.get("StudyInstanceUID") or stand_in_uid(source, "study")
    ds.SOPClassUID = COMPREHENSIVE_SR
    ds.SOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "SR"
    ds.SeriesNumber = derived_series_number(source_tags.get("SeriesNumber"), 9900)
    ds.InstanceNumber = 1
    ds.SeriesDescription = description[:64]
    ds.Manufacturer = "napari-lidnet"
    ds.ContentDate = ds.SeriesDate = now.strftime("%Y%m%d")
    ds.ContentTime = ds.SeriesTime = now.strftime("%H%M%S")
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = [_code(REPORT)]
    ds.ContinuityOfContent = "SEPARATE"
    template = Dataset()
    template.MappingResource, template.TemplateIdentifier = "DCMR", "1500"
    ds.ContentTemplateSequence = [template]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def write_sr(
    path: str | Path,
    regions: Sequence[SRRegion],
    refs: Sequence[tuple[str, str] | None] | None = None,
    source_tags: dict[str, Any] | None = None,
    series_uid: str = "",
    description: str = "LIDnet reviewed lesions",
    frames: Sequence[int | None] | None = None,
    source: str = "",
) -> Path:
    """Write a Comprehensive SR of ``regions`` to ``path`` (never overwrites).

    ``refs[slice]`` is the (SOPClassUID, SOPInstanceUID) of each source slice (None or missing: no image
    reference); ``frames[slice]`` its frame number in a multi-frame source instance (None: a single-frame one);
    ``source``: the source series' UID (else its path), for a stand-in study UID when its tags have none. A region
    whose sizes are NaN (an image without a pixel size) is reported without them.
    """
    import pydicom
    from pydicom.uid import generate_uid

    path = check_new(path)
    refs = list(refs or [])
    ds = _header(dict(source_tags or {}), description, source)
    groups, used, images = [], [], []
    lesion_uids: dict[int, str] = {}  # one tracking UID per lesion; a region without a lesion gets its own
    for k, region in enumerate(regions):
        z = int(region.slice)
        ref = refs[z] if 0 <= z < len(refs) else None
        ref = ref if ref is not None and all(str(v).strip() for v in ref) else None  # a blank UID references nothing
        frame = frames[z] if frames is not None and 0 <= z < len(frames) else None
        uid = generate_uid() if region.lesion is None else lesion_uids.setdefault(region.lesion, generate_uid())
        groups.append(_group(k, region, ref, frame, uid))
        if ref is not None:
            used.append(ref)
            images.append((ref, frame))
    measurements = _item("CONTAINER", MEASUREMENTS)
    measurements.ContinuityOfContent = "SEPARATE"
    measurements.ContentSequence = groups
    frame_of_reference = str((source_tags or {}).get("FrameOfReferenceUID") or "")
    procedure = _coded(PROCEDURE, CT_PROCEDURE, "HAS CONCEPT MOD")
    library = [_library(images, frame_of_reference)] if images else []  # TID 1500: optional, never empty
    ds.ContentSequence = [*_context(), procedure, *library, measurements]
    if used and series_uid:
        ds.CurrentRequestedProcedureEvidenceSequence = _evidence(used, ds.StudyInstanceUID, series_uid)
    with new_file(path) as tmp:  # whole or not at all
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    return path


@dataclass(frozen=True)
class ReadRegion:
    """A measurement group read back: its polygon's corners (K, 2) as (row, col) pixel edges, the source instance
    ('' where the region references none: a report of an image without DICOM instances) and frame it was selected
    from, its detector score, review status and lesion number (its tracking identifier "lesion N")."""

    corners: np.ndarray
    sop_instance_uid: str
    frame: int | None
    score: float | None
    status: str
    lesion: int | None

    @property
    def box(self) -> tuple[float, float, float, float]:
        """The upright box ``x1, y1, x2, y2`` around the corners."""
        c = self.corners
        return float(c[:, 1].min()), float(c[:, 0].min()), float(c[:, 1].max()), float(c[:, 0].max())


def _concept(item: Any) -> tuple[str, str]:
    """(code value, scheme) of a content item's concept name; ('', '') without one."""
    names = getattr(item, "ConceptNameCodeSequence", None) or []
    return (str(names[0].get("CodeValue", "")), str(names[0].get("CodingSchemeDesignator", ""))) if names else ("", "")


def _groups(items: Sequence[Any]) -> list[Any]:
    """Every Measurement Group container under ``items`` (depth first)."""
    out = []
    for item in items:
        if item.get("ValueType") == "CONTAINER" and _concept(item) == GROUP[:2]:
            out.append(item)
        else:
            out.extend(_groups(getattr(item, "ContentSequence", None) or []))
    return out


def _read_group(group: Any) -> ReadRegion:
    """One measurement group's region (ValueError when it has no polyline)."""
    children = list(getattr(group, "ContentSequence", None) or [])
    scoord = next((c for c in children if c.get("ValueType") == "SCOORD" and c.get("GraphicType") == "POLYLINE"),
                  None)  # fmt: skip
    if scoord is None:
        raise ValueError("a region without its polyline")
    refs = [r for i in (getattr(scoord, "ContentSequence", None) or []) for r in (i.get("ReferencedSOPSequence") or [])]
    points = np.asarray([float(v) for v in scoord.GraphicData], dtype=float).reshape(-1, 2)[:, ::-1]  # (row, col)
    if len(points) > 1 and np.array_equal(points[0], points[-1]):
        points = points[:-1]  # closed: the first point repeated
    frame = refs[0].get("ReferencedFrameNumber") if refs else None
    values = {_concept(c): c for c in children}
    score_item, status_item, label = values.get(SCORE[:2]), values.get(STATUS[:2]), values.get(TRACKING_ID[:2])
    lesion = str(getattr(label, "TextValue", "")).removeprefix("lesion ")
    return ReadRegion(points, str(refs[0].get("ReferencedSOPInstanceUID", "")) if refs else "",
                      None if frame in (None, "") else int(frame),
                      float(score_item.MeasuredValueSequence[0].NumericValue) if score_item is not None else None,
                      str(status_item.TextValue) if status_item is not None else "accepted",
                      int(lesion) if lesion.isdigit() else None)  # fmt: skip


def read_sr_regions(path: str | Path) -> list[ReadRegion]:
    """The regions of a measurement report (TID 1500, as :func:`write_sr` writes them: a turned box keeps its
    corners); a one-line ValueError for a file that is not one."""
    import pydicom

    path = Path(path)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if str(ds.get("Modality", "")) != "SR" or not ds.get("ContentSequence"):
            raise ValueError("not a structured report")
        groups = _groups(ds.ContentSequence)
        if not groups:
            raise ValueError("no measurement groups")
        return [_read_group(g) for g in groups]
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read ({exc.strerror or type(exc).__name__})") from None
    except (pydicom.errors.InvalidDicomError, AttributeError, IndexError, TypeError, ValueError) as exc:
        raise ValueError(f"{path.name}: not a LIDnet review report ({exc})") from None
