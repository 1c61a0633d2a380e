"""Self-supervised adaptation on low-dose scans alone: guard rails, neighbour targets, blind spots, a tiny run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_lidnet._training.adapt_data import contiguous_runs, neighbour_target, prepare_adapt, slice_positions
from napari_lidnet._training.adapt_patches import BlindSpotPatches, NeighbourPatches, blindspot_input
from napari_lidnet._training.selfsup import AdaptOutcome, adapt_job, adapt_summary
from napari_lidnet.io.volume import CTVolume
from napari_lidnet.models.registry import MODEL_DIR_ENV, load_model

SIZE = 64


def low_dose_volume(
    n: int = 5, size: int = SIZE, pixel: float = 0.8, seed: int = 0, slice_mm: float = 2.5, **meta
) -> CTVolume:
    """A body (40 HU) with an organ (90 HU) and fat (-100 HU), the same anatomy on every slice, independent
    FBP-like correlated noise (SD ~30 HU) per slice."""
    yy, xx = (np.mgrid[:size, :size] - size / 2) / size
    body = np.full((size, size), -1000.0, np.float32)
    body[(yy / 0.45) ** 2 + (xx / 0.47) ** 2 < 1] = 40.0
    body[((yy + 0.1) / 0.15) ** 2 + ((xx - 0.1) / 0.2) ** 2 < 1] = 90.0
    body[(yy / 0.1) ** 2 + ((xx + 0.25) / 0.08) ** 2 < 1] = -100.0
    rng = np.random.default_rng(seed)
    noise = ndi.gaussian_filter(rng.standard_normal((n, size, size)), (0, 0.7, 0.7)) * 30 / 0.4
    return CTVolume(body[None] + noise.astype(np.float32), (slice_mm, pixel, pixel), name="lowdose", metadata=meta)


@pytest.fixture
def empty_model_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A user model folder with one tiny fresh fastdn (``fresh_denoiser``) to start from; its last layer starts
    large, so it adds structured noise (as conftest's tiny models): a model that does not suit this scanner."""
    import torch

    from napari_lidnet.models.denoisers import build_denoiser
    from napari_lidnet.models.weights import save_weights

    folder = tmp_path / "models"
    monkeypatch.setenv(MODEL_DIR_ENV, str(folder))
    torch.manual_seed(0)
    model = build_denoiser("fastdn", width=8, blocks=1)
    torch.nn.init.normal_(model.tail.weight, std=0.2)
    save_weights(model, folder / "fresh_denoiser")
    return folder


# ------------------------------------------------------------------------------------------------ guard rails


@pytest.mark.parametrize(
    ("volumes", "scheme", "message"),
    [
        ([], "neighbours", "no low-dose volume to adapt on: open a CT series"),
        ([low_dose_volume()], "noise2void", "unknown scheme 'noise2void': use 'neighbours'"),
        (
            [CTVolume(low_dose_volume().hu[0], (0.8, 0.8), name="one slice")],
            "neighbours",
            r"one slice: scheme 'neighbours' needs >= 3 contiguous slices, this input has 1: open the whole series, "
            r"or use scheme 'blindspot'",
        ),
        (
            [low_dose_volume(n=2)],
            "neighbours",
            r"needs >= 3 contiguous slices, this input has 2",
        ),
        (
            [low_dose_volume(n=6, slice_positions_mm=[0.0, 2.5, 10.0, 12.5, 20.0, 22.5])],
            "neighbours",
            r"lowdose: slice gaps of up to 7.5 mm \(over 2x the median spacing 2.5 mm\) leave no run of >= 3 "
            r"contiguous slices: give a contiguous series, or use scheme 'blindspot'",
        ),
        (
            [low_dose_volume(), low_dose_volume(pixel=0.9)],
            "blindspot",
            r"the volumes have different pixel spacings \(0.8, 0.9 mm\): adapt on one series at a time, or resample "
            r"them to one pixel size first \(nothing is resampled here\)",
        ),
        (
            [CTVolume(low_dose_volume().hu, (2.5, 0.8, 1.0), name="stretched")],
            "neighbours",
            r"stretched: pixels are not square \(0.8 x 1 mm\): resample to square pixels",
        ),
        (
            [CTVolume(np.full((3, 64, 64), -1000.0, np.float32), (2.5, 0.8, 0.8), name="air")],
            "blindspot",
            r"air: no uniform soft-tissue region \(-200..300 HU\) to measure the noise correlation length: give the "
            r"blind-zone radius",
        ),
    ],
)
def test_guard_rails(volumes: list, scheme: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prepare_adapt(volumes, scheme, patch_size=32)


def test_guard_rails_of_patches_and_boxes() -> None:
    with pytest.raises(ValueError, match=r"lowdose: slices of 64 x 64 px are smaller than the patch size 96: use a"):
        prepare_adapt(low_dose_volume(), "neighbours", patch_size=96)
    with pytest.raises(ValueError, match=r"boxes: 2 arrays for 1 volumes: give one \(N, 5\) array"):
        prepare_adapt(low_dose_volume(), "neighbours", 32, boxes=[np.zeros((0, 5)), np.zeros((0, 5))])


def test_the_job_refuses_a_told_denoiser(empty_model_dir: Path) -> None:
    """Adaptation trains the blind network: a told unet's conditioning maps would go stale, so it is refused."""
    from napari_lidnet.models.denoisers import UNetDenoiser
    from napari_lidnet.models.weights import save_weights

    save_weights(UNetDenoiser(width=4, levels=2, told=True), empty_model_dir / "told_denoiser")
    with pytest.raises(ValueError, match="told_denoiser: a told denoiser"):
        list(adapt_job([low_dose_volume()], "new", steps=2, from_model="told_denoiser", device="cpu", patch_size=32))
    with pytest.raises(ValueError, match="the starting denoiser: a told denoiser"):
        list(adapt_job([low_dose_volume()], "new", steps=2, from_model=UNetDenoiser(width=4, levels=2, told=True),
                       device="cpu", patch_size=32))  # fmt: skip
    assert not any(p.name.startswith("new") for p in empty_model_dir.iterdir())  # nothing exported


def test_the_job_refuses_a_taken_name_and_no_steps(empty_model_dir: Path) -> None:
    with pytest.raises(FileExistsError, match="a model named 'fresh' already exists .*; choose another name"):
        next(adapt_job([low_dose_volume()], "fresh", steps=5, from_model="fresh_denoiser"))
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        next(adapt_job([low_dose_volume()], "new", steps=0, from_model="fresh_denoiser"))
    with pytest.raises(ValueError, match="model name 'a b'"):
        next(adapt_job([low_dose_volume()], "a b", steps=5, from_model="fresh_denoiser"))


# ------------------------------------------------------------------------------------------------ scheme A


def test_the_target_of_slice_z_is_the_mean_of_its_neighbours() -> None:
    hu = np.random.default_rng(0).normal(size=(5, 8, 8)).astype(np.float32)
    assert np.allclose(neighbour_target(hu, 2), (hu[1] + hu[3]) / 2)
    with pytest.raises(ValueError, match="no neighbour on both sides"):
        neighbour_target(hu, 4)
    # constant slices make every patch identifiable: input slice z, target (v[z-1] + v[z+1]) / 2, z never an end
    values = np.array([0.0, 70.0, 30.0, 110.0, 50.0, -20.0], np.float32)
    vol = CTVolume(np.broadcast_to(values[:, None, None], (6, 40, 40)).copy(), (2.5, 1.0, 1.0), name="steps")
    data = prepare_adapt(vol, "neighbours", patch_size=32)
    assert sorted(z for _, z in data.items) == [1, 2, 3, 4]
    inp, tgt, weight = NeighbourPatches(data, 32, consistency=False).batch(np.random.default_rng(1), 16)
    for x, t in zip(inp[:, 0], tgt[:, 0]):
        z = int(np.flatnonzero(values == x[0, 0])[0])
        assert 1 <= z <= 4 and np.all(x == values[z]) and np.allclose(t, (values[z - 1] + values[z + 1]) / 2)
    assert np.all(weight == 1)


def test_pixels_whose_anatomy_changes_between_neighbours_weigh_less() -> None:
    vol = low_dose_volume(n=5, size=SIZE)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    vol.hu[3][(yy - 32) ** 2 + (xx - 32) ** 2 < 36] += 300.0  # a vessel appears on slice 3 only
    data = prepare_adapt(vol, "neighbours", patch_size=SIZE)
    patches = NeighbourPatches(data, SIZE, lesion_fraction=0.0)
    patches.items = [(0, 2)]  # slice 2: neighbours 1 and 3 disagree on the vessel
    _, _, weight = patches.batch(np.random.default_rng(0), 1)
    w = weight[0, 0]  # a patch covering the slice, flipped or turned: the vessel stays at the centre
    assert w[30:35, 30:35].max() < 0.2
    assert np.median(w) > 0.8


def test_overlapping_slices_are_flagged() -> None:
    data = prepare_adapt(low_dose_volume(slice_thickness=5.0), "neighbours", patch_size=32)
    assert any("5 mm slices every 2.5 mm overlap" in note for note in data.notes)
    assert not prepare_adapt(low_dose_volume(slice_thickness=1.0, slice_mm=1.0), "neighbours", patch_size=32).notes


def test_thick_slices_are_flagged_before_adapting() -> None:
    """Measured on real scans (benchmarks/adapt_real.py): 2.5-5 mm apart, neighbours are other anatomy."""
    thick = prepare_adapt(low_dose_volume(slice_thickness=2.5), "neighbours", patch_size=32).notes
    assert thick == ["lowdose: slices 2.5 mm apart: on real scans of 2.5-5 mm slices, adapting to neighbouring "
                     "slices mostly made the images worse (README, 'lidnet adapt'): keep the adapted model only if "
                     "its estimates say it is better, or adapt on a thin-slice reconstruction"]  # fmt: skip
    assert not prepare_adapt(low_dose_volume(slice_mm=2.0), "neighbours", patch_size=32).notes
    assert not any("apart" in n for n in prepare_adapt(low_dose_volume(), "blindspot", patch_size=32).notes)


def test_runs_split_at_gaps() -> None:
    assert contiguous_runs([0, 2.5, 5, 7.5, 20, 22.5, 25]) == [(0, 4), (4, 7)]
    assert contiguous_runs([0, 2.5, 5, 7.5, 12.5]) == [(0, 5)]  # a step of exactly 2x the median stays
    assert contiguous_runs([0, 2.5, 5, 7.5, 13.0]) == [(0, 4), (4, 5)]
    vol = low_dose_volume(n=7, slice_positions_mm=[0, 2.5, 5, 7.5, 20, 22.5, 25])
    data = prepare_adapt(vol, "neighbours", patch_size=32)
    assert data.runs == [[(0, 4), (4, 7)]]
    assert [z for _, z in data.items] == [1, 2, 5]  # slices 3 and 4 would take a neighbour across the gap
    assert any("split at slice gaps" in note for note in data.notes)


def test_slice_gaps_are_read_from_the_dicom_headers(tmp_path: Path) -> None:
    from conftest import write_series

    from napari_lidnet.io.open_ct import open_ct

    hu = np.rint(low_dose_volume(n=6, size=16).hu / 2) * 2
    write_series(
        tmp_path / "gap", np.clip(hu, -1000, 1000), series_uid="1.2.3.77", z_positions=[0, 2.5, 5, 7.5, 17.5, 20]
    )
    with pytest.warns(UserWarning, match="uneven slice spacing"):  # the reader's warning sends us to the headers
        vol = open_ct(tmp_path / "gap")[0]
    pos = slice_positions(vol)
    assert np.allclose(np.abs(np.diff(pos)), [2.5, 2.5, 2.5, 10.0, 2.5])
    assert contiguous_runs(pos) == [(0, 4), (4, 6)]


# ------------------------------------------------------------------------------------------------ scheme B


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_the_blind_zone_hides_the_centre_neighbourhood(radius: int) -> None:
    p = 48
    patch = np.random.default_rng(0).normal(40, 30, size=(p, p)).astype(np.float32)
    masked, centres, zone = blindspot_input(patch, radius, np.random.default_rng(radius))
    cy, cx = np.nonzero(centres)
    assert len(cy) >= 4 and np.all((cy >= 2 * radius + 1) & (cy < p - 2 * radius - 1))
    gaps = np.abs(np.stack([cy, cx], 1)[:, None] - np.stack([cy, cx], 1)[None]).max(-1)
    assert np.all(gaps[~np.eye(len(cy), dtype=bool)] >= 3 * radius + 3)
    assert np.array_equal(masked[~zone], patch[~zone])
    yy, xx = np.mgrid[:p, :p]
    for y, x in zip(cy, cx):
        disk = (yy - y) ** 2 + (xx - x) ** 2 <= radius**2
        assert zone[disk].all() and not zone[(yy - y) ** 2 + (xx - x) ** 2 == (radius + 1) ** 2].any()
        # whatever the centre's neighbourhood holds, the input there stays the same: nothing of it is seen
        changed = patch.copy()
        changed[disk] += 500.0
        again, _, _ = blindspot_input(changed, radius, np.random.default_rng(radius))
        assert np.array_equal(again[disk], masked[disk])


def test_blindspot_loss_only_on_centres_and_radius_from_the_noise() -> None:
    vol = low_dose_volume(n=5, size=128)
    data = prepare_adapt(vol, "blindspot", patch_size=48)
    assert 1.0 < data.correlation_length_px < 4.0 and data.blind_radius == int(np.ceil(data.correlation_length_px))
    inp, tgt, weight = BlindSpotPatches(data, 48).batch(np.random.default_rng(0), 4)
    assert set(np.unique(weight)) == {0.0, 1.0}
    assert np.all(inp[weight > 0] != tgt[weight > 0])  # the centres are hidden from the input
    assert prepare_adapt(vol, "blindspot", 48, blind_radius=5).blind_radius == 5


# ------------------------------------------------------------------------------------------------ the job


def run_job(job) -> tuple[list[dict], object]:
    records = []
    while True:
        try:
            records.append(next(job))
        except StopIteration as done:
            return records, done.value


def test_a_tiny_run_lowers_the_loss_and_exports_a_model(empty_model_dir: Path) -> None:
    vol = low_dose_volume()
    boxes = np.array([[2, 20, 20, 34, 30]], np.float32)
    job = adapt_job(
        [vol],
        "site",
        scheme="neighbours",
        steps=20,
        from_model="fresh_denoiser",
        boxes=[boxes],
        device="cpu",
        seed=0,
        batch_size=4,
        patch_size=32,
        lr=2e-3,
        command="lidnet adapt scan --name site",
    )
    records, outcome = run_job(job)
    steps = [r["step"] for r in records if r["stage"] == "adapt"]
    assert steps == list(range(1, 21)) and all(r["eta_s"] >= 0 for r in records if r["stage"] == "adapt")
    assert records[-1]["stage"] == "finished" and outcome.status == "finished"
    assert outcome.loss_after < 0.8 * outcome.loss_before
    est = [r for r in records if r["stage"] == "estimate"]
    assert set(est[0]["estimates"]) == {"input", "start"} and "adapted" in outcome.estimates
    adapted = outcome.estimates["adapted"]
    assert (
        adapted["noise_from"] == "slices"
        and np.isfinite([adapted["noise_sd_hu"], adapted["edge_sharpness_hu_per_mm"]]).all()
    )
    model, card = load_model("site_denoiser", "denoiser")
    assert card["arch"] == "fastdn" and card["config"]["width"] == 8
    sup = card["training"]["selfsup"]
    assert sup["scheme"] == "neighbours" and sup["steps_done"] == 20 and sup["lesion_boxes"] == 1
    assert sup["data"][0]["shape"] == [5, 64, 64] and sup["data"][0]["pixel_mm"] == 0.8
    assert sup["loss"]["after"] < sup["loss"]["before"]
    assert card["training"]["command"] == "lidnet adapt scan --name site"
    assert set(card["metrics"]["noreference"]) == {"input", "start", "adapted"}
    assert json.loads((empty_model_dir / "site_denoiser.json").read_text())["name"] == "site_denoiser"
    summary = adapt_summary(outcome)
    assert summary.startswith("saved site_denoiser; noise SD ") and "(adapted) HU/mm; self-supervised loss" in summary


def test_a_tiny_blindspot_run_on_one_slice_exports_a_model(empty_model_dir: Path) -> None:
    """Scheme B trains on a single slice (no neighbours); its blind radius and correlation length are recorded."""
    one = CTVolume(low_dose_volume(size=96).hu[0], (0.8, 0.8), name="one slice")
    records, outcome = run_job(
        adapt_job(one, "single", scheme="B", steps=5, from_model="fresh_denoiser", device="cpu", patch_size=48)
    )
    assert (
        outcome.status == "finished" and np.isfinite([r["losses"]["selfsup"] for r in records if "losses" in r]).all()
    )
    sup = load_model("single_denoiser", "denoiser")[1]["training"]["selfsup"]
    assert sup["scheme"] == "blindspot" and sup["blind_radius_px"] >= 1 and sup["correlation_length_px"] > 0
    assert sup["data"][0]["n_slices"] == 1


def test_a_dotted_name_and_a_name_taken_during_the_run(empty_model_dir: Path) -> None:
    """A name with a dot is kept whole; a name taken while the run trained gets -2 rather than overwriting."""
    from napari_lidnet.models.weights import save_weights

    job = adapt_job([low_dose_volume()], "site.v2", steps=2, from_model="fresh_denoiser", device="cpu", patch_size=32)
    records = []
    for rec in job:
        records.append(rec)
        if rec["stage"] == "adapt" and rec["step"] == 1:  # someone saves a model of that name meanwhile
            save_weights(load_model("fresh_denoiser", "denoiser")[0], empty_model_dir / "site.v2_denoiser")
    assert "saved site.v2-2_denoiser ('site.v2' was taken while this run trained)" in records[-1]["message"]
    assert (empty_model_dir / "site.v2-2_denoiser.json").exists()
    assert load_model("site.v2-2_denoiser", "denoiser")[1]["name"] == "site.v2-2_denoiser"
    assert load_model("site.v2_denoiser", "denoiser")[1].get("training", {}).get("selfsup") is None


def test_stop_ends_the_run_within_one_step(empty_model_dir: Path) -> None:
    seen = []

    def stop() -> bool:
        return len(seen) >= 3

    job = adapt_job(
        [low_dose_volume()],
        "early",
        steps=50,
        from_model="fresh_denoiser",
        device="cpu",
        patch_size=32,
        should_stop=stop,
    )
    records = []
    while True:
        try:
            rec = next(job)
        except StopIteration as done:
            outcome = done.value
            break
        records.append(rec)
        if rec["stage"] == "adapt":
            seen.append(rec)
    assert [r["step"] for r in seen] == [1, 2, 3]
    assert outcome.status == "stopped" and records[-1]["stage"] == "stopped" and outcome.steps_done == 3
    card = load_model("early_denoiser", "denoiser")[1]
    assert card["training"]["selfsup"]["stopped_early"] and card["training"]["selfsup"]["steps_done"] == 3


def test_nothing_is_exported_when_stopped_before_the_first_step(empty_model_dir: Path) -> None:
    job = adapt_job(
        [low_dose_volume()],
        "never",
        steps=50,
        from_model="fresh_denoiser",
        device="cpu",
        patch_size=32,
        should_stop=lambda: True,
    )
    records, outcome = run_job(job)
    assert not [r for r in records if r["stage"] == "adapt"]
    assert outcome.status == "stopped" and outcome.exported == [] and "nothing was saved" in outcome.message
    assert not list(empty_model_dir.glob("never_*"))


def test_the_summary_says_when_the_adapted_model_is_worse_than_the_start() -> None:
    """Measured without a reference: more noise left and no sharper edges than the starting model is a caveat;
    less noise (or sharper edges) is not."""
    est = {"start": {"noise_sd_hu": 2.0, "edge_sharpness_hu_per_mm": 64.0},
           "adapted": {"noise_sd_hu": 2.7, "edge_sharpness_hu_per_mm": 63.8}}  # fmt: skip
    worse = adapt_summary(AdaptOutcome("finished", "saved site_denoiser", "site", estimates=est))
    assert "keep using the starting model" in worse and "2.0 -> 2.7 HU" in worse
    est["adapted"]["noise_sd_hu"] = 1.5
    assert "keep using" not in adapt_summary(AdaptOutcome("finished", "saved site_denoiser", "site", estimates=est))
