"""Eager messages: data and signal in one write.

Each message is a single RDMA write whose payload carries its own sequence tag, so the receiver
polls the slot itself: when the tag is there, so is the data (one write lands whole). The broken
variant sends payload and tag as two writes, which a multipath QP may deliver in either order.
"""

from __future__ import annotations

from collections.abc import Iterator

from tracekit.hazards.ops import QP, Actor, Loc, Program, protocol


def _sender(a: Actor, slots: list[Loc], tags: list[Loc], qp: QP) -> Iterator[tuple]:
    for i, slot in enumerate(slots):
        yield a.put(slot, i + 1, qp)                      # payload (carrying its tag when eager)
        if tags:
            yield a.put(tags[i], i + 1, qp)               # a separate tag write


def _receiver(a: Actor, slots: list[Loc], tags: list[Loc]) -> Iterator[tuple]:
    for i, slot in enumerate(slots):
        yield a.wait(tags[i] if tags else slot, "==", i + 1)
        yield a.load(slot, order="plain")
        yield a.consume(slot)


@protocol(
    correct={"correct": "one RDMA write per message carries data and tag; the receiver polls the slot"},
    broken={"split_signal": "payload and tag in two writes on a multipath QP: the tag can land first"},
    sizes={"messages": (1, 4)},
)
def eager(p: Program, variant: str, messages: int = 4) -> None:
    """Rank 0 sends ``messages`` eager messages into distinct slots on rank 1."""
    slots = p.slots("slot", rank=1, size=messages)
    tags = p.array("tag", rank=1, size=messages) if variant == "split_signal" else []
    qp = p.qp(0, 1, multipath=True)
    p.spawn(0, "sm/sender", _sender, slots, tags, qp)
    p.spawn(1, "sm/receiver", _receiver, slots, tags)
