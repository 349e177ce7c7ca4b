"""The typed replay summary: what ``summary.json`` holds, as dataclasses (schema ``summary.v1``).

:class:`Summary` mirrors the JSON keys one for one (they are stable); ``schemas/summary.v1.json`` is
the JSON Schema of the same document, with a description of every key, and a test holds the two
equal (:func:`schema_skeleton` is the schema these classes imply, descriptions left out).

Adding a figure: write it into the summary dict (in :func:`tracekit.replay.summarise` or a phase's
summary). A key these classes do not know lands in the ``extras`` dict of its level (every class
has one: the top level, ``workload``, ``scale``, a phase, its ``bottleneck``, ...) and is written back
unchanged, so a new figure needs no change
here. To give it a type, add a field with a default (``None`` = absent from the JSON) to the class
of its level and its description to ``schemas/summary.v1.json``; the schema test says what to add.

A :class:`Summary` also reads like the dict it replaces (``s["dispatch"]["latency_ns"]``,
``s.get("expert_gemm")``: a mapping view of :meth:`Summary.to_dict`), and ``s["key"] = value`` sets a
typed field (checked) or an extra; nested items of the view are copies.
"""

from __future__ import annotations

import json
import types
import typing
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from tracekit.errors import TracekitError

SCHEMA_ID = "summary.v1"
SCHEMA_VERSION = 1
_JSON_SCHEMA = "https://json-schema.org/draft/2020-12/schema"


class _Record:
    """``from_dict`` / ``to_dict`` for the summary's dataclasses (unknown keys kept in ``extras``)."""

    @classmethod
    def from_dict(cls, doc: Any, where: str = "summary") -> Any:
        """Build from a JSON object; raises :class:`TracekitError` naming the key path on bad input."""
        if not isinstance(doc, Mapping):
            raise TracekitError(f"expected a JSON object, got {_kind(doc)}", where=where,
                                fix="pass the summary.json a replay wrote")
        hints = typing.get_type_hints(cls)
        kw: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name == "extras":
                continue
            if f.name in doc:
                kw[f.name] = _convert(hints[f.name], doc[f.name], f"{where}.{f.name}")
            elif f.default is MISSING and f.default_factory is MISSING:
                raise TracekitError(f"missing key {f.name!r}", where=where,
                                    fix="pass a complete summary.json written by tracekit replay")
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        if "extras" in known:
            kw["extras"] = {k: v for k, v in doc.items() if k not in known or k == "extras"}
        return cls(**kw)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: optional fields that are ``None`` are left out; extras come back in place."""
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name == "extras" or (value is None and f.default is None):
                continue
            out[f.name] = _plain(value)
        out.update(_plain(getattr(self, "extras", {})))
        return out


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            type(None): "null"}.get(type(value), "a JSON object" if isinstance(value, Mapping) else type(value).__name__)


def _plain(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _optional(tp: Any) -> Any | None:
    """``X`` for ``X | None``, else None."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0]
    return None


def _convert(tp: Any, value: Any, where: str) -> Any:
    inner = _optional(tp)
    if inner is not None:
        return None if value is None else _convert(inner, value, where)
    if tp is Any:
        return _plain(value)
    if isinstance(tp, type) and issubclass(tp, _Record):
        return tp.from_dict(value, where)
    if typing.get_origin(tp) is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise _bad(where, value, "a JSON object")
        item = typing.get_args(tp)[1]
        return {k: _convert(item, v, f"{where}.{k}") for k, v in value.items()}
    ok = {int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str), bool: lambda v: isinstance(v, bool)}[tp]
    if not ok(value):
        raise _bad(where, value, {int: "an integer", float: "a number", str: "a string", bool: "true or false"}[tp])
    return float(value) if tp is float else value


def _bad(where: str, value: Any, expected: str) -> TracekitError:
    return TracekitError(f"expected {expected}, got {_kind(value)} {value!r:.40}", where=where,
                         fix="pass a summary.json written by tracekit replay")


# ----------------------------------------------------------------------------------------------
# The summary's parts


@dataclass
class RankFinish(_Record):
    """Per-rank finish times of a phase (ns after the phase start)."""

    p50: int
    p99: int
    max: int
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class Spread(_Record):
    """Median and maximum of a per-layer or per-rank figure."""

    p50: int
    max: int
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class CallSpread(_Record):
    """A phase's latency over its calls (every step and layer): count, mean, median and maximum."""

    calls: int
    mean: int
    p50: int
    max: int
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class Bandwidth(_Record):
    """DeepEP-style algorithm bandwidths of a phase."""

    nvlink: float
    rdma: float
    unit: str
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class Bottleneck(_Record):
    """The busiest resource on the critical path, and the busiest overall."""

    resource: str
    resource_kind: str
    utilisation: float
    busiest_resource: str
    busiest_kind: str
    busiest_utilisation: float
    most_common_kind: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class PhaseSummary(_Record):
    """One phase (dispatch or combine) over every step and layer."""

    latency_ns: int
    bytes: int
    stages: dict[str, int]
    rank_finish_ns: RankFinish
    bandwidth_gbps: Bandwidth
    bottleneck: Bottleneck
    stalls: dict[str, int]
    bound_ns: int
    bound_ratio: float
    tail_rank: int
    stall_counts: dict[str, int] | None = None
    critical_path_tasks: int | None = None
    tasks: int | None = None
    events_processed: int | None = None
    latency_ns_per_call: CallSpread | None = None
    data_ns: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class Workload(_Record):
    """What was replayed."""

    ep_size: int
    gpus_per_node: int
    num_experts: int
    hidden: int
    topk: int
    tokens: int
    steps_layers: int
    dispatch_dtype: str
    combine_dtype: str
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class Scale(_Record):
    """Sizes of the modelled state (queue pairs, pools, notify traffic)."""

    qps_per_nic: int
    max_qps: int
    pools: int
    routing_table_bytes: int
    notify_bytes_per_rank: int
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExpertGemm(_Record):
    """Per-rank expert GEMM completion (with ``--expert-gemm``)."""

    rank_ns: Spread
    tflops: float
    expert_ffn: int
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class Summary(_Record, Mapping):
    """A replay's summary (``summary.json``); see the module docstring.

    >>> s = Summary.from_json(Summary.example().to_json())
    >>> s.dispatch.latency_ns == s["dispatch"]["latency_ns"]
    True
    """

    conservation: str
    hardware: str
    workload: Workload
    config: dict[str, Any]
    hardware_overrides: dict[str, Any]
    dispatch: PhaseSummary
    combine: PhaseSummary
    total_ns: int
    scale: Scale
    schema: str = SCHEMA_ID
    schema_version: int = SCHEMA_VERSION
    expert_gemm: ExpertGemm | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.schema != SCHEMA_ID or self.schema_version != SCHEMA_VERSION:
            raise TracekitError(f"summary schema {self.schema!r} version {self.schema_version} is not supported",
                                fix=f"this tracekit reads {SCHEMA_ID} version {SCHEMA_VERSION}; replay again")

    # read-only mapping view, for code written against the summary.json dict
    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        """``s["fabric"] = {...}``: a typed field is converted and checked, another key goes to extras.
        (Nested items of the view, ``s["dispatch"]["x"] = 1``, are copies: set ``s.dispatch.extras``.)"""
        names = {f.name for f in fields(self)} - {"extras"}
        if key in names:
            setattr(self, key, _convert(typing.get_type_hints(type(self))[key], value, f"summary.{key}"))
        else:
            self.extras[key] = value

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())

    def phase(self, name: str) -> PhaseSummary:
        """``dispatch`` or ``combine``."""
        if name not in ("dispatch", "combine"):
            raise TracekitError(f"phase {name!r}: expected dispatch or combine", fix="e.g. summary.phase('dispatch')")
        return getattr(self, name)

    def to_json(self) -> str:
        """Deterministic text (sorted keys), as written to ``summary.json``."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True, default=str) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "summary.json") -> "Summary":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TracekitError(f"not JSON ({exc.msg} at line {exc.lineno})", where=where,
                                fix="write the replay output again") from None
        return cls.from_dict(doc, where)

    @classmethod
    def example(cls) -> "Summary":
        """A small, self-consistent summary (for documentation and tests of code that reads summaries)."""
        phase = {"latency_ns": 1000, "bytes": 4096, "stages": {"nvlink": 900, "pack": 100},
                 "rank_finish_ns": {"p50": 900, "p99": 990, "max": 1000},
                 "bandwidth_gbps": {"nvlink": 4.1, "rdma": 0.0, "unit": "GB/s"},
                 "bottleneck": {"resource": "node0/rank0/nvlink/tx", "resource_kind": "nvlink_tx", "utilisation": 0.9,
                                "busiest_resource": "node0/rank0/nvlink/tx", "busiest_kind": "nvlink_tx",
                                "busiest_utilisation": 0.9},
                 "stalls": {"credit": 0}, "bound_ns": 900, "bound_ratio": 1.11, "tail_rank": 0}
        return cls.from_dict({
            "conservation": "ok", "hardware": "h800-ib",
            "workload": {"ep_size": 8, "gpus_per_node": 8, "num_experts": 64, "hidden": 7168, "topk": 8,
                         "tokens": 1024, "steps_layers": 1, "dispatch_dtype": "fp8", "combine_dtype": "bf16"},
            "config": {"num_sms": 20}, "hardware_overrides": {}, "dispatch": phase, "combine": phase,
            "total_ns": 2000, "scale": {"qps_per_nic": 0, "max_qps": 4096, "pools": 8, "routing_table_bytes": 65536,
                                        "notify_bytes_per_rank": 576},
        })


def flat_figures(summary: Summary | Mapping[str, Any]) -> dict[str, Any]:
    """The summary's figures as one flat ``{"dispatch.latency_ns": ..., ...}`` dict of numbers and
    strings (nested keys joined by '.'; the ``config`` and ``hardware_overrides`` echoes and units
    left out). Used for sweep result columns."""
    doc = summary.to_dict() if isinstance(summary, Summary) else dict(summary)
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k in sorted(value):
                walk(f"{prefix}.{k}" if prefix else k, value[k])
        elif isinstance(value, (bool, int, float, str)) and not prefix.endswith(".unit"):
            out[prefix] = value

    for key in sorted(doc):
        if key not in ("config", "hardware_overrides", "schema"):
            walk(key, doc[key])
    return out


# ----------------------------------------------------------------------------------------------
# JSON Schema implied by the classes


def _schema_of(tp: Any, defs: dict[str, Any]) -> dict[str, Any]:
    inner = _optional(tp)
    if inner is not None:
        return _schema_of(inner, defs)
    if tp is Any:
        return {}
    if isinstance(tp, type) and issubclass(tp, _Record):
        if tp.__name__ not in defs:
            defs[tp.__name__] = {}
            defs[tp.__name__] = _object_schema(tp, defs)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    if typing.get_origin(tp) is dict:
        item = _schema_of(typing.get_args(tp)[1], defs)
        return {"type": "object", "additionalProperties": item or True}
    return {"type": {int: "integer", float: "number", str: "string", bool: "boolean"}[tp]}


def _object_schema(cls: type, defs: dict[str, Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    props, required = {}, []
    for f in fields(cls):  # type: ignore[arg-type]
        if f.name == "extras":
            continue
        props[f.name] = _schema_of(hints[f.name], defs)
        if f.default is MISSING and f.default_factory is MISSING:
            required.append(f.name)
    extensible = "extras" in {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return {"type": "object", "properties": props, "required": required, "additionalProperties": extensible}


def schema_skeleton() -> dict[str, Any]:
    """The JSON Schema these classes imply (no descriptions): ``schemas/summary.v1.json`` minus its
    ``description`` and ``title`` keys must equal this."""
    defs: dict[str, Any] = {}
    top = _object_schema(Summary, defs)
    top["properties"]["schema"] = {"const": SCHEMA_ID}
    top["properties"]["schema_version"] = {"const": SCHEMA_VERSION}
    top["required"] += ["schema", "schema_version"]  # always written
    return {"$schema": _JSON_SCHEMA, "$id": SCHEMA_ID, **top, "$defs": dict(sorted(defs.items()))}


