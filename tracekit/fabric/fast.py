"""The fast fabric simulator: :mod:`tracekit.fabric.reference`'s semantics on arrays, compiled by numba.

State lives in a few integer and float tables (columns named below); the event heap is a binary heap
of ``(time, sequence, kind, a, b)`` rows in one array (ordered by time, then sequence: the reference's
heapq order), grown when nearly full.
Packets are rows of a pool that grows on demand and is recycled through a free list, so memory
follows what is in flight, not what is sent.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from tracekit.fabric.common import (ACK, ALPHA, ARRIVE, CNP, INC, INF, NACK, OK, PAUSE, PORT_FREE, RTO, SAMPLE,
                                    STALLED, WAKE, FabricRun, Flows, prepare)
from tracekit.fabric.params import FabricParams
from tracekit.fabric.topology import Topology

# packet pool columns
K_FLOW, K_SEQ, K_WIRE, K_PAY, K_PRIO, K_ECN, K_PORT, K_ING, K_HDRM, K_UID, K_NEXT = range(11)
# per-flow integer state
(F_NXT, F_HIGH, F_NEXTT, F_TC, F_BC, F_BYTES, F_CUT, F_LASTDEC, F_INCEP, F_ALPHAEP, F_LASTCNP, F_RCV, F_MAXSEEN,
 F_NACK, F_UNA, F_RTO, F_PROG, F_DELIV, F_FIN, F_RETXB, F_RETXP, F_MARKED, F_CNPS, F_REORD, F_TOUT, F_CUR) = range(26)
# per-flow static
G_SRC, G_DST, G_PRIO, G_NPK, G_CTRL, G_MA, G_MB = range(7)
# per (port, priority)
Q_PAUSED, Q_SINCE, Q_SENT, Q_ING, Q_HDRM, Q_HEAD, Q_TAIL, Q_BYTES = range(8)
# per port
P_BUSY, P_TX, P_PKTS, P_MARKS, P_DROPS, P_MAXQ, P_LASTQ, P_MSINCE, P_PSINCE = range(9)
# scalars
S_UID, S_LASTTX, S_PAUSED, S_REMAIN, S_SEQ, S_NFREE, S_HSIZE = range(7)
# integer parameters
(I_PFC, I_MTU, I_HDR, I_ECN, I_KMIN, I_KMAX, I_CNPI, I_DCQCN, I_DECI, I_ALPHAT, I_INCT, I_BC, I_FR, I_RTO, I_ROUTE,
 I_GAP, I_WD, I_SAMPLE, I_PRIOS, I_SEED, I_RESUME) = range(21)
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
def _push(heap, S, t, kind, a, b):
    i = S[S_HSIZE]
    S[S_HSIZE] = i + 1
    seq = S[S_SEQ]
    S[S_SEQ] += 1
    while i > 0:  # sift up
        j = (i - 1) >> 1
        if heap[j, 0] < t or (heap[j, 0] == t and heap[j, 1] < seq):
            break
        for c in range(5):
            heap[i, c] = heap[j, c]
        i = j
    heap[i, 0] = t
    heap[i, 1] = seq
    heap[i, 2] = kind
    heap[i, 3] = a
    heap[i, 4] = b


@njit(cache=True, inline="always")
def _pop(heap, S):
    t0, k0, a0, b0 = heap[0, 0], heap[0, 2], heap[0, 3], heap[0, 4]
    n = S[S_HSIZE] - 1
    S[S_HSIZE] = n
    if n > 0:
        lt, ls, lk, la, lb = heap[n, 0], heap[n, 1], heap[n, 2], heap[n, 3], heap[n, 4]
        i = 0
        while True:  # sift down
            c = 2 * i + 1
            if c >= n:
                break
            if c + 1 < n and (heap[c + 1, 0] < heap[c, 0] or (heap[c + 1, 0] == heap[c, 0] and heap[c + 1, 1] < heap[c, 1])):
                c += 1
            if lt < heap[c, 0] or (lt == heap[c, 0] and ls < heap[c, 1]):
                break
            for x in range(5):
                heap[i, x] = heap[c, x]
            i = c
        heap[i, 0] = lt
        heap[i, 1] = ls
        heap[i, 2] = lk
        heap[i, 3] = la
        heap[i, 4] = lb
    return t0, k0, a0, b0


@njit(cache=True)
def _grow_heap(heap):
    new = np.empty((heap.shape[0] * 2, 5), np.int64)
    new[:heap.shape[0]] = heap
    return new


@njit(cache=True, inline="always")
def _msg_of(G, msg_first, f, s):
    a, b = G[f, G_MA], G[f, G_MB]
    return a + np.searchsorted(msg_first[a:b], s, side="right") - 1


@njit(cache=True, inline="always")
def _transmit(port, k, now, PK, PO, S, heap, port_mbps, port_delay):
    mbps = port_mbps[port]
    ser = (PK[k, K_WIRE] * 8000 + mbps - 1) // mbps
    PO[port, P_BUSY] = now + ser
    PO[port, P_TX] += PK[k, K_WIRE]
    S[S_LASTTX] = now
    PK[k, K_PORT] = port
    _push(heap, S, now + ser, PORT_FREE, port, 0)
    _push(heap, S, now + ser + port_delay[port], ARRIVE, k, 0)


@njit(cache=True, inline="always")
def _increase(f, now, FI, FF, line, IP, RP, rates):
    hi = max(FI[f, F_TC], FI[f, F_BC])
    lo = min(FI[f, F_TC], FI[f, F_BC])
    if hi < IP[I_FR]:
        pass
    elif lo >= IP[I_FR]:
        FF[f, 1] += (lo - IP[I_FR] + 1) * RP[R_RHAI]
    else:
        FF[f, 1] += RP[R_RAI]
    FF[f, 1] = min(FF[f, 1], line[f])
    FF[f, 0] = min((FF[f, 1] + FF[f, 0]) / 2.0, line[f])
    rates.append((now, np.int64(f), np.int64(FF[f, 0] * 1000.0)))


@njit(cache=True, inline="always")
def _send(f, now, st):
    (PK, FI, FF, G, PQ, PO, S, heap, free, msg_first, msg_bytes, msg_ready, line, IP, RP, host_port, port_mbps,
     port_delay, rates, retx) = st
    s = FI[f, F_NXT]
    m = FI[f, F_CUR]  # the message of packet s (kept as a cursor: no search per packet)
    payload = min(msg_bytes[m] - (s - msg_first[m]) * IP[I_MTU], IP[I_MTU])
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
        retx.append((now, np.int64(f), s))
    else:
        FI[f, F_HIGH] = s + 1
    FI[f, F_NXT] = s + 1
    if m + 1 < G[f, G_MB] and s + 1 >= msg_first[m + 1]:
        FI[f, F_CUR] = m + 1
    FI[f, F_NEXTT] = now + np.int64(np.ceil(wire * 8000.0 / FF[f, 0]))
    if IP[I_DCQCN] and FI[f, F_CUT]:
        FI[f, F_BYTES] += wire
        if FI[f, F_BYTES] >= IP[I_BC]:
            FI[f, F_BYTES] -= IP[I_BC]
            FI[f, F_BC] += 1
            _increase(f, now, FI, FF, line, IP, RP, rates)
    if not IP[I_PFC] and not FI[f, F_RTO]:
        FI[f, F_RTO] = 1
        FI[f, F_PROG] = now
        _push(heap, S, now + IP[I_RTO], RTO, f, 0)
    _transmit(host_port[G[f, G_SRC]], k, now, PK, PO, S, heap, port_mbps, port_delay)


@njit(cache=True, inline="always")
def _try_send(h, now, st, hptr, hflows, host_wake):
    (PK, FI, FF, G, PQ, PO, S, heap, free, msg_first, msg_bytes, msg_ready, line, IP, RP, host_port, port_mbps,
     port_delay, rates, retx) = st
    port = host_port[h]
    if PO[port, P_BUSY] > now:
        return
    P = IP[I_PRIOS]
    best = -1
    bt = INF
    wake = INF
    for i in range(hptr[h], hptr[h + 1]):
        f = hflows[i]
        if FI[f, F_NXT] >= G[f, G_NPK] or PQ[port * P + G[f, G_PRIO], Q_PAUSED]:
            continue
        t = max(FI[f, F_NEXTT], msg_ready[FI[f, F_CUR]])
        if t <= now:
            if FI[f, F_NEXTT] < bt:
                best = f
                bt = FI[f, F_NEXTT]
        elif t < wake:
            wake = t
    if best >= 0:
        _send(best, now, st)
    elif wake < INF and wake < host_wake[h]:
        host_wake[h] = wake
        _push(heap, S, wake, WAKE, h, 0)


@njit(cache=True, inline="always")
def _free_ingress(n, k, now, PK, PQ, used, shared_cap, IP, RP, S, heap, port_delay):
    i = PK[k, K_ING]
    q = PK[k, K_PRIO]
    row = i * IP[I_PRIOS] + q
    if not IP[I_PFC]:
        used[n] -= PK[k, K_WIRE]
        return
    if PK[k, K_HDRM]:
        PQ[row, Q_HDRM] -= PK[k, K_WIRE]
    else:
        PQ[row, Q_ING] -= PK[k, K_WIRE]
        used[n] -= PK[k, K_WIRE]
    if PQ[row, Q_SENT] and PQ[row, Q_HDRM] == 0:
        thr = RP[R_ALPHA] * (shared_cap[n] - used[n])
        if PQ[row, Q_ING] + IP[I_RESUME] <= thr:
            PQ[row, Q_SENT] = 0
            _push(heap, S, now + port_delay[i], PAUSE, i, q * 2)


@njit(cache=True, inline="always")
def _try_port(port, now, st, used, shared_cap, port_src):
    (PK, FI, FF, G, PQ, PO, S, heap, free, msg_first, msg_bytes, msg_ready, line, IP, RP, host_port, port_mbps,
     port_delay, rates, retx) = st
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
            n = port_src[port]
            if IP[I_ECN] and _wred(PQ[row, Q_BYTES], PK[k, K_UID], n, IP, RP):
                PK[k, K_ECN] = 1
                PO[port, P_MARKS] += 1
                PO[port, P_MSINCE] += 1
            PO[port, P_PKTS] += 1
            PO[port, P_PSINCE] += 1
            _free_ingress(n, k, now, PK, PQ, used, shared_cap, IP, RP, S, heap, port_delay)
            _transmit(port, k, now, PK, PO, S, heap, port_mbps, port_delay)
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
def _switch_arrive(n, k, now, st, used, shared_cap, headroom, port_src, fhash, route_ptr, route_ports, hosts, FLS,
                   FLI, drops):
    (PK, FI, FF, G, PQ, PO, S, heap, free, msg_first, msg_bytes, msg_ready, line, IP, RP, host_port, port_mbps,
     port_delay, rates, retx) = st
    i = PK[k, K_PORT]
    q = PK[k, K_PRIO]
    P = IP[I_PRIOS]
    wire = PK[k, K_WIRE]
    PK[k, K_HDRM] = 0  # admission is per switch
    e = _route(n, k, now, PK, G, fhash, route_ptr, route_ports, hosts, IP, FLS, FLI)
    thr = RP[R_ALPHA] * (shared_cap[n] - used[n])
    irow = i * P + q
    erow = e * P + q
    dropped = False
    if IP[I_PFC]:
        if PQ[irow, Q_ING] + wire <= thr and used[n] + wire <= shared_cap[n]:
            PQ[irow, Q_ING] += wire
            used[n] += wire
        elif PQ[irow, Q_HDRM] + wire <= headroom[i]:
            PQ[irow, Q_HDRM] += wire
            PK[k, K_HDRM] = 1
        else:
            dropped = True
        if not dropped and PK[k, K_HDRM] and not PQ[irow, Q_SENT]:
            PQ[irow, Q_SENT] = 1
            _push(heap, S, now + port_delay[i], PAUSE, i, q * 2 + 1)
    else:
        if PQ[erow, Q_BYTES] + wire > thr:
            dropped = True
        else:
            used[n] += wire
    if dropped:
        PO[e, P_DROPS] += 1
        drops.append((now, e, PK[k, K_FLOW], PK[k, K_SEQ]))
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
    _try_port(e, now, st, used, shared_cap, port_src)


@njit(cache=True, inline="always")
def _receive(k, now, st, msg_npk, msg_rcvd, msg_done):
    (PK, FI, FF, G, PQ, PO, S, heap, free, msg_first, msg_bytes, msg_ready, line, IP, RP, host_port, port_mbps,
     port_delay, rates, retx) = st
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
            _push(heap, S, now + ctrl, CNP, f, 0)
    if not IP[I_PFC]:
        if s != FI[f, F_RCV]:
            if s > FI[f, F_RCV]:
                FI[f, F_REORD] += 1
                if FI[f, F_NACK] != FI[f, F_RCV]:
                    FI[f, F_NACK] = FI[f, F_RCV]
                    _push(heap, S, now + ctrl, NACK, f, FI[f, F_RCV])
            return
        FI[f, F_RCV] += 1
        _push(heap, S, now + ctrl, ACK, f, FI[f, F_RCV])
    else:
        if s < FI[f, F_MAXSEEN]:
            FI[f, F_REORD] += 1
        FI[f, F_MAXSEEN] = max(FI[f, F_MAXSEEN], s)
    m = _msg_of(G, msg_first, f, s)
    msg_rcvd[m] += 1
    if msg_rcvd[m] == msg_npk[m]:
        msg_done[m] = now
    FI[f, F_DELIV] += 1
    if FI[f, F_DELIV] == G[f, G_NPK]:
        FI[f, F_FIN] = 1
        S[S_REMAIN] -= 1


@njit(cache=True, inline="always")
def _on_cnp(f, now, FI, FF, IP, RP, S, heap, rates):
    if FI[f, F_FIN] or not IP[I_DCQCN]:
        return
    if FI[f, F_LASTDEC] < 0 or now - FI[f, F_LASTDEC] >= IP[I_DECI]:
        FF[f, 1] = FF[f, 0]
        FF[f, 0] = max(FF[f, 0] * (1.0 - FF[f, 2] / 2.0), RP[R_MINRATE])
        FI[f, F_LASTDEC] = now
        FI[f, F_TC] = 0
        FI[f, F_BC] = 0
        FI[f, F_BYTES] = 0
        FI[f, F_CUT] = 1
        rates.append((now, np.int64(f), np.int64(FF[f, 0] * 1000.0)))
        FI[f, F_INCEP] += 1
        _push(heap, S, now + IP[I_INCT], INC, f, FI[f, F_INCEP])
    FF[f, 2] = (1.0 - RP[R_G]) * FF[f, 2] + RP[R_G]
    FI[f, F_ALPHAEP] += 1
    _push(heap, S, now + IP[I_ALPHAT], ALPHA, f, FI[f, F_ALPHAEP])


@njit(cache=True)
def _grow(PK, free, S):
    old = PK.shape[0]
    new = np.full((old * 2, PK.shape[1]), -1, np.int64)
    new[:old] = PK
    nfree = np.empty(old * 2, np.int64)
    nfree[:S[S_NFREE]] = free[:S[S_NFREE]]
    for j in range(old):
        nfree[S[S_NFREE] + j] = old * 2 - 1 - j
    S[S_NFREE] += old
    return new, nfree


@njit(cache=True)
def _loop(IP, RP, G, fhash, line, msg_ready, msg_bytes, msg_first, msg_npk, hptr, hflows, port_src, port_dst,
          port_mbps, port_delay, host_port, route_ptr, route_ports, headroom, shared_cap, hosts, nodes, pool):
    F = G.shape[0]
    ports = port_src.shape[0]
    P = IP[I_PRIOS]
    PK = np.full((pool, 11), -1, np.int64)
    free = np.arange(pool - 1, -1, -1).astype(np.int64)
    FI = np.zeros((F, 26), np.int64)
    for f in range(F):
        FI[f, F_CUR] = G[f, G_MA]
        FI[f, F_LASTDEC] = -1
        FI[f, F_LASTCNP] = -1
        FI[f, F_MAXSEEN] = -1
        FI[f, F_NACK] = -1
    FF = np.empty((F, 3), np.float64)
    FF[:, 0] = line
    FF[:, 1] = line
    FF[:, 2] = 1.0
    PQ = np.zeros((ports * P, 8), np.int64)
    PQ[:, Q_HEAD] = -1
    PQ[:, Q_TAIL] = -1
    PO = np.zeros((ports, 9), np.int64)
    used = np.zeros(nodes, np.int64)
    host_wake = np.full(hosts, INF, np.int64)
    FLS = np.full((F, max(nodes - hosts, 1)), -1, np.int64)
    FLI = np.zeros((F, max(nodes - hosts, 1)), np.int64)
    msg_rcvd = np.zeros(msg_npk.shape[0], np.int64)
    msg_done = np.full(msg_npk.shape[0], -1, np.int64)
    S = np.zeros(7, np.int64)
    S[S_REMAIN] = F
    S[S_NFREE] = pool
    z = np.int64(0)
    heap = np.empty((max(1024, 4 * (F + ports + hosts)), 5), np.int64)
    pauses = [(z, z, z, z)]
    pauses.pop()
    drops = [(z, z, z, z)]
    drops.pop()
    rates = [(z, z, z)]
    rates.pop()
    retx = [(z, z, z)]
    retx.pop()
    qrows = [(z, z, z)]
    qrows.pop()
    mrows = [(z, z, z)]
    mrows.pop()
    for h in range(hosts):
        if hptr[h] < hptr[h + 1]:
            first = INF
            for i in range(hptr[h], hptr[h + 1]):
                first = min(first, msg_ready[G[hflows[i], G_MA]])
            host_wake[h] = first
            _push(heap, S, first, WAKE, h, 0)
    _push(heap, S, IP[I_SAMPLE], SAMPLE, 0, 0)
    st = (PK, FI, FF, G, PQ, PO, S, heap, free, msg_first, msg_bytes, msg_ready, line, IP, RP, host_port, port_mbps,
          port_delay, rates, retx)
    now = z
    status = OK
    while S[S_HSIZE] > 0 and S[S_REMAIN] > 0:
        if S[S_NFREE] < 2 or S[S_HSIZE] + 32 > heap.shape[0]:
            if S[S_NFREE] < 2:
                PK, free = _grow(PK, free, S)
            if S[S_HSIZE] + 32 > heap.shape[0]:
                heap = _grow_heap(heap)
            st = (PK, FI, FF, G, PQ, PO, S, heap, free, msg_first, msg_bytes, msg_ready, line, IP, RP, host_port,
                  port_mbps, port_delay, rates, retx)
        now, kind, a, b = _pop(heap, S)
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
                    pauses.append((a, b >> 1, PQ[row, Q_SINCE], now))
            n = port_src[a]
            if n < hosts:
                _try_send(n, now, st, hptr, hflows, host_wake)
            else:
                _try_port(a, now, st, used, shared_cap, port_src)
        elif kind == ARRIVE:
            n = port_dst[PK[a, K_PORT]]
            if n < hosts:
                _receive(a, now, st, msg_npk, msg_rcvd, msg_done)
            else:
                _switch_arrive(n, a, now, st, used, shared_cap, headroom, port_src, fhash, route_ptr, route_ports,
                               hosts, FLS, FLI, drops)
        elif kind == WAKE:
            if host_wake[a] == now:
                host_wake[a] = INF
            _try_send(a, now, st, hptr, hflows, host_wake)
        elif kind == CNP:
            _on_cnp(a, now, FI, FF, IP, RP, S, heap, rates)
        elif kind == ACK or kind == NACK:
            if b > FI[a, F_UNA]:
                FI[a, F_UNA] = b
                FI[a, F_PROG] = now
            if kind == NACK and FI[a, F_NXT] > b:
                FI[a, F_NXT] = b
                FI[a, F_CUR] = _msg_of(G, msg_first, a, b)
                _try_send(G[a, G_SRC], now, st, hptr, hflows, host_wake)
        elif kind == ALPHA:
            if b == FI[a, F_ALPHAEP] and not FI[a, F_FIN]:
                FF[a, 2] = (1.0 - RP[R_G]) * FF[a, 2]
                _push(heap, S, now + IP[I_ALPHAT], ALPHA, a, b)
        elif kind == INC:
            if b == FI[a, F_INCEP] and not FI[a, F_FIN]:
                FI[a, F_TC] += 1
                _increase(a, now, FI, FF, line, IP, RP, rates)
                if FF[a, 0] < line[a]:
                    _push(heap, S, now + IP[I_INCT], INC, a, b)
        elif kind == RTO:
            FI[a, F_RTO] = 0
            if FI[a, F_FIN] or FI[a, F_UNA] >= FI[a, F_NXT]:
                continue
            FI[a, F_RTO] = 1
            if now - FI[a, F_PROG] >= IP[I_RTO]:
                FI[a, F_NXT] = FI[a, F_UNA]
                FI[a, F_CUR] = _msg_of(G, msg_first, a, FI[a, F_UNA])
                FI[a, F_TOUT] += 1
                FI[a, F_PROG] = now
                _push(heap, S, now + IP[I_RTO], RTO, a, 0)
                _try_send(G[a, G_SRC], now, st, hptr, hflows, host_wake)
            else:
                _push(heap, S, FI[a, F_PROG] + IP[I_RTO], RTO, a, 0)
        else:
            for port in range(ports):
                if port_src[port] < hosts:
                    continue
                qb = z
                for q in range(P):
                    qb += PQ[port * P + q, Q_BYTES]
                if qb != PO[port, P_LASTQ]:
                    qrows.append((now, np.int64(port), qb))
                    PO[port, P_LASTQ] = qb
                if PO[port, P_PSINCE] > 0:
                    mrows.append((now, np.int64(port), PO[port, P_MSINCE] * 1000000 // PO[port, P_PSINCE]))
                    PO[port, P_MSINCE] = 0
                    PO[port, P_PSINCE] = 0
            if S[S_PAUSED] > 0 and now - S[S_LASTTX] >= IP[I_WD]:
                status = STALLED
                break
            _push(heap, S, now + IP[I_SAMPLE], SAMPLE, 0, 0)
    stuck = [(z, z, z)]
    stuck.pop()
    paused_end = [(z, z, z)]
    paused_end.pop()
    for port in range(ports):
        for q in range(P):
            row = port * P + q
            if PQ[row, Q_PAUSED]:
                if status == OK:
                    pauses.append((np.int64(port), np.int64(q), PQ[row, Q_SINCE], now))
                else:
                    paused_end.append((np.int64(port), np.int64(q), PQ[row, Q_SINCE]))
            if status != OK:
                k = PQ[row, Q_HEAD]
                while k >= 0:
                    stuck.append((np.int64(port), np.int64(q), PK[k, K_ING]))
                    k = PK[k, K_NEXT]
    return (status, now, msg_done, FI, PO, pauses, rates, qrows, mrows, drops, retx, stuck, paused_end,
            PK.shape[0], S[S_SEQ])


def _rows(items, width: int) -> np.ndarray:
    return np.array(list(items), np.int64).reshape(-1, width)


def simulate(topo: Topology, params: FabricParams, flows: Flows) -> FabricRun:
    """Run ``flows`` over ``topo`` with ``params``: packets, shared-buffer switches, PFC, ECN, DCQCN and
    loss recovery (see ``docs/fabric.md``). Equal, field by field, to ``simulate_reference``."""
    p = params.check()
    pre = prepare(topo, p, flows)
    ip = np.array([p.pfc, p.mtu_bytes, p.header_bytes, p.ecn, p.kmin_bytes, p.kmax_bytes, p.cnp_interval_ns, p.dcqcn,
                   p.rate_decrease_interval_ns, p.alpha_timer_ns, p.increase_timer_ns, p.byte_counter_bytes,
                   p.fast_recovery_steps, p.rto_ns, pre.routing, p.flowlet_gap_ns, p.pfc_watchdog_ns, p.sample_ns,
                   p.priorities, p.seed, p.resume_offset_bytes], np.int64)
    rp = np.array([p.alpha, p.pmax, p.dcqcn_g, p.rai_mbps, p.rhai_mbps, p.min_rate_mbps], np.float64)
    g = np.stack([flows.src, flows.dst, flows.prio, pre.flow_npk, pre.flow_ctrl_ns, flows.msg_ptr[:-1],
                  flows.msg_ptr[1:]], axis=1).astype(np.int64)
    pool = max(64, 4 * topo.ports)
    (status, now, done, fi, po, pauses, rates, qrows, mrows, drops, retx, stuck, paused_end, pool_end, events) = _loop(
        ip, rp, g, pre.flow_hash, pre.line_mbps, flows.msg_ready_ns.astype(np.int64), flows.msg_bytes.astype(np.int64),
        pre.msg_first, pre.msg_npk, pre.host_flows_ptr, pre.host_flows, topo.port_src, topo.port_dst, topo.port_mbps,
        topo.port_delay_ns, topo.host_port, topo.route_ptr, topo.route_ports, pre.headroom, pre.shared_cap,
        topo.hosts, topo.nodes, pool)
    run = FabricRun(int(status), int(now), done, fi[:, F_RETXB].copy(), fi[:, F_RETXP].copy(), fi[:, F_MARKED].copy(),
                    fi[:, F_CNPS].copy(), fi[:, F_REORD].copy(), fi[:, F_TOUT].copy(), po[:, P_TX].copy(),
                    po[:, P_PKTS].copy(), po[:, P_MARKS].copy(), po[:, P_DROPS].copy(), po[:, P_MAXQ].copy(),
                    _rows(pauses, 4), _rows(rates, 3), _rows(qrows, 3), _rows(mrows, 3), _rows(drops, 4),
                    _rows(retx, 3), _rows(stuck, 3), _rows(paused_end, 3))
    run.extra["packet_pool"] = int(pool_end)
    run.extra["events"] = int(events)
    return run
