"""JSON that strict readers accept: ``NaN`` and ``Infinity`` are not JSON (JavaScript's ``JSON.parse``, ``jq`` and
most PACS / RIS tools reject the whole file), so a measure that does not exist is written as ``null``."""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["finite", "strict_dumps"]


def finite(value: Any) -> Any:
    """``value`` with every NaN / infinite float (numpy's too) replaced by None, through dicts, lists and tuples."""
    if hasattr(value, "tolist") and not isinstance(value, str):  # numpy scalars and arrays
        value = value.tolist()
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def strict_dumps(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`finite` ``(obj)``: no NaN or Infinity token in the text."""
    return json.dumps(finite(obj), allow_nan=False, **kwargs)
