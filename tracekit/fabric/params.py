"""Fabric parameters: PFC, shared buffer, ECN/WRED, CNP, DCQCN, loss recovery, routing.

Every default names its source in :data:`SOURCES` (and in the ``[fabric]`` section of the RoCE
profiles, from which :func:`params_from_profile` reads them). Rates are Mbit/s, times ns, sizes bytes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from tracekit.errors import TracekitError

ROUTINGS = ("ecmp", "spray", "flowlet")
RETRANSMITS = ("go_back_n", "selective")
ROUTING_CODE = {r: i for i, r in enumerate(ROUTINGS)}


@dataclass(frozen=True)
class FabricParams:
    pfc: bool = True
    mtu_bytes: int = 4096
    header_bytes: int = 98
    buffer_bytes: int = 32 * 1024 * 1024
    alpha: float = 0.125
    headroom_bytes: int = 0  # 0: 3 x (bandwidth x delay) of each ingress link, at least 2 MTU
    resume_offset_bytes: int = 3072
    ecn: bool = True
    kmin_bytes: int = 400 * 1024
    kmax_bytes: int = 1600 * 1024
    pmax: float = 0.2
    cnp_interval_ns: int = 4000
    dcqcn: bool = True
    dcqcn_g: float = 1.0 / 256
    rate_decrease_interval_ns: int = 4000
    alpha_timer_ns: int = 55_000
    increase_timer_ns: int = 300_000
    byte_counter_bytes: int = 32767
    fast_recovery_steps: int = 1
    rai_mbps: float = 5.0
    rhai_mbps: float = 50.0
    min_rate_mbps: float = 100.0
    rto_ns: int = 4096 * 2 ** 12
    retransmit: str = "go_back_n"
    routing: str = "ecmp"
    flowlet_gap_ns: int = 10_000
    pfc_watchdog_ns: int = 100_000_000
    sample_ns: int = 1000
    priorities: int = 1
    seed: int = 0

    def check(self) -> "FabricParams":
        def bad(name: str, expected: str) -> TracekitError:
            return TracekitError(f"fabric.{name}={getattr(self, name)!r}: expected {expected}",
                                 fix=f"set fabric.{name} to {expected}")

        for name in ("mtu_bytes", "buffer_bytes", "sample_ns", "priorities", "rto_ns", "pfc_watchdog_ns",
                     "alpha_timer_ns", "increase_timer_ns", "byte_counter_bytes", "fast_recovery_steps"):
            if getattr(self, name) < 1:
                raise bad(name, "a positive number")
        for name in ("header_bytes", "headroom_bytes", "resume_offset_bytes", "kmin_bytes", "cnp_interval_ns",
                     "rate_decrease_interval_ns", "flowlet_gap_ns"):
            if getattr(self, name) < 0:
                raise bad(name, "a number >= 0")
        if not 0 < self.alpha:
            raise bad("alpha", "a positive fraction of the free buffer")
        if self.kmax_bytes < self.kmin_bytes:
            raise bad("kmax_bytes", f"at least kmin_bytes={self.kmin_bytes}")
        if not 0 <= self.pmax <= 1:
            raise bad("pmax", "a probability in [0, 1]")
        if not 0 < self.dcqcn_g <= 1:
            raise bad("dcqcn_g", "a gain in (0, 1]")
        if self.routing not in ROUTINGS:
            raise bad("routing", f"one of {', '.join(ROUTINGS)}")
        if self.retransmit not in RETRANSMITS:
            raise bad("retransmit", f"one of {', '.join(RETRANSMITS)}")
        if self.min_rate_mbps <= 0 or self.rai_mbps < 0 or self.rhai_mbps < 0:
            raise bad("min_rate_mbps", "positive rates")
        return self

    def with_(self, **changes: Any) -> "FabricParams":
        return replace(self, **changes).check()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: where each default comes from (also written next to the values in the RoCE profiles)
SOURCES = {
    "pfc": "RoCE v2 deployments run lossless (PFC) by default; PFC off is the lossy alternative",
    "mtu_bytes": "RoCE path MTU 4096 B",
    "header_bytes": "RoCE v2 headers + Ethernet preamble/IFG (see nic.header_bytes)",
    "buffer_bytes": "HPCC / SimAI ns-3 configs: 32 MB switch buffer (DOMAIN.md section 4)",
    "alpha": "HPCC / SimAI ns-3 configs: dynamic threshold = free shared buffer >> 3 (alpha 1/8)",
    "headroom_bytes": "HPCC / SimAI ns-3 configs: headroom 3x bandwidth-delay product per port (0 = computed)",
    "resume_offset_bytes": "HPCC / SimAI ns-3 configs: resume 3 KB below the pause threshold",
    "ecn": "ECN marking enabled with DCQCN",
    "kmin_bytes": "HPCC / SimAI ns-3 configs: 100G Kmin 400 KB (25G 100 KB, 400G 800 KB)",
    "kmax_bytes": "HPCC / SimAI ns-3 configs: 100G Kmax 1600 KB (25G 400 KB, 400G 3200 KB)",
    "pmax": "HPCC / SimAI ns-3 configs: Pmax 0.2",
    "cnp_interval_ns": "NVIDIA ConnectX NP min_time_between_cnps default 4 us (DCQCN paper: 50 us)",
    "dcqcn": "DCQCN (Zhu et al., SIGCOMM 2015) as implemented by ConnectX NICs",
    "dcqcn_g": "DCQCN paper: g = 1/256 (HPCC / SimAI configs: EWMA gain 1/256)",
    "rate_decrease_interval_ns": ("NVIDIA rate_reduce_monitor_period default 4 us (HPCC config: 4 us). NVIDIA's DCQCN "
                                  "parameter table (DOCA 'DCQCN CC Parameters'; MLNX_OFED 'DCQCN Parameters'): the "
                                  "first CNP sets the rate to rate_to_set_on_first_cnp (default 0: unchanged) and "
                                  "alpha to initial_alpha_value; after it the rate is cut once per monitor period "
                                  "that saw a CNP, at the period's end (HPCC's ns-3 rdma-hw, CheckRateDecreaseMlx: "
                                  "the same; checked in benchmarks/peer_ns3.py's late-joiner case)"),
    "alpha_timer_ns": ("DCQCN paper: alpha update period K = 55 us (NVIDIA dce_tcp_rtt default 1 us); alpha is "
                       "updated once per period, up if a CNP came in it, down if none did (NVIDIA's table; HPCC "
                       "ns-3 UpdateAlphaMlx), periods running from the flow's first CNP"),
    "increase_timer_ns": "NVIDIA rpg_time_reset default 300 us (HPCC / SimAI: ~300 us)",
    "byte_counter_bytes": "NVIDIA rpg_byte_reset default 32767 B (DCQCN paper: B = 10 MB)",
    "fast_recovery_steps": "NVIDIA rpg_threshold default 1 (DCQCN paper: F = 5)",
    "rai_mbps": "NVIDIA rpg_ai_rate default 5 Mb/s",
    "rhai_mbps": "NVIDIA rpg_hai_rate default 50 Mb/s",
    "min_rate_mbps": "NVIDIA rpg_min_rate (estimate: 100 Mb/s floor, as in HPCC's ns-3 config)",
    "rto_ns": "IB spec local ACK timeout 4.096 us x 2^timeout; timeout = 12 is an estimate of a common setting",
    "retransmit": "go_back_n: the RoCE v2 / InfiniBand transport's recovery (the responder drops out-of-order "
                  "packets and NAKs the first); selective: IRN (Mittal et al., 'Revisiting Network Support for RDMA', "
                  "SIGCOMM 2018): the receiver keeps out-of-order packets, each one NACKs with the cumulative ACK and "
                  "its own sequence (a SACK), the sender retransmits only the holes, once per recovery, which ends "
                  "when the cumulative ACK passes what was sent at its start (recalled from the paper, not re-checked "
                  "against the PDF here); NVIDIA (Mellanox) NICs resend only the NAKed packet in a selective mode "
                  "(patents US10430374B2, US 2022/0158772 A1)",
    "routing": "ECMP by five-tuple hash is the default in Ethernet fabrics",
    "flowlet_gap_ns": "estimate: flowlet gap of a few RTTs (10 us)",
    "pfc_watchdog_ns": "estimate: switch PFC watchdogs act after ~100 ms of continuous pause",
    "sample_ns": "tracekit: counter sampling period (not a hardware value)",
    "priorities": "one lossless RoCE priority (traffic class 3 in most deployments)",
    "seed": "tracekit: hash and marking seed",
}

#: The DCQCN paper's settings (Zhu et al., "Congestion Control for Large-Scale RDMA Deployments", SIGCOMM
#: 2015, section 5 and its parameter table, as recalled here and not re-checked against the PDF in this
#: session): WRED Kmin 5 KB, Kmax 200 KB, Pmax 1 %; g 1/256; CNP interval 50 us; alpha timer 55 us;
#: increase timer 55 us; byte counter 10 MB; F = 5; R_AI 40 Mb/s. R_HAI is an estimate (10 x R_AI).
DCQCN_PAPER = dict(kmin_bytes=5 * 1024, kmax_bytes=200 * 1024, pmax=0.01, dcqcn_g=1.0 / 256, cnp_interval_ns=50_000,
                   alpha_timer_ns=55_000, increase_timer_ns=55_000, byte_counter_bytes=10 * 1024 * 1024,
                   fast_recovery_steps=5, rai_mbps=40.0, rhai_mbps=400.0)

#: profile field (``fabric.<name>``) -> FabricParams field and a converter
_PROFILE_FIELDS = {f.name: f.name for f in fields(FabricParams) if f.name not in ("sample_ns", "seed", "mtu_bytes",
                                                                                   "header_bytes", "priorities")}


def params_from_profile(hw: Any, **overrides: Any) -> FabricParams:
    """FabricParams from a profile's ``[fabric]`` section (absent fields keep their defaults)."""
    base: dict[str, Any] = {"mtu_bytes": int(hw.nic.mtu_bytes), "header_bytes": int(hw.nic.header_bytes),
                            "buffer_bytes": int(hw.switch.buffer_bytes)}
    section = hw.values.get("fabric", {})
    for key, value in section.items():
        if key in _PROFILE_FIELDS:
            kind = type(getattr(FabricParams, key))
            base[key] = bool(int(value)) if kind is bool else (value if kind is str else kind(value))
    base.update(overrides)
    return FabricParams(**base).check()
