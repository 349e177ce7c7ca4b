"""Fabric topologies as arrays: nodes (hosts first, then switches), directed ports, routes.

A *port* is one direction of one cable: it belongs to ``port_src`` (which serialises packets onto it
at ``port_mbps``) and delivers to ``port_dst`` ``port_delay_ns`` after the last bit left. Every host
(one NIC port) has exactly one egress port, ``host_port[h]``. Routes give, for each (node, destination
host), the equal-cost next ports (``route_ptr``/``route_ports``, CSR over ``node * hosts + dst``),
computed by breadth-first search on the directed ports, so a topology that only has clockwise links
(:func:`ring`) routes clockwise and makes a cyclic buffer dependency on purpose.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from tracekit.errors import TracekitError


@dataclass(frozen=True)
class Topology:
    hosts: int
    nodes: int
    node_names: tuple[str, ...]
    port_src: np.ndarray  # int64 per port
    port_dst: np.ndarray
    port_mbps: np.ndarray  # int64, Mbit/s
    port_delay_ns: np.ndarray  # int64: cable (+ switch pipeline when it arrives at a switch)
    port_names: tuple[str, ...]
    host_port: np.ndarray  # int64 per host
    route_ptr: np.ndarray  # int64, nodes * hosts + 1
    route_ports: np.ndarray  # int64

    @property
    def ports(self) -> int:
        return int(self.port_src.shape[0])

    def candidates(self, node: int, dst: int) -> np.ndarray:
        k = node * self.hosts + dst
        return self.route_ports[self.route_ptr[k]:self.route_ptr[k + 1]]

    def path_delay_ns(self, src: int, dst: int) -> int:
        """One-way delay of the first-candidate path from host ``src`` to host ``dst``: propagation plus
        one minimum-size (64 B) frame's serialisation per hop. Control frames (ACK, NACK, CNP) use it."""
        node, total = src, 0
        for _ in range(self.nodes):
            if node == dst:
                return total
            p = int(self.host_port[node]) if node < self.hosts else int(self.candidates(node, dst)[0])
            total += int(self.port_delay_ns[p]) + -(-64 * 8000 // int(self.port_mbps[p]))
            node = int(self.port_dst[p])
        raise TracekitError(f"no route from host {src} to host {dst}", fix="check the topology")

    def path_delays_ns(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """:meth:`path_delay_ns` for arrays of host pairs, all hops at once."""
        node, dst = np.array(src, np.int64), np.asarray(dst, np.int64)
        total = np.zeros(node.shape[0], np.int64)
        for _ in range(self.nodes):
            go = node != dst
            if not go.any():
                return total
            at_host = node < self.hosts
            p = np.where(at_host, self.host_port[np.minimum(node, self.hosts - 1)], 0)
            sw = go & ~at_host
            k = node[sw] * self.hosts + dst[sw]
            if (self.route_ptr[k + 1] == self.route_ptr[k]).any():
                break
            p[sw] = self.route_ports[self.route_ptr[k]]
            p = p[go]
            total[go] += self.port_delay_ns[p] + -(-64 * 8000 // self.port_mbps[p])
            node[go] = self.port_dst[p]
        bad = int(np.flatnonzero(node != dst)[0])
        raise TracekitError(f"no route from host {int(src[bad])} to host {int(dst[bad])}", fix="check the topology")


class _Builder:
    def __init__(self, hosts: int, host_names: list[str]) -> None:
        self.hosts = hosts
        self.names = list(host_names)
        self.ports: list[tuple[int, int, int, int, str]] = []

    def node(self, name: str) -> int:
        self.names.append(name)
        return len(self.names) - 1

    def link(self, a: int, b: int, mbps: int, cable_ns: int, switch_ns: int, name_ab: str, name_ba: str) -> None:
        """Both directions of a cable between nodes ``a`` and ``b``."""
        self.port(a, b, mbps, cable_ns, switch_ns, name_ab)
        self.port(b, a, mbps, cable_ns, switch_ns, name_ba)

    def port(self, a: int, b: int, mbps: int, cable_ns: int, switch_ns: int, name: str) -> None:
        if mbps < 1:
            raise TracekitError(f"port {name}: rate {mbps} Mbit/s must be >= 1", fix="give positive link rates")
        delay = cable_ns + (switch_ns if b >= self.hosts else 0)
        self.ports.append((a, b, int(mbps), int(delay), name))

    def build(self) -> Topology:
        n, h = len(self.names), self.hosts
        src = np.array([p[0] for p in self.ports], np.int64)
        dst = np.array([p[1] for p in self.ports], np.int64)
        host_port = np.full(h, -1, np.int64)
        for i in range(src.shape[0]):
            if src[i] < h:
                if host_port[src[i]] >= 0:
                    raise TracekitError(f"host {self.names[src[i]]} has two ports", fix="one NIC port per host")
                host_port[src[i]] = i
        if (host_port < 0).any():
            raise TracekitError("a host has no port", fix="connect every host")
        ptr, ports = _routes(n, h, src, dst)
        return Topology(h, n, tuple(self.names), src, dst, np.array([p[2] for p in self.ports], np.int64),
                        np.array([p[3] for p in self.ports], np.int64), tuple(p[4] for p in self.ports),
                        host_port, ptr, ports)


def _routes(n: int, h: int, src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All shortest next ports from every node to every host (BFS on reversed ports, hosts do not relay)."""
    into: list[list[int]] = [[] for _ in range(n)]
    for p in range(src.shape[0]):
        into[int(dst[p])].append(p)
    ptr = [0]
    out: list[int] = []
    per_node: list[list[list[int]]] = [[[] for _ in range(h)] for _ in range(n)]
    for d in range(h):
        dist = [-1] * n
        dist[d] = 0
        todo = deque([d])
        while todo:
            v = todo.popleft()
            for p in into[v]:
                u = int(src[p])
                if dist[u] < 0 and (u >= h or v == d):
                    dist[u] = dist[v] + 1
                    if u >= h:
                        todo.append(u)
        for p in range(src.shape[0]):
            u, v = int(src[p]), int(dst[p])
            if u != d and dist[u] > 0 and dist[v] == dist[u] - 1 and (v >= h or v == d):
                per_node[u][d].append(p)
    for u in range(n):
        for d in range(h):
            out.extend(per_node[u][d])
            ptr.append(len(out))
    return np.array(ptr, np.int64), np.array(out, np.int64)


def single_switch(hosts: int, mbps: int, cable_ns: int, switch_ns: int) -> Topology:
    """Every host on one switch port: ``switch0/port{h}``."""
    b = _Builder(hosts, [f"host{i}" for i in range(hosts)])
    sw = b.node("switch0")
    for i in range(hosts):
        b.link(i, sw, mbps, cable_ns, switch_ns, f"host{i}/nic0", f"switch0/port{i}")
    return b.build()


def leaf_spine(hosts: int, hosts_per_leaf: int, spines: int, mbps: int, cable_ns: int, switch_ns: int,
               oversubscription: float = 1.0) -> Topology:
    """Two tiers: ``hosts_per_leaf`` hosts per leaf, one uplink from every leaf to every spine, each of
    ``hosts_per_leaf * mbps / (spines * oversubscription)`` (1.0: non-blocking)."""
    if oversubscription <= 0 or hosts_per_leaf < 1 or spines < 1:
        raise TracekitError(f"leaf_spine: hosts_per_leaf={hosts_per_leaf}, spines={spines}, "
                            f"oversubscription={oversubscription} must be positive", fix="give positive values")
    b = _Builder(hosts, [f"host{i}" for i in range(hosts)])
    leaves = -(-hosts // hosts_per_leaf)
    leaf = [b.node(f"leaf{k}") for k in range(leaves)]
    spine = [b.node(f"spine{s}") for s in range(spines)]
    up = max(int(hosts_per_leaf * mbps / (spines * oversubscription)), 1)
    for i in range(hosts):
        k = i // hosts_per_leaf
        b.link(i, leaf[k], mbps, cable_ns, switch_ns, f"host{i}/nic0", f"leaf{k}/port{i % hosts_per_leaf}")
    for k in range(leaves):
        for s in range(spines):
            b.link(leaf[k], spine[s], up, cable_ns, switch_ns, f"leaf{k}/up{s}", f"spine{s}/port{k}")
    return b.build()


def rail_optimised(nodes: int, gpus_per_node: int, spines: int, mbps: int, cable_ns: int, switch_ns: int,
                   oversubscription: float = 1.0) -> Topology:
    """Rail-optimised: NIC ``g`` of every server on rail switch ``rail{g}``; rails joined by spines
    (cross-rail traffic only). Host ``n * gpus_per_node + g`` is GPU ``g`` of server ``n``."""
    hosts = nodes * gpus_per_node
    b = _Builder(hosts, [f"host{i}" for i in range(hosts)])
    rail = [b.node(f"rail{g}") for g in range(gpus_per_node)]
    spine = [b.node(f"spine{s}") for s in range(spines)]
    up = max(int(nodes * mbps / (spines * oversubscription)), 1)
    for i in range(hosts):
        g = i % gpus_per_node
        b.link(i, rail[g], mbps, cable_ns, switch_ns, f"host{i}/nic0", f"rail{g}/port{i // gpus_per_node}")
    for g in range(gpus_per_node):
        for s in range(spines):
            b.link(rail[g], spine[s], up, cable_ns, switch_ns, f"rail{g}/up{s}", f"spine{s}/port{g}")
    return b.build()


def ring(switches: int, mbps: int, cable_ns: int, switch_ns: int) -> Topology:
    """One host per switch; switches joined in a ring by *clockwise-only* links, so that routes of two
    or more hops make a cyclic buffer dependency (the textbook PFC deadlock)."""
    b = _Builder(switches, [f"host{i}" for i in range(switches)])
    sw = [b.node(f"switch{k}") for k in range(switches)]
    for i in range(switches):
        b.link(i, sw[i], mbps, cable_ns, switch_ns, f"host{i}/nic0", f"switch{i}/port0")
    for k in range(switches):
        b.port(sw[k], sw[(k + 1) % switches], mbps, cable_ns, switch_ns, f"switch{k}/cw")
    return b.build()
