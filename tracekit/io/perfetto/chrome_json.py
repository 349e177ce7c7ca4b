"""Chrome trace-event JSON (the legacy format of chrome://tracing), best effort.

One process per top-level resource (``node0``, ``switch0``), one thread per resource lane below
it (overlapping operations get extra lanes, as in the protobuf export), ``X`` events for slices
(microsecond floats with three decimals, so nanoseconds survive), ``s``/``f`` pairs for flows and
``C`` events for counters. Written in batches, atomically. The protobuf export is ~3x smaller and
keeps flow ids exact; use this only where a JSON viewer is required.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tracekit import schemas
from tracekit.io.atomic import atomic_path
from tracekit.io.perfetto.tracks import LaneAssigner, natural_key
from tracekit.resources import ResourcePath

_BATCH = 1 << 15
_EVENTS = schemas.load("events")
#: (annotation, column, value left out) from the events schema's annotation list; an implied
#: value is compared with -1 (the stage, for ``name``): JSON threads carry no resource path.
_ARGS = [(name, col, -1 if default == "implied" else default) for name, col, _typ, default in _EVENTS.annotations]


def _us(ns: int) -> str:
    return f"{ns // 1000}.{ns % 1000:03d}" if ns >= 0 else f"-{_us(-ns)}"


def write_chrome_json(path: str | os.PathLike[str], events: pa.Table, counters: pa.Table | None, *,
                      title: str = "") -> Path:
    """Write ``events`` (sorted by ts_ns) and ``counters`` as Chrome JSON to ``path``."""
    paths = sorted(set(pc.unique(events.column("resource")).to_pylist())
                   | (set(pc.unique(counters.column("resource")).to_pylist()) if counters is not None else set()),
                   key=lambda p: [natural_key(s) for s in p.split("/")])
    tops = sorted({ResourcePath.parse(p).top for p in paths}, key=natural_key)
    pid = {t: i + 1 for i, t in enumerate(tops)}
    value_set = pa.array(paths, pa.string())
    lanes = LaneAssigner(len(paths))
    tids: dict[int, int] = {}  # lane -> tid
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write('{"displayTimeUnit": "ns", "otherData": %s, "traceEvents": [\n' % json.dumps({"title": title or "tracekit"}))
        first = True

        def emit(obj: dict) -> None:
            nonlocal first
            f.write(("" if first else ",\n") + json.dumps(obj, separators=(",", ":")))
            first = False

        for t in tops:
            emit({"ph": "M", "name": "process_name", "pid": pid[t], "tid": 0, "args": {"name": t}})
            emit({"ph": "M", "name": "process_sort_index", "pid": pid[t], "tid": 0, "args": {"sort_index": pid[t]}})
        for start in range(0, events.num_rows, _BATCH):
            t = schemas.conform(events.slice(start, _BATCH), "events", where=str(path))
            ts = t.column("ts_ns").to_numpy()
            dur = t.column("dur_ns").to_numpy()
            res = np.asarray(pc.index_in(t.column("resource"), value_set=value_set).to_numpy(zero_copy_only=False), np.int64)
            lane, _delta = lanes.assign(res, ts, ts + dur)
            cols = {c: t.column(c).to_pylist() for c in t.column_names}
            for i in range(t.num_rows):
                ln = int(lane[i])
                r = paths[res[i]]
                rp = ResourcePath.parse(r)
                top, rest = rp.top, rp.rest
                if ln not in tids:
                    tids[ln] = len(tids) + 1
                    k = int(lanes.lane_index[ln])
                    emit({"ph": "M", "name": "thread_name", "pid": pid[top], "tid": tids[ln],
                          "args": {"name": (rest or top) + (f" [{k}]" if k else "")}})
                    emit({"ph": "M", "name": "thread_sort_index", "pid": pid[top], "tid": tids[ln],
                          "args": {"sort_index": int(res[i]) * 1000 + k}})
                args = {a: cols[c][i] for a, c, d in _ARGS
                        if cols[c][i] != (cols["stage"][i] if c == "name" else d)}
                ev = {"ph": "X", "name": cols["stage"][i], "cat": cols["kind"][i], "pid": pid[top], "tid": tids[ln],
                      "ts": 0, "dur": 0, "args": args}
                text = json.dumps(ev, separators=(",", ":"))
                text = text.replace('"ts":0,"dur":0', f'"ts":{_us(int(ts[i]))},"dur":{_us(int(dur[i]))}', 1)
                f.write(("" if first else ",\n") + text)
                first = False
                for ph, col in (("s", "flow_out"), ("f", "flow_in")):
                    fid = cols[col][i]
                    if fid is not None:
                        at = int(ts[i] + dur[i]) - (1 if dur[i] else 0) if ph == "s" else int(ts[i])
                        flow = {"ph": ph, "id": fid, "name": "flow", "cat": "flow", "pid": pid[top], "tid": tids[ln],
                                "ts": 0}
                        if ph == "f":
                            flow["bp"] = "e"
                        f.write(",\n" + json.dumps(flow, separators=(",", ":")).replace('"ts":0', f'"ts":{_us(at)}', 1))
        if counters is not None:
            for start in range(0, counters.num_rows, _BATCH):
                t = counters.slice(start, _BATCH)
                for ts, r, c, v in zip(t.column("ts_ns").to_pylist(), t.column("resource").to_pylist(),
                                       t.column("counter").to_pylist(), t.column("value").to_pylist()):
                    rp = ResourcePath.parse(r)
                    top, rest = rp.top, rp.rest
                    text = json.dumps({"ph": "C", "name": f"{rest or top} {c}", "pid": pid[top], "tid": 0, "ts": 0,
                                       "args": {c: v}}, separators=(",", ":"))
                    f.write(("" if first else ",\n") + text.replace('"ts":0', f'"ts":{_us(int(ts))}', 1))
                    first = False
        f.write("\n]}\n")
    return Path(path)
