"""Batch processing of a folder of DICOM series: one output per series, and an interrupted run resumes without
redoing or losing finished outputs."""

import os
import shutil
import signal
from hashlib import sha256
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import listing, synthetic_hu, write_series
from pydicom.uid import generate_uid

from napari_lidnet.batch import MARKER, PARTIAL, output_name, run_batch
from napari_lidnet.cli import main
from napari_lidnet.inference import MAX_BOXES_PER_SLICE
from napari_lidnet.io.open_ct import open_ct
from napari_lidnet.io.saved_boxes import read_boxes_csv
from napari_lidnet.models.denoisers import build_denoiser
from napari_lidnet.models.detector import LesionDetector
from napari_lidnet.models.weights import save_weights


@pytest.fixture
def archive(tmp_path):
    """Three CT series in nested folders (3 slices of 32x32 each)."""
    root = tmp_path / "archive"
    for k, desc in enumerate(["abdomen", "chest", "pelvis"]):
        write_series(
            root / f"patient{k}" / "study",
            synthetic_hu((3, 32, 32), seed=k),
            series_uid=generate_uid(),
            description=desc,
        )
    return root


def _denoiser():
    torch.manual_seed(0)
    return build_denoiser("fastdn", width=8, blocks=1).eval()


def test_denoise_all_series_then_resume(archive, tmp_path):
    out = tmp_path / "out"
    report = run_batch(archive, out, "denoise", _denoiser())
    assert len(report.written) == 3 and not report.skipped
    for folder in report.written:
        (vol,) = open_ct(folder)
        assert vol.hu.shape == (3, 32, 32) and "denoised" in vol.metadata["series_description"]

    # interrupt: one output lost, one half-written leftover
    lost = report.written[1]
    for f in lost.iterdir():
        f.unlink()
    lost.rmdir()
    (out / f"{PARTIAL}{lost.name}").mkdir()
    (out / f"{PARTIAL}{lost.name}" / "slice0.dcm").write_bytes(b"half")
    killed = out / f".{PARTIAL}{lost.name}.partial-{2**22 + 9}.0badc0de"  # a killed writer's
    killed.mkdir()
    (killed / "IM00001.dcm").write_bytes(b"a whole slice of a series never finished")
    kept = {p: sorted(f.stat().st_mtime_ns for f in p.iterdir()) for p in report.written if p != lost}

    again = run_batch(archive, out, "denoise", _denoiser())
    assert again.written == [lost] and sorted(again.skipped) == sorted(kept)
    assert {p: sorted(f.stat().st_mtime_ns for f in p.iterdir()) for p in kept} == kept  # untouched
    assert not list(out.glob(f"{PARTIAL}*")) and not killed.exists()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == sorted(p.name for p in report.written)


def test_a_source_changed_since_its_output_is_said_not_skipped_as_done(archive, tmp_path):
    """Regression: a series topped up after an incomplete transfer (6 -> 8 slices) was skipped as
    'already complete', its output short of two slices, without a word. A source whose files changed since its
    output was written is said and left (outputs never overwrite); moving the old output away redoes it."""
    out = tmp_path / "out"
    detector = LesionDetector(width=4).eval()
    first = run_batch(archive, out, "detect", detector)
    assert len(first.written) == 3
    chest = next(p for p in archive.rglob("*") if p.is_dir() and any(p.glob("*.dcm"))
                 and "chest" in str(open_ct(p)[0].metadata.get("series_description")))  # fmt: skip
    uid = open_ct(chest)[0].metadata["series_uid"]
    more = write_series(tmp_path / "more", synthetic_hu((5, 32, 32), seed=1), series_uid=uid, description="chest",
                        z_positions=[10.0 + 2.5 * k for k in range(5)])  # fmt: skip
    for f in more[3:]:  # two more slices of the same series arrive (z 17.5 and 20 mm)
        shutil.copy(f, chest / f"late_{f.name}")
    again = run_batch(archive, out, "detect", detector)
    stale = next(p for p in first.written if p.name.startswith("chest"))
    assert not again.written and len(again.skipped) == 2
    assert any(s.startswith(f"{stale.name}: its source ('chest'") and "move it away" in s for s in again.left_out)
    stale.rename(tmp_path / stale.name)  # moved away: redone from the whole series
    third = run_batch(archive, out, "detect", detector)
    assert third.written == [stale] and not third.left_out, (third.failed, third.left_out, third.skipped)


def test_interrupted_run_with_workers_resumes_without_redoing_or_losing_outputs(archive, tmp_path):
    """Ctrl-C after the second series (two DataLoader workers reading ahead), then the same command again."""
    out = tmp_path / "out"
    seen = []

    def interrupt_after_two(done, total, name):
        seen.append((done, total))
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_batch(archive, out, "denoise", _denoiser(), progress=interrupt_after_two, workers=2)
    first = {p: sorted(f.stat().st_mtime_ns for f in p.iterdir()) for p in out.iterdir() if not p.name.startswith(".")}
    assert len(first) == 2 and seen == [(1, 3), (2, 3)]
    again = run_batch(archive, out, "denoise", _denoiser(), workers=2)
    assert sorted(again.skipped) == sorted(first) and len(again.written) == 1
    assert {p: sorted(f.stat().st_mtime_ns for f in p.iterdir()) for p in first} == first  # not redone
    reference = run_batch(archive, tmp_path / "uninterrupted", "denoise", _denoiser())
    for a, b in zip(sorted(p for p in out.iterdir() if not p.name.startswith(".")), sorted(reference.written)):
        assert a.name == b.name
        assert np.array_equal(open_ct(a)[0].hu, open_ct(b)[0].hu)  # same outputs as a run never interrupted


def test_detect_all_series_from_the_command_line(archive, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NAPARI_LIDNET_MODEL_DIR", str(tmp_path / "models"))
    torch.manual_seed(0)
    save_weights(LesionDetector(width=4).eval(), tmp_path / "models" / "tiny_detector")
    out = tmp_path / "boxes"
    args = [
        "detect",
        str(archive),
        "--out",
        str(out),
        "--all-series",
        "--model",
        "tiny_detector",
        "--threshold",
        "0.0",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    files = sorted(out.glob("*.csv"))
    assert len(files) == 3 and all(read_boxes_csv(f).shape[1] == 6 for f in files)
    full = [(np.bincount(read_boxes_csv(f)[:, 0].astype(int)) >= MAX_BOXES_PER_SLICE).sum() for f in files]
    err = capsys.readouterr().err  # at --threshold 0 every slice keeps the most boxes: said, as for one file
    assert full == [3, 3, 3] and f"3 slice(s) reached {MAX_BOXES_PER_SLICE} boxes" in err, err
    assert "(and 2 other outputs)" in err, err
    assert main(args) == 0  # nothing left to do
    assert sorted(out.glob("*.csv")) == files


def test_bad_batch_input(tmp_path, archive):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        run_batch(tmp_path / "empty", tmp_path / "o", "denoise", _denoiser())
    with pytest.raises(ValueError, match="inside the input"):
        run_batch(archive, archive / "out", "denoise", _denoiser())
    assert not (archive / "out").exists()
    assert output_name("Abd / 5mm", "1.2.840.5678901234") == "Abd_5mm_" + sha256(b"1.2.840.5678901234").hexdigest()[:12]


def test_a_batch_that_writes_nothing_leaves_nothing(tmp_path):
    """Every series fails (here: not CT): the run reports it, and the output folder it made is gone again."""
    write_series(tmp_path / "mr", synthetic_hu((2, 16, 16)), series_uid=generate_uid(), modality="MR")
    report = run_batch(tmp_path / "mr", tmp_path / "out", "denoise", _denoiser())
    assert report.left_out and not report.failed and not report.written and not (tmp_path / "out").exists()
    (tmp_path / "mine").mkdir()  # a folder the user made stays
    run_batch(tmp_path / "mr", tmp_path / "mine", "denoise", _denoiser())
    assert (tmp_path / "mine").is_dir()


def test_outputs_never_mix_with_other_files(archive, tmp_path):
    """A batch writes into a new or empty folder, or finishes an earlier batch run of the same task there; a folder
    holding anything else (an earlier single-series output) or another task's run is refused, untouched."""
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "IM00001.dcm").write_bytes(b"an earlier output")
    with pytest.raises(ValueError, match=r"is not empty \(it holds other files: IM00001.dcm\); outputs never mix"):
        run_batch(archive, taken, "denoise", _denoiser())
    assert [p.name for p in taken.iterdir()] == ["IM00001.dcm"]
    first = run_batch(archive, tmp_path / "out", "denoise", _denoiser())
    with pytest.raises(ValueError, match=r"it holds a batch denoise run"):
        run_batch(archive, tmp_path / "out", "detect", LesionDetector(width=4).eval())
    (tmp_path / "out" / MARKER).unlink()  # a run of an earlier version, without the marker, is still finished
    (tmp_path / "out" / ".DS_Store").write_bytes(b"")
    again = run_batch(archive, tmp_path / "out", "denoise", _denoiser())
    assert sorted(again.skipped) == sorted(first.written) and not again.written


def test_a_rerun_with_other_settings_is_refused_not_reported_complete(archive, tmp_path):
    """Regression: a re-run with another model, --remove-sd or --threshold skipped every series as 'already
    complete' and kept the old outputs. The marker records the settings; a re-run must match them."""
    out = tmp_path / "out"
    first = run_batch(archive, out, "denoise", _denoiser())
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    other = build_denoiser("fastdn", width=8, blocks=1).eval()  # another random draw: other weights
    with pytest.raises(ValueError, match=r"other settings \(another model\); outputs never mix"):
        run_batch(archive, out, "denoise", other)
    with pytest.raises(ValueError, match=r"other settings \(remove-sd all \(now 5\)\)"):
        run_batch(archive, out, "denoise", _denoiser(), remove_sd=5.0)
    with pytest.raises(ValueError, match=r"other settings \(leave-sd none \(now 10\)\)"):
        run_batch(archive, out, "denoise", _denoiser(), leave_sd=10.0)
    with pytest.raises(ValueError, match="not both"):
        run_batch(archive, tmp_path / "both", "denoise", _denoiser(), remove_sd=5.0, leave_sd=10.0)
    assert not (tmp_path / "both").exists()
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing touched
    again = run_batch(archive, out, "denoise", _denoiser())  # the same settings: finishes (here: nothing to do)
    assert sorted(again.skipped) == sorted(first.written)
    left = tmp_path / "left"
    run_batch(archive, left, "denoise", _denoiser(), leave_sd=10.0)
    with pytest.raises(ValueError, match=r"other settings \(leave-sd 10 \(now none\)\)"):
        run_batch(archive, left, "denoise", _denoiser())  # a key of the earlier run only is a difference too
    assert run_batch(archive, out, "denoise", _denoiser(), leave_sd=0.0).skipped  # leaving 0 HU is removing all
    boxes = tmp_path / "boxes"
    detector = LesionDetector(width=4).eval()
    run_batch(archive, boxes, "detect", detector, threshold=0.3)
    with pytest.raises(ValueError, match=r"threshold 0.3 \(now 0.05\)"):
        run_batch(archive, boxes, "detect", detector, threshold=0.05)


def test_output_names_are_unique_and_safe():
    """UIDs with the same last 12 characters get different names; dots, spaces, non-ASCII letters and a leading
    '.partial-' stay file-system safe and never look like a partial output."""
    a, b = "1.2.840.1.5678901234", "1.2.840.2.5678901234"
    assert output_name("CT", a) != output_name("CT", b)
    assert output_name("Thorax 1.5 mm Lunge/Weich", a).startswith("Thorax_1.5_mm_Lunge_Weich_")
    assert output_name("Schädel nativ", a).startswith("Schädel_nativ_")
    assert output_name(".partial-x", a).startswith("partial-x_") and output_name("...", a).startswith("series_")


def test_nifti_files_are_inputs_too(archive, tmp_path):
    """NIfTI files under the archive are processed beside its DICOM series: denoised into .nii.gz with their
    geometry, one CSV each for detection, skipped when finished, a broken one reported while the rest go on."""
    from napari_lidnet.io.nifti import read_nifti, write_nifti
    from napari_lidnet.io.volume import CTVolume

    vol = CTVolume(synthetic_hu((3, 32, 32), seed=7), (2.0, 0.8, 0.8), (10.0, -50.0, -60.0))
    write_nifti(archive / "chest.nii.gz", vol)
    (archive / "nested").mkdir()
    write_nifti(archive / "nested" / "chest.nii.gz", vol)  # the same name elsewhere: its own output
    (archive / "nested" / "broken.nii.gz").write_bytes(b"not gzip")
    out = tmp_path / "out"
    report = run_batch(archive, out, "denoise", _denoiser())
    niis = sorted(p for p in report.written if p.name.endswith(".nii.gz"))
    assert len(report.written) == 5 and len(niis) == 2 and niis[0].name != niis[1].name
    assert len(report.failed) == 1 and "broken.nii.gz" in report.failed[0]
    back = read_nifti(niis[0])
    np.testing.assert_allclose(back.affine(), vol.affine(), atol=1e-5)
    assert back.hu.shape == vol.hu.shape and not np.array_equal(back.hu, vol.hu)
    again = run_batch(archive, out, "denoise", _denoiser())
    assert not again.written and len(again.skipped) == 5
    detected = run_batch(archive, tmp_path / "boxes", "detect", LesionDetector(width=4).eval())
    assert sorted(p.suffix for p in detected.written) == [".csv"] * 5
    header = "slice,x1,y1,x2,y2,score,width_mm,height_mm,lps_x_mm,lps_y_mm,lps_z_mm,lesion"
    assert all(p.read_text().startswith(header) for p in detected.written)


def test_one_nifti_file_is_a_batch_of_one(archive, tmp_path):
    """Regression: `--all-series` on one NIfTI file said 'unreadable DICOM file'; a single DICOM file
    worked. Both are a batch of one now; a folder of NIfTI files opened as one input names them."""
    from napari_lidnet.io.nifti import write_nifti

    (vol,) = open_ct(next(p for p in archive.iterdir() if p.is_dir()))
    write_nifti(tmp_path / "one.nii.gz", vol)
    report = run_batch(tmp_path / "one.nii.gz", tmp_path / "out", "detect", LesionDetector(width=4).eval())
    assert len(report.written) == 1 and report.written[0].name.startswith("one_") and not report.failed
    (tmp_path / "niis").mkdir()
    write_nifti(tmp_path / "niis" / "a.nii.gz", vol)
    with pytest.raises(ValueError, match=r"holds 1 NIfTI file\(s\) \(a.nii.gz, ...\).*--all-series"):
        open_ct(tmp_path / "niis")


def test_series_this_program_wrote_are_not_denoised_again_and_are_detected_on(archive, tmp_path):
    """Regression: a batch over a folder that also held an earlier denoised output denoised it again. Series
    whose Contributing Equipment is napari-lidnet, and NIfTI files whose header names it (so that a
    NIfTI output is not denoised again), are left out of a denoise run with a note. A detect run takes them (so
    that `lidnet detect --all-series` over a denoised archive does detect something): the detector reads the
    denoised images, as in the viewer."""
    first = run_batch(archive, tmp_path / "den", "denoise", _denoiser())
    shutil.copytree(archive, tmp_path / "both" / "scans")
    shutil.copytree(first.written[0], tmp_path / "both" / "denoised")
    assert main(["denoise", str(first.written[0]), str(tmp_path / "both" / "denoised.nii.gz"), "--device", "cpu"]) == 0
    again = run_batch(tmp_path / "both", tmp_path / "den2", "denoise", _denoiser())
    assert len(again.written) == len(first.written) and len(again.left_out) == 2
    assert all("written by napari-lidnet; not denoised again" in note for note in again.left_out)
    report = run_batch(tmp_path / "both", tmp_path / "boxes", "detect", LesionDetector(width=4).eval())
    assert len(report.written) == len(first.written) + 2 and not report.failed and not report.left_out


def test_a_batch_never_writes_into_an_archive_or_a_folder_of_the_users_own_files(archive, tmp_path, model_dir,
                                                                                 capsys):  # fmt: skip
    """Regression: a folder of folders (the archive itself, one patient given as the input) or of the
    user's own CSV files was taken for a batch output folder and written into. Refused in one line, untouched."""
    patient = next(p for p in sorted(archive.iterdir()))
    reports = tmp_path / "reports"
    reports.mkdir()
    (reports / "my_boxes.csv").write_text("slice,x1\n0,1\n")
    scans = tmp_path / "scans"
    (scans / "old patient").mkdir(parents=True)
    before = listing(tmp_path)
    cases = (
        (["denoise", str(patient), str(archive)], "lies inside the output folder"),  # input inside the output
        (["detect", str(patient), "--out", str(reports)], "it holds other files: my_boxes.csv"),
        (["denoise", str(patient), str(scans)], "it holds other files: old patient"),
    )
    for args, words in cases:
        assert main([*args, "--all-series", "--model", {"denoise": "tiny_denoiser", "detect": "tiny_detector"}[args[0]],
                     "--device", "cpu", "--workers", "0"]) == 2  # fmt: skip
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err, err
    assert listing(tmp_path) == before


def test_series_without_a_uid_keep_their_output_name_whatever_path_reaches_the_archive(tmp_path, monkeypatch):
    """Regression: a series without SeriesInstanceUID was named from its folder as typed, so the same
    archive given as a relative path, an absolute one, or after a move was denoised again under a second name."""
    write_series(tmp_path / "arch" / "S", synthetic_hu((3, 32, 32)), series_uid="", description="Anon")
    out = tmp_path / "out"
    monkeypatch.chdir(tmp_path)
    first = run_batch("arch", out, "denoise", _denoiser())
    assert len(first.written) == 1
    again = run_batch(tmp_path / "arch", out, "denoise", _denoiser())
    (tmp_path / "arch").rename(tmp_path / "moved")
    moved = run_batch(tmp_path / "moved", out, "denoise", _denoiser())
    assert again.skipped == first.written and moved.skipped == first.written
    assert not again.written and not moved.written
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [first.written[0].name]


def test_a_failure_names_its_series_and_says_whether_a_rerun_can_mend_it(archive, tmp_path, model_dir, capsys):
    """Regression: failure lines did not name the series, and a slice truncated inside its pixel data
    was reported as 'run again to retry' though every re-run fails the same way. A file gone during the run (an
    error of the file system) may be mended by a re-run."""
    chest = sorted((archive / "patient1" / "study").iterdir())
    pelvis = sorted((archive / "patient2" / "study").iterdir())
    data, other = chest[1].read_bytes(), pelvis[0].read_bytes()
    chest[1].write_bytes(data[:-500])  # cut inside its pixel data
    pelvis[0].write_bytes(other[:-500])
    args = ["denoise", str(archive), str(tmp_path / "out"), "--all-series", "--model", "tiny_denoiser",
            "--device", "cpu"]
    for _ in range(2):  # the same on a re-run
        assert main([*args, "--workers", "0"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        err = lines[-1]
        listed = [line for line in lines if line.startswith("failed: ")]  # each one named, not only the first
        assert len(listed) == 2 and any(f"{pelvis[0]}: pixel data cannot be read" in line for line in listed), lines
        first = chest[1] if "(first: series 'chest'" in err else pelvis[0]  # series run in UID order (random)
        assert "2 series not processed (first: series '" in err and f"{first}: pixel data cannot be read" in err, err
        assert err.endswith(f"fix or remove {first} (and the files of 1 other series): a re-run fails the same way")
    chest[1].write_bytes(data)
    pelvis[0].write_bytes(other)
    folders = {"abdomen": "patient0", "chest": "patient1", "pelvis": "patient2"}  # series run in UID order (random)
    victim = []

    def remove_a_file_of_a_series_not_yet_run(done, total, name):
        if done == 1:  # the first series is written: take a file of another one away
            victim.append(next(d for d in sorted(folders) if not name.startswith(d)))
            sorted((archive / folders[victim[0]] / "study").iterdir())[0].unlink()

    report = run_batch(archive, tmp_path / "gone", "denoise", _denoiser(),
                       progress=remove_a_file_of_a_series_not_yet_run)  # fmt: skip
    assert len(report.written) == 2 and len(report.failed) == 1 and report.failed[0].fix is None
    assert report.failed[0].startswith(f"series '{victim[0]}' (1.2.") and "No such file" in report.failed[0]
    from napari_lidnet.cli.images import failed_summary as _failed_summary

    assert _failed_summary(report.failed, "2 written").endswith("2 written; run again to retry")


def test_a_second_run_on_one_output_folder_is_refused_and_leaves_the_first_ones_work(archive, tmp_path, capsys,
                                                                                     monkeypatch):  # fmt: skip
    """Regression: a second run into the folder a first run was writing deleted the first one's
    half-written output, and the first died on a bare 'No such file or directory'. The folder is locked for the
    whole run: the second is refused in one line (exit 2), and the lock goes with the process, however it ends."""
    import subprocess
    import sys

    save_weights(_denoiser(), tmp_path / "models" / "same_denoiser")  # the second run's settings match the first's
    monkeypatch.setenv("NAPARI_LIDNET_MODEL_DIR", str(tmp_path / "models"))
    out = tmp_path / "out"
    in_progress = out / f"{PARTIAL}chest_0123456789ab"
    second = []

    def start_a_second_run(done, total, name):
        if done == 1:
            in_progress.mkdir()  # as the first run leaves it while it writes
            (in_progress / "IM00001.dcm").write_bytes(b"being written")
            second.append(main(["denoise", str(archive), str(out), "--all-series", "--model", "same_denoiser",
                                "--device", "cpu"]))  # fmt: skip
            second.append(capsys.readouterr().err)
            assert in_progress.is_dir()
            shutil.rmtree(in_progress)

    first = run_batch(archive, out, "denoise", _denoiser(), progress=start_a_second_run)
    assert len(first.written) == 3 and not first.failed and second[0] == 2
    assert second[1].count("\n") == 1 and f"{out} is being written by another batch run (pid " in second[1]
    from napari_lidnet.batch import LOCK

    assert not (out / LOCK).exists()

    # a run killed (SIGKILL, no clean-up) after its first series: the next run takes the folder and finishes it
    shutil.rmtree(out)
    killed = (f"import os, signal, sys, torch; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
              "from test_batch import _denoiser; from napari_lidnet.batch import run_batch; "
              f"run_batch({str(archive)!r}, {str(out)!r}, 'denoise', _denoiser(), "
              "progress=lambda *a: os.kill(os.getpid(), signal.SIGKILL))")  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run([sys.executable, "-c", killed], env=env, timeout=300)
    assert proc.returncode == -signal.SIGKILL and (out / LOCK).exists()
    (out / f"{PARTIAL}left_0123456789ab").mkdir()  # what it was writing when it died
    rest = run_batch(archive, out, "denoise", _denoiser())
    assert len(rest.written) == 2 and len(rest.skipped) == 1 and not list(out.glob(f"{PARTIAL}*"))


def test_a_full_disk_stops_the_batch_in_one_line_that_names_the_output_and_the_resume(archive, tmp_path, capsys):
    """Regression: a full disk printed pydicom's 900-character text with a traceback and no path, and the
    batch did not say which output failed or that a re-run finishes it. A real file-system refusal (a file-size
    limit on this process: writes past it fail with EFBIG, as a full disk fails them with ENOSPC) now ends it with
    the output, the reason and what to do; nothing half-written is left, and a re-run finishes the batch."""
    import resource

    from napari_lidnet.cli import error_message

    limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of the process being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (1200, limit[1]))  # the run's marker fits, a 32 x 32 slice does not
    try:
        with pytest.raises(ValueError) as caught:
            run_batch(archive, tmp_path / "out", "denoise", _denoiser())
        single = main(["denoise", str(next(archive.glob("patient0/study"))), str(tmp_path / "one"), "--device", "cpu"])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limit)
        signal.signal(signal.SIGXFSZ, previous)
    msg = error_message(caught.value)
    assert "\n" not in msg and "Traceback" not in msg and len(msg) < 300, msg
    assert "File too large" in msg and "0 written before it" in msg and "then run again to finish" in msg, msg
    assert not (tmp_path / "out").exists()  # nothing written: the folder this run made is gone too
    assert single == 2 and not (tmp_path / "one").exists()  # `lidnet denoise IN OUT`: one line, nothing left
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"lidnet denoise: error: {tmp_path / 'one'}: File too large", err[-3:]  # the output named
    report = run_batch(archive, tmp_path / "out", "denoise", _denoiser())
    assert len(report.written) == 3 and not report.failed


_KILLED_MID_BATCH = """
import os, signal, sys
from pathlib import Path
import torch
from napari_lidnet.batch import run_batch
from napari_lidnet.models.denoisers import build_denoiser

def children():
    pids = []
    for task in Path("/proc/self/task").iterdir():
        pids += (task / "children").read_text().split()
    return pids

def killed_after_first(done, total, name):
    print(" ".join(children()), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

torch.manual_seed(0)
run_batch(sys.argv[1], sys.argv[2], "denoise", build_denoiser("fastdn", width=4, blocks=1).eval(),
          progress=killed_after_first, workers=1)
"""


def _gone(pid: str) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "\nState:\tZ" in status  # dead, not yet reaped


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads child processes from Linux's /proc")
def test_a_batch_run_killed_outright_leaves_no_reader_process_behind(tmp_path):
    """Regression: `kill -9` of a batch run left its DataLoader reader blocked for good on a full pipe
    (it had read ahead series larger than the pipe holds). The reader now ends with the run."""
    import subprocess
    import sys
    import time

    root = tmp_path / "archive"
    for k in range(4):
        write_series(root / f"p{k}", synthetic_hu((4, 128, 128), seed=k), series_uid=generate_uid())
    said = tmp_path / "said.txt"
    with said.open("w") as out:  # a file, not a pipe: a reader left behind would hold a pipe open
        run = subprocess.run(
            [sys.executable, "-c", _KILLED_MID_BATCH, str(root), str(tmp_path / "out")],
            stdout=out, stderr=subprocess.STDOUT, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"},
        )  # fmt: skip
    assert run.returncode == -signal.SIGKILL, said.read_text()
    readers = said.read_text().split()
    assert readers, "the run had a reader process"
    deadline = time.monotonic() + 20
    while not all(_gone(pid) for pid in readers) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [pid for pid in readers if not _gone(pid)]
    for pid in left:
        os.kill(int(pid), signal.SIGKILL)
    assert not left, f"reader processes {left} outlived the killed run"


def test_folders_of_png_slices_or_arrays_are_said_not_passed_by(archive, tmp_path, monkeypatch, capsys):
    """Regression: `--all-series` passed a DeepLesion PNG folder by without a word. It reads DICOM and
    NIfTI only; other images under the folder are named, and a folder holding only those is a one-line refusal."""
    from napari_lidnet.io.png16 import write_png_hu

    keys = archive / "patient9" / "Images_png" / "000001_01_01"
    keys.mkdir(parents=True)
    for k in (108, 109, 110):
        write_png_hu(keys / f"{k}.png", synthetic_hu((32, 32), seed=k))
    np.save(archive / "patient9" / "volume.npy", synthetic_hu((3, 32, 32)))
    report = run_batch(archive, tmp_path / "out", "denoise", _denoiser())
    assert len(report.written) == 3
    assert report.not_read == [
        "patient9/Images_png/000001_01_01: 3 PNG slices not read (--all-series reads DICOM and NIfTI; run `lidnet "
        "denoise` on that folder or file without it)",
        "patient9: 1 array not read (--all-series reads DICOM and NIfTI; run `lidnet denoise` on that folder or "
        "file without it)",
    ]
    monkeypatch.setenv("NAPARI_LIDNET_MODEL_DIR", str(tmp_path / "models"))
    save_weights(_denoiser(), tmp_path / "models" / "tiny_denoiser")
    args = ["denoise", str(archive), str(tmp_path / "out"), "--all-series", "--model", "tiny_denoiser"]
    assert main([*args, "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "note: patient9/Images_png/000001_01_01: 3 PNG slices not read" in err, err
    assert "(and 1 other folders)" in err, err
    before = listing(tmp_path)
    with pytest.raises(ValueError, match=r"no DICOM series or NIfTI file, which --all-series reads; "
                                         r"\.: 3 PNG slices not read"):  # fmt: skip
        run_batch(keys, tmp_path / "keys-out", "denoise", _denoiser())
    assert listing(tmp_path) == before


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_reader_workers_run_under_every_start_method(method):
    """Regression: under forkserver (Python 3.14's default on Linux) a worker's parent is the fork server,
    and the check meant for a parent that died first made every worker exit at once."""
    import multiprocessing

    from torch.utils.data import DataLoader, TensorDataset

    from napari_lidnet.io.reader_workers import reader_worker_init

    loader = DataLoader(TensorDataset(torch.arange(4)), batch_size=None, num_workers=2,
                        worker_init_fn=reader_worker_init, multiprocessing_context=multiprocessing.get_context(method))
    assert sorted(int(x[0]) for x in loader) == [0, 1, 2, 3]


def _screen_capture(path: Path, rgb: bool, ct_8bit: bool = False) -> None:
    """An exam's dose screen: a Secondary Capture with Modality CT, colour or 8-bit grey, no rescale to HU; with
    ``ct_8bit`` an 8-bit image stored as a placed CT slice with a rescale (no CT scanner writes one)."""
    import pydicom
    from conftest import dataset_of_class

    ds = dataset_of_class("1.2.840.10008.5.1.4.1.1.7")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.SeriesDescription, ds.ImageType = "CT", "Dose Report", ["DERIVED", "SECONDARY", "OTHER"]
    ds.Rows, ds.Columns, ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 48, 64, 8, 8, 7, 0
    pixels = np.random.default_rng(0).integers(0, 255, (48, 64, 3) if rgb else (48, 64), dtype=np.uint8)
    ds.SamplesPerPixel = 3 if rgb else 1
    ds.PhotometricInterpretation = "RGB" if rgb else "MONOCHROME2"
    if rgb:
        ds.PlanarConfiguration = 0
    if ct_8bit:
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, 0], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.RescaleIntercept, ds.RescaleSlope = [0.7, 0.7], -1024, 1
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)


def test_an_exams_dose_screens_are_left_out_with_a_note(archive, tmp_path, monkeypatch, capsys):
    """Regression: a colour dose screen (Secondary Capture, Modality CT) failed every --all-series run
    ("fix or remove" a file of the patient's archive); an 8-bit grey one was denoised and written as a CT series."""
    monkeypatch.setenv("NAPARI_LIDNET_MODEL_DIR", str(tmp_path / "models"))
    torch.manual_seed(0)
    save_weights(LesionDetector(width=4).eval(), tmp_path / "models" / "tiny_detector")
    _screen_capture(archive / "patient0" / "dose" / "IM0001.dcm", rgb=True)
    _screen_capture(archive / "patient1" / "dose" / "IM0001.dcm", rgb=False)
    out = tmp_path / "boxes"
    assert main(["detect", str(archive), "--out", str(out), "--all-series", "--model", "tiny_detector"]) == 0
    assert len(list(out.glob("*.csv"))) == 3
    assert "left out 2 screen captures" in capsys.readouterr().err
    with pytest.raises(ValueError) as err:  # a folder of screens alone: one line, no CT in it
        open_ct(archive / "patient0" / "dose")
    assert "\n" not in str(err.value) and "screen capture" in str(err.value), err.value


def test_label_maps_beside_the_images_are_left_out_each_named(tmp_path, monkeypatch, capsys):
    """Regression: nnU-Net's labelsTr (uint8 label maps) beside imagesTr failed every --all-series run
    ("fix or remove" the ground truth); only the first series left out was named."""
    import nibabel as nib

    monkeypatch.setenv("NAPARI_LIDNET_MODEL_DIR", str(tmp_path / "models"))
    torch.manual_seed(0)
    save_weights(LesionDetector(width=4).eval(), tmp_path / "models" / "tiny_detector")
    root = tmp_path / "Dataset001"
    for k in range(2):
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        (root / "labelsTr").mkdir(parents=True, exist_ok=True)
        ct = synthetic_hu((3, 32, 32), seed=k).transpose(2, 1, 0).astype(np.int16)
        nib.save(nib.Nifti1Image(ct, np.diag([0.7, 0.7, 2.5, 1.0])), root / "imagesTr" / f"case_{k:03d}_0000.nii.gz")
        labels = (ct > 100).astype(np.uint8)
        nib.save(nib.Nifti1Image(labels, np.diag([0.7, 0.7, 2.5, 1.0])), root / "labelsTr" / f"case_{k:03d}.nii.gz")
    _screen_capture(root / "dicom8" / "IM1.dcm", rgb=False, ct_8bit=True)  # review: an 8-bit DICOM was detected on
    out = tmp_path / "boxes"
    assert main(["detect", str(root), "--out", str(out), "--all-series", "--model", "tiny_detector"]) == 0
    err = capsys.readouterr().err
    assert len(list(out.glob("*.csv"))) == 2 and "note: 3 series left out (first: " in err, err
    assert "left out: labelsTr/case_001.nii.gz" in err and "8 bits" in err and "8-bit pixels" in err, err
