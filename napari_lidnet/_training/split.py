"""Training, validation and test slices by contiguous blocks of a volume, never slice by slice at random.

Neighbouring slices of a CT volume are nearly identical: a random split puts copies of the validation slices into
training. Here the slices are ordered by volume (group) and position, the volumes in a seeded order, and the
held-out slices are one contiguous run of that order (validation first, then test); training slices within
``guard`` slices of a held-out slice of the same volume, and every slice of a patient with a held-out slice (another
series of that patient: a second reconstruction, a copy exported twice; samples with a ``patient`` key), are left
out; when the patient rule would leave nothing to train on (a one-patient archive), the neighbours alone are, and
when even that would, nothing is. :func:`left_out` says what was left out (an archive of two patients trains on
one, so that e.g. 56 of 84 slices are not lost without a word).
Independent 2D slices (each its own group) are then split as a seeded random subset.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def slice_key(sample: Any) -> tuple[str, float]:
    """(volume, position) of a slice: its ``group``/``position`` attributes when it has them (manifest slices),
    else parsed from a name ``"<volume>#<z>"`` (fine-tuning inputs), else (name, 0): a slice of its own."""
    group = getattr(sample, "group", None)
    if group is not None:
        return str(group), float(getattr(sample, "position", 0.0))
    name = str(sample.name)
    head, sep, tail = name.rpartition("#")
    if sep:
        try:
            return head, float(tail)
        except ValueError:
            pass
    return name, 0.0


def _count(n: int, fraction: float, most: int) -> int:
    """Held-out slices for a fraction: rounded, at most ``most``, at least 1 when the fraction is positive."""
    if fraction <= 0 or n < 2:
        return 0
    return max(1, min(most, int(round(n * fraction))))


def split_samples(
    samples: Sequence[Any],
    val_fraction: float,
    seed: int,
    val_max: int,
    test_fraction: float = 0.0,
    test_max: int = 8,
    guard: int = 1,
) -> tuple[list, list, list]:
    """Seeded (train, validation, test) split by contiguous blocks (module docstring).

    At least one training slice is always left: the test part shrinks first, then the validation part.
    """
    keys = [slice_key(s) for s in samples]
    groups: dict[str, list[int]] = {}
    for i, (group, _pos) in enumerate(keys):
        groups.setdefault(group, []).append(i)
    rng = np.random.default_rng(seed)
    names = sorted(groups)
    order = [i for g in rng.permutation(len(names)) for i in sorted(groups[names[g]], key=lambda j: keys[j][1])]
    n = len(order)
    n_val, n_test = _count(n, val_fraction, val_max), _count(n, test_fraction, test_max)
    n_test = max(0, min(n_test, n - 1 - n_val))
    n_val = max(0, min(n_val, n - 1 - n_test))
    start = int(rng.integers(0, n - n_val - n_test + 1)) if n else 0
    val = order[start : start + n_val]
    test = order[start + n_val : start + n_val + n_test]
    held = set(val) | set(test)
    train = [i for i in order if i not in held]
    near = {i for i in train for j in held if keys[i][0] == keys[j][0] and abs(keys[i][1] - keys[j][1]) <= guard}
    patients = [getattr(s, "patient", None) for s in samples]
    held_patients = {patients[j] for j in held} - {None}
    same_patient = {i for i in train if patients[i] in held_patients}
    for drop in (near | same_patient, near):  # a one-patient archive: the neighbours' guard still holds
        if len(drop) < len(train):
            train = [i for i in train if i not in drop]
            break
    return [samples[i] for i in train], [samples[i] for i in val], [samples[i] for i in test]


def left_out(samples: Sequence[Any], train: Sequence[Any], held: Sequence[Any], guard: int = 1) -> str:
    """What :func:`split_samples` left out of ``samples`` beside the ``held`` (validation and test) slices, in
    words (empty when nothing): the neighbours of held-out slices, and the other slices of their patients."""
    kept = {id(s) for s in (*train, *held)}
    out = [s for s in samples if id(s) not in kept]
    if not out:
        return ""
    held_keys = [slice_key(s) for s in held]
    near = sum(any(slice_key(s)[0] == g and abs(slice_key(s)[1] - z) <= guard for g, z in held_keys) for s in out)
    parts = [f"{near} next to a held-out slice"] if near else []
    if len(out) > near:
        parts.append(f"{len(out) - near} more of the held-out slices' patient (no patient both trains and is held "
                     "out: with few patients, a smaller --val-max-slices does not help, more patients do)")
    return f"left out {len(out)} slice{'s' if len(out) > 1 else ''}: " + ", ".join(parts)
