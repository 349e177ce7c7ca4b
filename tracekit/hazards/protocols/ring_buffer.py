"""DeepEP-style ring buffers: the intranode ring over NVLink and the internode ring over RDMA.

Each rank pair has a ring of token slots on the receiver. The sender waits for a free slot, writes
the token, and publishes the new tail; the receiver waits for the tail, copies the token out and
returns the slot (a head index over NVLink, a credit by RDMA atomic between nodes).
"""

from __future__ import annotations

from collections.abc import Iterator

from tracekit.hazards.ops import QP, Actor, Loc, Program, protocol


def _nvl_sender(a: Actor, ring: list[Loc], head: Loc, tail: Loc, messages: int, variant: str) -> Iterator[tuple]:
    slots = len(ring)
    for i in range(messages):
        if i >= slots and variant != "no_head_check":
            yield a.wait(head, ">=", i + 1 - slots)                 # a free slot (acquire)
        yield a.store(ring[i % slots], i + 1, order="plain")        # the token, over NVLink
        yield a.store(tail, i + 1, order="relaxed" if variant == "relaxed_tail" else "release")


def _nvl_receiver(a: Actor, ring: list[Loc], head: Loc, tail: Loc, messages: int, variant: str) -> Iterator[tuple]:
    slots = len(ring)
    for i in range(messages):
        yield a.wait(tail, ">=", i + 1)                             # acquire the tail
        if variant == "credit_before_consume":
            yield a.store(head, i + 1, order="release")
        yield a.load(ring[i % slots], order="plain")                # copy the token out
        yield a.consume(ring[i % slots])
        if variant == "chunked_head":
            if (i + 1) % 2 == 0:
                yield a.store(head, i + 1, order="release")         # slots go back two at a time
        elif variant != "credit_before_consume":
            yield a.store(head, i + 1, order="release")             # the slot is free again


@protocol(
    correct={
        "correct": "sender acquires head before reusing a slot and publishes tail with release; receiver "
                   "acquires tail, copies the token out, then releases head",
    },
    broken={
        "relaxed_tail": "tail published with a relaxed store: the receiver can see the tail before the token",
        "no_head_check": "sender never checks head and overwrites slots the receiver has not consumed",
        "credit_before_consume": "receiver returns the slot (head) before copying the token out",
        "chunked_head": "receiver returns slots two at a time: with a one-slot ring the sender waits forever",
    },
    sizes={"ranks": (2, 3), "slots": (1, 8), "messages": (1, 16)},
)
def ring_buffer(p: Program, variant: str, ranks: int = 2, slots: int = 8, messages: int = 16) -> None:
    """Intranode dispatch ring (DeepEP normal kernels): each rank sends to the next rank through a
    ring of ``slots`` token slots in the receiver's memory, with head/tail indices over NVLink."""
    for src in range(ranks):
        dst = (src + 1) % ranks
        ring = p.slots(f"ring_from{src}", rank=dst, size=slots)
        tail = p.var(f"tail_from{src}", rank=dst)
        head = p.var(f"head_to{dst}", rank=src)
        p.spawn(src, f"sm/send_to{dst}", _nvl_sender, ring, head, tail, messages, variant)
        p.spawn(dst, f"sm/recv_from{src}", _nvl_receiver, ring, head, tail, messages, variant)


def _reap(a: Actor, qp: QP, unreaped: dict[int, int], variant: str) -> Iterator[tuple]:
    """Poll completions so that the CQ never holds more than its depth."""
    while variant != "cq_not_drained" and unreaped[qp.id] >= qp.cq_depth:
        yield a.poll_cq(qp)
        unreaped[qp.id] -= 1


def _rdma_sender(a: Actor, ring: list[Loc], credits: Loc, tail: Loc, data_qp: QP, tail_qp: QP,
                 messages: int, variant: str) -> Iterator[tuple]:
    slots = len(ring)
    unreaped = {data_qp.id: 0, tail_qp.id: 0}
    for i in range(messages):
        if variant != "no_credit_check":
            yield a.wait(credits, ">=", 1)                          # a credit: a free remote slot
        yield a.add(credits, -1)
        yield from _reap(a, data_qp, unreaped, variant)
        yield a.put(ring[i % slots], i + 1, data_qp)                # RDMA write of the token
        unreaped[data_qp.id] += 1
        if variant == "fenced_qps":
            yield a.fence()
        yield from _reap(a, tail_qp, unreaped, variant)
        if variant == "plain_flag_multipath":
            yield a.put(tail, i + 1, tail_qp)                       # a plain write as the flag
        else:
            yield a.atomic_add(tail, 1, tail_qp)                    # RDMA atomic on the tail
        unreaped[tail_qp.id] += 1


def _rdma_receiver(a: Actor, ring: list[Loc], credits: Loc, tail: Loc, credit_qp: QP,
                   messages: int, variant: str) -> Iterator[tuple]:
    slots = len(ring)
    back = 2 if variant == "double_credit" else 1
    for i in range(messages):
        yield a.wait(tail, ">=", i + 1, order="relaxed" if variant == "relaxed_poll" else "acquire")
        if variant == "credit_before_consume":
            yield a.atomic_add(credits, back, credit_qp)
        yield a.load(ring[i % slots], order="plain")
        yield a.consume(ring[i % slots])
        if variant != "credit_before_consume":
            yield a.atomic_add(credits, back, credit_qp)            # credit back to the sender


@protocol(
    correct={
        "correct": "RDMA write of each token, then an RDMA atomic on the tail on the same multipath QP "
                   "(the NIC lands the atomic after the writes); credits come back by RDMA atomic; "
                   "completions are reaped before the CQ fills",
        "fenced_qps": "tokens on one QP, a fence, then the tail atomic on another QP",
    },
    broken={
        "plain_flag_multipath": "tail written by a plain RDMA write on a multipath QP: it can land first",
        "missing_fence": "tokens on one QP and the tail atomic on another, with no fence between",
        "relaxed_poll": "receiver polls the tail with a relaxed load, so the token need not be visible",
        "credit_before_consume": "receiver returns the credit before reading the slot",
        "no_credit_check": "sender sends without checking its credits",
        "double_credit": "receiver returns two credits per token",
        "cq_not_drained": "sender never polls its completion queue",
    },
    sizes={"slots": (1, 8), "messages": (1, 16), "cq_depth": (1, 4)},
)
def rdma_ring(p: Program, variant: str, slots: int = 8, messages: int = 16, cq_depth: int = 4) -> None:
    """Internode dispatch ring (DeepEP normal kernels, IBGDA): rank 0 writes tokens into a ring on
    rank 1 by RDMA and bumps rank 1's tail by an RDMA atomic; rank 1 returns credits by RDMA atomic."""
    ring = p.slots("ring", rank=1, size=slots)
    tail = p.var("tail", rank=1)
    credits = p.var("credits", rank=0, init=slots, capacity=slots)
    data_qp = p.qp(0, 1, cq_depth=cq_depth, multipath=True)
    tail_qp = p.qp(0, 1, cq_depth=cq_depth, multipath=True) if variant in ("missing_fence", "fenced_qps") else data_qp
    credit_qp = p.qp(1, 0, multipath=True)
    p.spawn(0, "sm/sender", _rdma_sender, ring, credits, tail, data_qp, tail_qp, messages, variant)
    p.spawn(1, "sm/receiver", _rdma_receiver, ring, credits, tail, credit_qp, messages, variant)
