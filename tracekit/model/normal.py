"""DeepEP-like normal kernels (training, prefill) as task graphs: one builder per phase.

Dispatch inside a node: each channel's sender SM copies chunks of ``nvl_send_chunk`` tokens into a
ring of ``nvl_recv_buffer`` token slots on the receiver (over NVLink), the receiver SM copies them out
and returns credits. Between nodes: a token goes by RDMA (write + atomic tail, GPU-initiated) to the
GPU with the same local index on each destination node, whose forwarder SM copies it over NVLink to
the GPUs hosting its experts; RDMA and NVLink rings are credit-controlled. Combine runs the path
backwards and reduces (at the forwarder across the node's GPUs, at the source across nodes).
Channels split each rank's tokens into contiguous ranges; destinations are visited in rotated order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tracekit.arrays import sort_packed
from tracekit.engine import TaskGraph
from tracekit.errors import TracekitError
from tracekit.hardware import Profile
from tracekit.model.chunks import (chain_edges, chain_pairs, chunk_items, combine_keys, first_items, sorted_unique,
                                   time_major, unique_pairs)
from tracekit.model.cluster import Cluster
from tracekit.model.config import ReplayConfig
from tracekit.workload.layout import DispatchLayout
from tracekit.workload.routing import Routing, bytes_per_token


@dataclass
class Built:
    """A phase's task graph plus what the replay needs to check and summarise it."""

    phase: str
    graph: TaskGraph
    cluster: Cluster
    bytes_per_token: int  # payload bytes per token (DeepEP's bandwidth accounting)
    wire_bytes_per_token: int  # bytes actually copied per token (payload + metadata)
    start: np.ndarray  # per rank: the task after which data may move (kernel launched)
    first_data: np.ndarray  # tasks that start moving data
    delivery_row: np.ndarray  # per delivered item: routing row (token)
    delivery_rank: np.ndarray  # ... and the rank it was delivered to
    delivery_task: np.ndarray  # ... and the task that delivered it
    flows: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)
    rings: "RingLog | None" = None  # NVLink ring bookkeeping for memory-operation records
    delivery_expert: np.ndarray | None = None  # low-latency kernels deliver per (token, expert) selection
    bandwidth_bytes: int = 0  # low-latency: bytes per selection in DeepEP's bandwidth figure
    receive_done: np.ndarray | None = None  # tasks ending a receive that delivers no token (counts, flags)
    call_start: np.ndarray | None = None  # per rank: the call's first (host) task, if not ``start``


@dataclass
class RingLog:
    """Per chunk of the NVLink rings of an intranode dispatch: what :mod:`tracekit.model.memops` needs
    to write the memory-level operations (slot stores, tail, credits) of every chunk."""

    capacity: int  # ring slots (tokens)
    group: np.ndarray  # ring of each chunk (chunks of a ring are consecutive, in send order)
    src: np.ndarray
    channel: np.ndarray
    dst: np.ndarray
    tokens: np.ndarray
    pack: np.ndarray  # task that takes the credits and copies
    arrive: np.ndarray  # task whose end puts the data in the receiver's ring
    unpack: np.ndarray  # task that copies the chunk out
    credit_task: np.ndarray  # task whose end (+ credit_lag) returns the chunk's credits
    credit_lag: np.ndarray
    item_chunk: np.ndarray  # chunk of each delivered item (built.delivery_row order)


def _rows_channels(layout: DispatchLayout, channels: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per routing row: source rank, token index, channel (contiguous token ranges per channel)."""
    src = layout.src_rank.astype(np.int64)
    tok = layout.token.astype(np.int64)
    per_rank = np.bincount(src, minlength=layout.ep_size)
    ch = tok * channels // np.maximum(per_rank[src], 1)
    return src, tok, np.minimum(ch, channels - 1)


def _prologue(cl: Cluster, tokens_per_rank: np.ndarray, cached: bool,
              phase: str) -> tuple[np.ndarray, np.ndarray]:
    """The host part of a call, per rank; returns (the call's first task, the task after which the
    phase's data may move).

    The CPU synchronises the communication stream with the compute stream (``host.stream_sync_ns``) and
    launches kernels (``gpu.kernel_launch_ns`` each) while the GPU runs them. A dispatch without a
    cached handle runs the layout kernel (``host.layout_base_ns`` + per token ``layout_token_ns`` +
    ``layout_token_rank_ns`` per rank), the notify kernel (count exchange and barrier: ``notify_base_ns`` +
    ``notify_rank_ns`` per peer rank, after every rank's layout), then the CPU waits for the receive
    counts (``cpu_wait_ns``), allocates the outputs (``alloc_ns``) and launches the data kernel. A
    cached dispatch and every combine run DeepEP's cached notify instead (buffer clean-up and a barrier
    across ranks: ``gpu.grid_sync_ns``) while the CPU allocates and launches: no layout, no CPU wait.
    """
    hw = cl.hw
    R = cl.R
    ranks = np.arange(R)
    launch_ns = hw.gpu.kernel_launch_ns
    # every rank needs every other rank's counts (or barrier arrival): NVLink inside a node, RDMA between
    lag = hw.nvlink.latency_ns + (cl.one_way_ns + 2 * hw.pcie.latency_ns if cl.N > 1 else 0)
    src = np.repeat(ranks, R)
    dst = np.tile(ranks, R)
    first = cl.add(R, "launch", ranks, dur=hw.host.stream_sync_ns + launch_ns)
    if cached or phase == "combine":
        notify = cl.add(R, "notify", ranks, dur=hw.gpu.grid_sync_ns)
        cl.g.add_edges(first[src], notify[dst], lag=np.where(src == dst, 0, lag))
        alloc = cl.add(R, "alloc", ranks, dur=hw.host.alloc_ns)
        cl.g.add_edges(first, alloc)
        launch = cl.add(R, "launch", ranks, dur=launch_ns)
        cl.g.add_edges(alloc, launch)
        start = cl.add(R, "launch", ranks, dur=0, record=False)  # the kernel runs after the notify on its stream
        cl.g.add_edges(launch, start)
        cl.g.add_edges(notify, start)
        return first, start
    per_token = hw.host.layout_token_ns + R * hw.host.layout_token_rank_ns
    work = hw.host.layout_base_ns + np.ceil(tokens_per_rank * per_token)
    layout = cl.add(R, "layout", ranks, dur=work.astype(np.int64))
    cl.g.add_edges(first, layout)
    second = cl.add(R, "launch", ranks, dur=launch_ns)  # the CPU launches notify while layout runs
    cl.g.add_edges(first, second)
    notify = cl.add(R, "notify", ranks, dur=hw.host.notify_base_ns + R * hw.host.notify_rank_ns)
    cl.g.add_edges(layout[src], notify[dst], lag=np.where(src == dst, 0, lag))
    cl.g.add_edges(second, notify)
    sync = cl.add(R, "cpu_sync", ranks, dur=hw.host.cpu_wait_ns)
    cl.g.add_edges(notify, sync)
    alloc = cl.add(R, "alloc", ranks, dur=hw.host.alloc_ns)
    cl.g.add_edges(sync, alloc)
    launch = cl.add(R, "launch", ranks, dur=launch_ns)
    cl.g.add_edges(alloc, launch)
    return first, launch


def _ring_pools(cl: Cluster, owner: np.ndarray, channel: np.ndarray, peer: np.ndarray, kind: str,
                capacity: int, group: np.ndarray) -> np.ndarray:
    """One pool per distinct group: ring ``kind`` on rank ``owner`` for ``channel`` from ``peer``
    (``nic0/sq*`` and ``nic0/cq*`` kinds are send and completion queues of the QP to ``peer``'s node)."""
    cause = "send_queue" if "/sq" in kind else "cq" if "/cq" in kind else "credit"
    order, key = sort_packed(group)
    new = np.r_[True, key[1:] != key[:-1]] if key.size else np.zeros(0, bool)
    first = order[new]  # each group's first chunk
    inv = np.empty(group.shape[0], np.int64)
    inv[order] = np.cumsum(new) - 1
    tag = "node" if cause != "credit" else "from"
    pre = cl.prefix
    names = [f"{pre[o]}/{kind}/ch{c}/{tag}{p}"
             for o, c, p in zip(owner[first].tolist(), channel[first].tolist(), peer[first].tolist())]
    return cl.g.pools(names, capacity, cause)[inv]


def _credit_return(cl: Cluster, consumers: np.ndarray, chunk: np.ndarray, nchunks: int, pool: np.ndarray,
                   amount: np.ndarray, rank: np.ndarray, lag: object, msg_of: np.ndarray | None = None,
                   **attrs: object) -> np.ndarray:
    """A zero-time task per chunk returning ``amount`` credits once every consumer task has finished."""
    ret = cl.add(nchunks, "credit_return", rank, dur=0, rel_pool=pool, rel_amount=amount, record=False,
                 **{"msg_id": msg_of if msg_of is not None else -1, **attrs})
    a, b = unique_pairs(consumers, chunk)
    cl.g.add_edges(a, ret[b], lag=np.broadcast_to(np.asarray(lag), (nchunks,))[b] if np.ndim(lag) else lag)
    return ret


def _partial_return(cl: Cluster, consumer: np.ndarray, chunk: np.ndarray, pool: np.ndarray, lag: np.ndarray) -> None:
    """Each item (token slot) is consumed by exactly one task: every (consumer, chunk) pair returns the
    slots it consumed when that consumer finishes, so a chunk shared by two consumers frees in parts."""
    radix = int(chunk.max()) + 1 if chunk.size else 1
    key = consumer.astype(np.int64)
    key *= radix
    key += chunk
    key.sort()
    starts = np.flatnonzero(np.r_[True, key[1:] != key[:-1]]) if key.size else np.zeros(0, np.int64)
    count = np.diff(np.r_[starts, key.size])
    key = key[starts]
    task, k = key // radix, key % radix
    cl.g.add_releases(task, pool[k], count, lag[k])


def _release_by(cl: Cluster, consumer: np.ndarray, pool: np.ndarray, amount: np.ndarray, lag: object) -> None:
    """One consumer per chunk: it returns the chunk's credits itself, ``lag`` ns after it finishes."""
    cl.g.add_releases(consumer, pool, amount, lag)


def _copy_out(cl: Cluster, stage: str, rank: np.ndarray, channel: np.ndarray, nbytes: np.ndarray, tokens: np.ndarray,
              role: str, hbm_factor: int, sync_ns: np.ndarray, rows: object = 0,
              **attrs: object) -> tuple[np.ndarray, np.ndarray]:
    """A receiver's chunk on ``rank`` (:meth:`Cluster.sm_work`) followed by its HBM traffic; returns
    (sm task, hbm task)."""
    n = rank.shape[0]
    sm = cl.sm_work(stage, rank, channel, role, nbytes, tokens, sync_ns, rows=rows, **attrs)
    mem = cl.add(n, "hbm", rank, res=cl.hbm[rank], dur=np.ceil(hbm_factor * nbytes * cl.ns_hbm).astype(np.int64),
                 channel=channel, tokens=tokens, bytes=hbm_factor * nbytes, **attrs)
    cl.g.add_edges(sm, mem)
    return sm, mem


def _phase_setup(routing: Routing, layout: DispatchLayout, hw: Profile, cfg: ReplayConfig, phase: str):
    """Model chunk sizes, graph, cluster, payload bytes per token and per-row (source, token, channel)."""
    meta = routing.meta
    pc = cfg.model_chunks(cfg.dispatch if phase == "dispatch" else cfg.combine)
    g = TaskGraph()
    cl = Cluster(g, hw, meta.ep_size, meta.gpus_per_node, cfg, phase)
    dtype = cfg.payload_dtype(meta, phase)
    # fixed SM work per token beyond the bytes: dispatch writes metadata (and scales for FP8/INT8)
    cl.token_ns = hw.gpu.combine_token_ns if phase == "combine" else \
        hw.gpu.dispatch_token_ns + (hw.gpu.fp8_token_ns if dtype != "bf16" else 0)
    src, tok, ch = _rows_channels(layout, cl.C)
    return pc, g, cl, bytes_per_token(meta.hidden, dtype), src, tok, ch


def build_dispatch(routing: Routing, layout: DispatchLayout, hw: Profile, cfg: ReplayConfig) -> Built:
    """The dispatch of one (step, layer) as a task graph."""
    pc, g, cl, bpt, src, tok, ch = _phase_setup(routing, layout, hw, cfg, "dispatch")
    wire = bpt + (cfg.meta_bytes_per_token if cfg.meta_bytes_per_token is not None else 8 + 8 * routing.topk)
    tokens_per_rank = np.bincount(src, minlength=cl.R)
    call, start = _prologue(cl, tokens_per_rank, cfg.cached, "dispatch")
    lat_nvl = hw.nvlink.latency_ns + hw.nvlink.signal_ns
    early = cfg.credit_return == "early"
    row, dst = np.nonzero(layout.is_token_in_rank)
    row = row.astype(np.int64)
    dst = dst.astype(np.int64)
    built = Built("dispatch", g, cl, bpt, wire, start, np.zeros(0, np.int64), row, dst, np.zeros(0, np.int64),
                  call_start=call)
    if cl.N == 1:
        _dispatch_intranode(cl, built, pc, src, tok, ch, row, dst, wire, lat_nvl, early)
    else:
        _dispatch_internode(cl, built, layout, pc, src, tok, ch, row, dst, wire, lat_nvl, early)
    return built


def _dispatch_intranode(cl, built, pc, src, tok, ch, row, dst, wire, lat_nvl, early) -> None:
    s, c, d = src[row], ch[row], dst
    group = combine_keys(s, c, d)
    item_chunk, cgroup, ntok, kidx = chunk_items(group, tok[row], pc.nvl_send_chunk)
    m = cgroup.shape[0]
    first = first_items(item_chunk, m)
    cs, cc, cd = s[first], c[first], d[first]
    nbytes = ntok * wire
    ring = _ring_pools(cl, cd, cc, cs, "nvl_ring", pc.nvl_recv_buffer, cgroup)
    msg = np.arange(m)
    cl.order(msg, kidx)
    attrs = dict(msg_id=msg, src_rank=cs, dst_rank=cd, phase_chunk=msg)
    sync = cl.sync_ns(ntok, cl.real.nvl_send_chunk)
    pack = cl.sm_work("pack", cs, cc, "a", nbytes, ntok, sync, pool=ring, amount=ntok, **attrs)
    cl.g.add_edges(built.start[cs], pack)
    a, b = chain_edges(cgroup)
    cl.g.add_edges(pack[a], pack[b])
    remote = cs != cd
    arrive = pack.copy()
    if remote.any():
        idx = np.flatnonzero(remote)
        arrive[idx] = cl.nvlink(cs[idx], cd[idx], nbytes[idx], pack[idx], channel=cc[idx], tokens=ntok[idx],
                                msg_id=msg[idx])
    unpack, mem = _copy_out(cl, "unpack", cd, cc, nbytes, ntok, "b", 2, sync, **attrs)
    cl.g.add_edges(arrive, unpack, lag=np.where(remote, lat_nvl, 0))
    cl.g.add_edges(unpack[a], unpack[b])
    credit_task = arrive if early else unpack
    credit_lag = np.where(remote, lat_nvl, 0)
    _release_by(cl, credit_task, ring, ntok, credit_lag)
    built.first_data = pack
    built.delivery_task = mem[item_chunk]
    built.flows.append((pack, unpack))
    built.rings = RingLog(pc.nvl_recv_buffer, cgroup, cs, cc, cd, ntok, pack, arrive, unpack, credit_task, credit_lag,
                          item_chunk)


def _dispatch_internode(cl, built, layout, pc, src, tok, ch, row, dst, wire, lat_nvl, early) -> None:
    hw = cl.hw
    G, N = cl.G, cl.N
    # 1. RDMA chunks: (source, channel, destination node), destinations rotated per source node
    nrow, nnode = np.nonzero(layout.is_token_in_node)
    nrow = nrow.astype(np.int64)
    nnode = nnode.astype(np.int64)
    s, c = src[nrow], ch[nrow]
    a_node = cl.node_of[s]
    rot = (nnode - a_node) % N
    group = combine_keys(s, c, rot)
    item_chunk, cgroup, ntok, kidx = chunk_items(group, tok[nrow], pc.rdma_send_chunk)
    # tasks are created in chunk-index order; messages keep their (source, channel, node)-major ids
    item_chunk, cgroup, ntok, kidx, msg = time_major(item_chunk, kidx, cgroup, ntok, kidx)
    m = cgroup.shape[0]
    first = first_items(item_chunk, m)
    rs, rc, rb = s[first], c[first], nnode[first]
    fwd_rank = rb * G + cl.local_of[rs]  # same local index on the destination node
    nbytes = ntok * wire
    ring = _ring_pools(cl, fwd_rank, rc, rs, "rdma_ring", pc.rdma_recv_buffer, cgroup)
    cl.order(msg, kidx)
    attrs = dict(msg_id=msg, src_rank=rs, dst_rank=fwd_rank)
    pack = cl.sm_work("pack", rs, rc, "a", nbytes, ntok, cl.sync_ns(ntok, cl.real.rdma_send_chunk), pool=ring,
                      amount=ntok, **attrs)
    cl.g.add_edges(built.start[rs], pack)
    a, b = chain_pairs(cgroup, kidx)
    cl.g.add_edges(pack[a], pack[b])
    remote = rb != cl.node_of[rs]
    arrive = pack.copy()
    ridx = np.flatnonzero(remote)
    if ridx.size:
        sq_key = combine_keys(rs[ridx], rc[ridx], rb[ridx])
        sq = _ring_pools(cl, rs[ridx], rc[ridx], rb[ridx], "nic0/sq", hw.nic.wqe_depth, sq_key)
        cq = _ring_pools(cl, rs[ridx], rc[ridx], rb[ridx], "nic0/cq", hw.nic.cq_depth, sq_key)
        m_ = cl.rdma(rs[ridx], fwd_rank[ridx], nbytes[ridx], ntok[ridx], pack[ridx], sq, cq, rc[ridx],
                     channel=rc[ridx], msg_id=msg[ridx])
        arrive[ridx] = m_.tail
        built.flows.append((m_.nic_send, m_.nic_recv))
    # 2. forward: the forwarder's warp for each local GPU copies that GPU's tokens of each RDMA chunk as
    # soon as the chunk has arrived (DeepEP forwards whatever has arrived), in NVLink chunks of at most
    # nvl_send_chunk tokens, one synchronisation per RDMA chunk it forwards.
    chunk_of = np.full((layout.is_token_in_node.shape[0], N), -1, np.int64)
    chunk_of[nrow, nnode] = item_chunk
    k_of_item = chunk_of[row, cl.node_of[dst]]
    window = _forward_window(cl, pc, k_of_item, cl.local_of[dst])
    fgroup = combine_keys(fwd_rank[k_of_item], rc[k_of_item], cl.local_of[dst], rs[k_of_item],
                          kidx[k_of_item] // window)
    f_item_chunk, f_group, f_ntok, _ = chunk_items(fgroup, tok[row], pc.nvl_send_chunk)
    fm = f_group.shape[0]
    ffirst = first_items(f_item_chunk, fm)
    f_item_chunk, f_group, f_ntok, ffirst, f_old = time_major(f_item_chunk, kidx[k_of_item[ffirst]], f_group, f_ntok,
                                                              ffirst)
    fk = k_of_item[ffirst]  # (first) RDMA chunk feeding it
    fd = dst[ffirst]
    ff = fwd_rank[fk]
    fc = rc[fk]
    f_bytes = f_ntok * wire
    nvl_ring = _ring_pools(cl, fd, fc, ff, "nvl_ring", pc.nvl_recv_buffer, combine_keys(fd, fc, ff))
    fmsg = m + f_old
    cl.order(fmsg, kidx[fk] + 1)
    fattrs = dict(msg_id=fmsg, src_rank=ff, dst_rank=fd)
    pk, pf = unique_pairs(k_of_item, f_item_chunk)
    fsync = cl.sync_ns(f_ntok, cl.real.nvl_send_chunk)
    if cl.cfg.granularity != "token":  # a copy merging RDMA chunks still pays one synchronisation for each
        fsync = np.maximum(fsync, np.bincount(pf, minlength=fm) * hw.gpu.chunk_sync_ns)
    fwd = cl.sm_work("forward", ff, fc, "b", f_bytes, f_ntok, fsync, pool=nvl_ring, amount=f_ntok, **fattrs)
    cl.g.add_edges(arrive[pk], fwd[pf])
    first_fwd = np.full(m, np.iinfo(np.int64).max)  # the first forward message fed by each RDMA chunk
    np.minimum.at(first_fwd, pk, f_old[pf])
    has = first_fwd < np.iinfo(np.int64).max
    f_new = np.empty(fm, np.int64)
    f_new[f_old] = np.arange(fm)
    built.flows.append((arrive[has], fwd[f_new[first_fwd[has]]]))
    fremote = fd != ff
    farrive = fwd.copy()
    fidx = np.flatnonzero(fremote)
    if fidx.size:
        farrive[fidx] = cl.nvlink(ff[fidx], fd[fidx], f_bytes[fidx], fwd[fidx], channel=fc[fidx],
                                  tokens=f_ntok[fidx], msg_id=fmsg[fidx])
    unpack, mem = _copy_out(cl, "unpack", fd, fc, f_bytes, f_ntok, "a", 2, fsync, **fattrs)
    cl.g.add_edges(farrive, unpack, lag=np.where(fremote, lat_nvl, 0))
    built.flows.append((fwd, unpack))
    # credits: NVLink ring slots after the copy-out; RDMA ring slots after every forward of the chunk
    _release_by(cl, farrive if early else unpack, nvl_ring, f_ntok, np.where(fremote, lat_nvl, 0))
    rdma_lag = np.where(remote, cl.one_way_ns + hw.pcie.latency_ns if N > 1 else 0, 0)
    _credit_return(cl, arrive[pk] if early else fwd[pf], pk, m, ring, ntok, rs, rdma_lag, msg)
    built.first_data = pack
    built.delivery_task = mem[f_item_chunk]


def _forward_window(cl: Cluster, pc, k_of_item: np.ndarray, local_dst: np.ndarray) -> int:
    """How many consecutive RDMA chunks one forward copy draws from. DeepEP forwards each chunk as it
    arrives (1). At ``chunk`` granularity the model merges the copies of consecutive chunks until they
    hold ``min_chunk_tokens`` tokens on average (as it merges small DeepEP chunks, each still paying its
    synchronisation), which keeps the task count in bounds; ``token`` granularity never merges. A given
    ``forward_window`` overrides both (a what-if). Never more than half the RDMA ring, so credits return."""
    half_ring = max(1, pc.rdma_recv_buffer // pc.rdma_send_chunk // 2)
    if cl.cfg.forward_window is not None:
        return min(cl.cfg.forward_window, half_ring)
    if cl.cfg.granularity == "token" or k_of_item.size == 0:
        return 1
    pairs = sorted_unique(k_of_item * cl.G + local_dst).size  # (RDMA chunk, local GPU) pairs with tokens
    per_pair = k_of_item.size / max(pairs, 1)
    return int(min(max(np.ceil(cl.cfg.min_chunk_tokens / per_pair), 1), half_ring))


def build_combine(routing: Routing, layout: DispatchLayout, hw: Profile, cfg: ReplayConfig) -> Built:
    """The combine of one (step, layer): every (token, rank) contribution goes back and is reduced."""
    pc, g, cl, bpt, src, tok, ch = _phase_setup(routing, layout, hw, cfg, "combine")
    wire = bpt
    call, start = _prologue(cl, np.bincount(src, minlength=cl.R), cfg.cached, "combine")
    row, holder = np.nonzero(layout.is_token_in_rank)
    row = row.astype(np.int64)
    holder = holder.astype(np.int64)
    built = Built("combine", g, cl, bpt, wire, start, np.zeros(0, np.int64), row, holder, np.zeros(0, np.int64),
                  call_start=call)
    _combine(cl, built, layout, pc, src, tok, ch, row, holder, wire, cfg.credit_return == "early")
    return built


def _combine(cl, built, layout, pc, src, tok, ch, row, holder, wire, early) -> None:
    """Holder ranks send contributions to the forwarder (same local index as the source, on the holder's
    node; the source itself inside one node), forwarders reduce and send one row per (token, node) to the
    source by RDMA, and the source reduces across nodes."""
    hw = cl.hw
    G, N = cl.G, cl.N
    lat_nvl = hw.nvlink.latency_ns + hw.nvlink.signal_ns
    s = src[row]
    c = ch[row]
    fwd = cl.node_of[holder] * G + cl.local_of[s] if N > 1 else s
    # holders visit sources in rotated node order (from their own node onwards), as DeepEP's senders do
    rot = (cl.node_of[s] - cl.node_of[holder]) % N
    order = (rot * cl.R + s) * (int(tok.max()) + 1 if tok.size else 1) + tok[row]
    # 1. NVLink chunks holder -> forwarder. Between nodes the forwarder's NVLink buffer is split by the
    # tokens' source node (as DeepEP does), so one node's backlog cannot block another's reduction.
    if N > 1:
        nvl_capacity = pc.nvl_recv_buffer // N
        need = max(pc.nvl_send_chunk, min(pc.rdma_send_chunk, nvl_capacity))
        if nvl_capacity <= pc.nvl_send_chunk:
            raise TracekitError(
                f"combine: the NVLink buffer of {pc.nvl_recv_buffer} tokens split over {N} source nodes leaves "
                f"{nvl_capacity} tokens each, not more than the {pc.nvl_send_chunk}-token chunk",
                fix=f"use --combine-nvl-buffer of at least {N * (need + 1)} tokens")
        group = combine_keys(holder, c, fwd, cl.node_of[s])
    else:
        nvl_capacity = pc.nvl_recv_buffer
        group = combine_keys(holder, c, fwd)
    item_chunk, cgroup, ntok, kidx = chunk_items(group, order, pc.nvl_send_chunk)
    item_chunk, cgroup, ntok, kidx, msg = time_major(item_chunk, kidx, cgroup, ntok, kidx)
    m = cgroup.shape[0]
    first = first_items(item_chunk, m)
    ch_, cc, cf = holder[first], c[first], fwd[first]
    nbytes = ntok * wire
    ring = _ring_pools(cl, cf, cc, ch_ if N == 1 else ch_ * N + cl.node_of[s[first]], "nvl_ring_combine",
                       nvl_capacity, cgroup)
    cl.order(msg, kidx)
    pack = cl.sm_work("combine_pack", ch_, cc, "a", nbytes, ntok, cl.sync_ns(ntok, cl.real.nvl_send_chunk), pool=ring,
                      amount=ntok, msg_id=msg, src_rank=ch_, dst_rank=cf)
    cl.g.add_edges(built.start[ch_], pack)
    a, b = chain_pairs(cgroup, kidx)
    cl.g.add_edges(pack[a], pack[b])
    remote = ch_ != cf
    arrive = pack.copy()
    idx = np.flatnonzero(remote)
    if idx.size:
        arrive[idx] = cl.nvlink(ch_[idx], cf[idx], nbytes[idx], pack[idx], channel=cc[idx], tokens=ntok[idx],
                                msg_id=msg[idx])
    built.first_data = pack
    if N == 1:
        # inside one node the source reduces the contributions itself
        block = max(1, min(max(pc.nvl_send_chunk, pc.rdma_send_chunk) * 4, pc.nvl_recv_buffer - pc.nvl_send_chunk + 1))
        fin_of_row = _final_reduce(cl, built, src, tok, ch, row, item_chunk, arrive, np.where(remote, lat_nvl, 0),
                                   block, m)
        _partial_return(cl, arrive[item_chunk] if early else fin_of_row[row], item_chunk, ring,
                        np.where(remote, lat_nvl, 0))
        built.flows.append((pack, fin_of_row[row[first]]))
        return
    # 2. reduction at the forwarder: one task per RDMA chunk (source, channel, node)
    nrow, nnode = np.nonzero(layout.is_token_in_node)
    nrow = nrow.astype(np.int64)
    nnode = nnode.astype(np.int64)
    rs, rcn = src[nrow], ch[nrow]
    rgroup = combine_keys(rs, rcn, (nnode - cl.node_of[rs]) % N)
    # a reduction chunk must fit in what one holder's NVLink ring can hold at once
    r_chunk = max(1, min(pc.rdma_send_chunk, nvl_capacity - pc.nvl_send_chunk + 1))
    r_item_chunk, r_group, r_ntok, r_kidx = chunk_items(rgroup, tok[nrow], r_chunk)
    r_item_chunk, r_group, r_ntok, r_kidx, r_old = time_major(r_item_chunk, r_kidx, r_group, r_ntok, r_kidx)
    rm = r_group.shape[0]
    rfirst = first_items(r_item_chunk, rm)
    k_s, k_c, k_b = rs[rfirst], rcn[rfirst], nnode[rfirst]
    k_f = k_b * G + cl.local_of[k_s]
    chunk_of = np.full((layout.is_token_in_node.shape[0], N), -1, np.int64)
    chunk_of[nrow, nnode] = r_item_chunk
    red_of_item = chunk_of[row, cl.node_of[holder]]
    contrib = np.bincount(red_of_item, minlength=rm)
    r_bytes = r_ntok * wire
    rring = _ring_pools(cl, k_s, k_c, k_b, "rdma_ring_combine", pc.rdma_recv_buffer, r_group)
    rmsg = m + r_old
    cl.order(rmsg, r_kidx * max(pc.rdma_send_chunk // max(pc.nvl_send_chunk, 1), 1) + 1)
    reduce = cl.sm_work("combine_reduce", k_f, k_c, "b", (contrib + r_ntok) * wire // 2, r_ntok,
                        cl.sync_ns(contrib, cl.real.nvl_send_chunk), rows=contrib, pool=rring, amount=r_ntok,
                        msg_id=rmsg, src_rank=k_f, dst_rank=k_s)
    pa, pb = unique_pairs(item_chunk, red_of_item)
    cl.g.add_edges(arrive[pa], reduce[pb], lag=np.where(remote[pa], lat_nvl, 0))
    a2, b2 = chain_pairs(r_group, r_kidx)
    cl.g.add_edges(reduce[a2], reduce[b2])
    built.flows.append((pack, reduce[red_of_item[first]]))
    _partial_return(cl, arrive[item_chunk] if early else reduce[red_of_item], item_chunk, ring,
                        np.where(remote, lat_nvl, 0))
    # 3. RDMA from the forwarder to the source (inside the source's own node: a local write)
    rremote = k_f != k_s
    rarrive = reduce.copy()
    ridx = np.flatnonzero(rremote)
    if ridx.size:
        nb = cl.node_of[k_s[ridx]]
        key = combine_keys(k_f[ridx], k_c[ridx], nb)
        sq = _ring_pools(cl, k_f[ridx], k_c[ridx], nb, "nic0/sq_combine", hw.nic.wqe_depth, key)
        cq = _ring_pools(cl, k_f[ridx], k_c[ridx], nb, "nic0/cq_combine", hw.nic.cq_depth, key)
        msg_ = cl.rdma(k_f[ridx], k_s[ridx], r_bytes[ridx], r_ntok[ridx], reduce[ridx], sq, cq, k_c[ridx],
                       channel=k_c[ridx], msg_id=rmsg[ridx])
        rarrive[ridx] = msg_.tail
        built.flows.append((msg_.nic_send, msg_.nic_recv))
    # 4. reduction across nodes at the source
    block = max(1, min(r_chunk * N, pc.rdma_recv_buffer - r_chunk + 1))
    fin_of_row = _final_reduce(cl, built, src, tok, ch, nrow, r_item_chunk, rarrive,
                               np.where(rremote, hw.pcie.latency_ns, 0), block, m + rm)
    _partial_return(cl, rarrive[r_item_chunk] if early else fin_of_row[nrow], r_item_chunk, rring,
                    np.where(rremote, cl.one_way_ns + hw.pcie.latency_ns, 0))


def _final_reduce(cl, built, src, tok, ch, item_row, item_chunk, arrival, arrival_lag, block, msg_base) -> np.ndarray:
    """Reduce at each source: blocks of ``block`` tokens per (rank, channel) wait for every arrival
    chunk holding one of their rows. Returns, per routing row, the reduction task that completes it."""
    b_of_row, b_group, b_ntok, b_kidx = chunk_items(combine_keys(src, ch), tok, block)
    bm = b_group.shape[0]
    cl.order(msg_base + np.arange(bm), (b_kidx + 1) * max(block // 4, 1))
    bfirst = first_items(b_of_row, bm)
    b_s, b_c = src[bfirst], ch[bfirst]
    contrib = np.bincount(b_of_row[item_row], minlength=bm)
    chunk = cl.real.nvl_send_chunk if cl.N == 1 else cl.real.rdma_send_chunk  # arrivals come in these chunks
    # DeepEP's intranode combine receives on the channel's second SM; between nodes the NVLink senders'
    # SM also receives the RDMA rows and reduces them (the forwarder has the other)
    role = "b" if cl.N == 1 else "a"
    fin, fin_mem = _copy_out(cl, "combine_unpack", b_s, b_c, (contrib + b_ntok) * built.wire_bytes_per_token // 2,
                             b_ntok, role, 2, cl.sync_ns(contrib, chunk), rows=contrib,
                             msg_id=msg_base + np.arange(bm), src_rank=b_s, dst_rank=b_s)
    pa, pb = unique_pairs(item_chunk, b_of_row[item_row])
    cl.g.add_edges(arrival[pa], fin[pb], lag=arrival_lag[pa])
    a, b = chain_edges(b_group)
    cl.g.add_edges(fin[a], fin[b])
    built.delivery_task = fin_mem[b_of_row[built.delivery_row]]
    return fin[b_of_row]
