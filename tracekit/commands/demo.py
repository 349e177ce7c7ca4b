"""`tracekit demo` (placeholder until its issue lands)."""

from __future__ import annotations

import argparse

HELP = "demo (not yet implemented)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise NotImplementedError("tracekit demo")
