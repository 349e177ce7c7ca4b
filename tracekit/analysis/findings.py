"""The headline of a diff: short sentences saying what moved, where and why, most important first."""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:
    from tracekit.analysis.diff import TraceDiff

#: after/before payload ratios that identify a change of payload type: FP8 (e4m3) and INT8 carry one
#: byte per element plus one 4-byte float scale per 128 elements, BF16 two bytes per element
DTYPE_RATIOS = {
    "BF16 -> FP8/INT8 (1 byte per element + a 4-byte scale per 128 elements, vs 2 bytes): (1 + 4/128)/2":
        (1 + 4 / 128) / 2,
    "FP8/INT8 -> BF16: 2/(1 + 4/128)": 2 / (1 + 4 / 128),
}
#: stages that move bytes over NVLink or the network
LINK_STAGES = ("nvlink", "nic_send", "nic_recv", "fabric", "rdma_post", "pcie", "forward")
#: smallest relative change worth a sentence
MIN_REL = 0.02


def fmt_ns(ns: float | None) -> str:
    """Human time from nanoseconds: ns, us, ms or s."""
    if ns is None:
        return "-"
    a = abs(ns)
    if a < 1e3:
        return f"{ns:.0f} ns"
    if a < 1e6:
        return f"{ns / 1e3:.1f} us"
    if a < 1e9:
        return f"{ns / 1e6:.2f} ms"
    return f"{ns / 1e9:.3f} s"


def fmt_bytes(b: float | None) -> str:
    if b is None:
        return "-"
    a = abs(b)
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if a >= scale:
            return f"{b / scale:.2f} {unit}"
    return f"{b:.0f} B"


def fmt_rel(rel: float | None) -> str:
    if rel is None:
        return "new"
    return f"{rel * 100:+.1f}%"


def _noise_note(row: dict) -> str:
    if row.get("ci_low") is None:
        return ""
    lo, hi = row["ci_low"], row["ci_high"]
    tag = "within noise" if row["change"] == "noise" else "beyond noise"
    return f" [{tag}: 95% CI of the change {fmt_ns(lo)} .. {fmt_ns(hi)}]"


def findings(d: "TraceDiff") -> list[str]:
    out: list[str] = []
    ph = d.phases
    any_change = False
    for t in d.tables().values():
        for c in t.columns:
            if (c == "delta" or c.endswith("_delta")) and t[c].dtype.is_numeric() and bool((t[c].fill_null(0) != 0).any()):
                any_change = True
        if "present" in t.columns and bool((t["present"] != "both").any()):
            any_change = True
    any_change = any_change or bool((d.matching["status"] != "matched").any())
    if not any_change and not d.warnings:
        return ["no change: both traces measure the same in every table"]
    for phase in ph["phase"].unique(maintain_order=True).to_list():
        rows = {r["metric"]: r for r in ph.filter(pl.col("phase") == phase).iter_rows(named=True)}
        lat = rows.get("latency per instance")
        if lat and lat["present"] == "both" and lat["delta"] == 0:
            out.append(f"{phase} latency unchanged ({fmt_ns(lat['before'])})")
        elif lat and lat["present"] == "both":
            n = rows.get("instances", {}).get("after")
            per = " per (step, layer)" if (n or 0) > 1 else ""
            out.append(f"{phase} latency{per} {fmt_ns(lat['before'])} -> {fmt_ns(lat['after'])} "
                       f"({fmt_rel(lat['rel'])}){_noise_note(lat)}")
        pay = rows.get("payload bytes")
        if pay and pay["before"] and pay["after"] and pay["delta"] != 0:
            out.append(_bytes_sentence(d, phase, pay))
        link = d.stages.filter((pl.col("phase") == phase) & pl.col("stage").is_in(LINK_STAGES)
                               & (pl.col("present") == "both") & (pl.col("busy_ns_delta") != 0))
        if link.height:
            parts = [f"{r['stage']} {fmt_rel(r['busy_ns_rel'])}" for r in
                     link.sort(pl.col("busy_ns_delta").abs(), descending=True).iter_rows(named=True)]
            verb = "drop" if (link["busy_ns_delta"] < 0).all() else "rise" if (link["busy_ns_delta"] > 0).all() else "change"
            out.append(f"{phase} NVLink/NIC stage times {verb} (summed over operations): {', '.join(parts)}")
        other = d.stages.filter((pl.col("phase") == phase) & ~pl.col("stage").is_in(LINK_STAGES)
                                & pl.col("change").is_in(["up", "down"])
                                & ((pl.col("busy_ns_rel").abs() >= MIN_REL) | pl.col("busy_ns_rel").is_null()))
        if other.height:
            parts = [f"{r['stage']} {fmt_rel(r['busy_ns_rel'])} ({fmt_ns(r['busy_ns_delta'])})" for r in
                     other.sort(pl.col("busy_ns_delta").abs(), descending=True).head(4).iter_rows(named=True)]
            out.append(f"{phase} other stages: {', '.join(parts)}")
        out += _tail_sentences(d, phase)
        out += _critical_sentence(d, phase)
        out += _bottleneck_sentence(d, phase)
    out += _exposure_sentences(d)
    out += _schedule_sentence(d)
    st = d.stalls.filter(pl.col("ns_delta") != 0)
    for r in st.iter_rows(named=True):
        out.append(f"{r['phase']} {r['cause']} stalls {fmt_ns(r['ns_before'])} -> {fmt_ns(r['ns_after'])} "
                   f"({r['count_before']} -> {r['count_after']} stalled operations)")
    added = d.matching.filter(pl.col("status") == "added")
    removed = d.matching.filter(pl.col("status") == "removed")
    if added.height or removed.height:
        out.append(f"operations: {added.height} kind(s) only after, {removed.height} only before "
                   f"(see matching: {', '.join((added['op'].to_list() + removed['op'].to_list())[:6])})")
    cis = [t for t in (d.phases, d.stages, d.ranks, d.exposure_totals) if "change" in t.columns]
    noisy = sum(int((t["change"] == "noise").sum()) for t in cis)
    real = sum(int(t["change"].is_in(["up", "down"]).sum()) for t in cis)
    if noisy:
        out.append(f"{noisy} change(s) lie within run-to-run noise (bootstrap 95% CI contains 0); {real} beyond it")
    return out


def _schedule_sentence(d: "TraceDiff") -> list[str]:
    """The TPOT (or step time) change of two scheduled replays and its largest causes per layer."""
    if d.schedule is None:
        return []
    rows = {r["cause"]: r for r in d.schedule.iter_rows(named=True)}
    top = rows.get("tpot") or rows.get("step_time")
    parts = [r for r in d.schedule.iter_rows(named=True)
             if r["cause"].startswith(("critical:", "exposed_comm")) and r["delta"] != 0]
    parts.sort(key=lambda r: -abs(r["delta"]))
    because = ", ".join(f"{r['cause'].removeprefix('critical:')} {'+' if r['delta'] > 0 else '-'}"
                        f"{fmt_ns(abs(r['delta']))}" for r in parts[:5])
    share = rows["comm_sm_share"]
    return [f"{'TPOT' if 'tpot' in rows else 'step time'} ({top['schedule']}) {fmt_ns(top['before'])} -> "
            f"{fmt_ns(top['after'])} ({fmt_rel(top['delta'] / top['before'] if top['before'] else None)}); "
            f"per layer: {because or 'no cause moved'}; communication SM-time share "
            f"{100 * share['before']:.1f}% -> {100 * share['after']:.1f}%"]


def _bytes_sentence(d: "TraceDiff", phase: str, pay: dict) -> str:
    ratio = pay["after"] / pay["before"]
    s = f"{phase} payload bytes {fmt_bytes(pay['before'])} -> {fmt_bytes(pay['after'])} (x{ratio:.4f})"
    for what, r in DTYPE_RATIOS.items():
        if abs(ratio - r) < 5e-4:
            s += f" = {what}"
            break
    db, da = d.before.dtypes.get(phase), d.after.dtypes.get(phase)
    if db and da and db != da:
        s += f"; payload type {db} -> {da}"
    return s


def _tail_sentences(d: "TraceDiff", phase: str) -> list[str]:
    causes = d.tail_causes.get(phase, {})
    b, a = causes.get("before"), causes.get("after")
    out = []
    t = {r["stat"]: r for r in d.tails.filter(pl.col("phase") == phase).iter_rows(named=True)}
    if b and a:
        mx = t.get("max", {})
        out.append(f"{phase} tail: rank {b.rank} before, rank {a.rank} after; max rank finish "
                   f"{fmt_ns(mx.get('before'))} -> {fmt_ns(mx.get('after'))}, max/p50 "
                   f"{t.get('max/p50', {}).get('before') or 0:.2f} -> {t.get('max/p50', {}).get('after') or 0:.2f}")
        out.append(f"  before: {b.sentence()}")
        out.append(f"  after: {a.sentence()}")
    moved = d.ranks.filter((pl.col("phase") == phase) & pl.col("moved"))
    if moved.height:
        top = moved.sort(pl.col("finish_ns_delta").abs(), descending=True).head(5)
        parts = [f"rank {r['rank']} {'+' if r['finish_ns_delta'] > 0 else ''}{fmt_ns(r['finish_ns_delta'])}"
                 for r in top.iter_rows(named=True)]
        out.append(f"{phase}: {moved.height} rank(s) moved (finish changed by >= 2% of the median): {', '.join(parts)}")
    return out


def _critical_sentence(d: "TraceDiff", phase: str) -> list[str]:
    c = d.critical.filter(pl.col("phase") == phase)
    if c.height == 0:
        return []
    tb = c.sort("ns_before", descending=True).row(0, named=True)
    ta = c.sort("ns_after", descending=True).row(0, named=True)
    if tb["ns_before"] == 0 and ta["ns_after"] == 0:
        return []
    return [f"{phase} critical path ({d.critical_source}): {tb['stage']} {tb['share_before']:.0%} before, "
            f"{ta['stage']} {ta['share_after']:.0%} after"]


def _bottleneck_sentence(d: "TraceDiff", phase: str) -> list[str]:
    b = d.bottlenecks.filter((pl.col("phase") == phase) & (pl.col("which") == "on critical path"))
    sides = {r["side"]: r for r in b.iter_rows(named=True)}
    if "before" in sides and "after" in sides:
        x, y = sides["before"], sides["after"]
        same = "unchanged: " if x["kind"] == y["kind"] else ""
        return [f"{phase} bottleneck on the critical path {same}{x['kind']} ({x['resource']}, {x['utilisation']:.0%} busy)"
                f" -> {y['kind']} ({y['resource']}, {y['utilisation']:.0%} busy)"]
    return []


def _exposure_sentences(d: "TraceDiff") -> list[str]:
    t = {r["metric"]: r for r in d.exposure_totals.iter_rows(named=True)}
    if not t:
        return []
    comp = t["compute_ns"]
    if not comp["before"] and not comp["after"]:
        return []
    ex, cb, kb = t["exposed_ns"], t["comm_busy_ns"], t["compute_busy_ns"]
    return [
        f"exposed communication (not overlapped by compute; mean per rank) {fmt_ns(ex['before'])} -> "
        f"{fmt_ns(ex['after'])} ({fmt_rel(ex['rel'])}){_noise_note(ex)}",
        f"summed kernel durations per rank: communication {fmt_ns(cb['before'])} -> {fmt_ns(cb['after'])} "
        f"({fmt_rel(cb['rel'])}), compute {fmt_ns(kb['before'])} -> {fmt_ns(kb['after'])} ({fmt_rel(kb['rel'])}); "
        f"overlap {fmt_ns(t['overlap_ns']['before'])} -> {fmt_ns(t['overlap_ns']['after'])}",
    ]
