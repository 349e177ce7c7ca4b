#!/usr/bin/env python3
"""Convert the output of tools/calibrate_gpu.py (the 2026-11 CuPy script) into a microbench.v1 results file.

    python3 tools/microbench/convert_legacy.py docs/calibration/h200x2.json docs/calibration/h200x2_microbench.json

Per GPU: the copy rates by block count become hbm_copy_per_sm rows and the empty-kernel figure a
kernel_launch row of method cupy_python_back_to_back (launches issued from Python, so Python's call
overhead is in it; tracekit calibrate does not fit kernel_launch_ns from it). The two-GPU figures
(SM stores into the peer, copy engine, flag ping-pong) are kept as peer_store and peer_flag rows, which
tracekit calibrate does not fit. Nothing is measured here: the numbers are the legacy file's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

LEGACY_MBYTES = 256  # tools/calibrate_gpu.py --mbytes default, the run's setting


def convert(doc: dict, source: str) -> dict:
    """The microbench.v1 form of a calibrate_gpu.py result document."""
    nbytes = LEGACY_MBYTES << 20
    copy, launch = [], []
    for dev in doc["devices"]:
        for blocks, rate in sorted(dev["copy_gbyte_s_by_blocks"].items(), key=lambda kv: int(kv[0])):
            copy.append({"sms": int(blocks), "threads": 512, "bytes": nbytes, "time_ns": nbytes / rate,
                         "gbyte_s": rate, "device": dev["device"]})
        launch.append({"method": "cupy_python_back_to_back", "launches": 2000,
                       "ns_per_launch": dev["empty_kernel_launch_ns"], "repeat": dev["device"]})
    benchmarks = {"hbm_copy_per_sm": copy, "kernel_launch": launch}
    peer = doc.get("peer")
    if peer:
        benchmarks["peer_store"] = [{"sms": int(b), "gbyte_s": r}
                                    for b, r in sorted(peer["sm_store_to_peer_gbyte_s_by_blocks"].items(),
                                                       key=lambda kv: int(kv[0]))]
        benchmarks["peer_store"].append({"sms": 0, "gbyte_s": peer["copy_engine_peer_gbyte_s"], "engine": "copy"})
        benchmarks["peer_flag"] = [{"method": "pingpong_round_trip", "ns": peer["pingpong_round_trip_ns"]}]
    first = doc["devices"][0]
    meta = {"gpu": first["name"], "sms": first["sms"], "gpus": len(doc["devices"]), "driver": "not recorded",
            "cuda": "not recorded", "torch": None, "cupy": doc.get("cupy"), "host": doc.get("host"),
            "date": doc.get("date"),
            "command": "python3 tools/calibrate_gpu.py --out calibration_h200x2.json (device kind nvidia-h200-x2)",
            "converted_from": source,
            "converted_by": f"python3 tools/microbench/convert_legacy.py {source} OUT"}
    return {"meta": meta, "benchmarks": benchmarks}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("legacy", help="JSON written by tools/calibrate_gpu.py")
    ap.add_argument("out", help="microbench.v1 results file to write")
    args = ap.parse_args()
    try:
        doc = json.loads(Path(args.legacy).read_text())
        result = convert(doc, args.legacy)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.exit(f"convert_legacy: error: {args.legacy}: not a tools/calibrate_gpu.py result ({exc!r})")
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
