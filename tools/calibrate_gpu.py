#!/usr/bin/env python3
"""Micro-benchmarks behind the GPU fields of tracekit's hardware profiles.

Run on a GPU host with CuPy (one or two GPUs):  python3 tools/calibrate_gpu.py --out calib.json
Measures, per GPU: the copy bandwidth of one SM (one thread block of 512 threads, 16-byte vector
loads and stores, HBM to HBM), of k SMs, of the whole GPU, the launch-to-launch time of an empty
kernel; with two GPUs and peer access: the bandwidth of SM stores into the peer GPU's memory
(one SM and many), copy-engine peer bandwidth, and the one-way flag latency between GPUs measured
by a ping-pong of release stores and acquire polls. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import cupy as cp

COPY_SRC = r"""
extern "C" __global__ void copy16(const int4* __restrict__ src, int4* __restrict__ dst, long long n) {
    long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        dst[i] = src[i];
    }
}
extern "C" __global__ void empty() {}
extern "C" __global__ void pingpong(volatile int* mine, volatile int* peer, int rounds, int first,
                                    long long* cycles) {
    if (threadIdx.x != 0) return;
    long long t0 = clock64();
    for (int r = 1; r <= rounds; ++r) {
        if (first) {
            peer[0] = r;
            __threadfence_system();
            while (mine[0] < r) {}
        } else {
            while (mine[0] < r) {}
            peer[0] = r;
            __threadfence_system();
        }
    }
    cycles[0] = clock64() - t0;
}
"""


def _time_kernel(fn, repeat=10):
    start, end = cp.cuda.Event(), cp.cuda.Event()
    fn()
    cp.cuda.Device().synchronize()
    start.record()
    for _ in range(repeat):
        fn()
    end.record()
    end.synchronize()
    return cp.cuda.get_elapsed_time(start, end) / 1e3 / repeat


def copy_bandwidth(mod, src, dst, blocks, threads=512):
    n = src.size // 4  # int4 elements from int32 buffer
    kernel = mod.get_function("copy16")
    secs = _time_kernel(lambda: kernel((blocks,), (threads,), (src, dst, cp.int64(n))))
    return src.nbytes / secs / 1e9  # bytes copied (read + write counted once) per second


def launch_time(mod, repeat=2000):
    kernel = mod.get_function("empty")
    secs = _time_kernel(lambda: kernel((1,), (1,), ()), repeat=repeat)
    return secs * 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="calibration.json")
    ap.add_argument("--mbytes", type=int, default=256, help="buffer size per copy, MiB")
    args = ap.parse_args()
    ndev = cp.cuda.runtime.getDeviceCount()
    result = {"devices": [], "host": platform.node(), "cupy": cp.__version__,
              "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    nbytes = args.mbytes << 20
    for d in range(ndev):
        with cp.cuda.Device(d):
            props = cp.cuda.runtime.getDeviceProperties(d)
            mod = cp.RawModule(code=COPY_SRC)
            src = cp.ones(nbytes // 4, dtype=cp.int32)
            dst = cp.zeros_like(src)
            sms = props["multiProcessorCount"]
            per_blocks = {}
            for b in (1, 2, 4, 8, 10, 20, 24, 32, sms, 2 * sms, 4 * sms):
                per_blocks[b] = copy_bandwidth(mod, src, dst, b)
            info = {
                "device": d, "name": props["name"].decode() if isinstance(props["name"], bytes) else props["name"],
                "sms": sms, "clock_khz": props["clockRate"],
                "copy_gbyte_s_by_blocks": per_blocks,
                "sm_copy_gbyte_s": per_blocks[1],
                "hbm_copy_gbyte_s_rw": 2 * max(per_blocks.values()),
                "empty_kernel_launch_ns": launch_time(mod),
            }
            result["devices"].append(info)
            print(f"GPU{d} {info['name']}: 1 SM copy {per_blocks[1]:.1f} GB/s; "
                  + ", ".join(f"{b} blk {v:.0f}" for b, v in per_blocks.items())
                  + f"; launch {info['empty_kernel_launch_ns']:.0f} ns", flush=True)
            del src, dst
    if ndev >= 2 and cp.cuda.runtime.deviceCanAccessPeer(0, 1):
        peer = {}
        with cp.cuda.Device(0):
            cp.cuda.runtime.deviceEnablePeerAccess(1)
        with cp.cuda.Device(1):
            cp.cuda.runtime.deviceEnablePeerAccess(0)
        with cp.cuda.Device(1):
            remote = cp.zeros(nbytes // 4, dtype=cp.int32)
            flag1 = cp.zeros(1, dtype=cp.int32)
        with cp.cuda.Device(0):
            mod = cp.RawModule(code=COPY_SRC)
            local = cp.ones(nbytes // 4, dtype=cp.int32)
            by_blocks = {}
            for b in (1, 2, 4, 8, 10, 16, 20, 32, 64, 132):
                by_blocks[b] = copy_bandwidth(mod, local, remote, b)
            peer["sm_store_to_peer_gbyte_s_by_blocks"] = by_blocks
            peer["sm_store_to_peer_gbyte_s_1sm"] = by_blocks[1]
            secs = _time_kernel(lambda: remote.data.copy_from_device_async(local.data, local.nbytes), repeat=5)
            peer["copy_engine_peer_gbyte_s"] = local.nbytes / secs / 1e9
            flag0 = cp.zeros(1, dtype=cp.int32)
            cyc0 = cp.zeros(1, dtype=cp.int64)
        with cp.cuda.Device(1):
            mod1 = cp.RawModule(code=COPY_SRC)
            cyc1 = cp.zeros(1, dtype=cp.int64)
        rounds = 2000
        with cp.cuda.Device(1):
            s1 = cp.cuda.Stream(non_blocking=True)
        with cp.cuda.Device(1), s1:
            mod1.get_function("pingpong")((1,), (32,), (flag1, flag0, cp.int32(rounds), cp.int32(0), cyc1))
        with cp.cuda.Device(0):
            t0 = time.perf_counter()
            mod.get_function("pingpong")((1,), (32,), (flag0, flag1, cp.int32(rounds), cp.int32(1), cyc0))
            cp.cuda.Device(0).synchronize()
            wall = time.perf_counter() - t0
        with cp.cuda.Device(1):
            cp.cuda.Device(1).synchronize()
        clock_khz = result["devices"][0]["clock_khz"]
        rtt_ns = float(cyc0.get()[0]) / rounds / (clock_khz * 1e3) * 1e9
        peer["pingpong_round_trip_ns"] = rtt_ns
        peer["flag_one_way_ns"] = rtt_ns / 2
        peer["pingpong_wall_s"] = wall
        result["peer"] = peer
        print(f"peer: 1 SM store {by_blocks[1]:.1f} GB/s; "
              + ", ".join(f"{b} blk {v:.0f}" for b, v in by_blocks.items())
              + f"; copy engine {peer['copy_engine_peer_gbyte_s']:.0f} GB/s; flag one-way {rtt_ns / 2:.0f} ns",
              flush=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=2, default=str)


if __name__ == "__main__":
    main()
