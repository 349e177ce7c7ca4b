"""Built-in sweeps. ``deepep-tune`` mirrors the tuning loops at the end of DeepEP's
``tests/test_intranode.py`` and ``tests/test_internode.py`` (read from the DeepEP repository):

* one node (EP <= GPUs per node): SMs 24, NVL ring 256 tokens; dispatch NVL chunk 4, 6, ..., 32 for
  FP8 and for BF16 payloads; combine NVL chunk 1..6.
* several nodes: SMs 24, NVL ring 512 tokens (720 at EP144/160), RDMA ring 128; dispatch NVL chunk
  4, 8, ..., 44 x RDMA chunk 4, 8, ..., 32 for FP8 and BF16; combine NVL chunk 1..12 x RDMA chunk
  8, 12, ..., 32.

Each loop is one block ranked by its phase's latency (DeepEP keeps the fastest configuration), and
the best configuration of each is printed in the style of DeepEP's tests, with the replay's
DeepEP-definition bandwidths. Each loop also has DeepEP's default config as a one-point block
(``<loop>-default``: ``Buffer.num_sms`` = 20 and ``Buffer.get_dispatch_config`` /
``get_combine_config`` for the EP size, as in :func:`tracekit.model.config.deepep_defaults`), printed
beside the best so that a user sees what tuning gains.
"""

from __future__ import annotations

import polars as pl

from tracekit.errors import TracekitError
from tracekit.hardware import load_profile
from tracekit.model.config import DEFAULT_NUM_SMS, deepep_defaults
from tracekit.sweep.best import best_points
from tracekit.sweep.grid import Block, Grid, Workload, expand
from tracekit.workload.synth import SynthConfig

PRESETS = ("deepep-tune",)
#: DeepEP's tests tune at 24 SMs
DEEPEP_TUNE_SMS = (24,)


def deepep_tune(ep: int, tokens: int | None = None, hardware: str = "h800-ib",
                sms: tuple[int, ...] = DEEPEP_TUNE_SMS) -> Grid:
    hw = load_profile(hardware)
    gpn = hw.system.gpus_per_node
    try:
        synth = SynthConfig(preset="prefill", ep=ep, gpus_per_node=gpn, tokens=tokens).check()
    except TracekitError as exc:
        raise exc.located("--preset deepep-tune") from None
    wl = Workload(f"prefill-ep{ep}-t{synth.tokens_per_rank}", ep, gpn, synth=tuple(sorted(synth.to_dict().items())))
    base = dict(workloads=(wl,), profiles=((hardware, hw),))
    sm = ("num_sms", tuple(sms))
    if ep <= gpn:
        ring = (("dispatch.nvl_recv_buffer", 256), ("combine.nvl_recv_buffer", 256))
        blocks = [Block(f"dispatch-{d}", swept=(sm, ("dispatch.nvl_send_chunk", tuple(range(4, 33, 2)))),
                        fixed=ring + (("dispatch_dtype", d),), metric="dispatch.latency_ns", **base)
                  for d in ("fp8", "bf16")]
        blocks.append(Block("combine", swept=(sm, ("combine.nvl_send_chunk", tuple(range(1, 7)))), fixed=ring,
                            metric="combine.latency_ns", **base))
    else:
        nvl = 720 if ep in (144, 160) else 512
        ring = tuple((f"{p}.{k}", v) for p in ("dispatch", "combine")
                     for k, v in (("nvl_recv_buffer", nvl), ("rdma_recv_buffer", 128)))
        blocks = [Block(f"dispatch-{d}", swept=(sm, ("dispatch.nvl_send_chunk", tuple(range(4, 45, 4))),
                                                ("dispatch.rdma_send_chunk", tuple(range(4, 33, 4)))),
                        fixed=ring + (("dispatch_dtype", d),), metric="dispatch.latency_ns", **base)
                  for d in ("fp8", "bf16")]
        blocks.append(Block("combine", swept=(sm, ("combine.nvl_send_chunk", tuple(range(1, 13))),
                                              ("combine.rdma_send_chunk", tuple(range(8, 33, 4)))),
                            fixed=ring, metric="combine.latency_ns", **base))
    blocks += [_default_block(b, ep, internode=ep > gpn) for b in list(blocks)]
    return expand(blocks, source=f"deepep-tune EP{ep}", group_by=("block", "workload", "profile"),
                  plot=("dispatch.nvl_send_chunk", "dispatch.rdma_send_chunk"))


def _default_block(tuned: Block, ep: int, internode: bool) -> Block:
    """DeepEP's default config for ``tuned``'s phase as a block of one point (same workload and dtype)."""
    phase = tuned.metric.split(".")[0]
    d = deepep_defaults(ep, phase)
    knobs = [("num_sms", DEFAULT_NUM_SMS), (f"{phase}.nvl_send_chunk", d.nvl_send_chunk),
             (f"{phase}.nvl_recv_buffer", d.nvl_recv_buffer)]
    if internode:
        knobs += [(f"{phase}.rdma_send_chunk", d.rdma_send_chunk), (f"{phase}.rdma_recv_buffer", d.rdma_recv_buffer)]
    swept = tuple((k, (v,)) for k, v in knobs)
    fixed = tuple((k, v) for k, v in tuned.fixed if k == "dispatch_dtype")
    return Block(f"{tuned.label}-default", workloads=tuned.workloads, profiles=tuned.profiles, swept=swept,
                 fixed=fixed, metric=tuned.metric, goal=tuned.goal)


def best_lines(grid: Grid, results: pl.DataFrame) -> list[str]:
    """DeepEP-style lines: ``[tuning] Best dispatch (FP8): SMs 24, NVL chunk 8, RDMA chunk 16: ...``."""
    best = best_points(grid, results)
    points = {row["block"]: results.filter(pl.col("point") == row["point"]).row(0, named=True)
              for row in best.iter_rows(named=True)}
    out = []
    for block, full in points.items():
        if block.endswith("-default"):
            continue
        phase = "dispatch" if block.startswith("dispatch") else "combine"
        what = f"dispatch ({block.split('-', 1)[1].upper()})" if phase == "dispatch" else "combine"
        out.append(f"[tuning] Best {what}: {_config_text(full, phase)}")
        default = points.get(f"{block}-default")
        if default is not None:
            gain = default[f"{phase}.latency_ns"] / full[f"{phase}.latency_ns"] - 1
            out.append(f"[tuning]   DeepEP default: {_config_text(default, phase)} "
                       f"({gain:+.1%} against the best)")
    return out


def _config_text(full: dict, phase: str) -> str:
    chunks = f"NVL chunk {full[f'{phase}.nvl_send_chunk']}" if f"{phase}.nvl_send_chunk" in full else ""
    if full.get(f"{phase}.rdma_send_chunk") is not None:
        chunks += f", RDMA chunk {full[f'{phase}.rdma_send_chunk']}"
    bw = f"{full[f'{phase}.bandwidth_gbps.nvlink']:.2f} GB/s (NVL)"
    if full[f"{phase}.bandwidth_gbps.rdma"]:
        bw = f"{full[f'{phase}.bandwidth_gbps.rdma']:.2f} GB/s (RDMA), " + bw
    return f"SMs {full['num_sms']}, {chunks}: {full[f'{phase}.latency_ns'] / 1e3:.2f} us, {bw}"
