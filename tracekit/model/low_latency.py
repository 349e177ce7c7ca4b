"""DeepEP-like low-latency kernels (decode) as task graphs: pure RDMA, no rings, no credits; and the
zero-buffer variant.

The launch follows DeepEP's (csrc/kernels/internode_ll.cu): ``groups = ceil(experts / SMs)`` warp
groups per SM on ``ceil(experts / groups)`` SMs; expert (or (rank, local expert) pair) ``i`` belongs to
the warp group on SM ``i // groups``.

Dispatch: every SM takes every ``num_sms``-th token; all its warps cast it (FP8 by default) into a send
buffer, then warp k writes selection k straight into the expert's receive slot on the expert's rank
(the top-k warps side by side): by RDMA to other nodes, by NVLink stores to peers on the same node (as
DeepEP does where peers are reachable), (worst-case-sized, double-buffered slots: no flow control, so a
send queue that is too shallow stalls the poster). The expert's warp group sends the expert a count by
RDMA atomic on the same QP (after the data) once its SM has finished its tokens and every selection of
the rank for that expert has been issued. A grid sync ends the send phase; then each (source, local
expert) pair's warp group waits for its count and copies that source's tokens into the expert's packed
input. QPs: one per (peer, local expert).

Combine: each (owner, local expert) pair's warp group sends the pair's result rows back by RDMA write
into the token owner's slot for that expert, then the pair's flag by RDMA atomic; the owner waits for
its flags and, after a grid sync, computes each token's weighted sum of its top-k rows.

Zero buffer (``--mode zero_buffer``): as low-latency, but each (source, expert) pair first reserves its
place in the expert's final input by a fetch-and-add round trip to the expert's rank, and the writes
land there directly, so the receiver copies nothing (zero copy) while every pair pays one round trip
before its first write. Message sizes follow DeepEP: dispatch
``bytes_per_token + 16`` (the token index and scales header), combine ``2H`` (BF16).
"""

from __future__ import annotations

import numpy as np

from tracekit.engine import TaskGraph
from tracekit.errors import TracekitError
from tracekit.hardware import Profile
from tracekit.model.chunks import combine_keys
from tracekit.model.cluster import Cluster
from tracekit.model.config import ReplayConfig
from tracekit.model.normal import Built, _ring_pools
from tracekit.workload.layout import DispatchLayout
from tracekit.workload.routing import Routing, bytes_per_token

#: Most tokens per rank the low-latency kernels take (DeepEP recommends at most 256 per batch).
MAX_TOKENS = 1024
HEADER_BYTES = 16


def _groups(hw: Profile, num_experts: int) -> int:
    """DeepEP's launch: warp groups per SM, enough that every expert has one on at most all SMs."""
    return -(-num_experts // hw.gpu.sms)


def _sms(hw: Profile, num_experts: int) -> int:
    """SMs of DeepEP's launch: ceil(experts / warp groups per SM); expert (or pair) ``i``'s warp group is
    on SM ``i // groups``."""
    return -(-num_experts // _groups(hw, num_experts))


def _selections(routing: Routing, layout: DispatchLayout):
    e = routing.topk_expert
    row, k = np.nonzero(e >= 0)
    expert = e[row, k].astype(np.int64)
    epr = routing.meta.num_experts // routing.meta.ep_size
    return row.astype(np.int64), expert, expert // epr, expert % epr


def _check(routing: Routing, layout: DispatchLayout) -> None:
    per_rank = np.bincount(layout.src_rank, minlength=routing.meta.ep_size)
    if per_rank.max(initial=0) > MAX_TOKENS:
        raise TracekitError(
            f"low-latency kernels take at most {MAX_TOKENS} tokens per rank; this batch has {int(per_rank.max())}",
            fix="use --mode normal for prefill-sized batches (tracekit synth --preset decode makes decode batches)",
        )


class _LL:
    """Shared set-up of one low-latency phase."""

    def __init__(self, routing: Routing, layout: DispatchLayout, hw: Profile, cfg: ReplayConfig, phase: str) -> None:
        _check(routing, layout)
        meta = routing.meta
        self.dtype = cfg.payload_dtype(meta, phase)
        self.payload = bytes_per_token(meta.hidden, self.dtype)  # bytes of one token in this phase's type
        self.g = TaskGraph()
        self.cl = Cluster(self.g, hw, routing.meta.ep_size, routing.meta.gpus_per_node, cfg, phase)
        cl = self.cl
        self.R = cl.R
        self.E = routing.meta.num_experts
        self.epr = self.E // self.R
        self.groups = _groups(hw, self.E)
        self.nsm = _sms(hw, self.E)
        if hasattr(cl, "qp_miss_ns"):  # one QP per (peer on another node, local expert), as DeepEP's
            cl.set_qps((self.R - cl.G) * self.epr)
        self.sms = self.g.resources([f"{p}/sm/ll{j}" for p in cl.prefix for j in range(self.nsm)])
        self.src = layout.src_rank.astype(np.int64)
        self.tok = layout.token.astype(np.int64)
        self.row, self.expert, self.dst, self.local = _selections(routing, layout)
        ranks = np.arange(self.R)
        # the host part: allocate the outputs, launch one kernel (no layout, no notify, no CPU wait)
        self.start = cl.add(self.R, "launch", ranks, dur=hw.host.alloc_ns + hw.gpu.kernel_launch_ns)

    def sm(self, rank: np.ndarray, index: np.ndarray) -> np.ndarray:
        return self.sms[rank * self.nsm + index % self.nsm]

    def sm_done(self, tasks: np.ndarray, rank: np.ndarray, index: np.ndarray, stage: str) -> np.ndarray:
        """Per (rank, SM): a join after ``tasks`` (run on SM ``index % nsm`` of ``rank``); an SM with none
        is done at its rank's kernel start."""
        n = self.R * self.nsm
        done = self.cl.add(n, stage, np.repeat(np.arange(self.R), self.nsm), dur=0, record=False)
        self.g.add_edges(self.start[np.arange(n) // self.nsm], done)
        self.g.add_edges(tasks, done[rank * self.nsm + index % self.nsm])
        return done

    def grid_sync(self, sm_done: np.ndarray, stage: str) -> np.ndarray:
        """Per rank: DeepEP's cooperative grid sync between the send and the receive phase of one kernel
        (gpu.grid_sync_ns once every SM of the rank has reached it; callers add what else the SMs wait for
        before it)."""
        sync = self.cl.add(self.R, stage, np.arange(self.R), dur=self.cl.hw.gpu.grid_sync_ns, record=False)
        self.g.add_edges(sm_done, sync[np.arange(sm_done.shape[0]) // self.nsm])
        return sync

    def copy_out(self, stage: str, rank, index, nbytes, tokens, token_ns: int = 0, rows: object = 0, **attrs):
        """An SM copy on one of ``rank``'s SMs (``token_ns`` per token, the reduction of ``rows`` rows),
        then its HBM traffic (read + write)."""
        cl = self.cl
        n = rank.shape[0]
        sm = cl.add(n, stage, rank, res=self.sm(rank, index), dur=cl.copy_ns(nbytes, tokens, token_ns, rows=rows),
                    tokens=tokens, bytes=nbytes, **attrs)
        mem = cl.add(n, "hbm", rank, res=cl.hbm[rank], dur=np.ceil(2 * nbytes * cl.ns_hbm).astype(np.int64),
                     tokens=tokens, bytes=2 * nbytes, **attrs)
        cl.g.add_edges(sm, mem)
        return sm, mem

    def send(self, s, d, le, nbytes, tokens, after, msg, kind: str):
        """RDMA writes on QP (peer, local expert) to other nodes, NVLink stores to peers on the same node
        (DeepEP's low-latency kernels use NVLink where peers are reachable), local copies to itself;
        returns the tasks after which the bytes are in the destination's memory."""
        cl = self.cl
        arrive = after.copy()
        same_node = cl.node_of[s] == cl.node_of[d]
        peer = np.flatnonzero(same_node & (s != d))
        if peer.size:
            arrive[peer] = cl.nvlink(s[peer], d[peer], nbytes[peer], after[peer], tokens=tokens[peer], msg_id=msg[peer])
        remote = np.flatnonzero(~same_node)
        if remote.size:
            key = combine_keys(s[remote], le[remote], d[remote])
            sq = _ring_pools(cl, s[remote], le[remote], d[remote], f"nic0/sq_{kind}", cl.hw.nic.wqe_depth, key)
            cq = _ring_pools(cl, s[remote], le[remote], d[remote], f"nic0/cq_{kind}", cl.hw.nic.cq_depth, key)
            m = cl.rdma(s[remote], d[remote], nbytes[remote], tokens[remote], after[remote], sq, cq, le[remote],
                        atomic=False, msg_id=msg[remote])
            arrive[remote] = m.arrival
        return arrive

    def signal(self, s, d, le, after_join, msg, kind: str):
        """A count or flag per (source, expert) by RDMA atomic after ``after_join``; returns arrivals."""
        cl = self.cl
        n = s.shape[0]
        hw = cl.hw
        zero = np.zeros(n, np.int64)
        arrive = self.send(s, d, le, np.full(n, 8), zero, after_join, msg, kind)
        remote = cl.node_of[s] != cl.node_of[d]
        peer = ~remote & (s != d)
        done = cl.add(n, "rdma_atomic", d, dur=np.where(remote, hw.nic.atomic_ns, 0), msg_id=msg, src_rank=s,
                      dst_rank=d)
        lag = np.where(remote, hw.pcie.latency_ns, np.where(peer, hw.nvlink.latency_ns + hw.nvlink.signal_ns, 0))
        cl.g.add_edges(arrive, done, lag=lag)
        return done


def build_ll_dispatch(routing: Routing, layout: DispatchLayout, hw: Profile, cfg: ReplayConfig) -> Built:
    ll = _LL(routing, layout, hw, cfg, "dispatch")
    cl, g = ll.cl, ll.g
    bpt = ll.payload
    msg_bytes = bpt + HEADER_BYTES
    n_rows = ll.src.shape[0]
    rows = np.arange(n_rows)
    # 1. each SM takes every nsm-th token of its rank: all its warps cast the token into the send buffer
    # (gpu.ll_token_ns), then warp k sends selection k (a slot atomic and the WQE/put issue:
    # gpu.ll_selection_ns); the top-k warps run side by side, so a token pays one selection's work, not
    # k. To GPUs of its own node (itself included) each warp stores the message itself: those copies
    # share the SM's load/store units, so their bytes add up at the SM's copy rate
    sel_per_row = np.bincount(ll.row, minlength=n_rows)
    same = cl.node_of[ll.src[ll.row]] == cl.node_of[ll.dst]
    sm_copies = np.bincount(ll.row[same], minlength=n_rows)
    cl.order(rows, ll.tok // ll.nsm)
    dur = cl.copy_ns(msg_bytes * (1 + sm_copies), 1, hw.gpu.ll_token_ns) + (sel_per_row > 0) * hw.gpu.ll_selection_ns
    pack = cl.add(n_rows, "pack", ll.src, res=ll.sm(ll.src, ll.tok), dur=dur, tokens=1,
                  bytes=msg_bytes * (1 + sm_copies), msg_id=rows, src_rank=ll.src, dst_rank=-1)
    g.add_edges(ll.start[ll.src], pack)
    # 2. one RDMA write per selection, into the expert's slot
    sel = ll.row
    s, d, le = ll.src[sel], ll.dst, ll.local
    nsel = sel.size
    smsg = n_rows + np.arange(nsel)
    cl.order(smsg, ll.tok[sel] // ll.nsm)
    pair_of_sel = s * ll.E + ll.expert
    ready = pack[sel]
    zero = cfg.mode == "zero_buffer"
    if zero:
        # zero buffer: the first token of each (source, expert) pair reserves the pair's place in the
        # expert's final input with a fetch-and-add round trip; every write of the pair waits for it
        pairs, first = np.unique(pair_of_sel, return_index=True)
        n_pairs = pairs.size
        amsg = n_rows + nsel + ll.R * ll.E + np.arange(n_pairs)
        cl.order(amsg, ll.tok[sel[first]] // ll.nsm)
        reserve = ll.signal(s[first], d[first], le[first], pack[sel[first]], amsg, "ll")
        back = cl.add(n_pairs, "rdma_atomic", s[first], dur=0, msg_id=amsg, src_rank=d[first], dst_rank=s[first])
        g.add_edges(reserve, back, lag=np.where(cl.node_of[s[first]] != cl.node_of[d[first]],
                                                cl.one_way_ns + hw.pcie.latency_ns if cl.N > 1 else 0,
                                                np.where(s[first] != d[first], hw.nvlink.latency_ns, 0)))
        ready = cl.add(nsel, "pack", s, dur=0, record=False, msg_id=smsg)
        g.add_edges(pack[sel], ready)
        g.add_edges(back[np.searchsorted(pairs, pair_of_sel)], ready)
    arrive = ll.send(s, d, le, np.full(nsel, msg_bytes), np.ones(nsel, np.int64), ready, smsg, "ll")
    # 3. counts: one atomic per (source, expert) behind its data, sent by the expert's warp group (on SM
    # expert // groups) once that SM has finished its own tokens and every selection of the rank for
    # that expert has been issued (DeepEP's per-expert finish counter)
    pairs_s = np.repeat(np.arange(ll.R), ll.E)
    pairs_e = np.tile(np.arange(ll.E), ll.R)
    sm_done = ll.sm_done(pack, ll.src, ll.tok, "pack")
    ready_count = cl.add(pairs_s.size, "pack", pairs_s, dur=0, record=False)
    g.add_edges(sm_done[pairs_s * ll.nsm + pairs_e // ll.groups], ready_count)
    g.add_edges(pack[sel], ready_count[pair_of_sel])
    pmsg = n_rows + nsel + np.arange(pairs_s.size)
    cl.order(pmsg, np.full(pairs_s.size, 1 << 20))
    count = ll.signal(pairs_s, pairs_e // ll.epr, pairs_e % ll.epr, ready_count, pmsg, "ll")
    # 4. a grid sync ends the send phase (gpu.grid_sync_ns, once every SM of the rank has sent); then the
    # warp group of each (source, local expert) pair, on SM pair // groups, copies the pair's tokens once
    # their count has landed, one warp per token: the payload, then the scales of an FP8/INT8 payload as a
    # separate per-lane load and strided store (gpu.fp8_token_ns, as the normal receiver's). Zero buffer:
    # the tokens already are where the expert reads them; only the per-token work remains
    sent = ll.grid_sync(sm_done, "unpack")
    ntok = np.bincount(pair_of_sel, minlength=pairs_s.size)
    rd = pairs_e // ll.epr
    scales_ns = hw.gpu.fp8_token_ns if ll.dtype != "bf16" else 0
    unpack, mem = ll.copy_out("unpack", rd, (pairs_s * ll.epr + pairs_e % ll.epr) // ll.groups,
                              ntok * (0 if zero else msg_bytes), ntok, scales_ns, msg_id=pmsg, src_rank=pairs_s,
                              dst_rank=rd)
    g.add_edges(count, unpack)
    g.add_edges(sent[rd], unpack)
    g.add_edges(arrive, unpack[pair_of_sel])
    built = Built("dispatch", g, cl, bpt, msg_bytes, ll.start, pack, sel, d, mem[pair_of_sel])
    built.delivery_expert = ll.expert
    built.receive_done = mem  # the receiver waits for every (expert, source) count, empty ones too
    built.flows.append((pack[sel], unpack[pair_of_sel]))
    built.bandwidth_bytes = msg_bytes  # DeepEP counts 7408 B per FP8 selection at H = 7168 (header included)
    return built


def build_ll_combine(routing: Routing, layout: DispatchLayout, hw: Profile, cfg: ReplayConfig) -> Built:
    ll = _LL(routing, layout, hw, cfg, "combine")
    cl, g = ll.cl, ll.g
    row_bytes = ll.payload
    sel = ll.row
    s, d, le = ll.src[sel], ll.dst, ll.local
    nsel = sel.size
    # 1. each expert's rank sends every result row back into its owner's slot for that expert
    smsg = np.arange(nsel)
    cl.order(smsg, ll.tok[sel] // ll.nsm)
    # one warp group per (owner rank, local expert), as DeepEP launches them: group dst * epr + local on SM
    # (dst * epr + local) // groups; all owners are served at once
    group = s * ll.epr + le
    dur = cl.copy_ns(row_bytes, 1, hw.gpu.ll_selection_ns)  # per row: its copy and its send issue
    pack = cl.add(nsel, "combine_pack", d, res=ll.sm(d, group // ll.groups), dur=dur, tokens=1,
                  bytes=row_bytes, msg_id=smsg, src_rank=d, dst_rank=s)
    g.add_edges(ll.start[d], pack)
    arrive = ll.send(d, s, le, np.full(nsel, row_bytes), np.ones(nsel, np.int64), pack, smsg, "ll_combine")
    # 2. a flag per (expert, owner), sent by the pair's warp group as soon as the group has sent its own
    # rows (a barrier of the group's warps, not of the rank)
    pairs_e = np.repeat(np.arange(ll.E), ll.R)
    pairs_s = np.tile(np.arange(ll.R), ll.E)
    holder = pairs_e // ll.epr
    group_done = cl.add(pairs_e.size, "combine_pack", holder, dur=0, record=False)
    g.add_edges(ll.start[holder], group_done)
    g.add_edges(pack, group_done[ll.expert * ll.R + s])
    pmsg = nsel + np.arange(pairs_e.size)
    cl.order(pmsg, np.full(pairs_e.size, 1 << 20))
    flag = ll.signal(holder, pairs_s, pairs_e % ll.epr, group_done, pmsg, "ll_combine")
    # the owner's groups poll their flags, then a grid sync (every SM past its own sends and polls:
    # gpu.grid_sync_ns) starts the reduction
    flags_in = ll.grid_sync(ll.sm_done(pack, d, group // ll.groups, "combine_pack"), "combine_reduce")
    g.add_edges(flag, flags_in[pairs_s])
    # 3. each owner reduces its tokens' top-k rows, token by token on its SMs
    n_rows = ll.src.shape[0]
    k_valid = np.bincount(sel, minlength=n_rows)
    rmsg = nsel + pairs_e.size + np.arange(n_rows)
    cl.order(rmsg, np.full(n_rows, (1 << 20) + 1))
    fin, fin_mem = ll.copy_out("combine_unpack", ll.src, ll.tok, (k_valid + 1) * row_bytes // 2,
                               np.ones(n_rows, np.int64), hw.gpu.ll_combine_token_ns, rows=k_valid,
                               msg_id=rmsg, src_rank=ll.src, dst_rank=ll.src)
    g.add_edges(flags_in[ll.src], fin)
    g.add_edges(arrive, fin[sel])
    built = Built("combine", g, cl, row_bytes, row_bytes, ll.start, pack, sel, d, fin_mem[sel])
    built.delivery_expert = ll.expert
    built.receive_done = fin_mem  # every token's reduction waits for all flags, masked tokens too
    built.flows.append((pack, fin[sel]))
    built.bandwidth_bytes = row_bytes
    return built
