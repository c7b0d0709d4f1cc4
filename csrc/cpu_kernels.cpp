// CPU kernels: at::parallel_for over the flat data, inner loops written so the compiler
// vectorises them (no aliasing between what is read and what is written, no branches that
// depend on memory other than selects).
#include "rd_ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace robustdistill {
namespace {

constexpr int64_t kBlock = 512;          // elements per stack-buffered block
constexpr int64_t kGrain = 32768;        // minimum elements per parallel task
constexpr int64_t kReduceChunk = 16384;  // elements per partial sum of the L2 reduction

#if defined(__GNUC__) && defined(__x86_64__)
#define RD_X86_DISPATCH 1
#define RD_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define RD_X86_DISPATCH 0
#define RD_ALWAYS_INLINE inline
#endif

// Element-wise loops in three aliasing variants, each free of possible aliasing so it vectorises:
// `out` distinct from every input; in place (`xo` is x_adv and the result, grad and x distinct);
// anything else goes through a stack buffer (see pgd_step_typed).
template <typename T, typename A>
RD_ALWAYS_INLINE void linf_impl(const T* __restrict xa, const T* __restrict g, const T* __restrict x,
                                T* __restrict out, int64_t m, A eps, A alpha, A lo, A hi) {
  for (int64_t i = 0; i < m; ++i) {
    out[i] = static_cast<T>(rd_linf_elem<A>(static_cast<A>(xa[i]), static_cast<A>(g[i]), static_cast<A>(x[i]),
                                            eps, alpha, lo, hi));
  }
}

template <typename T, typename A>
RD_ALWAYS_INLINE void linf_inplace_impl(T* __restrict xo, const T* __restrict g, const T* __restrict x, int64_t m,
                                        A eps, A alpha, A lo, A hi) {
  for (int64_t i = 0; i < m; ++i) {
    xo[i] = static_cast<T>(rd_linf_elem<A>(static_cast<A>(xo[i]), static_cast<A>(g[i]), static_cast<A>(x[i]), eps,
                                           alpha, lo, hi));
  }
}

template <typename T, typename A>
RD_ALWAYS_INLINE void l2_impl(const T* __restrict xa, const T* __restrict g, const T* __restrict x,
                              T* __restrict out, int64_t m, A alpha, L2Dir<A> d, A factor, A lo, A hi) {
  for (int64_t i = 0; i < m; ++i) {
    out[i] = static_cast<T>(rd_l2_elem<A>(static_cast<A>(xa[i]), static_cast<A>(g[i]), static_cast<A>(x[i]), alpha,
                                          d, factor, lo, hi));
  }
}

template <typename T, typename A>
RD_ALWAYS_INLINE void l2_inplace_impl(T* __restrict xo, const T* __restrict g, const T* __restrict x, int64_t m,
                                      A alpha, L2Dir<A> d, A factor, A lo, A hi) {
  for (int64_t i = 0; i < m; ++i) {
    xo[i] = static_cast<T>(rd_l2_elem<A>(static_cast<A>(xo[i]), static_cast<A>(g[i]), static_cast<A>(x[i]), alpha,
                                         d, factor, lo, hi));
  }
}

#if RD_X86_DISPATCH
bool cpu_has_avx2() {
  static const bool has = __builtin_cpu_supports("avx2");
  return has;
}
// NAME(params) runs IMPL compiled for the baseline ISA or, where the CPU has it, for AVX2 (8-wide
// vectors); one binary runs everywhere, and the arithmetic (no FMA contraction) is the same.
#define RD_MULTIVERSION(NAME, IMPL, PARAMS, ARGS)                                                     \
  template <typename T, typename A>                                                                  \
  void NAME##_base PARAMS {                                                                          \
    IMPL<T, A> ARGS;                                                                                 \
  }                                                                                                  \
  template <typename T, typename A>                                                                  \
  __attribute__((target("avx2"))) void NAME##_avx2 PARAMS {                                          \
    IMPL<T, A> ARGS;                                                                                 \
  }                                                                                                  \
  template <typename T, typename A>                                                                  \
  void NAME PARAMS {                                                                                 \
    if (cpu_has_avx2()) return NAME##_avx2<T, A> ARGS;                                               \
    NAME##_base<T, A> ARGS;                                                                          \
  }
#else
#define RD_MULTIVERSION(NAME, IMPL, PARAMS, ARGS) \
  template <typename T, typename A>               \
  void NAME PARAMS {                              \
    IMPL<T, A> ARGS;                              \
  }
#endif

RD_MULTIVERSION(linf_span, linf_impl,
                (const T* xa, const T* g, const T* x, T* out, int64_t m, A eps, A alpha, A lo, A hi),
                (xa, g, x, out, m, eps, alpha, lo, hi))
RD_MULTIVERSION(linf_inplace_span, linf_inplace_impl,
                (T* xo, const T* g, const T* x, int64_t m, A eps, A alpha, A lo, A hi),
                (xo, g, x, m, eps, alpha, lo, hi))
RD_MULTIVERSION(l2_span, l2_impl,
                (const T* xa, const T* g, const T* x, T* out, int64_t m, A alpha, L2Dir<A> d, A factor, A lo, A hi),
                (xa, g, x, out, m, alpha, d, factor, lo, hi))
RD_MULTIVERSION(l2_inplace_span, l2_inplace_impl,
                (T* xo, const T* g, const T* x, int64_t m, A alpha, L2Dir<A> d, A factor, A lo, A hi),
                (xo, g, x, m, alpha, d, factor, lo, hi))

// Calls f(sample, begin, end) for the pieces of [begin, end) that lie in one sample each.
template <typename F>
void for_each_sample_piece(int64_t begin, int64_t end, int64_t per_sample, const F& f) {
  int64_t i = begin;
  while (i < end) {
    const int64_t sample = i / per_sample;
    const int64_t stop = std::min(end, (sample + 1) * per_sample);
    f(sample, i, stop);
    i = stop;
  }
}

// sum over n elements of f(i)^2, f vectorisable: kLanes float lanes of at most kSumFlush terms each,
// flushed into a double (kSumFlush * kLanes elements per flush).
constexpr int kSumLanes = 16;

template <typename A, typename F>
RD_ALWAYS_INLINE double sum_of_squares(int64_t n, const F& f) {
  constexpr int64_t kSpan = static_cast<int64_t>(kSumFlush) * kSumLanes;
  double total = 0.0;
  for (int64_t s = 0; s < n; s += kSpan) {
    const int64_t m = std::min<int64_t>(kSpan, n - s);
    A acc[kSumLanes] = {};
    int64_t i = 0;
    for (; i + kSumLanes <= m; i += kSumLanes) {
      for (int j = 0; j < kSumLanes; ++j) {
        const A v = f(s + i + j);
        acc[j] += v * v;
      }
    }
    for (; i < m; ++i) {
      const A v = f(s + i);
      acc[i % kSumLanes] += v * v;
    }
    for (int j = 0; j < kSumLanes; ++j) total += acc[j];
  }
  return total;
}

// Pass 1 of the L2 step: sum of g*g over n elements.
template <typename T, typename A>
RD_ALWAYS_INLINE void l2_grad_sum_impl(const T* __restrict g, int64_t n, double* sum) {
  *sum = sum_of_squares<A>(n, [&](int64_t i) { return static_cast<A>(g[i]); });
}

// Pass 2: sum of delta*delta over n elements, delta exactly as pass 3 computes it.
template <typename T, typename A>
RD_ALWAYS_INLINE void l2_delta_sum_impl(const T* __restrict xa, const T* __restrict g, const T* __restrict x,
                                        int64_t n, A alpha, L2Dir<A> d, double* sum) {
  *sum = sum_of_squares<A>(n, [&](int64_t i) {
    return rd_l2_delta<A>(static_cast<A>(xa[i]), static_cast<A>(g[i]), static_cast<A>(x[i]), alpha, d);
  });
}

RD_MULTIVERSION(l2_grad_sum, l2_grad_sum_impl, (const T* g, int64_t n, double* sum), (g, n, sum))
RD_MULTIVERSION(l2_delta_sum, l2_delta_sum_impl,
                (const T* xa, const T* g, const T* x, int64_t n, A alpha, L2Dir<A> d, double* sum),
                (xa, g, x, n, alpha, d, sum))

template <typename T>
void pgd_step_typed(const PgdArgs& a) {
  using A = at::opmath_type<T>;
  const T* xa = static_cast<const T*>(a.x_adv);
  const T* g = static_cast<const T*>(a.grad);
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  const A* eps_ps = static_cast<const A*>(a.eps_per_sample);
  const A* alpha_ps = static_cast<const A*>(a.alpha_per_sample);
  const A lo = static_cast<A>(a.lo), hi = static_cast<A>(a.hi);
  const A eps_s = static_cast<A>(a.eps), alpha_s = static_cast<A>(a.alpha);
  const int64_t per = a.per_sample;

  if (!a.l2) {
    at::parallel_for(0, a.numel, kGrain, [&](int64_t begin, int64_t end) {
      auto run = [&](int64_t sample, int64_t i0, int64_t i1) {
        const A eps = eps_ps ? eps_ps[sample] : eps_s;
        const A alpha = alpha_ps ? alpha_ps[sample] : alpha_s;
        if (a.aliasing == PgdAliasing::kNone) {
          linf_span<T, A>(xa + i0, g + i0, x + i0, out + i0, i1 - i0, eps, alpha, lo, hi);
        } else if (a.aliasing == PgdAliasing::kInPlace) {
          linf_inplace_span<T, A>(out + i0, g + i0, x + i0, i1 - i0, eps, alpha, lo, hi);
        } else {
          T buf[kBlock];
          for (int64_t s = i0; s < i1; s += kBlock) {
            const int64_t m = std::min(kBlock, i1 - s);
            linf_span<T, A>(xa + s, g + s, x + s, buf, m, eps, alpha, lo, hi);
            std::copy(buf, buf + m, out + s);
          }
        }
      };
      if (eps_ps || alpha_ps) {
        for_each_sample_piece(begin, end, per, run);
      } else {
        run(0, begin, end);
      }
    });
    return;
  }

  // L2: per-sample sums in fixed chunks (deterministic for any thread count), combined per sample in
  // chunk order: sum of g*g -> direction, sum of delta*delta -> projection factor, then the
  // element-wise pass.
  const int64_t batch = a.batch;
  const int64_t chunks = (per + kReduceChunk - 1) / kReduceChunk;
  const int64_t tasks_grain = std::max<int64_t>(1, kGrain / kReduceChunk);
  std::vector<double> partial(static_cast<size_t>(batch * chunks));
  auto per_sample_sums = [&](const auto& chunk_sum) {
    at::parallel_for(0, batch * chunks, tasks_grain, [&](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t sample = task / chunks, chunk = task % chunks;
        const int64_t i0 = sample * per + chunk * kReduceChunk;
        chunk_sum(sample, i0, std::min(kReduceChunk, per - chunk * kReduceChunk), partial.data() + task);
      }
    });
    std::vector<double> sums(static_cast<size_t>(batch), 0.0);
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t c = 0; c < chunks; ++c) sums[b] += partial[b * chunks + c];
    }
    return sums;
  };
  const std::vector<double> sum_gg = per_sample_sums([&](int64_t, int64_t i0, int64_t n, double* out_sum) {
    l2_grad_sum<T, A>(g + i0, n, out_sum);
  });
  std::vector<L2Dir<A>> dir(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b) dir[b] = rd_l2_dir<A>(sum_gg[b]);
  const std::vector<double> sum_dd = per_sample_sums([&](int64_t sample, int64_t i0, int64_t n, double* out_sum) {
    const A alpha = alpha_ps ? alpha_ps[sample] : alpha_s;
    l2_delta_sum<T, A>(xa + i0, g + i0, x + i0, n, alpha, dir[sample], out_sum);
  });
  std::vector<A> factor(static_cast<size_t>(batch));
  for (int64_t b = 0; b < batch; ++b) factor[b] = rd_l2_factor<A>(sum_dd[b], eps_ps ? eps_ps[b] : eps_s);
  at::parallel_for(0, a.numel, kGrain, [&](int64_t begin, int64_t end) {
    for_each_sample_piece(begin, end, per, [&](int64_t sample, int64_t i0, int64_t i1) {
      const A alpha = alpha_ps ? alpha_ps[sample] : alpha_s;
      const L2Dir<A> d = dir[sample];
      const A f = factor[sample];
      if (a.aliasing == PgdAliasing::kNone) {
        l2_span<T, A>(xa + i0, g + i0, x + i0, out + i0, i1 - i0, alpha, d, f, lo, hi);
      } else if (a.aliasing == PgdAliasing::kInPlace) {
        l2_inplace_span<T, A>(out + i0, g + i0, x + i0, i1 - i0, alpha, d, f, lo, hi);
      } else {
        T buf[kBlock];
        for (int64_t s = i0; s < i1; s += kBlock) {
          const int64_t m = std::min(kBlock, i1 - s);
          l2_span<T, A>(xa + s, g + s, x + s, buf, m, alpha, d, f, lo, hi);
          std::copy(buf, buf + m, out + s);
        }
      }
    });
  });
}

// ---------------------------------------------------------------------------------------------
// fd_align: rows in parallel, each row's logit differences staged in a scratch buffer, loops over
// the row vectorisable (lane accumulators, a polynomial exp), row results summed in order.

// exp for the arguments fd_align needs (x <= 0, also -inf and NaN): exp(x) = 2^n * e^r with
// |r| <= ln2/2 and a degree-6 polynomial for e^r (about 1 ulp); below -87.3 it returns 0 where
// expf returns a subnormal. Plain arithmetic, so the compiler vectorises it.
RD_ALWAYS_INLINE float rd_exp(float x) {
  const float lo = -87.3f, hi = 88.3f;
  float xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const float t = xc * 1.44269504088896341f;
  const float n = (t + 12582912.0f) - 12582912.0f;  // round to nearest
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  float y = p * scale;
  y = x < lo ? 0.0f : y;
  y = x > hi ? std::numeric_limits<float>::infinity() : y;
  return x != x ? x : y;
}
RD_ALWAYS_INLINE double rd_exp(double x) { return std::exp(x); }

constexpr int kLanes = 16;

template <typename A>
RD_ALWAYS_INLINE A row_max(const A* __restrict v, int64_t n) {
  A m[kLanes];
  for (int j = 0; j < kLanes; ++j) m[j] = -std::numeric_limits<A>::infinity();
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int j = 0; j < kLanes; ++j) m[j] = v[i + j] > m[j] ? v[i + j] : m[j];
  }
  for (; i < n; ++i) m[0] = v[i] > m[0] ? v[i] : m[0];
  A out = m[0];
  for (int j = 1; j < kLanes; ++j) out = m[j] > out ? m[j] : out;
  return out;  // a NaN in v is not propagated here; it reaches the result through the exp sums
}

// sum over the row of f(j), f vectorisable; float lanes flushed into a double every 1024 elements
template <typename A, typename F>
RD_ALWAYS_INLINE double row_sum(int64_t n, const F& f) {
  double total = 0.0;
  for (int64_t s = 0; s < n; s += 1024) {
    const int64_t m = std::min<int64_t>(1024, n - s);
    A acc[kLanes] = {};
    int64_t i = 0;
    for (; i + kLanes <= m; i += kLanes) {
      for (int j = 0; j < kLanes; ++j) acc[j] += f(s + i + j);
    }
    for (; i < m; ++i) acc[0] += f(s + i);
    for (int j = 0; j < kLanes; ++j) total += static_cast<double>(acc[j]);
  }
  return total;
}

template <typename A>
struct RowStats {
  A ms, ss, ls, mt, st, lt;  // max, sum(exp(v - max)) and its log, of ds and of dt
};

// One row: ds = s+ - s- and dt = t+ - t- into bs / bt and, for KL, exp(ds - max) and exp(dt - max)
// into es / et with the log_softmax pieces. softmax is then e / sum (instead of exp(log_softmax)),
// which halves the exps and differs from the reference by an ulp or so.
template <typename S, typename T, typename A>
struct RowScratch {
  std::vector<A> buf;
  A *bs, *bt, *es, *et;
  explicit RowScratch(int64_t cols) : buf(static_cast<size_t>(4 * cols)) {
    bs = buf.data();
    bt = bs + cols;
    es = bt + cols;
    et = es + cols;
  }
};

template <typename S, typename T, typename A>
RD_ALWAYS_INLINE RowStats<A> stage_row(const S* __restrict sp, const S* __restrict sm, const T* __restrict tp,
                                       const T* __restrict tm, int64_t cols, A* __restrict bs, A* __restrict bt,
                                       A* __restrict es, A* __restrict et, bool kl) {
  for (int64_t j = 0; j < cols; ++j) {
    bs[j] = static_cast<A>(sp[j]) - static_cast<A>(sm[j]);
    bt[j] = static_cast<A>(tp[j]) - static_cast<A>(tm[j]);
  }
  RowStats<A> st{};
  if (kl) {
    st.ms = row_max(bs, cols);
    st.mt = row_max(bt, cols);
    const A ms = st.ms, mt = st.mt;
    for (int64_t j = 0; j < cols; ++j) {
      es[j] = rd_exp(bs[j] - ms);
      et[j] = rd_exp(bt[j] - mt);
    }
    st.ss = static_cast<A>(row_sum<A>(cols, [&](int64_t j) { return es[j]; }));
    st.st = static_cast<A>(row_sum<A>(cols, [&](int64_t j) { return et[j]; }));
    st.ls = std::log(st.ss);
    st.lt = std::log(st.st);
  }
  return st;
}

template <typename S, typename T, typename A>
RD_ALWAYS_INLINE void fd_forward_rows_impl(const FdArgs& a, int64_t r0, int64_t r1, double* per_row) {
  const int64_t cols = a.cols;
  RowScratch<S, T, A> sc(cols);
  A* __restrict bs = sc.bs;
  A* __restrict bt = sc.bt;
  A* __restrict et = sc.et;
  const bool kl = a.distance == FdDistance::KL;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t off = r * cols;
    const RowStats<A> st =
        stage_row<S, T, A>(static_cast<const S*>(a.s_plus) + off, static_cast<const S*>(a.s_minus) + off,
                           static_cast<const T*>(a.t_plus) + off, static_cast<const T*>(a.t_minus) + off, cols, bs, bt,
                           sc.es, et, kl);
    if (kl) {
      per_row[r] = row_sum<A>(cols, [&](int64_t j) {
        const A log_q = (bs[j] - st.ms) - st.ls;
        const A log_p = (bt[j] - st.mt) - st.lt;
        return (et[j] / st.st) * (log_p - log_q);
      });
    } else if (a.distance == FdDistance::L1) {
      per_row[r] = row_sum<A>(cols, [&](int64_t j) { return std::abs(bs[j] - bt[j]); });
    } else {
      per_row[r] = row_sum<A>(cols, [&](int64_t j) {
        const A d = bs[j] - bt[j];
        return d * d;
      });
    }
  }
}

template <typename S, typename T, typename A>
RD_ALWAYS_INLINE void fd_backward_rows_impl(const FdArgs& a, int64_t r0, int64_t r1) {
  const int64_t rows = a.rows, cols = a.cols;
  const A go = *static_cast<const A*>(a.grad_out);
  RowScratch<S, T, A> sc(cols);
  A* __restrict bs = sc.bs;
  A* __restrict bt = sc.bt;
  A* __restrict es = sc.es;
  A* __restrict et = sc.et;
  const bool kl = a.distance == FdDistance::KL;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t off = r * cols;
    const RowStats<A> st =
        stage_row<S, T, A>(static_cast<const S*>(a.s_plus) + off, static_cast<const S*>(a.s_minus) + off,
                           static_cast<const T*>(a.t_plus) + off, static_cast<const T*>(a.t_minus) + off, cols, bs, bt,
                           es, et, kl);
    S* __restrict gp = static_cast<S*>(a.grad_s_plus) + off;
    S* __restrict gm = static_cast<S*>(a.grad_s_minus) + off;
    if (kl) {
      // autograd of sum(p * (log p - log_softmax(ds))) / B with respect to ds:
      // g_j = -(go/B * p_j); grad_j = g_j - softmax(ds)_j * sum(g)
      const A g1 = go / static_cast<A>(rows);
      for (int64_t j = 0; j < cols; ++j) bt[j] = -(g1 * (et[j] / st.st));  // g_j replaces dt
      const A sum_g = static_cast<A>(row_sum<A>(cols, [&](int64_t j) { return bt[j]; }));
      for (int64_t j = 0; j < cols; ++j) bs[j] = bt[j] - (es[j] / st.ss) * sum_g;  // the gradient replaces ds
    } else {
      const A g1 = go / static_cast<A>(rows * cols);
      const bool l1 = a.distance == FdDistance::L1;
      for (int64_t j = 0; j < cols; ++j) {
        const A d = bs[j] - bt[j];
        bs[j] = l1 ? g1 * rd_sign(d) : g1 * (A(2) * d);
      }
    }
    for (int64_t j = 0; j < cols; ++j) {
      gp[j] = static_cast<S>(bs[j]);
      gm[j] = static_cast<S>(-bs[j]);
    }
  }
}

template <typename S, typename T, typename A>
void fd_forward_rows_base(const FdArgs& a, int64_t r0, int64_t r1, double* per_row) {
  fd_forward_rows_impl<S, T, A>(a, r0, r1, per_row);
}
template <typename S, typename T, typename A>
void fd_backward_rows_base(const FdArgs& a, int64_t r0, int64_t r1) {
  fd_backward_rows_impl<S, T, A>(a, r0, r1);
}
#if RD_X86_DISPATCH
template <typename S, typename T, typename A>
__attribute__((target("avx2"))) void fd_forward_rows_avx2(const FdArgs& a, int64_t r0, int64_t r1, double* per_row) {
  fd_forward_rows_impl<S, T, A>(a, r0, r1, per_row);
}
template <typename S, typename T, typename A>
__attribute__((target("avx2"))) void fd_backward_rows_avx2(const FdArgs& a, int64_t r0, int64_t r1) {
  fd_backward_rows_impl<S, T, A>(a, r0, r1);
}
#endif

template <typename S, typename T>
void fd_forward_typed(const FdArgs& a) {
  using A = at::opmath_type<S>;
  const int64_t rows = a.rows, cols = a.cols;
  std::vector<double> per_row(static_cast<size_t>(rows), 0.0);
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, cols));
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) {
#if RD_X86_DISPATCH
    if (cpu_has_avx2()) return fd_forward_rows_avx2<S, T, A>(a, begin, end, per_row.data());
#endif
    fd_forward_rows_base<S, T, A>(a, begin, end, per_row.data());
  });
  double total = 0.0;
  for (double v : per_row) total += v;
  const A denom = a.distance == FdDistance::KL ? static_cast<A>(rows) : static_cast<A>(rows * cols);
  *static_cast<A*>(a.out) = static_cast<A>(total) / denom;
}

template <typename S, typename T>
void fd_backward_typed(const FdArgs& a) {
  using A = at::opmath_type<S>;
  const int64_t grain = std::max<int64_t>(1, kGrain / std::max<int64_t>(1, a.cols));
  at::parallel_for(0, a.rows, grain, [&](int64_t begin, int64_t end) {
#if RD_X86_DISPATCH
    if (cpu_has_avx2()) return fd_backward_rows_avx2<S, T, A>(a, begin, end);
#endif
    fd_backward_rows_base<S, T, A>(a, begin, end);
  });
}

}  // namespace

void pgd_step_cpu(const PgdArgs& args) {
  if (args.numel == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.dtype, "robustdistill::pgd_step (CPU)",
                                  [&] { pgd_step_typed<scalar_t>(args); });
}

void fd_align_forward_cpu(const FdArgs& args) {
  dispatch_fd(args, [&](auto s, auto t) {
    fd_forward_typed<typename decltype(s)::type, typename decltype(t)::type>(args);
  });
}

void fd_align_backward_cpu(const FdArgs& args) {
  if (args.rows * args.cols == 0) return;
  dispatch_fd(args, [&](auto s, auto t) {
    fd_backward_typed<typename decltype(s)::type, typename decltype(t)::type>(args);
  });
}

}  // namespace robustdistill
