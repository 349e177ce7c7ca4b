"""Peer comparison: tracekit's dynamic fabric against the ns-3 RDMA model of HPCC (PFC, ECN, DCQCN).

    PYTHONPATH=. python benchmarks/peer_ns3.py --snapshot /path/to/High-Precision-Congestion-Control.git \\
        --ns3-dir ~/.cache/tracekit-ns3            # builds once into --ns3-dir, then runs
    PYTHONPATH=. python benchmarks/peer_ns3.py --ns3-dir ~/.cache/tracekit-ns3   # reuses that build
    PYTHONPATH=. python benchmarks/peer_ns3.py --ns3-bin DIR/build/scratch/third  # a binary built earlier
    PYTHONPATH=. python benchmarks/peer_ns3.py --ns3-dir DIR --only-late --runs 100  # the late joiner alone

The peer is the ns-3 simulator published with HPCC (alibaba-edu/High-Precision-Congestion-Control,
``simulation/``: ns-3 with ``qbb-net-device``, ``rdma-hw`` (DCQCN "mlx" version, ``CC_MODE 1``) and the
Broadcom-style shared-buffer ``switch-mmu``), the model SimAI's ns-3 backend descends from. It is never
vendored: ``--snapshot`` is a git directory of that repository; its ``simulation/`` tree is exported
into ``--ns3-dir`` (a cache outside the repository) and built there with python 2.7's waf (its waf
does not run on python 3), ``nice -n 19 waf build -j2``, optimized, only the modules ``scratch/third``
needs. Its configure needs ``CXXFLAGS=-std=c++11`` with today's g++ (the code predates C++17).

Traffic (the same matrix on both sides; every flow posted at once):

1. ``incast``: ``--senders`` hosts send ``--mbytes`` MB each to host 0, PFC on, ECN and DCQCN off;
2. ``all-to-all``: ``--a2a-hosts`` hosts, ``--a2a-kbytes`` KB to every other host, PFC on, no ECN/DCQCN;
3. ``incast+dcqcn``: the incast with PFC, ECN (WRED) and DCQCN on: marks, CNPs and rate cuts, and a
   late joiner: a second 20 MB flow into the same host 500 us after the first (DCQCN's convergence);
4. a two-tier incast: two leaves of four hosts under one spine (one 100 Gb/s uplink per leaf, so no
   ECMP choice), three senders on each leaf into host 4, PFC alone and with ECN + DCQCN: pauses cross
   the spine, and per-ingress PFC gives the remote senders their parking-lot share;
5. with ``--ep``: the EP prefill dispatch RDMA matrix of ``peer_htsim.py``, PFC alone and with ECN + DCQCN.

Cases 1-3 and 5 on one switch with one 100 Gb/s, 1 us link per host (ns-3 has no switch pipeline latency: tracekit's
``switch_ns`` is 0). Printed per case: each side's last and median flow completion, the per-flow ratio
tracekit / ns-3 (median and worst), CPU seconds (``os.wait4`` of the ns-3 child; ``time.process_time``
around tracekit's simulate after a warm-up run that loads the numba cache) and peak RSS (the ns-3
child's own VmHWM, sampled while it runs: its ``ru_maxrss`` would include this Python process's at the
fork; the tracekit Python process's, printed with what it held before the run, ~220 MB).

How each parameter maps (ns-3 config key -> tracekit ``FabricParams``), see also ``docs/fabric.md``:

- ``PACKET_PAYLOAD_SIZE`` 1000 -> ``mtu_bytes`` 1000 (payload per packet);
- ns-3 wire bytes per packet = payload + 48 (its PPP header stands for 14 B of Ethernet, IPv4 20, UDP 8,
  SeqTs 6; no INT header in DCQCN mode) -> ``header_bytes`` 48;
- ``BUFFER_SIZE`` 32 (MiB) -> ``buffer_bytes`` 33554432; PFC alpha: ``pfc_a_shift`` 3 (free buffer >> 3)
  -> ``alpha`` 0.125; headroom per port 3 x rate x one-way link delay (third.cc) -> ``headroom_bytes``
  = 37500 at 100 Gb/s, 1 us; resume offset 3 KB (switch-mmu) -> ``resume_offset_bytes`` 3072. Not
  mapped: ns-3 reserves 4 KB per ingress queue before the shared pool (tracekit has no reserve);
- ``KMIN_MAP``/``KMAX_MAP`` in KB of 1000 B (switch-mmu multiplies by 1000), ``PMAX_MAP`` -> ``kmin_bytes``,
  ``kmax_bytes``, ``pmax``; both mark at dequeue on the queue left behind;
- ``ENABLE_QCN`` -> ``ecn`` and ``dcqcn``; ``CC_MODE`` 1 (DCQCN);
- ns-3 piggybacks a CNP flag on the ACK of every marked packet (``L2_ACK_INTERVAL`` 1; no notification-
  point spacing) -> ``cnp_interval_ns`` 0 (a CNP per marked packet); per QP it raises alpha once per
  ``ALPHA_RESUME_INTERVAL`` window that saw a CNP and decays it in windows that saw none, windows running
  from the first CNP -> ``alpha_timer_ns`` = that window (tracekit does the same);
- ``RATE_DECREASE_INTERVAL`` -> ``rate_decrease_interval_ns``: both leave the rate alone on the first CNP
  (ns-3 ``RateOnFirstCnp`` 1.0) and cut once at the end of every period, counted from the first CNP, that
  saw a CNP;
- ``RP_TIMER`` -> ``increase_timer_ns``; ns-3 has no byte counter -> ``byte_counter_bytes`` 10^15 (off);
- ``FAST_RECOVERY_TIMES`` F -> ``fast_recovery_steps`` F + 1 (ns-3 counts stages from 0 before its first
  increase, tracekit counts timer events from 1);
- ``RATE_AI`` -> ``rai_mbps``. ns-3's "mlx" DCQCN adds ``RATE_HAI`` on every timer event after the first
  additive one; tracekit's hyper increase needs the byte counter too, so without it tracekit stays
  additive: here ns-3 runs with ``RATE_HAI`` = ``RATE_AI`` so that both do the same thing;
- ``CLAMP_TARGET_RATE`` 1 (ns-3 then sets the target to the current rate at every cut, as tracekit
  does; HPCC's run.py uses 0, which skips that on consecutive cuts);
- ``MIN_RATE`` -> ``min_rate_mbps``; ``EWMA_GAIN`` -> ``dcqcn_g``; ``HAS_WIN`` 0 (DCQCN has no window;
  neither has tracekit); ``ACK_HIGH_PRIO`` 1 (tracekit's control frames are not queued).

Values follow HPCC's run.py for ``--cc dcqcn`` at 100 Gb/s (alpha window 1 us, decrease interval 4 us,
timer 300 us, g 1/256, AI 20 Mb/s (5 Mb/s x 100/25), Kmin 400 KB, Kmax 1600 KB, Pmax 0.2, 32 MB
buffer) except the two changes above. Completion: ns-3 writes a flow's FCT when the sender gets the
ACK of its last byte; tracekit's message ends when the last packet reaches the receiver, so the
tracekit FCT compared here adds the flow's control-frame delay back to the sender (``flow_ctrl_ns``).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GBPS = 100
LINK_NS = 1000
PAYLOAD = 1000
HEADER = 48


@dataclass(frozen=True)
class Settings:
    """One case's fabric settings, written as ns-3 config keys and as tracekit FabricParams."""

    ecn: bool
    alpha_window_us: int = 1
    decrease_us: int = 4
    timer_us: int = 300
    g: float = 1 / 256
    fast_recovery: int = 1
    ai_mbps: float = 5 * GBPS / 25
    min_rate_mbps: float = 100
    kmin_kb: int = 400 * GBPS // 100
    kmax_kb: int = 1600 * GBPS // 100
    pmax: float = 0.2
    buffer_mb: int = 32

    def ns3_config(self, work: Path) -> str:
        bps = GBPS * 10**9
        keys = {
            "ENABLE_QCN": int(self.ecn), "USE_DYNAMIC_PFC_THRESHOLD": 1, "PACKET_PAYLOAD_SIZE": PAYLOAD,
            "TOPOLOGY_FILE": work / "topo.txt", "FLOW_FILE": work / "flow.txt", "TRACE_FILE": work / "trace.txt",
            "TRACE_OUTPUT_FILE": work / "mix.tr", "FCT_OUTPUT_FILE": work / "fct.txt", "PFC_OUTPUT_FILE": work / "pfc.txt",
            "SIMULATOR_STOP_TIME": 4.0, "CC_MODE": 1, "ALPHA_RESUME_INTERVAL": self.alpha_window_us,
            "RATE_DECREASE_INTERVAL": self.decrease_us, "CLAMP_TARGET_RATE": 1, "RP_TIMER": self.timer_us,
            "EWMA_GAIN": self.g, "FAST_RECOVERY_TIMES": self.fast_recovery, "RATE_AI": f"{self.ai_mbps}Mb/s",
            "RATE_HAI": f"{self.ai_mbps}Mb/s", "MIN_RATE": f"{self.min_rate_mbps}Mb/s", "DCTCP_RATE_AI": "1000Mb/s",
            "ERROR_RATE_PER_LINK": 0.0, "L2_CHUNK_SIZE": 4000, "L2_ACK_INTERVAL": 1, "L2_BACK_TO_ZERO": 0,
            "HAS_WIN": 0, "GLOBAL_T": 1, "VAR_WIN": 0, "FAST_REACT": 0, "U_TARGET": 0.95, "MI_THRESH": 0,
            "INT_MULTI": 1, "MULTI_RATE": 0, "SAMPLE_FEEDBACK": 0, "PINT_LOG_BASE": 1.05, "PINT_PROB": 1.0,
            "RATE_BOUND": 1, "ACK_HIGH_PRIO": 1, "LINK_DOWN": "0 0 0", "ENABLE_TRACE": 0,
            "KMAX_MAP": f"1 {bps} {self.kmax_kb}", "KMIN_MAP": f"1 {bps} {self.kmin_kb}",
            "PMAX_MAP": f"1 {bps} {self.pmax}", "BUFFER_SIZE": self.buffer_mb, "QLEN_MON_FILE": work / "qlen.txt",
            "QLEN_MON_START": 10**12, "QLEN_MON_END": 10**12 + 1,
        }
        return "".join(f"{k} {v}\n" for k, v in keys.items())

    def tracekit_params(self):
        from tracekit.fabric import FabricParams

        return FabricParams(
            pfc=True, mtu_bytes=PAYLOAD, header_bytes=HEADER, buffer_bytes=self.buffer_mb * 1024 * 1024, alpha=0.125,
            headroom_bytes=3 * GBPS * LINK_NS // 8, resume_offset_bytes=3 * 1024, ecn=self.ecn, dcqcn=self.ecn,
            kmin_bytes=self.kmin_kb * 1000, kmax_bytes=self.kmax_kb * 1000, pmax=self.pmax,
            cnp_interval_ns=0, alpha_timer_ns=self.alpha_window_us * 1000,
            rate_decrease_interval_ns=self.decrease_us * 1000, increase_timer_ns=self.timer_us * 1000,
            dcqcn_g=self.g, byte_counter_bytes=10**15, fast_recovery_steps=self.fast_recovery + 1,
            rai_mbps=self.ai_mbps, rhai_mbps=self.ai_mbps, min_rate_mbps=self.min_rate_mbps)


def build(snapshot: str, ns3_dir: Path, python2: str) -> Path:
    """Export HPCC's ``simulation/`` into ``ns3_dir`` and build ``scratch/third`` (once)."""
    sim = ns3_dir / "simulation"
    binary = sim / "build" / "scratch" / "third"
    if binary.exists():
        return binary
    ns3_dir.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", f"--git-dir={snapshot}", "archive", "HEAD", "simulation"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(ns3_dir)], input=archive, check=True)
    env = dict(os.environ, CXXFLAGS="-std=c++11 -w -fpermissive")
    waf = ["nice", "-n", "19", python2, "./waf"]
    subprocess.run(waf + ["configure", "--build-profile=optimized", "--disable-examples", "--disable-tests",
                          "--disable-python", "--enable-modules=applications,point-to-point,internet"],
                   cwd=sim, env=env, check=True, capture_output=True)
    subprocess.run(waf + ["build", "-j2"], cwd=sim, env=env, check=True, capture_output=True)
    return binary


def _python2() -> str:
    """A python 2.7 interpreter: ``python2.7`` if it runs, else one that pyenv installed."""
    try:
        subprocess.run(["python2.7", "--version"], check=True, capture_output=True)
        return "python2.7"
    except (OSError, subprocess.CalledProcessError):
        found = sorted(Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")).glob("versions/2.7*/bin/python2.7"))
        return str(found[-1]) if found else "python2.7"


def _with_start(pairs: list[tuple]) -> list[tuple[int, int, int, int]]:
    """Flows as (source, destination, bytes, start ns); a missing start is 0."""
    return [(int(r[0]), int(r[1]), int(r[2]), int(r[3]) if len(r) > 3 else 0) for r in pairs]


def ns3_topology(hosts: int, leaves: int) -> str:
    """ns-3's topology file: one switch (``leaves`` 1), or ``leaves`` leaves under one spine, every link
    ``GBPS`` with ``LINK_NS`` delay (hosts 0..hosts-1, then the leaves, then the spine)."""
    per = hosts // leaves
    links = [(h, hosts + h // per) for h in range(hosts)]
    switches = list(range(hosts, hosts + leaves))
    if leaves > 1:
        switches.append(hosts + leaves)
        links += [(hosts + k, hosts + leaves) for k in range(leaves)]
    return (f"{hosts + len(switches)} {len(switches)} {len(links)}\n{' '.join(map(str, switches))}\n"
            + "".join(f"{a} {b} {GBPS}Gbps {LINK_NS / 1e6}ms 0\n" for a, b in links))


def tracekit_topology(hosts: int, leaves: int):
    """The same fabric as :func:`ns3_topology` (one spine: each leaf's uplink runs at ``GBPS``)."""
    from tracekit.fabric import leaf_spine, single_switch

    if leaves == 1:
        return single_switch(hosts, GBPS * 1000, LINK_NS, 0)
    per = hosts // leaves
    return leaf_spine(hosts, per, 1, GBPS * 1000, LINK_NS, 0, oversubscription=per)


def run_ns3(binary: Path, work: Path, hosts: int, pairs: list[tuple[int, int, int]], s: Settings, leaves: int = 1,
            rng_run: int = 1):
    """Write topology, flows and config; run ``third``; return FCTs (ns) keyed by (src, dst), CPU s, peak MB,
    exit code and the pause frames its PFC trace logged."""
    (work / "topo.txt").write_text(ns3_topology(hosts, leaves))
    rows = sorted(_with_start(pairs), key=lambda r: r[3])  # ns-3 reads flows in start order
    (work / "flow.txt").write_text(f"{len(rows)}\n" + "".join(f"{a} {b} 3 100 {n} {2.0 + t / 1e9:.9f}\n"
                                                              for a, b, n, t in rows))
    (work / "trace.txt").write_text("0\n")
    (work / "config.txt").write_text(s.ns3_config(work))
    env = dict(os.environ, LD_LIBRARY_PATH=str(binary.parents[1]), NS_GLOBAL_VALUE=f"RngRun={rng_run}")
    with open(work / "ns3.log", "w") as log:
        proc = subprocess.Popen([str(binary), str(work / "config.txt")], cwd=work, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
        peak_kb = 0
        while True:  # the child's own peak RSS (VmHWM); ru_maxrss would include this Python process's at fork
            peak_kb = max(peak_kb, _status_kb(proc.pid, "VmHWM"))
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(0.002)
    proc.returncode = os.waitstatus_to_exitcode(status)
    fct = {}
    for line in (work / "fct.txt").read_text().splitlines():
        sip, dip, _sport, _dport, _size, _start, t, _alone = line.split()
        fct[((int(sip, 16) >> 8) & 0xFFFF, (int(dip, 16) >> 8) & 0xFFFF)] = int(t)
    pauses = sum(1 for line in (work / "pfc.txt").read_text().splitlines() if line.split()[-1] == "1")
    return fct, usage.ru_utime + usage.ru_stime, peak_kb / 1024, proc.returncode, pauses


def _status_kb(pid: int | str, key: str) -> int:
    """A ``/proc/<pid>/status`` memory field in kB (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_tracekit(hosts: int, pairs: list[tuple[int, int, int]], s: Settings, leaves: int = 1, seed: int = 0):
    from tracekit.fabric import Flows, simulate
    from tracekit.fabric.common import prepare

    topo = tracekit_topology(hosts, leaves)
    p = s.tracekit_params().with_(seed=seed)
    rows = _with_start(pairs)
    flows = Flows.of([r[0] for r in rows], [r[1] for r in rows], [r[3] for r in rows], [r[2] for r in rows])
    simulate(topo, p, Flows.of([1], [0], [0], [1000]))  # compile / load the numba cache
    before = _status_kb("self", "VmRSS") / 1024
    t = time.process_time()
    run = simulate(topo, p, flows)
    cpu = time.process_time() - t
    # from the post to the last ACK's return, as ns-3 counts
    fct = run.msg_done_ns - flows.msg_ready_ns + prepare(topo, p, flows).flow_ctrl_ns
    extra = {"marks": int(run.port_marks.sum()), "cnps": int(run.flow_cnps.sum()), "pauses": int(run.pauses.shape[0]),
             "rss_before_MB": round(before)}
    return ({(r[0], r[1]): int(f) for r, f in zip(rows, fct)}, cpu,
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, extra)


def compare(name: str, binary: Path, hosts: int, pairs: list[tuple[int, int, int]], s: Settings, leaves: int = 1) -> None:
    with tempfile.TemporaryDirectory(prefix="ns3-") as tmp:
        n_fct, n_cpu, n_rss, rc, n_pauses = run_ns3(binary, Path(tmp), hosts, pairs, s, leaves)
        if len(n_fct) != len(pairs):
            tail = (Path(tmp) / "ns3.log").read_text().splitlines()[-5:]
            print(f"{name}: ns-3 (exit {rc}) finished {len(n_fct)} of {len(pairs)} flows; last lines:\n" + "\n".join(tail))
            return
    t_fct, t_cpu, t_rss, extra = run_tracekit(hosts, pairs, s, leaves)
    keys = sorted(n_fct)
    a = np.array([n_fct[k] for k in keys], float)
    b = np.array([t_fct[k] for k in keys], float)
    r = b / a
    print(f"{name}: {len(pairs)} flows; last FCT ns-3 {a.max() / 1e3:.1f} us, tracekit {b.max() / 1e3:.1f} us "
          f"(ratio {b.max() / a.max():.3f}); median {np.median(a) / 1e3:.1f} vs {np.median(b) / 1e3:.1f} us; per-flow "
          f"ratio median {np.median(r):.3f}, range {r.min():.3f}..{r.max():.3f}; CPU ns-3 {n_cpu:.3f} s, tracekit "
          f"{t_cpu:.3f} s (ratio {t_cpu / max(n_cpu, 1e-9):.2f}); peak RSS ns-3 {n_rss:.0f} MB, tracekit process "
          f"{t_rss:.0f} MB; ns-3 pauses {n_pauses}, tracekit {extra}")


def compare_runs(name: str, binary: Path, hosts: int, pairs: list[tuple], s: Settings, runs: int) -> None:
    """Where a handful of random ECN marks decide who gets cut (few marks, long flows), one realisation
    says little: ``runs`` realisations per side (ns-3 ``RngRun`` 1..runs, tracekit ``seed`` 0..runs-1),
    each flow's FCT as median and range over them."""
    n_all, t_all, n_cpu, t_cpu = [], [], 0.0, 0.0
    for k in range(runs):
        with tempfile.TemporaryDirectory(prefix="ns3-") as tmp:
            n_fct, cpu, _, rc, _ = run_ns3(binary, Path(tmp), hosts, pairs, s, rng_run=k + 1)
        if len(n_fct) != len(pairs):
            print(f"{name}: ns-3 (exit {rc}) finished {len(n_fct)} of {len(pairs)} flows in run {k + 1}")
            return
        t_fct, tcpu, _, _ = run_tracekit(hosts, pairs, s, seed=k)
        keys = sorted(n_fct)
        n_all.append([n_fct[x] for x in keys])
        t_all.append([t_fct[x] for x in keys])
        n_cpu, t_cpu = n_cpu + cpu, t_cpu + tcpu
    a, b = np.array(n_all, float) / 1e3, np.array(t_all, float) / 1e3
    flows = "; ".join(f"{x[0]}->{x[1]} ns-3 {np.median(a[:, i]):.0f} ({a[:, i].min():.0f}-{a[:, i].max():.0f}) us, "
                      f"tracekit {np.median(b[:, i]):.0f} ({b[:, i].min():.0f}-{b[:, i].max():.0f}) us"
                      for i, x in enumerate(keys))
    last_a, last_b = a.max(axis=1), b.max(axis=1)
    ratio = last_b.mean() / last_a.mean()  # its standard error from both sides' spread (delta method)
    cv2 = [(x.std(ddof=1) / x.mean()) ** 2 for x in (last_a, last_b)]
    se = ratio * np.sqrt(sum(cv2) / runs)
    print(f"{name}, {runs} runs each: {flows}; last FCT median ns-3 {np.median(last_a):.0f}, tracekit "
          f"{np.median(last_b):.0f} us (ratio {np.median(last_b) / np.median(last_a):.3f}), mean {last_a.mean():.0f}, "
          f"{last_b.mean():.0f} us (ratio {ratio:.3f} +- {se:.3f}); CPU ns-3 {n_cpu:.2f} s, "
          f"tracekit {t_cpu:.2f} s (ratio {t_cpu / max(n_cpu, 1e-9):.2f})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--snapshot", help="git directory of alibaba-edu/High-Precision-Congestion-Control (to build)")
    ap.add_argument("--ns3-dir", type=Path, help="cache folder for the ns-3 build (outside the repository)")
    ap.add_argument("--ns3-bin", type=Path, help="scratch/third built earlier (skips the build)")
    ap.add_argument("--python2", default=_python2(), help="python 2 for ns-3's waf (default: python2.7 on PATH, "
                    "else a pyenv 2.7 install)")
    ap.add_argument("--senders", type=int, default=8)
    ap.add_argument("--mbytes", type=float, default=2)
    ap.add_argument("--a2a-hosts", type=int, default=8)
    ap.add_argument("--a2a-kbytes", type=int, default=256)
    ap.add_argument("--runs", type=int, default=10, help="realisations per side of the late-joiner case")
    ap.add_argument("--only-late", action="store_true", help="run only the late-joiner case")
    ap.add_argument("--ep", type=int, default=0, help="also the EP prefill dispatch RDMA matrix of peer_htsim.py (0: skip)")
    ap.add_argument("--tokens", type=int, default=512, help="tokens per rank of that prefill")
    args = ap.parse_args()
    if args.ns3_bin:
        binary = args.ns3_bin
    elif args.ns3_dir and (args.snapshot or (args.ns3_dir / "simulation/build/scratch/third").exists()):
        t = time.time()
        binary = build(args.snapshot or "", args.ns3_dir, args.python2)
        print(f"ns-3 third: {binary} ({time.time() - t:.0f} s wall to build or find)", file=sys.stderr)
    else:
        ap.error("give --ns3-bin, or --ns3-dir with --snapshot to build there")
    late = [(1, 0, 20_000_000, 0), (2, 0, 20_000_000, 500_000)]  # a second long flow joins 500 us later
    if args.only_late:
        compare_runs("late joiner 2 x 20 MB -> 1 (PFC + ECN + DCQCN)", binary, 3, late, Settings(ecn=True), args.runs)
        return
    size = int(args.mbytes * 1e6)
    incast = [(h, 0, size) for h in range(1, args.senders + 1)]
    compare("incast (PFC)", binary, args.senders + 1, incast, Settings(ecn=False))
    n = args.a2a_hosts
    compare("all-to-all (PFC)", binary, n, [(a, b, args.a2a_kbytes * 1000) for a in range(n) for b in range(n) if a != b],
            Settings(ecn=False))
    compare("incast (PFC + ECN + DCQCN)", binary, args.senders + 1, incast, Settings(ecn=True))
    # DCQCN convergence: the late joiner
    compare_runs("late joiner 2 x 20 MB -> 1 (PFC + ECN + DCQCN)", binary, 3, late, Settings(ecn=True), args.runs)
    # two leaves of four under one spine (4:1 oversubscribed, no ECMP choice): three senders on each leaf
    # into host 4; the spine's ingress at leaf 1 is one of four PFC-paused inputs (the parking lot)
    two_tier = [(h, 4, size) for h in (0, 1, 2, 5, 6, 7)]
    for ecn in (False, True):
        compare(f"two-tier incast 3 + 3 -> 1 ({'PFC + ECN + DCQCN' if ecn else 'PFC'})", binary, 8, two_tier,
                Settings(ecn=ecn), leaves=2)
    if args.ep:
        from peer_htsim import ep_pairs  # the same matrix as the htsim comparison

        pairs = ep_pairs(args.ep, args.tokens)
        for ecn in (False, True):
            compare(f"EP{args.ep} prefill dispatch RDMA ({args.tokens} tok/rank, all posted at 0, "
                    f"{'PFC + ECN + DCQCN' if ecn else 'PFC'})", binary, args.ep, pairs, Settings(ecn=ecn))


if __name__ == "__main__":
    main()
