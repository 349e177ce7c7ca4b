"""Peer comparison: tracekit's dynamic fabric against htsim's RoCE model on the same traffic.

    PYTHONPATH=. python benchmarks/peer_htsim.py --snapshot /path/to/csg-htsim.git [--build-dir DIR] [--senders 8]
    PYTHONPATH=. python benchmarks/peer_htsim.py --binary DIR/sim/datacenter/htsim_roce --a2a-hosts 32 --repeat 5

``--snapshot`` is a git directory of Broadcom/csg-htsim (e.g. the one the ``fetch`` tool brings, or a
clone): the script exports its ``sim/`` tree into a temporary folder, builds ``htsim_roce`` there
(``make``; never vendored or committed) and runs, with the same traffic matrix on both sides:

1. an incast: ``--senders`` hosts send ``--mbytes`` MB each to host 0, all on one 100 Gb/s leaf;
2. an all-to-all: every host to every other, ``--a2a-kbytes`` KB per pair (as the RDMA phase of an
   all-to-all), on the same leaf.

Both sides: PFC lossless queues, no ECN / congestion control (htsim's RoCE sender has none), start at
0, 4096 B packets. Printed: each side's last and median flow finish times, their ratio, and CPU
seconds and peak RSS. What is measured: htsim as a whole process (``getrusage`` of its child, peak RSS from GNU ``time``:
start, reading the topology and traffic files, the run, printing each flow's finish). tracekit twice:
(a) the ``simulate()`` call in this process (``time.process_time``: preparing the arrays, the event
loop, building the result; not the interpreter, imports or the JIT, which is warmed first), with this
process's peak RSS; (b) the same as a whole child process like htsim (interpreter start, imports,
loading the compiled loop from numba's cache, reading the flows, the run).
htsim's RoCE packets carry 4096 B of payload plus a 64 B header (RocePacket::ACKSIZE); tracekit uses the same.
"""

from __future__ import annotations

import argparse
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def build(snapshot: str, work: Path) -> Path:
    archive = subprocess.run(["git", f"--git-dir={snapshot}", "archive", "HEAD", "sim"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(work)], input=archive, check=True)
    sim = work / "sim"
    subprocess.run(["make", "-j2"], cwd=sim, check=True, capture_output=True)
    subprocess.run(["make", "-j2", "htsim_roce"], cwd=sim / "datacenter", check=True, capture_output=True)
    return sim / "datacenter" / "htsim_roce"


def topology(work: Path, hosts: int, gbps: int, latency_ns: int) -> Path:
    """One leaf holding every host (htsim needs two tiers; no flow crosses the second)."""
    path = work / "leaf.topo"
    path.write_text(f"Nodes {hosts}\nTiers 2\nPodsize {hosts}\n\nTier 0\nDownlink_speed_Gbps {gbps}\n"
                    f"Radix_Down {hosts}\nRadix_Up 1\nOversubscribed {hosts}\nDownlink_Latency_ns {latency_ns}\nSwitch_Latency_ns 0\n\n"
                    f"Tier 1\nDownlink_speed_Gbps {gbps}\nRadix_Down 1\nDownlink_Latency_ns {latency_ns}\n"
                    "Switch_Latency_ns 0\n")
    return path


def child(cmd: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``cmd``: its output, CPU seconds (``getrusage`` of children, before and after) and peak RSS in
    MB. The RSS comes from a second run under GNU time (``/usr/bin/time``): a child forked by this large
    Python process counts its peak RSS from this process's size, and GNU time's CPU seconds are too coarse."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    with tempfile.NamedTemporaryFile("r", suffix=".time") as rep:
        subprocess.run(["/usr/bin/time", "-o", rep.name, "-f", "%M", *cmd], cwd=cwd, capture_output=True)
        rss_kb = int(rep.read().split()[-1])
    return out, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), rss_kb / 1024


def run_htsim(binary: Path, work: Path, topo: Path, hosts: int, pairs: list[tuple[int, int, int]]):
    cm = work / "tm.cm"
    cm.write_text(f"Nodes {hosts}\nConnections {len(pairs)}\n"
                  + "".join(f"{s}->{d} id {i + 1} start 0 size {b}\n" for i, (s, d, b) in enumerate(pairs)))
    out, cpu, rss = child([str(binary), "-nodes", str(hosts), "-topo", str(topo), "-tm", str(cm), "-mtu", "4096",
                           "-end", "1000000", "-q", "200", "-strat", "ecmp_host", "-paths", "1"], work)
    done = list({m[0]: float(m[1]) for m in re.findall(r"Flow (\S+) \d+ finished at ([0-9.e+]+)", out.stdout)}.values())
    return np.array(done) * 1000.0, cpu, rss, out


def run_tracekit(hosts: int, gbps: int, latency_ns: int, pairs: list[tuple[int, int, int]]):
    from tracekit.fabric import FabricParams, Flows, simulate, single_switch

    topo = single_switch(hosts, gbps * 1000, latency_ns, 0)
    p = FabricParams(ecn=False, dcqcn=False, header_bytes=64, mtu_bytes=4096)  # htsim: 4096 B payload + 64 B
    flows = Flows.of([s for s, _, _ in pairs], [d for _, d, _ in pairs], [0] * len(pairs), [b for *_, b in pairs])
    simulate(topo, p, Flows.of([1], [0], [0], [1000]))  # compile / load the cache
    t = time.process_time()
    run = simulate(topo, p, flows)
    cpu = time.process_time() - t
    return run.msg_done_ns.astype(float), cpu, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


_PROCESS = """
import json, resource, sys, time
pairs = json.load(open(sys.argv[1]))
from tracekit.fabric import FabricParams, Flows, simulate, single_switch
topo = single_switch(int(sys.argv[2]), int(sys.argv[3]) * 1000, int(sys.argv[4]), 0)
run = simulate(topo, FabricParams(ecn=False, dcqcn=False, header_bytes=64, mtu_bytes=4096),
               Flows.of([p[0] for p in pairs], [p[1] for p in pairs], [0] * len(pairs), [p[2] for p in pairs]))
print(int(run.msg_done_ns.max()))
"""


def run_tracekit_process(work: Path, hosts: int, gbps: int, latency_ns: int, pairs: list[tuple[int, int, int]]):
    """The same simulation as a whole process, as htsim is measured: interpreter start, imports, loading
    the compiled simulator from numba's cache (warmed by :func:`run_tracekit` before), reading the flows,
    the run. CPU seconds and peak RSS of the child."""
    import json

    (work / "pairs.json").write_text(json.dumps(pairs))
    out, cpu, rss = child([sys.executable, "-c", _PROCESS, str(work / "pairs.json"), str(hosts), str(gbps),
                           str(latency_ns)], Path(__file__).resolve().parents[1])
    if out.returncode:
        raise RuntimeError(f"tracekit child failed: {out.stderr[-2000:]}")
    return cpu, rss


def compare(name: str, binary: Path, work: Path, hosts: int, pairs: list[tuple[int, int, int]],
            repeat: int = 1) -> None:
    """Both sides ``repeat`` times, alternating; CPU seconds are the medians (results are deterministic)."""
    gbps, lat = 100, 1000
    topo = topology(work, hosts, gbps, lat)
    h_cpus, t_cpus, p_cpus = [], [], []
    for _ in range(repeat):
        h_done, h_cpu, h_rss, out = run_htsim(binary, work, topo, hosts, pairs)
        t_done, t_cpu, t_rss = run_tracekit(hosts, gbps, lat, pairs)
        p_cpu, p_rss = run_tracekit_process(work, hosts, gbps, lat, pairs)
        h_cpus.append(h_cpu), t_cpus.append(t_cpu), p_cpus.append(p_cpu)
    h_cpu, t_cpu, p_cpu = (float(np.median(c)) for c in (h_cpus, t_cpus, p_cpus))
    if h_done.size != len(pairs):
        print(f"{name}: htsim finished {h_done.size} of {len(pairs)} flows; last lines:\n"
              + "\n".join(out.stdout.splitlines()[-5:] + out.stderr.splitlines()[-5:]))
        return
    print(f"{name}: {len(pairs)} flows; last finish htsim {h_done.max() / 1e3:.1f} us, tracekit "
          f"{t_done.max() / 1e3:.1f} us (ratio {t_done.max() / h_done.max():.3f}); median {np.median(h_done) / 1e3:.1f} "
          f"vs {np.median(t_done) / 1e3:.1f} us; CPU htsim {h_cpu:.3f} s, tracekit {t_cpu:.3f} s "
          f"(ratio {t_cpu / max(h_cpu, 1e-9):.2f}); peak RSS htsim {h_rss:.0f} MB, tracekit process {t_rss:.0f} MB; "
          f"tracekit as a whole process: {p_cpu:.3f} CPU-s (ratio {p_cpu / max(h_cpu, 1e-9):.2f}), peak RSS {p_rss:.0f} MB")


def ep_pairs(ep: int, tokens: int) -> list[tuple[int, int, int]]:
    """The RDMA traffic matrix of DeepEP's normal dispatch for a synthetic prefill: each token goes once to
    every other node it needs, to the GPU with its local index there (FP8 payload + scales)."""
    from tracekit.workload.routing import bytes_per_token
    from tracekit.workload.synth import SynthConfig, synth

    r = synth(SynthConfig(preset="prefill", ep=ep, tokens=tokens))
    m = r.meta
    node_of_expert = r.topk_expert // (m.num_experts // m.ep_size) // m.gpus_per_node
    src_node = r.rank // m.gpus_per_node
    size = bytes_per_token(m.hidden, m.dispatch_dtype)
    total = np.zeros((ep, ep), np.int64)
    for row in range(r.num_rows):
        for node in set(node_of_expert[row][node_of_expert[row] >= 0].tolist()) - {int(src_node[row])}:
            total[r.rank[row], node * m.gpus_per_node + r.rank[row] % m.gpus_per_node] += size
    return [(s, d, int(total[s, d])) for s in range(ep) for d in range(ep) if total[s, d]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--snapshot", help="git directory of Broadcom/csg-htsim (built into a temporary folder)")
    ap.add_argument("--binary", help="an htsim_roce built earlier by this script (skips the build)")
    ap.add_argument("--build-dir", help="build into this folder and keep it (reuse with --binary, printed)")
    ap.add_argument("--senders", type=int, default=8)
    ap.add_argument("--mbytes", type=float, default=4)
    ap.add_argument("--a2a-hosts", type=int, default=16)
    ap.add_argument("--a2a-kbytes", type=int, default=512)
    ap.add_argument("--ep", type=int, default=64, help="EP size of the prefill dispatch traffic matrix (0: skip)")
    ap.add_argument("--tokens", type=int, default=4096, help="tokens per rank of that prefill")
    ap.add_argument("--repeat", type=int, default=1, help="run each side this many times; CPU seconds are medians")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="htsim-") as tmp:
        work = Path(tmp)
        t = time.time()
        if args.binary:
            binary = Path(args.binary)
        elif args.snapshot:
            where = Path(args.build_dir) if args.build_dir else work
            where.mkdir(parents=True, exist_ok=True)
            binary = build(args.snapshot, where)
            print(f"built htsim_roce in {time.time() - t:.0f} s (wall): {binary}"
                  + ("" if args.build_dir else " (temporary; --build-dir keeps it for --binary)"), file=sys.stderr)
        else:
            ap.error("give --snapshot (or --binary)")
        size = int(args.mbytes * 1024 * 1024)
        compare("incast", binary, work, args.senders + 1, [(s, 0, size) for s in range(1, args.senders + 1)],
                args.repeat)
        n = args.a2a_hosts
        compare("all-to-all", binary, work, n, [(s, d, args.a2a_kbytes * 1024) for s in range(n) for d in range(n)
                                                if s != d], args.repeat)
        if args.ep:
            compare(f"EP{args.ep} prefill dispatch RDMA ({args.tokens} tok/rank, all posted at 0)", binary, work,
                    args.ep, ep_pairs(args.ep, args.tokens), args.repeat)


if __name__ == "__main__":
    main()
