"""Zero-buffer dispatch: senders write tokens straight into their final place in the receiver's
output, after reserving space there with a fetching RDMA atomic; no staging ring on the receiver.

Each sender stages its tokens in a registered send buffer, reserves ``tokens`` slots of the
receiver's output by an RDMA fetch-and-add on ``offset``, writes each token by RDMA (the NIC reads
the send buffer when it executes the WQE), then adds 1 to the receiver's ``done`` counter on the
same QP. The receiver waits until every sender is done and reads the output.
"""

from __future__ import annotations

from collections.abc import Iterator

from tracekit.hazards.ops import QP, Actor, Loc, Program, Region, protocol


def _sender(a: Actor, rank: int, out: list[Loc], offset: Loc, done: Loc, send_buf: list[Loc],
            region: Region, qp: QP, variant: str) -> Iterator[tuple]:
    tokens = len(send_buf)
    for t in range(tokens):
        yield a.store(send_buf[t], 10 * rank + t + 1, order="plain")   # stage the token
    base = yield a.atomic_add(offset, tokens, qp, fetch=True)          # reserve [base, base+tokens)
    for t in range(tokens):
        yield a.put(out[base + t], qp=qp, src=send_buf[t])              # into its final place
    yield a.atomic_add(done, 1, qp)                                     # lands after the tokens
    if variant != "unmap_in_flight":
        yield a.quiet()                                                 # every WQE has executed
    yield a.unmap(region)                                               # release the send buffer


def _receiver(a: Actor, out: list[Loc], done: Loc, senders: int) -> Iterator[tuple]:
    yield a.wait(done, "==", senders)
    for slot in out:
        yield a.load(slot, order="plain")
        yield a.consume(slot)


def _fault(a: Actor) -> Iterator[tuple]:
    yield a.crash()


@protocol(
    correct={
        "correct": "reserve by fetching atomic, write in place from a registered send buffer, signal on "
                   "the same QP, unmap the send buffer only after quiet",
    },
    broken={
        "unmap_in_flight": "the sender unmaps its send buffer without quiet: the NIC reads it afterwards",
        "receiver_crash": "the receiver may crash at any time and senders keep writing into its memory",
    },
    sizes={"senders": (1, 2), "tokens": (1, 3)},
)
def zero_buffer(p: Program, variant: str, senders: int = 2, tokens: int = 3) -> None:
    """Zero-copy dispatch of ``tokens`` tokens from each of ``senders`` ranks to one receiver."""
    recv = senders
    out = p.slots("out", rank=recv, size=senders * tokens)
    offset = p.var("offset", rank=recv)
    done = p.var("done", rank=recv)
    for s in range(senders):
        region = p.region("send_buf", rank=s)
        send_buf = p.array("send_buf", rank=s, size=tokens, region=region)
        qp = p.qp(s, recv, multipath=True)
        p.spawn(s, "sm/warp0", _sender, s, out, offset, done, send_buf, region, qp, variant)
    p.spawn(recv, "sm/recv", _receiver, out, done, senders)
    if variant == "receiver_crash":
        p.spawn(recv, "fault", _fault)
