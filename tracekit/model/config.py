"""Replay configuration: DeepEP-like kernel settings, granularity and model switches.

Defaults follow DeepEP V1's ``Buffer.get_dispatch_config`` / ``get_combine_config`` tables (20 SMs;
NVL chunk, NVL buffer, RDMA chunk and RDMA buffer sizes in tokens, by EP size).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tracekit.errors import TracekitError
from tracekit.model.compute import ModelDesc

#: DeepEP V1 config tables: ep_size -> (nvl_send_chunk, nvl_recv_buffer, rdma_send_chunk, rdma_recv_buffer).
DEEPEP_DISPATCH = {
    2: (24, 256, 6, 128), 4: (6, 256, 6, 128), 8: (6, 256, 6, 128), 16: (36, 288, 20, 128),
    24: (32, 288, 8, 128), 32: (32, 288, 8, 128), 48: (32, 288, 8, 128), 64: (32, 288, 8, 128),
    96: (20, 480, 12, 128), 128: (20, 560, 12, 128), 144: (32, 720, 12, 128), 160: (28, 720, 12, 128),
}
DEEPEP_COMBINE = {
    2: (10, 256, 6, 128), 4: (9, 256, 6, 128), 8: (4, 256, 6, 128), 16: (4, 288, 12, 128),
    24: (1, 288, 8, 128), 32: (1, 288, 8, 128), 48: (1, 288, 8, 128), 64: (1, 288, 8, 128),
    96: (1, 480, 8, 128), 128: (1, 560, 8, 128), 144: (2, 720, 8, 128), 160: (2, 720, 8, 128),
}
DEFAULT_NUM_SMS = 20
#: Input bounds, checked before anything is sized by them (not model parameters): no GPU has more
#: than 1024 SMs (H800: 132), and rings, chunks and expert sizes above 2^20 tokens are typos.
MAX_NUM_SMS = 1024
MAX_TOKENS = 1 << 20

MODES = ("normal", "low_latency", "zero_buffer", "nccl")
GRANULARITIES = ("chunk", "token", "packet")
DOORBELLS = ("gpu", "cpu_proxy")
CREDIT_RETURN = ("after_consume", "early")
SCHEDULES = ("serial", "two_microbatch", "ll_hook", "fused", "dualpipe")  # tracekit.model.schedule
FABRICS = ("static", "dynamic")


@dataclass(frozen=True)
class PhaseConfig:
    """Ring and chunk sizes of one phase, in tokens.

    >>> PhaseConfig(nvl_send_chunk=8, nvl_recv_buffer=256, rdma_send_chunk=16, rdma_recv_buffer=128).nvl_send_chunk
    8
    """

    nvl_send_chunk: int
    nvl_recv_buffer: int
    rdma_send_chunk: int
    rdma_recv_buffer: int


def deepep_defaults(ep_size: int, phase: str) -> PhaseConfig:
    """DeepEP's recommended config for ``ep_size`` ranks (nearest table entry at or above)."""
    table = DEEPEP_DISPATCH if phase == "dispatch" else DEEPEP_COMBINE
    keys = sorted(table)
    key = next((k for k in keys if k >= ep_size), keys[-1])
    return PhaseConfig(*table[key])


@dataclass(frozen=True)
class ReplayConfig:
    """Everything a replay needs besides the routing table and the hardware profile.

    >>> ReplayConfig(num_sms=24, dispatch_dtype="bf16").resolved(16).dispatch.nvl_send_chunk  # DeepEP's EP16 default
    36

    * ``granularity``: ``chunk`` (default) moves DeepEP chunks through every stage; ``token`` uses
      chunks of one token (slow, finest SM/NVLink detail); ``packet`` keeps chunks on the GPUs but
      splits each RDMA chunk into MTU packets on the NIC and switch ports (queueing, buffers and
      flow control at packet level).
    * ``doorbell``: ``gpu`` (IBGDA: the GPU posts WQEs and rings) or ``cpu_proxy`` (one proxy thread
      per GPU posts every RDMA message, serially).
    * ``adaptive_routing``: packets of one QP may take different paths, so the tail update (an RDMA
      atomic) must wait for the write's acknowledgement: one extra round trip per chunk.
    * ``credit_return``: ``after_consume`` (correct) or ``early`` (receivers return ring credits
      before copying out: a deliberately broken protocol for the hazard checker).
    * ``cached``: reuse the previous layout (DeepEP cached mode): no notify, no CPU sync.
    * ``expert_gemm``: run each rank's expert GEMMs (three matrices of ``hidden x expert_ffn`` per
      expert, roofline of ``gpu.gemm_tflops`` and HBM weight reads) between dispatch and combine;
      a rank starts its combine when its experts are done, so load imbalance shows in the tail.
    * ``fabric``: ``static`` (default: switch ports with per-port buffers and credit-style flow control)
      or ``dynamic`` (RoCE: packets, shared-buffer switches, PFC, ECN, DCQCN, loss recovery from the
      profile's ``[fabric]`` section; see ``tracekit.fabric`` and ``docs/fabric.md``).
    * ``record_memops``: also record the memory-level operations of the NVLink rings (intranode
      dispatch) for the hazard checker (``tracekit fuzz --check``).
    * ``min_chunk_tokens``: at ``chunk`` granularity, DeepEP chunks smaller than this (combine uses
      1-token NVLink chunks at EP24-64) are merged into model chunks of this many tokens; per-token
      costs are still charged per token. ``token`` granularity ignores it.
    * ``nccl_channels``: ``--mode nccl`` (an NCCL all-to-all, e.g. a capture's traffic matrix): the
      kernel's channels, one block each (default 32: the grid of ``ncclDevKernel_SendRecv`` in
      sample_traces/captures/alltoall_2xh200, NCCL 2.28 on two H200s).
    * ``forward_window``: between nodes, the forwarder copies each source's tokens for one local GPU
      in NVLink chunks (at most ``nvl_send_chunk`` tokens) as each RDMA chunk arrives, as DeepEP's
      forwarder copies whatever has arrived. Default (``None``): per RDMA chunk at ``token``
      granularity; at ``chunk`` granularity copies of consecutive chunks merge until they hold
      ``min_chunk_tokens`` on average (each chunk still pays its synchronisation). A given value is a
      what-if: each copy waits for that many consecutive RDMA chunks (at most half the ring).
    * ``schedule``: ``None`` (default) replays dispatch and combine only, back to back; a name from
      ``SCHEDULES`` replays whole layers, compute included (:mod:`tracekit.overlap`), with the layer
      described by ``model`` (default :class:`ModelDesc`, its ``expert_ffn`` taken from ``expert_ffn``).
    """

    mode: str = "normal"
    num_sms: int = DEFAULT_NUM_SMS
    dispatch: PhaseConfig | None = None
    combine: PhaseConfig | None = None
    granularity: str = "chunk"
    doorbell: str = "gpu"
    adaptive_routing: bool = False
    credit_return: str = "after_consume"
    cached: bool = False
    dispatch_dtype: str | None = None
    combine_dtype: str | None = None
    meta_bytes_per_token: int | None = None
    min_chunk_tokens: int = 4
    record_memops: bool = False
    expert_gemm: bool = False
    expert_ffn: int = 2048
    forward_window: int | None = None
    schedule: str | None = None
    model: ModelDesc | None = None
    nccl_channels: int = 32
    fabric: str = "static"
    seed: int = 0
    hardware_overrides: dict[str, Any] = field(default_factory=dict)

    @property
    def num_channels(self) -> int:
        return max(self.num_sms // 2, 1)

    def resolved(self, ep_size: int) -> "ReplayConfig":
        """Fill DeepEP defaults for ``ep_size`` and check consistency."""
        cfg = replace(
            self,
            dispatch=self.dispatch or deepep_defaults(ep_size, "dispatch"),
            combine=self.combine or deepep_defaults(ep_size, "combine"),
        )
        cfg.check()
        return cfg

    def model_desc(self) -> ModelDesc:
        """The layer the schedule computes: ``model``, else the defaults with ``expert_ffn``."""
        return self.model if self.model is not None else ModelDesc(expert_ffn=self.expert_ffn)

    def payload_dtype(self, meta: Any, phase: str) -> str:
        """The payload type of ``phase``: the override if given, else the routing table's."""
        if phase == "dispatch":
            return self.dispatch_dtype or meta.dispatch_dtype
        return self.combine_dtype or meta.combine_dtype

    def model_chunks(self, pc: PhaseConfig) -> PhaseConfig:
        """The chunk sizes the model moves: ``token`` granularity moves single tokens; ``chunk`` and
        ``packet`` merge chunks below ``min_chunk_tokens`` (never beyond the ring's capacity)."""
        if self.granularity == "token":
            return replace(pc, nvl_send_chunk=1, rdma_send_chunk=1)
        m = max(self.min_chunk_tokens, 1)
        return replace(pc, nvl_send_chunk=min(max(pc.nvl_send_chunk, m), pc.nvl_recv_buffer),
                       rdma_send_chunk=min(max(pc.rdma_send_chunk, m), pc.rdma_recv_buffer))

    def check(self) -> None:
        def bad(flag: str, value: Any, expected: str, example: object) -> TracekitError:
            return TracekitError(f"{flag}={value!r}: expected {expected}", fix=f"e.g. {flag} {example}")

        if self.mode not in MODES:
            raise bad("--mode", self.mode, f"one of {', '.join(MODES)}", MODES[0])
        if self.granularity not in GRANULARITIES:
            raise bad("--granularity", self.granularity, f"one of {', '.join(GRANULARITIES)}", GRANULARITIES[0])
        if self.doorbell not in DOORBELLS:
            raise bad("--doorbell", self.doorbell, f"one of {', '.join(DOORBELLS)}", DOORBELLS[0])
        if self.credit_return not in CREDIT_RETURN:
            raise bad("--credit-return", self.credit_return, f"one of {', '.join(CREDIT_RETURN)}", CREDIT_RETURN[0])
        if self.fabric not in FABRICS:
            raise bad("--fabric", self.fabric, f"one of {', '.join(FABRICS)}", FABRICS[1])
        if self.fabric == "dynamic" and self.granularity == "packet":
            raise TracekitError("--fabric dynamic simulates packets itself; --granularity packet would model them twice",
                                fix="use --granularity chunk (or token) with --fabric dynamic")
        if self.forward_window is not None and self.forward_window < 1:
            raise TracekitError(f"forward_window={self.forward_window}: expected a positive number of RDMA chunks",
                                fix="pass forward_window >= 1, or None (1: forward each RDMA chunk as it arrives)")
        if self.nccl_channels < 1:
            raise bad("--nccl-channels", self.nccl_channels, "a positive number of channels", 32)
        if not 1 <= self.expert_ffn <= MAX_TOKENS:
            raise bad("--expert-ffn", self.expert_ffn, "a positive expert intermediate size", 2048)
        if self.schedule is not None and self.schedule not in SCHEDULES:
            raise bad("--schedule", self.schedule, f"one of {', '.join(SCHEDULES)}", SCHEDULES[0])
        if self.schedule is not None:
            self.model_desc().check()
            for flag, on in (("--expert-gemm", self.expert_gemm), ("--record-memops", self.record_memops)):
                if on:
                    raise TracekitError(f"{flag} with --schedule {self.schedule}: the schedule runs the expert GEMMs "
                                        "itself and records no memory operations", fix=f"drop {flag}")
        if not 2 <= self.num_sms <= MAX_NUM_SMS or self.num_sms % 2:
            raise bad("--num-sms", self.num_sms, f"an even number in [2, {MAX_NUM_SMS}] (two SMs per channel)",
                      DEFAULT_NUM_SMS)
        for phase in ("dispatch", "combine"):
            pc: PhaseConfig | None = getattr(self, phase)
            if pc is None:
                continue
            for name, flag in (("nvl_send_chunk", "nvl-chunk"), ("nvl_recv_buffer", "nvl-buffer"),
                               ("rdma_send_chunk", "rdma-chunk"), ("rdma_recv_buffer", "rdma-buffer")):
                if not 1 <= getattr(pc, name) <= MAX_TOKENS:  # the flag of tracekit replay that sets it
                    raise bad(f"--{phase}-{flag}", getattr(pc, name), f"a number of tokens in [1, {MAX_TOKENS}]", 8)
            # DeepEP's own Config checks: an NVLink ring holds more than one chunk, an RDMA ring two
            if pc.nvl_recv_buffer <= pc.nvl_send_chunk:
                raise TracekitError(
                    f"{phase}: NVLink ring of {pc.nvl_recv_buffer} tokens is not larger than its chunk of "
                    f"{pc.nvl_send_chunk} tokens", fix=f"make the ring larger than one chunk, as DeepEP requires: raise "
                    f"--{phase}-nvl-buffer or lower --{phase}-nvl-chunk",
                )
            if pc.rdma_recv_buffer < 2 * pc.rdma_send_chunk:
                raise TracekitError(
                    f"{phase}: RDMA ring of {pc.rdma_recv_buffer} tokens is smaller than two chunks of "
                    f"{pc.rdma_send_chunk} tokens", fix=f"make the RDMA ring at least two chunks, as DeepEP requires: "
                    f"raise --{phase}-rdma-buffer or lower --{phase}-rdma-chunk",
                )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["fabric"] == "static":  # the default leaves summaries and file metadata as they were
            del out["fabric"]
        return out


#: Bounds of ``--set`` values by unit: input checks before anything is sized or timed by them (not
#: model parameters). Rates below 1e-3 make 64-bit nanosecond times overflow; counts and sizes above
#: these are typos (no NIC has 2^20 queue pairs, no buffer 2^40 bytes).
SET_BOUNDS = {"GB/s": (1e-3, 1e7), "Gb/s": (1e-3, 1e7), "TFLOP/s": (1e-3, 1e7), "ns": (0, 10**12),
              "count": (0, 1 << 20), "entries": (1, 1 << 24), "B": (1, 1 << 40), "gen": (1, 16),
              "probability": (0, 1), "bool": (0, 1)}


def check_set_values(overrides: dict[str, str], hw: Any) -> None:
    """Check ``--set SECTION.FIELD=VALUE`` values after they were applied to profile ``hw``: finite,
    within :data:`SET_BOUNDS` for their unit, and consistent (an MTU larger than its headers)."""
    from tracekit import schemas

    fields = {f"{f.section}.{f.name}": f for f in schemas.load("hardware").fields}
    for key, raw in overrides.items():
        f = fields.get(key)
        if f is None or f.type == "string":
            continue
        value = hw.values[f.section][f.name]
        lo, hi = SET_BOUNDS.get(f.unit, (0, float("inf")))
        if not math.isfinite(value) or not lo <= value <= hi:
            raise TracekitError(f"--set {key}={raw}: expected a finite number in [{lo:g}, {hi:g}] {f.unit}",
                                fix=f"give {key} in {f.unit}: {f.description.rstrip('.')}")
    mtu, header = hw.values["nic"]["mtu_bytes"], hw.values["nic"]["header_bytes"]
    if mtu <= header:
        raise TracekitError(f"--set: nic.mtu_bytes={mtu} is not larger than nic.header_bytes={header}",
                            fix="a packet must carry payload: raise nic.mtu_bytes (e.g. 4096) or lower nic.header_bytes")
