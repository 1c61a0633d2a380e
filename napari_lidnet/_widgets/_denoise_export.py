"""The Denoise dock's exports: the denoised volume as a new DICOM series (in the background) or NIfTI file, and the
boxes shown as CSV/JSON; never overwriting.

``DenoiseExports`` is a part of ``denoise_detect.DenoiseDetectWidget``, kept apart so each file holds one thing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QFileDialog

from ..io.volume import n_slices
from ..layer_data import volume_from_layer
from ._roles import has_voxel_size, reviewed_of, simulated_label
from ._save_dialog import check_suffix, save_path


class DenoiseExports:
    """The export half of the Denoise dock (see the module's docstring)."""

    def _update_export_buttons(self) -> None:
        res = self._last["result"] if self._last else None
        idle = self.export_worker is None  # one export at a time
        self.export_dicom_button.setEnabled(idle and res is not None and res.denoised is not None)
        self.export_boxes_button.setEnabled(res is not None and res.boxes is not None)

    def _denoised_volume(self) -> Any | None:
        """The last denoised result as a CTVolume with its source's geometry, or None (after saying why)."""
        data = self._denoised_array() if self._last is not None else None
        if data is None:
            self._message("nothing to export: run the denoiser first", error=True)
            return None
        src = self._last["layer"]
        first = self._last["first"]
        return volume_from_layer(data, tuple(src.scale), tuple(src.translate), dict(src.metadata),
                                 f"{src.name} denoised", first_slice=first)  # fmt: skip

    def export_nifti(self, path: str | Path) -> Path | None:
        """Write the last denoised result as a new NIfTI file (.nii or .nii.gz, geometry kept); never overwrites."""
        from ..io.dicom_write import strength_note
        from ..io.nifti import is_nifti, write_nifti

        vol = self._denoised_volume()
        if vol is None:
            return None
        if not is_nifti(path):
            self._message(f"{Path(path).name}: a NIfTI file name ends in .nii or .nii.gz", error=True)
            return None
        try:
            strength = strength_note(self._last.get("remove_sd"), self._last.get("leave_sd"))
            note = f"LIDnet {self._last['labels'][0] or ''}{strength}"
            out = write_nifti(path, vol, denoised=True, note=note)
        except (OSError, ValueError) as exc:
            self._message(f"NIfTI export failed: {exc}", error=True)
            return None
        self._message(f"wrote {out}")
        return out

    def export_dicom(self, folder: str | Path, background: bool = False) -> list[Path]:
        """Write the last denoised result as a new DERIVED DICOM series into an empty or new ``folder``.

        Geometry and patient/study tags come from the input layer (when it was read from DICOM); the
        SeriesDescription names the model. Returns the files, or [] after showing why nothing was written. With
        ``background`` (the Export button) the files are written in a worker thread, the viewer usable meanwhile,
        and [] is returned at once: the status line says when they are written (``export_worker`` until then).
        """
        vol = self._denoised_volume()
        if vol is None:
            return []
        from ..io.dicom_write import denoised_description

        src = self._last["layer"]
        base = src.metadata.get("series_description") or src.name
        simulated = simulated_label(src.metadata)
        if simulated:  # said first (the description is cut at 64 characters): not a clinical low-dose scan
            base = f"{simulated}: {base}"
        how = (base, self._last["labels"][0] or "", self._last.get("remove_sd"), self._last.get("leave_sd"))
        desc = denoised_description(*how), denoised_description(*how, whole=True)  # the derivation uncut
        if not background:
            return self._dicom_written(folder, _write_series(vol, folder, desc))
        if self.export_worker is not None:
            self._message("an export is still writing: wait for it", error=True)
            return []
        from napari.qt.threading import create_worker

        worker = create_worker(_write_series, vol, folder, desc, _start_thread=False)
        worker.returned.connect(self._on_exported)  # bound methods: dropped if the widget is deleted meanwhile
        worker.finished.connect(self._export_finished)
        self.export_worker, self._export_folder = worker, folder
        self.export_dicom_button.setEnabled(False)
        self.status.setText(f"writing {n_slices(vol.hu)} slices to {folder}...")
        worker.start()
        return []

    def _on_exported(self, out: list[Path] | str) -> None:
        """A background export's outcome, said in the status line."""
        self._dicom_written(self._export_folder, out)

    def _dicom_written(self, folder: str | Path, out: list[Path] | str) -> list[Path]:
        """Say what an export wrote (or why it wrote nothing); the files, or []."""
        if isinstance(out, str):
            self._message(f"DICOM export failed: {out}", error=True)
            return []
        self._message(f"wrote {len(out)} DICOM files to {folder}")
        return out

    def _export_finished(self) -> None:
        """The background export ended: the Export button is free again."""
        self.export_worker = None
        self._update_export_buttons()

    def export_boxes(self, path: str | Path) -> Path | None:
        """Write the shown boxes (score >= threshold) as CSV, or JSON when ``path`` ends in .json; never overwrites."""
        if self._last is None or self._last["result"].boxes is None:
            self._message("nothing to export: run the detector first", error=True)
            return None
        from ..io.boxes_io import patient_affine, slice_columns, write_boxes_csv
        from ..io.volume import per_slice
        from ..metrics.lesions import row_lesions

        src, rows = self._last["layer"], self.shown_boxes
        n = n_slices(src.data)
        slices = slice_columns(src.metadata, n)
        known = has_voxel_size(src)  # an assumed 1 mm gives no mm and no patient position (as lidnet detect)
        geometry = (patient_affine(src.metadata, src.metadata.get("affine_lps")) if known else None,  # the reader's
                    per_slice(src.metadata, "slice_ipp", n))  # fmt: skip
        den, det = self._last["labels"]
        about = {"input": src.metadata.get("source") or src.name, "layer": src.name, "detector": det,
                 "denoised_first_by": den or None, "remove_sd": self._last.get("remove_sd"),
                 "leave_sd": self._last.get("leave_sd"),
                 "threshold": round(float(self.threshold), 4),
                 "spacing_mm": [float(v) for v in src.scale] if known else None,
                 "series_uid": src.metadata.get("series_uid")}  # fmt: skip
        try:
            check_suffix(path, [".csv", ".json"], "lesion boxes")
            pixel_mm = src.scale[-2:] if known else None  # no "mm" columns holding pixels
            out = write_boxes_csv(path, rows, slices, row_lesions(rows), pixel_mm, *geometry, about)
        except (OSError, ValueError) as exc:
            self._message(f"box export failed: {exc}", error=True)
            return None
        reviewed = [ly.name for ly in reviewed_of(self.viewer.layers, src)]
        note = (f": the detector's, unreviewed (the review on {reviewed[0]!r} exports from the Lesion navigator)"
                if reviewed else "")  # so that boxes rejected there are not sent on unawares  # fmt: skip
        edits = self._last.get("edits")
        summary = edits.summary() if edits is not None else ""  # deleted and moved as on the layer; drawn: not the
        if summary:  # detector's
            note += f"; {summary} (drawn boxes: the Lesion navigator's review exports them)"
        self._message(f"wrote {len(rows)} boxes to {out}{note}")
        return out

    def _export_dicom_dialog(self) -> None:
        """A NIfTI file for a NIfTI source, else an empty folder for a DICOM series."""
        if self._last is not None and self._last["layer"].metadata.get("format") == "nifti":
            path = save_path(self, "Save the denoised volume", "NIfTI (*.nii.gz *.nii)")  # never replaced
            if path:
                self.export_nifti(path)
            return
        folder = QFileDialog.getExistingDirectory(self, "Empty folder for the denoised DICOM series")
        if folder:
            self.export_dicom(folder, background=True)

    def _export_boxes_dialog(self) -> None:
        path = save_path(self, "Save lesion boxes", "CSV (*.csv);;JSON (*.json)")  # never replaced
        if path:
            self.export_boxes(path)


def _write_series(vol: Any, folder: str | Path, description: tuple[str, str]) -> list[Path] | str:
    """The DICOM files written (``description``: the SeriesDescription and the whole DerivationDescription), or the
    one-line reason nothing was (run in a worker thread by the Export button)."""
    from ..io.checks import error_text
    from ..io.dicom_write import write_dicom_series

    try:
        return write_dicom_series(vol, folder, series_description=description[0], derivation=description[1])
    except (OSError, ValueError) as exc:
        return error_text(exc)
