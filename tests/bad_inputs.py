"""The bad-input corpus of tests/test_bad_inputs.py, written for real (numpy, zipfile, pydicom) into a folder.

Every file is small: the "huge" inputs (20000 x 20000 pixels) are real headers followed by a few bytes of pixels,
so a reader that looks at the header first refuses them without reading or allocating anything, and one that does
not fails on them. ``snapshot`` records a tree's paths and bytes, to check that nothing was written or changed.
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pydicom
from conftest import make_ct_slice, synthetic_hu, write_series

HUGE = 20000
#: array files: name -> (what the reader does: "refused" | "warned", pattern of its one-line message)
ARRAY_CASES = {
    "nan.npy": ("warned", r"1 of 512 pixels are NaN \(first at index \(1, 2, 3\)\)"),
    "inf.npy": ("warned", r"2 of 512 pixels are infinite"),
    "constant.npy": ("warned", r"every pixel is -1000 HU \(a blank image\)"),
    "absurd.npy": ("warned", r"2 of 512 pixels lie beyond \+-100000 HU \(-1e\+30 to 1e\+30, first at index \(0, 1, 2"),
    "int8.npy": ("refused", r"dtype int8 \(8 bits\) cannot hold HU"),
    "uint8.npy": ("refused", r"dtype uint8 \(8 bits\) cannot hold HU"),
    "bool.npy": ("refused", r"dtype bool is not numbers in HU"),
    "1d.npy": ("refused", r"shape \(256,\); expected a 2D slice"),
    "4d.npy": ("refused", r"shape \(2, 2, 16, 16\); expected a 2D slice"),
    "empty.npy": ("refused", r"image is empty \(shape \(0, 16\)\)"),
    "complex.npy": ("refused", r"dtype complex64 is not numbers in HU"),
    "huge.npy": ("refused", rf"slices of {HUGE} x {HUGE} pixels are larger than 8192 x 8192"),
    "huge.npz": ("refused", rf"slices of {HUGE} x {HUGE} pixels are larger than 8192 x 8192"),
    "huge.png": ("refused", rf"slices of {HUGE} x {HUGE} pixels are larger than 8192 x 8192"),
}
#: DICOM folders: name -> (what the reader does, pattern of its message)
DICOM_CASES = {
    "truncated": ("refused", r"s0_2\.dcm: pixel data cannot be read, the file may be truncated"),
    "nopixels": ("refused", r"s0_1\.dcm: DICOM file has no PixelData element"),
    "badsyntax": ("refused", r"s0_0\.dcm: unknown transfer syntax 1\.2\.3\.4\.5"),
    "mixedsize": ("refused", r"mixes image sizes \(rows x cols\) and cannot be stacked: 16x16: s0_0\.dcm.*20x16"),
    "mixedorient": ("refused", r"mixes slice orientations \(s0_0\.dcm: 1 0 0 0 1 0; s0_1\.dcm: 1 0 0 0 0 -1\)"),
    "huge": ("refused", rf"slices of {HUGE} x {HUGE} pixels are larger than 8192 x 8192"),
    "duplicate": ("warned", r"s0_1\.dcm is a copy of .*copy\.dcm \(same SOPInstanceUID and position\); read once"),
    "mr": ("warned", r"modality is 'MR', not 'CT'"),
    "partly_unreadable": ("warned", r"skipped 1 unreadable DICOM file, first .*garbage\.dcm \(no DICOM image header: "),
}


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of the bytes (``"dir"`` for folders) of everything under ``root``."""
    return {
        p.relative_to(root).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def good_volume(seed: int = 0) -> np.ndarray:
    """A small finite CT-like volume (2, 16, 16) in HU."""
    return synthetic_hu((2, 16, 16), seed=seed)


def _npy_header_only(path: Path, shape: tuple[int, ...], dtype: str = "<i2") -> None:
    """A real .npy header for ``shape`` followed by 64 bytes: the file a 20000 x 20000 array starts with."""
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": dtype, "fortran_order": False, "shape": shape})
        fh.write(bytes(64))


def _png_header_only(path: Path, rows: int, cols: int) -> None:
    """A 16-bit grayscale PNG signature + IHDR for rows x cols, a few bytes of IDAT, IEND (valid CRCs)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", cols, rows, 16, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


def write_arrays(folder: Path) -> Path:
    """Every array case of ``ARRAY_CASES`` and a good volume ``good.npy`` in ``folder``."""
    folder.mkdir(parents=True)
    hu = good_volume()
    nan, inf = hu.copy(), hu.copy()
    nan[1, 2, 3] = np.nan
    inf[0, 0, 0], inf[1, 5, 5] = np.inf, -np.inf
    absurd = hu.copy()
    absurd[0, 1, 2], absurd[1, 3, 3] = 1e30, -1e30  # finite, but no CT: it overflowed the networks
    arrays = {
        "good": hu,
        "nan": nan,
        "inf": inf,
        "absurd": absurd,
        "constant": np.full((2, 16, 16), -1000.0, np.float32),
        "int8": hu.astype(np.int8),
        "uint8": np.zeros((16, 16), np.uint8),
        "bool": np.zeros((16, 16), bool),
        "1d": hu.ravel()[:256],
        "4d": np.zeros((2, 2, 16, 16), np.float32),
        "empty": np.zeros((0, 16), np.float32),
        "complex": hu.astype(np.complex64),
    }
    for name, arr in arrays.items():
        np.save(folder / f"{name}.npy", arr)
    _npy_header_only(folder / "huge.npy", (HUGE, HUGE))
    _npy_header_only(folder / "huge_member.npy", (HUGE, HUGE))
    with zipfile.ZipFile(folder / "huge.npz", "w") as zf:
        zf.write(folder / "huge_member.npy", "hu.npy")
    (folder / "huge_member.npy").unlink()
    _png_header_only(folder / "huge.png", HUGE, HUGE)
    return folder


def _series(folder: Path, uid: str, n: int = 3, **kwargs) -> list[Path]:
    """``n`` 16 x 16 CT slices named s0_0.dcm ... (in slice order) with 2.5 mm spacing."""
    folder.mkdir(parents=True, exist_ok=True)
    hu = synthetic_hu((n, 16, 16), seed=len(uid))
    return [
        make_ct_slice(
            folder / f"s0_{k}.dcm", hu[k] + 1024, series_uid=uid, position=(0.0, 0.0, 2.5 * k), instance_number=k + 1,
            **kwargs,
        )
        for k in range(n)
    ]  # fmt: skip


def write_dicoms(root: Path) -> Path:
    """Every DICOM case of ``DICOM_CASES`` (one folder each) and a good series in ``good/``."""
    base = "1.2.826.0.1.3680043.8.498.77"
    _series(root / "good", f"{base}.1")
    files = _series(root / "truncated", f"{base}.2")
    files[2].write_bytes(files[2].read_bytes()[:-100])
    _series(root / "nopixels", f"{base}.3", n=2)
    make_ct_slice(
        root / "nopixels" / "s0_1.dcm", np.ones((16, 16)), series_uid=f"{base}.3", position=(0, 0, 2.5),
        with_pixels=False,
    )  # fmt: skip
    files = _series(root / "badsyntax", f"{base}.4", n=1)
    ds = pydicom.dcmread(files[0])
    ds.file_meta.TransferSyntaxUID = "1.2.3.4.5"
    ds.save_as(files[0], enforce_file_format=True)
    _series(root / "mixedsize", f"{base}.5", n=1)
    make_ct_slice(root / "mixedsize" / "s0_1.dcm", np.ones((20, 16)), series_uid=f"{base}.5", position=(0, 0, 2.5))
    _series(root / "mixedorient", f"{base}.6", n=1)
    make_ct_slice(
        root / "mixedorient" / "s0_1.dcm", np.ones((16, 16)), series_uid=f"{base}.6", position=(0, 0, 2.5),
        orientation=(1, 0, 0, 0, 0, -1),
    )  # fmt: skip
    (root / "huge").mkdir()
    make_ct_slice(root / "huge" / "s0_0.dcm", np.ones((2, 2)), series_uid=f"{base}.7", position=(0, 0, 0))
    ds = pydicom.dcmread(root / "huge" / "s0_0.dcm")
    ds.Rows = ds.Columns = HUGE
    ds.save_as(root / "huge" / "s0_0.dcm", enforce_file_format=True)
    files = _series(root / "duplicate", f"{base}.8")
    shutil.copy(files[1], root / "duplicate" / "copy.dcm")
    _series(root / "mr", f"{base}.9", modality="MR")
    files = _series(root / "partly_unreadable", f"{base}.10")
    (root / "partly_unreadable" / "garbage.dcm").write_bytes(files[0].read_bytes()[:300])  # header cut short
    return root


def write_colliding_series(root: Path) -> tuple[str, str]:
    """Two series with the same description whose UIDs share their last 12 characters (one name before)."""
    uid_a, uid_b = "1.2.826.0.1.3680043.8.498.11.123456789012", "1.2.826.0.1.3680043.8.498.22.123456789012"
    write_series(root / "a", synthetic_hu((2, 16, 16), seed=1), series_uid=uid_a, description="Thorax")
    write_series(root / "b", synthetic_hu((2, 16, 16), seed=2), series_uid=uid_b, description="Thorax")
    return uid_a, uid_b
