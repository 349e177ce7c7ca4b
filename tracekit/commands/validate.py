"""`tracekit validate`: check tracekit files against their schema and semantics."""

from __future__ import annotations

import argparse
import sys

from tracekit.errors import TracekitError
from tracekit.io.validate import validate_file

HELP = "check tracekit files (routing, events, counters, traffic) against schema and semantics"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", metavar="FILE", help="files to check")


def run(args: argparse.Namespace) -> int:
    """Check every file; print ``ok: ...`` or one error line each; exit 2 if any failed."""
    failed = False
    for path in args.files:
        try:
            print(validate_file(path), flush=True)
        except TracekitError as exc:
            failed = True
            print(f"tracekit: error: {exc}", file=sys.stderr, flush=True)
    return 2 if failed else 0
