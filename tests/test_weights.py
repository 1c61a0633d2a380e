"""Weights files (safetensors + JSON card): round trip, atomic replacement, clear errors; the model registry."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from napari_lidnet.models import registry
from napari_lidnet.models.denoisers import build_denoiser
from napari_lidnet.models.detector import LesionDetector
from napari_lidnet.models.weights import load_weights, read_card, save_weights


def _files(stem: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(stem.parent.iterdir())}


@pytest.mark.parametrize(
    "model",
    [
        build_denoiser("fastdn", width=8, factor=2, blocks=1),
        build_denoiser("dncnn", depth=4, width=8),
        build_denoiser("redcnn", width=4),
        LesionDetector(width=4, neck_width=8),
    ],
    ids=["fastdn", "dncnn", "redcnn", "detector"],
)
def test_round_trip(tmp_path: Path, model: torch.nn.Module) -> None:
    torch.manual_seed(0)
    for p in model.parameters():
        p.data.normal_()
    card = save_weights(model, tmp_path / "m", {"training": {"epochs": 3}, "metrics": {"psnr": 31.5}})
    assert (tmp_path / "m.safetensors").is_file() and (tmp_path / "m.json").is_file()
    assert sorted(os.listdir(tmp_path)) == ["m.json", "m.safetensors"]  # no temp files left
    loaded, card2 = load_weights(tmp_path / "m")
    assert card2 == card == json.loads((tmp_path / "m.json").read_text())
    assert card["format"] == "napari-lidnet-weights" and card["version"] == 1
    assert card["kind"] == ("detector" if isinstance(model, LesionDetector) else "denoiser")
    assert card["config"] == model.config and card["metrics"] == {"psnr": 31.5}
    assert type(loaded) is type(model) and not loaded.training
    sd1, sd2 = model.state_dict(), loaded.state_dict()
    assert sd1.keys() == sd2.keys()
    for k in sd1:
        assert torch.equal(sd1[k], sd2[k]), k
    x = torch.randn(1, 1, 32, 32) * 0.1
    model.eval()
    with torch.no_grad():
        a, b = model(x), loaded(x)
    if isinstance(a, dict):
        a, b = a["heatmap"], b["heatmap"]
    assert torch.equal(a, b)
    # suffixes are accepted too
    assert load_weights(tmp_path / "m.json")[1] == card
    # equal weights, equal bytes: a card's sha256 identifies the tensors (several safetensors metadata keys came out in
    # a random order: 6 hashes in 20 saves of one model)
    blobs = {(save_weights(model, tmp_path / f"again{k}"), (tmp_path / f"again{k}.safetensors").read_bytes())[1]
             for k in range(8)}  # fmt: skip
    assert len(blobs) == 1 and read_card(tmp_path / "again0")["sha256"] == card["sha256"]


@pytest.mark.parametrize("fail_call", [1, 2])
def test_failed_replace_keeps_the_old_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_call: int) -> None:
    stem = tmp_path / "model"
    save_weights(build_denoiser("fastdn", width=8), stem, {"metrics": {"v": 1}})
    before = _files(stem)
    real_replace = os.replace
    calls = []

    def flaky_replace(src, dst):
        calls.append(dst)
        if len(calls) == fail_call:
            raise OSError("disk full (injected)")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", flaky_replace)
    new_model = build_denoiser("fastdn", width=16)
    with pytest.raises(OSError, match="injected"):
        save_weights(new_model, stem, {"metrics": {"v": 2}})
    monkeypatch.undo()
    assert _files(stem) == before  # same names (no temp/backup left over) and identical bytes
    model, card = load_weights(stem)
    assert card["metrics"] == {"v": 1} and model.config["width"] == 8


def test_clear_errors(tmp_path: Path) -> None:
    stem = tmp_path / "d"
    with pytest.raises(FileNotFoundError, match=r"d\.json"):
        load_weights(stem)
    save_weights(build_denoiser("dncnn", depth=3, width=4), stem)
    card = json.loads((tmp_path / "d.json").read_text())

    card["arch"] = "unet9"
    (tmp_path / "d.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match=r"d\.json.*unknown denoiser architecture 'unet9'"):
        load_weights(stem)

    card["arch"], card["config"] = "dncnn", {"depth": 3, "width": 8}  # tensors of width 4
    card.pop("sha256")
    (tmp_path / "d.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match=r"d\.safetensors.*shape mismatch"):
        load_weights(stem)

    card["format"] = "something-else"
    (tmp_path / "d.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="not a napari-lidnet weights card"):
        read_card(stem)

    save_weights(build_denoiser("dncnn", depth=3, width=4), stem)
    (tmp_path / "d.safetensors").write_bytes((tmp_path / "d.safetensors").read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ValueError, match="sha256"):
        load_weights(stem)
    (tmp_path / "d.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"d\.safetensors"):
        load_weights(stem)


def test_never_unpickles(tmp_path: Path) -> None:
    """A torch.save pickle renamed to .safetensors is rejected as unreadable, not executed."""
    stem = tmp_path / "p"
    save_weights(build_denoiser("dncnn", depth=3, width=4), stem)
    torch.save({"a": torch.zeros(1)}, tmp_path / "p.safetensors")
    card = json.loads((tmp_path / "p.json").read_text())
    card.pop("sha256")
    (tmp_path / "p.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_weights(stem)


def test_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    user = tmp_path / "user"
    shipped = tmp_path / "shipped"
    monkeypatch.setenv(registry.MODEL_DIR_ENV, str(user))
    monkeypatch.setattr(registry, "shipped_model_dir", lambda: shipped)
    assert registry.user_model_dir() == user
    assert registry.list_models() == [] and registry.default_model("denoiser") is None  # folders absent
    with pytest.raises(FileNotFoundError, match="no denoiser model"):
        registry.load_model("default", kind="denoiser")

    save_weights(build_denoiser("fastdn", width=8), shipped / "default_denoiser")
    save_weights(LesionDetector(width=4), user / "my_det", {"created": "2024-01-01T00:00:00+00:00"})
    save_weights(LesionDetector(width=4, neck_width=12), user / "newer_det", {"created": "2025-01-01T00:00:00+00:00"})
    save_weights(build_denoiser("dncnn", depth=3, width=4), user / "default_denoiser")  # shadows the shipped one
    (user / "broken.json").write_text("{not json")
    (user / "broken.safetensors").write_bytes(b"")
    (user / "orphan.json").write_text("{}")  # no weights: ignored

    with pytest.warns(UserWarning, match="broken"):
        models = registry.list_models()
    assert [(m.name, m.kind, m.shipped) for m in models] == [
        ("default_denoiser", "denoiser", True),
        ("default_denoiser", "denoiser", False),
        ("my_det", "detector", False),
        ("newer_det", "detector", False),
    ]
    with pytest.warns(UserWarning):
        assert [m.name for m in registry.list_models("detector")] == ["my_det", "newer_det"]
        assert registry.default_model("denoiser").shipped
        assert registry.default_model("detector").name == "newer_det"  # no shipped detector: newest user one
        model, card = registry.load_model("default_denoiser")
        assert card["arch"] == "dncnn"  # the user model wins over the shipped one of the same name
        model, card = registry.load_model("my_det", kind="detector")
        assert isinstance(model, LesionDetector)
        with pytest.raises(ValueError, match="expected a denoiser"):
            registry.load_model(user / "my_det", kind="denoiser")
        with pytest.raises(FileNotFoundError, match="'nope' not found"):
            registry.load_model("nope")
    with pytest.raises(ValueError, match="unknown model kind"):
        registry.list_models("segmenter")


def test_user_dir_default_uses_platformdirs(monkeypatch: pytest.MonkeyPatch) -> None:
    import platformdirs

    monkeypatch.delenv(registry.MODEL_DIR_ENV, raising=False)
    assert registry.user_model_dir() == Path(platformdirs.user_data_dir("napari-lidnet")) / "models"
    assert registry.shipped_model_dir().name == "weights"


def test_a_pair_name_finds_both_networks(tmp_path, monkeypatch):
    """A model saved by Fine-tune as NAME (NAME_denoiser + NAME_detector) is found by NAME with its kind."""
    from napari_lidnet.models.denoisers import build_denoiser
    from napari_lidnet.models.detector import LesionDetector
    from napari_lidnet.models.registry import MODEL_DIR_ENV, load_model
    from napari_lidnet.models.weights import save_weights

    monkeypatch.setenv(MODEL_DIR_ENV, str(tmp_path))
    save_weights(build_denoiser("fastdn", width=8, blocks=1), tmp_path / "site-b_denoiser")
    save_weights(LesionDetector(width=4), tmp_path / "site-b_detector")
    assert load_model("site-b", "denoiser")[1]["kind"] == "denoiser"
    assert load_model("site-b", "detector")[1]["kind"] == "detector"
    with pytest.raises(FileNotFoundError, match="not found"):
        load_model("site-c", "denoiser")
