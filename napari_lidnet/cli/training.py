"""The ``lidnet`` commands that make data and models: ``simulate``, ``index``, ``train`` (torchrun too),
``adapt`` and ``calibrate``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from functools import partial
from pathlib import Path
from typing import Any

from napari_lidnet.io.atomic import check_writable

from .common import (
    SEED,
    add_split,
    check_new_output,
    ctrl_c_stops,
    device_arg,
    int_in,
    load_model_arg,
    new_tenth,
    open_checked,
    print_progress,
    stop_status,
    threshold_note,
)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from napari_lidnet.sim.make_dataset import simulate_dataset

    check_writable(Path(args.out))

    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    progress = partial(print_progress, verb="simulated")  # one rewritten line on a terminal, a line a tenth in a log
    out = simulate_dataset(
        args.out, n=args.n, dose=args.dose, seed=args.seed, kind=args.kind, size=args.size, progress=progress,
        domain=args.domain, negatives=args.negatives, kinds=kinds, lesions=args.lesions, target=args.target,
    )  # fmt: skip
    dose = f"at dose {args.dose:g}" if args.domain == "fixed" else "with randomised scanners (scanner.csv)"
    profile = "" if args.lesions == "standard" else f", {args.lesions} lesions (lesion_info.csv)"
    print(f"wrote {args.n} slice pairs {dose}{profile} to {out}", file=sys.stderr)
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
    if args.dose is not None and args.dose >= 1 and header["n_without_low"]:  # accepted without a word before
        print("note: --dose 1 is the scans' own dose: their simulated low-dose partners add no noise (give the "
              "fraction of it to train for, e.g. --dose 0.25)", file=sys.stderr)  # fmt: skip
    return 0


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
    if out.exists() and not out.is_dir():  # refused early, not late with a hint that running again would help
        raise FileExistsError(f"{out} is a file, not a run folder; choose a new or empty --out folder")
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
    from napari_lidnet.metrics.selection import below_start

    stop, stopped, finished = threading.Event(), False, {}
    trainer = Trainer(cfg, should_stop=stop.is_set, command=command)
    if rank == 0:
        n_val, n_test = len(trainer.val_samples), len(trainer.test_samples)
        print(f"slices: {len(trainer.train_samples)} train, {n_val} validation (at most {cfg.val_max_slices}), "
              f"{n_test} test (at most {cfg.test_max_slices}){trainer.split_note}", file=sys.stderr, flush=True)
        if trainer.resumed:
            print(trainer.resume_line(), file=sys.stderr, flush=True)
    with ctrl_c_stops(stop, escalate=world == 1):
        try:
            for rec in trainer.run():
                stopped = stopped or rec.get("stage") == "stopped"
                finished = rec if rec.get("stage") == "finished" else finished
                line = format_record(rec) if rank == 0 else None
                if line:
                    print(line, file=sys.stderr, flush=True)
        except KeyboardInterrupt:  # a second Ctrl-C: at once
            print(f"\ninterrupted: {trainer.kept_message()}", file=sys.stderr)
            return 130
        except TrainingError as exc:
            print(f"lidnet train: error: {exc}", file=sys.stderr)
            return 1
        except OSError as exc:  # a full disk: the file and what is kept, not a bare strerror
            if not exc.strerror:
                raise
            raise OSError(exc.errno, f"{exc.strerror}; {trainer.kept_message()}", exc.filename) from exc
    if stopped:
        return stop_status(stop)[0]
    worse = below_start(finished.get("start"), finished.get("best")) if rank == 0 else None
    saved = _export(trainer.out, export, command) if export and rank == 0 else None
    if worse:  # e.g. the shipped pair continued at the default rate: 21.38 -> 19.35 dB, else said nowhere
        print(f"warning: the best checkpoint is worse than the weights the run started from: {worse}, on its "
              "validation slices; a lower --lr (e.g. 1e-4) keeps more of what they learned"
              + (f"; {saved} is marked so wherever it is picked" if saved else ""), file=sys.stderr)  # fmt: skip
    return 0


def _export(run: Path, name: str, command: str) -> str:
    """Export the run's best pair as ``name`` (``NAME-2`` ... when taken meanwhile) and say what was written, and
    which network was left out; returns the name saved."""
    from napari_lidnet._training.export import export_run, free_name, renamed_note
    from napari_lidnet.models.weights import read_card

    asked, name = name, free_name(name)  # NAME-2 when another run took NAME meanwhile
    written = export_run(run, name, command=command)
    if name != asked:
        print(f"note: exported as {name}{renamed_note(asked, name)}", file=sys.stderr)
    for path in written:
        print(f"exported {path}", file=sys.stderr)
    kinds = {p.stem.rsplit("_", 1)[-1]: p for p in written}
    for missing, alone in (("detector", "denoiser"), ("denoiser", "detector")):
        if missing not in kinds:
            print(f"the run never trained its {missing} and started from none (its weights are random): the "
                  f"{alone} was exported alone", file=sys.stderr)  # fmt: skip
    if "detector" in kinds:
        print(threshold_note(name, read_card(kinds["detector"])), file=sys.stderr)
    return name


def add_simulate(sub: Any) -> None:
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
    p.add_argument("--negatives", type=float, default=0.0,
                   help="fraction of slices drawn lesion-free on purpose (negative=1 in scanner.csv), in [0, 1]; "
                        "of the others about 1 in 10 draws no lesion too (0-4 lesions: n_boxes says)")  # fmt: skip
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


def add_index(sub: Any) -> None:
    """The ``index`` subcommand."""
    p = sub.add_parser("index", help="index an archive (dataset folders, DeepLesion, DICOM) into a slice manifest")
    p.add_argument("archive", help="folder of lidnet datasets, a DeepLesion tree (DL_info.csv), or DICOM series")
    p.add_argument("--out", required=True, help="manifest file to write (JSON Lines), outside the archive")
    p.add_argument("--dose", type=float, default=None, help="simulate missing low-dose images at this dose fraction")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the simulated low-dose noise")
    add_split(p)
    p.set_defaults(func=_cmd_index)


def add_train(sub: Any) -> None:
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
    p.add_argument(
        "--insert-attached",
        type=float,
        default=0.0,
        metavar="P",
        help="chance that an inserted lung lesion is a tumour-like mass (20 mm up, often against the chest wall or "
        "mediastinum, with inner texture)",
    )
    add_split(p)
    p.add_argument(
        "--test-fraction",
        type=float,
        default=0.0,
        help="slices held out (contiguous blocks) and only measured, never used to choose the best checkpoint; at "
        "most --test-max-slices of them",
    )
    p.add_argument("--val-max-slices", type=int_in(1, 100000), default=8, metavar="N",
                   help="most validation slices (default 8: the validation part is 20%% of the slices up to this)")
    p.add_argument("--test-max-slices", type=int_in(1, 100000), default=8, metavar="N",
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
    p.add_argument("--device", default="auto", type=device_arg)
    p.add_argument("--export", default=None, help="save the best checkpoint as a named model in the model folder")


def _adapt_report(rec: dict[str, Any], line_open: bool) -> bool:
    """Print one record of ``selfsup.adapt_job`` on stderr: notes and estimates as lines, steps on one line that
    is rewritten (``\\r``); returns whether that step line is left open."""
    from napari_lidnet._training.report import time_left_text
    from napari_lidnet._training.selfsup import estimates_line

    stage = rec.get("stage")
    if stage == "adapt":
        loss, eta = rec["losses"]["selfsup"], rec.get("eta_s") or 0.0
        text = f"step {rec['step']}/{rec['total_steps']}  loss {loss:.3g}  about {time_left_text(eta)} left"
        if sys.stderr.isatty():  # one rewritten line on a terminal
            print(f"\r{text} ", end="", file=sys.stderr, flush=True)
            return True
        step, total = rec["step"], rec["total_steps"]  # in a log: the first step, then a line per tenth
        if step in (1, total) or new_tenth(step, total):
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
    from napari_lidnet.io.saved_boxes import read_boxes_csv

    check_export_name(args.name, kinds=("denoiser",))  # before any work: name free, model folder writable
    volumes = open_checked(args.input, every=True)
    boxes = read_boxes_csv(args.boxes) if args.boxes else None
    stop = threading.Event()
    job = adapt_job(
        volumes, args.name, scheme=args.scheme, steps=args.steps, from_model=args.from_model, boxes=boxes,
        device=args.device, seed=args.seed, patch_size=args.patch_size, command=args.command_line,
        should_stop=stop.is_set,
    )  # fmt: skip
    line_open = False
    try:
        with ctrl_c_stops(stop):
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
        status, word = stop_status(stop)
        print(f"{end}{word}: {adapt_summary(outcome)}", file=sys.stderr)
        return status
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
    volumes = open_checked(args.input, every=True)
    slices = [sl for vol in volumes for sl in (vol.hu if vol.hu.ndim == 3 else vol.hu[None])]
    sizes = [known_pixel_mm(vol) for vol in volumes]  # None where a reader assumed 1 mm: detected as given
    pixel_mm = None if None in sizes else [s[1] for s, vol in zip(sizes, volumes) for _ in range(n_slices(vol.hu))]
    detector, dev, card = load_model_arg(args.from_model, "detector", args.device)
    denoiser = None if args.as_given else load_model(args.denoiser, "denoiser", dev)[0]
    before = default_threshold(card)
    record = calibrate_on_scans(detector, slices, denoiser, args.fp_per_slice, dev, previous=before, pixel_mm=pixel_mm)
    record["data"] = {"input": str(args.input), "series": len(volumes), "slices": len(slices)}
    record["command"] = args.command_line
    path = export_detector(detector.cpu(), card, args.name, {"calibration": record})
    print(f"{args.name}: threshold {before:.3f} -> {record['threshold']:.3f}, at most {args.fp_per_slice:g} boxes "
          f"per slice on {len(slices)} slices of {args.input} (the old threshold drew "
          f"{record['fp_per_image_at_previous']:.2f}); saved {path}", file=sys.stderr)  # fmt: skip
    if record["threshold"] < before:  # calibration spends the whole budget: say so, and how to keep fewer boxes
        print(f"note: the threshold went down: these scans drew fewer than {args.fp_per_slice:g} false boxes per "
              f"slice, so {args.name} draws more boxes than the old threshold (up to {args.fp_per_slice:g} per "
              "slice on scans like these); give a smaller --fp-per-slice for fewer", file=sys.stderr)  # fmt: skip
    return 0


def add_calibrate(sub: Any) -> None:
    """The ``calibrate`` subcommand."""
    p = sub.add_parser("calibrate", help="set a detector's score threshold on your own lesion-free scans")
    p.add_argument("input", help="normal (lesion-free) CT: a DICOM series or folder, a NIfTI file, or an array file")
    p.add_argument("--name", required=True, help="name of the new model (saved as NAME_detector, never over one)")
    p.add_argument("--from", dest="from_model", default="default", help="detector to calibrate (name or path)")
    p.add_argument("--denoiser", default="default", help="its denoised slices are pooled in (name or path)")
    p.add_argument("--as-given", action="store_true", help="calibrate on the slices as given only")
    p.add_argument("--fp-per-slice", type=float, default=0.5, help="false boxes per slice at the threshold")
    p.add_argument("--device", default="auto", type=device_arg)
    p.set_defaults(func=_cmd_calibrate)


def add_adapt(sub: Any) -> None:
    """The ``adapt`` subcommand."""
    p = sub.add_parser("adapt", help="adapt the denoiser to a scanner from its low-dose scans alone (self-supervised)")
    p.add_argument("input", help="low-dose CT: a DICOM series or folder, a NIfTI file, or an array file (3D, "
                   "contiguous slices)")
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
    p.add_argument("--patch-size", type=int_in(32, 1024), default=96)
    p.add_argument("--seed", type=SEED, default=0)
    p.add_argument("--device", default="auto", type=device_arg)
    p.set_defaults(func=_cmd_adapt)
