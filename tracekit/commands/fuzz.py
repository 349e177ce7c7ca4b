"""`tracekit fuzz`: explore the orderings a protocol allows and report the first hazard, shrunk.

    tracekit fuzz --list [--format json] [PROTOCOL]
    tracekit fuzz --litmus [--format json]
    tracekit fuzz PROTOCOL [--variant V] [--examples N] [--seed S] [--size NAME=VALUE] [-o OUTDIR]

PROTOCOL is a built-in name or a Python file defining a protocol (``path/to/my_proto.py``, or
``path/to/my_proto.py:name`` when it defines several); the file is run to load it, so pass only
code you trust. Exit status: 0 no hazard, 1 hazard found (printed; with ``-o`` also written as
``events.parquet``, ``memops.parquet`` and ``counterexample.pftrace``), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from tracekit.errors import TracekitError
from tracekit.io.guard import output_dir

#: Most schedules one run tries (about 10^4-10^5 a second: minutes, not days).
MAX_EXAMPLES = 10**8

HELP = "fuzz a protocol's orderings for ordering and fencing hazards (exit 1 with a counterexample)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("protocol", nargs="?", metavar="PROTOCOL",
                   help="built-in protocol name, or a .py file defining one (path.py or path.py:name)")
    p.add_argument("--list", action="store_true", help="list protocols and their variants (correct or broken)")
    p.add_argument("--litmus", action="store_true",
                   help="enumerate every schedule of the litmus tests (MP, SB, LB, IRIW, coherence) and show "
                        "their outcome sets")
    p.add_argument("--check", metavar="MEMOPS.parquet",
                   help="check a recorded execution (a replay's memops.parquet from tracekit replay --record-memops, "
                        "or a counterexample's) and list its hazards; exit 1 if there are any")
    p.add_argument("--format", choices=("text", "json"), default="text",
                   help="output format of --list, --litmus and --check")
    p.add_argument("--variant", help="variant to fuzz (default: the protocol's first correct variant)")
    p.add_argument("--examples", type=int, help="schedules to try (default 10000; 500 with --engine hypothesis)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same result)")
    p.add_argument("--size", action="append", default=[], metavar="NAME=VALUE",
                   help="fix a size (e.g. slots=8); unfixed sizes are drawn from their ranges")
    p.add_argument("--engine", choices=("explore", "hypothesis"), default="explore",
                   help="explore: tracekit's fast random explorer and shrinker; hypothesis: Hypothesis "
                        "draws each choice and shrinks")
    p.add_argument("-o", "--output", metavar="OUTDIR", help="write the counterexample here")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the hazard, if any")


def _sizes(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name or not value.strip().lstrip("-").isdigit():
            raise TracekitError(f"--size {item!r} is not NAME=INTEGER", fix="write e.g. --size slots=8")
        out[name.strip()] = int(value)
    return out


def _list(args: argparse.Namespace) -> int:
    from tracekit.hazards.protocols import PROTOCOLS
    from tracekit.hazards.registry import resolve

    specs = [resolve(args.protocol)] if args.protocol else list(PROTOCOLS.values())
    rows = [{"protocol": s.name, "variant": v, "correct": v in s.correct, "description": d,
             "sizes": {k: list(r) for k, r in s.sizes.items()}}
            for s in specs for v, d in s.variants.items()]
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(f"{r['protocol']}/{r['variant']}") for r in rows)
    for r in rows:
        status = "correct" if r["correct"] else "BROKEN "
        print(f"{r['protocol'] + '/' + r['variant']:<{width}}  {status}  {r['description']}")
    return 0


def _litmus(args: argparse.Namespace) -> int:
    from tracekit.hazards.litmus import table

    rows = table()
    if args.format == "json":
        print(json.dumps(rows, indent=2, default=list))
        return 0
    width = max(len(r["test"]) for r in rows)
    for r in rows:
        verdict = "allowed  " if r["interesting_allowed"] else "forbidden"
        check = "" if r["matches_model"] else "  (MISMATCH with the model's expected set)"
        print(f"{r['test']:<{width}}  ({r['registers']}) = {r['interesting']} {verdict}  "
              f"{len(r['outcomes'])} outcomes over {r['schedules']} schedules; {r['textbook']}{check}")
    return 0 if all(r["matches_model"] for r in rows) else 1


def _check(args: argparse.Namespace) -> int:
    from tracekit.hazards import check_trace
    from tracekit.io.tables import read_table

    table, meta, _ = read_table(args.check, "memops")
    hazards = check_trace(table, complete=meta.get("complete", "yes") == "yes")
    hazards = sorted(hazards, key=lambda h: not h.manifest)  # what happened first, then what could
    if args.format == "json":
        print(json.dumps([{"name": h.name, "manifest": h.manifest, "message": h.message, "events": list(h.events)}
                          for h in hazards], indent=2))
    else:
        happened = sum(h.manifest for h in hazards)
        print(f"{args.check}: {table.num_rows} memory operations, {happened} hazard(s) that happened, "
              f"{len(hazards) - happened} possible under another ordering")
        for h in hazards[:20]:
            print(f"  {h}  [events {', '.join(map(str, h.events[:12]))}]")
        if len(hazards) > 20:
            print(f"  ... {len(hazards) - 20} more (--format json lists all)")
    return 1 if hazards else 0


def run(args: argparse.Namespace) -> int:
    if args.check:
        return _check(args)
    if args.list:
        return _list(args)
    if args.litmus:
        return _litmus(args)
    if not args.protocol:
        raise TracekitError("no protocol given", fix="name one (tracekit fuzz --list shows them) or pass a .py file")
    from tracekit.hazards.explore import explore, shrink
    from tracekit.hazards.registry import resolve
    from tracekit.hazards.report import counterexample, describe

    if args.examples is not None and args.examples < 1:
        raise TracekitError(f"--examples {args.examples} must be at least 1", fix="e.g. --examples 10000")
    if args.examples is not None and args.examples > MAX_EXAMPLES:
        raise TracekitError(f"--examples {args.examples} is more than {MAX_EXAMPLES} schedules, days of work",
                            fix=f"the explorer tries ~10^4-10^5 schedules a second: pass at most --examples "
                                f"{MAX_EXAMPLES}, and run several seeds (--seed) for longer searches")
    if args.output is not None:
        output_dir(args.output)
    try:
        spec = resolve(args.protocol)
    except SystemExit as exc:  # a protocol file that calls sys.exit() while it is loaded
        raise TracekitError(f"loading the protocol file stopped with SystemExit({exc.code!r})", where=args.protocol,
                            fix="a protocol file defines protocols; move the script's exit under "
                                "if __name__ == '__main__'") from None
    variant = args.variant or spec.default_variant
    spec.check_variant(variant)
    sizes = _sizes(args.size)
    spec.check_sizes(sizes)
    examples = args.examples if args.examples is not None else (500 if args.engine == "hypothesis" else 10_000)
    start = time.perf_counter()
    if args.engine == "hypothesis":
        from tracekit.testing import search

        found, ran = search(spec, variant, examples=examples, seed=args.seed, sizes=sizes)
    else:
        result = explore(spec, variant, examples=examples, seed=args.seed, sizes=sizes)
        ran = result.examples
        found = shrink(result.found, seed=args.seed) if result.found else None
    elapsed = time.perf_counter() - start
    status = "correct" if variant in spec.correct else "broken"
    if found is None:
        if not args.quiet:
            print(f"{spec.name}/{variant} ({status}): no hazard in {ran} schedules "
                  f"({elapsed:.1f} s, {ran / max(elapsed, 1e-9):.0f} schedules/s)")
        return 0
    cx = counterexample(found)
    print(describe(cx))
    if args.output:
        from tracekit.io.counterexample import has_perfetto_writer, write_counterexample

        timeline = has_perfetto_writer()
        paths = write_counterexample(cx, args.output, timeline=timeline)
        print("  wrote " + ", ".join(str(p) for p in paths))
        if not timeline:
            print("  (no counterexample.pftrace: this build has no Perfetto writer, tracekit.io.perfetto)")
    sys.stdout.flush()
    return 1
