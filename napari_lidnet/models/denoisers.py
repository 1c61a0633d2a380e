"""Denoisers: RED-CNN (Chen et al. 2017), DnCNN (Zhang et al. 2017), a full-resolution U-Net ("unet") and the
pixel-unshuffling fast CPU model ("fastdn", the first default; its 4-pixel sub-lattice leaves a periodic hatch).

Every denoiser maps (B, 1, H, W) network-scale images (HU / 1000, ``models.normalize``) to the same shape, for any
H and W, and stores its constructor arguments in ``self.config`` so a weights card can rebuild it
(``build_denoiser(card["arch"], **card["config"])``).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DENOISERS",
    "DnCNN",
    "FastDenoiser",
    "REDCNN",
    "UNetDenoiser",
    "build_denoiser",
    "check_trainable_blind",
    "told_from_blind",
]


class REDCNN(nn.Module):
    """RED-CNN as published (Chen et al., IEEE TMI 36(12), 2017).

    Ten layers: five 5x5 valid convolutions (``width`` filters, stride 1, no padding) and five 5x5 transposed
    convolutions that restore the size, ReLU after every layer, and three residual shortcuts added before the
    ReLU: input -> output (deconv5), conv2 output -> deconv3 output, conv4 output -> deconv1 output.

    The paper's final ReLU assumes non-negative images. In network scale (HU / 1000) air is -1, so the final ReLU
    is applied in a frame shifted to the CT minimum: ``relu(y - floor) + floor`` with ``floor = -1.024``
    (-1024 HU); ``floor=None`` drops it. Inputs smaller than 21 pixels are replicate-padded and cropped back.
    """

    arch = "redcnn"

    def __init__(self, width: int = 96, kernel_size: int = 5, floor: float | None = -1.024) -> None:
        super().__init__()
        self.config = {"width": width, "kernel_size": kernel_size, "floor": floor}
        k = kernel_size
        self.conv = nn.ModuleList([nn.Conv2d(1 if i == 0 else width, width, k) for i in range(5)])
        self.deconv = nn.ModuleList([nn.ConvTranspose2d(width, 1 if i == 4 else width, k) for i in range(5)])
        self.floor = floor
        self.shrink = 5 * (k - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = max(0, self.shrink + 1 - h), max(0, self.shrink + 1 - w)
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
        res1 = x
        out = F.relu(self.conv[0](x))
        out = F.relu(self.conv[1](out))
        res2 = out
        out = F.relu(self.conv[2](out))
        out = F.relu(self.conv[3](out))
        res3 = out
        out = F.relu(self.conv[4](out))
        out = F.relu(self.deconv[0](out) + res3)
        out = F.relu(self.deconv[1](out))
        out = F.relu(self.deconv[2](out) + res2)
        out = F.relu(self.deconv[3](out))
        out = self.deconv[4](out) + res1
        if self.floor is not None:
            out = F.relu(out - self.floor) + self.floor
        return out[..., :h, :w]


class DnCNN(nn.Module):
    """DnCNN (Zhang et al., IEEE TIP 26(7), 2017): predicts the noise and subtracts it (residual learning).

    ``depth`` 3x3 convolutions of ``width`` channels with zero padding: conv+ReLU, (depth-2) x conv+BN+ReLU, conv.
    """

    arch = "dncnn"

    def __init__(self, depth: int = 17, width: int = 64, batch_norm: bool = True) -> None:
        super().__init__()
        if depth < 3:
            raise ValueError(f"DnCNN depth must be >= 3, got {depth}")
        self.config = {"depth": depth, "width": width, "batch_norm": batch_norm}
        layers: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers.append(nn.Conv2d(width, width, 3, padding=1, bias=not batch_norm))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
        layers.append(nn.Conv2d(width, 1, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.body(x)


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.LeakyReLU(0.1, inplace=True))


class FastDenoiser(nn.Module):
    """Fast CPU denoiser ("fastdn"): a two-level U-Net at low resolution, residual to the input.

    pixel-unshuffle by ``factor`` (a 512x512 slice becomes factor^2 channels of 512/factor) -> conv to ``width`` ->
    ``blocks`` 3x3 conv blocks -> stride-2 conv to 2*width -> ``blocks`` blocks at quarter area -> pixel-shuffle
    up, added to the skip -> ``blocks`` blocks -> conv to factor^2 channels -> pixel-shuffle back; the result is a
    noise estimate subtracted from the input. The network works at ``gain`` times network scale (HU / 100 by
    default): CT noise of tens of HU is then of order 0.1-1, which trains an unnormalised network much faster.
    The last conv starts near zero, so an untrained model is close to the identity.
    Inputs are replicate-padded to a multiple of 2*factor and cropped back.
    """

    arch = "fastdn"

    def __init__(self, width: int = 48, factor: int = 4, blocks: int = 2, gain: float = 10.0) -> None:
        super().__init__()
        self.config = {"width": width, "factor": factor, "blocks": blocks, "gain": gain}
        self.factor = factor
        self.gain = gain
        c_in = factor * factor
        self.head = _conv_block(c_in, width)
        self.enc = nn.Sequential(*[_conv_block(width, width) for _ in range(blocks)])
        self.down = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.LeakyReLU(0.1, True))
        self.mid = nn.Sequential(*[_conv_block(2 * width, 2 * width) for _ in range(blocks)])
        self.up = nn.Sequential(nn.Conv2d(2 * width, 4 * width, 1), nn.PixelShuffle(2))
        self.dec = nn.Sequential(*[_conv_block(width, width) for _ in range(blocks)])
        self.tail = nn.Conv2d(width, c_in, 3, padding=1)
        nn.init.normal_(self.tail.weight, std=0.01)
        nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2 * self.factor
        pad_h, pad_w = (-h) % m, (-w) % m
        xp = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if (pad_h or pad_w) else x
        z = F.pixel_unshuffle(xp * self.gain, self.factor)
        skip = self.enc(self.head(z))
        y = self.up(self.mid(self.down(skip))) + skip
        noise = F.pixel_shuffle(self.tail(self.dec(y)), self.factor) / self.gain
        return x - noise[..., :h, :w]


#: 2x bilinear upsampling (align_corners=False) as 3-tap stencils on the replicate-padded input, indexed
#: [output phase][conv tap -1, 0, +1][input offset 0, 1, 2]
_BILINEAR_2X = (((0.75, 0.25, 0.0), (0.25, 0.75, 0.0), (0.0, 0.75, 0.25)),
                ((0.25, 0.75, 0.0), (0.0, 0.75, 0.25), (0.0, 0.25, 0.75)))  # fmt: skip


def upsample_conv(y: torch.Tensor, conv: nn.Conv2d, size: tuple[int, int]) -> torch.Tensor:
    """``conv(interpolate(y, size, bilinear))`` for a 3x3 ``conv`` with zero padding 1.

    At inference, when ``size`` doubles ``y``, it is computed without the upsampled tensor: the conv folded into the
    bilinear stencils gives four phase convs at ``y``'s resolution, pixel-shuffled into place, and the one-pixel
    frame (where the conv's zero padding meets the upsampling's clamped edge) is recomputed the plain way on thin
    strips. Equal to float rounding (tests); the unet runs about 1.1x faster on the CPU.
    """
    h, w = y.shape[-2:]
    if torch.is_grad_enabled() or tuple(size) != (2 * h, 2 * w) or min(h, w) < 2:
        return conv(F.interpolate(y, size=size, mode="bilinear", align_corners=False))
    stencil = torch.tensor(_BILINEAR_2X, dtype=conv.weight.dtype, device=conv.weight.device)
    with torch.autocast(y.device.type, enabled=False):  # fold in the weights' own precision (fp16 AMP: cast later)
        weight = torch.einsum("ocde,pda,qeb->opqcab", conv.weight, stencil, stencil).flatten(0, 2)
    bias = None if conv.bias is None else conv.bias.repeat_interleave(4)
    out = F.pixel_shuffle(F.conv2d(F.pad(y, (1, 1, 1, 1), mode="replicate"), weight, bias), 2)

    def plain(strip: torch.Tensor, strip_size: tuple[int, int]) -> torch.Tensor:
        return conv(F.interpolate(strip, size=strip_size, mode="bilinear", align_corners=False))

    out[..., :1, :] = plain(y[..., :2, :], (4, 2 * w))[..., :1, :]
    out[..., -1:, :] = plain(y[..., -2:, :], (4, 2 * w))[..., -1:, :]
    out[..., :, :1] = plain(y[..., :, :2], (2 * h, 4))[..., :, :1]
    out[..., :, -1:] = plain(y[..., :, -2:], (2 * h, 4))[..., :, -1:]
    return out


def _zero_linear(width: int) -> nn.Linear:
    """A bias-free (2 -> width) linear map starting at zero (a told model starts as its blind parent)."""
    layer = nn.Linear(2, width, bias=False)
    nn.init.zeros_(layer.weight)
    return layer


def _bias(layer: nn.Linear, cond: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``layer(cond)`` as a (B, C, 1, 1) per-channel bias in ``dtype``."""
    return F.linear(cond, layer.weight.float()).to(dtype)[:, :, None, None]


def _float32(x: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast off for ``x``'s device (CPU and CUDA, where inference autocasts; elsewhere nothing to undo)."""
    if x.device.type in ("cpu", "cuda"):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


class UNetDenoiser(nn.Module):
    """Residual U-Net ("unet") with full-resolution input and output layers and no sub-pixel lattice.

    ``levels`` stride-2 3x3 convolutions halve the size and double the width (``width`` channels at full
    resolution), with ``blocks`` 3x3 conv blocks per level on the way down and up; the way up is bilinear
    upsampling + 3x3 conv added to the skip, so no level's output depends on the pixel's phase in a 2^k lattice
    beyond what smooth interpolation leaves (``fastdn``'s pixel-unshuffle gave every one of 16 phases its own
    output channel: a 4-pixel hatch in the residual's power spectrum). The full-resolution output conv sees the
    image itself. Like ``fastdn`` it predicts the noise at ``gain`` times network scale and subtracts it; the last
    conv starts near zero (near identity). Inputs are replicate-padded to a multiple of 2^levels and cropped back.

    ``told=True`` adds FFDNet-style conditioning on the noise SD to remove: ``forward(x, remove_sd=HU)`` feeds
    (1, HU / 100) through bias-free linear maps added to the full-resolution head, the bottleneck and each level's
    way up (a constant noise-level map concatenated to the input, as FFDNet does, is the head's part of it). With
    ``remove_sd=None`` nothing is added: the network is the blind one, so a told model starts as its blind parent
    (the maps start at zero) and runs blind wherever no SD is given.
    """

    arch = "unet"
    prefers_channels_last = True  # oneDNN runs its full-resolution convolutions ~1.35x faster in NHWC on the CPU
    #: inference may run it under CPU bfloat16 autocast: only the inner levels then use bfloat16 (the head and tail
    #: stay float32, ``forward``); on simulated slices that moved PSNR by under 0.01 dB, 1.6x faster (README)
    cpu_bf16 = True

    def __init__(
        self, width: int = 16, levels: int = 3, blocks: int = 1, gain: float = 10.0, told: bool = False
    ) -> None:
        super().__init__()
        if levels < 1:
            raise ValueError(f"unet levels must be >= 1, got {levels}")
        self.config = {"width": width, "levels": levels, "blocks": blocks, "gain": gain}
        if told:
            self.config["told"] = True
        self.levels, self.gain, self.told = levels, gain, told
        widths = [width * 2**k for k in range(levels + 1)]
        self.head = _conv_block(1, width)
        self.enc = nn.ModuleList(nn.Sequential(*[_conv_block(w, w) for _ in range(blocks)]) for w in widths[:-1])
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(a, b, 3, stride=2, padding=1), nn.LeakyReLU(0.1, True))
            for a, b in zip(widths[:-1], widths[1:])
        )
        self.mid = nn.Sequential(*[_conv_block(widths[-1], widths[-1]) for _ in range(blocks + 1)])
        self.up = nn.ModuleList(nn.Conv2d(b, a, 3, padding=1) for a, b in zip(widths[:-1], widths[1:]))
        self.dec = nn.ModuleList(nn.Sequential(*[_conv_block(w, w) for _ in range(blocks)]) for w in widths[:-1])
        self.tail = nn.Conv2d(width, 1, 3, padding=1)
        nn.init.normal_(self.tail.weight, std=0.01)
        nn.init.zeros_(self.tail.bias)
        if told:  # (told flag, SD / 100 HU) -> a bias per channel: head, bottleneck, each level's way up
            self.told_head = _zero_linear(width)
            self.told_mid = _zero_linear(widths[-1])
            self.told_dec = nn.ModuleList(_zero_linear(w) for w in widths[:-1])

    def _condition(self, x: torch.Tensor, remove_sd: float | torch.Tensor | None) -> torch.Tensor | None:
        """(B, 2) conditioning rows (1, SD / 100) for a told model given an SD (HU; one, or one per image), else
        None."""
        if remove_sd is None or not self.told:
            return None
        sd = torch.as_tensor(remove_sd, dtype=torch.float32, device=x.device).reshape(-1).expand(x.shape[0])
        return torch.stack([torch.ones_like(sd), sd / 100.0], dim=1)

    def forward(self, x: torch.Tensor, remove_sd: float | torch.Tensor | None = None) -> torch.Tensor:
        h, w = x.shape[-2:]
        m = 2**self.levels
        pad_h, pad_w = (-h) % m, (-w) % m
        xp = F.pad(x, (0, pad_w, 0, pad_h), mode="replicate") if (pad_h or pad_w) else x
        cond = self._condition(x, remove_sd)
        with _float32(x):  # HU in: bfloat16 would round bone by up to 3 HU
            y = self.head[0](xp * self.gain)
            y = self.head[1](y if cond is None else y + _bias(self.told_head, cond))
        skips = []
        for enc, down in zip(self.enc, self.down):
            y = enc(y)
            skips.append(y)
            y = down(y)
        y = self.mid(y if cond is None else y + _bias(self.told_mid, cond, y.dtype))
        for k in reversed(range(self.levels)):
            u = upsample_conv(y, self.up[k], skips[k].shape[-2:])
            if torch.is_grad_enabled():
                u = F.leaky_relu(u, 0.1) + skips[k]
            else:  # inference: in place, one full-size tensor fewer (about 1.05x)
                u = F.leaky_relu_(u, 0.1).add_(skips[k])
            if cond is not None:
                u = u + _bias(self.told_dec[k], cond, u.dtype)
            y = self.dec[k](u)
        with _float32(x):  # the noise out in float32, whatever ran inside
            noise = self.tail(y.float()) / self.gain
        return x - noise[..., :h, :w]


DENOISERS: dict[str, type[nn.Module]] = {"redcnn": REDCNN, "dncnn": DnCNN, "fastdn": FastDenoiser, "unet": UNetDenoiser}


def build_denoiser(arch: str, **kwargs: Any) -> nn.Module:
    """Build the denoiser registered as ``arch`` with its constructor keyword arguments."""
    try:
        cls = DENOISERS[arch]
    except KeyError:
        raise ValueError(f"unknown denoiser architecture {arch!r}; known: {sorted(DENOISERS)}") from None
    return cls(**kwargs)


def check_trainable_blind(model: nn.Module, name: str) -> None:
    """A one-line ValueError when ``model`` is a told denoiser: LIDnet training and ``lidnet adapt`` train the blind
    network (``model(x)``), which would leave its conditioning maps fitted to weights that no longer exist."""
    if getattr(model, "told", False):
        raise ValueError(
            f"{name}: a told denoiser (it takes the noise SD as an input; scripts/train_told.py) cannot be trained "
            "here, these steps train blind denoisers: start from a blind one"
        )


def told_from_blind(blind: nn.Module) -> UNetDenoiser:
    """A told unet with ``blind``'s weights and its conditioning maps at zero: the blind unet's outputs, told any SD
    or none (ValueError for another architecture)."""
    if not isinstance(blind, UNetDenoiser):
        raise ValueError(f"a told model is made from a unet, not {getattr(blind, 'arch', type(blind).__name__)!r}")
    if blind.told:
        raise ValueError("a told model is made from a blind unet; this one is told already")
    told = UNetDenoiser(**blind.config, told=True)
    told.load_state_dict(blind.state_dict(), strict=False)  # the same unet: only the told_* maps are new
    return told
