"""The fast fabric simulator: :mod:`tracekit.fabric.reference`'s semantics on arrays, compiled by numba.

State lives in a few integer and float tables (columns named below); events go through the timing wheel
of :mod:`tracekit.fabric.events`. Packets are rows of a pool recycled through a free list, so memory
follows what is in flight, not what is sent.

Why it is written this way (measured on the EP64 dispatch matrix, ``benchmarks/peer_htsim.py``): numba
reference-counts arrays with atomic operations whenever an array is bound to a new name (a tuple of
arrays unpacked in a helper, an inlined helper's array arguments, a slice, an array reassigned inside
the loop); ``perf`` put half of the run in those atomics. So the hot loop :func:`_run` gets every table
once as an argument and first rebinds each to a *borrowed* view without a reference count
(:func:`tracekit.fabric.events.borrowed`), so that LLVM folds the counting away; helpers take the tables
they need (inlined, no slices, no tuples of arrays); nothing is allocated per event; and when the packet
pool, the event rows or the output rows run short, :func:`_run` returns ``GROW``, Python enlarges the
arrays and calls it again (a handful of times per run).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tracekit.fabric.common import (ACK, ARRIVE, CNP, DEC, INC, INF, NACK, OK, PAUSE, PORT_FREE, RTO, SACK, SAMPLE,
                                    STALLED, WAKE, FabricRun, Flows, prepare)
from tracekit.fabric.events import (GROW, S_FIRST_FREE, S_HSIZE, S_SEQ, S_WCOUNT, WHEEL_NS, borrowed, grow_queue, pop,
                                    push, queue_arrays, queue_short)
from tracekit.fabric.params import FabricParams
from tracekit.fabric.topology import Topology

# packet pool columns
K_FLOW, K_SEQ, K_WIRE, K_PAY, K_PRIO, K_ECN, K_PORT, K_ING, K_HDRM, K_UID, K_NEXT = range(11)
# per-flow integer state
(F_NXT, F_HIGH, F_NEXTT, F_TC, F_BC, F_BYTES, F_CUT, F_LASTDEC, F_INCEP, F_ALPHANXT, F_LASTCNP, F_RCV, F_MAXSEEN,
 F_NACK, F_UNA, F_RTO, F_PROG, F_DELIV, F_FIN, F_RETXB, F_RETXP, F_MARKED, F_CNPS, F_REORD, F_TOUT, F_CUR,
 F_INREC, F_RECEND, F_RP, F_HEND, F_DECPEND, F_DECFLAG, F_ALPHACNP) = range(33)  # F_INREC..F_HEND: selective
# repeat's recovery; F_DECPEND: the rate-decrease monitor has a check queued; F_DECFLAG: a CNP came in its
# period; F_ALPHANXT: the end of the current alpha window (-1 before the first CNP); F_ALPHACNP: a CNP came
# in that window (see reference.py)
# per-flow static
G_SRC, G_DST, G_PRIO, G_NPK, G_CTRL, G_MA, G_MB, G_PORT, G_BASE, G_POS = range(10)  # G_BASE: first row in SEL
# per flow in its host's order (hflows; G_POS is the row): when it may send next (INF: all sent), its
# rate limiter's next send time, its priority. A copy of FI's state laid out for the sender's scan, which
# reads every flow of the host per packet (refreshed by _refresh whenever F_NXT, F_CUR or F_NEXTT move)
H_WHEN, H_NEXTT, H_PRIO = range(3)
# per packet of every flow (selective repeat only): the receiver holds it, the sender knows it arrived
X_GOT, X_SACKED = range(2)
# per-flow floats: current rate, target rate, DCQCN alpha, line rate (Mbit/s)
C_RC, C_RT, C_ALPHA, C_LINE = range(4)
# per message
M_FIRST, M_BYTES, M_READY, M_NPK, M_RCVD, M_DONE = range(6)
# per port, static: source node, destination node, rate, delay, headroom at its destination's ingress,
# serialisation time of a full-size packet (saves a 64-bit division per packet and hop)
T_SRC, T_DST, T_MBPS, T_DELAY, T_HDRM, T_SERFULL = range(6)
# per (port, priority)
Q_PAUSED, Q_SINCE, Q_SENT, Q_ING, Q_HDRM, Q_HEAD, Q_TAIL, Q_BYTES = range(8)
# per port
P_BUSY, P_TX, P_PKTS, P_MARKS, P_DROPS, P_MAXQ, P_LASTQ, P_MSINCE, P_PSINCE = range(9)
# per node: shared buffer in use, its capacity
N_USED, N_CAP = range(2)
# output rows (tag, four values)
O_PAUSE, O_DROP, O_RATE, O_RETX, O_QUEUE, O_MARKED = range(6)
# scalars (S_SEQ ... S_WHEEL: the event queue's, see events.py)
S_UID, S_LASTTX, S_PAUSED, S_REMAIN, S_NFREE, S_NOUT, S_NOW = range(S_FIRST_FREE, S_FIRST_FREE + 7)
S_LEN = S_FIRST_FREE + 7
# integer parameters
(I_PFC, I_MTU, I_HDR, I_ECN, I_KMIN, I_KMAX, I_CNPI, I_DCQCN, I_DECI, I_ALPHAT, I_INCT, I_BC, I_FR, I_RTO, I_ROUTE,
 I_GAP, I_WD, I_SAMPLE, I_PRIOS, I_SEED, I_RESUME, I_SEL) = range(22)
# float parameters
R_ALPHA, R_PMAX, R_G, R_RAI, R_RHAI, R_MINRATE = range(6)


@njit(cache=True, inline="always")
def _mix64(x):
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit(cache=True, inline="always")
def _hash3(a, b, c):
    return _mix64(np.uint64(a) ^ _mix64(np.uint64(b) ^ _mix64(np.uint64(c))))


@njit(cache=True, inline="always")
def _out(OUT, S, tag, a, b, c, d):
    i = S[S_NOUT]
    S[S_NOUT] = i + 1
    OUT[i, 0] = tag
    OUT[i, 1] = a
    OUT[i, 2] = b
    OUT[i, 3] = c
    OUT[i, 4] = d


@njit(cache=True, inline="always")
def _msg_of(G, MS, f, s):
    """The message of packet ``s`` of flow ``f``: the last one whose first packet is <= s."""
    lo, hi = G[f, G_MA], G[f, G_MB]
    while hi - lo > 1:
        mid = (lo + hi) >> 1
        if MS[mid, M_FIRST] <= s:
            lo = mid
        else:
            hi = mid
    return lo


@njit(cache=True, inline="always")
def _transmit(port, k, now, PK, PO, PT, S, H, W, EV, full):
    mbps = PT[port, T_MBPS]
    ser = PT[port, T_SERFULL] if PK[k, K_WIRE] == full else (PK[k, K_WIRE] * 8000 + mbps - 1) // mbps
    PO[port, P_BUSY] = now + ser
    PO[port, P_TX] += PK[k, K_WIRE]
    S[S_LASTTX] = now
    PK[k, K_PORT] = port
    push(H, W, EV, S, now + ser, PORT_FREE, port, 0)
    push(H, W, EV, S, now + ser + PT[port, T_DELAY], ARRIVE, k, 0)


@njit(cache=True, inline="always")
def _increase(f, now, FI, FC, IP, RP, OUT, S):
    hi = max(FI[f, F_TC], FI[f, F_BC])
    lo = min(FI[f, F_TC], FI[f, F_BC])
    if hi < IP[I_FR]:
        pass
    elif lo >= IP[I_FR]:
        FC[f, C_RT] += (lo - IP[I_FR] + 1) * RP[R_RHAI]
    else:
        FC[f, C_RT] += RP[R_RAI]
    FC[f, C_RT] = min(FC[f, C_RT], FC[f, C_LINE])
    FC[f, C_RC] = min((FC[f, C_RT] + FC[f, C_RC]) / 2.0, FC[f, C_LINE])
    _out(OUT, S, O_RATE, now, f, np.int64(FC[f, C_RC] * 1000.0), 0)


@njit(cache=True, inline="always")
def _next_seq(f, FI, G, SEL):
    """Selective repeat: the next hole (below the highest SACKed packet, not known to have arrived, not
    yet retransmitted in this recovery), else new data."""
    if FI[f, F_INREC]:
        r = max(FI[f, F_RP], FI[f, F_UNA])
        base = G[f, G_BASE]
        while r < FI[f, F_HEND] and SEL[base + r, X_SACKED]:
            r += 1
        FI[f, F_RP] = r
        if r < FI[f, F_HEND]:
            return r
    return FI[f, F_HIGH]


@njit(cache=True, inline="always")
def _send(f, now, PK, FI, FC, G, MS, PT, PO, S, H, W, EV, free, SEL, IP, RP, OUT):
    s = FI[f, F_NXT]
    m = FI[f, F_CUR]  # the message of packet s (kept as a cursor: no search per packet)
    payload = min(MS[m, M_BYTES] - (s - MS[m, M_FIRST]) * IP[I_MTU], IP[I_MTU])
    wire = payload + IP[I_HDR]
    S[S_NFREE] -= 1
    k = free[S[S_NFREE]]
    PK[k, K_FLOW] = f
    PK[k, K_SEQ] = s
    PK[k, K_WIRE] = wire
    PK[k, K_PAY] = payload
    PK[k, K_PRIO] = G[f, G_PRIO]
    PK[k, K_ECN] = 0
    PK[k, K_HDRM] = 0
    PK[k, K_ING] = -1
    PK[k, K_UID] = S[S_UID]
    S[S_UID] += 1
    if s < FI[f, F_HIGH]:
        FI[f, F_RETXP] += 1
        FI[f, F_RETXB] += payload
        _out(OUT, S, O_RETX, now, f, s, 0)
        FI[f, F_RP] = s + 1
    else:
        FI[f, F_HIGH] = s + 1
    FI[f, F_NXT] = _next_seq(f, FI, G, SEL) if IP[I_SEL] else s + 1
    if FI[f, F_NXT] != s + 1:
        FI[f, F_CUR] = _msg_of(G, MS, f, FI[f, F_NXT])
    elif m + 1 < G[f, G_MB] and s + 1 >= MS[m + 1, M_FIRST]:
        FI[f, F_CUR] = m + 1
    FI[f, F_NEXTT] = now + np.int64(np.ceil(wire * 8000.0 / FC[f, C_RC]))
    if IP[I_DCQCN] and FI[f, F_CUT]:
        FI[f, F_BYTES] += wire
        if FI[f, F_BYTES] >= IP[I_BC]:
            FI[f, F_BYTES] -= IP[I_BC]
            FI[f, F_BC] += 1
            _increase(f, now, FI, FC, IP, RP, OUT, S)
    if not IP[I_PFC] and not FI[f, F_RTO]:
        FI[f, F_RTO] = 1
        FI[f, F_PROG] = now
        push(H, W, EV, S, now + IP[I_RTO], RTO, f, 0)
    _transmit(G[f, G_PORT], k, now, PK, PO, PT, S, H, W, EV, IP[I_MTU] + IP[I_HDR])


@njit(cache=True, inline="always")
def _refresh(f, FI, G, MS, HS):
    i = G[f, G_POS]
    HS[i, H_WHEN] = INF if FI[f, F_NXT] >= G[f, G_NPK] else max(FI[f, F_NEXTT], MS[FI[f, F_CUR], M_READY])
    HS[i, H_NEXTT] = FI[f, F_NEXTT]


@njit(cache=True, inline="always")
def _try_send(h, now, PK, FI, FC, G, MS, PT, PO, PQ, S, H, W, EV, free, SEL, IP, RP, OUT, hptr, hflows, host_port,
              host_wake, HS):
    """Send the next packet of the host's eligible flow that has waited longest (ties: first in hflows),
    or wake the host when the first one becomes eligible."""
    port = host_port[h]
    if PO[port, P_BUSY] > now:
        return
    P = IP[I_PRIOS]
    best = -1
    bt = INF
    wake = INF
    for i in range(hptr[h], hptr[h + 1]):
        t = HS[i, H_WHEN]
        if t == INF or PQ[port * P + HS[i, H_PRIO], Q_PAUSED]:
            continue
        if t <= now:
            if HS[i, H_NEXTT] < bt:
                best = i
                bt = HS[i, H_NEXTT]
        elif t < wake:
            wake = t
    if best >= 0:
        f = hflows[best]
        _send(f, now, PK, FI, FC, G, MS, PT, PO, S, H, W, EV, free, SEL, IP, RP, OUT)
        _refresh(f, FI, G, MS, HS)
    elif wake < INF and wake < host_wake[h]:
        host_wake[h] = wake
        push(H, W, EV, S, wake, WAKE, h, 0)


@njit(cache=True, inline="always")
def _free_ingress(n, k, now, PK, PQ, PT, ND, IP, RP, S, H, W, EV):
    i = PK[k, K_ING]
    q = PK[k, K_PRIO]
    row = i * IP[I_PRIOS] + q
    if not IP[I_PFC]:
        ND[n, N_USED] -= PK[k, K_WIRE]
        return
    if PK[k, K_HDRM]:
        PQ[row, Q_HDRM] -= PK[k, K_WIRE]
    else:
        PQ[row, Q_ING] -= PK[k, K_WIRE]
        ND[n, N_USED] -= PK[k, K_WIRE]
    if PQ[row, Q_SENT] and PQ[row, Q_HDRM] == 0:
        thr = RP[R_ALPHA] * (ND[n, N_CAP] - ND[n, N_USED])
        if PQ[row, Q_ING] + IP[I_RESUME] <= thr:
            PQ[row, Q_SENT] = 0
            push(H, W, EV, S, now + PT[i, T_DELAY], PAUSE, i, q * 2)


@njit(cache=True, inline="always")
def _wred(qb, uid, n, IP, RP):
    if qb < IP[I_KMIN]:
        return False
    if qb > IP[I_KMAX]:
        return True
    if IP[I_KMAX] > IP[I_KMIN]:
        prob = RP[R_PMAX] * (qb - IP[I_KMIN]) / (IP[I_KMAX] - IP[I_KMIN])
    else:
        prob = RP[R_PMAX]
    u = np.float64(_hash3(uid, n, IP[I_SEED]) >> np.uint64(11)) * (1.0 / 9007199254740992.0)
    return u < prob


@njit(cache=True, inline="always")
def _try_port(port, now, PK, PQ, PO, PT, ND, S, H, W, EV, IP, RP):
    if PO[port, P_BUSY] > now:
        return
    P = IP[I_PRIOS]
    for q in range(P):
        row = port * P + q
        if not PQ[row, Q_PAUSED] and PQ[row, Q_HEAD] >= 0:
            k = PQ[row, Q_HEAD]
            PQ[row, Q_HEAD] = PK[k, K_NEXT]
            if PQ[row, Q_HEAD] < 0:
                PQ[row, Q_TAIL] = -1
            PQ[row, Q_BYTES] -= PK[k, K_WIRE]
            n = PT[port, T_SRC]
            if IP[I_ECN] and _wred(PQ[row, Q_BYTES], PK[k, K_UID], n, IP, RP):
                PK[k, K_ECN] = 1
                PO[port, P_MARKS] += 1
                PO[port, P_MSINCE] += 1
            PO[port, P_PKTS] += 1
            PO[port, P_PSINCE] += 1
            _free_ingress(n, k, now, PK, PQ, PT, ND, IP, RP, S, H, W, EV)
            _transmit(port, k, now, PK, PO, PT, S, H, W, EV, IP[I_MTU] + IP[I_HDR])
            return


@njit(cache=True, inline="always")
def _route(n, k, now, PK, G, fhash, route_ptr, route_ports, hosts, IP, FLS, FLI):
    f = PK[k, K_FLOW]
    key = n * hosts + G[f, G_DST]
    a, b = route_ptr[key], route_ptr[key + 1]
    if b - a == 1:
        return route_ports[a]
    if IP[I_ROUTE] == 0:
        h = _hash3(fhash[f], n, 0)
    elif IP[I_ROUTE] == 1:
        h = _hash3(fhash[f], n, PK[k, K_UID] + 1)
    else:
        j = n - hosts
        last = FLS[f, j]
        if last < 0 or now - last > IP[I_GAP]:
            FLI[f, j] += 1
        FLS[f, j] = now
        h = _hash3(fhash[f], n, FLI[f, j] + (np.int64(1) << 40))
    return route_ports[a + np.int64(h % np.uint64(b - a))]


@njit(cache=True, inline="always")
def _switch_arrive(n, k, now, PK, PQ, PO, PT, ND, S, H, W, EV, free, IP, RP, OUT, G, fhash, route_ptr, route_ports,
                   hosts, FLS, FLI):
    i = PK[k, K_PORT]
    q = PK[k, K_PRIO]
    P = IP[I_PRIOS]
    wire = PK[k, K_WIRE]
    PK[k, K_HDRM] = 0  # admission is per switch
    e = _route(n, k, now, PK, G, fhash, route_ptr, route_ports, hosts, IP, FLS, FLI)
    thr = RP[R_ALPHA] * (ND[n, N_CAP] - ND[n, N_USED])
    irow = i * P + q
    erow = e * P + q
    dropped = False
    if IP[I_PFC]:
        if PQ[irow, Q_ING] + wire <= thr and ND[n, N_USED] + wire <= ND[n, N_CAP]:
            PQ[irow, Q_ING] += wire
            ND[n, N_USED] += wire
        elif PQ[irow, Q_HDRM] + wire <= PT[i, T_HDRM]:
            PQ[irow, Q_HDRM] += wire
            PK[k, K_HDRM] = 1
        else:
            dropped = True
        if not dropped and PK[k, K_HDRM] and not PQ[irow, Q_SENT]:
            PQ[irow, Q_SENT] = 1
            push(H, W, EV, S, now + PT[i, T_DELAY], PAUSE, i, q * 2 + 1)
    else:
        if PQ[erow, Q_BYTES] + wire > thr:
            dropped = True
        else:
            ND[n, N_USED] += wire
    if dropped:
        PO[e, P_DROPS] += 1
        _out(OUT, S, O_DROP, now, e, PK[k, K_FLOW], PK[k, K_SEQ])
        free[S[S_NFREE]] = k
        S[S_NFREE] += 1
        return
    PK[k, K_ING] = i
    PK[k, K_NEXT] = -1
    if PQ[erow, Q_TAIL] >= 0:
        PK[PQ[erow, Q_TAIL], K_NEXT] = k
    else:
        PQ[erow, Q_HEAD] = k
    PQ[erow, Q_TAIL] = k
    PQ[erow, Q_BYTES] += wire
    PO[e, P_MAXQ] = max(PO[e, P_MAXQ], PQ[erow, Q_BYTES])
    _try_port(e, now, PK, PQ, PO, PT, ND, S, H, W, EV, IP, RP)


@njit(cache=True, inline="always")
def _receive(k, now, PK, FI, G, MS, S, H, W, EV, free, SEL, IP):
    f = PK[k, K_FLOW]
    s = PK[k, K_SEQ]
    ctrl = G[f, G_CTRL]
    free[S[S_NFREE]] = k
    S[S_NFREE] += 1
    if PK[k, K_ECN]:
        FI[f, F_MARKED] += 1
        if FI[f, F_LASTCNP] < 0 or now - FI[f, F_LASTCNP] >= IP[I_CNPI]:
            FI[f, F_LASTCNP] = now
            FI[f, F_CNPS] += 1
            push(H, W, EV, S, now + ctrl, CNP, f, 0)
    if IP[I_SEL]:
        base = G[f, G_BASE]
        if s < FI[f, F_RCV] or SEL[base + s, X_GOT]:
            return  # a duplicate
        SEL[base + s, X_GOT] = 1
        if s == FI[f, F_RCV]:
            while FI[f, F_RCV] < G[f, G_NPK] and SEL[base + FI[f, F_RCV], X_GOT]:
                FI[f, F_RCV] += 1
            push(H, W, EV, S, now + ctrl, ACK, f, FI[f, F_RCV])
        else:  # kept; NACK with the cumulative ACK and this packet (SACK)
            FI[f, F_REORD] += 1
            push(H, W, EV, S, now + ctrl, SACK, f, (FI[f, F_RCV] << 32) | s)
    elif not IP[I_PFC]:
        if s != FI[f, F_RCV]:
            if s > FI[f, F_RCV]:
                FI[f, F_REORD] += 1
                if FI[f, F_NACK] != FI[f, F_RCV]:
                    FI[f, F_NACK] = FI[f, F_RCV]
                    push(H, W, EV, S, now + ctrl, NACK, f, FI[f, F_RCV])
            return
        FI[f, F_RCV] += 1
        push(H, W, EV, S, now + ctrl, ACK, f, FI[f, F_RCV])
    else:
        if s < FI[f, F_MAXSEEN]:
            FI[f, F_REORD] += 1
        FI[f, F_MAXSEEN] = max(FI[f, F_MAXSEEN], s)
    m = _msg_of(G, MS, f, s)
    MS[m, M_RCVD] += 1
    if MS[m, M_RCVD] == MS[m, M_NPK]:
        MS[m, M_DONE] = now
    FI[f, F_DELIV] += 1
    if FI[f, F_DELIV] == G[f, G_NPK]:
        FI[f, F_FIN] = 1
        S[S_REMAIN] -= 1


@njit(cache=True, inline="always")
def _on_cnp(f, now, FI, FC, IP, RP, S, H, W, EV, OUT):
    if FI[f, F_FIN] or not IP[I_DCQCN]:
        return
    FI[f, F_DECFLAG] = 1
    if not FI[f, F_DECPEND]:
        FI[f, F_DECPEND] = 1
        if FI[f, F_LASTDEC] < 0:
            FI[f, F_LASTDEC] = now
        step = IP[I_DECI]
        push(H, W, EV, S, now if step == 0 else FI[f, F_LASTDEC] + ((now - FI[f, F_LASTDEC]) // step + 1) * step,
             DEC, f, 0)
    if FI[f, F_ALPHANXT] < 0:
        FC[f, C_ALPHA] = 1.0
        FI[f, F_ALPHANXT] = now + IP[I_ALPHAT]
    else:
        _update_alpha(f, now, FI, FC, IP, RP)
        FI[f, F_ALPHACNP] = 1


@njit(cache=True, inline="always")
def _update_alpha(f, now, FI, FC, IP, RP):
    while 0 <= FI[f, F_ALPHANXT] <= now:
        FC[f, C_ALPHA] = (1.0 - RP[R_G]) * FC[f, C_ALPHA] + (RP[R_G] if FI[f, F_ALPHACNP] else 0.0)
        FI[f, F_ALPHACNP] = 0
        FI[f, F_ALPHANXT] += IP[I_ALPHAT]


@njit(cache=True, inline="always")
def _on_dec(f, now, FI, FC, IP, RP, S, H, W, EV, OUT):
    FI[f, F_DECPEND] = 0
    if FI[f, F_DECFLAG] and not FI[f, F_FIN]:
        FI[f, F_DECFLAG] = 0
        _update_alpha(f, now, FI, FC, IP, RP)
        _cut_rate(f, now, FI, FC, IP, RP, S, H, W, EV, OUT)
        FI[f, F_DECPEND] = 1
        push(H, W, EV, S, now + IP[I_DECI], DEC, f, 0)


@njit(cache=True, inline="always")
def _cut_rate(f, now, FI, FC, IP, RP, S, H, W, EV, OUT):
    FC[f, C_RT] = FC[f, C_RC]
    FC[f, C_RC] = max(FC[f, C_RC] * (1.0 - FC[f, C_ALPHA] / 2.0), RP[R_MINRATE])
    FI[f, F_LASTDEC] = now
    FI[f, F_TC] = 0
    FI[f, F_BC] = 0
    FI[f, F_BYTES] = 0
    FI[f, F_CUT] = 1
    _out(OUT, S, O_RATE, now, f, np.int64(FC[f, C_RC] * 1000.0), 0)
    FI[f, F_INCEP] += 1
    push(H, W, EV, S, now + IP[I_INCT], INC, f, FI[f, F_INCEP])


@njit(cache=True, inline="always")
def _sample(now, PQ, PO, PT, S, IP, OUT, hosts):
    """Queue depth and ECN fraction rows per switch port; False when the run has stalled."""
    P = IP[I_PRIOS]
    for port in range(PT.shape[0]):
        if PT[port, T_SRC] < hosts:
            continue
        qb = np.int64(0)
        for q in range(P):
            qb += PQ[port * P + q, Q_BYTES]
        if qb != PO[port, P_LASTQ]:
            _out(OUT, S, O_QUEUE, now, port, qb, 0)
            PO[port, P_LASTQ] = qb
        if PO[port, P_PSINCE] > 0:
            _out(OUT, S, O_MARKED, now, port, PO[port, P_MSINCE] * 1000000 // PO[port, P_PSINCE], 0)
            PO[port, P_MSINCE] = 0
            PO[port, P_PSINCE] = 0
    return not (S[S_PAUSED] > 0 and now - S[S_LASTTX] >= IP[I_WD])


@njit(cache=True)
def _run(IP, RP, G, FI, FC, MS, PT, PQ, PO, ND, S, H, W, EV, PK, free, SEL, OUT, hptr, hflows, host_port, host_wake,
         route_ptr, route_ports, fhash, FLS, FLI, HS):
    """The event loop, until every flow is delivered (OK), the run stalls (STALLED) or an array runs
    short (GROW: the caller enlarges it and calls again; all state is in the arguments)."""
    IP, RP, G, FI, FC, MS, PT, PQ = borrowed(IP), borrowed(RP), borrowed(G), borrowed(FI), borrowed(FC), \
        borrowed(MS), borrowed(PT), borrowed(PQ)
    PO, ND, S, H, W, EV, PK, free, OUT = borrowed(PO), borrowed(ND), borrowed(S), borrowed(H), borrowed(W), \
        borrowed(EV), borrowed(PK), borrowed(free), borrowed(OUT)
    SEL, HS = borrowed(SEL), borrowed(HS)
    hptr, hflows, host_port, host_wake = borrowed(hptr), borrowed(hflows), borrowed(host_port), \
        borrowed(host_wake)
    route_ptr, route_ports, fhash, FLS, FLI = borrowed(route_ptr), borrowed(route_ports), borrowed(fhash), \
        borrowed(FLS), borrowed(FLI)
    hosts = host_port.shape[0]
    P = IP[I_PRIOS]
    room = 2 * PT.shape[0] + 64
    if S[S_SEQ] == 0:  # first call: each host wakes at its first message, sampling starts
        for h in range(hosts):
            if hptr[h] < hptr[h + 1]:
                first = INF
                for i in range(hptr[h], hptr[h + 1]):
                    first = min(first, MS[G[hflows[i], G_MA], M_READY])
                host_wake[h] = first
                push(H, W, EV, S, first, WAKE, h, 0)
        push(H, W, EV, S, IP[I_SAMPLE], SAMPLE, 0, 0)
    while S[S_HSIZE] + S[S_WCOUNT] > 0 and S[S_REMAIN] > 0:
        if S[S_NFREE] < 2 or queue_short(H, EV, S) or S[S_NOUT] + room > OUT.shape[0]:
            return GROW
        now, kind, a, b = pop(H, W, EV, S)
        S[S_NOW] = now
        if kind == PORT_FREE or kind == PAUSE:
            if kind == PAUSE:
                row = a * P + (b >> 1)
                if b & 1:
                    if not PQ[row, Q_PAUSED]:
                        PQ[row, Q_PAUSED] = 1
                        PQ[row, Q_SINCE] = now
                        S[S_PAUSED] += 1
                    continue
                if PQ[row, Q_PAUSED]:
                    PQ[row, Q_PAUSED] = 0
                    S[S_PAUSED] -= 1
                    _out(OUT, S, O_PAUSE, a, b >> 1, PQ[row, Q_SINCE], now)
            n = PT[a, T_SRC]
            if n < hosts:
                _try_send(n, now, PK, FI, FC, G, MS, PT, PO, PQ, S, H, W, EV, free, SEL, IP, RP, OUT, hptr, hflows,
                          host_port, host_wake, HS)
            else:
                _try_port(a, now, PK, PQ, PO, PT, ND, S, H, W, EV, IP, RP)
        elif kind == ARRIVE:
            n = PT[PK[a, K_PORT], T_DST]
            if n < hosts:
                _receive(a, now, PK, FI, G, MS, S, H, W, EV, free, SEL, IP)
            else:
                _switch_arrive(n, a, now, PK, PQ, PO, PT, ND, S, H, W, EV, free, IP, RP, OUT, G, fhash, route_ptr,
                               route_ports, hosts, FLS, FLI)
        elif kind == WAKE:
            if host_wake[a] == now:
                host_wake[a] = INF
            _try_send(a, now, PK, FI, FC, G, MS, PT, PO, PQ, S, H, W, EV, free, SEL, IP, RP, OUT, hptr, hflows,
                      host_port, host_wake, HS)
        elif kind == CNP:
            _on_cnp(a, now, FI, FC, IP, RP, S, H, W, EV, OUT)
        elif kind == DEC:
            _on_dec(a, now, FI, FC, IP, RP, S, H, W, EV, OUT)
        elif IP[I_SEL] and (kind == ACK or kind == SACK):
            cum = b >> 32 if kind == SACK else b
            if cum > FI[a, F_UNA]:
                FI[a, F_UNA] = cum
                FI[a, F_PROG] = now
            if kind == SACK:
                got = b & 0xFFFFFFFF
                SEL[G[a, G_BASE] + got, X_SACKED] = 1
                FI[a, F_HEND] = max(FI[a, F_HEND], got)
                if not FI[a, F_INREC]:
                    FI[a, F_INREC] = 1
                    FI[a, F_RECEND] = FI[a, F_HIGH]
                    FI[a, F_RP] = FI[a, F_UNA]
            if FI[a, F_INREC] and FI[a, F_UNA] >= FI[a, F_RECEND]:
                FI[a, F_INREC] = 0
            nxt = _next_seq(a, FI, G, SEL)
            if nxt != FI[a, F_NXT]:
                FI[a, F_NXT] = nxt
                FI[a, F_CUR] = _msg_of(G, MS, a, nxt)
                _refresh(a, FI, G, MS, HS)
                _try_send(G[a, G_SRC], now, PK, FI, FC, G, MS, PT, PO, PQ, S, H, W, EV, free, SEL, IP, RP, OUT, hptr,
                          hflows, host_port, host_wake, HS)
        elif kind == ACK or kind == NACK:
            if b > FI[a, F_UNA]:
                FI[a, F_UNA] = b
                FI[a, F_PROG] = now
            if kind == NACK and FI[a, F_NXT] > b:
                FI[a, F_NXT] = b
                FI[a, F_CUR] = _msg_of(G, MS, a, b)
                _refresh(a, FI, G, MS, HS)
                _try_send(G[a, G_SRC], now, PK, FI, FC, G, MS, PT, PO, PQ, S, H, W, EV, free, SEL, IP, RP, OUT, hptr,
                          hflows, host_port, host_wake, HS)
        elif kind == INC:
            if b == FI[a, F_INCEP] and not FI[a, F_FIN]:
                FI[a, F_TC] += 1
                _increase(a, now, FI, FC, IP, RP, OUT, S)
                if FC[a, C_RC] < FC[a, C_LINE]:
                    push(H, W, EV, S, now + IP[I_INCT], INC, a, b)
        elif kind == RTO:
            FI[a, F_RTO] = 0
            if FI[a, F_FIN] or FI[a, F_UNA] >= (FI[a, F_HIGH] if IP[I_SEL] else FI[a, F_NXT]):
                continue
            FI[a, F_RTO] = 1
            if now - FI[a, F_PROG] >= IP[I_RTO]:
                if IP[I_SEL]:  # every packet not known to have arrived is a hole
                    FI[a, F_INREC] = 1
                    FI[a, F_RECEND] = FI[a, F_HIGH]
                    FI[a, F_HEND] = FI[a, F_HIGH]
                    FI[a, F_RP] = FI[a, F_UNA]
                FI[a, F_NXT] = _next_seq(a, FI, G, SEL) if IP[I_SEL] else FI[a, F_UNA]
                FI[a, F_CUR] = _msg_of(G, MS, a, FI[a, F_NXT])
                _refresh(a, FI, G, MS, HS)
                FI[a, F_TOUT] += 1
                FI[a, F_PROG] = now
                push(H, W, EV, S, now + IP[I_RTO], RTO, a, 0)
                _try_send(G[a, G_SRC], now, PK, FI, FC, G, MS, PT, PO, PQ, S, H, W, EV, free, SEL, IP, RP, OUT, hptr,
                          hflows, host_port, host_wake, HS)
            else:
                push(H, W, EV, S, FI[a, F_PROG] + IP[I_RTO], RTO, a, 0)
        elif _sample(now, PQ, PO, PT, S, IP, OUT, hosts):
            push(H, W, EV, S, now + IP[I_SAMPLE], SAMPLE, 0, 0)
        else:
            return STALLED
    return OK


def _grown(a: np.ndarray, fill: int | None) -> np.ndarray:
    """``a`` with twice the rows; the new ones hold ``fill`` (None: left unset, never read)."""
    new = np.empty((a.shape[0] * 2, a.shape[1]), a.dtype)
    new[:a.shape[0]] = a
    if fill is not None:
        new[a.shape[0]:] = fill
    return new


def _wheel_ns(topo: Topology, p: FabricParams, ctrl_ns: np.ndarray, ser_full: np.ndarray) -> int:
    """The event wheel's length (see :func:`simulate`)."""
    step = max(int((ser_full + topo.port_delay_ns).max(initial=0)), int(ctrl_ns.max(initial=0)), p.sample_ns)
    return min(max(1 << (8 * step - 1).bit_length(), 1024), WHEEL_NS)


def _state(topo: Topology, p: FabricParams, flows: Flows, wheel_ns: int | None) -> dict[str, np.ndarray]:
    """Every array :func:`_run` reads or writes, initialised."""
    pre = prepare(topo, p, flows)
    ser_full = ((p.mtu_bytes + p.header_bytes) * 8000 + topo.port_mbps - 1) // topo.port_mbps
    wheel_ns = wheel_ns or _wheel_ns(topo, p, pre.flow_ctrl_ns, ser_full)
    F, P, ports, hosts = flows.count, p.priorities, topo.ports, topo.hosts
    sel = int(p.retransmit == "selective" and not p.pfc)
    ip = np.array([p.pfc, p.mtu_bytes, p.header_bytes, p.ecn, p.kmin_bytes, p.kmax_bytes, p.cnp_interval_ns, p.dcqcn,
                   p.rate_decrease_interval_ns, p.alpha_timer_ns, p.increase_timer_ns, p.byte_counter_bytes,
                   p.fast_recovery_steps, p.rto_ns, pre.routing, p.flowlet_gap_ns, p.pfc_watchdog_ns, p.sample_ns,
                   p.priorities, p.seed, p.resume_offset_bytes, sel], np.int64)
    rp = np.array([p.alpha, p.pmax, p.dcqcn_g, p.rai_mbps, p.rhai_mbps, p.min_rate_mbps], np.float64)
    base = np.r_[0, np.cumsum(pre.flow_npk)]
    pos = np.empty(F, np.int64)
    pos[pre.host_flows] = np.arange(F)
    g = np.stack([flows.src, flows.dst, flows.prio, pre.flow_npk, pre.flow_ctrl_ns, flows.msg_ptr[:-1],
                  flows.msg_ptr[1:], topo.host_port[flows.src], base[:-1], pos], axis=1).astype(np.int64)
    fi = np.zeros((F, F_ALPHACNP + 1), np.int64)
    fi[:, F_CUR] = g[:, G_MA]
    fi[:, [F_LASTDEC, F_ALPHANXT, F_LASTCNP, F_MAXSEEN, F_NACK]] = -1
    fc = np.stack([pre.line_mbps, pre.line_mbps, np.ones(F), pre.line_mbps], axis=1).astype(np.float64)
    nm = flows.msg_bytes.shape[0]
    ms = np.stack([pre.msg_first, flows.msg_bytes, flows.msg_ready_ns, pre.msg_npk, np.zeros(nm), np.full(nm, -1)],
                  axis=1).astype(np.int64)
    pt = np.stack([topo.port_src, topo.port_dst, topo.port_mbps, topo.port_delay_ns, pre.headroom, ser_full],
                  axis=1).astype(np.int64)
    pq = np.zeros((ports * P, 8), np.int64)
    pq[:, [Q_HEAD, Q_TAIL]] = -1
    nd = np.stack([np.zeros(topo.nodes, np.int64), pre.shared_cap], axis=1).astype(np.int64)
    pool = max(1024, 4 * ports)  # 90 KB; grows by doubling
    s = np.zeros(S_LEN, np.int64)
    s[S_REMAIN], s[S_NFREE] = F, pool
    nsw = max(topo.nodes - hosts, 1)
    return dict(IP=ip, RP=rp, G=g, FI=fi, FC=fc, MS=ms, PT=pt, PQ=pq, PO=np.zeros((ports, 9), np.int64), ND=nd, S=s,
                **queue_arrays(s, wheel_ns, 4 * (F + ports + hosts)), PK=np.full((pool, 11), -1, np.int64),
                free=np.arange(pool - 1, -1, -1, dtype=np.int64),
                SEL=np.zeros((int(base[-1]) if sel else 1, 2), np.int8),
                OUT=np.zeros((max(4096, 8 * ports + 256), 5), np.int64),
                hptr=pre.host_flows_ptr, hflows=pre.host_flows, host_port=topo.host_port,
                host_wake=np.full(hosts, INF, np.int64), route_ptr=topo.route_ptr, route_ports=topo.route_ports,
                fhash=pre.flow_hash, FLS=np.full((F, nsw), -1, np.int64), FLI=np.zeros((F, nsw), np.int64),
                HS=np.stack([np.maximum(flows.msg_ready_ns[flows.msg_ptr[:-1]], 0), np.zeros(F), flows.prio],
                            axis=1)[pre.host_flows].astype(np.int64))


def _grow(st: dict[str, np.ndarray]) -> None:
    """Enlarge whatever :func:`_run` found short (doubling: a handful of calls per run)."""
    S = st["S"]
    if S[S_NFREE] < 2:
        old = st["PK"].shape[0]
        st["PK"] = _grown(st["PK"], -1)
        nf = int(S[S_NFREE])
        free = np.zeros(2 * old, np.int64)
        free[:nf] = st["free"][:nf]
        free[nf:nf + old] = np.arange(2 * old - 1, old - 1, -1)
        st["free"] = free
        S[S_NFREE] += old
    grow_queue(st)
    if S[S_NOUT] + 2 * st["PT"].shape[0] + 64 > st["OUT"].shape[0]:
        st["OUT"] = _grown(st["OUT"], None)


def simulate(topo: Topology, params: FabricParams, flows: Flows, *, wheel_ns: int | None = None) -> FabricRun:
    """Run ``flows`` over ``topo`` with ``params``: packets, shared-buffer switches, PFC, ECN, DCQCN and
    loss recovery (see ``docs/fabric.md``). Equal, field by field, to ``simulate_reference``.
    ``wheel_ns`` (a power of two >= 64) sizes the event wheel; results never depend on it (tests shrink
    it). Default: eight times the longest regular step (a full packet's serialisation plus its link's
    delay, a control frame's path, the sample period), between 1024 and WHEEL_NS: a small wheel is quick
    to allocate and stays in cache, and only timers and far wake-ups go through the heap."""
    p = params.check()
    st = _state(topo, p, flows, wheel_ns)
    while (status := _run(**st)) == GROW:
        _grow(st)
    S, PQ, PK, FI, PO = st["S"], st["PQ"], st["PK"], st["FI"], st["PO"]
    now, P = int(S[S_NOW]), p.priorities
    out = st["OUT"][:S[S_NOUT]]
    out = out[np.argsort(out[:, 0].astype(np.int8), kind="stable")]  # by tag, in order within each (radix sort)
    ends = np.r_[0, np.cumsum(np.bincount(out[:, 0], minlength=O_MARKED + 1))]

    def rows(tag: int, width: int) -> np.ndarray:
        return out[ends[tag]:ends[tag + 1], 1:1 + width]

    paused = np.flatnonzero(PQ[:, Q_PAUSED])
    open_pauses = np.stack([paused // P, paused % P, PQ[paused, Q_SINCE], np.full(paused.size, now)], axis=1)
    stuck: list[tuple[int, int, int]] = []
    if status != OK:
        for row in range(PQ.shape[0]):
            k = int(PQ[row, Q_HEAD])
            while k >= 0:
                stuck.append((row // P, row % P, int(PK[k, K_ING])))
                k = int(PK[k, K_NEXT])
    pauses = np.vstack([rows(O_PAUSE, 4), open_pauses]) if status == OK else rows(O_PAUSE, 4)
    run = FabricRun(int(status), now, st["MS"][:, M_DONE].copy(), FI[:, F_RETXB].copy(), FI[:, F_RETXP].copy(),
                    FI[:, F_MARKED].copy(), FI[:, F_CNPS].copy(), FI[:, F_REORD].copy(), FI[:, F_TOUT].copy(),
                    PO[:, P_TX].copy(), PO[:, P_PKTS].copy(), PO[:, P_MARKS].copy(), PO[:, P_DROPS].copy(),
                    PO[:, P_MAXQ].copy(), pauses, rows(O_RATE, 3), rows(O_QUEUE, 3), rows(O_MARKED, 3),
                    rows(O_DROP, 4), rows(O_RETX, 3), np.array(stuck, np.int64).reshape(-1, 3),
                    np.ascontiguousarray(open_pauses[:, :3]) if status != OK else np.zeros((0, 3), np.int64))
    run.extra["packet_pool"] = int(PK.shape[0])
    run.extra["events"] = int(S[S_SEQ])
    return run
