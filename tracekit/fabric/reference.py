"""The plain, obviously correct fabric simulator: one heapq loop over Python objects.

It defines the semantics that :mod:`tracekit.fabric.fast` (numba, arrays) must reproduce exactly; a
Hypothesis test holds the two equal on random topologies, flows and parameters. Heap key: (time,
sequence number of the push), so ties run in the order the events were created, and runs are
deterministic. See ``docs/fabric.md`` for the model in words.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_right
from collections import deque

import numpy as np

from tracekit.fabric.common import (ACK, ARRIVE, CNP, DEC, INC, INF, NACK, OK, PAUSE, PORT_FREE, RTO, SACK, SAMPLE,
                                    STALLED, WAKE, FabricRun, Flows, Prepared, hash3, prepare, rows)
from tracekit.fabric.params import FabricParams
from tracekit.fabric.topology import Topology


class _Packet:
    __slots__ = ("flow", "seq", "wire", "payload", "prio", "ecn", "port", "ingress", "hdrm", "uid")

    def __init__(self, flow, seq, wire, payload, prio, uid):
        self.flow, self.seq, self.wire, self.payload, self.prio, self.uid = flow, seq, wire, payload, prio, uid
        self.ecn = self.hdrm = 0
        self.port = self.ingress = -1


class _Sim:
    def __init__(self, topo: Topology, p: FabricParams, fl: Flows, pre: Prepared) -> None:
        self.t, self.p, self.fl, self.pre = topo, p, fl, pre
        P, F, ports = p.priorities, fl.count, topo.ports
        self.heap: list = []
        self.seq = 0
        self.busy = [0] * ports
        self.paused = [[False] * P for _ in range(ports)]
        self.pause_since = [[0] * P for _ in range(ports)]
        self.pause_sent = [[False] * P for _ in range(ports)]
        self.ing = [[0] * P for _ in range(ports)]
        self.hdrm = [[0] * P for _ in range(ports)]
        self.queue = [[deque() for _ in range(P)] for _ in range(ports)]
        self.qbytes = [[0] * P for _ in range(ports)]
        self.used = [0] * topo.nodes
        self.host_wake = [INF] * topo.hosts
        line = [float(x) for x in pre.line_mbps]
        self.snd_nxt, self.high, self.next_t = [0] * F, [0] * F, [0] * F
        self.rc, self.rt, self.alpha = list(line), list(line), [1.0] * F
        self.tcount, self.bcount, self.bytes_ctr, self.cut = [0] * F, [0] * F, [0] * F, [False] * F
        self.last_dec, self.inc_epoch, self.alpha_next, self.last_cnp = [-1] * F, [0] * F, [-1] * F, [-1] * F
        self.alpha_cnp = [False] * F  # a CNP came in the current alpha window
        self.dec_pending = [False] * F  # the rate-decrease monitor has a check scheduled
        self.dec_flag = [False] * F  # a CNP came in the current monitor period: cut when it ends
        self.rcv_nxt, self.max_seen, self.nack_for = [0] * F, [-1] * F, [-1] * F
        self.snd_una, self.rto_armed, self.last_progress = [0] * F, [False] * F, [0] * F
        self.delivered, self.fin = [0] * F, [False] * F
        # selective repeat (PFC off): packets the receiver holds, packets the sender knows arrived, and
        # per flow: in recovery, its end (the first packet not yet sent when it began), the retransmit
        # pointer and the end of the holes (the highest SACKed packet)
        self.sel = p.retransmit == "selective" and not p.pfc
        self.got = [bytearray(int(n)) for n in pre.flow_npk] if self.sel else []
        self.sacked = [bytearray(int(n)) for n in pre.flow_npk] if self.sel else []
        self.in_rec, self.rec_end, self.retx_ptr, self.hole_end = [False] * F, [0] * F, [0] * F, [0] * F
        self.msg_rcvd = [0] * len(fl.msg_bytes)
        self.flowlet_seen: dict = {}
        self.flowlet_id: dict = {}
        self.uid = 0
        self.last_tx = 0
        self.paused_count = 0
        self.remaining = F
        self.last_q = [0] * ports
        self.marks_since, self.pkts_since = [0] * ports, [0] * ports
        self.out = {k: [0] * F for k in ("retx_bytes", "retx_pkts", "marked", "cnps", "reorder", "timeouts")}
        self.port_out = {k: [0] * ports for k in ("tx", "pkts", "marks", "drops", "maxq")}
        self.msg_done = [-1] * len(fl.msg_bytes)
        self.pauses, self.rates, self.qrows, self.mrows, self.drops, self.retx = [], [], [], [], [], []

    # -- helpers -------------------------------------------------------------------------------
    def push(self, t, kind, a, b):
        heapq.heappush(self.heap, (t, self.seq, kind, a, b))
        self.seq += 1

    def msg_of(self, f, s):
        a, b = int(self.fl.msg_ptr[f]), int(self.fl.msg_ptr[f + 1])
        return a + bisect_right(self.pre.msg_first[a:b].tolist(), s) - 1

    # -- senders -------------------------------------------------------------------------------
    def try_send(self, h, now):
        port = int(self.t.host_port[h])
        if self.busy[port] > now:
            return
        best, bt, wake = -1, INF, INF
        for f in self.pre.host_flows[self.pre.host_flows_ptr[h]:self.pre.host_flows_ptr[h + 1]]:
            f = int(f)
            if self.snd_nxt[f] >= self.pre.flow_npk[f] or self.paused[port][int(self.fl.prio[f])]:
                continue
            t = max(self.next_t[f], int(self.fl.msg_ready_ns[self.msg_of(f, self.snd_nxt[f])]))
            if t <= now:
                if self.next_t[f] < bt:
                    best, bt = f, self.next_t[f]
            elif t < wake:
                wake = t
        if best >= 0:
            self.send(best, now)
        elif wake < INF and wake < self.host_wake[h]:
            self.host_wake[h] = wake
            self.push(wake, WAKE, h, 0)

    def send(self, f, now):
        p, pre = self.p, self.pre
        s = self.snd_nxt[f]
        m = self.msg_of(f, s)
        payload = min(int(self.fl.msg_bytes[m]) - (s - int(pre.msg_first[m])) * p.mtu_bytes, p.mtu_bytes)
        wire = payload + p.header_bytes
        pkt = _Packet(f, s, wire, payload, int(self.fl.prio[f]), self.uid)
        self.uid += 1
        if s < self.high[f]:
            self.out["retx_pkts"][f] += 1
            self.out["retx_bytes"][f] += payload
            self.retx.append((now, f, s))
            self.retx_ptr[f] = s + 1
        else:
            self.high[f] = s + 1
        self.snd_nxt[f] = self.next_seq(f) if self.sel else s + 1
        self.next_t[f] = now + math.ceil(wire * 8000.0 / self.rc[f])
        if p.dcqcn and self.cut[f]:
            self.bytes_ctr[f] += wire
            if self.bytes_ctr[f] >= p.byte_counter_bytes:
                self.bytes_ctr[f] -= p.byte_counter_bytes
                self.bcount[f] += 1
                self.increase(f, now)
        if not p.pfc and not self.rto_armed[f]:
            self.rto_armed[f] = True
            self.last_progress[f] = now
            self.push(now + p.rto_ns, RTO, f, 0)
        self.transmit(int(self.t.host_port[int(self.fl.src[f])]), pkt, now)

    def transmit(self, port, pkt, now):
        mbps = int(self.t.port_mbps[port])
        ser = (pkt.wire * 8000 + mbps - 1) // mbps
        self.busy[port] = now + ser
        self.port_out["tx"][port] += pkt.wire
        self.last_tx = now
        pkt.port = port
        self.push(now + ser, PORT_FREE, port, 0)
        self.push(now + ser + int(self.t.port_delay_ns[port]), ARRIVE, pkt, 0)

    # -- switches ------------------------------------------------------------------------------
    def try_port(self, port, now):
        if self.busy[port] > now:
            return
        for q in range(self.p.priorities):
            if not self.paused[port][q] and self.queue[port][q]:
                pkt = self.queue[port][q].popleft()
                self.qbytes[port][q] -= pkt.wire
                n = int(self.t.port_src[port])
                # ECN is marked at dequeue, on the queue the packet leaves behind (fresher than at enqueue)
                if self.p.ecn and self.wred(self.qbytes[port][q], pkt.uid, n):
                    pkt.ecn = 1
                    self.port_out["marks"][port] += 1
                    self.marks_since[port] += 1
                self.port_out["pkts"][port] += 1
                self.pkts_since[port] += 1
                self.free_ingress(n, pkt, now)
                self.transmit(port, pkt, now)
                return

    def route(self, n, pkt, now):
        f = pkt.flow
        c = self.t.candidates(n, int(self.fl.dst[f]))
        if c.shape[0] == 1:
            return int(c[0])
        fh = int(self.pre.flow_hash[f])
        if self.pre.routing == 0:
            h = hash3(fh, n, 0)
        elif self.pre.routing == 1:
            h = hash3(fh, n, pkt.uid + 1)
        else:
            key = (f, n)
            last = self.flowlet_seen.get(key, -1)
            if last < 0 or now - last > self.p.flowlet_gap_ns:
                self.flowlet_id[key] = self.flowlet_id.get(key, 0) + 1
            self.flowlet_seen[key] = now
            h = hash3(fh, n, self.flowlet_id[key] + (1 << 40))
        return int(c[h % c.shape[0]])

    def wred(self, qb, uid, n):
        p = self.p
        if qb < p.kmin_bytes:
            return False
        if qb > p.kmax_bytes:
            return True
        prob = p.pmax * (qb - p.kmin_bytes) / (p.kmax_bytes - p.kmin_bytes) if p.kmax_bytes > p.kmin_bytes else p.pmax
        u = (hash3(uid, n, p.seed) >> 11) * (1.0 / 9007199254740992.0)
        return u < prob

    def switch_arrive(self, n, pkt, now):
        p = self.p
        i, q = pkt.port, pkt.prio
        pkt.hdrm = 0  # admission is per switch
        e = self.route(n, pkt, now)
        thr = p.alpha * (int(self.pre.shared_cap[n]) - self.used[n])
        if p.pfc:
            if self.ing[i][q] + pkt.wire <= thr and self.used[n] + pkt.wire <= int(self.pre.shared_cap[n]):
                self.ing[i][q] += pkt.wire
                self.used[n] += pkt.wire
            elif self.hdrm[i][q] + pkt.wire <= int(self.pre.headroom[i]):
                self.hdrm[i][q] += pkt.wire
                pkt.hdrm = 1
            else:
                return self.drop(e, pkt, now)
            if pkt.hdrm and not self.pause_sent[i][q]:
                self.pause_sent[i][q] = True
                self.push(now + int(self.t.port_delay_ns[i]), PAUSE, i, q * 2 + 1)
        else:
            if self.qbytes[e][q] + pkt.wire > thr:
                return self.drop(e, pkt, now)
            self.used[n] += pkt.wire
        pkt.ingress = i
        self.queue[e][q].append(pkt)
        self.qbytes[e][q] += pkt.wire
        self.port_out["maxq"][e] = max(self.port_out["maxq"][e], self.qbytes[e][q])
        self.try_port(e, now)

    def drop(self, e, pkt, now):
        self.port_out["drops"][e] += 1
        self.drops.append((now, e, pkt.flow, pkt.seq))

    def free_ingress(self, n, pkt, now):
        p = self.p
        i, q = pkt.ingress, pkt.prio
        if not p.pfc:
            self.used[n] -= pkt.wire
            return
        if pkt.hdrm:
            self.hdrm[i][q] -= pkt.wire
        else:
            self.ing[i][q] -= pkt.wire
            self.used[n] -= pkt.wire
        if self.pause_sent[i][q] and self.hdrm[i][q] == 0:
            thr = p.alpha * (int(self.pre.shared_cap[n]) - self.used[n])
            if self.ing[i][q] + p.resume_offset_bytes <= thr:
                self.pause_sent[i][q] = False
                self.push(now + int(self.t.port_delay_ns[i]), PAUSE, i, q * 2)

    def on_pause(self, port, code, now):
        q, on = code >> 1, code & 1
        if on:
            if not self.paused[port][q]:
                self.paused[port][q] = True
                self.pause_since[port][q] = now
                self.paused_count += 1
            return
        if self.paused[port][q]:
            self.paused[port][q] = False
            self.paused_count -= 1
            self.pauses.append((port, q, self.pause_since[port][q], now))
        self.wake_port(port, now)

    def wake_port(self, port, now):
        n = int(self.t.port_src[port])
        if n < self.t.hosts:
            self.try_send(n, now)
        else:
            self.try_port(port, now)

    # -- receivers and congestion control -------------------------------------------------------
    def receive(self, pkt, now):
        p, f, s = self.p, pkt.flow, pkt.seq
        ctrl = int(self.pre.flow_ctrl_ns[f])
        if pkt.ecn:
            self.out["marked"][f] += 1
            if self.last_cnp[f] < 0 or now - self.last_cnp[f] >= p.cnp_interval_ns:
                self.last_cnp[f] = now
                self.out["cnps"][f] += 1
                self.push(now + ctrl, CNP, f, 0)
        if self.sel:
            if s < self.rcv_nxt[f] or self.got[f][s]:
                return  # a duplicate
            self.got[f][s] = 1
            if s == self.rcv_nxt[f]:
                while self.rcv_nxt[f] < int(self.pre.flow_npk[f]) and self.got[f][self.rcv_nxt[f]]:
                    self.rcv_nxt[f] += 1
                self.push(now + ctrl, ACK, f, self.rcv_nxt[f])
            else:  # kept; NACK with the cumulative ACK and this packet (SACK)
                self.out["reorder"][f] += 1
                self.push(now + ctrl, SACK, f, (self.rcv_nxt[f] << 32) | s)
        elif not p.pfc:
            if s != self.rcv_nxt[f]:
                if s > self.rcv_nxt[f]:
                    self.out["reorder"][f] += 1
                    if self.nack_for[f] != self.rcv_nxt[f]:
                        self.nack_for[f] = self.rcv_nxt[f]
                        self.push(now + ctrl, NACK, f, self.rcv_nxt[f])
                return
            self.rcv_nxt[f] += 1
            self.push(now + ctrl, ACK, f, self.rcv_nxt[f])
        else:
            if s < self.max_seen[f]:
                self.out["reorder"][f] += 1
            self.max_seen[f] = max(self.max_seen[f], s)
        m = self.msg_of(f, s)
        self.msg_rcvd[m] += 1
        if self.msg_rcvd[m] == int(self.pre.msg_npk[m]):
            self.msg_done[m] = now
        self.delivered[f] += 1
        if self.delivered[f] == int(self.pre.flow_npk[f]):
            self.fin[f] = True
            self.remaining -= 1

    def on_cnp(self, f, now):
        """A CNP sets the flow's decrease flag and its alpha window's CNP flag. The rate-decrease monitor,
        whose periods run from the flow's first CNP, cuts once at the end of each period that saw a CNP
        (``rate_decrease_interval_ns``'s source); the first CNP itself leaves the rate as it is
        (NVIDIA ``rate_to_set_on_first_cnp`` default 0) and sets alpha to 1 (``initial_alpha_value``
        default 1023/1024; HPCC's ns-3: 1)."""
        p = self.p
        if self.fin[f] or not p.dcqcn:
            return
        self.dec_flag[f] = True
        if not self.dec_pending[f]:
            self.dec_pending[f] = True
            if self.last_dec[f] < 0:  # the monitor's origin
                self.last_dec[f] = now
            step = p.rate_decrease_interval_ns
            self.push(now if step == 0 else self.last_dec[f] + ((now - self.last_dec[f]) // step + 1) * step, DEC, f, 0)
        if self.alpha_next[f] < 0:  # the first CNP: alpha starts at 1, its windows run from here
            self.alpha[f], self.alpha_next[f] = 1.0, now + p.alpha_timer_ns
        else:
            self.update_alpha(f, now)
            self.alpha_cnp[f] = True

    def update_alpha(self, f, now):
        """Close the alpha windows that ended by ``now``: alpha rises by g in one that saw a CNP and
        decays in one that saw none (``alpha_timer_ns``'s source)."""
        p = self.p
        while 0 <= self.alpha_next[f] <= now:
            self.alpha[f] = (1.0 - p.dcqcn_g) * self.alpha[f] + (p.dcqcn_g if self.alpha_cnp[f] else 0.0)
            self.alpha_cnp[f] = False
            self.alpha_next[f] += p.alpha_timer_ns

    def on_dec(self, f, now):
        """The end of a monitor period: cut if a CNP came in it (alpha as of that moment), else stop the
        monitor until the next CNP."""
        self.dec_pending[f] = False
        if self.dec_flag[f] and not self.fin[f]:
            self.dec_flag[f] = False
            self.update_alpha(f, now)
            self.cut_rate(f, now)
            self.dec_pending[f] = True
            self.push(now + self.p.rate_decrease_interval_ns, DEC, f, 0)

    def cut_rate(self, f, now):
        p = self.p
        self.rt[f] = self.rc[f]
        self.rc[f] = max(self.rc[f] * (1.0 - self.alpha[f] / 2.0), p.min_rate_mbps)
        self.last_dec[f] = now
        self.tcount[f] = self.bcount[f] = self.bytes_ctr[f] = 0
        self.cut[f] = True
        self.rates.append((now, f, int(self.rc[f] * 1000.0)))
        self.inc_epoch[f] += 1
        self.push(now + p.increase_timer_ns, INC, f, self.inc_epoch[f])

    def increase(self, f, now):
        p = self.p
        hi, lo = max(self.tcount[f], self.bcount[f]), min(self.tcount[f], self.bcount[f])
        if hi < p.fast_recovery_steps:
            pass
        elif lo >= p.fast_recovery_steps:
            self.rt[f] += (lo - p.fast_recovery_steps + 1) * p.rhai_mbps
        else:
            self.rt[f] += p.rai_mbps
        line = float(self.pre.line_mbps[f])
        self.rt[f] = min(self.rt[f], line)
        self.rc[f] = min((self.rt[f] + self.rc[f]) / 2.0, line)
        self.rates.append((now, f, int(self.rc[f] * 1000.0)))

    def on_inc(self, f, ep, now):
        p = self.p
        if ep == self.inc_epoch[f] and not self.fin[f]:
            self.tcount[f] += 1
            self.increase(f, now)
            if self.rc[f] < float(self.pre.line_mbps[f]):
                self.push(now + p.increase_timer_ns, INC, f, ep)

    def next_seq(self, f):
        """Selective repeat: the next hole (below the highest SACKed packet, not known to have arrived,
        not yet retransmitted in this recovery), else new data."""
        if self.in_rec[f]:
            r = max(self.retx_ptr[f], self.snd_una[f])
            while r < self.hole_end[f] and self.sacked[f][r]:
                r += 1
            self.retx_ptr[f] = r
            if r < self.hole_end[f]:
                return r
        return self.high[f]

    def on_ack_selective(self, f, cum, sacked, now):
        """An ACK (``sacked`` < 0) or a SACK: advance, enter or leave recovery, resume sending."""
        if cum > self.snd_una[f]:
            self.snd_una[f] = cum
            self.last_progress[f] = now
        if sacked >= 0:
            self.sacked[f][sacked] = 1
            self.hole_end[f] = max(self.hole_end[f], sacked)
            if not self.in_rec[f]:
                self.in_rec[f], self.rec_end[f], self.retx_ptr[f] = True, self.high[f], self.snd_una[f]
        if self.in_rec[f] and self.snd_una[f] >= self.rec_end[f]:
            self.in_rec[f] = False
        nxt = self.next_seq(f)
        if nxt != self.snd_nxt[f]:
            self.snd_nxt[f] = nxt
            self.try_send(int(self.fl.src[f]), now)

    def on_rto(self, f, now):
        self.rto_armed[f] = False
        if self.fin[f] or self.snd_una[f] >= (self.high[f] if self.sel else self.snd_nxt[f]):
            return
        self.rto_armed[f] = True
        if now - self.last_progress[f] >= self.p.rto_ns:
            if self.sel:  # every packet not known to have arrived is a hole
                self.in_rec[f], self.rec_end[f], self.hole_end[f] = True, self.high[f], self.high[f]
                self.retx_ptr[f] = self.snd_una[f]
            self.snd_nxt[f] = self.next_seq(f) if self.sel else self.snd_una[f]
            self.out["timeouts"][f] += 1
            self.last_progress[f] = now
            self.push(now + self.p.rto_ns, RTO, f, 0)
            self.try_send(int(self.fl.src[f]), now)
        else:
            self.push(self.last_progress[f] + self.p.rto_ns, RTO, f, 0)

    def sample(self, now):
        for port in range(self.t.ports):
            if self.t.port_src[port] < self.t.hosts:
                continue
            qb = sum(self.qbytes[port])
            if qb != self.last_q[port]:
                self.qrows.append((now, port, qb))
                self.last_q[port] = qb
            if self.pkts_since[port] > 0:
                self.mrows.append((now, port, self.marks_since[port] * 1_000_000 // self.pkts_since[port]))
                self.marks_since[port] = self.pkts_since[port] = 0
        if self.paused_count > 0 and now - self.last_tx >= self.p.pfc_watchdog_ns:
            return False
        self.push(now + self.p.sample_ns, SAMPLE, 0, 0)
        return True

    # -- the loop ------------------------------------------------------------------------------
    def run(self) -> FabricRun:
        t, fl, pre = self.t, self.fl, self.pre
        for h in range(t.hosts):
            a, b = int(pre.host_flows_ptr[h]), int(pre.host_flows_ptr[h + 1])
            if a < b:
                first = min(int(fl.msg_ready_ns[fl.msg_ptr[int(f)]]) for f in pre.host_flows[a:b])
                self.host_wake[h] = first
                self.push(first, WAKE, h, 0)
        self.push(self.p.sample_ns, SAMPLE, 0, 0)
        now, status = 0, OK
        while self.heap and self.remaining > 0:
            now, _, kind, a, b = heapq.heappop(self.heap)
            if kind == PORT_FREE:
                self.wake_port(a, now)
            elif kind == ARRIVE:
                n = int(t.port_dst[a.port])
                if n < t.hosts:
                    self.receive(a, now)
                else:
                    self.switch_arrive(n, a, now)
            elif kind == WAKE:
                if self.host_wake[a] == now:
                    self.host_wake[a] = INF
                self.try_send(a, now)
            elif kind == PAUSE:
                self.on_pause(a, b, now)
            elif kind == CNP:
                self.on_cnp(a, now)
            elif kind == DEC:
                self.on_dec(a, now)
            elif self.sel and (kind == ACK or kind == SACK):
                self.on_ack_selective(a, b >> 32 if kind == SACK else b, b & 0xFFFFFFFF if kind == SACK else -1, now)
            elif kind == ACK or kind == NACK:
                if b > self.snd_una[a]:
                    self.snd_una[a] = b
                    self.last_progress[a] = now
                if kind == NACK and self.snd_nxt[a] > b:
                    self.snd_nxt[a] = b
                    self.try_send(int(fl.src[a]), now)
            elif kind == INC:
                self.on_inc(a, b, now)
            elif kind == RTO:
                self.on_rto(a, now)
            elif not self.sample(now):
                status = STALLED
                break
        return self.result(status, now)

    def result(self, status, now) -> FabricRun:
        stuck, paused_end = [], []
        for port in range(self.t.ports):
            for q in range(self.p.priorities):
                if self.paused[port][q]:
                    if status == OK:
                        self.pauses.append((port, q, self.pause_since[port][q], now))
                    else:
                        paused_end.append((port, q, self.pause_since[port][q]))
                if status != OK:
                    stuck.extend((port, q, pkt.ingress) for pkt in self.queue[port][q])
        o, po = self.out, self.port_out
        arr = lambda x: np.array(x, np.int64)  # noqa: E731
        return FabricRun(status, int(now), arr(self.msg_done), arr(o["retx_bytes"]), arr(o["retx_pkts"]),
                         arr(o["marked"]), arr(o["cnps"]), arr(o["reorder"]), arr(o["timeouts"]), arr(po["tx"]),
                         arr(po["pkts"]), arr(po["marks"]), arr(po["drops"]), arr(po["maxq"]), rows(self.pauses, 4),
                         rows(self.rates, 3), rows(self.qrows, 3), rows(self.mrows, 3), rows(self.drops, 4),
                         rows(self.retx, 3), rows(stuck, 3), rows(paused_end, 3))


def simulate_reference(topo: Topology, params: FabricParams, flows: Flows) -> FabricRun:
    """Run ``flows`` over ``topo`` with ``params`` (the plain twin of :func:`tracekit.fabric.simulate`)."""
    params.check()
    return _Sim(topo, params, flows, prepare(topo, params, flows)).run()
