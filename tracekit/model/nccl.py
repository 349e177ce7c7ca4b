"""An NCCL all-to-all (``ncclSend``/``ncclRecv`` pairs in one ``ncclDevKernel_SendRecv``) as a task graph.

What a captured NCCL all-to-all does, and the replay of its traffic matrix (``--mode nccl``):

* one kernel of ``nccl_channels`` blocks (channels); each channel carries its contiguous share of
  every peer's bytes (NCCL splits each send/receive pair over the channels it gives a peer);
* each (channel, peer) share moves in *steps* of at most ``STEP_BYTES_NVL`` (inside a node) or
  ``STEP_BYTES_NET`` (between nodes) through a FIFO of ``NCCL_STEPS`` slots on the receiver: the
  sender's block copies a step into the slot (over NVLink inside a node), publishes it (a release
  flag: ``gpu.chunk_sync_ns``), and the receiver's block copies it into the output buffer and frees
  the slot;
* to another node, the proxy path: the sender's block copies the step into a registered buffer, the
  sender's CPU proxy thread posts an RDMA write (``nic.doorbell_cpu_proxy_ns`` of its time), the
  receiver's proxy notices the completion in its progress loop and flags the GPU (a delay of
  ``doorbell_cpu_proxy_ns``, not counted as its busy time);
* its own share the rank copies locally;
* no layout or notify kernel, no reductions: the host part is the kernel's launch.

Tokens are mapped onto steps only for the conservation check (each (token, rank) pair delivered once);
NCCL itself moves bytes. Combine is the same all-to-all in the other direction.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from tracekit.engine import TaskGraph
from tracekit.hardware import Profile
from tracekit.model.chunks import chain_edges, chunk_items, combine_keys, first_items
from tracekit.model.cluster import Cluster
from tracekit.model.config import ReplayConfig
from tracekit.model.normal import Built, _copy_out, _ring_pools
from tracekit.workload.layout import DispatchLayout
from tracekit.workload.routing import Routing, bytes_per_token

#: FIFO slots per (channel, peer): NCCL_STEPS = 8 (NCCL src/include/device.h).
NCCL_STEPS = 8
#: Step size inside a node: NCCL_P2P_NVL_CHUNKSIZE default 512 KiB (NCCL environment variable docs).
STEP_BYTES_NVL = 512 * 1024
#: Step size to another node: NCCL_P2P_NET_CHUNKSIZE default 128 KiB (NCCL environment variable docs).
STEP_BYTES_NET = 128 * 1024


def build_nccl_dispatch(routing: Routing, layout: DispatchLayout, hw: Profile, cfg: ReplayConfig) -> Built:
    return _build(routing, layout, hw, cfg, "dispatch")


def build_nccl_combine(routing: Routing, layout: DispatchLayout, hw: Profile, cfg: ReplayConfig) -> Built:
    return _build(routing, layout, hw, cfg, "combine")


def _build(routing: Routing, layout: DispatchLayout, hw: Profile, cfg: ReplayConfig, phase: str) -> Built:
    meta = routing.meta
    # one channel is one block (one SM) that sends and receives; the CPU proxy posts network writes
    # (the model's channels come in SM pairs: at most half the GPU's SMs)
    ncfg = replace(cfg, num_sms=2 * min(cfg.nccl_channels, hw.gpu.sms // 2), doorbell="cpu_proxy")
    g = TaskGraph()
    cl = Cluster(g, hw, meta.ep_size, meta.gpus_per_node, ncfg, phase)
    cl.token_ns = 0  # NCCL copies bytes: no per-token work
    if hasattr(cl, "qp_miss_ns"):  # one connection per channel to each peer on another node
        cl.set_qps((cl.R - cl.G) * cl.C)
    bpt = bytes_per_token(meta.hidden, cfg.payload_dtype(meta, phase))
    R = cl.R
    ranks = np.arange(R)
    start = cl.add(R, "launch", ranks, dur=hw.gpu.kernel_launch_ns)
    row, peer = np.nonzero(layout.is_token_in_rank)
    row = row.astype(np.int64)
    peer = peer.astype(np.int64)
    owner = layout.src_rank.astype(np.int64)[row]
    snd, rcv = (owner, peer) if phase == "dispatch" else (peer, owner)
    tok = layout.token.astype(np.int64)[row]
    # each pair's rows in token order, split into nccl_channels contiguous shares, then into steps
    pair = snd * R + rcv
    order = np.lexsort((tok, pair))
    pos = np.empty(row.size, np.int64)
    starts = np.r_[0, np.flatnonzero(np.diff(pair[order])) + 1] if row.size else np.zeros(0, np.int64)
    first_of = np.repeat(starts, np.diff(np.r_[starts, row.size]))
    pos[order] = np.arange(row.size) - first_of
    count = np.bincount(pair, minlength=R * R)[pair]
    C = cl.C
    ch = pos * C // np.maximum(count, 1)
    net = cl.node_of[snd] != cl.node_of[rcv]
    step_tokens = np.where(net, max(STEP_BYTES_NET // bpt, 1), max(STEP_BYTES_NVL // bpt, 1))
    # chunk by (pair, channel); the step size depends on the pair's path, so chunk both kinds separately
    item_chunk = np.empty(row.size, np.int64)
    parts = []
    base = 0
    for is_net in (False, True):
        sel = np.flatnonzero(net == is_net)
        if not sel.size:
            continue
        ic, grp, ntok, kidx = chunk_items(combine_keys(pair[sel], ch[sel]), tok[sel], int(step_tokens[sel[0]]))
        item_chunk[sel] = ic + base
        fi = sel[first_items(ic, grp.size)]
        parts.append((grp + (int(is_net) << 40), ntok, kidx, fi))
        base += grp.size
    cgroup = np.concatenate([p[0] for p in parts])
    ntok = np.concatenate([p[1] for p in parts])
    kidx = np.concatenate([p[2] for p in parts])
    fi = np.concatenate([p[3] for p in parts])
    m = cgroup.size
    cs, cr, cc = snd[fi], rcv[fi], ch[fi]
    nbytes = ntok * bpt
    msg = np.arange(m)
    cl.order(msg, kidx)
    attrs = dict(msg_id=msg, src_rank=cs, dst_rank=cr)
    # chunks of one (pair, channel) are consecutive in cgroup order: chain them
    o = np.lexsort((kidx, cgroup))
    sync = np.full(m, hw.gpu.chunk_sync_ns)  # one flag per step
    fifo = _ring_pools(cl, cr, cc, cs, "nccl_fifo", NCCL_STEPS, cgroup)
    send = cl.sm_work("pack" if phase == "dispatch" else "combine_pack", cs, cc, "a", nbytes, ntok, sync,
                      pool=fifo, amount=1, **attrs)
    a, b = chain_edges(cgroup[o])
    cl.g.add_edges(send[o[a]], send[o[b]])
    cl.g.add_edges(start[cs], send)
    arrive, lag = _move(cl, cs, cr, cc, nbytes, ntok, send, msg, net[fi])
    local = cs == cr
    stage = "unpack" if phase == "dispatch" else "combine_unpack"
    recv, mem = _copy_out(cl, stage, cr, cc, np.where(local, 0, nbytes), ntok, "a", 2, np.where(local, 0, sync),
                          **attrs)
    cl.g.add_edges(arrive, recv, lag=lag)
    cl.g.add_edges(recv[o[a]], recv[o[b]])
    cl.g.add_releases(recv, fifo, np.ones(m, np.int64), np.where(local, 0, lag))
    built = Built(phase, g, cl, bpt, bpt, start, send, row, peer, mem[item_chunk])
    built.flows.append((send, recv))
    return built


def _move(cl: Cluster, s, r, c, nbytes, ntok, after, msg, net) -> tuple[np.ndarray, np.ndarray]:
    """Each step from its sender's FIFO slot into the receiver's: NVLink inside a node, the proxy path
    between nodes, nothing to itself. Returns (task whose end puts the step in the receiver's memory,
    lag until the receiver sees its flag)."""
    hw = cl.hw
    arrive = after.copy()
    lag = np.zeros(s.size, np.int64)
    nvl = np.flatnonzero(~net & (s != r))
    if nvl.size:
        arrive[nvl] = cl.nvlink(s[nvl], r[nvl], nbytes[nvl], after[nvl], channel=c[nvl], tokens=ntok[nvl],
                                msg_id=msg[nvl])
        lag[nvl] = hw.nvlink.latency_ns + hw.nvlink.signal_ns
    idx = np.flatnonzero(net)
    if idx.size:
        key = combine_keys(s[idx], c[idx], cl.node_of[r[idx]])
        sq = _ring_pools(cl, s[idx], c[idx], cl.node_of[r[idx]], "nic0/sq_nccl", hw.nic.wqe_depth, key)
        cq = _ring_pools(cl, s[idx], c[idx], cl.node_of[r[idx]], "nic0/cq_nccl", hw.nic.cq_depth, key)
        m = cl.rdma(s[idx], r[idx], nbytes[idx], ntok[idx], after[idx], sq, cq, c[idx], atomic=False,
                    channel=c[idx], msg_id=msg[idx])
        # the receiver's proxy notices the completion in its progress loop and flags the GPU
        arrive[idx] = m.arrival
        lag[idx] = hw.nic.doorbell_cpu_proxy_ns + hw.pcie.latency_ns
    return arrive, lag
