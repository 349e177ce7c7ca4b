"""Resource paths (``node0/rank3/nic0/qp5``): parsed once, read everywhere.

Every event and counter names the resource it ran on as a slash-separated path, one segment per
level (node, rank, component, sub-component). :class:`ResourcePath` is the one parser of those
strings: the numbers its segments imply (rank, channel, QP), its kind at two granularities, and
the natural sort key the timeline uses. Parsing is cached per distinct string.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from tracekit.errors import TracekitError

_NUMBERED = re.compile(r"([a-z_]+?)(\d+)")
_DIGITS = re.compile(r"\d+")
_IMPLIED = {"rank": "rank", "ch": "channel", "qp": "qp"}


@dataclass(frozen=True)
class ResourcePath:
    """A parsed resource path. ``ResourcePath.parse(text)`` (cached) is the way in."""

    text: str
    parts: tuple[str, ...]

    @staticmethod
    @functools.lru_cache(maxsize=1 << 16)
    def parse(text: str) -> "ResourcePath":
        """The path ``text``; a TracekitError if it is empty or has an empty segment."""
        parts = tuple(text.split("/")) if isinstance(text, str) else ()
        if not parts or any(p == "" for p in parts):
            raise TracekitError(f"resource {text!r} is not a slash-separated path with non-empty parts",
                                fix="name resources like node0/rank3/nic0/qp5")
        return ResourcePath(text, parts)

    def number(self, prefix: str) -> int:
        """The number of the first ``<prefix><n>`` segment (``rank`` -> 3 in ``node0/rank3``), or -1."""
        for seg in self.parts:
            m = _NUMBERED.fullmatch(seg)
            if m and m.group(1) == prefix:
                return int(m.group(2))
        return -1

    @property
    def rank(self) -> int:
        """The rank the resource belongs to (its ``rank<r>`` segment), or -1 (switches, ports)."""
        return self.number("rank")

    def implied(self) -> dict[str, int]:
        """The annotation values the path implies: rank, channel (``ch<c>``), qp (``qp<q>``), -1 without."""
        return {name: self.number(prefix) for prefix, name in _IMPLIED.items()}

    @property
    def top(self) -> str:
        """The first segment (``node0``, ``switch1``)."""
        return self.parts[0]

    @property
    def rest(self) -> str:
        """The path below the first segment ('' for a one-segment path)."""
        return "/".join(self.parts[1:])

    def kind(self) -> str:
        """Kind without the node/rank prefix and numbers: ``node0/rank3/nic0/tx`` -> ``nic/tx``,
        ``node0/rank3/sm/ch2/a`` -> ``sm``, ``switch0/port5`` -> ``switch/port``."""
        parts = self.parts
        if len(parts) > 2 and re.fullmatch(r"node\d+", parts[0]) and re.fullmatch(r"rank\d+", parts[1]):
            parts = parts[2:]
        if parts and parts[0] == "sm":
            return "sm"
        out = [p for p in (_DIGITS.sub("", p) for p in parts) if p]
        if out and out[-1] in ("a", "b"):
            out = out[:-1]
        return "/".join(out) or self.text

    def unit_kind(self) -> str:
        """Coarse kind for bottleneck reports: sm, nvlink_tx, nvlink_rx, nvlink, hbm, pcie_rd,
        pcie_wr, nic_tx, nic_rx, switch_port, switch_uplink, spine_port, cpu_proxy, else the
        last segment."""
        parts, last = self.parts, self.parts[-1]
        parent = parts[-2] if len(parts) > 1 else ""
        if "sm" in parts:
            return "sm"
        if parent == "nvlink":
            return f"nvlink_{last}" if last in ("tx", "rx") else "nvlink"
        if last == "hbm":
            return "hbm"
        if parent == "pcie":
            return f"pcie_{last}"
        if parent == "nic0":
            return f"nic_{last}"
        if parts[0].startswith("spine"):
            return "spine_port"
        if last.startswith("up"):
            return "switch_uplink"
        if last.startswith("port"):
            return "switch_port"
        if last == "proxy":
            return "cpu_proxy"
        return last
