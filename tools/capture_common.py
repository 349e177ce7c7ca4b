"""Shared parts of the multi-GPU capture scripts (tools/capture_deepep.py, tools/capture_nccl_moe.py).

One process per GPU, spawned with torch.multiprocessing (``spawn``), NCCL process group, NVLink
multicast off in every process (NCCL_NVLS_ENABLE=0, TORCH_SYMM_MEM_DISABLE_MULTICAST=1,
NVSHMEM_DISABLE_NVLS=1: on the lent machines multicast can take the host's GPUs out of service).
Provenance (GPU, driver, CUDA, PyTorch, NCCL, DeepEP commit, date, command, NVLink topology) goes
into ``provenance.json``; each measurement is one JSON line of ``results.jsonl``; routings are
dumped as ``[ranks, tokens, topk]`` .npz files that ``tracekit import routing`` reads; measured
calls become validation rows (``validation_rows.toml``, the format of validation/rows/).
"""

from __future__ import annotations

import datetime
import gzip
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
os.environ.update(SAFE_ENV)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(worker: Callable[..., None], world_size: int, *args: Any) -> None:
    """Run ``worker(rank, world_size, *args)`` in one process per GPU with an NCCL group initialised."""
    import torch
    import torch.multiprocessing as mp

    if torch.cuda.device_count() < world_size:
        raise SystemExit(f"need {world_size} GPUs, found {torch.cuda.device_count()}")
    mp.spawn(_entry, args=(world_size, free_port(), worker, args), nprocs=world_size, join=True)


def _entry(rank: int, world_size: int, port: int, worker: Callable[..., None], args: tuple) -> None:
    os.environ.update(SAFE_ENV)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank)})
    import torch
    import torch.distributed as dist

    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world_size, device_id=torch.device("cuda", rank))
    try:
        worker(rank, world_size, *args)
    finally:
        dist.barrier()
        dist.destroy_process_group()


def _cmd(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"unavailable: {exc}"


def provenance(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Versions and machine of this run (call in the parent process, CUDA may be initialised)."""
    import torch

    nccl = torch.cuda.nccl.version() if torch.cuda.is_available() else ()
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
        "cuda": torch.version.cuda, "nccl": ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "driver": _cmd("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader").splitlines()[:1],
        "nvlink_topology": _cmd("nvidia-smi", "topo", "-m"),
        "env": {k: os.environ.get(k) for k in SAFE_ENV},
        **(extra or {}),
    }


def routing(torch, rank: int, tokens: int, experts: int, topk: int, hot: float, seed: int):
    """DeepEP-test-style routing on this rank's GPU: scores |randn| + 1, top-k; ``hot`` > 0 adds a Zipf
    popularity bias (exponent ``hot``) to the scores of experts 0, 1, 2, ... (hot experts)."""
    g = torch.Generator(device=f"cuda:{rank}")
    g.manual_seed(seed * 1000 + rank)
    scores = torch.randn(tokens, experts, device=f"cuda:{rank}", generator=g).abs() + 1
    if hot > 0:
        bias = 1.0 / torch.arange(1, experts + 1, device=scores.device, dtype=torch.float32) ** hot
        scores += 2.0 * bias / bias.max()
    weights, idx = torch.topk(scores, topk, dim=1)
    return idx.to(torch.int64), (weights / weights.sum(dim=1, keepdim=True)).float()


def gather_routing(torch, dist, idx, weights, out: Path, name: str, rank: int, **meta: int) -> str | None:
    """Save every rank's routing as ``routing_<name>.npz`` ([ranks, tokens, topk]) on rank 0."""
    import numpy as np

    all_idx = [torch.empty_like(idx) for _ in range(dist.get_world_size())]
    all_w = [torch.empty_like(weights) for _ in range(dist.get_world_size())]
    dist.all_gather(all_idx, idx)
    dist.all_gather(all_w, weights)
    if rank != 0:
        return None
    path = out / f"routing_{name}.npz"
    np.savez_compressed(path, topk_idx=torch.stack(all_idx).cpu().numpy().astype(np.int64),
                        topk_weights=torch.stack(all_w).cpu().numpy().astype(np.float32),
                        **{k: np.int64(v) for k, v in meta.items()})
    return path.name


def gzip_trace(path: Path) -> Path:
    """Compress a Chrome-trace JSON in place (``.json`` -> ``.json.gz``)."""
    gz = Path(str(path) + ".gz")
    with open(path, "rb") as f, gzip.open(gz, "wb", compresslevel=9) as g:
        shutil.copyfileobj(f, g)
    path.unlink()
    return gz


class Results:
    """``results.jsonl`` on rank 0: one line per measurement, flushed as it comes (a killed run keeps its lines)."""

    def __init__(self, out: Path) -> None:
        self.path = out / "results.jsonl"
        self.rows: list[dict[str, Any]] = []

    def add(self, **row: Any) -> None:
        row["t_utc"] = time.strftime("%H:%M:%S", time.gmtime())
        self.rows.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2] if len(s) % 2 else 0.5 * (s[len(s) // 2 - 1] + s[len(s) // 2])


def write_rows(path: Path, family: str, prov: dict[str, Any], recipe: str, rows: list[dict[str, Any]]) -> None:
    """Measured calls as validation rows (validation/rows/ format); paths are made relative to the repo
    once the folder is committed (the caller passes them as they will be)."""
    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }"
        return json.dumps(str(v))

    lines = [f"# Written by {prov.get('command', 'a capture script')}; move to validation/rows/{family}.toml.",
             f'family = "{family}"', 'status = "modelled"', "", "[provenance]",
             'source = "tracekit capture (tools/capture_deepep.py / tools/capture_nccl_moe.py)"',
             f"hardware = {val(', '.join(prov.get('gpus', [])) + '; driver ' + ', '.join(prov.get('driver', [])))}",
             f"software = {val('PyTorch %s, CUDA %s, NCCL %s, DeepEP %s' % (prov.get('torch'), prov.get('cuda'), prov.get('nccl'), prov.get('deepep_commit', 'n/a')))}",
             f"date = {val(prov.get('date_utc'))}", f"recipe = {val(recipe)}", f"command = {val(prov.get('command'))}", ""]
    for r in rows:
        lines.append("[[rows]]")
        lines += [f"{k} = {val(v)}" for k, v in r.items()]
        lines.append("")
    path.write_text("\n".join(lines))


def timed_collective(torch, dist, fn: Callable[[], Any], iters: int, warmup: int = 2) -> dict[str, float]:
    """Time a collective call: every iteration starts after a barrier; per iteration the slowest rank's
    CUDA-event time counts (the call is done when every rank is). Returns median / min of those, in us."""
    for _ in range(warmup):
        fn()
    per_iter = []
    for _ in range(iters):
        dist.barrier()
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        per_iter.append(a.elapsed_time(b) * 1e3)
    t = torch.tensor(per_iter, device="cuda")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    slowest = t.tolist()
    return {"us_median": median(slowest), "us_min": min(slowest), "iters": iters}
