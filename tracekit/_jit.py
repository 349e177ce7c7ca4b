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


#: how the one-line notice of a first compilation begins (a notice, not an error: it can come before
#: a command's one error line)
COMPILE_NOTICE = "tracekit: compiling kernels for first use"

_state = {"registered": False, "announced": False, "prefetch": False}


def announce_compilation(prefetch: bool = True) -> None:
    """Print one line to stderr when the first kernel of this process starts compiling (kernels
    loaded from the cache print nothing); with ``prefetch``, also start :func:`prefetch_writer`
    in a second process then, so that the timeline writer's kernels compile on another core
    while this process compiles and runs the rest (it loads them from the cache when it gets
    there, or compiles them itself if they are not there yet). ``TRACEKIT_PREFETCH=0`` turns the
    second process off. Calling it again only updates ``prefetch``."""
    from numba.core import event

    _state["prefetch"] = prefetch
    if _state["registered"]:
        return

    class _Notice(event.Listener):
        def on_start(self, ev: event.Event) -> None:
            if not _state["announced"]:
                _state["announced"] = True
                where = os.environ.get("NUMBA_CACHE_DIR")
                print(f"{COMPILE_NOTICE} (once; cached in {where})", file=sys.stderr, flush=True)
                if _state["prefetch"] and os.environ.get("TRACEKIT_PREFETCH", "1") != "0":
                    _start_prefetch()

        def on_end(self, ev: event.Event) -> None:
            pass

    event.register("numba:compile", _Notice())
    _state["registered"] = True


def _start_prefetch() -> None:
    import subprocess

    try:
        subprocess.Popen([sys.executable, "-c", "from tracekit._jit import prefetch_writer; prefetch_writer()"],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    except OSError:  # no second process: this one compiles everything, as without prefetching
        pass


def prefetch_writer() -> None:
    """Compile (and so cache) the Perfetto writer's kernels by writing a small timeline, with
    counters, compressed and plain, into a temporary folder. At the lowest CPU priority: it may
    use an idle core, never slow the command it works for."""
    try:
        os.nice(19)
    except OSError:
        pass
    import polars as pl

    from tracekit.io.perfetto import write_trace

    ev = pl.DataFrame({"ts_ns": [0, 0, 5, 9], "dur_ns": [5, 0, 4, 0], "rank": [0, 0, 1, 1],
                       "resource": ["node0/rank0/sm/ch0", "node0/rank0/nic0/qp1", "node0/rank1/sm/ch0",
                                    "node0/rank1/nic0/qp1"],
                       "stage": ["pack", "cq_poll", "unpack", "cq_poll"], "name": ["pack", "cq_poll", "unpack", "x"],
                       "bytes": [7168, 0, 7168, 0], "msg_id": [1, -1, 1, -1], "flow_out": [1, None, None, None],
                       "flow_in": [None, None, 1, None]},
                      schema_overrides={"rank": pl.Int32, "flow_out": pl.Int64, "flow_in": pl.Int64})
    ct = pl.DataFrame({"ts_ns": [0, 3], "resource": ["node0/rank0/nic0/qp1"] * 2, "counter": ["wqe_occupancy"] * 2,
                       "value": [1.0, 0.5], "rank": [0, 0], "unit": ["entries"] * 2},
                      schema_overrides={"rank": pl.Int32})
    with tempfile.TemporaryDirectory(prefix="tracekit-prefetch-") as tmp:
        write_trace(Path(tmp) / "a.pftrace", ev, ct)
        write_trace(Path(tmp) / "b.pftrace", ev, ct, compress=False)
