"""The navigator's review written out: every finding as CSV/JSON, the kept ones as a DICOM Comprehensive SR."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..findings import Finding, lesion_groups, write_findings
from ..io.boxes_io import PATIENT_SPACE, WORLD_SPACE, slice_columns
from ..io.volume import n_slices, per_slice
from ._roles import has_voxel_size, places_patient, simulated_label


def write_review_table(
    path: Path, findings: list[Finding], image: Any, boxes: Any, lesions: dict | None = None
) -> Path:
    """Every finding with its status, as CSV or JSON (by the suffix): sizes in mm where the image has a voxel size,
    the slice ids a PACS shows."""
    unit = "mm" if has_voxel_size(image) else "px"  # as the table shows them
    centre = "patient LPS z, y, x" if places_patient(image) else "viewer world (the source gives no patient position)"
    info = {"image": image.name, "boxes": getattr(boxes, "name", None),
            "spacing_mm": [float(s) for s in image.scale] if unit == "mm" else None,
            "units": f"pixels (boxes), {unit} (sizes; centre: {centre})",
            "simulated": simulated_label(image.metadata),  # the slice ids are those of the normal-dose source
            }  # fmt: skip
    ids = slice_columns(image.metadata or {}, n_slices(image.data))
    space = PATIENT_SPACE if places_patient(image) else WORLD_SPACE
    return write_findings(path, findings, info, ids, unit=unit, lesions=lesions, centre_space=space)


def write_review_sr(path: Path, findings: list[Finding], image: Any, lesions: dict | None = None) -> Path:
    """A DICOM Comprehensive SR of the kept findings, referencing the source slices when the image came from DICOM
    (the reader's record of its instances, else its files read again)."""
    from ..io.dicom_sr import SRRegion, instance_refs, write_sr

    meta = image.metadata or {}
    files = list(meta.get("files") or [])
    n = n_slices(image.data)
    frames = per_slice(meta, "frame_numbers", n)
    if len(files) == 1 and n > 1 and frames is None:  # one multi-frame file without functional groups
        files, frames = files * n, list(range(1, n + 1))
    uids, sop_class = per_slice(meta, "sop_instance_uids", n), str(meta.get("sop_class_uid") or "")
    if uids and all(uids) and sop_class:  # the reader's own record: no file read again
        refs = [(sop_class, uid) for uid in uids]
    else:
        unique = list(dict.fromkeys(files))  # a multi-frame file is read once
        found = dict(zip(unique, instance_refs(unique)))
        refs = [found[f] for f in files] if len(files) == n else []
    lesions = lesions if lesions is not None else lesion_groups(findings)
    mm = 1.0 if has_voxel_size(image) else float("nan")  # sizes in pixels are not reported as mm
    regions = [
        SRRegion(f.slice, f.corners, f.measures["long_mm"] * mm, f.measures["short_mm"] * mm,
                 f.measures["mean_hu"], f.score, f.status, f"finding {f.id} (slice {f.slice})", lesions[f.id])
        for f in findings
        if f.kept
    ]  # fmt: skip
    if not regions:
        raise ValueError("no kept boxes: accept or draw at least one before writing a report")
    simulated = simulated_label(meta)  # first: the description is cut at 64 characters
    description = f"{simulated + ': ' if simulated else ''}LIDnet reviewed lesions: {image.name}"
    return write_sr(path, regions, refs, meta.get("source_tags") or {}, str(meta.get("series_uid") or ""),
                    description, frames,
                    source=str(meta.get("series_uid") or meta.get("source") or ""))  # fmt: skip
