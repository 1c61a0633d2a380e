"""The installed plugin (the wheel `make` installs into the venv, not this source tree): manifest found by npe2,
lazy torch import, console script present.

Every check runs in a fresh interpreter started with ``-I`` (isolated: no current folder, script folder or
PYTHONPATH on ``sys.path``) from a folder outside the source tree, so it can only see the installed package.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

npe2 = pytest.importorskip("npe2")

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "napari_lidnet"  # the source package (the venv may live in the repo too)


@pytest.fixture
def run(tmp_path):
    def _run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-I", *args], capture_output=True, text=True, timeout=300, cwd=tmp_path)

    return _run


def _installed(run, expr: str) -> str:
    res = run("-c", f"import napari_lidnet, pathlib; print({expr})")
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


def test_the_checks_see_the_installed_package_not_the_source_tree(run):
    where = Path(_installed(run, "napari_lidnet.__file__"))
    assert "site-packages" in where.parts, where
    assert not where.resolve().is_relative_to(SOURCE), f"{where} is the source tree: run `make install` first"


def test_manifest_is_installed_and_valid(run):
    code = (
        "import json; from importlib.metadata import distribution; d = distribution('napari-lidnet');"
        "print(json.dumps({'eps': [[e.group, e.value] for e in d.entry_points], 'files': [str(f) for f in d.files],"
        "'where': str(d.locate_file(''))}))"
    )
    res = run("-c", code)
    assert res.returncode == 0, res.stderr
    dist = json.loads(res.stdout)
    assert ["napari.manifest", "napari_lidnet:napari.yaml"] in dist["eps"]
    assert "napari_lidnet/napari.yaml" in dist["files"], "the wheel must carry the manifest"
    assert "site-packages" in Path(dist["where"]).parts
    res = run("-m", "npe2", "validate", "napari-lidnet")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid" in (res.stdout + res.stderr).lower()


def test_npe2_lists_plugin_contributions(run):
    res = run("-m", "npe2", "list", "--format", "json", "--fields", "name,contributions")
    assert res.returncode == 0, res.stderr
    plugins = {p["name"]: p for p in json.loads(res.stdout)}
    assert "napari-lidnet" in plugins
    contribs = plugins["napari-lidnet"]["contributions"]
    assert contribs.get("readers") and contribs.get("sample_data") and contribs.get("widgets")


def test_import_does_not_load_torch(run):
    code = (
        "import sys, napari_lidnet, napari_lidnet._reader, napari_lidnet._sample_data, napari_lidnet.cli;"
        "import napari_lidnet._widgets.load_ct;"
        "assert 'site-packages' in napari_lidnet.__file__, napari_lidnet.__file__;"
        "assert 'torch' not in sys.modules, 'torch imported at start-up'"
    )
    res = run("-c", code)
    assert res.returncode == 0, res.stderr


def test_installed_manifest_is_a_file_equal_to_the_repos(run):
    installed = Path(_installed(run, "pathlib.Path(napari_lidnet.__file__).with_name('napari.yaml')"))
    assert installed.is_file() and not installed.is_symlink(), installed  # a copy in the wheel, not a link back
    assert not installed.resolve().is_relative_to(SOURCE)
    assert installed.read_text() == (REPO / "napari.yaml").read_text()
    version = _installed(run, "napari_lidnet.__version__")
    assert f'__version__ = "{version}"' in (REPO / "napari_lidnet" / "__init__.py").read_text()


def test_cli_help_and_bad_input(run, tmp_path):
    res = run("-m", "napari_lidnet.cli", "--help")
    assert res.returncode == 0 and "simulate" in res.stdout
    res = run("-m", "napari_lidnet.cli", "simulate", "--out", str(tmp_path / "d"), "--n", "1", "--dose", "1.5")
    assert res.returncode == 2
    assert "dose" in res.stderr.lower()
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d").iterdir())


def test_every_folder_of_the_package_is_a_listed_package():
    """setup.cfg's package search finds every folder of napari_lidnet (the weights folder too, so the build neither
    warns that it "would be ignored" nor relies on that warning's fallback to ship the shipped models)."""
    import configparser

    from setuptools import find_namespace_packages, find_packages

    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    find = {"find:": find_packages, "find_namespace:": find_namespace_packages}[cfg["options"]["packages"].strip()]
    opts = cfg["options.packages.find"]
    found = set(find(where=str(REPO), include=opts["include"].split(), exclude=opts.get("exclude", "").split()))
    folders = {
        ".".join(p.relative_to(REPO).parts)
        for p in [SOURCE, *SOURCE.rglob("*")]
        if p.is_dir() and "__pycache__" not in p.parts
    }
    assert folders - found == set(), "folders the wheel would not list as packages"
    assert not {name for name in found if "__pycache__" in name}
