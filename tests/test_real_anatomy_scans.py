"""``benchmarks/real_anatomy.py --scans``: a user's own normal-dose CT as the real-anatomy judge's slices."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import write_series

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import real_anatomy  # noqa: E402


def body_slices(n: int, rows: int, cols: int) -> np.ndarray:
    """(n, rows, cols) HU: a 40 HU ellipse in air, a different level per slice (to tell them apart)."""
    yy, xx = np.mgrid[:rows, :cols]
    inside = ((yy - rows / 2) / (0.4 * rows)) ** 2 + ((xx - cols / 2) / (0.4 * cols)) ** 2 < 1
    return np.stack([np.where(inside, 40.0 + 2 * k, -1000.0) for k in range(n)]).astype(np.float32)


def test_evenly_spaced_slices_of_each_scan_in_mm_and_the_rest_skipped_with_a_note(tmp_path: Path) -> None:
    hu = body_slices(10, 48, 40)
    write_series(tmp_path / "series", hu, series_uid="1.2.826.0.1.3680043.8.498.2001", pixel_spacing=(0.7, 0.7))
    np.save(tmp_path / "no_spacing.npy", hu[:3])  # the reader assumes 1 mm: the noise models cannot use it
    slices, notes = real_anatomy.scan_slices([tmp_path / "series", tmp_path / "no_spacing.npy"], per_scan=3)
    assert len(slices) == 3 and all(s.pixel_mm == pytest.approx(0.7) for s in slices)
    assert [s.name for s in slices] == ["series z2", "series z4", "series z7"]  # the scan named as it was given
    levels = [float(np.median(s.hu[s.body])) for s in slices]
    assert levels == pytest.approx([40 + 2 * 2, 40 + 2 * 4, 40 + 2 * 7])  # slices 2, 4, 7 of 10: ends left out
    assert all(s.hu.shape == (48, 48) for s in slices)  # square for the radon model, the body unchanged inside
    np.testing.assert_array_equal(slices[0].hu[:, 4:44], hu[2])
    assert any("no_spacing" in n and "pixel size is unknown" in n for n in notes)
    assert len(real_anatomy.scan_slices([tmp_path / "series"], per_scan=20)[0]) == 10  # every slice of a short scan


def test_the_scans_option_writes_its_own_results_and_never_over_an_earlier_report(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    a = real_anatomy.parse_args(["--scans", "x"])
    assert a.results == Path("bench-out/your_scans/real_anatomy") and a.per_scan == 4
    a.results.parent.mkdir(parents=True)
    a.results.with_suffix(".md").write_text("an earlier run\n")
    assert real_anatomy.parse_args(["--scans", "x"]).results == Path("bench-out/your_scans/real_anatomy_2")
    with pytest.raises(SystemExit):
        real_anatomy.parse_args(["--scans", "x", "--simulated", "3"])
