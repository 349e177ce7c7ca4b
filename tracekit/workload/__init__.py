"""Workloads: routing tables (synthetic or imported) and the dispatch layout derived from them."""

from tracekit.workload.routing import DTYPES, Routing, RoutingMeta, bytes_per_token

__all__ = ["DTYPES", "Routing", "RoutingMeta", "bytes_per_token"]
