"""One sweep point, as a worker runs it: (routing, profile, config) in, a one-row Arrow table out.

The task carries everything the worker needs (a synth recipe, or a routing file's path or bytes;
the profile; the resolved config), so the same function runs in a local process or a Ray worker.
Rows are built from the typed summary's figures (:func:`tracekit.summary_types.flat_figures`), so
a column is a summary key (``dispatch.latency_ns``) and its type follows the value's Python type.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from tracekit.hardware import Profile
from tracekit.model.config import ReplayConfig
from tracekit.sweep.grid import Point, Workload

_ARROW = {bool: pa.bool_(), int: pa.int64(), float: pa.float64(), str: pa.string()}
_CACHE: dict[tuple, Any] = {}
#: schema metadata of a point's row: its point columns (the rest are summary figures)
COLUMNS_KEY = b"tracekit.sweep.columns"


@dataclass(frozen=True)
class Task:
    key: str
    workload: Workload
    profile: dict[str, Any]  # the profile as a TOML-shaped document (Profile holds unpicklable read-only maps)
    config: ReplayConfig
    columns: tuple[tuple[str, Any], ...]
    label: str
    routing_data: Any = None  # the routing file's bytes (or a Ray object holding them), for workers that
    # may not see the file
    timeline: str | None = None  # write the replay's timeline here (off by default: speed)


def make_task(point: Point, *, routing_data: Any = None, timeline_dir: str | None = None) -> Task:
    timeline = f"{timeline_dir}/{point.key}.pftrace" if timeline_dir else None
    return Task(point.key, point.workload, profile_doc(point.profile), point.config, tuple(point.columns().items()),
                point.label(), routing_data, timeline)


def profile_doc(hw: Profile) -> dict[str, Any]:
    """The document :func:`tracekit.hardware.profile.parse_profile` rebuilds ``hw`` from."""
    doc: dict[str, Any] = {"name": hw.name, "description": hw.description}
    for section, values in hw.values.items():
        doc[section] = {k: {"value": v, "source": hw.sources[section][k]} for k, v in values.items()}
    return doc


def _profile(doc: dict[str, Any]) -> Profile:
    from tracekit.hardware.profile import parse_profile

    cache_key = ("profile", json.dumps(doc, sort_keys=True))
    if cache_key not in _CACHE:
        _CACHE[cache_key] = parse_profile(doc, where=f"profile {doc['name']}")
    return _CACHE[cache_key]


def _routing(wl: Workload, data: Any) -> Any:
    """The workload's routing table, built once per worker process."""
    cache_key = (wl.synth, wl.sha256)
    if cache_key not in _CACHE:
        if wl.synth is not None:
            from tracekit.workload.synth import SynthConfig, synth

            _CACHE[cache_key] = synth(SynthConfig(**dict(wl.synth)))
        else:
            import pyarrow.parquet as pq

            from tracekit import schemas
            from tracekit.workload.routing import Routing

            if data is not None and not isinstance(data, bytes):  # a Ray object reference
                import ray

                data = ray.get(data)
            table = pq.read_table(io.BytesIO(data) if data is not None else wl.path)
            meta = json.loads((table.schema.metadata or {}).get(schemas.META_KEY, b"{}"))
            table = schemas.conform(table, "routing", meta, where=wl.name)
            _CACHE[cache_key] = Routing.from_arrow(table, meta, where=wl.name)
    return _CACHE[cache_key]


def run_task(task: Task) -> pa.Table:
    """Replay one point; its row (point columns, then the summary's figures) as a one-row table."""
    from tracekit.replay import replay
    from tracekit.summary_types import flat_figures

    from tracekit.errors import TracekitError

    try:
        result = replay(_routing(task.workload, task.routing_data), _profile(task.profile), task.config,
                        tables=task.timeline is not None)
    except TracekitError as exc:
        raise TracekitError(f"{task.label}: {exc}") from None
    if task.timeline:
        from tracekit.io.perfetto import write_trace

        write_trace(task.timeline, result.events, result.counters, title=f"tracekit sweep point {task.key}")
    row = {**dict(task.columns), **flat_figures(result.summary)}
    table = pa.table({k: pa.array([v], type=_ARROW[type(v)]) for k, v in row.items()})
    return table.replace_schema_metadata({COLUMNS_KEY: json.dumps([k for k, _ in task.columns]).encode()})
