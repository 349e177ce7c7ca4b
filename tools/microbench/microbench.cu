// Single-GPU micro-benchmarks behind tracekit's per-token, per-chunk and host-side profile fields.
//
// Build and run (one GPU):   nvcc -O3 -std=c++17 -arch=sm_90 -o mb microbench.cu && ./mb > part.json
// tools/microbench/run_suite.py does both and adds the PyTorch parts (allocator, GEMM with SMs reserved).
// Output: one JSON object {"benchmarks": {name: [row, ...]}} on stdout; progress on stderr.
// Every device spin loop gives up after a timeout and sets an error flag, so a broken GPU or a lost
// store ends the run with an error instead of hanging it. Each row's columns are in docs/calibration.md.

#include <cuda_runtime.h>
#include <cuda_bf16.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#define CK(x) check_cuda((x), #x, __LINE__)
static void check_cuda(cudaError_t e, const char* what, int line) {
  if (e != cudaSuccess) {
    fprintf(stderr, "microbench: CUDA error %s at line %d: %s\n", cudaGetErrorString(e), line, what);
    exit(3);
  }
}

static const unsigned long long SPIN_TIMEOUT_NS = 2000000000ull;  // 2 s

__device__ __forceinline__ unsigned long long globaltimer() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ int4 ld_nc(const int4* p) {
  int4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.s32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
  return v;
}
__device__ __forceinline__ int ld_acquire_sys(const int* p) {
  int v;
  asm volatile("ld.acquire.sys.global.s32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}
__device__ __forceinline__ void st_release_sys(int* p, int v) {
  asm volatile("st.release.sys.global.s32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ void st_relaxed_sys(int* p, int v) {
  asm volatile("st.relaxed.sys.global.s32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
// Spin until *p >= target; returns false (and sets *err) after the timeout.
__device__ bool wait_at_least(const int* p, int target, int* err) {
  unsigned long long t0 = globaltimer();
  for (int i = 0;; ++i) {
    if (ld_acquire_sys(p) >= target) return true;
    if ((i & 255) == 255 && globaltimer() - t0 > SPIN_TIMEOUT_NS) {
      atomicExch(err, 1);
      return false;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------
__global__ void empty_kernel() {}

// HBM to HBM copy, 16-byte vectors, grid-stride (hbm_copy_per_sm).
__global__ void copy16(const int4* __restrict__ src, int4* __restrict__ dst, long long n) {
  long long stride = (long long)gridDim.x * blockDim.x;
  for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) dst[i] = ld_nc(src + i);
}

// The same copy with 4 vectors in flight per thread (loads first, then stores), as DeepEP's unrolled
// warp copies keep several loads outstanding: one SM's rate is bound by the bytes it has in flight.
__global__ void copy16_unroll4(const int4* __restrict__ src, int4* __restrict__ dst, long long n) {
  long long stride = (long long)gridDim.x * blockDim.x;
  long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    int4 v0 = ld_nc(src + i), v1 = ld_nc(src + i + stride), v2 = ld_nc(src + i + 2 * stride),
         v3 = ld_nc(src + i + 3 * stride);
    dst[i] = v0; dst[i + stride] = v1; dst[i + 2 * stride] = v2; dst[i + 3 * stride] = v3;
  }
  for (; i < n; i += stride) dst[i] = ld_nc(src + i);
}

// DeepEP-like send warp: each warp copies a contiguous range of tokens one at a time, the whole warp on
// one token (int4 lanes), then writes the token's metadata: source index, top-k indices and weights,
// and (FP8 payloads) the per-128-channel scales. With chunk > 0 the warp publishes a tail counter
// (warp sync + release store) after every `chunk` tokens (token_copy_loop).
struct CopyArgs {
  const int4* x; int4* out; int tokens; int n16;
  const int* topk_idx; const float* topk_w; int topk;
  const float* scales; int nscales;
  int* out_src; int* out_idx; float* out_w; float* out_scales;
  int chunk; int* tail;
};
__global__ void token_copy(CopyArgs a) {
  const int lane = threadIdx.x & 31;
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int nwarps = (gridDim.x * blockDim.x) >> 5;
  const int per = (a.tokens + nwarps - 1) / nwarps;
  const int t0 = warp * per, t1 = min(a.tokens, t0 + per);
  int done = 0;
  for (int t = t0; t < t1; ++t) {
    const int4* s = a.x + (size_t)t * a.n16;
    int4* d = a.out + (size_t)t * a.n16;
#pragma unroll 4
    for (int i = lane; i < a.n16; i += 32) d[i] = ld_nc(s + i);
    if (lane == 0) a.out_src[t] = t;
    if (lane < a.topk) {
      a.out_idx[t * a.topk + lane] = __ldg(a.topk_idx + t * a.topk + lane);
      a.out_w[t * a.topk + lane] = __ldg(a.topk_w + t * a.topk + lane);
    }
    for (int i = lane; i < a.nscales; i += 32) a.out_scales[(size_t)t * a.nscales + i] = __ldg(a.scales + (size_t)t * a.nscales + i);
    if (a.chunk > 0 && ++done % a.chunk == 0) {
      __syncwarp();
      if (lane == 0) st_release_sys(a.tail + warp, done);
    }
  }
}

// Producer/consumer ring on one GPU (chunk_sync): block 0 is the sender warp, block 1 the receiver
// warp (dynamic shared memory keeps them on different SMs). The sender waits for ring space (polls
// head), copies `chunk` tokens into the ring, then warp sync + release store of the tail; the
// receiver polls the tail (acquire), copies the new tokens out and stores its head (relaxed).
__global__ void chunk_ring(const int4* __restrict__ x, int4* ring, int4* __restrict__ out, int tokens, int n16,
                           int chunk, int ring_tokens, int* head, int* tail, int* err) {
  extern __shared__ int4 smem_pad[];
  (void)smem_pad;
  const int lane = threadIdx.x & 31;
  if (blockIdx.x == 0) {
    for (int sent = 0; sent < tokens;) {
      const int n = min(chunk, tokens - sent);
      int ok = 1;
      if (lane == 0) ok = wait_at_least(head, sent + n - ring_tokens, err);
      if (!__shfl_sync(0xffffffffu, ok, 0)) return;
      for (int t = sent; t < sent + n; ++t) {
        const int4* s = x + (size_t)t * n16;
        int4* d = ring + (size_t)(t % ring_tokens) * n16;
#pragma unroll 4
        for (int i = lane; i < n16; i += 32) d[i] = ld_nc(s + i);
      }
      sent += n;
      __syncwarp();
      if (lane == 0) st_release_sys(tail, sent);
    }
  } else {
    for (int got = 0; got < tokens;) {
      int avail = 0;
      if (lane == 0) avail = wait_at_least(tail, got + 1, err) ? ld_acquire_sys(tail) : -1;
      avail = __shfl_sync(0xffffffffu, avail, 0);
      if (avail < 0) return;
      for (int t = got; t < avail; ++t) {
        const int4* s = ring + (size_t)(t % ring_tokens) * n16;
        int4* d = out + (size_t)t * n16;
#pragma unroll 4
        for (int i = lane; i < n16; i += 32) d[i] = s[i];
      }
      got = avail;
      __syncwarp();
      if (lane == 0) st_relaxed_sys(head, got);
    }
  }
}

// Low-latency send (cast_fp8 / cast_int8): one block per token at a time. All threads cast the BF16
// token (8 values per thread, per-128-channel amax over 16 lanes) into the token's message (payload
// then float scales); then warp j < topk sends the message to its expert: lane 0 takes a slot with an
// atomic, the warp copies the message into the slot, lane 0 release-stores the slot's flag.
template <bool FP8>
__global__ void ll_send(const int4* __restrict__ x, int tokens, int hidden, uint8_t* msg, int msg_bytes, int topk,
                        const int* __restrict__ topk_idx, int4* recv, int* flags, int* counts, int slots) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int groups8 = hidden / 8;
  for (int t = blockIdx.x; t < tokens; t += gridDim.x) {
    uint8_t* m = msg + (size_t)t * msg_bytes;
    float* scales = reinterpret_cast<float*>(m + hidden);
    for (int g = threadIdx.x; g < groups8; g += blockDim.x) {
      int4 v = ld_nc(x + (size_t)t * groups8 + g);
      const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
      float f[8];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float2 p = __bfloat1622float2(h[i]);
        f[2 * i] = p.x;
        f[2 * i + 1] = p.y;
      }
      float amax = 1e-4f;
#pragma unroll
      for (int i = 0; i < 8; ++i) amax = fmaxf(amax, fabsf(f[i]));
#pragma unroll
      for (int o = 8; o >= 1; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
      const float scale = FP8 ? amax / 448.0f : amax / 127.0f, inv = 1.0f / scale;
      uint2 packed;
      uint8_t* b = reinterpret_cast<uint8_t*>(&packed);
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        if (FP8) {
          b[i] = __nv_cvt_float_to_fp8(f[i] * inv, __NV_SATFINITE, __NV_E4M3);
        } else {
          b[i] = (uint8_t)(int8_t)__float2int_rn(fminf(fmaxf(f[i] * inv, -127.f), 127.f));
        }
      }
      reinterpret_cast<uint2*>(m)[g] = packed;
      if ((lane & 15) == 0) scales[g / 16] = scale;
    }
    __syncthreads();
    if (warp < topk) {
      const int e = __ldg(topk_idx + t * topk + warp);
      int slot = 0;
      if (lane == 0) slot = atomicAdd(counts + e, 1) % slots;
      slot = __shfl_sync(0xffffffffu, slot, 0);
      const int n16 = msg_bytes / 16;
      const int4* s = reinterpret_cast<const int4*>(m);
      int4* d = recv + ((size_t)e * slots + slot) * n16;
#pragma unroll 4
      for (int i = lane; i < n16; i += 32) d[i] = s[i];
      __syncwarp();
      if (lane == 0) st_release_sys(flags + e * slots + slot, t + 1);
    }
    __syncthreads();
  }
}

// Reduction of `topk` BF16 source rows per token into one output row (combine_reduce / ll_combine).
// per_block = false: one warp per token (normal combine receiver warps, contiguous token ranges);
// per_block = true: the whole block on one token at a time (low-latency combine), rows weighted.
__global__ void __launch_bounds__(1024) reduce_rows(const int4* __restrict__ rows, int4* __restrict__ out, int tokens, int n16, int topk,
                            const float* __restrict__ w, const int* __restrict__ src_slot, bool per_block) {
  const int lane = threadIdx.x & 31;
  int unit, nunits, sub, nsub;
  if (per_block) {
    unit = blockIdx.x; nunits = gridDim.x; sub = threadIdx.x; nsub = blockDim.x;
  } else {
    unit = (blockIdx.x * blockDim.x + threadIdx.x) >> 5; nunits = (gridDim.x * blockDim.x) >> 5; sub = lane; nsub = 32;
  }
  int t0 = unit, t1 = tokens, step = nunits;
  if (!per_block) {
    const int per = (tokens + nunits - 1) / nunits;
    t0 = unit * per; t1 = min(tokens, t0 + per); step = 1;
  }
  for (int t = t0; t < t1; t += step) {
    float wk[8];
    int slot[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      wk[j] = j < topk ? (per_block ? __ldg(w + t * topk + j) : 1.0f) : 0.0f;
      slot[j] = j < topk ? __ldg(src_slot + t * topk + j) : 0;
    }
    for (int i = sub; i < n16; i += nsub) {
      float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        if (j < topk) {
          int4 v = ld_nc(rows + (size_t)slot[j] * n16 + i);
          const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&v);
#pragma unroll
          for (int q = 0; q < 4; ++q) {
            float2 p = __bfloat1622float2(h[q]);
            acc[2 * q] += wk[j] * p.x;
            acc[2 * q + 1] += wk[j] * p.y;
          }
        }
      }
      int4 o;
      __nv_bfloat162* oh = reinterpret_cast<__nv_bfloat162*>(&o);
#pragma unroll
      for (int q = 0; q < 4; ++q) oh[q] = __floats2bfloat162_rn(acc[2 * q], acc[2 * q + 1]);
      out[(size_t)t * n16 + i] = o;
    }
  }
}

// Layout: tokens x experts counting. Blocks [0, eblocks) own 4 experts each and count the tokens
// routed to them; blocks after that own 8 ranks each, count tokens per rank and write the
// is-token-in-rank matrix (layout).
__global__ void layout_kernel(const int* __restrict__ topk_idx, int tokens, int topk, int experts, int ranks,
                              int* per_expert, int* per_rank, uint8_t* in_rank) {
  __shared__ int cnt[8];
  if (threadIdx.x < 8) cnt[threadIdx.x] = 0;
  __syncthreads();
  const int eblocks = (experts + 3) / 4;
  const int per_r = experts / ranks;
  if ((int)blockIdx.x < eblocks) {
    const int e0 = blockIdx.x * 4;
    int c[4] = {0, 0, 0, 0};
    for (int t = threadIdx.x; t < tokens; t += blockDim.x)
      for (int j = 0; j < topk; ++j) {
        const int e = __ldg(topk_idx + t * topk + j) - e0;
        if (e >= 0 && e < 4) ++c[e];
      }
    for (int q = 0; q < 4; ++q) if (c[q]) atomicAdd(cnt + q, c[q]);
    __syncthreads();
    if (threadIdx.x < 4 && e0 + (int)threadIdx.x < experts) per_expert[e0 + threadIdx.x] = cnt[threadIdx.x];
  } else {
    const int r0 = (blockIdx.x - eblocks) * 8;
    int c[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int t = threadIdx.x; t < tokens; t += blockDim.x) {
      bool hit[8] = {false, false, false, false, false, false, false, false};
      for (int j = 0; j < topk; ++j) {
        const int r = __ldg(topk_idx + t * topk + j) / per_r - r0;
        if (r >= 0 && r < 8) hit[r] = true;
      }
      for (int q = 0; q < 8; ++q) {
        if (r0 + q < ranks) in_rank[(size_t)t * ranks + r0 + q] = hit[q];
        c[q] += hit[q];
      }
    }
    for (int q = 0; q < 8; ++q) if (c[q]) atomicAdd(cnt + q, c[q]);
    __syncthreads();
    if (threadIdx.x < 8 && r0 + (int)threadIdx.x < ranks) per_rank[r0 + threadIdx.x] = cnt[threadIdx.x];
  }
}

// Notify, emulated on one GPU (notify): block 0 writes this rank's per-rank and per-expert counts
// into `ranks` peer slots, release-stores one barrier flag per peer and polls them (all local here),
// then sums what the peers sent; blocks 1..ranks each compute one destination rank's per-channel
// prefix of is-token-in-rank. The NVLink latency of the real barrier is not in this figure.
__global__ void notify_kernel(const uint8_t* __restrict__ in_rank, int tokens, int ranks, int experts, int channels,
                              int* peer_buf, int* flags, int epoch, int* prefix, int* recv_count, int* err) {
  const int per_rank_ints = ranks + experts / ranks;
  if (blockIdx.x == 0) {
    for (int i = threadIdx.x; i < ranks * per_rank_ints; i += blockDim.x) peer_buf[i] = i + epoch;
    __syncthreads();
    if (threadIdx.x < ranks) st_release_sys(flags + threadIdx.x, epoch);
    __syncthreads();
    if (threadIdx.x < ranks) wait_at_least(flags + threadIdx.x, epoch, err);
    __syncthreads();
    if (threadIdx.x == 0) {
      int s = 0;
      for (int r = 0; r < ranks; ++r) s += peer_buf[r * per_rank_ints + r];
      *recv_count = s;
    }
    return;
  }
  const int dst = blockIdx.x - 1;
  const int per_ch = (tokens + channels - 1) / channels;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
  for (int c = warp; c < channels; c += nwarps) {
    int n = 0;
    for (int t = c * per_ch + lane; t < min(tokens, (c + 1) * per_ch); t += 32) n += in_rank[(size_t)t * ranks + dst];
#pragma unroll
    for (int o = 16; o >= 1; o >>= 1) n += __shfl_xor_sync(0xffffffffu, n, o);
    if (lane == 0) prefix[dst * channels + c] = n;
  }
  __syncthreads();
  if (threadIdx.x == 0)
    for (int c = 1; c < channels; ++c) prefix[dst * channels + c] += prefix[dst * channels + c - 1];
}

// GPU side of the mapped-host-memory round trip (mapped_poll): write round r to host memory, wait for
// the host to answer r.
__global__ void host_pingpong(volatile int* d2h, const int* h2d, int rounds, int* err) {
  for (int r = 1; r <= rounds; ++r) {
    *d2h = r;
    __threadfence_system();
    if (!wait_at_least(h2d, r, err)) return;
  }
}
__global__ void write_mapped(volatile int* d2h, int v) {
  *d2h = v;
  __threadfence_system();
}

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------
struct Row {
  std::string s;
  Row& kv(const char* k, double v) { return add(k, std::isfinite(v) ? fmt("%.6g", v) : std::string("null")); }
  Row& kv(const char* k, long long v) { return add(k, fmt("%lld", v)); }
  Row& kv(const char* k, int v) { return kv(k, (long long)v); }
  Row& kv(const char* k, const char* v) { return add(k, std::string("\"") + v + "\""); }
  Row& add(const char* k, const std::string& v) {
    s += (s.empty() ? "" : ", ") + std::string("\"") + k + "\": " + v;
    return *this;
  }
  static std::string fmt(const char* f, ...) {
    char buf[64];
    va_list ap;
    va_start(ap, f);
    vsnprintf(buf, sizeof buf, f, ap);
    va_end(ap);
    return buf;
  }
};
static std::map<std::string, std::vector<std::string>> g_rows;
static std::vector<std::string> g_order;
static void emit(const char* bench, const Row& r) {
  if (!g_rows.count(bench)) g_order.push_back(bench);
  g_rows[bench].push_back("{" + r.s + "}");
}

static int g_reps = 7;
static void* g_flush = nullptr;
static const size_t FLUSH_BYTES = 256ull << 20;
static cudaEvent_t g_e0, g_e1;
static int* g_err = nullptr;

static double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}
static void check_err(const char* where) {
  int e = 0;
  CK(cudaMemcpy(&e, g_err, sizeof e, cudaMemcpyDeviceToHost));
  if (e) {
    fprintf(stderr, "microbench: a device spin loop timed out in %s\n", where);
    exit(4);
  }
}
// Median GPU time (ns) of `launch`, one warm-up, L2 overwritten before each timed launch.
template <class F>
static double time_ns(F launch, const char* where, bool flush = true, int reps = -1) {
  if (reps < 0) reps = g_reps;
  std::vector<double> ts;
  for (int r = 0; r <= reps; ++r) {
    if (flush) CK(cudaMemsetAsync(g_flush, r & 0xff, FLUSH_BYTES));
    CK(cudaEventRecord(g_e0));
    launch();
    CK(cudaGetLastError());
    CK(cudaEventRecord(g_e1));
    CK(cudaEventSynchronize(g_e1));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, g_e0, g_e1));
    if (r > 0) ts.push_back(ms * 1e6);
  }
  check_err(where);
  return median(ts);
}
static double host_now_ns() {
  return (double)std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch()).count();
}
template <class T>
static T* dalloc(size_t n) {
  T* p = nullptr;
  CK(cudaMalloc(&p, n * sizeof(T) + 16));
  CK(cudaMemset(p, 0, n * sizeof(T) + 16));
  return p;
}
// Random-looking, non-zero BF16 data (inputs are never zeros) and random top-k experts.
__global__ void fill_bf16(uint16_t* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)i * 2654435761u ^ seed;
    h ^= h >> 15; h *= 2246822519u; h ^= h >> 13;
    float f = ((h & 0xffff) / 65536.0f - 0.5f) * 4.0f + 0.01f;
    p[i] = __bfloat16_as_ushort(__float2bfloat16(f));
  }
}
__global__ void fill_topk(int* idx, float* w, int tokens, int topk, int experts, uint32_t seed) {
  for (int t = blockIdx.x * blockDim.x + threadIdx.x; t < tokens; t += gridDim.x * blockDim.x) {
    uint32_t h = (uint32_t)t * 2654435761u ^ seed;
    const int stride = experts / topk;
    for (int j = 0; j < topk; ++j) {
      h ^= h >> 13; h *= 2246822519u; h ^= h >> 16;
      idx[t * topk + j] = j * stride + (int)(h % (uint32_t)stride);  // distinct experts
      w[t * topk + j] = 1.0f / topk;
    }
  }
}

static int g_sms = 0;
static const int HIDDEN = 7168;

// Big shared buffers reused by the benchmarks.
static const size_t BIG = 512ull << 20;
static int4 *g_a = nullptr, *g_b = nullptr;
static int* g_topk = nullptr;
static float* g_topw = nullptr;
static int* g_slots = nullptr;
static const int MAX_TOKENS = 65536;

static void bench_kernel_launch() {
  for (int rep = 0; rep < 5; ++rep) {
    const int n = 1000;
    double ev = time_ns([&] { for (int i = 0; i < n; ++i) empty_kernel<<<1, 32>>>(); }, "launch", false, 3);
    emit("kernel_launch", Row().kv("method", "event_back_to_back").kv("launches", n).kv("ns_per_launch", ev / n).kv("repeat", rep));
    CK(cudaDeviceSynchronize());
    double t0 = host_now_ns();
    for (int i = 0; i < 500; ++i) empty_kernel<<<1, 32>>>();
    double t1 = host_now_ns();
    CK(cudaDeviceSynchronize());
    emit("kernel_launch", Row().kv("method", "host_call").kv("launches", 500).kv("ns_per_launch", (t1 - t0) / 500).kv("repeat", rep));
    std::vector<double> rt;
    for (int i = 0; i < 200; ++i) {
      double a = host_now_ns();
      empty_kernel<<<1, 32>>>();
      CK(cudaStreamSynchronize(0));
      rt.push_back(host_now_ns() - a);
    }
    emit("kernel_launch", Row().kv("method", "launch_and_sync").kv("launches", 200).kv("ns_per_launch", median(rt)).kv("repeat", rep));
    double single = time_ns([&] { empty_kernel<<<1, 32>>>(); }, "launch", false, 51);
    emit("kernel_launch", Row().kv("method", "event_single").kv("launches", 1).kv("ns_per_launch", single).kv("repeat", rep));
  }
}

static void bench_host_sync() {
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaEvent_t ev;
  CK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  for (int rep = 0; rep < 5; ++rep) {
    std::vector<double> a, b, c;
    for (int i = 0; i < 300; ++i) {
      double t0 = host_now_ns();
      CK(cudaEventRecord(ev, s));
      CK(cudaEventSynchronize(ev));
      double t1 = host_now_ns();
      CK(cudaStreamSynchronize(s));
      double t2 = host_now_ns();
      empty_kernel<<<1, 32, 0, s>>>();
      CK(cudaEventRecord(ev, s));
      CK(cudaEventSynchronize(ev));
      double t3 = host_now_ns();
      a.push_back(t1 - t0); b.push_back(t2 - t1); c.push_back(t3 - t2);
    }
    emit("host_sync", Row().kv("method", "event_record_sync_idle").kv("samples", 300).kv("ns", median(a)).kv("repeat", rep));
    emit("host_sync", Row().kv("method", "stream_sync_idle").kv("samples", 300).kv("ns", median(b)).kv("repeat", rep));
    emit("host_sync", Row().kv("method", "launch_event_record_sync").kv("samples", 300).kv("ns", median(c)).kv("repeat", rep));
  }
  CK(cudaEventDestroy(ev));
  CK(cudaStreamDestroy(s));
}

static void bench_mapped_poll() {
  int *h_d2h, *h_h2d, *d_d2h, *d_h2d;
  CK(cudaHostAlloc(&h_d2h, 64, cudaHostAllocMapped));
  CK(cudaHostAlloc(&h_h2d, 64, cudaHostAllocMapped));
  CK(cudaHostGetDevicePointer(&d_d2h, h_d2h, 0));
  CK(cudaHostGetDevicePointer(&d_h2d, h_h2d, 0));
  volatile int* vd2h = h_d2h;
  volatile int* vh2d = h_h2d;
  for (int rep = 0; rep < 5; ++rep) {
    const int rounds = 2000;
    *vd2h = 0; *vh2d = 0;
    __sync_synchronize();
    host_pingpong<<<1, 32>>>(d_d2h, d_h2d, rounds, g_err);
    CK(cudaGetLastError());
    double t0 = 0, deadline = host_now_ns() + 4e9;
    bool ok = true;
    for (int r = 1; r <= rounds && ok; ++r) {
      while (*vd2h < r) {
        if (host_now_ns() > deadline) { ok = false; break; }
      }
      if (r == 1) t0 = host_now_ns();  // the first round includes the launch: time rounds 2..N
      *vh2d = r;
      __sync_synchronize();
    }
    double t1 = host_now_ns();
    CK(cudaDeviceSynchronize());
    check_err("mapped_poll");
    if (!ok) { fprintf(stderr, "microbench: host timed out in mapped_poll\n"); exit(4); }
    emit("mapped_poll", Row().kv("method", "pingpong_round_trip").kv("rounds", rounds - 1)
                            .kv("ns", (t1 - t0) / (rounds - 1)).kv("repeat", rep));
    std::vector<double> lo;
    for (int i = 1; i <= 200; ++i) {
      double a = host_now_ns();
      write_mapped<<<1, 32>>>(d_d2h, -i);
      while (*vd2h != -i) {
        if (host_now_ns() > a + 2e9) { fprintf(stderr, "microbench: host timed out in mapped_poll\n"); exit(4); }
      }
      lo.push_back(host_now_ns() - a);
      CK(cudaDeviceSynchronize());
    }
    emit("mapped_poll", Row().kv("method", "launch_write_observe").kv("samples", 200).kv("ns", median(lo)).kv("repeat", rep));
  }
  CK(cudaFreeHost(h_d2h));
  CK(cudaFreeHost(h_h2d));
}

static void bench_hbm_copy_per_sm() {
  const long long bytes = 256ll << 20;
  const long long n = bytes / 16;
  std::vector<int> blocks = {1, 2, 4, 8, 16, 24, 32, g_sms, 2 * g_sms};
  for (int unroll : {1, 4})
    for (int b : blocks) {
      double t = time_ns([&] {
        if (unroll == 1) copy16<<<b, 512>>>(g_a, g_b, n);
        else copy16_unroll4<<<b, 512>>>(g_a, g_b, n);
      }, "hbm_copy_per_sm");
      emit("hbm_copy_per_sm", Row().kv("sms", b).kv("threads", 512).kv("unroll", unroll).kv("bytes", bytes)
                                  .kv("time_ns", t).kv("gbyte_s", bytes / t));
    }
}

static CopyArgs copy_args(int tokens, int payload, int topk, int nscales, int chunk, int* tail) {
  CopyArgs a;
  a.x = g_a; a.out = g_b; a.tokens = tokens; a.n16 = payload / 16;
  a.topk_idx = g_topk; a.topk_w = g_topw; a.topk = topk;
  a.scales = reinterpret_cast<const float*>(g_a) + (BIG / 4) / 2;  // second half of the input buffer
  a.nscales = nscales;
  char* meta = reinterpret_cast<char*>(g_b) + BIG / 2;
  a.out_src = reinterpret_cast<int*>(meta);
  a.out_idx = reinterpret_cast<int*>(meta + (4ull << 20));
  a.out_w = reinterpret_cast<float*>(meta + (8ull << 20));
  a.out_scales = reinterpret_cast<float*>(meta + (16ull << 20));
  a.chunk = chunk; a.tail = tail;
  return a;
}

static void bench_token_copy() {
  int* tail = dalloc<int>(1 << 16);
  struct P { const char* dtype; int payload; int nscales; };
  std::vector<P> payloads = {{"bf16", 1792, 0}, {"bf16", 3584, 0}, {"bf16", 7168, 0}, {"bf16", 14336, 0},
                             {"fp8", 1792, 14}, {"fp8", 3584, 28}, {"fp8", 7168, 56}};
  std::vector<int> warps = {1, 3, 8, 24};
  std::vector<int> sms = {1, 4};
  for (int s : sms)
    for (int w : warps)
      for (const P& p : payloads) {
        int tokens = std::min(128 * w * s, (int)(BIG / 2 / p.payload));
        tokens = std::min(tokens, MAX_TOKENS);
        CopyArgs a = copy_args(tokens, p.payload, 8, p.nscales, 0, tail);
        double t = time_ns([&] { token_copy<<<s, 32 * w>>>(a); }, "token_copy_loop");
        const double per_warp_tokens = (double)tokens / (w * s);
        const long long meta = 4 + 8 * 8 + 4ll * p.nscales;
        emit("token_copy_loop", Row().kv("dtype", p.dtype).kv("payload_bytes", p.payload).kv("scales", p.nscales)
                                    .kv("topk", 8).kv("meta_bytes", meta).kv("sms", s).kv("warps_per_sm", w)
                                    .kv("tokens", tokens).kv("chunk", 0).kv("time_ns", t)
                                    .kv("ns_per_token_per_warp", t / per_warp_tokens)
                                    .kv("ns_per_token_per_sm", t * s / tokens)
                                    .kv("gbyte_s", (double)tokens * (p.payload + meta) / t));
      }
  // Tail publication every `chunk` tokens inside the send loop (no consumer).
  for (int chunk : {1, 2, 4, 8, 16, 32}) {
    const int w = 1, s = 1, payload = 14336, tokens = 128;
    CopyArgs a = copy_args(tokens, payload, 8, 0, chunk, tail);
    double t = time_ns([&] { token_copy<<<s, 32 * w>>>(a); }, "token_copy_loop");
    emit("token_copy_loop", Row().kv("dtype", "bf16").kv("payload_bytes", payload).kv("scales", 0).kv("topk", 8)
                                .kv("meta_bytes", 68).kv("sms", s).kv("warps_per_sm", w).kv("tokens", tokens)
                                .kv("chunk", chunk).kv("time_ns", t).kv("ns_per_token_per_warp", t / tokens)
                                .kv("ns_per_token_per_sm", t / tokens).kv("gbyte_s", tokens * (payload + 68.0) / t));
  }
  CK(cudaFree(tail));
}

static void bench_chunk_sync() {
  int* ctr = dalloc<int>(64);
  const int smem = 120 * 1024;  // one block per SM: producer and consumer on different SMs
  CK(cudaFuncSetAttribute(chunk_ring, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  int4* ring = g_b + (BIG / 16) / 2;
  for (int payload : {16, 7168, 14336})
    for (int chunk : {1, 2, 4, 8, 16, 32}) {
      const int tokens = payload > 16 ? 2048 : 8192, ring_tokens = 256;
      double t = time_ns([&] {
        CK(cudaMemsetAsync(ctr, 0, 64 * sizeof(int)));
        chunk_ring<<<2, 32, smem>>>(g_a, ring, g_b, tokens, payload / 16, chunk, ring_tokens, ctr, ctr + 32, g_err);
      }, "chunk_sync");
      emit("chunk_sync", Row().kv("payload_bytes", payload).kv("chunk", chunk).kv("ring_tokens", ring_tokens)
                             .kv("tokens", tokens).kv("time_ns", t).kv("ns_per_token", t / tokens)
                             .kv("ns_per_chunk", t / ((tokens + chunk - 1) / chunk)));
    }
  CK(cudaFree(ctr));
}

template <bool FP8>
static void bench_cast(const char* name) {
  const int slots = 64, experts = 256;  // 256 x 64 slots x 7.4 KB = 121 MB
  int* flags = dalloc<int>(experts * slots);
  int* counts = dalloc<int>(experts);
  uint8_t* msg = reinterpret_cast<uint8_t*>(g_b);
  int4* recv = g_b + (BIG / 16) / 2;
  for (int hidden : {2048, 4096, 7168})
    for (int topk : {0, 1, 2, 4, 8})
      for (int warps : {8, 32}) {
        if (topk > 0 && hidden != HIDDEN) continue;
        const int sms = 1, tokens = 256;
        const int msg_bytes = ((hidden + 4 * (hidden / 128)) + 15) / 16 * 16;
        double t = time_ns([&] {
          ll_send<FP8><<<sms, 32 * warps>>>(g_a, tokens, hidden, msg, msg_bytes, topk, g_topk, recv, flags, counts, slots);
        }, name);
        emit(name, Row().kv("hidden", hidden).kv("msg_bytes", msg_bytes).kv("topk", topk).kv("sms", sms)
                       .kv("warps_per_sm", warps).kv("tokens", tokens).kv("time_ns", t)
                       .kv("ns_per_token_per_sm", t * sms / tokens));
      }
  CK(cudaFree(flags));
  CK(cudaFree(counts));
}

static void bench_reduce(const char* name, bool per_block) {
  int4* rows = g_a;
  // one-warp rows (a warp's own cost per token) and, for the warp-per-token reduction, rows with 24
  // warps on the SM as DeepEP's combine receiver block has them (the SM's rate per token)
  for (int wl : {1, 24})
  for (int payload : {3584, 7168, 14336})
    for (int topk : {1, 2, 4, 8}) {
      if (per_block && wl != 1) continue;
      const int warps = per_block ? 32 : wl, sms = 1, tokens = per_block ? 256 : 128 * wl;
      const int n16 = payload / 16;
      double t = time_ns([&] {
        reduce_rows<<<sms, 32 * warps>>>(rows, g_b, tokens, n16, topk, g_topw, g_slots, per_block);
      }, name);
      const double per_unit = per_block ? (double)tokens / sms : (double)tokens / (warps * sms);
      Row r = Row().kv("payload_bytes", payload).kv("topk", topk).kv("sms", sms).kv("warps_per_sm", warps)
                   .kv("tokens", tokens).kv("bytes_moved", (double)tokens * payload * (topk + 1)).kv("time_ns", t)
                   .kv(per_block ? "ns_per_token_per_sm" : "ns_per_token_per_warp", t / per_unit);
      if (!per_block) r.kv("ns_per_token_per_sm", t * sms / tokens);
      emit(name, r);
    }
}

static void bench_layout(double empty_ns) {
  int* per_expert = dalloc<int>(1024);
  int* per_rank = dalloc<int>(1024);
  uint8_t* in_rank = reinterpret_cast<uint8_t*>(g_b);
  for (int experts : {64, 128, 256})
    for (int tokens : {256, 1024, 4096, 8192, 16384})
      for (int ranks : {8, 32}) {
        const int topk = 8;
        CK(cudaGetLastError());
        fill_topk<<<64, 256>>>(g_topk, g_topw, tokens, topk, experts, 7);
        const int blocks = (experts + 3) / 4 + (ranks + 7) / 8;
        double t = time_ns([&] {
          layout_kernel<<<blocks, 256>>>(g_topk, tokens, topk, experts, ranks, per_expert, per_rank, in_rank);
        }, "layout");
        emit("layout", Row().kv("tokens", tokens).kv("experts", experts).kv("ranks", ranks).kv("topk", topk)
                           .kv("blocks", blocks).kv("time_ns", t).kv("empty_kernel_ns", empty_ns));
      }
  fill_topk<<<64, 256>>>(g_topk, g_topw, MAX_TOKENS, 8, 256, 7);
  CK(cudaFree(per_expert));
  CK(cudaFree(per_rank));
}

static void bench_notify(double empty_ns) {
  int* peer = dalloc<int>(1 << 16);
  int* flags = dalloc<int>(1024);
  int* prefix = dalloc<int>(1 << 14);
  int* recv = dalloc<int>(16);
  uint8_t* in_rank = reinterpret_cast<uint8_t*>(g_b);
  const int tokens = 4096, experts = 256, channels = 24;
  int epoch = 0;
  for (int ranks : {2, 4, 8, 16, 32, 64}) {
    double t = time_ns([&] {
      ++epoch;
      notify_kernel<<<1 + ranks, 128>>>(in_rank, tokens, ranks, experts, channels, peer, flags, epoch, prefix, recv, g_err);
    }, "notify");
    emit("notify", Row().kv("ranks", ranks).kv("tokens", tokens).kv("experts", experts).kv("channels", channels)
                       .kv("time_ns", t).kv("empty_kernel_ns", empty_ns));
  }
  CK(cudaFree(peer)); CK(cudaFree(flags)); CK(cudaFree(prefix)); CK(cudaFree(recv));
}

static void print_results(const char* name, int sms, int l2, int major, int minor) {
  printf("{\"device\": {\"name\": \"%s\", \"sms\": %d, \"l2_bytes\": %d, \"cc\": \"%d.%d\"}, \"reps\": %d, \"benchmarks\": {",
         name, sms, l2, major, minor, g_reps);
  for (size_t b = 0; b < g_order.size(); ++b) {
    printf("%s\n\"%s\": [\n", b ? "," : "", g_order[b].c_str());
    const auto& rows = g_rows[g_order[b]];
    for (size_t i = 0; i < rows.size(); ++i) printf("  %s%s\n", rows[i].c_str(), i + 1 < rows.size() ? "," : "");
    printf("]");
  }
  printf("}}\n");
}

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--selftest") {  // the JSON writer alone, no GPU needed
    emit("kernel_launch", Row().kv("method", "event_back_to_back").kv("launches", 1000).kv("ns_per_launch", 2345.5));
    emit("kernel_launch", Row().kv("method", "host_call").kv("bytes", 1ll << 40).kv("ns_per_launch", 1.0 / 0.0));
    emit("layout", Row().kv("tokens", 16384).kv("time_ns", 1.25e7));
    print_results("selftest", 132, 62914560, 9, 0);
    return 0;
  }
  if (argc > 1) g_reps = atoi(argv[1]);
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  g_sms = prop.multiProcessorCount;
  fprintf(stderr, "microbench: %s, %d SMs, %d reps\n", prop.name, g_sms, g_reps);
  CK(cudaEventCreate(&g_e0));
  CK(cudaEventCreate(&g_e1));
  CK(cudaMalloc(&g_flush, FLUSH_BYTES));
  g_err = dalloc<int>(4);
  g_a = dalloc<int4>(BIG / 16);
  g_b = dalloc<int4>(BIG / 16);
  g_topk = dalloc<int>(MAX_TOKENS * 8);
  g_topw = dalloc<float>(MAX_TOKENS * 8);
  g_slots = dalloc<int>(MAX_TOKENS * 8);
  fill_bf16<<<1024, 256>>>(reinterpret_cast<uint16_t*>(g_a), BIG / 2, 12345);
  fill_topk<<<64, 256>>>(g_topk, g_topw, MAX_TOKENS, 8, 256, 7);
  // source rows of the reductions: token t's j-th row sits in a scattered slot of the rows buffer
  fill_topk<<<64, 256>>>(g_slots, g_topw, MAX_TOKENS, 8, 16384, 11);  // < 16384 x 14336 B
  CK(cudaDeviceSynchronize());

  auto run = [](const char* name, auto fn) {
    double a = host_now_ns();
    fn();
    CK(cudaDeviceSynchronize());
    fprintf(stderr, "microbench: %-16s %6.1f s\n", name, (host_now_ns() - a) / 1e9);
  };
  double empty_ns = time_ns([&] { empty_kernel<<<1, 32>>>(); }, "empty", false, 101);
  run("kernel_launch", bench_kernel_launch);
  run("host_sync", bench_host_sync);
  run("mapped_poll", bench_mapped_poll);
  run("hbm_copy_per_sm", bench_hbm_copy_per_sm);
  run("token_copy_loop", bench_token_copy);
  run("chunk_sync", bench_chunk_sync);
  run("cast_fp8", [] { bench_cast<true>("cast_fp8"); });
  run("cast_int8", [] { bench_cast<false>("cast_int8"); });
  run("combine_reduce", [] { bench_reduce("combine_reduce", false); });
  run("ll_combine", [] { bench_reduce("ll_combine", true); });
  run("layout", [&] { bench_layout(empty_ns); });
  run("notify", [&] { bench_notify(empty_ns); });

  print_results(prop.name, g_sms, prop.l2CacheSize, prop.major, prop.minor);
  return 0;
}
