"""Sweep grids: workloads x hardware profiles x knobs, expanded into replay points.

A grid is a list of blocks; each block is the product of its workloads, profiles and knob value
lists (a grid file holds one block; presets such as ``deepep-tune`` build several). A knob is a
:class:`ReplayConfig` field (``num_sms``, ``mode``, ``dispatch_dtype``, ``granularity``, ...; any
field the class has, so new fields are knobs as soon as they exist), a chunk or ring size of one
phase (``dispatch.nvl_send_chunk``, ``combine.rdma_recv_buffer``, ...; the others keep DeepEP's
default for the workload's EP size) or a hardware value as ``--set`` takes it
(``nic.line_rate_gbit_s``). Every point's configuration is checked before anything runs.

Each point has a key: a hash of everything that determines its replay (routing table contents or
synth recipe, hardware values, resolved config, tracekit version). A finished point is stored
under its key, so a rerun replays only the points whose key has no result yet.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tracekit import __version__
from tracekit.errors import TracekitError
from tracekit.hardware import Profile, load_profile
from tracekit.model.config import PhaseConfig, ReplayConfig, deepep_defaults
from tracekit.workload.synth import SynthConfig

PHASES = ("dispatch", "combine")
#: ReplayConfig fields that are not knobs: set through ``dispatch.*`` / ``combine.*`` and hardware keys
_NOT_KNOBS = ("dispatch", "combine", "hardware_overrides")
_TOP_KEYS = ("metric", "goal", "profiles", "group_by", "plot", "workloads", "knobs")


@dataclass(frozen=True)
class Workload:
    """A routing table to replay: a synth recipe, or a routing file (identified by its contents)."""

    name: str
    ep_size: int
    gpus_per_node: int
    synth: tuple[tuple[str, Any], ...] | None = None
    path: str | None = None
    sha256: str | None = None

    def identity(self) -> dict[str, Any]:
        return {"synth": dict(self.synth)} if self.synth is not None else {"routing_sha256": self.sha256}


@dataclass(frozen=True)
class Point:
    """One replay of a sweep."""

    index: int
    block: str
    workload: Workload
    profile_name: str
    profile: Profile
    config: ReplayConfig
    knobs: tuple[tuple[str, Any], ...]  # the swept values, as result columns

    @property
    def key(self) -> str:
        doc = {"workload": self.workload.identity(), "hardware": self.profile.to_dict(),
               "config": self.config.to_dict(), "tracekit": __version__}
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:20]

    def columns(self) -> dict[str, Any]:
        return {"point": self.index, "key": self.key, "block": self.block, "workload": self.workload.name,
                "profile": self.profile_name, **dict(self.knobs)}

    def label(self) -> str:
        knobs = " ".join(f"{k}={v}" for k, v in self.knobs)
        return f"point {self.index} ({self.workload.name} on {self.profile_name}{', ' + knobs if knobs else ''})"


@dataclass(frozen=True)
class Block:
    """One product of workloads x profiles x knob lists, ranked by ``metric``."""

    label: str
    workloads: tuple[Workload, ...]
    profiles: tuple[tuple[str, Profile], ...]
    swept: tuple[tuple[str, tuple[Any, ...]], ...]  # knob -> values (result columns)
    fixed: tuple[tuple[str, Any], ...] = ()  # knob -> value for every point
    metric: str = "dispatch.latency_ns"
    goal: str = "min"


@dataclass(frozen=True)
class Grid:
    blocks: tuple[Block, ...]
    source: str = "grid"
    group_by: tuple[str, ...] = ("block", "workload", "profile")
    plot: tuple[str, ...] = ()
    points: tuple[Point, ...] = field(default=(), compare=False)

    def knobs(self) -> list[str]:
        """Every swept knob, in first-seen order."""
        out: list[str] = []
        for b in self.blocks:
            out += [k for k, _ in b.swept if k not in out]
        return out


# ----------------------------------------------------------------------------------------------
# knob names and values


def knob_kind(name: str) -> str:
    """``config``, ``phase`` or ``hardware``; raises for an unknown knob."""
    fields_ = {f.name for f in dataclasses.fields(ReplayConfig)} - set(_NOT_KNOBS)
    if name in fields_:
        return "config"
    head, _, tail = name.partition(".")
    if head in PHASES and tail in {f.name for f in dataclasses.fields(PhaseConfig)}:
        return "phase"
    from tracekit import schemas

    if tail and any(f.section == head and f.name == tail for f in schemas.load("hardware").fields):
        return "hardware"
    known = sorted(fields_) + [f"{p}.{f.name}" for p in PHASES for f in dataclasses.fields(PhaseConfig)]
    close = difflib.get_close_matches(name, known + _hardware_keys(), n=1)
    raise TracekitError(
        f"unknown knob {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
        fix="use a replay setting (" + ", ".join(sorted(fields_)) + "), a chunk size (dispatch.nvl_send_chunk, "
            "combine.rdma_recv_buffer, ...) or a hardware field as --set takes it (e.g. nic.line_rate_gbit_s)")


def _hardware_keys() -> list[str]:
    from tracekit import schemas

    return [f"{f.section}.{f.name}" for f in schemas.load("hardware").fields]


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)


def check_knob_value(name: str, value: Any) -> None:
    """A knob value of the right type for its field (hardware values are checked by the profile)."""
    kind = knob_kind(name)
    if kind == "hardware":
        if not isinstance(value, (int, float, str)) or isinstance(value, bool):
            raise TracekitError(f"knob {name}: got {_type_name(value)} {value!r}", fix="give a number or a name")
        return
    if kind == "phase":
        expected: Any = int
    else:
        expected = typing.get_type_hints(ReplayConfig)[name]
    args = [a for a in typing.get_args(expected) if a is not type(None)] or [expected]
    if typing.get_origin(expected) is typing.Literal:
        if value not in args:
            raise TracekitError(f"knob {name}: got {value!r}", fix=f"use one of {', '.join(map(repr, args))}")
        return
    ok = any((t is int and isinstance(value, int) and not isinstance(value, bool))
             or (t is float and isinstance(value, (int, float)) and not isinstance(value, bool))
             or (t in (str, bool) and isinstance(value, t)) or t is Any for t in args)
    if not ok:
        want = " or ".join(_type_name(t()) if t in (int, float, str, bool) else t.__name__ for t in args)
        raise TracekitError(f"knob {name}: got {_type_name(value)} {value!r}, expected {want}",
                            fix=f"e.g. {name} = [{_example(args[0])}]")


def _example(t: Any) -> str:
    return {int: "8, 16", float: "1.0, 2.0", str: '"a", "b"', bool: "true, false"}.get(t, "...")


def point_config(ep_size: int, knobs: Mapping[str, Any]) -> ReplayConfig:
    """The checked, resolved ReplayConfig of one point."""
    cfg_fields = {k: v for k, v in knobs.items() if knob_kind(k) == "config"}
    hardware = {k: v for k, v in knobs.items() if knob_kind(k) == "hardware"}
    phases = {}
    for phase in PHASES:
        given = {k.partition(".")[2]: v for k, v in knobs.items() if k.startswith(phase + ".")}
        phases[phase] = replace(deepep_defaults(ep_size, phase), **given)
    cfg = ReplayConfig(**cfg_fields, hardware_overrides=hardware, **phases)
    cfg.check()
    return cfg


# ----------------------------------------------------------------------------------------------
# expansion


def expand(blocks: list[Block] | tuple[Block, ...], *, source: str = "grid", group_by: tuple[str, ...] | None = None,
           plot: tuple[str, ...] = ()) -> Grid:
    """Every point of every block, checked; raises :class:`TracekitError` naming the point."""
    points: list[Point] = []
    for b in blocks:
        names = [k for k, _ in b.swept]
        for wl in b.workloads:
            for pname, prof in b.profiles:
                if prof.system.gpus_per_node != wl.gpus_per_node:
                    raise TracekitError(
                        f"workload {wl.name!r} has {wl.gpus_per_node} GPUs per node but profile {pname!r} has "
                        f"{prof.system.gpus_per_node}", where=source,
                        fix="synthesise the workload with a matching gpus_per_node, or pick another profile")
                for values in itertools.product(*[v for _, v in b.swept]):
                    knobs = dict(zip(names, values))
                    p = Point(len(points), b.label, wl, pname, prof, ReplayConfig(), tuple(knobs.items()))
                    try:
                        cfg = point_config(wl.ep_size, {**dict(b.fixed), **knobs})
                        prof.with_overrides(cfg.hardware_overrides)  # replay applies them; check them now
                    except TracekitError as exc:
                        raise exc.located(f"{source}: {p.label()}") from None
                    points.append(replace(p, config=cfg))
    if not points:
        raise TracekitError("the grid has no points", where=source,
                            fix="give at least one workload and a non-empty list for every knob")
    return Grid(tuple(blocks), source, group_by or ("block", "workload", "profile"), plot, tuple(points))


# ----------------------------------------------------------------------------------------------
# grid files


def load_grid(path: str | Path) -> Grid:
    """Parse and expand a grid TOML file (see docs/sweep.md); bad files raise one-line errors."""
    p = Path(path)
    where = str(p)
    try:
        text = p.read_text(encoding="utf-8")
        doc = tomllib.loads(text)
    except FileNotFoundError:
        raise TracekitError("no such grid file", where=where, fix="check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TracekitError(f"cannot read ({exc})", where=where, fix="check the file") from None
    except tomllib.TOMLDecodeError as exc:
        raise TracekitError(f"not valid TOML ({exc})", where=where, fix="fix the syntax (see docs/sweep.md)") from None
    return parse_grid(doc, where, base=p.parent, text=text)


def parse_grid(doc: Mapping[str, Any], where: str, base: Path = Path("."), text: str = "") -> Grid:
    unknown = [k for k in doc if k not in _TOP_KEYS]
    if unknown:
        close = difflib.get_close_matches(unknown[0], _TOP_KEYS, n=1)
        raise TracekitError(f"unknown key {unknown[0]!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
                            where=where, fix=f"use only {', '.join(_TOP_KEYS)}")
    metric = _get(doc, "metric", str, "dispatch.latency_ns", where)
    _check_metric(metric, where)
    goal = _get(doc, "goal", str, "min", where)
    if goal not in ("min", "max"):
        raise TracekitError(f"goal = {goal!r}", where=where, fix='use goal = "min" or goal = "max"')
    profiles = _get(doc, "profiles", list, ["h800-ib"], where)
    workloads = _get(doc, "workloads", list, [], where)
    if not workloads:
        raise TracekitError("the grid has no workloads", where=where,
                            fix='add one, e.g. [[workloads]] synth = { preset = "prefill", ep = 16, tokens = 256 }')
    knobs = _flatten(_get(doc, "knobs", dict, {}, where))
    swept, fixed = [], []
    for name, value in knobs.items():
        try:
            knob_kind(name)
            values = value if isinstance(value, list) else [value]
            if not values:
                raise TracekitError(f"knob {name}: empty list", fix=f"give at least one value, e.g. {name} = [8]")
            for v in values:
                check_knob_value(name, v)
        except TracekitError as exc:
            raise exc.located(f"{where}: {_line_of(text, name)}[knobs]") from None
        (swept if isinstance(value, list) else fixed).append((name, tuple(values) if isinstance(value, list) else value))
    group_by = tuple(_get(doc, "group_by", list, ["workload", "profile"], where))
    plot = tuple(_get(doc, "plot", list, [], where))
    for k in plot:
        if k not in dict(swept):
            raise TracekitError(f"plot: {k!r} is not a swept knob", where=where,
                                fix=f"use knobs given as lists: {', '.join(dict(swept)) or 'none'}")
    for k in group_by:
        if k not in ("block", "workload", "profile") and k not in dict(swept):
            raise TracekitError(f"group_by: {k!r} is neither workload, profile nor a swept knob", where=where,
                                fix="e.g. group_by = [\"workload\", \"profile\"]")
    wls = [wl for i, w in enumerate(workloads) for wl in _workload(w, i, where, base)]
    names = [wl.name for wl in wls]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise TracekitError(f"two workloads are named {dup!r}", where=where, fix="give each workload its own name")
    block = Block("grid", tuple(wls),
                  tuple(_profile(x, where, base) for x in profiles), tuple(swept), tuple(fixed), metric, goal)
    return expand([block], source=where, group_by=("block", *group_by), plot=plot)


def _summary_figures() -> tuple[set[str], set[str]]:
    """Typed figure names of the summary (``dispatch.latency_ns``) and prefixes of its dict figures."""
    from tracekit.summary_types import schema_skeleton

    sk = schema_skeleton()
    leaves, dicts = set(), set()

    def walk(node: dict, path: str) -> None:
        for k, prop in node.get("properties", {}).items():
            name = f"{path}{k}"
            if "$ref" in prop:
                walk(sk["$defs"][prop["$ref"].rsplit("/", 1)[1]], name + ".")
            elif prop.get("type") == "object":
                dicts.add(name + ".")
            else:
                leaves.add(name)

    walk(sk, "")
    return leaves, dicts


def _check_metric(metric: str, where: str) -> None:
    """A typo of a known figure is an error now, before any replay; a name the summary types do not
    know (a figure another feature adds as an extra) is accepted and checked on the results."""
    leaves, dicts = _summary_figures()
    if metric in leaves or any(metric.startswith(d) for d in dicts):
        return
    close = difflib.get_close_matches(metric, sorted(leaves), n=1, cutoff=0.8)
    if close:
        raise TracekitError(f"metric {metric!r} is not a summary figure (did you mean {close[0]!r}?)", where=where,
                            fix="use a results column such as dispatch.latency_ns or combine.bandwidth_gbps.rdma")


def _line_of(text: str, name: str) -> str:
    """``line N `` of the first line that assigns knob ``name`` (quoted or dotted), or ''."""
    pattern = re.compile(rf'^\s*(?:"{re.escape(name)}"|{re.escape(name)})\s*=')
    for i, line in enumerate(text.splitlines(), 1):
        if pattern.match(line):
            return f"line {i} "
    return ""


def _get(doc: Mapping[str, Any], key: str, kind: type, default: Any, where: str) -> Any:
    value = doc.get(key, default)
    if not isinstance(value, kind):
        raise TracekitError(f"{key}: got {_type_name(value)} {value!r}", where=where,
                            fix=f"give {key} as {_type_name(kind())} (see docs/sweep.md)")
    return value


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _profile(name: Any, where: str, base: Path) -> tuple[str, Profile]:
    if not isinstance(name, str):
        raise TracekitError(f"profiles: got {_type_name(name)} {name!r}", where=where,
                            fix='give profile names or .toml paths, e.g. profiles = ["h800-ib"]')
    ref = str(base / name) if name.endswith(".toml") else name
    try:
        return name, load_profile(ref)
    except TracekitError as exc:
        raise exc.located(f"{where}: profiles") from None


def _workload(doc: Any, i: int, where: str, base: Path) -> list[Workload]:
    at = f"{where}: workloads[{i}]"
    if not isinstance(doc, dict):
        raise TracekitError(f"got {_type_name(doc)}", where=at, fix="give a table with synth = {...} or routing = \"...\"")
    unknown = [k for k in doc if k not in ("name", "synth", "routing")]
    if unknown or ("synth" in doc) == ("routing" in doc):
        raise TracekitError(f"unknown key {unknown[0]!r}" if unknown else "needs exactly one of synth or routing",
                            where=at, fix='e.g. synth = { preset = "prefill", ep = 16 } or routing = "r.parquet"')
    if "routing" in doc:
        return [_routing_workload(doc, at, base)]
    recipe = doc["synth"]
    if not isinstance(recipe, dict):
        raise TracekitError(f"synth: got {_type_name(recipe)}", where=at, fix='e.g. synth = { preset = "prefill", ep = 16 }')
    known = {f.name for f in dataclasses.fields(SynthConfig)}
    for k in recipe:
        if k not in known:
            close = difflib.get_close_matches(k, known, n=1)
            raise TracekitError(f"synth: unknown field {k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""),
                                where=at, fix=f"use SynthConfig fields: {', '.join(sorted(known))}")
    lists = {k: v for k, v in recipe.items() if isinstance(v, list)}
    out = []
    for values in itertools.product(*lists.values()):
        fields_ = {**recipe, **dict(zip(lists, values))}
        try:
            cfg = SynthConfig(**fields_).check()
        except (TracekitError, TypeError) as exc:
            raise TracekitError(str(exc), where=f"{at}: synth", fix="see tracekit synth --help") from None
        name = doc.get("name") or f"{cfg.preset}-ep{cfg.ep}-t{cfg.tokens_per_rank}"
        if lists and doc.get("name"):
            name += "-" + "-".join(f"{k}{v}" for k, v in zip(lists, values))
        out.append(Workload(str(name), cfg.ep, cfg.gpus_per_node, synth=tuple(sorted(cfg.to_dict().items()))))
    if not out:
        raise TracekitError("synth: a list is empty", where=at, fix="give at least one value")
    return out


def _routing_workload(doc: dict, at: str, base: Path) -> Workload:
    from tracekit.io.tables import read_meta

    rel = doc["routing"]
    if not isinstance(rel, str):
        raise TracekitError(f"routing: got {_type_name(rel)}", where=at, fix='give a path, e.g. routing = "r.parquet"')
    path = (base / rel).resolve()
    if not path.is_file():
        raise TracekitError(f"routing: no such file {rel!r}", where=at, fix="paths are relative to the grid file")
    _, meta = read_meta(path)
    try:
        ep, gpn = int(meta["ep_size"]), int(meta["gpus_per_node"])
    except (KeyError, TypeError, ValueError):
        raise TracekitError("no ep_size/gpus_per_node metadata", where=str(path),
                            fix="write routing tables with tracekit synth or tracekit import") from None
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return Workload(str(doc.get("name") or path.stem), ep, gpn, path=str(path), sha256=digest)
