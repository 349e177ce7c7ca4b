"""Files of the validation set: rows (``validation/rows/*.toml``), bands (``validation/bands.toml``), captures.

The adapters around :mod:`tracekit.validation`: reading and checking rows files, turning a captured
workload (a directory of Kineto traces under the repository) into a routing table the way
``tracekit import kineto DIR -o cap && tracekit replay --from-capture cap`` does, and reading and
writing the recorded error bands.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from tracekit.errors import TracekitError
from tracekit.validation import Row, rows_from_doc

ROOT = Path(__file__).resolve().parents[2]
ROWS_DIR = ROOT / "validation" / "rows"
BANDS = ROOT / "validation" / "bands.toml"


def _toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TracekitError(f"cannot read: {exc}", where=str(path), fix="fix the TOML syntax") from None


def load_rows(directory: Path = ROWS_DIR) -> list[Row]:
    """Every row of every ``*.toml`` in ``directory`` (sorted by file name), ids unique."""
    rows: list[Row] = []
    for path in sorted(Path(directory).glob("*.toml")):
        rows += rows_from_doc(_toml(path), str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path))
    seen: set[str] = set()
    for r in rows:
        if r.id in seen:
            raise TracekitError(f"row id {r.id!r} appears twice", where=str(directory), fix="make ids unique")
        seen.add(r.id)
    return rows


def import_capture(workload: dict[str, Any]):
    """The Kineto import of a ``workload.capture`` directory (relative to the repository root)."""
    from tracekit.io.kineto import import_kineto

    path = ROOT / workload["capture"]
    if not path.is_dir():
        raise TracekitError("capture directory not found", where=workload["capture"],
                            fix="give a directory of rank*.pt.trace.json.gz relative to the repository root")
    return import_kineto([path])


def capture_routing(workload: dict[str, Any], gpus_per_node: int):
    """The routing that ``tracekit replay --from-capture`` replays for an imported capture: a routing
    dump's tokens (``routing``), else a Kineto capture's traffic (``capture``)."""
    from tracekit.workload.from_traffic import routing_from_traffic

    if "routing" in workload:
        from tracekit.io.routing_dumps import routing_from_dump

        return routing_from_dump(ROOT / workload["routing"], ep_size=int(workload["ep"]),
                                 num_experts=int(workload["experts"]), hidden=int(workload["hidden"]),
                                 gpus_per_node=gpus_per_node,
                                 dispatch_dtype=workload.get("dispatch_dtype", "fp8"),
                                 combine_dtype=workload.get("combine_dtype", "bf16"))

    imp = import_capture(workload)
    if imp.traffic is None:
        raise TracekitError("the capture has no all-to-all traffic", where=workload["capture"],
                            fix="capture NCCL all-to-alls with their split sizes (record_shapes=True)")
    return routing_from_traffic(imp.traffic, imp.traffic_meta, gpus_per_node=gpus_per_node,
                                hidden=workload.get("hidden"), where=workload["capture"])


def read_bands(path: Path = BANDS) -> dict[str, tuple[float, float, float]]:
    """Recorded bands: row id -> (recorded error, low, high), in percent."""
    doc = _toml(Path(path))
    return {rid: (float(b["error_pct"]), float(b["low_pct"]), float(b["high_pct"]))
            for rid, b in doc.get("bands", {}).items()}


def bands_toml(bands: dict[str, tuple[float, float, float]], slack_pct: float, header: str) -> str:
    """The text of a bands file (TOML; written by tools/make_validation.py)."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"slack_pct = {slack_pct}", "", "[bands]"]
    for rid in sorted(bands):
        e, lo, hi = bands[rid]
        lines.append(f'"{rid}" = {{ error_pct = {e:.3f}, low_pct = {lo:.3f}, high_pct = {hi:.3f} }}')
    return "\n".join(lines) + "\n"


def step_replay(workload: dict[str, Any], hardware: str, knobs: dict[str, Any]) -> dict[str, Any]:
    """A captured training step (``workload.capture``: a Kineto trace relative to the repository root,
    ``rank``) replayed kernel by kernel with its dispatch and combine kernels predicted for the synthetic
    ``traffic`` recipe (``preset`` plus SynthConfig fields) on ``hardware`` with ``knobs``:
    :func:`tracekit.overlap_capture.replay_capture_kernels`' figures."""
    from tracekit.hardware import load_profile
    from tracekit.io.kineto import import_kineto
    from tracekit.overlap_capture import capture_kernels, replay_capture_kernels
    from tracekit.validation import replay_config
    from tracekit.workload.synth import SynthConfig, preset, synth

    path = ROOT / workload["capture"]
    if not path.exists():
        raise TracekitError("capture not found", where=workload["capture"],
                            fix="give a Kineto trace relative to the repository root (../shared/data holds DeepSeek's)")
    rank = int(workload.get("rank", 0))
    recipe = dict(workload.get("traffic", {}))
    name = recipe.pop("preset", None)
    routing = synth(preset(name, **recipe) if name else SynthConfig(**recipe))
    cfg = replay_config(knobs, routing.meta.ep_size, where=workload["capture"])
    return replay_capture_kernels(capture_kernels(import_kineto([path]).events, rank), routing,
                                  load_profile(hardware), cfg, rank=rank)


def capture_step_replay(row: Row) -> dict[str, float]:
    """``step_for`` of :func:`tracekit.validation.evaluate`: a step row's predicted figures in us."""
    rep = step_replay(row.workload, row.hardware, row.knobs)["replay"]
    return {"exposed_comm_us": rep["exposed_ns"] / 1e3, "step_us": rep["step_ns"] / 1e3}
