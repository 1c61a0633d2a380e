"""16-bit PNG slices in the DeepLesion convention: stored value = HU + 32768."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image

from .checks import check_image_shape, one_line

PNG_HU_OFFSET = 32768


def read_png_hu(path: str | Path) -> np.ndarray:
    """Read a 16-bit PNG key slice as float32 HU; refuse 8-bit or colour PNGs with a clear message."""
    path = Path(path)
    try:
        shape = png_shape(path)
    except (OSError, ValueError):
        shape = None  # PIL says why below
    if shape is not None:
        check_image_shape(shape, np.float32, str(path))  # before decoding: a huge PNG is refused unread
    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.asarray(im)
    except Exception as exc:  # PIL raises many types for broken files
        raise ValueError(f"{path}: not a readable PNG ({one_line(str(exc))})") from exc
    if arr.dtype not in (np.uint16, np.int32) or arr.ndim != 2 or mode not in ("I;16", "I;16B", "I"):
        raise ValueError(
            f"{path}: PNG mode {mode!r} ({arr.dtype}, shape {arr.shape}) is not a 16-bit grayscale CT slice "
            f"(DeepLesion stores HU + {PNG_HU_OFFSET} in 16-bit PNG)"
        )
    return arr.astype(np.float32) - PNG_HU_OFFSET


def png_header(path: str | Path) -> tuple[int, int, int, int]:
    """(rows, cols, bit depth, colour type) of a PNG from its IHDR chunk, without decoding the image."""
    with open(path, "rb") as fh:
        head = fh.read(26)
    if len(head) < 26 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path}: not a PNG file")
    width, height = struct.unpack(">II", head[16:24])
    return int(height), int(width), head[24], head[25]


def png_shape(path: str | Path) -> tuple[int, int]:
    """(rows, cols) of a PNG from its IHDR chunk, without decoding the image."""
    return png_header(path)[:2]


def png16_shape(path: str | Path) -> tuple[int, int]:
    """(rows, cols) of a 16-bit grayscale PNG (what a DeepLesion slice is) from its header; a one-line ValueError
    for any other PNG (the bit depth and colour type are in the header: nothing is decoded)."""
    rows, cols, depth, colour = png_header(path)
    if depth != 16 or colour != 0:
        kind = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale + alpha", 6: "RGBA"}.get(colour, "colour")
        raise ValueError(f"{path}: a {depth}-bit {kind} PNG is not a 16-bit grayscale CT slice (DeepLesion stores "
                         f"HU + {PNG_HU_OFFSET} in 16-bit PNG)")  # fmt: skip
    return rows, cols


def write_png_hu(path: str | Path, hu: np.ndarray) -> None:
    """Write HU (rounded, clipped to the 16-bit range) as a DeepLesion-style 16-bit PNG."""
    vals = np.clip(np.rint(np.asarray(hu, dtype=np.float64)) + PNG_HU_OFFSET, 0, 65535).astype(np.uint16)
    Image.fromarray(vals).save(Path(path))
