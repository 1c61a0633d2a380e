"""Nothing lost, nothing overwritten, every bad input a clear message: the bad-input corpus (tests/bad_inputs.py)
through every entry point. The readers (``open_ct``, the napari reader), each ``lidnet`` subcommand and each dock
widget's start; every CLI refusal is exactly one line ``lidnet CMD: error: ...`` with status 2 and no traceback, and
the files on disk are byte-identical before and after (widget tests run under xvfb-run)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import (
    ARRAY_CASES,
    DICOM_CASES,
    good_volume,
    snapshot,
    write_arrays,
    write_colliding_series,
    write_dicoms,
)
from conftest import synthetic_hu, tiny_models, write_series

from napari_lidnet import batch, inference
from napari_lidnet._reader import napari_get_reader
from napari_lidnet._training.export import export_run
from napari_lidnet._training.resume import check_resume
from napari_lidnet.cli import main
from napari_lidnet.io.dataset import Sample, write_dataset
from napari_lidnet.io.open_ct import open_ct
from napari_lidnet.io.saved_boxes import read_boxes_csv
from napari_lidnet.models.denoisers import build_denoiser
from napari_lidnet.models.registry import MODEL_DIR_ENV
from napari_lidnet.models.weights import load_weights, save_weights

CORPUS = {**{f"arrays/{k}": v for k, v in ARRAY_CASES.items()}, **{f"dicom/{k}": v for k, v in DICOM_CASES.items()}}
MODEL_ARGS = {"denoise": ["--model", "tiny_denoiser"], "detect": ["--model", "tiny_detector"]}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """The whole corpus in one folder (built once), plus an output area with an existing file and folder."""
    root = tmp_path_factory.mktemp("corpus")
    write_arrays(root / "arrays")
    write_dicoms(root / "dicom")
    (root / "out" / "nonempty").mkdir(parents=True)
    (root / "out" / "nonempty" / "keep.txt").write_text("mine")
    np.save(root / "out" / "existing.npy", np.zeros((4, 4), np.float32))
    return root


@pytest.fixture
def models(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "models"
    tiny_models(folder)
    monkeypatch.setenv(MODEL_DIR_ENV, str(folder))
    return folder


def run_cli(capsys, *args: str) -> tuple[int, list[str]]:
    """Run ``lidnet ARGS`` in this process: (exit status, stderr lines)."""
    rc = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return rc, err.strip().splitlines()


def assert_refused(rc: int, lines: list[str], cmd: str, pattern: str) -> None:
    """Exactly one line ``lidnet CMD: error: ...`` matching ``pattern``, status 2."""
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"lidnet {cmd}: error: "), lines
    assert re.search(pattern, lines[0]), (pattern, lines[0])


# --------------------------------------------------------------------------------------------------- readers


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_readers(corpus, case):
    """open_ct and the napari reader: a refused input raises one line naming the problem; a doubtful one opens with
    a one-line warning (also in the layer metadata, so Load CT shows it); nothing on disk changes."""
    what, pattern = CORPUS[case]
    before = snapshot(corpus)
    path = corpus / case
    reader = napari_get_reader(str(path))
    assert reader is not None, "the napari reader claims every CT-looking input, to say what is wrong with it"
    for read in (open_ct, reader):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if what == "refused":
                with pytest.raises(ValueError) as err:
                    read(path)
                assert "\n" not in str(err.value) and re.search(pattern, str(err.value)), str(err.value)
                continue
            result = read(path)
        messages = [str(w.message) for w in caught]
        assert any(re.search(pattern, m) for m in messages), messages
        assert all("\n" not in m for m in messages)
        meta = result[0].metadata if read is open_ct else result[0][1]["metadata"]
        assert any(re.search(pattern, m) for m in meta["warnings"])
    assert snapshot(corpus) == before


def test_good_series_opens_beside_unreadable_ones(corpus):
    """A folder holding good series next to broken ones (truncated, no pixels, bad syntax, mixed, huge, garbage):
    the good series open, each problem is one warning naming its file."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        volumes = open_ct(corpus / "dicom")
    assert sorted(v.hu.shape for v in volumes) == [(3, 16, 16)] * 4  # good, duplicate (read once), mr, partly
    text = "\n".join(str(w.message) for w in caught)
    for name in ("truncated/s0_2.dcm", "nopixels/s0_1.dcm", "badsyntax/s0_0.dcm", "garbage.dcm", "20000 x 20000"):
        assert name in text, name
    assert "mixes image sizes" in text and "mixes slice orientations" in text


# ------------------------------------------------------------------------------------- denoise and detect


def _cli_args(cmd: str, src: Path, out: Path) -> list:
    if cmd == "denoise":
        return ["denoise", src, out, *MODEL_ARGS[cmd], "--device", "cpu"]
    return ["detect", src, "--out", out, *MODEL_ARGS[cmd], "--device", "cpu"]


CLI_REFUSALS = {
    "dicom/mr": r"modality 'MR' is not CT",
    "arrays/nan.npy": r"1 of 512 pixels are NaN .*; CT input must be finite HU",
    "arrays/inf.npy": r"2 of 512 pixels are infinite",
    "arrays/constant.npy": r"a blank image",
    "arrays/absurd.npy": r"2 of 512 pixels lie beyond \+-100000 HU .*which no CT holds; CT input must be finite HU",
}


@pytest.mark.parametrize("cmd", ["denoise", "detect"])
@pytest.mark.parametrize("case", sorted(c for c in CORPUS if c not in ("dicom/duplicate", "dicom/partly_unreadable")))
def test_denoise_detect_refuse_bad_inputs(corpus, capsys, case, cmd):
    before = snapshot(corpus)
    out = corpus / "out" / ("new.npy" if cmd == "denoise" else "new.csv")
    rc, lines = run_cli(capsys, *_cli_args(cmd, corpus / case, out))
    assert_refused(rc, lines, cmd, CLI_REFUSALS.get(case, CORPUS[case][1]))
    assert snapshot(corpus) == before


def test_real_ct_extremes_are_not_refused_as_impossible(models, tmp_path, capsys):
    """What real CT holds beyond air and bone runs: -3024 padding outside the field of view, metal at 30000 HU on
    the extended scale, and an unmarked unsigned 63536 padding read as +62512 HU."""
    hu = good_volume()
    hu[:, :3], hu[0, 8, 8], hu[1, 8, 8], hu[1, 15, 15] = -3024.0, 30000.0, 62512.0, -33792.0
    np.save(tmp_path / "edges.npy", hu)
    for cmd in ("denoise", "detect"):
        out = tmp_path / ("den.npy" if cmd == "denoise" else "boxes.csv")
        rc, lines = run_cli(capsys, *_cli_args(cmd, tmp_path / "edges.npy", out))
        assert rc == 0 and out.is_file() and not any("error" in ln or "overflow" in ln for ln in lines), lines


def test_an_array_that_looks_like_y_x_z_is_refused_until_axes_says(models, tmp_path, capsys):
    """Regression: a (512, 512, 16) array saved from nibabel was denoised as 512 sagittal slices of 512 x 16 with a
    Python hint in a warning, and exit 0. The command line refuses it in one line naming --axes; --axes yxz takes
    the last axis as the slices and writes the result back in the file's order; --axes zyx runs it as stored."""
    zyx = synthetic_hu((3, 64, 64), seed=3)
    np.save(tmp_path / "yxz.npy", np.moveaxis(zyx, 0, -1))  # (64, 64, 3)
    np.save(tmp_path / "small.npy", synthetic_hu((12, 128, 128), seed=4).transpose(1, 2, 0))  # (128, 128, 12)
    before = snapshot(tmp_path)
    for name, shape in (("yxz.npy", r"\(64, 64, 3\)"), ("small.npy", r"\(128, 128, 12\)")):
        for cmd in ("denoise", "detect"):
            rc, lines = run_cli(capsys, *_cli_args(cmd, tmp_path / name, tmp_path / ("o.npy" if cmd == "denoise"
                                                                                   else "o.csv")))  # fmt: skip
            assert_refused(rc, lines, cmd, rf"{name}: shape {shape} looks like \(y, x, z\).*add --axes yxz")
    assert snapshot(tmp_path) == before
    rc, lines = run_cli(capsys, *_cli_args("denoise", tmp_path / "yxz.npy", tmp_path / "den.npy"), "--axes", "yxz")
    assert rc == 0, lines
    want = inference.denoise(load_weights(models / "tiny_denoiser")[0], zyx)
    np.testing.assert_allclose(np.load(tmp_path / "den.npy"), np.moveaxis(want, 0, -1), atol=1e-3)
    rc, lines = run_cli(capsys, *_cli_args("detect", tmp_path / "yxz.npy", tmp_path / "b.csv"), "--axes", "zyx")
    assert rc == 0 and not any("warning" in ln for ln in lines), lines  # said so: no Python hint either
    rc, lines = run_cli(capsys, *_cli_args("denoise", _dicom_series(tmp_path), tmp_path / "x.npy"), "--axes", "yxz")
    assert_refused(rc, lines, "denoise", r"--axes orders a 3D array file .*: leave --axes out")
    rc, lines = run_cli(capsys, "denoise", tmp_path / "yxz.npy", tmp_path / "all", "--all-series", "--axes", "yxz")
    assert_refused(rc, lines, "denoise", r"--axes orders one array; --all-series takes every one")


def _dicom_series(tmp_path: Path) -> Path:
    """A small DICOM series (read in (z, y, x) order whatever --axes says)."""
    write_series(tmp_path / "series", synthetic_hu((3, 16, 16), seed=5), series_uid="1.2.826.0.1.3680043.8.498.91")
    return tmp_path / "series"


@pytest.mark.parametrize("cmd", ["denoise", "detect"])
def test_unreadable_file_is_a_warning_and_the_good_series_is_processed(corpus, models, tmp_path, capsys, cmd):
    before = snapshot(corpus)
    out = tmp_path / ("den.npy" if cmd == "denoise" else "boxes.csv")
    rc, lines = run_cli(capsys, *_cli_args(cmd, corpus / "dicom" / "partly_unreadable", out))
    assert rc == 0, lines
    warning = [ln for ln in lines if ln.startswith(f"lidnet {cmd}: warning: ")]
    assert len(warning) == 1 and "garbage.dcm" in warning[0]
    assert out.is_file() and snapshot(corpus) == before


OUTPUT_REFUSALS = {
    "existing file": ("out/existing.npy", r"existing\.npy already exists; outputs never overwrite"),
    "non-empty folder": ("out/nonempty", r"nonempty already exists; outputs never overwrite"),
    "inside the input": ("dicom/good/denoised", r"lies inside the input folder"),
    "missing folder": ("out/nowhere/x.npy", r"nowhere: folder does not exist"),
}


@pytest.mark.parametrize("cmd", ["denoise", "detect"])
@pytest.mark.parametrize("case", sorted(OUTPUT_REFUSALS))
def test_outputs_never_overwrite(corpus, capsys, case, cmd):
    target, pattern = OUTPUT_REFUSALS[case]
    if cmd == "detect" and case == "missing folder":
        target = "out/nowhere/x.csv"
    before = snapshot(corpus)
    rc, lines = run_cli(capsys, *_cli_args(cmd, corpus / "dicom" / "good", corpus / target))
    assert_refused(rc, lines, cmd, pattern)
    assert snapshot(corpus) == before


def test_detect_writes_boxes_only_as_csv_or_json(corpus, tmp_path, capsys):
    """Regression: `detect --out boxes.nii.gz` (or .xlsx) wrote CSV text under that name."""
    before = snapshot(corpus)
    for name in ("boxes.nii.gz", "boxes.xlsx", "boxes"):
        rc, lines = run_cli(capsys, *_cli_args("detect", corpus / "arrays" / "good.npy", tmp_path / name))
        assert_refused(rc, lines, "detect", r"boxes are written as \.csv or \.json")
        assert not (tmp_path / name).exists()
    assert snapshot(corpus) == before


@pytest.mark.parametrize("cmd", ["denoise", "detect"])
def test_all_series_refuses_a_series_and_a_file_name(corpus, models, tmp_path, capsys, cmd):
    """Regression: `--all-series --series UID` processed every series without a word, and `detect
    --all-series --out x.csv` made a folder named x.csv holding the CSV files."""
    before = snapshot(corpus)
    args = [*_cli_args(cmd, corpus / "dicom" / "good", tmp_path / "out"), "--all-series"]
    rc, lines = run_cli(capsys, *args, "--series", "1.2.3")
    assert_refused(rc, lines, cmd, r"--series picks one series of one input; --all-series takes every one")
    rc, lines = run_cli(capsys, *_cli_args(cmd, corpus / "dicom" / "good", tmp_path / "boxes.csv"), "--all-series")
    assert_refused(rc, lines, cmd, r"boxes\.csv: --all-series writes one file per series into a folder")
    assert snapshot(corpus) == before and [p.name for p in tmp_path.iterdir()] == ["models"]
    if cmd == "denoise":  # a folder meant to be named so: ended with /, as a single output's
        rc, lines = run_cli(capsys, *_cli_args(cmd, corpus / "dicom" / "good", f"{tmp_path / 'run.final'}/"),
                            "--all-series")  # fmt: skip
        assert rc == 0 and (tmp_path / "run.final").is_dir(), lines


def test_read_only_output_folder(corpus, tmp_path, capsys, monkeypatch):
    """Refused before any work: really (chmod) as a user, by an injected PermissionError as root (root ignores
    chmod)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() == 0:
        real_access = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != ro and real_access(p, mode, **kw))
    else:
        ro.chmod(0o555)
    before = snapshot(corpus)
    commands = [
        _cli_args("denoise", corpus / "arrays" / "good.npy", ro / "x.npy"),
        _cli_args("detect", corpus / "arrays" / "good.npy", ro / "x.csv"),
        ["simulate", "--out", ro / "data", "--n", "1", "--size", "64"],
        ["index", corpus / "dicom" / "good", "--out", ro / "x.jsonl"],
        _cli_args("denoise", corpus / "arrays" / "good.npy", ro),  # the empty folder itself (not refused
        ["simulate", "--out", ro, "--n", "1", "--size", "64"],  # only after the work, naming a temporary path)
    ]
    for args in commands:
        rc, lines = run_cli(capsys, *args)
        assert_refused(rc, lines, args[0], rf"{re.escape(str(ro))}: Permission denied")
    ro.chmod(0o755)
    assert snapshot(corpus) == before and not list(ro.iterdir())


def test_train_refuses_a_file_as_its_run_folder_up_front(tmp_path, capsys):
    """Regression: `train --out afile` read the data and models, then said "File exists; no checkpoint yet:
    running again starts ... from the beginning", which running again does not change."""
    data = _dataset(tmp_path / "data")
    (tmp_path / "afile").write_text("mine")
    rc, lines = run_cli(capsys, "train", "--data", data, "--out", tmp_path / "afile", *TRAIN)
    assert_refused(rc, lines, "train", r"afile is a file, not a run folder")
    assert (tmp_path / "afile").read_text() == "mine"


def test_disk_full_while_writing_leaves_no_partial_output(corpus, models, tmp_path, capsys, monkeypatch):
    """An injected ENOSPC after half the array is written: one line, and no half-written file remains."""

    def full_disk(fh, arr, *args, **kwargs):
        fh.write(b"\x93NUMPY half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", full_disk)
    out = tmp_path / "den.npy"
    rc, lines = run_cli(capsys, *_cli_args("denoise", corpus / "arrays" / "good.npy", out))
    assert rc == 2 and lines == ["2/2 slices", f"lidnet denoise: error: {out}: No space left on device"]  # named
    assert not out.exists()


def test_disk_full_inside_pydicom_names_the_series_folder(corpus, models, tmp_path, capsys, monkeypatch):
    """Regression (a 3 MB tmpfs): writing a DICOM series onto a full disk said only "No space left on
    device": pydicom re-raises the error as "With tag (7FE0,0010) got exception: ...", without its errno."""
    import pydicom.filewriter

    real = pydicom.filewriter.write_data_element

    def full_disk(fp, elem, *args, **kwargs):
        if elem.tag == 0x7FE00010:
            raise OSError(28, "No space left on device")
        return real(fp, elem, *args, **kwargs)

    monkeypatch.setattr(pydicom.filewriter, "write_data_element", full_disk)
    out = tmp_path / "den_series"
    rc, lines = run_cli(capsys, *_cli_args("denoise", corpus / "arrays" / "good.npy", out))
    assert rc == 2 and lines[-1] == f"lidnet denoise: error: {out}: No space left on device", lines
    assert [p.name for p in tmp_path.iterdir()] == ["models"]  # no series, no hidden half of one


def test_odd_output_names_and_colliding_series(corpus, models, tmp_path, capsys):
    """Dots, spaces and non-ASCII letters in output names work; two series whose descriptions and UID tails
    collide get two outputs (before, the second replaced or skipped the first)."""
    odd = tmp_path / "Ausgabe ü v1.2"
    odd.mkdir()
    rc, lines = run_cli(capsys, *_cli_args("denoise", corpus / "dicom" / "good", odd / "Schädel v1.2.npy"))
    assert rc == 0 and np.load(odd / "Schädel v1.2.npy").shape == (3, 16, 16), lines
    rc, lines = run_cli(capsys, *_cli_args("denoise", corpus / "dicom" / "good", odd / "a b.TIF"))
    assert rc == 0 and open_ct(odd / "a b.TIF")[0].hu.shape == (3, 16, 16), lines
    rc, lines = run_cli(capsys, *_cli_args("denoise", corpus / "dicom" / "good", odd / "série 2.0"))
    assert rc == 0 and open_ct(odd / "série 2.0")[0].hu.shape == (3, 16, 16), lines
    archive = tmp_path / "archive"
    uid_a, uid_b = write_colliding_series(archive)
    before = snapshot(archive)
    args = ["detect", archive, "--out", tmp_path / "boxes", "--all-series", *MODEL_ARGS["detect"], "--device", "cpu"]
    rc, lines = run_cli(capsys, *args, "--workers", "0")
    assert rc == 0, lines
    names = sorted(p.name for p in (tmp_path / "boxes").iterdir() if not p.name.startswith("."))  # bookkeeping aside
    assert names == sorted(f"{batch.output_name('Thorax', uid)}.csv" for uid in (uid_a, uid_b)) and len(set(names)) == 2
    assert all(read_boxes_csv(tmp_path / "boxes" / n).shape[1] == 6 for n in names)
    assert snapshot(archive) == before


def test_name_collisions_are_refused_before_writing(tmp_path, monkeypatch):
    """Should two series still map to one name (injected: every name the same), nothing is written."""
    archive = tmp_path / "archive"
    write_colliding_series(archive)
    monkeypatch.setattr(batch, "output_name", lambda desc, uid: "same")
    with pytest.raises(ValueError, match=r"series .* and .* would both be written as same; nothing done"):
        batch.run_batch(archive, tmp_path / "out", "detect", model=None)
    assert not (tmp_path / "out").exists()


def test_all_series_reports_series_that_cannot_be_read(corpus, models, tmp_path, capsys):
    """--all-series over the whole corpus: every good series written, one line naming what was not processed."""
    before = snapshot(corpus)
    out = tmp_path / "boxes"
    args = ["detect", corpus / "dicom", "--out", out, "--all-series", *MODEL_ARGS["detect"], "--device", "cpu"]
    rc, lines = run_cli(capsys, *args, "--workers", "0")
    errors = [ln for ln in lines if ln.startswith("lidnet detect: error: ")]
    assert rc == 2 and len(errors) == 1 and lines[-1] == errors[0], lines
    assert re.search(r"6 series not processed \(first: .*\); 3 written, 0 already complete", errors[0]), errors
    notes = [ln for ln in lines if ln.startswith("note: ")]  # the MR series: left out for good, not a failure
    assert len(notes) == 1 and re.match(r"note: 1 series left out \(first: .*'MR' is not CT", notes[0])
    failed = [ln for ln in lines if ln.startswith("failed: ")]  # each series not processed, on its own line
    assert len(failed) == 6 and all(re.match(r"failed: series '.*' \(", ln) for ln in failed), failed
    assert all(ln.startswith("lidnet detect: warning: ") for ln in lines[:-1] if ln not in notes + failed)
    assert len(list(out.glob("*.csv"))) == 3 and snapshot(corpus) == before
    rc, lines = run_cli(capsys, *args, "--workers", "0")  # again: finished outputs are kept, not redone
    assert rc == 2 and "0 written, 3 already complete" in lines[-1]


# ----------------------------------------------------------------------------------- simulate, index, evaluate


def _dataset(path: Path, sizes=(64, 64, 64, 64), low: bool = True) -> Path:
    rng = np.random.default_rng(0)
    samples = []
    for k, size in enumerate(sizes):
        full = rng.normal(40, 20, (size, size)).astype(np.float32)
        boxes = np.array([[10, 10, 20, 20]], np.float32)
        samples.append(Sample(f"s{k}", full, full + rng.normal(0, 30, full.shape) if low else None, boxes, 0.7))
    return write_dataset(path, samples, {"dose": 0.25})


def test_simulate_refuses_every_existing_output(corpus, tmp_path, capsys):
    data = _dataset(tmp_path / "data")
    before, corpus_before = snapshot(tmp_path), snapshot(corpus)
    cases = {
        data: "already holds a lidnet dataset; outputs never overwrite: choose a new folder",
        corpus / "out" / "nonempty": "folder is not empty and is not a lidnet dataset",
        corpus / "out" / "existing.npy": "exists and is not a folder",
    }
    for out, pattern in cases.items():
        rc, lines = run_cli(capsys, "simulate", "--out", out, "--n", "1", "--size", "64")
        assert_refused(rc, lines, "simulate", pattern)
    assert snapshot(tmp_path) == before and snapshot(corpus) == corpus_before


def test_index_refuses_an_existing_manifest_and_skips_unreadable_files(corpus, tmp_path, capsys):
    existing = tmp_path / "archive.jsonl"
    existing.write_text("mine\n")
    before = snapshot(corpus)
    rc, lines = run_cli(capsys, "index", corpus / "dicom" / "partly_unreadable", "--out", existing)
    assert_refused(rc, lines, "index", r"archive\.jsonl already exists; outputs never overwrite")
    assert existing.read_text() == "mine\n"
    rc, lines = run_cli(capsys, "index", corpus / "dicom" / "partly_unreadable", "--out", tmp_path / "new.jsonl")
    assert rc == 0 and any("garbage.dcm" in ln for ln in lines), lines
    assert json.loads((tmp_path / "new.jsonl").read_text().splitlines()[0])["n"] == 3
    assert snapshot(corpus) == before


def test_evaluate_refusals(tmp_path, capsys, models):
    no_low = _dataset(tmp_path / "nolow", low=False)
    mixed = _dataset(tmp_path / "mixed", sizes=(64, 48))
    good = _dataset(tmp_path / "good", sizes=(64,))
    (tmp_path / "eval.json").write_text("{}")
    before = snapshot(tmp_path)
    cases = [
        ([no_low], r"nolow: 4 of 4 slices have no low-dose image in low/ \(first: s0\)"),
        ([mixed], r"mixed: slices differ in size \(48x48 \(s1\), 64x64 \(s0\)\)"),
        ([good, "--json", tmp_path / "eval.json"], r"eval\.json already exists"),
        ([good, "--json", good / "eval.json"], r"lies inside the input folder"),
        ([tmp_path / "models"], r"not a lidnet dataset"),
    ]
    for args, pattern in cases:
        rc, lines = run_cli(capsys, "evaluate", *args, "--model", "tiny_denoiser", "--detector", "tiny_detector")
        assert_refused(rc, lines, "evaluate", pattern)
    assert snapshot(tmp_path) == before


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["denoise", "only-one-argument"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1
    assert err[0].startswith("lidnet denoise: error: the following arguments are required: output")


# ------------------------------------------------------------------------------------------------ training


TRAIN = [
    *("--mode", "pixel", "--pretrain-denoiser-steps", "2", "--pretrain-detector-steps", "0", "--rounds", "0"),
    *("--batch-size", "1", "--patch-size", "32", "--denoiser-width", "8", "--device", "cpu", "--workers", "0"),
]


TRAIN_REFUSALS = {
    "arrays/nan.npy": r"nan\.npy: not a lidnet manifest",
    "arrays": r"arrays: folder contains no DICOM image",
    "dicom/mr": r"mr: no slices found to index",
    "dicom/good": r"patch size 32 is larger than slice\(s\) s0_0\.dcm#0",
    "dicom/huge": r"s0_0\.dcm: slices of 20000 x 20000 pixels are larger than 8192 x 8192",
}


@pytest.mark.parametrize("case", sorted(TRAIN_REFUSALS))
def test_train_refuses_bad_data(corpus, tmp_path, capsys, case):
    """The last line is the one error line (a run that got as far as validating has printed its progress)."""
    before = snapshot(corpus)
    rc, lines = run_cli(capsys, "train", "--data", corpus / case, "--out", tmp_path / "run", "--dose", "0.25", *TRAIN)
    assert rc == 2 and lines[-1].startswith("lidnet train: error: "), lines
    assert re.search(TRAIN_REFUSALS[case], lines[-1]) and not any("error" in ln for ln in lines[:-1]), lines
    assert snapshot(corpus) == before


def test_an_unreadable_slice_read_by_workers_ends_the_run_in_one_line(tmp_path):
    """Regression: with reader workers (the default --workers 2) one truncated PNG printed the worker's
    whole traceback as the "one line" (3000 characters), then the process never exited (its readers ignore SIGTERM,
    which Python's exit sends them) and held the run folder's lock. One line naming the file, exit 2."""
    data = _dataset(tmp_path / "data")
    png = data / "low" / "s1.png"
    png.write_bytes(png.read_bytes()[:200])
    args = list(TRAIN)
    args[args.index("--workers") + 1] = "2"
    args[args.index("--pretrain-denoiser-steps") + 1] = "20"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "napari_lidnet.cli", "train", "--data", str(data), "--out", str(tmp_path / "run"),
           *args]  # fmt: skip
    proc = subprocess.run(cmd, env=env, timeout=120, capture_output=True, text=True)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and last.startswith("lidnet train: error: "), proc.stderr[-2000:]
    assert "s1.png: not a readable PNG" in last and "Traceback" not in last and len(last) < 300, last


def test_train_refuses_a_run_folder_inside_its_data_or_among_other_files(tmp_path, capsys):
    """Regression: a run folder inside the archive (given as a folder, or as a manifest's root) was
    written into the archive; an existing folder of other files was used as a run folder."""
    from napari_lidnet.datasets.manifest import index_archive

    data = _dataset(tmp_path / "data")
    manifest = index_archive(data, tmp_path / "m.jsonl")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    for source, out, pattern in ((data, data / "run", r"lies inside the training data"),
                                 (manifest, data / "sub" / "run", r"lies inside the training data"),
                                 (data, mine, r"mine holds other files and no training run")):  # fmt: skip
        rc, lines = run_cli(capsys, "train", "--data", source, "--out", out, *TRAIN)
        assert_refused(rc, lines, "train", pattern)
    assert snapshot(tmp_path) == before


def test_an_export_says_where_the_detector_threshold_comes_from(tmp_path, capsys, models):
    """Regression: a trained detector lost its calibrated threshold silently. Continued from a calibrated
    detector it keeps that threshold (its card names where from) and the export says how to set one."""
    from napari_lidnet.models.detector import LesionDetector
    from napari_lidnet.models.weights import default_threshold, read_card

    data = _dataset(tmp_path / "data")
    calibrated = {"calibration": {"threshold": 0.61, "fp_per_image": 0.5}}
    save_weights(LesionDetector(width=8), models / "site_detector", calibrated)
    save_weights(build_denoiser("fastdn", width=8, factor=2), models / "site_denoiser")
    args = [*TRAIN, "--init-denoiser", "site", "--init-detector", "site", "--pretrain-from-init"]
    rc, lines = run_cli(capsys, "train", "--data", data, "--out", tmp_path / "run", *args, "--export", "lab")
    assert rc == 0 and "keeps the score threshold 0.610 calibrated for the weights it started from" in lines[-1]
    assert "lidnet calibrate SCANS --from lab" in lines[-1]
    card = read_card(models / "lab_detector")
    assert default_threshold(card) == 0.61 and card["training"]["commands"][0].startswith("lidnet train --data")


def test_export_name_taken_is_refused_before_training(tmp_path, capsys, models):
    """`--export v1.2` checks v1.2_denoiser/v1.2_detector (not v1.json) before training anything."""
    data = _dataset(tmp_path / "data")
    save_weights(build_denoiser("fastdn", width=8, blocks=1), models / "v1.2_detector")
    before = snapshot(tmp_path)
    rc, lines = run_cli(capsys, "train", "--data", data, "--out", tmp_path / "run", *TRAIN, "--export", "v1.2")
    assert_refused(rc, lines, "train", r"a model named 'v1\.2' already exists \(.*v1\.2_detector\.safetensors\)")
    assert snapshot(tmp_path) == before and not (tmp_path / "run").exists()


def test_export_writes_both_pairs_or_neither(tmp_path, models):
    run = tmp_path / "run"
    tiny_models(run, prefix="best")
    written = export_run(run, "v1.2")
    assert [p.name for p in written] == ["v1.2_denoiser.safetensors", "v1.2_detector.safetensors"]
    assert load_weights(models / "v1.2_denoiser")[1]["name"] == "v1.2_denoiser"
    save_weights(build_denoiser("fastdn", width=8, blocks=1), models / "v2_detector")  # only the second taken
    before = snapshot(models)
    with pytest.raises(FileExistsError, match="a model named 'v2' already exists"):
        export_run(run, "v2")
    assert snapshot(models) == before  # no half pair
    # a kill between the two writes (no clean-up runs) leaves the denoiser alone: no model, and the name stays free
    for p in (models / "v1.2_detector.safetensors", models / "v1.2_detector.json"):
        p.unlink()
    from napari_lidnet.models.registry import list_models

    assert "v1.2_denoiser" not in [m.name for m in list_models()]
    assert [p.name for p in export_run(run, "v1.2")][1] == "v1.2_detector.safetensors"
    assert {"v1.2_denoiser", "v1.2_detector"} <= {m.name for m in list_models()}
    # killed after the detector's weights but before its card, the denoiser must not be listed alone
    (models / "v1.2_detector.json").unlink()
    assert "v1.2_denoiser" not in [m.name for m in list_models()]


def test_resume_with_other_settings_is_refused_naming_the_difference(tmp_path):
    from napari_lidnet._training.config import TrainConfig

    cfg = TrainConfig(out=str(tmp_path / "run"), data=str(tmp_path / "data"), denoiser="fastdn")
    state = {"config": cfg.to_dict(), "done": ["validate-start"]}
    check_resume(state, cfg)  # same settings: fine
    check_resume(state, TrainConfig(**{**cfg.to_dict(), "rounds": 9, "lr": 5e-4, "device": "cpu"}))  # may change
    check_resume({"done": []}, cfg)  # nothing recorded yet
    other = TrainConfig(**{**cfg.to_dict(), "denoiser": "redcnn", "data": str(tmp_path / "other")})
    with pytest.raises(ValueError) as err:
        check_resume(state, other)
    msg = str(err.value)
    assert "\n" not in msg and "denoiser: run 'fastdn', now 'redcnn'" in msg and "other'" in msg and "data: run" in msg
    with pytest.raises(ValueError, match=r"denoiser_kwargs: run \{\}, now \{'width': 16\}"):
        check_resume(state, TrainConfig(**{**cfg.to_dict(), "denoiser_kwargs": {"width": 16}}))
    # what the patches and the ROI loss are made of must not change on a resume without a word
    for key, value in (("insert_lesions", 0.5), ("roi_boxes", "predicted"), ("roi_levels", (0,))):
        with pytest.raises(ValueError, match=rf"{key}: run "):
            check_resume(state, TrainConfig(**{**cfg.to_dict(), key: value}))
    # a pixel-loss run (or one with no ROI term) never reads the ROI settings: changing them does not block it
    for base in ({"mode": "pixel"}, {"roi_weight": 0.0}, {"mode": "lidnet-noroi"}):
        run_cfg = TrainConfig(**{**cfg.to_dict(), **base})
        pixel = {"config": run_cfg.to_dict(), "done": ["validate-start"]}
        check_resume(pixel, TrainConfig(**{**run_cfg.to_dict(), "roi_boxes": "both", "roi_margin": 0.5}))
    whole = TrainConfig(**{**cfg.to_dict(), "mode": "lidnet-wholeperc"})
    check_resume({"config": whole.to_dict()}, TrainConfig(**{**whole.to_dict(), "roi_boxes": "both"}))
    with pytest.raises(ValueError, match=r"roi_levels: run "):  # the whole-image perceptual term reads the levels
        check_resume({"config": whole.to_dict()}, TrainConfig(**{**whole.to_dict(), "roi_levels": (0,)}))
    with pytest.raises(ValueError, match=r"roi_margin: run "):  # a pixel run resumed as a lidnet run reads it now
        pixel = TrainConfig(**{**cfg.to_dict(), "roi_weight": 0.0})
        check_resume({"config": pixel.to_dict()}, TrainConfig(**{**pixel.to_dict(), "roi_weight": 0.3,
                                                                  "roi_margin": 0.5}))  # fmt: skip


def test_cli_resume_with_another_architecture_is_refused(tmp_path, capsys, models):
    from napari_lidnet._training.config import TrainConfig

    data = _dataset(tmp_path / "data")
    run = tmp_path / "run"
    run.mkdir()
    cfg = TrainConfig(out=str(run), data=str(data), mode="pixel", denoiser="redcnn")
    (run / "state.json").write_text(json.dumps({"config": cfg.to_dict(), "done": ["validate-start"], "history": []}))
    before = snapshot(tmp_path)
    rc, lines = run_cli(capsys, "train", "--data", data, "--out", run, *TRAIN)
    assert_refused(rc, lines, "train", r"denoiser: run 'redcnn', now 'fastdn'")
    assert snapshot(tmp_path) == {**before, **{k: v for k, v in snapshot(tmp_path).items() if k not in before}}


def test_train_on_slices_of_several_sizes(tmp_path, capsys):
    """A dataset of 64, 48 and 32 px slices trains and validates (each size in its own stack)."""
    data = _dataset(tmp_path / "data", sizes=(64, 48, 32) * 5)  # validation slices of several sizes
    rc, lines = run_cli(capsys, "train", "--data", data, "--out", tmp_path / "run", *TRAIN)
    assert rc == 0, lines  # validation groups its slices by size (it died in np.stack before)


def test_disk_full_during_a_checkpoint(tmp_path, capsys, monkeypatch):
    """ENOSPC injected into the weights writer's fsync: the run stops with one error line (after its progress
    lines), no temporary file is left, and the previous checkpoint of a save that fails still loads."""
    den = build_denoiser("fastdn", width=8, blocks=1)
    save_weights(den, tmp_path / "ck" / "last_denoiser")
    old = snapshot(tmp_path / "ck")
    data = _dataset(tmp_path / "data")  # written (fsynced) before the disk fills

    def no_space(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space left"):
        save_weights(build_denoiser("fastdn", width=8, blocks=1), tmp_path / "ck" / "last_denoiser")
    assert snapshot(tmp_path / "ck") == old
    rc, lines = run_cli(capsys, "train", "--data", data, "--out", tmp_path / "run", *TRAIN)
    run = tmp_path / "run"  # the file named and what is kept, not a bare 'No space left on device'
    assert rc == 2 and lines[-1].startswith(f"lidnet train: error: {run}/"), lines
    assert ": No space left on device; " in lines[-1] and "again" in lines[-1], lines
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith((".tmp", ".bak"))]


KILLER = """
import os, signal, sys, torch
from napari_lidnet.models.denoisers import build_denoiser
from napari_lidnet.models.weights import save_weights
real_replace = os.replace
def replace_then_die(src, dst):
    real_replace(src, dst)
    if str(dst).endswith(".safetensors"):
        os.kill(os.getpid(), signal.SIGKILL)  # killed between the weights' and the card's rename
os.replace = replace_then_die
torch.manual_seed(1)
save_weights(build_denoiser("fastdn", width=8, blocks=1), sys.argv[1])
"""


def test_kill_9_during_a_save_keeps_the_old_checkpoint(tmp_path):
    """A real process killed with SIGKILL at the worst moment of a save (new weights renamed in, card not yet):
    the old pair still loads, whole, and leftover temporary files are ignored."""
    path = tmp_path / "last_denoiser"
    import torch

    torch.manual_seed(0)
    old_model = build_denoiser("fastdn", width=8, blocks=1)
    save_weights(old_model, path)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(KILLER), str(path)], env=env, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert leftovers and all(n.endswith((".tmp", ".bak")) for n in leftovers)  # the kill left its files
    model, _card = load_weights(path)
    for key, value in old_model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    save_weights(old_model, path)  # the next save of the pair clears what the kill left
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


KILLED_WRITING = """
import os, signal, sys
import numpy as np, pydicom
from napari_lidnet.cli import main
kind = sys.argv[1]
if kind == "dicom":
    real = pydicom.dcmwrite
    done = []
    def write_then_die(path, *args, **kwargs):
        real(path, *args, **kwargs)
        done.append(path)
        if len(done) == 2:
            os.kill(os.getpid(), signal.SIGKILL)  # killed with 2 of the series' slices written
    pydicom.dcmwrite = write_then_die
else:
    def half_then_die(fh, *args, **kwargs):
        fh.write(b"\\x93NUMPY half")
        fh.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    np.save = half_then_die
main(sys.argv[2:])
"""


@pytest.mark.parametrize("kind", ["dicom", "npy", "csv"])
def test_a_denoise_or_detect_killed_mid_write_leaves_no_output_and_a_rerun_writes_it(corpus, models, tmp_path, kind):
    """Regression: `lidnet denoise` killed mid-write left a DICOM folder of 3 of 12 valid slices (a whole,
    shorter series to look at) or an empty .npy, and every rerun was refused ('already exists'). A real SIGKILL
    during the write now leaves nothing under the output's name, and the same command then writes it."""
    out = tmp_path / {"dicom": "den_series", "npy": "den.npy", "csv": "boxes.csv"}[kind]
    cmd = "detect" if kind == "csv" else "denoise"
    args = [str(a) for a in _cli_args(cmd, corpus / "dicom" / "good", out)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    script = textwrap.dedent(KILLED_WRITING)
    if kind == "csv":  # the boxes are written with the csv module: killed after their first row
        script = script.replace("main(sys.argv[2:])", textwrap.dedent("""
            import csv
            real_rows = csv.DictWriter.writerows
            def rows_then_die(self, rows):
                real_rows(self, list(rows)[:1])
                os.kill(os.getpid(), signal.SIGKILL)
            csv.DictWriter.writerows = rows_then_die
            main(sys.argv[2:])"""))
    proc = subprocess.run([sys.executable, "-c", script, kind, *args], env=env, timeout=300, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["models"]  # nothing visible
    assert main(args) == 0 and out.exists()  # the rerun is not refused
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["models", out.name])  # leftovers cleared


# ------------------------------------------------------------------------------------------------- widgets


@pytest.mark.filterwarnings("ignore::UserWarning")  # the same notes, checked in the status text
def test_load_ct_widget_messages(make_napari_viewer, qtbot, corpus):
    from napari_lidnet._widgets.load_ct import LoadCTWidget

    viewer = make_napari_viewer()
    widget = LoadCTWidget(viewer)
    viewer.window.add_dock_widget(widget)
    before = snapshot(corpus)
    for case in ("arrays/huge.npy", "arrays/uint8.npy", "dicom/truncated", "dicom/mixedorient", "arrays/nan.npy",
                 "dicom/partly_unreadable"):  # fmt: skip
        n = len(viewer.layers)
        widget.path_edit.setText(str(corpus / case))
        widget.open_button.click()
        qtbot.waitUntil(lambda: not widget._workers, timeout=10000)
        what, pattern = CORPUS[case]
        assert re.search(pattern, widget.status.text()), (case, widget.status.text())
        assert len(viewer.layers) == n + (what == "warned"), case
    assert snapshot(corpus) == before


def _denoise_widget(viewer, qtbot, models):
    from napari_lidnet._widgets.denoise_detect import DenoiseDetectWidget

    widget = DenoiseDetectWidget(viewer)
    qtbot.addWidget(widget)
    widget.device_combo.setCurrentText("cpu")
    widget.denoiser_combo.setCurrentText("tiny_denoiser (user)")
    widget.detector_combo.setCurrentText("tiny_detector (user)")
    return widget


def _refusal(widget, qtbot) -> str:
    """Run the dock and wait: the worker checks the pixels (off the viewer's thread) and refuses; its message."""
    with qtbot.waitSignal(widget.job_finished, timeout=20000):
        assert widget.run() is not None
    return widget.status.text()


def test_denoise_widget_refuses_a_4d_layer(make_napari_viewer, qtbot, models):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((2, 2, 16, 16), np.float32), name="4d")
    widget = _denoise_widget(viewer, qtbot, models)
    assert widget.run() is None and "has 4 dimensions" in widget.status.text()


def test_denoise_widget_refuses_nan(make_napari_viewer, qtbot, models):
    viewer = make_napari_viewer()
    hu = good_volume()
    hu[1, 2, 3] = np.nan
    viewer.add_image(hu, name="nan")
    widget = _denoise_widget(viewer, qtbot, models)
    assert "NaN" in _refusal(widget, qtbot) and [ly.name for ly in viewer.layers] == ["nan"]


def test_denoise_widget_refuses_a_blank_image_as_the_command_line_does(make_napari_viewer, qtbot, models, corpus):
    """Regression: `lidnet denoise` refused a blank (constant) image, the dock ran on it."""
    viewer = make_napari_viewer()
    viewer.add_image(np.load(corpus / "arrays" / "constant.npy"), name="blank")
    widget = _denoise_widget(viewer, qtbot, models)
    assert "a blank image" in _refusal(widget, qtbot) and [ly.name for ly in viewer.layers] == ["blank"]


def test_denoise_widget_refuses_what_is_not_ct_as_the_command_line_does(make_napari_viewer, qtbot, models, corpus):
    """Regression: an MR series opened as a layer named "CT ...", was denoised and exported as CT, while the
    command line refused it. The dock refuses another modality, and an image that nothing says is CT whose values
    do not look like HU; the MR layer is named by its modality."""
    viewer = make_napari_viewer()
    viewer.open(str(corpus / "dicom" / "mr"), plugin="napari-lidnet")
    viewer.add_image(np.random.default_rng(0).uniform(2, 1600, (2, 16, 16)).astype(np.float32), name="t1 array")
    widget = _denoise_widget(viewer, qtbot, models)
    mr = viewer.layers[0]
    assert mr.metadata["modality"] == "MR"
    for name, says in ((mr.name, "modality 'MR' is not CT"), ("t1 array", "no pixel below -50 HU")):
        widget.image_combo.setCurrentText(name)
        assert says in _refusal(widget, qtbot) and len(viewer.layers) == 2, name


def test_roi_compare_notes_nan_pixels(make_napari_viewer, qtbot):
    from napari_lidnet._widgets.roi_compare import ROICompareWidget

    viewer = make_napari_viewer()
    hu = good_volume()[0]
    hu[5, 5] = np.nan
    viewer.add_image(hu, name="nan")
    widget = ROICompareWidget(viewer)
    shapes = viewer.add_shapes(name="regions")
    gen = widget.generation
    shapes.add_rectangles(np.array([[0, 0], [10, 10]]))
    qtbot.waitUntil(lambda: widget.generation > gen and widget._worker is None and bool(widget.rows), timeout=10000)
    assert "NaN" in widget.rows[0]["note"], widget.rows


def test_finetune_widget_refuses_nan(make_napari_viewer, qtbot, models, tmp_path):
    from test_finetune_widget import make_widget

    viewer = make_napari_viewer()
    hu = np.repeat(good_volume(), 2, axis=0)
    hu = np.tile(hu, (1, 4, 4))
    hu[1, 2, 3] = np.nan
    viewer.add_image(hu, name="nan CT")
    widget = make_widget(viewer, qtbot, "nan-run")
    widget.set_images(["nan CT"])
    assert widget.start() is None
    assert "'nan CT': the full-dose image has NaN or infinite values" in widget.status.text()
    assert not (tmp_path / "runs").exists()


def test_a_stop_during_the_last_validation_still_exports(tmp_path, capsys, models, monkeypatch):
    """Regression: a Ctrl-C that arrived during the final validation let the run finish, then exited 130
    and skipped --export without a word. The stop acts between steps only; a finished run exports."""
    import os
    import signal

    from napari_lidnet._training.trainer import Trainer

    original, calls = Trainer.validate, []

    def validate_then_ctrl_c(self):
        calls.append(1)
        if len(calls) == 2:  # the validation after the last stage
            os.kill(os.getpid(), signal.SIGINT)
        return original(self)

    monkeypatch.setattr(Trainer, "validate", validate_then_ctrl_c)
    rc, lines = run_cli(capsys, "train", "--data", _dataset(tmp_path / "data"), "--out", tmp_path / "run", *TRAIN,
                        "--export", "late")  # fmt: skip
    assert rc == 0 and len(calls) == 2 and (models / "late_denoiser.safetensors").exists(), lines


def test_inputs_that_do_not_say_ct_must_look_like_hu(tmp_path, models, capsys):
    """Regression: an MR T1 NIfTI (values 2..1626) and a secondary capture without a modality (stored values
    0..4000, no rescale) were denoised and written out as CT. Inputs that do not say CT must show air or fat;
    a CT array with air still runs, and a batch counts the MR file as not processed while it does the CT one."""
    import nibabel as nib
    from conftest import make_ct_slice

    rng = np.random.default_rng(0)
    mr = rng.uniform(2, 1626, (4, 32, 32)).astype(np.float32)
    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(mr, np.eye(4)), str(tmp_path / "in" / "t1.nii.gz"))
    ct = mr - 1500.0  # the same shapes with air in them
    nib.save(nib.Nifti1Image(ct, np.eye(4)), str(tmp_path / "in" / "ct.nii.gz"))
    (tmp_path / "sc").mkdir()
    make_ct_slice(tmp_path / "sc" / "sc.dcm", rng.integers(0, 4000, (32, 32)).astype(np.float64), series_uid="1.2.9",
                  position=(0.0, 0.0, 0.0), slope=1.0, intercept=0.0, modality="")  # fmt: skip
    before = snapshot(tmp_path / "in")
    for cmd in ("denoise", "detect"):
        for src, lowest in ((tmp_path / "in" / "t1.nii.gz", r"values 2\.\d+ to 162\d"), (tmp_path / "sc", "values 0 ")):
            rc, lines = run_cli(capsys, *_cli_args(cmd, src, tmp_path / ("o.npy" if cmd == "denoise" else "o.csv")))
            assert_refused(rc, lines, cmd, rf"no pixel below -50 HU \({lowest}.*so it is not CT in HU")
    assert snapshot(tmp_path / "in") == before and not list(tmp_path.glob("o.*"))
    report = batch.run_batch(tmp_path / "in", tmp_path / "out", "denoise", load_weights(models / "tiny_denoiser")[0])
    assert len(report.written) == 1 and report.written[0].name.startswith("ct_"), report
    assert len(report.left_out) == 1 and not report.failed
    assert report.left_out[0].startswith("t1.nii.gz: no pixel below -50 HU")
    args = ["denoise", tmp_path / "in", tmp_path / "out2", "--all-series", *MODEL_ARGS["denoise"], "--device", "cpu"]
    rc, lines = run_cli(capsys, *args)  # left out for good is not a failure: a re-run would not change it
    assert rc == 0 and lines[-2].startswith("note: 1 series left out (first: t1.nii.gz: no pixel below -50"), lines


def test_option_mistakes_get_plain_messages(corpus, capsys):
    """Regression: `--threshold abc` said "invalid _score value" (a function's name), and --series was
    ignored for an input that holds one volume."""
    with pytest.raises(SystemExit):
        main(["detect", str(corpus / "arrays" / "good.npy"), "--out", "x.csv", "--threshold", "abc"])
    assert "a score threshold is a number in [0, 1], got 'abc'" in capsys.readouterr().err
    rc, lines = run_cli(capsys, "detect", corpus / "arrays" / "good.npy", "--out", corpus / "out" / "s.csv",
                        "--series", "1.2.3")  # fmt: skip
    assert_refused(rc, lines, "detect", r"a series UID picks one DICOM series; this array input holds one volume")


def test_a_device_this_machine_lacks_is_refused(corpus, capsys, tmp_path):
    """Regression: `--device cuda` without CUDA ran on the CPU with a notice and exit 0; a device asked for by
    name and not here (no machine has 99 GPUs) is now refused before anything runs, as is a name that is not one
    of auto, cpu, cuda, cuda:N, mps (torch's xpu, meta, ...)."""
    out = tmp_path / "den.npy"
    for device, said in (("cuda:99", "'cuda:99' is not available on this machine; use cpu or auto"),
                         ("xpu", "unknown device 'xpu'"), ("meta", "unknown device 'meta'")):  # fmt: skip
        with pytest.raises(SystemExit) as exc:
            main(["denoise", str(corpus / "arrays" / "good.npy"), str(out), "--device", device])
        assert exc.value.code == 2 and said in capsys.readouterr().err
    assert not out.exists()
    assert main(["denoise", str(corpus / "arrays" / "good.npy"), str(out), "--device", "cpu"]) == 0 and out.exists()


def test_an_image_without_one_finite_pixel_opens_with_finite_contrast_limits(make_napari_viewer, tmp_path):
    """Regression: an all-NaN NIfTI opened with File > Open got contrast limits (nan, nan); napari's contrast
    control raised, the layer was left half-added and closing the viewer raised too. It opens (the reader says
    what is wrong with it), with finite limits, and the Denoise dock refuses it as before."""
    import nibabel as nib

    nib.save(nib.Nifti1Image(np.full((6, 5, 3), np.nan, np.float32), np.diag([0.7, 0.7, 2.0, 1.0])),
             str(tmp_path / "allnan.nii"))  # fmt: skip
    viewer = make_napari_viewer()
    with pytest.warns(UserWarning, match="NaN") as said:
        layers = viewer.open(str(tmp_path / "allnan.nii"), plugin="napari-lidnet")
    assert len(layers) == 1 and np.isfinite(layers[0].contrast_limits).all()
    assert not [w for w in said if w.category is RuntimeWarning]  # numpy's "All-NaN slice" reached the user too
    assert [ly.name for ly in viewer.layers] == [layers[0].name]


def test_a_calibrated_detector_outlives_the_pair_it_came_from(tmp_path, models):
    """Regression: `lidnet calibrate --model lab --name site` copied the lab pair's `pair_of` onto
    site_detector, so deleting the lab models made 'site' vanish from every list, its files still there."""
    from napari_lidnet._training.export import export_detector
    from napari_lidnet.models.registry import list_models, load_model

    run = tmp_path / "run"
    tiny_models(run, prefix="best")
    export_run(run, "lab")
    detector, card = load_model("lab", "detector")
    assert card["pair_of"] == ["lab_denoiser", "lab_detector"]
    export_detector(detector, card, "site", {"calibration": {"threshold": 0.4}})
    for p in models.glob("lab_*"):
        p.unlink()
    assert "site_detector" in [m.name for m in list_models("detector")]
    assert "pair_of" not in load_model("site", "detector")[1]


def test_an_empty_boxes_file_is_refused_a_header_alone_is_no_boxes(tmp_path) -> None:
    """Regression: `lidnet adapt --boxes empty.csv` took an empty file for "no boxes" without a word."""
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match=r"empty\.csv: not a box table or review of LIDnet .the file is empty"):
        read_boxes_csv(tmp_path / "empty.csv")
    (tmp_path / "none.csv").write_text("slice,x1,y1,x2,y2,score\n")  # what detect writes when it finds nothing
    assert read_boxes_csv(tmp_path / "none.csv").shape == (0, 6)
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"column 'slice'"):
        read_boxes_csv(tmp_path / "other.csv")
