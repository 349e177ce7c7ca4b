"""Checks at the edges, before any work: output paths, input files, JSON text.

Every command checks where it will write *before* it computes (a replay that runs for minutes must
not find out at the end that ``-o`` names a file), reads only regular files (a FIFO named
``x.parquet`` would block forever), and parses JSON with a depth limit (deeply nested JSON would
exhaust Python's stack). Each failure is one :class:`TracekitError` naming the path and the fix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from tracekit.errors import TracekitError


def _utf8(path: str, flag: str) -> None:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise TracekitError(f"{flag} {path.encode('utf-8', 'surrogateescape')!r}: the name is not valid UTF-8",
                            fix="choose a UTF-8 name (Parquet and Perfetto writers need one)") from None


def _writable_parent(path: Path, flag: str) -> None:
    """The nearest existing ancestor of ``path`` is a directory we may create entries in."""
    parent = path.parent if str(path.parent) else Path(".")
    while not parent.exists() and parent != parent.parent:
        if parent.is_symlink():
            break
        parent = parent.parent
    if not parent.is_dir():
        raise TracekitError(f"{parent} is a file, not a directory", where=f"{flag} {path}",
                            fix=f"choose {flag} in a directory, or remove the file {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if _read_only(parent) else "is not writable"
        raise TracekitError(f"directory {parent} {why}", where=f"{flag} {path}",
                            fix=f"choose {flag} in a directory you can write to")


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def output_file(path: str | os.PathLike[str], flag: str = "-o") -> Path:
    """Check that a file can be written at ``path`` (it is a regular file or absent, in a writable
    directory); return it as a Path. Raises :class:`TracekitError` otherwise."""
    text = os.fspath(path)
    if not text.strip():
        raise TracekitError(f"{flag} '': empty file name", fix=f"give {flag} a file name, e.g. {flag} out.pftrace")
    _utf8(text, flag)
    p = Path(text)
    if p.is_dir():
        raise TracekitError("is a directory", where=f"{flag} {p}", fix=f"give {flag} a file name inside it, e.g. "
                            f"{flag} {p / ('out' + (p.suffix or '.out'))}")
    if p.exists() and not p.is_file():
        raise TracekitError("exists and is not a regular file (a device, FIFO or socket)", where=f"{flag} {p}",
                            fix=f"give {flag} a new file name")
    _writable_parent(p, flag)
    return p


def output_dir(path: str | os.PathLike[str], flag: str = "-o") -> Path:
    """Check that ``path`` is a directory (or can be made one) we can write into."""
    text = os.fspath(path)
    if not text.strip():
        raise TracekitError(f"{flag} '': empty directory name", fix=f"give {flag} a directory, e.g. {flag} out/")
    _utf8(text, flag)
    p = Path(text)
    if p.exists() and not p.is_dir():
        raise TracekitError("exists and is not a directory", where=f"{flag} {p}",
                            fix=f"give {flag} a directory name (new or existing)")
    if p.is_dir():
        if not os.access(p, os.W_OK | os.X_OK):
            why = "is on a read-only file system" if _read_only(p) else "is not writable"
            raise TracekitError(f"directory {why}", where=f"{flag} {p}", fix=f"choose {flag} you can write to")
        return p
    _writable_parent(p, flag)
    return p


def input_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    """``path`` is an existing regular file (not a directory, FIFO or device); return it."""
    p = Path(path)
    if not p.exists():
        raise TracekitError("no such file", where=str(p), fix="check the path")
    if p.is_dir():
        raise TracekitError(f"is a directory, not a {what}", where=str(p), fix=f"pass a {what}")
    if not p.is_file():
        raise TracekitError("is not a regular file (a FIFO, device or socket)", where=str(p),
                            fix=f"pass a {what} on disk")
    return p


#: Deepest nesting accepted in any JSON tracekit reads (its own files nest a few levels).
MAX_JSON_DEPTH = 200


def json_depth(text: str | bytes) -> int:
    """Deepest bracket nesting of a JSON text, brackets inside strings skipped; vectorised (a few
    ms per MB), so it can run before every parse."""
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    if data.count(b"[") + data.count(b"{") <= MAX_JSON_DEPTH:
        return data.count(b"[") + data.count(b"{")  # an upper bound, and small: nothing to scan
    # escaped backslashes, then escaped quotes, cannot open or close a string
    a = np.frombuffer(data.replace(b"\\\\", b"__").replace(b'\\"', b"__"), np.uint8)
    outside = (np.cumsum(a == 0x22, dtype=np.int64) & 1) == 0
    step = (((a == 0x5B) | (a == 0x7B)) & outside).astype(np.int8) - (((a == 0x5D) | (a == 0x7D)) & outside)
    return int(np.cumsum(step, dtype=np.int64).max(initial=0))


def json_loads(text: str | bytes, *, where: str, fix: str, **kwargs: Any) -> Any:
    """``json.loads`` that refuses nesting deeper than :data:`MAX_JSON_DEPTH` with one clean error
    (the standard parser would raise RecursionError); other parse errors are the caller's."""
    if json_depth(text) > MAX_JSON_DEPTH:
        raise TracekitError(f"JSON nested more than {MAX_JSON_DEPTH} levels deep", where=where, fix=fix)
    try:
        return json.loads(text, **kwargs)
    except RecursionError:
        raise TracekitError("JSON nested too deeply", where=where, fix=fix) from None
