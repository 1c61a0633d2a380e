"""The inference engine: batching, slices, tiling, out-of-memory fallbacks, progress/cancel and the result cache."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from napari_lidnet import inference as inf
from napari_lidnet.models.denoisers import build_denoiser
from napari_lidnet.models.detector import LesionDetector


def _noisy(shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """A soft-tissue disk in air with Gaussian noise, HU."""
    rng = np.random.default_rng(seed)
    h, w = shape[-2:]
    yy, xx = np.mgrid[:h, :w]
    body = ((yy - h / 2) ** 2 / (0.4 * h) ** 2 + (xx - w / 2) ** 2 / (0.45 * w) ** 2) < 1
    img = np.where(body, 40.0, -1000.0).astype(np.float32)
    return (np.broadcast_to(img, shape) + rng.normal(0, 30, shape)).astype(np.float32)


def _fastdn(seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    model = build_denoiser("fastdn", **{"width": 8, "blocks": 1, **kwargs})
    nn.init.normal_(model.tail.weight, std=0.05)  # the tail starts at zero (identity): make it do something
    return model.eval()


class SmoothOOM(nn.Module):
    """3x3 mean filter (replicate edges) that raises a CUDA-style OOM error above ``max_pixels`` per call, or on
    any device but the CPU when ``cpu_only``: drives the fallback path with a real computation."""

    def __init__(self, max_pixels: int, cpu_only: bool = False) -> None:
        super().__init__()
        self.max_pixels, self.cpu_only = max_pixels, cpu_only
        self.calls: list[tuple[str, tuple[int, ...]]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((x.device.type, tuple(x.shape)))
        if x.numel() > self.max_pixels or (self.cpu_only and x.device.type != "cpu"):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)


def _smooth_ref(hu: np.ndarray) -> np.ndarray:
    """What ``denoise`` returns for the 3x3 mean filter: its output held at the air floor (``LOWEST_HU``)."""
    smooth = ndimage.uniform_filter(hu.astype(np.float64), size=(1, 3, 3), mode="nearest").astype(np.float32)
    return np.maximum(smooth, np.minimum(hu, inf.LOWEST_HU))


class BlobDetector(nn.Module):
    """Bounding boxes of connected regions above 500 HU (score = peak HU / 1000), for checking tile merging."""

    def detect(self, x: torch.Tensor, score_threshold: float = 0.05, max_detections: int = 50) -> list:
        out = []
        for img in x[:, 0].cpu().numpy():
            lab, n = ndimage.label(img > 0.5)
            boxes, scores = [], []
            for k, sl in enumerate(ndimage.find_objects(lab), start=1):
                boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
                scores.append(float(img[lab == k].max()))
            order = np.argsort(scores)[::-1][:max_detections]
            out.append(
                (
                    torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)[order.copy()],
                    torch.tensor(scores)[order.copy()],
                )
            )
        return out


def _sorted_rows(rows: np.ndarray) -> np.ndarray:
    return rows[np.lexsort(rows.T[::-1])]


def test_volume_equals_slice_by_slice_and_slice_selection() -> None:
    model = _fastdn()
    vol = _noisy((5, 64, 72))
    out = inf.denoise(model, vol, batch_size=3)
    assert out.shape == vol.shape and out.dtype == np.float32
    assert np.abs(out - vol).max() > 1.0  # the model changes the image
    single = np.stack([inf.denoise(model, s) for s in vol])
    np.testing.assert_allclose(out, single, atol=1e-3)
    np.testing.assert_allclose(inf.denoise(model, vol, slices=[4, 1]), out[[4, 1]], atol=1e-3)
    np.testing.assert_allclose(inf.denoise(model, vol, slices=range(2, 4)), out[2:4], atol=1e-3)
    with pytest.raises(ValueError, match="out of range"):
        inf.denoise(model, vol, slices=[5])


def test_tile_spans_cover_align_and_overlap() -> None:
    for length in (97, 300, 513, 1000, 2049):
        spans = inf.tile_spans(length, 256, 64)
        assert spans[0][0] == 0 and spans[-1][1] == length
        assert all(s % inf.TILE_ALIGN == 0 for s, _ in spans)
        for (s0, e0), (s1, _) in zip(spans, spans[1:]):
            assert s1 > s0 and e0 - s1 >= 64
        assert all(e - s <= 256 + inf.TILE_ALIGN - 1 for s, e in spans)
    with pytest.raises(ValueError, match="too small"):
        inf.tile_spans(1000, 100, 64)


def test_tiled_equals_untiled_for_conv_nets() -> None:
    torch.manual_seed(1)
    dncnn = build_denoiser("dncnn", depth=5, width=8, batch_norm=False).eval()  # receptive radius 5 px
    img = _noisy((1, 200, 170), seed=2)
    whole = inf.denoise(dncnn, img, tile_size=4096)
    tiled = inf.denoise(dncnn, img, tile_size=80, overlap=32)  # 8 px zero margin >= radius: exact
    assert np.abs(whole - img).max() > 1.0
    np.testing.assert_allclose(tiled, whole, atol=1e-2)

    fast = _fastdn(seed=3)
    img = _noisy((1, 400, 352), seed=3)
    whole = inf.denoise(fast, img, tile_size=4096)
    tiled = inf.denoise(fast, img, tile_size=320, overlap=128)
    assert np.abs(tiled - whole).max() < 0.5  # HU, against differences of several HU made by the model
    assert np.abs(whole - img).max() > 5.0


def test_oom_falls_back_to_smaller_batches_then_tiles() -> None:
    vol = _noisy((4, 256, 256), seed=4)
    model = SmoothOOM(max_pixels=200 * 200)
    notices: list[str] = []
    out = inf.denoise(model, vol, batch_size=4, overlap=32, notice=notices.append)
    np.testing.assert_allclose(out, _smooth_ref(vol), atol=1e-3)
    assert any("batch size 2" in n for n in notices) and any("batch size 1" in n for n in notices)
    assert any("tiles of 128" in n for n in notices)
    assert max(s[0] * s[2] * s[3] for _, s in model.calls) == 4 * 256 * 256  # it did try the big batch first


def test_oom_falls_back_to_cpu_and_gives_up_on_cpu() -> None:
    vol = _noisy((2, 96, 96), seed=5)
    model = SmoothOOM(max_pixels=10**9, cpu_only=True)
    notices: list[str] = []
    out = inf.denoise(model, vol, device=torch.device("meta"), batch_size=2, overlap=8, notice=notices.append)
    np.testing.assert_allclose(out, _smooth_ref(vol), atol=1e-3)
    assert "CPU" in notices[-1] and [d for d, _ in model.calls][-1] == "cpu"
    no_notice = pytest.warns(RuntimeWarning, match="out of memory")  # no notice given: each retry is a warning
    with pytest.raises(RuntimeError, match="even with batch size 1"), no_notice:
        inf.denoise(SmoothOOM(max_pixels=10), vol, overlap=8)


def test_detect_batches_slices_and_tiles() -> None:
    torch.manual_seed(0)
    det = LesionDetector(width=4).train()
    vol = _noisy((3, 64, 64), seed=6)
    rows = inf.detect(det, vol, batch_size=2, score_threshold=0.0)
    assert det.training  # the caller's mode is restored
    assert rows.shape[1] == 6 and set(np.unique(rows[:, 0])) == {0, 1, 2}
    single = np.vstack([inf.detect(det, vol[k], score_threshold=0.0) + [k, 0, 0, 0, 0, 0] for k in range(3)])
    np.testing.assert_allclose(_sorted_rows(rows), _sorted_rows(single), atol=1e-4)
    sub = inf.detect(det, vol, slices=[2], score_threshold=0.0)
    np.testing.assert_allclose(_sorted_rows(sub), _sorted_rows(rows[rows[:, 0] == 2]), atol=1e-4)

    # tiles: blobs anywhere (also across tile borders) are found once, with their full box
    img = np.full((1, 600, 560), -1000.0, np.float32)
    rng = np.random.default_rng(0)
    for k in range(40):
        cy, cx = rng.integers(8, 590), rng.integers(8, 550)
        yy, xx = np.ogrid[:600, :560]
        img[0][(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = 600.0 + 10 * k
    whole = inf.detect(BlobDetector(), img, tile_size=4096, max_detections=100)
    tiled = inf.detect(BlobDetector(), img, tile_size=256, overlap=64, max_detections=100)
    assert len(whole) > 20
    np.testing.assert_allclose(_sorted_rows(tiled), _sorted_rows(whole))


def test_progress_and_cancel_between_batches() -> None:
    model = _fastdn()
    vol = _noisy((6, 32, 32))
    seen: list[tuple[int, int]] = []
    inf.denoise(model, vol, batch_size=2, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(2, 6), (4, 6), (6, 6)]
    model.train()
    with pytest.raises(inf.Cancelled):
        inf.denoise(model, vol, batch_size=2, cancel=lambda: True)
    assert model.training


def test_the_cache_is_bounded_by_the_machine_s_memory() -> None:
    """A study's denoised volumes are 0.3-1 GB each: the cache keeps at most 2 GiB, and at most an eighth of the
    machine's memory (a 4 GiB laptop: 512 MiB), and lets the oldest go past its bound."""
    assert inf.cache_bytes(4 << 30) == 512 << 20 and inf.cache_bytes(64 << 30) == 2 << 30
    assert 0 < inf.ResultCache().max_bytes <= 2 << 30
    cache = inf.ResultCache(max_bytes=3 * 4000)
    for k in range(4):
        cache.put(k, np.zeros(1000, np.float32))  # 4000 bytes each
    assert len(cache) == 3 and cache.get(0) is None and cache.get(3) is not None


def test_pipeline_cache_hits_and_misses() -> None:
    den, det = _fastdn(), LesionDetector(width=4).eval()
    vol = _noisy((3, 48, 48), seed=7)
    cache = inf.ResultCache()
    first = inf.run_pipeline(vol, den, det, "cpu", cache=cache, slices=[1, 2])
    assert first.cached == {"denoise": False, "detect": False} and first.denoised.shape == (2, 48, 48)
    assert set(np.unique(first.boxes[:, 0])) <= {1.0, 2.0} and len(first.boxes)
    assert first.boxes[:, 5].min() >= inf.BOX_FLOOR
    np.testing.assert_allclose(first.denoised, inf.denoise(den, vol)[1:], atol=1e-3)

    again = inf.run_pipeline(vol, den, det, "cpu", cache=cache, slices=[1, 2])
    assert again.cached == {"denoise": True, "detect": True} and cache.hits == 2
    assert again.denoised is first.denoised and again.boxes is first.boxes
    assert not again.denoised.flags.writeable

    with torch.no_grad():
        den.tail.bias.add_(0.001)  # fine-tuned in place: a new model for the cache
    changed = inf.run_pipeline(vol, den, det, "cpu", cache=cache, slices=[1, 2])
    assert changed.cached == {"denoise": False, "detect": False}
    other = inf.run_pipeline(vol, None, det, "cpu", cache=cache, slices=[1, 2])
    assert other.denoised is None and other.cached == {"detect": False}


def test_a_new_strength_reuses_both_stages_and_keeps_the_boxes() -> None:
    """Regression on a 64-slice chest: each new strength re-ran both networks (4-5 min on a CPU) and moved the
    boxes. A blind denoiser's strength is applied after both stages: the detector reads the fully denoised slices,
    the cached stages serve, and the output is the direct call's (``denoise(..., remove_sd=)``) with the cached
    blind output untouched."""
    den, det = SmoothOOM(max_pixels=10**9), LesionDetector(width=4).eval()  # a mean filter: a real residual
    vol = _noisy((3, 48, 48), seed=8)
    cache = inf.ResultCache()
    blind = inf.run_pipeline(vol, den, det, "cpu", cache=cache)
    for remove_sd, leave_sd in ((10.0, None), (None, 12.0)):
        settings = inf.InferenceSettings(remove_sd=remove_sd, leave_sd=leave_sd)
        run = inf.run_pipeline(vol, den, det, "cpu", cache=cache, settings=settings)
        assert run.cached == {"denoise": True, "detect": True}
        np.testing.assert_array_equal(run.boxes, blind.boxes)
        direct = inf.denoise(den, vol, remove_sd=remove_sd, leave_sd=leave_sd)
        np.testing.assert_allclose(run.denoised, direct, atol=1e-4)
        assert np.abs(run.denoised - blind.denoised).max() > 1.0  # noise was put back
    np.testing.assert_allclose(blind.denoised, inf.denoise(den, vol), atol=1e-4)  # the cached one as it was
    seen: list[tuple[int, int]] = []  # the strength step reports its slices, and a cancel there stops the run
    with pytest.raises(inf.Cancelled):
        inf.run_pipeline(vol, den, det, "cpu", cache=cache, settings=inf.InferenceSettings(remove_sd=5.0),
                         progress=lambda d, t: seen.append((d, t)), cancel=lambda: len(seen) == 3)  # fmt: skip
    assert seen == [(3, 9), (6, 9), (7, 9)]  # both stages from the cache, then the first strengthened slice
    seen.clear()  # leaving 0 HU is removing it all: the blind run itself, no strength step
    inf.run_pipeline(vol, den, det, "cpu", cache=cache, settings=inf.InferenceSettings(leave_sd=0.0),
                     progress=lambda d, t: seen.append((d, t)))  # fmt: skip
    assert seen[-1] == (6, 6)
    alone = inf.run_pipeline(vol, None, det, "cpu", cache=cache, settings=inf.InferenceSettings(remove_sd=5.0))
    assert alone.cached == {"detect": False}  # detection of the input itself: the strength is no part of it
    assert inf.run_pipeline(vol, None, det, "cpu", cache=cache).cached == {"detect": True}
    with pytest.raises(ValueError, match="not both"):
        inf.run_pipeline(vol, den, det, "cpu", settings=inf.InferenceSettings(remove_sd=1.0, leave_sd=2.0))


def test_filter_boxes_and_errors() -> None:
    rows = np.array([[0, 1, 1, 5, 5, 0.9], [1, 2, 2, 6, 6, 0.2]], np.float32)
    assert len(inf.filter_boxes(rows, 0.5)) == 1 and len(inf.filter_boxes(rows, 0.1)) == 2
    with pytest.raises(ValueError, match="2D slice or a 3D volume"):
        inf.denoise(_fastdn(), np.zeros((2, 2, 8, 8), np.float32))
    assert inf.is_oom_error(RuntimeError("CUDA out of memory")) and not inf.is_oom_error(RuntimeError("shape"))


def test_nan_or_infinite_pixels_are_refused_by_the_api_before_anything_runs() -> None:
    """Regression: through the Python API one NaN pixel silently removed every box of its slice, and a
    10 x 10 NaN patch came back as thousands of NaN pixels. Both calls and the pipeline now refuse, naming it."""
    hu = _noisy((3, 64, 64))
    hu[1, 0, 0] = np.nan
    hu[2, 5, 5] = np.inf
    det = LesionDetector(width=4).eval()
    with pytest.raises(ValueError, match=r"slice 1: 1 of 4096 pixels are NaN \(first at index \(0, 0\)\); CT input"):
        inf.denoise(_fastdn(), hu)
    with pytest.raises(ValueError, match=r"slice 1: .* NaN"):
        inf.detect(det, hu, score_threshold=0.0)
    with pytest.raises(ValueError, match=r"slice 2: .* infinite"):
        inf.run_pipeline(hu, denoiser=_fastdn(), detector=det, slices=[0, 2])
    assert inf.detect(det, hu, score_threshold=0.0, slices=[0]).shape[1] == 6  # the finite slice alone runs


def test_values_no_ct_holds_are_refused_by_the_api_and_a_y_x_z_stack_is_warned_about() -> None:
    """Regression: +-1e30 "HU" overflowed float32 in the network (numpy warnings) and came back as +-2.6e30; now
    refused as NaN is, while real extremes (-3024 padding, 30000 HU metal) run. The (y, x, z) warning uses the
    command line's rule (io.checks.looks_like_yxz): a (128, 128, 12) stack is warned about, (12, 128, 128) not."""
    hu = _noisy((2, 64, 64))
    hu[0, :4], hu[1, 9, 9] = -3024.0, 30000.0
    assert np.isfinite(inf.denoise(_fastdn(), hu)).all()
    hu[1, 0, 0] = -1e30
    with pytest.raises(ValueError, match=r"slice 1: 1 of 4096 pixels lie beyond \+-100000 HU .*no CT holds; CT input"):
        inf.denoise(_fastdn(), hu)
    with pytest.warns(UserWarning, match=r"slices of 128 x 12 pixels, 128 of them: if the array is \(y, x, z\)"):
        inf.denoise(_fastdn(), _noisy((128, 128, 12)), slices=[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inf.denoise(_fastdn(), _noisy((12, 128, 128)), slices=[0])


def test_a_detector_with_a_pixel_size_sees_each_slice_at_that_size() -> None:
    """``detect_mm``: a slice of 0.35 mm pixels is detected as the same image resampled to 0.7 mm would be, the
    boxes mapped back to its own pixels (x2); without a pixel size, or within 2% of it, nothing is resampled."""
    from scipy import ndimage as ndi

    from napari_lidnet.models.detector import with_detect_mm

    torch.manual_seed(0)
    native = LesionDetector(width=4).eval()
    sized = with_detect_mm(native, 0.7)
    hu = _noisy((2, 96, 128))
    half = ndi.zoom(hu, (1, 0.5, 0.5), order=1, grid_mode=True, mode="nearest")
    want = inf.detect(native, half, score_threshold=0.0)
    got = inf.detect(sized, hu, score_threshold=0.0, pixel_mm=(0.35, 0.35))
    want[:, 1:5] *= 2
    np.testing.assert_allclose(_sorted_rows(got), _sorted_rows(want), atol=1e-3)
    same = inf.detect(native, hu, score_threshold=0.0)
    for kwargs in ({}, {"pixel_mm": (0.69, 0.71)}):  # no size given; within 2%
        rows = inf.detect(sized, hu, score_threshold=0.0, **kwargs)
        np.testing.assert_allclose(_sorted_rows(rows), _sorted_rows(same))
    with pytest.raises(ValueError, match="pixel size"):
        inf.detect(sized, hu, pixel_mm=(0.0, 0.7))
    with pytest.raises(ValueError, match="detect_mm must be a positive"):
        with_detect_mm(native, -1.0)


def test_edge_inputs_of_the_api_give_clear_results() -> None:
    """An inference review: an empty array has a fingerprint (an empty slice selection with a cache used to raise a
    memoryview TypeError), a negative tile overlap is refused in one line, and removing 0 HU of noise returns the
    input to the bit."""
    from napari_lidnet.inference import array_fingerprint, tile_spans
    from napari_lidnet.strength import keep_noise

    assert array_fingerprint(np.zeros((0, 8, 8), np.float32)) != array_fingerprint(np.zeros((0, 4, 4), np.float32))
    with pytest.raises(ValueError, match="overlap must be >= 0"):
        tile_spans(512, 128, -8)
    low = np.random.default_rng(0).normal(40, 20, (2, 32, 32)).astype(np.float32)
    assert np.array_equal(keep_noise(low, low * 0.5, 0.0), low)


@pytest.mark.parametrize("native", [False, True])
def test_cpu_bfloat16_only_where_native_and_only_for_models_that_declare_it(monkeypatch, native: bool) -> None:
    """On a CPU without native bfloat16 (or with amp off) the unet runs in float32, exactly as without autocast;
    with it the unet's result moves slightly (bfloat16 inside) and stays float32; a model without ``cpu_bf16``
    (DnCNN) is unaffected either way."""
    monkeypatch.setattr(inf, "cpu_has_bf16", lambda: native)
    torch.manual_seed(0)
    hu = np.random.default_rng(1).normal(40.0, 30.0, (2, 48, 64)).astype(np.float32)
    for arch, declares in (("unet", True), ("dncnn", False)):
        model = build_denoiser(arch).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))  # far from identity: the network's precision shows
        fp32 = inf.denoise(model, hu, amp=False)
        auto = inf.denoise(model, hu, amp=True)
        assert auto.dtype == np.float32
        if native and declares:
            assert 0.0 < float(np.abs(auto - fp32).max()) < 0.05 * float(np.abs(fp32 - hu).max())
        else:
            np.testing.assert_array_equal(auto, fp32)


def test_a_denoised_pixel_is_never_darker_than_air_unless_its_input_was() -> None:
    """Regression: on a real chest 2.3% of the denoised voxels were below -1024 HU (down to -1098), 99% of
    them where the scanner had stored -1024: the network undershoots in air. The output is held at -1024 there;
    a pixel whose input was lower (a reconstruction that stores less) keeps its own floor; tissue is untouched."""
    rng = np.random.default_rng(3)
    hu = np.full((2, 64, 64), -1024.0, np.float32)  # air as scanners clip it
    hu[:, 16:48, 16:48] = rng.normal(40, 30, (2, 32, 32))  # a body
    hu[0, 2, 2] = -1100.0  # one pixel below the clip
    model = _fastdn()
    out = inf.denoise(model, hu)
    raw = inf.net_to_hu(model(inf.hu_to_net(torch.from_numpy(hu)[:, None]))[:, 0]).detach().numpy()
    assert raw[hu <= -1024].min() < -1030  # this network does undershoot in air
    assert out[hu == -1024].min() >= -1024 and out[0, 2, 2] >= -1100 - 1e-3
    body = np.s_[:, 20:44, 20:44]
    np.testing.assert_allclose(out[body], raw[body], atol=1e-3)


def test_edge_inputs_refused_in_one_line_or_taken_as_meant() -> None:
    """Regression: an image with no pixels in a slice failed deep in torch; one pixel size for a detector
    that resamples to its own failed with "not enough values to unpack" (one value means square pixels elsewhere)."""
    den = build_denoiser("fastdn", width=8, blocks=1).eval()
    for shape in ((2, 0, 32), (0, 0)):
        with pytest.raises(ValueError, match=r"has no pixels in a slice"):
            inf.denoise(den, np.zeros(shape, np.float32))
    detector = LesionDetector(width=4).eval()
    detector.detect_mm = 0.8
    assert inf.detect_scale(detector, 0.4) == inf.detect_scale(detector, (0.4, 0.4)) == (0.5, 0.5)
    with pytest.raises(ValueError, match=r"pixel size \[0.0, 0.8\] must be two positive"):
        inf.detect_scale(detector, (0.0, 0.8))


def test_a_swapped_model_or_an_image_that_cannot_be_hu_is_refused_before_any_work() -> None:
    """A detector given to ``denoise`` (or the pipeline's two models swapped) and a mask or 8-bit display image as
    input: one line saying what is wrong, not an error from deep inside the network; a list and a CPU tensor of
    HU are read as the array they hold."""
    hu = _noisy((1, 32, 32))
    den, det = _fastdn(), BlobDetector()
    with pytest.raises(ValueError, match="expected a denoiser model, got a lesion detector"):
        inf.denoise(det, hu)
    with pytest.raises(ValueError, match="expected a detector model, got a FastDenoiser"):
        inf.detect(den, hu)
    with pytest.raises(ValueError, match="expected a denoiser model"):
        inf.run_pipeline(hu, det, den, device="cpu")
    for bad in (hu > 0, np.clip(hu + 1000, 0, 255).astype(np.uint8), hu.astype(np.complex64)):
        with pytest.raises(ValueError, match=f"dtype {bad.dtype} cannot hold CT values in HU"):
            inf.denoise(den, bad)
        with pytest.raises(ValueError, match="cannot hold CT values in HU"):
            inf.denoise(den, torch.from_numpy(bad))  # as a tensor too
    with pytest.raises(ValueError, match=r"load_model returns \(model, card\)"):
        inf.denoise((den, {}), hu)
    with pytest.raises(ValueError, match="batch size 0 and tile size 1024 must be at least 1"):
        inf.denoise(den, hu, batch_size=0)
    with pytest.raises(ValueError, match=r"pixel size \(-0.7, -0.7\) must be positive"):
        inf.detect(det, hu, pixel_mm=(-0.7, -0.7))
    with pytest.warns(UserWarning, match="CT in HU was expected"):
        inf.denoise(den, hu / 1000.0)  # HU / 1000, as a network sees it: said
    mixed = np.stack([np.zeros_like(hu[0]), hu[0], hu[0] / 1000.0])  # a blank slice, one in HU, one not
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        inf.denoise(den, mixed, slices=[0, 1])  # a blank slice and HU: nothing to say
        inf.run_pipeline(mixed, den, None, device="cpu", slices=[2])  # the slice run is looked at: once
    assert [str(w.message)[:8] for w in said] == ["slice 2:"], [str(w.message) for w in said]
    with pytest.warns(UserWarning, match=r"slices of 32 x 4 pixels, 32 of them: if the array is \(y, x, z\)"):
        inf.denoise(den, np.moveaxis(_noisy((4, 32, 32)), 0, -1))  # nibabel's axis order, said
    want = inf.denoise(den, hu)
    np.testing.assert_array_equal(inf.denoise(den, np.stack([hu[0], hu[0]]), slices=-1), want)  # -1: the last
    told = inf.run_pipeline(hu, den, None, device="cpu", remove_sd=5.0).denoised  # a setting given directly
    np.testing.assert_array_equal(told, inf.denoise(den, hu, remove_sd=5.0))
    for pixel in (0.7, [0.7, 0.7], np.array([2.5, 0.7, 0.7])):  # a number, a list, a volume's spacing: (0.7, 0.7)
        assert inf.InferenceSettings(pixel_mm=pixel).key() == inf.InferenceSettings(pixel_mm=(0.7, 0.7)).key()
    rows = inf.run_pipeline(hu, None, det, device="cpu", pixel_mm=[0.7, 0.7], cache=inf.ResultCache()).boxes
    np.testing.assert_array_equal(rows, inf.detect(det, hu, pixel_mm=0.7))
    with pytest.raises(ValueError, match="give settings= or its fields"):
        inf.run_pipeline(hu, den, None, device="cpu", batch_size=2, settings=inf.InferenceSettings())
    np.testing.assert_array_equal(inf.denoise(den, hu.tolist()), want)
    np.testing.assert_array_equal(inf.denoise(den, torch.from_numpy(hu)), want)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the fallback of a machine without CUDA")
def test_cuda_asked_on_a_machine_without_it_runs_on_the_cpu_and_says_so() -> None:
    """``device="cuda"`` or ``torch.device("cuda")``, in the inference calls and in ``load_model``: the CPU, with a
    RuntimeWarning when no ``notice`` is given (a script's call), the notice otherwise."""
    from napari_lidnet.models.registry import load_model

    hu = _noisy((1, 32, 32))
    den = _fastdn()
    want = inf.denoise(den, hu)
    for device in ("cuda", torch.device("cuda")):
        with pytest.warns(RuntimeWarning, match="CUDA is not available: falling back to the CPU") as said:
            np.testing.assert_array_equal(inf.denoise(den, hu, device=device), want)
        assert said[0].filename == __file__  # the warning points at the caller's line, not into the package
    with pytest.warns(RuntimeWarning, match="CUDA is not available"):  # the pipeline too, besides its notices
        assert inf.run_pipeline(hu, den, None, device="cuda").notices
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inf.denoise(den, hu, device="auto")  # "auto" on a machine without a GPU: as asked, no warning
    told: list[str] = []
    inf.denoise(den, hu, device=torch.device("cuda"), notice=told.append)
    assert told == ["cuda requested but CUDA is not available: falling back to the CPU"]
    with pytest.warns(RuntimeWarning, match="CUDA is not available"):
        model, _ = load_model("default", "denoiser", device="cuda")
    assert next(model.parameters()).device.type == "cpu"
    with pytest.raises(ValueError, match=r"say which network, load_model\('default', 'denoiser'\)"):
        load_model("default")
