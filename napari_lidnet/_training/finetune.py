"""The one-click fine-tuning run: prepare and check the user's data, train both networks, publish the best pair.

``finetune_job`` is the whole run as a generator of progress records, so the widget, the benchmark and the tests run
exactly the same code. Runs live next to the user model folder, never in the working directory. torch is imported
only inside functions.

What the outcome claims: the best checkpoint is chosen on the validation slices (``metrics.selection.selection_score``);
"improved" is judged on a held-out test part (contiguous slices never used for a choice) by the same score; with
boxes from the starting detector no sensitivity is reported or counted (it would measure agreement with that
detector); without validation slices the last round is the result. ``outcome_summary`` says all of this.
"""

from __future__ import annotations

import datetime as _dt
import gc
import os
import shutil
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from napari_lidnet._training.config import TrainConfig  # a plain dataclass: no torch
from napari_lidnet._training.local_data import (
    AUTO_BOX_THRESHOLD,
    MIN_LESIONS,
    CTInput,
    DataProblems,
    TooFewLesions,
    check_inputs,
    check_samples,
    describe_samples,
    inputs_from_dicom,
    iter_samples,
    synthetic_lesions_only,
)
from napari_lidnet.io.checks import error_text, one_line
from napari_lidnet.io.deeplesion import is_deeplesion_archive

#: the one-click schedule: start from trained models (no pretraining), three short collaborative rounds
ONE_CLICK_DEFAULTS: dict[str, Any] = {
    "mode": "lidnet",
    "pretrain_denoiser_steps": 0,
    "pretrain_detector_steps": 0,
    "rounds": 3,
    "denoiser_steps": 40,
    "detector_steps": 20,
    "batch_size": 4,
    "patch_size": 96,
    "lr": 1e-3,  # pretraining rate; the rounds fine-tune at lr * TrainConfig.round_lr_scale (2e-4)
    "detector_lr": 1e-3,
    "det_weight": TrainConfig.det_weight,  # relative to the pixel loss (the trainer calibrates each round)
    "roi_weight": TrainConfig.roi_weight,
    "val_fraction": 0.2,
    "test_fraction": 0.2,
    "insert_lesions": 0.0,  # share of patches given synthetic lesions (0: the boxes given are the only lesions)
    "seed": 0,
    "device": "auto",
}
#: pretraining steps used when a network starts from scratch (no trained model to start from)
SCRATCH_PRETRAIN_STEPS = {"pretrain_denoiser_steps": 200, "pretrain_detector_steps": 300}


def runs_dir() -> Path:
    """Where fine-tuning runs live: next to the user model folder (never the working directory)."""
    from napari_lidnet.models.registry import user_model_dir

    return user_model_dir().parent / "runs"


def new_run_dir(name: str) -> Path:
    """``runs/NAME``, or ``runs/NAME-<time>`` when that folder is taken (an old run is never resumed by accident)."""
    base = runs_dir() / name
    if not base.exists():
        return base
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate = base.with_name(f"{name}-{stamp}")
    k = 1
    while candidate.exists():
        k += 1
        candidate = base.with_name(f"{name}-{stamp}-{k}")
    return candidate


def default_model_name() -> str:
    """``finetuned-YYYYMMDD-HHMM``, with ``-2``, ``-3`` ... appended while that name is taken by a user model."""
    from napari_lidnet._training.export import free_name

    base = "finetuned-" + _dt.datetime.now().strftime("%Y%m%d-%H%M")
    try:
        return free_name(base)
    except OSError:  # a model folder that cannot be read is said when a run is asked for, not here
        return base


def model_name_problems(name: str) -> list[str]:
    """Why ``name`` cannot be the new model's name (bad characters, taken in the user model folder), or why no
    model can be saved (the model folder or the runs folder beside it cannot be written)."""
    from napari_lidnet._training.export import check_export_name
    from napari_lidnet.io.atomic import check_writable
    from napari_lidnet.models.registry import MODEL_DIR_ENV

    try:
        check_export_name(name)
        check_writable(runs_dir() / "probe")
    except (ValueError, FileExistsError) as exc:
        return [str(exc)]
    except OSError as exc:
        where = exc.filename or runs_dir().parent
        return [f"cannot write to {where}: the fine-tuned models and their runs go there; make it writable, or "
                f"set {MODEL_DIR_ENV} to a folder you can write"]  # fmt: skip
    return []


def one_click_config(out: str | os.PathLike, **overrides: Any) -> TrainConfig:
    """TrainConfig of the one-click run (``ONE_CLICK_DEFAULTS`` + ``overrides``); a network without a starting
    model (``init_denoiser``/``init_detector`` None) gets ``SCRATCH_PRETRAIN_STEPS`` unless given."""
    values = {**ONE_CLICK_DEFAULTS, **overrides}
    for kind in ("denoiser", "detector"):
        key = f"pretrain_{kind}_steps"
        if not values.get(f"init_{kind}") and key not in overrides:
            values[key] = SCRATCH_PRETRAIN_STEPS[key]
    cfg = TrainConfig(out=str(out), **values)
    cfg.validate()
    return cfg


@dataclass
class FinetuneRequest:
    """Everything one fine-tuning run needs; exactly one of ``inputs``, ``dicom_folder``, ``dataset_dir``."""

    name: str
    config: TrainConfig  # config.out is the run folder
    inputs: list[CTInput] | None = None
    dicom_folder: str | None = None
    dataset_dir: str | None = None
    dose: float = 0.25
    box_threshold: float = AUTO_BOX_THRESHOLD
    source: str = "layers"
    command: str = "napari-lidnet fine-tune widget"


@dataclass
class FinetuneOutcome:
    """How a run ended: ``status`` is finished | stopped | invalid | failed; ``exported`` the new model files.

    ``start_metrics``/``best_metrics`` are on the validation slices (they chose the checkpoint);
    ``start_test_metrics``/``best_test_metrics`` on the held-out test slices, which ``improved`` is judged on
    (None: not measured). ``notes`` say what the numbers do not mean (e.g. boxes from the starting detector).
    """

    status: str
    message: str
    run_dir: str | None = None
    exported: list[str] = field(default_factory=list)
    start_metrics: dict[str, float] | None = None
    best_metrics: dict[str, float] | None = None
    improved: bool | None = None
    seconds: float = 0.0
    start_test_metrics: dict[str, float] | None = None
    best_test_metrics: dict[str, float] | None = None
    input_test_metrics: dict[str, float] | None = None  # the low-dose input itself (no denoising), test or validation
    notes: list[str] = field(default_factory=list)


def improved(start: dict[str, float] | None, best: dict[str, float] | None) -> bool | None:
    """Whether ``best`` beats ``start`` by the trainer's one checkpoint score (pass held-out test metrics);
    None when either was not measured."""
    from napari_lidnet.metrics.selection import selection_score

    a, b = selection_score(start), selection_score(best)
    if a is None or b is None:
        return None
    return b > a


#: what an outcome says when a number does not mean what it seems to
NOTE_DETECTED = (
    "lesion boxes came from the starting detector: sensitivity would measure agreement with it, so none is "
    "reported or counted"
)
NOTE_NO_VALIDATION = "no validation slices: the model is the last round's, not chosen on validation"
NOTE_NO_TEST = "no held-out test slices: whether it improved was not measured"
NOTE_NO_HELD_OUT_LESION = (
    "no lesion box on the validation or test slices: the detector was trained but its sensitivity was not measured "
    "(annotate lesions on more slices, or keep using the starting detector)"
)


def _load_detector(name: str | None, device: Any) -> Any:
    from napari_lidnet.models.registry import load_model

    if not name:
        return None
    return load_model(name, kind="detector", device=device)[0]


def _folder_samples(req: FinetuneRequest) -> Generator[str, None, tuple[list[Any], dict[str, Any]]]:
    """The slices of a dataset folder, or of a DeepLesion archive's train part (indexed now, low doses simulated
    when first used and kept in the run folder), and their description."""
    if is_deeplesion_archive(req.dataset_dir):
        from napari_lidnet.datasets.manifest import build_index, manifest_slices

        yield f"indexing {req.dataset_dir} (DeepLesion's train part; low doses simulated at {req.dose:g} when used)"
        header, rows = build_index(req.dataset_dir, dose=req.dose, seed=req.config.seed, split="train")
        samples = manifest_slices(header, rows, cache_dir=Path(req.config.out) / "lowdose")  # kept in the run folder
        return samples, describe_samples(samples, source="deeplesion", folder=str(req.dataset_dir), dose=req.dose)
    from napari_lidnet.io.dataset import read_dataset

    yield f"reading {req.dataset_dir}"
    samples = read_dataset(req.dataset_dir)
    return samples, describe_samples(samples, source="dataset", folder=str(req.dataset_dir))


def prepare_samples(
    req: FinetuneRequest, should_stop: Callable[[], bool] | None = None
) -> Generator[str, None, tuple[list[Any], dict[str, Any]]]:
    """Read/simulate/detect the request's data, yielding progress messages; returns (samples, description).

    Raises :class:`DataProblems` listing everything wrong with the data (and ([], {}) when stopped)."""
    cfg = req.config
    need_lesions = cfg.mode != "pixel" and not cfg.insert_lesions  # synthetic lesions: scans without any train too
    near = None if need_lesions else 0  # pixel loss only or synthetic lesions: unannotated slices are fine
    if req.dataset_dir:
        samples, info = yield from _folder_samples(req)
    else:
        inputs = list(req.inputs or [])
        if req.dicom_folder:
            yield f"reading {req.dicom_folder}"
            left_out: list[str] = []
            inputs = inputs_from_dicom(req.dicom_folder, left_out)
            if left_out:
                yield "; ".join(left_out)
            if cfg.insert_lesions:  # normal scans: the synthetic lesions are the lesions, not detections
                synthetic_lesions_only(inputs)
        problems = check_inputs(inputs, cfg.patch_size, need_lesions, cfg.val_fraction, cfg.test_fraction)
        if problems:
            raise DataProblems(problems)
        from napari_lidnet.models.device import pick_device

        device = pick_device(cfg.device)[0]
        detector = None
        if cfg.mode == "pixel":  # pixel loss only: boxes are not needed, nothing to detect
            for item in inputs:
                if item.boxes is None:
                    item.boxes = np.zeros((0, 5), np.float32)
        if any(i.boxes is None for i in inputs):
            if not cfg.init_detector:
                raise DataProblems(["no lesion boxes and no trained detector to find them: draw rectangles"])
            detector = _load_detector(cfg.init_detector, device)
        extra = {} if near is None else {"near_lesion": near}
        try:
            samples = yield from iter_samples(inputs, req.dose, cfg.seed, detector, device, req.box_threshold,
                                              should_stop, min_boxes=MIN_LESIONS if need_lesions else 0, **extra)
        except TooFewLesions as exc:  # known after detection, before the simulation
            raise DataProblems([str(exc)]) from None
        del detector
        if should_stop is not None and should_stop():
            return [], {}
        info = describe_samples(samples, inputs, source=req.source, dose=req.dose)
        if req.dicom_folder:
            info["folder"] = str(req.dicom_folder)
    problems = check_samples(
        samples, cfg.patch_size, need_lesions, cfg.val_fraction, cfg.seed, cfg.val_max_slices, cfg.test_fraction,
        cfg.test_max_slices,
    )  # fmt: skip
    if problems:
        raise DataProblems(problems)
    return samples, info


def publish_run(run_dir: str | os.PathLike, name: str, finetune_info: dict[str, Any], command: str = "") -> list[Path]:
    """Export the run's best checkpoint, its cards extended with ``finetune_info`` (data, settings, validation
    before/after), as ``NAME_denoiser``/``NAME_detector`` (atomic, never over an existing model)."""
    from napari_lidnet._training.export import export_run

    extra = {
        "training": {"finetune": finetune_info},
        "validation": {"before": finetune_info.get("start_metrics"), "after": finetune_info.get("best_metrics")},
        "test": {"before": finetune_info.get("start_test_metrics"), "after": finetune_info.get("best_test_metrics")},
    }
    return export_run(Path(run_dir), name, command=command, card_extra=extra)


def release_torch(device: Any) -> None:
    """Collect dropped models and hand cached GPU memory back (CUDA only)."""
    gc.collect()
    if getattr(device, "type", str(device)).startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def _prepared(req: FinetuneRequest, should_stop: Callable[[], bool]) -> Generator[dict[str, Any], None, tuple]:
    """Run :func:`prepare_samples`, turning its messages into progress records; returns (samples, info)."""
    from napari_lidnet.inference import map_yields

    return (yield from map_yields(prepare_samples(req, should_stop), lambda msg: {"stage": "prepare", "message": msg}))


def _publish(req: FinetuneRequest, outcome: FinetuneOutcome, info: dict[str, Any], stopped: bool) -> str:
    """Export the best checkpoint under ``req.name`` (``NAME-2`` ... when that was taken meanwhile) and say how it
    compares with the starting models; returns the name saved."""
    from napari_lidnet._training.export import free_name, renamed_note

    data = {
        **info, "start_metrics": outcome.start_metrics, "best_metrics": outcome.best_metrics,
        "start_test_metrics": outcome.start_test_metrics, "best_test_metrics": outcome.best_test_metrics,
        "input_test_metrics": outcome.input_test_metrics,
        "notes": list(outcome.notes), "stopped_early": stopped, "run": outcome.run_dir,
    }  # fmt: skip
    name = free_name(req.name)  # NAME-2 when another run took NAME meanwhile
    outcome.exported = [str(p) for p in publish_run(outcome.run_dir, name, data, req.command)]
    outcome.message = f"saved {name}" + (" (stopped early: best checkpoint so far)" if stopped else "")
    outcome.message += renamed_note(req.name, name)
    outcome.improved = improved(outcome.start_test_metrics, outcome.best_test_metrics)
    if outcome.improved is False:
        outcome.message += (
            " - note: it scores below the starting models on the held-out test slices; keep using those, or "
            "train longer / on more data (Advanced)"
        )
    return name


def _take_state(req: FinetuneRequest, outcome: FinetuneOutcome, state: dict[str, Any]) -> None:
    """The run's metrics before and after (validation and held-out test) from its trainer ``state``, and the note on
    boxes that came from the starting detector."""
    outcome.start_metrics, outcome.best_metrics = state.get("start_metrics"), state.get("best_metrics")
    outcome.start_test_metrics = state.get("start_test_metrics") or None
    outcome.best_test_metrics = state.get("best_test_metrics") or None
    outcome.input_test_metrics = state.get("input_test_metrics") or state.get("input_metrics") or None
    outcome.notes.extend(n for n in state.get("notes", []) if n not in outcome.notes)
    if not req.config.boxes_are_annotations and req.config.mode != "pixel":
        outcome.notes.append(NOTE_DETECTED)


def _salvage(req: FinetuneRequest, outcome: FinetuneOutcome, info: dict[str, Any]) -> None:
    """A run that failed after a validated round: its best checkpoint is published, as a Stop would, with the failure
    in its notes and in the message. When that cannot be (no validated round, or the export itself failed: a full,
    read-only or vanished model folder), the message says where the trained networks are kept."""
    import json

    from napari_lidnet._training.export import renamed_note
    from napari_lidnet._training.trainer import STATE_FILE

    run = Path(req.config.out)
    try:
        state = json.loads((run / STATE_FILE).read_text())
    except (OSError, ValueError):
        state = {}
    failure = outcome.message
    if state.get("best_metrics"):
        outcome.notes.append(f"the run failed ({one_line(failure)}); this is its best checkpoint before the failure")
        _take_state(req, outcome, state)  # as a finished run's card says
        try:
            name = _publish(req, outcome, info, stopped=True)
            outcome.message = (f"{failure}; the best checkpoint before the failure was saved as {name}"
                               f"{renamed_note(req.name, name)}")  # fmt: skip
            return
        except (OSError, ValueError):
            outcome.exported = []
    if (run / "best_denoiser.safetensors").exists():
        outcome.message = (f"{failure}; the trained networks are kept in {run} (best_denoiser, best_detector): "
                           "the Denoise dock's Browse... opens them")  # fmt: skip


def _failure(exc: Exception, run_dir: Path) -> FinetuneOutcome:
    """A training error (NaN), a file error or anything else, as a returned outcome (never a crash)."""
    from napari_lidnet._training.trainer import TrainingError

    if isinstance(exc, DataProblems):
        return FinetuneOutcome("invalid", str(exc))
    text = one_line(str(exc)) if isinstance(exc, TrainingError) else error_text(exc)
    return FinetuneOutcome("failed", text, str(run_dir) if run_dir.exists() else None)


def _train(
    req: FinetuneRequest, samples: list[Any], should_stop: Callable[[], bool], held: dict[str, Any]
) -> Generator[dict[str, Any], None, FinetuneOutcome]:
    """Train on ``samples`` (yielding the trainer's records); returns the outcome before publishing.
    ``held["device"]`` tells the caller where to release memory, whatever happens."""
    from napari_lidnet._training.trainer import Trainer

    trainer = Trainer(req.config, samples, should_stop)
    held["device"] = trainer.device
    stopped = False
    try:
        for rec in trainer.run():
            stopped = stopped or rec.get("stage") == "stopped"
            yield rec
        state = trainer.state
    finally:
        trainer.denoiser = trainer.detector = None
    outcome = FinetuneOutcome("stopped" if stopped else "finished", "", str(req.config.out))
    _take_state(req, outcome, state)
    if not trainer.val_samples:
        outcome.notes.append(NOTE_NO_VALIDATION)
    if not trainer.test_samples:
        outcome.notes.append(NOTE_NO_TEST)
    held_out = [*trainer.val_samples, *trainer.test_samples]
    measured = req.config.mode != "pixel" and NOTE_DETECTED not in outcome.notes
    if measured and held_out and not any(len(s.boxes) for s in held_out):
        outcome.notes.append(NOTE_NO_HELD_OUT_LESION)
    return outcome


def finetune_job(
    req: FinetuneRequest, should_stop: Callable[[], bool] | None = None
) -> Generator[dict[str, Any], None, FinetuneOutcome]:
    """The one-click run: prepare and check the data, train (yielding the trainer's records), publish the best
    checkpoint under ``req.name`` (also after a Stop, if a round finished). Never raises: every error becomes a
    returned :class:`FinetuneOutcome` (status invalid/failed) and nothing is exported on error."""
    import time

    should_stop = should_stop or (lambda: False)
    from napari_lidnet._training.export import free_name

    t0 = time.monotonic()
    problems = model_name_problems(req.name)  # taken already (or not a name): said now, not after the training
    if problems:
        return FinetuneOutcome("invalid", problems[0])
    held: dict[str, Any] = {"device": "cpu"}
    info: dict[str, Any] = {}
    try:
        yield {"stage": "prepare", "message": "checking the data"}
        samples, info = yield from _prepared(req, should_stop)
        if should_stop():
            return FinetuneOutcome("stopped", "stopped before training started; nothing was saved")
        if info.get("boxes_detected"):  # the starting detector's boxes are no reference for sensitivity
            req.config = replace(req.config, boxes_are_annotations=False)
        rejected = f", {info['n_rejected']} rejected boxes (as background)" if info.get("n_rejected") else ""
        yield {"stage": "prepare", "message": f"loading models; {info['n_slices']} slices, {info['n_lesions']} lesions"
               f"{rejected}"}  # fmt: skip
        outcome = yield from _train(req, samples, should_stop, held)
        del samples
        release_torch(held["device"])
        if outcome.best_metrics is None:  # its partial checkpoints serve no one: the dock never resumes a run
            shutil.rmtree(req.config.out, ignore_errors=True)
            outcome.run_dir = None
            outcome.message = "stopped before the first round finished: no model was saved (the starting models stay)"
            outcome.notes.clear()  # what the numbers of a saved model would not mean: there is none
        else:
            yield {"stage": "export", "message": f"saving {free_name(req.name)}"}
            _publish(req, outcome, info, outcome.status == "stopped")
    except Exception as exc:  # every error becomes a message, never a crash of the viewer
        outcome = _failure(exc, Path(req.config.out))
        if outcome.status == "failed" and info:
            _salvage(req, outcome, info)
    finally:
        release_torch(held["device"])
    outcome.seconds = time.monotonic() - t0
    return outcome


def _before_after(
    label: str, start: dict[str, float] | None, best: dict[str, float] | None, sens: bool, base: dict | None = None
) -> str:
    s, b = start or {}, best or {}
    if "psnr" not in s or "psnr" not in b:
        return ""
    text = f"; {label} PSNR {s['psnr']:.2f} -> {b['psnr']:.2f} dB"
    if base and "psnr" in base:
        text += f" (the low-dose input itself: {base['psnr']:.2f} dB)"
    if sens and "sensitivity" in s and "sensitivity" in b:
        text += f", sensitivity {s['sensitivity']:.3f} -> {b['sensitivity']:.3f}"
    if sens and "fp_per_slice" in s and "fp_per_slice" in b:
        text += _operating_point(s, b)
    return text


def _operating_point(start: dict[str, float], best: dict[str, float]) -> str:
    """', at the threshold T: false boxes per slice a -> b, lesions found c -> d' (and what to do when the trained
    detector draws more false boxes there than its calibration aims at)."""
    from napari_lidnet._training.calibrate import DEFAULT_FP_PER_IMAGE

    a, b = start["fp_per_slice"], best["fp_per_slice"]
    text = (f", at the threshold {best.get('threshold', float('nan')):.2f}: false boxes per slice {a:.2f} -> {b:.2f}, "
            f"lesions found {start['sens_at_threshold']:.2f} -> {best['sens_at_threshold']:.2f}")  # fmt: skip
    if b > max(a, DEFAULT_FP_PER_IMAGE):
        text += (f" (more than the {DEFAULT_FP_PER_IMAGE:g} its calibration aims at: `lidnet calibrate` on lesion-free "
                 "scans of your site sets the threshold again)")  # fmt: skip
    return text


def outcome_summary(outcome: FinetuneOutcome) -> str:
    """One human-readable paragraph: what happened, held-out test and validation before/after, and the notes."""
    text = outcome.message
    sens = NOTE_DETECTED not in outcome.notes
    base = outcome.input_test_metrics
    text += _before_after("held-out test", outcome.start_test_metrics, outcome.best_test_metrics, sens, base)
    text += _before_after("validation", outcome.start_metrics, outcome.best_metrics, sens)
    if outcome.notes:
        text += "; note: " + "; ".join(outcome.notes)
    if outcome.seconds:
        text += f" ({outcome.seconds:.0f} s)"
    return text
