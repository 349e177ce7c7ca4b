"""Replay configuration: DeepEP-like kernel settings, granularity and model switches.

Defaults follow DeepEP V1's ``Buffer.get_dispatch_config`` / ``get_combine_config`` tables (20 SMs;
NVL chunk, NVL buffer, RDMA chunk and RDMA buffer sizes in tokens, by EP size).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from tracekit.errors import TracekitError

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

MODES = ("normal", "low_latency", "zero_buffer")
GRANULARITIES = ("chunk", "token", "packet")
DOORBELLS = ("gpu", "cpu_proxy")
CREDIT_RETURN = ("after_consume", "early")
FABRICS = ("static", "dynamic")


@dataclass(frozen=True)
class PhaseConfig:
    """Ring and chunk sizes of one phase, in tokens."""

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
    * ``forward_window``: between nodes, the forwarder copies each source's tokens for one local GPU
      in NVLink chunks (at most ``nvl_send_chunk`` tokens) drawn from this many consecutive RDMA
      chunks, as DeepEP's forwarder copies whatever has arrived. Default (``None``): half the RDMA
      ring, the most that can arrive while the other half drains; smaller windows give smaller,
      more numerous forward chunks (1 reproduces per-RDMA-chunk forwarding).
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
                                fix="pass forward_window >= 1, or None for half the RDMA ring")
        if self.expert_ffn < 1:
            raise bad("--expert-ffn", self.expert_ffn, "a positive expert intermediate size", 2048)
        if self.num_sms < 2 or self.num_sms % 2:
            raise bad("--num-sms", self.num_sms, "an even number >= 2 (two SMs per channel)", DEFAULT_NUM_SMS)
        for phase in ("dispatch", "combine"):
            pc: PhaseConfig | None = getattr(self, phase)
            if pc is None:
                continue
            for name in ("nvl_send_chunk", "nvl_recv_buffer", "rdma_send_chunk", "rdma_recv_buffer"):
                if getattr(pc, name) < 1:
                    raise bad(f"--{phase}-{name.replace('_', '-')}", getattr(pc, name), "a positive number of tokens", 8)
            # DeepEP's own Config checks: an NVLink ring holds more than one chunk, an RDMA ring two
            if pc.nvl_recv_buffer <= pc.nvl_send_chunk:
                raise TracekitError(
                    f"{phase}: NVLink ring of {pc.nvl_recv_buffer} tokens is not larger than its chunk of "
                    f"{pc.nvl_send_chunk} tokens", fix="make the ring larger than one chunk, as DeepEP requires",
                )
            if pc.rdma_recv_buffer < 2 * pc.rdma_send_chunk:
                raise TracekitError(
                    f"{phase}: RDMA ring of {pc.rdma_recv_buffer} tokens is smaller than two chunks of "
                    f"{pc.rdma_send_chunk} tokens", fix="make the RDMA ring at least two chunks, as DeepEP requires",
                )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if out["fabric"] == "static":  # the default leaves summaries and file metadata as they were
            del out["fabric"]
        return out
