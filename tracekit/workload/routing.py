"""The in-memory routing table: numpy columns plus the file-level metadata of ``routing.v1``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa

from tracekit import schemas
from tracekit.errors import TracekitError

#: Payload types and their bytes per element; quantised types add one float32 scale per 128 elements.
DTYPES: dict[str, int] = {"bf16": 2, "fp8": 1, "int8": 1}
SCALE_BLOCK = 128


def bytes_per_token(hidden: int, dtype: str) -> int:
    """Bytes one token occupies on the wire: ``2H`` for BF16; ``H + 4 * ceil(H / 128)`` for FP8/INT8."""
    if dtype not in DTYPES:
        raise TracekitError(f"dtype {dtype!r} unknown", fix=f"use one of {', '.join(DTYPES)}")
    if hidden <= 0:
        raise TracekitError(f"hidden={hidden} must be positive", fix="pass the model's hidden size, e.g. 7168")
    size = hidden * DTYPES[dtype]
    if dtype != "bf16":
        size += 4 * (-(-hidden // SCALE_BLOCK))
    return size


@dataclass(frozen=True)
class RoutingMeta:
    """File-level facts of a routing table (see ``schemas/routing.v1.json``)."""

    num_experts: int
    ep_size: int
    gpus_per_node: int
    hidden: int
    dispatch_dtype: str = "fp8"
    combine_dtype: str = "bf16"
    seed: int | None = None
    provenance: str = ""

    @property
    def num_nodes(self) -> int:
        return -(-self.ep_size // self.gpus_per_node)

    @property
    def experts_per_rank(self) -> int:
        return self.num_experts // self.ep_size

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "routing") -> "RoutingMeta":
        schemas.check_meta(schemas.load("routing"), d, where)
        known = {f for f in cls.__dataclass_fields__}
        meta = cls(**{k: v for k, v in d.items() if k in known})
        meta.check(where)
        return meta

    def check(self, where: str = "routing") -> None:
        """Raise :class:`TracekitError` unless the sizes are consistent."""
        for name in ("num_experts", "ep_size", "gpus_per_node", "hidden"):
            if getattr(self, name) <= 0:
                raise TracekitError(f"metadata {name}={getattr(self, name)} must be positive", where=where,
                                    fix=f"set {name} to a positive integer")
        if self.num_experts % self.ep_size:
            raise TracekitError(
                f"num_experts={self.num_experts} is not a multiple of ep_size={self.ep_size}", where=where,
                fix="experts are spread evenly over ranks; choose num_experts divisible by ep_size",
            )
        if self.ep_size > self.gpus_per_node and self.ep_size % self.gpus_per_node:
            raise TracekitError(
                f"ep_size={self.ep_size} is not a multiple of gpus_per_node={self.gpus_per_node}", where=where,
                fix="use whole nodes",
            )
        for name in ("dispatch_dtype", "combine_dtype"):
            if getattr(self, name) not in DTYPES:
                raise TracekitError(f"metadata {name}={getattr(self, name)!r} unknown", where=where,
                                    fix=f"use one of {', '.join(DTYPES)}")


@dataclass(frozen=True)
class Routing:
    """Routing decisions as numpy columns, one row per (step, layer, rank, token), in that order.

    ``topk_expert`` is ``int32[N, K]`` with -1 for masked entries; ``topk_weight`` is ``float32[N, K]``.

    >>> from tracekit import synth
    >>> r = synth("decode", ep=8, tokens=16, layers=2)
    >>> r.steps_layers(), r.select(0, 1).num_rows
    ([(0, 0), (0, 1)], 128)
    """

    step: np.ndarray
    layer: np.ndarray
    rank: np.ndarray
    token: np.ndarray
    topk_expert: np.ndarray
    topk_weight: np.ndarray
    meta: RoutingMeta

    @property
    def num_rows(self) -> int:
        return int(self.rank.shape[0])

    @property
    def topk(self) -> int:
        return int(self.topk_expert.shape[1])

    def steps_layers(self) -> list[tuple[int, int]]:
        """The distinct (step, layer) pairs, in table order."""
        if self.num_rows == 0:
            return []
        key = self.step.astype(np.int64) << 32 | self.layer.astype(np.int64)
        change = np.flatnonzero(np.r_[True, key[1:] != key[:-1]])
        return [(int(self.step[i]), int(self.layer[i])) for i in change]

    def select(self, step: int, layer: int) -> "Routing":
        """Rows of one step and layer."""
        m = (self.step == step) & (self.layer == layer)
        return self.take(np.flatnonzero(m))

    def take(self, idx: np.ndarray) -> "Routing":
        return replace(
            self, step=self.step[idx], layer=self.layer[idx], rank=self.rank[idx], token=self.token[idx],
            topk_expert=self.topk_expert[idx], topk_weight=self.topk_weight[idx],
        )

    def to_arrow(self) -> pa.Table:
        """The table as ``routing.v1`` Arrow, metadata attached."""
        n, k = self.topk_expert.shape
        offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
        experts = pa.ListArray.from_arrays(offsets, pa.array(self.topk_expert.reshape(-1).astype(np.int32)))
        weights = pa.ListArray.from_arrays(offsets, pa.array(self.topk_weight.reshape(-1).astype(np.float32)))
        s = schemas.load("routing")
        cols = [
            pa.array(self.step.astype(np.int32)), pa.array(self.layer.astype(np.int32)),
            pa.array(self.rank.astype(np.int32)), pa.array(self.token.astype(np.int32)), experts, weights,
        ]
        return pa.Table.from_arrays(cols, schema=s.arrow_schema(self.meta.to_dict()))

    @classmethod
    def from_arrow(cls, table: pa.Table, meta: dict[str, Any], where: str = "routing") -> "Routing":
        """Build from a conformed ``routing.v1`` table. Checks shape only (equal top-k per row);
        semantic checks (ranges, duplicates) are :func:`tracekit.workload.validate.check_routing`'s."""
        m = RoutingMeta.from_dict(meta, where)
        n = table.num_rows
        cols = {}
        for name in ("step", "layer", "rank", "token"):
            cols[name] = table.column(name).to_numpy().astype(np.int32, copy=False)
        mats = {}
        for name, dtype in (("topk_expert", np.int32), ("topk_weight", np.float32)):
            arr = table.column(name).combine_chunks()
            if arr.null_count:
                row = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
                raise TracekitError(f"column {name} row {row}: null list", where=where,
                                    fix="every token needs its top-k list")
            lengths = arr.value_lengths().to_numpy()
            k = int(lengths[0]) if n else 0
            bad = np.flatnonzero(lengths != k)
            if bad.size:
                raise TracekitError(
                    f"column {name} row {int(bad[0])}: {int(lengths[bad[0]])} entries where row 0 has {k}",
                    where=where, fix="every row needs the same top-k length; pad with -1",
                )
            values = arr.flatten()
            if values.null_count:
                pos = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
                raise TracekitError(f"column {name} row {pos // max(k, 1)}: null entry", where=where,
                                    fix="use -1 for masked experts and 0 for their weights")
            mats[name] = values.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(n, k)
        if mats["topk_expert"].shape != mats["topk_weight"].shape:
            raise TracekitError(
                f"topk_expert has {mats['topk_expert'].shape[1]} entries per row, topk_weight "
                f"{mats['topk_weight'].shape[1]}", where=where, fix="give one weight per expert",
            )
        return cls(meta=m, **cols, **mats)
