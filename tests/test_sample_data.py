"""Sample data: layer tuples that napari accepts, placed in mm, windowed, with the true lesion boxes."""

import subprocess
import sys

import numpy as np
import pytest

from napari_lidnet import _sample_data as sd
from napari_lidnet.io.windowing import contrast_limits

N_SLICES, SIZE = 2, 128


@pytest.fixture
def small_sample(tmp_path, monkeypatch):
    monkeypatch.setattr(sd, "CACHE_DIR", tmp_path)
    sd._sample_arrays.cache_clear()
    yield sd.sample_abdomen(n_slices=N_SLICES, size=SIZE)
    sd._sample_arrays.cache_clear()


def test_sample_layers_in_viewer(make_napari_viewer, small_sample):
    viewer = make_napari_viewer()
    for data, kwargs, layer_type in small_sample:
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    low, full, truth = (viewer.layers[n] for n in (sd.LOW_NAME, sd.FULL_NAME, sd.TRUTH_NAME))
    spacing = (sd.SLICE_MM, 0.75, 0.75)
    for img in (low, full):
        assert img.data.shape == (N_SLICES, SIZE, SIZE) and img.data.dtype == np.float32
        np.testing.assert_allclose(img.scale, spacing)
        assert tuple(img.contrast_limits) == contrast_limits("soft tissue")
    assert low.metadata["normal_dose"] == sd.FULL_NAME  # ROI compare's default reference
    assert all(tuple(ly.axis_labels) == ("z", "y", "x") for ly in (low, full, truth))
    assert viewer.dims.axis_labels == ("z", "y", "x")  # not "-3", "-2", "-1"
    names = [ly.name for ly in viewer.layers]  # the low dose is drawn over its reference
    assert names.index(sd.LOW_NAME) > names.index(sd.FULL_NAME) and low.visible and low.opacity == 1
    # low dose is the noisier image of the same anatomy
    body = full.data > -500
    assert abs(float(np.median(low.data[body] - full.data[body]))) < 5
    assert np.std(low.data[body] - full.data[body]) > 5
    assert truth.nshapes >= 1 and set(truth.shape_type) == {"rectangle"}
    np.testing.assert_allclose(truth.scale, spacing)
    assert truth.ndim == 3 and all(s.shape == (4, 3) for s in truth.data)
    kinds = list(truth.features["label"])
    assert len(kinds) == truth.nshapes and all(k.split("_")[0] in ("liver", "spleen", "kidney") for k in kinds)
    np.testing.assert_allclose(truth.face_color[:, 3], 0)  # transparent faces
    assert np.all(truth.edge_color[:, 3] > 0)
    # every box sits on its slice, inside the image, around tissue
    for verts in truth.data:
        z = verts[0, 0]
        assert np.all(verts[:, 0] == z) and 0 <= z < N_SLICES
        assert np.all((verts[:, 1:] >= 0) & (verts[:, 1:] <= SIZE))


def test_sample_is_cached_and_deterministic(small_sample, tmp_path):
    hits = sd._sample_arrays.cache_info().hits
    again = sd.sample_abdomen(n_slices=N_SLICES, size=SIZE)
    assert sd._sample_arrays.cache_info().hits == hits + 1  # served from the in-process cache
    assert again[0][0] is not small_sample[0][0]  # callers get copies of the cached arrays
    np.testing.assert_array_equal(again[0][0], small_sample[0][0])
    assert len(list(tmp_path.glob("*.npz"))) == 1
    sd._sample_arrays.cache_clear()  # a new session: read back from the disk cache
    from_disk = sd.sample_abdomen(n_slices=N_SLICES, size=SIZE)
    for a, b in zip(from_disk, small_sample, strict=True):
        np.testing.assert_array_equal(np.asarray(a[0], dtype=float), np.asarray(b[0], dtype=float))
    assert from_disk[2][1]["features"]["label"] == small_sample[2][1]["features"]["label"]


def test_sample_module_does_not_import_torch():
    code = "import sys, napari_lidnet._sample_data; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
