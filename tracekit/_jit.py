"""Where compiled kernels are cached, and a notice while they compile the first time.

numba caches a kernel next to its source (``__pycache__``) unless ``NUMBA_CACHE_DIR`` says
otherwise; a ``pip install`` of the same version again (e.g. ``pip install '.[test]'`` after
``pip install .``) replaces those folders and throws the cache away. tracekit sets
``NUMBA_CACHE_DIR`` to a per-user folder keyed by its version when the user has not set one
(numba checks each cached kernel against a hash of its source file, so a reinstall of the same
code finds it again, and changed code is compiled anew).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def cache_dir(version: str) -> Path:
    """``$XDG_CACHE_HOME/tracekit/numba/<version>`` (``~/.cache`` without XDG_CACHE_HOME)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    if not os.path.isabs(base):
        base = tempfile.gettempdir()
    return Path(base) / "tracekit" / "numba" / version


def configure_cache(version: str) -> None:
    """Point numba's cache at :func:`cache_dir` unless ``NUMBA_CACHE_DIR`` is set (before numba
    reads it, or, if numba is already imported, in its config)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return
    path = str(cache_dir(version))
    os.environ["NUMBA_CACHE_DIR"] = path
    numba = sys.modules.get("numba")
    if numba is not None:
        numba.config.CACHE_DIR = path


_announced = False


def announce_compilation() -> None:
    """Print one line to stderr when the first kernel of this process starts compiling (kernels
    loaded from the cache print nothing)."""
    from numba.core import event

    class _Notice(event.Listener):
        def on_start(self, ev: event.Event) -> None:
            global _announced
            if not _announced:
                _announced = True
                print(f"tracekit: compiling kernels for first use (once; cached in {os.environ.get('NUMBA_CACHE_DIR')})",
                      file=sys.stderr, flush=True)

        def on_end(self, ev: event.Event) -> None:
            pass

    if not _announced:
        event.register("numba:compile", _Notice())
