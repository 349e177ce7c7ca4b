"""The public Python API (re-exported by :mod:`tracekit`): thin, documented entry points over the
internal modules, each with one runnable example. Nothing here computes anything itself."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import polars as pl

from tracekit.errors import TracekitError
from tracekit.hardware import Profile
from tracekit.hardware import load_profile as _load_profile
from tracekit.model.config import PhaseConfig, ReplayConfig
from tracekit.replay import ReplayResult
from tracekit.replay import replay as _replay
from tracekit.summary_types import Summary
from tracekit.workload.routing import Routing
from tracekit.workload.synth import SynthConfig
from tracekit.workload.synth import synth as _synth

__all__ = ["PhaseConfig", "ReplayConfig", "ReplayResult", "Routing", "Summary", "SynthConfig", "TracekitError",
           "diff", "load_profile", "load_routing", "read_trace", "replay", "synth", "write_trace"]


def synth(preset: str | SynthConfig = "decode", **fields: Any) -> Routing:
    """A synthetic routing table in the style of DeepEP's tests: a preset (``"decode"``, 128 tokens per
    rank, or ``"prefill"``, 4096) with :class:`SynthConfig` fields overridden, or a config.

    >>> routing = synth("prefill", ep=16, tokens=64, seed=1)
    >>> routing.meta.ep_size, routing.num_rows, routing.topk
    (16, 1024, 8)
    """
    config = preset if isinstance(preset, SynthConfig) else SynthConfig(preset=preset)
    from dataclasses import replace

    return _synth(replace(config, **fields).check() if fields else config.check())


def load_routing(path: str | os.PathLike[str]) -> Routing:
    """Read and check a routing table (``routing.v1`` Parquet, as ``tracekit synth`` writes).

    >>> import tempfile, pathlib
    >>> from tracekit.io.tables import write_table
    >>> r = synth("decode", ep=8, tokens=16)
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "routing.parquet"
    >>> _ = write_table(r.to_arrow(), path, "routing", r.meta.to_dict())
    >>> load_routing(path).num_rows == r.num_rows
    True
    """
    from tracekit.io.tables import read_table
    from tracekit.workload.validate import check_routing

    table, meta, _ = read_table(path, "routing")
    routing = Routing.from_arrow(table, meta, where=str(path))
    check_routing(routing, where=str(path))
    return routing


def load_profile(name_or_path: str | os.PathLike[str]) -> Profile:
    """A hardware profile shipped with tracekit by name (``tracekit hw list``), or a TOML file by path.

    >>> hw = load_profile("h800-ib")
    >>> hw.system.gpus_per_node, hw.get("nic.line_rate_gbit_s")
    (8, 400.0)
    """
    return _load_profile(name_or_path)


def replay(routing: Routing, hardware: Profile | str = "h800-ib", config: ReplayConfig | None = None, *,
           on_phase: Callable[[str, int, int], None] | None = None) -> ReplayResult:
    """Replay dispatch and combine of ``routing`` on ``hardware`` (a profile or its name): events and
    counters as polars DataFrames, and a typed :class:`Summary`.

    >>> result = replay(synth("prefill", ep=16, tokens=64), "h800-ib", ReplayConfig(num_sms=24))
    >>> result.summary.conservation, result.summary.dispatch.latency_ns > 0
    ('ok', True)
    """
    hw = load_profile(hardware) if isinstance(hardware, str) else hardware
    return _replay(routing, hw, config, on_phase=on_phase)


def diff(before: Any, after: Any, *, names: Any = None, seed: int = 0) -> Any:
    """Compare two traces: each a :class:`ReplayResult`, or a path ``tracekit diff`` accepts (a replay
    output directory, ``events.parquet``, Kineto traces, a ``.pftrace``). Returns a ``TraceDiff``
    whose tables (``.phases``, ``.stages``, ``.ranks``, ...) are polars DataFrames.

    >>> r = synth("prefill", ep=16, tokens=64)
    >>> d = diff(replay(r), replay(r, config=ReplayConfig(dispatch_dtype="bf16")))
    >>> d.phases.filter(phase="dispatch", metric="latency")["change"].item()
    'up'
    """
    from tracekit.analysis.diff import diff_traces

    return diff_traces(_side(before, "before"), _side(after, "after"), names=names, seed=seed)


def _side(value: Any, label: str) -> Any:
    from tracekit.analysis.profile import Trace

    if isinstance(value, ReplayResult):
        return Trace(value.events, value.counters, value.summary, None, {"source": "replay"}, label)
    if isinstance(value, Trace):
        return value
    if isinstance(value, (str, os.PathLike)):
        from tracekit.io.diff_input import load_side

        return load_side(value)[0]
    raise TracekitError(f"diff {label}: got {type(value).__name__}",
                        fix="pass a ReplayResult or a path (replay output directory, events.parquet, .pftrace)")


def write_trace(path: str | os.PathLike[str], events: pl.DataFrame, counters: pl.DataFrame | None = None, *,
                title: str = "") -> os.PathLike[str]:
    """Write a Perfetto timeline (open it at https://ui.perfetto.dev) of events (events.v1) and
    counters (counters.v1); returns the path.

    >>> import tempfile, pathlib
    >>> r = replay(synth("decode", ep=8, tokens=16))
    >>> write_trace(pathlib.Path(tempfile.mkdtemp()) / "t.pftrace", r.events, r.counters).stat().st_size > 0
    True
    """
    from tracekit.io.perfetto import write_trace as _write

    return _write(path, events, counters, title=title)


def read_trace(path: str | os.PathLike[str]) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read a ``.pftrace`` written by :func:`write_trace` back into (events, counters) DataFrames.

    >>> import tempfile, pathlib
    >>> r = replay(synth("decode", ep=8, tokens=16))
    >>> p = write_trace(pathlib.Path(tempfile.mkdtemp()) / "t.pftrace", r.events, r.counters)
    >>> events, counters = read_trace(p)
    >>> events.height == r.events.height
    True
    """
    from tracekit.io.perfetto import read_trace as _read

    return _read(path)
