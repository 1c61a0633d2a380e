"""The ``lidnet`` command line: everything the viewer does, headless, for batch work and tests.

Subcommands import their science lazily, so ``lidnet --help`` is fast. A user error (bad file, bad option) prints
one clear line on stderr and exits with status 2; nothing is written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _cmd_simulate(args: argparse.Namespace) -> int:
    from napari_lidnet.sim.make_dataset import simulate_dataset

    def progress(i: int, n: int) -> None:
        print(f"\rsimulated {i}/{n} slices", end="", file=sys.stderr, flush=True)

    out = simulate_dataset(
        args.out, n=args.n, dose=args.dose, seed=args.seed, kind=args.kind, size=args.size, progress=progress
    )
    print(f"\nwrote {args.n} slice pairs at dose {args.dose:g} to {out}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="lidnet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("simulate", help="write a simulated low-dose/full-dose dataset with lesion boxes")
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    p.add_argument("--n", type=int, default=16, help="number of slices")
    p.add_argument("--dose", type=float, default=0.25, help="dose fraction in (0, 1]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--kind", choices=["abdomen", "chest", "mixed"], default="abdomen")
    p.add_argument("--size", type=int, default=512, help="image size in pixels")
    p.set_defaults(func=_cmd_simulate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lidnet`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"lidnet {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
