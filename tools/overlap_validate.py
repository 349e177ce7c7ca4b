"""Validation row of docs/overlap.md: DeepSeek's DualPipe training profile vs its kernel-level replay.

Usage: PYTHONPATH=. python tools/overlap_validate.py [--trace OUT.pftrace]
(--trace: the captured and the replayed kernels side by side as a Perfetto timeline.)
Replays the rows of validation/rows/overlap.toml (their workload: the capture under ../shared/data,
the synthetic traffic, the hardware and knobs) with tracekit.overlap_capture.replay_capture_kernels and
prints the capture's and the replay's exposed communication and step time as JSON, plus where the
error comes from: the replay again with the captured times of the dispatch and combine kernels of
each layer pair in turn (all captured: the replay is the capture), and the earlier block-level replay
(compute blocks as spans, every rank alike, ``dualpipe`` schedule).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracekit.io.validation_rows import ROOT, step_replay  # noqa: E402
from tracekit.io.perfetto import write_trace_groups  # noqa: E402
from tracekit.overlap_capture import kernel_events, kernel_exposure, replay_kernels  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trace", help="write the captured and replayed kernels to this .pftrace")
    args = ap.parse_args()
    t = time.process_time()
    doc = tomllib.loads((ROOT / "validation" / "rows" / "overlap.toml").read_text())
    d = doc["defaults"]
    out = step_replay(d["workload"], d["hardware"], d["knobs"])
    k = out.pop("kernels")  # the replayed kernels
    captured = step_replay_capture(d["workload"])
    predicted = {int(i): int(e - s) for i, s, e in k.filter(k["stage"].is_in(["dispatch", "combine"]))
                 .select("id", "start", "end").iter_rows()}
    by_pair = out["exposed_ns_with_captured_kernels_of_pair"] = {}
    for pair in sorted(set(captured["pair"].drop_nulls().to_list())):
        keep = set(captured.filter((captured["pair"] == pair) & captured["op"].is_not_null())["id"].to_list())
        dur = {i: v for i, v in predicted.items() if i not in keep}
        by_pair[pair] = kernel_exposure(replay_kernels(captured, dur))["exposed_ns"]
    out["exposed_ns_all_captured"] = kernel_exposure(replay_kernels(captured))["exposed_ns"]
    out["cpu_s"] = round(time.process_time() - t, 1)
    if args.trace:
        write_trace_groups(args.trace, {"capture": (kernel_events(captured), None), "replay": (kernel_events(k), None)},
                           title="DeepSeek training profile: captured vs replayed kernels (rank 0)")
    print(json.dumps(out, indent=1))


def step_replay_capture(workload):
    """The captured kernel table of the row's workload."""
    from tracekit.io.kineto import import_kineto
    from tracekit.overlap_capture import capture_kernels

    return capture_kernels(import_kineto([ROOT / workload["capture"]]).events, int(workload.get("rank", 0)))


if __name__ == "__main__":
    main()
