"""One replayed phase (dispatch or combine of one layer): conservation check, critical path,
DeepEP-style bandwidths, bottleneck, stalls, analytical bound, and its events/counters tables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from numba import njit

from tracekit.arrays import gather, sort_packed
from tracekit.engine import Schedule
from tracekit.errors import ConservationError
from tracekit.resources import ResourcePath
from tracekit.model.cluster import STAGE, STAGES
from tracekit.model.chunks import sorted_unique
from tracekit.model.normal import Built
from tracekit.workload.layout import DispatchLayout
from tracekit.workload.routing import Routing

_SYNC = {STAGE[s] for s in ("layout", "notify", "cpu_sync", "launch", "alloc")}
_BOOKKEEPING = {STAGE[s] for s in ("credit_return", "cq_poll")}


@dataclass
class PhaseResult:
    phase: str
    step: int
    layer: int
    t0: int
    end_ns: int
    summary: dict[str, Any]
    rank_finish: np.ndarray  # per rank, ns after the phase start
    scale: dict[str, Any]


def resource_kind(name: str) -> str:
    """Coarse kind of a resource path: sm, nvlink_tx, nvlink_rx, nvlink, hbm, pcie_rd, pcie_wr, nic_tx,
    nic_rx, switch_port, switch_uplink, spine_port, cpu_proxy (:meth:`ResourcePath.unit_kind`)."""
    return ResourcePath.parse(name).unit_kind()


def check_conservation(built: Built, sched: Schedule, layout: DispatchLayout, routing: Routing) -> None:
    """Every token reaches exactly the ranks (and experts) its routing names, once, on the right GPU,
    and bytes sent equal bytes received per rank pair. Raises :class:`ConservationError`."""
    g = built.graph
    phase = built.phase
    rank_attr = g.attr("rank")
    tokens_attr = g.attr("tokens")
    R = layout.ep_size
    row, where, task = built.delivery_row, built.delivery_rank, built.delivery_task
    if built.delivery_expert is not None:
        _check_selections(built, routing, phase)
    else:
        expected = np.flatnonzero(layout.is_token_in_rank.reshape(-1))  # (token, rank) pairs, row-major
        if row.shape[0] != expected.shape[0]:
            raise ConservationError(f"{phase}: {row.shape[0]} deliveries for {expected.shape[0]} (token, rank) pairs")
        if not np.array_equal(sort_packed(row * R + where)[1], expected):
            raise ConservationError(f"{phase}: a (token, rank) pair was delivered twice or not at all")
    if (sched.finish[task] < 0).any():
        raise ConservationError(f"{phase}: a delivery never completed")
    # the delivering task must run on the receiving GPU: the destination in dispatch, the token's
    # source in combine
    src = layout.src_rank.astype(np.int64)
    receiver = where if phase == "dispatch" else src[row]
    wrong = rank_attr[task] != receiver
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        raise ConservationError(f"{phase}: token row {int(row[i])} for rank {int(where[i])} landed on rank "
                                f"{int(rank_attr[task[i]])}")
    if phase == "dispatch" and built.delivery_expert is None:
        # each delivering task carries exactly the tokens mapped to it
        per_task = np.bincount(task, minlength=g.num_tasks)
        if not np.array_equal(per_task[task], tokens_attr[task]):
            raise ConservationError(f"{phase}: a copy-out's token count differs from the tokens mapped to it")
        # experts: selections landing on each rank equal the layout's count of expert selections
        got, _ = _expert_arrivals(routing.topk_expert, row, where, routing.meta.num_experts // R,
                                  np.zeros(row.shape[0], np.int64), routing.meta.num_experts)
        if not np.array_equal(got, layout.num_tokens_per_expert.sum(axis=0)):
            raise ConservationError(f"{phase}: expert selections delivered differ from the layout's counts")
        pair = np.bincount(src[row] * R + where, minlength=R * R).reshape(R, R)
        if not np.array_equal(pair, layout.num_tokens_per_rank):
            raise ConservationError(f"{phase}: tokens per rank pair differ from the layout")
    # bytes on the wire: what NICs send equals what NICs receive, per (src, dst)
    stage = g.attr("stage")
    nbytes = g.attr("bytes")
    s_attr, d_attr = g.attr("src_rank"), g.attr("dst_rank")
    sent = (stage == STAGE["nic_send"]) & (nbytes > 0)
    recv = (stage == STAGE["nic_recv"]) & (nbytes > 0)
    if sent.any() or recv.any():
        sa = np.bincount(s_attr[sent] * R + d_attr[sent], weights=nbytes[sent], minlength=R * R)
        sb = np.bincount(s_attr[recv] * R + d_attr[recv], weights=nbytes[recv], minlength=R * R)
        if not np.array_equal(sa, sb):
            raise ConservationError(f"{phase}: bytes sent by NICs differ from bytes received per rank pair")


def _check_selections(built: Built, routing: Routing, phase: str) -> None:
    """Low-latency kernels: every valid (token, expert) selection is delivered exactly once, to the
    expert's rank (dispatch) or back to the token's owner (combine)."""
    e = routing.topk_expert
    rows, ks = np.nonzero(e >= 0)
    want = np.sort(rows.astype(np.int64) * routing.meta.num_experts + e[rows, ks])
    got = np.sort(built.delivery_row * routing.meta.num_experts + built.delivery_expert)
    if not np.array_equal(want, got):
        raise ConservationError(f"{phase}: selections delivered differ from the routing's (token, expert) pairs")
    epr = routing.meta.num_experts // routing.meta.ep_size
    if not np.array_equal(built.delivery_rank, built.delivery_expert // epr):
        raise ConservationError(f"{phase}: a selection was sent to a rank that does not host its expert")


def _critical_path(built: Built, sched: Schedule, end_task: int) -> tuple[list[int], dict[str, int]]:
    """Walk back from ``end_task`` through the binders; charge each interval to the stage of the task
    that ends it."""
    stage = built.graph.attr("stage")
    path = []
    stages: dict[str, int] = {}
    t = end_task
    while t >= 0:
        path.append(t)
        b = int(sched.binder[t])
        begin = int(sched.finish[b]) if b >= 0 else int(sched.start[t])
        name = STAGES[int(stage[t])]
        stages[name] = stages.get(name, 0) + int(sched.finish[t]) - begin
        if b < 0:
            # a source held back by a release time: the rank's expert GEMMs (ReplayConfig.expert_gemm)
            if begin > 0:
                stages["expert_gemm"] = stages.get("expert_gemm", 0) + begin
            break
        t = b
    return path, stages


def analyse_phase(built: Built, sched: Schedule, layout: DispatchLayout, routing: Routing, *, step: int,
                  layer: int, t0: int) -> PhaseResult:
    g = built.graph
    cl = built.cluster
    f = g.freeze()
    R = cl.R
    rank_attr = g.attr("rank")
    stage = g.attr("stage")
    first_start = int(sched.start[built.first_data].min()) if built.first_data.size else 0
    task = built.delivery_task
    if built.receive_done is not None:  # receivers that also wait for messages carrying no tokens
        task = np.concatenate([task, built.receive_done])
    last = int(task[np.argmax(sched.finish[task])]) if task.size else int(np.argmax(sched.finish))
    last_finish = int(sched.finish[last])
    # one definition of latency (docs/replay.md): a call's start on the host to its last receive
    call = built.start if built.call_start is None else built.call_start
    call_begin = int(sched.start[call].min()) if call.size else 0
    latency = last_finish - call_begin
    data_ns = last_finish - first_start
    src = layout.src_rank.astype(np.int64)
    receiver = built.delivery_rank if built.phase == "dispatch" else src[built.delivery_row]
    rank_finish = np.zeros(R, np.int64)
    np.maximum.at(rank_finish, receiver, sched.finish[built.delivery_task])
    if built.receive_done is not None:
        np.maximum.at(rank_finish, g.attr("rank")[built.receive_done], sched.finish[built.receive_done])
    # per-rank kernel time: from its launch to the last task it runs
    data = np.ones(g.num_tasks, bool)
    data[np.isin(stage, list(_SYNC | _BOOKKEEPING))] = False
    data &= rank_attr >= 0
    rank_end = np.zeros(R, np.int64)
    np.maximum.at(rank_end, rank_attr[data], sched.finish[data])
    rank_end = np.maximum(rank_end, rank_finish)
    kernel_ns = np.maximum(rank_end - sched.finish[built.start], 1)
    bpt = built.bytes_per_token
    recv_tokens = layout.num_tokens_per_rank.sum(axis=0)  # tokens each rank receives in dispatch
    node_pairs = layout.num_tokens_per_node.sum(axis=1)  # (token, node) pairs per source rank
    if built.delivery_expert is not None:
        selections = np.bincount(src[built.delivery_row], minlength=R)  # valid top-k entries of each rank
        bandwidth = {
            "nvlink": 0.0,
            "rdma": float(np.mean(selections * built.bandwidth_bytes / kernel_ns)),
            "unit": "GB/s (DeepEP low-latency definition: valid top-k selections x bytes per selection over "
                    "the rank's kernel time, averaged over ranks)",
        }
    else:
        bandwidth = {
            "nvlink": float(np.mean(recv_tokens * bpt / kernel_ns)),
            "rdma": float(np.mean(node_pairs * bpt / kernel_ns)) if cl.N > 1 else 0.0,
            "unit": "GB/s (DeepEP definitions: NVL = bytes received per rank, RDMA = (token, node) pairs "
                    "x bytes per token, each over the rank's kernel time, averaged over ranks)",
        }
    path, stages = _critical_path(built, sched, last)
    # utilisation of every resource over the phase's data window
    res = g.column("res")
    busy = np.bincount(res[res >= 0], weights=(sched.finish - sched.start)[res >= 0], minlength=len(g.res_names))
    busy = busy / np.asarray(g.res_servers, dtype=np.float64)
    util = busy / max(latency, 1)
    on_path = np.unique(res[np.asarray(path)])
    on_path = on_path[on_path >= 0]
    pick = int(on_path[np.argmax(util[on_path])]) if on_path.size else int(np.argmax(util))
    top = int(np.argmax(util))
    bottleneck = {
        "resource": g.res_names[pick], "resource_kind": resource_kind(g.res_names[pick]),
        "utilisation": round(float(util[pick]), 4),
        "busiest_resource": g.res_names[top], "busiest_kind": resource_kind(g.res_names[top]),
        "busiest_utilisation": round(float(util[top]), 4),
    }
    # stalls by cause
    pool = g.column("pool")
    has = (pool >= 0) & (sched.stall > 0)
    stalls: dict[str, int] = {c: 0 for c in ("credit", "send_queue", "cq", "switch_buffer")}
    stall_counts: dict[str, int] = {c: 0 for c in stalls}
    if has.any():
        names = list(stalls)
        code = np.array([names.index(c) if c in stalls else len(names) for c in g.pool_cause], np.int64)
        which = code[pool[has]]
        total = np.bincount(which, weights=sched.stall[has], minlength=len(names) + 1)
        count = np.bincount(which, minlength=len(names) + 1)
        for i, c in enumerate(names):
            stalls[c] = int(total[i])
            stall_counts[c] = int(count[i])
    # analytical bound: the busiest resource's work, which fits in no less time
    bound = int(busy.max()) if busy.size else 0
    if latency < bound:
        raise ConservationError(f"{built.phase}: replay latency {latency} ns is below the analytical bound {bound} ns")
    tail_rank = int(np.argmax(rank_finish))
    bytes_total = int(built.delivery_row.shape[0] * (built.bandwidth_bytes or bpt))
    summary = {
        "latency_ns": int(latency),
        "data_ns": int(data_ns),
        "bytes": bytes_total,
        "stages": dict(sorted(stages.items())),
        "rank_finish_ns": {
            "p50": int(np.percentile(rank_finish, 50)), "p99": int(np.percentile(rank_finish, 99)),
            "max": int(rank_finish.max()),
        },
        "bandwidth_gbps": bandwidth,
        "bottleneck": bottleneck,
        "stalls": stalls,
        "stall_counts": stall_counts,
        "bound_ns": bound,
        "bound_ratio": float(latency / max(bound, 1)),
        "tail_rank": tail_rank,
        "critical_path_tasks": len(path),
        "tasks": int(g.num_tasks),
        "events_processed": int(sched.events),
    }
    scale = {
        "qps_per_nic": int(getattr(cl, "qps_per_nic", 0)),
        "max_qps": int(cl.hw.nic.max_qps),
        "pools": len(g.pool_names),
        "routing_table_bytes": int(routing.num_rows * routing.topk * 8),
        "notify_bytes_per_rank": int(R * 8 + routing.meta.num_experts * 4),
    }
    # the phase ends when its last task ends and its last credit has travelled back
    r_task, _, _, r_lag = g.releases()
    end = max(int(sched.finish.max()), int((sched.finish[r_task] + r_lag).max(initial=0)))
    return PhaseResult(built.phase, step, layer, t0, t0 + end, summary, rank_finish, scale)


_VIRTUAL = {
    "layout": "stream", "notify": "stream", "launch": "cpu/host", "cpu_sync": "cpu/host", "alloc": "cpu/host",
    "rdma_post": "nic0/qp{qp}",
    "cq_poll": "nic0/qp{qp}", "rdma_atomic": "nic0/atomic", "credit_return": "credits",
}


def _resource_codes(built: Built) -> tuple[list[str], np.ndarray]:
    """Resource paths of all tasks as (distinct names, code per task id); tasks without a resource get
    a per-rank virtual track. Strings are built once per distinct track."""
    g = built.graph
    res = g.column("res")
    names = list(g.res_names)
    codes = res.astype(np.int64)
    missing = np.flatnonzero(res < 0)
    if missing.size:
        stage = g.attr("stage")[missing].astype(np.int64)
        rank = g.attr("rank")[missing].astype(np.int64) + 1
        uses_qp = np.array(["{qp}" in _VIRTUAL.get(s, "") for s in STAGES])[stage]
        qp = np.where(uses_qp, g.attr("qp")[missing], -1).astype(np.int64) + 1
        qps = int(qp.max()) + 1
        key = (rank * len(STAGES) + stage) * qps + qp
        uniq = sorted_unique(key)
        prefix = built.cluster.prefix
        for k in uniq.tolist():
            q = k % qps - 1
            r, s = divmod(k // qps, len(STAGES))
            pre = prefix[r - 1] if r > 0 else "fabric"
            names.append(f"{pre}/{_VIRTUAL.get(STAGES[s], STAGES[s]).replace('{qp}', str(q))}")
        codes[missing] = len(g.res_names) + np.searchsorted(uniq, key)
    return names, codes


def _strings(table: list[str], codes: np.ndarray) -> pl.Series:
    """A string column from a small table of distinct values and one code per row."""
    return pl.Series(table, dtype=pl.String).gather(np.asarray(codes, np.int64))


def _first_only(a: np.ndarray, size: int) -> np.ndarray:
    """Mask of the first occurrence of each value of ``a`` (values in [0, size))."""
    first = np.empty(size, np.int64)
    first[a[::-1]] = np.arange(a.size - 1, -1, -1)
    return first[a] == np.arange(a.size)


def _flows(built: Built, rec: np.ndarray, first_id: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Flow ids started and ended per task (``-1`` for none) and the next free id. Each list of pairs
    is taken in the order of its source tasks' message ids (then as listed); a task may start at most
    one flow and end at most one: the first pair wins."""
    n = built.graph.num_tasks
    msg = built.graph.attr("msg_id")
    flow_out = np.full(n, -1, np.int64)
    flow_in = np.full(n, -1, np.int64)
    nid = first_id
    for a, b in built.flows:
        o = sort_packed(msg[a], values=False)[0]
        a, b = a[o], b[o]
        ok = rec[a] & rec[b] & (flow_out[a] < 0) & (flow_in[b] < 0)
        a, b = a[ok], b[ok]
        keep = _first_only(a, n) & _first_only(b, n)
        a, b = a[keep], b[keep]
        new = nid + np.arange(a.size)
        flow_out[a] = new
        flow_in[b] = new
        nid += a.size
    return flow_out, flow_in, nid


def _nullable(values: np.ndarray) -> pl.Series:
    """An int64 column with nulls where ``values`` is negative."""
    return pl.from_arrow(pa.array(values, mask=values < 0, type=pa.int64()))


def phase_tables(built: Built, sched: Schedule, layout: DispatchLayout, routing: Routing, result: PhaseResult, *,
                 t0: int, ids: dict[str, int]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Events (schema events.v1) and counters (counters.v1) of one phase, times offset by ``t0``, each
    sorted by time (ties in task order). ``ids`` holds the next free flow and message ids
    (``{"flow": .., "msg": ..}``) and is advanced."""
    from tracekit.analysis.counters import phase_counters

    g = built.graph
    n_tasks = g.num_tasks
    rec = g.attr("record").astype(bool) & (sched.start >= 0)
    flow_out, flow_in, nid = _flows(built, rec, ids["flow"])
    msg_base = ids["msg"]
    names, res_code = _resource_codes(built)
    pool = g.column("pool")
    cause_names = sorted(set(g.pool_cause)) + [""]
    cause_of_pool = np.array([cause_names.index(c) for c in g.pool_cause] + [len(cause_names) - 1], np.int64)
    stall = sched.stall

    def attr(name: str, default: int = -1) -> np.ndarray:
        v = g.attr(name)
        return np.where(v < 0, default, v)

    msg = g.attr("msg_id")
    # every column by task id, then rows picked and sorted by start time in one packed gather
    cols: dict[str, list[np.ndarray]] = {
        "dur_ns": [sched.finish - sched.start], "rank": [g.attr("rank")], "res": [res_code], "stage": [g.attr("stage")],
        "msg_id": [np.where(msg >= 0, msg + msg_base, -1)], "channel": [attr("channel")], "tokens": [attr("tokens", 0)],
        "bytes": [attr("bytes", 0)], "src_rank": [attr("src_rank")], "dst_rank": [attr("dst_rank")], "qp": [attr("qp")],
        "stall_ns": [stall], "cause": [cause_of_pool[np.where((pool >= 0) & (stall > 0), pool, -1)]],
        "flow_out": [flow_out], "flow_in": [flow_in],
    }
    idx = np.flatnonzero(rec)
    start = [sched.start[idx]]
    if built.phase == "dispatch":
        extra, extra_names = _expert_queue(built, sched, routing, result, 0)
        extra["res"] = extra["res"] + len(names)
        extra["cause"] = np.full(extra["ts_ns"].size, len(cause_names) - 1)
        names = names + extra_names
        for k, v in cols.items():
            v.append(extra[k])
        start.append(extra["ts_ns"])
        idx = np.r_[idx, n_tasks + np.arange(extra["ts_ns"].size)]
    order, ts = sort_packed(np.concatenate(start))
    out = gather(cols, idx[order])
    n = order.size
    stage_s = _strings(STAGES, out["stage"])
    kind_of_stage = ["sync" if i in _SYNC else "comm" for i in range(len(STAGES))]
    events = pl.DataFrame({
        "ts_ns": ts + t0, "dur_ns": out["dur_ns"], "rank": out["rank"].astype(np.int32),
        "resource": _strings(names, out["res"]), "stage": stage_s, "name": stage_s,
        "phase": pl.repeat(built.phase, n, eager=True, dtype=pl.String),
        "kind": _strings(kind_of_stage, out["stage"]),
        "step": np.full(n, result.step, np.int32), "layer": np.full(n, result.layer, np.int32),
        "msg_id": out["msg_id"], "channel": out["channel"].astype(np.int32), "tokens": out["tokens"],
        "bytes": out["bytes"], "src_rank": out["src_rank"].astype(np.int32),
        "dst_rank": out["dst_rank"].astype(np.int32), "qp": out["qp"].astype(np.int32),
        "stall_ns": out["stall_ns"], "stall_cause": _strings(cause_names, out["cause"]),
        "flow_out": _nullable(out["flow_out"]), "flow_in": _nullable(out["flow_in"]),
        "args": pl.repeat("", n, eager=True, dtype=pl.String),
    })
    counters = phase_counters(built, sched, t0, result)
    ids["flow"] = nid
    ids["msg"] = msg_base + int(max(msg.max(initial=-1), -1)) + 1
    return events, counters


@njit(cache=True)
def _expert_arrivals(topk, row, rank, experts_per_rank, arrive, num_experts):
    """Per expert: selections delivered (item ``i`` brings routing row ``row[i]`` to ``rank[i]``, which
    hosts experts ``rank * experts_per_rank ...``) and the earliest ``arrive`` among them."""
    count = np.zeros(num_experts, np.int64)
    first = np.full(num_experts, np.iinfo(np.int64).max, np.int64)
    for i in range(row.shape[0]):
        for k in range(topk.shape[1]):
            e = topk[row[i], k]
            if e >= 0 and e // experts_per_rank == rank[i]:
                count[e] += 1
                if arrive[i] < first[e]:
                    first[e] = arrive[i]
    return count, first


def _expert_queue(built: Built, sched: Schedule, routing: Routing, result: PhaseResult,
                  t0: int) -> tuple[dict[str, np.ndarray], list[str]]:
    """Per (rank, local expert): from its first token's arrival until the rank's dispatch completes,
    when the expert's GEMM may start. Returns event columns and the new resource names."""
    R = built.cluster.R
    epr = routing.meta.num_experts // R
    row, dst, task = built.delivery_row, built.delivery_rank, built.delivery_task
    arrive = sched.finish[task]
    if built.delivery_expert is not None:  # one delivery per selection
        expert = built.delivery_expert.astype(np.int64)
        first = np.full(routing.meta.num_experts, np.iinfo(np.int64).max)
        np.minimum.at(first, expert, arrive)
        count = np.bincount(expert, minlength=routing.meta.num_experts)
    else:
        count, first = _expert_arrivals(routing.topk_expert, row, dst, epr, arrive, routing.meta.num_experts)
    have = np.flatnonzero(count > 0)
    owner = have // epr
    done = result.rank_finish[owner]
    n = have.size
    names = [f"{built.cluster.prefix[int(o)]}/expert{int(x % epr)}" for o, x in zip(owner, have)]
    minus = np.full(n, -1)
    cols = {
        "ts_ns": first[have] + t0, "dur_ns": np.maximum(done - first[have], 0), "rank": owner,
        "res": np.arange(n), "stage": np.full(n, STAGES.index("expert_queue")), "kind": np.zeros(n, np.int64),
        "msg_id": minus, "channel": minus, "tokens": count[have], "bytes": np.zeros(n, np.int64),
        "src_rank": minus, "dst_rank": owner, "qp": minus, "stall_ns": np.zeros(n, np.int64),
        "flow_out": minus, "flow_in": minus,
    }
    return cols, names
