"""Byte-for-byte comparison of files with a short failure message.

``assert a == b`` on two files of megabytes makes pytest print a full diff of both, which in CI
(where pytest does not truncate) took most of half an hour for one 1.7 MB timeline. This says
where they first differ instead."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def assert_same_bytes(a: bytes | Path, b: bytes | Path, what: str = "") -> None:
    """``a`` and ``b`` (bytes, or files) are equal; else fails naming the sizes and the first byte
    that differs."""
    label = what or (f"{a} vs {b}" if isinstance(a, Path) else "bytes")
    x = a.read_bytes() if isinstance(a, Path) else a
    y = b.read_bytes() if isinstance(b, Path) else b
    if x == y:
        return
    n = min(len(x), len(y))
    differ = np.flatnonzero(np.frombuffer(x[:n], np.uint8) != np.frombuffer(y[:n], np.uint8))
    at = int(differ[0]) if differ.size else n
    raise AssertionError(f"{label}: {len(x)} and {len(y)} bytes, first difference at byte {at}: "
                         f"{x[at:at + 24]!r} vs {y[at:at + 24]!r}")
