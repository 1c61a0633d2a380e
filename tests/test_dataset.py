"""Dataset folder: write/read round trip, simulate_dataset, add_low_dose, refusal to clobber other folders."""

import json

import numpy as np
import pytest

from napari_lidnet.io.dataset import LazySample, Sample, read_dataset, read_info, write_dataset, write_json
from napari_lidnet.sim.make_dataset import add_low_dose, read_scanner_csv, simulate_dataset

SIZE = 96


def _hand_samples() -> list[Sample]:
    rng = np.random.default_rng(0)
    full = rng.normal(40, 20, (32, 32)).astype(np.float32)
    full[0, 0], full[0, 1] = -1024.0, 3000.4
    return [
        Sample("a", full, full + 5.6, np.array([[1, 2, 10, 12.5], [3, 4, 5, 6]], np.float32), 0.7),
        Sample("b.png", full - 100, None, np.zeros((0, 4), np.float32), 0.8),
    ]


def test_write_read_round_trip(tmp_path):
    samples = _hand_samples()
    out = write_dataset(tmp_path / "ds", samples, {"source": "hand", "dose": 0.5})
    info = json.loads((out / "dataset.json").read_text())
    assert info["format"] == "lidnet-dataset" and info["version"] == 1 and info["n"] == 2 and info["source"] == "hand"
    assert (out / "full" / "a.png").is_file() and (out / "low" / "a.png").is_file()
    assert not (out / "low" / "b.png").exists()
    back = read_dataset(out)
    assert [s.name for s in back] == ["a", "b"]
    np.testing.assert_array_equal(back[0].full_hu, np.rint(samples[0].full_hu))  # HU stored as integers
    np.testing.assert_array_equal(back[0].low_hu, np.rint(samples[0].low_hu))
    assert back[1].low_hu is None and back[1].boxes.shape == (0, 4)
    np.testing.assert_allclose(back[0].boxes, samples[0].boxes)
    assert back[0].spacing_mm == pytest.approx(0.7)
    lazy = read_dataset(out, lazy=True)
    assert isinstance(lazy[0], LazySample) and "boxes=2" in repr(lazy[0])
    np.testing.assert_array_equal(lazy[0].full_hu, back[0].full_hu)
    assert lazy[1].low_hu is None


def test_refuses_foreign_and_finished_folders_replaces_an_interrupted_one(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"not a CT")
    with pytest.raises(ValueError, match="not a lidnet dataset"):
        write_dataset(foreign, _hand_samples())
    with pytest.raises(ValueError, match="not a lidnet dataset"):
        simulate_dataset(foreign, 1, 0.5, 0, size=SIZE)
    assert sorted(p.name for p in foreign.iterdir()) == ["cat.jpg"]  # nothing written
    own = write_dataset(tmp_path / "ds", _hand_samples())
    before = {p: p.read_bytes() for p in own.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="already holds a lidnet dataset; outputs never overwrite"):
        write_dataset(own, _hand_samples()[1:])
    with pytest.raises(ValueError, match="already holds a lidnet dataset"):
        simulate_dataset(own, 1, 0.5, 0, size=SIZE)
    assert {p: p.read_bytes() for p in own.rglob("*") if p.is_file()} == before  # nothing lost
    info = json.loads((own / "dataset.json").read_text())
    (own / "dataset.json").write_text(json.dumps({**info, "complete": False}))  # as an interrupted write leaves it
    write_dataset(own, _hand_samples()[1:])  # an interrupted write of ours is replaced, stale slices removed
    assert [p.name for p in (own / "full").iterdir()] == ["b.png"] and not list((own / "low").iterdir())
    assert [s.name for s in read_dataset(own)] == ["b"]


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_dataset(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="not a lidnet dataset"):
        read_dataset(tmp_path)
    out = write_dataset(tmp_path / "ds", _hand_samples())
    (out / "full" / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match="a.png"):
        read_dataset(out)
    out = write_dataset(tmp_path / "ds2", _hand_samples())
    with open(out / "lesions.csv", "a") as f:
        f.write("a.png,1,2,three,4\n")
    with pytest.raises(ValueError, match="lesions.csv"):
        read_dataset(out)
    info = json.loads((out / "dataset.json").read_text())
    (out / "dataset.json").write_text(json.dumps({**info, "complete": False}))
    with pytest.raises(ValueError, match="did not finish"):
        read_info(out)


def test_simulate_dataset(tmp_path):
    calls = []
    out = simulate_dataset(tmp_path / "sim", 3, 0.25, seed=11, size=SIZE, progress=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 3), (2, 3), (3, 3)]
    info = read_info(out)
    assert info["dose"] == 0.25 and info["seed"] == 11 and info["n"] == 3 and info["kind"] == "abdomen"
    assert info["command"].startswith("lidnet simulate --out") and "--dose 0.25" in info["command"]
    samples = read_dataset(out)
    assert len(samples) == 3 and all(s.full_hu.shape == (SIZE, SIZE) for s in samples)
    for s in samples:
        assert 0.6 <= s.spacing_mm <= 0.9
        assert s.full_hu[0, 0] == -1000  # air outside the FOV
        body = s.full_hu > -500
        assert np.median(s.full_hu[body]) > -150  # soft tissue, not noise
        # low dose is noisier: the full-low difference has an SD of several HU inside the body
        assert np.std((s.low_hu - s.full_hu)[body]) > 5
        b = s.boxes
        assert np.all((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]) & (b >= 0) & (b <= SIZE))
    again = simulate_dataset(tmp_path / "sim2", 3, 0.25, seed=11, size=SIZE)
    for name in ("full/sim_00001.png", "low/sim_00002.png", "lesions.csv", "slices.csv"):
        assert (out / name).read_bytes() == (again / name).read_bytes()
    with pytest.raises(ValueError, match="dose"):
        simulate_dataset(tmp_path / "bad", 2, 1.5, 0, size=SIZE)


def test_add_low_dose_fills_missing_partners(tmp_path):
    sim = read_dataset(simulate_dataset(tmp_path / "sim", 2, 1.0, seed=3, size=SIZE))
    only_full = [Sample(s.name, s.full_hu, None, s.boxes, s.spacing_mm) for s in sim]
    out = write_dataset(tmp_path / "real", only_full, {"source": "DeepLesion (converted)"})
    assert add_low_dose(out, 0.1, seed=4) == 2
    assert add_low_dose(out, 0.1, seed=4) == 0  # already there
    info = read_info(out)
    assert info["dose"] == 0.1 and "noise insertion" in info["low_dose_source"] and info["source"].startswith("Deep")
    for s in read_dataset(out):
        body = s.full_hu > -500
        diff = (s.low_hu - s.full_hu)[body]
        assert abs(diff.mean()) < 3 and diff.std() > 5
    fast = write_dataset(tmp_path / "fast", only_full, {"source": "DeepLesion (converted)"})
    assert add_low_dose(fast, 0.1, seed=4, fast=True) == 2
    assert read_info(fast)["low_dose_source"].endswith("fast path")
    for exact, quick in zip(read_dataset(out), read_dataset(fast), strict=True):
        body = exact.full_hu > -500
        sd_exact, sd_fast = ((x.low_hu - x.full_hu)[body].std() for x in (exact, quick))
        assert not np.array_equal(exact.low_hu, quick.low_hu) and abs(sd_fast / sd_exact - 1) < 0.15


def test_add_low_dose_with_each_slices_own_protocol(tmp_path):
    """dose=None: every slice gets the dose, views, kernel and noise of its scanner.csv row; a folder without one is
    refused before anything is written."""
    out = simulate_dataset(tmp_path / "rand", 4, 0.25, seed=5, size=SIZE, domain="random")
    rows = read_scanner_csv(out)
    for png in (out / "low").glob("*.png"):
        png.unlink()
    assert add_low_dose(out, None, seed=6) == 4
    assert read_info(out)["dose"] is None and "scanner.csv" in read_info(out)["low_dose_source"]
    sd = {}
    for s in read_dataset(out):
        body = s.full_hu > -500
        sd[s.name] = float((s.low_hu - s.full_hu)[body].std())
    doses = {name: float(rows[name]["dose"]) for name in sd}
    by_dose = sorted(sd, key=doses.get)
    assert sd[by_dose[0]] > sd[by_dose[-1]]  # the lowest dose got the most noise
    plain = write_dataset(
        tmp_path / "plain", [Sample("a", np.zeros((SIZE, SIZE), np.float32), None, np.zeros((0, 4)), 0.7)]
    )
    with pytest.raises(ValueError, match="scanner.csv"):
        add_low_dose(plain, None, seed=1)
    assert not list((plain / "low").glob("*.png"))


def test_a_dataset_card_is_replaced_whole_or_not_at_all(tmp_path):
    card = tmp_path / "dataset.json"
    write_json(card, {"n": 1})
    with pytest.raises(TypeError):
        write_json(card, {"n": 2, "bad": object()})
    assert json.loads(card.read_text()) == {"n": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dataset.json"]


def test_a_slice_of_a_dataset_opens_with_its_pixel_size_and_boxes(tmp_path):
    """Regression: `lidnet denoise sim/low/ out/` said the folder had no numbered PNG
    slices, and one slice of it opened at an assumed 1 mm pixel. A slice opens with its own pixel size and boxes;
    the dataset or its low/ and full/ folders (slices of separate phantoms) get a one-line answer."""
    from napari_lidnet.io.open_ct import open_ct

    root = write_dataset(tmp_path / "ds", _hand_samples(), {"dose": 0.25})
    samples = read_dataset(root)
    for part in ("low", "full"):
        for s in samples if part == "full" else [s for s in samples if s.low_hu is not None]:
            (vol,) = open_ct(root / part / f"{s.name}.png")
            assert vol.spacing == (s.spacing_mm, s.spacing_mm) and not vol.metadata.get("spacing_assumed")
            np.testing.assert_array_equal(vol.hu, s.low_hu if part == "low" else s.full_hu)
            np.testing.assert_allclose(vol.boxes[:, 1:], s.boxes)
            assert np.all(vol.boxes[:, 0] == 0) and vol.metadata.get("dose") == (0.25 if part == "low" else None)
    for folder in (root, root / "low", root / "full"):
        with pytest.raises(ValueError, match=r"a lidnet dataset's slices .*not one volume: open one of its PNG files"):
            open_ct(folder)
    (root / "full" / f"{samples[1].name}.png").unlink()  # another slice gone: this one still opens
    assert open_ct(root / "full" / f"{samples[0].name}.png")[0].spacing == (samples[0].spacing_mm,) * 2
