"""The user's own data for fine-tuning: image layers, a DICOM folder or a dataset folder -> trainer samples.

Three ways in (the fine-tuning widget offers all of them; this module has no Qt and never imports napari):

- normal-dose images (layers or a DICOM folder): low-dose partners are simulated at a chosen dose fraction
  (``sim.lowdose.simulate_low_dose``, seeded); lesion boxes come from a Shapes layer the user drew or corrected,
  from the volume's own annotations, or else from the starting detector's confident detections;
- paired layers: a low-dose image, its full-dose reference and a Shapes layer of lesion boxes;
- a dataset folder as written by ``lidnet simulate`` (``io.dataset.read_dataset``).

Every 3D volume contributes its slices as samples named ``"<name>#<z>"``. ``check_inputs`` (cheap, before anything
runs) and ``check_samples`` (after simulation/detection) list every problem at once, with what to do about it.
``finetune_job`` is the whole one-click run as a generator of progress records (prepare data, train, publish), so
the widget, the benchmark and the tests run exactly the same code. torch is imported only inside functions.
"""

from __future__ import annotations

import datetime as _dt
import gc
import os
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_lidnet._training.config import TrainConfig  # a plain dataclass: no torch

#: fewest lesion boxes for the detection and ROI perceptual losses to mean something
MIN_LESIONS = 2
#: score above which the starting detector's detections become training boxes
AUTO_BOX_THRESHOLD = 0.5
#: boxes may stick out of the image by this many pixels (clipped); more is reported
EDGE_TOLERANCE_PX = 1.0
SOURCES = ("layers", "paired", "dicom", "dataset")

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
    "seed": 0,
    "device": "auto",
}
#: pretraining steps used when a network starts from scratch (no trained model to start from)
SCRATCH_PRETRAIN_STEPS = {"pretrain_denoiser_steps": 200, "pretrain_detector_steps": 300}


class DataProblems(ValueError):
    """The data cannot be trained on; ``problems`` lists every reason (the message lists them too)."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(format_problems(self.problems))


def format_problems(problems: Sequence[str]) -> str:
    """One message listing every problem."""
    if len(problems) == 1:
        return f"cannot fine-tune on this data: {problems[0]}"
    return "cannot fine-tune on this data:\n" + "\n".join(f"- {p}" for p in problems)


@dataclass
class CTInput:
    """One image (2D slice or 3D volume, HU) to train on, with lesion boxes in its own pixel frame.

    ``boxes``: (N, 5) ``slice, x1, y1, x2, y2`` (slice 0 for 2D), or None when they are still to be detected.
    ``low_hu``: the low-dose partner, or None when it is to be simulated from ``full_hu``.
    """

    name: str
    full_hu: np.ndarray
    spacing_mm: float
    low_hu: np.ndarray | None = None
    boxes: np.ndarray | None = None
    box_source: str = "none"  # drawn | annotations | detected | none

    @property
    def n_slices(self) -> int:
        return 1 if self.full_hu.ndim == 2 else int(self.full_hu.shape[0])

    @property
    def slice_shape(self) -> tuple[int, int]:
        return tuple(int(n) for n in self.full_hu.shape[-2:])  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ layers -> inputs


def _layer_spacing_mm(layer: Any) -> float:
    """In-plane pixel size of an image layer (its last scale entry), 1.0 when unset."""
    s = abs(float(layer.scale[-1]))
    return s if s > 0 else 1.0


def shapes_in_image(shapes_layer: Any, image_layer: Any, current_slice: int | None = None) -> tuple[np.ndarray, list]:
    """Shapes of ``shapes_layer`` as (N, 5) ``slice, x1, y1, x2, y2`` boxes in ``image_layer``'s pixels.

    Vertices go through world coordinates (each layer's scale/translate/affine). 2D shapes over a 3D image lie
    on ``current_slice``. Lines and paths are not boxes: they are reported, not used. Returns (boxes, problems).
    """
    problems: list[str] = []
    rows: list[np.ndarray] = []
    img_ndim = int(image_layer.ndim)
    types = list(getattr(shapes_layer, "shape_type", ["rectangle"] * len(shapes_layer.data)))
    for i, (verts, kind) in enumerate(zip(shapes_layer.data, types)):
        if kind in ("line", "path"):
            problems.append(f"shape {i} of {shapes_layer.name!r} is a {kind}, not a lesion box: draw rectangles")
            continue
        verts = np.asarray(verts, dtype=float)
        world = np.array([np.asarray(shapes_layer.data_to_world(v), float) for v in verts])
        if world.shape[1] < img_ndim:
            if current_slice is None:
                problems.append(
                    f"shape {i} of {shapes_layer.name!r} is 2D but {image_layer.name!r} is 3D: draw it in 3D"
                )
                continue
            z_world = np.asarray(image_layer.data_to_world([current_slice] + [0] * (img_ndim - 1)), float)[0]
            world = np.hstack([np.full((len(world), img_ndim - world.shape[1]), z_world), world])
        world = world[:, -img_ndim:]
        rows.append(np.array([np.asarray(image_layer.world_to_data(w), float) for w in world]))
    from napari_lidnet._widgets._layers import shapes_to_boxes  # plain numpy, no Qt

    boxes = shapes_to_boxes(rows)
    return boxes, problems


def _inside(box: np.ndarray, shape: tuple[int, ...]) -> bool:
    """Whether a box's centre (and slice) lies in an image of ``shape`` (y, x) or (z, y, x)."""
    z, x1, y1, x2, y2 = box
    h, w = shape[-2:]
    n_z = shape[0] if len(shape) == 3 else 1
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return 0 <= cx < w and 0 <= cy < h and -0.5 <= z < n_z - 0.5


def inputs_from_layers(
    image_layers: Sequence[Any],
    shapes_layer: Any | None = None,
    current_slice: int | None = None,
) -> tuple[list[CTInput], list[str]]:
    """Normal-dose image layers (2D/3D, HU) -> inputs; boxes from ``shapes_layer`` (None: detect them later).

    With several images, a box belongs to the image that holds its centre; a box inside none is reported.
    """
    problems: list[str] = []
    inputs = []
    claimed: set[int] = set()
    n_shapes = len(shapes_layer.data) if shapes_layer is not None else 0
    for layer in image_layers:
        hu = np.asarray(layer.data, dtype=np.float32)
        boxes = None
        source = "none"
        if shapes_layer is not None:
            all_boxes, notes = shapes_in_image(shapes_layer, layer, current_slice)
            problems.extend(n for n in notes if n not in problems)
            mine = [k for k, b in enumerate(all_boxes) if len(image_layers) == 1 or _inside(b, hu.shape)]
            claimed.update(mine)
            boxes = all_boxes[mine].reshape(-1, 5)
            source = f"drawn ({shapes_layer.name})"
        inputs.append(CTInput(layer.name, hu, _layer_spacing_mm(layer), boxes=boxes, box_source=source))
    if shapes_layer is not None and len(image_layers) > 1 and len(claimed) < n_shapes:
        lost = n_shapes - len(claimed)
        problems.append(f"{lost} box(es) of {shapes_layer.name!r} lie outside every chosen image")
    return inputs, problems


def paired_input(
    low_layer: Any, full_layer: Any, shapes_layer: Any | None, current_slice: int | None = None
) -> tuple[CTInput, list[str]]:
    """A low-dose layer, its full-dose reference and (optionally) a Shapes layer of lesion boxes -> one input."""
    inputs, problems = inputs_from_layers([full_layer], shapes_layer, current_slice)
    item = inputs[0]
    item.low_hu = np.asarray(low_layer.data, dtype=np.float32)
    item.name = low_layer.name
    return item, problems


def inputs_from_dicom(folder: str | os.PathLike) -> list[CTInput]:
    """Every CT series (or image file) under ``folder`` as a normal-dose input; its own boxes when it has some."""
    from napari_lidnet.io.open_ct import open_ct

    inputs = []
    for vol in open_ct(folder):
        has = vol.boxes is not None and len(vol.boxes) > 0
        boxes = np.asarray(vol.boxes, np.float32).reshape(-1, 5) if has else None
        spacing = abs(float(vol.spacing[-1]))
        inputs.append(CTInput(vol.name, vol.hu, spacing, boxes=boxes, box_source="annotations" if has else "none"))
    return inputs


# ------------------------------------------------------------------------------------------------- checks


def _box_problems(item: CTInput) -> list[str]:
    """Boxes outside the image (beyond the edge tolerance), on missing slices, or without area."""
    if item.boxes is None or len(item.boxes) == 0:
        return []
    h, w = item.slice_shape
    bad_out, bad_slice, bad_size = [], [], []
    for k, (z, x1, y1, x2, y2) in enumerate(np.asarray(item.boxes, float)):
        t = EDGE_TOLERANCE_PX
        if not (0 <= round(z) < item.n_slices):
            bad_slice.append(k)
        elif x1 < -t or y1 < -t or x2 > w + t or y2 > h + t:
            bad_out.append(k)
        elif x2 - x1 < 1 or y2 - y1 < 1:
            bad_size.append(k)
    out = []
    if bad_out:
        out.append(f"{item.name!r}: box(es) {bad_out[:5]} reach outside the {w}x{h} image: move or redraw them")
    if bad_slice:
        out.append(
            f"{item.name!r}: box(es) {bad_slice[:5]} lie on slices the image does not have (0-{item.n_slices - 1})"
        )
    if bad_size:
        out.append(f"{item.name!r}: box(es) {bad_size[:5]} are smaller than one pixel")
    return out


def _lesion_advice(n: int) -> str:
    return (
        f"only {n} lesion box(es); the detection and ROI losses need at least {MIN_LESIONS}: draw rectangles "
        f"around lesions on a Shapes layer, or train the denoiser alone (pixel loss) in Advanced"
    )


def check_inputs(
    inputs: Sequence[CTInput], patch_size: int, need_lesions: bool = True, val_fraction: float = 0.2
) -> list[str]:
    """Problems visible before any simulation or detection (empty list: fine so far)."""
    problems: list[str] = []
    if not inputs:
        return ["no images chosen: pick at least one CT image"]
    for item in inputs:
        if item.full_hu.ndim not in (2, 3):
            problems.append(f"{item.name!r}: expected a 2D slice or a 3D volume, got shape {item.full_hu.shape}")
            continue
        if item.low_hu is not None and item.low_hu.shape != item.full_hu.shape:
            problems.append(
                f"{item.name!r}: low-dose shape {item.low_hu.shape} differs from full-dose shape {item.full_hu.shape}"
            )
        for label, arr in (("full-dose", item.full_hu), ("low-dose", item.low_hu)):
            if arr is not None and not np.isfinite(arr).all():
                problems.append(f"{item.name!r}: the {label} image has NaN or infinite values")
        if item.low_hu is None and (item.slice_shape[0] != item.slice_shape[1] or min(item.slice_shape) < 16):
            problems.append(
                f"{item.name!r}: low-dose simulation needs square slices of 16 pixels or more, got "
                f"{item.slice_shape[1]}x{item.slice_shape[0]}: give a low-dose partner (paired layers)"
            )
        if min(item.slice_shape) < patch_size:
            problems.append(
                f"{item.name!r}: slices of {item.slice_shape[1]}x{item.slice_shape[0]} are smaller than the patch "
                f"size {patch_size}: lower the patch size (Advanced) to {min(item.slice_shape) // 16 * 16} or less"
            )
        problems.extend(_box_problems(item))
    n_slices = sum(i.n_slices for i in inputs if i.full_hu.ndim in (2, 3))
    if val_fraction > 0 and n_slices < 2:
        problems.append(
            f"only {n_slices} slice: validation needs at least 2 slices (add images, or set validation split to 0)"
        )
    if need_lesions and all(i.boxes is not None for i in inputs):
        n = sum(len(i.boxes) for i in inputs)
        if n < MIN_LESIONS:
            problems.append(_lesion_advice(n))
    return problems


def check_samples(
    samples: Sequence[Any],
    patch_size: int,
    need_lesions: bool = True,
    val_fraction: float = 0.2,
    seed: int = 0,
    val_max: int = 8,
) -> list[str]:
    """Problems of the final per-slice samples, including the trainer's validation split."""
    problems: list[str] = []
    if not samples:
        return ["no slices to train on"]
    mismatch = [s.name for s in samples if s.low_hu.shape != s.full_hu.shape]
    if mismatch:
        problems.append(f"low- and full-dose shapes differ in {mismatch[:3]}")
    small = [s.name for s in samples if min(s.full_hu.shape) < patch_size]
    if small:
        problems.append(f"slices {small[:3]} are smaller than the patch size {patch_size}: lower it in Advanced")
    if val_fraction > 0 and len(samples) < 2:
        problems.append("only 1 slice: validation needs at least 2 slices (or set validation split to 0)")
    if need_lesions:
        n = sum(len(s.boxes) for s in samples)
        if n < MIN_LESIONS:
            problems.append(_lesion_advice(n))
        elif not problems:
            from napari_lidnet._training.trainer import split_samples

            train, _ = split_samples(list(samples), val_fraction, seed, val_max)
            if not train:
                problems.append("no training slices are left after the validation split: lower the split")
            elif sum(len(s.boxes) for s in train) == 0:
                problems.append(
                    "every lesion box lies on a validation slice: draw boxes on more slices, or change the seed"
                )
    return problems


# ------------------------------------------------------------------------------------------ inputs -> samples


def slice_seed(seed: int, image_index: int, z: int) -> int:
    """Seed of the simulated noise of slice ``z`` of input ``image_index`` (independent of batching)."""
    return int(np.random.SeedSequence([seed, image_index, z]).generate_state(1)[0])


def iter_samples(
    inputs: Sequence[CTInput],
    dose: float,
    seed: int = 0,
    detector: Any | None = None,
    device: Any = "cpu",
    box_threshold: float = AUTO_BOX_THRESHOLD,
    should_stop: Callable[[], bool] | None = None,
) -> Generator[str, None, list[Any]]:
    """Simulate missing low-dose partners slice by slice (seeded by :func:`slice_seed`), detect missing boxes with
    ``detector`` (score >= ``box_threshold``, on the normal-dose image) and split volumes into
    ``io.dataset.Sample`` slices named ``"<name>#<z>"``. Yields a message per step of work; returns the samples
    ([] when ``should_stop`` turns True between two slices)."""
    from napari_lidnet.io.dataset import Sample

    stop = should_stop or (lambda: False)
    samples = []
    for k, item in enumerate(inputs):
        full3 = item.full_hu[None] if item.full_hu.ndim == 2 else item.full_hu
        low3 = None if item.low_hu is None else (item.low_hu[None] if item.low_hu.ndim == 2 else item.low_hu)
        if low3 is None:
            from napari_lidnet.sim.lowdose import simulate_low_dose

            low3 = np.empty_like(full3, dtype=np.float32)
            for z in range(len(full3)):
                if stop():
                    return []
                yield f"simulating {dose:.0%} dose: {item.name} slice {z + 1}/{len(full3)}"
                low3[z] = simulate_low_dose(full3[z], dose, item.spacing_mm, seed=slice_seed(seed, k, z), device=device)
        if item.boxes is None:
            boxes = np.zeros((0, 5), np.float32)
            if detector is not None:
                from napari_lidnet.inference import detect

                if stop():
                    return []
                yield f"detecting lesions in {item.name} (score >= {box_threshold:g})"
                rows = detect(detector, full3, device=device, score_threshold=box_threshold)
                boxes = rows[:, :5].astype(np.float32)
            item.boxes, item.box_source = boxes, "detected"
        h, w = item.slice_shape
        clipped = np.asarray(item.boxes, np.float32).reshape(-1, 5).copy()
        clipped[:, 1:] = np.clip(clipped[:, 1:], 0, [w, h, w, h])
        for z in range(full3.shape[0]):
            name = item.name if item.full_hu.ndim == 2 else f"{item.name}#{z}"
            b = clipped[np.rint(clipped[:, 0]) == z][:, 1:]
            full_z = np.ascontiguousarray(full3[z], dtype=np.float32)
            samples.append(Sample(name, full_z, np.ascontiguousarray(low3[z], dtype=np.float32), b, item.spacing_mm))
    return samples


def make_samples(inputs: Sequence[CTInput], dose: float, seed: int = 0, **kwargs: Any) -> list[Any]:
    """Blocking form of :func:`iter_samples` (same keyword arguments)."""
    gen = iter_samples(inputs, dose, seed, **kwargs)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def describe_samples(samples: Sequence[Any], inputs: Sequence[CTInput] | None = None, **extra: Any) -> dict[str, Any]:
    """What the run saw, for the model card: slices, lesions, image names and where their boxes came from."""
    info: dict[str, Any] = {
        "n_slices": len(samples),
        "n_lesions": int(sum(len(s.boxes) for s in samples)),
        "slice_shapes": sorted({f"{s.full_hu.shape[1]}x{s.full_hu.shape[0]}" for s in samples}),
    }
    if inputs:
        info["images"] = [
            {"name": i.name, "shape": list(i.full_hu.shape), "spacing_mm": i.spacing_mm, "boxes": i.box_source}
            for i in inputs
        ]
    info.update(extra)
    return info


# ------------------------------------------------------------------------------------------ the one-click run


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
    base = "finetuned-" + _dt.datetime.now().strftime("%Y%m%d-%H%M")
    name, k = base, 1
    while model_name_problems(name):
        k += 1
        name = f"{base}-{k}"
    return name


def model_name_problems(name: str) -> list[str]:
    """Why ``name`` cannot be the new model's name (bad characters, or taken in the user model folder)."""
    from napari_lidnet._training.export import valid_model_name
    from napari_lidnet.models.registry import user_model_dir

    try:
        name = valid_model_name(name)
    except ValueError as exc:
        return [str(exc)]
    taken = [k for k in ("denoiser", "detector") if (user_model_dir() / f"{name}_{k}.json").exists()]
    if taken:
        return [f"a model named {name!r} already exists in {user_model_dir()}: choose another name"]
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
    config: Any  # TrainConfig; config.out is the run folder
    inputs: list[CTInput] | None = None
    dicom_folder: str | None = None
    dataset_dir: str | None = None
    dose: float = 0.25
    box_threshold: float = AUTO_BOX_THRESHOLD
    source: str = "layers"
    command: str = "napari-lidnet fine-tune widget"


@dataclass
class FinetuneOutcome:
    """How a run ended: ``status`` is finished | stopped | invalid | failed; ``exported`` the new model files."""

    status: str
    message: str
    run_dir: str | None = None
    exported: list[str] = field(default_factory=list)
    start_metrics: dict[str, float] | None = None
    best_metrics: dict[str, float] | None = None
    improved: bool | None = None
    seconds: float = 0.0


def improved(start: dict[str, float] | None, best: dict[str, float] | None, mode: str) -> bool | None:
    """Whether the best checkpoint beats the starting models by the trainer's selection score (None: unknown)."""
    if not start or not best:
        return None
    from napari_lidnet._training.trainer import selection_score

    return selection_score(best, mode) > selection_score(start, mode)


def _load_detector(name: str | None, device: Any) -> Any:
    from napari_lidnet.models.registry import load_model

    if not name:
        return None
    return load_model(name, kind="detector", device=device)[0]


def prepare_samples(
    req: FinetuneRequest, should_stop: Callable[[], bool] | None = None
) -> Generator[str, None, tuple[list[Any], dict[str, Any]]]:
    """Read/simulate/detect the request's data, yielding progress messages; returns (samples, description).

    Raises :class:`DataProblems` listing everything wrong with the data (and ([], {}) when stopped)."""
    cfg = req.config
    need_lesions = cfg.mode != "pixel"
    if req.dataset_dir:
        from napari_lidnet.io.dataset import read_dataset

        yield f"reading {req.dataset_dir}"
        samples = read_dataset(req.dataset_dir)
        info = describe_samples(samples, source="dataset", folder=str(req.dataset_dir))
    else:
        inputs = list(req.inputs or [])
        if req.dicom_folder:
            yield f"reading {req.dicom_folder}"
            inputs = inputs_from_dicom(req.dicom_folder)
        problems = check_inputs(inputs, cfg.patch_size, need_lesions, cfg.val_fraction)
        if problems:
            raise DataProblems(problems)
        from napari_lidnet.models.device import pick_device

        device = pick_device(cfg.device)[0]
        detector = None
        if not need_lesions:  # pixel loss only: boxes are not needed, nothing to detect
            for item in inputs:
                if item.boxes is None:
                    item.boxes = np.zeros((0, 5), np.float32)
        if any(i.boxes is None for i in inputs):
            if not cfg.init_detector:
                raise DataProblems(["no lesion boxes and no trained detector to find them: draw rectangles"])
            detector = _load_detector(cfg.init_detector, device)
        samples = yield from iter_samples(inputs, req.dose, cfg.seed, detector, device, req.box_threshold, should_stop)
        del detector
        if should_stop is not None and should_stop():
            return [], {}
        info = describe_samples(samples, inputs, source=req.source, dose=req.dose)
        if req.dicom_folder:
            info["folder"] = str(req.dicom_folder)
    problems = check_samples(samples, cfg.patch_size, need_lesions, cfg.val_fraction, cfg.seed, cfg.val_max_slices)
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
    }
    return export_run(Path(run_dir), name, command=command, card_extra=extra)


def release_torch(device: Any) -> None:
    """Collect dropped models and hand cached GPU memory back (CUDA only)."""
    gc.collect()
    if getattr(device, "type", str(device)).startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def finetune_job(
    req: FinetuneRequest, should_stop: Callable[[], bool] | None = None
) -> Generator[dict[str, Any], None, FinetuneOutcome]:
    """The one-click run: prepare and check the data, train (yielding the trainer's records), publish the best
    checkpoint under ``req.name`` (also after a Stop, if a round finished). Never raises: every error becomes a
    returned :class:`FinetuneOutcome` (status invalid/failed) and nothing is exported on error."""
    import time

    should_stop = should_stop or (lambda: False)
    t0 = time.monotonic()
    cfg = req.config
    run_dir = Path(cfg.out)
    trainer = None
    device: Any = "cpu"
    try:
        yield {"stage": "prepare", "message": "checking the data"}
        prep = prepare_samples(req, should_stop)
        while True:
            try:
                yield {"stage": "prepare", "message": next(prep)}
            except StopIteration as done:
                samples, info = done.value
                break
        if should_stop():
            return FinetuneOutcome("stopped", "stopped before training started; nothing was saved")
        from napari_lidnet._training.trainer import Trainer

        yield {"stage": "prepare", "message": f"loading models; {info['n_slices']} slices, {info['n_lesions']} lesions"}
        trainer = Trainer(cfg, samples, should_stop)
        device = trainer.device
        stopped = False
        for rec in trainer.run():
            stopped = stopped or rec.get("stage") == "stopped"
            yield rec
        start, best = trainer.state.get("start_metrics"), trainer.state.get("best_metrics")
        trainer.denoiser = trainer.detector = None
        trainer = None
        release_torch(device)
        outcome = FinetuneOutcome(
            "stopped" if stopped else "finished", "", str(run_dir), start_metrics=start, best_metrics=best
        )
        if best is None:
            outcome.message = "stopped before the first round finished: no model was saved (the starting models stay)"
            outcome.seconds = time.monotonic() - t0
            return outcome
        data = {**info, "start_metrics": start, "best_metrics": best, "stopped_early": stopped, "run": str(run_dir)}
        yield {"stage": "export", "message": f"saving {req.name}"}
        outcome.exported = [str(p) for p in publish_run(run_dir, req.name, data, req.command)]
        outcome.message = f"saved {req.name}" + (" (stopped early: best checkpoint so far)" if stopped else "")
        outcome.improved = improved(start, best, cfg.mode)
        if outcome.improved is False:
            outcome.message += (
                " - note: it scores below the starting models on the validation slices; keep using those, or "
                "train longer / on more data (Advanced)"
            )
        outcome.seconds = time.monotonic() - t0
        return outcome
    except DataProblems as exc:
        return FinetuneOutcome("invalid", str(exc), seconds=time.monotonic() - t0)
    except Exception as exc:  # TrainingError (NaN), OSError, a bad model file ...: a message, never a crash
        from napari_lidnet._training.trainer import TrainingError

        text = str(exc) if isinstance(exc, (TrainingError, ValueError, OSError)) else f"{type(exc).__name__}: {exc}"
        return FinetuneOutcome(
            "failed", text, str(run_dir) if run_dir.exists() else None, seconds=time.monotonic() - t0
        )
    finally:
        if trainer is not None:
            trainer.denoiser = trainer.detector = None
        trainer = None
        release_torch(device)


def outcome_summary(outcome: FinetuneOutcome) -> str:
    """One human-readable paragraph: what happened and validation before/after."""
    text = outcome.message
    s, b = outcome.start_metrics or {}, outcome.best_metrics or {}
    if "psnr" in s and "psnr" in b:
        text += f"; validation PSNR {s['psnr']:.2f} -> {b['psnr']:.2f} dB"
    if "sensitivity" in s and "sensitivity" in b:
        text += f", sensitivity {s['sensitivity']:.3f} -> {b['sensitivity']:.3f}"
    if outcome.seconds:
        text += f" ({outcome.seconds:.0f} s)"
    return text


__all__ = [
    "AUTO_BOX_THRESHOLD",
    "CTInput",
    "DataProblems",
    "FinetuneOutcome",
    "FinetuneRequest",
    "MIN_LESIONS",
    "ONE_CLICK_DEFAULTS",
    "check_inputs",
    "check_samples",
    "default_model_name",
    "describe_samples",
    "finetune_job",
    "format_problems",
    "improved",
    "inputs_from_dicom",
    "inputs_from_layers",
    "make_samples",
    "model_name_problems",
    "new_run_dir",
    "one_click_config",
    "outcome_summary",
    "paired_input",
    "prepare_samples",
    "publish_run",
    "release_torch",
    "runs_dir",
    "shapes_in_image",
]
