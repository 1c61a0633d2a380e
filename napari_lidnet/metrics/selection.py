"""The one checkpoint score of a training run, and whether a trained model scores below the model it started from.

The trainer keeps the checkpoint of highest score on its validation slices; a run that starts from trained weights
(the shipped pair, a site's earlier model) measures those first. When no checkpoint reaches that start, the run
exported a model worse than the one it began with by its own measure: its card says so (``training.start_metrics``
beside ``metrics``), the pickers mark it and the command line warns when it is loaded.
"""

from __future__ import annotations

from typing import Any

#: dB of validation PSNR that a mean FROC sensitivity of 1 is worth in the checkpoint score (0.05 -> 1 dB)
SENSITIVITY_DB = 20.0
#: a checkpoint this far below its start's score (dB) is worse than its start; closer is a tie, not a loss
BELOW_START_DB = 0.05


def selection_score(metrics: dict[str, float] | None) -> float | None:
    """The one checkpoint rule, the same for every mode: validation PSNR (dB) plus
    ``SENSITIVITY_DB`` x mean FROC sensitivity (that term only where validation has annotated lesions).
    None without validation metrics: then the last round is the result."""
    if not metrics or "psnr" not in metrics:
        return None
    return float(metrics["psnr"] + SENSITIVITY_DB * metrics.get("sensitivity", 0.0))


def below_start(start: dict[str, float] | None, end: dict[str, float] | None) -> str | None:
    """Why ``end`` (a checkpoint's validation metrics) scores below ``start`` (the starting weights' on the same
    slices), in words; None when it does not, or either is missing."""
    a, b = selection_score(start), selection_score(end)
    if a is None or b is None or b >= a - BELOW_START_DB:
        return None
    sens = "sensitivity" in (start or {}) and "sensitivity" in (end or {})
    what = f"PSNR + {SENSITIVITY_DB:g} x sensitivity" if sens else "PSNR"
    return f"its validation score ({what}) fell from {a:.2f} to {b:.2f} dB during training"


def card_below_start(card: dict[str, Any] | None) -> str | None:
    """Why a trained network's card (``training.start_metrics`` beside ``metrics``, written only for a network
    that trained) says it ended below its start, judged on its own term: a denoiser's validation PSNR, a
    detector's mean sensitivity (``BELOW_START_DB`` of score either way); None when it did not, or cannot say."""
    card = card or {}
    start, end = (card.get("training") or {}).get("start_metrics") or {}, card.get("metrics") or {}
    key, scale, unit = ("psnr", 1.0, " dB") if card.get("kind") == "denoiser" else ("sensitivity", SENSITIVITY_DB, "")
    a, b = start.get(key), end.get(key)
    if not all(isinstance(v, int | float) for v in (a, b)) or (b - a) * scale >= -BELOW_START_DB:
        return None
    what, digits = ("PSNR", 2) if key == "psnr" else ("mean sensitivity", 3)
    return f"its validation {what} fell from {a:.{digits}f}{unit} to {b:.{digits}f}{unit} during training"


def worse_reason(card: dict[str, Any] | None) -> str | None:
    """Why a model's card says it is worse than the model it started from, in words: an adapted model's own
    no-reference check (``noreference.worse_than_start``), or a trained network's validation score below its
    start's (:func:`card_below_start`); None when the card says neither."""
    from napari_lidnet.metrics.noreference import worse_than_start

    card = card or {}
    if worse_than_start((card.get("metrics") or {}).get("noreference") or {}):
        start = (card.get("training") or {}).get("selfsup", {}).get("from_model", "its start")
        return f"its own no-reference check found it worse than the model it was adapted from ({start})"
    return card_below_start(card)
