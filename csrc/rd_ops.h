// Shared declarations of the robustdistill kernels.
//
// ops.cpp holds the operator schemas, argument checking and layout handling (device-agnostic);
// cpu_kernels.cpp and cuda_kernels.cu hold the kernels, which see only raw pointers described
// by the structs below. Element-wise arithmetic goes through the functions at the end of this file
// so that CPU and CUDA round exactly like the eager reference (one rounding per PyTorch op, no
// fused multiply-add), which makes the fp32 L-inf step bit-identical to robustdistill.ops.pgd_step_ref.
#pragma once

#include <cmath>
#include <cstdint>

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/core/ScalarType.h>

namespace robustdistill {

// How `out` relates to the inputs (the CPU kernels pick a loop free of possible aliasing).
enum class PgdAliasing : int {
  kNone = 0,     // out overlaps no input
  kInPlace = 1,  // out is x_adv (same memory and strides); grad and x overlap neither
  kOther = 2,    // anything else that is still safe element by element (e.g. x_adv is x)
};

// One projected ascent step over `numel` elements laid out as `batch` samples of `per_sample`
// contiguous elements each (the batch is the outermost dimension in memory).
struct PgdArgs {
  const void* x_adv = nullptr;
  const void* grad = nullptr;
  const void* x = nullptr;
  void* out = nullptr;  // may equal x_adv (in-place step); never partially overlaps an input
  PgdAliasing aliasing = PgdAliasing::kOther;
  int64_t numel = 0;
  int64_t batch = 1;
  int64_t per_sample = 0;
  c10::ScalarType dtype = c10::ScalarType::Float;
  bool l2 = false;
  double eps = 0.0;
  double alpha = 0.0;
  double lo = 0.0;
  double hi = 1.0;
  // Per-sample eps / step size, `batch` values of the op-math type (float, or double for
  // double inputs) on the inputs' device; nullptr means "use the scalar". Scalars and per-sample
  // values alike are rounded to the input dtype first (ops.cpp), as the reference's casts do.
  const void* eps_per_sample = nullptr;
  const void* alpha_per_sample = nullptr;
};

enum class FdDistance : int { KL = 0, L1 = 1, L2 = 2 };

// IGDM's finite-difference alignment over logits [rows, cols], all contiguous.
// Student logits have dtype `s_dtype`; teacher logits `t_dtype`, which is either `s_dtype` or
// the op-math type. Results (`out`, `row_buf`, `grad_out`) have the op-math type.
struct FdArgs {
  const void* s_plus = nullptr;
  const void* s_minus = nullptr;
  const void* t_plus = nullptr;
  const void* t_minus = nullptr;
  c10::ScalarType s_dtype = c10::ScalarType::Float;
  c10::ScalarType t_dtype = c10::ScalarType::Float;
  int64_t rows = 0;
  int64_t cols = 0;
  FdDistance distance = FdDistance::KL;
  // forward
  void* out = nullptr;      // scalar result
  void* row_buf = nullptr;  // workspace, `rows` values (used by the CUDA kernels)
  // backward
  const void* grad_out = nullptr;  // scalar upstream gradient
  void* grad_s_plus = nullptr;     // [rows, cols] of s_dtype
  void* grad_s_minus = nullptr;    // [rows, cols] of s_dtype
};

template <typename S>
struct TypeTag {
  using type = S;
};

// Calls fn(TypeTag<S>{}, TypeTag<T>{}) for the student logits' dtype S and the teacher logits'
// dtype T, which ops.cpp makes either S or S's op-math type.
template <typename Fn>
void dispatch_fd(const FdArgs& args, const Fn& fn) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, args.s_dtype, "robustdistill::fd_align", [&] {
    if (args.t_dtype == args.s_dtype) {
      fn(TypeTag<scalar_t>{}, TypeTag<scalar_t>{});
    } else {
      fn(TypeTag<scalar_t>{}, TypeTag<at::opmath_type<scalar_t>>{});
    }
  });
}

void pgd_step_cpu(const PgdArgs& args);
void fd_align_forward_cpu(const FdArgs& args);
void fd_align_backward_cpu(const FdArgs& args);

#ifdef ROBUSTDISTILL_WITH_CUDA
// Launch on the current CUDA stream of the current device; the caller sets the device.
void pgd_step_cuda(const PgdArgs& args);
void fd_align_forward_cuda(const FdArgs& args);
void fd_align_backward_cuda(const FdArgs& args);
#endif

// Sums over many elements (the L2 norms) add float terms in float for at most this many terms,
// then flush into a double: CPU lanes and CUDA threads alike, so both devices keep the same
// precision whatever the size of a sample.
constexpr int kSumFlush = 64;

// ---------------------------------------------------------------------------------------------
// Element-wise arithmetic shared by the CPU and CUDA kernels.

#if defined(__CUDACC__)
#define RD_HD __host__ __device__ __forceinline__
#else
#define RD_HD inline
#endif

// Round-to-nearest add / mul that the compiler may not contract into an FMA (nvcc contracts
// a*b+c by default; the host build uses -ffp-contract=off).
RD_HD float rd_add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
RD_HD double rd_add(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
RD_HD float rd_sub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
RD_HD double rd_sub(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}
RD_HD float rd_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
RD_HD double rd_mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

// torch.clamp: min(max(v, lo), hi), NaN in v propagates.
template <typename A>
RD_HD A rd_clamp(A v, A lo, A hi) {
  v = v < lo ? lo : v;
  return v > hi ? hi : v;
}

// torch.sign: -1, 0 or 1; NaN gives 0.
template <typename A>
RD_HD A rd_sign(A g) {
  return static_cast<A>(g > A(0)) - static_cast<A>(g < A(0));
}

// One L-inf element: clamp(x + clamp((x_adv + alpha*sign(g)) - x, -eps, eps), lo, hi).
template <typename A>
RD_HD A rd_linf_elem(A xa, A g, A x, A eps, A alpha, A lo, A hi) {
  A stepped = rd_add(xa, rd_mul(alpha, rd_sign(g)));
  A delta = rd_clamp(rd_sub(stepped, x), -eps, eps);
  return rd_clamp(rd_add(x, delta), lo, hi);
}

// The L2 step of one sample, in three passes that both devices share:
//   1. sum_gg = sum of g*g                       -> rd_l2_dir: the divisor max(||g||, 1e-12), or no step
//   2. sum_dd = sum of delta*delta, delta = rd_l2_delta(...) element by element -> rd_l2_factor
//   3. out = rd_l2_elem(...) = clamp(x + delta * factor, lo, hi)
// delta is computed element by element exactly as the reference does (x_adv + alpha*dir - x), in
// passes 2 and 3 alike, so ||delta|| is the norm of the vector that is projected, also when x_adv + alpha*dir
// nearly cancels x (expanding ||u + alpha*dir||^2 from sums over u = x_adv - x would lose all digits there).
template <typename A>
struct L2Dir {
  A g_div;       // max(||g||, 1e-12) rounded to A, as the reference's g_norm.clamp_min(1e-12)
  bool has_dir;  // ||g|| > 0 (false for NaN, as torch.where(g_norm > 0, ...))
};

template <typename A>
RD_HD L2Dir<A> rd_l2_dir(double sum_gg) {
  const A g_norm = static_cast<A>(::sqrt(sum_gg));
  L2Dir<A> d;
  d.has_dir = g_norm > A(0);
  d.g_div = g_norm < A(1e-12) ? A(1e-12) : g_norm;
  return d;
}

// x_adv + alpha * dir - x with dir = g / g_div (or 0 without a direction), one rounding per op.
template <typename A>
RD_HD A rd_l2_delta(A xa, A g, A x, A alpha, L2Dir<A> d) {
  const A dir = d.has_dir ? g / d.g_div : A(0);
  return rd_sub(rd_add(xa, rd_mul(alpha, dir)), x);
}

// min(eps / max(||delta||, 1e-12), 1); NaN stays NaN.
template <typename A>
RD_HD A rd_l2_factor(double sum_dd, A eps) {
  const A d_norm = static_cast<A>(::sqrt(sum_dd));
  const A ratio = eps / (d_norm < A(1e-12) ? A(1e-12) : d_norm);
  return ratio > A(1) ? A(1) : ratio;
}

template <typename A>
RD_HD A rd_l2_elem(A xa, A g, A x, A alpha, L2Dir<A> d, A factor, A lo, A hi) {
  return rd_clamp(rd_add(x, rd_mul(rd_l2_delta(xa, g, x, alpha, d), factor)), lo, hi);
}

}  // namespace robustdistill
