"""A protocol of your own: messages written by RDMA into a mailbox, then a flag (docs/fuzzing.md)."""
from tracekit.hazards import protocol


@protocol(
    correct={"fenced": "a fence orders each message before its flag"},
    broken={"unfenced": "no fence: under adaptive routing the flag can land before the message"},
    sizes={"messages": (1, 3)},
)
def mailbox(p, variant, messages=3):
    box = p.slots("box", rank=1, size=messages)  # each message must be consumed exactly once
    flag = p.var("flag", rank=1)
    qp = p.qp(0, 1, multipath=True)  # adaptive routing: puts may land in any order

    @p.actor(rank=0)
    def sender(a):
        for i in range(messages):
            yield a.put(box[i], 100 + i, qp)
            if variant == "fenced":
                yield a.fence()
            yield a.put(flag, i + 1, qp)

    @p.actor(rank=1)
    def receiver(a):
        for i in range(messages):
            yield a.wait(flag, ">=", i + 1)  # acquire by default
            yield a.load(box[i])
            yield a.consume(box[i])
