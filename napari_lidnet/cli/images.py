"""The ``lidnet`` commands that run on images: ``denoise``, ``detect`` (one input, or every series of a folder:
``batch``) and ``evaluate``."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from napari_lidnet.io.json_text import strict_dumps

from .common import (
    add_all_series,
    apply_axes,
    axes_back,
    check_new_output,
    device_arg,
    load_model_arg,
    open_single,
    print_progress,
    score_arg,
    threshold_arg,
)


def _cmd_batch(args: argparse.Namespace, task: str, out: str) -> int:
    from tqdm import tqdm

    from napari_lidnet.batch import run_batch
    from napari_lidnet.models.registry import model_label

    if args.series is not None or args.axes is not None:  # it was ignored: every series was processed
        option = "--series picks one series of one input" if args.series is not None else "--axes orders one array"
        raise ValueError(f"{option}; --all-series takes every one: give one of them")
    if not out.endswith(("/", os.sep)) and _looks_like_a_file_type(Path(out)):  # a folder named x.csv held the CSVs
        raise ValueError(f"{out}: --all-series writes one file per series into a folder; give a folder name, not a "
                         f"file name ending in {Path(out).suffix} (a folder named so: end it with /)")  # fmt: skip

    model, dev, card = load_model_arg(args.model, "denoiser" if task == "denoise" else "detector", args.device)
    bar = tqdm(unit="series", file=sys.stderr, dynamic_ncols=True, disable=None)

    def progress(done: int, total: int, name: str) -> None:
        bar.total = total
        bar.set_postfix_str(name[-40:], refresh=False)
        bar.update(done - bar.n)

    threshold = threshold_arg(args, card) if task == "detect" else 0.0
    try:
        report = run_batch(
            args.input, out, task, model, dev, threshold, model_label(args.model or "default", card), progress,
            workers=args.workers,
            remove_sd=getattr(args, "remove_sd", None), leave_sd=getattr(args, "leave_sd", None),
        )  # fmt: skip
    finally:
        bar.close()
    done = f"{len(report.written)} written, {len(report.skipped)} already complete (skipped) in {out}"
    if report.left_out and not (report.written or report.skipped or report.failed):
        n = len(report.left_out)
        raise ValueError(f"nothing to {task} under {args.input}: {n} series left out (first: {report.left_out[0]})")
    if report.left_out:  # left out for good: a re-run would not change it; each named (so that one can
        n = len(report.left_out)  # tell which files a run has passed by)
        print(f"note: {n} series left out (first: {report.left_out[0]})", file=sys.stderr)
        for item in report.left_out[1:]:
            print(f"left out: {item}", file=sys.stderr)
    if report.not_read:
        more = f" (and {len(report.not_read) - 1} other folders)" if len(report.not_read) > 1 else ""
        print(f"note: {report.not_read[0]}{more}", file=sys.stderr)
    if report.notes:
        more = f" (and {len(report.notes) - 1} other outputs)" if len(report.notes) > 1 else ""
        print(f"note: {report.notes[0]}{more}", file=sys.stderr)
    for line in report.failed[:MAX_FAILED_LINES]:  # each series not processed, with its reason; the summary last
        print(f"failed: {line}", file=sys.stderr)
    if len(report.failed) > MAX_FAILED_LINES:
        print(f"failed: ... and {len(report.failed) - MAX_FAILED_LINES} more", file=sys.stderr)
    if report.failed:
        raise ValueError(failed_summary(report.failed, done))
    print(done, file=sys.stderr)
    return 0


#: failed series a batch run lists one per line before its summary
MAX_FAILED_LINES = 50


def failed_summary(failed: list[Any], done: str) -> str:
    """The one line of a batch run with series not processed: the first one, and what to do. A series whose
    content cannot be read (``batch.Failed.fix``: the file to fix or remove) fails a re-run the same way; an error
    of the file system (a file gone, no permission) may not."""
    lasting = [f for f in failed if getattr(f, "fix", None) is not None]
    first = lasting[0] if lasting else failed[0]
    head = f"{len(failed)} series not processed (first: {first}); {done}"
    if not lasting:
        return f"{head}; run again to retry"
    more = f" (and the files of {len(lasting) - 1} other series)" if len(lasting) > 1 else ""
    fix = f"fix or remove {lasting[0].fix}{more}"
    if len(lasting) == len(failed):
        return f"{head}; {fix}: a re-run fails the same way"
    return f"{head}; {fix}: a re-run fails the same way; run again to retry the other {len(failed) - len(lasting)}"


NOT_A_SERIES_FOLDER = {".gz", ".nrrd", ".mha", ".mhd", ".png", ".jpg", ".jpeg", ".dcm", ".csv", ".json"}


def _looks_like_a_file_type(out: Path) -> bool:
    """A new output whose ending reads as a file type (1-5 letters: ``out.xyz``, ``scan.nii.gzz``), not as part of a
    folder's name (``run.v2``, ``series.1.2``, ``out.dicom``): a typo wrote a DICOM folder named like a file."""
    suffix = out.suffix.lower()[1:]
    return not out.is_dir() and suffix.isalpha() and len(suffix) <= 5 and suffix != "dicom"


def _note_noise(hu: Any, denoised: Any, remove_sd: float | None, leave_sd: float | None) -> None:
    """The noise SD in flat tissue before and after, on stderr, as the Denoise dock reports it (to choose
    ``--remove-sd`` / ``--leave-sd`` from); a note when either option is at or above the noise measured before: all
    the noise was removed (as without the option), or none (the output is the input)."""
    import math

    from napari_lidnet.io.volume import n_slices
    from napari_lidnet.metrics.noreference import NO_NOISE_HU, flat_noise_sd

    measured, after = flat_noise_sd(hu, list(range(n_slices(hu))), denoised)
    if math.isfinite(measured) and measured < NO_NOISE_HU:  # as the Denoise dock says it
        print(f"no measurable noise in flat tissue (SD {measured:.1f} HU: lossy or processed?)", file=sys.stderr)
    elif math.isfinite(measured):
        print(f"noise SD in flat tissue {measured:.1f} -> {after:.1f} HU", file=sys.stderr)
    if remove_sd is None and leave_sd is None:
        return
    option, value = ("--remove-sd", remove_sd) if remove_sd is not None else ("--leave-sd", leave_sd)
    if math.isfinite(measured) and value >= measured:
        happened = "all the noise was removed" if remove_sd is not None else "nothing was removed (the input)"
        print(f"note: {option} {value:g} HU is at or above the noise measured in flat tissue ({measured:.1f} HU): "
              f"{happened}", file=sys.stderr)  # fmt: skip


def _note_new_study(metadata: dict[str, Any], source: str) -> None:
    """A note on stderr when a DICOM series is written from an input without DICOM patient data: it starts a new
    study with an empty patient, and an input without patient geometry is placed as an axial stack."""
    if metadata.get("source_tags"):
        return
    where = "; its slices are placed as an axial stack (the input has no patient orientation)"
    print(f"note: {source} carries no DICOM patient or study: the series starts a new study with an empty patient"
          f"{where if metadata.get('orientation_unknown') else ''}", file=sys.stderr)  # fmt: skip


def _cmd_denoise(args: argparse.Namespace) -> int:
    if args.all_series:
        return _cmd_batch(args, "denoise", args.output)  # run_batch checks the strength before writing anything

    from napari_lidnet.strength import check_strength

    args.remove_sd, args.leave_sd = check_strength(args.remove_sd, args.leave_sd)  # before the input is read

    from napari_lidnet.io.arrays import ARRAY_SUFFIXES
    from napari_lidnet.io.nifti import is_nifti

    out = Path(args.output)
    as_file = out.suffix.lower() in ARRAY_SUFFIXES or is_nifti(out)
    folder_asked = args.output.endswith(("/", os.sep))  # "followup.final/": a DICOM folder of that name
    file_like = out.suffix.lower() in NOT_A_SERIES_FOLDER or _looks_like_a_file_type(out)
    if not as_file and not folder_asked and file_like:
        raise ValueError(f"{out}: cannot write {out.suffix} files; give .nii.gz, .npz, .tif, .npy or a folder (DICOM; "
                         f"a folder name ending in {out.suffix}: end it with /)")  # fmt: skip
    check_new_output(out, args.input, folder=not as_file)
    vol = apply_axes(open_single(args.input, args.series), args.axes, args.input)
    if vol.metadata.get("written_here"):  # --all-series leaves such a series out; one named is the user's choice
        print(f"note: {args.input} was denoised by napari-lidnet already; denoising it again removes detail as well "
              "as what noise is left", file=sys.stderr)  # fmt: skip
    if as_file and out.suffix.lower() != ".npy":  # before the model runs (.npy keeps no geometry to get wrong)
        from napari_lidnet.io.volume import check_uniform_grid

        check_uniform_grid(vol, "NIfTI" if is_nifti(out) else out.suffix.lower())
    model, dev, card = load_model_arg(args.model, "denoiser", args.device)
    if as_file and not is_nifti(out):
        from napari_lidnet.inference import denoise
        from napari_lidnet.io.arrays import write_array

        hu = denoise(model, vol.hu, device=dev, progress=print_progress, remove_sd=args.remove_sd,
                     leave_sd=args.leave_sd)  # fmt: skip
        known = not vol.metadata.get("orientation_unknown")  # an array's or a PNG's made-up geometry stays out
        assumed = bool(vol.metadata.get("spacing_assumed"))  # an assumed 1 mm stays assumed (slice spacing kept)
        geometry = (vol.origin, vol.direction) if known else (None, None)
        write_array(out, *axes_back(hu, vol.spacing, args.axes), *geometry, assumed)  # in the input's axis order
        _note_noise(vol.hu, hu, args.remove_sd, args.leave_sd)  # once written: a failed write says only why
        if out.suffix.lower() == ".npy" and not assumed:
            size = " x ".join(f"{v:g}" for v in vol.spacing)
            print(f"note: .npy keeps no voxel size ({size} mm); .npz, .tif and DICOM keep it", file=sys.stderr)
    else:
        from napari_lidnet.batch import denoise_into
        from napari_lidnet.models.registry import model_label

        hu = denoise_into(out, vol, model, dev, model_label(args.model or "default", card), args.remove_sd,
                          print_progress, leave_sd=args.leave_sd)  # fmt: skip
        _note_noise(vol.hu, hu, args.remove_sd, args.leave_sd)
        if not as_file:
            _note_new_study(vol.metadata, args.input)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _cmd_detect(args: argparse.Namespace) -> int:
    from napari_lidnet.batch import box_cap_note, detect_into

    if args.denoiser is not None and not args.denoise_first:
        raise ValueError("--denoiser names the denoiser of --denoise-first: add --denoise-first")
    if args.all_series:
        if args.denoise_first:
            raise ValueError("--denoise-first takes one input: with --all-series run `lidnet denoise --all-series` "
                             "first, then detect on its output folder")  # fmt: skip
        return _cmd_batch(args, "detect", args.out)
    out = Path(args.out)
    check_new_output(out, args.input)
    if out.suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"{out}: boxes are written as .csv or .json; give a file name with one of those endings")
    vol = apply_axes(open_single(args.input, args.series), args.axes, args.input)
    model, dev, card = load_model_arg(args.model, "detector", args.device)
    threshold = threshold_arg(args, card)
    about = {"input": str(args.input), "model": args.model or "default", "threshold": threshold}
    if args.denoise_first:
        vol = _denoised(vol, args.denoiser or "default", str(dev))  # the detector's device: said once
        about["denoised_with"] = args.denoiser or "default"
        print("detecting lesions on the denoised images", file=sys.stderr)  # the second count of slices
    rows, lesions = detect_into(out, vol, model, dev, threshold, about, print_progress)
    note = box_cap_note(rows)
    if note:
        print(f"note: {note}", file=sys.stderr)
    found = f"{len(rows)} boxes ({lesions.max(initial=0)} lesions)"
    print(f"wrote {found} with score >= {threshold:.3f} to {out}", file=sys.stderr)
    return 0


def _denoised(vol: Any, name: str, device: str) -> Any:
    """``vol`` with its images denoised by the denoiser ``name`` (all the noise, as the Denoise dock's default)."""
    from napari_lidnet.inference import denoise

    model, dev, _ = load_model_arg(name, "denoiser", device)
    print(f"denoising with {name} first", file=sys.stderr)
    return dataclasses.replace(vol, hu=denoise(model, vol.hu, device=dev, progress=print_progress))


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from napari_lidnet._training.report import evaluate_dataset, format_table

    if args.max_slices is not None and args.max_slices < 1:
        raise ValueError(f"--max-slices must be at least 1, not {args.max_slices}")
    if args.json:
        check_new_output(Path(args.json), args.data)
    result = evaluate_dataset(args.data, args.model, args.detector, args.device, max_slices=args.max_slices)
    print(format_table(result))
    if args.json:
        with open(args.json, "x") as fh:  # exclusive: never replaces a file
            fh.write(strict_dumps(result, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _add_input(p: Any, kind: str) -> None:
    """The input, model, series and device options of a command that runs a ``kind`` on one input."""
    p.add_argument("input", help="CT to read: a DICOM file or series folder (a DICOMDIR too), a NIfTI file, a "
                   "DeepLesion key slice, or an array file (.npy, .npz, .tif)")  # fmt: skip
    p.add_argument("--model", default=None, help=f"{kind} name or weights path (default: shipped)")
    p.add_argument("--series", default=None, metavar="UID", help="the DICOM series to read (default: the largest)")
    p.add_argument("--device", default="auto", type=device_arg)
    p.add_argument("--axes", choices=["zyx", "yxz"], default=None,
                   help="axis order of a 3D array file (.npy, .npz, .tif): zyx, slices first, or yxz, slices last (as "
                   "nibabel and MATLAB give them; a denoised array is written back so); an array that looks like "
                   "yxz (last axis a quarter of the others or less) is refused until this says")  # fmt: skip


def add_denoise(sub: Any) -> None:
    """The ``denoise`` subcommand."""
    p = sub.add_parser("denoise", help="denoise a CT (any format the reader takes)")
    _add_input(p, "denoiser")
    p.add_argument("output", help=".nii.gz/.nii (geometry kept), .npz/.tif/.npy file, or a new folder (DICOM series)")
    p.add_argument(
        "--remove-sd",
        type=float,
        default=None,
        metavar="HU",
        help="remove only this noise SD and keep the rest (e.g. what a dose reduction added; a Wiener blend, the "
        "least-squares estimate of the scan without that noise); default: all",
    )
    p.add_argument("--leave-sd", type=float, default=None, metavar="HU",
                   help="leave this noise SD in the output's flattest soft tissue (a fully denoised image can look too "
                   "smooth to read; normal-dose scans show about 10 HU); not with --remove-sd")  # fmt: skip
    add_all_series(p, "one series folder (.nii.gz) each in OUTPUT; resumes")
    p.set_defaults(func=_cmd_denoise)


def add_detect(sub: Any) -> None:
    """The ``detect`` subcommand."""
    p = sub.add_parser("detect", help="detect lesions on the images as given (or denoised first, as the Denoise dock "
                       "does: --denoise-first); writes a CSV of boxes")  # fmt: skip
    _add_input(p, "detector")
    p.add_argument("--denoise-first", action="store_true",
                   help="denoise the images first (--denoiser) and detect on the denoised images, as the Denoise dock "
                   "does; one input, not --all-series")  # fmt: skip
    p.add_argument("--denoiser", default=None, help="with --denoise-first: denoiser name or weights path (default: "
                   "shipped)")  # fmt: skip
    p.add_argument("--out", required=True, help="CSV (or .json) file for the boxes: slice and x1..y2 in pixels of the "
                   "image as read (a NIfTI file turned to z up, y back, x left: not its voxel order), lps_*_mm in the "
                   "patient")  # fmt: skip
    p.add_argument(
        "--threshold", type=score_arg, default=None,
        help="lowest score kept, in [0, 1] (default: the detector card's calibrated threshold, as in the widget)",
    )  # fmt: skip
    add_all_series(p, "one CSV each in the --out folder; resumes, skips finished")
    p.set_defaults(func=_cmd_detect)


def add_evaluate(sub: Any) -> None:
    """The ``evaluate`` subcommand."""
    p = sub.add_parser("evaluate", help="PSNR, SSIM and FROC of low dose, denoised and full dose on a dataset")
    p.add_argument("data", help="a dataset folder as `lidnet simulate` writes it (each slice's full-dose and "
                   "low-dose images with their boxes: see the README's 'The command line'), or a manifest "
                   "(`lidnet index ... --dose D`: DeepLesion's official test part, say; low doses simulated at D); a "
                   "DICOM folder is not one")
    p.add_argument("--denoiser", "--model", dest="model", default=None,
                   help="denoiser name or weights path (default: shipped); --model is the same option")  # fmt: skip
    p.add_argument("--detector", default=None, help="detector name or weights path (default: shipped)")
    p.add_argument("--max-slices", type=int, default=None, help="evaluate the first N slices only (default: all)")
    p.add_argument("--json", default=None, help="also write the result as JSON")
    p.add_argument("--device", default="auto", type=device_arg)
    p.set_defaults(func=_cmd_evaluate)
