"""Thin command-line front: argument parsing, dispatch to ``tracekit.commands.*``, error printing.

Each command lives in its own module under :mod:`tracekit.commands` with ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args) -> int``. Bad input raises :class:`TracekitError`, which is
printed as one line and exits with status 2; nothing else is caught, so bugs keep their traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from tracekit import __version__
from tracekit._jit import announce_compilation
from tracekit.errors import TracekitError

#: Subcommands in the order ``--help`` lists them; each is ``tracekit.commands.<name>``.
COMMANDS = ["demo", "synth", "validate", "info", "hw", "replay", "export", "import", "fuzz", "diff", "view"]


def _module_name(command: str) -> str:
    return "tracekit.commands." + command.replace("-", "_")


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error style of the rest of tracekit (exit status 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"tracekit: error: {self.prog}: {message} (see {self.prog} --help)\n")


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    announce_compilation(prefetch=args.command in ("demo", "replay", "export", "diff", "fuzz"))  # they write timelines
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except TracekitError as exc:
        print(f"tracekit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tracekit: interrupted; no output was written", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
