"""The `lidnet` command line end to end on a small simulated dataset: simulate, train, export, evaluate,
denoise, detect; bad input exits 2 with one clear line and writes nothing."""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import napari_lidnet
from napari_lidnet.cli import main
from napari_lidnet.io.dataset import read_dataset
from napari_lidnet.io.open_ct import open_ct
from napari_lidnet.io.saved_boxes import read_boxes_csv
from napari_lidnet.metrics.image import psnr
from napari_lidnet.models.registry import list_models
from napari_lidnet.strength import keep_noise


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 6-slice 128x128 dataset and a tiny LIDnet run exported as model 'tiny'."""
    root = tmp_path_factory.mktemp("cli")
    models = root / "models"
    mp = pytest.MonkeyPatch()
    mp.setenv("NAPARI_LIDNET_MODEL_DIR", str(models))
    assert (
        main(["simulate", "--out", str(root / "data"), "--n", "6", "--dose", "0.25", "--seed", "3", "--size", "128"])
        == 0
    )
    args = [
        "train",
        "--data",
        str(root / "data"),
        "--out",
        str(root / "run"),
        "--mode",
        "lidnet",
        "--pretrain-denoiser-steps",
        "20",
        "--pretrain-detector-steps",
        "20",
        "--rounds",
        "1",
        "--denoiser-steps",
        "5",
        "--detector-steps",
        "5",
        "--batch-size",
        "2",
        "--patch-size",
        "64",
        "--denoiser-width",
        "16",
        "--device",
        "cpu",
        "--export",
        "tiny",
    ]
    assert main(args) == 0
    yield root
    mp.undo()


def test_simulate_writes_a_dataset(trained):
    samples = read_dataset(trained / "data")
    assert len(samples) == 6 and samples[0].full_hu.shape == (128, 128)
    assert samples[0].low_hu.std() > samples[0].full_hu.std()  # low dose is noisier
    info = json.loads((trained / "data" / "dataset.json").read_text())
    assert info["dose"] == 0.25 and "lidnet simulate" in info["command"]


def test_train_exports_a_listed_model(trained, monkeypatch):
    monkeypatch.setenv("NAPARI_LIDNET_MODEL_DIR", str(trained / "models"))
    names = {m.name for m in list_models()}
    assert {"tiny_denoiser", "tiny_detector"} <= names
    state = json.loads((trained / "run" / "state.json").read_text())
    assert "round1-detector" in state["done"]


def test_a_detector_the_run_never_trained_is_not_exported(trained, tmp_path, capsys, monkeypatch):
    """Regression: a pixel run with no detector steps and no starting detector exported its random
    detector as a model; now its denoiser is exported alone (no pair), with a line that says why."""
    monkeypatch.setenv("NAPARI_LIDNET_MODEL_DIR", str(tmp_path / "models"))
    args = ["train", "--data", str(trained / "data"), "--out", str(tmp_path / "run"), "--mode", "pixel",
            "--pretrain-denoiser-steps", "2", "--pretrain-detector-steps", "0", "--rounds", "0", "--batch-size", "2",
            "--patch-size", "64", "--denoiser-width", "8", "--workers", "0", "--device", "cpu", "--export", "solo"]
    assert main(args) == 0
    assert "the denoiser was exported alone" in capsys.readouterr().err
    models = {m.name: m for m in list_models()}
    assert "solo_denoiser" in models and "solo_detector" not in models
    assert "pair_of" not in json.loads((tmp_path / "models" / "solo_denoiser.json").read_text())
    for option, value in (("--out", str(tmp_path / "run2")), ("--pretrain-denoiser-steps", "0"),
                          ("--pretrain-detector-steps", "2"), ("--export", "det-solo")):  # fmt: skip
        args[args.index(option) + 1] = value
    assert main(args) == 0  # the other way round: the review found it exported without a word
    assert "the run never trained its denoiser" in capsys.readouterr().err
    names = {m.name for m in list_models()}
    assert "det-solo_detector" in names and "det-solo_denoiser" not in names


def test_evaluate_reports_low_denoised_full(trained, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("NAPARI_LIDNET_MODEL_DIR", str(trained / "models"))
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "evaluate",
                str(trained / "data"),
                "--denoiser",  # as detect --denoise-first names it (--model, the older name, still works)
                "tiny_denoiser",
                "--detector",
                "tiny_detector",
                "--json",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "low dose" in table and "denoised" in table and "IoU >= 0.5" in table and "hit: hit:" not in table
    lines = table.splitlines()
    head = next(line for line in lines if line.startswith("image"))
    assert head.split() == ["image", "psnr", "ssim", "sens@0.5", "sens@1", "sens@2", "sens@4", "sens@8", "sensitivity"]
    full_row = next(line for line in lines if line.startswith("full dose")).split()
    assert full_row[2:4] == ["-", "-"] and "nan" not in table  # PSNR/SSIM of the reference: not measured
    result = json.loads(out.read_text())
    assert result["denoiser"] != "default" and "tiny" in result["denoiser"], result["denoiser"]
    res = result["results"]
    assert "psnr" not in res["full dose"] and 0 <= res["full dose"]["sensitivity"] <= 1  # detection only
    samples = read_dataset(trained / "data")
    low = np.stack([s.low_hu for s in samples])
    full = np.stack([s.full_hu for s in samples])
    assert res["low dose"]["psnr"] == pytest.approx(np.mean([psnr(a, b) for a, b in zip(low, full)]), rel=1e-6)
    assert np.isfinite(res["denoised"]["psnr"]) and 0 <= res["denoised"]["sensitivity"] <= 1


def test_denoise_says_when_the_sd_to_remove_is_all_the_noise(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NAPARI_LIDNET_MODEL_DIR", str(trained / "models"))
    low = np.stack([s.low_hu for s in read_dataset(trained / "data")[:3]])
    np.save(tmp_path / "low.npy", low)
    args = ["denoise", str(tmp_path / "low.npy"), "--model", "tiny_denoiser", "--device", "cpu", "--remove-sd"]
    assert main([args[0], args[1], str(tmp_path / "a.npz"), *args[2:], "500"]) == 0
    assert "--remove-sd 500 HU is at or above the noise measured in flat tissue" in capsys.readouterr().err
    assert main([args[0], args[1], str(tmp_path / "b.npz"), *args[2:], "1"]) == 0
    assert "at or above the noise" not in capsys.readouterr().err


def test_denoise_leave_sd_leaves_that_noise_and_says_so_in_the_series(tmp_path, capsys):
    """``--leave-sd``: the output's flat tissue shows that noise SD (the shipped denoiser, a noisy DICOM series),
    its SeriesDescription says how much was left; with ``--remove-sd`` too, one line, exit 2, nothing written."""
    import pydicom
    from conftest import write_series

    from napari_lidnet.io.open_ct import open_ct
    from napari_lidnet.metrics.noreference import flat_noise_sd, noise_sd
    from napari_lidnet.sim.phantom import make_phantom

    rng = np.random.default_rng(5)
    hu = np.stack([np.clip(make_phantom(s, "abdomen", size=128).hu, -1000, 1000) for s in (6, 7)])
    hu = (np.rint((hu + rng.normal(0, 35, hu.shape)).clip(-1000, 1000) / 2) * 2).astype(np.float32)
    write_series(tmp_path / "ct", hu, series_uid="1.2.3.57", description="Abdomen")
    assert main(["denoise", str(tmp_path / "ct"), str(tmp_path / "out"), "--leave-sd", "12", "--device", "cpu"]) == 0
    back = open_ct(tmp_path / "out")[0].hu
    assert noise_sd(back) == pytest.approx(12.0, rel=0.2) and noise_sd(hu) > 25.0, (noise_sd(back), noise_sd(hu))
    # the noise before and after, as the Denoise dock says it (a number to choose the SD from)
    before, after = flat_noise_sd(hu, [0, 1], back)  # the series read back is rounded to whole HU: about 0.1 HU off
    said = re.search(r"noise SD in flat tissue ([\d.]+) -> ([\d.]+) HU", capsys.readouterr().err)
    assert said is not None and float(said[1]) == pytest.approx(before, abs=0.05), said
    assert float(said[2]) == pytest.approx(after, abs=0.25) and abs(after - 12.0) < 2.4, (said[2], after)
    ds = pydicom.dcmread(sorted((tmp_path / "out").rglob("*.dcm"))[0], stop_before_pixels=True)
    assert ds.SeriesDescription == "Abdomen denoised (LIDnet default (unet), 12 HU SD left)"
    assert ds.DerivationDescription.endswith("napari-lidnet: Abdomen denoised (LIDnet default (unet), 12 HU SD left)")
    nifti = ["denoise", str(tmp_path / "ct"), str(tmp_path / "d.nii.gz"), "--leave-sd", "12", "--device", "cpu"]
    assert main(nifti) == 0  # a NIfTI output says the strength too (not only "denoised")
    import nibabel as nib

    said_nifti = bytes(nib.load(str(tmp_path / "d.nii.gz")).header["descrip"]).rstrip(b"\0")
    assert said_nifti == b"napari-lidnet denoised: LIDnet default (unet), 12 HU SD left"
    capsys.readouterr()
    same = ["denoise", str(tmp_path / "ct"), str(tmp_path / "same.npz"), "--leave-sd", "500", "--device", "cpu"]
    assert main(same) == 0
    assert "--leave-sd 500 HU is at or above the noise measured" in capsys.readouterr().err
    np.testing.assert_allclose(np.load(tmp_path / "same.npz")["hu"], hu, atol=1e-3)  # nothing removed: the input
    both = ["denoise", str(tmp_path / "ct"), str(tmp_path / "x"), "--leave-sd", "12", "--remove-sd", "5"]
    assert main(both) == 2 and not (tmp_path / "x").exists()
    assert "not both" in capsys.readouterr().err


def test_denoise_and_detect_files(trained, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NAPARI_LIDNET_MODEL_DIR", str(trained / "models"))
    low = np.stack([s.low_hu for s in read_dataset(trained / "data")[:3]])
    src = tmp_path / "low.npy"
    np.save(src, low)
    assert main(["denoise", str(src), str(tmp_path / "den.npy"), "--model", "tiny_denoiser", "--device", "cpu"]) == 0
    den = np.load(tmp_path / "den.npy")
    assert den.shape == low.shape and not np.array_equal(den, low)
    capsys.readouterr()
    assert main(["denoise", str(src), str(tmp_path / "dcm"), "--model", "tiny_denoiser", "--device", "cpu"]) == 0
    err = capsys.readouterr().err  # an array has no patient: the DICOM series says what it had to assume
    assert "starts a new study with an empty patient" in err and "placed as an axial stack" in err
    (vol,) = open_ct(tmp_path / "dcm")
    assert np.abs(vol.hu - den).max() <= 0.51  # DICOM stores whole HU
    args = ["denoise", str(src), str(tmp_path / "part"), "--model", "tiny_denoiser", "--device", "cpu"]
    assert main([*args, "--remove-sd", "4"]) == 0
    (part,) = open_ct(tmp_path / "part")
    np.testing.assert_allclose(part.hu, np.round(keep_noise(low, den, 4.0)), atol=1.01)
    assert "4 HU SD removed" in part.metadata["series_description"]
    assert (
        main(
            [
                "detect",
                str(src),
                "--out",
                str(tmp_path / "b.csv"),
                "--model",
                "tiny_detector",
                "--threshold",
                "0.0",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    rows = read_boxes_csv(tmp_path / "b.csv")
    assert len(rows) > 0 and rows.shape[1] == 6 and set(np.unique(rows[:, 0])) <= {0.0, 1.0, 2.0}


def test_detect_defaults_to_the_cards_threshold_and_names_each_slice(tmp_path, capsys):
    """`lidnet detect` keeps boxes from the detector card's calibrated threshold (as the widget does) and writes
    each box's DICOM InstanceNumber, table position and SOPInstanceUID; a threshold outside [0, 1] is refused."""
    import csv

    import pydicom
    from conftest import write_series

    from napari_lidnet.inference import detect
    from napari_lidnet.models.registry import load_model
    from napari_lidnet.models.weights import default_threshold
    from napari_lidnet.sim.phantom import make_phantom

    hu = np.stack([np.clip(make_phantom(s, "abdomen", size=128).hu, -1000, 1000) for s in (1, 2, 3)])
    hu = (np.rint(hu / 2) * 2).astype(np.float32)
    files = write_series(tmp_path / "ct", hu, series_uid="1.2.3.55", z_positions=[0.0, 5.0, 15.0])
    detector, card = load_model("default", "detector")
    t = default_threshold(card)
    assert main(["detect", str(tmp_path / "ct"), "--out", str(tmp_path / "b.csv"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert f"score >= {t:.3f}" in err
    assert "3/3 slices\n" in err and "\r" not in err  # a log gets progress lines, not a terminal's rewrites
    with open(tmp_path / "b.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    every = detect(detector, hu, score_threshold=0.05, pixel_mm=(0.7, 0.8))  # the series' PixelSpacing
    assert 0 < len(rows) == int((every[:, 5] >= t).sum()) and len(rows) < len(every)
    from napari_lidnet.metrics.lesions import row_lesions

    kept = every[every[:, 5] >= t]
    assert [int(r["lesion"]) for r in rows] == row_lesions(kept).tolist()  # boxes of one lesion share its number
    assert f"({max(row_lesions(kept), default=0)} lesions)" in err
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]  # in slice order
    for r in rows:
        ds = headers[int(r["slice"])]
        assert int(r["instance_number"]) == int(ds.InstanceNumber) and r["sop_instance_uid"] == ds.SOPInstanceUID
        assert float(r["z_mm"]) == pytest.approx(float(ds.ImagePositionPatient[2]))
        dy, dx = (float(v) for v in ds.PixelSpacing)  # box sides in mm from the series' pixel size
        assert float(r["width_mm"]) == pytest.approx((float(r["x2"]) - float(r["x1"])) * dx, abs=0.01)
        assert float(r["height_mm"]) == pytest.approx((float(r["y2"]) - float(r["y1"])) * dy, abs=0.01)
    with pytest.raises(SystemExit) as exc:  # argparse: usage error, exit status 2
        main(["detect", str(tmp_path / "ct"), "--out", str(tmp_path / "c.csv"), "--threshold", "1.5"])
    assert exc.value.code == 2
    assert "[0, 1]" in capsys.readouterr().err and not (tmp_path / "c.csv").exists()


def test_detect_denoise_first_gives_the_boxes_of_denoise_then_detect(tmp_path, capsys):
    """Regression: the Denoise dock detects on the denoised images, `lidnet detect` on the images as
    given (23 boxes against 6 on a real chest), and the command line needed two steps to match the dock.
    ``--denoise-first`` is those two steps in one: the same boxes as detecting on `lidnet denoise`'s output."""
    import csv

    from conftest import write_series

    from napari_lidnet.sim.phantom import make_phantom

    hu = np.stack([np.clip(make_phantom(s, "abdomen", size=128).hu, -1000, 1000) for s in (4, 5)])
    rng = np.random.default_rng(0)
    hu = (np.rint((hu + rng.normal(0, 40, hu.shape)).clip(-1000, 1000) / 2) * 2).astype(np.float32)  # low-dose-like
    write_series(tmp_path / "ct", hu, series_uid="1.2.3.56")
    common = ["--device", "cpu", "--threshold", "0.05"]
    assert main(["denoise", str(tmp_path / "ct"), str(tmp_path / "d.nii.gz"), "--device", "cpu"]) == 0
    assert main(["detect", str(tmp_path / "d.nii.gz"), "--out", str(tmp_path / "two.csv"), *common]) == 0
    assert main(["detect", "--denoise-first", str(tmp_path / "ct"), "--out", str(tmp_path / "one.csv"), *common]) == 0
    assert main(["detect", str(tmp_path / "ct"), "--out", str(tmp_path / "raw.csv"), *common]) == 0

    def boxes(name: str) -> np.ndarray:
        with open(tmp_path / name, newline="") as fh:
            keys = ("slice", "x1", "y1", "x2", "y2", "score")
            return np.array([[float(r[k]) for k in keys] for r in csv.DictReader(fh)])

    one, two, raw = boxes("one.csv"), boxes("two.csv"), boxes("raw.csv")
    assert len(one) > 0 and one.shape == two.shape
    np.testing.assert_allclose(one, two, atol=2e-3)  # the NIfTI round trip stores float32 HU
    assert one.shape != raw.shape or not np.allclose(one, raw, atol=2e-3)  # denoising first changes the boxes
    err = capsys.readouterr().err  # which count of slices is which pass (two counts, each named)
    assert err.index("denoising with default first") < err.index("detecting lesions on the denoised images")
    args = ["detect", str(tmp_path / "ct"), "--denoise-first", "--all-series", "--out", str(tmp_path / "f")]
    assert main(args) == 2 and not (tmp_path / "f").exists()
    assert "--denoise-first takes one input" in capsys.readouterr().err
    args = ["detect", str(tmp_path / "ct"), "--denoiser", "default", "--out", str(tmp_path / "g.csv")]
    assert main(args) == 2 and not (tmp_path / "g.csv").exists()
    assert "add --denoise-first" in capsys.readouterr().err
    named = ["detect", str(tmp_path / "ct"), "--denoise-first", "--denoiser", "default", "--out"]
    assert main([*named, str(tmp_path / "n.csv"), *common]) == 0
    np.testing.assert_array_equal(boxes("n.csv"), one)


def test_series_option_picks_one_of_several(two_series_dir, tmp_path, capsys):
    """A folder with two series: the largest by default, saying so and how to pick; ``--series UID`` the other."""
    d = two_series_dir
    args = ["denoise", str(d["root"]), "--device", "cpu"]
    assert main([*args[:2], str(tmp_path / "a.npz"), *args[2:]]) == 0
    assert np.load(tmp_path / "a.npz")["hu"].shape == d["hu_a"].shape
    err = capsys.readouterr().err
    assert "holds 2 series" in err and d["uid_b"] in err and "--series UID" in err
    assert main([*args[:2], str(tmp_path / "b.npz"), *args[2:], "--series", d["uid_b"]]) == 0
    assert np.load(tmp_path / "b.npz")["hu"].shape == d["hu_b"].shape
    assert main([*args[:2], str(tmp_path / "c.npz"), *args[2:], "--series", "1.2.3.4"]) == 2
    assert "no series with SeriesInstanceUID 1.2.3.4" in capsys.readouterr().err and not (tmp_path / "c.npz").exists()


def test_a_study_with_a_larger_mr_series_runs_on_its_ct_and_keeps_the_mr_warnings_to_one_line(tmp_path, capsys):
    """Regression: on a study of several series the command ran on the largest series whatever its
    modality (an MR series larger than the CT was refused as 'not CT'), and printed every warning about series it
    never used (26 lines for one 5-slice CT). The CT series runs; the others' warnings are one line."""
    from conftest import synthetic_hu, write_series

    uid = "1.2.826.0.1.3680043.8.498.7"
    write_series(tmp_path / "study" / "ct", synthetic_hu((3, 16, 16)), series_uid=uid + "1", description="Chest")
    write_series(tmp_path / "study" / "mr", synthetic_hu((5, 16, 16), seed=1), series_uid=uid + "2",
                 description="Brain MR", modality="MR")  # fmt: skip
    assert main(["denoise", str(tmp_path / "study"), str(tmp_path / "a.npz"), "--device", "cpu"]) == 0
    assert np.load(tmp_path / "a.npz")["hu"].shape == (3, 16, 16)
    err = capsys.readouterr().err
    assert "holds 2 series" in err and "using the largest CT series, 'Chest" in err, err
    assert "modality is 'MR'" not in err and "warning(s) about the other series" in err, err


def test_the_warnings_of_the_one_series_processed_are_shown(tmp_path, capsys):
    """Regression: a series without SeriesInstanceUID (named "series 'ABD' ()" by the reader) had its own
    warnings hidden as being about other series, the 1 mm pixel fallback among them."""
    import pydicom
    from conftest import synthetic_hu, write_series

    for f in write_series(tmp_path / "ct", synthetic_hu((3, 16, 16)), series_uid="", description="ABD"):
        ds = pydicom.dcmread(f)
        del ds.PixelSpacing
        ds.save_as(f)
    assert main(["denoise", str(tmp_path / "ct"), str(tmp_path / "a.npz"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "series 'ABD' (): no PixelSpacing; assuming 1 mm pixels" in err and "not shown" not in err, err


def test_a_denoised_series_saved_as_an_array_keeps_its_patient_geometry(tmp_path):
    """.npz and .tif outputs of a DICOM series carry its origin and directions (a .npy keeps none)."""
    from conftest import synthetic_hu, write_series

    hu = synthetic_hu((3, 16, 16))
    write_series(tmp_path / "ct", hu, series_uid="1.2.826.0.1.3680043.9.7", z_positions=[-40, -42.5, -45])
    src = open_ct(tmp_path / "ct")[0]
    for name in ("a.npz", "a.tif"):
        assert main(["denoise", str(tmp_path / "ct"), str(tmp_path / name), "--device", "cpu"]) == 0
        out = open_ct(tmp_path / name)[0]
        np.testing.assert_allclose(out.affine(), src.affine())
        assert not out.metadata["orientation_unknown"]


def test_bad_input_exits_2_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "notes.txt"
    bad.write_text("not a CT")
    assert main(["denoise", str(bad), str(tmp_path / "out.npy")]) == 2
    err = capsys.readouterr().err
    assert "notes.txt" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    assert main(["denoise", str(tmp_path / "notes.txt"), str(tmp_path / "o.npy"), "--remove-sd", "-3"]) == 2
    assert "noise SD to remove" in capsys.readouterr().err
    np.save(tmp_path / "ct.npy", np.zeros((4, 4), np.float32))
    assert main(["denoise", str(tmp_path / "ct.npy"), str(tmp_path / "den.nrrd")]) == 2  # not a DICOM folder
    assert "cannot write .nrrd files" in capsys.readouterr().err and not (tmp_path / "den.nrrd").exists()
    for typo in ("den.xyz", "den.nii.gzz", "den.npzz"):  # a typo must not write a DICOM folder
        assert main(["denoise", str(tmp_path / "ct.npy"), str(tmp_path / typo)]) == 2
        assert f"cannot write {Path(typo).suffix} files" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.npy", "notes.txt"]
    np.save(tmp_path / "ct.npy", np.where(np.arange(32) < 8, -1000.0, 40.0).astype(np.float32) * np.ones((32, 1)))
    assert main(["denoise", str(tmp_path / "ct.npy"), str(tmp_path / "den.v2")]) == 0  # a folder's name: DICOM
    assert any((tmp_path / "den.v2").glob("*.dcm"))
    shutil.rmtree(tmp_path / "den.v2")
    assert main(["denoise", str(tmp_path / "ct.npy"), str(tmp_path / "followup.final") + "/"]) == 0  # asked for
    assert any((tmp_path / "followup.final").glob("*.dcm"))
    shutil.rmtree(tmp_path / "followup.final")
    (tmp_path / "ct.npy").unlink()
    assert main(["simulate", "--out", str(tmp_path / "d"), "--n", "1", "--dose", "0"]) == 2
    assert "dose" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert not (tmp_path / "r").exists()


def test_simulate_random_domain_records_each_slice_scanner(tmp_path, capsys):
    """`--domain random` draws a body part and a scanner per slice and records them; negatives carry no box. Its
    progress in a log (stderr not a terminal) is a line per tenth, not one line of carriage returns."""
    import csv

    out = tmp_path / "rand"
    assert main(["simulate", "--out", str(out), "--n", "4", "--size", "64", "--domain", "random",
                 "--negatives", "1", "--kinds", "head,chest", "--seed", "5"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert lines[:5] == [f"simulated {i}/4 slices" for i in range(1, 5)] + [lines[4]], lines
    assert lines[4].startswith("wrote 4 slice pairs with randomised scanners")
    rows = list(csv.DictReader((out / "scanner.csv").open()))
    assert [r["file"] for r in rows] == [f"{s.name}.png" for s in read_dataset(out)]
    assert {r["kind"] for r in rows} <= {"head", "chest"}
    assert all(0.05 <= float(r["dose"]) <= 0.5 for r in rows)
    assert all(len(s.boxes) == 0 for s in read_dataset(out))
    assert json.loads((out / "dataset.json").read_text())["dose"] is None


def test_adapt_trains_on_low_dose_alone_and_exports_a_named_model(tmp_path, capsys, monkeypatch, model_dir):
    """`lidnet adapt` on a low-dose volume alone exports NAME_denoiser with its no-reference estimates; a volume
    too thin for neighbouring-slice targets is refused in one line and writes nothing."""
    from napari_lidnet.models.registry import load_model

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :96]
    body = np.where((yy - 48) ** 2 + (xx - 48) ** 2 < 40**2, 40.0, -1000.0)
    vol = (body[None] + rng.normal(0, 30, (6, 96, 96))).astype(np.float32)
    np.save(tmp_path / "low.npy", vol)
    args = ["adapt", str(tmp_path / "low.npy"), "--name", "site-x", "--steps", "3", "--patch-size", "64"]
    assert main([*args, "--from", "tiny_denoiser", "--device", "cpu"]) == 0
    log = capsys.readouterr().err  # not a terminal: whole lines, no carriage returns
    assert "\r" not in log and "step 3/3  loss" in log, log
    model, card = load_model("site-x", "denoiser")
    assert card["kind"] == "denoiser" and "adapt" in json.dumps(card)
    np.save(tmp_path / "thin.npy", vol[:2])
    before = sorted(p.name for p in model_dir.iterdir())
    assert main(["adapt", str(tmp_path / "thin.npy"), "--name", "site-y", "--from", "tiny_denoiser"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lidnet adapt: error:") and sorted(p.name for p in model_dir.iterdir()) == before


def test_adapt_stops_cleanly_on_ctrl_c(tmp_path, model_dir):
    """Ctrl-C (SIGINT) during `lidnet adapt` stops after the current step, saves the model trained so far as a
    whole pair, prints one line and exits 130 (a real process and a real signal)."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time
    from pathlib import Path

    from napari_lidnet.models.registry import load_model

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:96, :96]
    body = np.where((yy - 48) ** 2 + (xx - 48) ** 2 < 40**2, 40.0, -1000.0)
    np.save(tmp_path / "low.npy", (body[None] + rng.normal(0, 30, (5, 96, 96))).astype(np.float32))
    cmd = [sys.executable, "-m", "napari_lidnet.cli", "adapt", str(tmp_path / "low.npy"), "--name", "site-z",
           "--steps", "100000", "--patch-size", "64", "--from", "tiny_denoiser", "--device", "cpu"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # NAPARI_LIDNET_MODEL_DIR: model_dir
    repo = Path(__file__).resolve().parents[1]  # this checkout's package, not an installed copy
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env, cwd=repo)
    chunks: list[bytes] = []
    reader = threading.Thread(target=lambda: chunks.extend(iter(lambda: proc.stderr.read1(256), b"")), daemon=True)
    reader.start()
    deadline = time.monotonic() + 120  # a bound for a stuck process, not a speed check
    try:
        while b"step 1/100000" not in b"".join(chunks):
            assert proc.poll() is None and time.monotonic() < deadline, b"".join(chunks).decode()
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    finally:
        proc.kill()
    reader.join(10)
    lines = b"".join(chunks).decode().strip().splitlines()
    assert lines[-1].startswith("interrupted: saved site-z_denoiser (stopped early after "), lines[-1]
    assert "noise SD" in lines[-1] and "Traceback" not in "\n".join(lines)
    sup = load_model("site-z", "denoiser")[1]["training"]["selfsup"]
    assert sup["stopped_early"] and 1 <= sup["steps_done"] < 100000
    assert sorted(p.name for p in model_dir.glob("site-z*")) == ["site-z_denoiser.json", "site-z_denoiser.safetensors"]


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [("--insert-lesions", "1.5", "insert_lesions must be in [0, 1]"), ("--insert-max-mm", "2", "insert_max_mm must")],
)
def test_train_refuses_a_bad_insertion_setting_before_writing(trained, tmp_path, capsys, option, value, message):
    run = tmp_path / "r"
    assert main(["train", "--data", str(trained / "data"), "--out", str(run), option, value]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not run.exists()


def test_one_input_is_the_largest_volume_of_a_deeplesion_folder(tmp_path, capsys):
    """Regression: a DeepLesion folder with two runs of slices (108-110 and 120-123): 'using the largest
    CT series' took the first, the 3-slice run. The largest volume is the one used."""
    from conftest import write_png_hu

    from napari_lidnet.cli.common import open_single

    folder = tmp_path / "000001_01_01"
    folder.mkdir()
    for k in (108, 109, 110, 120, 121, 122, 123):
        hu = np.full((24, 32), -1000.0, np.float32)
        hu[4:20, 4:28] = 40.0 + k  # a body in air
        write_png_hu(folder / f"{k}.png", hu)
    with pytest.warns(UserWarning):  # no DL_info.csv: 1 mm assumed, said
        vol = open_single(str(folder))
    assert vol.hu.shape[0] == 4 and float(vol.hu[0, 10, 10]) == 160.0
    assert f"using the largest CT series, {vol.name!r}" in capsys.readouterr().err


def test_calibrate_takes_every_series_and_nifti_file_of_a_folder(tmp_path, capsys, model_dir):
    """Regression: a folder of normals (a DICOM series and a NIfTI head) was calibrated on the series
    alone, without a word; a folder of NIfTI files only was refused with advice (--all-series) calibrate lacks."""
    from conftest import synthetic_hu, write_series

    from napari_lidnet.io.nifti import write_nifti
    from napari_lidnet.io.volume import CTVolume

    write_series(tmp_path / "normals" / "series", synthetic_hu((5, 64, 64), seed=3), series_uid="1.2.3.77")
    (tmp_path / "niftis").mkdir()
    for k, name in enumerate(("head.nii.gz", "neck.nii.gz")):
        vol = CTVolume(synthetic_hu((4, 64, 64), seed=4 + k), (2.0, 0.8, 0.8), (10.0, -25.0, -25.0))
        write_nifti(tmp_path / ("normals" if k == 0 else "niftis") / name, vol)
        if k == 0:
            write_nifti(tmp_path / "niftis" / "head.nii.gz", vol)
    (tmp_path / "normals" / "._head.nii.gz").write_bytes(b"\x00\x05\x16\x07" + bytes(4000))  # a Mac's sidecar
    write_nifti(tmp_path / "normals" / "head_denoised.nii.gz", vol, denoised=True, note="LIDnet default")  # an output
    for folder, slices in (("normals", 9), ("niftis", 8)):
        args = ["calibrate", str(tmp_path / folder), "--name", f"site-{folder}", "--as-given", "--device", "cpu"]
        assert main(args) == 0, capsys.readouterr().err
        err = capsys.readouterr().err
        assert f"on {slices} slices of" in err
        assert ("1 NIfTI file(s) this program denoised left out" in err) == (folder == "normals")


def test_calibrate_sets_the_threshold_on_a_sites_own_scans(tmp_path, capsys, model_dir):
    """`lidnet calibrate` puts the threshold where the site's lesion-free slices (as given and denoised, pooled)
    carry at most the asked number of boxes, the lowest such score; saves NAME_detector; never over a name."""
    from scipy import ndimage

    from napari_lidnet.inference import denoise, detect
    from napari_lidnet.models.registry import load_model
    from napari_lidnet.models.weights import default_threshold

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:128, :128]
    body = np.where((yy - 64) ** 2 + (xx - 64) ** 2 < 56**2, 40.0, -1000.0)
    tex = np.stack([ndimage.gaussian_filter(rng.normal(0, 1, (128, 128)), 3) for _ in range(10)])
    vol = (body + 20 * tex / tex.std() * (body > 0) + rng.normal(0, 10, (10, 128, 128))).astype(np.float32)
    np.save(tmp_path / "normal.npy", vol)
    args = ["calibrate", str(tmp_path / "normal.npy"), "--device", "cpu"]
    assert main([*args, "--name", "site-c"]) == 0
    err = capsys.readouterr().err
    assert "site-c: threshold" in err
    detector, card = load_model("site-c", "detector")
    shipped_detector, shipped = load_model("default", "detector")
    t, rec = default_threshold(card), card["calibration"]
    # calibrating on a normal head can give more boxes than before: a lower threshold is said so
    assert ("note: the threshold went down" in err) == (t < rec["previous_threshold"])
    assert rec["data"]["slices"] == 10 and rec["previous_threshold"] == default_threshold(shipped)
    images = np.concatenate([vol, denoise(load_model("default", "denoiser")[0], vol)])
    scores = detect(shipped_detector, images, score_threshold=0.01).reshape(-1, 6)[:, 5]
    assert (scores >= t).sum() / len(images) <= 0.5 < (scores >= scores[scores < t].max()).sum() / len(images)
    assert rec["fp_per_image_at_previous"] == pytest.approx((scores >= rec["previous_threshold"]).sum() / 20)
    before = sorted(p.name for p in model_dir.iterdir())
    assert main([*args, "--name", "site-c"]) == 2  # taken
    assert "already exists" in capsys.readouterr().err
    np.save(tmp_path / "few.npy", vol[:5])
    assert main(["calibrate", str(tmp_path / "few.npy"), "--name", "site-d", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lidnet calibrate: error:") and "at least 8" in err[-1]
    assert sorted(p.name for p in model_dir.iterdir()) == before
    # one pair under one name: calibrate beside an adapted NAME_denoiser, adapt beside a calibrated NAME_detector
    from napari_lidnet._training.selfsup import _target_path

    for suffix in (".safetensors", ".json"):
        shutil.copy(Path(napari_lidnet.__file__).parent / "models" / "weights" / f"default_denoiser{suffix}",
                    model_dir / f"site-e_denoiser{suffix}")  # fmt: skip
    assert main([*args, "--name", "site-e"]) == 0
    assert load_model("site-e", "detector")[1]["calibration"] and load_model("site-e", "denoiser")[0] is not None
    assert _target_path("site-c").name == "site-c_denoiser"  # lidnet adapt may add the denoiser to site-c


def test_help_shows_each_default(capsys):
    """Every option's default is in --help (an option without help text too), never a meaningless 'None'."""
    for command in ("adapt", "simulate", "train"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "default: None" not in out and "default: False" not in out
    with pytest.raises(SystemExit):
        main(["adapt", "--help"])
    assert "--steps STEPS default: 300" in " ".join(capsys.readouterr().out.split())


def test_version_and_a_plain_top_level_help(capsys):
    """Regression: no `lidnet --version`, and the top-level help showed reST markup."""
    from napari_lidnet import __version__

    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"lidnet (napari-lidnet) {__version__}"
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "``" not in capsys.readouterr().out


def test_ctrl_c_during_detect_and_denoise_is_one_line_and_leaves_no_output(tmp_path, capsys):
    """Regression: Ctrl-C during `lidnet denoise`/`detect` printed a 54-line torch traceback. A real SIGINT
    (a timer, while the shipped models run on a 64-slice volume) now ends it with one line, exit 130, no output."""
    import signal

    rng = np.random.default_rng(0)
    hu = rng.normal(40, 20, (64, 512, 512)).astype(np.float32)
    hu[:, :40] = -1000.0  # air
    np.save(tmp_path / "ct.npy", hu)

    def ctrl_c(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, ctrl_c)
    try:
        for args, out in ((["detect", "--out"], "boxes.csv"), (["denoise"], "den.npz")):
            argv = [args[0], str(tmp_path / "ct.npy"), *args[1:], str(tmp_path / out), "--device", "cpu"]
            signal.setitimer(signal.ITIMER_REAL, 1.0)  # the models need seconds here
            rc = main(argv)
            signal.setitimer(signal.ITIMER_REAL, 0)
            err = capsys.readouterr().err.strip().splitlines()
            assert rc == 130 and err[-1] == f"lidnet {args[0]}: interrupted; nothing half-written is left", err[-5:]
            assert "Traceback" not in "\n".join(err) and not (tmp_path / out).exists()
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_ctrl_c_during_simulate_says_the_folder_is_marked_unfinished(tmp_path, capsys):
    """Regression: a stopped `simulate` said "nothing half-written is left" over a folder of 19 of 30
    pairs (marked unfinished, refused by readers): it says so, and that the same command writes it again."""
    import signal

    def ctrl_c(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, ctrl_c)
    try:
        signal.setitimer(signal.ITIMER_REAL, 1.5)
        rc = main(["simulate", "--out", str(tmp_path / "sim"), "--n", "40", "--size", "256"])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 130 and err[-1].endswith("interrupted; the dataset folder is marked unfinished (nothing reads it): "
                                          "the same command writes it again"), err[-3:]
    with pytest.raises(ValueError, match="did not finish"):
        read_dataset(tmp_path / "sim")


def test_series_without_uids_are_listed_by_the_key_that_series_takes(tmp_path, capsys):
    """Regression: anonymised exports with blank SeriesInstanceUIDs were listed as 'CT (), CT ()', and the
    key that --series takes was shown only by a failed --series ''. The listing gives that key, and it works."""
    from conftest import synthetic_hu, write_series

    write_series(tmp_path / "ct" / "a", synthetic_hu((3, 16, 16)), series_uid="", description="Body")
    write_series(tmp_path / "ct" / "b", synthetic_hu((2, 16, 16), seed=1), series_uid="", description="Body")
    assert main(["denoise", str(tmp_path / "ct"), str(tmp_path / "a.npz"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    keys = [k for k in err.split("(") if k.startswith("no-series-uid:")]
    assert "holds 2 series" in err and len(keys) == 2, err
    other = keys[1].split(")")[0]
    assert main(["denoise", str(tmp_path / "ct"), str(tmp_path / "b.npz"), "--device", "cpu", "--series", other]) == 0
    assert np.load(tmp_path / "b.npz")["hu"].shape == (2, 16, 16)


def test_detect_says_when_slices_reach_the_box_cap(tmp_path, capsys, monkeypatch):
    """Regression: at --threshold 0 every slice silently kept exactly 50 boxes (3200 for 64 slices)."""
    from conftest import tiny_models

    from napari_lidnet.inference import MAX_BOXES_PER_SLICE

    tiny_models(tmp_path / "models")
    monkeypatch.setenv("NAPARI_LIDNET_MODEL_DIR", str(tmp_path / "models"))
    hu = np.random.default_rng(0).normal(40, 30, (3, 96, 96)).astype(np.float32)
    hu[:, :8] = -1000.0
    np.save(tmp_path / "ct.npy", hu)
    args = ["detect", str(tmp_path / "ct.npy"), "--model", "tiny_detector", "--device", "cpu", "--out"]
    assert main([*args, str(tmp_path / "all.csv"), "--threshold", "0"]) == 0
    rows = read_boxes_csv(tmp_path / "all.csv")
    counts = np.bincount(rows[:, 0].astype(int))
    err = capsys.readouterr().err
    assert counts.max() == MAX_BOXES_PER_SLICE, counts
    assert f"note: {(counts >= MAX_BOXES_PER_SLICE).sum()} slice(s) reached {MAX_BOXES_PER_SLICE} boxes" in err, err
    assert main([*args, str(tmp_path / "some.csv"), "--threshold", "0.99"]) == 0
    assert "reached" not in capsys.readouterr().err


def _one_line_error(capsys, *words: str) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and all(w in err for w in words), err
    return err


def test_options_and_inputs_that_used_to_slip_through_exit_2_before_any_work(tmp_path, capsys, model_dir):
    """Found by a hostile review: each of these used to end in a traceback, exit 0 with a model saved, or leave
    something on disk. Now: one line naming the problem, exit 2, the model folder and the outputs untouched."""
    from conftest import write_series

    write_series(tmp_path / "mr", np.full((8, 16, 16), 300.0), series_uid="1.2.3.140", modality="MR")
    np.save(tmp_path / "blank.npy", np.zeros((4, 40, 40), np.float32))
    before = sorted(p.name for p in model_dir.iterdir())
    cases = [
        (["calibrate", str(tmp_path / "mr"), "--name", "c", "--device", "cpu"], ("modality 'MR' is not CT",)),
        (["adapt", str(tmp_path / "mr"), "--name", "a", "--steps", "2", "--device", "cpu"], ("not CT",)),
        (["adapt", str(tmp_path / "blank.npy"), "--name", "b", "--steps", "2", "--device", "cpu"], ("blank.npy",)),
        (["adapt", str(tmp_path / "blank.npy"), "--name", "b", "--patch-size", "0"], ("--patch-size", "[32, 1024]")),
        (["calibrate", str(tmp_path / "mr"), "--name", "c", "--fp-per-slice", "inf"], ("--fp-per-slice",)),
        (["calibrate", str(tmp_path / "mr"), "--name", "default"], ("shipped models'",)),
        (["train", "--data", str(tmp_path / "mr"), "--out", str(tmp_path / "r"), "--seed", "-1"], ("--seed",)),
        (["train", "--data", str(tmp_path / "mr"), "--out", str(tmp_path / "r"), "--denoiser-width", "-3"],
         ("--denoiser-width",)),
        (["evaluate", str(tmp_path / "mr"), "--max-slices", "-1"], ("--max-slices",)),
        (["index", str(tmp_path / "blank.npy"), "--out", str(tmp_path / "m.jsonl")], ("not a file",)),
        (["denoise", str(tmp_path / "blank.npy"), str(tmp_path / "o"), "--all-series", "--device", "cpu"],
         ("leave --all-series out",)),
    ]  # fmt: skip
    for argv, words in cases:
        try:
            code = main(argv)
        except SystemExit as stop:  # argparse refuses an option value itself
            code = stop.code
        assert code == 2, argv
        _one_line_error(capsys, *words)
    (tmp_path / "empty").mkdir()
    for out in (tmp_path / "new", tmp_path / "empty"):  # nothing but MR under the input: nothing to denoise
        argv = ["denoise", str(tmp_path / "mr"), str(out), "--all-series", "--workers", "0", "--device", "cpu"]
        assert main(argv) == 2
        _one_line_error(capsys, "nothing to denoise", "1 series left out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blank.npy", "empty", "models", "mr"]
    assert not any((tmp_path / "empty").iterdir())  # no batch marker left behind
    assert sorted(p.name for p in model_dir.iterdir()) == before


def test_training_refuses_rates_and_weights_that_are_not_numbers_before_writing(trained, tmp_path, capsys):
    for option, value in (("--lr", "inf"), ("--lr", "nan"), ("--det-weight", "-1"), ("--roi-weight", "inf")):
        run = tmp_path / "r"
        assert main(["train", "--data", str(trained / "data"), "--out", str(run), option, value]) == 2
        _one_line_error(capsys, "must be in")
        assert not run.exists()


def test_train_says_its_split_and_takes_the_held_out_caps(trained, tmp_path, capsys):
    """The held-out parts are capped (8 slices each by default, which a --test-fraction of an archive silently hit):
    the caps are options, and the run says at its start how many slices train, validate and test."""
    args = ["train", "--data", str(trained / "data"), "--out", str(tmp_path / "run"), "--mode", "pixel",
            "--denoiser", "unet", "--denoiser-width", "8", "--pretrain-denoiser-steps", "0",
            "--pretrain-detector-steps", "0", "--rounds", "1", "--denoiser-steps", "1", "--detector-steps", "1",
            "--batch-size", "1", "--patch-size", "64", "--device", "cpu", "--test-fraction", "0.5"]  # fmt: skip
    assert main([*args, "--test-max-slices", "2"]) == 0
    assert "1 validation (at most 8), 2 test (at most 2)" in capsys.readouterr().err
    assert main([*args[:4], str(tmp_path / "run3"), *args[5:], "--test-max-slices", "3"]) == 0
    assert "3 test (at most 3)" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--test-max-slices", "0"])  # out of range: refused by the parser
    assert exit_info.value.code == 2


def test_train_says_when_its_best_checkpoint_is_below_its_start(trained, tmp_path, capsys, monkeypatch):
    """Regression: continuing the shipped pair at the default rate exported a model 2 dB below the one it
    started from, said nowhere. The run says it, and the exported model is marked (a warning wherever it loads)."""
    from napari_lidnet.metrics.selection import worse_reason
    from napari_lidnet.models.weights import read_card

    shutil.copytree(trained / "models", tmp_path / "models")  # its export stays out of the other tests' folder
    monkeypatch.setenv("NAPARI_LIDNET_MODEL_DIR", str(tmp_path / "models"))
    args = ["train", "--data", str(trained / "data"), "--out", str(tmp_path / "run"), "--mode", "pixel",
            "--init-denoiser", "tiny", "--init-detector", "tiny", "--pretrain-from-init",
            "--pretrain-denoiser-steps", "10", "--pretrain-detector-steps", "0", "--rounds", "0", "--lr", "0.03",
            "--batch-size", "2", "--patch-size", "64", "--device", "cpu", "--export", "wrecked"]  # fmt: skip
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "; the starting weights: psnr" in err
    assert "warning: the best checkpoint is worse than the weights the run started from: its validation score" in err
    assert "; wrecked is marked so wherever it is picked" in err  # the name it was saved under
    path = next(m for m in list_models() if m.name == "wrecked_denoiser").path
    assert worse_reason(read_card(path)) is not None
    assert main(["denoise", str(trained / "data" / "full" / sorted(os.listdir(trained / "data" / "full"))[0]),
                 str(tmp_path / "out.npy"), "--model", "wrecked_denoiser", "--device", "cpu"]) == 0  # fmt: skip
    assert "warning: wrecked_denoiser: its validation PSNR fell from" in capsys.readouterr().err


def test_sigterm_while_a_series_is_written_leaves_no_half_series(tmp_path, capsys, monkeypatch):
    """Regression: `lidnet denoise IN OUT` stopped by SIGTERM (a scheduler, `timeout`, `kill`) left OUT with
    16 of 64 valid slices that `lidnet detect` then read as a whole series, and a re-run was refused. SIGTERM now
    stops it as Ctrl-C does: one line, exit 143, the slices written so far removed (a real signal, sent to this
    process as the third slice is written)."""
    import os
    import signal

    import pydicom
    from conftest import synthetic_hu, write_series

    write_series(tmp_path / "in", synthetic_hu((12, 64, 64), seed=4) * 0.1, series_uid="1.2.3.99")
    real, written = pydicom.dcmwrite, []

    def dcmwrite(*args, **kwargs):
        real(*args, **kwargs)
        written.append(args[0])
        if len(written) == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(pydicom, "dcmwrite", dcmwrite)
    rc = main(["denoise", str(tmp_path / "in"), str(tmp_path / "out"), "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 143 and err[-1].startswith("lidnet denoise: terminated (SIGTERM)"), err[-3:]
    assert len(written) == 3 and not (tmp_path / "out").exists()
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # given back


def test_boxes_of_a_deeplesion_folder_name_its_slices_and_no_patient_coordinates(tmp_path):
    """Regression: a DeepLesion sub-volume's boxes gave the index inside it as the slice (1 for 105.png)
    and lps_*_mm for PNGs, which have no patient orientation. They carry the archive's slice number, and no lps_."""
    import csv
    import warnings

    from conftest import write_png_hu

    from napari_lidnet.io.boxes_io import write_volume_boxes
    from napari_lidnet.io.deeplesion import read_deeplesion_folder, read_deeplesion_slice

    folder = tmp_path / "000001_01_01"
    folder.mkdir()
    for k in (104, 105, 106):
        write_png_hu(folder / f"{k}.png", np.full((24, 32), 40.0, np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no DL_info.csv: 1 mm assumed, said
        (vol,) = read_deeplesion_folder(folder)
    out = write_volume_boxes(tmp_path / "b.csv", np.array([[1, 2, 3, 9, 8, 0.9]]), vol)
    (row,) = list(csv.DictReader(out.open()))
    assert row["slice"] == "1" and row["deeplesion_slice"] == "105"
    assert not any(k.startswith("lps_") for k in row), row
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        key = read_deeplesion_slice(folder / "106.png")  # a key slice opened alone: its number too
    (row,) = list(csv.DictReader(write_volume_boxes(tmp_path / "k.csv", np.array([[0, 2, 3, 9, 8, 0.9]]), key).open()))
    assert row["slice"] == "0" and row["deeplesion_slice"] == "106"


def test_boxes_of_a_source_without_a_pixel_size_carry_no_mm(tmp_path) -> None:
    """Regression: boxes of a .npy (and of a DICOM without PixelSpacing) had width_mm/height_mm equal to
    their sides in pixels and lps_* from the assumed 1 mm, without a word. No mm columns there; a known size keeps
    them."""
    import csv

    from napari_lidnet.io.boxes_io import write_volume_boxes
    from napari_lidnet.io.volume import CTVolume

    rows = np.array([[1, 2, 3, 9, 8, 0.9]])
    assumed = CTVolume(np.zeros((3, 24, 32), np.float32), (1.0, 1.0, 1.0), metadata={"spacing_assumed": True})
    (row,) = list(csv.DictReader(write_volume_boxes(tmp_path / "a.csv", rows, assumed).open()))
    assert not any(k.endswith("_mm") for k in row), row
    info = json.loads(write_volume_boxes(tmp_path / "a.json", rows, assumed).read_text())
    assert info["spacing_mm"] is None
    known = CTVolume(np.zeros((3, 24, 32), np.float32), (2.0, 0.5, 0.5), origin=(0.0, 0.0, 0.0), direction=np.eye(3))
    (row,) = list(csv.DictReader(write_volume_boxes(tmp_path / "k.csv", rows, known).open()))
    assert float(row["width_mm"]) == 3.5 and "lps_x_mm" in row


@pytest.mark.parametrize("suffix", [".npz", ".tif"])
def test_an_assumed_voxel_size_is_not_written_as_measured(tmp_path, suffix) -> None:
    """Regression: a .npy (no voxel size: 1 mm assumed) denoised to .npz stored spacing [1, 1], so every
    later read took the made-up 1 mm as known. The output stores none and reads back as assumed."""
    from napari_lidnet.io.arrays import read_array

    low = np.where(np.hypot(*np.mgrid[-16:16, -16:16]) < 12, 40.0, -1000.0).astype(np.float32)[None].repeat(2, 0)
    np.save(tmp_path / "ct.npy", low)
    assert main(["denoise", str(tmp_path / "ct.npy"), str(tmp_path / f"out{suffix}")]) == 0
    assert read_array(tmp_path / f"out{suffix}").metadata["spacing_assumed"]
    # a DICOM series without PixelSpacing: its slice spacing is measured from the positions, and stays
    import pydicom
    from conftest import synthetic_hu, write_series

    uid = "1.2.826.0.1.3680043.8.498.66"
    for f in write_series(tmp_path / "dcm", synthetic_hu((3, 32, 32), seed=2), series_uid=uid):
        ds = pydicom.dcmread(f)
        del ds.PixelSpacing
        ds.save_as(f)
    assert main(["denoise", str(tmp_path / "dcm"), str(tmp_path / f"dcm{suffix}")]) == 0
    back = read_array(tmp_path / f"dcm{suffix}")
    assert back.metadata["spacing_assumed"] and back.spacing[0] == pytest.approx(2.5)


def test_denoising_our_own_output_again_says_so(tmp_path, capsys) -> None:
    """Regression: `lidnet denoise out1 out1b` denoised a series this program had denoised, without a
    word (--all-series leaves such series out: "it would be denoised twice")."""
    from conftest import synthetic_hu, write_series

    write_series(tmp_path / "ct", synthetic_hu((3, 32, 32), seed=2), series_uid="1.2.826.0.1.3680043.8.498.65")
    for first, again in (("den1", "den2"), ("den1.nii.gz", "den2.nii.gz")):
        assert main(["denoise", str(tmp_path / "ct"), str(tmp_path / first)]) == 0
        assert "denoised by napari-lidnet already" not in capsys.readouterr().err
        assert main(["denoise", str(tmp_path / first), str(tmp_path / again)]) == 0
        assert "was denoised by napari-lidnet already" in capsys.readouterr().err
