"""Synthetic MoE routing in the style of DeepEP's tests, with skew knobs.

Each token scores every expert with ``|randn| + 1`` (plus an optional Zipf popularity bias), keeps
only the experts of its top ``max_nodes`` node groups (group score = the best expert score on the
node, as DeepEP's internode test does), and picks its top-k experts by score. Gate weights are
``|randn|`` (float32), independent of the scores, as in DeepEP's tests.

How the scores are drawn (so that ~1M tokens x 256 experts take well under a second and no
score matrix is ever materialised): every (seed, step, layer, rank, token) has its own
counter-based stream (splitmix64); each expert gets one 53-bit uniform ``u`` and its score is
``1 + F^-1(u) + bias[e]`` with ``F^-1`` the inverse CDF of ``|N(0, 1)|``. Without skew all biases are
equal, so the order of the scores is the order of ``u`` and the inverse CDF is skipped: the chosen
experts have exactly the distribution of DeepEP's ``torch.randn(...).abs() + 1`` followed by top-k.
The whole table depends only on the config (seed included), never on the thread count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from tracekit.errors import TracekitError
from tracekit.workload.routing import DTYPES, Routing, RoutingMeta

#: Tokens per rank of each preset (DeepEP's low-latency and normal-kernel test sizes).
PRESETS: dict[str, int] = {"decode": 128, "prefill": 4096}
#: Most tokens per rank a preset-style run may ask for (prefill deployments use 16K).
MAX_TOKENS_PER_RANK = 65536
MAX_EP = 1024
MAX_EXPERTS = 4096
MAX_TOPK = 64
#: Arrow list offsets are int32: rows x top-k must stay below this.
MAX_SELECTIONS = 2**31 - 1
#: Scale of the popularity bias ``SKEW_SCALE * log(i ** -skew)`` of the expert with popularity rank i.
#: 0.45 is about the scale of the upper tail of |N(0,1)| where top-8 of 256 picks (~1/2.2), so the
#: share of selections an expert gets follows Zipf(skew) closely (measured log-log slope of load vs
#: popularity rank on 256 experts, top-8: 0.25 -> 0.25, 0.5 -> 0.48, 1.0 -> 0.89) until the hottest
#: experts are chosen by every token.
SKEW_SCALE = 0.45

_DOMAIN_COUNTS = 0
_DOMAIN_POPULARITY = 1
_DOMAIN_WEIGHTS = 2


@dataclass(frozen=True)
class SynthConfig:
    """Everything that determines a synthetic routing table (same config => same table).

    ``tokens`` overrides the preset's tokens per rank. ``skew`` is the Zipf exponent of the expert
    popularity bias (0 = none). ``rank_imbalance`` is the sigma of a log-normal factor on each rank's
    token count (0 = every rank has ``tokens``; the mean stays ``tokens``). ``masked`` entries per
    rank batch are set to -1 (weight 0), like DeepEP's low-latency test.

    >>> SynthConfig(preset="prefill", ep=32).check().num_nodes
    4
    """

    preset: str = "decode"
    ep: int = 16
    gpus_per_node: int = 8
    tokens: int | None = None
    hidden: int = 7168
    topk: int = 8
    experts: int = 256
    max_nodes: int = 4
    skew: float = 0.0
    rank_imbalance: float = 0.0
    masked: int = 0
    layers: int = 1
    steps: int = 1
    dispatch_dtype: str = "fp8"
    combine_dtype: str = "bf16"
    seed: int = 0

    @property
    def tokens_per_rank(self) -> int:
        """Mean tokens per rank: ``tokens`` if given, else the preset's."""
        return int(self.tokens) if self.tokens is not None else PRESETS.get(self.preset, 0)

    @property
    def num_nodes(self) -> int:
        return -(-self.ep // self.gpus_per_node)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def provenance(self) -> str:
        """The generator call that reproduces the table, as stored in the file metadata."""
        args = " ".join(f"--{f.name.replace('_', '-')} {getattr(self, f.name)}" for f in fields(self)
                        if getattr(self, f.name) is not None)
        return f"tracekit synth {args}"

    def check(self) -> "SynthConfig":
        """Raise :class:`TracekitError` naming the flag, the value, what was expected and the fix."""
        def bad(flag: str, value: Any, expected: str, fix: str) -> TracekitError:
            return TracekitError(f"--{flag} {value}: expected {expected}", where="synth", fix=fix)

        def integer(flag: str, value: Any, lo: int, hi: int, fix: str) -> None:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
                raise bad(flag, value, f"an integer in [{lo}, {hi}]", fix)

        if self.preset not in PRESETS:
            raise bad("preset", self.preset, f"one of {', '.join(PRESETS)}", "use --preset decode or --preset prefill")
        integer("ep", self.ep, 1, MAX_EP, "e.g. --ep 16 (2 nodes of 8 GPUs)")
        integer("gpus-per-node", self.gpus_per_node, 1, 64, "e.g. --gpus-per-node 8")
        if self.tokens is not None:
            integer("tokens", self.tokens, 1, MAX_TOKENS_PER_RANK, "tokens per rank, e.g. 128 (decode) or 4096 (prefill)")
        integer("hidden", self.hidden, 1, 1 << 20, "the model's hidden size, e.g. --hidden 7168")
        integer("experts", self.experts, 1, MAX_EXPERTS, "e.g. --experts 256")
        integer("topk", self.topk, 1, min(MAX_TOPK, self.experts), "at most the number of experts, e.g. --topk 8")
        integer("max-nodes", self.max_nodes, 1, 1 << 16, "e.g. --max-nodes 4 (DeepSeek-V3 routes each token to <= 4 nodes)")
        integer("layers", self.layers, 1, 1024, "e.g. --layers 1")
        integer("steps", self.steps, 1, 1 << 16, "e.g. --steps 1")
        integer("seed", self.seed, 0, 2**63 - 1, "a non-negative integer, e.g. --seed 0")
        for flag, value in (("skew", self.skew), ("rank-imbalance", self.rank_imbalance)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not 0 <= value <= 16:
                raise bad(flag, value, "a number in [0, 16]", f"0 turns it off; e.g. --{flag} 1.0")
        for flag, value in (("dispatch-dtype", self.dispatch_dtype), ("combine-dtype", self.combine_dtype)):
            if value not in DTYPES:
                raise bad(flag, value, f"one of {', '.join(DTYPES)}", f"e.g. --{flag} bf16")
        if self.ep > self.gpus_per_node and self.ep % self.gpus_per_node:
            raise bad("ep", self.ep, f"a multiple of --gpus-per-node {self.gpus_per_node} (whole nodes)",
                      f"e.g. --ep {self.ep // self.gpus_per_node * self.gpus_per_node or self.gpus_per_node}")
        if self.experts % self.ep:
            raise bad("experts", self.experts, f"a multiple of --ep {self.ep} (experts are spread evenly over ranks)",
                      f"e.g. --experts {max(self.ep, self.experts // self.ep * self.ep)}")
        allowed = min(self.max_nodes, self.num_nodes) * (self.experts // self.num_nodes)
        if self.topk > allowed:
            raise bad("topk", self.topk, f"at most {allowed} (experts on --max-nodes {self.max_nodes} nodes)",
                      "raise --max-nodes or lower --topk")
        integer("masked", self.masked, 0, self.tokens_per_rank * self.topk,
                "top-k entries set to -1 per rank batch, at most tokens x topk")
        rows = self._expected_rows()
        if rows * self.topk > MAX_SELECTIONS:
            raise TracekitError(
                f"{rows} rows x top-k {self.topk} exceed {MAX_SELECTIONS} selections in one table", where="synth",
                fix="lower --steps, --layers, --tokens or --ep and write several files",
            )
        return self

    def _expected_rows(self) -> int:
        # rank factors are normalised to mean 1, so a step holds tokens x ep rows (+ rounding)
        return (self.tokens_per_rank * self.ep + self.ep) * self.layers * self.steps

    def meta(self) -> RoutingMeta:
        return RoutingMeta(
            num_experts=self.experts, ep_size=self.ep, gpus_per_node=self.gpus_per_node, hidden=self.hidden,
            dispatch_dtype=self.dispatch_dtype, combine_dtype=self.combine_dtype, seed=self.seed,
            provenance=self.provenance(),
        )


def preset(name: str, **overrides: Any) -> SynthConfig:
    """A checked config of preset ``name`` with field overrides, e.g. ``preset("prefill", ep=32)``."""
    return replace(SynthConfig(preset=name), **overrides).check()


# ----------------------------------------------------------------------------------------------
# Random streams


def _rng(seed: int, *key: int) -> np.random.Generator:
    """Independent numpy generator for one (domain, ...) key of a seed."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=key))


def tokens_per_rank(config: SynthConfig, step: int) -> np.ndarray:
    """int64[ep]: tokens on each rank in ``step`` (the same for every layer of the step)."""
    t = config.tokens_per_rank
    if config.rank_imbalance == 0:
        return np.full(config.ep, t, dtype=np.int64)
    z = _rng(config.seed, _DOMAIN_COUNTS, step).standard_normal(config.ep)
    w = np.exp(config.rank_imbalance * z)
    w *= config.ep / w.sum()
    return np.floor(t * w + 0.5).astype(np.int64)


def expert_bias(config: SynthConfig, layer: int) -> np.ndarray:
    """float64[experts]: the popularity bias of each expert in ``layer`` (all zero without skew).

    A seeded permutation gives each expert a popularity rank i (1-based, per layer, fixed across
    steps); its bias is ``SKEW_SCALE * log(i ** -skew)``: the log of a Zipf weight, so that selection
    shares follow Zipf(skew) roughly, as a Gumbel bias would exactly.
    """
    if config.skew == 0:
        return np.zeros(config.experts, dtype=np.float64)
    order = _rng(config.seed, _DOMAIN_POPULARITY, layer).permutation(config.experts)
    popularity = np.empty(config.experts, dtype=np.float64)
    popularity[order] = np.arange(1, config.experts + 1, dtype=np.float64)
    return -SKEW_SCALE * float(config.skew) * np.log(popularity)


def route(config: SynthConfig, step: int, layer: int, rank: np.ndarray, token: np.ndarray) -> np.ndarray:
    """int32[N, topk]: the top-k experts (best first, before masking) of the given rows."""
    out = np.empty((rank.shape[0], config.topk), dtype=np.int32)
    bias = expert_bias(config, layer)
    from tracekit.workload._route_kernel import route_rows  # numba: imported only when routing

    route_rows(np.uint64(config.seed), int(step), int(layer), rank.astype(np.int64), token.astype(np.int64), bias,
               bool(config.skew != 0), int(config.num_nodes), int(config.max_nodes), out)
    return out


# ----------------------------------------------------------------------------------------------
# The table


def synth(config: SynthConfig, on_layer: Callable[[], None] | None = None) -> Routing:
    """A routing table for ``config``: rows sorted by (step, layer, rank, token). ``on_layer`` is
    called after each (step, layer) is generated (for a progress bar)."""
    config.check()
    step_counts = [tokens_per_rank(config, s) for s in range(config.steps)]
    per_layer = [int(c.sum()) for c in step_counts]
    total = sum(per_layer) * config.layers
    if total * config.topk > MAX_SELECTIONS:
        raise TracekitError(f"{total} rows x top-k {config.topk} exceed {MAX_SELECTIONS} selections",
                            where="synth", fix="lower --rank-imbalance, --steps, --layers or --tokens")
    k = config.topk
    step_col = np.empty(total, dtype=np.int32)
    layer_col = np.empty(total, dtype=np.int32)
    rank_col = np.empty(total, dtype=np.int32)
    token_col = np.empty(total, dtype=np.int32)
    experts = np.empty((total, k), dtype=np.int32)
    weights = np.empty((total, k), dtype=np.float32)
    pos = 0
    for s, counts in enumerate(step_counts):
        n = per_layer[s]
        ranks = np.repeat(np.arange(config.ep, dtype=np.int32), counts)
        starts = np.cumsum(counts) - counts
        tokens = (np.arange(n, dtype=np.int64) - np.repeat(starts, counts)).astype(np.int32)
        for layer in range(config.layers):
            sl = slice(pos, pos + n)
            step_col[sl] = s
            layer_col[sl] = layer
            rank_col[sl] = ranks
            token_col[sl] = tokens
            experts[sl] = route(config, s, layer, ranks, tokens)
            rng = _rng(config.seed, _DOMAIN_WEIGHTS, s, layer)
            w = weights[sl]
            rng.standard_normal(out=w.reshape(-1), dtype=np.float32)
            np.abs(w, out=w)
            if config.masked:
                _mask(experts[sl], w, counts, starts, config.masked, rng)
            pos += n
            if on_layer is not None:
                on_layer()
    return Routing(step=step_col, layer=layer_col, rank=rank_col, token=token_col, topk_expert=experts,
                   topk_weight=weights, meta=config.meta())


def _mask(experts: np.ndarray, weights: np.ndarray, counts: np.ndarray, starts: np.ndarray, masked: int,
          rng: np.random.Generator) -> None:
    """Set ``masked`` distinct random top-k entries of each rank's batch to -1 (weight 0); a rank with
    fewer entries has all of them masked."""
    k = experts.shape[1]
    flat_e = experts.reshape(-1)
    flat_w = weights.reshape(-1)
    for count, start in zip(counts.tolist(), starts.tolist()):
        entries = count * k
        if entries == 0:
            continue
        pick = rng.choice(entries, size=min(masked, entries), replace=False) + start * k
        flat_e[pick] = -1
        flat_w[pick] = 0.0
