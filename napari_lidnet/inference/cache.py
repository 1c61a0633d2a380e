"""Content fingerprints of arrays and models, and the bounded cache of inference results keyed by them: a re-run or
a new score threshold costs nothing."""

from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from collections.abc import Hashable

import numpy as np
import torch


def array_fingerprint(a: np.ndarray) -> str:
    """Content hash (BLAKE2b, 128 bits) of an array's dtype, shape and bytes (~1 GB/s)."""
    a = np.ascontiguousarray(a)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    if a.size:  # an empty array has no bytes (and memoryview refuses its zero strides)
        h.update(memoryview(a).cast("B"))
    return h.hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """Content hash of a model's class, config and state (changes when it is fine-tuned in place)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(model).__qualname__.encode())
    h.update(repr(sorted(getattr(model, "config", {}).items())).encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        if t.is_meta:
            h.update(str(tuple(t.shape)).encode())
            continue
        arr = t.detach().to("cpu").contiguous()
        h.update(str(arr.dtype).encode())
        h.update(arr.reshape(-1).view(torch.uint8).numpy().tobytes() if arr.numel() else b"")
    return h.hexdigest()


def cache_bytes(total: int | None = None) -> int:
    """The default bound of a ``ResultCache``: 2 GiB, or an eighth of the machine's memory (``total`` bytes, read
    from the system when None) where that is less: a laptop keeps room for the viewer's own copies."""
    if total is None:
        try:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):  # no sysconf (Windows): the fixed bound
            total = 16 << 30
    return int(min(2 << 30, total // 8))


class ResultCache:
    """Small LRU cache of inference results, bounded by entries and by the bytes of the arrays it holds.

    Arrays are stored read-only: whoever gets one must copy before writing to it.
    """

    def __init__(self, max_items: int = 8, max_bytes: int | None = None) -> None:
        self.max_items = max_items
        self.max_bytes = cache_bytes() if max_bytes is None else max_bytes
        self._items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self.hits = self.misses = 0

    def get(self, key: Hashable) -> np.ndarray | None:
        """The cached array or None; counts hits and misses."""
        value = self._items.get(key)
        if value is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return value

    def put(self, key: Hashable, value: np.ndarray) -> np.ndarray:
        """Store ``value`` (made read-only) and evict the oldest entries over the limits; returns it."""
        value.setflags(write=False)
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.max_items or (
            len(self._items) > 1 and sum(v.nbytes for v in self._items.values()) > self.max_bytes
        ):
            self._items.popitem(last=False)
        return value

    def forget(self, fingerprint: str) -> int:
        """Drop every result computed from the input of ``fingerprint`` (an image the user deleted); their number."""
        gone = [key for key in self._items if _mentions(key, fingerprint)]
        for key in gone:
            del self._items[key]
        return len(gone)

    def __len__(self) -> int:
        return len(self._items)


def _mentions(key: Hashable, fingerprint: str) -> bool:
    """Whether a cache key holds ``fingerprint`` as its input (a detection's key holds its denoising's key there)."""
    return key == fingerprint or (isinstance(key, tuple) and len(key) > 1 and _mentions(key[1], fingerprint))
