"""Write-then-rename helpers: a failed command leaves no partial output behind.

Temporary files and folders are hidden siblings of the output, named
``.<name>.tk<pid>.<random>.tmp`` so that a later run can tell whose they are: before writing, a
command removes such leftovers of processes that no longer run (a run killed with SIGKILL, or a
machine that lost power), if they are older than the current process. SIGTERM is turned into the
same clean-up path as Ctrl-C by :func:`tracekit.cli.main`.

A reused output directory: ``atomic_dir`` moves the new files in and then removes the files that
the writing command owns (``owns``: what it may write, e.g. :data:`REPLAY_OUTPUTS`) but did not
write this time, so that an old ``memops.parquet`` or ``timeline.pftrace`` never sits beside newer
tables. Every other file is left alone, among them the inputs of a replay written into the folder
that holds them (``routing.parquet``, ``traffic.parquet``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from tracekit.errors import TracekitError

#: What a replay writes into its output directory (``write_replay``); in a reused directory the ones
#: a run did not write are removed, so that every result file there comes from the same run.
REPLAY_OUTPUTS = frozenset({"events.parquet", "counters.parquet", "summary.json", "timeline.pftrace",
                            "memops.parquet"})
#: What ``tracekit fuzz`` writes for a counterexample.
COUNTEREXAMPLE_OUTPUTS = frozenset({"events.parquet", "memops.parquet", "counterexample.pftrace"})

_TMP = re.compile(r"^\..+\.tk(\d+)\.[^.]+\.tmp$")
_SHOWN = re.compile(r"^\.(.+)\.tk\d+\.[^.]+\.tmp$")
#: this process's start, from its own clock: leftovers younger than this may belong to a sibling run
_STARTED = time.time()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(directory: Path) -> list[Path]:
    """Remove tracekit temporaries in ``directory`` left by processes that are gone and older than
    this process's start; return what was removed."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in directory.iterdir():
            m = _TMP.match(entry.name)
            if not m or _alive(int(m.group(1))):
                continue
            with contextlib.suppress(OSError):
                if entry.lstat().st_mtime >= _STARTED:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
                removed.append(entry)
    return removed


def _prefix(final: Path) -> str:
    return f".{final.name}.tk{os.getpid()}."


def shown(path: Path) -> Path:
    """``path`` as the user named it: a temporary folder of ours replaced by the output it becomes."""
    return Path(*[m.group(1) if (m := _SHOWN.match(part)) else part for part in path.parts])


def _write_error(exc: OSError, final: Path) -> TracekitError:
    why = exc.strerror or str(exc).replace("Error writing bytes to file. Detail: ", "")
    return TracekitError(f"cannot write ({why})", where=str(shown(final)),
                         fix="free space on its file system, or choose another output path")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.
    An OSError while writing (disk full, file too large) becomes one :class:`TracekitError`."""
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(final.parent)
        fd, tmp = tempfile.mkstemp(prefix=_prefix(final), suffix=".tmp", dir=final.parent)
    except OSError as exc:
        raise _write_error(exc, final) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; outputs get the usual permissions
        yield tmp_path
        os.replace(tmp_path, final)
    except OSError as exc:
        raise _write_error(exc, final) from None
    finally:
        with contextlib.suppress(OSError):
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str], owns: frozenset[str] = frozenset()) -> Iterator[Path]:
    """Yield a temporary directory; on success move each file in it into ``path`` (created if
    needed) and remove the files named in ``owns`` (what this command may write) that this run did
    not write; other files are left alone. On failure nothing in ``path`` changes."""
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale(final.parent)
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(final), suffix=".tmp", dir=final.parent))
    except OSError as exc:
        raise _write_error(exc, final) from None
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        final.mkdir(parents=True, exist_ok=True)
        new = sorted(item.name for item in tmp.iterdir())
        for name in new:
            os.replace(tmp / name, final / name)
        for name in sorted(owns - set(new)):
            with contextlib.suppress(FileNotFoundError):
                (final / name).unlink()
    except OSError as exc:
        raise _write_error(exc, final) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
