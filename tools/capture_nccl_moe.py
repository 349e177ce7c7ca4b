#!/usr/bin/env python3
"""NCCL all_to_all_single with MoE traffic (DeepEP's workloads) on every GPU of a host: timings, traces, routings.

    python tools/capture_nccl_moe.py --world-size 8 --out runs/nccl_ep8      # nvidia-h200-x8
    python tools/capture_nccl_moe.py --world-size 2 --out runs/nccl_ep2      # nvidia-h200-x2
    python tools/capture_nccl_moe.py --world-size 1 --out runs/dry --quick   # one GPU: the same code path

For each workload (tokens per rank: prefill 4096 and 8192, decode 128 and 256; balanced and hot experts;
top-8 of 256 experts, hidden 7168, experts placed contiguously, E / world per rank), each rank draws
DeepEP-test routing (tools/capture_common.routing) and runs, like a DeepEP call made of NCCL pieces:

    notify    all_to_all_single of the per-destination token counts
    dispatch  all_to_all_single of the payload (a token goes once to each rank hosting one of its
              experts): bf16 rows (14,336 B) or FP8 rows with per-128 scales as bytes (7,392 B)
    combine   all_to_all_single back in bf16

Each call is timed with CUDA events after a barrier (slowest rank per iteration, median over
--iters), then one step per workload is recorded with the PyTorch profiler (record_function scopes
notify / dispatch / combine; ``tracekit import kineto`` reads them). Written to --out: results.jsonl,
provenance.json, routing_<workload>.npz ([ranks, tokens, topk], ``tracekit import routing``),
rank<r>_<workload>.pt.trace.json.gz, and validation_rows.toml (family h200_nccl_moe) whose rows
replay each routing dump: ``tracekit import routing routing_<w>.npz --ep N --experts 256 --hidden 7168
-o cap && tracekit replay --from-capture cap --hardware h200-nvlink -o out``.
NVLink multicast stays off (tools/capture_common.SAFE_ENV).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import capture_common as cc  # noqa: E402

HIDDEN, EXPERTS, TOPK = 7168, 256, 8
FP8_ROW = HIDDEN + HIDDEN // 128 * 4  # e4m3 payload + one float32 scale per 128 values


def workloads(quick: bool) -> list[tuple[str, int, float]]:
    tokens = (128, 4096) if quick else (128, 256, 4096, 8192)
    return [(f"{'decode' if t <= 256 else 'prefill'}{t}_{'hot' if hot else 'bal'}", t, hot)
            for t in tokens for hot in (0.0, 1.0)]


def _worker(rank: int, world: int, args) -> None:
    import torch
    import torch.distributed as dist
    from torch.profiler import ProfilerActivity, profile, record_function

    out = Path(args.out)
    dev = torch.device("cuda", rank)
    results = cc.Results(out) if rank == 0 else None
    rows = []
    for name, tokens, hot in workloads(args.quick):
        idx, w = cc.routing(torch, rank, tokens, EXPERTS, TOPK, hot, args.seed)
        dump = cc.gather_routing(torch, dist, idx, w, out, name, rank, num_experts=EXPERTS, hidden=HIDDEN,
                                 world_size=world)
        dest = idx // (EXPERTS // world)
        hit = torch.zeros(tokens, world, dtype=torch.bool, device=dev)
        hit.scatter_(1, dest, True)
        tok, dst = hit.nonzero(as_tuple=True)
        order = torch.argsort(dst, stable=True)
        tok, dst = tok[order], dst[order]
        send_counts = torch.bincount(dst, minlength=world)
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts)
        ins, outs = send_counts.tolist(), recv_counts.tolist()
        payload = {"bf16": torch.randn(tokens, HIDDEN, device=dev, dtype=torch.bfloat16),
                   "fp8": torch.randint(0, 255, (tokens, FP8_ROW), device=dev, dtype=torch.uint8)}
        back_src = torch.randn(sum(outs), HIDDEN, device=dev, dtype=torch.bfloat16)
        back = torch.empty(sum(ins), HIDDEN, device=dev, dtype=torch.bfloat16)

        def notify():
            dist.all_to_all_single(torch.empty_like(send_counts), send_counts)

        calls = {"notify": notify}
        for dtype, x in payload.items():
            send = x.index_select(0, tok)
            recv = torch.empty(sum(outs), x.shape[1], device=dev, dtype=x.dtype)
            calls[f"dispatch_{dtype}"] = (lambda r=recv, s=send: dist.all_to_all_single(r, s, outs, ins))
        calls["combine_bf16"] = lambda: dist.all_to_all_single(back, back_src, ins, outs)
        for call, fn in calls.items():
            t = cc.timed_collective(torch, dist, fn, args.iters)
            if results is not None:
                phase, _, dtype = call.partition("_")
                results.add(suite="nccl", workload=name, tokens=tokens, hot=hot, call=call, world=world,
                            send_rows=ins, recv_rows=outs, **t)
                if phase in ("dispatch", "combine"):
                    rows.append({"id": f"nccl-ep{world}-{name}-{call}", "phase": phase, "metric": "latency_us",
                                 "measured": round(t["us_median"], 3), "hardware": "h200-nvlink",
                                 "workload": {"routing": f"CAPTURE_DIR/{dump}", "ep": world, "experts": EXPERTS,
                                              "hidden": HIDDEN, "dispatch_dtype": dtype, "combine_dtype": "bf16"},
                                 "knobs": {"dispatch_dtype": dtype} if phase == "dispatch" else {},
                                 "sweeps": {"tokens": f"nccl-ep{world}-{call}-{'hot' if hot else 'bal'}",
                                            "skew": f"nccl-ep{world}-{call}-t{tokens}"},
                                 "note": "median over iterations of the slowest rank's CUDA-event time, after a barrier"})
        trace = out / f"rank{rank}_{name}.pt.trace.json"
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA], record_shapes=True) as prof:
            for scope in ("notify", "dispatch_bf16", "combine_bf16"):
                with record_function(scope.split("_")[0]):
                    calls[scope]()
            torch.cuda.synchronize()
        prof.export_chrome_trace(str(trace))
        cc.gzip_trace(trace)
    if rank == 0:
        prov = json.loads((out / "provenance.json").read_text())
        cc.write_rows(out / "validation_rows.toml", "h200_nccl_moe", prov,
                      f"all_to_all_single, top-{TOPK} of {EXPERTS} experts, hidden {HIDDEN}, {world} ranks; "
                      "replace CAPTURE_DIR with the committed folder", rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--world-size", type=int, default=8)
    ap.add_argument("--iters", type=int, default=20, help="timed iterations per call (default 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="two token counts only (a dry run)")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "provenance.json").write_text(json.dumps(cc.provenance({"script": "tools/capture_nccl_moe.py",
                                                                   "world_size": args.world_size}), indent=1))
    cc.spawn(_worker, args.world_size, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
