"""Archives indexed once into a manifest (headers only), slices read lazily, training straight from an archive."""

import json
import tracemalloc

import numpy as np
import pytest
from conftest import HEADER, _row, listing, synthetic_hu, write_enhanced_ct, write_series

from napari_lidnet._training.config import TrainConfig
from napari_lidnet._training.trainer import MANIFEST_FILE, Trainer
from napari_lidnet.cli import main
from napari_lidnet.datasets.manifest import index_archive, load_manifest, read_header, read_manifest, write_manifest
from napari_lidnet.io.dataset import Sample, read_dataset, write_dataset
from napari_lidnet.io.dicom_read import read_dicom
from napari_lidnet.io.png16 import write_png_hu


def _dataset(path, n=4, size=48, seed=0):
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(n):
        full = rng.integers(-200, 200, (size, size)).astype(np.float32)
        low = full + rng.integers(-50, 50, full.shape).astype(np.float32)
        samples.append(Sample(f"s{i}", full, low, np.array([[5, 6, 20, 22]], np.float32), 0.8))
    return write_dataset(path, samples, {"dose": 0.25})


def test_dataset_folders_are_indexed_without_reading_pixels(tmp_path):
    archive = tmp_path / "archive"
    _dataset(archive / "site_a", n=3, seed=1)
    _dataset(archive / "site_b", n=2, seed=2)
    # a slice whose pixels are cut off after the PNG header: indexing must not need them
    broken = archive / "site_b" / "full" / "s1.png"
    broken.write_bytes(broken.read_bytes()[:40])
    out = index_archive(archive, tmp_path / "index.jsonl")
    header = read_header(out)
    assert header["kind"] == "dataset" and header["n"] == 5 and header["n_without_low"] == 0
    slices = read_manifest(out)
    assert [s.name for s in slices] == ["site_a/s0", "site_a/s1", "site_a/s2", "site_b/s0", "site_b/s1"]
    for s, ref in zip(slices[:3], read_dataset(archive / "site_a")):
        assert np.array_equal(s.full_hu, ref.full_hu) and np.array_equal(s.low_hu, ref.low_hu)
        assert np.array_equal(s.boxes, ref.boxes) and s.spacing_mm == ref.spacing_mm and s.shape == (48, 48)
    with pytest.raises(ValueError, match="s1.png"):
        slices[-1].full_hu  # noqa: B018 - the read happens on access, with the file named


def test_deeplesion_tree_key_slices_with_boxes_and_simulated_low_dose(deeplesion_tree, tmp_path):
    root, series, hus = deeplesion_tree
    out = index_archive(root, tmp_path / "dl.jsonl")
    header = read_header(out)
    assert header["kind"] == "deeplesion" and header["n"] == 1 and header["n_skipped"] == 1
    assert "000002_01_01_050.png" in header["skipped"][0]  # listed in the table, PNG not downloaded
    (s,) = load_manifest(out)[1]
    assert s["name"] == "000001_01_01_109" and s["spacing_mm"] == 0.7 and s["shape"] == [24, 32]
    assert np.allclose(s["boxes"], [[3.0, 4.0, 9.75, 11.5], [19.5, 1.5, 29.5, 7.5]])
    # with a dose, every slice gets a low-dose partner: a square one and (centred in air on a square, 2026-12-07;
    # it was skipped) the non-square one
    write_png_hu(series / "110.png", hus[110][:, :24])
    (root / "DL_info.csv").write_text(
        (root / "DL_info.csv").read_text() + _row("000001_01_01_110.png", 110, "1, 2, 9, 9")
    )
    out = index_archive(root, tmp_path / "dl2.jsonl", dose=0.25, seed=3)
    assert "not square" not in " ".join(read_header(out)["skipped"])
    wide, s = read_manifest(out)
    assert s.name == "000001_01_01_110" and s.shape == (24, 24) and np.array_equal(s.full_hu, hus[110][:, :24])
    low1, low2 = s.low_hu, s.low_hu
    assert np.array_equal(low1, low2) and not np.array_equal(low1, s.full_hu)  # seeded per slice: same every read
    assert wide.shape == (24, 32) and wide.low_hu.shape == (24, 32) and not np.array_equal(wide.low_hu, wide.full_hu)


def test_deeplesion_slices_that_cannot_be_read_are_skipped_at_index_time(deeplesion_tree, tmp_path):
    """Regression: an 8-bit key slice and a truncated one were indexed as usable (only their size was read)
    and failed when training read them. Every key slice's header is checked, the first of each series decoded (as
    one file per DICOM series is): each is skipped with its reason."""
    from PIL import Image

    root, series, hus = deeplesion_tree
    for name, key in (("000003_01_01", 7), ("000004_01_01", 9)):
        (root / "Images_png" / name).mkdir()
        table = (root / "DL_info.csv").read_text()
        (root / "DL_info.csv").write_text(table + _row(f"{name}_{key:03d}.png", key, "1, 2, 9, 9"))
    Image.fromarray(np.zeros((24, 32), np.uint8)).save(root / "Images_png" / "000003_01_01" / "007.png")
    write_png_hu(root / "Images_png" / "000004_01_01" / "009.png", hus[109])
    whole = (root / "Images_png" / "000004_01_01" / "009.png").read_bytes()
    (root / "Images_png" / "000004_01_01" / "009.png").write_bytes(whole[: len(whole) // 2])
    header = read_header(index_archive(root, tmp_path / "dl.jsonl"))
    skipped = " | ".join(header["skipped"])
    assert header["n"] == 1 and "000003_01_01_007.png: " in skipped and "8-bit grayscale PNG is not a 16-bit" in skipped
    assert "000004_01_01_009.png: " in skipped and "not a readable PNG" in skipped


def test_dicom_archive_rows_match_the_series_reader(two_series_dir, tmp_path):
    root = two_series_dir["root"]
    before = listing(root)
    assert read_header(index_archive(root, tmp_path / "all.jsonl"))["n"] == 4 + 3  # both series, every slice
    out = index_archive(root, tmp_path / "dicom.jsonl", dose=0.5)
    assert listing(root) == before  # nothing written next to the user's files
    header = read_header(out)
    # the 12 x 10 slices too (skipped until 2026-12-07: "not square"; the projector centres them in air)
    assert header["kind"] == "dicom" and header["n"] == 4 + 3 and header["n_skipped"] == 1  # the SR
    slices = [s for s in read_manifest(out) if s.shape == (8, 8)]
    (ref,) = [v.hu for v in read_dicom(root) if v.metadata["series_uid"] == two_series_dir["uid_b"]]
    assert sorted(s.full_hu.tobytes() for s in slices) == sorted(r.tobytes() for r in ref)
    assert all(s.spacing_mm == 0.7 and s.shape == (8, 8) for s in slices)
    assert all(len(s.boxes) == 0 for s in slices)


def test_an_enhanced_ct_file_is_indexed_frame_by_frame(tmp_path):
    """One multi-frame Enhanced CT file: a row per frame, each read with its own rescale, as the reader reads it."""
    root = tmp_path / "enh"
    root.mkdir()
    hu = synthetic_hu((3, 8, 8), seed=2)
    write_enhanced_ct(root / "enh.dcm", hu, [5.0, 2.5, 0.0], intercepts=[-1024, -2048, -1024])
    slices = read_manifest(index_archive(root, tmp_path / "enh.jsonl", dose=0.5))
    assert len({s.name for s in slices}) == 3
    (vol,) = read_dicom(root)
    assert sorted(s.full_hu.tobytes() for s in slices) == sorted(v.tobytes() for v in vol.hu)
    assert all(s.spacing_mm == pytest.approx(0.7) for s in slices)
    (root / "other.nii.gz").write_bytes(b"")  # not indexed: said so
    header = read_header(index_archive(root, tmp_path / "enh2.jsonl", dose=0.5))
    assert header["n"] == 3 and any("other.nii.gz (NIfTI" in s for s in header["skipped"])


def test_bad_manifests_and_archives_are_refused(tmp_path, two_series_dir):
    root = two_series_dir["root"]
    with pytest.raises(ValueError, match="inside the archive"):
        index_archive(root, root / "index.jsonl")
    out = index_archive(root, tmp_path / "nodose.jsonl")
    with pytest.raises(ValueError, match="no low-dose image.*dose"):
        read_manifest(out)
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:3]) + "\n")
    with pytest.raises(ValueError, match="truncated"):
        read_manifest(out)
    with pytest.raises(ValueError, match="not a lidnet manifest"):
        read_manifest(root / "README.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty"):
        index_archive(tmp_path / "empty", tmp_path / "e.jsonl")
    assert not (tmp_path / "e.jsonl").exists()


def test_lidnet_index_command(tmp_path, capsys):
    archive = tmp_path / "dicoms"
    write_series(archive, synthetic_hu((3, 16, 16)), series_uid="1.2.826.0.1.3680043.8.498.77")
    out = tmp_path / "m.jsonl"
    assert main(["index", str(archive), "--out", str(out), "--dose", "0.3"]) == 0
    err = capsys.readouterr().err
    assert read_header(out)["dose"] == 0.3 and "3 slices" in err and "add no noise" not in err
    assert main(["index", str(archive), "--out", str(tmp_path / "one.jsonl"), "--dose", "1"]) == 0
    assert "note: --dose 1 is the scans' own dose" in capsys.readouterr().err  # (not silent)
    assert main(["index", str(tmp_path / "missing"), "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "no such archive folder" in capsys.readouterr().err and not (tmp_path / "x.jsonl").exists()


def test_derived_series_are_not_indexed_as_normal_dose_scans(tmp_path):
    """Regression: a study read with this plugin holds its denoised series (ImageType DERIVED); indexed,
    it became 'normal-dose' training targets with noise inserted on top. Derived series are left out, named."""
    archive = tmp_path / "study"
    write_series(archive / "original", synthetic_hu((3, 16, 16)), series_uid="1.2.826.0.1.3680043.8.498.61")
    write_series(archive / "denoised", synthetic_hu((3, 16, 16), seed=1), series_uid="1.2.826.0.1.3680043.8.498.62",
                 description="CT denoised (LIDnet default)", extra={"ImageType": ["DERIVED", "SECONDARY", "AXIAL"]})
    header, rows = load_manifest(index_archive(archive, tmp_path / "m.jsonl", dose=0.25))
    assert len(rows) == 3 and all(r["file"].startswith("original") for r in rows)
    assert any("DERIVED" in s and "CT denoised (LIDnet default)" in s for s in header["skipped"])


def test_a_manifest_keeps_its_dose(tmp_path, capsys):
    """Regression: ``train --dose`` with a manifest was ignored (trained at the manifest's dose, the card
    said the other), or refused with 'give a dose (--dose)' when it was given. Now a dose other than the
    manifest's is refused with the command that makes one; a missing manifest is named as such."""
    archive = tmp_path / "dicoms"
    write_series(archive, synthetic_hu((3, 32, 32)), series_uid="1.2.826.0.1.3680043.8.498.78")
    at_25 = index_archive(archive, tmp_path / "m25.jsonl", dose=0.25)
    no_dose = index_archive(archive, tmp_path / "none.jsonl")
    with pytest.raises(ValueError, match=r"indexed at dose 0.25, not at --dose 0.5.*--dose 0.5"):
        Trainer(_cfg(tmp_path / "r1", at_25, dose=0.5, patch_size=32))
    with pytest.raises(ValueError, match="indexed without a dose"):
        Trainer(_cfg(tmp_path / "r2", no_dose, dose=0.25, patch_size=32))
    with pytest.raises(ValueError) as err:  # without --dose, not "give a dose (--dose)"
        Trainer(_cfg(tmp_path / "r2", no_dose, patch_size=32))
    assert "index the archive again" in str(err.value) and "give a dose" not in str(err.value)
    trainer = Trainer(_cfg(tmp_path / "r3", at_25, dose=0.25, patch_size=32))
    assert trainer._data_record["dose"] == 0.25 and trainer._data_record["path"] == str(at_25.resolve())
    list(trainer.run())
    more = Trainer(_cfg(tmp_path / "r3", at_25, patch_size=32, rounds=1, denoiser_steps=1))  # --dose left out
    assert list(more.run())[-1]["stage"] == "finished"  # not refused ('dose: run 0.25')
    assert main(["train", "--data", str(tmp_path / "gone.jsonl"), "--out", str(tmp_path / "r4")]) == 2
    assert "no such manifest" in capsys.readouterr().err
    assert not any((tmp_path / r).exists() for r in ("r1", "r2", "r4"))


def test_an_archive_s_simulated_partners_carry_each_slice_s_own_noise_at_the_dose(tmp_path):
    """Regression: a chest with 60 HU of its own noise got 13-19 HU at "25%" (a phantom's photon
    count), and a model trained on it learned to keep noise. A run from an archive now scales each simulated
    partner's noise to the slice's own noise at the dose (sqrt(3) times it at 25%), with the 1 mm scanner's grain."""
    from napari_lidnet.metrics.noreference import flat_block_noise_sds

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[:128, :128]
    body = ((yy - 64) / 56) ** 2 + ((xx - 64) / 58) ** 2 < 1
    hu = np.where(body, 40.0, -1000.0) + rng.normal(0, 25, (3, 128, 128)) * body
    write_series(tmp_path / "scans", np.rint(hu).astype(np.float32), series_uid="1.2.826.0.1.3680043.8.498.79")
    index = index_archive(tmp_path / "scans", tmp_path / "m.jsonl", dose=0.25)
    trainer = Trainer(_cfg(tmp_path / "run", index, dose=0.25, patch_size=32, val_fraction=0.34))
    assert all(s.to_simulate for s in trainer.train_samples + trainer.val_samples)
    for s in trainer.train_samples:
        full = s.full_hu
        own, added = flat_block_noise_sds(full, [full, s.low_hu - full])
        assert added == pytest.approx(own * np.sqrt(3), rel=0.2), (own, added)
    assert not any(s.to_simulate for s in trainer.train_samples)  # cached beside the manifest
    said = [r["message"] for r in trainer.run() if r["stage"] == "setup"]  # the run says what it will make first
    assert f"{len(trainer.val_samples)} slices have no low-dose partner yet" in " ".join(said), said
    plain = read_manifest(index)[0]  # read without a run: the scanner model's photon count, far less here
    assert flat_block_noise_sds(plain.full_hu, [plain.low_hu - plain.full_hu])[0] < 0.5 * own * np.sqrt(3)


def _cfg(out, data, **kw):
    base = dict(
        out=str(out), data=str(data), mode="pixel", pretrain_denoiser_steps=2, pretrain_detector_steps=0, rounds=0,
        batch_size=2, patch_size=32, denoiser_kwargs={"width": 8, "factor": 2}, val_fraction=0.25, device="cpu",
    )  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_training_from_an_archive_folder_indexes_it_once(tmp_path):
    data = _dataset(tmp_path / "data", n=4)
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="patch size"):
        Trainer(_cfg(run, data, patch_size=64))
    assert not run.exists()  # a refused run writes nothing
    trainer = Trainer(_cfg(run, data, workers=1))
    assert len(trainer.train_samples) == 3 and not (run / MANIFEST_FILE).exists()
    records = list(trainer.run())
    assert records[-1]["stage"] == "finished"
    index = json.loads((run / MANIFEST_FILE).read_text().splitlines()[0])
    assert index["root"] == str(data.resolve()) and index["n"] == 4
    again = Trainer(_cfg(run, data))
    assert again._new_manifest is None  # the run folder's index is reused
    lines = (run / MANIFEST_FILE).read_text().splitlines()
    old = {k: v for k, v in json.loads(lines[0]).items() if k != "indexer"}  # made before rows were in slice order
    (run / MANIFEST_FILE).write_text("\n".join([json.dumps(old), *lines[1:]]) + "\n")
    assert Trainer(_cfg(run, data))._new_manifest is None  # a run resumed keeps the data (and split) it started on
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / MANIFEST_FILE).write_text((run / MANIFEST_FILE).read_text())
    assert Trainer(_cfg(fresh, data))._new_manifest is not None  # a new run: that older index is made again


def test_training_from_a_manifest_holds_a_few_slices_not_the_archive(tmp_path):
    """Python and numpy allocations (tracemalloc) peak at a few slices while training from a 48-slice manifest; the
    eager reader, the control, holds the whole archive."""
    data = _dataset(tmp_path / "data", n=48, size=160)
    archive_bytes = 48 * 2 * 160 * 160 * 4  # full + low, float32
    index = index_archive(data, tmp_path / "m.jsonl")
    list(Trainer(_cfg(tmp_path / "warm-up", index, val_fraction=0.0, pretrain_denoiser_steps=1)).run())  # imports
    tracemalloc.start()
    cfg = _cfg(tmp_path / "run", index, val_fraction=0.0, pretrain_denoiser_steps=4, detector_kwargs={"width": 4})
    records = list(Trainer(cfg).run())
    lazy_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    eager = read_dataset(data)
    eager_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert records[-1]["stage"] == "finished" and len(eager) == 48
    assert eager_peak > archive_bytes and lazy_peak < 0.2 * archive_bytes, (lazy_peak, eager_peak)


def test_simulated_low_doses_are_cached_next_to_the_manifest(deeplesion_tree, tmp_path):
    """A missing low dose is simulated once per slice and kept in <manifest>.lowdose/ (never in the archive): a
    second read, in this list or a new one, reads the cache instead of simulating again."""
    root, series, hus = deeplesion_tree
    write_png_hu(series / "110.png", hus[110][:, :24])
    (root / "DL_info.csv").write_text(
        (root / "DL_info.csv").read_text() + _row("000001_01_01_110.png", 110, "1, 2, 9, 9")
    )
    before = listing(root)
    out = index_archive(root, tmp_path / "m.jsonl", dose=0.25, seed=3)
    cache = tmp_path / "m.jsonl.lowdose"
    s = read_manifest(out)[-1]
    assert s.name == "000001_01_01_110"
    assert not cache.exists()
    low = s.low_hu
    entries = list(cache.glob("*.npy"))
    assert len(entries) == 1, "the simulated low dose was not kept"
    cached = entries[0]
    assert np.array_equal(np.load(cached), low) and np.array_equal(low, np.rint(low))  # whole HU, as stored
    assert not list(cache.glob("*.tmp")) and listing(root) == before  # nothing written into the archive
    marker = np.full(low.shape, 7, np.int16)
    np.save(cached, marker)  # what the cache holds is what a later read returns: no new simulation
    assert np.array_equal(s.low_hu, marker) and np.array_equal(read_manifest(out)[-1].low_hu, marker)
    # another dose or seed is another entry; so is a changed source file
    other = index_archive(root, tmp_path / "m.jsonl", dose=0.5, seed=3)
    assert not np.array_equal(read_manifest(other)[-1].low_hu, marker) and len(list(cache.glob("*.npy"))) == 2


def test_deeplesion_official_split_is_honoured(deeplesion_tree, tmp_path):
    root, series, hus = deeplesion_tree
    table = root / "DL_info.csv"
    lines = table.read_text().splitlines()
    extra = [_row(f"000001_01_01_{k}.png", k, "1, 2, 9, 9").rstrip("\n")[:-1] + code for k, code in
             ((108, "2"), (110, "3"))]  # fmt: skip
    table.write_text("\n".join(lines + extra) + "\n")
    default = load_manifest(index_archive(root, tmp_path / "default.jsonl"))[1]
    assert [r["name"] for r in default] == ["000001_01_01_109"]  # training indexes the train part by default
    names = {}
    for split in ("train", "val", "test", "all"):
        header, rows = load_manifest(index_archive(root, tmp_path / f"{split}.jsonl", split=split))
        assert header["split"] == split
        names[split] = [r["name"] for r in rows]
    assert names["train"] == ["000001_01_01_109"] and names["val"] == ["000001_01_01_108"]
    assert names["test"] == ["000001_01_01_110"] and len(names["all"]) == 3
    (row,) = load_manifest(tmp_path / "train.jsonl")[1]
    assert row["group"] == "000001_01_01" and row["position"] == 109
    with pytest.raises(ValueError, match="split"):
        index_archive(root, tmp_path / "x.jsonl", split="holdout")
    from napari_lidnet.cli import main  # the command line passes it through

    assert main(["index", str(root), "--out", str(tmp_path / "cli.jsonl"), "--split", "test"]) == 0
    assert [r["name"] for r in load_manifest(tmp_path / "cli.jsonl")[1]] == names["test"]
    # training on a manifest of another part (here the test part) must not run to the end
    from napari_lidnet.datasets.manifest import archive_index

    for made, asked in (("test", "train"), ("all", "train"), ("train", "all")):
        with pytest.raises(ValueError, match=rf"holds DeepLesion's '{made}' part, not the '{asked}' part"):
            archive_index(tmp_path / f"{made}.jsonl", tmp_path / "cached.jsonl", split=asked)
    with pytest.raises(ValueError, match="indexed without a dose"):  # past the split check: the same part
        archive_index(tmp_path / "test.jsonl", tmp_path / "cached.jsonl", split="test")
    with pytest.raises(ValueError, match="indexed without a dose"):  # a run started so before the check resumes
        archive_index(tmp_path / "test.jsonl", tmp_path / "cached.jsonl", split="train", resuming=True)


def test_training_from_a_deeplesion_folder_uses_its_train_part(deeplesion_tree, tmp_path):
    root, series, hus = deeplesion_tree
    rng = np.random.default_rng(1)
    for k in (108, 109, 110):
        write_png_hu(series / f"{k}.png", rng.integers(-200, 200, (32, 32)).astype(np.float32))
    table = root / "DL_info.csv"
    rows = [_row(f"000001_01_01_{k}.png", k, "1, 2, 9, 9").rstrip("\n")[:-1] + c for k, c in
            ((108, "1"), (109, "1"), (110, "3"))]  # fmt: skip
    table.write_text(HEADER + "\n".join(rows) + "\n")
    cfg = _cfg(tmp_path / "run", root, dose=0.25, val_fraction=0.0, pretrain_denoiser_steps=1)
    trainer = Trainer(cfg)
    assert sorted(s.name for s in trainer.train_samples) == ["000001_01_01_108", "000001_01_01_109"]
    assert list(trainer.run())[-1]["stage"] == "finished"
    assert (tmp_path / "run" / "manifest.jsonl.lowdose").is_dir()  # the run folder's manifest keeps the cache


def test_dicom_rows_carry_their_series_and_position(two_series_dir, tmp_path):
    rows = load_manifest(index_archive(two_series_dir["root"], tmp_path / "d.jsonl"))[1]
    by_series = {}
    for r in rows:
        by_series.setdefault(r["group"], []).append(r["position"])
    assert {k: sorted(v) for k, v in by_series.items()} == {
        two_series_dir["uid_a"]: [0, 1, 2, 3],
        two_series_dir["uid_b"]: [0, 1, 2],
    }


def test_a_failed_manifest_write_keeps_the_old_manifest_and_leaves_no_temporary_file(tmp_path):
    out = tmp_path / "archive.jsonl"
    write_manifest(out, {"format": "x"}, [{"file": "a.dcm"}])
    before = out.read_bytes()
    with pytest.raises(TypeError):
        write_manifest(out, {"format": "x"}, [{"file": "a.dcm"}, {"file": object()}])
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["archive.jsonl"]
    write_manifest(out, {"format": "y"}, [])
    assert json.loads(out.read_text().splitlines()[0]) == {"format": "y"}


def _archive_series(folder, hu, uid, *, patient="P1", drop_rescale=(), spacing=(0.7, 0.7), names=None):
    """One series of square slices at z = 2.5 k, files named in no order, no InstanceNumber (type 2, often empty);
    the slices in ``drop_rescale`` stored without RescaleSlope/Intercept (their stored values: HU + 1024)."""
    import pydicom
    from conftest import make_ct_slice

    folder.mkdir(parents=True)
    names = names if names is not None else np.random.default_rng(3).permutation(len(hu))
    for k, plane in enumerate(hu):
        path = make_ct_slice(folder / f"{names[k]:05d}.dcm", plane + 1024.0, series_uid=uid, pixel_spacing=spacing,
                             position=(-100.0, -120.0, 2.5 * k), extra={"PatientID": patient})  # fmt: skip
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = None
        if k in drop_rescale:
            del ds.RescaleSlope, ds.RescaleIntercept
        ds.save_as(path, enforce_file_format=True)


def test_dicom_rows_follow_the_slice_positions_and_give_a_slice_without_rescale_the_series_one(tmp_path):
    """Rows are numbered along the slices' positions, not the file names (PACS names files by UID); a slice
    stored without a rescale is read with its series' (not 1024 HU off its neighbours), as the reader reads it."""
    hu = synthetic_hu((6, 16, 16), seed=4)
    _archive_series(tmp_path / "arch" / "s", hu, "1.2.3.9", drop_rescale=(3,))
    out = index_archive(tmp_path / "arch", tmp_path / "m.jsonl", dose=0.25)
    slices = sorted(read_manifest(out), key=lambda s: s.position)
    (vol,) = read_dicom(tmp_path / "arch")
    np.testing.assert_array_equal(np.stack([s.full_hu for s in slices]), vol.hu)
    np.testing.assert_array_equal(vol.hu, hu)
    assert any("RescaleSlope" in note for note in read_header(out)["skipped"])  # said, as the reader says it


def test_series_that_cannot_train_are_skipped_at_index_time_with_a_reason(tmp_path):
    """A pixel size of 0 (the low-dose simulation divides by it), stored values without any rescale (not HU) and
    pixel data that cannot be read are listed as skipped when indexing, not met hours into a run; the good series
    is indexed."""
    hu = synthetic_hu((3, 16, 16), seed=5)
    root = tmp_path / "arch"
    _archive_series(root / "good", hu, "1.2.3.1")
    _archive_series(root / "zero", hu, "1.2.3.2", spacing=(0.0, 0.0))
    _archive_series(root / "raw", hu, "1.2.3.3", drop_rescale=(0, 1, 2))
    _archive_series(root / "cut", hu, "1.2.3.4")
    for f in sorted((root / "cut").iterdir()):
        f.write_bytes(f.read_bytes()[:-200])  # truncated inside the pixel data
    header = read_header(index_archive(root, tmp_path / "m.jsonl", dose=0.25))
    assert header["n"] == 3, header["skipped"]
    text = " | ".join(header["skipped"])
    assert "1.2.3.2" in text and "not a pixel size" in text
    assert "1.2.3.3" in text and "not HU" in text
    assert "1.2.3.4" in text and "cannot be read" in text


def test_no_patient_is_both_trained_and_held_out(tmp_path):
    """Two reconstructions of one patient (and the same series exported twice) are two series; when validation
    takes slices of that patient, none of the patient's slices trains."""
    from napari_lidnet._training.split import left_out, split_samples

    root = tmp_path / "arch"
    for i, (uid, patient) in enumerate((("1.9.1", "P1"), ("1.9.2", "P1"), ("1.9.3", "P2"), ("1.9.4", "P3"))):
        _archive_series(root / uid, synthetic_hu((10, 16, 16), seed=i), uid, patient=patient)
    slices = read_manifest(index_archive(root, tmp_path / "m.jsonl", dose=0.25))
    assert len({s.patient for s in slices}) == 3
    tried = set()
    for seed in range(12):
        train, val, _ = split_samples(slices, 0.2, seed, 8)
        held = {s.patient for s in val}
        tried |= held
        assert not held & {s.patient for s in train}, seed
        assert train
    assert tried == {s.patient for s in slices}  # every patient was held out under some seed
    train, val, test = split_samples(slices, 0.2, 0, 8)  # and the run says what that costs (e.g. 56 of 84)
    lost = len(slices) - len(train) - len(val) - len(test)
    patient_rest = sum(s.patient == val[0].patient for s in slices) - len(val)
    said = left_out(slices, train, [*val, *test])
    assert lost == patient_rest and said.startswith(f"left out {lost} slices: ") and "held-out slices' patient" in said
    one = [s for s in slices if s.patient == slices[0].patient]  # one patient only: the neighbours' guard holds
    for seed in range(6):
        train, val, _ = split_samples(one, 0.2, seed, 8)
        near = {(s.group, s.position + d) for s in val for d in (-1, 0, 1)}
        assert train and not {(s.group, s.position) for s in train} & near, seed
    said = left_out(one, train, val)
    assert said.startswith("left out ") and "next to a held-out slice" in said and "patient" not in said


def test_linked_series_and_files_are_indexed_where_the_archive_shows_them(tmp_path):
    """A curated archive of links into storage: a linked series folder is indexed (was silently missing), a folder
    of linked files too (was: the whole index refused), each under its path in the archive."""
    hu = synthetic_hu((3, 16, 16), seed=6)
    _archive_series(tmp_path / "storage" / "a", hu, "1.7.1", patient="P1")
    _archive_series(tmp_path / "storage" / "b", hu, "1.7.2", patient="P2")
    root = tmp_path / "arch"
    root.mkdir()
    (root / "A").symlink_to(tmp_path / "storage" / "a", target_is_directory=True)
    (root / "B").mkdir()
    for f in (tmp_path / "storage" / "b").iterdir():
        (root / "B" / f.name).symlink_to(f)
    slices = read_manifest(index_archive(root, tmp_path / "m.jsonl", dose=0.25))
    assert sorted({s.entry["file"].split("/")[0] for s in slices}) == ["A", "B"] and len(slices) == 6
    assert all(s.full_hu.shape == (16, 16) for s in slices)


def test_a_run_whose_dataset_was_made_again_is_not_resumed_with_the_old_boxes(tmp_path):
    """Regression: the data folder made again with another seed (the same file names) was resumed without a
    word: the new images trained with the boxes of the run's cached index. Its tables are fingerprinted when the run
    indexes them; a resume refuses changed ones in one line, and an unchanged folder resumes as before."""
    import shutil

    data = _dataset(tmp_path / "data", n=4, seed=0)
    run = tmp_path / "run"
    list(Trainer(_cfg(run, data, rounds=1, denoiser_steps=1, detector_steps=0)).run())
    assert Trainer(_cfg(run, data))._new_manifest is None  # unchanged: resumed on its index
    shutil.rmtree(data)
    rng = np.random.default_rng(9)
    samples = [Sample(f"s{i}", rng.integers(-200, 200, (48, 48)).astype(np.float32),
                      rng.integers(-200, 200, (48, 48)).astype(np.float32), np.array([[1, 2, 9, 9]], np.float32), 0.8)
               for i in range(4)]  # fmt: skip
    write_dataset(data, samples, {"dose": 0.25, "seed": 9})
    with pytest.raises(ValueError, match=r"changed since this run indexed it .*restore the data, or start a new --out"):
        Trainer(_cfg(run, data))


def test_evaluate_takes_a_manifest_of_deeplesions_test_part(deeplesion_tree, tmp_path, capsys):
    """Regression: no command evaluated on DeepLesion's official test part (evaluate took dataset folders
    only); it takes a manifest now, low doses simulated at its dose; one without a dose is refused in one line."""
    from napari_lidnet.cli import main

    root, series, _ = deeplesion_tree
    yy, xx = np.mgrid[:64, :64]
    body = np.where((yy - 32) ** 2 + (xx - 32) ** 2 < 26**2, 40.0, -1000.0) + 60.0 * ((yy - 8) ** 2 + (xx - 9) ** 2 < 9)
    write_png_hu(series / "110.png", body.astype(np.float32))  # square, as simulating a low dose needs
    lines = (root / "DL_info.csv").read_text().splitlines()
    test_row = _row("000001_01_01_110.png", 110, "4, 4, 14, 12").rstrip("\n")[:-1] + "3"
    (root / "DL_info.csv").write_text("\n".join([*lines, test_row]) + "\n")
    assert main(["index", str(root), "--out", str(tmp_path / "t.jsonl"), "--split", "test", "--dose", "0.25"]) == 0
    assert main(["evaluate", str(tmp_path / "t.jsonl"), "--json", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["n_slices"] == 1 and result["n_lesions"] == 1
    assert np.isfinite(result["results"]["low dose"]["psnr"]) and "sensitivity" in result["results"]["denoised"]
    assert main(["index", str(root), "--out", str(tmp_path / "nodose.jsonl"), "--split", "test"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "nodose.jsonl")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "indexed without a dose" in err and "--dose" in err
