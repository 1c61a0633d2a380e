"""DICOMDIR: the index a patient CD, DVD or PACS export carries (PS3.10 File-set). Opening it opens the images it
lists, wherever in the file-set they lie, and nothing else in that folder."""

from __future__ import annotations

from pathlib import Path

#: Media Storage Directory Storage
DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"


def is_dicomdir(path: str | Path) -> bool:
    """True for a file named DICOMDIR (the standard's only name for it) or whose header says it is one."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.name.upper() == "DICOMDIR":
        return True
    import pydicom

    try:
        meta = pydicom.filereader.read_file_meta_info(path)
    except Exception:  # not DICOM, or no file meta: not a DICOMDIR
        return False
    return str(meta.get("MediaStorageSOPClassUID", "")) == DICOMDIR_SOP_CLASS


def dicomdir_files(path: str | Path) -> tuple[list[Path], list[str]]:
    """The files the DICOMDIR at ``path`` references (each record's ReferencedFileID, relative to its folder), in its
    order, and a note when some of them are missing.

    Raises ValueError (one line) when the DICOMDIR cannot be read or lists no file that exists."""
    import pydicom

    path = Path(path)
    try:
        records = pydicom.dcmread(path).get("DirectoryRecordSequence") or []
        ids = [rec.ReferencedFileID for rec in records if rec.get("ReferencedFileID")]
    except Exception as exc:  # pydicom raises many types on a broken index
        raise ValueError(f"{path}: unreadable DICOMDIR ({type(exc).__name__}: {exc})".splitlines()[0]) from None
    listed = list(dict.fromkeys(_resolve(path.parent, [fid] if isinstance(fid, str) else list(fid)) for fid in ids))
    files = [f for f in listed if f.is_file()]
    missing = [f for f in listed if not f.is_file()]
    if not files:
        what = f"its {len(missing)} files are missing" if missing else "it lists no file"
        raise ValueError(f"{path}: DICOMDIR without images ({what})")
    notes = [f"{path}: {len(missing)} files it lists are missing, first {missing[0]}"] if missing else []
    return files, notes


def _resolve(root: Path, parts: list[str]) -> Path:
    """``root/parts``; where that is missing, the lower-case name (a CD mounted on Linux often shows its ISO 9660
    upper-case names in lower case)."""
    exact = root.joinpath(*parts)
    lower = root.joinpath(*(p.lower() for p in parts))
    return lower if not exact.is_file() and lower.is_file() else exact
