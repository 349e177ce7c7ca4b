"""Load, check and override hardware profiles (``tracekit/hardware/profiles/*.toml``).

Field names, types and units are defined in ``schemas/hardware.v1.json``; a profile file gives each
field as ``{value = ..., source = "..."}``. :class:`Profile` is immutable; ``with_overrides`` returns
a changed copy (``{"nic.line_rate_gbit_s": 800}``) whose sources say they were overridden.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

import polars as pl

from tracekit import schemas
from tracekit.errors import TracekitError

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"

_CHOICES = {
    ("nvlink", "topology"): ("switch", "mesh"),
    ("switch", "topology"): ("single", "leaf_spine"),
    ("nic", "transport"): ("ib", "roce"),
    ("fabric", "topology"): ("switch", "rail_optimised"),
    ("fabric", "routing"): ("ecmp", "spray", "flowlet"),
    ("fabric", "retransmit"): ("go_back_n", "selective"),
}


class _Section:
    """Attribute access to one section's values: ``profile.nic.line_rate_gbit_s``."""

    def __init__(self, name: str, values: Mapping[str, Any]) -> None:
        self._name = name
        self._values = values

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"hardware section {self._name} has no field {key}") from None


@dataclass(frozen=True)
class Profile:
    """A checked hardware profile: ``values[section][field]`` and ``sources[section][field]``."""

    name: str
    description: str
    values: Mapping[str, Mapping[str, Any]]
    sources: Mapping[str, Mapping[str, str]]

    def __getattr__(self, section: str) -> _Section:
        if section.startswith("_") or section not in self.values:
            raise AttributeError(section)
        return _Section(section, self.values[section])

    def get(self, key: str) -> Any:
        """A value by dotted key, ``"nic.line_rate_gbit_s"``."""
        section, _, field = key.partition(".")
        try:
            return self.values[section][field]
        except KeyError:
            raise TracekitError(f"hardware field {key!r} unknown", fix=f"use one of {', '.join(_all_keys())}") from None

    def with_overrides(self, overrides: Mapping[str, Any]) -> "Profile":
        """A copy with ``{"section.field": value}`` replaced (values converted to the field's type)."""
        if not overrides:
            return self
        values = {s: dict(v) for s, v in self.values.items()}
        sources = {s: dict(v) for s, v in self.sources.items()}
        for key, raw in overrides.items():
            section, _, field = key.partition(".")
            f = _field(section, field, where=f"override {key}")
            values.setdefault(section, {})[field] = _convert(f, raw, where=f"override {key}={raw!r}")
            was = self.values.get(section, {}).get(field, f.default)
            sources.setdefault(section, {})[field] = f"override (was {was!r})"
        return _checked(self.name, self.description, values, sources, where="overrides")

    def table(self) -> pl.DataFrame:
        """One row per field: section, field, value, unit, source."""
        rows = []
        for f in schemas.load("hardware").fields:
            if f.name not in self.values.get(f.section, {}):
                continue  # an optional field the profile does not set (e.g. [fabric] of IB profiles)
            rows.append({
                "section": f.section, "field": f.name, "value": str(self.values[f.section][f.name]),
                "unit": f.unit, "source": self.sources[f.section][f.name],
            })
        return pl.DataFrame(rows, schema={"section": pl.String, "field": pl.String, "value": pl.String,
                                          "unit": pl.String, "source": pl.String})

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON summaries: ``{"name": ..., "nic": {...}, ...}``."""
        return {"name": self.name, **{s: dict(v) for s, v in self.values.items()}}


def _all_keys() -> list[str]:
    return [f"{f.section}.{f.name}" for f in schemas.load("hardware").fields]


#: Fields a profile may still carry from an older schema, with what replaces them.
_REMOVED = {("gpu", "per_token_overhead_ns"): "gpu.dispatch_token_ns and gpu.combine_token_ns (per phase; "
            "gpu.fp8_token_ns for scales, gpu.chunk_sync_ns per chunk)",
            ("host", "layout_token_expert_ns"): "host.layout_token_ns and host.layout_token_rank_ns (the layout "
            "kernel's time grows with tokens and ranks, not experts: docs/calibration.md)"}


def _field(section: str, field: str, where: str) -> schemas.Field:
    if (section, field) in _REMOVED:
        raise TracekitError(f"hardware field {section}.{field} was removed", where=where,
                            fix=f"give {_REMOVED[section, field]} instead")
    try:
        return schemas.load("hardware").field(field, section)
    except KeyError:
        raise TracekitError(f"unknown hardware field {section}.{field}", where=where,
                            fix=f"use one of {', '.join(_all_keys())}") from None


def _convert(f: schemas.Field, raw: Any, where: str) -> Any:
    key = f"{f.section}.{f.name}"
    if f.type == "string":
        value = str(raw)
        allowed = _CHOICES.get((f.section, f.name))
        if allowed and value not in allowed:
            raise TracekitError(f"{key}={value!r} not one of {', '.join(allowed)}", where=where,
                                fix=f"set {key} to one of {', '.join(allowed)}")
        return value
    try:
        value = float(raw) if f.type == "float64" else int(raw)
        if not math.isfinite(value) or (f.type == "int64" and isinstance(raw, float) and raw != int(raw)):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise TracekitError(f"{key}={raw!r} is not a finite {'number' if f.type == 'float64' else 'whole number'}",
                            where=where, fix=f"give {key} in {f.unit}") from None
    if value <= 0 and f.section not in ("host", "fabric") and f.name not in (
            "cq_poll_interval_ns", "doorbell_cpu_proxy_ns", "grid_sync_ns", "signal_ns", "kernel_launch_ns",
            "combine_topk_ns", "chunk_sync_ns", "ll_selection_ns") and not f.name.endswith("_token_ns"):
        raise TracekitError(f"{key}={raw!r} must be positive", where=where, fix=f"give {key} in {f.unit}, > 0")
    if value < 0:
        raise TracekitError(f"{key}={raw!r} must not be negative", where=where, fix=f"give {key} in {f.unit}, >= 0")
    return value


def _checked(name: str, description: str, values: dict, sources: dict, where: str) -> Profile:
    for f in schemas.load("hardware").fields:
        if not f.required:
            continue  # fields with a default (the [fabric] section) are optional
        if f.section not in values or f.name not in values[f.section]:
            raise TracekitError(f"missing {f.section}.{f.name}", where=where,
                                fix=f"add {f.name} = {{ value = ..., source = \"...\" }} under [{f.section}] ({f.unit}): {f.description}")
    _check_headers(values, where)
    frozen_values = MappingProxyType({s: MappingProxyType(dict(v)) for s, v in values.items()})
    frozen_sources = MappingProxyType({s: MappingProxyType(dict(v)) for s, v in sources.items()})
    return Profile(name, description, frozen_values, frozen_sources)


#: Fewest wire bytes a transport adds to an RDMA WRITE packet: InfiniBand LRH 8 + BTH 12 + ICRC 4 + VCRC 2
#: (IBTA spec; RETH 16 on the first packet comes on top); RoCE v2 Ethernet 14 + IPv4 20 + UDP 8 + BTH 12
#: + ICRC 4 + FCS 4 (IBTA RoCE v2 annex), before preamble and inter-frame gap.
MIN_HEADER_BYTES = {"ib": 26, "roce": 62}


def _check_headers(values: dict, where: str) -> None:
    transport, header = values["nic"]["transport"], values["nic"]["header_bytes"]
    least = MIN_HEADER_BYTES.get(transport, 0)
    if header < least:
        raise TracekitError(f"nic.header_bytes={header} is below the {least} bytes every {transport} packet carries",
                            where=where, fix=f"give nic.header_bytes >= {least} for transport {transport} "
                            "(e.g. 42 for IB RC writes, 98 for RoCE v2 with preamble and gap)")


def parse_profile(doc: Mapping[str, Any], where: str) -> Profile:
    """Check a parsed TOML document against ``schemas/hardware.v1.json`` and build a Profile."""
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise TracekitError("missing top-level name", where=where, fix='add name = "my-system"')
    values: dict[str, dict[str, Any]] = {}
    sources: dict[str, dict[str, str]] = {}
    for section, body in doc.items():
        if section in ("name", "description"):
            continue
        if not isinstance(body, dict):
            raise TracekitError(f"{section} is not a [section]", where=where, fix="see tracekit hw show h800-ib")
        for field, entry in body.items():
            f = _field(section, field, where)
            if not isinstance(entry, dict) or "value" not in entry or not str(entry.get("source", "")).strip():
                raise TracekitError(f"{section}.{field} must be {{ value = ..., source = \"...\" }}", where=where,
                                    fix="give every value with the source it came from")
            values.setdefault(section, {})[field] = _convert(f, entry["value"], where=f"{where}: {section}.{field}")
            sources.setdefault(section, {})[field] = str(entry["source"])
    return _checked(name, str(doc.get("description", "")), values, sources, where)


def list_profiles() -> list[str]:
    """Names of the profiles shipped with tracekit."""
    return sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))


def load_profile(name_or_path: str | os.PathLike[str]) -> Profile:
    """A shipped profile by name (``"h800-ib"``) or a user's TOML file by path."""
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith(".toml") or os.sep in text):
        path = PROFILE_DIR / f"{text}.toml"
        if not path.is_file():
            raise TracekitError(f"unknown hardware profile {text!r}",
                                fix=f"use one of {', '.join(list_profiles())}, or a path to a .toml file")
    if not path.is_file():
        raise TracekitError("no such hardware profile file", where=str(path), fix="check the path")
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TracekitError(f"not valid TOML ({exc})", where=str(path), fix="fix the syntax") from None
    return parse_profile(doc, str(path))
