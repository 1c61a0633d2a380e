"""The collaborative trainer: one generator for the command line, the fine-tuning widget and the tests.

Schedule (LIDnet, Chen et al. 2021):
1. pretrain the denoiser D on pixel loss, and the detector T on full-dose images;
2. rounds: update D under the joint loss with T frozen, then update T on D's detached outputs mixed with some
   full-dose images, so the detector follows the denoised domain without drifting;
3. validate after pretraining and after every round; keep the best and the last checkpoints.

The best checkpoint is chosen by one rule for every mode (:func:`selection_score`): validation PSNR (dB) plus
``SENSITIVITY_DB`` times the mean FROC sensitivity (where validation has annotated lesions). Without validation
slices the last round is the result. A held-out test part (``test_fraction``) is measured for the starting and the
best models and never used for a choice.

The ``pixel`` baseline runs the same number of denoiser steps on pixel loss alone. Every stage re-seeds from
(seed, stage, round) and restarts its optimiser, so a run resumed from its last checkpoint continues exactly as an
uninterrupted one. Cancelling (closing the generator, or ``should_stop()`` returning True) stops between two steps;
checkpoints are written atomically, so the last good one always survives.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import torch

from napari_lidnet import __version__
from napari_lidnet._training import distributed
from napari_lidnet._training.config import TrainConfig
from napari_lidnet._training.losses import (
    detection_loss,
    pixel_loss,
    roi_perceptual_loss,
    whole_image_perceptual_loss,
)
from napari_lidnet._training.partial import (
    drop_partial,
    load_partial,
    partial_meta,
    save_partial,
    where,
)
from napari_lidnet._training.patches import PatchBatch, calibration_batch, check_patch_settings, patch_batches
from napari_lidnet._training.resume import (
    TRAINING_KEYS,
    changed_settings,
    changed_steps_note,
    check_resume,
    steps_key,
)
from napari_lidnet._training.split import left_out, split_samples
from napari_lidnet._training.validate import evaluate_denoiser, input_quality, noisy_reference_note, stack_samples
from napari_lidnet.io.folder_lock import FolderInUse, FolderLock
from napari_lidnet.io.interrupts import uninterrupted
from napari_lidnet.metrics.selection import SENSITIVITY_DB, selection_score
from napari_lidnet.models.denoisers import build_denoiser, check_trainable_blind
from napari_lidnet.models.detector import LesionDetector
from napari_lidnet.models.device import pick_device
from napari_lidnet.models.registry import load_model
from napari_lidnet.models.weights import default_threshold, save_weights, write_atomically

STATE_FILE = "state.json"
LOCK_FILE = ".lock"
MANIFEST_FILE = "manifest.jsonl"


class TrainingError(RuntimeError):
    """A run that cannot go on (e.g. a NaN loss); the last good checkpoint is kept."""


def _network(stage: str) -> str:
    """The network a stage trains."""
    return "detector" if stage.endswith("detector") else "denoiser"


class StepClock:
    """Each network's pace (seconds between two of its steps in one stage: a stage's first step, with the set-up
    and loss calibration before it, is left out) and the validations' mean time; together, the time a run has left."""

    def __init__(self) -> None:
        self.pace: dict[str, list[float]] = {}  # network -> [seconds, steps]
        self.validation_s: list[float] = []
        self._last: tuple[str, float] | None = None  # the stage of the last step, and when it ended

    def step(self, stage: str, now: float | None = None) -> None:
        """A step of ``stage`` ended (at ``now``)."""
        now = time.monotonic() if now is None else now
        if self._last is not None and self._last[0] == stage:
            spent = self.pace.setdefault(_network(stage), [0.0, 0])
            spent[0] += now - self._last[1]
            spent[1] += 1
        self._last = (stage, now)

    def validated(self, seconds: float) -> None:
        """A validation took ``seconds``; the next step is the first of its stage."""
        self.validation_s.append(seconds)
        self._last = None

    def seconds_left(self, steps_left: dict[str, int], validations_left: int) -> float | None:
        """Time for ``steps_left`` of each network and ``validations_left`` validations; None before any pace is
        known. A network not timed yet is taken at the other's pace."""
        paces = {net: s / n for net, (s, n) in self.pace.items() if n}
        if not paces:
            return None
        mean = sum(paces.values()) / len(paces)
        steps = sum(n * paces.get(net, mean) for net, n in steps_left.items())
        val = sum(self.validation_s) / len(self.validation_s) if self.validation_s else 0.0
        return steps + validations_left * val


def _ends_group(names: list[str], index: int) -> bool:
    """Whether stage ``index`` of ``names`` is the last of its group (pretraining, a round): a validation follows."""
    return index + 1 >= len(names) or _group(names[index + 1]) != _group(names[index])


def _group(stage: str) -> str:
    """``pretrain`` for the pretraining stages, ``roundN`` for the stages of round N."""
    return stage.split("-")[0]


#: how the best checkpoint was chosen, in ``state.json``
RULE_SCORE = f"validation PSNR + {SENSITIVITY_DB:g} x mean sensitivity"
RULE_LAST = "last round (no validation slices)"


class Trainer:
    """Holds the models, data and checkpoint folder of one run; :meth:`run` is the progress generator."""

    def __init__(
        self,
        config: TrainConfig,
        samples: list | None = None,
        should_stop: Callable[[], bool] | None = None,
        command: str = "",
    ) -> None:
        config.validate()
        self.cfg = config
        self.command = command
        self.should_stop = should_stop or (lambda: False)
        self.rank, self.world_size = distributed.rank_and_world()
        self.out = Path(config.out).expanduser().resolve()
        busy = self._holder() if self.rank == 0 and (self.out / STATE_FILE).exists() else None  # before its state
        busy = distributed.broadcast_object(busy)  # is read ("resuming the run in ..." was said, then the refusal);
        if busy:  # every rank refuses (the others waited for a rank 0 that had left)
            raise TrainingError(busy)
        self._new_manifest: tuple | None = None
        self._data_record: dict[str, Any] = {}  # where the slices came from, for the cards
        self._manifest_dose: float | None = None  # the dose of a manifest given as data
        self._init_records: dict[str, Any] = {}  # the starting weights (name, sha256, date), for the cards
        self._stacked: dict[str, tuple] = {}  # stacked validation/test slices, read at their first use
        self._calibration: PatchBatch | None = None
        if samples is None:
            samples = self._archive_slices()
        self.train_samples, self.val_samples, self.test_samples = split_samples(
            samples, config.val_fraction, config.seed, config.val_max_slices, config.test_fraction,
            config.test_max_slices,
        )  # fmt: skip
        if not self.train_samples:
            raise ValueError("no training slices left after the validation split")
        note = left_out(samples, self.train_samples, [*self.val_samples, *self.test_samples])
        self.split_note = f"; {note}" if note else ""  # what the split left out, for the run's first line
        check_patch_settings(samples, config.patch_size, config.batch_size, self.world_size)
        n_lesions = sum(len(s.boxes) for s in self.train_samples)
        if config.mode != "pixel" and n_lesions == 0 and not config.insert_lesions:
            raise ValueError(
                "LIDnet modes need lesion boxes: the training slices have none; insert simulated lesions "
                "(--insert-lesions P [--insert-lung Q]) or train with --mode pixel"
            )
        if n_lesions == 0 and not config.insert_lesions and "pretrain-detector" in dict(config.stages()):
            raise ValueError(
                f"the training slices have no lesion boxes: the detector's {config.pretrain_detector_steps} "
                "pretraining steps would learn from none (and an exported detector would box nothing); pass "
                "--pretrain-detector-steps 0 to train the denoiser alone, or --insert-lesions P"
            )
        self.device, self.device_notice = pick_device(config.device)
        self.device = distributed.local_device(self.device)
        self.denoiser = self._init_denoiser()
        self.detector = self._init_detector()
        self.state: dict[str, Any] = {"done": [], "history": [], "best_score": None}
        self._live: tuple | None = None  # the stage under way: (name, steps, network, model, opt, sched, step)
        self._partial_at: tuple[str, int] | None = None  # the last checkpoint inside a stage: (stage, step)
        self.resumed = False  # the run folder held an earlier run's state (``resume_line`` says so)
        self._load_state()
        self._clock = StepClock()  # each network's pace and the validations' time, for the time left (_eta)

    def _archive_slices(self) -> list:
        """The slices of ``config.data`` (manifest or archive folder), read lazily. Rank 0 indexes a folder (once:
        the index is kept in the run folder as manifest.jsonl) and hands it to the other ranks."""
        from napari_lidnet.datasets.manifest import archive_index, lowdose_cache_dir, manifest_slices

        if not self.cfg.data:
            raise ValueError("no training data: give a dataset folder, an archive folder, a manifest or samples")
        index: Any = None
        if self.rank == 0:
            try:
                resuming = (self.out / STATE_FILE).exists()  # an older index keeps the split the run started on
                index = archive_index(self.cfg.data, self.out / MANIFEST_FILE, self.cfg.dose, self.cfg.split, resuming)
            except (OSError, ValueError) as exc:
                index = exc  # every rank raises it, none waits forever
        index = distributed.broadcast_object(index)
        if isinstance(index, Exception):
            raise index
        header, rows, is_new = index
        self._new_manifest = (header, rows) if is_new else None
        manifest = Path(self.cfg.data) if Path(self.cfg.data).is_file() else self.out / MANIFEST_FILE
        if Path(self.cfg.data).is_file():
            self._manifest_dose = header.get("dose")  # what --dose means for a manifest (given or left out)
        self._data_record = {
            "path": str(Path(self.cfg.data).expanduser().resolve()),
            **{k: header.get(k) for k in ("kind", "root", "dose", "seed", "split", "n")},
            "low_dose_cache": str(lowdose_cache_dir(manifest)),
        }
        from napari_lidnet._training.noise_level import calibrated_noise

        return manifest_slices(header, rows, cache_dir=lowdose_cache_dir(manifest), calibrate=calibrated_noise)

    # -- models and checkpoints ---------------------------------------------------------------------------
    def _init_denoiser(self) -> torch.nn.Module:
        if self.cfg.init_denoiser:
            model, card = load_model(self.cfg.init_denoiser, kind="denoiser")
            check_trainable_blind(model, str(self.cfg.init_denoiser))
            self._init_records["denoiser"] = _weights_record(self.cfg.init_denoiser, card)
            return model.to(self.device)
        torch.manual_seed(self.cfg.seed)
        return build_denoiser(self.cfg.denoiser, **self.cfg.denoiser_kwargs).to(self.device)

    def _init_detector(self) -> torch.nn.Module:
        if self.cfg.init_detector:
            model, card = load_model(self.cfg.init_detector, kind="detector")
            self._init_records["detector"] = _weights_record(self.cfg.init_detector, card)
            return model.to(self.device)
        torch.manual_seed(self.cfg.seed + 1)
        return LesionDetector(**self.cfg.detector_kwargs).to(self.device)

    def _config_record(self) -> dict[str, Any]:
        """The settings as state.json keeps them; the data path absolute, so a resume from elsewhere compares."""
        record = self.cfg.to_dict()
        if self.cfg.data:
            record["data"] = str(Path(self.cfg.data).expanduser().resolve())
            if Path(self.cfg.data).is_file():  # a manifest: its own dose, whether --dose gave it or not
                record["dose"] = self._manifest_dose
        return record

    def _card(self, kind: str, metrics: dict[str, Any]) -> dict[str, Any]:
        """A checkpoint's card: the settings (data path absolute, the networks' real architectures), the data's
        origin, the starting weights, every command that ran the run, and the detector's inherited threshold."""
        config = {**self._config_record(), "denoiser": getattr(self.denoiser, "arch", self.cfg.denoiser)}
        card: dict[str, Any] = {
            "kind": kind,
            "training": {
                "config": config,
                **({"data": self._data_record} if self._data_record else {}),
                **({"init": self._init_records} if self._init_records else {}),
                "commands": list(self.state.get("commands", [])),
                **({"start_metrics": self.state["start_metrics"]} if self._trained(kind) else {}),
                "n_train_slices": len(self.train_samples),
                "n_val_slices": len(self.val_samples),
                "n_test_slices": len(self.test_samples),
                "selection": RULE_SCORE if self.val_samples else RULE_LAST,
                "stages_done": list(self.state["done"]),
                "stage_steps": dict(self.state.get("stage_steps", {})),
                **({"stage_settings": own} if (own := self._settings_apart(config)) else {}),
                "package_version": __version__,
            },
            "metrics": metrics,
        }
        inherited = self._init_records.get("detector", {}).get("calibration")
        if kind == "detector" and inherited:
            card["calibration"] = {**inherited, "inherited_from": self._init_records["detector"]["name"]}
        return card

    def _settings_apart(self, config: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Per finished stage, the settings it trained with where they differ from ``config`` (the last command's):
        a resumed run's earlier stages, or a stage that kept its own on a resume."""
        apart = {}
        for name, own in (self.state.get("stage_settings") or {}).items():
            diff = {k: v for k, v in own.items() if k in config and config[k] != v}
            if diff and name in self.state["done"]:
                apart[name] = diff
        return apart

    def _trained(self, kind: str) -> bool:
        """Whether this run trains network ``kind`` (a stage of its own with steps) and measured its start."""
        return bool(self.state.get("start_metrics")) and any(
            name.endswith(f"-{kind}") and steps > 0 for name, steps in self.stages())  # fmt: skip

    def _save(self, tag: str, metrics: dict[str, Any]) -> None:
        if self.rank:
            return  # rank 0 writes the checkpoints
        self.out.mkdir(parents=True, exist_ok=True)
        with uninterrupted():
            save_weights(self.denoiser, self.out / f"{tag}_denoiser", self._card("denoiser", metrics))
            save_weights(self.detector, self.out / f"{tag}_detector", self._card("detector", metrics))

    def _write_state(self) -> None:
        if self.rank:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        write_atomically(self.out / STATE_FILE, json.dumps(self.state, indent=1).encode())  # fsynced: survives a crash

    def _load_state(self) -> None:
        path = self.out / STATE_FILE
        if not path.exists():
            return
        try:
            state = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            what = type(exc).__name__
            raise ValueError(f"{path}: not a readable run state ({what}); move it away to start afresh") from None
        if not isinstance(state, dict) or not isinstance(state.get("done"), list):
            raise ValueError(f"{path}: not a napari-lidnet run state (no list of done stages)")
        saved = state.get("config") or {}
        if saved.get("dose") is None and saved.get("data") and Path(saved["data"]).is_file():
            saved["dose"] = self._manifest_dose  # a run folder from before manifests' doses were recorded
        check_resume(state, self._config_record())
        self.state = state
        self.resumed = True
        adopted = self._adopt_saved_stage()
        if any(stage != "validate-start" for stage in state["done"]):  # a training stage finished: weights exist
            self._load_last()
        if adopted:  # its in-stage checkpoint is dropped once the stage's weights have loaded
            self._drop_partial()

    def _load_last(self) -> None:
        """The networks of the last finished stage. A run killed between the first stage's two saves has no
        ``last_`` file of the network no stage has trained yet: that one is the run's start (otherwise
        such a run could never resume)."""
        from napari_lidnet.models.weights import load_weights

        for kind in ("denoiser", "detector"):
            path = self.out / f"last_{kind}"
            trained = any(name.endswith(f"-{kind}") for name in self.state["done"])
            if trained or path.with_suffix(".json").exists():
                setattr(self, kind, load_weights(path)[0].to(self.device))

    def _holder(self) -> str | None:
        """Why the run folder is refused when another run holds its lock; None when it is free."""
        try:
            FolderLock(self.out, LOCK_FILE).close()
        except FolderInUse as exc:
            return _in_use(self.out, exc.holder)
        return None

    def resume_line(self) -> str:
        """What a resumed run goes on from ('' for a new run): the stages finished and the steps they hold."""
        if not self.resumed:
            return ""
        done = [n for n in self.state.get("done", []) if n != "validate-start"]
        steps = sum(n for name, n in self.stages() if name in done)
        changed = changed_settings(self.state, self.cfg)
        left = ("the stages not started yet (a stage under way goes on at its own)" if steps < self.total_steps()
                else "nothing: no step is left to run")  # fmt: skip
        also = f"; {', '.join(changed)} apply to {left}" if changed else ""
        return (f"resuming the run in {self.out}: {len(done)} stage(s) finished ({steps} of {self.total_steps()} "
                f"steps){self._next_stage_note(done)}{also}")  # fmt: skip

    def _next_stage_note(self, done: list[str]) -> str:
        """'; round1-denoiser goes on from its checkpoint at step 5 of 10' (or starts), '' when none is left."""
        name, n = next(((name, n) for name, n in self.stages() if name not in done), (None, 0))
        if name is None:
            return ""
        step = int(partial_meta(self.out, _network(name), name, n).get("step", 0))
        return f"; {name} goes on from its checkpoint at step {step} of {n}" if step else f"; {name} starts"

    def _adopt_saved_stage(self) -> bool:
        """A stage whose result reached ``last_*`` but whose state.json did not (the run died between the two
        writes): its network's card says the stage is done, so it counts as done (training it again from those
        weights would train it twice), and the validation that was to follow it runs first when the run resumes;
        True when it did."""
        from napari_lidnet.models.weights import read_card

        done = self.state["done"]
        for kind in ("denoiser", "detector"):
            try:
                training = read_card(self.out / f"last_{kind}").get("training") or {}
            except (OSError, ValueError):
                continue
            saved = list(training.get("stages_done") or [])
            if len(saved) == len(done) + 1 and saved[:-1] == done and saved[-1].endswith(f"-{kind}"):
                name = saved[-1]
                done.append(name)
                self.state.setdefault("stage_steps", {})[name] = (training.get("stage_steps") or {}).get(name, 0)
                config = training.get("config") or {}
                self.state.setdefault("stage_settings", {})[name] = {
                    **{k: config[k] for k in TRAINING_KEYS if k in config},
                    **((training.get("stage_settings") or {}).get(name) or {})}  # fmt: skip
                self.state["validate_pending"] = name
                return True
        return False

    # -- the schedule ---------------------------------------------------------------------------------------
    def stages(self) -> list[tuple[str, int]]:
        """(name, steps) of every stage in order (``TrainConfig.stages``)."""
        return self.cfg.stages()

    def total_steps(self) -> int:
        return sum(n for _, n in self.stages())

    def run(self) -> Iterator[dict[str, Any]]:
        """Run (or resume) the schedule, yielding one progress record per step and per validation.

        Rank 0 holds a lock on the run folder meanwhile: a second run on the same folder (a forgotten process, an
        orphaned worker of a lost job) is refused instead of writing checkpoints over this one's.
        """
        lock, busy = None, None
        if self.rank == 0:
            try:
                lock = FolderLock(self.out, LOCK_FILE)
            except FolderInUse as exc:
                busy = _in_use(self.out, exc.holder)
        busy = distributed.broadcast_object(busy)  # also the barrier: every rank has read the run folder
        if busy:
            raise TrainingError(busy)
        try:
            yield from self._run()
        finally:
            if lock is not None:
                lock.close()

    def _validate_pending(self, stages: list[tuple[str, int]], done_steps: int, total: int) -> Iterator[dict]:
        """A stage adopted from its checkpoint (see ``_start``): its state written, or its group validated."""
        pending = self.state.pop("validate_pending", None)
        names = [n for n, _ in stages]
        if pending in names:
            if not _ends_group(names, names.index(pending)):
                self._write_state()
            else:
                yield self._end_of_stage(pending, done_steps, total)

    def _run(self) -> Iterator[dict[str, Any]]:
        stages = self.stages()
        total = self.total_steps()
        done_steps = sum(n for name, n in stages if name in self.state["done"])
        validated = False  # a validation just ran: Stop pressed meanwhile begins no stage
        for rec in itertools.chain(self._start(done_steps, total), self._validate_pending(stages, done_steps, total)):
            validated = validated or rec["stage"] == "validate"
            yield rec
        for index, (name, n_steps) in enumerate(stages):
            if name in self.state["done"]:
                continue
            if validated and distributed.any_rank(self.should_stop()):  # Stop during a validation: no next stage
                yield {"stage": "stopped", "step": done_steps, "total_steps": total,
                       "message": f"stopped before {name}: {self.kept_message()}"}  # fmt: skip
                return
            before, validated = done_steps, False
            for rec in self._run_stage(name, index, n_steps):
                if rec["stage"] == "setup":
                    yield {**rec, "step": done_steps, "total_steps": total}
                    continue
                done_steps = before + rec["stage_step"]  # a stage resumed inside starts past its first step
                rec.update(step=done_steps, total_steps=total, eta_s=self._eta(stages, index, rec["stage_step"]))
                yield rec
                if distributed.any_rank(self.should_stop()):  # under torchrun: every rank stops at this step
                    self._save_partial()  # the steps of this stage so far are kept
                    yield {
                        "stage": "stopped",
                        "step": done_steps,
                        "total_steps": total,
                        "message": f"stopped during {name}: {self.kept_message()}",
                    }
                    return
            done_steps = before + n_steps
            self.state["done"].append(name)
            self.state.setdefault("stage_steps", {})[name] = n_steps
            if not _ends_group([n for n, _ in stages], index):
                self._save("last", self.state.get("last_metrics", {}))  # resumable after every stage
                self._write_state()
                self._drop_partial()
                continue  # validate once per group: after pretraining, after each whole round
            end = self._end_of_stage(name, done_steps, total)
            self._drop_partial()
            yield end
            validated = True
        distributed.barrier()  # rank 0 has validated and written the last checkpoint: every rank finishes with it
        yield {
            "stage": "finished",
            "step": done_steps,
            "total_steps": total,
            "best": self.state.get("best_metrics"),
            "start": self.state.get("start_metrics"),
            "best_test": self.state.get("best_test_metrics"),
            "start_test": self.state.get("start_test_metrics"),
            "selection": self.state.get("selection"),
            "out": str(self.out),
        }

    def kept_message(self) -> str:
        """What a stop keeps: the checkpoint inside the stage under way (see ``partial``), or the checkpoints after
        the last finished stage, or nothing yet; and the steps that are lost."""
        live, out = self._live, self.out
        if self._partial_at is not None:
            stage, step = self._partial_at
            lost = live[-1] - step if live is not None and live[0] == stage else 0
            tail = f"; the {lost} steps after it are lost" if lost else ""
            return f"the checkpoint at step {step} of {stage} in {out} is kept{tail}; run again to resume"
        lost = f"; the {live[-1]} steps of {live[0]} done so far are lost" if live is not None else ""
        done = [n for n in self.state.get("done", []) if n != "validate-start"]
        if done:
            return f"the checkpoints after {done[-1]} in {out} are kept{lost}; run again to resume"
        return f"no checkpoint yet{lost}: running again starts {out} from the beginning"

    def _end_of_stage(self, name: str, step: int, total: int) -> dict[str, Any]:
        t0 = time.monotonic()
        metrics = self.validate()
        score = selection_score(metrics)
        best = self.state["best_score"]
        self.state["last_metrics"] = metrics
        self._save("last", metrics)
        is_best = score is None or best is None or score > best  # no validation: the last round is the result
        if is_best:
            self._save("best", metrics)
            self.state["best_score"] = score
            self.state["best_metrics"] = metrics
            self.state["best_after"] = name
            self.state["best_test_metrics"] = self.test()
        self.state["history"].append({"after": name, "val": metrics, "score": score})
        self._write_state()
        self._clock.validated(time.monotonic() - t0)
        return {
            "stage": "validate",
            "after": name,
            "val": metrics,
            "is_best": is_best,
            "step": step,
            "total_steps": total,
        }

    def _eta(self, stages: list[tuple[str, int]], index: int, stage_step: int) -> float | None:
        """Seconds left after step ``stage_step`` of stage ``index``: the steps of each network still to run at its
        own pace, and the validations still to come at the time the earlier ones took (``StepClock``)."""
        self._clock.step(stages[index][0])
        left, names = {"denoiser": 0, "detector": 0}, [n for n, _ in stages]
        for j in range(index, len(stages)):
            left[_network(names[j])] += stages[j][1] - (stage_step if j == index else 0)
        validations = sum(_ends_group(names, j) for j in range(index, len(stages)))
        return self._clock.seconds_left(left, validations)

    def _seed(self, index: int) -> int:
        return self.cfg.seed * 1000 + index

    def _start(self, done_steps: int, total: int) -> Iterator[dict[str, Any]]:
        """A run's (or a resume's) first records: notes, and the validation of the starting weights."""
        recorded = self.state.setdefault("stage_steps", {})
        for name in self.state.get("done", []):  # a run folder from before the record: its settings of then
            key = steps_key(name)
            if key and name not in recorded and key in (self.state.get("config") or {}):
                recorded[name] = self.state["config"][key]
        note = changed_steps_note(self.state, self.cfg)
        self.state["config"] = self._config_record()
        if self.command and self.rank == 0:
            self.state["commands"] = [*self.state.get("commands", []), self.command]
        if note:
            yield {"stage": "setup", "message": note, "step": done_steps, "total_steps": total}
        if self._new_manifest and self.rank == 0:
            from napari_lidnet.datasets.manifest import write_manifest

            write_manifest(self.out / MANIFEST_FILE, *self._new_manifest)  # indexed once: a resumed run reuses it
        if self.device_notice:
            yield {"stage": "setup", "message": self.device_notice, "step": done_steps, "total_steps": total}
        pending = sum(bool(getattr(s, "to_simulate", False)) for s in (*self.train_samples, *self.val_samples,
                                                                         *self.test_samples))  # fmt: skip
        if pending:  # said first, or a first run is silent for minutes while they are made
            yield {"stage": "setup", "step": done_steps, "total_steps": total,
                   "message": f"{pending} slices have no low-dose partner yet: each is simulated when first used "
                              "(seconds each on a CPU, the validation slices first) and kept beside the manifest, "
                              "so a re-run starts at once"}  # fmt: skip
        if "validate-start" not in self.state["done"]:
            n_val, n_test = len(self.val_samples), len(self.test_samples)
            if n_val or n_test:
                said = f"measuring the starting models ({n_val} validation, {n_test} test slices)"
                yield {"stage": "setup", "message": said, "step": done_steps, "total_steps": total}
            t0 = time.monotonic()
            metrics = self.validate()
            self.state["start_metrics"] = metrics
            self.state["start_test_metrics"] = self.test()
            said = self._input_baseline()
            self.state["selection"] = RULE_SCORE if self.val_samples else RULE_LAST
            self.state["done"].append("validate-start")
            self._write_state()
            self._clock.validated(time.monotonic() - t0)
            yield {"stage": "validate", "after": "start", "val": metrics, "step": done_steps, "total_steps": total,
                   **said}  # fmt: skip

    def _input_baseline(self) -> dict[str, Any]:
        """The low-dose input's own scores (no denoising) on the validation and test slices, into the state; for the
        start's validation record, the input's (``input``) and a note when the references are as noisy as the low
        dose (``notes``, ``noisy_reference_note``)."""
        for part, key in (("val", "input_metrics"), ("test", "input_test_metrics")):
            if part in self._stacked:
                self.state[key] = input_quality(self._stacked[part])
        base = self.state.get("input_metrics")
        if not base:
            return {}
        note = noisy_reference_note(base)
        if note:
            self.state.setdefault("notes", []).append(note)
        return {"input": base, "notes": [note] if note else []}

    def _run_stage(self, name: str, index: int, n_steps: int) -> Iterator[dict[str, Any]]:
        """Train one stage; a stage resumed from its checkpoint goes on with the settings it was trained with (a
        resume's new --batch-size used to apply to the rest of the stage under way, though it said it would not)."""
        own = partial_meta(self.out, _network(name), name, n_steps).get("settings")
        own = own if isinstance(own, dict) else {}  # none recorded: a checkpoint of an earlier version
        kept = {k: v for k, v in own.items() if k in TRAINING_KEYS and getattr(self.cfg, k) != v}
        given = self.cfg
        self.cfg = replace(given, **kept) if kept else given
        try:
            yield from self._stage_steps(name, index, n_steps)
            self.state.setdefault("stage_settings", {})[name] = self._stage_settings()  # for the cards
        finally:
            self.cfg = given

    def _stage_settings(self) -> dict[str, Any]:
        """The settings a checkpoint inside a stage records (``resume.TRAINING_KEYS``)."""
        return {k: getattr(self.cfg, k) for k in TRAINING_KEYS}

    def _stage_steps(self, name: str, index: int, n_steps: int) -> Iterator[dict[str, Any]]:
        torch.manual_seed(self._seed(index))
        joint = name.startswith("round") and name.endswith("denoiser") and self.cfg.mode != "pixel"
        batches = self._batches(index, n_steps)
        network = _network(name)
        if network == "denoiser":
            model, lr = self.denoiser, self.cfg.lr
            scales = self.calibrate() if joint else {}
            if joint:
                self.state.setdefault("calibration", {})[name] = scales
            step_fn = partial(self.denoiser_step, net=distributed.wrap(model), scales=scales)
        else:
            model, lr = self.detector, self.cfg.detector_lr
            step_fn = partial(self._detector_step, net=distributed.wrap(model), pretrain=name == "pretrain-detector")
        if name.startswith("round"):
            lr *= self.cfg.round_lr_scale
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(n_steps, 1), eta_min=lr * 0.1)
        first, note = load_partial(self.out, network, model, opt, sched, name, n_steps)  # 0: from the stage's start
        if note:
            yield {"stage": "setup", "message": note}
        if first:
            self._partial_at = (name, first)
        for _ in range(first):
            next(batches)  # the batches of the steps already taken (read, not trained on)
        every = self.cfg.checkpoint_every
        for step in range(first + 1, n_steps + 1):
            losses = step_fn(next(batches), opt)
            sched.step()
            bad = [k for k, v in losses.items() if not math.isfinite(v)]
            if bad:
                raise TrainingError(
                    f"{', '.join(bad)} loss became {losses[bad[0]]} at {name} step {step}; the run stopped: "
                    f"{self.kept_message()}"
                )
            self._live = (name, n_steps, network, model, opt, sched, step)
            yield {"stage": name, "stage_step": step, "stage_total": n_steps, "losses": losses}
            if every and step % every == 0 and step < n_steps:
                self._save_partial()
        # _live stays until the stage's own checkpoint replaces its partial one (_drop_partial): a stop during the
        # validation after it still says how many of its steps are lost

    def _save_partial(self) -> None:
        """A checkpoint inside the stage under way (rank 0 writes it; see ``partial``)."""
        if self._live is None:
            return
        name, n_steps, network, model, opt, sched, step = self._live
        with uninterrupted():  # a second Ctrl-C waits for a whole checkpoint, and then says it is kept
            if self.rank == 0:
                save_partial(self.out, network, model, opt, sched, where(name, n_steps, step), self._stage_settings())
                self._write_state()  # this run's command, with the steps it added
            self._partial_at = (name, step)

    def _drop_partial(self) -> None:
        self._live = self._partial_at = None
        if self.rank == 0:
            drop_partial(self.out)

    def _batches(self, index: int, n: int) -> Iterator[PatchBatch]:
        """This process's share of the stage's ``n`` seeded global batches, on the training device."""
        c = self.cfg
        seed = self._seed(index)
        for batch in patch_batches(
            self.train_samples, c.patch_size, c.batch_size, n, seed, self.rank, self.world_size, c.workers,
            c.insert_lesions, c.insert_lung, c.insert_max_mm, c.hard_negatives, c.insert_attached,
        ):
            yield batch.to(self.device)

    def aux_losses(self, denoised: torch.Tensor, batch: PatchBatch) -> dict[str, tuple[torch.Tensor, float]]:
        """The mode's auxiliary terms for the denoiser, each with its configured (relative) weight: ``pixel`` none,
        ``lidnet`` detection + ROI perceptual, ``lidnet-noroi`` detection, ``lidnet-wholeperc`` detection +
        whole-image perceptual (a zero weight leaves its term out)."""
        mode, c = self.cfg.mode, self.cfg
        aux: dict[str, tuple[torch.Tensor, float]] = {}
        if mode == "pixel":
            return aux
        if c.det_weight:
            aux["detection"] = (detection_loss(self.detector, denoised, batch.boxes), c.det_weight)
        if mode == "lidnet" and c.roi_weight:
            roi = roi_perceptual_loss(
                self.detector, denoised, batch.full, self.roi_boxes(batch), c.roi_margin, tuple(c.roi_levels)
            )
            aux["roi_perceptual"] = (roi, c.roi_weight)
        elif mode == "lidnet-wholeperc" and c.roi_weight:
            whole = whole_image_perceptual_loss(self.detector, denoised, batch.full, tuple(c.roi_levels))
            aux["whole_perceptual"] = (whole, c.roi_weight)
        return aux

    @torch.no_grad()
    def roi_boxes(self, batch: PatchBatch) -> list[torch.Tensor]:
        """Regions of the ROI perceptual loss: ground-truth boxes, the frozen detector's boxes on the full-dose
        patch (score >= ``roi_score``), or both."""
        if self.cfg.roi_boxes == "gt":
            return batch.boxes
        found = self.detector.detect(batch.full, score_threshold=self.cfg.roi_score)
        predicted = [b.to(batch.full.device) for b, _scores in found]
        if self.cfg.roi_boxes == "predicted":
            return predicted
        return [torch.cat([g, p], 0) for g, p in zip(batch.boxes, predicted)]

    def calibration_set(self) -> PatchBatch:
        """The fixed lesion-centred patches that calibrate the auxiliary weights (chosen once, seeded by the config;
        the whole set on every process)."""
        if self._calibration is None:
            c = self.cfg
            batch = calibration_batch(
                self.train_samples, c.patch_size, c.calibration_patches, c.seed,
                insert=bool(c.insert_lesions), insert_lung=c.insert_lung,
                insert_max_mm=c.insert_max_mm, insert_attached=c.insert_attached,
            )  # fmt: skip
            self._calibration = batch.to(self.device)
        return self._calibration

    @torch.no_grad()
    def calibrate(self) -> dict[str, float]:
        """Scale of each auxiliary term so that ``weight`` means a fraction of the pixel loss at the round's start,
        both measured on :meth:`calibration_set`: the weights then mean the same for every denoiser, dose and
        dataset, and the same on every process. Raises TrainingError when a term is 0 or not finite there."""
        batch = self.calibration_set()
        self.denoiser.eval()
        self.detector.eval()
        denoised = self.denoiser(batch.low)
        pix = float(pixel_loss(denoised, batch.full, self.cfg.pixel_loss))
        scales = {}
        for key, (value, _weight) in self.aux_losses(denoised, batch).items():
            v = float(value)
            if not (math.isfinite(v) and v > 0 and math.isfinite(pix)):
                raise TrainingError(f"the {key} loss is {v} (pixel loss {pix}) on the calibration patches: its "
                                    "weight cannot be set relative to the pixel loss")  # fmt: skip
            scales[key] = pix / v
        return scales

    def denoiser_step(
        self, batch: PatchBatch, opt: torch.optim.Optimizer, net: torch.nn.Module, scales: dict[str, float]
    ) -> dict[str, float]:
        """One optimiser step of the denoiser (through ``net``, its DDP wrapper or itself): pixel loss plus, when
        ``scales`` is given, the mode's auxiliary terms of the frozen detector (eval mode, no gradients to it)."""
        self.denoiser.train()
        denoised = net(batch.low)
        losses = {"pixel": pixel_loss(denoised, batch.full, self.cfg.pixel_loss)}
        total = losses["pixel"]
        if scales:
            self.detector.eval()
            self.detector.requires_grad_(False)
            for key, (value, weight) in self.aux_losses(denoised, batch).items():
                losses[key] = value
                total = total + weight * scales[key] * value
            self.detector.requires_grad_(True)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(self.denoiser.parameters(), 1.0)
        opt.step()
        losses["total"] = total
        return {k: float(v.detach()) for k, v in losses.items()}

    def _detector_step(
        self, batch: PatchBatch, opt: torch.optim.Optimizer, net: torch.nn.Module, pretrain: bool
    ) -> dict[str, float]:
        if pretrain:
            images = batch.full
        else:
            with torch.no_grad():
                self.denoiser.eval()
                images = self.denoiser(batch.low)
            n_full = int(round(self.cfg.full_dose_fraction * len(images)))
            if n_full:
                images = torch.cat([batch.full[:n_full], images[n_full:]], 0)
        self.detector.train()
        loss = self.detector.loss(net(images), batch.boxes)["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.detector.parameters(), 5.0)
        opt.step()
        return {"detection": float(loss.detach())}

    def validate(self) -> dict[str, float]:
        """Validation metrics of the current denoiser and detector (on the denoised validation slices); rank 0."""
        return self._evaluate("val", self.val_samples)

    def test(self) -> dict[str, float]:
        """The same metrics on the held-out test slices (never used to choose); rank 0, {} without a test part."""
        return self._evaluate("test", self.test_samples)

    def _evaluate(self, part: str, samples: list) -> dict[str, float]:
        if not samples or self.rank:
            return {}
        if part not in self._stacked:  # read once: archive slices are read (and simulated) on every access
            self._stacked[part] = stack_samples(samples)
        detector = self.detector if self.cfg.boxes_are_annotations else None  # detected boxes: no sensitivity
        threshold = default_threshold(self._init_records.get("detector"))  # the one the trained detector inherits
        return evaluate_denoiser(self.denoiser, detector, self._stacked[part], self.device, threshold)


def _weights_record(name: str, card: dict[str, Any]) -> dict[str, Any]:
    """What a card says of weights a run started from: the name given, the file's hash and date, and a
    detector's calibration (its threshold, inherited by the trained detector until it is calibrated again)."""
    record = {"name": str(name), "sha256": card.get("sha256"), "created": card.get("created")}
    if isinstance(card.get("calibration"), dict):
        record["calibration"] = dict(card["calibration"])
    return record


def _in_use(out: Path, holder: str) -> str:
    return f"{out} is in use by another training run ({holder}); stop it first, or train into another folder"
