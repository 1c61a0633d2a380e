"""Peak memory of the volume pipeline (denoise, then detect) on CPU, as a multiple of the volume's own size.

    PYTHONPATH=. python benchmarks/pipeline_memory.py                  # 64 x 512 x 512, shipped models
    PYTHONPATH=. python benchmarks/pipeline_memory.py --slices 32 --size 256

Method (Linux): the volume and the models are made first; then the kernel's resident high-water mark is reset
(``/proc/self/clear_refs``) and the whole volume goes through ``inference.run_pipeline``; the peak resident memory
above the level just before the run, divided by the volume's bytes, is the ratio. Two runs in one process:
``cold`` (the first run: the output, the copies, one batch's network working set and torch's lazy set-up) and
``warm`` (the same run again: the allocator already holds a batch's working set, so what is left is the memory
that grows with the volume). Target: at most 2x the volume, the output volume itself included. Then the result
is written as a DICOM series (``dicom_write``), whose peak is reported the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import phantom_volume, pick_model  # noqa: E402

from napari_lidnet import inference as inf  # noqa: E402


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_added_bytes(run: callable) -> tuple[int, object]:
    """Peak resident bytes added while ``run()`` runs (high-water mark reset just before)."""
    Path("/proc/self/clear_refs").write_text("5")
    before = _status_kb("VmRSS")
    out = run()
    return (_status_kb("VmHWM") - before) * 1024, out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=64)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--json", type=Path, help="also write the result here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    denoiser, dn_name = pick_model(None, "denoiser")
    detector, det_name = pick_model(None, "detector")
    vol = phantom_volume(args.slices, args.size)
    settings = inf.InferenceSettings(batch_size=args.batch_size)
    result: dict = {"volume": list(vol.shape), "volume_mb": vol.nbytes / 2**20, "batch_size": args.batch_size}
    result["models"] = [dn_name, det_name]
    for run in ("cold", "warm"):
        added, res = peak_added_bytes(lambda: inf.run_pipeline(vol, denoiser, detector, "cpu", settings=settings))
        result[run] = {"peak_added_mb": added / 2**20, "ratio": added / vol.nbytes, "seconds": res.seconds}
        print(
            f"{run}: {args.slices} x {args.size}x{args.size} ({result['volume_mb']:.0f} MB), batch {args.batch_size}:"
            f" peak added {added / 2**20:.0f} MB = {added / vol.nbytes:.2f}x the volume ({res.seconds:.1f} s)"
        )
    result["dicom_write"] = _write_peak(res.denoised, args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


def _write_peak(denoised, args: argparse.Namespace) -> dict:
    """Peak memory of writing the denoised volume as a DICOM series (``lidnet denoise``'s and the Denoise dock's
    export, where a peak of 6.5x the volume has been measured)."""
    import shutil
    import tempfile

    from napari_lidnet.io.dicom_write import write_dicom_series
    from napari_lidnet.io.volume import CTVolume

    vol = CTVolume(denoised, (1.25, 0.7, 0.7), name="denoised")
    folder = Path(tempfile.mkdtemp())
    try:
        added, files = peak_added_bytes(lambda: write_dicom_series(vol, folder / "series", "memory benchmark"))
    finally:
        shutil.rmtree(folder)
    out = {"peak_added_mb": added / 2**20, "ratio": added / denoised.nbytes, "files": len(files)}
    print(f"DICOM write of the {args.slices}-slice result: peak added {added / 2**20:.0f} MB = {out['ratio']:.2f}x")
    return out


if __name__ == "__main__":
    main()
