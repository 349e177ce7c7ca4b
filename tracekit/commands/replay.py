"""`tracekit replay`: re-execute dispatch and combine of a routing table on a modelled cluster."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Iterator

from tracekit.errors import TracekitError
from tracekit.hardware import list_profiles, load_profile
from tracekit.io.guard import output_dir
from tracekit.io.tables import read_table
from tracekit.model.compute import DTYPE_BYTES, WORKLOADS, ModelDesc
from tracekit.model.config import (CREDIT_RETURN, DOORBELLS, GRANULARITIES, MODES, SCHEDULES, PhaseConfig,
                                   ReplayConfig, deepep_defaults)
from tracekit.model.config import check_set_values
from tracekit.progress import Progress
from tracekit.workload.routing import DTYPES, Routing

HELP = "replay MoE dispatch and combine of a routing table on a modelled cluster"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("routing", metavar="ROUTING.parquet", nargs="?", help="routing table (routing.v1)")
    p.add_argument("--from-capture", metavar="OUTDIR",
                   help="replay a capture imported with tracekit import: its routing.parquet if present, else its "
                        "traffic.parquet (the captured rows between the captured rank pairs)")
    p.add_argument("--hidden", type=int, metavar="H", help="hidden size, when a captured traffic matrix lacks it")
    p.add_argument("--hardware", "--hw", metavar="PROFILE", default="h800-ib",
                   help=f"hardware profile name ({', '.join(list_profiles())}) or .toml path (default h800-ib)")
    p.add_argument("-o", "--output", metavar="OUTDIR", required=True,
                   help="directory for events.parquet, counters.parquet, summary.json, timeline.pftrace")
    p.add_argument("--mode", choices=MODES, help="kernel family: normal, low_latency, zero_buffer (DeepEP) or nccl "
                   "(an NCCL all-to-all); default normal, nccl for a captured traffic matrix")
    p.add_argument("--dispatch-dtype", choices=list(DTYPES), help="override the routing table's dispatch payload type")
    p.add_argument("--combine-dtype", choices=list(DTYPES), help="override the routing table's combine payload type")
    p.add_argument("--num-sms", type=int, default=20, metavar="N", help="SMs for communication, 2 per channel (default 20)")
    p.add_argument("--nccl-channels", type=int, default=32, metavar="N",
                   help="--mode nccl: channels (blocks) of the all-to-all kernel (default 32)")
    for phase in ("dispatch", "combine"):
        for name, what in (("nvl-chunk", "NVLink chunk"), ("nvl-buffer", "NVLink ring"),
                           ("rdma-chunk", "RDMA chunk"), ("rdma-buffer", "RDMA ring")):
            p.add_argument(f"--{phase}-{name}", type=int, metavar="TOKENS",
                           help=f"{phase} {what} size in tokens (default: DeepEP's table for the EP size)")
    p.add_argument("--granularity", choices=GRANULARITIES, default="chunk",
                   help="chunk: DeepEP chunks everywhere (default); token: one token per chunk; "
                        "packet: MTU packets on NICs and switch ports")
    p.add_argument("--doorbell", choices=DOORBELLS, default="gpu", help="who posts RDMA work requests (default gpu)")
    p.add_argument("--adaptive-routing", action="store_true", help="tail atomics wait for the write's ack (+1 RTT)")
    p.add_argument("--fabric", choices=("static", "dynamic"), default="static",
                   help="static: per-port buffers, credit-style flow control (default); dynamic: packet-level RoCE "
                        "fabric with PFC, ECN, DCQCN and loss recovery from the profile's [fabric] section "
                        "(docs/fabric.md; tune with --set fabric.kmin_bytes=... etc.)")
    p.add_argument("--credit-return", choices=CREDIT_RETURN, default="after_consume",
                   help="when receivers return ring credits (early = a broken protocol, for the hazard checker)")
    p.add_argument("--cached", action="store_true", help="cached layout: no notify or CPU sync")
    p.add_argument("--expert-gemm", action="store_true",
                   help="run each rank's expert GEMMs between dispatch and combine (combine starts per rank when "
                        "its experts are done)")
    p.add_argument("--expert-ffn", type=int, default=2048, metavar="F",
                   help="expert intermediate size for --expert-gemm (default 2048, DeepSeek-V3)")
    p.add_argument("--schedule", choices=SCHEDULES,
                   help="replay whole layers, compute included, under this schedule (docs/overlap.md); default: "
                        "dispatch and combine only")
    d = ModelDesc()
    for name in ("hidden", "heads", "q_lora", "kv_lora", "shared_experts", "context", "layers"):
        p.add_argument(f"--model-{name.replace('_', '-')}", type=int, metavar="N",
                       help=f"with --schedule: model {name.replace('_', ' ')} (default {getattr(d, name)}, DeepSeek-V3)")
    p.add_argument("--model-dtype", choices=list(DTYPE_BYTES), help="with --schedule: compute weights and activations "
                   f"(default {d.dtype})")
    p.add_argument("--model-workload", choices=WORKLOADS, help="with --schedule: decode (TPOT), prefill or train "
                   f"(step time) (default {d.workload})")
    p.add_argument("--record-memops", action="store_true",
                   help="also write memops.parquet: the NVLink rings' memory operations (intranode dispatch), "
                        "for tracekit fuzz --check")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override a hardware value, e.g. --set nic.line_rate_gbit_s=800 (repeatable)")
    p.add_argument("--seed", type=int, default=0, help="seed (recorded; the model is deterministic)")
    p.add_argument("--no-timeline", action="store_true", help="skip timeline.pftrace")
    p.add_argument("--quiet", action="store_true", help="print nothing on success")


def _overrides(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise TracekitError(f"--set {item!r}: expected SECTION.FIELD=VALUE", fix="e.g. --set nic.line_rate_gbit_s=800")
        out[key.strip()] = value.strip()
    return out


def config_from_args(args: argparse.Namespace, ep_size: int, default_mode: str = "normal") -> ReplayConfig:
    phases = {}
    for phase in ("dispatch", "combine"):
        d = deepep_defaults(ep_size, phase)
        vals = [getattr(args, f"{phase}_{n}") for n in ("nvl_chunk", "nvl_buffer", "rdma_chunk", "rdma_buffer")]
        phases[phase] = PhaseConfig(*[v if v is not None else dv for v, dv in zip(vals, (
            d.nvl_send_chunk, d.nvl_recv_buffer, d.rdma_send_chunk, d.rdma_recv_buffer))])
    return ReplayConfig(
        mode=args.mode or default_mode, num_sms=args.num_sms, dispatch=phases["dispatch"], combine=phases["combine"],
        granularity=args.granularity, doorbell=args.doorbell, adaptive_routing=args.adaptive_routing,
        credit_return=args.credit_return, cached=args.cached, dispatch_dtype=args.dispatch_dtype,
        combine_dtype=args.combine_dtype, seed=args.seed, hardware_overrides=_overrides(args.set),
        record_memops=args.record_memops, expert_gemm=args.expert_gemm, expert_ffn=args.expert_ffn,
        schedule=args.schedule, model=_model(args),
        nccl_channels=args.nccl_channels,
        fabric=args.fabric,
    )


def _model(args: argparse.Namespace) -> ModelDesc | None:
    """The model description from --model-* flags (None: the defaults, with --expert-ffn)."""
    given = {k[len("model_"):]: v for k, v in vars(args).items() if k.startswith("model_") and v is not None}
    return ModelDesc(expert_ffn=args.expert_ffn, **given) if given else None


def run(args: argparse.Namespace) -> int:
    from tracekit.io.replay_out import write_replay
    from tracekit.replay import replay
    from tracekit.workload.validate import check_routing

    output_dir(args.output)
    hw = load_profile(args.hardware)
    overrides = _overrides(args.set)
    hw_eff = hw.with_overrides(overrides)  # fail early on a bad --set
    check_set_values(overrides, hw_eff)
    if bool(args.routing) == bool(args.from_capture):
        raise TracekitError("give either ROUTING.parquet or --from-capture OUTDIR", where="replay",
                            fix="make a routing table with tracekit synth, or import a capture with tracekit import")
    if args.from_capture:
        routing, source = _capture_routing(args.from_capture, hw_eff.system.gpus_per_node, args.hidden)
        default_mode = "nccl" if source.endswith("traffic.parquet") else "normal"  # traffic comes from NCCL
    else:
        table, meta, _ = read_table(args.routing, "routing")
        routing = Routing.from_arrow(table, meta, where=args.routing)
        source = args.routing
        default_mode = "normal"
    check_routing(routing, where=source)
    cfg = config_from_args(args, routing.meta.ep_size, default_mode)
    total = 2 * len(routing.steps_layers())
    with Progress("replay", total=total, quiet=args.quiet) as progress, _naming_overrides(overrides):
        result = replay(routing, hw, cfg, on_phase=lambda *_: progress.advance())
    paths = write_replay(result, args.output, meta={"source": "replay", "ep_size": routing.meta.ep_size,
                                                    "gpus_per_node": routing.meta.gpus_per_node, "hardware": hw.name,
                                                    "config": json.dumps(cfg.to_dict(), sort_keys=True, default=str)},
                         timeline=not args.no_timeline and _has_perfetto())
    if not args.quiet:
        s = result.summary
        for phase in ("dispatch", "combine"):
            d = s[phase]
            bw = d["bandwidth_gbps"]
            print(f"{phase:8s} latency per call {d['latency_ns_per_call']['mean'] / 1e3:9.1f} us "
                  f"(x{d['latency_ns_per_call']['calls']})   rank finish p50/p99/max "
                  f"{d['rank_finish_ns']['p50'] / 1e3:.1f}/{d['rank_finish_ns']['p99'] / 1e3:.1f}/"
                  f"{d['rank_finish_ns']['max'] / 1e3:.1f} us   NVL {bw['nvlink']:.1f} GB/s  RDMA {bw['rdma']:.1f} GB/s"
                  f"   bottleneck {d['bottleneck']['resource_kind']} ({d['bottleneck']['resource']})")
        if "schedule" in s:
            _print_schedule(s["schedule"])
        print(f"conservation: {s['conservation']}")
        for path in paths:
            print(f"wrote {path}")
    return 0


def _print_schedule(sc: dict) -> None:
    forward = "TPOT" if "tpot_ns" in sc else "step time"
    print(f"schedule {sc['name']}: layer {sc['layer_ns']['steady'] / 1e3:.1f} us, {forward} "
          f"{sc.get('tpot_ns', sc.get('step_time_ns', 0)) / 1e6:.2f} ms ({sc['model']['layers']} layers), exposed "
          f"communication {sc['exposed_comm_ns']['max_rank'] / 1e3:.1f} us (worst rank), communication SM-time "
          f"{100 * sc['sm_time']['comm_share']:.1f}%")
    print("  critical path: " + ", ".join(f"{k} {v / 1e3:.1f} us" for k, v in sc["critical_path_ns"].items()))
    if "fused_savings_ns" in sc:
        print("  fused saves: " + ", ".join(f"{k} {v / 1e3:.1f} us" for k, v in sc["fused_savings_ns"].items()))


def _capture_routing(outdir: str, gpus_per_node: int, hidden: int | None) -> tuple[Routing, str]:
    """The routing to replay for an imported capture directory."""
    from pathlib import Path

    import polars as pl

    from tracekit.io.validate import check_table
    from tracekit.workload.from_traffic import routing_from_traffic

    d = Path(outdir)
    if (d / "routing.parquet").is_file():
        table, meta, _ = read_table(d / "routing.parquet", "routing")
        return Routing.from_arrow(table, meta, where=str(d / "routing.parquet")), str(d / "routing.parquet")
    if (d / "traffic.parquet").is_file():
        table, meta, _ = read_table(d / "traffic.parquet", "traffic")
        where = str(d / "traffic.parquet")
        check_table(table, meta, "traffic", where)  # what tracekit validate checks of the same file
        try:
            return routing_from_traffic(pl.from_arrow(table), meta, gpus_per_node=gpus_per_node, hidden=hidden,
                                        where=where), where
        except TracekitError as exc:
            raise (exc if where in str(exc) else exc.located(where)) from None
    raise TracekitError("no routing.parquet or traffic.parquet", where=outdir,
                        fix="import the capture first: tracekit import kineto TRACES -o OUTDIR "
                            "(or tracekit import routing DUMP ... -o OUTDIR)")


def _has_perfetto() -> bool:
    try:
        import tracekit.io.perfetto  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _naming_overrides(overrides: dict[str, str]) -> Iterator[None]:
    """A refusal caused by a ``--set`` value names the ``--set`` (e.g. gpu.sms below --num-sms)."""
    try:
        yield
    except TracekitError as exc:
        if type(exc) is not TracekitError or not overrides or any(k in str(exc) for k in overrides):
            raise
        given = " ".join(f"--set {k}={v}" for k, v in overrides.items())
        raise exc.located(f"with {given}") from None
