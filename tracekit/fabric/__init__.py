"""A packet-level dynamic fabric for RoCE: NIC senders with run-time rates (DCQCN), shared-buffer
switches with dynamic thresholds, PFC with headroom, ECN on a WRED curve, CNPs, go-back-N loss
recovery, ECMP / packet spraying / flowlets, and named errors for PFC deadlocks and pause storms.

:func:`simulate` (numba) and :func:`simulate_reference` (heapq) are twins held equal by Hypothesis.
The replay calls it per phase through :mod:`tracekit.fabric.replay` (``--fabric dynamic``).
"""

from tracekit.fabric.common import FabricRun, Flows, PauseStorm, PfcDeadlock, raise_if_stalled
from tracekit.fabric.fast import simulate
from tracekit.fabric.params import FabricParams, params_from_profile
from tracekit.fabric.reference import simulate_reference
from tracekit.fabric.topology import Topology, leaf_spine, rail_optimised, ring, single_switch

__all__ = ["FabricParams", "FabricRun", "Flows", "PauseStorm", "PfcDeadlock", "Topology", "leaf_spine",
           "params_from_profile", "rail_optimised", "raise_if_stalled", "ring", "simulate", "simulate_reference",
           "single_switch"]
