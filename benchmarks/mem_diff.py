"""Peak memory of each stage of ``tracekit diff`` on two replay output directories (goal for the
README tour's EP64 prefill pair: under 1.5 GB for the whole command).

    PYTHONPATH=. python benchmarks/mem_diff.py OUT_DIR BF16_DIR

Runs the stages the command runs, one side at a time, and prints for each the resident memory
before it, its peak (Linux ``VmHWM``, reset before each stage through ``/proc/self/clear_refs``)
and its CPU seconds. The whole command's peak is measured with ``/usr/bin/time -v tracekit diff
OUT_DIR BF16_DIR --format json -o d.json`` (Maximum resident set size); docs/diff.md records both.
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tracekit  # noqa: E402,F401  (its allocator settings before pyarrow loads, as the command has them)
import pyarrow as pa  # noqa: E402

from tracekit.analysis import profile as P  # noqa: E402
from tracekit.analysis.match_keys import op_keys  # noqa: E402
from tracekit.analysis.diff import diff_profiles  # noqa: E402
from tracekit.analysis.matching import operation_names  # noqa: E402
from tracekit.io.diff_input import load_side  # noqa: E402
from tracekit.commands.diff import release_freed_memory  # noqa: E402


def _gb() -> tuple[float, float]:
    with open("/proc/self/status") as f:
        d = {ln.split(":")[0]: int(ln.split()[1]) for ln in f if ln.startswith(("VmRSS", "VmHWM"))}
    return d["VmRSS"] / 1e6, d["VmHWM"] / 1e6


def stage(name: str, f):  # type: ignore[no-untyped-def]
    gc.collect()
    with open("/proc/self/clear_refs", "w") as c:
        c.write("5")  # resets the peak (VmHWM) to the current size
    before, _ = _gb()
    t = time.process_time()
    out = f()
    after, peak = _gb()
    print(f"{name:14s} before {before:5.2f} GB  peak {peak:5.2f} GB (+{peak - before:4.2f})  after {after:5.2f} GB  "
          f"cpu {time.process_time() - t:5.1f} s", flush=True)
    return out


def main(before_dir: str, after_dir: str) -> None:
    tr, _ = stage("load", lambda: load_side(before_dir, lean=True))
    pa.default_memory_pool().release_unused()
    ev = stage("check+names", lambda: operation_names(P._check(tr.events, "x"), None))
    phases = sorted(ev["phase"].filter(ev["kind"].is_in(P.COMM_KINDS)).unique().to_list(), key=P.phase_order)
    phases = [p for p in phases if p not in ("", "compute")]
    stage("exposure", lambda: P._exposure(ev))
    stage("critical path", lambda: P._critical(ev))
    stage("traffic", lambda: P._traffic(ev, tr.traffic, phases))
    stage("matching keys", lambda: op_keys(ev))
    pb = stage("profile", lambda: P.profile(tr))
    stage("tail causes", lambda: [P._tail_cause(pb, p, ev) for p in pb.phases])
    del ev, tr
    release_freed_memory()  # as the command does between the sides
    tr2, _ = stage("load 2", lambda: load_side(after_dir, lean=True))
    pa_ = stage("profile 2", lambda: P.profile(tr2))
    del tr2
    stage("diff", lambda: diff_profiles(pb, pa_, seed=0))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
