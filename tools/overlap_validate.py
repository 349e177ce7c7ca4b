"""Validation row of docs/overlap.md: DeepSeek's DualPipe training profile vs its dualpipe replay.

Usage: PYTHONPATH=. python tools/overlap_validate.py [TRACE.json]
(default ../shared/data/deepseek_profile_train.json). Prints the capture's and the replay's exposed
communication and step time as JSON; validation/rows/overlap.toml records them.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tracekit.hardware import load_profile
from tracekit.io.kineto import import_kineto
from tracekit.model.config import ReplayConfig
from tracekit.overlap_capture import capture_step, replay_capture_step
from tracekit.workload.synth import preset, synth

TRACE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "deepseek_profile_train.json"
#: The profile's workload (profile-data README: EP64, TP1, 4K sequence) in DeepEP's test setting.
WORKLOAD = dict(ep=64, tokens=4096, hidden=7168, topk=8, experts=256, max_nodes=4, dispatch_dtype="fp8",
                combine_dtype="bf16", seed=0)


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else str(TRACE)
    t = time.process_time()
    cap = capture_step(import_kineto([path]).events, rank=0)
    out = replay_capture_step(cap, synth(preset("prefill", **WORKLOAD)), load_profile("h800-ib"),
                              ReplayConfig(schedule="dualpipe", num_sms=20))
    out["cpu_s"] = round(time.process_time() - t, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
