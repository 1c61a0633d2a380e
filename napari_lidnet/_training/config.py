"""Settings of one training run (one dataclass, saved in every checkpoint card)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

MODES = ("pixel", "lidnet", "lidnet-noroi", "lidnet-wholeperc")


@dataclass
class TrainConfig:
    """What to train, on what, and how long.

    Modes: ``pixel`` (baseline: the denoiser on pixel loss alone), ``lidnet`` (joint loss + collaborative
    rounds), and the ablations ``lidnet-noroi`` (no ROI perceptual term) and ``lidnet-wholeperc`` (a whole-image
    perceptual term in place of the ROI one).

    Pretraining uses ``lr``/``detector_lr``; the collaborative rounds fine-tune at those times ``round_lr_scale``.
    ``det_weight`` and ``roi_weight`` are relative: at the start of each round every auxiliary term is scaled so
    that it equals that fraction of the pixel loss on a fixed calibration set of lesion-centred patches (chosen once
    from the training slices by ``seed``, the same on every process; see ``Trainer.calibrate``).

    Slices are split by contiguous blocks (``_training.split``): ``val_fraction`` validates (chooses the best
    checkpoint), ``test_fraction`` is held out and only measured (start and best), never used for a choice.
    With no validation slice the last round is the result. ``boxes_are_annotations=False`` (boxes found by a
    detector, not drawn or annotated) leaves sensitivity out of validation: it would measure agreement with that
    detector.
    """

    out: str
    data: str | None = None
    mode: str = "lidnet"
    denoiser: str = "fastdn"
    denoiser_kwargs: dict[str, Any] = field(default_factory=dict)
    detector_kwargs: dict[str, Any] = field(default_factory=dict)
    init_denoiser: str | None = None
    init_detector: str | None = None
    pretrain_denoiser_steps: int = 300
    pretrain_from_init: bool = False  # run the pretraining steps from init_* weights too (continue training)
    pretrain_detector_steps: int = 600
    rounds: int = 4
    denoiser_steps: int = 100
    detector_steps: int = 50
    batch_size: int = 8
    patch_size: int = 128
    lr: float = 1e-3
    detector_lr: float = 1e-3
    round_lr_scale: float = 0.2
    pixel_loss: str = "mse"
    det_weight: float = 0.1
    roi_weight: float = 0.3
    roi_margin: float = 0.25
    roi_levels: tuple[int, ...] = (0, 1)
    roi_boxes: str = "gt"  # ROI perceptual regions: "gt" boxes, the detector's "predicted" boxes, or "both"
    roi_score: float = 0.3  # score threshold of the predicted boxes
    full_dose_fraction: float = 0.25
    val_fraction: float = 0.2
    val_max_slices: int = 8
    test_fraction: float = 0.0
    test_max_slices: int = 8
    boxes_are_annotations: bool = True
    calibration_patches: int = 8  # lesion-centred patches that calibrate the auxiliary loss weights
    split: str = "train"  # official split of an archive that has one (DeepLesion): train, val, test or all
    seed: int = 0
    device: str = "auto"
    dose: float | None = None  # archive slices without a low-dose image get one simulated at this dose fraction
    workers: int = 0  # DataLoader worker processes reading the training slices
    checkpoint_every: int = 200  # steps between checkpoints inside a stage (0: only between stages)
    insert_lesions: float = 0.0  # share of training patches that receive synthetic lesions (sim.insert)
    insert_lung: float = 0.0  # chance that an inserted lesion is a lung nodule where the patch has lung
    insert_max_mm: float = 0.0  # largest diameter of inserted lesions (0: sim.insert's, 25 mm / 40 mm in lung)
    insert_attached: float = 0.0  # chance that an inserted lung lesion is a tumour-like mass, often on a wall
    # share of a slice's patches not on a lesion centred on a box a reader rejected there; 0: measured no benefit
    # in the one-click fine-tune (benchmarks/results/hard_negatives.md)
    hard_negatives: float = 0.0

    def validate(self) -> None:
        """Raise ValueError naming the first bad setting."""
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        for name in (
            "pretrain_denoiser_steps",
            "pretrain_detector_steps",
            "rounds",
            "denoiser_steps",
            "detector_steps",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.batch_size < 1 or self.patch_size < 32 or self.patch_size % 16:
            raise ValueError("batch_size must be >= 1 and patch_size a multiple of 16, at least 32")
        if self.roi_boxes not in ("gt", "predicted", "both"):
            raise ValueError(f"roi_boxes must be 'gt', 'predicted' or 'both', not {self.roi_boxes!r}")
        if not 0.0 <= self.val_fraction < 1.0 or not 0.0 <= self.test_fraction < 1.0:
            raise ValueError("val_fraction and test_fraction must be in [0, 1)")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError("val_fraction + test_fraction must leave slices to train on (sum below 1)")
        if self.calibration_patches < 1:
            raise ValueError("calibration_patches must be >= 1")
        if self.split not in ("train", "val", "test", "all"):
            raise ValueError(f"split must be train, val, test or all, not {self.split!r}")
        if not 0.0 <= self.insert_lesions <= 1.0:
            raise ValueError(f"insert_lesions must be in [0, 1], not {self.insert_lesions}")
        if not 0.0 <= self.hard_negatives <= 1.0:
            raise ValueError(f"hard_negatives must be in [0, 1], not {self.hard_negatives}")
        if not 0.0 <= self.insert_lung <= 1.0:
            raise ValueError(f"insert_lung must be in [0, 1], not {self.insert_lung}")
        if self.insert_lung and not self.insert_lesions:
            raise ValueError(
                "insert_lung is the share of inserted lesions that are lung nodules: give insert_lesions too"
            )
        if not 0.0 <= self.insert_attached <= 1.0:
            raise ValueError(f"insert_attached must be in [0, 1], not {self.insert_attached}")
        if self.insert_attached and not self.insert_lung:
            raise ValueError(
                "insert_attached is the share of lung lesions that are tumour-like masses: give insert_lung too"
            )
        if self.insert_max_mm != 0.0 and not 5.0 <= self.insert_max_mm <= 150.0:
            raise ValueError(f"insert_max_mm must be 0 (the built-in sizes) or 5-150 mm, not {self.insert_max_mm}")
        if self.workers < 0:
            raise ValueError("workers must be >= 0")
        if self.checkpoint_every < 0:
            raise ValueError("checkpoint_every must be >= 0")
        if self.dose is not None and not 0.0 < self.dose <= 1.0:
            raise ValueError(f"dose must be in (0, 1], not {self.dose}")
        if not (0 < self.lr < 1 and 0 < self.detector_lr < 1):  # NaN and inf fail too
            raise ValueError(f"learning rates must be in (0, 1), not {self.lr} and {self.detector_lr}")
        if not (0 <= self.det_weight <= 100 and 0 <= self.roi_weight <= 100):
            raise ValueError(f"loss weights must be in [0, 100], not {self.det_weight} and {self.roi_weight}")
        if not sum(n for _, n in self.stages()):
            raise ValueError(
                "nothing to train: every stage has 0 steps (pretraining from given weights runs only when asked to "
                "continue them: --pretrain-from-init; a round needs denoiser or detector steps above 0)"
            )

    def stages(self) -> list[tuple[str, int]]:
        """(name, steps) of every stage in order; names are unique so a resumed run skips finished ones. Pretraining
        is skipped for a network given starting weights unless ``pretrain_from_init``; stages of 0 steps are left
        out."""
        stages = []
        if (not self.init_denoiser or self.pretrain_from_init) and self.pretrain_denoiser_steps:
            stages.append(("pretrain-denoiser", self.pretrain_denoiser_steps))
        if (not self.init_detector or self.pretrain_from_init) and self.pretrain_detector_steps:
            stages.append(("pretrain-detector", self.pretrain_detector_steps))
        for r in range(1, self.rounds + 1):
            if self.denoiser_steps:
                stages.append((f"round{r}-denoiser", self.denoiser_steps))
            if self.mode != "pixel" and self.detector_steps:
                stages.append((f"round{r}-detector", self.detector_steps))
        return stages

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["roi_levels"] = list(self.roi_levels)
        return d
