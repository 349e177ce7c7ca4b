"""Matching operations between two timelines: kernel-name normalisation, a user mapping, and
operation-by-operation pairing by stage, rank and message.

Two traces of the same workload rarely name their kernels identically: template arguments,
argument lists, architecture tags and build hashes change between versions. :func:`normalise_name`
strips those; a :class:`NameMap` (from the user's ``--map`` JSON) renames what normalisation cannot
(``"deep_ep::intranode::dispatch": "dispatch"``, or ``"re:^ncclDevKernel_.*": "nccl"``).

Operations are grouped by (phase, stage, operation name). Within a group, operations are paired by
(rank, step, layer, msg_id, channel) and their order of occurrence; what is left over on one side
is reported as added or removed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import polars as pl

from tracekit.analysis.match_keys import GROUP, PAIR, OpKeys, match_summary_keys
from tracekit.errors import TracekitError

_VOID = re.compile(r"^\s*void\s+")
_CLONE = re.compile(r"\s*\[clone[^\]]*\]")
_ARCH = re.compile(r"(?:(?<=[_:])|^)sm_?\d{2,3}[a-z]?(?:_|$)")
_VERSION = re.compile(r"(?:[_.\-]v\d+(?:\.\d+)*)+$")
_HASH = re.compile(r"[_.$](?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{10,}(?=$|[_.])")
_SPACE = re.compile(r"\s+")


def _strip_enclosed(s: str, open_: str, close: str) -> str:
    """Remove every balanced ``open_ ... close`` span (nested ones included)."""
    out, depth = [], 0
    for ch in s:
        if ch == open_:
            depth += 1
        elif ch == close and depth:
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def normalise_name(name: str) -> str:
    """A kernel or operation name without what changes between builds: a leading ``void``, argument
    lists, template arguments, ``[clone ...]`` suffixes, architecture tags (``sm90``), hex build
    hashes and trailing version suffixes (``_v2``).

    >>> normalise_name("void dpsk::ep::internode::dispatch<true, 8, 20>(int4*, float*)")
    'dpsk::ep::internode::dispatch'
    >>> normalise_name("ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)")
    'ncclDevKernel_SendRecv'
    >>> normalise_name("nvjet_sm90_tst_128x256_64x4_1x2_h_bz_coopA_NTN")
    'nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTN'
    >>> normalise_name("fused_moe_kernel_v2")
    'fused_moe_kernel'
    >>> normalise_name("triton_poi_fused_add_3a9f0c1d2e")
    'triton_poi_fused_add'
    """
    s = _VOID.sub("", name)
    s = _CLONE.sub("", s)
    s = _strip_enclosed(s, "(", ")")
    s = _strip_enclosed(s, "<", ">")
    t = _ARCH.sub("", s)
    s = t.rstrip("_") if t != s else s
    s = _HASH.sub("", s)
    s = _VERSION.sub("", s)
    s = _SPACE.sub(" ", s).strip()
    return s or name.strip()


@dataclass(frozen=True)
class NameMap:
    """User renames applied before normalisation: exact names, and ``re:`` regular expressions
    (full match) tried in the mapping's order. A name that no entry matches is normalised; a
    mapped name is taken as given."""

    exact: Mapping[str, str] = field(default_factory=dict)
    patterns: tuple[tuple[re.Pattern[str], str], ...] = ()

    @classmethod
    def from_dict(cls, mapping: object, *, where: str = "mapping") -> "NameMap":
        """Build from a JSON object of ``name -> canonical name`` (keys ``re:PATTERN`` are regexes);
        a ``{"rename": {...}}`` wrapper is accepted too."""
        if isinstance(mapping, dict) and set(mapping) == {"rename"}:
            mapping = mapping["rename"]
        if not isinstance(mapping, dict):
            raise TracekitError("the mapping must be a JSON object of name -> canonical name", where=where,
                                fix='e.g. {"deep_ep::intranode::dispatch": "dispatch", "re:^ncclDevKernel_.*": "nccl"}')
        exact: dict[str, str] = {}
        patterns: list[tuple[re.Pattern[str], str]] = []
        for k, v in mapping.items():
            if not isinstance(v, str) or not v:
                raise TracekitError(f"entry {k!r} maps to {v!r}, not a name", where=where,
                                    fix="map every name to a non-empty string")
            if k.startswith("re:"):
                try:
                    patterns.append((re.compile(k[3:]), v))
                except re.error as exc:
                    raise TracekitError(f"entry {k!r} is not a valid regular expression ({exc})", where=where,
                                        fix="fix the pattern after 're:'") from None
            else:
                exact[k] = v
        return cls(exact, tuple(patterns))

    def __call__(self, name: str) -> str:
        if name in self.exact:
            return self.exact[name]
        for pat, target in self.patterns:
            if pat.fullmatch(name):
                return target
        norm = normalise_name(name)
        if norm in self.exact:
            return self.exact[norm]
        for pat, target in self.patterns:
            if pat.fullmatch(norm):
                return target
        return norm


def operation_names(events: pl.DataFrame, names: NameMap | None = None) -> pl.DataFrame:
    """``events`` with an ``op`` column (categorical): the mapped, normalised name (each distinct
    name is normalised once)."""
    names = names or NameMap()
    uniq = events.select(pl.col("name").unique())["name"].to_list()
    keys = [n for n in uniq if n is not None]
    # one added column (a join would copy every column: memory on big traces); a null name stays null
    # categorical codes out (and in, where the names were read as codes): memory on big traces
    op = pl.col("name").replace_strict(keys, [names(n) for n in keys], default=None, return_dtype=pl.Categorical)
    return events.with_columns(op.alias("op"))


_GROUP = list(GROUP)
_PAIR = list(PAIR)
#: the event columns :func:`match_operations` reads
MATCH_COLUMNS = (*_GROUP, *_PAIR, "kind", "ts_ns", "dur_ns", "bytes")


def _occurrences(events: pl.DataFrame) -> pl.DataFrame:
    # the names as categorical codes (shared by both sides), so that the sort, the window and the
    # join hash integers rather than strings (memory on big traces); cast back after the join
    ev = events.select(pl.col(_GROUP).cast(pl.Categorical), *_PAIR, "ts_ns", "dur_ns", "bytes",
                       (pl.col("kind") != "annotation").alias("_op")).filter("_op").drop("_op")
    return ev.sort("ts_ns", *_GROUP, *_PAIR, "dur_ns").with_columns(
        pl.int_range(pl.len()).over(_GROUP + _PAIR).alias("k"))


def match_operations(before: pl.DataFrame, after: pl.DataFrame) -> pl.DataFrame:
    """Pair the operations of two event tables that carry an ``op`` column (see
    :func:`operation_names`): one row per operation of either side, with ``dur_before`` /
    ``dur_after`` (null where the other side has no partner)."""
    a = _occurrences(before).rename({"ts_ns": "ts_before", "dur_ns": "dur_before", "bytes": "bytes_before"})
    b = _occurrences(after).rename({"ts_ns": "ts_after", "dur_ns": "dur_after", "bytes": "bytes_after"})
    pairs = a.join(b, on=_GROUP + _PAIR + ["k"], how="full", coalesce=True, nulls_equal=True)
    return pairs.with_columns(pl.col(_GROUP).cast(pl.String))


def match_summary(pairs: pl.DataFrame) -> pl.DataFrame:
    """Per (phase, stage, op): operations on each side, how many paired, busy time on each side,
    the median change of a paired operation's duration, and a status: ``matched``, ``added``
    (after only) or ``removed`` (before only)."""
    g = pairs.group_by(_GROUP).agg(
        pl.col("dur_before").is_not_null().sum().alias("count_before"),
        pl.col("dur_after").is_not_null().sum().alias("count_after"),
        (pl.col("dur_before").is_not_null() & pl.col("dur_after").is_not_null()).sum().alias("paired"),
        pl.col("dur_before").sum().alias("busy_before"),
        pl.col("dur_after").sum().alias("busy_after"),
        (pl.col("dur_after") - pl.col("dur_before")).median().alias("median_op_delta"),
    )
    return summary_columns(g)


def summary_columns(g: pl.DataFrame) -> pl.DataFrame:
    """The per-group counts, busy times and median change with ``busy_delta`` and ``status``
    added, sorted by group (the end of :func:`match_summary`, shared by its numpy form)."""
    g = g.with_columns(
        (pl.col("busy_after") - pl.col("busy_before")).alias("busy_delta"),
        pl.when(pl.col("count_before") == 0).then(pl.lit("added"))
        .when(pl.col("count_after") == 0).then(pl.lit("removed"))
        .otherwise(pl.lit("matched")).alias("status"),
    )
    return g.with_columns(pl.col("count_before", "count_after", "paired").cast(pl.Int64)).sort(_GROUP)


def matching_table(before: OpKeys | pl.DataFrame, after: OpKeys | pl.DataFrame) -> pl.DataFrame:
    """:func:`match_summary` of the pairs of two sides' operations, each given as the events that
    :func:`match_operations` reads or as their :class:`~tracekit.analysis.match_keys.OpKeys`: by
    the keys where both have them and they fit, else by the reference join."""
    if isinstance(before, OpKeys) and isinstance(after, OpKeys):
        g = match_summary_keys(before, after)
        if g is not None:
            return summary_columns(g)
    b, a = (x.frame() if isinstance(x, OpKeys) else x for x in (before, after))
    if isinstance(before, OpKeys) != isinstance(after, OpKeys):  # one side rebuilt: make the key types agree
        common = [pl.col(_GROUP).cast(pl.String), pl.col(_PAIR).cast(pl.Int64)]
        b, a = b.with_columns(common), a.with_columns(common)
    return match_summary(match_operations(b, a))
