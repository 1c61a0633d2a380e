"""Dock widget: one-click collaborative fine-tuning (LIDnet) of the denoiser and the detector on local data.

Thin by design (DESIGN.md): it gathers inputs, checks them (every problem listed in one message, nothing started),
and runs ``_training.finetune.finetune_job`` in a napari generator worker. The worker yields the trainer's
progress records; the callbacks here (GUI thread) move the progress bars, feed the live plot and, when the run
ends, tell the denoise widgets in the viewer that a new model exists. Stop sets the trainer's ``should_stop`` flag,
so the run ends at the next step and the best checkpoint so far is still published. Runs live in
``registry.user_model_dir().parent / "runs"``, never in the working directory. torch is not imported at module level.
The widget assembles the boxes of ``_finetune_parts`` (data, model, advanced settings, run panel).

The source "low-dose scans only (self-supervised)" (``_adapt_source``) runs ``_training.selfsup.adapt_job`` in the
same worker machinery instead: checked (``prepare_adapt``, model name) before anything starts, the same progress,
Stop and export (``NAME_denoiser``), its plot showing the no-reference estimates, its summary ``adapt_summary``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtWidgets import QWidget

from .._training.finetune import (
    FinetuneOutcome,
    FinetuneRequest,
    default_model_name,
    model_name_problems,
    new_run_dir,
    outcome_summary,
)
from .._training.local_data import CTInput, format_problems, synthetic_lesions_only
from .._training.selfsup import AdaptOutcome, adapt_summary
from ..io.checks import error_text
from ._adapt_source import ADAPT_SOURCE, AdaptRequest, adapt_request
from ._docking import DockHome, scroll_layout, show_message
from ._finetune_parts import (
    DETECT_ITEM,
    LOSS_MODES,
    NO_BOXES_ITEM,
    SCRATCH_ITEM,
    SOURCES,
    AdvancedBox,
    DataBox,
    ModelBox,
    RunPanel,
    folder_problems,
    input_problems,
)
from ._layer_watch import LayerWatch
from ._roles import (
    CALIPERS,
    DETECTIONS,
    current_slice,
    fill_models,
    grayscale_images,
    is_denoised,
    is_reduced_dose,
    normal_dose_of,
    recorded_dose,
    role,
)
from ._run_task import finish_run, register_run
from ._worker_utils import fill_devices, share_cores
from .layer_inputs import inputs_from_layers, paired_input
from .reading_room import ReadingRoom

if TYPE_CHECKING:
    import napari

#: plans of more training steps than this are run only when Start is pressed a second time
LONG_PLAN_STEPS = 5000
TITLE = "Fine-tune"  # the dock's tab
__all__ = [
    "DETECT_ITEM",
    "LOSS_MODES",
    "NO_BOXES_ITEM",
    "SCRATCH_ITEM",
    "SOURCES",
    "FineTuneWidget",
    "refresh_denoise_widgets",
]


def refresh_denoise_widgets(
    viewer: Any, select: str | None = None, kinds: tuple[str, ...] = ("denoiser", "detector")
) -> int:
    """Call ``refresh_models()`` on every DenoiseDetectWidget docked in ``viewer`` and, when ``select`` is given,
    choose the networks of that name in it (``NAME_denoiser`` / ``NAME_detector``, those of ``kinds``); returns how
    many were refreshed."""
    from .denoise_detect import DenoiseDetectWidget

    window = getattr(viewer, "window", None)
    docks = getattr(window, "dock_widgets", None) if window is not None else None
    found: list[DenoiseDetectWidget] = []
    for widget in list(docks.values()) if docks is not None else []:
        widget = getattr(widget, "native", widget)
        if isinstance(widget, DenoiseDetectWidget):
            found.append(widget)
        elif isinstance(widget, QWidget):
            found.extend(widget.findChildren(DenoiseDetectWidget))
    for w in dict.fromkeys(found):
        w.refresh_models()
        if select:
            w.select_model(select, kinds)
    return len(found)


def _expose(widget: QWidget, part: QWidget, *names: str) -> None:
    """Keep a part's fields reachable as the widget's own attributes (tests and other widgets use them)."""
    for name in names:
        setattr(widget, name, getattr(part, name))


class FineTuneWidget(QWidget):
    """Fine-tune both LIDnet networks on the user's own data in the background.

    Public methods take plain values so scripts and tests need no dialogs: ``start()`` returns the worker (None
    when the data checks fail; the message is in ``status``), ``stop()`` ends the run at the next step.
    """

    def __init__(self, napari_viewer: napari.viewer.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker: Any = None
        self.outcome: FinetuneOutcome | AdaptOutcome | None = None
        self.run_dir: Path | None = None
        self._long_plan: tuple[str, int] | None = None  # a plan over LONG_PLAN_STEPS the user was told of
        self.records: list[dict[str, Any]] = []
        self._stop_event = threading.Event()
        self._job_done = threading.Event()
        self._task: Any = None  # the run's entry in the window's task list (closing napari stops it)
        self._build_ui()
        self.refresh_layers()
        self.refresh_models()
        self.watch = LayerWatch(napari_viewer, self.refresh_layers)
        self.plot.set_theme(napari_viewer.theme)
        self.watch.connect(napari_viewer.events.theme, lambda _event: self.plot.set_theme(self.viewer.theme))
        ReadingRoom.install(napari_viewer, self)
        DockHome(self, "right", TITLE)

    # ------------------------------------------------------------------------------------------------------- UI
    def _build_ui(self) -> None:
        self._create_data_box()
        self._create_model_box()
        self._create_advanced_box()
        self._create_run_panel()
        layout = scroll_layout(self)
        for w in (self.data_box, self.model_box, self.advanced_button, self.advanced, self.run_panel):
            layout.addWidget(w)
        self.source_combo.currentIndexChanged.connect(self._on_source)
        self._on_source()

    def _create_data_box(self) -> None:
        box = self.data_box = DataBox()
        _expose(
            self,
            box,
            "source_combo",
            "pages",
            "image_list",
            "boxes_combo",
            "low_combo",
            "full_combo",
            "paired_boxes_combo",
            "dicom_edit",
            "dataset_edit",
            "dose_spin",
            "adapt_list",
            "adapt_boxes_combo",
            "scheme_combo",
            "adapt_steps_spin",
            "adapt_lr_spin",
        )

    def _create_model_box(self) -> None:
        box = self.model_box = ModelBox()
        _expose(self, box, "name_edit", "start_denoiser_combo", "start_detector_combo")

    def _create_advanced_box(self) -> None:
        box = self.advanced = AdvancedBox()
        self.advanced_button = box.toggle
        _expose(
            self,
            box,
            "mode_combo",
            "rounds_spin",
            "den_steps_spin",
            "det_steps_spin",
            "det_weight_spin",
            "roi_weight_spin",
            "lr_spin",
            "patch_spin",
            "batch_spin",
            "val_spin",
            "insert_spin",
            "box_threshold_spin",
            "device_combo",
            "seed_spin",
        )

    def _create_run_panel(self) -> None:
        panel = self.run_panel = RunPanel()
        _expose(
            self,
            panel,
            "start_button",
            "stop_button",
            "stage_label",
            "stage_bar",
            "overall_bar",
            "eta_label",
            "status",
            "plot",
        )
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)

    def source(self) -> str:
        """Key of the chosen data source."""
        return self.data_box.source

    def set_source(self, key: str) -> None:
        """Choose the data source by key: layers, paired, dicom, dataset or adapt (low-dose scans only)."""
        self.data_box.set_source(key)

    def _on_source(self, _index: int = 0) -> None:
        """Disable what the chosen source does not use (the self-supervised source trains the denoiser alone)."""
        adapt = self.source() == ADAPT_SOURCE[0]
        self.advanced.set_source(self.source())
        self.start_detector_combo.setEnabled(not adapt)
        self.start_button.setText("Start adapting" if adapt else "Start fine-tuning")

    def _message(self, text: str, error: bool = False) -> None:
        """The status line; an error also as a napari notification (routine news would stay over the window/level
        readout: napari dismisses a toast only while its window is active)."""
        show_message(self.status, text, error, self.viewer.theme)
        if error:
            from napari.utils.notifications import show_error

            show_error(f"LIDnet fine-tuning: {text}")

    # ---------------------------------------------------------------------------------------------- choices
    def _images(self) -> list[Any]:
        return grayscale_images(self.viewer, ndims=None)

    def _shapes(self) -> list[Any]:
        from napari.layers import Shapes

        return [ly for ly in self.viewer.layers if isinstance(ly, Shapes) and role(ly) != CALIPERS]  # no boxes

    def refresh_layers(self, renamed: dict[str, str] | None = None) -> None:
        """Refill the layer pickers, keeping current choices under their new names after a rename (a new pick
        prefers full-dose-looking names)."""
        images = self._images()
        reduced = {ly.name for ly in images if is_reduced_dose(ly)}
        shapes = [(ly.name, role(ly)) for ly in self._shapes()]
        empty = {ly.name for ly in self._shapes() if not len(ly.data)}
        pairs = ((ly, normal_dose_of(ly, self.viewer.layers)) for ly in images if not is_denoised(ly))
        pair = next(((low.name, full.name) for low, full in pairs if full is not None), None)  # by the metadata
        self.data_box.refresh([ly.name for ly in images], shapes, reduced, renamed, empty, pair)

    def checked_images(self) -> list[str]:
        """Names of the ticked normal-dose image layers."""
        return self.data_box.checked_images()

    def set_images(self, names: list[str]) -> None:
        """Tick exactly the image layers in ``names``."""
        self.data_box.set_images(names)

    def refresh_models(self) -> None:
        """Refill the starting-model pickers from the registry (shipped first); default: the shipped model, else
        the newest user model, else from scratch."""
        for kind, combo in (("denoiser", self.start_denoiser_combo), ("detector", self.start_detector_combo)):
            problem = fill_models(combo, kind, after=[(SCRATCH_ITEM, None)], fallback=-1)
            if problem:
                self.status.setText(problem)
        fill_devices(self.device_combo)

    # ------------------------------------------------------------------------------------------------ request
    def _layer(self, name: str) -> Any:
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _boxes_layer(self, name: str | None) -> Any:
        """The picked boxes layer; None for no boxes or the starting detector's (KeyError: a picked layer is gone)."""
        if not name or name == DETECT_ITEM:
            return None
        layer = self._layer(name)
        if layer is None:  # never silently "no boxes": the detector would then train on its own detections
            raise KeyError(f"the boxes layer {name!r} is gone: pick the lesion boxes again")
        return layer

    def settings(self) -> dict[str, Any]:
        """TrainConfig fields chosen in the widget (besides ``out``)."""
        advanced, model = self.advanced.values(), self.model_box.values()
        del advanced["box_threshold"]
        return {
            "mode": advanced.pop("mode"),
            "init_denoiser": model["init_denoiser"],
            "init_detector": model["init_detector"],
            **advanced,
        }

    def build_request(self) -> tuple[FinetuneRequest | None, list[str]]:
        """The run the widget describes, or (None, problems) listing everything that is missing or wrong."""
        from .._training.finetune import one_click_config

        problems = model_name_problems(self.name_edit.text())
        settings = self.settings()
        patch = settings["patch_size"]
        if patch % 16:
            problems.append(f"patch size {patch} must be a multiple of 16")
        data = self.data_box.values()
        source = data["source"]
        chosen = data["boxes"] if source == "layers" else data["paired_boxes"]
        synthetic = bool(settings["insert_lesions"])
        inputs, folder, notes = self._gather_inputs(data, settings["mode"] != "pixel" and not synthetic)
        if synthetic and not chosen:  # no boxes: the synthetic lesions are the lesions
            synthetic_lesions_only(inputs)
        if inputs and source in ("layers", "paired") and settings["mode"] != "pixel" and not chosen and not synthetic:
            problems.append(
                "choose the lesion boxes: a reviewed layer (Lesion navigator), a layer you drew, or, knowingly, "
                f"{DETECT_ITEM!r} (unreviewed: the detector would learn its own false positives); scans without "
                "lesions: give synthetic lesions (Advanced)"
            )
        problems.extend(notes)
        if inputs:
            problems.extend(input_problems(inputs, settings))
        if problems:
            return None, problems
        name = self.name_edit.text().strip()
        try:
            config = one_click_config(new_run_dir(name), **settings)
        except ValueError as exc:
            return None, [str(exc)]
        request = FinetuneRequest(
            name=name,
            config=config,
            inputs=inputs or None,
            dicom_folder=folder if source == "dicom" else None,
            dataset_dir=folder if source == "dataset" else None,
            dose=data["dose"],
            box_threshold=float(self.box_threshold_spin.value()),
            source=source,
        )
        return request, []

    def _gather_inputs(self, data: dict[str, Any], need_lesions: bool) -> tuple[list[CTInput], str | None, list[str]]:
        """(inputs, folder, problems) of the data source in ``data`` (``DataBox.values()``): inputs from the
        layers for the layer sources, the folder for the folder sources."""
        source = data["source"]
        if source == "layers":
            inputs, problems = self._layer_inputs(data["images"], data["boxes"])
            return inputs, None, problems
        if source == "paired":
            inputs, problems = self._paired_inputs(data["low"], data["full"], data["paired_boxes"])
            return inputs, None, problems
        folder = data["dicom_folder"] if source == "dicom" else data["dataset_folder"]
        return [], folder, folder_problems(source, folder, need_lesions)

    def _layer_inputs(self, names: list[str], boxes: str) -> tuple[list[CTInput], list[str]]:
        layers = [self._layer(n) for n in names]
        gone = [n for n, ly in zip(names, layers) if ly is None]
        if gone:
            return [], [f"{', '.join(gone)}: no such layer any more; tick the images again"]
        if not layers:
            return [], ["tick at least one normal-dose image layer (open a CT or the sample data)"]
        reduced = [ly.name for ly in layers if is_reduced_dose(ly)]
        if reduced:
            return [], [f"{', '.join(reduced)}: low dose or denoised (the layer's metadata says so); tick normal-dose "
                        f"images, or use {ADAPT_SOURCE[1]!r}"]  # fmt: skip
        try:
            shapes = self._boxes_layer(boxes)
        except KeyError as exc:
            return [], [exc.args[0]]
        inputs, notes = inputs_from_layers(layers, shapes, current_slice(self.viewer, layers[0]), self.viewer.layers)
        return inputs, list(notes)

    def _paired_inputs(self, low_name: str, full_name: str, boxes: str) -> tuple[list[CTInput], list[str]]:
        low, full = self._layer(low_name), self._layer(full_name)
        if low is None or full is None:
            return [], ["choose a low-dose and a full-dose image layer"]
        if low == full:  # == : napari hands plugins a new proxy of a layer at each access
            return [], ["the low-dose and full-dose layers must be different layers"]
        problems = _pair_problems(low, full)
        if problems:  # a swapped or denoised pair trained the network to the wrong target, and was selected
            return [], problems
        try:
            shapes = self._boxes_layer(boxes)
        except KeyError as exc:
            return [], [exc.args[0]]
        item, notes = paired_input(low, full, shapes, current_slice(self.viewer, full), self.viewer.layers)
        return [item], list(notes)

    def build_adapt_request(self) -> tuple[AdaptRequest | None, list[str]]:
        """The self-supervised run the widget describes, or (None, problems): every check of the data
        (``adapt_data.prepare_adapt``), the name and the starting denoiser, before anything starts."""
        data, advanced = self.data_box.values(), self.advanced.values()
        layers = [ly for ly in (self._layer(n) for n in data["adapt_images"]) if ly is not None]
        settings = {
            "scheme": data["scheme"],
            "steps": data["adapt_steps"],
            "lr": data["adapt_lr"],
            "from_model": self.model_box.values()["init_denoiser"],
            **{k: advanced[k] for k in ("patch_size", "batch_size", "device", "seed")},
        }
        try:
            shapes = self._boxes_layer(data["adapt_boxes"])
        except KeyError as exc:
            return None, [exc.args[0]]
        current = current_slice(self.viewer, layers[0]) if layers else None
        return adapt_request(layers, shapes, current, self.name_edit.text(), settings, self.viewer.layers)

    def _boxes_note(self) -> str:
        """', on unreviewed detections' when the chosen lesion boxes are (or may be) the detector's own."""
        data = self.data_box.values()
        if self.settings()["mode"] == "pixel":
            return ""
        if data["source"] == "dicom" and self.settings()["insert_lesions"]:  # then no detected box is taken
            return ", on synthetic lesions inserted into the folder's scans"
        if data["source"] == "dicom":  # series without annotations get the starting detector's boxes
            return (", on the starting detector's boxes where the folder has no annotations (the detector may learn "
                    "its own false positives)")  # fmt: skip
        if data["source"] not in ("layers", "paired"):
            return ""
        chosen = data["boxes"] if data["source"] == "layers" else data["paired_boxes"]
        layer = self._layer(chosen) if chosen and chosen != DETECT_ITEM else None
        raw = chosen == DETECT_ITEM or (layer is not None and role(layer) == DETECTIONS)
        return ", on unreviewed detections (the detector may learn its own false positives)" if raw else ""

    # ---------------------------------------------------------------------------------------------------- run
    def start(self) -> Any:
        """Check the data and start the run in a worker; returns the worker, or None (message in ``status``)."""
        if self.worker is not None:
            self._message("a fine-tuning run is already going: stop it first", error=True)
            return None
        if self.source() == ADAPT_SOURCE[0]:
            return self._start_adapt()
        request, problems = self.build_request()
        if request is None:
            self._message(format_problems(problems), error=True)
            return None
        steps = sum(n for _, n in request.config.stages())
        if steps > LONG_PLAN_STEPS and self._long_plan != (request.name, steps):
            self._long_plan = (request.name, steps)  # asked once: Start again runs this plan as it stands
            self._message(f"{steps} training steps is a run of hours on a CPU (about a second a step; the one-click "
                          "plan is 180): press Start again to run it, or lower the steps (Advanced)", True)  # fmt: skip
            return None
        from .._training.finetune import finetune_job

        self._long_plan = None  # a long plan is asked about again next time
        self._stop_event.clear()
        self.run_dir = Path(request.config.out)
        worker = self._worker(finetune_job, request, self._stop_event.is_set)
        text = f"fine-tuning {request.name!r} ({request.config.rounds} rounds){self._boxes_note()} …"
        return self._launch(worker, text)

    def _start_adapt(self) -> Any:
        """Check the self-supervised run and start it in a worker; None (message in ``status``) when it cannot."""
        request, problems = self.build_adapt_request()
        if request is None:
            self._message(format_problems(problems, "adapt"), error=True)
            return None
        from .._training.selfsup import adapt_job

        self._stop_event.clear()
        self.run_dir = None
        worker = self._worker(adapt_job, request.volumes, request.name, should_stop=self._stop_event.is_set,
                              **request.kwargs)  # fmt: skip
        n, kw = len(request.volumes), request.kwargs
        text = f"adapting {request.name!r} on {n} low-dose scan{'s' * (n > 1)} ({kw['scheme']}, {kw['steps']} steps) …"
        return self._launch(worker, text)

    def _launch(self, worker: Any, text: str) -> Any:
        """Connect a run's worker to the run panel and start it."""
        self.outcome = None
        self.records = []
        self.plot.clear()
        worker.yielded.connect(self._on_record)
        worker.returned.connect(self._on_returned)
        worker.errored.connect(lambda exc: self._message(error_text(exc), error=True))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.run_panel.begin()
        self._message(text)
        self._task = register_run(self.viewer, text.rstrip(" …"), self._stop_event, self._job_done)
        worker.start()
        return worker

    def _worker(self, job: Any, *args: Any, **kwargs: Any) -> Any:
        """A generator worker running ``job`` that sets ``_job_done`` when the job has returned (its model saved).

        Not napari's ``create_worker``: that registers the run with the window, which on closing quits it at its
        next progress record, before it saves anything; ``register_run`` registers it to stop as Stop does."""
        from napari.qt.threading import GeneratorWorker

        share_cores()
        done = self._job_done = threading.Event()

        def run() -> Any:
            try:
                return (yield from job(*args, **kwargs))
            finally:
                done.set()

        return GeneratorWorker(run)

    def stop(self) -> None:
        """Ask the run to end at the next step; the best checkpoint so far (the self-supervised run: the model as
        trained so far, nothing before its first step) is saved as the new model."""
        if self.worker is not None:
            self._stop_event.set()
            self.stop_button.setEnabled(False)
            self.status.setText("stopping at the next step …")

    def _on_record(self, rec: dict[str, Any]) -> None:
        self.records.append(rec)
        self.run_panel.show_record(rec)

    def _on_returned(self, outcome: FinetuneOutcome | AdaptOutcome) -> None:
        self.outcome = outcome
        if outcome.status in ("invalid", "failed"):
            self._message(outcome.message, error=True)
            self.stage_label.setText(outcome.status)  # not the step it stood at, as if it went on
            if outcome.exported:  # the best checkpoint before a failure: listed in the docks, not chosen for them
                refresh_denoise_widgets(self.viewer)
                self.refresh_models()
            return
        text = adapt_summary(outcome) if isinstance(outcome, AdaptOutcome) else outcome_summary(outcome)
        if outcome.exported:
            name = Path(outcome.exported[0]).name.rsplit("_", 1)[0]
            self.stage_label.setText(f"{outcome.status}: saved as {name}")  # not the "saving ..." of the last record
            worse_kinds = _worse_networks(outcome.exported)
            notes = [f"its {kind}: {reason}" for kind, reason in worse_kinds.items()]
            # a pair worse than its start as a whole, or an adapted model its own check calls worse: not selected;
            # a pair better as a whole: each network selected unless its own check calls it worse
            kinds = tuple(k for k in ("denoiser", "detector") if k not in worse_kinds)
            worse = not kinds or (outcome.improved is False if isinstance(outcome, FinetuneOutcome) else bool(notes))
            n = refresh_denoise_widgets(self.viewer, select=None if worse else name, kinds=kinds)
            self.refresh_models()
            if model_name_problems(self.name_edit.text()):  # saved under it (or under NAME-2: taken meanwhile)
                self.name_edit.setText(default_model_name())
            if n:
                text += ("; listed in the denoise widget, not selected" if worse else
                         "; selected in the denoise widget (the shipped default stays first in its list)"
                         + "".join(f"; its {k} listed, not selected: the {k} in use stays" for k in worse_kinds))
            text += "".join(f"; note: {note}" for note in notes)
            if outcome.status == "stopped":  # otherwise Start would begin anew without a word
                text += f"; Start begins a new run: to go on from this one, pick {name} as the start"
        self._message(text)

    def _on_finished(self) -> None:
        self.worker = None
        self.run_panel.end(self.outcome.status if self.outcome is not None else "")
        finish_run(self.viewer, self._task)

    def closeEvent(self, event: Any) -> None:  # noqa: N802 (Qt name)
        """Closing the widget stops a running job at its next step."""
        self.dock_closed()
        super().closeEvent(event)

    def dock_closed(self) -> None:
        """The dock was closed (napari's X does not close the widget): a running job stops at its next step, as
        with Stop (the last good checkpoint is kept), and the widget stops listening to the viewer."""
        self._stop_event.set()
        self.watch.close()
        ReadingRoom.release(self.viewer, self)


def _pair_problems(low: Any, full: Any) -> list[str]:
    """Why ``low``/``full`` are not a low-dose scan and its normal dose, by what their metadata records."""
    problems = []
    if is_reduced_dose(full):
        what = "denoised" if is_denoised(full) else "a reduced dose"
        problems.append(f"{full.name}: its metadata says {what}; pick the normal-dose scan as the full dose")
    if is_denoised(low) or recorded_dose(low) == 1.0:
        what = "denoised" if is_denoised(low) else "normal dose (dose 1.0)"
        problems.append(f"{low.name}: its metadata says {what}; pick the low-dose scan as the low dose")
    return problems


def _worse_networks(exported: list[str]) -> dict[str, str]:
    """{'detector': 'its validation mean sensitivity fell from 0.467 to 0.333 during training'} for each saved
    network whose card says it ended below its start (a pair better as a whole selected its detector anyway)."""
    from ..metrics.selection import worse_reason
    from ..models.weights import read_card

    notes: dict[str, str] = {}
    for path in dict.fromkeys(str(Path(p).with_suffix("")) for p in exported):  # a model's .safetensors and .json
        try:
            card = read_card(path)
        except (OSError, ValueError):
            continue
        reason = worse_reason(card)
        if reason:
            notes[str(card.get("kind", Path(path).name.rsplit("_", 1)[-1]))] = reason
    return notes
