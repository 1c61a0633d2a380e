"""May a run folder be resumed with these settings? Its checkpoints only make sense for the same data, mode,
architectures, starting weights and validation split; step counts, learning rates, device and workers may change
(more rounds extend a run; finished stages are not run again with other step counts: ``changed_steps_note``)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from napari_lidnet._training.config import TrainConfig

#: settings that must match the run folder's state.json to resume it
RESUME_KEYS = (
    "mode",
    "data",
    "dose",
    "denoiser",
    "denoiser_kwargs",
    "detector_kwargs",
    "init_denoiser",
    "init_detector",
    "seed",
    "val_fraction",
    "val_max_slices",
    "test_fraction",
    "split",
    # what the patches and the ROI loss are made of, read at every step, so a stage under way would change midway
    # (otherwise a changed --insert-lesions or --roi-boxes would be taken without a word)
    "insert_lesions",
    "insert_lung",
    "insert_max_mm",
    "insert_attached",
    "roi_boxes",
    "roi_score",
    "roi_margin",
    "roi_levels",
)
_PATH_KEYS = ("data", "init_denoiser", "init_detector")
#: the modes whose denoiser loss reads each ROI setting (with a non-zero ``roi_weight``); others ignore them
_ROI_MODES = {"roi_boxes": ("lidnet",), "roi_score": ("lidnet",), "roi_margin": ("lidnet",),
              "roi_levels": ("lidnet", "lidnet-wholeperc")}  # fmt: skip


def _read(key: str, config: dict[str, Any]) -> bool:
    """Whether a run with ``config`` reads setting ``key`` (a pixel-loss run never reads the ROI settings)."""
    modes = _ROI_MODES.get(key)
    return modes is None or (config.get("mode", "lidnet") in modes and bool(config.get("roi_weight", 1.0)))


def _comparable(key: str, value: Any) -> Any:
    """Paths compared as absolute paths (names of registry models stay names); other values as they are."""
    if key in _PATH_KEYS and isinstance(value, str) and value:
        expanded = os.path.expanduser(value)
        if key == "data" or os.path.sep in value or os.path.exists(expanded):
            return os.path.abspath(expanded)
    return value


def resume_differences(state: dict[str, Any], config: Any) -> list[str]:
    """``"key: run X, now Y"`` for every resume-relevant setting in which ``config`` differs from the run's
    ``state.json`` (``state["config"]``); empty when the run has no recorded settings yet."""
    saved = state.get("config") or {}
    now = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    diffs = []
    for key in RESUME_KEYS:
        if key not in saved or not (_read(key, saved) or _read(key, now)):
            continue
        old, new = _comparable(key, saved[key]), _comparable(key, now.get(key))
        if old != new:
            diffs.append(f"{key}: run {saved[key]!r}, now {now.get(key)!r}")
    return diffs


def check_resume(state: dict[str, Any], config: Any) -> None:
    """Refuse (ValueError, one line naming every difference) to resume a run folder with other data, mode,
    architecture, starting weights or validation split than the run in it was started with."""
    diffs = resume_differences(state, config)
    if diffs:
        out = (config.to_dict() if hasattr(config, "to_dict") else dict(config)).get("out", "the run folder")
        raise ValueError(
            f"{out} holds a run with other settings ({'; '.join(diffs)}); run again with those settings to resume "
            "it, or choose a new --out folder"
        )


#: the setting that sets each kind of stage's step count
STAGE_STEPS = {"pretrain-denoiser": "pretrain_denoiser_steps", "pretrain-detector": "pretrain_detector_steps",
               "denoiser": "denoiser_steps", "detector": "detector_steps"}  # fmt: skip


def steps_key(stage: str) -> str | None:
    """The setting that sets a stage's step count (None for ``validate-start``)."""
    return STAGE_STEPS.get(stage) or STAGE_STEPS.get(stage.rsplit("-", 1)[-1] if stage.startswith("round") else "")


def changed_steps_note(state: dict[str, Any], cfg: TrainConfig) -> str:
    """A note when a resumed run is given other step counts for stages it has finished ('' otherwise): those
    stages are not run again; only more --rounds extend a run. Each stage's own count is recorded when it finishes
    (``stage_steps``)."""
    notes = []
    for name, ran in (state.get("stage_steps") or {}).items():
        key = steps_key(name)
        if key and name in state.get("done", []) and ran != getattr(cfg, key):
            notes.append(f"{name} finished with {ran} steps")
    if not notes:
        return ""
    return (f"{'; '.join(notes)}: finished stages are not run again with other step counts (more --rounds extend a "
            "run; a new --out trains longer)")  # fmt: skip


#: settings a resumed run may change: they apply to the stages it has not started (a partial stage keeps its own)
TRAINING_KEYS = ("lr", "detector_lr", "round_lr_scale", "batch_size", "patch_size", "pixel_loss", "det_weight",
                 "roi_weight")  # fmt: skip


def changed_settings(state: dict[str, Any], config: Any) -> list[str]:
    """``--lr 0.005 (the run's 0.0001)`` for each of :data:`TRAINING_KEYS` that ``config`` changes from the run's
    ``state.json``, so that a re-run of a finished run with other settings does not silently change nothing."""
    saved = state.get("config") or {}
    now = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return [f"--{key.replace('_', '-')} {now.get(key)!r} (the run's {saved[key]!r})"
            for key in TRAINING_KEYS if key in saved and saved[key] != now.get(key)]  # fmt: skip
