"""Shared fixtures: small synthetic DICOM series written with pydicom (independent of the plugin's writer) and a
small DeepLesion tree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_lidnet.io.png16 import write_png_hu


def make_ct_slice(
    path: Path,
    stored: np.ndarray,
    *,
    series_uid: str,
    position: tuple[float, float, float],
    orientation: tuple[float, ...] = (1, 0, 0, 0, 1, 0),
    pixel_spacing: tuple[float, float] = (0.7, 0.8),
    slope: float = 1.0,
    intercept: float = -1024.0,
    instance_number: int = 1,
    description: str = "synthetic",
    modality: str = "CT",
    study_uid: str = "1.2.826.0.1.3680043.8.498.1",
    with_pixels: bool = True,
    extra: dict | None = None,
) -> Path:
    """Write one uncompressed CT slice (uint16 stored values) with pydicom."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    sop = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.PatientID = "LIDNET-TEST"
    ds.PatientName = "Test^Phantom"
    ds.StudyDate = "20240102"
    ds.KVP = "120"
    ds.Modality = modality
    ds.SeriesDescription = description
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [f"{v:.6g}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.8g}" for v in orientation]
    ds.PixelSpacing = [f"{v:.6g}" for v in pixel_spacing]
    ds.SliceThickness = "2.5"
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = f"{slope:g}"
    ds.RescaleIntercept = f"{intercept:g}"
    for kw, value in (extra or {}).items():
        setattr(ds, kw, value)
    if with_pixels:
        ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path


def write_series(
    folder: Path,
    hu: np.ndarray,
    *,
    series_uid: str,
    z_positions: list[float] | None = None,
    description: str = "synthetic",
    rng: np.random.Generator | None = None,
    **kwargs,
) -> list[Path]:
    """Write HU (z, y, x) as a series with shuffled file names, reversed InstanceNumber and per-slice rescale.

    Slice k sits at z = z_positions[k] (default 10 + 2.5 k). Returns the files in true slice order.
    """
    rng = rng or np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    n = hu.shape[0]
    zs = z_positions if z_positions is not None else [10.0 + 2.5 * k for k in range(n)]
    names = rng.permutation(n)
    files = []
    for k in range(n):
        slope = (1.0, 0.5, 2.0)[k % 3]
        intercept = (-1024.0, -1000.0, -2048.0)[k % 3]
        stored = np.rint((hu[k] - intercept) / slope)
        assert stored.min() >= 0 and stored.max() < 65536
        files.append(
            make_ct_slice(
                folder / f"s{series_uid.replace('.', '')[-4:]}_{names[k]:03d}.dcm",
                stored,
                series_uid=series_uid,
                position=(-100.0, -120.0, zs[k]),
                slope=slope,
                intercept=intercept,
                instance_number=n - k,
                description=description,
                **kwargs,
            )
        )
    return files


def synthetic_hu(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """Integer HU in [-1000, 1000], exactly representable with every slope/intercept used above."""
    rng = np.random.default_rng(seed)
    return (rng.integers(-500, 500, size=shape) * 2).astype(np.float32)


@pytest.fixture
def two_series_dir(tmp_path: Path) -> dict:
    """A folder with two CT series (4 and 3 slices), a README and a non-image DICOM (SR-like) file."""
    import pydicom
    from pydicom.uid import generate_uid

    root = tmp_path / "study"
    hu_a = synthetic_hu((4, 12, 10), seed=1)
    hu_b = synthetic_hu((3, 8, 8), seed=2)
    uid_a, uid_b = "1.2.826.0.1.3680043.8.498.1001", "1.2.826.0.1.3680043.8.498.1002"
    files_a = write_series(root, hu_a, series_uid=uid_a, description="abdomen A")
    files_b = write_series(root / "sub", hu_b, series_uid=uid_b, description="chest B", z_positions=[5.0, 0.0, -5.0])
    (root / "README.txt").write_text("not a DICOM file\n")
    sr = dataset_of_class("1.2.840.10008.5.1.4.1.1.88.11")
    sr.SeriesInstanceUID = generate_uid()
    sr.Modality = "SR"
    pydicom.dcmwrite(root / "report.dcm", sr, enforce_file_format=True)
    return {
        "root": root,
        "hu_a": hu_a,
        "hu_b": hu_b,
        "uid_a": uid_a,
        "uid_b": uid_b,
        "files_a": files_a,
        "files_b": files_b,
    }


def dataset_of_class(sop_class: str):
    """A pydicom Dataset of ``sop_class`` with its file meta (explicit VR little endian) and a new instance UID."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    return ds


def listing(folder: Path) -> list[tuple[str, int]]:
    """Recursive (relative path, size) listing to check that nothing was written."""
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tests run torch on one thread: the networks in tests are tiny, and on a busy 2-core machine two spinning
    OpenMP threads make small operations many times slower. (torch is imported here, inside the fixture, so test
    modules that check lazy imports in a subprocess are unaffected.)"""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


HEADER = (
    "File_name,Patient_index,Study_index,Series_ID,Key_slice_index,Measurement_coordinates,Bounding_boxes,"
    "Lesion_diameters_Pixel_,Normalized_lesion_location,Coarse_lesion_type,Possibly_noisy,Slice_range,"
    "Spacing_mm_px_,Image_size,DICOM_windows,Patient_gender,Patient_age,Train_Val_Test\n"
)


def _row(name: str, key: int, box: str, spacing: str = "0.7, 0.7, 5", size: str = "32, 24", ltype: int = 4) -> str:
    return (
        f'{name},1,1,1,{key},"1, 2, 3, 4","{box}","5.0, 3.0","0.5, 0.5, 0.5",{ltype},0,"{key - 1}, {key + 1}",'
        f'"{spacing}","{size}","-175, 275",F,51,1\n'
    )


@pytest.fixture
def deeplesion_tree(tmp_path):
    """Images_png/000001_01_01/{108,109,110}.png (24 x 32) and DL_info.csv with two lesions on 109."""
    root = tmp_path / "DeepLesion"
    series = root / "Images_png" / "000001_01_01"
    series.mkdir(parents=True)
    rng = np.random.default_rng(0)
    hus = {k: rng.integers(-1024, 2000, size=(24, 32)).astype(np.float32) for k in (108, 109, 110)}
    for k, hu in hus.items():
        write_png_hu(series / f"{k}.png", hu)
    (root / "DL_info.csv").write_text(
        HEADER
        + _row("000001_01_01_109.png", 109, "3.5, 4.5, 10.25, 12.0")
        + _row("000001_01_01_109.png", 109, "20, 2, 30, 8", ltype=5)
        + _row("000002_01_01_050.png", 50, "1, 1, 2, 2", spacing="0.9, 0.9, 2.5")
    )
    return root, series, hus


def tiny_models(folder: Path, prefix: str = "tiny") -> None:
    """Small starting models: a denoiser that does not suit this data (it adds structured noise), a random
    detector; fine-tuning has something clear to fix."""
    import torch

    from napari_lidnet.models.denoisers import build_denoiser
    from napari_lidnet.models.detector import LesionDetector
    from napari_lidnet.models.weights import save_weights

    torch.manual_seed(0)
    den = build_denoiser("fastdn", width=8, blocks=1)
    torch.nn.init.normal_(den.tail.weight, std=0.2)
    save_weights(den, folder / f"{prefix}_denoiser")
    save_weights(LesionDetector(width=4), folder / f"{prefix}_detector")


@pytest.fixture
def model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user model folder holding the tiny models (test_denoise_widget has its own)."""
    from napari_lidnet.models.registry import MODEL_DIR_ENV

    folder = tmp_path / "models"
    tiny_models(folder)
    monkeypatch.setenv(MODEL_DIR_ENV, str(folder))
    return folder


def write_enhanced_ct(path, hu, z_positions, spacing=(0.7, 0.7), intercepts=None, series_uid=None):
    """One Enhanced CT Image file (multi-frame): geometry and rescale only in the functional groups, frames in the
    order of ``z_positions`` (as scanners store them, head first or not)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    enhanced_ct = "1.2.840.10008.5.1.4.1.1.2.1"
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.TransferSyntaxUID = enhanced_ct, ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = enhanced_ct, generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.77", series_uid or generate_uid()
    ds.Modality, ds.SeriesDescription, ds.InstanceNumber = "CT", "enhanced", 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows, ds.Columns = hu.shape[1:]
    ds.NumberOfFrames = hu.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit, ds.PixelRepresentation = 15, 0
    shared = Dataset()
    measures, orient = Dataset(), Dataset()
    measures.PixelSpacing, measures.SliceThickness = [f"{v:g}" for v in spacing], "1.25"
    orient.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    shared.PixelMeasuresSequence, shared.PlaneOrientationSequence = [measures], [orient]
    ds.SharedFunctionalGroupsSequence = [shared]
    intercepts = intercepts or [-1024.0] * hu.shape[0]
    frames, stored = [], []
    for k, z in enumerate(z_positions):
        item, pos, rescale = Dataset(), Dataset(), Dataset()
        pos.ImagePositionPatient = [-50, -60, z]
        rescale.RescaleSlope, rescale.RescaleIntercept, rescale.RescaleType = "1", f"{intercepts[k]:g}", "HU"
        item.PlanePositionSequence, item.PixelValueTransformationSequence = [pos], [rescale]
        frames.append(item)
        stored.append(np.rint(hu[k] - intercepts[k]).astype("<u2"))
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = np.stack(stored).tobytes()
    import pydicom

    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return ds.SOPInstanceUID


#: the docks napari makes from the manifest, each given a proxy of the viewer (napari.utils._proxies)
_DOCKS = (
    ("napari_lidnet._widgets.load_ct", "LoadCTWidget"),
    ("napari_lidnet._widgets.denoise_detect", "DenoiseDetectWidget"),
    ("napari_lidnet._widgets.navigator", "LesionNavigatorWidget"),
    ("napari_lidnet._widgets.roi_compare", "ROICompareWidget"),
    ("napari_lidnet._widgets.finetune", "FineTuneWidget"),
)


@pytest.fixture(autouse=True)
def docks_get_the_viewer_as_napari_gives_it(request, monkeypatch):
    """Every dock a test makes gets what napari's Plugins menu gives one: a ``PublicOnlyProxy`` of the viewer, which
    hands out a new proxy of a layer at each access (so ``id()``, ``is`` and weak references of layers got through
    it do not last), where a plain test viewer hands out the layers themselves."""
    if "make_napari_viewer" not in request.fixturenames:
        return
    import functools
    import importlib

    from napari.utils._proxies import PublicOnlyProxy

    for module, name in _DOCKS:
        cls = getattr(importlib.import_module(module), name)

        @functools.wraps(cls.__init__)
        def init(self, napari_viewer, *args, _init=cls.__init__, **kwargs):
            if not isinstance(napari_viewer, PublicOnlyProxy):
                napari_viewer = PublicOnlyProxy(napari_viewer)
            _init(self, napari_viewer, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", init)
