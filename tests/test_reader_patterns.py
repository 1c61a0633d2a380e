"""The reader claims only what it reads: npe2 offers napari-lidnet for DICOM files and folders, never for photos,
TIFF stacks, tables or notes (so napari never asks which plugin should open them)."""

from __future__ import annotations

from pathlib import Path

import pytest

npe2 = pytest.importorskip("npe2")

MANIFEST = Path(__file__).resolve().parents[1] / "napari.yaml"


@pytest.fixture(scope="module")
def plugin_manager():
    """A fresh npe2 plugin manager holding this repository's manifest (what the wheel ships)."""
    pm = npe2.PluginManager()
    pm.register(npe2.PluginManifest.from_file(MANIFEST))
    return pm


def readers_for(pm, path: Path) -> set[str]:
    return {r.plugin_name for r in pm.iter_compatible_readers([str(path)])}


@pytest.mark.parametrize("name", ["photo.png", "cells.tif", "cells.TIFF", "data.csv", "notes.txt", "stack.npy",
                                  "table.xlsx", "README"])  # fmt: skip
def test_not_offered_for_common_files(plugin_manager, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\0" * 16)
    assert "napari-lidnet" not in readers_for(plugin_manager, path)


@pytest.mark.parametrize("name", ["slice.dcm", "SLICE.DCM", "scan.IMA", "image.dicom", "chest.nii", "chest.nii.gz",
                                  "dicomdir"])  # fmt: skip
def test_offered_for_dicom_files_and_folders(plugin_manager, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\0" * 16)
    assert "napari-lidnet" in readers_for(plugin_manager, path)
    assert "napari-lidnet" in readers_for(plugin_manager, tmp_path)  # a folder (extension-less DICOM inside)


def test_installed_manifest_has_the_same_patterns() -> None:
    """The manifest napari finds (through the package's entry point) has the repository's reader patterns."""
    import napari_lidnet

    pm = npe2.PluginManager()
    pm.discover()
    found = pm.get_manifest("napari-lidnet")
    mine = npe2.PluginManifest.from_file(MANIFEST)
    assert [r.filename_patterns for r in found.contributions.readers] == [
        r.filename_patterns for r in mine.contributions.readers
    ], f"reinstall the plugin ({Path(napari_lidnet.__file__).parent})"
