#!/usr/bin/env python3
"""Run tracekit's single-GPU micro-benchmark suite and write one results file for `tracekit calibrate`.

    python3 tools/microbench/run_suite.py --out results.json [--arch sm_90] [--reps 7]

Builds tools/microbench/microbench.cu with nvcc and runs it (the CUDA C++ benchmarks), then, where
PyTorch and CuPy are installed, times the caching allocator (alloc) and a bf16 GEMM while k SMs are
held by a spinning kernel on another stream (gemm_sm_reserved), and an HBM copy on k SMs beside
such GEMMs (copy_beside_gemm: both slowdowns). Writes
{"meta": {...}, "benchmarks": {name: [rows]}}; schemas/microbench.v1.json defines each benchmark's
columns and docs/calibration.md says which fields are fitted from which rows. With --peer on a host of
two or more GPUs it also runs tools/calibrate_gpu.py and adds its NVLink rows (peer_store, peer_flag).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
GEMM_SHAPE = (4096, 7168, 2048)  # M, K, N: A is M x K, B is K x N
GROUPED_SHAPE = (8, 512, 7168, 4096)  # experts, tokens each, K, N: DeepSeek-V3 at EP32 (8 local experts), gate+up
RESERVED_SMS = (0, 8, 16, 24, 32, 48)

SPIN_SRC = r"""
__device__ unsigned long long now_ns() { unsigned long long t; asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t)); return t; }
extern "C" __global__ void reserve(volatile int* flag, int* started, unsigned long long timeout_ns) {
    extern __shared__ int pad[];
    if (threadIdx.x == 0) {
        pad[0] = atomicAdd(started, 1);
        unsigned long long t0 = now_ns();
        while (*flag == 0 && now_ns() - t0 < timeout_ns) {}
    }
}
extern "C" __global__ void wait_started(volatile int* started, int k, unsigned long long timeout_ns) {
    unsigned long long t0 = now_ns();
    while (*started < k && now_ns() - t0 < timeout_ns) {}
}
extern "C" __global__ void set_flag(int* flag) { *flag = 1; }
"""


def nvcc_version(text: str) -> str:
    """'13.0.88' from `nvcc --version` output, or 'unknown'."""
    m = re.search(r"release [\d.]+, V([\d.]+)", text)
    return m.group(1) if m else "unknown"


def merge_results(meta: dict, parts: list[dict]) -> dict:
    """One results file from the benchmark parts; a benchmark name may appear in one part only."""
    benchmarks: dict[str, list] = {}
    for part in parts:
        for name, rows in part.items():
            if name in benchmarks:
                raise ValueError(f"benchmark {name} produced by two parts")
            benchmarks[name] = rows
    return {"meta": meta, "benchmarks": benchmarks}


def _run(cmd: list[str], log, timeout: float) -> str:
    log.write(f"$ {shlex.join(cmd)}\n")
    log.flush()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    log.write(proc.stderr)
    log.flush()
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"run_suite: {cmd[0]} exited with {proc.returncode}; see the log")
    return proc.stdout


def cuda_part(arch: str, reps: int, log, raw_path: str) -> tuple[dict, dict]:
    """Build and run microbench.cu, keeping its raw output in ``raw_path``; returns (device, benchmarks)."""
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "microbench")
        _run(["nvcc", "-O3", "-std=c++17", f"-arch={arch}", "-o", exe, str(HERE / "microbench.cu")], log, 300)
        text = _run([exe, str(reps)], log, 600)
    Path(raw_path).write_text(text)
    out = json.loads(text)
    return out["device"], out["benchmarks"]


def alloc_part(torch, reps: int = 5) -> list[dict]:
    """Caching-allocator time for the receive tensors of one dispatch (warm cache, host clock)."""
    dev = torch.device("cuda")
    rows = []
    for tokens in (128, 1024, 4096, 8192):
        shapes = [((tokens, 7168), torch.bfloat16), ((tokens, 56), torch.float32), ((tokens, 8), torch.int64),
                  ((tokens, 8), torch.float32), ((tokens,), torch.int32), ((8, 24), torch.int32)]
        nbytes = sum(torch.Size(s).numel() * torch.empty((), dtype=d).element_size() for s, d in shapes)
        for _ in range(5):
            held = [torch.empty(s, dtype=d, device=dev) for s, d in shapes]
            del held
        for rep in range(reps):
            samples = []
            for _ in range(200):
                t0 = time.perf_counter_ns()
                held = [torch.empty(s, dtype=d, device=dev) for s, d in shapes]
                t1 = time.perf_counter_ns()
                del held
                samples.append(t1 - t0)
            med = statistics.median(samples)
            rows.append({"method": "torch_empty_set", "tokens": tokens, "tensors": len(shapes), "bytes": nbytes,
                         "ns": med, "ns_per_tensor": med / len(shapes), "samples": 200, "repeat": rep})
    return rows


def _carveout(torch, sms: int) -> bool:
    """Ask cuBLAS(Lt) to leave ``sms`` SMs out of its grid (PyTorch's experimental SM carve-out, the
    cublasLt SM_COUNT_TARGET attribute); False where this PyTorch has no such switch."""
    f = getattr(torch._C, "_set_sm_carveout_experimental", None)
    if f is None:
        return False
    f(sms if sms else None)
    return True


def gemm_part(torch, cp, reps: int = 20) -> list[dict]:
    """bf16 GEMM time while k SMs are held by a persistent spinning kernel on another stream: as
    cuBLAS sizes its grid by default (all SMs), and told to leave those k SMs out (sm_carveout)."""
    rows = []
    for told in (False, True):
        if told and not _carveout(torch, 0):
            break
        rows += _gemm_rows(torch, cp, reps, told)
    _carveout(torch, 0)
    return rows


def grouped_part(torch, cp, reps: int = 20) -> list[dict]:
    """An MoE expert GEMM as the grouped kernel PyTorch ships (torch._grouped_mm: a rank's local experts,
    their tokens stacked) while k SMs are held, as gemm_sm_reserved times a plain GEMM."""
    return _gemm_rows(torch, cp, reps, False, grouped=True)


def _operands(torch, grouped: bool):
    """(callable computing the product, m, k, n, groups) on seeded random bf16 operands."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    if not grouped:
        m, k, n = GEMM_SHAPE
        a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
        b = torch.randn(k, n, device="cuda", dtype=torch.bfloat16, generator=gen)
        return (lambda: a @ b), m, k, n, 1
    g, per, k, n = GROUPED_SHAPE
    a = torch.randn(g * per, k, device="cuda", dtype=torch.bfloat16, generator=gen)
    b = torch.randn(g, n, k, device="cuda", dtype=torch.bfloat16, generator=gen).transpose(-2, -1)  # column-major
    offs = torch.arange(per, g * per + 1, per, device="cuda", dtype=torch.int32)
    return (lambda: torch._grouped_mm(a, b, offs=offs)), g * per, k, n, g


def _gemm_rows(torch, cp, reps: int, told: bool, grouped: bool = False) -> list[dict]:
    mm, m, k, n, groups = _operands(torch, grouped)
    for _ in range(5):
        mm()
    torch.cuda.synchronize()
    mod = cp.RawModule(code=SPIN_SRC)
    reserve, wait_started, set_flag = (mod.get_function(x) for x in ("reserve", "wait_started", "set_flag"))
    smem = 200 * 1024  # one spinning block per SM: no GEMM block fits beside it
    reserve.max_dynamic_shared_size_bytes = smem
    flag = cp.zeros(1, dtype=cp.int32)
    started = cp.zeros(1, dtype=cp.int32)
    s_spin, s_gemm = torch.cuda.Stream(), torch.cuda.Stream()
    cs_spin, cs_gemm = cp.cuda.ExternalStream(s_spin.cuda_stream), cp.cuda.ExternalStream(s_gemm.cuda_stream)
    timeout = cp.uint64(5_000_000_000)
    rows = []
    for sms in RESERVED_SMS:
        flag.fill(0)
        started.fill(0)
        cp.cuda.Device().synchronize()
        if sms:
            with cs_spin:
                reserve((sms,), (128,), (flag, started, timeout), shared_mem=smem)
            with cs_gemm:
                wait_started((1,), (1,), (started, cp.int32(sms), timeout))
        if told:
            _carveout(torch, sms)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        with torch.cuda.stream(s_gemm):
            mm()
            for e0, e1 in events:
                e0.record()
                mm()
                e1.record()
        with cs_gemm:
            set_flag((1,), (1,), (flag,))
        torch.cuda.synchronize()
        got = int(started.get()[0])
        t = statistics.median(e0.elapsed_time(e1) * 1e6 for e0, e1 in events)
        rows.append({"reserved_sms": sms, "sm_carveout": sms if told else 0, "spinners_started": got,
                     "m": m, "k": k, "n": n, "groups": groups, "dtype": "bf16",
                     "time_ns": t, "tflops": 2 * m * k * n / t / 1e3, "reps": reps})
    return rows


COPY_SRC = r"""
extern "C" __global__ void copy16(const int4* __restrict__ src, int4* __restrict__ dst, long long n) {
    extern __shared__ int pad[];  // sized so that one block holds an SM (no second block beside it)
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) dst[i] = src[i];
    if (threadIdx.x == 0 && n < 0) pad[0] = 0;
}
"""
COPY_SMS = (8, 16, 24, 32)
COPY_BYTES = 256 << 20
GEMMS_BESIDE = 8  # back-to-back GEMMs launched after the copy: they outlast it


def copy_gemm_part(torch, cp, reps: int = 10) -> list[dict]:
    """An HBM-to-HBM copy on k SMs (a stand-in for a communication kernel's send loop: its HBM reads
    and writes, one block per SM) timed alone and while bf16 GEMMs run on the other SMs; and those
    GEMMs' time beside it against the same GEMMs alone (HBM and L2 shared with compute)."""
    m, k, n = GEMM_SHAPE
    gen = torch.Generator(device="cuda").manual_seed(1)
    a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16, generator=gen)
    b = torch.randn(k, n, device="cuda", dtype=torch.bfloat16, generator=gen)
    src = cp.ones(COPY_BYTES // 4, dtype=cp.int32)
    dst = cp.zeros_like(src)
    copy = cp.RawModule(code=COPY_SRC).get_function("copy16")
    smem = 160 * 1024
    copy.max_dynamic_shared_size_bytes = smem
    n16 = cp.int64(COPY_BYTES // 16)
    s_copy, s_gemm = torch.cuda.Stream(), torch.cuda.Stream()
    cs_copy = cp.cuda.ExternalStream(s_copy.cuda_stream)

    def one(sms: int, with_copy: bool, with_gemm: bool) -> tuple[float, float]:
        ec0, ec1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        eg0, eg1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        if with_copy:
            with torch.cuda.stream(s_copy):
                ec0.record()
                with cs_copy:
                    copy((sms,), (512,), (src, dst, n16), shared_mem=smem)
                ec1.record()
        if with_gemm:
            with torch.cuda.stream(s_gemm):
                eg0.record()
                for _ in range(GEMMS_BESIDE):
                    a @ b
                eg1.record()
        torch.cuda.synchronize()
        return (ec0.elapsed_time(ec1) * 1e6 if with_copy else 0.0,
                eg0.elapsed_time(eg1) * 1e6 / GEMMS_BESIDE if with_gemm else 0.0)

    for _ in range(3):  # warm: cuBLAS heuristics, module load, clocks
        one(COPY_SMS[0], True, True)
    gemm_alone = statistics.median(one(0, False, True)[1] for _ in range(reps))
    rows = []
    for told in (False, True):  # the GEMMs' grid over all SMs, then told to leave the copy's SMs out
        if told and not _carveout(torch, 0):
            break
        for sms in COPY_SMS:
            alone = statistics.median(one(sms, True, False)[0] for _ in range(reps))
            if told:
                _carveout(torch, sms)
            beside = [one(sms, True, True) for _ in range(reps)]
            _carveout(torch, 0)
            c, g = statistics.median(x[0] for x in beside), statistics.median(x[1] for x in beside)
            rows.append({"sms": sms, "sm_carveout": sms if told else 0, "bytes": COPY_BYTES, "copy_alone_ns": alone,
                         "copy_beside_gemm_ns": c, "copy_slowdown": c / alone, "gemm_alone_ns": gemm_alone,
                         "gemm_beside_copy_ns": g, "gemm_slowdown": g / gemm_alone, "gemms": GEMMS_BESIDE,
                         "m": m, "k": k, "n": n, "reps": reps})
    return rows


def _optional(name: str, fn, log) -> dict:
    """fn()'s {benchmark: rows}, or {} with the error in the log: a failed optional part keeps the rest."""
    t0 = time.perf_counter()
    try:
        part = fn()
    except Exception as exc:  # noqa: BLE001 - any failure of an optional part is logged, not fatal
        log.write(f"{name} failed: {type(exc).__name__}: {exc}\n")
        return {}
    log.write(f"{name}: {sum(len(r) for r in part.values())} rows in {time.perf_counter() - t0:.1f} s\n")
    return part


def peer_part(log) -> dict:
    """Two or more GPUs: tools/calibrate_gpu.py's NVLink figures (SM stores into the peer, copy engine,
    flag ping-pong) as peer_store and peer_flag rows (recorded; tracekit calibrate fits none of them)."""
    sys.path.insert(0, str(HERE))
    from convert_legacy import convert

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "peer.json")
        _run([sys.executable, str(HERE.parent / "calibrate_gpu.py"), "--out", out], log, 600)
        doc = json.loads(Path(out).read_text())
    if "peer" not in doc:
        log.write("fewer than two GPUs with peer access: peer_store and peer_flag skipped\n")
        return {}
    converted = convert(doc, "tools/calibrate_gpu.py")["benchmarks"]
    return {k: converted[k] for k in ("peer_store", "peer_flag")}


def _driver_version() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=30).stdout
        return out.strip().splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="results JSON to write")
    ap.add_argument("--log", help="log file (default: OUT with .log)")
    ap.add_argument("--arch", default="sm_90", help="nvcc -arch (sm_90 for H100/H200, sm_80 for A100)")
    ap.add_argument("--reps", type=int, default=7, help="timed repeats per configuration (median taken)")
    ap.add_argument("--peer", action="store_true",
                    help="also run the two-GPU NVLink part (tools/calibrate_gpu.py, needs CuPy and 2 GPUs)")
    args = ap.parse_args()
    log_path = args.log or str(Path(args.out).with_suffix(".log"))
    with open(log_path, "w") as log:
        nvcc = subprocess.run(["nvcc", "--version"], stdout=subprocess.PIPE, text=True).stdout
        device, benchmarks = cuda_part(args.arch, args.reps, log, str(Path(args.out).with_suffix(".cuda.json")))
        parts = [benchmarks]
        meta = {"gpu": device["name"], "sms": device["sms"], "l2_bytes": device["l2_bytes"],
                "compute_capability": device["cc"], "driver": _driver_version(), "cuda": nvcc_version(nvcc),
                "torch": None, "torch_cuda": None, "host": platform.node(),
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "command": "python3 tools/microbench/run_suite.py " + shlex.join(sys.argv[1:]),
                "reps": args.reps}
        try:
            import torch
        except ImportError:
            log.write("PyTorch not installed: alloc and gemm_sm_reserved skipped\n")
        else:
            meta["torch"], meta["torch_cuda"] = torch.__version__, torch.version.cuda
            parts.append(_optional("alloc", lambda: {"alloc": alloc_part(torch)}, log))
            try:
                import cupy as cp
            except ImportError:
                log.write("CuPy not installed: gemm_sm_reserved skipped\n")
            else:
                parts.append(_optional("gemm_sm_reserved", lambda: {"gemm_sm_reserved": gemm_part(torch, cp)}, log))
                parts.append(_optional("grouped_gemm_sm_reserved",
                                       lambda: {"grouped_gemm_sm_reserved": grouped_part(torch, cp)}, log))
                parts.append(_optional("copy_beside_gemm", lambda: {"copy_beside_gemm": copy_gemm_part(torch, cp)}, log))
        if args.peer:
            parts.append(_optional("peer", lambda: peer_part(log), log))
        result = merge_results(meta, parts)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"run_suite: wrote {args.out} ({sum(len(r) for r in result['benchmarks'].values())} rows)")


if __name__ == "__main__":
    main()
