"""The ``lidnet`` command line: everything the viewer does, headless, for batch work and tests.

Subcommands import their science lazily, so ``lidnet --help`` is fast. A user error (bad file, bad option, an output
that exists, a folder that cannot be written) prints one line ``lidnet CMD: error: ...`` on stderr and exits with
status 2; nothing is written. Warnings print as one line ``lidnet CMD: warning: ...`` each.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from .images import add_denoise, add_detect, add_evaluate
from .training import add_adapt, add_calibrate, add_index, add_simulate, add_train


def _command_line(argv: Sequence[str]) -> str:
    """An invocation as a shell command (``lidnet ...``), for the cards."""
    import shlex

    return " ".join(["lidnet", *(shlex.quote(str(a)) for a in argv)])


class _Help(argparse.HelpFormatter):
    """Help that shows each option's default (when it has one to show)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.option_strings and _shows(action.default) and "default" not in text:  # not said twice
            text += " (default: %(default)s)"
        return text


def _shows(default: Any) -> bool:
    """A default worth printing: not None, not a flag's False, not suppressed."""
    return not any(default is v for v in (None, False, argparse.SUPPRESS))


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, like every other user error, and whose help shows each
    option's default."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        """As argparse's; an option without help text still shows its default."""
        if kwargs.get("help") is None and args and str(args[0]).startswith("-") and _shows(kwargs.get("default")):
            kwargs["help"] = "default: %(default)s"
        return super().add_argument(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    from napari_lidnet import __version__

    parser = _Parser(prog="lidnet", description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--version", action="version", version=f"lidnet (napari-lidnet) {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    adders = (add_simulate, add_index, add_train, add_denoise, add_detect, add_evaluate, add_adapt)
    for add in (*adders, add_calibrate):
        add(sub)
    return parser


def error_message(exc: BaseException) -> str:
    """One line for a user-caused error (``io.checks.error_text``)."""
    from napari_lidnet.io.checks import error_text

    return error_text(exc)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler, ``timeout``, ``kill``) stops a command as Ctrl-C does: outputs whole or not at all."""


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """While inside (main thread, SIGTERM at its default), SIGTERM raises :class:`Terminated`, so a command's
    clean-up runs (a series half written is removed) instead of the process dying mid-write."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        raise Terminated

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lidnet`` console script."""
    args = build_parser().parse_args(argv)
    args.command_line = _command_line(sys.argv[1:] if argv is None else argv)
    prefix = f"lidnet {args.command}"

    def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
        from napari_lidnet.io.checks import one_line

        print(f"{prefix}: warning: {one_line(str(message))}", file=sys.stderr)

    with warnings.catch_warnings(), _sigterm_interrupts():
        warnings.showwarning = one_line_warning
        try:
            return int(args.func(args) or 0)
        except (ValueError, OSError) as exc:
            print(f"{prefix}: error: {error_message(exc)}", file=sys.stderr)
            return 2
        except Terminated:
            print(f"\n{prefix}: terminated (SIGTERM); {_left_after_stop(args.command)}", file=sys.stderr)
            return 143
        except KeyboardInterrupt:  # Ctrl-C: one line, not a traceback
            print(f"\n{prefix}: interrupted; {_left_after_stop(args.command)}", file=sys.stderr)
            return 130


def _left_after_stop(command: str) -> str:
    """What a stopped command leaves: outputs are written whole or not at all, but a simulated dataset is written
    in place, marked unfinished (it said "nothing half-written is left" over 19 of 30 slices)."""
    if command == "simulate":
        return "the dataset folder is marked unfinished (nothing reads it): the same command writes it again"
    return "nothing half-written is left"


if __name__ == "__main__":
    sys.exit(main())
