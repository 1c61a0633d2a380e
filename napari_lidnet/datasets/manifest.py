"""The slice manifest: an archive indexed once, so training reads its slices lazily (docs/CONTRACTS.md).

A manifest is JSON Lines. The first line describes the index, every further line is one 2D slice::

    {"format": "lidnet-manifest", "version": 1, "root": "/abs/archive", "kind": "dataset|deeplesion|dicom",
     "n": N, "dose": 0.25 or null, "seed": 0, "skipped": [...], "command": "..."}
    {"name": "...", "file": "rel/path", "frame": 0, "low": "rel/path" or null, "shape": [rows, cols],
     "spacing_mm": 0.7, "boxes": [[x1, y1, x2, y2], ...], "group": "series" (optional), "position": 3 (optional)}

Paths are relative to ``root``. Indexing reads headers only (DICOM without pixels, PNG sizes from the file header,
the CSV tables of dataset and DeepLesion folders). ``group``/``position`` (the series and the slice's place in it)
let training split by contiguous blocks of a series (``_training.split``). The header's ``split`` is the official
part indexed (DeepLesion's Train_Val_Test: train, val, test or all; null for archives without one).

A slice without a low-dose file gets its low-dose partner simulated (projection-domain noise insertion at the
manifest's ``dose``, seeded per slice, stored in whole HU like the archive's images) once, and kept in a cache
folder next to the manifest (``<manifest>.lowdose/<key>.npy``, int16 HU, written atomically; the key covers the
file, its size and time, the frame, the dose and the seed), never inside the archive. Three kinds of archive:

- ``dataset``: one or more lidnet dataset folders (``lidnet simulate``) anywhere under the root;
- ``deeplesion``: a DeepLesion tree (``DL_info.csv`` + ``Images_png/<series>/<index>.png``), key slices with boxes;
- ``dicom``: every CT image series under the root, each slice (or frame) a row, no boxes.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_lidnet.io.atomic import write_atomically
from napari_lidnet.io.checks import one_line
from napari_lidnet.io.png16 import png16_shape, read_png_hu

FORMAT = "lidnet-manifest"
VERSION = 1
KINDS = ("dataset", "deeplesion", "dicom")
SPLITS = ("train", "val", "test", "all")
#: bump when the simulation of missing low-dose partners changes: old cache entries are then not used
LOWDOSE_CACHE_VERSION = 2
#: bump when indexing changes what rows say (2: DICOM rows in slice order, series rescales, patient keys): a run
#: from an archive folder then indexes it again instead of reusing its older index
INDEXER = 2


@dataclass(repr=False, eq=False)
class ManifestSlice:
    """One slice of a manifest; its pixels are read from disk on every access. A missing low dose is simulated
    once and kept in ``cache_dir`` (when given; else simulated on every access)."""

    name: str
    root: Path
    entry: dict[str, Any]
    dose: float | None
    noise_seed: int
    cache_dir: Path | None = None
    #: ``(full, noise, dose) -> noise`` that sets a simulated partner's noise level (``_training.noise_level``:
    #: the slice's own noise at that dose); None keeps the scanner model's photon count
    calibrate: Callable[[np.ndarray, np.ndarray, float], np.ndarray] | None = None

    @property
    def boxes(self) -> np.ndarray:
        return np.asarray(self.entry.get("boxes", []), np.float32).reshape(-1, 4)

    @property
    def rejected(self) -> np.ndarray:
        """Boxes a reader rejected (``io.dataset.Sample.rejected``): a manifest records none."""
        return np.zeros((0, 4), np.float32)

    @property
    def spacing_mm(self) -> float:
        return float(self.entry["spacing_mm"])

    @property
    def shape(self) -> tuple[int, int]:
        rows, cols = self.entry["shape"]
        return int(rows), int(cols)

    @property
    def group(self) -> str | None:
        """The series the slice belongs to (None: a slice of its own)."""
        return self.entry.get("group")

    @property
    def position(self) -> float:
        """The slice's place in its series (slice number)."""
        return float(self.entry.get("position", 0))

    @property
    def patient(self) -> str | None:
        """A pseudonymous key of the patient (None: unknown); no patient is both trained and held out."""
        return self.entry.get("patient")

    @property
    def full_hu(self) -> np.ndarray:
        hu = _read_image(self.root / self.entry["file"], int(self.entry.get("frame", 0)))
        if "rescale" in self.entry:  # stored without a rescale (read as stored values): the series' one
            slope, intercept = (float(v) for v in self.entry["rescale"])
            hu = (hu.astype(np.float64) * slope + intercept).astype(np.float32)
        return hu

    @property
    def low_hu(self) -> np.ndarray:
        if self.entry.get("low"):
            return _read_image(self.root / self.entry["low"], 0)
        if self.dose is None:
            raise ValueError(f"{self.name}: no low-dose image, and the manifest has no dose to simulate one")
        if self.cache_dir is None:
            return self._simulate()
        target = self.cache_dir / f"{self._cache_key()}.npy"
        try:
            return np.load(target).astype(np.float32)
        except (OSError, ValueError, EOFError):  # not there yet (or unreadable): simulate and keep it
            pass
        low = self._simulate()
        _keep_cached(target, low.astype(np.int16))
        return low

    @property
    def has_low_dose(self) -> bool:
        """Whether the slice has a low-dose partner: a file, or a dose to simulate one at."""
        return bool(self.entry.get("low")) or self.dose is not None

    @property
    def low_shape(self) -> tuple[int, ...]:
        """Shape of the low-dose partner, without simulating it (a simulated one has the slice's shape)."""
        return tuple(self.low_hu.shape) if self.entry.get("low") else self.shape

    @property
    def to_simulate(self) -> bool:
        """Whether reading ``low_hu`` simulates it now (no low-dose file, none in the cache yet)."""
        if self.entry.get("low") or self.dose is None:
            return False
        return self.cache_dir is None or not (self.cache_dir / f"{self._cache_key()}.npy").exists()

    def _simulate(self) -> np.ndarray:
        """The simulated low-dose partner in whole HU (as stored in the cache)."""
        from napari_lidnet.sim.lowdose import SCANNER_SAMPLING_MM, simulate_low_dose

        full = self.full_hu
        low = simulate_low_dose(full, self.dose, self.spacing_mm, seed=self.noise_seed,
                                sampling_mm=SCANNER_SAMPLING_MM)  # fmt: skip
        if self.calibrate is not None:
            low = full + self.calibrate(full, low - full, self.dose)
        return np.clip(np.rint(low), -32768, 32767).astype(np.float32)

    def _cache_key(self) -> str:
        st = (self.root / self.entry["file"]).stat()
        parts = [self.entry["file"], int(self.entry.get("frame", 0)), self.dose, self.noise_seed, st.st_size,
                 st.st_mtime_ns, LOWDOSE_CACHE_VERSION, self.calibrate is not None]  # fmt: skip
        return hashlib.sha1(json.dumps(parts).encode()).hexdigest()[:32]

    def __repr__(self) -> str:
        return f"ManifestSlice({self.name!r}, boxes={len(self.boxes)}, file={self.entry['file']!r})"


def _keep_cached(target: Path, array: np.ndarray) -> None:
    """``np.save`` through a temporary file renamed into place (``io.atomic.write_atomically``: readers never see
    half a file; concurrent writers of the same key write the same bytes). A cache that cannot be written is skipped."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(target, buffer.getvalue())
    except OSError:
        pass


def lowdose_cache_dir(manifest: str | Path) -> Path:
    """The cache folder of the simulated low-dose partners of a manifest file: ``<manifest>.lowdose``."""
    manifest = Path(manifest).resolve()
    return manifest.with_name(manifest.name + ".lowdose")


def _read_image(path: Path, frame: int) -> np.ndarray:
    if path.suffix.lower() == ".png":
        return read_png_hu(path)
    return _decoded(path)[frame].copy()  # the cache stays as decoded whatever the caller does


@functools.lru_cache(maxsize=1)
def _decoded(path: Path) -> np.ndarray:
    """Every frame of one DICOM file in HU, the last file kept: an enhanced file's frames, read one after the other,
    decode the file once, not once per frame."""
    from napari_lidnet.io.dicom_read import decode_pixels
    from napari_lidnet.io.dicom_scan import DicomHeader

    return decode_pixels(DicomHeader(path, None))


# -- indexing ----------------------------------------------------------------------------------------------------
def _rel(path: Path, root: Path) -> str:
    """``path`` relative to the (resolved) archive ``root``: as walked (a linked file or folder keeps its place in
    the archive), else resolved."""
    try:
        return path.absolute().relative_to(root).as_posix()
    except ValueError:
        return path.resolve().relative_to(root).as_posix()


def _dataset_rows(root: Path) -> Iterator[dict[str, Any]]:
    from napari_lidnet.io.dataset import is_dataset, read_dataset

    folders = sorted({p.parent for p in root.rglob("dataset.json") if is_dataset(p.parent)})
    for folder in folders:
        prefix = "" if folder == root else f"{_rel(folder, root)}/"
        for s in read_dataset(folder, lazy=True):
            yield {
                "name": f"{prefix}{s.name}",
                "file": _rel(s.full_path, root),  # type: ignore[attr-defined]
                "frame": 0,
                "low": _rel(s.low_path, root) if s.low_path else None,  # type: ignore[attr-defined]
                "shape": list(s.shape),
                "spacing_mm": s.spacing_mm,
                "boxes": np.asarray(s.boxes).round(2).tolist(),
            }


def _deeplesion_rows(root: Path, skipped: list[str], split: str) -> Iterator[dict[str, Any]]:
    from napari_lidnet.io.deeplesion import INFO_CSV_NAME, read_info_table

    decoded: set[str] = set()
    for table_path in sorted(root.rglob(INFO_CSV_NAME)):
        table = read_info_table(table_path, split)
        base = table_path.parent
        for file_name, rows in sorted(table.items()):
            series, _, index = file_name.rpartition("_")
            candidates = [base / "Images_png" / series / index, base / series / index]
            png = next((c for c in candidates if c.is_file()), None)
            if png is None:
                skipped.append(f"{file_name}: listed in {table_path} but no PNG found")
                continue
            if any(r.noisy for r in rows):  # its lesion would be there without a box: the slice is left out
                skipped.append(f"{file_name}: Possibly_noisy annotation in {table_path} (left out, as MULAN does)")
                continue
            try:  # every slice's header; the first slice of each series decoded, as for a DICOM archive
                shape = png16_shape(png)
                if series not in decoded:
                    read_png_hu(png)
                    decoded.add(series)
            except (OSError, ValueError) as exc:
                skipped.append(f"{file_name}: {one_line(str(exc))}")
                continue
            spacing = rows[0].spacing_xyz
            yield {
                "name": file_name[:-4] if file_name.endswith(".png") else file_name,
                "file": _rel(png, root),
                "frame": 0,
                "low": None,
                "shape": list(shape),
                "spacing_mm": spacing[0] if spacing else 1.0,
                "boxes": [list(r.box) for r in rows],
                "group": series,
                "position": int(index.split(".")[0]) if index.split(".")[0].isdigit() else 0,
                "patient": series.split("_")[0],  # DeepLesion's series folders are patient_study_series
            }


def _dicom_rows(root: Path, skipped: list[str]) -> Iterator[dict[str, Any]]:
    from napari_lidnet.io.dicom_scan import folder_files, scan_dicom
    from napari_lidnet.io.nifti import is_nifti

    scan = scan_dicom(root)
    skipped.extend(scan.skipped)
    skipped.extend(f"{_rel(p, root)} (NIfTI: an index holds DICOM series, dataset folders or DeepLesion)"
                   for p in folder_files(root) if is_nifti(p))  # fmt: skip
    for uid, headers in sorted(scan.series.items()):
        try:
            yield from _series_rows(uid, headers, root, skipped)
        except (ValueError, TypeError, OSError) as exc:  # one bad series never stops the index
            skipped.append(f"series {uid}: {exc}")


def _series_problem(headers: list[Any]) -> str | None:
    """Why a series cannot train (not CT, derived, no usable pixel size, pixels unreadable or not HU), or None.
    Decodes one file (the middle one): a series whose pixels cannot be read is skipped here, not hours into a run."""
    from napari_lidnet.io.dicom_read import decode_pixels
    from napari_lidnet.io.dicom_scan import is_derived
    from napari_lidnet.io.dicom_values import header_floats, stored_values_only

    ds0 = headers[0].ds
    if str(ds0.get("Modality", "") or "") != "CT":
        return f"modality {ds0.get('Modality', 'missing')!r} is not CT"
    if is_derived(ds0):  # e.g. a denoised copy: not a normal-dose scan to insert noise into
        return "derived images (ImageType DERIVED), not the scanner's originals"
    ps = header_floats(ds0.get("PixelSpacing"), 2)
    if ps is not None and not (np.all(np.isfinite(ps)) and np.all(ps > 0)):
        return f"PixelSpacing {list(ps)} is not a pixel size"
    try:
        hu = decode_pixels(headers[len(headers) // 2])
    except (ValueError, OSError, RuntimeError, AttributeError) as exc:
        return f"pixel data cannot be read ({str(exc).splitlines()[0]})"
    if stored_values_only([h.ds for h in headers], hu):
        return "no RescaleIntercept and no pixel below 0 HU (air is -1000): stored values, not HU"
    return None


def _patient_key(ds: Any) -> str | None:
    """A pseudonymous key of the patient (PatientID and its issuer, else the study): every series of one patient
    shares it, so training never validates on a patient it trains on; None when the header names neither."""
    pid = str(ds.get("PatientID", "") or "").strip()
    who = f"{pid}|{str(ds.get('IssuerOfPatientID', '') or '').strip()}" if pid else ""
    who = who or str(ds.get("StudyInstanceUID", "") or "").strip()
    return hashlib.sha1(who.encode()).hexdigest()[:16] if who else None


def _series_rows(uid: str, headers: list[Any], root: Path, skipped: list[str]) -> Iterator[dict[str, Any]]:
    """The rows of one series in the order of its slices along their normal (InstanceNumber where positions are
    missing), as the reader stacks them; a slice stored without a rescale gets the series' (``rescale``)."""
    from napari_lidnet.io.dicom_read import order_series
    from napari_lidnet.io.dicom_scan import n_frames
    from napari_lidnet.io.dicom_values import header_floats, header_rescale, series_rescales

    ordered, notes = order_series(headers)
    problem = _series_problem(ordered)
    if problem is not None:
        desc = str(ordered[0].ds.get("SeriesDescription", "") or "")
        skipped.append(f"series {uid}{f' ({desc})' if desc else ''}: {problem}")
        return
    rescales, rescale_notes = series_rescales([h.ds for h in ordered], f"series {uid}")
    skipped.extend(notes + rescale_notes)
    patient = _patient_key(ordered[0].ds)
    position = 0
    for h, rescale in zip(ordered, rescales):
        ps = header_floats(h.ds.get("PixelSpacing"), 2)
        filled = header_rescale(h.ds) is None and rescale != (1.0, 0.0)
        for frame in range(n_frames(h.ds)) if h.frame is None else [h.frame]:  # an enhanced file: one per frame
            row = {"name": f"{_rel(h.path, root)}#{frame}", "file": _rel(h.path, root), "frame": frame, "low": None,
                   "shape": [int(h.ds.Rows), int(h.ds.Columns)], "spacing_mm": float(ps[0]) if ps is not None else 1.0,
                   "boxes": [], "group": uid, "position": position, "patient": patient}  # fmt: skip
            if filled:
                row["rescale"] = [float(rescale[0]), float(rescale[1])]
            position += 1
            yield row


def archive_kind(root: str | Path) -> str:
    """``dataset``, ``deeplesion`` or ``dicom``: what :func:`index_archive` will index under ``root``."""
    from napari_lidnet.io.dataset import is_dataset
    from napari_lidnet.io.deeplesion import INFO_CSV_NAME

    root = Path(root)
    if root.is_file():
        raise ValueError(f"{root}: index takes an archive folder (DICOM series, DeepLesion or lidnet datasets), "
                         "not a file")  # fmt: skip
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no such archive folder or manifest")
    if any(is_dataset(p.parent) for p in root.rglob("dataset.json")):
        return "dataset"
    if next(root.rglob(INFO_CSV_NAME), None) is not None:
        return "deeplesion"
    return "dicom"


def effective_split(kind: str, split: str) -> str | None:
    """The split a manifest of ``kind`` records: DeepLesion's own, None for archives without one (there "train"
    and "all" mean every slice; "val"/"test" raise ValueError)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if kind == "deeplesion":
        return split
    if split in ("val", "test"):
        raise ValueError(f"a {kind} archive has no official {split!r} split; index it with split 'all'")
    return None


def build_index(
    root: str | Path, dose: float | None = None, seed: int = 0, command: str = "", split: str = "train"
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(header, rows) of every slice under ``root``, headers only; see :func:`index_archive`."""
    root = Path(root).resolve()
    kind = archive_kind(root)
    part = effective_split(kind, split)
    if dose is not None and not 0.0 < dose <= 1.0:
        raise ValueError(f"dose must be in (0, 1], not {dose}")
    skipped: list[str] = []
    if kind == "dataset":
        rows = list(_dataset_rows(root))
    elif kind == "deeplesion":
        rows = list(_deeplesion_rows(root, skipped, split))
    else:
        rows = list(_dicom_rows(root, skipped))
    if not rows:
        where = f", split {part}" if part else ""
        why = f"; skipped: {'; '.join(skipped[:3])}{' ...' if len(skipped) > 3 else ''}" if skipped else ""
        raise ValueError(f"{root}: no slices found to index ({kind} archive{where}){why}")
    names = [r["name"] for r in rows]
    if len(set(names)) != len(names):
        raise ValueError(f"{root}: slice names repeat; the archive has duplicate entries")
    header = {
        "format": FORMAT,
        "version": VERSION,
        "indexer": INDEXER,
        "root": str(root),
        "kind": kind,
        "split": part,
        "n": len(rows),
        "n_without_low": sum(r["low"] is None for r in rows),
        "dose": dose,
        "seed": int(seed),
        "skipped": skipped[:100],
        "n_skipped": len(skipped),
        "command": command,
        "tables": tables_fingerprint(root, kind),
    }
    return header, rows


def tables_fingerprint(root: Path, kind: str) -> str | None:
    """SHA-256 of the tables an archive's boxes, pixel sizes and provenance come from (each lidnet dataset's
    dataset.json, slices.csv and lesions.csv; DeepLesion's DL_info.csv); None for DICOM archives (no tables)."""
    from napari_lidnet.io.deeplesion import INFO_CSV_NAME

    names = {"dataset": ("dataset.json", "slices.csv", "lesions.csv"), "deeplesion": (INFO_CSV_NAME,)}.get(kind)
    if names is None:
        return None
    digest = hashlib.sha256()
    for path in sorted(p for name in names for p in root.rglob(name) if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def write_manifest(out: str | Path, header: dict[str, Any], rows: list[dict[str, Any]]) -> Path:
    """Write a manifest atomically (a fsynced temporary file renamed into place)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(out, "".join(json.dumps(line, separators=(",", ":")) + "\n" for line in (header, *rows)).encode())
    return out


def index_archive(
    root: str | Path,
    out: str | Path,
    dose: float | None = None,
    seed: int = 0,
    command: str = "",
    split: str = "train",
) -> Path:
    """Index every slice under ``root`` into the manifest file ``out``; returns ``out``.

    ``dose`` is the dose fraction at which slices without a low-dose file get one simulated when read.
    ``split``: the official part of an archive that has one (DeepLesion: train (default, for training), val,
    test (for evaluation) or all). Raises ValueError (nothing written) when no slice is found or ``out`` lies
    inside ``root``.
    """
    if Path(out).resolve().is_relative_to(Path(root).resolve()):
        raise ValueError(f"{out} lies inside the archive {root}; write the manifest elsewhere")
    return write_manifest(out, *build_index(root, dose, seed, command, split))


# -- reading -----------------------------------------------------------------------------------------------------
def is_manifest(path: str | Path) -> bool:
    """Whether ``path`` is a manifest file (first line has this format)."""
    try:
        with open(path) as fh:
            return json.loads(fh.readline()).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_header(path: str | Path) -> dict[str, Any]:
    """The first line of a manifest."""
    if not is_manifest(path):
        raise ValueError(f"{path}: not a lidnet manifest (make one with `lidnet index`)")
    with open(path) as fh:
        header = json.loads(fh.readline())
    if int(header.get("version", 0)) > VERSION:
        raise ValueError(f"{path}: manifest version {header['version']} is newer than this software ({VERSION})")
    return header


def load_manifest(path: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(header, rows) of a manifest file."""
    header = read_header(path)
    with open(path) as fh:
        fh.readline()
        rows = [json.loads(line) for line in fh]
    if len(rows) != int(header["n"]):
        raise ValueError(f"{path}: holds {len(rows)} slices, its header says {header['n']} (truncated?)")
    return header, rows


def manifest_slices(
    header: dict[str, Any],
    rows: list[dict[str, Any]],
    cache_dir: str | Path | None = None,
    calibrate: Callable[[np.ndarray, np.ndarray, float], np.ndarray] | None = None,
) -> list[ManifestSlice]:
    """The rows of a manifest as lazily read slices (low-dose noise seeded per slice from the header's seed),
    simulated low doses kept in ``cache_dir`` (none inside the archive: there nothing is cached), their noise level
    set by ``calibrate`` (:attr:`ManifestSlice.calibrate`)."""
    root = Path(header["root"])
    if not root.is_dir():
        raise FileNotFoundError(f"the archive {root} of this manifest is not there (moved? index it again)")
    dose = header.get("dose")
    missing = sum(not r.get("low") for r in rows)
    if dose is None and missing:
        raise ValueError(
            f"{root}: {missing} slice(s) have no low-dose image; give a dose (--dose) to simulate their low-dose "
            "partners, or add them to the archive"
        )
    seeds = np.random.SeedSequence(int(header.get("seed", 0))).generate_state(len(rows), np.uint32)
    cache = Path(cache_dir).resolve() if cache_dir is not None else None
    if cache is not None and cache.is_relative_to(root.resolve()):
        cache = None  # never write into the user's archive
    return [ManifestSlice(r["name"], root, r, dose, int(seed), cache, calibrate) for r, seed in zip(rows, seeds)]


def read_manifest(path: str | Path) -> list[ManifestSlice]:
    """Every slice of a manifest file, in file order; no pixel is read. Simulated low doses are cached in
    :func:`lowdose_cache_dir` of ``path``."""
    return manifest_slices(*load_manifest(path), cache_dir=lowdose_cache_dir(path))


def check_has_dose(data: str | Path, header: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    """Refuse (one line: how to index it again) a manifest indexed without a dose whose slices have no low-dose
    images: nothing would give them a low-dose partner (its dose cannot be set afterwards)."""
    if header.get("dose") is None and any(not r.get("low") for r in rows):
        raise ValueError(f"{data} was indexed without a dose, and its slices have no low-dose images: index the "
                         f"archive again with one (lidnet index {header.get('root', 'ARCHIVE')} --out NEW.jsonl "
                         "--dose 0.25)")  # fmt: skip


def archive_index(
    data: str | Path, cached: str | Path, dose: float | None = None, split: str = "train", resuming: bool = False
) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
    """(header, rows, is_new) for ``data``: a manifest file (as indexed), or an archive folder (its index ``cached``
    when that was made from the same folder at the same dose and split, and by this indexer revision unless
    ``resuming``: a run carries on with the data it started on; else a new one, not written: the caller writes
    it)."""
    data = Path(data)
    if data.is_file():
        header, rows = load_manifest(data)
        if dose is not None and header.get("dose") != dose:
            indexed = "without a dose" if header.get("dose") is None else f"at dose {header['dose']:g}"
            raise ValueError(
                f"{data} was indexed {indexed}, not at --dose {dose:g}: a manifest keeps its dose; index the archive "
                f"again (lidnet index {header.get('root', 'ARCHIVE')} --out NEW.jsonl --dose {dose:g}), or leave "
                "--dose out"
            )
        kind, indexed_split = header.get("kind"), header.get("split")
        if kind == "deeplesion" and indexed_split is not None and indexed_split != split and not resuming:
            raise ValueError(  # otherwise a test-part manifest would train to the end under --split train
                # (a run started so before this check resumes as it began: it carries on with its data)
                f"{data} holds DeepLesion's {indexed_split!r} part, not the {split!r} part asked for (--split, "
                f"default train): index that part (lidnet index {header.get('root', 'ARCHIVE')} --out NEW.jsonl "
                f"--split {split}), or give --split {indexed_split} to train on this one knowingly"
            )
        check_has_dose(data, header, rows)  # not "give --dose", then --dose refused for this manifest
        return header, rows, False
    if data.suffix.lower() in (".jsonl", ".json") and not data.exists():
        raise FileNotFoundError(f"{data}: no such manifest (make one with `lidnet index`)")
    cached = Path(cached)
    if is_manifest(cached):
        header, rows = load_manifest(cached)
        same_split = "split" in header and header["split"] == effective_split(header["kind"], split)
        current = resuming or header.get("indexer", 1) == INDEXER
        if header["root"] == str(data.resolve()) and header.get("dose") == dose and same_split and current:
            changed = header.get("tables") not in (None, tables_fingerprint(data.resolve(), header["kind"]))
            if changed and resuming:  # otherwise new images would be trained with the old boxes, silently
                raise ValueError(f"{data} changed since this run indexed it (its tables of slices and lesion boxes "
                                 "differ): resuming would mix the new images with the old boxes and split; restore "
                                 "the data, or start a new --out")  # fmt: skip
            if not changed:
                return header, rows, False
    command = f"lidnet index {data} --out {cached} --split {split}" + (f" --dose {dose:g}" if dose is not None else "")
    return (*build_index(data, dose, command=command, split=split), True)
