import math

import numpy as np
import pytest

from tracekit.errors import TracekitError
from tracekit.io.tables import write_table
from tracekit.workload import _route_kernel as K
from tracekit.workload import synth as S
from tracekit.workload.synth import SynthConfig, preset, route, synth
from tracekit.workload.validate import check_routing
from same_bytes import assert_same_bytes

MASK = (1 << 64) - 1


# A pure-Python twin of the numba kernel: the same streams, then DeepEP's recipe written plainly.
def _mix(z):
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def _row_key(seed, step, layer, rank, token):
    g = 0x9E3779B97F4A7C15
    k = _mix((seed + g) & MASK)
    for v in (step, layer, rank, token):
        k = _mix((k + v * g + g) & MASK)
    return k


def _half_normal(u):
    a, b, c, d = K._A, K._B, K._C, K._D
    q = 0.5 * u
    if q <= K._Q_CENTRAL:
        r = q * q
        return ((((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q
                / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1.0))
    t = math.sqrt(-2.0 * math.log(0.5 * (1.0 - u)))
    return -((((((c[0] * t + c[1]) * t + c[2]) * t + c[3]) * t + c[4]) * t + c[5])
             / ((((d[0] * t + d[1]) * t + d[2]) * t + d[3]) * t + 1.0))


def _reference_row(config, step, layer, rank, token):
    bias = S.expert_bias(config, layer)
    key = _row_key(config.seed, step, layer, rank, token)
    scores = []
    for e in range(config.experts):
        x = _mix((key + (e + 1) * 0x9E3779B97F4A7C15) & MASK)
        if config.skew:
            scores.append(1.0 + _half_normal((x >> 11) / 2.0**53) + bias[e])
        else:
            scores.append((x >> 12) / 2.0**52)  # same order as the uniform
    groups = config.num_nodes
    per_group = config.experts // groups
    if groups > config.max_nodes:
        gscore = [max(scores[g * per_group:(g + 1) * per_group]) for g in range(groups)]
        chosen = sorted(range(groups), key=lambda g: (-gscore[g], g))[: config.max_nodes]
        candidates = [e for e in range(config.experts) if e // per_group in chosen]
    else:
        candidates = list(range(config.experts))
    return sorted(candidates, key=lambda e: (-scores[e], e))[: config.topk]


@pytest.mark.parametrize("config", [
    SynthConfig(ep=4, gpus_per_node=2, experts=16, topk=3, max_nodes=1, tokens=40, seed=5),  # grouped
    SynthConfig(ep=8, gpus_per_node=8, experts=32, topk=4, tokens=30, seed=1),  # one node: no grouping
    SynthConfig(ep=8, gpus_per_node=2, experts=64, topk=6, max_nodes=2, tokens=25, skew=0.7, seed=9),  # skew
    SynthConfig(ep=6, gpus_per_node=6, experts=36, topk=5, tokens=25, skew=1.5, seed=2**40 + 3),
])
def test_kernel_equals_python_reference(config):
    config.check()
    rank = np.repeat(np.arange(config.ep), config.tokens).astype(np.int32)
    token = np.tile(np.arange(config.tokens), config.ep).astype(np.int32)
    got = route(config, 1, 2, rank, token)
    want = np.array([_reference_row(config, 1, 2, int(r), int(t)) for r, t in zip(rank, token)])
    np.testing.assert_array_equal(got, want)


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    c = SynthConfig(ep=16, tokens=64, layers=2, steps=2, skew=0.5, rank_imbalance=0.3, masked=7, seed=11)
    a, b = synth(c), synth(c)
    for name in ("step", "layer", "rank", "token", "topk_expert", "topk_weight"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    pa_ = write_table(a.to_arrow(), tmp_path / "a.parquet", "routing", a.meta.to_dict()).read_bytes()
    pb = write_table(b.to_arrow(), tmp_path / "b.parquet", "routing", b.meta.to_dict()).read_bytes()
    assert_same_bytes(pa_, pb, "two writes")
    other = synth(SynthConfig(**{**c.to_dict(), "seed": 12}))
    assert not np.array_equal(other.topk_expert, a.topk_expert)


def test_table_shape_order_and_validity():
    c = SynthConfig(ep=16, tokens=32, layers=3, steps=2, masked=5)
    r = synth(c)
    assert r.num_rows == 2 * 3 * 16 * 32
    check_routing(r, "synth")  # sorted, in range, distinct top-k, weights finite and >= 0
    assert r.topk_expert.dtype == np.int32 and r.topk_weight.dtype == np.float32
    assert r.steps_layers() == [(s, l) for s in range(2) for l in range(3)]
    assert r.meta.seed == 0 and "--masked 5" in r.meta.provenance


def test_topk_distinct_and_group_limit():
    c = SynthConfig(ep=64, gpus_per_node=8, experts=256, topk=8, max_nodes=2, tokens=64)
    r = synth(c)
    e = r.topk_expert
    s = np.sort(e, axis=1)
    assert (s[:, 1:] != s[:, :-1]).all()
    nodes = e // (256 // 8)  # 8 nodes of 32 experts
    per_token = np.array([len(set(row)) for row in nodes.tolist()])
    assert per_token.max() <= 2
    assert (per_token == 2).mean() > 0.9  # top-8 of two nodes almost always uses both


def test_presets_and_defaults():
    assert preset("decode").tokens_per_rank == 128
    assert preset("prefill").tokens_per_rank == 4096
    assert preset("prefill", tokens=16384).tokens_per_rank == 16384
    d = SynthConfig()
    assert (d.hidden, d.topk, d.experts, d.gpus_per_node, d.max_nodes, d.dispatch_dtype, d.combine_dtype) == \
        (7168, 8, 256, 8, 4, "fp8", "bf16")


def test_large_sizes_ep320_and_288_experts():
    r = synth(SynthConfig(ep=320, experts=320, tokens=2, max_nodes=4))
    assert r.num_rows == 640 and r.meta.num_nodes == 40
    check_routing(r, "ep320")
    r = synth(SynthConfig(ep=32, experts=288, tokens=8, topk=8))
    assert r.topk_expert.max() < 288
    check_routing(r, "e288")


def _expert_load(r):
    return np.bincount(r.topk_expert[r.topk_expert >= 0], minlength=r.meta.num_experts)


def test_skew_raises_expert_imbalance():
    base = SynthConfig(ep=16, tokens=512, seed=3)
    ratios = []
    for skew in (0.0, 0.25, 1.0):
        load = _expert_load(synth(SynthConfig(**{**base.to_dict(), "skew": skew})))
        ratios.append(load.max() / load.mean())
    assert ratios[0] < 1.5 < ratios[1] < ratios[2]
    # Zipf(0.25) over 256 experts puts ~3x the mean on the hottest one
    assert 2.0 < ratios[1] < 4.5


def test_rank_imbalance_changes_per_rank_counts():
    flat = synth(SynthConfig(ep=32, tokens=128, rank_imbalance=0.0))
    assert (np.bincount(flat.rank) == 128).all()
    skewed = synth(SynthConfig(ep=32, tokens=128, rank_imbalance=1.0, steps=2))
    for s in range(2):
        counts = np.bincount(skewed.rank[skewed.step == s], minlength=32)
        assert counts.max() > 1.5 * counts.mean() and abs(counts.mean() - 128) < 2
    # the same counts in every layer of a step
    multi = synth(SynthConfig(ep=8, tokens=64, rank_imbalance=0.5, layers=3))
    per_layer = [np.bincount(multi.rank[multi.layer == l], minlength=8) for l in range(3)]
    assert all((p == per_layer[0]).all() for p in per_layer)


def test_masked_entries_per_rank_batch():
    r = synth(SynthConfig(ep=8, tokens=16, topk=4, experts=64, masked=10, layers=2))
    for layer in range(2):
        for rank in range(8):
            rows = (r.layer == layer) & (r.rank == rank)
            assert (r.topk_expert[rows] == -1).sum() == 10
    assert (r.topk_weight[r.topk_expert == -1] == 0).all()


def test_weights_are_abs_randn():
    r = synth(SynthConfig(ep=16, tokens=512))
    w = r.topk_weight.astype(np.float64)
    assert (w >= 0).all()
    assert abs(w.mean() - math.sqrt(2 / math.pi)) < 0.01
    assert abs(w.var() - (1 - 2 / math.pi)) < 0.01


def test_matches_deepep_recipe_in_distribution():
    """Our streams + inverse CDF vs numpy's randn with DeepEP's float scores: the same statistics."""
    c = SynthConfig(ep=32, gpus_per_node=8, experts=256, topk=8, max_nodes=2, tokens=400, seed=4)
    ours = synth(c).topk_expert
    rng = np.random.default_rng(0)
    n, groups = ours.shape[0], 4
    scores = np.abs(rng.standard_normal((n, 256))) + 1
    gscore = scores.reshape(n, groups, -1).max(axis=2)
    top_groups = np.argsort(-gscore, axis=1)[:, :2]
    keep = np.zeros((n, groups), bool)
    np.put_along_axis(keep, top_groups, True, axis=1)
    masked = np.where(np.repeat(keep, 64, axis=1), scores, 0.0)
    theirs = np.argsort(-masked, axis=1)[:, :8]

    def stats(e):
        ranks = e // 8
        per_rank = np.array([len(set(row)) for row in ranks.tolist()])
        experts_per_node = np.array([np.bincount(row // 64, minlength=4).max() for row in e])
        return per_rank.mean(), experts_per_node.mean(), np.bincount(e.ravel(), minlength=256).std()

    a, b = stats(ours), stats(theirs)
    assert abs(a[0] - b[0]) < 0.05 and abs(a[1] - b[1]) < 0.05
    assert 0.7 < a[2] / b[2] < 1.3


@pytest.mark.parametrize("field,value,flag", [
    ("experts", 250, "--experts 250"), ("ep", 12, "--ep 12"), ("topk", 300, "--topk 300"),
    ("preset", "train", "--preset train"), ("skew", -1.0, "--skew -1.0"), ("masked", 10**9, "--masked"),
    ("dispatch_dtype", "fp4", "--dispatch-dtype fp4"), ("tokens", 0, "--tokens 0"), ("ep", 0, "--ep 0"),
    ("skew", float("nan"), "--skew nan"), ("max_nodes", 0, "--max-nodes 0"), ("seed", -1, "--seed -1"),
])
def test_bad_config_names_the_flag(field, value, flag):
    with pytest.raises(TracekitError) as exc:
        synth(SynthConfig(**{field: value}))
    text = str(exc.value)
    assert flag in text and "expected" in text and "(" in text and "\n" not in text


def test_topk_above_group_limit_is_rejected():
    with pytest.raises(TracekitError, match="--topk 40: expected at most 32"):
        SynthConfig(ep=32, experts=64, topk=40, max_nodes=2).check()


def test_routing_on_one_thread_equals_the_parallel_kernel():
    """Small inputs are routed on one thread (cheaper to compile), large ones in parallel chunks:
    each row depends only on its own key, so both give the same experts."""
    rng = np.random.default_rng(3)
    n = 5000
    rank, token = rng.integers(0, 16, n).astype(np.int64), rng.integers(0, 4096, n).astype(np.int64)
    bias = rng.normal(size=256)
    outs = []
    for kernel in (K._route_rows_parallel, K.route_rows):
        out = np.empty((n, 8), np.int32)
        kernel(np.uint64(7), 1, 2, rank, token, bias, True, 4, 2, out)
        outs.append(out)
    assert n < K.PARALLEL_ROWS and np.array_equal(outs[0], outs[1])
