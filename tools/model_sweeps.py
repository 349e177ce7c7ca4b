#!/usr/bin/env python3
"""Print the replay's shape on the knobs people tune (EP8 inside one h200-nvlink node):

    PYTHONPATH=. python tools/model_sweeps.py [--tokens 4096] [--hardware h200-nvlink]

* dispatch and combine, FP8 vs BF16 dispatch payload (time ratio next to the byte ratio);
* a chunk-size sweep (NVLink send chunk of 1, 2, 4, 8, 16, 32 tokens, both phases);
* an SM sweep (4 .. 32 SMs).

Each figure is the per-call time in us: from the phase's start (host prologue included) to the last
receive (``rank_finish_ns.max``); the data part (first send to last receive) follows in brackets. Nothing here is fitted: it shows the model's response, for docs and reviews.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from tracekit.hardware import load_profile
from tracekit.model.config import ReplayConfig, deepep_defaults
from tracekit.replay import replay
from tracekit.workload.synth import SynthConfig, synth


def _fmt(s: dict, phase: str) -> str:
    d = s[phase]
    data = d.get("data_ns", d["latency_ns"])
    return f"{d['rank_finish_ns']['max'] / 1e3:8.1f} ({data / 1e3:7.1f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--hardware", default="h200-nvlink")
    args = ap.parse_args()
    hw = load_profile(args.hardware)
    cpu = time.process_time()

    def run(dtype: str, **kw) -> dict:
        routing = synth(SynthConfig(preset="prefill", ep=8, tokens=args.tokens, hidden=7168, topk=8, experts=256,
                                    dispatch_dtype=dtype, combine_dtype="bf16", seed=0))
        return replay(routing, hw, ReplayConfig(**kw)).summary

    print(f"EP8 {args.tokens} tokens/rank on {args.hardware}: per-call us (data part)")
    bf, fp = run("bf16"), run("fp8")
    print(f"dispatch bf16 {_fmt(bf, 'dispatch')}  fp8 {_fmt(fp, 'dispatch')}  time ratio fp8/bf16 "
          f"{fp['dispatch']['rank_finish_ns']['max'] / bf['dispatch']['rank_finish_ns']['max']:.3f} (byte ratio {7168 * 1.03125 / 14336:.3f})")
    print(f"combine  bf16 {_fmt(bf, 'combine')}")
    print("chunk sweep (nvl_send_chunk tokens; bf16):")
    for chunk in (1, 2, 4, 8, 16, 32):
        d, c = deepep_defaults(8, "dispatch"), deepep_defaults(8, "combine")
        s = run("bf16", dispatch=replace(d, nvl_send_chunk=chunk), combine=replace(c, nvl_send_chunk=chunk))
        print(f"  chunk {chunk:3d}: dispatch {_fmt(s, 'dispatch')}  combine {_fmt(s, 'combine')}")
    print("SM sweep (bf16):")
    for sms in (4, 8, 12, 16, 20, 24, 28, 32):
        s = run("bf16", num_sms=sms)
        print(f"  {sms:3d} SMs: dispatch {_fmt(s, 'dispatch')}  combine {_fmt(s, 'combine')}")
    print(f"cpu {time.process_time() - cpu:.1f} s")


if __name__ == "__main__":
    main()
