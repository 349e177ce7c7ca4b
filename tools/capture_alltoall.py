#!/usr/bin/env python3
"""Capture an MoE all-to-all step on real GPUs: routing + PyTorch profiler (Kineto) traces.

Run on a host with PyTorch and >= 2 GPUs (one process per GPU, spawned here):

    python tools/capture_alltoall.py --out captures/ --world-size 2

Each rank draws a synthetic top-k routing on its GPU (scores = |randn| + 1, plus ``--skew`` on the
last rank's experts; top-k experts by score; experts placed contiguously: num_experts /
world_size per rank), then runs, under
``torch.profiler``:

    notify   all_to_all_single of the per-destination token counts (the layout exchange)
    dispatch all_to_all_single of the token payload (bf16 [n, hidden]; a token goes once to each
             rank that hosts one of its experts, as DeepEP does)
    expert   one matmul over the received tokens (the expert compute)
    combine  all_to_all_single back, then the weighted top-k sum on the source rank

With ``--shared-expert N`` each step also runs a shared expert on the rank's own tokens (an
[H, N] up-projection with SiLU launched just before the dispatch all-to-all, the [N, H]
down-projection just before the combine all-to-all, added to the output at the end). Without
``--overlap`` it runs on the main stream, serialised with the all-to-alls; with ``--overlap`` the
same kernels run on a second stream, concurrent with the all-to-alls (the overlap DeepSeek-V3
uses). Both variants launch the same kernels, so their summed kernel durations match while the
communication left exposed differs.

Outputs in ``--out``: ``rank<r>.pt.trace.json.gz`` (one Kineto trace per rank), ``routing.npz``
(``topk_idx`` int64 [world, tokens, topk] with -1 for nothing masked here, ``topk_weights``
float32, and the sizes), and ``capture.json`` (versions, device, settings, per-phase timings from
CUDA events, and the achieved bandwidths). NVLink multicast stays off (NCCL_NVLS_ENABLE=0 ...).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import platform
import shutil
import socket
import sys
import time
from pathlib import Path

SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _routing(torch, rank: int, args):
    g = torch.Generator(device=f"cuda:{rank}")
    g.manual_seed(args.seed * 1000 + rank)
    scores = torch.randn(args.tokens, args.experts, device=f"cuda:{rank}", generator=g).abs() + 1
    if args.skew:  # favour the experts of the last rank: uneven traffic
        scores[:, args.experts - args.experts // args.world_size:] += args.skew
    weights, idx = torch.topk(scores, args.topk, dim=1)
    weights = (weights / weights.sum(dim=1, keepdim=True)).float()
    return idx, weights


def _worker(rank: int, args, port: int) -> None:
    os.environ.update(SAFE_ENV)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(args.world_size), "LOCAL_RANK": str(rank)})
    import torch
    import torch.distributed as dist
    from torch.profiler import ProfilerActivity, profile, schedule
    from torch.profiler import record_function as _record_function

    def record_function(name):
        return _record_function(name) if args.annotate else contextlib.nullcontext()

    torch.cuda.set_device(rank)
    dev = torch.device("cuda", rank)
    dist.init_process_group("nccl", rank=rank, world_size=args.world_size, device_id=dev)
    W, T, H, E = args.world_size, args.tokens, args.hidden, args.experts
    per_rank = E // W
    idx, weights = _routing(torch, rank, args)
    # a token goes once to each rank hosting one of its experts
    dest = idx // per_rank                                             # [T, K]
    hit = torch.zeros(T, W, dtype=torch.bool, device=dev)
    hit.scatter_(1, dest, True)
    tok, dst = hit.nonzero(as_tuple=True)                              # sorted by token
    order = torch.argsort(dst, stable=True)
    tok, dst = tok[order], dst[order]                                  # grouped by destination
    send_counts = torch.bincount(dst, minlength=W)
    x = torch.randn(T, H, device=dev, dtype=torch.bfloat16)
    w_expert = torch.randn(H, H, device=dev, dtype=torch.bfloat16) / H ** 0.5
    S = args.shared_expert
    w_up = torch.randn(H, max(S, 1), device=dev, dtype=torch.bfloat16) / H ** 0.5
    w_down = torch.randn(max(S, 1), H, device=dev, dtype=torch.bfloat16) / max(S, 1) ** 0.5
    side = torch.cuda.Stream(device=dev) if args.overlap else None

    def shared(fn):
        """Run ``fn`` on the main stream, or on the side stream after what the main stream queued."""
        if side is None:
            return fn()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            return fn()

    def join() -> None:
        if side is not None:
            torch.cuda.current_stream().wait_stream(side)
    start = {k: torch.cuda.Event(enable_timing=True) for k in ("notify", "dispatch", "expert", "combine")}
    end = {k: torch.cuda.Event(enable_timing=True) for k in start}
    timings: dict[str, list[float]] = {k: [] for k in start}

    def step() -> tuple[list[int], list[int]]:
        with record_function("notify"):
            start["notify"].record()
            recv_counts = torch.empty_like(send_counts)
            dist.all_to_all_single(recv_counts, send_counts)
            in_splits = send_counts.tolist()
            out_splits = recv_counts.tolist()
            end["notify"].record()
        with record_function("dispatch"):
            start["dispatch"].record()
            send = x.index_select(0, tok)
            recv = torch.empty(sum(out_splits), H, device=dev, dtype=torch.bfloat16)
            if S:
                with record_function("shared_expert"):
                    h = shared(lambda: torch.nn.functional.silu(x @ w_up))
            dist.all_to_all_single(recv, send, out_splits, in_splits)
            end["dispatch"].record()
        with record_function("expert"):
            start["expert"].record()
            y = recv @ w_expert
            end["expert"].record()
        with record_function("combine"):
            start["combine"].record()
            back = torch.empty(sum(in_splits), H, device=dev, dtype=torch.bfloat16)
            if S:
                with record_function("shared_expert"):
                    s_out = shared(lambda: h @ w_down)
            dist.all_to_all_single(back, y, in_splits, out_splits)
            out = torch.zeros(T, H, device=dev, dtype=torch.float32)
            out.index_add_(0, tok, back.float())
            if S:
                join()
                out += s_out.float()
            end["combine"].record()
        torch.cuda.synchronize()
        for k in start:
            timings[k].append(start[k].elapsed_time(end[k]))
        return in_splits, out_splits

    for _ in range(args.warmup):
        step()
    dist.barrier()
    out_dir = Path(args.out)
    trace_path = out_dir / f"rank{rank}.pt.trace.json"
    for k in timings:
        timings[k].clear()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
                 schedule=schedule(wait=0, warmup=1, active=args.steps, repeat=1), record_shapes=False,
                 on_trace_ready=lambda p: p.export_chrome_trace(str(trace_path))) as prof:
        for _ in range(1 + args.steps):
            splits = step()
            prof.step()
    with open(trace_path, "rb") as f, gzip.open(str(trace_path) + ".gz", "wb", compresslevel=9) as g:
        shutil.copyfileobj(f, g)
    trace_path.unlink()
    # routing and measurements, gathered on rank 0
    all_idx = [torch.empty_like(idx) for _ in range(W)]
    all_w = [torch.empty_like(weights) for _ in range(W)]
    dist.all_gather(all_idx, idx)
    dist.all_gather(all_w, weights)
    all_t = [None] * W
    dist.all_gather_object(all_t, {"timings_ms": timings, "in_splits": splits[0], "out_splits": splits[1]})
    if rank == 0:
        import numpy as np

        np.savez_compressed(out_dir / "routing.npz", topk_idx=torch.stack(all_idx).cpu().numpy().astype(np.int64),
                            topk_weights=torch.stack(all_w).cpu().numpy().astype(np.float32),
                            num_experts=np.int64(E), hidden=np.int64(H), world_size=np.int64(W))
        bytes_tok = H * 2
        report = {
            "command": " ".join(sys.argv),
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "nccl": ".".join(map(str, torch.cuda.nccl.version())),
            "gpus": [torch.cuda.get_device_name(i) for i in range(W)],
            "env": {k: os.environ.get(k) for k in SAFE_ENV},
            "settings": {k: getattr(args, k) for k in ("world_size", "tokens", "hidden", "experts", "topk", "seed",
                                                       "steps", "warmup", "skew", "annotate", "shared_expert",
                                                       "overlap")},
            "ranks": [],
        }
        for r, t in enumerate(all_t):
            disp = min(t["timings_ms"]["dispatch"])
            comb = min(t["timings_ms"]["combine"])
            sent_remote = sum(n for j, n in enumerate(t["in_splits"]) if j != r)
            recv_remote = sum(n for j, n in enumerate(t["out_splits"]) if j != r)
            report["ranks"].append({
                "rank": r, "in_splits_tokens": t["in_splits"], "out_splits_tokens": t["out_splits"],
                "timings_ms": t["timings_ms"],
                "dispatch_ms_min": disp, "combine_ms_min": comb,
                "dispatch_remote_recv_GBps": recv_remote * bytes_tok / (disp * 1e-3) / 1e9,
                "combine_remote_recv_GBps": sent_remote * bytes_tok / (comb * 1e-3) / 1e9,
            })
        (out_dir / "capture.json").write_text(json.dumps(report, indent=1))
        print(json.dumps({k: report[k] for k in ("torch", "nccl", "gpus")}))
        for rr in report["ranks"]:
            print({k: rr[k] for k in ("rank", "in_splits_tokens", "dispatch_ms_min", "combine_ms_min",
                                      "dispatch_remote_recv_GBps", "combine_remote_recv_GBps")})
    dist.barrier()
    dist.destroy_process_group()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output directory")
    ap.add_argument("--world-size", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=4096, help="tokens per rank")
    ap.add_argument("--hidden", type=int, default=7168)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--topk", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2, help="profiled steps")
    ap.add_argument("--warmup", type=int, default=3, help="unprofiled steps first")
    ap.add_argument("--skew", type=float, default=0.0,
                    help="add this to the scores of the last rank's experts (uneven traffic; 0 = none)")
    ap.add_argument("--shared-expert", type=int, default=0, metavar="N",
                    help="also run a shared expert of intermediate size N around the all-to-alls (0 = none)")
    ap.add_argument("--overlap", action="store_true",
                    help="run the shared expert on a second stream, concurrent with the all-to-alls")
    ap.add_argument("--no-annotate", dest="annotate", action="store_false",
                    help="no record_function scopes (importers must infer dispatch/combine)")
    args = ap.parse_args()
    os.environ.update(SAFE_ENV)
    import torch
    import torch.multiprocessing as mp

    n = torch.cuda.device_count()
    if n < args.world_size:
        print(f"need {args.world_size} GPUs, found {n}", file=sys.stderr)
        return 2
    if args.experts % args.world_size:
        print("--experts must be a multiple of --world-size", file=sys.stderr)
        return 2
    Path(args.out).mkdir(parents=True, exist_ok=True)
    mp.spawn(_worker, args=(args, _free_port()), nprocs=args.world_size, join=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
