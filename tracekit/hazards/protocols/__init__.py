"""The protocol library: each protocol with its correct and broken variants."""

from __future__ import annotations

from tracekit.hazards.ops import ProtocolSpec
from tracekit.hazards.protocols.eager import eager
from tracekit.hazards.protocols.low_latency import low_latency
from tracekit.hazards.protocols.ring_buffer import rdma_ring, ring_buffer
from tracekit.hazards.protocols.zero_buffer import zero_buffer

#: Every built-in protocol by name, in the order ``tracekit fuzz --list`` shows them.
PROTOCOLS: dict[str, ProtocolSpec] = {
    spec.name: spec for spec in (ring_buffer, rdma_ring, low_latency, zero_buffer, eager)
}

__all__ = ["PROTOCOLS", "eager", "low_latency", "rdma_ring", "ring_buffer", "zero_buffer"]
