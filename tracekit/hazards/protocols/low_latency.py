"""DeepEP-style low-latency dispatch: per-expert receive slots, double buffered, no flow control.

Two ranks each host one expert and send ``tokens`` tokens per warp per round to the other's
expert. A warp takes a slot by a local atomic counter and sends the token by RDMA put; the last
warp of a round sends the count by an RDMA atomic on the same QP (so it lands after the tokens).
The receiver polls the count, copies the tokens out, clears the count and acknowledges the round.
Rounds alternate between two buffer sets; set ``b`` may be written again only once the receiver
acknowledged the round that last used it.
"""

from __future__ import annotations

from collections.abc import Iterator

from tracekit.hazards.ops import QP, Actor, Loc, Program, protocol


def _sender(a: Actor, warp: int, bufs: list[list[Loc]], counts: list[Loc], next_slot: list[Loc],
            finished: list[Loc], acks: Loc, qp: QP, tokens: int, warps: int, rounds: int,
            variant: str) -> Iterator[tuple]:
    per_round = tokens * warps
    for r in range(rounds):
        b, use = r % 2, r // 2                                      # buffer set, and its use count
        if r >= 2:
            if variant != "flip_reused_early":
                yield a.wait(acks, ">=", r - 1)                     # round r-2 fully read
            yield a.quiet()                                         # reap old completions
        for t in range(tokens):
            slot = (yield a.add(next_slot[b], 1)) % per_round
            yield a.put(bufs[b][slot], 100 * r + 10 * warp + t + 1, qp)
        if warps > 1:                                               # the last warp sends the count
            done = yield a.add(finished[b], 1, order="acq_rel")
            if done != (use + 1) * warps - 1:
                continue
        yield a.atomic_add(counts[b], per_round, qp)                # lands after every put


def _receiver(a: Actor, bufs: list[list[Loc]], counts: list[Loc], acks: Loc, qp: QP,
              rounds: int) -> Iterator[tuple]:
    for r in range(rounds):
        b = r % 2
        n = yield a.wait(counts[b], "!=", 0)                        # acquire the count
        for slot in range(n):
            yield a.load(bufs[b][slot], order="plain")
            yield a.consume(bufs[b][slot])
        yield a.store(counts[b], 0)                                 # clear for the next use
        yield a.atomic_add(acks, 1, qp)                             # round r read


@protocol(
    correct={
        "correct": "double-buffered slots; a buffer set is reused only after the receiver acknowledged "
                   "the round that last used it; QP depth 2(T+1) for T tokens per round",
    },
    broken={
        "flip_reused_early": "a buffer set is reused without waiting for the receiver to finish with it",
        "small_qp": "QP depth T+1: the second round finds the send queue full (DeepEP issue 301)",
    },
    sizes={"tokens": (1, 3), "warps": (1, 2), "rounds": (1, 4)},
)
def low_latency(p: Program, variant: str, tokens: int = 3, warps: int = 2, rounds: int = 4) -> None:
    """Low-latency dispatch between two ranks (DeepEP low-latency kernels)."""
    per_round = tokens * warps
    depth = per_round + 1 if variant == "small_qp" else 2 * (per_round + 1)
    for src in (0, 1):
        dst = 1 - src
        bufs = [p.slots(f"buf{b}_from{src}", rank=dst, size=per_round) for b in (0, 1)]
        counts = [p.var(f"count{b}_from{src}", rank=dst) for b in (0, 1)]
        next_slot = [p.var(f"next_slot{b}_to{dst}", rank=src) for b in (0, 1)]
        finished = [p.var(f"finished{b}_to{dst}", rank=src) for b in (0, 1)]
        acks = p.var(f"acks_from{dst}", rank=src)
        qp = p.qp(src, dst, sq_depth=depth, multipath=True)
        ack_qp = p.qp(dst, src, multipath=True)
        for w in range(warps):
            p.spawn(src, f"sm/send_warp{w}", _sender, w, bufs, counts, next_slot, finished, acks, qp,
                    tokens, warps, rounds, variant)
        p.spawn(dst, f"sm/recv_from{src}", _receiver, bufs, counts, acks, ack_qp, rounds)
