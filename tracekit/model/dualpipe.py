"""DualPipe (DeepSeek-V3 report, section 3.2.1) as a task graph: a bidirectional pipeline whose ranks
pair a forward and a backward chunk (``F&B``) so that each one's communication hides under the
other's compute.

``pp`` ranks hold two model chunks each: the forward direction runs stages 0..pp-1 on ranks
0..pp-1, the reverse direction on ranks pp-1..0; ``chunks`` micro-batches enter, half from each end.
Each rank issues its operations in DualPipe's eight steps (warm-up forwards, forward pairs,
zero-bubble backward/weight/forward triples, the main forward-backward pairs, then the drain) on one
compute stream; an operation waits for the neighbour stage that feeds it (forward from the previous
stage of its direction, backward from the next; the last stage's backward from its own forward).
Durations: ``f`` forward chunk, ``b`` backward for inputs, ``w`` backward for weights, ``fb`` a
forward and a full backward chunk overlapped; a backward without zero-bubble splitting takes
``b + w``. Point-to-point transfers are taken as free, as in the report's bubble table.

The report's Table 2 gives DualPipe's bubble as ``(pp/2 - 1)(F&B + B - 3W)``; :func:`bubble`
measures it from the engine's schedule as the largest idle time of a rank (makespan minus its busy
time; the middle ranks idle most). In the report's notation ``B`` is the full backward chunk
(``b + w`` here).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tracekit.engine import Schedule, TaskGraph, run
from tracekit.errors import TracekitError


@dataclass(frozen=True)
class Op:
    kind: str  # F, B, W or FB
    phase: int = 0  # local phase (F, B, W); FB: the forward's phase (its backward has the other)
    zb: bool = False  # B: weights deferred to a later W


def rank_ops(pp: int, chunks: int, rank: int) -> list[Op]:
    """Rank ``rank``'s operations in issue order (DualPipe's eight steps)."""
    half = pp // 2
    hr = min(rank, pp - 1 - rank)
    middle = hr == half - 1
    ops: list[Op] = [Op("F", 0)] * ((half - hr - 1) * 2)  # 1: warm-up forwards
    ops += [Op("F", 0), Op("F", 1)] * (hr + 1)  # 2: forward pairs
    ops += [Op("B", 1, True), Op("W"), Op("F", 1)] * (half - hr - 1)  # 3: zero-bubble triples
    for i in range(chunks // 2 - pp + hr + 1):  # 4: main step
        ops += [Op("F", 0), Op("B", 1)] if (i == 0 and middle) else [Op("FB", 0)]
        ops.append(Op("FB", 1))
    ops += [Op("B", 1), Op("FB", 1)] * (half - hr - 1)  # 5
    zb = False
    n6 = hr + 1
    for i in range(n6):  # 6: backward pairs; the second half defers weights
        if i == n6 // 2 and hr % 2 == 1:
            zb = True
        ops.append(Op("B", 1, zb))
        if i == n6 // 2 and hr % 2 == 0:
            zb = True
        ops.append(Op("B", 0, zb))
    ops += [Op("W"), Op("B", 0, True)] * (half - hr - 1)  # 7
    ops += [Op("W")] * (hr + 1)  # 8
    return ops


def pipeline(pp: int, chunks: int, *, f: int, b: int, w: int, fb: int) -> tuple[TaskGraph, list[np.ndarray]]:
    """The DualPipe task graph, and per rank its task ids in issue order."""
    if pp < 2 or pp % 2 or chunks < 2 * pp or chunks % 2:
        raise TracekitError(f"dualpipe: pp={pp}, chunks={chunks}: expected an even pp >= 2 and an even number of "
                            f"micro-batches >= 2 pp", fix=f"e.g. pp={max(pp + pp % 2, 2)} chunks={2 * max(pp, 2)}")
    g = TaskGraph()
    fwd: dict[tuple[int, int, int], int] = {}  # (direction, micro-batch, stage) -> task
    bwd: dict[tuple[int, int, int], int] = {}
    deps: list[tuple[int, int]] = []
    per_rank = []
    pending = []  # (task, direction, micro-batch, stage, kind)
    for r in range(pp):
        second = int(r >= pp // 2)
        nf, nb = [0, 0], [0, 0]
        deferred: list[int] = []
        res = g.resource(f"rank{r}/compute")
        ids = []
        for op in rank_ops(pp, chunks, r):
            if op.kind == "W":
                t = int(g.add_tasks(1, res=res, dur=w)[0])
                deps.append((deferred.pop(0), t))
            elif op.kind == "F":
                t = int(g.add_tasks(1, res=res, dur=f)[0])
                d = op.phase ^ second
                pending.append((t, d, nf[d], _stage(d, r, pp), "F"))
                nf[d] += 1
            elif op.kind == "B":
                t = int(g.add_tasks(1, res=res, dur=b if op.zb else b + w)[0])
                d = op.phase ^ second
                pending.append((t, d, nb[d], _stage(d, r, pp), "B"))
                nb[d] += 1
                if op.zb:
                    deferred.append(t)
            else:
                t = int(g.add_tasks(1, res=res, dur=fb)[0])
                df, db = op.phase ^ second, (1 - op.phase) ^ second
                pending.append((t, df, nf[df], _stage(df, r, pp), "F"))
                pending.append((t, db, nb[db], _stage(db, r, pp), "B"))
                nf[df] += 1
                nb[db] += 1
            ids.append(t)
        if deferred:
            raise AssertionError(f"rank {r}: {len(deferred)} weight passes never issued")
        per_rank.append(np.array(ids, np.int64))
        deps += list(zip(ids[:-1], ids[1:]))  # one stream: issue order
    for t, d, mb, s, kind in pending:
        (fwd if kind == "F" else bwd)[(d, mb, s)] = t
    for t, d, mb, s, kind in pending:
        if kind == "F" and s > 0:
            deps.append((fwd[(d, mb, s - 1)], t))
        elif kind == "B":
            deps.append((bwd[(d, mb, s + 1)] if s < pp - 1 else fwd[(d, mb, s)], t))
    src, dst = np.array(deps, np.int64).T
    keep = src != dst  # an overlapped F&B may feed itself (last stage: its own forward)
    g.add_edges(src[keep], dst[keep])
    return g, per_rank


def _stage(direction: int, rank: int, pp: int) -> int:
    return rank if direction == 0 else pp - 1 - rank


def bubble(pp: int, chunks: int, *, f: int, b: int, w: int, fb: int) -> tuple[int, Schedule]:
    """The largest idle time of a rank (makespan minus its busy time), and the schedule."""
    g, per_rank = pipeline(pp, chunks, f=f, b=b, w=w, fb=fb)
    sched = run(g)
    makespan = int(sched.finish.max())
    busy = min(int((sched.finish[ids] - sched.start[ids]).sum()) for ids in per_rank)
    return makespan - busy, sched


def report_bubble(pp: int, *, b: int, w: int, fb: int) -> int:
    """The DeepSeek-V3 report's Table 2 DualPipe bubble ``(pp/2 - 1)(F&B + B - 3W)``, with its ``B``
    (a full backward chunk) = ``b + w``."""
    return (pp // 2 - 1) * (fb + b + w - 3 * w)
