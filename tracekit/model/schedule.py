"""Schedules of whole MoE layers as task graphs: compute and communication on each rank's streams.

A schedule is data: tasks (attention, shared expert, expert GEMMs, dispatch, combine) with durations,
edges (what each needs) and streams (a CUDA stream runs its kernels in issue order), run by the same
engine as the communication models. Per rank there are three resources: ``compute`` (the compute
stream), ``comm`` (the communication stream, whose kernels hold ``num_sms`` SMs) and ``nic`` (data in
flight after a low-latency send returned: it holds no SM). An all-to-all couples the ranks: a
zero-time barrier task waits for every rank's producer before any rank's dispatch (or combine) starts,
as the replayed phases assume; a rank's dispatch (combine) then lasts what the replay measured for it.

Schedules (``SCHEDULES``):

* ``serial``: attention, shared expert, dispatch, expert GEMMs, combine, one after the other; compute
  has every SM.
* ``two_microbatch``: the batch split in two; while one micro-batch communicates the other computes
  (compute order A0 S0 A1 S1 E0 E1, communication D0 D1 C0 C1); compute keeps ``sms - num_sms`` SMs
  because communication kernels hold theirs while they run alongside.
* ``ll_hook``: as ``two_microbatch`` with DeepEP's low-latency hook: a short send kernel and a short
  receive kernel on the compute stream, the transfer in between on the NIC with 0 SMs; compute has
  every SM.
* ``fused``: one kernel per layer does dispatch, expert GEMMs and combine: each local expert's GEMM
  starts when its tokens have arrived, its results are sent as soon as it finishes (combine per tile),
  one launch, no HBM round trip for the expert input and output; communication warps keep
  ``num_sms`` SMs, the GEMMs the rest.

* ``dualpipe`` (training): each layer's forward chunk paired with a backward chunk as in DeepSeek-V3's
  overlapped forward-backward (report Figure 4; the order DeepSeek's published training profile
  shows): compute ``attn(F) mlp(B) mlp(W) mlp(F) attn(B) attn(W)``, communication ``combine(B)
  dispatch(F) dispatch(B) combine(F)`` (a backward combine is a cached dispatch, a backward dispatch
  a combine); compute keeps ``sms - num_sms`` SMs.

``serial`` is ``fused`` with every fused feature off (:data:`FUSED_FEATURES`), so the fused kernel's
saving splits exactly into one term per feature, switched on one at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tracekit.engine import TaskGraph

SCHEDULES = ("serial", "two_microbatch", "ll_hook", "fused", "dualpipe")
#: Features of the fused kernel, in the order the savings breakdown switches them on.
FUSED_FEATURES = ("sm_share", "launches", "hbm_round_trips", "barriers", "nic_overlap")
DUALPIPE_BLOCKS = ("attn_f", "mlp_b", "mlp_w", "mlp_f", "attn_b", "attn_w")  # compute stream order of a pair
COMPUTE_PARTS = ("attention", "shared", "experts", *DUALPIPE_BLOCKS)


@dataclass(frozen=True)
class Slice:
    """One micro-batch of one layer: per-rank durations (ns) the schedule arranges.

    ``compute[sms]`` maps a part (attention, shared) to per-rank ns with ``sms`` SMs; ``experts[sms]``
    and ``experts_fused[sms]`` are per-(rank, local expert) ns of the grouped GEMM's share (the fused
    kernel reads no expert input from and writes no output to HBM). ``dispatch``/``combine`` are the
    replayed phases (per rank, kernel launch to last receive); ``arrival`` is, per (rank, local
    expert), when its last token arrived after the dispatch started; ``*_issue``/``*_recv`` are the
    phases' send and receive kernel times (low-latency hook), ``tokens`` per (rank, local expert)."""

    compute: dict[int, dict[str, np.ndarray]]
    experts: dict[int, np.ndarray]
    experts_fused: dict[int, np.ndarray]
    dispatch: np.ndarray
    combine: np.ndarray
    arrival: np.ndarray
    tokens: np.ndarray
    dispatch_issue: int = 0
    dispatch_recv: int = 0
    combine_issue: int = 0
    combine_recv: int = 0
    dispatch_cached: np.ndarray | None = None  # dualpipe: a backward combine (cached layout: no notify)


@dataclass
class Plan:
    """A schedule's task graph plus, per task, what it is (for summaries and timelines)."""

    ranks: int
    graph: TaskGraph = field(default_factory=TaskGraph)
    rank: list[np.ndarray] = field(default_factory=list)
    part: list[str] = field(default_factory=list)  # one per add() call
    stream: list[str] = field(default_factory=list)
    layer: list[int] = field(default_factory=list)
    micro: list[int] = field(default_factory=list)
    sms: list[int] = field(default_factory=list)
    ids: list[np.ndarray] = field(default_factory=list)
    _last: dict[str, np.ndarray] = field(default_factory=dict)

    def add(self, part: str, stream: str | None, dur: np.ndarray, rank: np.ndarray, *, layer: int, micro: int, sms: int,
            after: list[np.ndarray] = (), lag: object = 0) -> np.ndarray:
        """Tasks ``part`` on ``stream`` of each ``rank`` (in order after that stream's last task),
        each after the matching task of every array in ``after`` (same length) with ``lag`` ns.
        Without a stream, the tasks take no resource (a wait, e.g. data in flight)."""
        rank = np.asarray(rank, np.int64)
        g = self.graph
        if stream is None:
            ids = g.add_tasks(rank.size, dur=np.asarray(dur, np.int64))
            for a in after:
                g.add_edges(a, ids, lag)
            self._record(part, "", rank, ids, layer, micro, sms)
            return ids
        res = g.resources([f"rank{r}/{stream}" for r in range(self.ranks)])
        ids = g.add_tasks(rank.size, res=res[rank], dur=np.asarray(dur, np.int64))
        last = self._last.setdefault(stream, np.full(self.ranks, -1, np.int64))
        # in stream order: a rank's first new task after its stream's last one, the others in turn
        order = np.argsort(rank, kind="stable")
        first = np.r_[True, rank[order][1:] != rank[order][:-1]]
        prev = np.where(first, last[rank[order]], np.r_[-1, ids[order][:-1]])
        has = prev >= 0
        g.add_edges(prev[has], ids[order][has])
        np.maximum.at(last, rank, ids)
        for a in after:
            g.add_edges(a, ids, lag)
        self._record(part, stream, rank, ids, layer, micro, sms)
        return ids

    def _record(self, part: str, stream: str, rank: np.ndarray, ids: np.ndarray, layer: int, micro: int,
                sms: int) -> None:
        self.rank.append(rank)
        self.ids.append(ids)
        self.part.append(part)
        self.stream.append(stream)
        self.layer.append(layer)
        self.micro.append(micro)
        self.sms.append(sms)

    def barrier(self, before: np.ndarray) -> np.ndarray:
        """A zero-time task after all of ``before``, as an array of one id per rank."""
        b = self.graph.add_tasks(1)
        self.graph.add_edges(before, np.repeat(b, before.size))
        return np.repeat(b, self.ranks)


def build(name: str, layers: list[list[Slice]], *, sms: int, num_sms: int, launch_ns: int,
          features: tuple[str, ...] | None = None) -> Plan:
    """The plan of schedule ``name`` over ``layers`` (each a list of micro-batch slices: one for
    ``serial``/``fused``, two for the others). ``features`` overrides the fused kernel's features."""
    R = layers[0][0].dispatch.shape[0]
    plan = Plan(R)
    if name in ("serial", "fused"):
        on = set(FUSED_FEATURES if name == "fused" else ()) if features is None else set(features)
        done = None
        for li, mbs in enumerate(layers):
            sl = mbs[0]
            done = _moe_block(plan, sl, li, done, on, sms=sms, num_sms=num_sms, launch_ns=launch_ns)
        return plan
    if name == "dualpipe":
        return _dualpipe(plan, layers, sms - num_sms, num_sms)
    return _two_halves(plan, layers, hook=name == "ll_hook", sms=sms, num_sms=num_sms)


def _two_halves(plan: Plan, layers: list[list[Slice]], *, hook: bool, sms: int, num_sms: int) -> Plan:
    """``two_microbatch`` and ``ll_hook``: one micro-batch communicates while the other computes."""
    ranks = np.arange(plan.ranks)
    csms = sms if hook else sms - num_sms
    done: list[np.ndarray | None] = [None, None]
    pending: list[Slice | None] = [None, None]  # hook: a combine to receive before the next attention
    for li, mbs in enumerate(layers):
        disp = []
        for m, sl in enumerate(mbs):
            if pending[m] is not None:
                done[m] = _hook_recv(plan, "combine", pending[m], done[m], li - 1, m, ranks, num_sms)
            a = plan.add("attention", "compute", sl.compute[csms]["attention"], ranks, layer=li, micro=m, sms=csms,
                         after=[done[m]] if done[m] is not None else [])
            plan.add("shared", "compute", sl.compute[csms]["shared"], ranks, layer=li, micro=m, sms=csms, after=[a])
            if hook:
                disp.append(_hook_send(plan, "dispatch", sl, a, li, m, ranks, num_sms))
            else:
                disp.append(plan.add("dispatch", "comm", sl.dispatch, ranks, layer=li, micro=m, sms=num_sms,
                                     after=[plan.barrier(a)]))
        for m, sl in enumerate(mbs):
            d = _hook_recv(plan, "dispatch", sl, disp[m], li, m, ranks, num_sms) if hook else disp[m]
            e = plan.add("experts", "compute", sl.experts[csms].sum(axis=1), ranks, layer=li, micro=m, sms=csms,
                         after=[d])
            if hook:
                done[m], pending[m] = _hook_send(plan, "combine", sl, e, li, m, ranks, num_sms), sl
            else:
                done[m] = plan.add("combine", "comm", sl.combine, ranks, layer=li, micro=m, sms=num_sms,
                                   after=[plan.barrier(e)])
    for m in range(len(layers[-1])):
        if pending[m] is not None:
            _hook_recv(plan, "combine", pending[m], done[m], len(layers) - 1, m, ranks, num_sms)
    return plan


def _dualpipe(plan: Plan, layers: list[list[Slice]], csms: int, num_sms: int) -> Plan:
    """Forward and backward chunks of each layer overlapped (see the module docstring)."""
    ranks = np.arange(plan.ranks)
    prev_cf = prev_ab = None
    for li, (sl, *_) in enumerate(layers):
        def block(part, after):
            return plan.add(part, "compute", sl.compute[csms][part], ranks, layer=li, micro=0, sms=csms, after=after)

        def comm(part, dur, after):
            return plan.add(part, "comm", dur, ranks, layer=li, micro=0, sms=num_sms, after=[plan.barrier(after)])

        cached = sl.dispatch_cached if sl.dispatch_cached is not None else sl.dispatch
        cb = plan.add("combine_b", "comm", cached, ranks, layer=li, micro=0, sms=num_sms,
                      after=[plan.barrier(prev_ab)] if prev_ab is not None else [])
        af = block("attn_f", [prev_cf] if prev_cf is not None else [])
        mb = block("mlp_b", [cb])
        df = comm("dispatch_f", sl.dispatch, af)
        db = comm("dispatch_b", sl.combine, mb)
        block("mlp_w", [])
        mf = block("mlp_f", [df])
        prev_ab = block("attn_b", [db])
        block("attn_w", [])
        prev_cf = comm("combine_f", sl.combine, mf)
    return plan


def _hook_times(phase: str, sl: Slice) -> tuple[int, int, np.ndarray]:
    if phase == "dispatch":
        return sl.dispatch_issue, sl.dispatch_recv, sl.dispatch
    return sl.combine_issue, sl.combine_recv, sl.combine


def _hook_send(plan: Plan, phase: str, sl: Slice, after: np.ndarray, li: int, m: int, ranks: np.ndarray,
               num_sms: int) -> np.ndarray:
    """A low-latency phase in hook mode, first half: the send kernel (compute stream), then the
    transfer (NIC, no SM) once every rank has sent. Returns the transfer tasks."""
    issue, recv, total = _hook_times(phase, sl)
    send = plan.add(f"{phase}_send", "compute", np.full(ranks.size, issue), ranks, layer=li, micro=m, sms=num_sms,
                    after=[after])
    return plan.add(f"{phase}_wire", "nic", np.maximum(total - issue - recv, 0), ranks, layer=li, micro=m, sms=0,
                    after=[plan.barrier(send)])


def _hook_recv(plan: Plan, phase: str, sl: Slice, wire: np.ndarray, li: int, m: int, ranks: np.ndarray,
               num_sms: int) -> np.ndarray:
    """Second half: the receive kernel (compute stream) after the transfer."""
    _, recv, _ = _hook_times(phase, sl)
    return plan.add(f"{phase}_recv", "compute", np.full(ranks.size, recv), ranks, layer=li, micro=m, sms=num_sms,
                    after=[wire])


def _moe_block(plan: Plan, sl: Slice, li: int, done: np.ndarray | None, on: set[str], *, sms: int, num_sms: int,
               launch_ns: int) -> np.ndarray:
    """One layer of ``serial`` (no feature) up to ``fused`` (every feature). Returns per-rank
    tasks after which the layer's output is on each rank."""
    R = sl.dispatch.shape[0]
    ranks = np.arange(R)
    after = [done] if done is not None else []
    a = plan.add("attention", "compute", sl.compute[sms]["attention"], ranks, layer=li, micro=0, sms=sms, after=after)
    s = plan.add("shared", "compute", sl.compute[sms]["shared"], ranks, layer=li, micro=0, sms=sms, after=[a])
    gsms = sms - num_sms if "sm_share" in on else sms
    table = sl.experts_fused if "hbm_round_trips" in on else sl.experts
    dur = table[gsms]
    # the dispatch starts when every rank's attention is done (and, in a stream, after the shared expert)
    start = plan.barrier(np.concatenate([a, s]))
    d = plan.add("dispatch", "comm", sl.dispatch, ranks, layer=li, micro=0, sms=num_sms, after=[start])
    per_expert = "barriers" in on
    launch = 0 if "launches" in on else launch_ns
    # each expert's GEMM: after its tokens arrived (fused) or after the whole dispatch (one kernel later)
    r_idx, e_idx = np.nonzero(dur >= 0)
    if per_expert:  # each expert's tokens are in when the replayed dispatch delivered its last one
        arrival = plan.add("dispatch_arrival", None, np.maximum(sl.arrival, 0)[r_idx, e_idx], r_idx, layer=li,
                           micro=0, sms=0, after=[start[r_idx]])
        g = plan.add("experts", "compute", dur[r_idx, e_idx], r_idx, layer=li, micro=0, sms=gsms,
                     after=[arrival], lag=launch)
    else:
        g = plan.add("experts", "compute", dur[r_idx, e_idx], r_idx, layer=li, micro=0, sms=gsms,
                     after=[d[r_idx]], lag=launch)
    share = _shares(sl.combine - (launch_ns if "launches" in on else 0), sl.tokens)
    if "nic_overlap" in on:  # results leave per finished expert (tile), in GEMM order
        send = plan.add("combine", "comm", share[r_idx, e_idx], r_idx, layer=li, micro=0, sms=num_sms, after=[g])
    else:
        last = np.full(R, -1, np.int64)
        np.maximum.at(last, r_idx, g)
        send = plan.add("combine", "comm", share[r_idx, e_idx], r_idx, layer=li, micro=0, sms=num_sms,
                        after=[last[r_idx]])
    # a rank's output is complete when every rank has sent what it owes it
    return plan.barrier(send)


def _shares(total: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Split each rank's ``total`` ns over its local experts in proportion to their tokens (a rank
    that hosts no token splits evenly)."""
    t = tokens.astype(np.int64)
    return np.stack([split_exact(int(total[r]), t[r] if t[r].sum() > 0 else np.ones_like(t[r]))
                     for r in range(t.shape[0])])


def split_exact(total: int, weights: np.ndarray) -> np.ndarray:
    """``total`` split in proportion to ``weights`` into integers that sum to it exactly (largest
    remainder; ties to the lower index)."""
    w = np.asarray(weights, np.float64)
    raw = w / w.sum() * total
    out = np.floor(raw).astype(np.int64)
    out[np.argsort(-(raw - out), kind="stable")[:total - int(out.sum())]] += 1
    return out
