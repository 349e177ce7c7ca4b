"""Thin command-line front: argument parsing, dispatch to ``tracekit.commands.*``, error printing.

Each command lives in its own module under :mod:`tracekit.commands` with ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Bad input raises :class:`TracekitError`, which is
printed as one line and exits with status 2; so are the environment's failures (OSError: a full disk, a
vanished file; MemoryError). Nothing else is caught, so bugs keep their traceback. SIGTERM is handled
like Ctrl-C: temporary outputs are removed and the exit status is 130.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import signal
import sys
import threading
from collections.abc import Iterator, Sequence

from tracekit import __version__
from tracekit._jit import announce_compilation
from tracekit.errors import TracekitError

#: Subcommands in the order ``--help`` lists them; each is ``tracekit.commands.<name>``.
COMMANDS = ["demo", "synth", "validate", "info", "hw", "replay", "export", "import", "fuzz", "diff", "view",
            "sweep", "calibrate"]


def _module_name(command: str) -> str:
    return "tracekit.commands." + command.replace("-", "_")


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error style of the rest of tracekit (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        command = self.prog.removeprefix("tracekit").strip()
        where = f"{command}: " if command else ""
        self.exit(2, f"tracekit: error: {where}{message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tracekit",
        description="Replay, visualise, diff and fuzz MoE dispatch/combine communication.",
    )
    parser.add_argument("--version", action="version", version=f"tracekit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMANDS:
        module = importlib.import_module(_module_name(name))
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


@functools.cache
def _parser() -> argparse.ArgumentParser:
    """The parser, built once per process (building it is ~12 ms: repeated in-process calls, such as
    the bad-input generator's 10,000, spent about half their time here); parse_args leaves it unchanged."""
    return build_parser()


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    announce_compilation(prefetch=args.command in ("demo", "replay", "export", "diff", "fuzz"))  # they write timelines
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        with _sigterm_as_interrupt():
            return int(args._run(args) or 0)
    except TracekitError as exc:
        print(f"tracekit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tracekit: interrupted; no output was written", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except MemoryError:
        print("tracekit: error: out of memory (the input is larger than this machine can hold; try a smaller "
              "input, or a machine with more memory)", file=sys.stderr)
        return 2
    except OSError as exc:  # the environment, not the input: a full disk, a vanished file
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"tracekit: error: {where}{exc.strerror or exc} (check the path, its permissions and free space)",
              file=sys.stderr)
        return 2


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM takes Ctrl-C's path (temporary outputs removed, exit 130); main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(_signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


if __name__ == "__main__":
    sys.exit(main())
