"""The installed plugin: manifest found by npe2, lazy torch import, console script present."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

npe2 = pytest.importorskip("npe2")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300)


def test_manifest_is_installed_and_valid():
    from importlib.metadata import distribution

    dist = distribution("napari-lidnet")
    entry = [ep for ep in dist.entry_points if ep.group == "napari.manifest"]
    assert entry and entry[0].value == "napari_lidnet:napari.yaml"
    files = {str(f) for f in dist.files or []}
    assert "napari_lidnet/napari.yaml" in files, "the wheel must carry the manifest"
    res = _run("-m", "npe2", "validate", "napari-lidnet")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid" in (res.stdout + res.stderr).lower()


def test_npe2_lists_plugin_contributions():
    res = _run("-m", "npe2", "list", "--format", "json", "--fields", "name,contributions")
    assert res.returncode == 0, res.stderr
    plugins = {p["name"]: p for p in json.loads(res.stdout)}
    assert "napari-lidnet" in plugins
    contribs = plugins["napari-lidnet"]["contributions"]
    assert contribs.get("readers") and contribs.get("sample_data") and contribs.get("widgets")


def test_import_does_not_load_torch():
    code = (
        "import sys, napari_lidnet, napari_lidnet._reader, napari_lidnet._sample_data, napari_lidnet.cli;"
        "import napari_lidnet._widgets.load_ct;"
        "assert 'torch' not in sys.modules, 'torch imported at start-up'"
    )
    res = _run("-c", code)
    assert res.returncode == 0, res.stderr


def test_manifest_in_repo_and_package_agree():
    root = Path(__file__).resolve().parents[1]
    import napari_lidnet

    pkg_manifest = Path(napari_lidnet.__file__).with_name("napari.yaml")
    assert pkg_manifest.read_text() == (root / "napari.yaml").read_text()


def test_cli_help_and_bad_input(tmp_path):
    res = _run("-m", "napari_lidnet.cli", "--help")
    assert res.returncode == 0 and "simulate" in res.stdout
    res = _run("-m", "napari_lidnet.cli", "simulate", "--out", str(tmp_path / "d"), "--n", "1", "--dose", "1.5")
    assert res.returncode == 2
    assert "dose" in res.stderr.lower()
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())
