"""Routing dumps in: ``topk_idx`` (+ weights) from ``.npy``, ``.npz``, Parquet or CSV -> ``routing.v1``.

Frameworks dump the router's output as a ``[tokens, topk]`` integer array of expert ids (``-1``
for a masked choice), sometimes with the gate weights beside it. Shapes understood:

* ``[N, K]``: N tokens; split evenly over the ``ep`` ranks in order (rank = row // (N / ep)), or
  all on one rank with ``rank=R``;
* ``[R, T, K]``: T tokens on each of R = ep ranks;
* ``[L, R, T, K]``: the same for L layers.

``.npz`` files hold ``topk_idx`` (or ``topk_expert`` / ``indices``) and optionally
``topk_weights`` (``topk_weight`` / ``weights``), and may carry 1-D ``rank``, ``layer``, ``step``,
``token`` columns for [N, K] arrays. Parquet: a ``routing.v1`` table, or columns ``topk_idx`` (a
list per row) [+ ``topk_weights``] [+ rank/layer/step/token]. CSV: one column per choice
(``topk_idx_0``, ``topk_idx_1``, ... or ``e0``, ``e1``, ...), optional ``topk_weight_<k>`` /
``w<k>``, optional rank/layer/step/token, or a single ``topk_idx`` column of space/semicolon-
separated ids. Arrays are loaded with ``allow_pickle=False``. Without weights, each valid choice
weighs 1/(valid choices of its token).
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tracekit import schemas
from tracekit.errors import TracekitError
from tracekit.io.guard import input_file
from tracekit.workload.routing import Routing, RoutingMeta

_IDX_KEYS = ("topk_idx", "topk_expert", "topk_ids", "indices", "expert_ids")
_W_KEYS = ("topk_weights", "topk_weight", "weights", "topk_w")
_COLS = ("rank", "layer", "step", "token")


def _err(what: str, where: str, fix: str) -> TracekitError:
    return TracekitError(what, where=where, fix=fix)


def _check_npy_header(f: Any, size: int, where: str) -> None:
    """Refuse an array whose header claims more data than the file holds, or objects, before numpy
    allocates anything (a damaged header may claim terabytes)."""
    try:
        version = np.lib.format.read_magic(f)
        shape, _fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                  else np.lib.format.read_array_header_2_0(f))
        header = f.tell()
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise _err(f"not a readable .npy array ({str(exc).splitlines()[0][:160]})", where,
                   "save it with numpy.save / numpy.savez") from None
    if dtype.hasobject:
        raise _err(f"array of dtype {dtype}: object arrays are refused (never unpickled)", where,
                   "save a plain integer array (np.save(path, topk_idx.astype(np.int64)))")
    need = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if need > size - header:
        raise _err(f"header claims shape {shape} ({need} bytes) but only {max(size - header, 0)} bytes follow",
                   where, "the file is truncated or damaged; save it again")


def _load_npy(path: Path) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        _check_npy_header(f, path.stat().st_size, str(path))
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise _err(f"cannot load ({exc}); object arrays are refused", str(path),
                   "save a plain integer array (np.save(path, topk_idx.astype(np.int64)))") from None
    except (OSError, EOFError) as exc:
        raise _err(f"not a readable .npy file ({exc})", str(path), "save it with numpy.save") from None
    return {"topk_idx": arr}


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                with zf.open(info) as f:
                    _check_npy_header(f, info.file_size, f"{path}: member {info.filename}")
    except (OSError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, ValueError) as exc:
        raise _err(f"not a readable .npz file ({str(exc).splitlines()[0][:160]})", str(path),
                   "save it with numpy.savez") from None
    try:
        with np.load(path, allow_pickle=False) as z:
            out = {}
            for k in z.files:
                try:
                    out[k] = z[k]
                except ValueError as exc:
                    raise _err(f"array {k!r} cannot be loaded ({exc}); object arrays are refused", str(path),
                               "store plain numeric arrays") from None
    except (OSError, EOFError, zipfile.BadZipFile, ValueError) as exc:
        raise _err(f"not a readable .npz file ({exc})", str(path), "save it with numpy.savez") from None
    idx_key = next((k for k in _IDX_KEYS if k in out), None)
    if idx_key is None:
        raise _err(f"no top-k array among {sorted(out)}", str(path), f"name the expert-id array one of {', '.join(_IDX_KEYS)}")
    res = {"topk_idx": out[idx_key]}
    w_key = next((k for k in _W_KEYS if k in out), None)
    if w_key is not None:
        res["topk_weights"] = out[w_key]
    for c in _COLS:
        if c in out:
            res[c] = out[c]
    return res


def _list_column(df: pl.DataFrame, name: str, where: str) -> np.ndarray:
    col = df[name]
    lengths = col.list.len().to_numpy()
    if col.null_count() or (lengths.size and (lengths != lengths[0]).any()):
        raise _err(f"column {name}: rows differ in length or are null", where, "give every token the same top-k, -1 padded")
    k = int(lengths[0]) if lengths.size else 0
    return col.explode().to_numpy().reshape(len(df), k)


def _load_table(df: pl.DataFrame, where: str) -> dict[str, np.ndarray]:
    cols = df.columns
    out: dict[str, np.ndarray] = {}
    list_key = next((k for k in _IDX_KEYS if k in cols and isinstance(df.schema[k], pl.List)), None)
    if list_key is not None:
        out["topk_idx"] = _list_column(df, list_key, where)
        w_key = next((k for k in _W_KEYS if k in cols and isinstance(df.schema[k], pl.List)), None)
        if w_key is not None:
            out["topk_weights"] = _list_column(df, w_key, where)
    elif "topk_idx" in cols and df.schema["topk_idx"] == pl.String:
        parts = (df["topk_idx"].str.replace_all(r"[;,]", " ").str.strip_chars().str.split(" ")
                 .list.eval(pl.element().filter(pl.element() != "")))
        try:
            parts = parts.list.eval(pl.element().cast(pl.Int64))
        except pl.exceptions.PolarsError:
            raise _err("column topk_idx holds non-integers", where, "write expert ids as integers") from None
        out["topk_idx"] = _list_column(pl.DataFrame({"x": parts}), "x", where)
    elif "topk_idx" in cols and df.schema["topk_idx"].is_integer():
        out["topk_idx"] = df["topk_idx"].to_numpy().reshape(-1, 1)
    else:
        def numbered(patterns: tuple[str, ...]) -> list[str]:
            found = []
            for pat in patterns:
                rx = re.compile(pat)
                found = sorted((c for c in cols if rx.fullmatch(c)), key=lambda c: int(re.findall(r"\d+", c)[-1]))
                if found:
                    break
            return found

        idx_cols = numbered((r"topk_idx_?\d+", r"topk_expert_?\d+", r"expert_?\d+", r"e\d+"))
        if not idx_cols:
            raise _err(f"no top-k columns among {cols}", where,
                       "name them topk_idx_0, topk_idx_1, ... (or e0, e1, ...), or give a topk_idx list column")
        out["topk_idx"] = df.select(idx_cols).to_numpy()
        w_cols = numbered((r"topk_weights?_?\d+", r"weights?_?\d+", r"w\d+"))
        if w_cols:
            if len(w_cols) != len(idx_cols):
                raise _err(f"{len(idx_cols)} expert columns but {len(w_cols)} weight columns", where,
                           "give one weight per expert column")
            out["topk_weights"] = df.select(w_cols).to_numpy()
    for c in _COLS:
        if c in cols:
            out[c] = df[c].to_numpy()
    return out


def load_dump(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """The arrays of a routing dump (``topk_idx`` and what else it holds), by file type."""
    p = Path(path)
    where = str(p)
    if not p.is_file():
        raise _err("no such file", where, "check the path")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        return _load_npy(p)
    if suffix == ".npz":
        return _load_npz(p)
    if suffix in (".parquet", ".pq"):
        try:
            table = pq.read_table(p)
        except (pa.ArrowInvalid, OSError) as exc:
            raise _err(f"not a readable Parquet file ({str(exc).splitlines()[0]})", where, "write it again") from None
        return _load_table(pl.from_arrow(table), where)
    if suffix in (".csv", ".tsv"):
        try:
            df = pl.read_csv(p, separator="\t" if suffix == ".tsv" else ",")
        except pl.exceptions.PolarsError as exc:
            raise _err(f"not a readable CSV file ({str(exc).splitlines()[0]})", where, "write it again") from None
        return _load_table(df, where)
    raise _err(f"unknown routing dump type {suffix or '(none)'}", where, "use .npy, .npz, .parquet or .csv")


def routing_from_dump(path: str | os.PathLike[str], *, ep_size: int, num_experts: int, hidden: int,
                      gpus_per_node: int, dispatch_dtype: str = "fp8", combine_dtype: str = "bf16",
                      rank: int | None = None, step: int = 0, layer: int = 0) -> Routing:
    """Build a :class:`Routing` from a dump, checked: expert ids in [-1, num_experts), finite
    non-negative weights of the same shape."""
    where = str(path)
    input_file(path, "routing dump")
    if Path(path).suffix.lower() in (".parquet", ".pq"):
        try:
            sid = (pq.read_schema(path).metadata or {}).get(schemas.SCHEMA_KEY)
        except (pa.ArrowInvalid, OSError):
            sid = None
        if sid and sid.decode().startswith("routing."):
            from tracekit.io.tables import read_table

            table, meta, _s = read_table(path, "routing")
            return Routing.from_arrow(table, meta, where)
    arrays = load_dump(path)
    meta = RoutingMeta(num_experts=num_experts, ep_size=ep_size, gpus_per_node=gpus_per_node, hidden=hidden,
                       dispatch_dtype=dispatch_dtype, combine_dtype=combine_dtype,
                       provenance=f"import:routing {Path(path).name}")
    meta.check(where)
    idx = np.asarray(arrays["topk_idx"])
    if not np.issubdtype(idx.dtype, np.integer):
        if np.issubdtype(idx.dtype, np.floating) and np.all(np.isfinite(idx)) and np.all(idx == np.round(idx)):
            idx = idx.astype(np.int64)
        else:
            raise _err(f"topk_idx has dtype {idx.dtype}, not integers", where, "store expert ids as integers")
    w = arrays.get("topk_weights")
    if w is not None:
        w = np.asarray(w, dtype=np.float64)
        if w.shape != idx.shape:
            raise _err(f"topk_weights shape {w.shape} differs from topk_idx shape {idx.shape}", where,
                       "give one weight per expert id")
    cols = {c: np.asarray(arrays[c]) for c in _COLS if c in arrays}
    for c, v in cols.items():
        if v.ndim != 1 or v.shape[0] != (idx.shape[0] if idx.ndim else -1) or not np.issubdtype(v.dtype, np.integer):
            raise _err(f"column {c} has shape {v.shape} and dtype {v.dtype}; expected {idx.shape[:1]} integers "
                       f"(one per row of topk_idx)", where, f"give one integer {c} per token row")
        if v.size and (v.min() < 0 or v.max() >= 2**31):
            raise _err(f"column {c} holds {int(v.min() if v.min() < 0 else v.max())}, outside [0, 2^31)", where,
                       f"fix the dump's {c} column")
    if idx.ndim == 2:
        n, k = idx.shape
        ranks = cols.get("rank")
        if ranks is None:
            if rank is not None:
                if not 0 <= rank < ep_size:
                    raise _err(f"rank={rank} outside [0, {ep_size})", where, "pass a rank of the run")
                ranks = np.full(n, rank)
            elif n % ep_size:
                raise _err(f"{n} tokens do not split evenly over ep={ep_size} ranks", where,
                           "pass --rank R for a one-rank dump, or a [ranks, tokens, topk] array")
            else:
                ranks = np.repeat(np.arange(ep_size), n // ep_size)
        layers = cols.get("layer", np.full(n, layer))
        steps = cols.get("step", np.full(n, step))
        tokens = cols.get("token")
    elif idx.ndim in (3, 4):
        if cols:
            raise _err(f"rank/layer/step/token columns given with a {idx.ndim}-D array", where,
                       "give either a [N, K] array with columns, or a [R, T, K] / [L, R, T, K] array")
        lay = idx.shape[0] if idx.ndim == 4 else 1
        r, t, k = idx.shape[-3:]
        if r != ep_size:
            raise _err(f"array has {r} ranks but ep={ep_size}", where, "pass --ep matching the dump")
        idx = idx.reshape(lay * r * t, k)
        if w is not None:
            w = w.reshape(lay * r * t, k)
        n = idx.shape[0]
        layers = np.repeat(np.arange(lay) + layer, r * t)
        ranks = np.tile(np.repeat(np.arange(r), t), lay)
        steps = np.full(n, step)
        tokens = np.tile(np.arange(t), lay * r)
    else:
        raise _err(f"topk_idx has {idx.ndim} dimensions", where, "use [N, K], [R, T, K] or [L, R, T, K]")
    if idx.size == 0:
        raise _err(f"topk_idx of shape {idx.shape} holds no choices (empty dump)", where,
                   "dump at least one token with at least one top-k choice")
    bad = np.argwhere((idx < -1) | (idx >= num_experts))
    if bad.size:
        i, j = bad[0]
        raise _err(f"row {i} choice {j}: expert {int(idx[i, j])} outside [-1, {num_experts})", where,
                   "pass --experts matching the model, or fix the dump")
    ranks = np.asarray(ranks)
    if ranks.size and (ranks.min() < 0 or ranks.max() >= ep_size):
        raise _err(f"rank {int(ranks.max() if ranks.max() >= ep_size else ranks.min())} outside [0, {ep_size})",
                   where, "pass --ep matching the dump")
    valid = idx >= 0
    if w is None:
        per = np.maximum(valid.sum(axis=1, keepdims=True), 1)
        w = np.where(valid, 1.0 / per, 0.0)
    elif not np.all(np.isfinite(w)) or (w < 0).any():
        i, j = np.argwhere(~np.isfinite(w) | (w < 0))[0]
        raise _err(f"row {i} choice {j}: weight {w[i, j]} is not finite and >= 0", where, "fix the dump's weights")
    if tokens is None:
        # token index within its (step, layer, rank), in row order
        key = np.stack([np.asarray(steps), np.asarray(layers), ranks], axis=1)
        order = np.lexsort((np.arange(n), key[:, 2], key[:, 1], key[:, 0]))
        sk = key[order]
        starts = np.r_[True, (sk[1:] != sk[:-1]).any(axis=1)]
        group_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
        tok_sorted = np.arange(n) - group_start
        tokens = np.empty(n, np.int64)
        tokens[order] = tok_sorted
    order = np.lexsort((np.asarray(tokens), ranks, np.asarray(layers), np.asarray(steps)))
    return Routing(step=np.asarray(steps, np.int32)[order], layer=np.asarray(layers, np.int32)[order],
                   rank=ranks.astype(np.int32)[order], token=np.asarray(tokens, np.int32)[order],
                   topk_expert=idx.astype(np.int32)[order], topk_weight=w.astype(np.float32)[order], meta=meta)


def routing_summary(r: Routing) -> dict[str, Any]:
    """Counts for the import command's report line."""
    valid = r.topk_expert >= 0
    return {"rows": r.num_rows, "topk": r.topk, "ranks": int(np.unique(r.rank).size),
            "layers": len(r.steps_layers()), "masked": int((~valid).sum())}
