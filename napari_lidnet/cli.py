"""The ``lidnet`` command line: everything the viewer does, headless, for batch work and tests.

Subcommands import their science lazily, so ``lidnet --help`` is fast. A user error (bad file, bad option, an output
that exists, a folder that cannot be written) prints one line ``lidnet CMD: error: ...`` on stderr and exits with
status 2; nothing is written. Warnings print as one line ``lidnet CMD: warning: ...`` each.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from napari_lidnet.io.atomic import check_writable


def _cmd_simulate(args: argparse.Namespace) -> int:
    from napari_lidnet.sim.make_dataset import simulate_dataset

    check_writable(Path(args.out))

    def progress(i: int, n: int) -> None:
        print(f"\rsimulated {i}/{n} slices", end="", file=sys.stderr, flush=True)

    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    out = simulate_dataset(
        args.out, n=args.n, dose=args.dose, seed=args.seed, kind=args.kind, size=args.size, progress=progress,
        domain=args.domain, negatives=args.negatives, kinds=kinds, lesions=args.lesions, target=args.target,
    )  # fmt: skip
    dose = f"at dose {args.dose:g}" if args.domain == "fixed" else "with randomised scanners (scanner.csv)"
    profile = "" if args.lesions == "standard" else f", {args.lesions} lesions (lesion_info.csv)"
    print(f"\nwrote {args.n} slice pairs {dose}{profile} to {out}", file=sys.stderr)
    return 0


def _cmd_index(args: argparse.Namespace) -> int:
    from napari_lidnet.datasets.manifest import index_archive, read_header

    check_new_output(Path(args.out), args.archive)
    out = index_archive(
        args.archive, args.out, dose=args.dose, seed=args.seed, command=args.command_line, split=args.split
    )
    header = read_header(out)
    print(
        f"indexed {header['n']} slices ({header['kind']} archive, {header['n_without_low']} without a low-dose "
        f"image, {header['n_skipped']} skipped) into {out}",
        file=sys.stderr,
    )
    for line in header["skipped"][:10]:
        print(f"  skipped: {line}", file=sys.stderr)
    return 0


def check_new_output(out: Path, input_path: str | None = None, folder: bool = False) -> None:
    """Refuse, before any work, an output that exists (a ``folder`` output may be an empty folder), one inside the
    input folder, or one whose folder is missing or cannot be written."""
    if out.exists() and not (folder and out.is_dir() and not any(out.iterdir())):
        raise FileExistsError(f"{out} already exists; outputs never overwrite: choose a new path")
    if input_path is not None and Path(input_path).is_dir():
        if out.resolve().is_relative_to(Path(input_path).resolve()):
            raise ValueError(f"{out} lies inside the input folder {input_path}; choose an output outside it")
    parent = out.resolve().parent
    if not folder and not parent.is_dir():
        raise FileNotFoundError(f"{parent}: folder does not exist (create it first)")
    check_writable(out)


def _check_ct(vol: Any, path: str) -> None:
    """Refuse a volume that is not CT the models process (``io.checks.ct_problem``)."""
    from napari_lidnet.io.checks import ct_problem

    problem = ct_problem(vol.hu, str(vol.metadata.get("modality", "") or ""), path)
    if problem:
        raise ValueError(problem)


def _open_checked(path: str, series_uid: str | None = None, every: bool = False) -> list:
    """The CT volumes at ``path`` (series ``series_uid``), the first checked by ``_check_ct``; with ``every``, all
    of them, those that are not CT left out with a note (refused when none is). The reader's warnings are shown
    only when the input is usable."""
    from napari_lidnet.io.open_ct import open_ct

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        volumes = open_ct(path, series_uid)
    kept, refused = [], []
    for vol in volumes if every else volumes[:1]:
        try:
            _check_ct(vol, path)
            kept.append(vol)
        except ValueError as exc:
            refused.append((vol.name, exc))
    if not kept:
        raise refused[0][1]
    for w in caught:
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    for name, exc in refused:
        warnings.warn(f"left out {name}: {exc}", UserWarning, stacklevel=2)
    return kept if every else volumes


def _open_single(path: str, series_uid: str | None = None):
    """The first (largest) CT volume at ``path``, or series ``series_uid``, checked by ``_check_ct``."""
    volumes = _open_checked(path, series_uid)
    if len(volumes) > 1:
        keys = [v.metadata.get("series_key") or v.metadata.get("series_uid", "") for v in volumes]
        names = ", ".join(f"{v.name} ({key})" for v, key in zip(volumes, keys))
        print(f"{path} holds {len(volumes)} series: {names}; using the first (--series UID picks one)", file=sys.stderr)
    return volumes[0]


def _print_progress(done: int, total: int) -> None:
    """``done/total slices`` on one rewritten line on a terminal; in a log, a line per tenth of the work."""
    if sys.stderr.isatty():
        print(f"\r{done}/{total} slices", end="" if done < total else "\n", file=sys.stderr, flush=True)
    elif done == total or _new_tenth(done, total):
        print(f"{done}/{total} slices", file=sys.stderr, flush=True)


def _new_tenth(done: int, total: int) -> bool:
    """Whether ``done`` of ``total`` starts a new tenth of the work (a log line per tenth)."""
    return (10 * done) // max(total, 1) > (10 * (done - 1)) // max(total, 1)


def _cmd_train(args: argparse.Namespace) -> int:
    from napari_lidnet._training.config import TrainConfig
    from napari_lidnet._training.export import check_export_name

    if args.export:
        check_export_name(args.export)  # before training: a taken name would only fail at the end
    _check_run_folder(Path(args.out), args.data)

    names = {f.name for f in dataclasses.fields(TrainConfig)}  # every train option but --denoiser-width, --export
    cfg = TrainConfig(**{k: v for k, v in vars(args).items() if k in names})
    if args.denoiser_width is not None:
        if not 4 <= args.denoiser_width <= 256:
            raise ValueError(f"--denoiser-width must be 4-256 channels, not {args.denoiser_width}")
        cfg.denoiser_kwargs["width"] = args.denoiser_width
    from napari_lidnet._training import distributed

    rank, world = distributed.init_from_env(args.device)  # under torchrun: a process per GPU/CPU worker
    try:
        return _train_and_export(cfg, rank, world, args.export, args.command_line)
    finally:
        distributed.shutdown()


def _check_run_folder(out: Path, data: str | None) -> None:
    """Refuse, before any work, a run folder inside the training data (an archive folder, or a manifest's root),
    or an existing folder of other files that holds no run."""
    from napari_lidnet._training.trainer import LOCK_FILE, MANIFEST_FILE, STATE_FILE
    from napari_lidnet.datasets.manifest import is_manifest, read_header

    source = Path(data).expanduser() if data else None
    root = source if source is not None and source.is_dir() else None
    if source is not None and source.is_file() and is_manifest(source):
        root = Path(read_header(source)["root"])
    if root is not None and out.resolve().is_relative_to(root.resolve()):
        raise ValueError(f"{out} lies inside the training data {root}; choose a run folder outside it")
    run_files = {STATE_FILE, LOCK_FILE, MANIFEST_FILE, MANIFEST_FILE + ".lowdose"}
    if out.is_dir() and not (out / STATE_FILE).exists() and any(p.name not in run_files for p in out.iterdir()):
        raise FileExistsError(f"{out} holds other files and no training run; choose a new or empty --out folder")


def _train_and_export(cfg, rank: int, world: int, export: str | None, command: str) -> int:
    """Run the trainer (rank 0 reports), then export the best checkpoint under a model name if asked. Ctrl-C and
    SIGTERM (a batch scheduler's stop) end it after the step under way, with a checkpoint there (a second Ctrl-C at
    once), saying what is kept. Under torchrun (which passes its signal on to every process) the ranks agree on the
    step to stop at; a second signal changes nothing there (a scheduler may signal the launcher and each process),
    and torchrun kills the processes 30 s after its signal, so the checkpoint every ``--checkpoint-every`` steps
    remains what a killed job resumes."""
    import threading

    from napari_lidnet._training.report import format_record
    from napari_lidnet._training.trainer import Trainer, TrainingError

    stop, stopped = threading.Event(), False
    trainer = Trainer(cfg, should_stop=stop.is_set, command=command)
    if rank == 0:
        n_val, n_test = len(trainer.val_samples), len(trainer.test_samples)
        print(f"slices: {len(trainer.train_samples)} train, {n_val} validation (at most {cfg.val_max_slices}), "
              f"{n_test} test (at most {cfg.test_max_slices})", file=sys.stderr, flush=True)  # fmt: skip
    with _ctrl_c_stops(stop, escalate=world == 1):
        try:
            for rec in trainer.run():
                stopped = stopped or rec.get("stage") == "stopped"
                line = format_record(rec) if rank == 0 else None
                if line:
                    print(line, file=sys.stderr, flush=True)
        except KeyboardInterrupt:  # a second Ctrl-C: at once
            print(f"\ninterrupted: {trainer.kept_message()}", file=sys.stderr)
            return 130
        except TrainingError as exc:
            print(f"lidnet train: error: {exc}", file=sys.stderr)
            return 1
    if stopped:
        return 130
    if export and rank == 0:
        from napari_lidnet._training.export import export_run
        from napari_lidnet.models.weights import read_card

        written = export_run(trainer.out, export, command=command)
        for path in written:
            print(f"exported {path}", file=sys.stderr)
        detector = next(p for p in written if p.stem.endswith("_detector"))
        print(_threshold_note(export, read_card(detector)), file=sys.stderr)
    return 0


def _command_line(argv: Sequence[str]) -> str:
    """An invocation as a shell command (``lidnet ...``), for the cards."""
    import shlex

    return " ".join(["lidnet", *(shlex.quote(str(a)) for a in argv)])


def _threshold_note(name: str, card: dict[str, Any]) -> str:
    """Where the score threshold of the exported detector ``name`` (its ``card``) comes from, and how to set one
    for the user's own scans."""
    from napari_lidnet.models.weights import FALLBACK_THRESHOLD

    cal = card.get("calibration") or {}
    how = f"set one for your scans: lidnet calibrate SCANS --from {name} --name {name}-site"
    if cal.get("inherited_from"):
        return (f"note: {name}_detector keeps the score threshold {cal['threshold']:.3f} calibrated for the weights it "
                f"started from ({cal['inherited_from']}); {how}")  # fmt: skip
    if not cal:
        return f"note: {name}_detector has no calibrated score threshold ({FALLBACK_THRESHOLD} is used); {how}"
    return f"{name}_detector: score threshold {cal['threshold']:.3f}"


def _load(name: str | None, kind: str, device: str):
    from napari_lidnet.metrics.noreference import worse_than_start
    from napari_lidnet.models.device import pick_device
    from napari_lidnet.models.registry import load_model

    dev, notice = pick_device(device)
    if notice:
        print(notice, file=sys.stderr)
    model, card = load_model(name or "default", kind=kind)
    if worse_than_start((card.get("metrics") or {}).get("noreference") or {}):
        print(f"warning: {name}: its own no-reference check found it worse than the model it was adapted from "
              f"({card.get('training', {}).get('selfsup', {}).get('from_model', 'its start')})", file=sys.stderr)
    return model.to(dev), dev, card


def _threshold(args: argparse.Namespace, card: dict[str, Any]) -> float:
    """``--threshold`` if given, else the detector card's calibrated one (the Denoise widget's default)."""
    from napari_lidnet.models.weights import default_threshold

    return default_threshold(card) if args.threshold is None else args.threshold


def _score(text: str) -> float:
    """argparse type: a detection score threshold in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a score threshold is a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a score threshold lies in [0, 1], got {text}")
    return value


def _int_in(lo: int, hi: int) -> Any:
    """argparse type: an integer in [lo, hi] (argparse names the option in its one-line error)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"an integer in [{lo}, {hi}] is expected, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be in [{lo}, {hi}], got {value}")
        return value

    parse.__name__ = "integer"
    return parse


SEED = _int_in(0, 2**32 - 1)


def _device(text: str) -> str:
    """argparse type: a device this machine has (``auto`` picks the best one; a device asked for by name that is
    not here is refused rather than run on the CPU unasked)."""
    if text.lower() == "auto":
        return text
    from napari_lidnet.models.device import pick_device

    try:
        notice = pick_device(text)[1]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if notice:
        raise argparse.ArgumentTypeError(f"{text!r} is not available on this machine; use cpu or auto")
    return text


def _cmd_batch(args: argparse.Namespace, task: str, out: str) -> int:
    from tqdm import tqdm

    from napari_lidnet.batch import run_batch

    model, dev, card = _load(args.model, "denoiser" if task == "denoise" else "detector", args.device)
    bar = tqdm(unit="series", file=sys.stderr, dynamic_ncols=True, disable=None)

    def progress(done: int, total: int, name: str) -> None:
        bar.total = total
        bar.set_postfix_str(name[-40:], refresh=False)
        bar.update(done - bar.n)

    threshold = _threshold(args, card) if task == "detect" else 0.0
    try:
        report = run_batch(
            args.input, out, task, model, dev, threshold, args.model or "default", progress, workers=args.workers,
            remove_sd=getattr(args, "remove_sd", None),
        )  # fmt: skip
    finally:
        bar.close()
    done = f"{len(report.written)} written, {len(report.skipped)} already complete (skipped) in {out}"
    if report.left_out and not (report.written or report.skipped or report.failed):
        n = len(report.left_out)
        raise ValueError(f"nothing to {task} under {args.input}: {n} series left out (first: {report.left_out[0]})")
    if report.left_out:  # left out for good: a re-run would not change it
        n = len(report.left_out)
        print(f"note: {n} series left out (first: {report.left_out[0]})", file=sys.stderr)
    if report.notes:
        more = f" (and {len(report.notes) - 1} other outputs)" if len(report.notes) > 1 else ""
        print(f"note: {report.notes[0]}{more}", file=sys.stderr)
    for line in report.failed[:MAX_FAILED_LINES]:  # each series not processed, with its reason; the summary last
        print(f"failed: {line}", file=sys.stderr)
    if len(report.failed) > MAX_FAILED_LINES:
        print(f"failed: ... and {len(report.failed) - MAX_FAILED_LINES} more", file=sys.stderr)
    if report.failed:
        raise ValueError(_failed_summary(report.failed, done))
    print(done, file=sys.stderr)
    return 0


#: failed series a batch run lists one per line before its summary
MAX_FAILED_LINES = 50


def _failed_summary(failed: list[Any], done: str) -> str:
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


def _note_remove_sd(hu: Any, remove_sd: float | None) -> None:
    """A note on stderr when ``--remove-sd`` is at or above the noise measured in the scan's flat tissue: the
    weight of what is kept is then 0, i.e. all the noise was removed (as without the option)."""
    if remove_sd is None:
        return
    import math

    from napari_lidnet.metrics.noreference import noise_sd

    measured = noise_sd(hu)
    if math.isfinite(measured) and remove_sd >= measured:
        print(f"note: --remove-sd {remove_sd:g} HU is at or above the noise measured in flat tissue "
              f"({measured:.1f} HU): all the noise was removed", file=sys.stderr)  # fmt: skip


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
        return _cmd_batch(args, "denoise", args.output)  # run_batch checks --remove-sd before writing anything

    from napari_lidnet.strength import check_remove_sd

    check_remove_sd(args.remove_sd)  # before the input is read and the model loaded

    from napari_lidnet.io.arrays import ARRAY_SUFFIXES
    from napari_lidnet.io.nifti import is_nifti

    out = Path(args.output)
    as_file = out.suffix.lower() in ARRAY_SUFFIXES or is_nifti(out)
    if not as_file and out.suffix.lower() in NOT_A_SERIES_FOLDER:
        raise ValueError(f"{out}: cannot write {out.suffix} files; give .nii.gz, .npz, .tif, .npy or a folder (DICOM)")
    check_new_output(out, args.input, folder=not as_file)
    vol = _open_single(args.input, args.series)
    if as_file and out.suffix.lower() != ".npy":  # before the model runs (.npy keeps no geometry to get wrong)
        from napari_lidnet.io.volume import check_uniform_grid

        check_uniform_grid(vol, "NIfTI" if is_nifti(out) else out.suffix.lower())
    model, dev, _ = _load(args.model, "denoiser", args.device)
    if as_file and not is_nifti(out):
        from napari_lidnet.inference import denoise
        from napari_lidnet.io.arrays import write_array

        hu = denoise(model, vol.hu, device=dev, progress=_print_progress, remove_sd=args.remove_sd)
        _note_remove_sd(vol.hu, args.remove_sd)
        write_array(out, hu, vol.spacing)
        if out.suffix.lower() == ".npy":
            spacing = " x ".join(f"{v:g}" for v in vol.spacing)
            print(f"note: .npy keeps no voxel size ({spacing} mm); .npz, .tif and DICOM keep it", file=sys.stderr)
    else:
        from napari_lidnet.batch import denoise_into

        denoise_into(out, vol, model, dev, args.model or "default", args.remove_sd, _print_progress)
        _note_remove_sd(vol.hu, args.remove_sd)
        if not as_file:
            _note_new_study(vol.metadata, args.input)
    print(f"wrote {out}", file=sys.stderr)
    return 0


def _cmd_detect(args: argparse.Namespace) -> int:
    from napari_lidnet.batch import box_cap_note, detect_into

    if args.all_series:
        return _cmd_batch(args, "detect", args.out)
    out = Path(args.out)
    check_new_output(out, args.input)
    if out.suffix.lower() not in (".csv", ".json"):
        raise ValueError(f"{out}: boxes are written as .csv or .json; give a file name with one of those endings")
    vol = _open_single(args.input, args.series)
    model, dev, card = _load(args.model, "detector", args.device)
    threshold = _threshold(args, card)
    about = {"input": str(args.input), "model": args.model or "default", "threshold": threshold}
    rows, lesions = detect_into(out, vol, model, dev, threshold, about, _print_progress)
    note = box_cap_note(rows)
    if note:
        print(f"note: {note}", file=sys.stderr)
    found = f"{len(rows)} boxes ({lesions.max(initial=0)} lesions)"
    print(f"wrote {found} with score >= {threshold:.3f} to {out}", file=sys.stderr)
    return 0


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
            fh.write(json.dumps(result, indent=2))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0


def _add_simulate(sub: Any) -> None:
    """The ``simulate`` subcommand."""
    p = sub.add_parser("simulate", help="write a simulated low-dose/full-dose dataset with lesion boxes")
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    p.add_argument("--n", type=int, default=16, help="number of slices")
    p.add_argument("--dose", type=float, default=0.25, help="dose fraction in (0, 1]")
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--kind", choices=["abdomen", "chest", "head"], default="abdomen")
    p.add_argument("--size", type=int, default=512, help="image size in pixels")
    p.add_argument(
        "--domain",
        choices=["fixed", "random"],
        default="fixed",
        help="random: each slice draws body part, field of view, contrast and scanner "
        "(dose 5-50%%, 500-1200 views, kernel, electronic noise, thickness); --dose and --kind are then unused",
    )
    p.add_argument("--negatives", type=float, default=0.0, help="fraction of lesion-free slices, in [0, 1)")
    p.add_argument("--kinds", default="head,chest,abdomen", help="body parts mixed with --domain random")
    p.add_argument(
        "--lesions",
        choices=["standard", "hard"],
        default="standard",
        help="lesion profile: standard (15-120 HU) or hard (noise-limited: FDA LCD-CT inserts, 5-15 mm metastases "
        "at 20-50 HU, faint ground-glass nodules)",
    )
    p.add_argument(
        "--target",
        choices=["noisy", "clean"],
        default="noisy",
        help="full-dose image: noisy (a normal-dose scan with its own noise) or clean (the noiseless reconstruction, "
        "same views and kernel: a target for removing all the noise)",
    )
    p.set_defaults(func=_cmd_simulate)


def _add_index(sub: Any) -> None:
    """The ``index`` subcommand."""
    p = sub.add_parser("index", help="index an archive (dataset folders, DeepLesion, DICOM) into a slice manifest")
    p.add_argument("archive", help="folder of lidnet datasets, a DeepLesion tree (DL_info.csv), or DICOM series")
    p.add_argument("--out", required=True, help="manifest file to write (JSON Lines), outside the archive")
    p.add_argument("--dose", type=float, default=None, help="simulate missing low-dose images at this dose fraction")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the simulated low-dose noise")
    _add_split(p)
    p.set_defaults(func=_cmd_index)


def _add_split(p: Any) -> None:
    """The ``--split`` option of ``index`` and ``train``."""
    p.add_argument(
        "--split",
        choices=["train", "val", "test", "all"],
        default="train",
        help="the official part of an archive that has one (DeepLesion's Train_Val_Test column); others: all",
    )


def _add_all_series(p: Any, each: str) -> None:
    """The ``--all-series`` and ``--workers`` options of ``denoise`` and ``detect`` (``each``: what is written)."""
    p.add_argument("--all-series", action="store_true", help=f"every DICOM series and NIfTI file under INPUT, {each}")
    p.add_argument("--workers", type=int, default=2, help="with --all-series: processes reading series ahead")


def _add_train(sub: Any) -> None:
    """The ``train`` subcommand."""
    p = sub.add_parser("train", help="train a denoiser (pixel baseline) or denoiser + detector with LIDnet")
    p.add_argument(
        "--data",
        required=True,
        help="manifest (`lidnet index`), or a folder to index once: lidnet datasets, DeepLesion or DICOM series",
    )
    p.add_argument("--dose", type=float, default=None, help="simulate missing low-dose images at this dose fraction")
    p.add_argument("--workers", type=int, default=2, help="DataLoader processes reading slices (0: in the trainer)")
    p.add_argument("--checkpoint-every", type=int, default=200, metavar="N",
                   help="steps between checkpoints inside a stage, kept on a stop or crash (0: between stages only)")
    p.add_argument(
        "--insert-lesions",
        type=float,
        default=0.0,
        metavar="P",
        help="share of training patches that receive 1-3 synthetic lesions (3-25 mm, 10-80 HU, in soft tissue)",
    )
    p.add_argument(
        "--insert-lung",
        type=float,
        default=0.0,
        metavar="P",
        help="chance that an inserted lesion is a lung nodule (4-40 mm, solid or subsolid) where a patch has lung",
    )
    p.add_argument(
        "--insert-max-mm",
        type=float,
        default=0.0,
        metavar="MM",
        help="largest diameter of inserted lesions and nodules, for masses (default 0: 25 mm, 40 mm in lung)",
    )
    _add_split(p)
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.0,
        help="slices held out (contiguous blocks) and only measured, never used to choose the best checkpoint; at "
        "most --test-max-slices of them",
    )
    p.add_argument("--val-max-slices", type=_int_in(1, 100000), default=8, metavar="N",
                   help="most validation slices (default 8: the validation part is 20%% of the slices up to this)")
    p.add_argument("--test-max-slices", type=_int_in(1, 100000), default=8, metavar="N",
                   help="most test slices (default 8)")  # fmt: skip
    p.add_argument("--out", required=True, help="run folder: checkpoints and state (resumes if it exists)")
    _add_train_schedule(p)
    p.set_defaults(func=_cmd_train)


def _add_train_schedule(p: Any) -> None:
    """The ``train`` options for models, schedule and losses."""
    p.add_argument("--mode", choices=["pixel", "lidnet", "lidnet-noroi", "lidnet-wholeperc"], default="lidnet")
    p.add_argument("--denoiser", default="fastdn", help="architecture: unet, fastdn, redcnn, dncnn")
    p.add_argument("--denoiser-width", type=int, default=None)
    p.add_argument("--init-denoiser", default=None, help="start from these weights (name or path)")
    p.add_argument("--init-detector", default=None, help="start from these weights (name or path)")
    p.add_argument("--pretrain-denoiser-steps", type=int, default=300)
    p.add_argument("--pretrain-detector-steps", type=int, default=600)
    p.add_argument("--pretrain-from-init", action="store_true",
                   help="run the pretraining steps also from --init-* weights (continue training)")  # fmt: skip
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--denoiser-steps", type=int, default=100)
    p.add_argument("--detector-steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--patch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="denoiser learning rate")
    p.add_argument("--detector-lr", type=float, default=1e-3)
    p.add_argument("--pixel-loss", choices=["mse", "l1", "tissue"], default="mse",
                   help="tissue: MSE with the soft-tissue window's pixels (-160..240 HU) weighted 4 x")  # fmt: skip
    p.add_argument("--det-weight", type=float, default=0.1, help="detection term, as a fraction of the pixel loss")
    p.add_argument("--roi-weight", type=float, default=0.3, help="ROI perceptual term, fraction of the pixel loss")
    p.add_argument(
        "--roi-boxes",
        choices=["gt", "predicted", "both"],
        default="gt",
        help="regions of the ROI perceptual loss: ground-truth boxes, detector boxes, or both",
    )
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--device", default="auto", type=_device)
    p.add_argument("--export", default=None, help="save the best checkpoint as a named model in the model folder")


def _add_denoise(sub: Any) -> None:
    """The ``denoise`` subcommand."""
    p = sub.add_parser("denoise", help="denoise a CT (any format the reader takes)")
    p.add_argument("input", help="CT to read: a DICOM file or series folder (a DICOMDIR too), a NIfTI file, a "
                   "DeepLesion key slice, or an array file (.npy, .npz, .tif)")
    p.add_argument("output", help=".nii.gz/.nii (geometry kept), .npz/.tif/.npy file, or a new folder (DICOM series)")
    p.add_argument("--model", default=None, help="denoiser name or weights path (default: shipped)")
    p.add_argument("--series", default=None, metavar="UID", help="the DICOM series to read (default: the largest)")
    p.add_argument("--device", default="auto", type=_device)
    p.add_argument(
        "--remove-sd",
        type=float,
        default=None,
        metavar="HU",
        help="remove only this noise SD and keep the rest (e.g. what a dose reduction added; a Wiener blend, the "
        "least-squares estimate of the scan without that noise); default: all",
    )
    _add_all_series(p, "one series folder (.nii.gz) each in OUTPUT; resumes")
    p.set_defaults(func=_cmd_denoise)


def _add_detect(sub: Any) -> None:
    """The ``detect`` subcommand."""
    p = sub.add_parser("detect", help="detect lesions on the images as given (no denoising); writes a CSV of boxes")
    p.add_argument("input", help="CT to read: a DICOM file or series folder (a DICOMDIR too), a NIfTI file, a "
                   "DeepLesion key slice, or an array file (.npy, .npz, .tif)")
    p.add_argument("--out", required=True, help="CSV (or .json) file for the boxes: slice and x1..y2 in pixels of the "
                   "image as read (a NIfTI file turned to z up, y back, x left: not its voxel order), lps_*_mm in the "
                   "patient")  # fmt: skip
    p.add_argument("--model", default=None, help="detector name or weights path (default: shipped)")
    p.add_argument("--series", default=None, metavar="UID", help="the DICOM series to read (default: the largest)")
    p.add_argument(
        "--threshold", type=_score, default=None,
        help="lowest score kept, in [0, 1] (default: the detector card's calibrated threshold, as in the widget)",
    )  # fmt: skip
    p.add_argument("--device", default="auto", type=_device)
    _add_all_series(p, "one CSV each in the --out folder; resumes, skips finished")
    p.set_defaults(func=_cmd_detect)


def _add_evaluate(sub: Any) -> None:
    """The ``evaluate`` subcommand."""
    p = sub.add_parser("evaluate", help="PSNR, SSIM and FROC of low dose, denoised and full dose on a dataset")
    p.add_argument("data", help="a dataset folder as `lidnet simulate` writes it (each slice's full-dose and "
                   "low-dose images with their boxes: see the README's 'The command line'); a DICOM folder is not one")
    p.add_argument("--model", default=None, help="denoiser name or weights path (default: shipped)")
    p.add_argument("--detector", default=None, help="detector name or weights path (default: shipped)")
    p.add_argument("--max-slices", type=int, default=None, help="evaluate the first N slices only (default: all)")
    p.add_argument("--json", default=None, help="also write the result as JSON")
    p.add_argument("--device", default="auto", type=_device)
    p.set_defaults(func=_cmd_evaluate)


class _Help(argparse.HelpFormatter):
    """Help that shows each option's default (when it has one to show)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and _shows(action.default) and "default" not in text:  # not said twice
            text += " (default: %(default)s)"
        return text


def _shows(default: Any) -> bool:
    """A default worth printing: not None, not a flag's False, not suppressed."""
    return not any(default is v for v in (None, False, argparse.SUPPRESS))


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other user error, and whose help shows each
    option's default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        """As argparse's; an option without help text still shows its default."""
        if kwargs.get("help") is None and args and str(args[0]).startswith("-") and _shows(kwargs.get("default")):
            kwargs["help"] = "default: %(default)s"
        return super().add_argument(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


@contextlib.contextmanager
def _ctrl_c_stops(flag: Any, escalate: bool = True) -> Iterator[None]:
    """While inside, the first Ctrl-C (SIGINT) or SIGTERM sets ``flag`` (a threading.Event: the run stops after its
    current step and saves what it has); a second one interrupts at once if ``escalate``. Outside the main thread
    nothing changes."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigint(signum: int, frame: Any) -> None:
        if flag.is_set() and escalate:
            raise KeyboardInterrupt
        flag.set()

    previous = {sig: signal.signal(sig, on_sigint) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _adapt_report(rec: dict[str, Any], line_open: bool) -> bool:
    """Print one record of ``selfsup.adapt_job`` on stderr: notes and estimates as lines, steps on one line that
    is rewritten (``\\r``); returns whether that step line is left open."""
    from napari_lidnet._training.selfsup import estimates_line

    stage = rec.get("stage")
    if stage == "adapt":
        loss, eta = rec["losses"]["selfsup"], rec.get("eta_s") or 0.0
        text = f"step {rec['step']}/{rec['total_steps']}  loss {loss:.3g}  about {eta:.0f} s left"
        if sys.stderr.isatty():  # one rewritten line on a terminal
            print(f"\r{text} ", end="", file=sys.stderr, flush=True)
            return True
        step, total = rec["step"], rec["total_steps"]  # in a log: the first step, then a line per tenth
        if step in (1, total) or _new_tenth(step, total):
            print(text, file=sys.stderr, flush=True)
        return False
    if stage in ("prepare", "export"):
        text = rec.get("message", "")
    elif stage == "estimate":
        text = f"step {rec['step']}: {estimates_line(rec.get('estimates') or {})}"
    else:
        return line_open
    print(("\n" if line_open else "") + text, file=sys.stderr, flush=True)
    return False


def _cmd_adapt(args: argparse.Namespace) -> int:
    """Self-supervised adaptation; Ctrl-C stops it after the current step, saves the model trained so far (nothing
    before the first step), prints one line and exits 130."""
    import threading

    from napari_lidnet._training.export import check_export_name
    from napari_lidnet._training.selfsup import adapt_job, adapt_summary
    from napari_lidnet.io.boxes_io import read_boxes_csv

    check_export_name(args.name, kinds=("denoiser",))  # before any work: name free, model folder writable
    volumes = _open_checked(args.input, every=True)
    boxes = read_boxes_csv(args.boxes) if args.boxes else None
    stop = threading.Event()
    job = adapt_job(
        volumes, args.name, scheme=args.scheme, steps=args.steps, from_model=args.from_model, boxes=boxes,
        device=args.device, seed=args.seed, patch_size=args.patch_size, command=args.command_line,
        should_stop=stop.is_set,
    )  # fmt: skip
    line_open = False
    try:
        with _ctrl_c_stops(stop):
            while True:
                try:
                    line_open = _adapt_report(next(job), line_open)
                except StopIteration as done:
                    outcome = done.value
                    break
    except KeyboardInterrupt:  # a second Ctrl-C: the model is saved whole or not at all (atomic writes)
        print(f"\ninterrupted: aborted at once, {args.name!r} may not be saved", file=sys.stderr)
        return 130
    end = "\n" if line_open else ""
    if outcome.status == "stopped":
        print(f"{end}interrupted: {adapt_summary(outcome)}", file=sys.stderr)
        return 130
    print(f"{end}{adapt_summary(outcome)}", file=sys.stderr)
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    """Calibrate a detector's threshold on a site's lesion-free scans; save it as a named user model."""
    from napari_lidnet._training.calibrate import calibrate_on_scans
    from napari_lidnet._training.export import check_export_name, export_detector
    from napari_lidnet.io.volume import known_pixel_mm, n_slices
    from napari_lidnet.models.registry import load_model
    from napari_lidnet.models.weights import default_threshold

    check_export_name(args.name, kinds=("detector",))  # before any work; NAME_denoiser may exist (lidnet adapt)
    if not 0 <= args.fp_per_slice <= 100:
        raise ValueError(f"--fp-per-slice must be a number of boxes per slice in [0, 100], not {args.fp_per_slice}")
    volumes = _open_checked(args.input, every=True)
    slices = [sl for vol in volumes for sl in (vol.hu if vol.hu.ndim == 3 else vol.hu[None])]
    sizes = [known_pixel_mm(vol) for vol in volumes]  # None where a reader assumed 1 mm: detected as given
    pixel_mm = None if None in sizes else [s[1] for s, vol in zip(sizes, volumes) for _ in range(n_slices(vol.hu))]
    detector, dev, card = _load(args.from_model, "detector", args.device)
    denoiser = None if args.as_given else load_model(args.denoiser, "denoiser", dev)[0]
    before = default_threshold(card)
    record = calibrate_on_scans(detector, slices, denoiser, args.fp_per_slice, dev, previous=before, pixel_mm=pixel_mm)
    record["data"] = {"input": str(args.input), "series": len(volumes), "slices": len(slices)}
    record["command"] = args.command_line
    path = export_detector(detector.cpu(), card, args.name, {"calibration": record})
    print(f"{args.name}: threshold {before:.3f} -> {record['threshold']:.3f}, at most {args.fp_per_slice:g} boxes "
          f"per slice on {len(slices)} slices of {args.input} (the old threshold drew "
          f"{record['fp_per_image_at_previous']:.2f}); saved {path}", file=sys.stderr)  # fmt: skip
    return 0


def _add_calibrate(sub: Any) -> None:
    """The ``calibrate`` subcommand."""
    p = sub.add_parser("calibrate", help="set a detector's score threshold on your own lesion-free scans")
    p.add_argument("input", help="normal (lesion-free) CT: DICOM series or folder, or an array file")
    p.add_argument("--name", required=True, help="name of the new model (saved as NAME_detector, never over one)")
    p.add_argument("--from", dest="from_model", default="default", help="detector to calibrate (name or path)")
    p.add_argument("--denoiser", default="default", help="its denoised slices are pooled in (name or path)")
    p.add_argument("--as-given", action="store_true", help="calibrate on the slices as given only")
    p.add_argument("--fp-per-slice", type=float, default=0.5, help="false boxes per slice at the threshold")
    p.add_argument("--device", default="auto", type=_device)
    p.set_defaults(func=_cmd_calibrate)


def _add_adapt(sub: Any) -> None:
    """The ``adapt`` subcommand."""
    p = sub.add_parser("adapt", help="adapt the denoiser to a scanner from its low-dose scans alone (self-supervised)")
    p.add_argument("input", help="low-dose CT: a DICOM series or folder, or an array file (3D, contiguous slices)")
    p.add_argument("--name", required=True, help="name of the new model (saved as NAME_denoiser, never over one)")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument(
        "--scheme",
        choices=["neighbours", "blindspot"],
        default="neighbours",
        help="neighbours: the mean of the slices above and below is the target (the measured choice)",
    )
    p.add_argument("--from", dest="from_model", default="default", help="starting denoiser (name or weights path)")
    p.add_argument("--boxes", default=None, help="lesion boxes (CSV/JSON from lidnet detect) to weight lesions")
    p.add_argument("--patch-size", type=_int_in(32, 1024), default=96)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--device", default="auto", type=_device)
    p.set_defaults(func=_cmd_adapt)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = _Parser(prog="lidnet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    adders = (_add_simulate, _add_index, _add_train, _add_denoise, _add_detect, _add_evaluate, _add_adapt)
    for add in (*adders, _add_calibrate):
        add(sub)
    return parser


def error_message(exc: BaseException) -> str:
    """One line for a user-caused error: an OSError as 'PATH: reason', anything else as its message."""
    from napari_lidnet.io.checks import one_line, os_reason

    if isinstance(exc, OSError) and exc.strerror and exc.filename is not None:
        other = f" -> {exc.filename2}" if exc.filename2 is not None else ""
        return one_line(f"{exc.filename}{other}: {exc.strerror}")
    if isinstance(exc, OSError) and exc.strerror:
        return one_line(exc.strerror)
    if isinstance(exc, OSError) and os_reason(exc):  # re-raised by a library with a traceback in its text
        return one_line(os_reason(exc))
    return one_line(str(exc)) or type(exc).__name__


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, ``timeout``, ``kill``) stops a command as Ctrl-C does: outputs whole or not at all."""


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While inside (main thread, SIGTERM at its default), SIGTERM raises :class:`Terminated`, so a command's
    clean-up runs (a series half written is removed) instead of the process dying mid-write."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        raise Terminated

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lidnet`` console script."""
    args = build_parser().parse_args(argv)
    args.command_line = _command_line(sys.argv[1:] if argv is None else argv)
    prefix = f"lidnet {args.command}"

    def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
        from napari_lidnet.io.checks import one_line

        print(f"{prefix}: warning: {one_line(str(message))}", file=sys.stderr)

    with warnings.catch_warnings(), _sigterm_interrupts():
        warnings.showwarning = one_line_warning
        try:
            return int(args.func(args) or 0)
        except (ValueError, OSError) as exc:
            print(f"{prefix}: error: {error_message(exc)}", file=sys.stderr)
            return 2
        except Terminated:
            print(f"\n{prefix}: terminated (SIGTERM); nothing half-written is left", file=sys.stderr)
            return 143
        except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback (outputs are written whole or not at all)
            print(f"\n{prefix}: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
