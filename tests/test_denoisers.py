"""Denoisers: shapes for any H, W, the published RED-CNN structure, residual behaviour, registry and speed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from napari_lidnet.models.denoisers import (
    DENOISERS,
    REDCNN,
    DnCNN,
    FastDenoiser,
    UNetDenoiser,
    build_denoiser,
    told_from_blind,
    upsample_conv,
)

TINY = {
    "redcnn": {"width": 4},
    "dncnn": {"depth": 4, "width": 8},
    "fastdn": {"width": 8},
    "unet": {"width": 4, "levels": 2},
}


@pytest.mark.parametrize("arch", sorted(DENOISERS))
@pytest.mark.parametrize("shape", [(1, 1, 37, 53), (2, 1, 64, 64), (1, 1, 9, 13)])
def test_any_size_same_shape_and_config_rebuild(arch: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_denoiser(arch, **TINY[arch]).eval()
    x = torch.randn(shape) * 0.1
    with torch.no_grad():
        y = model(x)
        twin = build_denoiser(arch, **model.config).eval()
        twin.load_state_dict(model.state_dict())
        y2 = twin(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, y2)
    assert model.arch == arch


def test_unknown_arch_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown denoiser architecture 'unet9'"):
        build_denoiser("unet9")


def test_redcnn_published_structure() -> None:
    model = REDCNN()
    convs = list(model.conv)
    deconvs = list(model.deconv)
    assert len(convs) == 5 and len(deconvs) == 5
    for layer in convs + deconvs:
        assert layer.kernel_size == (5, 5) and layer.stride == (1, 1) and layer.padding == (0, 0)
    assert [c.out_channels for c in convs] == [96] * 5
    assert [d.out_channels for d in deconvs] == [96] * 4 + [1]
    n_params = sum(p.numel() for p in model.parameters())
    # 1->96 conv, 8 x 96->96, 96->1 deconv, all 5x5 with biases
    assert n_params == (25 * 96 + 96) + 8 * (25 * 96 * 96 + 96) + (25 * 96 + 1)


def test_redcnn_matches_a_direct_functional_forward() -> None:
    """Shortcuts input->output, conv2->deconv3, conv4->deconv1, ReLU after the additions (SSinyu/RED-CNN)."""
    torch.manual_seed(1)
    model = REDCNN(width=6, floor=None).eval()
    x = torch.randn(1, 1, 30, 27) * 0.3
    c, d = model.conv, model.deconv
    with torch.no_grad():
        r1 = x
        o = F.relu(F.conv2d(x, c[0].weight, c[0].bias))
        o = F.relu(F.conv2d(o, c[1].weight, c[1].bias))
        r2 = o
        o = F.relu(F.conv2d(o, c[2].weight, c[2].bias))
        o = F.relu(F.conv2d(o, c[3].weight, c[3].bias))
        r3 = o
        o = F.relu(F.conv2d(o, c[4].weight, c[4].bias))
        o = F.relu(F.conv_transpose2d(o, d[0].weight, d[0].bias) + r3)
        o = F.relu(F.conv_transpose2d(o, d[1].weight, d[1].bias))
        o = F.relu(F.conv_transpose2d(o, d[2].weight, d[2].bias) + r2)
        o = F.relu(F.conv_transpose2d(o, d[3].weight, d[3].bias))
        ref = F.conv_transpose2d(o, d[4].weight, d[4].bias) + r1
        torch.testing.assert_close(model(x), ref)


def test_redcnn_floor_clamps_at_minus_1024_hu() -> None:
    model = REDCNN(width=4).eval()
    with torch.no_grad():
        for p in model.deconv[4].parameters():
            p.zero_()
        x = torch.linspace(-1.5, 0.5, 25 * 25).reshape(1, 1, 25, 25)
        y = model(x)
    torch.testing.assert_close(y, x.clamp(min=-1.024))


def test_dncnn_structure_and_residual() -> None:
    model = DnCNN()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(convs) == 17 and len(bns) == 15
    assert all(c.kernel_size == (3, 3) for c in convs) and convs[1].out_channels == 64
    small = DnCNN(depth=3, width=4).eval()
    with torch.no_grad():
        small.body[-1].weight.zero_()
        small.body[-1].bias.fill_(0.25)  # constant predicted noise
        x = torch.randn(1, 1, 10, 11)
        torch.testing.assert_close(small(x), x - 0.25)


@pytest.mark.parametrize("arch", ["fastdn", "unet"])
def test_residual_denoisers_start_near_identity_and_learn_to_denoise(arch: str) -> None:
    torch.manual_seed(0)
    model = FastDenoiser(width=8, factor=2, blocks=1) if arch == "fastdn" else UNetDenoiser(width=8, levels=2)
    yy, xx = torch.meshgrid(torch.arange(40.0), torch.arange(44.0), indexing="ij")
    clean = (0.05 * torch.sin(xx / 5) + 0.1 * ((xx - 22) ** 2 + (yy - 20) ** 2 < 80)).reshape(1, 1, 40, 44)
    with torch.no_grad():
        assert (model(clean) - clean).abs().max() < 5e-3  # < 5 HU: the last conv starts near zero
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    gen = torch.Generator().manual_seed(1)
    clean = clean.repeat(4, 1, 1, 1)
    for _ in range(100):
        noisy = clean + 0.05 * torch.randn(clean.shape, generator=gen)
        loss = F.mse_loss(model(noisy), clean)
        opt.zero_grad()
        loss.backward()
        opt.step()
    noisy = clean + 0.05 * torch.randn(clean.shape, generator=gen)
    with torch.no_grad():
        before = F.mse_loss(noisy, clean).item()
        after = F.mse_loss(model(noisy), clean).item()
    assert after < 0.5 * before


@pytest.mark.parametrize(("shape", "channels_last"), [((1, 1, 37, 50), False), ((2, 1, 64, 48), True)])
def test_unet_inference_path_equals_the_plain_upsample_then_conv(shape: tuple[int, ...], channels_last: bool) -> None:
    """At inference the unet folds each 3x3 conv into the 2x bilinear upsampling before it (upsample_conv); its
    output equals the plain path's (the one training differentiates) to float rounding, the image frame included."""
    torch.manual_seed(3)
    model = UNetDenoiser(width=8, levels=3).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)  # far from identity: every level matters
    x = torch.randn(shape)
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    plain = model(x).detach()  # gradients enabled: the plain path
    with torch.inference_mode():
        folded = model(x)
    assert (plain - x).abs().max() > 1.0  # the network changed the image a lot
    torch.testing.assert_close(folded, plain, atol=2e-5 * float(plain.abs().max()), rtol=0)
    y = torch.randn(1, 16, 5, 6)  # the input of up[0]: the level below, twice the width
    with torch.inference_mode():
        edge = upsample_conv(y, model.up[0], (10, 12)) - model.up[0](F.interpolate(y, size=(10, 12), mode="bilinear"))
    assert float(edge.abs().max()) < 1e-5  # the one-pixel frame too


def test_told_unet_starts_as_its_blind_parent_and_runs_blind_without_an_sd() -> None:
    """FFDNet-style conditioning: made from a blind unet, the told one gives the parent's output told any SD (its
    maps start at zero); once they are trained, no SD still gives exactly the parent's output, an SD another."""
    torch.manual_seed(0)
    blind = UNetDenoiser(width=4, levels=2).eval()
    for p in blind.parameters():  # a parent that does something
        torch.nn.init.normal_(p, std=0.2)
    told = told_from_blind(blind).eval()
    x = 0.05 * torch.randn(3, 1, 40, 36)
    with torch.no_grad():
        parent = blind(x)
        torch.testing.assert_close(told(x, remove_sd=12.0), parent, rtol=0, atol=0)
        for name in ("told_head", "told_mid"):
            torch.nn.init.normal_(getattr(told, name).weight, std=0.5)
        torch.testing.assert_close(told(x), parent, rtol=0, atol=0)
        assert (told(x, remove_sd=12.0) - parent).abs().max() > 1e-3
        assert (told(x, remove_sd=12.0) - told(x, remove_sd=30.0)).abs().max() > 1e-4


def test_told_unet_takes_one_sd_per_image() -> None:
    torch.manual_seed(1)
    told = UNetDenoiser(width=4, levels=2, told=True).eval()
    for p in told.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = 0.05 * torch.randn(2, 1, 32, 32)
    with torch.no_grad():
        both = told(x, remove_sd=torch.tensor([5.0, 40.0]))
        torch.testing.assert_close(both[:1], told(x[:1], remove_sd=5.0))
        torch.testing.assert_close(both[1:], told(x[1:], remove_sd=40.0))
    assert build_denoiser("unet", **told.config).told and not UNetDenoiser().told
    with pytest.raises(ValueError, match="told already"):
        told_from_blind(told)
    with pytest.raises(ValueError, match="made from a unet, not 'dncnn'"):
        told_from_blind(DnCNN(depth=3, width=4))
    assert "told" not in UNetDenoiser().config  # cards of blind unets stay as they were
