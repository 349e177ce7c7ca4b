"""The modelled cluster: resources (SMs, NVLink ports, HBM, PCIe, NICs, switch ports), their
rates from a hardware profile, and the task chains for NVLink copies and RDMA messages.

Resource paths follow one convention, read by the Perfetto exporter to build its track tree:
``node{n}/rank{r}/sm/ch{c}/{a|b}``, ``node{n}/rank{r}/nvlink/{tx|rx}``, ``node{n}/rank{r}/hbm``,
``node{n}/rank{r}/pcie/{rd|wr}``, ``node{n}/rank{r}/nic0/{tx|rx}``, ``node{n}/rank{r}/cpu/proxy``,
``switch0/port{p}`` (single switch) or ``leaf{l}/port{p}``, ``leaf{l}/up{s}``, ``spine{s}/port{l}``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tracekit.engine import TaskGraph
from tracekit.errors import TracekitError
from tracekit.hardware import Profile
from tracekit.model.chunks import ceil_div
from tracekit.model.config import ReplayConfig

#: Stage names; the task attribute ``stage`` holds an index into this list.
STAGES = [
    "layout", "notify", "cpu_sync", "launch", "pack", "nvlink", "rdma_post", "pcie", "nic_send", "fabric",
    "nic_recv", "hbm", "rdma_atomic", "cq_poll", "forward", "unpack", "credit_return", "expert_queue",
    "combine_pack", "combine_reduce", "combine_unpack", "alloc",
]
STAGE = {name: i for i, name in enumerate(STAGES)}


@dataclass
class Message:
    """Task ids of one batch of RDMA messages built by :meth:`Cluster.rdma`."""

    post: np.ndarray
    nic_send: np.ndarray  # first NIC transmit task of each message
    nic_recv: np.ndarray  # last NIC receive task of each message
    arrival: np.ndarray  # data written to the destination's HBM
    tail: np.ndarray  # tail update (RDMA atomic) visible at the destination


class Cluster:
    """Resources of ``ep_size`` ranks on ``profile``, registered in ``graph``."""

    def __init__(self, graph: TaskGraph, hw: Profile, ep_size: int, gpus_per_node: int, cfg: ReplayConfig,
                 phase: str) -> None:
        if gpus_per_node != hw.system.gpus_per_node:
            raise TracekitError(
                f"routing has gpus_per_node={gpus_per_node} but hardware profile {hw.name} has "
                f"{hw.system.gpus_per_node}", fix="synthesise the routing for this profile (tracekit synth --gpus-per-node) "
                "or pick a matching profile",
            )
        if cfg.num_sms > hw.gpu.sms:
            raise TracekitError(f"--num-sms={cfg.num_sms} exceeds the {hw.gpu.sms} SMs of {hw.gpu.name}",
                                fix=f"use at most {hw.gpu.sms}")
        self.g = graph
        self._okey = np.zeros(0, np.int64)
        self.hw = hw
        self.cfg = cfg
        self.phase = phase
        self.R = ep_size
        self.G = min(gpus_per_node, ep_size)
        self.N = -(-ep_size // gpus_per_node)
        self.C = cfg.num_channels
        r = np.arange(self.R)
        self.node_of = r // gpus_per_node
        self.local_of = r % gpus_per_node
        pre = [f"node{n}/rank{k}" for k, n in zip(r, self.node_of)]
        self.prefix = pre
        self.real = cfg.dispatch if phase == "dispatch" else cfg.combine  # DeepEP's chunk sizes (not merged)
        self.token_ns = 0  # the phase's fixed SM work per token (set by the model)
        self.sm_a = graph.resources([f"{p}/sm/ch{c}/a" for p in pre for c in range(self.C)])
        self.sm_b = graph.resources([f"{p}/sm/ch{c}/b" for p in pre for c in range(self.C)])
        self.hbm = graph.resources([f"{p}/hbm" for p in pre])
        self.mesh = hw.nvlink.topology == "mesh"
        if self.mesh:
            self.nvl_link = graph.resources([f"{pre[k]}/nvlink/to{j}" for k in r for j in range(self.G)])
        else:
            self.nvl_tx = graph.resources([f"{p}/nvlink/tx" for p in pre])
            self.nvl_rx = graph.resources([f"{p}/nvlink/rx" for p in pre])
        # rates in ns per byte
        self.ns_sm = 1.0 / hw.gpu.sm_copy_bandwidth_gbyte_s
        # achievable NVLink payload rate, never above the raw links: all of them through an NVSwitch, a
        # pair's share of them in a mesh
        raw = hw.nvlink.link_bandwidth_gbyte_s * (hw.nvlink.links if not hw.nvlink.topology == "mesh"
                                                  else max(hw.nvlink.links // max(self.G - 1, 1), 1))
        self.ns_nvl = 1.0 / min(hw.nvlink.bandwidth_gbyte_s, raw)
        self.ns_hbm = 1.0 / hw.gpu.hbm_bandwidth_gbyte_s
        self.ns_pcie = 1.0 / hw.pcie.bandwidth_gbyte_s
        # nics_per_gpu NICs (and their switch ports) act as one port of their summed rate (no striping model)
        self.ns_line = 8.0 / (hw.nic.line_rate_gbit_s * hw.system.nics_per_gpu)
        self.ns_port = 8.0 / hw.switch.port_rate_gbit_s
        if self.N > 1 or cfg.mode != "normal":  # low-latency / zero-buffer kernels may use RDMA in a node
            self._init_fabric()

    # -- helpers ------------------------------------------------------------------------------
    def sm(self, rank: np.ndarray, channel: np.ndarray, role: str) -> np.ndarray:
        base = self.sm_a if role == "a" else self.sm_b
        return base[np.asarray(rank) * self.C + np.asarray(channel)]

    def copy_ns(self, nbytes: np.ndarray, tokens: np.ndarray, token_ns: int, *, sync_ns: object = 0,
                rows: object = 0) -> np.ndarray:
        """SM time of a copy task: ``nbytes`` at one SM's copy rate, ``token_ns`` of fixed work per token,
        ``sync_ns`` of chunk synchronisation (:meth:`sync_ns`) and ``gpu.combine_topk_ns`` per reduced
        source ``rows``."""
        return (ceil_div(nbytes, 1.0 / self.ns_sm) + np.asarray(tokens, np.int64) * int(token_ns)
                + np.asarray(sync_ns, np.int64) + np.asarray(rows, np.int64) * self.hw.gpu.combine_topk_ns)

    def sm_work(self, stage: str, rank: np.ndarray, channel: np.ndarray, role: str, nbytes: np.ndarray,
                tokens: np.ndarray, sync_ns: np.ndarray, rows: object = 0, **cols: object) -> np.ndarray:
        """A chunk's work on its channel SM: the copy of ``nbytes``, the phase's fixed work per token
        (``token_ns``), the ring synchronisation ``sync_ns`` and the reduction of ``rows`` source rows.
        The SM is one FIFO server: DeepEP's warp groups (one per peer) share its issue slots and load/store
        units, and every group scans every token of the channel, so their per-token work adds up."""
        n = np.asarray(rank).shape[0]
        dur = self.copy_ns(nbytes, tokens, self.token_ns, sync_ns=sync_ns, rows=rows)
        return self.add(n, stage, rank, res=self.sm(rank, channel, role), dur=dur, channel=channel, tokens=tokens,
                        bytes=nbytes, **cols)

    def sync_ns(self, tokens: np.ndarray, chunk: int) -> np.ndarray:
        """SM time of the ring synchronisation (release fence + tail store + poll: ``gpu.chunk_sync_ns``)
        for ``tokens`` tokens moved in DeepEP chunks of ``chunk`` tokens: one per chunk, so model chunks
        that merge small DeepEP chunks still pay each of theirs; at ``token`` granularity each token
        pays its share."""
        tokens = np.asarray(tokens, np.int64)
        per = self.hw.gpu.chunk_sync_ns
        if self.cfg.granularity == "token":
            return ceil_div(tokens * per, max(chunk, 1))
        return np.maximum(ceil_div(tokens, max(chunk, 1)), 1) * per

    def order(self, msg: np.ndarray, index: np.ndarray) -> None:
        """Declare that message ``msg`` is its group's ``index``-th chunk: tasks of messages with the same
        index run at about the same time, so the engine keeps them together (``order_key``)."""
        msg = np.asarray(msg, np.int64)
        if msg.size == 0:
            return
        top = int(msg.max()) + 1
        if top > self._okey.size:
            self._okey = np.r_[self._okey, np.zeros(top - self._okey.size, np.int64)]
        self._okey[msg] = (np.asarray(index, np.int64) << 32) | msg

    def add(self, n: int, stage: str, rank: object, **cols: object) -> np.ndarray:
        """Append ``n`` tasks of ``stage`` owned by ``rank``; other columns as for TaskGraph.add_tasks.
        Tasks carrying a ``msg_id`` inherit its order key (see :meth:`order`)."""
        cols.setdefault("record", True)
        if "msg_id" in cols:
            m = np.asarray(cols["msg_id"], np.int64)
            cols["order_key"] = np.where(m >= 0, self._okey[np.clip(m, 0, max(self._okey.size - 1, 0))], -1) \
                if self._okey.size else np.full(np.shape(m), -1)
        return self.g.add_tasks(n, stage=np.int16(STAGE[stage]), rank=rank, **cols)

    # -- NVLink -------------------------------------------------------------------------------
    def nvlink(self, src: np.ndarray, dst: np.ndarray, nbytes: np.ndarray, after: np.ndarray,
               **attrs: object) -> np.ndarray:
        """NVLink transfer tasks from ``src`` to ``dst`` (different ranks of one node) after tasks
        ``after``; returns the task whose finish means the bytes are in ``dst``'s memory."""
        n = src.shape[0]
        dur = ceil_div(nbytes, 1.0 / self.ns_nvl)
        if self.mesh:
            res = self.nvl_link[src * self.G + self.local_of[dst]]
            t = self.add(n, "nvlink", src, res=res, dur=dur, src_rank=src, dst_rank=dst, bytes=nbytes, **attrs)
            self.g.add_edges(after, t)
            return t
        tx = self.add(n, "nvlink", src, res=self.nvl_tx[src], dur=dur, src_rank=src, dst_rank=dst, bytes=nbytes, **attrs)
        rx = self.add(n, "nvlink", dst, res=self.nvl_rx[dst], dur=dur, src_rank=src, dst_rank=dst, bytes=nbytes, **attrs)
        self.g.add_edges(after, tx)
        self.g.add_edges(tx, rx)
        return rx

    # -- RDMA fabric ------------------------------------------------------------------------
    def _init_fabric(self) -> None:
        hw, g, R = self.hw, self.g, self.R
        pre = self.prefix
        self.pcie_rd = g.resources([f"{p}/pcie/rd" for p in pre])
        self.pcie_wr = g.resources([f"{p}/pcie/wr" for p in pre])
        self.nic_tx = g.resources([f"{p}/nic0/tx" for p in pre])
        self.nic_rx = g.resources([f"{p}/nic0/rx" for p in pre])
        self.proxy = g.resources([f"{p}/cpu/proxy" for p in pre])
        ports = hw.switch.ports
        port_buffer = max(hw.switch.buffer_bytes // ports, 1)
        self.port_buffer = port_buffer
        self.leaf_spine = hw.switch.topology == "leaf_spine"
        if not self.leaf_spine:
            if R > ports:
                raise TracekitError(
                    f"{R} NICs do not fit one {ports}-port switch of profile {hw.name}",
                    fix="use --set switch.topology=leaf_spine, or a profile with more ports",
                )
            self.down = g.resources([f"switch0/port{k}" for k in range(R)])
            self.down_buf = np.array([g.pool(f"switch0/port{k}/buffer", port_buffer, "switch_buffer") for k in range(R)])
        else:
            half = ports // 2
            self.hosts_per_leaf = half
            self.leaf_of = np.arange(R) // half
            leaves = int(self.leaf_of.max()) + 1
            spines = hw.switch.spines
            self.spines = spines
            if half % spines:
                raise TracekitError(f"{half} uplinks per leaf do not split evenly over {spines} spines",
                                    fix="choose switch.spines dividing switch.ports / 2")
            per_spine = half // spines  # parallel links between a leaf and a spine: non-blocking
            self.per_spine = per_spine
            if leaves * per_spine > ports:
                raise TracekitError(f"{leaves} leaves x {per_spine} links exceed the {ports} ports of a spine",
                                    fix="use more spines or larger switches")
            self.down = g.resources([f"leaf{k // half}/port{k % half}" for k in range(R)])
            self.down_buf = np.array([g.pool(f"leaf{k // half}/port{k % half}/buffer", port_buffer, "switch_buffer")
                                      for k in range(R)])
            self.up = g.resources([f"leaf{lf}/up{u}" for lf in range(leaves) for u in range(half)])
            self.up_buf = np.array([g.pool(f"leaf{lf}/up{u}/buffer", port_buffer, "switch_buffer")
                                    for lf in range(leaves) for u in range(half)])
            self.spine_down = g.resources([f"spine{s}/port{lf * per_spine + j}" for s in range(spines)
                                           for lf in range(leaves) for j in range(per_spine)])
            self.spine_buf = np.array([g.pool(f"spine{s}/port{lf * per_spine + j}/buffer", port_buffer, "switch_buffer")
                                       for s in range(spines) for lf in range(leaves) for j in range(per_spine)])
            self.leaves = leaves
        if hw.nic.cq_depth < 2:
            raise TracekitError(f"nic.cq_depth={hw.nic.cq_depth} cannot hold the completions of one message "
                                "(its write and its tail atomic each complete)", fix="use nic.cq_depth >= 2")
        # normal kernels: one QP per channel to each GPU with the same local index on another node
        self.set_qps(max(self.N - 1, 0) * self.C)
        hop = hw.switch.latency_ns + hw.switch.cable_latency_ns
        self.one_way_ns = (2 * hw.nic.latency_ns + 2 * hw.switch.cable_latency_ns + hw.switch.latency_ns
                           + (2 * hw.switch.latency_ns + 2 * hw.switch.cable_latency_ns if self.leaf_spine else 0))
        self.hop_ns = hop

    def set_qps(self, qps: int) -> None:
        """QPs each NIC keeps active (per mode): beyond ``nic.max_qps`` each message risks a context fetch
        over PCIe (``qp_miss_ns``)."""
        self.qps_per_nic = int(qps)
        miss = max(0.0, 1.0 - self.hw.nic.max_qps / qps) if qps else 0.0
        self.qp_miss_ns = int(round(miss * self.hw.pcie.latency_ns))

    def wire_bytes(self, nbytes: np.ndarray) -> np.ndarray:
        packets = np.maximum(ceil_div(nbytes, self.hw.nic.mtu_bytes), 1)
        return np.asarray(nbytes, np.int64) + packets * self.hw.nic.header_bytes

    def rdma(self, src: np.ndarray, dst: np.ndarray, nbytes: np.ndarray, tokens: np.ndarray, after: np.ndarray,
             sq_pool: np.ndarray, cq_pool: np.ndarray, qp: np.ndarray, *, atomic: bool = True,
             **attrs: object) -> Message:
        """RDMA WRITE of ``nbytes`` plus (with ``atomic``) an RDMA atomic tail update from ``src`` to
        ``dst`` on QP ``qp``, posted after tasks ``after``. The post takes a send-queue entry of
        ``sq_pool`` per work request; the completion takes one CQ entry of ``cq_pool`` until the next
        poll, which frees them."""
        hw = self.hw
        n = src.shape[0]
        wqes = 2 if atomic else 1
        common = dict(src_rank=src, dst_rank=dst, qp=qp, **attrs)
        if self.cfg.doorbell == "gpu":
            post = self.add(n, "rdma_post", src, dur=hw.nic.doorbell_gpu_ns, pool=sq_pool, amount=wqes,
                            tokens=tokens, bytes=nbytes, **common)
        else:
            post = self.add(n, "rdma_post", src, res=self.proxy[src], dur=hw.nic.doorbell_cpu_proxy_ns, pool=sq_pool,
                            amount=wqes, tokens=tokens, bytes=nbytes, **common)
        self.g.add_edges(after, post)
        # the NIC's DMA reads the sender's HBM and writes the receiver's: both contend with SM copies there
        hrd = self.add(n, "hbm", src, res=self.hbm[src], dur=ceil_div(nbytes, 1.0 / self.ns_hbm), bytes=nbytes, **common)
        self.g.add_edges(post, hrd, lag=hw.pcie.latency_ns)
        rd = self.add(n, "pcie", src, res=self.pcie_rd[src], dur=ceil_div(nbytes, 1.0 / self.ns_pcie),
                      bytes=nbytes, **common)
        self.g.add_edges(hrd, rd)
        first_tx, last_rx = self._wire(src, dst, nbytes, tokens, rd, common)
        wr = self.add(n, "pcie", dst, res=self.pcie_wr[dst], dur=ceil_div(nbytes, 1.0 / self.ns_pcie),
                      bytes=nbytes, **common)
        self.g.add_edges(last_rx, wr, lag=hw.nic.latency_ns)
        mem = self.add(n, "hbm", dst, res=self.hbm[dst], dur=ceil_div(nbytes, 1.0 / self.ns_hbm), bytes=nbytes, **common)
        self.g.add_edges(wr, mem)
        # The tail atomic follows the write on the same QP. Single-path delivery keeps it behind the
        # data; under adaptive routing it must wait for the write's acknowledgement (one round trip).
        if atomic:
            tail = self.add(n, "rdma_atomic", dst, dur=hw.nic.atomic_ns, **common)
            extra = 2 * self.one_way_ns if self.cfg.adaptive_routing else 0
            self.g.add_edges(mem, tail, lag=hw.pcie.latency_ns + extra)
        else:
            tail = mem
        # completion: the ack returns, the NIC writes one CQE per signalled WQE (IBGDA signals every WQE, as
        # we read NVSHMEM's IBGDA transport), a poller drains them and frees the SQ slots. CQEs never
        # outnumber outstanding WQEs, so a CQ at least as deep as the send queue cannot overrun (IBGDA sizes
        # them equal). A shallower CQ would overrun on hardware (a fatal QP error); the model makes the
        # completion wait for room instead and reports the wait as a ``cq`` stall: any such stall means
        # that configuration breaks on IBGDA.
        ack = self.one_way_ns + hw.pcie.latency_ns
        if hw.nic.cq_depth >= hw.nic.wqe_depth:
            poll = self.add(n, "cq_poll", src, dur=0, align=hw.nic.cq_poll_interval_ns, rel_pool=sq_pool,
                            rel_amount=wqes, **common)
            self.g.add_edges(last_rx, poll, lag=ack)
        else:
            cqe = self.add(n, "cq_poll", src, dur=0, pool=cq_pool, amount=wqes, record=False, **common)
            self.g.add_edges(last_rx, cqe, lag=ack)
            poll = self.add(n, "cq_poll", src, dur=0, align=hw.nic.cq_poll_interval_ns, rel_pool=cq_pool,
                            rel_amount=wqes, **common)
            self.g.add_edges(cqe, poll)
            free = self.add(n, "cq_poll", src, dur=0, rel_pool=sq_pool, rel_amount=wqes, record=False, **common)
            self.g.add_edges(poll, free)
        return Message(post=post, nic_send=first_tx, nic_recv=last_rx, arrival=mem, tail=tail)

    def _wire(self, src, dst, nbytes, tokens, after, common) -> tuple[np.ndarray, np.ndarray]:
        """NIC transmit, switch port(s), NIC receive; per chunk or per MTU packet."""
        hw = self.hw
        n = src.shape[0]
        if self.cfg.granularity == "packet":
            npk = np.maximum(ceil_div(nbytes, hw.nic.mtu_bytes), 1)
            msg = np.repeat(np.arange(n), npk)
            first = np.r_[0, np.cumsum(npk)[:-1]]
            pos = np.arange(msg.size) - first[msg]
            pbytes = np.minimum(nbytes[msg] - pos * hw.nic.mtu_bytes, hw.nic.mtu_bytes)
            wire = pbytes + hw.nic.header_bytes
            overhead = np.where(pos == 0, hw.nic.per_message_ns + self.qp_miss_ns, 0)
            ptokens = np.where(pos == 0, tokens[msg], 0)
        else:
            msg = np.arange(n)
            pos = np.zeros(n, np.int64)
            wire = self.wire_bytes(nbytes)
            pbytes = np.asarray(nbytes, np.int64)
            overhead = np.full(n, hw.nic.per_message_ns + self.qp_miss_ns)
            ptokens = tokens
        s, d = src[msg], dst[msg]
        m = msg.size
        pc = {k: (v[msg] if isinstance(v, np.ndarray) and v.shape == (n,) else v) for k, v in common.items()}
        hops = self._hops(s, d, pc.get("qp", 0))
        # Link-level flow control holds a sender's port while the next buffer is full (head-of-line
        # blocking). That is exact for packets; a whole chunk holding a port for its full length would
        # exaggerate it, so at chunk granularity a chunk waits for buffer room without blocking the
        # chunks behind it (packets of different chunks interleave on a real link).
        hol = self.cfg.granularity == "packet"
        if self.cfg.granularity != "packet":
            # a chunk larger than a port's buffer takes the whole buffer (packet granularity is exact)
            wire_buf = np.minimum(wire, self.port_buffer)
        else:
            if hw.nic.mtu_bytes + hw.nic.header_bytes > self.port_buffer:
                raise TracekitError(
                    f"switch port buffer of {self.port_buffer} B (buffer_bytes / ports) is smaller than one packet",
                    fix="enlarge switch.buffer_bytes")
            wire_buf = wire
        # Each hop acquires room in the next real hop's buffer and releases its own when it has sent.
        first_buf = np.full(m, -1, np.int64)
        for res, buf in reversed(hops):
            first_buf = np.where(res >= 0, buf, first_buf)
        # first hop: NIC transmit, holding its port while the next buffer has no room
        tx = self.add(m, "nic_send", s, res=self.nic_tx[s], dur=overhead + ceil_div(wire, 1.0 / self.ns_line),
                      pool=first_buf, amount=wire_buf, hold=hol, bytes=pbytes, tokens=ptokens, **pc)
        self.g.add_edges(after[msg], tx, lag=hw.nic.latency_ns)
        prev = tx
        for i, (res, buf) in enumerate(hops):
            nxt = np.full(m, -1, np.int64)
            for res2, buf2 in reversed(hops[i + 1:]):
                nxt = np.where(res2 >= 0, buf2, nxt)
            real = res >= 0
            nxt = np.where(real, nxt, -1)
            rate = self.ns_port / (hw.system.nics_per_gpu if i == len(hops) - 1 else 1)  # the NICs' own ports
            t = self.add(m, "fabric", -1, res=res, dur=np.where(real, ceil_div(wire, 1.0 / rate), 0),
                         pool=nxt, amount=np.where(nxt >= 0, wire_buf, 0), hold=hol,
                         rel_pool=np.where(real, buf, -1), rel_amount=np.where(real, wire_buf, 0),
                         bytes=pbytes, tokens=ptokens, record=real, **pc)
            self.g.add_edges(prev, t, lag=np.where(real, self.hop_ns, 0))
            prev = t
        rx = self.add(m, "nic_recv", d, res=self.nic_rx[d], dur=ceil_div(wire, 1.0 / self.ns_line), bytes=pbytes,
                      tokens=ptokens, **pc)
        self.g.add_edges(prev, rx, lag=hw.switch.cable_latency_ns)
        if self.cfg.granularity == "packet":
            self.g.add_edges(tx[pos > 0] - 1, tx[pos > 0])  # packets of a message leave in order
            msg_id = np.broadcast_to(np.asarray(common.get("msg_id", -1), np.int64), (n,))
            return tx[first], self._join(rx, msg, msg_id)
        return tx, rx

    def _join(self, rx: np.ndarray, msg: np.ndarray, msg_id: np.ndarray) -> np.ndarray:
        """A zero-time task per message that waits for all its packets."""
        done = self.add(msg_id.shape[0], "nic_recv", -1, dur=0, record=False, msg_id=msg_id)
        self.g.add_edges(rx, done[msg])
        return done

    def _hops(self, s: np.ndarray, d: np.ndarray, qp: object) -> list[tuple[np.ndarray, np.ndarray]]:
        """Switch egress ports on the path from NIC s to NIC d with their buffers; ``-1`` marks a hop
        the packet skips (inside one leaf it goes straight down)."""
        if not self.leaf_spine:
            return [(self.down[d], self.down_buf[d])]
        ls, ld = self.leaf_of[s], self.leaf_of[d]
        half = self.hosts_per_leaf
        u = (s * 7919 + d * 104729 + np.asarray(qp, np.int64)) % half  # ECMP: a hash of the flow picks the uplink
        spine, j = u % self.spines, u // self.spines
        up = ls * half + u
        sp = (spine * self.leaves + ld) * self.per_spine + j
        cross = ls != ld
        return [
            (np.where(cross, self.up[up], -1), np.where(cross, self.up_buf[up], -1)),
            (np.where(cross, self.spine_down[sp], -1), np.where(cross, self.spine_buf[sp], -1)),
            (self.down[d], self.down_buf[d]),
        ]
