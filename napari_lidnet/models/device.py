"""The one device chooser: CUDA, then Apple MPS, then CPU, with a user override."""

from __future__ import annotations

import re

import torch


def pick_device(preference: str = "auto") -> tuple[torch.device, str]:
    """Resolve ``"auto" | "cpu" | "cuda" | "cuda:N" | "mps"`` to a device and a notice (empty if as asked)."""
    pref = (preference or "auto").lower()
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if pref == "auto":
        if cuda:
            return torch.device("cuda"), ""
        if mps:
            return torch.device("mps"), ""
        return torch.device("cpu"), "no GPU found: running on the CPU"
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", pref):
        raise ValueError(f"unknown device {preference!r}; use auto, cpu, cuda, cuda:N or mps")
    if pref.startswith("cuda") and not cuda:
        return torch.device("cpu"), f"{preference} requested but CUDA is not available: falling back to the CPU"
    if pref.startswith("cuda:") and int(pref[5:]) >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        return torch.device("cuda"), f"{preference} requested but this machine has {n} GPU(s): using cuda:0"
    if pref == "mps" and not mps:
        return torch.device("cpu"), "mps requested but Apple MPS is not available: falling back to the CPU"
    return torch.device(pref), ""


def device_choices() -> list[str]:
    """Device names to offer in a picker, best first."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names[1:1] = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.insert(1, "mps")
    return names


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX): elsewhere it is emulated and slower."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    try:
        return any(bool(check()) for check in checks if check is not None)
    except RuntimeError:
        return False
