#!/usr/bin/env python3
"""Regenerate docs/validation.md, validation/bands.toml and docs/replay.md's validation tables from the rows in validation/rows/.

    PYTHONPATH=. python tools/make_validation.py [--ci-only] [--no-bands] [-o docs/validation.md]

Replays every modelled row in-process (tracekit.validation.evaluate; the same replays as the
command each row shows), writes the table of row, measured, predicted and error, the rank
correlation of measured vs predicted per sweep, mean / median / worst |error| per family against
issue 9's targets, and records each row's error band (error +- --slack percentage points) in
validation/bands.toml, which tests/test_validation.py compares the CI subset against. Nothing is
fitted to the rows. Regenerate after any model change; the bands move with the model.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracekit.io.validation_rows import BANDS, ROOT, bands_toml, capture_routing, capture_step_replay, load_rows  # noqa: E402,E501
from tracekit.validation import (band_violations, bands_from, evaluate, family_stats, read_targets,  # noqa: E402
                                 replay_command, sweep_correlations)


def _fmt(v, spec: str = ".1f", none: str = "-") -> str:
    return none if v is None else format(v, spec)


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1f}%"


def _rows_table(rows, result) -> list[str]:
    by_id = {r.id: r for r in rows}
    lines = ["| row | phase | metric | measured | predicted | error | CI | knobs / note |", "|---|---|---|---|---|---|---|---|"]
    for rec in result.iter_rows(named=True):
        r = by_id[rec["id"]]
        knobs = ", ".join(f"{k}={v}" for k, v in {**r.knobs, **r.overrides}.items())
        also = ", ".join(f"published {k} {v:g}" for k, v in r.also_measured.items())
        extra = "; ".join(x for x in (knobs, also, r.note) if x)
        pred = _fmt(rec["predicted"]) if r.modelled else "not modelled yet"
        lines.append(f"| {rec['id']} | {rec['phase']} | {rec['metric']} | {rec['measured']:g} {rec['unit']} | {pred} | "
                     f"{_fmt(rec['error_pct'], '+.1f')}{'%' if rec['error_pct'] is not None else ''} | "
                     f"{'yes' if rec['ci'] else ''} | {extra} |")
    return lines


def _family_section(rows, result, stats, targets) -> list[str]:
    lines = ["| family | rows | predicted | mean abs error | median abs error | worst abs error (row) | issue 9 target | met |",
             "|---|---|---|---|---|---|---|---|"]
    for s in stats.iter_rows(named=True):
        t = targets.get(s["family"], {})
        target = ", ".join(f"{k.replace('_abs_pct', '')} <= {v}%" for k, v in t.items()) or "-"
        met = "-"
        if t and s["predicted"]:
            met = "yes" if all(s[k] <= v for k, v in t.items()) else "no"
        lines.append(f"| {s['family']} | {s['rows']} | {s['predicted']} | {_pct(s['mean_abs_pct'])} | "
                     f"{_pct(s['median_abs_pct'])} | {_pct(s['worst_abs_pct'])} ({s['worst_id'] or '-'}) | {target} | {met} |")
    return lines


def _ep_table(result, prefix: str, unit: str) -> list[str]:
    """Per-EP rows of one DeepEP table (ids ``<prefix>-ep<N>-<phase>``) side by side, DeepEP against the replay."""
    rec = {r["id"]: r for r in result.iter_rows(named=True)}
    eps = sorted({int(i.split("-ep")[1].split("-")[0]) for i in rec if i.startswith(prefix + "-ep")})
    lines = ["| EP | dispatch: DeepEP | replay | error | combine: DeepEP | replay | error |",
             "|---|---|---|---|---|---|---|"]
    for ep in eps:
        cells = []
        for phase in ("dispatch", "combine"):
            r = rec.get(f"{prefix}-ep{ep}-{phase}")
            if r is None or r["predicted"] is None:
                cells += ["-", "-", "-"]
                continue
            cells += [f"{r['measured']:g} {unit}", f"{r['predicted']:.1f} {unit}", f"{r['error_pct']:+.1f}%"]
        lines.append(f"| {ep} | " + " | ".join(cells) + " |")
    return lines


REPLAY_MD = ROOT / "docs" / "replay.md"
BEGIN, END = "<!-- validation tables: written by tools/make_validation.py -->", "<!-- end of validation tables -->"


def _update_replay_md(result, family_lines: list[str]) -> None:
    """Rewrite docs/replay.md's generated block (between BEGIN and END) with this run's figures."""
    text = REPLAY_MD.read_text()
    if BEGIN not in text or END not in text:
        print(f"note: {REPLAY_MD} has no generated block ({BEGIN!r}); left alone")
        return
    block = [BEGIN, "", *family_lines, "",
             "DeepEP V1 low-latency kernels (H800, CX7 IB, 128 tokens, hidden 7168, top-8 of 256 experts, FP8 "
             "dispatch, BF16 combine; DeepEP's published latency against the replay):", "",
             *_ep_table(result, "v1ll", "us"), "",
             "DeepEP V1 normal kernels (H800, 4096 tokens, hidden 7168, top-8 of 256 experts, FP8 dispatch, BF16 "
             "combine; EP8 NVLink bandwidth, EP16-64 RDMA bandwidth by DeepEP's definitions):", "",
             *_ep_table(result, "v1n", "GB/s"), "", END]
    head, rest = text.split(BEGIN, 1)
    REPLAY_MD.write_text(head + "\n".join(block) + rest.split(END, 1)[1])
    print(f"wrote {REPLAY_MD} (validation tables)")


def _provenance(rows) -> list[str]:
    lines, seen = [], set()
    for r in rows:
        if r.family in seen:
            continue
        seen.add(r.family)
        lines += [f"### {r.family} ({r.status})", ""]
        lines += [f"- **{k}**: {v}" for k, v in r.provenance.items()]
        first = next(x for x in rows if x.family == r.family)
        if first.modelled:
            lines.append(f"- **replay (first row)**: `{replay_command(first)}`")
        lines.append("")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default=str(ROOT / "docs" / "validation.md"))
    ap.add_argument("--bands", default=str(BANDS), help="bands file to write (default validation/bands.toml)")
    ap.add_argument("--no-bands", action="store_true", help="leave the bands file alone; report rows outside it")
    ap.add_argument("--slack", type=float, default=2.0, help="band half-width in percentage points (default 2)")
    ap.add_argument("--ci-only", action="store_true", help="only the rows marked ci (quick look)")
    args = ap.parse_args()

    rows = [r for r in load_rows() if r.ci or not args.ci_only]
    t0 = time.process_time()

    def progress(key: str, cpu: float) -> None:
        print(f"  replayed in {cpu:5.1f} CPU s: {key[:110]}", flush=True)

    result = evaluate(rows, capture_routing, on_replay=progress, step_for=capture_step_replay)
    cpu = time.process_time() - t0
    targets = read_targets(tomllib.loads((ROOT / "validation" / "targets.toml").read_text()))
    stats = family_stats(result)
    sweeps = sweep_correlations(rows, result)
    today = datetime.date.today().isoformat()
    if not args.no_bands and not args.ci_only:
        header = (f"Written by tools/make_validation.py on {today}; do not edit by hand.\n"
                  "Each modelled row's error (percent, signed) when it was generated, and the band the CI test "
                  "(tests/test_validation.py) holds it to.")
        Path(args.bands).write_text(bands_toml(bands_from(result, args.slack), args.slack, header))
        print(f"wrote {args.bands}")
    else:
        from tracekit.io.validation_rows import read_bands

        for line in band_violations(result, read_bands(Path(args.bands))):
            print("outside band:", line)
    lines = [
        "# Validation: replay against real measurements",
        "",
        f"Generated by `PYTHONPATH=. python tools/make_validation.py` on {today} from the rows in "
        "`validation/rows/` (each with its provenance); do not edit by hand. "
        f"{len(rows)} rows, {result['predicted'].is_not_null().sum()} predicted, {cpu:.0f} CPU s of replays.",
        "",
        "Error = (predicted - measured) / measured. For bandwidths (GB/s) a positive error means the replay is "
        "faster than the hardware; for times (us) it means the replay is slower. Nothing in the model is fitted "
        "to these rows. The replay of each row is the command under its family's provenance (the generator "
        "runs the same replays through the Python API).",
        "",
        "## Per family",
        "",
        *_family_section(rows, result, stats, targets),
        "",
        "## Sweeps: rank correlation of measured and predicted",
        "",
        "Spearman's rho over the rows of each sweep group (scipy.stats, else polars ranks + Pearson); needs "
        "3 predicted rows. Issue 9's target: rho >= 0.9 for every sweep.",
        "",
        "| sweep | group | rows | predicted | Spearman rho |",
        "|---|---|---|---|---|",
        *[f"| {s['sweep']} | {s['group']} | {s['rows']} | {s['predicted']} | {_fmt(s['spearman'], '.2f', 'n/a')} |"
          for s in sweeps.iter_rows(named=True)],
        *[f"| {kind} | - | 0 | 0 | no measured sweep yet (issue 13's captures) |"
          for kind in ("chunk_size", "num_sms", "tokens", "dtype", "ep_size") if kind not in set(sweeps["sweep"])],
        "",
        *_pending(),
        "## Rows",
        "",
        *_rows_table(rows, result),
        "",
        "## Provenance",
        "",
        *_provenance(rows),
        "## Recorded bands",
        "",
        f"`validation/bands.toml` holds each predicted row's error at generation with +-{args.slack:g} percentage "
        "points; `tests/test_validation.py` replays the rows marked CI and fails when an error leaves its band "
        "(a model change moved it: look at the change, then regenerate with the command above).",
        "",
    ]
    Path(args.output).write_text("\n".join(lines))
    print(f"wrote {args.output} ({len(rows)} rows, {cpu:.1f} CPU s)")
    if not args.ci_only:
        _update_replay_md(result, _family_section(rows, result, stats, targets))


def _pending() -> list[str]:
    doc = tomllib.loads((ROOT / "validation" / "pending.toml").read_text())
    items = doc.get("pending", [])
    if not items:
        return []
    lines = ["## Slots for captures not made yet", "",
             "Same row format; filled when the runs exist (issue 13). Each slot names the script and the "
             "command that makes its rows.", "", "| family | sweeps | rows planned | command (machine) |",
             "|---|---|---|---|"]
    for p in items:
        lines.append(f"| {p['family']} | {', '.join(p['sweeps'])} | {p['rows']} | `{p['command']}` ({p['machine']}) |")
    return lines + [""]


if __name__ == "__main__":
    from tracekit.errors import TracekitError

    try:
        main()
    except TracekitError as exc:  # bad rows or bands: one line, no partial output
        print(f"tracekit: error: {exc}", file=sys.stderr)
        sys.exit(2)
