"""The collaborative trainer: it learns, checkpoints atomically, stops on request, resumes exactly, refuses NaN."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_lidnet._training.config import TrainConfig
from napari_lidnet._training.split import split_samples
from napari_lidnet._training.trainer import Trainer, TrainingError
from napari_lidnet.io.dataset import Sample
from napari_lidnet.metrics.selection import worse_reason
from napari_lidnet.models.weights import load_weights, read_card


def _samples(n: int = 8, size: int = 96, noise: float = 40.0, seed: int = 0) -> list[Sample]:
    """Flat soft tissue with bright and dark disks (lesions) and Gaussian noise as the low dose."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    out = []
    for i in range(n):
        full = np.full((size, size), 60.0, np.float32)
        boxes = []
        for _ in range(2):
            r = rng.uniform(5, 10)
            cx, cy = rng.uniform(r + 2, size - r - 2, 2)
            full[(xx - cx) ** 2 + (yy - cy) ** 2 < r * r] += rng.choice([-80.0, 80.0])
            boxes.append([cx - r, cy - r, cx + r, cy + r])
        low = full + rng.normal(0, noise, full.shape).astype(np.float32)
        out.append(Sample(f"s{i}", full, low, np.array(boxes, np.float32), 0.7))
    return out


def _config(out: Path, **kw) -> TrainConfig:
    base = dict(
        out=str(out),
        mode="lidnet",
        pretrain_denoiser_steps=60,
        pretrain_detector_steps=20,
        rounds=2,
        denoiser_steps=10,
        detector_steps=5,
        batch_size=4,
        patch_size=64,
        lr=3e-3,
        denoiser_kwargs={"width": 32, "factor": 2},
        detector_kwargs={"width": 8},
        val_fraction=0.25,
        device="cpu",
    )
    base.update(kw)
    return TrainConfig(**base)


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*")) if p.suffix in (".json", ".safetensors")}


def test_split_is_seeded_and_disjoint():
    s = _samples(10)
    tr, va, _ = split_samples(s, 0.2, seed=3, val_max=8)
    tr2, va2, _ = split_samples(s, 0.2, seed=3, val_max=8)
    assert [x.name for x in va] == [x.name for x in va2] and len(va) == 2
    assert not {x.name for x in tr} & {x.name for x in va}


def test_lidnet_run_learns_and_writes_loadable_checkpoints(tmp_path):
    records = list(Trainer(_config(tmp_path / "run"), _samples()).run())
    vals = [r for r in records if r["stage"] == "validate"]
    assert vals[0]["after"] == "start"
    before = records[records.index(vals[0]) - 1]  # what the dock's stage line reads while the start is measured
    assert before["stage"] == "setup" and before["message"].startswith("measuring the starting models (")
    assert [v["after"] for v in vals[1:]] == ["pretrain-detector", "round1-detector", "round2-detector"]
    assert records[-1]["stage"] == "finished"
    steps = [r for r in records if "losses" in r]
    assert len(steps) == records[-1]["total_steps"] == 60 + 20 + 2 * (10 + 5)
    assert {"pixel", "detection", "roi_perceptual"} <= set(steps[-6]["losses"])  # a joint denoiser step
    # time left from the steps' own pace: none at the first step (setup and the first validation are not steps)
    assert steps[0]["eta_s"] is None and all(r["eta_s"] is not None and r["eta_s"] >= 0 for r in steps[1:])
    assert steps[-1]["eta_s"] < steps[1]["eta_s"]  # the last step leaves the final validation only
    assert max(v["val"]["psnr"] for v in vals[1:]) > vals[0]["val"]["psnr"] + 2.0  # the denoiser learned
    for tag in ("best", "last"):
        den, card = load_weights(tmp_path / "run" / f"{tag}_denoiser")
        assert card["kind"] == "denoiser" and card["training"]["config"]["mode"] == "lidnet"
        det, _ = load_weights(tmp_path / "run" / f"{tag}_detector")
        assert isinstance(den, torch.nn.Module) and isinstance(det, torch.nn.Module)


def test_pixel_baseline_never_touches_the_detector(tmp_path):
    trainer = Trainer(_config(tmp_path / "px", mode="pixel", pretrain_detector_steps=0), _samples())
    before = {k: v.clone() for k, v in trainer.detector.state_dict().items()}
    records = list(trainer.run())
    stages = {r["stage"] for r in records if "losses" in r}
    assert stages == {"pretrain-denoiser", "round1-denoiser", "round2-denoiser"}
    assert all(torch.equal(before[k], v) for k, v in trainer.detector.state_dict().items())
    assert all(set(r["losses"]) == {"pixel", "total"} for r in records if "losses" in r)


def test_init_weights_skip_pretraining_unless_asked_to_continue(tmp_path):
    """Starting from given weights skips pretraining (they are the pretrained model); ``pretrain_from_init`` runs
    it from them instead, so a long training can continue in chunks, each from the last one's checkpoint."""
    samples = _samples()
    cfg = dict(mode="pixel", pretrain_detector_steps=0, pretrain_denoiser_steps=30, rounds=0)
    list(Trainer(_config(tmp_path / "a", **cfg), samples).run())
    start = str(tmp_path / "a" / "best_denoiser")
    with pytest.raises(ValueError, match="nothing to train: every stage has 0 steps.*--pretrain-from-init"):
        Trainer(_config(tmp_path / "b", init_denoiser=start, **cfg), samples)  # it reported success, trained nothing
    with pytest.raises(ValueError, match="nothing to train"):
        Trainer(_config(tmp_path / "b", **{**cfg, "pretrain_denoiser_steps": 0, "rounds": 2, "denoiser_steps": 0}))
    assert not (tmp_path / "b").exists()
    more = Trainer(_config(tmp_path / "c", init_denoiser=start, pretrain_from_init=True, **cfg), samples)
    assert more.stages() == [("pretrain-denoiser", 30)]
    records = list(more.run())
    vals = [r["val"]["psnr"] for r in records if r["stage"] == "validate"]
    first = [
        r["val"]["psnr"] for r in Trainer(_config(tmp_path / "d", **cfg), samples).run() if r["stage"] == "validate"
    ]
    assert vals[0] > first[0] + 1.0  # it starts from the trained weights, not from scratch
    assert sum("losses" in r for r in records) == 30  # and trains on from there
    assert worse_reason(load_weights(tmp_path / "a" / "best_denoiser")[1]) is None  # far above its random start
    # continued at a rate that wrecks it: the card keeps the start's score, and says the model fell below it
    wrecked = Trainer(_config(tmp_path / "e", init_denoiser=start, pretrain_from_init=True, lr=0.03, **cfg), samples)
    end = [r for r in wrecked.run() if r["stage"] == "finished"][0]
    card = load_weights(tmp_path / "e" / "best_denoiser")[1]
    assert card["training"]["start_metrics"]["psnr"] == pytest.approx(end["start"]["psnr"])
    assert card["metrics"]["psnr"] < end["start"]["psnr"] - 1.0 and worse_reason(card) is not None
    a, b = (end[k]["psnr"] for k in ("start", "best"))
    assert worse_reason(card) == f"its validation PSNR fell from {a:.2f} dB to {b:.2f} dB during training"
    untouched = load_weights(tmp_path / "e" / "best_detector")[1]  # a pixel run: the detector never trained
    assert "start_metrics" not in untouched["training"] and worse_reason(untouched) is None
    detector = {"kind": "detector", "metrics": {"psnr": 20.0, "sensitivity": 0.61},
                "training": {"start_metrics": {"psnr": 30.0, "sensitivity": 0.6}}}  # fmt: skip
    assert worse_reason(detector) is None  # judged on its own term: sensitivity, which held
    detector["metrics"]["sensitivity"] = 0.5
    assert worse_reason(detector) == "its validation mean sensitivity fell from 0.600 to 0.500 during training"


def _same_weights(a_dir: Path, b_dir: Path, tag: str = "last") -> None:
    for kind in ("denoiser", "detector"):
        a, _ = load_weights(a_dir / f"{tag}_{kind}")
        b, _ = load_weights(b_dir / f"{tag}_{kind}")
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.allclose(va, vb, atol=1e-6), k


def test_stop_then_resume_equals_an_uninterrupted_run(tmp_path):
    """A stop inside a stage keeps a checkpoint at that step (network, Adam's moments, schedule, RNG); the rerun
    goes on from the next step and ends where an uninterrupted run ends."""
    samples = _samples()
    list(Trainer(_config(tmp_path / "full"), samples).run())

    count = {"n": 0}

    def stop_after_85() -> bool:
        count["n"] += 1
        return count["n"] >= 87  # inside round 1's denoiser stage (two checks more: after the validations before it)

    records = list(Trainer(_config(tmp_path / "cut"), samples, should_stop=stop_after_85).run())
    assert records[-1]["stage"] == "stopped" and records[-1]["step"] == 85
    assert "the checkpoint at step 5 of round1-denoiser" in records[-1]["message"]
    last, _ = load_weights(tmp_path / "cut" / "last_denoiser")  # the checkpoint kept at the stop is loadable
    again = Trainer(_config(tmp_path / "cut"), samples)
    assert again.resume_line() == (  # what `lidnet train` says first (which stages are done
        f"resuming the run in {tmp_path / 'cut'}: 2 stage(s) finished (80 of 110 steps); "  # and from
        "round1-denoiser goes on from its checkpoint at step 5 of 10"), again.resume_line()  # which step)
    other = Trainer(_config(tmp_path / "cut", lr=1e-3), samples).resume_line()  # the stage under way keeps its rate
    assert other.endswith("--lr 0.001 (the run's 0.003) apply to the stages not started yet (a stage under way goes "
                          "on at its own)"), other
    resumed = list(again.run())
    assert (resumed[0]["stage"], resumed[0]["step"], resumed[0]["stage_step"]) == ("round1-denoiser", 86, 6)
    _same_weights(tmp_path / "full", tmp_path / "cut")
    assert not list((tmp_path / "cut").glob("partial_*"))  # the stage finished: its partial checkpoint is gone
    # the finished run again, with another rate: it says the rate changes nothing (not a silent re-run)
    line = Trainer(_config(tmp_path / "cut", lr=5e-3), samples).resume_line()
    assert line.endswith("; --lr 0.005 (the run's 0.003) apply to nothing: no step is left to run"), line


def test_a_resumed_stage_goes_on_with_its_own_batch_size(tmp_path, monkeypatch):
    """Regression: a resume with a new --batch-size said a stage under way goes on at its own, yet the rest
    of that stage drew batches of the new size (and skipped the first steps' batches of that new sequence). The
    stage under way keeps the settings it was trained with; the stages after it take the new ones."""
    import napari_lidnet._training.trainer as trainer_module

    samples = _samples()
    count = {"n": 0}

    def stop_after_85() -> bool:
        count["n"] += 1
        return count["n"] >= 87  # inside round 1's denoiser stage, as in the test above

    list(Trainer(_config(tmp_path / "cut"), samples, should_stop=stop_after_85).run())
    sizes: list[int] = []
    real = trainer_module.patch_batches

    def recorded(slices, patch_size, batch_size, *args, **kwargs):
        sizes.append(batch_size)
        return real(slices, patch_size, batch_size, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "patch_batches", recorded)
    resumed = list(Trainer(_config(tmp_path / "cut", batch_size=2), samples).run())
    assert resumed[0]["stage"] == "round1-denoiser" and resumed[-1]["stage"] == "finished"
    assert sizes[0] == 4 and sizes[1:] and set(sizes[1:]) == {2}, sizes  # the stage under way, then the others
    # the cards say so (they gave batch 2 for every stage): each stage before the resume's new ones ran at 4
    card = read_card(tmp_path / "cut" / "last_denoiser")["training"]
    assert card["config"]["batch_size"] == 2
    done = [n for n in card["stages_done"] if n != "validate-start"]
    apart = card["stage_settings"]
    assert done.index("round1-denoiser") < len(done) - 1 and list(apart) == done[: done.index("round1-denoiser") + 1]
    assert all(own == {"batch_size": 4} for own in apart.values()), apart


def _crash_at(trainer: Trainer, step: int) -> None:
    """Run until the record of global ``step``, then drop the run as a crash would (no stop, no save)."""
    for rec in trainer.run():
        if rec.get("step") == step:
            break


def test_a_crash_resumes_from_the_last_checkpoint_inside_the_stage(tmp_path):
    """A crash (the run ends without a stop: here the generator is dropped at step 87) keeps the checkpoint taken
    every ``checkpoint_every`` steps; a torn one (its two files from different steps) is not used."""
    samples = _samples()
    list(Trainer(_config(tmp_path / "full"), samples).run())
    _crash_at(Trainer(_config(tmp_path / "cut", checkpoint_every=4), samples), 87)
    resumed = Trainer(_config(tmp_path / "cut", checkpoint_every=4), samples)
    _crash_at(resumed, 86)  # resumed at step 85, crashed again before the next checkpoint
    assert "the checkpoint at step 4 of round1-denoiser" in resumed.kept_message()  # the one on disk, still
    records = list(Trainer(_config(tmp_path / "cut", checkpoint_every=4), samples).run())
    assert (records[0]["step"], records[0]["stage_step"]) == (85, 5)  # from round1-denoiser's step 4
    _same_weights(tmp_path / "full", tmp_path / "cut")
    _crash_at(Trainer(_config(tmp_path / "torn", checkpoint_every=4), samples), 87)
    meta = json.loads((tmp_path / "torn" / "partial_a_optim.json").read_text())
    (tmp_path / "torn" / "partial_a_optim.json").write_text(json.dumps({**meta, "step": 8}))  # as a torn write
    records = list(Trainer(_config(tmp_path / "torn", checkpoint_every=4), samples).run())
    assert records[0]["stage"] == "setup" and "incomplete" in records[0]["message"]
    assert (records[1]["step"], records[1]["stage_step"]) == (81, 1)  # the stage from its start
    _same_weights(tmp_path / "full", tmp_path / "torn")


def test_a_torn_checkpoint_leaves_the_one_before_it(tmp_path, monkeypatch):
    """Regression: a checkpoint was written over the only one in place, so a kill mid-write (or a second
    Ctrl-C) lost the whole stage's steps. Checkpoints alternate between two slots: a torn newest one leaves the one
    before it, which the resume takes; and a second Ctrl-C during a write waits until it is whole."""
    import napari_lidnet._training.partial as partial_module
    from napari_lidnet.io.interrupts import interrupt_now

    samples = _samples()
    list(Trainer(_config(tmp_path / "full"), samples).run())
    _crash_at(Trainer(_config(tmp_path / "torn", checkpoint_every=4), samples), 89)  # round1-denoiser steps 4, 8 saved
    slots = {json.loads(p.read_text())["step"]: p for p in (tmp_path / "torn").glob("partial_*_optim.json")}
    assert sorted(slots) == [4, 8]
    meta = json.loads(slots[8].read_text())
    slots[8].write_text(json.dumps({**meta, "sha256": "0" * 64}))  # the newest torn, as a kill mid-write leaves it
    records = list(Trainer(_config(tmp_path / "torn", checkpoint_every=4), samples).run())
    assert (records[0]["step"], records[0]["stage_step"]) == (85, 5)  # from the checkpoint before it: step 4
    _same_weights(tmp_path / "full", tmp_path / "torn")

    real = partial_module.save_weights

    def second_ctrl_c_mid_write(*args, **kwargs):
        interrupt_now()  # arrives while the network is being written; the optimiser's files are still to come
        return real(*args, **kwargs)

    monkeypatch.setattr(partial_module, "save_weights", second_ctrl_c_mid_write)
    twice = Trainer(_config(tmp_path / "twice", checkpoint_every=4), samples)
    with pytest.raises(KeyboardInterrupt):  # at the first checkpoint: pretrain-denoiser's step 4
        list(twice.run())
    monkeypatch.setattr(partial_module, "save_weights", real)
    assert twice.kept_message().startswith("the checkpoint at step 4 of pretrain-denoiser")  # what the CLI prints
    records = list(Trainer(_config(tmp_path / "twice", checkpoint_every=4), samples).run())
    assert (records[0]["stage"], records[0]["stage_step"]) == ("pretrain-denoiser", 5)  # that checkpoint is whole
    _same_weights(tmp_path / "full", tmp_path / "twice")


def test_a_checkpoint_of_an_earlier_version_still_resumes(tmp_path):
    """Regression: a run folder whose in-stage checkpoint has the earlier single-set names (partial_optim,
    partial_<network>) was started over without a word. It is read as a third slot."""
    samples = _samples()
    list(Trainer(_config(tmp_path / "full"), samples).run())
    _crash_at(Trainer(_config(tmp_path / "old", checkpoint_every=4), samples), 87)  # round1-denoiser step 4, slot a
    for p in (tmp_path / "old").glob("partial_a_*"):
        p.rename(p.with_name(p.name.replace("partial_a_", "partial_")))
    records = list(Trainer(_config(tmp_path / "old", checkpoint_every=4), samples).run())
    assert (records[0]["step"], records[0]["stage_step"]) == (85, 5)
    _same_weights(tmp_path / "full", tmp_path / "old")
    assert not list((tmp_path / "old").glob("partial*"))


def test_an_error_of_a_write_is_not_hidden_by_a_held_back_ctrl_c():
    """Regression: a second Ctrl-C held back during a checkpoint write turned the write's own error (a full
    disk) into a KeyboardInterrupt, so its message was never said."""
    from napari_lidnet.io.interrupts import interrupt_now, uninterrupted

    with pytest.raises(OSError, match="No space"), uninterrupted():
        interrupt_now()
        raise OSError(28, "No space left on device")
    with pytest.raises(KeyboardInterrupt), uninterrupted():  # and a write that ends well: the Ctrl-C then
        interrupt_now()
    with uninterrupted():
        pass  # nothing held back is left over


class _Killed(BaseException):
    """A kill: nothing of the run's own clean-up handles it."""


def test_a_kill_between_the_first_stages_two_saves_resumes(tmp_path, monkeypatch):
    """Regression: killed after the first stage's last_denoiser was written and before last_detector existed,
    a run could never resume ('weights card not found: .../last_detector.json'), and the failed resume had already
    dropped the stage's in-stage checkpoint. The detector no stage has trained is the run's start: it resumes, and
    ends as an uninterrupted run."""
    import napari_lidnet._training.trainer as trainer_module

    samples = _samples()
    list(Trainer(_config(tmp_path / "full"), samples).run())
    real = trainer_module.save_weights

    def die_before_the_detector(model, path, card=None):
        if Path(path).name == "last_detector":
            raise _Killed
        return real(model, path, card)

    monkeypatch.setattr(trainer_module, "save_weights", die_before_the_detector)
    with pytest.raises(_Killed):
        list(Trainer(_config(tmp_path / "cut"), samples).run())
    monkeypatch.setattr(trainer_module, "save_weights", real)
    assert (tmp_path / "cut" / "last_denoiser.json").exists() and not (tmp_path / "cut" / "last_detector.json").exists()
    again = Trainer(_config(tmp_path / "cut"), samples)
    assert "pretrain-denoiser" in again.state["done"]
    records = list(again.run())
    assert records[-1]["stage"] == "finished"
    _same_weights(tmp_path / "full", tmp_path / "cut")


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    samples = _samples()
    run = tmp_path / "run"
    list(Trainer(_config(run, rounds=1), samples).run())
    before = _files(run)
    bad = [Sample(s.name, s.full_hu, np.full_like(s.low_hu, np.nan), s.boxes, s.spacing_mm) for s in samples]
    with pytest.raises(TrainingError, match="NaN|nan"):
        list(Trainer(_config(run, rounds=2), bad).run())  # resumes into round 2 on corrupt data
    assert _files(run) == before


def test_bad_settings_and_data_are_refused(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        Trainer(_config(tmp_path / "a", mode="magic"), _samples())
    no_lesions = [Sample(s.name, s.full_hu, s.low_hu, np.zeros((0, 4), np.float32), 0.7) for s in _samples()]
    with pytest.raises(ValueError, match="lesion"):
        Trainer(_config(tmp_path / "b"), no_lesions)
    # pixel mode on slices without boxes (otherwise it pretrains and exports a detector that boxes
    # nothing): the detector stage is refused; without it the denoiser trains
    with pytest.raises(ValueError, match="no lesion boxes: the detector's 20 pretraining steps would learn from none"):
        Trainer(_config(tmp_path / "b", mode="pixel"), no_lesions)
    Trainer(_config(tmp_path / "b2", mode="pixel", pretrain_detector_steps=0), no_lesions)
    with pytest.raises(ValueError, match="patch size"):
        Trainer(_config(tmp_path / "c", patch_size=128), _samples(size=96))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_roi_perceptual_loss_on_predicted_boxes(tmp_path):
    from napari_lidnet._training.patches import patch_batches

    cfg = _config(
        tmp_path / "pred",
        roi_boxes="both",
        roi_score=0.0,
        pretrain_denoiser_steps=5,
        pretrain_detector_steps=5,
        rounds=1,
        denoiser_steps=3,
        detector_steps=2,
    )
    trainer = Trainer(cfg, _samples())
    batch = next(patch_batches(trainer.train_samples, 64, 4, 1, seed=1))
    trainer.detector.eval()
    predicted = [b for b, _ in trainer.detector.detect(batch.full, score_threshold=0.0)]
    assert sum(len(p) for p in predicted) > 0  # else "both" would equal "gt" and the check below say nothing
    both = trainer.roi_boxes(batch)
    assert [len(x) for x in both] == [len(g) + len(p) for g, p in zip(batch.boxes, predicted)]
    assert all(torch.equal(x[len(g) :], p) for x, g, p in zip(both, batch.boxes, predicted))
    records = list(trainer.run())
    assert records[-1]["stage"] == "finished"
    assert any("roi_perceptual" in r.get("losses", {}) for r in records)
    with pytest.raises(ValueError, match="roi_boxes"):
        Trainer(_config(tmp_path / "bad", roi_boxes="random"), _samples())


def test_a_stop_during_the_validation_after_a_stage_counts_its_lost_steps(tmp_path, monkeypatch):
    """Regression: a double Ctrl-C during the validation after a stage said only that the checkpoint at
    step 15 was kept; the 5 steps after it, which the stage had finished but not yet saved, are lost too."""
    trainer = Trainer(_config(tmp_path / "r", checkpoint_every=15), _samples())
    real, calls = trainer.validate, {"n": 0}

    def interrupted_second_validation():
        calls["n"] += 1
        if calls["n"] == 2:  # the first validates the start; the second follows pretrain-detector (20 steps)
            raise KeyboardInterrupt
        return real()

    monkeypatch.setattr(trainer, "validate", interrupted_second_validation)
    with pytest.raises(KeyboardInterrupt):
        list(trainer.run())
    message = trainer.kept_message()
    assert "the checkpoint at step 15 of pretrain-detector" in message and "the 5 steps after it are lost" in message


def test_stop_in_the_first_stage_then_resume(tmp_path):
    """Stopped at the first step: a checkpoint at that step (no stage had finished), and a rerun goes on from it;
    given another length for that stage, the rerun says so and starts it over."""
    samples = _samples()

    def after_the_first_check():  # Stop pressed during the start's validation begins no stage: press it just after
        calls = iter([False])
        return lambda: next(calls, True)

    trainer = Trainer(_config(tmp_path / "r"), samples, should_stop=after_the_first_check())
    records = list(trainer.run())
    assert records[-1]["stage"] == "stopped" and records[-1]["step"] == 1
    assert "the checkpoint at step 1 of pretrain-denoiser" in records[-1]["message"]
    assert not (tmp_path / "r" / "last_denoiser.json").exists()
    resumed = list(Trainer(_config(tmp_path / "r", rounds=0), samples).run())
    assert (resumed[0]["stage"], resumed[0]["stage_step"]) == ("pretrain-denoiser", 2)
    short = _config(tmp_path / "s", pretrain_denoiser_steps=3)
    list(Trainer(short, samples, should_stop=after_the_first_check()).run())
    other = list(Trainer(_config(tmp_path / "s", pretrain_denoiser_steps=4, rounds=0), samples).run())
    assert "made for 3 steps, not 4: pretrain-denoiser starts over" in other[0]["message"]
    assert other[1]["stage_step"] == 1
    assert resumed[-1]["stage"] == "finished" and (tmp_path / "r" / "last_denoiser.json").exists()


def test_a_second_run_on_a_busy_folder_is_refused(tmp_path):
    """While one run holds the run folder, another on the same folder stops before writing anything."""
    first = Trainer(_config(tmp_path / "r", rounds=0), _samples()).run()
    next(first)  # running: rank 0 holds the folder's lock
    before = _files(tmp_path / "r")
    with pytest.raises(TrainingError, match=r"in use by another training run \(pid \d+"):
        next(Trainer(_config(tmp_path / "r", rounds=0), _samples()).run())
    assert _files(tmp_path / "r") == before
    first.close()  # stopped: the lock is released, and the folder resumes
    assert list(Trainer(_config(tmp_path / "r", rounds=0), _samples()).run())[-1]["stage"] == "finished"


def test_a_run_folder_locked_by_another_process_is_refused_until_it_ends(tmp_path):
    folder = tmp_path / "r"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from napari_lidnet._training.trainer import LOCK_FILE; from napari_lidnet.io.folder_lock import FolderLock; "
         "lock = FolderLock(Path(sys.argv[1]), LOCK_FILE); "
         "print('locked', flush=True); time.sleep(120)", str(folder)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(TrainingError, match=rf"in use by another training run \(pid {holder.pid} on "):
            next(Trainer(_config(folder, rounds=0), _samples()).run())
    finally:
        holder.kill()
        holder.wait()
    assert list(Trainer(_config(folder, rounds=0), _samples()).run())[-1]["stage"] == "finished"
    # a run's folder (its state written) in use: refused when the trainer is made, before its state is read (the
    # CLI must not say "resuming the run in ..." first)
    holder = subprocess.Popen(holder.args, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(TrainingError, match=rf"in use by another training run \(pid {holder.pid} on "):
            Trainer(_config(folder, rounds=0), _samples())
    finally:
        holder.kill()
        holder.wait()


def _no_boxes(samples: list[Sample]) -> list[Sample]:
    return [Sample(s.name, s.full_hu, s.low_hu, np.zeros((0, 4), np.float32), 0.7) for s in samples]


def test_lidnet_mode_trains_a_normal_dose_archive_on_inserted_lesions(tmp_path):
    """Regression: a lab's normal-dose archive has no boxes, and LIDnet mode was refused even with
    inserted lesions (whose boxes it trains on): the way to continue the shipped pair the README gives. The loss
    weights are now calibrated on patches with inserted lesions, and the rounds use the detection and ROI terms."""
    cfg = dict(pretrain_denoiser_steps=2, pretrain_detector_steps=2, rounds=1, denoiser_steps=3, detector_steps=2)
    with pytest.raises(ValueError, match="insert simulated lesions.*--mode pixel"):
        Trainer(_config(tmp_path / "a", **cfg), _no_boxes(_samples()))
    with pytest.raises(ValueError, match="insert_lung is the share of inserted lesions"):
        Trainer(_config(tmp_path / "a", insert_lung=1.0, **cfg), _no_boxes(_samples()))  # inserted nothing
    records = list(Trainer(_config(tmp_path / "b", insert_lesions=1.0, **cfg), _no_boxes(_samples())).run())
    assert records[-1]["stage"] == "finished"
    round_losses = [r["losses"] for r in records if r.get("stage") == "round1-denoiser"]
    assert round_losses and all(np.isfinite(v["detection"]) and "roi_perceptual" in v for v in round_losses)


def test_a_card_says_what_the_run_started_from_and_keeps_the_threshold(tmp_path):
    """Regression: the cards named the starting weights without a hash, gave ``--denoiser``'s default
    instead of the architecture trained, kept only the last command, and a trained detector lost its calibrated
    threshold (the plugin then used 0.3 instead of the calibrated 0.48 without a word)."""
    from napari_lidnet.models.detector import LesionDetector
    from napari_lidnet.models.weights import default_threshold, save_weights

    samples = _samples()
    cfg = dict(mode="pixel", pretrain_detector_steps=0, pretrain_denoiser_steps=3, rounds=0)
    list(Trainer(_config(tmp_path / "a", **cfg), samples).run())
    det = tmp_path / "calibrated_detector"
    calibrated = {"kind": "detector", "calibration": {"threshold": 0.42, "fp_per_image": 0.5}}
    save_weights(LesionDetector(width=8), det, calibrated)
    start = str(tmp_path / "a" / "best_denoiser")
    more = dict(init_denoiser=start, init_detector=str(det), pretrain_from_init=True, denoiser="unet", **cfg)
    list(Trainer(_config(tmp_path / "b", **more), samples, command="lidnet train first").run())
    more["rounds"], more["denoiser_steps"] = 1, 2  # more rounds extend the run: its cards are written again
    list(Trainer(_config(tmp_path / "b", **more), samples, command="lidnet train again").run())
    card = read_card(tmp_path / "b" / "best_detector")
    training = card["training"]
    assert training["config"]["denoiser"] == "fastdn"  # what was trained (the init's), not --denoiser unet
    assert training["init"]["denoiser"] == {"name": start, "sha256": read_card(start)["sha256"],
                                            "created": read_card(start)["created"]}  # fmt: skip
    assert training["commands"] == ["lidnet train first", "lidnet train again"]
    assert card["calibration"]["inherited_from"] == str(det) and default_threshold(card) == 0.42
    assert "calibration" not in read_card(tmp_path / "b" / "best_denoiser")


def test_a_resume_says_finished_stages_keep_their_step_counts(tmp_path):
    """Regression: more steps for a finished stage on resume were ignored with 'finished' and rc 0."""

    samples = _samples()
    cfg = dict(mode="pixel", pretrain_detector_steps=0, rounds=0)
    list(Trainer(_config(tmp_path / "r", pretrain_denoiser_steps=3, **cfg), samples).run())
    records = list(Trainer(_config(tmp_path / "r", pretrain_denoiser_steps=9, **cfg), samples).run())
    assert records[0]["stage"] == "setup" and "pretrain-denoiser finished with 3 steps" in records[0]["message"]
    assert not any("losses" in r for r in records)
    again = list(Trainer(_config(tmp_path / "r", pretrain_denoiser_steps=3, **cfg), samples).run())
    assert again[0]["stage"] != "setup"  # the count it finished with: no note (it compared with the last run's)
    assert read_card(tmp_path / "r" / "best_denoiser")["training"]["stage_steps"] == {"pretrain-denoiser": 3}
    state = json.loads((tmp_path / "r" / "state.json").read_text())
    del state["stage_steps"]  # a run folder from before the record: its settings of then
    (tmp_path / "r" / "state.json").write_text(json.dumps(state))
    list(Trainer(_config(tmp_path / "r", pretrain_denoiser_steps=9, **{**cfg, "rounds": 1}), samples).run())
    again = list(Trainer(_config(tmp_path / "r", pretrain_denoiser_steps=3, **{**cfg, "rounds": 1}), samples).run())
    assert not any(r["stage"] == "setup" for r in again)
    assert json.loads((tmp_path / "r" / "state.json").read_text())["stage_steps"]["pretrain-denoiser"] == 3


def test_every_command_that_added_steps_is_in_the_cards(tmp_path):
    """Regression: a resumed run stopped inside a stage never wrote its state, so its command (and its
    steps) were missing from the cards."""

    samples, cfg = _samples(), dict(mode="pixel", pretrain_detector_steps=0, pretrain_denoiser_steps=30, rounds=0)

    def stop_at(n: int):
        count = {"n": 0}

        def stop() -> bool:
            count["n"] += 1
            return count["n"] >= n

        return stop

    list(Trainer(_config(tmp_path / "r", **cfg), samples, should_stop=stop_at(10), command="c1").run())
    list(Trainer(_config(tmp_path / "r", **cfg), samples, should_stop=stop_at(10), command="c2").run())
    records = list(Trainer(_config(tmp_path / "r", **cfg), samples, command="c3").run())
    assert records[0]["stage_step"] == 20 and records[-1]["stage"] == "finished"  # 9 + 10: one check after validating
    assert read_card(tmp_path / "r" / "best_denoiser")["training"]["commands"] == ["c1", "c2", "c3"]


def test_a_death_between_a_stages_checkpoint_and_its_state_does_not_train_it_twice(tmp_path, monkeypatch):
    """A training review: killed after ``last_*`` held the finished pretrain-detector stage but before state.json
    said so, the resume loaded those weights and trained the stage again on top. Now the card's stages tell: the
    stage counts as done, its validation runs, and the run ends where an uninterrupted one ends."""
    samples = _samples()
    list(Trainer(_config(tmp_path / "full", rounds=1), samples).run())
    real = Trainer._write_state

    def killed(self) -> None:  # the kill lands on the state write that follows pretrain-detector's checkpoint
        if self.state["done"][-1:] == ["pretrain-detector"]:
            raise KeyboardInterrupt
        real(self)

    monkeypatch.setattr(Trainer, "_write_state", killed)
    with pytest.raises(KeyboardInterrupt):
        list(Trainer(_config(tmp_path / "cut", rounds=1), samples).run())
    monkeypatch.setattr(Trainer, "_write_state", real)
    assert "pretrain-detector" not in json.loads((tmp_path / "cut" / "state.json").read_text())["done"]
    records = list(Trainer(_config(tmp_path / "cut", rounds=1), samples).run())
    first = next(r for r in records if r["stage"] != "setup")
    assert first["stage"] == "validate" and first["after"] == "pretrain-detector", [r["stage"] for r in records[:4]]
    _same_weights(tmp_path / "full", tmp_path / "cut")


def test_a_broken_state_file_is_named_in_one_line(tmp_path):
    samples = _samples(n=4)
    (tmp_path / "run").mkdir()
    for text in ('{"done": [', '{"something": 1}'):
        (tmp_path / "run" / "state.json").write_text(text)
        with pytest.raises(ValueError, match=r"state.json: not a (readable run state|napari-lidnet run state)"):
            Trainer(_config(tmp_path / "run"), samples)


def test_stop_during_the_start_validation_begins_no_stage(tmp_path):
    """Regression: Stop pressed while the starting weights were validated (the longest validation) still set
    up the first stage, calibrated and took a step. Now the run stops before it, with no stage begun."""
    records = list(Trainer(_config(tmp_path / "r"), _samples(), should_stop=lambda: True).run())
    assert [r["stage"] for r in records] == ["setup", "validate", "stopped"]
    assert "stopped before pretrain-denoiser" in records[-1]["message"]
    assert not list((tmp_path / "r").glob("partial_*"))


def test_the_time_left_counts_each_networks_pace_and_the_validations_to_come(tmp_path):
    """Regression: the time left followed the mean step alone, 30-45% short mid-run (validations and export
    left out, denoiser steps 2-4x a detector step). A network's pace leaves out a stage's first step (its set-up and
    calibration); the validations still to come count at the time the earlier ones took."""
    from napari_lidnet._training.trainer import StepClock

    clock = StepClock()
    for t in (5.0, 6.0, 7.0):  # round 1's denoiser: its first step (5 s with the set-up) untimed, then 1 s a step
        clock.step("round1-denoiser", now=t)
    assert clock.seconds_left({"denoiser": 10, "detector": 4}, 0) == pytest.approx(14.0)  # detector: untimed yet
    for t in (8.0, 8.2, 8.4):  # round 1's detector: 0.2 s a step
        clock.step("round1-detector", now=t)
    clock.validated(3.0)
    clock.step("round2-denoiser", now=20.0)  # after a validation: the next step is a stage's first again
    assert clock.seconds_left({"denoiser": 10, "detector": 5}, 2) == pytest.approx(10 * 1.0 + 5 * 0.2 + 2 * 3.0)
    assert StepClock().seconds_left({"denoiser": 3}, 1) is None

    records = list(Trainer(_config(tmp_path / "r", rounds=2), _samples()).run())
    etas = [r["eta_s"] for r in records if "eta_s" in r]
    assert etas[-1] is not None and etas[-1] >= 0 and sum(e is None for e in etas) <= 2  # first steps only


def test_a_told_denoiser_is_refused_before_anything_is_written(tmp_path):
    """LIDnet rounds train the blind network (``model(x)``): a told unet's conditioning maps would be left fitted to
    weights that no longer exist, so it is refused with one line and no run folder."""
    from napari_lidnet.models.denoisers import UNetDenoiser
    from napari_lidnet.models.weights import save_weights

    save_weights(UNetDenoiser(width=4, levels=2, told=True), tmp_path / "told_denoiser")
    cfg = dict(mode="pixel", pretrain_detector_steps=0, pretrain_denoiser_steps=5, rounds=0, pretrain_from_init=True)
    with pytest.raises(ValueError, match="told_denoiser: a told denoiser .* start from a blind one"):
        Trainer(_config(tmp_path / "run", init_denoiser=str(tmp_path / "told_denoiser"), **cfg), _samples())
    assert not (tmp_path / "run").exists()


def test_the_start_says_what_the_input_scores_and_when_the_references_are_noisy(tmp_path):
    """Regression: on a real chest whose normal-dose slices carry 60 HU of noise and a low dose that adds
    13, a model that kept the noise was reported as a large PSNR gain, with no baseline and no warning. The run
    says what the low-dose input itself scores, and notes references as noisy as the low dose (not clean ones)."""
    from napari_lidnet._training.report import format_record
    from napari_lidnet.metrics.image import METRIC_WINDOW, psnr

    def run(samples, out):
        cfg = _config(out, mode="pixel", pretrain_denoiser_steps=2, pretrain_detector_steps=0, rounds=0)
        start = next(r for r in Trainer(cfg, samples).run() if r["stage"] == "validate")
        return [format_record(start)]  # what the command line prints of it (the dock shows the same text)

    clean = _samples()
    messages = run(clean, tmp_path / "clean")
    state = json.loads((tmp_path / "clean" / "state.json").read_text())
    val = state["input_metrics"]
    assert f"(the low-dose input itself: PSNR {val['psnr']:.2f} dB)" in messages[0], messages
    assert 35 < val["added_noise_hu"] < 45 and val["reference_noise_hu"] < 5  # 40 HU added to clean references
    assert not any("noise of their own" in m for m in messages) and not state.get("notes")
    rng = np.random.default_rng(1)
    noisy = [Sample(s.name, s.full_hu + rng.normal(0, 60, s.full_hu.shape).astype(np.float32), None, s.boxes, 0.7)
             for s in clean]  # fmt: skip
    for s in noisy:
        s.low_hu = s.full_hu + rng.normal(0, 15, s.full_hu.shape).astype(np.float32)
    (line,) = run(noisy, tmp_path / "noisy")
    state = json.loads((tmp_path / "noisy" / "state.json").read_text())
    note = line.split("; note: ", 1)[1]
    own, added = (int(v) for v in re.findall(r"(\d+) HU", note)[:2])
    assert 57 <= own <= 63 and 14 <= added <= 16 and "more than the" in note, note
    assert state["notes"] == [note]
    low_psnr = [psnr(s.low_hu, s.full_hu, window=METRIC_WINDOW) for s in noisy]
    assert min(low_psnr) - 0.5 < state["input_metrics"]["psnr"] < max(low_psnr) + 0.5
