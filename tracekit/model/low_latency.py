"""DeepEP-like low-latency kernels (decode) as task graphs: pure RDMA, no rings, no credits; and the
zero-buffer variant.

Dispatch: every SM takes every ``num_sms``-th token, casts it (FP8 by default) into a send buffer and
writes it once per valid top-k selection straight into the expert's receive slot on the expert's
rank: by RDMA to other nodes, by NVLink stores to peers on the same node (as DeepEP does where peers
are reachable), (worst-case-sized, double-buffered slots: no flow control, so a send queue that is too
shallow stalls the poster). When a rank has sent all its tokens, it sends every expert a count by
RDMA atomic on the same QP (after the data). The receiver waits for each (expert, source) count and
copies that source's tokens into the expert's packed input. QPs: one per (peer, local expert).

Combine: each expert's rank sends every result row back by RDMA write into the token owner's slot
for that expert, then a flag per (expert, source) by RDMA atomic; the owner waits for the flags and
computes each token's weighted sum of its top-k rows.

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


def _sms(hw: Profile, num_experts: int) -> int:
    """DeepEP's launch: enough warp groups per SM that every expert has one, on at most all SMs."""
    groups = -(-num_experts // hw.gpu.sms)
    return -(-num_experts // groups)


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
        self.payload = bytes_per_token(meta.hidden, cfg.payload_dtype(meta, phase))  # bytes of one token in this phase's type
        self.g = TaskGraph()
        self.cl = Cluster(self.g, hw, routing.meta.ep_size, routing.meta.gpus_per_node, cfg, phase)
        cl = self.cl
        self.R = cl.R
        self.E = routing.meta.num_experts
        self.epr = self.E // self.R
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
    # 1. each SM casts every nsm-th token of its rank into the send buffer (gpu.ll_token_ns), and its warps
    # send the token once per valid selection (gpu.ll_selection_ns each: slot atomic, WQE/put issue); to
    # GPUs of its own node (itself included) the warp stores the message itself, at the SM's copy rate
    sel_per_row = np.bincount(ll.row, minlength=n_rows)
    same = cl.node_of[ll.src[ll.row]] == cl.node_of[ll.dst]
    sm_copies = np.bincount(ll.row[same], minlength=n_rows)
    cl.order(rows, ll.tok // ll.nsm)
    dur = cl.copy_ns(msg_bytes * (1 + sm_copies), 1, hw.gpu.ll_token_ns) + sel_per_row * hw.gpu.ll_selection_ns
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
    # 3. counts: after a rank has sent everything, one atomic per (source, expert) behind its data
    sent = cl.add(ll.R, "pack", np.arange(ll.R), dur=0, record=False)
    g.add_edges(pack, sent[ll.src])
    pairs_s = np.repeat(np.arange(ll.R), ll.E)
    pairs_e = np.tile(np.arange(ll.E), ll.R)
    pmsg = n_rows + nsel + np.arange(pairs_s.size)
    cl.order(pmsg, np.full(pairs_s.size, 1 << 20))
    count = ll.signal(pairs_s, pairs_e // ll.epr, pairs_e % ll.epr, sent[pairs_s], pmsg, "ll")
    # 4. the receiver copies each (expert, source)'s tokens once their count has landed (zero buffer:
    # they already are where the expert reads them; only the per-token bookkeeping remains)
    ntok = np.bincount(pair_of_sel, minlength=pairs_s.size)
    rd = pairs_e // ll.epr
    unpack, mem = ll.copy_out("unpack", rd, (pairs_e % ll.epr) * ll.R + pairs_s, ntok * (0 if zero else msg_bytes),
                              ntok, msg_id=pmsg, src_rank=pairs_s, dst_rank=rd)
    g.add_edges(count, unpack)
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
    # one warp group per (local expert, owner rank), as DeepEP launches them: all owners are served at once
    dur = cl.copy_ns(row_bytes, 1, hw.gpu.ll_selection_ns)  # per row: its copy and its send issue
    pack = cl.add(nsel, "combine_pack", d, res=ll.sm(d, le * ll.R + s), dur=dur, tokens=1,
                  bytes=row_bytes, msg_id=smsg, src_rank=d, dst_rank=s)
    g.add_edges(ll.start[d], pack)
    arrive = ll.send(d, s, le, np.full(nsel, row_bytes), np.ones(nsel, np.int64), pack, smsg, "ll_combine")
    # 2. a flag per (expert, source) once the expert's rank has sent all its rows
    sent = cl.add(ll.R, "combine_pack", np.arange(ll.R), dur=0, record=False)
    g.add_edges(pack, sent[d])
    pairs_e = np.repeat(np.arange(ll.E), ll.R)
    pairs_s = np.tile(np.arange(ll.R), ll.E)
    pmsg = nsel + np.arange(pairs_e.size)
    cl.order(pmsg, np.full(pairs_e.size, 1 << 20))
    holder = pairs_e // ll.epr
    flag = ll.signal(holder, pairs_s, pairs_e % ll.epr, sent[holder], pmsg, "ll_combine")
    flags_in = cl.add(ll.R, "combine_reduce", np.arange(ll.R), dur=0, record=False)
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
