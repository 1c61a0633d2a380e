"""Local fine-tuning data (layers, folders -> samples, checks) and the one-click job, headless (no viewer)."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from napari.layers import Image, Shapes

from napari_lidnet._training import finetune as fj
from napari_lidnet._training import local_data as ld
from napari_lidnet._widgets import layer_inputs as li
from napari_lidnet.layer_data import boxes_to_shapes
from napari_lidnet.models.detector import LesionDetector
from napari_lidnet.models.registry import list_models
from napari_lidnet.models.weights import load_weights

SCALE, TRANSLATE = (2.5, 0.7, 0.8), (10.0, -120.0, -100.0)


def phantom(n: int = 6, size: int = 64, noise: float = 80.0, seed: int = 0) -> tuple[np.ndarray, ...]:
    """(low, full, boxes (N,5)) HU volumes: a soft-tissue ellipse with two bright lesions per slice, Gaussian noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    full = np.full((n, size, size), -1000.0, np.float32)
    body = ((yy - size / 2) / (0.45 * size)) ** 2 + ((xx - size / 2) / (0.47 * size)) ** 2 < 1
    boxes = []
    r = size / 12
    for k in range(n):
        full[k][body] = 40.0
        for cy, cx in rng.integers(int(size * 0.3), int(size * 0.7), (2, 2)):
            full[k][(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = 140.0
            boxes.append([k, cx - r, cy - r, cx + r, cy + r])
    low = (full + rng.normal(0, noise, full.shape)).astype(np.float32)
    return low, full, np.asarray(boxes, np.float32)


def tiny_config(out: Path, **kw):
    values = dict(
        init_denoiser="tiny_denoiser",
        init_detector="tiny_detector",
        rounds=2,
        denoiser_steps=10,
        detector_steps=2,
        patch_size=32,
        batch_size=4,
        lr=2e-3,
        detector_lr=1e-3,
        val_fraction=0.34,
        device="cpu",
    )
    values.update(kw)
    return fj.one_click_config(out, **values)


# ------------------------------------------------------------------------------------------------ layers


def test_shapes_map_through_world_coordinates() -> None:
    low, full, boxes = phantom(n=3)
    image = Image(full, scale=SCALE, translate=TRANSLATE)
    # the Shapes layer lives in world units (scale 1): its rectangles must land on the same pixels
    shapes_px = boxes_to_shapes(boxes, 3)
    world = [np.array([image.data_to_world(v) for v in rect]) for rect in shapes_px]
    shapes = Shapes(world, shape_type="rectangle", name="drawn")
    got, problems = li.shapes_in_image(shapes, image)
    assert problems == []
    np.testing.assert_allclose(got, boxes, atol=1e-4)
    # 2D rectangles over a 3D image lie on the current slice; lines are reported, not used
    flat = Shapes(
        [np.array(image.data_to_world([0, 5, 6]))[1:] + [[0, 0], [0, 8], [8, 8], [8, 0]], np.zeros((2, 2)) + [1, 2]],
        shape_type=["rectangle", "line"],
        name="flat",
    )
    got, problems = li.shapes_in_image(flat, image, current_slice=2)
    assert got.shape == (1, 5) and got[0, 0] == 2
    np.testing.assert_allclose(got[0, 1:3], [6.5, 5.5], atol=1e-4)  # pixel centre (5, 6) -> pixel edges
    assert len(problems) == 1 and "line" in problems[0]
    _, problems = li.shapes_in_image(flat, image, current_slice=None)
    assert any("2D" in p for p in problems)


def test_boxes_go_to_the_image_that_holds_them() -> None:
    _, a, boxes = phantom(n=2, size=64, seed=1)
    _, b, _ = phantom(n=2, size=64, seed=2)
    img_a = Image(a, name="a")
    img_b = Image(b, name="b", translate=(0, 0, 100))  # to the right of a, no overlap
    rects = boxes_to_shapes(boxes[:2], 3) + boxes_to_shapes(np.array([[1, 110, 20, 120, 30]], float), 3)
    rects.append(rects[0] + [0, 0, 400])  # far outside both
    shapes = Shapes(rects, shape_type="rectangle", name="boxes")
    inputs, problems = li.inputs_from_layers([img_a, img_b], shapes)
    assert [len(i.boxes) for i in inputs] == [2, 1]
    np.testing.assert_allclose(inputs[1].boxes[0], [1, 10, 20, 20, 30], atol=1e-4)
    assert len(problems) == 1 and "outside every chosen image" in problems[0]


def test_check_inputs_lists_every_problem() -> None:
    low, full, boxes = phantom(n=1, size=48)
    bad_box = boxes.copy()
    bad_box[0, 3] = 70  # x2 beyond the 48-pixel image
    item = ld.CTInput("ct", full[0], 0.7, low_hu=low[0, :40], boxes=bad_box[:1], box_source="drawn")
    problems = ld.check_inputs([item], patch_size=64)
    text = "\n".join(problems)
    assert "differs from full-dose shape" in text
    assert "reach outside" in text
    assert "smaller than the patch size 64" in text and "48" in text
    assert "at least 2 slices" in text
    assert "only 1 lesion" in text and "pixel loss" in text
    assert len(problems) == 5
    # the same slice with a partner, enough boxes and a small patch is fine
    good = ld.CTInput("ct", full, 0.7, low_hu=low, boxes=boxes)
    _, full2, boxes2 = phantom(n=2, size=48)
    good = ld.CTInput("ct", full2, 0.7, low_hu=full2 + 1, boxes=boxes2)
    assert ld.check_inputs([good], patch_size=48) == []
    assert "cannot fine-tune" in str(ld.DataProblems(problems))
    # the same CT in 0-1 units (a normalised export): not HU, said before any low dose is simulated on it
    unit = ld.CTInput("ct", (full2 + 1024) / 4096, 0.7, boxes=boxes2)
    (problem,) = ld.check_inputs([unit], patch_size=48)
    assert "'ct' (full-dose): no pixel below -50 HU" in problem and "not CT in HU" in problem
    # paired layers: a problem of the full-dose image names that image (not the low one's)
    pair = ld.CTInput("low", full2 + 1, 0.7, low_hu=full2, boxes=boxes2, full_name="full in 0-1")
    pair.full_hu = (full2 + 1024) / 4096
    (problem,) = ld.check_inputs([pair], patch_size=48)
    assert problem.startswith("'full in 0-1' (full-dose): no pixel below -50 HU"), problem


def test_samples_split_volumes_simulate_low_dose_and_keep_boxes() -> None:
    _, full, boxes = phantom(n=3, size=64)
    item = ld.CTInput("vol", full, 2.0, boxes=boxes)
    flat = ld.CTInput("one", full[0], 2.0, boxes=boxes[boxes[:, 0] == 0])
    samples = ld.make_samples([item, flat], dose=0.1, seed=3)
    assert [s.name for s in samples] == ["vol#0", "vol#1", "vol#2", "one"]
    for z, s in enumerate(samples[:3]):
        np.testing.assert_allclose(s.boxes, boxes[boxes[:, 0] == z][:, 1:])
        assert s.low_hu.shape == s.full_hu.shape == (64, 64)
        noise = (s.low_hu - s.full_hu)[20:44, 20:44].std()
        assert noise > 3.0  # simulated quantum noise, not a copy
    again = ld.make_samples([ld.CTInput("vol", full, 2.0, boxes=boxes)], dose=0.1, seed=3)
    np.testing.assert_array_equal(again[1].low_hu, samples[1].low_hu)  # seeded
    assert not np.array_equal(samples[0].low_hu - full[0], samples[1].low_hu - full[1])


def test_simulated_partners_carry_the_noise_of_the_dose_on_a_noisy_scan() -> None:
    """Regression: a real chest with 60 HU of its own noise got 13-19 HU at 25% (a phantom's photon
    count), so the run learned to keep noise. The partners of a noisy scan are calibrated to its own noise in flat
    tissue (a quarter of the dose adds sqrt(3) times it), and the run says so."""
    from napari_lidnet.metrics.noreference import flat_block_noise_sds

    rng = np.random.default_rng(5)
    _, full, boxes = phantom(n=2, size=128)
    noisy = full + rng.normal(0, 25, full.shape).astype(np.float32) * (full > -500)
    gen, said = ld.iter_samples([ld.CTInput("scan", noisy, 0.7, boxes=boxes)], dose=0.25, seed=2), []
    while True:
        try:
            said.append(next(gen))
        except StopIteration as end:
            samples = end.value
            break
    assert any("scan: calibrated to the scan's own noise" in m for m in said), said
    for s in samples:
        own, added = flat_block_noise_sds(s.full_hu, [s.full_hu, s.low_hu - s.full_hu])
        assert added == pytest.approx(own * np.sqrt(3), rel=0.2), (own, added)


def test_a_long_volume_simulates_low_dose_on_every_kth_slice_and_every_lesion_slice() -> None:
    """Regression: a 300-slice study spent 25-90 min simulating every slice before the first step of a run
    that trains on a few hundred patches. At most about MAX_SIMULATED_SLICES evenly spaced slices, plus each slice
    with a box, get a partner; unannotated neighbours of a lesion stay out; a paired volume keeps every slice."""
    _, full, boxes = phantom(n=3 * ld.MAX_SIMULATED_SLICES + 2, size=32)
    n = len(full)
    on = boxes[np.isin(boxes[:, 0], [50, 102])]  # lesions on two slices, neither a multiple of the step (4)
    samples = ld.make_samples([ld.CTInput("vol", full, 2.0, boxes=on)], dose=0.25, seed=1)
    step = -(-n // ld.MAX_SIMULATED_SLICES)
    expected = sorted(set(range(0, n, step)) - {49, 51, 101, 103} | {50, 102})
    assert [s.name for s in samples] == [f"vol#{z}" for z in expected] and len(expected) <= ld.MAX_SIMULATED_SLICES + 2
    assert all(np.abs(s.low_hu - s.full_hu).std() > 1 for s in samples)  # simulated, not copies
    paired = ld.make_samples([ld.CTInput("pair", full, 2.0, low_hu=full + 5, boxes=on)], dose=0.25)
    assert len(paired) == n - 4
    assert ld.slices_to_simulate(0, None) == [] and ld.slices_to_simulate(3, None) == [0, 1, 2]


def test_missing_boxes_come_from_the_detector() -> None:
    _, full, _ = phantom(n=2, size=64)
    torch.manual_seed(0)
    det = LesionDetector(width=4).eval()
    with torch.no_grad():  # a detector that is sure about everything: boxes must appear, on their own slice
        det.heatmap_head[-1].bias.fill_(8.0)
    item = ld.CTInput("vol", full, 0.7, low_hu=full + 5)
    samples = ld.make_samples([item], dose=0.25, detector=det, box_threshold=0.9)
    assert item.box_source == "detected" and len(item.boxes) > 0
    assert sum(len(s.boxes) for s in samples) == len(item.boxes)
    assert set(np.rint(item.boxes[:, 0]).astype(int)) <= {0, 1}


def test_too_few_detected_boxes_are_said_before_any_slice_is_simulated() -> None:
    """Regression: with boxes from the starting detector, a run that found none simulated every slice
    (minutes) before refusing. Detection comes first, and too few boxes stop the run there."""
    _, full, _ = phantom(n=3, size=64)
    det = LesionDetector(width=4).eval()
    with torch.no_grad():  # sure about nothing: no box anywhere
        det.heatmap_head[-1].bias.fill_(-8.0)
    item = ld.CTInput("vol", full, 0.7)  # no low dose: it would be simulated
    said = []
    with pytest.raises(ld.TooFewLesions, match="only 0 lesion box"):
        gen = ld.iter_samples([item], 0.25, detector=det, box_threshold=0.5, min_boxes=ld.MIN_LESIONS)
        said.extend(gen)
    assert said == ["detecting lesions in vol (score >= 0.5)"]


def test_dicom_folder_gives_normal_dose_inputs(tmp_path: Path) -> None:
    from conftest import write_series

    _, full, _ = phantom(n=3, size=32)
    write_series(tmp_path / "series", np.rint(full), series_uid="1.2.826.0.1.3680043.8.498.77")
    (item,) = ld.inputs_from_dicom(tmp_path / "series")
    assert item.full_hu.shape == (3, 32, 32) and item.low_hu is None and item.boxes is None
    np.testing.assert_allclose(item.full_hu, np.rint(full), atol=0.5)
    assert item.spacing_mm == pytest.approx(0.8)  # conftest's PixelSpacing (row 0.7, column 0.8)
    assert ld.check_inputs([item], patch_size=32) == []  # boxes unknown yet: counted after detection


def test_check_samples_sees_lesions_only_on_validation_slices() -> None:
    from napari_lidnet._training.split import split_samples
    from napari_lidnet.io.dataset import Sample

    low, full, boxes = phantom(n=4, size=32)
    samples = [Sample(f"s{k}", full[k], low[k], np.zeros((0, 4), np.float32), 0.7) for k in range(4)]
    _, val, _ = split_samples(samples, 0.25, 0, 8)
    val[0].boxes = boxes[:2, 1:]
    problems = ld.check_samples(samples, 32, val_fraction=0.25, seed=0)
    assert problems and "validation or test slice" in problems[0]
    assert ld.check_samples(samples, 32, need_lesions=False, val_fraction=0.25) == []


# ------------------------------------------------------------------------------------------------ the job


def drive(job):
    records = []
    while True:
        try:
            records.append(next(job))
        except StopIteration as stop:
            return records, stop.value


def honest_start(model_dir: Path, tmp_path: Path) -> str:
    """A sound starting denoiser made for another dose: trained (pixel loss) on 30 HU noise, it denoises, but less
    than 80 HU data needs. (Not a broken model that any training would "improve".)"""

    from napari_lidnet._training.config import TrainConfig
    from napari_lidnet._training.trainer import Trainer
    from napari_lidnet.io.dataset import Sample

    low, full, boxes = phantom(n=8, size=64, noise=30.0, seed=7)
    data = [Sample(f"p{k}", full[k], low[k], boxes[boxes[:, 0] == k][:, 1:], 0.7) for k in range(8)]
    cfg = TrainConfig(
        out=str(tmp_path / "start"), mode="pixel", pretrain_denoiser_steps=100, pretrain_detector_steps=0, rounds=0,
        batch_size=4, patch_size=32, lr=3e-3, denoiser_kwargs={"width": 8, "blocks": 1, "factor": 2},
        val_fraction=0.0, device="cpu",
    )  # fmt: skip
    list(Trainer(cfg, data).run())
    for ext in (".json", ".safetensors"):
        shutil.copy(tmp_path / "start" / f"last_denoiser{ext}", model_dir / f"dose30_denoiser{ext}")
    return "dose30_denoiser"


def test_job_improves_on_held_out_slices_and_publishes_a_model(model_dir: Path, tmp_path: Path) -> None:
    low, full, boxes = phantom(n=10, size=64, noise=80.0)
    name = "site-a"
    run = fj.new_run_dir(name)
    assert run == tmp_path / "runs" / name
    cfg = tiny_config(run, init_denoiser=honest_start(model_dir, tmp_path), denoiser_steps=20, round_lr_scale=1.0)
    req = fj.FinetuneRequest(name, cfg, inputs=[ld.CTInput("ct", full, 0.7, low, boxes, "drawn")])
    records, out = drive(fj.finetune_job(req))
    assert out.status == "finished", out.message
    vals = [r for r in records if r["stage"] == "validate"]
    assert vals[0]["after"] == "start" and len(vals) == 3
    # the start already denoises; the claim is judged on test slices that neither trained nor chose
    low_dose = np.mean([ld_psnr(low[k], full[k]) for k in range(10)])
    assert out.start_test_metrics["psnr"] > low_dose + 0.5
    assert out.best_test_metrics["psnr"] > out.start_test_metrics["psnr"] + 0.25
    assert [r["stage"] for r in records].count("round1-denoiser") == 20
    assert out.improved is True and "note" not in out.message and out.notes == []
    text = fj.outcome_summary(out)
    assert "held-out test PSNR" in text and "validation PSNR" in text and "sensitivity" in text
    # what the viewer will show: the trained detector at the threshold it inherits (the tiny one has none: 0.3)
    assert out.best_test_metrics["threshold"] == pytest.approx(0.3)
    assert f"at the threshold 0.30: false boxes per slice {out.start_test_metrics['fp_per_slice']:.2f}" in text
    names = {m.name for m in list_models()}
    assert {f"{name}_denoiser", f"{name}_detector"} <= names
    model, card = load_weights(model_dir / f"{name}_denoiser")
    assert card["validation"]["before"]["psnr"] == pytest.approx(out.start_metrics["psnr"])
    assert card["test"]["after"]["psnr"] == pytest.approx(out.best_test_metrics["psnr"])
    info = card["training"]["finetune"]
    assert info["n_slices"] == 10 and info["n_lesions"] == 20 and info["images"][0]["boxes"] == "drawn"
    assert card["training"]["config"]["rounds"] == 2 and card["training"]["n_test_slices"] == 2
    # the same name again is refused before anything runs
    assert fj.model_name_problems(name) and "already exists" in fj.model_name_problems(name)[0]
    assert fj.new_run_dir(name) != run


def ld_psnr(a: np.ndarray, b: np.ndarray) -> float:
    from napari_lidnet.metrics.image import METRIC_WINDOW, psnr

    return psnr(a, b, window=METRIC_WINDOW)


def test_boxes_from_the_starting_detector_make_no_sensitivity_claim(model_dir: Path) -> None:
    """Boxes found by the starting detector are no reference: sensitivity is neither reported nor counted, and the
    outcome says so."""
    from napari_lidnet.models.weights import save_weights

    torch.manual_seed(0)
    sure = LesionDetector(width=4)
    with torch.no_grad():  # a detector that finds boxes everywhere: the "lesions" are its own
        sure.heatmap_head[-1].bias.fill_(8.0)
    save_weights(sure, model_dir / "sure_detector")
    low, full, _ = phantom(n=6, size=64)
    run = fj.new_run_dir("detected")
    cfg = tiny_config(run, init_detector="sure_detector", rounds=1, denoiser_steps=2, detector_steps=1)
    req = fj.FinetuneRequest("detected", cfg, inputs=[ld.CTInput("ct", full, 0.7, low)])
    records, out = drive(fj.finetune_job(req))
    assert out.status == "finished", out.message
    for metrics in (out.start_metrics, out.best_metrics, out.start_test_metrics, out.best_test_metrics):
        assert "psnr" in metrics and not any(k.startswith("sens") for k in metrics)
    assert out.notes == [fj.NOTE_DETECTED]
    text = fj.outcome_summary(out)
    assert "sensitivity ->" not in text and "agreement" in text


def test_without_validation_the_outcome_is_the_last_round(model_dir: Path) -> None:
    low, full, boxes = phantom(n=4, size=64)
    run = fj.new_run_dir("no-val")
    cfg = tiny_config(run, val_fraction=0.0, test_fraction=0.0, rounds=2, denoiser_steps=2, detector_steps=1)
    req = fj.FinetuneRequest("no-val", cfg, inputs=[ld.CTInput("ct", full, 0.7, low, boxes, "drawn")])
    records, out = drive(fj.finetune_job(req))
    assert out.status == "finished" and out.exported, out.message
    assert out.notes == [fj.NOTE_NO_VALIDATION, fj.NOTE_NO_TEST] and out.improved is None
    best = load_weights(run / "best_denoiser")[0].state_dict()
    last = load_weights(run / "last_denoiser")[0].state_dict()
    assert all(torch.equal(best[k], last[k]) for k in best)  # round 2, not round 1
    assert "last round" in fj.outcome_summary(out)


def test_unannotated_neighbours_of_a_lesion_are_left_out() -> None:
    low, full, boxes = phantom(n=7, size=64)
    item = ld.CTInput("vol", full, 0.7, low, boxes[boxes[:, 0] == 3], "drawn")  # the lesion drawn on slice 3 only
    samples = ld.make_samples([item], dose=0.25)
    assert [s.name for s in samples] == ["vol#0", "vol#1", "vol#3", "vol#5", "vol#6"]
    assert item.left_out == [2, 4] and len(samples[2].boxes) == 2
    kept = ld.make_samples([ld.CTInput("vol", full, 0.7, low, boxes[boxes[:, 0] == 3])], dose=0.25, near_lesion=0)
    assert len(kept) == 7  # pixel loss only: every slice is a fine denoising example


def test_stop_during_a_validation_begins_no_further_stage(model_dir: Path) -> None:
    """Regression: Stop pressed while round 1 was validated ran round 2's loss calibration and a step (a
    partial checkpoint no one uses) before stopping. The run now stops before the next stage and publishes round 1."""
    low, full, boxes = phantom(n=4, size=64)
    flag = {"stop": False}
    run = fj.new_run_dir("between")
    req = fj.FinetuneRequest("between", tiny_config(run, rounds=3), inputs=[ld.CTInput("ct", full, 0.7, low, boxes)])
    job = fj.finetune_job(req, should_stop=lambda: flag["stop"])
    for rec in job:
        if rec["stage"] == "validate" and rec.get("after") == "round1-detector":
            flag["stop"] = True
            break
    rest, out = drive(job)
    assert rest[0]["stage"] == "stopped" and "stopped before round2-denoiser" in rest[0]["message"]
    assert out.status == "stopped" and out.exported
    assert not any(p.name.startswith("partial_") for p in run.iterdir())  # no stage begun, none half-done


def test_stop_ends_within_one_step_and_keeps_checkpoints(model_dir: Path) -> None:
    low, full, boxes = phantom(n=4, size=64)
    flag = {"stop": False}
    run = fj.new_run_dir("stopped")
    req = fj.FinetuneRequest("stopped", tiny_config(run, rounds=3), inputs=[ld.CTInput("ct", full, 0.7, low, boxes)])
    job = fj.finetune_job(req, should_stop=lambda: flag["stop"])
    records = []
    for rec in job:
        records.append(rec)
        if rec["stage"] == "round2-denoiser" and rec["stage_step"] == 3:
            flag["stop"] = True
            stop_step = rec["step"]
            break
    rest, out = drive(job)
    assert rest[0]["stage"] == "stopped" and rest[0]["step"] == stop_step  # no further step was taken
    assert out.status == "stopped" and out.exported  # best checkpoint so far (after round 1) published
    for tag in ("best", "last"):
        for kind in ("denoiser", "detector"):
            model, card = load_weights(run / f"{tag}_{kind}")
            assert card["kind"] == kind
    assert json.loads((model_dir / "stopped_detector.json").read_text())["training"]["finetune"]["stopped_early"]


def test_nan_loss_fails_cleanly_and_publishes_the_last_good_checkpoint(model_dir: Path, monkeypatch) -> None:
    """A run that fails after a validated round (here a NaN loss in round 2) says it failed and why, and publishes
    round 1's best checkpoint as a Stop would (not left in the runs folder, where no dock
    reaches it), the failure in its card's notes."""
    from napari_lidnet._training.trainer import Trainer

    low, full, boxes = phantom(n=4, size=64)
    real_step = Trainer.denoiser_step

    def poisoned(self, *args, **kwargs):  # the first joint step of round 2 blows up
        losses = real_step(self, *args, **kwargs)
        if "round1-detector" in self.state["done"]:
            losses["pixel"] = math.nan
        return losses

    monkeypatch.setattr(Trainer, "denoiser_step", poisoned)
    before = sorted(p.name for p in model_dir.iterdir())
    run = fj.new_run_dir("broken")
    req = fj.FinetuneRequest("broken", tiny_config(run), inputs=[ld.CTInput("ct", full, 0.7, low, boxes)])
    records, out = drive(fj.finetune_job(req))
    assert out.status == "failed" and "nan" in out.message.lower() and "round2-denoiser" in out.message
    assert "the best checkpoint before the failure was saved as broken" in out.message
    added = sorted(set(p.name for p in model_dir.iterdir()) - set(before))
    assert added == [f"broken_{k}.{e}" for k in ("denoiser", "detector") for e in ("json", "safetensors")]
    for kind in ("denoiser", "detector"):  # the round-1 checkpoint, as the run folder keeps it
        best, card = load_weights(run / f"best_{kind}")
        published, pcard = load_weights(model_dir / f"broken_{kind}")
        for key, value in best.state_dict().items():
            np.testing.assert_array_equal(published.state_dict()[key].numpy(), value.numpy())
        assert any("the run failed" in n for n in pcard["training"]["finetune"]["notes"])


def test_a_run_whose_held_out_slices_hold_no_lesion_says_detection_was_not_measured(model_dir: Path) -> None:
    """Regression: lesions annotated on a few slices only, none on the validation or test block: the detector
    was trained, published and chosen with no sensitivity measured, and nothing said so."""
    low, full, boxes = phantom(n=9, size=64)
    run = fj.new_run_dir("heldout")
    inputs = [ld.CTInput("ct", full, 0.7, low, boxes[boxes[:, 0] <= 2])]
    records, out = drive(fj.finetune_job(fj.FinetuneRequest("heldout", tiny_config(run, rounds=1), inputs=inputs)))
    assert out.status == "finished", out.message
    assert fj.NOTE_NO_HELD_OUT_LESION in out.notes and "sensitivity" not in (out.best_metrics or {})
    assert "sensitivity was not measured" in fj.outcome_summary(out)


def test_job_reports_bad_data_without_training(model_dir: Path) -> None:
    low, full, boxes = phantom(n=1, size=64)
    run = fj.new_run_dir("bad")
    req = fj.FinetuneRequest("bad", tiny_config(run), inputs=[ld.CTInput("ct", full, 0.7, low, boxes[:1])])
    records, out = drive(fj.finetune_job(req))
    assert out.status == "invalid" and "at least 3 slices" in out.message and "lesion" in out.message
    assert "validation and test" in out.message
    assert not run.exists()


def test_dataset_folder_source(model_dir: Path, tmp_path: Path) -> None:
    from napari_lidnet.io.dataset import Sample, write_dataset

    low, full, boxes = phantom(n=4, size=64)
    samples = [Sample(f"s{k}", full[k], low[k], boxes[boxes[:, 0] == k][:, 1:], 0.7) for k in range(4)]
    write_dataset(tmp_path / "data", samples, {"dose": 0.25, "seed": 0})
    run = fj.new_run_dir("from-dataset")
    cfg = tiny_config(run, rounds=1, denoiser_steps=2, detector_steps=1)
    req = fj.FinetuneRequest("from-dataset", cfg, dataset_dir=str(tmp_path / "data"), source="dataset")
    _, out = drive(fj.finetune_job(req))
    assert out.status == "finished", out.message
    card = json.loads((model_dir / "from-dataset_denoiser.json").read_text())
    assert card["training"]["finetune"]["source"] == "dataset" and card["training"]["finetune"]["n_lesions"] == 8


def test_a_half_pair_takes_the_name(model_dir: Path) -> None:
    """A name whose weights exist without their card (an interrupted copy) is taken too, not only a .json."""
    (model_dir / "half_detector.safetensors").write_bytes(b"x")
    assert "already exists" in fj.model_name_problems("half")[0]
    assert fj.model_name_problems("free") == []
    assert fj.model_name_problems("bad/name")


def test_a_folder_of_normal_scans_with_synthetic_lesions_takes_no_detections(model_dir: Path, tmp_path: Path) -> None:
    """Regression: with "synthetic lesions" a DICOM folder of normal scans was refused without a starting
    detector ("draw rectangles"), and with one its unreviewed false positives became the lesion targets. The
    inserted lesions are the lesions: no box is detected, and the run's data says so."""
    from conftest import write_series

    from napari_lidnet._training.finetune import FinetuneRequest, one_click_config, prepare_samples

    hu = np.random.default_rng(0).normal(40, 20, (6, 64, 64)).astype(np.float32)
    write_series(tmp_path / "normals", np.rint(hu), series_uid="1.2.826.0.1.3680043.8.498.78")
    for detector in (None, "tiny_detector"):
        cfg = one_click_config(tmp_path / "run", insert_lesions=0.5, init_denoiser=None, init_detector=detector,
                               patch_size=32)  # fmt: skip
        req = FinetuneRequest(name="x", config=cfg, dicom_folder=str(tmp_path / "normals"), source="dicom")
        said = []
        try:
            gen = prepare_samples(req)
            while True:
                said.append(next(gen))
        except StopIteration as done:
            samples, info = done.value
        assert len(samples) == 6 and sum(len(s.boxes) for s in samples) == 0
        assert not any(m.startswith("detecting") for m in said), said
        assert [i["boxes"] for i in info["images"]] == ["none (synthetic lesions)"]


def test_dicom_folder_leaves_out_other_modalities_and_derived_copies(tmp_path: Path) -> None:
    """A study folder holding the CT, an MR series and a denoised copy of the CT (ImageType DERIVED, as this
    plugin writes it): only the CT trains (MR values are no HU target; the copy is processed and the same anatomy
    again), the others are named; a folder with no scan left is refused with the reasons."""
    from conftest import write_series

    _, full, _ = phantom(n=3, size=32)
    hu = np.rint(full)
    write_series(tmp_path / "study" / "ct", hu, series_uid="1.2.826.0.1.3680043.8.498.81", description="Abdomen")
    write_series(tmp_path / "study" / "mr", hu, series_uid="1.2.826.0.1.3680043.8.498.82", description="T1",
                 modality="MR")  # fmt: skip
    write_series(tmp_path / "study" / "dn", hu, series_uid="1.2.826.0.1.3680043.8.498.83", description="Abdomen dn",
                 extra={"ImageType": ["DERIVED", "SECONDARY", "AXIAL"]})  # fmt: skip
    notes: list[str] = []
    with pytest.warns(UserWarning):  # the reader's own note on the MR series
        inputs = ld.inputs_from_dicom(tmp_path / "study", notes)
    assert [i.name for i in inputs] == ["Abdomen"]
    assert any("T1" in n and "'MR'" in n for n in notes) and any("Abdomen dn" in n and "DERIVED" in n for n in notes)
    with pytest.raises(ld.DataProblems, match="no normal-dose CT series"), pytest.warns(UserWarning):
        ld.inputs_from_dicom(tmp_path / "study" / "mr")


def test_overlapping_images_take_their_own_annotations_not_one_layers() -> None:
    """Regression: two DeepLesion key slices (both at the canvas origin) ticked with one's annotated
    layer: the other was trained with that lesion and its own as background, without a word."""
    _, a, boxes = phantom(n=2, size=64, seed=1)
    _, b, _ = phantom(n=2, size=64, seed=2)
    img_a, img_b = Image(a, name="a"), Image(b, name="b")  # same place on the canvas
    ann_a = Shapes(boxes_to_shapes(boxes[:1], 3), shape_type="rectangle", name="a lesions (annotated)")
    ann_b = Shapes(boxes_to_shapes(np.array([[1, 40, 40, 50, 52]], float), 3), shape_type="rectangle",
                   name="b lesions (annotated)")  # fmt: skip
    everything = [img_a, img_b, ann_a, ann_b]
    inputs, problems = li.inputs_from_layers([img_a, img_b], ann_a, None, everything)
    assert problems == []
    np.testing.assert_allclose(inputs[0].boxes, boxes[:1], atol=1e-4)
    np.testing.assert_allclose(inputs[1].boxes, [[1, 40, 40, 50, 52]], atol=1e-4)
    _, problems = li.inputs_from_layers([img_a, img_b], ann_a, None, [img_a, img_b, ann_a])
    assert len(problems) == 1 and "'b' has no 'b lesions (annotated)' layer" in problems[0]
    drawn = Shapes(boxes_to_shapes(boxes[:1], 3), shape_type="rectangle", name="my boxes")
    _, problems = li.inputs_from_layers([img_a, img_b], drawn, None, everything)
    assert len(problems) == 1 and "overlap on the canvas" in problems[0]


def test_a_renamed_image_keeps_its_annotations() -> None:
    """Regression: annotated layers were matched to images by name only: a renamed image lost its own, and
    the advice was to untick it. A reader's annotated layer records its image's fingerprint."""
    from napari_lidnet.io.volume import CTVolume
    from napari_lidnet.layer_data import volume_layer_tuples

    _, a, boxes = phantom(n=2, size=64, seed=1)
    _, b, _ = phantom(n=2, size=64, seed=2)
    made = []
    for name, hu, box in (("a", a, boxes[:1]), ("b", b, np.array([[1, 40, 40, 50, 52]], np.float32))):
        (data, kwargs, _), (shapes, skwargs, _) = volume_layer_tuples(CTVolume(hu, (2.5, 0.7, 0.7), boxes=box,
                                                                               name=name))  # fmt: skip
        made += [Image(data, **kwargs), Shapes(shapes, **skwargs)]
    img_a, ann_a, img_b, ann_b = made
    img_a.name = "case A"  # renamed by the reader
    inputs, problems = li.inputs_from_layers([img_a, img_b], ann_a, None, made)
    assert problems == [] and [len(i.boxes) for i in inputs] == [1, 1]
    np.testing.assert_allclose(inputs[1].boxes, [[1, 40, 40, 50, 52]], atol=1e-4)


@pytest.mark.parametrize("lazy", [False, True])
def test_check_samples_names_a_low_dose_partner_of_another_size(tmp_path, lazy):
    """A low-dose PNG of another size than its full-dose slice is named (a lazy folder reads it from the header)."""
    from napari_lidnet.io.dataset import Sample, read_dataset, write_dataset
    from napari_lidnet.io.png16 import write_png_hu

    full = np.zeros((48, 48), np.float32)
    write_dataset(tmp_path / "ds", [Sample(f"s{k}", full, full + 1, np.zeros((0, 4)), 0.7) for k in range(3)])
    write_png_hu(tmp_path / "ds" / "low" / "s1.png", np.zeros((40, 48), np.float32))
    samples = read_dataset(tmp_path / "ds", lazy=lazy)
    assert [s.has_low_dose for s in samples] == [True] * 3
    assert [s.low_shape for s in samples] == [(48, 48), (40, 48), (48, 48)]
    problems = ld.check_samples(samples, 32, need_lesions=False)
    assert any("low- and full-dose shapes differ in ['s1']" in p for p in problems), problems


def _run_until_export(name: str, at_export: Callable[[], None]) -> tuple[Path, fj.FinetuneOutcome]:
    """A one-round run named ``name`` (its run folder, its outcome); ``at_export`` happens as its export begins."""
    low, full, boxes = phantom(n=4, size=64)
    run = fj.new_run_dir(name)
    cfg = tiny_config(run, val_fraction=0.0, test_fraction=0.0, rounds=1, denoiser_steps=2, detector_steps=1)
    job = fj.finetune_job(fj.FinetuneRequest(name, cfg, inputs=[ld.CTInput("ct", full, 0.7, low, boxes, "drawn")]))
    while True:
        try:
            rec = next(job)
        except StopIteration as stop:
            return run, stop.value
        if rec["stage"] == "export":
            at_export()


def test_a_name_taken_while_the_run_trained_saves_it_as_name_2(model_dir: Path) -> None:
    """Another run (a second dock, another napari, the CLI) saved a model of the same name while this one trained:
    this one is saved beside it as NAME-2, and says so; the other model is left as it was."""

    def save_another() -> None:
        for suffix in (".json", ".safetensors"):
            shutil.copy(model_dir / f"tiny_denoiser{suffix}", model_dir / f"taken_denoiser{suffix}")

    run, out = _run_until_export("taken", save_another)
    assert out.status == "finished" and "saved taken-2" in out.message, out.message
    assert "'taken' was taken while this run trained" in out.message
    assert {Path(p).name for p in out.exported} >= {"taken-2_denoiser.safetensors", "taken-2_detector.safetensors"}
    assert not (model_dir / "taken_detector.json").exists()  # the other model: untouched, not completed
    assert json.loads((model_dir / "taken_denoiser.json").read_text()) == json.loads(
        (model_dir / "tiny_denoiser.json").read_text()
    )


def test_a_name_taken_before_the_run_is_refused_at_once_and_a_long_name_keeps_its_suffix(model_dir: Path) -> None:
    """The run (from Python, as the docks do) refuses a name already taken before any work; a 64-character name
    taken meanwhile is cut to keep its -2 within the limit."""
    from napari_lidnet._training.export import free_name, renamed_note

    run = fj.new_run_dir("tiny")
    job = fj.finetune_job(fj.FinetuneRequest("tiny", tiny_config(run), inputs=[]))  # the tiny pair is there
    records, out = drive(job)
    assert records == [] and out.status == "invalid" and "already exists" in out.message
    assert not run.exists()
    for suffix in (".json", ".safetensors"):
        shutil.copy(model_dir / f"tiny_denoiser{suffix}", model_dir / f"{'x' * 64}_denoiser{suffix}")
    assert free_name("x" * 64) == "x" * 62 + "-2"
    assert renamed_note(" site ", "site") == "" and "'site' was taken" in renamed_note(" site ", "site-2")


def test_a_run_whose_export_fails_says_where_its_trained_networks_are(model_dir: Path, tmp_path: Path) -> None:
    """A model folder gone while the run trained (a network drive unmounted: a file in its place here) fails the
    export; the message says the trained networks are kept in the run folder."""

    def unmount() -> None:
        model_dir.rename(tmp_path / "moved")
        model_dir.write_text("")

    run, out = _run_until_export("lost", unmount)
    assert out.status == "failed", out.message
    assert f"the trained networks are kept in {run}" in out.message, out.message
    assert (run / "best_denoiser.safetensors").exists() and (run / "best_detector.safetensors").exists()
