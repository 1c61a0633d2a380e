"""Human-readable progress lines and the evaluation table of ``lidnet evaluate``."""

from __future__ import annotations

from typing import Any


def time_left_text(eta_s: float) -> str:
    """'40 s' below 90 s, else '2.5 min': how every progress line says the time left."""
    return f"{eta_s:.0f} s" if eta_s < 90 else f"{eta_s / 60:.1f} min"


def format_record(rec: dict[str, Any], every: int = 25) -> str | None:
    """One log line for a progress record (training steps are thinned to every ``every``-th step)."""
    stage = rec.get("stage")
    if stage in ("setup", "stopped"):
        return rec["message"]
    if stage == "validate":
        best = " (best so far)" if rec.get("is_best") else ""
        return f"validation after {rec['after']}: {format_metrics(rec['val'])}{best}{input_text(rec)}"
    if stage == "finished":
        start = f"; the starting weights: {format_metrics(rec['start'])}" if rec.get("start") else ""
        return f"finished: best checkpoint in {rec['out']}: {format_metrics(rec.get('best') or {})}{start}"
    step = rec.get("stage_step", 0)
    if step % every and step != rec.get("stage_total"):
        return None
    losses = ", ".join(f"{k} {v:.4g}" for k, v in rec.get("losses", {}).items())
    eta = rec.get("eta_s")
    eta_txt = f", {time_left_text(eta)} left" if eta is not None else ""
    return f"[{rec['step']}/{rec['total_steps']}] {stage} {step}/{rec['stage_total']}: {losses}{eta_txt}"


#: units of the validation metrics in progress lines
_UNITS = {"psnr": " dB", "rmse": " HU"}


def format_metrics(metrics: dict[str, Any]) -> str:
    """``psnr 39.32 dB, ssim 0.9512, ...``: each validation metric with its unit (sensitivities at each FP rate
    left out: the mean FROC sensitivity stands for them)."""
    parts = []
    for k, v in metrics.items():
        if k.startswith("sens@") or not isinstance(v, int | float):
            continue
        parts.append(f"{k} {v:.2f}{_UNITS[k]}" if k in _UNITS else f"{k} {v:.4f}")
    return ", ".join(parts) or "no validation slices"


def check_evaluable(samples: list, data_dir: str) -> None:
    """Refuse (one-line ValueError) slices that cannot be evaluated together: none, some without a low-dose
    partner, or slices of different sizes."""
    if not samples:
        raise ValueError(f"{data_dir}: no slices to evaluate")
    no_low = [s.name for s in samples if not s.has_low_dose]
    if no_low:
        raise ValueError(
            f"{data_dir}: {len(no_low)} of {len(samples)} slices have no low-dose image in low/ (first: {no_low[0]}); "
            "evaluate needs low/full pairs, as `lidnet simulate` writes them"
        )
    shapes: dict[tuple[int, int], str] = {}
    for s in samples:
        shapes.setdefault(tuple(s.shape), s.name)
    if len(shapes) > 1:
        sizes = ", ".join(f"{r}x{c} ({name})" for (r, c), name in sorted(shapes.items()))
        raise ValueError(f"{data_dir}: slices differ in size ({sizes}); evaluate slices of one size at a time")


def _evaluation_slices(data: str) -> list:
    """The slices of a lidnet dataset folder, or of a manifest (``lidnet index``: DeepLesion's official test part,
    say), its low doses simulated at the dose it was indexed with and kept beside it as training keeps them."""
    from napari_lidnet.datasets.manifest import check_has_dose, is_manifest, load_manifest, read_manifest
    from napari_lidnet.io.dataset import read_dataset

    if not is_manifest(data):
        return read_dataset(data, lazy=True)
    check_has_dose(data, *load_manifest(data))
    return read_manifest(data)


def evaluate_dataset(
    data_dir: str,
    denoiser: str | None = None,
    detector: str | None = None,
    device: str = "auto",
    max_slices: int | None = None,
) -> dict[str, Any]:
    """PSNR, SSIM and FROC of the low-dose input, the denoised output and the full-dose reference."""
    from napari_lidnet._training.validate import evaluate_images, stack_samples
    from napari_lidnet.inference import denoise
    from napari_lidnet.metrics.froc import froc
    from napari_lidnet.metrics.image import METRIC_WINDOW
    from napari_lidnet.models.device import pick_device
    from napari_lidnet.models.registry import load_model

    samples = _evaluation_slices(data_dir)[:max_slices]
    check_evaluable(samples, data_dir)
    dev, _ = pick_device(device)
    den, den_card = load_model(denoiser or "default", kind="denoiser")
    det, det_card = load_model(detector or "default", kind="detector")
    low, full, gt = stack_samples(samples)
    rows = {
        "low dose": evaluate_images(low, full, gt, det, dev),
        "denoised": evaluate_images(denoise(den, low, device=dev), full, gt, det, dev),
        # the reference against itself says nothing about image quality: detection only
        "full dose": {k: v for k, v in evaluate_images(full, full, gt, det, dev).items() if k not in ("psnr", "ssim")},
    }
    return {
        "data": str(data_dir),
        "n_slices": len(samples),
        "n_lesions": int(sum(len(g) for g in gt)),
        "denoiser": den_card.get("name", denoiser or "default"),
        "detector": det_card.get("name", detector or "default"),
        "window_hu": list(METRIC_WINDOW),
        "froc_criterion": froc([], []).criterion,
        "results": rows,
    }


def format_table(result: dict[str, Any]) -> str:
    """A plain-text table of :func:`evaluate_dataset`'s result."""
    keys = ["psnr", "ssim", "sens@0.5", "sens@1", "sens@2", "sens@4", "sens@8", "sensitivity"]
    width = max(len(k) for k in keys) + 2  # every column keeps a gap
    head = f"{'image':<10}" + "".join(f"{k:>{width}}" for k in keys)
    lines = [
        f"{result['n_slices']} slices, {result['n_lesions']} lesions; PSNR/SSIM over HU window {result['window_hu']};"
        f" FROC {result['froc_criterion']}",
        head,
    ]
    for name, r in result["results"].items():  # "-": not measured (the reference against itself)
        lines.append(f"{name:<10}" + "".join(f"{r[k]:>{width}.4f}" if k in r else f"{'-':>{width}}" for k in keys))
    return "\n".join(lines)


def input_text(rec: dict[str, Any]) -> str:
    """What the start's validation record says of the input itself: its PSNR without denoising, and the notes."""
    base = rec.get("input") or {}
    text = f" (the low-dose input itself: PSNR {base['psnr']:.2f} dB)" if "psnr" in base else ""
    return text + "".join(f"; note: {n}" for n in rec.get("notes") or [])
