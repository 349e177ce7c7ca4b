"""Compute kernels of a MoE layer as roofline tasks, and how their time grows when SMs are taken.

A small model description (:class:`ModelDesc`: hidden, heads, MLA ranks, FFN sizes, context, dtype)
gives, for ``tokens`` tokens on one rank, each kernel's FLOPs, HBM bytes and output tiles:

* ``attention``: MLA-style (DeepSeek-V3 report, section 2.1.1) projections ``q_a`` (H x q_lora),
  ``q_b`` (q_lora x heads (nope + rope)), ``kv_a`` (H x (kv_lora + rope)), ``kv_b`` (kv_lora x heads
  (nope + v)), ``o`` (heads v x H), as one GEMM of ``tokens`` rows over all those weights; and the
  attention core in its weight-absorbed form, as decode kernels run it: per token and head, scores
  over ``context`` cached latents of ``kv_lora + rope`` elements and a weighted sum of ``kv_lora``
  elements, ``2 context heads (2 kv_lora + rope)`` FLOPs; bytes: decode reads each request's cache
  (``tokens x context x (kv_lora + rope)`` elements), prefill/training use per-head keys and values
  (``2 context heads (nope + rope + v)`` FLOPs) and read Q, K, V and write the output once (a
  FlashAttention-style IO bound).
* ``shared``: the shared experts' gate/up/down GEMMs, ``6 tokens H F_shared`` FLOPs, weights read once.
* ``experts``: the rank's routed experts as one grouped GEMM (each expert with tokens reads its
  ``3 H F`` weights once).

SM scaling rule (its shape measured on the lent H200, ``gemm_sm_reserved`` in docs/calibration.md:
a cuBLAS bf16 GEMM of 4096x7168x2048 takes 147 us on 132 SMs and 271-282 us with 8-48 SMs held, the
step of a second wave; the rule gives that step with ~256x256 work units, while the 128x128 tiles
below, DeepGEMM's block and not cuBLAS's, give 1.25-1.75x; DeepGEMM itself is not measured): a kernel
splits its output into ``tiles`` of 128 x 128 (the CUTLASS/DeepGEMM Hopper block; attention: one
tile per (token, 64 heads, 64 cached tokens), as FlashMLA splits long contexts over the SMs) and runs them in waves over the ``s`` SMs it has:

    compute_ns(s) = ceil(tiles / s) * flops / tiles / (gemm_tflops / sms)
    memory_ns(s)  = bytes / min(hbm_bandwidth, s * sm_copy_bandwidth)
    time(s)       = max(compute_ns(s), memory_ns(s))

so a large GEMM slows as ``1 / s`` (``gemm_tflops`` is the measured full-chip rate, shared evenly by
the SMs), a small one not at all until ``s`` drops below its tile count, and a memory-bound one only
once ``s`` SMs can no longer saturate HBM (one SM copies ``sm_copy_bandwidth``, measured). Every
parameter comes from the hardware profile, which names its source. Launch overhead is counted
apart (``launches``), as fused kernels save it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from tracekit.errors import TracekitError
from tracekit.hardware import Profile

TILE = 128  # output rows and columns per thread-block tile (CUTLASS / DeepGEMM Hopper GEMM blocks)
ATTN_HEADS_PER_TILE = 64  # FlashMLA: one block per (request, 64 heads) ...
ATTN_KV_BLOCK = 64  # ... and per 64-token KV block: its tile scheduler splits long contexts over all SMs
DTYPE_BYTES = {"bf16": 2, "fp8": 1}
WORKLOADS = ("decode", "prefill", "train")


@dataclass(frozen=True)
class ModelDesc:
    """A DeepSeek-V3-like layer (defaults: the report's Table/section 4.2 hyper-parameters)."""

    hidden: int = 7168
    heads: int = 128
    q_lora: int = 1536
    kv_lora: int = 512
    qk_nope: int = 128
    qk_rope: int = 64
    v_head: int = 128
    shared_experts: int = 1
    expert_ffn: int = 2048
    context: int = 4096  # cached tokens each decode token attends to; prefill/train: mean causal context
    dtype: str = "bf16"  # weights and activations of the compute kernels
    workload: str = "decode"
    layers: int = 61  # layers per forward pass (TPOT, step time); the report's 61, each costed as the replayed one

    def check(self) -> "ModelDesc":
        for name in ("hidden", "heads", "q_lora", "kv_lora", "qk_nope", "qk_rope", "v_head", "expert_ffn", "context"):
            if getattr(self, name) < 1:
                raise TracekitError(f"--model-{name.replace('_', '-')}={getattr(self, name)}: expected a positive size",
                                    fix=f"e.g. --model-{name.replace('_', '-')} {getattr(ModelDesc, name)}")
        if self.shared_experts < 0:
            raise TracekitError(f"--model-shared-experts={self.shared_experts}: expected 0 or more", fix="e.g. 1")
        if self.dtype not in DTYPE_BYTES:
            raise TracekitError(f"--model-dtype={self.dtype!r}: expected one of {', '.join(DTYPE_BYTES)}",
                                fix="e.g. --model-dtype bf16")
        if self.workload not in WORKLOADS:
            raise TracekitError(f"--model-workload={self.workload!r}: expected one of {', '.join(WORKLOADS)}",
                                fix="e.g. --model-workload decode")
        return self

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Kernel:
    """One compute kernel's work: FLOPs, HBM bytes, output tiles."""

    name: str
    flops: float
    bytes: float
    tiles: int


def kernel_ns(k: Kernel, hw: Profile, sms: int) -> int:
    """Duration of ``k`` on ``sms`` SMs (see the module docstring), integer ns, launch excluded."""
    if k.tiles <= 0:
        return 0
    if sms < 1:
        raise TracekitError(f"a compute kernel got {sms} SMs", fix="leave at least one SM to compute (--num-sms)")
    per_sm = hw.gpu.gemm_tflops * 1e3 / hw.gpu.sms  # FLOP per ns per SM
    compute = -(-k.tiles // sms) * (k.flops / k.tiles) / per_sm
    memory = k.bytes / min(hw.gpu.hbm_bandwidth_gbyte_s, sms * hw.gpu.sm_copy_bandwidth_gbyte_s)
    return int(np.ceil(max(compute, memory)))


def _gemm_tiles(m: int, n: int) -> int:
    return -(-m // TILE) * -(-n // TILE)


def attention(md: ModelDesc, tokens: int) -> list[Kernel]:
    """Projections and attention core for ``tokens`` tokens on one rank."""
    if tokens <= 0:
        return []
    b = DTYPE_BYTES[md.dtype]
    h, nh = md.hidden, md.heads
    proj_out = [md.q_lora, nh * (md.qk_nope + md.qk_rope), md.kv_lora + md.qk_rope, nh * (md.qk_nope + md.v_head), h]
    proj_in = [h, md.q_lora, h, md.kv_lora, nh * md.v_head]
    weights = sum(i * o for i, o in zip(proj_in, proj_out))
    proj = Kernel("attn_proj", 2.0 * tokens * weights, b * (weights + tokens * (sum(proj_in) + sum(proj_out))),
                  sum(_gemm_tiles(tokens, o) for o in proj_out))
    latent = md.kv_lora + md.qk_rope
    if md.workload == "decode":  # weight-absorbed: scores over latents, values are latents
        flops = 2.0 * tokens * md.context * nh * (latent + md.kv_lora)
        io = tokens * md.context * latent * b
    else:  # per-head keys and values (prefill and training kernels do not absorb)
        flops = 2.0 * tokens * md.context * nh * (md.qk_nope + md.qk_rope + md.v_head)
        io = tokens * b * (nh * (md.qk_nope + md.qk_rope) + latent + 2 * nh * md.v_head)
    core = Kernel("attn_core", flops, io, tokens * -(-nh // ATTN_HEADS_PER_TILE) * -(-md.context // ATTN_KV_BLOCK))
    return [proj, core]


def shared_expert(md: ModelDesc, tokens: int) -> list[Kernel]:
    if tokens <= 0 or md.shared_experts == 0:
        return []
    f = md.expert_ffn * md.shared_experts
    return [_ffn("shared", np.array([tokens]), md.hidden, f, DTYPE_BYTES[md.dtype])]


def experts(md: ModelDesc, tokens_per_expert: np.ndarray) -> list[Kernel]:
    """The routed experts of one rank (tokens per local expert) as one grouped GEMM."""
    t = np.asarray(tokens_per_expert, np.int64)
    if t.sum() == 0:
        return []
    return [_ffn("experts", t, md.hidden, md.expert_ffn, DTYPE_BYTES[md.dtype])]


def _ffn(name: str, tokens: np.ndarray, h: int, f: int, b: int) -> Kernel:
    """Gate+up (H -> 2F) and down (F -> H) GEMMs over groups of ``tokens`` rows, weights read once each."""
    t = tokens[tokens > 0]
    rows = -(-t // TILE)
    tiles = int((rows * (-(-2 * f // TILE) + -(-h // TILE))).sum())
    flops = 6.0 * float(t.sum()) * h * f
    bytes_ = b * (3.0 * h * f * t.size + float(t.sum()) * (2 * h + 3 * f))
    return Kernel(name, flops, bytes_, tiles)


def layer_kernels(md: ModelDesc, tokens: int, tokens_per_expert: np.ndarray) -> dict[str, list[Kernel]]:
    """The compute of one MoE layer on one rank, by part."""
    return {"attention": attention(md, tokens), "shared": shared_expert(md, tokens),
            "experts": experts(md, tokens_per_expert)}


#: Backward of the attention core over its forward: FlashAttention-2's backward runs five matrix
#: products per block where the forward runs two (Dao 2023, section 3.1).
ATTN_CORE_BACKWARD = 2.5


def training_blocks(md: ModelDesc, tokens: int, tokens_per_expert: np.ndarray) -> dict[str, list[Kernel]]:
    """The six blocks of one layer that DualPipe arranges: attention and MLP forward (F), backward
    for inputs (B) and for weights (W). A GEMM's B and W each repeat its forward FLOPs and bytes (the
    input gradient and the weight gradient are each one product of the same shape); the attention
    core has no weights, and its backward is ``ATTN_CORE_BACKWARD`` forwards."""
    attn = attention(md, tokens)
    proj = [k for k in attn if k.name == "attn_proj"]
    core = [k for k in attn if k.name == "attn_core"]
    core_b = [Kernel("attn_core_b", k.flops * ATTN_CORE_BACKWARD, k.bytes * ATTN_CORE_BACKWARD, k.tiles) for k in core]
    mlp = shared_expert(md, tokens) + experts(md, tokens_per_expert)
    return {"attn_f": attn, "attn_b": proj + core_b, "attn_w": proj, "mlp_f": mlp, "mlp_b": mlp, "mlp_w": mlp}


def part_ns(kernels: list[Kernel], hw: Profile, sms: int) -> int:
    """Time of a part's kernels run back to back on ``sms`` SMs (launches excluded)."""
    return sum(kernel_ns(k, hw, sms) for k in kernels)
