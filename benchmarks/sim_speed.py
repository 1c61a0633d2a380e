"""Speed of the simulation layer at 512 x 512: phantoms/s, low-dose simulation slices/s, vs skimage radon+iradon.

Usage: PYTHONPATH=. python benchmarks/sim_speed.py [--slices 4] [--skimage-slices 1] [--threads 2] [--random]
         [--montage docs/sim-randomized.png]
       PYTHONPATH=. python benchmarks/sim_speed.py --compare 48 [--threads 1] [--baseline-rev 671fb8b]
         [--out benchmarks/results/sim_speed.md]
Also prints the calibration check: liver noise SD (HU) at full dose for the default I0, and the speed of detailed,
randomised phantoms and of a random-domain dataset slice. ``--montage`` draws randomised head / chest / abdomen
slices (full and low dose, a smooth and a sharp kernel) to a PNG and exits.

``--compare N`` times ``simulate_low_dose`` exact vs ``fast=True`` at 25% dose in one process
on N slices of 512 x 512 (a real CT slice from pydicom's test files, the FOV not air-padded like real scans; a chest
phantom volume; 8 water-cylinder slices), with the issue-time code of ``--baseline-rev`` when given, checks that the
two paths' noise agrees (SD, radial and 2D NPS, local SD maps; independent draws) and writes a markdown report.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from scipy import ndimage
from skimage.transform import iradon, radon

from napari_lidnet.metrics.nps import angular_excess, nps_2d
from napari_lidnet.sim import lowdose, projector
from napari_lidnet.sim.phantom import LABELS, make_phantom


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def montage(path: str, size: int = 512) -> None:
    """Randomised head / chest / abdomen slices: full and low dose with a smooth and a sharp kernel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from napari_lidnet.sim.scanner import sample_scanner

    rows = [("head", 11, (40, 100)), ("chest", 12, (-500, 1500)), ("abdomen", 13, (50, 400))]
    fig, axes = plt.subplots(3, 4, figsize=(16, 12.4))
    for r, (kind, seed, (level, width)) in enumerate(rows):
        p = make_phantom(seed, kind=kind, size=size, randomize=True, contrast_enhanced=None, n_lesions=2)
        while kind == "head" and (p.labels == LABELS["wm"]).mean() < 0.08:  # show the ventricle level
            seed += 100
            p = make_phantom(seed, kind=kind, size=size, randomize=True, contrast_enhanced=None, n_lesions=2)
        sc = sample_scanner(np.random.default_rng(seed), size=size)
        for c, kernel in enumerate(("smooth", "bone")):
            kw = {**sc.kwargs(), "filter_name": kernel}
            full, low = lowdose.simulate_pair(p.hu, spacing_mm=p.spacing_mm, seed=seed, **kw)
            for k, (img, what) in enumerate(((full, "full dose"), (low, f"{sc.dose:.0%} dose"))):
                ax = axes[r, 2 * c + k]
                ax.imshow(img, cmap="gray", vmin=level - width / 2, vmax=level + width / 2)
                for x1, y1, x2, y2 in p.boxes:
                    ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="tab:red", lw=0.8))
                ax.set_title(f"{kind}, {kernel} kernel, {what}\n{p.spacing_mm * size:.0f} mm FOV, {sc.n_views} views, "
                             f"{sc.thickness_mm:.1f} mm", fontsize=9)  # fmt: skip
                ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    print(f"wrote {path}")


def _random_speed(size: int, n: int) -> None:
    """Detailed randomised phantoms and random-domain pairs (each slice its own protocol)."""
    from napari_lidnet.sim.scanner import sample_scanner

    for kind in ("head", "chest", "abdomen"):
        _, dt = _timed(lambda k=kind: [make_phantom(s, kind=k, size=size, randomize=True) for s in range(n)])
        print(f"randomised {kind} phantom: {dt / n:.3f} s/slice")
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for s in range(n):
        p = make_phantom(s, kind="chest", size=size, randomize=True)
        lowdose.simulate_pair(p.hu, spacing_mm=p.spacing_mm, seed=s, **sample_scanner(rng, size=size).kwargs())
    print(f"random-domain slice (phantom + pair, own protocol): {(time.perf_counter() - t0) / n:.2f} s/slice")


def _skimage(stack: np.ndarray, ks: int, n_angles: int, ours: float) -> None:
    theta = np.arange(n_angles) * 180.0 / n_angles
    t0 = time.perf_counter()
    for k in range(ks):
        mu_np = lowdose.MU_WATER * np.clip(1 + stack[k % len(stack)] / 1000.0, 0, None)
        sk = radon(mu_np, theta, circle=True)
        iradon(sk, theta, filter_name="shepp-logan", circle=True)
    t_sk = (time.perf_counter() - t0) / ks
    print(f"skimage radon + iradon (circle, same views): {t_sk:.2f} s/slice; ours forward + FBP {ours:.2f} s/slice "
          f"-> {t_sk / ours:.1f}x faster than skimage")  # fmt: skip


# ------------------------------------------------------------------------------------- exact vs fast (--compare)
DOSE = 0.25


def baseline_simulator(rev: str):
    """``simulate_low_dose`` of commit ``rev`` (its projector and lowdose modules via ``git show``), importable
    side by side with today's for a same-process reference."""
    import importlib.util
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    folder = Path(tempfile.mkdtemp(prefix="sim_baseline_"))
    for name in ("projector", "lowdose"):
        src = subprocess.run(["git", "show", f"{rev}:napari_lidnet/sim/{name}.py"], cwd=root, check=True,
                             capture_output=True, text=True).stdout  # fmt: skip
        src = src.replace("from napari_lidnet.sim import projector", "import baseline_projector as projector")
        (folder / f"baseline_{name}.py").write_text(src)
        spec = importlib.util.spec_from_file_location(f"baseline_{name}", folder / f"baseline_{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[f"baseline_{name}"] = module
        spec.loader.exec_module(module)
    return sys.modules["baseline_lowdose"].simulate_low_dose


def _timed_cpu(fn, *args, **kwargs):
    """(result, wall s, CPU s of this process: all threads)."""
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - w0, time.process_time() - c0


def _real_slice() -> tuple[np.ndarray, float, str] | None:
    """pydicom's 512 x 512 test CT slice (JPEG 2000), padding below -1024 HU set to air; None if not readable."""
    try:
        from pydicom.data import get_testdata_file

        from napari_lidnet.io.open_ct import open_ct

        vol = open_ct(get_testdata_file("693_J2KI.dcm"))[0]
    except Exception as exc:  # noqa: BLE001 - optional decoder (pylibjpeg) or test data missing
        print(f"real slice skipped: {type(exc).__name__}: {exc}")
        return None
    hu = np.maximum(np.asarray(vol.hu, np.float32).reshape(vol.hu.shape[-2:]), -1024.0)
    return hu, float(vol.spacing[-1]), "693_J2KI.dcm (pydicom test data)"


def _water_stack(n: int, size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - size // 2
    return np.stack([np.where(xx**2 + yy**2 <= (0.42 * size) ** 2, 0.0, -1000.0).astype(np.float32)] * n)


def compare_cases(n: int, size: int) -> list[dict]:
    """The inputs: a real slice repeated n times (one noise draw each), a chest phantom volume, water cylinders."""
    from napari_lidnet.sim.phantom import make_phantom_volume

    cases = []
    real = _real_slice() if size == 512 else None
    if real is not None:
        hu, px, name = real
        cases.append(dict(name=f"real slice {name} x {n}", stack=np.stack([hu] * n), px=px, repeated=True))
    vol = make_phantom_volume(0, n, kind="chest", size=size, n_lesions=0)
    lung = ndimage.binary_erosion(vol.labels == LABELS["lung"], iterations=3, structure=np.ones((1, 3, 3)))
    cases.append(dict(name=f"chest phantom volume, {n} slices", stack=vol.hu, px=float(vol.spacing_mm[-1]),
                      repeated=False, region=("lung", lung)))  # fmt: skip
    k = min(n, 8)
    cases.append(dict(name=f"water cylinder (300 mm in 360 mm FOV) x {k}", stack=_water_stack(k, size),
                      px=360.0 / size, repeated=True))  # fmt: skip
    return cases


def time_paths(case: dict, baseline, device: str = "cpu") -> dict:
    """Wall and CPU seconds per slice of exact, fast (and baseline) on the case's stack, 25% dose, batches of 4
    (the widget's CPU chunk); exact and fast with different seeds (independent noise). Keeps the noise images."""
    stack, px, n = case["stack"], case["px"], len(case["stack"])
    dev = {"device": device, "batch_size": 4 if device == "cpu" else 16}  # the widget's chunks
    runs = [("exact", lowdose.simulate_low_dose, dev, 1), ("fast", lowdose.simulate_low_dose, {**dev, "fast": True}, 2)]
    if baseline is not None:
        runs.insert(0, ("baseline", baseline, dev, 1))
    out = {}
    for name, fn, kw, seed in runs:
        fn(stack[:1], DOSE, px, seed=0, **kw)  # warm-up: geometry caches
        img, wall, cpu = _timed_cpu(fn, stack, DOSE, px, seed=seed, **kw)
        out[name] = {"wall": wall / n, "cpu": cpu / n}
        if name != "baseline":
            case[f"noise_{name}"] = img - stack
        print(f"  {name}: {wall / n:.2f} s wall, {cpu / n:.2f} CPU s per slice", flush=True)
    return out


def _bands(noise: np.ndarray, px: float, n_bands: int = 8) -> tuple[np.ndarray, float]:
    """Radial NPS (64 px sub-ROIs, mean over slices) summed in bands to Nyquist, and its mean frequency (1/mm)."""
    curves = [nps_2d(sl, px, 64) for sl in noise]
    f, nps = curves[0].f, np.mean([c.nps for c in curves], axis=0)
    return np.array([b.sum() for b in np.array_split(nps[1:], n_bands)]), float((f * nps).sum() / nps.sum())


def _block_sd(noise: np.ndarray, block: int = 32) -> np.ndarray:
    n, size = noise.shape[0], noise.shape[-1] // block * block
    return np.sqrt((noise[:, :size, :size] ** 2).reshape(n, size // block, block, -1, block).mean((0, 2, 4)))


def agreement(case: dict) -> dict:
    """Fast vs exact noise (independent draws) of one case: SD, bias and radial NPS in the central square (side
    size/4), the lung for the phantom volume; for repeated slices, 32 px local SD maps (fast vs exact on halves of
    the slices, next to exact vs exact) and the 2D NPS spokes check."""
    ex, fa, px = case["noise_exact"], case["noise_fast"], case["px"]
    size = ex.shape[-1]
    q = np.s_[:, size // 2 - size // 8 : size // 2 + size // 8, size // 2 - size // 8 : size // 2 + size // 8]
    (b_ex, f_ex), (b_fa, f_fa) = _bands(ex[q], px), _bands(fa[q], px)
    res = {"sd": (float(ex[q].std()), float(fa[q].std())), "mean": (float(ex[q].mean()), float(fa[q].mean())),
           "nps_dev": float(np.abs(b_fa / b_ex - 1).max()), "f_av": (f_ex, f_fa)}  # fmt: skip
    if "region" in case:
        name, mask = case["region"]
        res["region"] = (name, float(ex[mask].std()), float(fa[mask].std()), float(fa[mask].mean()))
    if case["repeated"]:
        h = len(ex) // 2
        ref = _block_sd(ex[h:])
        ok = ref > 0.2 * ref.max()
        pct = lambda sd: tuple(round(float(v), 3) for v in np.percentile(sd[ok] / ref[ok], [5, 50, 95]))  # noqa: E731
        res["local_fast"] = pct(_block_sd(fa[:h]))
        res["local_exact"] = pct(_block_sd(ex[:h]))
        res["spokes"] = (angular_excess(ex, size // 2), angular_excess(fa, size // 2))
        res["spokes_all"] = (angular_excess(ex, size), angular_excess(fa, size))
    return res


def spokes_control(size: int, n: int = 8, device: str = "cpu") -> float:
    """``angular_excess`` of the fast path with 4 views binned into 1 (too few views) on n water slices: what the
    2D NPS check shows when it should fail."""
    stack, kept = _water_stack(n, size), lowdose.FAST_VIEW_BIN
    try:
        lowdose.FAST_VIEW_BIN = 4
        noise = lowdose.simulate_low_dose(stack, DOSE, 360.0 / size, seed=3, fast=True, device=device) - stack
    finally:
        lowdose.FAST_VIEW_BIN = kept
    return angular_excess(noise, size // 2)


def _speed_rows(name: str, t: dict) -> list[str]:
    rows = []
    for path in [k for k in ("baseline", "exact", "fast") if k in t]:
        vs = [f"{t[r]['cpu'] / t[path]['cpu']:.2f}x" if r in t and r != path else "" for r in ("baseline", "exact")]
        rows.append(f"| {name} | {path} | {t[path]['wall']:.2f} | {t[path]['cpu']:.2f} | {vs[0]} | {vs[1]} |")
    return rows


def _agreement_rows(name: str, a: dict) -> list[str]:
    sd, mean, f_av = a["sd"], a["mean"], a["f_av"]
    row = (f"| {name} | {sd[0]:.2f} / {sd[1]:.2f} ({sd[1] / sd[0] - 1:+.1%}) | {mean[0]:+.2f} / {mean[1]:+.2f} | "
           f"{a['nps_dev']:.1%} | {f_av[0]:.3f} / {f_av[1]:.3f} |")  # fmt: skip
    if "local_fast" in a:
        sp, sa = a["spokes"], a["spokes_all"]
        row += f" {a['local_fast']} vs {a['local_exact']} | {sp[0]:+.4f} / {sp[1]:+.4f} | {sa[0]:+.4f} / {sa[1]:+.4f} |"
    else:
        row += " - | - | - |"
    rows = [row]
    if "region" in a:
        r = a["region"]
        sd = f"{r[1]:.2f} / {r[2]:.2f} ({r[2] / r[1] - 1:+.1%})"
        rows.append(f"| {name}, {r[0]} | {sd} | - / {r[3]:+.2f} | | | | | |")
    return rows


def write_report(path: str, meta: dict, results: list[tuple[str, dict, dict]]) -> str:
    """The markdown report of ``run_compare``."""
    lines = [
        "# Low-dose simulation: exact vs fast noise insertion (`simulate_low_dose`)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; {meta['machine']}; device {meta['device']}; torch threads {meta['threads']}; "
        "load average at start "
        f"{meta['load'][0]:.1f}, at end {meta['load'][1]:.1f} (a shared machine: wall times vary, CPU times less).",
        "",
        f"Dose {DOSE:.0%}, {meta['size']} x {meta['size']} slices, default protocol "
        f"({projector.default_n_angles(meta['size'])} views, Shepp-Logan), batches of 4 slices on the CPU and 16 on "
        "a GPU (the widget's chunks). CPU s = process CPU time per slice (all threads). "
        "`baseline` is `simulate_low_dose` of commit " + (f"`{meta['rev']}`" if meta["rev"] else "(not run)") +
        " (the code the issue measured), loaded from git in the same process.",
        "",
        "| input | path | wall s/slice | CPU s/slice | vs baseline (CPU) | vs exact (CPU) |",
        "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for name, t, _ in results:
        lines += _speed_rows(name, t)
    lines += [
        "",
        "Noise agreement, fast vs exact path (independent draws, seeds 2 and 1). SD, mean and radial NPS in the "
        "central square of side 128 px (the noise image is the output minus the input, so anatomy does not enter); "
        "NPS: largest deviation of the 8 frequency bands (64 px sub-ROIs, 0 to Nyquist) and the NPS-weighted mean "
        "frequency. Local SD: 5/50/95th percentiles over 32 px blocks of fast (first half of the slices) / exact "
        "(second half), next to exact (first half) / exact (second half), the sampling scatter. 2D NPS spokes: "
        "excess angular variance of the 0.25-0.45 cycles/px 2D NPS of the central half of the image and of the whole "
        "image (exact / fast; the spokes of too few views raise it: binning 4 views into 1 instead of 2 gives "
        f"{meta['control']:+.4f} over the central half of the water slices). Fast reconstructs half the views: the "
        "2D NPS resolves their spokes over regions wider than ~70% of the image (n_views / 2 directions, each with "
        "1/(n_views / 2) of the noise variance), not over smaller ones.",
        "",
        "| input | noise SD exact / fast (HU) | mean exact / fast (HU) | NPS max band dev | NPS mean f (1/mm) "
        "| local SD fast/exact vs exact/exact (p5, p50, p95) | 2D NPS spokes, central half | whole image |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, _, a in results:
        lines += _agreement_rows(name, a)
    text = "\n".join(lines) + "\n"
    with open(path, "w") as fh:
        fh.write(text)
    return text


def run_compare(n: int, size: int, threads: int, rev: str | None, out: str, device: str = "cpu") -> None:
    """Time exact vs fast ``simulate_low_dose`` (and ``rev``'s) and check their noise agreement; write ``out``."""
    import datetime
    import os
    import platform
    import sys

    baseline = baseline_simulator(rev) if rev else None
    load0 = os.getloadavg()[1]
    results = []
    for case in compare_cases(n, size):
        print(case["name"], flush=True)
        timing = time_paths(case, baseline, device)
        results.append((case["name"], timing, agreement(case)))
        print(f"  agreement: {results[-1][2]}", flush=True)
    control = spokes_control(size, device=device)
    meta = dict(command="PYTHONPATH=. python benchmarks/sim_speed.py " + " ".join(sys.argv[1:]), threads=threads,
                control=control,
                device=device + (f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else ""),
                date=datetime.datetime.now().isoformat(timespec="seconds"), size=size, rev=rev,
                machine=f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}",
                load=(load0, os.getloadavg()[1]))  # fmt: skip
    print(write_report(out, meta, results))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=4)
    ap.add_argument("--skimage-slices", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--random", action="store_true", help="also time randomised phantoms and random-domain pairs")
    ap.add_argument("--montage", default=None, help="write the randomised-slice montage PNG here and exit")
    ap.add_argument("--compare", type=int, default=0, metavar="N", help="exact vs fast noise insertion on N slices")
    ap.add_argument("--baseline-rev", default=None, help="with --compare: also time this commit's simulate_low_dose")
    ap.add_argument("--out", default="benchmarks/results/sim_speed.md", help="with --compare: the markdown report")
    ap.add_argument("--device", default="cpu", help="with --compare: cpu or cuda")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.montage:
        montage(args.montage, args.size)
        return
    if args.compare:
        run_compare(args.compare, args.size, args.threads, args.baseline_rev, args.out, args.device)
        return
    if args.random:
        _random_speed(args.size, args.slices)
    size, n = args.size, args.slices
    n_angles = projector.default_n_angles(size)
    print(f"size {size}, {n_angles} views, {projector.detector_bins(size)} detector bins, {args.threads} CPU threads")

    phantoms, dt = _timed(lambda: [make_phantom(s, size=size) for s in range(n)])
    print(f"phantom generation: {n / dt:.2f} slices/s ({dt / n:.3f} s/slice)")
    stack = np.stack([p.hu for p in phantoms])
    px = phantoms[0].spacing_mm  # same FOV for the batch (the physics does not care)

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        simulate_pair_warm = lowdose.simulate_pair(stack[:1], 0.25, px, seed=0, device=dev)  # warm-up, caches
        del simulate_pair_warm
        if dev == "cuda":
            torch.cuda.synchronize()
        _, dt = _timed(lowdose.simulate_pair, stack, 0.25, px, seed=0, device=dev)
        if dev == "cuda":
            torch.cuda.synchronize()
        print(f"[{dev}] simulate_pair (1 projection + 2 noisy FBPs): {n / dt:.2f} slices/s ({dt / n:.2f} s/slice)")
        _, dt2 = _timed(lowdose.simulate_low_dose, stack, 0.25, px, seed=0, device=dev)
        if dev == "cuda":
            torch.cuda.synchronize()
        print(f"[{dev}] simulate_low_dose (noise insertion): {n / dt2:.2f} slices/s ({dt2 / n:.2f} s/slice)")
        mu = lowdose.hu_to_mu(torch.from_numpy(stack[:1]).to(dev))
        _, tf = _timed(projector.forward_project, mu, px, circle=True)
        sino = projector.forward_project(mu, px, circle=True)
        _, tb = _timed(projector.fbp, sino, size, px, circle=True)
        if dev == "cuda":
            torch.cuda.synchronize()
        print(f"[{dev}] forward projection {tf:.2f} s, FBP {tb:.2f} s per slice")
        if dev == "cpu":
            ours = tf + tb

    _skimage(stack, args.skimage_slices, n_angles, ours)

    # calibration: liver noise SD at dose 1 from two independent full-dose realisations
    for seed, pix in ((0, 0.6), (1, 0.9)):
        p = make_phantom(seed, size=size, pixel_mm=pix, n_lesions=0)
        a, b = lowdose.simulate_pair(p.hu, 1.0, p.spacing_mm, seed=1, device=devices[-1])
        liver = ndimage.binary_erosion(p.labels == LABELS["liver"], iterations=5)
        sd = float(np.std((a - b)[liver]) / np.sqrt(2))
        print(f"calibration: pixel {pix} mm, I0 {lowdose.I0_DEFAULT:.2g}: liver noise SD {sd:.1f} HU at full dose, "
              f"{sd / np.sqrt(0.25):.1f} HU expected at 25% dose")  # fmt: skip


if __name__ == "__main__":
    main()
