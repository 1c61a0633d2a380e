"""Parts of the Fine-tune dock widget: the data, model and advanced boxes and the run panel.

Each part builds its own fields and reads them back as plain values (``values()``); ``finetune.FineTuneWidget``
only assembles them, checks the request and runs it. The checks that need no Qt (folders, inputs) are plain
functions here.
"""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QStackedWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .._training.finetune import ONE_CLICK_DEFAULTS, default_model_name
from .._training.local_data import AUTO_BOX_THRESHOLD, CTInput, check_inputs
from .._training.report import input_text, time_left_text
from ..io.deeplesion import is_deeplesion_archive
from ..io.open_ct import input_kind
from ._adapt_source import (
    ADAPT_SOURCE,
    SCHEME_ITEMS,
    SCHEME_TIPS,
    UNUSED_SETTINGS,
    NoReferencePlot,
    adapt_default,
    estimate_text,
)
from ._docking import add_tips, wrapping_label
from ._layer_watch import renamed_to

#: (key, label) of the data sources
SOURCES = (
    ("layers", "normal-dose image layers (simulate low dose)"),
    ("paired", "paired low-dose / full-dose layers"),
    ("dicom", "DICOM folder (normal dose, simulate low dose)"),
    ("dataset", "dataset folder (lidnet simulate, or DeepLesion)"),
    ADAPT_SOURCE,
)
DETECT_ITEM = "(detect with the starting detector)"
#: the boxes default when no reviewed or hand-drawn layer exists: nothing, so nothing unreviewed trains by default
NO_BOXES_ITEM = "(none: review detections or draw boxes)"
RAW_PREFIX = "raw detections, unreviewed: "
#: what each kind of boxes layer is called in the pickers, and what choosing the raw ones means
BOX_TIPS = {
    NO_BOXES_ITEM: "accept the detector's boxes in the Lesion navigator, or draw rectangles on a Shapes layer",
    DETECT_ITEM: "the starting detector's own boxes, unreviewed: the detector learns its own false positives",
    "detections": "the detector's output as it came, unreviewed: the detector learns its own false positives",
}
SCRATCH_ITEM = "(from scratch)"
LOSS_MODES = (("lidnet", "LIDnet: pixel + detection + ROI perceptual"), ("pixel", "denoiser alone (pixel loss)"))


def spin_box(lo: float, hi: float, value: float, decimals: int | None = None, step: float | None = None) -> Any:
    """A QSpinBox (``decimals`` None) or QDoubleSpinBox with range and value."""
    box = QSpinBox() if decimals is None else QDoubleSpinBox()
    if decimals is not None:
        box.setDecimals(decimals)
    box.setRange(lo, hi)
    if step is not None:
        box.setSingleStep(step)
    box.setValue(value)
    return box


def folder_problems(source: str, folder: str, need_lesions: bool = False) -> list[str]:
    """What is wrong with the folder of a ``dicom`` or ``dataset`` source (empty list: fine); ``need_lesions``: a
    dataset must hold lesion boxes (the LIDnet losses), said here before a run starts."""
    if not folder:
        return [f"choose a {'DICOM' if source == 'dicom' else 'dataset'} folder"]
    if not Path(folder).is_dir():
        return [f"{folder}: no such folder"]
    if source == "dataset" and is_deeplesion_archive(folder):
        return []  # its train part, indexed when the run starts (boxes from DL_info.csv)
    if source == "dataset" and not (Path(folder) / "dataset.json").is_file():
        return [f"{folder}: not a dataset folder (no dataset.json; make one with 'lidnet simulate'), nor a DeepLesion "
                "archive (DL_info.csv beside Images_png)"]  # fmt: skip
    if source == "dataset" and need_lesions and not _has_boxes(Path(folder) / "lesions.csv"):
        return [f"{folder}: its slices have no lesion boxes (lesions.csv lists none): choose "
                f"{LOSS_MODES[1][1]!r} under Advanced, or a dataset with lesions"]  # fmt: skip
    if source == "dicom" and input_kind(folder) != "dicom":  # said before a run starts, not after
        return [f"{folder}: no DICOM file found in it (pick the folder of a CT series, or the one above them)"]
    return []


def _has_boxes(lesions_csv: Path) -> bool:
    """Whether a dataset's lesions.csv lists at least one box (a line after its header); a missing or unreadable
    file counts as holding some: reading the dataset says what is wrong with it."""
    try:
        with open(lesions_csv, encoding="utf-8", errors="replace") as fh:
            return any(line.strip() for line in itertools.islice(fh, 1, None))
    except OSError:
        return True


def input_problems(inputs: Sequence[CTInput], settings: dict[str, Any]) -> list[str]:
    """What is wrong with the inputs for the run ``settings`` describe (``FineTuneWidget.settings()``)."""
    need_lesions = settings["mode"] != "pixel" and not settings.get("insert_lesions")
    problems = list(check_inputs(inputs, settings["patch_size"], need_lesions, settings["val_fraction"]))
    if need_lesions and any(i.boxes is None for i in inputs) and not settings["init_detector"]:
        problems.append(
            "no lesion boxes: draw rectangles on a Shapes layer and pick it, or start from a trained detector"
        )
    return problems


def looks_full_dose(name: str) -> bool:
    """Whether a layer name reads like a full-dose (normal-dose) image."""
    low = name.lower()
    return ("full" in low or "normal" in low) and "denoised" not in low


def looks_low_dose(name: str) -> bool:
    """Whether a layer name reads like a low-dose image."""
    low = name.lower()
    return ("low" in low or "%" in low) and "denoised" not in low


def refill(
    combo: QComboBox, items: list[str], prefer: str | None = None, renamed: dict[str, str] | None = None,
    keep: bool = True,
) -> None:
    """Replace a combo's items, keeping the current text (its new name after a rename in ``renamed``) when it is
    still there and ``keep`` (a choice the user made), else ``prefer``."""
    current = renamed_to(combo.currentText(), renamed)
    combo.blockSignals(True)
    combo.clear()
    combo.addItems(items)
    if prefer in items and not (keep and current in items):
        combo.setCurrentText(prefer)
    elif current in items:
        combo.setCurrentText(current)
    combo.blockSignals(False)


def box_choices(shapes: list[tuple[str, str]], detect: bool = True) -> list[tuple[str, str]]:
    """(text, layer name or sentinel) entries of a lesion-boxes picker: no boxes, reviewed and hand-drawn layers,
    then the unreviewed ones (the starting detector's unless ``detect`` is False, the detector's output layers),
    each saying what it is."""
    reviewed = [(f"{n} (reviewed)", n) for n, r in shapes if r == "reviewed"]
    drawn = [(n, n) for n, r in shapes if r not in ("reviewed", "detections", "roi")]
    rois = [(f"{n} (ROI layer)", n) for n, r in shapes if r == "roi"]
    raw = [(RAW_PREFIX + n, n) for n, r in shapes if r == "detections"]
    detected = [(DETECT_ITEM, DETECT_ITEM)] if detect else []
    return [(NO_BOXES_ITEM, ""), *reviewed, *drawn, *rois, *detected, *raw]


def refill_boxes(
    combo: QComboBox, shapes: list[tuple[str, str]], detect: bool = True, renamed: dict[str, str] | None = None,
    empty: Collection[str] = (),
) -> None:  # fmt: skip
    """Refill a lesion-boxes picker, keeping the current layer (under its new name after a rename); a new pick is
    the newest reviewed layer, else the newest hand-drawn one, else no boxes (never unreviewed detections, never an
    ``empty`` layer). ``detect``: offer the starting detector's boxes."""
    current = combo.currentData()
    current = renamed_to(current, renamed)
    entries = box_choices(shapes, detect)
    datas = [d for _, d in entries]
    reviewed = [n for n, r in shapes if r == "reviewed" and n not in empty]
    drawn = [n for n, r in shapes if r not in ("reviewed", "detections", "roi") and n not in empty]
    prefer = (reviewed or drawn or [""])[-1]
    combo.blockSignals(True)
    combo.clear()
    for k, (text, data) in enumerate(entries):
        combo.addItem(text, data)
        tip = BOX_TIPS.get(data) or (BOX_TIPS["detections"] if text.startswith(RAW_PREFIX) else "")
        if tip:
            combo.setItemData(k, tip, Qt.ItemDataRole.ToolTipRole)
    combo.setCurrentIndex(datas.index(current) if current and current in datas else datas.index(prefer))
    combo.blockSignals(False)


def checked_names(items: QListWidget) -> list[str]:
    """Texts of the ticked items of a checkable list."""
    return [items.item(i).text() for i in range(items.count()) if items.item(i).checkState() == Qt.CheckState.Checked]


def set_checked(items: QListWidget, names: Sequence[str]) -> None:
    """Tick exactly the items whose text is in ``names``."""
    for i in range(items.count()):
        item = items.item(i)
        item.setCheckState(Qt.CheckState.Checked if item.text() in names else Qt.CheckState.Unchecked)


def refill_checks(
    items: QListWidget, names: list[str], looks_right: Any, never: Collection[str] = (),
    renamed: dict[str, str] | None = None,
) -> None:  # fmt: skip
    """Refill a checkable list with ``names``, keeping the ticks (on the new names after a rename); with none left,
    tick the first name that ``looks_right`` (a predicate), or the only name left, but never one of ``never`` (a
    guess there would be wrong)."""
    checked = {renamed_to(n, renamed) for n in checked_names(items)} & set(names)
    if not checked:
        fits = [n for n in names if n not in never]
        guess = next((n for n in fits if looks_right(n)), fits[0] if len(fits) == 1 else None)
        checked = {guess} if guess else set()
    items.clear()
    for name in names:
        item = QListWidgetItem(name)
        item.setToolTip(name)  # the column is narrow: the whole name on hover
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
        item.setCheckState(Qt.CheckState.Checked if name in checked else Qt.CheckState.Unchecked)
        items.addItem(item)


def _form_page(*rows: tuple[str, QWidget]) -> QWidget:
    """A margin-less form of (label, field) rows, one page of the data source stack; each label above its field,
    so lists and pickers get the narrow column's whole width (beside a label, layer names were cut to 8 letters)."""
    page = QWidget()
    form = QFormLayout(page)
    form.setContentsMargins(0, 0, 0, 0)
    form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapAllRows)
    for label, field in rows:
        form.addRow(label, field)
    return page


class DataBox(QGroupBox):
    """Where the training data comes from: image layers, paired layers, a DICOM folder, a dataset folder, or
    low-dose image layers alone (self-supervised)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Data", parent)
        self.source_combo = QComboBox()
        for key, label in SOURCES:
            self.source_combo.addItem(label, key)
        self.pages = QStackedWidget()
        self.image_list = QListWidget()
        self.image_list.setMaximumHeight(90)
        self.boxes_combo = QComboBox()
        self.pages.addWidget(_form_page(("normal-dose images", self.image_list), ("lesion boxes", self.boxes_combo)))
        self.low_combo, self.full_combo, self.paired_boxes_combo = QComboBox(), QComboBox(), QComboBox()
        self._picked: set[str] = set()  # the pair pickers the user chose in (the others follow the layers)
        for key, combo in (("low", self.low_combo), ("full", self.full_combo)):
            combo.activated.connect(lambda _i, key=key: self._picked.add(key))
        paired_rows = (("low dose", self.low_combo), ("full dose", self.full_combo))
        self.pages.addWidget(_form_page(*paired_rows, ("lesion boxes", self.paired_boxes_combo)))
        self.dicom_edit, self.dataset_edit = QLineEdit(), QLineEdit()
        self.dicom_edit.setPlaceholderText("folder of DICOM series (normal dose)")
        self.dataset_edit.setPlaceholderText("folder with dataset.json, full/, low/, lesions.csv")
        for edit in (self.dicom_edit, self.dataset_edit):
            self.pages.addWidget(self._folder_page(edit))
        self.pages.addWidget(self._adapt_page())
        self.source_combo.currentIndexChanged.connect(self._on_source)
        self.dose_spin = spin_box(0.05, 1.0, 0.25, 2, 0.05)
        boxes_tip = ("the lesions the detector and the ROI losses learn from: a reviewed layer (Lesion navigator: "
                     "slices with boxes you rejected are always used; slices with undecided boxes, and their "
                     "neighbours, are left out), boxes you drew, or the detector's own (unreviewed)")
        add_tips(
            (self.image_list, "normal-dose CT layers to train on (tick them): their low doses are simulated"),
            (self.boxes_combo, boxes_tip),
            (self.paired_boxes_combo, boxes_tip),
            (self.low_combo, "the low-dose scan of the pair (the input the denoiser learns from)"),
            (self.full_combo, "its normal dose, the same slices (the target)"),
            (self.dicom_edit, "a folder of normal-dose DICOM series; their low doses are simulated before training"),
            (self.dataset_edit, "a folder made by lidnet simulate (full/, low/, lesions.csv), or a DeepLesion archive "
                                "(its train part; low doses simulated when a slice is first used)"),
        )  # fmt: skip
        self.dose_spin.setToolTip("the dose of the simulated low-dose images, a fraction of the scans' (0.25: a "
                                  "quarter dose): image layers, DICOM folders, a DeepLesion archive (a pair and a "
                                  "simulated dataset have theirs)")
        self.source_combo.setToolTip("where the training scans come from: image layers, a low/normal-dose pair, a "
                                     "DICOM or dataset folder, or low-dose scans alone (self-supervised)")
        form = QFormLayout(self)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapAllRows)
        form.addRow("source", self.source_combo)
        form.addRow(self.pages)
        form.addRow("dose fraction", self.dose_spin)
        self._on_source()

    def _adapt_page(self) -> QWidget:
        """The self-supervised source: low-dose images, optional lesion boxes, scheme, steps, learning rate."""
        self.adapt_list = QListWidget()
        self.adapt_list.setMaximumHeight(90)
        self.adapt_list.setToolTip("low-dose CT volumes of one scanner protocol (one pixel size), contiguous slices")
        self.adapt_boxes_combo = QComboBox()
        self.adapt_boxes_combo.setToolTip("optional: patches are drawn near these lesions and weigh more inside them")
        self.scheme_combo = QComboBox()
        for k, (key, label) in enumerate(SCHEME_ITEMS):
            self.scheme_combo.addItem(label, key)
            self.scheme_combo.setItemData(k, SCHEME_TIPS[key], Qt.ItemDataRole.ToolTipRole)
        self.adapt_steps_spin = spin_box(1, 100000, adapt_default("steps"))
        self.adapt_lr_spin = spin_box(1e-6, 1e-2, adapt_default("lr"), 6, 1e-4)
        self.scheme_combo.setToolTip("how the network learns without a normal dose (each choice explains itself)")
        self.adapt_steps_spin.setToolTip("training steps (about a second each on a CPU)")
        self.adapt_lr_spin.setToolTip("the learning rate of the self-supervised steps")
        return _form_page(
            ("low-dose scans", self.adapt_list),
            ("lesion boxes", self.adapt_boxes_combo),
            ("scheme", self.scheme_combo),
            ("steps", self.adapt_steps_spin),
            ("learning rate", self.adapt_lr_spin),
        )

    def _folder_page(self, edit: QLineEdit) -> QWidget:
        button = QPushButton("Folder…")
        button.clicked.connect(lambda _=False, e=edit: self._browse(e))
        page = QWidget()
        row = QHBoxLayout(page)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(edit, 1)
        row.addWidget(button)
        return page

    def _browse(self, edit: QLineEdit) -> None:
        path = QFileDialog.getExistingDirectory(self, "Choose a folder")
        if path:
            edit.setText(path)

    def _on_source(self, _index: int = 0) -> None:
        self.pages.setCurrentIndex(self.source_combo.currentIndex())
        for k in range(self.pages.count()):  # the stack as tall as the page shown, not the tallest one
            policy = QSizePolicy.Policy.Preferred if k == self.pages.currentIndex() else QSizePolicy.Policy.Ignored
            self.pages.widget(k).setSizePolicy(policy, policy)
        self.pages.adjustSize()
        self.dose_spin.setEnabled(self.source in ("layers", "dicom", "dataset"))  # dataset: a DeepLesion archive's

    @property
    def source(self) -> str:
        """Key of the chosen data source."""
        return str(self.source_combo.currentData())

    def set_source(self, key: str) -> None:
        """Choose the data source by key: layers, paired, dicom, dataset or adapt."""
        self.source_combo.setCurrentIndex([k for k, _ in SOURCES].index(key))

    def checked_images(self) -> list[str]:
        """Names of the ticked normal-dose image layers."""
        return checked_names(self.image_list)

    def set_images(self, names: list[str]) -> None:
        """Tick exactly the image layers in ``names``."""
        set_checked(self.image_list, names)

    def adapt_images(self) -> list[str]:
        """Names of the ticked low-dose image layers of the self-supervised source."""
        return checked_names(self.adapt_list)

    def set_adapt_images(self, names: list[str]) -> None:
        """Tick exactly these low-dose image layers for the self-supervised source."""
        set_checked(self.adapt_list, names)

    def refresh(
        self, images: list[str], shapes: list[tuple[str, str]], reduced: Collection[str] = (),
        renamed: dict[str, str] | None = None, empty: Collection[str] = (), pair: tuple[str, str] | None = None,
    ) -> None:  # fmt: skip
        """Refill the layer pickers with these image names and (Shapes layer name, role) pairs, keeping current
        choices, under their new names after a rename (a new pick prefers full-dose-looking names and never
        ``reduced`` ones, whose metadata says low dose or denoised; low-dose ones for the self-supervised source;
        reviewed or hand-drawn boxes, not an ``empty`` layer: a navigator's reviewed layer holds none until a box is
        kept; ``pair``: a low dose and the normal dose its metadata records, the paired source's default until the
        user picks one)."""
        refill_checks(self.image_list, images, looks_full_dose, never=reduced, renamed=renamed)
        refill_checks(self.adapt_list, images, lambda n: n in reduced or looks_low_dose(n), renamed=renamed)
        for combo in (self.boxes_combo, self.paired_boxes_combo):
            refill_boxes(combo, shapes, renamed=renamed, empty=empty)
        refill_boxes(self.adapt_boxes_combo, shapes, detect=False, renamed=renamed, empty=empty)
        low, full = pair or (next((n for n in images if looks_low_dose(n)), None),
                             next((n for n in images if looks_full_dose(n)), None))  # fmt: skip
        for key, combo, prefer in (("low", self.low_combo, low), ("full", self.full_combo, full)):
            refill(combo, images, prefer=prefer, renamed=renamed, keep=key in self._picked)

    def values(self) -> dict[str, Any]:
        """The data choices as plain values (layer names, folders, dose fraction)."""
        return {
            "source": self.source,
            "images": self.checked_images(),
            "boxes": self.boxes_combo.currentData(),
            "low": self.low_combo.currentText(),
            "full": self.full_combo.currentText(),
            "paired_boxes": self.paired_boxes_combo.currentData(),
            "dicom_folder": self.dicom_edit.text().strip(),
            "dataset_folder": self.dataset_edit.text().strip(),
            "dose": float(self.dose_spin.value()),
            "adapt_images": self.adapt_images(),
            "adapt_boxes": self.adapt_boxes_combo.currentData(),
            "scheme": self.scheme_combo.currentData(),
            "adapt_steps": self.adapt_steps_spin.value(),
            "adapt_lr": self.adapt_lr_spin.value(),
        }


class ModelBox(QGroupBox):
    """The new model's name and the models the run starts from."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("Model", parent)
        self.name_edit = QLineEdit(default_model_name())
        self.start_denoiser_combo, self.start_detector_combo = QComboBox(), QComboBox()
        form = QFormLayout(self)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapAllRows)  # the narrow column: each label above its field
        form.addRow("new model name", self.name_edit)
        form.addRow("start denoiser", self.start_denoiser_combo)
        form.addRow("start detector", self.start_detector_combo)
        self.name_edit.setToolTip("the fine-tuned pair is saved under this name in your model folder")
        for combo in (self.start_denoiser_combo, self.start_detector_combo):
            combo.setToolTip("the model the run starts from (the shipped default, or one you fine-tuned before)")

    def values(self) -> dict[str, Any]:
        """The name as typed and the starting models' paths (None: from scratch)."""
        return {
            "name": self.name_edit.text(),
            "init_denoiser": self.start_denoiser_combo.currentData(),
            "init_detector": self.start_detector_combo.currentData(),
        }


class AdvancedBox(QWidget):
    """The advanced training settings, hidden until its ``toggle`` button (an 'Advanced' arrow) opens them."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.toggle = QToolButton()
        self.toggle.setText("Advanced")
        self.toggle.setCheckable(True)
        self.toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.toggle.setArrowType(Qt.ArrowType.RightArrow)
        self.setVisible(False)
        self.toggle.toggled.connect(self.set_open)
        self._create_fields()
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapAllRows)  # beside its label a rate read "0.00" (clipped)
        rows = (
            ("losses", self.mode_combo),
            ("rounds", self.rounds_spin),
            ("denoiser steps / round", self.den_steps_spin),
            ("detector steps / round", self.det_steps_spin),
            ("detection loss weight", self.det_weight_spin),
            ("ROI perceptual weight", self.roi_weight_spin),
            ("learning rate", self.lr_spin),
            ("patch size", self.patch_spin),
            ("batch size", self.batch_spin),
            ("validation split", self.val_spin),
            ("synthetic lesions", self.insert_spin),
            ("auto-box score threshold", self.box_threshold_spin),
            ("device", self.device_combo),
            ("seed", self.seed_spin),
        )
        for label, field in rows:
            form.addRow(label, field)

    def _create_fields(self) -> None:
        d = ONE_CLICK_DEFAULTS
        self.mode_combo = QComboBox()
        for key, label in LOSS_MODES:
            self.mode_combo.addItem(label, key)
        self.rounds_spin = spin_box(1, 100, d["rounds"])
        self.den_steps_spin = spin_box(0, 10000, d["denoiser_steps"])
        self.det_steps_spin = spin_box(0, 10000, d["detector_steps"])
        self.det_weight_spin = spin_box(0.0, 10.0, d["det_weight"], 3, 0.05)
        self.roi_weight_spin = spin_box(0.0, 10.0, d["roi_weight"], 3, 0.05)
        for box in (self.det_weight_spin, self.roi_weight_spin):
            box.setToolTip("weight relative to the pixel loss at the start of each round (0: off)")
        self.lr_spin = spin_box(1e-6, 1e-2, d["lr"], 6, 1e-4)
        self.patch_spin = spin_box(32, 512, d["patch_size"], None, 16)
        self.batch_spin = spin_box(1, 64, d["batch_size"])
        self.val_spin = spin_box(0.0, 0.9, d["val_fraction"], 2, 0.05)
        self.insert_spin = spin_box(0.0, 1.0, d["insert_lesions"], 2, 0.1)
        self.insert_spin.setToolTip("share of training patches given synthetic lesions (soft tissue, lung): both "
                                    "networks then train on scans without lesion boxes too; 0: only your boxes")
        self.box_threshold_spin = spin_box(0.05, 0.99, AUTO_BOX_THRESHOLD, 2, 0.05)
        self.device_combo = QComboBox()
        self.seed_spin = spin_box(0, 2**31 - 1, d["seed"])
        self.den_steps_spin.setToolTip("denoiser steps in each round (with the losses chosen above)")
        self.det_steps_spin.setToolTip("detector steps in each round, on the denoised images (LIDnet losses only)")
        add_tips(
            (self.mode_combo, "LIDnet: pixel loss, the detector's loss on the denoised image and the ROI perceptual "
                              "loss, the two networks in turn; pixel: the denoiser on pixel loss alone"),
            (self.rounds_spin, "collaborative rounds: in each, the denoiser trains, then the detector"),
            (self.lr_spin, "the learning rate (a high one can leave the shipped pair worse than it started)"),
            (self.patch_spin, "side of the square training patches, in pixels (a multiple of 16)"),
            (self.batch_spin, "patches per step (more: smoother and slower steps, more memory)"),
            (self.val_spin, "share of the slices kept to choose the best round (a held-out test part is kept too)"),
            (self.box_threshold_spin, "score above which the starting detector's boxes count as lesions when no "
                                      "reviewed boxes are given"),
            (self.device_combo, "auto: a GPU when there is one, else the CPU"),
            (self.seed_spin, "the same seed, data and settings give the same run"),
        )  # fmt: skip

    def set_source(self, source: str) -> None:
        """Enable the settings the data ``source`` uses; the self-supervised source (its steps and learning rate
        are on its own page) uses only patch size, batch size, device and seed."""
        for name in UNUSED_SETTINGS:
            getattr(self, name).setEnabled(source != ADAPT_SOURCE[0])

    def set_open(self, on: bool) -> None:
        """Show (``on``) or hide the settings; the toggle's arrow follows."""
        self.setVisible(on)
        self.toggle.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)

    def values(self) -> dict[str, Any]:
        """The TrainConfig fields set here (``device`` 'auto' when none is listed) and the auto-box threshold."""
        return {
            "mode": self.mode_combo.currentData(),
            "rounds": self.rounds_spin.value(),
            "denoiser_steps": self.den_steps_spin.value(),
            "detector_steps": self.det_steps_spin.value(),
            "det_weight": self.det_weight_spin.value(),
            "roi_weight": self.roi_weight_spin.value(),
            "lr": self.lr_spin.value(),
            "detector_lr": self.lr_spin.value(),
            "patch_size": self.patch_spin.value(),
            "batch_size": self.batch_spin.value(),
            "val_fraction": self.val_spin.value(),
            "insert_lesions": self.insert_spin.value(),
            "device": self.device_combo.currentText() or "auto",
            "seed": self.seed_spin.value(),
            "box_threshold": float(self.box_threshold_spin.value()),
        }


class RunPanel(QWidget):
    """Start and Stop, the progress bars, the time left, the message line and the live training plot."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.start_button = QPushButton("Start fine-tuning")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setEnabled(False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        self.stage_label = QLabel("")
        self.stage_bar = QProgressBar()
        self.stage_bar.setFormat("%v / %m steps")
        self.overall_bar = QProgressBar()
        self.overall_bar.setFormat("overall %p%")
        self.eta_label = QLabel("")
        self.status = wrapping_label()
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.plot = NoReferencePlot(self)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(buttons)
        for w in (self.stage_label, self.stage_bar, self.overall_bar, self.eta_label, self.status, self.plot):
            layout.addWidget(w)

    def begin(self) -> None:
        """A run starts: Start off, Stop on, busy bars until the first step."""
        self.start_button.setEnabled(False)
        self.stop_button.setEnabled(True)
        for bar in (self.stage_bar, self.overall_bar):
            bar.setRange(0, 0)  # busy until the first step
        self.stage_label.setText("preparing data")
        self.eta_label.setText("")

    def end(self, status: str = "") -> None:
        """The run is over: Start on, Stop off, no busy bar left spinning, no "preparing" label left standing (a run
        that ended before training shows how it ended, ``status``: "stopped")."""
        self.start_button.setEnabled(True)
        self.stop_button.setEnabled(False)
        if self.stage_bar.maximum() == 0 or self.stage_bar.value() <= 0:  # ended before training: nothing under way
            self.stage_label.setText(status)
        for bar in (self.stage_bar, self.overall_bar):
            if bar.maximum() == 0:
                bar.setRange(0, 1)
        self.eta_label.setText("")

    def show_record(self, rec: dict[str, Any]) -> None:
        """Show one progress record of the trainer or of the self-supervised run (``selfsup.adapt_job``): bars,
        stage, time left, validation or no-reference estimates line, and plot."""
        stage = rec.get("stage")
        if "total_steps" in rec:
            self.overall_bar.setRange(0, max(int(rec["total_steps"]), 1))
            self.overall_bar.setValue(int(rec.get("step", 0)))
        if stage in ("prepare", "setup", "export"):
            self.stage_label.setText(rec.get("message", ""))
        elif stage == "validate":
            val = rec.get("val") or {}
            parts = [f"PSNR {val['psnr']:.2f} dB"] if "psnr" in val else []
            parts += [f"sensitivity {val['sensitivity']:.2f}"] if "sensitivity" in val else []
            if "fp_per_slice" in val:  # what the Denoise dock will draw with the model
                parts.append(f"{val['fp_per_slice']:.2f} false boxes per slice at {val['threshold']:.2f}")
            best = " (best so far)" if rec.get("is_best") else ""
            self.status.setText(f"validation after {rec.get('after')}: {', '.join(parts)}{best}{input_text(rec)}")
            self.plot.add_record(rec)
        elif stage == "estimate":
            self.status.setText(estimate_text(rec))
            self.plot.add_record(rec)
        elif stage in ("stopped", "finished"):
            self.stage_label.setText(stage)
            self.plot.add_record(rec)  # the self-supervised run's last record holds the final estimates
        elif "stage_step" in rec or stage == "adapt":
            done, total = rec.get("stage_step", rec.get("step", 0)), rec.get("stage_total", rec.get("total_steps", 1))
            self.stage_label.setText(f"{stage}: step {done} of {total}")
            self.stage_bar.setRange(0, int(total))
            self.stage_bar.setValue(int(done))
            eta = rec.get("eta_s")
            if eta is not None:
                self.eta_label.setText(f"about {time_left_text(eta)} left")
            self.plot.add_record(rec)
