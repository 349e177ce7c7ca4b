#!/usr/bin/env python3
"""DeepEP captures on the GPUs of one host: V1 normal and low-latency kernels, V2 ElasticBuffer.

DeepEP's source is not part of this repository and cannot be downloaded on the lent machines. Put a
copy next to the command (on a machine with network access, or through the workplace's fetch):

    git clone https://github.com/deepseek-ai/DeepEP && cd DeepEP
    git archive 567632dd59810d77b3cc05553df953cc0f779799 | tar -x -C /path/deepep_v1   # last V1 tree (2026-02-03)
    git archive HEAD | tar -x -C /path/deepep_v2                                          # V2 (ElasticBuffer)
    # V2 also needs third-party/fmt (a submodule): git -C fmt archive a4c7e171 | tar -x -C /path/deepep_v2/third-party/fmt
    echo <commit> > /path/deepep_v1/DEEPEP_COMMIT                                          # recorded in provenance

Build, then run (one launcher per GPU count; NVLink multicast off, see tools/capture_common.py):

    python tools/capture_deepep.py build --src /path/deepep_v1 --variant v1-intranode   # no NVSHMEM: normal kernels
    python tools/capture_deepep.py build --src /path/deepep_v1 --variant v1-full        # + NVSHMEM wheel: low-latency
    python tools/capture_deepep.py build --src /path/deepep_v2 --variant v2             # needs NCCL >= 2.30.4
    python tools/capture_deepep.py run --src /path/deepep_v1 --suite v1-normal --world-size 8 --out runs/v1n_ep8
    python tools/capture_deepep.py run --src /path/deepep_v1 --suite v1-ll --world-size 8 --out runs/v1ll_ep8
    python tools/capture_deepep.py run --src /path/deepep_v2 --suite v2 --world-size 8 --out runs/v2_ep8

Suites (each rank: DeepEP-test routing, scores |randn| + 1, top-8 of 256 experts, hidden 7168,
balanced and with hot experts; every rank's routing dumped as routing_<case>.npz for ``tracekit
import routing``; timings from CUDA events after a barrier, slowest rank, median over --iters):

* ``v1-normal``: intranode ``Buffer.dispatch`` / ``combine``; tokens 128..8192, SMs 4..32 at the
  default chunk, NVL chunk 1..32 at 24 SMs, FP8 and BF16 dispatch; the whole call (layout handle
  given, notify + CPU sync included) and the cached call (handle reused: kernel only); combine.
  One case per workload is recorded with the PyTorch profiler (record_function dispatch/combine).
* ``v1-ll``: ``low_latency_dispatch`` / ``low_latency_combine`` over NVLink (NVSHMEM P2P), 64..256
  tokens, 256 and 288 experts, FP8 dispatch, with and without the receive hook (send and receive
  timed apart).
* ``v2``: ``ElasticBuffer.dispatch`` / ``combine`` at ``get_theoretical_num_sms`` and a sweep
  around it.

Everything goes to --out: provenance.json, results.jsonl (one line per measurement, failures with
their error), routing dumps, compressed profiler traces, and validation_rows.toml (rows in the
format of validation/rows/; replace CAPTURE_DIR with the committed folder).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import capture_common as cc  # noqa: E402

HIDDEN, EXPERTS, TOPK = 7168, 256, 8
NVL_BUFFER = 256  # tokens, as DeepEP's test_intranode.py
#: DeepEP V1's default NVL chunk (tokens) by rank count: Buffer.get_dispatch_config / get_combine_config.
DEFAULT_CHUNK = {"dispatch": {2: 24, 4: 6, 8: 6}, "combine": {2: 10, 4: 9, 8: 4}}


# ---------------------------------------------------------------- build
def build(src: Path, variant: str, jobs: int) -> int:
    """Build DeepEP in place (``setup.py build_ext --inplace``); v1-intranode hides the NVSHMEM wheel so
    that V1's setup.py takes its no-NVSHMEM path (intranode kernels only)."""
    env = {**os.environ, "MAX_JOBS": str(jobs), "TORCH_CUDA_ARCH_LIST": os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0")}
    if variant == "v1-intranode":
        code = ("import importlib.util, runpy, sys; _f = importlib.util.find_spec\n"
                "importlib.util.find_spec = lambda n, *a: None if n.startswith('nvidia.nvshmem') else _f(n, *a)\n"
                "sys.argv = ['setup.py', 'build_ext', '--inplace']; runpy.run_path('setup.py', run_name='__main__')")
        argv = [sys.executable, "-c", code]
    else:
        argv = [sys.executable, "setup.py", "build_ext", "--inplace"]
    t = time.time()
    rc = subprocess.run(argv, cwd=src, env=env).returncode
    print(f"build {variant}: exit {rc} after {time.time() - t:.0f} s", flush=True)
    return rc


def _import_deep_ep(src: Path):
    sys.path.insert(0, str(src))
    import deep_ep

    return deep_ep


# ---------------------------------------------------------------- helpers
def _fp8(torch, x):
    """Per-token, per-128-channel e4m3 cast with float32 scales (DeepEP's test layout)."""
    t, h = x.shape
    v = x.float().view(t, h // 128, 128)
    amax = v.abs().amax(dim=2).clamp(min=1e-4)
    data = (v * (448.0 / amax.unsqueeze(2))).to(torch.float8_e4m3fn).view(t, h)
    scales = (amax / 448.0).view(t, h // 128)
    return data, scales.T.contiguous().T


def _cases(quick: bool) -> list[tuple[str, int, float]]:
    tokens = (512,) if quick else (128, 512, 1024, 2048, 4096, 8192)
    return [(f"t{t}_{'hot' if hot else 'bal'}", t, hot) for t in tokens for hot in (0.0, 1.0)]


def _row(suite: str, world: int, case: str, call: str, phase: str, us: float, dump: str, dtype: str,
         knobs: dict, sweeps: dict) -> dict:
    return {"id": f"{suite}-ep{world}-{case}-{call}", "phase": phase, "metric": "call_us", "measured": round(us, 3),
            "hardware": "h200-nvlink",
            "workload": {"routing": f"CAPTURE_DIR/{dump}", "ep": world, "experts": EXPERTS, "hidden": HIDDEN,
                         "dispatch_dtype": dtype, "combine_dtype": "bf16"},
            "knobs": knobs, "sweeps": sweeps}


class _Run:
    """Per-rank state of a suite: output folder, results (rank 0), rows."""

    def __init__(self, rank: int, world: int, args) -> None:
        self.rank, self.world, self.args = rank, world, args
        self.out = Path(args.out)
        self.results = cc.Results(self.out) if rank == 0 else None
        self.rows: list[dict] = []

    def measure(self, torch, dist, label: dict, fn) -> dict | None:
        try:
            t = cc.timed_collective(torch, dist, fn, self.args.iters)
        except Exception as exc:  # noqa: BLE001 - record the failure, go on with the sweep
            t = None
            if self.results is not None:
                self.results.add(**label, error=f"{type(exc).__name__}: {exc}"[:300])
        if t is not None and self.results is not None:
            self.results.add(**label, **t)
        return t

    def finish(self, family: str, recipe: str) -> None:
        if self.rank == 0:
            prov = json.loads((self.out / "provenance.json").read_text())
            cc.write_rows(self.out / "validation_rows.toml", family, prov, recipe, self.rows)


def _profile(torch, run: _Run, name: str, calls: dict) -> None:
    from torch.profiler import ProfilerActivity, profile, record_function

    trace = run.out / f"rank{run.rank}_{name}.pt.trace.json"
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for scope, fn in calls.items():
            with record_function(scope):
                fn()
        torch.cuda.synchronize()
    prof.export_chrome_trace(str(trace))
    cc.gzip_trace(trace)


# ---------------------------------------------------------------- V1 normal kernels
def _v1_normal(rank: int, world: int, args) -> None:
    import torch
    import torch.distributed as dist

    deep_ep = _import_deep_ep(Path(args.src))
    run = _Run(rank, world, args)
    buf = deep_ep.Buffer(dist.group.WORLD, int(2e9), 0)
    idx_t = getattr(deep_ep, "topk_idx_t", torch.int64)
    sms_sweep = (24,) if args.quick else (4, 8, 12, 16, 20, 24, 32)
    chunk_sweep = (1, 4) if args.quick else (1, 2, 4, 6, 8, 12, 16, 24, 32)
    for case, tokens, hot in _cases(args.quick):
        idx, w = cc.routing(torch, rank, tokens, EXPERTS, TOPK, hot, args.seed)
        dump = cc.gather_routing(torch, dist, idx, w, run.out, case, rank, num_experts=EXPERTS, hidden=HIDDEN,
                                 world_size=world)
        idx = idx.to(idx_t)
        x = torch.randn(tokens, HIDDEN, device="cuda", dtype=torch.bfloat16)
        label = {"suite": "v1-normal", "case": case, "tokens": tokens, "hot": hot, "world": world}
        run.measure(torch, dist, {**label, "call": "layout"}, lambda: buf.get_dispatch_layout(idx, EXPERTS))
        n_rank, _, n_expert, in_rank, _ = buf.get_dispatch_layout(idx, EXPERTS)
        for dtype, xin in (("fp8", _fp8(torch, x)), ("bf16", x)):
            dflt = (DEFAULT_CHUNK["dispatch"].get(world, 6), DEFAULT_CHUNK["combine"].get(world, 4))
            configs = [(s, *dflt, "sms") for s in sms_sweep] + [(24, c, min(c, 16), "chunk") for c in chunk_sweep]
            for sms, chunk, cchunk, sweep in configs:
                cfg = deep_ep.Config(sms, chunk, NVL_BUFFER)
                kw = dict(num_tokens_per_rank=n_rank, is_token_in_rank=in_rank, num_tokens_per_expert=n_expert,
                          topk_idx=idx, topk_weights=w, config=cfg)
                lab = {**label, "dtype": dtype, "num_sms": sms, "nvl_chunk": chunk}
                try:
                    recv_x, _, recv_w, _, handle, _ = buf.dispatch(xin, **kw)
                except Exception as exc:  # noqa: BLE001
                    if run.results is not None:
                        run.results.add(**lab, call="dispatch", error=f"{type(exc).__name__}: {exc}"[:300])
                    continue
                knobs = {"num_sms": sms, "dispatch_nvl_send_chunk": chunk, "dispatch_dtype": dtype}
                sweeps = {"num_sms" if sweep == "sms" else "chunk_size": f"v1n-ep{world}-{case}-{dtype}-dispatch",
                          "tokens": f"v1n-ep{world}-{'hot' if hot else 'bal'}-{dtype}-s{sms}-c{chunk}-dispatch",
                          "skew": f"v1n-ep{world}-t{tokens}-{dtype}-s{sms}-c{chunk}-dispatch"}
                for call, fn, cached in (("dispatch", lambda: buf.dispatch(xin, **kw), False),
                                         ("dispatch_cached", lambda: buf.dispatch(xin, handle=handle, config=cfg), True)):
                    t = run.measure(torch, dist, {**lab, "call": call}, fn)
                    if t:
                        run.rows.append(_row("v1n", world, f"{case}-{dtype}-s{sms}-c{chunk}", call, "dispatch",
                                             t["us_median"], dump, dtype, {**knobs, "cached": cached}, sweeps))
                y = torch.randn(recv_w.shape[0], HIDDEN, device="cuda", dtype=torch.bfloat16)
                ccfg = deep_ep.Config(sms, cchunk, NVL_BUFFER)
                t = run.measure(torch, dist, {**lab, "call": "combine", "nvl_chunk": cchunk},
                                lambda: buf.combine(y, handle, topk_weights=recv_w, config=ccfg))
                if t and dtype == "fp8":
                    run.rows.append(_row("v1n", world, f"{case}-s{sms}-c{cchunk}", "combine", "combine",
                                         t["us_median"], dump, dtype,
                                         {"num_sms": sms, "combine_nvl_send_chunk": cchunk},
                                         {k: v.replace("dispatch", "combine") for k, v in sweeps.items()}))
                if sms == 24 and chunk == chunk_sweep[-1] and dtype == "fp8":
                    _profile(torch, run, f"v1n_{case}", {"dispatch": lambda: buf.dispatch(xin, **kw),
                                                         "combine": lambda: buf.combine(y, handle, topk_weights=recv_w,
                                                                                        config=ccfg)})
    run.finish(f"h200_deepep_v1_normal_ep{world}",
               f"DeepEP V1 intranode normal kernels, {world} ranks, top-{TOPK} of {EXPERTS}, hidden {HIDDEN}")


# ---------------------------------------------------------------- V1 low-latency kernels
def _v1_ll(rank: int, world: int, args) -> None:
    import torch
    import torch.distributed as dist

    deep_ep = _import_deep_ep(Path(args.src))
    run = _Run(rank, world, args)
    max_tokens = 256
    for experts in ((256,) if args.quick else (256, 288)):
        nbytes = deep_ep.Buffer.get_low_latency_rdma_size_hint(max_tokens, HIDDEN, world, experts)
        buf = deep_ep.Buffer(dist.group.WORLD, 0, nbytes, low_latency_mode=True, num_qps_per_rank=experts // world,
                             allow_nvlink_for_low_latency_mode=True, explicitly_destroy=True)
        for tokens in ((128,) if args.quick else (64, 128, 256)):
            case = f"t{tokens}_e{experts}"
            idx, w = cc.routing(torch, rank, tokens, experts, TOPK, 0.0, args.seed)
            dump = cc.gather_routing(torch, dist, idx, w, run.out, case, rank, num_experts=experts, hidden=HIDDEN,
                                     world_size=world)
            idx = idx.to(getattr(deep_ep, "topk_idx_t", torch.int64))
            x = torch.randn(tokens, HIDDEN, device="cuda", dtype=torch.bfloat16)
            label = {"suite": "v1-ll", "case": case, "tokens": tokens, "experts": experts, "world": world}
            recv, _, handle, _, _ = buf.low_latency_dispatch(x, idx, max_tokens, experts, use_fp8=True)
            y = torch.randn(recv[0].shape, device="cuda", dtype=torch.bfloat16)
            calls = {"dispatch": lambda: buf.low_latency_dispatch(x, idx, max_tokens, experts, use_fp8=True),
                     "combine": lambda: buf.low_latency_combine(y, idx, w, handle)}
            for call, fn in calls.items():
                t = run.measure(torch, dist, {**label, "call": call}, fn)
                if t:
                    row = _row("v1ll", world, case, call, call, t["us_median"], dump, "fp8", {"mode": "low_latency"},
                               {"tokens": f"v1ll-ep{world}-e{experts}-{call}", "experts": f"v1ll-ep{world}-t{tokens}-{call}"})
                    row["workload"]["experts"] = experts
                    run.rows.append(row)
            # receive hook: the send returns at once; the hook waits for the data (timed apart)
            for call in ("dispatch", "combine"):
                try:
                    send, recv_t = [], []
                    for _ in range(args.iters):
                        dist.barrier()
                        torch.cuda.synchronize()
                        e = [torch.cuda.Event(enable_timing=True) for _ in range(3)]
                        e[0].record()
                        res = (buf.low_latency_dispatch(x, idx, max_tokens, experts, use_fp8=True, return_recv_hook=True)
                               if call == "dispatch" else
                               buf.low_latency_combine(y, idx, w, handle, return_recv_hook=True))
                        e[1].record()
                        res[-1]()
                        e[2].record()
                        torch.cuda.synchronize()
                        send.append(e[0].elapsed_time(e[1]) * 1e3)
                        recv_t.append(e[1].elapsed_time(e[2]) * 1e3)
                    if run.results is not None:
                        run.results.add(**label, call=f"{call}_hook", send_us_median=cc.median(send),
                                        recv_us_median=cc.median(recv_t), rank0_only=True)
                except Exception as exc:  # noqa: BLE001
                    if run.results is not None:
                        run.results.add(**label, call=f"{call}_hook", error=f"{type(exc).__name__}: {exc}"[:300])
            if tokens == 128:
                _profile(torch, run, f"v1ll_{case}", calls)
        buf.destroy()
    run.finish(f"h200_deepep_v1_low_latency_ep{world}",
               f"DeepEP V1 low-latency kernels over NVLink, {world} ranks, top-{TOPK}, hidden {HIDDEN}, FP8 dispatch")


# ---------------------------------------------------------------- V2 ElasticBuffer
def _v2(rank: int, world: int, args) -> None:
    import torch
    import torch.distributed as dist

    deep_ep = _import_deep_ep(Path(args.src))
    run = _Run(rank, world, args)
    max_tokens = 512 if args.quick else 8192
    buf = deep_ep.ElasticBuffer(dist.group.WORLD, num_max_tokens_per_rank=max_tokens, hidden=HIDDEN, num_topk=TOPK,
                                use_fp8_dispatch=False, explicitly_destroy=True)
    idx_t = getattr(deep_ep, "topk_idx_t", torch.int64)
    n0 = buf.get_theoretical_num_sms(EXPERTS, TOPK)
    sweep = sorted({max(4, n0 // 2 // 2 * 2), n0, n0 + 4, 2 * n0})
    if run.results is not None:
        run.results.add(suite="v2", call="theoretical_num_sms", num_sms=n0, world=world)
    for case, tokens, hot in _cases(args.quick):
        if tokens > max_tokens:
            continue
        idx, w = cc.routing(torch, rank, tokens, EXPERTS, TOPK, hot, args.seed)
        dump = cc.gather_routing(torch, dist, idx, w, run.out, case, rank, num_experts=EXPERTS, hidden=HIDDEN,
                                 world_size=world)
        idx = idx.to(idx_t)
        x = torch.randn(tokens, HIDDEN, device="cuda", dtype=torch.bfloat16)
        for sms in sweep:
            label = {"suite": "v2", "case": case, "tokens": tokens, "hot": hot, "num_sms": sms, "world": world,
                     "analytical_sms": n0}
            kw = dict(topk_idx=idx, topk_weights=w, num_experts=EXPERTS, num_max_tokens_per_rank=max_tokens, num_sms=sms)
            try:
                recv_x, _, _, handle, _ = buf.dispatch(x, **kw)
            except Exception as exc:  # noqa: BLE001
                if run.results is not None:
                    run.results.add(**label, call="dispatch", error=f"{type(exc).__name__}: {exc}"[:300])
                continue
            y = recv_x if isinstance(recv_x, torch.Tensor) else recv_x[0].to(torch.bfloat16)
            for call, fn in (("dispatch", lambda: buf.dispatch(x, **kw)),
                             ("dispatch_cached", lambda: buf.dispatch(x, handle=handle, num_sms=sms)),
                             ("combine", lambda: buf.combine(y, handle=handle, num_sms=sms))):
                run.measure(torch, dist, {**label, "call": call}, fn)
    buf.destroy()
    run.finish(f"h200_deepep_v2_ep{world}", f"DeepEP V2 ElasticBuffer intranode, {world} ranks (not modelled yet)")


SUITES = {"v1-normal": _v1_normal, "v1-ll": _v1_ll, "v2": _v2}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build DeepEP in place")
    b.add_argument("--src", required=True)
    b.add_argument("--variant", choices=("v1-intranode", "v1-full", "v2"), required=True)
    b.add_argument("--jobs", type=int, default=os.cpu_count() or 8)
    r = sub.add_parser("run", help="run a suite on --world-size GPUs")
    r.add_argument("--src", required=True, help="the built DeepEP tree")
    r.add_argument("--suite", choices=sorted(SUITES), required=True)
    r.add_argument("--world-size", type=int, default=8)
    r.add_argument("--out", required=True)
    r.add_argument("--iters", type=int, default=10)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--quick", action="store_true", help="one workload, few configs (a dry run)")
    args = ap.parse_args()
    if args.cmd == "build":
        return build(Path(args.src), args.variant, args.jobs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    commit = Path(args.src, "DEEPEP_COMMIT")
    (out / "provenance.json").write_text(json.dumps(cc.provenance({
        "script": "tools/capture_deepep.py", "suite": args.suite, "world_size": args.world_size,
        "deepep_commit": commit.read_text().strip() if commit.is_file() else "unknown"}), indent=1))
    cc.spawn(SUITES[args.suite], args.world_size, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
