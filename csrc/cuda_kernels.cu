// CUDA kernels. Every launch goes to the current stream of the current device (ops.cpp sets the
// device from the inputs), so the ops compose with streams and CUDA-graph capture.
// (c10::cuda::getCurrentCUDAStream is what at::cuda::getCurrentCUDAStream names; including it from
// c10 avoids ATen/cuda/CUDAContext.h, which needs the cuSPARSE/cuBLAS headers.)
#include "rd_ops.h"

#include <algorithm>
#include <atomic>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAStream.h>

namespace robustdistill {
namespace {

constexpr int kThreads = 256;
constexpr int kWarp = 32;
constexpr int64_t kMaxGridY = 65535;
constexpr unsigned kFullMask = 0xffffffffu;

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T v[N];
};

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

int max_blocks() {
  // enough resident blocks to saturate the device; grid-stride loops cover the rest
  constexpr int kMaxDevices = 64;
  static std::atomic<int> sm_count[kMaxDevices] = {};
  const int device = c10::cuda::current_device();
  int count = device < kMaxDevices ? sm_count[device].load(std::memory_order_relaxed) : 0;
  if (count == 0) {
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
    count = count > 0 ? count : 1;
    if (device < kMaxDevices) sm_count[device].store(count, std::memory_order_relaxed);
  }
  return count * 16;
}

// ---------------------------------------------------------------------------------------------
// pgd_step

// L-inf with scalar eps / step: one flat pass, 16-byte vector loads when every pointer allows.
template <typename T, typename A, int VEC>
__global__ void linf_flat_kernel(const T* xa, const T* g, const T* x, T* out, int64_t n, A eps, A alpha, A lo,
                                 A hi) {
  using P = Pack<T, VEC>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nvec = n / VEC;
  for (int64_t v = tid; v < nvec; v += stride) {
    const P pa = reinterpret_cast<const P*>(xa)[v];
    const P pg = reinterpret_cast<const P*>(g)[v];
    const P px = reinterpret_cast<const P*>(x)[v];
    P po;
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      po.v[k] = static_cast<T>(rd_linf_elem<A>(static_cast<A>(pa.v[k]), static_cast<A>(pg.v[k]),
                                               static_cast<A>(px.v[k]), eps, alpha, lo, hi));
    }
    reinterpret_cast<P*>(out)[v] = po;
  }
  for (int64_t i = nvec * VEC + tid; i < n; i += stride) {
    out[i] = static_cast<T>(rd_linf_elem<A>(static_cast<A>(xa[i]), static_cast<A>(g[i]), static_cast<A>(x[i]), eps,
                                            alpha, lo, hi));
  }
}

// Sum over the block of one double per thread, in a fixed order (deterministic); every thread gets it.
// All threads of the block must call it.
__device__ double block_sum(double v) {
  __shared__ double warp_sums[kThreads / kWarp];
  __shared__ double result;
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
  for (int off = kWarp / 2; off > 0; off >>= 1) v += __shfl_down_sync(kFullMask, v, off);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0.0;
    for (int w = 0; w < kThreads / kWarp; ++w) t += warp_sums[w];
    result = t;
  }
  __syncthreads();
  const double out = result;
  __syncthreads();  // `result` and `warp_sums` may be reused by the next call
  return out;
}

// Sum of the `chunks` partial sums of one sample (the whole block cooperates; fixed order).
__device__ double sum_partials(const double* partial, int64_t chunks) {
  double t = 0.0;
  for (int64_t c = threadIdx.x; c < chunks; c += blockDim.x) t += partial[c];
  return block_sum(t);
}

// Float terms summed in float for at most kSumFlush terms, then flushed into a double (rd_ops.h).
template <typename A>
struct FlushedSum {
  double total = 0.0;
  A part = A(0);
  int terms = 0;
  __device__ void add_square(A v) {
    part += v * v;
    if (++terms == kSumFlush) {
      total += static_cast<double>(part);
      part = A(0);
      terms = 0;
    }
  }
  __device__ double value() const { return total + static_cast<double>(part); }
};

// L2 pass 1: partial sums of g*g, one per (chunk, sample) block: partial_gg[b * chunks + chunk].
template <typename T, typename A>
__global__ void l2_grad_sum_kernel(const T* g, int64_t batch, int64_t per, double* partial_gg) {
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const int64_t base = b * per;
    FlushedSum<A> sum;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < per;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      sum.add_square(static_cast<A>(g[base + i]));
    }
    const double total = block_sum(sum.value());
    if (threadIdx.x == 0) partial_gg[b * gridDim.x + blockIdx.x] = total;
  }
}

// L2 pass 2: partial sums of delta*delta, delta = rd_l2_delta(...) exactly as pass 3 computes it.
template <typename T, typename A>
__global__ void l2_delta_sum_kernel(const T* xa, const T* g, const T* x, int64_t batch, int64_t per,
                                    const A* alpha_ps, A alpha_s, const double* partial_gg, double* partial_dd) {
  const int64_t chunks = gridDim.x;
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const L2Dir<A> d = rd_l2_dir<A>(sum_partials(partial_gg + b * chunks, chunks));
    const A alpha = alpha_ps ? alpha_ps[b] : alpha_s;
    const int64_t base = b * per;
    FlushedSum<A> sum;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < per;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t k = base + i;
      sum.add_square(rd_l2_delta<A>(static_cast<A>(xa[k]), static_cast<A>(g[k]), static_cast<A>(x[k]), alpha, d));
    }
    const double total = block_sum(sum.value());
    if (threadIdx.x == 0) partial_dd[b * chunks + blockIdx.x] = total;
  }
}

// Per-sample element-wise pass: L-inf with per-sample eps / step, or L2 pass 3 (direction and
// projection factor from the partial sums of passes 1 and 2). Grid (chunks, samples).
template <typename T, typename A, bool L2>
__global__ void per_sample_kernel(const T* xa, const T* g, const T* x, T* out, int64_t batch, int64_t per,
                                  const A* eps_ps, const A* alpha_ps, A eps_s, A alpha_s, A lo, A hi,
                                  const double* partial_gg, const double* partial_dd) {
  const int64_t chunks = gridDim.x;
  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const A eps = eps_ps ? eps_ps[b] : eps_s;
    const A alpha = alpha_ps ? alpha_ps[b] : alpha_s;
    L2Dir<A> d{A(1), false};
    A factor = A(1);
    if (L2) {
      d = rd_l2_dir<A>(sum_partials(partial_gg + b * chunks, chunks));
      factor = rd_l2_factor<A>(sum_partials(partial_dd + b * chunks, chunks), eps);
    }
    const int64_t base = b * per;
    for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < per;
         i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
      const int64_t k = base + i;
      const A xai = static_cast<A>(xa[k]), gi = static_cast<A>(g[k]), xi = static_cast<A>(x[k]);
      const A r = L2 ? rd_l2_elem<A>(xai, gi, xi, alpha, d, factor, lo, hi)
                     : rd_linf_elem<A>(xai, gi, xi, eps, alpha, lo, hi);
      out[k] = static_cast<T>(r);
    }
  }
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Blocks per sample for the per-sample passes: enough blocks in all to fill the device (also for a
// batch of one), at least kThreads * 4 elements per block, at most kMaxChunks partial sums per sample.
constexpr int64_t kMaxChunks = 512;
int64_t chunks_per_sample(int64_t batch, int64_t per) {
  const int64_t fill = ceil_div(max_blocks(), std::min(batch, kMaxGridY));
  return std::max<int64_t>(1, std::min({ceil_div(per, kThreads * 4), fill, kMaxChunks}));
}

template <typename T>
void pgd_step_typed(const PgdArgs& a) {
  using A = at::opmath_type<T>;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const T* xa = static_cast<const T*>(a.x_adv);
  const T* g = static_cast<const T*>(a.grad);
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  const A eps = static_cast<A>(a.eps), alpha = static_cast<A>(a.alpha);
  const A lo = static_cast<A>(a.lo), hi = static_cast<A>(a.hi);
  const A* eps_ps = static_cast<const A*>(a.eps_per_sample);
  const A* alpha_ps = static_cast<const A*>(a.alpha_per_sample);

  if (!a.l2 && !eps_ps && !alpha_ps) {
    constexpr int VEC = 16 / sizeof(T);
    const bool vec_ok = aligned16(xa) && aligned16(g) && aligned16(x) && aligned16(out);
    const int64_t work = vec_ok ? ceil_div(a.numel, VEC) : a.numel;
    const int blocks = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(work, kThreads), max_blocks())));
    if (vec_ok) {
      linf_flat_kernel<T, A, VEC><<<blocks, kThreads, 0, stream>>>(xa, g, x, out, a.numel, eps, alpha, lo, hi);
    } else {
      linf_flat_kernel<T, A, 1><<<blocks, kThreads, 0, stream>>>(xa, g, x, out, a.numel, eps, alpha, lo, hi);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }

  const int64_t per = a.per_sample;
  const int64_t chunks = chunks_per_sample(a.batch, per);
  const dim3 grid(static_cast<unsigned>(chunks), static_cast<unsigned>(std::min(a.batch, kMaxGridY)));
  if (!a.l2) {
    per_sample_kernel<T, A, false><<<grid, kThreads, 0, stream>>>(xa, g, x, out, a.batch, per, eps_ps, alpha_ps,
                                                                  eps, alpha, lo, hi, nullptr, nullptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return;
  }
  // Partial sums: [2][batch][chunks] doubles, g*g then delta*delta. Released to the caching
  // allocator at the end of this function, which reuses the memory only after the work queued on
  // this stream.
  at::Tensor partial = at::empty({2 * a.batch * chunks},
                                 at::TensorOptions().dtype(at::kDouble).device(at::kCUDA, c10::cuda::current_device()));
  double* partial_gg = partial.data_ptr<double>();
  double* partial_dd = partial_gg + a.batch * chunks;
  l2_grad_sum_kernel<T, A><<<grid, kThreads, 0, stream>>>(g, a.batch, per, partial_gg);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  l2_delta_sum_kernel<T, A><<<grid, kThreads, 0, stream>>>(xa, g, x, a.batch, per, alpha_ps, alpha, partial_gg,
                                                           partial_dd);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  per_sample_kernel<T, A, true><<<grid, kThreads, 0, stream>>>(xa, g, x, out, a.batch, per, eps_ps, alpha_ps, eps,
                                                               alpha, lo, hi, partial_gg, partial_dd);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// ---------------------------------------------------------------------------------------------
// fd_align: one warp per row of logits.

__device__ __forceinline__ float dev_exp(float v) { return ::expf(v); }
__device__ __forceinline__ double dev_exp(double v) { return ::exp(v); }
__device__ __forceinline__ float dev_log(float v) { return ::logf(v); }
__device__ __forceinline__ double dev_log(double v) { return ::log(v); }

template <typename A>
__device__ __forceinline__ A nan_max(A m, A v) {
  return (v > m || v != v) ? v : m;
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int off = kWarp / 2; off > 0; off >>= 1) v += __shfl_xor_sync(kFullMask, v, off);
  return v;
}

template <typename A>
__device__ __forceinline__ A warp_max(A v) {
  for (int off = kWarp / 2; off > 0; off >>= 1) v = nan_max(v, __shfl_xor_sync(kFullMask, v, off));
  return v;
}

template <typename S, typename T, typename A>
struct RowView {
  const S* sp;
  const S* sm;
  const T* tp;
  const T* tm;
  int64_t cols;
  __device__ A ds(int64_t j) const { return static_cast<A>(sp[j]) - static_cast<A>(sm[j]); }
  __device__ A dt(int64_t j) const { return static_cast<A>(tp[j]) - static_cast<A>(tm[j]); }
  // max and log(sum(exp(v - max))) of the student and teacher differences (all lanes get them)
  __device__ void lse(int lane, A& ms, A& ls, A& mt, A& lt) const {
    A m1 = -INFINITY, m2 = -INFINITY;
    for (int64_t j = lane; j < cols; j += kWarp) {
      m1 = nan_max(m1, ds(j));
      m2 = nan_max(m2, dt(j));
    }
    ms = warp_max(m1);
    mt = warp_max(m2);
    A s1 = 0, s2 = 0;
    for (int64_t j = lane; j < cols; j += kWarp) {
      s1 += dev_exp(ds(j) - ms);
      s2 += dev_exp(dt(j) - mt);
    }
    ls = dev_log(warp_sum(s1));
    lt = dev_log(warp_sum(s2));
  }
};

template <typename S, typename T, typename A>
__global__ void fd_forward_kernel(const S* sp, const S* sm, const T* tp, const T* tm, int64_t rows, int64_t cols,
                                  FdDistance distance, A* row_out) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / kWarp;
  for (int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp; r < rows; r += warps) {
    const int64_t off = r * cols;
    const RowView<S, T, A> row{sp + off, sm + off, tp + off, tm + off, cols};
    A acc = 0;
    if (distance == FdDistance::KL) {
      A ms, ls, mt, lt;
      row.lse(lane, ms, ls, mt, lt);
      for (int64_t j = lane; j < cols; j += kWarp) {
        const A log_q = (row.ds(j) - ms) - ls;
        const A log_p = (row.dt(j) - mt) - lt;
        acc += dev_exp(log_p) * (log_p - log_q);
      }
    } else if (distance == FdDistance::L1) {
      for (int64_t j = lane; j < cols; j += kWarp) acc += ::fabs(row.ds(j) - row.dt(j));
    } else {
      for (int64_t j = lane; j < cols; j += kWarp) {
        const A d = row.ds(j) - row.dt(j);
        acc += d * d;
      }
    }
    acc = warp_sum(acc);
    if (lane == 0) row_out[r] = acc;
  }
}

// Deterministic sum of the row results (one block), divided by `denom`.
template <typename A>
__global__ void fd_finalize_kernel(const A* row_out, int64_t rows, A denom, A* out) {
  __shared__ double shared[kThreads];
  double t = 0.0;
  for (int64_t r = threadIdx.x; r < rows; r += blockDim.x) t += static_cast<double>(row_out[r]);
  shared[threadIdx.x] = t;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = static_cast<A>(shared[0]) / denom;
}

template <typename S, typename T, typename A>
__global__ void fd_backward_kernel(const S* sp, const S* sm, const T* tp, const T* tm, int64_t rows, int64_t cols,
                                   FdDistance distance, const A* grad_out, S* gp, S* gm) {
  const int lane = threadIdx.x % kWarp;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / kWarp;
  const A go = *grad_out;
  for (int64_t r = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / kWarp; r < rows; r += warps) {
    const int64_t off = r * cols;
    const RowView<S, T, A> row{sp + off, sm + off, tp + off, tm + off, cols};
    if (distance == FdDistance::KL) {
      // grad_j = g_j - softmax(ds)_j * sum(g), g_j = -(go/B * p_j)
      A ms, ls, mt, lt;
      row.lse(lane, ms, ls, mt, lt);
      const A g1 = go / static_cast<A>(rows);
      A part = 0;
      for (int64_t j = lane; j < cols; j += kWarp) part += -(g1 * dev_exp((row.dt(j) - mt) - lt));
      const A sum_g = warp_sum(part);
      for (int64_t j = lane; j < cols; j += kWarp) {
        const A gj = -(g1 * dev_exp((row.dt(j) - mt) - lt));
        const A q = dev_exp((row.ds(j) - ms) - ls);
        const A grad = rd_sub(gj, rd_mul(q, sum_g));
        gp[off + j] = static_cast<S>(grad);
        gm[off + j] = static_cast<S>(-grad);
      }
    } else {
      const A g1 = go / static_cast<A>(rows * cols);
      for (int64_t j = lane; j < cols; j += kWarp) {
        const A d = row.ds(j) - row.dt(j);
        const A grad = distance == FdDistance::L1 ? g1 * rd_sign(d) : g1 * (A(2) * d);
        gp[off + j] = static_cast<S>(grad);
        gm[off + j] = static_cast<S>(-grad);
      }
    }
  }
}

int fd_blocks(int64_t rows) {
  const int64_t rows_per_block = kThreads / kWarp;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(ceil_div(rows, rows_per_block), max_blocks())));
}

template <typename S, typename T>
void fd_forward_typed(const FdArgs& a) {
  using A = at::opmath_type<S>;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  A* row_buf = static_cast<A*>(a.row_buf);
  if (a.rows > 0) {
    fd_forward_kernel<S, T, A><<<fd_blocks(a.rows), kThreads, 0, stream>>>(
        static_cast<const S*>(a.s_plus), static_cast<const S*>(a.s_minus), static_cast<const T*>(a.t_plus),
        static_cast<const T*>(a.t_minus), a.rows, a.cols, a.distance, row_buf);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const A denom = a.distance == FdDistance::KL ? static_cast<A>(a.rows) : static_cast<A>(a.rows * a.cols);
  fd_finalize_kernel<A><<<1, kThreads, 0, stream>>>(row_buf, a.rows, denom, static_cast<A*>(a.out));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename S, typename T>
void fd_backward_typed(const FdArgs& a) {
  using A = at::opmath_type<S>;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  fd_backward_kernel<S, T, A><<<fd_blocks(a.rows), kThreads, 0, stream>>>(
      static_cast<const S*>(a.s_plus), static_cast<const S*>(a.s_minus), static_cast<const T*>(a.t_plus),
      static_cast<const T*>(a.t_minus), a.rows, a.cols, a.distance, static_cast<const A*>(a.grad_out),
      static_cast<S*>(a.grad_s_plus), static_cast<S*>(a.grad_s_minus));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void pgd_step_cuda(const PgdArgs& args) {
  if (args.numel == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.dtype, "robustdistill::pgd_step (CUDA)",
                                  [&] { pgd_step_typed<scalar_t>(args); });
}

void fd_align_forward_cuda(const FdArgs& args) {
  dispatch_fd(args, [&](auto s, auto t) {
    fd_forward_typed<typename decltype(s)::type, typename decltype(t)::type>(args);
  });
}

void fd_align_backward_cuda(const FdArgs& args) {
  if (args.rows * args.cols == 0) return;
  dispatch_fd(args, [&](auto s, auto t) {
    fd_backward_typed<typename decltype(s)::type, typename decltype(t)::type>(args);
  });
}

}  // namespace robustdistill
