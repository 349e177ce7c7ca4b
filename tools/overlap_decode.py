"""The decode TPOT table of docs/overlap.md: EP32, 128 tokens per rank, a DeepSeek-V3-like layer.

Usage: PYTHONPATH=. python tools/overlap_decode.py [--layers 4] [--sweep 8,12,...]
       PYTHONPATH=. python tools/overlap_decode.py --prefill-sweep
Prints, per schedule, the TPOT and its causes (critical path by part, exposed communication, SM-time
split, fused savings), then a --num-sms sweep of two_microbatch. With --prefill-sweep: the same
sweep for a prefill layer (EP16, 4096 tokens per rank, normal kernels). Markdown, for the docs.
"""

from __future__ import annotations

import argparse
import time

from tracekit.hardware import load_profile
from tracekit.model.compute import ModelDesc
from tracekit.model.config import ReplayConfig
from tracekit.replay import replay
from tracekit.workload.synth import preset, synth


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hardware", default="h800-ib")
    ap.add_argument("--dtype", default="fp8")
    ap.add_argument("--sweep", default="4,8,12,16,20,24,32,48")
    ap.add_argument("--sweep-schedule", default="two_microbatch")
    ap.add_argument("--prefill-sweep", action="store_true")
    a = ap.parse_args()
    if a.prefill_sweep:
        return prefill_sweep(a)
    routing = synth(preset("decode", ep=32, layers=a.layers))
    hw = load_profile(a.hardware)
    md = ModelDesc(dtype=a.dtype)
    print(f"EP32 decode, 128 tokens/rank, {a.layers} replayed layers, {hw.name}, model {md}")
    print("\n| schedule | layer (us) | TPOT (ms) | exposed comm / layer (us) | comm SM share | critical path per layer (us) |")
    print("|---|---|---|---|---|---|")
    t = time.process_time()
    for name in ("serial", "two_microbatch", "ll_hook", "fused"):  # the decode schedules
        s = replay(routing, hw, ReplayConfig(mode="low_latency", schedule=name, model=md)).summary["schedule"]
        L = len(s["layer_ns"]["per_layer"])
        crit = ", ".join(f"{k} {v / L / 1e3:.1f}" for k, v in s["critical_path_ns"].items())
        print(f"| {name} | {s['layer_ns']['steady'] / 1e3:.1f} | {s['tpot_ns'] / 1e6:.2f} | "
              f"{s['exposed_comm_ns']['max_rank'] / L / 1e3:.1f} | {100 * s['sm_time']['comm_share']:.1f}% | {crit} |")
        if "fused_savings_ns" in s:
            print("|  | fused saves per layer (us): " + ", ".join(
                f"{k} {v / L / 1e3:.1f}" for k, v in s["fused_savings_ns"].items()) + " | | | | |")
    print(f"\n(CPU {time.process_time() - t:.1f} s)\n")
    print(f"--num-sms sweep, {a.sweep_schedule}:\n")
    print("| --num-sms | dispatch (us) | combine (us) | compute on critical path / layer (us) | layer (us) | TPOT (ms) |")
    print("|---|---|---|---|---|---|")
    for sms in [int(x) for x in a.sweep.split(",")]:
        res = replay(routing, hw, ReplayConfig(mode="low_latency", schedule=a.sweep_schedule, num_sms=sms, model=md))
        s = res.summary
        sc = s["schedule"]
        L = len(sc["layer_ns"]["per_layer"])
        comp = sum(v for k, v in sc["critical_path_ns"].items() if k in ("attention", "shared", "experts"))
        n = L * sc["micro_batches"]
        print(f"| {sms} | {s['dispatch']['latency_ns'] / n / 1e3:.1f} | {s['combine']['latency_ns'] / n / 1e3:.1f} | "
              f"{comp / L / 1e3:.1f} | {sc['layer_ns']['steady'] / 1e3:.1f} | {sc['tpot_ns'] / 1e6:.2f} |")


def prefill_sweep(a: argparse.Namespace) -> None:
    routing = synth(preset("prefill", ep=16, tokens=4096))
    hw = load_profile(a.hardware)
    md = ModelDesc(dtype=a.dtype, workload="prefill", context=2048)
    print(f"EP16 prefill, 4096 tokens/rank, normal kernels, two_microbatch, {hw.name}, model {md}\n")
    print("| --num-sms | dispatch / micro-batch (us) | combine / micro-batch (us) | compute kernels per rank (us) "
          "| exposed comm (us) | layer (us) |")
    print("|---|---|---|---|---|---|")
    for sms in (4, 8, 12, 16, 20, 24, 32, 48, 64):
        res = replay(routing, hw, ReplayConfig(schedule="two_microbatch", num_sms=sms, model=md))
        s, sc = res.summary, res.summary["schedule"]
        comp = res.events.filter(res.events["stage"].is_in(["attention", "shared", "experts"]))["dur_ns"].sum() / 16
        print(f"| {sms} | {s['dispatch']['latency_ns'] / 2e3:.1f} | {s['combine']['latency_ns'] / 2e3:.1f} | "
              f"{comp / 1e3:.1f} | {sc['exposed_comm_ns']['max_rank'] / 1e3:.1f} | {sc['step_ns'] / 1e3:.1f} |")


if __name__ == "__main__":
    main()
