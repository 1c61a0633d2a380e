"""The one device chooser: CUDA, then Apple MPS, then CPU, with a user override."""

from __future__ import annotations

import re
from collections.abc import Callable

import torch

from napari_lidnet.io.checks import warn_caller


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


def resolve_device(device: torch.device | str, tell: Callable[[str], None] | None = None) -> torch.device:
    """The device to run on for ``device`` (a name or a ``torch.device``; another backend's device as given); a
    fallback from the one asked for is told to ``tell`` (default :func:`script_notice`: a warning at the caller's
    line)."""
    if isinstance(device, torch.device) and device.type not in ("cpu", "cuda", "mps"):
        return device
    resolved, msg = pick_device(str(device))
    if msg:
        (tell or script_notice(device))(msg)
    return resolved


def script_notice(device: torch.device | str) -> Callable[[str], None]:
    """The notice of a call given none (a script's): a RuntimeWarning at the script's line, so a CPU fallback or a
    smaller batch after running out of memory is not silent; "auto" running on the CPU is as asked, not warned."""

    def warn(msg: str) -> None:
        if not (str(device) == "auto" and msg.startswith("no GPU found")):
            warn_caller(msg, RuntimeWarning)

    return warn
