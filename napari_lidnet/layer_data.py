"""The layer boundary: CTVolume -> napari LayerDataTuples and back (a layer's slices -> CTVolume, for exports),
pixel boxes <-> Shapes rectangles, the removed-noise overlay.

Boxes are ``slice, x1, y1, x2, y2`` (or ``x1, y1, x2, y2`` in 2D) in pixel-edge coordinates: pixel column i spans
[i, i + 1), x2/y2 are exclusive edges (docs/CONTRACTS.md; the detector, the datasets and DeepLesion use them). napari
puts the centre of pixel i at data coordinate i, so pixel i spans [i - 0.5, i + 0.5) there: a rectangle's corners
are the box edges minus half a pixel, as four (row, col) = (y, x) corners, with the slice index (a pixel index,
not an edge) prepended in 3D. This is the one place where boxes and Shapes convert (:func:`boxes_to_shapes`,
:func:`shapes_to_boxes`). Shapes layers get the same scale/translate as their image, so their data coordinates are
the image's pixel coordinates. No Qt or torch import here.
"""

from __future__ import annotations

import uuid
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from napari_lidnet.io.checks import not_ct_note
from napari_lidnet.io.volume import CTVolume, known_pixel_mm, n_slices, slice_metadata
from napari_lidnet.io.windowing import SCAN_WINDOW, window_limits
from napari_lidnet.metrics.noreference import fill_holes, sample_slices

LayerDataTuple = tuple[Any, dict[str, Any], str]

BOX_EDGE_COLOR = "yellow"
#: napari data coordinate of a pixel's centre minus its pixel-edge coordinate
PIXEL_CENTRE_SHIFT = -0.5


def volume_to_layer_tuple(vol: CTVolume, preset: str = SCAN_WINDOW) -> LayerDataTuple:
    """Image layer tuple: HU untouched, scale/translate from geometry, a window preset (default: the scan's own,
    else soft tissue) as contrast limits. An image that is not CT in HU (another modality, or nothing below
    -50 HU in one that does not say CT: ``io.checks.not_ct_note``) is not marked as HU, so no CT window, HU
    readout or window link applies to it; it opens at its own window, else its 1-99th percentiles."""
    kwargs = vol.layer_kwargs()
    kwargs["metadata"]["source"] = vol.metadata.get("source")
    is_hu = not_ct_note(str(vol.metadata.get("modality", "") or ""), vol.hu, vol.name) is None
    kwargs["metadata"]["hu"] = is_hu
    if is_hu or vol.metadata.get("window"):
        limits = window_limits(preset if is_hu else SCAN_WINDOW, vol.metadata)
    elif np.isfinite(vol.hu).any():
        lo, hi = (float(v) for v in np.nanpercentile(np.where(np.isfinite(vol.hu), vol.hu, np.nan), [1, 99]))
        limits = (lo, hi if hi > lo else lo + 1.0)
    else:  # not one finite pixel (said by the reader): napari's contrast controls need finite limits
        limits = (0.0, 1.0)
    kwargs.update(colormap="gray", contrast_limits=limits, blending="translucent")
    kwargs["axis_labels"] = ("z", "y", "x")[-vol.hu.ndim :]
    return (vol.hu, kwargs, "image")


def boxes_to_shapes(boxes: np.ndarray, ndim: int) -> list[np.ndarray]:
    """(N, 5) ``slice, x1, y1, x2, y2`` or (N, 4) ``x1, y1, x2, y2`` pixel-edge boxes -> N napari rectangles of
    shape (4, ndim) that cover exactly the boxes' pixels (corners shifted by ``PIXEL_CENTRE_SHIFT``)."""
    boxes = np.asarray(boxes, dtype=float)
    if boxes.size == 0:
        return []
    if boxes.ndim != 2 or boxes.shape[1] not in (4, 5):
        raise ValueError(f"boxes must be (N, 4) x1,y1,x2,y2 or (N, 5) slice,x1,y1,x2,y2; got shape {boxes.shape}")
    if ndim < 2:
        raise ValueError(f"shapes need at least 2 dimensions, got ndim={ndim}")
    if ndim > 2 and boxes.shape[1] == 4:
        raise ValueError(f"{ndim}D shapes need the slice index: pass (N, 5) boxes slice,x1,y1,x2,y2")
    out = []
    for b in boxes:
        x1, y1, x2, y2 = b[-4:] + PIXEL_CENTRE_SHIFT
        corners = np.array([[y1, x1], [y1, x2], [y2, x2], [y2, x1]])
        if ndim > 2:
            lead = np.zeros((4, ndim - 2))
            lead[:, -1] = b[0]
            corners = np.concatenate([lead, corners], axis=1)
        out.append(corners)
    return out


def shapes_to_boxes(shapes_layer: Any) -> np.ndarray:
    """Shapes (a layer, or a list of (k, ndim) vertex arrays in napari data coordinates) -> (N, 5)
    ``slice, x1, y1, x2, y2`` pixel-edge bounding boxes (the inverse of :func:`boxes_to_shapes`).

    The slice is the (rounded) third-last coordinate; 0 for 2D shapes.
    """
    data: Sequence[np.ndarray] = getattr(shapes_layer, "data", shapes_layer)
    rows = []
    for verts in data:
        v = np.asarray(verts, dtype=float)
        z = float(np.rint(v[:, -3].mean())) if v.shape[1] >= 3 else 0.0
        y1, x1 = v[:, -2].min(), v[:, -1].min()
        y2, x2 = v[:, -2].max(), v[:, -1].max()
        rows.append([z, *(np.array([x1, y1, x2, y2]) - PIXEL_CENTRE_SHIFT)])
    return np.asarray(rows, dtype=np.float32).reshape(-1, 5)


#: ``metadata[ROLE]`` of a layer: what it is to the plugin (``_widgets._roles`` reads it); ANNOTATIONS: a scan's own
#: lesion boxes (the sample's ground truth, DeepLesion's bookmarks), offered as regions but never picked on their own
ROLE, ANNOTATIONS = "lidnet_role", "annotations"


def boxes_layer_tuple(
    boxes: np.ndarray,
    ndim: int,
    *,
    name: str = "lesions",
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
    affine: np.ndarray | None = None,
    units: Sequence[str] | None = None,
    scores: np.ndarray | None = None,
    labels: Sequence[str] | None = None,
    edge_color: str = BOX_EDGE_COLOR,
    features: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> LayerDataTuple:
    """Shapes layer tuple of rectangles for a scan's own lesion boxes (role ANNOTATIONS), placed like their image
    (same scale, translate, affine, units); ``features``: more columns, one value per box."""
    shapes = boxes_to_shapes(boxes, ndim)
    n = len(shapes)
    features = {k: list(v)[:n] for k, v in (features or {}).items()}
    if scores is not None:
        features["score"] = np.asarray(scores, dtype=float).reshape(-1)[:n]
    if labels is not None:
        features["label"] = list(labels)[:n]
    kwargs: dict[str, Any] = {
        "name": name,
        "shape_type": "rectangle",
        "edge_color": edge_color,
        "face_color": "transparent",
        "edge_width": 2,
        "ndim": ndim,
        "features": features,
    }
    kwargs["metadata"] = {ROLE: ANNOTATIONS, **(metadata or {})}
    if scale is not None:
        kwargs["scale"] = tuple(scale)
    if translate is not None:
        kwargs["translate"] = tuple(translate)
    if affine is not None:
        kwargs["affine"] = np.asarray(affine, dtype=float)
    if units is not None:
        kwargs["units"] = tuple(units)
    if "score" in features and n:
        kwargs["text"] = {"string": "{score:.2f}", "anchor": "upper_left", "size": 10, "color": edge_color}
    return (shapes, kwargs, "shapes")


def data_key(data: Any) -> str:
    """A fingerprint of an image's data (shape and a sample of 4096 voxels): layers made from an image record it
    (the plugin's outputs, a reader's annotations), so another image that took the same name is never taken for
    their source, and a renamed one still is."""
    shape = tuple(int(n) for n in data.shape)
    size = int(np.prod(shape))
    picks = np.unravel_index(np.linspace(0, max(size - 1, 0), min(size, 4096)).astype(np.int64), shape)
    values = data[picks] if isinstance(data, np.ndarray) else np.asarray(data)[picks]  # a numpy view: not copied
    sample = np.ascontiguousarray(values, dtype=np.float32)
    return f"{'x'.join(map(str, shape))}:{zlib.crc32(sample.tobytes()):08x}"


#: features of an annotated layer holding each lesion's measured diameters (mm): DeepLesion's RECIST axes
RECIST_LONG, RECIST_SHORT = "recist_long_mm", "recist_short_mm"

#: name suffix of a volume's own boxes (a reader's annotations, DeepLesion's bookmarks): the ground truth
ANNOTATED = "lesions (annotated)"


def volume_boxes_layer_tuple(vol: CTVolume, name: str | None = None) -> LayerDataTuple | None:
    """Shapes layer tuple for the volume's own boxes (e.g. DeepLesion annotations), or None when it has none."""
    if vol.boxes is None or len(vol.boxes) == 0:
        return None
    labels = vol.metadata.get("lesion_types")
    if labels is not None and len(labels) != len(vol.boxes):
        labels = None
    recist = vol.metadata.get("recist_mm")  # DeepLesion's diameters: its boxes are padded, so their sides are not
    extra = {}
    if recist is not None and len(recist) == len(vol.boxes):
        extra = {RECIST_LONG: [float(r[0]) for r in recist], RECIST_SHORT: [float(r[1]) for r in recist]}
    return boxes_layer_tuple(
        vol.boxes,
        vol.hu.ndim,
        name=name or f"{vol.name} {ANNOTATED}",  # not "<name> lesions": that is the detector's output layer
        scale=vol.spacing,
        translate=vol.origin,
        affine=vol.display_affine(),
        units=vol.units(),
        labels=labels,
        features=extra,
        metadata={"lidnet": {"source_key": data_key(vol.hu),  # its image, whatever either is called later
                             "pixel_mm": known_pixel_mm(vol)}},  # None: assumed
    )


def volume_layer_tuples(vol: CTVolume, preset: str = SCAN_WINDOW) -> list[LayerDataTuple]:
    """The image tuple, plus a Shapes tuple when the volume carries boxes."""
    out = [volume_to_layer_tuple(vol, preset)]
    box_tuple = volume_boxes_layer_tuple(vol)
    if box_tuple is not None:
        out.append(box_tuple)
    return out


#: the removed-noise overlay's colours: blue where denoising lowered HU, red where it raised them
NOISE_LOWERED, NOISE_RAISED = (0.25, 0.6, 1.0), (1.0, 0.4, 0.2)
#: overlay contrast limits: +-NOISE_SDS x the SD of what was removed in the body (at least 1 HU)
NOISE_SDS = 3.0


def tissue_mask(hu2d: np.ndarray) -> np.ndarray:
    """Every region of a slice above -500 HU, holes (lungs, bowel gas) filled: the body, both legs or an arm beside
    the trunk alike, and the table; not the air around them."""
    return fill_holes(np.asarray(hu2d) > -500.0)


def removed_noise(original: np.ndarray, denoised: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(what denoising removed, ``original - denoised``, set to 0 in the air around the patient; the tissue mask),
    (y, x) or (z, y, x): that air holds noise, no anatomy, and colouring it would frame the image in speckle."""
    original = np.asarray(original, np.float32)
    noise = np.subtract(original, np.asarray(denoised, np.float32), dtype=np.float32)
    body = np.empty(original.shape, bool)
    for plane, mask in zip(original.reshape(-1, *original.shape[-2:]), body.reshape(-1, *original.shape[-2:])):
        mask[...] = tissue_mask(plane)  # written in place: no list of masks stacked into a second copy
    np.multiply(noise, body, out=noise)  # 0 in the air (no boolean-index pass over the volume)
    return noise, body


#: at most this many slices, evenly spaced, set a volume overlay's contrast limits
NOISE_LIMIT_SLICES = 16


def removed_noise_layer(original: Any, denoised: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """The removed-noise overlay of ``original`` (y, x) or (z, y, x) and its styling (:func:`removed_noise_kwargs`).

    A volume's map is a dask array computed slice by slice as napari shows it: nothing is computed or held for the
    slices no one looks at, so neither a study-size run nor ticking the box holds the viewer. Its limits come from at
    most ``NOISE_LIMIT_SLICES`` evenly spaced slices. A 2D image is computed at once.
    """
    if np.ndim(denoised) == 2:
        noise, body = removed_noise(np.asarray(original), denoised)
        return noise, removed_noise_kwargs(noise, body)
    import dask.array as da

    n = denoised.shape[0]
    idx = np.asarray(sample_slices(n, NOISE_LIMIT_SLICES))
    sample = np.stack([np.asarray(original[int(z)], np.float32) for z in idx])
    kwargs = removed_noise_kwargs(*removed_noise(sample, denoised[idx]))

    def one_slice(block_info: dict) -> np.ndarray:  # read from the arrays themselves: dask copies what it is given
        z = block_info[None]["array-location"][0][0]
        return removed_noise(np.asarray(original[z : z + 1], np.float32), denoised[z : z + 1])[0]

    chunks = ((1,) * n, (denoised.shape[1],), (denoised.shape[2],))
    name = f"removed-noise-{uuid.uuid4().hex}"  # named: dask would otherwise hash both volumes to name it
    return da.map_blocks(one_slice, chunks=chunks, dtype=np.float32, meta=np.empty((0, 0, 0), np.float32),
                         name=name), kwargs  # fmt: skip


def removed_noise_kwargs(noise: np.ndarray, where: np.ndarray | None = None) -> dict[str, Any]:
    """Image-layer styling of a removed-noise map (input minus denoised) laid over its CT.

    The limits are ``NOISE_SDS`` SDs of ``noise`` over ``where`` (all of it by default). Opacity follows |removed
    HU|: where the denoiser took nothing out the overlay is transparent and the CT shows through; speckle is the noise
    it removed, and a coherent coloured outline is anatomy it removed.
    """
    n = noise.size if where is None else int(np.count_nonzero(where))  # the body, when given (no copy of it)
    lim = float(max(1.0, NOISE_SDS * np.std(noise, where=where if where is not None else True))) if n else 1.0
    colormap = {  # napari builds the Colormap from this spec
        # input - denoised < 0: the denoiser raised HU there (red); > 0: it lowered them (blue)
        "colors": [(*NOISE_RAISED, 1.0), (0.0, 0.0, 0.0, 0.0), (*NOISE_LOWERED, 1.0)],
        "controls": [0.0, 0.5, 1.0],
        "name": "removed noise",  # short: napari lists it in the layer controls
    }
    return {"contrast_limits": (-lim, lim), "colormap": colormap, "blending": "translucent", "visible": True}


def slice_translate(scale: tuple[float, ...], translate: tuple[float, ...], z0: int) -> tuple[float, ...]:
    """Translate of a layer holding slices ``z0...`` of a volume with ``scale``/``translate`` (data units)."""
    t = list(translate)
    t[0] = float(t[0]) + z0 * float(scale[0])
    return tuple(t)


def metadata_for_slices(metadata: dict[str, Any], first_slice: int, n: int) -> dict[str, Any]:
    """Copy of a source layer's metadata for a layer of ``n`` slices from ``first_slice``: ``affine_lps`` moved
    along the slice axis, ``image_position_patient`` updated and per-slice lists cut, so later exports place it
    correctly."""
    meta = slice_metadata(metadata, first_slice, n)
    aff = meta.get("affine_lps")
    if first_slice and aff is not None and np.shape(aff) == (4, 4):
        aff = np.array(aff, dtype=float)
        aff[:3, 3] += first_slice * aff[:3, 0]
        meta["affine_lps"] = aff
        meta["image_position_patient"] = [float(v) for v in aff[:3, 3]]
    return meta


def volume_from_layer(
    hu: np.ndarray,
    scale: tuple[float, ...],
    translate: tuple[float, ...],
    metadata: dict[str, Any],
    name: str,
    first_slice: int = 0,
) -> CTVolume:
    """A CTVolume for ``hu`` = slices ``first_slice...`` of a source layer (``scale``, ``translate``, ``metadata``).

    Direction and origin come from ``metadata["affine_lps"]`` when the source came from this plugin's reader,
    else from scale/translate with an identity direction. Other metadata (DICOM source tags) is kept.
    """
    meta = {k: v for k, v in metadata.items() if k not in ("affine_lps", "lidnet")}
    meta = slice_metadata(meta, first_slice, n_slices(hu))
    spacing = tuple(abs(float(s)) for s in scale)
    aff = metadata.get("affine_lps")
    if aff is None or np.shape(aff) != (4, 4):
        origin = slice_translate(tuple(float(s) for s in scale), translate, first_slice) if hu.ndim == 3 else translate
        signs = np.sign([float(s) for s in scale][::-1] + [1.0] * (3 - len(scale)))  # x, y, z: a flipped layer's
        direction = np.diag(signs) if (signs < 0).any() else None  # axis runs the other way
        return CTVolume(hu, spacing, tuple(float(t) for t in origin), direction, name=name, metadata=meta)
    aff = np.asarray(aff, dtype=float)
    direction = np.zeros((3, 3))
    for col, axis in enumerate((2, 1, 0)):  # affine columns are the z, y, x array axes (unit: a layer rescaled
        norm = float(np.linalg.norm(aff[:3, col]))  # since it was read keeps its directions)
        direction[:, axis] = aff[:3, col] / norm if norm > 0 else np.eye(3)[:, axis]
    origin_zyx = tuple((aff[:3, 3] + first_slice * aff[:3, 0])[::-1])
    return CTVolume(hu, spacing, origin_zyx[3 - hu.ndim :], direction, name=name, metadata=meta)
