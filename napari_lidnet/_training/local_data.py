"""The user's own data for fine-tuning: images (from layers or a DICOM folder) -> checked trainer samples.

Three ways in (the fine-tuning widget offers all of them; layers become :class:`CTInput` in
``_widgets/layer_inputs.py``; this module has no Qt and never sees a napari layer):

- normal-dose images (layers or a DICOM folder): low-dose partners are simulated at a chosen dose fraction
  (``sim.lowdose.simulate_low_dose``, seeded); lesion boxes come from a Shapes layer the user drew or corrected,
  from the volume's own annotations, or else from the starting detector's confident detections;
- paired layers: a low-dose image, its full-dose reference and a Shapes layer of lesion boxes;
- a dataset folder as written by ``lidnet simulate`` (``io.dataset.read_dataset``).

Every 3D volume contributes its slices as samples named ``"<name>#<z>"`` (the trainer splits them by contiguous
blocks, ``_training.split``). A slice without boxes next to a slice with boxes (within ``NEAR_LESION_SLICES``)
likely shows the same lesion unannotated: it is left out rather than taught as a negative. ``check_inputs``
(cheap, before anything runs) and ``check_samples`` (after simulation/detection) list every problem at once, with
what to do about it.
The one-click run built on these is ``_training.finetune``. torch is imported only inside functions.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_lidnet.io.checks import not_ct_note

#: fewest lesion boxes for the detection and ROI perceptual losses to mean something
MIN_LESIONS = 2
#: score above which the starting detector's detections become training boxes
AUTO_BOX_THRESHOLD = 0.5
#: boxes may stick out of the image by this many pixels (clipped); more is reported
EDGE_TOLERANCE_PX = 1.0
#: unannotated slices this close (in slices) to an annotated one are left out: they likely hold the same lesion
NEAR_LESION_SLICES = 1
SOURCES = ("layers", "paired", "dicom", "dataset")


class DataProblems(ValueError):
    """The data cannot be trained on; ``problems`` lists every reason (the message lists them too)."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(format_problems(self.problems))


def format_problems(problems: Sequence[str], verb: str = "fine-tune") -> str:
    """One line listing every problem: "cannot fine-tune on this data: a; b"."""
    return f"cannot {verb} on this data: " + "; ".join(problems)


@dataclass
class CTInput:
    """One image (2D slice or 3D volume, HU) to train on, with lesion boxes in its own pixel frame.

    ``boxes``: (N, 5) ``slice, x1, y1, x2, y2`` (slice 0 for 2D), or None when they are still to be detected.
    ``low_hu``: the low-dose partner, or None when it is to be simulated from ``full_hu``. ``rejected``: (N, 5) boxes
    a reader rejected (the detector's false positives: their slices are always simulated unless left out, next to a
    lesion or undecided, and ``TrainConfig.hard_negatives`` of their patches may be centred on them); ``undecided``:
    slices holding detections nobody decided yet (they and their neighbours are left out when ``near_lesion`` > 0:
    they may be lesions).
    """

    name: str
    full_hu: np.ndarray
    spacing_mm: float
    low_hu: np.ndarray | None = None
    boxes: np.ndarray | None = None
    box_source: str = "none"  # drawn | annotations | detected | none
    rejected: np.ndarray | None = None
    undecided: list[int] = field(default_factory=list)
    left_out: list[int] = field(default_factory=list)  # slices left out: near lesions, or undecided (iter_samples)
    full_name: str = ""  # the full-dose image's own name when it is another layer than ``name`` (paired layers)

    @property
    def n_slices(self) -> int:
        return 1 if self.full_hu.ndim == 2 else int(self.full_hu.shape[0])

    @property
    def slice_shape(self) -> tuple[int, int]:
        return tuple(int(n) for n in self.full_hu.shape[-2:])  # type: ignore[return-value]


def inputs_from_dicom(folder: str | os.PathLike, left_out: list[str] | None = None) -> list[CTInput]:
    """Every CT series (or image file) under ``folder`` as a normal-dose input; its own boxes when it has some.
    A DICOM series of another modality, or of derived images (a denoised copy: already processed, and the same
    anatomy again), is left out with a note appended to ``left_out``; DataProblems when nothing is left."""
    from napari_lidnet.io.open_ct import open_ct

    inputs, notes = [], []
    for vol in open_ct(folder):
        reason = _not_a_scan(vol.metadata)
        if reason:
            notes.append(f"{vol.name}: {reason}, left out")
            continue
        has = vol.boxes is not None and len(vol.boxes) > 0
        boxes = np.asarray(vol.boxes, np.float32).reshape(-1, 5) if has else None
        spacing = abs(float(vol.spacing[-1]))
        inputs.append(CTInput(vol.name, vol.hu, spacing, boxes=boxes, box_source="annotations" if has else "none"))
    if left_out is not None:
        left_out.extend(notes)
    if not inputs and notes:
        raise DataProblems([f"{folder}: no normal-dose CT series to train on", *notes])
    return inputs


def _not_a_scan(metadata: dict) -> str:
    """Why a DICOM volume is no normal-dose CT to train on ('' when it is one, or when it is not DICOM)."""
    if metadata.get("format") != "dicom":
        return ""
    modality = str(metadata.get("modality", "") or "")
    if modality != "CT":
        return f"modality {modality or 'missing'!r}, not CT"
    files = metadata.get("files") or []
    if files:
        import pydicom

        from napari_lidnet.io.dicom_scan import is_derived

        try:
            ds = pydicom.dcmread(files[0], stop_before_pixels=True, specific_tags=["ImageType"])
        except (OSError, ValueError):
            return ""
        if is_derived(ds):
            return "derived images (ImageType DERIVED: a processed copy), not the scanner's originals"
    return ""


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


def synthetic_lesions_only(inputs: Sequence[CTInput]) -> None:
    """Mark ``inputs`` as lesion-free scans whose lesions are the synthetic ones a run inserts (no boxes given,
    none detected: a detector's false positives on normal scans would become lesion targets)."""
    for item in inputs:
        item.boxes, item.box_source = np.zeros((0, 5), np.float32), "none (synthetic lesions)"


class TooFewLesions(ValueError):
    """Fewer lesion boxes than a run needs (the message says what to do)."""


def _lesion_advice(n: int) -> str:
    return (
        f"only {n} lesion box(es); the detection and ROI losses need at least {MIN_LESIONS}: draw rectangles "
        f"around lesions on a Shapes layer, give synthetic lesions, or train the denoiser alone (pixel loss) in "
        "Advanced"
    )


def _slices_needed(val_fraction: float, test_fraction: float) -> tuple[int, str]:
    """Fewest slices for a split, and what they are for."""
    parts = [p for p, f in (("validation", val_fraction), ("test", test_fraction)) if f > 0]
    return 1 + len(parts), " and ".join(["training", *parts])


def _named(item: CTInput, label: str) -> str:
    """The name of ``item``'s image ``label`` ("full-dose" or "low-dose"): paired layers have one each."""
    return item.full_name if label == "full-dose" and item.full_name else item.name


def check_inputs(
    inputs: Sequence[CTInput],
    patch_size: int,
    need_lesions: bool = True,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
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
            elif arr is not None and (note := not_ct_note("", arr, f"{_named(item, label)!r} ({label})")):
                problems.append(note)  # 0-1 units, stored values: the noise simulated on it would mean nothing
        if item.low_hu is None and min(item.slice_shape) < 16:
            problems.append(
                f"{item.name!r}: low-dose simulation needs slices of 16 pixels or more, got "
                f"{item.slice_shape[1]}x{item.slice_shape[0]}: give a low-dose partner (paired layers)"
            )
        if min(item.slice_shape) < patch_size:
            problems.append(
                f"{item.name!r}: slices of {item.slice_shape[1]}x{item.slice_shape[0]} are smaller than the patch "
                f"size {patch_size}: lower the patch size (Advanced) to {min(item.slice_shape) // 16 * 16} or less"
            )
        problems.extend(_box_problems(item))
    n_slices = sum(i.n_slices for i in inputs if i.full_hu.ndim in (2, 3))
    need, parts = _slices_needed(val_fraction, test_fraction)
    if n_slices < need:
        problems.append(
            f"only {n_slices} slice(s): {parts} need at least {need} slices (add images, or set the validation "
            "split to 0)"
        )
    if need_lesions and all(i.boxes is not None for i in inputs):
        n = sum(len(i.boxes) for i in inputs)
        usable = sum(len(_off_slices(i.boxes, _undecided_and_near(i))) for i in inputs)
        if n < MIN_LESIONS:
            problems.append(_lesion_advice(n))
        elif usable < MIN_LESIONS:
            problems.append(f"{n - usable} of the {n} lesion boxes lie on or next to slices whose detections are not "
                            "yet accepted or rejected, and those slices are left out: decide them in the Lesion "
                            "navigator")  # fmt: skip
    return problems


def _undecided_and_near(item: CTInput, near: int = NEAR_LESION_SLICES) -> list[int]:
    """The slices of ``item`` with undecided detections and those within ``near`` slices of them (left out)."""
    pending = {int(z) for z in item.undecided if 0 <= z < item.n_slices}
    return sorted(pending | set(near_lesion_slices(np.array(sorted(pending)), item.n_slices, near)))


def _off_slices(boxes: np.ndarray, slices: Sequence[int]) -> np.ndarray:
    """The (N, 5) ``slice, x1, y1, x2, y2`` boxes that lie on none of ``slices``."""
    b = np.asarray(boxes, np.float32).reshape(-1, 5)
    return b[~np.isin(np.rint(b[:, 0]).astype(int), list(slices))]


def check_samples(
    samples: Sequence[Any],
    patch_size: int,
    need_lesions: bool = True,
    val_fraction: float = 0.2,
    seed: int = 0,
    val_max: int = 8,
    test_fraction: float = 0.0,
    test_max: int = 8,
) -> list[str]:
    """Problems of the final per-slice samples, including the trainer's validation and test split."""
    problems: list[str] = []
    if not samples:
        return ["no slices to train on"]
    shapes = [(tuple(s.low_shape), tuple(s.shape)) for s in samples]  # from headers and indexes: no pixel read
    mismatch = [s.name for s, (low, full) in zip(samples, shapes) if low != full]
    if mismatch:
        problems.append(f"low- and full-dose shapes differ in {mismatch[:3]}")
    small = [s.name for s, (_, full) in zip(samples, shapes) if min(full) < patch_size]
    if small:
        problems.append(f"slices {small[:3]} are smaller than the patch size {patch_size}: lower it in Advanced")
    need, parts = _slices_needed(val_fraction, test_fraction)
    if len(samples) < need:
        problems.append(f"only {len(samples)} slice(s): {parts} need at least {need} slices (or set the split to 0)")
    if need_lesions:
        n = sum(len(s.boxes) for s in samples)
        if n < MIN_LESIONS:
            problems.append(_lesion_advice(n))
        elif not problems:
            from napari_lidnet._training.split import split_samples

            train, _, _ = split_samples(list(samples), val_fraction, seed, val_max, test_fraction, test_max)
            if sum(len(s.boxes) for s in train) == 0:
                problems.append(
                    "every lesion box lies on a validation or test slice: draw boxes on more slices, or change the seed"
                )
    return problems


# ------------------------------------------------------------------------------------------ inputs -> samples


def slice_seed(seed: int, image_index: int, z: int) -> int:
    """Seed of the simulated noise of slice ``z`` of input ``image_index`` (independent of batching)."""
    return int(np.random.SeedSequence([seed, image_index, z]).generate_state(1)[0])


#: at most about this many slices of a volume get a simulated low-dose partner (evenly spaced, plus every slice with
#: a lesion box): a fine-tune trains on a few hundred patches, and each simulated slice costs about a second on a CPU
MAX_SIMULATED_SLICES = 64


def slices_to_simulate(n: int, boxes: np.ndarray | None) -> list[int]:
    """The slices of an ``n``-slice volume that get a simulated low-dose partner: every k-th (at most about
    ``MAX_SIMULATED_SLICES``) and every slice with a box in ``boxes`` (``slice, x1, y1, x2, y2``)."""
    keep = set(range(0, n, max(1, -(-n // MAX_SIMULATED_SLICES))))
    if boxes is not None:
        keep |= {z for z in np.rint(np.asarray(boxes, float).reshape(-1, 5)[:, 0]).astype(int) if 0 <= z < n}
    return sorted(keep)


def iter_samples(
    inputs: Sequence[CTInput],
    dose: float,
    seed: int = 0,
    detector: Any | None = None,
    device: Any = "cpu",
    box_threshold: float = AUTO_BOX_THRESHOLD,
    should_stop: Callable[[], bool] | None = None,
    near_lesion: int = NEAR_LESION_SLICES,
    min_boxes: int = 0,
) -> Generator[str, None, list[Any]]:
    """Detect missing boxes with ``detector`` (score >= ``box_threshold``, on the normal-dose image; fewer than
    ``min_boxes`` in all raise :class:`TooFewLesions` before anything is simulated), simulate
    missing low-dose partners slice by slice (``slices_to_simulate``; seeded by :func:`slice_seed`; the fast path of
    ``sim.lowdose``) and split volumes into ``io.dataset.Sample`` slices named ``"<name>#<z>"``; slices without boxes
    within ``near_lesion`` slices of a slice with boxes are left out, and so are the slices in ``CTInput.undecided``
    and their neighbours (listed in ``CTInput.left_out``; 0 keeps every slice). Yields a message per step of work;
    returns the samples ([] when ``should_stop`` turns True)."""
    from napari_lidnet._training.noise_level import at_own_noise, dose_calibration, insertion_kwargs
    from napari_lidnet.io.dataset import Sample
    from napari_lidnet.sim.lowdose import simulate_low_dose

    stop = should_stop or (lambda: False)
    insertion = insertion_kwargs(device)
    if not (yield from _detect_missing(inputs, detector, device, box_threshold, stop)):
        return []
    found = sum(len(i.boxes) for i in inputs)
    if found < min_boxes:  # said before minutes of simulation, not after them
        raise TooFewLesions(_lesion_advice(found))
    samples = []
    for k, item in enumerate(inputs):
        full3 = item.full_hu[None] if item.full_hu.ndim == 2 else item.full_hu
        n = full3.shape[0]
        clipped, rejected = _clipped(item.boxes, item.slice_shape), _clipped(item.rejected, item.slice_shape)
        marked = np.concatenate([clipped, rejected])
        used = list(range(n)) if item.low_hu is not None else slices_to_simulate(n, marked)
        item.left_out = yield from _left_out(item, n, clipped, rejected, near_lesion)
        used = [z for z in used if z not in item.left_out]
        i0, own = None, None
        if item.low_hu is None and used:
            i0, own, how = dose_calibration(full3, dose, item.spacing_mm, slice_seed(seed, k, n), **insertion)
            yield f"{item.name}: {how}"
        for count, z in enumerate(used):
            if item.low_hu is not None:
                low = item.low_hu if item.low_hu.ndim == 2 else item.low_hu[z]
            else:
                if stop():
                    return []
                yield f"simulating {dose:.0%} dose: {item.name} slice {count + 1}/{len(used)} (of {n})"
                low = simulate_low_dose(full3[z], dose, item.spacing_mm, seed=slice_seed(seed, k, z), i0=i0,
                                        **insertion)  # fmt: skip
                low = at_own_noise(full3[z], low, dose, own[z])
            name = item.name if item.full_hu.ndim == 2 else f"{item.name}#{z}"
            b, r = (m[np.rint(m[:, 0]) == z][:, 1:] for m in (clipped, rejected))
            full_z = np.ascontiguousarray(full3[z], dtype=np.float32)
            low_z = np.ascontiguousarray(low, dtype=np.float32)
            samples.append(Sample(name, full_z, low_z, b, item.spacing_mm, r))
    return samples


def _left_out(
    item: CTInput, n: int, boxes: np.ndarray, rejected: np.ndarray, near_lesion: int
) -> Generator[str, None, list[int]]:
    """The slices of ``item`` (``n`` of them, lesion ``boxes``, ``rejected`` boxes) that do not train: unannotated
    neighbours of a lesion, and slices with undecided detections and their neighbours (either may show a lesion);
    says which, and how many rejected boxes go with them. None with ``near_lesion`` 0 (boxes do not matter: pixel
    loss, or synthetic lesions)."""
    if near_lesion <= 0:
        return []
    near = near_lesion_slices(np.rint(boxes[:, 0]).astype(int), n, near_lesion)
    if near:
        yield f"{item.name}: left out slice(s) {near} (no boxes, next to annotated lesions)"
    undecided = sorted(set(_undecided_and_near(item, near_lesion)) - set(near))
    if undecided:
        yield (f"{item.name}: left out slice(s) {undecided} (detections on them or next to them not yet accepted or "
               "rejected)")  # fmt: skip
    out = sorted({*near, *undecided})
    lost = int(np.isin(np.rint(rejected[:, 0]), out).sum())
    if lost:
        yield f"{item.name}: {lost} rejected box(es) lie on those slices and are left out with them"
    return out


def _clipped(boxes: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """(N, 5) ``slice, x1, y1, x2, y2`` boxes clipped to a slice of ``shape`` (rows, cols); (0, 5) for None."""
    h, w = shape
    out = np.asarray(boxes if boxes is not None else (), np.float32).reshape(-1, 5).copy()
    out[:, 1:] = np.clip(out[:, 1:], 0, [w, h, w, h])
    return out


def _detect_missing(
    inputs: Sequence[CTInput], detector: Any, device: Any, threshold: float, stop: Callable[[], bool]
) -> Generator[str, None, bool]:
    """Boxes for every input without any, from ``detector`` (on the slices that will be used); False when stopped."""
    for item in inputs:
        if item.boxes is None:
            if stop():
                return False
            yield f"detecting lesions in {item.name} (score >= {threshold:g})"
            full3 = item.full_hu[None] if item.full_hu.ndim == 2 else item.full_hu
            used = list(range(len(full3))) if item.low_hu is not None else slices_to_simulate(len(full3), None)
            item.boxes = _detected_boxes(detector, full3, used, item.spacing_mm, device, threshold)
            item.box_source = "detected"
    return True


def _detected_boxes(
    detector: Any, full3: np.ndarray, used: list[int], pixel_mm: float, device: Any, threshold: float
) -> np.ndarray:
    """(N, 5) boxes the detector finds on the ``used`` slices of ``full3``, seen at its pixel size (none without a
    detector)."""
    if detector is None:
        return np.zeros((0, 5), np.float32)
    from napari_lidnet.inference import detect

    rows = detect(detector, full3, slices=used, device=device, score_threshold=threshold, pixel_mm=(pixel_mm,) * 2)
    return rows[:, :5].astype(np.float32)


def near_lesion_slices(box_slices: np.ndarray, n_slices: int, near: int = NEAR_LESION_SLICES) -> list[int]:
    """Slices without a box that lie within ``near`` slices of a slice with one (unannotated views of a lesion)."""
    marked = {int(z) for z in box_slices}
    return [z for z in range(n_slices) if z not in marked and any(abs(z - m) <= near for m in marked)]


def make_samples(inputs: Sequence[CTInput], dose: float, seed: int = 0, **kwargs: Any) -> list[Any]:
    """Blocking form of :func:`iter_samples` (same keyword arguments)."""
    from napari_lidnet.inference import run_to_end

    return run_to_end(iter_samples(inputs, dose, seed, **kwargs))


def describe_samples(samples: Sequence[Any], inputs: Sequence[CTInput] | None = None, **extra: Any) -> dict[str, Any]:
    """What the run saw, for the model card: slices, lesions, image names and where their boxes came from."""
    info: dict[str, Any] = {
        "n_slices": len(samples),
        "n_lesions": int(sum(len(s.boxes) for s in samples)),
        "n_rejected": int(sum(len(s.rejected) for s in samples)),
        "slice_shapes": sorted({f"{s.shape[1]}x{s.shape[0]}" for s in samples}),
    }
    if inputs:
        info["images"] = [
            {"name": i.name, "shape": list(i.full_hu.shape), "spacing_mm": i.spacing_mm, "boxes": i.box_source,
             "left_out_slices": list(i.left_out), "undecided_slices": sorted(set(i.undecided) & set(i.left_out))}
            for i in inputs
        ]  # fmt: skip
        info["boxes_detected"] = any(i.box_source == "detected" for i in inputs)
    info.update(extra)
    return info
